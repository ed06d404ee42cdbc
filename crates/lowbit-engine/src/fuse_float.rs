//! Load-time fusion of float patterns, so an FP32 model spends fewer passes over memory:
//!
//! | pattern | becomes |
//! |---|---|
//! | `Conv` / `Gemm` (constant f32 weight and bias) → `BatchNormalization` (constant parameters) | the `Conv` / `Gemm` with folded weight and bias |
//! | `Conv` (constant f32 weight) → `Add` (constant, one value per output channel) | the `Conv` with the sum as its bias |
//! | `MatMul` (constant 2-D f32 `B`) → `Add` (constant `[1, …, 1, n]` bias) | `ai.lowbit` `FusedMatMul(A, B, bias)` |
//! | `Conv` / `Gemm` / `MatMul` (constant f32 weight) [→ bias] → `Relu` / `Clip` (constant bounds) / `LeakyRelu` | `ai.lowbit` `FusedConv` / `FusedGemm` / `FusedMatMul` |
//!
//! The fused ops carry their activation as ONNX Runtime's `com.microsoft.FusedConv` does:
//! `activation` (`"Relu"`, `"Clip"`, `"LeakyRelu"`) and `activation_params` (`[min, max]`,
//! `[alpha]`); the kernels apply it in their output stage. Batch-norm folding uses the same
//! arithmetic as the quantizer's pass ([`ChannelAffine`]); folded tensors are new constants, so
//! a weight or bias shared with another node is never changed under it.
//!
//! A pattern fuses only when the intermediate value has one reader and is not a graph output.
//! Fusion removes intermediate values, so observers (calibration, `compare`) plan sessions
//! with [`crate::SessionOptions::fuse_float`] off.

use crate::fuse::{Fused, LOWBIT_DOMAIN};
use crate::registry::{canonical_domain, Registry};
use lowbit_kernels::norm::ChannelAffine;
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto};
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// Activations a fused op can apply in its output stage.
const ACTIVATIONS: &[&str] = &["Relu", "Clip", "LeakyRelu"];

/// Rewrites the float patterns of `fused.nodes` (see the module docs) in place, adding the
/// constants it creates and its counts to `fused`. Never fails: a pattern whose conditions do
/// not hold is left as it is. Only ops `reg` supports are created.
pub fn fuse_float(graph: &GraphProto, opset: i64, reg: &Registry, fused: &mut Fused) {
    let mut values: HashMap<String, Tensor> = HashMap::new();
    let mut lazy = HashMap::new();
    for t in &graph.initializer {
        lazy.insert(t.name.clone(), t);
    }
    for n in &fused.nodes {
        if n.op_type == "Constant" && canonical_domain(&n.domain).is_empty() {
            if let (Some(o), Ok(Some(t))) = (n.output.first(), Attrs::new(n).tensor("value")) {
                if let Ok(t) = tensor_from_proto(t) {
                    values.insert(o.clone(), t);
                }
            }
        }
    }
    for (name, t) in &fused.constants {
        values.insert(name.clone(), t.clone());
    }
    let mut names: HashSet<String> = lazy.keys().cloned().collect();
    names.extend(values.keys().cloned());
    for n in &fused.nodes {
        names.extend(n.input.iter().chain(&n.output).cloned());
    }
    names.extend(graph.input.iter().map(|v| v.name.clone()));
    let mut f = FloatFuser {
        nodes: std::mem::take(&mut fused.nodes).into_iter().map(Some).collect(),
        opset,
        reg,
        lazy,
        values,
        names,
        graph_outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        fused,
    };
    for i in 0..f.nodes.len() {
        f.fold_batch_norm(i);
    }
    for i in 0..f.nodes.len() {
        f.matmul_bias(i);
        f.conv_add_bias(i);
    }
    for i in 0..f.nodes.len() {
        f.activation(i);
    }
    f.fused.nodes = f.nodes.into_iter().flatten().collect();
}

struct FloatFuser<'g> {
    /// The graph's nodes; `None` once fused away.
    nodes: Vec<Option<NodeProto>>,
    opset: i64,
    reg: &'g Registry,
    /// Constants not decoded yet (initializers, `Constant` nodes).
    lazy: HashMap<String, &'g lowbit_onnx::pb::TensorProto>,
    values: HashMap<String, Tensor>,
    /// Every value name in use, so new constants get fresh ones.
    names: HashSet<String>,
    graph_outputs: HashSet<String>,
    fused: &'g mut Fused,
}

fn is_default(n: &NodeProto) -> bool {
    canonical_domain(&n.domain).is_empty()
}

impl FloatFuser<'_> {
    /// The value of an f32 constant, decoded once.
    fn f32_constant(&mut self, name: &str) -> Option<Tensor> {
        if name.is_empty() {
            return None;
        }
        if !self.values.contains_key(name) {
            let t = tensor_from_proto(self.lazy.get(name)?).ok()?;
            self.values.insert(name.to_string(), t);
        }
        self.values.get(name).filter(|t| t.dtype() == DType::F32).cloned()
    }

    fn producer(&self, value: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.output.iter().any(|o| o == value)))
    }

    /// The node that alone reads `value` (once), when `value` is not a graph output.
    fn sole_reader(&self, value: &str) -> Option<usize> {
        if self.graph_outputs.contains(value) {
            return None;
        }
        let mut reader = None;
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            for _ in n.input.iter().filter(|x| *x == value) {
                if reader.is_some() {
                    return None;
                }
                reader = Some(i);
            }
        }
        reader
    }

    /// Adds a constant under a fresh name made from `prefix`; returns the name.
    fn add_constant(&mut self, prefix: &str, t: Tensor) -> String {
        let mut name = prefix.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{prefix}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        self.values.insert(name.clone(), t.clone());
        self.fused.constants.push((name.clone(), t));
        name
    }

    fn count(&mut self, what: &str) {
        *self.fused.counts.entry(what.to_string()).or_default() += 1;
    }

    /// `Conv`/`Gemm` → `BatchNormalization`: the producer takes folded weights and bias and
    /// the batch norm's output.
    fn fold_batch_norm(&mut self, bn: usize) -> Option<()> {
        let node = self.nodes[bn].clone()?;
        if node.op_type != "BatchNormalization" || !is_default(&node) || node.input.len() < 5 {
            return None;
        }
        let a = Attrs::new(&node);
        if a.int_or("training_mode", 0).ok()? != 0
            || a.int_or("spatial", 1).ok()? != 1
            || node.output.iter().skip(1).any(|o| !o.is_empty())
        {
            return None;
        }
        let eps = a.float_or("epsilon", 1e-5).ok()?;
        let mut p = Vec::with_capacity(4);
        for name in &node.input[1..5] {
            let t = self.f32_constant(name)?;
            if t.rank() != 1 {
                return None;
            }
            p.push(t);
        }
        let f = |t: &Tensor| t.as_f32().ok().map(<[f32]>::to_vec);
        let bn_map =
            ChannelAffine::batch_norm(&f(&p[0])?, &f(&p[1])?, &f(&p[2])?, &f(&p[3])?, eps)?;
        let c = bn_map.channels();
        let x = node.input[0].as_str();
        let pi = self.producer(x)?;
        if self.sole_reader(x) != Some(bn) {
            return None;
        }
        let prod = self.nodes[pi].clone()?;
        if !is_default(&prod) || prod.output.len() != 1 || c == 0 {
            return None;
        }
        let wname = prod.input.get(1)?.clone();
        let w = self.f32_constant(&wname)?;
        let bias = match prod.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => Some(self.f32_constant(b)?),
            None => None,
        };
        let bias_v = bias.as_ref().map(|b| b.as_f32().ok()).map_or(Some(None), |b| b.map(Some))?;
        let wv = w.as_f32().ok()?;
        let mut new = prod.clone();
        let (new_w, new_b) =
            match prod.op_type.as_str() {
                "Conv" => {
                    if w.rank() < 3
                        || w.shape()[0] != c
                        || bias.as_ref().is_some_and(|b| b.len() != c)
                    {
                        return None;
                    }
                    let inner = wv.len() / c;
                    (bn_map.fold_weight(wv, 1.0, |i| i / inner), bn_map.fold_bias(bias_v, 1.0)?)
                }
                "Gemm" => {
                    let pa = Attrs::new(&prod);
                    let trans_b = pa.int_or("transB", 0).ok()? != 0;
                    let (alpha, beta) =
                        (pa.float_or("alpha", 1.0).ok()?, pa.float_or("beta", 1.0).ok()?);
                    if w.rank() != 2 || w.shape()[if trans_b { 0 } else { 1 }] != c {
                        return None;
                    }
                    // C must broadcast along rows: [c], [1, c] or one value.
                    if let Some(b) = &bias {
                        let ok =
                            b.len() == 1 || (b.len() == c && (b.rank() == 1 || b.shape()[0] == 1));
                        if !ok {
                            return None;
                        }
                    }
                    let cols = w.shape()[1];
                    let nw = bn_map.fold_weight(wv, alpha as f64, |k| {
                        if trans_b {
                            k / cols
                        } else {
                            k % cols
                        }
                    });
                    new.attribute.retain(|a| a.name != "alpha" && a.name != "beta");
                    (nw, bn_map.fold_bias(bias_v, beta as f64)?)
                }
                _ => return None,
            };
        let shape = w.shape().to_vec();
        let wn =
            self.add_constant(&format!("{wname}_bn_folded"), Tensor::from_vec(shape, new_w).ok()?);
        let label = if prod.name.is_empty() { &wname } else { &prod.name };
        let bname = self.add_constant(
            &format!("{label}_bias_bn_folded"),
            Tensor::from_vec(vec![c], new_b).ok()?,
        );
        new.input[1] = wn;
        new.input.truncate(2);
        new.input.push(bname);
        new.output[0] = node.output[0].clone();
        self.nodes[pi] = Some(new);
        self.nodes[bn] = None;
        self.count(&format!("{}+BatchNormalization", prod.op_type));
        Some(())
    }

    /// The `[k, n]` shape of a `MatMul`'s constant f32 `B`.
    fn matmul_weight(&mut self, node: &NodeProto) -> Option<(usize, usize)> {
        let b = self.f32_constant(node.input.get(1)?)?;
        (b.rank() == 2).then(|| (b.shape()[0], b.shape()[1]))
    }

    /// `MatMul` (constant `B`) → `Add` (constant 1-D bias of `n`): `FusedMatMul(A, B, bias)`.
    fn matmul_bias(&mut self, mm: usize) -> Option<()> {
        let node = self.nodes[mm].clone()?;
        if node.op_type != "MatMul" || !is_default(&node) || node.output.len() != 1 {
            return None;
        }
        if !self.reg.supports(LOWBIT_DOMAIN, "FusedMatMul") {
            return None;
        }
        let (_, n) = self.matmul_weight(&node)?;
        let y = node.output[0].as_str();
        let ai = self.sole_reader(y)?;
        let add = self.nodes[ai].clone()?;
        if add.op_type != "Add" || !is_default(&add) || add.input.len() != 2 {
            return None;
        }
        let other = if add.input[0] == y { &add.input[1] } else { &add.input[0] };
        // `[1, ..., 1, n]`: one value per column (FusedMatMul adds the leading ones to the
        // output's shape when the bias has more dims than the product).
        let bias = self.f32_constant(other)?;
        if bias.rank() == 0 || bias.len() != n || bias.shape()[bias.rank() - 1] != n {
            return None;
        }
        let mut fused = node.clone();
        fused.op_type = "FusedMatMul".into();
        fused.domain = LOWBIT_DOMAIN.into();
        fused.input = vec![node.input[0].clone(), node.input[1].clone(), other.clone()];
        fused.output = add.output.clone();
        self.nodes[mm] = Some(fused);
        self.nodes[ai] = None;
        self.count("MatMul+Add");
        Some(())
    }

    /// `Conv` → `Add` of a constant with one value per output channel (or one for all): the
    /// conv takes the sum into its bias (mnist-8 writes its conv biases this way).
    fn conv_add_bias(&mut self, ci: usize) -> Option<()> {
        let conv = self.nodes[ci].clone()?;
        if conv.op_type != "Conv" || !is_default(&conv) || conv.output.len() != 1 {
            return None;
        }
        let w = self.f32_constant(conv.input.get(1)?)?;
        let (rank, c) = (w.rank(), *w.shape().first()?);
        let y = conv.output[0].as_str();
        let ai = self.sole_reader(y)?;
        let add = self.nodes[ai].clone()?;
        if add.op_type != "Add" || !is_default(&add) || add.input.len() != 2 || rank < 3 {
            return None;
        }
        let other = if add.input[0] == y { &add.input[1] } else { &add.input[0] };
        let v = self.f32_constant(other)?;
        // Right-aligned against [N, C, spatial...]: 1 everywhere but the channel axis.
        let shape = v.shape();
        if shape.len() > rank {
            return None;
        }
        let lead = rank - shape.len();
        let ok = shape.iter().enumerate().all(|(i, &d)| d == 1 || (lead + i == 1 && d == c));
        if !ok {
            return None;
        }
        let add_v = v.as_f32().ok()?;
        let old = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => self.f32_constant(b)?.as_f32().ok()?.to_vec(),
            None => vec![0.0; c],
        };
        if old.len() != c {
            return None;
        }
        let bias: Vec<f32> =
            (0..c).map(|k| old[k] + add_v[if add_v.len() == 1 { 0 } else { k }]).collect();
        let label = if conv.name.is_empty() { y.to_string() } else { conv.name.clone() };
        let bname = self.add_constant(
            &format!("{label}_bias_add_folded"),
            Tensor::from_vec(vec![c], bias).ok()?,
        );
        let mut fused = conv.clone();
        fused.input.truncate(2);
        fused.input.push(bname);
        fused.output = add.output.clone();
        self.nodes[ci] = Some(fused);
        self.nodes[ai] = None;
        self.count("Conv+Add");
        Some(())
    }

    /// The `activation` and `activation_params` of an activation node, when its parameters are
    /// known at load time.
    fn activation_of(&mut self, node: &NodeProto) -> Option<(&'static str, Vec<f32>)> {
        let a = Attrs::new(node);
        match node.op_type.as_str() {
            "Relu" => Some(("Relu", vec![])),
            "LeakyRelu" => Some(("LeakyRelu", vec![a.float_or("alpha", 0.01).ok()?])),
            "Clip" if self.opset < 11 => Some((
                "Clip",
                vec![a.float_or("min", f32::MIN).ok()?, a.float_or("max", f32::MAX).ok()?],
            )),
            "Clip" => {
                let mut bound = |i: usize, default: f32| -> Option<f32> {
                    match node.input.get(i).filter(|s| !s.is_empty()) {
                        None => Some(default),
                        Some(s) => {
                            let t = self.f32_constant(s)?;
                            (t.len() == 1).then(|| t.as_f32().ok().map(|v| v[0])).flatten()
                        }
                    }
                };
                let lo = bound(1, f32::NEG_INFINITY)?;
                let hi = bound(2, f32::INFINITY)?;
                Some(("Clip", vec![lo, hi]))
            }
            _ => None,
        }
    }

    /// `Conv` / `Gemm` / `MatMul` / `FusedMatMul` → activation: the fused op with the
    /// activation in its output stage.
    fn activation(&mut self, i: usize) -> Option<()> {
        let node = self.nodes[i].clone()?;
        if !ACTIVATIONS.contains(&node.op_type.as_str()) || !is_default(&node) {
            return None;
        }
        let x = node.input.first()?.as_str();
        let pi = self.producer(x)?;
        if self.sole_reader(x) != Some(i) {
            return None;
        }
        let prod = self.nodes[pi].clone()?;
        if prod.output.len() != 1 {
            return None;
        }
        let op = match (canonical_domain(&prod.domain), prod.op_type.as_str()) {
            ("", "Conv") if self.f32_constant(prod.input.get(1)?).is_some() => "FusedConv",
            ("", "Gemm") if self.f32_constant(prod.input.get(1)?).is_some() => "FusedGemm",
            ("", "MatMul") if self.matmul_weight(&prod).is_some() => "FusedMatMul",
            (LOWBIT_DOMAIN, "FusedMatMul")
                if !prod.attribute.iter().any(|a| a.name == "activation") =>
            {
                "FusedMatMul"
            }
            _ => return None,
        };
        if !self.reg.supports(LOWBIT_DOMAIN, op) {
            return None;
        }
        let (act, params) = self.activation_of(&node)?;
        let mut fused = prod.clone();
        fused.op_type = op.into();
        fused.domain = LOWBIT_DOMAIN.into();
        fused.output = node.output.clone();
        fused.attribute.push(AttributeProto {
            name: "activation".into(),
            r#type: AttributeType::String as i32,
            s: act.as_bytes().to_vec(),
            ..Default::default()
        });
        fused.attribute.push(AttributeProto {
            name: "activation_params".into(),
            r#type: AttributeType::Floats as i32,
            floats: params,
            ..Default::default()
        });
        self.nodes[pi] = Some(fused);
        self.nodes[i] = None;
        self.count(&format!("{}+{}", prod.op_type, node.op_type));
        Some(())
    }
}
