//! What `lowbit bench` measures, apart from its arguments and its text: per-run latency
//! statistics ([`Latency`]), where a run's time goes ([`profile`]), ONNX Runtime timed on the
//! same feeds ([`ort`]), each output's largest difference between the two ([`diff_outputs`]),
//! and the process's peak resident memory ([`peak_rss_mb`]).

use crate::metrics::{median, percentile};
use lowbit_tensor::Tensor;
use serde::Serialize;

pub mod ort;
pub mod profile;

pub use ort::{Ort, OrtError, OrtRun};
pub use profile::{Profile, ProfileEntry};

/// Summary of per-run times in ms.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// Summarizes non-empty `times` (sorting them).
    pub fn of(times: &mut [f64]) -> Latency {
        let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
        times.sort_by(f64::total_cmp);
        Latency {
            median_ms: median(times),
            p90_ms: percentile(times, 90.0),
            min_ms: times[0],
            mean_ms,
        }
    }
}

/// ONNX Runtime's side of `--vs-ort` (fields in docs/json.md).
#[derive(Debug, Serialize)]
pub struct OrtReport {
    pub version: String,
    pub python: String,
    pub providers: Vec<String>,
    /// `intra_op_num_threads`: lowbit's own thread count, resolved (with `--threads 0`, one
    /// per CPU this process may use, not ORT's default of one per physical core).
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    pub execution_mode: &'static str,
    pub graph_optimization: &'static str,
    pub runs: usize,
    pub warmup: usize,
    #[serde(flatten)]
    pub latency: Latency,
    /// `InferenceSession` construction.
    pub load_ms: Option<f64>,
    /// lowbit's outputs against ORT's on the first sample fed.
    pub outputs: Vec<OutputDiff>,
}

/// One output's largest difference between lowbit and ONNX Runtime.
#[derive(Debug, Serialize)]
pub struct OutputDiff {
    pub name: String,
    /// `null` when the two cannot be compared (`note` says why).
    pub max_abs_diff: Option<f64>,
    pub note: Option<String>,
}

/// Each output's largest difference, lowbit (graph order) against ORT, by name.
pub fn diff_outputs(
    lowbit: &[(String, Tensor)],
    mut theirs: Vec<(String, Result<Tensor, String>)>,
) -> Vec<OutputDiff> {
    let mut diffs = Vec::new();
    for (name, t) in lowbit {
        let Some(k) = theirs.iter().position(|(n, _)| n == name) else {
            diffs.push(OutputDiff {
                name: name.clone(),
                max_abs_diff: None,
                note: Some("ONNX Runtime did not return it".into()),
            });
            continue;
        };
        let (_, o) = theirs.remove(k);
        let (max_abs_diff, note) = match o.and_then(|o| ort::max_abs_diff(t, &o)) {
            Ok(d) if d.is_nan() => (None, Some("NaN in one runtime's output only".into())),
            Ok(d) => (Some(d), None),
            Err(why) => (None, Some(why)),
        };
        diffs.push(OutputDiff { name: name.clone(), max_abs_diff, note });
    }
    for (name, _) in theirs {
        let note = Some("not among lowbit's outputs".into());
        diffs.push(OutputDiff { name, max_abs_diff: None, note });
    }
    diffs
}

/// Peak resident set size in MB, from `/proc/self/status` (Linux only).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
        }
    }
}
