//! [`compare_models`]: both models run over the samples, each tensor's noise accumulated as
//! it appears, then the report assembled.

use super::error::{CompareError, Result};
use super::matching::{activation_plans, bn_folded, weight_plans};
use super::measure::{f32_values, ActStats};
use super::model::{ActivationNoise, CompareReport, TensorNoise, FORMAT};
use super::ranking::rank;
use super::view::View;
use crate::metrics::NoiseAccumulator;
use lowbit_engine::{InputSpec, Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use lowbit_tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// How [`compare_models`] runs.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// Engine worker threads for both models (0: one per core). The report does not depend on
    /// it.
    pub threads: usize,
    /// Written to the report's `fp32_model` and `quant_model` (typically the file paths).
    pub fp32_model: String,
    pub quant_model: String,
}

/// Per-layer quantization noise of `quant` (a QDQ model) against `fp32` (the model it was made
/// from) over `samples` (one feed list per run, the same for both models; a run may hold a
/// batch of samples along axis 0, counted as [`CompareReport::samples`] says). Streaming: one
/// run's activations are held at a time. The FP32 model comes first: a quantized first model
/// with an unquantized second is refused as [`CompareError::Swapped`]. See the [module docs](super) for how tensors are
/// matched and measured.
pub fn compare_models(
    fp32: &ModelProto,
    quant: &ModelProto,
    samples: impl IntoIterator<Item = Vec<(String, Tensor)>>,
    opts: &CompareOptions,
) -> Result<CompareReport> {
    let q = View::new(quant, "quantized")?;
    let folded = bn_folded(fp32);
    let mut refs = vec![View::new(fp32, "FP32")?];
    if let Some(m) = &folded {
        refs.push(View::new(m, "FP32 (BatchNormalization folded)")?);
    }
    let f = &refs[0];
    let (fp32_qnodes, quant_qnodes) = (f.quantization_nodes(), q.quantization_nodes());
    if fp32_qnodes > 0 && quant_qnodes == 0 {
        return Err(CompareError::Swapped {
            first: opts.fp32_model.clone(),
            second: opts.quant_model.clone(),
            nodes: fp32_qnodes,
        });
    }

    let acts = activation_plans(&q, f)?;
    let weights = weight_plans(&q, &refs)?;
    if acts.is_empty() && weights.is_empty() {
        return Err(CompareError::NoQuantizedTensor);
    }
    let out_names: Vec<String> = q.graph.output.iter().map(|o| o.name.clone()).collect();
    for o in &out_names {
        if !f.is_runtime_value(o) && !f.is_constant(o) {
            return Err(CompareError::MissingInFp32 {
                tensor: o.clone(),
                node: "graph output".into(),
            });
        }
    }

    // Unfused: the quantized model's intermediate float values are what is compared.
    let so = SessionOptions::unfused(opts.threads);
    let s32 =
        Session::new(fp32, &so).map_err(|e| CompareError::Engine { model: f.what, source: e })?;
    let sq =
        Session::new(quant, &so).map_err(|e| CompareError::Engine { model: q.what, source: e })?;

    let mut by_tensor: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_dq: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, p) in acts.iter().enumerate() {
        by_tensor.entry(p.tensor.as_str()).or_default().push(k);
        by_dq.entry(p.dq_out.as_str()).or_default().push(k);
    }
    let keep: HashSet<&str> =
        by_tensor.keys().copied().chain(out_names.iter().map(String::as_str)).collect();
    let mut stats: Vec<ActStats> = acts.iter().map(|_| ActStats::new()).collect();
    let mut outputs: Vec<NoiseAccumulator> =
        out_names.iter().map(|_| NoiseAccumulator::new()).collect();
    let fp32_inputs = s32.inputs();
    let (mut runs, mut rows) = (0usize, 0usize);

    for feeds in samples {
        runs += 1;
        rows += samples_in(&fp32_inputs, &feeds);
        // FP32: isolated noise as each tensor appears; keep this sample's values for the
        // quantized run.
        let mut fp32_values: HashMap<String, Vec<f32>> = HashMap::new();
        let mut failure: Option<CompareError> = None;
        {
            let mut observe = |name: &str, t: &Tensor| {
                if failure.is_some() || !keep.contains(name) || fp32_values.contains_key(name) {
                    return;
                }
                let x = match f32_values(t, name) {
                    Ok(x) => x,
                    Err(e) => return failure = Some(e),
                };
                for &k in by_tensor.get(name).into_iter().flatten() {
                    if let Err(e) = acts[k].observe_fp32(&mut stats[k], &x) {
                        return failure = Some(e);
                    }
                }
                fp32_values.insert(name.to_string(), x);
            };
            s32.run_observed(feeds.clone(), &mut observe)
                .map_err(|e| CompareError::Engine { model: f.what, source: e })?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        // Quantized: accumulated noise of each dequantized copy.
        let outs = {
            let mut observe = |name: &str, t: &Tensor| {
                if failure.is_some() {
                    return;
                }
                let Some(ks) = by_dq.get(name) else { return };
                let y = match f32_values(t, name) {
                    Ok(y) => y,
                    Err(e) => return failure = Some(e),
                };
                for &k in ks {
                    let p = &acts[k];
                    let Some(x) = fp32_values.get(&p.tensor) else {
                        return failure = Some(CompareError::Tensor {
                            tensor: p.tensor.clone(),
                            msg: "the FP32 model did not produce it".into(),
                        });
                    };
                    if x.len() != y.len() {
                        return failure = Some(CompareError::Tensor {
                            tensor: p.tensor.clone(),
                            msg: format!(
                                "{} values in the FP32 model, {} in its dequantized copy '{}'",
                                x.len(),
                                y.len(),
                                p.dq_out
                            ),
                        });
                    }
                    p.observe_quant(&mut stats[k], x, &y);
                }
            };
            sq.run_observed(feeds, &mut observe)
                .map_err(|e| CompareError::Engine { model: q.what, source: e })?
        };
        if let Some(e) = failure {
            return Err(e);
        }
        for (acc, name) in outputs.iter_mut().zip(&out_names) {
            let y = outs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
            let (Some(y), Some(x)) = (y, fp32_values.get(name)) else {
                return Err(CompareError::Tensor {
                    tensor: name.clone(),
                    msg: "graph output not produced by both models".into(),
                });
            };
            let y = f32_values(y, name)?;
            if x.len() != y.len() {
                return Err(CompareError::Tensor {
                    tensor: name.clone(),
                    msg: format!(
                        "{} values in the FP32 model, {} in the quantized one",
                        x.len(),
                        y.len()
                    ),
                });
            }
            acc.add(x, &y);
        }
    }
    if runs == 0 {
        return Err(CompareError::NoSamples);
    }

    let mut activations: Vec<ActivationNoise> =
        acts.iter().zip(&stats).map(|(p, st)| p.report(st)).collect::<Result<_>>()?;
    let ranking = rank(&q, f, &acts, &stats, &weights);

    activations.sort_by(|a, b| (a.order, &a.tensor).cmp(&(b.order, &b.tensor)));
    let outputs = outputs
        .iter()
        .zip(out_names)
        // An output with no elements (e.g. zero detections) has no noise to report.
        .filter_map(|(acc, name)| acc.noise().map(|noise| TensorNoise { noise, name }))
        .collect();
    Ok(CompareReport {
        format: FORMAT.into(),
        fp32_model: opts.fp32_model.clone(),
        quant_model: opts.quant_model.clone(),
        samples: rows,
        runs,
        outputs,
        activations,
        weights: weights.into_iter().map(|w| w.report).collect(),
        ranking,
        quantization: lowbit_quant::quantize::recorded_summary(quant),
    })
}

/// Samples in one run's feeds, by lowbit's batching convention (as `--data` feeds them):
/// samples lie along axis 0 of every input the FP32 model declares with a shape of the fed
/// rank (at least 1); an input without a declared shape is fed whole, one sample.
fn samples_in(inputs: &[&InputSpec], feeds: &[(String, Tensor)]) -> usize {
    feeds
        .iter()
        .find_map(|(name, t)| {
            let dims = inputs.iter().find(|s| s.name == *name)?.dims.as_ref()?;
            (!dims.is_empty() && dims.len() == t.rank()).then(|| t.shape()[0])
        })
        .unwrap_or(1)
}
