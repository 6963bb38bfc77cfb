//! Rows an undo saves before it takes back a run's insert at a key that an
//! older part of the record deletes (a row the run deleted, then inserted
//! again at its key). The undo goes newest first: it deletes the run's
//! row, and only parts later tries to put the old one back. When the
//! application has since written a `UNIQUE` value of the old row into
//! another, the old row cannot come back; without the saved row the key
//! would be left with no row at all, though it had one before the run and
//! after it. So the run's row is saved, in the part's transaction, into
//! `batchsse_undo_stash`, and put back as the run left it when the old one
//! cannot be; saved durably, it survives an undo killed between the two
//! parts. A part of the insert goes back row by row; so does a part of
//! the delete while a row of it is saved.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::codec::{Damaged, Layout, Val, decode, encode, layouts, op, put_value, values};
use super::store::{self, Part};
use crate::plan::quote;

/// The table of the rows saved.
pub const TABLE: &str = "batchsse_undo_stash";

/// Its columns, as batchsse makes them.
pub const COLUMNS: &[&str] = &["run", "tbl", "k", "cols", "vals", "at"];

/// `run`: a run of the undo whose part deletes the row (it keeps a record
/// until that part is taken back, so `undo clear` of it removes the row);
/// `k`: the key's values, encoded; `cols`: the row's column names (a JSON
/// array); `vals`: their values, encoded. Untyped: kept exactly.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS batchsse_undo_stash (
    run TEXT NOT NULL,
    tbl TEXT NOT NULL,
    k NOT NULL,
    cols TEXT NOT NULL,
    vals NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)";

/// A part the undo is to take back that may delete rows (its flags do not
/// say it holds none, see [`super::codec::NO_DELETES`]).
pub struct Deleting {
    /// Its place among all the parts the undo takes back, newest first.
    pub pos: usize,
    pub id: i64,
    pub run: String,
    pub step: i64,
    pub chunk: i64,
}

/// A row saved: its columns' names and values.
pub struct Saved {
    cols: Vec<String>,
    vals: Vec<Val>,
}

/// What an undo knows of the rows it may have to save or put back.
#[derive(Default)]
pub struct Stash {
    /// The parts that may delete rows, in the undo's order.
    deleting: Vec<Deleting>,
    /// The place of the part being taken back.
    at: usize,
    /// Per table, read at the first insert of it taken back: each key a
    /// part of [`Stash::deleting`] deletes, with the oldest such part
    /// (its index there).
    deleted: HashMap<String, HashMap<Vec<u8>, usize>>,
    /// The rows saved, by this try or an earlier one, by table and encoded
    /// key (some may be gone since: only the table says).
    saved: HashSet<(String, Vec<u8>)>,
    /// The undo's runs, as a JSON array (`json_each` reads it).
    runs: String,
}

impl Stash {
    /// `deleting`: in the order the undo takes them back.
    pub fn new(deleting: Vec<Deleting>, runs: &[String]) -> Stash {
        Stash {
            deleting,
            runs: serde_json::to_string(runs).unwrap_or_else(|_| "[]".into()),
            ..Stash::default()
        }
    }

    /// Reads the rows earlier tries of the undo saved.
    pub fn load(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !crate::run::renumber::table_exists(conn, TABLE)? {
            return Ok(());
        }
        let mut stmt = conn.prepare(
            "SELECT tbl, k FROM batchsse_undo_stash WHERE run IN (SELECT value FROM json_each(?1))",
        )?;
        let rows = stmt.query_map([&self.runs], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            self.saved.insert(row?);
        }
        Ok(())
    }

    /// The part at `pos` (among all the undo takes back) is next.
    pub fn at(&mut self, pos: usize) {
        self.at = pos;
    }

    /// Whether a part after this one may delete rows: when none does, no
    /// insert taken back is at risk, and nothing is read.
    pub fn older_may_delete(&self) -> bool {
        self.deleting.last().is_some_and(|d| d.pos > self.at)
    }

    /// The run of a part after this one that deletes the row of `table`
    /// at `key` (encoded), if one does: the run's row there must be saved
    /// before it goes.
    pub fn older_delete(
        &mut self,
        conn: &Connection,
        table: &str,
        key: &[u8],
    ) -> rusqlite::Result<Option<String>> {
        if !self.older_may_delete() {
            return Ok(None);
        }
        if !self.deleted.contains_key(table) {
            let keys = self.read_deleted(conn, table)?;
            self.deleted.insert(table.to_owned(), keys);
        }
        let at = self.deleted.get(table).and_then(|keys| keys.get(key));
        Ok(at
            .map(|&i| &self.deleting[i])
            .filter(|d| d.pos > self.at)
            .map(|d| d.run.clone()))
    }

    /// The keys of `table` the parts after this one delete, each with the
    /// oldest of them.
    fn read_deleted(
        &self,
        conn: &Connection,
        table: &str,
    ) -> rusqlite::Result<HashMap<Vec<u8>, usize>> {
        let damaged = |e: Damaged| store::failure(e.to_string());
        let (mut keys, mut blob) = (HashMap::new(), Vec::new());
        for (i, d) in self.deleting.iter().enumerate() {
            let part = Part {
                id: d.id,
                run: &d.run,
                step: d.step,
                chunk: d.chunk,
            };
            if d.pos <= self.at || store::read_part(conn, part, &mut blob)? != Some(true) {
                continue;
            }
            if !layouts(&blob)
                .map_err(damaged)?
                .iter()
                .any(|l| l.table == table)
            {
                continue;
            }
            let rec = decode(&blob).map_err(damaged)?;
            for e in &rec.entries {
                if e.op == op::DELETE && rec.tables[e.table].table == table {
                    keys.insert(encoded(&e.key), i);
                }
            }
        }
        Ok(keys)
    }

    /// Whether a row was saved that a part deleting rows of `table` may
    /// have to put back (only then does it go row by row).
    pub fn holds_any(&self) -> bool {
        !self.saved.is_empty()
    }

    /// Whether the row of `table` at `key` (encoded) may be saved.
    pub fn may_hold(&self, table: &str, key: &[u8]) -> bool {
        !self.saved.is_empty() && self.saved.contains(&(table.to_owned(), key.to_vec()))
    }

    /// Saves the row of `l`'s table at `key`, found by `by` (the key bound
    /// from `?1`), as it is, for the part of `run` that deletes it; inside
    /// the part's transaction, before the row is deleted.
    pub fn save(
        &mut self,
        conn: &Connection,
        run: &str,
        (l, key, by): (&Layout, &[Val], &str),
    ) -> rusqlite::Result<()> {
        conn.execute_batch(CREATE)?;
        let cols = columns(conn, l)?;
        let quoted: Vec<String> = cols.iter().map(|c| quote(c)).collect();
        let read = format!(
            "SELECT {} FROM main.{} WHERE {by}",
            quoted.join(", "),
            quote(&l.table)
        );
        let vals = conn
            .prepare_cached(&read)?
            .query_row(params_from_iter(key), |r| {
                let mut vals = Vec::new();
                for i in 0..cols.len() {
                    put_value(&mut vals, r.get_ref(i)?);
                }
                Ok(vals)
            })?;
        let k = encoded(key);
        let names = serde_json::to_string(&cols).map_err(|e| store::failure(e.to_string()))?;
        conn.prepare_cached(
            "INSERT INTO batchsse_undo_stash (run, tbl, k, cols, vals) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![run, l.table, k, names, vals])?;
        self.saved.insert((l.table.clone(), k));
        Ok(())
    }

    /// Takes out of the table the row of `table` at `key` saved for this
    /// undo, if there is one (inside the part's transaction, which puts it
    /// back if it rolls back).
    pub fn take(
        &mut self,
        conn: &Connection,
        table: &str,
        key: &[Val],
    ) -> rusqlite::Result<Option<Saved>> {
        // Nothing made for a part's every deleted row when none is saved.
        if self.saved.is_empty() {
            return Ok(None);
        }
        let k = encoded(key);
        if !self.may_hold(table, &k) {
            return Ok(None);
        }
        let by = "tbl = ?1 AND k = ?2 AND run IN (SELECT value FROM json_each(?3))";
        let row: Option<(String, Vec<u8>)> = conn
            .prepare_cached(&format!(
                "SELECT cols, vals FROM batchsse_undo_stash WHERE {by} ORDER BY rowid DESC LIMIT 1"
            ))?
            .query_row(params![table, k, self.runs], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        conn.prepare_cached(&format!("DELETE FROM batchsse_undo_stash WHERE {by}"))?
            .execute(params![table, k, self.runs])?;
        let Some((cols, vals)) = row else {
            return Ok(None);
        };
        let damaged = || store::failure(format!("a row of {TABLE} is damaged"));
        let cols: Vec<String> = serde_json::from_str(&cols).map_err(|_| damaged())?;
        let vals = values(&vals).map_err(|_| damaged())?;
        if cols.is_empty() || cols.len() != vals.len() {
            return Err(damaged());
        }
        Ok(Some(Saved { cols, vals }))
    }
}

/// Puts a saved row back into `table` (`OR ABORT`, as any row the undo
/// puts back: a row written since that holds one of its values stops it).
pub fn put_back(conn: &Connection, table: &str, row: &Saved) -> rusqlite::Result<()> {
    let cols: Vec<String> = row.cols.iter().map(|c| quote(c)).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    conn.prepare_cached(&format!(
        "INSERT OR ABORT INTO main.{}({}) VALUES ({})",
        quote(table),
        cols.join(", "),
        marks.join(", ")
    ))?
    .execute(params_from_iter(&row.vals))?;
    Ok(())
}

/// Removes the rows saved for `runs`, once their undo is complete (each
/// waited for a part it has taken back), and the table with them when no
/// other undo's are left in it: rows an undo kept as conflicts keep the
/// record's tables, but this one is no report. In a transaction of its
/// own.
pub fn forget(conn: &Connection, runs: &[String]) -> rusqlite::Result<()> {
    if !crate::run::renumber::table_exists(conn, TABLE)? {
        return Ok(());
    }
    let runs = serde_json::to_string(runs).unwrap_or_else(|_| "[]".into());
    let tx = crate::run::tx::Tx::begin(conn, false)?;
    conn.execute(
        "DELETE FROM batchsse_undo_stash WHERE run IN (SELECT value FROM json_each(?1))",
        [runs],
    )?;
    let left: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM batchsse_undo_stash)",
        [],
        |r| r.get(0),
    )?;
    if !left {
        conn.execute_batch("DROP TABLE batchsse_undo_stash")?;
    }
    tx.commit()
}

/// The columns a row of `l`'s table is written with now: those not
/// generated (hidden), and a rowid no column names.
fn columns(conn: &Connection, l: &Layout) -> rusqlite::Result<Vec<String>> {
    let mut cols: Vec<String> = Vec::new();
    if l.by_bare_rowid() {
        cols.extend(l.key.iter().cloned());
    }
    let mut stmt =
        conn.prepare_cached("SELECT name FROM pragma_table_xinfo(?1, 'main') WHERE hidden = 0")?;
    for name in stmt.query_map([&l.table], |r| r.get(0))? {
        cols.push(name?);
    }
    Ok(cols)
}

/// A key's values, encoded: how the record's entries and the table find
/// the same row.
fn encoded(key: &[Val]) -> Vec<u8> {
    encode(key.iter().map(Val::as_ref))
}
