//! A step that writes only TEMP tables (a view, a trigger, `CREATE TEMP
//! TABLE avgv AS SELECT avg(v) FROM t`) is made again at every resume:
//! its tables went with the connection of the run that made them. Made
//! again from the file as it is now, after the steps that ran since, it
//! may hold other rows (the average of values a later step has already
//! changed in part), and the rest of the plan would go on from them,
//! finished ok with rows changed by other values. So the checkpoint keeps
//! a digest of what the step made, and a resume that makes something else
//! stops there, before anything more is written.

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::Runner;
use super::undo::codec::{encode, print};
use crate::human::quoted;
use crate::plan::{Step, quote};

/// Records `step` done, in its transaction; for a TEMP-only step with
/// the digest of what it made, after comparing that with what the earlier
/// run's made, if there was one. Made otherwise: why the step fails (its
/// transaction rolled back, so the earlier digest stays for the next try).
pub(super) fn step_done(
    r: &Runner<'_>,
    step: &Step,
    changed: u64,
) -> rusqlite::Result<Option<String>> {
    if !step.temp_only || !r.checkpoint.is_on() {
        r.checkpoint.step_done(step, changed, changed)?;
        return Ok(None);
    }
    let made = digest(r.conn)?;
    if r.checkpoint
        .setup_digest(step)?
        .is_some_and(|was| was != made)
    {
        return Ok(Some(remade_otherwise(r, step)));
    }
    r.checkpoint.setup_done(step, changed, made)?;
    Ok(None)
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
    format!(
        "made again for this resume, its TEMP tables hold other rows than the earlier run's did: it reads what the steps after it (step {}) have changed since. Going on would change the rest of their rows from other values, so the run stopped here and nothing more was written. Make those TEMP tables from what the later steps leave alone, or from values written into the step (a TEMP-only step may be edited before a resume); edited, it is made again as it says now",
        later.join(", step "),
    )
}

/// An order-free digest of the TEMP schema (batchsse's own objects left
/// out) and every row of its tables.
fn digest(conn: &Connection) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare(
        "SELECT type, name, coalesce(sql, '') FROM temp.sqlite_schema
         WHERE name NOT LIKE 'batchsse%' AND name NOT LIKE 'sqlite_%' ORDER BY type, name",
    )?;
    let objects: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut all: u64 = 0;
    for (kind, name, sql) in &objects {
        let named = encode([kind, name, sql].map(|t| ValueRef::Text(t.as_bytes())));
        all = all.rotate_left(7) ^ print(&named);
        if kind == "table" {
            all = all.rotate_left(7) ^ rows_digest(conn, name)?;
        }
    }
    Ok(all as i64)
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
            conn.execute_batch(&format!("DROP TABLE IF EXISTS temp.x; {sql}"))
                .unwrap();
            digest(&conn).unwrap()
        };
        let a = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (1), ('two'), (NULL);");
        let b = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (NULL), (1), ('two');");
        let c = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (1), ('two'), (3.0);");
        let d = made("CREATE TEMP TABLE x(v); INSERT INTO x VALUES (1), ('two');");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        conn.execute_batch("CREATE TEMP TABLE batchsse_undo_stage(v)")
            .unwrap();
        assert_eq!(digest(&conn).unwrap(), d, "batchsse's own are left out");
    }
}
