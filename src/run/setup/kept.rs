//! The rows of the TEMP tables a TEMP-only step made, kept in the file
//! until the plan is done, so that a resume goes on from the same rows.
//! A TEMP table goes with the connection of the run that made it, and a
//! resume makes it again from the file as it is by then: a list of the
//! rows still to do (`CREATE TEMP TABLE todo AS SELECT id FROM orders
//! WHERE status = 'pending'`) has lost the rows the stopped run did, an
//! average the values it changed. Kept in [`TABLE`] in the step's own
//! transaction, beside its checkpoint row, and put back in the resumed
//! step's, the rows are the earlier run's whatever the file holds now.
//!
//! A table's rows are kept in parts of about [`PART`] bytes, each value
//! in the undo record's encoding, its rowid first; a part's first row
//! holds the names of the columns, so a table made again with other
//! columns is not filled from it.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, params};

use crate::plan::{OTHER_SCHEMA, quote};
use crate::run::renumber::table_exists;
use crate::run::undo::codec::{Val, encode, put_value, values};

pub const TABLE: &str = "batchsse_setup";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS batchsse_setup (
    plan TEXT NOT NULL,
    step INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    part INTEGER NOT NULL,
    columns BLOB NOT NULL,
    rows BLOB NOT NULL,
    PRIMARY KEY (plan, step, tbl, part)
)";

/// The columns of [`TABLE`], for [`not_ours`].
const COLUMNS: [&str; 6] = ["plan", "step", "tbl", "part", "columns", "rows"];

/// Why [`TABLE`] cannot be written as it must be, if it cannot (a view,
/// or a table altered by hand): a TEMP-only step, and a clear of its
/// plan's checkpoint, would fail on it.
pub fn not_ours(conn: &Connection) -> rusqlite::Result<Option<String>> {
    crate::run::db::not_as_made(conn, TABLE, &COLUMNS, &COLUMNS)
}

/// About the most bytes of rows a part holds.
const PART: usize = 256 * 1024;

/// How a TEMP table's rows are read and written again: by its rowid
/// (under a name no column takes; none for a WITHOUT ROWID table) and
/// the columns a row may be given (not the generated ones).
#[derive(Debug, PartialEq)]
struct Layout {
    rowid: Option<&'static str>,
    columns: Vec<String>,
}

impl Layout {
    /// The names, as a part keeps them: the rowid's (or NULL), then the
    /// columns'.
    fn encoded(&self) -> Vec<u8> {
        let rowid = self
            .rowid
            .map_or(ValueRef::Null, |r| ValueRef::Text(r.as_bytes()));
        let columns = self.columns.iter().map(|c| ValueRef::Text(c.as_bytes()));
        encode(std::iter::once(rowid).chain(columns))
    }

    fn width(&self) -> usize {
        self.columns.len() + usize::from(self.rowid.is_some())
    }

    fn names(&self) -> String {
        let all = self.rowid.map(str::to_string).into_iter();
        all.chain(self.columns.iter().map(|c| quote(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The layout of the TEMP table `name`; none for a table whose rows
/// cannot be put back as they were: a virtual table or one of its
/// shadow tables, or one a TEMP trigger fires on.
fn layout(conn: &Connection, name: &str) -> rusqlite::Result<Option<Layout>> {
    let kind: Option<(String, bool)> = conn
        .prepare_cached(
            "SELECT type, wr FROM pragma_table_list WHERE schema = 'temp' AND name = ?1",
        )?
        .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
        .next()
        .transpose()?;
    let Some((kind, without_rowid)) = kind else {
        return Ok(None);
    };
    let triggered = conn
        .prepare_cached(
            "SELECT 1 FROM temp.sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE",
        )?
        .exists([name])?;
    if kind != "table" || triggered {
        return Ok(None);
    }
    let all: Vec<(String, i64)> = conn
        .prepare_cached("SELECT name, hidden FROM pragma_table_xinfo(?1, 'temp')")?
        .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let rowid = match without_rowid {
        true => None,
        false => match crate::plan::free_rowid_name(|n| {
            all.iter().any(|(c, _)| c.eq_ignore_ascii_case(n))
        }) {
            Some(r) => Some(r),
            None => return Ok(None),
        },
    };
    let columns = all.into_iter().filter(|(_, h)| *h == 0).map(|(c, _)| c);
    Ok(Some(Layout {
        rowid,
        columns: columns.collect(),
    }))
}

/// Keeps the rows of the TEMP `tables` step `step` of `plan` made, in
/// place of what an earlier run of the step kept, calling `between` after
/// each part. Keeps nothing if one of them cannot be put back (see
/// [`layout`]): a resume then stops where the step makes other rows, as
/// it did before rows were kept. Parts committed one by one are not used
/// until the step's checkpoint row names what they hold: the caller
/// writes it last, and a resume puts back only rows whose digest is the
/// row's.
pub fn keep(
    conn: &Connection,
    plan: &str,
    step: usize,
    tables: &[String],
    between: &mut dyn FnMut() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    forget(conn, plan, Some(step))?;
    let mut laid = Vec::new();
    for t in tables {
        match layout(conn, t)? {
            Some(l) => laid.push((t, l)),
            None => return not_kept(conn, (plan, step), tables),
        }
    }
    if !laid.is_empty() {
        conn.prepare_cached(CREATE)?.execute([])?;
    }
    for (t, l) in laid {
        keep_table(conn, (plan, step as i64), t, &l, between)?;
    }
    Ok(())
}

/// Notes that step `step` of `plan` made the TEMP `tables` but kept none
/// of their rows (part [`NOT_KEPT`]): a later step that writes the file
/// and changes one of them must still leave its note (see
/// [`forget_written`]), which it finds by what was kept of the table.
fn not_kept(
    conn: &Connection,
    (plan, step): (&str, usize),
    tables: &[String],
) -> rusqlite::Result<()> {
    conn.prepare_cached(CREATE)?.execute([])?;
    for t in tables {
        conn.prepare_cached(
            "INSERT INTO batchsse_setup (plan, step, tbl, part, columns, rows) VALUES (?1, ?2, ?3, ?4, X'', X'')",
        )?
        .execute(params![plan, step as i64, t, NOT_KEPT])?;
    }
    Ok(())
}

/// Reading a TEMP table goes on across the commits `between` makes: it
/// is the connection's own, and nothing else writes it meanwhile.
fn keep_table(
    conn: &Connection,
    (plan, step): (&str, i64),
    table: &str,
    l: &Layout,
    between: &mut dyn FnMut() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let columns = l.encoded();
    let mut insert = conn.prepare_cached(
        "INSERT INTO batchsse_setup (plan, step, tbl, part, columns, rows) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut select = conn.prepare(&format!("SELECT {} FROM temp.{}", l.names(), quote(table)))?;
    let mut rows = select.query([])?;
    let (mut part, mut buf) = (0i64, Vec::new());
    while let Some(row) = rows.next()? {
        for i in 0..l.width() {
            put_value(&mut buf, row.get_ref(i)?);
        }
        if buf.len() >= PART {
            insert.execute(params![plan, step, table, part, columns, buf])?;
            between()?;
            (part, buf) = (part + 1, Vec::new());
        }
    }
    if part == 0 || !buf.is_empty() {
        insert.execute(params![plan, step, table, part, columns, buf])?;
    }
    Ok(())
}

/// Puts back in the TEMP tables step `step` of `plan` made again the
/// rows an earlier run of it kept; the rows put back. None where none
/// were kept, or a table is not laid out as it was (made again with
/// other columns, or gone): the caller's transaction must then roll back
/// what was put.
pub fn restore(conn: &Connection, plan: &str, step: usize) -> rusqlite::Result<Option<u64>> {
    if !table_exists(conn, TABLE)? {
        return Ok(None);
    }
    let tables: Vec<(String, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT tbl, columns FROM batchsse_setup WHERE plan = ?1 AND step = ?2 AND part = 0",
        )?
        .query_map(params![plan, step as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut laid = Vec::new();
    for (t, columns) in &tables {
        match layout(conn, t)? {
            Some(l) if l.encoded() == *columns => laid.push((t.as_str(), l)),
            _ => return Ok(None),
        }
    }
    let names: Vec<&str> = laid.iter().map(|(t, _)| *t).collect();
    let deferred = defer_foreign_keys(conn, true)?;
    empty(conn, &names)?;
    let mut rows = 0;
    for (t, l) in &laid {
        rows += fill(conn, (plan, step), t, l)?;
    }
    defer_foreign_keys(conn, deferred)?;
    Ok((!tables.is_empty()).then_some(rows))
}

/// Sets `PRAGMA defer_foreign_keys` (it lasts until the transaction
/// ends), returning what it was: while the tables are emptied and filled
/// again a row may refer to one not put back yet.
fn defer_foreign_keys(conn: &Connection, on: bool) -> rusqlite::Result<bool> {
    let was = conn.query_row("PRAGMA defer_foreign_keys", [], |r| r.get(0))?;
    conn.execute_batch(&format!("PRAGMA defer_foreign_keys = {}", i32::from(on)))?;
    Ok(was)
}

/// Empties the TEMP `tables`, one that refers to another of them before
/// that one: a parent's rows go after its children's, as a `RESTRICT`
/// (checked at once, deferred or not) requires; and all go before any is
/// filled, so an `ON DELETE CASCADE` or `SET NULL` meets no row put back.
fn empty(conn: &Connection, tables: &[&str]) -> rusqlite::Result<()> {
    let mut left: Vec<(&str, Vec<String>)> = Vec::new();
    for t in tables {
        let parents = conn
            .prepare_cached("SELECT \"table\" FROM pragma_foreign_key_list(?1, 'temp')")?
            .query_map([t], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        left.push((t, parents));
    }
    while !left.is_empty() {
        let referred = |t: &str| {
            left.iter().any(|(c, ps)| {
                !c.eq_ignore_ascii_case(t) && ps.iter().any(|p| p.eq_ignore_ascii_case(t))
            })
        };
        // In a cycle every table is referred to: emptied as they come.
        let next = left.iter().position(|(t, _)| !referred(t)).unwrap_or(0);
        let (t, _) = left.remove(next);
        conn.execute(&format!("DELETE FROM temp.{}", quote(t)), [])?;
    }
    Ok(())
}

/// Fills the emptied TEMP `table` with the rows kept of it.
fn fill(
    conn: &Connection,
    (plan, step): (&str, usize),
    table: &str,
    l: &Layout,
) -> rusqlite::Result<u64> {
    let marks = vec!["?"; l.width()].join(", ");
    let mut insert = conn.prepare(&format!(
        "INSERT INTO temp.{} ({}) VALUES ({marks})",
        quote(table),
        l.names()
    ))?;
    let mut parts = conn.prepare_cached(
        "SELECT rows FROM batchsse_setup WHERE plan = ?1 AND step = ?2 AND tbl = ?3 AND part >= 0 ORDER BY part",
    )?;
    let mut read = parts.query(params![plan, step as i64, table])?;
    let mut count = 0;
    while let Some(part) = read.next()? {
        let blob = part.get_ref(0)?.as_blob()?;
        let vals = values(blob).map_err(|_| damaged(table))?;
        for row in vals.chunks(l.width().max(1)) {
            let row = row.iter().map(|v| ToSqlOutput::Borrowed(v.as_ref()));
            insert.execute(rusqlite::params_from_iter(row))?;
            count += 1;
        }
    }
    Ok(count)
}

fn damaged(table: &str) -> rusqlite::Error {
    rusqlite::Error::ModuleError(format!(
        "the rows kept of the TEMP table {} in {TABLE} are damaged",
        crate::human::quoted(table)
    ))
}

/// Removes what `plan` kept of the TEMP tables among `writes` (a step's,
/// as [`crate::plan::Step::writes`] names them), leaving in its place a
/// note that step `writer` changed the table (part [`CHANGED`]). A step
/// that writes the file is not done again on a resume, so what it changed
/// in a TEMP table an earlier TEMP-only step made is in neither the rows
/// that step kept nor in the table made again: put back or made again,
/// the table would lead the rest of the plan astray (a row the step took
/// off a to-do list back on it). The note stops such a resume at the
/// TEMP-only step (see [`changed_by`]). It names every step that changed
/// the table, so that an undo taking one of them back (see
/// [`forget_writer`]) leaves the others' change noted.
pub fn forget_written(
    conn: &Connection,
    plan: &str,
    writer: usize,
    writes: &[String],
) -> rusqlite::Result<()> {
    let mut temp = writes
        .iter()
        .filter_map(|w| w.split_once(OTHER_SCHEMA).filter(|(db, _)| *db == "temp"))
        .peekable();
    if temp.peek().is_none() || !table_exists(conn, TABLE)? {
        return Ok(());
    }
    for (_, t) in temp {
        let made: Vec<(i64, String)> = conn
            .prepare_cached(
                "SELECT DISTINCT step, tbl FROM batchsse_setup
                 WHERE plan = ?1 AND tbl = ?2 COLLATE NOCASE AND step < ?3",
            )?
            .query_map(params![plan, t, writer as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (step, tbl) in made {
            let mut by = writers(conn, (plan, step, &tbl))?;
            if !by.contains(&(writer as i64)) {
                by.push(writer as i64);
            }
            set_writers(conn, (plan, step, &tbl), &by)?;
        }
        conn.prepare_cached(
            "DELETE FROM batchsse_setup WHERE plan = ?1 AND tbl = ?2 COLLATE NOCASE AND part >= 0 AND step < ?3",
        )?
        .execute(params![plan, t, writer as i64])?;
    }
    drop_if_empty(conn)
}

/// Takes step `writer` of `plan` off the notes [`forget_written`] left,
/// a note naming no other step with it: an undo took the step back, so a
/// run of the plan does it again, and its change to the TEMP table with
/// it. The rows kept of the table stay forgotten: a resume that makes
/// other rows there stops, as where none were kept.
pub fn forget_writer(conn: &Connection, plan: &str, writer: usize) -> rusqlite::Result<()> {
    if !table_exists(conn, TABLE)? {
        return Ok(());
    }
    let notes: Vec<(i64, String)> = conn
        .prepare_cached("SELECT step, tbl FROM batchsse_setup WHERE plan = ?1 AND part = ?2")?
        .query_map(params![plan, CHANGED], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (step, tbl) in notes {
        let mut by = writers(conn, (plan, step, &tbl))?;
        by.retain(|w| *w != writer as i64);
        set_writers(conn, (plan, step, &tbl), &by)?;
    }
    drop_if_empty(conn)
}

/// The steps the note of (plan, step, table) names; none without one.
fn writers(conn: &Connection, (plan, step, tbl): (&str, i64, &str)) -> rusqlite::Result<Vec<i64>> {
    let note: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT rows FROM batchsse_setup WHERE plan = ?1 AND step = ?2 AND tbl = ?3 AND part = ?4",
        )?
        .query_map(params![plan, step, tbl, CHANGED], |r| r.get(0))?
        .next()
        .transpose()?;
    let vals = note.map_or(Ok(Vec::new()), |n| values(&n).map_err(|_| damaged(tbl)))?;
    Ok(vals
        .into_iter()
        .filter_map(|v| match v {
            Val::Integer(w) => Some(w),
            _ => None,
        })
        .collect())
}

/// Writes the note of (plan, step, table) naming the steps `by`, or
/// removes it where they are none.
fn set_writers(
    conn: &Connection,
    (plan, step, tbl): (&str, i64, &str),
    by: &[i64],
) -> rusqlite::Result<()> {
    if by.is_empty() {
        conn.prepare_cached(
            "DELETE FROM batchsse_setup WHERE plan = ?1 AND step = ?2 AND tbl = ?3 AND part = ?4",
        )?
        .execute(params![plan, step, tbl, CHANGED])?;
        return Ok(());
    }
    let note = encode(by.iter().map(|w| ValueRef::Integer(*w)));
    conn.prepare_cached(
        "INSERT OR REPLACE INTO batchsse_setup (plan, step, tbl, part, columns, rows) VALUES (?1, ?2, ?3, ?4, X'', ?5)",
    )?
    .execute(params![plan, step, tbl, CHANGED, note])?;
    Ok(())
}

/// The plans that keep anything, by name: one may have no checkpoint row
/// (a run stopped while it wrote the rows of its first step, the step's
/// checkpoint row going last).
pub fn plans(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    if !table_exists(conn, TABLE)? {
        return Ok(Vec::new());
    }
    conn.prepare("SELECT DISTINCT plan FROM batchsse_setup ORDER BY plan")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// The bytes of rows each plan's steps keep: (plan, step, bytes).
pub fn sizes(conn: &Connection) -> rusqlite::Result<Vec<(String, i64, u64)>> {
    if !table_exists(conn, TABLE)? {
        return Ok(Vec::new());
    }
    conn.prepare(
        "SELECT plan, step, sum(length(rows)) FROM batchsse_setup WHERE part >= 0 GROUP BY plan, step",
    )?
    .query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
    })?
    .collect()
}

/// The part that notes a TEMP table changed by a later step that writes
/// the file (see [`forget_written`]).
const CHANGED: i64 = -1;

/// The part that notes a TEMP table whose rows the step made but could
/// not keep (see [`not_kept`]).
const NOT_KEPT: i64 = -2;

/// The step that, as [`forget_written`] noted, changed a TEMP table step
/// `step` of `plan` made, and that table; none where no such step did.
pub fn changed_by(
    conn: &Connection,
    plan: &str,
    step: usize,
) -> rusqlite::Result<Option<(usize, String)>> {
    if !table_exists(conn, TABLE)? {
        return Ok(None);
    }
    let found: Option<(String, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT tbl, rows FROM batchsse_setup WHERE plan = ?1 AND step = ?2 AND part = ?3 ORDER BY tbl LIMIT 1",
        )?
        .query_map(params![plan, step as i64, CHANGED], |r| Ok((r.get(0)?, r.get(1)?)))?
        .next()
        .transpose()?;
    Ok(
        found.and_then(|(t, note)| match values(&note).ok()?.first()? {
            Val::Integer(w) => Some((usize::try_from(*w).ok()?, t)),
            _ => None,
        }),
    )
}

/// Removes what `plan` kept (of its `step` only, if given), and the
/// table once it is empty.
pub fn forget(conn: &Connection, plan: &str, step: Option<usize>) -> rusqlite::Result<()> {
    if !table_exists(conn, TABLE)? {
        return Ok(());
    }
    conn.prepare_cached(
        "DELETE FROM batchsse_setup WHERE plan = ?1 AND (?2 IS NULL OR step = ?2)",
    )?
    .execute(params![plan, step.map(|s| s as i64)])?;
    drop_if_empty(conn)
}

fn drop_if_empty(conn: &Connection) -> rusqlite::Result<()> {
    let empty: bool = conn
        .prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM batchsse_setup)")?
        .query_row([], |r| r.get(0))?;
    if empty {
        conn.execute_batch("DROP TABLE batchsse_setup")?;
    }
    Ok(())
}
