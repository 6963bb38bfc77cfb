//! A walk by a key scattered over the table: 1,000,000 rows of
//! `t(id TEXT PRIMARY KEY, total REAL, counter INTEGER)`, a table with
//! rowids whose primary key is a random text (a UUID's kind), updated by
//! `batchsse run` walking `id`, then walking the rowid, against the same
//! `UPDATE` as one bare rusqlite statement in this process. Each chunk of
//! the walk by `id` holds rows on pages all over the table, which every
//! chunk rewrites again; the walk by rowid writes each page about once.
//! Rounds interleaved on fresh, aged copies; medians.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const ROWS: u64 = 1_000_000;
const ROUNDS: usize = 3;
const UPDATE: &str = "UPDATE t SET total = total * 1.1, counter = counter + 1";

/// `t` with `ROWS` rows keyed by random text, next to the plans walking
/// it by `id` and by rowid.
fn setup() -> (TempDb, [std::path::PathBuf; 2]) {
    let db = bench_db(1);
    db.conn()
        .execute_batch(&format!(
            "DROP TABLE t;
             CREATE TABLE t(id TEXT PRIMARY KEY, total REAL NOT NULL, counter INTEGER NOT NULL DEFAULT 0);
             INSERT INTO t(id, total) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < {ROWS})
             SELECT lower(hex(randomblob(16))), (i % 1000) * 0.37 FROM s;"
        ))
        .expect("fill");
    let plan = |name: &str, key: &str| {
        let p = serde_json::json!({"name": name, "steps": [{
            "name": "reprice",
            "sql": format!("{UPDATE} WHERE {key} BETWEEN :lo AND :hi"),
            "chunk": {"table": "t", "key": key},
        }]});
        db.file(&format!("{name}.json"), &p.to_string())
    };
    let plans = [plan("by-id", "id"), plan("by-rowid", "rowid")];
    (db, plans)
}

/// Times `plan` on `copy` (the bare statement without one); whether the
/// run warned that its key is scattered.
fn timed(db: &TempDb, copy: &std::path::Path, plan: Option<&std::path::Path>) -> (f64, bool) {
    let out = db.dir.path().join("out.jsonl");
    let t0 = Instant::now();
    let Some(plan) = plan else {
        let c = rusqlite::Connection::open(copy).expect("open");
        assert_eq!(c.execute(UPDATE, []).expect("bare"), ROWS as usize);
        return (t0.elapsed().as_secs_f64(), false);
    };
    let st = Command::new(BIN)
        .args(bench_args(copy, plan, &[]))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let secs = t0.elapsed().as_secs_f64();
    assert!(st.success(), "batchsse failed");
    let lines = std::fs::read_to_string(&out).expect("output");
    assert_eq!(finished_line(&lines)["rows_changed"], ROWS);
    (secs, lines.contains("is walked by"))
}

fn main() {
    let (db, plans) = setup();
    let names = [
        "batchsse, walking id",
        "batchsse, walking rowid",
        "bare UPDATE",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut warned = [false; 3];
    for round in 0..ROUNDS {
        let mut t = [0.0; 3];
        for k in 0..names.len() {
            let which = (k + round) % names.len();
            let copy = db.dir.path().join(format!("{which}.sqlite"));
            std::fs::copy(&db.path, &copy).expect("copy");
            age_file(&copy);
            (t[which], warned[which]) = timed(&db, &copy, plans.get(which).map(|p| p.as_path()));
            std::fs::remove_file(&copy).expect("remove");
        }
        println!("{}", round_line(round, &names, &t, 2));
        for (i, s) in t.iter().enumerate() {
            times[i].push(*s);
        }
    }
    let m: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();
    println!();
    println!(
        "keyed walk: {ROWS} rows, a random TEXT PRIMARY KEY on a table with rowids, median of {ROUNDS}"
    );
    println!("| measure | time | vs the walk by rowid | vs the bare UPDATE |");
    println!("| --- | --- | --- | --- |");
    for (i, n) in names.iter().enumerate() {
        println!(
            "| {n} | {:.2} s | {:.1}x | {:.1}x |",
            m[i],
            m[i] / m[1],
            m[i] / m[2]
        );
    }
    println!(
        "warned about the walk by id: {}, by rowid: {}",
        warned[0], warned[1]
    );
}
