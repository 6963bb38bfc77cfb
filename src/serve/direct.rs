//! The direct stream path: a connection whose first request is
//! `GET /events` is answered on the socket itself and its stream handed to
//! the fan-out writer; anything else goes on to hyper, bytes read included.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::fanout::Fanout;
use super::routes::{self, Body, StreamStart};
use super::state::State;

/// The longest request head the direct path reads before giving up.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const PREFIX: &[u8] = b"GET /events";

pub enum Sniffed {
    /// A `GET /events` to answer with `serve`.
    Stream(TcpStream, Request<()>),
    /// Not a stream request: hyper takes it, bytes already read included.
    Other(Prefixed),
    /// Closed, broken or silent for too long: nothing to answer.
    Gone,
}

/// Reads just enough of the first request to tell whether it is
/// `GET /events`. Safe to cancel: nothing has been answered yet.
pub async fn sniff(mut tcp: TcpStream) -> Sniffed {
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        loop {
            let shown = buf.len().min(PREFIX.len());
            let is_stream = buf[..shown] == PREFIX[..shown]
                && (buf.len() <= PREFIX.len() || matches!(buf[PREFIX.len()], b' ' | b'?'));
            if !is_stream {
                return Some(false);
            }
            if head_ends(&buf) {
                return Some(true);
            }
            if buf.len() >= MAX_HEAD {
                return Some(false);
            }
            let mut chunk = [0u8; 1024];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let direct = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(Some(direct)) => direct,
        _ => return Sniffed::Gone,
    };
    if direct && let Some(req) = parse(&buf) {
        return Sniffed::Stream(tcp, req);
    }
    Sniffed::Other(Prefixed {
        prefix: Some(Bytes::from(buf)),
        inner: tcp,
        stall: None,
        stalled: None,
    })
}

/// Answers a sniffed `GET /events` on the socket itself; the stream goes
/// to the fan-out writer, and the body ends when the connection closes.
///
/// A stream then costs its socket and a cursor, not hyper's two 8 KiB
/// per-connection buffers and a task, which dominated at 10,000 viewers.
/// The answer is still `routes::respond`'s, so routing, auth and limits
/// stay in one place.
pub async fn serve(mut tcp: TcpStream, state: &Arc<State>, req: Request<()>, fanout: &Fanout) {
    routes::ready(state, &req).await;
    let mut resp = routes::respond(state, req);
    match resp.extensions_mut().remove::<StreamStart>() {
        Some(start) => {
            let head = encode_head(&resp, true);
            fanout
                .stream(tcp, head.into(), start.cursor, start.guard)
                .await;
        }
        // A client that reads none of a short answer is not waited for.
        None => {
            let _ = tokio::time::timeout(fanout.stall, write_response(&mut tcp, resp)).await;
        }
    }
}

/// True once `buf` holds a whole request head: an empty line, whether its
/// lines end in CRLF or in a bare LF (RFC 9112 §2.2 lets a server accept
/// both, and `printf 'GET /events HTTP/1.0\n\n'` is a fair request).
fn head_ends(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

/// A complete, well-formed GET head as a request; `None` sends it to hyper,
/// which answers malformed input with the right 4xx.
fn parse(buf: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = req.parse(buf).ok()? else {
        return None;
    };
    if req.method != Some("GET") {
        return None;
    }
    let mut b = Request::builder().method(Method::GET).uri(req.path?);
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(()).ok()
}

/// Writes a response with `connection: close`; a body of unknown length
/// (the event stream) simply ends when the socket closes.
async fn write_response(tcp: &mut TcpStream, resp: hyper::Response<Body>) {
    let head = encode_head(&resp, false);
    if tcp.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let mut body = resp.into_body();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data()
            && tcp.write_all(&data).await.is_err()
        {
            return;
        }
    }
    let _ = tcp.shutdown().await;
}

/// The status line and headers, with `connection: close`, and a
/// `content-length` when the body's length is known (never for a stream).
fn encode_head(resp: &hyper::Response<Body>, is_stream: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        resp.status().as_u16(),
        resp.status().canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in resp.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let no_body = matches!(
        resp.status(),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    );
    if let (false, false, Some(n)) = (no_body, is_stream, resp.body().size_hint().exact()) {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// A socket with the bytes already read put back in front, for hyper; a
/// write that makes no progress for the stall timeout fails, so hyper
/// drops a client that stopped reading (and the stream's slot with it).
pub struct Prefixed {
    prefix: Option<Bytes>,
    inner: TcpStream,
    stall: Option<Duration>,
    /// Armed while a write waits for room.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Prefixed {
    /// Fails writes that take no byte for `stall`.
    pub fn dropped_after(self, stall: Duration) -> Prefixed {
        Prefixed {
            stall: Some(stall),
            ..self
        }
    }

    /// A write's outcome: a write that waits arms the stall timer (once),
    /// and fails when it fires; any progress disarms it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(stall) = self.stall else {
            return write;
        };
        if write.is_ready() {
            self.stalled = None;
            return write;
        }
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for the stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = self.prefix.as_mut() {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if prefix.is_empty() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, write)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_get_heads_parse() {
        let r =
            parse(b"GET /events?last_event_id=4 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n")
                .unwrap();
        assert_eq!(r.uri().path(), "/events");
        assert_eq!(r.uri().query(), Some("last_event_id=4"));
        assert_eq!(r.headers()["last-event-id"], "7");
        assert!(parse(b"GET /events HTTP/1.1\r\nHost: x\r\n").is_none());
        assert!(parse(b"POST /events HTTP/1.1\r\n\r\n").is_none());
        assert!(parse(b"GET /events HTTP/1.1\r\nBad Header\r\n\r\n").is_none());
        let bare = parse(b"GET /events HTTP/1.0\nLast-Event-ID: 3\n\n").unwrap();
        assert_eq!(bare.headers()["last-event-id"], "3");
    }

    #[test]
    fn a_head_ends_at_an_empty_line_after_crlf_or_bare_lf() {
        for (head, ends) in [
            (&b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n"[..], true),
            (b"GET /events HTTP/1.0\n\n", true),
            (b"GET /events HTTP/1.1\nHost: x\n\n", true),
            (b"GET /events HTTP/1.1\nHost: x\n\r\n", true),
            (b"GET /events HTTP/1.1\r\nHost: x\r\n", false),
            (b"GET /events HTTP/1.1\nHost: x\n", false),
            (b"GET /events HTTP/1.1\r\n\r", false),
        ] {
            assert_eq!(head_ends(head), ends, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
