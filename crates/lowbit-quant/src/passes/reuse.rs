//! Reusing one QDQ model's quantized weights in another made from the same FP32 model: a
//! learned rounding (AdaRound's codes and fitted scales, with the int32 bias recoded for them)
//! is learned once and copied into every configuration that keeps the layer at the same
//! precision, instead of being learned again for each (what `lowbit tune` does with its int4
//! candidates).

use crate::error::{QuantError, Result};
use lowbit_onnx::pb::{ModelProto, NodeProto, TensorProto};
use std::collections::HashMap;

/// The initializers of one `DequantizeLinear` (codes, scale, zero point; `None` where an input
/// is absent or not an initializer).
type DqInits = Vec<Option<TensorProto>>;

/// One layer's quantized weight (input 1) and bias (input 2), and the scale of its quantized
/// input, which the int32 bias depends on.
#[derive(Clone, Debug)]
struct Layer {
    weight: DqInits,
    bias: Option<DqInits>,
    input_scale: Option<TensorProto>,
}

/// The quantized weights of a static QDQ model's `Conv`/`Gemm`/`MatMul` nodes, keyed by the
/// node's first output (which the static pass never renames, whatever the other nodes'
/// precision).
#[derive(Clone, Debug, Default)]
pub struct QuantizedWeights {
    layers: HashMap<String, Layer>,
}

/// What [`QuantizedWeights::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reused {
    /// Layers whose weights (and bias) were copied.
    pub layers: usize,
    /// Layers found in both models but left alone: their weight has another type or shape
    /// there (another precision), or their input another scale (so the int32 bias would not
    /// fit).
    pub skipped: usize,
}

fn inits_of(model: &ModelProto) -> HashMap<&str, &TensorProto> {
    let g = model.graph.as_ref();
    g.map(|g| g.initializer.iter().map(|t| (t.name.as_str(), t)).collect()).unwrap_or_default()
}

/// The `DequantizeLinear` producing `value`, if any.
fn dq_of<'a>(producers: &HashMap<&str, &'a NodeProto>, value: &str) -> Option<&'a NodeProto> {
    producers.get(value).copied().filter(|n| n.op_type == "DequantizeLinear")
}

fn producers(model: &ModelProto) -> HashMap<&str, &NodeProto> {
    let mut m = HashMap::new();
    if let Some(g) = &model.graph {
        for n in &g.node {
            for o in &n.output {
                m.insert(o.as_str(), n);
            }
        }
    }
    m
}

fn weighted(n: &NodeProto) -> bool {
    (n.domain.is_empty() || n.domain == "ai.onnx")
        && matches!(n.op_type.as_str(), "Conv" | "Gemm" | "MatMul")
        && !n.output.is_empty()
}

impl QuantizedWeights {
    /// The quantized weights of every `Conv`/`Gemm`/`MatMul` of `model` whose weight comes
    /// from a `DequantizeLinear` of initializers.
    pub fn of(model: &ModelProto) -> QuantizedWeights {
        let inits = inits_of(model);
        let prod = producers(model);
        let dq_inits = |dq: &NodeProto| -> DqInits {
            dq.input.iter().map(|i| inits.get(i.as_str()).map(|t| (*t).clone())).collect()
        };
        let mut layers = HashMap::new();
        for n in model.graph.iter().flat_map(|g| &g.node).filter(|n| weighted(n)) {
            let Some(wdq) = n.input.get(1).and_then(|w| dq_of(&prod, w)) else { continue };
            let weight = dq_inits(wdq);
            if weight.first().and_then(|c| c.as_ref()).is_none() {
                continue;
            }
            let bias = n.input.get(2).and_then(|b| dq_of(&prod, b)).map(dq_inits);
            let input_scale = n
                .input
                .first()
                .and_then(|x| dq_of(&prod, x))
                .and_then(|d| d.input.get(1))
                .and_then(|s| inits.get(s.as_str()).map(|t| (*t).clone()));
            layers.insert(n.output[0].clone(), Layer { weight, bias, input_scale });
        }
        QuantizedWeights { layers }
    }

    /// Layers held.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Copies the held weights into `model` (a QDQ model of the same FP32 model) for every
    /// layer whose weight there has the same element type and shape (the same precision) and
    /// whose quantized input has the same scale; the initializers keep `model`'s names. Other
    /// layers are left as they are.
    pub fn apply(&self, model: &mut ModelProto) -> Result<Reused> {
        // Planned first (names to replace), then written, so the graph is read once.
        let mut writes: Vec<(String, TensorProto)> = Vec::new();
        let mut done = Reused::default();
        {
            let inits = inits_of(model);
            let prod = producers(model);
            let same = |name: &str, want: &TensorProto| {
                inits
                    .get(name)
                    .is_some_and(|t| t.data_type == want.data_type && t.dims == want.dims)
            };
            for n in model.graph.iter().flat_map(|g| &g.node).filter(|n| weighted(n)) {
                let Some(layer) = self.layers.get(&n.output[0]) else { continue };
                let Some(wdq) = n.input.get(1).and_then(|w| dq_of(&prod, w)) else {
                    continue;
                };
                let bdq = n.input.get(2).and_then(|b| dq_of(&prod, b));
                let in_scale = n
                    .input
                    .first()
                    .and_then(|x| dq_of(&prod, x))
                    .and_then(|d| d.input.get(1))
                    .and_then(|s| inits.get(s.as_str()));
                // Every initializer the layer reads must line up, else none is copied.
                let mut plan: Vec<(String, TensorProto)> = Vec::new();
                let mut fits = in_scale.map(|t| (t.data_type, &t.dims, &t.float_data, &t.raw_data))
                    == layer
                        .input_scale
                        .as_ref()
                        .map(|t| (t.data_type, &t.dims, &t.float_data, &t.raw_data));
                let mut pair = |dq: &NodeProto, held: &DqInits| {
                    for (k, name) in dq.input.iter().enumerate() {
                        match (
                            held.get(k).and_then(|t| t.as_ref()),
                            inits.contains_key(name.as_str()),
                        ) {
                            (Some(t), true) if same(name, t) => plan.push((
                                name.clone(),
                                TensorProto { name: name.clone(), ..t.clone() },
                            )),
                            (None, false) => {}
                            _ => fits = false,
                        }
                    }
                };
                pair(wdq, &layer.weight);
                match (bdq, &layer.bias) {
                    (Some(d), Some(b)) => pair(d, b),
                    (None, None) => {}
                    _ => fits = false,
                }
                if fits {
                    done.layers += 1;
                    writes.extend(plan);
                } else {
                    done.skipped += 1;
                }
            }
        }
        let g = model
            .graph
            .as_mut()
            .ok_or_else(|| QuantError::Config("the model has no graph".into()))?;
        let index: HashMap<String, usize> =
            g.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        for (name, t) in writes {
            g.initializer[index[&name]] = t;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::test_graphs::{int, run, uniform, Builder};
    use crate::config::{AdaRoundOptions, Algorithms, Precision};
    use crate::quantize::{quantize_run, QuantPlan, QuantizeConfig, QuantizeInputs};
    use lowbit_tensor::Tensor;

    /// The initializers `node`'s weight (`slot` 1) or bias (2) `DequantizeLinear` reads.
    fn dq_inits(q: &ModelProto, node: &str, slot: usize) -> Vec<TensorProto> {
        let g = q.graph.as_ref().unwrap();
        let n = g.node.iter().find(|n| n.name == node).unwrap();
        let dq = g.node.iter().find(|d| d.output[0] == n.input[slot]).unwrap();
        dq.input
            .iter()
            .filter_map(|i| g.initializer.iter().find(|t| &t.name == i).cloned())
            .collect()
    }

    /// x [4, 8] -> Gemm (bias) -> Relu -> MatMul -> Relu -> MatMul, and its node names.
    fn three_layers() -> (ModelProto, [&'static str; 3]) {
        let mut b = Builder::default();
        let w = b.f32("w0", &[8, 8], uniform(1, 64, -1.0, 1.0));
        let bias = b.f32("b0", &[8], uniform(2, 8, -0.5, 0.5));
        let g = b.op("Gemm", &["x", &w, &bias], vec![int("transB", 1)]);
        let mut cur = b.op("Relu", &[&g], vec![]);
        for i in 1..3u64 {
            let w = b.f32(&format!("w{i}"), &[8, 8], uniform(i + 3, 64, -1.0, 1.0));
            let m = b.op("MatMul", &[&cur, &w], vec![]);
            cur = if i == 1 { b.op("Relu", &[&m], vec![]) } else { m };
        }
        (b.model(&[4, 8], &[&cur]), ["gemm1", "matmul3", "matmul5"])
    }

    /// `model` with per-node precisions `p`; AdaRound on when `ada` is `Some(fp32_inputs)`.
    fn quantize(model: &ModelProto, p: [Precision; 3], ada: Option<bool>) -> ModelProto {
        let names = three_layers().1;
        let cfg = QuantizeConfig {
            node_precision: names.iter().map(|n| n.to_string()).zip(p).collect(),
            algorithms: Algorithms {
                adaround: ada.map(|fp32_inputs| AdaRoundOptions {
                    iterations: 50,
                    fp32_inputs,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut s: Vec<_> = (0..4u64)
            .map(|i| {
                let x = Tensor::from_vec(vec![4, 8], uniform(90 + i, 32, -1.0, 1.0)).unwrap();
                vec![("x".to_string(), x)]
            })
            .collect();
        let inputs = QuantizeInputs { samples: Some(&mut s), ..QuantizeInputs::table(None) };
        quantize_run(model.clone(), &QuantPlan::resolve(&cfg).unwrap(), inputs).unwrap().0
    }

    #[test]
    fn adaround_on_fp32_inputs_learns_a_layer_the_same_whatever_the_layers_before_it() {
        let (model, _) = three_layers();
        use Precision::{Int4, Int8};
        // matmul5's learned weights with the layers before it at int4 or at int8.
        let last = |p, fp32_inputs| dq_inits(&quantize(&model, p, Some(fp32_inputs)), "matmul5", 1);
        let (after_int4, after_int8) = ([Int4, Int4, Int4], [Int8, Int8, Int4]);
        // Fitted on FP32 inputs: the same codes and scales, so one learned copy fits every mix.
        assert_eq!(last(after_int4, true), last(after_int8, true));
        // Fitted on the quantized model's inputs, it absorbs the earlier layers' error, which
        // differs with their precision.
        assert_ne!(last(after_int4, false), last(after_int8, false));
    }

    #[test]
    fn learned_int4_weights_are_copied_into_the_layers_that_are_int4_elsewhere() {
        let (model, names) = three_layers();
        let quantize = |p, ada: bool| quantize(&model, p, ada.then_some(false));
        use Precision::{Int4, Int8};
        let learned = quantize([Int4; 3], true);
        let plain = quantize([Int4; 3], false);
        // AdaRound changed the int4 weights (codes or fitted scales), so copying them matters.
        assert!(names.iter().any(|n| dq_inits(&learned, n, 1) != dq_inits(&plain, n, 1)));

        let weights = QuantizedWeights::of(&learned);
        assert_eq!(weights.len(), 3);
        let mut mixed = quantize([Int4, Int8, Int4], false);
        let before = mixed.clone();
        let done = weights.apply(&mut mixed).unwrap();
        // The int8 layer's codes have another type: left alone.
        assert_eq!(done, Reused { layers: 2, skipped: 1 });
        for (n, slot) in [("gemm1", 1), ("gemm1", 2), ("matmul5", 1)] {
            let (got, want) = (dq_inits(&mixed, n, slot), dq_inits(&learned, n, slot));
            assert_eq!(got.len(), want.len(), "{n}");
            for (g, w) in got.iter().zip(&want) {
                // The values are the learned model's; the names stay the mixed model's.
                assert_eq!(
                    (&g.raw_data, &g.int32_data, &g.float_data, &g.dims),
                    (&w.raw_data, &w.int32_data, &w.float_data, &w.dims),
                    "{n} {}",
                    g.name
                );
            }
        }
        assert_eq!(dq_inits(&mixed, "matmul3", 1), dq_inits(&before, "matmul3", 1));
        // The copied model runs, and its int4 layers compute what the learned model's do: with
        // every layer int4 the result is the learned model itself.
        let x = uniform(7, 32, -1.0, 1.0);
        assert!(run(&mixed, &[4, 8], &x).iter().all(|v| v.is_finite()));
        let mut all = plain.clone();
        assert_eq!(weights.apply(&mut all).unwrap(), Reused { layers: 3, skipped: 0 });
        assert_eq!(run(&all, &[4, 8], &x), run(&learned, &[4, 8], &x));
    }
}
