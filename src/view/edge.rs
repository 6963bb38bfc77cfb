//! Where the bars leave the cursor. indicatif pads every line it draws to
//! the terminal's edge, so after a draw the cursor waits past the last
//! column of the last bar. The `^C` a terminal echoes for a typed Ctrl-C
//! then wraps onto a row of its own, one below where indicatif's next
//! draw counts from, and that draw left the first bar behind on the
//! screen. Back at the start of its row after each draw, the echo lands
//! on the bar itself, which the next draw (or clear) writes over.

use std::io;

use console::Term;
use indicatif::{ProgressDrawTarget, TermLike};

/// indicatif's own stderr target (20 draws a second at most, hidden off a
/// terminal or on `TERM=dumb`), with the cursor sent back to the start of
/// its row after each draw.
pub fn stderr() -> ProgressDrawTarget {
    let term = Term::buffered_stderr();
    if !term.is_term() || console::is_dumb() {
        return ProgressDrawTarget::hidden();
    }
    // indicatif colours a target of its own kind by stderr, this one by
    // stdout: tell it stderr's answer.
    console::set_colors_enabled(console::colors_enabled_stderr());
    ProgressDrawTarget::term_like_with_hz(Box::new(AtRowStart(term)), 20)
}

#[derive(Debug)]
struct AtRowStart(Term);

impl TermLike for AtRowStart {
    fn width(&self) -> u16 {
        self.0.size().1
    }

    fn height(&self) -> u16 {
        self.0.size().0
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_up(n)
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_down(n)
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_right(n)
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_left(n)
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.0.write_line(s)
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.write_str(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        self.0.clear_line()
    }

    /// The end of a draw: a carriage return first leaves the edge.
    fn flush(&self) -> io::Result<()> {
        self.0.write_str("\r")?;
        self.0.flush()
    }
}
