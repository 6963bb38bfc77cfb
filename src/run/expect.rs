//! A step's expectations: `expect_changes.max` while it runs, `min` and the
//! `expect` query as it ends, inside the transaction that would commit its
//! last work, so a failed one rolls that work back.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use crate::human::thousands;
use crate::plan::Expect;

/// Why the step must stop, if `changed` rows are more than it may change.
pub(super) fn over_max(expect: &Expect, changed: u64) -> Option<String> {
    let max = expect.max?;
    (changed > max).then(|| {
        format!(
            "expect_changes.max is {}, but the step has changed {} rows; its current work was rolled back (a missing WHERE?)",
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
    let mut stmt = conn.prepare(sql)?;
    // The check before the run proves this only where its schema copy
    // could compile the query (not over a table a step before made too
    // slowly to copy, say): never let an expectation write.
    if !stmt.readonly() || stmt.column_count() == 0 {
        return Ok(Some(format!(
            "expect {} is not a query that only reads, so it was not run; write one such as SELECT count(*) = 0 FROM t WHERE …",
            sql.trim()
        )));
    }
    let value: Option<Value> = stmt.query_row([], |r| r.get::<_, Value>(0)).optional()?;
    // SQLite's own idea of true, so '1', 1.0 and 1 agree with a WHERE.
    let truthy = match &value {
        None => false,
        Some(v) => conn.query_row("SELECT ?1 IS TRUE", [v], |r| r.get::<_, bool>(0))?,
    };
    Ok((!truthy).then(|| {
        format!(
            "expect {} returned {}, which is not true",
            sql.trim(),
            value.as_ref().map_or_else(|| "no row".to_owned(), shown)
        )
    }))
}

/// A value (or key) as a person reads it in a message: a REAL with its
/// point (`1.0`, `-0.0`: a conflict between 1.0 and 1 must show why), a
/// short blob as SQL writes it, a long one by its size.
pub(super) fn shown(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) => format!("{t:?}"),
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
        for yes in ["SELECT 1", "SELECT 2.5", "SELECT '1'", "SELECT 1 = 1"] {
            assert_eq!(check(yes), None, "{yes}");
        }
        for (no, shown) in [
            ("SELECT 0", "returned 0"),
            ("SELECT NULL", "returned NULL"),
            ("SELECT 'abc'", "returned \"abc\""),
            ("SELECT 1 WHERE 0", "returned no row"),
            ("SELECT x'00'", "returned x'00'"),
            ("SELECT zeroblob(33)", "a blob of 33 bytes"),
            // A REAL reads as one, never as the INTEGER it equals.
            ("SELECT 0.0", "returned 0.0,"),
            ("SELECT -0.0", "returned -0.0,"),
        ] {
            let why = check(no).unwrap_or_else(|| panic!("{no} passed"));
            assert!(why.contains(shown), "{why}");
        }
    }

    #[test]
    fn max_and_min_bound_the_changed_rows() {
        let e = Expect {
            max: Some(10),
            min: Some(2),
            sql: None,
        };
        assert_eq!(over_max(&e, 10), None);
        assert!(over_max(&e, 11).unwrap().contains("max is 10"));
        let c = Connection::open_in_memory().unwrap();
        assert!(at_end(&c, &e, 1).unwrap().unwrap().contains("min is 2"));
        assert_eq!(at_end(&c, &e, 2).unwrap(), None);
    }
}
