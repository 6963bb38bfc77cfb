//! A transaction as a guard: begun once, committed with `commit(self)`,
//! rolled back when dropped on any other path. Within a run-wide
//! transaction (`--atomic`, `--dry-run`) it is a savepoint instead; which
//! one is decided once, by the runner's `nested` flag.

use rusqlite::Connection;

pub(super) struct Tx<'c> {
    conn: &'c Connection,
    nested: bool,
    open: bool,
}

impl<'c> Tx<'c> {
    /// `BEGIN IMMEDIATE` (the write lock now, not at the first write), or a
    /// savepoint inside the run's own transaction.
    pub(super) fn begin(conn: &'c Connection, nested: bool) -> rusqlite::Result<Self> {
        Tx::begin_as(conn, nested, "BEGIN IMMEDIATE")
    }

    /// `BEGIN DEFERRED`, for work that only reads the file (it writes
    /// TEMP tables alone), and so takes no write lock; or a savepoint.
    pub(super) fn begin_reading(conn: &'c Connection, nested: bool) -> rusqlite::Result<Self> {
        Tx::begin_as(conn, nested, "BEGIN DEFERRED")
    }

    fn begin_as(conn: &'c Connection, nested: bool, begin: &str) -> rusqlite::Result<Self> {
        if nested && conn.is_autocommit() {
            return Err(run_rolled_back());
        }
        conn.execute_batch(if nested {
            "SAVEPOINT batchsse_step"
        } else {
            begin
        })?;
        Ok(Tx {
            conn,
            nested,
            open: true,
        })
    }

    /// `BEGIN EXCLUSIVE`: in rollback-journal mode, no one may even start
    /// reading until the chunk commits, so no transaction can read during
    /// it and then find it cannot write (see `Governor::exclusive`).
    pub(super) fn begin_exclusive(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.execute_batch("BEGIN EXCLUSIVE")?;
        Ok(Tx {
            conn,
            nested: false,
            open: true,
        })
    }

    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch(if self.nested {
            "RELEASE batchsse_step"
        } else {
            "COMMIT"
        })?;
        self.open = false;
        Ok(())
    }
}

/// Whether foreign-key violations deferred to the commit (`DEFERRABLE
/// INITIALLY DEFERRED`, `PRAGMA defer_foreign_keys`) are still left in
/// the transaction, which SQLite would then refuse to commit. A
/// savepoint's release checks none of them: a `--dry-run` asks this where
/// the real run would commit, so it fails where the run would.
pub(super) fn deferred_violations(conn: &Connection) -> bool {
    let (mut now, mut peak) = (0, 0);
    // SAFETY: the handle is the live connection's, used on its own thread;
    // SQLite writes the two counters it is given and nothing else.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
            &mut now,
            &mut peak,
            0,
        )
    };
    rc == rusqlite::ffi::SQLITE_OK && now > 0
}

/// The error SQLite gives a commit that [`deferred_violations`] refuse.
pub(super) fn foreign_key_failed() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
        Some("FOREIGN KEY constraint failed".into()),
    )
}

/// A savepoint with no transaction around it begins one of its own, which
/// its release commits: when SQLite has rolled back the run's transaction
/// under a statement (an interrupted write, a full disk) and a caller went
/// on, a chunk or a checkpoint row would be committed alone.
fn run_rolled_back() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT_ROLLBACK),
        Some("SQLite rolled the run's transaction back (an interrupt or a full disk), so nothing of the run is kept".into()),
    )
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if self.nested {
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO batchsse_step; RELEASE batchsse_step");
        } else if !self.conn.is_autocommit() {
            // Some errors (an interrupt, a full disk) roll SQLite's own
            // transaction back already.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t(x)").unwrap();
        c
    }

    fn count(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn dropped_rolls_back_and_committed_keeps() {
        let c = conn();
        {
            let _tx = Tx::begin(&c, false).unwrap();
            c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        }
        assert_eq!(count(&c), 0);
        assert!(c.is_autocommit());
        let tx = Tx::begin(&c, false).unwrap();
        c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        tx.commit().unwrap();
        assert_eq!(count(&c), 1);
    }

    #[test]
    fn nested_is_a_savepoint_inside_the_outer_transaction() {
        let c = conn();
        c.execute_batch("BEGIN").unwrap();
        {
            let _tx = Tx::begin(&c, true).unwrap();
            c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        }
        let tx = Tx::begin(&c, true).unwrap();
        c.execute("INSERT INTO t VALUES (2)", []).unwrap();
        tx.commit().unwrap();
        assert!(!c.is_autocommit(), "the outer transaction stays open");
        assert_eq!(count(&c), 1);
        c.execute_batch("ROLLBACK").unwrap();
        assert_eq!(count(&c), 0);
    }

    #[test]
    fn nested_with_the_outer_transaction_gone_begins_nothing() {
        let c = conn();
        assert!(Tx::begin(&c, true).is_err());
        assert!(c.is_autocommit(), "no transaction of its own");
    }
}
