//! Foreign keys an undo leaves pointing at nothing. The undo writes with
//! foreign keys off, to put every row back as the run found it, so a row
//! it restores whose parent the application deleted since the run stays
//! in, dangling. Counted before and after, per table, so what was already
//! dangling is not laid at the undo's door.

use std::collections::BTreeMap;

use rusqlite::Connection;

/// Rows whose foreign key finds no parent, per child table; `None` when
/// no table of the main database declares a foreign key (nothing to
/// count, nothing scanned).
pub fn count(conn: &Connection) -> rusqlite::Result<Option<BTreeMap<String, u64>>> {
    let declared: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema s, pragma_foreign_key_list(s.name) WHERE s.type = 'table')",
        [],
        |r| r.get(0),
    )?;
    if !declared {
        return Ok(None);
    }
    conn.prepare(
        "SELECT \"table\", count(*) FROM pragma_foreign_key_check(NULL, 'main') GROUP BY 1",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?
    .collect::<rusqlite::Result<_>>()
    .map(Some)
}

/// What an undo that found `before` and leaves `after` should say, if it
/// left more rows dangling in some table than there were.
pub fn grown(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    dry_run: bool,
) -> Option<String> {
    let more: Vec<String> = after
        .iter()
        .filter_map(|(table, &n)| {
            let added = n.saturating_sub(before.get(table).copied().unwrap_or(0));
            (added > 0).then(|| format!("{} in {table}", crate::human::rows(added)))
        })
        .collect();
    if more.is_empty() {
        return None;
    }
    let (verb, left) = match dry_run {
        true => ("would leave", "would point"),
        false => ("left", "point"),
    };
    Some(format!(
        "the undo {verb} {} whose foreign key {left} at a row that is gone: the application deleted their parent since the run, and the undo puts rows back as the run found them (with foreign keys off); `PRAGMA foreign_key_check` lists them, to fix by hand",
        more.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_dangling_since_the_first_count_are_reported() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE a(x)").unwrap();
        assert_eq!(count(&conn).unwrap(), None, "no foreign key, no scan");
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE p(id INTEGER PRIMARY KEY);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid REFERENCES p(id));
             INSERT INTO p VALUES (1);
             INSERT INTO c VALUES (1, 1), (2, 9);",
        )
        .unwrap();
        let before = count(&conn).unwrap().unwrap();
        assert_eq!(before, BTreeMap::from([("c".to_owned(), 1)]));
        assert_eq!(grown(&before, &before, false), None);
        conn.execute_batch("DELETE FROM p").unwrap();
        let after = count(&conn).unwrap().unwrap();
        let said = grown(&before, &after, false).unwrap();
        assert!(said.starts_with("the undo left 1 row in c whose"), "{said}");
        let said = grown(&before, &after, true).unwrap();
        assert!(
            said.starts_with("the undo would leave 1 row in c"),
            "{said}"
        );
    }
}
