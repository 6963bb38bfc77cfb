//! Errors that decide the exit status: a `UsageError` anywhere in an error
//! chain means bad usage or input, found before anything was written (exit 2);
//! an `Unreachable` means `watch` found no run (exit 3).

/// Bad usage or input: the message says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        UsageError(msg.into())
    }
}

/// `watch` found no run to follow (exit 3): the message says where it looked
/// and for how long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Exit statuses, in one place (documented in the README).
pub mod exit {
    /// The run finished ok (or had already been applied).
    pub const OK: u8 = 0;
    /// A step failed; its transaction was rolled back.
    pub const FAILED: u8 = 1;
    /// Bad usage or input, found before anything was written.
    pub const USAGE: u8 = 2;
    /// `watch`: no run could be reached.
    pub const UNREACHABLE: u8 = 3;
    /// Interrupted by Ctrl-C or SIGTERM.
    pub const INTERRUPTED: u8 = 130;
    /// `watch --progress json`: standard output was closed (`| head`), as a
    /// process killed by SIGPIPE would report it.
    pub const OUTPUT_CLOSED: u8 = 141;
}

/// Writes one line to stderr and ignores failure: with stderr on a closed
/// pipe (`2>&1 | head`), `eprintln!` would panic and turn a finished run
/// into exit 101.
pub fn print_line(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// `eprintln!` that never panics; see [`print_line`].
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::error::print_line(&format!($($arg)*))
    };
}
