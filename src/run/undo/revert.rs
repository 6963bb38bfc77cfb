//! Applying one recorded part back: its entries newest first, each checked
//! for a later change by the application (a conflict) before the row is
//! put back as it was. The common parts (one chunk's updates, inserts or
//! deletes of distinct rows of one rowid table) go back in one statement
//! instead (`bulk`); this row-by-row way takes the rest, and a part that
//! statement cannot take.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::added::{self, Added};
use super::bulk::{Bulk, Job, Verdict};
use super::codec::{
    Entry, Indexed, Layout, Lean, Record, Val, decode, encode, index, op, print, put_value, values,
};
use super::dangling::Watch;
use super::stash::{self, Keep, Stash};
use super::store::{Scope, kept_for_older, kept_rows};
use crate::plan::quote;
use crate::run::expect::shown;

/// A row the undo left as the application has it.
pub struct Conflict<'r> {
    pub table: &'r str,
    /// The key's value, as SQLite holds it; several columns' as one
    /// text, `(a, b)`.
    pub key: Val,
    /// The key as a message shows it.
    pub shown: String,
    pub why: String,
    /// Put back all the same (`--on-conflict overwrite`), not kept.
    pub overwritten: bool,
    /// Kept with the run's values, not the application's (a later step's
    /// change to it may have gone back already): another row holds a
    /// value it would get back.
    pub as_run_left: bool,
    /// A row the run inserted at a key it changed: the row deleted at its
    /// old key cannot come back while this one stays.
    pub moved: bool,
}

/// What to do with a conflict: `Err` stops the undo (and rolls the part
/// back).
pub type OnKept<'a> = dyn FnMut(Conflict<'_>) -> Result<(), String> + 'a;

/// An entry's statements: one reads the row's columns the entry restores
/// (or, for a delete, whether the key exists), one puts it back.
type Statements = [String; 2];

/// Puts records back on one connection.
pub struct Reverter<'c> {
    conn: &'c Connection,
    overwrite: bool,
    sql: HashMap<(usize, u8, std::rc::Rc<[usize]>), Statements>,
    /// The current values' encodings, reused from row to row.
    buf: Vec<u8>,
    /// Rows kept as conflicts in this undo (and, but under `overwrite`, in
    /// earlier tries of it): their older entries are not put back either,
    /// or a value the application wrote could be undone by an older entry
    /// that happens to match it. By table and encoded key value.
    held: HashSet<(String, Vec<u8>)>,
    /// Under `overwrite`, the rows earlier tries kept, with their rows in
    /// `batchsse_undo_conflict`: a part that puts one back removes them in
    /// its transaction, since the row is no longer as the application
    /// left it.
    kept_before: HashMap<(String, Vec<u8>), Vec<i64>>,
    /// Under `overwrite`, the rows earlier tries kept because the
    /// application had deleted them, with their rows in
    /// `batchsse_undo_conflict`: held while still gone (see
    /// [`Reverter::still_gone`]), put back over like the rows of
    /// `kept_before` once the application has inserted them again.
    gone_before: HashMap<(String, Vec<u8>), Vec<i64>>,
    /// The last row of `batchsse_undo_conflict` read into `held`.
    kept_seen: i64,
    /// Rows an undo of an older run kept, by table and encoded key (see
    /// [`older_id`]: with whether that run left the row deleted), with
    /// their rows in `batchsse_undo_conflict` (see
    /// [`super::store::kept_for_older`]): one this undo puts back gets
    /// what that run wrote, and keeps its change with no record left to
    /// take it back. Small per row (an older undo may have kept millions).
    older: HashMap<String, HashMap<Vec<u8>, Vec<Older>>>,
    /// When each of the undo's runs began to be recorded, in order.
    starts: Vec<String>,
    /// Of `starts`, the run whose part is under way: the rows of `older`
    /// its undo carries are told by it.
    started: Option<u32>,
    /// Their rows in `batchsse_undo_conflict` that the part under way put
    /// back, for the undo to mark in its transaction.
    carried: Vec<i64>,
    /// The one-statement way for an `UPDATE` chunk's part, when SQLite
    /// takes its functions.
    bulk: Option<Bulk>,
    /// A part's buffers, kept for the next: megabytes the kernel need not
    /// hand over (and zero) afresh for every part.
    spare: (Vec<u8>, Vec<Lean>),
    /// The file's foreign keys, to say what the undo left dangling.
    pub watch: Option<Watch>,
    /// Per table, what it is now (see [`Now`]), read again for each part:
    /// the application may add a column between two.
    now: HashMap<String, std::rc::Rc<Now>>,
    /// The rows the run inserted at a key an older part deletes, saved
    /// before they go (see `stash`).
    pub stash: Stash,
}

/// What a table is as the undo finds it, beside the record's layout.
#[derive(Default)]
struct Now {
    /// The columns added since the run (see `added`).
    added: Vec<Added>,
    /// The collations its key columns are compared by (see
    /// [`super::shape::key_collations`]).
    collations: Vec<Option<String>>,
}

impl<'c> Reverter<'c> {
    pub fn new(conn: &'c Connection, overwrite: bool) -> Self {
        Reverter {
            conn,
            overwrite,
            sql: HashMap::new(),
            buf: Vec::new(),
            held: HashSet::new(),
            kept_before: HashMap::new(),
            gone_before: HashMap::new(),
            kept_seen: 0,
            older: HashMap::new(),
            starts: Vec::new(),
            started: None,
            carried: Vec::new(),
            bulk: Bulk::new(conn),
            spare: Default::default(),
            // Unreadable (a schema SQLite cannot list): no check, no word.
            watch: Watch::new(conn).ok().flatten(),
            now: HashMap::new(),
            stash: Stash::default(),
        }
    }

    /// Holds the rows kept for `scope`, as `batchsse_undo_conflict` lists
    /// them, that it did not hold yet: by an earlier try of this undo, or
    /// by another undo of the same runs at work at the same time (so read
    /// again in each part's transaction).
    pub fn hold_kept(&mut self, scope: &Scope) -> rusqlite::Result<()> {
        // Up to the table's last row, whoever's: rows of other runs are
        // passed over once, not in every part.
        let upto = super::store::last_kept(self.conn)?;
        if self.starts.is_empty() {
            self.starts = scope.starts();
        }
        if upto <= self.kept_seen {
            return Ok(());
        }
        for (rowid, table, key, gone) in kept_rows(self.conn, scope, (self.kept_seen, upto), &GONE)?
        {
            let id = held_id(&table, &[key]);
            // Under `overwrite` the run's old values go back over the
            // application's: a row kept before (a part that kept it
            // commits apart from an older part's entries of it, when the
            // record was cut between them) is put back as if the part
            // were whole. But a row the application deleted, which
            // `overwrite` keeps too, is held while it is still gone: its
            // older entries (the run's delete of the row it inserted
            // again) would bring back a row one `overwrite` undo leaves
            // deleted.
            match (self.overwrite, gone) {
                (true, false) => self.kept_before.entry(id).or_default().push(rowid),
                (true, true) => self.gone_before.entry(id).or_default().push(rowid),
                (false, _) => _ = self.held.insert(id),
            }
        }
        let (older, starts) = (&mut self.older, &self.starts);
        kept_for_older(self.conn, scope, (self.kept_seen, upto), |kept| {
            let runs = kept.carried_by(starts);
            if runs.is_empty() {
                return;
            }
            let rows = match older.get_mut(kept.table) {
                Some(rows) => rows,
                None => older.entry(kept.table.to_owned()).or_default(),
            };
            let key = older_id(&[kept.key.into()], left_deleted(kept.why));
            rows.entry(key).or_default().push(Older {
                rowid: kept.rowid,
                runs,
            });
        })?;
        self.kept_seen = upto;
        Ok(())
    }

    /// The last row of `batchsse_undo_conflict` read into `held` (or
    /// kept by this undo).
    pub fn kept_seen(&self) -> i64 {
        self.kept_seen
    }

    /// The rows of `batchsse_undo_conflict` up to `upto` were kept by this
    /// undo's last part, committed: in [`Reverter::held`] already, they
    /// are not read back (a million kept rows were, each hashed again).
    pub fn seen_through(&mut self, upto: i64) {
        self.kept_seen = self.kept_seen.max(upto);
    }

    /// A row put back by undoing an entry of kind `kind`: if an older run's
    /// undo kept it, it is now as that run left it (see
    /// [`Reverter::older`]). An insert's undo deletes the row: that is how
    /// an older run that deleted it left it (it could not come back while
    /// this run's row held its key), and nothing of an older run that
    /// updated or inserted it (an application deleted it since, and this
    /// run inserted it again). Any other entry's undo leaves the row there,
    /// holding what an older run that updated or inserted it wrote, and
    /// nothing of one that deleted it (an application put it back since).
    fn older_carried(&mut self, kind: u8, table: &str, key: &[Val]) {
        if self.older.is_empty() {
            return;
        }
        let Some(started) = self.started else {
            return;
        };
        let Some(rows) = self.older.get_mut(table) else {
            return;
        };
        let id = older_id(key, kind == op::INSERT);
        let Some(kept) = rows.get_mut(&id) else {
            return;
        };
        // Those this run's undo does not carry stay for an older run's.
        let (carried, left) = std::mem::take(kept)
            .into_iter()
            .partition::<Vec<_>, _>(|k| k.runs.contains(&started));
        self.carried.extend(carried.iter().map(|k| k.rowid));
        match left.is_empty() {
            true => _ = rows.remove(&id),
            false => *kept = left,
        }
    }

    /// The part about to be put back is of a run recorded from `started`
    /// on (`None`: not known, and no row is counted as carried). After
    /// [`Reverter::hold_kept`], which reads when the runs were recorded.
    pub fn part_of_run(&mut self, started: Option<&str>) {
        let at = |s: &str| self.starts.binary_search_by(|x| x.as_str().cmp(s)).ok();
        self.started = started.and_then(at).and_then(|i| u32::try_from(i).ok());
    }

    /// The rows of `batchsse_undo_conflict` of older runs' undos whose
    /// rows the parts so far put back (see [`Reverter::older`]).
    pub fn take_carried(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.carried)
    }

    /// A row put back under `overwrite`: no longer kept, if an earlier
    /// try kept it.
    fn no_longer_kept(&mut self, table: &str, key: &[Val]) -> Result<(), String> {
        if self.kept_before.is_empty() {
            return Ok(());
        }
        for rowid in self
            .kept_before
            .remove(&held_id(table, key))
            .unwrap_or_default()
        {
            super::store::forget_kept(self.conn, rowid)
                .map_err(|e| crate::run::db::run_time_message(self.conn, &e))?;
        }
        Ok(())
    }

    fn held(&self, table: &str, key: &[Val]) -> bool {
        !self.held.is_empty() && self.held.contains(&held_id(table, key))
    }

    /// Whether the row of `e`, kept by an earlier try because the
    /// application had deleted it ([`Reverter::gone_before`]), is still
    /// gone as its first older entry comes: then it is held, as one
    /// `overwrite` undo holds the row it keeps. One the application has
    /// inserted again since is put back over like any row kept before:
    /// one `overwrite` undo would have found it there and overwritten it.
    fn still_gone(&mut self, l: &Layout, e: &Entry) -> rusqlite::Result<bool> {
        if self.gone_before.is_empty() {
            return Ok(false);
        }
        let id = held_id(&l.table, &e.key);
        let Some(rowids) = self.gone_before.remove(&id) else {
            return Ok(false);
        };
        let now = self.now(l)?;
        let added = match e.op {
            op::INSERT => &now.added[..],
            _ => &[],
        };
        let [read, _] = self.statements(l, e, &now);
        if self.read_row(&read, l, e, added)?.0 {
            self.kept_before.entry(id).or_default().extend(rowids);
            return Ok(false);
        }
        self.held.insert(id);
        Ok(true)
    }

    /// Whether a row of `part` is one of [`Reverter::gone_before`]: whether
    /// it is still gone is read row by row.
    fn touches_gone_before(&self, part: &Indexed) -> bool {
        let table = &part.layout.table;
        let gone = |e: &Lean| {
            self.gone_before
                .contains_key(&held_id(table, &[Val::Integer(e.key)]))
        };
        !self.gone_before.is_empty() && part.entries.iter().any(gone)
    }

    /// A row that an earlier try kept, which `overwrite` does not hold:
    /// kept again (it is gone), it is kept already, and was said so.
    fn kept_earlier(&self, table: &str, key: &[Val]) -> bool {
        !self.kept_before.is_empty() && self.kept_before.contains_key(&held_id(table, key))
    }

    /// Applies a part as stored; returns the rows put back. Each row in
    /// conflict goes to `kept` once.
    pub fn apply_blob(&mut self, blob: Vec<u8>, kept: &mut OnKept<'_>) -> Result<u64, String> {
        self.now.clear();
        let spare = std::mem::take(&mut self.spare.1);
        let blob = match index(&blob, spare).map_err(|e| e.to_string())? {
            Some(part) => {
                self.watch_part(&part);
                match self.bulk(blob, part, kept)? {
                    Ok(reverted) => return Ok(reverted),
                    Err(blob) => blob,
                }
            }
            None => blob,
        };
        let rec = decode(&blob).map_err(|e| e.to_string())?;
        self.watch_record(&rec);
        self.apply(&rec, kept)
    }

    /// Before `part` is applied: its table's foreign keys counted, if it
    /// can leave rows dangling (see [`Watch::touch`]).
    fn watch_part(&mut self, part: &Indexed) {
        let conn = self.conn;
        let l = &part.layout;
        let Some(w) = self.watch.as_mut().filter(|w| w.involves(&l.table)) else {
            return;
        };
        let mut columns: Vec<usize> = part.masks.iter().flatten().copied().collect();
        columns.sort_unstable();
        columns.dedup();
        w.touch(conn, &l.table, part.op, &names(l, &columns));
    }

    /// As [`Reverter::watch_part`], for each kind of entry of `rec`.
    fn watch_record(&mut self, rec: &Record) {
        let conn = self.conn;
        let Some(w) = self.watch.as_mut() else { return };
        let mut seen = HashSet::new();
        for e in &rec.entries {
            let l = &rec.tables[e.table];
            if w.involves(&l.table) && seen.insert((e.table, e.op, e.columns.clone())) {
                w.touch(conn, &l.table, e.op, &names(l, &e.columns));
            }
        }
    }

    /// One chunk's part of one kind of change in one statement (see
    /// `bulk`): the rows put back, or the blob again when this way cannot
    /// take it.
    fn bulk(
        &mut self,
        blob: Vec<u8>,
        part: Indexed,
        kept: &mut OnKept<'_>,
    ) -> Result<Result<u64, Vec<u8>>, String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        // Rows inserted into a table that has gained columns since: row
        // by row, which reads those too.
        if part.op == op::INSERT && !self.now(&part.layout).map_err(sql)?.added.is_empty() {
            return Ok(Err(blob));
        }
        let Some(keep) = self.stash_keep(&part).map_err(sql)? else {
            return Ok(Err(blob));
        };
        // No trigger fires on the undo's connection (see `app::undo`): none
        // can see or change the rows part-way.
        let Some(bulk) = self.bulk.as_ref() else {
            return Ok(Err(blob));
        };
        // Overwriting a row that exists again deletes it first: row by row;
        // as is a key used again (the statement's constraint fails).
        if part.op == op::DELETE && (self.overwrite || !bulk.series) {
            return Ok(Err(blob));
        }
        if self.touches_gone_before(&part) {
            return Ok(Err(blob));
        }
        let held = if self.held.is_empty() {
            Vec::new()
        } else {
            let table = &part.layout.table;
            let held = |e: &Lean| self.held(table, &[Val::Integer(e.key)]);
            part.entries.iter().map(held).collect()
        };
        let identity = super::shape::identity(self.conn, &part.layout).map_err(sql)?;
        let job = Job::new(blob, part, held, self.overwrite).identity(&identity);
        if !bulk.fits(&job) {
            return Ok(Err(job.blob));
        }
        let (l, pick) = (&job.part.layout, job.pick_sql());
        let job = match self.stash.around(self.conn, l, keep, &pick).map_err(sql)? {
            Some(around) => job.around(around),
            None => return Ok(Err(job.blob)),
        };
        let (job, done) = bulk.run(self.conn, job);
        let changed = match done {
            Ok(n) => n,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Ok(Err(job.blob)); // one row at a time finds which
            }
            Err(e) => return Err(sql(e)),
        };
        if changed != job.puts() {
            return Err(format!(
                "the undo put back {changed} rows where it meant {}; this chunk was rolled back",
                job.puts()
            ));
        }
        let reverted = self.report(&job, kept);
        self.spare = (job.blob, job.part.entries);
        reverted.map(Ok)
    }

    /// What `part`, going back in one statement, does beside it with the
    /// rows the undo saves (see `stash`): an insert of a key an older part
    /// deletes saves the row first, a delete of a key whose row is saved
    /// removes that row once its own is back; `None`: it must go row by
    /// row. Nothing is read when no older part may delete rows and no row
    /// is saved.
    fn stash_keep(&mut self, part: &Indexed) -> rusqlite::Result<Option<Keep>> {
        let (l, keys) = (&part.layout, part.entries.iter().map(|e| e.key));
        match part.op {
            op::INSERT => self.stash.inserts_kept(self.conn, l, keys),
            op::DELETE => self.stash.deletes_kept(self.conn, l, keys),
            _ => Ok(Some(Keep::Nothing)),
        }
    }

    /// A buffer for the next part's blob.
    pub fn buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spare.0)
    }

    /// Counts a [`Reverter::bulk`] part's rows put back and reports its
    /// conflicts, newest first.
    fn report(&mut self, job: &Job, kept: &mut OnKept<'_>) -> Result<u64, String> {
        let l = &job.part.layout;
        let mut reverted = 0;
        let entries = job.part.entries.iter().zip(&job.verdicts).enumerate();
        for (i, (e, verdict)) in entries.rev() {
            let key = [Val::Integer(e.key)];
            if matches!(verdict, Verdict::Put | Verdict::Overwrote) {
                self.no_longer_kept(&l.table, &key)?;
                self.older_carried(job.part.op, &l.table, &key);
            }
            let why = match verdict {
                Verdict::Put => {
                    reverted += 1;
                    continue;
                }
                Verdict::Held => continue, // kept already, and said so
                Verdict::Unseen | Verdict::Kept if self.kept_earlier(&l.table, &key) => {
                    self.held.insert(held_id(&l.table, &key));
                    continue;
                }
                Verdict::Unseen if job.part.op == op::DELETE => {
                    format!("{RUN_DELETED} was not put back")
                }
                Verdict::Unseen if job.part.op == op::INSERT => GONE[0].to_owned(),
                Verdict::Unseen => GONE[1].to_owned(),
                Verdict::Kept | Verdict::Overwrote if job.part.op == op::INSERT => {
                    "the row the run inserted has been changed since".to_owned()
                }
                Verdict::Kept | Verdict::Overwrote => {
                    let now = job.now.get(&i).map_or(&[][..], Vec::as_slice);
                    changed(l, &job.part.masks[e.mask as usize], now)
                }
            };
            let overwritten = *verdict == Verdict::Overwrote;
            match overwritten {
                true => reverted += 1,
                false => _ = self.held.insert(held_id(&l.table, &key)),
            }
            kept(Conflict {
                table: &l.table,
                key: key_value(&key),
                shown: key_shown(&key),
                why,
                overwritten,
                as_run_left: false,
                moved: false,
            })?;
        }
        Ok(reverted)
    }

    /// Applies `rec` newest first; returns the rows put back. Each row in
    /// conflict goes to `kept` once.
    pub fn apply(&mut self, rec: &Record, kept: &mut OnKept<'_>) -> Result<u64, String> {
        self.sql.clear();
        // A row changed several times is one row: counted with sets, unless
        // the record promises one entry per row.
        let mut rows: HashSet<(usize, Vec<u8>)> = HashSet::new();
        // Rows kept, and rows said (kept or overwritten).
        let mut conflicts: HashSet<(usize, Vec<u8>)> = HashSet::new();
        let mut said: HashSet<(usize, Vec<u8>)> = HashSet::new();
        let mut undone = Undone {
            moves: rec.moves,
            ..Undone::default()
        };
        let mut reverted = 0u64;
        for e in rec.entries.iter().rev() {
            let layout = &rec.tables[e.table];
            let id = || (e.table, encoded(&e.key));
            if !rec.unique {
                rows.insert(id());
            }
            let gone = self.still_gone(layout, e);
            let gone = gone.map_err(|e| crate::run::db::run_time_message(self.conn, &e))?;
            if gone || self.held(&layout.table, &e.key) {
                undone.next(e, true);
                conflicts.insert(id()); // kept already, and said so
                continue;
            }
            let (put, why, as_run_left) = self.put_back(layout, e, &undone)?;
            undone.next(e, !put);
            if put {
                reverted += 1;
                undone.went_back(e);
                self.no_longer_kept(&layout.table, &e.key)?;
                self.older_carried(e.op, &layout.table, &e.key);
            } else {
                self.held.insert(held_id(&layout.table, &e.key));
                conflicts.insert(id());
            }
            if let Some(why) = why
                && (put || !self.kept_earlier(&layout.table, &e.key))
                && (rec.unique || said.insert(id()))
            {
                kept(Conflict {
                    table: &layout.table,
                    key: key_value(&e.key),
                    shown: key_shown(&e.key),
                    why,
                    overwritten: put,
                    as_run_left,
                    moved: e.moved,
                })?;
            }
        }
        if !rec.unique {
            reverted = (rows.len() - conflicts.len()) as u64;
        }
        Ok(reverted)
    }

    /// [`Reverter::entry`], with its refusals: whether the row went back,
    /// why it is a conflict, and whether it is kept as the run left it
    /// (another row holds a value it needs); `Err` stops the undo.
    fn put_back(
        &mut self,
        layout: &Layout,
        e: &Entry,
        undone: &Undone,
    ) -> Result<(bool, Option<String>, bool), String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        // Out of the table whatever comes of the row: put back, kept, or
        // back as the run left it. A part that stops puts it back in.
        let saved = match e.op {
            op::DELETE => self.stash.take(self.conn, layout, e),
            _ => Ok(None),
        };
        let saved = saved.map_err(sql)?;
        let (put, why) = match self.entry(layout, e) {
            Ok(done) => done,
            // Only its own statement is backed out (`OR ABORT`): the row
            // stays as the run left it, a conflict like another.
            Err(err) if !self.overwrite && taken(&err) => {
                if undone.later_change_of(e) {
                    let why = format!("{}: {HOLDS_VALUE}", sql(err));
                    return Err(lost(layout, e, &why));
                }
                // Saved by another undo beside this one, maybe (see
                // `Stash::take_unlisted`).
                let saved = match (saved, e.op) {
                    (None, op::DELETE) => self
                        .stash
                        .take_unlisted(self.conn, layout, e)
                        .map_err(sql)?,
                    (saved, _) => saved,
                };
                if let Some(row) = saved {
                    return self.runs_row_back(layout, e, &row, &sql(err));
                }
                let taken = match e.op {
                    op::DELETE => STAYS_DELETED,
                    _ => TAKEN,
                };
                return Ok((false, Some(format!("{taken} ({})", sql(err))), true));
            }
            Err(err) => {
                return Err(match &err {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        clash(layout, e, f.extended_code, &sql(err))
                    }
                    _ => sql(err),
                });
            }
        };
        // A row the run deleted whose key is taken again: the same goes for
        // its later change (its key changed, or a REPLACE).
        if !put && e.op == op::DELETE && undone.later_change_of(e) {
            return Err(lost(layout, e, "a row written since the run holds its key"));
        }
        if put && e.op == op::DELETE && !self.overwrite && undone.kept_new == Some(e.table) {
            return Err(twice(layout, e));
        }
        Ok((put, why, false))
    }

    /// The row of `e`, which the run deleted, cannot go back (`err`:
    /// another row holds a value it needs), and the row the run inserted
    /// at its key afterwards, which this undo took back first, was saved:
    /// that one comes back, as the run left it, rather than the key being
    /// left with no row (unless another row holds the primary key that
    /// tells them apart). Kept, as the run left it.
    fn runs_row_back(
        &mut self,
        l: &Layout,
        e: &Entry,
        row: &stash::Saved,
        err: &str,
    ) -> Result<(bool, Option<String>, bool), String> {
        let sql = |e: rusqlite::Error| crate::run::db::run_time_message(self.conn, &e);
        // Another row under its primary key (the application's, added
        // since): the row exists, and the old one stays deleted.
        if self.stash.held_elsewhere(self.conn, l, row).map_err(sql)? {
            return Ok((false, Some(format!("{STAYS_DELETED} ({err})")), true));
        }
        match stash::put_back(self.conn, &l.table, row) {
            Ok(()) => Ok((false, Some(format!("{RUNS_ROW} ({err})")), true)),
            Err(again) if taken(&again) => Err(lost_both(l, e, err, &sql(again))),
            Err(again) => Err(sql(again)),
        }
    }

    /// Puts one entry back: whether it did, and why it is a conflict, if
    /// it is one (put back all the same under `overwrite`).
    fn entry(&mut self, l: &Layout, e: &Entry) -> rusqlite::Result<(bool, Option<String>)> {
        let now = self.now(l)?;
        let added = match e.op {
            op::INSERT => &now.added[..],
            _ => &[],
        };
        let [read, write] = self.statements(l, e, &now);
        let (found, same) = self.read_row(&read, l, e, added)?;
        // Not the row the run deleted come back: under `overwrite` it
        // would go, the application's row, with nothing said of it.
        if e.op == op::DELETE && found && rowid_reused(self.conn, l, e)? {
            return Ok((false, Some(REUSED.into())));
        }
        let why = match (e.op, found) {
            (op::DELETE, false) => None,
            (op::DELETE, true) => Some(format!("{RUN_DELETED} exists again")),
            (op::INSERT, false) => {
                return Ok((false, Some(GONE[0].into())));
            }
            (op::INSERT, true) => {
                (!same).then(|| "the row the run inserted has been changed since".to_owned())
            }
            (_, false) => return Ok((false, Some(GONE[1].into()))),
            (_, true) => (!same).then(|| changed(l, &e.columns, &self.buf)),
        };
        if why.is_some() && !self.overwrite {
            return Ok((false, why));
        }
        if e.op == op::DELETE && found {
            // Overwritten: the application's row goes, the run's comes back.
            let gone = Entry {
                op: op::INSERT,
                columns: std::rc::Rc::from([]),
                ..e.clone()
            };
            let [_, delete] = self.statements(l, &gone, &now);
            self.conn
                .prepare_cached(&delete)?
                .execute(params_from_iter(&e.key))?;
        }
        if e.op == op::INSERT && self.stash.older_may_delete() {
            let by = key_clause(l, 1, &now.collations);
            self.stash
                .save_if_deleted_later(self.conn, (l, &e.key, &by))?;
        }
        let mut stmt = self.conn.prepare_cached(&write)?;
        match e.op {
            op::INSERT => stmt.execute(params_from_iter(&e.key))?,
            op::DELETE => stmt.execute(params_from_iter(e.key.iter().chain(&e.old)))?,
            _ => stmt.execute(params_from_iter(e.old.iter().chain(&e.key)))?,
        };
        Ok((true, why))
    }

    /// Reads the row of entry `e` by `read`: whether it is there, and
    /// whether it is as the run left it (the columns the entry restores;
    /// for a row the run inserted, its key too, and the columns `added`
    /// since still at their default).
    fn read_row(
        &mut self,
        read: &str,
        l: &Layout,
        e: &Entry,
        added: &[Added],
    ) -> rusqlite::Result<(bool, bool)> {
        let n = match e.op {
            op::DELETE => 0,
            _ => e.columns.len(),
        };
        let keys = match reads_key(l, e) {
            true => l.key.len(),
            false => 0,
        };
        self.buf.clear();
        let (buf, mut key) = (&mut self.buf, Vec::new());
        let params = e
            .key
            .iter()
            .map(|v| v as &dyn rusqlite::ToSql)
            .chain(added::defaults(added).map(|v| v as &dyn rusqlite::ToSql));
        let untouched = self
            .conn
            .prepare_cached(read)?
            .query_row(params_from_iter(params), |r| {
                for i in 0..n + keys {
                    put_value(if i < n { &mut *buf } else { &mut key }, r.get_ref(i)?);
                }
                match added.is_empty() {
                    true => Ok(true),
                    false => r.get::<_, bool>(n + keys),
                }
            })
            .optional()?;
        let Some(untouched) = untouched else {
            return Ok((false, false));
        };
        let same = Some(print(&self.buf)) == e.print && (keys == 0 || key == encoded(&e.key));
        Ok((true, same && untouched))
    }

    /// What `l`'s table is now (read once a part).
    fn now(&mut self, l: &Layout) -> rusqlite::Result<std::rc::Rc<Now>> {
        if let Some(now) = self.now.get(&l.table) {
            return Ok(now.clone());
        }
        let now = std::rc::Rc::new(Now {
            added: added::added(self.conn, l)?,
            collations: super::shape::key_collations(self.conn, l)?,
        });
        self.now.insert(l.table.clone(), now.clone());
        Ok(now)
    }

    /// The entry's [`Statements`], made once per table, kind and columns
    /// (and, within a part, what its table is `now`).
    fn statements(&mut self, l: &Layout, e: &Entry, now: &Now) -> Statements {
        let id = (e.table, e.op, e.columns.clone());
        if let Some(s) = self.sql.get(&id) {
            return s.clone();
        }
        let s = statements(l, e, now);
        self.sql.insert(id, s.clone());
        s
    }
}

/// Why an updated row whose restored columns' current values (`now`,
/// encoded) are not the run's is a conflict.
fn changed(l: &Layout, columns: &[usize], now: &[u8]) -> String {
    let now = values(now).unwrap_or_default();
    let names: Vec<_> = columns
        .iter()
        .map(|&c| crate::human::shown(&l.columns[c]))
        .collect();
    let now: Vec<String> = now.iter().map(|v| shown(&v.to_value())).collect();
    if let ([name], [value]) = (&names[..], &now[..]) {
        return format!("{name} is not what the run wrote (now {value})");
    }
    // The record holds one fingerprint of what the run wrote to them all,
    // so it can tell that one of them changed, not which.
    let now: Vec<String> = names
        .iter()
        .zip(&now)
        .map(|(n, v)| format!("{n} = {v}"))
        .collect();
    format!(
        "{} are not all what the run wrote (now {})",
        names.join(", "),
        now.join(", ")
    )
}

/// Why a row is kept when another row holds a `UNIQUE` value (or the
/// key) it would get back: one the application wrote since, or one kept
/// as a conflict before it.
pub(super) const TAKEN: &str = "another row holds a value it would get back";

/// [`TAKEN`], for a row the run deleted: it stays deleted, with nothing
/// of the run's on a row (it begins as [`TAKEN`] does, which counts it).
pub(super) const STAYS_DELETED: &str =
    "another row holds a value it would get back, so it stays deleted";

/// [`STAYS_DELETED`], for a row the run deleted from a table found by its
/// bare rowid whose rowid now holds another row (see [`rowid_reused`]).
const REUSED: &str = "another row holds a value it would get back, so it stays deleted: its rowid holds a row added since under another primary key";

/// Whether the row now at the rowid of `e`, a row the run deleted from a
/// table found by its bare rowid, is another row: its declared primary
/// key is not the deleted row's. SQLite gives a new row the highest rowid
/// plus one, so a row added after the run deleted the last one takes its
/// rowid. A table that declares no key cannot tell (nor can the undo).
fn rowid_reused(conn: &Connection, l: &Layout, e: &Entry) -> rusqlite::Result<bool> {
    let (identity, Some(rowid)) = (super::shape::identity(conn, l)?, e.key.first()) else {
        return Ok(false);
    };
    let mut same = Vec::new();
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![rowid];
    for j in identity {
        let Some(at) = e.columns.iter().position(|&c| c == j) else {
            return Ok(false);
        };
        same.push(format!("{} IS ?{}", quote(&l.columns[j]), values.len() + 1));
        values.push(&e.old[at]);
    }
    if same.is_empty() {
        return Ok(false);
    }
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM main.{} WHERE {} = ?1 AND {})",
        quote(&l.table),
        l.key[0],
        same.join(" AND ")
    );
    conn.query_row(&sql, values.as_slice(), |r| r.get(0))
}

/// [`TAKEN`], for a row the run deleted, then inserted again at its key
/// in a later part, which this undo took back first: the run's row comes
/// back, as the run left it (it begins as [`TAKEN`] does, which counts it).
pub(super) const RUNS_ROW: &str = "another row holds a value it would get back, so the row the run inserted at its key afterwards stays";

/// How the reason begins for a row the run deleted that is kept: it came
/// back at its key since ([`left_deleted`]).
pub(super) const RUN_DELETED: &str = "the row the run deleted";

/// Why a row is kept that the application deleted since the run: nothing
/// of it is left to take back, nor to carry the run's values.
pub(super) const GONE: [&str; 2] = ["the row the run inserted is gone", "the row is gone"];

/// Why a row cannot go back when a `UNIQUE` constraint (or the key)
/// stops it.
const HOLDS_VALUE: &str = "a row written since the run holds a value it needs";

/// Whether `err` is a `UNIQUE` (or primary key) constraint's: a row
/// written since holds a value the row put back needs.
fn taken(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(f, _) if UNIQUE.contains(&f.extended_code))
}

/// What a part has put back so far, row by row: enough to tell whether
/// a row that cannot go back had a later change in the part that already
/// went (see [`lost`]).
#[derive(Default)]
struct Undone {
    /// The rows (table, encoded key) put back.
    rows: HashSet<(usize, Vec<u8>)>,
    /// In a record from before [`MOVES`](super::codec::MOVES), which does
    /// not mark the inserts that are a key's change: the tables a row the
    /// run inserted was deleted from, any of which may be a deleted row's.
    emptied: HashSet<usize>,
    /// The table of the entry just before this one when that entry is a
    /// row the run inserted at a key it changed and that went back: the
    /// row deleted right before it in the record (side by side, see
    /// `kept_new`) at its new key. Another deleted row of the table is
    /// another row, whether or not the part holds a key's change.
    moved_back: Option<usize>,
    /// The table of the entry just before this one (the next newer, as a
    /// part goes back newest first) when that entry is a row the run
    /// inserted at a key it changed and that stays: the application
    /// changed or deleted it since (or an undo kept it before). An
    /// `UPDATE` of a key is recorded as the row deleted then inserted
    /// anew, side by side; a row deleted anywhere else in the part (a
    /// `REPLACE` of another row, a step that deletes some rows and inserts
    /// others) is another row.
    kept_new: Option<usize>,
    /// The record marks the inserts that are a key's change; a record from
    /// before does not, and every insert right after a delete counts.
    moves: bool,
}

impl Undone {
    fn went_back(&mut self, e: &Entry) {
        self.rows.insert((e.table, encoded(&e.key)));
        if e.op == op::INSERT && !self.moves {
            self.emptied.insert(e.table);
        }
    }

    /// Moves on past `e`, which stays as it is when `kept`.
    fn next(&mut self, e: &Entry, kept: bool) {
        let moved = e.moved || !self.moves;
        self.kept_new = (kept && e.op == op::INSERT && moved).then_some(e.table);
        self.moved_back = (!kept && e.op == op::INSERT && e.moved).then_some(e.table);
    }

    /// Whether a later change of `e`'s row may have gone back already:
    /// one of the same key (a `REPLACE` of it), or, for a row the run
    /// deleted, the row recorded right after it, moved to a new key (an
    /// `UPDATE` of the key is recorded as the row deleted and inserted
    /// anew, side by side).
    fn later_change_of(&self, e: &Entry) -> bool {
        let moved = |t| self.emptied.contains(t) || self.moved_back == Some(*t);
        self.rows.contains(&(e.table, encoded(&e.key))) || (e.op == op::DELETE && moved(&e.table))
    }
}

/// Why a part stops when a row cannot go back (`why`: a row written since
/// holds a `UNIQUE` value or the key it needs) after a later change of the
/// row in the same part went back: kept, the row would be neither as the
/// run left it nor as it was, and possibly gone (under `overwrite`,
/// [`clash`] says it).
fn lost(l: &Layout, e: &Entry, why: &str) -> String {
    format!(
        "putting back the row of {} at key {} fails ({why}), and the same chunk of the run changed this row again (a REPLACE, or its key changed), which the undo has already taken back; keeping it as a conflict would lose the row. The undo stopped here, this chunk rolled back, what it took back before stays taken back; change the row that holds the value, then run the undo again (or give up on this record with `batchsse undo clear`)",
        crate::human::shown(&l.table),
        key_shown(&e.key)
    )
}

/// Why a part stops when neither the row the run deleted nor the row it
/// inserted at the same key afterwards (saved by this undo, see `stash`)
/// can go back: rows written since hold values each needs (`err`, then
/// `again`). Kept, the key would be left with no row at all.
fn lost_both(l: &Layout, e: &Entry, err: &str, again: &str) -> String {
    format!(
        "putting back the row of {} at key {} fails ({err}: {HOLDS_VALUE}), and so does putting back the row the run inserted at that key afterwards, which this undo took back and saved in {} ({again}); keeping it as a conflict would lose the row. The undo stopped here, this chunk rolled back, what it took back before stays taken back; change the rows that hold the values, then run the undo again (giving up on this record with `batchsse undo clear` drops the saved row too)",
        crate::human::shown(&l.table),
        key_shown(&e.key),
        stash::TABLE
    )
}

/// Why a part stops when a row the run deleted would go back while the
/// row recorded right after it, inserted into its table, stays, as the
/// application changed or deleted it: an `UPDATE` of the key is recorded
/// as the row deleted and inserted anew, so the row would be back at its
/// old key beside the application's at its new one (or back where the
/// application deleted it).
fn twice(l: &Layout, e: &Entry) -> String {
    format!(
        "putting back the row of {} at key {} would let it exist twice: right after deleting it, the same chunk of the run inserted a row into {0} (this row at its new key, if the run changed its key) that the application has changed or deleted since, and that stays. The undo stopped here, this chunk rolled back, what it took back before stays taken back; run the undo again with `--on-conflict overwrite` to take the application's change of that row back too, or settle the rows by hand and give up on this record with `batchsse undo clear`",
        crate::human::shown(&l.table),
        key_shown(&e.key)
    )
}

/// The constraints a row written since can trip by holding a value.
const UNIQUE: [std::ffi::c_int; 2] = [
    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
    rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
];

/// Why putting entry `e` back failed on a constraint (`code`, SQLite's
/// extended one), with what to do: under `overwrite`, or a constraint
/// other than a `UNIQUE` one.
fn clash(l: &Layout, e: &Entry, code: std::ffi::c_int, err: &str) -> String {
    let (cause, or_skip) = if UNIQUE.contains(&code) {
        (
            HOLDS_VALUE,
            "; `--on-conflict skip` keeps that row as it is and goes on",
        )
    } else {
        ("the table no longer takes it as the run found it", "")
    };
    format!(
        "putting back the row of {} at key {} fails ({err}): {cause}. The undo stopped here, this chunk rolled back, what it took back before stays taken back; change that row or the table, then run the undo again{or_skip} (or give up on this record with `batchsse undo clear`)",
        crate::human::shown(&l.table),
        key_shown(&e.key)
    )
}

/// `OR ABORT`: a table's own `ON CONFLICT REPLACE` must not let a row put
/// back delete a row the application has written since; the clash keeps
/// the row as a conflict instead (or, under `overwrite`, stops the undo,
/// the part rolled back).
fn statements(l: &Layout, e: &Entry, now: &Now) -> Statements {
    let t = format!("main.{}", quote(&l.table));
    let cols: Vec<String> = e.columns.iter().map(|&c| quote(&l.columns[c])).collect();
    let by = key_clause(l, 1, &now.collations);
    let mut read = match e.op {
        op::DELETE => Vec::new(),
        _ => cols.clone(),
    };
    if reads_key(l, e) {
        read.extend(l.key.iter().cloned());
    }
    // Bound after the key's values.
    if e.op == op::INSERT {
        read.extend(added::untouched(&now.added, l.key.len() + 1));
    }
    let read = match read.is_empty() {
        true => format!("SELECT 1 FROM {t} WHERE {by}"),
        false => format!("SELECT {} FROM {t} WHERE {by}", read.join(", ")),
    };
    let write = match e.op {
        op::INSERT => format!("DELETE FROM {t} WHERE {by}"),
        op::DELETE => {
            let names: Vec<&str> = l.key.iter().chain(&cols).map(String::as_str).collect();
            let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
            format!(
                "INSERT OR ABORT INTO {t}({}) VALUES ({})",
                names.join(", "),
                marks.join(", ")
            )
        }
        _ => {
            let set: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c} = ?{}", i + 1))
                .collect();
            let by = key_clause(l, cols.len() + 1, &now.collations);
            format!("UPDATE OR ABORT {t} SET {} WHERE {by}", set.join(", "))
        }
    };
    [read, write]
}

/// Whether putting back entry `e` reads its row's key as well: a row the
/// run inserted is the run's only while its key is as the run wrote it,
/// and a key that is not a rowid is found by values its collation (NOCASE)
/// or SQLite's comparison of numbers (2 and 2.0) calls equal, which the
/// application may have written over it since.
fn reads_key(l: &Layout, e: &Entry) -> bool {
    e.op == op::INSERT && !l.int_key
}

/// The condition that finds a row by its key, the key's values bound from
/// parameter `?from` on (a composite key may hold NULLs in a rowid table:
/// `IS`, not `=`), each compared by its primary key's collation
/// (`collations`), which finds one row, where its column's may find two.
fn key_clause(l: &Layout, from: usize, collations: &[Option<String>]) -> String {
    let op = if l.int_key { "=" } else { "IS" };
    let each: Vec<String> = (0..l.key.len())
        .map(|i| {
            let by = match collations.get(i) {
                Some(Some(c)) => format!(" COLLATE {}", quote(c)),
                _ => String::new(),
            };
            format!("{} {op} ?{}{by}", l.key[i], from + i)
        })
        .collect();
    each.join(" AND ")
}

/// A row's entry in [`Reverter::held`]: its key as the conflict table
/// keeps it, encoded.
fn held_id(table: &str, key: &[Val]) -> (String, Vec<u8>) {
    (table.to_owned(), key_id(key))
}

/// A row's key as [`held_id`] and [`Reverter::older`] hold it: the value
/// the conflict table keeps, encoded.
fn key_id(key: &[Val]) -> Vec<u8> {
    let mut id = Vec::new();
    put_value(&mut id, key_value(key).as_ref());
    id
}

/// A row's key in [`Reverter::older`]: [`key_id`], and whether the older
/// run left the row deleted (only an insert's undo, which deletes it
/// again, leaves it as that run did).
fn older_id(key: &[Val], deleted: bool) -> Vec<u8> {
    let mut id = key_id(key);
    id.push(u8::from(deleted));
    id
}

/// Whether a row an undo kept for `why` is one its run left deleted: the
/// row came back at its key since, or cannot come back.
fn left_deleted(why: &[u8]) -> bool {
    why.starts_with(RUN_DELETED.as_bytes()) || why.starts_with(STAYS_DELETED.as_bytes())
}

/// A row an older run's undo kept ([`Reverter::older`]): its row in
/// `batchsse_undo_conflict`, and which of the undo's runs
/// ([`Reverter::starts`]) carry that older run's change when their undo
/// puts it back.
struct Older {
    rowid: i64,
    runs: std::ops::Range<u32>,
}

/// Values' encodings, one after the other.
fn encoded(values: &[Val]) -> Vec<u8> {
    encode(values.iter().map(Val::as_ref))
}

/// The names of `l`'s columns at `columns`.
fn names<'l>(l: &'l Layout, columns: &[usize]) -> Vec<&'l str> {
    columns
        .iter()
        .filter_map(|&c| l.columns.get(c).map(String::as_str))
        .collect()
}

/// A key as one value: a composite key's as the text `(a, b)`, as
/// `batchsse_undo_conflict` has always kept it (a whole REAL without its
/// point, unlike a message), so an undo stopped by an earlier batchsse
/// still finds the rows it kept. (A key column cannot hold both 2 and
/// 2.0: SQLite finds them equal.) A blob is written whole, however long:
/// a message shows a long one by its size alone, and two keys that differ
/// only there would be one row kept (the other's entries held back too).
/// So is text that is not UTF-8, as SQLite holds it (alone) or as the SQL
/// that makes it (in a composite key): made UTF-8, two such keys read the
/// same.
fn key_value(key: &[Val]) -> Val {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let stored = |v: &Val| match v {
        Val::Real(f) => f.to_string(),
        Val::Blob(b) => format!("x'{}'", hex(b)),
        Val::Text(t) if std::str::from_utf8(t).is_err() => {
            format!("CAST(x'{}' AS TEXT)", hex(t))
        }
        v => shown(&v.to_value()),
    };
    match key {
        [one] => one.clone(),
        _ => {
            let each: Vec<String> = key.iter().map(stored).collect();
            Val::Text(format!("({})", each.join(", ")).into_bytes())
        }
    }
}

/// A key as a message shows it: `5`, `"a"`, `("a", 5)`.
fn key_shown(key: &[Val]) -> String {
    match key {
        [one] => shown(&one.to_value()),
        _ => {
            let each: Vec<String> = key.iter().map(|v| shown(&v.to_value())).collect();
            format!("({})", each.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conflict table's keys are stored state: their text must not
    /// follow a message's wording.
    #[test]
    fn a_composite_key_is_kept_as_it_always_was_and_shown_with_its_point() {
        let key = [Val::Real(2.0), Val::Text(b"a".to_vec()), Val::Integer(7)];
        let text = |s: &str| Val::Text(s.as_bytes().to_vec());
        assert_eq!(key_value(&key), text(r#"(2, "a", 7)"#));
        assert_eq!(key_shown(&key), r#"(2.0, "a", 7)"#);
        assert_eq!(key_value(&[Val::Real(2.0)]), Val::Real(2.0));
        let long = |b: u8| [Val::Blob(vec![b; 40]), Val::Integer(1)];
        assert_ne!(key_value(&long(1)), key_value(&long(2)));
        let short = [Val::Blob(vec![0xab; 2]), Val::Integer(1)];
        assert_eq!(key_value(&short), text("(x'abab', 1)"));
        let odd = |b: u8| [Val::Text(vec![b]), Val::Integer(1)];
        assert_ne!(key_value(&odd(0xfe)), key_value(&odd(0xff)));
        assert_eq!(key_value(&odd(0xff)), text("(CAST(x'ff' AS TEXT), 1)"));
    }
}
