//! Benchmark 1, batch overhead: `batchsse run` (server on, no clients) on a
//! 1,000,000-row table versus the same UPDATE as one bare rusqlite
//! statement on a fresh copy, interleaved, median of the pairs.
//!
//! The bare statement is timed twice: in a process of its own (this binary
//! re-run, so it pays the same start, exit and cold cache as `batchsse`),
//! which is the headline ratio, and inside this process, for reference.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const ROWS: u64 = 1_000_000;
const PAIRS: usize = 7;

/// Run as `BENCH_BARE_UPDATE=path`: the bare statement alone, then exit.
fn bare_update_main() {
    let Ok(path) = std::env::var("BENCH_BARE_UPDATE") else {
        return;
    };
    let n = bare_update(std::path::Path::new(&path));
    assert_eq!(n, ROWS);
    std::process::exit(0);
}

fn bare_update(path: &std::path::Path) -> u64 {
    let c = rusqlite::Connection::open(path).expect("open");
    let n = c
        .execute(
            "UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN ?1 AND ?2",
            [1, ROWS as i64],
        )
        .expect("bare update");
    n as u64
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
    let dir = scratch();
    let template = dir.path().join("template.sqlite");
    make_table(&template, ROWS);
    let plan = write_plan(dir.path(), 10_000);
    let out = dir.path().join("out.jsonl");
    let me = std::env::current_exe().expect("bench exe");
    let mut ours = Vec::new();
    let mut bare_proc = Vec::new();
    let mut bare_here = Vec::new();
    let mut ratios = Vec::new();
    let mut ratios_here = Vec::new();
    let mut chunks = 0;
    for pair in 0..PAIRS {
        let copies: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let p = dir.path().join(format!("{n}.sqlite"));
                std::fs::copy(&template, &p).expect("copy");
                p
            })
            .collect();
        let (a, b, c) = (&copies[0], &copies[1], &copies[2]);
        let mut times = [0.0f64; 3];
        // Rotate the order so no side always runs first.
        for k in 0..3 {
            let which = (k + pair) % 3;
            times[which] = match which {
                0 => timed(
                    Command::new(BIN).args([
                        "run",
                        "--db",
                        a.to_str().unwrap(),
                        "--plan",
                        plan.to_str().unwrap(),
                        "--listen",
                        "127.0.0.1:0",
                        "--progress",
                        "json",
                    ]),
                    &out,
                ),
                1 => timed(
                    Command::new(&me).env("BENCH_BARE_UPDATE", b),
                    &dir.path().join("bare.out"),
                ),
                _ => {
                    let t0 = Instant::now();
                    assert_eq!(bare_update(c), ROWS);
                    t0.elapsed().as_secs_f64()
                }
            };
        }
        let lines = std::fs::read_to_string(&out).expect("batchsse output");
        let finished = lines
            .lines()
            .find(|l| l.contains("\"event\":\"finished\""))
            .expect("a finished line");
        let f: serde_json::Value = serde_json::from_str(finished).expect("json");
        assert_eq!(f["data"]["rows_changed"], ROWS, "{f}");
        chunks = lines
            .lines()
            .filter(|l| l.contains("\"event\":\"progress\""))
            .count();
        // All three copies must now hold the same data.
        let check = rusqlite::Connection::open(a).unwrap();
        for (name, other) in [("b", b), ("c", c)] {
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
            assert_eq!(diff, 0, "batchsse and the bare UPDATE disagree");
        }
        let [o, bp, bh] = times;
        println!(
            "  pair {}: batchsse {o:.3} s, bare (own process) {bp:.3} s, bare (in this process) {bh:.3} s, ratio {:.3}",
            pair + 1,
            o / bp
        );
        ours.push(o);
        bare_proc.push(bp);
        bare_here.push(bh);
        ratios.push(o / bp);
        ratios_here.push(o / bh);
    }
    println!();
    println!(
        "batch overhead: {ROWS} rows, one chunked UPDATE ({chunks} chunks, adaptive, --chunk-time 250), server on, no clients"
    );
    println!("| measure | median of {PAIRS} |");
    println!("| --- | --- |");
    println!(
        "| batchsse run (whole process) | {:.3} s |",
        median(&mut ours)
    );
    println!(
        "| bare rusqlite UPDATE, own process | {:.3} s |",
        median(&mut bare_proc)
    );
    println!(
        "| bare rusqlite UPDATE, in the benchmark's process | {:.3} s |",
        median(&mut bare_here)
    );
    println!(
        "| ratio to the bare process (median of pair ratios) | {:.3}x (target <= 1.05x) |",
        median(&mut ratios)
    );
    println!(
        "| ratio to the in-process statement | {:.3}x |",
        median(&mut ratios_here)
    );
}
