//! `/metrics`: the run's snapshot in Prometheus's text format (OpenMetrics),
//! built with `prometheus-client` from the event log alone, so anything
//! that holds the log (a relay, one day) can serve the same numbers.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::events::RunState;
use crate::events::chunk_times::ChunkTimes;
use crate::events::log::Snapshot;

/// The media type `prometheus-client`'s text encoding is.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `batchsse_info`.
type InfoLabels = [(&'static str, String); 4];

/// The exposition for `snap`, with `clients` stream clients connected.
pub fn render(snap: &Snapshot, clients: usize) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();
    r.register(
        "batchsse_info",
        "The run: its id, plan, database file and batchsse version",
        info(snap),
    );
    progress(&mut r, snap);
    state(&mut r, snap, clients);
    undo(&mut r, snap);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)?;
    Ok(out)
}

/// An info metric as a gauge of 1: promtool (2.42) cannot parse the
/// OpenMetrics `info` type that `Info` would give. Empty before `start`.
fn info(snap: &Snapshot) -> Family<InfoLabels, Gauge> {
    let info = Family::<InfoLabels, Gauge>::default();
    if let Some(run) = &snap.run {
        info.get_or_create(&[
            ("run_id", run.run_id.clone()),
            ("plan", run.plan.clone()),
            ("db", run.db.clone()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ])
        .set(1);
    }
    info
}

fn gauge(v: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

fn flag(b: bool) -> ConstGauge {
    ConstGauge::new(i64::from(b))
}

/// How far the run is: steps, rows, chunks. Counters get `_total` from the
/// encoder.
fn progress(r: &mut Registry, snap: &Snapshot) {
    let counter = ConstCounter::new;
    r.register(
        "batchsse_steps",
        "Steps in the plan",
        counter(snap.steps_total as u64),
    );
    r.register(
        "batchsse_steps_done",
        "Steps done or skipped",
        gauge(snap.steps_done as u64),
    );
    r.register(
        "batchsse_step_rows_done",
        "The current step's rows visited",
        gauge(snap.done),
    );
    // A counter (it resets at each step) since promtool refuses a gauge
    // named `_total`.
    r.register(
        "batchsse_step_rows",
        "The current step's rows to visit",
        counter(snap.total),
    );
    r.register(
        "batchsse_rows_changed",
        "Rows changed by the whole run",
        counter(snap.rows_changed),
    );
    r.register(
        "batchsse_chunks",
        "Chunks committed",
        counter(snap.chunks.count),
    );
    r.register_with_unit(
        "batchsse_chunk_duration",
        "Time per chunk: from the step's previous report (or its start) to this chunk's, pauses included",
        Unit::Seconds,
        Chunks(snap.chunks.clone()),
    );
}

/// What the run and its server are doing now.
fn state(r: &mut Registry, snap: &Snapshot, clients: usize) {
    r.register(
        "batchsse_paused",
        "1 while paused by a live command",
        flag(snap.paused),
    );
    r.register(
        "batchsse_throttled",
        "1 while the run waits between chunks: on a brake (pause file, throttle query, WAL) or a live pause",
        flag(snap.throttled.is_some()),
    );
    let pace = &snap.settings;
    r.register_with_unit(
        "batchsse_pace_chunk_time",
        "The time one chunk may hold the write lock, in force now",
        Unit::Seconds,
        ConstGauge::new(pace.chunk_time_ms as f64 / 1000.0),
    );
    r.register(
        "batchsse_pace_nice_ratio",
        "How long the run yields after a chunk, as a multiple of the chunk's time",
        ConstGauge::new(pace.nice_ratio),
    );
    r.register_with_unit(
        "batchsse_pace_sleep",
        "The fixed pause between chunks",
        Unit::Seconds,
        ConstGauge::new(pace.sleep_ms as f64 / 1000.0),
    );
    r.register(
        "batchsse_stream_clients",
        "Stream clients connected now",
        gauge(clients as u64),
    );
    r.register(
        "batchsse_events",
        "Events logged so far",
        ConstCounter::new(snap.last_event_id),
    );
    r.register(
        "batchsse_finished",
        "1 once the run has finished",
        flag(snap.state == RunState::Finished),
    );
}

/// Once finished, as `finished` says it: a recorded run's undo record, or
/// the rows an undo kept. Absent otherwise.
fn undo(r: &mut Registry, snap: &Snapshot) {
    if let Some(bytes) = snap.undo_bytes {
        r.register_with_unit(
            "batchsse_undo_record",
            "The undo record this run wrote (run --undo), once finished",
            Unit::Bytes,
            gauge(bytes),
        );
    }
    if let Some(kept) = snap.conflicts {
        r.register(
            "batchsse_undo_conflicts",
            "Rows this undo kept as conflicts (as the application has them, or as the run left them), once finished",
            gauge(kept),
        );
        r.register(
            "batchsse_undo_conflicts_earlier",
            "Rows kept before this try of the undo (by an earlier try, or an undo of a newer run of the plan), once finished",
            gauge(snap.conflicts_earlier.unwrap_or(0)),
        );
        r.register(
            "batchsse_undo_conflicts_as_left",
            "Of the rows kept (by this try and earlier ones), those kept as the run left them: another row holds a value they would get back, once finished",
            gauge(snap.conflicts_as_left.unwrap_or(0)),
        );
        r.register(
            "batchsse_undo_carried_older",
            "Rows this undo put back to what an older run wrote, whose undo had kept them: they still carry that run's change, with no record left to take it back, once finished",
            gauge(snap.carried_older.unwrap_or(0)),
        );
    }
}

/// The chunk histogram, from counts the log already keeps.
#[derive(Debug)]
struct Chunks(ChunkTimes);

impl TypedMetric for Chunks {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Chunks {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(
            self.0.sum_secs,
            self.0.count,
            &self.0.buckets(),
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
