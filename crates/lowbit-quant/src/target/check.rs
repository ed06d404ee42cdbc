//! `lowbit check`: lints a quantized ONNX model (lowbit's, ONNX Runtime's quantizer output,
//! NNCF's, ...) against a target's [`TargetRules`], one [`Finding`] per node or tensor that
//! breaks a rule, with the rule's name and the target's reason.
//!
//! | rule | what is checked |
//! |---|---|
//! | `activation-type` / `weight-type` | the Q/DQ element type is one the target runs |
//! | `activation-zero-point` / `weight-zero-point` | zero point 0 where the target is symmetric |
//! | `activation-per-channel` | one scale per activation (no integer kernel takes more) |
//! | `weight-axis` | per-channel weights on their layer's output-channel axis |
//! | `opset` | ONNX's opset for the Q/DQ (13 per axis, 21 for 4/16-bit and blocks) and the target's |
//! | `dynamic` | `DynamicQuantizeLinear`/`MatMulInteger`/`ConvInteger` where the target refuses or slows them |
//! | `operator-format` | `QLinear*`, `com.microsoft` quantized ops where the target refuses or slows them |
//! | `residual-input` | an `Add` of a quantized layer's output whose other input is float (TensorRT) |
//! | `shared-grid` | a `Concat` whose quantized inputs have different grids, or only some quantized |
//! | `float-op` | a Q/DQ group around an op the target does not run on integer codes |
//! | `not-quantized` | no Q/DQ and no integer op at all |
//!
//! Errors are what the runtime refuses (its parser or builder fails, or the file is invalid
//! ONNX); warnings are what it runs, but in float or slower than it could.

use super::{qdq_min_opset, Support, Target, TargetRules};
use crate::error::Result;
use crate::passes::{constant_values, is_default_domain, label, value_dtypes};
use crate::scheme::{IntType, QuantScheme, ValueType};
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::{ModelProto, NodeProto};
use lowbit_onnx::tensor_from_proto;
use lowbit_tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The runtime runs it, in float or slower than it could.
    Warning,
    /// The runtime refuses it, or the file is not valid ONNX.
    Error,
}

/// One broken rule at one node or tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// The rule's name (see the module table).
    pub rule: String,
    /// The node's name (`Op#index` when it has none); empty for the whole model.
    pub node: String,
    pub op_type: String,
    /// The tensor concerned, where one is.
    pub tensor: Option<String>,
    /// What is wrong, then why the target needs it otherwise.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev} [{}]", self.rule)?;
        if !self.node.is_empty() {
            write!(f, " {} ({})", self.node, self.op_type)?;
        }
        if let Some(t) = &self.tensor {
            write!(f, " tensor '{t}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What [`check_model`] found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub target: Target,
    /// The model's default-domain opset.
    pub opset: i64,
    /// QuantizeLinear and DequantizeLinear nodes.
    pub qdq_nodes: usize,
    /// Conv/ConvTranspose/MatMul/Gemm nodes, and of those, the ones reading a dequantized
    /// input (quantized layers).
    pub weighted_layers: usize,
    pub quantized_layers: usize,
    pub errors: usize,
    pub warnings: usize,
    /// Errors first, then in graph order.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// No rule the runtime enforces is broken.
    pub fn passes(&self) -> bool {
        self.errors == 0
    }
}

const WEIGHTED: &[&str] = &["Conv", "ConvTranspose", "MatMul", "Gemm"];
const DYNAMIC_OPS: &[&str] =
    &["DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"];
/// Quantized ops outside the QDQ format that are not dynamic quantization's.
fn operator_format(node: &NodeProto) -> bool {
    let op = node.op_type.as_str();
    op.starts_with("QLinear")
        || (node.domain == "com.microsoft"
            && matches!(op, "QGemm" | "QAttention" | "MatMulIntegerToFloat" | "MatMulNBits"))
}

/// The quantized element type lowbit and the rules know, or `None` (float8, int32 bias, ...).
fn int_type(d: DType) -> Option<IntType> {
    match QuantScheme::for_dtype(d)?.value {
        ValueType::Int(t) => Some(t),
        ValueType::Cast(_) => None,
    }
}

struct Ctx<'a> {
    g: &'a Graph,
    rules: TargetRules,
    target: Target,
    consts: HashSet<String>,
    dtypes: std::collections::HashMap<String, DType>,
    opset: i64,
    findings: Vec<Finding>,
}

impl Ctx<'_> {
    /// A load-time value (initializer or `Constant` output).
    fn constant(&self, name: &str) -> Option<Tensor> {
        if let Some(t) = self.g.initializer(name) {
            return tensor_from_proto(t).ok();
        }
        let n = self.g.producer_node(name)?;
        if n.op_type != "Constant" {
            return None;
        }
        let a = n.attribute.iter().find(|a| a.name == "value")?;
        tensor_from_proto(a.t.as_ref()?).ok()
    }

    fn is_const(&self, name: &str) -> bool {
        self.consts.contains(name)
    }

    /// A float activation (not a constant, float32/16 or of unknown type).
    fn is_float_act(&self, name: &str) -> bool {
        !name.is_empty()
            && !self.is_const(name)
            && matches!(self.dtypes.get(name), None | Some(DType::F32 | DType::F16 | DType::BF16))
    }

    fn producer_op(&self, name: &str) -> Option<&str> {
        self.g.producer_node(name).map(|n| n.op_type.as_str())
    }

    fn is_dequantized(&self, name: &str) -> bool {
        self.producer_op(name) == Some("DequantizeLinear")
    }

    fn push(
        &mut self,
        severity: Severity,
        rule: &str,
        idx: Option<usize>,
        tensor: Option<&str>,
        message: String,
    ) {
        let (node, op_type) = match idx.and_then(|i| self.g.node(i).map(|n| (i, n))) {
            Some((i, n)) => (label(n, i), n.op_type.clone()),
            None => (String::new(), String::new()),
        };
        self.findings.push(Finding {
            severity,
            rule: rule.into(),
            node,
            op_type,
            tensor: tensor.map(str::to_string),
            message,
        });
    }

    /// Error where the runtime refuses what breaks the rules, else warning.
    fn strictness(&self) -> Severity {
        if self.rules.strict {
            Severity::Error
        } else {
            Severity::Warning
        }
    }

    fn reason(&self) -> &'static str {
        self.rules.type_reason.unwrap_or("")
    }

    /// The element type a Q/DQ node quantizes to.
    fn qdq_type(&self, node: &NodeProto) -> Option<DType> {
        if let Some(zp) = node.input.get(2).filter(|z| !z.is_empty()) {
            if let Some(t) = self.constant(zp) {
                return Some(t.dtype());
            }
            if let Some(d) = self.dtypes.get(zp) {
                return Some(*d);
            }
        }
        if node.op_type == "QuantizeLinear" {
            let attr = node.attribute.iter().find(|a| a.name == "output_dtype" && a.i != 0);
            return Some(match attr {
                Some(a) => DType::from_onnx(a.i as i32)?,
                None => DType::U8,
            });
        }
        let x = node.input.first()?;
        if let Some(t) = self.g.initializer(x) {
            return DType::from_onnx(t.data_type);
        }
        match self.g.producer_node(x) {
            Some(q) if q.op_type == "QuantizeLinear" => self.qdq_type(q),
            _ => self.dtypes.get(x).copied(),
        }
    }

    fn check_qdq(&mut self, idx: usize, node: &NodeProto) {
        let Some(dtype) = self.qdq_type(node) else { return };
        let x = node.input.first().cloned().unwrap_or_default();
        // A weight: a DequantizeLinear of a constant (or a QuantizeLinear of one).
        let weight = self.is_const(&x);
        if dtype == DType::I32 && weight {
            return; // an int32 bias: every runtime takes it
        }
        let scale = node.input.get(1).and_then(|s| self.constant(s));
        let scale_len = scale.as_ref().map(|s| s.len()).unwrap_or(1);
        let block = node.attribute.iter().find(|a| a.name == "block_size").map_or(0, |a| a.i);
        let per_axis = scale_len > 1 && block == 0;
        let Some(it) = int_type(dtype) else {
            self.push(
                Severity::Warning,
                if weight { "weight-type" } else { "activation-type" },
                Some(idx),
                Some(&x),
                format!(
                    "{} quantization is not checked against target {}",
                    dtype.name(),
                    self.target
                ),
            );
            return;
        };
        let need = qdq_min_opset(it, per_axis, block > 0);
        if self.opset < need {
            let what = if block > 0 {
                "blocked scales".to_string()
            } else if per_axis && matches!(it, IntType::Int8 | IntType::Uint8) {
                "per-axis scales".to_string()
            } else {
                format!("{} values", it.name())
            };
            self.push(
                Severity::Error,
                "opset",
                Some(idx),
                Some(&x),
                format!(
                    "{} with {what} needs opset {need}, the model imports {}",
                    node.op_type, self.opset
                ),
            );
        }
        let zp = node.input.get(2).filter(|z| !z.is_empty()).and_then(|z| self.constant(z));
        // A missing zero point is 0.
        let nonzero =
            zp.and_then(|z| z.to_f32_vec().ok()).and_then(|v| v.into_iter().find(|&v| v != 0.0));
        if weight {
            let (allowed, symmetric) = (self.rules.weight_types, self.rules.symmetric_weights);
            self.check_type(idx, &x, "weight", it, allowed, symmetric.then_some(nonzero).flatten());
            if per_axis {
                self.check_weight_axis(idx, node, &x);
            }
            return;
        }
        // Activations are reported at their QuantizeLinear (or a DequantizeLinear without one).
        let q_side =
            node.op_type == "QuantizeLinear" || self.producer_op(&x) != Some("QuantizeLinear");
        if !q_side {
            return;
        }
        let (allowed, symmetric) = (self.rules.activation_types, self.rules.symmetric_activations);
        self.check_type(idx, &x, "activation", it, allowed, symmetric.then_some(nonzero).flatten());
        if scale_len > 1 {
            self.push(
                self.strictness(),
                "activation-per-channel",
                Some(idx),
                Some(&x),
                format!(
                    "{scale_len} scales on an activation: target {} quantizes activations per \
                     tensor (one scale)",
                    self.target
                ),
            );
        }
    }

    /// The `kind` (weight or activation) type rule, then the zero-point rule: `nonzero` is a
    /// non-zero zero point where the target needs zero.
    fn check_type(
        &mut self,
        idx: usize,
        x: &str,
        kind: &str,
        it: IntType,
        allowed: &[IntType],
        nonzero: Option<f32>,
    ) {
        let (rule, message) = if !allowed.contains(&it) {
            (format!("{kind}-type"), format!("{} {kind}s: {}", it.name(), self.reason()))
        } else if let Some(z) = nonzero {
            let why = self.reason();
            (format!("{kind}-zero-point"), format!("{kind} zero point {z} (asymmetric): {why}"))
        } else {
            return;
        };
        self.push(self.strictness(), &rule, Some(idx), Some(x), message);
    }

    /// A per-channel weight's axis against the output-channel axis of each layer reading it.
    /// `node` is the weight's DequantizeLinear, or the QuantizeLinear of a float weight
    /// (NNCF's Q → DQ pairs), whose DequantizeLinear outputs the layers then read.
    fn check_weight_axis(&mut self, idx: usize, node: &NodeProto, w: &str) {
        let rank = self.constant(w).map(|t| t.shape().len()).unwrap_or(0);
        let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i);
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        let Some(out) = node.output.first() else { return };
        let mut reads: Vec<String> = vec![out.clone()];
        if node.op_type == "QuantizeLinear" {
            let dqs = self.g.consumers(out).iter().map(|&c| &self.g.nodes()[c]);
            reads = dqs
                .filter(|d| d.op_type == "DequantizeLinear")
                .filter_map(|d| d.output.first().cloned())
                .collect();
        }
        let layers: Vec<(usize, &String)> =
            reads.iter().flat_map(|r| self.g.consumers(r).iter().map(move |&c| (c, r))).collect();
        for (c, out) in layers {
            let layer = &self.g.nodes()[c];
            if !WEIGHTED.contains(&layer.op_type.as_str()) || layer.input.get(1) != Some(out) {
                continue;
            }
            let trans_b = layer.attribute.iter().any(|a| a.name == "transB" && a.i != 0);
            let Some(want) =
                lowbit_kernels::quantize::weight_channel_axis(&layer.op_type, trans_b, rank)
            else {
                continue;
            };
            if axis != want as i64 {
                let fused = if self.rules.strict {
                    "the runtime refuses other axes"
                } else {
                    "the integer kernels take no other axis, so the layer runs in float"
                };
                self.push(
                    self.strictness(),
                    "weight-axis",
                    Some(idx),
                    Some(w),
                    format!(
                        "per-channel scales on axis {axis}; {} {} has its output channels on \
                         axis {want}: {fused}",
                        layer.op_type,
                        label(layer, c)
                    ),
                );
            }
        }
    }

    fn check_placement(&mut self, idx: usize, node: &NodeProto) {
        let op = node.op_type.as_str();
        let acts: Vec<String> =
            node.input.iter().filter(|i| self.is_float_act(i)).cloned().collect();
        let why = self.rules.placement_reason.unwrap_or("");
        if self.rules.quantize_all_inputs.contains(&op) && acts.len() >= 2 {
            // The output of a quantized layer: read directly (TensorRT's layout) or through
            // its own Q/DQ pair (ONNX Runtime's).
            let quantized_layer = |c: &Ctx, t: &str| {
                let layer = |t: &str| {
                    c.g.producer_node(t).is_some_and(|p| {
                        WEIGHTED.contains(&p.op_type.as_str())
                            && p.input.first().is_some_and(|x| c.is_dequantized(x))
                    })
                };
                let through_qdq = || {
                    let dq = c.g.producer_node(t).filter(|d| d.op_type == "DequantizeLinear")?;
                    let q = c.g.producer_node(dq.input.first()?)?;
                    (q.op_type == "QuantizeLinear").then(|| q.input.first()).flatten()
                };
                layer(t) || through_qdq().is_some_and(|x| layer(x))
            };
            if acts.iter().any(|a| quantized_layer(self, a)) {
                let float: Vec<&String> = acts
                    .iter()
                    .filter(|a| !self.is_dequantized(a) && !quantized_layer(self, a))
                    .collect();
                for a in float {
                    self.push(
                        Severity::Warning,
                        "residual-input",
                        Some(idx),
                        Some(a),
                        format!("float input beside a quantized one: {why}"),
                    );
                }
            }
        }
        if self.rules.shared_grid_inputs.contains(&op) && !acts.is_empty() {
            let dq: Vec<&String> = acts.iter().filter(|a| self.is_dequantized(a)).collect();
            if !dq.is_empty() && dq.len() < acts.len() {
                let float: Vec<&String> = acts.iter().filter(|a| !self.is_dequantized(a)).collect();
                self.push(
                    Severity::Warning,
                    "shared-grid",
                    Some(idx),
                    Some(float[0]),
                    format!(
                        "{} of {} inputs quantized, this one float: {why}",
                        dq.len(),
                        acts.len()
                    ),
                );
            } else if dq.len() >= 2 {
                let grid = |c: &Ctx, t: &str| -> Option<(Vec<f32>, Vec<f32>)> {
                    let d = c.g.producer_node(t)?;
                    let s = c.constant(d.input.get(1)?)?.to_f32_vec().ok()?;
                    let z = match d.input.get(2).filter(|z| !z.is_empty()) {
                        Some(z) => c.constant(z)?.to_f32_vec().ok()?,
                        None => vec![0.0],
                    };
                    Some((s, z))
                };
                let first = grid(self, dq[0]);
                if let Some(other) = dq.iter().skip(1).find(|t| grid(self, t) != first) {
                    self.push(
                        Severity::Warning,
                        "shared-grid",
                        Some(idx),
                        Some(other),
                        format!("its scale/zero point differ from input '{}': {why}", dq[0]),
                    );
                }
            }
        }
    }

    /// A DQ → op → Q group around an op the target does not run on integer codes.
    fn check_float_op(&mut self, idx: usize, node: &NodeProto) {
        let op = node.op_type.as_str();
        if self.rules.runs_on_codes(op) || !is_default_domain(node) {
            return;
        }
        let acts: Vec<&String> = node.input.iter().filter(|i| self.is_float_act(i)).collect();
        let outs = node.output.iter().filter(|o| !o.is_empty());
        let quantized_out = outs.clone().count() > 0
            && outs.into_iter().all(|o| {
                let c = self.g.consumers(o);
                !c.is_empty() && c.iter().all(|&i| self.g.nodes()[i].op_type == "QuantizeLinear")
            });
        if !acts.is_empty() && acts.iter().all(|a| self.is_dequantized(a)) && quantized_out {
            self.push(
                Severity::Warning,
                "float-op",
                Some(idx),
                None,
                format!(
                    "target {} does not run {op} on integer codes: the Q/DQ pairs around it \
                     only convert",
                    self.target
                ),
            );
        }
    }
}

/// Lints `model` against `target`'s rules.
pub fn check_model(model: &ModelProto, target: Target) -> Result<CheckReport> {
    let g = Graph::new(model.clone())?;
    let opset = g.opset_version("").unwrap_or(1);
    let mut c = Ctx {
        consts: constant_values(&g),
        dtypes: value_dtypes(&g),
        rules: target.rules(),
        target,
        opset,
        findings: Vec::new(),
        g: &g,
    };
    let (mut qdq, mut weighted, mut quantized, mut integer_ops) = (0, 0, 0, 0);
    for (idx, node) in g.nodes().iter().enumerate() {
        let op = node.op_type.as_str();
        let default = is_default_domain(node);
        if default && matches!(op, "QuantizeLinear" | "DequantizeLinear") {
            qdq += 1;
            c.check_qdq(idx, node);
            continue;
        }
        if default && WEIGHTED.contains(&op) {
            weighted += 1;
            if node.input.first().is_some_and(|x| c.is_dequantized(x)) {
                quantized += 1;
            }
        }
        if DYNAMIC_OPS.contains(&op) {
            integer_ops += 1;
            match c.rules.dynamic {
                Support::Yes => {}
                Support::Slow(why) => {
                    c.push(Severity::Warning, "dynamic", Some(idx), None, why.into())
                }
                Support::No(why) => c.push(Severity::Error, "dynamic", Some(idx), None, why.into()),
            }
            continue;
        }
        if operator_format(node) {
            integer_ops += 1;
            match c.rules.operator_format {
                Support::Yes => {}
                Support::Slow(why) => {
                    c.push(Severity::Warning, "operator-format", Some(idx), None, why.into())
                }
                Support::No(why) => {
                    c.push(Severity::Error, "operator-format", Some(idx), None, why.into())
                }
            }
            continue;
        }
        if default {
            c.check_placement(idx, node);
            c.check_float_op(idx, node);
        }
    }
    if qdq > 0 && opset < c.rules.min_opset {
        c.push(
            Severity::Error,
            "opset",
            None,
            None,
            format!(
                "the model imports opset {opset}; target {target} parses Q/DQ from opset {}",
                c.rules.min_opset
            ),
        );
    }
    if qdq == 0 && integer_ops == 0 {
        c.push(
            Severity::Warning,
            "not-quantized",
            None,
            None,
            "no QuantizeLinear/DequantizeLinear and no integer op: the model is float".into(),
        );
    }
    let mut findings = c.findings;
    // Errors first; graph order within each (the sort is stable).
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    Ok(CheckReport {
        target,
        opset,
        qdq_nodes: qdq,
        weighted_layers: weighted,
        quantized_layers: quantized,
        errors,
        warnings: findings.len() - errors,
        findings,
    })
}
