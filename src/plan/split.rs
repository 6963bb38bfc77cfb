//! Splitting a SQL script into statements by SQLite's own rule for a
//! complete statement, without compiling anything.

use super::skip_comments;

/// Splits a script into statements as the sqlite3 shell does, without
/// compiling anything: a statement ends at the first `;` that completes it,
/// so a `;` inside a string, a comment or a trigger's body stays inside.
/// "Completes" is decided by the state machine of SQLite's own
/// `sqlite3_complete` (complete.c), run once over the whole text, so the
/// cost stays linear however many `;` a string holds. An unclosed string or
/// comment makes the rest one piece. Pieces of only comments and `;` are
/// dropped.
pub(super) fn split_statements(text: &str) -> Vec<&str> {
    // Tokens, and states as complete.c numbers them.
    const SEMI: usize = 0;
    const WS: usize = 1;
    const OTHER: usize = 2;
    const EXPLAIN: usize = 3;
    const CREATE: usize = 4;
    const TEMP: usize = 5;
    const TRIGGER: usize = 6;
    const END: usize = 7;
    const START: usize = 1;
    // After CREATE [TEMP] TRIGGER, only `; END ;` ends the statement.
    const TRANS: [[usize; 8]; 8] = [
        /* 0 invalid */ [1, 0, 2, 3, 4, 2, 2, 2],
        /* 1 start   */ [1, 1, 2, 3, 4, 2, 2, 2],
        /* 2 normal  */ [1, 2, 2, 2, 2, 2, 2, 2],
        /* 3 explain */ [1, 3, 3, 2, 4, 2, 2, 2],
        /* 4 create  */ [1, 4, 2, 2, 2, 4, 5, 2],
        /* 5 trigger */ [6, 5, 5, 5, 5, 5, 5, 5],
        /* 6 semi    */ [6, 6, 5, 5, 5, 5, 5, 7],
        /* 7 end     */ [1, 7, 5, 5, 5, 5, 5, 5],
    ];
    let is_id = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let b = text.as_bytes();
    let mut pieces = Vec::new();
    let (mut start, mut state, mut i) = (0, 0, 0);
    // The index of the last byte of the first `close` at or after `from`
    // (the end of a string or comment), or None when it never closes.
    let closing = |from: usize, close: &[u8]| {
        b.get(from..)
            .and_then(|rest| rest.windows(close.len()).position(|w| w == close))
            .map(|j| from + j + close.len() - 1)
    };
    while i < b.len() {
        let (token, last) = match b[i] {
            b';' => (SEMI, Some(i)),
            b' ' | b'\r' | b'\t' | b'\n' | b'\x0c' => (WS, Some(i)),
            b'/' if b.get(i + 1) == Some(&b'*') => (WS, closing(i + 2, b"*/")),
            // A `--` comment runs to the end of its line (or of the text).
            b'-' if b.get(i + 1) == Some(&b'-') => {
                (WS, Some(closing(i, b"\n").unwrap_or(b.len() - 1)))
            }
            b'[' => (OTHER, closing(i + 1, b"]")),
            q @ (b'`' | b'"' | b'\'') => (OTHER, closing(i + 1, &[q])),
            c if is_id(c) => {
                let n = b[i..].iter().take_while(|&&c| is_id(c)).count();
                let word = &b[i..i + n];
                let token = match word.len() {
                    3 if word.eq_ignore_ascii_case(b"end") => END,
                    4 if word.eq_ignore_ascii_case(b"temp") => TEMP,
                    6 if word.eq_ignore_ascii_case(b"create") => CREATE,
                    7 if word.eq_ignore_ascii_case(b"trigger") => TRIGGER,
                    7 if word.eq_ignore_ascii_case(b"explain") => EXPLAIN,
                    9 if word.eq_ignore_ascii_case(b"temporary") => TEMP,
                    _ => OTHER,
                };
                (token, Some(i + n - 1))
            }
            _ => (OTHER, Some(i)),
        };
        let Some(last) = last else {
            break; // an unclosed string or comment: the rest is one piece
        };
        state = TRANS[state][token];
        if token == SEMI && state == START {
            pieces.push(&text[start..=i]);
            start = i + 1;
        }
        i = last + 1;
    }
    pieces.push(&text[start..]);
    pieces.retain(|p| !is_blank(p));
    pieces
}

/// Only whitespace, comments and semicolons.
fn is_blank(sql: &str) -> bool {
    let mut s = sql;
    loop {
        s = skip_comments(s);
        match s.strip_prefix(';') {
            Some(rest) => s = rest,
            None => return s.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The splitter's oracle: SQLite's own sqlite3_complete, asked about
    /// every prefix that ends in `;` (quadratic, fine for a test).
    fn split_by_sqlite(text: &str) -> Vec<&str> {
        let complete = |sql: &str| {
            let c = std::ffi::CString::new(sql).unwrap();
            // SAFETY: a valid NUL-terminated string, only read.
            unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
        };
        let mut pieces = Vec::new();
        let mut start = 0;
        for (i, _) in text.match_indices(';') {
            if complete(&text[start..=i]) {
                pieces.push(&text[start..=i]);
                start = i + 1;
            }
        }
        pieces.push(&text[start..]);
        pieces.retain(|p| !is_blank(p));
        pieces
    }

    proptest::proptest! {
        #[test]
        fn scripts_split_exactly_where_sqlite3_complete_says(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                ";", " ", "\n", "\t", "x", "1", "_a", "é", "CREATE", "create", "TEMP",
                "temporary", "TRIGGER", "trigger", "END", "end", "EXPLAIN", "BEGIN",
                "--c", "/*", "*/", "-", "/", "'", "\"", "`", "[", "]", "endx", "tempo",
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN ", "CREATE TEMP TRIGGER ",
                "EXPLAIN CREATE TRIGGER ", "SELECT 1; ", "END;", " END ;",
            ]), 0..40)
        ) {
            let text: String = parts.concat();
            proptest::prop_assert_eq!(split_statements(&text), split_by_sqlite(&text));
        }
    }

    #[test]
    fn scripts_split_like_the_sqlite3_shell_without_compiling() {
        let script = "-- lead\nUPDATE a SET s = 'x;y' ; /* c; */ INSERT INTO nope VALUES (1);;\n\
            CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET n = 1; DELETE FROM a; END;\n\
            -- only a comment;\n  ;\nSELECT \"a;b\" FROM a";
        let pieces: Vec<&str> = split_statements(script)
            .into_iter()
            .map(str::trim)
            .collect();
        assert_eq!(
            pieces,
            [
                "-- lead\nUPDATE a SET s = 'x;y' ;",
                "/* c; */ INSERT INTO nope VALUES (1);",
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET n = 1; DELETE FROM a; END;",
                "SELECT \"a;b\" FROM a",
            ]
        );
        assert!(split_statements(" -- x;\n;; /* y */ ").is_empty());
        // Thousands of `;` inside one unclosed string: one pass, not one per `;`.
        let long = format!("SELECT 1; SELECT '{}", ";".repeat(200_000));
        assert_eq!(split_statements(&long).len(), 2);
    }
}
