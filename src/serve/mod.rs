//! The HTTP side: a small hyper 1.x server that serves the event log as
//! server-sent events, a `/status` snapshot, `/metrics`, the dashboard and
//! `/healthz`.
//! It takes a bound listener and a stop future, so tests never guess ports.
//!
//! Inside, imports run one way: this file → the stream paths (`direct`,
//! `body`) → `routes` → {`auth`, `state`, `dashboard`}; the stream paths →
//! `fanout` → `keepalive` (which `body` uses too).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

mod auth;
mod body;
mod control;
mod dashboard;
mod direct;
mod fanout;
mod keepalive;
mod metrics;
mod routes;
mod state;

use crate::error::UsageError;
use direct::Sniffed;
use fanout::Fanout;

pub use auth::{check_control_token, check_distinct, check_token};
pub use routes::RUN_ID_HEADER;
pub use state::{Config, State};

/// Accepts connections until `stop` resolves, then lets open connections
/// finish (streams end after `finished`) for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(16 * 1024)
        // One request per connection: a browser would otherwise send its
        // EventSource request down the connection that fetched the page,
        // where hyper, not the fan-out writer, would serve the stream. On
        // localhost a new connection per request costs next to nothing.
        .keep_alive(false);
    // Direct streams are all written by one task; see `fanout`.
    let (fanout, writer) =
        Fanout::spawn(state.log.clone(), state.config.keep_alive, stall_timeout());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                conns.spawn(connection(
                    tcp,
                    state.clone(),
                    builder.clone(),
                    closing_rx.clone(),
                    fanout.clone(),
                ));
                while conns.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let all_done = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(drain, all_done).await;
    conns.abort_all();
    writer.abort();
}

/// Serves one connection: a fresh connection asking for /events is
/// streamed straight onto the socket; everything else is hyper's.
async fn connection(
    tcp: TcpStream,
    state: Arc<State>,
    builder: http1::Builder,
    mut closing: watch::Receiver<bool>,
    fanout: Fanout,
) {
    let peer = tcp
        .peer_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    // A connection that has not asked for anything yet is dropped at
    // shutdown rather than waited for.
    let sniffed = tokio::select! {
        s = direct::sniff(tcp) => s,
        _ = closing.wait_for(|c| *c) => return,
    };
    let io = match sniffed {
        Sniffed::Stream(tcp, req) => {
            return direct::serve(tcp, &state, req, &fanout).await;
        }
        Sniffed::Other(io) => io.dropped_after(fanout.stall),
        Sniffed::Gone => return,
    };
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            async move {
                let control = req.method() == hyper::Method::POST && req.uri().path() == "/control";
                Ok::<_, Infallible>(if control {
                    control::handle(&state, req, peer).await
                } else {
                    routes::ready(&state, &req).await;
                    body::handle(&state, req)
                })
            }
        }),
    );
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// How long a client's socket may take no bytes of an answer before the
/// server drops the connection. A viewer that stopped reading would
/// otherwise keep its `--max-clients` slot, and its unsent bytes, until the
/// run ends, and a few such clients could lock every real viewer out. A
/// slow reader stays: each byte it takes starts the wait again.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// [`STALL_TIMEOUT`], or `BATCHSSE_STALL_TIMEOUT_MS=N` so tests can watch a
/// stalled client dropped without a long wait.
fn stall_timeout() -> Duration {
    std::env::var("BATCHSSE_STALL_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(STALL_TIMEOUT, Duration::from_millis)
}

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`). tokio's default, 128, made a burst of 3,000
/// viewers wait on SYN retransmits for 17 s.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listen address with a message that says what to do on failure.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, UsageError> {
    // Every client is a descriptor: take what the system allows.
    crate::platform::raise_open_file_limit();
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted run can take its port
        // back at once (on Windows it would let others take it over).
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e| cannot_listen(addr, &e))
}

/// Why `addr` could not be listened on, and what to do about it.
fn cannot_listen(addr: SocketAddr, e: &std::io::Error) -> UsageError {
    if crate::platform::system_out_of_files(e) {
        return UsageError::new(format!(
            "cannot listen on {addr}: the system is out of open files ({e}), whatever this process's limit; close programs that hold many, or raise the system's limit (Linux: `sysctl fs.file-max`), and run again"
        ));
    }
    if crate::platform::out_of_files(e) {
        // Another address would fail the same way: a socket is a file.
        return UsageError::new(format!(
            "cannot listen on {addr}: this process is out of open files ({e}); raise its limit, e.g. `ulimit -n 4096`, and run again"
        ));
    }
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => "the port is already in use".to_owned(),
        std::io::ErrorKind::AddrNotAvailable => "that address is not on this machine".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".to_owned()
        }
        _ => e.to_string(),
    };
    UsageError::new(format!(
        "cannot listen on {addr}: {why}; pick another with --listen, e.g. --listen 127.0.0.1:0 for any free port"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start checks that a few files can still be opened, so a run
    /// cannot be brought to this point out of files from outside: the
    /// mapping alone is tested.
    #[cfg(unix)]
    #[test]
    fn out_of_files_at_bind_says_to_raise_the_limit_not_to_change_the_address() {
        let addr: SocketAddr = "127.0.0.1:7077".parse().unwrap();
        for (errno, who, raise) in [
            (libc::EMFILE, "this process is", "ulimit -n"),
            (libc::ENFILE, "the system is", "fs.file-max"),
        ] {
            let e = cannot_listen(addr, &std::io::Error::from_raw_os_error(errno)).0;
            assert!(
                e.contains("cannot listen on 127.0.0.1:7077")
                    && e.contains(&format!("{who} out of open files"))
                    && e.contains(raise),
                "{errno}: {e}"
            );
            assert!(!e.contains("--listen"), "{errno}: {e}");
        }
        let busy = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let e = cannot_listen(addr, &busy).0;
        assert!(
            e.contains("already in use") && e.contains("--listen 127.0.0.1:0"),
            "{e}"
        );
    }
}
