//! The rowids a chunk changed in the table it walks, for a
//! [`Chunk::fenced`](crate::plan::Chunk::fenced) step: SQLite's update
//! hook notes the smallest and the largest, and a chunk that changed one
//! outside its own range changed a row another chunk changes again. A
//! count cannot tell when the statement also leaves some of its own rows
//! alone (`WHERE id BETWEEN :lo AND :hi + 1 AND active`).
//!
//! The hook is called for every row written; it compares the table's name
//! only when SQLite hands it another table than the last one.

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_void};

use rusqlite::{Connection, ffi};

use super::hooked::Hooked;

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
}

/// The hook, on one connection while this lives.
pub struct Fence<'c>(Hooked<'c, Shared>);

impl<'c> Fence<'c> {
    /// Watches writes to `table` of `main` on `conn`, which must have no
    /// update hook of its own meanwhile: this one replaces it, and
    /// removes it when dropped.
    pub fn install(conn: &'c Connection, table: &str) -> Fence<'c> {
        let shared = Shared {
            table: table.to_owned(),
            last: Cell::new(std::ptr::null()),
            hit: Cell::new(false),
            min: Cell::new(i64::MAX),
            max: Cell::new(i64::MIN),
        };
        Fence(Hooked::install(conn, shared, on_write, None))
    }

    /// Forgets what was written so far, before a chunk's statement.
    pub fn reset(&self) {
        let s = self.0.state();
        s.min.set(i64::MAX);
        s.max.set(i64::MIN);
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
}

unsafe extern "C" fn on_write(
    ctx: *mut c_void,
    _op: c_int,
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
        let fence = Fence::install(&conn, "T");
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
}
