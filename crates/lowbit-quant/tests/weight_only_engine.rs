//! lowbit's weight-only files run by the engine with the weight-only fusion (`ai.lowbit`
//! `WeightOnlyMatMul`: dequantization inside the GEMM) against the same file unfused (float
//! `DequantizeLinear`, then f32 `MatMul`): every linear layer of MiniLM must fuse, and the
//! embeddings agree to f32 rounding.
//!
//! Needs the shared corpus (`$LOWBIT_SHARED` or `<crate>/../../../shared`); without it the
//! tests say so and pass.

use lowbit_engine::{Session, SessionOptions};
use lowbit_quant::quantize::{quantize_model, QuantizeConfig};
use std::path::PathBuf;

mod common;

/// Largest |fused − unfused| allowed, relative to the embedding's largest |value|.
const MAX_RELATIVE_DIFFERENCE: f32 = 1e-4;
const SENTENCES: usize = 8;

fn corpus_dev() -> Option<PathBuf> {
    Some(common::shared("paraphrase-MiniLM-L3-v2.onnx")?.join("corpus/dev"))
}

fn check(cfg: &QuantizeConfig, tag: &str) {
    let Some(dir) = corpus_dev() else { return };
    let model = lowbit_onnx::load_model(dir.join("models/paraphrase-MiniLM-L3-v2.onnx")).unwrap();
    let (q, summary) = quantize_model(model, cfg, None).unwrap();
    let quantized = summary.quantized.get("MatMul").copied().unwrap_or(0);
    let fused = Session::new(&q, &SessionOptions { threads: 2, ..Default::default() }).unwrap();
    let plain =
        Session::new(&q, &SessionOptions { fuse_quantized: false, ..Default::default() }).unwrap();
    let count = fused.fused_ops().get("WeightOnlyMatMul").copied().unwrap_or(0);
    assert!(quantized >= 18, "{tag}: {summary}");
    assert_eq!(count, quantized, "{tag}: every quantized MatMul fuses ({:?})", fused.fused_ops());
    assert!(!fused.step_ops().contains(&"DequantizeLinear"), "{tag}: a DQ is left");
    for (i, feeds) in common::stsb_sentences(&dir, "a", SENTENCES).into_iter().enumerate() {
        let a = fused.run(feeds.clone()).unwrap();
        let b = plain.run(feeds).unwrap();
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            let (x, y) = (x.to_f32_vec().unwrap(), y.to_f32_vec().unwrap());
            let top = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(
                worst <= MAX_RELATIVE_DIFFERENCE * top,
                "{tag}: sentence {i}, output {name}: max |fused - unfused| {worst} (max |y| {top})"
            );
        }
    }
}

#[test]
fn minilm_weight_only_int4_block32_fused_matches_unfused() {
    check(&QuantizeConfig::weight_only_int4(32), "int4/32");
}

#[test]
fn minilm_weight_only_int8_per_channel_fused_matches_unfused() {
    check(&QuantizeConfig::weight_only_int8(), "int8");
}
