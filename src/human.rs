//! Numbers and durations as people read them, shared by the terminal, the
//! runner's messages and `watch`, so every place says the same thing.
//! (The dashboard's script follows the same rules in its own `fmt`.)

/// `n` rows, in words: "1 row", "1,200 rows".
pub fn rows(n: u64) -> String {
    format!("{} row{}", thousands(n), plural(n))
}

/// The plural ending for `n` things: "" for one, "s" for any other count.
pub fn plural(n: impl TryInto<u64>) -> &'static str {
    match n.try_into() {
        Ok(1) => "",
        _ => "s",
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds as a short human duration: `850 ms`, `2.5 s`, `3m07s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// A name or other text a user gave (a step's, a plan's, a table's, a
/// file's), as a message shows it: on one line, printable text as written
/// (accents, CJK, joined emoji), and only what would not show as itself
/// escaped: control characters (`\n`, `\r`, `\t`, `\u{1b}`), the line
/// and paragraph separators, and the bidirectional overrides that would
/// reorder the rest of the line. Where any is, a backslash is doubled, so
/// a written `\n` is not taken for a line break.
pub fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(s, hidden)
}

/// `s` with the characters `escape` picks written out (`\n`, `\r`, `\t`,
/// `\u{1b}`), and, where any is, each backslash doubled.
fn escaped(s: &str, escape: fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(escape) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if !escape(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.extend(c.escape_unicode()),
        }
    }
    out.into()
}

/// Characters [`shown`] escapes.
fn hidden(c: char) -> bool {
    c.is_control() || moves_text(c)
}

/// Characters other than controls that move the text around them: the
/// line and paragraph separators, and the bidirectional overrides and
/// isolates that reorder the rest of a line.
pub fn moves_text(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with only what would end its line escaped, as [`shown`] escapes
/// it (`\n`, `\r`, and the other line breaks): for text a message carries
/// as it is, such as SQLite's own messages, which it builds from names.
/// Where any is, a backslash is doubled, as in [`shown`].
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(s, ends_line)
}

/// Characters a terminal, a log or a browser may start a new line at.
fn ends_line(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// [`shown`] in quotes, for a name within a sentence: `"backfill"`; in
/// single quotes when it holds a double quote (`'say "hi"'`), and with
/// `\"` only when it holds both kinds.
pub fn quoted(s: &str) -> String {
    let s = shown(s);
    match (s.contains('"'), s.contains('\'')) {
        (false, _) => format!("\"{s}\""),
        (true, false) => format!("'{s}'"),
        (true, true) => format!("\"{}\"", s.replace('"', "\\\"")),
    }
}

/// Names a user gave, each [`shown`], joined by ", " (`a, b\nc`).
pub fn shown_list<S: AsRef<str>>(names: &[S]) -> String {
    let names: Vec<_> = names.iter().map(|n| shown(n.as_ref())).collect();
    names.join(", ")
}

/// A path a user gave, as a message shows it (see [`shown`]).
pub fn shown_path(p: &std::path::Path) -> String {
    shown(&p.to_string_lossy()).into_owned()
}

/// A path as one word for a shell command a message names (see
/// [`shell_word`]). A path whose name is not UTF-8 (a Latin-1 `café.db`)
/// keeps its bytes, each written `\xNN` in ANSI-C quotes: the command
/// pasted names the same file, not one of `U+FFFD`s. A relative path
/// that begins with `-` is written `./-…`: `--db -x.db` reads as an
/// option, to batchsse as to sqlite3.
pub fn shell_path(p: &std::path::Path) -> String {
    if path_bytes(p).first() == Some(&b'-') {
        return shell_path(&std::path::Path::new(".").join(p));
    }
    match p.to_str() {
        Some(s) => shell_word(s),
        None => ansi_c(path_bytes(p).utf8_chunks().flat_map(|chunk| {
            let bytes = chunk.invalid().iter().map(|b| format!("\\x{b:02x}"));
            chunk.valid().chars().map(ansi_c_char).chain(bytes)
        })),
    }
}

/// The bytes of a path, as the system holds them (lossy elsewhere than
/// Unix, where a path is not bytes).
fn path_bytes(p: &std::path::Path) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        p.as_os_str().as_bytes().into()
    }
    #[cfg(not(unix))]
    {
        match p.to_string_lossy() {
            std::borrow::Cow::Borrowed(s) => s.as_bytes().into(),
            std::borrow::Cow::Owned(s) => s.into_bytes().into(),
        }
    }
}

/// `s` as one shell word, quoted only if it must be.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with(['=', '~'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@%+=,".contains(c));
    if plain {
        s.to_owned()
    } else if s.chars().any(char::is_control) {
        // ANSI-C quoting keeps the word on one line (a workflow command
        // cannot hide in it) and is still one word to bash and zsh.
        ansi_c(s.chars().map(ansi_c_char))
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Pieces of a word, each written as ANSI-C quoting reads it, in `$'…'`.
fn ansi_c(pieces: impl Iterator<Item = String>) -> String {
    let mut out = String::from("$'");
    out.extend(pieces);
    out + "'"
}

/// One character as ANSI-C quoting (`$'…'`) reads it back. Another
/// control character is written as its UTF-8 bytes, `\xNN` each: bash
/// reads `\u0085` as the character only in a UTF-8 locale, and leaves it
/// as it is in the C locale (cron's, a container's).
fn ansi_c_char(c: char) -> String {
    match c {
        '\\' | '\'' => format!("\\{c}"),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c if c.is_control() => {
            let mut utf8 = [0; 4];
            let bytes = c.encode_utf8(&mut utf8).bytes();
            bytes.map(|b| format!("\\x{b:02x}")).collect()
        }
        c => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_path_that_is_not_utf8_keeps_its_bytes_in_a_shell_word() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/d b/caf\xe9's\n.db"));
        assert_eq!(shell_path(p), r"$'/d b/caf\xe9\'s\n.db'");
        assert_eq!(shell_path(std::path::Path::new("/d b/x")), "'/d b/x'");
        assert_eq!(shell_path(std::path::Path::new("-x.db")), "./-x.db");
        assert_eq!(shell_word("a\u{85}\u{1}b"), r"$'a\xc2\x85\x01b'");
    }

    #[test]
    fn one_row_is_a_row() {
        assert_eq!(
            [rows(0), rows(1), rows(1200)],
            ["0 rows", "1 row", "1,200 rows"]
        );
    }

    #[test]
    fn a_name_is_shown_on_one_line_as_written_but_for_what_does_not_show() {
        let family = "👨\u{200d}👩\u{200d}👧";
        for (raw, want) in [
            ("backfill", "\"backfill\""),
            (family, &format!("\"{family}\"")),
            ("café 家族 e\u{301}", "\"café 家族 e\u{301}\""),
            ("say \"hi\"", "'say \"hi\"'"),
            ("it's \"x\"", r#""it's \"x\"""#),
            ("it's", "\"it's\""),
            (r"C:\data\n.db", r#""C:\data\n.db""#),
            ("a\nb\r\tc", r#""a\nb\r\tc""#),
            ("\\\n", r#""\\\n""#),
            ("x\u{1b}[2J\u{7}\u{9b}", r#""x\u{1b}[2J\u{7}\u{9b}""#),
            (
                "a\u{2028}b\u{202e}c\u{2066}",
                r#""a\u{2028}b\u{202e}c\u{2066}""#,
            ),
            ("", "\"\""),
        ] {
            assert_eq!(quoted(raw), want, "{raw:?}");
            assert!(!shown(raw).contains(|c: char| c.is_control()), "{raw:?}");
        }
        assert_eq!(shown("plain"), "plain");
    }

    #[test]
    fn one_line_escapes_line_breaks_only() {
        for (raw, want) in [
            (
                "UNIQUE constraint failed: t.u",
                "UNIQUE constraint failed: t.u",
            ),
            ("a\nb", r"a\nb"),
            ("a\r\nb", r"a\r\nb"),
            ("C:\\x\ny", r"C:\\x\ny"),
            ("C:\\x", r"C:\x"),
            ("v\u{b}f\u{c}n\u{85}", r"v\u{b}f\u{c}n\u{85}"),
            ("l\u{2028}p\u{2029}", r"l\u{2028}p\u{2029}"),
            ("e\u{1b}[2J\tt\u{202e}", "e\u{1b}[2J\tt\u{202e}"),
        ] {
            assert_eq!(one_line(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn a_list_of_names_and_a_path_are_shown_each_on_one_line() {
        assert_eq!(
            shown_list(&["t", "a\nb", "k\u{1b}[2J"]),
            r"t, a\nb, k\u{1b}[2J"
        );
        assert_eq!(shown_list::<&str>(&[]), "");
        let p = std::path::Path::new("/data/gone\n::error::x.db");
        assert_eq!(shown_path(p), r"/data/gone\n::error::x.db");
    }

    #[test]
    fn numbers_and_durations_read_as_people_write_them() {
        let t: Vec<String> = [0, 999, 1000, 1234567, u64::MAX]
            .into_iter()
            .map(thousands)
            .collect();
        assert_eq!(
            t,
            [
                "0",
                "999",
                "1,000",
                "1,234,567",
                "18,446,744,073,709,551,615"
            ]
        );
        let d: Vec<String> = [0, 999, 1000, 2549, 59_999, 60_000, 187_000]
            .into_iter()
            .map(duration)
            .collect();
        assert_eq!(
            d,
            [
                "0 ms", "999 ms", "1.0 s", "2.5 s", "60.0 s", "1m00s", "3m07s"
            ]
        );
    }
}
