//! Shared parts of the benchmarks: the real release binary as a child
//! process, its peak RSS, scratch databases, and a tokio load client that
//! holds many `/events` streams and checks every id arrives exactly once.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_batchsse");

/// No benchmark step may take longer than this.
pub const LIMIT: Duration = Duration::from_secs(120);

/// A scratch folder, on tmpfs when there is one, so fsync latency from
/// other work on the machine does not swamp what is being measured.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("batchsse-bench-")
        .tempdir_in(shm);
    b.or_else(|_| tempfile::tempdir()).expect("scratch dir")
}

/// `t(id INTEGER PRIMARY KEY, total REAL, counter INTEGER)` with `rows` rows.
pub fn make_table(path: &Path, rows: u64) {
    let c = rusqlite::Connection::open(path).expect("create bench db");
    c.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, total REAL NOT NULL, counter INTEGER NOT NULL DEFAULT 0);
         INSERT INTO t(id, total) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {rows})
         SELECT i, (i % 1000) * 0.37 FROM s;"
    ))
    .expect("fill bench db");
}

/// A plan with the one chunked step the issue names.
pub fn write_plan(dir: &Path, size: u64) -> PathBuf {
    let plan = serde_json::json!({
        "name": "bench",
        "steps": [{
            "name": "reprice",
            "sql": "UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
            "chunk": {"table": "t", "key": "id", "size": size}
        }]
    });
    let p = dir.join("plan.json");
    std::fs::write(&p, plan.to_string()).expect("write plan");
    p
}

/// `batchsse run` on `db` with `plan`, serving on a free port and printing
/// NDJSON, then `extra`.
pub fn run_args<'a>(db: &'a Path, plan: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--db",
        db.to_str().expect("utf-8 path"),
        "--plan",
        plan.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--progress",
        "json",
    ];
    args.extend_from_slice(extra);
    args
}

/// The real binary, running; killed on drop. Its peak RSS is sampled from
/// /proc while it lives, and stdout (`--progress json`) is kept.
pub struct Server {
    pub child: Child,
    pub addr: Option<SocketAddr>,
    pub started: Instant,
    peak_kib: Arc<AtomicU64>,
    cpu: Arc<Mutex<f64>>,
    stdout: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let started = Instant::now();
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn batchsse");
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = stdout.clone();
        let mut out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            *sink.lock().unwrap() = s;
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        if !args.contains(&"--no-serve") {
            while let Ok(line) = rx.recv_timeout(LIMIT) {
                if let Some(rest) = line.strip_prefix("batchsse: listening on http://") {
                    addr = rest.trim_end_matches('/').parse().ok();
                    break;
                }
            }
            assert!(addr.is_some(), "batchsse did not print its listening line");
        }
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        let cpu = Arc::new(Mutex::new(0.0));
        let cpu_sink = cpu.clone();
        let pid = child.id();
        std::thread::spawn(move || {
            while let Some(kib) = vm_hwm_kib(pid) {
                peak.fetch_max(kib, Ordering::Relaxed);
                *cpu_sink.lock().unwrap() = cpu_secs(&pid.to_string());
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Server {
            child,
            addr,
            started,
            peak_kib,
            cpu,
            stdout,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("server address")
    }

    /// Waits for the exit; returns (exit code, when it exited).
    pub fn wait(&mut self) -> (i32, Instant) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return (st.code().unwrap_or(-1), Instant::now());
            }
            assert!(
                t0.elapsed() < LIMIT,
                "batchsse did not exit within {LIMIT:?}"
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

    /// Every `--progress json` line printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The `finished` payload from `--progress json` output (after exit).
    pub fn finished(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.stdout.lock().unwrap().clone();
            if let Some(line) = out
                .lines()
                .rev()
                .find(|l| l.contains("\"event\":\"finished\""))
            {
                let v: serde_json::Value = serde_json::from_str(line).expect("json line");
                return v["data"].clone();
            }
            assert!(Instant::now() < deadline, "no finished line on stdout");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
}

/// Connects, sends `GET /events`, and waits for the response head.
pub async fn open_events(
    addr: SocketAddr,
    recv_buf: Option<u32>,
) -> std::io::Result<(TcpStream, Vec<u8>, bool)> {
    let sock = TcpSocket::new_v4()?;
    if let Some(n) = recv_buf {
        sock.set_recv_buffer_size(n)?;
    }
    let mut s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    if recv_buf.is_some() {
        // A stalled client never reads, not even the head.
        return Ok((s, Vec::new(), false));
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
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other(format!("unexpected head: {head}")));
            }
            // A fresh connection gets the body unframed, ending at close;
            // hyper's keep-alive path would send it chunked.
            let chunked = head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked");
            return Ok((s, buf[end + 4..].to_vec(), chunked));
        }
    }
}

/// Reads a stream to its end, timing every event against its `ts_ms`.
pub async fn read_events(
    mut s: TcpStream,
    mut raw: Vec<u8>,
    chunked: bool,
    hist: Arc<Histogram>,
) -> Seen {
    let mut seen = Seen::default();
    let mut dechunk = Dechunk {
        passthrough: !chunked,
        ..Dechunk::default()
    };
    let mut sse = Vec::<u8>::new();
    let mut last = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    // Events logged before this client connected are history, not latency.
    let connected = now_ms();
    loop {
        let now = now_ms();
        let done = dechunk.feed(&raw, &mut sse);
        raw.clear();
        let mut start = 0;
        while let Some(end) = find(&sse[start..], b"\n\n") {
            let frame = &sse[start..start + end];
            start += end + 2;
            let Some(id) = field(frame, b"id: ")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            else {
                continue; // a keep-alive comment
            };
            seen.events += 1;
            if id <= last {
                seen.repeated += 1;
            } else {
                seen.missing += id - last - 1;
                last = id;
            }
            let ts = find(frame, b"\"ts_ms\":").and_then(|i| {
                let digits: Vec<u8> = frame[i + 8..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .copied()
                    .collect();
                std::str::from_utf8(&digits).ok()?.parse::<u64>().ok()
            });
            if let Some(ts) = ts {
                if ts >= connected {
                    hist.add(now.saturating_sub(ts));
                }
                if field(frame, b"event: ") == Some(b"finished") {
                    seen.finished_id = Some(id);
                    seen.finished_at = Some((now, ts));
                }
            }
        }
        sse.drain(..start);
        if done {
            break;
        }
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => {
                seen.error = Some(e.to_string());
                break;
            }
        }
    }
    if seen.finished_id.is_none() {
        seen.missing += 1;
    }
    seen
}

fn field<'a>(frame: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    frame
        .split(|b| *b == b'\n')
        .find(|l| l.starts_with(name))
        .map(|l| &l[name.len()..])
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Undoes HTTP/1.1 chunked transfer coding, incrementally.
#[derive(Default)]
struct Dechunk {
    /// The body is not chunked: bytes pass through and it ends at close.
    passthrough: bool,
    head: Vec<u8>,
    left: usize,
    /// Bytes of the CRLF after a chunk still to skip.
    crlf: usize,
    ended: bool,
}

impl Dechunk {
    /// Appends the decoded payload of `input` to `out`; true at the last chunk.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> bool {
        if self.passthrough {
            out.extend_from_slice(input);
            return false;
        }
        while !input.is_empty() && !self.ended {
            if self.crlf > 0 {
                let n = self.crlf.min(input.len());
                self.crlf -= n;
                input = &input[n..];
            } else if self.left > 0 {
                let n = self.left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n;
                input = &input[n..];
                if self.left == 0 {
                    self.crlf = 2;
                }
            } else {
                let Some(nl) = input.iter().position(|b| *b == b'\n') else {
                    self.head.extend_from_slice(input);
                    break;
                };
                self.head.extend_from_slice(&input[..=nl]);
                input = &input[nl + 1..];
                let line = String::from_utf8_lossy(&self.head).trim().to_owned();
                self.head.clear();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap_or(""), 16).unwrap_or(0);
                if size == 0 {
                    self.ended = true;
                } else {
                    self.left = size;
                }
            }
        }
        self.ended
    }
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
    for _ in 0..n {
        let gate = gate.clone();
        let hist = hist.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let opened = open_events(addr, None).await;
            drop(permit);
            let _ = tx.send(());
            match opened {
                Ok((s, rest, chunked)) => read_events(s, rest, chunked, hist).await,
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
            .unwrap_or_default();
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
