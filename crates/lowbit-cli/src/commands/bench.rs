//! `lowbit bench MODEL [--data DIR] [--threads N] [--runs N] [--warmup N] [--json]`: latency of
//! one `Session::run` (median, p90, min, mean in ms), throughput in samples/s, and peak resident
//! memory (`VmHWM` from `/proc/self/status`).
//!
//! With `--data`, runs feed one sample at a time (or the model's fixed batch), cycling through
//! the samples; each run's inputs are cut to that sample's real length when the model has a
//! `*mask*` input (see [`crate::feeds`]; `--no-trim` feeds the padded rows). Without it, inputs
//! are synthesized from the declared shapes: free dimensions are 1 on axis 0 and 16 elsewhere;
//! floats are N(0, 1) from a fixed seed; integer inputs named like `*mask*` are 1, `*type*` /
//! `*segment*` 0, `*position*` 0, 1, 2, … along the last axis, other `*id*` inputs small token
//! ids in 1..1000, anything else 0; bools are true.

use super::{load_model, new_session, preprocess_arg, print, print_notes};
use crate::cli::BenchArgs;
use crate::feeds::{Dataset, FeedSource};
use crate::rng::Rng;
use crate::usage::usage_bail;
use anyhow::{bail, Context, Result};
use lowbit_engine::session::Dim;
use lowbit_engine::InputSpec;
use lowbit_tensor::{DType, Tensor};
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
    median_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    mean_ms: f64,
    throughput_per_s: f64,
    /// Peak resident memory of the whole process (model, session and inputs included).
    peak_rss_mb: Option<f64>,
    /// Loading the file and planning the session.
    load_ms: f64,
}

/// One synthetic tensor for a declared input (see the module docs).
fn synth_input(spec: &InputSpec, rng: &mut Rng) -> Result<Tensor> {
    let Some(dims) = &spec.dims else {
        bail!("input '{}' declares no shape: pass real inputs with --data", spec.name);
    };
    let shape: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) => *n,
            _ if i == 0 => 1,
            _ => 16,
        })
        .collect();
    let n: usize = shape.iter().product();
    let dtype = spec.dtype.unwrap_or(DType::F32);
    let name = spec.name.to_ascii_lowercase();
    let t = if dtype.is_float() {
        Tensor::from_vec(shape, rng.normals(n, 1.0))?.cast(dtype)?
    } else if dtype == DType::Bool {
        Tensor::from_vec(shape, vec![true; n])?
    } else if dtype.is_integer() {
        let last = shape.last().copied().unwrap_or(1).max(1);
        let v: Vec<i64> = if name.contains("mask") {
            vec![1; n]
        } else if name.contains("type") || name.contains("segment") {
            vec![0; n]
        } else if name.contains("position") {
            (0..n).map(|i| (i % last) as i64).collect()
        } else if name.contains("id") {
            (0..n).map(|_| 1 + (rng.next_u64() % 999) as i64).collect()
        } else {
            vec![0; n]
        };
        Tensor::from_vec(shape, v)?.cast(dtype)?
    } else {
        bail!("input '{}' is {dtype}: pass real inputs with --data", spec.name);
    };
    Ok(t)
}

/// Peak resident set size in MB, from `/proc/self/status` (Linux only).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if !n.is_multiple_of(2) {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

pub fn bench(args: BenchArgs, quiet: bool) -> Result<()> {
    let preprocess = preprocess_arg(args.preprocess.as_deref())?;
    let t0 = Instant::now();
    let model = load_model(&args.model)?;
    let session = new_session(&model, &args.model, args.threads)?;
    drop(model);
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;

    let (sets, batch, inputs_label) = match &args.data {
        Some(dir) => {
            let src = FeedSource::Data(dir.clone());
            let mut data = Dataset::load(&session.inputs(), &src, preprocess.as_ref())?;
            print_notes(&data, quiet || args.json);
            if let Some(n) = args.limit {
                data.limit(n)?;
            }
            let batch = data.fixed_batch.unwrap_or(1);
            let sets = data
                .ranges(batch)
                .into_iter()
                .map(|(s, e)| data.feeds(s, e, !args.no_trim))
                .collect::<Result<Vec<_>>>()?;
            (sets, batch, dir.display().to_string())
        }
        None => {
            if args.limit.is_some() || args.no_trim || preprocess.is_some() {
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

    let label = |i: usize| format!("{}: run {} failed", args.model.display(), i + 1);
    for i in 0..args.warmup {
        session.run(sets[i % sets.len()].clone()).with_context(|| label(i))?;
    }
    let bar = super::run::progress(runs as u64, quiet || args.json, "bench");
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let feeds = sets[i % sets.len()].clone();
        let start = Instant::now();
        let out = session.run(feeds).with_context(|| label(i))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(out);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let r = BenchReport {
        model: args.model.display().to_string(),
        threads: session.threads(),
        inputs: inputs_label,
        batch,
        runs,
        warmup: args.warmup,
        median_ms: median(&times),
        p90_ms: percentile(&times, 90.0),
        min_ms: times[0],
        mean_ms,
        throughput_per_s: batch as f64 * 1e3 / mean_ms,
        peak_rss_mb: peak_rss_mb(),
        load_ms,
    };
    if args.json {
        return print(&(serde_json::to_string(&r)? + "\n"));
    }
    let mut s = String::new();
    let _ = writeln!(s, "model        {}", r.model);
    let _ = writeln!(s, "inputs       {} (batch {})", r.inputs, r.batch);
    let _ = writeln!(s, "threads      {}", r.threads);
    let _ = writeln!(s, "runs         {} (+{} warm-up)", r.runs, r.warmup);
    let _ = writeln!(
        s,
        "latency      median {:.3} ms, p90 {:.3} ms, min {:.3} ms, mean {:.3} ms",
        r.median_ms, r.p90_ms, r.min_ms, r.mean_ms
    );
    let _ = writeln!(s, "throughput   {:.1} samples/s", r.throughput_per_s);
    if let Some(mb) = r.peak_rss_mb {
        let _ = writeln!(s, "peak RSS     {mb:.1} MB");
    }
    let _ = writeln!(s, "load         {:.1} ms", r.load_ms);
    print(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median(&v), 5.5);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
    }

    #[test]
    fn synthetic_inputs_follow_names_and_shapes() {
        let spec = |name: &str, dtype, dims| InputSpec {
            name: name.into(),
            dtype: Some(dtype),
            dims: Some(dims),
        };
        let free = || vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())];
        let mut rng = Rng::new(1);
        let mask = synth_input(&spec("attention_mask", DType::I64, free()), &mut rng).unwrap();
        assert_eq!(mask.shape(), &[1, 16]);
        assert!(mask.as_i64().unwrap().iter().all(|&v| v == 1));
        let ids = synth_input(&spec("input_ids", DType::I64, free()), &mut rng).unwrap();
        assert!(ids.as_i64().unwrap().iter().all(|&v| (1..1000).contains(&v)));
        let x = synth_input(&spec("x", DType::F32, vec![Dim::Fixed(1), Dim::Fixed(3)]), &mut rng)
            .unwrap();
        assert_eq!(x.shape(), &[1, 3]);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
        }
    }
}
