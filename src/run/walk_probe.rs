//! Whether a `VACUUM` or a copy through `.dump` has numbered anew the
//! rowids a stopped walk goes on by. A chunked step that walks a table by
//! its bare rowid (no `INTEGER PRIMARY KEY`) resumes after the last rowid
//! it committed; a `VACUUM` numbers the rows of a table with no index anew
//! from 1, a `.dump` copy those of every such table, so rows the walk had
//! not reached would then lie below that rowid, and be skipped.
//!
//! With each committed chunk of such a walk, in the chunk's transaction,
//! the step's row is written anew in two tables, at the rowid `at` with a
//! gap before it: [`TABLE`], without an index (a `VACUUM` renumbers it
//! too), and [`COPY_TABLE`], with one (a `VACUUM` keeps it, a `.dump` copy
//! does not), which also holds whether the walked table had an index.

use rusqlite::{Connection, OptionalExtension, params};

use super::renumber::{Renumbered, next_probe_rowid, table_exists};
use crate::plan::Step;

pub const TABLE: &str = "batchsse_walk_probe";

/// The indexed twin of [`TABLE`].
pub const COPY_TABLE: &str = "batchsse_walk_copy";

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS batchsse_walk_probe (plan TEXT NOT NULL, step INTEGER NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batchsse_walk_copy (plan TEXT NOT NULL, step INTEGER NOT NULL, at INTEGER NOT NULL, indexed INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS batchsse_walk_copy_by_step ON batchsse_walk_copy(plan, step);";

/// Why the probe tables cannot be written as they must be, if they
/// cannot (one is a view, or a table altered by hand): a walk by a bare
/// rowid, and a clear of its plan's checkpoint, would fail on it.
pub(super) fn not_ours(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let probe = ["plan", "step", "at"];
    let copy = ["plan", "step", "at", "indexed"];
    for (name, columns) in [(TABLE, &probe[..]), (COPY_TABLE, &copy[..])] {
        if let Some(why) = super::db::not_as_made(conn, name, columns, columns)? {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

/// Whether a step of `plan` walks a table by its bare rowid, and so
/// writes the probe tables.
pub(super) fn written_by(plan: &crate::plan::Plan) -> bool {
    plan.steps.iter().any(|s| by_bare_rowid(s).is_some())
}

/// The table `step` walks by a rowid a `VACUUM` or a `.dump` copy may
/// renumber: its bare rowid, not an `INTEGER PRIMARY KEY` nor a virtual
/// table's (the plan check tells, once per run).
pub(super) fn by_bare_rowid(step: &Step) -> Option<&str> {
    let c = step.chunk.as_ref()?;
    (c.rowid && !c.stable_rowid).then_some(c.table.as_str())
}

/// After a committed chunk of `step` (in its transaction): its rows anew,
/// when it walks by its bare rowid a table that may be renumbered.
pub(super) fn note(conn: &Connection, plan: &str, step: &Step) -> rusqlite::Result<()> {
    let Some(table) = by_bare_rowid(step) else {
        return Ok(());
    };
    remove(conn, plan, Some(step.index))?;
    if !(table_exists(conn, TABLE)? && table_exists(conn, COPY_TABLE)?) {
        conn.execute_batch(CREATE)?;
    }
    let (plan, index) = (plan, step.index as i64);
    conn.prepare_cached(&format!(
        "INSERT INTO {TABLE} (rowid, plan, step, at) SELECT n, ?1, ?2, n FROM {}",
        next_probe_rowid(TABLE)
    ))?
    .execute(params![plan, index])?;
    conn.prepare_cached(&format!(
        "INSERT INTO {COPY_TABLE} (rowid, plan, step, at, indexed) SELECT n, ?1, ?2, n, ?3 FROM {}",
        next_probe_rowid(COPY_TABLE)
    ))?
    .execute(params![plan, index, indexed(conn, table)?])
    .map(drop)
}

/// Once `step` is done: its rows go, if it is a walk that writes them
/// (every other step asks nothing of the schema).
pub(super) fn done(conn: &Connection, plan: &str, step: &Step) -> rusqlite::Result<()> {
    match by_bare_rowid(step) {
        Some(_) => forget(conn, plan, Some(step.index)),
        None => Ok(()),
    }
}

/// Removes the rows of `plan` (of its `step` only, if given), and each
/// table once it is empty.
pub(crate) fn forget(conn: &Connection, plan: &str, step: Option<usize>) -> rusqlite::Result<()> {
    remove(conn, plan, step)?;
    for t in [TABLE, COPY_TABLE] {
        if !table_exists(conn, t)? {
            continue;
        }
        let empty: bool = conn
            .prepare_cached(&format!("SELECT NOT EXISTS (SELECT 1 FROM {t})"))?
            .query_row([], |r| r.get(0))?;
        if empty {
            conn.execute_batch(&format!("DROP TABLE {t}"))?;
        }
    }
    Ok(())
}

/// Removes the rows of `plan` (of its `step` only, if given); the tables
/// stay (made and dropped at every chunk, they would change the schema
/// under every statement prepared).
fn remove(conn: &Connection, plan: &str, step: Option<usize>) -> rusqlite::Result<()> {
    let step = step.map(|s| s as i64);
    for t in [TABLE, COPY_TABLE] {
        if table_exists(conn, t)? {
            conn.prepare_cached(&format!(
                "DELETE FROM {t} WHERE plan = ?1 AND (?2 IS NULL OR step = ?2)"
            ))?
            .execute(params![plan, step])?;
        }
    }
    Ok(())
}

/// The table `step` of `plan` walks by a rowid numbered anew since its
/// last committed chunk, and what did it, if it does. After a `VACUUM`,
/// a table that had an index then keeps its rowids: one that has none
/// now, or had none at the chunk, counts as renumbered.
pub(super) fn renumbered<'s>(
    conn: &Connection,
    plan: &str,
    step: &'s Step,
) -> rusqlite::Result<Option<(&'s str, Renumbered)>> {
    let Some(table) = by_bare_rowid(step) else {
        return Ok(None);
    };
    if !table_exists(conn, TABLE)? {
        return Ok(None);
    }
    let key = params![plan, step.index as i64];
    let copy: Option<(bool, bool)> = match table_exists(conn, COPY_TABLE)? {
        true => conn
            .prepare_cached(
                "SELECT rowid <> at, indexed FROM batchsse_walk_copy WHERE plan = ?1 AND step = ?2",
            )?
            .query_row(key, |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
        false => None,
    };
    let vacuumed: bool = conn
        .prepare_cached(
            "SELECT rowid <> at FROM batchsse_walk_probe WHERE plan = ?1 AND step = ?2",
        )?
        .query_row(key, |r| r.get(0))
        .optional()?
        .unwrap_or(false);
    Ok(match copy {
        Some((true, _)) => Some((table, Renumbered::Copy)),
        // No indexed row: written by a batchsse that probed unindexed
        // tables only.
        _ if !vacuumed => None,
        Some((false, true)) if indexed(conn, table)? => None,
        _ => Some((table, Renumbered::Vacuum)),
    })
}

fn indexed(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1, 'main'))")?
        .query_row([table], |r| r.get(0))
}

/// The root page of the b-tree of the table `step` walks by its bare
/// rowid, kept with each of its chunks (see [`rebuilt`]); `None` for any
/// other step, or a table that is not there.
pub(super) fn root(conn: &Connection, step: &Step) -> rusqlite::Result<Option<i64>> {
    let Some(table) = by_bare_rowid(step) else {
        return Ok(None);
    };
    conn.prepare_cached(
        "SELECT rootpage FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
    )?
    .query_row([table], |r| r.get(0))
    .optional()
}

/// The table `step` of `plan` walks by its bare rowid, if it was made
/// again since the chunk that kept its root page `then`: copied into a
/// new table and renamed, SQLite's way to change a column, which numbers
/// its rows anew from 1, so rows the walk has not reached may lie below
/// its last rowid. Told by its b-tree: only a `VACUUM` or a copy of the
/// file (which the probe rows tell, see [`renumbered`]) moves one in a
/// file without auto-vacuum; with auto-vacuum, dropping any table may
/// move another's, so such a file is not asked.
pub(super) fn rebuilt<'s>(
    conn: &Connection,
    plan: &str,
    step: &'s Step,
    then: Option<i64>,
) -> rusqlite::Result<Option<&'s str>> {
    let (Some(table), Some(then)) = (by_bare_rowid(step), then) else {
        return Ok(None);
    };
    if root(conn, step)?.is_none_or(|now| now == then) {
        return Ok(None);
    }
    let auto: i64 = conn.query_row("PRAGMA main.auto_vacuum", [], |r| r.get(0))?;
    if auto != 0 || !table_exists(conn, TABLE)? {
        return Ok(None);
    }
    let moved: bool = conn
        .prepare_cached(
            "SELECT rowid <> at FROM batchsse_walk_probe WHERE plan = ?1 AND step = ?2",
        )?
        .query_row(params![plan, step.index as i64], |r| r.get(0))
        .optional()?
        .unwrap_or(true);
    Ok((!moved).then_some(table))
}
