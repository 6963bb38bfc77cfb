//! `batchsse run` end to end: the real binary, a real SQLite file, the real
//! stream over HTTP.

use std::time::Duration;

use crate::util::*;

const LISTEN: &[&str] = &["--listen", "127.0.0.1:0"];

fn args<'a>(db: &'a TempDb, plan: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = run_args(db, plan, LISTEN);
    a.extend_from_slice(extra);
    a
}

#[test]
fn help_lists_the_subcommands() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("run") && out.contains("demo"), "{out}");
}

#[test]
fn a_run_streams_every_event_and_updates_every_row_exactly_once() {
    let db = TempDb::counters(5000);
    let plan = db.file("plan.json", &counter_plan("bump", 500));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 500 --progress none"),
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    let events = s.rest();
    assert!(s.ended, "the stream must end after finished");
    assert_contiguous(&events, 1);
    assert_eq!(events.first().unwrap().event, "start");
    let last = events.last().unwrap();
    assert_eq!(last.event, "finished");
    let fin = data(last);
    assert_eq!(fin["status"], "ok");
    assert_eq!(fin["rows_changed"], 5000);
    assert_eq!(
        (fin["steps_done"].as_u64(), fin["steps_total"].as_u64()),
        (Some(1), Some(1))
    );
    let progress: Vec<_> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(data)
        .collect();
    assert_eq!(progress.len(), 10);
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["done"], 500 * (i as u64 + 1));
        assert_eq!(p["total"], 5000);
        assert_eq!(p["step"], 0);
        assert!(p["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let start = data(&events[0]);
    assert_eq!(start["steps"][0]["kind"], "chunked");
    assert_eq!(start["steps"][0]["index"], 0);
    assert_eq!(start["db"], "test.sqlite");
    assert!(
        events.iter().any(|e| e.event == "message"),
        "message events have no event: line"
    );
    assert!(p.wait().success());
    assert_eq!(db.counter_spread(), (5000, 0));
}

#[test]
fn a_late_client_gets_the_identical_byte_stream_from_id_1() {
    let db = TempDb::counters(2000);
    let plan = db.file("plan.json", &counter_plan("late", 100));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 100 --sleep 20 --linger 30 --progress none"),
    ));
    let mut early = Stream::open(p.addr(), "/events", &[]);
    // Join once the run is well under way.
    for _ in 0..5 {
        early.until("progress");
    }
    let mut late = Stream::open(p.addr(), "/events", &[]);
    let late_events = late.rest();
    early.rest();
    assert_eq!(late_events.first().map(id), Some(1));
    assert!(!late.bytes.is_empty());
    assert_eq!(
        early.bytes, late.bytes,
        "both clients must get the same bytes"
    );
    // Late joiners are safe under load thanks to --linger; end it now.
    p.signal("INT");
    assert!(p.wait().success());
    assert_eq!(db.counter_spread(), (2000, 0));
}

#[test]
fn last_event_id_resumes_after_the_given_id_with_no_gap_or_duplicate() {
    let db = TempDb::counters(2000);
    let plan = db.file("plan.json", &counter_plan("resume", 100));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 100 --sleep 20 --linger 30 --progress none"),
    ));
    let mut full = Stream::open(p.addr(), "/events", &[]);
    let mut first = Stream::open(p.addr(), "/events", &[]);
    let cut = id(&first.until("progress"));
    drop(first);
    let cut_s = cut.to_string();
    let mut by_header = Stream::open(p.addr(), "/events", &[("Last-Event-ID", &cut_s)]);
    let mut by_query = Stream::open(p.addr(), &format!("/events?last_event_id={cut}"), &[]);
    let all = full.rest();
    for resumed in [by_header.rest(), by_query.rest()] {
        assert_eq!(resumed.first().map(id), Some(cut + 1));
        assert_contiguous(&resumed, cut + 1);
        assert_eq!(
            resumed,
            all[cut as usize..],
            "resumed events equal the tail of the full stream"
        );
    }
    // Late joiners are safe under load thanks to --linger; end it now.
    p.signal("INT");
    assert!(p.wait().success());
}

#[test]
fn curl_sees_the_stream_end_and_the_process_exits_0() {
    let db = TempDb::counters(300);
    let plan = db.file("plan.json", &counter_plan("curl", 100));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 100 --progress none"),
    ));
    let out = std::process::Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "60",
            &format!("http://{}/events", p.addr()),
        ])
        .output()
        .expect("curl must be installed (the README's CI recipe uses it)");
    assert!(out.status.success(), "curl exits 0 when the stream ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("id: 1\nevent: start\ndata: {"), "{text}");
    assert!(
        text.contains("event: finished\ndata: {\"status\":\"ok\""),
        "{text}"
    );
    assert_eq!(p.wait().code(), Some(0));
}

#[test]
fn a_failing_chunk_exits_1_keeping_earlier_steps_and_chunks() {
    let db = TempDb::with_sql(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, counter INT NOT NULL DEFAULT 0, v INT CHECK (v < 95));
         INSERT INTO t(id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 200) SELECT i FROM s;",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"fail","steps":[
            {"name":"bump","sql":"UPDATE t SET counter = counter + 1"},
            {"name":"set v","sql":"UPDATE t SET v = id WHERE id BETWEEN :lo AND :hi","chunk":{"table":"t","size":10}},
            {"name":"never","sql":"UPDATE t SET counter = 100"}]}"#,
    );
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10"),
    ));
    let events = Stream::open(p.addr(), "/events", &[]).rest();
    assert_eq!(p.wait().code(), Some(1));
    let fin = data(events.last().unwrap());
    assert_eq!(fin["status"], "failed");
    let err = fin["error"].as_str().unwrap();
    assert!(
        err.contains("set v") && err.contains("CHECK constraint failed"),
        "{err}"
    );
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.event == "step")
        .map(data)
        .filter(|d| d["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["index"], 1);
    assert_eq!(
        failed[0]["done"], 90,
        "nine chunks committed before the failing one"
    );
    assert_eq!(
        db.counter_spread(),
        (200, 0),
        "step 1 kept, step 3 never ran"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t WHERE v IS NOT NULL"),
        90
    );
    assert_eq!(
        db.query_i64("SELECT max(v) FROM t"),
        90,
        "the failing chunk rolled back"
    );
    assert!(p.stderr().contains("FAILED"), "{}", p.stderr());
}

#[test]
fn bad_input_exits_2_before_touching_the_database() {
    let db = TempDb::counters(10);
    let before = db.bytes();
    let good = counter_plan("p", 5);
    let cases: &[(&str, &str, &str)] = &[
        ("plan.json", "{\"steps\": [", "line 1, column 11"),
        (
            "plan.json",
            r#"{"steps":[{"sql":"UPDATE t SET nope = 1"}]}"#,
            "no such column: nope",
        ),
        (
            "plan.json",
            r#"{"steps":[{"sql":"UPDATE t SET counter = 1","chunk":{"table":"t"}}]}"#,
            ":lo and :hi",
        ),
        (
            "fix.sql",
            "UPDATE t SET counter = counter + 1;\nUPDAT t SET counter = 2;",
            "statement 2",
        ),
    ];
    for (name, text, needle) in cases {
        let file = db.file(name, text);
        let flag = if name.ends_with(".sql") {
            "--sql"
        } else {
            "--plan"
        };
        let (code, _, err) = run(&[
            "run",
            "--db",
            path_str(&db.path),
            flag,
            path_str(&file),
            "--no-serve",
        ]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(needle), "{text}: {err:?} lacks {needle:?}");
        assert!(err.starts_with("batchsse: "), "{err}");
        assert_eq!(db.bytes(), before, "{text}: database changed");
    }
    let missing = db.dir.path().join("missing.sqlite");
    let plan = db.file("good.json", &good);
    let (code, _, err) = run(&["run", "--db", path_str(&missing), "--plan", path_str(&plan)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no such database") && err.contains("never creates"),
        "{err}"
    );
    assert!(!missing.exists(), "a missing database must not be created");
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--listen", "nonsense"]));
    assert_eq!(code, 2);
    assert!(err.contains("127.0.0.1:0"), "{err}");
    assert_eq!(db.bytes(), before);
}

#[test]
fn a_sql_script_on_stdin_runs_statement_by_statement() {
    let db = TempDb::counters(50);
    let (code, out, err) = run_with_stdin(
        &[
            "run",
            "--db",
            path_str(&db.path),
            "--sql",
            "-",
            "--no-serve",
            "--progress",
            "json",
        ],
        Some(
            "UPDATE t SET counter = counter + 1 WHERE id <= 20;\n-- second\nUPDATE t SET counter = counter + 1 WHERE id > 20;\nALTER TABLE t ADD COLUMN x INT;",
        ),
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let done: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "step" && l["data"]["state"] == "done")
        .map(|l| {
            (
                l["data"]["name"].as_str().unwrap().to_owned(),
                l["data"]["changed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        done,
        [
            (
                "UPDATE t SET counter = counter + 1 WHERE id <= 20".to_owned(),
                20
            ),
            (
                "UPDATE t SET counter = counter + 1 WHERE id > 20".to_owned(),
                30
            ),
            ("ALTER TABLE t ADD COLUMN x INT".to_owned(), 0),
        ]
    );
    assert_eq!(lines[0]["id"], 1);
    assert_eq!(lines.last().unwrap()["event"], "finished");
    assert_eq!(db.counter_spread(), (50, 0));
}

#[test]
fn a_json_plan_saved_with_a_utf8_bom_runs() {
    let plan = format!("\u{feff}{}", counter_plan("bom", 10));
    assert!(plan.as_bytes().starts_with(&[0xEF, 0xBB, 0xBF]));
    let db = TempDb::counters(30);
    let file = db.file("plan.json", &plan);
    let (code, _, err) = run(&run_args(&db, path_str(&file), &["--no-serve"]));
    assert_eq!(code, 0, "from a file: {err}");
    assert_eq!(db.counter_spread(), (30, 0));
    let db = TempDb::counters(30);
    let (code, _, err) = run_with_stdin(&run_args(&db, "-", &["--no-serve"]), Some(&plan));
    assert_eq!(code, 0, "from stdin: {err}");
    assert_eq!(db.counter_spread(), (30, 0));
}

/// With `--cors`, the origin allowed to read the run may also frame its
/// dashboard; no other may.
#[test]
fn only_the_cors_origin_may_frame_the_dashboard() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("framed", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --progress none --cors http://app.test:5173"),
    ));
    let page = get(p.addr(), "/", &[]);
    assert_eq!(
        page.header("content-security-policy"),
        Some("frame-ancestors http://app.test:5173")
    );
    Stream::open(p.addr(), "/events", &[]).rest();
    assert_eq!(p.wait().code(), Some(0));
    // Every origin may read the run; that lets none of them frame it.
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --progress none --no-checkpoint --cors *"),
    ));
    let page = get(p.addr(), "/", &[]);
    assert_eq!(
        page.header("content-security-policy"),
        Some("frame-ancestors 'none'")
    );
    Stream::open(p.addr(), "/events", &[]).rest();
    assert_eq!(p.wait().code(), Some(0));
}

#[test]
fn routes_status_and_linger() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("routes", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --linger 30 --progress none"),
    ));
    let a = p.addr();
    let waiting = get(a, "/status", &[]).json();
    assert_eq!(waiting["state"], "waiting");
    assert_eq!(waiting["clients"], 0);
    assert_eq!(get(a, "/healthz", &[]).text(), "ok\n");
    let page = get(a, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("EventSource"));
    // No other site may frame the dashboard.
    assert_eq!(
        page.header("content-security-policy"),
        Some("frame-ancestors 'none'")
    );
    assert_eq!(get(a, "/nope", &[]).status, 404);
    let post = raw(a, &request("POST", "/events", &[("Content-Length", "0")]));
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = raw(a, &request("HEAD", "/status", &[]));
    assert_eq!(head.status, 200);

    let events = Stream::open(a, "/events", &[]).rest();
    let fin_id = id(events.last().unwrap());
    let status = get(a, "/status", &[]).json();
    assert_eq!(status["state"], "finished");
    assert_eq!(status["status"], "ok");
    assert_eq!(status["rows_changed"], 100);
    assert_eq!(status["steps_done"], 1);
    assert_eq!(status["steps_total"], 1);
    assert_eq!(status["last_event_id"], fin_id);
    // During --linger a late client still gets the whole run, and one that
    // already holds the finished id is told to stop with 204.
    let mut late = Stream::open(a, "/events", &[]);
    assert_eq!(late.rest(), events);
    let done = get(a, "/events", &[("Last-Event-ID", &fin_id.to_string())]);
    assert_eq!(done.status, 204);
    let done = get(a, &format!("/events?last_event_id={fin_id}"), &[]);
    assert_eq!(done.status, 204);
    // Ctrl-C ends the linger early with the run's own status.
    p.signal("INT");
    assert_eq!(p.wait_for(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_run_stopped_by_a_signal_does_not_linger() {
    // A supervisor's SIGTERM (or a person's Ctrl-C) means "be gone": a run
    // it stopped exits with 130 at once, its long linger skipped; a client
    // already watching still got `finished`.
    for sig in ["TERM", "INT"] {
        let db = TempDb::counters(1_000);
        let plan = db.file("plan.json", &counter_plan("stopped", 10));
        let mut p = Proc::start(&args(
            &db,
            path_str(&plan),
            &words("--batch-size 10 --sleep 50 --linger 600 --progress plain"),
        ));
        let mut s = Stream::open(p.addr(), "/events", &[]);
        s.until("progress");
        p.signal(sig);
        assert_eq!(
            p.wait_for(Duration::from_secs(30)).code(),
            Some(130),
            "{}",
            p.stderr()
        );
        let last = s.rest().pop().expect("events");
        assert_eq!(last.event, "finished");
        assert!(!p.stderr().contains("--linger"), "{}", p.stderr());
    }
}

#[test]
fn with_cors_only_known_routes_answer_the_preflight() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("preflight", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --cors http://localhost:5173 --progress none"),
    ));
    let a = p.addr();
    let preflight = |path: &str| {
        raw(
            a,
            &request(
                "OPTIONS",
                path,
                &[
                    ("Origin", "http://localhost:5173"),
                    ("Access-Control-Request-Method", "GET"),
                ],
            ),
        )
    };
    for path in [
        "/",
        "/events",
        "/status",
        "/healthz",
        "/events?last_event_id=3",
    ] {
        let r = preflight(path);
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://localhost:5173"),
            "{path}"
        );
        assert!(r.header("access-control-allow-methods").is_some(), "{path}");
    }
    for path in ["/nope", "/events/", "/status.json", "/healthz/x"] {
        let r = preflight(path);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.header("access-control-allow-methods").is_none(), "{path}");
    }
    let events = Stream::open(a, "/events", &[]).rest();
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("finished"));
    assert!(p.wait().success(), "{}", p.stderr());
}

#[test]
fn a_client_that_never_reads_does_not_hold_the_exit_past_the_drain_timeout() {
    let db = TempDb::counters(600);
    // A long step name makes every progress event ~30 KB, so 600 of them
    // fill the stalled client's socket buffers several times over.
    let name = "n".repeat(30_000);
    let plan = serde_json::json!({"name": "stall", "steps": [
        {"sql": "PRAGMA synchronous = OFF"},
        {"name": name, "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
         "chunk": {"table": "t", "size": 1}}]});
    let plan = db.file("plan.json", &plan.to_string());
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 1 --drain-timeout 1 --progress plain"),
    ));
    // A tiny receive buffer, set before connecting, keeps the window small.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&p.addr().into()).unwrap();
    let stalled: std::net::TcpStream = sock.into();
    use std::io::{Read, Write};
    (&stalled)
        .write_all(&request("GET", "/events", &[]))
        .unwrap();
    let status = p.wait_for(Duration::from_secs(60));
    let exited = std::time::Instant::now();
    assert!(status.success());
    let finished = p.stderr_time("finished ok").expect("a finished line");
    let after = exited - finished;
    assert!(
        after < Duration::from_secs(4),
        "exited {after:?} after finished; --drain-timeout is 1 s"
    );
    // The stalled client never got its tail: the exit did not wait for it.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let _ = (&stalled).read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "{}",
        &got[..got.len().min(200)]
    );
    assert!(
        !got.contains("event: finished"),
        "the client was not stalled: {} bytes",
        got.len()
    );
    assert_eq!(db.counter_spread(), (600, 0));
}

#[test]
fn the_demo_runs_the_sample_plan_to_the_end() {
    let (code, _, err) = run(&words(
        "demo --rows 3000 --sleep 0 --linger 0 --listen 127.0.0.1:0 --progress plain",
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines()
            .next()
            .unwrap()
            .starts_with("batchsse: listening on http://127.0.0.1:")
    );
    assert!(err.contains("finished ok: 5/5 steps"), "{err}");
    assert!(err.contains("in a browser"), "{err}");
    // Its own writes to the fresh shop are not an application's.
    assert!(!err.contains("written within the last minute"), "{err}");
}

#[test]
fn a_lingering_run_says_why_it_has_not_exited_after_finished() {
    // The demo lingers 15 s after its last line: without a word the
    // terminal looked hung.
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("linger", 10));
    let plan = path_str(&plan);
    let (code, _, err) = run(&args(&db, plan, &words("--linger 1 --progress plain")));
    assert_eq!(code, 0, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "batchsse: serving the finished run's replay for 1 s (--linger), then exiting; Ctrl-C exits now",
        "{err}"
    );
    // Without a linger it exits at once, and says nothing of it.
    let (code, _, err) = run(&args(&db, plan, &words("--force --progress plain")));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("--linger"), "{err}");
}

#[test]
fn a_paced_run_counts_its_pauses_in_rate_and_eta_from_the_first_chunk() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("paced", 10));
    let (code, out, err) = run(&run_args(
        &db,
        path_str(&plan),
        &words("--no-serve --batch-size 10 --sleep 100 --progress json"),
    ));
    assert_eq!(code, 0, "{err}");
    let progress = progress_data(&out);
    assert_eq!(progress.len(), 10, "{out}");
    // 10 rows, then a 100 ms pause: under 100 rows/s, 90 rows to go.
    let first = &progress[0];
    assert!(first["rate"].as_f64().unwrap() < 100.0, "{first}");
    assert!(first["eta_ms"].as_u64().unwrap() >= 900, "{first}");
    assert_eq!(progress[9]["eta_ms"], 0, "{}", progress[9]);
}

#[test]
fn the_demo_prints_working_addresses_with_its_token() {
    let mut p = Proc::start(&words(
        "demo --rows 300 --sleep 0 --linger 0 --listen 127.0.0.1:0 --token a&b --wait-for-clients 1 --progress none",
    ));
    let addr = p.addr();
    let hint = stderr_lines(&p, "curl -N '", 1).remove(0);
    // The dashboard's address carries the demo's control token after `#`.
    let open = format!("open http://{addr}/?token=a%26b#control=");
    assert!(hint.contains(&open), "{hint}");
    let events = format!("curl -N 'http://{addr}/events?token=a%26b'");
    assert!(hint.contains(&events), "{hint}");
    // The hint's address is the stream itself: it lets the demo start.
    let mut s = Stream::open(addr, "/events?token=a%26b", &[]);
    assert_eq!(data(&s.until("finished"))["status"], "ok");
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
}

/// A control token with the characters of a base64 secret (`+`, `/`, `=`)
/// and of a URL or a shell (`%`, `&`, `'`): the dashboard address the demo
/// prints gives the page the token itself (it reads the fragment as
/// `URLSearchParams` does), and its `ctl` command works when pasted.
#[test]
fn the_demo_prints_its_control_token_so_that_page_and_shell_get_it_intact() {
    let token = "ab+c/d=%41&x'y";
    let mut p = Proc::start(&[
        "demo",
        "--rows",
        "300",
        "--sleep",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--control-token",
        token,
        "--wait-for-clients",
        "1",
        "--progress",
        "none",
    ]);
    let addr = p.addr();
    let hint = stderr_lines(&p, "batchsse ctl ", 1).remove(0);
    let url = hint
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.contains('#'))
        .unwrap_or_else(|| panic!("no dashboard address: {hint}"));
    let fragment = url.split_once('#').unwrap().1;
    let from_page: Vec<_> = form_urlencoded::parse(fragment.as_bytes())
        .filter(|(k, _)| k == "control")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(from_page, [token], "{url}");
    let command = hint
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no command: {hint}"));
    let command = command
        .strip_prefix("batchsse ")
        .unwrap_or_else(|| panic!("{command}"));
    let pasted = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("\"$0\" {command}"))
        .arg(BIN)
        .output()
        .expect("bash");
    assert_eq!(
        pasted.status.code(),
        Some(0),
        "{command}: {}",
        String::from_utf8_lossy(&pasted.stderr)
    );
    let (code, _, err) = run(&[
        "ctl",
        &format!("http://{addr}/"),
        "cancel",
        "--control-token",
        token,
    ]);
    assert_eq!(code, 0, "{err}");
    let mut s = Stream::open(addr, "/events", &[]);
    assert_eq!(data(&s.until("finished"))["status"], "cancelled");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
}

/// Ctrl-C while the demo makes its shop in a `--keep` folder: the half-made
/// file is removed, so the next demo there does not refuse it as "already
/// exists".
#[test]
fn a_demo_stopped_while_making_its_shop_in_a_kept_folder_leaves_no_shop() {
    let dir = tempfile::tempdir().unwrap();
    let keep = path_str(dir.path());
    let shop = dir.path().join("shop.sqlite");
    let mut p = Proc::start(&[
        "demo",
        "--keep",
        keep,
        "--create-only",
        "--no-serve",
        "--rows",
        "20000000",
    ]);
    let end = std::time::Instant::now() + PATIENCE;
    while !shop.exists() {
        assert!(std::time::Instant::now() < end, "{}", p.stderr());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    p.signal("INT");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    assert!(!shop.exists(), "a half-made shop is left: {}", p.stderr());
    let (code, _, err) = run(&["demo", "--keep", keep, "--create-only", "--rows", "500"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn demo_create_only_keeps_a_fresh_shop_for_trying_run() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("shop");
    // A file of the user's own in the folder is left alone.
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("fix.sql"), "-- mine").unwrap();
    let keep = path_str(&keep);
    let (code, _, err) = run(&["demo", "--keep", keep, "--create-only", "--rows", "500"]);
    assert_eq!(code, 0, "{err}");
    let shop = dir.path().join("shop");
    let (db, plan) = (shop.join("shop.sqlite"), shop.join("plan.json"));
    assert!(
        err.contains(&format!("--db {} --plan {}", db.display(), plan.display())),
        "{err}"
    );
    assert!(err.contains("fix.sql exists; left as it is"), "{err}");
    assert_eq!(
        std::fs::read_to_string(shop.join("fix.sql")).unwrap(),
        "-- mine"
    );
    let sample = |name: &str| {
        let repo = format!("{}/sample-data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(repo).unwrap()
    };
    for name in ["plan.json", "undo-plan.json"] {
        let beside = std::fs::read_to_string(shop.join(name)).unwrap();
        assert_eq!(beside, sample(name), "{name}: the sample, beside the shop");
    }
    let args = [
        "run",
        "--db",
        path_str(&db),
        "--plan",
        path_str(&plan),
        "--no-serve",
        "--progress",
        "plain",
    ];
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("finished ok: 5/5 steps"), "{err}");
    assert!(
        !err.contains("written within the last minute"),
        "the fresh shop is idle until someone uses it: {err}"
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already applied"), "{err}");
    let (code, _, err) = run(&["demo", "--create-only"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--create-only needs --keep DIR"), "{err}");
}

/// A `plan.json` of the user's own in the kept folder is left alone, and
/// nothing the demo says takes it for the sample: `--create-only` said
/// "the sample plan has not run on it. Try: batchsse run … --plan
/// DIR/plan.json", which would run the user's plan; and a demo stopped
/// mid-way said that same command "goes on" with the sample.
#[test]
fn a_kept_demo_beside_a_plan_of_the_user_s_own_never_calls_it_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("shop");
    std::fs::create_dir(&keep).unwrap();
    let mine = r#"{"name": "mine", "steps": [{"sql": "DELETE FROM orders"}]}"#;
    std::fs::write(keep.join("plan.json"), mine).unwrap();
    let keep_s = path_str(&keep);
    let (code, _, err) = run(&["demo", "--keep", keep_s, "--create-only", "--rows", "500"]);
    assert_eq!(code, 0, "{err}");
    let plan = keep.join("plan.json");
    assert!(!err.contains("the sample plan has not run"), "{err}");
    assert!(
        err.contains(&format!(
            "{} is not the sample plan: yours runs on the shop with",
            plan.display()
        )) && err.contains("batchsse demo --keep NEW-FOLDER --create-only"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&plan).unwrap(), mine);
    std::fs::remove_file(keep.join("shop.sqlite")).unwrap();
    let mut p = Proc::start(&[
        "demo",
        "--keep",
        keep_s,
        "--rows",
        "4000",
        "--sleep",
        "100",
        "--listen",
        "127.0.0.1:0",
        "--progress",
        "plain",
        "--linger",
        "0",
    ]);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    p.signal("INT");
    assert_eq!(p.wait().code(), Some(130), "{}", p.stderr());
    let err = p.stderr();
    assert!(err.contains("plan.json exists; left as it is"), "{err}");
    assert!(!err.contains("goes on"), "{err}");
    assert_eq!(std::fs::read_to_string(&plan).unwrap(), mine);
}

#[test]
fn every_connection_answers_once_so_a_page_gets_its_stream_on_a_fresh_one() {
    use std::io::{Read, Write};
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("one-per-conn", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --progress none"),
    ));
    // A browser sends its EventSource request down the connection that
    // fetched the page if it may; the server closes after each answer, so
    // the stream always comes on a fresh connection, from the fan-out writer.
    let mut tcp = std::net::TcpStream::connect(p.addr()).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)
        .expect("the connection ends after the answer");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(answer.contains("\"state\":\"waiting\""), "{answer}");
    let s = Stream::open(p.addr(), "/events", &[]);
    assert_eq!(s.header("connection"), Some("close"));
    assert_eq!(s.header("transfer-encoding"), None);
    let events = { s }.rest();
    assert_eq!(events.last().unwrap().event, "finished");
    assert!(p.wait().success());
}

#[test]
fn a_stream_served_by_hyper_works_as_a_direct_one() {
    use std::io::{Read, Write};
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("via-hyper", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --progress none"),
    ));
    // More headers than the direct path reads (64): hyper (up to 100)
    // takes the request and streams it as a chunked body.
    let mut req = String::from("GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..70 {
        req.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    let mut tcp = std::net::TcpStream::connect(p.addr()).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(req.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(
        text.contains("id: 1\r\nevent: start") || text.contains("id: 1\nevent: start"),
        "{text}"
    );
    assert!(text.contains("event: finished"), "{text}");
    assert!(p.wait().success());
    assert_eq!(db.counter_spread(), (100, 0));
}

#[test]
fn an_id_from_an_earlier_run_replays_this_run_from_the_start() {
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("stale-id", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --progress none"),
    ));
    // A dashboard left open on an earlier, longer run reconnects here.
    let events = Stream::open(p.addr(), "/events", &[("Last-Event-ID", "99999")]).rest();
    assert_eq!(events.first().map(id), Some(1));
    assert_eq!(events.last().unwrap().event, "finished");
    assert_contiguous(&events, 1);
    assert!(p.wait().success());
}

#[test]
fn idle_connections_do_not_hold_the_exit() {
    let db = TempDb::counters(50);
    let plan = db.file("plan.json", &counter_plan("idle", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --drain-timeout 30 --progress plain"),
    ));
    // A browser's speculative preconnect says nothing; a kept-alive
    // connection goes quiet after its answer.
    let _silent = std::net::TcpStream::connect(p.addr()).unwrap();
    let mut kept = std::net::TcpStream::connect(p.addr()).unwrap();
    use std::io::Write;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let events = Stream::open(p.addr(), "/events", &[]).rest();
    assert_eq!(events.last().unwrap().event, "finished");
    assert!(p.wait_for(Duration::from_secs(60)).success());
    let exited = std::time::Instant::now();
    let finished = p.stderr_time("finished ok").expect("a finished line");
    assert!(
        exited - finished < Duration::from_secs(10),
        "idle connections held the exit for {:?} (drain timeout 30 s)",
        exited - finished
    );
}

/// Sets the child's soft limit of open files to `soft`, keeping its hard
/// limit (a login shell's usual 1,024 is the same story, only later).
#[cfg(unix)]
fn soft_file_limit(c: &mut std::process::Command, soft: libc::rlim_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getrlimit and setrlimit are async-signal-safe, as pre_exec
    // requires, and touch only the child's own limits.
    unsafe {
        c.pre_exec(move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = soft.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Under a low soft limit of open files (the hard one is far higher), a
/// few hundred connections that send half a request must not use up the
/// server's descriptors: the server takes the hard limit, so a new viewer
/// is answered at once and the half-sent requests still get theirs.
#[cfg(unix)]
#[test]
fn idle_connections_under_a_low_soft_file_limit_do_not_lock_others_out() {
    use std::io::{Read, Write};
    let db = TempDb::counters(50);
    let plan = db.file("plan.json", &counter_plan("fds", 10));
    let mut p = Proc::start_with(
        &args(
            &db,
            path_str(&plan),
            &words("--wait-for-clients 1 --batch-size 10 --progress none"),
        ),
        |c| soft_file_limit(c, 256),
    );
    let addr = p.addr();
    let mut idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut t = std::net::TcpStream::connect(addr).expect("connect");
            t.write_all(b"GET /healthz HTTP/1.1\r\n")
                .expect("half a head");
            t
        })
        .collect();
    // Answered now, while the 300 still wait (they have 10 s to finish).
    let r = get(addr, "/healthz", &[]);
    assert_eq!(r.status, 200);
    for (i, t) in idle.iter_mut().enumerate() {
        t.set_read_timeout(Some(PATIENCE)).unwrap();
        t.write_all(b"Host: 127.0.0.1\r\n\r\n")
            .expect("rest of the head");
        let mut answer = String::new();
        let _ = t.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "connection {i}: {answer:?}"
        );
    }
    let events = Stream::open(addr, "/events", &[]).rest();
    assert_eq!(events.last().unwrap().event, "finished");
    assert!(p.wait().success(), "{}", p.stderr());
}

#[test]
fn every_stream_answer_names_the_run_and_a_resume_from_another_run_gets_all_of_this_one() {
    use std::io::{Read, Write};
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("run-id", 10));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 10 --linger 30 --progress none"),
    ));
    let a = p.addr();
    let mut s = Stream::open(a, "/events", &[]);
    let all = s.rest();
    let run_id = data(&all[0])["run_id"].as_str().unwrap().to_owned();
    // This first client may be answered before `start` is logged: then
    // there is no run id to send yet.
    let first = s.header("x-batchsse-run-id");
    assert!(first.is_none_or(|h| h == run_id), "{first:?}");
    let finished = id(all.last().unwrap()).to_string();
    assert!(all.len() > 4, "{all:?}");

    let first_id_at = |path: &str, headers: &[(&str, &str)]| {
        let mut s = Stream::open(a, path, headers);
        assert_eq!(s.header("x-batchsse-run-id"), Some(run_id.as_str()));
        s.next_event().map(|e| id(&e))
    };
    let first_id = |headers: &[(&str, &str)]| first_id_at("/events", headers);
    // Its own id resumes, with or without naming the run.
    assert_eq!(first_id(&[("Last-Event-ID", "3")]), Some(4));
    assert_eq!(
        first_id(&[("Last-Event-ID", "3"), ("X-Batchsse-Run-Id", &run_id)]),
        Some(4)
    );
    // An id from another run on this address means nothing here.
    assert_eq!(
        first_id(&[("Last-Event-ID", "3"), ("X-Batchsse-Run-Id", "other")]),
        Some(1)
    );
    // The same with the run in the URL, as an EventSource can say it.
    let mine = format!("/events?run={run_id}");
    assert_eq!(first_id_at(&mine, &[("Last-Event-ID", "3")]), Some(4));
    assert_eq!(
        first_id_at("/events?run=other", &[("Last-Event-ID", "3")]),
        Some(1)
    );
    assert_eq!(
        first_id_at("/events?run=other&last_event_id=3", &[]),
        Some(1)
    );
    let again = Stream::open(
        a,
        "/events",
        &[("Last-Event-ID", &finished), ("X-Batchsse-Run-Id", "x")],
    )
    .rest();
    assert_eq!(again.len(), all.len());

    // The 204 that ends a reconnect after `finished` names the run too.
    let done = get(a, "/events", &[("Last-Event-ID", &finished)]);
    assert_eq!(done.status, 204);
    assert_eq!(done.header("x-batchsse-run-id"), Some(run_id.as_str()));

    // So does a stream served by hyper (more headers than the direct path reads).
    let mut req = String::from(
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: 3\r\nX-Batchsse-Run-Id: other\r\n",
    );
    for i in 0..70 {
        req.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    let mut tcp = std::net::TcpStream::connect(a).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(req.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(
        text.contains(&format!("x-batchsse-run-id: {run_id}\r\n")),
        "{text}"
    );
    assert!(text.contains("id: 1\nevent: start"), "{text}");
    p.signal("INT");
    assert!(p.wait().success());
}

#[test]
fn an_interrupted_run_says_why_once_on_the_terminal() {
    let db = TempDb::counters(2000);
    let plan = db.file("plan.json", &counter_plan("once", 100));
    let mut p = Proc::start(&args(
        &db,
        path_str(&plan),
        &words("--wait-for-clients 1 --batch-size 100 --sleep 20 --progress plain"),
    ));
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    p.signal("INT");
    assert_eq!(p.wait().code(), Some(130));
    let err = p.stderr();
    let why = data(s.rest().last().expect("finished"))["error"]
        .as_str()
        .expect("the finished event says why")
        .to_owned();
    assert_eq!(err.matches(why.as_str()).count(), 1, "{err}");
    assert!(err.contains("cancelled: "), "{err}");
}

#[test]
fn a_sql_script_saved_with_a_utf8_bom_still_runs_its_pragma_outside_a_transaction() {
    // Inside a transaction `PRAGMA foreign_keys = ON` does nothing, so the
    // cascade below would silently not happen.
    let db = TempDb::with_sql(
        "CREATE TABLE p(id INTEGER PRIMARY KEY); INSERT INTO p VALUES (1), (2);
         CREATE TABLE c(id INTEGER PRIMARY KEY, p INT REFERENCES p(id) ON DELETE CASCADE);
         INSERT INTO c(p) VALUES (1), (1), (2);",
    );
    let run_script = |script: &std::path::Path| {
        run(&[
            "run",
            "--db",
            path_str(db.as_ref()),
            "--sql",
            path_str(script),
            "--no-serve",
        ])
    };
    let script = db.file(
        "fk.sql",
        "\u{feff}PRAGMA foreign_keys = ON;\r\nDELETE FROM p WHERE id = 1;\r\n",
    );
    let (code, _, err) = run_script(&script);
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT count(*) FROM c"), 1, "cascaded: {err}");
    assert!(
        !err.contains('\u{feff}'),
        "step names without the mark: {err}"
    );
    // And transaction control behind the mark is refused before anything runs.
    let script = db.file("begin.sql", "\u{feff}BEGIN;\nDELETE FROM c;\n");
    let before = db.bytes();
    let (code, _, err) = run_script(&script);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("controls transactions"), "{err}");
    assert_eq!(db.bytes(), before, "database untouched");
}

/// SQLite keeps only names that begin `sqlite_` to itself: a table called
/// `SQLiteLog` or `sqlite1` is the user's, and the check must see it.
#[test]
fn tables_whose_names_begin_with_sqlite_but_not_its_prefix_are_checked_and_run() {
    let db = TempDb::with_sql(
        "CREATE TABLE SQLiteLog(id INTEGER PRIMARY KEY, v INT);
         INSERT INTO SQLiteLog VALUES (1, 0), (2, 0), (3, 0);
         CREATE TABLE sqlite1(n INT);
         CREATE VIEW sqlitev AS SELECT count(*) AS n FROM sqlite1;",
    );
    let plan = db.file(
        "plan.json",
        r#"{"name":"names","steps":[
          {"sql":"UPDATE SQLiteLog SET v = v + 1 WHERE id BETWEEN :lo AND :hi","chunk":{"table":"sqlitelog"}},
          {"sql":"INSERT INTO sqlite1 SELECT v FROM SQLiteLog","expect":"SELECT n = 3 FROM sqlitev"}]}"#,
    );
    let (code, _, err) = run(&run_args(&db, path_str(&plan), &["--no-serve"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.query_i64("SELECT sum(v) FROM SQLiteLog"), 3);
    assert_eq!(db.query_i64("SELECT sum(n) FROM sqlite1"), 3);
}

/// A failed run whose JSON goes to a file (`--progress json > events`)
/// says its outcome on stderr too, as `--progress none` does: a CI log
/// showed nothing of the failure.
#[test]
fn a_failed_run_with_json_progress_says_its_outcome_on_stderr() {
    let db = TempDb::with_sql(
        "CREATE TABLE o(id INTEGER PRIMARY KEY, v INT NOT NULL);
         INSERT INTO o WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20) SELECT i, 1 FROM s;",
    );
    let plan = db.file(
        "bad.json",
        r#"{"name":"bad","steps":[{"name":"nulls","sql":"UPDATE o SET v = NULL WHERE id BETWEEN :lo AND :hi AND id > 12","chunk":{"table":"o","key":"id","size":5}}]}"#,
    );
    for mode in ["json", "none"] {
        let (code, out, err) = run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", "--progress", mode],
        ));
        assert_eq!(code, 1, "{mode}: {err}");
        assert!(err.contains("batchsse: FAILED: 0/1 steps"), "{mode}: {err}");
        assert!(
            err.contains("step 1 (\"nulls\") failed: NOT NULL constraint failed: o.v"),
            "{mode}: {err}"
        );
        // The JSON is all on stdout, and only there.
        let events = json_lines(&out);
        assert_eq!(events.is_empty(), mode == "none", "{mode}: {out}");
        assert!(!err.contains("\"event\""), "{mode}: {err}");
    }
}
