//! Live control: `POST /control` and `batchsse ctl` pause, resume, re-pace
//! and cancel a run; every refusal is exact and leaves the run alone; a
//! server on loopback answers only to loopback names (DNS rebinding).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rusqlite::Connection;

use crate::util::*;

const TOKEN: &str = "c0ntrol";

/// Sends a raw request and returns the status and the body.
fn send(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let req = format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(req.as_bytes()).expect("head");
    let _ = tcp.write_all(body);
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    let code = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// `POST /control` with the given extra header lines and JSON body.
fn post(addr: SocketAddr, headers: &str, body: &str) -> (u16, String) {
    send(
        addr,
        &format!("POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"),
        body.as_bytes(),
    )
}

fn authed(addr: SocketAddr, body: &str) -> (u16, String) {
    post(
        addr,
        &format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"),
        body,
    )
}

/// A run held at the gate (nothing written yet) until a stream client comes.
fn held(extra: &[&str]) -> (TempDb, Proc) {
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("steer", 50));
    let mut flags = words("--wait-for-clients 1 --batch-size 50 --sleep 20");
    flags.extend_from_slice(extra);
    let p = serving(&db, path_str(&plan), &flags);
    (db, p)
}

#[test]
fn every_refusal_is_exact_and_leaves_the_database_and_the_run_alone() {
    let (db, mut p) = held(&["--control-token", TOKEN]);
    let before = db.bytes();
    let addr = p.addr();
    let json = "Content-Type: application/json\r\n";
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let cases: Vec<(String, String, u16, &str)> = vec![
        (
            json.into(),
            r#"{"pause":true}"#.into(),
            401,
            "control token is required",
        ),
        (
            format!("Authorization: Bearer wrong\r\n{json}"),
            r#"{"pause":true}"#.into(),
            401,
            "control token was not accepted",
        ),
        (
            format!("{auth}Content-Type: text/plain\r\n"),
            r#"{"pause":true}"#.into(),
            415,
            "application/json",
        ),
        (
            auth.clone(),
            r#"{"pause":true}"#.into(),
            415,
            "application/json",
        ),
        (
            format!("{auth}{json}"),
            format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)),
            413,
            "4096",
        ),
        (
            format!("{auth}{json}"),
            r#"{"speed":2}"#.into(),
            400,
            "\"speed\"",
        ),
        (
            format!("{auth}{json}"),
            r#"{"chunk_time_ms":0}"#.into(),
            400,
            "chunk_time_ms",
        ),
        (
            format!("{auth}{json}"),
            r#"{"nice_ratio":101}"#.into(),
            400,
            "nice_ratio",
        ),
        (
            format!("{auth}{json}"),
            r#"{"batch_size":0}"#.into(),
            400,
            "batch_size",
        ),
        (format!("{auth}{json}"), "pause".into(), 400, "not JSON"),
    ];
    for (headers, body, code, says) in &cases {
        let (got, text) = post(addr, headers, body);
        assert_eq!(got, *code, "{headers:?} {body:.40}: {text}");
        assert!(text.contains(says), "{code}: {text}");
    }
    // The token only in the header: never in the URL, even beside it.
    for path in [
        format!("/control?token={TOKEN}"),
        format!("/control?control_token={TOKEN}"),
    ] {
        let (got, text) = send(
            addr,
            &format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{json}"),
            br#"{"pause":true}"#,
        );
        assert_eq!(got, 401, "{path}: {text}");
        assert!(text.contains("never in the URL"), "{text}");
    }
    let status = get(addr, "/status", &[]).json();
    assert_eq!(status["paused"], false, "nothing accepted: {status}");
    assert_eq!(db.bytes(), before, "the database untouched");
    let events = Stream::open(addr, "/events", &[]).rest();
    assert!(
        events.iter().all(|e| e.event != "control"),
        "nothing logged as a command"
    );
    assert_eq!(data(events.last().unwrap())["status"], "ok");
    assert_eq!(
        p.wait().code(),
        Some(0),
        "the run went on as if nothing happened"
    );
    assert_eq!(db.counter_spread(), (500, 0));
}

#[test]
fn control_is_off_without_a_token_and_closed_after_finished() {
    let (_db, p) = held(&[]);
    let (code, text) = authed(p.addr(), r#"{"pause":true}"#);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("--control-token"), "{text}");
    drop(p);
    let (db, mut p) = held(&["--control-token", TOKEN, "--linger", "10"]);
    let _ = Stream::open(p.addr(), "/events", &[]).rest();
    let (code, text) = authed(p.addr(), r#"{"pause":true}"#);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("finished"), "{text}");
    let (code, _) = send(
        p.addr(),
        "GET /control HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"",
    );
    assert_eq!(code, 405);
    p.signal("TERM");
    let _ = p.wait();
    assert_eq!(db.counter_spread(), (500, 0));
}

/// A run that is one transaction never waits between chunks: a live
/// sleep or nice ratio would be accepted and do nothing, so it is refused
/// as a pause is; the chunk time still applies, and so does a zero, which
/// asks for no wait.
#[test]
fn a_one_transaction_run_refuses_a_live_sleep_or_nice_ratio() {
    let (db, mut p) = held(&["--control-token", TOKEN, "--dry-run"]);
    for body in [
        r#"{"sleep_ms":100}"#,
        r#"{"nice_ratio":2}"#,
        r#"{"pause":true}"#,
    ] {
        let (code, text) = authed(p.addr(), body);
        assert_eq!(code, 409, "{body}: {text}");
        assert!(text.contains("--dry-run"), "{body}: {text}");
    }
    let (code, text) = authed(
        p.addr(),
        r#"{"chunk_time_ms":50,"sleep_ms":0,"nice_ratio":0}"#,
    );
    assert_eq!(code, 200, "{text}");
    p.signal("TERM");
    let _ = p.wait();
    assert_eq!(db.counter_spread(), (0, 500), "a dry run writes nothing");
}

#[test]
fn pause_holds_no_lock_resume_goes_on_and_each_command_is_an_event() {
    let (db, mut p) = held(&["--control-token", TOKEN]);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    let running = get(p.addr(), "/status", &[]).json();
    assert!(
        running["eta_ms"].is_u64() && running["rate"].is_number(),
        "{running}"
    );
    let (code, status) = authed(p.addr(), r#"{"pause":true}"#);
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["paused"], true);
    let control = s.until("control");
    assert_eq!(data(&control)["action"], "pause");
    assert_eq!(data(&control)["by"], "http");
    assert!(
        data(&control)["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let wait = s.until("throttle");
    assert_eq!(
        (data(&wait)["active"].clone(), data(&wait)["reason"].clone()),
        (true.into(), "paused".into())
    );
    // Its rate and time left from before the pause no longer hold.
    let paused = get(p.addr(), "/status", &[]).json();
    assert!(
        paused["eta_ms"].is_null() && paused["rate"].is_null(),
        "{paused}"
    );
    assert!(paused["run_eta_ms"].is_null(), "{paused}");
    // Paused between chunks: another connection writes at once.
    let c = Connection::open(&db.path).unwrap();
    c.busy_timeout(Duration::ZERO).unwrap();
    c.execute_batch("BEGIN IMMEDIATE; UPDATE t SET counter = counter WHERE id = 1; COMMIT")
        .expect("no lock is held while paused");
    let done = get(p.addr(), "/status", &[]).json()["done"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        get(p.addr(), "/status", &[]).json()["done"].as_u64(),
        Some(done)
    );
    let (code, _) = authed(p.addr(), r#"{"pause":false,"sleep_ms":0,"batch_size":100}"#);
    assert_eq!(code, 200);
    let resumed = s.until("control");
    assert_eq!(data(&resumed)["action"], "resume");
    assert_eq!(data(&resumed)["settings"]["batch_size"], 100);
    assert_eq!(data(&resumed)["settings"]["sleep_ms"], 0);
    let rest = s.rest();
    assert_eq!(data(rest.last().unwrap())["status"], "ok");
    // The new size took effect: the chunks after the resume are of 100.
    let sizes: Vec<u64> = rest
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| data(e)["done"].as_u64().unwrap())
        .collect();
    assert!(
        sizes.windows(2).any(|w| w[1] - w[0] == 100),
        "chunks of 100 after the change: {sizes:?}"
    );
    assert_eq!(p.wait().code(), Some(0));
    assert_eq!(db.counter_spread(), (500, 0), "every row once");
}

#[test]
fn ctl_pauses_re_paces_and_cancels_a_live_run_and_says_why_it_cannot() {
    let (db, mut p) = held(&["--control-token", TOKEN]);
    let base = format!("http://{}/", p.addr());
    let mut s = Stream::open(p.addr(), "/events", &[]);
    s.until("progress");
    let ctl = |args: &str| run(&[&["ctl", &base][..], &words(args)[..]].concat());
    let (code, out, err) = ctl(&format!("pause --control-token {TOKEN}"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("batchsse: pausing at the next chunk boundary")
            || out.starts_with("batchsse: paused,"),
        "{out}"
    );
    assert_eq!(data(&s.until("control"))["by"], "ctl");
    let (code, out, err) = ctl(&format!(
        "set --chunk-time 40 --batch-size auto --control-token {TOKEN} --json"
    ));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("--json is the status");
    assert_eq!(v["settings"]["chunk_time_ms"], 40);
    assert_eq!(v["settings"]["batch_size"], serde_json::Value::Null);
    let (code, _, err) = ctl("resume --control-token nope");
    assert_eq!(code, 2, "a wrong token is refused: {err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = ctl("resume");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--control-token"), "{err}");
    // Cancel while paused: Ctrl-C's path, exit 130.
    let (code, _, err) = ctl(&format!("cancel --control-token {TOKEN}"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.wait_for(Duration::from_secs(10)).code(), Some(130));
    let rest = s.rest();
    assert_eq!(data(rest.last().unwrap())["status"], "cancelled");
    let (done, _) = db.counter_spread();
    assert!(done > 0 && done < 500, "committed chunks kept: {done}");
    // The run is gone: unreachable.
    let (code, _, err) = ctl(&format!("resume --control-token {TOKEN}"));
    assert_eq!(code, 3, "{err}");
}

#[test]
fn ctl_against_a_finished_run_is_refused_with_its_reason() {
    let (_db, mut p) = held(&["--control-token", TOKEN, "--linger", "10"]);
    let _ = Stream::open(p.addr(), "/events", &[]).rest();
    let base = format!("http://{}/", p.addr());
    let (code, _, err) = run(&["ctl", &base, "pause", "--control-token", TOKEN]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("409") && err.contains("finished"), "{err}");
    p.signal("TERM");
    let _ = p.wait();
}

/// `ctl cancel` said "the current chunk rolls back" of an `--atomic` run,
/// whose every chunk rolls back with it (as its own terminal says).
#[test]
fn ctl_cancel_of_a_run_that_is_one_transaction_does_not_say_only_its_chunk_rolls_back() {
    // Held at the gate: the run's /status, all ctl has to go by, does not
    // say it is one transaction either way.
    let (_db, mut p) = held(&["--control-token", TOKEN, "--atomic"]);
    let base = format!("http://{}/", p.addr());
    let (code, out, err) = run(&["ctl", &base, "cancel", "--control-token", TOKEN]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("(the current chunk rolls back;"), "{out}");
    assert!(out.contains("all of an --atomic or --dry-run run"), "{out}");
    assert_eq!(p.wait().code(), Some(130));
}

#[test]
fn ctl_before_the_first_step_says_so_rather_than_zero_of_zero_rows() {
    let (_db, mut p) = held(&["--control-token", TOKEN]);
    let base = format!("http://{}/", p.addr());
    let (code, out, err) = run(&["ctl", &base, "cancel", "--control-token", TOKEN]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(", before the first step; pace:"), "{out}");
    assert!(!out.contains("0/0 rows"), "{out}");
    assert_eq!(p.wait().code(), Some(130));
}

/// A web server that is no batchsse run: it answers one request with
/// `501` and an HTML page, as Python's `http.server` does a `POST`.
fn another_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let t = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().expect("accept");
        tcp.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut head = [0u8; 4096];
        let _ = tcp.read(&mut head);
        let page = "<!DOCTYPE HTML>\n<html><body><h1>Error response</h1>\n<p>Unsupported method ('POST').</p></body></html>\n";
        let _ = write!(
            tcp,
            "HTTP/1.1 501 Not Implemented\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
    });
    (url, t)
}

#[test]
fn ctl_at_an_address_that_is_no_run_exits_3_as_watch_does() {
    // Another web server: not a refusal by a run (exit 2, its page
    // printed whole), but no run at that address.
    let (url, t) = another_server();
    let (code, _, err) = run(&["ctl", &url, "pause", "--control-token", TOKEN]);
    t.join().expect("server");
    assert_eq!(code, 3, "{err}");
    // The base URL was given: the server there is another program.
    assert!(
        err.contains(&format!("the server at {url} is not a batchsse run")),
        "{err}"
    );
    assert!(!err.contains("<html>"), "the page is not printed: {err}");
    // A run's address with a path that is not its own (a wrong proxy
    // prefix): its 404 is no refusal of the command either.
    let (_db, mut p) = held(&["--control-token", TOKEN]);
    let wrong = format!("http://{}/prefix/", p.addr());
    let (code, _, err) = run(&["ctl", &wrong, "pause", "--control-token", TOKEN]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("404") && err.contains("POST /prefix/control"),
        "{err}"
    );
    assert!(err.contains("give the run's base URL"), "{err}");
    // The run's own refusals stay exit 2.
    let base = format!("http://{}/", p.addr());
    let (code, _, err) = run(&["ctl", &base, "pause", "--control-token", "wrong"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refused the command (401)"), "{err}");
    // ctl did send the token as the header: what is wrong is the token.
    assert!(
        err.contains("it is not this run's --control-token (give the one the run was started with"),
        "{err}"
    );
    p.signal("TERM");
    let _ = p.wait();
}

#[test]
fn a_command_racing_the_end_of_the_run_never_hangs_it_or_leaves_a_transaction_open() {
    // One slow chunk, which is the last: commands sent while it runs find
    // no chunk boundary left, and the run ends as usual.
    let db = TempDb::counters(20000);
    db.conn()
        .execute_batch(
            "CREATE TABLE spin(n INTEGER);
             INSERT INTO spin WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 400) SELECT i FROM s;",
        )
        .unwrap();
    let plan = db.file(
        "plan.json",
        &serde_json::json!({"name": "race", "steps": [{
            "sql": "UPDATE t SET counter = counter + 1 + (SELECT 0 * count(*) FROM spin WHERE n > t.id % 2) WHERE id BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "key": "id"}
        }]})
        .to_string(),
    );
    let mut p = serving(
        &db,
        path_str(&plan),
        &[
            "--batch-size",
            "20000",
            "--control-token",
            TOKEN,
            "--wait-for-clients",
            "1",
            // A pause in the last step is answered as the run ends, so the
            // next command often came as the server shut down, and found
            // no answer: lingering, it gets its 409.
            "--linger",
            "2",
        ],
    );
    let addr = p.addr();
    let mut s = Stream::open(addr, "/events", &[]);
    wait_status(addr, |v| v["state"] == "running");
    let mut answers = Vec::new();
    for body in [
        r#"{"pause":true}"#,
        r#"{"chunk_time_ms":5}"#,
        r#"{"pause":false}"#,
    ]
    .iter()
    .cycle()
    .take(60)
    {
        if p.child.try_wait().expect("try_wait").is_some() || TcpStream::connect(addr).is_err() {
            break;
        }
        answers.push(authed(addr, body).0);
    }
    let _ = s.rest();
    assert_eq!(p.wait_for(Duration::from_secs(20)).code(), Some(0));
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|c| *c == 200 || *c == 409),
        "{answers:?}"
    );
    assert_eq!(db.counter_spread(), (20000, 0));
    let c = Connection::open(&db.path).unwrap();
    c.busy_timeout(Duration::ZERO).unwrap();
    c.execute_batch("BEGIN IMMEDIATE; COMMIT")
        .expect("no transaction left open");
}

/// A client with the token that sends half its body and stops gets `408`
/// once the body's time is up, as a head sent half-way is cut off: it
/// does not hold its connection until the run ends.
#[test]
fn a_body_sent_half_way_is_answered_408() {
    let (db, mut p) = held(&["--control-token", TOKEN]);
    let before = db.bytes();
    let mut tcp = TcpStream::connect(p.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"pause\""
    );
    tcp.write_all(head.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("did not arrive within 10 s"), "{answer}");
    assert!(started.elapsed() >= Duration::from_secs(9), "{started:?}");
    assert_eq!(db.bytes(), before);
    assert!(p.child.try_wait().unwrap().is_none(), "the run goes on");
}

#[test]
fn a_hostile_host_gets_421_on_every_route_unless_allowed() {
    let (_db, p) = held(&["--control-token", TOKEN, "--allow-host", "batch.internal"]);
    let addr = p.addr();
    for route in ["/", "/events", "/status", "/healthz", "/control", "/nope"] {
        let (code, text) = send(
            addr,
            &format!(
                "GET {route} HTTP/1.1\r\nHost: evil.example:{}\r\n",
                addr.port()
            ),
            b"",
        );
        assert_eq!(code, 421, "{route}: {text}");
        assert!(text.contains("--allow-host"), "{text}");
        // Each name once: the server's own address is one of the three.
        assert!(
            text.contains("answers only to 127.0.0.1, localhost or [::1], not"),
            "{text}"
        );
    }
    let (code, _) = send(
        addr,
        "POST /control HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n",
        br#"{"cancel":true}"#,
    );
    assert_eq!(code, 421, "a rebound page cannot steer the run");
    // A second name behind an allowed one is not let through.
    let (code, text) = send(
        addr,
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n",
        b"",
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("more than one Host header"), "{text}");
    let (code, text) = post(
        addr,
        &format!(
            "Host: evil.example\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        ),
        r#"{"cancel":true}"#,
    );
    assert_eq!(code, 400, "two names cannot steer the run either: {text}");
    for host in [
        "localhost",
        "127.0.0.1:9",
        "[::1]:7077",
        "batch.internal",
        "BATCH.internal:443",
    ] {
        let (code, text) = send(
            addr,
            &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n"),
            b"",
        );
        assert_eq!(code, 200, "{host}: {text}");
    }
}

/// The address the listening line prints must answer. On a loopback
/// address other than 127.0.0.1 (all of 127.0.0.0/8 is loopback), a `Host`
/// naming that very address is no rebinding: it gets the run, and `watch`
/// follows it. Another loopback literal still gets `421`.
#[test]
fn a_server_on_another_loopback_address_answers_to_that_address() {
    let db = TempDb::counters(20);
    let plan = db.file("plan.json", &counter_plan("lo2", 10));
    let mut p = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &words("--listen 127.0.0.2:0 --progress none --wait-for-clients 1"),
    ));
    let addr = p.addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.2");
    let (code, text) = send(
        addr,
        &format!("GET /status HTTP/1.1\r\nHost: {addr}\r\n"),
        b"",
    );
    assert_eq!(code, 200, "{text}");
    let other = format!(
        "GET /status HTTP/1.1\r\nHost: 127.0.0.3:{}\r\n",
        addr.port()
    );
    let (code, text) = send(addr, &other, b"");
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("[::1] or 127.0.0.2, not"), "{text}");
    let mut w = spawn(
        &["watch", &format!("http://{addr}/"), "--progress", "none"],
        |_| {},
    );
    assert_eq!(w.wait().code(), Some(0), "{}", w.stderr());
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (20, 0));
}

#[test]
fn a_token_typed_beside_no_serve_is_refused_but_one_from_the_environment_is_not() {
    let db = TempDb::counters(10);
    let plan = db.file("plan.json", &counter_plan("quiet", 5));
    let before = db.bytes();
    for flag in ["--control-token", "--token"] {
        let (code, _, err) = run(&run_args(
            &db,
            path_str(&plan),
            &["--no-serve", flag, "t0k"],
        ));
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(flag) && err.contains("--no-serve"), "{err}");
        assert_eq!(db.bytes(), before, "{flag}: nothing ran");
    }
    let mut p = Proc::start_with(&run_args(&db, path_str(&plan), &["--no-serve"]), |c| {
        c.env("BATCHSSE_CONTROL_TOKEN", "t0k")
            .env("BATCHSSE_TOKEN", "t0k");
    });
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (10, 0));
}

/// An undo takes back the run's chunks as they were recorded: a live
/// chunk time or batch size would be accepted and change nothing, so it is
/// refused, by `POST /control` and by `ctl`, with the reason; a sleep or
/// nice ratio still applies.
#[test]
fn an_undo_refuses_a_live_chunk_time_or_batch_size_and_takes_a_sleep() {
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("steer", 50));
    run_undoable(&db, &plan);
    let dbp = path_str(&db.path);
    let mut p = Proc::start(&words(&format!(
        "undo --db {dbp} --plan steer --listen 127.0.0.1:0 --progress plain --wait-for-clients 1 --control-token {TOKEN}"
    )));
    for body in [r#"{"chunk_time_ms":50}"#, r#"{"batch_size":100}"#] {
        let (code, text) = authed(p.addr(), body);
        assert_eq!(code, 409, "{body}: {text}");
        assert!(
            text.contains("as they were recorded") && text.contains("sleep_ms still apply"),
            "{body}: {text}"
        );
    }
    let base = format!("http://{}/", p.addr());
    let (code, _, err) = run(&[
        "ctl",
        &base,
        "set",
        "--batch-size",
        "100",
        "--control-token",
        TOKEN,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("as they were recorded"), "{err}");
    let (code, text) = authed(p.addr(), r#"{"sleep_ms":5,"nice_ratio":0}"#);
    assert_eq!(code, 200, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
    assert_eq!(status["kind"], "undo", "{text}");
    // Its pace is told as what it is: the run's chunks, not a chunk time
    // and a batch size that do nothing.
    let (code, out, err) = run(&[
        "ctl",
        &base,
        "set",
        "--sleep",
        "1",
        "--control-token",
        TOKEN,
    ]);
    assert_eq!(code, 0, "{err}");
    let said = "pace: the run's chunks, as recorded, nice ratio 0, sleep 1 ms";
    assert!(out.contains(said) && !out.contains("chunks ~"), "{out}");
    let _s = Stream::open(p.addr(), "/events", &[]).rest();
    assert_eq!(p.wait_for(PATIENCE).code(), Some(0), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (0, 500), "every row taken back");
    let err = p.stderr();
    let line = "new pace: the run's chunks, as recorded, nice ratio 0, sleep 5 ms over HTTP";
    assert!(err.contains(line) && !err.contains("chunks of ~"), "{err}");
}

/// `batchsse ctl URL pause --control-token "$T"` typed in another terminal,
/// where `T` was never set, sends an empty token: refused before anything
/// is sent, saying why a variable may be empty there, and not "leave it
/// unset", which `ctl` refuses in turn (it needs the token).
#[test]
fn ctl_with_an_empty_control_token_says_where_it_may_have_gone() {
    let (code, _, err) = run(&["ctl", "127.0.0.1:9", "pause", "--control-token", ""]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err.trim_end(),
        "batchsse: --control-token (or BATCHSSE_CONTROL_TOKEN) is empty: give the run's control token (a shell variable such as $T holds it only in the shell that set it; set it in this one too)",
    );
}
