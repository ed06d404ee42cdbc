//! `lowbit eval MODEL --data DIR [--labels FILE] [--reference FP32_MODEL] [--pairs DIR_B --gold
//! SCORES.npy] [--output NAME] [--json]`: what a model scores on real data, and what it costs.
//!
//! One output is scored: `--output NAME`, by default the model's first float output. Samples are
//! fed as `run` feeds them (see [`lowbit_data::dataset`]): `--batch` rows at a time (default
//! [`DEFAULT_BATCH`]) where the model's first dimension is free, its fixed batch where not, each
//! batch cut to its `*mask*` input's longest real length unless `--no-trim`; `--preprocess`
//! converts integer images. The output must hold one row per sample along axis 0; a row is
//! everything else, flattened.
//!
//! - **Classification** (`--labels FILE.npy`, integer class indices, one per sample of `--data`
//!   before `--limit`): top-1 and top-5 accuracy of the rows ([`metrics::argmax`],
//!   [`metrics::in_top_k`]).
//! - **Sentence pairs** (`--pairs DIR_B --gold SCORES.npy`, as STS-B is scored): `--data` holds
//!   side a's inputs and `DIR_B` side b's, same conventions and sample count; the rows are
//!   sentence embeddings; the score is Spearman×100 (and Pearson×100) of
//!   `cosine(emb_a, emb_b)` against the gold scores ([`metrics::spearman`]).
//! - **Reference** (`--reference FP32.onnx`): the same inputs through the reference, fed on the
//!   same batches; top-1 agreement (same argmax; not for sentence pairs), mean and minimum
//!   per-sample cosine, and SQNR / MSE / max error of all the output's values against the
//!   reference's ([`metrics::NoiseAccumulator`]), plus the reference's own score.
//! - **Latency**: `Session::run` alone (inputs built beforehand; loading, preprocessing and the
//!   metrics are not timed) at batch 1 (or the model's fixed batch) on up to `--latency N`
//!   samples (default [`DEFAULT_LATENCY_SAMPLES`]) evenly spread over the (limited) data — side a
//!   for sentence pairs — each cut to its own real length when there is a `*mask*` input, after
//!   up to [`WARMUP_RUNS`] untimed runs; the reference is timed the same way, right after.
//! - **Size**: the model file plus its external data files.
//!
//! Text output is for a person; `--json` prints one [`EvalReport`] object.

use super::run::{progress, DEFAULT_BATCH};
use super::{human_bytes, new_session, preprocess_arg, print, print_notes, thousands};
use crate::cli::EvalArgs;
use crate::model_info::ValueInfo;
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use lowbit_data::{Dataset, FeedSource, Preprocess};
use lowbit_engine::Session;
use lowbit_eval::metrics::{self, Noise, NoiseAccumulator};
use lowbit_onnx::pb::ModelProto;
use lowbit_tensor::{npy, DType, Tensor};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// Samples `--latency` times by default.
pub const DEFAULT_LATENCY_SAMPLES: usize = 100;
/// Untimed runs before the timed ones (fewer when fewer samples are timed).
pub const WARMUP_RUNS: usize = 10;
/// `k` of the top-k accuracy reported beside top-1.
const TOP_K: usize = 5;

/// What `lowbit eval --json` prints: one object. Fractions are 0..1; infinite SQNR (identical
/// outputs) is `null`.
///
/// ```text
/// format          "lowbit-eval/1"
/// model           the evaluated .onnx file, as given
/// model_bytes     its size on disk, external data files included
/// data            the --data folder (side a for sentence pairs)
/// samples         samples scored (after --limit); pairs for sentence pairs
/// output          the graph output scored
/// output_values   values per sample in that output (classes, embedding width; 0 when none ran)
/// task            "classification" (--labels), "sentence_pairs" (--pairs), "reference"
///                 (--reference only) or "latency" (none of these)
/// threads         worker threads of the engine
/// batch           samples per run while scoring
/// trimmed         whether batches were cut to their *mask* input's real length
/// classification  null, or {labels, classes, top1, top5, top1_correct, top5_correct}
/// sentence_pairs  null, or {data_b, gold, pairs, spearman_x100, pearson_x100}
/// reference       null, or {model, model_bytes, top1_agreement (null for sentence pairs),
///                 agreeing, mean_cosine, min_cosine (per sample, over sides a and b for
///                 pairs), noise {sqnr_db, mse, cosine, max_abs, count} (all output values
///                 against the reference's), top1, top5 (reference's own accuracy, with
///                 --labels), spearman_x100 (its own score, with --pairs), latency (as below)}
/// latency         null (--latency 0), or {timed, median_ms, mean_ms, runs, warmup, batch,
///                 trimmed}: `timed` says in words what the milliseconds cover
/// ```
#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub format: &'static str,
    pub model: String,
    pub model_bytes: u64,
    pub data: String,
    pub samples: usize,
    pub output: String,
    pub output_values: usize,
    pub task: &'static str,
    pub threads: usize,
    pub batch: usize,
    pub trimmed: bool,
    pub classification: Option<Classification>,
    pub sentence_pairs: Option<SentencePairs>,
    pub reference: Option<ReferenceReport>,
    pub latency: Option<Latency>,
}

/// Accuracy against `--labels`.
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
    /// The `--pairs` folder (side b).
    pub data_b: String,
    /// The `--gold` scores file.
    pub gold: String,
    pub pairs: usize,
    /// Spearman rank correlation of cosine(emb_a, emb_b) with the gold scores, ×100.
    pub spearman_x100: f64,
    pub pearson_x100: f64,
}

/// The model against `--reference`.
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
    /// The reference's own accuracy (with `--labels`).
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    /// The reference's own sentence-pair score (with `--pairs`).
    pub spearman_x100: Option<f64>,
    pub latency: Option<Latency>,
}

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

/// A model ready to score: its file, size, session and the output scored.
pub(crate) struct Scored {
    pub(crate) path: String,
    pub(crate) bytes: u64,
    pub(crate) session: Session,
    pub(crate) output: String,
}

impl Scored {
    /// The scored output of one run over samples `start..end` of `data`, as float32 with one
    /// row per sample along axis 0.
    pub(crate) fn run(
        &self,
        data: &mut Dataset,
        start: usize,
        end: usize,
        trim: bool,
    ) -> Result<Tensor> {
        let feeds = data.feeds(start, end, trim)?;
        let outputs = self.session.run(feeds).with_context(|| {
            format!("{}: run on {} failed", self.path, data.range_label(start, end))
        })?;
        let Some((_, t)) = outputs.into_iter().find(|(n, _)| *n == self.output) else {
            bail!("{}: the run returned no output '{}'", self.path, self.output);
        };
        if !t.dtype().is_float() {
            bail!(
                "{}: output '{}' is {}: eval scores a float output (choose one with --output)",
                self.path,
                self.output,
                t.dtype()
            );
        }
        if t.rank() == 0 || t.shape()[0] != end - start {
            bail!(
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

/// Loads a model and its size on disk (the file plus its external data files).
pub(crate) fn load_sized(path: &Path) -> Result<(ModelProto, u64)> {
    let (model, refs) =
        lowbit_onnx::io::load_model_with_external_refs(path).context("cannot load the model")?;
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

/// `logits (float32 [batch, 10]), 461 (float32 [batch, 384])`.
fn list_outputs(outputs: &[ValueInfo]) -> String {
    let v: Vec<String> =
        outputs.iter().map(|o| format!("{} ({} {})", o.name, o.dtype, o.shape_text())).collect();
    v.join(", ")
}

/// Whether a declared output type is a float (or unknown, left to the run to tell).
fn float_or_unknown(o: &ValueInfo) -> bool {
    DType::ALL.iter().find(|d| d.name() == o.dtype).is_none_or(|d| d.is_float())
}

/// The output to score: `asked`, or the first float output; errors list the outputs.
pub(crate) fn choose_output(
    model: &ModelProto,
    path: &Path,
    asked: Option<&str>,
) -> Result<String> {
    let graph = model.graph.as_ref().with_context(|| format!("{}: no graph", path.display()))?;
    let outputs: Vec<ValueInfo> = graph.output.iter().map(ValueInfo::from_proto).collect();
    match asked {
        Some(name) => {
            let Some(o) = outputs.iter().find(|o| o.name == name) else {
                bail!(
                    "{} has no output '{name}' (--output); its outputs are {}",
                    path.display(),
                    list_outputs(&outputs)
                );
            };
            if !float_or_unknown(o) {
                bail!(
                    "{}: output '{name}' is {}: eval scores a float output; the model's outputs \
                     are {}",
                    path.display(),
                    o.dtype,
                    list_outputs(&outputs)
                );
            }
            Ok(name.to_string())
        }
        None => outputs
            .iter()
            .find(|o| DType::ALL.iter().any(|d| d.name() == o.dtype && d.is_float()))
            .map(|o| o.name.clone())
            .with_context(|| {
                format!(
                    "{} declares no float output to score; its outputs are {}: pass --output NAME",
                    path.display(),
                    list_outputs(&outputs)
                )
            }),
    }
}

/// The reference must produce the output scored.
fn check_reference_output(model: &ModelProto, path: &Path, name: &str) -> Result<()> {
    let outputs: Vec<ValueInfo> =
        model.graph.iter().flat_map(|g| &g.output).map(ValueInfo::from_proto).collect();
    if !outputs.iter().any(|o| o.name == name) {
        bail!(
            "the reference {} has no output '{name}' (the output scored); its outputs are {}",
            path.display(),
            list_outputs(&outputs)
        );
    }
    Ok(())
}

/// One value per sample from a `.npy` file (`[N]` or `[N, 1]`), checked against `samples`.
fn per_sample(path: &Path, what: &str, flag: &str, samples: usize, data: &Path) -> Result<Tensor> {
    let t = npy::read_npy(path).with_context(|| format!("cannot read the {what}"))?;
    let n = t.shape().first().copied().unwrap_or(1);
    if t.rank() == 0 || t.rank() > 2 || (t.rank() == 2 && t.shape()[1] != 1) {
        bail!(
            "{flag} {}: {what} of shape {:?}; expected one per sample, shape [{samples}]",
            path.display(),
            t.shape()
        );
    }
    if n != samples {
        bail!(
            "{flag} {} holds {n} {what} but --data {} holds {samples} sample{}: one per sample",
            path.display(),
            data.display(),
            if samples == 1 { "" } else { "s" }
        );
    }
    Ok(t)
}

/// Class indices from `--labels`, one per sample.
pub(crate) fn read_labels(path: &Path, samples: usize, data: &Path) -> Result<Vec<usize>> {
    let t = per_sample(path, "labels", "--labels", samples, data)?;
    if !t.dtype().is_integer() {
        bail!(
            "--labels {}: labels are {}; expected integer class indices",
            path.display(),
            t.dtype()
        );
    }
    t.to_i64_vec()?
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            usize::try_from(l).map_err(|_| {
                anyhow::anyhow!("--labels {}: label {l} of row {i} is negative", path.display())
            })
        })
        .collect()
}

/// Gold similarity scores from `--gold`, one per pair.
fn read_gold(path: &Path, samples: usize, data: &Path) -> Result<Vec<f64>> {
    let t = per_sample(path, "scores", "--gold", samples, data)?;
    let v = t.to_f64_vec().with_context(|| format!("--gold {}", path.display()))?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("--gold {}: score {} of row {i} is not finite", path.display(), v[i]);
    }
    Ok(v)
}

/// Running sums over the scored samples.
struct Tally {
    samples: usize,
    top1: usize,
    top5: usize,
    ref_top1: usize,
    ref_top5: usize,
    agree: usize,
    cos_sum: f64,
    cos_min: f64,
    noise: NoiseAccumulator,
    values: usize,
}

impl Tally {
    fn new() -> Tally {
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
struct Side<'a> {
    data: &'a mut Dataset,
    reference: Option<&'a mut Dataset>,
    /// Class labels of these samples (classification only).
    labels: Option<&'a [usize]>,
    labels_path: &'a Path,
    /// The runs: sample ranges, the same for the model and the reference.
    ranges: Vec<(usize, usize)>,
    /// Return the rows (sentence pairs need them all).
    keep: bool,
}

/// One output row per sample.
type Rows = Vec<Vec<f32>>;

/// Runs one side through the model (and the reference, on the same batches), adding to
/// `tally`; returns the rows (model's, reference's) when the side says `keep`.
fn score_side(
    model: &Scored,
    reference: Option<&Scored>,
    side: Side,
    trim: bool,
    tally: &mut Tally,
    bar: &ProgressBar,
) -> Result<(Rows, Rows)> {
    let Side { data, reference: mut rdata, labels, labels_path, ranges, keep } = side;
    let (mut rows, mut ref_rows) = (Vec::new(), Vec::new());
    for (s, e) in ranges {
        let out = model.run(data, s, e, trim)?;
        let rout = match (reference, rdata.as_deref_mut()) {
            (Some(r), Some(d)) => {
                let t = r.run(d, s, e, trim)?;
                if t.shape() != out.shape() {
                    bail!(
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
                    bail!(
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
        bar.inc(n as u64);
    }
    Ok((rows, ref_rows))
}

/// Spearman×100 and Pearson×100 of the pairs' cosine similarities against `gold`.
fn pair_scores(a: &[Vec<f32>], b: &[Vec<f32>], gold: &[f64]) -> Result<(f64, f64)> {
    let mut sims = Vec::with_capacity(a.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.len() != y.len() {
            bail!(
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

/// `n` of `0..len`, evenly spread (first and last included), as numpy's `linspace` floored.
fn spread(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    if n <= 1 {
        return vec![0; n];
    }
    (0..n).map(|i| i * (len - 1) / (n - 1)).collect()
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if !n.is_multiple_of(2) {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Times `Session::run` on up to `n` samples of `data` (see the module docs).
pub(crate) fn time_runs(
    model: &Scored,
    data: &mut Dataset,
    n: usize,
    trim: bool,
    quiet: bool,
) -> Result<Option<Latency>> {
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
    let label = |k: usize| {
        let (s, e) = ranges[picked[k]];
        format!("{}: timed run on {} failed", model.path, data.range_label(s, e))
    };
    let warmup = sets.len().min(WARMUP_RUNS);
    for (k, feeds) in sets.iter().take(warmup).enumerate() {
        model.session.run(feeds.clone()).with_context(|| label(k))?;
    }
    let bar = progress(sets.len() as u64, quiet, "latency");
    let mut times = Vec::with_capacity(sets.len());
    for (k, feeds) in sets.iter().enumerate() {
        let feeds = feeds.clone();
        let start = Instant::now();
        let out = model.session.run(feeds).with_context(|| label(k))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(out);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let threads = model.session.threads();
    let timed = format!(
        "Session::run alone at batch {batch}, {} run{} on samples evenly spread over the data{}, \
         after {warmup} warm-up run{}, {threads} thread{}",
        times.len(),
        if times.len() == 1 { "" } else { "s" },
        if trimmed { ", each cut to its own length" } else { "" },
        if warmup == 1 { "" } else { "s" },
        if threads == 1 { "" } else { "s" }
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

/// Loads `--data`-style inputs for `session`, noting what `--preprocess` does.
pub(crate) fn load_data(
    session: &Session,
    dir: &Path,
    pre: Option<&Preprocess>,
    quiet: bool,
) -> Result<Dataset> {
    let data = Dataset::load(&session.inputs(), &FeedSource::Data(dir.to_path_buf()), pre)?;
    print_notes(&data, quiet);
    Ok(data)
}

/// `per sample`, or `per run of 8 samples` for a model with a fixed batch.
fn per_run(l: &Latency) -> String {
    if l.batch == 1 {
        "per sample".into()
    } else {
        format!("per run of {} samples", l.batch)
    }
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

pub fn eval(args: EvalArgs, quiet: bool) -> Result<()> {
    let quiet_notes = quiet || args.json;
    let preprocess = preprocess_arg(args.preprocess.as_deref())?;
    if args.limit == Some(0) {
        usage_bail!("--limit must be at least 1");
    }
    let (model_proto, bytes) = load_sized(&args.model)?;
    let output = choose_output(&model_proto, &args.model, args.output.as_deref())?;
    let session = new_session(&model_proto, &args.model, args.threads)?;
    drop(model_proto);
    let model = Scored { path: args.model.display().to_string(), bytes, session, output };
    let reference = match &args.reference {
        Some(path) => {
            let (proto, bytes) =
                load_sized(path).with_context(|| format!("reference {}", path.display()))?;
            check_reference_output(&proto, path, &model.output)?;
            let session = new_session(&proto, path, args.threads)?;
            Some(Scored {
                path: path.display().to_string(),
                bytes,
                session,
                output: model.output.clone(),
            })
        }
        None => None,
    };

    let pre = preprocess.as_ref();
    let mut data = load_data(&model.session, &args.data, pre, quiet_notes)?;
    let mut ref_data = match &reference {
        Some(r) => Some(load_data(&r.session, &args.data, pre, true)?),
        None => None,
    };
    let all = data.samples;
    let labels = match &args.labels {
        Some(p) => Some(read_labels(p, all, &args.data)?),
        None => None,
    };
    let gold = match &args.gold {
        Some(p) => Some(read_gold(p, all, &args.data)?),
        None => None,
    };
    let mut pairs = match &args.pairs {
        Some(dir) => {
            let b = load_data(&model.session, dir, pre, true)?;
            if b.samples != all {
                bail!(
                    "--pairs {} holds {} samples but --data {} holds {all}: side b needs one \
                     sample per pair, as side a",
                    dir.display(),
                    b.samples,
                    args.data.display()
                );
            }
            let rb = match &reference {
                Some(r) => Some(load_data(&r.session, dir, pre, true)?),
                None => None,
            };
            Some((b, rb))
        }
        None => None,
    };
    if let Some(n) = args.limit {
        data.limit(n)?;
        for d in ref_data.iter_mut() {
            d.limit(n)?;
        }
        if let Some((b, rb)) = &mut pairs {
            b.limit(n)?;
            for d in rb.iter_mut() {
                d.limit(n)?;
            }
        }
    }
    let samples = data.samples;

    // Batches: the model's fixed batch (the reference's must agree), else --batch.
    let fixed = match (data.fixed_batch, ref_data.as_ref().and_then(|d| d.fixed_batch)) {
        (Some(a), Some(b)) if a != b => bail!(
            "{} fixes its batch dimension at {a} and the reference {} at {b}: they cannot run \
             on the same batches",
            model.path,
            reference.as_ref().map_or("", |r| r.path.as_str())
        ),
        (a, b) => a.or(b),
    };
    let batch = match (fixed, args.batch) {
        (Some(f), Some(asked)) => {
            if f as u64 != asked && !quiet_notes {
                eprintln!(
                    "note: the model fixes its batch dimension at {f}; ignoring --batch {asked}"
                );
            }
            f
        }
        (Some(f), None) => f,
        (None, asked) => asked.map_or(DEFAULT_BATCH, |b| b as usize),
    };
    if fixed.is_some_and(|f| !samples.is_multiple_of(f)) {
        usage_bail!(
            "{samples} samples do not fill the fixed batches of {batch} samples that {} takes: \
             use --limit with a multiple of {batch}",
            if data.fixed_batch.is_some() { &model.path } else { "the reference" }
        );
    }
    let trim = !args.no_trim;
    let trimmed = trim && data.mask_name().is_some();

    let task = if labels.is_some() {
        "classification"
    } else if pairs.is_some() {
        "sentence_pairs"
    } else if reference.is_some() {
        "reference"
    } else {
        "latency"
    };
    let scored = task != "latency";
    let mut tally = Tally::new();
    let mut classification = None;
    let mut sentence_pairs = None;
    let mut ref_spearman = None;
    if scored {
        let total = samples * if pairs.is_some() { 2 } else { 1 };
        let bar = progress(total as u64, quiet_notes, "eval");
        let side = Side {
            ranges: data.ranges(batch),
            data: &mut data,
            reference: ref_data.as_mut(),
            labels: labels.as_ref().map(|l| &l[..samples]),
            labels_path: args.labels.as_deref().unwrap_or(Path::new("")),
            keep: pairs.is_some(),
        };
        let (emb_a, ref_a) = score_side(&model, reference.as_ref(), side, trim, &mut tally, &bar)?;
        if let (Some((b, rb)), Some(gold)) = (&mut pairs, &gold) {
            let side = Side {
                ranges: b.ranges(batch),
                data: b,
                reference: rb.as_mut(),
                labels: None,
                labels_path: Path::new(""),
                keep: true,
            };
            let (emb_b, ref_b) =
                score_side(&model, reference.as_ref(), side, trim, &mut tally, &bar)?;
            let gold = &gold[..samples];
            let (spearman, pearson) = pair_scores(&emb_a, &emb_b, gold)?;
            sentence_pairs = Some(SentencePairs {
                data_b: args.pairs.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                gold: args.gold.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                pairs: samples,
                spearman_x100: spearman,
                pearson_x100: pearson,
            });
            if reference.is_some() {
                ref_spearman = Some(pair_scores(&ref_a, &ref_b, gold)?.0);
            }
        }
        bar.finish_and_clear();
        if labels.is_some() {
            classification = Some(Classification {
                labels: args.labels.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                classes: tally.values,
                top1: tally.top1 as f64 / samples as f64,
                top5: tally.top5 as f64 / samples as f64,
                top1_correct: tally.top1,
                top5_correct: tally.top5,
            });
        }
    }

    let latency = time_runs(&model, &mut data, args.latency, trim, quiet_notes)?;
    let reference_report = match (&reference, ref_data.as_mut()) {
        (Some(r), Some(rd)) => {
            let latency = time_runs(r, rd, args.latency, trim, quiet_notes)?;
            let compared = tally.samples.max(1) as f64;
            let agreement = pairs.is_none() && scored;
            Some(ReferenceReport {
                model: r.path.clone(),
                model_bytes: r.bytes,
                top1_agreement: agreement.then(|| tally.agree as f64 / compared),
                agreeing: agreement.then_some(tally.agree),
                mean_cosine: tally.cos_sum / compared,
                min_cosine: if tally.samples == 0 { 1.0 } else { tally.cos_min },
                noise: tally.noise.noise(),
                top1: labels.is_some().then(|| tally.ref_top1 as f64 / samples as f64),
                top5: labels.is_some().then(|| tally.ref_top5 as f64 / samples as f64),
                spearman_x100: ref_spearman,
                latency,
            })
        }
        _ => None,
    };

    let report = EvalReport {
        format: "lowbit-eval/1",
        model: model.path.clone(),
        model_bytes: model.bytes,
        data: args.data.display().to_string(),
        samples,
        output: model.output.clone(),
        output_values: tally.values,
        task,
        threads: model.session.threads(),
        batch,
        trimmed,
        classification,
        sentence_pairs,
        reference: reference_report,
        latency,
    };
    if args.json {
        return print(&(serde_json::to_string(&report)? + "\n"));
    }
    print(&render(&report, all))
}

/// The text report: one `label  value` line each, reference lines indented under it.
fn render(r: &EvalReport, all: usize) -> String {
    let mut s = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(s, "{label:<19}{value}");
    };
    let size = |b: u64| format!("{} ({} bytes)", human_bytes(b), thousands(b));
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let latency = |l: &Latency| {
        format!("median {:.3} ms, mean {:.3} ms {}", l.median_ms, l.mean_ms, per_run(l))
    };
    line("model", r.model.clone());
    line("size", size(r.model_bytes));
    let first = if r.samples < all {
        format!(" (the first {} of {all})", r.samples)
    } else {
        String::new()
    };
    line("data", format!("{}: {} sample{}{first}", r.data, r.samples, plural(r.samples)));
    let values = if r.output_values > 0 {
        format!(" ({} values per sample)", r.output_values)
    } else {
        String::new()
    };
    line(
        "output",
        format!(
            "'{}'{values}, batches of {}{}, {} thread{}",
            r.output,
            r.batch,
            if r.trimmed { " cut to their longest real length" } else { "" },
            r.threads,
            plural(r.threads)
        ),
    );
    if let Some(c) = &r.classification {
        line(
            "accuracy",
            format!(
                "top-1 {} ({}/{}), top-{TOP_K} {} ({}/{})",
                pct(c.top1),
                c.top1_correct,
                r.samples,
                pct(c.top5),
                c.top5_correct,
                r.samples
            ),
        );
        line("labels", c.labels.clone());
    }
    if let Some(p) = &r.sentence_pairs {
        line(
            "sentence pairs",
            format!(
                "Spearman×100 {:.4}, Pearson×100 {:.4} over {} pairs",
                p.spearman_x100, p.pearson_x100, p.pairs
            ),
        );
        line("side b, gold", format!("{}, {}", p.data_b, p.gold));
    }
    if r.task == "latency" {
        line("score", "none: pass --labels, --pairs with --gold, or --reference".into());
    }
    if let Some(l) = &r.latency {
        line("latency", latency(l));
    }
    if let Some(f) = &r.reference {
        line("reference", f.model.clone());
        let ratio = 100.0 * r.model_bytes as f64 / f.model_bytes.max(1) as f64;
        line("  size", format!("{}; the model is {ratio:.1} % of it", size(f.model_bytes)));
        if let (Some(a), Some(n)) = (f.top1_agreement, f.agreeing) {
            line("  top-1 agreement", format!("{} ({n}/{})", pct(a), r.samples));
        }
        let per = if r.sentence_pairs.is_some() { "sentence, sides a and b" } else { "sample" };
        line(
            "  output cosine",
            format!("mean {:.6}, min {:.6} (per {per})", f.mean_cosine, f.min_cosine),
        );
        if let Some(n) = &f.noise {
            let sqnr = if n.sqnr_db.is_finite() {
                format!("{:.2} dB", n.sqnr_db)
            } else {
                "inf (identical outputs)".into()
            };
            line(
                "  SQNR",
                format!(
                    "{sqnr} over {} values (MSE {:.3e}, max |error| {:.3e})",
                    thousands(n.count),
                    n.mse,
                    n.max_abs
                ),
            );
        }
        if let (Some(t1), Some(t5), Some(c)) = (f.top1, f.top5, &r.classification) {
            line(
                "  its accuracy",
                format!(
                    "top-1 {} (the model: {:+.2} pt), top-{TOP_K} {}",
                    pct(t1),
                    100.0 * (c.top1 - t1),
                    pct(t5)
                ),
            );
        }
        if let (Some(sp), Some(p)) = (f.spearman_x100, &r.sentence_pairs) {
            line(
                "  its Spearman×100",
                format!("{sp:.4} (the model: {:+.4})", p.spearman_x100 - sp),
            );
        }
        if let Some(l) = &f.latency {
            line("  its latency", latency(l));
        }
    }
    if let Some(l) = &r.latency {
        line("timed", l.timed.clone());
    }
    s
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
        assert_eq!(median(&[1.0, 2.0, 4.0, 8.0]), 3.0);
    }

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
