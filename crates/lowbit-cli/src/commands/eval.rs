//! `lowbit eval MODEL --data DIR [--labels FILE] [--reference FP32_MODEL] [--pairs DIR_B --gold
//! SCORES.npy] [--output NAME] [--json]`: what a model scores on real data, and what it costs.
//!
//! One output is scored ([`lowbit_eval::score`]): `--output NAME`, by default the model's first
//! float output. Samples are fed as `run` feeds them: `--batch` rows at a time (default 32)
//! where the model's first dimension is free, its fixed batch where not, each batch cut to its
//! `*mask*` input's longest real length unless `--no-trim`; `--preprocess` converts integer
//! images. Classification needs `--labels` (one class per sample of `--data` before `--limit`);
//! sentence pairs `--pairs DIR_B --gold SCORES.npy` (side b's inputs, same conventions and
//! sample count); `--reference` runs the FP32 original on the same batches. Latency is
//! [`lowbit_eval::latency`] on `--latency N` samples; the size is the model file plus its
//! external data files.
//!
//! Text output is for a person; `--json` prints one [`EvalReport`] object.

use crate::cli::{AdaptiveArgs, EvalArgs};
use crate::inputs::{data_format, load_dataset};
use crate::models::{adaptive_line, new_session, new_session_adaptive};
use crate::progress::{advance, progress};
use crate::text::{human_bytes, plural, print, print_json, thousands};
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_data::labels::{read_gold, read_labels};
use lowbit_data::{Dataset, DEFAULT_BATCH};
use lowbit_eval::latency::{time_runs, Latency};
use lowbit_eval::score::{
    check_reference_output, choose_output, load_with_size, pair_scores, score_side, EvalReport,
    ScoredModel, SentencePairs, Side, Tally, TOP_K,
};
use std::fmt::Write as _;
use std::path::Path;

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

/// `path` loaded and planned, scoring output `asked` (default: the first float output), or
/// as the reference of a model scoring `of_model`.
fn scored(
    path: &Path,
    asked: Option<&str>,
    of_model: Option<&str>,
    threads: usize,
    adaptive: Option<(&AdaptiveArgs, bool)>,
) -> Result<ScoredModel> {
    let (proto, bytes) = match of_model {
        Some(_) => load_with_size(path).with_context(|| format!("reference {}", path.display()))?,
        None => load_with_size(path)?,
    };
    let output = match of_model {
        Some(name) => {
            check_reference_output(&proto, path, name)?;
            name.to_string()
        }
        None => choose_output(&proto, path, asked)?,
    };
    let session = match adaptive {
        Some((a, quiet)) => new_session_adaptive(&proto, path, threads, a, quiet)?,
        None => new_session(&proto, path, threads)?,
    };
    Ok(ScoredModel { path: path.display().to_string(), bytes, session, output })
}

/// Latency of `model` on `data`, with a progress bar.
fn latency(
    model: &ScoredModel,
    data: &mut Dataset,
    n: usize,
    trim: bool,
    quiet: bool,
) -> Result<Option<Latency>> {
    let bar = progress(n.min(data.samples) as u64, quiet, "latency");
    let l = time_runs(model, data, n, trim, &mut advance(&bar));
    bar.finish_and_clear();
    Ok(l?)
}

pub fn eval(args: EvalArgs, quiet: bool) -> Result<()> {
    let quiet_notes = quiet || args.json.on;
    let format = data_format(&args.format)?;
    if args.limit == Some(0) {
        usage_bail!("--limit must be at least 1");
    }
    let text_pairs = format.pair_fields();
    if let (Some(_), Some(_)) = (text_pairs, &args.pairs) {
        usage_bail!("--pair-fields reads both sides from --data; --pairs DIR_B is for arrays");
    }
    if text_pairs.is_some() && format.gold_field().is_none() && args.gold.is_none() {
        usage_bail!("--pair-fields: pass --gold-field NAME (the gold score of each pair)");
    }
    let adaptive = Some((&args.adaptive, quiet_notes));
    let model = scored(&args.model, args.output.as_deref(), None, args.threads.n, adaptive)?;
    let reference = match &args.reference {
        Some(path) => Some(scored(path, None, Some(&model.output), args.threads.n, None)?),
        None => None,
    };

    let pre = format.preprocess.as_ref();
    let src = match text_pairs {
        Some(_) => format.side(&args.data, 0)?,
        None => format.source(&args.data)?,
    };
    let mut data = load_dataset(&model.session, &src, pre, quiet_notes)?;
    let mut ref_data = match &reference {
        Some(r) => Some(load_dataset(&r.session, &src, pre, true)?),
        None => None,
    };
    let all = data.samples;
    // Labels from --labels, else the data's own (a photo folder's), named in the report by the
    // file, or the folder.
    let labels = match &args.labels {
        Some(p) => Some(read_labels(p, all, &args.data)?),
        None => data.labels(),
    };
    let labels_path = args.labels.clone().unwrap_or_else(|| args.data.clone());
    let gold = match &args.gold {
        Some(p) => Some(read_gold(p, all, &args.data)?),
        None => data.gold(),
    };
    let side_b = match (&args.pairs, text_pairs) {
        (Some(dir), _) => Some(format.source(dir)?),
        (None, Some(_)) => Some(format.side(&args.data, 1)?),
        (None, None) => None,
    };
    let mut pairs = match &side_b {
        Some(src_b) => {
            let b = load_dataset(&model.session, src_b, pre, true)?;
            if b.samples != all {
                bail!(
                    "--pairs {} holds {} samples but --data {} holds {all}: side b needs one \
                     sample per pair, as side a",
                    src_b.path().unwrap_or(Path::new("")).display(),
                    b.samples,
                    args.data.display()
                );
            }
            let rb = match &reference {
                Some(r) => Some(load_dataset(&r.session, src_b, pre, true)?),
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
    let mut tally = Tally::default();
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
            labels_path: &labels_path,
            keep: pairs.is_some(),
        };
        let (emb_a, ref_a) =
            score_side(&model, reference.as_ref(), side, trim, &mut tally, &mut advance(&bar))?;
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
                score_side(&model, reference.as_ref(), side, trim, &mut tally, &mut advance(&bar))?;
            let gold = &gold[..samples];
            let (spearman, pearson) = pair_scores(&emb_a, &emb_b, gold)?;
            let field = |f: &str| format!("{} field '{f}'", args.data.display());
            sentence_pairs = Some(SentencePairs {
                data_b: match (&args.pairs, text_pairs) {
                    (Some(p), _) => p.display().to_string(),
                    (None, Some((_, b))) => field(b),
                    (None, None) => String::new(),
                },
                gold: match (&args.gold, format.gold_field()) {
                    (Some(p), _) => p.display().to_string(),
                    (None, Some(g)) => field(g),
                    (None, None) => String::new(),
                },
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
            let name = match &args.labels {
                Some(p) => p.display().to_string(),
                None => format!("{} (the folder's own labels)", args.data.display()),
            };
            classification = Some(tally.classification(name, samples));
        }
    }

    let adaptive_stats = model.session.adaptive_stats();
    let latency_of_model = latency(&model, &mut data, args.latency, trim, quiet_notes)?;
    let reference_report = match (&reference, ref_data.as_mut()) {
        (Some(r), Some(rd)) => {
            let agreement = pairs.is_none() && scored;
            let mut report = tally.reference(r, samples, agreement, labels.is_some());
            report.spearman_x100 = ref_spearman;
            report.latency = latency(r, rd, args.latency, trim, quiet_notes)?;
            Some(report)
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
        latency: latency_of_model,
        adaptive: adaptive_stats,
    };
    if args.json.on {
        return print_json(&report);
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
    if let Some(a) = &r.adaptive {
        line("adaptive", adaptive_line(a));
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
