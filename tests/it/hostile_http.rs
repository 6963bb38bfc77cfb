//! The stream server against small hostile requests: ids with a sign,
//! `CONNECT`, two credentials, a `Host` that is not text, a `-0` in a
//! command, a pause sent during the run's last chunk, and one lifted before
//! it held.

use std::net::SocketAddr;

use serde_json::Value;

use crate::util::*;

const TOKEN: &str = "v1ewer";
const CONTROL: &str = "c0ntrol";

/// A finished run of a few events that lingers, so late clients and
/// requests of every kind still get answers.
fn lingering(extra: &[&str]) -> (TempDb, Proc) {
    let db = TempDb::counters(50);
    let plan = db.file("plan.json", &counter_plan("hostile-http", 10));
    let mut flags = words("--batch-size 10 --linger 60");
    flags.extend_from_slice(extra);
    let p = serving(&db, path_str(&plan), &flags);
    wait_status(p.addr(), |v| v["state"] == "finished");
    (db, p)
}

/// `POST /control` with `headers` (whole lines) and a JSON body: the
/// status and the body.
fn post(addr: SocketAddr, headers: &str, body: &str) -> Response {
    let head = format!(
        "POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    raw(addr, &[head.as_bytes(), body.as_bytes()].concat())
}

fn first_id(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<u64> {
    let mut s = Stream::open(addr, path, headers);
    assert_eq!(s.status, 200, "{path} {headers:?}");
    s.next_event().map(|e| id(&e))
}

#[test]
fn a_last_event_id_of_anything_but_digits_is_no_id() {
    let (_db, p) = lingering(&[]);
    let addr = p.addr();
    assert_eq!(
        first_id(addr, "/events", &[("Last-Event-ID", "3")]),
        Some(4)
    );
    assert_eq!(first_id(addr, "/events?last_event_id=3", &[]), Some(4));
    // Rust's own parse takes a leading `+`; an SSE id is digits only.
    for bad in ["+3", "-3", "3.0", "0x3", "3e0", "+"] {
        let got = first_id(addr, "/events", &[("Last-Event-ID", bad)]);
        assert_eq!(got, Some(1), "Last-Event-ID: {bad}");
    }
    assert_eq!(first_id(addr, "/events?last_event_id=%2B3", &[]), Some(1));
}

#[test]
fn connect_gets_405_with_allow_as_other_methods_do() {
    let (_db, p) = lingering(&[]);
    let addr = p.addr();
    let connect = format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    for req in [connect.into_bytes(), request("BREW", "/status", &[])] {
        let r = raw(addr, &req);
        let line = String::from_utf8_lossy(&req[..12]).into_owned();
        assert_eq!(r.status, 405, "{line}: {}", r.text());
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{line}");
    }
    let r = raw(
        addr,
        format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    assert!(r.text().contains("not a proxy"), "{}", r.text());
}

#[test]
fn two_authorization_headers_are_refused_not_guessed() {
    let (_db, p) = held_run(&["--token", TOKEN, "--control-token", CONTROL]);
    let addr = p.addr();
    let right = format!("Bearer {TOKEN}");
    for pair in [
        [right.as_str(), "Bearer wrong"],
        ["Bearer wrong", right.as_str()],
    ] {
        let headers = [("Authorization", pair[0]), ("Authorization", pair[1])];
        for route in ["/status", "/events", "/healthz"] {
            let r = get(addr, route, &headers);
            assert_eq!(r.status, 400, "{route} {pair:?}: {}", r.text());
            assert!(
                r.text().contains("more than one Authorization header"),
                "{}",
                r.text()
            );
        }
    }
    assert_eq!(
        get(addr, "/status", &[("Authorization", &right)]).status,
        200
    );
    let both = format!("Authorization: Bearer {CONTROL}\r\nAuthorization: Bearer x\r\n");
    let r = post(addr, &both, r#"{"pause": true}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    let status = get(addr, "/status", &[("Authorization", &right)]).json();
    assert_eq!(status["paused"], false, "nothing was done: {status}");
}

#[test]
fn a_host_that_is_not_text_is_said_to_be_invalid() {
    let (_db, p) = lingering(&[]);
    let addr = p.addr();
    for route in ["/status", "/events"] {
        let head = format!("GET {route} HTTP/1.1\r\nHost: \u{e9}vil\r\nConnection: close\r\n\r\n");
        // Latin-1 bytes, as a hostile client would send them.
        let bytes: Vec<u8> = head.chars().map(|c| c as u32 as u8).collect();
        let r = raw(addr, &bytes);
        assert_eq!(r.status, 400, "{route}: {}", r.text());
        assert!(
            r.text().contains("Host header is not valid"),
            "{}",
            r.text()
        );
        assert!(!r.text().contains("\"\""), "{}", r.text());
    }
}

/// A run held at the gate (nothing written yet) until a stream client comes.
fn held_run(extra: &[&str]) -> (TempDb, Proc) {
    let db = TempDb::counters(500);
    let plan = db.file("plan.json", &counter_plan("held", 50));
    let mut flags = words("--wait-for-clients 1 --batch-size 50");
    flags.extend_from_slice(extra);
    let p = serving(&db, path_str(&plan), &flags);
    (db, p)
}

#[test]
fn a_negative_zero_sleep_is_zero_as_a_negative_zero_nice_ratio_is() {
    let (_db, p) = held_run(&["--control-token", CONTROL, "--sleep", "5"]);
    let addr = p.addr();
    let auth = format!("Authorization: Bearer {CONTROL}\r\n");
    for (body, kept) in [
        (r#"{"sleep_ms": -0}"#, "sleep_ms"),
        (r#"{"nice_ratio": -0}"#, "nice_ratio"),
    ] {
        let r = post(addr, &auth, body);
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let v = r.json()["settings"][kept].as_f64();
        assert_eq!(v, Some(0.0), "{body}: {}", r.text());
    }
    let r = post(addr, &auth, r#"{"sleep_ms": 2.5}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .contains("sleep_ms must be a whole number from 0 to 600000; send e.g."),
        "{}",
        r.text()
    );
}

/// One chunk, and the last: an `UPDATE` whose uncorrelated subquery takes
/// about a second (evaluated once per statement).
const SLOW_CHUNK: &str = "UPDATE t SET counter = counter + 1 + 0 * (SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c)) WHERE id BETWEEN :lo AND :hi";

/// A run of one slow chunk (`sql`), its server steerable, held until a
/// client comes: the run, and that client's stream once the step runs.
fn one_slow_chunk(db: &TempDb, sql: &str) -> (Proc, Stream) {
    let plan = serde_json::json!({
        "name": "last-chunk",
        "steps": [{"name": "slow", "sql": sql, "chunk": {"table": "t", "key": "id", "size": 1000}}]
    });
    let plan = db.file("plan.json", &plan.to_string());
    let flags = [
        "--control-token",
        CONTROL,
        "--wait-for-clients",
        "1",
        "--linger",
        "30",
    ];
    let p = serving(db, path_str(&plan), &flags);
    let mut s = Stream::open(p.addr(), "/events", &[]);
    assert_eq!(data(&s.until("step"))["state"], "running");
    (p, s)
}

#[test]
fn a_pause_during_the_last_chunk_is_answered_with_the_finished_run() {
    let db = TempDb::counters(100);
    let (p, mut s) = one_slow_chunk(&db, SLOW_CHUNK);
    let url = format!("http://{}/", p.addr());
    let (code, out, err) = run(&["ctl", &url, "pause", "--control-token", CONTROL]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("batchsse: the run finished (ok, 1/1 steps) before a chunk boundary"),
        "{out}"
    );
    let rest = s.rest();
    let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert!(!names.contains(&"throttle"), "it never paused: {names:?}");
    assert_eq!(names.last(), Some(&"finished"), "{names:?}");
    let last: Value = data(rest.last().unwrap());
    assert_eq!(last["status"], "ok");
}

/// The answer to a pause in the last step waits for it to take hold; a
/// resume sent meanwhile lifts it, and `ctl pause` said "pausing at the next
/// chunk boundary" of a run that was no longer pausing.
#[test]
fn a_pause_lifted_before_it_held_is_said_to_be_lifted() {
    let db = TempDb::counters(100);
    let slow = SLOW_CHUNK.replace("x < 1000000", "x < 3000000");
    let (p, mut s) = one_slow_chunk(&db, &slow);
    let url = format!("http://{}/", p.addr());
    let ctl = |what: &str| run(&["ctl", &url, what, "--control-token", CONTROL]);
    std::thread::scope(|scope| {
        let pause = scope.spawn(|| ctl("pause"));
        assert_eq!(data(&s.until("control"))["action"], "pause");
        let (code, _, err) = ctl("resume");
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = pause.join().unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with("batchsse: resumed by another command before the pause took hold"),
            "{out}"
        );
    });
    let rest = s.rest();
    assert_eq!(data(rest.last().unwrap())["status"], "ok");
}
