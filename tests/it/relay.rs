//! Publishing a run to Redis (`run --publish`) and serving it again from
//! there (`batchsse relay`): real binary, real `redis-server` (one per test,
//! on its own port), real sockets. A client may move between the run's own
//! server and any relay with `Last-Event-ID`: every frame is the same, byte
//! for byte, under the same id.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batchsse::sse::ParsedEvent;
use serde_json::Value;

use crate::util::*;

const RUN_ID_HEADER: &str = "x-batchsse-run-id";

/// The Redis key of a run's stream, and of a plan's latest run.
fn stream_key(run_id: &str) -> String {
    format!("batchsse:run:{run_id}")
}

fn latest_key(plan: &str) -> String {
    format!("batchsse:plan:{plan}:latest")
}

fn redis_conn(redis: &Redis) -> redis::Connection {
    redis::Client::open(redis.url())
        .expect("the test's Redis URL")
        .get_connection()
        .unwrap_or_else(|e| panic!("connect to the test's Redis: {e}\n{}", redis.log()))
}

/// One entry of a published stream: its entry id and its fields in order.
type Entry = (String, Vec<String>);

/// `XRANGE batchsse:run:<run_id> - +`.
fn published(redis: &Redis, run_id: &str) -> Vec<Entry> {
    redis::cmd("XRANGE")
        .arg(stream_key(run_id))
        .arg("-")
        .arg("+")
        .query(&mut redis_conn(redis))
        .expect("XRANGE")
}

fn xlen(redis: &Redis, run_id: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream_key(run_id))
        .query(&mut redis_conn(redis))
        .expect("XLEN")
}

fn ttl(redis: &Redis, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query(&mut redis_conn(redis))
        .expect("TTL")
}

/// Asserts the run's Redis stream holds exactly `events` (what a client
/// read off `/events`): entry `<id>-0` for each, in order, once, with the
/// fields `event` (the event's name, `message` included) and `data` (the
/// SSE `data:` text, byte for byte) and nothing else.
pub(crate) fn assert_published(redis: &Redis, run_id: &str, events: &[ParsedEvent]) {
    let entries = published(redis, run_id);
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    let want: Vec<String> = events.iter().map(|e| format!("{}-0", id(e))).collect();
    assert_eq!(ids, want, "the stream's entry ids, against the events' ids");
    for ((entry_id, fields), e) in entries.iter().zip(events) {
        let mut pairs: Vec<(&str, &str)> = fields
            .chunks(2)
            .map(|kv| (kv[0].as_str(), kv.get(1).map_or("", String::as_str)))
            .collect();
        pairs.sort();
        assert_eq!(
            pairs,
            vec![("data", e.data.as_str()), ("event", e.event.as_str())],
            "entry {entry_id}"
        );
    }
}

/// Polls until the run's Redis stream holds at least `n` entries.
pub(crate) fn wait_published(redis: &Redis, run_id: &str, n: usize) {
    let start = Instant::now();
    while xlen(redis, run_id) < n {
        assert!(
            start.elapsed() < PATIENCE,
            "Redis holds {} of the first {n} events",
            xlen(redis, run_id)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every event's frame in a stream body, exactly as sent, with its id;
/// keep-alive comments are left out, and so is an unfinished frame at the
/// end (a client that left mid-stream). `complete` says whether there was
/// none.
fn raw_frames(body: &[u8]) -> (Vec<(u64, Vec<u8>)>, bool) {
    let mut frames = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.windows(2).position(|w| w == b"\n\n") {
        let frame = &rest[..i + 2];
        rest = &rest[i + 2..];
        let text = String::from_utf8_lossy(frame);
        if text.lines().all(|l| l.starts_with(':')) {
            continue;
        }
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a frame without a numeric id: {text:?}"));
        frames.push((id, frame.to_vec()));
    }
    (frames, rest.is_empty())
}

/// The frames of a stream read to its end.
fn all_frames(s: &Stream) -> Vec<(u64, Vec<u8>)> {
    assert!(s.ended, "the stream has not ended");
    let (frames, complete) = raw_frames(&s.bytes);
    assert!(complete, "the stream ended inside a frame");
    frames
}

fn show(frames: &[(u64, Vec<u8>)]) -> String {
    frames
        .iter()
        .map(|(_, f)| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// A whole run of a counter plan (`name`, chunks of `size`) published to
/// `redis`: its `--progress json` lines and its run id.
fn published_run(redis: &Redis, db: &TempDb, name: &str, size: u64) -> (Vec<Value>, String) {
    let plan = db.file("plan.json", &counter_plan(name, size));
    let url = redis.url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--progress",
        "json",
        "--publish",
        &url,
    ];
    let mut run = Proc::start(&run_args(db, path_str(&plan), &args));
    assert_exits_ok(&mut run, "run", PATIENCE);
    let lines = json_lines(&run.stdout());
    let run_id = lines[0]["data"]["run_id"]
        .as_str()
        .expect("start.run_id")
        .to_owned();
    (lines, run_id)
}

/// Starts `batchsse relay URL ARGS` on a free port.
fn relay(url: &str, args: &[&str]) -> Proc {
    let mut a = vec!["relay", url, "--listen", "127.0.0.1:0"];
    a.extend_from_slice(args);
    Proc::start(&a)
}

/// Runs `batchsse ARGS` (with `env`) to its exit, bounded by PATIENCE:
/// the exit code and stderr.
fn exit_of(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut p = spawn(args, move |c| {
        c.env_remove("BATCHSSE_PUBLISH");
        for (k, v) in env {
            c.env(k, v);
        }
    });
    let code = p.wait().code();
    (code, p.stderr())
}

/// A run of `counter_plan(plan)` over `db`, 10 rows a chunk, 20 ms apart,
/// publishing to `url`; it waits for one stream client and, while
/// `pause` exists, between chunks.
pub(crate) fn publishing_run(
    db: &TempDb,
    plan: &str,
    url: &str,
    pause: &Path,
    extra: &[&str],
) -> Proc {
    let plan = db.file("plan.json", &counter_plan(plan, 10));
    let mut flags = vec![
        "--publish",
        url,
        "--wait-for-clients",
        "1",
        "--batch-size",
        "10",
        "--sleep",
        "20",
        "--pause-file",
        path_str(pause),
    ];
    flags.extend_from_slice(extra);
    serving(db, path_str(&plan), &flags)
}

/// A run of `rows` counters publishing to `url` (Redis `redis` holds what
/// it publishes), paused at its first chunk boundary with one client read
/// up to the pause and Redis holding that much: the run, the client's
/// stream, the events so far, the run id and the pause file.
pub(crate) fn published_until_paused(
    redis: &Redis,
    rows: u64,
    plan: &str,
    url: &str,
    extra: &[&str],
) -> (Proc, Stream, Vec<ParsedEvent>, String, TempDb) {
    let db = TempDb::counters(rows);
    let pause = paused(&db);
    let run = publishing_run(&db, plan, url, &pause, extra);
    let mut s = Stream::open(run.addr(), "/events", &[]);
    let seen = until_paused(&mut s);
    let run_id = run_id_of(&seen[0]);
    wait_published(redis, &run_id, seen.len());
    (run, s, seen, run_id, db)
}

/// A pause file, in place: the run stops at its first chunk boundary.
pub(crate) fn paused(db: &TempDb) -> PathBuf {
    let pause = db.dir.path().join("pause");
    std::fs::write(&pause, "").expect("pause file");
    pause
}

/// Reads until the run waits on its pause file: the events up to and
/// including that `throttle`.
pub(crate) fn until_paused(s: &mut Stream) -> Vec<ParsedEvent> {
    let mut evs = Vec::new();
    loop {
        let e = s
            .next_event()
            .expect("the stream ended before the run paused");
        let paused = e.event == "throttle" && data(&e)["active"] == true;
        evs.push(e);
        if paused {
            return evs;
        }
    }
}

pub(crate) fn run_id_of(start: &ParsedEvent) -> String {
    assert_eq!(start.event, "start", "{start:?}");
    data(start)["run_id"]
        .as_str()
        .expect("start.run_id")
        .to_owned()
}

/// `/status` as JSON, or `None` while it answers anything else.
fn status_of(addr: SocketAddr) -> Option<Value> {
    let r = get(addr, "/status", &[]);
    (r.status == 200)
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

/// Polls a relay's `/status` until `pred` holds.
fn wait_relay_status(relay: &Proc, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = status_of(relay.addr());
        if let Some(v) = v.as_ref().filter(|v| pred(v)) {
            return v.clone();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the relay's /status never matched; last: {v:?}; stderr:\n{}",
            relay.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The run id a server's `HEAD /events` names, if any (the head only, so a
/// server that has no run yet cannot hold the test).
fn head_run_id(addr: SocketAddr) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.write_all(&request("HEAD", "/events", &[])).ok()?;
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    if !line.starts_with("HTTP/1.1 200") {
        return None;
    }
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            return None;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case(RUN_ID_HEADER)
        {
            return Some(v.trim().to_owned());
        }
    }
}

/// Asserts `p` exits 0 within `limit`.
fn assert_exits_ok(p: &mut Proc, who: &str, limit: Duration) {
    let status = p.wait_for(limit);
    assert_eq!(status.code(), Some(0), "{who} stderr:\n{}", p.stderr());
}

#[test]
fn the_redis_helper_starts_kills_and_restarts_on_the_same_port_empty() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    assert!(redis.ping(), "{}", redis.log());
    let port = redis.port;
    let first = redis.pid();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut redis_conn(&redis))
        .expect("SET");
    redis.kill();
    assert!(!redis.ping(), "a killed server still answers");
    redis.restart();
    assert_eq!(redis.port, port);
    assert!(redis.ping(), "{}", redis.log());
    assert_ne!(redis.pid(), first, "a new process answers");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    let k: Option<String> = redis::cmd("GET")
        .arg("k")
        .query(&mut redis_conn(&redis))
        .expect("GET");
    assert_eq!(k, None, "persistence is off: a restart comes back empty");
}

#[test]
fn a_client_moves_from_the_run_to_a_relay_and_every_frame_is_the_same_bytes() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(200);
    let pause = paused(&db);
    let url = redis.url();
    let mut run = publishing_run(&db, "moves", &url, &pause, &["--publish-ttl", "600"]);
    // Client B starts on the run's own server (and opens its gate).
    let mut b = Stream::open(run.addr(), "/events", &[]);
    let b_seen = until_paused(&mut b);
    let run_id = run_id_of(&b_seen[0]);
    let last_b = id(b_seen.last().unwrap());
    // A full reader on the run's server, to compare every frame against.
    // (B may have come before `start` gave the run its id, and then has
    // no run id header; this one comes after.)
    let mut whole = Stream::open(run.addr(), "/events", &[]);
    assert_eq!(whole.header(RUN_ID_HEADER), Some(run_id.as_str()));
    let mut relay_a = relay(&url, &["--run", &run_id, "--linger", "0"]);
    let mut relay_b = relay(&url, &["--run", &run_id, "--linger", "0"]);
    // Client A reads the whole run from relay A.
    let mut a = Stream::open(relay_a.addr(), "/events", &[]);
    assert_eq!(a.status, 200, "relay A stderr:\n{}", relay_a.stderr());
    assert_eq!(a.header(RUN_ID_HEADER), Some(run_id.as_str()));
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    // B leaves the run's server and comes back on relay B at once, whether
    // or not relay B has copied that far yet.
    let b_bytes = std::mem::take(&mut b.bytes);
    drop(b);
    let resume = last_b.to_string();
    let mut b2 = Stream::open(relay_b.addr(), "/events", &[("Last-Event-ID", &resume)]);
    assert_eq!(b2.status, 200, "relay B stderr:\n{}", relay_b.stderr());
    assert_eq!(b2.header(RUN_ID_HEADER), Some(run_id.as_str()));
    // The rest of the run happens while B listens to relay B.
    std::fs::remove_file(&pause).expect("remove the pause file");
    let b_rest = b2.rest();
    let a_all = a.rest();
    let all = whole.rest();
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert_contiguous(&all, 1);
    let fin = all.last().expect("events");
    assert_eq!(fin.event, "finished");
    assert_eq!(data(fin)["status"], "ok");
    let n = id(fin);
    assert!(n > last_b + 10, "the run went on after B moved: {n} events");
    // Every id once, in order, for A and for B across the move.
    assert_contiguous(&a_all, 1);
    assert_contiguous(&b_rest, last_b + 1);
    assert_eq!(id(a_all.last().unwrap()), n);
    assert_eq!(id(b_rest.last().unwrap()), n);
    // And the raw bytes of every frame are the same on all three servers.
    let want = all_frames(&whole);
    let got_a = all_frames(&a);
    assert!(
        got_a == want,
        "relay A:\n{}\nrun:\n{}",
        show(&got_a),
        show(&want)
    );
    let (b_first, _) = raw_frames(&b_bytes);
    let mut got_b: Vec<_> = b_first.into_iter().filter(|(i, _)| *i <= last_b).collect();
    got_b.extend(all_frames(&b2));
    assert!(
        got_b == want,
        "B (run, then relay B):\n{}\nrun:\n{}",
        show(&got_b),
        show(&want)
    );
    // The relays end with the run.
    assert_exits_ok(&mut relay_a, "relay A", PATIENCE);
    assert_exits_ok(&mut relay_b, "relay B", PATIENCE);
    // What Redis holds is the same run, and it expires.
    assert_published(&redis, &run_id, &all);
    let mut con = redis_conn(&redis);
    let latest: Option<String> = redis::cmd("GET")
        .arg(latest_key("moves"))
        .query(&mut con)
        .expect("GET");
    assert_eq!(latest.as_deref(), Some(run_id.as_str()));
    for key in [stream_key(&run_id), latest_key("moves")] {
        let t = ttl(&redis, &key);
        assert!(
            (1..=600).contains(&t),
            "TTL {key} = {t}, want 1..=600 (--publish-ttl)"
        );
    }
    assert_eq!(db.counter_spread(), (200, 0));
}

#[test]
fn a_relay_started_after_the_run_replays_all_of_it_and_exits() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(300);
    let url = redis.url();
    let (lines, run_id) = published_run(&redis, &db, "replayed", 30);
    let want: Vec<_> = lines.iter().map(line_triple).collect();
    assert_eq!(want.last().map(|t| t.1.as_str()), Some("finished"));
    // A relay that comes after the end serves the whole run from Redis.
    let mut late = relay(&url, &["--run", &run_id, "--linger", "3"]);
    let mut s = Stream::open(late.addr(), "/events", &[]);
    assert_eq!(s.status, 200, "relay stderr:\n{}", late.stderr());
    assert_eq!(s.header(RUN_ID_HEADER), Some(run_id.as_str()));
    let evs = s.rest();
    assert!(s.ended, "the relay's stream ends after finished");
    assert_contiguous(&evs, 1);
    assert_eq!(evs.iter().map(event_triple).collect::<Vec<_>>(), want);
    assert_exits_ok(&mut late, "relay", PATIENCE);
    assert!(
        late.stderr()
            .contains(&format!("run {run_id} finished (ok)")),
        "the relay says how the run ended:\n{}",
        late.stderr()
    );
    // With nothing left to wait for and no linger, it goes at once.
    let mut gone = relay(&url, &["--run", &run_id, "--linger", "0"]);
    assert_exits_ok(&mut gone, "relay --linger 0", Duration::from_secs(15));
}

/// A run of `rows` counters publishing to a Redis of its own, paused
/// with one stream client read up to the pause (`seen`), Redis holding all
/// of it; then Redis is killed and the pause file removed, so the run goes
/// on without it. `None` where `redis-server` is missing. Bind `db`: the
/// run's files go with it.
struct RedisLost {
    redis: Redis,
    run: Proc,
    stream: Stream,
    seen: Vec<ParsedEvent>,
    run_id: String,
    db: TempDb,
}

fn redis_lost_at_a_pause(rows: u64, plan: &str, extra: &[&str]) -> Option<RedisLost> {
    let mut redis = Redis::start()?;
    let db = TempDb::counters(rows);
    let pause = paused(&db);
    let run = publishing_run(&db, plan, &redis.url(), &pause, extra);
    let mut stream = Stream::open(run.addr(), "/events", &[]);
    let seen = until_paused(&mut stream);
    let run_id = run_id_of(&seen[0]);
    wait_published(&redis, &run_id, seen.len());
    redis.kill();
    std::fs::remove_file(&pause).expect("remove the pause file");
    Some(RedisLost {
        redis,
        run,
        stream,
        seen,
        run_id,
        db,
    })
}

#[test]
fn redis_lost_mid_run_gets_every_event_once_when_it_is_back() {
    // Redis has what happened so far; then it dies, and comes back empty.
    let Some(RedisLost {
        mut redis,
        mut run,
        stream: mut s,
        mut seen,
        run_id,
        db,
    }) = redis_lost_at_a_pause(300, "lost", &["--drain-timeout", "30"])
    else {
        return;
    };
    let is_warning = |e: &ParsedEvent| {
        e.event == "message"
            && data(e)["status"] == "warn"
            && data(e)["message"]
                .as_str()
                .is_some_and(|m| m.contains("lost the connection to Redis"))
    };
    loop {
        let e = s
            .next_event()
            .expect("the run ended without a warning that Redis was lost");
        let warned = is_warning(&e);
        seen.push(e);
        if warned {
            break;
        }
    }
    redis.restart();
    seen.extend(s.rest());
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert_contiguous(&seen, 1);
    let fin = seen.last().unwrap();
    assert_eq!(fin.event, "finished");
    assert_eq!(
        data(fin)["status"],
        "ok",
        "losing Redis does not fail the run"
    );
    assert_eq!(db.counter_spread(), (300, 0));
    // Redis came back empty; the publisher sent the whole run again, once.
    assert_published(&redis, &run_id, &seen);
    let t = ttl(&redis, &stream_key(&run_id));
    assert!(
        (86_400 - 300..=86_400).contains(&t),
        "TTL {t}: the default --publish-ttl is 86400"
    );
}

/// `INFO persistence`'s word on the last background save: `ok`, `err`.
fn last_save(redis: &Redis) -> String {
    let info: String = redis_cmd(redis, redis::cmd("INFO").arg("persistence"));
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_last_bgsave_status:"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn a_redis_that_cannot_save_for_a_while_gets_every_event_once_it_can() {
    // A Redis whose snapshot fails (a full or read-only disk) answers
    // every write with MISCONF until one succeeds. That passes, like OOM;
    // it was taken for a refusal, and publishing stopped for the rest of
    // the run.
    let saves = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = ["--save", "3600 1", "--dir", &saves.path().to_string_lossy()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let Some(redis) = Redis::start_with(&args) else {
        return;
    };
    let url = redis.url();
    let extra = ["--drain-timeout", "30"];
    let (mut run, mut s, mut seen, run_id, db) =
        published_until_paused(&redis, 300, "misconf", &url, &extra);
    let Some(guard) = immutable(saves.path()) else {
        return;
    };
    let _: () = redis_cmd(&redis, &mut redis::cmd("BGSAVE"));
    wait_until(|| last_save(&redis) == "err");
    // At start, Redis's answer (it refuses even PING), not "is it running?".
    let (code, err) = exit_of(
        &["relay", &url, "--run", &run_id, "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("MISCONF") && err.contains("try again once it can"),
        "{err}"
    );
    std::fs::remove_file(db.dir.path().join("pause")).expect("remove the pause file");
    loop {
        let e = s.next_event().expect("the run ended before Redis refused");
        let said = e.event == "message" && e.data.contains("MISCONF");
        seen.push(e);
        if said {
            break;
        }
    }
    drop(guard);
    let _: () = redis_cmd(&redis, &mut redis::cmd("BGSAVE"));
    wait_until(|| last_save(&redis) == "ok");
    seen.extend(s.rest());
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert!(!run.stderr().contains("not published"), "{}", run.stderr());
    assert_contiguous(&seen, 1);
    assert_published(&redis, &run_id, &seen);
}

#[test]
fn at_exit_with_redis_still_down_the_run_says_how_many_events_were_not_published() {
    let Some(RedisLost {
        mut run,
        stream: mut s,
        seen: before,
        db: _db,
        ..
    }) = redis_lost_at_a_pause(100, "down", &["--drain-timeout", "1"])
    else {
        return;
    };
    let rest = s.rest();
    let finished_at = Instant::now();
    let fin = rest.last().expect("events after the pause");
    assert_eq!(fin.event, "finished");
    assert_eq!(data(fin)["status"], "ok");
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert!(
        finished_at.elapsed() < Duration::from_secs(15),
        "the run took {:?} to exit with --drain-timeout 1",
        finished_at.elapsed()
    );
    // Everything after the pause is lost: the run says how much.
    let lost = (id(fin) - before.len() as u64).to_string();
    let err = run.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("not published"))
        .unwrap_or_else(|| panic!("no word of unpublished events; stderr:\n{err}"));
    assert!(
        line.split(|c: char| !c.is_ascii_digit()).any(|w| w == lost),
        "{lost} events were not published; stderr:\n{err}"
    );
}

#[test]
fn redis_back_during_the_linger_gets_the_runs_end_before_the_run_exits() {
    // The drain's clock started at `finished`, beside the linger: once
    // it ran out the publisher was stopped, and a Redis back later in the
    // linger never got the run's end, so its relays never saw `finished`.
    let extra = ["--drain-timeout", "1", "--linger", "8"];
    let Some(RedisLost {
        mut redis,
        mut run,
        stream: mut s,
        mut seen,
        run_id,
        db: _db,
    }) = redis_lost_at_a_pause(100, "linger", &extra)
    else {
        return;
    };
    seen.extend(s.rest());
    assert_eq!(seen.last().expect("events").event, "finished");
    // Past the drain timeout, well within the linger.
    std::thread::sleep(Duration::from_secs(3));
    redis.restart();
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert!(!run.stderr().contains("not published"), "{}", run.stderr());
    assert_published(&redis, &run_id, &seen);
}

#[test]
fn ctrl_c_in_the_linger_exits_at_once_with_redis_still_down() {
    // The linger says Ctrl-C exits now: that holds for the wait for
    // Redis too, which comes after the linger.
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("leave", 10));
    let url = redis.url();
    let mut run = Proc::start(&run_args(
        &db,
        path_str(&plan),
        &[
            "--listen",
            "127.0.0.1:0",
            "--progress",
            "plain",
            "--publish",
            &url,
            "--wait-for-clients",
            "1",
            "--linger",
            "60",
            "--drain-timeout",
            "60",
        ],
    ));
    redis.kill();
    let mut s = Stream::open(run.addr(), "/events", &[]);
    assert_eq!(s.rest().last().expect("events").event, "finished");
    run.wait_stderr("Ctrl-C exits now");
    interrupted_unpublished(&mut run);
}

#[test]
fn an_unusable_redis_is_refused_before_anything_runs() {
    let Some(redis) = Redis::start_with_password("s3cret") else {
        return;
    };
    let db = TempDb::counters(50);
    let plan = db.file("plan.json", &counter_plan("refused", 10));
    let before = db.bytes();
    let closed = format!("127.0.0.1:{}", free_port());
    let closed_url = format!("redis://{closed}/0");
    let run = |publish: &[&str], env: &[(&str, &str)]| {
        let mut a = run_args(&db, path_str(&plan), &["--listen", "127.0.0.1:0"]);
        a.extend_from_slice(publish);
        exit_of(&a, env)
    };
    // Nothing listens: exit 2, naming the address; as a flag or from the
    // environment.
    for (code, err) in [
        run(&["--publish", &closed_url], &[]),
        run(&[], &[("BATCHSSE_PUBLISH", &closed_url)]),
    ] {
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(&closed), "names the Redis address: {err}");
        assert!(err.contains("--publish"), "says what to do: {err}");
    }
    // A wrong password: exit 2 with Redis's own words.
    let (code, err) = run(&["--publish", &redis.url_with_password("n0t-1t")], &[]);
    assert_eq!(code, Some(2), "{err}");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("wrongpass") || lower.contains("invalid username-password"),
        "Redis's own message: {err}"
    );
    assert!(
        !err.contains("n0t-1t"),
        "the password is not printed: {err}"
    );
    assert!(db.bytes() == before, "the database was written to");
    // The right password is fine (so the refusal above was the password's),
    // and is not printed either.
    let (code, err) = run(&["--publish", &redis.url_with_password("s3cret")], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.contains("s3cret"),
        "the password is not printed: {err}"
    );
    assert_eq!(db.counter_spread(), (50, 0));
    // A relay cannot work without Redis, nor with a run Redis does not have.
    for (args, needle) in [
        (vec!["--run", "r1"], closed.as_str()),
        (vec!["--plan", "refused"], closed.as_str()),
    ] {
        let mut a = vec!["relay", &closed_url, "--listen", "127.0.0.1:0"];
        a.extend_from_slice(&args);
        let (code, err) = exit_of(&a, &[]);
        assert_eq!(code, Some(2), "relay {args:?}: {err}");
        assert!(err.contains(needle), "relay {args:?}: {err}");
    }
    let good = redis.url_with_password("s3cret");
    let (code, err) = exit_of(
        &["relay", &good, "--run", "nosuch", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, Some(2), "relay --run nosuch: {err}");
    assert!(err.contains("nosuch"), "names the run: {err}");
    assert!(
        !err.contains("s3cret"),
        "the password is not printed: {err}"
    );
}

/// `relay --plan` started before the run it is to serve: it takes the
/// plan's next run (not the `earlier` one, if any, already over), serves it
/// whole and exits with it.
fn a_relay_by_plan_follows_the_next_run(earlier: bool) {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let plan_name = if earlier { "again" } else { "first" };
    let old_run = earlier.then(|| {
        let db = TempDb::counters(50);
        let plan = db.file("plan.json", &counter_plan(plan_name, 10));
        let mut run = serving(&db, path_str(&plan), &["--publish", &url]);
        assert_exits_ok(&mut run, "earlier run", PATIENCE);
        let latest: String = redis::cmd("GET")
            .arg(latest_key(plan_name))
            .query(&mut redis_conn(&redis))
            .expect("the earlier run is the plan's latest");
        latest
    });
    let mut follower = relay(&url, &["--plan", plan_name, "--linger", "0"]);
    let waiting = follower.addr();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        follower.child.try_wait().expect("try_wait").is_none(),
        "the relay did not wait for the next run; stderr:\n{}",
        follower.stderr()
    );
    if let Some(old) = &old_run {
        assert_ne!(
            head_run_id(waiting).as_deref(),
            Some(old.as_str()),
            "the relay serves the run that was already over"
        );
    }
    let db = TempDb::counters(200);
    let pause = paused(&db);
    let mut run = publishing_run(&db, plan_name, &url, &pause, &[]);
    let mut own = Stream::open(run.addr(), "/events", &[]);
    let head = until_paused(&mut own);
    let run_id = run_id_of(&head[0]);
    assert_ne!(Some(&run_id), old_run.as_ref());
    // Held at its pause file until the relay has found it.
    let start = Instant::now();
    while head_run_id(waiting).as_deref() != Some(run_id.as_str()) {
        assert!(
            start.elapsed() < PATIENCE,
            "the relay never took up run {run_id}; stderr:\n{}",
            follower.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = Stream::open(waiting, "/events", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header(RUN_ID_HEADER), Some(run_id.as_str()));
    std::fs::remove_file(&pause).expect("remove the pause file");
    let mut want = head;
    want.extend(own.rest());
    let got = s.rest();
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert_contiguous(&got, 1);
    assert_eq!(got.last().map(|e| e.event.as_str()), Some("finished"));
    assert_eq!(got, want, "the relay served what the run's server did");
    assert_exits_ok(&mut follower, "relay --plan", PATIENCE);
}

#[test]
fn a_relay_by_plan_waits_for_the_plans_first_run_and_follows_it() {
    a_relay_by_plan_follows_the_next_run(false);
}

#[test]
fn a_relay_by_plan_skips_a_run_already_over_and_follows_the_next() {
    a_relay_by_plan_follows_the_next_run(true);
}

#[test]
fn a_relay_answers_status_metrics_and_health_as_the_run_does_and_refuses_control() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(300);
    let plan = db.file("plan.json", &counter_plan("mirrored", 30));
    let url = redis.url();
    let mut run = serving(
        &db,
        path_str(&plan),
        &[
            "--publish",
            &url,
            "--linger",
            "30",
            "--control-token",
            "c0ntrol",
        ],
    );
    let own = Stream::open(run.addr(), "/events", &[]).rest();
    let run_id = run_id_of(&own[0]);
    let theirs = wait_status(run.addr(), |v| v["state"] == "finished");
    let mut mirror = relay(&url, &["--run", &run_id, "--linger", "3"]);
    let addr = mirror.addr();
    let mine = wait_relay_status(&mirror, |v| v["state"] == "finished");
    let without_clients = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().expect("a JSON object").remove("clients");
        v
    };
    assert_eq!(without_clients(&mine), without_clients(&theirs));
    assert_eq!(mine["rows_changed"], 300);
    assert_eq!(mine["run_id"], run_id.as_str(), "the id relay --run takes");
    let page = get(addr, "/", &[]).text();
    assert!(
        page.contains(r#"aria-label="Steer the run" hidden>"#),
        "a relay's dashboard offers no steering"
    );
    assert_eq!(mine["status"], "ok");
    assert_eq!(mine["last_event_id"], id(own.last().unwrap()));
    let metrics = get(addr, "/metrics", &[]);
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    assert!(!metrics.body.is_empty());
    let health = get(addr, "/healthz", &[]);
    assert_eq!((health.status, health.text().trim()), (200, "ok"));
    let page = get(addr, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<html"), "the dashboard");
    // A relay cannot steer the run, whatever the token.
    for auth in ["Bearer c0ntrol", "Bearer other"] {
        let body = r#"{"pause":true}"#;
        let req = format!(
            "POST /control HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw(addr, req.as_bytes());
        assert_eq!(answer.status, 403, "{auth}");
        let why = answer.text();
        assert!(
            why.contains("relay") && why.contains("run's own server"),
            "the refusal says where to steer the run instead: {why}"
        );
    }
    assert_exits_ok(&mut mirror, "relay", PATIENCE);
    run.signal("TERM");
    assert_exits_ok(&mut run, "run", PATIENCE);
}

#[test]
fn a_relay_with_a_token_wants_it_as_the_run_does() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(100);
    let url = redis.url();
    let (lines, run_id) = published_run(&redis, &db, "guarded", 50);
    let run_id = run_id.as_str();
    let mut guarded = relay(
        &url,
        &["--run", run_id, "--token", "t0ken", "--linger", "3"],
    );
    let addr = guarded.addr();
    for path in ["/status", "/events", "/metrics", "/"] {
        assert_eq!(get(addr, path, &[]).status, 401, "{path} without the token");
        let wrong = get(addr, path, &[("Authorization", "Bearer other")]);
        assert_eq!(wrong.status, 401, "{path} with another token");
    }
    assert_eq!(get(addr, "/healthz", &[]).status, 200);
    let status = get(addr, "/status", &[("Authorization", "Bearer t0ken")]);
    assert_eq!(status.status, 200);
    let mut s = Stream::open(addr, "/events?token=t0ken", &[]);
    assert_eq!(s.status, 200);
    let evs = s.rest();
    assert_contiguous(&evs, 1);
    assert_eq!(evs.len(), lines.len());
    assert_exits_ok(&mut guarded, "relay", PATIENCE);
}

#[test]
fn help_documents_publish_and_relay() {
    for (cmd, flags) in [
        ("run", &["--publish", "--publish-ttl"][..]),
        ("demo", &["--publish", "--publish-ttl"][..]),
        (
            "relay",
            &[
                "--run",
                "--plan",
                "--listen",
                "--token",
                "--linger",
                "--max-clients",
            ][..],
        ),
    ] {
        let (code, out, err) = run(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd} --help: {err}");
        for f in flags {
            assert!(out.contains(f), "{cmd} --help lacks {f}:\n{out}");
        }
    }
}

/// Runs one Redis command on the test's server.
fn redis_cmd<T: redis::FromRedisValue>(redis: &Redis, cmd: &mut redis::Cmd) -> T {
    cmd.query(&mut redis_conn(redis)).expect("a Redis command")
}

#[test]
fn a_relay_by_plan_catches_a_run_that_ends_between_two_looks() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let mut mirror = relay(&url, &["--plan", "quick", "--linger", "0"]);
    // A run with no server and no pace is over in well under the relay's
    // 200 ms between looks.
    let db = TempDb::counters(30);
    let plan = db.file("plan.json", &counter_plan("quick", 10));
    let args = run_args(&db, path_str(&plan), &["--no-serve", "--publish", &url]);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_exits_ok(&mut mirror, "relay", PATIENCE);
    assert!(
        mirror.stderr().contains("relaying run"),
        "{}",
        mirror.stderr()
    );
}

#[test]
fn a_quiet_live_run_keeps_its_keys_past_the_ttl() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(100);
    let pause = paused(&db);
    let url = redis.url();
    let mut run = publishing_run(&db, "quiet", &url, &pause, &["--publish-ttl", "1"]);
    let mut s = Stream::open(run.addr(), "/events", &[]);
    let before = until_paused(&mut s);
    let run_id = run_id_of(&before[0]);
    wait_published(&redis, &run_id, before.len());
    // Paused for three times the TTL: nothing is written, yet the keys stay.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(xlen(&redis, &run_id), before.len(), "the stream expired");
    let latest: Option<String> = redis_cmd(&redis, redis::cmd("GET").arg(latest_key("quiet")));
    assert_eq!(latest.as_deref(), Some(run_id.as_str()), "latest expired");
    std::fs::remove_file(&pause).expect("remove the pause file");
    let rest = s.rest();
    assert_exits_ok(&mut run, "run", PATIENCE);
    let mut all = before;
    all.extend(rest);
    assert_published(&redis, &run_id, &all);
}

#[test]
fn a_foreign_entry_is_skipped_once_and_a_foreign_key_is_refused() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    // A run's own `start`, then an entry batchsse did not write.
    let db = TempDb::counters(10);
    let (_, run_id) = published_run(&redis, &db, "foreign", 10);
    let head: Vec<Entry> = redis_cmd(
        &redis,
        redis::cmd("XRANGE")
            .arg(stream_key(&run_id))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1),
    );
    let mut copy = redis::cmd("XADD");
    copy.arg(stream_key("foreign")).arg("1-0").arg(&head[0].1);
    let _: String = redis_cmd(&redis, &mut copy);
    let _: String = redis_cmd(
        &redis,
        redis::cmd("XADD")
            .arg(stream_key("foreign"))
            .arg("2-0")
            .arg("foo")
            .arg(&b"\xff\xfe"[..]),
    );
    let mut mirror = relay(&url, &["--run", "foreign"]);
    std::thread::sleep(Duration::from_millis(1500));
    let err = mirror.stderr();
    assert_eq!(
        err.matches("skipped stream entry 2-0").count(),
        1,
        "read once, not in a loop:\n{err}"
    );
    assert!(mirror.child.try_wait().unwrap().is_none(), "still waiting");
    mirror.signal("TERM");
    assert_eq!(mirror.wait().code(), Some(130), "{}", mirror.stderr());
    // A key batchsse did not write: refused before listening.
    let _: () = redis_cmd(&redis, redis::cmd("SET").arg(stream_key("str")).arg("x"));
    let (code, err) = exit_of(
        &["relay", &url, "--run", "str", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a string, not a stream"), "{err}");
    // A plan whose latest key is of another type: Redis's refusal, exit 3.
    let _: () = redis_cmd(
        &redis,
        redis::cmd("HSET").arg(latest_key("odd")).arg("a").arg("b"),
    );
    let (code, err) = exit_of(
        &["relay", &url, "--plan", "odd", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("WRONGTYPE"), "{err}");
}

/// Makes the Redis user `pub` (password `pw`), who may run every command
/// but `command`; its URL.
fn user_without(redis: &Redis, command: &str) -> String {
    let _: () = redis_cmd(
        redis,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("pub")
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg("+@all")
            .arg(format!("-{command}")),
    );
    format!("redis://pub:pw@127.0.0.1:{}/0", redis.port)
}

#[test]
fn a_refusal_stops_publishing_once_and_the_run_goes_on() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // A user that may connect and read, but not append to a stream.
    let url = user_without(&redis, "xadd");
    let db = TempDb::counters(100);
    let plan = db.file("plan.json", &counter_plan("refused", 10));
    let args = run_args(
        &db,
        path_str(&plan),
        &[
            "--no-serve",
            "--progress",
            "json",
            "--sleep",
            "20",
            "--publish",
            &url,
        ],
    );
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "the run is unaffected: {err}");
    assert_eq!(db.counter_spread(), (100, 0));
    let refusals: Vec<Value> = json_lines(&out)
        .into_iter()
        .filter(|l| l["event"] == "message" && l["data"]["status"] == "error")
        .collect();
    assert_eq!(refusals.len(), 1, "said once: {refusals:?}");
    let said = refusals[0]["data"]["message"].as_str().unwrap_or_default();
    assert!(
        said.contains("NOPERM") && said.contains("publishing stops"),
        "{said}"
    );
    assert!(!out.contains("lost the connection"), "not an outage: {out}");
    assert!(
        err.contains("not published") && err.contains("NOPERM"),
        "{err}"
    );
    assert!(!err.contains("pw@"), "no password on stderr: {err}");
}

#[test]
fn a_run_that_dies_is_given_up_by_its_relay_and_skipped_by_the_next() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(100);
    let pause = paused(&db);
    let url = redis.url();
    let mut dying = publishing_run(&db, "dies", &url, &pause, &[]);
    let mut s = Stream::open(dying.addr(), "/events", &[]);
    let before = until_paused(&mut s);
    let run_id = run_id_of(&before[0]);
    wait_published(&redis, &run_id, before.len());
    let quick = |c: &mut std::process::Command| {
        c.env("BATCHSSE_RELAY_DEAD_AFTER_MS", "1500");
    };
    let args = ["relay", &url, "--listen", "127.0.0.1:0", "--run", &run_id];
    let mut mirror = Proc::start_with(&args, quick);
    wait_relay_status(&mirror, |v| v["last_event_id"] == before.len() as u64);
    // Paused, the run still shows it is alive: the relay keeps waiting.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        mirror.child.try_wait().unwrap().is_none(),
        "{}",
        mirror.stderr()
    );
    // Killed: its alive key lapses (deleted here rather than waited for).
    dying.signal("KILL");
    dying.wait();
    let _: i64 = redis_cmd(
        &redis,
        redis::cmd("DEL").arg(format!("batchsse:alive:{run_id}")),
    );
    let status = mirror.wait_for(PATIENCE);
    assert_eq!(status.code(), Some(3), "{}", mirror.stderr());
    // Every way a run stops publishing is named, a refusal too.
    assert!(
        mirror.stderr().contains("has published nothing")
            && mirror
                .stderr()
                .contains("or is refused by it (its user's rights or password changed"),
        "{}",
        mirror.stderr()
    );
    // A relay for the plan does not latch onto the dead run: it waits for
    // the next one, and follows that.
    let mut next = relay(&url, &["--plan", "dies", "--linger", "0"]);
    wait_until(|| next.stderr().contains("stopped without finishing"));
    let again = TempDb::counters(20);
    let plan = again.file("plan.json", &counter_plan("dies", 10));
    let (code, _, err) = run(&run_args(
        &again,
        path_str(&plan),
        &["--no-serve", "--publish", &url],
    ));
    assert_eq!(code, 0, "{err}");
    assert_exits_ok(&mut next, "relay", PATIENCE);
    assert!(
        !next.stderr().contains(&format!("relaying run {run_id}")),
        "{}",
        next.stderr()
    );
}

#[test]
fn a_signal_ends_the_waits_for_redis_and_for_a_run_that_will_not_finish() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(100);
    let pause = paused(&db);
    let url = redis.url();
    let mut run = publishing_run(&db, "signal", &url, &pause, &["--drain-timeout", "60"]);
    let mut s = Stream::open(run.addr(), "/events", &[]);
    let before = until_paused(&mut s);
    let run_id = run_id_of(&before[0]);
    wait_published(&redis, &run_id, before.len());
    // A relay with a client, on a run that will never finish.
    let mut mirror = relay(&url, &["--run", &run_id, "--drain-timeout", "60"]);
    let mut watcher = Stream::open(mirror.addr(), "/events", &[]);
    watcher.next_event().expect("the relay's first event");
    mirror.signal("INT");
    let asked = Instant::now();
    assert_eq!(
        mirror.wait_for(PATIENCE).code(),
        Some(130),
        "{}",
        mirror.stderr()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    // The run finishes with Redis gone: it waits for Redis until Ctrl-C.
    redis.kill();
    std::fs::remove_file(&pause).expect("remove the pause file");
    s.rest();
    wait_until(|| run.stderr().contains("waiting up to 60 s"));
    interrupted_unpublished(&mut run);
}

/// Ctrl-C to a run waiting on a Redis that is down: it exits ok at once,
/// saying what was not published.
fn interrupted_unpublished(run: &mut Proc) {
    run.signal("INT");
    let asked = Instant::now();
    assert_exits_ok(run, "run", PATIENCE);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(run.stderr().contains("not published"), "{}", run.stderr());
}

/// Polls `cond` until it holds, within PATIENCE.
fn wait_until(cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "the condition never held");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watch_on_a_relay_waiting_for_a_run_says_so_and_follows_it() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let mut mirror = relay(&url, &["--plan", "watched", "--linger", "0"]);
    let base = format!("http://{}/", mirror.addr());
    let mut watcher = spawn(&["watch", &base, "--progress", "plain"], |_| {});
    wait_until(|| watcher.stderr().contains("has no run yet"));
    let db = TempDb::counters(30);
    let plan = db.file("plan.json", &counter_plan("watched", 10));
    let (code, _, err) = run(&run_args(
        &db,
        path_str(&plan),
        &["--no-serve", "--publish", &url],
    ));
    assert_eq!(code, 0, "{err}");
    assert_exits_ok(&mut watcher, "watch", PATIENCE);
    assert!(
        watcher.stderr().contains("finished ok"),
        "{}",
        watcher.stderr()
    );
    assert_exits_ok(&mut mirror, "relay", PATIENCE);
}

/// A relay serves the run's own `start`, whose `pid` is the run's
/// process, not the relay's: `watch --pid` given the run's pid follows
/// the relay's stream as the run's.
#[test]
fn watch_pid_of_the_run_follows_it_through_a_relay() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    // It lingers, so a watch that comes after the run's end still has it.
    let mirror = relay(&url, &["--plan", "relayed", "--linger", "30"]);
    let base = format!("http://{}/", mirror.addr());
    let db = TempDb::counters(30);
    let plan = db.file("plan.json", &counter_plan("relayed", 10));
    let extra = ["--no-serve", "--publish", &url, "--progress", "none"];
    let mut run = spawn(&run_args(&db, path_str(&plan), &extra), |_| {});
    let pid = run.child.id();
    let args = [
        "watch",
        &base,
        "--progress",
        "json",
        "--pid",
        &pid.to_string(),
    ];
    let mut watcher = spawn(&args, |_| {});
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert_exits_ok(&mut watcher, "watch", PATIENCE);
    let lines = json_lines(&watcher.stdout());
    assert_eq!(lines[0]["event"], "start", "{lines:?}");
    assert_eq!(
        lines[0]["data"]["pid"], pid,
        "the run's pid, not the relay's"
    );
    assert_ne!(lines[0]["data"]["pid"], mirror.child.id());
    let last = lines.last().unwrap();
    assert_eq!(
        (&last["event"], &last["data"]["status"]),
        (&"finished".into(), &"ok".into())
    );
}

#[test]
fn a_flush_mid_run_is_noticed_and_the_run_published_again_from_event_1() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let (mut run, mut s, mut seen, run_id, db) =
        published_until_paused(&redis, 200, "flushed", &url, &[]);
    let pause = db.dir.path().join("pause");
    // Everything goes (FLUSHALL, or an eviction of the run's keys); the
    // connection stays, so the publisher must see it from the stream.
    let _: () = redis_cmd(&redis, &mut redis::cmd("FLUSHALL"));
    std::fs::remove_file(&pause).expect("remove the pause file");
    seen.extend(s.rest());
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert_contiguous(&seen, 1);
    assert!(
        seen.iter().any(|e| e.event == "message"
            && data(e)["status"] == "warn"
            && data(e)["message"]
                .as_str()
                .is_some_and(|m| m.contains("emptied"))),
        "the run says its stream was emptied"
    );
    assert_published(&redis, &run_id, &seen);
    let latest: Option<String> = redis_cmd(&redis, redis::cmd("GET").arg(latest_key("flushed")));
    assert_eq!(latest.as_deref(), Some(run_id.as_str()), "latest rewritten");
    // A relay serves all of it, as the run did (it lingers, so the client
    // cannot come too late).
    let mut mirror = relay(&url, &["--run", &run_id, "--linger", "30"]);
    let mut r = Stream::open(mirror.addr(), "/events", &[]);
    let relayed = r.rest();
    assert_eq!(
        relayed.iter().map(event_triple).collect::<Vec<_>>(),
        seen.iter().map(event_triple).collect::<Vec<_>>()
    );
    mirror.signal("TERM");
    assert_exits_ok(&mut mirror, "relay", PATIENCE);
}

/// Deletes entries `ids` (`N-0`) from a run's stream.
fn xdel(redis: &Redis, run_id: &str, ids: &[u64]) {
    let mut cmd = redis::cmd("XDEL");
    cmd.arg(stream_key(run_id));
    for n in ids {
        cmd.arg(format!("{n}-0"));
    }
    let deleted: usize = redis_cmd(redis, &mut cmd);
    assert_eq!(deleted, ids.len());
}

#[test]
fn a_relay_refuses_a_stream_that_does_not_begin_with_start() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let db = TempDb::counters(100);
    let (lines, run_id) = published_run(&redis, &db, "cut", 10);
    // The head of the stream is gone, its tail (with `finished`) is there.
    xdel(&redis, &run_id, &[1, 2, 3]);
    // A live run would publish it again; this one does not, so after a
    // grace (10 s; shortened here) the relay refuses it.
    let quick = [("BATCHSSE_RELAY_CUT_GRACE_MS", "300")];
    let (code, err) = exit_of(
        &["relay", &url, "--run", &run_id, "--listen", "127.0.0.1:0"],
        &quick,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("does not begin with the run's start") && err.contains("4-0"),
        "{err}"
    );
    // `--plan` on a live run whose stream lost its head does not wait on it
    // forever either.
    let last = lines.len() as u64;
    xdel(&redis, &run_id, &[last]);
    let _: () = redis_cmd(
        &redis,
        redis::cmd("SET")
            .arg(format!("batchsse:alive:{run_id}"))
            .arg(1)
            .arg("EX")
            .arg(60),
    );
    let (code, err) = exit_of(
        &["relay", &url, "--plan", "cut", "--listen", "127.0.0.1:0"],
        &quick,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("does not begin with the run's start"), "{err}");
}

#[test]
fn a_relay_replays_from_1_an_id_beyond_its_finished_run() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let db = TempDb::counters(50);
    let url = redis.url();
    let (lines, run_id) = published_run(&redis, &db, "stale", 10);
    let mut mirror = relay(&url, &["--run", &run_id, "--linger", "30"]);
    wait_relay_status(&mirror, |v| v["state"] == "finished");
    // An id from an earlier, longer run (a dashboard left open): EventSource
    // would stop for good on a 204.
    let stale = (lines.len() + 1000).to_string();
    let mut s = Stream::open(mirror.addr(), "/events", &[("Last-Event-ID", &stale)]);
    assert_eq!(s.status, 200, "relay stderr:\n{}", mirror.stderr());
    let evs = s.rest();
    assert_contiguous(&evs, 1);
    assert_eq!(
        evs.iter().map(event_triple).collect::<Vec<_>>(),
        lines.iter().map(line_triple).collect::<Vec<_>>()
    );
    // The run's own last id is still the end for it.
    let last = lines.len().to_string();
    let r = get(mirror.addr(), "/events", &[("Last-Event-ID", &last)]);
    assert_eq!(r.status, 204);
    mirror.signal("TERM");
    mirror.wait();
}

/// A run of 1,200 counters two at a time (600 `progress` events), its log
/// compacting at 200 events, publishing to `url` and lingering: every
/// event (a client's from the start) and what its compacted log still
/// holds at the end (a late joiner's), with the run id.
fn compacting_published_run(url: &str) -> (Proc, Vec<ParsedEvent>, Vec<ParsedEvent>, String) {
    let db = TempDb::counters(1_200);
    let plan = db.file("plan.json", &counter_plan("compacted", 2));
    let flags =
        "--listen 127.0.0.1:0 --progress plain --linger 30 --wait-for-clients 1 --batch-size 2";
    let mut args = run_args(&db, path_str(&plan), &words(flags));
    args.extend(["--publish", url]);
    let run = Proc::start_with(&args, |c| {
        c.env("BATCHSSE_LOG_COMPACT_AT", "200");
    });
    let live = Stream::open(run.addr(), "/events", &[]).rest();
    assert_eq!(live.last().map(|e| e.event.as_str()), Some("finished"));
    let late = Stream::open(run.addr(), "/events", &[]).rest();
    let run_id = run_id_of(&live[0]);
    (run, live, late, run_id)
}

#[test]
fn a_long_runs_stream_in_redis_is_compacted_as_its_log_is() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let (_run, live, late, run_id) = compacting_published_run(&redis.url());
    assert!(
        late.len() < live.len() / 2,
        "the log compacted: {} of {}",
        late.len(),
        live.len()
    );
    // Redis ends holding exactly what the log holds: every start, step,
    // message and finished, and the progress a late joiner still gets.
    wait_until(|| xlen(&redis, &run_id) == late.len());
    assert_published(&redis, &run_id, &late);
    // So a relay replaying it ends where the run did.
    let mut relayed = relay(&redis.url(), &["--run", &run_id, "--linger", "3"]);
    let status = wait_relay_status(&relayed, |s| s["state"] == "finished");
    assert_eq!(status["rows_changed"], 1_200, "{status}");
    assert_exits_ok(&mut relayed, "relay", PATIENCE);
}

#[test]
fn a_redis_user_who_may_not_xdel_keeps_every_event_and_is_told_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = user_without(&redis, "xdel");
    let (_run, live, late, run_id) = compacting_published_run(&url);
    assert!(late.len() < live.len() / 2, "the log itself compacted");
    wait_until(|| xlen(&redis, &run_id) == live.len());
    assert_published(&redis, &run_id, &live);
    let told: Vec<String> = live
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| data(e)["message"].as_str().unwrap_or_default().to_owned())
        .filter(|m| m.contains("+xdel"))
        .collect();
    assert_eq!(told.len(), 1, "told once: {told:?}");
    assert!(
        told[0].contains("NOPERM") && !told[0].contains("pw@"),
        "{told:?}"
    );
}

/// A relay copying a live run trusts an id it has not copied yet. Once it
/// has copied `finished`, a direct stream at or past that id has nothing
/// more to get: it ends then, as a stream on hyper's path does, and the
/// client's reconnect gets the whole run (or `204`), instead of a silent
/// stream until the relay's linger and drain are over.
#[test]
fn a_relay_stream_past_the_runs_last_id_ends_when_the_run_finishes() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let (mut run, mut s, seen, run_id, db) =
        published_until_paused(&redis, 100, "ahead", &url, &[]);
    let mut mirror = relay(&url, &["--run", &run_id, "--linger", "30"]);
    wait_relay_status(&mirror, |v| {
        v["last_event_id"].as_u64() >= Some(seen.len() as u64)
    });
    let ahead = (seen.len() + 1000).to_string();
    let mut far = Stream::open(mirror.addr(), "/events", &[("Last-Event-ID", &ahead)]);
    assert_eq!(far.status, 200, "relay stderr:\n{}", mirror.stderr());
    std::fs::remove_file(db.dir.path().join("pause")).expect("unpause");
    let all: Vec<_> = seen.into_iter().chain(s.rest()).collect();
    assert_exits_ok(&mut run, "run", PATIENCE);
    assert_eq!(far.rest(), Vec::new(), "nothing after an id past the end");
    // It ended with the run, while the relay still lingers.
    let status = status_of(mirror.addr()).expect("the relay lingers");
    assert_eq!(status["state"], "finished");
    let again = Stream::open(mirror.addr(), "/events", &[("Last-Event-ID", &ahead)]).rest();
    assert_eq!(
        again.iter().map(event_triple).collect::<Vec<_>>(),
        all.iter().map(event_triple).collect::<Vec<_>>()
    );
    mirror.signal("TERM");
    mirror.wait();
}
