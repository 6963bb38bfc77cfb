//! A record's finished parts, waiting for the statement that made them to
//! end: SQL cannot run inside the pre-update hook, so they are written to
//! the record's table only afterwards, in the same transaction. They are
//! held in memory up to a budget and written to an anonymous temporary
//! file after that, so a plain step over tens of millions of rows does not
//! hold its whole record in memory until it commits.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// A recorded part: its entries and its blob.
pub type Part = (u64, Vec<u8>);

/// How much of a statement's record is held in memory before the rest
/// goes to a temporary file.
pub const HELD_BYTES: usize = 32 << 20;

/// The variable that names the folder the file goes in (Rust's
/// `std::env::temp_dir` reads `TMP` first on Windows).
pub const TEMP_VAR: &str = if cfg!(windows) { "TMP" } else { "TMPDIR" };

/// The finished parts, oldest first.
pub struct Parts {
    budget: usize,
    held: Vec<Part>,
    held_bytes: usize,
    /// The file the parts past the budget went to, once there is one.
    file: Option<File>,
    /// Each part in the file: its entries and its length, in order.
    spilled: Vec<(u64, usize)>,
}

impl Parts {
    /// Holds up to `budget` bytes of parts in memory.
    pub fn new(budget: usize) -> Parts {
        Parts {
            budget,
            held: Vec::new(),
            held_bytes: 0,
            file: None,
            spilled: Vec::new(),
        }
    }

    /// Adds the next part; an error if it had to go to a file and could
    /// not.
    pub fn push(&mut self, part: Part) -> io::Result<()> {
        if self.file.is_none() && self.held_bytes + part.1.len() <= self.budget {
            self.held_bytes += part.1.len();
            self.held.push(part);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile()?),
        };
        file.write_all(&part.1)?;
        self.spilled.push((part.0, part.1.len()));
        Ok(())
    }

    /// Whether any part went to a file.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        !self.spilled.is_empty()
    }

    /// Takes the parts out, leaving none (a file goes with them).
    pub fn take(&mut self) -> Parts {
        std::mem::replace(self, Parts::new(self.budget))
    }

    /// Hands every part to `f`, oldest first, reading those in the file
    /// into one buffer in turn.
    pub fn each(
        self,
        mut f: impl FnMut(u64, &[u8]) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        for (rows, blob) in &self.held {
            f(*rows, blob)?;
        }
        let Some(mut file) = self.file else {
            return Ok(());
        };
        let unread = |e: io::Error| {
            super::store::failure(format!(
                "could not read the undo record back from its temporary file: {e}"
            ))
        };
        file.seek(SeekFrom::Start(0)).map_err(unread)?;
        let mut buf = Vec::new();
        for (rows, len) in self.spilled {
            buf.resize(len, 0);
            file.read_exact(&mut buf).map_err(unread)?;
            f(rows, &buf)?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl Parts {
    /// Every part, oldest first, read back into memory.
    pub fn into_vec(self) -> Vec<Part> {
        let mut out = Vec::new();
        self.each(|rows, blob| {
            out.push((rows, blob.to_vec()));
            Ok(())
        })
        .expect("parts read back");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u8, len: usize) -> Part {
        (n as u64, vec![n; len])
    }

    #[test]
    fn parts_past_the_budget_go_to_a_file_and_come_back_in_order() {
        let mut parts = Parts::new(10);
        let want: Vec<Part> = (1..=6).map(|n| part(n, 4 + n as usize)).collect();
        for p in &want {
            parts.push(p.clone()).unwrap();
        }
        assert_eq!(parts.held.len(), 1, "only the first fits in 10 bytes");
        assert!(parts.spilled());
        assert_eq!(parts.take().into_vec(), want);
        assert!(!parts.spilled() && parts.held.is_empty());
    }

    #[test]
    fn parts_within_the_budget_stay_in_memory() {
        let mut parts = Parts::new(100);
        parts.push(part(1, 40)).unwrap();
        parts.push(part(2, 60)).unwrap();
        assert!(!parts.spilled());
        assert_eq!(parts.take().into_vec(), vec![part(1, 40), part(2, 60)]);
    }

    #[test]
    fn an_error_from_the_consumer_stops_the_reading() {
        let mut parts = Parts::new(0);
        for n in 1..=3 {
            parts.push(part(n, 8)).unwrap();
        }
        let mut seen = 0;
        let r = parts.take().each(|_, _| {
            seen += 1;
            Err(rusqlite::Error::InvalidQuery)
        });
        assert!(r.is_err());
        assert_eq!(seen, 1);
    }
}
