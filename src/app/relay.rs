//! `batchsse relay`: serves a run published to Redis, from any host, with
//! the run's own ids and bytes. Its event log is filled from Redis instead
//! of by a runner, and the same server code serves it. Its lifecycle is a
//! run's without the run (see `lifecycle`): connect and check → listen →
//! copy the stream → `finished` → linger → drain → exit 0. A signal before
//! `finished` ends the streams at once (they would get nothing more) and
//! exits 130; Redis refusing the relay, or its run dying before its
//! `finished` (its `alive` key lapsed), exits 3 with the reason.

use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::RelayArgs;
use crate::cli::config::RelayConfig;
use crate::error::{UsageError, exit};
use crate::events::log::EventLog;
use crate::lifecycle;
use crate::relay::source::Source;
use crate::serve as server;

pub fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let config = RelayConfig::from_args(&args)?;
    let rt = lifecycle::runtime()?;
    let code = rt.block_on(serve(config))?;
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(ExitCode::from(code))
}

async fn serve(config: RelayConfig) -> Result<u8, UsageError> {
    let RelayConfig {
        target,
        which,
        serve: s,
    } = config;
    let source = Source::open(target, &which).await?;
    let listener = server::bind(s.addr).await?;
    super::announce(&listener, &s, None);
    let log = Arc::new(EventLog::new());
    let mut config = s.config;
    config.listen = listener.local_addr().ok();
    let state = server::State::relayed(log.clone(), config);
    let signals = lifecycle::count_signals();
    let (stopped_tx, mut stopped) = tokio::sync::watch::channel(None::<String>);
    let filling = {
        let log = log.clone();
        tokio::spawn(async move {
            let why = match source.fill(which, log).await {
                Ok(()) => return,
                Err(why) => why,
            };
            stopped_tx.send_replace(Some(why));
        })
    };
    tokio::spawn(say_when_finished(log.clone(), s.linger));
    let stop = lifecycle::stop_after_linger(log.clone(), s.linger, signals.clone());
    let serving = server::serve(listener, state, stop, s.drain);
    // Before `finished`, a signal or the end of the copy ends the streams
    // at once: they would never get another event.
    let cut_short = async {
        let mut signals = signals.clone();
        tokio::select! {
            _ = signals.wait_for(|n| *n > 0) => {}
            _ = stopped.wait_for(Option::is_some) => {}
        }
        if log.finished_id().is_some() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = serving => {}
        () = cut_short => {}
    }
    filling.abort();
    if log.finished_id().is_some() {
        return Ok(exit::OK);
    }
    let why = stopped.borrow().clone();
    let interrupted = *signals.borrow() > 0;
    let (code, why) = match (why, interrupted) {
        (Some(why), _) => (exit::UNREACHABLE, why),
        (None, true) if log.run_id().is_none() => (
            exit::INTERRUPTED,
            "interrupted while waiting for a run".into(),
        ),
        (None, true) => (
            exit::INTERRUPTED,
            "interrupted before the run finished".into(),
        ),
        (None, false) => (
            exit::UNREACHABLE,
            "the copy from Redis stopped unexpectedly; this is a bug, please report it".into(),
        ),
    };
    crate::errln!("batchsse: relay stopped: {why}");
    Ok(code)
}

/// Once the run has finished: how it ended, and how long the relay stays.
async fn say_when_finished(log: Arc<EventLog>, linger: std::time::Duration) {
    let mut rx = log.subscribe();
    if rx.wait_for(|_| log.finished_id().is_some()).await.is_err() {
        return;
    }
    let snap = log.snapshot();
    let status = snap
        .status
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    crate::errln!(
        "batchsse: run {} finished ({status}); serving its replay for {} s (--linger), then exiting",
        snap.run_id.unwrap_or_default(),
        linger.as_secs_f64()
    );
}
