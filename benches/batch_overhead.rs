//! Benchmark 1, batch overhead: `batchsse run` (server on, no clients) on a
//! 1,000,000-row table versus the same UPDATE as one bare rusqlite
//! statement on a fresh copy, interleaved, median of the pairs.

mod common;

use std::time::Instant;

use common::*;

const ROWS: u64 = 1_000_000;
const PAIRS: usize = 7;

fn main() {
    let dir = scratch();
    let template = dir.path().join("template.sqlite");
    make_table(&template, ROWS);
    let plan = write_plan(dir.path(), 10_000);
    let (mut ours, mut bare, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut chunks = 0;
    for pair in 0..PAIRS {
        let a = dir.path().join("a.sqlite");
        let b = dir.path().join("b.sqlite");
        std::fs::copy(&template, &a).expect("copy");
        std::fs::copy(&template, &b).expect("copy");
        // Alternate which goes first so neither always gets the warm cache.
        let run_ours = || {
            let t0 = Instant::now();
            let mut s = Server::start(&[
                "run",
                "--db",
                a.to_str().unwrap(),
                "--plan",
                plan.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--progress",
                "json",
            ]);
            let (code, _) = s.wait();
            assert_eq!(code, 0, "batchsse run failed");
            let secs = t0.elapsed().as_secs_f64();
            let f = s.finished();
            assert_eq!(f["rows_changed"], ROWS, "{f}");
            (secs, s)
        };
        let run_bare = || {
            let t0 = Instant::now();
            let c = rusqlite::Connection::open(&b).expect("open");
            let n = c
                .execute(
                    "UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN ?1 AND ?2",
                    [1, ROWS as i64],
                )
                .expect("bare update");
            drop(c);
            assert_eq!(n as u64, ROWS);
            t0.elapsed().as_secs_f64()
        };
        let (o, b_secs, s) = if pair % 2 == 0 {
            let (o, s) = run_ours();
            (o, run_bare(), s)
        } else {
            let b_secs = run_bare();
            let (o, s) = run_ours();
            (o, b_secs, s)
        };
        chunks = count_progress(&s);
        // Both copies must now hold the same data.
        let check = rusqlite::Connection::open(&a).unwrap();
        check
            .execute("ATTACH ?1 AS other", [b.to_str().unwrap()])
            .unwrap();
        let diff: i64 = check
            .query_row(
                "SELECT count(*) FROM t JOIN other.t o USING (id) WHERE t.total <> o.total OR t.counter <> o.counter",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(diff, 0, "batchsse and the bare UPDATE disagree");
        println!(
            "  pair {}: batchsse {:.3} s, bare {:.3} s, ratio {:.3}",
            pair + 1,
            o,
            b_secs,
            o / b_secs
        );
        ours.push(o);
        bare.push(b_secs);
        ratios.push(o / b_secs);
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
    println!("| bare rusqlite UPDATE | {:.3} s |", median(&mut bare));
    println!(
        "| ratio (median of pair ratios) | {:.3}x (target <= 1.05x) |",
        median(&mut ratios)
    );
}

fn count_progress(s: &Server) -> usize {
    let _ = s.finished();
    s.stdout_lines()
        .iter()
        .filter(|l| l.contains("\"event\":\"progress\""))
        .count()
}
