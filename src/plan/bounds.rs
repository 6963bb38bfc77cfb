//! A chunk's bounds are inclusive: `:lo` is its first key and `:hi` its
//! last. A chunked step that compares its key with them strictly
//! (`id < :hi`, `id > :lo`) skips the row at the end of every chunk and
//! still finishes "ok", so the pre-run check looks for exactly those four
//! comparisons of the chunk key, read token by token (comments left out,
//! strings and quoted names kept whole, a `t.` before the key allowed).

use crate::error::UsageError;

/// Refuses chunked step `label` if its SQL compares the chunk key (`key`,
/// also named `keys`) strictly with a bound.
pub(super) fn refuse_strict(
    label: &str,
    sql: &str,
    key: &str,
    keys: &[String],
) -> Result<(), UsageError> {
    let Some(said) = strict_bound(sql, keys) else {
        return Ok(());
    };
    let (bound, fix) = match said.contains(":hi") {
        true => (":hi is each chunk's last key", "<= :hi"),
        false => (":lo is each chunk's first key", ">= :lo"),
    };
    let (said, key) = (crate::human::shown(&said), crate::human::shown(key));
    Err(UsageError::new(format!(
        "{label} compares its chunk key as {said}, but {bound}, included: the row there would be skipped in every chunk. Write {fix}, or {key} BETWEEN :lo AND :hi"
    )))
}

/// Refuses chunked step `label` if its SQL compares the chunk key (`key`,
/// also named `keys`) under another collation than `own`, the column's:
/// the walk orders the keys, and so bounds each chunk, by the column's
/// own. Under another one the bounds hold other rows (`COLLATE NOCASE`
/// on BINARY text, where 'Z' < 'a', finds none from 'Z' to 'a'), some
/// that no chunk reaches and some that two do. Looks for a `COLLATE` right
/// after the key's name or after `:lo` or `:hi`.
pub(super) fn refuse_collated(
    label: &str,
    sql: &str,
    (key, keys): (&str, &[String]),
    own: &str,
) -> Result<(), UsageError> {
    let Some((said, coll)) = collated_bound(sql, keys, own) else {
        return Ok(());
    };
    let (said, key) = (crate::human::shown(&said), crate::human::shown(key));
    Err(UsageError::new(format!(
        "{label} compares its chunk key as {said}, but the walk orders {key}, and bounds each chunk, by the column's own collation, {own}: under {coll} the bounds hold other rows, so some rows would be changed by no chunk and some by two. Compare {key} BETWEEN :lo AND :hi without COLLATE, or walk a column declared with COLLATE {coll}"
    )))
}

/// The first `COLLATE` other than `own` put on a key named in `keys` or
/// on `:lo` or `:hi`, as written (`e COLLATE NOCASE`), and its collation.
fn collated_bound(sql: &str, keys: &[String], own: &str) -> Option<(String, String)> {
    let tokens = tokens(sql);
    tokens.windows(3).find_map(|w| {
        let (Token::Name(collate), Token::Name(coll)) = (&w[1], &w[2]) else {
            return None;
        };
        if !collate.eq_ignore_ascii_case("COLLATE") || coll.eq_ignore_ascii_case(own) {
            return None;
        }
        let on = match &w[0] {
            Token::Param(p) if p == ":lo" || p == ":hi" => p,
            Token::Name(k) if is_key_name(k, keys) => k,
            _ => return None,
        };
        Some((format!("{on} COLLATE {coll}"), coll.to_ascii_uppercase()))
    })
}

/// One token of SQL, as far as this check needs to tell them apart.
#[derive(Debug, PartialEq)]
enum Token {
    /// A name, unquoted.
    Name(String),
    /// `:lo`, `:hi`, or another parameter.
    Param(String),
    Op(&'static str),
    /// An arithmetic or bitwise operator, or `||`.
    Arith,
    Dot,
    /// A string literal's text, quotes left off (SQLite takes one for a
    /// name where a name must be: `FROM 't'`).
    Text(String),
    Other,
}

/// The first strict comparison of a key named in `keys` with `:lo` or
/// `:hi`, as written (`id < :hi`).
fn strict_bound(sql: &str, keys: &[String]) -> Option<String> {
    let tokens = tokens(sql);
    // Arithmetic next to either side makes it another comparison
    // (`id < :hi + 1` includes the last key).
    let arith = |at: Option<usize>| matches!(at.and_then(|j| tokens.get(j)), Some(Token::Arith));
    for (i, w) in tokens.windows(3).enumerate() {
        let Token::Op(op) = w[1] else { continue };
        let found = match (&w[0], last_part(&tokens, i + 2)) {
            (Token::Name(k), _) if is_key_name(k, keys) => match &w[2] {
                Token::Param(p) if !arith(i.checked_sub(1)) && !arith(Some(i + 3)) => {
                    strict(op, p, true).then(|| format!("{k} {op} {p}"))
                }
                _ => None,
            },
            (Token::Param(p), Some((k, end)))
                if is_key_name(k, keys) && !arith(i.checked_sub(1)) && !arith(Some(end + 1)) =>
            {
                strict(op, p, false).then(|| format!("{p} {op} {k}"))
            }
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The name a possibly qualified name starting at token `at` ends with
/// (`id` of `main.t.id`), and where it is.
fn last_part(tokens: &[Token], mut at: usize) -> Option<(&str, usize)> {
    while tokens.get(at + 1) == Some(&Token::Dot)
        && matches!(tokens.get(at + 2), Some(Token::Name(_)))
    {
        at += 2;
    }
    match tokens.get(at) {
        Some(Token::Name(n)) => Some((n, at)),
        _ => None,
    }
}

/// Whether `key op param` (or `param op key`) leaves a bound out.
fn strict(op: &str, param: &str, key_first: bool) -> bool {
    match (op, param) {
        ("<", ":hi") | (">", ":lo") => key_first,
        (">", ":hi") | ("<", ":lo") => !key_first,
        _ => false,
    }
}

fn is_key_name(name: &str, keys: &[String]) -> bool {
    let rowid = ["ROWID", "OID", "_ROWID_"];
    keys.iter().any(|k| {
        k.eq_ignore_ascii_case(name)
            || (k.eq_ignore_ascii_case("ROWID")
                && rowid.iter().any(|r| r.eq_ignore_ascii_case(name)))
    })
}

/// Whether `sql` names `function` outside comments and string literals
/// (as a call, or anything else of that name).
pub(super) fn calls(sql: &str, function: &str) -> bool {
    tokens(sql)
        .iter()
        .any(|t| matches!(t, Token::Name(n) if n.eq_ignore_ascii_case(function)))
}

/// Whether `sql` may name `table`: as a name, quoted or not, or as a
/// string literal, which SQLite takes for a name in a `FROM`.
pub(super) fn may_name(sql: &str, table: &str) -> bool {
    tokens(sql).iter().any(|t| match t {
        Token::Name(n) | Token::Text(n) => n.eq_ignore_ascii_case(table),
        _ => false,
    })
}

/// Whether the statement `sql` has a `SELECT` anywhere in it (a word of
/// its, quoted text left out).
pub(super) fn selects(sql: &str) -> bool {
    tokens(sql)
        .iter()
        .any(|t| matches!(t, Token::Name(n) if n.eq_ignore_ascii_case("SELECT")))
}

/// Whether the statement `sql` inserts, as what sets `last_insert_rowid()`:
/// an `INSERT` or `REPLACE`, also after a `WITH` clause (whose own
/// statements only read). A trigger's inserts are not the statement's.
pub(super) fn inserts(sql: &str) -> bool {
    let t = tokens(sql);
    let word =
        |i: usize, w: &str| matches!(t.get(i), Some(Token::Name(n)) if n.eq_ignore_ascii_case(w));
    if word(0, "WITH") {
        return (0..t.len())
            .any(|i| word(i, "INSERT") || (word(i, "REPLACE") && word(i + 1, "INTO")));
    }
    word(0, "INSERT") || word(0, "REPLACE")
}

/// The tokens of `sql`, comments left out.
fn tokens(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let name_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    // The end of a run of name bytes from `at`.
    let name_end = |at: usize| (at..b.len()).find(|&j| !name_byte(b[j])).unwrap_or(b.len());
    while i < b.len() {
        let c = b[i];
        let rest = &sql[i..];
        let (len, token) = if c.is_ascii_whitespace() {
            (1, None)
        } else if rest.starts_with("--") {
            (rest.find('\n').unwrap_or(rest.len()), None)
        } else if let Some(body) = rest.strip_prefix("/*") {
            (body.find("*/").map_or(rest.len(), |j| j + 4), None)
        } else if matches!(c, b'\'' | b'"' | b'`' | b'[') {
            let close = if c == b'[' { ']' } else { c as char };
            // The opening quote is one byte; an unclosed one runs to the end.
            let (len, inner) = match rest[1..].find(close) {
                Some(j) => (j + 2, &rest[1..=j]),
                None => (rest.len(), &rest[1..]),
            };
            let token = match c {
                b'\'' => Token::Text(inner.to_owned()),
                _ => Token::Name(inner.to_owned()),
            };
            (len, Some(token))
        } else if matches!(c, b':' | b'@' | b'$') && i + 1 < b.len() && name_byte(b[i + 1]) {
            let end = name_end(i + 1);
            (
                end - i,
                Some(Token::Param(sql[i..end].to_ascii_lowercase())),
            )
        } else if name_byte(c) {
            let end = name_end(i);
            (end - i, Some(Token::Name(sql[i..end].to_owned())))
        } else {
            operator(rest)
        };
        out.extend(token);
        // Never stall, and never cut a character in two.
        i += len.max(1);
        while i < b.len() && !sql.is_char_boundary(i) {
            i += 1;
        }
    }
    out
}

/// The operator or punctuation `rest` starts with, and its length.
fn operator(rest: &str) -> (usize, Option<Token>) {
    for op in ["<=", ">=", "<>", "!=", "=="] {
        if rest.starts_with(op) {
            return (2, Some(Token::Other));
        }
    }
    for op in ["<<", ">>", "||"] {
        if rest.starts_with(op) {
            return (2, Some(Token::Arith));
        }
    }
    match rest.as_bytes()[0] {
        b'<' => (1, Some(Token::Op("<"))),
        b'>' => (1, Some(Token::Op(">"))),
        b'.' => (1, Some(Token::Dot)),
        b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'~' => (1, Some(Token::Arith)),
        _ => (1, Some(Token::Other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Option<String> {
        strict_bound(sql, &["id".to_owned()])
    }

    #[test]
    fn strict_comparisons_of_the_key_with_its_bounds_are_found() {
        let q = "UPDATE t SET v = 1 WHERE";
        assert_eq!(
            found(&format!("{q} id >= :lo AND id < :hi")).as_deref(),
            Some("id < :hi")
        );
        assert_eq!(
            found(&format!("{q} ID > :lo AND id <= :hi")).as_deref(),
            Some("ID > :lo")
        );
        assert_eq!(
            found(&format!("{q} :hi > t.id")).as_deref(),
            Some(":hi > id")
        );
        assert_eq!(
            found(&format!("{q} :lo<\"id\"")).as_deref(),
            Some(":lo < id")
        );
        assert_eq!(
            found(&format!("{q} t.[id] <:hi")).as_deref(),
            Some("id < :hi")
        );
        let rowid = strict_bound(&format!("{q} oid < :hi"), &["ROWID".to_owned()]);
        assert_eq!(rowid.as_deref(), Some("oid < :hi"));
    }

    #[test]
    fn inclusive_bounds_other_columns_comments_and_strings_pass() {
        let q = "UPDATE t SET v = 1 WHERE";
        for sql in [
            format!("{q} id BETWEEN :lo AND :hi"),
            format!("{q} id >= :lo AND id <= :hi"),
            format!("{q} id BETWEEN :lo AND :hi AND other < :hi"),
            format!("{q} id BETWEEN :lo AND :hi -- not id < :hi"),
            format!("{q} id BETWEEN :lo AND :hi /* id < :hi */"),
            format!("{q} id BETWEEN :lo AND :hi AND note = 'id < :hi'"),
            format!("{q} id BETWEEN :lo AND :hi AND :hi > id.x"),
            format!("{q} id BETWEEN :lo AND :hi AND id.x < :hi"),
            format!("{q} id BETWEEN :lo AND :hi AND id << 2 < :hi"),
            format!("{q} id >= :lo AND id < :hi + 1"),
            format!("{q} id > :lo - 1 AND id <= :hi"),
            format!("{q} :hi + 1 > t.id AND :lo - 1 < id"),
            format!("{q} id BETWEEN :lo AND :hi AND 1 + :hi > id"),
            format!("{q} id BETWEEN :lo AND :hi AND :hi > id - 1"),
            format!("{q} id BETWEEN :lo AND :hi AND x * id < :hi"),
            format!("{q} ид BETWEEN :lo AND :hi AND 'ü' < :hi"),
        ] {
            assert_eq!(found(&sql), None, "{sql}");
        }
    }

    #[test]
    fn a_collation_on_the_key_or_a_bound_other_than_the_columns_is_found() {
        let keys = ["e".to_owned()];
        let q = "UPDATE t SET v = 1 WHERE";
        let said = |sql: &str| collated_bound(&format!("{q} {sql}"), &keys, "BINARY").map(|f| f.0);
        assert_eq!(
            said("t.\"e\" COLLATE nocase BETWEEN :lo AND :hi").as_deref(),
            Some("e COLLATE nocase")
        );
        assert_eq!(
            said("e BETWEEN :lo AND :hi COLLATE [RTRIM]").as_deref(),
            Some(":hi COLLATE RTRIM")
        );
        for sql in [
            "e BETWEEN :lo AND :hi",
            "e COLLATE binary BETWEEN :lo AND :hi",
            "e BETWEEN :lo AND :hi AND x = 'y' COLLATE NOCASE",
            "e BETWEEN :lo AND :hi AND other COLLATE NOCASE = 'y'",
            "e BETWEEN :lo AND :hi -- e COLLATE NOCASE",
        ] {
            assert_eq!(said(sql), None, "{sql}");
        }
    }

    #[test]
    fn unfinished_quotes_comments_and_wide_characters_are_read_to_the_end() {
        for sql in [
            "'ü",
            "\"ид",
            "[é",
            ":",
            "$",
            "/*",
            "--",
            "é<:hi",
            "id <",
            "< :hi",
            "\"id\" < :hi é",
        ] {
            let _ = found(sql);
        }
        assert_eq!(found("\"id\" < :hi é").as_deref(), Some("id < :hi"));
    }
}
