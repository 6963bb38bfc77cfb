//! Safety, attacked: SIGKILL at many points and resume, already-applied and
//! edited plans, dry runs, atomic runs, Ctrl-C, every bad input, tokens,
//! client limits and malformed requests.

use std::time::{Duration, Instant};

use crate::util::*;

type Rows = Vec<(i64, i64, i64)>;
type Checkpoint = Vec<(String, i64, String, i64, i64)>;

/// Table `t` and the checkpoint, as comparable values.
fn state(db: &TempDb) -> (Rows, Checkpoint) {
    let c = db.conn();
    let t = c
        .prepare("SELECT id, counter, c2 FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let cp = c
        .prepare("SELECT plan, step, state, done, changed FROM batchsse_checkpoint ORDER BY step")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (t, cp)
}

const ROWS: u64 = 3000;

/// Ids `first, first + step, …`: a step of 1 gives dense rowids (chunk
/// boundaries by arithmetic), 2 sparse ones (boundaries by probing keys).
fn crash_db(step: u64) -> TempDb {
    TempDb::with_sql(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0, c2 INTEGER NOT NULL DEFAULT 0);
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {ROWS}) SELECT {step} * i FROM s;"
    ))
}

const CRASH_PLAN: &str = r#"{"name":"crash","steps":[
    {"name":"plain bump","sql":"UPDATE t SET c2 = c2 + 1"},
    {"name":"chunked bump","sql":"UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","key":"id","size":50}},
    {"name":"plain bump again","sql":"UPDATE t SET c2 = c2 + 10"}]}"#;

#[test]
fn sigkill_at_many_points_then_resume_applies_every_chunk_exactly_once() {
    crash_and_resume(2);
}

#[test]
fn sigkill_and_resume_on_dense_rowids_too() {
    crash_and_resume(1);
}

/// In WAL mode the run commits its chunks without an fsync each
/// (`synchronous = NORMAL`); a kill still loses nothing it committed, and
/// a resume repeats nothing.
#[test]
fn sigkill_and_resume_in_wal_mode_with_its_lighter_commits() {
    let wal = |db: &TempDb| {
        let mode: String = db
            .conn()
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    };
    crash_and_resume_with(2, wal);
}

fn crash_and_resume(id_step: u64) {
    crash_and_resume_with(id_step, |_| {});
}

/// Kills the run at many points (after `setup` on each database), resumes
/// it, and compares the end with an uninterrupted run's.
fn crash_and_resume_with(id_step: u64, setup: impl Fn(&TempDb)) {
    let reference = crash_db(id_step);
    setup(&reference);
    let plan = reference.file("plan.json", CRASH_PLAN);
    let (code, _, err) = run(&run_args(
        &reference,
        path_str(&plan),
        &["--no-serve", "--batch-size", "50"],
    ));
    assert_eq!(code, 0, "{err}");

    let db = crash_db(id_step);
    setup(&db);
    let plan = db.file("plan.json", CRASH_PLAN);
    let mut kills = 0;
    let mut rounds = 0;
    let mut kill_points = std::collections::BTreeSet::new();
    while kills < 24 {
        rounds += 1;
        assert!(rounds < 80, "the plan never needed to resume enough times");
        let mut p = Proc::start(&run_args(
            &db,
            path_str(&plan),
            &words(
                "--listen 127.0.0.1:0 --wait-for-clients 1 --batch-size 50 --sleep 2 --progress none",
            ),
        ));
        let mut s = Stream::open(p.addr(), "/events", &[]);
        let start = data(&s.until("start"));
        assert_eq!(start["resumed"], rounds > 1, "round {rounds}");
        // Kill after 1 to 3 chunks, then a little later still, so some
        // kills land between chunks and some in the middle of one.
        let chunks = 1 + rounds % 3;
        let mut last_done = None;
        let mut seen = 0;
        while seen < chunks {
            match s.next_event() {
                Some(e) if e.event == "progress" => {
                    last_done = data(&e)["done"].as_u64();
                    seen += 1;
                }
                Some(e) if e.event == "finished" => break,
                Some(_) => {}
                None => break,
            }
        }
        std::thread::sleep(Duration::from_micros((rounds as u64 * 731) % 3000));
        if p.child.try_wait().unwrap().is_some() {
            break;
        }
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        kills += 1;
        if let Some(d) = last_done {
            kill_points.insert(d);
        }
    }
    assert!(kill_points.len() >= 20, "kill points: {kill_points:?}");
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", "50"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.counter_spread(),
        (ROWS as i64, 0),
        "every row bumped exactly once"
    );
    assert_eq!(
        state(&db),
        state(&reference),
        "same data and checkpoint as an uninterrupted run"
    );
}

#[test]
fn an_applied_plan_is_reported_and_left_alone() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("once", 10));
    let (code, _, _) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0);
    let before = sha256(&db.path);
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "json"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sha256(&db.path),
        before,
        "an already-applied plan writes nothing"
    );
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["data"]["resumed"], true);
    assert!(events.iter().any(|e| {
        e["event"] == "message"
            && e["data"]["message"]
                .as_str()
                .unwrap()
                .contains("already applied")
    }));
    let states: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["data"]["state"].clone())
        .collect();
    assert_eq!(states, ["skipped"]);
    let fin = &events.last().unwrap()["data"];
    assert_eq!(
        (fin["status"].as_str(), fin["rows_changed"].as_u64()),
        (Some("ok"), Some(0))
    );
    assert_eq!(db.counter_spread(), (100, 0));
}

#[test]
fn an_edited_step_is_refused_unless_forced() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("edit", 10));
    assert_eq!(run(&run_args(&db, path_str(&plan), &["--no-serve"])).0, 0);
    let edited = counter_plan("edit", 10).replace("counter + 1", "counter + 2");
    let plan = db.file("plan.json", &edited);
    let before = sha256(&db.path);
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("step 1 (\"bump counters\") has changed") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before);
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--force"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 3"),
        100
    );
    // The forced run is now what the checkpoint remembers.
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 3"),
        100
    );
}

#[test]
fn no_checkpoint_writes_no_table_and_does_not_resume() {
    let db = TempDb::counters(50);
    let plan = db.file("plan.json", &counter_plan("nocp", 10));
    for round in 1..=2 {
        let (code, _, err) = run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--no-checkpoint"],
        ));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            db.query_i64(&format!("SELECT count(*) FROM t WHERE counter = {round}")),
            50
        );
    }
    assert_eq!(
        db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_checkpoint'"),
        0
    );
}

#[test]
fn a_dry_run_reports_real_counts_and_leaves_the_file_byte_identical() {
    let db = TempDb::shop(5000);
    let plan = db.file("plan.json", batchsse::demo::PLAN);
    let before = sha256(&db.path);
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --dry-run --progress json"),
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sha256(&db.path), before, "a dry run must not change a byte");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fin = &events.last().unwrap()["data"];
    assert_eq!(fin["dry_run"], true);
    assert!(events.iter().any(|e| {
        e["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was written"))
    }));
    let dry_rows = fin["rows_changed"].as_u64().unwrap();
    let said = format!(
        "dry run finished: {},{:03} rows would change",
        dry_rows / 1000,
        dry_rows % 1000
    );
    assert!(out.contains(&said), "{said}: {out}");
    let (code, out, _) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "json"],
    ));
    assert_eq!(code, 0);
    let real: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(dry_rows, real["data"]["rows_changed"].as_u64().unwrap());
    assert!(dry_rows > 5000);
}

const FAILS_LATE: &str = r#"{"name":"late-fail","steps":[
    {"name":"bump","sql":"UPDATE t SET counter = counter + 1"},
    {"name":"set v","sql":"UPDATE t SET v = id WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}}]}"#;

fn fails_late_db() -> TempDb {
    TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0, v INT CHECK (v < 95));
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 200) SELECT i FROM s;",
    )
}

#[test]
fn an_atomic_run_that_fails_leaves_the_database_exactly_as_before() {
    let db = fails_late_db();
    let plan = db.file("plan.json", FAILS_LATE);
    let before = sha256(&db.path);
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --atomic --batch-size 10"),
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        !err.contains(GO_ON),
        "nothing was kept to go on from: {err}"
    );
    assert_eq!(
        sha256(&db.path),
        before,
        "--atomic failure must leave every byte as it was"
    );
    // Without --atomic the same plan keeps its first step and nine chunks,
    // and says how to go on from there.
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", "10"],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("once the cause is fixed, {GO_ON}")),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (200, 0));
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE v IS NOT NULL"),
        90
    );
}

#[test]
fn an_atomic_run_that_succeeds_commits_everything() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("atomic-ok", 10));
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--atomic"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (100, 0));
}

#[test]
fn ctrl_c_rolls_back_the_current_chunk_exits_130_and_the_rerun_resumes() {
    let db = TempDb::counters(1000);
    let plan = db.file("plan.json", &counter_plan("cancel", 10));
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words(
            "--listen 127.0.0.1:0 --wait-for-clients 1 --batch-size 10 --sleep 30 --progress plain",
        ),
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    for _ in 0..3 {
        s.until("progress");
    }
    p.signal("INT");
    let rest = s.rest();
    assert_eq!(p.wait().code(), Some(130));
    let fin = data(rest.last().unwrap());
    assert_eq!(fin["status"], "cancelled");
    let last_done = rest
        .iter()
        .rfind(|e| e.event == "progress")
        .map(|e| data(e)["done"].as_i64().unwrap())
        .unwrap_or(30);
    assert_eq!(
        db.counter_spread(),
        (last_done, 1000 - last_done),
        "committed chunks kept, no more"
    );
    let err = p.stderr();
    assert!(err.contains("cancelled"), "{err}");
    assert!(
        err.contains(&format!("checkpointed: {GO_ON}")),
        "a cancelled run has no cause to fix: {err}"
    );
    assert!(
        err.contains(&format!(
            "batchsse checkpoint clear --db {} --plan cancel",
            path_str(&db.path)
        )),
        "{err}"
    );
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", "10"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (1000, 0));
}

/// What a run that stopped with work committed says about going on.
const GO_ON: &str = "run the same command again to go on from where this run stopped";

/// A full disk, as SQLite reports it (here a page limit the plan's first
/// step sets on the run's connection, a few chunks past the start): the
/// chunk that meets it is rolled back and the message says what to do.
/// Space freed inside the file (a filler table emptied) lets the same
/// command finish the run.
#[test]
fn a_full_disk_says_what_to_do_and_the_same_command_then_finishes() {
    let db = TempDb::counters(3000);
    db.conn()
        .execute_batch(
            "ALTER TABLE t ADD COLUMN pad BLOB;
             CREATE TABLE filler(b);
             INSERT INTO filler SELECT randomblob(1000) FROM t WHERE id <= 1500;",
        )
        .unwrap();
    let pages = db.query_i64("PRAGMA page_count") + 30;
    let plan = db.file(
        "plan.json",
        &serde_json::json!({
            "name": "full",
            "steps": [
                {"name": "cap", "sql": format!("PRAGMA max_page_count = {pages}")},
                {"name": "bump", "sql": "UPDATE t SET counter = counter + 1, pad = randomblob(200) WHERE id BETWEEN :lo AND :hi",
                 "chunk": {"table": "t", "key": "id", "size": 100}}
            ]
        })
        .to_string(),
    );
    let args = run_args(&db, path_str(&plan), &words("--no-serve --batch-size 100"));
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("database or disk is full") && err.contains("free some space"),
        "{err}"
    );
    assert!(err.contains(GO_ON), "{err}");
    let (done, left) = db.counter_spread();
    assert!(
        done > 0 && done < 3000 && done % 100 == 0,
        "some whole chunks only: {done}"
    );
    assert_eq!(done + left, 3000);
    db.conn().execute_batch("DELETE FROM filler").unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (3000, 0), "every row bumped once");
    // The PRAGMA ran again on the new connection, as setup steps do.
    assert!(
        err.contains("resuming plan \"full\"; step 2 (\"bump\") continues after")
            && err.contains("[1/2] cap: done"),
        "{err}"
    );
}

#[test]
fn a_resume_counts_its_committed_rows_as_every_other_line_does() {
    // "continues after 7000 committed rows" beside "7,000/100,000 rows".
    let db = TempDb::counters(3000);
    db.conn()
        .execute_batch(
            "CREATE TRIGGER stop BEFORE UPDATE ON t WHEN old.id = 2500
             BEGIN SELECT RAISE(ABORT, 'not yet'); END",
        )
        .unwrap();
    let plan = db.file("plan.json", &counter_plan("thousands", 1200));
    let args = run_args(&db, path_str(&plan), &words("--no-serve --batch-size 1200"));
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    db.conn().execute_batch("DROP TRIGGER stop").unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("step 1 (\"bump counters\") continues after 2,400 committed rows"),
        "{err}"
    );
    assert!(
        err.contains("resuming after 2,400 rows already committed (2,400 changed)"),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (3000, 0), "every row bumped once");
}

/// Adds a column, then bumps it chunk by chunk: re-running the finished
/// `ADD COLUMN` would fail, and a chunk applied twice shows as a 2.
const SCHEMA_PLAN: &str = r#"{"name":"grow","steps":[
    {"name":"add bumps","sql":"ALTER TABLE t ADD COLUMN bumps INTEGER NOT NULL DEFAULT 0"},
    {"name":"bump","sql":"UPDATE t SET bumps = bumps + 1 WHERE id BETWEEN :lo AND :hi",
     "chunk":{"table":"t","key":"id","size":10}}]}"#;

#[test]
fn a_plan_that_changed_the_schema_resumes_and_is_then_already_applied() {
    let db = TempDb::counters(1000);
    let plan = db.file("plan.json", SCHEMA_PLAN);
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words("--listen 127.0.0.1:0 --wait-for-clients 1 --sleep 30 --batch-size 10"),
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    for _ in 0..3 {
        s.until("progress");
    }
    p.signal("INT");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    let bumped = db.query_i64("SELECT count(*) FROM t WHERE bumps = 1");
    assert!((30..1000).contains(&bumped), "{bumped} rows bumped");

    // The column exists now; the finished step is skipped, not re-checked.
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "json"],
    ));
    assert_eq!(code, 0, "{err}");
    let events = json_lines(&out);
    assert_eq!(events[0]["data"]["resumed"], true, "{out}");
    let states: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["skipped", "running", "done"], "{out}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE bumps = 1"),
        1000,
        "every row bumped exactly once"
    );

    let before = sha256(&db.path);
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "json"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("already applied"), "{out}");
    assert_eq!(sha256(&db.path), before);
    // --force means the whole plan again, which cannot add the column twice.
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve", "--force"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("duplicate column name: bumps"), "{err}");
    assert_eq!(sha256(&db.path), before);
}

#[test]
fn a_sql_script_fixed_after_a_failure_resumes_after_its_schema_change() {
    let db = TempDb::counters(100);
    let first = "ALTER TABLE t ADD COLUMN bumps INTEGER NOT NULL DEFAULT 0;\n\
                 UPDATE t SET bumps = bumps + 1;\n\
                 INSERT INTO t(id) VALUES (1); -- a duplicate key: fails\n";
    let run_script = |text: &str| {
        let script = db.file("fix.sql", text);
        run(&[
            "run",
            "--db",
            path_str(&db.path),
            "--sql",
            path_str(&script),
            "--no-serve",
        ])
    };
    let (code, _, err) = run_script(first);
    assert_eq!(code, 1, "{err}");
    // Fix the failed statement; the two before it are done and stay done.
    let (code, _, err) = run_script(&first.replace(
        "INSERT INTO t(id) VALUES (1); -- a duplicate key: fails",
        "UPDATE t SET counter = counter + 1;",
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE bumps = 1 AND counter = 1"),
        100
    );
}

#[test]
fn a_finished_chunked_step_whose_table_is_gone_is_still_skipped() {
    let db = TempDb::counters(50);
    db.conn()
        .execute_batch("CREATE TABLE staging(id INTEGER PRIMARY KEY); INSERT INTO staging VALUES (1), (2), (3);")
        .unwrap();
    let plan = |last: &str| {
        format!(
            r#"{{"name":"stage","steps":[
            {{"name":"copy","sql":"UPDATE t SET counter = counter + 1 WHERE id IN (SELECT id FROM staging WHERE id BETWEEN :lo AND :hi)",
             "chunk":{{"table":"staging","size":2}}}},
            {{"name":"drop","sql":"DROP TABLE staging"}},
            {{"name":"last","sql":"{last}"}}]}}"#
        )
    };
    let file = db.file("plan.json", &plan("INSERT INTO t(id) VALUES (1)"));
    let (code, _, err) = run(&run_args(&db, path_str(&file), &["--no-serve"]));
    assert_eq!(code, 1, "{err}");
    let file = db.file("plan.json", &plan("UPDATE t SET counter = counter + 10"));
    let (code, _, err) = run(&run_args(&db, path_str(&file), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 3 + 50 * 10);
}

#[test]
fn sigterm_interrupts_a_long_statement() {
    let db = TempDb::counters(10);
    let plan = db.file(
        "plan.json",
        r#"{"name":"slow","steps":[
            {"name":"bump","sql":"UPDATE t SET counter = counter + 1"},
            {"name":"slow","sql":"UPDATE t SET counter = (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 4000000000) SELECT count(*) FROM r)"}]}"#,
    );
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words("--listen 127.0.0.1:0 --progress none"),
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    loop {
        let e = s.until("step");
        let d = data(&e);
        if d["index"] == 1 && d["state"] == "running" {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    p.signal("TERM");
    assert_eq!(p.wait_for(Duration::from_secs(20)).code(), Some(130));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "interrupt took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        db.counter_spread(),
        (10, 0),
        "step 1 kept, step 2 rolled back"
    );
    // A plain step has no chunks: its work is what was rolled back.
    let err = p.stderr();
    assert!(
        err.contains("interrupted during step 2 (\"slow\"); its work was rolled back"),
        "{err}"
    );
    assert!(
        err.contains("batchsse: interrupted; stopping, with the step under way rolled back"),
        "{err}"
    );
    // The stream says the step was cancelled, not that it failed alone.
    let ended = s
        .rest()
        .into_iter()
        .find(|e| e.event == "step")
        .map(|e| data(&e));
    let ended = ended.expect("the step's end");
    assert_eq!(
        (&ended["state"], &ended["cancelled"]),
        (&"failed".into(), &true.into()),
        "{ended}"
    );
}

#[test]
fn a_second_ctrl_c_quits_at_once_without_committing() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("twice", 10));
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words("--listen 127.0.0.1:0 --wait-for-clients 1 --busy-timeout 60000 --progress plain"),
    ));
    // Hold the write lock so the first chunk waits on it: once the run
    // has said `start` and waits for its client, so that only the chunk
    // meets it. (Taken while the run still set up, it held up that set-up
    // for the whole --busy-timeout, 60 s, in a loaded test run.)
    wait_status(p.addr(), |s| !s["run_id"].is_null());
    let holder = db.conn();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("start");
    std::thread::sleep(Duration::from_millis(300));
    p.signal("INT");
    std::thread::sleep(Duration::from_millis(300));
    p.signal("INT");
    let t0 = Instant::now();
    assert_eq!(p.wait_for(Duration::from_secs(20)).code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(p.stderr().contains("quitting now"), "{}", p.stderr());
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(db.counter_spread(), (0, 20));
}

#[test]
fn a_signal_during_the_pre_run_check_exits_130_and_writes_nothing() {
    for sig in ["TERM", "INT"] {
        let db = TempDb::counters(10);
        let plan = db.file("plan.json", &counter_plan("checking", 10));
        let before = db.bytes();
        // The check waits for this lock (up to --busy-timeout), so once the
        // process has the file open it is surely still in the check.
        let holder = db.conn();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let mut p = spawn(
            &run_args(
                &db,
                path_str(&plan),
                &words("--listen 127.0.0.1:0 --busy-timeout 60000 --progress none"),
            ),
            |_| {},
        );
        wait_until_open(&mut p, &db.path);
        p.signal(sig);
        let status = p.wait_for(Duration::from_secs(20));
        let err = p.stderr();
        assert_eq!(
            status.code(),
            Some(130),
            "SIG{sig}: {status}; stderr:\n{err}"
        );
        assert_eq!(
            err.trim_end(),
            "batchsse: interrupted during the pre-run check; nothing was written",
            "SIG{sig}"
        );
        holder.execute_batch("ROLLBACK").unwrap();
        assert!(db.bytes() == before, "SIG{sig}: the database changed");
    }
}

#[test]
fn every_bad_input_gets_a_clear_message_exit_2_and_an_untouched_database() {
    let db = TempDb::counters(20);
    let good = db.file("good.json", &counter_plan("good", 10));
    let good = path_str(&good).to_owned();
    let dbp = path_str(&db.path).to_owned();
    let file = |name: &str, text: &str| path_str(&db.file(name, text)).to_owned();
    let not_sqlite = file(
        "notes.sqlite",
        "these are my notes, not a database\n".repeat(100).as_str(),
    );
    let missing = path_str(&db.dir.path().join("nope.sqlite")).to_owned();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let vacuum = file("vacuum.json", r#"{"steps":[{"sql":"VACUUM"}]}"#);
    let cases: Vec<(Vec<String>, Option<&str>, &[&str])> = vec![
        (
            v(&["--db", &missing, "--plan", &good]),
            None,
            &["no such database", "never creates"],
        ),
        (
            v(&["--db", &not_sqlite, "--plan", &good]),
            None,
            &["not a SQLite database"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file("bad.json", "{\n  \"steps\": [\n    {\"sql\": }\n]}"),
            ]),
            None,
            &["line 3, column"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "unknown.json",
                    r#"{"steps":[{"sql":"SELECT 1","chunks":{}}]}"#,
                ),
            ]),
            None,
            &["unknown field `chunks`", "expected one of"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "nolohi.json",
                    r#"{"steps":[{"name":"x","sql":"UPDATE t SET counter = 1","chunk":{"table":"t"}}]}"#,
                ),
            ]),
            None,
            &["step 1 (\"x\")", ":lo and :hi"],
        ),
        (
            // A bare `?` has no name; unrefused, it would be NULL in every row.
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "bare.json",
                    r#"{"steps":[{"name":"x","sql":"UPDATE t SET counter = ? WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t"}}]}"#,
                ),
            ]),
            None,
            &[
                "step 1 (\"x\") uses the parameter ?1",
                "binds only :lo and :hi",
            ],
        ),
        (
            // A bound compared strictly skips a row in every chunk.
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "open.json",
                    r#"{"steps":[{"name":"x","sql":"UPDATE t SET counter = 1 WHERE id >= :lo AND t.id < :hi","chunk":{"table":"t"}}]}"#,
                ),
            ]),
            None,
            &[
                "step 1 (\"x\") compares its chunk key as id < :hi",
                "skipped in every chunk. Write <= :hi",
            ],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "table.json",
                    r#"{"steps":[{"sql":"UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"tt"}}]}"#,
                ),
            ]),
            None,
            &["\"tt\" is not a table", "tables: t"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "key.json",
                    r#"{"steps":[{"sql":"UPDATE t SET counter = 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","key":"ident"}}]}"#,
                ),
            ]),
            None,
            &["\"ident\" is not a column", "columns: id, counter"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file("empty.json", r#"{"name":"e","steps":[]}"#),
            ]),
            None,
            &["no steps"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--sql",
                &file(
                    "syntax.sql",
                    "UPDATE t SET counter = 1;\nUPDATE t SET counter = = 2;",
                ),
            ]),
            None,
            &["statement 2", "syntax error", "near \"=\""],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "syntax.json",
                    r#"{"steps":[{"name":"typo","sql":"UPDATE t SETT counter = 1"}]}"#,
                ),
            ]),
            None,
            &[
                "step 1 (\"typo\")",
                "syntax error",
                "in: UPDATE t SETT counter = 1",
            ],
        ),
        (
            v(&["--db", &dbp, "--plan", &good, "--listen", &busy_addr]),
            None,
            &["already in use", "--listen 127.0.0.1:0"],
        ),
        (
            v(&["--db", &dbp, "--plan", &good, "--listen", "300.1.2.3:80"]),
            None,
            &["not an address", "127.0.0.1:0"],
        ),
        (
            v(&["--db", &dbp, "--plan", "-"]),
            Some(""),
            &["standard input is empty"],
        ),
        (
            v(&["--db", &dbp, "--sql", "-"]),
            Some("  \n"),
            &["standard input is empty"],
        ),
        (
            v(&["--db", &dbp, "--plan", &missing]),
            None,
            &["cannot read plan", "no such file"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &good,
                "--wait-for-clients",
                "5",
                "--max-clients",
                "2",
            ]),
            None,
            &["can never be met"],
        ),
        (
            v(&[
                "--db", &dbp, "--plan", &good, "--cors", "*", "--token", "s3cret",
            ]),
            None,
            &["--cors '*'"],
        ),
        (
            // As copied from the address bar: the browser would refuse
            // every answer, saying so only in the page's console.
            v(&[
                "--db",
                &dbp,
                "--plan",
                &good,
                "--cors",
                "http://localhost:5173/",
            ]),
            None,
            &["use --cors http://localhost:5173 "],
        ),
        (
            v(&["--db", &dbp, "--plan", &good, "--token", ""]),
            None,
            &["empty"],
        ),
        (
            v(&["--db", &dbp, "--plan", &vacuum, "--atomic"]),
            None,
            &["outside a transaction", "--atomic"],
        ),
        (
            // Nothing binds it: NULL, so the run would never wait.
            v(&[
                "--db",
                &dbp,
                "--plan",
                &good,
                "--throttle-query",
                "SELECT :busy > 0",
            ]),
            None,
            &["--throttle-query uses the parameter :busy"],
        ),
        (
            v(&["--db", &dbp, "--plan", &good, "--batch-size", "0"]),
            None,
            &["--batch-size takes 1 to 10000000 rows"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &good,
                "--busy-timeout",
                "3000000000",
            ]),
            None,
            &["--busy-timeout"],
        ),
        (
            v(&["--db", &dbp, "--plan", &good, "--linger=-1"]),
            None,
            &["--linger"],
        ),
        (v(&["--db", &dbp]), None, &["--plan", "--sql"]),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &file(
                    "nul.json",
                    r#"{"steps":[{"name":"x","sql":"UPDATE t SET counter = 1\u0000; DROP TABLE t"}]}"#,
                ),
            ]),
            None,
            &["step 1 (\"x\"): its SQL contains a NUL character"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--sql",
                &file(
                    "nul.sql",
                    "UPDATE t SET counter = 1;\nUPDATE t SET counter = 2 \0; DROP TABLE t;",
                ),
            ]),
            None,
            &["nul.sql: line 2 contains a NUL character"],
        ),
        (
            v(&[
                "--db",
                &dbp,
                "--plan",
                &good,
                "--no-serve",
                "--cors",
                "http://x",
            ]),
            None,
            &["'--no-serve' cannot be used with '--cors"],
        ),
        (
            v(&["--db", &dbp, "--plan", &good, "--no-serve", "--linger", "3"]),
            None,
            &["'--no-serve' cannot be used with '--linger"],
        ),
    ];
    let before = sha256(&db.path);
    let not_before = sha256(std::path::Path::new(&not_sqlite));
    for (args, stdin, needles) in &cases {
        let mut full = vec!["run"];
        full.extend(args.iter().map(String::as_str));
        let (code, out, err) = run_with_stdin(&full, *stdin);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed on stdout: {out}");
        for n in *needles {
            assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
        }
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(sha256(&db.path), before, "{args:?} changed the database");
    }
    assert_eq!(sha256(std::path::Path::new(&not_sqlite)), not_before);
    assert!(!std::path::Path::new(&missing).exists());
    drop(busy);
}

#[test]
fn a_locked_database_is_reported_after_the_busy_timeout_with_its_holder() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("locked", 10));
    let holder = db.conn();
    holder
        .execute_batch("BEGIN EXCLUSIVE; UPDATE t SET counter = 7 WHERE id = 1;")
        .unwrap();
    let t0 = Instant::now();
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--busy-timeout", "300"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(
        err.contains("locked") && err.contains("--busy-timeout"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "names the holder: {err}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(db.counter_spread(), (0, 10));
}

#[test]
fn a_lock_met_mid_run_names_its_holder_and_the_busy_timeout() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("locked-later", 10));
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words("--listen 127.0.0.1:0 --wait-for-clients 1 --busy-timeout 200 --progress plain"),
    ));
    // The check is over (the server is up) and the first step waits for a
    // client, so this lock is taken before any step starts.
    let holder = db.conn();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let events = Stream::open(p.addr(), "/events", &[]).rest();
    assert_eq!(p.wait().code(), Some(1), "{}", p.stderr());
    let finished = data(events.last().expect("events"));
    assert_eq!(finished["status"], "failed");
    let error = finished["error"].as_str().expect("an error");
    let holder_pid = format!("pid {} (", std::process::id());
    for want in [
        "database is locked by another connection",
        &holder_pid,
        "--busy-timeout 200 ms",
        "raise --busy-timeout",
    ] {
        assert!(error.contains(want), "{want:?} missing from: {error}");
        assert!(
            p.stderr().contains(want),
            "{want:?} missing from stderr: {}",
            p.stderr()
        );
    }
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(db.counter_spread(), (0, 20));
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn a_token_guards_every_route_but_healthz() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("token", 10));
    let mut p = serving(
        &db,
        path_str(&plan),
        &words("--token s3cr3t-t0ken --wait-for-clients 2"),
    );
    let a = p.addr();
    for (path, headers) in [
        ("/events", vec![]),
        ("/events", vec![("Authorization", "Bearer wrong")]),
        ("/events?token=wrong", vec![]),
        ("/events", vec![("Authorization", "s3cr3t-t0ken")]),
        ("/status", vec![]),
        ("/", vec![]),
    ] {
        let r = get(a, path, &headers);
        assert_eq!(r.status, 401, "{path} {headers:?}");
        assert!(
            !r.text().contains("id:"),
            "no stream data without the token"
        );
    }
    assert_eq!(get(a, "/healthz", &[]).status, 200);
    assert_eq!(
        get(a, "/status", &[("Authorization", "Bearer s3cr3t-t0ken")]).status,
        200
    );
    assert_eq!(get(a, "/status?token=s3cr3t-t0ken", &[]).status, 200);
    assert_eq!(
        get(a, "/status", &[("Authorization", "bearer s3cr3t-t0ken")]).status,
        200
    );
    let mut q = Stream::open(a, "/events?token=s3cr3t-t0ken", &[]);
    let mut h = Stream::open(a, "/events", &[("Authorization", "Bearer s3cr3t-t0ken")]);
    let (by_query, by_header) = (q.rest(), h.rest());
    assert_eq!(by_query.last().unwrap().event, "finished");
    assert_eq!(by_query, by_header);
    assert!(p.wait().success());
}

#[test]
fn the_token_can_come_from_the_environment() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("env", 10));
    let args = run_args(
        &db,
        path_str(&plan),
        &words("--listen 127.0.0.1:0 --progress none --wait-for-clients 1"),
    );
    let mut p = Proc::start_with(&args, |c| {
        c.env("BATCHSSE_TOKEN", "from-env");
    });
    assert_eq!(get(p.addr(), "/status", &[]).status, 401);
    let evs = Stream::open(p.addr(), "/events?token=from-env", &[]).rest();
    assert_eq!(evs.last().unwrap().event, "finished");
    assert!(p.wait().success());
}

#[test]
fn clients_past_max_clients_get_503() {
    // Slow enough (40 chunks, 50 ms apart) that the run is still going
    // while the slots are tested.
    let db = TempDb::counters(40);
    let plan = db.file("plan.json", &counter_plan("max", 1));
    let mut p = serving(
        &db,
        path_str(&plan),
        &words("--max-clients 2 --wait-for-clients 2 --batch-size 1 --sleep 50"),
    );
    let a = p.addr();
    let one = Stream::open(a, "/events", &[]);
    let mut two = Stream::open(a, "/events", &[]);
    assert_eq!((one.status, two.status), (200, 200));
    // The run may start now; the log replays, so the third is refused
    // only while two streams are open.
    two.until("start");
    let third = get(a, "/events", &[]);
    assert_eq!(third.status, 503);
    assert!(third.text().contains("--max-clients 2"));
    drop(one);
    let deadline = Instant::now() + PATIENCE;
    let mut fourth = loop {
        let s = Stream::open(a, "/events", &[]);
        if s.status == 200 {
            break s;
        }
        assert!(Instant::now() < deadline, "a slot never freed up");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(fourth.rest().last().unwrap().event, "finished");
    two.rest();
    assert!(p.wait().success());
}

#[test]
fn malformed_and_huge_requests_get_4xx_and_never_disturb_the_run() {
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("abuse", 10));
    let mut p = serving(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --sleep 5"),
    );
    let a = p.addr();
    let mut watcher = Stream::open(a, "/events", &[]);
    watcher.until("progress");
    let huge_header = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let huge_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /status HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let attacks: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec(),
        b"GET /events HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        b"GET /events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\n\r\n".to_vec(),
        b"GET /events?last_event_id=99999999999999999999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        huge_header.into_bytes(),
        huge_line.into_bytes(),
        many.into_bytes(),
        b"GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
    ];
    for req in &attacks {
        let status = raw_status(a, req);
        if let Some(s) = status {
            assert!(
                (200..500).contains(&s),
                "{:?} got {s}",
                String::from_utf8_lossy(&req[..req.len().min(60)])
            );
        }
    }
    // A connection that sends half a request and goes quiet must not hurt.
    let mut idle = std::net::TcpStream::connect(a).unwrap();
    use std::io::Write;
    idle.write_all(b"GET /sta").unwrap();
    assert_eq!(get(a, "/healthz", &[]).status, 200);
    let rest = watcher.rest();
    assert_eq!(data(rest.last().unwrap())["status"], "ok");
    assert!(p.wait().success());
    assert_eq!(db.counter_spread(), (500, 0));
}

#[test]
fn a_read_only_database_is_refused_before_anything_runs() {
    let db = TempDb::counters(10);
    // A first run leaves a checkpoint, which `checkpoint list` can still
    // read once the file is read-only.
    let first = db.file("first.json", &counter_plan("before", 10));
    let (code, _, err) = run(&run_args(&db, path_str(&first), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let plan = db.file("plan.json", &counter_plan("ro", 10));
    let Some(_guard) = immutable(&db.path) else {
        return;
    };
    let before = sha256(&db.path);
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("read-only") && err.contains("write access"),
        "{err}"
    );
    assert_eq!(sha256(&db.path), before);
    let (code, out, err) = run(&["checkpoint", "list", "--db", path_str(&db.path)]);
    assert_eq!(code, 0, "checkpoint list only reads: {err}");
    assert!(out.contains("before"), "{out}");
    assert_eq!(sha256(&db.path), before);
}

/// SQLite makes the journal beside the file a symlink points to, not
/// beside the link: a link in a folder batchsse may not write to, to a
/// file in one it may, runs; the other way round is refused up front.
#[test]
fn the_journal_folder_is_the_linked_file_s_not_the_link_s() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("linked", 10));
    let locked = db.dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let link = locked.join("via-link.sqlite");
    std::os::unix::fs::symlink(&db.path, &link).unwrap();
    let Some(guard) = immutable(&locked) else {
        return;
    };
    let args = [
        "run",
        "--db",
        path_str(&link),
        "--plan",
        path_str(&plan),
        "--no-serve",
    ];
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "the journal goes beside the real file: {err}");
    assert_eq!(db.counter_spread(), (10, 0));
    // A link beside the plan, to a file in the folder it may not write to.
    let real = TempDb::counters(10);
    let inner = db.dir.path().join("to-locked.sqlite");
    drop(guard);
    let moved = locked.join("real.sqlite");
    std::fs::rename(&real.path, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &inner).unwrap();
    let _guard = immutable(&locked).expect("chattr +i worked a moment ago");
    let before = sha256(&moved);
    let args = [
        "run",
        "--db",
        path_str(&inner),
        "--plan",
        path_str(&plan),
        "--no-serve",
    ];
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "refused before anything runs: {err}");
    assert!(err.contains("give write access to the folder"), "{err}");
    assert_eq!(sha256(&moved), before);
}

/// Interrupts a text-keyed chunked run after two chunks, then resumes.
fn resume_text_keys(schema: &str, keys: &[&str], size: u64) -> TempDb {
    let values: Vec<String> = keys.iter().map(|k| format!("('{k}')")).collect();
    let db = TempDb::with_sql(&format!(
        "{schema}; INSERT INTO t(k) VALUES {};",
        values.join(",")
    ));
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "text-keys", "steps": [{
            "sql": "UPDATE t SET c = c + 1 WHERE k BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "key": "k", "size": size}}]})
        .to_string(),
    );
    let size_s = size.to_string();
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &[
            "--listen",
            "127.0.0.1:0",
            "--wait-for-clients",
            "1",
            "--batch-size",
            &size_s,
            "--sleep",
            "2000",
            "--progress",
            "none",
        ],
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    p.signal("INT");
    assert_eq!(p.wait().code(), Some(130));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", &size_s],
    ));
    assert_eq!(code, 0, "{err}");
    db
}

#[test]
fn text_keys_that_look_like_numbers_resume_exactly() {
    let padded: Vec<String> = (1..=20).map(|i| format!("{i:03}")).collect();
    let padded: Vec<&str> = padded.iter().map(String::as_str).collect();
    let db = resume_text_keys(
        "CREATE TABLE t(k TEXT PRIMARY KEY, c INT NOT NULL DEFAULT 0)",
        &padded,
        5,
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE c = 1"), 20);
    let db = resume_text_keys(
        "CREATE TABLE t(k PRIMARY KEY, c INT NOT NULL DEFAULT 0)",
        &["1", "2", "3", "4", "5", "6", "7", "8", "9", "1.50", "1e5"],
        3,
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE c = 1"), 11);
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE c <> 1"), 0);
}

#[test]
fn two_runs_of_one_plan_at_once_never_apply_a_chunk_twice() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("twice-at-once", 10));
    let args = run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --batch-size 10 --sleep 100 --progress plain"),
    );
    let mut a = Proc::start(&args);
    // Let the first run commit a chunk or two, then start the second.
    let deadline = Instant::now() + PATIENCE;
    while db.query_i64("SELECT count(*) FROM t WHERE counter = 1") == 0 {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The same plan from another file: the same file is refused before it
    // runs (below), where the system tells; this is the guard beneath.
    let copy = db.file("copy.json", &counter_plan("twice-at-once", 10));
    let mut b = Proc::start(&run_args(
        &db,
        path_str(&copy),
        &words("--no-serve --batch-size 10 --sleep 100 --progress plain"),
    ));
    let (ca, cb) = (a.wait().code(), b.wait().code());
    let conflicts = [(&a, ca), (&b, cb)]
        .iter()
        .filter(|(p, c)| *c == Some(1) && p.stderr().contains("another batchsse run is applying"))
        .count();
    assert!(
        conflicts >= 1,
        "a: {ca:?} {}\nb: {cb:?} {}",
        a.stderr(),
        b.stderr()
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter > 1"),
        0,
        "a chunk was applied twice"
    );
    // Once alone, the plan resumes and finishes.
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--batch-size", "10"],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.counter_spread(), (100, 0));
}

/// A second run of the same plan file on the same database, while the
/// first still runs, is refused before it runs (exit 2), whatever path
/// names the file: it went on from the first's checkpoint, and the first
/// stopped with exit 1; with `--no-checkpoint` both applied every step.
/// A dry run of it is not refused.
#[cfg(target_os = "linux")]
#[test]
fn a_second_run_of_the_same_plan_file_is_refused_while_the_first_runs() {
    let db = TempDb::counters(60);
    let plan = db.file("plan.json", &counter_plan("once", 10));
    let flags = words("--no-serve --batch-size 10 --sleep 150 --progress none --no-checkpoint");
    let mut a = Proc::start(&run_args(&db, path_str(&plan), &flags));
    let deadline = Instant::now() + PATIENCE;
    while db.query_i64("SELECT count(*) FROM t WHERE counter = 1") == 0 {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // From the plan's folder, by a relative name.
    let dbp = path_str(&db.path).to_owned();
    let args = [&["run", "--db", &dbp, "--plan", "plan.json"][..], &flags].concat();
    let mut b = Proc::start_with(&args, |c| {
        c.current_dir(db.dir.path());
    });
    assert_eq!(b.wait().code(), Some(2), "{}", b.stderr());
    let err = b.stderr();
    assert!(
        err.contains(&format!(
            "another batchsse (pid {}) has {dbp} open, a run of the same plan still going",
            a.child.id()
        )) && err.contains("Nothing ran"),
        "{err}"
    );
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--dry-run"],
    ));
    assert_eq!(code, 0, "a dry run writes nothing: {err}");
    assert_eq!(a.wait().code(), Some(0), "{}", a.stderr());
    assert_eq!(db.counter_spread(), (60, 0), "every row once");
}

/// A plan read through `/dev/stdin` (or `/dev/fd/N`, `/proc/self/…`) is
/// the file that process's descriptor names, not this one's: a run of
/// another plan given so beside it was refused as "a run of the same
/// plan", and a run of its own plan by name was not. A hard link to the
/// file is the same file too, and so is stdin (`--plan -`) given the file.
#[cfg(target_os = "linux")]
#[test]
fn a_plan_read_through_dev_stdin_is_the_file_on_that_runs_stdin() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("once", 10));
    let other = serde_json::json!({"name": "other", "steps": [{"sql": "CREATE TABLE u(x)"}]});
    let other = db.file("other.json", &other.to_string());
    let flags = words("--no-serve --batch-size 10 --sleep 250 --progress none --no-checkpoint");
    let stdin = |file: &std::path::Path| {
        let f = std::fs::File::open(file).unwrap();
        move |c: &mut std::process::Command| {
            c.stdin(f);
        }
    };
    let mut a = Proc::start_with(&run_args(&db, "/dev/stdin", &flags), stdin(&plan));
    let deadline = Instant::now() + PATIENCE;
    while db.query_i64("SELECT count(*) FROM t WHERE counter = 1") == 0 {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut b = Proc::start_with(&run_args(&db, "/dev/stdin", &["--no-serve"]), stdin(&other));
    assert_eq!(
        b.wait().code(),
        Some(0),
        "another plan runs: {}",
        b.stderr()
    );
    // By its name, and by a hard link's (the same file by another path).
    let hard = db.dir.path().join("hard.json");
    std::fs::hard_link(&plan, &hard).unwrap();
    for by in [&plan, &hard] {
        let (code, _, err) = run(&run_args(&db, path_str(by), &["--no-serve"]));
        assert_eq!(code, 2, "the same plan is refused: {err}");
        assert!(err.contains("a run of the same plan still going"), "{err}");
    }
    // And on stdin (`--plan -`), given the file.
    let mut c = Proc::start_with(&run_args(&db, "-", &["--no-serve"]), stdin(&plan));
    assert_eq!(c.wait().code(), Some(2), "{}", c.stderr());
    assert!(c.stderr().contains("a run of the same plan still going"));
    assert!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 0") > 0,
        "the first run still went on when the last was refused: the test proves nothing"
    );
    assert_eq!(a.wait().code(), Some(0), "{}", a.stderr());
    assert_eq!(db.counter_spread(), (100, 0), "every row once");
}

/// A `demo --keep DIR` runs the sample plan it wrote to `DIR/plan.json`
/// (and prints `batchsse run --db DIR/shop.sqlite --plan DIR/plan.json` to
/// go on with): that run, typed while the demo still ran, was let through,
/// and the demo stopped with exit 1 once its checkpoint moved.
#[cfg(target_os = "linux")]
#[test]
fn a_run_of_a_kept_demo_s_plan_is_refused_while_the_demo_runs() {
    let dir = tempfile::tempdir().unwrap();
    let keep = path_str(dir.path());
    let (shop, plan) = (dir.path().join("shop.sqlite"), dir.path().join("plan.json"));
    let args = words("demo --rows 3000 --sleep 300 --no-serve --progress plain --keep");
    let mut demo = Proc::start(&[&args[..], &[keep]].concat());
    demo.wait_stderr("rows of orders to visit");
    let (code, _, err) = run(&[
        "run",
        "--db",
        path_str(&shop),
        "--plan",
        path_str(&plan),
        "--no-serve",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a run of the same plan still going"), "{err}");
    assert!(
        demo.child.try_wait().unwrap().is_none(),
        "the demo ended before the run was tried: the test proves nothing"
    );
    demo.signal("INT");
    assert_eq!(demo.wait().code(), Some(130), "{}", demo.stderr());
}

#[test]
fn a_resumed_run_sets_its_connection_up_again() {
    // foreign_keys is per connection: a resumed run that skipped the PRAGMA
    // step would delete orders and leave their items behind.
    let db = TempDb::with_sql(
        "CREATE TABLE o(id INTEGER PRIMARY KEY);
         CREATE TABLE i(id INTEGER PRIMARY KEY, o INT REFERENCES o(id) ON DELETE CASCADE);
         INSERT INTO o(id) WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM s WHERE n < 20) SELECT n FROM s;
         INSERT INTO i(o) SELECT id FROM o;",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"fk","steps":[{"sql":"PRAGMA foreign_keys = ON"},
            {"sql":"DELETE FROM o WHERE id BETWEEN :lo AND :hi","chunk":{"table":"o","size":5}}]}"#,
    );
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words(
            "--listen 127.0.0.1:0 --wait-for-clients 1 --batch-size 5 --sleep 2000 --progress none",
        ),
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    p.signal("INT");
    assert_eq!(p.wait().code(), Some(130));
    assert_eq!(db.query_i64("SELECT count(*) FROM i"), 15);
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --batch-size 5 --progress json"),
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""state":"running""#), "{out}");
    assert_eq!(db.query_i64("SELECT count(*) FROM o"), 0);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM i"),
        0,
        "the cascade ran on resume too"
    );
}

/// Runs `plan`, whose `INSERT INTO log VALUES (1)` step fails on the row
/// put there first; removes the row and runs it again, which resumes and
/// must finish.
fn fail_then_resume(db: &TempDb, plan: &std::path::Path) {
    db.conn()
        .execute_batch("CREATE TABLE log(n INTEGER PRIMARY KEY); INSERT INTO log VALUES (1);")
        .unwrap();
    let args = run_args(db, path_str(plan), &["--no-serve"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "the log row is in the way: {err}");
    db.conn().execute_batch("DELETE FROM log").unwrap();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
}

/// A TEMP table lives in the connection that made it, so the step that
/// makes (and fills) it sets the connection up, as a PRAGMA does: a resumed
/// run does it again. Skipped, later steps would not compile, or (with a
/// table of `main` of the same name, as here on the second round) would
/// silently read that one and change every row.
#[test]
fn a_resumed_run_makes_its_temp_tables_again() {
    for shadowed in [false, true] {
        let db = TempDb::counters(100);
        if shadowed {
            db.conn()
                .execute_batch("CREATE TABLE pick(id INTEGER); INSERT INTO pick SELECT id FROM t;")
                .unwrap();
        }
        let plan = db.file(
            "plan.json",
            r#"{"name":"tmp","steps":[
              {"sql":"CREATE TEMP TABLE pick(id INTEGER); INSERT INTO temp.pick SELECT id FROM t WHERE id % 10 = 0"},
              {"sql":"UPDATE t SET counter = counter + 1 WHERE id IN (SELECT id FROM pick) AND id BETWEEN :lo AND :hi","chunk":{"table":"t"}},
              {"sql":"INSERT INTO log VALUES (1)"},
              {"sql":"UPDATE t SET counter = counter + 100 WHERE id IN (SELECT id FROM pick)"}]}"#,
        );
        fail_then_resume(&db, &plan);
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE id % 10 = 0 AND counter = 101"),
            10,
            "shadowed {shadowed}: the picked rows, once by each step"
        );
        assert_eq!(
            db.query_i64("SELECT count(*) FROM t WHERE id % 10 <> 0 AND counter <> 0"),
            0,
            "shadowed {shadowed}: no other row"
        );
    }
}

/// A TEMP trigger on a table of the file is kept in the TEMP schema too:
/// a resumed run makes it again, so the steps after the resume set it off.
#[test]
fn a_resumed_run_makes_its_temp_triggers_again() {
    let db = TempDb::counters(10);
    db.conn()
        .execute_batch("CREATE TABLE audit(id INTEGER)")
        .unwrap();
    let plan = db.file(
        "plan.json",
        r#"{"name":"trig","steps":[
          {"sql":"CREATE TEMP TRIGGER seen AFTER UPDATE ON t BEGIN INSERT INTO audit VALUES (new.id); END"},
          {"sql":"UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t"}},
          {"sql":"INSERT INTO log VALUES (1)"},
          {"sql":"UPDATE t SET counter = counter + 100 WHERE id <= 3"}]}"#,
    );
    fail_then_resume(&db, &plan);
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 310);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM audit"),
        13,
        "every update of t set the trigger off, the resumed run's too"
    );
}

/// A plan over a database it `ATTACH`es; `aux.log` has a row already, so
/// the last step fails until it is removed.
fn attached(db: &TempDb, last: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let aux = db.dir.path().join("aux.sqlite");
    if !aux.exists() {
        let c = rusqlite::Connection::open(&aux).unwrap();
        c.execute_batch(
            "CREATE TABLE t(v INTEGER); INSERT INTO t VALUES (42);
             CREATE TABLE log(n INTEGER PRIMARY KEY); INSERT INTO log VALUES (1);",
        )
        .unwrap();
    }
    let plan = serde_json::json!({"name": "aux", "steps": [
        {"sql": format!("ATTACH '{}' AS aux", aux.display())},
        {"sql": "UPDATE aux.t SET v = v + 1"},
        {"sql": last},
    ]});
    (db.file("plan.json", &plan.to_string()), aux)
}

#[test]
fn a_plan_over_an_attached_database_resumes() {
    let db = TempDb::counters(1);
    let (plan, aux) = attached(&db, "INSERT INTO aux.log VALUES (1)");
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 1, "{err}");
    let aux_db = rusqlite::Connection::open(&aux).unwrap();
    aux_db.execute_batch("DELETE FROM log").unwrap();
    // The ATTACH step is done, but runs again for this connection.
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let v: i64 = aux_db
        .query_row("SELECT v FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 43, "the UPDATE ran once");
}

#[test]
fn a_parameter_the_check_could_not_see_fails_its_step_instead_of_writing_null() {
    let db = TempDb::counters(1);
    // On the schema copy aux.t does not exist, so the check cannot compile
    // this statement and leaves it to the run.
    let (plan, aux) = attached(&db, "UPDATE aux.t SET v = :v");
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("uses the parameter :v, which nothing binds"),
        "{err}"
    );
    let aux_db = rusqlite::Connection::open(&aux).unwrap();
    let v: Option<i64> = aux_db
        .query_row("SELECT v FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, Some(43), "step 2 ran, step 3 wrote nothing");
}

#[test]
fn a_finished_step_edited_is_named_not_blamed_on_the_schema() {
    let db = TempDb::counters(10);
    let plan = |column: &str| {
        db.file(
            "plan.json",
            &format!(r#"{{"name":"edit","steps":[{{"name":"add","sql":"ALTER TABLE t ADD COLUMN {column}"}}]}}"#),
        )
    };
    let (code, _, err) = run(&run_args(&db, path_str(&plan("c")), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan("c INTEGER")),
        &["--no-serve"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("step 1 (\"add\") has changed since it was applied"),
        "{err}"
    );
    // A checkpoint row edited by hand never panics the program.
    db.conn()
        .execute_batch("UPDATE batchsse_checkpoint SET step = -1")
        .unwrap();
    let (code, _, err) = run(&run_args(&db, path_str(&plan("c")), &["--no-serve"]));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_sql_script_can_attach_a_database_and_use_it() {
    let db = TempDb::counters(1);
    // Creates aux.sqlite (t.v = 42); the plan file itself is not used here.
    let (_, aux) = attached(&db, "SELECT 1");
    let script = db.file(
        "fix.sql",
        &format!(
            "ATTACH '{}' AS aux;\nUPDATE aux.t SET v = v + 1;\n",
            aux.display()
        ),
    );
    let (code, _, err) = run(&[
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(&script),
        "--no-serve",
    ]);
    assert_eq!(code, 0, "{err}");
    let aux_db = rusqlite::Connection::open(&aux).unwrap();
    let v: i64 = aux_db
        .query_row("SELECT v FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 43);
}

#[test]
fn a_token_that_cannot_travel_in_a_header_is_refused_by_run_demo_and_watch() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("tok", 10));
    let before = sha256(&db.path);
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}/");
    let base = run_args(&db, path_str(&plan), &["--listen", &port]);
    let demo = words("demo --rows 10 --sleep 0 --linger 0 --listen 127.0.0.1:0");
    // A run never listens on `port`, so a watch that tried to connect
    // would say "no batchsse run answered" (exit 3) rather than exit 2.
    let watch = ["watch", url.as_str(), "--connect-timeout", "1"];
    for bad in ["tök", "sp ace", "tab\there", "\u{7f}del", "🔑"] {
        for cmd in [&base[..], &demo[..], &watch[..]] {
            let by_flag = run(&[cmd, &["--token", bad]].concat());
            let mut p = spawn(cmd, |c| {
                c.env("BATCHSSE_TOKEN", bad);
            });
            let code = p.wait_for(Duration::from_secs(20)).code().unwrap_or(-1);
            let from_env = (code, p.stdout(), p.stderr());
            for (how, (code, out, err)) in [("--token", by_flag), ("BATCHSSE_TOKEN", from_env)] {
                let case = format!("{cmd:?} with {how} {bad:?}");
                assert_eq!(code, 2, "{case}: {err}");
                assert!(out.is_empty(), "{case}: {out}");
                assert!(
                    err.contains("--token (or BATCHSSE_TOKEN)") && err.contains("visible ASCII"),
                    "{case}: {err}"
                );
                assert!(!err.contains(bad), "{case}: the secret is echoed: {err}");
                assert!(!err.contains("listening on"), "{case}: {err}");
            }
        }
    }
    assert_eq!(
        sha256(&db.path),
        before,
        "a refused token wrote to the database"
    );

    // Every visible ASCII character works, by header (watch) and by query.
    let token: String = (0x21u8..=0x7e).map(char::from).collect();
    let mut p = serving(
        &db,
        path_str(&plan),
        &["--token", &token, "--wait-for-clients", "1"],
    );
    let query: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(
        get(p.addr(), &format!("/status?token={query}"), &[]).status,
        200
    );
    let mut w = spawn(
        &[
            "watch",
            &format!("http://{}/", p.addr()),
            "--progress",
            "none",
        ],
        |c| {
            c.env("BATCHSSE_TOKEN", &token);
        },
    );
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    assert!(p.wait().success(), "{}", p.stderr());
}

/// A run that is one transaction (`--dry-run`, `--atomic`, an undo's dry
/// run) holds the write lock from its first chunk to its end: a wait
/// between its chunks (`--sleep`, the live pace's yield) would only keep
/// the application locked out longer, so there is none. Ten minutes of
/// sleep between each of three chunks would not end within the test.
#[test]
fn a_run_that_is_one_transaction_never_sleeps_between_chunks() {
    let db = TempDb::counters(30);
    let plan = db.file("plan.json", &counter_plan("bump", 10));
    let sleepy = ["--no-serve", "--batch-size", "10", "--sleep", "600000"];
    let finish = |args: &[&str]| {
        let mut p = Proc::start(args);
        let code = p.wait_for(PATIENCE).code();
        (code, p.stderr())
    };
    for flag in ["--dry-run", "--atomic"] {
        let args = run_args(&db, path_str(&plan), &[&sleepy[..], &[flag]].concat());
        let (code, err) = finish(&args);
        assert_eq!(code, Some(0), "{flag}: {err}");
    }
    assert_eq!(db.counter_spread(), (30, 0), "the atomic run applied it");
    let plan = db.file("undone.json", &counter_plan("undone", 10));
    run_undoable(&db, &plan);
    let undo = [
        &[
            "undo",
            "--db",
            path_str(&db.path),
            "--plan",
            "undone",
            "--dry-run",
        ][..],
        &sleepy[..],
    ]
    .concat();
    let (code, err) = finish(&undo);
    assert_eq!(code, Some(0), "undo --dry-run: {err}");
}

/// A chunked purge of a table with neither an `INTEGER PRIMARY KEY` nor an
/// index walks it by rowid; stopped part-way (a trigger fails one chunk),
/// then vacuumed, its rows are numbered anew from 1, so the rows it had
/// not reached now lie below its last rowid. Resuming is refused, the
/// file untouched, rather than skipping them; `--force` starts over and
/// reaches every row. Without the `VACUUM`, or with an index (whose table
/// keeps its rowids), the step resumes as ever, and the probe table goes
/// once the step is done.
#[test]
fn a_walk_by_rowid_is_not_resumed_after_a_vacuum_renumbered_it() {
    let plan = r#"{"name":"purge","steps":[{"sql":"DELETE FROM log WHERE ts % 2 = 0 AND rowid BETWEEN :lo AND :hi","chunk":{"table":"log","size":100}}]}"#;
    let stopped = |index: &str, between: &str| {
        let db = TempDb::with_sql(&format!(
            "CREATE TABLE log(ts INT, msg TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO log SELECT i, 'm' FROM n;
             DELETE FROM log WHERE ts % 10 = 5;
             {index}
             CREATE TABLE flag(v INT); INSERT INTO flag VALUES (1);
             CREATE TRIGGER stop BEFORE DELETE ON log WHEN old.ts = 700 AND (SELECT v FROM flag) = 1
             BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;"
        ));
        db.file("plan.json", plan);
        let (code, err) = purge(&db, &[]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("stopped for the test"), "{err}");
        db.conn()
            .execute_batch(&format!("UPDATE flag SET v = 0; {between}"))
            .unwrap();
        db
    };
    let evens = |db: &TempDb| db.query_i64("SELECT count(*) FROM log WHERE ts % 2 = 0");
    let probe = |db: &TempDb| {
        db.query_i64("SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_walk_probe'")
    };
    let db = stopped("", "VACUUM");
    assert_eq!(probe(&db), 1, "the stopped walk's probe");
    let before = sha256(&db.path);
    let (code, err) = purge(&db, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("a VACUUM has since numbered the rowids of log anew"),
        "{err}"
    );
    assert!(err.contains("Nothing was run"), "{err}");
    assert_eq!(sha256(&db.path), before, "the file untouched");
    let (code, err) = purge(&db, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(evens(&db), 0, "{err}");
    assert_eq!(probe(&db), 0, "gone with the step done");
    let db = stopped("", "");
    let clear = [
        "checkpoint",
        "clear",
        "--db",
        path_str(&db.path),
        "--plan",
        "purge",
    ];
    let (code, _, err) = run(&clear);
    assert_eq!(code, 0, "{err}");
    assert_eq!(probe(&db), 0, "gone with the checkpoint: {err}");
    for (index, between) in [("", ""), ("CREATE INDEX log_ts ON log(ts);", "VACUUM")] {
        let db = stopped(index, between);
        let (code, err) = purge(&db, &[]);
        assert_eq!(code, 0, "{index} {between}: {err}");
        assert!(err.contains("resuming after"), "{err}");
        assert_eq!(evens(&db), 0, "{index} {between}: {err}");
        assert_eq!(probe(&db), 0, "{index} {between}");
    }
}

/// A walk of a table whose rowid is an `INTEGER PRIMARY KEY`, by that
/// column or by the default key: a VACUUM keeps those rowids, so the
/// stopped walk resumes after one (no probe row, no refusal).
#[test]
fn a_walk_by_an_integer_primary_key_is_resumed_after_a_vacuum() {
    for key in [r#","key":"id""#, ""] {
        let plan = format!(
            r#"{{"name":"purge","steps":[{{"sql":"DELETE FROM log WHERE ts % 2 = 0 AND id BETWEEN :lo AND :hi","chunk":{{"table":"log","size":100{key}}}}}]}}"#
        );
        let db = TempDb::with_sql(
            "CREATE TABLE log(id INTEGER PRIMARY KEY, ts INT, msg TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO log SELECT i, i, 'm' FROM n;
             DELETE FROM log WHERE ts % 10 = 5;
             CREATE TABLE flag(v INT); INSERT INTO flag VALUES (1);
             CREATE TRIGGER stop BEFORE DELETE ON log WHEN old.ts = 700 AND (SELECT v FROM flag) = 1
             BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;",
        );
        db.file("plan.json", &plan);
        let (code, err) = purge(&db, &[]);
        assert_eq!(code, 1, "{key}: {err}");
        assert!(err.contains("stopped for the test"), "{err}");
        db.conn()
            .execute_batch("UPDATE flag SET v = 0; VACUUM")
            .unwrap();
        let (code, err) = purge(&db, &[]);
        assert_eq!(code, 0, "{key}: {err}");
        assert!(err.contains("resuming after"), "{err}");
        let evens = db.query_i64("SELECT count(*) FROM log WHERE ts % 2 = 0");
        assert_eq!(evens, 0, "{key}: {err}");
    }
}

/// A VACUUM between two chunks of a live walk by bare rowid (another
/// process, while the run sleeps) stops the step before its next chunk,
/// instead of going on after its last rowid in the new numbering.
#[test]
fn a_vacuum_between_two_chunks_of_a_walk_by_rowid_stops_it() {
    let db = gapped_log(false);
    let plan = db.dir.path().join("plan.json");
    let (code, err) = between_two_chunks(&db, &gapped_args(&db, &plan), WALK_PROBED, "VACUUM");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a VACUUM numbered the rowids of log anew"),
        "{err}"
    );
    let (code, err) = purge(&db, &[]);
    assert_eq!(code, 2, "the resume refused too: {err}");
    let (code, err) = purge(&db, &["--force"]);
    assert_eq!(code, 0, "{err}");
    let evens = db.query_i64("SELECT count(*) FROM log WHERE ts % 2 = 0");
    assert_eq!(evens, 0, "{err}");
}

/// An undo that takes back a stopped walk clears its checkpoint, and with
/// it the walk's probe row: no batchsse table is left behind for it.
#[test]
fn an_undo_of_a_stopped_walk_takes_its_probe_row_away() {
    let db = gapped_log(false);
    db.conn()
        .execute_batch(
            "CREATE TRIGGER stop BEFORE DELETE ON log WHEN old.ts = 700
             BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;",
        )
        .unwrap();
    let (code, err) = purge(&db, &["--undo"]);
    assert_eq!(code, 1, "{err}");
    let probe = "SELECT count(*) FROM sqlite_schema WHERE name = 'batchsse_walk_probe'";
    assert_eq!(db.query_i64(probe), 1, "the stopped walk's probe");
    let undo = [
        "undo",
        "--db",
        path_str(&db.path),
        "--plan",
        "purge",
        "--no-serve",
    ];
    let (code, _, err) = run(&undo);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("fully taken back"), "{err}");
    assert_eq!(db.query_i64(probe), 0, "gone with the checkpoint: {err}");
}

/// A walk by bare rowid of a table with an index, stopped: a VACUUM keeps
/// its rowids (it resumes, in the loop above), but a copy of the file
/// through `.dump` numbers them anew, and so does a VACUUM once the index
/// is dropped. Both resumes are refused, the file untouched.
#[test]
fn a_walk_of_an_indexed_table_is_not_resumed_in_a_dump_copy_or_unindexed() {
    let stopped = || {
        let db = gapped_log(false);
        db.conn()
            .execute_batch(
                "CREATE INDEX log_ts ON log(ts);
                 CREATE TABLE flag(v INT); INSERT INTO flag VALUES (1);
                 CREATE TRIGGER stop BEFORE DELETE ON log WHEN old.ts = 700 AND (SELECT v FROM flag) = 1
                 BEGIN SELECT RAISE(ABORT, 'stopped for the test'); END;",
            )
            .unwrap();
        let (code, err) = purge(&db, &[]);
        assert_eq!(code, 1, "{err}");
        db.conn().execute_batch("UPDATE flag SET v = 0").unwrap();
        db
    };
    let db = stopped();
    let copy = dump_copy(&db);
    copy.file(
        "plan.json",
        &std::fs::read_to_string(db.dir.path().join("plan.json")).unwrap(),
    );
    let before = sha256(&copy.path);
    let (code, err) = purge(&copy, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "a copy of the file made through .dump has since numbered the rowids of log anew"
        ),
        "{err}"
    );
    assert_eq!(sha256(&copy.path), before, "the copy untouched");
    let db = stopped();
    db.conn()
        .execute_batch("DROP INDEX log_ts; VACUUM")
        .unwrap();
    let (code, err) = purge(&db, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("a VACUUM has since numbered the rowids of log anew"),
        "{err}"
    );
    let (code, err) = purge(&db, &["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM log WHERE ts % 2 = 0"), 0);
    let left = "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'batchsse_walk%'";
    assert_eq!(db.query_i64(left), 0, "both probes gone with the step done");
}

/// An interrupted chunked step names the rows its committed chunks
/// changed as changed: "12,500/100,000 rows" on the bar, then "2,500 rows
/// from earlier chunks are kept", read as rows visited, did not add up.
/// Stopped in a `--sleep` pause, no chunk is under way: neither Ctrl-C's
/// line nor the step's error may say one was rolled back.
#[test]
fn an_interrupted_step_says_its_kept_rows_are_rows_changed() {
    let db = TempDb::counters(100);
    let plan = db.file(
        "plan.json",
        r#"{"name":"evens","steps":[{"name":"bump evens",
            "sql":"UPDATE t SET counter = counter + 1 WHERE id % 2 = 0 AND id BETWEEN :lo AND :hi",
            "chunk":{"table":"t","key":"id","size":10}}]}"#,
    );
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --progress plain --batch-size 10 --sleep 600000"),
    ));
    // The first chunk (10 rows visited, 5 changed) is committed; the run
    // sleeps before the next.
    p.wait_stderr("10/100 rows");
    p.signal("INT");
    assert_eq!(p.wait_for(Duration::from_secs(20)).code(), Some(130));
    let err = p.stderr();
    assert!(
        err.contains(
            "interrupted during step 1 (\"bump evens\") with no chunk under way; 5 rows changed by earlier chunks are kept"
        ),
        "{err}"
    );
    assert!(
        err.contains("batchsse: interrupted; stopping, with nothing under way to roll back"),
        "{err}"
    );
    assert!(!err.contains("chunk under way rolled back"), "{err}");
    assert!(!err.contains("its current chunk was rolled back"), "{err}");
    // The step's line says what stopped it: the Ctrl-C, no failure.
    assert!(err.contains("[1/1] bump evens: cancelled after "), "{err}");
    assert!(!err.contains("FAILED"), "{err}");
    assert_eq!(db.query_i64("SELECT sum(counter) FROM t"), 5);
}

/// A run that is one transaction (`--atomic`) keeps none of it when
/// stopped, whatever is under way, and Ctrl-C's line says so, not that
/// a chunk is rolled back.
#[test]
fn ctrl_c_in_an_atomic_run_says_none_of_it_is_kept() {
    let db = TempDb::counters(400);
    let sql = "UPDATE t SET counter = counter + 1 + 0 * (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 50000 + t.id * 0) SELECT count(*) FROM r) WHERE id BETWEEN :lo AND :hi";
    let plan = serde_json::json!({"name": "whole", "steps": [
        {"name": "slow walk", "sql": sql, "chunk": {"table": "t", "key": "id", "size": 40}}]});
    let plan = db.file("plan.json", &plan.to_string());
    let args = "--no-serve --progress plain --atomic --batch-size 40";
    let mut p = Proc::start(&run_args(&db, path_str(&plan), &words(args)));
    p.wait_stderr("slow walk: running");
    p.signal("INT");
    assert_eq!(p.wait_for(Duration::from_secs(20)).code(), Some(130));
    let err = p.stderr();
    assert!(
        err.contains(
            "batchsse: interrupted; stopping: the run is one transaction, so none of it is kept"
        ),
        "{err}"
    );
    assert_eq!(db.counter_spread(), (0, 400));
}
