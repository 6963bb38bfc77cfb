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

/// `t(v)` with rows 1..=`rows` (v = rowid) and one more at rowid `top`.
fn rowids_up_to(rows: i64, top: i64) -> TempDb {
    TempDb::with_sql(&format!(
        "CREATE TABLE t(v INT);
         INSERT INTO t(rowid, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {rows}) SELECT i, i FROM s;
         INSERT INTO t(rowid, v) VALUES ({top}, 0);"
    ))
}

fn copy_each_row(db: &TempDb) -> (i32, String) {
    let plan = serde_json::json!({"name": "copy", "steps": [{
        "sql": "INSERT INTO t(v) SELECT v + 1000 FROM t WHERE rowid BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 2}
    }]});
    let plan = db.file("copy.json", &plan.to_string());
    let args = ["--no-serve", "--progress", "plain", "--batch-size", "2"];
    let (code, _, err) = run(&run_args(db, path_str(&plan), &args));
    (code, err)
}

/// A rowid walk may insert into the table it walks because SQLite gives
/// new rows rowids past the largest, where the walk stops. Once a table
/// holds rowid 9223372036854775807 SQLite picks random ones instead, some
/// ahead of the walk, which copied them again and said it finished ok.
#[test]
fn a_rowid_walk_that_inserts_into_a_table_at_the_largest_rowid_is_refused() {
    let db = rowids_up_to(6, i64::MAX);
    let (code, err) = copy_each_row(&db);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("9223372036854775807"), "{err}");
    assert!(err.contains("random"), "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t"), 7);
}

/// Rowids that reach the largest while the step inserts: the chunk that
/// reaches it is rolled back, so no row is copied twice, and those before
/// it stay.
#[test]
fn a_rowid_walk_whose_inserts_reach_the_largest_rowid_stops_at_that_chunk() {
    let db = rowids_up_to(10, i64::MAX - 4);
    let (code, err) = copy_each_row(&db);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("9223372036854775807"), "{err}");
    // The first chunk copied rows 1 and 2 to the two rowids after the
    // top; the second, which took the largest, was rolled back.
    assert_eq!(db.query_i64("SELECT count(*) FROM t"), 13);
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE v > 1000"), 2);
    assert_eq!(db.query_i64("SELECT max(rowid) FROM t"), i64::MAX - 2);
}

/// An `expect` that asks SQLite what the step's statement did
/// (`changes()`, `last_insert_rowid()`) gets the same answer with `--undo`
/// as without, recorded by the pre-update hook or the other ways: the
/// record batchsse writes beside the step is not the step's. It answered
/// for that write instead, so a guard that should stop a step passed.
#[test]
fn an_expect_that_asks_what_the_statement_did_gets_the_same_answer_with_undo() {
    let cases = [
        // (sql, chunk, expect, holds)
        ("UPDATE t SET v = 9", None, "changes() <= 1", false),
        ("UPDATE t SET v = 9", None, "changes() = 3", true),
        (
            "UPDATE t SET v = 9 WHERE id BETWEEN :lo AND :hi",
            Some(10),
            "changes() <= 1",
            false,
        ),
        (
            "UPDATE t SET v = 9 WHERE id BETWEEN :lo AND :hi",
            Some(10),
            "changes() = 3",
            true,
        ),
        (
            "INSERT INTO t(v) VALUES (4), (5)",
            None,
            "last_insert_rowid() = 5",
            true,
        ),
        (
            "INSERT INTO t(v) VALUES (4), (5)",
            None,
            "changes() = 2",
            true,
        ),
    ];
    for (sql, size, expect, holds) in cases {
        let mut step = serde_json::json!({"sql": sql, "expect": format!("SELECT {expect}")});
        if let Some(size) = size {
            step["chunk"] = serde_json::json!({"table": "t", "size": size});
        }
        let plan = serde_json::json!({"name": "ask", "steps": [step]});
        for (extra, env) in [
            (&[][..], &[][..]),
            (&["--undo"][..], &[][..]),
            (&["--undo"][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]),
        ] {
            let db = TempDb::with_sql(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT); INSERT INTO t(v) VALUES (1), (2), (3);",
            );
            let plan = db.file("ask.json", &plan.to_string());
            let mut args = run_args(&db, path_str(&plan), &["--no-serve"]);
            args.extend_from_slice(extra);
            let (code, _, err) = run_with_env(&args, None, env);
            let want = if holds { 0 } else { 1 };
            assert_eq!(code, want, "{sql} / {expect} {extra:?} {env:?}: {err}");
            let untouched = db.query_i64("SELECT count(*) FROM t WHERE v = 9") == 0;
            assert_eq!(
                untouched,
                !holds || sql.starts_with("INSERT"),
                "{sql} {extra:?}"
            );
        }
    }
}

/// A walk orders its keys, and bounds its chunks, by the key column's own
/// collation. A step that compares the key under another one
/// (`COLLATE NOCASE` on a column of BINARY text, where 'Z' < 'a') finds
/// other rows between the bounds: here the chunk from 'Z' to 'a' found
/// none, and the run said it finished ok with those two rows untouched.
#[test]
fn a_chunked_step_that_compares_its_key_under_another_collation_is_refused() {
    let schema = |coll: &str| {
        format!(
            "CREATE TABLE t(e TEXT {coll}, v INT); CREATE UNIQUE INDEX te ON t(e COLLATE BINARY);
             INSERT INTO t VALUES ('M',0),('N',0),('Z',0),('a',0),('b',0),('c',0);"
        )
    };
    let refused = [
        ("", "e COLLATE NOCASE BETWEEN :lo AND :hi"),
        ("", "t.e BETWEEN :lo AND :hi COLLATE nocase"),
        ("", "e >= :lo COLLATE RTRIM AND e <= :hi"),
        ("COLLATE NOCASE", "e COLLATE BINARY BETWEEN :lo AND :hi"),
    ];
    let passed = [
        ("", "e BETWEEN :lo AND :hi"),
        ("", "e COLLATE BINARY BETWEEN :lo AND :hi"),
        ("COLLATE NOCASE", "\"e\" BETWEEN :lo AND :hi COLLATE NOCASE"),
        (
            "",
            "e BETWEEN :lo AND :hi AND lower(e) = 'z' COLLATE NOCASE",
        ),
    ];
    for (coll, range, ok) in refused
        .iter()
        .map(|(c, r)| (c, r, false))
        .chain(passed.iter().map(|(c, r)| (c, r, true)))
    {
        let db = TempDb::with_sql(&schema(coll));
        let plan = serde_json::json!({"name": "coll", "steps": [{
            "sql": format!("UPDATE t SET v = v + 1 WHERE {range}"),
            "chunk": {"table": "t", "key": "e", "size": 2}
        }]});
        let plan = db.file("coll.json", &plan.to_string());
        let args = ["--no-serve", "--batch-size", "2"];
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &args));
        if ok {
            assert_eq!(code, 0, "{coll} {range}: {err}");
            if !range.contains("lower") {
                assert_eq!(
                    db.query_i64("SELECT count(*) FROM t WHERE v = 1"),
                    6,
                    "{range}"
                );
            }
        } else {
            assert_eq!(code, 2, "{coll} {range}: {err}");
            assert!(err.contains("COLLATE"), "{err}");
            assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE v <> 0"), 0);
        }
    }
}

/// A step that changes a view, whose INSTEAD OF triggers write its table,
/// is recorded by what the triggers write, in a build without the
/// pre-update hook as with it. Recorded through TEMP triggers, it failed
/// ("the step changed vv, which the undo record cannot key"): SQLite's
/// authorizer names the view as written, and a view has no rows to key.
#[test]
fn a_step_that_changes_a_view_through_its_triggers_is_recorded_and_taken_back() {
    let plan = serde_json::json!({"name": "view", "steps": [
        {"sql": "UPDATE vv SET v = v * 3 WHERE id > 3"},
        {"sql": "DELETE FROM vv WHERE id = 9"}
    ]});
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        let db = TempDb::with_sql(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT, log TEXT);
             CREATE VIEW vv AS SELECT id, v FROM t;
             CREATE TRIGGER vu INSTEAD OF UPDATE ON vv BEGIN
               UPDATE t SET v = new.v, log = coalesce(log, '') || 'x' WHERE id = old.id;
             END;
             CREATE TRIGGER vd INSTEAD OF DELETE ON vv BEGIN DELETE FROM t WHERE id = old.id; END;
             INSERT INTO t(id, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 10) SELECT i, i FROM s;",
        );
        let sums = "SELECT sum(v) * 100 + count(*) + count(log) * 1000000 FROM t";
        let before = db.query_i64(sums);
        let plan = db.file("view.json", &plan.to_string());
        let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
        let (code, _, err) = run_with_env(&args, None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE log = 'x'"),
            6,
            "{env:?}"
        );
        assert_ne!(db.query_i64(sums), before);
        let undo = undo_of_plan(&db, "view", &[]);
        let (code, _, err) = run_with_env(&undo, None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert!(err.contains("fully taken back"), "{err}");
        assert_eq!(db.query_i64(sums), before, "{env:?}");
    }
}

/// A step may write the statistics `ANALYZE` keeps (`sqlite_stat1`, as
/// one hand-tunes a query plan): the pre-run check, which compiles each
/// step on a copy of the schema, gives that copy the table too, where it
/// refused the step as "no such table". Under `--undo` it is refused
/// by name: the record holds none of SQLite's own tables.
#[test]
fn a_step_writing_analyze_s_statistics_runs() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
         CREATE INDEX tv ON t(v);
         INSERT INTO t(v) VALUES (1), (2), (3);
         ANALYZE;",
    );
    let plan = db.file(
        "stat.json",
        r#"{"name":"tune","steps":[{"sql":"UPDATE sqlite_stat1 SET stat = '1000 10' WHERE idx = 'tv'"}]}"#,
    );
    let before = sha256(&db.path);
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sqlite_stat1"), "{err}");
    assert_eq!(sha256(&db.path), before, "nothing run: {err}");
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sqlite_stat1 WHERE stat = '1000 10'"),
        1
    );
}
