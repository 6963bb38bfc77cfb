//! The dashboard served at `/`: one self-contained HTML page, embedded in
//! the binary, that follows `/events` with EventSource.

pub const HTML: &str = include_str!("dashboard.html");
