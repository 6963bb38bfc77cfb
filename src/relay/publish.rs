//! `run --publish`: every event of the run appended to its Redis stream, in
//! order, by one background task that reads the event log like any other
//! reader. The runner never waits on it: the log is the queue, bounded by
//! the log's own compaction (a publisher that falls far behind skips only
//! superseded `progress`, `control` and `throttle` events, as a slow stream
//! client would).
//!
//! After a lost connection the task reconnects with back-off and asks Redis
//! where the stream ends, then sends from the next event: explicit entry IDs
//! make that exact, whether Redis kept the stream or came back empty. A
//! refusal (a missing permission, a key of another type) is not retried:
//! the task says why, once, and stops; the run goes on. Each batch also
//! reads the stream's head, so a stream emptied under a live connection
//! is sent again from event 1; under Sentinel a batch counts only once a
//! replica has it (`WAIT`), so a failover cannot drop it unnoticed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    ALIVE_SECS, Backoff, Conn, Entries, Failure, Target, alive_key, begins_at_start, event_id,
    head_cmd, latest_key, run_key, within,
};
use crate::events::log::{Entry, EventLog};
use crate::events::{Event, Level};

/// Events per round trip.
const BATCH: usize = 512;
/// A round trip that takes longer counts as a lost connection.
const REPLY_LIMIT: Duration = Duration::from_secs(10);
/// How long the exit waits quietly before it says it is waiting for Redis.
const QUIET_DRAIN: Duration = Duration::from_millis(250);

/// Under Sentinel, how long a batch waits for one replica to have it.
const REPLICA_WAIT: Duration = Duration::from_secs(1);

/// A batch that no replica took: its primary may have been replaced by a
/// failover (and would lose it when it rejoins as a replica). Counted as a
/// lost connection: the publisher asks Sentinel for the primary again and
/// sends from where the stream ends there.
fn unreplicated() -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no replica took the events within {} s (WAIT 1); a failover may be under way",
            REPLICA_WAIT.as_secs()
        ),
    )
    .into()
}

/// The running publisher.
pub struct Publisher {
    task: JoinHandle<()>,
    /// The highest event id Redis holds.
    acked: watch::Receiver<u64>,
    /// Why events are not reaching Redis, while they are not.
    trouble: Arc<Mutex<Option<String>>>,
    log: Arc<EventLog>,
    target: Arc<Target>,
}

/// Starts publishing `log` over `conn` (already checked at start).
pub fn spawn(conn: Conn, target: Target, ttl: Duration, log: Arc<EventLog>) -> Publisher {
    let (acked_tx, acked) = watch::channel(0);
    let target = Arc::new(target);
    let trouble = Arc::new(Mutex::new(None));
    let task = Task {
        target: target.clone(),
        ttl: ttl.as_secs().max(1),
        log: log.clone(),
        acked: acked_tx,
        trouble: trouble.clone(),
        latest_set: false,
        refused: false,
        gone: Vec::new(),
        trimming: true,
        resuming: None,
    };
    Publisher {
        task: tokio::spawn(task.run(conn)),
        acked,
        trouble,
        log,
        target,
    }
}

impl Publisher {
    /// Where it publishes, without the password.
    pub fn shown(&self) -> &str {
        self.target.shown()
    }

    pub fn has_password(&self) -> bool {
        self.target.has_password()
    }

    /// The TLS file flags a relay of the same Redis needs.
    pub fn tls_flags(&self) -> &str {
        self.target.tls_flags()
    }

    /// At exit: waits up to `limit` (a Ctrl-C or SIGTERM after the
    /// `seen`th cuts it short) until Redis holds every logged event; says
    /// on stderr how many it does not, and why.
    pub async fn drain(mut self, limit: Duration, mut signals: watch::Receiver<u32>, seen: u32) {
        let last = self.log.last_id();
        let started = tokio::time::Instant::now();
        let mut acked = self.acked.clone();
        let wait = async {
            let slow = tokio::time::timeout(QUIET_DRAIN, acked.wait_for(|a| *a >= last))
                .await
                .is_err();
            if slow {
                let left = self.log.after(*acked.borrow()).len();
                crate::errln!(
                    "batchsse: waiting up to {} s for {} to take the last {left} event(s) (--drain-timeout; Ctrl-C stops waiting)",
                    limit.as_secs_f64(),
                    self.target.shown()
                );
                let rest = limit.saturating_sub(started.elapsed());
                let _ = tokio::time::timeout(rest, acked.wait_for(|a| *a >= last)).await;
            }
        };
        tokio::select! {
            () = wait => {}
            _ = signals.wait_for(|n| *n > seen) => {}
            // The task stopped on a refusal: nothing more will be sent.
            _ = &mut self.task => {}
        }
        self.task.abort();
        let missing = self.log.after(*self.acked.borrow()).len();
        if missing > 0 {
            let why = self.trouble.lock().ok().and_then(|t| t.clone());
            crate::errln!(
                "batchsse: warning: {missing} event(s) were not published to {} ({}); the run itself is unaffected",
                self.target.shown(),
                why.unwrap_or_else(|| "it did not take them in time".into())
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
    /// Why Redis is out of reach, while it is (shared with the exit).
    trouble: Arc<Mutex<Option<String>>>,
    /// The plan's `latest` key has been written once, by a round trip
    /// that went through: from then on it is only set where it is missing,
    /// so a resend after Redis came back empty never takes it back from a
    /// newer run. Until then every round trip writes it: the one that
    /// carried `start` may have failed after its events went in (in a
    /// Cluster, `latest` goes in a round trip of its own), and the resend
    /// goes on after them.
    latest_set: bool,
    /// Redis refused the events: nothing more is sent.
    refused: bool,
    /// Entries the log's compaction dropped, to go from the stream too.
    gone: Vec<u64>,
    /// False once Redis refused an `XDEL`: the stream then keeps them all.
    trimming: bool,
    /// Reconnected after an outage, from this event on: said once a round
    /// trip goes through.
    resuming: Option<u64>,
}

/// Where the run's keys are, once `start` names the run.
struct Keys {
    stream: String,
    latest: String,
    alive: String,
    run_id: String,
}

impl Task {
    async fn run(mut self, conn: Conn) {
        let mut changed = self.log.subscribe();
        let Some(keys) = self.keys(&mut changed).await else {
            return;
        };
        let mut conn = Some(conn);
        let mut backoff = Backoff::new();
        // While the run lives, its keys are kept alive: touched at least
        // this often, so they expire only `ttl` after its last sign of life.
        let touch_every =
            Duration::from_millis(self.ttl * 1000 / 3).min(Duration::from_secs(ALIVE_SECS / 3));
        loop {
            let Some(c) = conn.as_mut() else {
                backoff.wait().await;
                conn = self.reconnect(&keys).await;
                if self.refused {
                    return;
                }
                continue;
            };
            let acked = *self.acked.borrow();
            let pending = self.log.mirror_after(acked, BATCH);
            let round = match pending.last().map(|e| e.id) {
                Some(last) => {
                    let round = within(REPLY_LIMIT, self.send(c, &keys, &pending)).await;
                    round.map(|whole| whole.then_some(last))
                }
                None if self.log.finished_id().is_some_and(|f| acked >= f) => return,
                None => {
                    changed.borrow_and_update();
                    if !self.log.after_at_most(acked, 1).is_empty() {
                        continue;
                    }
                    match tokio::time::timeout(touch_every, changed.changed()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return,
                        Err(_) => within(REPLY_LIMIT, self.touch(c, &keys))
                            .await
                            .map(|whole| whole.then_some(acked)),
                    }
                }
            };
            let round = match round {
                Ok(Some(last)) => Ok(last),
                // The stream lost its head: send the run again from event 1.
                Ok(None) => within(REPLY_LIMIT, self.emptied(c, &keys))
                    .await
                    .map(|()| 0),
                Err(e) => Err(e),
            };
            match round {
                Ok(last) => {
                    self.acked.send_replace(last);
                    self.resumed();
                    backoff.reset();
                }
                Err(e) => {
                    conn = None;
                    if !self.failed(e) {
                        return;
                    }
                }
            }
        }
    }

    /// The run's keys, once `start` is logged; `None` if the log ends first.
    async fn keys(&self, changed: &mut watch::Receiver<u64>) -> Option<Keys> {
        loop {
            let start = self.log.after_at_most(0, 1);
            if let Some(Event::Start(s)) = start.first().map(|e| &e.event) {
                return Some(Keys {
                    stream: run_key(&self.target.tagged(&s.run_id)),
                    latest: latest_key(&s.plan),
                    alive: alive_key(&self.target.tagged(&s.run_id)),
                    run_id: s.run_id.clone(),
                });
            }
            changed.changed().await.ok()?;
        }
    }

    /// One round trip: the events, then the keys' expiry pushed back;
    /// false if the stream no longer begins with the run's `start`.
    async fn send(
        &mut self,
        conn: &mut Conn,
        keys: &Keys,
        pending: &[Arc<Entry>],
    ) -> redis::RedisResult<bool> {
        let mut p = redis::pipe();
        if self.target.is_cluster() {
            // A batch that meets a slot on the move (`ASK`) is sent again
            // by the crate to the new node, with `ASKING` before its first
            // command only. Were that an `XADD`, it would make the run's
            // stream there from this batch alone, and the reshard's
            // `MIGRATE` of the stream would fail (`BUSYKEY`). A read takes
            // the `ASKING` instead, and the new node refuses the rest.
            p.add_command(head_cmd(&keys.stream)).ignore();
        }
        let mut latest = redis::pipe();
        let mut has_start = false;
        let mut has_finished = false;
        for e in pending {
            has_finished |= matches!(e.event, Event::Finished(_));
            p.cmd("XADD")
                .arg(&keys.stream)
                .arg(format!("{}-0", e.id))
                .arg("event")
                .arg(e.event.name())
                .arg("data")
                .arg(e.data())
                .ignore();
            has_start |= matches!(e.event, Event::Start(_));
        }
        let set_latest = has_start || !self.latest_set;
        if set_latest {
            self.set_latest(&mut latest, keys);
        }
        self.keep_alive(&mut p, &mut latest, keys, !has_finished);
        let latest = self.along(&mut p, latest);
        p.add_command(head_cmd(&keys.stream));
        if self.target.is_sentinel() {
            p.cmd("WAIT").arg(1).arg(REPLICA_WAIT.as_millis() as u64);
        }
        let (head, replicas): (Entries, Option<u64>) = match self.target.is_sentinel() {
            true => p.query_async(conn).await?,
            false => (p.query_async::<(Entries,)>(conn).await?.0, None),
        };
        if let Some(latest) = latest {
            latest.query_async::<()>(conn).await?;
        }
        if replicas == Some(0) {
            return Err(unreplicated());
        }
        self.latest_set |= set_latest;
        self.trim(conn, keys).await?;
        Ok(begins_at_start(&head))
    }

    /// Deletes from the stream what the log's compaction dropped (old
    /// `progress`, `control` and `throttle` events a later one supersedes),
    /// so a run of days keeps a stream as bounded as its log, and a relay
    /// replaying it ends in the run's state just the same. A user without
    /// `XDEL` is told once, and its stream keeps every event.
    async fn trim(&mut self, conn: &mut Conn, keys: &Keys) -> redis::RedisResult<()> {
        self.gone.extend(self.log.take_dropped());
        if !self.trimming || self.gone.is_empty() {
            self.gone.clear();
            return Ok(());
        }
        let mut p = redis::pipe();
        for ids in self.gone.chunks(BATCH) {
            let del = p.cmd("XDEL").arg(&keys.stream);
            for id in ids {
                del.arg(format!("{id}-0"));
            }
            del.ignore();
        }
        // Under Sentinel, as for the events: a deletion only the primary
        // has would come back with a failover, and be forgotten here.
        let sentinel = self.target.is_sentinel();
        if sentinel {
            p.cmd("WAIT").arg(1).arg(REPLICA_WAIT.as_millis() as u64);
        }
        let replicas = match sentinel {
            true => p.query_async::<(u64,)>(conn).await.map(|(n,)| n),
            false => p.query_async::<()>(conn).await.map(|()| 1),
        };
        match replicas {
            Ok(0) => return Err(unreplicated()),
            Ok(_) => self.gone.clear(),
            Err(e) => match self.target.failure(e) {
                Failure::Away(why) => return Err(std::io::Error::other(why).into()),
                Failure::Refused(why) => {
                    self.trimming = false;
                    self.gone.clear();
                    let text = format!(
                        "Redis at {} refused to delete superseded events from the run's stream ({why}); it keeps every event (give the Redis user +xdel)",
                        self.target.shown()
                    );
                    self.say(Level::Warn, text);
                }
            },
        }
        Ok(())
    }

    /// Keeps the keys of a run that is alive but quiet (paused, throttled,
    /// waiting for clients) from expiring; false if the stream no longer
    /// begins with the run's `start`.
    async fn touch(&mut self, conn: &mut Conn, keys: &Keys) -> redis::RedisResult<bool> {
        let (mut p, mut latest) = (redis::pipe(), redis::pipe());
        // Only ever here with `start` in Redis: nothing after it is left.
        let set_latest = !self.latest_set;
        if set_latest {
            self.set_latest(&mut latest, keys);
        }
        self.keep_alive(&mut p, &mut latest, keys, true);
        let latest = self.along(&mut p, latest);
        let (head,): (Entries,) = p
            .add_command(head_cmd(&keys.stream))
            .query_async(conn)
            .await?;
        if let Some(latest) = latest {
            latest.query_async::<()>(conn).await?;
        }
        self.latest_set |= set_latest;
        Ok(begins_at_start(&head))
    }

    /// `SET` the plan's `latest` key to this run (`NX` once it has been).
    fn set_latest(&self, latest: &mut redis::Pipeline, keys: &Keys) {
        let set = latest.cmd("SET").arg(&keys.latest).arg(&keys.run_id);
        if self.latest_set {
            set.arg("NX");
        }
        set.arg("EX").arg(self.ttl).ignore();
    }

    /// The stream was emptied under a live connection (`FLUSHALL`, an
    /// eviction): what is left of it goes, so that it is written again
    /// from event 1 (and the plan's `latest` key with it), and the run says
    /// so. Explicit ids keep a relay that had read part of it in step.
    async fn emptied(&mut self, conn: &mut Conn, keys: &Keys) -> redis::RedisResult<()> {
        // It is sent again from the log, which no longer holds these.
        self.gone.clear();
        redis::cmd("DEL")
            .arg(&keys.stream)
            .query_async::<()>(conn)
            .await?;
        let text = format!(
            "the run's stream in Redis at {} was emptied (FLUSHALL, or evicted under maxmemory); publishing it again from event 1",
            self.target.shown()
        );
        self.say(Level::Warn, text);
        Ok(())
    }

    /// Pushes the keys' expiry back; `alive` while the run has not finished,
    /// else its `alive` key goes.
    fn keep_alive(
        &self,
        p: &mut redis::Pipeline,
        latest: &mut redis::Pipeline,
        keys: &Keys,
        alive: bool,
    ) {
        p.cmd("EXPIRE").arg(&keys.stream).arg(self.ttl).ignore();
        latest
            .cmd("EXPIRE")
            .arg(&keys.latest)
            .arg(self.ttl)
            .ignore();
        if alive {
            let set = p.cmd("SET").arg(&keys.alive).arg(1);
            set.arg("EX").arg(ALIVE_SECS).ignore();
        } else {
            p.cmd("DEL").arg(&keys.alive).ignore();
        }
    }

    /// The commands on the plan's `latest` key go in the run's round trip;
    /// in a Cluster, where that key lives in another slot than the run's,
    /// they come back to be sent on their own, after the run's (so a
    /// relay never finds `latest` naming a stream not written yet).
    fn along(&self, p: &mut redis::Pipeline, latest: redis::Pipeline) -> Option<redis::Pipeline> {
        if self.target.is_cluster() {
            return Some(latest);
        }
        for cmd in latest.cmd_iter() {
            p.add_command(cmd.clone()).ignore();
        }
        None
    }

    /// After an outage, once a round trip has gone through again: says so.
    /// (Not on reconnecting: a Cluster moving the run's slot answers the
    /// reconnection's read and refuses the next batch, again and again
    /// until the move is done, which is one outage.)
    fn resumed(&mut self) {
        let Some(from) = self.resuming.take() else {
            return;
        };
        self.set_trouble(None);
        let text = format!(
            "reconnected to Redis at {}; publishing again from event {from}",
            self.target.shown()
        );
        self.say(Level::Info, text);
    }

    /// Notes a failure; false when it is a refusal, which ends publishing.
    fn failed(&mut self, e: redis::RedisError) -> bool {
        match self.target.failure(e) {
            Failure::Away(why) => {
                self.lost(why);
                true
            }
            Failure::Refused(why) => {
                let text = format!(
                    "Redis at {} refused the run's events ({why}); publishing stops here, and the run goes on",
                    self.target.shown()
                );
                self.say(Level::Error, text);
                self.set_trouble(Some(format!("publishing stopped: {why}")));
                self.refused = true;
                false
            }
        }
    }

    /// Once per outage: a warning in the run's own log (it reaches Redis
    /// too, once Redis is back). Its cause is kept up to date for the
    /// exit's count of events not published: the first (a dropped
    /// connection, say) may not be what holds them back at the end.
    fn lost(&mut self, why: String) {
        if self.trouble().is_some() {
            self.set_trouble(Some(why));
            return;
        }
        let text = format!(
            "lost the connection to Redis at {} ({why}); the run goes on, and its events will be sent when Redis is back",
            self.target.shown()
        );
        self.say(Level::Warn, text);
        self.set_trouble(Some(why));
    }

    /// A message in the run's log, or on stderr once the log has ended.
    fn say(&self, level: Level, text: String) {
        let event = Event::message(json!({"redis": self.target.shown()}), level, &text);
        if self.log.push(event).is_none() {
            crate::errln!("batchsse: {text}");
        }
    }

    fn trouble(&self) -> Option<String> {
        self.trouble.lock().ok().and_then(|t| t.clone())
    }

    fn set_trouble(&self, why: Option<String>) {
        if let Ok(mut t) = self.trouble.lock() {
            *t = why;
        }
    }

    /// A new connection, resuming after the last event Redis holds (none,
    /// if it came back empty); `None` while Redis is still out of reach,
    /// or once it has refused.
    async fn reconnect(&mut self, keys: &Keys) -> Option<Conn> {
        let sentinel = self.target.is_sentinel();
        let attempt = async {
            let mut conn = self.target.connect().await?;
            let mut p = redis::pipe();
            p.cmd("XREVRANGE")
                .arg(&keys.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
            if sentinel {
                // Under Sentinel, where the stream ends counts only once a
                // replica has it, as a batch does: a write of this
                // connection's own (the run is alive: it is reconnecting),
                // then WAIT, covers every write before it.
                p.cmd("SET")
                    .arg(&keys.alive)
                    .arg(1)
                    .arg("EX")
                    .arg(ALIVE_SECS)
                    .ignore();
                p.cmd("WAIT").arg(1).arg(REPLICA_WAIT.as_millis() as u64);
            }
            let (top, replicas): (Entries, Option<u64>) = match sentinel {
                true => p.query_async(&mut conn).await?,
                false => (p.query_async::<(Entries,)>(&mut conn).await?.0, None),
            };
            if replicas == Some(0) {
                return Err(unreplicated());
            }
            let held = top.first().and_then(|(id, _)| event_id(id)).unwrap_or(0);
            redis::RedisResult::Ok((conn, held))
        };
        match within(REPLY_LIMIT, attempt).await {
            Ok((conn, held)) => {
                self.acked.send_replace(held);
                if self.trouble().is_some() {
                    self.resuming = Some(held + 1);
                }
                Some(conn)
            }
            Err(e) => {
                self.failed(e);
                None
            }
        }
    }
}
