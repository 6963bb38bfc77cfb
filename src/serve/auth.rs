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
    let from_header = bearer(headers).map(str::to_owned);
    [from_header, from_query]
        .into_iter()
        .flatten()
        .any(|given| same_secret(token, &given))
}

/// The token in `Authorization: Bearer T`, the scheme in any case (RFC
/// 9110 makes it case-insensitive), blanks around it ignored.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The longest token taken: the server reads a request head of at most
/// 16 KiB, which must also hold the request line and the other headers.
pub const MAX_TOKEN: usize = 4096;

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
    if token.len() > MAX_TOKEN {
        return Err(UsageError::new(format!(
            "{flag} is {} bytes long, more than the {MAX_TOKEN} a request can carry (the server reads a request head of at most 16 KiB); use a shorter secret, e.g. one made by `openssl rand -hex 32`",
            token.len()
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

/// The viewers' token and the control token, when both are given, must
/// differ: with one secret every viewer could steer the run.
pub fn check_distinct(token: Option<&str>, control_token: Option<&str>) -> Result<(), UsageError> {
    match (token, control_token) {
        (Some(t), Some(c)) if same_secret(t, c) => Err(UsageError::new(
            "--control-token is the same as --token, so everyone who may watch the run could also pause, re-pace or cancel it; give the control token its own secret (e.g. `openssl rand -hex 32`)",
        )),
        _ => Ok(()),
    }
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
    fn a_token_fits_in_a_request_head() {
        assert_eq!(check_token(&"t".repeat(MAX_TOKEN)), Ok(()));
        let e = check_control_token(&"t".repeat(MAX_TOKEN + 1))
            .unwrap_err()
            .0;
        assert!(
            e.contains("4097 bytes") && e.contains("--control-token"),
            "{e}"
        );
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("  bEaReR abc", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("abc", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h), token, "{value:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn one_secret_cannot_be_both_tokens() {
        assert!(check_distinct(Some("a"), Some("a")).is_err());
        for ok in [(Some("a"), Some("b")), (None, Some("a")), (Some("a"), None)] {
            assert_eq!(check_distinct(ok.0, ok.1), Ok(()));
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
