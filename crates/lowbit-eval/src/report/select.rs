//! Choosing what the report draws: the layers highlighted in the SQNR chart, the activations
//! given a histogram, the weight given a range chart.

use super::{HIGHLIGHTED, HISTOGRAMS};
use crate::compare::{ActivationNoise, CompareReport, RankedLayer, WeightNoise};

/// The activation (index into `acts`) a ranked layer points at: its tensor, else the first
/// activation its node produces.
fn ranked_activation(r: &RankedLayer, acts: &[&ActivationNoise]) -> Option<usize> {
    acts.iter()
        .position(|a| a.tensor == r.tensor)
        .or_else(|| acts.iter().position(|a| !r.node.is_empty() && a.producer == r.node))
}

/// The first [`HIGHLIGHTED`] layers of the ranking that have a bar in the SQNR chart, as
/// (rank, activation index) pairs, each activation once. A layer ranked by its weight whose
/// node produces no quantized activation has none.
pub(super) fn highlighted_layers(
    report: &CompareReport,
    acts: &[&ActivationNoise],
) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (rank, r) in report.ranking.iter().enumerate().take(HIGHLIGHTED) {
        if let Some(i) = ranked_activation(r, acts) {
            if !out.iter().any(|&(_, j)| j == i) {
                out.push((rank, i));
            }
        }
    }
    out
}

/// The activations (indices into `acts`) whose histograms are drawn: the ranking's first, then
/// the lowest isolated SQNR; only those with a histogram.
pub(super) fn worst_activations(report: &CompareReport, acts: &[&ActivationNoise]) -> Vec<usize> {
    let has_hist = |i: usize| acts[i].histogram.counts.iter().any(|&c| c > 0);
    let mut out = Vec::new();
    for r in &report.ranking {
        if let Some(i) = ranked_activation(r, acts) {
            if has_hist(i) && !out.contains(&i) && out.len() < HISTOGRAMS {
                out.push(i);
            }
        }
    }
    let mut rest: Vec<usize> =
        (0..acts.len()).filter(|&i| !out.contains(&i) && has_hist(i)).collect();
    rest.sort_by(|&a, &b| {
        let (x, y) = (acts[a].isolated.sqnr_db, acts[b].isolated.sqnr_db);
        // NaN last.
        x.is_nan().cmp(&y.is_nan()).then(x.total_cmp(&y))
    });
    out.extend(rest.into_iter().take(HISTOGRAMS - out.len()));
    out
}

/// The weight whose channel ranges are drawn, and its rank: the ranking's worst Conv or Gemm
/// (ConvTranspose, MatMul next) with channel ranges; else the noisiest weight that has them.
pub(super) fn worst_weight(report: &CompareReport) -> Option<(&WeightNoise, Option<usize>)> {
    let has_ranges = |w: &&WeightNoise| !w.channel_min.is_empty() && !w.channel_max.is_empty();
    for ops in [&["Conv", "Gemm"][..], &["ConvTranspose", "MatMul"][..]] {
        for (rank, r) in report.ranking.iter().enumerate() {
            if !ops.contains(&r.op_type.as_str()) {
                continue;
            }
            if let Some(w) = report.weights.iter().filter(has_ranges).find(|w| w.node == r.node) {
                return Some((w, Some(rank)));
            }
        }
    }
    report
        .weights
        .iter()
        .filter(has_ranges)
        .min_by(|a, b| {
            let (x, y) = (a.noise.sqnr_db, b.noise.sqnr_db);
            x.is_nan().cmp(&y.is_nan()).then(x.total_cmp(&y))
        })
        .map(|w| (w, None))
}
