//! The figures at the top of the HTML report: file sizes, batch-1 latency of both models and,
//! with labels, the top-1 accuracy of both on the compared samples.

use crate::latency::time_runs;
use crate::metrics::argmax;
use crate::report::{BeforeAfter, ReportSummary, SummaryMetric};
use crate::score::{ScoreError, ScoredModel};
use lowbit_data::Dataset;

/// The summary of `fp32` against `quant` (scoring the same output) on `data`, fed as the
/// comparison feeds it ([`Dataset::observed_batch`]); latency over `latency_runs` samples.
/// `progress` is told of every timed run.
pub fn report_summary(
    fp32: &ScoredModel,
    quant: &ScoredModel,
    data: &mut Dataset,
    labels: Option<&[usize]>,
    trim: bool,
    latency_runs: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<ReportSummary, ScoreError> {
    let la = time_runs(fp32, data, latency_runs, trim, progress)?;
    let lb = time_runs(quant, data, latency_runs, trim, progress)?;
    let latency_ms = match (la, lb) {
        (Some(x), Some(y)) => Some(BeforeAfter { fp32: x.median_ms, quant: y.median_ms }),
        _ => None,
    };
    let metric = match labels {
        Some(labels) => {
            let mut correct = [0usize; 2];
            for (s, e) in data.ranges(data.observed_batch(trim)) {
                for (k, m) in [fp32, quant].into_iter().enumerate() {
                    let v = m.run(data, s, e, trim)?.to_f32_vec()?;
                    let per = v.len() / (e - s).max(1);
                    for (i, row) in v.chunks(per.max(1)).enumerate() {
                        correct[k] += usize::from(argmax(row) == labels[s + i]);
                    }
                }
            }
            let pct = |c: usize| 100.0 * c as f64 / data.samples.max(1) as f64;
            Some(SummaryMetric {
                name: "top-1 %".into(),
                value: BeforeAfter { fp32: pct(correct[0]), quant: pct(correct[1]) },
            })
        }
        None => None,
    };
    Ok(ReportSummary {
        fp32_model: fp32.path.clone(),
        quant_model: quant.path.clone(),
        fp32_bytes: fp32.bytes,
        quant_bytes: quant.bytes,
        metric,
        latency_ms,
    })
}
