//! The fan-out writer: one task that writes every new event to every direct
//! `/events` stream, and the connection-side handle (`Fanout::stream`) that
//! hands it a client and takes the client back when its socket is full.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::keepalive::KeepAlive;
use crate::events::log::{EventLog, Frames};

/// The most bytes one write hands a client that is behind: catching up
/// takes few writes, and a stalled client's unfinished write stays small.
pub const MAX_BATCH: usize = 64 * 1024;

/// The most frames one vectored write takes (Linux allows 1,024).
const MAX_IOV: usize = 256;

/// How often a sweep may look for events logged since it began.
const REFRESH: Duration = Duration::from_millis(1);

/// How many batches one sweep writes to a client that is far behind before
/// handing it back to its own task to catch up, so one reconnecting
/// client cannot hold up everyone's live events.
const TURNS: usize = 4;

/// One direct stream as the writer holds it: the socket's write half, the
/// cursor into the log, and what is still to be written of the last batch.
struct Client {
    tcp: OwnedWriteHalf,
    cursor: u64,
    pending: Pending,
    /// `pending` ends with `finished`: close once it is written.
    ends: bool,
    last_write: Instant,
    /// Set by the connection task when the client sent end-of-input (or
    /// too much input): it either left, or only half-closed and still
    /// reads. A probe tells.
    quiet: Arc<AtomicBool>,
    probed: bool,
}

struct Registration {
    client: Client,
    /// Where a client goes back to when its socket is full or it is far
    /// behind; dropped when the stream is over.
    back: oneshot::Sender<Client>,
}

/// What connection tasks tell the writer.
enum Msg {
    Join(Registration),
    /// A client sent end-of-input: probe it, and let go if it left.
    Left,
}

/// How often the writer at most probes clients that may have left, between
/// sweeps (a failed write in a sweep drops them anyway).
const PRUNE_EVERY: Duration = Duration::from_millis(100);

/// The handle connection tasks use to stream through the writer.
///
/// When the log grows the writer sweeps its clients once, handing each the
/// frames it has not yet had with one non-blocking vectored write straight
/// from the log's shared buffers (no copy), so an event costs one syscall
/// per client and no task wake-ups; at 10,000 viewers the per-client tasks'
/// wake, poll and re-arm cost more than the writes did.
///
/// A client whose socket is full (it stopped reading, or is far behind) is
/// handed back to its own connection task, which waits until the socket
/// drains and then returns it here. A stalled client therefore never delays
/// the sweep, and holds no memory beyond its socket and references to the
/// log's frames of its one unfinished write, until its socket has taken
/// nothing for the stall timeout: then it is dropped, and its
/// `--max-clients` slot freed. The connection task also keeps the socket's
/// read half, so a viewer that leaves is noticed at once.
#[derive(Clone)]
pub struct Fanout {
    tx: mpsc::UnboundedSender<Msg>,
    /// How long a handed-back client's write may make no progress before
    /// the stream is dropped (see [`super::STALL_TIMEOUT`]).
    pub stall: Duration,
}

impl Fanout {
    /// Starts the writer on the current runtime. It runs until the handle
    /// is aborted (the server does so once its connections have drained).
    pub fn spawn(
        log: Arc<EventLog>,
        keep_alive: Duration,
        stall: Duration,
    ) -> (Fanout, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(log, KeepAlive::new(keep_alive), rx));
        (Fanout { tx, stall }, task)
    }

    /// Streams the log from `cursor` onto `tcp`, after `head` (the response
    /// head, already encoded). Returns when the stream has ended: after
    /// `finished`, or when the client went away. This task reads the socket
    /// so that a departure is noticed at once, not at the next write.
    /// `guard` lives exactly as long. A client whose socket takes no bytes
    /// for [`Fanout::stall`] is dropped, and its slot with it.
    pub async fn stream(&self, tcp: TcpStream, head: Bytes, cursor: u64, guard: impl Send) {
        let _guard = guard;
        let (mut rd, wr) = tcp.into_split();
        let quiet = Arc::new(AtomicBool::new(false));
        // What the client sent after its request, over every turn here.
        let mut taken = 0;
        let mut client = Client {
            tcp: wr,
            cursor,
            pending: Pending::one(head),
            ends: false,
            last_write: Instant::now(),
            quiet: quiet.clone(),
            probed: false,
        };
        loop {
            let (back, mut returned) = oneshot::channel();
            if self
                .tx
                .send(Msg::Join(Registration { client, back }))
                .is_err()
            {
                return;
            }
            // The writer drops `back` once the stream is over.
            let c = if quiet.load(Ordering::Relaxed) {
                returned.await
            } else {
                tokio::select! {
                    c = &mut returned => c,
                    () = closed(&mut rd, &mut taken) => {
                        // Gone, or only done sending (a half-close): the
                        // writer's probe tells which, and lets go at once
                        // of a client that left.
                        quiet.store(true, Ordering::Relaxed);
                        let _ = self.tx.send(Msg::Left);
                        returned.await
                    }
                }
            };
            let Ok(c) = c else { return };
            client = c;
            // Stalled or far behind: write here, costing the writer nothing.
            while !client.pending.is_empty() {
                // On the heap: an array here would sit in every connection
                // task's future, stalled or not.
                let mut iov = vec![IoSlice::new(&[]); MAX_IOV];
                let k = client.pending.slices(&mut iov);
                let write = client.tcp.write_vectored(&iov[..k]);
                match tokio::time::timeout(self.stall, write).await {
                    Ok(Ok(n)) if n > 0 => client.pending.advance(n),
                    // Broken, or no byte taken for the whole stall timeout.
                    _ => return,
                }
            }
            client.last_write = Instant::now();
            if client.ends {
                let _ = client.tcp.shutdown().await;
                return;
            }
        }
    }
}

/// The most a stream client may send after its request and still be read:
/// an SSE client sends nothing, and a flood read 64 bytes at a time kept
/// the server's workers busy. Past it the socket is read no more, so the
/// kernel's flow control stops the sender.
const MAX_INPUT: usize = 64 * 1024;

/// Resolves when the client has sent end-of-input (or the socket broke, or
/// `taken`, what it sent after its request, passed [`MAX_INPUT`]). What it
/// sends is read and ignored.
async fn closed(rd: &mut OwnedReadHalf, taken: &mut usize) {
    loop {
        if rd.readable().await.is_err() {
            return;
        }
        let mut scrap = [0u8; 64];
        match rd.try_read(&mut scrap) {
            Ok(0) => return,
            Ok(n) => {
                *taken += n;
                if *taken > MAX_INPUT {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// What a sweep did with one client.
enum Outcome {
    /// Up to date (or given a keep-alive): stays with the writer.
    Kept,
    /// Its socket is full, or it is far behind: back to its own task.
    HandBack,
    /// Ended after `finished`, broken, or its task is gone.
    Done,
}

async fn run(log: Arc<EventLog>, keep_alive: KeepAlive, mut msgs: mpsc::UnboundedReceiver<Msg>) {
    let mut changed = log.subscribe();
    let mut held: Vec<Registration> = Vec::new();
    let mut fresh: Vec<Registration> = Vec::new();
    // One timer for every client: see `KeepAlive` for how they line up.
    let ping = tokio::time::sleep_until(keep_alive.due(Instant::now()));
    tokio::pin!(ping);
    let mut left = false;
    let mut pruned = Instant::now();
    loop {
        // Every held client is up to date after a sweep, so only new
        // events, a due keep-alive, new clients or departed ones need work.
        let woke_for_all = tokio::select! {
            biased;
            m = msgs.recv() => match m {
                Some(Msg::Join(reg)) => { fresh.push(reg); false }
                Some(Msg::Left) => { left = true; false }
                None => return,
            },
            c = changed.changed() => { if c.is_err() { return } true }
            () = &mut ping => true,
            () = tokio::time::sleep_until(pruned + PRUNE_EVERY), if left => false,
        };
        while let Ok(m) = msgs.try_recv() {
            match m {
                Msg::Join(reg) => fresh.push(reg),
                Msg::Left => left = true,
            }
        }
        if left && pruned.elapsed() >= PRUNE_EVERY {
            let now = Instant::now();
            held.retain_mut(|r| !r.back.is_closed() && still_there(&mut r.client, now));
            pruned = now;
            left = false;
        }
        // Whatever woke us, an event logged meanwhile or a due keep-alive
        // means a full sweep: the change is marked seen here and nowhere
        // else, so it cannot be lost.
        let (sweep_all, upto) = {
            let last = changed.borrow_and_update();
            (
                woke_for_all || last.has_changed() || ping.is_elapsed(),
                *last,
            )
        };
        let now = Instant::now();
        let mut batches = Batches::new(&log, upto);
        if sweep_all {
            let mut next_ping = keep_alive.due(now);
            let mut i = 0;
            while i < held.len() {
                // An event logged mid-sweep goes to the rest of this sweep
                // at once; the clients already passed get it in the next
                // sweep, which starts straight away (the change is unseen).
                // At most once a millisecond: a run logging thousands of
                // events a second would otherwise rebuild every client's
                // batch alone and share none.
                if *changed.borrow() != batches.upto && batches.since.elapsed() >= REFRESH {
                    batches = Batches::new(&log, *changed.borrow());
                }
                if let Some(c) = settle(&mut held, i, &mut batches, now, keep_alive) {
                    next_ping = next_ping.min(keep_alive.due(c));
                    i += 1;
                }
            }
            ping.as_mut().reset(next_ping);
        }
        for reg in fresh.drain(..) {
            held.push(reg);
            let last = held.len() - 1;
            settle(&mut held, last, &mut batches, now, keep_alive);
        }
    }
}

/// Serves `held[i]`; returns its last write time when it stays, and
/// otherwise removes it (swapping the last client into `i`).
fn settle(
    held: &mut Vec<Registration>,
    i: usize,
    batches: &mut Batches,
    now: Instant,
    keep_alive: KeepAlive,
) -> Option<Instant> {
    let reg = &mut held[i];
    // Its task ended (the client left, or shutdown): drop the stream.
    let outcome = if reg.back.is_closed() {
        Outcome::Done
    } else {
        write_pending(&mut reg.client, batches, now, keep_alive)
    };
    match outcome {
        Outcome::Kept => Some(reg.client.last_write),
        Outcome::HandBack => {
            let reg = held.swap_remove(i);
            let _ = reg.back.send(reg.client);
            None
        }
        Outcome::Done => {
            // Dropping the write half also sends the end of the stream.
            held.swap_remove(i);
            None
        }
    }
}

/// Probes, once, a client that sent end-of-input, with two keep-alive
/// comments: a client that left answers the first with a reset, so the
/// second fails; one that only half-closed reads both and ignores them.
fn still_there(c: &mut Client, now: Instant) -> bool {
    if !c.quiet.load(Ordering::Relaxed) || c.probed || !c.pending.is_empty() {
        return true;
    }
    c.probed = true;
    for _ in 0..2 {
        c.pending = Pending::one(KeepAlive::FRAME);
        match c.pending.try_write(&c.tcp) {
            Ok(_) if c.pending.is_empty() => c.last_write = now,
            // No room, or part of it written: the client is not reading
            // anyway, the rest stays pending and a later write tells.
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Writes everything the client has not had yet, as few writes as the
/// socket takes, without ever waiting, and a keep-alive if one is due.
fn write_pending(
    c: &mut Client,
    batches: &mut Batches,
    now: Instant,
    keep_alive: KeepAlive,
) -> Outcome {
    let mut turns = 0;
    loop {
        while !c.pending.is_empty() {
            match c.pending.try_write(&c.tcp) {
                Ok(0) => return Outcome::Done,
                Ok(_) => c.last_write = now,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Outcome::HandBack,
                Err(_) => return Outcome::Done,
            }
        }
        if c.ends {
            return Outcome::Done;
        }
        match batches.after(c.cursor) {
            Some(f) => {
                c.cursor = f.last;
                c.ends = f.ends;
                c.pending = Pending {
                    frames: Some(f.frames),
                    next: 0,
                    offset: 0,
                };
                turns += 1;
                if turns > TURNS {
                    return Outcome::HandBack;
                }
            }
            // At or past `finished` (an id a relay trusted before it had
            // copied the end): nothing more will come, so end as `body` does.
            None if batches.finished.is_some_and(|f| c.cursor >= f) => return Outcome::Done,
            None if keep_alive.due_in_sweep(c.last_write, now) => {
                c.pending = Pending::one(KeepAlive::FRAME);
            }
            None => return Outcome::Kept,
        }
    }
}

/// What is left to write of a client's frames.
struct Pending {
    /// `None` once all are written, so a finished write holds nothing.
    frames: Option<Arc<[Bytes]>>,
    /// The first frame not fully written, and how much of it was.
    next: usize,
    offset: usize,
}

impl Pending {
    fn one(frame: Bytes) -> Pending {
        Pending {
            frames: Some(Arc::from([frame])),
            next: 0,
            offset: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.frames.as_ref().is_none_or(|f| self.next >= f.len())
    }

    fn frames(&self) -> &[Bytes] {
        self.frames.as_deref().unwrap_or_default()
    }

    /// One non-blocking write of what is left, marked written. A single
    /// frame (the usual case: one new event) skips building a vector.
    fn try_write(&mut self, tcp: &OwnedWriteHalf) -> std::io::Result<usize> {
        let n = match self.frames().get(self.next..).unwrap_or_default() {
            [one] => tcp.try_write(&one[self.offset..])?,
            _ => {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let k = self.slices(&mut iov);
                tcp.try_write_vectored(&iov[..k])?
            }
        };
        self.advance(n);
        Ok(n)
    }

    /// Fills `iov` with what is left, up to its length; returns how many.
    fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut k = 0;
        for (i, frame) in self
            .frames()
            .get(self.next..)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if k == iov.len() {
                break;
            }
            let skip = if i == 0 { self.offset } else { 0 };
            iov[k] = IoSlice::new(&frame[skip..]);
            k += 1;
        }
        k
    }

    /// Marks `n` more bytes written; lets go of the frames once all are.
    fn advance(&mut self, mut n: usize) {
        while n > 0 && !self.is_empty() {
            let left = self.frames()[self.next].len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.next += 1;
            self.offset = 0;
        }
        if self.is_empty() {
            *self = Pending {
                frames: None,
                next: 0,
                offset: 0,
            };
        }
    }
}

/// The frames handed out in one sweep, by cursor: clients at the same
/// place in the log (nearly all of them) share one lookup and one list.
struct Batches<'a> {
    log: &'a EventLog,
    /// The log's last id when the lookups began, and when that was.
    upto: u64,
    since: std::time::Instant,
    /// The log's `finished` id when the lookups began, if it had one.
    finished: Option<u64>,
    by_cursor: HashMap<u64, Option<Frames>>,
}

impl<'a> Batches<'a> {
    fn new(log: &'a EventLog, upto: u64) -> Self {
        Batches {
            log,
            upto,
            since: std::time::Instant::now(),
            finished: log.finished_id(),
            by_cursor: HashMap::new(),
        }
    }

    fn after(&mut self, cursor: u64) -> Option<Frames> {
        self.by_cursor
            .entry(cursor)
            .or_insert_with(|| self.log.frame_list_after(cursor, MAX_BATCH, MAX_IOV))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Finished, Level, sse};
    use tokio::io::AsyncReadExt;

    /// Reads until `done` says so, feeding the SSE parser; bounded.
    async fn read_until(
        tcp: &mut TcpStream,
        parser: &mut sse::Parser,
        events: &mut Vec<sse::ParsedEvent>,
        done: impl Fn(&sse::Parser, &[sse::ParsedEvent], bool) -> bool,
    ) {
        let mut buf = [0u8; 4096];
        let mut eof = false;
        while !done(parser, events, eof) {
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .expect("the writer went quiet")
                .expect("read");
            eof = n == 0;
            events.extend(parser.feed(&buf[..n]));
        }
    }

    #[test]
    fn pending_frames_advance_across_partial_writes() {
        let frames: Vec<Bytes> = ["abc", "de", "fghi"]
            .iter()
            .map(|f| Bytes::from_static(f.as_bytes()))
            .collect();
        let mut p = Pending {
            frames: Some(Arc::from(frames)),
            next: 0,
            offset: 0,
        };
        fn left(p: &Pending) -> Vec<String> {
            let mut iov = [IoSlice::new(&[]); 2];
            let k = p.slices(&mut iov);
            iov[..k]
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        }
        assert_eq!(left(&p), ["abc", "de"], "no more slices than room");
        p.advance(2);
        assert_eq!(left(&p), ["c", "de"]);
        p.advance(3);
        assert_eq!(left(&p), ["fghi"]);
        p.advance(1);
        assert_eq!(left(&p), ["ghi"]);
        assert!(!p.is_empty());
        p.advance(3);
        assert!(p.is_empty());
        assert!(p.frames.is_none(), "the frames are let go");
    }

    #[tokio::test]
    async fn idle_streams_get_keep_alives_then_events_then_a_clean_end() {
        let log = Arc::new(EventLog::new());
        let (fanout, writer) = Fanout::spawn(
            log.clone(),
            Duration::from_millis(20),
            Duration::from_secs(30),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (served, _) = listener.accept().await.unwrap();
        let stream = tokio::spawn(async move {
            fanout
                .stream(served, Bytes::from_static(b": head\n\n"), 0, ())
                .await
        });
        let mut parser = sse::Parser::new();
        let mut events = Vec::new();
        // The head, then two keep-alives while nothing happens.
        read_until(&mut client, &mut parser, &mut events, |p, _, _| {
            p.comments() >= 3
        })
        .await;
        assert!(events.is_empty());
        log.push(Event::message(serde_json::json!({}), Level::Info, "hi"));
        log.push(Finished::ok());
        read_until(&mut client, &mut parser, &mut events, |_, _, eof| eof).await;
        let ids: Vec<_> = events.iter().filter_map(|e| e.id.clone()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(events[1].event, "finished");
        // The connection's task returns once the stream has ended.
        tokio::time::timeout(Duration::from_secs(10), stream)
            .await
            .expect("the stream task ended")
            .unwrap();
        writer.abort();
    }
}
