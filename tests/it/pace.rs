//! Which pace a run starts at and when it changes: a file written lately
//! may belong to an application that opens it per request and has it
//! closed right now, so the run starts gentle and goes to the idle pace
//! only once it has seen nobody for the stated quiet time. The latencies
//! these choices buy are measured by the live_app benchmark, not here.

use serde_json::Value;

use crate::util::*;

const LIVE_CHUNK_MS: u64 = 10;
const LIVE_WAL_CHUNK_MS: u64 = 20;
const LIVE_WAL_NICE: f64 = 0.75;
const IDLE_CHUNK_MS: u64 = 250;
/// The quiet time the README states.
const ALONE_AFTER_MS: u64 = 5000;

fn events(db: &TempDb, plan: &str, extra: &str) -> Vec<Value> {
    let path = db.file("plan.json", &counter_plan(plan, 10));
    let flags = format!("--no-serve --progress json {extra}");
    let (code, out, err) = run(&run_args(db, path_str(&path), &words(&flags)));
    assert_eq!(code, 0, "{err}");
    json_lines(&out)
}

fn pace_messages(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event"] == "message" && e["data"]["target"]["settings"].is_object())
        .collect()
}

/// A file whose name is not UTF-8 is looked at as any other: rusqlite's
/// `path()` gave no path for it, so the run took it for idle and named it
/// "database".
#[cfg(unix)]
#[test]
fn a_file_whose_name_is_not_utf8_still_starts_at_the_live_pace() {
    use std::os::unix::ffi::OsStrExt;
    let db = TempDb::counters(50);
    let odd = db
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.sqlite"));
    std::fs::copy(&db.path, &odd).unwrap();
    let plan = db.file("plan.json", &counter_plan("odd", 10));
    let out = std::process::Command::new(BIN)
        .arg("run")
        .arg("--db")
        .arg(&odd)
        .args([
            "--plan",
            path_str(&plan),
            "--no-serve",
            "--progress",
            "json",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let events = json_lines(&String::from_utf8_lossy(&out.stdout));
    let start = &events[0]["data"];
    assert_eq!(start["settings"]["chunk_time_ms"], LIVE_CHUNK_MS, "{start}");
    assert!(
        start["db"].as_str().unwrap().ends_with(".sqlite"),
        "{start}"
    );
}

#[test]
fn a_file_written_lately_starts_at_the_live_pace_an_old_one_at_the_idle_pace() {
    let db = TempDb::counters(200);
    let fresh = events(&db, "fresh", "");
    let start = &fresh[0]["data"];
    assert_eq!(start["settings"]["chunk_time_ms"], LIVE_CHUNK_MS, "{start}");
    let said = pace_messages(&fresh);
    assert!(
        said.first().is_some_and(|m| m["data"]["message"]
            .as_str()
            .unwrap()
            .contains("written within the last minute")),
        "says why it starts gentle: {said:?}"
    );

    db.age();
    let old = events(&db, "old", "");
    assert_eq!(
        old[0]["data"]["settings"]["chunk_time_ms"], IDLE_CHUNK_MS,
        "{}",
        old[0]
    );
    assert!(pace_messages(&old).is_empty(), "{old:?}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 2"),
        200
    );
}

/// In WAL mode the live pace has longer chunks and a shorter yield. A WAL
/// database nobody has open has no `-wal` file (the last connection
/// removes it); the run's own connection makes an empty one, which must not
/// read as an application's write.
#[test]
fn a_wal_file_has_its_own_live_pace_and_an_idle_one_starts_at_the_idle_pace() {
    let db = TempDb::counters(200);
    db.conn()
        .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    let fresh = events(&db, "fresh", "");
    let settings = &fresh[0]["data"]["settings"];
    assert_eq!(settings["chunk_time_ms"], LIVE_WAL_CHUNK_MS, "{settings}");
    assert_eq!(settings["nice_ratio"], LIVE_WAL_NICE, "{settings}");
    db.age();
    let idle = events(&db, "idle", "");
    assert_eq!(
        idle[0]["data"]["settings"]["chunk_time_ms"], IDLE_CHUNK_MS,
        "{}",
        idle[0]
    );
    assert!(pace_messages(&idle).is_empty(), "{idle:?}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 2"),
        200
    );
}

#[test]
fn the_run_goes_to_the_idle_pace_only_after_the_quiet_time() {
    // 60 chunks 100 ms apart: about 6 s, past the 5 s quiet time.
    let db = TempDb::counters(600);
    let all = events(&db, "quiet", "--batch-size 10 --sleep 100");
    let start_ts = all[0]["data"]["ts_ms"].as_u64().unwrap();
    let said = pace_messages(&all);
    let idle = said
        .iter()
        .find(|m| m["data"]["target"]["settings"]["chunk_time_ms"] == IDLE_CHUNK_MS)
        .unwrap_or_else(|| panic!("went to the idle pace: {said:?}"));
    let after = idle["data"]["ts_ms"].as_u64().unwrap() - start_ts;
    assert!(
        after >= ALONE_AFTER_MS,
        "not before the quiet time: after {after} ms"
    );
    assert!(
        idle["data"]["message"]
            .as_str()
            .unwrap()
            .contains("for 5 s"),
        "{idle}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        600
    );
}

/// A run held by its pause file sees nobody for the quiet time: it says
/// it will go on at the idle pace while it still waits, so `/status` and
/// the dashboard show the pace it will take, not the one from before.
#[test]
fn a_run_that_waits_goes_idle_while_it_waits_and_says_so() {
    let db = TempDb::counters(100);
    let pause = db.dir.path().join("hold");
    std::fs::write(&pause, "").expect("pause file");
    let plan = db.file("plan.json", &counter_plan("held", 10));
    let flags = ["--batch-size", "10", "--pause-file", path_str(&pause)];
    let mut p = serving(&db, path_str(&plan), &flags);
    let start = std::time::Instant::now();
    let until = |what: &str, done: &dyn Fn(&Value) -> bool| loop {
        let now = get(p.addr(), "/status", &[]).json();
        if done(&now) {
            return now;
        }
        assert!(start.elapsed() < PATIENCE, "never {what}: {now}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let held = until("held", &|s| s["throttled"] == "pause-file");
    assert_eq!(held["settings"]["chunk_time_ms"], LIVE_CHUNK_MS, "{held}");
    let idle = until("idle", &|s| s["settings"]["chunk_time_ms"] == IDLE_CHUNK_MS);
    assert_eq!(idle["throttled"], "pause-file", "still held: {idle}");
    assert!(start.elapsed().as_millis() as u64 >= ALONE_AFTER_MS - 1000);
    std::fs::remove_file(&pause).expect("go on");
    assert!(p.wait().success(), "{}", p.stderr());
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        100
    );
}

/// In rollback mode the run truncates its journal rather than deleting it,
/// and puts DELETE back at the end. A file that someone switched to WAL
/// during the run (Django's `init_command`, or by hand, as the README
/// advises beside an application) must stay WAL: going back to DELETE
/// then would silently undo the operator's choice.
#[test]
fn a_file_switched_to_wal_during_the_run_stays_in_wal_mode() {
    let db = TempDb::counters(600);
    let plan = db.file("plan.json", &counter_plan("switched", 10));
    let mut p = serving(
        &db,
        path_str(&plan),
        &["--batch-size", "10", "--sleep", "40"],
    );
    wait_status(p.addr(), |s| s["done"].as_u64().is_some_and(|d| d > 0));
    let app = db.conn();
    app.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    let mode: String = app
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("switch to WAL");
    assert_eq!(mode, "wal", "the switch took while the run was going");
    drop(app);
    let status = p.wait();
    assert!(status.success(), "{}", p.stderr());
    let after: String = db
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(after, "wal", "the run kept the mode it did not set");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        600
    );
}

const TOKEN: &str = "c0ntrol";

/// Two steps that change nothing (a warning each, early in the run), then
/// `counter_plan`'s step in chunks of 5, 100 ms apart: served, held for
/// one stream client, the log compacting at 40 entries.
fn a_run_with_warnings_then_a_long_step(db: &TempDb) -> Proc {
    db.conn()
        .execute_batch(
            "CREATE TABLE u(id INTEGER PRIMARY KEY, v); INSERT INTO u(id) VALUES (1), (2);
             CREATE TABLE app(x);",
        )
        .expect("tables");
    let unchanged = |name: &str| {
        serde_json::json!({
            "name": name,
            "sql": "UPDATE u SET v = 1 WHERE id BETWEEN :lo AND :hi AND v > 0",
            "chunk": {"table": "u", "key": "id", "size": 10}
        })
    };
    let bump: Value = serde_json::from_str(&counter_plan("x", 5)).unwrap();
    let plan = serde_json::json!({
        "name": "paced",
        "steps": [unchanged("none 1"), unchanged("none 2"), bump["steps"][0]]
    });
    let plan = db.file("plan.json", &plan.to_string());
    let mut args = run_args(db, path_str(&plan), &["--progress", "none"]);
    args.extend(words(
        "--listen 127.0.0.1:0 --wait-for-clients 1 --batch-size 5 --sleep 100 --linger 30",
    ));
    args.extend(["--control-token", TOKEN]);
    Proc::start_with(&args, |c| {
        c.env("BATCHSSE_LOG_COMPACT_AT", "40");
    })
}

/// The `message` events of `status`, pace messages or the others, each as
/// its id and payload.
fn messages_of(evs: &[batchsse::sse::ParsedEvent], status: &str, pace: bool) -> Vec<String> {
    evs.iter()
        .filter(|e| e.event == "message")
        .filter(|e| data(e)["status"] == status)
        .filter(|e| data(e)["target"]["settings"].is_object() == pace)
        .map(|e| format!("{} {}", id(e), e.data))
        .collect()
}

/// An application that writes every few seconds changes the pace each
/// time it starts and stops: two messages a cycle, which a day-long run
/// kept (~30,000) for every late client to replay. Old pace messages
/// compact to the latest, as `control` `set`s do; every warning stays.
#[test]
fn a_compacted_log_keeps_only_the_latest_pace_message_and_every_warning() {
    let db = TempDb::counters(3000);
    let mut p = a_run_with_warnings_then_a_long_step(&db);
    let addr = p.addr();
    let mut live = Stream::open(addr, "/events", &[]);
    let mut seen = Vec::new();
    let mut until_pace = |chunk_time_ms: u64| loop {
        let e = live.next_event().expect("the run goes on");
        seen.push(e);
        let d = data(seen.last().unwrap());
        if d["target"]["settings"]["chunk_time_ms"] == chunk_time_ms {
            return;
        }
    };
    // Written lately: live; after the quiet time, idle; an application's
    // write, live again; and so on.
    until_pace(LIVE_CHUNK_MS);
    for _ in 0..2 {
        until_pace(IDLE_CHUNK_MS);
        db.conn()
            .execute_batch("INSERT INTO app VALUES (1)")
            .expect("an application's write");
        until_pace(LIVE_CHUNK_MS);
    }
    until_pace(IDLE_CHUNK_MS);
    // Now to the end, fast, so the pace messages are all old.
    let base = format!("http://{addr}/");
    let set = [
        "ctl",
        &base,
        "set",
        "--sleep",
        "0",
        "--control-token",
        TOKEN,
    ];
    let (code, _, err) = run(&set);
    assert_eq!(code, 0, "{err}");
    seen.extend(live.rest());
    let late = Stream::open(addr, "/events", &[]).rest();
    let paces = messages_of(&seen, "info", true);
    assert_eq!(paces.len(), 6, "{paces:#?}");
    assert_eq!(messages_of(&late, "info", true), paces[5..], "the latest");
    let warnings = messages_of(&seen, "warn", false);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert_eq!(messages_of(&late, "warn", false), warnings, "every warning");
    let others = messages_of(&seen, "info", false);
    assert_eq!(messages_of(&late, "info", false), others);
    let status = get(addr, "/status", &[]).json();
    let settings = &status["settings"];
    assert_eq!(settings["chunk_time_ms"], IDLE_CHUNK_MS, "{status}");
    assert_eq!(settings["sleep_ms"], 0, "{status}");
    p.signal("TERM");
    assert!(p.wait().success(), "{}", p.stderr());
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE counter = 1"),
        3000
    );
}
