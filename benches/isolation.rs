//! Benchmark 3, isolation: 1,000 reading clients, with and without 100
//! more that connect and never read, on a ~20,000-event run paced at one
//! chunk a millisecond (so the readers can keep up, and their latency means
//! something). The stalled ones must not slow the batch, the readers, or
//! grow the server.

mod common;

use common::*;

/// 200,000 rows in chunks of 10: 20,000 progress events, `SLEEP_MS` apart.
const ROWS: u64 = 200_000;
const SLEEP_MS: &str = "1";
const READERS: usize = 1_000;
const STALLED: usize = 100;
const DRAIN_SECS: &str = "3";

struct Outcome {
    stalled: usize,
    totals: Totals,
    p50: u64,
    p99: u64,
    rss: f64,
    batch_ms: u64,
    exit_after_finished_ms: u64,
    stalled_ok: usize,
}

fn run(stalled: usize, rt: &tokio::runtime::Runtime) -> Outcome {
    let db = bench_db(ROWS);
    let plan = write_plan(&db, 10);
    let wait = (READERS + stalled).to_string();
    let mut server = Server::start(
        &bench_args(
            &db,
            &plan,
            &[
                "--batch-size",
                "10",
                "--sleep",
                SLEEP_MS,
                "--wait-for-clients",
                &wait,
                "--drain-timeout",
                DRAIN_SECS,
            ],
        ),
        &db.dir.path().join("progress.jsonl"),
    );
    let addr = server.addr();
    let hist = Histogram::new();
    let (totals, held, stalled_ok) = rt.block_on(async {
        // A tiny receive buffer makes sure the stalled clients' socket
        // buffers fill early in the run.
        let mut held = Vec::new();
        let mut stalled_ok = 0;
        for _ in 0..stalled {
            if let Ok(s) = open_events(addr, Some(4096)).await {
                stalled_ok += 1;
                held.push(s);
            }
        }
        let handles = connect_readers(addr, READERS, hist.clone()).await;
        (gather(handles).await, held, stalled_ok)
    });
    let code = server.wait();
    let exited_ms = now_ms();
    drop(held);
    assert_eq!(code, 0, "the run failed");
    let f = server.finished();
    if let Some(e) = &totals.first_error {
        println!(
            "  {stalled} stalled: {} reader errors, first: {e}",
            totals.errors
        );
    }
    Outcome {
        stalled,
        p50: hist.quantile(0.50),
        p99: hist.quantile(0.99),
        rss: server.peak_rss_mib(),
        batch_ms: f["elapsed_ms"].as_u64().unwrap_or(0),
        exit_after_finished_ms: exited_ms.saturating_sub(f["ts_ms"].as_u64().unwrap_or(0)),
        totals,
        stalled_ok,
    }
}

fn main() {
    let rt = runtime();
    let mut rows = Vec::new();
    // Interleaved, twice each, so machine noise hits both alike.
    for stalled in [0, STALLED, 0, STALLED] {
        rows.push(run(stalled, &rt));
    }
    println!();
    println!(
        "isolation: {READERS} readers on a ~{} event run (--batch-size 10, --sleep {SLEEP_MS}), --drain-timeout {DRAIN_SECS}",
        ROWS / 10
    );
    println!(
        "| stalled clients | batch time | readers missing | repeated | readers p50 | readers p99 | server peak RSS | exit after finished |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for o in &rows {
        println!(
            "| {} ({} connected) | {} ms | {} | {} | {} ms | {} ms | {:.1} MiB | {} ms |",
            o.stalled,
            o.stalled_ok,
            o.batch_ms,
            o.totals.missing,
            o.totals.repeated,
            o.p50,
            o.p99,
            o.rss,
            o.exit_after_finished_ms
        );
    }
    let med = |s: usize| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|o| o.stalled == s)
            .map(|o| o.batch_ms as f64)
            .collect();
        median(&mut v)
    };
    println!(
        "batch time with stalled / without: {:.3}x (target <= 1.03x); readers' p99 target: within 2x of the fan-out benchmark; RSS flat; exit within the drain timeout",
        med(STALLED) / med(0).max(1.0)
    );
}
