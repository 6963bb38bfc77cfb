//! Errors that decide the exit status: a `UsageError` anywhere in an error
//! chain means bad usage or input, found before anything was written (exit 2);
//! an `Unreachable` means `watch` found no run (exit 3). Lines for people go
//! to stderr through [`print_line`], above the terminal's bars if any.

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
    /// `watch`: the stream its lines go to (standard output for `--progress
    /// json`, standard error for the others) was closed (`| head`), as a
    /// process killed by SIGPIPE would report it, or could not be written.
    pub const OUTPUT_CLOSED: u8 = 141;
}

/// Writes one line to stderr and ignores failure: with stderr on a closed
/// pipe (`2>&1 | head`), `eprintln!` would panic and turn a finished run
/// into exit 101. While the terminal draws bars, the line goes above them
/// (see [`set_bars`]): written straight through, it would land inside a bar
/// and be half drawn over at the bars' next redraw.
pub fn print_line(line: &str) {
    match bars() {
        Some(bars) => bars.println(&terminal_safe(line)),
        None => write_line(line),
    }
}

/// [`print_line`] for a line said because of a signal. On a terminal,
/// Ctrl-C's `^C` is echoed where the cursor was, at the start of the next
/// line: it is written over, not run into ("^Cbatchsse: interrupted").
pub fn print_line_on_signal(line: &str) {
    match bars() {
        Some(bars) => bars.println(&terminal_safe(line)),
        None => {
            over_ctrl_c();
            write_line(line);
        }
    }
}

/// [`print_line_on_signal`], then exit with `code`: bars on the terminal
/// are cleared first and never drawn again, so the line is the last one
/// on the screen.
pub fn exit_with_line(line: &str, code: u8) -> ! {
    match bars() {
        Some(bars) => bars.clear_for_good(),
        None => over_ctrl_c(),
    }
    write_line(line);
    // Nothing is dropped on the way out: the bars' own guard would not.
    crate::platform::echo_again();
    std::process::exit(i32::from(code))
}

/// Back to the start of the line, on a terminal only (a log keeps no CR).
fn over_ctrl_c() {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = err.write_all(b"\r");
    }
}

fn write_line(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    if writeln!(err, "{}", terminal_safe(line)).is_err() {
        STDERR_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Set once a line could not be written to stderr (its reader is gone, or
/// the disk is full). A run goes on regardless; `watch`, whose lines are
/// all it is for, stops (see [`stderr_failed`]).
static STDERR_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a line printed to stderr was refused: `watch` then exits as
/// when `--progress json` cannot write to stdout.
pub fn stderr_failed() -> bool {
    STDERR_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The bars the terminal draws, as the rest of the program may touch
/// them. Neither may fail or panic: a terminal that was closed refuses
/// every write.
pub trait Bars: Send + Sync {
    /// Prints `line` above the bars.
    fn println(&self, line: &str);
    /// Clears the bars and draws them no more: the process is exiting.
    fn clear_for_good(&self);
}

static BARS: std::sync::Mutex<Option<std::sync::Arc<dyn Bars>>> = std::sync::Mutex::new(None);

/// Registers the bars being drawn on the terminal (`None` once they are
/// gone), so that every line printed from elsewhere goes above them.
pub fn set_bars(bars: Option<std::sync::Arc<dyn Bars>>) {
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = bars;
}

fn bars() -> Option<std::sync::Arc<dyn Bars>> {
    BARS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `text` with the control characters a plan or a database may carry (an
/// escape sequence in a step's name, its SQL or an error) written as
/// `\u{1b}`, so they cannot clear the terminal, move its cursor to
/// overwrite a line, or retitle it; and so are the characters that would
/// reorder the rest of a line or end it unseen ([`crate::human::moves_text`]).
/// Line feeds and tabs stay, and so does a CR before a line feed (a plan
/// saved on Windows).
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_at = |i: usize, c: char| {
        let kept = c == '\n' || c == '\t' || (c == '\r' && text[i + 1..].starts_with('\n'));
        (c.is_control() && !kept) || crate::human::moves_text(c)
    };
    if !text.char_indices().any(|(i, c)| unsafe_at(i, c)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (i, c) in text.char_indices() {
        if unsafe_at(i, c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// `eprintln!` that never panics; see [`print_line`].
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::error::print_line(&format!($($arg)*))
    };
}
