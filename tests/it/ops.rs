//! The operator's tools: `/metrics` (checked with promtool), GitHub Actions
//! output, `--progress-interval` and the plain step's heartbeat, and request
//! heads with bare-LF line ends.

use std::time::{Duration, Instant};

use crate::util::*;

/// A finished run of 100 counters, still answering for 30 s.
fn lingering(extra: &[&str]) -> (TempDb, Proc) {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("ops", 10));
    let mut flags = words("--batch-size 10 --linger 30");
    flags.extend_from_slice(extra);
    let p = serving(&db, path_str(&plan), &flags);
    wait_status(p.addr(), |s| s["state"] == "finished");
    (db, p)
}

#[test]
fn request_heads_with_bare_lf_line_ends_are_answered_on_every_route() {
    let (_db, p) = lingering(&[]);
    let a = p.addr();
    for (path, status, body_has) in [
        ("/events", 200, "event: finished"),
        ("/status", 200, "\"state\":\"finished\""),
        ("/", 200, "EventSource"),
        ("/healthz", 200, "ok"),
        ("/nope", 404, "not found"),
    ] {
        for head in [
            format!("GET {path} HTTP/1.0\n\n"),
            format!("GET {path} HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n"),
        ] {
            let t0 = Instant::now();
            let r = raw(a, head.as_bytes());
            let took = t0.elapsed();
            assert_eq!(r.status, status, "{head:?}");
            assert!(r.text().contains(body_has), "{head:?}: {}", r.text());
            assert!(took < Duration::from_secs(3), "{head:?} took {took:?}");
        }
    }
}

/// The lines of a plain run's stderr that report a chunk of step 1.
fn progress_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.starts_with("batchsse: [1/1]") || l.starts_with("[1/1]"))
        .filter(|l| l.contains(" rows ("))
        .count()
}

#[test]
fn progress_interval_sets_how_often_a_plain_progress_line_is_printed() {
    let db = TempDb::counters(300);
    let plan = db.file("plan.json", &counter_plan("interval", 10));
    let plain = |interval: &str| {
        let mut a = run_args(&db, path_str(&plan), &["--no-serve", "--no-checkpoint"]);
        a.extend(words(
            "--batch-size 10 --sleep 10 --progress plain --progress-interval",
        ));
        a.push(interval);
        let (code, _, err) = run(&a);
        assert_eq!(code, 0, "{err}");
        err
    };
    // 0: every chunk's line; a minute: the first and the last only.
    let every = plain("0");
    assert_eq!(progress_lines(&every), 30, "{every}");
    let sparse = plain("60");
    assert_eq!(progress_lines(&sparse), 2, "{sparse}");
    let mut a = run_args(&db, path_str(&plan), &["--no-serve"]);
    a.push("--progress-interval=-1");
    let (code, _, err) = run(&a);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--progress-interval"), "{err}");
}

/// A subquery that counts to `n`: slow SQL with no sleep in it.
fn count_to(n: u64) -> String {
    format!(
        "(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) SELECT count(*) FROM c)"
    )
}

/// How far this machine's SQLite counts in `secs`, measured here.
fn counts_in(secs: f64) -> u64 {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let n = 300_000;
    let t0 = Instant::now();
    let _: i64 = conn
        .query_row(&format!("SELECT {}", count_to(n)), [], |r| r.get(0))
        .unwrap();
    (n as f64 * secs / t0.elapsed().as_secs_f64()) as u64
}

#[test]
fn a_plain_step_that_runs_past_five_seconds_sends_a_heartbeat_with_null_counts() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, x INT); INSERT INTO t VALUES (1, 0);",
    );
    // About 6.5 s of work in one statement (the pre-run check, on empty
    // tables, does none of it).
    let sql = db.file(
        "fix.sql",
        &format!("UPDATE t SET x = {};\n", count_to(counts_in(6.5))),
    );
    let mut p = Proc::start(&[
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(&sql),
        "--no-serve",
        "--no-checkpoint",
        "--progress",
        "json",
    ]);
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    let lines = json_lines(&p.stdout());
    let beats: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"] == "progress")
        .map(|l| &l["data"])
        .collect();
    assert!(!beats.is_empty(), "no heartbeat: {lines:?}");
    for b in &beats {
        for field in ["done", "total", "percent", "rate", "eta_ms"] {
            assert!(b[field].is_null(), "{field} in {b}");
        }
        assert!(b["elapsed_ms"].as_u64().unwrap() >= 5000, "{b}");
        assert_eq!(b["step"], 0);
    }
    // Every heartbeat comes while the step runs, none after it ended.
    let names: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    let done_at = names.iter().rposition(|n| *n == "step").unwrap();
    let last_beat = names.iter().rposition(|n| *n == "progress").unwrap();
    assert!(last_beat < done_at, "{names:?}");
    assert!(db.query_i64("SELECT x FROM t") > 1000);
}
