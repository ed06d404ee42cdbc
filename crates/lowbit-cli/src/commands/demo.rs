//! `lowbit demo [-o DIR]`: the whole job on a model and data lowbit builds itself (no
//! download, under a minute): calibrate, quantize to static int8, then measure what it cost —
//! size, agreement with FP32 and latency before and after — and leave every file behind so
//! the user can repeat each step with the real commands.
//!
//! The model is a three-layer MLP classifier (`Gemm`s with ReLU, 128 → 512 → 512 → 10, fixed-seed
//! weights N(0, 2/fan_in)); the data are 10 Gaussian clusters in 128 dimensions (a fixed-seed
//! centre per cluster plus noise), 100 rows to calibrate and 1000 other rows to evaluate.

use super::example_model::{node, opset17_model, value_info};
use super::run::progress;
use super::{human_bytes, new_session, new_unfused_session, print};
use crate::cli::DemoArgs;
use anyhow::{Context, Result};
use lowbit_data::Rng;
use lowbit_engine::Session;
use lowbit_onnx::pb::{self, attribute_proto::AttributeType};
use lowbit_onnx::tensor_to_proto;
use lowbit_quant::calibrate::{Calibrator, CalibratorOptions};
use lowbit_quant::quantize::{quantize_model, QuantizeConfig};
use lowbit_tensor::{npy, Tensor};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

const FEATURES: usize = 128;
const HIDDEN: usize = 512;
const CLASSES: usize = 10;
const CALIBRATION_ROWS: usize = 100;
const EVAL_ROWS: usize = 1000;
const SEED: u64 = 20_261_127;

/// `Gemm(transB=1)` with a bias: `y = x · Wᵀ + b`, weights `[out, in]` as PyTorch stores them.
fn gemm(name: &str, input: &str, output: &str) -> pb::NodeProto {
    let w = format!("{name}.weight");
    let b = format!("{name}.bias");
    let mut n = node("Gemm", name, &[input, &w, &b], output);
    n.attribute.push(pb::AttributeProto {
        name: "transB".into(),
        r#type: AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    });
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
        input: vec![value_info("x", &[Err("batch"), Ok(FEATURES as i64)])],
        output: vec![value_info("logits", &[Err("batch"), Ok(CLASSES as i64)])],
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

/// Per-row logits and per-row latency (seconds) of `session` on `x`, one row per run.
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
    Ok((logits, times))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Agreement of arg-max (%), mean cosine and SQNR (dB) of `q` against `reference` logits.
fn agreement(reference: &[f32], q: &[f32]) -> (f64, f64, f64) {
    let (mut same, mut cos, mut signal, mut noise) = (0usize, 0f64, 0f64, 0f64);
    let rows = reference.len() / CLASSES;
    for (a, b) in reference.chunks(CLASSES).zip(q.chunks(CLASSES)) {
        same += usize::from(argmax(a) == argmax(b));
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum();
        cos += dot / (na * nb).sqrt().max(1e-30);
        signal += na;
        noise += a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>();
    }
    let sqnr = 10.0 * (signal / noise.max(1e-30)).log10();
    (100.0 * same as f64 / rows as f64, cos / rows as f64, sqnr)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn demo(args: DemoArgs, quiet: bool) -> Result<()> {
    let started = Instant::now();
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

    // 1. Calibrate: stream the calibration rows through the FP32 model, 10 at a time.
    // Unfused, so calibration sees every value; the fused session times FP32 below.
    let observed = new_unfused_session(&model, &fp32_path, args.threads)?;
    let session = new_session(&model, &fp32_path, args.threads)?;
    let mut cal = Calibrator::new(CalibratorOptions::default())?;
    let bar = progress(CALIBRATION_ROWS as u64, quiet, "calibrate");
    for rows in calib.chunks(10 * FEATURES) {
        let n = rows.len() / FEATURES;
        cal.run(
            &observed,
            vec![("x".to_string(), Tensor::from_vec(vec![n, FEATURES], rows.to_vec())?)],
        )?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let table = cal.table()?;
    table.save(&dir.join("ranges.json"))?;

    // 2. Quantize: static int8 (uint8 activations, per-channel int8 weights, int32 bias).
    let (q, summary) = quantize_model(model, &QuantizeConfig::static_int8(), Some(&table))?;
    let int8_path = dir.join("model.int8.onnx");
    lowbit_onnx::save_model(&q, &int8_path)?;

    // 3. Evaluate both on the held-out rows, one row per run.
    let qsession = new_session(&q, &int8_path, args.threads)?;
    let (l32, mut t32) = evaluate(&session, &eval, "fp32", quiet)?;
    let (l8, mut t8) = evaluate(&qsession, &eval, "int8", quiet)?;
    let (agree, cos, sqnr) = agreement(&l32, &l8);
    let (s32, s8) = (file_len(&fp32_path), file_len(&int8_path));
    let (m32, m8) = (median(&mut t32) * 1e3, median(&mut t8) * 1e3);

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
    let d = dir.display();
    let _ = writeln!(
        out,
        "  lowbit calibrate {d}/model.onnx --data {d}/calibration -o {d}/ranges.json"
    );
    let _ = writeln!(
        out,
        "  lowbit quantize {d}/model.onnx --ranges {d}/ranges.json -o {d}/model.int8.onnx --force"
    );
    let _ = writeln!(out, "  lowbit bench {d}/model.int8.onnx --data {d}/eval");
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
