//! Columns a table has gained since the run was recorded (the
//! application's `ALTER TABLE … ADD COLUMN`). The record holds nothing of
//! them, so a row the run inserted is still as the run left it only while
//! they hold what a row written before them reads: their default. A row
//! whose new column the application has set since is the application's,
//! which an undo must keep rather than delete with what it wrote there.

use rusqlite::Connection;
use rusqlite::types::Value;

use super::codec::Layout;
use crate::plan::quote;

/// A column the layout lacks, and the value it reads in a row written
/// before it came (`None`: not known, so every such row counts as
/// changed).
pub type Added = (String, Option<Value>);

/// The columns of `l`'s table that its layout (the run's) lacks, hidden
/// (generated) ones left out: the undo writes none of them.
pub fn added(conn: &Connection, l: &Layout) -> rusqlite::Result<Vec<Added>> {
    let known = |name: &str| {
        l.columns.iter().any(|c| c.eq_ignore_ascii_case(name))
            || l.key
                .iter()
                .any(|k| k.eq_ignore_ascii_case(name) || k.eq_ignore_ascii_case(&quote(name)))
    };
    let columns: Vec<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT name, dflt_value FROM pragma_table_xinfo(?1, 'main') WHERE hidden = 0",
        )?
        .query_map([&l.table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(columns
        .into_iter()
        .filter(|(name, _)| !known(name))
        .map(|(name, default)| (name, default_value(default.as_deref())))
        .collect())
}

/// The value of a column's default, as SQLite gives it (its SQL text) to
/// a row written before the column was added; `None` when it cannot be
/// read here (a function of the application's, say). Read on a
/// connection of its own: the undo's reads a double-quoted word as a
/// column, where SQLite's schema may read it as a string.
fn default_value(sql: Option<&str>) -> Option<Value> {
    let Some(sql) = sql else {
        return Some(Value::Null);
    };
    let conn = Connection::open_in_memory().ok()?;
    conn.query_row(&format!("SELECT {sql}"), [], |r| r.get(0))
        .ok()
}

/// The condition, on the row a statement reads, that every added column
/// holds its default (bound from parameter `?from` on, the known ones in
/// their order); none when nothing was added. Compared as SQLite stores
/// them (the column's affinity), byte for byte (not by its collation).
pub fn untouched(added: &[Added], from: usize) -> Option<String> {
    if added.is_empty() {
        return None;
    }
    let mut at = from;
    let each: Vec<String> = added
        .iter()
        .map(|(name, default)| match default {
            Some(_) => {
                at += 1;
                format!("{} IS ?{} COLLATE BINARY", quote(name), at - 1)
            }
            None => "0".to_owned(),
        })
        .collect();
    Some(format!("({})", each.join(" AND ")))
}

/// The defaults [`untouched`] binds, in its order.
pub fn defaults(added: &[Added]) -> impl Iterator<Item = &Value> {
    added.iter().filter_map(|(_, d)| d.as_ref())
}
