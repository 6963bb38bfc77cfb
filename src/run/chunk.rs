//! A chunked step: count the rows once, find where to resume, then walk the
//! table in key order one chunk (one transaction) at a time, sizing each
//! chunk from how long the last ones took.

use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Statement};

use super::count::Shape;
use super::fence::Fence;
use super::tx::Tx;
use super::{Counts, Runner, StepError, StepResult};
use crate::events::Level;
use crate::human::{shown, thousands};
use crate::lifecycle::Work;
use crate::plan::{Chunk, Key, Step, quote};
use crate::run::Resume;

/// The largest chunk adaptation will choose.
const MAX_CHUNK: u64 = 1_000_000;

/// The step's rows when it began.
struct Span {
    /// Rows with a key: what the walk will visit.
    total: u64,
    /// Rows whose key is NULL, which `BETWEEN` cannot reach.
    nulls: u64,
    /// The largest key: the walk stops there, so rows inserted above it
    /// during the run are not visited.
    max: Key,
}

/// One committed chunk.
struct Walked {
    hi: Key,
    rows: u64,
    changed: u64,
    /// The chunk's own work, between taking the lock and committing.
    work: Duration,
}

/// A step stopped by a cancel after one chunk and before the next: what
/// its chunks committed is kept, and none was under way to roll back.
const BETWEEN_CHUNKS: StepError = StepError::Cancelled { under_way: false };

pub(super) fn run(r: &Runner<'_>, step: &Step, chunk: &Chunk, resume: &Resume) -> StepResult {
    let t0 = Instant::now();
    let paused0 = r.governor.borrow().paused();
    let mut c = Counts::default();
    let end = resume.chunk_position(step).and_then(|p| p.end.as_ref());
    let span = span(r.conn, chunk, end).map_err(|e| r.fail(e, c))?;
    c.total = span.total;
    warn_if_nulls(r, step, chunk, span.nulls);
    let mut prev = resume_point(r, step, resume, &mut c);
    let resumed_from = c.done;
    let fixed = r.governor.borrow().batch_size();
    let mut sizer = Sizer::new(fixed.unwrap_or(chunk.size));
    announce(r, step, chunk, &c, sizer.size);
    warn_if_gaps(r, step, chunk);
    super::scatter::warn_if_scattered(r, step, chunk, c.total.saturating_sub(c.done));
    if matches!(span.max, Key::Null) {
        // Nothing to visit; still record the step as applied.
        let tx = Tx::begin(r.conn, r.nested).map_err(|e| r.fail(e, c))?;
        no_statement_ran(r, step).map_err(|e| r.fail(e, c))?;
        r.ended(step, 0).map_err(|e| (e, c))?;
        r.checkpoint
            .step_done(step, 0, 0)
            .map_err(|e| r.fail(e, c))?;
        r.commit(tx).map_err(|e| r.fail(e, c))?;
        return Ok(c);
    }
    let fence = fence_for(r, chunk, &span.max);
    let mut walk = Walk::new(r.conn, chunk, step, (c.total, fence)).map_err(|e| r.fail(e, c))?;
    loop {
        if r.cancel.is_cancelled() {
            return Err((BETWEEN_CHUNKS, c));
        }
        if !r.nested && r.governor.borrow_mut().before_chunk() {
            return Err((BETWEEN_CHUNKS, c));
        }
        let c0 = Instant::now();
        let under_way = r.cancel.under_way(Work::Chunk);
        let Some(w) = one_chunk(r, step, &mut walk, prev.as_ref(), &span.max, sizer.size, c)?
        else {
            break; // rows past the last chunk were deleted meanwhile
        };
        drop(under_way);
        let took = c0.elapsed();
        c.done += w.rows;
        c.changed += w.changed;
        c.total = c.total.max(c.done);
        let last = w.hi == span.max;
        if prev.is_none() && !last {
            walk.refresh(r.conn, step).map_err(|e| r.fail(e, c))?;
        }
        prev = Some(w.hi);
        let mut governor = r.governor.borrow_mut();
        // `--batch-size` fixes the size; a live command may fix or free it.
        match governor.batch_size() {
            Some(n) => sizer.size = n.max(1),
            None => sizer.observe(w.rows, w.work, took, governor.chunk_time()),
        }
        // The yield after this chunk is part of the pace; counting it now
        // keeps the first rate and ETA of a paced run honest.
        let pause = if last {
            Duration::ZERO
        } else {
            governor.rest_after(took)
        };
        let paused = governor.paused().saturating_sub(paused0);
        r.progress(step, c, t0, resumed_from, (pause, paused));
        if governor.after_chunk(took, step.index, last) {
            return Err((BETWEEN_CHUNKS, c));
        }
        if last {
            break;
        }
    }
    warn_if_unchanged(r, step, chunk, &c);
    Ok(c)
}

/// Rows whose key is NULL are never visited: no chunk's range holds them.
fn warn_if_nulls(r: &Runner<'_>, step: &Step, chunk: &Chunk, nulls: u64) {
    if nulls == 0 {
        return;
    }
    r.message(
        Some(step.index),
        Level::Warn,
        format!(
            "{} of {} {} a NULL {} and {} not visited",
            crate::human::rows(nulls),
            shown(&chunk.table),
            if nulls == 1 { "has" } else { "have" },
            shown(&chunk.key),
            if nulls == 1 { "is" } else { "are" },
        ),
    );
}

/// The last guard against a step that compares the wrong column with
/// `:lo`/`:hi`: a walk over rows that changed none of them is worth a
/// look, even when it was meant (a re-run of an idempotent update).
fn warn_if_unchanged(r: &Runner<'_>, step: &Step, chunk: &Chunk, c: &Counts) {
    if c.done > 0 && c.changed == 0 {
        r.message(
            Some(step.index),
            Level::Warn,
            format!(
                "visited {} rows of {} by {} and changed none; if that is not what you meant, check that the step compares {} with :lo and :hi",
                thousands(c.done),
                shown(&chunk.table),
                shown(&chunk.key),
                shown(&chunk.key_sql)
            ),
        );
    }
}

/// A walk by another key than the rowid binds each chunk's first key to
/// `:lo`, so a step that writes only other tables, bounded by this one's
/// keys, never reaches their rows whose key falls between two chunks.
fn warn_if_gaps(r: &Runner<'_>, step: &Step, chunk: &Chunk) {
    let own = step
        .writes
        .iter()
        .any(|t| t.eq_ignore_ascii_case(&chunk.table));
    if chunk.rowid || own || step.writes.is_empty() {
        return;
    }
    r.message(
        Some(step.index),
        Level::Warn,
        format!(
            "the step writes {} but walks {} by {}: its rows whose key falls between two chunks' keys are not reached; walk {} by rowid to reach them all",
            step.writes
                .iter()
                .map(|w| crate::plan::written_shown(w))
                .collect::<Vec<_>>()
                .join(", "),
            shown(&chunk.table),
            shown(&chunk.key),
            shown(&chunk.table)
        ),
    );
}

/// Where an earlier run of this step stopped (its last committed key),
/// with its counts taken over into `c`.
fn resume_point(r: &Runner<'_>, step: &Step, resume: &Resume, c: &mut Counts) -> Option<Key> {
    let pos = resume.chunk_position(step)?;
    (c.done, c.changed) = (pos.done, pos.changed);
    c.total = c.total.max(pos.done);
    r.message(
        Some(step.index),
        Level::Info,
        format!(
            "resuming after {} rows already committed ({} changed)",
            crate::human::thousands(pos.done),
            crate::human::thousands(pos.changed)
        ),
    );
    Some(pos.last_key.clone())
}

fn announce(r: &Runner<'_>, step: &Step, chunk: &Chunk, c: &Counts, first: u64) {
    r.message(
        Some(step.index),
        Level::Info,
        format!(
            "{} rows of {} to visit by {}, {}",
            thousands(c.total.saturating_sub(c.done)),
            shown(&chunk.table),
            shown(&chunk.key),
            if r.governor.borrow().batch_size().is_some() {
                format!("chunks of {}", thousands(first))
            } else {
                format!("adaptive chunks, the first of {}", thousands(first))
            },
        ),
    );
}

/// One chunk in its own transaction: check the checkpoint is where this
/// run left it, find the chunk's keys, do the work, record it, commit.
/// `None` when no rows are left. `c`: the step's counts before this chunk.
fn one_chunk(
    r: &Runner<'_>,
    step: &Step,
    walk: &mut Walk<'_>,
    prev: Option<&Key>,
    max: &Key,
    size: u64,
    c: Counts,
) -> Result<Option<Walked>, (StepError, Counts)> {
    let fail = |e| r.fail(e, c);
    let tx = if !r.nested && r.governor.borrow().exclusive() {
        Tx::begin_exclusive(r.conn)
    } else {
        Tx::begin(r.conn, r.nested)
    }
    .map_err(fail)?;
    let began = Instant::now();
    if r.checkpoint.moved(step, prev).map_err(fail)? {
        return Err((StepError::Sql(r.checkpoint.conflict()), c));
    }
    if prev.is_some()
        && let Some(why) = moved_under(r, step, walk).map_err(fail)?
    {
        return Err((StepError::Sql(why), c));
    }
    let (first, hi, rows) = walk
        .keys
        .next(prev, max, size)
        .map_err(|e| fail(unreadable_key(e, walk.chunk)))?;
    // A rowid is always an integer: see [`rowid_lo`]. Messages name the
    // chunk by its keys (`first`), not by a bound no row has.
    let lo = if walk.chunk.rowid {
        rowid_lo(prev)
    } else {
        first.clone()
    };
    if rows == 0 {
        no_statement_ran(r, step).map_err(fail)?;
        r.ended(step, c.changed).map_err(|e| (e, c))?;
        r.checkpoint
            .step_done(step, c.done, c.changed)
            .map_err(fail)?;
        r.commit(tx).map_err(fail)?;
        return Ok(None);
    }
    let (work, shape, fence) = (&mut walk.work, walk.shape, walk.fence.as_ref());
    let recorded = r
        .recorded(step, Some((&lo, &hi)), (c.changed, hi == *max), &mut || {
            execute(r, step, (work, shape), fence, (&lo, &hi))
        })
        .map_err(|e| in_chunk(fail(e), walk.chunk, &first, &hi))?;
    let Some((changed, expected)) = recorded else {
        // Its undo record must be made another way: again, from scratch.
        drop(tx);
        return one_chunk(r, step, walk, prev, max, size, c);
    };
    let (done, total_changed) = (c.done + rows, c.changed + changed);
    expected.map_err(|e| (e, c))?;
    if let Some(why) = strays(r.conn, walk, (&lo, &hi), (changed, rows)).map_err(fail)? {
        return Err(in_chunk((StepError::Sql(why), c), walk.chunk, &first, &hi)); // rolls back
    }
    if hi == *max {
        r.checkpoint.step_done(step, done, total_changed)
    } else {
        r.checkpoint
            .chunk_done((step, &hi, kept_end(walk.chunk, max)), done, total_changed)
    }
    .map_err(fail)?;
    if r.cancel.is_cancelled() {
        return Err((StepError::Cancelled { under_way: true }, c)); // the guard rolls back
    }
    let work = began.elapsed();
    r.commit(tx).map_err(fail)?;
    Ok(Some(Walked {
        hi,
        rows,
        changed,
        work,
    }))
}

/// Why a walk with a committed chunk must not go on after its last key,
/// if it must not: its table's rows were numbered anew (a `VACUUM`, the
/// table made again) or its key orders otherwise now, since that chunk.
fn moved_under(r: &Runner<'_>, step: &Step, walk: &Walk<'_>) -> rusqlite::Result<Option<String>> {
    if let Some(why) = r.checkpoint.renumbered(step)? {
        return Ok(Some(why));
    }
    Ok(walk.reordered(r.conn))
}

/// Where the walk ends, for its checkpoint, when a resume must end there
/// too: a rowid walk that inserts into its table, whose chunks inserted
/// rows past that end, which a resume must not visit.
fn kept_end<'k>(chunk: &Chunk, max: &'k Key) -> Option<&'k Key> {
    (chunk.inserts && chunk.rowid).then_some(max)
}

/// Before the `expect` of a step whose last chunk held no rows, or that
/// had none to visit: its statement did not run there, so `changes()`
/// answers 0, as after a chunk that changed nothing, not for the
/// checkpoint written after the chunk before (README, "expect").
fn no_statement_ran(r: &Runner<'_>, step: &Step) -> rusqlite::Result<()> {
    match step.expect.sql {
        Some(_) => super::count::forget_changes(r.conn),
        None => Ok(()),
    }
}

/// Why a chunk of a [`Chunk::contained`] step, bound to `lo` and `hi`,
/// that changed `changed` rows where the walk counted `rows` keys, changed
/// rows outside its chunk, if it did. The walk counts keys one by one, but
/// the key's collation may find more rows between its bounds (a NOCASE
/// column that a BINARY index keeps unique holds 'a' and 'A'), and a
/// rowid walk's first chunk reaches below the smallest key it counted: the
/// rows the bounds hold, counted only when `changed` passes `rows`, are
/// the ones the chunk may change. A [`Chunk::fenced`] step's chunk that
/// changed no more is checked row by row: by the rowids it wrote.
fn strays(
    conn: &Connection,
    walk: &Walk<'_>,
    (lo, hi): (&Key, &Key),
    (changed, rows): (u64, u64),
) -> rusqlite::Result<Option<String>> {
    let chunk = walk.chunk;
    if chunk.inserts && top_rowid_taken(conn, chunk)? {
        return Ok(Some(format!(
            "it {}; this chunk was rolled back",
            random_rowids(chunk)
        )));
    }
    if let (Some(fence), true, Key::Integer(hi)) = (&walk.fence, chunk.inserts, hi)
        && let Some(row) = fence.inserted_ahead(*hi)
    {
        return Ok(Some(inserted_ahead(chunk, row)));
    }
    if chunk.contained && changed > rows {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {} BETWEEN ?1 AND ?2",
            quote(&chunk.table),
            chunk.key_sql
        );
        let held: i64 = conn.query_row(&sql, rusqlite::params![lo, hi], |r| r.get(0))?;
        let held = rows.max(held.max(0) as u64);
        if changed > held {
            return Ok(Some(strayed(chunk, changed, held)));
        }
    }
    let Some(fence) = walk.fence.as_ref().filter(|_| chunk.fenced) else {
        return Ok(None);
    };
    if chunk.rowid {
        return Ok(fence.span().and_then(|span| outside(chunk, span, lo, hi)));
    }
    let stray = fence.outside(conn, chunk, (lo, hi), rows)?;
    Ok(stray.map(|k| stray_message(chunk, &super::expect::shown(&k))))
}

/// Why a chunk of a [`Chunk::fenced`] step, bound to `lo` and `hi`, that
/// wrote rowids from `min` to `max` in its table is rolled back, if it is.
fn outside(chunk: &Chunk, (min, max): (i64, i64), lo: &Key, hi: &Key) -> Option<String> {
    let (Key::Integer(lo), Key::Integer(hi)) = (lo, hi) else {
        return None;
    };
    let row = match (min < *lo, max > *hi) {
        (true, _) => min,
        (false, true) => max,
        (false, false) => return None,
    };
    Some(stray_message(chunk, &row.to_string()))
}

/// Whether the table a rowid walk inserts into (see [`Chunk::inserts`])
/// holds the largest rowid there is. SQLite then gives each new row a
/// random free rowid, where it would give the next one up, past the end
/// of the walk: a row inserted ahead of the walk would be visited by a
/// later chunk, and copied again.
pub(super) fn top_rowid_taken(conn: &Connection, chunk: &Chunk) -> rusqlite::Result<bool> {
    if !(chunk.inserts && chunk.rowid) {
        return Ok(false);
    }
    let sql = format!(
        "SELECT max({}) = {} FROM {}",
        chunk.key_sql,
        i64::MAX,
        quote(&chunk.table)
    );
    conn.query_row(&sql, [], |r| r.get::<_, Option<bool>>(0))
        .map(|top| top == Some(true))
}

/// What a [`top_rowid_taken`] table means for a step that inserts into it.
pub(super) fn random_rowids(chunk: &Chunk) -> String {
    format!(
        "inserts into {t}, which it walks by rowid, and {t} holds rowid {}, the largest there is: SQLite then gives new rows random rowids, some ahead of the walk, where a later chunk would visit them and insert from them again. Give the rows at the top of {t}'s rowids smaller ones, or make it a plain step",
        i64::MAX,
        t = shown(&chunk.table),
    )
}

/// Why a chunk of a rowid walk that inserted the row `rowid` into the
/// table it walks, ahead of the walk, is rolled back.
fn inserted_ahead(chunk: &Chunk, rowid: i64) -> String {
    format!(
        "it inserted the row of {t} whose rowid is {rowid}, ahead of the walk, which a later chunk would visit and insert from again (a copy of a copy); this chunk was rolled back. Give the rows it inserts into {t} rowids past its largest (leave the rowid to SQLite), or make it a plain step",
        t = shown(&chunk.table),
    )
}

/// Why a chunk that changed the row whose key is `row` (as shown), outside
/// its range, is rolled back.
fn stray_message(chunk: &Chunk, row: &str) -> String {
    format!(
        "it changed the row of {} whose {key} is {row}, outside its chunk, so it changes rows that other chunks change again; this chunk was rolled back. Compare {key} with :lo and :hi only as `{key} BETWEEN :lo AND :hi`, in an AND with the rest of the WHERE",
        shown(&chunk.table),
        key = shown(&chunk.key),
    )
}

/// Why a chunk of a [`Chunk::contained`] step that changed more rows than
/// it holds is rolled back.
fn strayed(chunk: &Chunk, changed: u64, rows: u64) -> String {
    format!(
        "it changed {} of {} in a chunk that holds {}, so it changes rows outside its chunk, which other chunks change again; this chunk was rolled back. Compare {key} with :lo and :hi only as `{key} BETWEEN :lo AND :hi`, in an AND with the rest of the WHERE",
        crate::human::rows(changed),
        shown(&chunk.table),
        thousands(rows),
        key = shown(&chunk.key),
    )
}

/// A chunk's failure, naming the chunk's keys: where to look for the row
/// that broke it ("NOT NULL constraint failed: t.v (in the chunk of id
/// 29001 to 30000)").
fn in_chunk(
    (err, c): (StepError, Counts),
    chunk: &Chunk,
    lo: &Key,
    hi: &Key,
) -> (StepError, Counts) {
    match err {
        StepError::Sql(why) => {
            let (lo, hi) = (super::expect::shown(lo), super::expect::shown(hi));
            (
                StepError::Sql(format!(
                    "{why} (in the chunk of {} {lo} to {hi})",
                    shown(&chunk.key)
                )),
                c,
            )
        }
        other => (other, c),
    }
}

/// Runs the step's statement on one chunk and returns the rows it changed.
/// Rows a `RETURNING` clause gives are read and dropped, as a plain step's
/// are (`execute` would refuse a statement that gives rows).
fn execute(
    r: &Runner<'_>,
    step: &Step,
    (work, shape): (&mut Statement<'_>, Shape),
    fence: Option<&Fence<'_>>,
    (lo, hi): (&Key, &Key),
) -> rusqlite::Result<u64> {
    if let Some(f) = fence {
        f.reset();
    }
    r.run_counted(step, (work, shape), Some((lo, hi)))
}

/// Counts the rows once, as the step begins. One query each: SQLite's fast
/// paths (the b-tree count of a bare `count(*)`, an index seek for `max`)
/// apply only to a query that asks for nothing else. Counting reads every
/// page of the table; through a memory map that is several times faster
/// than a read() per page. The map is only for these queries (which hold a
/// shared lock, so no SQLite writer can shrink the file under them): the
/// step's own SQL runs with SQLite's defaults. `end`: where the walk ends
/// when an earlier run of the step said so (see [`ended`]).
fn span(conn: &Connection, chunk: &Chunk, end: Option<&Key>) -> rusqlite::Result<Span> {
    if let Some(end) = end {
        return ended(conn, chunk, end).map_err(|e| unreadable_key(e, chunk));
    }
    let (table, key) = (quote(&chunk.table), &chunk.key_sql);
    let _ = conn.execute_batch("PRAGMA mmap_size = 2147418112");
    let counted = (|| {
        let one = |sql: String| conn.query_row(&sql, [], |r| r.get::<_, Key>(0));
        let int = |k: Key| {
            if let Key::Integer(n) = k {
                n.max(0) as u64
            } else {
                0
            }
        };
        let all = int(count_all(conn, &table)?);
        let with_key = if chunk.rowid {
            all
        } else {
            int(one(format!(
                "SELECT count(*) FROM {table} WHERE {key} IS NOT NULL"
            ))?)
        };
        let max = one(format!("SELECT max({key}) FROM {table}"))?;
        Ok(Span {
            total: with_key,
            nulls: all.saturating_sub(with_key),
            max,
        })
    })();
    let _ = conn.execute_batch("PRAGMA mmap_size = 0");
    counted.map_err(|e| unreadable_key(e, chunk))
}

/// The rows of a walk resumed where it must end at `end`, the largest key
/// when an earlier run began it: a rowid walk that inserts into its table,
/// whose chunks inserted rows past it, which the walk must not visit.
fn ended(conn: &Connection, chunk: &Chunk, end: &Key) -> rusqlite::Result<Span> {
    let (table, key) = (quote(&chunk.table), &chunk.key_sql);
    let one = |what: &str| {
        conn.query_row(
            &format!("SELECT {what} FROM {table} WHERE {key} <= ?1"),
            [end],
            |r| r.get::<_, Key>(0),
        )
    };
    let total = match one("count(*)")? {
        Key::Integer(n) => n.max(0) as u64,
        _ => 0,
    };
    Ok(Span {
        total,
        nulls: 0,
        max: one(&format!("max({key})"))?,
    })
}

/// `SELECT count(*)` of a table. SQLite counts a table's smallest index,
/// and wants its collations then, though counting compares nothing: for an
/// index ordered by one batchsse lacks (an application's own), it counts
/// the table itself.
fn count_all(conn: &Connection, table: &str) -> rusqlite::Result<Key> {
    let count = |sql: String| conn.query_row(&sql, [], |r| r.get::<_, Key>(0));
    count(format!("SELECT count(*) FROM {table}")).or_else(|e| {
        if crate::plan::missing_collation(&e) {
            count(format!("SELECT count(*) FROM {table} NOT INDEXED"))
        } else {
            Err(e)
        }
    })
}

/// Says what a text key that is not UTF-8 (bytes cast to text) means for
/// the walk, in place of the decoder's byte offsets: such a key cannot be
/// read, so neither bound to `:lo`/`:hi` nor recorded for a resume.
fn unreadable_key(e: rusqlite::Error, chunk: &Chunk) -> rusqlite::Error {
    use rusqlite::types::Type;
    match e {
        rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::FromSqlConversionFailure(_, Type::Text, _) => {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!(
                    "{}.{} holds text that is not valid UTF-8 (bytes cast to text), which the walk cannot carry from one chunk to the next; chunk by rowid, or fix those values",
                    shown(&chunk.table),
                    shown(&chunk.key)
                )),
            )
        }
        e => e,
    }
}

/// The step's prepared statements: the keyset queries and the work.
struct Walk<'c> {
    keys: Keyset<'c>,
    work: Statement<'c>,
    /// What `work` is, read as it was prepared (see [`Shape`]).
    shape: Shape,
    /// A fenced step's rowids written (see [`fence_for`]).
    fence: Option<Fence<'c>>,
    chunk: &'c Chunk,
    /// The schema's version when the statements were prepared.
    schema: i64,
    /// How the key orders, as the step began (see [`crate::plan::key_order`]);
    /// `None` for a rowid walk.
    order: Option<String>,
}

/// A rowid walk's `:lo`: one above the previous chunk's last key, the
/// smallest integer for the first. The chunks' ranges then leave no gap,
/// so a step on another table bounded by this one's keys (orders by a
/// `user_id` between `:lo` and `:hi`, walking users) also reaches the rows
/// whose key falls between two of this table's, such as the orders of a
/// deleted user, whatever the chunk sizes. The walked table has no rows
/// in a gap (its chunk begins at its first key after the last).
fn rowid_lo(prev: Option<&Key>) -> Key {
    match prev {
        Some(Key::Integer(p)) => Key::Integer(p.saturating_add(1)),
        _ => Key::Integer(i64::MIN),
    }
}

impl<'c> Walk<'c> {
    fn new(
        conn: &'c Connection,
        chunk: &'c Chunk,
        step: &Step,
        (total, fence): (u64, Option<Fence<'c>>),
    ) -> rusqlite::Result<Self> {
        let table = quote(&chunk.table);
        let dense = if chunk.rowid {
            dense_from(conn, &table, &chunk.key_sql, total)?
        } else {
            None
        };
        let work = conn.prepare(&step.sql)?;
        Ok(Walk {
            order: (!chunk.rowid).then(|| crate::plan::key_order(conn, &chunk.table, &chunk.key)),
            schema: schema_version(conn)?,
            keys: Keyset::new(conn, &table, &chunk.key_sql, dense)?.with_peers(chunk.peers),
            shape: Shape::of(&work),
            work,
            fence,
            chunk,
        })
    }

    /// Why the walk must not go on: its key orders otherwise than as the
    /// step began, its column made again with another type or collation
    /// by another process between two chunks, so the next chunk's keys
    /// after the last one would skip rows and take in rows done already.
    fn reordered(&self, conn: &Connection) -> Option<String> {
        let then = self.order.as_deref()?;
        let now = crate::plan::key_order(conn, &self.chunk.table, &self.chunk.key);
        (now != then).then(|| {
            format!(
                "{t} was made again while this step walked it by {k}, which orders otherwise now: by {} then, by {} now, so going on after the last key it committed would skip rows and change others again; the step stopped before its next chunk. What committed stays applied and checkpointed; make the column as it was to go on, or run the plan again with --force to start it over",
                crate::plan::order_shown(then),
                crate::plan::order_shown(&now),
                t = shown(&self.chunk.table),
                k = shown(&self.chunk.key),
            )
        })
    }

    /// Prepares the statements again if the schema changed since (the
    /// run's first chunk makes its checkpoint table), and drops those the
    /// connection keeps. SQLite would prepare them again by itself, but
    /// would leave the message of the error it met doing so on the
    /// connection for good, and every call the undo record's pre-update
    /// hook then makes into SQLite would pay to clear it (about 2.5% of a
    /// recorded run's work).
    fn refresh(&mut self, conn: &'c Connection, step: &Step) -> rusqlite::Result<()> {
        let now = schema_version(conn)?;
        if now != self.schema {
            conn.flush_prepared_statement_cache();
            let table = quote(&self.chunk.table);
            let dense = self.keys.dense_min;
            self.keys =
                Keyset::new(conn, &table, &self.chunk.key_sql, dense)?.with_peers(self.chunk.peers);
            self.work = conn.prepare(&step.sql)?;
            self.shape = Shape::of(&self.work);
            self.schema = now;
        }
        Ok(())
    }
}

/// The hook a [`Chunk::fenced`] step's chunks are checked by, unless a
/// foreign key of the walked table to itself may cascade to rows of other
/// chunks (the authorizer takes its writes for the statement's own); for
/// a rowid walk whose step inserts into its table, the one that sees a
/// row inserted ahead of the walk, up to its `end`. Over the undo
/// recording's update hook, where it has one.
fn fence_for<'w>(r: &'w Runner<'_>, chunk: &Chunk, end: &Key) -> Option<Fence<'w>> {
    let beneath = r.recorder.as_ref().and_then(|rec| rec.update_hook());
    if let (true, true, Key::Integer(end)) = (chunk.inserts, chunk.rowid, end) {
        return Some(Fence::install_for_inserts(
            r.conn,
            beneath,
            &chunk.table,
            *end,
        ));
    }
    if !chunk.fenced || super::fence::cascades(r.conn, &chunk.table) {
        return None;
    }
    if chunk.rowid {
        return Some(Fence::install(r.conn, beneath, &chunk.table, None));
    }
    // None for a WITHOUT ROWID table, whose writes the hook does not see.
    let rowid = super::escape::free_rowid_name(r.conn, &chunk.table)?;
    Some(Fence::install(r.conn, beneath, &chunk.table, Some(rowid)))
}

fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA main.schema_version", [], |r| r.get(0))
}

/// Chooses each chunk's size: the plan's (or `--batch-size`) first; then,
/// unless `--batch-size` fixed it, whatever makes a chunk take about
/// `--chunk-time` at the rate seen so far.
struct Sizer {
    size: u64,
    /// Moving average of rows per second of a chunk's own work.
    rate: Option<f64>,
    /// Moving average, in seconds, of what a chunk costs whatever its
    /// size: the wait for the lock and the commit (an fsync).
    fixed: Option<f64>,
}

impl Sizer {
    fn new(first: u64) -> Sizer {
        Sizer {
            size: first.max(1),
            rate: None,
            fixed: None,
        }
    }

    /// A chunk of `rows` took `took`, of which `work` between taking the
    /// lock and committing; `target`: the chunk time the governor wants
    /// now. The rows get what the fixed cost leaves of it (the same size
    /// as rows over the whole time would give, once it settles), but never
    /// less than half: a commit slower than the target (an fsync on a busy
    /// disk) would otherwise shrink every chunk to one row, a commit per
    /// row, which holds the lock far longer in all.
    fn observe(&mut self, rows: u64, work: Duration, took: Duration, target: Duration) {
        let fixed = took.saturating_sub(work).as_secs_f64();
        let fixed = self.fixed.map_or(fixed, |a| 0.3 * fixed + 0.7 * a);
        self.fixed = Some(fixed);
        let target = target.as_secs_f64();
        let for_rows = Duration::from_secs_f64((target - fixed).max(target / 2.0));
        (self.size, self.rate) = next_size(self.size, rows, work, self.rate, for_rows);
    }
}

/// The next chunk's size after one of `rows` took `took`: what a moving
/// average of rows/s (the newest chunk weighing 0.3, as pt-online-schema-
/// change does) says fills `target`, growing at most 4× a chunk and capped
/// at [`MAX_CHUNK`]. Returns the size and the new average.
fn next_size(
    size: u64,
    rows: u64,
    took: Duration,
    avg: Option<f64>,
    target: Duration,
) -> (u64, Option<f64>) {
    let rate = rows as f64 / took.as_secs_f64().max(1e-6);
    let avg = avg.map_or(rate, |a| 0.3 * rate + 0.7 * a);
    let want = (avg * target.as_secs_f64()) as u64;
    (
        want.clamp(1, size.saturating_mul(4).min(MAX_CHUNK)),
        Some(avg),
    )
}

/// Finds each chunk's keys by keyset pagination. `hi` is found with one
/// `LIMIT 1 OFFSET size-1` probe from the previous chunk's last key: SQLite
/// steps over the keys without decoding rows, several times cheaper than
/// aggregating the chunk. Needs a unique key, which the plan checks.
struct Keyset<'c> {
    /// The smallest rowid when the rowids are dense (`max - min + 1` equals
    /// the row count): chunk boundaries are then plain arithmetic.
    dense_min: Option<i64>,
    /// `[first chunk, later chunks]` of each query.
    lo: [rusqlite::Statement<'c>; 2],
    hi: [rusqlite::Statement<'c>; 2],
    count: [rusqlite::Statement<'c>; 2],
    /// The key may hold rows its comparisons find equal (see
    /// [`Chunk::peers`]): a chunk's rows are counted, not stepped.
    peers: bool,
}

impl<'c> Keyset<'c> {
    fn new(
        conn: &'c Connection,
        table: &str,
        key: &str,
        dense_min: Option<i64>,
    ) -> rusqlite::Result<Self> {
        // ?1 is the previous chunk's last key (unused for the first chunk),
        // ?2 the largest key when the step began.
        let from = [
            format!("{key} IS NOT NULL AND ?1 IS NULL"),
            format!("{key} > ?1"),
        ];
        let prep = |i: usize, what: &str, tail: &str| {
            conn.prepare(&format!(
                "SELECT {what} FROM {table} WHERE {} AND {key} <= ?2 {tail}",
                from[i]
            ))
        };
        let order = format!("ORDER BY {key}");
        Ok(Keyset {
            dense_min,
            lo: [
                prep(0, key, &format!("{order} LIMIT 1"))?,
                prep(1, key, &format!("{order} LIMIT 1"))?,
            ],
            hi: [
                prep(0, key, &format!("{order} LIMIT 1 OFFSET ?3"))?,
                prep(1, key, &format!("{order} LIMIT 1 OFFSET ?3"))?,
            ],
            count: [prep(0, "count(*)", "")?, prep(1, "count(*)", "")?],
            peers: false,
        })
    }

    fn with_peers(self, peers: bool) -> Self {
        Keyset { peers, ..self }
    }

    /// The next chunk after `prev`: `(lo, hi, rows)`, rows = 0 at the end.
    fn next(
        &mut self,
        prev: Option<&Key>,
        max: &Key,
        size: u64,
    ) -> rusqlite::Result<(Key, Key, u64)> {
        if let (Some(min), Key::Integer(max)) = (self.dense_min, max) {
            let lo = match prev {
                None => Some(min),
                Some(Key::Integer(p)) => p.checked_add(1),
                Some(_) => None,
            };
            let Some(lo) = lo.filter(|lo| lo <= max) else {
                return Ok((Key::Null, Key::Null, 0));
            };
            let span = i64::try_from(size).unwrap_or(i64::MAX).max(1) - 1;
            let hi = lo.saturating_add(span).min(*max);
            return Ok((Key::Integer(lo), Key::Integer(hi), (hi - lo + 1) as u64));
        }
        let i = usize::from(prev.is_some());
        let prev = prev.unwrap_or(&Key::Null);
        let lo: Option<Key> = self.lo[i]
            .query_row(rusqlite::params![prev, max], |r| r.get(0))
            .optional()?;
        let Some(lo) = lo else {
            return Ok((Key::Null, Key::Null, 0));
        };
        let offset = size.saturating_sub(1).min(i64::MAX as u64) as i64;
        let hi: Option<Key> = self.hi[i]
            .query_row(rusqlite::params![prev, max, offset], |r| r.get(0))
            .optional()?;
        match hi {
            // The rows equal to `hi` past the `size` stepped over are the
            // chunk's too: its `BETWEEN` holds them, the next starts after.
            Some(hi) if self.peers => {
                let n: i64 = self.count[i].query_row(rusqlite::params![prev, hi], |r| r.get(0))?;
                Ok((lo, hi, n.max(0) as u64))
            }
            Some(hi) => Ok((lo, hi, size)),
            // Fewer than `size` keys are left: the chunk runs to the end.
            None => {
                let n: i64 = self.count[i].query_row(rusqlite::params![prev, max], |r| r.get(0))?;
                Ok((lo, max.clone(), n.max(0) as u64))
            }
        }
    }
}

/// For a rowid walk (`key` names the real rowid), the smallest rowid if
/// the rowids have no gaps. Rows
/// deleted during the run then still count as visited, which only shows in
/// `done`; every key in range is covered either way.
fn dense_from(
    conn: &Connection,
    table: &str,
    key: &str,
    total: u64,
) -> rusqlite::Result<Option<i64>> {
    if total == 0 {
        return Ok(None);
    }
    // Two subqueries, so each is an index seek rather than one full scan.
    let (min, max): (Option<i64>, Option<i64>) = conn.query_row(
        &format!("SELECT (SELECT min({key}) FROM {table}), (SELECT max({key}) FROM {table})"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match (min, max) {
        (Some(lo), Some(hi))
            if hi.checked_sub(lo).and_then(|d| d.checked_add(1)) == i64::try_from(total).ok() =>
        {
            Some(lo)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_commit_slower_than_the_target_leaves_the_rows_half_of_it() {
        // 1M rows/s of work, and a commit of 15 ms against a target of
        // 10 ms: the rows get 5 ms, not a size that shrinks to one row.
        let mut s = Sizer::new(1000);
        for _ in 0..40 {
            let work = Duration::from_secs_f64(s.size as f64 / 1e6);
            s.observe(s.size, work, work + 15 * MS, 10 * MS);
        }
        assert_eq!(s.size, 5000);
        // A commit of 1 ms: the rows get the other 9 ms, where sizing by
        // the whole time settled too (a chunk then takes the target time).
        let mut s = Sizer::new(1000);
        for _ in 0..40 {
            let work = Duration::from_secs_f64(s.size as f64 / 1e6);
            s.observe(s.size, work, work + MS, 10 * MS);
        }
        assert_eq!(s.size, 9000);
    }

    #[test]
    fn chunks_grow_at_most_fourfold_towards_the_target_time() {
        // 1,000 rows in 1 ms is 1M rows/s: 250 ms would be 250,000 rows.
        let (size, avg) = next_size(1000, 1000, MS, None, 250 * MS);
        assert_eq!(size, 4000);
        assert_eq!(avg, Some(1_000_000.0));
        let mut s = (size, avg);
        for _ in 0..10 {
            s = next_size(
                s.0,
                s.0,
                Duration::from_secs_f64(s.0 as f64 / 1e6),
                s.1,
                250 * MS,
            );
        }
        assert_eq!(s.0, 250_000, "settles where a chunk takes the target time");
    }

    #[test]
    fn slow_chunks_shrink_at_once_and_sizes_stay_in_bounds() {
        // 10,000 rows took 1 s: 10,000 rows/s, 250 ms is 2,500 rows.
        assert_eq!(next_size(10_000, 10_000, 1000 * MS, None, 250 * MS).0, 2500);
        // The average remembers: one fast chunk after slow ones moves it 30%.
        let (_, avg) = next_size(100, 100, 1000 * MS, Some(100.0), 250 * MS);
        assert_eq!(avg, Some(100.0));
        let (_, avg) = next_size(100, 1000, 1000 * MS, Some(100.0), 250 * MS);
        assert!((avg.unwrap() - 370.0).abs() < 1e-9);
        // Never below one row, never above the cap.
        assert_eq!(next_size(1, 1, Duration::from_secs(3600), None, MS).0, 1);
        let huge = next_size(MAX_CHUNK, MAX_CHUNK, MS, None, Duration::from_secs(60));
        assert_eq!(huge.0, MAX_CHUNK);
        // A zero-length measurement is not a division by zero.
        assert_eq!(next_size(10, 10, Duration::ZERO, None, MS).0, 40);
    }
}
