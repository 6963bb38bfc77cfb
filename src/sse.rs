//! Server-sent events framing: an encoder that no payload can break, and a
//! parser that follows the WHATWG "event stream interpretation" rules, used
//! by `batchsse watch` and by the tests to read the stream back.

use bytes::{BufMut, Bytes, BytesMut};

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("SSE event name {0:?} contains CR, LF or NUL, which would break framing")]
    BadEventName(String),
}

/// Encodes one event. `data` may hold any text: CR, LF and CRLF each start
/// a new `data:` line, so the receiver gets the text back with LF line ends.
pub fn encode(id: Option<u64>, event: Option<&str>, data: &str) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(name) = event {
        if name.contains(['\r', '\n', '\0']) {
            return Err(FrameError::BadEventName(name.to_owned()));
        }
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    for line in split_lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    Ok(out.freeze())
}

/// A comment line, ignored by every client; used as a keep-alive.
pub fn comment(text: &str) -> Bytes {
    let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    Bytes::from(format!(": {text}\n\n"))
}

/// Splits on CRLF, CR or LF, the three line ends SSE recognises.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// One dispatched event, as EventSource would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The last event id in force when this event was dispatched.
    pub id: Option<String>,
    /// The `event:` field, or `message` when there was none.
    pub event: String,
    pub data: String,
}

/// An incremental parser for `text/event-stream` bytes.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    started: bool,
    after_cr: bool,
    data: String,
    event: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<u64>,
    comments: usize,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last `retry:` value seen, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// How many comment lines (such as `: keep-alive`) have been seen.
    pub fn comments(&self) -> usize {
        self.comments
    }

    /// The last event id, as a reconnecting client would send it.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    if let Some(ev) = self.line(&line) {
                        events.push(ev);
                    }
                }
                _ => self.buf.push(b),
            }
        }
        events
    }

    fn line(&mut self, raw: &[u8]) -> Option<ParsedEvent> {
        let mut raw = raw;
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        let line = String::from_utf8_lossy(raw);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "event" => self.event = value.to_owned(),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<ParsedEvent> {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(ParsedEvent {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(id: Option<u64>, event: Option<&str>, data: &str) -> ParsedEvent {
        let bytes = encode(id, event, data).expect("encodable");
        let mut p = Parser::new();
        let mut evs = p.feed(&bytes);
        assert_eq!(evs.len(), 1, "one frame must give one event: {bytes:?}");
        evs.pop().unwrap()
    }

    #[test]
    fn encodes_the_documented_shape() {
        let b = encode(Some(42), Some("progress"), r#"{"a":1}"#).unwrap();
        assert_eq!(&b[..], b"id: 42\nevent: progress\ndata: {\"a\":1}\n\n");
        let b = encode(Some(1), None, "x").unwrap();
        assert_eq!(&b[..], b"id: 1\ndata: x\n\n");
    }

    #[test]
    fn nasty_data_survives_the_round_trip() {
        let long = "x".repeat(1 << 20);
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("plain", "plain"),
            ("a\nb", "a\nb"),
            ("a\rb", "a\nb"),
            ("a\r\nb", "a\nb"),
            ("a\n\nb", "a\n\nb"),
            ("\n", "\n"),
            ("\r\n\r\n", "\n\n"),
            ("\r\r", "\n\n"),
            ("trailing\n", "trailing\n"),
            ("nul\0inside", "nul\0inside"),
            (" leading space", " leading space"),
            (":colon first", ":colon first"),
            (
                "data: fake\n\nevent: finished",
                "data: fake\n\nevent: finished",
            ),
            ("한국어 ✓ émoji 🚀", "한국어 ✓ émoji 🚀"),
            (&long, &long),
        ];
        for (input, want) in cases {
            let ev = roundtrip(Some(7), Some("step"), input);
            assert_eq!(&ev.data, want, "input {input:?}");
            assert_eq!(ev.event, "step");
            assert_eq!(ev.id.as_deref(), Some("7"));
        }
    }

    #[test]
    fn event_names_that_would_break_framing_are_refused() {
        for bad in ["a\nb", "a\rb", "a\0b", "\r\n"] {
            assert_eq!(
                encode(Some(1), Some(bad), "x"),
                Err(FrameError::BadEventName(bad.to_owned()))
            );
        }
    }

    #[test]
    fn no_event_line_means_message() {
        assert_eq!(roundtrip(None, None, "hi").event, "message");
    }

    #[test]
    fn parser_handles_split_input_and_every_line_end() {
        let stream = b"id: 1\r\nevent: a\r\ndata: x\r\n\r\n: keep-alive\n\nid: 2\rdata: y\r\rdata:z\ndata\n\n";
        for chunk in [1, 2, 3, 7, stream.len()] {
            let mut p = Parser::new();
            let evs: Vec<_> = stream.chunks(chunk).flat_map(|c| p.feed(c)).collect();
            assert_eq!(evs.len(), 3, "chunk size {chunk}");
            assert_eq!((evs[0].event.as_str(), evs[0].data.as_str()), ("a", "x"));
            assert_eq!(evs[1].id.as_deref(), Some("2"));
            assert_eq!(evs[1].data, "y");
            assert_eq!(evs[2].data, "z\n");
            assert_eq!(p.comments(), 1);
        }
    }

    #[test]
    fn parser_ignores_bom_bad_ids_and_dataless_blocks() {
        let mut p = Parser::new();
        let evs = p.feed("\u{feff}id: 5\nretry: 10\n\nid: a\0b\nevent: e\ndata: d\n\n".as_bytes());
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].id.as_deref(), Some("5"));
        assert_eq!(p.retry(), Some(10));
    }

    #[test]
    fn comment_strips_line_breaks() {
        assert_eq!(&comment("keep\nalive")[..], b": keepalive\n\n");
    }
}
