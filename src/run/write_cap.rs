//! Stops a statement once it has changed a given number of rows, and notes
//! the first row it changed. For the empty-chunk try (see `escape`): a
//! step missing its chunk's range is stopped after a few rows instead of
//! rewriting a whole table under the write lock, only to be rolled back.
//!
//! SQLite's update hook counts the rows, and its progress handler stops
//! the statement once the count reaches the cap. The update hook is not
//! called for WITHOUT ROWID tables: a statement that changes only those
//! runs to its end, as it did before.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};

use rusqlite::{Connection, ffi};

use super::hooked::{Beneath, Hooked};

/// What a statement changed while a [`WriteCap`] watched.
#[derive(Default, Clone)]
pub struct Writes {
    /// Rows the update hook saw changed (triggers' and cascades' too).
    pub rows: u64,
    /// The first of them: its table (`db.table` outside `main`) and rowid.
    pub first: Option<(String, i64)>,
    /// Each of them, up to the cap: table and rowid, as `first`.
    pub all: Vec<(String, i64)>,
}

struct Shared {
    cap: u64,
    writes: RefCell<Writes>,
}

/// The hooks, on one connection while this lives.
pub struct WriteCap<'c>(Hooked<'c, Shared>);

impl<'c> WriteCap<'c> {
    /// Watches `conn`'s writes and stops its statement at `cap` rows. The
    /// connection's update hook must be `beneath` (the undo recording's)
    /// or none, and it must have no progress handler of its own
    /// meanwhile: these replace them, the update hook telling `beneath`
    /// every write too, and are removed when this is dropped, `beneath`
    /// put back.
    pub fn install(conn: &'c Connection, beneath: Option<Beneath<'c>>, cap: u64) -> WriteCap<'c> {
        let shared = Shared {
            cap,
            writes: RefCell::default(),
        };
        let hooked = Hooked::install(conn, beneath, shared, on_write, Some(on_progress));
        WriteCap(hooked)
    }

    /// What was changed so far.
    pub fn writes(&self) -> Writes {
        self.0.state().writes.borrow().clone()
    }

    /// Whether the statement was stopped at the cap.
    pub fn reached(&self) -> bool {
        let s = self.0.state();
        s.writes.borrow().rows >= s.cap
    }
}

unsafe extern "C" fn on_write(
    ctx: *mut c_void,
    _op: c_int,
    db: *const c_char,
    table: *const c_char,
    rowid: ffi::sqlite3_int64,
) {
    // SAFETY: `ctx` is the `Shared` of a live `WriteCap` (see `install`);
    // SQLite passes the names as NUL-terminated strings for this call.
    let shared = unsafe { &*(ctx as *const Shared) };
    let Ok(mut w) = shared.writes.try_borrow_mut() else {
        return;
    };
    w.rows += 1;
    if w.rows > shared.cap.min(KEPT) {
        return;
    }
    let name = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    let (db, table) = (name(db), name(table));
    let table = match db.as_str() {
        "main" => table,
        _ => format!("{db}.{table}"),
    };
    if w.first.is_none() {
        w.first = Some((table.clone(), rowid));
    }
    w.all.push((table, rowid));
}

/// Rows a [`WriteCap`] keeps in [`Writes::all`] at most.
const KEPT: u64 = 1000;

unsafe extern "C" fn on_progress(ctx: *mut c_void) -> c_int {
    // SAFETY: as in `on_write`.
    let shared = unsafe { &*(ctx as *const Shared) };
    let reached = shared
        .writes
        .try_borrow()
        .is_ok_and(|w| w.rows >= shared.cap);
    c_int::from(reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: i64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT);
             INSERT INTO t(id, n) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) SELECT i, 0 FROM s;"
        ))
        .unwrap();
        conn
    }

    #[test]
    fn stops_a_statement_at_the_cap_and_names_its_first_row() {
        let conn = table(100_000);
        let cap = WriteCap::install(&conn, None, 50);
        let e = conn
            .execute("UPDATE t SET n = n + 1 WHERE id >= 7", [])
            .unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        assert!(cap.reached());
        let w = cap.writes();
        assert!(
            w.rows >= 50 && w.rows < 1000,
            "stopped soon after the cap: {}",
            w.rows
        );
        assert_eq!(w.first, Some(("t".to_owned(), 7)));
        drop(cap);
        let changed = conn.execute("UPDATE t SET n = n + 1", []).unwrap();
        assert_eq!(changed, 100_000, "the hooks are gone once it is dropped");
    }

    #[test]
    fn lets_a_statement_under_the_cap_finish_and_counts_it() {
        let conn = table(10);
        conn.execute_batch("CREATE TEMP TABLE log(id)").unwrap();
        let cap = WriteCap::install(&conn, None, 50);
        conn.execute("INSERT INTO log SELECT id FROM t WHERE id > 6", [])
            .unwrap();
        assert!(!cap.reached());
        let w = cap.writes();
        assert_eq!(w.rows, 4);
        assert_eq!(w.first, Some(("temp.log".to_owned(), 1)));
        assert_eq!(w.all.len(), 4);
        assert_eq!(w.all[3], ("temp.log".to_owned(), 4));
    }
}
