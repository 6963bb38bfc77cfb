//! `run --publish`: every event of the run appended to its Redis stream, in
//! order, by one background task that reads the event log like any other
//! reader. The runner never waits on it: the log is the queue, bounded by
//! the log's own compaction (a publisher that falls far behind skips only
//! superseded `progress` events, as a slow stream client would).
//!
//! After a lost connection the task reconnects with back-off and asks Redis
//! where the stream ends, then sends from the next event: explicit entry IDs
//! make that exact, whether Redis kept the stream or came back empty.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Backoff, Target, describe, event_id, latest_key, run_key, within};
use crate::events::log::{Entry, EventLog};
use crate::events::{Event, Level};

/// Events per round trip.
const BATCH: usize = 512;
/// A round trip that takes longer counts as a lost connection.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

/// The running publisher.
pub struct Publisher {
    task: JoinHandle<()>,
    /// The highest event id Redis holds.
    acked: watch::Receiver<u64>,
    log: Arc<EventLog>,
    target: Arc<Target>,
}

/// Starts publishing `log` over `conn` (already checked at start).
pub fn spawn(
    conn: MultiplexedConnection,
    target: Target,
    ttl: Duration,
    log: Arc<EventLog>,
) -> Publisher {
    let (acked_tx, acked) = watch::channel(0);
    let target = Arc::new(target);
    let task = Task {
        target: target.clone(),
        ttl: ttl.as_secs().max(1),
        log: log.clone(),
        acked: acked_tx,
        outage: None,
    };
    Publisher {
        task: tokio::spawn(task.run(conn)),
        acked,
        log,
        target,
    }
}

impl Publisher {
    /// Where it publishes, without the password.
    pub fn shown(&self) -> &str {
        self.target.shown()
    }

    /// At exit: waits up to `limit` until Redis holds every logged event;
    /// says on stderr how many it does not.
    pub async fn drain(mut self, limit: Duration) {
        let last = self.log.last_id();
        let all_in = self.acked.wait_for(|a| *a >= last);
        let _ = tokio::time::timeout(limit, all_in).await;
        self.task.abort();
        let acked = *self.acked.borrow();
        let missing = self.log.after(acked).len();
        if missing > 0 {
            crate::errln!(
                "batchsse: warning: {missing} event(s) were not published to {} (it did not take them within --drain-timeout {} s); the run itself is unaffected",
                self.target.shown(),
                limit.as_secs_f64()
            );
        }
    }
}

struct Task {
    target: Arc<Target>,
    /// `--publish-ttl`, in seconds.
    ttl: u64,
    log: Arc<EventLog>,
    acked: watch::Sender<u64>,
    /// Why Redis is out of reach, while it is.
    outage: Option<String>,
}

/// Where the run's keys are, once `start` names the run.
struct Keys {
    stream: String,
    run_id: String,
}

impl Task {
    async fn run(mut self, conn: MultiplexedConnection) {
        let mut changed = self.log.subscribe();
        let keys = loop {
            if let Some(run_id) = self.log.run_id() {
                break Keys {
                    stream: run_key(&run_id),
                    run_id,
                };
            }
            if changed.changed().await.is_err() {
                return;
            }
        };
        let mut conn = Some(conn);
        let mut backoff = Backoff::new();
        loop {
            let Some(c) = conn.as_mut() else {
                backoff.wait().await;
                conn = self.reconnect(&keys).await;
                continue;
            };
            let acked = *self.acked.borrow();
            let pending: Vec<Arc<Entry>> = self.log.after(acked).into_iter().take(BATCH).collect();
            let Some(last) = pending.last().map(|e| e.id) else {
                if self.log.finished_id().is_some_and(|f| acked >= f) {
                    return;
                }
                changed.borrow_and_update();
                if self.log.after(acked).is_empty() && changed.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match within(REPLY_LIMIT, self.send(c, &keys, &pending)).await {
                Ok(()) => {
                    self.acked.send_replace(last);
                    backoff.reset();
                }
                Err(e) => {
                    self.lost(&e);
                    conn = None;
                }
            }
        }
    }

    /// One round trip: the events, then the keys' expiry pushed back.
    async fn send(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &Keys,
        pending: &[Arc<Entry>],
    ) -> redis::RedisResult<()> {
        let mut p = redis::pipe();
        for e in pending {
            p.cmd("XADD")
                .arg(&keys.stream)
                .arg(format!("{}-0", e.id))
                .arg("event")
                .arg(e.event.name())
                .arg("data")
                .arg(&e.data)
                .ignore();
            if let Event::Start(s) = &e.event {
                p.cmd("SET")
                    .arg(latest_key(&s.plan))
                    .arg(&keys.run_id)
                    .arg("EX")
                    .arg(self.ttl)
                    .ignore();
            }
        }
        p.cmd("EXPIRE").arg(&keys.stream).arg(self.ttl).ignore();
        p.query_async::<()>(conn).await
    }

    /// Once per outage: a warning in the run's own log (it reaches Redis
    /// too, once Redis is back), or on stderr after `finished`.
    fn lost(&mut self, e: &redis::RedisError) {
        if self.outage.is_some() {
            return;
        }
        let why = describe(e);
        let text = format!(
            "lost the connection to Redis at {} ({why}); the run goes on, and its events will be sent when Redis is back",
            self.target.shown()
        );
        let event = Event::message(json!({"redis": self.target.shown()}), Level::Warn, &text);
        if self.log.push(event).is_none() {
            crate::errln!("batchsse: warning: {text}");
        }
        self.outage = Some(why);
    }

    /// A new connection, resuming after the last event Redis holds (none,
    /// if it came back empty); `None` while Redis is still out of reach.
    async fn reconnect(&mut self, keys: &Keys) -> Option<MultiplexedConnection> {
        let attempt = async {
            let mut conn = self.target.connect().await?;
            let top: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
                .arg(&keys.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            let held = top.first().and_then(|(id, _)| event_id(id)).unwrap_or(0);
            redis::RedisResult::Ok((conn, held))
        };
        match within(REPLY_LIMIT, attempt).await {
            Ok((conn, held)) => {
                self.acked.send_replace(held);
                if self.outage.take().is_some() {
                    let text = format!(
                        "reconnected to Redis at {}; publishing again from event {}",
                        self.target.shown(),
                        held + 1
                    );
                    let event =
                        Event::message(json!({"redis": self.target.shown()}), Level::Info, &text);
                    if self.log.push(event).is_none() {
                        crate::errln!("batchsse: {text}");
                    }
                }
                Some(conn)
            }
            Err(e) => {
                self.lost(&e);
                None
            }
        }
    }
}
