//! A step's `expect` and `expect_changes`: a wrong step stops before it
//! spreads, and what it stopped is rolled back.

use crate::util::*;

/// `run --no-serve` on `db` with plan text `plan`; plain lines on stderr
/// unless `extra` asks for JSON events on stdout.
fn run_plan(db: &TempDb, plan: &str, extra: &[&str]) -> (i32, String, String) {
    let plan = db.file("plan.json", plan);
    let mut a = run_args(db, path_str(&plan), &["--no-serve"]);
    if !extra.contains(&"json") {
        a.extend_from_slice(&["--progress", "plain"]);
    }
    a.extend_from_slice(extra);
    run(&a)
}

#[test]
fn a_false_expect_in_an_atomic_run_leaves_the_file_unchanged() {
    let db = TempDb::counters(50);
    let before = sha256(&db.path);
    let plan = r#"{"steps":[
            {"sql":"UPDATE t SET counter = counter + 1"},
            {"name":"oops","sql":"UPDATE t SET counter = -1 WHERE id > 40",
             "expect":"SELECT count(*) = 0 FROM t WHERE counter < 0"}]}"#;
    let (code, _, err) = run_plan(&db, plan, &["--atomic"]);
    assert_eq!(code, 1, "{err}");
    let said = "expect SELECT count(*) = 0 FROM t WHERE counter < 0 returned 0";
    assert!(err.contains(said), "on the terminal: {err}");
    assert_eq!(sha256(&db.path), before, "the file is as it was");
    let (code, out, _) = run_plan(&db, plan, &["--atomic", "--progress", "json"]);
    assert_eq!(code, 1);
    let failed = out
        .lines()
        .find(|l| l.contains("\"state\":\"failed\""))
        .unwrap_or_default();
    assert!(failed.contains(said), "in the step's event: {out}");
}

#[test]
fn a_false_expect_rolls_back_its_own_plain_step_only() {
    let db = TempDb::counters(10);
    let (code, _, err) = run_plan(
        &db,
        r#"{"steps":[
            {"sql":"UPDATE t SET counter = 1"},
            {"sql":"DELETE FROM t WHERE id > 5", "expect":"SELECT count(*) = 10 FROM t"}]}"#,
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        db.counter_spread(),
        (10, 0),
        "step 1 kept, step 2 rolled back"
    );
}

/// A step missing its `WHERE`: on a rowid table the try before the run,
/// on a chunk of the first key alone, refuses it; on a WITHOUT ROWID table,
/// whose writes SQLite's update hook does not report, `expect_changes.max`
/// stops it after its first chunk.
#[test]
fn expect_changes_max_stops_a_step_missing_its_where_after_one_chunk() {
    let plan = r#"{"steps":[{"name":"forgot where","sql":"UPDATE t SET counter = 7 WHERE :lo IS NOT NULL AND :hi IS NOT NULL",
            "chunk":{"table":"t","key":"id","size":10},"expect_changes":{"max":100}}]}"#;
    let db = TempDb::counters(1000);
    let before = db.bytes();
    let (code, _, err) = run_plan(&db, plan, &["--batch-size", "10"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("run on a chunk of one key (id = 1), it changed the row whose id is 2"),
        "{err}"
    );
    assert_eq!(db.bytes(), before, "nothing written");
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0) WITHOUT ROWID;
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 1000) SELECT i FROM s;",
    );
    let (code, _, err) = run_plan(&db, plan, &["--batch-size", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expect_changes.max is 100"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter <> 0"),
        0,
        "the first chunk changed every row, and was rolled back"
    );
    assert!(err.contains("0 rows changed"), "no chunk committed: {err}");
}

#[test]
fn expect_changes_min_and_expect_are_checked_in_the_last_chunk() {
    let db = TempDb::counters(100);
    let (code, _, err) = run_plan(
        &db,
        r#"{"steps":[{"sql":"UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi AND id <= 30",
            "chunk":{"table":"t","size":40},"expect_changes":{"min":50}}]}"#,
        &["--batch-size", "40"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expect_changes.min is 50"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        30,
        "earlier chunks are kept; the last one rolled back (it changed none)"
    );
    let db = TempDb::counters(100);
    let (code, _, err) = run_plan(
        &db,
        r#"{"steps":[{"sql":"UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi",
            "chunk":{"table":"t","size":40},"expect":"SELECT min(counter) = 1 FROM t",
            "expect_changes":{"min":100,"max":100}}]}"#,
        &["--batch-size", "40"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (100, 0));
}

#[test]
fn an_expect_that_writes_or_does_not_compile_is_refused_before_anything_runs() {
    let db = TempDb::counters(5);
    let before = sha256(&db.path);
    for (expect, says) in [
        ("DELETE FROM t", "only reads"),
        ("SELECT nope FROM t", "no such column"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("SELECT :x", "parameter"),
        // SQLite calls these read-only, and they answer a true row.
        ("PRAGMA busy_timeout = 1", "may set"),
        ("pragma main.BUSY_TIMEOUT(1)", "may set"),
        // And this one may run ANALYZE, which writes.
        ("PRAGMA optimize", "may set or change"),
        ("", "empty"),
    ] {
        let plan =
            serde_json::json!({"steps":[{"sql":"UPDATE t SET counter = 1","expect":expect}]});
        let (code, _, err) = run_plan(&db, &plan.to_string(), &[]);
        assert_eq!(code, 2, "{expect}: {err}");
        assert!(err.contains(says), "{expect}: {err}");
    }
    let (code, _, err) = run_plan(
        &db,
        r#"{"steps":[{"sql":"UPDATE t SET counter = 1","expect_changes":{"min":5,"max":2}}]}"#,
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(sha256(&db.path), before);
}

/// `load_extension()` always fails in a run (extensions are never enabled):
/// in an `expect`, a chunked step or a later plain step it is refused up
/// front, not found after earlier chunks and steps committed.
#[test]
fn load_extension_anywhere_in_a_plan_is_refused_before_anything_runs() {
    let db = TempDb::counters(20);
    let before = sha256(&db.path);
    let chunked = "UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi";
    for plan in [
        serde_json::json!({"steps":[{"sql":chunked,"chunk":{"table":"t","size":5},
            "expect":"SELECT load_extension('x') IS NULL"}]}),
        serde_json::json!({"steps":[{"sql":"UPDATE t SET counter = length(LOAD_EXTENSION('x')) WHERE id BETWEEN :lo AND :hi",
            "chunk":{"table":"t","size":5}}]}),
        serde_json::json!({"steps":[{"sql":chunked,"chunk":{"table":"t","size":5}},
            {"sql":"SELECT load_extension('x')"}]}),
    ] {
        let (code, _, err) = run_plan(&db, &plan.to_string(), &["--batch-size", "5"]);
        assert_eq!(code, 2, "{plan}: {err}");
        assert!(err.contains("calls load_extension()"), "{plan}: {err}");
        assert_eq!(sha256(&db.path), before, "{plan}");
    }
    // Nor does the refusal stick to the next statement checked.
    let plan = serde_json::json!({"steps":[{"sql":chunked,"chunk":{"table":"t","size":5},
        "expect":"SELECT nope FROM t"}]});
    let (code, _, err) = run_plan(&db, &plan.to_string(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such column"), "{err}");
}

/// A chunked step over 100 rows that stops past 50 changed rows.
const STOPS_AT_50: &str = r#"{"steps":[{"sql":"UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi",
    "chunk":{"table":"t","size":10},"expect_changes":{"max":50}}]}"#;

#[test]
fn with_undo_a_failed_expectation_names_the_undo_command() {
    let db = TempDb::counters(100);
    let (code, _, err) = run_plan(&db, STOPS_AT_50, &["--undo", "--batch-size", "10"]);
    assert_eq!(code, 1, "{err}");
    let command = undo_named(&err);
    assert!(command.starts_with("batchsse undo --db "), "{err}");
    takes_back_the_50(&db, command);
}

/// The undo command the failure line of `err` (its `max is 50`) names.
fn undo_named(err: &str) -> &str {
    let line = err
        .lines()
        .find(|l| l.contains("max is 50"))
        .unwrap_or_default();
    line.split("taken back with: ").nth(1).unwrap_or_default()
}

/// Runs the undo `command` named, which takes back the 50 rows committed.
fn takes_back_the_50(db: &TempDb, command: &str) {
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 1"), 50);
    let mut args: Vec<&str> = command.split_whitespace().skip(1).collect();
    args.push("--no-serve");
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "the named command works: {err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 1"), 0);
}

/// A database whose file name is not UTF-8 (a Latin-1 `café`): the undo
/// command a failed step names said `--db` with its bare file name, the
/// `é` made U+FFFD, so pasted it found no such database. It names the
/// file's own bytes (`$'…\xe9…'`), and pasted into bash it takes the 50
/// rows back.
#[cfg(unix)]
#[test]
fn the_undo_command_named_reaches_a_file_whose_name_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let db = TempDb::counters(100);
    let folder = db.dir.path().join("the data");
    std::fs::create_dir(&folder).unwrap();
    let odd = folder.join(std::ffi::OsStr::from_bytes(b"caf\xe9's.sqlite"));
    std::fs::rename(&db.path, &odd).unwrap();
    let plan = db.file("plan.json", STOPS_AT_50);
    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--plan",
            path_str(&plan),
            "--no-serve",
            "--progress",
            "plain",
        ])
        .args(["--undo", "--batch-size", "10", "--db"])
        .arg(&odd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let command = undo_named(&err);
    assert!(command.contains(r"caf\xe9\'s.sqlite"), "{err}");
    let undo = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "batchsse() {{ \"$0\" \"$@\"; }}; {command} --no-serve"
        ))
        .arg(BIN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&undo.stderr);
    assert_eq!(undo.status.code(), Some(0), "{command}: {said}");
    let conn = rusqlite::Connection::open(&odd).unwrap();
    let left: i64 = conn
        .query_row("SELECT count(*) FROM t WHERE counter = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "taken back");
}

/// A resumed run that fails before committing anything said "this run
/// committed nothing, so it has nothing to take back", while the run it
/// resumed had committed (and recorded) 50 rows: it names the plan's undo,
/// which takes those back.
#[test]
fn a_resumed_run_that_failed_names_the_undo_of_the_runs_it_resumed() {
    let db = TempDb::counters(100);
    let (code, _, err) = run_plan(&db, STOPS_AT_50, &["--undo", "--batch-size", "10"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run_plan(&db, STOPS_AT_50, &["--undo", "--batch-size", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("resuming after 50 rows"), "{err}");
    let command = undo_named(&err);
    assert!(command.starts_with("batchsse undo --db "), "{err}");
    assert!(command.contains(" --plan "), "{err}");
    takes_back_the_50(&db, command);
}

/// `finished.undo_bytes` and the offer of an undo count only what was
/// committed: a chunk rolled back takes its record with it.
#[test]
fn a_failed_run_reports_only_the_record_it_kept() {
    let db = TempDb::counters(100);
    let (code, out, err) = run_plan(
        &db,
        STOPS_AT_50,
        &["--undo", "--batch-size", "10", "--progress", "json"],
    );
    assert_eq!(code, 1, "{err}");
    let kept = db.query_i64("SELECT sum(bytes) FROM batchsse_undo");
    assert!(kept > 0);
    let events = json_lines(&out);
    let finished = &events.last().unwrap()["data"];
    assert_eq!(finished["undo_bytes"], kept, "{finished}");

    // A run whose only step fails records nothing, and says nothing of undo.
    let db = TempDb::counters(10);
    let (code, out, err) = run_plan(
        &db,
        r#"{"steps":[{"sql":"UPDATE t SET counter = NULL"}]}"#,
        &["--undo", "--progress", "json"],
    );
    assert_eq!(code, 1, "{err}");
    let events = json_lines(&out);
    assert_eq!(events.last().unwrap()["data"]["undo_bytes"], 0);
    assert!(!out.contains("recorded for undo"), "{out}");
}

/// The check before the run cannot compile an `expect` over a database a
/// step attaches; one that writes there is still never run: its step
/// fails, rolled back.
#[test]
fn an_expect_the_check_could_not_see_never_writes() {
    let db = TempDb::counters(5);
    let aux = db.dir.path().join("aux.sqlite");
    rusqlite::Connection::open(&aux)
        .unwrap()
        .execute_batch("CREATE TABLE x(v); INSERT INTO x VALUES (1), (2), (3);")
        .unwrap();
    let plan = serde_json::json!({"steps":[
        {"sql": format!("ATTACH '{}' AS aux", path_str(&aux).replace('\'', "''"))},
        {"sql": "UPDATE t SET counter = 1", "expect": "DELETE FROM aux.x WHERE v > 1 RETURNING 1"}]});
    let (code, _, err) = run_plan(&db, &plan.to_string(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only reads"), "{err}");
    let left: i64 = rusqlite::Connection::open(&aux)
        .unwrap()
        .query_row("SELECT count(*) FROM x", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 3, "the expect wrote: {err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0);
}

/// An `expect` over a database a step attaches, which the check before
/// the run cannot compile, that is two statements or binds a parameter
/// failed its step with rusqlite's own words ("Multiple statements
/// provided", "Wrong number of parameters passed to query. Got 0, needed
/// 1"): it says what the check says, and what to write instead.
#[test]
fn an_expect_the_check_could_not_see_says_why_it_was_not_run() {
    let db = TempDb::counters(5);
    let aux = db.dir.path().join("aux.sqlite");
    rusqlite::Connection::open(&aux)
        .unwrap()
        .execute_batch("CREATE TABLE x(v); INSERT INTO x VALUES (1);")
        .unwrap();
    let attach = format!("ATTACH '{}' AS aux", path_str(&aux).replace('\'', "''"));
    for (expect, said) in [
        (
            "SELECT count(*) = 1 FROM aux.x; SELECT 0",
            "is more than one statement, so it was not run; keep one query",
        ),
        (
            "SELECT count(*) = :n FROM aux.x",
            "uses the parameter :n, so it was not run; write the values into the query",
        ),
    ] {
        let plan = serde_json::json!({"name": expect, "steps":[{"sql": attach},
            {"sql": "UPDATE t SET counter = 1", "expect": expect}]});
        let (code, _, err) = run_plan(&db, &plan.to_string(), &[]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(said), "{err}");
        assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0);
    }
}

/// The undo command is named only where it has something to take back:
/// not when the failed step was the run's first, nor under `--atomic`
/// (where the named command would fail with "no undo record").
#[test]
fn a_failed_expectation_names_no_undo_when_nothing_committed() {
    for extra in [&[][..], &["--atomic"][..]] {
        let db = TempDb::counters(10);
        let mut args = vec!["--undo"];
        args.extend_from_slice(extra);
        let (code, _, err) = run_plan(
            &db,
            r#"{"steps":[{"sql":"UPDATE t SET counter = 1"},
                {"sql":"UPDATE t SET counter = 2","expect":"SELECT 0"}]}"#,
            &args,
        );
        assert_eq!(code, 1, "{err}");
        let failed = err.lines().find(|l| l.contains("FAILED after")).unwrap();
        if extra.is_empty() {
            assert!(failed.contains("taken back with: batchsse undo"), "{err}");
        } else {
            assert!(!failed.contains("batchsse undo"), "{extra:?}: {err}");
        }
        let db = TempDb::counters(10);
        let (code, _, err) = run_plan(
            &db,
            r#"{"steps":[{"sql":"UPDATE t SET counter = 2","expect":"SELECT 0"}]}"#,
            &args,
        );
        assert_eq!(code, 1, "{err}");
        assert!(!err.contains("batchsse undo --db"), "{extra:?}: {err}");
    }
}

/// An `expect` that fails as it runs (SQLite errors on an integer
/// overflow) says so, rather than reading as the step's own SQL failing.
#[test]
fn an_expect_that_errors_is_named_as_the_expect() {
    let db = TempDb::counters(10);
    let (code, _, err) = run_plan(
        &db,
        r#"{"steps":[{"sql":"UPDATE t SET counter = 1","expect":"SELECT abs(-9223372036854775808)"}]}"#,
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("expect SELECT abs(-9223372036854775808) could not run: integer overflow"),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0);
}

/// Nor does one that gives a PRAGMA a value there: SQLite calls
/// `PRAGMA aux.max_page_count = 3` read-only and answers a true row, and
/// run, it would cap the attached file for every later step.
#[test]
fn an_expect_the_check_could_not_see_never_sets_a_pragma() {
    let db = TempDb::counters(5);
    let aux = db.dir.path().join("aux.sqlite");
    rusqlite::Connection::open(&aux)
        .unwrap()
        .execute_batch("CREATE TABLE x(v)")
        .unwrap();
    // Nor `optimize`, which SQLite calls a read and which may write.
    for expect in ["PRAGMA aux.max_page_count = 3", "PRAGMA aux.optimize"] {
        let plan = serde_json::json!({"steps":[
            {"sql": format!("ATTACH '{}' AS aux", path_str(&aux).replace('\'', "''"))},
            {"sql": "UPDATE t SET counter = 1", "expect": expect}]});
        let (code, _, err) = run_plan(&db, &plan.to_string(), &[]);
        assert_eq!(code, 1, "{expect}: {err}");
        assert!(
            err.contains("gives a PRAGMA a value or an argument, or names one that acts"),
            "{expect}: {err}"
        );
        assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0);
    }
}

/// A step stopped by `max` and run again (with a higher `max`, which
/// leaves its checkpoint valid) counts on from what committed, so the
/// two runs together never change more than the `max` they ran under;
/// rows its trigger writes are not counted.
#[test]
fn expect_changes_max_counts_on_across_a_resume_and_not_trigger_rows() {
    let db = TempDb::counters(100);
    db.conn()
        .execute_batch(
            "CREATE TABLE log(id); CREATE TRIGGER tg AFTER UPDATE ON t
             BEGIN INSERT INTO log VALUES (new.id); INSERT INTO log VALUES (new.id); END;",
        )
        .unwrap();
    let plan = |max: u64| {
        serde_json::json!({"name":"capped","steps":[{
            "sql":"UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi",
            "chunk":{"table":"t","size":10},"expect_changes":{"max":max}}]})
        .to_string()
    };
    let (code, _, err) = run_plan(&db, &plan(30), &["--batch-size", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("would have changed 40 rows"), "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 1"), 30);
    assert_eq!(db.query_i64("SELECT count(*) FROM log"), 60, "trigger rows");
    let (code, _, err) = run_plan(&db, &plan(50), &["--batch-size", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("resuming after 30 rows"), "{err}");
    assert!(
        err.contains("max is 50, but with its current work the step would have changed 60 rows"),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 1"), 50);
}

/// An `expect` answering text that is not UTF-8 (SQLite keeps text as it
/// was given) is judged by SQLite's truth like any other answer: true
/// when it reads as a non-zero number, else a false expectation showing
/// the text, never "could not run".
#[test]
fn an_expect_answering_text_that_is_not_utf8_is_judged_as_sqlite_reads_it() {
    let step = |expect: &str| {
        serde_json::json!({"steps": [{"sql": "UPDATE t SET counter = 1", "expect": expect}]})
            .to_string()
    };
    let db = TempDb::counters(3);
    let (code, _, err) = run_plan(&db, &step("SELECT CAST(x'31ff' AS TEXT)"), &[]);
    assert_eq!(code, 0, "'1\\xff' is true to SQLite: {err}");
    let db = TempDb::counters(3);
    let (code, _, err) = run_plan(&db, &step("SELECT CAST(x'41ff' AS TEXT)"), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("returned \"A\u{fffd}\", which is not true"),
        "{err}"
    );
}

/// A statement on a view changes no row itself: its INSTEAD OF trigger
/// writes them all, and SQLite's `changes()` counts none. Such a step
/// said "0 rows changed", and an `expect_changes` `max` of 10 let it
/// change 1,000 rows. It counts the view rows it processed (here one row
/// its trigger writes for each; `views.rs` has triggers that write more),
/// plain or chunked, in a step of two statements too, and under `--undo`
/// however the record is made (the TEMP triggers that stage it write rows
/// of their own, which are not the step's). A step on a table whose
/// trigger writes a log row and then skips the row (`RAISE(IGNORE)`)
/// still changed none.
#[test]
fn a_step_through_a_view_counts_its_view_rows() {
    let make = || {
        TempDb::with_sql(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
             CREATE VIEW vt AS SELECT id, v FROM t;
             CREATE TRIGGER vu INSTEAD OF UPDATE ON vt BEGIN UPDATE t SET v = new.v WHERE id = old.id; END;
             INSERT INTO t(id, v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 1000) SELECT i, 0 FROM s;
             CREATE TABLE q(v); INSERT INTO q VALUES (1), (2), (3); CREATE TABLE audit(v);
             CREATE TRIGGER qi BEFORE UPDATE ON q BEGIN INSERT INTO audit VALUES (old.v); SELECT RAISE(IGNORE); END;",
        )
    };
    let plan = r#"{"steps":[
        {"name":"plain","sql":"UPDATE vt SET v = 1"},
        {"name":"chunked","sql":"UPDATE vt SET v = 2 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":100}},
        {"name":"two","sql":"UPDATE vt SET v = 3 WHERE id <= 10; UPDATE t SET v = 4 WHERE id > 990"},
        {"name":"ignored","sql":"UPDATE q SET v = 0"}]}"#;
    let off = [("BATCHSSE_UNDO_HOOK", "off")];
    for (extra, env) in [(&[][..], &[][..]), (&["--undo"], &[]), (&["--undo"], &off)] {
        let db = make();
        let path = db.file("plan.json", plan);
        let mut args = run_args(&db, path_str(&path), &["--no-serve", "--progress", "plain"]);
        args.extend_from_slice(extra);
        let (code, _, err) = run_with_env(&args, None, env);
        assert_eq!(code, 0, "{extra:?} {env:?}: {err}");
        for line in [
            "plain: done, 1,000 rows changed",
            "chunked: done, 1,000 rows changed",
            "two: done, 20 rows changed",
            "ignored: done, 0 rows changed",
            "finished ok: 4/4 steps, 2,020 rows changed",
        ] {
            assert!(err.contains(line), "{extra:?} {env:?}: {line}: {err}");
        }
    }
    let chunked = r#""sql":"UPDATE vt SET v = 9 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":100}"#;
    for (step, changed) in [
        (r#""sql":"UPDATE vt SET v = 9""#, "1,000"),
        (chunked, "100"),
    ] {
        let db = make();
        let plan = format!(r#"{{"steps":[{{{step},"expect_changes":{{"max":10}}}}]}}"#);
        let (code, _, err) = run_plan(&db, &plan, &[]);
        assert_eq!(code, 1, "{step}: {err}");
        assert!(
            err.contains(&format!(
                "max is 10, but with its current work the step would have changed {changed} rows"
            )),
            "{step}: {err}"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE v = 9"),
            0,
            "rolled back"
        );
    }
}

/// `changes()` in the `expect` of a chunked step answers for its last
/// chunk: the rows that chunk's statement changed, or 0 when the last
/// chunk held no rows (those past the walk were deleted meanwhile) or the
/// step had none to visit, never for the checkpoint batchsse wrote after
/// the chunk before; with `--undo` as without.
#[test]
fn changes_in_a_chunked_steps_expect_is_its_last_chunks() {
    let make = || {
        TempDb::with_sql(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
             CREATE TABLE u(id INTEGER PRIMARY KEY, v INT);
             CREATE TABLE e(id INTEGER PRIMARY KEY, v INT);
             INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 100) SELECT i FROM s;
             INSERT INTO u(id) SELECT id FROM t;
             DELETE FROM t WHERE id = 7;
             CREATE TRIGGER cut AFTER UPDATE ON u WHEN new.id = 50 BEGIN DELETE FROM t WHERE id > 50; END;",
        )
    };
    let chunked = |sql: &str, table: &str, expect: &str| serde_json::json!({"name": "x", "sql": sql, "chunk": {"table": table, "size": 10}, "expect": expect});
    // 99 rows in chunks of 10: the last holds 9.
    let whole = chunked(
        "UPDATE t SET v = 1 WHERE id BETWEEN :lo AND :hi",
        "t",
        "SELECT changes() = 9",
    );
    // The chunk that updates u 50 deletes the rows of t after it: the
    // walk's next chunk finds none (t has a gap, so the walk looks its
    // keys up rather than counting them off).
    let cut = chunked(
        "UPDATE u SET v = 1 WHERE id BETWEEN :lo AND :hi",
        "t",
        "SELECT changes() = 0",
    );
    let empty = chunked(
        "UPDATE e SET v = 1 WHERE id BETWEEN :lo AND :hi",
        "e",
        "SELECT changes() = 0",
    );
    let first = serde_json::json!({"sql": "UPDATE u SET v = 2 WHERE id > 90"});
    for extra in [&[][..], &["--undo"], &["--no-checkpoint"]] {
        for steps in [
            vec![whole.clone()],
            vec![cut.clone()],
            vec![first.clone(), empty.clone()],
        ] {
            let db = make();
            let plan = serde_json::json!({ "steps": steps }).to_string();
            let mut args = vec!["--batch-size", "10"];
            args.extend_from_slice(extra);
            let (code, _, err) = run_plan(&db, &plan, &args);
            assert_eq!(code, 0, "{extra:?} {plan}: {err}");
        }
    }
}

/// `last_insert_rowid()` answers for the plan's own statements, never for
/// the rows batchsse writes between them (the checkpoint after each step
/// or chunk, the undo record): a step that inserts an order and the next
/// that inserts its line with `last_insert_rowid()` gave the line the
/// checkpoint row's rowid, and the run finished ok. So did an `expect`
/// after a last chunk that held no rows.
#[test]
fn last_insert_rowid_answers_for_the_plans_own_inserts() {
    let make = || {
        TempDb::with_sql(
            "CREATE TABLE orders(id INTEGER PRIMARY KEY, note TEXT);
             INSERT INTO orders VALUES (41, 'old');
             CREATE TABLE lines(id INTEGER PRIMARY KEY, order_id INT);
             CREATE TABLE src(id INTEGER PRIMARY KEY);
             INSERT INTO src(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) SELECT i FROM s;
             CREATE TABLE copy(id INTEGER PRIMARY KEY, src INT);
             INSERT INTO copy VALUES (1000, 0);
             CREATE TRIGGER cut AFTER INSERT ON copy WHEN new.src = 10 BEGIN DELETE FROM src WHERE id > 10; END;",
        )
    };
    let steps = serde_json::json!([
        {"sql": "INSERT INTO orders(note) VALUES ('new')"},
        {"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())"},
        // Chunks of 10: the second's insert of src 10 deletes the rows
        // after it, so the last chunk holds none.
        {"sql": "INSERT INTO copy(src) SELECT id FROM src WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "src", "size": 5},
         "expect": "SELECT last_insert_rowid() = (SELECT max(id) FROM copy)"},
        {"sql": "INSERT INTO lines(order_id) VALUES (last_insert_rowid())"},
    ]);
    let plan = serde_json::json!({ "name": "rowid", "steps": steps }).to_string();
    for extra in [&[][..], &["--undo"], &["--no-checkpoint"]] {
        let db = make();
        let mut args = vec!["--batch-size", "5"];
        args.extend_from_slice(extra);
        let (code, _, err) = run_plan(&db, &plan, &args);
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert_eq!(
            db.query_text(
                "SELECT group_concat(order_id) FROM (SELECT order_id FROM lines ORDER BY id)"
            ),
            "42,1010",
            "{extra:?}"
        );
    }
}

/// `PRAGMA optimize` is also a table-valued function: `SELECT … FROM
/// pragma_optimize(…)` compiles as a read, yet runs the pragma, whose
/// `ANALYZE` writes `sqlite_stat1` into the file. Such an `expect` is
/// refused before anything runs (directly, through a view, or named in a
/// CTE the query never uses, which SQLite does not compile), also over a
/// database a step attaches, which the check cannot compile the query on.
#[test]
fn an_expect_reading_pragma_optimize_never_analyzes_the_file() {
    let make = || {
        let db = TempDb::counters(2000);
        db.conn()
            .execute_batch(
                "CREATE INDEX tc ON t(counter);
                 CREATE VIEW opt AS SELECT * FROM pragma_optimize(0x10002);",
            )
            .unwrap();
        db
    };
    let stats = "SELECT count(*) FROM sqlite_master WHERE name LIKE 'sqlite_stat%'";
    for expect in [
        "SELECT count(*) = 0 FROM pragma_optimize(0x10002)",
        "SELECT 1 FROM \"PRAGMA_OPTIMIZE\"",
        "SELECT count(*) = 0 FROM opt",
        "WITH o AS (SELECT * FROM pragma_optimize(0x10002)) SELECT 1",
    ] {
        let db = make();
        let before = sha256(&db.path);
        let plan = serde_json::json!({"steps":[{"sql":"UPDATE t SET counter = 1 WHERE id < 5","expect":expect}]});
        let (code, _, err) = run_plan(&db, &plan.to_string(), &[]);
        assert_eq!(code, 2, "{expect}: {err}");
        assert!(err.contains("pragma_optimize"), "{expect}: {err}");
        assert_eq!(sha256(&db.path), before, "{expect}");
    }
    let db = make();
    let aux = db.dir.path().join("aux.sqlite");
    rusqlite::Connection::open(&aux)
        .unwrap()
        .execute_batch("CREATE TABLE x(v)")
        .unwrap();
    let plan = serde_json::json!({"steps":[
        {"sql": format!("ATTACH '{}' AS aux", path_str(&aux).replace('\'', "''"))},
        {"sql": "UPDATE t SET counter = 1 WHERE id < 5",
         "expect": "SELECT count(*) = 0 FROM aux.x, pragma_optimize(0x10002)"}]});
    let before = sha256(&db.path);
    let (code, _, err) = run_plan(&db, &plan.to_string(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pragma_optimize"), "{err}");
    assert_eq!(db.query_i64(stats), 0, "ANALYZE ran: {err}");
    assert_eq!(sha256(&db.path), before);
}

/// A pragma's function takes a text argument as a database's name, which
/// SQLite looks up only as the query runs: `pragma_journal_mode('wal')`
/// compiled, and its step failed when it ran (exit 1), after the steps
/// before it had committed. It is refused before anything runs; over a
/// database a step attaches, which the check does not have, it is not.
#[test]
fn an_expect_naming_a_database_the_run_lacks_is_refused_before_anything_runs() {
    let db = TempDb::counters(20);
    let plan = |attach: Option<&std::path::Path>, expect: &str| {
        let mut steps = vec![serde_json::json!({"sql": "UPDATE t SET counter = 1 WHERE id < 5"})];
        if let Some(aux) = attach {
            let file = path_str(aux).replace('\'', "''");
            steps.push(serde_json::json!({"sql": format!("ATTACH '{file}' AS aux")}));
        }
        steps.push(
            serde_json::json!({"sql": "UPDATE t SET counter = 2 WHERE id < 3", "expect": expect}),
        );
        serde_json::json!({ "steps": steps }).to_string()
    };
    let before = sha256(&db.path);
    let (code, _, err) = run_plan(
        &db,
        &plan(None, "SELECT * FROM pragma_journal_mode('wal')"),
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("step 2"), "{err}");
    assert!(err.contains("unknown database 'wal'"), "{err}");
    assert!(
        err.contains("FROM pragma_journal_mode"),
        "says what to write: {err}"
    );
    assert_eq!(sha256(&db.path), before);
    let aux = db.dir.path().join("aux.sqlite");
    rusqlite::Connection::open(&aux)
        .unwrap()
        .execute_batch("CREATE TABLE x(v)")
        .unwrap();
    let expect = "SELECT count(*) = 1 FROM pragma_table_info('x', 'aux')";
    let (code, _, err) = run_plan(&db, &plan(Some(&aux), expect), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 2 + 2 + 1 + 1);
}

/// `"expect_changes": {}` (or a `max` given as `null`, as a template
/// leaves a missing value) held the step to nothing, and the step ran
/// unbounded: it is refused before anything runs, as an empty `expect` is.
#[test]
fn an_expect_changes_that_bounds_nothing_is_refused() {
    let db = TempDb::counters(5);
    let before = sha256(&db.path);
    for changes in [r#"{}"#, r#"{"max":null}"#, r#"{"max":null,"min":null}"#] {
        let plan = format!(
            r#"{{"steps":[{{"sql":"UPDATE t SET counter = 1","expect_changes":{changes}}}]}}"#
        );
        let (code, _, err) = run_plan(&db, &plan, &[]);
        assert_eq!(code, 2, "{changes}: {err}");
        assert!(err.contains("neither max nor min"), "{changes}: {err}");
        assert_eq!(sha256(&db.path), before, "{changes}");
    }
    let plan =
        r#"{"steps":[{"sql":"UPDATE t SET counter = 1","expect_changes":{"max":null,"min":5}}]}"#;
    let (code, _, err) = run_plan(&db, plan, &[]);
    assert_eq!(code, 0, "{err}");
}

/// An `expect` answering several rows passed when its first row was true,
/// whatever the rest said: `SELECT counter = 1 FROM t` after a step that
/// set 3 rows of 10 passed in id order, and failed in reverse. Every row
/// must be true; the failure names the first false row, plain or chunked.
#[test]
fn an_expect_answering_several_rows_needs_every_row_true() {
    let step = |expect: &str| {
        serde_json::json!({"steps": [
            {"sql": "UPDATE t SET counter = 1 WHERE id <= 3", "expect": expect}]})
        .to_string()
    };
    let db = TempDb::counters(10);
    let (code, _, err) = run_plan(&db, &step("SELECT counter = 1 FROM t ORDER BY id"), &[]);
    assert_eq!(code, 1, "rows 4 to 10 are false: {err}");
    assert!(
        err.contains("returned 0 in row 4 of its answer, which is not true"),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0, "rolled back");
    let (code, _, err) = run_plan(&db, &step("SELECT 1 FROM t WHERE counter = 1"), &[]);
    assert_eq!(code, 0, "three true rows: {err}");
    let chunked = serde_json::json!({"name": "chunked", "steps": [{
        "sql": "UPDATE t SET counter = 2 WHERE id BETWEEN :lo AND :hi AND id < 8",
        "chunk": {"table": "t", "size": 4},
        "expect": "SELECT counter = 2 FROM t ORDER BY id"}]});
    let (code, _, err) = run_plan(&db, &chunked.to_string(), &["--batch-size", "4"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("returned 0 in row 8 of its answer"), "{err}");
}

/// The `expect_changes.max` failure said "what the step committed before
/// it stays" where nothing stays: a step that is not chunked commits only
/// as it ends, and under `--atomic` or `--dry-run` the whole run is rolled
/// back (the next line says so). It counts what stays where some does.
#[test]
fn the_max_failure_says_what_stays_only_where_some_does() {
    let db = TempDb::counters(100);
    let plain = r#"{"steps":[{"sql":"UPDATE t SET counter = 1 WHERE id <= 10"},
        {"sql":"UPDATE t SET counter = 2","expect_changes":{"max":10}}]}"#;
    let chunked = r#"{"steps":[{"sql":"UPDATE t SET counter = 3 WHERE id BETWEEN :lo AND :hi",
        "chunk":{"table":"t","size":10},"expect_changes":{"max":25}}]}"#;
    let cases = [
        (
            plain,
            "",
            "would have changed 100 rows; it was rolled back (a",
        ),
        (
            plain,
            "--atomic",
            "would have changed 100 rows; it was rolled back (a",
        ),
        (
            chunked,
            "--atomic",
            "would have changed 30 rows; it was rolled back (a",
        ),
        (
            chunked,
            "--dry-run",
            "would have changed 30 rows; it was rolled back (a",
        ),
        (
            chunked,
            "",
            "would have changed 30 rows; that work was rolled back, and what the step committed before it stays (20 rows) (a",
        ),
    ];
    for (plan, flag, said) in cases {
        let mut extra = vec!["--batch-size", "10", "--force"];
        extra.extend(Some(flag).filter(|f| !f.is_empty()));
        let (code, _, err) = run_plan(&db, plan, &extra);
        assert_eq!(code, 1, "{flag}: {err}");
        assert!(err.contains(said), "{flag}: {err}");
    }
}
