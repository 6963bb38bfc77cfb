//! Exotic but legal schemas: what a run, a dry run and an undo make of
//! them, on real files.

use crate::util::*;

/// Parents 1..=10; child 1 points at parent 7 through a foreign key that
/// SQLite checks only when the transaction commits.
fn deferred_parents() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE p(id INTEGER PRIMARY KEY);
         CREATE TABLE c(id INTEGER PRIMARY KEY, pid INT REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO p(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 10) SELECT i FROM s;
         INSERT INTO c VALUES (1, 7);",
    )
}

fn run_deferred(db: &TempDb, steps: serde_json::Value, extra: &[&str]) -> (i32, String) {
    let plan = serde_json::json!({"name": "fk", "foreign_keys": true, "steps": steps});
    let plan = db.file("fk.json", &plan.to_string());
    let mut args = vec!["--no-serve", "--progress", "plain"];
    args.extend_from_slice(extra);
    let (code, _, err) = run(&run_args(db, path_str(&plan), &args));
    (code, err)
}

/// A dry run promises the real run's outcome. A foreign key deferred to
/// the commit is checked only when a transaction commits, which a dry run
/// never does: a step whose commit the foreign key refuses must fail the
/// dry run as it fails the run, chunked or plain, one transaction or many.
#[test]
fn a_dry_run_fails_where_a_deferred_foreign_key_refuses_the_commit() {
    let chunked = serde_json::json!([
        {"sql": "DELETE FROM p WHERE id BETWEEN :lo AND :hi", "chunk": {"table": "p", "size": 3}}
    ]);
    let plain = serde_json::json!([{"sql": "DELETE FROM p WHERE id > 5"}]);
    for steps in [chunked, plain] {
        for extra in [&["--dry-run"][..], &["--dry-run", "--atomic"]] {
            let db = deferred_parents();
            let (code, err) = run_deferred(&db, steps.clone(), extra);
            assert_eq!(code, 1, "{steps} {extra:?}: {err}");
            assert!(err.contains("FOREIGN KEY constraint failed"), "{err}");
            assert!(!err.contains("finished ok"), "{err}");
            assert_eq!(db.query_i64("SELECT count(*) FROM p"), 10);
            // The real run fails the same way.
            let (code, err) = run_deferred(&db, steps.clone(), &extra[1..]);
            assert_eq!(code, 1, "{steps} {extra:?}: {err}");
            assert!(err.contains("FOREIGN KEY constraint failed"), "{err}");
        }
    }
}

/// A violation the same transaction resolves before it ends is none: the
/// dry run says ok as the run does, and the run deletes the rows.
#[test]
fn a_deferred_violation_resolved_before_the_commit_passes_the_dry_run() {
    // The parent goes first and its child after it, in one transaction.
    let steps = serde_json::json!([
        {"sql": "DELETE FROM p WHERE id > 5; DELETE FROM c WHERE pid > 5"}
    ]);
    for extra in [&["--dry-run"][..], &["--dry-run", "--atomic"]] {
        let db = deferred_parents();
        let (code, err) = run_deferred(&db, steps.clone(), extra);
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert_eq!(db.query_i64("SELECT count(*) FROM p"), 10);
        let (code, err) = run_deferred(&db, steps.clone(), &extra[1..]);
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert_eq!(db.query_i64("SELECT count(*) FROM p"), 5);
        assert_eq!(db.query_i64("SELECT count(*) FROM c"), 0);
    }
}
