//! A step that writes only TEMP tables (a view, a trigger, `CREATE TEMP
//! TABLE todo AS SELECT id FROM orders WHERE status = 'pending'`) is made
//! again at every resume: its tables went with the connection of the run
//! that made them. Made again from the file as it is now, after the steps
//! that ran since, it may hold other rows (the to-do list without the
//! rows done, the average of values a later step has already changed in
//! part), and the rest of the plan would go on from them. So the
//! checkpoint keeps a digest of what the step made, and the file the rows
//! of its tables ([`kept`]); a resume that makes something else puts
//! those rows back, and stops there, before anything more is written,
//! only where it cannot. The digest is of what the step itself made or
//! changed: the TEMP tables an earlier step made (one edited since, or
//! one that also wrote the file and so is not done again) are not the
//! step's.

use std::collections::BTreeMap;

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::undo::codec::{encode, print};
use super::undo::is_own_temp;
use super::{Runner, StepError};
use crate::events::Level;
use crate::human::quoted;
use crate::plan::{Step, quote};

pub mod kept;

/// Each object of the TEMP schema (batchsse's own left out) by type and
/// name, with the digest of its SQL and, for a table, of its rows.
pub(super) type Objects = BTreeMap<(String, String), u64>;

/// The TEMP schema before a TEMP-only `step` runs, for [`step_done`] to
/// tell what the step made; `None` for any other step, or without a
/// checkpoint.
pub(super) fn before(r: &Runner<'_>, step: &Step) -> rusqlite::Result<Option<Objects>> {
    if !step.temp_only || !r.checkpoint.is_on() {
        return Ok(None);
    }
    objects(r.conn).map(Some)
}

/// What a TEMP-only step made: the digest its checkpoint row keeps, and
/// the tables whose rows to keep (none where the earlier run's are kept
/// already, and put back).
pub(super) struct Made {
    digest: i64,
    keep: Option<Vec<String>>,
    /// The digest the checkpoint held when the step ran, for [`unmoved`].
    seen: Option<i64>,
    /// The earlier run's rows were put back in place of those made.
    put_back: bool,
}

/// What is left of a TEMP-only step's failed `expected`ations once
/// [`made`] made `m`: nothing where the earlier run's rows were put back.
/// They failed on the rows made again for the resume (a to-do list less
/// the rows done), which are gone; the rows put back are those they held
/// for, as the digest the step's checkpoint row names, written once they
/// held, says.
pub(super) fn checked(m: &Made, expected: Result<(), StepError>) -> Result<(), StepError> {
    match m.put_back {
        true => Ok(()),
        false => expected,
    }
}

/// Records `step` done, in its transaction, if its `expected`ations
/// held; for a TEMP-only step (whose TEMP schema was `before` it ran) as
/// [`made`], [`checked`] and [`record`] do. Otherwise: why the step fails
/// (its transaction rolled back, so the earlier digest and rows stay for
/// the next try).
pub(super) fn step_done(
    r: &Runner<'_>,
    step: &Step,
    changed: u64,
    (before, expected): (Option<Objects>, Result<(), StepError>),
) -> rusqlite::Result<Result<(), StepError>> {
    let Some(before) = before else {
        if expected.is_ok() {
            r.checkpoint.step_done(step, changed, changed)?;
        }
        return Ok(expected);
    };
    Ok(match made(r, step, &before)? {
        Ok(m) => match checked(&m, expected) {
            Ok(()) => Ok(record(r, step, changed, m, &mut || Ok(()))?),
            failed => failed,
        },
        Err(why) => expected.and(Err(StepError::Sql(why))),
    })
}

/// What the TEMP-only `step` made, its TEMP schema having been `before`
/// it ran; where an earlier run's made something else, with that run's
/// rows put back. Writes only TEMP tables. Where they cannot be put back:
/// why the step fails.
pub(super) fn made(
    r: &Runner<'_>,
    step: &Step,
    before: &Objects,
) -> rusqlite::Result<Result<Made, String>> {
    if let Some((writer, table)) = kept::changed_by(r.conn, &r.plan.name, step.index)? {
        return Ok(Err(changed_later(r, writer, &table)));
    }
    let after = objects(r.conn)?;
    let digest = digest(before, &after);
    let keep = Some(tables_made(before, &after));
    let seen = r.checkpoint.setup_digest(step)?;
    Ok(Ok(match seen {
        None => {
            if r.made_anew.get().is_none() {
                r.made_anew.set(Some(step.index));
            }
            Made {
                digest,
                keep,
                seen,
                put_back: false,
            }
        }
        Some(was) if was == digest => Made {
            digest,
            keep: None,
            seen,
            put_back: false,
        },
        Some(_) if let Some(edited) = r.made_anew.get() => {
            return Ok(Err(made_on_an_edit(r, edited)));
        }
        Some(was) => match kept::restore(r.conn, &r.plan.name, step.index)? {
            Some(rows) if self::digest(before, &objects(r.conn)?) == was => {
                put_back(r, step, rows);
                Made {
                    digest: was,
                    keep: None,
                    seen,
                    put_back: true,
                }
            }
            _ => return Ok(Err(remade_otherwise(r, step))),
        },
    }))
}

/// Whether the checkpoint still holds for `step` what it held when the
/// step ran, as [`made`] saw it. A step that read the file in one
/// transaction and writes in the next must ask: another run of the plan
/// may have written its own rows meanwhile, which this one's would
/// replace under the run that goes on from them.
pub(super) fn unmoved(r: &Runner<'_>, step: &Step, m: &Made) -> rusqlite::Result<bool> {
    Ok(r.checkpoint.setup_digest(step)? == m.seen)
}

/// Writes in the file what [`made`] says: the rows of the step's TEMP
/// tables, with `between` called after each part (to commit it), then
/// the step's checkpoint row.
pub(super) fn record(
    r: &Runner<'_>,
    step: &Step,
    changed: u64,
    m: Made,
    between: &mut dyn FnMut() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if let Some(tables) = &m.keep {
        kept::keep(r.conn, &r.plan.name, step.index, tables, between)?;
    }
    // Made again for a resume, as the earlier run made it (its rows put
    // back where these differ): the plan goes on from the rowid that run
    // left, which the row written again keeps for the next resume, not
    // from what this run's statements left.
    if m.seen.is_some() {
        r.user_rowid.set(r.checkpoint.rowid_after(step)?);
    }
    r.checkpoint.setup_done(step, changed, m.digest)
}

/// The TEMP tables made or changed from `before` to `after`.
fn tables_made(before: &Objects, after: &Objects) -> Vec<String> {
    after
        .iter()
        .filter(|(id, d)| id.0 == "table" && before.get(*id) != Some(*d))
        .map(|((_, name), _)| name.clone())
        .collect()
}

fn put_back(r: &Runner<'_>, step: &Step, rows: u64) {
    r.message(
        Some(step.index),
        Level::Info,
        format!(
            "step {} ({}), made again for this resume from the file as it is now, held other rows than the earlier run's; the earlier run's {} row(s), kept in the file, were put back, and the plan goes on from them",
            step.index + 1,
            quoted(&step.name),
            crate::human::thousands(rows)
        ),
    );
}

/// Why a TEMP-only step stops where it makes other rows than the
/// earlier run's after step `edited` was made anew: the rows it kept were made from
/// what that step made before, and put back they would undo the edit.
fn made_on_an_edit(r: &Runner<'_>, edited: usize) -> String {
    let e = &r.plan.steps[edited];
    format!(
        "made again for this resume, its TEMP tables hold other rows than the earlier run's did, and step {} ({}), edited since that run, was made as it says now: the rows this step kept were made from what step {} made before the edit, so they are not put back, and the run stopped here, nothing more written. Edit this step too (it is then made as it says now), or start the plan over with `batchsse checkpoint clear`",
        e.index + 1,
        quoted(&e.name),
        e.index + 1
    )
}

/// Why a TEMP-only step stops on a resume where step `writer`, which
/// writes the file too, changed its TEMP `table` in the earlier run.
fn changed_later(r: &Runner<'_>, writer: usize, table: &str) -> String {
    let w = r
        .plan
        .steps
        .get(writer)
        .map_or(String::new(), |w| quoted(&w.name));
    format!(
        "step {} ({w}), which also writes the file, changed the TEMP table {} this step made, in the earlier run: it is not done again on a resume, so the table, made again, would not hold that change, and the rest of the plan would go on from other rows. The run stopped here, nothing more written. Start the plan over (`batchsse checkpoint clear`, or --force) if its steps may be applied again; and give such a change to a TEMP table a TEMP-only step of its own",
        writer + 1,
        quoted(table)
    )
}

fn remade_otherwise(r: &Runner<'_>, step: &Step) -> String {
    let later: Vec<String> = r
        .plan
        .steps
        .iter()
        .skip(step.index + 1)
        .filter(|s| !s.temp_only)
        .map(|s| format!("{} ({})", s.index + 1, quoted(&s.name)))
        .collect();
    let by = match later.is_empty() {
        true => String::new(),
        false => format!("the steps after it (step {}) or ", later.join(", step ")),
    };
    format!(
        "made again for this resume, its TEMP tables hold other rows than the earlier run's did: it reads what {by}another program changed since, or something that differs at every run (the time, random()). Going on would change the rest of the rows from other values, so the run stopped here and nothing more was written. Make those TEMP tables from what the later steps leave alone, or from values written into the step (a TEMP-only step may be edited before a resume); edited, it is made again as it says now",
    )
}

/// A digest of what changed from `before` to `after`: the objects made
/// or changed, with their digests, and the names of those dropped.
fn digest(before: &Objects, after: &Objects) -> i64 {
    let mut all: u64 = 0;
    for (id, d) in after {
        if before.get(id) != Some(d) {
            all = all.rotate_left(7) ^ print(&named(id, "made")) ^ d;
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        all = all.rotate_left(7) ^ print(&named(id, "dropped"));
    }
    all as i64
}

fn named((kind, name): &(String, String), what: &str) -> Vec<u8> {
    encode([kind, name, what].map(|t| ValueRef::Text(t.as_bytes())))
}

/// The TEMP schema's objects (batchsse's own and SQLite's left out, by
/// their exact names: a user's may begin `batchsse` or `sqlite`), each
/// with an order-free digest of its SQL and its rows.
fn objects(conn: &Connection) -> rusqlite::Result<Objects> {
    let mut stmt = conn.prepare(
        "SELECT type, name, coalesce(sql, '') FROM temp.sqlite_schema
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )?;
    let found: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut all = Objects::new();
    let theirs = found.into_iter().filter(|(_, n, _)| !is_own_temp(n));
    for (kind, name, sql) in theirs {
        let mut d = print(&encode([ValueRef::Text(sql.as_bytes())]));
        if kind == "table" {
            d = d.rotate_left(7) ^ rows_digest(conn, &name)?;
        }
        all.insert((kind, name), d);
    }
    Ok(all)
}

/// The count and the wrapping sum of the fingerprints of a TEMP table's
/// rows: the same rows in any order give the same.
fn rows_digest(conn: &Connection, table: &str) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM temp.{}", quote(table)))?;
    let n = stmt.column_count();
    let mut rows = stmt.query([])?;
    let (mut count, mut sum) = (0u64, 0u64);
    while let Some(row) = rows.next()? {
        let values: Vec<ValueRef<'_>> = (0..n).map(|i| row.get_ref(i)).collect::<Result<_, _>>()?;
        sum = sum.wrapping_add(print(&encode(values)));
        count += 1;
    }
    Ok(sum ^ count.rotate_left(48))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_rows_in_any_order_give_the_same_digest_other_rows_another() {
        let conn = Connection::open_in_memory().unwrap();
        let made = |sql: &str| {
            conn.execute_batch("DROP TABLE IF EXISTS temp.x").unwrap();
            let before = objects(&conn).unwrap();
            conn.execute_batch(sql).unwrap();
            digest(&before, &objects(&conn).unwrap())
        };
        let a = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (1), ('two'), (NULL);");
        let b = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (NULL), (1), ('two');");
        let c = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (1), ('two'), (3.0);");
        let d = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (1), ('two');");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        conn.execute_batch("CREATE TEMP TABLE batchsse_stage(v); CREATE TEMP TABLE other(v)")
            .unwrap();
        let e = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (1), ('two');");
        assert_eq!(
            e, d,
            "batchsse's own, and what was there before, are left out"
        );
    }
}
