//! SQLite's update hook, and optionally its progress handler, on one
//! connection while a value of this lives, with a state of the caller's
//! that the callbacks get as their context (see `fence` and `write_cap`).

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

use rusqlite::{Connection, ffi};

/// Called for every row written in a rowid table: (state, operation,
/// database name, table name, rowid).
pub type OnWrite =
    unsafe extern "C" fn(*mut c_void, c_int, *const c_char, *const c_char, ffi::sqlite3_int64);

/// Called every 100 virtual-machine steps; nonzero stops the statement.
pub type OnProgress = unsafe extern "C" fn(*mut c_void) -> c_int;

pub struct Hooked<'c, S> {
    db: *mut ffi::sqlite3,
    state: Box<S>,
    progress: bool,
    conn: PhantomData<&'c Connection>,
}

impl<'c, S> Hooked<'c, S> {
    /// Puts the callbacks on `conn`, which must have no update hook (nor,
    /// with `on_progress`, progress handler) of its own meanwhile: these
    /// replace them, and are removed when this is dropped. The callbacks
    /// must take their context for an `S`.
    pub fn install(
        conn: &'c Connection,
        state: S,
        on_write: OnWrite,
        on_progress: Option<OnProgress>,
    ) -> Hooked<'c, S> {
        let state = Box::new(state);
        // SAFETY: the handle is the open connection's, which outlives this
        // value ('c); the state lives in a box owned by this value, which
        // removes the callbacks when dropped, before the box goes.
        let db = unsafe { conn.handle() };
        let ctx = &*state as *const S as *mut c_void;
        unsafe {
            ffi::sqlite3_update_hook(db, Some(on_write), ctx);
            if let Some(p) = on_progress {
                ffi::sqlite3_progress_handler(db, 100, Some(p), ctx);
            }
        }
        Hooked {
            db,
            state,
            progress: on_progress.is_some(),
            conn: PhantomData,
        }
    }

    pub fn state(&self) -> &S {
        &self.state
    }
}

impl<S> Drop for Hooked<'_, S> {
    fn drop(&mut self) {
        // SAFETY: removes the callbacks this value put on its connection.
        unsafe {
            ffi::sqlite3_update_hook(self.db, None, std::ptr::null_mut());
            if self.progress {
                ffi::sqlite3_progress_handler(self.db, 0, None, std::ptr::null_mut());
            }
        }
    }
}
