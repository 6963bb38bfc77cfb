//! Nothing the operator or the database does can hang a run: a throttle
//! query that never answers is cut off and counts as "wait", and Ctrl-C,
//! SIGTERM and `cancel` stop it; a long sleep between chunks ends at any
//! live command; a pause that could not let other writers in (`--atomic`,
//! `--dry-run`) is refused; the command line takes only what `/control`
//! takes.

use rusqlite::Connection;

use crate::util::*;

const TOKEN: &str = "c0ntrol";

/// A query that counts forever.
const ENDLESS: &str = "SELECT (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c) > 0";

/// `counters(rows)` run in chunks of `size`, served, with the control
/// token and `extra`.
fn steerable(rows: u64, size: u64, extra: &[&str]) -> (TempDb, Proc) {
    let db = TempDb::counters(rows);
    let plan = db.file("plan.json", &counter_plan("hang", size));
    let size = size.to_string();
    let mut flags = vec!["--batch-size", &size, "--control-token", TOKEN];
    flags.extend_from_slice(extra);
    let p = serving(&db, path_str(&plan), &flags);
    (db, p)
}

/// `batchsse ctl` against the run: (exit code, stdout, stderr).
fn ctl(p: &Proc, args: &str) -> (i32, String, String) {
    let base = format!("http://{}/", p.addr());
    let mut a = vec!["ctl", base.as_str()];
    a.extend(words(args));
    a.extend(["--control-token", TOKEN]);
    run(&a)
}

/// The run's last event, read from a fresh stream (which replays it all).
fn finished(p: &Proc) -> serde_json::Value {
    let all = Stream::open(p.addr(), "/events", &[]).rest();
    let last = all.last().expect("events");
    assert_eq!(last.event, "finished");
    data(last)
}

#[test]
fn a_throttle_query_that_never_answers_is_a_throttle_and_cancel_ends_the_run() {
    let (db, mut p) = steerable(200, 50, &["--throttle-query", ENDLESS, "--linger", "30"]);
    // The check before the first step never answers: that is a wait.
    let status = wait_status(p.addr(), |v| v["throttled"] == "throttle-query");
    assert_eq!(status["paused"], false, "{status}");
    let (code, _, err) = ctl(&p, "cancel");
    assert_eq!(code, 0, "{err}");
    let end = finished(&p);
    assert_eq!(end["status"], "cancelled", "{end}");
    p.signal("TERM"); // ends the linger
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (0, 200), "nothing ran");
}

#[test]
fn a_throttle_query_that_never_answers_is_said_once_and_sigterm_ends_the_run() {
    let (db, mut p) = steerable(200, 50, &["--throttle-query", ENDLESS]);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    wait_status(p.addr(), |v| v["throttled"] == "throttle-query");
    p.signal("TERM");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    let all = s.rest();
    let on = all
        .iter()
        .find(|e| e.event == "throttle")
        .expect("a throttle event");
    assert_eq!(data(on)["reason"], "throttle-query");
    assert!(
        data(on)["detail"].as_str().unwrap().contains("1 s"),
        "the detail names the bound: {}",
        data(on)
    );
    let warnings: Vec<String> = all
        .iter()
        .filter(|e| e.event == "message" && data(e)["status"] == "warn")
        .map(|e| data(e)["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {warnings:?}");
    assert!(
        warnings[0].contains("--throttle-query") && warnings[0].contains("1 s"),
        "{warnings:?}"
    );
    assert_eq!(data(all.last().unwrap())["status"], "cancelled");
    assert_eq!(db.counter_spread(), (0, 200), "nothing ran");
}

#[test]
fn a_pause_under_atomic_or_dry_run_is_refused_with_the_reason() {
    for mode in ["--atomic", "--dry-run"] {
        let (db, mut p) = steerable(500, 50, &["--wait-for-clients", "1", mode]);
        let before = db.bytes();
        let (code, _, err) = ctl(&p, "pause");
        assert_eq!(code, 2, "{mode}: {err}");
        assert!(
            err.contains("409") && err.contains(mode) && err.contains("lock"),
            "{mode}: {err}"
        );
        // Other commands still steer it.
        let (code, _, err) = ctl(&p, "set --sleep 0");
        assert_eq!(code, 0, "{mode}: {err}");
        let status = get(p.addr(), "/status", &[]).json();
        assert_eq!(status["paused"], false, "{mode}: {status}");
        assert_eq!(db.bytes(), before, "{mode}: nothing ran yet");
        let all = Stream::open(p.addr(), "/events", &[]).rest();
        assert!(
            all.iter().all(|e| e.event != "throttle"),
            "{mode}: never paused"
        );
        let controls: Vec<_> = all.iter().filter(|e| e.event == "control").collect();
        assert_eq!(controls.len(), 1, "{mode}: only the set is logged");
        assert_eq!(data(controls[0])["action"], "set");
        assert_eq!(data(all.last().unwrap())["status"], "ok");
        assert_eq!(p.wait().code(), Some(0), "{mode}: {}", p.stderr());
    }
}

#[test]
fn a_pause_file_or_throttle_query_beside_atomic_or_dry_run_is_refused_before_anything_runs() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("q", 5));
    let pause = db.dir.path().join("pause");
    let before = db.bytes();
    for mode in ["--atomic", "--dry-run"] {
        for brake in [
            ["--pause-file", path_str(&pause)],
            ["--throttle-query", "SELECT 0"],
        ] {
            let mut extra = vec!["--no-serve", mode];
            extra.extend(brake);
            let (code, _, err) = run(&run_args(&db, path_str(&plan), &extra));
            assert_eq!(code, 2, "{extra:?}: {err}");
            assert!(
                err.contains(brake[0]) && err.contains(mode) && err.contains("lock"),
                "{extra:?}: {err}"
            );
            assert_eq!(db.bytes(), before, "{extra:?}: untouched");
        }
    }
}

#[test]
fn a_sleep_or_nice_ratio_beside_atomic_or_dry_run_is_said_to_do_nothing() {
    // Neither waits in a run that is one transaction: a `--dry-run
    // --sleep 500` of 20 chunks ended in milliseconds without a word.
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("nap", 5));
    for (mode, pace, said) in [
        ("--dry-run", "--sleep 500", "--sleep does nothing"),
        (
            "--atomic",
            "--sleep 500 --nice-ratio 2",
            "--sleep and --nice-ratio do nothing",
        ),
    ] {
        let mut extra = words("--no-serve --progress plain --batch-size 5");
        extra.extend([mode]);
        extra.extend(words(pace));
        let t0 = std::time::Instant::now();
        let (code, _, err) = run(&run_args(&db, path_str(&plan), &extra));
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{extra:?} waited"
        );
        assert!(
            err.contains(&format!("warning: {said} in this run: it is {mode}")),
            "{extra:?}: {err}"
        );
    }
    // Without them, no such warning.
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--dry-run"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("nothing in this run"), "{err}");
}

#[test]
fn an_atomic_run_never_waits_for_its_own_wal_to_shrink() {
    // 40,000 rows of 200 bytes: the run's one transaction spills far more
    // than 1 MiB of its own frames into the WAL, which no checkpoint can
    // take back before it commits.
    let db = TempDb::padded_wal(40000);
    let plan = db.file("plan.json", &counter_plan("own-wal", 2000));
    for mode in ["--dry-run", "--atomic"] {
        let mut p = Proc::start(&run_args(
            &db,
            path_str(&plan),
            &[
                "--no-serve",
                "--progress",
                "json",
                mode,
                "--max-wal-mb",
                "1",
                "--batch-size",
                "2000",
            ],
        ));
        assert_eq!(p.wait().code(), Some(0), "{mode}: {}", p.stderr());
        let out = p.stdout();
        assert!(!out.contains("\"throttle\""), "{mode}: never waited: {out}");
    }
    assert_eq!(db.counter_spread(), (40000, 0));
}

#[test]
fn a_long_sleep_ends_at_a_new_sleep_setting() {
    let (db, mut p) = steerable(150, 50, &["--sleep", "600000"]);
    wait_status(p.addr(), |v| v["done"] == 50);
    let (code, _, err) = ctl(&p, "set --sleep 0");
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (150, 0));
}

#[test]
fn a_long_sleep_ends_at_a_pause_and_the_run_waits_paused_until_resumed() {
    let (db, mut p) = steerable(150, 50, &["--sleep", "600000", "--linger", "30"]);
    wait_status(p.addr(), |v| v["done"] == 50);
    let (code, _, err) = ctl(&p, "pause");
    assert_eq!(code, 0, "{err}");
    // The sleep is cut short: the run now waits paused, with no lock.
    wait_status(p.addr(), |v| v["throttled"] == "paused");
    let c = Connection::open(&db.path).unwrap();
    c.busy_timeout(std::time::Duration::ZERO).unwrap();
    c.execute_batch("BEGIN IMMEDIATE; COMMIT")
        .expect("no lock while paused");
    let (code, _, err) = ctl(&p, "set --sleep 0");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        get(p.addr(), "/status", &[]).json()["done"],
        50,
        "still paused"
    );
    let (code, _, err) = ctl(&p, "resume");
    assert_eq!(code, 0, "{err}");
    assert_eq!(finished(&p)["status"], "ok");
    p.signal("TERM");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (150, 0));
}

#[test]
fn the_command_line_takes_the_same_pace_ranges_as_control() {
    let db = TempDb::counters(10);
    // One chunk: a sleep between chunks never starts.
    let plan = db.file("plan.json", &counter_plan("ranges", 100));
    let before = db.bytes();
    for (flag, value, says) in [
        ("--sleep", "99999999999", "0 to 600000"),
        ("--sleep", "600001", "0 to 600000"),
        ("--chunk-time", "0", "1 to 600000"),
        ("--chunk-time", "600001", "1 to 600000"),
        ("--nice-ratio", "100.5", "0 to 100"),
        ("--nice-ratio", "-1", "0 to 100"),
        ("--batch-size", "0", "1 to 10000000"),
        ("--batch-size", "10000001", "1 to 10000000"),
    ] {
        let (code, _, err) = run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", &format!("{flag}={value}")],
        ));
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
        assert_eq!(db.bytes(), before, "{flag} {value}: untouched");
    }
    let (code, _, err) = run(&words("demo --rows 1 --no-serve --sleep 600001"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--sleep") && err.contains("0 to 600000"),
        "{err}"
    );
    // The limits themselves are taken.
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &words(
            "--no-serve --sleep 600000 --chunk-time 600000 --nice-ratio 100 --batch-size 10000000",
        ),
    ));
    assert_eq!(code, 0, "{err}");
}

/// Another process locks the file mid-run and keeps it: the chunk waits
/// --busy-timeout and the step fails. The run's end (the journal mode put
/// back, what the checkpoint holds, the undo record) then waited the whole
/// timeout again for each of its reads and writes: five times
/// --busy-timeout before the process exited.
#[test]
fn a_lock_held_for_good_mid_run_is_waited_out_once() {
    let (db, mut p) = steerable(100_000, 10, &words("--sleep 20 --busy-timeout 3000"));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    let holder = db.conn();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = std::time::Instant::now();
    assert_eq!(p.wait_for(PATIENCE).code(), Some(1), "{}", p.stderr());
    let took = locked.elapsed();
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(
        took < std::time::Duration::from_millis(3000 + 2500),
        "{took:?}: {}",
        p.stderr()
    );
    assert!(p.stderr().contains("still after --busy-timeout 3000 ms"));
}
