//! serde_json's complaints about a plan name neither the field nor the
//! step ("invalid type: map, expected a sequence", "unknown field `x`"),
//! and quote a value however long; these say where, and cut it short.

use super::huge::{Part, path_at, place, takes};

/// What a plan's reader says at byte `stop` of `text`, where serde_json
/// said `msg`: the field by its place ("undo of step 2"), what it was
/// given and what it takes; for a field unknown, missing or given twice,
/// the object it is in. `None` for any other complaint.
pub(super) fn said(text: &str, stop: usize, msg: &str) -> Option<String> {
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        let (given, expected) = rest.rsplit_once(", expected ")?;
        return Some(
            typed(text, stop, given)
                .unwrap_or_else(|| format!("invalid type: {}, expected {expected}", cut(given))),
        );
    }
    let path = path_at(text, stop)?;
    let (head, field, tail) = field_named(msg)?;
    // An unknown or repeated field's name was read last; a missing one is
    // found at the end of the object that lacks it.
    let holder = match (head, &path[..]) {
        ("missing field ", _) => &path[..],
        (_, [outer @ .., Part::Field(_)]) => outer,
        _ => return None,
    };
    let holder = match holder {
        [] => "the plan".to_owned(),
        _ => place(holder).0,
    };
    Some(format!(
        "{head}`{}` in {holder}{tail}",
        super::short(field, 40)
    ))
}

/// A value of the wrong type, given at byte `stop`, said by its field's
/// place; `None` for a field whose own message says what it takes (the
/// counts of rows), or none at all.
fn typed(text: &str, stop: usize, given: &str) -> Option<String> {
    let (place, field) = place(&path_at(text, stop)?);
    let what = takes(&field)?;
    Some(format!("{place} is {}, where {what} goes", shown(given)))
}

/// serde's "unknown field `x`, expected …", "missing field `x`" and
/// "duplicate field `x`": the words before the name, the name, the rest.
fn field_named(msg: &str) -> Option<(&'static str, &str, &str)> {
    let head = ["unknown field ", "missing field ", "duplicate field "]
        .into_iter()
        .find(|h| msg.starts_with(h))?;
    let (field, tail) = msg[head.len()..].strip_prefix('`')?.split_once('`')?;
    Some((head, field, tail))
}

/// serde's name for what a plan gave (`map`, `string "x"`, `integer
/// `5``) as the plan writes it, a long text cut short.
fn shown(given: &str) -> String {
    match given {
        "map" => "an object".into(),
        "sequence" => "a list".into(),
        _ => match given.split_once(' ') {
            Some(("string", quoted)) => cut_quoted(quoted),
            _ => match given.split_once('`') {
                Some((_, literal)) => literal.trim_end_matches('`').to_owned(),
                None => given.to_owned(),
            },
        },
    }
}

/// serde's name for what a plan gave, a long text cut short.
fn cut(given: &str) -> String {
    match given.strip_prefix("string ") {
        Some(quoted) => format!("string {}", cut_quoted(quoted)),
        None => given.to_owned(),
    }
}

/// A text as serde quotes it, cut to 40 characters.
fn cut_quoted(quoted: &str) -> String {
    let text = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
    format!("\"{}\"", super::short(text.unwrap_or(quoted), 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_plan_gave_reads_as_written() {
        assert_eq!(shown("map"), "an object");
        assert_eq!(shown("sequence"), "a list");
        assert_eq!(shown("null"), "null");
        assert_eq!(shown("integer `-5`"), "-5");
        assert_eq!(shown("floating point `1.5`"), "1.5");
        assert_eq!(shown("boolean `true`"), "true");
        assert_eq!(shown(r#"string "a b""#), r#""a b""#);
        let long = shown(&format!("string \"{}\"", "x".repeat(100)));
        assert_eq!(long, format!("\"{}…\"", "x".repeat(39)));
    }

    #[test]
    fn a_field_is_named_by_its_place() {
        let text = r#"{"steps": [{"sql": "x"}, {"sql": "y", "undo": "no"}]}"#;
        let stop = text.find(r#""no""#).unwrap() + 4;
        let msg = r#"invalid type: string "no", expected a boolean"#;
        assert_eq!(
            said(text, stop, msg).as_deref(),
            Some(r#"undo of step 2 is "no", where true or false goes"#)
        );
        let stop = text.find(r#""undo""#).unwrap() + 6;
        let msg = "unknown field `undo`, expected one of `name`";
        assert_eq!(
            said(text, stop, msg).as_deref(),
            Some("unknown field `undo` in step 2, expected one of `name`")
        );
        assert_eq!(said(text, stop, "trailing characters"), None);
    }
}
