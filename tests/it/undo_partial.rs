//! An undo that stops part-way, and what the housekeeping commands say of
//! the plan it leaves taken back in part.

use crate::util::*;

/// The checkpoint of a step an undo took back in part still said `done`:
/// `checkpoint list` showed the plan applied whole while part of it had
/// gone back, and named nothing to finish. It says the step is taken back
/// in part, and the command that finishes the undo.
#[test]
fn checkpoint_list_says_a_step_an_undo_stopped_in_is_taken_back_in_part() {
    let db = bumped();
    // The application changes a row of the first part, which the undo
    // meets last: three parts go back, then abort stops it.
    db.conn()
        .execute_batch("UPDATE t SET counter = 7 WHERE id = 3")
        .unwrap();
    let (code, _, err) = run(&undo_of_plan(&db, "bump", &["--on-conflict", "abort"]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 0"), 30);
    let path = path_str(&db.path);
    let (code, out, err) = run(&["checkpoint", "list", "--db", path]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(": done"), "not shown as done: {out}");
    assert!(
        out.contains("1 step recorded, 0 done, 0 partial, 1 partly taken back"),
        "{out}"
    );
    assert!(out.contains("step 1 \"bump counters\": partly taken back"), "{out}");
    assert!(
        out.contains(&format!("`batchsse undo --db {path} --plan bump`")),
        "names the command that finishes it: {out}"
    );
    let (code, out, err) = run(&["checkpoint", "list", "--db", path, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plans"][0]["steps"][0]["state"], "undoing", "{out}");
    // `undo list` says it too: its record is what is left to take back.
    let (code, out, err) = run(&["undo", "list", "--db", path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("an undo of plan \"bump\" stopped part-way")
            && out.contains(&format!("`batchsse undo --db {path} --plan bump`")),
        "{out}"
    );
    let (code, out, _) = run(&["undo", "list", "--db", path, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["undo_stopped"],
        serde_json::json!([{"plan": "bump", "steps": [0]}]),
        "{out}"
    );
    // Finished, the plan has no checkpoint left, nor an undo to finish.
    let (code, _, err) = run(&undo_of_plan(&db, "bump", &[]));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&["checkpoint", "list", "--db", path]);
    assert!(out.starts_with("no checkpoint recorded"), "{out}");
}
