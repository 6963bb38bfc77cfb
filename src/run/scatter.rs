//! A walk by a key whose order is not the order of the table's rows in
//! the file (a random text key, a UUID, on a table with rowids): each
//! chunk's rows lie on pages all over the table, so every chunk rewrites
//! pages the chunks before it rewrote already. A walk by rowid writes each
//! page about once; `cargo bench --bench keyed_walk` measures the gap.
//! The step is not refused (its key may be what it needs), but told.

use rusqlite::Connection;

use super::Runner;
use crate::events::Level;
use crate::human::shown;
use crate::plan::{Chunk, Step, quote};

/// Tables smaller than this are quick either way.
const WORTH_SAYING: u64 = 20_000;
/// Consecutive keys looked at, from the first.
const SAMPLE: u32 = 1_001;

/// Says so when `chunk` walks `total` rows by a key scattered over the
/// table.
pub(super) fn warn_if_scattered(r: &Runner<'_>, step: &Step, chunk: &Chunk, total: u64) {
    if chunk.rowid || total < WORTH_SAYING {
        return;
    }
    let Some(rowid) = super::escape::free_rowid_name(r.conn, &chunk.table) else {
        return; // WITHOUT ROWID: stored in its key's order
    };
    if !scattered(r.conn, chunk, rowid).unwrap_or(false) {
        return;
    }
    r.message(
        Some(step.index),
        Level::Warn,
        format!(
            "{table} is walked by {key}, whose order is not the order of its rows in the file: each chunk's rows lie on pages all over the table, so each chunk rewrites pages the others rewrite too, and the step takes more than 10 times as long as a walk by rowid (`cargo bench --bench keyed_walk`), holding the write lock as much longer. Unless the step needs {key}'s order, or bounds another table by it, walk {table} by rowid: \"key\": \"{rowid}\", with `WHERE {rowid} BETWEEN :lo AND :hi`",
            table = shown(&chunk.table),
            key = shown(&chunk.key),
        ),
    );
}

/// Whether consecutive keys, in the key's order, are typically further
/// apart in rowids than a 64th of the table's rowids: a key that grows
/// with the rowid (or against it) has them 1 apart, a random one a third
/// of the table. The median, so a few rows out of order do not count.
fn scattered(conn: &Connection, chunk: &Chunk, rowid: &str) -> rusqlite::Result<bool> {
    let (table, key) = (quote(&chunk.table), &chunk.key_sql);
    let (lo, hi): (i64, i64) = conn.query_row(
        &format!("SELECT (SELECT min({rowid}) FROM {table}), (SELECT max({rowid}) FROM {table})"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {rowid} FROM {table} WHERE {key} IS NOT NULL ORDER BY {key} LIMIT {SAMPLE}"
    ))?;
    let rowids: Vec<i64> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut steps: Vec<u64> = rowids.windows(2).map(|w| w[0].abs_diff(w[1])).collect();
    if steps.is_empty() {
        return Ok(false);
    }
    let mid = steps.len() / 2;
    let median = *steps.select_nth_unstable(mid).1;
    Ok(median.saturating_mul(64) > hi.abs_diff(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(key: &str) -> Chunk {
        Chunk {
            table: "t".into(),
            key_sql: format!("\"{key}\""),
            key: key.into(),
            rowid: false,
            stable_rowid: false,
            size: 1000,
            contained: true,
            fenced: true,
            inserts: false,
            peers: false,
        }
    }

    #[test]
    fn a_random_key_is_scattered_one_that_follows_the_rowid_is_not() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, u TEXT UNIQUE, seq INT UNIQUE, back INT UNIQUE);
             INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 5000)
               SELECT i, hex(randomblob(8)), i * 10, -i FROM s;
             -- a few rows out of order do not make it scattered
             UPDATE t SET seq = 100000 + id WHERE id % 500 = 0;",
        )
        .unwrap();
        assert!(scattered(&conn, &chunk("u"), "rowid").unwrap());
        assert!(!scattered(&conn, &chunk("seq"), "rowid").unwrap());
        assert!(!scattered(&conn, &chunk("back"), "rowid").unwrap());
    }
}
