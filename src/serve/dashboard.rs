//! The dashboard served at `/`: one self-contained HTML page, embedded in
//! the binary, that follows `/events` with EventSource.

use std::sync::LazyLock;

pub const HTML: &str = include_str!("dashboard.html");

/// The page as a relay serves it: the same, but without the steering
/// section, since a relay cannot steer the run (it would only ever answer
/// 403).
pub static RELAYED: LazyLock<String> = LazyLock::new(|| {
    HTML.replacen(
        r#"<section id="steer" aria-label="Steer the run">"#,
        r#"<section id="steer" aria-label="Steer the run" hidden>"#,
        1,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relays_page_hides_only_the_steering_section() {
        assert_ne!(RELAYED.as_str(), HTML, "the section must be found");
        assert_eq!(RELAYED.len(), HTML.len() + " hidden".len());
        assert!(RELAYED.contains(r#"aria-label="Steer the run" hidden>"#));
    }
}
