//! The rows an undo keeps (`batchsse_undo_conflict`) as another try of the
//! same undo, or another undo beside it, finds them: it ends as one undo
//! would have, whatever the rows kept are numbered, and a complete undo
//! leaves no empty table behind.

use std::time::{Duration, Instant};

use crate::undo::undo_args;
use crate::util::*;

/// Row 5 is deleted by the run's first step and inserted again by its
/// second (the second part of a step chunked by `src`, so that an undo
/// rests after taking it back); the application has deleted it since.
fn deleted_then_inserted_and_gone() -> TempDb {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER);
         INSERT INTO t VALUES (4, 0), (5, 0), (6, 0);
         CREATE TABLE src(id INTEGER PRIMARY KEY);
         INSERT INTO src VALUES (3), (5);",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","undo":true,"steps":[
            {"name":"purge","sql":"DELETE FROM t WHERE id = 5"},
            {"name":"readd","sql":"INSERT INTO t SELECT id, 100 FROM src WHERE id BETWEEN :lo AND :hi","chunk":{"table":"src","size":1}}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "1"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch("DELETE FROM t WHERE id = 5")
        .unwrap();
    db
}

/// An undo of plan `p` (with `extra`) resting, for 10 s, after the newest
/// part of step 1 (0-based): the part that keeps row 5 committed, every
/// older part still there.
fn resting_after_the_newest_part(db: &TempDb, extra: &[&str]) -> Proc {
    let parts = || db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0");
    let all = parts();
    let args = undo_args(db, &[&["--plan", "p", "--sleep", "10000"], extra].concat());
    let undo = spawn(&args, |_| {});
    let t0 = Instant::now();
    while parts() == all {
        assert!(t0.elapsed() < PATIENCE, "{}", undo.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        db.query_text("SELECT group_concat(k || ': ' || why) FROM batchsse_undo_conflict"),
        "5: the row the run inserted is gone"
    );
    undo
}

/// Stops an undo of plan `p` under `--on-conflict skip` (Ctrl-C) in the
/// rest after the part that keeps row 5.
fn skip_stopped_after_the_newest_part(db: &TempDb) {
    let mut skip = resting_after_the_newest_part(db, &[]);
    skip.signal("INT");
    assert_eq!(skip.wait().code(), Some(130), "{}", skip.stderr());
    let parts = db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0");
    assert_eq!(parts, 2, "stopped after one part: {}", skip.stderr());
}

/// The file as the test compares it: the user's tables and the rows kept.
fn content_and_kept(db: &TempDb) -> String {
    let kept = match db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_undo_conflict'") {
        0 => "no table".to_owned(),
        _ => db.query_text("SELECT ifnull(group_concat(tbl || ' ' || k || ': ' || why, x'0a'), '') FROM (SELECT * FROM batchsse_undo_conflict ORDER BY tbl, k)"),
    };
    format!("{}kept:\n{kept}", content(db))
}

/// A row the run deleted and inserted again at its key, which the
/// application has deleted since: an `overwrite` undo keeps it (the row is
/// gone: nothing of the run's is left on it) and so leaves the older row
/// deleted too. An `overwrite` undo after a `skip` try of the same undo,
/// stopped once it had kept the row, read it as a row to put the run's
/// older values back over, and brought the row the run deleted back.
#[test]
fn an_overwrite_after_a_stopped_skip_keeps_a_gone_row_deleted_as_one_overwrite_does() {
    let overwrite = ["--plan", "p", "--on-conflict", "overwrite"];
    let once = deleted_then_inserted_and_gone();
    let (code, _, err) = run(&undo_args(&once, &overwrite));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        once.query_i64("SELECT count(*) FROM t WHERE id = 5"),
        0,
        "{err}"
    );
    let twice = deleted_then_inserted_and_gone();
    skip_stopped_after_the_newest_part(&twice);
    let (code, _, err) = run(&undo_args(&twice, &overwrite));
    assert_eq!(code, 0, "{err}");
    assert_eq!(content_and_kept(&twice), content_and_kept(&once), "{err}");
}

/// As above, but the application inserts the row again between the tries:
/// an `overwrite` undo then puts the run's older row back over the
/// application's (the row is there to overwrite). After the stopped `skip`
/// try it held the row as still gone, left the application's row, and
/// said the row stays deleted.
#[test]
fn an_overwrite_after_a_stopped_skip_puts_back_a_gone_row_the_application_inserted_again() {
    let overwrite = ["--plan", "p", "--on-conflict", "overwrite"];
    let again = "INSERT INTO t VALUES (5, 7)";
    let once = deleted_then_inserted_and_gone();
    once.conn().execute_batch(again).unwrap();
    let (code, _, err) = run(&undo_args(&once, &overwrite));
    assert_eq!(code, 0, "{err}");
    assert_eq!(once.query_i64("SELECT v FROM t WHERE id = 5"), 0, "{err}");
    let twice = deleted_then_inserted_and_gone();
    skip_stopped_after_the_newest_part(&twice);
    twice.conn().execute_batch(again).unwrap();
    let (code, _, err) = run(&undo_args(&twice, &overwrite));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("stays deleted"), "{err}");
    assert_eq!(content_and_kept(&twice), content_and_kept(&once), "{err}");
}

/// The same beside another undo: an `overwrite` undo that keeps the row
/// and rests, while a second `overwrite` undo of the same plan takes back
/// the parts left, reading the row kept by the first. It kept the row
/// deleted as one undo does (before, it brought the older row back).
#[test]
fn an_overwrite_beside_another_that_kept_a_gone_row_keeps_it_deleted_as_one_overwrite_does() {
    let overwrite = ["--plan", "p", "--on-conflict", "overwrite"];
    let once = deleted_then_inserted_and_gone();
    let (code, _, err) = run(&undo_args(&once, &overwrite));
    assert_eq!(code, 0, "{err}");
    let beside = deleted_then_inserted_and_gone();
    let first = resting_after_the_newest_part(&beside, &overwrite[2..]);
    let (code, _, err) = run(&undo_args(&beside, &overwrite));
    assert_eq!(code, 0, "{err}");
    drop(first);
    assert_eq!(content_and_kept(&beside), content_and_kept(&once), "{err}");
}

/// A run that bumps `t.v` of rows 1 and 2 (one part each), recorded, and
/// row 1 changed by the application since: an undo keeps it.
fn bumped_and_changed() -> TempDb {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER);
         INSERT INTO t VALUES (1, 0), (2, 0);",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"q","undo":true,"steps":[{"name":"bump","sql":"UPDATE t SET v = v + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":1}}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "1"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch("UPDATE t SET v = 9 WHERE id = 1")
        .unwrap();
    db
}

/// A row of `batchsse_undo_conflict`, as a user could write it by hand.
const BY_HAND: &str = "INSERT INTO batchsse_undo_conflict (rowid, run, tbl, k, why)
    VALUES (9223372036854775807, 'other', 't', 99, 'by hand')";

/// A row of `batchsse_undo_conflict` numbered by hand 9223372036854775807,
/// the largest rowid: the rows an undo keeps are numbered past every row
/// there, so every later undo failed at its first conflict with "datatype
/// mismatch" (exit 1). It is refused before anything is taken back (exit
/// 2, the file untouched), saying how to renumber that row; renumbered so,
/// the undo goes on.
#[test]
fn a_kept_row_numbered_by_hand_at_the_largest_rowid_is_refused_with_what_to_do() {
    let db = bumped_and_changed();
    db.conn().execute_batch(BY_HAND).unwrap();
    let before = sha256(&db.path);
    for dry in [&["--dry-run"][..], &[]] {
        let (code, _, err) = run(&undo_args(&db, &[&["--plan", "q"], dry].concat()));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("written by hand"), "{err}");
        assert!(err.contains("nothing was taken back: "), "{err}");
        assert_eq!(sha256(&db.path), before, "{err}");
    }
    let (_, _, err) = run(&undo_args(&db, &["--plan", "q"]));
    let fix = err.split("then run the undo again: ").nth(1).unwrap();
    // The statement ends the message: pasted as printed, it runs.
    let fix = fix.trim_end();
    db.conn().execute_batch(fix).unwrap();
    let (code, _, err) = run(&undo_args(&db, &["--plan", "q"]));
    assert_eq!(code, 0, "{err}");
    let kept = "SELECT group_concat(rowid || ' ' || k, ', ') FROM (SELECT rowid, k FROM batchsse_undo_conflict ORDER BY rowid)";
    assert_eq!(db.query_text(kept), "1 99, 2 1", "{err}");
    assert_eq!(db.query_text("SELECT group_concat(v) FROM t"), "9,0");
}

/// The same row written while the undo is going, after its check: the
/// part that would keep a row after it stops the undo (exit 1, that part
/// rolled back, row 2's newer part back) with the same words, not
/// SQLite's "datatype mismatch".
#[test]
fn a_kept_row_numbered_by_hand_at_the_largest_rowid_during_an_undo_stops_it_with_what_to_do() {
    let db = bumped_and_changed();
    let pause = db.file("pause", "");
    let args = undo_args(&db, &["--plan", "q", "--pause-file", path_str(&pause)]);
    let mut undo = spawn(&args, |_| {});
    undo.wait_stderr("undo of run");
    db.conn().execute_batch(BY_HAND).unwrap();
    std::fs::remove_file(&pause).unwrap();
    assert_eq!(undo.wait().code(), Some(1), "{}", undo.stderr());
    assert!(
        undo.stderr().contains("written by hand"),
        "{}",
        undo.stderr()
    );
    assert_eq!(db.query_text("SELECT group_concat(v) FROM t"), "9,0");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo_conflict"),
        1
    );
}

/// Two undos of the same plan started at once share its parts and end
/// together: each saw the other with the file open as it ended, and left
/// the empty tables (the undo record's, the checkpoint's) to it, so in
/// about half the tries both stayed. The one that closes the file last
/// removes them. Not deterministic before the fix (each round kept them
/// about one time in two): six rounds all passed in under 1% of tries.
#[test]
fn two_undos_of_a_plan_ending_together_leave_no_empty_table_behind() {
    let tables = "SELECT group_concat(name) FROM sqlite_schema WHERE name LIKE 'batchsse%'";
    for round in 0..6 {
        let db = TempDb::counters(20);
        let plan = db.file("plan.json", &counter_plan("c", 1));
        run_undoable(&db, &plan);
        let args = undo_args(&db, &["--plan", "c"]);
        let mut both: Vec<Proc> = (0..2).map(|_| spawn(&args, |_| {})).collect();
        for undo in &mut both {
            assert_eq!(undo.wait().code(), Some(0), "{}", undo.stderr());
            assert!(!undo.stderr().contains("warning"), "{}", undo.stderr());
        }
        assert_eq!(db.counter_spread(), (0, 20));
        let left: Option<String> = db.conn().query_row(tables, [], |r| r.get(0)).unwrap();
        assert_eq!(left, None, "round {round}");
    }
}
