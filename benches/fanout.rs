//! Benchmark 2, fan-out: 1,000 and 10,000 concurrent `/events` clients (a
//! tokio load client in this process; the server is the real binary in its
//! own) on a run of ~300 events at a 10 ms pace. Checks every client got
//! every id exactly once and reports latency, drain and server memory.

mod common;

use common::*;

/// 29,800 rows in chunks of 100: 298 progress events plus start, step,
/// messages and finished, about 305 in all, one every `SLEEP_MS`.
const ROWS: u64 = 29_800;
const SLEEP_MS: &str = "10";

struct Outcome {
    clients: usize,
    totals: Totals,
    p50: u64,
    p99: u64,
    max: u64,
    rss: f64,
    elapsed_ms: u64,
    server_cpu: f64,
    client_cpu: f64,
}

fn run(clients: usize, rt: &tokio::runtime::Runtime) -> Outcome {
    let db = bench_db(ROWS);
    let plan = write_plan(&db, 100);
    let n = clients.to_string();
    let mut args = bench_args(
        &db,
        &plan,
        &[
            "--batch-size",
            "100",
            "--sleep",
            SLEEP_MS,
            "--drain-timeout",
            "10",
        ],
    );
    if clients > 0 {
        args.extend(["--wait-for-clients", &n]);
    }
    let mut server = Server::start(&args, &db.dir.path().join("progress.jsonl"));
    let addr = server.addr();
    let hist = Histogram::new();
    let me = cpu_secs("self");
    let totals = rt.block_on(async {
        let handles = connect_readers(addr, clients, hist.clone()).await;
        gather(handles).await
    });
    let code = server.wait();
    assert_eq!(code, 0, "the run failed");
    let f = server.finished();
    Outcome {
        server_cpu: server.cpu_secs(),
        client_cpu: cpu_secs("self") - me,
        clients,
        p50: hist.quantile(0.50),
        p99: hist.quantile(0.99),
        max: hist.quantile(1.0),
        rss: server.peak_rss_mib(),
        elapsed_ms: f["elapsed_ms"].as_u64().unwrap_or(0),
        totals,
    }
}

fn main() {
    bare_writer_main();
    let rt = runtime();
    // The pace with nobody watching is the yardstick for "kept its pace".
    let base = run(0, &rt);
    let mut rows = Vec::new();
    let mut floors = Vec::new();
    // BENCH_CLIENTS=N runs one size only (for profiling).
    let sizes: Vec<usize> = match std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => vec![1_000, 10_000],
    };
    for clients in sizes {
        let o = run(clients, &rt);
        if let Some(e) = &o.totals.first_error {
            println!(
                "  {clients} clients: {} client errors, first: {e}",
                o.totals.errors
            );
        }
        rows.push(o);
        let (t, h, cpu) = bare_floor(clients, ROWS / 100 + 7, SLEEP_MS.parse().unwrap(), &rt);
        floors.push((clients, t, h, cpu));
    }
    println!();
    println!(
        "fan-out: ~{} events at a {SLEEP_MS} ms pace; run alone took {} ms, server peak RSS {:.1} MiB",
        ROWS / 100 + 7,
        base.elapsed_ms,
        base.rss
    );
    println!(
        "| clients | events delivered | missing | repeated | p50 | p99 | max | finished -> last client | server peak RSS | run time (pace slip) | CPU s server / load client |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for o in &rows {
        let t = &o.totals;
        println!(
            "| {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {:.1} MiB | {} ms ({:+.1}%) | {:.1} / {:.1} |",
            o.clients,
            t.events,
            t.missing,
            t.repeated,
            o.p50,
            o.p99,
            o.max,
            t.finished_to_last_ms,
            o.rss,
            o.elapsed_ms,
            (o.elapsed_ms as f64 / base.elapsed_ms.max(1) as f64 - 1.0) * 100.0,
            o.server_cpu,
            o.client_cpu
        );
    }
    println!();
    println!(
        "floor: the same load client against a bare writer (one blocking write per socket per event, nothing else)"
    );
    println!("| clients | events delivered | missing | p50 | p99 | max | CPU s writer |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (clients, t, h, cpu) in &floors {
        println!(
            "| {clients} | {} | {} | {} ms | {} ms | {} ms | {cpu:.1} |",
            t.events,
            t.missing,
            h.quantile(0.50),
            h.quantile(0.99),
            h.quantile(1.0)
        );
    }
    println!(
        "targets: 0 missing; p99 <= 5 ms at 1,000 and <= 30 ms at 10,000; RSS <= 100 MiB at 10,000; pace slip <= 10%"
    );
}
