//! Load-time fusion of QDQ patterns into integer ops, so a quantized model runs on integer
//! kernels instead of simulating quantization in float.
//!
//! A QDQ graph (what lowbit's and ONNX Runtime's quantizers write) wraps float ops in
//! `DequantizeLinear` → op → `QuantizeLinear`. When an op reads only dequantized 8-bit values
//! and its float output feeds exactly one `QuantizeLinear`, the three collapse into one op on
//! the 8-bit values, and its output stays 8-bit for the next fused op:
//!
//! | pattern | becomes | exact? |
//! |---|---|---|
//! | DQ(x), DQ(w const), [DQ(bias int32)] → `Conv` → Q | `QLinearConv` | integer sums; f32 requantize |
//! | DQ(a), DQ(b) → `MatMul` → Q | `QLinearMatMul` | as above |
//! | DQ(a), DQ(b const), [DQ(bias)] → `Gemm` [→ Q] | `com.microsoft.QGemm` (float output without Q) | as above |
//! | DQ(x) → elementwise unary (`Relu`, `Clip`, `Sigmoid`, …) → Q | `QLinearLookup` (256-entry table) | bit-identical |
//! | DQ(x) → Q (other scale) | `QLinearLookup` | bit-identical |
//! | DQ(a), DQ(b) → `Add` / `Mul` → Q | `com.microsoft.QLinearAdd` / `QLinearMul` | bit-identical |
//! | DQ(x) → `MaxPool` / `Reshape` / `Flatten` / `Transpose` / … → Q with the same parameters | the op on the 8-bit tensor | bit-identical |
//! | DQ(x) → `GlobalAveragePool` → Q | `com.microsoft.QLinearGlobalAveragePool` | integer sum; f32 requantize |
//! | `MatMulInteger`(DynamicQuantizeLinear(x), W) → `Cast` → `Mul`(scales) [→ `Add`(bias)] | `com.microsoft.MatMulIntegerToFloat` | bit-identical |
//! | x, DQ(w const int8/int4, per column or blocked along K) → `MatMul` [→ `Add`(bias)] / `Gemm` | `ai.lowbit` `WeightOnlyMatMul` ([`weight_only`]) | f32 rounding |
//!
//! An integer conv/matmul whose output only feeds a lookup takes the table into its output
//! stage (`ai.lowbit` `QLinearConv`/`QLinearMatMul`/`QGemm` with the table as a last input).
//!
//! "Bit-identical": the table of a lookup is computed by running the graph's own DQ, op and Q
//! kernels on all 256 codes. Integer products differ from the float simulation only where the
//! float sum's rounding moves a value across a rounding boundary (at most one step; measured
//! in the tests). A pattern whose conditions do not hold (per-axis activations, runtime
//! scales, a float value also read elsewhere or a graph output) is left as it is; dangling
//! `DequantizeLinear` nodes are removed afterwards.
//!
//! Fusion changes which intermediate values exist, so observers (calibration, `compare`)
//! plan sessions with [`crate::SessionOptions::fuse_quantized`] off.

use crate::op::BuildCtx;
use crate::registry::{canonical_domain, Registry};
use lowbit_kernels::quantize::{self, quantize_one};
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::build::int_attr;
use lowbit_onnx::pb::{GraphProto, NodeProto, TensorProto};
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::{DType, Tensor, TensorData};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

mod weight_only;

/// The domain of lowbit's own ops (`QLinearLookup`).
pub const LOWBIT_DOMAIN: &str = "ai.lowbit";

/// A graph's nodes after fusion, with the constants fusion created (lookup tables, int32
/// biases) and how many nodes of each fused kind it made.
#[derive(Debug, Default)]
pub struct Fused {
    pub nodes: Vec<NodeProto>,
    pub constants: Vec<(String, Tensor)>,
    pub counts: BTreeMap<String, usize>,
}

/// Elementwise ops of one tensor input (others constant) that a lookup table can replace (and
/// that run on any layout: [`crate::layout`]'s float mode lets them follow channels-last convs).
pub(crate) const UNARY: &[&str] = &[
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Gelu",
    "Mish",
    "Erf",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "ThresholdedRelu",
    "Identity",
];

/// Ops that only select or move values of their first input: on 8-bit codes they give the same
/// codes as on the dequantized values, when the output's parameters equal the input's.
const MOVES: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "GlobalMaxPool",
    "Slice",
    "Gather",
    "DepthToSpace",
    "SpaceToDepth",
];

/// A `DequantizeLinear` (or `QuantizeLinear`): its node, data input, scale and zero point.
#[derive(Clone, Copy)]
struct Qdq<'g> {
    node: usize,
    data: &'g str,
    scale: &'g str,
    zero_point: Option<&'g str>,
}

/// One per-tensor 8-bit parameter set.
#[derive(Clone, Copy, PartialEq)]
struct Params {
    scale: f32,
    zero_point: i32,
    dtype: DType,
}

struct Fuser<'g> {
    nodes: &'g [NodeProto],
    opsets: &'g HashMap<&'g str, i64>,
    reg: &'g Registry,
    protos: HashMap<&'g str, &'g TensorProto>,
    decoded: RefCell<HashMap<String, Option<Tensor>>>,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    graph_outputs: HashSet<&'g str>,
    /// Replacement per original node index (`None`: removed).
    replaced: HashMap<usize, Option<NodeProto>>,
    constants: Vec<(String, Tensor)>,
    counts: BTreeMap<String, usize>,
}

/// Rewrites QDQ patterns of `graph` (see the module docs). Never fails: a pattern that cannot
/// be fused stays as it is.
pub fn fuse_qdq(graph: &GraphProto, opsets: &HashMap<&str, i64>, reg: &Registry) -> Fused {
    let nodes = graph.node.as_slice();
    let mut protos: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut producer = HashMap::new();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o.as_str(), i);
        }
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            consumers.entry(x.as_str()).or_default().push(i);
        }
        if n.op_type == "Constant" && canonical_domain(&n.domain).is_empty() {
            if let (Some(o), Ok(Some(t))) = (n.output.first(), Attrs::new(n).tensor("value")) {
                protos.insert(o.as_str(), t);
            }
        }
    }
    let mut f = Fuser {
        nodes,
        opsets,
        reg,
        protos,
        decoded: RefCell::new(HashMap::new()),
        producer,
        consumers,
        graph_outputs: graph.output.iter().map(|o| o.name.as_str()).collect(),
        replaced: HashMap::new(),
        constants: Vec::new(),
        counts: BTreeMap::new(),
    };
    for (i, n) in nodes.iter().enumerate() {
        if !canonical_domain(&n.domain).is_empty() {
            continue;
        }
        let one = |r: Option<(NodeProto, usize)>| r.map(|(n, q)| (n, vec![q]));
        let fused = match n.op_type.as_str() {
            "Conv" => one(f.conv(i)),
            "MatMul" => one(f.matmul(i)).or_else(|| f.weight_only(i)),
            "Gemm" => {
                f.gemm(i).map(|(n, q)| (n, q.into_iter().collect())).or_else(|| f.weight_only(i))
            }
            "Add" | "Mul" => one(f.binary(i)),
            "GlobalAveragePool" => one(f.global_average_pool(i)),
            "MatMulInteger" => f.dynamic_matmul(i),
            "DequantizeLinear" => one(f.requantize(i)),
            op if MOVES.contains(&op) => one(f.moves(i)),
            op if UNARY.contains(&op) => one(f.unary(i)),
            _ => None,
        };
        if let Some((node, gone)) = fused {
            *f.counts.entry(node.op_type.clone()).or_default() += 1;
            f.replaced.insert(i, Some(node));
            for g in gone {
                f.replaced.insert(g, None);
            }
        }
    }
    f.finish()
}

/// The first inputs of `QLinearConv`/`QLinearMatMul`: `a`'s data, scale and zero point, the
/// weight `b`'s (its zero point may be omitted), then the output's scale and zero point.
fn qlinear_inputs(a: &Qdq, b: &Qdq, y: &Qdq) -> Option<Vec<String>> {
    let names = [a.data, a.scale, a.zero_point?, b.data, b.scale, b.zero_point.unwrap_or("")];
    Some(names.into_iter().chain([y.scale, y.zero_point?]).map(str::to_string).collect())
}

impl<'g> Fuser<'g> {
    /// The value of a constant (initializer or `Constant` output), decoded once.
    fn constant(&self, name: &str) -> Option<Tensor> {
        if let Some(t) = self.decoded.borrow().get(name) {
            return t.clone();
        }
        let t = self.protos.get(name).and_then(|p| tensor_from_proto(p).ok());
        self.decoded.borrow_mut().insert(name.to_string(), t.clone());
        t
    }

    /// Element type and dims of a constant, without decoding it.
    fn constant_meta(&self, name: &str) -> Option<(DType, Vec<usize>)> {
        let p = self.protos.get(name)?;
        let dt = DType::from_onnx(p.data_type)?;
        Some((dt, p.dims.iter().map(|&d| d.max(0) as usize).collect()))
    }

    fn is_constant(&self, name: &str) -> bool {
        self.protos.contains_key(name)
    }

    fn qdq(&self, i: usize) -> Qdq<'g> {
        let n = &self.nodes[i];
        Qdq {
            node: i,
            data: n.input[0].as_str(),
            scale: n.input.get(1).map_or("", |s| s.as_str()),
            zero_point: n.input.get(2).map(|s| s.as_str()).filter(|s| !s.is_empty()),
        }
    }

    /// The `DequantizeLinear` producing `value` (no blocked quantization).
    fn dq_of(&self, value: &str) -> Option<Qdq<'g>> {
        let &i = self.producer.get(value)?;
        let n = &self.nodes[i];
        let ok = n.op_type == "DequantizeLinear"
            && canonical_domain(&n.domain).is_empty()
            && n.input.len() >= 2
            && Attrs::new(n).int_or("block_size", 0).ok()? == 0;
        ok.then(|| self.qdq(i))
    }

    /// The only reader of `value`, when it is a `QuantizeLinear` and `value` is not a graph
    /// output.
    fn sole_q(&self, value: &str) -> Option<Qdq<'g>> {
        if self.graph_outputs.contains(value) {
            return None;
        }
        let c = self.consumers.get(value)?;
        if c.len() != 1 {
            return None;
        }
        let n = &self.nodes[c[0]];
        let a = Attrs::new(n);
        let ok = n.op_type == "QuantizeLinear"
            && canonical_domain(&n.domain).is_empty()
            && n.input.len() >= 3
            && n.input[0] == value
            && a.int_or("output_dtype", 0).ok()? == 0
            && a.int_or("block_size", 0).ok()? == 0;
        ok.then(|| self.qdq(c[0]))
    }

    /// The `DequantizeLinear`s feeding inputs 0 and 1 of node `i` and the sole
    /// `QuantizeLinear` reading its output: the pattern every two-operand integer op fuses.
    fn binary_pattern(&self, i: usize) -> Option<(Qdq<'g>, Qdq<'g>, Qdq<'g>)> {
        let n = &self.nodes[i];
        let a = self.dq_of(n.input.first()?)?;
        let b = self.dq_of(n.input.get(1)?)?;
        Some((a, b, self.sole_q(n.output.first()?)?))
    }

    /// Per-tensor 8-bit parameters of a Q or DQ (zero point required, to know the type).
    fn params(&self, q: &Qdq) -> Option<Params> {
        let s = self.constant(q.scale)?;
        let z = self.constant(q.zero_point?)?;
        if s.len() != 1 || z.len() != 1 || s.dtype() != DType::F32 {
            return None;
        }
        let scale = s.as_f32().ok()?[0];
        if !(scale.is_finite() && scale > 0.0) {
            return None;
        }
        let (zero_point, dtype) = match z.data() {
            TensorData::U8(v) => (v[0] as i32, DType::U8),
            TensorData::I8(v) => (v[0] as i32, DType::I8),
            _ => return None,
        };
        Some(Params { scale, zero_point, dtype })
    }

    /// Per-channel (or per-tensor) 8-bit weight parameters: scale values, with the zero point
    /// constant matching them; `axis` is where the channels are.
    fn weight_scales(
        &self,
        w: &Qdq,
        channels: usize,
        axis: usize,
        rank: usize,
    ) -> Option<Vec<f32>> {
        let (dt, _) = self.constant_meta(w.data)?;
        if !matches!(dt, DType::U8 | DType::I8) {
            return None;
        }
        let s = self.constant(w.scale)?;
        let v = s.as_f32().ok()?.to_vec();
        if v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return None;
        }
        if v.len() != 1 {
            let a = Attrs::new(&self.nodes[w.node]).int_or("axis", 1).ok()?;
            let a = if a < 0 { a + rank as i64 } else { a };
            if v.len() != channels || a != axis as i64 || s.rank() != 1 {
                return None;
            }
        }
        if let Some(z) = w.zero_point {
            let zt = self.constant(z)?;
            if zt.len() != v.len() || zt.dtype() != dt {
                return None;
            }
        }
        Some(v)
    }

    /// An int32 bias input for an integer product with input scale `xs` and weight scales `ws`:
    /// a DQ of int32 whose scales are exactly `xs · ws[c]` is used as is; a float constant is
    /// quantized with that scale (as ONNX Runtime's quantizer does).
    fn int_bias(
        &mut self,
        name: &str,
        xs: f32,
        ws: &[f32],
        n: usize,
        label: &str,
    ) -> Option<String> {
        let scales = quantize::bias_scales(xs, ws);
        let want = |c: usize| scales[if scales.len() == 1 { 0 } else { c }];
        if let Some(b) = self.dq_of(name) {
            let (dt, dims) = self.constant_meta(b.data)?;
            if dt != DType::I32 || dims.iter().product::<usize>() != n {
                return None;
            }
            let s = self.constant(b.scale)?;
            let sv = s.as_f32().ok()?;
            let same = (0..n).all(|c| sv[if sv.len() == 1 { 0 } else { c }] == want(c));
            let zero = match b.zero_point {
                None => true,
                Some(z) => self.constant(z)?.as_slice::<i32>().ok()?.iter().all(|&v| v == 0),
            };
            return (same && zero && (sv.len() == 1 || sv.len() == n)).then(|| b.data.to_string());
        }
        let t = self.constant(name)?;
        let v = t.as_f32().ok()?;
        if v.len() != n {
            return None;
        }
        // A code the int32 accumulator cannot carry keeps the op in float.
        let q = quantize::quantize_bias(v, xs, ws).ok()?;
        let name = format!("{label}::bias_int32");
        self.constants.push((name.clone(), Tensor::from_vec(vec![n], q).ok()?));
        Some(name)
    }

    fn node(
        &self,
        like: usize,
        op: &str,
        domain: &str,
        inputs: Vec<String>,
        out: &str,
    ) -> NodeProto {
        let n = &self.nodes[like];
        NodeProto {
            name: n.name.clone(),
            op_type: op.to_string(),
            domain: domain.to_string(),
            input: inputs,
            output: vec![out.to_string()],
            ..Default::default()
        }
    }

    fn label(&self, i: usize) -> String {
        let n = &self.nodes[i];
        if n.name.is_empty() {
            format!("{}#{i}", n.op_type)
        } else {
            n.name.clone()
        }
    }

    fn conv(&mut self, i: usize) -> Option<(NodeProto, usize)> {
        let n = &self.nodes[i];
        let (x, w, y) = self.binary_pattern(i)?;
        let xp = self.params(&x)?;
        self.params(&y)?;
        let (_, wdims) = self.constant_meta(w.data)?;
        if wdims.len() < 3 {
            return None;
        }
        let ws = self.weight_scales(&w, wdims[0], 0, wdims.len())?;
        let mut inputs = qlinear_inputs(&x, &w, &y)?;
        if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
            let label = self.label(i);
            inputs.push(self.int_bias(b, xp.scale, &ws, wdims[0], &label)?);
        }
        let mut node = self.node(i, "QLinearConv", "", inputs, &self.nodes[y.node].output[0]);
        node.attribute = n.attribute.clone();
        Some((node, y.node))
    }

    fn matmul(&mut self, i: usize) -> Option<(NodeProto, usize)> {
        let (a, b, y) = self.binary_pattern(i)?;
        self.params(&a)?;
        self.params(&y)?;
        if self.params(&b).is_none() {
            // Per-column weights: a constant 2-D B with one scale per column.
            let (_, dims) = self.constant_meta(b.data)?;
            if dims.len() != 2 {
                return None;
            }
            self.weight_scales(&b, dims[1], 1, 2)?;
        }
        let inputs = qlinear_inputs(&a, &b, &y)?;
        let out = self.nodes[y.node].output[0].as_str();
        Some((self.node(i, "QLinearMatMul", "", inputs, out), y.node))
    }

    /// `Gemm` with a constant 8-bit B: `QGemm` with an 8-bit output when a sole
    /// `QuantizeLinear` reads it (returned to be removed), else with a float output (a
    /// classifier's logits), as ONNX Runtime fuses it.
    fn gemm(&mut self, i: usize) -> Option<(NodeProto, Option<usize>)> {
        let n = &self.nodes[i];
        let at = Attrs::new(n);
        if at.int_or("transA", 0).ok()? != 0
            || at.float_or("alpha", 1.0).ok()? != 1.0
            || at.float_or("beta", 1.0).ok()? != 1.0
        {
            return None;
        }
        let trans_b = at.int_or("transB", 0).ok()? != 0;
        let a = self.dq_of(n.input.first()?)?;
        let b = self.dq_of(n.input.get(1)?)?;
        let y = self.sole_q(n.output.first()?);
        let ap = self.params(&a)?;
        if let Some(y) = &y {
            self.params(y)?;
        }
        let (_, dims) = self.constant_meta(b.data)?;
        if dims.len() != 2 {
            return None;
        }
        let (cols, axis) = if trans_b { (dims[0], 0) } else { (dims[1], 1) };
        let ws = self.weight_scales(&b, cols, axis, 2)?;
        let mut inputs = vec![
            a.data.to_string(),
            a.scale.to_string(),
            a.zero_point?.to_string(),
            b.data.to_string(),
            b.scale.to_string(),
            b.zero_point.unwrap_or("").to_string(),
        ];
        match n.input.get(2).filter(|c| !c.is_empty()) {
            Some(c) => {
                let label = self.label(i);
                inputs.push(self.int_bias(c, ap.scale, &ws, cols, &label)?);
            }
            None => inputs.push(String::new()),
        }
        let out = match &y {
            Some(y) => {
                inputs.push(y.scale.to_string());
                inputs.push(y.zero_point?.to_string());
                self.nodes[y.node].output[0].as_str()
            }
            None => n.output.first()?.as_str(),
        };
        let mut node = self.node(i, "QGemm", "com.microsoft", inputs, out);
        node.attribute = vec![int_attr("transB", trans_b as i64)];
        Some((node, y.map(|y| y.node)))
    }

    fn binary(&mut self, i: usize) -> Option<(NodeProto, usize)> {
        let n = &self.nodes[i];
        let (a, b, y) = self.binary_pattern(i)?;
        self.params(&a)?;
        self.params(&b)?;
        self.params(&y)?;
        let inputs: Vec<String> = [
            a.data,
            a.scale,
            a.zero_point?,
            b.data,
            b.scale,
            b.zero_point?,
            y.scale,
            y.zero_point?,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let op = if n.op_type == "Add" { "QLinearAdd" } else { "QLinearMul" };
        let out = self.nodes[y.node].output[0].as_str();
        Some((self.node(i, op, "com.microsoft", inputs, out), y.node))
    }

    fn global_average_pool(&mut self, i: usize) -> Option<(NodeProto, usize)> {
        let n = &self.nodes[i];
        let x = self.dq_of(n.input.first()?)?;
        let y = self.sole_q(n.output.first()?)?;
        self.params(&x)?;
        self.params(&y)?;
        let inputs: Vec<String> = [x.data, x.scale, x.zero_point?, y.scale, y.zero_point?]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = self.nodes[y.node].output[0].as_str();
        let mut node = self.node(i, "QLinearGlobalAveragePool", "com.microsoft", inputs, out);
        node.attribute = vec![int_attr("channels_last", 0)];
        Some((node, y.node))
    }

    /// The only reader of `value` when it has op type `op` (default domain) and `value` is not
    /// a graph output.
    fn sole_reader(&self, value: &str, op: &str) -> Option<usize> {
        if self.graph_outputs.contains(value) {
            return None;
        }
        let c = self.consumers.get(value)?;
        let n = &self.nodes[*c.first()?];
        (c.len() == 1 && n.op_type == op && canonical_domain(&n.domain).is_empty()).then(|| c[0])
    }

    /// Dynamic quantization as ONNX Runtime's and lowbit's quantizers write it:
    /// `MatMulInteger(DynamicQuantizeLinear(x), W) → Cast(float) → Mul(x_scale · w_scale)
    /// [→ Add(bias)]` becomes one `com.microsoft.MatMulIntegerToFloat` (the same f32
    /// operations: `acc · (x_scale · w_scale) + bias`, so bit-identical).
    fn dynamic_matmul(&mut self, i: usize) -> Option<(NodeProto, Vec<usize>)> {
        let n = &self.nodes[i];
        let (a, w) = (n.input.first()?.as_str(), n.input.get(1)?.as_str());
        let &dq = self.producer.get(a)?;
        let dqn = &self.nodes[dq];
        if dqn.op_type != "DynamicQuantizeLinear" || dqn.output.len() < 3 || dqn.output[0] != a {
            return None;
        }
        let a_scale = dqn.output[1].as_str();
        let a_zp = n.input.get(2).map_or("", |s| s.as_str());
        if !a_zp.is_empty() && a_zp != dqn.output[2] {
            return None;
        }
        let (wdt, wdims) = self.constant_meta(w)?;
        if !matches!(wdt, DType::U8 | DType::I8) || wdims.len() != 2 {
            return None;
        }
        let cols = wdims[1];
        let w_zp = n.input.get(3).map_or("", |s| s.as_str());
        if !w_zp.is_empty() {
            let z = self.constant(w_zp)?;
            if z.dtype() != wdt || (z.len() != 1 && z.len() != cols) {
                return None;
            }
        }
        let cast = self.sole_reader(&n.output[0], "Cast")?;
        if Attrs::new(&self.nodes[cast]).int_or("to", 0).ok()? != 1 {
            return None;
        }
        let mul = self.sole_reader(&self.nodes[cast].output[0], "Mul")?;
        let mn = &self.nodes[mul];
        let s = if mn.input[0] == self.nodes[cast].output[0] { &mn.input[1] } else { &mn.input[0] };
        let &sm = self.producer.get(s.as_str())?;
        let smn = &self.nodes[sm];
        if smn.op_type != "Mul" || smn.input.len() != 2 {
            return None;
        }
        let w_scale = match (smn.input[0].as_str(), smn.input[1].as_str()) {
            (x, ws) | (ws, x) if x == a_scale && self.is_constant(ws) => ws,
            _ => return None,
        };
        let wsv = self.constant(w_scale)?;
        if wsv.dtype() != DType::F32 || (wsv.len() != 1 && wsv.len() != cols) {
            return None;
        }
        let mut out = mn.output[0].as_str();
        let mut gone = vec![cast, mul];
        let mut bias = String::new();
        if let Some(add) = self.sole_reader(out, "Add") {
            let an = &self.nodes[add];
            let other = if an.input[0] == out { &an.input[1] } else { &an.input[0] };
            let b = self.constant(other);
            if b.is_some_and(|b| b.dtype() == DType::F32 && b.rank() == 1 && b.len() == cols) {
                bias = other.clone();
                out = an.output[0].as_str();
                gone.push(add);
            }
        }
        let inputs = vec![
            a.to_string(),
            w.to_string(),
            a_scale.to_string(),
            w_scale.to_string(),
            a_zp.to_string(),
            w_zp.to_string(),
            bias,
        ];
        let node = self.node(i, "MatMulIntegerToFloat", "com.microsoft", inputs, out);
        Some((node, gone))
    }

    /// A value-moving op between a DQ and a Q of the same parameters runs on the codes.
    fn moves(&mut self, i: usize) -> Option<(NodeProto, usize)> {
        let n = &self.nodes[i];
        if n.output.len() != 1 {
            return None;
        }
        let x = self.dq_of(n.input.first()?)?;
        let y = self.sole_q(&n.output[0])?;
        let xp = self.params(&x)?;
        if self.params(&y)? != xp {
            return None;
        }
        let mut node = n.clone();
        node.input[0] = x.data.to_string();
        node.output[0] = self.nodes[y.node].output[0].clone();
        Some((node, y.node))
    }

    /// DQ → elementwise op → Q as a 256-entry table, computed by the graph's own kernels.
    fn unary(&mut self, i: usize) -> Option<(NodeProto, usize)> {
        let n = &self.nodes[i];
        if n.output.len() != 1
            || n.input.iter().skip(1).any(|x| !x.is_empty() && !self.is_constant(x))
        {
            return None;
        }
        let x = self.dq_of(n.input.first()?)?;
        let y = self.sole_q(&n.output[0])?;
        self.lookup(i, x, Some(i), y)
    }

    /// DQ → Q with other parameters: a requantizing table.
    fn requantize(&mut self, i: usize) -> Option<(NodeProto, usize)> {
        let n = &self.nodes[i];
        if n.output.len() != 1 {
            return None;
        }
        let x = self.dq_of(&n.output[0])?;
        let y = self.sole_q(&n.output[0])?;
        if self.params(&y) == self.params(&x) {
            // Same parameters: the codes come back unchanged.
            self.params(&x)?;
            let node = self.node(
                i,
                "Identity",
                "",
                vec![x.data.to_string()],
                &self.nodes[y.node].output[0],
            );
            return Some((node, y.node));
        }
        self.lookup(i, x, None, y)
    }

    /// The table of `Q(op(DQ(code)))` for every code, by the nodes' own kernels.
    fn lookup(
        &mut self,
        i: usize,
        x: Qdq<'g>,
        op: Option<usize>,
        y: Qdq<'g>,
    ) -> Option<(NodeProto, usize)> {
        let xp = self.params(&x)?;
        let yp = self.params(&y)?;
        let codes = match xp.dtype {
            DType::U8 => Tensor::from_vec(vec![256], (0..=255u8).collect::<Vec<_>>()).ok()?,
            _ => Tensor::from_vec(vec![256], (0..=255u8).map(|b| b as i8).collect::<Vec<_>>())
                .ok()?,
        };
        let mut v = self.run_node(x.node, &codes)?;
        if let Some(op) = op {
            v = self.run_node(op, &v)?;
        }
        let f = v.as_f32().ok()?;
        let (lo, hi) = lowbit_kernels::quantize::int_range(yp.dtype)?;
        let table: Vec<u8> =
            f.iter().map(|&u| quantize_one(u, yp.scale, yp.zero_point, lo, hi) as u8).collect();
        let t = match yp.dtype {
            DType::U8 => Tensor::from_vec(vec![256], table).ok()?,
            _ => {
                Tensor::from_vec(vec![256], table.into_iter().map(|b| b as i8).collect::<Vec<_>>())
                    .ok()?
            }
        };
        let name = format!("{}::table", self.label(op.unwrap_or(i)));
        self.constants.push((name.clone(), t));
        let out = self.nodes[y.node].output[0].as_str();
        Some((
            self.node(i, "QLinearLookup", LOWBIT_DOMAIN, vec![x.data.to_string(), name], out),
            y.node,
        ))
    }

    /// Runs node `i`'s kernel with `first` as input 0 and its constant other inputs.
    fn run_node(&self, i: usize, first: &Tensor) -> Option<Tensor> {
        let n = &self.nodes[i];
        let consts: Vec<Option<Tensor>> = n
            .input
            .iter()
            .skip(1)
            .map(|x| if x.is_empty() { None } else { self.constant(x) })
            .collect();
        if n.input.iter().skip(1).zip(&consts).any(|(x, c)| !x.is_empty() && c.is_none()) {
            return None;
        }
        let mut constants: Vec<Option<&Tensor>> = vec![None];
        constants.extend(consts.iter().map(|c| c.as_ref()));
        let ctx = BuildCtx {
            node: n,
            attrs: Attrs::new(n),
            opset: self.opsets.get(canonical_domain(&n.domain)).copied().unwrap_or(1),
            constants: constants.clone(),
            subgraphs: None,
        };
        let kernel = (self.reg.get(&n.domain, &n.op_type)?)(&ctx).ok()?;
        let mut args = constants;
        args[0] = Some(first);
        let out = kernel.run(&args).ok()?;
        out.into_iter().next()
    }

    /// An integer conv/matmul whose 8-bit output only feeds a lookup (its activation: Relu,
    /// Clip, … after the requantization) applies the table itself: the op moves to lowbit's
    /// domain with the table as one more input, and the lookup step disappears.
    fn merge_lookups(&self, nodes: &mut [Option<NodeProto>]) {
        let mut readers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for x in n.iter().flat_map(|n| n.input.iter()).filter(|x| !x.is_empty()) {
                readers.entry(x.clone()).or_default().push(i);
            }
        }
        for i in 0..nodes.len() {
            let Some(n) = &nodes[i] else { continue };
            let arity = match (canonical_domain(&n.domain), n.op_type.as_str()) {
                ("", "QLinearConv") | ("com.microsoft", "QGemm") => 9,
                ("", "QLinearMatMul") => 8,
                _ => continue,
            };
            let out = &n.output[0];
            if self.graph_outputs.contains(out.as_str()) || n.input.len() > arity {
                continue;
            }
            let Some(r) = readers.get(out).filter(|r| r.len() == 1).map(|r| r[0]) else {
                continue;
            };
            let Some(l) = &nodes[r] else { continue };
            if l.op_type != "QLinearLookup" || l.domain != LOWBIT_DOMAIN || l.input[0] != *out {
                continue;
            }
            let (table, lout) = (l.input[1].clone(), l.output[0].clone());
            let mut merged = n.clone();
            merged.input.resize(arity, String::new());
            merged.input.push(table);
            merged.output[0] = lout;
            merged.domain = LOWBIT_DOMAIN.to_string();
            nodes[i] = Some(merged);
            nodes[r] = None;
        }
    }

    /// The rewritten node list: replacements in place, then dead DQ/Q nodes dropped.
    fn finish(mut self) -> Fused {
        let mut nodes: Vec<Option<NodeProto>> = (0..self.nodes.len())
            .map(|i| match self.replaced.remove(&i) {
                Some(r) => r,
                None => Some(self.nodes[i].clone()),
            })
            .collect();
        // Drop quantize/dequantize nodes (and the scale products of fused dynamic matmuls)
        // nobody reads any more (repeat: a dead DQ can leave its Q dead).
        loop {
            let mut read: HashSet<&str> = self.graph_outputs.clone();
            for n in nodes.iter().flatten() {
                read.extend(n.input.iter().map(|s| s.as_str()));
            }
            let read: HashSet<String> = read.into_iter().map(str::to_string).collect();
            let mut changed = false;
            for slot in nodes.iter_mut() {
                let dead = slot.as_ref().is_some_and(|n| {
                    matches!(n.op_type.as_str(), "DequantizeLinear" | "QuantizeLinear" | "Mul")
                        && canonical_domain(&n.domain).is_empty()
                        && n.output.iter().all(|o| o.is_empty() || !read.contains(o))
                });
                if dead {
                    *slot = None;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // After the dead DQs are gone, so a conv's output has the lookup as its only reader.
        self.merge_lookups(&mut nodes);
        Fused {
            nodes: nodes.into_iter().flatten().collect(),
            constants: self.constants,
            counts: self.counts,
        }
    }
}
