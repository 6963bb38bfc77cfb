//! How a walk by a column orders its keys: by the column's affinity and
//! collation, which every comparison of the walk and of the step's
//! `BETWEEN` goes by. A walk goes on after its last key in that order, so
//! one that changed under it (the table made again with the column of
//! another type or collation) would skip and repeat rows.

use std::ffi::CString;

use rusqlite::Connection;

/// How a walk by `table`'s `column` (of `main`) orders its keys: the
/// column's affinity, by SQLite's rules for its declared type, and its
/// collation, upper case (`TEXT NOCASE`). `BLOB BINARY` when it cannot
/// tell.
pub(crate) fn key_order(conn: &Connection, table: &str, column: &str) -> String {
    let (kind, coll) =
        declared(conn, table, column).unwrap_or_else(|| (String::new(), "BINARY".into()));
    format!("{} {}", affinity(&kind), coll.to_ascii_uppercase())
}

/// An order as [`key_order`] gives it (`TEXT NOCASE`), for a message:
/// `TEXT affinity and collation NOCASE`.
pub(crate) fn order_shown(order: &str) -> String {
    match order.split_once(' ') {
        Some((affinity, collation)) => format!(
            "{affinity} affinity and collation {}",
            crate::human::shown(collation)
        ),
        None => order.to_owned(),
    }
}

/// The type (empty when none) and collation `table`'s `column` (of
/// `main`) is declared with, as SQLite reads them; `None` when it cannot
/// tell.
pub(super) fn declared(conn: &Connection, table: &str, column: &str) -> Option<(String, String)> {
    let (Ok(t), Ok(c)) = (CString::new(table), CString::new(column)) else {
        return None;
    };
    let mut kind: *const std::ffi::c_char = std::ptr::null();
    let mut coll: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: the handle is this live connection's, on its thread; the
    // names are NUL-terminated; SQLite writes only the pointers asked
    // for, to names it keeps until the schema changes, read at once.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_table_column_metadata(
            conn.handle(),
            c"main".as_ptr(),
            t.as_ptr(),
            c.as_ptr(),
            &mut kind,
            &mut coll,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK || coll.is_null() {
        return None;
    }
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            return String::new();
        }
        // SAFETY: as above; SQLite gave a NUL-terminated name.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    };
    Some((text(kind), text(coll)))
}

/// The affinity SQLite gives a column declared `kind`, by its rules
/// (section 3.1 of "Datatypes In SQLite"): it decides how the walk's bound
/// keys are compared with the column's values.
fn affinity(kind: &str) -> &'static str {
    let kind = kind.to_ascii_uppercase();
    if kind.contains("INT") {
        "INTEGER"
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|k| kind.contains(k)) {
        "TEXT"
    } else if kind.is_empty() || kind.contains("BLOB") {
        "BLOB"
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|k| kind.contains(k)) {
        "REAL"
    } else {
        "NUMERIC"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_s_order_is_its_affinity_and_collation() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(a VARCHAR(9) COLLATE nocase, b, c BIGINT, d DOUBLE, e DECIMAL, f TEXT COLLATE RTRIM, g AS (a || b))",
        )
        .unwrap();
        let order = |c| key_order(&conn, "t", c);
        assert_eq!(order("a"), "TEXT NOCASE");
        assert_eq!(order("b"), "BLOB BINARY");
        assert_eq!(order("c"), "INTEGER BINARY");
        assert_eq!(order("d"), "REAL BINARY");
        assert_eq!(order("e"), "NUMERIC BINARY");
        assert_eq!(order("f"), "TEXT RTRIM");
        assert_eq!(order("g"), "BLOB BINARY");
        assert_eq!(
            order_shown("TEXT NOCASE"),
            "TEXT affinity and collation NOCASE"
        );
    }
}
