//! `batchsse relay`'s side of Redis: find the run to serve, then copy its
//! stream into the relay's event log, entry by entry, with the run's own
//! ids and payloads. Redis going away only pauses the copy: every call
//! retries with back-off until Redis answers again, and the copy goes on
//! after the last entry it read, so no client sees a gap or a duplicate.
//! A refusal (a key of another type, a missing permission) or a run that
//! dies before its `finished` (its `alive` key lapsed) ends the relay with
//! the reason.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Backoff, Conn, Entries, Failure, Target, alive_key, begins_at_start, event_id, field, head_cmd,
    latest_key, run_key, within,
};
use crate::error::UsageError;
use crate::events::Event;
use crate::events::log::EventLog;
use crate::human::quoted;

/// Which run a relay serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// `--run ID`: that run, which must be in Redis.
    Run(String),
    /// `--plan NAME`: the plan's live run, or its next one.
    Plan(String),
}

/// How long `XREAD` blocks before asking again.
const BLOCK_MS: u64 = 1000;
/// Entries per read.
const READ_COUNT: usize = 1000;
/// Any call slower than this counts as a lost connection.
const REPLY_LIMIT: Duration = Duration::from_secs(5);
/// How often `--plan` looks for the plan's next run.
const POLL: Duration = Duration::from_millis(200);
/// A run with no `finished` whose `alive` key has been gone this long was
/// stopped (or cannot reach Redis): the relay gives up on it.
const DEAD_AFTER: Duration = Duration::from_secs(20);

/// A stream that does not begin with the run's `start` is waited on this
/// long for the run to publish it again (its publisher notices within
/// [`super::ALIVE_SECS`] / 3), then refused.
const CUT_GRACE: Duration = Duration::from_secs(10);

/// `default`, or the milliseconds in the environment variable `name`
/// (`BATCHSSE_RELAY_DEAD_AFTER_MS`, `BATCHSSE_RELAY_CUT_GRACE_MS`: for tests).
fn env_ms(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(default, Duration::from_millis)
}

/// The lowest entry ID above `id` (`XRANGE`'s exclusive `(id` needs Redis
/// 6.2; batchsse supports 5).
fn next_entry(id: &str) -> String {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let (ms, seq) = (
        ms.parse::<u64>().unwrap_or(0),
        seq.parse::<u64>().unwrap_or(0),
    );
    match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.saturating_add(1)),
    }
}

/// Why the copy ended before `finished`: what the relay says as it exits.
pub type Stop = String;

/// A connection to Redis that comes back by itself.
pub struct Source {
    target: Arc<Target>,
    conn: Option<Conn>,
    backoff: Backoff,
    /// Why Redis is out of reach, while it is.
    outage: Option<String>,
}

impl Source {
    /// Connects (a refusal is a usage error: the relay has not started) and,
    /// for `--run`, checks that Redis holds that run's stream.
    pub async fn open(target: Target, which: &Which) -> Result<Source, UsageError> {
        let url = "the URL (REDIS_URL, or BATCHSSE_PUBLISH)";
        let mut conn = target.connect_or_refuse("relay from", url).await?;
        let checked = async {
            may_multi(&mut conn).await?;
            may_read(&mut conn, &target).await
        };
        within(REPLY_LIMIT, checked).await.map_err(|e| {
            let fix = match target.failure(e) {
                Failure::Refused(why) => format!(
                    "{why} (a relay reads with MULTI, EXEC, XREAD, XRANGE, XREVRANGE, GET, EXISTS and TYPE; see the README's ACL rules for a relay)"
                ),
                Failure::Away(why) => format!(
                    "{why}; Redis cannot serve for now: try again once it can"
                ),
            };
            UsageError::new(format!("cannot relay from {}: {fix}", target.shown()))
        })?;
        if let Which::Run(id) = which {
            let key = run_key(&target.tagged(id));
            let kind: String = within(REPLY_LIMIT, async {
                redis::cmd("TYPE").arg(&key).query_async(&mut conn).await
            })
            .await
            .map_err(|e| {
                let why = target.failure(e);
                UsageError::new(format!(
                    "cannot relay from {}: {}",
                    target.shown(),
                    why.why()
                ))
            })?;
            match kind.as_str() {
                "stream" => {}
                "none" => {
                    return Err(UsageError::new(format!(
                        "run {} is not in {}: there is no stream {key} (it was never published there, or it expired after the run's --publish-ttl); {}, or use --plan NAME",
                        quoted(id),
                        target.shown(),
                        target.list_runs_hint(),
                    )));
                }
                other => {
                    return Err(UsageError::new(format!(
                        "{key} in {} is a {other}, not a stream batchsse wrote; check the run id",
                        target.shown(),
                    )));
                }
            }
        }
        Ok(Source {
            target: Arc::new(target),
            conn: Some(conn),
            backoff: Backoff::new(),
            outage: None,
        })
    }

    /// Finds the run, then copies it into `log` up to its `finished`.
    pub async fn fill(mut self, which: Which, log: Arc<EventLog>) -> Result<(), Stop> {
        let run_id = match which {
            Which::Run(id) => id,
            Which::Plan(plan) => self.next_run(&plan).await?,
        };
        crate::errln!(
            "batchsse: relaying run {run_id} from {}",
            self.target.shown()
        );
        self.copy(&run_id, &log).await
    }

    /// The plan's live run: its latest, unless that one has finished, in
    /// which case whichever run is latest next, finished or not (a short
    /// run may end between two looks).
    async fn next_run(&mut self, plan: &str) -> Result<String, Stop> {
        let key = latest_key(plan);
        let first: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        let mut why_over = "has finished";
        let over = match first {
            Some(id) if !self.has_finished(&id).await? => {
                if self.is_alive(&id).await? {
                    return Ok(id);
                }
                why_over = "stopped without finishing";
                Some(id)
            }
            over => over,
        };
        let last = over
            .as_ref()
            .map(|id| format!(" (its latest, {id}, {why_over})"))
            .unwrap_or_default();
        // `run --plan` takes a path; `relay --plan` the plan's name.
        let path_hint = if std::path::Path::new(plan).is_file() {
            "; note: --plan takes the plan's name (a JSON plan's \"name\", a SQL script's file name), not its path"
        } else {
            ""
        };
        crate::errln!(
            "batchsse: waiting for the next run of plan {} in {}{last}{path_hint}",
            quoted(plan),
            self.target.shown()
        );
        loop {
            tokio::time::sleep(POLL).await;
            let latest: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
            if let Some(id) = latest.filter(|id| over.as_ref() != Some(id)) {
                return Ok(id);
            }
        }
    }

    /// Whether a run's process is alive and publishing.
    async fn is_alive(&mut self, run_id: &str) -> Result<bool, Stop> {
        self.query(redis::cmd("EXISTS").arg(alive_key(&self.target.tagged(run_id))))
            .await
    }

    /// Whether a run's stream ends with `finished` (or is gone).
    async fn has_finished(&mut self, run_id: &str) -> Result<bool, Stop> {
        let mut last_entry = redis::cmd("XREVRANGE");
        last_entry
            .arg(run_key(&self.target.tagged(run_id)))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let top: Entries = self.query(&last_entry).await?;
        Ok(top
            .first()
            .is_none_or(|(_, fields)| field(fields, "event") == Some(&b"finished"[..])))
    }

    /// Copies the stream into the log until `finished` is in. Each read
    /// takes the stream's first entry and the entries after the cursor in
    /// one `MULTI`, so nothing is served from a stream that lost its head
    /// (the run may be writing it again); the cursor is the last entry
    /// read, so an entry that is skipped is read only once.
    async fn copy(&mut self, run_id: &str, log: &EventLog) -> Result<(), Stop> {
        let stream = run_key(&self.target.tagged(run_id));
        let mut cursor = "0-0".to_owned();
        let mut last_sign = Instant::now();
        let mut cut_since = None;
        while log.finished_id().is_none() {
            let asked = Instant::now();
            let mut read = redis::pipe();
            read.atomic().add_command(head_cmd(&stream));
            read.cmd("XRANGE")
                .arg(&stream)
                .arg(next_entry(&cursor))
                .arg("+")
                .arg("COUNT")
                .arg(READ_COUNT);
            let (head, entries): (Entries, Entries) = self.query(&read).await?;
            if !begins_at_start(&head) {
                let since = *cut_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= env_ms("BATCHSSE_RELAY_CUT_GRACE_MS", CUT_GRACE) {
                    return Err(self.cut(&stream, &head, since.elapsed()));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            cut_since = None;
            if entries.is_empty() {
                self.wait_for_more(run_id, &stream, &cursor, (&mut last_sign, asked))
                    .await?;
                continue;
            }
            last_sign = Instant::now();
            for (id, fields) in entries {
                append(log, &id, &fields);
                cursor = id;
            }
        }
        Ok(())
    }

    /// Blocks until the stream grows past `cursor` (or [`BLOCK_MS`] passes),
    /// and gives up on a run that shows no sign of life for too long: time
    /// since `asked` (this round's first query) that the relay itself could
    /// not see Redis is not counted (see [`unseen`]).
    async fn wait_for_more(
        &mut self,
        run_id: &str,
        stream: &str,
        cursor: &str,
        (last_sign, asked): (&mut Instant, Instant),
    ) -> Result<(), Stop> {
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(stream)
            .arg(cursor);
        let more: Option<redis::Value> = self.query(&read).await?;
        let dead_after = env_ms("BATCHSSE_RELAY_DEAD_AFTER_MS", DEAD_AFTER);
        if more.is_some() || self.is_alive(run_id).await? {
            *last_sign = Instant::now();
            return Ok(());
        }
        *last_sign = unseen(*last_sign, asked, Instant::now());
        if last_sign.elapsed() >= dead_after {
            return Err(format!(
                "run {run_id} has published nothing for {} s and has no finished event: its process was stopped, has lost {}, or is refused by it (its user's rights or password changed; the run's own output says)",
                last_sign.elapsed().as_secs(),
                self.target.shown()
            ));
        }
        Ok(())
    }

    /// Why a stream that lost its head is not served.
    fn cut(&self, stream: &str, head: &Entries, waited: Duration) -> Stop {
        let first = match head.first() {
            Some((id, _)) => format!("its first entry is {id}"),
            None => "it is empty or gone".into(),
        };
        format!(
            "{stream} in {} does not begin with the run's start at 1-0 ({first}), and the run did not publish it again within {} s: Redis lost the stream's head (FLUSHALL, an eviction under maxmemory, a restart without persistence), so what is left is not the whole run, and serving it would show viewers a run without its beginning",
            self.target.shown(),
            waited.as_secs()
        )
    }

    /// Runs `cmd` until Redis answers it, reconnecting as often as it takes
    /// (and saying so on stderr once per outage); a refusal is returned.
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &impl Ask) -> Result<T, Stop> {
        let limit = REPLY_LIMIT + Duration::from_millis(BLOCK_MS);
        loop {
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => match connect_checked(&self.target).await {
                    Ok(c) => self.conn.insert(c),
                    Err(e) => {
                        self.failed(e)?;
                        self.backoff.wait().await;
                        continue;
                    }
                },
            };
            match within(limit, cmd.ask::<T>(conn)).await {
                Ok(v) => {
                    self.backoff.reset();
                    if self.outage.take().is_some() {
                        crate::errln!("batchsse: reconnected to Redis at {}", self.target.shown());
                    }
                    return Ok(v);
                }
                Err(e) => {
                    self.conn = None;
                    self.failed(e)?;
                    self.backoff.wait().await;
                }
            }
        }
    }

    /// Notes a passing failure (once per outage); a refusal is the stop.
    fn failed(&mut self, e: redis::RedisError) -> Result<(), Stop> {
        let handshake = self.target.handshake_failure(&e);
        match self.target.failure(e) {
            Failure::Refused(why) => Err(format!(
                "Redis at {} refused what the relay asked: {why}",
                self.target.shown()
            )),
            Failure::Away(why) => {
                if self.outage.is_none() {
                    crate::errln!(
                        "batchsse: warning: lost Redis at {} ({why}); retrying, and clients stay connected",
                        self.target.shown()
                    );
                    self.outage = Some(why);
                } else if handshake.is_some() && self.outage.as_ref() != Some(&why) {
                    // A server back with a certificate that fails keeps
                    // the relay away until someone fixes it: the dropped
                    // connection said first is not what to fix.
                    crate::errln!(
                        "batchsse: warning: Redis at {} is still out of reach: {why}; retrying, and clients stay connected",
                        self.target.shown()
                    );
                    self.outage = Some(why);
                }
                Ok(())
            }
        }
    }
}

/// A connection on which `MULTI` has been tried (see [`may_multi`]).
async fn connect_checked(target: &Target) -> redis::RedisResult<Conn> {
    let mut conn = target.connect().await?;
    within(REPLY_LIMIT, may_multi(&mut conn)).await?;
    Ok(conn)
}

/// An empty `MULTI` … `EXEC`, one command at a time: a user whose ACL
/// refuses `MULTI` learns it here, in Redis's words. (In a pipeline, the
/// `redis` crate cannot take a refused `MULTI`: its connection task
/// panics, and the relay would wait forever.)
async fn may_multi(conn: &mut Conn) -> redis::RedisResult<()> {
    // A Cluster sends keyless commands to any node: MULTI and EXEC could
    // land on two; there, a refused MULTI is not caught early.
    if matches!(conn, Conn::Cluster(_)) {
        return Ok(());
    }
    redis::cmd("MULTI").query_async::<()>(conn).await?;
    redis::cmd("EXEC").query_async::<()>(conn).await
}

/// Each command a relay reads with, once, on keys no run has: a user
/// whose ACL lacks one is refused at start, in Redis's words, rather than
/// once the relay listens.
async fn may_read(conn: &mut Conn, target: &Target) -> redis::RedisResult<()> {
    let probe = target.tagged("acl-check");
    let (stream, alive) = (super::run_key(&probe), alive_key(&probe));
    let mut xread = redis::cmd("XREAD");
    xread
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg("0-0");
    let mut xrange = redis::cmd("XRANGE");
    xrange.arg(&stream).arg("-").arg("+").arg("COUNT").arg(1);
    let mut xrevrange = redis::cmd("XREVRANGE");
    xrevrange.arg(&stream).arg("+").arg("-").arg("COUNT").arg(1);
    let mut get = redis::cmd("GET");
    get.arg(&alive);
    let mut exists = redis::cmd("EXISTS");
    exists.arg(&alive);
    let mut kind = redis::cmd("TYPE");
    kind.arg(&stream);
    for cmd in [xread, xrange, xrevrange, get, exists, kind] {
        cmd.query_async::<redis::Value>(conn).await?;
    }
    Ok(())
}

/// A command or a pipeline: what [`Source::query`] sends.
pub trait Ask {
    fn ask<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
    ) -> impl Future<Output = redis::RedisResult<T>>;
}

impl Ask for redis::Cmd {
    fn ask<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
    ) -> impl Future<Output = redis::RedisResult<T>> {
        self.query_async(conn)
    }
}

impl Ask for redis::Pipeline {
    fn ask<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
    ) -> impl Future<Output = redis::RedisResult<T>> {
        self.query_async(conn)
    }
}

/// Logs one stream entry as the run logged it; an entry this relay cannot
/// serve as the run did is skipped with a warning.
fn append(log: &EventLog, id: &str, fields: &[Vec<u8>]) {
    let text = |name| field(fields, name).and_then(|v| std::str::from_utf8(v).ok());
    let parsed = event_id(id).zip(text("event")).zip(text("data"));
    let Some(((n, name), data)) = parsed else {
        crate::errln!("batchsse: warning: skipped stream entry {id}: it is not a batchsse event");
        return;
    };
    match Event::from_json(name, data) {
        // An unknown name would be read as a `message`, and served without
        // its `event:` line: not the run's bytes.
        Ok(event) if event.name() == name => {
            log.push_published(n, event, data.to_owned());
        }
        Ok(_) => crate::errln!(
            "batchsse: warning: skipped event {n}: this relay does not know events named {}; is the run's batchsse newer than the relay's?",
            quoted(name)
        ),
        Err(e) => crate::errln!(
            "batchsse: warning: skipped event {n} ({}): {e}; is the run's batchsse newer than the relay's?",
            quoted(name)
        ),
    }
}

/// A round of queries (read, block, look for the `alive` key) that began
/// at `asked` and ended at `now` takes [`BLOCK_MS`] and a few round trips;
/// past that, plus [`BLIND_SLACK`], the relay could not see Redis (it was
/// out of reach, or this process was stopped). The run's silence is then
/// counted from `last_sign` moved on by that time, so that after an
/// outage both shared, the run has its whole grace to publish again
/// before the relay gives up on it.
fn unseen(last_sign: Instant, asked: Instant, now: Instant) -> Instant {
    let expected = Duration::from_millis(BLOCK_MS) + BLIND_SLACK;
    let blind = now
        .saturating_duration_since(asked)
        .saturating_sub(expected);
    (last_sign + blind).min(now)
}

/// How much longer than [`BLOCK_MS`] a round of queries may take before
/// the relay counts the rest as time it could not see Redis.
const BLIND_SLACK: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{BLOCK_MS, next_entry, unseen};

    /// The run's silence counts only the time the relay could see Redis:
    /// a round that took 30 s (an outage of the relay's own, or the
    /// process stopped) leaves the clock where it was before the round.
    #[test]
    fn time_the_relay_could_not_see_redis_is_not_the_run_s_silence() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A usual round: the block and a little more moves nothing.
        assert_eq!(unseen(t0, at(5_000), at(5_000 + BLOCK_MS + 300)), t0);
        // A round of 30 s after 5 s of silence: 5 s of silence still.
        let now = at(35_000);
        let moved = unseen(t0, at(5_000), now);
        let silence = now - moved;
        let expected = Duration::from_millis(5_000 + BLOCK_MS + 2_000);
        assert_eq!(silence, expected, "{silence:?}");
        // Never past now.
        assert_eq!(unseen(at(34_000), at(0), now), now);
    }

    #[test]
    fn the_entry_after_an_id() {
        assert_eq!(next_entry("0-0"), "0-1");
        assert_eq!(next_entry("41-0"), "41-1");
        assert_eq!(next_entry("7-18446744073709551615"), "8-0");
    }
}
