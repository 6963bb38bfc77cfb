//! Recording through SQLite's pre-update hook: SQLite hands over each
//! changed row's old and new values as it changes it (the step's own
//! writes, its triggers', its foreign-key actions', and the rows REPLACE
//! deletes), so the record costs no extra query at all. The hook belongs
//! to the batch's connection: the application's writes are never seen.
//!
//! It exists only in builds whose bundled SQLite was compiled with
//! `SQLITE_ENABLE_PREUPDATE_HOOK` (the repository's `.cargo/config.toml`
//! sets it; `build.rs` turns on `cfg(batchsse_preupdate)` when it is set).
//! The declarations come with rusqlite's bundled bindings, so no bindgen
//! (and no libclang) is needed.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_char, c_int, c_void};

use rusqlite::Connection;
use rusqlite::ffi;
use rusqlite::types::ValueRef;

use super::codec::{Encoder, KeyRef, Layout, print, put_value};
use super::guard::Guard;
use super::raw::{put_raw, value_ref};
use super::spill::{Parts, TEMP_VAR};

/// One table the hook records, with where its columns are in SQLite's
/// column order.
struct Watched {
    layout: Layout,
    /// The key columns' positions; `None`: the key is the rowid.
    key: Option<Vec<c_int>>,
    columns: Vec<c_int>,
    /// The columns (indices into `columns`) an update may change: those
    /// the step may update, or all of them.
    updated: Vec<usize>,
    /// The columns (indices into `columns`) of the primary key a table
    /// found by its bare rowid declares, recorded with each update (see
    /// [`super::shape::identity`]).
    identity: Vec<usize>,
    /// The table's index in the encoder, once it has one.
    index: Option<usize>,
}

struct State {
    on: bool,
    tables: Vec<Watched>,
    enc: Encoder,
    parts: Parts,
    /// Why the record is incomplete (a table it cannot key, a value
    /// SQLite would not give).
    broken: Option<String>,
    part_bytes: usize,
    scratch: Scratch,
    /// The last change's schema and table name pointers, and its table.
    last: Option<(*const c_char, *const c_char, Found)>,
    /// What the step's statements update as SQLite compiled them, which
    /// widens `updated` (see [`Guard`]).
    guard: Option<Guard>,
}

/// Buffers reused from row to row.
#[derive(Default)]
struct Scratch {
    old: Vec<u8>,
    new: Vec<u8>,
    mask: Vec<u8>,
}

/// What the hook and its owner share.
struct Shared {
    state: RefCell<State>,
    /// A change came while the state was in use (never expected): the
    /// record would miss it, so the chunk fails instead.
    missed: Cell<bool>,
}

/// The hook, installed on the batch's connection for the run.
pub struct PreHook {
    db: *mut ffi::sqlite3,
    shared: Box<Shared>,
}

impl PreHook {
    /// Installs the hook on `conn`, which must outlive it; recording is
    /// off until [`PreHook::arm`]. Parts are cut at `part_bytes`; a
    /// statement's parts past `held_bytes` wait in a temporary file.
    pub fn install(conn: &Connection, part_bytes: usize, held_bytes: usize) -> PreHook {
        let shared = Box::new(Shared {
            state: RefCell::new(State {
                on: false,
                tables: Vec::new(),
                enc: Encoder::new(false),
                parts: Parts::new(held_bytes),
                broken: None,
                part_bytes,
                scratch: Scratch::default(),
                last: None,
                guard: None,
            }),
            missed: Cell::new(false),
        });
        // SAFETY: the handle is the open connection's; the state lives in
        // a box owned by the returned value, which removes the hook when
        // dropped, before the box goes.
        let db = unsafe { conn.handle() };
        let ctx = &*shared as *const Shared as *mut c_void;
        unsafe { ffi::sqlite3_preupdate_hook(db, Some(on_change), ctx) };
        PreHook { db, shared }
    }

    /// Records changes to `layouts` (all of the main database's tables the
    /// record can key, with their columns' positions from `conn`) until
    /// [`PreHook::disarm`]. `updates`: the (table, column) pairs the step
    /// may update, when known; an update reads only those, and those the
    /// `guard` sees compiled.
    pub fn arm(
        &self,
        conn: &Connection,
        layouts: Vec<Layout>,
        updates: Option<&[(String, String)]>,
        guard: Option<&Guard>,
    ) -> rusqlite::Result<()> {
        let mut tables = Vec::new();
        for layout in layouts {
            let updated = (0..layout.columns.len())
                .filter(|&j| {
                    updates.is_none_or(|u| {
                        u.iter().any(|(t, c)| {
                            t.eq_ignore_ascii_case(&layout.table)
                                && c.eq_ignore_ascii_case(&layout.columns[j])
                        })
                    })
                })
                .collect();
            let cids = column_ids(conn, &layout.table)?;
            let at = |name: &str| cids.iter().find(|c| c.0 == name).map(|c| c.1);
            let key = if layout.int_key {
                None
            } else {
                Some(
                    layout
                        .key
                        .iter()
                        .map(|k| at(&unquote(k)).unwrap_or(-1))
                        .collect(),
                )
            };
            let columns = layout.columns.iter().map(|c| at(c).unwrap_or(-1)).collect();
            tables.push(Watched {
                identity: super::shape::identity(conn, &layout)?,
                layout,
                key,
                columns,
                updated,
                index: None,
            });
        }
        let mut s = self.shared.state.borrow_mut();
        s.tables = tables;
        s.last = None;
        s.enc = Encoder::new(false);
        s.parts.take();
        s.broken = None;
        s.guard = guard.cloned();
        if let Some(g) = guard {
            g.fresh();
            widen(&mut s.tables, g);
        }
        s.on = true;
        Ok(())
    }

    /// Whether any of `layouts` is a table the hook was not armed with
    /// (one made since).
    pub fn lacks_any(&self, layouts: &[Layout]) -> bool {
        let s = self.shared.state.borrow();
        let known = |l: &Layout| s.tables.iter().any(|w| w.layout.table == l.table);
        !layouts.iter().all(known)
    }

    pub fn disarm(&self) {
        let mut s = self.shared.state.borrow_mut();
        s.on = false;
        s.last = None;
        s.tables.clear();
    }

    /// Forgets what was recorded since the last [`PreHook::take`] (work
    /// that failed and is rolled back).
    pub fn discard(&self) {
        self.shared.missed.set(false);
        let mut s = self.shared.state.borrow_mut();
        // SQLite may reuse a name's memory after a schema change.
        s.last = None;
        let _ = s.enc.finish();
        s.parts.take();
        s.broken = None;
    }

    /// What was recorded since the last call, as parts; an error when the
    /// record is incomplete.
    pub fn take(&self) -> Result<Parts, String> {
        let mut s = self.shared.state.borrow_mut();
        if self.shared.missed.replace(false) {
            s.broken = Some("a change came while the record was busy".into());
        }
        if let Some(why) = s.broken.take() {
            let _ = s.enc.finish();
            s.parts.take();
            return Err(why);
        }
        if !s.enc.is_empty() {
            let rows = s.enc.entries();
            let blob = s.enc.finish();
            if let Err(e) = s.parts.push((rows, blob)) {
                s.parts.take();
                return Err(spill_failed(e));
            }
        }
        Ok(s.parts.take())
    }
}

impl Drop for PreHook {
    fn drop(&mut self) {
        // SAFETY: removes this hook from the connection it was put on.
        unsafe { ffi::sqlite3_preupdate_hook(self.db, None, std::ptr::null_mut()) };
    }
}

/// Ends the part under way: the next change begins another.
fn cut(s: &mut State) -> Result<(), String> {
    let rows = s.enc.entries();
    let blob = s.enc.finish();
    s.parts.push((rows, blob)).map_err(spill_failed)
}

/// Why the record is incomplete when a part could not be put aside.
fn spill_failed(e: std::io::Error) -> String {
    format!(
        "could not write the undo record to a temporary file ({e}); \
         give the step a chunk, or point {TEMP_VAR} at a folder with room"
    )
}

/// A column's name without the quotes a layout's key may have.
fn unquote(k: &str) -> String {
    match k.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => k.to_owned(),
    }
}

/// Every column's position in the table, as the hook counts them.
fn column_ids(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, c_int)>> {
    conn.prepare("SELECT name, cid FROM pragma_table_xinfo(?1)")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// SQLite calls this before it changes a row.
unsafe extern "C" fn on_change(
    ctx: *mut c_void,
    db: *mut ffi::sqlite3,
    op: c_int,
    z_db: *const c_char,
    z_name: *const c_char,
    key1: ffi::sqlite3_int64,
    key2: ffi::sqlite3_int64,
) {
    // SAFETY: ctx is the state `install` gave, alive while the hook is on.
    let shared = unsafe { &*(ctx as *const Shared) };
    let Ok(mut s) = shared.state.try_borrow_mut() else {
        shared.missed.set(true);
        return;
    };
    if !s.on || z_db.is_null() || z_name.is_null() {
        return;
    }
    // One atomic load a row while nothing new was compiled.
    let st = &mut *s;
    if let Some(g) = st.guard.as_ref().filter(|g| g.fresh()) {
        widen(&mut st.tables, g);
    }
    // SQLite passes the same name pointers for every row of a table.
    let found = match s.last {
        Some((db_at, name_at, ref t)) if db_at == z_db && name_at == z_name => t.clone(),
        _ => {
            let found = find(&s.tables, z_db, z_name);
            s.last = Some((z_db, z_name, found.clone()));
            found
        }
    };
    let t = match found {
        Found::Table(t) => t,
        Found::Ignored => return,
        Found::Unknown(name) => {
            s.broken = Some(format!(
                "the step changed {}, which the undo record cannot key",
                crate::human::shown(&name)
            ));
            return;
        }
    };
    let change = Change {
        db,
        op,
        keys: (key1, key2),
    };
    if let Err(why) = change.record(&mut s, t) {
        s.broken = Some(why);
    }
}

/// Adds to each table's `updated` the columns `guard` saw compiled
/// updates of: a trigger the check before the run never saw may update
/// them.
fn widen(tables: &mut [Watched], guard: &Guard) {
    let w = guard.lock();
    for (table, column) in &w.updates {
        let Some(t) = tables
            .iter_mut()
            .find(|t| t.layout.table.eq_ignore_ascii_case(table))
        else {
            continue; // unknown: its change breaks the record, said then
        };
        let at = t
            .layout
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column));
        // Kept in column order: the record's values follow it.
        if let Some(j) = at
            && let Err(i) = t.updated.binary_search(&j)
        {
            t.updated.insert(i, j);
        }
    }
}

/// What a change's table is to the record.
#[derive(Clone)]
enum Found {
    Table(usize),
    /// Another schema's, SQLite's or batchsse's own.
    Ignored,
    Unknown(String),
}

fn find(tables: &[Watched], z_db: *const c_char, z_name: *const c_char) -> Found {
    // SAFETY: SQLite passes NUL-terminated names.
    let (schema, name) = unsafe { (CStr::from_ptr(z_db), CStr::from_ptr(z_name)) };
    let name = name.to_bytes();
    if schema.to_bytes() != b"main" || super::store::not_recorded(name) {
        return Found::Ignored;
    }
    match tables
        .iter()
        .position(|w| w.layout.table.as_bytes() == name)
    {
        Some(t) => Found::Table(t),
        None => Found::Unknown(String::from_utf8_lossy(name).into_owned()),
    }
}

/// One row change, as the hook reports it.
struct Change {
    db: *mut ffi::sqlite3,
    op: c_int,
    /// The rowid before and after.
    keys: (i64, i64),
}

/// Which image of the row: before the change or after.
#[derive(Clone, Copy, PartialEq)]
enum Image {
    Old,
    New,
}

impl Change {
    fn record(&self, s: &mut State, t: usize) -> Result<(), String> {
        let index = match s.tables[t].index {
            Some(i) => i,
            None => {
                let i = s.enc.table(&s.tables[t].layout);
                s.tables[t].index = Some(i);
                i
            }
        };
        // A part full after a delete is cut before the next change, unless
        // that is an insert: a `REPLACE` of a row is its delete, then its
        // insert anew at the same key, which the undo must find in one
        // part (see `revert::Undone`).
        if s.enc.len() >= s.part_bytes && self.op != ffi::SQLITE_INSERT {
            cut(s)?;
        }
        // Only the images SQLite has: no old row for an insert, no new
        // one for a delete.
        let w = &s.tables[t];
        let all = |img| self.values(&w.columns, img);
        match self.op {
            ffi::SQLITE_DELETE => {
                let key = self.key(w, Image::Old)?;
                s.enc.delete(index, key.as_ref(), &all(Image::Old)?);
            }
            ffi::SQLITE_INSERT => {
                let key = self.key(w, Image::New)?;
                s.enc.insert(index, key.as_ref(), print(&all(Image::New)?));
            }
            _ => {
                let (old_key, new_key) = (self.key(w, Image::Old)?, self.key(w, Image::New)?);
                if old_key == new_key {
                    self.update(s, t, index, &old_key)?;
                } else {
                    let (old, new) = (all(Image::Old)?, all(Image::New)?);
                    s.enc.delete(index, old_key.as_ref(), &old);
                    s.enc.moved(index, new_key.as_ref(), print(&new));
                }
            }
        }
        if s.enc.len() >= s.part_bytes && self.op != ffi::SQLITE_DELETE {
            cut(s)?;
        }
        Ok(())
    }

    fn update(&self, s: &mut State, t: usize, index: usize, key: &Key) -> Result<(), String> {
        let b = &mut s.scratch;
        self.changed_columns(&s.tables[t], b)?;
        if b.mask.iter().any(|m| *m != 0) {
            s.enc
                .update(index, key.as_ref(), &b.mask, &b.old, print(&b.new));
        }
        Ok(())
    }

    /// The changed columns' old and new encodings, and their mask.
    fn changed_columns(&self, w: &Watched, b: &mut Scratch) -> Result<(), String> {
        b.old.clear();
        b.new.clear();
        b.mask.clear();
        b.mask.resize(w.columns.len().div_ceil(8), 0);
        if !w.identity.is_empty() {
            return self.changed_with_identity(w, b);
        }
        for &j in &w.updated {
            let cid = w.columns[j];
            let (old, new) = (self.raw(cid, Image::Old)?, self.raw(cid, Image::New)?);
            // SAFETY: both are protected values, valid for the rest of the
            // hook; neither is touched again before these go.
            let (old, new) = unsafe { (value_ref(old), value_ref(new)) };
            if !same(old, new) {
                put_value(&mut b.old, old);
                put_value(&mut b.new, new);
                b.mask[j / 8] |= 1 << (j % 8);
            }
        }
        Ok(())
    }

    /// [`Change::changed_columns`] of a table with an `identity`: its
    /// columns go with any change, changed or not (the mask stays empty
    /// when nothing else changed).
    fn changed_with_identity(&self, w: &Watched, b: &mut Scratch) -> Result<(), String> {
        let mut any = false;
        for j in 0..w.columns.len() {
            let (updated, identity) = (w.updated.contains(&j), w.identity.contains(&j));
            if !updated && !identity {
                continue;
            }
            let cid = w.columns[j];
            let (old, new) = (self.raw(cid, Image::Old)?, self.raw(cid, Image::New)?);
            // SAFETY: as in `changed_columns`.
            let (old, new) = unsafe { (value_ref(old), value_ref(new)) };
            let changed = !same(old, new);
            if changed || identity {
                any |= changed;
                put_value(&mut b.old, old);
                put_value(&mut b.new, new);
                b.mask[j / 8] |= 1 << (j % 8);
            }
        }
        if !any {
            b.mask.iter_mut().for_each(|m| *m = 0);
        }
        Ok(())
    }

    fn key(&self, w: &Watched, img: Image) -> Result<Key, String> {
        Ok(match &w.key {
            None => Key::Int(if img == Image::Old {
                self.keys.0
            } else {
                self.keys.1
            }),
            Some(cids) => Key::Encoded(self.values(cids, img)?),
        })
    }

    fn values(&self, cids: &[c_int], img: Image) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for &cid in cids {
            self.value(cid, img, &mut out)?;
        }
        Ok(out)
    }

    /// Appends column `cid`'s value's encoding.
    fn value(&self, cid: c_int, img: Image, out: &mut Vec<u8>) -> Result<(), String> {
        let v = self.raw(cid, img)?;
        // SAFETY: v is a protected value, valid for the rest of the hook.
        unsafe { put_raw(out, v) };
        Ok(())
    }

    /// Column `cid`'s value in image `img`, as SQLite holds it.
    fn raw(&self, cid: c_int, img: Image) -> Result<*mut ffi::sqlite3_value, String> {
        let mut v: *mut ffi::sqlite3_value = std::ptr::null_mut();
        // SAFETY: called from inside the hook, as SQLite requires.
        let rc = unsafe {
            match img {
                Image::Old => ffi::sqlite3_preupdate_old(self.db, cid, &mut v),
                Image::New => ffi::sqlite3_preupdate_new(self.db, cid, &mut v),
            }
        };
        if rc != ffi::SQLITE_OK || v.is_null() {
            return Err(format!(
                "SQLite would not give column {cid} of a changed row (code {rc})"
            ));
        }
        Ok(v)
    }
}

/// Whether two values are the same as the record encodes them: of one
/// type, with the same bits (a REAL -0.0 is not 0.0 there).
fn same(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => true,
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x == y,
        (ValueRef::Real(x), ValueRef::Real(y)) => x.to_bits() == y.to_bits(),
        (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => x == y,
        _ => false,
    }
}

/// A row's key as the hook found it.
#[derive(PartialEq)]
enum Key {
    Int(i64),
    Encoded(Vec<u8>),
}

impl Key {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Int(k) => KeyRef::Int(*k),
            Key::Encoded(b) => KeyRef::Encoded(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts recorded for one statement over 3,000 rows, cut at 1 KiB,
    /// with `held` bytes of them kept in memory; and whether any went to a
    /// file.
    fn recorded(held: usize) -> (Vec<(u64, Vec<u8>)>, bool) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);
             INSERT INTO t WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
               SELECT i, printf('row %d', i), i FROM s;",
        )
        .unwrap();
        let hook = PreHook::install(&conn, 1024, held);
        hook.arm(
            &conn,
            super::super::shape::layouts(&conn).unwrap(),
            None,
            None,
        )
        .unwrap();
        conn.execute("UPDATE t SET v = v || '!', n = -n", [])
            .unwrap();
        let parts = hook.take().unwrap();
        let spilled = parts.spilled();
        (parts.into_vec(), spilled)
    }

    #[test]
    fn a_statement_past_the_budget_records_the_same_parts_through_a_file() {
        let (held, spilled_none) = recorded(usize::MAX);
        let (spilled, spilled_some) = recorded(4096);
        assert!(!spilled_none && spilled_some);
        assert!(held.len() > 20, "{} parts", held.len());
        assert_eq!(held.iter().map(|p| p.0).sum::<u64>(), 3000);
        assert_eq!(held, spilled);
    }
}
