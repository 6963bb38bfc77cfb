//! The shared event log seen over HTTP: many clients at once, a client that
//! stops reading, and a log compacted on a long run. Real binary, real
//! SQLite file, real sockets.

use std::net::SocketAddr;

use crate::util::*;

fn counters_run(db: &TempDb, batch: u64, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let plan = db.file("plan.json", &counter_plan("fanout", batch));
    let batch = batch.to_string();
    let mut args = run_args(
        db,
        path_str(&plan),
        &["--listen", "127.0.0.1:0", "--batch-size", &batch],
    );
    args.extend_from_slice(extra);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Proc::start_with(&args, move |c| {
        for (k, v) in env {
            c.env(k, v);
        }
    })
}

#[test]
fn many_concurrent_clients_each_get_every_event_once_in_order() {
    const CLIENTS: usize = 40;
    let db = TempDb::counters(2_000);
    let n = CLIENTS.to_string();
    let mut p = counters_run(
        &db,
        20,
        &["--wait-for-clients", &n, "--progress", "none"],
        &[],
    );
    let addr = p.addr();
    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| std::thread::spawn(move || Stream::open(addr, "/events", &[]).rest()))
        .collect();
    let all: Vec<_> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    assert!(p.wait().success(), "{}", p.stderr());
    let first = &all[0];
    let last = first.last().expect("events");
    assert_eq!(last.event, "finished");
    assert!(first.iter().filter(|e| e.event == "progress").count() >= 100);
    for evs in &all {
        assert_contiguous(evs, 1);
        assert_eq!(evs.len(), first.len(), "every client got the same events");
        assert_eq!(
            evs.iter().map(|e| &e.data).collect::<Vec<_>>(),
            first.iter().map(|e| &e.data).collect::<Vec<_>>()
        );
    }
    assert_eq!(db.counter_spread(), (2_000, 0));
}

/// A client that sends its request and then reads nothing; with
/// `tiny_buffer`, a 4 KiB receive buffer makes its socket fill early (but
/// a window that small makes reading later slow, so a client that will
/// read again keeps the default).
fn stalled_client(addr: SocketAddr, tiny_buffer: bool) -> std::net::TcpStream {
    stalled_at(addr, "/events", tiny_buffer)
}

/// [`stalled_client`], asking for `target`.
fn stalled_at(addr: SocketAddr, target: &str, tiny_buffer: bool) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if tiny_buffer {
            sock.set_recv_buffer_size(4096).unwrap();
        }
        let mut s = sock.connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut s, &request("GET", target, &[]))
            .await
            .unwrap();
        s.into_std().unwrap()
    })
}

/// A run of 30,000 progress events, about 10 MB of stream (far more than a
/// stalled client's socket buffers on both ends can hold), watched by one
/// client that never reads and one that reads everything, which is returned.
fn a_run_with_a_stalled_client(
    db: &TempDb,
    drain_secs: &str,
    tiny_buffer: bool,
) -> (Proc, std::net::TcpStream, Vec<batchsse::sse::ParsedEvent>) {
    let mut args = words("--wait-for-clients 2 --dry-run --progress none --drain-timeout");
    args.push(drain_secs);
    let p = counters_run(db, 2, &args, &[]);
    let stalled = stalled_client(p.addr(), tiny_buffer);
    let evs = Stream::open(p.addr(), "/events", &[]).rest();
    (p, stalled, evs)
}

#[test]
fn a_client_that_stops_reading_delays_neither_the_run_nor_other_clients() {
    let db = TempDb::counters(60_000);
    let (mut p, mut stalled, evs) = a_run_with_a_stalled_client(&db, "1", true);
    assert_contiguous(&evs, 1);
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("finished"));
    assert!(evs.len() > 30_000, "{} events", evs.len());
    // The run ended, and the process exits despite the stalled client
    // (after the drain timeout), bounded by PATIENCE.
    assert!(p.wait().success(), "{}", p.stderr());
    // The stall was real: the stalled client never had room for the end.
    use std::io::Read;
    stalled.set_nonblocking(false).unwrap();
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("event: finished"),
        "the stalled client got the whole stream ({} bytes); nothing was tested",
        got.len()
    );
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_its_slot_freed() {
    // A finished run's replay of 30,000 events, about 10 MB: far more than a
    // stalled client's socket buffers hold, so its writes stop for good.
    let db = TempDb::counters(60_000);
    let flags = words("--dry-run --progress none --max-clients 1 --linger 120");
    let p = counters_run(&db, 2, &flags, &[("BATCHSSE_STALL_TIMEOUT_MS", "1000")]);
    let addr = p.addr();
    wait_status(addr, |v| v["state"] == "finished");
    // The direct stream path, then hyper's, which takes an absolute URL.
    let absolute = format!("http://{addr}/events");
    for target in ["/events", absolute.as_str()] {
        let stalled = stalled_at(addr, target, true);
        wait_status(addr, |v| v["clients"] == 1);
        let refused = get(addr, "/events", &[]);
        assert_eq!(refused.status, 503, "{target}: {}", refused.text());
        let since = std::time::Instant::now();
        let evs = loop {
            let mut s = Stream::open(addr, "/events", &[]);
            if s.status == 200 {
                break s.rest();
            }
            assert!(
                since.elapsed() < std::time::Duration::from_secs(20),
                "{target}: the stalled client still holds the only slot"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert_contiguous(&evs, 1);
        assert_eq!(evs.last().map(|e| e.event.as_str()), Some("finished"));
        assert!(evs.len() > 30_000, "{target}: {} events", evs.len());
        drop(stalled);
    }
}

#[test]
fn a_stalled_client_that_reads_again_gets_every_event_once_in_order() {
    // The writer hands a full socket back to its connection, which waits
    // for room and returns it: the stream must come out whole.
    let db = TempDb::counters(60_000);
    let (mut p, mut slow, fast) = a_run_with_a_stalled_client(&db, "60", false);
    assert_eq!(fast.last().map(|e| e.event.as_str()), Some("finished"));
    // Only now does the slow client read, from its first byte.
    use std::io::Read;
    slow.set_nonblocking(false).unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    slow.read_to_end(&mut got)
        .expect("the stream ends with a clean close");
    let evs = events_after_head(&got);
    assert_contiguous(&evs, 1);
    assert_eq!(
        evs.len(),
        fast.len(),
        "the slow client got what the fast one got"
    );
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("finished"));
    assert!(p.wait().success(), "{}", p.stderr());
}

#[test]
fn a_compacted_log_keeps_every_kept_event_for_late_joiners_and_resumes() {
    let db = TempDb::counters(1_200);
    let mut p = counters_run(
        &db,
        2,
        &words("--linger 30 --wait-for-clients 1 --progress plain"),
        &[("BATCHSSE_LOG_COMPACT_AT", "200")],
    );
    let addr = p.addr();
    let live = Stream::open(addr, "/events", &[]).rest();
    let finished_id = id(live.last().expect("events"));
    // A very late joiner, after `finished`.
    let late = Stream::open(addr, "/events", &[]).rest();
    let ids: Vec<u64> = late.iter().map(id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    assert!(
        late.len() < 400,
        "600 progress events compacted to {}",
        late.len()
    );
    assert_eq!(late.first().map(|e| e.event.as_str()), Some("start"));
    assert_eq!(ids.last(), Some(&finished_id));
    // Every start/step/message/finished the live client saw is still there,
    // but the pace messages a later one superseded.
    let kept = |evs: &[batchsse::sse::ParsedEvent], pace: bool| -> Vec<String> {
        evs.iter()
            .filter(|e| e.event != "progress")
            .filter(|e| data(e)["target"]["settings"].is_object() == pace)
            .map(|e| format!("{:?}{}", e.id, e.data))
            .collect()
    };
    assert_eq!(kept(&late, false), kept(&live, false));
    let paces = kept(&live, true);
    assert_eq!(kept(&late, true), paces[paces.len().saturating_sub(1)..]);
    // The final progress of the step survived: done == total.
    let last_progress = late
        .iter()
        .rev()
        .find(|e| e.event == "progress")
        .map(data)
        .expect("progress");
    assert_eq!(last_progress["done"], last_progress["total"]);
    // Resuming from an id that was compacted away: every later kept event, once.
    let gone = (1..finished_id)
        .find(|i| !ids.contains(i))
        .expect("an id was compacted away");
    let header = (gone).to_string();
    let resumed = Stream::open(addr, "/events", &[("Last-Event-ID", &header)]).rest();
    let want: Vec<u64> = ids.iter().copied().filter(|i| *i > gone).collect();
    assert_eq!(resumed.iter().map(id).collect::<Vec<_>>(), want);
    // The snapshot does not depend on what was dropped.
    let status = get(addr, "/status", &[]).json();
    assert_eq!(status["state"], "finished");
    assert_eq!(status["last_event_id"], finished_id);
    assert_eq!(status["rows_changed"], 1_200);
    p.signal("TERM");
    assert!(p.wait().success(), "{}", p.stderr());
    // The terminal follower read the same log to its end.
    assert!(
        p.stderr()
            .contains("finished ok: 1/1 steps, 1,200 rows changed"),
        "{}",
        p.stderr()
    );
    assert_eq!(db.counter_spread(), (1_200, 0));
}

/// A step's name is user text, repeated in each of its `progress` events:
/// a 30,000-character name made 300 chunks' events 9 MB, all held (the
/// log compacted only by count). Its bytes now compact it too, and a
/// late joiner still gets a consistent stream.
#[test]
fn a_log_of_big_events_compacts_by_bytes_and_late_joiners_get_a_consistent_stream() {
    let db = TempDb::counters(300);
    let step = serde_json::json!({
        "name": "n".repeat(30_000),
        "sql": "UPDATE t SET counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
        "chunk": {"table": "t", "key": "id", "size": 1}
    });
    let plan = serde_json::json!({"name": "big names", "steps": [step]});
    let plan = db.file("plan.json", &plan.to_string());
    let mut args = run_args(&db, path_str(&plan), &["--progress", "none"]);
    args.extend(words(
        "--listen 127.0.0.1:0 --batch-size 1 --linger 30 --wait-for-clients 1",
    ));
    // About 33 of these events; the count alone (32,768) is never reached.
    let mut p = Proc::start_with(&args, |c| {
        c.env("BATCHSSE_LOG_COMPACT_BYTES", "2000000");
    });
    let addr = p.addr();
    let live = Stream::open(addr, "/events", &[]).rest();
    let finished_id = id(live.last().expect("events"));
    let mut late = Stream::open(addr, "/events", &[]);
    let evs = late.rest();
    let ids: Vec<u64> = evs.iter().map(id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids rise: {ids:?}");
    assert_eq!(evs.first().map(|e| e.event.as_str()), Some("start"));
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("finished"));
    assert_eq!(ids.last(), Some(&finished_id));
    let progress = evs.iter().filter(|e| e.event == "progress").count();
    assert!(progress < 60, "300 progress events compacted to {progress}");
    assert!(late.bytes.len() < 4 << 20, "{} bytes", late.bytes.len());
    // The step's latest progress is the live one's, done == total.
    let last = |evs: &[batchsse::sse::ParsedEvent]| {
        evs.iter().rev().find(|e| e.event == "progress").map(data)
    };
    let latest = last(&evs).expect("progress");
    assert_eq!(
        (&latest["done"], &latest["total"]),
        (&300.into(), &300.into())
    );
    assert_eq!(Some(latest), last(&live));
    // Every event kept for good is there, the same (by id and bytes,
    // hashed, as the names are long): all but progress and pace messages.
    let kept = |evs: &[batchsse::sse::ParsedEvent]| -> Vec<(u64, u64)> {
        evs.iter()
            .filter(|e| e.event != "progress" && !data(e)["target"]["settings"].is_object())
            .map(|e| {
                use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
                let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(&e.data);
                (id(e), h)
            })
            .collect()
    };
    assert_eq!(kept(&evs), kept(&live));
    let status = get(addr, "/status", &[]).json();
    assert_eq!(status["last_event_id"], finished_id);
    assert_eq!(status["rows_changed"], 300);
    p.signal("TERM");
    assert!(p.wait().success(), "{}", p.stderr());
    assert_eq!(db.counter_spread(), (300, 0));
}

/// The events in a raw response: everything after its head, parsed.
fn events_after_head(raw: &[u8]) -> Vec<batchsse::sse::ParsedEvent> {
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &raw[i + 4..])
        .expect("a response head");
    batchsse::sse::Parser::new().feed(body)
}

#[test]
fn a_viewer_that_leaves_frees_its_slot_at_once() {
    // Nothing is logged while the run waits for its two viewers, so only
    // reading the socket can tell that one left; a failed write would take
    // two 15 s keep-alives.
    let db = TempDb::counters(1_000);
    let mut p = counters_run(
        &db,
        100,
        &words("--wait-for-clients 2 --progress none"),
        &[],
    );
    let addr = p.addr();
    // Sockets only: the run's own files come and go with its chunks (a
    // truncated journal stays open between them).
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", p.child.id()))
            .map(|d| {
                d.flatten()
                    .filter(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let before = open_fds();
    let first = Stream::open(addr, "/events", &[]);
    wait_status(addr, |v| v["clients"] == 1);
    drop(first);
    let left = std::time::Instant::now();
    let soon = std::time::Duration::from_secs(10);
    wait_status(addr, |v| v["clients"] == 0);
    assert!(
        left.elapsed() < soon,
        "the slot was held {:?} after the viewer left",
        left.elapsed()
    );
    // Its socket is closed too, not kept until the next keep-alive.
    while open_fds() > before {
        assert!(
            left.elapsed() < soon,
            "{} open sockets, {before} before the viewer came",
            open_fds()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Only viewers still there count: one more does not open the gate.
    let mut second = Stream::open(addr, "/events", &[]);
    let v = wait_status(addr, |v| v["clients"] == 1);
    assert_eq!(v["state"], "waiting", "{v}");
    let third = Stream::open(addr, "/events", &[]).rest();
    assert_eq!(third.last().map(|e| e.event.as_str()), Some("finished"));
    assert_eq!(second.rest().len(), third.len());
    assert!(p.wait().success(), "{}", p.stderr());
}

#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_stream() {
    // `nc -N` and scripts that shut down their sending side after the
    // request are still reading: end-of-input alone is not a departure.
    let db = TempDb::counters(1_000);
    let mut p = counters_run(
        &db,
        100,
        &words("--wait-for-clients 1 --progress none"),
        &[],
    );
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(p.addr()).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(&request("GET", "/events", &[])).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).expect("the stream ends cleanly");
    let evs = events_after_head(&got);
    assert_contiguous(&evs, 1);
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("finished"));
    assert!(p.wait().success(), "{}", p.stderr());
}

/// A stream client has nothing to send after its request. One that keeps
/// sending (junk, as fast as it can) is read no further past a small
/// allowance, so the kernel's flow control stops it rather than the
/// server's workers spending themselves on tiny reads (four such clients
/// held `/status` up for seconds); it still gets its stream.
#[test]
fn a_stream_client_that_floods_the_server_with_input_is_no_longer_read() {
    use std::io::{Read, Write};
    let db = TempDb::counters(100);
    let pause = db.dir.path().join("pause");
    std::fs::write(&pause, "").unwrap();
    let mut p = counters_run(
        &db,
        10,
        &[
            "--wait-for-clients",
            "1",
            "--progress",
            "none",
            "--pause-file",
            path_str(&pause),
        ],
        &[],
    );
    let mut tcp = std::net::TcpStream::connect(p.addr()).unwrap();
    tcp.write_all(&request("GET", "/events", &[])).unwrap();
    // Loopback buffers hold a few MiB: a server that stops reading blocks
    // the writes long before 256 MiB.
    tcp.set_write_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let junk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    let stalled = loop {
        match tcp.write(&junk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 256 << 20, "the server read {sent} bytes of junk");
    };
    assert!(
        matches!(
            stalled.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{stalled} after {sent} bytes"
    );
    std::fs::remove_file(&pause).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    let evs = events_after_head(&got);
    assert_contiguous(&evs, 1);
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("finished"));
    assert!(p.wait().success(), "{}", p.stderr());
}

/// The backlog of the LISTEN socket on `addr` as the kernel holds it: `ss
/// -ltn` shows it as a listening socket's Send-Q. `Err` says why not.
fn listen_backlog(addr: SocketAddr) -> Result<u32, String> {
    let out = std::process::Command::new("ss")
        .args(["-ltnH"])
        .output()
        .map_err(|e| format!("`ss` (iproute2) cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ss -ltnH` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let local = addr.to_string();
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[0] == "LISTEN" && f[3] == local)
        .ok_or_else(|| format!("`ss -ltnH` lists no socket listening on {local}:\n{text}"))
        .and_then(|f| {
            f[2].parse()
                .map_err(|_| format!("`ss` shows Send-Q {:?} for {local}", f[2]))
        })
}

#[test]
fn the_listen_backlog_holds_a_burst_of_thousands_of_connects() {
    // The kernel caps every backlog at net.core.somaxconn.
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let want = somaxconn.min(4096);
    if want <= 128 {
        skip_unless_ci(&format!(
            "net.core.somaxconn is {somaxconn}, which caps any backlog at or below tokio's default 128"
        ));
        return;
    }
    let db = TempDb::counters(10);
    let p = counters_run(
        &db,
        10,
        &["--wait-for-clients", "1", "--progress", "none"],
        &[],
    );
    match listen_backlog(p.addr()) {
        Ok(backlog) => assert_eq!(backlog, want, "somaxconn {somaxconn}"),
        Err(why) => skip_unless_ci(&why),
    }
}
