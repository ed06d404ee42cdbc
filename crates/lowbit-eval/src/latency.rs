//! Latency of `Session::run` alone: inputs built beforehand (loading, preprocessing and metrics
//! are not timed), at batch 1 (or the model's fixed batch), on up to N samples evenly spread
//! over the data, each cut to its own real length when there is a `*mask*` input, after up to
//! [`WARMUP_RUNS`] untimed runs.

use crate::metrics::median;
use crate::score::{ScoreError, ScoredModel};
use lowbit_data::Dataset;
use serde::Serialize;
use std::time::Instant;

/// Samples timed by default.
pub const DEFAULT_SAMPLES: usize = 100;

/// Untimed runs before the timed ones (fewer when fewer samples are timed).
pub const WARMUP_RUNS: usize = 10;

/// Per-run latency of `Session::run`.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// What the numbers cover, in words.
    pub timed: String,
    pub median_ms: f64,
    pub mean_ms: f64,
    /// Timed runs (one sample each at batch 1).
    pub runs: usize,
    pub warmup: usize,
    /// Samples per timed run.
    pub batch: usize,
    /// Whether each run was cut to its sample's real length.
    pub trimmed: bool,
}

/// `n` of `0..len`, evenly spread (first and last included), as numpy's `linspace` floored.
pub fn spread(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    if n <= 1 {
        return vec![0; n];
    }
    (0..n).map(|i| i * (len - 1) / (n - 1)).collect()
}

/// Times `model` on up to `n` samples of `data` (see the module docs); `None` when `n` is 0.
/// `progress` is told of every timed run.
pub fn time_runs(
    model: &ScoredModel,
    data: &mut Dataset,
    n: usize,
    trim: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Option<Latency>, ScoreError> {
    if n == 0 {
        return Ok(None);
    }
    let batch = data.fixed_batch.unwrap_or(1);
    let ranges = data.ranges(batch);
    let picked = spread(ranges.len(), n);
    let trimmed = trim && data.mask_name().is_some();
    let sets = picked
        .iter()
        .map(|&k| data.feeds(ranges[k].0, ranges[k].1, trim))
        .collect::<Result<Vec<_>, _>>()?;
    let failed = |k: usize, source| {
        let (s, e) = ranges[picked[k]];
        model.run_error("timed run", data.range_label(s, e), source)
    };
    let warmup = sets.len().min(WARMUP_RUNS);
    for (k, feeds) in sets.iter().take(warmup).enumerate() {
        model.session.run(feeds.clone()).map_err(|e| failed(k, e))?;
    }
    let mut times = Vec::with_capacity(sets.len());
    for (k, feeds) in sets.iter().enumerate() {
        let feeds = feeds.clone();
        let start = Instant::now();
        let out = model.session.run(feeds).map_err(|e| failed(k, e))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(out);
        progress(1);
    }
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let threads = model.session.threads();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let timed = format!(
        "Session::run alone at batch {batch}, {} run{} on samples evenly spread over the data{}, \
         after {warmup} warm-up run{}, {threads} thread{}",
        times.len(),
        plural(times.len()),
        if trimmed { ", each cut to its own length" } else { "" },
        plural(warmup),
        plural(threads)
    );
    Ok(Some(Latency {
        timed,
        median_ms: median(&times),
        mean_ms,
        runs: times.len(),
        warmup,
        batch,
        trimmed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_evenly_including_the_ends() {
        assert_eq!(spread(10, 3), vec![0, 4, 9]);
        assert_eq!(spread(5, 100), vec![0, 1, 2, 3, 4]);
        assert_eq!(spread(7, 1), vec![0]);
        assert!(spread(7, 0).is_empty());
    }
}
