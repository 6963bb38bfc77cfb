//! The undo record's format: one blob per recorded chunk, holding for each
//! changed row its key, what the run overwrote, and a fingerprint of what
//! it wrote (so a later undo can tell the application's changes from the
//! run's without the record holding the new values).
//!
//! ```text
//! blob    = version flags tables entry*
//! tables  = count { name  keys{count name*}  columns{count name*} }*
//! entry   = head key body
//! head    = varint(table << 3 | same_mask << 2 | op)   (INSERT: moved << 2)
//! key     = zigzag-varint delta from the table's last key (integer keys)
//!         | value*                                        (other keys)
//! body    = UPDATE: [mask] value* (old, masked columns) print
//!         | INSERT: print (of every column as inserted)
//!         | DELETE: value* (old, every column)
//! value   = tag: 0 NULL, 1 REAL + 8 bytes, 2 TEXT / 3 BLOB + varint length
//!           + bytes, 4 INTEGER + zigzag varint, 16..=255 the integers
//!           -64..=175 in the tag alone
//! print   = 48 bits of a 64-bit hash of the values' encodings, 6 bytes
//! ```

use std::rc::Rc;

use rusqlite::types::{Value, ValueRef};

pub const VERSION: u8 = 1;

/// What an entry is.
pub mod op {
    /// The run inserted the row.
    pub const INSERT: u8 = 1;
    /// The run changed some columns of the row (the mask says which).
    pub const UPDATE: u8 = 2;
    /// The run deleted the row.
    pub const DELETE: u8 = 3;
}

/// `flags` bit: every entry of the blob is a different row, so an undo
/// need not count rows with a set.
pub const UNIQUE_KEYS: u8 = 1;

/// `flags` bit: an insert that is a row's key changing (right after the
/// row deleted at its old key) says so with bit 2 of its head, which an
/// insert does not otherwise use. A blob without it is from before.
pub const MOVES: u8 = 2;

/// `flags` bit: the blob holds no delete. A blob without it may hold
/// some (one from before it was written does not say): an undo that takes
/// back an insert must know whether an older part deletes the same row
/// (see `stash`), and reads only the parts that may.
pub const NO_DELETES: u8 = 4;

/// Whether a blob may hold a delete, by its flags (a blob too short to
/// say may).
pub fn may_delete(blob: &[u8]) -> bool {
    blob.get(1).is_none_or(|f| f & NO_DELETES == 0)
}

const PRINT_BYTES: usize = 6;
const SMALL_TAG: u8 = 16;
const SMALL_ZERO: i64 = 80;

/// A recorded value as SQLite holds it: text as bytes, since SQLite keeps
/// text that is not UTF-8 as it was given, and an undo must put it back so.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Val {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Val::Null => ValueRef::Null,
            Val::Integer(i) => ValueRef::Integer(*i),
            Val::Real(f) => ValueRef::Real(*f),
            Val::Text(t) => ValueRef::Text(t),
            Val::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// As rusqlite's value (text made UTF-8), for messages and tables.
    pub fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Integer(i) => Value::Integer(*i),
            Val::Real(f) => Value::Real(*f),
            Val::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            Val::Blob(b) => Value::Blob(b.clone()),
        }
    }
}

impl From<ValueRef<'_>> for Val {
    fn from(v: ValueRef<'_>) -> Val {
        match v {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(i) => Val::Integer(i),
            ValueRef::Real(f) => Val::Real(f),
            ValueRef::Text(t) => Val::Text(t.to_vec()),
            ValueRef::Blob(b) => Val::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(self.as_ref()))
    }
}

/// A table as a record names it: what keys a row, and the columns an
/// undo restores.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub table: String,
    /// Column names, or one rowid name.
    pub key: Vec<String>,
    /// The key is the rowid (or its alias): always an integer.
    pub int_key: bool,
    pub columns: Vec<String>,
}

impl Layout {
    /// Whether the table's rows are found by a rowid no column names (a
    /// key column's name is quoted), which a `VACUUM` may renumber.
    pub fn by_bare_rowid(&self) -> bool {
        self.int_key && self.key.first().is_some_and(|k| !k.starts_with('"'))
    }

    fn mask_bytes(&self) -> usize {
        self.columns.len().div_ceil(8)
    }
}

/// Appends `v`'s encoding.
pub fn put_value(out: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => out.push(0),
        ValueRef::Real(f) => {
            out.push(1);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        ValueRef::Text(b) | ValueRef::Blob(b) => {
            out.push(if matches!(v, ValueRef::Text(_)) { 2 } else { 3 });
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        ValueRef::Integer(i) => match i.checked_add(SMALL_ZERO) {
            Some(t) if (i64::from(SMALL_TAG)..=255).contains(&t) => out.push(t as u8),
            _ => {
                out.push(4);
                put_varint(out, zigzag(i));
            }
        },
    }
}

/// The tag of an integer in a key of the undo's table of saved rows
/// (see [`put_sorted`]); [`put_value`] never writes it.
const SORTED_INT: u8 = 5;

/// Appends `v` as a key of the undo's table of saved rows (`stash`) holds
/// it: an integer as [`SORTED_INT`] and its 8 bytes big-endian, the sign
/// bit flipped, so that integer keys sort as bytes as they do as numbers;
/// any other value as [`put_value`] does. The rows a part saves come in
/// key order, and so go into one end of that table's index; with a
/// varint's low bits first they went all over it, each page read and
/// written again and again (the undo bench's rebuild of a million rows
/// with a `UNIQUE` index undid in 8.1–8.3 s, against 3.5–3.7 s so).
pub fn put_sorted(out: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Integer(i) => {
            out.push(SORTED_INT);
            out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
        }
        v => put_value(out, v),
    }
}

/// A key of the table of saved rows, in the form [`put_sorted`] writes,
/// from that form or the one builds before it wrote (every value as
/// [`put_value`]); and whether it was in that earlier form.
pub fn sorted_key(k: &[u8]) -> Result<(Vec<u8>, bool), Damaged> {
    let sorted = rekeyed(k, put_sorted)?;
    let earlier = sorted != k;
    Ok((sorted, earlier))
}

/// The integer a key of the table of saved rows is, when it is one
/// integer as [`put_sorted`] writes it.
pub fn sorted_int(k: &[u8]) -> Option<i64> {
    match k {
        [SORTED_INT, rest @ ..] => {
            let b: [u8; 8] = rest.try_into().ok()?;
            Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
        }
        _ => None,
    }
}

/// A key [`put_sorted`] wrote, as builds before it wrote it.
pub fn earlier_key(k: &[u8]) -> Result<Vec<u8>, Damaged> {
    rekeyed(k, put_value)
}

/// The values of key `k` (in either form), each written by `put`.
fn rekeyed(k: &[u8], put: fn(&mut Vec<u8>, ValueRef<'_>)) -> Result<Vec<u8>, Damaged> {
    let mut r = Reader { b: k, at: 0 };
    let mut out = Vec::with_capacity(k.len() + 8);
    while r.at < k.len() {
        if k[r.at] == SORTED_INT {
            let n = k.get(r.at..r.at + 9).and_then(sorted_int);
            put(
                &mut out,
                ValueRef::Integer(n.ok_or(Damaged("it ends early"))?),
            );
            r.at += 9;
        } else {
            put(&mut out, r.value_ref()?);
        }
    }
    Ok(out)
}

/// Values' encodings, one after the other.
pub fn encode<'a>(values: impl IntoIterator<Item = ValueRef<'a>>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        put_value(&mut out, v);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn zigzag(i: i64) -> u64 {
    ((i << 1) ^ (i >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// The fingerprint of some values' encodings (FNV-1a, then a finalizer
/// that spreads every bit, cut to 48 bits).
pub fn print(encoded: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in encoded {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h & ((1 << (8 * PRINT_BYTES)) - 1)
}

/// Builds one blob.
#[derive(Default)]
pub struct Encoder {
    body: Vec<u8>,
    tables: Vec<Layout>,
    /// Per table: the last integer key, and the last update's mask.
    last_key: Vec<i64>,
    last_mask: Vec<Vec<u8>>,
    /// Per table: whether this part has an entry of it yet.
    seen: Vec<bool>,
    unique: bool,
    /// Every entry so far had an integer key above its table's last one
    /// (so each is a different row, promised or not).
    ascending: bool,
    /// Whether this part holds a delete yet ([`NO_DELETES`]).
    deletes: bool,
    entries: u64,
}

/// A row's key, as the encoder takes it.
pub enum KeyRef<'a> {
    Int(i64),
    /// The key columns' values, encoded one after the other.
    Encoded(&'a [u8]),
}

impl Encoder {
    /// `unique`: the caller promises every entry is a different row.
    pub fn new(unique: bool) -> Self {
        Encoder {
            unique,
            ascending: true,
            ..Encoder::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes so far (the blob is a little longer: its header).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// The index of `layout`'s table in this blob, added the first time.
    pub fn table(&mut self, layout: &Layout) -> usize {
        if let Some(i) = self.tables.iter().position(|t| t.table == layout.table) {
            return i;
        }
        self.tables.push(layout.clone());
        self.last_key.push(0);
        self.last_mask.push(Vec::new());
        self.seen.push(false);
        self.tables.len() - 1
    }

    fn seen_table(&self, table: usize) -> bool {
        self.seen[table]
    }

    fn head(&mut self, table: usize, op: u8, same_mask: bool, key: KeyRef<'_>) {
        put_varint(
            &mut self.body,
            (table as u64) << 3 | u64::from(same_mask) << 2 | u64::from(op),
        );
        match key {
            KeyRef::Int(k) => {
                if k <= self.last_key[table] && self.entries > 0 {
                    self.ascending &= !self.seen_table(table);
                }
                let delta = k.wrapping_sub(self.last_key[table]);
                put_varint(&mut self.body, zigzag(delta));
                self.last_key[table] = k;
            }
            KeyRef::Encoded(b) => {
                self.ascending = false;
                self.body.extend_from_slice(b);
            }
        }
        self.seen[table] = true;
        self.entries += 1;
    }

    /// The run changed the masked columns of a row from `old` (their
    /// encodings, in column order) to values whose fingerprint is `print`.
    pub fn update(&mut self, table: usize, key: KeyRef<'_>, mask: &[u8], old: &[u8], print: u64) {
        let same = self.last_mask[table] == mask;
        self.head(table, op::UPDATE, same, key);
        if !same {
            self.body.extend_from_slice(mask);
            self.last_mask[table] = mask.to_vec();
        }
        self.body.extend_from_slice(old);
        self.put_print(print);
    }

    pub fn insert(&mut self, table: usize, key: KeyRef<'_>, print: u64) {
        self.head(table, op::INSERT, false, key);
        self.put_print(print);
    }

    /// A row's new key: the row at `key`, after [`Encoder::delete`] at
    /// its old one.
    pub fn moved(&mut self, table: usize, key: KeyRef<'_>, print: u64) {
        self.head(table, op::INSERT, true, key);
        self.put_print(print);
    }

    /// `old`: every column's encoding, in column order.
    pub fn delete(&mut self, table: usize, key: KeyRef<'_>, old: &[u8]) {
        self.head(table, op::DELETE, false, key);
        self.body.extend_from_slice(old);
        self.deletes = true;
    }

    fn put_print(&mut self, print: u64) {
        self.body
            .extend_from_slice(&print.to_le_bytes()[..PRINT_BYTES]);
    }

    /// The blob; the encoder goes on with the next, empty one.
    pub fn finish(&mut self) -> Vec<u8> {
        let unique = self.unique || self.ascending;
        let flags =
            if unique { UNIQUE_KEYS } else { 0 } | if self.deletes { 0 } else { NO_DELETES };
        let mut out = vec![VERSION, flags | MOVES];
        put_varint(&mut out, self.tables.len() as u64);
        for t in &self.tables {
            put_name(&mut out, &t.table);
            out.push(u8::from(t.int_key));
            for list in [&t.key, &t.columns] {
                put_varint(&mut out, list.len() as u64);
                for n in list {
                    put_name(&mut out, n);
                }
            }
        }
        out.extend_from_slice(&self.body);
        // The next part names the same tables (their indices hold).
        self.body.clear();
        self.entries = 0;
        self.last_key.iter_mut().for_each(|k| *k = 0);
        self.last_mask.iter_mut().for_each(Vec::clear);
        self.seen.iter_mut().for_each(|s| *s = false);
        self.ascending = true;
        self.deletes = false;
        out
    }
}

fn put_name(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// One decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub table: usize,
    pub op: u8,
    pub key: Vec<Val>,
    /// The columns (indices into the layout's) the entry restores: those
    /// the run changed, or every one (shared by the entries alike).
    pub columns: Rc<[usize]>,
    /// Their old values (empty for an insert).
    pub old: Vec<Val>,
    /// For an update or insert: the fingerprint of what the run wrote.
    pub print: Option<u64>,
    /// An insert that is the row of the entry before at a new key.
    pub moved: bool,
}

/// A decoded blob.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub tables: Vec<Layout>,
    pub unique: bool,
    /// Its inserts say which are a key's change ([`MOVES`]).
    pub moves: bool,
    pub entries: Vec<Entry>,
}

/// Why a blob could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the undo record is damaged ({0})")]
pub struct Damaged(&'static str);

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Damaged> {
        let x = *self.b.get(self.at).ok_or(Damaged("it ends early"))?;
        self.at += 1;
        Ok(x)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(Damaged("a length overflows"))?;
        let s = self.b.get(self.at..end).ok_or(Damaged("it ends early"))?;
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, Damaged> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(Damaged("a number is too long"))
    }

    fn len(&mut self) -> Result<usize, Damaged> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.b.len())
            .ok_or(Damaged("a length is past its end"))
    }

    fn name(&mut self) -> Result<String, Damaged> {
        let n = self.len()?;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| Damaged("a name is not UTF-8"))
    }

    fn value(&mut self) -> Result<Val, Damaged> {
        self.value_ref().map(Val::from)
    }

    /// The next value, borrowed from the blob.
    #[inline]
    fn value_ref(&mut self) -> Result<ValueRef<'a>, Damaged> {
        Ok(match self.byte()? {
            0 => ValueRef::Null,
            1 => {
                let b: [u8; 8] = self.bytes(8)?.try_into().map_err(|_| Damaged("a real"))?;
                ValueRef::Real(f64::from_bits(u64::from_le_bytes(b)))
            }
            2 => {
                let n = self.len()?;
                ValueRef::Text(self.bytes(n)?)
            }
            3 => {
                let n = self.len()?;
                ValueRef::Blob(self.bytes(n)?)
            }
            4 => ValueRef::Integer(unzigzag(self.varint()?)),
            t if t >= SMALL_TAG => ValueRef::Integer(i64::from(t) - SMALL_ZERO),
            _ => return Err(Damaged("an unknown value tag")),
        })
    }

    /// Past the next value, as [`Reader::value_ref`] reads it, without
    /// making it.
    #[inline]
    fn skip_value(&mut self) -> Result<(), Damaged> {
        match self.byte()? {
            0 => {}
            1 => drop(self.bytes(8)?),
            2 | 3 => {
                let n = self.len()?;
                self.bytes(n)?;
            }
            4 => drop(self.varint()?),
            t if t >= SMALL_TAG => {}
            _ => return Err(Damaged("an unknown value tag")),
        }
        Ok(())
    }

    fn values(&mut self, n: usize) -> Result<Vec<Val>, Damaged> {
        (0..n).map(|_| self.value()).collect()
    }

    fn print(&mut self) -> Result<u64, Damaged> {
        let mut b = [0u8; 8];
        b[..PRINT_BYTES].copy_from_slice(self.bytes(PRINT_BYTES)?);
        Ok(u64::from_le_bytes(b))
    }

    fn layout(&mut self) -> Result<Layout, Damaged> {
        let table = self.name()?;
        let int_key = self.byte()? == 1;
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = self.len()?;
            *list = (0..n).map(|_| self.name()).collect::<Result<_, _>>()?;
        }
        let [key, columns] = lists;
        if key.is_empty() || (int_key && key.len() != 1) {
            return Err(Damaged("a table without a key"));
        }
        Ok(Layout {
            table,
            key,
            int_key,
            columns,
        })
    }
}

/// The tables of a blob written by [`Encoder::finish`], its entries
/// left unread.
pub fn layouts(blob: &[u8]) -> Result<Vec<Layout>, Damaged> {
    header(&mut Reader { b: blob, at: 0 }).map(|(_, tables)| tables)
}

/// A blob's version checked, then its flags, and its tables.
fn header(r: &mut Reader<'_>) -> Result<(u8, Vec<Layout>), Damaged> {
    if r.byte()? != VERSION {
        return Err(Damaged("written by another version of batchsse"));
    }
    let flags = r.byte()?;
    let n = r.len()?;
    let tables = (0..n).map(|_| r.layout()).collect::<Result<_, _>>()?;
    Ok((flags, tables))
}

/// Reads a blob written by [`Encoder::finish`].
pub fn decode(blob: &[u8]) -> Result<Record, Damaged> {
    let mut r = Reader { b: blob, at: 0 };
    let (flags, tables) = header(&mut r)?;
    let mut last_key = vec![0i64; tables.len()];
    let every: Vec<Rc<[usize]>> = tables
        .iter()
        .map(|t| (0..t.columns.len()).collect())
        .collect();
    let mut last_mask: Vec<Rc<[usize]>> = vec![Rc::from([]); tables.len()];
    let mut entries = Vec::new();
    while r.at < blob.len() {
        entries.push(entry(
            &mut r,
            (&tables, &every),
            &mut last_key,
            &mut last_mask,
        )?);
    }
    Ok(Record {
        tables,
        unique: flags & UNIQUE_KEYS != 0,
        moves: flags & MOVES != 0,
        entries,
    })
}

/// One entry; `every`: each table's list of all its columns.
fn entry(
    r: &mut Reader<'_>,
    (tables, every): (&[Layout], &[Rc<[usize]>]),
    last_key: &mut [i64],
    last_mask: &mut [Rc<[usize]>],
) -> Result<Entry, Damaged> {
    let head = r.varint()?;
    let (table, same, op) = ((head >> 3) as usize, head & 4 != 0, (head & 3) as u8);
    let t = tables.get(table).ok_or(Damaged("an unknown table"))?;
    let key = if t.int_key {
        last_key[table] = last_key[table].wrapping_add(unzigzag(r.varint()?));
        vec![Val::Integer(last_key[table])]
    } else {
        r.values(t.key.len())?
    };
    let every = every[table].clone();
    let (columns, old, print) = match op {
        op::UPDATE => {
            if !same {
                let mask = r.bytes(t.mask_bytes())?;
                last_mask[table] = columns_of(mask, every.len()).into();
            }
            let columns = last_mask[table].clone();
            let old = r.values(columns.len())?;
            (columns, old, Some(r.print()?))
        }
        op::INSERT => (every, Vec::new(), Some(r.print()?)),
        op::DELETE => {
            let old = r.values(every.len())?;
            (every, old, None)
        }
        _ => return Err(Damaged("an unknown entry kind")),
    };
    Ok(Entry {
        table,
        op,
        key,
        columns,
        old,
        print,
        moved: op == op::INSERT && same,
    })
}

/// The columns a mask over `n` columns sets.
fn columns_of(mask: &[u8], n: usize) -> Vec<usize> {
    (0..n)
        .filter(|i| mask[i / 8] & (1 << (i % 8)) != 0)
        .collect()
}

/// One entry of an [`Indexed`] part; its old values stay in the blob.
pub struct Lean {
    pub key: i64,
    pub print: u64,
    /// Its columns: an index into [`Indexed::masks`].
    pub mask: u32,
    /// Where its old values begin in the blob.
    at: u32,
}

impl Lean {
    /// Where its old values begin in the blob.
    pub fn at(&self) -> usize {
        self.at as usize
    }
}

/// A part that only updates, only inserts or only deletes rows of one
/// rowid table, each row once, in rising key order (what one chunk of an
/// `UPDATE`, `INSERT` or `DELETE` step records), indexed without copying a
/// value out of its blob.
pub struct Indexed {
    pub layout: Layout,
    /// [`op::UPDATE`], [`op::INSERT`] or [`op::DELETE`].
    pub op: u8,
    /// The column lists the entries restore (indices into the layout's);
    /// for inserts and deletes, every column (an insert's print covers
    /// all, a delete holds all).
    pub masks: Vec<Vec<usize>>,
    pub entries: Vec<Lean>,
}

impl Indexed {
    /// The rest of an entry whose head and key are read; `None`: past
    /// what a part SQLite could hold would need.
    #[inline]
    fn lean(&mut self, r: &mut Reader<'_>, head: u64, key: i64) -> Result<Option<Lean>, Damaged> {
        let n = self.layout.columns.len();
        if self.op != op::UPDATE {
            if self.masks.is_empty() {
                self.masks.push((0..n).collect());
            }
        } else if head & 4 == 0 {
            self.masks
                .push(columns_of(r.bytes(self.layout.mask_bytes())?, n));
        } else if self.masks.is_empty() {
            self.masks.push(Vec::new()); // as in `decode`: the last mask of none
        }
        let (mask, at) = (self.masks.len() - 1, r.at);
        if self.op != op::INSERT {
            for _ in 0..self.masks[mask].len() {
                r.skip_value()?;
            }
        }
        // A delete's entry has no print: the undo puts its row back whole.
        let print = if self.op == op::DELETE { 0 } else { r.print()? };
        let (Ok(mask), Ok(at)) = (u32::try_from(mask), u32::try_from(at)) else {
            return Ok(None);
        };
        Ok(Some(Lean {
            key,
            print,
            mask,
            at,
        }))
    }
}

/// The value encoded at `at` in `blob`, and where the next one begins.
#[inline]
pub fn value_at(blob: &[u8], at: usize) -> Result<(ValueRef<'_>, usize), Damaged> {
    let mut r = Reader { b: blob, at };
    Ok((r.value_ref()?, r.at))
}

/// Indexes `blob` as [`Indexed`] (into `entries`, emptied first: a
/// buffer reused); `None`: it is not such a part.
pub fn index(blob: &[u8], mut entries: Vec<Lean>) -> Result<Option<Indexed>, Damaged> {
    entries.clear();
    let mut r = Reader { b: blob, at: 0 };
    if r.byte()? != VERSION {
        return Err(Damaged("written by another version of batchsse"));
    }
    let unique = r.byte()? & UNIQUE_KEYS != 0;
    if !unique || r.len()? != 1 {
        return Ok(None);
    }
    let layout = r.layout()?;
    if !layout.int_key {
        return Ok(None);
    }
    let mut part = Indexed {
        layout,
        op: 0,
        masks: Vec::new(),
        entries,
    };
    let mut key = 0i64;
    while r.at < blob.len() {
        let head = r.varint()?;
        let (op, next) = ((head & 3) as u8, key.wrapping_add(unzigzag(r.varint()?)));
        let alike = op == part.op || (part.op == 0 && (1..=3).contains(&op));
        if head >> 3 != 0 || !alike || (next <= key && !part.entries.is_empty()) {
            return Ok(None);
        }
        (part.op, key) = (op, next);
        let Some(lean) = part.lean(&mut r, head, key)? else {
            return Ok(None);
        };
        part.entries.push(lean);
    }
    Ok((part.op != 0).then_some(part))
}

/// The values in a string of encodings (as [`put_value`] writes them).
pub fn values(bytes: &[u8]) -> Result<Vec<Val>, Damaged> {
    let mut r = Reader { b: bytes, at: 0 };
    let mut out = Vec::new();
    while r.at < bytes.len() {
        out.push(r.value()?);
    }
    Ok(out)
}

/// A mask over `n` columns with the given ones set.
pub fn mask_of(n: usize, set: impl IntoIterator<Item = usize>) -> Vec<u8> {
    let mut m = vec![0u8; n.div_ceil(8)];
    for i in set {
        m[i / 8] |= 1 << (i % 8);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layout(int_key: bool, key: usize, cols: usize) -> Layout {
        Layout {
            table: "t".into(),
            key: (0..key).map(|i| format!("k{i}")).collect(),
            int_key,
            columns: (0..cols).map(|i| format!("c{i}")).collect(),
        }
    }

    fn enc(vals: &[Value]) -> Vec<u8> {
        encode(vals.iter().map(ValueRef::from))
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            (-100i64..200).prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("SQLite has no NaN", |f| !f.is_nan())
                .prop_map(Value::Real),
            ".{0,20}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        ]
    }

    proptest! {
        #[test]
        fn saved_rows_keys_sort_as_their_integers_and_convert_both_ways(keys in proptest::collection::vec(any::<i64>(), 2..5), text in ".{0,8}") {
            let sorted = |ks: &[i64]| {
                let mut out = Vec::new();
                for &k in ks {
                    put_sorted(&mut out, ValueRef::Integer(k));
                }
                put_sorted(&mut out, ValueRef::Text(text.as_bytes()));
                out
            };
            let (a, b) = (sorted(&keys[..1]), sorted(&keys[1..2]));
            prop_assert_eq!(a.cmp(&b), keys[0].cmp(&keys[1]));
            let all = sorted(&keys);
            let mut earlier = Vec::new();
            for &k in &keys {
                put_value(&mut earlier, ValueRef::Integer(k));
            }
            put_value(&mut earlier, ValueRef::Text(text.as_bytes()));
            prop_assert_eq!(earlier_key(&all).unwrap(), earlier.clone());
            prop_assert_eq!(sorted_key(&earlier).unwrap(), (all.clone(), true));
            prop_assert_eq!(sorted_key(&all).unwrap(), (all, false));
        }
    }

    proptest! {
        #[test]
        fn every_value_comes_back_exactly(vals in proptest::collection::vec(value(), 1..6), k in any::<i64>()) {
            let t = layout(true, 1, vals.len());
            let mut e = Encoder::new(false);
            let ti = e.table(&t);
            let all: Vec<usize> = (0..vals.len()).collect();
            e.update(ti, KeyRef::Int(k), &mask_of(vals.len(), all.clone()), &enc(&vals), print(&enc(&vals)));
            e.delete(ti, KeyRef::Int(k.wrapping_sub(3)), &enc(&vals));
            let rec = decode(&e.finish()).unwrap();
            prop_assert_eq!(&rec.tables, &vec![t]);
            prop_assert_eq!(&rec.entries[0].key, &vec![Val::Integer(k)]);
            prop_assert_eq!(&rec.entries[0].old, &vals.iter().map(|v| Val::from(ValueRef::from(v))).collect::<Vec<_>>());
            prop_assert_eq!(rec.entries[0].print, Some(print(&enc(&vals))));
            prop_assert_eq!(&rec.entries[1].key, &vec![Val::Integer(k.wrapping_sub(3))]);
            prop_assert_eq!(&rec.entries[1].old, &vals.iter().map(|v| Val::from(ValueRef::from(v))).collect::<Vec<_>>());
        }

        #[test]
        fn an_update_part_indexed_in_place_holds_what_decode_reads(
            rows in proptest::collection::vec((1i64..4, proptest::collection::vec(value(), 3)), 1..30),
            masks in proptest::collection::vec(1u8..8, 30),
        ) {
            let t = layout(true, 1, 3);
            let mut e = Encoder::new(true);
            let ti = e.table(&t);
            let mut k = -5;
            for ((step, vals), m) in rows.iter().zip(&masks) {
                k += step;
                let cols: Vec<usize> = (0..3).filter(|c| m & (1 << c) != 0).collect();
                let old: Vec<Value> = cols.iter().map(|&c| vals[c].clone()).collect();
                e.update(ti, KeyRef::Int(k), &mask_of(3, cols), &enc(&old), print(&enc(vals)));
            }
            let blob = e.finish();
            let rec = decode(&blob).unwrap();
            let part = index(&blob, Vec::new()).unwrap().expect("one table's updates, keys rising");
            prop_assert_eq!(&part.layout, &t);
            prop_assert_eq!(part.entries.len(), rec.entries.len());
            for (lean, entry) in part.entries.iter().zip(&rec.entries) {
                prop_assert_eq!(Some(lean.key), entry.key[0].as_ref().as_i64().ok());
                prop_assert_eq!(Some(lean.print), entry.print);
                prop_assert_eq!(&part.masks[lean.mask as usize][..], &entry.columns[..]);
                let mut at = lean.at();
                for old in &entry.old {
                    let (v, next) = value_at(&blob, at).unwrap();
                    prop_assert_eq!(&Val::from(v), old);
                    at = next;
                }
            }
        }

        #[test]
        fn a_damaged_blob_is_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = index(&bytes, Vec::new());
        }
    }

    /// A part says whether it holds a delete, so an undo reads only those
    /// that may (a blob from before the flag may).
    #[test]
    fn a_part_says_whether_it_holds_a_delete() {
        let mut e = Encoder::new(true);
        let t = e.table(&layout(true, 1, 1));
        e.insert(t, KeyRef::Int(1), 7);
        assert!(!may_delete(&e.finish()));
        e.delete(t, KeyRef::Int(2), &enc(&[Value::Null]));
        let mut blob = e.finish();
        assert!(may_delete(&blob));
        e.insert(t, KeyRef::Int(3), 7);
        assert!(!may_delete(&e.finish()), "the next part begins anew");
        blob[1] &= !NO_DELETES;
        assert!(may_delete(&blob) && may_delete(&[VERSION]));
    }

    /// A key's change is told from a delete and an insert of two rows;
    /// a blob from before the mark says it has none.
    #[test]
    fn an_insert_at_a_changed_key_is_marked_moved() {
        let mut e = Encoder::new(false);
        let ti = e.table(&layout(true, 1, 1));
        let old = enc(&[Value::Integer(5)]);
        e.delete(ti, KeyRef::Int(1), &old);
        e.moved(ti, KeyRef::Int(11), 7);
        e.insert(ti, KeyRef::Int(12), 7);
        let mut blob = e.finish();
        let rec = decode(&blob).unwrap();
        assert!(rec.moves);
        let moved: Vec<bool> = rec.entries.iter().map(|e| e.moved).collect();
        assert_eq!(moved, [false, true, false]);
        assert_eq!(
            (rec.entries[1].op, rec.entries[1].print),
            (op::INSERT, Some(7))
        );
        blob[1] &= !MOVES;
        assert!(!decode(&blob).unwrap().moves);
    }

    #[test]
    fn only_one_tables_rising_changes_of_one_kind_are_indexed_in_place() {
        let old = enc(&[Value::Integer(5)]);
        let mask = mask_of(1, [0]);
        let part = |int_key: bool, f: &dyn Fn(&mut Encoder, usize)| {
            let mut e = Encoder::new(false);
            let ti = e.table(&layout(int_key, 1, 1));
            f(&mut e, ti);
            index(&e.finish(), Vec::new()).unwrap().is_some()
        };
        let key = enc(&[Value::Integer(1)]);
        assert!(part(true, &|e, t| e.update(
            t,
            KeyRef::Int(3),
            &mask,
            &old,
            1
        )));
        assert!(part(true, &|e, t| {
            e.insert(t, KeyRef::Int(3), 1);
            e.insert(t, KeyRef::Int(4), 2);
        }));
        assert!(!part(true, &|e, t| {
            e.insert(t, KeyRef::Int(3), 1);
            e.update(t, KeyRef::Int(4), &mask, &old, 1);
        }));
        assert!(part(true, &|e, t| e.delete(t, KeyRef::Int(3), &old)));
        assert!(!part(true, &|e, t| {
            e.delete(t, KeyRef::Int(3), &old);
            e.insert(t, KeyRef::Int(4), 1);
        }));
        assert!(!part(false, &|e, t| e.update(
            t,
            KeyRef::Encoded(&key),
            &mask,
            &old,
            1
        )));
        assert!(!part(true, &|e, t| {
            e.update(t, KeyRef::Int(3), &mask, &old, 1);
            e.update(t, KeyRef::Int(2), &mask, &old, 1);
        }));
        assert!(!part(true, &|e, t| {
            e.update(t, KeyRef::Int(3), &mask, &old, 1);
            let other = e.table(&Layout {
                table: "u".into(),
                ..layout(true, 1, 1)
            });
            e.update(other, KeyRef::Int(4), &mask, &old, 1);
        }));
    }

    #[test]
    fn an_insert_part_is_indexed_with_every_column_and_its_prints() {
        let mut e = Encoder::new(true);
        let ti = e.table(&layout(true, 1, 3));
        for (k, p) in [(5, 50), (9, 90), (200, 7)] {
            e.insert(ti, KeyRef::Int(k), p);
        }
        let part = index(&e.finish(), Vec::new()).unwrap().unwrap();
        assert_eq!(part.op, op::INSERT);
        assert_eq!(part.masks, vec![vec![0, 1, 2]]);
        let got: Vec<(i64, u64, u32)> = part
            .entries
            .iter()
            .map(|l| (l.key, l.print, l.mask))
            .collect();
        assert_eq!(got, [(5, 50, 0), (9, 90, 0), (200, 7, 0)]);
    }

    #[test]
    fn masks_repeat_for_free_and_composite_keys_keep_their_values() {
        let t = layout(false, 2, 10);
        let mut e = Encoder::new(true);
        let ti = e.table(&t);
        let key = enc(&[Value::Text("a".into()), Value::Integer(7)]);
        let old = enc(&[Value::Integer(1), Value::Null]);
        let mask = mask_of(10, [2, 9]);
        e.update(ti, KeyRef::Encoded(&key), &mask, &old, 42);
        let one = e.len();
        e.update(ti, KeyRef::Encoded(&key), &mask, &old, 43);
        assert_eq!(
            e.len() - one,
            one - mask.len(),
            "the second mask is not written"
        );
        e.insert(ti, KeyRef::Encoded(&key), 44);
        let rec = decode(&e.finish()).unwrap();
        assert!(rec.unique);
        assert_eq!(rec.entries.len(), 3);
        for entry in &rec.entries[..2] {
            assert_eq!(&entry.columns[..], &[2, 9]);
            assert_eq!(entry.key, vec![Val::Text(b"a".to_vec()), Val::Integer(7)]);
            assert_eq!(entry.old, vec![Val::Integer(1), Val::Null]);
        }
        assert_eq!(rec.entries[2].op, op::INSERT);
        assert_eq!(rec.entries[2].columns.len(), 10);
        assert_eq!(rec.entries[2].print, Some(44));
    }

    #[test]
    fn a_consecutive_rowid_update_costs_its_old_values_and_little_more() {
        let t = layout(true, 1, 2);
        let mut e = Encoder::new(true);
        let ti = e.table(&t);
        let mask = mask_of(2, [0, 1]);
        for k in 1..=1000 {
            let old = enc(&[Value::Real(k as f64 * 0.37), Value::Integer(0)]);
            e.update(ti, KeyRef::Int(k), &mask, &old, print(&old));
        }
        // head 1 + key delta 1 + REAL 9 + small integer 1 + print 6
        assert!(e.finish().len() <= 1000 * 18 + 40);
    }

    #[test]
    fn a_part_finished_midway_leaves_the_encoder_ready_for_the_next() {
        let t = layout(true, 1, 1);
        let mut e = Encoder::new(true);
        let ti = e.table(&t);
        let old = enc(&[Value::Integer(5)]);
        e.update(ti, KeyRef::Int(10), &mask_of(1, [0]), &old, 1);
        let first = decode(&e.finish()).unwrap();
        assert!(e.is_empty());
        e.update(ti, KeyRef::Int(11), &mask_of(1, [0]), &old, 2);
        let second = decode(&e.finish()).unwrap();
        assert_eq!(first.entries[0].key, vec![Val::Integer(10)]);
        assert_eq!(second.entries[0].key, vec![Val::Integer(11)]);
        assert_eq!(
            &second.entries[0].columns[..],
            &[0],
            "the mask is written again"
        );
        assert_eq!(second.tables, vec![t]);
    }

    #[test]
    fn keys_that_only_go_up_make_a_record_of_distinct_rows() {
        let t = layout(true, 1, 1);
        let old = enc(&[Value::Integer(5)]);
        let mask = mask_of(1, [0]);
        let mut e = Encoder::new(false);
        let ti = e.table(&t);
        for k in [-3, 0, 7] {
            e.update(ti, KeyRef::Int(k), &mask, &old, 1);
        }
        assert!(decode(&e.finish()).unwrap().unique);
        for k in [4, 9, 9] {
            e.update(ti, KeyRef::Int(k), &mask, &old, 1);
        }
        assert!(!decode(&e.finish()).unwrap().unique, "9 twice");
        let key = enc(&[Value::Integer(1)]);
        let mut e = Encoder::new(false);
        let ti = e.table(&layout(false, 1, 1));
        e.update(ti, KeyRef::Encoded(&key), &mask, &old, 1);
        assert!(
            !decode(&e.finish()).unwrap().unique,
            "other keys are not compared"
        );
    }

    #[test]
    fn different_values_have_different_prints() {
        let a = enc(&[Value::Integer(1)]);
        let b = enc(&[Value::Real(1.0)]);
        let c = enc(&[Value::Text("1".into())]);
        assert_ne!(print(&a), print(&b));
        assert_ne!(print(&a), print(&c));
        assert!(print(&a) < 1 << 48);
    }
}
