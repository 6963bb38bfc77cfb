//! The operator's tools: `/metrics` (checked with promtool), GitHub Actions
//! output, `--progress-interval` and the plain step's heartbeat, and request
//! heads with bare-LF line ends.

use std::io::Write;
use std::process::{Command, Stdio};
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
        ("/metrics", 200, "batchsse_finished 1"),
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

#[test]
fn a_plain_step_that_runs_past_five_seconds_sends_a_heartbeat_with_null_counts() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, x INT); INSERT INTO t VALUES (1, 0);",
    );
    let sql = db.file("fix.sql", "UPDATE t SET x = x + 1;\n");
    // A reader holds its read lock for 6 s, so the step's commit waits that
    // long (rollback journal: a writer commits only once readers are gone),
    // as it would behind a busy application. Slow SQL would do as well, but
    // how slow depends on the machine's load.
    let reader = db.conn();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    let mut p = Proc::start(&[
        "run",
        "--db",
        path_str(&db.path),
        "--sql",
        path_str(&sql),
        "--no-serve",
        "--no-checkpoint",
        "--busy-timeout",
        "30000",
        "--progress",
        "json",
    ]);
    std::thread::sleep(Duration::from_millis(6000));
    reader.execute_batch("COMMIT").unwrap();
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
    assert_eq!(db.query_i64("SELECT x FROM t"), 1);
}

/// The value of the sample `name` (with its labels, if any) in an
/// exposition, or `None` if it is not there.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name || series.split_once('{').is_some_and(|(n, _)| n == name))
            .then(|| value.parse().ok())?
    })
}

/// Runs `promtool check metrics` on `text`; panics on anything but a pass
/// or lint advice that only says "no help text" (promtool 2.42 on
/// prometheus-client's counters, whose HELP names the family without
/// `_total`). `false` when promtool is missing outside CI.
fn promtool_accepts(text: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        skip_unless_ci(
            "promtool is not installed (Debian package prometheus; .ci/run installs it)",
        );
        return false;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let only_help_advice = said
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| l.ends_with(" no help text"));
    match out.status.code() {
        Some(0) => {}
        Some(3) if only_help_advice => {}
        other => {
            panic!("promtool check metrics: exit {other:?}:\n{said}\n--- the exposition:\n{text}")
        }
    }
    true
}

/// Once a recorded run has finished, `/metrics` gives its undo record's
/// size; once an undo has, the rows it kept (and those kept before it);
/// neither shows before, nor for the other kind of run.
#[test]
fn metrics_give_the_undo_record_and_the_rows_an_undo_kept_once_finished() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("kept", 10));
    let run = serving(
        &db,
        path_str(&plan),
        &words("--batch-size 10 --linger 30 --undo"),
    );
    let status = wait_status(run.addr(), |s| s["state"] == "finished");
    let m = get(run.addr(), "/metrics", &[]).text();
    if !promtool_accepts(&m) {
        return;
    }
    let bytes = status["undo_bytes"].as_f64().expect("a record");
    assert!(bytes > 0.0, "{status}");
    assert_eq!(sample(&m, "batchsse_undo_record_bytes"), Some(bytes), "{m}");
    assert_eq!(sample(&m, "batchsse_undo_conflicts"), None, "{m}");
    drop(run);
    db.conn()
        .execute_batch("UPDATE t SET counter = 99 WHERE id = 3")
        .unwrap();
    let file = path_str(&db.path);
    let serve = words("--listen 127.0.0.1:0 --linger 30 --progress none");
    let undo = Proc::start(&[&["undo", "--db", file, "--plan", "kept"], &serve[..]].concat());
    wait_status(undo.addr(), |s| s["state"] == "finished");
    let m = get(undo.addr(), "/metrics", &[]).text();
    assert!(promtool_accepts(&m));
    assert_eq!(sample(&m, "batchsse_undo_conflicts"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "batchsse_undo_conflicts_earlier"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "batchsse_undo_conflicts_as_left"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(sample(&m, "batchsse_undo_carried_older"), Some(0.0), "{m}");
    assert_eq!(sample(&m, "batchsse_undo_record_bytes"), None, "{m}");
}

/// An undo that leaves rows carrying an older run's change (another
/// plan's run, taken back first, kept them: this run had changed them
/// since) counts them in `/status` and `/metrics`, as `finished` does.
#[test]
fn status_and_metrics_count_the_rows_an_undo_left_carrying_an_older_run() {
    let db = TempDb::counters(40);
    let (older, newer) = older_and_newer(&db);
    let ids: Vec<String> = [&older, &newer]
        .iter()
        .map(|plan| {
            let (code, _, err) = run(&run_args(&db, path_str(plan), &["--no-serve", "--undo"]));
            assert_eq!(code, 0, "{err}");
            let id = err.split("--run ").nth(1).unwrap_or_default();
            id.split_whitespace().next().unwrap_or_default().to_owned()
        })
        .collect();
    let file = path_str(&db.path);
    let (code, _, err) = run(&["undo", "--db", file, "--run", &ids[0], "--no-serve"]);
    assert_eq!(code, 0, "{err}");
    let serve = words("--listen 127.0.0.1:0 --linger 30 --progress none");
    let undo = Proc::start(&[&["undo", "--db", file, "--run", &ids[1]], &serve[..]].concat());
    let status = wait_status(undo.addr(), |s| s["state"] == "finished");
    assert_eq!(status["carried_older"], 3, "{status}");
    let m = get(undo.addr(), "/metrics", &[]).text();
    // Checked by promtool where it is installed (skipped, saying so, where not).
    promtool_accepts(&m);
    assert_eq!(sample(&m, "batchsse_undo_carried_older"), Some(3.0), "{m}");
}

#[test]
fn metrics_follow_a_real_run_and_agree_with_status() {
    let db = TempDb::counters(1000);
    let plan = db.file("plan.json", &counter_plan("scraped", 10));
    let p = serving(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --sleep 20 --linger 30"),
    );
    let a = p.addr();
    let mut stream = Stream::open(a, "/events", &[]);
    // During the run.
    wait_status(a, |s| s["done"].as_u64().is_some_and(|d| d >= 200));
    let during = get(a, "/metrics", &[]);
    assert_eq!(during.status, 200);
    assert!(
        during
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        during.header("content-type")
    );
    let m = during.text();
    if !promtool_accepts(&m) {
        return;
    }
    let start = data(&stream.until("start"));
    let info = format!(
        "batchsse_info{{run_id=\"{}\",plan=\"scraped\",db=\"test.sqlite\",version=\"{}\"}}",
        start["run_id"].as_str().unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(m.lines().any(|l| l == format!("{info} 1")), "{m}");
    assert_eq!(sample(&m, "batchsse_finished"), Some(0.0), "{m}");
    assert_eq!(sample(&m, "batchsse_stream_clients"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "batchsse_steps_total"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "batchsse_step_rows_total"), Some(1000.0), "{m}");
    let done = sample(&m, "batchsse_step_rows_done").unwrap();
    assert!((200.0..1000.0).contains(&done), "{m}");
    let chunks = sample(&m, "batchsse_chunks_total").unwrap();
    assert!(chunks >= 20.0, "{m}");
    assert_eq!(
        sample(&m, "batchsse_chunk_duration_seconds_count"),
        Some(chunks)
    );
    // After `finished`, during --linger, nothing moves: both agree.
    let events = stream.rest();
    drop(stream);
    let status = wait_status(a, |s| s["state"] == "finished" && s["clients"] == 0);
    let m = get(a, "/metrics", &[]).text();
    assert!(promtool_accepts(&m));
    assert_eq!(sample(&m, "batchsse_finished"), Some(1.0), "{m}");
    let pace = &status["settings"];
    for (metric, value) in [
        ("batchsse_pace_chunk_time_seconds", &pace["chunk_time_ms"]),
        ("batchsse_pace_nice_ratio", &pace["nice_ratio"]),
        ("batchsse_pace_sleep_seconds", &pace["sleep_ms"]),
    ] {
        let scale = if metric.ends_with("_seconds") {
            1000.0
        } else {
            1.0
        };
        let want = value.as_f64().unwrap() / scale;
        assert_eq!(sample(&m, metric), Some(want), "{metric}: {m}\n{status}");
    }
    for (metric, field) in [
        ("batchsse_steps_done", "steps_done"),
        ("batchsse_rows_changed_total", "rows_changed"),
        ("batchsse_stream_clients", "clients"),
        ("batchsse_events_total", "last_event_id"),
    ] {
        assert_eq!(
            sample(&m, metric),
            status[field].as_f64(),
            "{metric}: {m}\n{status}"
        );
    }
    assert_eq!(sample(&m, "batchsse_rows_changed_total"), Some(1000.0));
    assert_eq!(
        sample(&m, "batchsse_events_total"),
        Some(id(events.last().unwrap()) as f64)
    );
    // 100 chunks of 10 rows; each but the first follows a 20 ms sleep.
    assert_eq!(sample(&m, "batchsse_chunks_total"), Some(100.0), "{m}");
    assert_eq!(
        sample(&m, "batchsse_chunk_duration_seconds_count"),
        Some(100.0)
    );
    let quick = sample(&m, "batchsse_chunk_duration_seconds_bucket{le=\"0.01\"}").unwrap();
    assert!(quick <= 1.0, "{m}");
    assert!(
        sample(&m, "batchsse_chunk_duration_seconds_sum").unwrap() >= 99.0 * 0.02,
        "{m}"
    );
    assert_eq!(
        sample(&m, "batchsse_chunk_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(100.0)
    );
}

/// `batchsse_throttled` is `/status`'s `throttled`: 1 while the run waits
/// between chunks for any reason, a live pause included, which
/// `batchsse_paused` alone tells apart.
#[test]
fn metrics_say_a_brake_and_a_live_pause_as_status_does() {
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("braked", 50));
    let hold = db.file("hold", "");
    let p = serving(
        &db,
        path_str(&plan),
        &[
            &words("--batch-size 50 --sleep 20 --linger 30 --control-token c0")[..],
            &["--pause-file", path_str(&hold)],
        ]
        .concat(),
    );
    let a = p.addr();
    let gauges = || {
        let m = get(a, "/metrics", &[]).text();
        let g = |name| sample(&m, name).unwrap_or_else(|| panic!("no {name}: {m}"));
        (g("batchsse_paused"), g("batchsse_throttled"))
    };
    wait_status(a, |s| s["throttled"] == "pause-file");
    assert_eq!(gauges(), (0.0, 1.0), "held by the pause file");
    let ctl = |cmd| run(&["ctl", &a.to_string(), cmd, "--control-token", "c0"]);
    assert_eq!(ctl("pause").0, 0);
    std::fs::remove_file(&hold).unwrap();
    wait_status(a, |s| s["throttled"] == "paused" && s["paused"] == true);
    assert_eq!(gauges(), (1.0, 1.0), "paused by a live command");
    assert_eq!(ctl("resume").0, 0);
    wait_status(a, |s| s["state"] == "finished");
    assert_eq!(gauges(), (0.0, 0.0), "finished");
}

#[test]
fn metrics_ask_for_the_same_token_as_status() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("guarded", 10));
    let p = serving(&db, path_str(&plan), &words("--linger 30 --token s3cret"));
    let a = p.addr();
    for path in ["/metrics", "/status"] {
        assert_eq!(get(a, path, &[]).status, 401, "{path}");
        assert_eq!(
            get(a, &format!("{path}?token=s3cret"), &[]).status,
            200,
            "{path}"
        );
        let bearer = get(a, path, &[("Authorization", "Bearer s3cret")]);
        assert_eq!(bearer.status, 200, "{path}");
        let wrong = get(a, path, &[("Authorization", "Bearer s3creT")]);
        assert_eq!(wrong.status, 401, "{path}");
    }
    assert_eq!(get(a, "/healthz", &[]).status, 200);
}

/// `batchsse run --sql SCRIPT --no-serve` as in a GitHub Actions job (auto
/// output, stderr not a terminal), its summary going to `summary`.
fn in_actions(db: &TempDb, script: &str, summary: &std::path::Path, actions: bool) -> Proc {
    let sql = db.file("step.sql", script);
    let mut p = spawn(
        &[
            "run",
            "--db",
            path_str(&db.path),
            "--sql",
            path_str(&sql),
            "--no-serve",
            "--no-checkpoint",
        ],
        |c| {
            c.env("GITHUB_STEP_SUMMARY", summary);
            if actions {
                c.env("GITHUB_ACTIONS", "true");
            } else {
                c.env_remove("GITHUB_ACTIONS");
            }
        },
    );
    p.wait();
    p
}

#[test]
fn in_github_actions_a_failed_step_is_an_error_annotation_and_the_summary_has_every_step() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL); INSERT INTO t VALUES (1, 'a');",
    );
    let summary = db.dir.path().join("summary.md");
    std::fs::write(&summary, "earlier job output\n").unwrap();
    // The NOT NULL failure shows only when the step runs on the real rows.
    let script =
        "UPDATE t SET name = 'b';\nUPDATE t SET name = NULL;\nUPDATE t SET name = 'never';\n";
    let mut p = in_actions(&db, script, &summary, true);
    let err = p.stderr();
    assert_eq!(p.wait().code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let at = |l: &str| {
        lines
            .iter()
            .position(|x| *x == l)
            .unwrap_or_else(|| panic!("no {l:?} in:\n{err}"))
    };
    let (g1, g2) = (
        at("::group::[1/3] UPDATE t SET name = 'b'"),
        at("::group::[2/3] UPDATE t SET name = NULL"),
    );
    assert!(g1 < g2, "{err}");
    assert_eq!(
        lines.iter().filter(|l| **l == "::endgroup::").count(),
        2,
        "{err}"
    );
    let error = lines
        .iter()
        .find(|l| l.starts_with("::error "))
        .unwrap_or_else(|| panic!("no ::error in:\n{err}"));
    assert!(
        error.starts_with("::error title=step 2 (UPDATE t SET name = NULL) failed::"),
        "{error}"
    );
    assert!(error.contains("NOT NULL"), "{error}");
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.starts_with("earlier job output\n"),
        "appended, not replaced:\n{md}"
    );
    for row in [
        "| # | step | state | rows changed | time |",
        "| 1 | UPDATE t SET name = 'b' | done | 1 |",
        "| 2 | UPDATE t SET name = NULL | **failed** | 0 |",
        "| 3 | UPDATE t SET name = 'never' | not run |  |  |",
        "**FAILED: 1/3 steps, 1 row changed in ",
        "NOT NULL constraint failed: t.name",
    ] {
        assert!(md.contains(row), "no {row:?} in:\n{md}");
    }
    assert_eq!(db.query_i64("SELECT count(*) FROM t WHERE name = 'b'"), 1);
}

#[test]
fn outside_github_actions_auto_prints_plain_lines_and_no_summary() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT); INSERT INTO t VALUES (1, 0);",
    );
    let summary = db.dir.path().join("summary.md");
    let p = in_actions(&db, "UPDATE t SET n = 1;\n", &summary, false);
    assert!(!p.stderr().contains("::"), "{}", p.stderr());
    assert!(
        p.stderr().contains("[1/1] UPDATE t SET n = 1: done"),
        "{}",
        p.stderr()
    );
    assert!(!summary.exists());
    let p = in_actions(&db, "UPDATE t SET n = 2;\n", &summary, true);
    assert!(
        p.stderr().contains("::group::[1/1] UPDATE t SET n = 2\n"),
        "{}",
        p.stderr()
    );
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("| 1 | UPDATE t SET n = 2 | done | 1 |"), "{md}");
    assert!(
        md.contains("**finished ok: 1/1 steps, 1 row changed in "),
        "{md}"
    );
}

/// GitHub drops a step summary over 1 MiB whole ("upload aborted"), so a
/// plan of many long step names must still leave one it shows, with the
/// step that failed, last, in it.
#[test]
fn a_summary_of_long_step_names_stays_under_githubs_limit_and_keeps_the_failure() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT NOT NULL); INSERT INTO t VALUES (1, 0);",
    );
    db.age();
    let long = "x".repeat(4000);
    let mut steps: Vec<_> = (0..300)
        .map(|i| serde_json::json!({"name": format!("step {i} {long}"), "sql": "UPDATE t SET n = n + 1"}))
        .collect();
    steps.push(serde_json::json!({"name": "the last one", "sql": "UPDATE t SET n = NULL"}));
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "long", "steps": steps}).to_string(),
    );
    let summary = db.dir.path().join("summary.md");
    let (code, _, err) = run_with_env(
        &[
            "run",
            "--db",
            path_str(&db.path),
            "--plan",
            path_str(&plan),
            "--no-serve",
            "--no-checkpoint",
        ],
        None,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", path_str(&summary)),
        ],
    );
    assert_eq!(code, 1, "{}", &err[err.len().saturating_sub(2000)..]);
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.len() < 512 * 1024, "{} bytes", md.len());
    assert!(
        md.contains("| 301 | the last one | **failed** |"),
        "{}",
        &md[md.len().saturating_sub(2000)..]
    );
    assert!(md.contains("| 1 | step 0 xxx"), "{}", &md[..2000]);
    assert!(
        md.contains("**FAILED: 300/301 steps"),
        "{}",
        &md[md.len().saturating_sub(2000)..]
    );
}

/// `batchsse ARGS` as in a GitHub Actions job (or, with `actions` false,
/// outside one), its summary going to `summary`: (exit code, stderr).
fn fatal_in_actions(args: &[&str], summary: &std::path::Path, actions: bool) -> (i32, String) {
    let mut p = spawn(args, |c| {
        c.env("GITHUB_STEP_SUMMARY", summary);
        if actions {
            c.env("GITHUB_ACTIONS", "true");
        } else {
            c.env_remove("GITHUB_ACTIONS");
        }
    });
    let code = p.wait().code().unwrap_or(-1);
    (code, p.stderr())
}

/// A plan refused before its run (exit 2) is what a CI user most needs to
/// see: in an Actions job it is one `::error::` annotation (whatever
/// `--progress` says: the README's recipe runs `--progress json`), and the
/// step summary says so; outside one the plain text is as it was.
#[test]
fn in_github_actions_a_plan_refused_before_its_run_is_an_error_annotation_and_in_the_summary() {
    let db = TempDb::with_sql("CREATE TABLE t(id INTEGER PRIMARY KEY, n INT);");
    let plan = db.file(
        "plan.json",
        r#"{"name": "m", "steps": [{"name": "fix, 100%", "sql": "UPDATE nosuch SET n = 1"}]}"#,
    );
    let summary = db.dir.path().join("summary.md");
    let before = db.bytes();
    for progress in ["auto", "json"] {
        std::fs::write(&summary, "earlier job output\n").unwrap();
        let args = run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--progress", progress],
        );
        let (code, err) = fatal_in_actions(&args, &summary, true);
        assert_eq!(code, 2, "{err}");
        // One line, the whole of stderr: the message, escaped.
        assert_eq!(err.lines().count(), 1, "{progress}: {err}");
        assert!(
            err.starts_with("::error::batchsse: step 1 (\"fix, 100%25\")"),
            "{progress}: {err}"
        );
        assert!(
            err.contains("no such table: nosuch%0A  in: UPDATE nosuch SET n = 1"),
            "{progress}: {err}"
        );
        let md = std::fs::read_to_string(&summary).unwrap();
        assert!(
            md.starts_with("earlier job output\n### batchsse run: failed (exit 2)\n\n"),
            "{md}"
        );
        assert!(md.contains("no such table: nosuch"), "{md}");
    }
    assert_eq!(db.bytes(), before);
    std::fs::remove_file(&summary).unwrap();
    let args = run_args(&db, path_str(&plan), &["--no-serve"]);
    let (code, err) = fatal_in_actions(&args, &summary, false);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("batchsse: step 1 (\"fix, 100%\") is not valid SQL for this database: no such table: nosuch\n  in: UPDATE"),
        "{err}"
    );
    assert!(!err.contains("::"), "{err}");
    assert!(!summary.exists());
    // A command line clap cannot read is a usage error too.
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--bogus"]);
    let (code, err) = fatal_in_actions(&args, &summary, true);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("::error::batchsse: unexpected argument '--bogus' found%0A"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.starts_with("### batchsse: failed (exit 2)\n"), "{md}");
    // A missing subcommand: clap's help as it is, then the annotation.
    let (code, err) = fatal_in_actions(&["checkpoint"], &summary, true);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("\nUsage: batchsse checkpoint <COMMAND>\n"),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("::"))
            .collect::<Vec<_>>(),
        ["::error::batchsse: a subcommand is missing: see the help above"],
        "{err}"
    );
}

/// The outputs a job step gets from `GITHUB_OUTPUT`, read as the runner
/// reads the file: `name=value` lines and `name<<END` … `END` blocks.
fn step_outputs(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    let mut lines = text.split('\n');
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        if let Some((name, end)) = line.split_once("<<").filter(|(n, _)| !n.contains('=')) {
            let mut value = Vec::new();
            for l in lines.by_ref() {
                if l == end {
                    break;
                }
                value.push(l);
            }
            out.insert(name.to_owned(), value.join("\n"));
        } else {
            let (name, value) = line.split_once('=').expect("name=value");
            out.insert(name.to_owned(), value.to_owned());
        }
    }
    out
}

/// A trigger's `RAISE` message of megabytes is the step's error: the
/// `error` output is cut short, since GitHub refuses a job's outputs past
/// 1 MiB ("Fail to evaluate job outputs") and a step's past what an
/// expression may evaluate; the log keeps the whole error.
#[test]
fn an_error_of_megabytes_is_cut_short_in_the_steps_outputs() {
    let raise = format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT); INSERT INTO t VALUES (1, 0);
         CREATE TRIGGER tr BEFORE UPDATE ON t BEGIN SELECT RAISE(ABORT, '{}'); END;",
        "y".repeat(3_000_000)
    );
    let db = TempDb::with_sql(&raise);
    let outputs = db.dir.path().join("outputs");
    let (code, _, err) = run_with_env(
        &[
            "run",
            "--db",
            path_str(&db.path),
            "--sql",
            "-",
            "--no-serve",
            "--no-checkpoint",
        ],
        Some("UPDATE t SET n = 1;"),
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_OUTPUT", path_str(&outputs)),
        ],
    );
    assert_eq!(code, 1, "{}", &err[..2000.min(err.len())]);
    assert!(err.contains(&"y".repeat(3_000_000)), "the log has it whole");
    let out = step_outputs(&outputs);
    let error = &out["error"];
    assert!(error.len() < 64 * 1024, "{} bytes", error.len());
    assert!(
        error.starts_with("step 1 (\"UPDATE t SET n = 1\") failed: yyy"),
        "{}",
        &error[..200]
    );
    assert!(error.ends_with("y…"), "{}", &error[error.len() - 200..]);
    assert_eq!(out["status"], "failed");
}

/// In an Actions job the run's outcome is the step's outputs: later steps
/// read `steps.ID.outputs.status`, `rows_changed`, `error` (an SQL error
/// that spans lines too), and a recorded run's `run_id` is what `batchsse
/// undo --run` takes.
#[test]
fn in_github_actions_the_outcome_is_the_steps_outputs() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT NOT NULL DEFAULT 0);
         INSERT INTO t(id) VALUES (1), (2);
         CREATE TRIGGER no_3 BEFORE UPDATE ON t WHEN NEW.n = 3 BEGIN
           SELECT RAISE(ABORT, 'no 3
outputs=forged');
         END;",
    );
    let outputs = db.dir.path().join("outputs.txt");
    let plan = |name: &str, sql: &str| {
        let json = serde_json::json!({"name": name, "steps": [{"name": "s", "sql": sql}]});
        db.file(&format!("{name}.json"), &json.to_string())
    };
    let in_actions = |plan: &std::path::Path, extra: &[&str]| {
        let mut args = run_args(&db, path_str(plan), &["--no-serve"]);
        args.extend_from_slice(extra);
        let mut p = spawn(&args, |c| {
            c.env("GITHUB_ACTIONS", "true")
                .env("GITHUB_OUTPUT", &outputs);
        });
        let code = p.wait().code();
        let got = step_outputs(&outputs);
        std::fs::remove_file(&outputs).unwrap();
        (code, got, p.stderr())
    };
    let bump = plan("bump", "UPDATE t SET n = n + 1");
    let (code, got, err) = in_actions(&bump, &["--undo"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(got["status"], "ok", "{got:?}");
    assert_eq!(got["rows_changed"], "2", "{got:?}");
    assert_eq!(got["steps_done"], "1", "{got:?}");
    assert_eq!(got["plan"], "bump", "{got:?}");
    assert!(got["undo_bytes"].parse::<u64>().unwrap() > 0, "{got:?}");
    assert!(!got.contains_key("error"), "{got:?}");
    assert!(
        got["undo_command"].ends_with(&format!(" --run {}", got["run_id"])),
        "{got:?}"
    );
    let (code, _, err) = crate::util::run_as_typed(&got["undo_command"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(n) FROM t"), 0);

    let three = plan("three", "UPDATE t SET n = 3");
    let (code, got, err) = in_actions(&three, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(got["status"], "failed", "{got:?}");
    assert_eq!(got["rows_changed"], "0", "{got:?}");
    assert!(!got.contains_key("undo_command"), "{got:?}");
    assert!(got["error"].ends_with(r"no 3\noutputs=forged"), "{got:?}");
    assert!(!got.contains_key("outputs"), "{got:?}");
}
