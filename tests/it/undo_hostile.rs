//! What a careless or hostile user does to an undo: edits its record by
//! hand, or starts two undos of the same plan at once. Neither may end in
//! rows taken back wrongly, or left out, while the undo says all is well.

use crate::util::*;

/// `t` of 40 counters bumped by a recorded run of plan `bump`, ten rows a
/// part: four parts in the record.
fn bumped() -> TempDb {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "10"],
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM batchsse_undo"), 4);
    db
}

/// A record edited by hand (a part cut short, emptied, of another type,
/// or gone from the middle of its step) is refused before anything is
/// taken back, rather than taken back in part with `finished ok`.
#[test]
fn a_record_altered_by_hand_is_refused_before_anything_is_taken_back() {
    let newest = "(SELECT max(id) FROM batchsse_undo)";
    for tamper in [
        format!(
            "UPDATE batchsse_undo SET rec = substr(rec, 1, length(rec) - 3) WHERE id = {newest}"
        ),
        format!("UPDATE batchsse_undo SET rec = NULL WHERE id = {newest}"),
        format!("UPDATE batchsse_undo SET rec = 'text' WHERE id = {newest}"),
        format!("UPDATE batchsse_undo SET chunk = -1 WHERE id = {newest}"),
        format!("UPDATE batchsse_undo SET rows = 'ten' WHERE id = {newest}"),
        "DELETE FROM batchsse_undo WHERE chunk = 1".to_owned(),
        "DELETE FROM batchsse_undo WHERE chunk = 0".to_owned(),
    ] {
        let db = bumped();
        db.conn().execute_batch(&tamper).unwrap();
        let before = sha256(&db.path);
        let (code, _, err) = run(&[
            "undo",
            "--db",
            path_str(&db.path),
            "--plan",
            "bump",
            "--no-serve",
        ]);
        assert_eq!(code, 2, "{tamper}: {err}");
        assert!(err.contains("damaged"), "{tamper}: {err}");
        assert!(
            err.contains("batchsse undo clear --db FILE --run"),
            "{tamper}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "{tamper}: nothing written");
    }
}
