//! Telling whether a table whose rows the record finds by their bare
//! rowid was made anew since: copied into a new table, the old one dropped
//! and the new one renamed (SQLite's way to change a column: Django,
//! Alembic's batch mode and Rails migrate so), or dropped and created
//! again around a backup of its rows (SQLite's FAQ). Either numbers its
//! rows anew, and an undo that went by the old rowids would put each
//! row's old values into another row, whose fingerprint a constant `SET`
//! matches.
//!
//! Told by the table's row in `sqlite_schema`: the rowid of that row is
//! kept, in the run's probe row, with the first part recorded under it.
//! Creating a table gives its row a rowid above every other; `ALTER
//! TABLE` (renaming the table or a column, adding or dropping one) and
//! auto-vacuum moving its b-tree update the row in place; a `VACUUM`, a
//! `VACUUM INTO` or a `.dump` copy writes the rows again in their order,
//! from 1, which gives none a higher rowid. So a higher rowid than the
//! one kept tells a table made anew, in any file. Its b-tree root page
//! cannot: a table made again after the drop takes the dropped one's root
//! page back from the freelist, and a `VACUUM INTO` gives every table a
//! new one while it keeps every rowid. (The root page is still kept,
//! second in each entry, as the first records of this kind kept it.)
//!
//! Not told: a table dropped and made again when it and its indexes were
//! the last rows of `sqlite_schema` (its new row takes the same rowid),
//! and a migration followed by a `VACUUM` that moved the table's row back
//! down.

use rusqlite::Connection;

use super::store::{self, PROBE};

/// After part `id` of `run` is written (in its transaction), with `rec`
/// its record: the rowid of the `sqlite_schema` row of each table it
/// finds by bare rowid (with its root page), kept with `id` where it
/// differs from the last one kept.
pub fn note(conn: &Connection, run: &str, id: i64, rec: &[u8]) -> rusqlite::Result<()> {
    for table in store::bare_rowid_tables(rec)? {
        conn.prepare_cached(&format!(
            "UPDATE {PROBE} SET roots = json_insert(ifnull(roots, '[]'), '$[#]', json_array(?2, r.root, ?3, r.row))
             FROM (SELECT rootpage AS root, rowid AS row FROM main.sqlite_schema
                   WHERE type = 'table' AND name = ?2 COLLATE NOCASE) AS r
             WHERE run = ?1 AND r.row IS NOT (
                 SELECT value ->> 3 FROM json_each(ifnull(roots, '[]'))
                 WHERE value ->> 0 = ?2 ORDER BY key DESC LIMIT 1)"
        ))?
        .execute(rusqlite::params![run, table, id])?;
    }
    Ok(())
}

/// The tables of part `id` of `run` (record `rec`) made anew since it was
/// recorded: their `sqlite_schema` row now has a higher rowid than the
/// one kept for the part.
pub fn in_part(conn: &Connection, run: &str, id: i64, rec: &[u8]) -> rusqlite::Result<Vec<String>> {
    let tables: Vec<String> = store::bare_rowid_tables(rec)?.collect();
    if tables.is_empty() || !asked(conn)? {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for table in tables {
        if moved(conn, run, &table, Some(id))? {
            found.push(table);
        }
    }
    Ok(found)
}

/// The tables `run` found by bare rowid that were made anew since its last
/// part of each was recorded.
pub fn since_run(conn: &Connection, run: &str) -> rusqlite::Result<Vec<String>> {
    if !asked(conn)? {
        return Ok(Vec::new());
    }
    let tables: Vec<String> = conn
        .prepare(&format!(
            "SELECT DISTINCT value ->> 0 FROM {PROBE}, json_each(ifnull(roots, '[]')) WHERE run = ?1"
        ))?
        .query_map([run], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut found = Vec::new();
    for table in tables {
        if moved(conn, run, &table, None)? {
            found.push(table);
        }
    }
    Ok(found)
}

/// Whether the probe row can tell: it has the column, which a batchsse
/// from before it did not make (its records keep no rows to compare).
fn asked(conn: &Connection) -> rusqlite::Result<bool> {
    crate::run::db::has_column(conn, PROBE, "roots")
}

/// Whether `table`'s `sqlite_schema` row now has a higher rowid than the
/// one kept for part `upto` (the last one kept at or before it), or for
/// the run's last part (`None`). A table not there now is another error's
/// to tell; an entry from before the rowid was kept (no fourth element)
/// tells nothing.
fn moved(conn: &Connection, run: &str, table: &str, upto: Option<i64>) -> rusqlite::Result<bool> {
    conn.prepare_cached(&format!(
        "SELECT (SELECT rowid FROM main.sqlite_schema WHERE type = 'table' AND name = ?2 COLLATE NOCASE)
             > (SELECT value ->> 3 FROM json_each(ifnull(p.roots, '[]'))
                 WHERE value ->> 0 = ?2 AND value ->> 2 <= ?3 ORDER BY key DESC LIMIT 1)
         FROM {PROBE} AS p WHERE run = ?1"
    ))?
    .query_row(
        rusqlite::params![run, table, upto.unwrap_or(i64::MAX)],
        |r| r.get::<_, Option<bool>>(0),
    )
    .map(|m| m.unwrap_or(false))
    .or_else(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(false),
        e => Err(e),
    })
}

/// Why `run` cannot be taken back where `tables` were made anew.
pub fn why(tables: &[String], run: &str) -> String {
    let (table, was, its) = match tables.len() {
        1 => ("table", "was", "its"),
        _ => ("tables", "were", "their"),
    };
    format!(
        "{table} {} {was} made anew since run {run} was recorded (copied into a new table and renamed, or dropped and created again, as a migration that changes a column does), which numbers {its} rows anew, and the record finds {its} rows by rowid, so taking it back would put old values into other rows",
        crate::human::shown_list(tables)
    )
}

/// What to do then; `db` as the shell takes it.
pub fn what_now(db: &str, run: &str) -> String {
    format!(
        "this record can no longer be taken back safely: remove it with `batchsse undo clear --db {db} --run {}`. To keep this from happening, take runs back before such a migration, or give such tables an INTEGER PRIMARY KEY",
        crate::human::shell_word(run)
    )
}
