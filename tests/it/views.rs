//! A step through a view: SQLite's `changes()` counts no row for a
//! statement on a view (its INSTEAD OF triggers write them all), so the
//! step counts the view rows its statement processed, as `changes()`
//! counts a table's, not the rows its triggers wrote; `expect_changes`
//! holds it to that count, plain or chunked, recorded for undo or not.

use crate::util::*;

/// `t` of 100 rows behind the view `vt`, whose INSTEAD OF triggers write
/// `t` and an `audit` row for each view row (two rows written a view row);
/// `vk`, whose INSTEAD OF UPDATE skips the rows above 90 with
/// `RAISE(IGNORE)`; `q`, whose BEFORE UPDATE trigger logs a row and then
/// skips it.
fn views() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
         CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);
         CREATE VIEW vt AS SELECT id, v FROM t;
         CREATE TRIGGER vu INSTEAD OF UPDATE ON vt BEGIN
           UPDATE t SET v = new.v WHERE id = old.id;
           INSERT INTO audit(what) VALUES ('u' || old.id);
         END;
         CREATE TRIGGER vi INSTEAD OF INSERT ON vt BEGIN
           INSERT INTO t(id, v) VALUES (new.id, new.v);
           INSERT INTO audit(what) VALUES ('i' || new.id);
         END;
         CREATE TRIGGER vd INSTEAD OF DELETE ON vt BEGIN
           DELETE FROM t WHERE id = old.id;
           INSERT INTO audit(what) VALUES ('d' || old.id);
         END;
         CREATE VIEW vk AS SELECT id, v FROM t;
         CREATE TRIGGER vku INSTEAD OF UPDATE ON vk BEGIN
           SELECT RAISE(IGNORE) WHERE old.id > 90;
           UPDATE t SET v = new.v WHERE id = old.id;
           INSERT INTO audit(what) VALUES ('k' || old.id);
         END;
         CREATE TABLE q(v); INSERT INTO q VALUES (1), (2), (3);
         CREATE TRIGGER qu BEFORE UPDATE ON q BEGIN
           INSERT INTO audit(what) VALUES ('q'); SELECT RAISE(IGNORE);
         END;
         INSERT INTO t(id, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 100) SELECT i, 0 FROM s;",
    )
}

/// Everything the steps may change, as one text.
const CONTENT: &str = "SELECT (SELECT group_concat(id || ':' || v) FROM t) || '|' || (SELECT count(*) FROM audit) || '|' || (SELECT group_concat(v) FROM q)";

/// Flags and environment variables of a run.
type Mode = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// The ways a run counts: unrecorded, recorded through SQLite's
/// pre-update hook, recorded through TEMP triggers.
const MODES: [Mode; 3] = [
    (&[], &[]),
    (&["--undo"], &[]),
    (&["--undo"], &[("BATCHSSE_UNDO_HOOK", "off")]),
];

/// Runs `steps` (a JSON array) as plan `name` on `db`, with `extra` and
/// `env`, plain lines on stderr.
fn run_steps(
    db: &TempDb,
    name: &str,
    steps: &str,
    (extra, env): (&[&str], &[(&str, &str)]),
) -> (i32, String) {
    let plan = db.file(
        &format!("{name}.json"),
        &format!(r#"{{"name":"{name}","steps":{steps}}}"#),
    );
    let mut args = run_args(db, path_str(&plan), &["--no-serve", "--progress", "plain"]);
    args.extend_from_slice(extra);
    let (code, _, err) = run_with_env(&args, None, env);
    (code, err)
}

/// Each statement on a view counts the view rows it processed, however
/// many rows its triggers wrote for each (two here): an UPDATE, an INSERT
/// and a DELETE, plain or chunked; a row its INSTEAD OF trigger skips with
/// `RAISE(IGNORE)` is not counted; nor, in the same step, a row of a table
/// whose trigger logs it and then skips it. A statement with `RETURNING`
/// counts the rows it returns, one a view row. The same with `--undo`,
/// recorded either way, and the undo puts the file back as it was.
#[test]
fn a_step_through_a_view_counts_the_view_rows_not_the_rows_its_triggers_wrote() {
    let steps = r#"[
        {"name":"plain","sql":"UPDATE vt SET v = 1 WHERE id <= 40","expect_changes":{"max":40,"min":40}},
        {"name":"chunked","sql":"UPDATE vt SET v = 2 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":25},"expect_changes":{"max":100,"min":100}},
        {"name":"skipped","sql":"UPDATE vk SET v = 3","expect_changes":{"max":90,"min":90}},
        {"name":"mixed","sql":"UPDATE vt SET v = 4 WHERE id <= 10; UPDATE q SET v = 0","expect_changes":{"max":10,"min":10}},
        {"name":"inserted","sql":"INSERT INTO vt(id, v) SELECT id + 1000, 5 FROM t WHERE id <= 5","expect_changes":{"max":5,"min":5}},
        {"name":"deleted","sql":"DELETE FROM vt WHERE id BETWEEN :lo AND :hi AND id BETWEEN 96 AND 100","chunk":{"table":"t","size":30},"expect_changes":{"max":5,"min":5}},
        {"name":"returned","sql":"UPDATE vt SET v = 6 WHERE id BETWEEN 50 AND 52 RETURNING id","expect_changes":{"max":3,"min":3}}]"#;
    let schema = "SELECT group_concat(type || ' ' || name || ' ' || sql, ';') FROM sqlite_schema WHERE name NOT LIKE 'batchsse%'";
    for (extra, env) in MODES {
        let db = views();
        let before = db.query_text(CONTENT);
        let objects = db.query_text(schema);
        let (code, err) = run_steps(&db, "views", steps, (extra, env));
        assert_eq!(code, 0, "{extra:?} {env:?}: {err}");
        for line in [
            "plain: done, 40 rows changed",
            "chunked: done, 100 rows changed",
            "skipped: done, 90 rows changed",
            "mixed: done, 10 rows changed",
            "inserted: done, 5 rows changed",
            "deleted: done, 5 rows changed",
            "returned: done, 3 rows changed",
            "finished ok: 7/7 steps, 253 rows changed",
        ] {
            assert!(err.contains(line), "{extra:?} {env:?}: {line}: {err}");
        }
        assert_eq!(db.query_i64("SELECT count(*) FROM t"), 100, "{extra:?}");
        assert_eq!(db.query_text(schema), objects, "{extra:?}: no object left");
        if extra.is_empty() {
            continue;
        }
        let (code, _, err) = run_with_env(&undo_of_plan(&db, "views", &[]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert!(err.contains("fully taken back"), "{env:?}: {err}");
        assert_eq!(
            db.query_text(CONTENT),
            before,
            "{env:?}: the undo restored it"
        );
    }
}

/// `expect_changes` holds a step through a view to the view rows it
/// processed: a `max` below them fails the step, its work rolled back (a
/// chunked step's current chunk), and a `min` above them fails it too,
/// though its triggers wrote twice as many rows; with `--undo` as without.
#[test]
fn expect_changes_holds_a_step_through_a_view_to_its_view_rows() {
    let cases = [
        // A plain step changing 40 view rows, 80 rows written.
        (
            r#""sql":"UPDATE vt SET v = 9 WHERE id <= 40""#,
            r#"{"max":39}"#,
            "max is 39, but with its current work the step would have changed 40 rows",
            0,
        ),
        (
            r#""sql":"UPDATE vt SET v = 9 WHERE id <= 40""#,
            r#"{"min":41}"#,
            "min is 41, but the step changed only 40 rows",
            0,
        ),
        // Chunks of 25: the fourth passes 99 and is rolled back.
        (
            r#""sql":"UPDATE vt SET v = 9 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":25}"#,
            r#"{"max":99}"#,
            "max is 99, but with its current work the step would have changed 100 rows",
            75,
        ),
        (
            r#""sql":"UPDATE vt SET v = 9 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":25}"#,
            r#"{"min":101}"#,
            "min is 101, but the step changed only 100 rows",
            75,
        ),
    ];
    for (extra, env) in MODES {
        for (step, expect, said, kept) in cases {
            let db = views();
            let steps = format!(r#"[{{"name":"capped",{step},"expect_changes":{expect}}}]"#);
            let extra = [extra, &["--batch-size", "25"]].concat();
            let (code, err) = run_steps(&db, "capped", &steps, (&extra, env));
            assert_eq!(code, 1, "{extra:?} {env:?} {step} {expect}: {err}");
            assert!(
                err.contains(said),
                "{extra:?} {env:?} {step}: {said}: {err}"
            );
            assert_eq!(
                db.query_i64("SELECT count(*) FROM t WHERE v = 9"),
                kept,
                "{extra:?} {env:?} {step} {expect}: rolled back"
            );
            assert_eq!(
                db.query_i64("SELECT count(*) FROM audit"),
                kept,
                "{extra:?} {env:?} {step} {expect}: the audit rows too"
            );
        }
    }
}

/// A view with an INSTEAD OF UPDATE trigger only cannot be deleted from:
/// SQLite refuses the statement, and so does the check before the run,
/// with `--undo` as without, writing nothing.
#[test]
fn a_delete_from_a_view_without_its_trigger_is_still_refused() {
    for (extra, env) in MODES {
        let db = views();
        let before = db.bytes();
        let steps = r#"[{"name":"no trigger","sql":"DELETE FROM vk WHERE id <= 10"}]"#;
        let (code, err) = run_steps(&db, "refused", steps, (extra, env));
        assert_eq!(code, 2, "{extra:?} {env:?}: {err}");
        assert!(
            err.contains("cannot modify vk because it is a view"),
            "{extra:?} {env:?}: {err}"
        );
        assert_eq!(db.bytes(), before, "{extra:?} {env:?}: nothing written");
    }
}

/// A step on a view of a database the plan attaches: the check before the
/// run cannot compile it (the file is attached only as the plan runs), so
/// it did not know the step writes a view, and the statement counted 0
/// rows, passing any `expect_changes` `max` while its trigger changed
/// every row. It counts the view rows it processed, as on `main`.
#[test]
fn a_step_on_a_view_of_an_attached_database_counts_its_view_rows() {
    let db = views();
    let other = db.dir.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch(
            "CREATE TABLE u(id INTEGER PRIMARY KEY, a INT);
             INSERT INTO u(a) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) SELECT 0 FROM s;
             CREATE VIEW vu AS SELECT id, a FROM u;
             CREATE TRIGGER vuu INSTEAD OF UPDATE ON vu BEGIN UPDATE u SET a = new.a WHERE id = old.id; END;",
        )
        .unwrap();
    let attach = format!("ATTACH '{}' AS aux", path_str(&other).replace('\'', "''"));
    let steps = |update: &str, changes: &str| {
        serde_json::json!([{"name": "attach", "sql": attach},
            {"name": "through", "sql": update, "expect_changes": serde_json::from_str::<serde_json::Value>(changes).unwrap()}])
        .to_string()
    };
    let (code, err) = run_steps(
        &db,
        "capped",
        &steps("UPDATE aux.vu SET a = 1", r#"{"max":19}"#),
        MODES[0],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("max is 19, but with its current work the step would have changed 20 rows"),
        "{err}"
    );
    let changed = "SELECT count(*) FROM aux.u WHERE a > 0";
    let count = |db: &TempDb| {
        let c = db.conn();
        c.execute_batch(&attach).unwrap();
        c.query_row(changed, [], |r| r.get::<_, i64>(0)).unwrap()
    };
    assert_eq!(count(&db), 0, "rolled back");
    let (code, err) = run_steps(
        &db,
        "counted",
        &steps(
            "UPDATE aux.vu SET a = 2 WHERE id <= 5",
            r#"{"min":5,"max":5}"#,
        ),
        MODES[0],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("through: done, 5 rows changed"), "{err}");
    assert_eq!(count(&db), 5);
}

/// A DELETE on a view whose trigger skips rows with `RAISE(IGNORE)` is
/// counted by the rows written, not by SQLite's count of the rows found;
/// the trigger was looked for with `LIKE`, which a step's `PRAGMA
/// case_sensitive_like` made miss `RAISE(IGNORE)` written in capitals:
/// the DELETE then counted the 15 rows it found, 10 of them skipped, and
/// passed a `min` of 10. It counts the 5 it deleted.
#[test]
fn a_case_sensitive_like_does_not_hide_a_trigger_that_skips_rows() {
    let db = views();
    db.conn()
        .execute_batch(
            "CREATE TRIGGER vkd INSTEAD OF DELETE ON vk BEGIN
               SELECT RAISE(IGNORE) WHERE old.id > 90;
               DELETE FROM t WHERE id = old.id;
             END;",
        )
        .unwrap();
    let steps = r#"[{"name":"like","sql":"PRAGMA case_sensitive_like = 1"},
        {"name":"purge","sql":"DELETE FROM vk WHERE id > 85","expect_changes":{"min":10}}]"#;
    let (code, err) = run_steps(&db, "like", steps, MODES[0]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("min is 10, but the step changed only 5 rows"),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM t"), 100, "rolled back");
}
