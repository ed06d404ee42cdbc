//! Scoring one output of a model on a data set, as `lowbit eval` reports it:
//! - classification: top-1 and top-k accuracy of the rows against class labels;
//! - sentence pairs: Spearman×100 (and Pearson×100) of `cosine(emb_a, emb_b)` against gold
//!   scores, as STS-B is scored;
//! - reference: the same inputs through an FP32 reference on the same batches: top-1
//!   agreement, per-sample cosine, SQNR / MSE / max error of all values, and its own score.
//!
//! The scored output must hold one row per sample along axis 0; a row is everything else,
//! flattened.

use crate::latency::Latency;
use crate::metrics::{self, Noise, NoiseAccumulator};
use lowbit_data::{DataError, Dataset};
use lowbit_engine::{EngineError, Session};
use lowbit_onnx::pb::ModelProto;
use lowbit_onnx::value_info::{list_text, ValueInfo};
use lowbit_onnx::OnnxError;
use lowbit_tensor::{DType, Tensor, TensorError};
use serde::Serialize;
use std::path::Path;

/// `k` of the top-k accuracy reported beside top-1.
pub const TOP_K: usize = 5;

/// What can go wrong scoring a model.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The model file cannot be read (lowbit-onnx's error names it).
    #[error("cannot load the model")]
    Load(#[source] OnnxError),
    /// The data cannot be fed (the error names the file, input or sample).
    #[error(transparent)]
    Data(#[from] DataError),
    /// An engine run failed.
    #[error("{model}: {what} on {samples} failed")]
    Run {
        model: String,
        what: &'static str,
        samples: String,
        #[source]
        source: Box<EngineError>,
    },
    /// Outputs, labels or models that do not fit together (the message names them).
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

type Result<T> = std::result::Result<T, ScoreError>;

macro_rules! mismatch {
    ($($arg:tt)*) => {
        return Err(ScoreError::Mismatch(format!($($arg)*)))
    };
}

/// Loads a model and its size on disk (the file plus its external data files).
pub fn load_with_size(path: &Path) -> Result<(ModelProto, u64)> {
    let (model, refs) =
        lowbit_onnx::io::load_model_with_external_refs(path).map_err(ScoreError::Load)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut seen: Vec<&str> = Vec::new();
    for r in &refs {
        if !seen.contains(&r.location.as_str()) {
            seen.push(&r.location);
            bytes += std::fs::metadata(dir.join(&r.location)).map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok((model, bytes))
}

/// Whether a declared output type is a float (or unknown, left to the run to tell).
fn float_or_unknown(o: &ValueInfo) -> bool {
    DType::ALL.iter().find(|d| d.name() == o.dtype).is_none_or(|d| d.is_float())
}

/// The output to score: `asked`, or the first float output; errors list the outputs.
pub fn choose_output(model: &ModelProto, path: &Path, asked: Option<&str>) -> Result<String> {
    let Some(graph) = model.graph.as_ref() else { mismatch!("{}: no graph", path.display()) };
    let outputs: Vec<ValueInfo> = graph.output.iter().map(ValueInfo::from_proto).collect();
    match asked {
        Some(name) => {
            let Some(o) = outputs.iter().find(|o| o.name == name) else {
                mismatch!(
                    "{} has no output '{name}' (--output); its outputs are {}",
                    path.display(),
                    list_text(&outputs)
                );
            };
            if !float_or_unknown(o) {
                mismatch!(
                    "{}: output '{name}' is {}: eval scores a float output; the model's outputs \
                     are {}",
                    path.display(),
                    o.dtype,
                    list_text(&outputs)
                );
            }
            Ok(name.to_string())
        }
        None => match outputs
            .iter()
            .find(|o| DType::ALL.iter().any(|d| d.name() == o.dtype && d.is_float()))
        {
            Some(o) => Ok(o.name.clone()),
            None => mismatch!(
                "{} declares no float output to score; its outputs are {}: pass --output NAME",
                path.display(),
                list_text(&outputs)
            ),
        },
    }
}

/// The reference must produce the output scored.
pub fn check_reference_output(model: &ModelProto, path: &Path, name: &str) -> Result<()> {
    let outputs: Vec<ValueInfo> =
        model.graph.iter().flat_map(|g| &g.output).map(ValueInfo::from_proto).collect();
    if !outputs.iter().any(|o| o.name == name) {
        mismatch!(
            "the reference {} has no output '{name}' (the output scored); its outputs are {}",
            path.display(),
            list_text(&outputs)
        );
    }
    Ok(())
}

/// A model ready to score: its file, size, session and the output scored.
pub struct ScoredModel {
    pub path: String,
    pub bytes: u64,
    pub session: Session,
    pub output: String,
}

impl ScoredModel {
    /// A failed run of this model over `samples`.
    pub(crate) fn run_error(
        &self,
        what: &'static str,
        samples: String,
        source: EngineError,
    ) -> ScoreError {
        ScoreError::Run { model: self.path.clone(), what, samples, source: Box::new(source) }
    }

    /// The scored output of one run over samples `start..end` of `data`, as float32 with one
    /// row per sample along axis 0.
    pub fn run(&self, data: &mut Dataset, start: usize, end: usize, trim: bool) -> Result<Tensor> {
        let feeds = data.feeds(start, end, trim)?;
        let outputs = self
            .session
            .run(feeds)
            .map_err(|e| self.run_error("run", data.range_label(start, end), e))?;
        let Some((_, t)) = outputs.into_iter().find(|(n, _)| *n == self.output) else {
            mismatch!("{}: the run returned no output '{}'", self.path, self.output);
        };
        if !t.dtype().is_float() {
            mismatch!(
                "{}: output '{}' is {}: eval scores a float output (choose one with --output)",
                self.path,
                self.output,
                t.dtype()
            );
        }
        if t.rank() == 0 || t.shape()[0] != end - start {
            mismatch!(
                "{}: output '{}' has shape {:?} on a run of {} sample{} ({}): eval needs one \
                 row per sample along axis 0",
                self.path,
                self.output,
                t.shape(),
                end - start,
                if end - start == 1 { "" } else { "s" },
                data.range_label(start, end)
            );
        }
        Ok(if t.dtype() == DType::F32 { t } else { t.cast(DType::F32)? })
    }
}

/// Running sums over the scored samples.
pub struct Tally {
    pub samples: usize,
    pub top1: usize,
    pub top5: usize,
    pub ref_top1: usize,
    pub ref_top5: usize,
    pub agree: usize,
    pub cos_sum: f64,
    pub cos_min: f64,
    pub noise: NoiseAccumulator,
    /// Values per sample in the scored output.
    pub values: usize,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            samples: 0,
            top1: 0,
            top5: 0,
            ref_top1: 0,
            ref_top5: 0,
            agree: 0,
            cos_sum: 0.0,
            cos_min: f64::INFINITY,
            noise: NoiseAccumulator::new(),
            values: 0,
        }
    }
}

/// One side of the data (side a, or side b of sentence pairs) with the reference's view of it.
pub struct Side<'a> {
    pub data: &'a mut Dataset,
    pub reference: Option<&'a mut Dataset>,
    /// Class labels of these samples (classification only).
    pub labels: Option<&'a [usize]>,
    pub labels_path: &'a Path,
    /// The runs: sample ranges, the same for the model and the reference.
    pub ranges: Vec<(usize, usize)>,
    /// Return the rows (sentence pairs need them all).
    pub keep: bool,
}

/// One output row per sample.
pub type Rows = Vec<Vec<f32>>;

/// Runs one side through the model (and the reference, on the same batches), adding to
/// `tally`; returns the rows (model's, reference's) when the side says `keep`. `progress` is
/// told how many samples each run scored.
pub fn score_side(
    model: &ScoredModel,
    reference: Option<&ScoredModel>,
    side: Side,
    trim: bool,
    tally: &mut Tally,
    progress: &mut dyn FnMut(usize),
) -> Result<(Rows, Rows)> {
    let Side { data, reference: mut rdata, labels, labels_path, ranges, keep } = side;
    let (mut rows, mut ref_rows) = (Vec::new(), Vec::new());
    for (s, e) in ranges {
        let out = model.run(data, s, e, trim)?;
        let rout = match (reference, rdata.as_deref_mut()) {
            (Some(r), Some(d)) => {
                let t = r.run(d, s, e, trim)?;
                if t.shape() != out.shape() {
                    mismatch!(
                        "output '{}': the reference {} gives shape {:?} but {} gives {:?} (run \
                         on {}); the reference must give the same shape",
                        model.output,
                        r.path,
                        t.shape(),
                        model.path,
                        out.shape(),
                        data.range_label(s, e)
                    );
                }
                Some(t)
            }
            _ => None,
        };
        let n = e - s;
        let width = out.len() / n;
        tally.values = width;
        let o = out.as_f32()?;
        let r = rout.as_ref().map(|t| t.as_f32()).transpose()?;
        for i in 0..n {
            let row = &o[i * width..(i + 1) * width];
            let rrow = r.map(|r| &r[i * width..(i + 1) * width]);
            if let Some(labels) = labels {
                let label = labels[s + i];
                if label >= width {
                    mismatch!(
                        "--labels {}: label {label} of {} is not a class of output '{}' ({} \
                         value{} per sample)",
                        labels_path.display(),
                        data.row_label(s + i),
                        model.output,
                        width,
                        if width == 1 { "" } else { "s" }
                    );
                }
                tally.top1 += usize::from(metrics::argmax(row) == label);
                tally.top5 += usize::from(metrics::in_top_k(row, label, TOP_K));
                if let Some(rr) = rrow {
                    tally.ref_top1 += usize::from(metrics::argmax(rr) == label);
                    tally.ref_top5 += usize::from(metrics::in_top_k(rr, label, TOP_K));
                }
            }
            if let Some(rr) = rrow {
                tally.agree += usize::from(metrics::argmax(rr) == metrics::argmax(row));
                let c = metrics::cosine(rr, row);
                tally.cos_sum += c;
                tally.cos_min = tally.cos_min.min(c);
                if keep {
                    ref_rows.push(rr.to_vec());
                }
            }
            if keep {
                rows.push(row.to_vec());
            }
        }
        if let Some(r) = r {
            tally.noise.add(r, o);
        }
        tally.samples += n;
        progress(n);
    }
    Ok((rows, ref_rows))
}

/// Spearman×100 and Pearson×100 of the pairs' cosine similarities against `gold`.
pub fn pair_scores(a: &[Vec<f32>], b: &[Vec<f32>], gold: &[f64]) -> Result<(f64, f64)> {
    let mut sims = Vec::with_capacity(a.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.len() != y.len() {
            mismatch!(
                "pair {i}: side a's embedding has {} values and side b's {}: the scored output \
                 must be one vector per sentence (a pooled embedding, not token states)",
                x.len(),
                y.len()
            );
        }
        sims.push(metrics::cosine(x, y));
    }
    Ok((100.0 * metrics::spearman(&sims, gold), 100.0 * metrics::pearson(&sims, gold)))
}

/// What `lowbit eval --json` prints: one object, documented in `docs/json.md`. Fractions are
/// 0..1; infinite SQNR (identical outputs) is `null`.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// `"lowbit-eval/1"`.
    pub format: &'static str,
    pub model: String,
    /// Size on disk, external data files included.
    pub model_bytes: u64,
    /// The data folder (side a for sentence pairs).
    pub data: String,
    /// Samples scored; pairs for sentence pairs.
    pub samples: usize,
    pub output: String,
    /// Values per sample in the output (0 when none ran).
    pub output_values: usize,
    /// `classification`, `sentence_pairs`, `reference` or `latency`.
    pub task: &'static str,
    pub threads: usize,
    pub batch: usize,
    /// Whether batches were cut to their `*mask*` input's real length.
    pub trimmed: bool,
    pub classification: Option<Classification>,
    pub sentence_pairs: Option<SentencePairs>,
    pub reference: Option<ReferenceReport>,
    pub latency: Option<Latency>,
    /// `--adaptive`: the scored samples run and re-run on the float path (latency runs not
    /// counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<lowbit_engine::adaptive::AdaptiveStats>,
}

/// Accuracy against class labels.
#[derive(Debug, Serialize)]
pub struct Classification {
    pub labels: String,
    /// Values per sample in the scored output.
    pub classes: usize,
    pub top1: f64,
    pub top5: f64,
    pub top1_correct: usize,
    pub top5_correct: usize,
}

/// The sentence-pair (STS) score.
#[derive(Debug, Serialize)]
pub struct SentencePairs {
    /// The side b folder.
    pub data_b: String,
    /// The gold scores file.
    pub gold: String,
    pub pairs: usize,
    /// Spearman rank correlation of cosine(emb_a, emb_b) with the gold scores, ×100.
    pub spearman_x100: f64,
    pub pearson_x100: f64,
}

/// The model against its reference.
#[derive(Debug, Serialize)]
pub struct ReferenceReport {
    pub model: String,
    pub model_bytes: u64,
    /// Fraction of samples whose argmax equals the reference's (`None` for sentence pairs).
    pub top1_agreement: Option<f64>,
    pub agreeing: Option<usize>,
    /// Per-sample cosine of the output row with the reference's: mean and minimum.
    pub mean_cosine: f64,
    pub min_cosine: f64,
    /// All output values against the reference's (SQNR in dB).
    pub noise: Option<Noise>,
    /// The reference's own accuracy (with labels).
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    /// The reference's own sentence-pair score.
    pub spearman_x100: Option<f64>,
    pub latency: Option<Latency>,
}

impl Tally {
    /// The accuracy over `samples` samples against the labels in `labels`.
    pub fn classification(&self, labels: String, samples: usize) -> Classification {
        Classification {
            labels,
            classes: self.values,
            top1: self.top1 as f64 / samples as f64,
            top5: self.top5 as f64 / samples as f64,
            top1_correct: self.top1,
            top5_correct: self.top5,
        }
    }

    /// The comparison with `reference`; `agreement`: whether top-1 agreement means anything
    /// (not for sentence pairs), `labelled`: whether its own accuracy was counted.
    pub fn reference(
        &self,
        reference: &ScoredModel,
        samples: usize,
        agreement: bool,
        labelled: bool,
    ) -> ReferenceReport {
        let compared = self.samples.max(1) as f64;
        ReferenceReport {
            model: reference.path.clone(),
            model_bytes: reference.bytes,
            top1_agreement: agreement.then(|| self.agree as f64 / compared),
            agreeing: agreement.then_some(self.agree),
            mean_cosine: self.cos_sum / compared,
            min_cosine: if self.samples == 0 { 1.0 } else { self.cos_min },
            noise: self.noise.noise(),
            top1: labelled.then(|| self.ref_top1 as f64 / samples as f64),
            top5: labelled.then(|| self.ref_top5 as f64 / samples as f64),
            spearman_x100: None,
            latency: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_scores_rank_cosines_against_gold() {
        let a = vec![vec![1.0f32, 0.0], vec![1.0, 0.0], vec![1.0, 0.0]];
        let b = vec![vec![1.0f32, 0.1], vec![0.0, 1.0], vec![1.0, 1.0]];
        // Cosines 0.995, 0, 0.707: ranks 3, 1, 2 against gold ranks 3, 1, 2.
        let (sp, _) = pair_scores(&a, &b, &[5.0, 0.5, 2.0]).unwrap();
        assert!((sp - 100.0).abs() < 1e-9, "{sp}");
        let e = pair_scores(&a, &vec![vec![1.0f32; 3]; 3], &[1.0; 3]).unwrap_err().to_string();
        assert!(e.contains("pair 0") && e.contains("3"), "{e}");
    }
}
