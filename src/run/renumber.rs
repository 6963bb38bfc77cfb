//! Telling whether a `VACUUM` or a copy of the file through `.dump` has
//! numbered a table's rowids anew since batchsse relied on them (the undo
//! record finds rows by rowid, a stopped walk goes on after one).
//!
//! A probe row is written at the rowid `at`, with a gap before it. A
//! `VACUUM` numbers anew from 1 the rows of a table with neither an
//! `INTEGER PRIMARY KEY` nor an index, and keeps those of one with an index
//! (SQLite copies the index as it is); a `.dump` copy numbers both anew. So
//! a pair of probe tables, one without an index and one with, tells which
//! happened: the undo record ([`super::undo::store`]) and a stopped walk
//! ([`super::walk_probe`]) each keep such a pair.

use rusqlite::Connection;

/// What numbered rowids anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renumbered {
    /// A `VACUUM`: the rows of tables with neither an `INTEGER PRIMARY KEY`
    /// nor an index.
    Vacuum,
    /// A copy of the file through `.dump`: those of every table without an
    /// `INTEGER PRIMARY KEY`, indexed or not.
    Copy,
}

impl Renumbered {
    /// From whether the probe row with an index moved (only a copy moves
    /// it) and whether the one without did.
    pub fn of(indexed_moved: bool, unindexed_moved: bool) -> Option<Renumbered> {
        match (indexed_moved, unindexed_moved) {
            (true, _) => Some(Renumbered::Copy),
            (false, true) => Some(Renumbered::Vacuum),
            (false, false) => None,
        }
    }

    /// What did it, for a message.
    pub fn by(self) -> &'static str {
        match self {
            Renumbered::Vacuum => "a VACUUM",
            Renumbered::Copy => "a copy of the file made through .dump",
        }
    }

    /// The tables it numbers anew, for a message.
    pub fn which(self) -> &'static str {
        match self {
            Renumbered::Vacuum => {
                "which renumbers a table with neither an INTEGER PRIMARY KEY nor an index"
            }
            Renumbered::Copy => "which renumbers every table without an INTEGER PRIMARY KEY",
        }
    }
}

/// A subquery giving `n`, the rowid of the next probe row of `table`,
/// with a gap before it.
pub fn next_probe_rowid(table: &str) -> String {
    format!("(SELECT ifnull(max(rowid), 0) + 2 AS n FROM {table})")
}

/// Whether `main` has the table `name`.
pub fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1")?
        .exists([name])
}
