//! Foreign keys an undo leaves pointing at nothing. The undo writes with
//! foreign keys off, to put every row back as the run found them, so a row
//! it restores whose parent the application deleted since the run stays
//! in, dangling. Only the tables a part can leave dangling are checked
//! (a child whose rows come back or whose keys are restored; the children
//! of a parent whose rows go or whose keys are restored), each listed
//! before the first such part and again at the end, so what was already
//! dangling is not laid at the undo's door, and an undo that restores
//! other columns (a repricing) checks nothing. The lists are compared row
//! by row: a row the undo leaves dangling is reported even where another
//! stopped dangling meanwhile.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::codec::op;

/// One foreign key: `child`'s columns `from` refer to `parent`'s `to`.
struct Fk {
    child: String,
    parent: String,
    from: Vec<String>,
    to: Vec<String>,
}

/// The file's foreign keys, and the dangling rows of each child table
/// listed so far, before the undo first wrote what could change them.
pub struct Watch {
    fks: Vec<Fk>,
    before: BTreeMap<String, Dangling>,
}

/// A table's rows whose foreign key finds no parent.
#[derive(Debug, PartialEq)]
struct Dangling {
    /// (rowid, foreign key id), sorted, while there are at most [`LISTED`].
    rows: Option<Vec<(i64, i64)>>,
    /// Those without a rowid (a `WITHOUT ROWID` table's), which can only
    /// be counted; all of them once past [`LISTED`].
    counted: u64,
}

/// How many dangling rows of one table are listed one by one (16 bytes
/// each); past it they are only counted.
const LISTED: usize = 1 << 20;

impl Dangling {
    /// How many of these rows were not dangling in `before`: row by row
    /// where both are listed, else by count.
    fn added_since(&self, before: &Dangling) -> u64 {
        match (&self.rows, &before.rows) {
            (Some(now), Some(then)) => {
                let new = now.iter().filter(|r| then.binary_search(r).is_err());
                new.count() as u64 + self.counted.saturating_sub(before.counted)
            }
            _ => self.total().saturating_sub(before.total()),
        }
    }

    fn total(&self) -> u64 {
        self.rows.as_ref().map_or(0, |r| r.len() as u64) + self.counted
    }
}

impl Watch {
    /// `None` when no table of the main database declares a foreign key.
    pub fn new(conn: &Connection) -> rusqlite::Result<Option<Watch>> {
        let mut fks: BTreeMap<(String, i64), Fk> = BTreeMap::new();
        let mut stmt = conn.prepare(
            "SELECT s.name, f.id, f.\"table\", f.\"from\", f.\"to\"
             FROM main.sqlite_schema s, pragma_foreign_key_list(s.name) f
             WHERE s.type = 'table' ORDER BY s.name, f.id, f.seq",
        )?;
        let rows = stmt.query_map([], |r| {
            let to: Option<String> = r.get(4)?;
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, to))
        })?;
        for row in rows {
            let (child, id, parent, from, to): (String, i64, String, String, _) = row?;
            let fk = fks.entry((child.clone(), id)).or_insert_with(|| Fk {
                child,
                parent,
                from: Vec::new(),
                to: Vec::new(),
            });
            fk.from.push(from);
            fk.to.extend(to);
        }
        let mut fks: Vec<Fk> = fks.into_values().collect();
        for fk in &mut fks {
            if fk.to.is_empty() {
                fk.to = primary_key(conn, &fk.parent)?;
            }
        }
        Ok((!fks.is_empty()).then_some(Watch {
            fks,
            before: BTreeMap::new(),
        }))
    }

    /// Whether `table` is the child or the parent of a foreign key.
    pub fn involves(&self, table: &str) -> bool {
        let is = |t: &String| t.eq_ignore_ascii_case(table);
        self.fks.iter().any(|f| is(&f.child) || is(&f.parent))
    }

    /// Before a part that takes back the run's `op` on rows of `table`
    /// (restoring `columns`) is applied: lists the dangling rows of each
    /// child table it could add to, not listed yet. A list SQLite cannot
    /// make leaves that table unchecked.
    pub fn touch(&mut self, conn: &Connection, table: &str, op: u8, columns: &[&str]) {
        let overlaps = |names: &[String]| {
            names
                .iter()
                .any(|n| columns.iter().any(|c| c.eq_ignore_ascii_case(n)))
        };
        for fk in &self.fks {
            let child = fk.child.eq_ignore_ascii_case(table)
                && (op == op::DELETE || (op == op::UPDATE && overlaps(&fk.from)));
            let parent = fk.parent.eq_ignore_ascii_case(table)
                && (op == op::INSERT || (op == op::UPDATE && overlaps(&fk.to)));
            if (child || parent)
                && !self.before.contains_key(&fk.child)
                && let Ok(rows) = dangling(conn, &fk.child)
            {
                self.before.insert(fk.child.clone(), rows);
            }
        }
    }

    /// The child tables listed so far (checked again at the end).
    pub fn watched(&self) -> Vec<&str> {
        self.before.keys().map(String::as_str).collect()
    }

    /// What the undo should say at its end, if it left more rows dangling
    /// in some table than there were before it wrote.
    pub fn said(&self, conn: &Connection, dry_run: bool) -> Option<String> {
        let after: BTreeMap<String, Dangling> = self
            .before
            .keys()
            .filter_map(|t| Some((t.clone(), dangling(conn, t).ok()?)))
            .collect();
        grown(&self.before, &after, dry_run)
    }
}

/// `table`'s primary key columns, in key order.
fn primary_key(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT name FROM pragma_table_info(?1, 'main') WHERE pk > 0 ORDER BY pk")?
        .query_map([table], |r| r.get(0))?
        .collect()
}

/// Rows of `table` whose foreign key finds no parent.
fn dangling(conn: &Connection, table: &str) -> rusqlite::Result<Dangling> {
    let mut stmt = conn.prepare("SELECT rowid, fkid FROM pragma_foreign_key_check(?1, 'main')")?;
    let mut found = stmt.query([table])?;
    let (mut rows, mut counted) = (Some(Vec::new()), 0u64);
    while let Some(r) = found.next()? {
        match (r.get::<_, Option<i64>>(0)?, rows.as_mut()) {
            (Some(rowid), Some(list)) if list.len() < LISTED => list.push((rowid, r.get(1)?)),
            (Some(_), Some(list)) => {
                counted += list.len() as u64 + 1;
                rows = None;
            }
            _ => counted += 1,
        }
    }
    if let Some(list) = rows.as_mut() {
        list.sort_unstable();
    }
    Ok(Dangling { rows, counted })
}

/// The warning for tables with rows dangling `after` that did not `before`.
fn grown(
    before: &BTreeMap<String, Dangling>,
    after: &BTreeMap<String, Dangling>,
    dry_run: bool,
) -> Option<String> {
    let more: Vec<String> = after
        .iter()
        .filter_map(|(table, now)| {
            let added = before
                .get(table)
                .map_or(now.total(), |b| now.added_since(b));
            (added > 0).then(|| {
                let table = crate::human::shown(table);
                format!("{} in {table}", crate::human::rows(added))
            })
        })
        .collect();
    if more.is_empty() {
        return None;
    }
    let (verb, left) = match dry_run {
        true => ("would leave", "would point"),
        false => ("left", "points"),
    };
    Some(format!(
        "the undo {verb} {} whose foreign key {left} at a row that is gone: the undo puts rows back as the run found them (with foreign keys off), whether their parent was deleted by the application since the run, taken away by this undo (a row the run added), or already missing when the run changed them; `PRAGMA foreign_key_check` lists them, to fix by hand",
        more.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE c(id INTEGER PRIMARY KEY, pid REFERENCES p, qty INT);
             INSERT INTO p VALUES (1, 'a');
             INSERT INTO c VALUES (1, 1, 5), (2, 9, 5);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_file_without_foreign_keys_is_not_watched() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE a(x)").unwrap();
        assert!(Watch::new(&conn).unwrap().is_none());
    }

    #[test]
    fn only_parts_that_can_leave_rows_dangling_count_their_tables() {
        let conn = shop();
        let mut w = Watch::new(&conn).unwrap().unwrap();
        assert_eq!(w.fks[0].to, ["id"], "the parent's primary key");
        assert!(w.involves("P") && !w.involves("other"));
        // Restoring other columns, or deleting children: nothing to count.
        w.touch(&conn, "c", op::UPDATE, &["qty"]);
        w.touch(&conn, "c", op::INSERT, &["id", "pid", "qty"]);
        w.touch(&conn, "p", op::UPDATE, &["name"]);
        w.touch(&conn, "p", op::DELETE, &["id", "name"]);
        assert!(w.before.is_empty());
        for (table, op, cols) in [
            ("c", op::UPDATE, &["pid"][..]),
            ("c", op::DELETE, &["id", "pid", "qty"]),
            ("p", op::INSERT, &["id", "name"]),
        ] {
            let mut w = Watch::new(&conn).unwrap().unwrap();
            w.touch(&conn, table, op, cols);
            let row_2 = Dangling {
                rows: Some(vec![(2, 0)]),
                counted: 0,
            };
            assert_eq!(
                w.before,
                BTreeMap::from([("c".into(), row_2)]),
                "{table} {op}"
            );
        }
    }

    #[test]
    fn only_rows_dangling_since_the_first_count_are_reported() {
        let conn = shop();
        let mut w = Watch::new(&conn).unwrap().unwrap();
        w.touch(&conn, "p", op::INSERT, &["id", "name"]);
        assert_eq!(w.said(&conn, false), None, "row 2 dangled before");
        conn.execute_batch("DELETE FROM p").unwrap();
        let said = w.said(&conn, false).unwrap();
        assert!(said.starts_with("the undo left 1 row in c whose"), "{said}");
        let said = w.said(&conn, true).unwrap();
        assert!(
            said.starts_with("the undo would leave 1 row in c"),
            "{said}"
        );
    }

    #[test]
    fn a_row_left_dangling_is_reported_though_another_stopped_dangling() {
        let conn = shop();
        let mut w = Watch::new(&conn).unwrap().unwrap();
        w.touch(&conn, "p", op::INSERT, &["id", "name"]);
        // Row 2 finds its parent; row 1 loses its own: one dangles still.
        conn.execute_batch("INSERT INTO p VALUES (9, 'z'); DELETE FROM p WHERE id = 1")
            .unwrap();
        let said = w.said(&conn, false).unwrap();
        assert!(said.starts_with("the undo left 1 row in c whose"), "{said}");
    }

    #[test]
    fn rows_without_a_rowid_are_counted() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE p(id INTEGER PRIMARY KEY);
             CREATE TABLE c(k TEXT PRIMARY KEY, pid REFERENCES p) WITHOUT ROWID;
             INSERT INTO c VALUES ('a', 1);",
        )
        .unwrap();
        let mut w = Watch::new(&conn).unwrap().unwrap();
        w.touch(&conn, "c", op::DELETE, &["k", "pid"]);
        let one = Dangling {
            rows: Some(vec![]),
            counted: 1,
        };
        assert_eq!(w.before, BTreeMap::from([("c".into(), one)]));
        assert_eq!(w.said(&conn, false), None);
        conn.execute_batch("INSERT INTO c VALUES ('b', 2)").unwrap();
        let said = w.said(&conn, false).unwrap();
        assert!(said.starts_with("the undo left 1 row in c whose"), "{said}");
    }
}
