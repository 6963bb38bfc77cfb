//! An undo on large records: what it looks up while it goes is found by
//! an index or kept bounded, never read whole again for each row or part
//! (a test cannot time a run: each checks the mechanism).

use crate::undo::{recorded_twice, undo_args};
use crate::util::*;

/// Whether `batchsse_undo_conflict` finds a row by its table and key
/// through an index, as SQLite plans it.
fn conflicts_found_by_key(db: &TempDb) -> bool {
    let sql = "SELECT 1 FROM batchsse_undo_conflict WHERE tbl = 't' AND k IS 1";
    query_plan(db, sql)
        .iter()
        .any(|l| l.contains("USING") && l.contains("INDEX"))
}

/// An older run taken back first keeps every row the newer run changed
/// since; the undo of the newer run then looks each of them up by its key
/// at its end, to count those that still carry the older run's change.
/// With no index that read the whole conflict table once a row: 20 s for
/// 20,000 rows, over 2 minutes for 100,000. The index is made with the
/// table, and given to one a batchsse from before it made.
#[test]
fn the_rows_an_older_undo_kept_are_looked_up_by_key() {
    let db = TempDb::counters(40);
    let ids = recorded_twice(&db, "twice");
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(conflicts_found_by_key(&db), "made with the table");
    // As a file recorded by an earlier release has it.
    db.conn()
        .execute_batch("DROP INDEX batchsse_undo_conflict_by_row")
        .expect("drop the index");
    assert!(!conflicts_found_by_key(&db));
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "40 rows that the undo of run {}, an older run of the plan, kept",
            ids[0]
        )),
        "{err}"
    );
    assert!(conflicts_found_by_key(&db), "given to an older table");
}

/// How SQLite plans `sql` on `db`, one line per step of the plan.
fn query_plan(db: &TempDb, sql: &str) -> Vec<String> {
    let conn = db.conn();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("plan the query");
    let n = stmt.parameter_count();
    stmt.query_map(rusqlite::params_from_iter(vec![0; n]), |r| r.get(3))
        .expect("read the plan")
        .collect::<Result<_, _>>()
        .expect("read the plan")
}

/// A run's end asks, of each step it recorded, whether the step's parts
/// are still there (an `undo clear` between two steps takes them): found
/// by run and step, not by reading every part of the run for each step,
/// which made a script of 8,000 one-row statements take 7 s to end
/// (quadratic in its steps).
#[test]
fn a_run_finds_a_step_s_parts_by_run_and_step() {
    let db = TempDb::counters(3);
    let script = db.file(
        "fix.sql",
        "UPDATE t SET counter = 1 WHERE id = 1; UPDATE t SET counter = 2 WHERE id = 2;",
    );
    let (code, _, err) = run(&[
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(&script),
        "--undo",
        "--no-serve",
    ]);
    assert_eq!(code, 0, "{err}");
    let plan = query_plan(
        &db,
        "SELECT EXISTS (SELECT 1 FROM batchsse_undo WHERE run = ?1 AND step = ?2)",
    );
    assert!(
        plan.iter().any(|l| l.contains("(run=? AND step=?)")),
        "{plan:#?}"
    );
}
