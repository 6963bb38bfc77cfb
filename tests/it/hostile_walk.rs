//! A walk by rowid whose step inserts into the table it walks: its own
//! rows must never be visited by a later chunk, in one run or in a run
//! that resumes it, or they are copied again (copies of copies) and the
//! run still finishes ok.

use serde_json::json;

use crate::util::*;

/// `t` with 100 rows, `id` from `first` by `gap`, each `v = 'orig'`.
fn originals(first: i64, gap: i64) -> TempDb {
    TempDb::with_sql(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v TEXT);
         INSERT INTO t(id, n, v) WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM s WHERE i < 99)
           SELECT {first} + i * {gap}, i, 'orig' FROM s;"
    ))
}

/// Runs `plan` on `db` with chunks of 10 and no server.
fn run_copy(db: &TempDb, plan: &serde_json::Value) -> (i32, String) {
    let path = db.file("plan.json", &plan.to_string());
    let (code, _, err) = run(&run_args(
        db,
        path_str(&path),
        &words("--no-serve --progress plain --batch-size 10"),
    ));
    (code, err)
}

/// The plan that copies each row of `t` into `t`, walked by rowid in
/// chunks of 10; its run stops at the copy of the 51st row (`n = 50`),
/// failed by a trigger of the test's until it drops it (`stop`).
fn stopping_copy(db: &TempDb) -> serde_json::Value {
    db.conn()
        .execute_batch(
            "CREATE TRIGGER stop BEFORE INSERT ON t WHEN new.n = 50
             BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;",
        )
        .unwrap();
    json!({"name": "copy", "steps": [{
        "sql": "INSERT INTO t(n, v) SELECT n, 'copy' FROM t WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10},
    }]})
}

/// Rows that are copies of a copy: `n` copied more than once.
fn copied_twice(db: &TempDb) -> i64 {
    db.query_i64(
        "SELECT count(*) FROM (SELECT n FROM t WHERE v = 'copy' GROUP BY n HAVING count(*) > 1)",
    )
}

#[test]
fn a_resumed_rowid_walk_that_inserts_into_its_table_does_not_copy_its_copies() {
    // The first run stops at the chunk of the 51st row; what its chunks
    // inserted got rowids past the walk's end. The resume must stop where
    // that end was, not at the largest rowid now, which is a copy's.
    for (first, gap) in [(1, 1), (2, 3)] {
        let db = originals(first, gap);
        let plan = stopping_copy(&db);
        let (code, err) = run_copy(&db, &plan);
        assert_eq!(code, 1, "{err}");
        assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE v = 'copy'"), 50);
        db.conn().execute_batch("DROP TRIGGER stop").unwrap();
        let (code, err) = run_copy(&db, &plan);
        assert_eq!(code, 0, "{err}");
        assert_eq!(copied_twice(&db), 0, "ids from {first} by {gap}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE v = 'copy'"),
            100,
            "ids from {first} by {gap}: {err}"
        );
        assert!(
            err.contains("50 rows of t to visit"),
            "the resume counts only the rows left before the walk's end: {err}"
        );
    }
}

#[test]
fn a_rowid_walk_whose_step_inserts_ahead_of_it_fails_at_that_chunk() {
    // Copies at `id * 2 + 1` (odd, where every original is even): those of
    // the first rows land ahead of the walk, which would copy them again,
    // and their copies again, and still finish ok.
    let db = originals(2, 2);
    let plan = json!({"name": "copy", "steps": [{
        "sql": "INSERT INTO t(id, n, v) SELECT id * 2 + 1, n, 'copy' FROM t WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10},
    }]});
    let (code, err) = run_copy(&db, &plan);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ahead of the walk") && err.contains("rowid is 41"),
        "names the row and why: {err}"
    );
    assert_eq!(copied_twice(&db), 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE v = 'copy'"),
        0,
        "the first chunk was rolled back: {err}"
    );
    // Copies behind the walk, or past its end, are never visited: fine.
    for copy in ["-id", "id + 1000"] {
        let db = originals(2, 2);
        let sql = format!(
            "INSERT INTO t(id, n, v) SELECT {copy}, n, 'copy' FROM t WHERE id BETWEEN :lo AND :hi"
        );
        let plan =
            json!({"name": "copy", "steps": [{"sql": sql, "chunk": {"table": "t", "size": 10}}]});
        let (code, err) = run_copy(&db, &plan);
        assert_eq!(code, 0, "{copy}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE v = 'copy'"),
            100,
            "{copy}: {err}"
        );
    }
}

#[test]
fn a_stopped_walk_that_inserts_is_not_resumed_from_a_checkpoint_that_lacks_its_end() {
    // An earlier release's checkpoint has no `walk_end`: where the walk
    // ends is not known, so the resume is refused, nothing written.
    let db = originals(1, 1);
    let plan = stopping_copy(&db);
    assert_eq!(run_copy(&db, &plan).0, 1);
    db.conn()
        .execute_batch("DROP TRIGGER stop; ALTER TABLE batchsse_checkpoint DROP COLUMN walk_end;")
        .unwrap();
    let before = db.bytes();
    let (code, err) = run_copy(&db, &plan);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("did not keep where the walk ends") && err.contains("Nothing was run"),
        "{err}"
    );
    assert_eq!(db.bytes(), before, "{err}");
    // Another plan runs on that table, and adds the column as it writes.
    let plan = json!({"name": "bump", "steps": [{
        "sql": "UPDATE t SET n = n + 1000 WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10},
    }]});
    let (code, err) = run_copy(&db, &plan);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE n >= 1000"), 150);
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pragma_table_info('batchsse_checkpoint') WHERE name = 'walk_end'"
        ),
        1
    );
}

#[test]
fn a_resumed_walk_leaves_alone_the_rows_its_table_s_trigger_inserted() {
    // A history trigger keeps each row's old value as a row of the same
    // table: the resume must not update the history rows the earlier
    // run's chunks made (past where the walk ends).
    let db = originals(1, 1);
    db.conn()
        .execute_batch(
            "CREATE TRIGGER hist AFTER UPDATE OF n ON t WHEN old.v = 'orig'
             BEGIN INSERT INTO t(n, v) VALUES (old.n, 'old'); END;
             CREATE TRIGGER stop BEFORE UPDATE ON t WHEN old.id = 50
             BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;",
        )
        .unwrap();
    let plan = json!({"name": "bump", "steps": [{
        "sql": "UPDATE t SET n = n + 1000 WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10},
    }]});
    assert_eq!(run_copy(&db, &plan).0, 1);
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    let (code, err) = run_copy(&db, &plan);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE v = 'orig' AND n >= 1000"),
        100
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE v = 'old' AND n >= 1000"),
        0,
        "history rows untouched: {err}"
    );
}
