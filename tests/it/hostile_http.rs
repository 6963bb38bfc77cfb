//! The stream server against small hostile requests: ids with a sign,
//! `CONNECT`, two credentials, a `Host` that is not text, a `-0` in a
//! command, and a pause sent during the run's last chunk.

use std::net::SocketAddr;

use crate::util::*;

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