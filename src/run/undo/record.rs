//! Recording a run for undo, inside each chunk's own transaction, in one of
//! two ways:
//! - **read around** (a chunked step that only updates its own rowid
//!   table): the chunk's rows are read before and after the work, and the
//!   update hook proves the work touched no other row; the common case,
//!   and as cheap as two range scans;
//! - **staged**: TEMP triggers on every table copy each changed row, old
//!   and new, into a TEMP table, which is packed into the record after the
//!   work. Everything else, and a chunk whose work strayed (rolled back to
//!   a savepoint and done again this way).
//!
//! A TEMP trigger, like the update hook, belongs to the batch's connection:
//! the application's writes are never recorded, while the writes of the
//! plan's own triggers and foreign-key actions are.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_char, c_int, c_void};

use rusqlite::types::Value;
use rusqlite::{Connection, ffi, params};

use super::codec::{Encoder, KeyRef, Layout, mask_of, op, print, put_value};
use super::guard::Guard;
use super::shape::{identity, layouts, with_identity};
use super::store::{self, NOTHING, PARTS, UNRECORDED};
use crate::plan::{Step, quote};
use crate::run::hooked::{Beneath, Hooked};

/// A recorded chunk's blob is cut into parts of about this size, so a
/// plain step over millions of rows never holds one huge value. An undo
/// takes back each part in one transaction: parts this small hold the
/// write lock about as long as a chunk at the live pace, beside an
/// application, whatever pace the run was recorded at (4 MiB parts of a
/// run recorded on an idle file held it for 180 ms).
const PART_BYTES: usize = 256 << 10;

/// [`PART_BYTES`], or `BATCHSSE_UNDO_PART_BYTES=N` (at least 1), so tests
/// can watch chunks cut into many parts. A testing aid, not a knob.
fn part_bytes() -> usize {
    std::env::var("BATCHSSE_UNDO_PART_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(PART_BYTES)
}

/// What the update hook saw while a read-around chunk worked.
#[derive(Default)]
struct Seen {
    /// The table being watched; `None`: not watching.
    table: Option<String>,
    rowids: Vec<i64>,
    /// A change anywhere else, or not an update.
    other: bool,
}

/// The batch connection's update hook, for the read-around recording,
/// for the whole run. The check of a step's every chunk (`run::fence`)
/// and the try as a step begins (`run::write_cap`) are installed over it
/// ([`Hook::beneath`]), and tell it every write too.
pub struct Hook<'c>(Hooked<'c, RefCell<Seen>>);

impl<'c> Hook<'c> {
    /// Installs the hook on the batch's connection, which must have none.
    pub fn install(conn: &'c Connection) -> Hook<'c> {
        Hook(Hooked::install(
            conn,
            None,
            RefCell::default(),
            on_write,
            None,
        ))
    }

    /// What another update hook is installed over meanwhile.
    pub fn beneath(&self) -> Beneath<'_> {
        self.0.beneath()
    }

    /// What the callback notes. Taken only between statements: the
    /// callback, which takes it while one runs, is never left holding it.
    fn lock(&self) -> std::cell::RefMut<'_, Seen> {
        self.0.state().borrow_mut()
    }

    fn watch(&self, table: Option<&str>) {
        let mut s = self.lock();
        s.table = table.map(str::to_owned);
        s.rowids.clear();
        s.other = false;
    }

    /// Stops watching; whether every change was an update of one of
    /// `rowids` (sorted).
    fn stayed_within(&self, rowids: &[i64]) -> bool {
        let mut s = self.lock();
        s.table = None;
        !s.other && s.rowids.iter().all(|r| rowids.binary_search(r).is_ok())
    }
}

/// The [`Hook`]'s callback: notes the rowid of an update of the watched
/// table, and anything else as another change.
unsafe extern "C" fn on_write(
    ctx: *mut c_void,
    op: c_int,
    db: *const c_char,
    table: *const c_char,
    rowid: ffi::sqlite3_int64,
) {
    // SAFETY: `ctx` is the state of a live `Hook` (see `Hook::install`);
    // SQLite passes the names as NUL-terminated strings for this call.
    let seen = unsafe { &*(ctx as *const RefCell<Seen>) };
    let Ok(mut s) = seen.try_borrow_mut() else {
        return;
    };
    let Some(watched) = &s.table else { return };
    let name = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_bytes();
    let own = op == ffi::SQLITE_UPDATE && name(db) == b"main" && name(table) == watched.as_bytes();
    if own {
        s.rowids.push(rowid);
    } else {
        s.other = true;
    }
}

/// How the current step is recorded.
enum Mode {
    Off,
    /// By SQLite's pre-update hook (builds that have it).
    #[cfg_attr(not(batchsse_preupdate), allow(dead_code))]
    Pre,
    Around(Around),
    /// A read-around chunk strayed: staged from the next try on.
    Strayed,
    Staged(Vec<Layout>),
}

/// A read-around step: its table and the query that reads a chunk.
struct Around {
    layout: Layout,
    /// `SELECT rowid, columns… WHERE key BETWEEN ?1 AND ?2 ORDER BY key`.
    read: String,
}

/// A chunk's rows as read: rowids, and each row's values encoded one
/// after the other (`ends`: where each value ends).
#[derive(Default, PartialEq)]
struct Rows {
    rowids: Vec<i64>,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Rows {
    /// Value `j` of row `i`, for rows of `n` values.
    fn value(&self, n: usize, i: usize, j: usize) -> &[u8] {
        let at = i * n + j;
        let start = if at == 0 { 0 } else { self.ends[at - 1] };
        &self.bytes[start..self.ends[at]]
    }
}

/// This run's recording: arms a step, records each chunk in the chunk's
/// transaction.
pub struct Recorder<'c> {
    conn: &'c Connection,
    pub run_id: String,
    plan: String,
    hook: Option<Hook<'c>>,
    /// The number the step's next part gets.
    chunk: Cell<i64>,
    /// The row of `batchsse_undo` that counts the step's parts, once it
    /// has one, and the count it was given.
    count: Cell<Option<(i64, i64)>>,
    mode: RefCell<Mode>,
    /// The main schema's version when the step's recording was made.
    schema: Cell<i64>,
    armed: Cell<usize>,
    /// A read-around chunk's rows, before and after.
    rows: RefCell<(Rows, Rows)>,
    /// The TEMP staging table's name (see [`stage_name`]).
    stage: RefCell<String>,
    /// Refuses a write the record cannot hold (see [`Guard`]).
    guard: Option<Guard>,
    /// The steps recorded to their end with parts: (index, name, parts).
    finished: RefCell<Vec<(usize, String, i64)>>,
    /// An unrecorded step (`"undo": false`) not noted yet: it is, with its
    /// first work, in that work's transaction (see [`Recorder::arm`]).
    unnoted: Cell<bool>,
    /// Where a part is cut (see [`part_bytes`]), read once.
    part_bytes: usize,
    /// The tables whose writes may replace rows, as of a schema version
    /// (see [`Recorder::refuse_replacing`]).
    replacing: RefCell<Option<(i64, Vec<String>)>>,
    #[cfg(batchsse_preupdate)]
    pre: Option<super::preupdate::PreHook>,
}

impl<'c> Recorder<'c> {
    /// The recording's update hook, when it watches the connection
    /// through one: another is installed only over it, and tells it every
    /// write too.
    pub fn update_hook(&self) -> Option<Beneath<'_>> {
        self.hook.as_ref().map(Hook::beneath)
    }

    /// `hook`: the connection's update hook; without it every step is
    /// staged.
    pub fn new(
        conn: &'c Connection,
        run_id: String,
        plan: &str,
        (hook, guard): (Option<Hook<'c>>, Option<Guard>),
    ) -> Self {
        let part_bytes = part_bytes();
        Recorder {
            conn,
            run_id,
            plan: plan.to_owned(),
            hook,
            chunk: Cell::new(0),
            count: Cell::new(None),
            mode: RefCell::new(Mode::Off),
            schema: Cell::new(0),
            stage: RefCell::new(String::new()),
            guard,
            armed: Cell::new(0),
            rows: RefCell::default(),
            finished: RefCell::default(),
            unnoted: Cell::new(false),
            part_bytes,
            replacing: RefCell::default(),
            #[cfg(batchsse_preupdate)]
            pre: super::preupdate().then(|| {
                super::preupdate::PreHook::install(conn, part_bytes, super::spill::HELD_BYTES)
            }),
        }
    }

    /// What this run recorded and committed: its rows in the record table
    /// (parts and step notes) and their bytes. Read from the table, since a
    /// chunk rolled back takes the parts it wrote with it.
    pub fn committed(&self) -> rusqlite::Result<(u64, u64)> {
        if !store::exists(self.conn)? {
            return Ok((0, 0));
        }
        self.conn.query_row(
            "SELECT count(*), total(bytes) FROM batchsse_undo WHERE run = ?1",
            [&self.run_id],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, f64>(1)? as u64)),
        )
    }

    /// Makes the tables and chooses how `step` is recorded (again for each
    /// step: an earlier one may have changed the schema). A step that
    /// opts out is noted instead, so an undo stops at it: with its work,
    /// in the transaction that commits it, so a step that failed or was
    /// killed with nothing of it kept stops no undo. Now, for one run
    /// outside a transaction, or one that writes only TEMP tables, whose
    /// transaction only reads the file (it could not take the write lock
    /// once another connection has written in WAL mode).
    pub fn arm(&self, step: &Step) -> rusqlite::Result<()> {
        self.disarm();
        store::create(self.conn)?;
        store::probe(self.conn, &self.run_id)?;
        self.chunk.set(0);
        self.count.set(None);
        if !step.undo {
            if step.autocommit || step.temp_only {
                return self.note(step, 0, &[]);
            }
            self.unnoted.set(true);
            return Ok(());
        }
        if let Some(g) = &self.guard {
            g.arm(true);
        }
        // The version first: a migration landing between the two reads
        // then makes the first chunk read the tables again, rather than
        // leaving a layout older than its version.
        let version = schema_version(self.conn)?;
        let mode = self.choose(step, layouts(self.conn)?)?;
        *self.mode.borrow_mut() = mode;
        self.schema.set(version);
        Ok(())
    }

    /// How `step` is recorded over tables `layouts`: by the pre-update
    /// hook, armed with them, or else read around or staged.
    fn choose(&self, step: &Step, layouts: Vec<Layout>) -> rusqlite::Result<Mode> {
        #[cfg(batchsse_preupdate)]
        if let Some(pre) = &self.pre {
            let updates = step.updates.as_deref();
            pre.arm(self.conn, layouts, updates, self.guard.as_ref())?;
            return Ok(Mode::Pre);
        }
        let around = step
            .chunk
            .as_ref()
            .zip(self.hook.as_ref())
            .and_then(|(c, _)| {
                let only_own =
                    matches!(step.writes.as_slice(), [t] if t.eq_ignore_ascii_case(&c.table));
                let layout = layouts
                    .iter()
                    .find(|l| l.table.eq_ignore_ascii_case(&c.table))?;
                (only_own && layout.int_key).then(|| Around {
                    read: around_query(layout, &c.key_sql),
                    layout: layout.clone(),
                })
            });
        match around {
            Some(a) => Ok(Mode::Around(a)),
            None => self.stage(step, layouts),
        }
    }

    /// In a chunk's transaction, before its work: when the schema changed
    /// since the step was armed (an application's migration between two
    /// chunks adds a column, or a table), the tables are read again and
    /// the recording made anew, so that a row deleted from now on comes
    /// back with the new column's value too.
    fn follow_schema(&self, step: &Step) -> rusqlite::Result<()> {
        let now = schema_version(self.conn)?;
        if now == self.schema.get() || matches!(*self.mode.borrow(), Mode::Off) {
            return Ok(());
        }
        let layouts = layouts(self.conn)?;
        let staged = matches!(*self.mode.borrow(), Mode::Strayed | Mode::Staged(_));
        let mode = match staged {
            true => self.stage(step, layouts)?,
            false => self.choose(step, layouts)?,
        };
        *self.mode.borrow_mut() = mode;
        self.schema.set(now);
        Ok(())
    }

    /// Makes the staging table and the TEMP triggers that fill it, for the
    /// tables `step` writes (its triggers' and foreign-key actions' too).
    fn stage(&self, step: &Step, layouts: Vec<Layout>) -> rusqlite::Result<Mode> {
        let compiled = self.guard.as_ref().map(Guard::writes).unwrap_or_default();
        let layouts: Vec<Layout> = layouts
            .into_iter()
            .filter(|l| {
                let t = &l.table;
                let mut writes = step.writes.iter().chain(&compiled);
                writes.any(|w| w.eq_ignore_ascii_case(t))
            })
            .collect();
        let width = layouts
            .iter()
            .map(|l| l.key.len() + 2 * l.columns.len())
            .max()
            .unwrap_or(1);
        let cols: String = (1..=width).map(|i| format!(", v{i}")).collect();
        // Staged again with more tables: the first ones' triggers go.
        self.drop_triggers();
        let name = stage_name(self.conn)?;
        let mut sql = format!(
            "DROP TABLE IF EXISTS temp.{name};
             CREATE TEMP TABLE {name}(seq INTEGER PRIMARY KEY, tno INTEGER, op INTEGER{cols});"
        );
        for (n, l) in layouts.iter().enumerate() {
            sql += &triggers(n, l, &name);
        }
        *self.stage.borrow_mut() = name;
        self.conn.execute_batch(&sql)?;
        self.armed.set(layouts.len());
        Ok(Mode::Staged(layouts))
    }

    /// Drops the TEMP triggers that stage changes.
    fn drop_triggers(&self) {
        for n in 0..self.armed.get() {
            for kind in ["i", "d", "u", "m"] {
                let _ = self.conn.execute_batch(&format!(
                    "DROP TRIGGER IF EXISTS temp.batchsse_undo_{kind}{n}"
                ));
            }
        }
    }

    /// Why the armed step failed, when it did because it would write a
    /// table of an attached database.
    pub fn refused(&self) -> Option<String> {
        let table = self.guard.as_ref()?.lock().denied.take()?;
        let table = crate::human::shown(&table);
        Some(format!(
            "it writes {table}, a table of an attached database, which the undo record cannot hold, so it was not run; give the step \"undo\": false to run it unrecorded (an undo then stops at it), or run without --undo"
        ))
    }

    /// After a recorded step succeeded: a step that changed nothing is
    /// noted as recorded all the same, unless its work noted it already
    /// (see [`Recorder::note_unchanged`]): a chunked step that had no
    /// chunk, or a TEMP-only one. (A crash before this leaves it unnoted,
    /// which only keeps an undo from clearing its checkpoint.)
    pub fn step_done(&self, step: &Step) -> rusqlite::Result<()> {
        if step.undo && self.chunk.get() == 0 && !self.noted(step)? {
            self.note(step, 0, &[])?;
        }
        if self.chunk.get() > 0 {
            let done = (step.index, step.name.clone(), self.chunk.get());
            self.finished.borrow_mut().push(done);
        }
        Ok(())
    }

    /// After an unrecorded step (`"undo": false`) failed with nothing of
    /// it committed by this run: a note [`Recorder::arm`] wrote before it
    /// began (for a step that writes only TEMP tables) goes, or an undo
    /// would stop at a step that changed nothing and take back none of the
    /// recorded steps before it. (Another step's note went with its
    /// rolled-back work.)
    pub fn unnote(&self, step: &Step) -> rusqlite::Result<()> {
        if step.undo || !store::exists(self.conn)? {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "DELETE FROM batchsse_undo WHERE run = ?1 AND step = ?2 AND chunk = ?3",
            )?
            .execute(params![self.run_id, step.index as i64, UNRECORDED])?;
        Ok(())
    }

    /// At the end of a run that committed as it went: a step recorded to
    /// its end whose every row is gone (`batchsse undo clear` ran between
    /// two steps) gets its count of parts back, so that an undo finds its
    /// parts gone and refuses the record, instead of taking back the
    /// other steps alone and calling the run taken back.
    pub fn mark_cleared_steps(&self) -> rusqlite::Result<()> {
        if !store::exists(self.conn)? {
            return Ok(()); // the whole record is gone: no undo will run
        }
        for (index, name, parts) in self.finished.borrow().iter() {
            let left: bool = self.conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM batchsse_undo WHERE run = ?1 AND step = ?2)",
                params![self.run_id, *index as i64],
                |r| r.get(0),
            )?;
            if !left {
                self.conn.execute(
                    "INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                    params![self.run_id, self.plan, *index as i64, name, PARTS, parts],
                )?;
            }
        }
        Ok(())
    }

    /// Drops the triggers and the staging table (the step is over).
    pub fn disarm(&self) {
        self.unnoted.set(false);
        if let Some(g) = &self.guard {
            g.arm(false);
        }
        self.drop_triggers();
        #[cfg(batchsse_preupdate)]
        if let Some(pre) = &self.pre {
            pre.disarm();
        }
        if self.armed.replace(0) > 0 {
            let name = self.stage.borrow();
            let _ = self
                .conn
                .execute_batch(&format!("DROP TABLE IF EXISTS temp.{name}"));
        }
        *self.mode.borrow_mut() = Mode::Off;
    }

    /// Does the work of one chunk (`range`: its keys; `None` for a plain
    /// step) and records it, in the caller's transaction; returns what the
    /// work returns, the rows it changed. `None`: the work strayed from
    /// the chunk's rows, so it could not be recorded by reading around it,
    /// or wrote a table the staging did not cover; the caller rolls the
    /// chunk back and does it again, which is then recorded staged, those
    /// tables too (as is the rest of the step).
    pub fn record(
        &self,
        step: &Step,
        range: Option<(&Value, &Value)>,
        work: &mut dyn FnMut() -> rusqlite::Result<u64>,
    ) -> rusqlite::Result<Option<u64>> {
        let recorded = self.record_chunk(step, range, work)?;
        if recorded.is_some() {
            if self.unnoted.replace(false) {
                self.note(step, 0, &[])?;
            }
            self.note_unchanged(step)?;
            self.count_parts(step)?;
        }
        Ok(recorded)
    }

    /// In the transaction of a recorded step's work that left no part, and
    /// none before it in this run: a note that the step is recorded. A run
    /// stopped after chunks that changed no row then still reads as having
    /// recorded the step, to its resume and to an undo, which otherwise
    /// took it for a step applied unrecorded. A TEMP-only step is noted as
    /// it ends: its transaction only reads the file.
    fn note_unchanged(&self, step: &Step) -> rusqlite::Result<()> {
        if !step.undo || step.temp_only || self.chunk.get() > 0 || self.noted(step)? {
            return Ok(());
        }
        self.note(step, 0, &[])
    }

    /// Whether this run's record holds a row of `step` (a part or a note).
    fn noted(&self, step: &Step) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM batchsse_undo WHERE run = ?1 AND step = ?2)",
            )?
            .query_row(params![self.run_id, step.index as i64], |r| r.get(0))
    }

    /// What [`Recorder::record`] does but count the step's parts.
    fn record_chunk(
        &self,
        step: &Step,
        range: Option<(&Value, &Value)>,
        work: &mut dyn FnMut() -> rusqlite::Result<u64>,
    ) -> rusqlite::Result<Option<u64>> {
        self.follow_schema(step)?;
        if matches!(*self.mode.borrow(), Mode::Strayed) {
            let layouts = layouts(self.conn)?;
            let staged = self.stage(step, layouts)?;
            *self.mode.borrow_mut() = staged;
        }
        let around = match (&*self.mode.borrow(), range) {
            (Mode::Off, _) => return work().map(Some),
            (Mode::Pre, _) => return self.record_pre(step, work),
            (Mode::Around(a), Some(range)) => Some((a.read.clone(), a.layout.clone(), range)),
            _ => None,
        };
        match around {
            Some((read, layout, range)) => {
                let recorded = self.read_around(step, (&read, &layout), range, work)?;
                self.refuse_replacing(step)?;
                Ok(recorded)
            }
            None => {
                let changed = work()?;
                self.refuse_replacing(step)?;
                if self.staged_too_few()? {
                    // Staged from now on with those tables too; the
                    // triggers are made in the next try's transaction.
                    *self.mode.borrow_mut() = Mode::Strayed;
                    return Ok(None);
                }
                self.pack_staged(step)?;
                Ok(Some(changed))
            }
        }
    }

    /// Fails the work (its transaction is rolled back) when it wrote a
    /// table whose writes may replace rows: nothing records the rows
    /// REPLACE deletes but the pre-update hook, so the check before the
    /// run refuses such a step where it records otherwise; this finds what
    /// the application made since (a trigger that uses `INSERT OR
    /// REPLACE`, say). The tables are read again only when the schema
    /// changed.
    fn refuse_replacing(&self, step: &Step) -> rusqlite::Result<()> {
        let version = schema_version(self.conn)?;
        let mut cached = self.replacing.borrow_mut();
        if cached.as_ref().is_none_or(|(v, _)| *v != version) {
            *cached = Some((version, super::shape::replacing_tables(self.conn)?));
        }
        let replacing = cached
            .as_ref()
            .map(|(_, r)| r.as_slice())
            .unwrap_or_default();
        let compiled = self
            .guard
            .as_ref()
            .map(Guard::step_writes)
            .unwrap_or_default();
        let mut writes = step.writes.iter().chain(&compiled);
        match writes.find(|w| replacing.iter().any(|r| r.eq_ignore_ascii_case(w))) {
            Some(t) => Err(store::failure(format!(
                "the step wrote {}, whose definition (ON CONFLICT REPLACE) or a trigger (INSERT OR REPLACE), made since the check before the run, may replace rows, which deletes them without telling the triggers and hooks that record them in this build (one built without SQLite's pre-update hook, or with BATCHSSE_UNDO_HOOK=off)",
                crate::human::shown(t)
            ))),
            None => Ok(()),
        }
    }

    /// The rows staged so far (see [`triggers`]): written by the TEMP
    /// triggers while the step's statements run, so counted in SQLite's
    /// `total_changes()` beside the step's own; 0 where nothing is staged.
    /// Within a statement rows are only added, each under the next rowid.
    pub fn staged(&self) -> rusqlite::Result<u64> {
        if !matches!(*self.mode.borrow(), Mode::Staged(_)) {
            return Ok(0);
        }
        let sql = format!(
            "SELECT coalesce(max(rowid), 0) FROM temp.{}",
            quote(&self.stage.borrow())
        );
        let top: i64 = self
            .conn
            .prepare_cached(&sql)?
            .query_row([], |r| r.get(0))?;
        Ok(top.max(0) as u64)
    }

    /// Whether the work wrote a table no TEMP trigger stages: one a
    /// trigger added since the check before the run writes (see
    /// [`Guard`]). An error when that table cannot be recorded at all.
    fn staged_too_few(&self) -> rusqlite::Result<bool> {
        let (Some(guard), Mode::Staged(staged)) = (&self.guard, &*self.mode.borrow()) else {
            return Ok(false);
        };
        let missing: Vec<String> = guard
            .writes()
            .into_iter()
            .filter(|w| !staged.iter().any(|l| l.table.eq_ignore_ascii_case(w)))
            .filter(|w| !is_view(self.conn, w))
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        let keyable = layouts(self.conn)?;
        match missing
            .iter()
            .find(|m| !keyable.iter().any(|l| l.table.eq_ignore_ascii_case(m)))
        {
            Some(t) => Err(store::failure(format!(
                "the step changed {}, which the undo record cannot key",
                crate::human::shown(t)
            ))),
            None => Ok(true),
        }
    }

    /// The work, recorded by the pre-update hook as it goes.
    /// `None`: the work wrote a table made since the step was armed
    /// (through a trigger added since): armed again with it, to be done
    /// again.
    fn record_pre(
        &self,
        step: &Step,
        work: &mut dyn FnMut() -> rusqlite::Result<u64>,
    ) -> rusqlite::Result<Option<u64>> {
        #[cfg(batchsse_preupdate)]
        if let Some(pre) = &self.pre {
            pre.discard();
            let changed = work().inspect_err(|_| pre.discard())?;
            let parts = match pre.take() {
                Ok(parts) => parts,
                Err(why) => {
                    let layouts = layouts(self.conn)?;
                    if !pre.lacks_any(&layouts) {
                        return Err(store::failure(why));
                    }
                    let updates = step.updates.as_deref();
                    pre.arm(self.conn, layouts, updates, self.guard.as_ref())?;
                    return Ok(None);
                }
            };
            parts.each(|rows, blob| self.note_part(step, rows, blob))?;
            return Ok(Some(changed));
        }
        let _ = step; // a build without the hook never comes here
        work().map(Some)
    }

    /// The read-around recording of one chunk (see [`Recorder::record`]).
    fn read_around(
        &self,
        step: &Step,
        (read, layout): (&str, &Layout),
        (lo, hi): (&Value, &Value),
        work: &mut dyn FnMut() -> rusqlite::Result<u64>,
    ) -> rusqlite::Result<Option<u64>> {
        let hook = self.hook.as_ref().expect("read-around needs the hook");
        let n = layout.columns.len();
        let mut rows = self.rows.borrow_mut();
        let (before, after) = &mut *rows;
        read_rows(self.conn, read, (lo, hi), n, before)?;
        hook.watch(Some(&layout.table));
        let worked = work();
        // The update hook never tells of a `WITHOUT ROWID` table's rows:
        // what the statements were compiled to write says it.
        let beside = self
            .guard
            .as_ref()
            .is_some_and(|g| g.writes_beside(&layout.table));
        let stayed = hook.stayed_within(&before.rowids) && !beside;
        let changed = worked?;
        if stayed {
            read_rows(self.conn, read, (lo, hi), n, after)?;
            if after.rowids == before.rowids {
                self.pack_around(step, layout, before, after)?;
                return Ok(Some(changed));
            }
        }
        // Staged from now on; the triggers are made in the chunk's next
        // transaction (this one is rolled back).
        *self.mode.borrow_mut() = Mode::Strayed;
        Ok(None)
    }

    /// Records the rows whose values differ between the two reads.
    fn pack_around(
        &self,
        step: &Step,
        layout: &Layout,
        before: &Rows,
        after: &Rows,
    ) -> rusqlite::Result<()> {
        let n = layout.columns.len();
        let mut enc = Encoder::new(true);
        let t = enc.table(layout);
        let identity = identity(self.conn, layout)?;
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for (i, rowid) in before.rowids.iter().enumerate() {
            let differs = (0..n).filter(|&j| before.value(n, i, j) != after.value(n, i, j));
            let mut changed: Vec<usize> = differs.collect();
            if changed.is_empty() {
                continue;
            }
            with_identity(&mut changed, &identity);
            old.clear();
            new.clear();
            for &j in &changed {
                old.extend_from_slice(before.value(n, i, j));
                new.extend_from_slice(after.value(n, i, j));
            }
            enc.update(
                t,
                KeyRef::Int(*rowid),
                &mask_of(n, changed),
                &old,
                print(&new),
            );
            self.flush_part(step, &mut enc, false)?;
        }
        self.flush_part(step, &mut enc, true)
    }

    /// Packs what the triggers staged into the record, and empties the
    /// staging table.
    fn pack_staged(&self, step: &Step) -> rusqlite::Result<()> {
        let mode = self.mode.borrow();
        let Mode::Staged(layouts) = &*mode else {
            return Ok(());
        };
        let mut enc = Encoder::new(false);
        let name = self.stage.borrow();
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT * FROM temp.{name} ORDER BY seq"))?;
        let mut rows = stmt.query([])?;
        let identities = layouts
            .iter()
            .map(|l| identity(self.conn, l))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut after_delete = false;
        while let Some(row) = rows.next()? {
            let (tno, what): (i64, u8) = (row.get(1)?, row.get(2)?);
            let Some(layout) = layouts.get(tno as usize) else {
                continue;
            };
            // A key's change is staged as the row deleted, then inserted
            // anew: the two stay in one part, where the undo sees them
            // side by side (see `revert`); so do a row deleted and the
            // row inserted right after it, which may be the same row
            // anew at the same key.
            if what != MOVED && !(what == op::INSERT && after_delete) {
                self.flush_part(step, &mut enc, false)?;
            }
            after_delete = what == op::DELETE;
            let identity = &identities[tno as usize];
            pack_staged_row(&mut enc, (layout, identity), what, row)?;
        }
        drop(rows);
        self.conn
            .execute_batch(&format!("DELETE FROM temp.{name}"))?;
        self.flush_part(step, &mut enc, true)
    }

    /// Writes the encoder's blob as the next part when it is big enough,
    /// or (`last`) when it holds anything.
    fn flush_part(&self, step: &Step, enc: &mut Encoder, last: bool) -> rusqlite::Result<()> {
        if enc.is_empty() || (!last && enc.len() < self.part_bytes) {
            return Ok(());
        }
        let rows = enc.entries();
        let blob = enc.finish();
        self.note_part(step, rows, &blob)
    }

    /// Notes the next recorded part of the step.
    fn note_part(&self, step: &Step, rows: u64, blob: &[u8]) -> rusqlite::Result<()> {
        self.note(step, rows, blob)?;
        self.chunk.set(self.chunk.get() + 1);
        Ok(())
    }

    /// Notes a recorded part: `rows` entries in `blob`; no blob: the step
    /// is not recorded.
    fn note(&self, step: &Step, rows: u64, blob: &[u8]) -> rusqlite::Result<()> {
        let chunk = match (blob.is_empty(), step.undo) {
            (false, _) => self.chunk.get(),
            (true, true) => NOTHING,
            (true, false) => UNRECORDED,
        };
        self.insert(step, chunk, rows, blob)
    }

    /// After a chunk's parts, in its transaction: the step's count of
    /// parts, so that its newest cannot go unseen (see [`PARTS`]). One
    /// small write a chunk, none for a chunk that added no part.
    fn count_parts(&self, step: &Step) -> rusqlite::Result<()> {
        let parts = self.chunk.get();
        let counted = self.count.get();
        if parts == 0 || counted.is_some_and(|(_, n)| n == parts) {
            return Ok(());
        }
        if let Some((id, _)) = counted {
            let updated = self
                .conn
                .prepare_cached("UPDATE batchsse_undo SET rows = ?1 WHERE id = ?2 AND chunk = ?3")?
                .execute(params![parts, id, PARTS])?;
            // Not updated: the chunk that made the row was rolled back.
            if updated == 1 {
                self.count.set(Some((id, parts)));
                return Ok(());
            }
        }
        self.insert(step, PARTS, parts as u64, &[])?;
        self.count.set(Some((self.conn.last_insert_rowid(), parts)));
        Ok(())
    }

    /// Writes a row of the record: part `chunk` (0, 1, 2…) of the step
    /// with its checksum, or a note of the step (`chunk` < 0), which holds
    /// neither record nor checksum.
    fn insert(&self, step: &Step, chunk: i64, rows: u64, blob: &[u8]) -> rusqlite::Result<()> {
        let part = chunk >= 0;
        let index = step.index as i64;
        let insert = || {
            self.conn
                .prepare_cached(
                    "INSERT INTO batchsse_undo (run, plan, step, name, chunk, rows, bytes, rec, rec_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    self.run_id,
                    self.plan,
                    index,
                    step.name,
                    chunk,
                    rows as i64,
                    blob.len() as i64,
                    part.then_some(blob),
                    part.then(|| store::checksum(index, chunk, blob)),
                ])
        };
        // `undo clear` drops the tables it empties, this run's records
        // too: they come back, in this part's transaction, with the run's
        // probe row, and the run goes on (its record, without its first
        // parts, is refused by an undo as incomplete; dropped before its
        // first part, it is whole, and a VACUUM must still be seen).
        let again = || {
            store::create(self.conn)?;
            store::probe(self.conn, &self.run_id)?;
            insert()
        };
        match insert() {
            Err(e) if store::is_missing(&e) => again(),
            done => done,
        }?;
        match part {
            true => {
                super::rebuilt::note(self.conn, &self.run_id, self.conn.last_insert_rowid(), blob)
            }
            false => Ok(()),
        }
    }
}

/// The main schema's version: changed by every change to the schema.
fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA main.schema_version", [], |r| r.get(0))
}

/// The read-around query of a table chunked by `key_sql`.
fn around_query(layout: &Layout, key_sql: &str) -> String {
    let cols: String = layout
        .columns
        .iter()
        .map(|c| format!(", {}", quote(c)))
        .collect();
    format!(
        "SELECT {k}{cols} FROM main.{t} WHERE {key_sql} BETWEEN ?1 AND ?2 ORDER BY {key_sql}",
        k = layout.key[0],
        t = quote(&layout.table)
    )
}

/// A chunk's rows by `read`, with `n` values each, rowids sorted, into
/// `out` (its buffers kept from chunk to chunk).
fn read_rows(
    conn: &Connection,
    read: &str,
    (lo, hi): (&Value, &Value),
    n: usize,
    out: &mut Rows,
) -> rusqlite::Result<()> {
    out.rowids.clear();
    out.bytes.clear();
    out.ends.clear();
    let mut stmt = conn.prepare_cached(read)?;
    let mut rows = stmt.query(params![lo, hi])?;
    while let Some(row) = rows.next()? {
        out.rowids.push(row.get(0)?);
        for j in 0..n {
            put_value(&mut out.bytes, row.get_ref(j + 1)?);
            out.ends.push(out.bytes.len());
        }
    }
    if !out.rowids.is_sorted() {
        // Chunked by another key: the hook's rowids are looked up.
        let n_rows = out.rowids.len();
        let mut order: Vec<usize> = (0..n_rows).collect();
        order.sort_by_key(|&i| out.rowids[i]);
        *out = reorder(out, &order, n);
    }
    Ok(())
}

/// `rows` in the order `order` gives.
fn reorder(rows: &Rows, order: &[usize], n: usize) -> Rows {
    let mut out = Rows::default();
    for &i in order {
        out.rowids.push(rows.rowids[i]);
        for j in 0..n {
            out.bytes.extend_from_slice(rows.value(n, i, j));
            out.ends.push(out.bytes.len());
        }
    }
    out
}

/// One staged row (`seq, tno, op, v1…`) into the record.
fn pack_staged_row(
    enc: &mut Encoder,
    (layout, identity): (&Layout, &[usize]),
    what: u8,
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<()> {
    let (p, n) = (layout.key.len(), layout.columns.len());
    let t = enc.table(layout);
    let encoded = |from: usize, count: usize| -> rusqlite::Result<Vec<Vec<u8>>> {
        (from..from + count)
            .map(|i| {
                let mut b = Vec::new();
                put_value(&mut b, row.get_ref(i)?);
                Ok(b)
            })
            .collect()
    };
    let key_bytes = encoded(3, p)?.concat();
    let key = if layout.int_key {
        KeyRef::Int(row.get(3)?)
    } else {
        KeyRef::Encoded(&key_bytes)
    };
    let values = encoded(3 + p, n)?;
    match what {
        op::INSERT => enc.insert(t, key, print(&values.concat())),
        MOVED => enc.moved(t, key, print(&values.concat())),
        op::DELETE => enc.delete(t, key, &values.concat()),
        _ => {
            let new = encoded(3 + p + n, n)?;
            let mut changed: Vec<usize> = (0..n).filter(|&j| values[j] != new[j]).collect();
            with_identity(&mut changed, identity);
            if !changed.is_empty() {
                let old: Vec<u8> = changed.iter().flat_map(|&j| values[j].clone()).collect();
                let new: Vec<u8> = changed.iter().flat_map(|&j| new[j].clone()).collect();
                enc.update(t, key, &mask_of(n, changed), &old, print(&new));
            }
        }
    }
    Ok(())
}

/// Whether `name` is one of the TEMP objects the record makes while a
/// step runs: the staging table ([`stage_name`]) and the triggers that
/// fill it ([`triggers`]). A TEMP-only step's digest leaves them out
/// (`run::setup`), and only them: a TEMP table of the user's named
/// `batchsse_todo` is the step's.
pub fn is_own_temp(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let numbered = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    name == "batchsse_stage"
        || name.strip_prefix("batchsse_stage_").is_some_and(numbered)
        || name
            .strip_prefix("batchsse_undo_")
            .and_then(|r| r.strip_prefix(['i', 'd', 'u', 'm']))
            .is_some_and(numbered)
}

/// A name for the TEMP staging table that no table or view of another
/// schema has: a TEMP table hides one of its name from the step's own SQL,
/// which would read or write the staging table instead.
fn stage_name(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare(
        "SELECT 1 FROM pragma_table_list WHERE schema <> 'temp' AND name = ?1 COLLATE NOCASE",
    )?;
    let mut name = "batchsse_stage".to_owned();
    for n in 2.. {
        if !stmt.exists([&name])? {
            break;
        }
        name = format!("batchsse_stage_{n}");
    }
    Ok(name)
}

/// A staged row's `op` for the row inserted at its new key after its key
/// changed (an [`op::INSERT`] the record marks as moved).
const MOVED: u8 = op::INSERT | 4;

/// The TEMP triggers that stage changes to one table (in TEMP table
/// `stage`): `n` is its `tno`. A changed key is the old row deleted and
/// the new one inserted.
fn triggers(n: usize, l: &Layout, stage: &str) -> String {
    let on = format!("ON main.{}", quote(&l.table));
    let row = |from: &str| -> Vec<String> {
        let keys = l.key.iter().map(|k| format!("{from}.{k}"));
        keys.chain(l.columns.iter().map(|c| format!("{from}.{}", quote(c))))
            .collect()
    };
    let stage = |what: u8, values: Vec<String>| {
        let names: String = (1..=values.len()).map(|i| format!(", v{i}")).collect();
        format!(
            "INSERT INTO temp.{stage}(tno, op{names}) VALUES ({n}, {what}, {});",
            values.join(", ")
        )
    };
    // Byte for byte, as the hook compares: `IS` alone takes the column's
    // collation (a NOCASE key changed only in case) and numbers of two
    // types (1 and 1.0) for the same key, and the change would be lost.
    let same_key: Vec<String> = l
        .key
        .iter()
        .map(|k| {
            format!("(OLD.{k} IS NEW.{k} COLLATE BINARY AND typeof(OLD.{k}) = typeof(NEW.{k}))")
        })
        .collect();
    let same_key = same_key.join(" AND ");
    let mut update = row("OLD");
    update.extend(l.columns.iter().map(|c| format!("NEW.{}", quote(c))));
    format!(
        "CREATE TEMP TRIGGER batchsse_undo_i{n} AFTER INSERT {on} BEGIN {ins} END;
         CREATE TEMP TRIGGER batchsse_undo_d{n} AFTER DELETE {on} BEGIN {del} END;
         CREATE TEMP TRIGGER batchsse_undo_u{n} AFTER UPDATE {on} WHEN {same_key} BEGIN {upd} END;
         CREATE TEMP TRIGGER batchsse_undo_m{n} AFTER UPDATE {on} WHEN NOT ({same_key}) BEGIN {del} {moved} END;",
        ins = stage(op::INSERT, row("NEW")),
        moved = stage(MOVED, row("NEW")),
        del = stage(op::DELETE, row("OLD")),
        upd = stage(op::UPDATE, update),
    )
}

/// Whether `name` is a view of `main`. SQLite's authorizer names a view a
/// step changes as written, but the rows are those its INSTEAD OF
/// triggers write, in tables of their own, which are staged.
fn is_view(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'view' AND name = ?1 COLLATE NOCASE)",
        [name],
        |r| r.get(0),
    )
    .unwrap_or(false)
}
