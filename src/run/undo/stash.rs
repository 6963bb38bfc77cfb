//! Rows an undo saves before it takes back a run's insert at a key that an
//! older part of the record deletes (a row the run deleted, then inserted
//! again at its key, or in a rowid table under its primary key). The
//! undo goes newest first: it deletes the run's row, and only then (in a
//! later part, or later in the same one) tries to put the old one back. When the
//! application has since written a `UNIQUE` value of the old row into
//! another, the old row cannot come back; without the saved row the key
//! would be left with no row at all, though it had one before the run and
//! after it. So the run's row is saved, in the part's transaction, into
//! `batchsse_undo_stash`, and put back as the run left it when the old one
//! cannot be; saved durably, it survives an undo killed between the two
//! parts. Where the record's key tells the rows apart (an integer key),
//! a part of the insert that goes back in one statement (see `bulk`)
//! saves the rows that statement deletes in one `INSERT … SELECT` before
//! it, and a part of the delete that puts all its rows back in one
//! statement removes the rows saved at their keys in one `DELETE` after
//! it: none is needed any more (a row that cannot come back trips that
//! statement, and the part goes row by row, which puts the saved row back
//! instead). A table whose primary key is not its rowid goes row by row:
//! its rows are told apart by that key, which the record does not hold.
//! What is saved is read once, as an undo starts; a row whose old one
//! cannot come back is looked for in the table all the same, since
//! another undo of the same runs at work beside this one may have saved
//! it since (see [`Stash::take_unlisted`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, params, params_from_iter};

use super::bulk::{Around, KEY, ROW};
use super::codec::{
    Damaged, Entry, Layout, Val, decode, earlier_key, layouts, op, put_sorted, put_value,
    sorted_int, sorted_key, values,
};
use super::store::{self, Part};
use crate::plan::quote;

/// `cols` of the row that marks a table whose inserts went back unsaved
/// (see [`Stash::mark_unsaved`]); its `k` is empty, which no key is.
const UNSAVED: &str = "unsaved";

/// The table of the rows saved.
pub const TABLE: &str = "batchsse_undo_stash";

/// Its columns, as batchsse makes them.
pub const COLUMNS: &[&str] = &["run", "tbl", "k", "cols", "vals", "at", "key_form"];

/// The columns it has had from the first.
pub const FIRST_COLUMNS: &[&str] = &["run", "tbl", "k", "cols", "vals", "at"];

/// `key_form` of a row whose key is written as [`put_sorted`] writes it;
/// 1: as builds before it wrote it (every value as the record writes it).
const SORTED_FORM: i64 = 2;

/// `run`: a run of the undo whose part deletes the row (it keeps a record
/// until that part is taken back, so `undo clear` of it removes the row);
/// `k`: the key's values, encoded (the primary key's, where one beside a
/// rowid tells the rows apart); `cols`: the row's column names (a JSON
/// array); `vals`: their values, encoded. Untyped: kept exactly.
/// Indexed by key: a plan that deletes a million rows and inserts them
/// again saves a million, and each is looked for by its key when the
/// part of its delete goes back (without the index, each look read them
/// all: an undo that ran for hours). `key_form`: how `k` is written (see
/// [`SORTED_FORM`]), a column that must be set and has no default: a
/// build before it refuses such a table (as one it did not make) rather
/// than resume an undo whose saved rows it could not find by key.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS batchsse_undo_stash (
    run TEXT NOT NULL,
    tbl TEXT NOT NULL,
    k NOT NULL,
    cols TEXT NOT NULL,
    vals NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    key_form INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batchsse_undo_stash_by_key ON batchsse_undo_stash(tbl, k)";

/// Makes the table an earlier build left, whose keys are all in the
/// earlier form, the table [`CREATE`] makes, its rows with their numbers
/// (the first saved of a key is taken first): copied out, the table
/// dropped and made anew ([`CREATE`], between the two), copied back. Not
/// renamed: `ALTER TABLE … RENAME` fails in a file with a view or trigger
/// that names something gone, which an application's file may have.
const RESHAPE: &str = "CREATE TEMP TABLE batchsse_undo_stash_earlier AS
    SELECT rowid AS n, run, tbl, k, cols, vals, at FROM main.batchsse_undo_stash;
DROP TABLE main.batchsse_undo_stash;";

const RESHAPED: &str =
    "INSERT INTO main.batchsse_undo_stash (rowid, run, tbl, k, cols, vals, at, key_form)
    SELECT n, run, tbl, k, cols, vals, at, 1 FROM temp.batchsse_undo_stash_earlier;
DROP TABLE temp.batchsse_undo_stash_earlier;";

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

/// What tells a table's rows apart where the record keys them by a bare
/// rowid although the table declares a `PRIMARY KEY` (not an `INTEGER`
/// one): a row deleted, then inserted again under the same primary key,
/// gets another rowid, yet it is the same row to the application. The
/// primary key's columns, and the collations its index compares them by.
struct Ident {
    cols: Vec<String>,
    collations: Vec<Option<String>>,
}

/// What one part of the undo reads or makes once for all the rows it saves.
#[derive(Default)]
struct PartCache {
    /// Tables marked unsaved, and tables checked for a new `UNIQUE`
    /// index, by this part.
    marked: HashSet<String>,
    checked: HashSet<String>,
    /// When the part's rows are saved (`at`), once the table is made.
    made: Option<String>,
    /// Per table: its columns, their names as a JSON array, and the
    /// statement that reads a row of them.
    shapes: HashMap<String, Rc<Shape>>,
}

/// A table's row as a part saves it: its columns, their names as a JSON
/// array, and their list as a `SELECT` reads them.
struct Shape {
    cols: Vec<String>,
    names: String,
    list: String,
}

/// What a part of the record that goes back in one statement does beside
/// it with the rows the undo saves (see [`Around`]).
pub enum Keep {
    Nothing,
    /// Saves the rows it deletes at these keys, per run (the run of the
    /// oldest part that deletes them), before it.
    Save(Vec<(String, Vec<i64>)>),
    /// Removes the rows saved at these keys after it: all the part's rows
    /// are back.
    Forget(Vec<i64>),
}

/// A key's encoding as the undo's maps of rows hold it: an integer key by
/// its value, any other in place up to 15 bytes, so a plan that deletes
/// and inserts again a million rows does not cost a million allocations
/// twice over (about 230 bytes a key before, with its growth room).
/// Ordered maps hold them, integers in their order: a part's keys come in
/// order, and are looked up side by side in memory (in hashed maps of a
/// million keys each look was a cache miss, and the undo spent as much
/// time there as in its statements).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Id {
    Int(i64),
    Inline(u8, [u8; 15]),
    Boxed(Box<[u8]>),
}

impl Id {
    /// Always one integer's value, else in place when it fits: two equal
    /// keys are the same `Id` (the keys come as [`put_sorted`] writes
    /// them, which holds an integer one way only).
    fn of(bytes: &[u8]) -> Id {
        if let Some(k) = sorted_int(bytes) {
            return Id::Int(k);
        }
        let mut inline = [0u8; 15];
        match inline.get_mut(..bytes.len()) {
            Some(head) => {
                head.copy_from_slice(bytes);
                Id::Inline(bytes.len() as u8, inline)
            }
            None => Id::Boxed(bytes.into()),
        }
    }
}

/// What an undo knows of the rows it may have to save or put back.
#[derive(Default)]
pub struct Stash {
    /// The parts that may delete rows, in the undo's order.
    deleting: Vec<Deleting>,
    /// The place of the part being taken back.
    at: usize,
    /// Per table, read at the first insert of it taken back: each row a
    /// part of [`Stash::deleting`] from that one on deletes (by
    /// [`Stash::ident`]), with the oldest such part (its index there).
    deleted: HashMap<String, BTreeMap<Id, usize>>,
    /// The tables [`Stash::deleted`] found nothing could keep an old row
    /// of from coming back, so that none of their rows is saved.
    safe: HashSet<String>,
    /// Per table, what tells its rows apart: its primary key ([`Ident`]),
    /// or (`None`) the record's key.
    idents: HashMap<String, Option<Rc<Ident>>>,
    /// Per table, the collations its record's key is compared by (none
    /// for an integer key).
    key_colls: HashMap<String, Rc<[Option<String>]>>,
    /// The rows saved, by this try or an earlier one: by table, their
    /// encoded keys (some may be gone since: only the table says).
    saved: HashMap<String, BTreeSet<Id>>,
    /// Tables whose rows the run inserted at keys an older part may
    /// delete went back unsaved, by this try or an earlier one (see
    /// [`Stash::mark_unsaved`]).
    unsaved: HashSet<String>,
    /// What the part being taken back has read or made once, for the
    /// rows it saves: the table of saved rows made, and per table its
    /// columns (read again for each part: the application may add one).
    part: PartCache,
    /// The undo's runs, as a JSON array (`json_each` reads it).
    runs: String,
    /// The condition on `run` that takes the undo's runs, written out.
    run_in: String,
    /// The statements that read and remove the rows saved of a table
    /// (`?1`) at a key (`?2`), the undo's runs written into them. The read
    /// takes them all (one, but in a chain of deletes and inserts at one
    /// key) and the first saved is picked from them: one that asked SQLite
    /// for the first (`ORDER BY rowid LIMIT 1`) was planned anew at every
    /// row after a write to the table, most of an undo's time where a
    /// million rows are saved.
    take_sql: [String; 2],
    /// The table holds rows saved by a build before keys were written as
    /// [`put_sorted`] writes them (by an undo stopped then): their keys
    /// are read in that form, and looked for in both.
    earlier: bool,
}

impl Stash {
    /// `deleting`: in the order the undo takes them back.
    pub fn new(deleting: Vec<Deleting>, runs: &[String]) -> Stash {
        let listed: Vec<String> = runs
            .iter()
            .map(|r| format!("'{}'", r.replace('\'', "''")))
            .collect();
        let run_in = format!("run IN ({})", listed.join(", "));
        // `?3`: the key as builds before `put_sorted` wrote it.
        let by = format!("tbl = ?1 AND k IN (?2, ?3) AND {run_in}");
        Stash {
            deleting,
            run_in,
            runs: serde_json::to_string(runs).unwrap_or_else(|_| "[]".into()),
            take_sql: [
                format!("SELECT rowid, cols, vals FROM batchsse_undo_stash WHERE {by}"),
                format!("DELETE FROM batchsse_undo_stash WHERE {by}"),
            ],
            ..Stash::default()
        }
    }

    /// Reads the rows earlier tries of the undo saved.
    pub fn load(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !crate::run::renumber::table_exists(conn, TABLE)? {
            return Ok(());
        }
        let mut stmt = conn.prepare(
            "SELECT tbl, k, cols = ?2 FROM batchsse_undo_stash WHERE run IN (SELECT value FROM json_each(?1))",
        )?;
        let rows = stmt.query_map([&self.runs, UNSAVED], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        for row in rows {
            let (table, key, unsaved): (String, Vec<u8>, bool) = row?;
            let (key, earlier) = sorted_key(&key).map_err(|_| damaged())?;
            self.earlier |= earlier;
            match unsaved {
                true => self.unsaved.insert(table),
                false => self.saved.entry(table).or_default().insert(Id::of(&key)),
            };
        }
        Ok(())
    }

    /// The part at `pos` (among all the undo takes back) is next.
    pub fn at(&mut self, pos: usize) {
        self.at = pos;
        self.part = PartCache::default();
    }

    /// Whether this part or one after it may delete rows (this one's
    /// older entries go back after its newer ones: a `REPLACE` deletes a
    /// row before it inserts another): when none does, no insert taken
    /// back is at risk, and nothing is read.
    pub fn older_may_delete(&self) -> bool {
        self.deleting.last().is_some_and(|d| d.pos >= self.at)
    }

    /// What tells the rows of `l`'s table apart (read once an undo).
    fn ident(&mut self, conn: &Connection, l: &Layout) -> rusqlite::Result<Option<Rc<Ident>>> {
        if let Some(ident) = self.idents.get(&l.table) {
            return Ok(ident.clone());
        }
        let ident = match l.by_bare_rowid() {
            true => primary_key(conn, &l.table)?.map(Rc::new),
            false => None,
        };
        self.idents.insert(l.table.clone(), ident.clone());
        Ok(ident)
    }

    /// The collations `l`'s key is compared by (read once an undo).
    fn key_colls(
        &mut self,
        conn: &Connection,
        l: &Layout,
    ) -> rusqlite::Result<Rc<[Option<String>]>> {
        if let Some(colls) = self.key_colls.get(&l.table) {
            return Ok(colls.clone());
        }
        let colls: Rc<[Option<String>]> = super::shape::key_collations(conn, l)?.into();
        self.key_colls.insert(l.table.clone(), colls.clone());
        Ok(colls)
    }

    /// What tells apart the row at the record's `key` of `l`'s table,
    /// where the record's key does: its values as their collations compare
    /// them.
    fn key_id(&mut self, conn: &Connection, l: &Layout, key: &[Val]) -> rusqlite::Result<Vec<u8>> {
        let colls = self.key_colls(conn, l)?;
        Ok(collated(key.iter().map(Val::as_ref), &colls))
    }

    /// The rows of `l`'s table that this part and those after it delete,
    /// read the first time; none where no row the run deleted can be kept
    /// from coming back by another row (see [`unique_besides_key`]).
    fn deleted(&mut self, conn: &Connection, l: &Layout) -> rusqlite::Result<&BTreeMap<Id, usize>> {
        if !self.deleted.contains_key(&l.table) {
            let ident = self.ident(conn, l)?;
            let colls = self.key_colls(conn, l)?;
            let rows = match ident.is_some() || unique_besides_key(conn, &l.table)? {
                true => self.read_deleted(conn, &l.table, (ident.as_deref(), &colls))?,
                false => {
                    self.safe.insert(l.table.clone());
                    BTreeMap::new()
                }
            };
            self.deleted.insert(l.table.clone(), rows);
        }
        Ok(&self.deleted[&l.table])
    }

    /// Whether a part of inserts into `l`'s table at `keys` must go row by
    /// row: this part or one after it deletes one of its rows (any, where
    /// the primary key tells them apart: the part does not hold it).
    pub fn inserts_at_risk(
        &mut self,
        conn: &Connection,
        l: &Layout,
        mut keys: impl Iterator<Item = i64>,
    ) -> rusqlite::Result<bool> {
        if !self.older_may_delete() {
            return Ok(false);
        }
        let by_key = self.ident(conn, l)?.is_none();
        self.deleted(conn, l)?;
        self.mark_unsaved(conn, l)?;
        let (at, deleting, deleted) = (self.at, &self.deleting, &self.deleted[&l.table]);
        let later = |i: Option<&usize>| i.is_some_and(|&i| deleting[i].pos >= at);
        Ok(match by_key {
            true => keys.any(|k| later(deleted.get(&Id::Int(k)))),
            false => deleted.values().any(|i| later(Some(i))),
        })
    }

    /// What a part of inserts into `l`'s table at `keys`, going back in one
    /// statement, must save before it (see [`Keep`]); `None`: it must go
    /// row by row, where the primary key tells the rows apart and this
    /// part or one after it deletes one.
    pub fn inserts_kept(
        &mut self,
        conn: &Connection,
        l: &Layout,
        keys: impl Iterator<Item = i64>,
    ) -> rusqlite::Result<Option<Keep>> {
        if !self.older_may_delete() {
            return Ok(Some(Keep::Nothing));
        }
        if self.ident(conn, l)?.is_some() {
            let risk = self.inserts_at_risk(conn, l, keys)?;
            return Ok((!risk).then_some(Keep::Nothing));
        }
        self.deleted(conn, l)?;
        self.mark_unsaved(conn, l)?;
        let (at, deleting, deleted) = (self.at, &self.deleting, &self.deleted[&l.table]);
        let mut by_run: Vec<(String, Vec<i64>)> = Vec::new();
        let mut ids = Vec::new();
        for k in keys {
            let id = Id::Int(k);
            let Some(d) = deleted.get(&id).map(|&i| &deleting[i]) else {
                continue;
            };
            if d.pos < at {
                continue;
            }
            match by_run.iter_mut().find(|(run, _)| *run == d.run) {
                Some((_, keys)) => keys.push(k),
                None => by_run.push((d.run.clone(), vec![k])),
            }
            ids.push(id);
        }
        if by_run.is_empty() {
            return Ok(Some(Keep::Nothing));
        }
        // Saved from here on, whatever the statement keeps: a key said
        // saved that is not is looked for in vain, no more.
        self.saved.entry(l.table.clone()).or_default().extend(ids);
        Ok(Some(Keep::Save(by_run)))
    }

    /// What a part of deletes from `l`'s table at `keys`, going back in one
    /// statement, removes after it (see [`Keep`]): the rows saved at its
    /// keys where no older part deletes them again (as [`Stash::take`]
    /// does); `None`: it must go row by row, where the primary key tells
    /// the rows apart and a row of the table is saved.
    pub fn deletes_kept(
        &mut self,
        conn: &Connection,
        l: &Layout,
        keys: impl Iterator<Item = i64>,
    ) -> rusqlite::Result<Option<Keep>> {
        self.still_unsaved_safely(conn, l)?;
        if !self.saved.contains_key(&l.table) {
            return Ok(Some(Keep::Nothing));
        }
        if self.ident(conn, l)?.is_some() {
            return Ok(None);
        }
        self.deleted(conn, l)?;
        let (at, deleting, deleted) = (self.at, &self.deleting, &self.deleted[&l.table]);
        let saved = &self.saved[&l.table];
        let forget: Vec<i64> = keys
            .filter(|&k| {
                let id = Id::Int(k);
                let oldest = deleted.get(&id).map(|&i| deleting[i].pos);
                saved.contains(&id) && oldest.is_none_or(|pos| pos <= at)
            })
            .collect();
        Ok(Some(match forget.is_empty() {
            true => Keep::Nothing,
            false => Keep::Forget(forget),
        }))
    }

    /// The statements beside a part's own that do what `keep` says, in
    /// `l`'s table (`pick`: whether the part's statement writes a row, see
    /// [`Around`]); `None`: the part must go row by row, its rows too wide
    /// for a function's arguments.
    pub fn around(
        &mut self,
        conn: &Connection,
        l: &Layout,
        keep: Keep,
        pick: &str,
    ) -> rusqlite::Result<Option<Around>> {
        let mut around = Around::default();
        let table = Value::Text(l.table.clone());
        match keep {
            Keep::Nothing => {}
            Keep::Forget(keys) => {
                let forget = |earlier: &str| {
                    let sql = format!(
                        "DELETE FROM batchsse_undo_stash WHERE tbl = ?1 AND k IN (SELECT {KEY}(value{earlier}) FROM json_each(?2)) AND {}",
                        self.run_in
                    );
                    (sql, vec![table.clone(), Value::Text(json_keys(&keys))])
                };
                around.after.push(forget(""));
                if self.earlier {
                    around.after.push(forget(", 1"));
                }
            }
            Keep::Save(by_run) => {
                let (shape, at) = self.shape(conn, l)?;
                let most = conn.limit(Limit::SQLITE_LIMIT_FUNCTION_ARG)?;
                if usize::try_from(most).is_ok_and(|most| shape.cols.len() > most) {
                    return Ok(None);
                }
                let (k, t) = (&l.key[0], quote(&l.table));
                // SQLite reads the keys of the `IN` list in order, which
                // is the order of the index on the saved keys too (see
                // `put_sorted`): each of its pages is written once a part.
                let sql = format!(
                    "INSERT INTO batchsse_undo_stash (run, tbl, k, cols, vals, at, key_form) \
                     SELECT ?1, ?2, {KEY}({k}), ?3, {ROW}({}), ?4, {SORTED_FORM} FROM main.{t} \
                     WHERE {k} IN (SELECT value FROM json_each(?5)) AND {pick}",
                    shape.list
                );
                for (run, keys) in by_run {
                    let args = vec![
                        Value::Text(run),
                        table.clone(),
                        Value::Text(shape.names.clone()),
                        Value::Text(at.clone()),
                        Value::Text(json_keys(&keys)),
                    ];
                    around.before.push((sql.clone(), args));
                }
            }
        }
        Ok(Some(around))
    }

    /// Saves the row of `l`'s table at `key`, found by `by` (the key bound
    /// from `?1`), as it is, when this part or one after it deletes it:
    /// inside the part's transaction, before the undo deletes it.
    pub fn save_if_deleted_later(
        &mut self,
        conn: &Connection,
        (l, key, by): (&Layout, &[Val], &str),
    ) -> rusqlite::Result<()> {
        if !self.older_may_delete() {
            return Ok(());
        }
        if self.deleted(conn, l)?.is_empty() {
            return self.mark_unsaved(conn, l);
        }
        let id = match self.ident(conn, l)? {
            Some(ident) => read_ident(conn, l, &ident, (key, by))?,
            None => self.key_id(conn, l, key)?,
        };
        let Some(&i) = self.deleted(conn, l)?.get(&Id::of(&id)) else {
            return Ok(());
        };
        let Some(run) = Some(&self.deleting[i])
            .filter(|d| d.pos >= self.at)
            .map(|d| d.run.clone())
        else {
            return Ok(());
        };
        self.save(conn, &run, (l, key, by), id)
    }

    /// The keys of `table` this part and those after it delete, each with
    /// the oldest of them.
    fn read_deleted(
        &self,
        conn: &Connection,
        table: &str,
        (ident, colls): (Option<&Ident>, &[Option<String>]),
    ) -> rusqlite::Result<BTreeMap<Id, usize>> {
        let damaged = |e: Damaged| store::failure(e.to_string());
        let (mut keys, mut blob) = (BTreeMap::new(), Vec::new());
        for (i, d) in self.deleting.iter().enumerate() {
            let part = Part {
                id: d.id,
                run: &d.run,
                step: d.step,
                chunk: d.chunk,
            };
            if d.pos < self.at || store::read_part(conn, part, &mut blob)? != Some(true) {
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
                let l = &rec.tables[e.table];
                if e.op != op::DELETE || l.table != table {
                    continue;
                }
                let id = match ident {
                    Some(ident) => old_ident(ident, l, &e.old),
                    None => Some(collated(e.key.iter().map(Val::as_ref), colls)),
                };
                if let Some(id) = id {
                    keys.insert(Id::of(&id), i);
                }
            }
        }
        Ok(keys)
    }

    /// Saves the row of `l`'s table at `key` (`id`: what tells it apart),
    /// found by `by`, for the part of `run` that deletes it.
    fn save(
        &mut self,
        conn: &Connection,
        run: &str,
        (l, key, by): (&Layout, &[Val], &str),
        id: Vec<u8>,
    ) -> rusqlite::Result<()> {
        let (shape, at) = self.shape(conn, l)?;
        let read = format!(
            "SELECT {} FROM main.{} WHERE {by}",
            shape.list,
            quote(&l.table)
        );
        let vals = conn
            .prepare_cached(&read)?
            .query_row(params_from_iter(key), |r| {
                let mut vals = Vec::new();
                for i in 0..shape.cols.len() {
                    put_value(&mut vals, r.get_ref(i)?);
                }
                Ok(vals)
            })?;
        conn.prepare_cached(
            "INSERT INTO batchsse_undo_stash (run, tbl, k, cols, vals, at, key_form) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![run, l.table, id, shape.names, vals, at, SORTED_FORM])?;
        match self.saved.get_mut(&l.table) {
            Some(keys) => keys.insert(Id::of(&id)),
            None => self
                .saved
                .entry(l.table.clone())
                .or_default()
                .insert(Id::of(&id)),
        };
        Ok(())
    }

    /// Where `l`'s table had nothing that could keep an old row from
    /// coming back (no row of it saved, see [`unique_besides_key`]) while
    /// an older part may delete rows of it: says so in the table of saved
    /// rows, in this part's transaction, so that this try and any later
    /// one can tell if a `UNIQUE` index came since
    /// ([`Stash::still_unsaved_safely`]).
    /// (Called after [`Stash::deleted`], which tells such a table: once a
    /// part, not once a row.)
    fn mark_unsaved(&mut self, conn: &Connection, l: &Layout) -> rusqlite::Result<()> {
        if !self.safe.contains(&l.table) || self.part.marked.contains(&l.table) {
            return Ok(());
        }
        let run = match self.deleting.last() {
            Some(d) => d.run.clone(),
            None => return Ok(()),
        };
        let at = self.made_at(conn)?;
        conn.prepare_cached(
            "INSERT INTO batchsse_undo_stash (run, tbl, k, cols, vals, at, key_form)
             SELECT ?1, ?2, x'', ?3, x'', ?4, ?5 WHERE NOT EXISTS
               (SELECT 1 FROM batchsse_undo_stash WHERE tbl = ?2 AND k = x'' AND cols = ?3)",
        )?
        .execute(params![run, l.table, UNSAVED, at, SORTED_FORM])?;
        self.part.marked.insert(l.table.clone());
        self.unsaved.insert(l.table.clone());
        Ok(())
    }

    /// Before rows of `l`'s table the run deleted go back: where rows the
    /// run inserted at their keys went back unsaved, since nothing could
    /// hold an old row's values then, a `UNIQUE` index made since could
    /// keep an old row out and leave its key with no row at all. The undo
    /// stops instead, this part rolled back, and says what to do.
    fn still_unsaved_safely(&mut self, conn: &Connection, l: &Layout) -> rusqlite::Result<()> {
        if !self.unsaved.contains(&l.table) || !self.part.checked.insert(l.table.clone()) {
            return Ok(());
        }
        if !unique_besides_key(conn, &l.table)? {
            return Ok(());
        }
        Err(store::failure(format!(
            "{} gained a UNIQUE index while this undo ran: the rows the run inserted at keys it had deleted were taken back without being saved, as nothing could then keep an old row from coming back, and now the index may, which would leave such a key with no row at all. The undo stopped here, this part rolled back: drop that index, run the undo again, then make the index again",
            crate::human::shown(&l.table)
        )))
    }

    /// The table of saved rows made, once a part, and the time the part
    /// saves rows at.
    fn made_at(&mut self, conn: &Connection) -> rusqlite::Result<String> {
        if let Some(at) = &self.part.made {
            return Ok(at.clone());
        }
        // Rows in the sorted form go only into a table an earlier build
        // refuses.
        let earlier = crate::run::renumber::table_exists(conn, TABLE)?
            && !crate::run::db::has_column(conn, TABLE, "key_form")?;
        if earlier {
            conn.execute_batch(RESHAPE)?;
        }
        conn.execute_batch(CREATE)?;
        if earlier {
            conn.execute_batch(RESHAPED)?;
        }
        let at: String =
            conn.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
                r.get(0)
            })?;
        Ok(self.part.made.insert(at).clone())
    }

    /// How the part saves a row of `l`'s table, and when: made and read
    /// once a part (a million rows may be saved), the table of saved rows
    /// with them.
    fn shape(&mut self, conn: &Connection, l: &Layout) -> rusqlite::Result<(Rc<Shape>, String)> {
        let at = self.made_at(conn)?;
        if let Some(shape) = self.part.shapes.get(&l.table) {
            return Ok((shape.clone(), at));
        }
        let cols = columns(conn, l)?;
        let names = serde_json::to_string(&cols).map_err(|e| store::failure(e.to_string()))?;
        let quoted: Vec<String> = cols.iter().map(|c| quote(c)).collect();
        let list = quoted.join(", ");
        let shape = Rc::new(Shape { cols, names, list });
        self.part.shapes.insert(l.table.clone(), shape.clone());
        Ok((shape, at))
    }

    /// Takes out of the table the row saved for this undo that `e` (a row
    /// of `l`'s table the run deleted) is, if there is one (inside the
    /// part's transaction, which puts it back if it rolls back). The first
    /// saved is the run's last row at the key (the undo goes newest
    /// first); it stays saved until the oldest part deleting the key, since
    /// a part in between that puts back the run's row from before lets the
    /// undo save that one too.
    pub fn take(
        &mut self,
        conn: &Connection,
        l: &Layout,
        e: &Entry,
    ) -> rusqlite::Result<Option<Saved>> {
        self.still_unsaved_safely(conn, l)?;
        // Nothing made for a part's every deleted row when none is saved.
        if !self.saved.contains_key(&l.table) {
            return Ok(None);
        }
        let saved = |s: &Stash, k: &Vec<u8>| {
            let k = Id::of(k);
            s.saved.get(&l.table).is_some_and(|s| s.contains(&k))
        };
        match self.saved_key(conn, l, e)? {
            Some(k) if saved(self, &k) => self.take_at(conn, l, k),
            _ => Ok(None),
        }
    }

    /// [`Stash::take`] for a row that cannot come back when this undo
    /// knows of no row saved for it: looked for in the table all the
    /// same. Another undo of the same runs, at work beside this one, may
    /// have taken back the insert at its key and saved that row after this
    /// one read what was saved ([`Stash::load`], once, at its start);
    /// without it the key would be left with no row at all. Only for such
    /// a row, which is rare: the others go by what this undo knows.
    pub fn take_unlisted(
        &mut self,
        conn: &Connection,
        l: &Layout,
        e: &Entry,
    ) -> rusqlite::Result<Option<Saved>> {
        if !crate::run::renumber::table_exists(conn, TABLE)? {
            return Ok(None);
        }
        let found = match self.saved_key(conn, l, e)? {
            Some(k) => self.take_at(conn, l, k)?,
            None => None,
        };
        // Nor may the other have taken back such inserts unsaved, as
        // nothing could then keep an old row out, unless this undo stops
        // as [`Stash::still_unsaved_safely`] does.
        if found.is_none() && !self.unsaved.contains(&l.table) && self.marked(conn, l)? {
            self.unsaved.insert(l.table.clone());
            self.still_unsaved_safely(conn, l)?;
        }
        Ok(found)
    }

    /// Whether the table of saved rows marks `l`'s table's inserts taken
    /// back unsaved, for this undo's runs (see [`Stash::mark_unsaved`]).
    fn marked(&self, conn: &Connection, l: &Layout) -> rusqlite::Result<bool> {
        let sql = format!(
            "SELECT 1 FROM batchsse_undo_stash WHERE tbl = ?1 AND k = x'' AND cols = ?2 AND {}",
            self.run_in
        );
        conn.prepare(&sql)?.exists(params![l.table, UNSAVED])
    }

    /// What the row saved for `e` (a row of `l`'s table the run deleted)
    /// is saved under, if its table tells it.
    fn saved_key(
        &mut self,
        conn: &Connection,
        l: &Layout,
        e: &Entry,
    ) -> rusqlite::Result<Option<Vec<u8>>> {
        Ok(match self.ident(conn, l)? {
            Some(ident) => old_ident(&ident, l, &e.old),
            None => Some(self.key_id(conn, l, &e.key)?),
        })
    }

    /// Takes the row saved under `k` out of the table (see
    /// [`Stash::take`]).
    fn take_at(
        &mut self,
        conn: &Connection,
        l: &Layout,
        k: Vec<u8>,
    ) -> rusqlite::Result<Option<Saved>> {
        let oldest = self.deleted(conn, l)?.get(&Id::of(&k)).copied();
        let oldest = oldest.map(|i| self.deleting[i].pos);
        let then = earlier_key(&k).map_err(|_| damaged())?;
        let [read, delete] = &self.take_sql;
        let mut first: Option<(i64, String, Vec<u8>)> = None;
        let mut stmt = conn.prepare_cached(read)?;
        for row in stmt.query_map(params![l.table, k, then], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })? {
            let row = row?;
            if first.as_ref().is_none_or(|f| row.0 < f.0) {
                first = Some(row);
            }
        }
        drop(stmt);
        let row = first.map(|(_, cols, vals)| (cols, vals));
        if oldest.is_none_or(|pos| pos <= self.at) {
            conn.prepare_cached(delete)?
                .execute(params![l.table, k, then])?;
        }
        let Some((cols, vals)) = row else {
            return Ok(None);
        };
        let cols: Vec<String> = serde_json::from_str(&cols).map_err(|_| damaged())?;
        let vals = values(&vals).map_err(|_| damaged())?;
        if cols.is_empty() || cols.len() != vals.len() {
            return Err(damaged());
        }
        Ok(Some(Saved { cols, vals }))
    }

    /// Whether another row now holds the primary key of `row`, saved from
    /// `l`'s table where the primary key tells its rows apart: then the row
    /// exists, and nothing is lost (where the record's key tells them
    /// apart, the undo has found none at the key before).
    pub fn held_elsewhere(
        &mut self,
        conn: &Connection,
        l: &Layout,
        row: &Saved,
    ) -> rusqlite::Result<bool> {
        let Some(ident) = self.ident(conn, l)? else {
            return Ok(false);
        };
        let mut vals = Vec::new();
        for c in &ident.cols {
            match row.cols.iter().position(|n| n.eq_ignore_ascii_case(c)) {
                Some(i) => vals.push(&row.vals[i]),
                None => return Ok(false),
            }
        }
        let sql = format!(
            "SELECT 1 FROM main.{} WHERE {}",
            quote(&l.table),
            ident_clause(&ident)
        );
        conn.prepare_cached(&sql)?.exists(params_from_iter(vals))
    }
}

/// A row of the table of saved rows no batchsse writes so.
fn damaged() -> rusqlite::Error {
    store::failure(format!("a row of {TABLE} is damaged"))
}

/// Whether `table` has a `UNIQUE` index besides its primary key's: only
/// such an index can hold a value of a row the run deleted in another row,
/// keeping it from coming back once the undo has taken back the row the
/// run inserted at its key. (Where the record keys a table by a bare rowid
/// although it declares a primary key, the rowid can be held too: such a
/// table is at risk whatever its indexes.) A table without one, which a
/// plan that deletes rows and inserts them again most often is, needs no
/// row saved: its parts go back the fast way, a statement a part, instead
/// of row by row with a copy of each.
fn unique_besides_key(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM pragma_index_list(?1, 'main') WHERE \"unique\" AND origin <> 'pk'",
    )?
    .exists([table])
}

/// The primary key of `table` when it declares one: the columns and the
/// collations its index compares them by.
fn primary_key(conn: &Connection, table: &str) -> rusqlite::Result<Option<Ident>> {
    let cols: Vec<String> = conn
        .prepare_cached("SELECT name FROM pragma_table_info(?1, 'main') WHERE pk > 0 ORDER BY pk")?
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if cols.is_empty() {
        return Ok(None);
    }
    let by_key = Layout {
        table: table.to_owned(),
        key: cols.iter().map(|c| quote(c)).collect(),
        int_key: false,
        columns: Vec::new(),
    };
    let collations = super::shape::key_collations(conn, &by_key)?;
    Ok(Some(Ident { cols, collations }))
}

/// The condition that finds a row by its primary key's values, bound from
/// `?1` on, each compared by the primary key index's collation.
fn ident_clause(ident: &Ident) -> String {
    let each: Vec<String> = ident
        .cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let by = match ident.collations.get(i) {
                Some(Some(coll)) => format!(" COLLATE {}", quote(coll)),
                _ => String::new(),
            };
            format!("{} = ?{}{by}", quote(c), i + 1)
        })
        .collect();
    each.join(" AND ")
}

/// The primary key's values, encoded, among `old` (a deleted row's every
/// column, as `l` names them); `None` when the layout lacks one.
fn old_ident(ident: &Ident, l: &Layout, old: &[Val]) -> Option<Vec<u8>> {
    let mut vals = Vec::new();
    for c in &ident.cols {
        let i = l.columns.iter().position(|n| n.eq_ignore_ascii_case(c))?;
        vals.push(old.get(i)?.as_ref());
    }
    Some(collated(vals.into_iter(), &ident.collations))
}

/// Key values encoded as their collations compare them, so that two keys
/// the table holds for one ('bob' and 'BOB' under `NOCASE`, 'a' and 'a '
/// under `RTRIM`: SQLite's own two; batchsse compares any other as
/// `BINARY`) tell the same row; so do a real and the integer it equals
/// (2.0 and 2), one key to any primary key.
fn collated<'a>(vals: impl Iterator<Item = ValueRef<'a>>, colls: &[Option<String>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in vals.enumerate() {
        let coll = colls.get(i).and_then(|c| c.as_deref()).unwrap_or("BINARY");
        let folded: Vec<u8>;
        let v = match v {
            ValueRef::Real(f) => integral(f).map_or(v, ValueRef::Integer),
            ValueRef::Text(t) if coll.eq_ignore_ascii_case("NOCASE") => {
                folded = t.to_ascii_lowercase();
                ValueRef::Text(&folded)
            }
            ValueRef::Text(t) if coll.eq_ignore_ascii_case("RTRIM") => {
                let end = t.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
                ValueRef::Text(&t[..end])
            }
            v => v,
        };
        put_sorted(&mut out, v);
    }
    out
}

/// The integer a real equals, if it equals one: SQLite compares the two
/// exactly, so that a primary key holds 2.0 and 2 as one key.
fn integral(f: f64) -> Option<i64> {
    // -2^63 up to, not including, 2^63: every such whole real is an i64.
    let range = -9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && range.contains(&f)).then_some(f as i64)
}

/// The primary key's values, encoded, of the row of `l`'s table at `key`
/// (found by `by`).
fn read_ident(
    conn: &Connection,
    l: &Layout,
    ident: &Ident,
    (key, by): (&[Val], &str),
) -> rusqlite::Result<Vec<u8>> {
    let cols: Vec<String> = ident.cols.iter().map(|c| quote(c)).collect();
    let sql = format!(
        "SELECT {} FROM main.{} WHERE {by}",
        cols.join(", "),
        quote(&l.table)
    );
    conn.prepare_cached(&sql)?
        .query_row(params_from_iter(key), |r| {
            let vals = (0..cols.len())
                .map(|i| r.get_ref(i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(collated(vals.into_iter(), &ident.collations))
        })
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

/// Integer keys as a JSON array, for `json_each`.
fn json_keys(keys: &[i64]) -> String {
    let listed: Vec<String> = keys.iter().map(i64::to_string).collect();
    format!("[{}]", listed.join(","))
}
