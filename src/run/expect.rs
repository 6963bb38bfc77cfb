//! A step's expectations: `expect_changes.max` while it runs, `min` and the
//! `expect` query as it ends, inside the transaction that would commit its
//! last work, so a failed one rolls that work back.

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

use crate::human::thousands;
use crate::plan::Expect;

/// Why the step must stop, if `changed` rows are more than it may change;
/// `kept` of them, committed by its earlier chunks, stay (none where the
/// step is not chunked, nor under `--atomic` or `--dry-run`, whose run is
/// rolled back whole: saying that some stay would contradict it).
pub(super) fn over_max(expect: &Expect, changed: u64, kept: u64) -> Option<String> {
    let max = expect.max?;
    (changed > max).then(|| {
        let stays = match kept {
            0 => "it was rolled back".to_owned(),
            n => format!(
                "that work was rolled back, and what the step committed before it stays ({})",
                crate::human::rows(n)
            ),
        };
        format!(
            "expect_changes.max is {}, but with its current work the step would have changed {} rows; {stays} (a missing WHERE?)",
            thousands(max),
            thousands(changed)
        )
    })
}

/// Why the step fails as it ends, if it does: too few rows changed, or
/// the `expect` query is not true.
pub(super) fn at_end(
    conn: &Connection,
    expect: &Expect,
    changed: u64,
) -> rusqlite::Result<Option<String>> {
    if let Some(min) = expect.min
        && changed < min
    {
        return Ok(Some(format!(
            "expect_changes.min is {}, but the step changed only {}",
            thousands(min),
            crate::human::rows(changed)
        )));
    }
    let Some(sql) = &expect.sql else {
        return Ok(None);
    };
    // Two statements reach here only where the check could not compile
    // the first (over a database a step attaches).
    let mut stmt = match conn.prepare(sql) {
        Err(rusqlite::Error::MultipleStatement) => {
            return Ok(Some(format!(
                "expect {} is more than one statement, so it was not run; keep one query, such as SELECT count(*) = 0 FROM t WHERE …",
                query(sql)
            )));
        }
        stmt => stmt?,
    };
    if let Some(why) = not_to_run(sql, &stmt) {
        return Ok(Some(why));
    }
    Ok(first_false(conn, &mut stmt)?.map(|found| {
        let (value, at) = match found {
            None => ("no row".to_owned(), String::new()),
            Some((1, v)) => (answer(&v), String::new()),
            Some((n, v)) => (
                answer(&v),
                format!(" in row {} of its answer", thousands(n)),
            ),
        };
        format!(
            "expect {} returned {value}{at}, which is not true",
            query(sql)
        )
    }))
}

/// Why the `expect` `sql`, compiled as `stmt`, must not run, if it must
/// not. The check before the run proves all this only where its schema
/// copy could compile the query (not over a database a step attaches).
fn not_to_run(sql: &str, stmt: &rusqlite::Statement<'_>) -> Option<String> {
    // Never let an expectation write.
    if !stmt.readonly() || stmt.column_count() == 0 {
        return Some(format!(
            "expect {} is not a query that only reads, so it was not run; write one such as SELECT count(*) = 0 FROM t WHERE …",
            query(sql)
        ));
    }
    // SQLite calls `PRAGMA aux.max_page_count = 3` read-only, and it
    // answers a row: it would set the run's connection.
    if sets_a_pragma(sql) {
        return Some(format!(
            "expect {} gives a PRAGMA a value or an argument, or names one that acts when read, which may set or change something, so it was not run; read a pragma with its table-valued function, e.g. SELECT * FROM pragma_user_version or SELECT name FROM pragma_table_info('t')",
            query(sql)
        ));
    }
    // `pragma_optimize` compiles as a read, and runs the pragma.
    if let Some(table) = crate::plan::reads_acting_pragma(sql) {
        return Some(format!(
            "expect {} reads {table}, which runs a PRAGMA that may write (PRAGMA optimize may run ANALYZE), so it was not run; leave it out of the expect",
            query(sql)
        ));
    }
    // Run, it would fail with rusqlite's "Wrong number of parameters".
    let count = stmt.parameter_count();
    if count > 0 {
        let name = (1..=count).find_map(|i| stmt.parameter_name(i));
        return Some(format!(
            "expect {} uses the parameter {}, so it was not run; write the values into the query",
            query(sql),
            name.unwrap_or("?")
        ));
    }
    None
}

/// What makes `stmt`'s answer false, if anything: its first row whose
/// first column is not true (numbered from 1, with that value), or no row
/// at all (`Some(None)`). Every row counts, not the first alone: `SELECT
/// price >= 0 FROM products` must not pass on the first product while a
/// later one is negative.
fn first_false(
    conn: &Connection,
    stmt: &mut rusqlite::Statement<'_>,
) -> rusqlite::Result<Option<Option<(u64, Value)>>> {
    // SQLite's own idea of true, so '1', 1.0 and 1 agree with a WHERE;
    // asked of the value as SQLite holds it (text need not be UTF-8).
    let mut truth = conn.prepare_cached("SELECT ?1 IS TRUE")?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        n += 1;
        let v = r.get_ref(0)?;
        // A number is true when it is not zero, as SQLite has it; only
        // text and blobs are asked (a long answer of numbers asks nothing).
        let true_ = match v {
            ValueRef::Integer(i) => i != 0,
            ValueRef::Real(f) => f != 0.0,
            ValueRef::Null => false,
            _ => truth.query_row([ToSqlOutput::Borrowed(v)], |t| t.get::<_, bool>(0))?,
        };
        if true_ {
            continue;
        }
        let shown = match v {
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            other => Value::try_from(other).unwrap_or(Value::Null),
        };
        return Ok(Some(Some((n, shown))));
    }
    Ok((n == 0).then_some(None))
}

/// The query as a one-line message shows it: its whitespace runs made one
/// space, and cut short past 200 characters.
pub(super) fn query(sql: &str) -> String {
    const MAX: usize = 200;
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX {
        return one_line;
    }
    let cut: String = one_line.chars().take(MAX).collect();
    format!("{cut}…")
}

/// A `PRAGMA` given a value (`= v` or `(v)`), or one that acts when read
/// ([`crate::plan::pragma_acts`]): no pragma's name holds either sign, so
/// one outside a comment or a quoted name is the value's.
fn sets_a_pragma(sql: &str) -> bool {
    if crate::plan::first_keyword(sql) != "PRAGMA" {
        return false;
    }
    // The statement without its comments and quotes, for its name.
    let mut plain = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        let close = match c {
            '=' | '(' => return true,
            '-' if chars.peek() == Some(&'-') => '\n',
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '*' && chars.peek() == Some(&'/') {
                        chars.next();
                        break;
                    }
                }
                plain.push(' ');
                continue;
            }
            '\'' | '"' | '`' => c,
            '[' => ']',
            _ => {
                plain.push(c);
                continue;
            }
        };
        let inside: String = chars.by_ref().take_while(|&c| c != close).collect();
        plain.push_str(if close == '\n' { " " } else { &inside });
    }
    let name = plain
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
        .rsplit(['.', ' ', '\t', '\n'])
        .next();
    name.is_some_and(|n| crate::plan::pragma_acts(n.trim()))
}

/// The answer of a false `expect` as a message shows it: a long text cut
/// short (it goes into an event and a terminal line), anything else as
/// [`shown`].
fn answer(v: &Value) -> String {
    const TEXT: usize = 100;
    match v {
        Value::Text(t) if t.chars().count() > TEXT => {
            let head: String = t.chars().take(TEXT).collect();
            format!(
                "{}… (a text of {} characters)",
                crate::human::quoted(&head),
                t.chars().count()
            )
        }
        _ => shown(v),
    }
}

/// A value (or key) as a person reads it in a message: a REAL with its
/// point (`1.0`, `-0.0`: a conflict between 1.0 and 1 must show why), a
/// short blob as SQL writes it, a long one by its size.
pub(super) fn shown(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) => crate::human::quoted(t),
        Value::Blob(b) if b.len() <= 32 => {
            format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )
        }
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str) -> Option<String> {
        let c = Connection::open_in_memory().unwrap();
        let e = Expect {
            sql: Some(sql.into()),
            ..Expect::default()
        };
        at_end(&c, &e, 0).unwrap()
    }

    #[test]
    fn truth_is_sqlites() {
        for yes in [
            "SELECT 1",
            "SELECT 2.5",
            "SELECT '1'",
            "SELECT 1 = 1",
            "VALUES (1), (2.5), ('1')",
        ] {
            assert_eq!(check(yes), None, "{yes}");
        }
        for (no, shown) in [
            ("SELECT 0", "returned 0"),
            ("SELECT NULL", "returned NULL"),
            ("SELECT 'abc'", "returned \"abc\""),
            ("SELECT 1 WHERE 0", "returned no row"),
            ("SELECT x'00'", "returned x'00'"),
            // Every row counts, not the first alone.
            (
                "SELECT 1 UNION ALL SELECT 'abc'",
                "returned \"abc\" in row 2 of its answer,",
            ),
            ("SELECT zeroblob(33)", "a blob of 33 bytes"),
            // A REAL reads as one, never as the INTEGER it equals.
            ("SELECT 0.0", "returned 0.0,"),
            ("SELECT -0.0", "returned -0.0,"),
            (
                "SELECT printf('%.*c', 5000, 'x')",
                "(a text of 5000 characters)",
            ),
        ] {
            let why = check(no).unwrap_or_else(|| panic!("{no} passed"));
            assert!(why.contains(shown), "{why}");
        }
    }

    #[test]
    fn the_query_is_shown_on_one_line() {
        let why = check("SELECT\n  0\n  AS zero").unwrap();
        assert!(
            why.starts_with("expect SELECT 0 AS zero returned 0"),
            "{why}"
        );
        let long = format!("SELECT 0 WHERE 1 IN ({})", vec!["1"; 500].join(", "));
        assert!(check(&long).unwrap().len() < 300);
    }

    #[test]
    fn a_long_answer_is_cut_short() {
        let why = check("SELECT printf('%.*c', 100000, 'x')").unwrap();
        assert!(why.len() < 300, "{} bytes", why.len());
    }

    #[test]
    fn a_pragma_given_a_value_is_not_run() {
        for sql in [
            "PRAGMA max_page_count = 3",
            "pragma main.max_page_count(3)",
            "/* c */ PRAGMA busy_timeout=1",
        ] {
            let why = check(sql).unwrap_or_else(|| panic!("{sql} passed"));
            assert!(why.contains("was not run"), "{why}");
        }
        assert_eq!(
            check("PRAGMA max_page_count"),
            None,
            "reading one still runs"
        );
        for acts in [
            "PRAGMA optimize",
            "pragma main.OPTIMIZE;",
            "PRAGMA /* c */ \"optimize\" -- now",
            "PRAGMA [main].[optimize]",
            "PRAGMA main.optimize ;",
            "PRAGMA\toptimize\n",
        ] {
            let why = check(acts).unwrap_or_else(|| panic!("{acts} passed"));
            assert!(why.contains("acts when read"), "{why}");
        }
        for reads in [
            "PRAGMA max_page_count -- not = 3",
            "PRAGMA /* (x) */ max_page_count",
            "PRAGMA \"max_page_count\"",
        ] {
            assert_eq!(check(reads), None, "{reads}");
        }
        let c = Connection::open_in_memory().unwrap();
        let e = Expect {
            sql: Some("PRAGMA max_page_count = 3".into()),
            ..Expect::default()
        };
        at_end(&c, &e, 0).unwrap();
        let now: i64 = c
            .query_row("PRAGMA max_page_count", [], |r| r.get(0))
            .unwrap();
        assert_ne!(now, 3, "the pragma was set");
    }

    #[test]
    fn max_and_min_bound_the_changed_rows() {
        let e = Expect {
            max: Some(10),
            min: Some(2),
            sql: None,
        };
        assert_eq!(over_max(&e, 10, 0), None);
        assert!(over_max(&e, 11, 0).unwrap().contains("max is 10"));
        let c = Connection::open_in_memory().unwrap();
        assert!(at_end(&c, &e, 1).unwrap().unwrap().contains("min is 2"));
        assert_eq!(at_end(&c, &e, 2).unwrap(), None);
    }
}
