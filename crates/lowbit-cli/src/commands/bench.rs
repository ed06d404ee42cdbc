//! `lowbit bench MODEL [--data DIR] [--threads N] [--runs N] [--warmup N] [--vs-ort
//! [--python PATH]] [--json]`: latency of one `Session::run` (median, p90, min, mean in ms),
//! throughput in samples/s, and peak resident memory (`VmHWM` from `/proc/self/status`).
//!
//! With `--data`, runs feed one sample at a time (or the model's fixed batch), cycling through
//! the samples; each run's inputs are cut to that sample's real length when the model has a
//! `*mask*` input (see [`lowbit_data::trim`]; `--no-trim` feeds the padded rows). Without it, inputs
//! are synthesized from the declared shapes: free dimensions are 1 on axis 0 and 16 elsewhere;
//! floats are N(0, 1) from a fixed seed; integer inputs named like `*mask*` are 1, `*type*` /
//! `*segment*` 0, `*position*` 0, 1, 2, … along the last axis, other `*id*` inputs small token
//! ids in 1..1000, anything else 0; bools are true.
//!
//! `--vs-ort` then times ONNX Runtime on the same file and feeds in the same order, with the
//! same warm-up, run and thread counts (see [`ort`]), after lowbit's runs so the two never
//! compete for cores; the report adds ORT's latency, the median ratio lowbit/ORT, and each
//! output's largest difference between the two on the first sample fed.

use crate::cli::BenchArgs;
use crate::inputs::{data_format, load_dataset};
use crate::models::{adaptive_line, load_model, new_session_adaptive};
use crate::progress::progress;
use crate::text::{print, print_json};
use crate::usage::usage_bail;
use anyhow::{Context, Result};
use lowbit_data::synthetic::synth_input;
use lowbit_data::Rng;
use lowbit_eval::bench::{diff_outputs, peak_rss_mb, Latency, Ort, OrtReport, Profile};
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Instant;

/// Timed runs without `--data`.
const DEFAULT_RUNS: usize = 100;

#[derive(Serialize)]
struct BenchReport {
    model: String,
    threads: usize,
    /// `synthetic` or the data folder.
    inputs: String,
    /// Samples each run feeds.
    batch: usize,
    runs: usize,
    warmup: usize,
    #[serde(flatten)]
    latency: Latency,
    throughput_per_s: f64,
    /// Peak resident memory of the whole process (model, session and inputs included), read
    /// before `--vs-ort` writes ORT's inputs.
    peak_rss_mb: Option<f64>,
    /// Loading the file and planning the session.
    load_ms: f64,
    /// Integer ops the engine's load-time QDQ fusion made, by op type (empty for float models).
    fused_ops: std::collections::BTreeMap<String, usize>,
    /// Steps one run executes (nodes after fusion and constant folding).
    steps: usize,
    /// `--profile` only.
    profile: Option<Profile>,
    /// `--vs-ort` only.
    ort: Option<OrtReport>,
    /// lowbit's median / ORT's median (< 1: lowbit is faster); `--vs-ort` only.
    ratio_median: Option<f64>,
    /// `--adaptive`: samples run and re-run on the float path (warm-up and timed runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    adaptive: Option<lowbit_engine::adaptive::AdaptiveStats>,
}

fn latency_text(l: &Latency) -> String {
    format!(
        "median {:.3} ms, p90 {:.3} ms, min {:.3} ms, mean {:.3} ms",
        l.median_ms, l.p90_ms, l.min_ms, l.mean_ms
    )
}

fn profile_text(p: &Profile, s: &mut String) {
    let _ = writeln!(s, "profile      time per run by op type (slowest first):");
    let line = |s: &mut String, e: &lowbit_eval::bench::ProfileEntry| {
        let _ = writeln!(s, "  {:>9.4} ms {:>5.1} %  {}", e.ms_per_run, 100.0 * e.share, e.name);
    };
    p.by_op.iter().for_each(|e| line(s, e));
    let _ = writeln!(s, "             slowest steps:");
    p.slowest.iter().for_each(|e| line(s, e));
}

pub fn bench(args: BenchArgs, quiet: bool) -> Result<()> {
    let format = data_format(&args.format)?;
    let t0 = Instant::now();
    let model = load_model(&args.model)?;
    let session = new_session_adaptive(
        &model,
        &args.model,
        args.threads.n,
        &args.adaptive,
        quiet || args.json.on,
    )?;
    drop(model);
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;

    let (sets, batch, inputs_label) = match &args.data {
        Some(dir) => {
            let mut data = load_dataset(
                &session,
                &format.source(dir)?,
                format.preprocess.as_ref(),
                quiet || args.json.on,
            )?;
            if let Some(n) = args.limit {
                data.limit(n)?;
            }
            let batch = data.fixed_batch.unwrap_or(1);
            let sets = data
                .ranges(batch)
                .into_iter()
                .map(|(s, e)| data.feeds(s, e, !args.no_trim))
                .collect::<Result<Vec<_>, _>>()?;
            (sets, batch, dir.display().to_string())
        }
        None => {
            if args.limit.is_some() || args.no_trim || format.preprocess.is_some() {
                usage_bail!("--limit, --no-trim and --preprocess apply to --data only");
            }
            let mut rng = Rng::new(0x10_b17);
            let feeds = session
                .inputs()
                .into_iter()
                .map(|spec| Ok((spec.name.clone(), synth_input(spec, &mut rng)?)))
                .collect::<Result<Vec<_>>>()?;
            let batch = feeds.first().and_then(|(_, t)| t.shape().first().copied()).unwrap_or(1);
            (vec![feeds], batch, "synthetic".to_string())
        }
    };
    let runs = args
        .runs
        .map_or(if args.data.is_some() { sets.len() } else { DEFAULT_RUNS }, |r| r as usize);

    // Checked before lowbit's runs so a missing Python or onnxruntime fails at once.
    let ort_side = if args.vs_ort { Some(Ort::start(args.python.as_deref())?) } else { None };

    let label = |i: usize| format!("{}: run {} failed", args.model.display(), i + 1);
    // The outputs of the first run fed (set 0), kept for the comparison with ORT.
    let mut first_out = None;
    for i in 0..args.warmup {
        let out = session.run(sets[i % sets.len()].clone()).with_context(|| label(i))?;
        if args.vs_ort && first_out.is_none() {
            first_out = Some(out);
        }
    }
    let bar = progress(runs as u64, quiet || args.json.on, "bench");
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let feeds = sets[i % sets.len()].clone();
        let start = Instant::now();
        let out = session.run(feeds).with_context(|| label(i))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if args.vs_ort && first_out.is_none() {
            first_out = Some(out);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let profile = if args.profile {
        let mut step_s = Vec::new();
        for i in 0..runs {
            let feeds = sets[i % sets.len()].clone();
            session.run_profiled(feeds, &mut step_s).with_context(|| label(i))?;
        }
        Some(Profile::of(&session, &step_s, runs))
    } else {
        None
    };
    let peak_rss_mb = peak_rss_mb();
    let latency = Latency::of(&mut times);
    let threads = session.threads();

    let (ort_report, ratio_median) = match &ort_side {
        Some(o) => {
            let note = indicatif::ProgressBar::new_spinner();
            if quiet || args.json.on {
                note.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            // Drawn once, no steady tick: a ticking thread would steal CPU from ORT's runs.
            note.set_message(format!(
                "timing ONNX Runtime ({runs} runs + {} warm-up)...",
                args.warmup
            ));
            note.tick();
            let res = o.bench(&args.model, &sets, threads, args.warmup, runs);
            note.finish_and_clear();
            let mut run = res?;
            let ort_latency = Latency::of(&mut run.times_ms);
            let ratio = latency.median_ms / ort_latency.median_ms;
            let report = OrtReport {
                version: o.version.clone(),
                python: run.python,
                providers: run.providers,
                intra_op_threads: threads,
                inter_op_threads: 1,
                execution_mode: "sequential",
                graph_optimization: "default (ORT_ENABLE_ALL)",
                runs,
                warmup: args.warmup,
                latency: ort_latency,
                load_ms: run.load_ms,
                outputs: diff_outputs(first_out.as_deref().unwrap_or_default(), run.outputs),
            };
            (Some(report), ratio.is_finite().then_some(ratio))
        }
        None => (None, None),
    };
    drop(ort_side);

    let r = BenchReport {
        model: args.model.display().to_string(),
        threads,
        inputs: inputs_label,
        batch,
        runs,
        warmup: args.warmup,
        throughput_per_s: batch as f64 * 1e3 / latency.mean_ms,
        latency,
        peak_rss_mb,
        load_ms,
        fused_ops: session.fused_ops().clone(),
        steps: session.num_steps(),
        profile,
        ort: ort_report,
        ratio_median,
        adaptive: session.adaptive_stats(),
    };
    if args.json.on {
        return print_json(&r);
    }
    let mut s = String::new();
    let _ = writeln!(s, "model        {}", r.model);
    let _ = writeln!(s, "inputs       {} (batch {})", r.inputs, r.batch);
    let _ = writeln!(s, "threads      {}", r.threads);
    let _ = writeln!(s, "runs         {} (+{} warm-up)", r.runs, r.warmup);
    let _ = writeln!(s, "latency      {}", latency_text(&r.latency));
    let _ = writeln!(s, "throughput   {:.1} samples/s", r.throughput_per_s);
    if let Some(mb) = r.peak_rss_mb {
        let _ = writeln!(s, "peak RSS     {mb:.1} MB");
    }
    let _ = writeln!(s, "load         {:.1} ms", r.load_ms);
    if !r.fused_ops.is_empty() {
        let f: Vec<String> = r.fused_ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        let _ = writeln!(s, "fused        {} ({} steps per run)", f.join(", "), r.steps);
    }
    if let Some(a) = &r.adaptive {
        let _ = writeln!(s, "adaptive     {} (warm-up and timed runs)", adaptive_line(a));
    }
    if let Some(p) = &r.profile {
        profile_text(p, &mut s);
    }
    if let Some(o) = &r.ort {
        let all_cpus =
            if args.threads.n == 0 { ", as lowbit's --threads 0: one per CPU" } else { "" };
        let _ = writeln!(
            s,
            "ORT          onnxruntime {} ({}), intra-op threads {}{all_cpus}, inter-op 1, \
             sequential, default graph optimizations; python {}",
            o.version,
            o.providers.join(", "),
            o.intra_op_threads,
            o.python
        );
        let _ = writeln!(s, "ORT latency  {}", latency_text(&o.latency));
        if let Some(ms) = o.load_ms {
            let _ = writeln!(s, "ORT load     {ms:.1} ms");
        }
        if let Some(x) = r.ratio_median {
            let _ = writeln!(
                s,
                "ratio        {x:.3} (lowbit median / ORT median; < 1: lowbit is faster)"
            );
        }
        for (i, d) in o.outputs.iter().enumerate() {
            let head = if i == 0 { "max |diff|  " } else { "            " };
            let value = match (d.max_abs_diff, &d.note) {
                (Some(x), _) => format!("{x:.3e}"),
                (None, Some(why)) => format!("n/a ({why})"),
                (None, None) => "n/a".into(),
            };
            let _ = writeln!(s, "{head} {} {value} (first sample, lowbit vs ORT)", d.name);
        }
    }
    print(&s)
}
