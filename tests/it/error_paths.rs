//! Errors that reach the user from batchsse's own tables altered or
//! damaged by hand, and from an unusable environment: each says what went
//! wrong and what to do, with the right exit status, and never panics.

use crate::util::*;

/// No panic, no Rust error's debug form: a message for people.
fn plain(err: &str) {
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("SqliteFailure"), "{err}");
}

/// `bump`, recorded with `--undo` on 40 counters, then its conflict table
/// dropped by hand.
fn conflict_table_dropped() -> TempDb {
    let db = bumped();
    db.conn()
        .execute_batch("DROP TABLE batchsse_undo_conflict")
        .unwrap();
    db
}

#[test]
fn an_undo_whose_conflict_table_was_dropped_is_refused_with_what_to_do() {
    let db = conflict_table_dropped();
    let before = db.bytes();
    let (code, _, err) = run(&undo_of_plan(&db, "bump", &[]));
    plain(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batchsse_undo_conflict") && err.contains("batchsse undo clear --db"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
}

#[test]
fn undo_clear_and_checkpoint_clear_work_when_the_conflict_table_was_dropped() {
    let db = conflict_table_dropped();
    let dbp = path_str(&db.path);
    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--all"]);
    plain(&err);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dropped the undo tables"), "{out}");
    let undo_tables = "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse_undo%'";
    assert_eq!(db.query_i64(undo_tables), 0);

    let db = conflict_table_dropped();
    let dbp = path_str(&db.path);
    let (code, out, err) = run(&["checkpoint", "clear", "--db", dbp, "--all"]);
    plain(&err);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed the undo records of 1 run"), "{out}");
    assert_eq!(db.query_i64(undo_tables), 0);
}

/// Fills the first page of `table` (its root) with 0xff.
fn tear(db: &TempDb, table: &str) -> Vec<u8> {
    let (root, page) = {
        let c = db.conn();
        let root: i64 = c
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        (root as usize, db.query_i64("PRAGMA page_size") as usize)
    };
    let mut bytes = db.bytes();
    bytes[(root - 1) * page..root * page].fill(0xff);
    std::fs::write(&db.path, &bytes).unwrap();
    bytes
}

/// The record or its conflict table on a damaged page: the undo is
/// refused before it begins (the conflict table was met only once it had
/// started, exit 1).
#[test]
fn an_undo_record_on_a_damaged_page_says_the_file_is_damaged() {
    for table in ["batchsse_undo", "batchsse_undo_conflict"] {
        let db = bumped();
        let torn = tear(&db, table);
        let (code, _, err) = run(&undo_of_plan(&db, "bump", &[]));
        plain(&err);
        assert_eq!(code, 2, "{table}: {err}");
        assert!(
            err.contains("undo record") && err.contains("restore it from a backup"),
            "{table}: {err}"
        );
        assert_eq!(db.bytes(), torn, "{table}");
    }
}

/// `batchsse_checkpoint` with every column a run writes, and `tail` after
/// them (a primary key, or more columns).
fn checkpoint_table(tail: &str) -> String {
    format!(
        "CREATE TABLE batchsse_checkpoint (plan TEXT NOT NULL, step INTEGER NOT NULL,
         checksum TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, last_key BLOB,
         done INTEGER NOT NULL, changed INTEGER NOT NULL,
         updated_at TEXT NOT NULL DEFAULT '' {tail})"
    )
}

#[test]
fn a_checkpoint_table_altered_by_hand_is_refused_before_anything_runs() {
    let cases = [
        // What `CREATE TABLE … AS SELECT` makes of a copy: no key.
        (checkpoint_table(""), vec![], "primary key"),
        (
            checkpoint_table(", host TEXT NOT NULL, PRIMARY KEY (plan, step)"),
            vec![],
            "\"host\"",
        ),
        (
            "CREATE VIEW batchsse_checkpoint AS SELECT 1 AS plan".into(),
            vec!["--force"],
            "a view",
        ),
        (
            "CREATE TABLE batchsse_checkpoint (plan TEXT, step INTEGER)".into(),
            vec!["--force"],
            "no column checksum",
        ),
    ];
    for (sql, extra, names) in cases {
        let db = TempDb::counters(100);
        db.conn().execute_batch(&sql).unwrap();
        let plan = db.file("plan.json", &counter_plan("altered", 10));
        let before = db.bytes();
        let mut args = run_args(&db, path_str(&plan), &["--no-serve"]);
        args.extend(extra);
        let (code, _, err) = run(&args);
        plain(&err);
        assert_eq!(code, 2, "{sql}: {err}");
        assert!(
            err.contains("batchsse_checkpoint") && err.contains(names),
            "{sql}: {err}"
        );
        assert!(err.contains("pass --no-checkpoint"), "{sql}: {err}");
        assert_eq!(db.bytes(), before, "{sql}");
        args.push("--no-checkpoint");
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{sql}: {err}");
        assert_eq!(db.counter_spread(), (100, 0), "{sql}");
    }
}

/// A trigger of the user's on one of batchsse's own tables ran at every
/// write batchsse made there, and one that raises failed the step with
/// its own text (exit 1). It is refused before anything runs, as a table
/// altered by hand is: exit 2, the file untouched, saying to drop it or
/// how to run without that table.
#[test]
fn a_trigger_of_the_user_s_on_batchsse_s_own_tables_is_refused_before_anything_runs() {
    for (table, around) in [
        ("batchsse_checkpoint", "--no-checkpoint"),
        ("batchsse_undo", "--no-undo"),
    ] {
        let db = bumped();
        db.conn()
            .execute_batch(&format!(
                "CREATE TRIGGER \"my log\" BEFORE INSERT ON {table}
                 BEGIN SELECT RAISE(ABORT, 'not in my table'); END"
            ))
            .unwrap();
        let plan = db.file("again.json", &counter_plan("again", 10));
        let before = db.bytes();
        let mut args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
        let (code, _, err) = run(&args);
        plain(&err);
        assert_eq!(code, 2, "{table}: {err}");
        assert!(
            err.contains(&format!("the trigger \"my log\" is on {table}"))
                && err.contains("Nothing was run")
                && err.contains("DROP TRIGGER \"my log\""),
            "{table}: {err}"
        );
        assert!(!err.contains("not in my table"), "{table}: {err}");
        assert_eq!(db.bytes(), before, "{table}");
        // The way around it that the message gives works.
        if around == "--no-undo" {
            assert!(err.contains("run without --undo"), "{table}: {err}");
            args.retain(|a| *a != "--undo");
        } else {
            assert!(err.contains("pass --no-checkpoint"), "{table}: {err}");
            args.push(around);
        }
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{table}: {err}");
        assert_eq!(db.counter_spread(), (0, 40), "{table}: bumped twice");
    }
}

/// A trigger of the user's that raises on a delete from batchsse's own
/// tables kept `checkpoint clear` and `undo clear`, the way out of
/// those tables, from clearing them: it failed with the trigger's text.
/// Clearing writes only batchsse's tables, with triggers off.
#[test]
fn a_trigger_of_the_user_s_on_batchsse_s_own_tables_does_not_stop_clearing_them() {
    for (table, command) in [
        ("batchsse_undo", "undo"),
        ("batchsse_checkpoint", "checkpoint"),
    ] {
        let db = bumped();
        db.conn()
            .execute_batch(&format!(
                "CREATE TRIGGER keep BEFORE DELETE ON {table}
                 BEGIN SELECT RAISE(ABORT, 'not from my table'); END"
            ))
            .unwrap();
        let (code, _, err) = run(&[command, "clear", "--db", path_str(&db.path), "--all"]);
        assert_eq!(code, 0, "{command} clear: {err}");
        assert!(!err.contains("not from my table"), "{command} clear: {err}");
        assert_eq!(
            db.query_i64(&format!(
                "SELECT count(*) FROM sqlite_schema WHERE name = '{table}'"
            )),
            0,
            "{command} clear: {table} is gone, its trigger with it"
        );
    }
}

/// The same for the probe a walk by bare rowid writes beside the
/// checkpoint.
#[test]
fn a_trigger_of_the_user_s_on_the_walk_s_probe_is_refused_before_anything_runs() {
    let plan = |name: &str| {
        serde_json::json!({"name": name, "steps": [{
            "name": "bump", "sql": "UPDATE t SET v = v + 1 WHERE rowid BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "size": 10}}]})
        .to_string()
    };
    let db = TempDb::with_sql(
        "CREATE TABLE t(v INTEGER);
         INSERT INTO t(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) SELECT 0 FROM s;",
    );
    // The probe lives only while a step is part-way: made here as batchsse
    // makes it.
    db.conn()
        .execute_batch(
            "CREATE TABLE batchsse_walk_probe (plan TEXT NOT NULL, step INTEGER NOT NULL, at INTEGER NOT NULL);
             CREATE TRIGGER mine AFTER INSERT ON batchsse_walk_probe
             BEGIN SELECT RAISE(ABORT, 'not in my table'); END",
        )
        .unwrap();
    let again = db.file("again.json", &plan("again"));
    let before = db.bytes();
    let mut args = run_args(&db, path_str(&again), &["--no-serve"]);
    let (code, _, err) = run(&args);
    plain(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the trigger \"mine\" is on batchsse_walk_probe")
            && err.contains("pass --no-checkpoint"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
    args.push("--no-checkpoint");
    assert_eq!(run(&args).0, 0);
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE v = 1"), 100);
}

#[test]
fn a_forced_run_on_a_damaged_checkpoint_says_the_file_is_damaged() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("torn", 10));
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    assert_eq!(run(&args).0, 0);
    let torn = tear(&db, "batchsse_checkpoint");
    let mut args = args.clone();
    args.push("--force");
    let (code, _, err) = run(&args);
    plain(&err);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--force") && err.contains("restore it from a backup"),
        "{err}"
    );
    assert_eq!(db.bytes(), torn);
}

#[test]
fn a_demo_with_no_temporary_folder_to_use_says_to_set_tmpdir_or_keep() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for tmp in [dir.path().join("gone"), file.clone()] {
        let args = ["demo", "--no-serve", "--rows", "10", "--sleep", "0"];
        let (code, _, err) = run_with_env(&args, None, &[("TMPDIR", path_str(&tmp))]);
        plain(&err);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("TMPDIR") && err.contains("--keep DIR"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn list_on_a_damaged_page_says_the_file_is_damaged_not_altered() {
    for (table, command) in [
        ("batchsse_checkpoint", "checkpoint"),
        ("batchsse_undo", "undo"),
    ] {
        let db = bumped();
        let torn = tear(&db, table);
        let (code, _, err) = run(&[command, "list", "--db", path_str(&db.path)]);
        plain(&err);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(table) && err.contains("restore it from a backup"),
            "{err}"
        );
        assert!(!err.contains("altered by hand"), "{err}");
        assert_eq!(db.bytes(), torn);
    }
}

#[test]
fn undo_list_and_clear_on_a_record_altered_by_hand_say_how_to_remove_it() {
    let db = bumped();
    db.conn()
        .execute_batch("ALTER TABLE batchsse_undo DROP COLUMN bytes")
        .unwrap();
    let before = db.bytes();
    let dbp = path_str(&db.path);
    for args in [vec!["undo", "list"], vec!["undo", "clear", "--all"]] {
        let args = [&args[..], &["--db", dbp]].concat();
        let (code, _, err) = run(&args);
        plain(&err);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("altered by hand") && err.contains("DROP TABLE batchsse_undo;"),
            "{args:?}: {err}"
        );
        // batchsse's own query is no help to the reader.
        assert!(
            err.contains("no such column: bytes;") && !err.contains("FILTER"),
            "{args:?}: {err}"
        );
        assert_eq!(db.bytes(), before);
    }
}

/// A table of the user's named `batchsse_undo`: `undo` and `run --undo`
/// say to give it another name, but `undo list` and `undo clear` said only
/// to drop it, the user's rows with it.
#[test]
fn undo_list_and_clear_on_a_table_of_the_user_s_by_the_record_s_name_do_not_just_say_drop_it() {
    let db = TempDb::counters(3);
    db.conn()
        .execute_batch(
            "CREATE TABLE batchsse_undo(note TEXT); INSERT INTO batchsse_undo VALUES ('mine')",
        )
        .unwrap();
    let before = db.bytes();
    let dbp = path_str(&db.path);
    for args in [vec!["undo", "list"], vec!["undo", "clear", "--all"]] {
        let args = [&args[..], &["--db", dbp]].concat();
        let (code, _, err) = run(&args);
        plain(&err);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("if batchsse made them, drop them")
                && err.contains("if one is a table of yours, give it another name"),
            "{args:?}: {err}"
        );
        assert_eq!(db.bytes(), before);
    }
}

/// The mirror of the above: `undo` of a record altered by hand said
/// batchsse "did not make" the table, so it held no undo record, which
/// is untrue of a table batchsse made; it now says what either case means.
#[test]
fn undo_of_a_record_altered_by_hand_does_not_say_batchsse_did_not_make_it() {
    let db = bumped();
    db.conn()
        .execute_batch("ALTER TABLE batchsse_undo DROP COLUMN bytes")
        .unwrap();
    let before = db.bytes();
    let (code, _, err) = run(&undo_of_plan(&db, "bump", &[]));
    plain(&err);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("did not make"), "{err}");
    assert!(
        err.contains("has no column bytes (not as batchsse makes it)")
            && err.contains("if it is a table of yours, give it another name")
            && err.contains("if batchsse made it, it was altered by hand")
            && err.contains("`batchsse undo list` says how to remove it"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
}

#[test]
fn an_undo_table_with_a_column_of_the_user_s_to_set_is_refused_before_anything_runs() {
    let tables = [
        "CREATE TABLE batchsse_undo (id INTEGER PRIMARY KEY, run TEXT NOT NULL,
         plan TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL,
         chunk INTEGER NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
         rec_hash INTEGER, created_at TEXT NOT NULL DEFAULT '', rec BLOB,
         host TEXT NOT NULL)",
        "CREATE TABLE batchsse_undo_probe (run TEXT NOT NULL, at INTEGER NOT NULL,
         bare TEXT, host TEXT NOT NULL)",
    ];
    for sql in tables {
        let db = TempDb::counters(100);
        db.conn().execute_batch(sql).unwrap();
        let plan = db.file("plan.json", &counter_plan("hosted", 10));
        let before = db.bytes();
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
        plain(&err);
        assert_eq!(code, 2, "{sql}: {err}");
        assert!(
            err.contains("\"host\"") && err.contains("run without --undo"),
            "{sql}: {err}"
        );
        assert_eq!(db.bytes(), before, "{sql}");
    }
}

#[test]
fn a_walk_probe_table_not_batchsse_s_is_refused_before_anything_runs() {
    let plan = serde_json::json!({"name": "bare", "steps": [{
        "name": "bump", "sql": "UPDATE t SET v = v + 1 WHERE rowid BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10}}]})
    .to_string();
    for (sql, names) in [
        (
            "CREATE VIEW batchsse_walk_probe AS SELECT 1 AS plan",
            "a view",
        ),
        ("CREATE TABLE batchsse_walk_copy (x)", "no column plan"),
    ] {
        let db = TempDb::with_sql(
            "CREATE TABLE t(v INTEGER);
             INSERT INTO t(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) SELECT 0 FROM s;",
        );
        db.conn().execute_batch(sql).unwrap();
        let plan = db.file("plan.json", &plan);
        let before = db.bytes();
        let mut args = run_args(&db, path_str(&plan), &["--no-serve"]);
        let (code, _, err) = run(&args);
        plain(&err);
        assert_eq!(code, 2, "{sql}: {err}");
        assert!(
            err.contains(names) && err.contains("pass --no-checkpoint"),
            "{sql}: {err}"
        );
        assert_eq!(db.bytes(), before, "{sql}");
        args.push("--no-checkpoint");
        assert_eq!(run(&args).0, 0, "{sql}");
        assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE v = 1"), 100);
    }
}

#[test]
fn checkpoint_clear_beside_a_walk_probe_table_not_batchsse_s_says_what_to_do() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("probed", 10));
    assert_eq!(run(&run_args(&db, path_str(&plan), &["--no-serve"])).0, 0);
    db.conn()
        .execute_batch("CREATE TABLE batchsse_walk_probe (x)")
        .unwrap();
    let before = db.bytes();
    let (code, _, err) = run(&["checkpoint", "clear", "--db", path_str(&db.path), "--all"]);
    plain(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batchsse_walk_probe has no column plan") && err.contains("another name"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
}

/// A server on a free port that answers every connection as a web server
/// would, for `secs` seconds.
fn web_server(secs: u64) -> u16 {
    answering(
        secs,
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 13\r\n\r\n<html></html>",
    )
}

/// A server on a free port that answers every connection with `reply`,
/// for `secs` seconds.
fn answering(secs: u64, reply: &'static [u8]) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(500)));
                    let _ = s.read(&mut [0u8; 1024]);
                    let _ = s.write_all(reply);
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    });
    port
}

#[test]
fn publishing_to_or_relaying_from_a_server_that_is_not_redis_names_the_port_not_the_password() {
    let port = web_server(60);
    let url = format!("redis://127.0.0.1:{port}");
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("web", 10));
    let before = db.bytes();
    let run_it = run_args(&db, path_str(&plan), &["--no-serve", "--publish", &url]);
    let relay = ["relay", &url, "--run", "x", "--listen", "127.0.0.1:0"];
    for args in [&run_it[..], &relay[..]] {
        let (code, _, err) = run(args);
        plain(&err);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("does not answer as Redis does") && err.contains("6379"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("password"), "{args:?}: {err}");
    }
    assert_eq!(db.bytes(), before);
}

#[test]
fn a_step_whose_trigger_calls_an_application_s_function_is_refused_by_name() {
    let db = TempDb::counters(100);
    db.conn()
        .execute_batch("CREATE TRIGGER audit AFTER UPDATE ON t BEGIN SELECT app_audit(NEW.id); END")
        .unwrap();
    let plan = db.file("plan.json", &counter_plan("audited", 10));
    let before = db.bytes();
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    plain(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("trigger")
            && err.contains("\"app_audit\"")
            && err.contains("from the application"),
        "{err}"
    );
    assert_eq!(db.bytes(), before);
    // A function the step itself misspells is the step's own error.
    let typo = db.file(
        "typo.sql",
        "UPDATE t SET counter = abss(counter) WHERE id = 1;",
    );
    let (code, _, err) = run(&[
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(&typo),
        "--no-serve",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no such function: abss") && !err.contains("trigger"),
        "{err}"
    );
}

#[test]
fn resuming_beside_a_damaged_undo_record_says_the_file_is_damaged() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0 CHECK (counter < 2));
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) SELECT i FROM s;
         UPDATE t SET counter = 1 WHERE id = 35;",
    );
    let plan = db.file("plan.json", &counter_plan("stopped", 10));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "stopped at row 35: {err}");
    let torn = tear(&db, "batchsse_undo");
    for args in [&args[..], &args[..args.len() - 1]] {
        let (code, _, err) = run(args);
        plain(&err);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("batchsse_undo") && err.contains("restore it from a backup"),
            "{args:?}: {err}"
        );
        assert_eq!(db.bytes(), torn);
    }
}

#[test]
fn resuming_a_walk_by_rowid_beside_a_damaged_probe_says_the_file_is_damaged() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(v INTEGER NOT NULL DEFAULT 0 CHECK (v < 2));
         INSERT INTO t(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) SELECT 0 FROM s;
         UPDATE t SET v = 1 WHERE rowid = 35;",
    );
    let plan = serde_json::json!({"name": "bare", "steps": [{
        "name": "bump", "sql": "UPDATE t SET v = v + 1 WHERE rowid BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10}}]})
    .to_string();
    let plan = db.file("plan.json", &plan);
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--batch-size", "10"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "stopped at row 35: {err}");
    let torn = tear(&db, "batchsse_walk_probe");
    let (code, _, err) = run(&args);
    plain(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batchsse_walk_probe") && err.contains("restore it from a backup"),
        "{err}"
    );
    assert_eq!(db.bytes(), torn);
}

#[test]
fn ctl_answered_by_a_server_that_is_not_a_run_says_to_check_the_address() {
    let port = answering(
        60,
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello",
    );
    let url = format!("http://127.0.0.1:{port}/");
    let (code, _, err) = run(&["ctl", &url, "pause", "--control-token", "t"]);
    plain(&err);
    assert_eq!(code, 3, "{err}");
    // The base URL was given: what answered there is another program.
    assert!(
        err.contains(&format!(
            "the server at http://127.0.0.1:{port}/ is not a batchsse run"
        )) && err.contains("check the port"),
        "{err}"
    );
}

#[test]
fn an_undo_beside_a_damaged_checkpoint_is_refused_before_it_begins() {
    let db = bumped();
    let torn = tear(&db, "batchsse_checkpoint");
    let (code, _, err) = run(&undo_of_plan(&db, "bump", &[]));
    plain(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batchsse_checkpoint") && err.contains("restore it from a backup"),
        "{err}"
    );
    assert_eq!(db.bytes(), torn);
}

/// Almost no files left to open (`ulimit -n 6`): tokio panicked making its
/// signal pipe (exit 101), or a bare "Too many open files" came out. Now
/// exit 2, how to raise the limit, and nothing written.
#[cfg(unix)]
#[test]
fn a_tiny_open_file_limit_is_a_clear_error_not_a_panic() {
    use std::os::unix::process::CommandExt;
    let db = TempDb::counters(20);
    let plan = db.file(
        "plan.json",
        r#"{"name":"bump","steps":[{"sql":"UPDATE t SET counter = counter + 1"}]}"#,
    );
    let before = db.bytes();
    let args = run_args(&db, path_str(&plan), &["--listen", "127.0.0.1:0"]);
    for limit in [6, 8, 10] {
        let mut p = Proc::start_with(&args, |c| {
            // SAFETY: only sets this child's own limit, between fork and exec.
            unsafe {
                c.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                    Ok(())
                });
            }
        });
        let code = p.wait().code();
        let err = p.stderr();
        plain(&err);
        assert_eq!(code, Some(2), "ulimit -n {limit}: {err}");
        assert!(
            err.contains("may open too few files") && err.contains("ulimit -n 1024"),
            "ulimit -n {limit}: {err}"
        );
        assert_eq!(db.bytes(), before, "ulimit -n {limit}: nothing written");
    }
}
