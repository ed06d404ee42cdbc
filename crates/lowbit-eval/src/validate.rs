//! The validation gate: before lowbit says a quantized model is fine, it runs the model and its
//! FP32 original on samples the calibration did not see and compares every float output:
//! SQNR and cosine, and top-1 agreement for `[N, C]` outputs (reported; gated only when the
//! caller knows the output is class scores, since the argmax of an embedding means nothing).
//! A model below the [`Floor`] fails: a quantized model that silently lost its accuracy is the
//! worst result a quantizer can hand back.
//!
//! Streaming: one batch of both models' outputs is held at a time.

use crate::compare::{compare_models, CompareOptions, RankedLayer};
use crate::metrics::{argmax, Noise, NoiseAccumulator};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::samples::{Feeds, SampleSource};
use lowbit_tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// The least a quantized model must keep of its FP32 original's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// Output SQNR in dB (every float output).
    pub min_sqnr_db: f64,
    /// Fraction of rows whose top-1 class is unchanged, checked on `[N, C]` outputs when set
    /// (the caller knows they are class scores).
    pub min_top1_agreement: Option<f64>,
}

impl Floor {
    /// The documented default: output SQNR ≥ [`Floor::DEFAULT_SQNR_DB`], no top-1 floor.
    pub const DEFAULT_SQNR_DB: f64 = 10.0;
}

impl Default for Floor {
    fn default() -> Self {
        Floor { min_sqnr_db: Floor::DEFAULT_SQNR_DB, min_top1_agreement: None }
    }
}

/// How one graph output agrees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputAgreement {
    pub name: String,
    pub noise: Noise,
    /// Top-1 agreement with the FP32 output, for class-score outputs.
    pub top1_agreement: Option<f64>,
}

/// What the gate saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Samples (rows) compared.
    pub samples: usize,
    pub floor: Floor,
    pub outputs: Vec<OutputAgreement>,
    /// Why the model fails the floor; empty when it passes.
    pub failures: Vec<String>,
    /// When it fails: the layers that lose most, worst first ([`validate_models`]).
    #[serde(default)]
    pub worst_layers: Vec<RankedLayer>,
}

impl Validation {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// One line per output, for summaries.
    pub fn lines(&self) -> Vec<String> {
        self.outputs
            .iter()
            .map(|o| {
                let top1 = o
                    .top1_agreement
                    .map(|a| format!(", top-1 agreement {:.1} %", a * 100.0))
                    .unwrap_or_default();
                let db = if o.noise.sqnr_db.is_finite() {
                    format!("{:.1} dB", o.noise.sqnr_db)
                } else {
                    "exact".to_string()
                };
                format!("output '{}': SQNR {db}, cosine {:.4}{top1}", o.name, o.noise.cosine)
            })
            .collect()
    }
}

#[derive(Default)]
struct Acc {
    noise: NoiseAccumulator,
    agree: usize,
    rows: usize,
    class_scores: bool,
}

/// Runs `fp32` and `quant` on every batch of `samples` and compares their float outputs
/// against `floor`. Integer outputs (echoed ids, masks) must match exactly.
pub fn validate(
    fp32: &Session,
    quant: &Session,
    samples: &mut dyn SampleSource,
    floor: Floor,
) -> lowbit_quant::error::Result<Validation> {
    let names: Vec<String> = fp32.output_names().into_iter().map(String::from).collect();
    let mut accs: Vec<Acc> = names.iter().map(|_| Acc::default()).collect();
    let mut rows = 0usize;
    let mut int_mismatch: Vec<String> = Vec::new();
    samples.replay(&mut |feeds: Feeds| {
        rows += feeds.first().map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(1));
        let a = fp32.run(feeds.clone())?;
        let b = quant.run(feeds)?;
        for (k, name) in names.iter().enumerate() {
            let (Some(x), Some(y)) = (find(&a, name), find(&b, name)) else { continue };
            if x.dtype() != DType::F32 || y.dtype() != DType::F32 {
                if x != y && !int_mismatch.contains(name) {
                    int_mismatch.push(name.clone());
                }
                continue;
            }
            let (xv, yv) = (x.as_f32()?, y.as_f32()?);
            let acc = &mut accs[k];
            acc.noise.add(xv, yv);
            if x.rank() == 2 && x.shape()[1] >= 2 && x.shape() == y.shape() {
                acc.class_scores = true;
                let c = x.shape()[1];
                for (rx, ry) in xv.chunks(c).zip(yv.chunks(c)) {
                    acc.agree += usize::from(argmax(rx) == argmax(ry));
                    acc.rows += 1;
                }
            }
        }
        Ok(())
    })?;
    let mut outputs = Vec::new();
    let mut failures: Vec<String> =
        int_mismatch.iter().map(|n| format!("integer output '{n}' differs")).collect();
    for (name, acc) in names.iter().zip(accs) {
        let Some(noise) = acc.noise.noise() else { continue };
        let top1 = (acc.class_scores && acc.rows > 0).then(|| acc.agree as f64 / acc.rows as f64);
        if noise.sqnr_db < floor.min_sqnr_db {
            failures.push(format!(
                "output '{name}': SQNR {:.1} dB < {} dB",
                noise.sqnr_db, floor.min_sqnr_db
            ));
        }
        if let (Some(a), Some(min)) = (top1, floor.min_top1_agreement) {
            if a < min {
                failures.push(format!(
                    "output '{name}': top-1 agreement {:.1} % < {:.0} %",
                    a * 100.0,
                    min * 100.0
                ));
            }
        }
        outputs.push(OutputAgreement { name: name.clone(), noise, top1_agreement: top1 });
    }
    Ok(Validation { samples: rows, floor, outputs, failures, worst_layers: Vec::new() })
}

/// Batches the per-layer comparison of a failing model runs on.
const CULPRIT_BATCHES: usize = 4;

/// [`validate`] on the two models as deployment runs them (load-time fusion on, `threads`
/// workers); when the quantized model fails, a per-layer comparison on the first few batches
/// names the layers that lose most ([`Validation::worst_layers`]).
pub fn validate_models(
    fp32: &ModelProto,
    quant: &ModelProto,
    samples: &mut dyn SampleSource,
    floor: Floor,
    threads: usize,
) -> lowbit_quant::error::Result<Validation> {
    let opts = SessionOptions::with_threads(threads);
    let mut v =
        validate(&Session::new(fp32, &opts)?, &Session::new(quant, &opts)?, samples, floor)?;
    if v.passed() {
        return Ok(v);
    }
    let mut few = Vec::new();
    samples.replay(&mut |f| {
        if few.len() < CULPRIT_BATCHES {
            few.push(f);
        }
        Ok(())
    })?;
    let copts =
        CompareOptions { threads, fp32_model: "FP32".into(), quant_model: "quantized".into() };
    // The comparison refuses some models (no matched tensor); the failure stands without it.
    if let Ok(r) = compare_models(fp32, quant, few, &copts) {
        v.worst_layers = r.ranking.into_iter().take(5).collect();
    }
    Ok(v)
}

fn find<'a>(outs: &'a [(String, Tensor)], name: &str) -> Option<&'a Tensor> {
    outs.iter().find(|(n, _)| n == name).map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_engine::SessionOptions;
    use lowbit_onnx::build::{self, Dim::Fixed, Dim::Named};
    use lowbit_onnx::pb::GraphProto;
    use lowbit_onnx::tensor_proto::tensor_to_proto;

    /// `y = x · W` with `x: [N, 4]`, `W: [4, 10]`.
    fn matmul(w: Vec<f32>) -> Session {
        let graph = GraphProto {
            node: vec![build::node("MatMul", "mm", &["x", "w"], &["y"])],
            initializer: vec![tensor_to_proto("w", &Tensor::from_vec(vec![4, 10], w).unwrap())],
            input: vec![build::tensor_value_info("x", DType::F32, &[Named("N"), Fixed(4)])],
            output: vec![build::tensor_value_info("y", DType::F32, &[Named("N"), Fixed(10)])],
            ..Default::default()
        };
        Session::new(&build::model(graph, 17), &SessionOptions::with_threads(1)).unwrap()
    }

    fn weights(seed: u32) -> Vec<f32> {
        (0..40).map(|i| (((i * 7 + seed) % 13) as f32 - 6.0) / 6.0).collect()
    }

    fn batches() -> Vec<Feeds> {
        (0..3)
            .map(|b| {
                let x: Vec<f32> =
                    (0..32).map(|i| ((i * 5 + b * 3) % 11) as f32 / 5.0 - 1.0).collect();
                vec![("x".to_string(), Tensor::from_vec(vec![8, 4], x).unwrap())]
            })
            .collect()
    }

    #[test]
    fn an_identical_model_passes_and_counts_rows() {
        let (a, b) = (matmul(weights(0)), matmul(weights(0)));
        let v = validate(&a, &b, &mut batches(), Floor::default()).unwrap();
        assert!(v.passed(), "{:?}", v.failures);
        assert_eq!(v.samples, 24);
        assert_eq!(v.outputs[0].top1_agreement, Some(1.0));
        assert!(v.outputs[0].noise.sqnr_db.is_infinite());
        assert!(v.lines()[0].contains("SQNR exact"), "{:?}", v.lines());
    }

    #[test]
    fn a_model_that_lost_its_outputs_fails_naming_the_output() {
        let (a, b) = (matmul(weights(0)), matmul(weights(5)));
        let floor = Floor { min_top1_agreement: Some(0.99), ..Floor::default() };
        let v = validate(&a, &b, &mut batches(), floor).unwrap();
        assert!(!v.passed());
        assert!(v.failures.iter().any(|f| f.contains("output 'y': SQNR")), "{:?}", v.failures);
        assert!(v.failures.iter().any(|f| f.contains("top-1 agreement")), "{:?}", v.failures);
        assert!(v.outputs[0].noise.sqnr_db < Floor::DEFAULT_SQNR_DB);
    }
}
