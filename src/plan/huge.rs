//! A number in a plan too large for any JSON reader (past ±1.8e308):
//! serde_json says only "number out of range", so the plan's text is read
//! again to find the first such number and the field it was given for.
//! The same walk finds the field of serde_json's other complaints
//! (`named`).

use super::{ChangesFile, ChunkFile, ROW_FIELDS, Shape, StepFile};

/// What a plan's reader says of a number too large in `text`, read up to
/// byte `stop` (where serde_json stopped): the field, what it was given
/// and what it takes. `None` when what stopped it was something else.
pub(super) fn said(text: &str, stop: usize) -> Option<String> {
    let (_, literal, path) = first_huge(text).filter(|(at, ..)| *at < stop)?;
    let (place, field) = place(&path);
    let literal = super::short(literal, 24);
    Some(match ROW_FIELDS.iter().find(|r| r.0 == field) {
        Some(r) => format!(
            "{place} is {literal}, out of range: it takes a whole number of rows from {} to {}, written without quotes or a decimal point, such as 1000",
            r.1,
            u64::MAX
        ),
        None => match takes(&field) {
            Some(what) => format!("{place} is {literal}, a number out of range, where {what} goes"),
            None => format!("{place} is {literal}, a number out of range"),
        },
    })
}

/// The field at `path` as a message names it ("chunk.size of step 2"),
/// and as a plan's reader knows it ("chunk.size"; "step" for a step).
pub(super) fn place(path: &[Part]) -> (String, String) {
    let (step, rest) = match path {
        [Part::Field(steps), Part::Item(i), rest @ ..] if steps == "steps" => (Some(i + 1), rest),
        _ => (None, path),
    };
    let mut field = String::new();
    for part in rest {
        match part {
            Part::Field(name) if field.is_empty() => field += name,
            Part::Field(name) => field += &format!(".{name}"),
            Part::Item(n) => field += &format!("[{n}]"),
        }
    }
    let field = crate::human::shown(&field).into_owned();
    match (step, field.is_empty()) {
        (Some(n), true) => (format!("step {n}"), "step".into()),
        (Some(n), false) => (format!("{field} of step {n}"), field),
        (None, _) => (format!("the plan's {field}"), field),
    }
}

/// What a field of a plan takes, but for the counts of rows.
pub(super) fn takes(field: &str) -> Option<&'static str> {
    Some(match field {
        "name" | "sql" | "expect" | "chunk.table" | "chunk.key" => "a string",
        "undo" | "foreign_keys" => "true or false",
        "steps" => "a list of steps",
        "step" => StepFile::EXAMPLE,
        "chunk" => ChunkFile::EXAMPLE,
        "expect_changes" => ChangesFile::EXAMPLE,
        _ => return None,
    })
}

/// One step of the way to a value: a field's name, or a place in a list.
#[derive(Debug, PartialEq)]
pub(super) enum Part {
    Field(String),
    Item(usize),
}

/// The first number in `text` that does not fit a float: where it starts,
/// as written, and the fields around it from the outside in. `None` when
/// there is none (or the text stops being JSON before one).
pub(super) fn first_huge(text: &str) -> Option<(usize, &str, Vec<Part>)> {
    let mut found = None;
    let path = walk(text, text.len(), |at, literal, _| {
        let huge = literal.parse::<f64>().is_ok_and(f64::is_infinite);
        found = found.or(huge.then_some((at, literal)));
        huge
    })?;
    let (at, literal) = found?;
    Some((at, literal, path))
}

/// The fields around byte `stop` of `text`, from the outside in: the
/// field whose value (or name) a reader that stopped there was reading.
/// `None` when the text stops being JSON before.
pub(super) fn path_at(text: &str, stop: usize) -> Option<Vec<Part>> {
    walk(text, stop, |_, _, _| false)
}

/// Walks `text` up to byte `stop`, keeping the fields around the place it
/// has reached, and shows `number` each number on the way (where it
/// starts, as written, and those fields); the walk ends early when
/// `number` says so. The fields where it ended, or `None` when the text
/// stops being JSON first.
fn walk<'t>(
    text: &'t str,
    stop: usize,
    mut number: impl FnMut(usize, &'t str, &[Part]) -> bool,
) -> Option<Vec<Part>> {
    let bytes = text.as_bytes();
    let mut path: Vec<Part> = Vec::new();
    // Per open object: whether the next string is a field's name.
    let mut naming: Vec<bool> = Vec::new();
    let mut i = 0;
    while i < stop.min(bytes.len()) {
        let in_object = matches!(path.last(), Some(Part::Field(_)));
        match bytes[i] {
            b'{' => {
                path.push(Part::Field(String::new()));
                naming.push(true);
            }
            b'[' => path.push(Part::Item(0)),
            b'}' | b']' => {
                if path.pop().is_some_and(|p| matches!(p, Part::Field(_))) {
                    naming.pop();
                }
            }
            b',' => match path.last_mut() {
                Some(Part::Item(n)) => *n += 1,
                _ => *naming.last_mut()? = true,
            },
            b'"' => {
                let end = string_end(bytes, i)?;
                if in_object && naming.last() == Some(&true) {
                    let name = serde_json::from_str(&text[i..end]).ok()?;
                    *path.last_mut()? = Part::Field(name);
                    *naming.last_mut()? = false;
                }
                i = end;
                continue;
            }
            b'-' | b'0'..=b'9' => {
                let end = i + bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .unwrap_or(bytes.len() - i);
                if number(i, &text[i..end], &path) {
                    return Some(path);
                }
                i = end;
                continue;
            }
            b':' | b' ' | b'\t' | b'\n' | b'\r' | b't' | b'r' | b'u' | b'e' | b'f' | b'a'
            | b'l' | b's' | b'n' => {}
            _ => return None,
        }
        i += 1;
    }
    Some(path)
}

/// Where the string that opens at `start` ends (past its closing quote).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_huge_number_is_found_with_its_fields() {
        let f = |s: &str| Part::Field(s.into());
        let text = r#"{"name": "a \"}[", "steps": [{"sql": "x", "undo": true},
            {"sql": "y", "chunk": {"table": "t", "size": 1e400}, "x": -2e999}]}"#;
        let (at, literal, path) = first_huge(text).unwrap();
        assert_eq!(&text[at..at + 5], "1e400");
        assert_eq!(literal, "1e400");
        assert_eq!(path, [f("steps"), Part::Item(1), f("chunk"), f("size")]);
        let digits = format!("[1, {}]", "9".repeat(400));
        let (_, _, path) = first_huge(&digits).unwrap();
        assert_eq!(path, [Part::Item(1)]);
        // Tiny is not huge; nor is a number past where the text stops
        // being JSON.
        for none in [
            r#"{"size": 1e300, "n": -0.5e-999}"#,
            r#"{"a": nope, "b": 1e400}"#,
        ] {
            assert_eq!(first_huge(none), None, "{none}");
        }
    }
}
