//! Putting one chunk's record back in one statement.
//! A range `UPDATE` over the chunk's keys asks, in its `WHERE`, row by row,
//! whether the record has the row and finds it as the run left it, and
//! gives each restored column its old value in its `SET`: two SQL
//! functions of this connection that read the record where it lies, in its
//! blob. The rows an `INSERT` chunk added go the same way, by a range
//! `DELETE` that asks the same question; the rows a `DELETE` chunk removed
//! come back by one `INSERT … SELECT` over `generate_series`, a row per
//! entry. The rows are read and written in one pass, in key order, as the
//! run wrote them, instead of a query and a statement per row.
//!
//! The caller decides what a verdict means (conflicts, messages); a part
//! the statement cannot take (a constraint it trips part-way) is left to
//! the row-by-row way, the statement's writes backed out by `OR ABORT`.

use std::cell::RefCell;
use std::ffi::{CString, c_int, c_void};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, ffi, params_from_iter};

use super::codec::{Damaged, Indexed, op, print, put_sorted, put_value, value_at};
use super::raw::{put_raw, set_result, value_ref};
use crate::plan::quote;

const PICK: &str = "batchsse_undo_pick";
const OLD: &str = "batchsse_undo_old";
const GONE: &str = "batchsse_undo_gone";
const VALUE: &str = "batchsse_undo_value";
const SAME: &str = "batchsse_undo_same";
/// `KEY(n)`: integer key `n` encoded as the undo's table of saved rows
/// holds it (see `stash` and [`put_sorted`]); `KEY(n, 1)`: as builds
/// before that wrote it (the record's encoding).
pub const KEY: &str = "batchsse_undo_key";
/// `ROW(a, b, …)`: its arguments' values encoded one after the other, as
/// the undo's table of saved rows holds a row (see `stash`).
pub const ROW: &str = "batchsse_undo_row";

/// A statement and what it binds, from `?1` on.
pub type Aside = (String, Vec<Value>);

/// Statements a part's statement needs beside it, with the functions at
/// hand (they may call [`Job::pick_sql`]'s, and see the job's verdicts):
/// the rows it deletes saved before it, the saved rows it makes needless
/// removed after it (see `stash`). All or none of them stay, with it.
#[derive(Default)]
pub struct Around {
    pub before: Vec<Aside>,
    pub after: Vec<Aside>,
}

/// What became of an entry.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Verdict {
    /// Its row never came: it is gone.
    Unseen,
    /// Put back (as the run left it, or overwritten).
    Put,
    /// Kept by an earlier conflict of this undo.
    Held,
    /// Kept as the application has it (see [`Job::now`]).
    Kept,
    /// Put back over what the application wrote since (`overwrite`; its
    /// values then, in [`Job::now`]).
    Overwrote,
}

/// One part being put back.
pub struct Job {
    pub blob: Vec<u8>,
    pub part: Indexed,
    /// The columns the statement writes (layout indices), rising.
    union: Vec<usize>,
    /// Per written column: whether every entry restores it.
    every: Vec<bool>,
    /// Per entry; those an earlier conflict keeps start as held.
    pub verdicts: Vec<Verdict>,
    /// For each entry kept: its restored columns' current encodings.
    pub now: std::collections::HashMap<usize, Vec<u8>>,
    overwrite: bool,
    /// Where the two functions found their last entry.
    at: [usize; 2],
    /// Where the last value `OLD` gave ended: entry, its next value's
    /// place among the entry's, and offset in the blob.
    next: (usize, usize, usize),
    /// The last mask the functions met, and for each written column its
    /// place among that mask's columns (`None`: the mask lacks it). Masks
    /// change seldom within a part (a chunk's rows share one): found once,
    /// not by a search per value.
    places: (usize, Vec<Option<usize>>),
    buf: Vec<u8>,
    /// The written columns (places in `union`) of the primary key of a
    /// table found by its bare rowid, which the run records with each
    /// update whether it changed them or not (see `shape::identity`), and
    /// of those the ones left out of the `SET`: no row of the part needs
    /// them written, and writing a key column rewrites its index.
    identity: Vec<usize>,
    as_is: Vec<usize>,
    /// What runs beside the statement (see [`Around`]).
    around: Around,
    /// [`KEY`]'s and [`ROW`]'s encodings, made anew at each call.
    encoded: Vec<u8>,
}

impl Job {
    pub fn new(blob: Vec<u8>, part: Indexed, held: Vec<bool>, overwrite: bool) -> Job {
        let mut union: Vec<usize> = part.masks.iter().flatten().copied().collect();
        union.sort_unstable();
        union.dedup();
        // Counted, not tabled per mask: a part's masks may be as many as
        // its entries, and a table of masks by columns would grow as both.
        let mut holding = vec![0usize; union.len()];
        for c in part.masks.iter().flatten() {
            if let Ok(u) = union.binary_search(c) {
                holding[u] += 1;
            }
        }
        let every = holding.iter().map(|&n| n == part.masks.len()).collect();
        // A held row is held whether or not it is still there: one that
        // is gone must not be reported again as gone.
        let verdicts = (0..part.entries.len())
            .map(|i| match held.get(i) {
                Some(true) => Verdict::Held,
                _ => Verdict::Unseen,
            })
            .collect();
        Job {
            verdicts,
            now: Default::default(),
            blob,
            part,
            union,
            every,
            overwrite,
            at: [0; 2],
            next: (usize::MAX, 0, 0),
            places: (usize::MAX, Vec::new()),
            buf: Vec::new(),
            identity: Vec::new(),
            as_is: Vec::new(),
            around: Around::default(),
            encoded: Vec::new(),
        }
    }

    /// Gives the job statements to run beside its own (see [`Around`]).
    pub fn around(mut self, around: Around) -> Job {
        self.around = around;
        self
    }

    /// `PICK`'s call over the part's table: whether a row is put back
    /// (true for a row the statement writes, the verdicts set).
    pub fn pick_sql(&self) -> String {
        let l = &self.part.layout;
        let cols: Vec<String> = self.union.iter().map(|&c| quote(&l.columns[c])).collect();
        format!("{PICK}({}{})", l.key[0], listed(&cols))
    }

    /// Tells the job which of the layout's columns are the `identity`
    /// of its table (see [`Job::identity`]).
    pub fn identity(mut self, columns: &[usize]) -> Job {
        self.identity = (0..self.union.len())
            .filter(|&u| columns.contains(&self.union[u]))
            .collect();
        self
    }

    /// The statement: for an update's part an `UPDATE`, for an insert's a
    /// `DELETE` (`?1`, `?2` the part's lowest and highest keys), for a
    /// delete's an `INSERT` (see [`Job::reinsert`]).
    fn statement(&self) -> String {
        let l = &self.part.layout;
        let k = &l.key[0];
        let cols: Vec<String> = self.union.iter().map(|&c| quote(&l.columns[c])).collect();
        // A column every entry restores needs no current value.
        let set: Vec<String> = cols
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.as_is.contains(i))
            .map(|(i, c)| match self.every[i] {
                true => format!("{c} = {OLD}({k}, {i})"),
                false => format!("{c} = {OLD}({k}, {i}, {c})"),
            })
            .collect();
        // A table of nothing but its key writes no column: no comma then.
        let (t, pick) = (quote(&l.table), self.pick_sql());
        let range = format!("{k} BETWEEN ?1 AND ?2 AND {pick}");
        match self.part.op {
            op::INSERT => return format!("DELETE FROM main.{t} WHERE {range}"),
            op::DELETE => return self.reinsert(&t, k, &cols),
            _ => {}
        }
        format!(
            "UPDATE OR ABORT main.{t} SET {} WHERE {range}",
            set.join(", ")
        )
    }

    /// For a delete's part: the rows back, the `i`th entry's from row `i`
    /// of a counting query (`?1` the last entry's place), but for rows held
    /// by an earlier conflict. A key used again since trips the insert's
    /// constraint: the part then goes row by row, which reports it.
    fn reinsert(&self, t: &str, k: &str, cols: &[String]) -> String {
        let values: Vec<String> = (0..cols.len())
            .map(|n| format!("{VALUE}(i, {n})"))
            .collect();
        format!(
            "INSERT OR ABORT INTO main.{t}({k}{}) SELECT {VALUE}(i, -1){} \
             FROM (SELECT value AS i FROM generate_series(0, ?1)) \
             WHERE {GONE}(i)",
            listed(cols),
            listed(&values)
        )
    }

    /// `GONE(i)`: whether to put back the `i`th entry's row (not when an
    /// earlier conflict holds it).
    fn gone(&mut self, args: &[*mut ffi::sqlite3_value]) -> Result<bool, String> {
        let i = self.entry(int_arg(args, 0)?)?;
        if self.verdicts[i] != Verdict::Held {
            self.verdicts[i] = Verdict::Put;
        }
        Ok(self.verdicts[i] == Verdict::Put)
    }

    /// `VALUE(i, n)`: the `i`th entry's key (`n` = -1) or `n`th value.
    fn entry_value(
        &mut self,
        ctx: *mut ffi::sqlite3_context,
        args: &[*mut ffi::sqlite3_value],
    ) -> Result<(), String> {
        let (i, n) = (self.entry(int_arg(args, 0)?)?, int_arg(args, 1)?);
        let v = match usize::try_from(n) {
            Err(_) => ValueRef::Integer(self.part.entries[i].key),
            Ok(n) => self.value(i, n).map_err(|e| e.to_string())?,
        };
        // SAFETY: ctx belongs to the call in progress.
        unsafe { set_result(ctx, v) }
    }

    /// `KEY(n[, earlier])`: see [`KEY`].
    fn key(
        &mut self,
        ctx: *mut ffi::sqlite3_context,
        args: &[*mut ffi::sqlite3_value],
    ) -> Result<(), String> {
        self.encoded.clear();
        let put = match args.len() {
            1 => put_sorted,
            _ => put_value,
        };
        put(&mut self.encoded, ValueRef::Integer(int_arg(args, 0)?));
        // SAFETY: ctx belongs to the call in progress.
        unsafe { set_result(ctx, ValueRef::Blob(&self.encoded)) }
    }

    /// `ROW(a, b, …)`: see [`ROW`].
    fn row(
        &mut self,
        ctx: *mut ffi::sqlite3_context,
        args: &[*mut ffi::sqlite3_value],
    ) -> Result<(), String> {
        self.encoded.clear();
        for &v in args {
            // SAFETY: an argument of the call in progress.
            unsafe { put_raw(&mut self.encoded, v) };
        }
        // SAFETY: ctx belongs to the call in progress.
        unsafe { set_result(ctx, ValueRef::Blob(&self.encoded)) }
    }

    /// Entry number `i` as a function's argument gave it, if there is one.
    fn entry(&self, i: i64) -> Result<usize, String> {
        usize::try_from(i)
            .ok()
            .filter(|&i| i < self.part.entries.len())
            .ok_or_else(|| "no such entry".to_owned())
    }

    /// The entry of the row keyed `key`, looked for from where function
    /// `f` found its last one (rows come in key order).
    fn find(&mut self, f: usize, key: i64) -> Option<usize> {
        let es = &self.part.entries;
        let at = self.at[f];
        let i = if es.get(at).is_some_and(|e| e.key == key) {
            at
        } else if es.get(at + 1).is_some_and(|e| e.key == key) {
            at + 1
        } else {
            let i = es.partition_point(|e| e.key < key);
            es.get(i).filter(|e| e.key == key)?;
            i
        };
        self.at[f] = i;
        Some(i)
    }

    /// `PICK(key, the written columns' current values…)`: whether to put
    /// the row back.
    fn pick(&mut self, args: &[*mut ffi::sqlite3_value]) -> Result<bool, String> {
        let Some(i) = self.find(0, int_arg(args, 0)?) else {
            return Ok(false); // a row the run did not change
        };
        if self.verdicts[i] == Verdict::Held {
            return Ok(false);
        }
        let (mask, print_then) = (
            self.part.entries[i].mask as usize,
            self.part.entries[i].print,
        );
        self.places(mask);
        self.buf.clear();
        // Both lists rise: the written columns the mask has come in its
        // order, as the run encoded them.
        for (u, place) in self.places.1.iter().enumerate() {
            if place.is_some() {
                let v = *args.get(u + 1).ok_or("too few arguments")?;
                // SAFETY: an argument of the call in progress.
                unsafe { put_raw(&mut self.buf, v) };
            }
        }
        if print(&self.buf) == print_then {
            self.verdicts[i] = Verdict::Put;
            return Ok(true);
        }
        self.now.insert(i, self.buf.clone());
        self.verdicts[i] = match self.overwrite {
            true => Verdict::Overwrote,
            false => Verdict::Kept,
        };
        Ok(self.overwrite)
    }

    /// `OLD(key, n[, current])`: the `n`th written column's value to put
    /// back (its current one when the entry does not restore it).
    fn old(
        &mut self,
        ctx: *mut ffi::sqlite3_context,
        args: &[*mut ffi::sqlite3_value],
    ) -> Result<(), String> {
        let (key, n) = (int_arg(args, 0)?, int_arg(args, 1)?);
        let slot = self.find(1, key).and_then(|i| {
            self.places(self.part.entries[i].mask as usize);
            let place = *self.places.1.get(usize::try_from(n).ok()?)?;
            Some(i).zip(place)
        });
        // SAFETY: ctx and the argument belong to the call in progress.
        unsafe {
            match slot {
                Some((i, s)) => {
                    let v = self.value(i, s).map_err(|e| e.to_string())?;
                    set_result(ctx, v)
                }
                None => {
                    let current = *args.get(2).ok_or("a value the record lacks")?;
                    set_result(ctx, value_ref(current))
                }
            }
        }
    }

    /// `SAME(key, n, current)`: whether the row keyed `key` needs no
    /// write of the `n`th written column: its entry does not restore it,
    /// or restores exactly the value it holds (the same encoding: the
    /// same storage class and bytes, whatever the column's collation).
    fn same(&mut self, args: &[*mut ffi::sqlite3_value]) -> Result<bool, String> {
        let (key, n) = (int_arg(args, 0)?, int_arg(args, 1)?);
        let slot = self.find(1, key).and_then(|i| {
            self.places(self.part.entries[i].mask as usize);
            let place = *self.places.1.get(usize::try_from(n).ok()?)?;
            Some(i).zip(place)
        });
        let Some((i, place)) = slot else {
            return Ok(true);
        };
        let current = *args.get(2).ok_or("too few arguments")?;
        let mut now = std::mem::take(&mut self.buf);
        now.clear();
        // SAFETY: an argument of the call in progress.
        unsafe { put_raw(&mut now, current) };
        let mut then = Vec::new();
        super::codec::put_value(&mut then, self.value(i, place).map_err(|e| e.to_string())?);
        let same = then == now;
        self.buf = now;
        Ok(same)
    }

    /// For each identity column, a read of the part's rows that says
    /// whether any of them needs it written (see [`Bulk::leave_as_is`]).
    fn as_is_queries(&self) -> Vec<(usize, String)> {
        let l = &self.part.layout;
        let (t, k) = (quote(&l.table), &l.key[0]);
        self.identity
            .iter()
            .map(|&u| {
                let c = quote(&l.columns[self.union[u]]);
                let sql = format!(
                    "SELECT EXISTS (SELECT 1 FROM main.{t} WHERE {k} BETWEEN ?1 AND ?2 AND NOT {SAME}({k}, {u}, {c}))"
                );
                (u, sql)
            })
            .collect()
    }

    /// Makes [`Job::places`] mask `mask`'s.
    fn places(&mut self, mask: usize) {
        if self.places.0 != mask {
            let m = &self.part.masks[mask];
            let (at, places) = &mut self.places;
            places.clear();
            places.extend(self.union.iter().map(|c| m.binary_search(c).ok()));
            *at = mask;
        }
    }

    /// Entry `i`'s `s`th old value, read on from the last one when it was
    /// the one before.
    // Inlined, with the decoding it calls: a value handed back through
    // memory and read at once stalled `OLD` (its call was about 3% of an
    // undo of a numeric column).
    #[inline(always)]
    fn value(&mut self, i: usize, s: usize) -> Result<ValueRef<'_>, Damaged> {
        let mut at = match self.next {
            (e, next, at) if e == i && next == s => at,
            _ => {
                let mut at = self.part.entries[i].at();
                for _ in 0..s {
                    at = value_at(&self.blob, at)?.1;
                }
                at
            }
        };
        let v;
        (v, at) = value_at(&self.blob, at)?;
        self.next = (i, s + 1, at);
        Ok(v)
    }

    /// Rows the statement should have written.
    pub fn puts(&self) -> usize {
        let put = |v: &&Verdict| matches!(v, Verdict::Put | Verdict::Overwrote);
        self.verdicts.iter().filter(put).count()
    }
}

/// An integer argument (the rowid, a column's place: never anything else).
fn int_arg(args: &[*mut ffi::sqlite3_value], i: usize) -> Result<i64, String> {
    let v = *args.get(i).ok_or("too few arguments")?;
    // SAFETY: an argument of the call in progress.
    Ok(unsafe { ffi::sqlite3_value_int64(v) })
}

type Slot = RefCell<Option<Job>>;

/// The two functions, registered on a connection while this lives.
pub struct Bulk {
    db: *mut ffi::sqlite3,
    job: Box<Slot>,
    /// `generate_series` is there, which a delete's part counts with.
    pub series: bool,
}

impl Bulk {
    /// `None`: SQLite would not take the functions.
    pub fn new(conn: &Connection) -> Option<Bulk> {
        // SAFETY: the handle is the open connection's, which outlives this
        // value (it belongs to the undo that owns both).
        let db = unsafe { conn.handle() };
        let bulk = Bulk {
            db,
            job: Box::new(RefCell::new(None)),
            series: rusqlite::vtab::series::load_module(conn).is_ok() && !shadowed(conn),
        };
        let ok = FUNCTIONS
            .iter()
            .all(|&(name, args, f)| bulk.register(name, args, Some(f)));
        ok.then_some(bulk)
    }

    /// Registers function `name` (or, with `None`, removes it).
    fn register(&self, name: &str, args: c_int, f: Option<Call>) -> bool {
        let Ok(name) = CString::new(name) else {
            return false;
        };
        let app = &*self.job as *const Slot as *mut c_void;
        // DIRECTONLY: no trigger or view of the file may call them.
        let flags = ffi::SQLITE_UTF8 | ffi::SQLITE_DIRECTONLY;
        // SAFETY: `app` lives as long as the registration (see Drop).
        let rc = unsafe {
            ffi::sqlite3_create_function_v2(
                self.db,
                name.as_ptr(),
                args,
                flags,
                app,
                f,
                None,
                None,
                None,
            )
        };
        rc == ffi::SQLITE_OK
    }

    /// Whether `job`'s statement can be made: `PICK` takes the key and
    /// every written column, and SQLite caps a function's arguments.
    pub fn fits(&self, job: &Job) -> bool {
        // SAFETY: the open connection's handle (see `new`); -1 only reads.
        let most = unsafe { ffi::sqlite3_limit(self.db, ffi::SQLITE_LIMIT_FUNCTION_ARG, -1) };
        usize::try_from(most).is_ok_and(|most| job.union.len() < most)
    }

    /// Runs `job`'s statement; gives the job back with the rows the
    /// statement changed.
    pub fn run(&self, conn: &Connection, mut job: Job) -> (Job, rusqlite::Result<usize>) {
        let sql = job.statement();
        let around = std::mem::take(&mut job.around);
        let (lo, hi) = match (job.part.entries.first(), job.part.entries.last()) {
            (Some(lo), Some(hi)) => (lo.key, hi.key),
            _ => return (job, Ok(0)),
        };
        let last = job.part.entries.len() as i64 - 1;
        let delete = job.part.op == op::DELETE;
        let ask = job.part.op == op::UPDATE && !job.identity.is_empty();
        *self.job.borrow_mut() = Some(job);
        let asked = match ask {
            true => self.leave_as_is(conn, (lo, hi)),
            false => Ok(()),
        };
        let sql = match &asked {
            Ok(()) if ask => self
                .job
                .borrow()
                .as_ref()
                .map(Job::statement)
                .unwrap_or(sql),
            _ => sql,
        };
        // Not cached: no statement that names the functions outlives them.
        let done = asked.and_then(|()| {
            beside(conn, &around, || {
                let mut s = conn.prepare(&sql)?;
                match delete {
                    true => s.execute([last]),
                    false => s.execute([lo, hi]),
                }
            })
        });
        let job = self.job.borrow_mut().take().expect("the job put in above");
        (job, done)
    }
}

/// Runs `main` with `around`'s statements before and after it, all in a
/// savepoint that backs them all out if one fails (`main` failing on a
/// constraint sends the part row by row, which must find nothing saved
/// by the statements before).
fn beside(
    conn: &Connection,
    around: &Around,
    main: impl FnOnce() -> rusqlite::Result<usize>,
) -> rusqlite::Result<usize> {
    if around.before.is_empty() && around.after.is_empty() {
        return main();
    }
    let each = |asides: &[Aside]| {
        asides.iter().try_for_each(|(sql, args)| {
            conn.prepare(sql)?.execute(params_from_iter(args)).map(drop)
        })
    };
    conn.execute_batch("SAVEPOINT batchsse_undo_beside")?;
    let done = each(&around.before)
        .and_then(|()| main())
        .and_then(|n| each(&around.after).map(|()| n));
    let end = match done {
        Ok(_) => "RELEASE batchsse_undo_beside",
        Err(_) => "ROLLBACK TO batchsse_undo_beside; RELEASE batchsse_undo_beside",
    };
    // A failure that ended the transaction took the savepoint with it:
    // the first error is the one to tell.
    let ended = conn.execute_batch(end);
    let n = done?;
    ended.map(|()| n)
}

impl Bulk {
    /// Leaves out of the job's `SET` the identity columns no row of its
    /// part needs written, asking each with one read of the part's rows,
    /// which calls back into the job (in its slot) through `SAME`.
    fn leave_as_is(&self, conn: &Connection, range: (i64, i64)) -> rusqlite::Result<()> {
        let sqls = self.job.borrow().as_ref().map(Job::as_is_queries);
        let mut as_is = Vec::new();
        for (u, sql) in sqls.unwrap_or_default() {
            let differs: bool = conn.query_row(&sql, [range.0, range.1], |r| r.get(0))?;
            if !differs {
                as_is.push(u);
            }
        }
        if let Some(job) = self.job.borrow_mut().as_mut() {
            job.as_is = as_is;
            job.at = [0; 2];
            job.next = (usize::MAX, 0, 0);
        }
        Ok(())
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        let mut gone = true;
        for (name, args, _) in FUNCTIONS {
            gone &= self.register(name, args, None);
        }
        if !gone {
            // SQLite keeps a function while any statement runs: the slot it
            // points to must then outlive this value (a few bytes, leaked).
            let slot = std::mem::replace(&mut self.job, Box::new(RefCell::new(None)));
            *slot.borrow_mut() = None;
            Box::leak(slot);
        }
    }
}

/// `items` to follow a first item in a list: `, a, b`, or nothing.
fn listed(items: &[String]) -> String {
    items.iter().map(|i| format!(", {i}")).collect()
}

/// Each function's name, argument count (-1: any) and entry point.
const FUNCTIONS: [(&str, c_int, Call); 8] = [
    (PICK, -1, pick_fn),
    (OLD, -1, old_fn),
    (GONE, 1, gone_fn),
    (VALUE, 2, value_fn),
    (SAME, 3, same_fn),
    (KEY, 1, key_fn),
    (KEY, 2, key_fn),
    (ROW, -1, row_fn),
];

/// Whether the file has a table or view of its own named
/// `generate_series`, which the name would then mean.
fn shadowed(conn: &Connection) -> bool {
    let sql = "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE name = 'generate_series' COLLATE NOCASE)
                   OR EXISTS (SELECT 1 FROM temp.sqlite_schema WHERE name = 'generate_series' COLLATE NOCASE)";
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(true)
}

type Call = unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, *mut *mut ffi::sqlite3_value);

unsafe extern "C" fn pick_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's own call.
    unsafe { answer(ctx, argc, argv, Job::pick) }
}

unsafe extern "C" fn same_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's own call.
    unsafe { answer(ctx, argc, argv, Job::same) }
}

unsafe extern "C" fn gone_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's own call.
    unsafe { answer(ctx, argc, argv, Job::gone) }
}

/// A yes-or-no function: `f`'s answer as 1 or 0.
///
/// # Safety
/// As for [`with_job`].
unsafe fn answer(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
    f: fn(&mut Job, &[*mut ffi::sqlite3_value]) -> Result<bool, String>,
) {
    // SAFETY: the caller's promise.
    unsafe {
        with_job(ctx, argc, argv, |job, args| {
            let yes = f(job, args)?;
            ffi::sqlite3_result_int(ctx, c_int::from(yes));
            Ok(())
        })
    }
}

unsafe extern "C" fn value_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's own call.
    unsafe { with_job(ctx, argc, argv, |job, args| job.entry_value(ctx, args)) }
}

unsafe extern "C" fn key_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's own call.
    unsafe { with_job(ctx, argc, argv, |job, args| job.key(ctx, args)) }
}

unsafe extern "C" fn row_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's own call.
    unsafe { with_job(ctx, argc, argv, |job, args| job.row(ctx, args)) }
}

unsafe extern "C" fn old_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's own call.
    unsafe { with_job(ctx, argc, argv, |job, args| job.old(ctx, args)) }
}

/// Runs `f` on the job in progress; its error becomes the call's.
///
/// # Safety
/// The arguments must be SQLite's, for a call of one of [`Bulk`]'s
/// functions.
unsafe fn with_job(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
    f: impl FnOnce(&mut Job, &[*mut ffi::sqlite3_value]) -> Result<(), String>,
) {
    // SAFETY: the user data is the slot `Bulk::register` gave, alive while
    // the functions are registered; argv holds argc values.
    unsafe {
        let slot = &*(ffi::sqlite3_user_data(ctx) as *const Slot);
        let args = match usize::try_from(argc) {
            Ok(n) if n > 0 && !argv.is_null() => std::slice::from_raw_parts(argv, n),
            _ => &[],
        };
        let done = match slot.try_borrow_mut().as_deref_mut() {
            Ok(Some(job)) => f(job, args),
            _ => Err("called outside an undo".into()),
        };
        if let Err(why) = done {
            let why = CString::new(why).unwrap_or_default();
            ffi::sqlite3_result_error(ctx, why.as_ptr(), -1);
        }
    }
}
