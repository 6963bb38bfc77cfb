//! `batchsse relay`'s side of Redis: find the run to serve, then copy its
//! stream into the relay's event log, entry by entry, with the run's own
//! ids and payloads. Redis going away only pauses the copy: every call
//! retries with back-off until Redis answers again, and the copy goes on
//! after the last id it holds, so no client sees a gap or a duplicate.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{Backoff, Target, describe, event_id, latest_key, run_key, within};
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

/// One stream entry as `XREAD` and `XREVRANGE` give it: its ID and its
/// field-value pairs, flat.
type Entries = Vec<(String, Vec<String>)>;

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
    /// for `--run`, checks that the run is in Redis.
    pub async fn open(target: Target, which: &Which) -> Result<Source, UsageError> {
        let fix = "start Redis there, or fix the URL (and its password)";
        let mut conn = target.connect_or_refuse("relay from", fix).await?;
        if let Which::Run(id) = which {
            let exists: bool = within(REPLY_LIMIT, async {
                redis::cmd("EXISTS")
                    .arg(run_key(id))
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| {
                UsageError::new(format!(
                    "cannot relay from {}: {}",
                    target.shown(),
                    describe(&e)
                ))
            })?;
            if !exists {
                return Err(UsageError::new(format!(
                    "run {id:?} is not in {}: there is no stream {} (it was never published there, or it expired after the run's --publish-ttl); `redis-cli --scan --pattern 'batchsse:run:*'` lists the runs it holds, or use --plan NAME",
                    target.shown(),
                    run_key(id)
                )));
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
    pub async fn fill(mut self, which: Which, log: Arc<EventLog>) {
        let run_id = match which {
            Which::Run(id) => id,
            Which::Plan(plan) => self.next_run(&plan).await,
        };
        crate::errln!(
            "batchsse: relaying run {run_id} from {}",
            self.target.shown()
        );
        self.copy(&run_key(&run_id), &log).await;
    }

    /// The plan's live run: its latest, unless that one has finished, in
    /// which case the one after it.
    async fn next_run(&mut self, plan: &str) -> String {
        let key = latest_key(plan);
        let mut over: Option<String> = None;
        let mut told = false;
        loop {
            let latest: Option<String> = self.query(redis::cmd("GET").arg(&key)).await;
            if let Some(id) = latest.filter(|id| over.as_ref() != Some(id)) {
                if !self.has_finished(&id).await {
                    return id;
                }
                over = Some(id);
            }
            if !told {
                let last = over
                    .as_ref()
                    .map(|id| format!(" (its latest, {id}, has finished)"))
                    .unwrap_or_default();
                crate::errln!(
                    "batchsse: waiting for the next run of plan {plan:?} in {}{last}",
                    self.target.shown()
                );
                told = true;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether a run's stream ends with `finished` (or is gone).
    async fn has_finished(&mut self, run_id: &str) -> bool {
        let mut last_entry = redis::cmd("XREVRANGE");
        last_entry
            .arg(run_key(run_id))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let top: Entries = self.query(&last_entry).await;
        top.first()
            .is_none_or(|(_, fields)| field(fields, "event") == Some("finished"))
    }

    /// Copies the stream into the log, after the last id the log holds,
    /// until `finished` is in.
    async fn copy(&mut self, stream: &str, log: &EventLog) {
        while log.finished_id().is_none() {
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(stream)
                .arg(format!("{}-0", log.last_id()));
            let reply: Option<Vec<(String, Entries)>> = self.query(&read).await;
            for (id, fields) in reply.into_iter().flatten().flat_map(|(_, e)| e) {
                append(log, &id, &fields);
            }
        }
    }

    /// Runs `cmd` until Redis answers it, reconnecting as often as it takes
    /// (and saying so on stderr once per outage).
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        let limit = REPLY_LIMIT + Duration::from_millis(BLOCK_MS);
        loop {
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => match self.target.connect().await {
                    Ok(c) => {
                        if self.outage.take().is_some() {
                            crate::errln!(
                                "batchsse: reconnected to Redis at {}",
                                self.target.shown()
                            );
                        }
                        self.conn.insert(c)
                    }
                    Err(e) => {
                        self.lost(&e);
                        self.backoff.wait().await;
                        continue;
                    }
                },
            };
            match within(limit, cmd.query_async::<T>(conn)).await {
                Ok(v) => {
                    self.backoff.reset();
                    return v;
                }
                Err(e) => {
                    self.lost(&e);
                    self.conn = None;
                    self.backoff.wait().await;
                }
            }
        }
    }

    fn lost(&mut self, e: &redis::RedisError) {
        if self.outage.is_none() {
            let why = describe(e);
            crate::errln!(
                "batchsse: warning: lost Redis at {} ({why}); retrying, and clients stay connected",
                self.target.shown()
            );
            self.outage = Some(why);
        }
    }
}

/// Logs one stream entry as the run logged it; an entry batchsse did not
/// write is skipped with a warning.
fn append(log: &EventLog, id: &str, fields: &[String]) {
    let parsed = event_id(id)
        .zip(field(fields, "event"))
        .zip(field(fields, "data"));
    let Some(((n, name), data)) = parsed else {
        crate::errln!("batchsse: warning: skipped stream entry {id}: it is not a batchsse event");
        return;
    };
    match Event::from_json(name, data) {
        Ok(event) => {
            log.push_published(n, event, data.to_owned());
        }
        Err(e) => crate::errln!(
            "batchsse: warning: skipped event {n} ({name}): {e}; is the run's batchsse newer than this relay?"
        ),
    }
}

/// A field's value in a flat field-value list.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields
        .chunks_exact(2)
        .find(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str())
}
