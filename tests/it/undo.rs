//! `run --undo` and `batchsse undo`: every change a run made (its
//! triggers' and foreign-key actions' too) taken back, the application's
//! later writes kept as conflicts, and kill -9 anywhere in either.

use std::time::{Duration, Instant};

use crate::util::*;

const SHAPES: &str = "
    CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT, price REAL, pic BLOB);
    CREATE TABLE c(id INTEGER PRIMARY KEY, p INT REFERENCES p(id) ON DELETE CASCADE, q INT);
    CREATE TABLE audit(what TEXT);
    CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
    CREATE TABLE tagged(code TEXT PRIMARY KEY, n INT);
    CREATE TABLE stock(shop TEXT, sku INT, qty INT, PRIMARY KEY (shop, sku)) WITHOUT ROWID;
    INSERT INTO stock VALUES ('n', 1, 5), ('n', 2, NULL), ('s', 1, 7);
    CREATE TRIGGER tp AFTER UPDATE OF price ON p BEGIN INSERT INTO audit VALUES ('price ' || NEW.id); END;
    INSERT INTO p(id, name, price, pic) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 300)
      SELECT i, 'n' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE i * 1.25 END, CASE WHEN i % 5 = 0 THEN NULL ELSE randomblob(i % 40) END FROM s;
    INSERT INTO c(p, q) SELECT id, id * 10 FROM p WHERE id % 3 = 0;
    INSERT INTO kv VALUES ('é', 1), ('', NULL), ('a b', x'00ff'), ('z', 2.5);
    INSERT INTO tagged VALUES ('A', 1), ('B', 2), ('C', NULL);
    INSERT INTO audit VALUES ('before');";

const SHAPES_PLAN: &str = r#"{"name":"shapes","foreign_keys":true,"undo":true,"steps":[
    {"name":"reprice","sql":"UPDATE p SET price = price * 2, pic = NULL WHERE id BETWEEN :lo AND :hi","chunk":{"table":"p","size":40}},
    {"name":"drop some","sql":"DELETE FROM p WHERE id % 9 = 0"},
    {"name":"kv","sql":"INSERT INTO kv VALUES ('new', x'abcd'); UPDATE kv SET v = 'x' WHERE k <> 'new'; DELETE FROM kv WHERE k = ''"},
    {"name":"tagged","sql":"UPDATE tagged SET n = ifnull(n, 0) + 1; DELETE FROM tagged WHERE code = 'B'; INSERT INTO tagged VALUES ('D', 4)"},
    {"name":"audit","sql":"DELETE FROM audit WHERE what = 'before'"},
    {"name":"stock","sql":"UPDATE stock SET qty = ifnull(qty, 0) + 1; INSERT INTO stock VALUES ('e', 9, 1); DELETE FROM stock WHERE shop = 's'"}]}"#;

pub(crate) fn undo_args<'a>(db: &'a TempDb, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "undo",
        "--db",
        path_str(&db.path),
        "--no-serve",
        "--progress",
        "plain",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn an_undo_restores_every_table_triggers_cascades_and_key_kinds_included() {
    shapes_round_trip(&[]);
}

/// A build without SQLite's pre-update hook (`cargo install` from
/// crates.io) records by TEMP triggers: the same round trip.
#[test]
fn recorded_without_the_pre_update_hook_the_same_undo_restores_every_table() {
    shapes_round_trip(&[("BATCHSSE_UNDO_HOOK", "off")]);
}

/// Each change its own part (`BATCHSSE_UNDO_PART_BYTES`, a testing aid):
/// a chunk cut into many parts, each taken back in its own transaction,
/// gives the same round trip.
#[test]
fn a_record_cut_into_a_part_per_change_restores_every_table_the_same() {
    shapes_round_trip(&[("BATCHSSE_UNDO_PART_BYTES", "1")]);
}

/// A chunk of a run recorded at the idle pace is cut into parts of at
/// most about 256 KiB, so that its undo, each part in one transaction,
/// holds the write lock briefly beside an application.
#[test]
fn a_long_chunk_is_recorded_in_small_parts_and_taken_back_whole() {
    let db = TempDb::counters(100_000);
    let plan = db.file("plan.json", &counter_plan("long", 100_000));
    run_undoable(&db, &plan);
    let parts = db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0");
    let largest = db.query_i64("SELECT max(bytes) FROM batchsse_undo WHERE chunk >= 0");
    assert!(parts >= 3, "one chunk in {parts} parts");
    assert!(largest <= 300 << 10, "the largest part is {largest} bytes");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "long"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (0, 100_000), "every row taken back");
}

/// Runs the shapes plan with `--undo`, then its undo (a dry run first),
/// with `env`: every table as before.
fn shapes_round_trip(env: &[(&str, &str)]) {
    let run = |args: &[&str]| run_with_env(args, None, env);
    let db = TempDb::with_sql(SHAPES);
    let before = content(&db);
    let schema = "SELECT group_concat(type || ' ' || name || ': ' || coalesce(sql, ''), x'0a') FROM (SELECT * FROM sqlite_schema ORDER BY name)";
    let schema_before = db.query_text(schema);
    let plan = db.file("plan.json", SHAPES_PLAN);
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "plain", "--batch-size", "40"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("batchsse undo --db"), "{err}");
    assert!(err.contains("undo record"), "{err}");
    assert_ne!(content(&db), before);
    assert!(
        db.query_i64("SELECT count(*) FROM c") < 100,
        "the cascade deleted rows of c"
    );
    assert!(
        db.query_i64("SELECT count(*) FROM audit") > 200,
        "the trigger wrote audit rows"
    );
    let after_run = sha256(&db.path);
    let (code, _, err) = run(&undo_args(&db, &["--plan", "shapes", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("would"), "{err}");
    assert_eq!(sha256(&db.path), after_run, "a dry run writes nothing");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "shapes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&db), before, "every table as before the run");
    let journal = db.path.with_file_name("test.sqlite-journal");
    assert!(
        !journal.exists(),
        "the undo leaves the journal mode as it found it, no journal file behind"
    );
    // batchsse's own tables, empty now, went with the plan's checkpoint:
    // the file holds what it held before the run.
    assert_eq!(
        db.query_text(schema),
        schema_before,
        "the schema as before the run"
    );
    let (code, out, _) = run(&["undo", "list", "--db", path_str(&db.path)]);
    assert_eq!(code, 0);
    assert!(out.contains("no undo records"), "{out}");
}

/// Without the pre-update hook, a chunk of an `UPDATE` of its own table is
/// recorded by reading its rows before and after; a chunk whose work also
/// changes rows outside its range (here through a trigger: a statement
/// that does so itself is refused before the run) is rolled back and
/// recorded by triggers.
#[test]
fn recorded_without_the_hook_a_chunk_that_strays_from_its_rows_is_still_recorded() {
    let env = [("BATCHSSE_UNDO_HOOK", "off")];
    let db = TempDb::counters(120);
    db.conn()
        .execute_batch(
            "UPDATE t SET counter = id % 7;
             CREATE TRIGGER stray AFTER UPDATE OF counter ON t WHEN old.id % 25 = 0
             BEGIN UPDATE t SET counter = counter + 1000 WHERE id = 1; END;",
        )
        .unwrap();
    let before = content(&db);
    let plan = db.file(
        "plan.json",
        r#"{"name":"stray","steps":[
            {"sql":"UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":25}},
            {"sql":"UPDATE t SET counter = counter * 2 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":25}}]}"#,
    );
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "25"],
    );
    let (code, _, err) = run_with_env(&args, None, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT counter FROM t WHERE id = 1"),
        (2 + 4000) * 2 + 4000,
        "id 1 (counter 1): bumped to 2, then 1000 more for ids 25, 50, 75 and 100 in each step, doubled between"
    );
    let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "stray"]), None, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        content(&db),
        before,
        "every row taken back, id 1 five times"
    );
}

/// A row whose changed columns the run recorded together: the conflict
/// says one of them changed, without claiming which.
#[test]
fn a_conflict_on_a_row_the_run_changed_in_two_columns_names_both_with_their_values() {
    let db = TempDb::counters(10);
    db.conn()
        .execute_batch("ALTER TABLE t ADD COLUMN total REAL NOT NULL DEFAULT 2.5")
        .unwrap();
    let plan = db.file(
        "plan.json",
        r#"{"name":"two","steps":[{"sql":"UPDATE t SET total = total * 2, counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":5}}]}"#,
    );
    run_undoable(&db, &plan);
    db.conn()
        .execute_batch("UPDATE t SET total = 9.5 WHERE id = 4")
        .unwrap();
    let (code, _, err) = run(&undo_args(&db, &["--plan", "two"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "conflict in t at key 4: counter, total are not all what the run wrote (now counter = 1, total = 9.5)"
        ),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 0"), 9);
}

/// Each conflict's message names the undo's step that met it, as a run's
/// messages name theirs, so a viewer's log shows which step a row is from.
#[test]
fn a_conflict_s_message_names_the_undo_step_that_met_it() {
    let db = TempDb::counters(20);
    let step = |name: &str, half: &str| serde_json::json!({"name": name, "sql": format!("UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi AND {half}"), "chunk": {"table": "t", "key": "id", "size": 5}});
    let halves = [step("low", "id <= 10"), step("high", "id > 10")];
    let plan = serde_json::json!({"name": "halves", "steps": halves});
    let plan = db.file("plan.json", &plan.to_string());
    run_undoable(&db, &plan);
    db.conn()
        .execute_batch("UPDATE t SET counter = 7 WHERE id IN (4, 15)")
        .unwrap();
    let json = ["--no-serve", "--progress", "json", "--plan", "halves"];
    let (code, out, err) = run(&[&["undo", "--db", path_str(&db.path)][..], &json].concat());
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let step_names: std::collections::HashMap<u64, String> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| {
            (
                e["data"]["index"].as_u64().unwrap(),
                e["data"]["name"].to_string(),
            )
        })
        .collect();
    let conflicts: Vec<(i64, &str)> = events
        .iter()
        .filter(|e| e["data"]["target"]["table"] == "t")
        .map(|e| {
            let at = e["data"]["target"]["step"].as_u64().expect("a step");
            (
                e["data"]["target"]["key"].as_i64().unwrap(),
                &step_names[&at][..],
            )
        })
        .collect();
    assert_eq!(
        conflicts,
        [(15, "\"undo step 2: high\""), (4, "\"undo step 1: low\"")],
        "{out}"
    );
}

/// Past the first 100 conflicts a dry run neither keeps nor points at the
/// conflict table, which it rolls back with everything else.
#[test]
fn a_dry_run_with_many_conflicts_says_what_it_would_keep() {
    let db = TempDb::counters(300);
    let plan = db.file("plan.json", &counter_plan("many", 50));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "50"],
    ));
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch("UPDATE t SET counter = 7 WHERE id <= 150")
        .unwrap();
    let (code, _, err) = run(&undo_args(&db, &["--plan", "many", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("150 conflicts would keep"), "{err}");
    assert!(
        err.contains("dry run: 150 rows would be reverted, 150 conflicts; rolled back"),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.ends_with("would keep the application's row"))
            .count(),
        100,
        "the first 100, each said as what would happen: {err}"
    );
    assert!(
        err.contains("more conflicts: the last line counts them all")
            && !err.contains("batchsse_undo_conflict"),
        "{err}"
    );
    let (code, _, err) = run(&undo_args(&db, &["--plan", "many"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("more conflicts: every one is in the table batchsse_undo_conflict"),
        "{err}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo_conflict"),
        150
    );
}

#[test]
fn application_writes_after_the_run_are_conflicts_kept_under_skip() {
    let db = TempDb::counters(200);
    let plan = db.file("plan.json", &counter_plan("bump", 25));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "25"],
    ));
    assert_eq!(code, 0, "{err}");
    // The application: changes 3 rows the run wrote, deletes 2, and adds
    // one the run never saw.
    db.conn()
        .execute_batch(
            "UPDATE t SET counter = 50 WHERE id IN (3, 60, 199);
             DELETE FROM t WHERE id IN (10, 11);
             INSERT INTO t(id, counter) VALUES (1000, 9);",
        )
        .unwrap();
    let (code, _, err) = run(&undo_args(&db, &["--plan", "bump", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("195 rows would change") && err.contains("5 conflicts"),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        !last.contains("batchsse_undo_conflict"),
        "a dry run rolls its conflict rows back, so it must not point at them: {last}"
    );
    let json = [
        "undo",
        "--db",
        path_str(&db.path),
        "--no-serve",
        "--progress",
        "json",
        "--plan",
        "bump",
    ];
    let (code, out, err) = run(&json);
    assert_eq!(code, 0, "{err}");
    let fin: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(fin["data"]["conflicts"], 5, "{fin}");
    assert_eq!(fin["data"]["rows_changed"], 195);
    let warned = out
        .lines()
        .filter(|l| l.contains("conflict in t at key"))
        .count();
    assert_eq!(warned, 5, "each conflict in the events: {out}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 50"),
        3,
        "the application's values kept"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0"),
        195,
        "every other row restored"
    );
    assert_eq!(db.query_i64("SELECT counter FROM t WHERE id = 1000"), 9);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM batchsse_undo_conflict"),
        5
    );
}

#[test]
fn abort_rolls_back_the_chunk_and_overwrite_restores_anyway() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "10"],
    ));
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch("UPDATE t SET counter = 7 WHERE id = 5")
        .unwrap();
    // A dry run stops there too, and says its counts are of the chunks
    // before the conflict (it said "0 conflicts before it stopped").
    let (code, _, err) = run(&undo_args(
        &db,
        &["--plan", "bump", "--on-conflict", "abort", "--dry-run"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("dry run: it stops at a conflict (--on-conflict abort); before it, 90 rows would be reverted, 0 conflicts; rolled back"),
        "{err}"
    );
    let (code, _, err) = run(&undo_args(
        &db,
        &["--plan", "bump", "--on-conflict", "abort"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 5"), "{err}");
    assert!(
        err.contains("To finish the undo, run it again with --on-conflict skip"),
        "says how to go on: {err}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0"),
        90,
        "chunks after the conflict's were taken back; its own rolled back"
    );
    let (code, _, err) = run(&undo_args(
        &db,
        &["--plan", "bump", "--on-conflict", "overwrite"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0"),
        100
    );
}

#[test]
fn a_ddl_step_is_refused_unless_it_opts_out_and_the_undo_stops_there() {
    let db = TempDb::counters(20);
    let before = sha256(&db.path);
    let ddl = r#"{"name":"ddl","steps":[{"sql":"UPDATE t SET counter = 1"},{"sql":"ALTER TABLE t ADD COLUMN x INT"},{"sql":"UPDATE t SET counter = 2 WHERE id <= 10"}]}"#;
    let plan = db.file("plan.json", ddl);
    // A dry run refuses it too: passing one must mean the run can go.
    for extra in [&[][..], &["--dry-run"]] {
        let args = [&["--no-serve", "--undo"][..], extra].concat();
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &args));
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(
            err.contains("step 2") && err.contains("\"undo\": false"),
            "{extra:?}: {err}"
        );
        assert_eq!(sha256(&db.path), before);
    }
    // A script's statements cannot opt out: the way is a JSON plan.
    let script = db.file(
        "fix.sql",
        "UPDATE t SET counter = 1;
ALTER TABLE t ADD COLUMN x INT;",
    );
    let args = [
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(&script),
        "--no-serve",
        "--undo",
    ];
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("put the script in a JSON plan"), "{err}");
    assert_eq!(sha256(&db.path), before);
    let plan = db.file(
        "plan.json",
        &ddl.replace(r#"{"sql":"ALTER"#, r#"{"undo":false,"sql":"ALTER"#),
    );
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--progress", "json"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("\"unrecorded_steps\":[1]"),
        "{out}"
    );
    let (code, _, err) = run(&undo_args(&db, &["--plan", "ddl"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stops at step 2"), "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        20,
        "step 3 taken back, step 1 not"
    );
}

/// Steps that only read, however they begin, are recorded (as nothing),
/// not refused as schema changes, and an undo goes past them.
#[test]
fn steps_that_only_read_are_recorded_and_the_undo_goes_past_them() {
    let db = TempDb::counters(20);
    let plan = db.file(
        "plan.json",
        r#"{"name":"reads","steps":[{"sql":"UPDATE t SET counter = 1"},{"sql":"VALUES (1)"},{"sql":"EXPLAIN UPDATE t SET counter = 9"},{"sql":"UPDATE t SET counter = 2 WHERE id <= 10"}]}"#,
    );
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--progress", "json"],
    ));
    assert_eq!(code, 0, "{err}");
    let start = out.lines().next().unwrap_or_default();
    assert!(!start.contains("unrecorded_steps"), "{start}");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "reads"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("fully taken back"), "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter = 0"), 20);
}

/// The run's last words about its undo say where an undo would stop: at
/// a step that ran unrecorded, taking back only the steps after it, or
/// nothing when that step was the last. `finished` carries the command
/// only where it takes something back, and that command does.
#[test]
fn the_undo_command_a_run_names_says_where_an_unrecorded_step_stops_it() {
    for (first, second, says, taken_back) in [
        (true, false, "this run cannot be taken back: its step 2", 0),
        (
            false,
            true,
            "to take back the steps after it: batchsse undo --db",
            10,
        ),
        (true, true, "to take this run back: batchsse undo --db", 10),
    ] {
        let db = TempDb::counters(10);
        let plan = serde_json::json!({"name": "part", "undo": true, "steps": [
            {"sql": "UPDATE t SET counter = counter + 1", "undo": first},
            {"sql": "UPDATE t SET counter = counter + 10", "undo": second}]});
        let plan = db.file("plan.json", &plan.to_string());
        let (code, out, err) = run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--progress", "json"],
        ));
        assert_eq!(code, 0, "{err}");
        let said = |m: &str| out.lines().any(|l| l.contains(m));
        assert!(said(says), "{out}");
        assert!(first && second || !said("to take this run back"), "{out}");
        let finished = json_lines(&out).pop().unwrap();
        let command = finished["data"]["undo_command"].as_str();
        assert_eq!(command.is_some(), taken_back > 0, "{finished}");
        let (code, _, err) = match command {
            Some(c) => run_as_typed(c),
            None => run(&undo_args(&db, &["--plan", "part"])),
        };
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE counter = 11"),
            10 - taken_back,
            "{err}"
        );
    }
}

/// The same for the command a failed expectation names.
#[test]
fn a_failed_expectation_names_no_undo_an_unrecorded_step_stops() {
    for (first, second, says) in [
        (true, false, "its step 2 (\"b\") ran unrecorded"),
        (
            false,
            true,
            "committed after its step 1 (\"a\"), which ran unrecorded",
        ),
    ] {
        let db = TempDb::counters(10);
        let plan = serde_json::json!({"name": "part", "undo": true, "steps": [
            {"name": "a", "sql": "UPDATE t SET counter = counter + 1", "undo": first},
            {"name": "b", "sql": "UPDATE t SET counter = counter + 10", "undo": second},
            {"name": "c", "sql": "UPDATE t SET counter = 0", "expect": "SELECT 0"}]});
        let plan = db.file("plan.json", &plan.to_string());
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("what this run committed can be"), "{err}");
    }
}

#[test]
fn a_plan_without_undo_writes_no_undo_record() {
    let db = TempDb::counters(30);
    let plan = db.file("plan.json", &counter_plan("plain", 10));
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse_undo%'"),
        0
    );
    let (code, _, err) = run(&undo_args(&db, &["--plan", "plain"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no undo record"), "{err}");
}

/// Runs `args` with the server on, kills it with SIGKILL after `chunks`
/// progress events (or lets it end); returns whether it ended by itself.
fn kill_after(args: &[&str], chunks: usize, round: u64) -> bool {
    let mut a = args.to_vec();
    a.extend_from_slice(&words(
        "--listen 127.0.0.1:0 --wait-for-clients 1 --sleep 2 --progress none",
    ));
    let mut p = Proc::start(&a);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    let mut seen = 0;
    while seen < chunks {
        match s.next_event() {
            Some(e) if e.event == "progress" => seen += 1,
            Some(e) if e.event == "finished" => {
                assert_eq!(p.wait().code(), Some(0));
                return true;
            }
            Some(_) => {}
            None => break,
        }
    }
    std::thread::sleep(Duration::from_micros((round * 731) % 3000));
    if p.child.try_wait().unwrap().is_some() {
        return true;
    }
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    false
}

#[test]
fn sigkill_during_run_undo_and_during_undo_reverts_every_row_exactly_once() {
    let db = TempDb::counters(600);
    let before = content(&db);
    let plan = db.file("plan.json", &counter_plan("crash", 30));
    let run_cmd = run_args(&db, path_str(&plan), &["--undo", "--batch-size", "30"]);
    let mut round = 0;
    while !kill_after(&run_cmd, 1 + (round as usize % 3), round) {
        round += 1;
        assert!(round < 40, "the run never finished");
    }
    assert!(round >= 3, "killed {round} times");
    assert_eq!(
        db.counter_spread(),
        (600, 0),
        "every row bumped exactly once"
    );
    let undo_cmd = vec!["undo", "--db", path_str(&db.path), "--plan", "crash"];
    let mut killed = 0;
    // A kill right after the last chunk's commit leaves nothing to undo;
    // one that lands after the undo's end finds its emptied table dropped.
    let left = || {
        let has = "SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_undo'";
        match db.query_i64(has) {
            0 => 0,
            _ => db.query_i64("SELECT count(*) FROM batchsse_undo"),
        }
    };
    while left() > 0 && !kill_after(&undo_cmd, 1 + (round as usize % 3), round) {
        round += 1;
        killed += 1;
        assert!(killed < 40, "the undo never finished");
    }
    assert!(killed >= 3, "the undo was killed {killed} times");
    assert_eq!(content(&db), before, "every row taken back exactly once");
}

/// Taking back an older run of a plan while a newer one stays recorded
/// says so, and how to take back both: the rows the newer run changed are
/// kept as conflicts, still carrying its change. The newest alone is not
/// warned about.
#[test]
fn an_older_run_taken_back_before_a_newer_one_of_its_plan_says_so() {
    let db = TempDb::counters(40);
    let ids = recorded_twice(&db, "twice");
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[0], "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "run {} of plan \"twice\" was recorded after this one",
            ids[1]
        )) && err.contains("--plan twice"),
        "{err}"
    );
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("was recorded after this one"), "{err}");
}

/// Taking back a run while a newer run of another plan that changed the
/// same table stays recorded says so, and how to take back both: the rows
/// both changed are conflicts to the undo, though no application wrote
/// them, and the newer run's undo would later bring the older run's values
/// back into them, though both would say they were taken back. A newer run
/// of another table is not named; the newest run is warned of nothing.
#[test]
fn an_older_run_taken_back_before_a_newer_run_of_another_plan_on_its_table_says_so() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE other(id INTEGER PRIMARY KEY, v INTEGER);
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 40) SELECT i FROM s;
         INSERT INTO other VALUES (1, 1);",
    );
    let (older, newer) = older_and_newer(&db);
    let elsewhere = db.file(
        "elsewhere.json",
        r#"{"name": "elsewhere", "steps": [{"name": "one", "sql": "UPDATE other SET v = v + 1"}]}"#,
    );
    let ids = recorded_ids(&db, &[(&older, &[]), (&newer, &[]), (&elsewhere, &[])]);
    let (code, _, err) = run(&undo_of_plan(&db, "older", &["--dry-run"]));
    assert_eq!(code, 0, "{err}");
    let said = format!(
        "run {} of plan \"newer\", recorded after this run, changed table \"t\" too",
        ids[1]
    );
    assert!(err.contains(&said), "{err}");
    assert!(
        err.contains(&format!(
            "newest first: batchsse undo --db {}",
            path_str(&db.path)
        )) && err.contains(&format!("--run {}, then this undo", ids[1])),
        "{err}"
    );
    assert!(!err.contains(&ids[2]), "another table's run named: {err}");
    assert!(err.contains("3 conflicts"), "{err}");
    assert!(
        err.contains("would keep the row as it is now (the application's, or a newer run's")
            && !err.contains("(now 11); would keep the application's row"),
        "{err}"
    );
    let (code, _, err) = run(&undo_of_plan(&db, "elsewhere", &["--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("recorded after"), "{err}");
    assert!(
        err.contains("dry run: 1 row would be reverted, 0 conflicts"),
        "{err}"
    );
    // Newest first, as said: both go back whole, with no conflict.
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("recorded after"), "{err}");
    let (code, _, err) = run(&undo_of_plan(&db, "older", &[]));
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("recorded after") && !err.contains("conflict"),
        "{err}"
    );
    let left = db.query_i64("SELECT count(*) FROM t WHERE counter <> 0");
    assert_eq!(left, 0, "{err}");
}

/// An undo of a plan's runs with a run of another plan recorded between
/// them: the order it gives takes back the plan's runs newer than that one
/// first. It said "--run Q, then this undo", whose first undo kept the
/// rows the plan's newer run had changed since as conflicts (Q's change
/// stayed in them, its record gone) and warned of that run in turn.
#[test]
fn an_undo_of_several_runs_around_a_run_of_another_plan_gives_an_order_that_works() {
    let db = TempDb::counters(4);
    let p = db.file(
        "p.json",
        r#"{"name": "p", "steps": [{"sql": "UPDATE t SET counter = counter + 1"}]}"#,
    );
    let q = db.file(
        "q.json",
        r#"{"name": "q", "steps": [{"sql": "UPDATE t SET counter = counter * 10"}]}"#,
    );
    let ids = recorded_ids(&db, &[(&p, &[]), (&q, &[]), (&p, &["--force"])]);
    let (code, _, err) = run(&undo_of_plan(&db, "p", &["--dry-run"]));
    assert_eq!(code, 0, "{err}");
    let dbp = path_str(&db.path);
    let order = format!(
        "newest first: batchsse undo --db {dbp} --run {}, then batchsse undo --db {dbp} --run {}, then this undo",
        ids[2], ids[1]
    );
    assert!(err.contains(&order), "{order}\n{err}");
    for id in [&ids[2], &ids[1]] {
        let (code, _, err) = run(&undo_args(&db, &["--run", id]));
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("conflict"), "{err}");
    }
    let (code, _, err) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("conflict"), "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE counter <> 0"), 0);
}

/// An older run taken back first keeps the rows the newer run changed
/// since; the newer run taken back after it is not held by those rows (no
/// application wrote them): it puts back what the older run wrote, and
/// keeps none of the application's. Those rows still carry the older
/// run's change with no record left to take it back: the undo said the
/// plan was "fully taken back" and cleared its checkpoint, so running it
/// again would change them a second time. It says so instead.
#[test]
fn a_newer_run_taken_back_after_an_older_one_is_not_held_by_its_conflicts() {
    let db = TempDb::counters(40);
    let ids = recorded_twice(&db, "twice");
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("was recorded after this one"), "{err}");
    // A dry run says it first, and writes nothing.
    let bytes = db.bytes();
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1], "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "dry run: 40 rows that the undo of run {}, an older run of plan \"twice\", kept (a newer run had changed them since) would get back what run {0} wrote, so they would still carry that run's change",
            ids[0]
        )),
        "{err}"
    );
    assert!(
        err.contains("; 40 rows would still carry an older run's change (see the warnings above)"),
        "{err}"
    );
    assert_eq!(db.bytes(), bytes);
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("; 40 rows still carry an older run's change (see the warnings above)"),
        "{err}"
    );
    assert!(
        !err.contains("kept the application"),
        "nothing of the application to keep: {err}"
    );
    // The newer run's bump is taken back everywhere; the older run's stays
    // on the rows its undo kept (all of them: the newer run changed each).
    assert_eq!(db.counter_spread(), (40, 0), "{err}");
    assert!(!err.contains("is fully taken back"), "{err}");
    assert!(
        err.contains(&format!(
            "plan \"twice\" is not fully taken back: 40 rows that the undo of run {}, an older run of the plan, kept",
            ids[0]
        )) && err.contains("still carry that run's change"),
        "{err}"
    );
}

/// As above, but the plan's last step was applied by a run without
/// `--undo` (it failed there in the recorded run, and a plain run of the
/// plan went on), so it stays checkpointed after the undo. The rows the
/// older run's undo kept still got back what that run wrote, and a dry
/// run said so ("40 rows would still carry"); the undo itself said
/// nothing of them, nor counted them in `finished`, and told that the
/// steps taken back could run again.
#[test]
fn rows_left_carrying_an_older_run_of_the_plan_are_said_when_a_step_stays_applied_unrecorded() {
    let db = TempDb::counters(40);
    db.conn()
        .execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY); INSERT INTO u VALUES (1)")
        .unwrap();
    let one = db.file("one.json", &counter_plan("twice", 10));
    let two = db.file(
        "two.json",
        r#"{"name": "twice", "steps": [
            {"name": "bump counters", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
             "chunk": {"table": "t", "key": "id", "size": 10}},
            {"name": "mark", "sql": "INSERT INTO u(id) VALUES (1)"}]}"#,
    );
    let first = recorded_ids(&db, &[(&one, &[])]);
    // Step 2 fails on u's row 1: the first step is recorded a second time.
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&two),
        &["--no-serve", "--undo", "--force"],
    ));
    assert_eq!(code, 1, "{err}");
    db.conn().execute_batch("DELETE FROM u").unwrap();
    let (code, _, err) = run(&run_args(&db, path_str(&two), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--run", &first[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("40 conflicts"), "{err}");
    let said = format!("40 rows that the undo of run {}, an older run of", first[0]);
    for dry in [true, false] {
        let mut args = vec!["--plan", "twice"];
        if dry {
            args.push("--dry-run");
        }
        let (code, _, err) = run(&undo_args(&db, &args));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&said), "dry run {dry}: {err}");
        assert!(err.contains(&carry_said(dry, 40)), "dry run {dry}: {err}");
        let unrecorded = "step(s) 2 were applied by a run that was not recorded";
        assert!(dry || err.contains(unrecorded), "{err}");
    }
    // The older run's bump stays in every row; the mark stays applied.
    assert_eq!(db.counter_spread(), (40, 0));
    assert_eq!(db.query_i64("SELECT count(*) FROM u"), 1);
}

/// Runs of two plans that changed the same rows, the older taken back
/// first: its undo keeps the rows the newer run changed since. The newer
/// run's undo then puts back what they held before it, which is what the
/// older run wrote: they still carry the older run's change, with no
/// record left to take it back. It said its plan was "fully taken back",
/// with nothing of those rows; as for two runs of one plan, it now counts
/// them by older run and gives the command that lists them. A row the
/// older undo kept for the application, which the newer run never
/// changed, is not among them.
#[test]
fn a_newer_run_of_another_plan_taken_back_after_an_older_one_says_its_rows_carry_that_run() {
    let db = TempDb::counters(40);
    let (older, newer) = older_and_newer(&db);
    let ids = recorded_ids(&db, &[(&older, &[]), (&newer, &[])]);
    // The application changes a row only the older run changed.
    db.conn()
        .execute_batch("UPDATE t SET counter = 7 WHERE id = 20")
        .unwrap();
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("4 conflicts"), "{err}");
    // A dry run says it first, and writes nothing.
    let bytes = db.bytes();
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1], "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "dry run: 3 rows that run {} changed after run {} of plan \"older\", kept as conflicts by that run's undo, would get back what they held before run {0}",
            ids[1], ids[0]
        )) && err.contains(&format!("would still carry run {}'s change", ids[0])),
        "{err}"
    );
    assert_eq!(db.bytes(), bytes);
    let dbp = path_str(&db.path);
    let args = [
        "undo",
        "--db",
        dbp,
        "--run",
        &ids[1],
        "--no-serve",
        "--progress",
        "json",
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event"))
        .collect();
    let said: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .filter_map(|e| e["data"]["message"].as_str())
        .collect();
    let all = said.join("\n");
    // The newer run's change is taken back everywhere; the older run's
    // stays on the rows both changed, the application's on its own.
    let counters = |sql: &str| -> Vec<i64> {
        let conn = db.conn();
        let mut stmt = conn.prepare(sql).expect(sql);
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        counters("SELECT counter FROM t WHERE counter <> 0 ORDER BY id"),
        [1, 1, 1, 7],
        "{all}"
    );
    assert!(!all.contains("is fully taken back"), "{all}");
    let warned = said
        .iter()
        .find(|m| {
            m.contains(&format!(
                "3 rows that run {} changed after run {} of plan \"older\"",
                ids[1], ids[0]
            ))
        })
        .unwrap_or_else(|| panic!("no word of the rows: {all}"));
    assert!(
        warned.contains(&format!("still carry run {}'s change", ids[0]))
            && warned.contains("running plan \"older\" again would change them a second time"),
        "{warned}"
    );
    // Its command lists those rows, and those alone.
    let sql = warned
        .split_once(&format!("sqlite3 {dbp} \""))
        .and_then(|(_, rest)| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no command: {warned}"));
    let mut keys = counters(&sql.replace("tbl, k", "k"));
    keys.sort_unstable();
    assert_eq!(keys, [1, 2, 3], "{warned}");
    let fin = &events.last().expect("finished")["data"];
    assert_eq!(
        (&fin["status"], &fin["conflicts"], &fin["carried_older"]),
        (&"ok".into(), &0.into(), &3.into())
    );
}

/// As above, but one of the rows is one the application deleted after the
/// older run and the newer run inserted again at its key: its undo deletes
/// it, so it holds nothing of the older run (before that run it was not
/// there either). It was counted among the rows that carry the older
/// run's change.
#[test]
fn a_row_a_newer_run_of_another_plan_inserted_is_not_said_to_carry_an_older_run_when_its_undo_deletes_it()
 {
    let db = TempDb::counters(40);
    let older = db.file("older.json", &counter_plan("older", 10));
    let newer = db.file(
        "newer.json",
        r#"{"name": "newer", "steps": [
            {"name": "ten", "sql": "UPDATE t SET counter = counter + 10 WHERE id IN (1, 3)"},
            {"name": "again", "sql": "INSERT INTO t(id, counter) VALUES (2, 50)"}]}"#,
    );
    let ids = older_kept_then_newer(&db, (&older, &newer), "DELETE FROM t WHERE id = 2");
    for (dry, err) in newer_taken_back_dry_and_for_real(&db, &ids) {
        assert!(
            err.contains(&format!(
                "2 rows that run {} changed after run {} of plan \"older\"",
                ids[1], ids[0]
            )),
            "dry run {dry}: {err}"
        );
    }
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE id = 2"), 0);
}

/// What an undo's last line says of `n` (more than one) rows left
/// carrying an older run's change, dry or not.
fn carry_said(dry: bool, n: u64) -> String {
    let carry = if dry {
        "would still carry"
    } else {
        "still carry"
    };
    format!("; {n} rows {carry} an older run's change")
}

/// Records a run of `older`, writes `between` as the application, records
/// a run of `newer`, and takes back the older run, which keeps 3 conflicts
/// (rows the newer run changed since): the two runs' ids.
fn older_kept_then_newer(
    db: &TempDb,
    (older, newer): (&std::path::PathBuf, &std::path::PathBuf),
    between: &str,
) -> Vec<String> {
    let mut ids = recorded_ids(db, &[(older, &[])]);
    db.conn().execute_batch(between).unwrap();
    ids.extend(recorded_ids(db, &[(newer, &[])]));
    let (code, _, err) = run(&undo_args(db, &["--run", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 conflicts"), "{err}");
    ids
}

/// Takes back the newer of `ids` with `--dry-run`, then for real: whether
/// each was dry, and what it printed (each exited 0).
fn newer_taken_back_dry_and_for_real(db: &TempDb, ids: &[String]) -> Vec<(bool, String)> {
    [true, false]
        .into_iter()
        .map(|dry| {
            let mut args = vec!["--run", ids[1].as_str()];
            if dry {
                args.push("--dry-run");
            }
            let (code, _, err) = run(&undo_args(db, &args));
            assert_eq!(code, 0, "{err}");
            (dry, err)
        })
        .collect()
}

/// As above, but the older run deleted the rows: the newer run inserted
/// two of them again at their keys, and the application put the third
/// back, which the newer run then updated. The older run's undo kept all
/// three (each exists again). The newer run's undo deletes the two it
/// inserted: they are left deleted, as the older run left them, with no
/// record left to bring them back, so they carry its change. The third
/// gets back the application's row, nothing of the older run's. The two
/// were not counted (an insert's undo was taken to leave nothing of an
/// older run), the third was, and the undo said the plan was "fully taken
/// back" with the older run's rows gone for good.
#[test]
fn rows_an_older_run_of_another_plan_deleted_stay_deleted_when_a_newer_run_s_undo_deletes_them() {
    let db = TempDb::counters(5);
    let older = db.file(
        "older.json",
        r#"{"name": "older", "steps": [{"name": "purge", "sql": "DELETE FROM t WHERE id IN (2, 3, 4)"}]}"#,
    );
    let newer = db.file(
        "newer.json",
        r#"{"name": "newer", "steps": [
            {"name": "again", "sql": "INSERT INTO t(id, counter) VALUES (2, 50), (3, 60)"},
            {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE id = 4"}]}"#,
    );
    let between = "INSERT INTO t(id, counter) VALUES (4, 70)";
    let ids = older_kept_then_newer(&db, (&older, &newer), between);
    for (dry, err) in newer_taken_back_dry_and_for_real(&db, &ids) {
        assert!(
            err.contains(&format!(
                "2 rows that run {} changed after run {} of plan \"older\"",
                ids[1], ids[0]
            )),
            "dry run {dry}: {err}"
        );
        assert!(err.contains(&carry_said(dry, 2)), "dry run {dry}: {err}");
        assert!(!err.contains("fully taken back"), "dry run {dry}: {err}");
    }
    assert_eq!(
        db.query_text("SELECT group_concat(id || ':' || counter, ',') FROM t"),
        "1:0,4:70,5:0"
    );
}

/// As above, the two runs recorded in the same millisecond (runs of two
/// plans may run at once; the record's times are in milliseconds): which
/// began first cannot be told, but the newer run's undo found the rows as
/// it left them, so it changed them after the older run, and they get back
/// what that run wrote. They were not counted, and the undo said its plan
/// was fully taken back.
#[test]
fn rows_a_run_recorded_in_the_same_millisecond_as_an_older_run_put_back_are_counted() {
    let db = TempDb::counters(40);
    let (older, newer) = older_and_newer(&db);
    let ids = older_kept_then_newer(&db, (&older, &newer), "");
    // The newer run began in the millisecond the older one did.
    let same =
        "UPDATE batchsse_undo SET created_at = (SELECT run_at FROM batchsse_undo_conflict LIMIT 1)";
    db.conn().execute(same, []).unwrap();
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "3 rows that run {} changed after run {} of plan \"older\"",
            ids[1], ids[0]
        )) && err.contains("; 3 rows still carry an older run's change"),
        "{err}"
    );
    assert!(!err.contains("fully taken back"), "{err}");
    // The older run's change stays in the three rows, and only there.
    assert_eq!(db.counter_spread(), (3, 37));
}

/// As above, another plan's run recorded between two runs of the plan
/// whose undo (`--plan`) takes both back: the newer one's undo puts back
/// what that run wrote, though the plan's oldest run is older than it.
#[test]
fn rows_a_plan_s_newer_run_put_back_to_another_plan_s_run_between_its_runs_are_counted() {
    let db = TempDb::counters(40);
    let other = db.file("other.json", &counter_plan("other", 10));
    let plan = db.file(
        "ten.json",
        r#"{"name": "ten", "steps": [{"name": "ten", "sql": "UPDATE t SET counter = counter + 10 WHERE id <= 3"}]}"#,
    );
    let ids = recorded_ids(&db, &[(&plan, &[]), (&other, &[]), (&plan, &["--force"])]);
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 conflicts"), "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "ten"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("runs {}, {}", ids[2], ids[0])),
        "{err}"
    );
    // The newer run went back to the other run's values, which the older
    // run's undo keeps (it changed them after it).
    assert_eq!(
        db.query_text("SELECT group_concat(counter, ',') FROM (SELECT counter FROM t WHERE id <= 4 ORDER BY id)"),
        "11,11,11,0",
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "3 rows that run {} changed after run {} of plan \"other\"",
            ids[2], ids[1]
        )),
        "{err}"
    );
    assert!(!err.contains("is fully taken back"), "{err}");
}

/// Records a run of plan `other` (every counter +1), then two of plan
/// `ten` (+10 to rows 5 and 6, then to rows 1 to 3), and takes back the
/// first, which keeps the 5 rows `ten` changed since: the three runs' ids.
fn other_then_ten_twice_other_taken_back(db: &TempDb) -> Vec<String> {
    let other = db.file("other.json", &counter_plan("other", 10));
    let step = |to: &str| {
        format!(
            r#"{{"name": "ten", "steps": [{{"name": "ten", "sql": "UPDATE t SET counter = counter + 10 WHERE {to}"}}]}}"#
        )
    };
    let older = db.file("older.json", &step("id BETWEEN 5 AND 6"));
    let newer = db.file("newer.json", &step("id <= 3"));
    let ids = recorded_ids(db, &[(&other, &[]), (&older, &[]), (&newer, &["--force"])]);
    let (code, _, err) = run(&undo_args(db, &["--run", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("5 conflicts"), "{err}");
    ids
}

/// As above, the undo of the plan's two runs stopped (`--on-conflict
/// abort`) in the older one, after the newer one was taken back whole, and
/// run again: the rows the newer one put back are still counted at its
/// end, though that run, with no record left, is no longer among its runs.
#[test]
fn rows_a_plan_s_newer_run_put_back_are_counted_when_an_undo_of_its_runs_ends_in_a_later_try() {
    let db = TempDb::counters(40);
    let ids = other_then_ten_twice_other_taken_back(&db);
    db.conn()
        .execute_batch("UPDATE t SET counter = 99 WHERE id = 5")
        .unwrap();
    let (code, _, err) = run(&undo_args(
        &db,
        &["--plan", "ten", "--on-conflict", "abort"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 5"), "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "ten"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_text("SELECT group_concat(counter, ',') FROM (SELECT counter FROM t WHERE id <= 6 ORDER BY id)"),
        "1,1,1,0,99,1",
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "3 rows that run {} changed after run {} of plan \"other\"",
            ids[2], ids[0]
        )),
        "{err}"
    );
    // Row 6, the older run's own, this try put back.
    assert!(
        err.contains(&format!(
            "1 row that run {} changed after run {} of plan \"other\"",
            ids[1], ids[0]
        )),
        "{err}"
    );
}

/// As above, but the plan's two runs taken back by two undos, the newer
/// run first: the older run's undo said again, and counted again in
/// `carried_older`, the rows the newer run's undo had put back and said,
/// as though a try of its own had put them back.
#[test]
fn an_undo_of_a_plan_s_older_run_does_not_count_again_what_a_separate_undo_of_its_newer_run_put_back()
 {
    let db = TempDb::counters(40);
    let ids = other_then_ten_twice_other_taken_back(&db);
    let said = |by: &String, n: &str| {
        format!(
            "{n} that run {by} changed after run {} of plan \"other\"",
            ids[0]
        )
    };
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[2]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&said(&ids[2], "3 rows")), "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&said(&ids[1], "2 rows"))
            && err.contains("; 2 rows still carry an older run's change"),
        "{err}"
    );
    assert!(!err.contains(&said(&ids[2], "3 rows")), "{err}");
    assert_eq!(
        db.query_text("SELECT group_concat(counter, ',') FROM (SELECT counter FROM t WHERE id <= 6 ORDER BY id)"),
        "1,1,1,0,1,1",
        "{err}"
    );
}

/// As above, the newer run's record a part per row and of two tables
/// (its trigger's log: taken back row by row), its undo stopped part-way (`--on-conflict
/// abort`, at a row the application changed after the older undo) and
/// then run again: the rows the first try put back are said and counted
/// as it stops, and still counted at the second's end, the row the application changed is not (the newer
/// undo keeps it as its own conflict).
#[test]
fn rows_a_stopped_undo_put_back_to_another_plan_s_older_run_are_still_counted_when_it_ends() {
    let db = TempDb::counters(40);
    db.conn()
        .execute_batch(
            "CREATE TABLE log(n INTEGER);
             CREATE TRIGGER logged AFTER UPDATE OF counter ON t WHEN NEW.counter >= 10
             BEGIN INSERT INTO log VALUES (NEW.id); END;",
        )
        .unwrap();
    let older = db.file("older.json", &counter_plan("older", 10));
    let newer = db.file(
        "newer.json",
        r#"{"name": "newer", "steps": [{"name": "ten", "sql": "UPDATE t SET counter = counter + 10 WHERE id BETWEEN :lo AND :hi AND id <= 3", "chunk": {"table": "t", "key": "id", "size": 1}}]}"#,
    );
    let ids = recorded_ids(&db, &[(&older, &[]), (&newer, &[])]);
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 conflicts"), "{err}");
    db.conn()
        .execute_batch("UPDATE t SET counter = 99 WHERE id = 1")
        .unwrap();
    let (code, _, err) = run(&undo_args(
        &db,
        &["--run", &ids[1], "--on-conflict", "abort"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("conflict in t at key 1"), "{err}");
    // The two parts it committed are taken back for good: it says so,
    // stopped as it is.
    assert!(
        err.contains(&format!(
            "2 rows that run {} changed after run {} of plan \"older\"",
            ids[1], ids[0]
        )) && err.contains("2 rows still carry an older run's change"),
        "{err}"
    );
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_text("SELECT group_concat(counter, ',') FROM (SELECT counter FROM t WHERE counter <> 0 ORDER BY id)"),
        "99,1,1",
        "{err}"
    );
    // The application's update logged row 1 again; the run's logs are gone.
    assert_eq!(db.query_i64("SELECT count(*) FROM log"), 1, "{err}");
    assert!(!err.contains("is fully taken back"), "{err}");
    assert!(
        err.contains(&format!(
            "2 rows that run {} changed after run {} of plan \"older\"",
            ids[1], ids[0]
        )),
        "{err}"
    );
    let listed = format!("instr(why, '; put back by the undo of run {} ')", ids[1]);
    assert_eq!(
        db.query_text(&format!(
            "SELECT group_concat(k, ',') FROM (SELECT k FROM batchsse_undo_conflict WHERE {listed} > 0 ORDER BY k)"
        )),
        "2,3"
    );
}

/// An undo of a plan with two recorded runs names both in its first line,
/// newest first, as runs: "undo of run A, B" read as one run's id.
#[test]
fn an_undo_of_two_runs_of_a_plan_names_them_as_runs() {
    let db = TempDb::counters(40);
    let ids = recorded_twice(&db, "twice");
    let (code, _, err) = run(&undo_of_plan(&db, "twice", &["--dry-run"]));
    assert_eq!(code, 0, "{err}");
    let first = format!("undo of runs {}, {} of plan \"twice\"", ids[1], ids[0]);
    assert!(err.contains(&first), "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--run", &ids[1]]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("undo of run {} of plan", ids[1])),
        "{err}"
    );
}

/// Runs the counter plan `name` twice with `--undo` (the second with
/// `--force`, over the first); returns the two runs' ids, oldest first.
pub(crate) fn recorded_twice(db: &TempDb, name: &str) -> Vec<String> {
    let plan = db.file("plan.json", &counter_plan(name, 10));
    recorded_ids(db, &[(&plan, &["--force"]), (&plan, &["--force"])])
}

/// Runs each plan with `--undo` (and its own flags) on `db`, each of
/// which must succeed; gives their run ids, in order, from the command
/// each names to take it back.
fn recorded_ids(db: &TempDb, runs: &[(&std::path::PathBuf, &[&str])]) -> Vec<String> {
    let ids = runs.iter().map(|(plan, extra)| {
        let args = [&["--no-serve", "--undo"][..], extra].concat();
        let (code, _, err) = run(&run_args(db, path_str(plan), &args));
        assert_eq!(code, 0, "{err}");
        let id = err.split("--run ").nth(1).unwrap_or_default();
        id.split_whitespace().next().unwrap_or_default().to_owned()
    });
    ids.collect()
}

#[test]
fn undo_list_and_clear_and_checkpoint_clear_take_the_records_away() {
    let db = TempDb::counters(40);
    recorded_twice(&db, "kept");
    let (code, out, _) = run(&["undo", "list", "--db", path_str(&db.path), "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = list["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{out}");
    assert_eq!(
        (runs[0]["plan"].as_str(), runs[0]["rows"].as_u64()),
        (Some("kept"), Some(40))
    );
    assert!(runs[0]["bytes"].as_u64().unwrap() > 0);
    let first = runs[0]["run"].as_str().unwrap().to_owned();
    let second = runs[1]["run"].as_str().unwrap().to_owned();
    // Both forced runs recorded the plan's one step: the first's record
    // cannot go alone (the second's would pass for all the step holds),
    // so the clear is refused, and `--plan` clears them together.
    let before = db.bytes();
    let (code, _, err) = run(&["undo", "clear", "--db", path_str(&db.path), "--run", &first]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "it shares step 1 with run {second}, whose record stays"
        )),
        "{err}"
    );
    assert_eq!(db.bytes(), before, "nothing removed");
    let (code, out, err) = run(&[
        "undo",
        "clear",
        "--db",
        path_str(&db.path),
        "--plan",
        "kept",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&first) && out.contains(&second), "{out}");
    let (code, _, err) = run(&["undo", "clear", "--db", path_str(&db.path), "--run", &first]);
    assert_eq!(code, 2, "{err}");
    // Recorded once more: `checkpoint clear` takes the record away too.
    recorded_twice(&db, "kept");
    let (code, out, err) = run(&[
        "checkpoint",
        "clear",
        "--db",
        path_str(&db.path),
        "--plan",
        "kept",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("undo records of 2 runs"), "{out}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse_undo%'"),
        0,
        "the undo tables are dropped once empty"
    );
}

/// On a terminal the bars hide a step's info messages, but not the run's
/// own: the line that names the undo command (the README's walkthrough
/// points at it) must be there, as it is in plain lines.
#[cfg(unix)]
#[test]
fn on_a_terminal_the_bars_keep_the_line_that_names_the_undo_command() {
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("tty", 10));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, text) = run_on_terminal(&args);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("1/1 steps") && text.contains("run  ["),
        "the run drew its bars: {text}"
    );
    assert!(
        text.contains("batchsse: recorded for undo; to take this run back: batchsse undo --db "),
        "{text}"
    );
    assert!(
        !text.contains("rows of t to visit"),
        "a step's info stays off the bars: {text}"
    );
}

/// What the housekeeping commands say about what is there: a plan taken
/// back whole leaves its checkpoint table empty, and a clear by age that
/// finds only newer records says they are kept, not that there are none.
#[test]
fn housekeeping_after_an_undo_and_a_clear_by_age_says_what_is_there() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("back", 10));
    let dbp = path_str(&db.path);
    let recorded = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, _, err) = run(&recorded);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "back"]));
    assert_eq!(code, 0, "{err}");
    // The same undo again: nothing left, and not only because the run
    // was never recorded.
    let (code, _, err) = run(&undo_args(&db, &["--plan", "back"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("or it has been taken back or cleared already"),
        "{err}"
    );
    let (code, out, err) = run(&["checkpoint", "list", "--db", dbp]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("no checkpoint recorded in {dbp} (no step in a batchsse_checkpoint table)")
    );

    let (code, _, err) = run(&recorded);
    assert_eq!(code, 0, "the plan runs again: {err}");
    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--older-than", "7d"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no undo record in ") && out.contains(" is older than 7d; 1 run kept"),
        "{out}"
    );
    let (_, listed, _) = run(&["undo", "list", "--db", dbp, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(1), "{listed}");

    // A mistyped plan name: refused, with the names that do have records.
    let bytes = db.bytes();
    let (code, _, err) = run(&undo_args(&db, &["--plan", "bak"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no undo record of plan \"bak\" in ")
            && err.contains(&format!(
                "; recorded plans: \"back\" (`batchsse undo list --db {dbp}` shows their runs)"
            )),
        "{err}"
    );
    assert_eq!(db.bytes(), bytes, "database untouched");
}

/// `--older-than` that keeps every record says so, rather than that there
/// is no record at all.
#[test]
fn undo_clear_older_than_an_age_no_record_has_says_what_it_kept() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("young", 10));
    run_undoable(&db, &plan);
    let dbp = path_str(&db.path);
    // Spaces around the age, as a shell variable may bring them, are not
    // echoed back.
    for age in ["7d", " 7d "] {
        let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--older-than", age]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(" is older than 7d; 1 run kept"), "{out}");
    }
    assert!(db.query_i64("SELECT count(*) FROM batchsse_undo") > 0);
    let (code, out, _) = run(&["undo", "list", "--db", dbp]);
    assert_eq!(code, 0);
    assert!(out.contains("(under a minute ago)"), "its age: {out}");
    // A run of another plan, then the first made three days old: only it
    // goes. (A second run of the same plan would keep it: the two share
    // the step, see `undo_clear.rs`.)
    let second = db.file("second.json", &counter_plan("younger", 10));
    let (code, _, err) = run(&run_args(&db, path_str(&second), &["--no-serve", "--undo"]));
    assert_eq!(code, 0, "{err}");
    db.conn()
        .execute_batch(
            "UPDATE batchsse_undo SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 days')
             WHERE run = (SELECT run FROM batchsse_undo ORDER BY id LIMIT 1)",
        )
        .unwrap();
    let (code, out, _) = run(&["undo", "list", "--db", dbp]);
    assert_eq!(code, 0);
    assert!(out.contains("(3 days ago)"), "{out}");
    let (code, out, err) = run(&["undo", "clear", "--db", dbp, "--older-than", "2d"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.matches("removed the undo record of run").count(),
        1,
        "{out}"
    );
    let (_, out, _) = run(&["undo", "list", "--db", dbp]);
    assert!(
        out.contains("(under a minute ago)") && !out.contains("days ago"),
        "{out}"
    );
    // A negative age is ours to refuse, with what to write, not clap's
    // "unexpected argument '-1'"; nothing is removed.
    let bytes = db.bytes();
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--older-than", "-1d"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--older-than takes a whole number followed by s, m, h, d or w")
            && err.contains("got \"-1d\""),
        "{err}"
    );
    assert_eq!(db.bytes(), bytes);
    // A bare number is refused, not taken as seconds: `7` meant as days
    // would have removed this morning's record.
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--older-than", "7"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--older-than needs a unit: 7 alone could mean seconds or days; write 7s, 7m, 7h, 7d or 7w"),
        "{err}"
    );
    assert_eq!(db.bytes(), bytes);
}

/// The conflicts an undo kept stay as its report once the record is all
/// taken back: `undo list` shows them and `undo clear --run` removes them
/// (before, only `--all` could, and `list` said there was nothing).
#[test]
fn the_conflicts_an_undo_kept_are_listed_and_cleared_by_run() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("kept", 10));
    run_undoable(&db, &plan);
    let dbp = path_str(&db.path);
    let run_id: String = db
        .conn()
        .query_row("SELECT run FROM batchsse_undo LIMIT 1", [], |r| r.get(0))
        .unwrap();
    db.conn()
        .execute_batch("UPDATE t SET counter = 99 WHERE id = 3")
        .unwrap();
    let (code, _, err) = run(&["undo", "--db", dbp, "--run", &run_id, "--no-serve"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&["undo", "list", "--db", dbp]);
    assert_eq!(code, 0);
    assert!(out.contains("its undo kept 1 conflict in"), "{out}");
    // Its first line does not say "no undo records" alone above them.
    assert_eq!(
        out.lines().next(),
        Some(
            format!(
                "no undo records in {dbp}; only the conflicts kept by undos of runs taken back:"
            )
            .as_str()
        ),
        "{out}"
    );
    let (code, out, _) = run(&["undo", "list", "--db", dbp, "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains(r#""conflicts_kept":[{"run""#), "{out}");
    // `--plan` leaves such reports, so it finds nothing to clear; it says
    // what would remove them rather than only that nothing is recorded.
    let before = db.bytes();
    let (code, _, err) = run(&["undo", "clear", "--db", dbp, "--plan", "kept"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the conflicts kept by undos of runs taken back whole stay as their report: `batchsse undo clear --db"),
        "{err}"
    );
    assert!(err.contains("--run ID` removes a run's"), "{err}");
    assert_eq!(db.bytes(), before, "nothing removed");
    // The command the list names, as it names it, removes them.
    let (code, out, _) = run(&["undo", "list", "--db", dbp]);
    assert_eq!(code, 0);
    let named = out
        .split("(`batchsse ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no command in {out}"));
    let (code, out, err) = run(&words(named));
    assert_eq!(code, 0, "{named}: {err}");
    assert!(
        out.contains("removed the 1 conflict the undo of run"),
        "{out}"
    );
    assert!(out.contains("dropped the undo tables"), "{out}");
}

/// A file SQLite may write in a folder where it may not make its journal:
/// the clear, and a run, are refused before they write anything (taking
/// the lock makes no journal, so only the first write would find out).
#[test]
fn undo_clear_in_a_folder_it_cannot_write_says_so_and_removes_nothing() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("kept", 10));
    run_undoable(&db, &plan);
    let Some(_guard) = immutable(db.dir.path()) else {
        return;
    };
    let before = sha256(&db.path);
    let (code, _, err) = run(&["undo", "clear", "--db", path_str(&db.path), "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give write access to the folder"), "{err}");
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--force"]));
    assert_eq!(code, 2, "refused before the first step: {err}");
    assert!(err.contains("give write access to the folder"), "{err}");
    assert_eq!(sha256(&db.path), before);
}

#[test]
fn an_application_writing_during_the_run_is_never_recorded_and_its_rows_are_kept() {
    let db = TempDb::counters(300);
    let plan = db.file("plan.json", &counter_plan("live", 30));
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words(
            "--undo --batch-size 30 --sleep 100 --listen 127.0.0.1:0 --wait-for-clients 1 --progress none --linger 2",
        ),
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    // After the first chunk (ids 1..=30): the application inserts a row,
    // changes one the run has passed and one it has not reached yet.
    db.conn()
        .execute_batch(
            "INSERT INTO t(id, counter) VALUES (5000, 42);
             UPDATE t SET counter = 77 WHERE id = 10;
             UPDATE t SET counter = 100 WHERE id = 290;",
        )
        .unwrap();
    s.until("finished");
    let status = get(p.addr(), "/status", &[]).json();
    assert!(status["undo_bytes"].as_u64().unwrap() > 0, "{status}");
    let command = format!("--run {}", status["run_id"].as_str().unwrap());
    assert!(
        status["undo_command"].as_str().unwrap().ends_with(&command),
        "{status}"
    );
    assert_eq!(p.wait().code(), Some(0));
    assert_eq!(
        db.query_i64("SELECT counter FROM t WHERE id = 290"),
        101,
        "the run bumped the application's value"
    );
    let (code, out, err) = run(&[
        "undo",
        "--db",
        path_str(&db.path),
        "--plan",
        "live",
        "--no-serve",
        "--progress",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let fin: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (
            fin["data"]["conflicts"].as_u64(),
            fin["data"]["rows_changed"].as_u64()
        ),
        (Some(1), Some(299)),
        "{fin}"
    );
    assert_eq!(
        db.query_i64("SELECT counter FROM t WHERE id = 5000"),
        42,
        "never recorded, so never undone"
    );
    assert_eq!(
        db.query_i64("SELECT counter FROM t WHERE id = 10"),
        77,
        "the conflict is kept"
    );
    assert_eq!(
        db.query_i64("SELECT counter FROM t WHERE id = 290"),
        100,
        "back to the application's value"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0"),
        298
    );
}

#[test]
fn composite_keys_are_recorded_and_an_edited_inserted_row_is_a_conflict() {
    let db = TempDb::with_sql(
        "CREATE TABLE stock(shop TEXT, sku INT, qty INT, note TEXT, PRIMARY KEY (shop, sku)) WITHOUT ROWID;
         INSERT INTO stock VALUES ('n', 1, 5, NULL), ('n', 2, 0, 'x'), ('s', 1, 7, x'00');",
    );
    let before = content(&db);
    let plan = db.file(
        "plan.json",
        r#"{"name":"stock","steps":[{"sql":"UPDATE stock SET qty = qty + 10; INSERT INTO stock VALUES ('e', 9, 1, 'new'), ('e', 8, 2, 'new'); DELETE FROM stock WHERE shop = 's'"}]}"#,
    );
    run_undoable(&db, &plan);
    // The application edits one of the rows the run inserted.
    db.conn()
        .execute_batch("UPDATE stock SET qty = 99 WHERE shop = 'e' AND sku = 9")
        .unwrap();
    let (code, _, err) = run(&undo_args(&db, &["--plan", "stock"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("conflict in stock at key (\"e\", 9)")
            && err.contains("inserted has been changed since"),
        "{err}"
    );
    assert_eq!(
        db.query_i64("SELECT qty FROM stock WHERE shop = 'e' AND sku = 9"),
        99,
        "the application's row kept"
    );
    db.conn()
        .execute_batch("DELETE FROM stock WHERE shop = 'e'")
        .unwrap();
    assert_eq!(content(&db), before, "every other row as before the run");
}

/// REPLACE deletes the rows it replaces: the pre-update hook sees those
/// deletes and the undo brings the rows back; a build without the hook
/// refuses such steps up front.
#[test]
fn replace_is_taken_back_with_the_hook_and_refused_without_it() {
    let db = TempDb::with_sql(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, code TEXT UNIQUE ON CONFLICT REPLACE);
         CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         INSERT INTO u VALUES (1, 'a'), (2, 'b'), (3, 'c');
         INSERT INTO w VALUES ('x', 1), ('y', 2);",
    );
    let before = content(&db);
    let file = sha256(&db.path);
    let plan = db.file(
        "plan.json",
        r#"{"name":"u","steps":[{"sql":"UPDATE u SET code = 'b' WHERE id = 1; REPLACE INTO u VALUES (3, 'z'); INSERT OR REPLACE INTO w VALUES ('x', 9)"}]}"#,
    );
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let off = [("BATCHSSE_UNDO_HOOK", "off")];
    let (code, _, err) = run_with_env(&args, None, &off);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("REPLACE"), "{err}");
    assert_eq!(sha256(&db.path), file, "nothing ran");
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM u"),
        2,
        "the UPDATE replaced row 2"
    );
    let (code, _, err) = run(&undo_args(&db, &["--plan", "u"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&db), before, "the replaced rows are back");
}

/// Quotes, spaces and keywords in table and column names, in both ways of
/// recording.
#[test]
fn odd_names_are_recorded_and_taken_back() {
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        let db = TempDb::with_sql(
            r#"CREATE TABLE "odd ""t"" name"("order" INTEGER PRIMARY KEY, "a b" TEXT, "x""y" REAL);
               CREATE TABLE "k v"("sh""op" TEXT, "select" INT, "qty ""n""" INT, PRIMARY KEY ("sh""op", "select")) WITHOUT ROWID;
               INSERT INTO "odd ""t"" name" VALUES (1, 'one', 1.5), (2, NULL, 2.5), (3, 'three', NULL);
               INSERT INTO "k v" VALUES ('a', 1, 10), ('b', 2, 20);"#,
        );
        let before = content(&db);
        let plan = db.file(
            "plan.json",
            r#"{"name":"odd","steps":[
                {"sql":"UPDATE \"odd \"\"t\"\" name\" SET \"a b\" = upper(ifnull(\"a b\", 'none')), \"x\"\"y\" = 0 WHERE \"order\" BETWEEN :lo AND :hi","chunk":{"table":"odd \"t\" name","key":"order","size":2}},
                {"sql":"UPDATE \"k v\" SET \"qty \"\"n\"\"\" = 0 WHERE \"sh\"\"op\" = 'a'; DELETE FROM \"k v\" WHERE \"select\" = 2; INSERT INTO \"k v\" VALUES ('c', 3, 30)"}]}"#,
        );
        run_recorded(&db, &plan, env);
        assert_ne!(content(&db), before);
        let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "odd"]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert_eq!(content(&db), before, "{env:?}: every row as before");
    }
}

/// What a step changes beyond the columns it names: a trigger that stamps
/// another column, foreign-key actions that update child rows (CASCADE, SET
/// NULL), an upsert. All of it is recorded and taken back.
#[test]
fn updates_by_triggers_cascades_and_upserts_to_columns_the_step_does_not_name_are_taken_back() {
    let db = TempDb::with_sql(
        "CREATE TABLE p(id INTEGER PRIMARY KEY, code TEXT UNIQUE, price REAL, stamp INT, note TEXT);
         CREATE TABLE c(id INTEGER PRIMARY KEY, pcode TEXT REFERENCES p(code) ON UPDATE CASCADE, q INT, other TEXT);
         CREATE TABLE d(id INTEGER PRIMARY KEY, pid INT REFERENCES p(id) ON DELETE SET NULL, w TEXT);
         CREATE TRIGGER stamp AFTER UPDATE OF price ON p BEGIN UPDATE p SET stamp = ifnull(stamp, 0) + 1, note = 'repriced' WHERE id = NEW.id; END;
         INSERT INTO p VALUES (1, 'a', 1.0, NULL, 'x'), (2, 'b', 2.0, 5, NULL), (3, 'c', 3.0, 7, 'y');
         INSERT INTO c VALUES (1, 'a', 10, 'o'), (2, 'b', 20, NULL), (3, 'b', 30, 'p');
         INSERT INTO d VALUES (1, 3, 'w1'), (2, 2, 'w2');",
    );
    let before = content(&db);
    let plan = db.file(
        "plan.json",
        r#"{"name":"more","foreign_keys":true,"steps":[
            {"sql":"UPDATE p SET price = price * 2 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"p","size":2}},
            {"sql":"UPDATE p SET code = code || '2' WHERE id <= 2"},
            {"sql":"DELETE FROM p WHERE id = 3"},
            {"sql":"INSERT INTO c(id, pcode, q) VALUES (1, 'a2', 0) ON CONFLICT(id) DO UPDATE SET other = 'upserted'"}]}"#,
    );
    for env in [&[][..], &[("BATCHSSE_UNDO_HOOK", "off")][..]] {
        run_recorded(&db, &plan, env);
        assert_eq!(
            db.query_i64("SELECT stamp FROM p WHERE id = 2"),
            6,
            "the trigger stamped"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM c WHERE pcode = 'b2'"),
            2,
            "cascaded"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM d WHERE pid IS NULL"),
            1,
            "set null"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM c WHERE other = 'upserted'"),
            1
        );
        let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "more"]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert_eq!(
            content(&db),
            before,
            "{env:?}: every column of every row as before"
        );
    }
}

/// Runs `plan` with `--undo` on a file made by `setup`, lets the
/// "application" run `app`, then takes the plan back; returns the undo's
/// stderr and the file.
fn round_trip(setup: &str, plan: &str, app: &str, env: &[(&str, &str)]) -> (String, TempDb) {
    let (db, _) = recorded_run(setup, plan, env);
    if !app.is_empty() {
        db.conn().execute_batch(app).unwrap();
    }
    let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "p"]), None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    (err, db)
}

/// A file made by `setup`, its content then, and `plan` run on it with
/// `--undo` (and `env`), which must succeed.
fn recorded_run(setup: &str, plan: &str, env: &[(&str, &str)]) -> (TempDb, String) {
    let db = TempDb::with_sql(setup);
    let before = content(&db);
    let plan = db.file("plan.json", plan);
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, _, err) = run_with_env(&args, None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    (db, before)
}

/// `batchsse run --undo --batch-size 2` of `plan` on `db`, with `env`;
/// it must succeed.
fn run_recorded(db: &TempDb, plan: &std::path::Path, env: &[(&str, &str)]) {
    let args = run_args(
        db,
        path_str(plan),
        &["--no-serve", "--undo", "--batch-size", "2"],
    );
    let (code, _, err) = run_with_env(&args, None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
}

const HOOK_OFF: [(&str, &str); 1] = [("BATCHSSE_UNDO_HOOK", "off")];

/// `batchsse undo --plan p` with `env`, after a `--dry-run` of it that
/// must say each of `said` and leave the file as it was; the undo must
/// succeed. Returns its stderr.
fn dry_run_then_undo(db: &TempDb, env: &[(&str, &str)], said: &[&str]) -> String {
    let file = sha256(&db.path);
    let (code, _, err) = run_with_env(&undo_args(db, &["--plan", "p", "--dry-run"]), None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    assert!(said.iter().all(|s| err.contains(s)), "{env:?}: {err}");
    assert_eq!(sha256(&db.path), file, "a dry run writes nothing");
    let (code, _, err) = run_with_env(&undo_args(db, &["--plan", "p"]), None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    err
}

/// Once a row is kept as a conflict, none of the run's older changes to it
/// is put back either: an older one could match what the application wrote
/// and undo it.
#[test]
fn a_row_kept_as_a_conflict_keeps_all_of_the_applications_values() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, flag INT, note TEXT);
                 INSERT INTO t VALUES (1, 0, 'a'), (2, 0, 'b');";
    let across = r#"{"name":"p","steps":[{"sql":"UPDATE t SET flag = 1"},{"sql":"UPDATE t SET flag = 0, note = note || '!'"}]}"#;
    let within = r#"{"name":"p","steps":[{"sql":"UPDATE t SET flag = 1; UPDATE t SET flag = 2"}]}"#;
    for plan in [across, within] {
        for env in [&[][..], &HOOK_OFF[..]] {
            let (err, db) = round_trip(setup, plan, "UPDATE t SET flag = 1 WHERE id = 1", env);
            assert!(err.contains("conflict in t at key 1"), "{err}");
            assert_eq!(
                db.query_i64("SELECT flag FROM t WHERE id = 1"),
                1,
                "{env:?} {plan}: the application's flag kept"
            );
            assert_eq!(
                db.query_i64("SELECT flag FROM t WHERE id = 2"),
                0,
                "{env:?}"
            );
        }
    }
}

/// Shapes the first version got wrong: a user table named like batchsse's
/// own, `INTEGER PRIMARY KEY DESC` (not the rowid), values unique in the
/// run's order (put back newest first), text that is not UTF-8.
#[test]
fn batchsse_named_tables_desc_keys_unique_shifts_and_raw_text_are_taken_back() {
    let cases = [
        (
            "CREATE TABLE batchsse_orders(id INTEGER PRIMARY KEY, v INT); INSERT INTO batchsse_orders VALUES (1, 1), (2, 2);",
            r#"{"name":"p","steps":[{"sql":"UPDATE batchsse_orders SET v = v + 100"}]}"#,
        ),
        (
            "CREATE TABLE t(id INTEGER PRIMARY KEY DESC, v TEXT); INSERT INTO t(rowid, id, v) VALUES (1, 100, 'a'), (2, 200, 'b'), (100, 1, 'c');",
            r#"{"name":"p","steps":[{"sql":"UPDATE t SET v = v || '!' WHERE id = 1; DELETE FROM t WHERE id = 200"}]}"#,
        ),
        (
            "CREATE TABLE item(id INTEGER PRIMARY KEY, pos INT UNIQUE); INSERT INTO item VALUES (1, 1), (2, 2), (3, 3);",
            r#"{"name":"p","steps":[{"sql":"UPDATE item SET pos = pos - 1"}]}"#,
        ),
        // SQLite keeps text that is not UTF-8 as given; so must the undo.
        (
            "CREATE TABLE u(id INTEGER PRIMARY KEY, s TEXT, v INT); INSERT INTO u VALUES (1, CAST(x'80ff41' AS TEXT), 1), (2, 'ok', 2);",
            r#"{"name":"p","steps":[{"sql":"UPDATE u SET s = 'new', v = v + 1"}]}"#,
        ),
    ];
    for (setup, plan) in cases {
        for env in [&[][..], &HOOK_OFF[..]] {
            let before = content(&TempDb::with_sql(setup));
            let (err, db) = round_trip(setup, plan, "", env);
            assert!(!err.contains("conflict"), "{env:?} {setup}: {err}");
            assert_eq!(content(&db), before, "{env:?}: {setup}");
        }
    }
}

/// A chunked step a recorded run applied in part is not resumed without
/// `--undo`: its rest would go unrecorded, and an undo, taking back only
/// the recorded part, would clear the step's checkpoint, so the next run
/// would apply the rest twice. Resumed with `--undo`, the undo takes it
/// all back.
#[test]
fn a_step_recorded_in_part_is_not_resumed_unrecorded() {
    let db = TempDb::counters(100);
    db.conn()
        .execute_batch("CREATE TRIGGER stop BEFORE UPDATE ON t WHEN NEW.id = 50 BEGIN SELECT RAISE(ABORT, 'stop'); END")
        .unwrap();
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let recorded = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "10"],
    );
    let (code, _, err) = run(&recorded);
    assert_eq!(code, 1, "{err}");
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    assert_eq!(db.counter_spread(), (40, 60), "four chunks committed");
    let before = sha256(&db.path);
    for extra in [&[][..], &["--dry-run"]] {
        let args = [&["--no-serve"][..], extra].concat();
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &args));
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(
            err.contains("was applied in part by a run recorded for undo")
                && err.contains("Resume with --undo")
                && err.contains(&format!(
                    "batchsse undo --db {} --plan bump",
                    path_str(&db.path)
                )),
            "{extra:?}: {err}"
        );
        assert_eq!(sha256(&db.path), before, "nothing run");
    }
    let (code, _, err) = run(&recorded);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "bump"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (0, 100), "every row as before");
}

/// A `WITHOUT ROWID` key changed to a value its own collation (NOCASE) or
/// SQLite's comparison of numbers (1 and 1.0) calls equal is still a
/// changed key: the undo puts back the key as it was, byte for byte.
#[test]
fn a_key_changed_only_in_case_or_in_type_is_taken_back() {
    let cases = [
        (
            "CREATE TABLE users(email TEXT COLLATE NOCASE PRIMARY KEY, n INT) WITHOUT ROWID;
             INSERT INTO users VALUES ('Ann@Example.com', 1), ('bob@example.com', 2);",
            r#"{"name":"p","steps":[{"sql":"UPDATE users SET email = lower(email), n = n + 1"}]}"#,
        ),
        (
            "CREATE TABLE t(k PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO t VALUES (1, 'a'), ('x', 'b');",
            r#"{"name":"p","steps":[{"sql":"UPDATE t SET k = CAST(k AS REAL) WHERE typeof(k) = 'integer'"}]}"#,
        ),
    ];
    for (setup, plan) in cases {
        for env in [&[][..], &HOOK_OFF[..]] {
            let before = content(&TempDb::with_sql(setup));
            let (err, db) = round_trip(setup, plan, "", env);
            assert!(!err.contains("conflict"), "{env:?} {setup}: {err}");
            assert_eq!(content(&db), before, "{env:?}: {setup}");
        }
    }
}

/// A `WITHOUT ROWID` key whose column compares by another collation than
/// its primary key (`k TEXT COLLATE NOCASE, PRIMARY KEY (k COLLATE
/// BINARY)`) holds keys that column calls equal, 'abc' and 'ABC': the undo
/// finds each row by the key's own collation. By the column's, it read
/// another row (a false conflict) and deleted the application's 'zz' with
/// the run's 'Zz', saying nothing of it.
#[test]
fn a_key_found_by_its_primary_keys_collation_not_its_columns() {
    let setup =
        "CREATE TABLE w(k TEXT COLLATE NOCASE, v, PRIMARY KEY (k COLLATE BINARY)) WITHOUT ROWID;
                 INSERT INTO w VALUES ('ABC', 2), ('abc', 1), ('zz', 5), ('Gone', 7);";
    let plan = r#"{"name":"p","steps":[
        {"sql":"UPDATE w SET v = 10 WHERE k = 'abc' COLLATE BINARY"},
        {"sql":"INSERT INTO w VALUES ('Zz', 6)"},
        {"sql":"DELETE FROM w WHERE k = 'Gone' COLLATE BINARY"}]}"#;
    for env in [&[][..], &HOOK_OFF[..]] {
        let before = content(&TempDb::with_sql(setup));
        let (err, db) = round_trip(setup, plan, "INSERT INTO w VALUES ('gone', 8)", env);
        assert!(!err.contains("conflict"), "{env:?}: {err}");
        let rows = db.query_text("SELECT group_concat(k || v, ',') FROM w");
        assert_eq!(rows, "ABC2,Gone7,abc1,gone8,zz5", "{env:?}: {err}");
        db.conn()
            .execute("DELETE FROM w WHERE k = 'gone' COLLATE BINARY", [])
            .unwrap();
        assert_eq!(content(&db), before, "{env:?}: {err}");
    }
}

/// Keys of text that is not UTF-8 (`CAST(x'ff' AS TEXT)`, `x'fe'`) differ
/// though they read the same once made UTF-8: a row kept as a conflict
/// holds back its own key alone. Both were held as one (the key kept as
/// its UTF-8 reading), so the other row stayed as the run left it, not
/// said to be a conflict, nor put back.
#[test]
fn keys_of_text_that_is_not_utf8_are_held_back_each_alone() {
    let setup = "CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
                 CREATE TABLE c(a TEXT, b INT, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
                 INSERT INTO w VALUES (CAST(x'ff' AS TEXT), 1), (CAST(x'fe' AS TEXT), 2);
                 INSERT INTO c VALUES (CAST(x'ff' AS TEXT), 1, 1), (CAST(x'fe' AS TEXT), 1, 2);";
    let plan = r#"{"name":"p","steps":[{"sql":"UPDATE w SET v = v + 10"},{"sql":"UPDATE c SET v = v + 10"}]}"#;
    let app = "UPDATE w SET v = 99 WHERE k = CAST(x'ff' AS TEXT);
               UPDATE c SET v = 99 WHERE a = CAST(x'ff' AS TEXT);";
    for env in [&[][..], &HOOK_OFF[..]] {
        let (err, db) = round_trip(setup, plan, app, env);
        let w = db.query_text("SELECT group_concat(hex(k) || ':' || v, ',') FROM w");
        assert_eq!(w, "FE:2,FF:99", "{env:?}: {err}");
        let c = db.query_text("SELECT group_concat(hex(a) || ':' || v, ',') FROM c");
        assert_eq!(c, "FE:2,FF:99", "{env:?}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM batchsse_undo_conflict"),
            2,
            "{env:?}: {err}"
        );
    }
}

/// A row the run inserted whose key the application has since changed to
/// a value the key's collation (NOCASE) or SQLite's comparison of numbers
/// calls equal has been changed all the same: the undo finds it by that
/// key, and must keep it as a conflict rather than delete the
/// application's row; only `overwrite` deletes it. A key stored as SQLite
/// converts it (a text key given a number, a real key given a whole
/// number) is no change.
#[test]
fn a_row_the_run_inserted_whose_key_the_application_recased_is_a_conflict() {
    let setup = "CREATE TABLE src(n INTEGER PRIMARY KEY);
         INSERT INTO src VALUES (1), (2), (3);
         CREATE TABLE users(email TEXT COLLATE NOCASE PRIMARY KEY, n INT) WITHOUT ROWID;
         CREATE TABLE r(k REAL PRIMARY KEY, v TEXT) WITHOUT ROWID;
         CREATE TABLE b(k PRIMARY KEY, v TEXT) WITHOUT ROWID;";
    let plan = r#"{"name":"p","steps":[
        {"sql":"INSERT INTO users SELECT 'User' || n || '@Example.com', n FROM src"},
        {"sql":"INSERT INTO r SELECT n, 'v' FROM src"},
        {"sql":"INSERT INTO b SELECT n, 'v' FROM src"}]}"#;
    let app = "UPDATE users SET email = 'user2@example.com' WHERE email = 'User2@Example.com';
         UPDATE b SET k = 2.0 WHERE k = 2;";
    for env in [&[][..], &HOOK_OFF[..]] {
        let (err, db) = round_trip(setup, plan, "", env);
        assert!(!err.contains("conflict"), "{env:?}: {err}");
        let (err, db2) = round_trip(setup, plan, app, env);
        assert!(err.contains("2 conflicts"), "{env:?}: {err}");
        assert_eq!(
            db2.query_text("SELECT group_concat(email) FROM users"),
            "user2@example.com",
            "{env:?}: {err}"
        );
        assert_eq!(db2.query_text("SELECT quote(k) FROM b"), "2.0", "{env:?}");
        assert_eq!(db.query_i64("SELECT count(*) FROM users"), 0);
        let (db3, _) = recorded_run(setup, plan, env);
        db3.conn().execute_batch(app).unwrap();
        let args = undo_args(&db3, &["--plan", "p", "--on-conflict", "overwrite"]);
        let (code, _, err) = run_with_env(&args, None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert!(
            err.contains("2 rows the application changed"),
            "{env:?}: {err}"
        );
        assert_eq!(content(&db3), content(&TempDb::with_sql(setup)), "{env:?}");
    }
}

/// A row kept as a conflict holds back only itself: rows whose composite
/// key differs from its in a long blob (a message shows both as "a blob of
/// 40 bytes") are other rows, taken back as every other one is.
#[test]
fn a_conflict_on_a_key_with_a_long_blob_holds_back_only_its_own_row() {
    let setup = "CREATE TABLE t(h BLOB, n INT, v INT, PRIMARY KEY(h, n)) WITHOUT ROWID;
         INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20)
             SELECT CAST(printf('%040d', x) AS BLOB), 1, x FROM c;";
    let plan = r#"{"name":"p","steps":[{"sql":"UPDATE t SET v = v + 100"},{"sql":"UPDATE t SET v = v * 10"}]}"#;
    for env in [&[][..], &HOOK_OFF[..]] {
        let (err, db) = round_trip(setup, plan, "UPDATE t SET v = -1 WHERE v = 1010", env);
        assert!(err.contains("1 conflict kept"), "{env:?}: {err}");
        assert_eq!(
            db.query_text("SELECT group_concat(v) FROM (SELECT v FROM t ORDER BY h)"),
            "-1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20",
            "{env:?}: {err}"
        );
    }
}

/// Refused up front: a rowid table keyed by a primary key that may hold
/// NULLs; without the hook, a step whose table has a trigger that replaces.
#[test]
fn tables_the_record_cannot_trust_are_refused() {
    let db = TempDb::with_sql(
        "CREATE TABLE o(rowid TEXT, _rowid_ TEXT, oid TEXT, k TEXT PRIMARY KEY, v INT);
         INSERT INTO o VALUES ('r1', 'r1', 'o1', NULL, 1);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
         CREATE TABLE last(k INTEGER PRIMARY KEY, note TEXT);
         CREATE TRIGGER tr AFTER UPDATE ON t BEGIN INSERT OR REPLACE INTO last VALUES (NEW.id, 'v'); END;
         INSERT INTO t VALUES (1, 1);",
    );
    let file = sha256(&db.path);
    let nulls = db.file(
        "o.json",
        r#"{"name":"p","steps":[{"sql":"UPDATE o SET v = 2"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&nulls), &["--no-serve", "--undo"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("may hold NULLs"), "{err}");
    let replaces = db.file(
        "t.json",
        r#"{"name":"p","steps":[{"sql":"UPDATE t SET v = 2"}]}"#,
    );
    let args = run_args(&db, path_str(&replaces), &["--no-serve", "--undo"]);
    let (code, _, err) = run_with_env(&args, None, &HOOK_OFF);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a trigger (INSERT OR REPLACE)"), "{err}");
    assert_eq!(sha256(&db.path), file, "nothing ran");
}

/// A plan resumed with `--undo` after a run without it: the undo takes
/// back only the recorded steps, clears only their checkpoint, and says
/// so; running the plan again does not apply the unrecorded step twice.
#[test]
fn an_undo_clears_only_the_checkpoint_of_the_steps_it_took_back() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1), (2, 2);
         CREATE TABLE u(id INTEGER PRIMARY KEY, w INT); INSERT INTO u VALUES (1, 5);
         CREATE TABLE flag(x); INSERT INTO flag VALUES (1);
         CREATE TRIGGER guard BEFORE UPDATE ON u WHEN (SELECT count(*) FROM flag) > 0
           BEGIN SELECT RAISE(ABORT, 'not yet'); END;",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","steps":[{"name":"ten","sql":"UPDATE t SET v = v * 10"},{"name":"bump","sql":"UPDATE u SET w = w + 1"},{"name":"nothing","sql":"UPDATE u SET w = 0 WHERE id = 99"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 1, "step 2 fails: {err}");
    db.conn().execute_batch("DELETE FROM flag").unwrap();
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
    assert_eq!(code, 0, "resumed, recorded: {err}");
    assert_eq!(db.query_i64("SELECT w FROM u"), 6);
    let (code, _, err) = run(&undo_args(&db, &["--plan", "p"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("step(s) 1 were applied by a run that was not recorded"),
        "{err}"
    );
    assert_eq!(db.query_i64("SELECT w FROM u"), 5, "step 2 taken back");
    assert_eq!(db.query_i64("SELECT sum(v) FROM t"), 30, "step 1 stays");
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT sum(v) FROM t"),
        30,
        "step 1 not applied twice"
    );
    assert_eq!(db.query_i64("SELECT w FROM u"), 6, "step 2 applied again");
}

/// An `UPDATE` chunk's record goes back in one statement: rows whose
/// changed columns differ from row to row, every kind of value, rows the
/// application changed or deleted since (conflicts, kept), a dry run that
/// leaves the file as it was; a table with a trigger, which the undo does
/// not fire (the record holds what it did).
#[test]
fn a_chunk_whose_rows_changed_different_columns_is_put_back_whole() {
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name}(id INTEGER PRIMARY KEY, a INT, b TEXT, c BLOB, d REAL, e);
             INSERT INTO {name} WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 60)
               SELECT i, i, CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'b' || i END,
                 CASE i % 3 WHEN 0 THEN x'' WHEN 1 THEN CAST('c' || i AS BLOB) END, i * 0.5,
                 CASE i % 2 WHEN 0 THEN 'x' ELSE 7 END FROM s;"
        )
    };
    let step = |name: &str| {
        format!(
            r#"{{"sql":"UPDATE {name} SET a = CASE WHEN id % 2 = 0 THEN a + 1 ELSE a END, b = CASE WHEN id % 3 = 0 THEN ifnull(b, 'n') || '?' ELSE b END, c = CASE WHEN id % 5 = 0 THEN x'ff' ELSE c END, e = NULL WHERE id BETWEEN :lo AND :hi","chunk":{{"table":"{name}","size":20}}}}"#
        )
    };
    let setup = format!(
        "{}{}CREATE TABLE log(n INT);
         CREATE TRIGGER tr AFTER UPDATE ON slow BEGIN INSERT INTO log VALUES (NEW.id); END;",
        table("m"),
        table("slow")
    );
    let plan = format!(r#"{{"name":"p","steps":[{},{}]}}"#, step("m"), step("slow"));
    let db = TempDb::with_sql(&setup);
    run_recorded(&db, &db.file("plan.json", &plan), &[]);
    let app = "UPDATE m SET b = 'app' WHERE id = 6; DELETE FROM m WHERE id = 10;
               UPDATE slow SET b = 'app' WHERE id = 6; DELETE FROM slow WHERE id = 10;";
    db.conn().execute_batch(app).unwrap();
    let row6 = |t: &str| -> String {
        let sql =
            format!("SELECT quote(a) || quote(b) || quote(c) || quote(e) FROM {t} WHERE id = 6");
        db.conn().query_row(&sql, [], |r| r.get(0)).unwrap()
    };
    let kept = row6("m");
    assert_eq!(
        kept, "7'app'X''NULL",
        "the run's a and e, the application's b"
    );
    // 58 rows of each table, and the 60 rows the trigger logged.
    let err = dry_run_then_undo(&db, &[], &["176 rows would change", "4 conflicts"]);
    for t in ["m", "slow"] {
        assert!(
            err.contains(&format!("conflict in {t} at key 6: a, b, e are")),
            "{err}"
        );
        assert!(
            err.contains(&format!("conflict in {t} at key 10: the row is gone")),
            "{err}"
        );
        assert_eq!(row6(t), kept, "{t}: the application's row kept whole");
    }
    // Apart from those two rows (and the application's own log line), as
    // before.
    let others =
        "DELETE FROM m WHERE id IN (6, 10); DELETE FROM slow WHERE id IN (6, 10); DELETE FROM log;";
    db.conn().execute_batch(others).unwrap();
    let want = TempDb::with_sql(&setup);
    want.conn().execute_batch(others).unwrap();
    assert_eq!(content(&db), content(&want));
}

/// An undo is steered like a run: its stream says what it takes back,
/// `ctl` pauses and cancels it (the parts done stay done), and the same
/// command then finishes it.
#[test]
fn ctl_pauses_and_cancels_an_undo_and_the_same_command_finishes_it() {
    const TOKEN: &str = "c0ntrol";
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("bump", 50));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "50"],
    ));
    assert_eq!(code, 0, "{err}");
    let mut args = words(
        "undo --plan bump --listen 127.0.0.1:0 --progress none --wait-for-clients 1 --sleep 50",
    );
    args.extend_from_slice(&["--db", path_str(&db.path), "--control-token", TOKEN]);
    let mut p = Proc::start(&args);
    let base = format!("http://{}/", p.addr());
    let mut s = Stream::open(p.addr(), "/events", &[]);
    let start = data(&s.until("start"));
    assert_eq!(start["kind"], "undo", "{start}");
    s.until("progress");
    let ctl = |what: &str| run(&["ctl", &base, what, "--control-token", TOKEN]);
    let (code, _, err) = ctl("pause");
    assert_eq!(code, 0, "{err}");
    assert_eq!(data(&s.until("control"))["by"], "ctl");
    let (code, _, err) = ctl("cancel");
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.wait_for(Duration::from_secs(10)).code(), Some(130));
    let rest = s.rest();
    assert_eq!(data(rest.last().unwrap())["status"], "cancelled");
    // Its step ends cancelled, not failed of its own.
    let ended = rest.iter().find(|e| e.event == "step").map(data);
    let ended = ended.expect("the step's end");
    assert_eq!(
        (&ended["state"], &ended["cancelled"]),
        (&"failed".into(), &true.into()),
        "{ended}"
    );
    let back = db.query_i64("SELECT count(*) FROM t WHERE counter = 0");
    assert!(
        back > 0 && back < 500 && back % 50 == 0,
        "whole parts taken back: {back}"
    );
    assert_eq!(
        back + db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        500
    );
    let (code, _, err) = run(&undo_args(&db, &["--plan", "bump"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("{} rows", 500 - back)),
        "only the rest: {err}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0"),
        500
    );
}

/// The rows an `INSERT` chunk added go in one `DELETE` per chunk: those
/// the application changed since (or deleted) are conflicts, every other
/// one goes, with the hook or without it.
#[test]
fn rows_an_insert_chunk_added_are_deleted_whole_and_changed_ones_kept() {
    let setup = "CREATE TABLE src(id INTEGER PRIMARY KEY, v TEXT, w REAL);
                 INSERT INTO src WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 90)
                   SELECT i, CASE WHEN i % 4 = 0 THEN NULL ELSE 'v' || i END, i / 3.0 FROM s;
                 CREATE TABLE copy(id INTEGER PRIMARY KEY, v TEXT, w REAL, note TEXT DEFAULT 'copied');
                 INSERT INTO copy(id, v) VALUES (1000, 'the application''s own');";
    let plan = r#"{"name":"p","steps":[{"sql":"INSERT INTO copy(id, v, w) SELECT id, v, w FROM src WHERE id BETWEEN :lo AND :hi","chunk":{"table":"src","size":25}}]}"#;
    for env in [&[][..], &HOOK_OFF[..]] {
        let (db, before) = recorded_run(setup, plan, env);
        assert_eq!(db.query_i64("SELECT count(*) FROM copy"), 91);
        db.conn()
            .execute_batch(
                "UPDATE copy SET note = 'seen' WHERE id = 30; DELETE FROM copy WHERE id = 31;",
            )
            .unwrap();
        let err = dry_run_then_undo(&db, env, &["88 rows would change", "2 conflicts"]);
        assert!(
            err.contains(
                "conflict in copy at key 30: the row the run inserted has been changed since"
            ),
            "{err}"
        );
        assert!(
            err.contains("conflict in copy at key 31: the row the run inserted is gone"),
            "{err}"
        );
        let left: Vec<i64> = db
            .conn()
            .prepare("SELECT id FROM copy ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            left,
            [30, 1000],
            "{env:?}: the changed copy and the application's row"
        );
        db.conn()
            .execute_batch("DELETE FROM copy WHERE id = 30")
            .unwrap();
        assert_eq!(content(&db), before, "{env:?}");
    }
}

/// The rows a `DELETE` chunk removed come back in one `INSERT` per chunk,
/// with their rowids and every kind of value; a key the application has
/// used again since is a conflict (the whole chunk then goes row by row),
/// with the hook or without it.
#[test]
fn rows_a_delete_chunk_removed_come_back_whole_and_a_reused_key_is_kept() {
    let setup = "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT, w REAL, b BLOB, n);
                 INSERT INTO s WITH RECURSIVE q(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM q WHERE i < 90)
                   SELECT i, CASE WHEN i % 4 = 0 THEN NULL ELSE 'v' || i END, i / 3.0,
                     CASE i % 3 WHEN 0 THEN x'' WHEN 1 THEN CAST('b' || i AS BLOB) END, i % 5 FROM q;
                 CREATE TABLE plain(a, b);
                 INSERT INTO plain VALUES (1, 'x'), (2, 'y'), (3, 'z');
                 DELETE FROM plain WHERE a = 2;";
    let plan = r#"{"name":"p","steps":[
        {"sql":"DELETE FROM s WHERE id BETWEEN :lo AND :hi AND id % 7 <> 0","chunk":{"table":"s","size":30}},
        {"sql":"DELETE FROM plain"}]}"#;
    for env in [&[][..], &HOOK_OFF[..]] {
        let (db, before) = recorded_run(setup, plan, env);
        assert_eq!(db.query_i64("SELECT count(*) FROM s"), 12);
        db.conn()
            .execute_batch("INSERT INTO s(id, v) VALUES (50, 'the application''s')")
            .unwrap();
        let err = dry_run_then_undo(&db, env, &["79 rows would change", "1 conflict"]);
        assert!(
            err.contains("conflict in s at key 50: the row the run deleted exists again"),
            "{err}"
        );
        // Said as a row written again at the key, not as one whose other
        // columns may hold the run's values (a deleted row holds none).
        assert!(
            err.contains(
                "but for 1 row the run deleted, at whose key a row was written again after the run"
            ) && !err.contains("columns the application did not set"),
            "{err}"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM s WHERE v = 'the application''s'"),
            1
        );
        db.conn()
            .execute_batch("UPDATE s SET v = 'v50', w = 50 / 3.0, b = NULL, n = 0 WHERE id = 50")
            .unwrap();
        assert_eq!(
            content(&db),
            before,
            "{env:?}: every row back, with its rowid"
        );
    }
}

/// A row kept as a conflict that is also gone (the application deleted
/// it) is one conflict, however many steps changed it: an older part's
/// entry for it is held silently, as for a row still there.
#[test]
fn a_gone_row_changed_by_several_steps_is_one_conflict() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT);
                 INSERT INTO t VALUES (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6);";
    let step = |add: u32| {
        format!(
            r#"{{"sql":"UPDATE t SET a = a + {add} WHERE id BETWEEN :lo AND :hi","chunk":{{"table":"t","size":100}}}}"#
        )
    };
    let plan = format!(r#"{{"name":"p","steps":[{},{}]}}"#, step(1), step(10));
    for env in [&[][..], &HOOK_OFF[..]] {
        let (err, db) = round_trip(setup, &plan, "DELETE FROM t WHERE id = 3", env);
        let said = err
            .matches("conflict in t at key 3: the row is gone")
            .count();
        assert_eq!(said, 1, "{env:?}: {err}");
        assert!(err.contains("1 conflict kept"), "{env:?}: {err}");
        assert_eq!(
            db.query_i64("SELECT count(*) FROM batchsse_undo_conflict"),
            1,
            "{env:?}"
        );
        assert_eq!(db.query_i64("SELECT sum(a) FROM t"), 1 + 2 + 4 + 5 + 6);
    }
}

/// Ctrl-C while a part is being put back (most of an undo's time is in
/// the one statement that puts a part back) is an interrupt, as in a run:
/// exit 130, that part rolled back; the same undo run again finishes.
#[test]
fn ctrl_c_in_the_middle_of_a_part_exits_130_and_the_undo_goes_on_after() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b TEXT);
        INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 400000)
          SELECT i, i, 'x' FROM s;";
    let db = TempDb::with_sql(setup);
    let before = content(&db);
    let plan = db.file(
        "plan.json",
        r#"{"name":"p","steps":[{"sql":"UPDATE t SET a = a + 1, b = b || id WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":400000}}]}"#,
    );
    run_undoable(&db, &plan);
    // No pause between parts: the signal comes while one is put back.
    let interrupted = |extra: &[&str]| {
        let args = undo_args(
            &db,
            &[&["--plan", "p", "--nice-ratio", "0"], extra].concat(),
        );
        let mut p = spawn(&args, |_| {});
        let start = Instant::now();
        while !p.stderr().contains(": running") {
            assert!(start.elapsed() < PATIENCE, "{}", p.stderr());
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
        p.signal("INT");
        let status = p.wait();
        (status.code(), p.stderr())
    };
    // A dry run, interrupted, says it took nothing back.
    let recorded = content(&db);
    let (code, err) = interrupted(&["--dry-run"]);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("a dry run writes nothing"), "{err}");
    assert!(!err.contains("run the same undo again"), "{err}");
    assert_eq!(content(&db), recorded);
    let (code, err) = interrupted(&[]);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("run the same undo again"), "{err}");
    let (code, _, err) = run(&undo_args(&db, &["--plan", "p"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&db), before);
}

/// A part that restores more columns than an SQL function may take
/// arguments (1000) goes back row by row, as any part did before.
#[test]
fn a_part_restoring_a_thousand_columns_is_put_back() {
    let cols: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let setup = format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, {});
         INSERT INTO t(id) VALUES (1), (2), (3);",
        cols.join(", ")
    );
    let set: Vec<String> = cols.iter().map(|c| format!("{c} = id")).collect();
    let set = set.join(", ");
    let plan = format!(
        r#"{{"name":"p","steps":[{{"sql":"UPDATE t SET {set} WHERE id BETWEEN :lo AND :hi","chunk":{{"table":"t","size":10}}}}]}}"#
    );
    let app = "UPDATE t SET c5 = 0 WHERE id = 2";
    let (err, db) = round_trip(&setup, &plan, app, &[]);
    assert!(err.contains("conflict in t at key 2: c0, c1, c2"), "{err}");
    assert!(
        err.contains("1 conflict kept the application's row ("),
        "{err}"
    );
    // The application's value stands in place of the run's change, and
    // the row's other columns still hold the run's: a second run of the
    // plan would change them again, which the undo says.
    assert!(!err.contains("fully taken back"), "{err}");
    assert!(
        err.contains("taken back but for 1 row the application changed after the run"),
        "{err}"
    );
    assert!(err.contains("change it a second time"), "{err}");
    // Rows 1 and 3 as before the run, row 2 as the application left it.
    let want = TempDb::with_sql(&setup);
    let kept = format!("UPDATE t SET {set} WHERE id = 2; {app}");
    want.conn().execute_batch(&kept).unwrap();
    assert_eq!(content(&db), content(&want));
}

/// A part whose rows each changed another column (so nearly every entry
/// has a mask of its own) goes back in memory that grows with the part,
/// not with its entries times its columns: the undo fits in a 96 MiB data
/// limit (the record is under 2 MiB).
#[test]
fn a_part_whose_rows_changed_different_columns_is_put_back_in_bounded_memory() {
    let n = 64;
    let cols: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    // Row `id` has a 0 in column `id % n` only: the run changes that one.
    let zero: Vec<String> = (0..n).map(|i| format!("i % {n} <> {i}")).collect();
    let setup = format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, {});
         INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100000)
           SELECT i, {} FROM s;",
        cols.join(", "),
        zero.join(", ")
    );
    let db = TempDb::with_sql(&setup);
    let before = content(&db);
    let set: Vec<String> = cols.iter().map(|c| format!("{c} = 1")).collect();
    let plan = db.file(
        "plan.json",
        &format!(
            r#"{{"name":"p","steps":[{{"sql":"UPDATE t SET {} WHERE id BETWEEN :lo AND :hi","chunk":{{"table":"t","size":100000}}}}]}}"#,
            set.join(", ")
        ),
    );
    run_undoable(&db, &plan);
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -d 98304 && exec \"$0\" \"$@\"", BIN])
        .args(undo_args(&db, &["--plan", "p"]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(content(&db), before);
}

/// A column renamed since the run stops the undo with what to do, the
/// file untouched, whichever way its part goes back (a double-quoted name
/// is not read as a string, which made every row a false conflict).
#[test]
fn a_column_renamed_since_the_run_stops_the_undo_and_says_what_to_do() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
                 CREATE TABLE kv(k TEXT PRIMARY KEY, v INT) WITHOUT ROWID;
                 INSERT INTO t VALUES (1, 1), (2, 2), (3, 3);
                 INSERT INTO kv VALUES ('a', 1), ('b', 2);";
    for (table, step) in [
        (
            "t",
            r#"{"sql":"UPDATE t SET v = v + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":2}}"#,
        ),
        ("kv", r#"{"sql":"UPDATE kv SET v = v + 1"}"#),
    ] {
        let db = TempDb::with_sql(setup);
        let plan = db.file("plan.json", &format!(r#"{{"name":"p","steps":[{step}]}}"#));
        run_recorded(&db, &plan, &[]);
        db.conn()
            .execute_batch(&format!("ALTER TABLE {table} RENAME COLUMN v TO w"))
            .unwrap();
        let file = sha256(&db.path);
        let (code, _, err) = run(&undo_args(&db, &["--plan", "p"]));
        assert_eq!(code, 1, "{table}: {err}");
        assert!(
            !err.contains("conflict"),
            "{table}: no false conflicts: {err}"
        );
        assert!(
            err.contains("no such column")
                && err.contains(
                    "give a renamed column its old name back (or add a dropped one again)"
                ),
            "{table}: {err}"
        );
        assert_eq!(sha256(&db.path), file, "{table}: nothing written");
    }
}

/// A file with a table of its own named `generate_series` (the name the
/// one-statement way counts a purge's rows with) still gets its purge back.
#[test]
fn a_table_named_generate_series_does_not_stop_a_purge_coming_back() {
    let setup = "CREATE TABLE generate_series(x);
                 CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
                 INSERT INTO t VALUES (1, 1), (2, 2), (3, 3);";
    let plan = r#"{"name":"p","steps":[{"sql":"DELETE FROM t WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":2}}]}"#;
    let before = content(&TempDb::with_sql(setup));
    let (err, db) = round_trip(setup, plan, "", &[]);
    assert!(err.contains("3 rows changed"), "{err}");
    assert_eq!(content(&db), before);
}

/// A step that writes only TEMP tables (or makes a TEMP trigger) changes
/// nothing in the file, so a recorded run takes it in (there is nothing of it to take back) and the
/// undo goes past it to the steps before, where `"undo": false` would
/// have stopped it. Run again afterwards, the plan makes its TEMP table
/// anew and does what it did the first time.
#[test]
fn a_step_that_makes_a_temp_table_is_recorded_and_the_undo_goes_past_it() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
        INSERT INTO t VALUES (1, 1), (2, 2), (3, 3), (4, 4), (5, 5);
        CREATE TABLE log(v INT);";
    let plan = r#"{"name":"p","steps":[
        {"sql":"UPDATE t SET v = v + 1"},
        {"sql":"CREATE TEMP TABLE pick AS SELECT id FROM t WHERE id % 2 = 1; INSERT INTO pick VALUES (4)"},
        {"sql":"CREATE TEMP TRIGGER logged AFTER UPDATE ON t BEGIN INSERT INTO log VALUES (new.v); END"},
        {"sql":"UPDATE t SET v = v * 100 WHERE id IN pick AND id BETWEEN :lo AND :hi","chunk":{"table":"t"}},
        {"sql":"DELETE FROM t WHERE id IN pick AND id > 3"}]}"#;
    for env in [&[][..], &HOOK_OFF[..]] {
        let (db, before) = recorded_run(setup, plan, env);
        let applied = content(&db);
        let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "p"]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert!(err.contains("fully taken back"), "{env:?}: {err}");
        assert_eq!(content(&db), before, "{env:?}");
        let plan = db.dir.path().join("plan.json");
        run_recorded(&db, &plan, env);
        assert_eq!(content(&db), applied, "{env:?}");
    }
}

/// A comment between `OR` and `REPLACE` (or `CONFLICT` and `REPLACE`) is
/// still a REPLACE, and so is a `REPLACE INTO` after a `WITH` or another
/// statement of the step: a build without the pre-update hook must refuse
/// it as it refuses the plain spelling, or the rows it replaces are deleted
/// unrecorded and an undo that says it took everything back cannot bring
/// them back.
#[test]
fn without_the_hook_a_replace_parted_by_a_comment_is_still_refused() {
    let cases = [
        (
            "CREATE TABLE k(name TEXT PRIMARY KEY, n INT); INSERT INTO k VALUES ('x', 1);",
            "INSERT OR /* last wins */ REPLACE INTO k VALUES ('x', 2)",
        ),
        (
            "CREATE TABLE k(name TEXT PRIMARY KEY, n INT); INSERT INTO k VALUES ('x', 1);",
            "INSERT OR -- last wins\n REPLACE INTO k VALUES ('x', 2)",
        ),
        (
            "CREATE TABLE k(name TEXT PRIMARY KEY, n INT); INSERT INTO k VALUES ('x', 1);",
            "WITH v(name, n) AS (VALUES ('x', 2)) REPLACE INTO k SELECT * FROM v",
        ),
        (
            "CREATE TABLE k(name TEXT PRIMARY KEY, n INT); INSERT INTO k VALUES ('x', 1);",
            "UPDATE k SET n = n + 1; REPLACE INTO k VALUES ('x', 2)",
        ),
        (
            "CREATE TABLE k(name TEXT UNIQUE ON CONFLICT -- last wins\n REPLACE, n INT);
             INSERT INTO k VALUES ('x', 1);",
            "INSERT INTO k VALUES ('x', 2)",
        ),
        (
            "CREATE TABLE k(name TEXT PRIMARY KEY, n INT); INSERT INTO k VALUES ('x', 1);
             CREATE TABLE feed(name TEXT, n INT);
             CREATE TRIGGER fed AFTER INSERT ON feed BEGIN
               INSERT OR /* last wins */ REPLACE INTO k VALUES (new.name, new.n); END;",
            "INSERT INTO feed VALUES ('x', 2)",
        ),
    ];
    for (setup, sql) in cases {
        let db = TempDb::with_sql(setup);
        let file = sha256(&db.path);
        let plan = serde_json::json!({"name": "r", "steps": [{"sql": sql}]}).to_string();
        let plan = db.file("plan.json", &plan);
        let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
        let (code, _, err) = run_with_env(&args, None, &HOOK_OFF);
        assert_eq!(code, 2, "{sql}: {err}");
        assert!(err.contains("REPLACE"), "{sql}: {err}");
        assert_eq!(sha256(&db.path), file, "{sql}: nothing ran");
    }
}

/// `undo` takes `run`'s pace flags, and checks them as `run` does: a
/// throttle query that cannot work is refused before anything is taken
/// back, not found out at the first chunk (which then went on unthrottled).
#[test]
fn an_undo_refuses_a_throttle_query_that_cannot_work() {
    let db = bumped();
    let file = sha256(&db.path);
    for (query, said) in [
        ("SELEC 1", "does not compile"),
        ("DELETE FROM t", "read-only"),
        ("SELECT :busy", "the parameter :busy"),
    ] {
        let args = undo_args(&db, &["--plan", "bump", "--throttle-query", query]);
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{query}: {err}");
        assert!(err.contains(said), "{query}: {err}");
        assert_eq!(sha256(&db.path), file, "{query}: nothing was taken back");
    }
}

/// An undo's dry run is one transaction that holds the write lock until
/// it ends, as `run --dry-run` is: a wait between its chunks would lock the
/// application out, and its own WAL frames cannot be checkpointed before
/// it ends, so waiting for the WAL to shrink would wait forever. The
/// brakes are refused as `run` refuses them, and the WAL cap is off.
#[test]
fn an_undo_dry_run_never_waits_holding_the_lock() {
    let db = TempDb::padded_wal(40_000);
    let plan = db.file(
        "plan.json",
        r#"{"name":"pad","steps":[{"sql":"UPDATE t SET counter = counter + 1, pad = upper(pad) WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t"}}]}"#,
    );
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "5000"],
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let file = sha256(&db.path);
    let pause = db.file("pause", "");
    // Each in a guard that kills it if it waits after all.
    let finish = |extra: &[&str]| {
        let mut p = Proc::start(&undo_args(
            &db,
            &[&["--plan", "pad", "--dry-run"], extra].concat(),
        ));
        let code = p.wait_for(PATIENCE).code();
        (code, p.stderr())
    };
    for (flag, value) in [
        ("--pause-file", path_str(&pause)),
        ("--throttle-query", "SELECT 1"),
    ] {
        let (code, err) = finish(&[flag, value]);
        assert_eq!(code, Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!("{flag} cannot be used with --dry-run")),
            "{err}"
        );
    }
    let (code, err) = finish(&["--max-wal-mb", "1", "--batch-size", "5000"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("40,000 rows would change"), "{err}");
    assert_eq!(sha256(&db.path), file, "a dry run writes nothing");
}

/// Starts a recorded run of `plan` that waits for its first client, has
/// the application run `meanwhile` on the file (a change between the
/// pre-run check and the run), then lets the run go to its end, which
/// must be ok.
fn recorded_after(db: &TempDb, plan: &std::path::Path, env: &[(&str, &str)], meanwhile: &str) {
    let (code, err) = run_after(db, plan, env, meanwhile);
    assert_eq!(code, Some(0), "{env:?}: {err}");
}

/// What [`recorded_after`] does, giving the run's exit code and stderr.
fn run_after(
    db: &TempDb,
    plan: &std::path::Path,
    env: &[(&str, &str)],
    meanwhile: &str,
) -> (Option<i32>, String) {
    let gate = words("--undo --listen 127.0.0.1:0 --wait-for-clients 1 --progress plain");
    let mut p = Proc::start_with(&run_args(db, path_str(plan), &gate), |c| {
        c.envs(env.iter().copied());
    });
    db.conn().execute_batch(meanwhile).unwrap();
    let _s = Stream::open(p.addr(), "/events", &[]);
    let code = p.wait().code();
    (code, p.stderr())
}

/// A trigger the application adds after the check before the run (here
/// while the run waits for its first client) makes the run change columns
/// and tables the check did not see the step write. The record must hold
/// those changes too: an undo that says all is well must leave every table
/// as before.
#[test]
fn changes_by_a_trigger_added_after_the_check_are_taken_back() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, other TEXT DEFAULT 'o');
         CREATE TABLE stats(k TEXT PRIMARY KEY, n INT);
         INSERT INTO stats VALUES ('updates', 0);
         INSERT INTO t(id, a) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12) SELECT i, i FROM s;";
    let trigger = "CREATE TRIGGER late AFTER UPDATE OF a ON t BEGIN
         UPDATE t SET other = 'by trigger' WHERE id = NEW.id;
         UPDATE stats SET n = n + 1; END;";
    for env in [&[][..], &HOOK_OFF[..]] {
        let db = TempDb::with_sql(setup);
        let before = content(&db);
        let plan = db.file(
            "plan.json",
            r#"{"name":"late","steps":[
                {"sql":"UPDATE t SET a = a + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":4}},
                {"sql":"UPDATE t SET a = a * 2 WHERE id <= 3"}]}"#,
        );
        recorded_after(&db, &plan, env, trigger);
        assert_eq!(
            db.query_i64("SELECT n FROM stats"),
            15,
            "{env:?}: the trigger fired"
        );
        late_undone(&db, env, &before);
    }
}

/// With the trigger `late` dropped, the undo of plan `late` (under
/// `env`) exits 0 and leaves `db` as it was `before` the run.
fn late_undone(db: &TempDb, env: &[(&str, &str)], before: &str) {
    db.conn().execute_batch("DROP TRIGGER late").unwrap();
    let (code, _, err) = run_with_env(&undo_args(db, &["--plan", "late"]), None, env);
    assert_eq!(code, 0, "{env:?}: {err}");
    assert_eq!(content(db), before, "{env:?}: {err}");
}

/// The same, the trigger writing a `WITHOUT ROWID` table. Without the
/// pre-update hook a chunked update of its own table alone is recorded by
/// reading its rows around the work, trusting SQLite's update hook to
/// tell of any other write; that hook is never told of a `WITHOUT ROWID`
/// table's. The run left the counter at 12 and the undo said the plan was
/// fully taken back.
#[test]
fn a_late_trigger_s_writes_to_a_without_rowid_table_are_taken_back() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT);
         CREATE TABLE stats(k TEXT PRIMARY KEY, n INT) WITHOUT ROWID;
         INSERT INTO stats VALUES ('updates', 0);
         INSERT INTO t(id, a) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12) SELECT i, i FROM s;";
    let trigger = "CREATE TRIGGER late AFTER UPDATE OF a ON t BEGIN
         UPDATE stats SET n = n + 1; END;";
    for env in [&[][..], &HOOK_OFF[..]] {
        let db = TempDb::with_sql(setup);
        let before = content(&db);
        let plan = db.file(
            "plan.json",
            r#"{"name":"late","steps":[
                {"sql":"UPDATE t SET a = a + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":4}}]}"#,
        );
        recorded_after(&db, &plan, env, trigger);
        assert_eq!(db.query_i64("SELECT n FROM stats"), 12, "{env:?}");
        late_undone(&db, env, &before);
    }
}

/// A trigger the application adds after the check before the run that
/// replaces rows (`INSERT OR REPLACE`). Without the pre-update hook
/// nothing records the rows REPLACE deletes, which the check before the
/// run refuses in a trigger it sees: the undo deleted the rows the
/// trigger inserted and never gave back those they replaced, losing all
/// of `w`, and said the application had deleted them. The step now fails
/// as it meets such a trigger, its work rolled back; with the hook the
/// replaced rows are recorded and come back.
#[test]
fn a_late_trigger_that_replaces_rows_is_refused_where_they_cannot_be_recorded() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT);
         CREATE TABLE w(k INTEGER PRIMARY KEY, v INT);
         INSERT INTO w VALUES (0, 0), (1, 1), (2, 2);
         INSERT INTO t(id, a) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12) SELECT i, i FROM s;";
    let trigger = "CREATE TRIGGER late AFTER UPDATE OF a ON t BEGIN
         INSERT OR REPLACE INTO w VALUES (NEW.id % 3, NEW.a); END;";
    let plain = "UPDATE t SET a = a + 1 WHERE id > 6";
    let chunked = "UPDATE t SET a = a + 1 WHERE id BETWEEN :lo AND :hi";
    for (env, sql) in [
        (&[][..], chunked),
        (&HOOK_OFF[..], chunked),
        (&HOOK_OFF[..], plain),
    ] {
        let db = TempDb::with_sql(setup);
        let before = content(&db);
        let step = serde_json::json!({"sql": sql, "chunk": {"table": "t", "size": 4}});
        let step = match sql {
            s if s == plain => serde_json::json!({ "sql": sql }),
            _ => step,
        };
        let plan = serde_json::json!({"name": "late", "steps": [step]});
        let plan = db.file("plan.json", &plan.to_string());
        let (code, err) = run_after(&db, &plan, env, trigger);
        if env.is_empty() {
            assert_eq!(code, Some(0), "{err}");
            db.conn().execute_batch("DROP TRIGGER late").unwrap();
            let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "late"]), None, env);
            assert_eq!(code, 0, "{err}");
        } else {
            assert_eq!(code, Some(1), "{sql}: {err}");
            assert!(err.contains("REPLACE"), "{sql}: {err}");
            db.conn().execute_batch("DROP TRIGGER late").unwrap();
        }
        assert_eq!(content(&db), before, "{env:?} {sql}: {err}");
    }
}

/// A trigger the application adds after the check before the run makes
/// a recorded step write a table its record was not armed for: the step
/// is rolled back and done again, recorded with it. Done again, a step
/// that reads `last_insert_rowid()` got the rowid of its own rolled-back
/// try (the line inserted for order 1, the line's own rowid), not the
/// order the step before inserted; it gets the order's.
#[test]
fn a_recorded_step_done_again_reads_the_rowid_the_step_before_left() {
    let setup = "CREATE TABLE orders(id INTEGER PRIMARY KEY, note TEXT);
         INSERT INTO orders VALUES (41, 'old');
         CREATE TABLE lines(id INTEGER PRIMARY KEY, order_id INT);";
    let trigger = "CREATE TABLE log(id INTEGER PRIMARY KEY, order_id INT);
         CREATE TRIGGER late AFTER INSERT ON lines BEGIN
           INSERT INTO log(order_id) VALUES (new.order_id); END;";
    for env in [&[][..], &HOOK_OFF[..]] {
        let db = TempDb::with_sql(setup);
        let plan = db.file(
            "plan.json",
            r#"{"name":"again","steps":[
                {"sql":"INSERT INTO orders(note) VALUES ('new')"},
                {"sql":"INSERT INTO lines(order_id) VALUES (last_insert_rowid())"}]}"#,
        );
        recorded_after(&db, &plan, env, trigger);
        assert_eq!(
            db.query_text("SELECT group_concat(order_id) FROM lines"),
            "42",
            "{env:?}: the line is the new order's"
        );
        assert_eq!(
            db.query_text("SELECT group_concat(order_id) FROM log"),
            "42"
        );
    }
}

/// A trigger the application makes while a recorded step runs (between
/// two of its chunks), which updates a column the step never names and
/// (second case) fills a table made with it: the step's statement is
/// compiled again then, and the rest of the step goes on recorded, those
/// writes too, so the undo puts every table back.
#[test]
fn writes_of_a_trigger_made_during_a_step_are_taken_back() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, other TEXT);
         INSERT INTO t(id, a) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12) SELECT i, i FROM s;";
    let column = "CREATE TRIGGER fill AFTER UPDATE OF a ON t BEGIN
           UPDATE t SET other = 'filled' WHERE id = NEW.id; END;";
    let table = "CREATE TABLE log(id INTEGER PRIMARY KEY, what INT);
         CREATE TRIGGER fill AFTER UPDATE OF a ON t BEGIN
           INSERT INTO log(what) VALUES (NEW.id);
           UPDATE t SET other = 'filled' WHERE id = NEW.id; END;";
    for made in [column, table] {
        let before = {
            let fresh = TempDb::with_sql(setup);
            fresh.conn().execute_batch(made).unwrap();
            content(&fresh)
        };
        for env in [&[][..], &HOOK_OFF[..]] {
            let db = made_during_a_step(setup, BUMP_A, made, env);
            let filled = db.query_i64("SELECT count(*) FROM t WHERE other = 'filled'");
            assert_eq!(
                filled, 8,
                "{env:?}: the trigger fired after the first chunk"
            );
            let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "made"]), None, env);
            assert_eq!(code, 0, "{env:?}: {err}");
            assert_eq!(content(&db), before, "{made} {env:?}: {err}");
        }
    }
}

const BUMP_A: &str = "UPDATE t SET a = a + 1 WHERE id BETWEEN :lo AND :hi";

/// A file made by `setup`, with plan "made" of one step, `sql` chunked
/// over `t`, run on it recorded, 4 rows a chunk 1.5 s apart, and `made`
/// done by the "application" once its first chunk is recorded. The run
/// must succeed.
fn made_during_a_step(setup: &str, sql: &str, made: &str, env: &[(&str, &str)]) -> TempDb {
    let db = TempDb::with_sql(setup);
    let step = serde_json::json!({"sql": sql, "chunk": {"table": "t", "size": 4}});
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "made", "steps": [step]}).to_string(),
    );
    let slow = [
        "--undo",
        "--no-serve",
        "--batch-size",
        "4",
        "--sleep",
        "1500",
    ];
    let mut p = Proc::start_with(&run_args(&db, path_str(&plan), &slow), |c| {
        c.envs(env.iter().copied());
    });
    let t0 = Instant::now();
    let recorded = || {
        db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_undo'") > 0
            && db.query_i64("SELECT count(*) FROM batchsse_undo WHERE chunk >= 0") > 0
    };
    while !recorded() {
        assert!(t0.elapsed() < PATIENCE, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    db.conn().execute_batch(made).unwrap();
    assert_eq!(p.wait().code(), Some(0), "{env:?}: {}", p.stderr());
    db
}

/// `--on-conflict overwrite` puts the run's old values back over what the
/// application wrote since, and says which rows it overwrote (a dry run
/// which it would), whichever way a part goes back: a chunk of updates in
/// one statement, a deleted row whose key is used again, an inserted row
/// changed since.
#[test]
fn overwrite_names_every_row_of_the_application_it_overwrites() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a);
         INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 20) SELECT i, i FROM s;";
    let plan = r#"{"name":"p","steps":[
        {"sql":"UPDATE t SET a = -a WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":5}},
        {"sql":"DELETE FROM t WHERE id = 20"},
        {"sql":"INSERT INTO t VALUES (50, 1)"}]}"#;
    let (db, before) = recorded_run(setup, plan, &[]);
    db.conn()
        .execute_batch(
            "UPDATE t SET a = 100 WHERE id = 3; INSERT INTO t VALUES (20, 'app');
             UPDATE t SET a = 2 WHERE id = 50;",
        )
        .unwrap();
    let file = sha256(&db.path);
    let overwrite = ["--plan", "p", "--on-conflict", "overwrite"];
    let (code, _, err) = run(&undo_args(&db, &[&overwrite[..], &["--dry-run"]].concat()));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sha256(&db.path), file, "a dry run writes nothing");
    for key in [3, 20, 50] {
        let said = format!("conflict in t at key {key}: ");
        let line = err.lines().find(|l| l.contains(&said));
        assert!(
            line.is_some_and(|l| l.ends_with("would overwrite the application's row")),
            "{key}: {err}"
        );
    }
    assert!(
        err.contains("3 rows the application changed since the run would be overwritten"),
        "{err}"
    );
    let (code, _, err) = run(&undo_args(&db, &overwrite));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.matches("overwrote the application's row").count(),
        3,
        "{err}"
    );
    assert!(
        err.contains("3 rows the application changed since the run were overwritten"),
        "{err}"
    );
    assert_eq!(content(&db), before);
}

/// A column the application adds while a recorded purge runs (a migration
/// between two of its chunks), and fills: the rows the purge deletes from
/// then on come back with the column's values, not its default.
#[test]
fn a_column_added_during_a_step_comes_back_with_the_rows_it_deletes() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT);
         INSERT INTO t(id, a) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12) SELECT i, i FROM s;";
    let added = "ALTER TABLE t ADD COLUMN note TEXT; UPDATE t SET note = 'kept ' || id;";
    // Rows 1 to 4 were deleted before the column came, so without a note.
    let before = {
        let fresh = TempDb::with_sql(setup);
        fresh.conn().execute_batch(added).unwrap();
        fresh
            .conn()
            .execute_batch("UPDATE t SET note = NULL WHERE id <= 4")
            .unwrap();
        content(&fresh)
    };
    let purge = "DELETE FROM t WHERE id BETWEEN :lo AND :hi";
    for env in [&[][..], &HOOK_OFF[..]] {
        let db = made_during_a_step(setup, purge, added, env);
        assert_eq!(db.query_i64("SELECT count(*) FROM t"), 0, "{env:?}");
        let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "made"]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert_eq!(content(&db), before, "{env:?}: {err}");
    }
}

/// A row the run inserted is the run's only while the columns the
/// application added since (`ALTER TABLE … ADD COLUMN`) hold what a row
/// without them reads, their default: one whose new column the
/// application set is a conflict, kept, where the undo deleted it, and
/// what the application wrote in it, and said the plan was fully taken
/// back. Set to its default, the column tells nothing: the row goes.
#[test]
fn a_row_the_run_inserted_whose_added_column_the_application_set_is_kept() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID;";
    let plan = r#"{"name":"p","steps":[
        {"sql":"INSERT INTO t(v) VALUES ('a'), ('b'), ('c')"},
        {"sql":"INSERT INTO w VALUES ('a', 1), ('b', 2)"}]}"#;
    let app = "ALTER TABLE t ADD COLUMN note TEXT DEFAULT 'none';
               ALTER TABLE w ADD COLUMN n INT NOT NULL DEFAULT 0;
               UPDATE t SET note = 'the application''s' WHERE v = 'b';
               UPDATE t SET note = 'none' WHERE v = 'c';
               UPDATE w SET n = 7 WHERE k = 'b';";
    for env in [&[][..], &HOOK_OFF[..]] {
        let (err, db) = round_trip(setup, plan, app, env);
        assert!(err.contains("conflict in t at key 2"), "{env:?}: {err}");
        assert!(
            err.contains(r#"conflict in w at key "b""#),
            "{env:?}: {err}"
        );
        assert!(!err.contains("fully taken back"), "{env:?}: {err}");
        let t = db.query_text("SELECT group_concat(id || v || note, ',') FROM t");
        assert_eq!(t, "2bthe application's", "{env:?}: {err}");
        let w = db.query_text("SELECT group_concat(k || v || n, ',') FROM w");
        assert_eq!(w, "b27", "{env:?}: {err}");
    }
}

/// Rows the run wrote that the application deleted since are kept as
/// conflicts with nothing of the run left in them: the undo says they stay
/// deleted, not that their other columns may still hold the run's values.
#[test]
fn rows_the_application_deleted_since_are_said_to_stay_deleted() {
    for (sql, deleted) in [
        (
            "INSERT INTO c(id, counter) SELECT id, counter FROM t WHERE id BETWEEN :lo AND :hi",
            "DELETE FROM c WHERE id = 3",
        ),
        (
            "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
            "DELETE FROM t WHERE id IN (3, 4)",
        ),
    ] {
        let db = TempDb::counters(20);
        db.conn()
            .execute_batch("CREATE TABLE c(id INTEGER PRIMARY KEY, counter INT)")
            .unwrap();
        let plan = serde_json::json!({"name": "gone", "steps": [
            {"sql": sql, "chunk": {"table": "t", "size": 5}}]});
        let plan = db.file("plan.json", &plan.to_string());
        run_undoable(&db, &plan);
        db.conn().execute_batch(deleted).unwrap();
        let (code, _, err) = run(&undo_args(&db, &["--plan", "gone"]));
        assert_eq!(code, 0, "{sql}: {err}");
        let n = if deleted.contains("(3, 4)") {
            "2 rows"
        } else {
            "1 row"
        };
        assert!(
            err.contains(&format!(
                "is taken back but for {n} the run wrote that the application deleted after the run"
            )) && err.contains("deleted (see the table batchsse_undo_conflict)"),
            "{sql}: {err}"
        );
        assert!(
            !err.contains("may still hold the run's values"),
            "{sql}: {err}"
        );
        assert!(
            err.contains(": nothing of it was left to take back")
                || err.contains(": nothing of them was left to take back"),
            "{sql}: {err}"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE counter <> 0"),
            0,
            "{sql}: every other row taken back"
        );
    }
}

/// Without the pre-update hook, the recording shares SQLite's update hook
/// with the check of every chunk of a step that must stay in its chunk:
/// honest steps are still recorded, read around (`t`, by its rowid and
/// by another key) or staged (`u`, whose trigger writes `log`), and an
/// undo puts back every row.
#[test]
fn recorded_without_the_pre_update_hook_checked_chunks_are_recorded_and_taken_back() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k INT NOT NULL UNIQUE, n INT NOT NULL DEFAULT 0, active INT NOT NULL);
         CREATE TABLE u(id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, n INT NOT NULL DEFAULT 0);
         CREATE TABLE log(id INT);
         CREATE TRIGGER u_log AFTER UPDATE OF n ON u WHEN NEW.id % 4 = 0 BEGIN INSERT INTO log VALUES (NEW.id); END;
         INSERT INTO t(id, k, active) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 30)
           SELECT i, 1000 - i * 7, i % 3 <> 0 FROM s;
         INSERT INTO u(id, k) SELECT id, 'k' || (k % 97) FROM t;",
    );
    let before = content(&db);
    let plan = db.file(
        "plan.json",
        r#"{"name":"fenced","steps":[
            {"sql":"UPDATE t SET n = n + 1 WHERE id BETWEEN :lo AND :hi AND active","chunk":{"table":"t","size":4}},
            {"sql":"UPDATE t SET n = n * 10 WHERE k BETWEEN :lo AND :hi","chunk":{"table":"t","key":"k","size":4}},
            {"sql":"UPDATE u SET n = n + id WHERE k BETWEEN :lo AND :hi","chunk":{"table":"u","key":"k","size":4}}]}"#,
    );
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "4"],
    );
    let (code, _, err) = run_with_env(&args, None, &HOOK_OFF);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(n) FROM t"), 200, "{err}");
    assert_eq!(db.query_i64("SELECT sum(n) FROM u"), 465, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM log"), 7, "{err}");
    assert_eq!(
        db.query_i64("SELECT sum(rows) FROM batchsse_undo WHERE chunk >= 0"),
        20 + 20 + 30 + 7,
        "every changed row recorded: {err}"
    );
    let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "fenced"]), None, &HOOK_OFF);
    assert_eq!(code, 0, "{err}");
    assert_eq!(content(&db), before, "every row taken back");
}

/// A trigger the application adds between two chunks of a step checked
/// chunk by chunk, writing another table: the recording without the
/// pre-update hook reads the chunk around, and learns of the trigger's
/// rows only through the update hook it shares with the check, which
/// passes each write on to it. The trigger's rows are recorded, and an
/// undo deletes them.
#[test]
fn a_trigger_added_during_a_checked_step_is_recorded_through_the_shared_hook() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT); CREATE TABLE log(id INT);
         INSERT INTO t(id, a) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 12) SELECT i, i FROM s;";
    let added =
        "CREATE TRIGGER t_log AFTER UPDATE ON t BEGIN INSERT INTO log VALUES (NEW.id); END;";
    let bump = "UPDATE t SET a = a + 1 WHERE id BETWEEN :lo AND :hi";
    let before = content(&TempDb::with_sql(setup));
    for env in [&[][..], &HOOK_OFF[..]] {
        let db = made_during_a_step(setup, bump, added, env);
        assert!(db.query_i64("SELECT count(*) FROM log") > 0, "{env:?}");
        let (code, _, err) = run_with_env(&undo_args(&db, &["--plan", "made"]), None, env);
        assert_eq!(code, 0, "{env:?}: {err}");
        assert_eq!(content(&db), before, "{env:?}: {err}");
    }
}

/// An undo paced by `--sleep` counts the pause after each part in its rate
/// and ETA from the first part on, as a run does: the README's undo of the
/// demo shop (40 parts, `--sleep 300`) said "ETA 1.1 s" after its first
/// part and took 12.9 s.
#[test]
fn a_paced_undo_counts_its_pauses_in_rate_and_eta_from_the_first_part() {
    let db = bumped();
    let args = undo_of_plan(&db, "bump", &["--sleep", "100", "--progress", "json"]);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let progress = progress_data(&out);
    assert_eq!(progress.len(), 4, "{out}");
    // 10 rows, then a pause of at least 100 ms: under 100 rows/s, 30 rows
    // to go.
    let first = &progress[0];
    assert!(first["rate"].as_f64().unwrap() < 100.0, "{first}");
    assert!(first["eta_ms"].as_u64().unwrap() >= 300, "{first}");
    assert_eq!(progress[3]["eta_ms"], 0, "{}", progress[3]);
}

/// An undo held by the pause file leaves that time out of its rate and
/// ETA after it, as a run does.
#[test]
fn an_undo_s_rate_after_a_pause_leaves_the_pause_out() {
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let flags = ["--no-serve", "--undo", "--batch-size", "10"];
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &flags));
    assert_eq!(code, 0, "{err}");
    let pause = db.dir.path().join("pause");
    let mut args = words("undo --plan bump --listen 127.0.0.1:0 --progress none");
    args.extend(words("--wait-for-clients 1 --sleep 20 --pause-file"));
    args.extend_from_slice(&[path_str(&pause), "--db", path_str(&db.path)]);
    let mut p = Proc::start(&args);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    crate::govern::rates_around_a_pause(&mut s, &pause);
    assert_eq!(data(s.rest().last().unwrap())["status"], "ok");
    assert_eq!(p.wait().code(), Some(0));
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0"),
        500
    );
}

/// In a GitHub Actions job that runs a plan and then takes it back, the
/// two step summaries were headed alike ("batchsse: bump on t.sqlite");
/// the undo's says it is one, as its dashboard's title does.
#[test]
fn an_undo_s_github_step_summary_is_headed_as_an_undo() {
    let db = bumped();
    let summary = db.dir.path().join("summary.md");
    let args = undo_of_plan(&db, "bump", &[]);
    let (code, _, err) = run_with_env(
        &args,
        None,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", path_str(&summary)),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.starts_with("### batchsse: undo of bump on "), "{md}");
}

/// Recorded by triggers (a build without the pre-update hook), an
/// `INSERT … SELECT` reads its whole `SELECT` before it inserts a row, as
/// SQLite does for any table with triggers: `last_insert_rowid()` in it
/// then answers the insert before the statement for every row, where
/// without `--undo` it answers each row's insert before it. Refused before
/// anything runs, naming the way out; a single-row `VALUES` reads the
/// same either way and runs.
#[test]
fn without_the_hook_an_insert_select_reading_the_rowid_is_refused() {
    let setup = "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT);
                 INSERT INTO t(v) VALUES (1), (2), (3), (4);
                 CREATE TABLE log(id INTEGER PRIMARY KEY, prev INT, tid INT);";
    let select = "INSERT INTO log(prev, tid) SELECT last_insert_rowid(), id FROM t WHERE id BETWEEN :lo AND :hi";
    let chunked = serde_json::json!({"name": "l", "steps": [
        {"sql": select, "chunk": {"table": "t", "size": 2}}]});
    let db = TempDb::with_sql(setup);
    let file = sha256(&db.path);
    let plan = db.file("plan.json", &chunked.to_string());
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, _, err) = run_with_env(&args, None, &HOOK_OFF);
    assert_eq!(code, 2, "{err}");
    for said in ["last_insert_rowid()", "pre-update hook", "\"undo\": false"] {
        assert!(err.contains(said), "{said}: {err}");
    }
    assert_eq!(sha256(&db.path), file, "nothing ran");
    // With the pre-update hook it runs as without --undo: each row reads
    // the row inserted before it.
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let prev =
        db.query_text("SELECT group_concat(prev, ',') FROM (SELECT prev FROM log ORDER BY id)");
    assert_eq!(prev, "0,1,2,3");
    // A single row's VALUES reads the rowid before its one insert either way.
    let db = TempDb::with_sql(setup);
    let values = serde_json::json!({"name": "v", "steps": [
        {"sql": "INSERT INTO t(v) VALUES (9)"},
        {"sql": "INSERT INTO log(prev, tid) VALUES (last_insert_rowid(), 0)"}]});
    let plan = db.file("plan.json", &values.to_string());
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let (code, _, err) = run_with_env(&args, None, &HOOK_OFF);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT prev FROM log"), 5);
}

/// A step that runs unrecorded (`"undo": false`) was noted as the step an
/// undo stops at when it began, outside its transaction: when it then
/// failed (its `expect` false, its SQL refused, a Ctrl-C), rolled back
/// with nothing of it kept, the note stayed, the run said "an undo stops
/// there, so it can take back nothing of this run", and the undo indeed
/// took back nothing of the recorded step before it. A step of which this
/// run committed chunks keeps its note.
#[test]
fn an_unrecorded_step_that_failed_whole_does_not_stop_the_undo() {
    let recorded = serde_json::json!({"sql": "UPDATE t SET counter = 1"});
    for failing in [
        serde_json::json!({"sql": "UPDATE t SET counter = 2", "undo": false, "expect": "SELECT 0"}),
        serde_json::json!({"sql": "UPDATE t SET counter = NULL", "undo": false}),
    ] {
        let db = TempDb::counters(10);
        let plan = serde_json::json!({"name": "p", "steps": [recorded, failing]}).to_string();
        let plan = db.file("plan.json", &plan);
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--undo"]));
        assert_eq!(code, 1, "{err}");
        assert!(!err.contains("an undo stops there"), "{failing}: {err}");
        let (code, _, undone) = run(&undo_of_plan(&db, "p", &[]));
        assert_eq!(code, 0, "{failing}: {undone}");
        assert_eq!(
            db.query_i64("SELECT sum(counter) FROM t"),
            0,
            "{failing}: {undone}"
        );
    }
    // Two chunks of it committed before the third failed: they stay, unrecorded.
    let db = TempDb::counters(30);
    let plan = serde_json::json!({"name": "p", "steps": [recorded, {
        "sql": "UPDATE t SET counter = 2 WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "size": 10}, "undo": false,
        "expect_changes": {"max": 25}}]});
    let plan = db.file("plan.json", &plan.to_string());
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--batch-size", "10"],
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("an undo stops there"), "{err}");
    let (code, _, undone) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 0, "{undone}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 50, "{undone}");
}

/// Killed (kill -9) while an unrecorded step runs: nothing of it was
/// committed, yet its note, written as it began, stayed, and the undo
/// took back none of the recorded step before it. The note is written
/// with the step's work, in its transaction.
#[test]
fn an_unrecorded_step_killed_under_way_does_not_stop_the_undo() {
    let db = TempDb::counters(10);
    let endless = "UPDATE t SET counter = (WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s) SELECT count(*) FROM s) WHERE id = 1";
    let steps =
        serde_json::json!([{"sql": "UPDATE t SET counter = 1"}, {"sql": endless, "undo": false}]);
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "p", "steps": steps}).to_string(),
    );
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--undo", "--progress", "plain"],
    );
    let mut p = Proc::start(&args);
    p.wait_stderr("[2/2]");
    // The note, where it is written as the step begins, is there within
    // moments (bounded: written with the step's work, it never is).
    let noted = "SELECT count(*) FROM batchsse_undo WHERE chunk < 0 AND step = 1";
    let t0 = Instant::now();
    while db.query_i64(noted) == 0 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    p.child.kill().expect("kill -9");
    p.wait();
    let (code, _, undone) = run(&undo_of_plan(&db, "p", &[]));
    assert_eq!(code, 0, "{undone}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 0, "{undone}");
}

/// A file recorded by an earlier release (tests/fixtures: a chunked
/// update, an insert, an update of some of those rows and one of a WITHOUT
/// ROWID table, run with `--undo` by the release of December 2026): the
/// record's format is read the same by every later one, and its prints
/// still tell the rows the application changed since (three, conflicts)
/// from the rest, which come back. A change to how the record is written
/// that forgets the records already in users' files fails here.
#[test]
fn a_record_an_earlier_release_wrote_is_undone_by_this_one() {
    let db = TempDb::empty();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/undo-recorded-2026-12.sqlite");
    std::fs::copy(&fixture, &db.path).unwrap();
    db.conn()
        .execute_batch(
            "UPDATE t SET v = 999 WHERE id = 3; UPDATE t SET s = 'app' WHERE id = 21;
             UPDATE u SET n = 50 WHERE name = 'b';",
        )
        .unwrap();
    let (code, out, err) = run(&undo_of_plan(&db, "old", &["--progress", "json"]));
    assert_eq!(code, 0, "{err}");
    let fin: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(fin["data"]["conflicts"], 3, "{out}");
    let rows = |sql: &str| -> Vec<String> {
        let conn = db.conn();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut want: Vec<String> = (1..=20)
        .map(|i| match i {
            3 => "3|999|row 3".to_owned(),
            _ => format!("{i}|{}|row {i}", i * 10),
        })
        .collect();
    want.push("21|1|app".into());
    assert_eq!(
        rows("SELECT id || '|' || v || '|' || s FROM t ORDER BY id"),
        want
    );
    let u = rows("SELECT name || n FROM u ORDER BY name");
    assert_eq!(u, ["a1", "b50", "c3"]);
}

/// The undo's last line says the plan's checkpoint is cleared only where
/// there was one: a run with `--no-checkpoint` keeps none, and its undo
/// says the plan can run again, whether it kept a conflict or not.
#[test]
fn an_undo_says_the_checkpoint_is_cleared_only_where_the_run_kept_one() {
    for (flags, said) in [(&["--no-checkpoint"][..], false), (&[][..], true)] {
        for conflict in [false, true] {
            let db = TempDb::counters(20);
            let plan = db.file("plan.json", &counter_plan("kept", 10));
            let mut args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
            args.extend_from_slice(flags);
            let (code, _, err) = run(&args);
            assert_eq!(code, 0, "{err}");
            if conflict {
                db.conn()
                    .execute_batch("UPDATE t SET counter = 99 WHERE id = 3")
                    .unwrap();
            }
            let (code, _, err) = run(&undo_args(&db, &["--plan", "kept"]));
            assert_eq!(code, 0, "{err}");
            let last = match conflict {
                false => "plan \"kept\" is fully taken back",
                true => "plan \"kept\" is taken back but for 1 row the application changed",
            };
            assert!(err.contains(last), "{flags:?}: {err}");
            assert_eq!(
                err.contains("its checkpoint is cleared"),
                said,
                "{flags:?} {conflict}: {err}"
            );
            assert!(
                conflict || err.contains("taken back, so it can run again") != said,
                "{flags:?}: {err}"
            );
        }
    }
}

/// A recorded run's last line gives its record's size; one that recorded
/// nothing (run again, every step already applied) said "undo record 0
/// bytes", as if a record of no size had been kept.
#[test]
fn a_recorded_run_that_kept_nothing_says_so_in_its_last_line() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("twice", 5));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--undo"]);
    let last_line = || {
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        let last = err.lines().rfind(|l| l.contains("finished ok"));
        (last.unwrap_or_default().to_owned(), err)
    };
    let (last, err) = last_line();
    assert!(
        last.contains(", undo record ") && last.ends_with(" bytes"),
        "{err}"
    );
    let (last, err) = last_line();
    assert!(last.contains(", nothing recorded for undo"), "{err}");
    assert!(!last.contains("undo record 0 bytes"), "{err}");
}

/// An undo stops at a step the run did not record. A pause sent during the
/// last part before that stop was answered "pausing at the next chunk
/// boundary" (the server sees a step still to come), and the undo then
/// ended without pausing: the stop is a boundary, and the pause holds there.
#[test]
fn a_pause_during_the_last_part_before_an_unrecorded_step_holds_the_undo() {
    let db = TempDb::counters(1_000);
    db.conn()
        .execute_batch("CREATE TABLE u(x); INSERT INTO u VALUES (0)")
        .unwrap();
    let plan = serde_json::json!({"name": "stopper", "undo": true, "steps": [
        {"name": "unrecorded", "sql": "UPDATE u SET x = x + 1", "undo": false},
        {"name": "bump", "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "t", "key": "id", "size": 2_000}}
    ]});
    let plan = db.file("plan.json", &plan.to_string());
    run_undoable(&db, &plan);
    let flags = "--plan stopper --listen 127.0.0.1:0 --progress none --wait-for-clients 1 --linger 30 --busy-timeout 60000";
    let mut args = vec!["undo", "--db", path_str(&db.path)];
    args.extend(words(flags));
    args.extend(["--control-token", "tok"]);
    let mut p = Proc::start(&args);
    let url = format!("http://{}/", p.addr());
    // Its one part waits for this write lock, taken while the undo waits
    // for its viewer, so the pause surely comes while the part is under
    // way, however slow the machine.
    let holder = db.conn();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut s = Stream::open(p.addr(), "/events", &[]);
    let step = s.until("step");
    assert_eq!(data(&step)["state"], "running");
    let ctl = |what: &str| run(&["ctl", &url, what, "--control-token", "tok"]);
    let (code, out, err) = ctl("pause");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pausing at the next chunk boundary"), "{out}");
    holder.execute_batch("COMMIT").unwrap();
    let held = loop {
        let e = s.next_event().expect("the undo pauses before it ends");
        assert_ne!(e.event, "finished", "it ended without pausing");
        if e.event == "throttle" {
            break data(&e);
        }
    };
    assert_eq!(
        (held["reason"].as_str(), held["active"].as_bool()),
        (Some("paused"), Some(true))
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0"),
        1_000,
        "the part taken back"
    );
    let (code, _, err) = ctl("resume");
    assert_eq!(code, 0, "{err}");
    let rest = s.rest();
    let last = data(rest.last().expect("events"));
    assert_eq!(last["status"], "ok", "{last}");
    p.signal("TERM");
    p.wait();
}
