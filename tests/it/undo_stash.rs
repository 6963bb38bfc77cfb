//! A row the run deleted, then inserted again at the same key in a later
//! part, whose old `UNIQUE` value the application has taken since: the
//! undo takes the later insert back first, and the old row cannot come
//! back. Neither may be lost: the run's row stays, as the run left it,
//! whether both parts go back in one try or across an interrupted one.

use crate::util::*;

/// A table `t` of three rows (keys 1, 2, 3; emails 'a', 'b', 'c'),
/// `UNIQUE` on its email, in each shape a key can take.
const SHAPES: [(&str, &str); 6] = [
    (
        "INTEGER PRIMARY KEY",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE, v INT)",
    ),
    (
        "WITHOUT ROWID",
        "CREATE TABLE t(id INT PRIMARY KEY, email TEXT UNIQUE, v INT) WITHOUT ROWID",
    ),
    (
        "a bare rowid",
        "CREATE TABLE t(id INT, email TEXT UNIQUE, v INT)",
    ),
    (
        "a text key",
        "CREATE TABLE t(id TEXT PRIMARY KEY, email TEXT UNIQUE, v INT) WITHOUT ROWID",
    ),
    (
        "a rowid and a text primary key",
        "CREATE TABLE t(id TEXT PRIMARY KEY, email TEXT UNIQUE, v INT)",
    ),
    (
        "generated columns",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE, v INT,
           twice INT GENERATED ALWAYS AS (v * 2) STORED, shout TEXT AS (upper(email)))",
    ),
];

/// The plan of the report: row 2 deleted, another row changed, row 2
/// inserted again with another email (at the same rowid, for a table
/// keyed by a bare one; at another, under the same primary key, for a
/// rowid table whose primary key is text).
fn plan(shape: &str) -> String {
    let (drop, readd) = match shape {
        "a bare rowid" => (
            "DELETE FROM t WHERE rowid = 2",
            "INSERT INTO t(rowid, id, email, v) VALUES (2, 2, 'b2', 20)",
        ),
        _ => (
            "DELETE FROM t WHERE id = 2",
            "INSERT INTO t(id, email, v) VALUES (2, 'b2', 20)",
        ),
    };
    serde_json::json!({"name": "rl", "undo": true, "steps": [
        {"name": "drop", "sql": drop},
        {"name": "other", "sql": "UPDATE t SET v = v + 10 WHERE id = 1"},
        {"name": "readd", "sql": readd}]})
    .to_string()
}

/// `t` made as `create`, its three rows in, the plan run.
fn recorded(create: &str, shape: &str, env: &[(&str, &str)]) -> TempDb {
    let db = TempDb::with_sql(&format!(
        "{create}; INSERT INTO t(id, email, v) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);"
    ));
    let plan = db.file("plan.json", &plan(shape));
    let (code, _, err) = run_with_env(&run_args(&db, path_str(&plan), &["--no-serve"]), None, env);
    assert_eq!(code, 0, "{shape}: {err}");
    db
}

/// `t`'s rows as `id|email|v`, by id.
fn rows(db: &TempDb) -> Vec<String> {
    db.conn()
        .prepare("SELECT id || '|' || email || '|' || v FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// What the undo must leave: row 1 put back, row 3 the application's,
/// row 2 as the run left it.
const KEPT: [&str; 3] = ["1|a|1", "2|b2|20", "3|b|3"];

/// The undo of the plan with JSON progress, which must succeed: its
/// `finished` event and everything it said.
fn undo_json(db: &TempDb, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = undo_of_plan(db, "rl", &["--progress", "json"]);
    args.extend_from_slice(extra);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let fin = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("finished");
    (fin, out)
}

/// Whether batchsse's table of rows saved for the undo is in the file.
fn stash_left(db: &TempDb) -> i64 {
    db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_undo_stash'")
}

/// The report's case, in every shape of key and both ways of recording:
/// the row is kept as the run left it, said so and counted as such, and
/// the undo's own tables go once it is done.
#[test]
fn a_row_deleted_then_inserted_again_is_kept_as_the_run_left_it_when_its_old_value_is_taken() {
    for (shape, create) in SHAPES {
        for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
            let db = recorded(create, shape, env);
            db.conn()
                .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
                .unwrap();
            let (fin, out) = undo_json(&db, &[]);
            assert_eq!(rows(&db), KEPT, "{shape} {env:?}: {out}");
            assert_eq!(fin["data"]["conflicts"], 1, "{shape} {env:?}: {fin}");
            assert_eq!(
                fin["data"]["conflicts_as_left"], 1,
                "{shape} {env:?}: {fin}"
            );
            assert!(
                out.contains("conflict in t at key ")
                    && out.contains("kept its row as the run left it")
                    && !out.contains("stays deleted")
                    && out.contains("all but 1 row kept as the run left it"),
                "{shape} {env:?}: {out}"
            );
            assert_eq!(stash_left(&db), 0, "{shape} {env:?}");
            if shape == "generated columns" {
                let g = db.query_text("SELECT twice || shout FROM t WHERE id = 2");
                assert_eq!(g, "40B2", "{shape}");
            }
        }
    }
}

/// Without the clash the old row comes back, the run's row goes, and
/// nothing of the undo is left in the file.
#[test]
fn a_row_deleted_then_inserted_again_goes_back_whole_when_nothing_holds_its_value() {
    for (shape, create) in SHAPES {
        let db = recorded(create, shape, &[]);
        let (fin, out) = undo_json(&db, &[]);
        assert_eq!(rows(&db), ["1|a|1", "2|b|2", "3|c|3"], "{shape}: {out}");
        assert_eq!(fin["data"]["conflicts"], 0, "{shape}: {fin}");
        assert!(out.contains("fully taken back"), "{shape}: {out}");
        let own = db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse%'");
        assert_eq!(own, 0, "{shape}: {out}");
    }
}

/// A dry run writes nothing, saved rows included, and says what the
/// undo would keep.
#[test]
fn a_dry_run_of_it_writes_nothing_and_counts_the_row_kept_as_the_run_left_it() {
    let db = recorded(SHAPES[0].1, SHAPES[0].0, &[]);
    db.conn()
        .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
        .unwrap();
    let before = sha256(&db.path);
    let (fin, out) = undo_json(&db, &["--dry-run"]);
    assert_eq!(sha256(&db.path), before, "{out}");
    assert_eq!(fin["data"]["conflicts_as_left"], 1, "{fin}");
    assert!(
        out.contains("would keep its row as the run left it"),
        "{out}"
    );
}

/// `abort` stops at the conflict with the file as the step before left
/// it; the undo run again under `skip` keeps the row, which the earlier
/// try's taking back of the insert did not lose.
#[test]
fn an_undo_stopped_by_abort_then_run_again_keeps_the_row() {
    let db = recorded(SHAPES[0].1, SHAPES[0].0, &[]);
    db.conn()
        .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
        .unwrap();
    let args = undo_of_plan(&db, "rl", &["--on-conflict", "abort"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 2"), "{err}");
    assert!(
        err.contains("--on-conflict skip (keep the row the run inserted again at that key"),
        "{err}"
    );
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "overwrite"]));
    assert_eq!(code, 1, "overwrite cannot take the value back: {err}");
    let (fin, out) = undo_json(&db, &[]);
    assert_eq!(rows(&db), KEPT, "{out}");
    assert_eq!(fin["data"]["conflicts_as_left"], 1, "{fin}");
    assert!(out.contains("kept its row as the run left it"), "{out}");
    assert_eq!(stash_left(&db), 0);
}

/// kill -9 after the part that takes back the insert has committed, and
/// before the part of the delete: the undo run again still keeps the row.
/// The insert is the newer of two chunks of its step, so the undo sleeps
/// (`--sleep`) right after taking it back.
#[test]
fn an_undo_killed_between_the_insert_and_the_delete_then_run_again_keeps_the_row() {
    let db = TempDb::with_sql(&format!(
        "{}; INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);
         CREATE TABLE src(n INTEGER PRIMARY KEY, id INT, email TEXT, v INT);
         INSERT INTO src VALUES (1, 4, 'd', 40), (2, 2, 'b2', 20);",
        SHAPES[0].1
    ));
    let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
        {"name": "drop", "sql": "DELETE FROM t WHERE id = 2"},
        {"name": "other", "sql": "UPDATE t SET v = v + 10 WHERE id = 1"},
        {"name": "readd", "sql": "INSERT INTO t SELECT id, email, v FROM src WHERE n BETWEEN :lo AND :hi",
         "chunk": {"table": "src", "size": 1}}]});
    let plan = db.file("plan.json", &plan.to_string());
    run_undoable(&db, &plan);
    db.conn()
        .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
        .unwrap();
    let mut args = undo_of_plan(&db, "rl", &[]);
    args.retain(|a| *a != "--no-serve");
    args.extend_from_slice(&words(
        "--listen 127.0.0.1:0 --wait-for-clients 1 --sleep 60000 --progress none",
    ));
    let mut p = Proc::start(&args);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    loop {
        match s.next_event() {
            Some(e) if e.event == "progress" => break,
            Some(e) => assert_ne!(e.event, "finished", "{}", p.stderr()),
            None => panic!("the stream ended early: {}", p.stderr()),
        }
    }
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE id = 2"),
        0,
        "the newer part was taken back before the kill"
    );
    let (fin, out) = undo_json(&db, &[]);
    let rows = rows(&db);
    assert_eq!(rows, KEPT, "{out}");
    assert_eq!(fin["data"]["conflicts_as_left"], 1, "{fin}");
    assert!(out.contains("kept its row as the run left it"), "{out}");
    assert_eq!(stash_left(&db), 0);
}

/// The report's case, its application's change made, undone under
/// `abort`: the undo stops at the delete's part, the run's row saved by
/// the insert's part before (and what the undo said).
fn stopped_with_a_row_saved() -> (TempDb, String) {
    let db = recorded(SHAPES[0].1, SHAPES[0].0, &[]);
    db.conn()
        .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
        .unwrap();
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
    assert_eq!(code, 1, "{err}");
    (db, err)
}

/// `undo clear` of a record whose undo stopped with a row saved removes
/// the saved row with the record, and the table with them.
#[test]
fn undo_clear_removes_the_rows_an_undo_saved() {
    let (db, err) = stopped_with_a_row_saved();
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo_stash"),
        1,
        "the run's row 2 saved: {err}"
    );
    let (code, _, err) = run(&["undo", "clear", "--db", path_str(&db.path), "--plan", "rl"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stash_left(&db), 0, "{err}");
}

/// The application adds a row of its own at the key between the two
/// parts (an undo stopped by `abort` in between): the key has a row, the
/// application's, which stays; the run's saved row is not put back, and
/// the old one stays deleted. Whether the record's key or a primary key
/// (beside a rowid) tells the rows apart.
#[test]
fn a_row_the_application_adds_at_the_key_between_the_parts_stays_and_the_saved_row_goes() {
    for (shape, create) in [SHAPES[0], SHAPES[4]] {
        let db = recorded(create, shape, &[]);
        db.conn()
            .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
            .unwrap();
        let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
        assert_eq!(code, 1, "{shape}: {err}");
        db.conn()
            .execute_batch("INSERT INTO t(id, email, v) VALUES (2, 'zz', 99)")
            .unwrap();
        let (fin, out) = undo_json(&db, &[]);
        assert_eq!(rows(&db), ["1|a|1", "2|zz|99", "3|b|3"], "{shape}: {out}");
        assert_eq!(fin["data"]["conflicts"], 1, "{shape}: {fin}");
        assert!(
            !out.contains("kept its row as the run left it"),
            "{shape}: {out}"
        );
        assert_eq!(stash_left(&db), 0, "{shape}");
    }
}

/// Within one part: a `REPLACE` in a rowid table whose primary key is
/// text deletes the row and inserts the new one under another rowid, side
/// by side in the record. The old row cannot come back, so the new one
/// stays, as the run left it. (In a table keyed by its rowid the undo
/// stops there instead, as before: the same key.)
#[test]
fn a_row_replaced_under_its_text_primary_key_is_kept_as_the_run_left_it() {
    let db = TempDb::with_sql(&format!(
        "{}; INSERT INTO t(id, email, v) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);",
        SHAPES[4].1
    ));
    let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
        {"name": "replace", "sql": "INSERT OR REPLACE INTO t(id, email, v) VALUES ('2', 'b2', 20)"}]});
    let plan = db.file("plan.json", &plan.to_string());
    run_undoable(&db, &plan);
    db.conn()
        .execute_batch("UPDATE t SET email = 'b' WHERE id = '3'")
        .unwrap();
    let (fin, out) = undo_json(&db, &[]);
    assert_eq!(rows(&db), ["1|a|1", "2|b2|20", "3|b|3"], "{out}");
    assert_eq!(fin["data"]["conflicts_as_left"], 1, "{fin}");
    assert!(out.contains("kept its row as the run left it"), "{out}");
    assert_eq!(stash_left(&db), 0);
}

/// A chain on one key: the run deletes row 2, inserts it again, deletes
/// that one and inserts it a third time. When the old row cannot come
/// back, the row kept is the one the run left, its last, not the one in
/// between; when it can, it does, and no saved row stays behind. In every
/// shape of key.
#[test]
fn a_row_deleted_and_inserted_again_twice_is_kept_as_the_run_last_left_it() {
    for (shape, create) in SHAPES {
        for taken in [true, false] {
            let db = chained(create, shape);
            if taken {
                db.conn()
                    .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
                    .unwrap();
            }
            let (fin, out) = undo_json(&db, &[]);
            let want = match taken {
                true => ["1|a|1", "2|b3|30", "3|b|3"],
                false => ["1|a|1", "2|b|2", "3|c|3"],
            };
            assert_eq!(rows(&db), want, "{shape} {taken}: {out}");
            let (field, want) = match taken {
                true => ("conflicts_as_left", 1),
                false => ("conflicts", 0),
            };
            assert_eq!(fin["data"][field], want, "{shape}: {fin}");
            assert_eq!(stash_left(&db), 0, "{shape} {taken}: {out}");
        }
    }
}

/// `t` made as `create`, and the run of a plan that deletes its row 2 and
/// inserts it again, twice ('b2' then 'b3').
fn chained(create: &str, shape: &str) -> TempDb {
    let db = TempDb::with_sql(&format!(
        "{create}; INSERT INTO t(id, email, v) VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);"
    ));
    let (by, rowid) = match shape {
        "a bare rowid" => ("rowid = 2", ("rowid, ", "2, ")),
        _ => ("id = 2", ("", "")),
    };
    let readd = |email: &str, v: i64| {
        format!(
            "INSERT INTO t({}id, email, v) VALUES ({}2, '{email}', {v})",
            rowid.0, rowid.1
        )
    };
    let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
        {"name": "drop", "sql": format!("DELETE FROM t WHERE {by}")},
        {"name": "readd", "sql": readd("b2", 20)},
        {"name": "drop again", "sql": format!("DELETE FROM t WHERE {by}")},
        {"name": "readd again", "sql": readd("b3", 30)}]});
    let plan = db.file("plan.json", &plan.to_string());
    run_undoable(&db, &plan);
    db
}

/// A table with no `UNIQUE` index besides its key, the most common one a
/// plan deletes rows from and inserts them into again: no other row can
/// hold a value of a row the run deleted, so none is saved when the undo
/// takes back the insert at its key (the parts then go back a statement
/// each, not row by row with a copy of every row), and the old row still
/// comes back whole. Only where the record keys the rows by a rowid that
/// is not their primary key is the row saved all the same: the rowid
/// itself can be taken. The undo stops (`abort`) at the application's
/// change to row 1, between the two parts of row 2.
#[test]
fn a_row_deleted_then_inserted_again_is_saved_only_where_another_row_could_hold_its_values() {
    for (shape, create) in SHAPES {
        let create = create.replace("email TEXT UNIQUE", "email TEXT");
        let db = recorded(&create, shape, &[]);
        db.conn()
            .execute_batch("UPDATE t SET v = 99 WHERE id = 1")
            .unwrap();
        let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
        assert_eq!(code, 1, "{shape}: {err}");
        // A row with an empty key only marks the table's rows unsaved.
        let saved = stash_left(&db) == 1
            && db.query_i64("SELECT count(*) FROM batchsse_undo_stash WHERE length(k) > 0") == 1;
        assert_eq!(
            saved,
            shape == "a rowid and a text primary key",
            "{shape}: {err}"
        );
        let (fin, out) = undo_json(&db, &[]);
        assert_eq!(rows(&db), ["1|a|99", "2|b|2", "3|c|3"], "{shape}: {out}");
        assert_eq!(fin["data"]["conflicts"], 1, "{shape}: {fin}");
        assert_eq!(stash_left(&db), 0, "{shape}: {out}");
    }
}

/// The rows an undo saves are found by their key when the part of their
/// delete goes back, one look per row: the table has an index on it (a
/// plan that deletes a million rows with a `UNIQUE` column and inserts
/// them again saves a million; each look read them all without it). The
/// look is the undo's own, the key in both its forms (an earlier build's
/// too).
#[test]
fn the_rows_an_undo_saves_are_looked_up_by_key_through_an_index() {
    let (db, _) = stopped_with_a_row_saved();
    let conn = db.conn();
    let mut stmt = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT rowid, cols, vals FROM batchsse_undo_stash
             WHERE tbl = 't' AND k IN (x'058000000000000002', x'52') AND run IN ('r')",
        )
        .unwrap();
    let details: Vec<String> = stmt
        .query_map([], |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        details
            .iter()
            .any(|d| d.contains("USING INDEX") && d.contains("tbl=? AND k=?")),
        "{details:?}"
    );
}

/// A table with nothing that could keep an old row from coming back, so
/// the run's row at a key it had deleted went back unsaved, gains a
/// `UNIQUE` index before the old row goes back (here between two tries of
/// the undo, the first stopped by `abort`), one that the application's
/// row already satisfies while the old row would not: the undo stops
/// before that part writes, saying what to do, instead of leaving the key
/// with no row; done so, the old row comes back.
#[test]
fn a_unique_index_made_after_rows_went_back_unsaved_stops_the_undo_before_a_key_is_left_empty() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT, v INT);
         INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4), (5, 'e', 5);",
    );
    let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
        {"name": "drop", "sql": "DELETE FROM t WHERE id = 2"},
        {"name": "other", "sql": "UPDATE t SET v = v + 10 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "t", "key": "id", "size": 1}},
        {"name": "readd", "sql": "INSERT INTO t(id, email, v) VALUES (2, 'b2', 20)"}]});
    let plan = db.file("plan.json", &plan.to_string());
    run_undoable(&db, &plan);
    db.conn()
        .execute_batch("UPDATE t SET email = 'b' WHERE id = 3; UPDATE t SET v = -1 WHERE id = 5")
        .unwrap();
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
    assert_eq!(code, 1, "{err}");
    db.conn()
        .execute_batch("CREATE UNIQUE INDEX t_email ON t(email)")
        .unwrap();
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &[]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("t gained a UNIQUE index while this undo ran")
            && err.contains("drop that index, run the undo again"),
        "{err}"
    );
    db.conn().execute_batch("DROP INDEX t_email").unwrap();
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(rows(&db)[1], "2|b|2", "{err}");
    assert_eq!(stash_left(&db), 0, "{err}");
}

/// A primary key compared `NOCASE` (or `RTRIM`): the run deletes 'bob'
/// and inserts 'BOB', the same row to the table. With the old row's
/// `UNIQUE` value taken since, the run's row stays, as the run left it,
/// rather than the key being left with no row; in a WITHOUT ROWID table
/// and in a rowid table whose primary key is text.
#[test]
fn a_row_inserted_again_under_a_key_its_collation_calls_the_same_is_kept_as_the_run_left_it() {
    let cases = [
        ("NOCASE", "'bob'", "'BOB'", "WITHOUT ROWID"),
        ("NOCASE", "'bob'", "'BOB'", ""),
        ("RTRIM", "'bob'", "'bob  '", "WITHOUT ROWID"),
    ];
    for (coll, old, new, rowid) in cases {
        let db = TempDb::with_sql(&format!(
            "CREATE TABLE t(name TEXT PRIMARY KEY COLLATE {coll}, email TEXT UNIQUE, v INT) {rowid};
             INSERT INTO t VALUES ('ann', 'a', 1), ('bob', 'b', 2), ('cy', 'c', 3);"
        ));
        let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
            {"name": "drop", "sql": format!("DELETE FROM t WHERE name = {old}")},
            {"name": "readd", "sql": format!("INSERT INTO t(name, email, v) VALUES ({new}, 'b2', 20)")}]});
        let plan = db.file("plan.json", &plan.to_string());
        run_undoable(&db, &plan);
        db.conn()
            .execute_batch("UPDATE t SET email = 'b' WHERE name = 'cy'")
            .unwrap();
        let (fin, out) = undo_json(&db, &[]);
        let kept = db.query_text("SELECT group_concat(name || '|' || email, ',') FROM t");
        let want = format!("{}|b2", new.trim_matches('\''));
        assert!(kept.contains(&want), "{coll} {rowid}: {kept}: {out}");
        assert_eq!(fin["data"]["conflicts_as_left"], 1, "{coll} {rowid}: {fin}");
    }
}

/// `t` made as `create` with 30 rows (emails 'e1'…'e30'), and the run of
/// a rebuild in chunks of 10: every row deleted, then inserted again at
/// its key from a copy, with emails 'n1'… and ten times its `v`. Each
/// chunk's part goes back in one statement, the rows saved and removed
/// again a part at a time.
fn rebuilt(create: &str, shape: &str) -> TempDb {
    let rowid = match shape {
        "a bare rowid" => ("rowid, ", "id, "),
        _ => ("", ""),
    };
    let db = TempDb::with_sql(&format!(
        "{create};
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)
         INSERT INTO t({}id, email, v) SELECT {}i, 'e' || i, i FROM n;
         CREATE TABLE src AS SELECT id, 'n' || id AS email, v * 10 AS v FROM t;",
        rowid.0,
        rowid.1.replace("id", "i")
    ));
    let by = match shape {
        "a bare rowid" => "rowid",
        _ => "id",
    };
    let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
        {"name": "drop", "sql": format!("DELETE FROM t WHERE {by} BETWEEN :lo AND :hi"),
         "chunk": {"table": "t", "size": 10}},
        {"name": "readd", "sql": format!(
            "INSERT INTO t({}id, email, v) SELECT {}id, email, v FROM src WHERE rowid BETWEEN :lo AND :hi",
            rowid.0, rowid.1),
         "chunk": {"table": "src", "size": 10}}]});
    let plan = db.file("plan.json", &plan.to_string());
    // The tests stop the undo at a given part.
    run_undoable_in_tens(&db, &plan);
    db
}

/// A rebuild of 30 rows in chunks, undone: the application has since
/// taken row 7's old email (in a row of its own), changed the run's row
/// 12 and deleted the run's row 18. Row 7 stays as the run left it (its
/// row saved with its part's others), row 12 as the application has it
/// (not saved: not deleted), row 18 stays deleted, as the application
/// left it, and every other row comes back; nothing saved is left. In
/// the shapes of key whose parts go back a statement each.
#[test]
fn a_rebuild_in_chunks_keeps_each_row_whose_old_value_is_taken_as_the_run_left_it() {
    for (shape, create) in [SHAPES[0], SHAPES[2], SHAPES[5]] {
        let db = rebuilt(create, shape);
        db.conn()
            .execute_batch(
                "INSERT INTO t(id, email, v) VALUES (100, 'e7', 0);
                 UPDATE t SET v = 999 WHERE id = 12; DELETE FROM t WHERE id = 18;",
            )
            .unwrap();
        let (fin, out) = undo_json(&db, &[]);
        let mut want: Vec<String> = (1..=30).map(|i| format!("{i}|e{i}|{i}")).collect();
        want[6] = "7|n7|70".into();
        want[11] = "12|n12|999".into();
        want.remove(17);
        want.push("100|e7|0".into());
        assert_eq!(rows(&db), want, "{shape}: {out}");
        assert_eq!(fin["data"]["conflicts_as_left"], 1, "{shape}: {fin}");
        assert!(
            out.contains("kept its row as the run left it"),
            "{shape}: {out}"
        );
        assert_eq!(stash_left(&db), 0, "{shape}: {out}");
    }
}

/// The same rebuild, row 7's old email taken, undone under `abort`: it
/// stops at the oldest chunk of the delete, which is rolled back. The
/// rows of its 10 keys stay saved, and those of the 20 keys whose old
/// rows came back are not; run again, the undo keeps row 7 as the run
/// left it.
#[test]
fn a_rebuild_in_chunks_stopped_keeps_saved_only_the_rows_still_needed() {
    let db = rebuilt(SHAPES[0].1, SHAPES[0].0);
    db.conn()
        .execute_batch("INSERT INTO t(id, email, v) VALUES (100, 'e7', 0)")
        .unwrap();
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 7"), "{err}");
    let saved = "SELECT group_concat(k, ',') FROM (SELECT DISTINCT hex(k) AS k FROM batchsse_undo_stash WHERE length(k) > 0 ORDER BY rowid)";
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo_stash"),
        10,
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM t"), 21, "{err}");
    let keys = db.query_text(saved);
    assert_eq!(keys.split(',').count(), 10, "{keys}");
    let (fin, out) = undo_json(&db, &[]);
    let mut want: Vec<String> = (1..=30).map(|i| format!("{i}|e{i}|{i}")).collect();
    want[6] = "7|n7|70".into();
    want.push("100|e7|0".into());
    assert_eq!(rows(&db), want, "{out}");
    assert_eq!(fin["data"]["conflicts_as_left"], 1, "{fin}");
    assert_eq!(stash_left(&db), 0, "{out}");
}

/// An undo of plan "rl" that has read the record and the saved rows (its
/// `start` is said once it has) and waits for a second client; the first,
/// given back, must stay open.
fn undo_waiting_after_start(db: &TempDb) -> (Proc, Stream) {
    let mut args = undo_of_plan(db, "rl", &["--progress", "json"]);
    args.retain(|a| *a != "--no-serve");
    args.extend_from_slice(&words("--listen 127.0.0.1:0 --wait-for-clients 2"));
    let waiting = Proc::start(&args);
    let mut s = Stream::open(waiting.addr(), "/events", &[]);
    loop {
        match s.next_event() {
            Some(e) if e.event == "start" => return (waiting, s),
            Some(_) => {}
            None => panic!("the stream ended early: {}", waiting.stderr()),
        }
    }
}

/// Two undos of the record at once: one (`--wait-for-clients`) has read
/// what is saved, then waits; meanwhile the other takes back the insert,
/// saving the run's row, and stops (`abort`) at the delete, whose old row
/// cannot come back. The first, let go, takes back the delete: it must
/// find the row the other saved, though it was saved after it looked,
/// and keep it as the run left it rather than leave key 2 with no row.
#[test]
fn a_row_saved_by_another_undo_at_work_beside_it_is_kept_as_the_run_left_it() {
    let db = recorded(SHAPES[0].1, SHAPES[0].0, &[]);
    db.conn()
        .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
        .unwrap();
    let (mut waiting, _first) = undo_waiting_after_start(&db);
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo_stash"),
        1,
        "{err}"
    );
    let _go = Stream::open(waiting.addr(), "/events", &[]);
    assert!(waiting.wait().success(), "{}", waiting.stderr());
    let said = waiting.stdout();
    assert_eq!(rows(&db), KEPT, "{said}");
    assert!(said.contains("kept its row as the run left it"), "{said}");
    assert_eq!(stash_left(&db), 0, "{said}");
}

/// As above, in a table with nothing that could keep an old row from
/// coming back: the other undo takes back the insert unsaved, and stops
/// (`abort`) at the application's change to row 1; a `UNIQUE` index then
/// made, which the old row 2 would break, must stop the first undo too,
/// though it read what was saved before the other marked the table, and
/// not leave key 2 with no row.
#[test]
fn a_unique_index_made_after_another_undo_took_back_inserts_unsaved_stops_this_one_too() {
    let create = SHAPES[0].1.replace("email TEXT UNIQUE", "email TEXT");
    let db = recorded(&create, SHAPES[0].0, &[]);
    db.conn()
        .execute_batch("UPDATE t SET v = 99 WHERE id = 1")
        .unwrap();
    let (mut waiting, _first) = undo_waiting_after_start(&db);
    let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
    assert_eq!(code, 1, "{err}");
    db.conn()
        .execute_batch(
            "UPDATE t SET email = 'b' WHERE id = 3; CREATE UNIQUE INDEX t_email ON t(email)",
        )
        .unwrap();
    let _go = Stream::open(waiting.addr(), "/events", &[]);
    let status = waiting.wait();
    let said = waiting.stdout();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("t gained a UNIQUE index while this undo ran"),
        "{said}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE id = 2"),
        0,
        "{said}"
    );
    db.conn().execute_batch("DROP INDEX t_email").unwrap();
    let (fin, out) = undo_json(&db, &[]);
    assert_eq!(rows(&db)[1], "2|b|2", "{out}");
    assert_eq!(fin["data"]["conflicts_earlier"], 1, "{fin}");
    assert_eq!(stash_left(&db), 0, "{out}");
}

/// A key SQLite holds as a real, 2.0, in a primary key of no type: the
/// run deletes its row and inserts another at 2, the same key to the
/// table. With the old row's `UNIQUE` value taken since, the run's row
/// stays, as the run left it, rather than the key being left with no row;
/// in a WITHOUT ROWID table and in a rowid table beside its rowid.
#[test]
fn a_row_inserted_again_at_an_integer_key_equal_to_its_real_one_is_kept_as_the_run_left_it() {
    for rowid in ["WITHOUT ROWID", ""] {
        let db = TempDb::with_sql(&format!(
            "CREATE TABLE t(id PRIMARY KEY, email TEXT UNIQUE, v INT) {rowid};
             INSERT INTO t VALUES (1, 'a', 1), (2.0, 'b', 2), (3, 'c', 3);"
        ));
        let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
            {"name": "drop", "sql": "DELETE FROM t WHERE id = 2"},
            {"name": "readd", "sql": "INSERT INTO t(id, email, v) VALUES (2, 'b2', 20)"}]});
        let plan = db.file("plan.json", &plan.to_string());
        run_undoable(&db, &plan);
        db.conn()
            .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
            .unwrap();
        let (fin, out) = undo_json(&db, &[]);
        assert_eq!(rows(&db), ["1|a|1", "2|b2|20", "3|b|3"], "{rowid}: {out}");
        assert_eq!(fin["data"]["conflicts_as_left"], 1, "{rowid}: {fin}");
        assert!(
            out.contains("kept its row as the run left it"),
            "{rowid}: {out}"
        );
        assert_eq!(stash_left(&db), 0, "{rowid}: {out}");
    }
}

/// Rewrites the keys of the rows saved in `db` as builds before this one
/// wrote them, as an undo stopped by such a build left them; returns how
/// many.
fn saved_as_an_earlier_build_did(db: &TempDb) -> usize {
    let conn = db.conn();
    let keys: Vec<(i64, Vec<u8>)> = conn
        .prepare("SELECT rowid, k FROM batchsse_undo_stash WHERE length(k) > 0")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (rowid, k) in &keys {
        conn.execute(
            "UPDATE batchsse_undo_stash SET k = ?1 WHERE rowid = ?2",
            rusqlite::params![earlier_form(k), rowid],
        )
        .unwrap();
    }
    keys.len()
}

/// A saved row's key (values one after the other, each a tag and its
/// bytes) as builds before this one wrote it: each integer, here a tag 5
/// and 8 bytes big-endian with the sign bit flipped, as the record writes
/// it (the integers -64..=175 in the tag alone, as the integer plus 80;
/// any other as tag 4 and its zigzag varint); any other value as it is.
fn earlier_form(k: &[u8]) -> Vec<u8> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < k.len() {
        let (tag, from) = (k[at], at);
        at += 1;
        match tag {
            0 => {}
            1 => at += 8,
            2 | 3 => {
                let (n, len) = varint(&k[at..]);
                at += len + n as usize;
            }
            5 => {
                let n = i64::from_be_bytes(k[at..at + 8].try_into().unwrap()) ^ i64::MIN;
                at += 8;
                match n.checked_add(80) {
                    Some(t @ 16..=255) => out.push(t as u8),
                    _ => {
                        out.push(4);
                        put_varint(&mut out, ((n << 1) ^ (n >> 63)) as u64);
                    }
                }
                continue;
            }
            t => panic!("a key as this build saves it has no tag {t}: {k:?}"),
        }
        out.extend_from_slice(&k[from..at]);
    }
    out
}

/// The varint at the start of `b`, low bits first, and its length.
fn varint(b: &[u8]) -> (u64, usize) {
    let mut n = 0;
    for (i, x) in b.iter().enumerate() {
        n |= u64::from(x & 0x7f) << (7 * i);
        if *x < 0x80 {
            return (n, i + 1);
        }
    }
    panic!("a varint that does not end: {b:?}")
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// An undo stopped by an earlier build, with the run's row saved in the
/// form that build wrote its key in, is resumed by this one: the row is
/// found, kept as the run left it, and removed.
#[test]
fn a_row_saved_by_an_earlier_build_is_found_when_the_undo_resumes() {
    let (db, err) = stopped_with_a_row_saved();
    assert_eq!(as_an_earlier_build_left_it(&db), 1, "{err}");
    let (fin, out) = undo_json(&db, &[]);
    assert_eq!(rows(&db), KEPT, "{out}");
    assert_eq!(fin["data"]["conflicts_as_left"], 1, "{fin}");
    assert!(out.contains("kept its row as the run left it"), "{out}");
    assert_eq!(stash_left(&db), 0, "{out}");
}

/// The rebuild in chunks, row 25's old email taken: an undo stops at the
/// newest part of the delete (rows 21-30) with every row the run inserted
/// saved, their keys then rewritten as an earlier build wrote them. The
/// application gives row 25's email back and takes row 5's: resumed, the
/// undo puts back rows 11-30, removing their 20 saved rows as it goes,
/// and stops at the oldest part, rows 1-10, whose saved rows stay. Run again with the
/// email given back, it restores every row and leaves nothing saved.
#[test]
fn rows_saved_by_an_earlier_build_go_as_their_old_rows_come_back() {
    let db = rebuilt(SHAPES[0].1, SHAPES[0].0);
    let take = |email: &str| {
        db.conn()
            .execute_batch(&format!(
                "DELETE FROM t WHERE id = 100; INSERT INTO t(id, email, v) VALUES (100, '{email}', 0)"
            ))
            .unwrap();
    };
    take("e25");
    let abort = undo_of_plan(&db, "rl", &["--on-conflict", "abort"]);
    let (code, _, err) = run(&abort);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 25"), "{err}");
    assert_eq!(as_an_earlier_build_left_it(&db), 30, "{err}");
    take("e5");
    let (code, _, err) = run(&abort);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 5"), "{err}");
    assert_eq!(
        db.query_text("SELECT group_concat(hex(k), ',') FROM batchsse_undo_stash WHERE length(k) > 0 ORDER BY k"),
        (1..=10).map(|n| format!("{:02X}", n + 80)).collect::<Vec<_>>().join(","),
        "{err}"
    );
    finished_once_row_100_goes(&db);
}

/// An undo stopped by an earlier build resumes in this one whatever the
/// key: a primary key beside a rowid (two columns, one compared NOCASE)
/// or a WITHOUT ROWID one, and integers an earlier build wrote as a
/// varint (negative, past 2^32, the ends of the range), not in the tag
/// alone. A dry run of it writes nothing and says the row would be kept;
/// the undo keeps it as the run left it, and removes what was saved.
#[test]
fn a_row_saved_by_an_earlier_build_is_found_whatever_its_key() {
    let composite = "CREATE TABLE t(id INT, tag TEXT COLLATE NOCASE, email TEXT UNIQUE, v INT, PRIMARY KEY (id, tag))";
    let cases = [
        (composite.to_owned(), "-5000000000"),
        (format!("{composite} WITHOUT ROWID"), "9007199254740993"),
        (
            SHAPES[0].1.replace("v INT", "v INT, tag TEXT"),
            "-9223372036854775808",
        ),
        (
            SHAPES[0].1.replace("v INT", "v INT, tag TEXT"),
            "9223372036854775807",
        ),
    ];
    for (create, key) in cases {
        let db = TempDb::with_sql(&format!(
            "{create}; INSERT INTO t(id, tag, email, v) VALUES (1, 'x', 'a', 1), ({key}, 'bob', 'b', 2), (3, 'x', 'c', 3);"
        ));
        let plan = serde_json::json!({"name": "rl", "undo": true, "steps": [
            {"name": "drop", "sql": format!("DELETE FROM t WHERE id = {key}")},
            {"name": "other", "sql": "UPDATE t SET v = v + 10 WHERE id = 1"},
            {"name": "readd", "sql": format!("INSERT INTO t(id, tag, email, v) VALUES ({key}, 'BOB', 'b2', 20)")}]});
        let plan = db.file("plan.json", &plan.to_string());
        run_undoable(&db, &plan);
        db.conn()
            .execute_batch("UPDATE t SET email = 'b' WHERE id = 3")
            .unwrap();
        let (code, _, err) = run(&undo_of_plan(&db, "rl", &["--on-conflict", "abort"]));
        assert_eq!(code, 1, "{create} {key}: {err}");
        assert_eq!(as_an_earlier_build_left_it(&db), 1, "{create} {key}: {err}");
        let before = sha256(&db.path);
        let (_, out) = undo_json(&db, &["--dry-run"]);
        assert_eq!(sha256(&db.path), before, "{create} {key}: {out}");
        assert!(
            out.contains("would keep its row as the run left it") && !out.contains("stays deleted"),
            "{create} {key}: {out}"
        );
        let (_, out) = undo_json(&db, &[]);
        let row =
            format!("SELECT count(*) FROM t WHERE id = {key} AND tag = 'BOB' AND email = 'b2'");
        assert_eq!(db.query_i64(&row), 1, "{create} {key}: {out}");
        assert!(!out.contains("stays deleted"), "{create} {key}: {out}");
        assert_eq!(stash_left(&db), 0, "{create} {key}: {out}");
    }
}

/// Makes the table of saved rows as a build before keys sorted left it:
/// its keys in the earlier form, and without `key_form`.
fn as_an_earlier_build_left_it(db: &TempDb) -> usize {
    let n = saved_as_an_earlier_build_did(db);
    db.conn()
        .execute_batch(
            "CREATE TABLE earlier (
                 run TEXT NOT NULL, tbl TEXT NOT NULL, k NOT NULL, cols TEXT NOT NULL, vals NOT NULL,
                 at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
             INSERT INTO earlier (rowid, run, tbl, k, cols, vals, at)
                 SELECT rowid, run, tbl, k, cols, vals, at FROM batchsse_undo_stash;
             DROP TABLE batchsse_undo_stash;
             ALTER TABLE earlier RENAME TO batchsse_undo_stash;
             CREATE INDEX batchsse_undo_stash_by_key ON batchsse_undo_stash(tbl, k);",
        )
        .unwrap();
    n
}

/// The rebuild in chunks, the run's row 5 changed since: an undo by an
/// earlier build stops at the insert's oldest part (rows 1-10) with the
/// newer parts' 20 rows saved. The application puts row 5 back and takes
/// row 25's old email: resumed here, the undo saves rows 1-10 in the
/// sorted form and stops at the delete's newest part. Before it writes
/// one, it remakes the table with a `key_form` that must be set and has
/// no default (which an earlier build refuses, rather than lose rows it
/// cannot find), the 20 rows kept in it as they were, though a view of
/// the file names a table gone; finished, every row is back and nothing
/// is left saved.
#[test]
fn a_table_of_saved_rows_an_earlier_build_left_is_remade_before_sorted_keys_go_in() {
    let db = rebuilt(SHAPES[0].1, SHAPES[0].0);
    db.conn()
        .execute_batch("UPDATE t SET v = 7 WHERE id = 5")
        .unwrap();
    let abort = undo_of_plan(&db, "rl", &["--on-conflict", "abort"]);
    let (code, _, err) = run(&abort);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 5"), "{err}");
    assert_eq!(as_an_earlier_build_left_it(&db), 20, "{err}");
    // And a view of the application's left naming a table gone since,
    // which makes SQLite refuse to rename any table in the file.
    db.conn()
        .execute_batch(
            "UPDATE t SET v = 50 WHERE id = 5; INSERT INTO t(id, email, v) VALUES (100, 'e25', 0);
             CREATE TABLE old_report(x); CREATE VIEW report AS SELECT x FROM old_report;
             DROP TABLE old_report;",
        )
        .unwrap();
    let (code, _, err) = run(&abort);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 25"), "{err}");
    assert_eq!(
        db.query_text(
            "SELECT group_concat(x, ' ') FROM (SELECT key_form || ':' || count(*) AS x FROM batchsse_undo_stash GROUP BY key_form ORDER BY key_form)"
        ),
        "1:20 2:10",
        "{err}"
    );
    assert_eq!(
        db.query_i64(
            "SELECT \"notnull\" AND dflt_value IS NULL FROM pragma_table_info('batchsse_undo_stash') WHERE name = 'key_form'"
        ),
        1
    );
    finished_once_row_100_goes(&db);
}

/// The rebuild's undo run again once the application's row 100 (which
/// held an old email) is gone: every row comes back as it was before the
/// run, and nothing is left saved.
fn finished_once_row_100_goes(db: &TempDb) {
    db.conn()
        .execute_batch("DELETE FROM t WHERE id = 100")
        .unwrap();
    let (_, out) = undo_json(db, &[]);
    let want: Vec<String> = (1..=30).map(|i| format!("{i}|e{i}|{i}")).collect();
    assert_eq!(rows(db), want, "{out}");
    assert_eq!(stash_left(db), 0, "{out}");
}
