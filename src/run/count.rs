//! How many rows a step's statement changed: SQLite's `changes()`, the
//! rows it changed itself, not those its triggers and foreign-key actions
//! changed besides. A statement on a view changes no row itself (its
//! INSTEAD OF triggers write them all, and `changes()` counts none): it
//! counts the view rows it processed, as `changes()` counts a table's.
//! SQLite counts those with `PRAGMA count_changes`, which makes an INSERT,
//! UPDATE or DELETE end with a row holding its count; it is turned on for
//! one statement at a time, and only in a step that writes a view, so a
//! step that writes only tables pays no more than one look at the schema
//! as it begins (a plain one again after a statement that wrote nothing,
//! which may have made a view), none a chunk.
//!
//! What `count_changes` counts (SQLite's insert.c, update.c, delete.c; the
//! integration tests hold it to it): the top-level statement's rows only,
//! never a trigger's; an INSERT or UPDATE counts a row once its INSTEAD OF
//! triggers are done, so not one they skip with `RAISE(IGNORE)`; a DELETE
//! counts every row it finds, before its triggers run, skipped ones too;
//! a statement with `RETURNING` gives its own rows instead, one for each
//! row processed. A TEMP INSTEAD OF trigger of batchsse's counting each
//! row would do worse: SQLite fires TEMP triggers before the schema's, so
//! it would count every row a user's trigger then skips.

use std::cell::Cell;

use rusqlite::{Connection, Rows, Statement};

use super::Runner;
use crate::plan::{self, Step};

/// A step statement's kind, read from it as prepared without
/// `count_changes` (which changes what it gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// It only reads (a `SELECT`): it changes nothing.
    Reads,
    /// It writes and gives rows: `RETURNING` (or a `PRAGMA` that answers).
    Returns,
    /// It writes and gives nothing: INSERT, UPDATE, DELETE, DDL.
    Writes,
}

impl Shape {
    pub(super) fn of(stmt: &Statement<'_>) -> Shape {
        if stmt.readonly() {
            Shape::Reads
        } else if stmt.column_count() > 0 {
            Shape::Returns
        } else {
            Shape::Writes
        }
    }
}

/// What a statement gave as it ran.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ran {
    /// Its rows (a `RETURNING` clause's), in a step that writes a view.
    returned: Option<u64>,
    /// The count `count_changes` ended it with, and whether it is a
    /// DELETE's.
    count: Option<(u64, bool)>,
}

/// Where the connection's writes stood before a statement: the rows
/// written so far, and those of them the undo's TEMP triggers staged.
#[derive(Clone, Copy)]
pub(super) struct Before {
    total: u64,
    staged: u64,
}

/// A statement's count, as [`changed`] makes it out.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Count {
    Exact(u64),
    /// A DELETE's count (rows found, skipped ones too) where it changed
    /// none itself: on a view, exact unless a trigger skips rows.
    Deleted(u64),
    /// It changed none itself while rows were written, and gave no count:
    /// none, but for a statement on a view.
    Unsure,
}

/// What the current step is known to write: looked up once a step (and
/// again in a plain step after a statement that may have made a view).
#[derive(Default)]
pub(super) struct Views {
    /// Whether it writes a view.
    writes: Cell<Option<bool>>,
    /// Whether a trigger of a table or view it writes may skip rows with
    /// `RAISE(IGNORE)`.
    skips: Cell<Option<bool>>,
}

impl Views {
    /// Forgets what it knew, as a step begins.
    pub(super) fn reset(&self) {
        self.writes.set(None);
        self.skips.set(None);
    }
}

/// The rows a statement changed, from what it gave (`ran`), the rows
/// written while it ran (`all`) and `changes()` after it (`direct`).
pub(super) fn changed(ran: Ran, all: u64, direct: u64) -> Count {
    if let Some((n, deleted)) = ran.count {
        // A count is a DML statement's, so `changes()` is its own: on a
        // table it is exact where a DELETE's count is not.
        return match (direct, deleted) {
            (0, true) if n > 0 => Count::Deleted(n),
            (0, _) => Count::Exact(n),
            _ => Count::Exact(direct),
        };
    }
    // Nothing written: `changes()` keeps its old value after DDL.
    if all == 0 {
        return Count::Exact(0);
    }
    match (direct, ran.returned) {
        (0, Some(rows)) => Count::Exact(rows),
        (0, None) => Count::Unsure,
        _ => Count::Exact(direct),
    }
}

/// `PRAGMA count_changes` on, while this lives: the statement prepared or
/// run meanwhile ends with its count (SQLite sets the flag as it compiles
/// the pragma, and has every prepared statement compiled again). Off
/// again when dropped, before batchsse writes its own rows, whose
/// `execute` would refuse a statement that gives one.
pub(super) struct Counting<'c>(&'c Connection);

impl<'c> Counting<'c> {
    fn on(conn: &'c Connection) -> rusqlite::Result<Counting<'c>> {
        let on = Counting(conn);
        conn.execute_batch("PRAGMA count_changes = 1")?;
        Ok(on)
    }
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("PRAGMA count_changes = 0");
    }
}

/// Reads a statement's rows to its end: what it `ran`, with `counting`
/// on (its count) or in a step that writes a view (`RETURNING`'s rows).
fn drain(mut rows: Rows<'_>, shape: Shape, counting: bool, views: bool) -> rusqlite::Result<Ran> {
    let mut ran = Ran::default();
    let mut n = 0;
    while let Some(row) = rows.next()? {
        if n == 0 && counting && shape == Shape::Writes {
            let deleted = row
                .as_ref()
                .column_name(0)
                .is_ok_and(|c| c == "rows deleted");
            let count = row.get::<_, i64>(0).unwrap_or(0).max(0) as u64;
            ran.count = Some((count, deleted));
        }
        n += 1;
    }
    if views && shape == Shape::Returns {
        ran.returned = Some(n);
    }
    Ok(ran)
}

impl Runner<'_> {
    /// Runs a statement of `step` (of `shape`, read as it was prepared),
    /// bound to a chunk's `keys` if it is a chunked step's, reading and
    /// dropping any rows it gives; returns the rows it changed.
    pub(super) fn run_counted(
        &self,
        step: &Step,
        (stmt, shape): (&mut Statement<'_>, Shape),
        keys: Option<(&plan::Key, &plan::Key)>,
    ) -> rusqlite::Result<u64> {
        let before = self.writes_so_far()?;
        self.put_rowid();
        let views = shape != Shape::Reads && self.writes_view(step);
        let counting = match views && shape == Shape::Writes {
            true => Some(Counting::on(self.conn)?),
            false => None,
        };
        let rows = match keys {
            Some((lo, hi)) => stmt.query(rusqlite::named_params! {":lo": lo, ":hi": hi})?,
            None => stmt.raw_query(),
        };
        let ran = drain(rows, shape, counting.is_some(), views)?;
        drop(counting);
        self.note_rowid();
        let all = self.conn.total_changes().saturating_sub(before.total);
        // A plain step's statement that wrote nothing may have made a
        // view (`CREATE VIEW`) the next one writes: look again then. A
        // chunk's statement makes none, and its chunks look up nothing.
        if keys.is_none() && all == 0 && shape == Shape::Writes && !views {
            self.views.writes.set(None);
        }
        match changed(ran, all, self.conn.changes()) {
            Count::Exact(n) => Ok(n),
            Count::Deleted(n) if !self.skips_rows(step) => Ok(n),
            Count::Deleted(_) => self.written_since(before, all),
            Count::Unsure if self.may_write_view(step) => self.written_since(before, all),
            Count::Unsure => Ok(0),
        }
    }

    /// Where the connection's writes stood before a statement.
    fn writes_so_far(&self) -> rusqlite::Result<Before> {
        Ok(Before {
            total: self.conn.total_changes(),
            staged: self.staged()?,
        })
    }

    /// The rows the undo's TEMP triggers staged so far (none but in a
    /// build without the pre-update hook).
    fn staged(&self) -> rusqlite::Result<u64> {
        match &self.recorder {
            Some(rec) => rec.staged(),
            None => Ok(0),
        }
    }

    /// The count of a statement on a view where `count_changes` cannot
    /// give it (see [`Runner::skips_rows`]): every row written while it
    /// ran (`all` since `before`), but those the undo staged.
    fn written_since(&self, before: Before, all: u64) -> rusqlite::Result<u64> {
        let staged = self.staged()?.saturating_sub(before.staged);
        Ok(all.saturating_sub(staged))
    }

    /// Whether `step` writes a view, as looked up once a step.
    fn writes_view(&self, step: &Step) -> bool {
        let known = self.views.writes.get();
        known.unwrap_or_else(|| {
            let found = self.may_write_view(step);
            self.views.writes.set(Some(found));
            found
        })
    }

    /// Whether `step` may write a view: one the pre-run check saw it
    /// write, or where the check could not see all it writes (a view of a
    /// database the plan attaches), any view an INSTEAD OF trigger lets it
    /// write.
    fn may_write_view(&self, step: &Step) -> bool {
        self.writes_a_view(step) || (!step.writes_seen() && self.any_trigger("%instead%of%"))
    }

    /// Whether a trigger whose SQL is `LIKE` `pattern` is in any schema of
    /// the connection, attached ones included.
    fn any_trigger(&self, pattern: &str) -> bool {
        let schemas: Vec<String> = match self.conn.prepare("SELECT name FROM pragma_database_list")
        {
            Ok(mut q) => q
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .unwrap_or_default(),
            Err(_) => return false,
        };
        schemas.iter().any(|schema| {
            let sql = format!(
                "SELECT 1 FROM {}.sqlite_schema WHERE type = 'trigger' AND lower(sql) LIKE ?1",
                plan::quote(schema)
            );
            self.conn
                .prepare(&sql)
                .and_then(|mut q| q.exists([pattern]))
                .unwrap_or(false)
        })
    }

    /// Whether `step` writes a view, as the pre-run check saw (a view it
    /// cannot find, as after a `DETACH`, counts as none).
    fn writes_a_view(&self, step: &Step) -> bool {
        self.any_written(step, |schema| {
            format!(
                "SELECT 1 FROM {schema}.sqlite_schema WHERE type = 'view' AND name = ?1 COLLATE NOCASE"
            )
        })
    }

    /// Whether a trigger of a table or view `step` writes may skip a row
    /// with `RAISE(IGNORE)`, as read from its SQL (loosely: one that says
    /// both words): a DELETE's count then takes in the rows skipped, and
    /// the step's DELETEs that changed no row themselves are counted as
    /// before, by the rows written while they ran.
    fn skips_rows(&self, step: &Step) -> bool {
        if let Some(known) = self.views.skips.get() {
            return known;
        }
        let trigger = |schema: &str| {
            format!(
                "SELECT 1 FROM {schema}.sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE AND lower(sql) LIKE '%raise%ignore%'"
            )
        };
        // A TEMP trigger may be on a table of any schema; where the check
        // could not see all the step writes, any trigger may be one of it.
        let found = self.any_written(step, trigger)
            || self.any_written(step, |_| trigger("temp"))
            || (!step.writes_seen() && self.any_trigger("%raise%ignore%"));
        self.views.skips.set(Some(found));
        found
    }

    /// Whether `query` (made for a table's schema, `?1` its name) finds a
    /// row for any table `step` writes.
    fn any_written(&self, step: &Step, query: impl Fn(&str) -> String) -> bool {
        step.writes.iter().any(|w| {
            let (schema, name) = w.split_once(plan::OTHER_SCHEMA).unwrap_or(("main", w));
            self.conn
                .prepare_cached(&query(&plan::quote(schema)))
                .and_then(|mut q| q.exists([name]))
                .unwrap_or(false)
        })
    }
}

/// Makes SQLite's `changes()` answer 0, as after a statement that changed
/// no row, for the `expect` of a chunked step whose last chunk held none
/// (or that had none to visit): no statement of the step ran in it, and
/// `changes()` would answer for what batchsse wrote after the chunk
/// before (its checkpoint). Only an INSERT, UPDATE or DELETE sets
/// `changes()`, so a DELETE runs on a TEMP table made for it and dropped
/// at once, which never reaches the file.
pub(super) fn forget_changes(conn: &Connection) -> rusqlite::Result<()> {
    let mut taken =
        conn.prepare("SELECT 1 FROM temp.sqlite_schema WHERE name = ?1 COLLATE NOCASE")?;
    let mut name = "batchsse_changes".to_owned();
    for n in 2.. {
        if !taken.exists([&name])? {
            break;
        }
        name = format!("batchsse_changes_{n}");
    }
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE {name}(x); DELETE FROM temp.{name}; DROP TABLE temp.{name};"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_stands_for_a_statement_that_changed_none_itself() {
        let count = |n, deleted| Ran {
            count: Some((n, deleted)),
            returned: None,
        };
        // A view's UPDATE: its triggers wrote two rows a view row.
        assert_eq!(changed(count(40, false), 80, 0), Count::Exact(40));
        // A table's, its own count.
        assert_eq!(changed(count(7, false), 7, 7), Count::Exact(7));
        // A table's DELETE whose trigger skipped 3 of 10 rows.
        assert_eq!(changed(count(10, true), 7, 7), Count::Exact(7));
        // A view's DELETE: exact unless a trigger skips rows.
        assert_eq!(changed(count(5, true), 10, 0), Count::Deleted(5));
        assert_eq!(changed(count(0, true), 0, 0), Count::Exact(0));
        // A view's UPDATE whose trigger wrote nothing still processed rows.
        assert_eq!(changed(count(3, false), 0, 0), Count::Exact(3));
    }

    #[test]
    fn without_a_count_a_statement_counts_as_changes_says() {
        let none = Ran::default();
        // DDL: `changes()` is the statement's before.
        assert_eq!(changed(none, 0, 12), Count::Exact(0));
        assert_eq!(changed(none, 9, 4), Count::Exact(4));
        assert_eq!(changed(none, 9, 0), Count::Unsure);
        // `RETURNING` on a view: a row for each view row processed.
        let returned = Ran {
            returned: Some(6),
            count: None,
        };
        assert_eq!(changed(returned, 12, 0), Count::Exact(6));
        assert_eq!(changed(returned, 6, 6), Count::Exact(6));
    }
}
