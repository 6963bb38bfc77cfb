//! Chunk timings for `/metrics`, derived from `progress` events alone (so a
//! reader of the log, not the runner, keeps them): a chunk's time is its
//! step's elapsed time since the report before it, or since the step began.

use super::Progress;

/// Upper bounds of the histogram's buckets, in seconds (Prometheus's own
/// defaults, which span a 20 ms chunk to a 10 s one).
pub const BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkTimes {
    pub count: u64,
    pub sum_secs: f64,
    /// Chunks per bucket of `BOUNDS`, then over the last bound; not
    /// cumulative.
    per_bucket: [u64; BOUNDS.len() + 1],
    /// The step and `elapsed_ms` of the latest chunk report.
    last: Option<(usize, u64)>,
}

impl ChunkTimes {
    /// Counts the chunk a `progress` reports; a heartbeat is no chunk.
    pub fn observe(&mut self, p: &Progress) {
        if p.is_heartbeat() {
            return;
        }
        let since = match self.last {
            Some((step, ms)) if step == p.step => ms,
            _ => 0,
        };
        self.last = Some((p.step, p.elapsed_ms));
        let secs = p.elapsed_ms.saturating_sub(since) as f64 / 1000.0;
        self.count += 1;
        self.sum_secs += secs;
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.per_bucket[i] += 1;
    }

    /// `(upper bound, chunks in that bucket)`, the last bound infinite.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.per_bucket)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(step: usize, elapsed_ms: u64) -> Progress {
        Progress {
            done: Some(1),
            total: Some(1),
            ..Progress::heartbeat(step, "s".into(), elapsed_ms)
        }
    }

    #[test]
    fn each_chunk_counts_the_time_since_its_steps_previous_report() {
        let mut t = ChunkTimes::default();
        for p in [chunk(0, 20), chunk(0, 60), chunk(0, 3060)] {
            t.observe(&p);
        }
        // A heartbeat is not a chunk; a new step starts its clock at 0.
        t.observe(&Progress::heartbeat(1, "s".into(), 5000));
        t.observe(&chunk(1, 8));
        assert_eq!(t.count, 4);
        assert!((t.sum_secs - (0.020 + 0.040 + 3.0 + 0.008)).abs() < 1e-9);
        let b = t.buckets();
        assert_eq!(b.len(), BOUNDS.len() + 1);
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 4);
        let at = |bound: f64| b.iter().find(|(le, _)| *le == bound).map(|(_, n)| *n);
        assert_eq!(at(0.01), Some(1)); // 8 ms
        assert_eq!(at(0.025), Some(1)); // 20 ms
        assert_eq!(at(0.05), Some(1)); // 40 ms
        assert_eq!(at(5.0), Some(1)); // 3 s
        assert_eq!(b.last(), Some(&(f64::INFINITY, 0)));
    }
}
