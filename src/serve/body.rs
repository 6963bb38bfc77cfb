//! Hyper's side of `/events`: the rare stream request that the direct path
//! did not take (see `direct::sniff`) gets its stream as a hyper body, with
//! the same frames, batches and keep-alive policy as the fan-out writer's.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::fanout::MAX_BATCH;
use super::keepalive::KeepAlive;
use super::routes::{self, Body, StreamStart};
use super::state::State;
use crate::events::log::EventLog;

/// Routes one request, streams attached as hyper bodies: hyper's service.
pub fn handle<B>(state: &Arc<State>, req: Request<B>) -> Response<Body> {
    let mut resp = routes::respond(state, req);
    if let Some(start) = resp.extensions_mut().remove::<StreamStart>() {
        let s = event_stream(
            state.log.clone(),
            start.cursor,
            state.config.keep_alive,
            start.guard,
        );
        *resp.body_mut() = BodyExt::boxed(StreamBody::new(s));
    }
    resp
}

/// One client's cursor and the timer for its keep-alive.
struct Reader<G> {
    log: Arc<EventLog>,
    rx: watch::Receiver<u64>,
    cursor: u64,
    ended: bool,
    keep_alive: KeepAlive,
    last_write: Instant,
    ping: Pin<Box<Sleep>>,
    _guard: G,
}

/// A client's view of the log: everything after `cursor`, then live events
/// as they come, a keep-alive comment when idle, and the end after
/// `finished`. Each poll writes all pending frames at once (up to
/// `MAX_BATCH`).
fn event_stream<G: Send + 'static>(
    log: Arc<EventLog>,
    cursor: u64,
    keep_alive: Duration,
    guard: G,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static {
    let keep_alive = KeepAlive::new(keep_alive);
    let now = Instant::now();
    let reader = Reader {
        rx: log.subscribe(),
        log,
        cursor,
        ended: false,
        keep_alive,
        last_write: now,
        ping: Box::pin(tokio::time::sleep_until(keep_alive.due(now))),
        _guard: guard,
    };
    stream::unfold(reader, |mut r| async move {
        if r.ended {
            return None;
        }
        loop {
            r.rx.borrow_and_update();
            if let Some(batch) = r.log.frames_after(r.cursor, MAX_BATCH) {
                r.cursor = batch.last;
                r.ended = batch.ends;
                // Only a clock read: the timer is re-armed when it fires, so
                // a busy stream does not touch the timer wheel per event.
                r.last_write = Instant::now();
                return Some((Ok(Frame::data(batch.bytes)), r));
            }
            if r.log.finished_id().is_some_and(|f| r.cursor >= f) {
                return None;
            }
            tokio::select! {
                changed = r.rx.changed() => if changed.is_err() { return None },
                () = r.ping.as_mut() => {
                    let due = r.keep_alive.due(r.last_write);
                    let now = Instant::now();
                    if now < due {
                        r.ping.as_mut().reset(due);
                        continue;
                    }
                    r.last_write = now;
                    r.ping.as_mut().reset(r.keep_alive.due(now));
                    return Some((Ok(Frame::data(KeepAlive::FRAME)), r));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Finished, Level};
    use futures_util::StreamExt;
    use serde_json::json;

    fn msg(n: u32) -> Event {
        Event::message(json!({}), Level::Info, format!("m{n}"))
    }

    fn finished() -> Event {
        Finished::ok()
    }

    async fn collect(
        s: impl Stream<Item = Result<Frame<Bytes>, Infallible>>,
    ) -> (Vec<crate::events::sse::ParsedEvent>, usize) {
        let mut p = crate::events::sse::Parser::new();
        let mut evs = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(Ok(f)) = s.next().await {
            evs.extend(p.feed(f.data_ref().unwrap()));
        }
        (evs, p.comments())
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_get_keep_alives_then_the_live_tail() {
        let log = Arc::new(EventLog::new());
        log.push(msg(1));
        let s = event_stream(log.clone(), 0, Duration::from_secs(15), ());
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(40)).await;
            writer.push(msg(2));
            writer.push(finished());
        });
        let (evs, pings) = collect(s).await;
        let ids: Vec<_> = evs.iter().map(|e| e.id.clone().unwrap()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(pings, 2, "two 15 s keep-alives in 40 s of silence");
        assert_eq!(evs[2].event, "finished");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_stream_starts_after_the_given_id() {
        let log = Arc::new(EventLog::new());
        for n in 0..5 {
            log.push(msg(n));
        }
        log.push(finished());
        let (evs, _) = collect(event_stream(log, 3, Duration::from_secs(15), ())).await;
        let ids: Vec<_> = evs.iter().map(|e| e.id.clone().unwrap()).collect();
        assert_eq!(ids, ["4", "5", "6"]);
    }
}
