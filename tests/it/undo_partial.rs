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
    assert!(
        out.contains("step 1 \"bump counters\": partly taken back"),
        "{out}"
    );
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

/// A run that resumed a recorded run named only its own record as the
/// way to take it back: `undo --run` of it takes back the rest it applied
/// and leaves the resumed step taken back in part, the plan refused until
/// the plan's undo. Like a failed resume, it names the plan's undo too.
#[test]
fn a_resumed_run_that_finished_names_the_undo_of_the_runs_it_resumed() {
    // A trigger stops the first run at id 25, after two chunks of ten.
    let db = TempDb::counters(40);
    db.conn()
        .execute_batch(
            "CREATE TABLE gate(open);
             CREATE TRIGGER closed BEFORE UPDATE ON t
               WHEN NEW.id = 25 AND NOT EXISTS (SELECT 1 FROM gate)
               BEGIN SELECT RAISE(ABORT, 'closed'); END;",
        )
        .unwrap();
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    db.conn()
        .execute_batch("INSERT INTO gate VALUES (1)")
        .unwrap();
    let (code, out, err) = run(&[&args[..], &["--progress", "json"]].concat());
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    let said = events
        .iter()
        .filter_map(|e| e["data"]["message"].as_str())
        .find(|m| m.contains("recorded for undo"))
        .unwrap_or_default();
    let plan_undo = format!("batchsse undo --db {} --plan bump", path_str(&db.path));
    assert!(said.contains(&plan_undo), "{out}");
    // `finished.undo_command` still names this run's own record.
    let finished = events.last().cloned().unwrap_or_default();
    assert!(
        finished["data"]["undo_command"]
            .as_str()
            .is_some_and(|c| c.contains(" --run ")),
        "{out}"
    );
    let mut undo: Vec<&str> = plan_undo.split(' ').skip(1).collect();
    undo.push("--no-serve");
    let (code, _, err) = run(&undo);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (0, 40), "{err}");
}
