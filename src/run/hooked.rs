//! SQLite's update hook, and optionally its progress handler, on one
//! connection while a value of this lives, with a state of the caller's
//! that the callbacks get as their context (see `fence`, `write_cap` and
//! the undo recording's `Hook`).
//!
//! A connection has one update hook. The recording of `run --undo` in a
//! build without the pre-update hook holds it for the whole run, and the
//! check of every chunk (`fence`) and the try as a step begins
//! (`write_cap`) need it meanwhile: one installed over another's
//! callback ([`Beneath`]) calls its own, then that one, and puts that
//! one back when dropped. Installed over nothing, SQLite calls its own
//! callback directly, with nothing in between.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

use rusqlite::{Connection, ffi};

/// Called for every row written in a rowid table: (state, operation,
/// database name, table name, rowid).
pub type OnWrite =
    unsafe extern "C" fn(*mut c_void, c_int, *const c_char, *const c_char, ffi::sqlite3_int64);

/// Called every 100 virtual-machine steps; nonzero stops the statement.
pub type OnProgress = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The update-hook callback a [`Hooked`] gave SQLite, with its context,
/// for as long as that value is borrowed (`'h`): what another is
/// installed over.
#[derive(Clone, Copy)]
pub struct Beneath<'h> {
    on_write: OnWrite,
    ctx: *mut c_void,
    hooked: PhantomData<&'h ()>,
}

/// Two callbacks that SQLite calls as one, through [`both`].
struct Pair {
    first: (OnWrite, *mut c_void),
    then: (OnWrite, *mut c_void),
}

pub struct Hooked<'c, S> {
    db: *mut ffi::sqlite3,
    state: Box<S>,
    /// The callback SQLite calls and its context.
    given: (OnWrite, *mut c_void),
    /// Over another callback: both, which `given` points into (kept
    /// alive here).
    _pair: Option<Box<Pair>>,
    /// What is put back when this is dropped.
    beneath: Option<(OnWrite, *mut c_void)>,
    progress: bool,
    conn: PhantomData<&'c Connection>,
}

impl<'c, S> Hooked<'c, S> {
    /// Puts the callbacks on `conn`, whose update hook must be `beneath`'s
    /// callback or none (and, with `on_progress`, which must have no
    /// progress handler of its own meanwhile): these replace them, and
    /// are removed when this is dropped, `beneath` put back. Over
    /// `beneath`, each write is told to `on_write`, then to it. The
    /// callbacks must take their context for an `S`.
    pub fn install(
        conn: &'c Connection,
        beneath: Option<Beneath<'c>>,
        state: S,
        on_write: OnWrite,
        on_progress: Option<OnProgress>,
    ) -> Hooked<'c, S> {
        let state = Box::new(state);
        // SAFETY: the handle is the open connection's, which outlives this
        // value ('c), as does `beneath`'s context ('c); the state (and the
        // pair) live in boxes owned by this value, which puts back what
        // was beneath when dropped, before the boxes go.
        let db = unsafe { conn.handle() };
        let ctx = &*state as *const S as *mut c_void;
        let beneath = beneath.map(|b| (b.on_write, b.ctx));
        let pair = beneath.map(|then| {
            Box::new(Pair {
                first: (on_write, ctx),
                then,
            })
        });
        let given: (OnWrite, *mut c_void) = match &pair {
            Some(p) => (both, &**p as *const Pair as *mut c_void),
            None => (on_write, ctx),
        };
        let before = unsafe { ffi::sqlite3_update_hook(db, Some(given.0), given.1) };
        debug_assert_eq!(
            before,
            beneath.map_or(std::ptr::null_mut(), |b| b.1),
            "installed over another update hook than the connection's"
        );
        if let Some(p) = on_progress {
            unsafe { ffi::sqlite3_progress_handler(db, 100, Some(p), ctx) };
        }
        Hooked {
            db,
            state,
            given,
            _pair: pair,
            beneath,
            progress: on_progress.is_some(),
            conn: PhantomData,
        }
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    /// The callback SQLite calls while this lives, for another to be
    /// installed over.
    pub fn beneath(&self) -> Beneath<'_> {
        Beneath {
            on_write: self.given.0,
            ctx: self.given.1,
            hooked: PhantomData,
        }
    }
}

impl<S> Drop for Hooked<'_, S> {
    fn drop(&mut self) {
        // SAFETY: removes the callbacks this value put on its connection,
        // and puts back the one it was installed over, still alive ('c).
        unsafe {
            let (f, ctx) = match self.beneath {
                Some((f, ctx)) => (Some(f), ctx),
                None => (None, std::ptr::null_mut()),
            };
            ffi::sqlite3_update_hook(self.db, f, ctx);
            if self.progress {
                ffi::sqlite3_progress_handler(self.db, 0, None, std::ptr::null_mut());
            }
        }
    }
}

/// The callback of a [`Hooked`] installed over another: its own, then
/// the other's.
unsafe extern "C" fn both(
    ctx: *mut c_void,
    op: c_int,
    db: *const c_char,
    table: *const c_char,
    rowid: ffi::sqlite3_int64,
) {
    // SAFETY: `ctx` is the `Pair` of a live `Hooked`, whose callbacks take
    // their contexts as SQLite passes them (see `install`).
    let p = unsafe { &*(ctx as *const Pair) };
    unsafe {
        (p.first.0)(p.first.1, op, db, table, rowid);
        (p.then.0)(p.then.1, op, db, table, rowid);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::ffi::CStr;

    use super::*;

    unsafe extern "C" fn note(
        ctx: *mut c_void,
        _op: c_int,
        _db: *const c_char,
        table: *const c_char,
        rowid: ffi::sqlite3_int64,
    ) {
        let seen = unsafe { &*(ctx as *const RefCell<Vec<String>>) };
        let table = unsafe { CStr::from_ptr(table) }.to_string_lossy();
        seen.borrow_mut().push(format!("{table} {rowid}"));
    }

    #[test]
    fn one_installed_over_another_tells_both_and_puts_the_other_back() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
            .unwrap();
        let base = Hooked::install(&conn, None, RefCell::new(Vec::<String>::new()), note, None);
        conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
        {
            let over = Hooked::install(
                &conn,
                Some(base.beneath()),
                RefCell::new(Vec::<String>::new()),
                note,
                None,
            );
            conn.execute("UPDATE t SET id = 3 WHERE id = 2", [])
                .unwrap();
            assert_eq!(*over.state().borrow(), ["t 3"]);
        }
        conn.execute("DELETE FROM t WHERE id = 1", []).unwrap();
        assert_eq!(*base.state().borrow(), ["t 2", "t 3", "t 1"]);
        drop(base);
        conn.execute("INSERT INTO t VALUES (4)", []).unwrap();
    }
}
