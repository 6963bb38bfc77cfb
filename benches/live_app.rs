//! Benchmark: live applications beside a batch. Each application profile
//! runs in processes of its own (this binary re-run), open loop: every
//! operation is timed from when it was due, so a stall counts for every
//! operation it delays. Meanwhile a batch updates every row of a
//! 5,000,000-row `orders` table:
//!
//! - none: the application alone;
//! - one bare `UPDATE` (this binary re-run as `BENCH_BARE=path`);
//! - `batchsse run`, no flags, chunked by `id`;
//! - and, once per journal mode, `batchsse run` alone on an idle file
//!   (nobody has written it for an hour), which the live batch times are
//!   divided by.
//!
//! The profiles (`BENCH_PROFILES=web,single` picks some):
//! - `single`: one process, one connection for writes and one for reads,
//!   each every 5 ms (an insert; a read by key), `synchronous` left at FULL;
//! - `web`: a web application as Django under gunicorn runs one: 4 worker
//!   processes taking requests from one queue (200 requests/s, half
//!   writes), a new connection per request, busy timeout 5 s, a write is
//!   `BEGIN IMMEDIATE`, update one order, insert one audit row, commit;
//!   `synchronous=NORMAL`;
//! - `web-persistent`: the same with one connection per worker, kept;
//! - `web-full`: `web` with `synchronous=FULL`;
//! - `web-deferred`: `web` whose writes begin deferred and read the order
//!   before they write it (SQLite may refuse such an upgrade at once: an
//!   error, as the application would see it).
//!
//! Both journal modes: rollback (SQLite's default) and WAL. Targets: the
//! application's write and read p99 ≤ 50 ms and max ≤ 150 ms, batch time
//! ≤ 2.5× alone in WAL and ≤ 3× in rollback mode, no errors.
//! `BENCH_ROWS=N` changes the table size; `BENCH_FLAGS="--chunk-time 20"`
//! adds flags to every `batchsse` run; `BENCH_QUICK=1` runs only batchsse;
//! `BENCH_MODES=wal` or `rollback` runs one mode;
//! `BENCH_GRID="5,10,20x0.5,1,2"` replaces the batches by `batchsse` at
//! each `--chunk-time` × `--nice-ratio` (the frontier).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;

const UPDATE: &str = "UPDATE orders SET total_cents = CAST(round(total * 100) AS INTEGER) WHERE id BETWEEN :lo AND :hi";
/// The single-connection application's period, per kind of operation.
const SINGLE_PERIOD: Duration = Duration::from_millis(5);
/// The web application's arrival period: 200 requests/s.
const WEB_PERIOD: Duration = Duration::from_millis(5);
const WEB_WORKERS: usize = 4;

/// How an application profile uses the file.
#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    /// 0: the single-connection application.
    workers: usize,
    persistent: bool,
    full: bool,
    deferred: bool,
}

const PROFILES: [Profile; 5] = [
    Profile {
        name: "single",
        workers: 0,
        persistent: true,
        full: true,
        deferred: false,
    },
    Profile {
        name: "web",
        workers: WEB_WORKERS,
        persistent: false,
        full: false,
        deferred: false,
    },
    Profile {
        name: "web-persistent",
        workers: WEB_WORKERS,
        persistent: true,
        full: false,
        deferred: false,
    },
    Profile {
        name: "web-full",
        workers: WEB_WORKERS,
        persistent: false,
        full: true,
        deferred: false,
    },
    Profile {
        name: "web-deferred",
        workers: WEB_WORKERS,
        persistent: false,
        full: false,
        deferred: true,
    },
];

fn rows() -> u64 {
    env_parse("BENCH_ROWS").unwrap_or(5_000_000)
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    if let Ok(path) = std::env::var("BENCH_APP") {
        return single_app(Path::new(&path));
    }
    if let Ok(spec) = std::env::var("BENCH_WORKER") {
        return web_worker(&spec);
    }
    if let Ok(path) = std::env::var("BENCH_BARE") {
        return bare_main(Path::new(&path));
    }
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = dir.path().join("seed.sqlite");
    let t = Instant::now();
    make_db(&seed, rows());
    eprintln!(
        "live_app: {} orders made in {:.1} s",
        rows(),
        t.elapsed().as_secs_f64()
    );
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        serde_json::json!({"name": "backfill", "steps": [{
            "sql": UPDATE, "chunk": {"table": "orders", "key": "id"}
        }]})
        .to_string(),
    )
    .expect("plan");
    println!(
        "| profile | journal | batch | app write p50 / p99 / max | app read p50 / p99 / max | errors | batch time | ÷ alone |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for wal in modes() {
        one_mode(dir.path(), &seed, &plan, wal);
    }
}

fn modes() -> Vec<bool> {
    match std::env::var("BENCH_MODES").as_deref() {
        Ok("wal") => vec![true],
        Ok("rollback") => vec![false],
        _ => vec![false, true],
    }
}

/// A batch to run beside an application.
enum Batch {
    None,
    Bare,
    Batchsse(Vec<String>),
}

fn batches() -> Vec<(String, Batch)> {
    if let Ok(grid) = std::env::var("BENCH_GRID") {
        let (times, ratios) = grid.split_once('x').expect("BENCH_GRID=TIMESxRATIOS");
        let mut out = Vec::new();
        for t in times.split(',') {
            for r in ratios.split(',') {
                let flags = vec![
                    "--chunk-time".into(),
                    t.into(),
                    "--nice-ratio".into(),
                    r.into(),
                ];
                out.push((format!("batchsse {t} ms × {r}"), Batch::Batchsse(flags)));
            }
        }
        return out;
    }
    let mut out = vec![("batchsse, no flags".to_owned(), Batch::Batchsse(Vec::new()))];
    if std::env::var_os("BENCH_QUICK").is_none() {
        out.insert(0, ("one bare `UPDATE`".into(), Batch::Bare));
        out.insert(0, ("none".into(), Batch::None));
    }
    out
}

fn one_mode(dir: &Path, seed: &Path, plan: &Path, wal: bool) {
    let mode = if wal { "WAL" } else { "rollback" };
    let fresh = |name: &str| {
        let p = dir.join(format!("{name}-{mode}.sqlite"));
        std::fs::copy(seed, &p).expect("copy");
        if wal {
            let c = Connection::open(&p).expect("open");
            c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                .expect("wal");
        }
        p
    };
    // The idle file: nobody has written it for an hour.
    let idle = fresh("idle");
    age(&idle);
    let alone = timed(batchsse(&idle, plan, &[])).expect("the idle run within BENCH_LIMIT");
    let wanted = std::env::var("BENCH_PROFILES").ok();
    for profile in PROFILES {
        if wanted
            .as_deref()
            .is_some_and(|w| !w.split(',').any(|p| p == profile.name))
        {
            continue;
        }
        for (name, batch) in batches() {
            let db = fresh("live");
            let cmd = match &batch {
                Batch::None => None,
                Batch::Bare => Some(bare(&db)),
                Batch::Batchsse(flags) => Some(batchsse(&db, plan, flags)),
            };
            let (app, took) = beside_app(&db, profile, cmd);
            let (took, ratio) = match (&batch, took) {
                (Batch::None, _) => ("—".into(), "—".into()),
                (_, None) => ("stopped".into(), "—".into()),
                (_, Some(t)) => (
                    format!("{:.2} s", t.as_secs_f64()),
                    format!("{:.2}×", t.as_secs_f64() / alone.as_secs_f64()),
                ),
            };
            println!(
                "| {} | {mode} | {name} | {} | {} | {} | {} | {ratio} |",
                profile.name,
                app.writes.summary(),
                app.reads.summary(),
                app.errors,
                took,
            );
        }
    }
    println!(
        "| — | {mode} | batchsse alone (idle file) | — | — | — | {:.2} s | 1× |",
        alone.as_secs_f64()
    );
}

fn make_db(path: &Path, rows: u64) {
    let c = Connection::open(path).expect("open");
    c.execute_batch(&format!(
        "PRAGMA journal_mode = DELETE;
         CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER NOT NULL, total REAL NOT NULL, total_cents INTEGER, touched INTEGER);
         CREATE TABLE app_log(id INTEGER PRIMARY KEY, at INTEGER NOT NULL, note TEXT);
         BEGIN;
         INSERT INTO orders(id, customer, total)
           WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
           SELECT i, i % 9973, (i % 100000) / 100.0 FROM s;
         COMMIT;"
    ))
    .expect("make db");
}

/// Sets the file's modification time an hour back, as a file nobody has
/// written lately has.
fn age(path: &Path) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to age");
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
}

fn batchsse(db: &Path, plan: &Path, flags: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_batchsse"));
    c.args(["run", "--no-serve", "--progress", "none", "--db"])
        .arg(db)
        .arg("--plan")
        .arg(plan)
        .args(flags);
    if let Ok(extra) = std::env::var("BENCH_FLAGS") {
        c.args(extra.split_whitespace());
    }
    c
}

fn bare(db: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("exe"));
    c.env("BENCH_BARE", db);
    c
}

fn bare_main(path: &Path) {
    let c = Connection::open(path).expect("open");
    c.busy_timeout(Duration::from_secs(60)).expect("busy");
    let all = UPDATE
        .replace(":lo", "1")
        .replace(":hi", "9223372036854775807");
    c.execute(&all, []).expect("bare update");
}

/// How long a batch took, or `None` when it was still running after
/// `BENCH_LIMIT` seconds (default 180) and was stopped.
fn timed(mut cmd: Command) -> Option<Duration> {
    let limit = Duration::from_secs(env_parse("BENCH_LIMIT").unwrap_or(180));
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn().expect("batch");
    loop {
        if let Some(status) = child.try_wait().expect("batch wait") {
            assert!(status.success(), "batch failed: {status}");
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Latencies (ms) of one kind of operation.
#[derive(Default)]
struct Lat(Vec<f64>);

impl Lat {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    fn summary(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.0} ms",
            self.pct(0.5),
            self.pct(0.99),
            self.pct(1.0)
        )
    }
}

#[derive(Default)]
struct AppResult {
    writes: Lat,
    reads: Lat,
    errors: usize,
}

/// Runs the application; with a batch, from 300 ms after the application
/// starts until the batch ends (the operations counted are those due in
/// that window); without, for 2 s.
fn beside_app(
    db: &Path,
    profile: Profile,
    batch: Option<Command>,
) -> (AppResult, Option<Duration>) {
    let app = App::start(db, profile);
    std::thread::sleep(Duration::from_millis(300));
    let window_start = now_ms();
    let took = match batch {
        Some(b) => timed(b),
        None => {
            std::thread::sleep(Duration::from_secs(2));
            None
        }
    };
    let window_end = now_ms();
    std::thread::sleep(Duration::from_millis(100));
    let mut r = AppResult::default();
    for line in app.stop().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [kind, due, ms, ok] = f[..] else {
            continue;
        };
        let (due, ms): (f64, f64) = (due.parse().unwrap_or(0.0), ms.parse().unwrap_or(0.0));
        if due < window_start || due > window_end {
            continue;
        }
        if ok != "ok" {
            r.errors += 1;
        }
        match kind {
            "w" => r.writes.0.push(ms),
            _ => r.reads.0.push(ms),
        }
    }
    (r, took)
}

/// An application's processes and, for a web profile, the thread that
/// hands out its requests.
struct App {
    children: Vec<Child>,
    dispatcher: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl App {
    fn start(db: &Path, profile: Profile) -> App {
        let exe = std::env::current_exe().expect("exe");
        if profile.workers == 0 {
            let child = Command::new(exe)
                .env("BENCH_APP", db)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("app");
            return App {
                children: vec![child],
                dispatcher: None,
            };
        }
        // One queue for all workers, as a listening socket is for gunicorn's:
        // whichever worker is free takes the next request.
        let (reader, writer) = std::io::pipe().expect("pipe");
        let spec = format!(
            "{}|{}|{}|{}",
            u8::from(profile.persistent),
            u8::from(profile.full),
            u8::from(profile.deferred),
            db.display()
        );
        let children = (0..profile.workers)
            .map(|_| {
                Command::new(&exe)
                    .env("BENCH_WORKER", &spec)
                    .stdin(reader.try_clone().expect("pipe clone"))
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("worker")
            })
            .collect();
        drop(reader);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || dispatch(writer, &flag));
        App {
            children,
            dispatcher: Some((stop, handle)),
        }
    }

    /// Stops the application; its processes' output, one operation a line.
    fn stop(mut self) -> String {
        match self.dispatcher.take() {
            Some((stop, handle)) => {
                stop.store(true, Ordering::SeqCst);
                handle.join().expect("dispatcher");
            }
            None => drop(self.children[0].stdin.take()),
        }
        let mut out = String::new();
        for child in self.children {
            let o = child.wait_with_output().expect("app output");
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        out
    }
}

/// Hands out a request every `WEB_PERIOD`, open loop: a ticket of its due
/// time (Unix ns) and number, 16 bytes, so a pipe write is atomic and a
/// worker's read takes exactly one.
fn dispatch(mut pipe: std::io::PipeWriter, stop: &AtomicBool) {
    let start = Instant::now();
    let start_ns = unix_ns();
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let due = start + WEB_PERIOD * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let due_ns = start_ns + (WEB_PERIOD * n as u32).as_nanos() as u64;
        let mut ticket = [0u8; 16];
        ticket[..8].copy_from_slice(&due_ns.to_le_bytes());
        ticket[8..].copy_from_slice(&n.to_le_bytes());
        pipe.write_all(&ticket).expect("dispatch");
        n += 1;
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn now_ms() -> f64 {
    unix_ns() as f64 / 1e6
}

/// One web worker: takes requests from stdin until it closes; even ones
/// write, odd ones read. Prints `w|r DUE_MS LATENCY_MS ok|err` for each.
fn web_worker(spec: &str) {
    let mut parts = spec.splitn(4, '|');
    let mut flag = || parts.next() == Some("1");
    let (persistent, full, deferred) = (flag(), flag(), flag());
    let db = PathBuf::from(parts.next().expect("db"));
    let open = || {
        let c = Connection::open(&db).expect("worker open");
        c.busy_timeout(Duration::from_secs(5)).expect("busy");
        let sync = if full { "FULL" } else { "NORMAL" };
        c.execute_batch(&format!("PRAGMA synchronous = {sync}"))
            .expect("synchronous");
        c
    };
    let kept = persistent.then(open);
    let rows = rows() as i64;
    let mut out = String::new();
    let mut stdin = std::io::stdin().lock();
    let mut ticket = [0u8; 16];
    while stdin.read_exact(&mut ticket).is_ok() {
        let due_ns = u64::from_le_bytes(ticket[..8].try_into().expect("8 bytes"));
        let n = u64::from_le_bytes(ticket[8..].try_into().expect("8 bytes"));
        let key = (n as i64 * 7919) % rows + 1;
        let fresh;
        let c = match &kept {
            Some(c) => c,
            None => {
                fresh = open();
                &fresh
            }
        };
        let write = n % 2 == 0;
        let ok = if write {
            web_write(c, key, n, deferred)
        } else {
            c.query_row("SELECT total FROM orders WHERE id = ?1", [key], |r| {
                r.get::<_, f64>(0)
            })
            .is_ok()
        };
        let ms = unix_ns().saturating_sub(due_ns) as f64 / 1e6;
        let kind = if write { 'w' } else { 'r' };
        let ok = if ok { "ok" } else { "err" };
        out.push_str(&format!("{kind} {:.1} {ms:.3} {ok}\n", due_ns as f64 / 1e6));
    }
    print!("{out}");
}

/// One request's transaction: touch an order, log it.
fn web_write(c: &Connection, key: i64, n: u64, deferred: bool) -> bool {
    let body = || -> rusqlite::Result<()> {
        if deferred {
            c.execute_batch("BEGIN")?;
            c.query_row("SELECT total FROM orders WHERE id = ?1", [key], |r| {
                r.get::<_, f64>(0)
            })?;
        } else {
            c.execute_batch("BEGIN IMMEDIATE")?;
        }
        c.execute(
            "UPDATE orders SET touched = ?2 WHERE id = ?1",
            [key, n as i64],
        )?;
        c.execute(
            "INSERT INTO app_log(at, note) VALUES (?1, 'order touched')",
            [n as i64],
        )?;
        c.execute_batch("COMMIT")
    };
    let ok = body().is_ok();
    if !ok {
        let _ = c.execute_batch("ROLLBACK");
    }
    ok
}

/// The single-connection application: until its stdin closes, a writer
/// and a reader, each on its own connection and thread, each every 5 ms:
/// one small transaction, one row read by key.
fn single_app(db: &Path) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let start_ms = now_ms();
    let worker = |kind: char| {
        let stop = stop.clone();
        let db = db.to_owned();
        std::thread::spawn(move || {
            let c = Connection::open(&db).expect("app open");
            c.busy_timeout(Duration::from_secs(10)).expect("busy");
            let rows = rows() as i64;
            let mut lines = Vec::new();
            let mut n: u32 = 0;
            while !stop.load(Ordering::SeqCst) {
                let due = start + SINGLE_PERIOD * n;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let ok = if kind == 'w' {
                    c.execute(
                        "INSERT INTO app_log(at, note) VALUES (?1, 'order placed')",
                        [n],
                    )
                    .is_ok()
                } else {
                    let key = (i64::from(n) * 7919) % rows + 1;
                    c.query_row("SELECT total FROM orders WHERE id = ?1", [key], |r| {
                        r.get::<_, f64>(0)
                    })
                    .is_ok()
                };
                let due_ms = start_ms + (SINGLE_PERIOD * n).as_secs_f64() * 1000.0;
                let ms = due.elapsed().as_secs_f64() * 1000.0;
                let ok = if ok { "ok" } else { "err" };
                lines.push(format!("{kind} {due_ms:.1} {ms:.3} {ok}"));
                n += 1;
            }
            lines
        })
    };
    let (w, r) = (worker('w'), worker('r'));
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    stop.store(true, Ordering::SeqCst);
    let mut out = String::new();
    for line in w
        .join()
        .expect("writer")
        .into_iter()
        .chain(r.join().expect("reader"))
    {
        out.push_str(&line);
        out.push('\n');
    }
    print!("{out}");
}
