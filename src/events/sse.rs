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

/// The longest line, and the most `data` in one event, that [`Parser`]
/// accepts. A run's `start` event lists every step on one line (about
/// 100 bytes a step: 1.2 MB for a 12,000-statement script), so this is far
/// above what batchsse sends and still bounds what a broken stream can cost.
pub const MAX_LINE: usize = 16 << 20;

/// A stream that broke [`Parser`]'s limit: not one batchsse would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooLong {
    #[error("a line longer than {}", size(*.0))]
    Line(usize),
    #[error("an event longer than {}", size(*.0))]
    Event(usize),
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// An incremental parser for `text/event-stream` bytes. A line or an
/// event's data over the limit ([`MAX_LINE`] unless set) stops it: an
/// endless line must not fill memory.
#[derive(Debug)]
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
    limit: usize,
    /// Set once the limit was broken: no more input is taken.
    broken: Option<TooLong>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::with_limit(MAX_LINE)
    }
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that refuses a line, or an event's data, over `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Parser {
            buf: Vec::new(),
            started: false,
            after_cr: false,
            data: String::new(),
            event: String::new(),
            has_data: false,
            last_id: None,
            retry: None,
            comments: 0,
            limit,
            broken: None,
        }
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

    /// Feeds bytes; returns the events they complete. Once the stream broke
    /// the limit, returns only the events completed before that and ignores
    /// the rest; [`Parser::try_feed`] says so.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        let _ = self.feed_into(bytes, &mut events);
        events
    }

    /// Feeds bytes; returns the events they complete, or the limit the
    /// stream broke (then, and on every later call, an error).
    pub fn try_feed(&mut self, bytes: &[u8]) -> Result<Vec<ParsedEvent>, TooLong> {
        let mut events = Vec::new();
        self.feed_into(bytes, &mut events)?;
        Ok(events)
    }

    fn feed_into(&mut self, bytes: &[u8], events: &mut Vec<ParsedEvent>) -> Result<(), TooLong> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let r = self.lines(bytes, events);
        if let Err(e) = r {
            self.broken = Some(e);
            self.buf = Vec::new();
            self.data = String::new();
        }
        r
    }

    /// Splits at CR, LF and CRLF (a CRLF may straddle two calls); a line cut
    /// by the end of `bytes` waits in `buf` for the rest.
    fn lines(&mut self, mut bytes: &[u8], events: &mut Vec<ParsedEvent>) -> Result<(), TooLong> {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\r' || b == b'\n') {
            if self.buf.len() + end > self.limit {
                return Err(TooLong::Line(self.limit));
            }
            let ev = if self.buf.is_empty() {
                self.line(&bytes[..end])?
            } else {
                let mut line = std::mem::take(&mut self.buf);
                line.extend_from_slice(&bytes[..end]);
                let ev = self.line(&line);
                // Keep the allocation for the next cut line.
                line.clear();
                self.buf = line;
                ev?
            };
            events.extend(ev);
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            self.after_cr = bytes[end] == b'\r' && end + 1 == bytes.len();
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        if self.buf.len() + bytes.len() > self.limit {
            return Err(TooLong::Line(self.limit));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, raw: &[u8]) -> Result<Option<ParsedEvent>, TooLong> {
        let mut raw = raw;
        if !self.started {
            self.started = true;
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        let line = String::from_utf8_lossy(raw);
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            self.comments += 1;
            return Ok(None);
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
                // `data` holds a newline per line; the event gets one fewer.
                if self.data.len() + value.len() > self.limit {
                    return Err(TooLong::Event(self.limit));
                }
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
        Ok(None)
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
    fn an_empty_feed_between_cr_and_lf_keeps_them_one_line_end() {
        let mut p = Parser::new();
        let mut evs = p.feed(b"data: a\r");
        for part in [&b""[..], b"\n", b"\r", b"", b"\n"] {
            evs.extend(p.feed(part));
        }
        evs.extend(p.feed(b"data: b\n\n"));
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert_eq!((evs[0].data.as_str(), evs[1].data.as_str()), ("a", "b"));
    }

    #[test]
    fn lines_and_events_over_the_limit_stop_the_parser() {
        // (input, limit, events before the stop, the stop)
        let cases: &[(&[u8], usize, usize, Option<TooLong>)] = &[
            (b"data: 1234567890\n\n", 16, 1, None),
            (b"data: 12345678901\n\n", 16, 0, Some(TooLong::Line(16))),
            (b"0123456789abcdefg", 16, 0, Some(TooLong::Line(16))),
            (b"0123456789abcdef", 16, 0, None),
            (b": 345678901234567\n", 16, 0, Some(TooLong::Line(16))),
            (
                b"id: 1\ndata: ok\n\nxxxxxxxxxxxxxxxxxxxxxxxx",
                16,
                1,
                Some(TooLong::Line(16)),
            ),
            // Short lines, one long event: its data is "12345678\n1234567"
            // (16 bytes, fits), then "12345678\n12345678" (17, does not).
            (b"data: 12345678\ndata: 1234567\n\n", 16, 1, None),
            (
                b"data: 12345678\ndata: 12345678\n\n",
                16,
                0,
                Some(TooLong::Event(16)),
            ),
            (b"data\n".repeat(17).leak(), 16, 0, None),
            (b"data\n".repeat(18).leak(), 16, 0, Some(TooLong::Event(16))),
            // Comments, ids and names are not data: they never pile up.
            (b": keep-alive\n".repeat(100).leak(), 16, 0, None),
            (b"event: x\nid: 2\n".repeat(100).leak(), 16, 0, None),
        ];
        for &(input, limit, before, stop) in cases {
            for chunk in [1, 3, input.len().max(1)] {
                let mut p = Parser::with_limit(limit);
                let mut evs = Vec::new();
                let mut got = None;
                for c in input.chunks(chunk) {
                    match p.try_feed(c) {
                        Ok(e) => evs.extend(e),
                        Err(e) => {
                            got = Some(e);
                            break;
                        }
                    }
                }
                let case = format!("{:?} in chunks of {chunk}", String::from_utf8_lossy(input));
                assert_eq!(got, stop, "{case}");
                if chunk == 1 {
                    assert_eq!(evs.len(), before, "{case}");
                }
                if let Some(e) = stop {
                    // Broken for good: the rest is refused, not parsed.
                    assert_eq!(p.try_feed(b"data: x\n\n"), Err(e), "{case}");
                    assert_eq!(p.feed(b"data: x\n\n"), vec![], "{case}");
                }
            }
        }
    }

    #[test]
    fn the_default_limit_takes_a_line_of_16_mib_and_refuses_one_more_byte() {
        let mut line = b"data: ".to_vec();
        line.resize(MAX_LINE, b'x');
        let mut p = Parser::new();
        assert_eq!(p.try_feed(&line).map(|e| e.len()), Ok(0));
        assert_eq!(p.try_feed(b"\n\n").map(|e| e.len()), Ok(1));
        line.push(b'x');
        assert_eq!(Parser::new().try_feed(&line), Err(TooLong::Line(MAX_LINE)));
        assert_eq!(
            TooLong::Line(MAX_LINE).to_string(),
            "a line longer than 16 MiB"
        );
        assert_eq!(
            TooLong::Event(10).to_string(),
            "an event longer than 10 bytes"
        );
    }

    #[test]
    fn comment_strips_line_breaks() {
        assert_eq!(&comment("keep\nalive")[..], b": keepalive\n\n");
    }
}
