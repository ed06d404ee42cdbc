//! `lowbit example-model OUT_DIR`: writes a tiny model the project makes itself, so a first run
//! needs no download.
//!
//! The model is a two-layer MLP on 16 features, opset 17:
//! `x [batch,16] → MatMul(W1 [16,32]) → Add(b1) → Relu → MatMul(W2 [32,10]) → Add(b2) →
//! Softmax(axis=-1) → probs [batch,10]`, weights N(0, 1/fan_in) from a fixed seed. Beside it:
//! `data/x.npy` (`--samples` rows of N(0, 1) features) and `expected/probs.npy`, the outputs
//! computed directly in Rust (f64), to check `lowbit run` against.

use crate::cli::ExampleModelArgs;
use crate::onnx_build::{batch_value, int_attr, node, opset17_model};
use crate::paths::OutputPaths;
use crate::text::print;
use anyhow::{Context, Result};
use lowbit_data::Rng;
use lowbit_onnx::pb;
use lowbit_onnx::tensor_to_proto;
use lowbit_tensor::{npy, Tensor};
use std::fmt::Write as _;

const IN: usize = 16;
const HIDDEN: usize = 32;
const CLASSES: usize = 10;
const SEED: u64 = 20_240_601;

struct Weights {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl Weights {
    fn new(rng: &mut Rng) -> Weights {
        Weights {
            w1: rng.normals(IN * HIDDEN, 1.0 / (IN as f32).sqrt()),
            b1: rng.normals(HIDDEN, 0.1),
            w2: rng.normals(HIDDEN * CLASSES, 1.0 / (HIDDEN as f32).sqrt()),
            b2: rng.normals(CLASSES, 0.1),
        }
    }

    /// The model's function on one row, in f64.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let h: Vec<f64> = (0..HIDDEN)
            .map(|j| {
                let s: f64 =
                    (0..IN).map(|i| x[i] as f64 * self.w1[i * HIDDEN + j] as f64).sum::<f64>();
                (s + self.b1[j] as f64).max(0.0)
            })
            .collect();
        let logits: Vec<f64> = (0..CLASSES)
            .map(|k| {
                (0..HIDDEN).map(|j| h[j] * self.w2[j * CLASSES + k] as f64).sum::<f64>()
                    + self.b2[k] as f64
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|e| (e / sum) as f32).collect()
    }
}

fn build_model(w: &Weights) -> Result<pb::ModelProto> {
    let init = |name: &str, shape: Vec<usize>, v: &[f32]| -> Result<pb::TensorProto> {
        Ok(tensor_to_proto(name, &Tensor::from_vec(shape, v.to_vec())?))
    };
    let mut softmax = node("Softmax", "softmax", &["logits"], "probs");
    softmax.attribute.push(int_attr("axis", -1));
    let graph = pb::GraphProto {
        name: "lowbit_example_mlp".into(),
        doc_string: "Two-layer MLP written by `lowbit example-model` (fixed-seed weights).".into(),
        node: vec![
            node("MatMul", "fc1", &["x", "fc1.weight"], "fc1.out"),
            node("Add", "fc1.bias_add", &["fc1.out", "fc1.bias"], "fc1.biased"),
            node("Relu", "relu", &["fc1.biased"], "hidden"),
            node("MatMul", "fc2", &["hidden", "fc2.weight"], "fc2.out"),
            node("Add", "fc2.bias_add", &["fc2.out", "fc2.bias"], "logits"),
            softmax,
        ],
        initializer: vec![
            init("fc1.weight", vec![IN, HIDDEN], &w.w1)?,
            init("fc1.bias", vec![HIDDEN], &w.b1)?,
            init("fc2.weight", vec![HIDDEN, CLASSES], &w.w2)?,
            init("fc2.bias", vec![CLASSES], &w.b2)?,
        ],
        input: vec![batch_value("x", IN)],
        output: vec![batch_value("probs", CLASSES)],
        ..Default::default()
    };
    Ok(opset17_model(graph))
}

pub fn example_model(args: ExampleModelArgs) -> Result<()> {
    let dir = &args.out_dir;
    OutputPaths::new(args.force, &[]).folder("OUT_DIR", dir)?;
    for sub in ["data", "expected"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let mut rng = Rng::new(SEED);
    let w = Weights::new(&mut rng);
    let x = rng.normals(args.samples * IN, 1.0);
    let probs: Vec<f32> = x.chunks(IN).flat_map(|row| w.forward(row)).collect();

    let model_path = dir.join("model.onnx");
    lowbit_onnx::save_model(&build_model(&w)?, &model_path)?;
    let x_path = dir.join("data").join("x.npy");
    npy::write_npy(&x_path, &Tensor::from_vec(vec![args.samples, IN], x)?)?;
    let expected_path = dir.join("expected").join("probs.npy");
    npy::write_npy(&expected_path, &Tensor::from_vec(vec![args.samples, CLASSES], probs)?)?;

    let mut s = String::new();
    let _ = writeln!(s, "wrote {}  (MLP 16 -> 32 -> 10, opset 17)", model_path.display());
    let _ = writeln!(s, "wrote {}  (float32 [{}, {IN}])", x_path.display(), args.samples);
    let _ = writeln!(s, "wrote {}  (reference outputs)", expected_path.display());
    print(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_gives_probabilities() {
        let w = Weights::new(&mut Rng::new(SEED));
        let p = w.forward(&[0.5; IN]);
        assert_eq!(p.len(), CLASSES);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
