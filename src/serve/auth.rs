//! The run's token: the one rule for what a token may be (checked before a
//! run, a demo or a watch starts) and the check of a request against it,
//! in constant time.

use hyper::HeaderMap;
use hyper::header;
use sha2::{Digest, Sha256};

use crate::error::UsageError;

/// Checks the token from the `Authorization` header or the query's
/// `token`, in constant time.
pub(super) fn authorized(token: &str, headers: &HeaderMap, from_query: Option<String>) -> bool {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(|t| t.trim().to_owned());
    [from_header, from_query]
        .into_iter()
        .flatten()
        .any(|given| same_secret(token, &given))
}

/// The one rule for a token, for `run`, `demo` and `watch` alike. It must
/// reach `authorized` intact both ways: in `Authorization: Bearer T` (hyper
/// reads a header value as text only when it is visible ASCII, and the value
/// is trimmed) and as `?token=T` (percent-encoded). Only visible ASCII,
/// 0x21–0x7E, does both. The message never repeats the secret.
pub fn check_token(token: &str) -> Result<(), UsageError> {
    check_secret("--token (or BATCHSSE_TOKEN)", token)
}

/// [`check_token`]'s rule for `--control-token`, which travels the same way.
pub fn check_control_token(token: &str) -> Result<(), UsageError> {
    check_secret("--control-token (or BATCHSSE_CONTROL_TOKEN)", token)
}

fn check_secret(flag: &str, token: &str) -> Result<(), UsageError> {
    if token.is_empty() {
        return Err(UsageError::new(format!(
            "{flag} is empty; give the run's secret or leave it unset"
        )));
    }
    let Some((at, c)) = token
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, '\x21'..='\x7e'))
    else {
        return Ok(());
    };
    let what = match c {
        ' ' => "a space",
        c if c.is_ascii() => "a control character",
        _ => "a non-ASCII character",
    };
    Err(UsageError::new(format!(
        "{flag} has {what} (character {}), which cannot be sent in an HTTP header; \
         use only visible ASCII (letters, digits and punctuation, 0x21-0x7E), e.g. a token made by `openssl rand -hex 32`",
        at + 1
    )))
}

/// Compares digests so the time taken says nothing about the token.
pub(super) fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_visible_ascii_only() {
        let all: String = (0x21u8..=0x7e).map(char::from).collect();
        for good in ["s3cret", "a&b", "x", all.as_str()] {
            assert_eq!(check_token(good), Ok(()), "{good}");
        }
        for (bad, what) in [
            ("", "empty"),
            ("tök", "non-ASCII character (character 2)"),
            ("🔑", "non-ASCII character (character 1)"),
            ("a b", "a space (character 2)"),
            ("a\tb", "control character"),
            ("\u{7f}", "control character"),
            ("a\nb", "control character"),
        ] {
            let e = check_token(bad).unwrap_err().0;
            assert!(e.contains(what), "{bad:?}: {e}");
            assert!(e.contains("BATCHSSE_TOKEN"), "{e}");
        }
    }

    #[test]
    fn secrets_compare_by_value_only() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "x"));
    }
}
