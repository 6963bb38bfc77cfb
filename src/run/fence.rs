//! The rowids a chunk changed in the table it walks, for a
//! [`Chunk::fenced`](crate::plan::Chunk::fenced) step: SQLite's update
//! hook notes the smallest and the largest, and a chunk that changed one
//! outside its own range changed a row another chunk changes again. A
//! count cannot tell when the statement also leaves some of its own rows
//! alone (`WHERE id BETWEEN :lo AND :hi + 1 AND active`). A walk by
//! another key than the rowid keeps every rowid written, and then asks
//! the table which of them lie outside the chunk's keys.
//!
//! The hook is called for every row written; it compares the table's name
//! only when SQLite hands it another table than the last one.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_char, c_int, c_void};

use rusqlite::{Connection, OptionalExtension, ffi};

use super::hooked::{Beneath, Hooked};
use crate::plan::{Chunk, Key, quote};

struct Shared {
    table: String,
    /// The last table name SQLite passed (its address) and whether it
    /// was the walked table's.
    last: Cell<*const c_char>,
    hit: Cell<bool>,
    /// The smallest and largest rowid written in the walked table
    /// (`i64::MAX` and `i64::MIN` when none was).
    min: Cell<i64>,
    max: Cell<i64>,
    /// Every rowid written in the walked table, when the walk is by
    /// another key (`None` for a rowid walk, which needs only the span).
    written: Option<RefCell<Vec<i64>>>,
    /// For a rowid walk whose step inserts into its table: where the walk
    /// ends, and the largest rowid inserted up to there (`i64::MIN` when
    /// none was), see [`Fence::inserted_ahead`].
    end: Option<i64>,
    inserted: Cell<i64>,
}

/// The hook, on one connection while this lives.
/// With a name of the walked table's rowid when it keeps every rowid
/// written.
pub struct Fence<'c>(Hooked<'c, Shared>, Option<&'static str>);

impl<'c> Fence<'c> {
    /// Watches writes to `table` of `main` on `conn`, whose update hook
    /// must be `beneath` (the undo recording's) or none meanwhile: this
    /// one replaces it, tells it every write too, and puts it back when
    /// dropped. Over none, SQLite calls this one's callback directly,
    /// which a run without `--undo` pays for each row. Given a name of
    /// the table's rowid that no column takes, it also keeps every rowid
    /// written (see [`Fence::outside`]).
    pub fn install(
        conn: &'c Connection,
        beneath: Option<Beneath<'c>>,
        table: &str,
        rowid: Option<&'static str>,
    ) -> Fence<'c> {
        Fence::watching(conn, beneath, table, (rowid, None))
    }

    /// Watches the rows inserted into `table` of `main` on `conn`, walked
    /// by rowid up to `end`, over `beneath` as [`Fence::install`] does:
    /// for a step that inserts into the table it walks, whose inserts
    /// must land past the walk's end (or behind it), never ahead of it.
    pub fn install_for_inserts(
        conn: &'c Connection,
        beneath: Option<Beneath<'c>>,
        table: &str,
        end: i64,
    ) -> Fence<'c> {
        Fence::watching(conn, beneath, table, (None, Some(end)))
    }

    fn watching(
        conn: &'c Connection,
        beneath: Option<Beneath<'c>>,
        table: &str,
        (rowid, end): (Option<&'static str>, Option<i64>),
    ) -> Fence<'c> {
        let shared = Shared {
            table: table.to_owned(),
            last: Cell::new(std::ptr::null()),
            hit: Cell::new(false),
            min: Cell::new(i64::MAX),
            max: Cell::new(i64::MIN),
            written: rowid.map(|_| RefCell::new(Vec::new())),
            end,
            inserted: Cell::new(i64::MIN),
        };
        Fence(
            Hooked::install(conn, beneath, shared, on_write, None),
            rowid,
        )
    }

    /// The largest rowid inserted since [`Fence::reset`] that lies after
    /// `hi` and up to the walk's end: a row a later chunk would visit,
    /// and insert from again. Only for [`Fence::install_for_inserts`].
    pub fn inserted_ahead(&self, hi: i64) -> Option<i64> {
        let top = self.0.state().inserted.get();
        (top > hi).then_some(top)
    }

    /// Forgets what was written so far, before a chunk's statement.
    pub fn reset(&self) {
        let s = self.0.state();
        s.min.set(i64::MAX);
        s.max.set(i64::MIN);
        s.inserted.set(i64::MIN);
        if let Some(w) = &s.written {
            w.borrow_mut().clear();
        }
        // A name's address may belong to another table once the schema
        // has been read again.
        s.last.set(std::ptr::null());
    }

    /// The smallest and largest rowid written since [`Fence::reset`].
    pub fn span(&self) -> Option<(i64, i64)> {
        let s = self.0.state();
        let (min, max) = (s.min.get(), s.max.get());
        (min <= max).then_some((min, max))
    }

    /// The key of a row written since [`Fence::reset`] whose key is not
    /// between `lo` and `hi` (compared as a step compares them, in the
    /// column's collation), if one was. Only for a fence that keeps its
    /// rowids. Reads the rowids between the bounds from the key's index
    /// when the chunk wrote more than a few of the `rows` it holds, or
    /// each row written by its rowid when it wrote few.
    pub fn outside(
        &self,
        conn: &Connection,
        chunk: &Chunk,
        (lo, hi): (&Key, &Key),
        rows: u64,
    ) -> rusqlite::Result<Option<Key>> {
        let (Some(written), Some(rowid)) = (&self.0.state().written, self.1) else {
            return Ok(None);
        };
        let mut written = written.borrow_mut();
        if written.is_empty() {
            return Ok(None);
        }
        let at = Table {
            conn,
            table: &quote(&chunk.table),
            key: &chunk.key_sql,
            rowid,
        };
        if self
            .span()
            .is_some_and(|span| at.span_inside(span, (lo, hi), written.len()))
        {
            return Ok(None);
        }
        written.sort_unstable();
        written.dedup();
        let stray = if (written.len() as u64).saturating_mul(8) < rows {
            at.first_stray_by_row(&written, (lo, hi))?
        } else {
            at.first_stray_by_range(&written, (lo, hi))?
        };
        let Some(stray) = stray else {
            return Ok(None);
        };
        let sql = format!("SELECT {} FROM {} WHERE {rowid} = ?1", at.key, at.table);
        conn.prepare_cached(&sql)?
            .query_row([stray], |r| r.get(0))
            .optional()
    }
}

/// The walked table, as SQL, on its connection.
struct Table<'a> {
    conn: &'a Connection,
    table: &'a str,
    key: &'a str,
    /// A name of its rowid that no column takes.
    rowid: &'static str,
}

impl Table<'_> {
    /// Whether every row whose rowid is from `min` to `max` has its key
    /// between `lo` and `hi`: then so has every row written, whose rowids
    /// span no more. Asked only where that span holds few rows more than
    /// the `written` ones (a key that grows with the rowid), where it
    /// reads fewer rows, and reads them in SQLite alone.
    fn span_inside(&self, (min, max): (i64, i64), (lo, hi): (&Key, &Key), written: usize) -> bool {
        let wide = (max as i128 - min as i128) >= 2 * written as i128;
        if wide {
            return false;
        }
        let (rowid, table, key) = (self.rowid, self.table, self.key);
        let sql = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {table} WHERE {rowid} BETWEEN ?1 AND ?2 AND NOT coalesce({key} BETWEEN ?3 AND ?4, 0))"
        );
        let inside = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(rusqlite::params![min, max, lo, hi], |r| r.get(0)));
        inside.unwrap_or(false)
    }

    /// The first of `written` (sorted, each once) whose row's key is not
    /// between `lo` and `hi`, if one is: reads every rowid the bounds
    /// hold.
    fn first_stray_by_range(
        &self,
        written: &[i64],
        (lo, hi): (&Key, &Key),
    ) -> rusqlite::Result<Option<i64>> {
        let (rowid, table, key) = (self.rowid, self.table, self.key);
        let sql = format!("SELECT {rowid} FROM {table} WHERE {key} BETWEEN ?1 AND ?2");
        let mut held = self.conn.prepare_cached(&sql)?;
        let mut rows = held.query(rusqlite::params![lo, hi])?;
        let mut inside = vec![false; written.len()];
        while let Some(row) = rows.next()? {
            if let Ok(i) = written.binary_search(&row.get(0)?) {
                inside[i] = true;
            }
        }
        Ok(inside.iter().position(|i| !i).map(|i| written[i]))
    }

    /// As [`Table::first_stray_by_range`], looking up each row written.
    fn first_stray_by_row(
        &self,
        written: &[i64],
        (lo, hi): (&Key, &Key),
    ) -> rusqlite::Result<Option<i64>> {
        let (rowid, table, key) = (self.rowid, self.table, self.key);
        let sql =
            format!("SELECT coalesce({key} BETWEEN ?2 AND ?3, 0) FROM {table} WHERE {rowid} = ?1");
        let mut held = self.conn.prepare_cached(&sql)?;
        for &row in written {
            let inside: Option<bool> = held
                .query_row(rusqlite::params![row, lo, hi], |r| r.get(0))
                .optional()?;
            // A row the chunk deleted is gone: a contained step deletes none.
            if inside == Some(false) {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }
}

unsafe extern "C" fn on_write(
    ctx: *mut c_void,
    op: c_int,
    db: *const c_char,
    table: *const c_char,
    rowid: ffi::sqlite3_int64,
) {
    // SAFETY: `ctx` is the `Shared` of a live `Fence` (see `install`);
    // SQLite passes the names as NUL-terminated strings for this call.
    let s = unsafe { &*(ctx as *const Shared) };
    if s.last.get() != table {
        unsafe { another_table(s, db, table) };
    }
    if s.hit.get() {
        s.min.set(s.min.get().min(rowid));
        s.max.set(s.max.get().max(rowid));
        if let Some(w) = &s.written {
            w.borrow_mut().push(rowid);
        }
        if let Some(end) = s.end
            && op == ffi::SQLITE_INSERT
            && rowid <= end
        {
            s.inserted.set(s.inserted.get().max(rowid));
        }
    }
}

/// Whether `db.table`, which SQLite names for the first time since the
/// last, is the walked table. Out of line: the hook runs for every row.
#[cold]
#[inline(never)]
unsafe fn another_table(s: &Shared, db: *const c_char, table: *const c_char) {
    // SAFETY: as in `on_write`.
    let name = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_bytes();
    let hit = name(db) == b"main" && name(table).eq_ignore_ascii_case(s.table.as_bytes());
    s.last.set(table);
    s.hit.set(hit);
}

/// Whether a foreign key of `table` to itself may cascade (foreign keys
/// on): its writes reach rows of other chunks, and the authorizer takes
/// them for the statement's own. Taken for yes when it cannot be told.
pub fn cascades(conn: &Connection, table: &str) -> bool {
    conn.query_row(
        "SELECT (SELECT foreign_keys FROM pragma_foreign_keys) AND EXISTS (SELECT 1 FROM pragma_foreign_key_list(?1) WHERE \"table\" = ?1 COLLATE NOCASE)",
        [table],
        |row| row.get::<_, bool>(0),
    )
    .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_the_rowids_written_in_its_table_only() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT); CREATE TABLE u(id INTEGER PRIMARY KEY);
             INSERT INTO t(id, n) VALUES (1, 0), (5, 0), (9, 0); INSERT INTO u VALUES (100);",
        )
        .unwrap();
        let fence = Fence::install(&conn, None, "T", None);
        conn.execute("UPDATE t SET n = 1 WHERE id > 1", []).unwrap();
        conn.execute("UPDATE u SET id = 200", []).unwrap();
        assert_eq!(fence.span(), Some((5, 9)));
        fence.reset();
        assert_eq!(fence.span(), None);
        conn.execute("DELETE FROM t WHERE id = 1", []).unwrap();
        assert_eq!(fence.span(), Some((1, 1)));
        drop(fence);
        conn.execute("UPDATE t SET n = 2", []).unwrap();
    }

    #[test]
    fn finds_a_row_written_outside_the_keys_by_range_and_by_row() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(k TEXT UNIQUE, n INT);
             INSERT INTO t(rowid, k, n) VALUES (1, 'd', 0), (2, 'a', 0), (3, 'c', 0), (4, 'b', 0);",
        )
        .unwrap();
        let at = Table {
            conn: &conn,
            table: "t",
            key: "k",
            rowid: "rowid",
        };
        let bounds = (&Key::Text("a".into()), &Key::Text("b".into()));
        for written in [&[2, 4][..], &[2], &[]] {
            assert_eq!(at.first_stray_by_range(written, bounds).unwrap(), None);
            assert_eq!(at.first_stray_by_row(written, bounds).unwrap(), None);
        }
        for written in [&[1, 2, 4][..], &[1], &[1, 3]] {
            assert_eq!(at.first_stray_by_range(written, bounds).unwrap(), Some(1));
            assert_eq!(at.first_stray_by_row(written, bounds).unwrap(), Some(1));
        }
        let fence = Fence::install(&conn, None, "t", Some("rowid"));
        conn.execute("UPDATE t SET n = 1 WHERE k IN ('a', 'c')", [])
            .unwrap();
        let chunk = Chunk {
            table: "t".into(),
            key_sql: "\"k\"".into(),
            key: "k".into(),
            rowid: false,
            stable_rowid: false,
            size: 2,
            contained: true,
            fenced: true,
            inserts: false,
            peers: false,
        };
        let found = fence.outside(&conn, &chunk, bounds, 2).unwrap();
        assert_eq!(found, Some(Key::Text("c".into())));
    }
}
