//! Matching the quantized model's tensors with the FP32 model's: every quantized activation (a
//! `QuantizeLinear` of a run-time value, its `DequantizeLinear` counterpart and parameters) and
//! every quantized weight (a `DequantizeLinear` of a constant, with its FP32 initializer as the
//! reference), as the [module docs](super) describe.

use super::error::{CompareError, Result};
use super::measure::{channel_ranges, f32_values, worst_channel_sqnr, Clamp};
use super::model::WeightNoise;
use super::view::{is_default_domain, label, View};
use crate::metrics::Noise;
use lowbit_kernels::quantize::{self as core, ParamMap};
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::{ModelProto, NodeProto};
use lowbit_tensor::{DType, Tensor, TensorData};

/// A quantized activation as the quantized model defines it.
pub(super) struct ActPlan {
    pub(super) tensor: String,
    pub(super) dq_out: String,
    pub(super) scale: f32,
    pub(super) zero_point: Option<TensorData>,
    pub(super) zp_report: i32,
    pub(super) dtype: DType,
    pub(super) saturate: bool,
    /// The representable range, and how far beyond it a value still rounds onto the end code
    /// (half a step for integer types).
    pub(super) lo: f32,
    pub(super) hi: f32,
    pub(super) margin: f32,
    pub(super) clamp: Option<Clamp>,
    pub(super) producer: String,
    pub(super) producer_op: String,
    pub(super) order: usize,
}

/// A quantized weight, its reference and what the ranking needs to know of it.
pub(super) struct WeightPlan {
    pub(super) report: WeightNoise,
    /// SQNR (dB) of the worst output channel: the weight's score in the ranking.
    pub(super) worst_channel_db: f64,
    pub(super) dq_out: String,
    pub(super) depthwise: bool,
    pub(super) dtype: DType,
}

impl WeightPlan {
    pub(super) fn per_tensor(&self) -> bool {
        self.report.axis.is_none()
    }
}

fn qnode_err(n: &NodeProto, idx: usize, msg: impl Into<String>) -> CompareError {
    CompareError::QuantNode { node: label(n, idx), op_type: n.op_type.clone(), msg: msg.into() }
}

/// The axis along which a weight in input `slot` of an `op` node has its per-channel ranges
/// reported: its output-channel axis (the core's), else its quantization axis, else 0.
fn channel_axis(
    op: &str,
    slot: usize,
    trans_b: bool,
    rank: usize,
    quant_axis: Option<usize>,
) -> usize {
    let by_op = if slot == 1 { core::weight_channel_axis(op, trans_b, rank) } else { None };
    by_op.or(quant_axis).unwrap_or(0).min(rank.saturating_sub(1))
}

/// The clamp of a Relu or Clip node, when its bounds are constants.
fn clamp_of(v: &View, idx: usize) -> Option<Clamp> {
    let n = v.node(idx);
    if !is_default_domain(n) {
        return None;
    }
    match n.op_type.as_str() {
        "Relu" => Some(Clamp { lo: 0.0, hi: f32::INFINITY }),
        "Clip" if v.opset < 11 => {
            let a = Attrs::new(n);
            let lo = a.float("min").ok()?.unwrap_or(f32::NEG_INFINITY);
            let hi = a.float("max").ok()?.unwrap_or(f32::INFINITY);
            Some(Clamp { lo, hi })
        }
        "Clip" => {
            let bound = |k: usize, default: f32| -> Option<f32> {
                match n.input.get(k).filter(|s| !s.is_empty()) {
                    None => Some(default),
                    Some(s) => v.constant(s).ok()??.to_f32_vec().ok()?.first().copied(),
                }
            };
            Some(Clamp { lo: bound(1, f32::NEG_INFINITY)?, hi: bound(2, f32::INFINITY)? })
        }
        _ => None,
    }
}

/// Every quantized activation of `q` (in `q`'s topological order).
pub(super) fn activation_plans(q: &View, f: &View) -> Result<Vec<ActPlan>> {
    let mut plans = Vec::new();
    for &i in &q.order {
        let n = q.node(i);
        if n.op_type != "QuantizeLinear" || !is_default_domain(n) {
            continue;
        }
        let x = n.input.first().map(String::as_str).unwrap_or("");
        if x.is_empty() || q.is_constant(x) {
            continue;
        }
        let qout = n.output.first().map(String::as_str).unwrap_or("");
        let dq = q.consumers.get(qout).into_iter().flatten().copied().find(|&c| {
            let m = q.node(c);
            m.op_type == "DequantizeLinear" && m.input.first().map(String::as_str) == Some(qout)
        });
        let Some(dq) = dq else {
            return Err(qnode_err(
                n,
                i,
                format!("its output '{qout}' is not read by a DequantizeLinear (only QDQ models are compared)"),
            ));
        };
        let dq_out = q.node(dq).output.first().cloned().unwrap_or_default();
        // ONNX Runtime quantizes a graph output `Y` by renaming its producer's output
        // (`Y_QuantizeLinear_Input`) and giving `Y` to the DequantizeLinear.
        let x: String = if f.is_runtime_value(x) {
            x.to_string()
        } else if f.is_runtime_value(&dq_out) {
            dq_out.clone()
        } else {
            return Err(CompareError::MissingInFp32 {
                tensor: x.to_string(),
                node: format!("input of QuantizeLinear '{}'", label(n, i)),
            });
        };
        let param = |k: usize| -> Result<Option<Tensor>> {
            match n.input.get(k).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => match q.constant(s).map_err(|m| qnode_err(n, i, m))? {
                    Some(t) => Ok(Some(t)),
                    None => Err(qnode_err(n, i, format!("input '{s}' is not a constant"))),
                },
            }
        };
        let scale = param(1)?.ok_or_else(|| qnode_err(n, i, "no scale"))?;
        let zp = param(2)?;
        let a = Attrs::new(n);
        let attr_err = |e: lowbit_onnx::attr::AttrError| qnode_err(n, i, e.msg);
        if a.int_or("block_size", 0).map_err(attr_err)? > 0 || scale.len() != 1 {
            return Err(qnode_err(
                n,
                i,
                format!(
                    "activation '{x}' is quantized per axis or in blocks (scale shape {:?}); only \
                     per-tensor activations are compared",
                    scale.shape()
                ),
            ));
        }
        let out_dtype =
            match a.int("output_dtype").map_err(attr_err)? {
                None | Some(0) => None,
                Some(id) => Some(DType::from_onnx(id as i32).ok_or_else(|| {
                    qnode_err(n, i, format!("output_dtype {id} is not supported"))
                })?),
            };
        let dtype = out_dtype.or(zp.as_ref().map(|z| z.dtype())).unwrap_or(DType::U8);
        let saturate = a.int_or("saturate", 1).map_err(attr_err)? != 0;
        let s = scale.to_f32_vec().map_err(|e| qnode_err(n, i, e.to_string()))?[0];
        let zero_point = zp.map(|z| z.into_data());
        let zp_report = zero_point
            .as_ref()
            .and_then(core::int_values)
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        let (lo, hi) = core::representable_range(dtype, s, zero_point.as_ref())
            .map_err(|e| qnode_err(n, i, e.0))?;
        let readers: Vec<usize> = q.consumers.get(dq_out.as_str()).cloned().unwrap_or_default();
        let clamp = if readers.len() == 1 && !q.graph.output.iter().any(|o| o.name == dq_out) {
            clamp_of(q, readers[0])
        } else {
            None
        };
        let (producer, producer_op) = match f.producer.get(x.as_str()) {
            Some(&p) => (label(f.node(p), p), f.node(p).op_type.clone()),
            None => (String::new(), String::new()),
        };
        let order = f.value_order(&x);
        plans.push(ActPlan {
            tensor: x,
            dq_out,
            scale: s,
            zero_point,
            zp_report,
            dtype,
            saturate,
            lo,
            hi,
            margin: if core::int_range(dtype).is_some() { 0.5 * s.abs() } else { 0.0 },
            clamp,
            producer,
            producer_op,
            order,
        });
    }
    Ok(plans)
}

/// Every quantized weight of `q` with its FP32 reference, looked up in `refs` (the FP32 model,
/// then the FP32 model with BatchNormalization folded, when it has any).
pub(super) fn weight_plans(q: &View, refs: &[View]) -> Result<Vec<WeightPlan>> {
    let mut plans = Vec::new();
    for &i in &q.order {
        let n = q.node(i);
        if n.op_type != "DequantizeLinear" || !is_default_domain(n) {
            continue;
        }
        let w = n.input.first().map(String::as_str).unwrap_or("");
        if w.is_empty() || !q.is_constant(w) {
            continue;
        }
        let out = n.output.first().cloned().unwrap_or_default();
        // The node that reads the dequantized weight, and in which slot.
        let Some((c, slot)) = q
            .consumers
            .get(out.as_str())
            .into_iter()
            .flatten()
            .find_map(|&c| q.node(c).input.iter().position(|s| *s == out).map(|k| (c, k)))
        else {
            continue;
        };
        let cn = q.node(c);
        let get = |s: &str| -> Result<Tensor> {
            q.constant(s)
                .map_err(|m| qnode_err(n, i, m))?
                .ok_or_else(|| qnode_err(n, i, format!("input '{s}' is not a constant")))
        };
        let qt = get(w)?;
        let scale_name = n.input.get(1).map(String::as_str).unwrap_or("");
        if scale_name.is_empty() {
            return Err(qnode_err(n, i, "no scale"));
        }
        let scale = get(scale_name)?;
        let zp = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(s) => Some(get(s)?),
            None => None,
        };
        let a = Attrs::new(n);
        let attr_err = |e: lowbit_onnx::attr::AttrError| qnode_err(n, i, e.msg);
        let axis = if q.opset >= 13 { a.int_or("axis", 1).map_err(attr_err)? } else { 1 };
        let block = a.int_or("block_size", 0).map_err(attr_err)?;
        let map = ParamMap::for_qdq(qt.shape(), scale.shape(), axis, block)
            .map_err(|e| qnode_err(n, i, e.0))?;
        let sv = scale.to_f32_vec().map_err(|e| qnode_err(n, i, e.to_string()))?;
        let dq = core::dequantize(qt.data(), &sv, zp.as_ref().map(|z| z.data()), &map)
            .map_err(|e| qnode_err(n, i, e.0))?;

        // The FP32 reference: the matching node's input in the same slot, in the FP32 model
        // or in its BatchNormalization-folded copy, whichever is closer to the dequantized
        // weight (quantization error is far smaller than a BatchNormalization scale; other
        // tools fold and rename differently, so names alone cannot tell).
        let weight_err = |msg: String| CompareError::Weight {
            weight: w.to_string(),
            node: label(cn, c),
            slot,
            msg,
        };
        let mut found: Option<(usize, usize, String, Tensor, Vec<f32>, Noise)> = None;
        let mut mismatch: Option<String> = None;
        for (ri, r) in refs.iter().enumerate() {
            let Some(j) = r.matching_node(q, c) else { continue };
            let Some(name) = r.node(j).input.get(slot).filter(|s| !s.is_empty()) else {
                continue;
            };
            let Some(rt) = r.constant(name).map_err(weight_err)? else { continue };
            let rv = f32_values(&rt, name)?;
            if rv.len() != dq.len() {
                mismatch = Some(format!(
                    "FP32 '{name}' has shape {:?}, the quantized weight {:?}",
                    rt.shape(),
                    qt.shape()
                ));
                continue;
            }
            let noise = crate::metrics::noise(&rv, &dq).unwrap_or(Noise {
                sqnr_db: f64::INFINITY,
                mse: 0.0,
                cosine: 1.0,
                max_abs: 0.0,
                count: 0,
            });
            if found.as_ref().is_none_or(|f| noise.sqnr_db > f.5.sqnr_db) {
                found = Some((ri, j, name.clone(), rt, rv, noise));
            }
        }
        let Some((ri, j, ref_name, rt, rv, noise)) = found else {
            return Err(weight_err(mismatch.unwrap_or_else(|| {
                format!("no FP32 initializer in input {slot} of a matching {} node", cn.op_type)
            })));
        };
        let r = &refs[ri];
        // Name the weight as the FP32 file does (the folded copy only exists here).
        let rn = r.node(j);
        let (node_name, weight_name) = match refs[0].matching_node(q, c) {
            Some(k) if ri > 0 => {
                let n0 = refs[0].node(k);
                (label(n0, k), n0.input.get(slot).cloned().unwrap_or(ref_name.clone()))
            }
            _ => (label(rn, j), ref_name.clone()),
        };
        let ca = Attrs::new(cn);
        let group = if cn.op_type == "Conv" { ca.int_or("group", 1).unwrap_or(1) } else { 1 };
        let trans_b = ca.int_or("transB", 0).unwrap_or(0) != 0;
        let axis = channel_axis(&cn.op_type, slot, trans_b, rt.rank(), map.axis());
        let (channel_min, channel_max) = channel_ranges(&rv, rt.shape(), axis);
        // Per-channel scores need channels of several values; 1-D parameters (biases,
        // normalization parameters) are scored as a whole.
        let worst_channel_db = if rt.rank() >= 2 && rv.len() > rt.shape()[axis] {
            worst_channel_sqnr(&rv, &dq, rt.shape(), axis)
        } else {
            noise.sqnr_db
        };
        let depthwise =
            cn.op_type == "Conv" && slot == 1 && group > 1 && qt.shape().get(1) == Some(&1);
        plans.push(WeightPlan {
            report: WeightNoise {
                weight: weight_name,
                node: node_name,
                op_type: cn.op_type.clone(),
                group,
                axis: map.axis().map(|a| a as i64),
                value_type: qt.dtype().name().to_string(),
                noise,
                channel_min,
                channel_max,
            },
            worst_channel_db,
            dq_out: out,
            depthwise,
            dtype: qt.dtype(),
        });
    }
    Ok(plans)
}

/// Folds BatchNormalization into Conv/Gemm as lowbit's quantizer does; `None` when the model
/// has none to fold.
pub(super) fn bn_folded(fp32: &ModelProto) -> Option<ModelProto> {
    let has_bn = fp32
        .graph
        .as_ref()
        .is_some_and(|g| g.node.iter().any(|n| n.op_type == "BatchNormalization"));
    if !has_bn {
        return None;
    }
    let mut g = lowbit_onnx::graph::Graph::new(fp32.clone()).ok()?;
    match lowbit_quant::passes::bn_fold::fold_batch_norms(&mut g) {
        Ok(n) if n > 0 => Some(g.into_model()),
        _ => None,
    }
}
