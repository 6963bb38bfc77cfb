//! What only the benchmarks need, on top of the integration tests' helpers
//! (`tests/it/util.rs`, included here and re-exported, so a benchmark and a
//! test start, wait for and kill the real binary the same way): scratch
//! databases on tmpfs, the server's peak RSS and CPU, and a tokio load
//! client that holds many `/events` streams and checks every id arrives
//! exactly once (one stream of each batch read with the crate's own SSE
//! parser as well, to check the cheap frame counter the rest use).

#![allow(dead_code)]

#[path = "../../tests/it/util.rs"]
mod util;

pub use util::*;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchsse::sse::{ParsedEvent, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// No benchmark step may take longer than this.
pub const LIMIT: Duration = Duration::from_secs(120);

/// A scratch database holding
/// `t(id INTEGER PRIMARY KEY, total REAL, counter INTEGER)` with `rows`
/// rows, in a folder on tmpfs when there is one, so fsync latency from
/// other work on the machine does not swamp what is being measured.
pub fn bench_db(rows: u64) -> TempDb {
    let dir = tempfile::Builder::new()
        .prefix("batchsse-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("scratch dir");
    let path = dir.path().join("bench.sqlite");
    let db = TempDb { dir, path };
    db.conn()
        .execute_batch(&format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, total REAL NOT NULL, counter INTEGER NOT NULL DEFAULT 0);
             INSERT INTO t(id, total) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {rows})
             SELECT i, (i % 1000) * 0.37 FROM s;"
        ))
        .expect("fill bench db");
    db
}

/// Writes, next to `db`, a plan with the one chunked step the issue names.
pub fn write_plan(db: &TempDb, size: u64) -> PathBuf {
    let plan = serde_json::json!({
        "name": "bench",
        "steps": [{
            "name": "reprice",
            "sql": "UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "key": "id", "size": size}
        }]
    });
    db.file("plan.json", &plan.to_string())
}

/// `batchsse run` on `db` with `plan`, serving on a free port and printing
/// NDJSON, then `extra`.
pub fn bench_args<'a>(
    db: &'a (impl AsRef<Path> + ?Sized),
    plan: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = run_args(
        db,
        path_str(plan),
        &["--listen", "127.0.0.1:0", "--progress", "json"],
    );
    args.extend_from_slice(extra);
    args
}

/// The real binary as [`Proc`] starts it, its stdout (`--progress json`)
/// going to a file, its peak RSS and CPU time sampled from /proc while it
/// lives.
pub struct Server {
    pub proc: Proc,
    stdout: PathBuf,
    peak_kib: Arc<AtomicU64>,
    cpu: Arc<Mutex<f64>>,
}

impl Server {
    /// Starts `batchsse ARGS` with stdout to `stdout`: a file, not a pipe,
    /// which a long run's NDJSON would fill.
    pub fn start(args: &[&str], stdout: &Path) -> Server {
        let file = std::fs::File::create(stdout).expect("stdout file");
        let proc = Proc::start_with(args, |cmd| {
            cmd.stdout(file);
        });
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        let cpu = Arc::new(Mutex::new(0.0));
        let cpu_sink = cpu.clone();
        let pid = proc.child.id();
        std::thread::spawn(move || {
            while let Some(kib) = vm_hwm_kib(pid) {
                peak.fetch_max(kib, Ordering::Relaxed);
                *cpu_sink.lock().unwrap() = cpu_secs(&pid.to_string());
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Server {
            proc,
            stdout: stdout.to_owned(),
            peak_kib,
            cpu,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc.addr()
    }

    /// Waits for the exit and returns the exit code. Polls every 2 ms and
    /// returns at once (`Proc::wait` lets stderr settle for 50 ms), as the
    /// isolation benchmark times the exit.
    pub fn wait(&mut self) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.proc.child.try_wait().expect("try_wait") {
                return st.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < LIMIT,
                "batchsse did not exit within {LIMIT:?}; stderr:\n{}",
                self.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// CPU seconds the server used (last sample before it exited).
    pub fn cpu_secs(&self) -> f64 {
        *self.cpu.lock().unwrap()
    }

    /// Peak resident memory seen (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// The `finished` payload from the `--progress json` output (after
    /// the exit).
    pub fn finished(&self) -> serde_json::Value {
        let out = std::fs::read_to_string(&self.stdout).expect("batchsse output");
        finished_line(&out)
    }
}

/// The `data` of the `finished` line in `--progress json` output.
pub fn finished_line(ndjson: &str) -> serde_json::Value {
    json_lines(ndjson)
        .into_iter()
        .rev()
        .find(|v| v["event"] == "finished")
        .unwrap_or_else(|| panic!("no finished line in:\n{ndjson}"))["data"]
        .clone()
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_secs(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which sits in parentheses.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Latencies in whole milliseconds, shared by all clients.
pub struct Histogram(Vec<AtomicU64>);

impl Histogram {
    pub fn new() -> Arc<Histogram> {
        Arc::new(Histogram((0..60_000).map(|_| AtomicU64::new(0)).collect()))
    }

    fn add(&self, ms: u64) {
        let i = (ms as usize).min(self.0.len() - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..1) in ms.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        let want = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, c) in self.0.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= want {
                return ms as u64;
            }
        }
        0
    }
}

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub events: u64,
    /// Ids skipped over (a gap in 1, 2, 3, …), plus 1 if `finished` never came.
    pub missing: u64,
    /// Ids that came again or out of order.
    pub repeated: u64,
    pub finished_id: Option<u64>,
    /// Unix ms when `finished` arrived, and its `ts_ms`.
    pub finished_at: Option<(u64, u64)>,
    pub error: Option<String>,
    /// The highest id so far.
    last: u64,
}

impl Seen {
    /// Counts event `id` read at `now` (unix ms), timing it against its
    /// `ts_ms` unless it was logged before the client `connected`.
    fn note(&mut self, (id, name, ts): Frame<'_>, now: u64, connected: u64, hist: &Histogram) {
        self.events += 1;
        if id <= self.last {
            self.repeated += 1;
        } else {
            self.missing += id - self.last - 1;
            self.last = id;
        }
        if let Some(ts) = ts {
            if ts >= connected {
                hist.add(now.saturating_sub(ts));
            }
            if name == "finished" {
                self.finished_id = Some(id);
                self.finished_at = Some((now, ts));
            }
        }
    }
}

/// What the load client needs of an event: its id, its name and the
/// `ts_ms` in its data.
type Frame<'a> = (u64, &'a str, Option<u64>);

/// The load client's frame counter, for the frames `batchsse::sse::encode`
/// writes (`id:`, `event:`, one `data:` line, LF line ends, a blank line
/// after each; a comment frame has no id and is skipped).
///
/// Why not [`Parser`] on every client, measured on a 2-core machine: on
/// a recorded fan-out stream the crate's parser took 0.9-1.1 µs an event
/// and this loop 0.4-0.5 µs (the parser checks each line's UTF-8 and
/// allocates every event's id, name and data). With 10,000 clients that
/// was 1-1.5 s more load-client CPU a run (+25-35%), and in most paired
/// runs against the bare writer the load client, not the writer, set the
/// latency: p99 0.3-0.6 s with this loop, 1.8-2.6 s with the parser. So
/// the first client of every batch reads its stream with both and checks
/// they agree event for event (see `read_events`); the rest only count.
#[derive(Default)]
struct FrameCounter {
    pending: Vec<u8>,
}

impl FrameCounter {
    /// Takes `bytes`; calls `each` for every event they complete.
    fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(Frame<'_>)) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = find(&self.pending[start..], b"\n\n") {
            let frame = &self.pending[start..start + end];
            start += end + 2;
            let (mut id, mut name, mut ts) = (None, "message", None);
            for line in frame.split(|b| *b == b'\n') {
                if let Some(v) = line.strip_prefix(b"id: ") {
                    id = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
                } else if let Some(v) = line.strip_prefix(b"event: ") {
                    name = std::str::from_utf8(v).unwrap_or("");
                } else if let Some(v) = line.strip_prefix(b"data: ") {
                    ts = ts_ms(v);
                }
            }
            if let Some(id) = id {
                each((id, name, ts));
            }
        }
        self.pending.drain(..start);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `ts_ms` every batchsse event's data ends with, found without
/// parsing the JSON.
fn ts_ms(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts_ms\":";
    let at = data.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&data[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Connects, sends `GET /events`, and waits for the response head; returns
/// the stream and the body bytes that came with the head. With `recv_buf`
/// the client is a stalled one: a receive buffer that small, and it reads
/// nothing, not even the head.
pub async fn open_events(
    addr: SocketAddr,
    recv_buf: Option<u32>,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let sock = TcpSocket::new_v4()?;
    if let Some(n) = recv_buf {
        sock.set_recv_buffer_size(n)?;
    }
    let mut s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    if recv_buf.is_some() {
        return Ok((s, Vec::new()));
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(format!("unexpected head: {head}")));
            }
            // The direct stream path sends the body unframed, ending at
            // close; a chunked one came from hyper, which is not the path
            // being measured.
            if head.contains("transfer-encoding: chunked") {
                return Err(std::io::Error::other(
                    "a chunked stream: not the direct /events path",
                ));
            }
            return Ok((s, buf[end + 4..].to_vec()));
        }
    }
}

/// Reads a stream to its end, timing every event against its `ts_ms`;
/// `body` is what came with the response head. With `check`, the crate's
/// [`Parser`] reads the same bytes too, and the client panics unless it
/// gives the very events the counter counted.
pub async fn read_events(
    mut s: TcpStream,
    body: Vec<u8>,
    hist: Arc<Histogram>,
    check: bool,
) -> Seen {
    let mut seen = Seen::default();
    let mut counter = FrameCounter::default();
    let mut parser = check.then(Parser::new);
    let (mut counted, mut parsed) = (Vec::new(), Vec::new());
    // Events logged before this client connected are history, not latency.
    let connected = now_ms();
    // Zeroed by the allocator: 10,000 clients touch only the pages their
    // reads fill, not 640 MB.
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = &body[..];
    loop {
        let now = now_ms();
        counter.feed(bytes, |f| {
            seen.note(f, now, connected, &hist);
            if check {
                counted.push((f.0, f.1.to_owned(), f.2));
            }
        });
        if let Some(p) = &mut parser {
            let events = p.try_feed(bytes).expect("batchsse::sse::Parser");
            parsed.extend(events.into_iter().map(|e: ParsedEvent| {
                let id = e.id.as_deref().and_then(|i| i.parse().ok());
                (id.expect("a numeric id"), e.event, ts_ms(e.data.as_bytes()))
            }));
        }
        bytes = match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => &buf[..n],
            Err(e) => {
                seen.error = Some(e.to_string());
                break;
            }
        };
    }
    if seen.finished_id.is_none() {
        seen.missing += 1;
    }
    if let Some(i) = (0..counted.len().max(parsed.len())).find(|&i| counted.get(i) != parsed.get(i))
    {
        panic!(
            "the frame counter and batchsse::sse::Parser disagree at event {i} of {}: counted {:?}, parsed {:?}",
            parsed.len(),
            counted.get(i),
            parsed.get(i)
        );
    }
    seen
}

/// Opens `n` reading clients (at most 200 connecting at once, so the
/// listen backlog never overflows) and returns their handles once each has
/// its response head.
pub async fn connect_readers(
    addr: SocketAddr,
    n: usize,
    hist: Arc<Histogram>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let mut ready = Vec::with_capacity(n);
    for i in 0..n {
        // The first client of each batch checks the counter against the
        // crate's parser.
        let check = i == 0;
        let gate = gate.clone();
        let hist = hist.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let opened = open_events(addr, None).await;
            drop(permit);
            let _ = tx.send(());
            match opened {
                Ok((s, body)) => read_events(s, body, hist, check).await,
                Err(e) => Seen {
                    missing: 1,
                    error: Some(e.to_string()),
                    ..Seen::default()
                },
            }
        });
        ready.push((h, rx));
    }
    let mut handles = Vec::with_capacity(n);
    for (h, rx) in ready {
        let _ = rx.await;
        handles.push(h);
    }
    handles
}

/// Sums what the clients saw.
pub struct Totals {
    pub clients: usize,
    pub events: u64,
    pub missing: u64,
    pub repeated: u64,
    pub errors: usize,
    /// The slowest client's `finished` arrival minus `finished.ts_ms`.
    pub finished_to_last_ms: u64,
    pub first_error: Option<String>,
}

pub async fn gather(handles: Vec<tokio::task::JoinHandle<Seen>>) -> Totals {
    let mut t = Totals {
        clients: handles.len(),
        events: 0,
        missing: 0,
        repeated: 0,
        errors: 0,
        finished_to_last_ms: 0,
        first_error: None,
    };
    for h in handles {
        let s = tokio::time::timeout(LIMIT, h)
            .await
            .expect("a client did not finish in time")
            .expect("a load client panicked");
        t.events += s.events;
        t.missing += s.missing;
        t.repeated += s.repeated;
        if let Some(e) = s.error {
            t.errors += 1;
            t.first_error.get_or_insert(e);
        }
        if let Some((at, ts)) = s.finished_at {
            t.finished_to_last_ms = t.finished_to_last_ms.max(at.saturating_sub(ts));
        }
    }
    t
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One round's line of an interleaved benchmark: each measure's name and
/// time in seconds, with `decimals` places.
pub fn round_line(round: usize, names: &[&str], secs: &[f64], decimals: usize) -> String {
    let each: Vec<String> = names
        .iter()
        .zip(secs)
        .map(|(n, s)| format!("{n} {s:.decimals$} s"))
        .collect();
    format!("  round {}: {}", round + 1, each.join(", "))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The floor: what fan-out costs on this machine with no server at all.
/// The benchmark binary re-runs itself as a bare writer (see
/// `bare_writer_main`) that accepts `clients` connections and then, every
/// `pace_ms`, writes one SSE frame to every socket in a plain loop of
/// blocking writes: no HTTP parsing, no event log, no runtime. The same
/// load client reads it. Returns the clients' totals and latencies.
pub fn bare_floor(
    clients: usize,
    events: u64,
    pace_ms: u64,
    rt: &tokio::runtime::Runtime,
) -> (Totals, Arc<Histogram>, f64) {
    let exe = std::env::current_exe().expect("bench exe");
    let mut child = Command::new(exe)
        .env("BENCH_BARE_WRITER", format!("{clients},{events},{pace_ms}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the bare writer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("bare writer address");
    let addr: SocketAddr = line.trim().parse().expect("bare writer address");
    let hist = Histogram::new();
    let totals = rt.block_on(async {
        let handles = connect_readers(addr, clients, hist.clone()).await;
        gather(handles).await
    });
    let cpu = cpu_secs(&child.id().to_string());
    let _ = child.wait();
    (totals, hist, cpu)
}

/// Runs the bare writer when this process was started as one; call first
/// thing in `main`.
pub fn bare_writer_main() {
    let Ok(spec) = std::env::var("BENCH_BARE_WRITER") else {
        return;
    };
    let n: Vec<u64> = spec.split(',').filter_map(|v| v.parse().ok()).collect();
    let [clients, events, pace_ms] = n[..] else {
        panic!("BENCH_BARE_WRITER=clients,events,pace_ms");
    };
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    std::io::stdout().flush().expect("flush");
    let mut socks = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        // The request head arrives in one segment on loopback.
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).expect("request");
        s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        )
        .expect("head");
        socks.push(s);
    }
    // Writes every frame that is due to every socket; a sweep that runs
    // late sends the frames it missed together, as the real server does.
    let start = Instant::now();
    let start_ms = now_ms();
    let mut sent = 0u64;
    while sent < events {
        let due = (start.elapsed().as_millis() as u64 / pace_ms + 1).min(events);
        if due == sent {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let mut buf = Vec::new();
        for id in sent + 1..=due {
            let name = if id == events { "finished" } else { "progress" };
            buf.extend_from_slice(
                format!(
                    "id: {id}\nevent: {name}\ndata: {{\"done\":{id},\"total\":{events},\"ts_ms\":{}}}\n\n",
                    // When the event fell due, as a real run stamps it.
                    start_ms + (id - 1) * pace_ms
                )
                .as_bytes(),
            );
        }
        for s in &mut socks {
            s.write_all(&buf).expect("write");
        }
        sent = due;
    }
    drop(socks);
    std::process::exit(0);
}

/// A `redis-server` of the benchmark's own, on a free localhost port with
/// no persistence, for `run --publish` and `batchsse relay`; killed (by
/// its pid, through its `Child`) when dropped.
pub struct Redis {
    child: std::process::Child,
    pub url: String,
}

impl Redis {
    /// Starts one and waits until it answers `PING`; the error says why
    /// there is none (no `redis-server` on the PATH, it exited, it never
    /// answered), for the caller to print before it skips what needs Redis.
    pub fn start() -> Result<Redis, String> {
        Redis::start_with(&[])
    }

    /// [`Redis::start`] with more `redis-server` arguments (a TLS port).
    pub fn start_with(extra: &[String]) -> Result<Redis, String> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server ({e}); is it installed?"))?;
        let mut redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = redis.child.try_wait() {
                return Err(format!("redis-server on port {port} exited at once ({st})"));
            }
            if ping(port) {
                return Ok(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server on port {port} did not answer PING within 10 s"
        ))
    }

    /// CPU seconds Redis has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.child.id().to_string())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a Redis on localhost `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok()
        && s.read_exact(&mut reply).is_ok()
        && reply.as_slice() == b"+PONG\r\n"
}
