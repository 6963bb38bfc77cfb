//! The batch connection's authorizer while a step is recorded: it refuses
//! writes the record cannot hold, and notes what the step's statements
//! write as SQLite compiles them, so the record covers writes the check
//! before the run could not see.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::{AuthContext, Authorization};

/// Refuses, as SQLite compiles a recorded step's statements (and the
/// triggers they set off), a write to a table of an attached database:
/// neither the hooks nor the TEMP triggers record one, and the pre-run
/// check cannot see one into a database a step before attached. An
/// authorizer of the batch's connection, which only an armed step arms.
///
/// It also notes every table of `main` the armed steps' statements write
/// and every column they update: a trigger the application adds after the
/// check before the run (or while it runs: its statements are compiled
/// again then, before they change a row) writes what the check never saw.
#[derive(Clone, Default)]
pub struct Guard(Arc<Mutex<Watch>>, Arc<AtomicBool>);

#[derive(Default)]
pub(super) struct Watch {
    armed: bool,
    /// The table refused, as `schema.table`.
    pub(super) denied: Option<String>,
    /// The tables of `main` written since the run began (never batchsse's
    /// own or SQLite's), and the columns updated, as (table, column).
    pub(super) writes: BTreeSet<String>,
    pub(super) updates: BTreeSet<(String, String)>,
    /// The tables of `main` written since the step was armed: SQLite's
    /// update hook, which the read-around recording trusts to tell of a
    /// write beside the chunk's rows, is never told of a `WITHOUT ROWID`
    /// table's.
    pub(super) step_writes: BTreeSet<String>,
}

impl Guard {
    /// Installs the guard on the batch's connection (before it is shared).
    pub fn install(conn: &mut Connection) -> rusqlite::Result<Guard> {
        let guard = Guard::default();
        let (watch, fresh) = (guard.0.clone(), guard.1.clone());
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            use rusqlite::hooks::AuthAction::{Delete, Insert, Update};
            let (Insert { table_name } | Delete { table_name } | Update { table_name, .. }) =
                ctx.action
            else {
                return Authorization::Allow;
            };
            let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
            match ctx.database_name {
                Some(db) if w.armed && db != "main" && db != "temp" => {
                    w.denied = Some(format!("{db}.{table_name}"));
                    return Authorization::Deny;
                }
                Some("main") | None if w.armed => {}
                _ => return Authorization::Allow,
            }
            if super::store::not_recorded(table_name.as_bytes()) {
                return Authorization::Allow;
            }
            w.step_writes.insert(table_name.to_owned());
            let mut new = w.writes.insert(table_name.to_owned());
            if let Update { column_name, .. } = ctx.action {
                new |= w
                    .updates
                    .insert((table_name.to_owned(), column_name.to_owned()));
            }
            if new {
                fresh.store(true, Ordering::Release);
            }
            Authorization::Allow
        }))?;
        Ok(guard)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn arm(&self, on: bool) {
        let mut w = self.lock();
        w.armed = on;
        w.denied = None;
        if on {
            w.step_writes.clear();
        }
    }

    /// Whether a write was noted since the last call: one cheap load
    /// while nothing new was compiled (the pre-update hook asks for every
    /// row).
    #[cfg_attr(not(batchsse_preupdate), allow(dead_code))]
    pub(super) fn fresh(&self) -> bool {
        self.1.load(Ordering::Acquire) && self.1.swap(false, Ordering::AcqRel)
    }

    /// Whether the armed step's statements, as compiled, write a table of
    /// `main` other than `table` (a trigger added since the check before
    /// the run, say).
    pub(super) fn writes_beside(&self, table: &str) -> bool {
        let w = self.lock();
        w.step_writes.iter().any(|t| !t.eq_ignore_ascii_case(table))
    }

    /// The tables of `main` the armed step's statements write, as
    /// compiled since it was armed.
    pub(super) fn step_writes(&self) -> Vec<String> {
        self.lock().step_writes.iter().cloned().collect()
    }

    /// The tables of `main` the armed steps wrote, as compiled.
    pub(super) fn writes(&self) -> Vec<String> {
        self.lock().writes.iter().cloned().collect()
    }
}
