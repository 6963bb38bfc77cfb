//! Table and column names that hold a line feed and an escape sequence:
//! every message naming them keeps to its line and shows them escaped
//! (`human::shown`), in a refused plan, a run's warnings and an undo's
//! conflicts; the JSON fields that carry a name keep it as given.

use serde_json::{Value, json};

use crate::util::*;

/// A table whose name breaks a line and then clears the screen.
const TABLE: &str = "a\nb\u{1b}[2J";
/// A unique column whose name breaks a line and moves the cursor up.
const COLUMN: &str = "k\nl\u{1b}[1A";
/// The two as a message shows them.
const TABLE_SHOWN: &str = r"a\nb\u{1b}[2J";
const COLUMN_SHOWN: &str = r"k\nl\u{1b}[1A";

/// `s` as an SQL identifier.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A file with TABLE: ten rows, `COLUMN` = 10 × id, `v` = 0.
fn hostile_db() -> TempDb {
    TempDb::with_sql(&format!(
        "CREATE TABLE {t}(id INTEGER PRIMARY KEY, {c} INT UNIQUE, v INT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
         INSERT INTO {t}(id, {c}, v) SELECT i, i * 10, 0 FROM n;",
        t = q(TABLE),
        c = q(COLUMN)
    ))
}

/// A plan `file` of one step chunked over TABLE by `key` (rowid if `None`).
fn plan(db: &TempDb, file: &str, sql: &str, key: Option<&str>) -> std::path::PathBuf {
    let mut chunk = json!({"table": TABLE});
    if let Some(key) = key {
        chunk["key"] = json!(key);
    }
    let text = json!({"name": "p", "steps": [{"name": "s", "sql": sql, "chunk": chunk}]});
    db.file(file, &text.to_string())
}

/// No raw escape reaches the terminal, and no line starts with what
/// followed a line feed in a name.
fn assert_names_kept_on_their_lines(err: &str) {
    assert!(!err.contains('\u{1b}'), "a raw ESC: {err:?}");
    for line in err.lines() {
        assert!(
            !["b\\u{1b}", "b\u{1b}", "l\\u{1b}", "l\u{1b}"]
                .iter()
                .any(|tail| line.starts_with(tail)),
            "a name broke its line: {line:?} in:\n{err}"
        );
    }
}

/// A plan the check refuses names the table and its columns escaped, on
/// the one line of its error, and leaves the file as it was.
#[test]
fn a_refused_plan_names_a_hostile_table_and_column_on_one_line() {
    let db = hostile_db();
    let (t, c) = (q(TABLE), q(COLUMN));
    let moves = format!("UPDATE {t} SET {c} = {c} + 1000 WHERE {c} BETWEEN :lo AND :hi");
    let cases = [
        (
            plan(&db, "nope.json", "UPDATE t SET v = 1", Some("nope")),
            format!("is not a column of {TABLE_SHOWN} (columns: id, {COLUMN_SHOWN}, v)"),
        ),
        (
            plan(&db, "moves.json", &moves, Some(COLUMN)),
            format!("changes its own chunk key: it writes {TABLE_SHOWN}.{COLUMN_SHOWN}. The walk"),
        ),
    ];
    let before = db.bytes();
    for (plan, said) in cases {
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&said), "{said}\nnot in:\n{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_names_kept_on_their_lines(&err);
        assert_eq!(db.bytes(), before);
    }
}

/// A walk that changes no row warns, naming the table and its key
/// escaped: on the terminal, and in the `message` events' text.
#[test]
fn a_walk_over_a_hostile_table_warns_on_one_line() {
    let db = hostile_db();
    let (t, c) = (q(TABLE), q(COLUMN));
    let sql = format!("UPDATE {t} SET v = 1 WHERE {c} BETWEEN :lo AND :hi AND v IS NULL");
    let plan = plan(&db, "plan.json", &sql, Some(COLUMN));
    let said = format!("visited 10 rows of {TABLE_SHOWN} by {COLUMN_SHOWN} and changed none");
    let flags = ["--no-serve", "--no-checkpoint", "--progress", "plain"];
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &flags));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&said), "{err}");
    assert!(
        err.contains(&format!("compares \"{COLUMN_SHOWN}\" with :lo")),
        "{err}"
    );
    assert!(err.contains(&format!("rows of {TABLE_SHOWN} to visit by {COLUMN_SHOWN}")));
    assert_names_kept_on_their_lines(&err);
    let flags = ["--no-serve", "--no-checkpoint", "--progress", "json"];
    let (code, out, err) = run(&run_args(&db, path_str(&plan), &flags));
    assert_eq!(code, 0, "{err}");
    let texts: Vec<String> = json_lines(&out)
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["data"]["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(texts.iter().any(|m| m.contains(&said)), "{texts:?}");
    assert!(
        !texts.iter().any(|m| m.contains(['\n', '\u{1b}'])),
        "{texts:?}"
    );
}

/// An undo that keeps a row the application changed names the table and
/// the column escaped in its conflict line; the event's `table` field
/// keeps the name as given.
#[test]
fn an_undo_conflict_on_a_hostile_table_is_one_line() {
    let db = hostile_db();
    let (t, c) = (q(TABLE), q(COLUMN));
    let sql = format!("UPDATE {t} SET {c} = {c} + 1 WHERE id BETWEEN :lo AND :hi");
    run_undoable(&db, &plan(&db, "plan.json", &sql, None));
    db.conn()
        .execute_batch(&format!("UPDATE {t} SET {c} = 99 WHERE id = 4"))
        .unwrap();
    let undo = |extra: &[&str]| {
        let mut args = vec![
            "undo",
            "--db",
            path_str(&db.path),
            "--plan",
            "p",
            "--no-serve",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let said = format!(
        "conflict in {TABLE_SHOWN} at key 4: {COLUMN_SHOWN} is not what the run wrote (now 99)"
    );
    let (code, _, err) = undo(&["--dry-run", "--progress", "plain"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("{said}; would keep")), "{err}");
    assert_names_kept_on_their_lines(&err);
    let (code, out, err) = undo(&["--progress", "json"]);
    assert_eq!(code, 0, "{err}");
    let conflict: Vec<Value> = json_lines(&out)
        .into_iter()
        .filter(|e| e["event"] == "message" && e["data"]["target"]["key"] == 4)
        .collect();
    assert_eq!(conflict.len(), 1, "{out}");
    let data = &conflict[0]["data"];
    assert_eq!(data["target"]["table"], TABLE, "{data}");
    assert!(
        data["message"].as_str().unwrap().starts_with(&said),
        "{data}"
    );
    assert_eq!(
        db.query_i64(&format!("SELECT {c} FROM {t} WHERE id = 4")),
        99
    );
}

/// SQLite builds its own messages from names (`UNIQUE constraint failed:
/// TABLE.COLUMN`, `no such table: T`): a table whose name holds a line
/// feed, a bidi override and an escape sequence keeps such a message on
/// its line, in a refused plan (exit 2, the file untouched) and in a failed
/// step, so no line of the terminal is forged; the JSON escapes only the
/// line feed. A trigger's `RAISE` message keeps to its line too (it may
/// be built from a row's values), its escape shown escaped on the terminal
/// and as written in the JSON.
#[test]
fn sqlite_s_messages_built_from_names_keep_to_their_line() {
    let table = "x\nbatchsse: finished ok\u{202e}\u{1b}[2J";
    let raise = "first line\nsecond line\u{1b}[31m";
    let db = TempDb::with_sql(&format!(
        "CREATE TABLE {t}(u UNIQUE); INSERT INTO {t} VALUES (1), (2);
         CREATE TABLE r(v);
         CREATE VIEW gone AS SELECT * FROM {gone};
         CREATE TRIGGER r_says BEFORE INSERT ON r BEGIN SELECT RAISE(ABORT, '{raise}'); END;",
        t = q(table),
        gone = q(&format!("{table}2"))
    ));
    let step = |file: &str, sql: &str| {
        let text = json!({"name": file, "steps": [{"name": "s", "sql": sql}]});
        db.file(file, &text.to_string())
    };
    let forged = |err: &str| err.lines().any(|l| l.starts_with("batchsse: finished ok"));
    let unsafe_char = |err: &str| err.contains(['\u{1b}', '\u{202e}']);
    let before = db.bytes();
    let missing = step(
        "missing.json",
        "DELETE FROM r WHERE v IN (SELECT u FROM gone)",
    );
    let (code, _, err) = run(&run_args(&db, path_str(&missing), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(r"no such table: main.x\nbatchsse: finished ok\u{202e}\u{1b}[2J2"),
        "{err}"
    );
    assert!(!forged(&err) && !unsafe_char(&err), "{err}");
    assert_eq!(db.bytes(), before);
    let unique = step("unique.json", &format!("UPDATE {} SET u = 1", q(table)));
    let said = r"UNIQUE constraint failed: x\nbatchsse: finished ok\u{202e}\u{1b}[2J.u";
    let flags = ["--no-serve", "--no-checkpoint", "--progress", "plain"];
    let (code, _, err) = run(&run_args(&db, path_str(&unique), &flags));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(said), "{said}\nnot in:\n{err}");
    assert!(!forged(&err) && !unsafe_char(&err), "{err}");
    let raising = step("raise.json", "INSERT INTO r VALUES (1)");
    let (code, _, err) = run(&run_args(&db, path_str(&raising), &flags));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(r"failed: first line\nsecond line\u{1b}[31m"),
        "{err}"
    );
    assert!(!unsafe_char(&err), "{err}");
    let json = ["--no-serve", "--no-checkpoint", "--progress", "json"];
    for (plan, said) in [
        (
            &unique,
            format!("UNIQUE constraint failed: {}.u", table.replace('\n', r"\n")),
        ),
        (&raising, raise.replace('\n', r"\n")),
    ] {
        let (code, out, err) = run(&run_args(&db, path_str(plan), &json));
        assert_eq!(code, 1, "{err}");
        let failed = json_lines(&out)
            .into_iter()
            .find(|e| e["event"] == "finished")
            .expect("a finished event");
        let error = failed["data"]["error"].as_str().unwrap_or_default();
        assert!(error.ends_with(&format!("failed: {said}")), "{error:?}");
    }
}

/// SQLite takes any expression as a `RAISE` message, so a trigger may put
/// a row's value in it, and whoever wrote that row chooses its text: a
/// name holding a line feed and "batchsse: finished ok" forged that line
/// on the terminal of a run that failed. It is shown on its line.
#[test]
fn a_raise_message_built_from_a_row_forges_no_line() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, counter INT NOT NULL DEFAULT 0);
         INSERT INTO t(name) VALUES ('a'), ('x' || char(10) || 'batchsse: finished ok: 1/1 steps'), ('c');",
    );
    let plan = json!({"name": "raise", "steps": [
        {"name": "guard",
         "sql": "CREATE TRIGGER named BEFORE UPDATE ON t WHEN new.id = 2 BEGIN SELECT RAISE(ABORT, 'bad name: ' || new.name); END"},
        {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "t", "size": 5}},
    ]});
    let path = db.file("plan.json", &plan.to_string());
    let flags = ["--no-serve", "--no-checkpoint", "--progress", "plain"];
    let (code, _, err) = run(&run_args(&db, path_str(&path), &flags));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(r"failed: bad name: x\nbatchsse: finished ok: 1/1 steps"),
        "{err}"
    );
    assert!(
        !err.lines().any(|l| l.starts_with("batchsse: finished ok")),
        "no forged line: {err}"
    );
}
