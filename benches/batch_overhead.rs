//! Benchmark 1, batch overhead: `batchsse run` (server on, no clients) on a
//! 1,000,000-row table versus the same UPDATE as one bare rusqlite
//! statement on a fresh copy, interleaved in rounds, median of the per-round ratios.
//!
//! The bare statement is timed twice: in a process of its own (this binary
//! re-run, so it pays the same start, exit and cold cache as `batchsse`),
//! which is the headline ratio, and inside this process, for reference.
//!
//! Two more references show what the contract itself costs, each in a
//! process of its own: the same statement over the same chunks `batchsse`
//! chose, each in its own `BEGIN IMMEDIATE … COMMIT` (inside an explicit
//! transaction SQLite keeps a statement journal for a multi-row `UPDATE`
//! that may fail on a constraint, which a lone autocommit statement skips);
//! and that, after the exact `count(*)` the contract takes at a step's start.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const ROWS: u64 = 1_000_000;
const ROUNDS: usize = 15;

/// Run as `BENCH_BARE_UPDATE=path`: the bare statement alone, then exit.
/// With `BENCH_BARE_CHUNKS=hi1,hi2,…` as well: the statement once per chunk
/// `(previous hi, hi]`, each in its own `BEGIN IMMEDIATE … COMMIT`; and with
/// `BENCH_BARE_COUNT=1`, after counting the rows as `batchsse` does.
fn bare_update_main() {
    let Ok(path) = std::env::var("BENCH_BARE_UPDATE") else {
        return;
    };
    let path = std::path::Path::new(&path);
    let n = match std::env::var("BENCH_BARE_CHUNKS") {
        Ok(his) => {
            let his: Vec<i64> = his
                .split(',')
                .map(|h| h.parse().expect("chunk end"))
                .collect();
            bare_chunked(path, &his, std::env::var_os("BENCH_BARE_COUNT").is_some())
        }
        Err(_) => bare_update(path),
    };
    assert_eq!(n, ROWS);
    std::process::exit(0);
}

const UPDATE: &str =
    "UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN ?1 AND ?2";

fn bare_update(path: &std::path::Path) -> u64 {
    let c = rusqlite::Connection::open(path).expect("open");
    let n = c.execute(UPDATE, [1, ROWS as i64]).expect("bare update");
    n as u64
}

fn bare_chunked(path: &std::path::Path, his: &[i64], count: bool) -> u64 {
    let c = rusqlite::Connection::open(path).expect("open");
    if count {
        // As the runner counts: through a memory map, for this query only.
        c.execute_batch("PRAGMA mmap_size = 2147418112")
            .expect("mmap");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, ROWS as i64);
        c.execute_batch("PRAGMA mmap_size = 0").expect("mmap off");
    }
    let mut st = c.prepare(UPDATE).expect("prepare");
    let (mut lo, mut n) = (1, 0);
    for &hi in his {
        c.execute_batch("BEGIN IMMEDIATE").expect("begin");
        n += st.execute([lo, hi]).expect("chunk update") as u64;
        c.execute_batch("COMMIT").expect("commit");
        lo = hi + 1;
    }
    n
}

fn run_batchsse(db: &std::path::Path, plan: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(bench_args(db, plan, &[]));
    cmd
}

/// The chunk ends a run chose: each `progress` event's `done` (the table's
/// ids are 1..=ROWS with no gaps, so `done` is the chunk's last id).
fn chunk_ends(lines: &str) -> Vec<u64> {
    json_lines(lines)
        .iter()
        .filter(|v| v["event"] == "progress")
        .map(|v| v["data"]["done"].as_u64().expect("done"))
        .collect()
}

/// Spawns a command with output to `out` and times it to its exit.
fn timed(cmd: &mut Command, out: &std::path::Path) -> f64 {
    let t0 = Instant::now();
    let st = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("output file"))
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let secs = t0.elapsed().as_secs_f64();
    assert!(st.success(), "{cmd:?} failed");
    secs
}

fn main() {
    bare_update_main();
    let db = bench_db(ROWS);
    let (dir, template) = (&db.dir, &db.path);
    let plan = write_plan(&db, 10_000);
    let out = dir.path().join("out.jsonl");
    let me = std::env::current_exe().expect("bench exe");
    // A first run, untimed, picks the chunks the chunked bare statement
    // replays (adaptive sizes differ a little from run to run).
    let warm = dir.path().join("warm.sqlite");
    std::fs::copy(template, &warm).expect("copy");
    age_file(&warm);
    timed(&mut run_batchsse(&warm, &plan), &out);
    let ends = chunk_ends(&std::fs::read_to_string(&out).expect("batchsse output"));
    assert_eq!(ends.last(), Some(&ROWS), "the warm-up run did not finish");
    let ends_arg = ends
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let names = [
        "batchsse",
        "bare (own process)",
        "bare chunked in BEGIN IMMEDIATE (own process)",
        "bare count(*), then chunked (own process)",
        "bare (in this process)",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut floor_ratios = Vec::new();
    let mut chunks = 0;
    for round in 0..ROUNDS {
        let copies: Vec<_> = (0..names.len())
            .map(|n| {
                let p = dir.path().join(format!("{n}.sqlite"));
                std::fs::copy(template, &p).expect("copy");
                // An idle file: nobody has written it lately.
                age_file(&p);
                p
            })
            .collect();
        let mut t = vec![0.0f64; names.len()];
        // Rotate the order so no side always runs first.
        for k in 0..names.len() {
            let which = (k + round) % names.len();
            let db = &copies[which];
            let bare_out = dir.path().join("bare.out");
            t[which] = match which {
                0 => timed(&mut run_batchsse(db, &plan), &out),
                1 => timed(Command::new(&me).env("BENCH_BARE_UPDATE", db), &bare_out),
                2 => timed(
                    Command::new(&me)
                        .env("BENCH_BARE_UPDATE", db)
                        .env("BENCH_BARE_CHUNKS", &ends_arg),
                    &bare_out,
                ),
                3 => timed(
                    Command::new(&me)
                        .env("BENCH_BARE_UPDATE", db)
                        .env("BENCH_BARE_CHUNKS", &ends_arg)
                        .env("BENCH_BARE_COUNT", "1"),
                    &bare_out,
                ),
                _ => {
                    let t0 = Instant::now();
                    assert_eq!(bare_update(db), ROWS);
                    t0.elapsed().as_secs_f64()
                }
            };
        }
        let lines = std::fs::read_to_string(&out).expect("batchsse output");
        let f = finished_line(&lines);
        assert_eq!(f["rows_changed"], ROWS, "{f}");
        chunks = chunk_ends(&lines).len();
        // Every copy must now hold the same data.
        let check = rusqlite::Connection::open(&copies[0]).unwrap();
        for (i, other) in copies.iter().enumerate().skip(1) {
            let name = format!("c{i}");
            check
                .execute(&format!("ATTACH ?1 AS {name}"), [other.to_str().unwrap()])
                .unwrap();
            let diff: i64 = check
                .query_row(
                    &format!("SELECT count(*) FROM t JOIN {name}.t o USING (id) WHERE t.total <> o.total OR t.counter <> o.counter"),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(diff, 0, "batchsse and {} disagree", names[i]);
        }
        println!("{}", round_line(round, &names, &t, 3));
        floor_ratios.push(t[3] / t[1]);
        for i in 0..names.len() {
            times[i].push(t[i]);
            ratios[i].push(t[0] / t[i]);
        }
    }
    println!();
    println!(
        "batch overhead: {ROWS} rows, one chunked UPDATE ({chunks} chunks, adaptive, --chunk-time 250), server on, no clients"
    );
    println!("| measure | median of {ROUNDS} | batchsse / this (median of per-round ratios) |");
    println!("| --- | --- | --- |");
    for i in 0..names.len() {
        let what = match i {
            0 => "batchsse run (whole process)".to_owned(),
            1 => "bare rusqlite UPDATE, own process (headline, target <= 1.05x)".to_owned(),
            2 => format!(
                "bare UPDATE over batchsse's {} chunks, each in BEGIN IMMEDIATE ... COMMIT, own process",
                ends.len()
            ),
            3 => "the same after an exact count(*): the contract's floor, own process".to_owned(),
            _ => "bare rusqlite UPDATE, in the benchmark's process".to_owned(),
        };
        let ratio = if i == 0 {
            String::new()
        } else {
            format!("{:.3}x", median(&mut ratios[i]))
        };
        println!("| {what} | {:.3} s | {ratio} |", median(&mut times[i]));
    }
    println!(
        "the contract's floor alone (exact count, a transaction per chunk) is {:.3}x the bare statement",
        median(&mut floor_ratios)
    );
}
