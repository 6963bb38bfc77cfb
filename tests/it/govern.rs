//! The governor on a live database: the pause file, the throttle query and
//! the WAL cap hold the run between chunks with no lock held, say so with
//! `throttle` events and `/status`, and never fail the run; a chunk lets
//! readers in while it works. Pace itself (nice ratio, sleep) shows only
//! in timing, which the live_app benchmark measures, not these tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

use crate::util::*;

/// A run of `counter_plan` over 1,000 rows, 10 rows a chunk and 20 ms
/// apart (about 2 s), served and waiting for this test's stream.
fn slow_run(db: &TempDb, extra: &[&str]) -> (Proc, Stream) {
    let plan = db.file("plan.json", &counter_plan("governed", 10));
    let mut flags = words("--wait-for-clients 1 --batch-size 10 --sleep 20");
    flags.extend_from_slice(extra);
    let p = serving(db, path_str(&plan), &flags);
    let s = Stream::open(p.addr(), "/events", &[]);
    (p, s)
}

/// Holds a served run (or undo) at the pause file for 1.5 s, after its
/// second chunk: its rate before, and its first progress after, whose rate
/// must leave the pause out. Counting it, the rate would be a small part
/// of the one before.
pub(crate) fn rates_around_a_pause(s: &mut Stream, pause: &Path) -> (f64, Value) {
    s.until("progress");
    let before = data(&s.until("progress"))["rate"].as_f64().expect("rate");
    std::fs::write(pause, "").expect("pause file");
    s.until("throttle");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_file(pause).expect("remove");
    s.until("throttle");
    let after = data(&s.until("progress"));
    let rate = after["rate"].as_f64().expect("rate");
    assert!(
        rate > before / 3.0,
        "{rate} after, {before} before: {after}"
    );
    (before, after)
}

fn throttle(e: &batchsse::sse::ParsedEvent) -> (bool, String) {
    let d = data(e);
    (
        d["active"].as_bool().expect("active"),
        d["reason"].as_str().expect("reason").to_owned(),
    )
}

/// Another connection takes the write lock without waiting at all.
fn write_now(db: &TempDb) {
    let c = Connection::open(&db.path).expect("open");
    c.busy_timeout(Duration::ZERO).expect("busy");
    c.execute_batch("BEGIN IMMEDIATE; UPDATE t SET counter = counter WHERE id = 1; COMMIT")
        .expect("the run holds no lock while it waits");
}

#[test]
fn a_pause_file_holds_the_run_between_chunks_with_no_lock_and_removing_it_goes_on() {
    let db = TempDb::counters(1000);
    let pause = db.dir.path().join("pause");
    let (mut p, mut s) = slow_run(&db, &["--pause-file", path_str(&pause)]);
    s.until("progress");
    std::fs::write(&pause, "").expect("pause file");
    let on = s.until("throttle");
    assert_eq!(throttle(&on), (true, "pause-file".into()));
    assert!(data(&on)["detail"].as_str().unwrap().contains("pause"));
    assert_eq!(data(&on)["step"], 0);
    let status = get(p.addr(), "/status", &[]).json();
    assert_eq!(status["throttled"], "pause-file", "{status}");
    assert_eq!(status["paused"], false, "paused is for live commands");
    let done: i64 = status["done"].as_i64().unwrap();
    write_now(&db);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        get(p.addr(), "/status", &[]).json()["done"]
            .as_i64()
            .unwrap(),
        done,
        "no chunk while paused"
    );
    std::fs::remove_file(&pause).expect("remove");
    let off = s.until("throttle");
    assert_eq!(throttle(&off), (false, "pause-file".into()));
    let rest = s.rest();
    assert_eq!(data(rest.last().unwrap())["status"], "ok");
    assert_eq!(p.wait().code(), Some(0));
    assert_eq!(db.counter_spread(), (1000, 0), "every row once");
}

/// A pause is a person's, not the run's pace: the rate and ETA after it
/// are the run's own, not its rows over a time that counts the pause.
#[test]
fn the_rate_after_a_pause_leaves_the_pause_out() {
    let db = TempDb::counters(1000);
    let pause = db.dir.path().join("pause");
    let (mut p, mut s) = slow_run(&db, &["--pause-file", path_str(&pause)]);
    let (before, after) = rates_around_a_pause(&mut s, &pause);
    let eta = after["eta_ms"].as_u64().expect("eta");
    let left = 1000 - after["done"].as_u64().expect("done");
    let at_rate_before = left as f64 / before * 1000.0;
    assert!((eta as f64) < at_rate_before * 3.0, "{eta} ms: {after}");
    assert_eq!(data(s.rest().last().unwrap())["status"], "ok");
    assert_eq!(p.wait().code(), Some(0));
}

#[test]
fn ctrl_c_while_paused_cancels_at_once() {
    let db = TempDb::counters(1000);
    let pause = db.dir.path().join("pause");
    std::fs::write(&pause, "").expect("pause file");
    let (mut p, mut s) = slow_run(&db, &["--pause-file", path_str(&pause)]);
    // Paused before the first step: nothing has run.
    assert_eq!(throttle(&s.until("throttle")), (true, "pause-file".into()));
    p.signal("INT");
    let rest = s.rest();
    assert_eq!(p.wait_for(Duration::from_secs(10)).code(), Some(130));
    let kinds: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert!(kinds.contains(&"throttle"), "the wait ends: {kinds:?}");
    assert_eq!(data(rest.last().unwrap())["status"], "cancelled");
    assert_eq!(db.counter_spread(), (0, 1000));
}

/// Runs with `--throttle-query` over `throttle(v)` holding `value`; the
/// test sets it to 0 once the run is throttled, if it is.
fn throttled_by(value: &str) -> (bool, i32) {
    let db = TempDb::counters(200);
    db.conn()
        .execute_batch(&format!(
            "CREATE TABLE throttle(v); INSERT INTO throttle VALUES ({value});"
        ))
        .expect("throttle table");
    let plan = db.file("plan.json", &counter_plan("q", 50));
    let p = serving(
        &db,
        path_str(&plan),
        &[
            "--wait-for-clients",
            "1",
            "--batch-size",
            "50",
            "--throttle-query",
            "SELECT v FROM throttle",
        ],
    );
    let mut s = Stream::open(p.addr(), "/events", &[]);
    let mut p = p;
    let mut throttled = false;
    while let Some(e) = s.next_event() {
        if e.event == "throttle" && data(&e)["active"] == true {
            throttled = true;
            assert_eq!(data(&e)["reason"], "throttle-query");
            db.conn()
                .execute("UPDATE throttle SET v = 0", [])
                .expect("release");
        }
        if e.event == "finished" {
            break;
        }
    }
    let code = p.wait().code().unwrap_or(-1);
    assert_eq!(db.counter_spread(), (200, 0), "{value}: every row once");
    (throttled, code)
}

#[test]
fn the_throttle_query_holds_the_run_while_truthy_and_not_for_null_zero_or_empty() {
    for truthy in ["1", "'yes'", "0.5", "-1"] {
        assert_eq!(throttled_by(truthy), (true, 0), "{truthy} is truthy");
    }
    for falsy in ["NULL", "0", "''", "0.0"] {
        assert_eq!(throttled_by(falsy), (false, 0), "{falsy} is falsy");
    }
}

#[test]
fn a_throttle_query_that_does_not_compile_is_refused_before_anything_runs() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("q", 5));
    let before = db.bytes();
    for bad in ["SELECT v FROM nope", "SELEC 1", "DELETE FROM t"] {
        let (code, _, err) = run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--throttle-query", bad],
        ));
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--throttle-query"), "{bad}: {err}");
        assert_eq!(db.bytes(), before, "{bad}: database untouched");
    }
}

#[test]
fn a_throttle_query_that_fails_mid_run_is_said_once_and_does_not_stop_the_run() {
    let db = TempDb::counters(1000);
    db.conn()
        .execute_batch("CREATE TABLE throttle(v); INSERT INTO throttle VALUES (0);")
        .expect("throttle table");
    let (mut p, mut s) = slow_run(&db, &["--throttle-query", "SELECT v FROM throttle"]);
    s.until("progress");
    db.conn()
        .execute_batch("DROP TABLE throttle")
        .expect("drop the query's table");
    let rest = s.rest();
    assert_eq!(p.wait().code(), Some(0));
    let warnings: Vec<String> = rest
        .iter()
        .filter(|e| e.event == "message" && data(e)["status"] == "warn")
        .map(|e| data(e)["message"].as_str().unwrap().to_owned())
        .filter(|m| m.contains("--throttle-query failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {warnings:?}");
    assert!(
        warnings[0].contains("no such table: throttle"),
        "{warnings:?}"
    );
    assert_eq!(db.counter_spread(), (1000, 0));
}

/// A throttle query that fails now and then, working between (here: while
/// the rows done so far are in 100..200, 300..400, …), is said once, not
/// at every failure: each warning is a `message`, which the log keeps for
/// good, so a query that flapped for a day grew it without bound.
#[test]
fn a_throttle_query_that_fails_now_and_then_is_said_once() {
    let db = TempDb::counters(1000);
    let flapping = "SELECT CASE WHEN (SELECT count(*) FROM t WHERE counter = 1) % 200 < 100 THEN 0 ELSE json('x') END";
    let (mut p, mut s) = slow_run(&db, &["--throttle-query", flapping]);
    let all = s.rest();
    assert_eq!(p.wait().code(), Some(0));
    let warnings = all
        .iter()
        .filter(|e| e.event == "message")
        .filter(|e| {
            data(e)["message"]
                .as_str()
                .unwrap()
                .contains("--throttle-query failed")
        })
        .count();
    assert_eq!(warnings, 1, "said once");
    assert_eq!(db.counter_spread(), (1000, 0));
}

#[test]
fn a_reader_pinning_the_wal_past_max_wal_mb_throttles_the_run_until_it_lets_go() {
    let db = TempDb::padded_wal(20000);
    // A reader whose snapshot predates the run: no frame can be copied back.
    let reader = Connection::open(&db.path).expect("reader");
    reader.execute_batch("BEGIN").expect("begin");
    let n: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("read");
    assert_eq!(n, 20000);
    let plan = db.file("plan.json", &counter_plan("wal", 2000));
    let mut p = serving(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 2000 --max-wal-mb 1"),
    );
    let mut s = Stream::open(p.addr(), "/events", &[]);
    let on = s.until("throttle");
    assert_eq!(throttle(&on), (true, "wal".into()));
    let detail = data(&on)["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with("wal ") && detail.ends_with(" MiB > 1 MiB"),
        "{detail}"
    );
    let status = wait_status(p.addr(), |v| v["throttled"] == "wal");
    assert!(status["done"].as_i64().unwrap() < 20000, "{status}");
    reader.execute_batch("COMMIT").expect("let go");
    let off = s.until("throttle");
    assert_eq!(throttle(&off), (false, "wal".into()));
    let rest = s.rest();
    assert_eq!(data(rest.last().unwrap())["status"], "ok");
    assert_eq!(p.wait().code(), Some(0));
    assert_eq!(db.counter_spread(), (20000, 0));
}

/// 40,000 rows of `t` and a plan whose one chunked step is slow on
/// purpose (a correlated scan of `spin` for every row), with the plan's
/// first chunk as big as the table: one chunk of a second or more.
fn one_slow_chunk() -> (TempDb, PathBuf) {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INTEGER NOT NULL DEFAULT 0, pad TEXT);
         INSERT INTO t(id, pad) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 40000)
           SELECT i, printf('%.200c', 'x') FROM s;
         CREATE TABLE spin(n INTEGER);
         INSERT INTO spin WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 400) SELECT i FROM s;",
    );
    // Slow on purpose: a correlated scan of `spin` for every row.
    let slow = "UPDATE t SET counter = counter + 1 + (SELECT 0 * count(*) FROM spin WHERE n > t.id % 2), pad = upper(pad) WHERE id BETWEEN :lo AND :hi";
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "one-chunk", "steps": [
            {"sql": slow, "chunk": {"table": "t", "key": "id", "size": 40000}}
        ]})
        .to_string(),
    );
    (db, plan)
}

#[test]
fn in_rollback_mode_a_reader_is_not_locked_out_for_the_whole_of_a_fixed_size_chunk() {
    // One chunk of 40,000 rows dirties ~10 MB of pages (more than SQLite's
    // default 2 MB cache) and takes a second or more: a chunk that spilled
    // would take the exclusive lock early and shut readers out until it
    // commits. A size fixed by --batch-size may be long, so readers come
    // first there.
    let (db, plan) = one_slow_chunk();
    // The application's reader is there before the run starts.
    let reader = Connection::open(&db.path).expect("reader");
    // Longer than a commit takes, far shorter than the chunk.
    reader
        .busy_timeout(Duration::from_millis(300))
        .expect("busy");
    let _: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("read");
    let mut p = serving(&db, path_str(&plan), &words("--batch-size 40000"));
    wait_status(p.addr(), |v| v["state"] == "running");
    let mut reads = 0;
    let start = Instant::now();
    while p.child.try_wait().expect("try_wait").is_none() {
        let n: rusqlite::Result<i64> = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0));
        let n = n.unwrap_or_else(|e| {
            panic!(
                "a read after {:?} of the chunk waited out 300 ms: {e}",
                start.elapsed()
            )
        });
        assert_eq!(n, 40000);
        reads += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(p.wait().code(), Some(0));
    assert!(
        reads >= 5,
        "the reader tried during the chunk ({reads} reads)"
    );
    assert_eq!(db.counter_spread(), (40000, 0));
}

/// At the live pace with chunks that adapt to a short time, a rollback
/// chunk keeps readers out while it runs: a transaction that could read
/// during it would then find it cannot write, and SQLite fails such an
/// upgrade at once instead of waiting.
#[test]
fn in_rollback_mode_an_adaptive_live_chunk_lets_no_transaction_begin_under_it() {
    let (db, plan) = one_slow_chunk();
    // An application's connection, open before the run: the live pace.
    let app = Connection::open(&db.path).expect("app");
    let _: i64 = app
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("read");
    let mut p = serving(&db, path_str(&plan), &[]);
    wait_status(p.addr(), |v| v["state"] == "running");
    // Well inside the first chunk (a second or more).
    std::thread::sleep(Duration::from_millis(300));
    app.busy_timeout(Duration::ZERO).expect("busy");
    let read = app.execute_batch("BEGIN; SELECT count(*) FROM t;");
    let _ = app.execute_batch("ROLLBACK");
    let err = read.expect_err("the chunk keeps readers out");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{err}"
    );
    assert!(
        p.child.try_wait().expect("try_wait").is_none(),
        "still in its first chunk"
    );
    assert_eq!(p.wait().code(), Some(0));
    assert_eq!(db.counter_spread(), (40000, 0));
}

#[test]
fn the_terminal_and_watch_say_when_the_run_waits_and_goes_on() {
    let db = TempDb::counters(200);
    let pause = db.dir.path().join("pause");
    std::fs::write(&pause, "").expect("pause file");
    let plan = db.file("plan.json", &counter_plan("shown", 50));
    let mut args = run_args(
        &db,
        path_str(&plan),
        &[
            "--listen",
            "127.0.0.1:0",
            "--progress",
            "plain",
            "--batch-size",
            "50",
        ],
    );
    args.extend_from_slice(&["--pause-file", path_str(&pause), "--linger", "5"]);
    let mut p = Proc::start(&args);
    let url = format!("http://{}/", p.addr());
    let mut w = Proc::start(&["watch", &url, "--progress", "plain"]);
    let start = Instant::now();
    while !p.stderr().contains("throttled (pause-file)") {
        assert!(start.elapsed() < PATIENCE, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&pause).expect("remove");
    assert_eq!(w.wait_for(PATIENCE).code(), Some(0), "{}", w.stderr());
    for (who, err) in [("run", p.stderr()), ("watch", w.stderr())] {
        assert!(err.contains("throttled (pause-file): "), "{who}: {err}");
        assert!(
            err.contains("no longer throttled (pause-file): waited"),
            "{who}: {err}"
        );
    }
    p.signal("TERM");
    let _ = p.wait();
}

#[test]
fn a_run_that_starts_beside_another_process_says_it_takes_the_live_pace() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("beside", 50));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--progress", "json"]);
    let first_message = |out: &str| -> Option<String> {
        json_lines(out)
            .iter()
            .take_while(|l| l["event"] != "step")
            .find(|l| l["event"] == "message")
            .map(|l| l["data"]["message"].as_str().unwrap_or_default().to_owned())
    };
    // Alone with a file nobody wrote lately: no word of pace before the
    // first step.
    db.age();
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(first_message(&out), None, "{out}");
    // With the file open in this test's process, the run starts live and
    // says so before its first step.
    let _app = db.conn();
    let again = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "json", "--force"],
    );
    let (code, out, err) = run(&again);
    assert_eq!(code, 0, "{err}");
    let said = first_message(&out).unwrap_or_else(|| panic!("no pace message: {out}"));
    assert!(
        said.starts_with("another process has the database open"),
        "{said}"
    );
    assert!(said.contains("chunks of ~10 ms, nice ratio 1)"), "{said}");
}

/// The messages of a `--progress json` run, in order.
fn messages(out: &str) -> Vec<String> {
    json_lines(out)
        .iter()
        .filter(|l| l["event"] == "message")
        .map(|l| l["data"]["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_live_pace_under_a_fixed_batch_size_names_the_size_not_short_chunks() {
    // The README's own undo recipe runs with --batch-size beside an
    // application: the chunks stay that size, so "short chunks of ~10 ms"
    // would not be what happens; only the yield changes.
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("fixed", 50));
    let _app = db.conn();
    let args = run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--progress", "json", "--batch-size", "40"],
    );
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let said = messages(&out);
    let pace = said
        .iter()
        .find(|m| m.starts_with("another process has the database open"))
        .unwrap_or_else(|| panic!("no pace message: {said:?}"));
    assert!(
        pace.ends_with(": yielding between chunks (batch size 40, nice ratio 1)"),
        "{pace}"
    );
}

/// An undo takes back the run's chunks as they were recorded: neither a
/// chunk time nor `--batch-size` resizes them. Its live pace said "short
/// chunks (chunks of ~10 ms …)" or "(batch size 5 …)" all the same, while
/// it took back parts of ten rows (the README's undo recipe, beside an
/// application, after a run at the idle pace).
#[test]
fn an_undo_beside_an_application_says_its_chunks_are_the_run_s() {
    for (extra, words) in [
        (
            &[][..],
            ": yielding between chunks (the run's chunks, as recorded, nice ratio 1)",
        ),
        (
            &["--batch-size", "5"],
            ": yielding between chunks (the run's chunks, as recorded, nice ratio 1)",
        ),
        (
            &["--dry-run"],
            // It never yields: a nice ratio beside that would contradict it.
            ": nothing changes: the chunks keep their size, and a run in one transaction never yields (the run's chunks, as recorded)",
        ),
    ] {
        let db = bumped();
        let _app = db.conn();
        let args = undo_of_plan(&db, "bump", &["--progress", "json"]);
        let (code, out, err) = run(&[&args[..], extra].concat());
        assert_eq!(code, 0, "{extra:?}: {err}");
        let said = messages(&out);
        let pace = said
            .iter()
            .find(|m| m.starts_with("another process has the database open"))
            .unwrap_or_else(|| panic!("{extra:?}: no pace message: {said:?}"));
        assert!(pace.ends_with(words), "{extra:?}: {pace}");
        let sizes: Vec<u64> = progress_data(&out)
            .iter()
            .map(|d| d["done"].as_u64().unwrap())
            .collect();
        assert_eq!(
            sizes,
            [10, 20, 30, 40],
            "{extra:?}: the run's parts of ten rows"
        );
    }
}

#[test]
fn a_plan_already_applied_says_nothing_of_a_pace_it_will_not_use() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("twice", 50));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--progress", "json"]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    // The file was written just now, and is open here: a run with work
    // to do would start at the live pace and say so.
    let _app = db.conn();
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let said = messages(&out);
    assert!(
        said.iter().any(|m| m.contains("already applied")),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|m| m.contains("nice ratio")),
        "a run with nothing to do spoke of its pace: {said:?}"
    );
}

#[test]
fn a_live_pace_in_a_run_that_is_one_transaction_says_it_does_not_yield() {
    // A dry run (or --atomic) holds its transaction to the end: it never
    // yields, so "yielding between them" would not be what happens.
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("one-tx", 50));
    let _app = db.conn();
    // No nice ratio: the run never yields, whatever its ratio.
    let pace = ": short chunks, with no yield, since the run is one transaction (chunks of ~10 ms)";
    for mode in ["--dry-run", "--atomic"] {
        let args = run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--progress", "json", mode],
        );
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{mode}: {err}");
        let said = messages(&out);
        assert!(
            said.iter().any(
                |m| m.starts_with("another process has the database open") && m.ends_with(pace)
            ),
            "{mode}: {said:?}"
        );
        assert!(
            !said.iter().any(|m| m.contains("nice ratio")),
            "{mode}: {said:?}"
        );
        assert!(
            !said.iter().any(|m| m.contains("yielding")),
            "{mode}: {said:?}"
        );
    }
}
