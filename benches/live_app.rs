//! Benchmark: a live application beside a batch. One process (this binary,
//! re-run as `BENCH_APP=path`) plays the application: every 5 ms it writes
//! one small transaction and reads one row by key, with a 10 s busy
//! timeout, timing each operation from when it was due (open loop), so a
//! stall counts for every operation it delays. Meanwhile a batch updates
//! every row of a 5,000,000-row `orders` table:
//!
//! - none: the application alone;
//! - one bare `UPDATE` (this binary re-run as `BENCH_BARE=path`);
//! - `batchsse run`, default flags, chunked by `id`;
//! - `batchsse run` on the idle file (no application), for the batch time
//!   the live run is held to (≤ 2x).
//!
//! Both journal modes: rollback (SQLite's default) and WAL. Targets: the
//! application's write and read p99 ≤ 50 ms, batch time ≤ 2x idle.
//! `BENCH_ROWS=N` changes the table size (for a quick look);
//! `BENCH_FLAGS="--chunk-time 20"` adds flags to both `batchsse` runs, and
//! `BENCH_QUICK=1` skips the application-alone and bare rows (for trying
//! settings).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

const APP_PERIOD: Duration = Duration::from_millis(5);
const UPDATE: &str = "UPDATE orders SET total_cents = CAST(round(total * 100) AS INTEGER) WHERE id BETWEEN :lo AND :hi";

fn rows() -> u64 {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000)
}

fn main() {
    if let Ok(path) = std::env::var("BENCH_APP") {
        return app(Path::new(&path));
    }
    if let Ok(path) = std::env::var("BENCH_BARE") {
        let c = Connection::open(path).expect("open");
        c.busy_timeout(Duration::from_secs(60)).expect("busy");
        c.execute(
            &UPDATE
                .replace(":lo", "1")
                .replace(":hi", "9223372036854775807"),
            [],
        )
        .expect("bare update");
        return;
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
        "| journal | batch | app write p50 / p99 / max | app read p50 / p99 / max | batch time |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for wal in [false, true] {
        let mode = if wal { "WAL" } else { "rollback" };
        let fresh = |name: &str| {
            let p = dir.path().join(format!("{name}-{mode}.sqlite"));
            std::fs::copy(&seed, &p).expect("copy");
            if wal {
                let c = Connection::open(&p).expect("open");
                c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                    .expect("wal");
            }
            p
        };
        let idle = timed(batchsse(&fresh("idle"), &plan));
        let runs: [(&str, Option<Command>, PathBuf); 3] = {
            let (a, b, c) = (fresh("none"), fresh("bare"), fresh("batchsse"));
            [
                ("none", None, a),
                ("one bare `UPDATE`", Some(bare(&b)), b),
                ("batchsse, default flags", Some(batchsse(&c, &plan)), c),
            ]
        };
        let quick = std::env::var_os("BENCH_QUICK").is_some();
        for (name, batch, db) in runs {
            if quick && !name.starts_with("batchsse") {
                continue;
            }
            let (app, took) = beside_app(&db, batch);
            println!(
                "| {mode} | {name} | {} | {} | {} |",
                app.writes.summary(),
                app.reads.summary(),
                took.map_or("—".into(), |t| format!("{:.2} s", t.as_secs_f64()))
            );
        }
        println!(
            "| {mode} | batchsse, idle file (no application) | — | — | {:.2} s |",
            idle.as_secs_f64()
        );
    }
}

fn make_db(path: &Path, rows: u64) {
    let c = Connection::open(path).expect("open");
    c.execute_batch(&format!(
        "PRAGMA journal_mode = DELETE;
         CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER NOT NULL, total REAL NOT NULL, total_cents INTEGER);
         CREATE TABLE app_log(id INTEGER PRIMARY KEY, at INTEGER NOT NULL, note TEXT);
         BEGIN;
         INSERT INTO orders(id, customer, total)
           WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
           SELECT i, i % 9973, (i % 100000) / 100.0 FROM s;
         COMMIT;"
    ))
    .expect("make db");
}

fn batchsse(db: &Path, plan: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_batchsse"));
    c.args(["run", "--no-serve", "--progress", "none", "--db"])
        .arg(db)
        .arg("--plan")
        .arg(plan);
    if let Ok(flags) = std::env::var("BENCH_FLAGS") {
        c.args(flags.split_whitespace());
    }
    c
}

fn bare(db: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("exe"));
    c.env("BENCH_BARE", db);
    c
}

fn timed(mut cmd: Command) -> Duration {
    let t = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().expect("batch");
    assert!(status.success(), "batch failed: {status}");
    t.elapsed()
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

struct AppResult {
    writes: Lat,
    reads: Lat,
}

/// Runs the application; with a batch, from 300 ms after the application
/// starts until the batch ends (the latencies counted are those of
/// operations due in that window); without, for 2 s.
fn beside_app(db: &Path, batch: Option<Command>) -> (AppResult, Option<Duration>) {
    let mut app = Command::new(std::env::current_exe().expect("exe"))
        .env("BENCH_APP", db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("app");
    std::thread::sleep(Duration::from_millis(300));
    let window_start = now_ms();
    let took = match batch {
        Some(b) => Some(timed(b)),
        None => {
            std::thread::sleep(Duration::from_secs(2));
            None
        }
    };
    let window_end = now_ms();
    std::thread::sleep(Duration::from_millis(100));
    drop(app.stdin.take()); // tells the application to stop
    let out = app.wait_with_output().expect("app output");
    let mut r = AppResult {
        writes: Lat::default(),
        reads: Lat::default(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(kind), Some(due), Some(ms)) = (f.first(), f.get(1), f.get(2)) else {
            continue;
        };
        let (due, ms): (f64, f64) = (due.parse().unwrap_or(0.0), ms.parse().unwrap_or(0.0));
        if due < window_start || due > window_end {
            continue;
        }
        match *kind {
            "w" => r.writes.0.push(ms),
            _ => r.reads.0.push(ms),
        }
    }
    (r, took)
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The application: until its stdin closes, a writer and a reader, each on
/// its own connection and thread, each every 5 ms: one small transaction,
/// one row read by key. Each operation is printed as `w|r DUE_MS LATENCY_MS`.
fn app(db: &Path) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
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
                let due = start + APP_PERIOD * n;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if kind == 'w' {
                    c.execute(
                        "INSERT INTO app_log(at, note) VALUES (?1, 'order placed')",
                        [n],
                    )
                    .expect("app write");
                } else {
                    let key = (i64::from(n) * 7919) % rows + 1;
                    let _: f64 = c
                        .query_row("SELECT total FROM orders WHERE id = ?1", [key], |r| {
                            r.get(0)
                        })
                        .expect("app read");
                }
                let due_ms = start_ms + (APP_PERIOD * n).as_secs_f64() * 1000.0;
                let ms = due.elapsed().as_secs_f64() * 1000.0;
                lines.push(format!("{kind} {due_ms:.1} {ms:.3}"));
                n += 1;
            }
            lines
        })
    };
    let (w, r) = (worker('w'), worker('r'));
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
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
