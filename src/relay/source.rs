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

use redis::aio::MultiplexedConnection;

use super::{Backoff, Failure, Target, alive_key, event_id, latest_key, run_key, within};
use crate::error::UsageError;
use crate::events::Event;
use crate::events::log::EventLog;

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

/// [`DEAD_AFTER`], or `BATCHSSE_RELAY_DEAD_AFTER_MS` (for tests).
fn dead_after() -> Duration {
    std::env::var("BATCHSSE_RELAY_DEAD_AFTER_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(DEAD_AFTER, Duration::from_millis)
}

/// Stream entries as `XREAD` and `XREVRANGE` give them: each ID with its
/// field-value pairs, flat, as bytes (an entry batchsse did not write may
/// hold anything).
type Entries = Vec<(String, Vec<Vec<u8>>)>;

/// Why the copy ended before `finished`: what the relay says as it exits.
pub type Stop = String;

/// A connection to Redis that comes back by itself.
pub struct Source {
    target: Arc<Target>,
    conn: Option<MultiplexedConnection>,
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
        if let Which::Run(id) = which {
            let key = run_key(id);
            let kind: String = within(REPLY_LIMIT, async {
                redis::cmd("TYPE").arg(&key).query_async(&mut conn).await
            })
            .await
            .map_err(|e| {
                let why = Failure::of(e);
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
                        "run {id:?} is not in {}: there is no stream {key} (it was never published there, or it expired after the run's --publish-ttl); `redis-cli {} --scan --pattern 'batchsse:run:*'` lists the runs it holds, or use --plan NAME",
                        target.shown(),
                        target.cli_options(),
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
            "batchsse: waiting for the next run of plan {plan:?} in {}{last}{path_hint}",
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
        self.query(redis::cmd("EXISTS").arg(alive_key(run_id)))
            .await
    }

    /// Whether a run's stream ends with `finished` (or is gone).
    async fn has_finished(&mut self, run_id: &str) -> Result<bool, Stop> {
        let mut last_entry = redis::cmd("XREVRANGE");
        last_entry
            .arg(run_key(run_id))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let top: Entries = self.query(&last_entry).await?;
        Ok(top
            .first()
            .is_none_or(|(_, fields)| field(fields, "event") == Some(&b"finished"[..])))
    }

    /// Copies the stream into the log until `finished` is in. The cursor is
    /// the last entry read, so an entry that is skipped is read only once.
    async fn copy(&mut self, run_id: &str, log: &EventLog) -> Result<(), Stop> {
        let stream = run_key(run_id);
        let mut cursor = "0-0".to_owned();
        let mut last_sign = tokio::time::Instant::now();
        let dead_after = dead_after();
        while log.finished_id().is_none() {
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&cursor);
            let reply: Option<Vec<(String, Entries)>> = self.query(&read).await?;
            let entries: Entries = reply.into_iter().flatten().flat_map(|(_, e)| e).collect();
            if !entries.is_empty() || self.is_alive(run_id).await? {
                last_sign = tokio::time::Instant::now();
            } else if last_sign.elapsed() >= dead_after {
                return Err(format!(
                    "run {run_id} has published nothing for {} s and has no finished event: its process was stopped, or has lost {}",
                    last_sign.elapsed().as_secs(),
                    self.target.shown()
                ));
            }
            for (id, fields) in entries {
                append(log, &id, &fields);
                cursor = id;
            }
        }
        Ok(())
    }

    /// Runs `cmd` until Redis answers it, reconnecting as often as it takes
    /// (and saying so on stderr once per outage); a refusal is returned.
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Stop> {
        let limit = REPLY_LIMIT + Duration::from_millis(BLOCK_MS);
        loop {
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => match self.target.connect().await {
                    Ok(c) => self.conn.insert(c),
                    Err(e) => {
                        self.failed(e)?;
                        self.backoff.wait().await;
                        continue;
                    }
                },
            };
            match within(limit, cmd.query_async::<T>(conn)).await {
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
        match Failure::of(e) {
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
                }
                Ok(())
            }
        }
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
            "batchsse: warning: skipped event {n}: this relay does not know events named {name:?}; is the run's batchsse newer than the relay's?"
        ),
        Err(e) => crate::errln!(
            "batchsse: warning: skipped event {n} ({name}): {e}; is the run's batchsse newer than the relay's?"
        ),
    }
}

/// A field's value in a flat field-value list.
fn field<'a>(fields: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    fields
        .chunks_exact(2)
        .find(|pair| pair[0] == name.as_bytes())
        .map(|pair| pair[1].as_slice())
}
