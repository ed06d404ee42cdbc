//! `lowbit demo [-o DIR]`: the whole job on a model and data lowbit builds itself (no
//! download, under a minute): calibrate, quantize to static int8, then measure what it cost —
//! size, agreement with FP32 and latency before and after — and leave every file behind so
//! the user can repeat each step with the real commands.
//!
//! The model is a three-layer MLP classifier (`Gemm`s with ReLU, 128 → 512 → 512 → 10, fixed-seed
//! weights N(0, 2/fan_in)); the data are 10 Gaussian clusters in 128 dimensions (a fixed-seed
//! centre per cluster plus noise), 100 rows to calibrate and 1000 other rows to evaluate.

use crate::calibration::{calibrate_model, CalibrationData};
use crate::cli::DemoArgs;
use crate::models::new_session;
use crate::onnx_build::{batch_value, int_attr, node, opset17_model};
use crate::paths::{same_file, OutputPaths};
use crate::progress::progress;
use crate::text::{human_bytes, print};
use anyhow::{Context, Result};
use lowbit_data::{FeedSource, Rng};
use lowbit_engine::Session;
use lowbit_eval::metrics::{argmax, cosine, median, NoiseAccumulator};
use lowbit_onnx::pb;
use lowbit_onnx::tensor_to_proto;
use lowbit_quant::quantize::{quantize_model, QuantizeConfig};
use lowbit_tensor::{npy, Tensor};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// The classifier's widths: input features, hidden units, classes.
const FEATURES: usize = 128;
const HIDDEN: usize = 512;
const CLASSES: usize = 10;
/// Rows to calibrate on, and other rows to evaluate on.
const CALIBRATION_ROWS: usize = 100;
const EVAL_ROWS: usize = 10 * CALIBRATION_ROWS;
/// Weights, cluster centres and noise all come from this seed.
const SEED: u64 = 20_261_127;

/// `Gemm(transB=1)` with a bias: `y = x · Wᵀ + b`, weights `[out, in]` as PyTorch stores them.
fn gemm(name: &str, input: &str, output: &str) -> pb::NodeProto {
    let w = format!("{name}.weight");
    let b = format!("{name}.bias");
    let mut n = node("Gemm", name, &[input, &w, &b], output);
    n.attribute.push(int_attr("transB", 1));
    n
}

/// The demo classifier with fixed-seed weights.
fn build_model(rng: &mut Rng) -> Result<pb::ModelProto> {
    let layers = [("fc1", FEATURES, HIDDEN), ("fc2", HIDDEN, HIDDEN), ("fc3", HIDDEN, CLASSES)];
    let mut initializer = Vec::new();
    for (name, fan_in, fan_out) in layers {
        let w = rng.normals(fan_in * fan_out, (2.0 / fan_in as f32).sqrt());
        let b = rng.normals(fan_out, 0.05);
        initializer.push(tensor_to_proto(
            &format!("{name}.weight"),
            &Tensor::from_vec(vec![fan_out, fan_in], w)?,
        ));
        initializer
            .push(tensor_to_proto(&format!("{name}.bias"), &Tensor::from_vec(vec![fan_out], b)?));
    }
    let graph = pb::GraphProto {
        name: "lowbit_demo_mlp".into(),
        doc_string: "Three-layer MLP classifier written by `lowbit demo` (fixed-seed weights)."
            .into(),
        node: vec![
            gemm("fc1", "x", "fc1.out"),
            node("Relu", "relu1", &["fc1.out"], "h1"),
            gemm("fc2", "h1", "fc2.out"),
            node("Relu", "relu2", &["fc2.out"], "h2"),
            gemm("fc3", "h2", "logits"),
        ],
        initializer,
        input: vec![batch_value("x", FEATURES)],
        output: vec![batch_value("logits", CLASSES)],
        ..Default::default()
    };
    Ok(opset17_model(graph))
}

/// `rows` samples of 10 Gaussian clusters: row-major `[rows, FEATURES]`.
fn cluster_rows(rng: &mut Rng, centres: &[Vec<f32>], rows: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * FEATURES);
    for _ in 0..rows {
        let c = &centres[(rng.next_u64() % centres.len() as u64) as usize];
        x.extend(c.iter().map(|&m| m + 0.7 * rng.normal()));
    }
    x
}

/// Per-row logits and per-row latency (seconds, sorted) of `session` on `x`, one row per run.
fn evaluate(session: &Session, x: &[f32], what: &str, quiet: bool) -> Result<(Vec<f32>, Vec<f64>)> {
    let rows = x.len() / FEATURES;
    let bar = progress(rows as u64, quiet, what);
    let mut logits = Vec::with_capacity(rows * CLASSES);
    let mut times = Vec::with_capacity(rows);
    for row in x.chunks(FEATURES) {
        let feed = vec![("x".to_string(), Tensor::from_vec(vec![1, FEATURES], row.to_vec())?)];
        let t = Instant::now();
        let out = session.run(feed)?;
        times.push(t.elapsed().as_secs_f64());
        logits.extend(out[0].1.to_f32_vec()?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    times.sort_by(f64::total_cmp);
    Ok((logits, times))
}

/// Agreement of arg-max (%), mean per-row cosine and SQNR (dB) of `q` against `reference`
/// logits.
fn agreement(reference: &[f32], q: &[f32]) -> (f64, f64, f64) {
    let (mut same, mut cos) = (0usize, 0f64);
    let rows = reference.len() / CLASSES;
    for (a, b) in reference.chunks(CLASSES).zip(q.chunks(CLASSES)) {
        same += usize::from(argmax(a) == argmax(b));
        cos += cosine(a, b);
    }
    let mut noise = NoiseAccumulator::new();
    noise.add(reference, q);
    let sqnr = noise.noise().map_or(f64::NAN, |n| n.sqnr_db);
    (100.0 * same as f64 / rows as f64, cos / rows as f64, sqnr)
}

/// How to run this binary: `lowbit` when that is what PATH finds, else its full path.
fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else { return "lowbit".into() };
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("lowbit")).find(|c| c.is_file()));
    match on_path {
        Some(p) if same_file(&p, &exe) => "lowbit".into(),
        _ => shell_word(&exe),
    }
}

/// `p` as one shell word (single-quoted when it holds anything but safe characters).
fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn demo(args: DemoArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
    // The default folder is the demo's own, replaced on every run; a folder the user names
    // follows the rule of every output.
    if let Some(d) = &args.out_dir {
        OutputPaths::new(args.force, &[]).folder("-o", d)?;
    }
    let dir = args.out_dir.unwrap_or_else(|| std::env::temp_dir().join("lowbit-demo"));
    for sub in ["calibration", "eval"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let mut rng = Rng::new(SEED);
    let model = build_model(&mut rng)?;
    let centres: Vec<Vec<f32>> = (0..CLASSES).map(|_| rng.normals(FEATURES, 1.0)).collect();
    let calib = cluster_rows(&mut rng, &centres, CALIBRATION_ROWS);
    let eval = cluster_rows(&mut rng, &centres, EVAL_ROWS);

    let fp32_path = dir.join("model.onnx");
    lowbit_onnx::save_model(&model, &fp32_path)?;
    npy::write_npy(
        &dir.join("calibration/x.npy"),
        &Tensor::from_vec(vec![CALIBRATION_ROWS, FEATURES], calib.clone())?,
    )?;
    npy::write_npy(
        &dir.join("eval/x.npy"),
        &Tensor::from_vec(vec![EVAL_ROWS, FEATURES], eval.clone())?,
    )?;

    // 1. Calibrate on calibration/, exactly as `lowbit calibrate` does.
    let session = new_session(&model, &fp32_path, args.threads.n)?;
    let calibration = FeedSource::Data(dir.join("calibration"));
    let opts = CalibrationData {
        threads: args.threads.n,
        quiet,
        ..CalibrationData::new(&calibration, None, None)
    };
    let table = calibrate_model(&model, &fp32_path, &opts)?.table;
    table.save(&dir.join("ranges.json"))?;

    // 2. Quantize: static int8 (uint8 activations, per-channel int8 weights, int32 bias).
    let (q, summary) = quantize_model(model, &QuantizeConfig::static_int8(), Some(&table))?;
    let int8_path = dir.join("model.int8.onnx");
    lowbit_onnx::save_model(&q, &int8_path)?;

    // 3. Evaluate both on the held-out rows, one row per run.
    let qsession = new_session(&q, &int8_path, args.threads.n)?;
    let (l32, t32) = evaluate(&session, &eval, "fp32", quiet)?;
    let (l8, t8) = evaluate(&qsession, &eval, "int8", quiet)?;
    let (agree, cos, sqnr) = agreement(&l32, &l8);
    let (s32, s8) = (file_len(&fp32_path), file_len(&int8_path));
    let (m32, m8) = (median(&t32) * 1e3, median(&t8) * 1e3);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "lowbit demo: an MLP classifier ({FEATURES} -> {HIDDEN} -> {HIDDEN} -> {CLASSES}) and 10-cluster data built here, no download\n"
    );
    let _ = writeln!(out, "{:<28}{:>14}{:>16}", "", "FP32", "static int8");
    let _ = writeln!(out, "{:<28}{:>14}{:>16}", "file size", human_bytes(s32), human_bytes(s8));
    let _ = writeln!(out, "{:<28}{:>14}{:>15.1}%", "top-1 agreement with FP32", "-", agree);
    let _ = writeln!(out, "{:<28}{:>14}{:>16.5}", "mean cosine to FP32 logits", "-", cos);
    let _ = writeln!(out, "{:<28}{:>14}{:>13.1} dB", "logit SQNR vs FP32", "-", sqnr);
    let _ = writeln!(out, "{:<28}{:>11.4} ms{:>13.4} ms", "latency, 1 row (median)", m32, m8);
    let _ = writeln!(
        out,
        "\nsize {:.1}x smaller; {} nodes quantized; {EVAL_ROWS} held-out rows, {CALIBRATION_ROWS} calibration rows; {:.1} s in all",
        s32 as f64 / s8.max(1) as f64,
        summary.total_quantized(),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "latency is lowbit's engine; it runs the int8 file on integer kernels (its QDQ pairs fused at load)"
    );
    let _ = writeln!(
        out,
        "\nfiles in {}: model.onnx, model.int8.onnx, ranges.json, calibration/, eval/",
        dir.display()
    );
    let _ = writeln!(out, "same steps by hand:");
    let (bin, f) = (command_name(), |name: &str| shell_word(&dir.join(name)));
    let (model, int8, ranges) = (f("model.onnx"), f("model.int8.onnx"), f("ranges.json"));
    let (calibration, eval) = (f("calibration"), f("eval"));
    let _ = writeln!(
        out,
        "  {bin} calibrate {model} --data {calibration} -o {ranges} --force\n  \
         {bin} quantize {model} --ranges {ranges} -o {int8} --force\n  \
         {bin} bench {int8} --data {eval}"
    );
    print(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_of_identical_logits_is_perfect() {
        let a: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
        let (agree, cos, sqnr) = agreement(&a, &a);
        assert_eq!(agree, 100.0);
        assert!((cos - 1.0).abs() < 1e-12);
        assert!(sqnr > 200.0);
        let mut b = a.clone();
        b[0] += 0.5; // row 0's arg-max moves? only if it becomes the largest
        let (agree, _, sqnr2) = agreement(&a, &b);
        assert!(sqnr2 < sqnr && sqnr2 > 0.0);
        let row0_same = argmax(&a[..CLASSES]) == argmax(&b[..CLASSES]);
        assert_eq!(agree, if row0_same { 100.0 } else { 75.0 });
    }
}
