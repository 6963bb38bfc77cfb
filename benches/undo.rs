//! Benchmark: what taking a run back costs, on the 1,000,000-row update of
//! `batch_overhead`, and (since an undo puts back whole rows there) on a
//! purge of those rows and a copy of them into a second table. Per round,
//! on fresh copies: the run without `--undo`, the same run with it, then
//! `batchsse undo` of that run; medians of the per-round ratios, for the
//! update against the targets (`--undo` ≤ 1.5× the run, the undo
//! ≤ 2× the run, the record ≤ 1.2× the old values it holds).
//!
//! The row is small (16 bytes of values), which makes the
//! recording's cost per row count the most. Two more cases run on a shop's
//! orders as `batchsse demo` makes them (about 70 bytes a row), with an
//! index on the customer and one on the status: the same two-column update
//! (`shop-reprice`), and an update of the indexed status on the 70% of
//! orders that match (`shop-archive`).
//!
//! The old values are what the update overwrote: a REAL and an INTEGER per
//! row, 8 bytes each as SQLite stores them at most; the record's size is
//! the file's growth over the run without `--undo`. Every file is aged
//! first, so all three go at the idle pace.
//! Wall time is what the targets name; CPU time (user and system, of the
//! child) is printed beside it, since it moves less on a busy machine.
//! `BENCH_ROWS` takes a smaller table for a quick look; `BENCH_UNDO_CASES`
//! picks some of the cases (`update,purge,copy,shop-reprice,shop-archive`);
//! `BATCHSSE_UNDO_HOOK=off` measures the recording of a build without
//! SQLite's pre-update hook.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const ROUNDS: usize = 3;

/// CPU seconds (user and system) of the children waited for so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Runs `batchsse ARGS`: (wall seconds, CPU seconds).
fn timed(args: &[&str]) -> (f64, f64) {
    let (t0, c0) = (Instant::now(), children_cpu());
    let st = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?} failed");
    (t0.elapsed().as_secs_f64(), children_cpu() - c0)
}

/// Which scratch database a case runs on.
#[derive(Clone, Copy, PartialEq)]
enum Base {
    /// `batch_overhead`'s table `t` (a REAL and an INTEGER a row, 16 bytes
    /// of values) and an empty `t2` of the same shape.
    Bench,
    /// The demo shop (`batchsse demo`'s), its orders table about 70 bytes
    /// a row, with the indexes a shop's application would have on it.
    Shop,
}

/// What a case runs: its name, its database, and its one chunked step.
struct Case {
    name: &'static str,
    base: Base,
    table: &'static str,
    sql: &'static str,
}

const CASES: [Case; 5] = [
    // The issue's: the batch-overhead update.
    Case {
        name: "update",
        base: Base::Bench,
        table: "t",
        sql: "UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
    },
    // A purge, and a copy into a second table: what an undo puts back or
    // takes away whole rows of.
    Case {
        name: "purge",
        base: Base::Bench,
        table: "t",
        sql: "DELETE FROM t WHERE id BETWEEN :lo AND :hi",
    },
    Case {
        name: "copy",
        base: Base::Bench,
        table: "t",
        sql: "INSERT INTO t2(id, total, counter) SELECT id, total, counter FROM t WHERE id BETWEEN :lo AND :hi",
    },
    // The same two-column update on a shop's orders: a wider row, and
    // indexes on other columns.
    Case {
        name: "shop-reprice",
        base: Base::Shop,
        table: "orders",
        sql: "UPDATE orders SET total = round(total * 1.1, 2), counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
    },
    // An update of an indexed column, on the 70% of orders that match.
    Case {
        name: "shop-archive",
        base: Base::Shop,
        table: "orders",
        sql: "UPDATE orders SET status = 'archived', counter = counter + 1 WHERE status = 'shipped' AND id BETWEEN :lo AND :hi",
    },
];

/// The scratch database for `base`, with `rows` rows (orders, for the shop).
fn scratch(base: Base, rows: u64) -> TempDb {
    let db = bench_db(rows);
    match base {
        Base::Bench => db
            .conn()
            .execute_batch("CREATE TABLE t2(id INTEGER PRIMARY KEY, total REAL NOT NULL, counter INTEGER NOT NULL)")
            .expect("t2"),
        Base::Shop => {
            std::fs::remove_file(&db.path).expect("remove");
            batchsse::demo::create_sample_db(&db.path, rows).expect("shop");
            db.conn()
                .execute_batch(
                    "CREATE INDEX orders_customer ON orders(customer_id);
                     CREATE INDEX orders_status ON orders(status, created_at);",
                )
                .expect("indexes");
        }
    }
    db
}

/// Sums of the tables a case changes, to show the undo restored them.
fn digest(path: &std::path::Path, base: Base) -> (f64, i64, i64) {
    let c = rusqlite::Connection::open(path).expect("open");
    let sql = match base {
        Base::Bench => {
            "SELECT total(total), total(counter), (SELECT count(*) FROM t) + (SELECT count(*) FROM t2) FROM t"
        }
        Base::Shop => {
            "SELECT total(total), total(counter) + total(length(status) * id), count(*) FROM orders"
        }
    };
    c.query_row(sql, [], |r| {
        Ok((r.get(0)?, r.get::<_, f64>(1)? as i64, r.get(2)?))
    })
    .expect("digest")
}

fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::var("BENCH_UNDO_CASES").unwrap_or_default();
    let chosen: Vec<&Case> = CASES
        .iter()
        .filter(|c| only.is_empty() || only.split(',').any(|o| o == c.name))
        .collect();
    for base in [Base::Bench, Base::Shop] {
        if chosen.iter().any(|c| c.base == base) {
            let db = scratch(base, rows);
            for c in chosen.iter().filter(|c| c.base == base) {
                case(&db, rows, c);
            }
        }
    }
}

/// One case, [`ROUNDS`] rounds on fresh copies; prints the medians.
fn case(db: &TempDb, rows: u64, c: &Case) {
    let name = c.name;
    let plan = serde_json::json!({
        "name": "bench",
        "steps": [{"name": name, "sql": c.sql, "chunk": {"table": c.table, "key": "id", "size": 10_000}}]
    });
    let plan = db.file(&format!("{name}.json"), &plan.to_string());
    let before = digest(&db.path, c.base);
    let (mut slow, mut back, mut size) = (Vec::new(), Vec::new(), Vec::new());
    let (mut slow_cpu, mut back_cpu) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let copy = |file: &str| {
            let p = db.dir.path().join(file);
            std::fs::copy(&db.path, &p).expect("copy");
            // An idle file (one written lately is run at the live pace).
            age_file(&p);
            p
        };
        let (plain, recorded) = (copy("plain.sqlite"), copy("undo.sqlite"));
        let quiet = ["--no-serve", "--progress", "none"];
        let t_plain = timed(&run_args(&plain, path_str(&plan), &quiet));
        let mut with = quiet.to_vec();
        with.push("--undo");
        let t_undo = timed(&run_args(&recorded, path_str(&plan), &with));
        let grown = std::fs::metadata(&recorded).unwrap().len() as f64
            - std::fs::metadata(&plain).unwrap().len() as f64;
        age_file(&recorded);
        let mut undo = vec!["undo", "--db", path_str(&recorded), "--plan", "bench"];
        undo.extend_from_slice(&quiet);
        let t_back = timed(&undo);
        assert_eq!(
            digest(&recorded, c.base),
            before,
            "the undo restored every row"
        );
        // The update's old values: a REAL and an INTEGER per row (the file's
        // growth is the record's only for the update: a purge frees pages).
        let old_values = rows as f64 * 16.0;
        println!(
            "  {name} round {}: run {:.2} s ({:.2} s CPU), run --undo {:.2} s ({:.2}), undo {:.2} s ({:.2}), file {:+.1} MiB",
            round + 1,
            t_plain.0,
            t_plain.1,
            t_undo.0,
            t_undo.1,
            t_back.0,
            t_back.1,
            grown / 1048576.0,
        );
        slow.push(t_undo.0 / t_plain.0);
        back.push(t_back.0 / t_plain.0);
        slow_cpu.push(t_undo.1 / t_plain.1);
        back_cpu.push(t_back.1 / t_plain.1);
        size.push(grown / old_values);
    }
    let (slow, back) = (median(&mut slow), median(&mut back));
    if name == "update" {
        println!(
            "undo, update ({rows} rows, median of {ROUNDS}): run --undo {slow:.2}x the run (target <= 1.5), undo {back:.2}x the run (target <= 2), record {:.2}x the old values (target <= 1.2)",
            median(&mut size)
        );
    } else {
        println!(
            "undo, {name} ({rows} rows, median of {ROUNDS}): run --undo {slow:.2}x the run, undo {back:.2}x the run"
        );
    }
    println!(
        "  in CPU time (steadier on a busy machine): run --undo {:.2}x, undo {:.2}x",
        median(&mut slow_cpu),
        median(&mut back_cpu)
    );
}
