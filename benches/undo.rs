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
//! Two more delete every row and insert each again at its key from a copy
//! (`reinsert`), the second in a table with a `UNIQUE` index besides its key
//! (`reinsert-unique`), where the undo saves each row it takes back.
//!
//! The old values are what the update overwrote: a REAL and an INTEGER per
//! row, 8 bytes each as SQLite stores them at most; the record's size is
//! the file's growth over the run without `--undo`. Every file is aged
//! first, so all three go at the idle pace.
//! Wall time is what the targets name; CPU time (user and system, of the
//! child) is printed beside it, since it moves less on a busy machine.
//! `BENCH_ROWS` takes a smaller table for a quick look; `BENCH_UNDO_CASES`
//! picks some of the cases (`update,purge,copy,shop-reprice,shop-archive,
//! reinsert,reinsert-unique`);
//! `BATCHSSE_UNDO_HOOK=off` measures the recording of a build without
//! SQLite's pre-update hook.
//! After the update's rounds, [`floor`] measures what SQLite alone costs
//! a recording through that hook, with no batchsse code.

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
    /// `batch_overhead`'s table `t`, and `t2` a copy of it: rows to insert
    /// again once a step has deleted them. With `unique`, each row's
    /// `counter` is its `id`, under a `UNIQUE` index.
    Twins { unique: bool },
}

/// What a case runs: its name, its database, and its chunked step (`sql`
/// over `table`), then maybe a second one.
struct Case {
    name: &'static str,
    base: Base,
    table: &'static str,
    sql: &'static str,
    then: Option<(&'static str, &'static str)>,
}

/// The delete and the insert again of the two `reinsert` cases.
const DROP: &str = "DELETE FROM t WHERE id BETWEEN :lo AND :hi";
const READD: (&str, &str) = (
    "t2",
    "INSERT INTO t(id, total, counter) SELECT id, total + 1, counter FROM t2 WHERE rowid BETWEEN :lo AND :hi",
);

const CASES: [Case; 7] = [
    // The issue's: the batch-overhead update.
    Case {
        name: "update",
        base: Base::Bench,
        table: "t",
        sql: "UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
        then: None,
    },
    // A purge, and a copy into a second table: what an undo puts back or
    // takes away whole rows of.
    Case {
        name: "purge",
        base: Base::Bench,
        table: "t",
        sql: "DELETE FROM t WHERE id BETWEEN :lo AND :hi",
        then: None,
    },
    Case {
        name: "copy",
        base: Base::Bench,
        table: "t",
        sql: "INSERT INTO t2(id, total, counter) SELECT id, total, counter FROM t WHERE id BETWEEN :lo AND :hi",
        then: None,
    },
    // The same two-column update on a shop's orders: a wider row, and
    // indexes on other columns.
    Case {
        name: "shop-reprice",
        base: Base::Shop,
        table: "orders",
        sql: "UPDATE orders SET total = round(total * 1.1, 2), counter = counter + 1 WHERE id BETWEEN :lo AND :hi",
        then: None,
    },
    // An update of an indexed column, on the 70% of orders that match.
    Case {
        name: "shop-archive",
        base: Base::Shop,
        table: "orders",
        sql: "UPDATE orders SET status = 'archived', counter = counter + 1 WHERE status = 'shipped' AND id BETWEEN :lo AND :hi",
        then: None,
    },
    // Rows deleted, then inserted again at their keys (a "rebuild"): the
    // undo takes the insert back before it puts the old rows back. In a
    // table with a UNIQUE index besides its key, another row could hold a
    // value an old row needs by then, so each row the insert put in is
    // saved first, row by row.
    Case {
        name: "reinsert",
        base: Base::Twins { unique: false },
        table: "t",
        sql: DROP,
        then: Some(READD),
    },
    Case {
        name: "reinsert-unique",
        base: Base::Twins { unique: true },
        table: "t",
        sql: DROP,
        then: Some(READD),
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
        Base::Twins { unique } => db
            .conn()
            .execute_batch(if unique {
                "UPDATE t SET counter = id; CREATE UNIQUE INDEX t_counter ON t(counter);
                 CREATE TABLE t2 AS SELECT * FROM t;"
            } else {
                "CREATE TABLE t2 AS SELECT * FROM t;"
            })
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
        Base::Bench | Base::Twins { .. } => {
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
    let bases = [
        Base::Bench,
        Base::Shop,
        Base::Twins { unique: false },
        Base::Twins { unique: true },
    ];
    for base in bases {
        if chosen.iter().any(|c| c.base == base) {
            let db = scratch(base, rows);
            for c in chosen.iter().filter(|c| c.base == base) {
                case(&db, rows, c);
                if c.name == "update" {
                    floor(&db, rows);
                }
            }
        }
    }
}

/// One case, [`ROUNDS`] rounds on fresh copies; prints the medians.
fn case(db: &TempDb, rows: u64, c: &Case) {
    let name = c.name;
    let mut steps = vec![
        serde_json::json!({"name": name, "sql": c.sql, "chunk": {"table": c.table, "key": "id", "size": 10_000}}),
    ];
    if let Some((table, sql)) = c.then {
        steps.push(serde_json::json!({"name": "then", "sql": sql, "chunk": {"table": table, "size": 10_000}}));
    }
    let plan = serde_json::json!({"name": "bench", "steps": steps});
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

/// What SQLite alone costs a recording of the update through its
/// pre-update hook, with no batchsse code: in one process, the same
/// 10,000-row chunks each in `BEGIN IMMEDIATE … COMMIT`, bare, then with a
/// hook that reads the old and new values of the two columns the update
/// sets (the key comes with the call), then with that
/// hook keeping the old values and 6 bytes of the new ones and each chunk
/// writing what it kept as one blob beside its rows (about the record's
/// size). Then, for the way that needs no hook, which only a plain
/// `UPDATE` with no triggers, no foreign-key actions and a deterministic
/// `WHERE` could take: the chunk's rows read by a `SELECT` before the
/// update and after it, into the same blob; and the `SELECT` before alone,
/// which gives the old values but nothing to tell a conflict by. The 1.5× is measured against whole runs, a few
/// milliseconds of start-up more on each side; this is the floor under
/// it that a recording through SQLite's API cannot go below.
#[cfg(batchsse_preupdate)]
fn floor(db: &TempDb, rows: u64) {
    let mut ratios = vec![Vec::new(); 4];
    for round in 0..ROUNDS {
        let mut times = [0.0; 5];
        for (mode, time) in times.iter_mut().enumerate() {
            let p = db.dir.path().join("floor.sqlite");
            std::fs::copy(&db.path, &p).expect("copy");
            *time = hooked::chunked_update(&p, rows, mode);
        }
        println!(
            "  floor round {}: bare {:.3} s, hook reading {:.3} s, hook and blob {:.3} s, pre-read and blob {:.3} s, pre-read of the old values alone and blob {:.3} s",
            round + 1,
            times[0],
            times[1],
            times[2],
            times[3],
            times[4]
        );
        for (ratio, time) in ratios.iter_mut().zip(&times[1..]) {
            ratio.push(time / times[0]);
        }
    }
    let [hook, blob, pre, old] = [0, 1, 2, 3].map(|i| median(&mut ratios[i]));
    println!(
        "undo floor, SQLite alone (median of {ROUNDS}): its pre-update hook reading the old and new values of the columns set {hook:.2}x the bare chunks; with a blob of the old values and 6 bytes of the new per row, {blob:.2}x"
    );
    println!(
        "  without the hook (for a plain UPDATE only): a SELECT of the chunk's rows before it and one after it, and the same blob, {pre:.2}x; the SELECT before alone (no new values: no conflicts could be told) and its blob, {old:.2}x"
    );
}

#[cfg(not(batchsse_preupdate))]
fn floor(_: &TempDb, _: u64) {
    println!("undo floor: not measured, this build's SQLite has no pre-update hook");
}

/// The chunked update of [`floor`], on the raw SQLite API.
#[cfg(batchsse_preupdate)]
mod hooked {
    use std::ffi::{c_char, c_int, c_void};
    use std::time::Instant;

    use rusqlite::ffi;

    /// What the hook keeps: the chunk's old values and 6 bytes of the new.
    struct Kept {
        bytes: Vec<u8>,
        keep: bool,
    }

    unsafe extern "C" fn on_change(
        ctx: *mut c_void,
        db: *mut ffi::sqlite3,
        op: c_int,
        _db_name: *const c_char,
        _table: *const c_char,
        key: ffi::sqlite3_int64,
        _new_key: ffi::sqlite3_int64,
    ) {
        // SAFETY: `ctx` is the `Kept` that `chunked_update` registered and
        // outlives the hook; SQLite calls this inside the UPDATE only.
        // The chunk's blob is an insert: not the update's.
        if op != ffi::SQLITE_UPDATE {
            return;
        }
        let kept = unsafe { &mut *(ctx as *mut Kept) };
        let columns = unsafe { ffi::sqlite3_preupdate_count(db) };
        let mut hash = key as u64;
        if kept.keep {
            kept.bytes.extend_from_slice(&key.to_le_bytes());
        }
        // Column 0 is `id`, the rowid the hook is given as `key`.
        for i in 1..columns {
            let (mut old, mut new) = (std::ptr::null_mut(), std::ptr::null_mut());
            unsafe {
                ffi::sqlite3_preupdate_old(db, i, &mut old);
                ffi::sqlite3_preupdate_new(db, i, &mut new);
            }
            let old = unsafe { ffi::sqlite3_value_int64(old) };
            let new = unsafe { ffi::sqlite3_value_int64(new) };
            hash = (hash ^ new as u64).wrapping_mul(0x100_0000_01b3);
            if kept.keep {
                kept.bytes.extend_from_slice(&old.to_le_bytes());
            }
        }
        if kept.keep {
            kept.bytes.extend_from_slice(&hash.to_le_bytes()[..6]);
        }
    }

    /// Seconds for the update of `rows` rows of `path` in chunks; `mode` 0
    /// bare, 1 with the hook reading, 2 with it keeping and each chunk
    /// writing a blob, 3 with no hook but a `SELECT` of the chunk's rows
    /// before the update (the old values) and after it (6 bytes of the
    /// new), and the blob, 4 with the `SELECT` before alone, and the blob.
    pub fn chunked_update(path: &std::path::Path, rows: u64, mode: usize) -> f64 {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.execute_batch("CREATE TABLE kept(id INTEGER PRIMARY KEY, rec BLOB)")
            .expect("kept");
        let mut kept = Box::new(Kept {
            bytes: Vec::new(),
            keep: mode == 2,
        });
        // SAFETY: the handle is this connection's, and the hook is taken
        // off below, before `kept` is dropped.
        let db = unsafe { conn.handle() };
        let select = "SELECT id, total, counter FROM t WHERE id BETWEEN ?1 AND ?2";
        let mut old_values = conn.prepare(select).expect("select");
        let mut new_values = conn.prepare(select).expect("select");
        if mode == 1 || mode == 2 {
            let ctx = &mut *kept as *mut Kept as *mut c_void;
            unsafe { ffi::sqlite3_preupdate_hook(db, Some(on_change), ctx) };
        }
        let started = Instant::now();
        let mut update = conn
            .prepare("UPDATE t SET total = total * 1.1, counter = counter + 1 WHERE id BETWEEN ?1 AND ?2")
            .expect("update");
        let mut lo = 1i64;
        while lo <= rows as i64 {
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            if mode >= 3 {
                read_chunk(&mut old_values, lo, &mut kept.bytes, false);
            }
            update.execute([lo, lo + 9_999]).expect("update");
            if mode == 3 {
                read_chunk(&mut new_values, lo, &mut kept.bytes, true);
            }
            if mode >= 2 {
                conn.execute("INSERT INTO kept(rec) VALUES (?1)", [&kept.bytes])
                    .expect("blob");
                kept.bytes.clear();
            }
            conn.execute_batch("COMMIT").expect("commit");
            lo += 10_000;
        }
        let secs = started.elapsed().as_secs_f64();
        unsafe { ffi::sqlite3_preupdate_hook(db, None, std::ptr::null_mut()) };
        secs
    }

    /// The pre-read: a chunk's rows, read by a `SELECT` into `bytes`, as
    /// they are (the old values) or as 6 bytes of a hash (the new ones).
    fn read_chunk(select: &mut rusqlite::Statement, lo: i64, bytes: &mut Vec<u8>, hashed: bool) {
        let mut rows = select.query([lo, lo + 9_999]).expect("select");
        while let Some(row) = rows.next().expect("row") {
            let mut hash = 0u64;
            for i in 0..3 {
                let v = match row.get_ref(i).expect("column") {
                    rusqlite::types::ValueRef::Integer(n) => n,
                    rusqlite::types::ValueRef::Real(f) => f.to_bits() as i64,
                    _ => 0,
                };
                if hashed {
                    hash = (hash ^ v as u64).wrapping_mul(0x100_0000_01b3);
                } else {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
            if hashed {
                bytes.extend_from_slice(&hash.to_le_bytes()[..6]);
            }
        }
    }
}
