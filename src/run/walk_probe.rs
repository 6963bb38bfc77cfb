//! Whether a `VACUUM` has numbered anew the rowids a stopped walk goes on
//! by. A chunked step that walks a table by its bare rowid (no `INTEGER
//! PRIMARY KEY`) resumes after the last rowid it committed; a `VACUUM`
//! numbers the rows of a table with no index anew from 1, so rows the walk
//! had not reached would then lie below that rowid, and be skipped.
//!
//! With each committed chunk of such a walk over a table without an index,
//! the table [`TABLE`] (itself without an index) gets the step's row
//! anew, at the rowid `at` with a gap before it, in the chunk's
//! transaction. A `VACUUM` numbers that row anew too: a row whose rowid is
//! no longer `at` tells that the walked table's were.

use rusqlite::{Connection, OptionalExtension, params};

use crate::plan::Step;

pub const TABLE: &str = "batchsse_walk_probe";

/// Whether `step` walks a table by its bare rowid (no column names it).
fn by_bare_rowid(step: &Step) -> Option<&str> {
    let c = step.chunk.as_ref()?;
    (c.rowid && !c.key_sql.starts_with('"')).then_some(c.table.as_str())
}

/// After a committed chunk of `step` (in its transaction): its row anew,
/// when it walks a table without an index by its bare rowid.
pub(super) fn note(conn: &Connection, plan: &str, step: &Step) -> rusqlite::Result<()> {
    let Some(table) = by_bare_rowid(step) else {
        return Ok(());
    };
    let indexed: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1, 'main'))")?
        .query_row([table], |r| r.get(0))?;
    if exists(conn)? {
        remove(conn, plan, Some(step.index))?;
    }
    if indexed || keeps_own_rowids(conn, table)? {
        return Ok(());
    }
    conn.prepare_cached(
        "CREATE TABLE IF NOT EXISTS batchsse_walk_probe (plan TEXT NOT NULL, step INTEGER NOT NULL, at INTEGER NOT NULL)",
    )?
    .execute([])?;
    conn.prepare_cached(
        "INSERT INTO batchsse_walk_probe (rowid, plan, step, at)
         SELECT n, ?1, ?2, n FROM (SELECT ifnull(max(rowid), 0) + 2 AS n FROM batchsse_walk_probe)",
    )?
    .execute(params![plan, step.index as i64])
    .map(drop)
}

/// Removes the rows of `plan` (of its `step` only, if given), and the
/// table once it is empty.
pub(crate) fn forget(conn: &Connection, plan: &str, step: Option<usize>) -> rusqlite::Result<()> {
    if !exists(conn)? {
        return Ok(());
    }
    remove(conn, plan, step)?;
    let empty: bool = conn
        .prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM batchsse_walk_probe)")?
        .query_row([], |r| r.get(0))?;
    if empty {
        conn.execute_batch("DROP TABLE batchsse_walk_probe")?;
    }
    Ok(())
}

/// Removes the rows of `plan` (of its `step` only, if given); the table
/// stays (made and dropped at every chunk, it would change the schema
/// under every statement prepared).
fn remove(conn: &Connection, plan: &str, step: Option<usize>) -> rusqlite::Result<()> {
    let step = step.map(|s| s as i64);
    conn.prepare_cached(
        "DELETE FROM batchsse_walk_probe WHERE plan = ?1 AND (?2 IS NULL OR step = ?2)",
    )?
    .execute(params![plan, step])
    .map(drop)
}

/// The table `step` of `plan` walks by a rowid a `VACUUM` has numbered
/// anew since its last committed chunk, if it does.
pub(super) fn renumbered<'s>(
    conn: &Connection,
    plan: &str,
    step: &'s Step,
) -> rusqlite::Result<Option<&'s str>> {
    let Some(table) = by_bare_rowid(step) else {
        return Ok(None);
    };
    if !exists(conn)? || keeps_own_rowids(conn, table)? {
        return Ok(None);
    }
    let moved: Option<bool> = conn
        .prepare_cached(
            "SELECT rowid <> at FROM batchsse_walk_probe WHERE plan = ?1 AND step = ?2",
        )?
        .query_row(params![plan, step.index as i64], |r| r.get(0))
        .optional()?;
    Ok(moved.unwrap_or(false).then_some(table))
}

/// Whether `table` keeps its rowids through a `VACUUM` whatever its
/// indexes: an `INTEGER PRIMARY KEY` is its rowid (any other primary key
/// comes with an index), and a virtual table numbers its own rows. Only a
/// rebuild changes either, so this holds at the resume as at the chunk.
fn keeps_own_rowids(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1, 'main') WHERE pk > 0)
             OR EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1 AND rootpage = 0)",
    )?
    .query_row([table], |r| r.get(0))
}

fn exists(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
        .exists([TABLE])
}
