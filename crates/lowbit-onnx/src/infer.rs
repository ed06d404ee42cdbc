//! Element type and shape inference with symbolic dimensions.
//!
//! [`infer_shapes`] walks the graph in topological order and gives every value a
//! [`ValueType`]: an element type and a shape whose dims are numbers ([`SymDim::Known`]) or
//! names ([`SymDim::Sym`]). Names come from the graph inputs (`batch_size`, `sequence_length`)
//! and are kept through the graph: a MatMul of `[batch, seq, 384]` by `[384, 1536]` gives
//! `[batch, seq, 1536]`. Products of dims are written as `a*b` (`batch*seq` after flattening the
//! two leading dims, `2*seq` after a Concat of two `seq` halves); a dim inference cannot name
//! gets a fresh name `unk__N`, unique within one call.
//!
//! Small constant values (initializers, `Constant` nodes, results of ops on them, at most
//! [`MAX_CONST_ELEMS`] elements) are propagated through the shape arithmetic exporters emit
//! (`Shape -> Gather -> Unsqueeze -> Concat -> Reshape`, `Slice`, `Cast`, `Add`/`Mul`/`Div`,
//! `Equal`/`Where`, `ConstantOfShape`, `Range`), with the elements of a `Shape` result kept
//! symbolic, so a Reshape to `Concat(batch, seq, 12, 32)` gets `[batch, seq, 12, 32]`.
//!
//! Unsupported ops (see [`is_supported_op`]) give values of unknown type, never an error. When
//! inference leaves a type or dim unknown and the model declares one in `graph.value_info`, the
//! declaration fills the gap. Shapes that cannot be right (a MatMul whose inner dims are both
//! known and differ, a Reshape that changes the element count) are errors naming the node.
//!
//! ```
//! use lowbit_onnx::infer::{infer_shapes, SymDim};
//! # use lowbit_onnx::pb::*;
//! # let tensor_type = |dims: Vec<tensor_shape_proto::dimension::Value>| TypeProto {
//! #     value: Some(type_proto::Value::TensorType(type_proto::Tensor {
//! #         elem_type: 1,
//! #         shape: Some(TensorShapeProto { dim: dims.into_iter().map(|v| tensor_shape_proto::Dimension {
//! #             value: Some(v), ..Default::default() }).collect() }),
//! #     })),
//! #     ..Default::default()
//! # };
//! # use tensor_shape_proto::dimension::Value::{DimParam, DimValue};
//! # let model = ModelProto {
//! #     graph: Some(GraphProto {
//! #         node: vec![NodeProto { op_type: "MatMul".into(), input: vec!["x".into(), "w".into()],
//! #             output: vec!["y".into()], ..Default::default() }],
//! #         input: vec![ValueInfoProto { name: "x".into(), r#type: Some(tensor_type(vec![
//! #             DimParam("batch".into()), DimParam("seq".into()), DimValue(384)])), ..Default::default() }],
//! #         initializer: vec![TensorProto { name: "w".into(), dims: vec![384, 1536], data_type: 1,
//! #             ..Default::default() }],
//! #         ..Default::default()
//! #     }),
//! #     ..Default::default()
//! # };
//! // x: float[batch, seq, 384], w: float[384, 1536] initializer, y = MatMul(x, w)
//! let types = infer_shapes(&model).unwrap();
//! let y = &types["y"];
//! assert_eq!(y.shape.as_deref().unwrap(), &[SymDim::sym("batch"), SymDim::sym("seq"), SymDim::Known(1536)]);
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use lowbit_tensor::DType;

use crate::attr::{AttrError, Attrs};
use crate::graph::{node_label, topo_order, GraphError};
use crate::pb::tensor_shape_proto::{dimension, Dimension};
use crate::pb::{
    type_proto, GraphProto, ModelProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::tensor_proto::tensor_from_proto;

/// Constant values with more elements than this are not tracked (shape arithmetic is tiny;
/// weights are not needed for inference).
pub const MAX_CONST_ELEMS: usize = 4096;

/// Opset assumed when a model imports none for the default domain.
const DEFAULT_OPSET: i64 = 21;

/// One dimension: a number, or a name standing for a size known only at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SymDim {
    Known(i64),
    Sym(String),
}

impl SymDim {
    /// A symbolic dim named `name`.
    pub fn sym(name: &str) -> SymDim {
        SymDim::Sym(name.to_string())
    }

    /// The size, if known.
    pub fn known(&self) -> Option<i64> {
        match self {
            SymDim::Known(k) => Some(*k),
            SymDim::Sym(_) => None,
        }
    }

    /// Whether this is a name inference made up (`unk__N`), not one from the model.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, SymDim::Sym(s) if s.starts_with("unk__"))
    }
}

impl fmt::Display for SymDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymDim::Known(k) => write!(f, "{k}"),
            SymDim::Sym(s) => f.write_str(s),
        }
    }
}

/// What inference knows about one value: its element type and shape, each possibly unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueType {
    pub dtype: Option<DType>,
    pub shape: Option<Vec<SymDim>>,
}

impl ValueType {
    pub fn new(dtype: Option<DType>, shape: Option<Vec<SymDim>>) -> ValueType {
        ValueType { dtype, shape }
    }

    /// A tensor of `dtype` with all dims known.
    pub fn known(dtype: DType, dims: &[i64]) -> ValueType {
        ValueType {
            dtype: Some(dtype),
            shape: Some(dims.iter().map(|&d| SymDim::Known(d)).collect()),
        }
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(|s| s.len())
    }

    /// The dims, if the shape is known and every dim is a number.
    pub fn known_shape(&self) -> Option<Vec<i64>> {
        self.shape.as_ref()?.iter().map(SymDim::known).collect()
    }

    /// Reads a `TypeProto`; non-tensor types give an unknown type. Unnamed or negative dims
    /// get fresh `unk__N` names from `fresh`.
    fn from_proto(t: &TypeProto, fresh: &mut Fresh) -> ValueType {
        let Some(type_proto::Value::TensorType(tt)) = &t.value else {
            return ValueType::default();
        };
        let dtype = DType::from_onnx(tt.elem_type);
        let shape = tt.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) if *v >= 0 => SymDim::Known(*v),
                    Some(dimension::Value::DimParam(p)) if !p.is_empty() => SymDim::Sym(p.clone()),
                    _ => fresh.dim(),
                })
                .collect()
        });
        ValueType { dtype, shape }
    }

    /// The `TypeProto` for this type (`None` when the element type is unknown, which ONNX
    /// cannot express). Symbolic dims become `dim_param`s.
    pub fn to_proto(&self) -> Option<TypeProto> {
        let dtype = self.dtype?;
        let shape = self.shape.as_ref().map(|s| TensorShapeProto {
            dim: s
                .iter()
                .map(|d| Dimension {
                    value: Some(match d {
                        SymDim::Known(k) => dimension::Value::DimValue(*k),
                        SymDim::Sym(n) => dimension::Value::DimParam(n.clone()),
                    }),
                    ..Default::default()
                })
                .collect(),
        });
        Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dtype.onnx_id(),
                shape,
            })),
            ..Default::default()
        })
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("?")?,
        }
        match &self.shape {
            Some(s) => {
                let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                write!(f, "[{}]", dims.join(", "))
            }
            None => f.write_str("[?]"),
        }
    }
}

/// Inference errors: an unorderable graph, or a node whose input shapes contradict each other.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Graph(#[from] GraphError),

    #[error("node {node} ({op_type}): {msg}")]
    Node { node: String, op_type: String, msg: String },
}

impl From<AttrError> for InferError {
    fn from(e: AttrError) -> InferError {
        let node =
            if e.node.is_empty() { "<unnamed>".to_string() } else { format!("'{}'", e.node) };
        InferError::Node {
            node,
            op_type: e.op_type,
            msg: format!("attribute '{}' {}", e.attr, e.msg),
        }
    }
}

type Result<T> = std::result::Result<T, InferError>;

/// Infers the type of every value in `model`'s main graph: graph inputs, initializers and
/// every node output. Values of unsupported ops have unknown types.
pub fn infer_shapes(model: &ModelProto) -> Result<HashMap<String, ValueType>> {
    let graph = model.graph.as_ref().ok_or(GraphError::NoGraph)?;
    let opset = crate::graph::opset_version(model, "").unwrap_or(DEFAULT_OPSET);
    let mut inf = Inferer { types: HashMap::new(), consts: HashMap::new(), fresh: Fresh(0), opset };
    inf.run(graph)?;
    Ok(inf.types)
}

/// Writes the inferred type of every node output into `graph.value_info` (replacing entries
/// of the same name), and gives graph outputs that declare no type their inferred one. Values
/// whose element type is unknown are skipped. Returns how many entries were written.
pub fn annotate_value_info(model: &mut ModelProto) -> Result<usize> {
    let types = infer_shapes(model)?;
    let g = model.graph.as_mut().ok_or(GraphError::NoGraph)?;
    let interface: HashSet<String> =
        g.input.iter().chain(&g.output).map(|v| v.name.clone()).collect();
    let mut written = 0;
    for out in &mut g.output {
        if out.r#type.is_none() {
            if let Some(tp) = types.get(&out.name).and_then(ValueType::to_proto) {
                out.r#type = Some(tp);
                written += 1;
            }
        }
    }
    let mut seen = HashSet::new();
    let names: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .filter(|o| !o.is_empty() && !interface.contains(*o) && seen.insert(o.as_str()))
        .cloned()
        .collect();
    for name in names {
        let Some(tp) = types.get(&name).and_then(ValueType::to_proto) else { continue };
        match g.value_info.iter_mut().find(|v| v.name == name) {
            Some(v) => v.r#type = Some(tp),
            None => {
                g.value_info.push(ValueInfoProto { name, r#type: Some(tp), ..Default::default() })
            }
        }
        written += 1;
    }
    Ok(written)
}

/// Whether inference has a rule for `op_type` in `domain` (`""`/`ai.onnx`, or `com.microsoft`
/// for its Q/DQ ops).
pub fn is_supported_op(domain: &str, op_type: &str) -> bool {
    match domain {
        "" | "ai.onnx" => [UNARY_SAME, BINARY_SAME, BOOL_OUT, REDUCE, SUPPORTED]
            .iter()
            .any(|family| family.contains(&op_type)),
        "com.microsoft" => matches!(op_type, "QuantizeLinear" | "DequantizeLinear"),
        _ => false,
    }
}

const UNARY_SAME: &[&str] = &[
    "Abs",
    "Neg",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Erf",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Softplus",
    "Softsign",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "ThresholdedRelu",
    "Mish",
    "Clip",
    "Identity",
    "Softmax",
    "LogSoftmax",
    "Hardmax",
    "InstanceNormalization",
    "GroupNormalization",
    "LpNormalization",
    "MeanVarianceNormalization",
    "LRN",
    "Shrink",
    "CumSum",
    "BitwiseNot",
    "Trilu",
    "ReverseSequence",
    "ScatterND",
    "ScatterElements",
    "Scatter",
    "Swish",
    "RMSNormalization",
    "CumProd",
    "RotaryEmbedding",
];
const BINARY_SAME: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Mod",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "PRelu",
];
const BOOL_OUT: &[&str] =
    &["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"];
const REDUCE: &[&str] = &[
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];
/// Ops with a rule beyond the families listed above.
const SUPPORTED: &[&str] = &[
    // elementwise ops outside the lists above
    "GridSample",
    "RoiAlign",
    "NonMaxSuppression",
    "Not",
    "IsNaN",
    "IsInf",
    "Where",
    "Cast",
    "CastLike",
    // linear algebra, nn
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "Gemm",
    "Conv",
    "ConvInteger",
    "QLinearConv",
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
    "BatchNormalization",
    "LayerNormalization",
    "Dropout",
    "LSTM",
    "GRU",
    "RNN",
    "Det",
    // shape manipulation
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Expand",
    "Tile",
    "Shape",
    "Size",
    "ConstantOfShape",
    "Constant",
    "Range",
    "Pad",
    "Resize",
    "Upsample",
    "DepthToSpace",
    "SpaceToDepth",
    "OneHot",
    "TopK",
    "NonZero",
    "Compress",
    "EyeLike",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Bernoulli",
    // reductions
    "ArgMax",
    "ArgMin",
    // quantization
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
];

/// Hands out fresh `unk__N` names.
struct Fresh(usize);

impl Fresh {
    fn dim(&mut self) -> SymDim {
        self.0 += 1;
        SymDim::Sym(format!("unk__{}", self.0 - 1))
    }
}

// ---------------------------------------------------------------------------------------------
// Symbolic dim arithmetic: a dim is a monomial `coef * s1 * s2 * …`.

#[derive(Clone, Debug, PartialEq)]
struct Mono {
    coef: i64,
    syms: Vec<String>, // sorted
}

impl Mono {
    fn int(k: i64) -> Mono {
        Mono { coef: k, syms: Vec::new() }
    }

    fn from_dim(d: &SymDim) -> Mono {
        match d {
            SymDim::Known(k) => Mono::int(*k),
            SymDim::Sym(s) => {
                let mut m = Mono::int(1);
                for part in s.split('*') {
                    match part.parse::<i64>() {
                        Ok(k) => m.coef = m.coef.saturating_mul(k),
                        Err(_) => m.syms.push(part.to_string()),
                    }
                }
                m.syms.sort();
                m
            }
        }
    }

    fn to_dim(&self) -> SymDim {
        if self.syms.is_empty() || self.coef == 0 {
            return SymDim::Known(self.coef);
        }
        let names = self.syms.join("*");
        SymDim::Sym(if self.coef == 1 { names } else { format!("{}*{names}", self.coef) })
    }

    fn as_int(&self) -> Option<i64> {
        self.syms.is_empty().then_some(self.coef)
    }

    fn mul(&self, o: &Mono) -> Mono {
        let mut syms: Vec<String> = self.syms.iter().chain(&o.syms).cloned().collect();
        syms.sort();
        Mono { coef: self.coef.saturating_mul(o.coef), syms }
    }

    /// Exact division, when the divisor's symbols all occur in the dividend.
    fn div(&self, o: &Mono) -> Option<Mono> {
        if o.coef == 0 || self.coef % o.coef != 0 {
            return None;
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let p = syms.iter().position(|x| x == s)?;
            syms.remove(p);
        }
        Some(Mono { coef: self.coef / o.coef, syms })
    }

    fn add(&self, o: &Mono) -> Option<Mono> {
        if self.coef == 0 {
            return Some(o.clone());
        }
        if o.coef == 0 {
            return Some(self.clone());
        }
        (self.syms == o.syms).then(|| Mono { coef: self.coef + o.coef, syms: self.syms.clone() })
    }

    fn neg(&self) -> Mono {
        Mono { coef: -self.coef, syms: self.syms.clone() }
    }
}

fn dim_mul(a: &SymDim, b: &SymDim) -> SymDim {
    Mono::from_dim(a).mul(&Mono::from_dim(b)).to_dim()
}

fn dims_product(dims: &[SymDim]) -> SymDim {
    dims.iter().fold(SymDim::Known(1), |acc, d| dim_mul(&acc, d))
}

// ---------------------------------------------------------------------------------------------
// Constant values.

#[derive(Clone, Debug, PartialEq)]
enum Elem {
    /// Integers and bools (0/1); may be symbolic (elements of a `Shape` result).
    I(Mono),
    F(f64),
}

impl Elem {
    fn int(&self) -> Option<i64> {
        match self {
            Elem::I(m) => m.as_int(),
            Elem::F(_) => None,
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Elem::I(m) => m.as_int().map(|k| k as f64),
            Elem::F(f) => Some(*f),
        }
    }
}

/// A small tensor whose contents are known (possibly symbolically).
#[derive(Clone, Debug, PartialEq)]
struct Const {
    shape: Vec<usize>,
    data: Vec<Elem>,
}

impl Const {
    fn ints(&self) -> Option<Vec<i64>> {
        self.data.iter().map(Elem::int).collect()
    }

    fn dims(&self) -> Option<Vec<SymDim>> {
        self.data
            .iter()
            .map(|e| match e {
                Elem::I(m) => Some(m.to_dim()),
                Elem::F(_) => None,
            })
            .collect()
    }

    fn from_proto(t: &TensorProto) -> Option<Const> {
        let n: i64 = t.dims.iter().product();
        if n < 0 || n as usize > MAX_CONST_ELEMS {
            return None;
        }
        let tensor = tensor_from_proto(t).ok()?;
        let shape = tensor.shape().to_vec();
        let data = if tensor.dtype().is_float() {
            tensor.to_f64_vec().ok()?.into_iter().map(Elem::F).collect()
        } else if tensor.dtype() == DType::String {
            return None;
        } else {
            tensor.to_i64_vec().ok()?.into_iter().map(|k| Elem::I(Mono::int(k))).collect()
        };
        Some(Const { shape, data })
    }

    fn reshaped(&self, shape: &[SymDim]) -> Option<Const> {
        let shape: Vec<usize> = shape
            .iter()
            .map(|d| d.known().and_then(|k| usize::try_from(k).ok()))
            .collect::<Option<_>>()?;
        (shape.iter().product::<usize>() == self.data.len())
            .then(|| Const { shape, data: self.data.clone() })
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Flat indices into a tensor of `shape` of the elements at the cartesian product of
/// `picks[axis]` (row-major order).
fn pick_indices(shape: &[usize], picks: &[Vec<usize>]) -> Vec<usize> {
    let st = strides(shape);
    let mut out = vec![0usize];
    for (ax, p) in picks.iter().enumerate() {
        let stride = st[ax];
        out = out.iter().flat_map(|&base| p.iter().map(move |&i| base + i * stride)).collect();
    }
    out
}

/// For each element of a tensor of `out` shape, the flat index of the element of a tensor of
/// `shape` that broadcasts to it.
fn broadcast_indices(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let off = out.len() - shape.len();
    let picks: Vec<Vec<usize>> = out
        .iter()
        .enumerate()
        .map(
            |(ax, &n)| {
                if ax < off || shape[ax - off] == 1 {
                    vec![0; n]
                } else {
                    (0..n).collect()
                }
            },
        )
        .collect();
    let mut padded = vec![1usize; off];
    padded.extend_from_slice(shape);
    pick_indices(&padded, &picks)
}

// ---------------------------------------------------------------------------------------------
// The walk.

struct Inferer {
    types: HashMap<String, ValueType>,
    consts: HashMap<String, Const>,
    fresh: Fresh,
    opset: i64,
}

/// The result for one node output.
#[derive(Default)]
struct Out {
    ty: ValueType,
    val: Option<Const>,
}

fn out(dtype: Option<DType>, shape: Option<Vec<SymDim>>) -> Out {
    Out { ty: ValueType { dtype, shape }, val: None }
}

impl Inferer {
    fn run(&mut self, g: &GraphProto) -> Result<()> {
        for v in &g.input {
            let t = v
                .r#type
                .as_ref()
                .map(|t| ValueType::from_proto(t, &mut self.fresh))
                .unwrap_or_default();
            self.types.insert(v.name.clone(), t);
        }
        for t in &g.initializer {
            let vt = ValueType {
                dtype: DType::from_onnx(t.data_type),
                shape: Some(t.dims.iter().map(|&d| SymDim::Known(d)).collect()),
            };
            self.types.insert(t.name.clone(), vt);
            if let Some(c) = Const::from_proto(t) {
                self.consts.insert(t.name.clone(), c);
            }
        }
        let hints: HashMap<&str, &ValueInfoProto> =
            g.value_info.iter().map(|v| (v.name.as_str(), v)).collect();
        for i in topo_order(g)? {
            let node = &g.node[i];
            let label = node_label(node, i);
            let outs = self.infer_node(node, &label)?;
            for (k, name) in node.output.iter().enumerate() {
                if name.is_empty() {
                    continue;
                }
                let Out { mut ty, val } = outs
                    .get(k)
                    .map(|o| Out { ty: o.ty.clone(), val: o.val.clone() })
                    .unwrap_or_default();
                if let Some(hint) = hints.get(name.as_str()).and_then(|v| v.r#type.as_ref()) {
                    let hint = ValueType::from_proto(hint, &mut self.fresh);
                    merge_hint(&mut ty, hint);
                }
                if let Some(v) = val {
                    self.consts.insert(name.clone(), v);
                }
                self.types.insert(name.clone(), ty);
            }
        }
        Ok(())
    }

    fn infer_node(&mut self, node: &NodeProto, label: &str) -> Result<Vec<Out>> {
        if !is_supported_op(&node.domain, &node.op_type) {
            return Ok(Vec::new());
        }
        let ins: Vec<Option<ValueType>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { self.types.get(n).cloned() })
            .collect();
        let cins: Vec<Option<Const>> = node
            .input
            .iter()
            .map(|n| if n.is_empty() { None } else { self.consts.get(n).cloned() })
            .collect();
        let mut cx = Cx {
            node,
            label,
            attrs: Attrs::new(node),
            ins,
            cins,
            opset: self.opset,
            fresh: &mut self.fresh,
        };
        cx.infer()
    }
}

/// Fills what inference left unknown from a declared type.
fn merge_hint(ty: &mut ValueType, hint: ValueType) {
    if ty.dtype.is_none() {
        ty.dtype = hint.dtype;
    }
    match (&mut ty.shape, hint.shape) {
        (None, h) => ty.shape = h,
        (Some(s), Some(h)) if s.len() == h.len() => {
            for (d, hd) in s.iter_mut().zip(h) {
                if d.is_anonymous() && !hd.is_anonymous() {
                    *d = hd;
                }
            }
        }
        _ => {}
    }
}

/// Strides, dilations, pads (all begins, then all ends) and `auto_pad` of a conv or pool.
type Window = (Vec<i64>, Vec<i64>, Vec<i64>, String);

/// Everything one node's inference needs.
struct Cx<'a> {
    node: &'a NodeProto,
    label: &'a str,
    attrs: Attrs<'a>,
    ins: Vec<Option<ValueType>>,
    cins: Vec<Option<Const>>,
    opset: i64,
    fresh: &'a mut Fresh,
}

impl Cx<'_> {
    fn err(&self, msg: impl Into<String>) -> InferError {
        InferError::Node {
            node: self.label.to_string(),
            op_type: self.node.op_type.clone(),
            msg: msg.into(),
        }
    }

    fn dtype(&self, i: usize) -> Option<DType> {
        self.ins.get(i)?.as_ref()?.dtype
    }

    fn shape(&self, i: usize) -> Option<Vec<SymDim>> {
        self.ins.get(i)?.as_ref()?.shape.clone()
    }

    fn rank(&self, i: usize) -> Option<usize> {
        self.ins.get(i)?.as_ref()?.rank()
    }

    fn has_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|s| !s.is_empty())
    }

    fn cval(&self, i: usize) -> Option<&Const> {
        self.cins.get(i)?.as_ref()
    }

    fn ints(&self, i: usize) -> Option<Vec<i64>> {
        self.cval(i)?.ints()
    }

    fn int_scalar(&self, i: usize) -> Option<i64> {
        let v = self.ints(i)?;
        (v.len() == 1).then(|| v[0])
    }

    fn num_scalar(&self, i: usize) -> Option<f64> {
        let c = self.cval(i)?;
        (c.data.len() == 1).then(|| c.data[0].num()).flatten()
    }

    fn fresh(&mut self) -> SymDim {
        self.fresh.dim()
    }

    fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        if axis < -r || axis >= r {
            return Err(self.err(format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
    }

    fn axes(&self, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
        axes.iter().map(|&a| self.axis(a, rank)).collect()
    }

    /// Numpy-style broadcast of several shapes.
    fn broadcast(&mut self, shapes: &[Vec<SymDim>]) -> Result<Vec<SymDim>> {
        let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut outd = Vec::with_capacity(rank);
        for ax in 0..rank {
            let dims: Vec<&SymDim> = shapes
                .iter()
                .filter(|s| ax + s.len() >= rank)
                .map(|s| &s[ax + s.len() - rank])
                .filter(|d| **d != SymDim::Known(1))
                .collect();
            let known: Vec<i64> = dims.iter().filter_map(|d| d.known()).collect();
            let d = if let Some(&k) = known.first() {
                if let Some(&other) = known.iter().find(|&&o| o != k) {
                    let shown: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
                    return Err(self.err(format!(
                        "shapes {} do not broadcast: dims {k} and {other}",
                        shown.join(" and ")
                    )));
                }
                SymDim::Known(k)
            } else if dims.is_empty() {
                SymDim::Known(1)
            } else {
                let mut named: Vec<&SymDim> =
                    dims.iter().copied().filter(|d| !d.is_anonymous()).collect();
                named.dedup();
                if dims.iter().all(|d| *d == dims[0]) {
                    dims[0].clone()
                } else if named.len() == 1 {
                    named[0].clone()
                } else {
                    self.fresh()
                }
            };
            outd.push(d);
        }
        Ok(outd)
    }

    fn infer(&mut self) -> Result<Vec<Out>> {
        let op = self.node.op_type.as_str();
        let n_out = self.node.output.len();
        let x_dtype = self.dtype(0);
        let x_shape = self.shape(0);
        if UNARY_SAME.contains(&op) {
            let val = self.cval(0).and_then(|c| fold_unary(op, c));
            return Ok(vec![Out { ty: ValueType::new(x_dtype, x_shape), val }]);
        }
        if BINARY_SAME.contains(&op) || BOOL_OUT.contains(&op) {
            let shape = self.broadcast_inputs(0..self.node.input.len())?;
            let dtype = if BOOL_OUT.contains(&op) { Some(DType::Bool) } else { x_dtype };
            let val = shape.as_ref().and_then(|s| self.fold_binary(op, s));
            if op == "PRelu" {
                return Ok(vec![out(dtype, x_shape)]);
            }
            return Ok(vec![Out { ty: ValueType::new(dtype, shape), val }]);
        }
        if REDUCE.contains(&op) {
            return self.reduce();
        }
        match op {
            "Not" | "IsNaN" | "IsInf" => Ok(vec![out(Some(DType::Bool), x_shape)]),
            "Where" => {
                let shape = self.broadcast_inputs(0..3)?;
                let val = shape.as_ref().and_then(|s| self.fold_where(s));
                Ok(vec![Out { ty: ValueType::new(self.dtype(1).or(self.dtype(2)), shape), val }])
            }
            "Cast" | "CastLike" => {
                let to = if op == "Cast" {
                    DType::from_onnx(self.attrs.req_int("to")? as i32)
                } else {
                    self.dtype(1)
                };
                let val = to.and_then(|d| self.cval(0).and_then(|c| cast_const(c, d)));
                Ok(vec![Out { ty: ValueType::new(to, x_shape), val }])
            }
            "Dropout" => {
                let mask = out(Some(DType::Bool), x_shape.clone());
                Ok(vec![Out { ty: ValueType::new(x_dtype, x_shape), val: None }, mask])
            }
            "BatchNormalization" => {
                let stat = || out(self.dtype(3), self.shape(3));
                Ok(vec![out(x_dtype, x_shape), stat(), stat()])
            }
            "LayerNormalization" => {
                let axis = self.attrs.int_or("axis", -1)?;
                let stat_shape = match &x_shape {
                    Some(s) => {
                        let a = self.axis(axis, s.len())?;
                        let mut st = s.clone();
                        st[a..].iter_mut().for_each(|d| *d = SymDim::Known(1));
                        Some(st)
                    }
                    None => None,
                };
                let stash = DType::from_onnx(self.attrs.int_or("stash_type", 1)? as i32);
                Ok(vec![
                    out(x_dtype, x_shape),
                    out(stash, stat_shape.clone()),
                    out(stash, stat_shape),
                ])
            }
            "MatMul" | "MatMulInteger" => {
                let shape = self.matmul(0, 1)?;
                let dtype = if op == "MatMul" { x_dtype } else { Some(DType::I32) };
                Ok(vec![out(dtype, shape)])
            }
            "QLinearMatMul" => Ok(vec![out(self.dtype(7), self.matmul(0, 3)?)]),
            "Gemm" => self.gemm(),
            "Conv" | "ConvInteger" => {
                let dtype = if op == "Conv" { x_dtype } else { Some(DType::I32) };
                Ok(vec![out(dtype, self.conv(0, 1, false)?)])
            }
            "QLinearConv" => Ok(vec![out(self.dtype(7), self.conv(0, 3, false)?)]),
            "ConvTranspose" => Ok(vec![out(x_dtype, self.conv(0, 1, true)?)]),
            "MaxPool" | "AveragePool" | "LpPool" => {
                let shape = self.pool()?;
                Ok(vec![out(x_dtype, shape.clone()), out(Some(DType::I64), shape)])
            }
            "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => {
                let shape = x_shape.map(|s| {
                    s.iter()
                        .enumerate()
                        .map(|(i, d)| if i < 2 { d.clone() } else { SymDim::Known(1) })
                        .collect()
                });
                Ok(vec![out(x_dtype, shape)])
            }
            "LSTM" | "GRU" | "RNN" => self.rnn(),
            "Det" => {
                Ok(vec![out(x_dtype, x_shape.map(|s| s[..s.len().saturating_sub(2)].to_vec()))])
            }
            "Reshape" => self.reshape(),
            "Flatten" => {
                let Some(s) = x_shape else { return Ok(vec![out(x_dtype, None)]) };
                let axis = self.attrs.int_or("axis", 1)?;
                let a = if axis == s.len() as i64 { s.len() } else { self.axis(axis, s.len())? };
                let shape = vec![dims_product(&s[..a]), dims_product(&s[a..])];
                let val = self.cval(0).and_then(|c| c.reshaped(&shape));
                Ok(vec![Out { ty: ValueType::new(x_dtype, Some(shape)), val }])
            }
            "Transpose" => {
                let Some(s) = x_shape else { return Ok(vec![out(x_dtype, None)]) };
                let perm =
                    self.attrs.ints("perm")?.unwrap_or_else(|| (0..s.len() as i64).rev().collect());
                if perm.len() != s.len() {
                    return Err(self
                        .err(format!("perm {perm:?} does not fit input shape {}", fmt_shape(&s))));
                }
                let perm = self.axes(&perm, s.len())?;
                Ok(vec![out(x_dtype, Some(perm.iter().map(|&p| s[p].clone()).collect()))])
            }
            "Squeeze" => self.squeeze(),
            "Unsqueeze" => self.unsqueeze(),
            "Concat" => self.concat(),
            "Split" => self.split(n_out),
            "Slice" => self.slice(),
            "Gather" => self.gather(),
            "GatherElements" => Ok(vec![out(x_dtype, self.shape(1))]),
            "GatherND" => {
                let shape = match (x_shape, self.shape(1)) {
                    (Some(d), Some(ix)) if !ix.is_empty() => match ix[ix.len() - 1].known() {
                        Some(k) => {
                            let b = self.attrs.int_or("batch_dims", 0)? as usize;
                            let mut s = ix[..ix.len() - 1].to_vec();
                            s.extend(d.iter().skip(b + k as usize).cloned());
                            Some(s)
                        }
                        None => None,
                    },
                    _ => None,
                };
                Ok(vec![out(x_dtype, shape)])
            }
            "Expand" => {
                let shape = match (x_shape, self.cval(1).and_then(Const::dims)) {
                    (Some(s), Some(t)) => Some(self.broadcast(&[s, t])?),
                    (None, Some(t)) => Some(
                        t.iter()
                            .map(|d| if *d == SymDim::Known(1) { self.fresh() } else { d.clone() })
                            .collect(),
                    ),
                    (Some(_), None) => {
                        let r = self.shape(1).and_then(|s| s.first().and_then(SymDim::known));
                        let r = r.map(|r| r.max(self.rank(0).unwrap_or(0) as i64));
                        r.map(|r| (0..r).map(|_| self.fresh()).collect())
                    }
                    _ => None,
                };
                Ok(vec![out(x_dtype, shape)])
            }
            "Tile" => {
                let shape = match (x_shape, self.cval(1).and_then(Const::dims)) {
                    (Some(s), Some(r)) if r.len() == s.len() => {
                        Some(s.iter().zip(&r).map(|(d, k)| dim_mul(d, k)).collect())
                    }
                    (Some(s), None) => Some(s.iter().map(|_| self.fresh()).collect()),
                    _ => None,
                };
                Ok(vec![out(x_dtype, shape)])
            }
            "Shape" => {
                let start = self.attrs.int_or("start", 0)?;
                let end = self.attrs.int("end")?;
                match x_shape {
                    Some(s) => {
                        let r = s.len() as i64;
                        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                        let (a, b) = (clamp(start), clamp(end.unwrap_or(r)));
                        let dims: Vec<SymDim> = if a < b { s[a..b].to_vec() } else { Vec::new() };
                        let val = Const {
                            shape: vec![dims.len()],
                            data: dims.iter().map(|d| Elem::I(Mono::from_dim(d))).collect(),
                        };
                        Ok(vec![Out {
                            ty: ValueType::known(DType::I64, &[dims.len() as i64]),
                            val: Some(val),
                        }])
                    }
                    None => Ok(vec![out(Some(DType::I64), Some(vec![self.fresh()]))]),
                }
            }
            "Size" => {
                let val = x_shape.map(|s| Const {
                    shape: vec![],
                    data: vec![Elem::I(Mono::from_dim(&dims_product(&s)))],
                });
                Ok(vec![Out { ty: ValueType::known(DType::I64, &[]), val }])
            }
            "Constant" => self.constant(),
            "ConstantOfShape" => {
                let value = self.attrs.tensor("value")?;
                let dtype = value.map_or(Some(DType::F32), |t| DType::from_onnx(t.data_type));
                let fill = match value {
                    Some(t) => Const::from_proto(t).and_then(|c| c.data.first().cloned()),
                    None => Some(Elem::F(0.0)),
                };
                let dims = self.cval(0).and_then(Const::dims);
                let shape = match (&dims, self.shape(0)) {
                    (Some(d), _) => Some(d.clone()),
                    (None, Some(s)) => s
                        .first()
                        .and_then(SymDim::known)
                        .map(|n| (0..n).map(|_| self.fresh()).collect()),
                    _ => None,
                };
                let val = match (&shape, fill) {
                    (Some(s), Some(f)) => {
                        let n: Option<Vec<usize>> =
                            s.iter().map(|d| d.known().map(|k| k as usize)).collect();
                        n.filter(|n| n.iter().product::<usize>() <= MAX_CONST_ELEMS)
                            .map(|n| Const { data: vec![f; n.iter().product()], shape: n })
                    }
                    _ => None,
                };
                Ok(vec![Out { ty: ValueType::new(dtype, shape), val }])
            }
            "Range" => {
                let (s, l, d) = (self.num_scalar(0), self.num_scalar(1), self.num_scalar(2));
                match (s, l, d) {
                    (Some(s), Some(l), Some(d)) if d != 0.0 => {
                        let n = ((l - s) / d).ceil().max(0.0) as usize;
                        let is_float = x_dtype.is_some_and(DType::is_float);
                        let val = (n <= MAX_CONST_ELEMS).then(|| Const {
                            shape: vec![n],
                            data: (0..n)
                                .map(|i| {
                                    let v = s + d * i as f64;
                                    if is_float {
                                        Elem::F(v)
                                    } else {
                                        Elem::I(Mono::int(v as i64))
                                    }
                                })
                                .collect(),
                        });
                        Ok(vec![Out {
                            ty: ValueType::new(x_dtype, Some(vec![SymDim::Known(n as i64)])),
                            val,
                        }])
                    }
                    _ => Ok(vec![out(x_dtype, Some(vec![self.fresh()]))]),
                }
            }
            "Pad" => self.pad(),
            "Resize" | "Upsample" => self.resize(),
            "DepthToSpace" | "SpaceToDepth" => {
                let b = SymDim::Known(self.attrs.req_int("blocksize")?);
                let bb = dim_mul(&b, &b);
                let shape = match x_shape {
                    Some(s) if s.len() == 4 => {
                        let div = |d: &SymDim, k: &SymDim, cx: &mut Self| {
                            Mono::from_dim(d)
                                .div(&Mono::from_dim(k))
                                .map(|m| m.to_dim())
                                .unwrap_or_else(|| cx.fresh())
                        };
                        Some(if op == "DepthToSpace" {
                            vec![
                                s[0].clone(),
                                div(&s[1], &bb, self),
                                dim_mul(&s[2], &b),
                                dim_mul(&s[3], &b),
                            ]
                        } else {
                            vec![
                                s[0].clone(),
                                dim_mul(&s[1], &bb),
                                div(&s[2], &b, self),
                                div(&s[3], &b, self),
                            ]
                        })
                    }
                    _ => None,
                };
                Ok(vec![out(x_dtype, shape)])
            }
            "OneHot" => {
                let depth = self.num_scalar(1).map(|d| SymDim::Known(d as i64));
                let axis = self.attrs.int_or("axis", -1)?;
                let shape = match x_shape {
                    Some(mut s) => {
                        let a = self.axis(axis, s.len() + 1)?;
                        let d = depth.unwrap_or_else(|| self.fresh());
                        s.insert(a, d);
                        Some(s)
                    }
                    None => None,
                };
                Ok(vec![out(self.dtype(2), shape)])
            }
            "TopK" => {
                let k = if self.has_input(1) { self.int_scalar(1) } else { self.attrs.int("k")? };
                let axis = self.attrs.int_or("axis", -1)?;
                let shape = match x_shape {
                    Some(mut s) => {
                        let a = self.axis(axis, s.len())?;
                        s[a] = k.map(SymDim::Known).unwrap_or_else(|| self.fresh());
                        Some(s)
                    }
                    None => None,
                };
                Ok(vec![out(x_dtype, shape.clone()), out(Some(DType::I64), shape)])
            }
            "GridSample" => {
                let shape = match (x_shape, self.shape(1)) {
                    (Some(x), Some(g)) if x.len() == g.len() && x.len() >= 3 => {
                        let mut s = vec![x[0].clone(), x[1].clone()];
                        s.extend(g[1..g.len() - 1].iter().cloned());
                        Some(s)
                    }
                    _ => None,
                };
                Ok(vec![out(x_dtype, shape)])
            }
            "RoiAlign" => {
                let oh = self.attrs.int_or("output_height", 1)?;
                let ow = self.attrs.int_or("output_width", 1)?;
                let rois = self.shape(1).and_then(|s| s.first().cloned());
                let shape = match (x_shape, rois) {
                    (Some(x), Some(n)) if x.len() == 4 => {
                        Some(vec![n, x[1].clone(), SymDim::Known(oh), SymDim::Known(ow)])
                    }
                    _ => None,
                };
                Ok(vec![out(x_dtype, shape)])
            }
            "NonMaxSuppression" => {
                Ok(vec![out(Some(DType::I64), Some(vec![self.fresh(), SymDim::Known(3)]))])
            }
            "NonZero" => {
                let shape = self.rank(0).map(|r| vec![SymDim::Known(r as i64), self.fresh()]);
                Ok(vec![out(Some(DType::I64), shape)])
            }
            "Compress" => {
                let shape = match self.attrs.int("axis")? {
                    None => Some(vec![self.fresh()]),
                    Some(axis) => match x_shape {
                        Some(mut s) => {
                            let a = self.axis(axis, s.len())?;
                            s[a] = self.fresh();
                            Some(s)
                        }
                        None => None,
                    },
                };
                Ok(vec![out(x_dtype, shape)])
            }
            "EyeLike" | "RandomNormalLike" | "RandomUniformLike" | "Bernoulli" => {
                let dtype = match self.attrs.int("dtype")? {
                    Some(d) => DType::from_onnx(d as i32),
                    None => x_dtype,
                };
                Ok(vec![out(dtype, x_shape)])
            }
            "RandomNormal" | "RandomUniform" => {
                let dtype = DType::from_onnx(self.attrs.int_or("dtype", 1)? as i32);
                let shape =
                    self.attrs.ints("shape")?.map(|s| s.into_iter().map(SymDim::Known).collect());
                Ok(vec![out(dtype, shape)])
            }
            "ArgMax" | "ArgMin" => {
                let axis = self.attrs.int_or("axis", 0)?;
                let keep = self.attrs.int_or("keepdims", 1)? != 0;
                let shape = match x_shape {
                    Some(mut s) => {
                        let a = self.axis(axis, s.len())?;
                        if keep {
                            s[a] = SymDim::Known(1);
                        } else {
                            s.remove(a);
                        }
                        Some(s)
                    }
                    None => None,
                };
                Ok(vec![out(Some(DType::I64), shape)])
            }
            "QuantizeLinear" => {
                let dtype = if self.has_input(2) {
                    self.dtype(2)
                } else {
                    match self.attrs.int_or("output_dtype", 0)? {
                        0 => Some(DType::U8),
                        d => DType::from_onnx(d as i32),
                    }
                };
                Ok(vec![out(dtype, x_shape)])
            }
            "DequantizeLinear" => {
                let dtype = match self.attrs.int_or("output_dtype", 0)? {
                    0 => self.dtype(1).or(Some(DType::F32)),
                    d => DType::from_onnx(d as i32),
                };
                Ok(vec![out(dtype, x_shape)])
            }
            "DynamicQuantizeLinear" => Ok(vec![
                out(Some(DType::U8), x_shape),
                out(Some(DType::F32), Some(vec![])),
                out(Some(DType::U8), Some(vec![])),
            ]),
            _ => Ok(Vec::new()),
        }
    }

    fn broadcast_inputs(&mut self, inputs: std::ops::Range<usize>) -> Result<Option<Vec<SymDim>>> {
        let mut shapes = Vec::new();
        for i in inputs {
            if !self.has_input(i) {
                continue;
            }
            match self.shape(i) {
                Some(s) => shapes.push(s),
                None => return Ok(None),
            }
        }
        if shapes.is_empty() {
            return Ok(None);
        }
        self.broadcast(&shapes).map(Some)
    }

    // ---- constant folding -------------------------------------------------------------------

    fn const_operands(
        &self,
        out_shape: &[SymDim],
        n: usize,
    ) -> Option<(Vec<usize>, Vec<Vec<Elem>>)> {
        let shape: Vec<usize> =
            out_shape.iter().map(|d| d.known().map(|k| k as usize)).collect::<Option<_>>()?;
        if shape.iter().product::<usize>() > MAX_CONST_ELEMS {
            return None;
        }
        let mut ops = Vec::new();
        for i in 0..n {
            let c = self.cval(i)?;
            let idx = broadcast_indices(&c.shape, &shape);
            ops.push(idx.iter().map(|&j| c.data[j].clone()).collect());
        }
        Some((shape, ops))
    }

    fn fold_binary(&self, op: &str, out_shape: &[SymDim]) -> Option<Const> {
        if self.node.input.len() != 2 {
            return None;
        }
        let (shape, ops) = self.const_operands(out_shape, 2)?;
        let data = ops[0]
            .iter()
            .zip(&ops[1])
            .map(|(a, b)| binary_elem(op, a, b))
            .collect::<Option<Vec<_>>>()?;
        Some(Const { shape, data })
    }

    fn fold_where(&self, out_shape: &[SymDim]) -> Option<Const> {
        let (shape, ops) = self.const_operands(out_shape, 3)?;
        let data = (0..ops[0].len())
            .map(|i| {
                Some(if ops[0][i].int()? != 0 { ops[1][i].clone() } else { ops[2][i].clone() })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Const { shape, data })
    }

    // ---- op families ------------------------------------------------------------------------

    fn matmul(&mut self, a: usize, b: usize) -> Result<Option<Vec<SymDim>>> {
        let (Some(mut sa), Some(mut sb)) = (self.shape(a), self.shape(b)) else { return Ok(None) };
        if sa.is_empty() || sb.is_empty() {
            return Err(self.err("MatMul inputs must not be scalars"));
        }
        let (va, vb) = (sa.len() == 1, sb.len() == 1);
        if va {
            sa.insert(0, SymDim::Known(1));
        }
        if vb {
            sb.push(SymDim::Known(1));
        }
        let (ka, kb) = (&sa[sa.len() - 1], &sb[sb.len() - 2]);
        if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
            if x != y {
                return Err(self.err(format!(
                    "inner dims differ: {} x {}",
                    fmt_shape(&self.shape(a).unwrap_or_default()),
                    fmt_shape(&self.shape(b).unwrap_or_default())
                )));
            }
        }
        let mut shape =
            self.broadcast(&[sa[..sa.len() - 2].to_vec(), sb[..sb.len() - 2].to_vec()])?;
        if !va {
            shape.push(sa[sa.len() - 2].clone());
        }
        if !vb {
            shape.push(sb[sb.len() - 1].clone());
        }
        Ok(Some(shape))
    }

    fn gemm(&mut self) -> Result<Vec<Out>> {
        let ta = self.attrs.int_or("transA", 0)? != 0;
        let tb = self.attrs.int_or("transB", 0)? != 0;
        let shape = match (self.shape(0), self.shape(1)) {
            (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => {
                let (m, ka) = if ta { (&a[1], &a[0]) } else { (&a[0], &a[1]) };
                let (kb, n) = if tb { (&b[1], &b[0]) } else { (&b[0], &b[1]) };
                if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
                    if x != y {
                        return Err(self.err(format!(
                            "inner dims differ: A {} (transA={}) and B {} (transB={})",
                            fmt_shape(&a),
                            ta as u8,
                            fmt_shape(&b),
                            tb as u8
                        )));
                    }
                }
                Some(vec![m.clone(), n.clone()])
            }
            (Some(a), _) | (_, Some(a)) if a.len() != 2 => {
                return Err(self.err(format!("Gemm inputs must be 2-D, got {}", fmt_shape(&a))))
            }
            _ => None,
        };
        Ok(vec![out(self.dtype(0), shape)])
    }

    /// Spatial parameters of a conv or pool over `n` spatial dims.
    fn spatial(&self, n: usize, kernel: &[i64]) -> Result<Window> {
        let strides = self.attrs.ints_or("strides", &vec![1; n])?;
        let dil = self.attrs.ints_or("dilations", &vec![1; n])?;
        let pads = self.attrs.ints_or("pads", &vec![0; 2 * n])?;
        let auto_pad = self.attrs.string_or("auto_pad", "NOTSET")?;
        if strides.len() != n || dil.len() != n || pads.len() != 2 * n || kernel.len() != n {
            return Err(self.err(format!(
                "kernel {kernel:?}, strides {strides:?}, dilations {dil:?}, pads {pads:?} do not fit \
                 {n} spatial dims"
            )));
        }
        Ok((strides, dil, pads, auto_pad))
    }

    /// One output spatial dim of a conv/pool.
    #[allow(clippy::too_many_arguments)]
    fn window_dim(
        &mut self,
        d: &SymDim,
        k: i64,
        s: i64,
        dil: i64,
        pb: i64,
        pe: i64,
        auto: &str,
        ceil: bool,
    ) -> Result<SymDim> {
        let eff = dil * (k - 1) + 1;
        if s <= 0 {
            return Err(self.err(format!("stride {s} must be positive")));
        }
        Ok(match (auto, d) {
            ("SAME_UPPER" | "SAME_LOWER", SymDim::Known(x)) => SymDim::Known((x + s - 1) / s),
            ("SAME_UPPER" | "SAME_LOWER", _) if s == 1 => d.clone(),
            ("VALID", SymDim::Known(x)) => SymDim::Known(((x - eff) / s + 1).max(0)),
            (_, SymDim::Known(x)) if auto != "SAME_UPPER" && auto != "SAME_LOWER" => {
                let (pb, pe) = if auto == "VALID" { (0, 0) } else { (pb, pe) };
                let span = x + pb + pe - eff;
                if span < 0 {
                    return Err(self.err(format!(
                        "window {eff} is larger than the padded input dim {}",
                        x + pb + pe
                    )));
                }
                let mut o = if ceil { (span + s - 1) / s + 1 } else { span / s + 1 };
                // The last window must start inside the input or the begin padding.
                if ceil && (o - 1) * s >= x + pb {
                    o -= 1;
                }
                SymDim::Known(o)
            }
            (_, SymDim::Sym(_))
                if s == 1
                    && (auto == "VALID" && eff == 1 || auto == "NOTSET" && pb + pe == eff - 1) =>
            {
                d.clone()
            }
            _ => self.fresh(),
        })
    }

    fn conv(&mut self, x: usize, w: usize, transpose: bool) -> Result<Option<Vec<SymDim>>> {
        let Some(xs) = self.shape(x) else { return Ok(None) };
        if xs.len() < 3 {
            return Err(self.err(format!(
                "input {} must have a batch, a channel and spatial dims",
                fmt_shape(&xs)
            )));
        }
        let n = xs.len() - 2;
        let ws = self.shape(w);
        let group = self.attrs.int_or("group", 1)?;
        let kernel = match self.attrs.ints("kernel_shape")? {
            Some(k) => Some(k),
            None => ws
                .as_ref()
                .and_then(|ws| ws.get(2..).and_then(|k| k.iter().map(SymDim::known).collect())),
        };
        let out_c = match &ws {
            Some(ws) if ws.len() == n + 2 => {
                if transpose {
                    dim_mul(&ws[1], &SymDim::Known(group))
                } else {
                    if let (Some(c), Some(wc)) = (xs[1].known(), ws[1].known()) {
                        if c != wc * group {
                            return Err(self.err(format!(
                                "input has {c} channels but weight {} with group {group} expects {}",
                                fmt_shape(ws),
                                wc * group
                            )));
                        }
                    }
                    ws[0].clone()
                }
            }
            Some(ws) => {
                return Err(self.err(format!(
                    "weight {} does not fit input {}",
                    fmt_shape(ws),
                    fmt_shape(&xs)
                )))
            }
            None => self.fresh(),
        };
        let mut shape = vec![xs[0].clone(), out_c];
        let Some(kernel) = kernel else {
            shape.extend((0..n).map(|_| self.fresh.dim()));
            return Ok(Some(shape));
        };
        let (strides, dil, pads, auto) = self.spatial(n, &kernel)?;
        if transpose {
            let out_pad = self.attrs.ints_or("output_padding", &vec![0; n])?;
            let explicit = self.attrs.ints("output_shape")?;
            for i in 0..n {
                let d = match (&explicit, &xs[i + 2]) {
                    (Some(o), _) if o.len() == n => SymDim::Known(o[i]),
                    (Some(o), _) if o.len() == n + 2 => SymDim::Known(o[i + 2]),
                    (_, SymDim::Known(x)) => {
                        if auto == "SAME_UPPER" || auto == "SAME_LOWER" {
                            SymDim::Known(x * strides[i])
                        } else {
                            let (pb, pe) =
                                if auto == "VALID" { (0, 0) } else { (pads[i], pads[i + n]) };
                            SymDim::Known(
                                strides[i] * (x - 1)
                                    + out_pad.get(i).copied().unwrap_or(0)
                                    + (kernel[i] - 1) * dil[i]
                                    + 1
                                    - pb
                                    - pe,
                            )
                        }
                    }
                    _ => self.fresh(),
                };
                shape.push(d);
            }
        } else {
            for i in 0..n {
                let d = self.window_dim(
                    &xs[i + 2],
                    kernel[i],
                    strides[i],
                    dil[i],
                    pads[i],
                    pads[i + n],
                    &auto,
                    false,
                )?;
                shape.push(d);
            }
        }
        Ok(Some(shape))
    }

    fn pool(&mut self) -> Result<Option<Vec<SymDim>>> {
        let Some(xs) = self.shape(0) else { return Ok(None) };
        if xs.len() < 3 {
            return Err(self.err(format!(
                "input {} must have a batch, a channel and spatial dims",
                fmt_shape(&xs)
            )));
        }
        let n = xs.len() - 2;
        let kernel = self
            .attrs
            .ints("kernel_shape")?
            .ok_or_else(|| self.err("attribute 'kernel_shape' is required"))?;
        let (strides, dil, pads, auto) = self.spatial(n, &kernel)?;
        let ceil = self.attrs.int_or("ceil_mode", 0)? != 0;
        let mut shape = vec![xs[0].clone(), xs[1].clone()];
        for i in 0..n {
            let d = self.window_dim(
                &xs[i + 2],
                kernel[i],
                strides[i],
                dil[i],
                pads[i],
                pads[i + n],
                &auto,
                ceil,
            )?;
            shape.push(d);
        }
        Ok(Some(shape))
    }

    fn rnn(&mut self) -> Result<Vec<Out>> {
        let hidden = self.attrs.int("hidden_size")?.map(SymDim::Known);
        let dirs =
            if self.attrs.string_or("direction", "forward")? == "bidirectional" { 2 } else { 1 };
        let layout = self.attrs.int_or("layout", 0)?;
        let dtype = self.dtype(0);
        let Some(xs) = self.shape(0).filter(|s| s.len() == 3) else {
            return Ok(vec![out(dtype, None), out(dtype, None), out(dtype, None)]);
        };
        let hidden = hidden.unwrap_or_else(|| self.fresh());
        let (seq, batch) = if layout == 0 { (&xs[0], &xs[1]) } else { (&xs[1], &xs[0]) };
        let nd = SymDim::Known(dirs);
        let (y, h) = if layout == 0 {
            (
                vec![seq.clone(), nd.clone(), batch.clone(), hidden.clone()],
                vec![nd, batch.clone(), hidden],
            )
        } else {
            (
                vec![batch.clone(), seq.clone(), nd.clone(), hidden.clone()],
                vec![batch.clone(), nd, hidden],
            )
        };
        Ok(vec![out(dtype, Some(y)), out(dtype, Some(h.clone())), out(dtype, Some(h))])
    }

    fn reshape(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let xs = self.shape(0);
        let allow_zero = self.attrs.int_or("allowzero", 0)? != 0;
        let target: Option<Vec<SymDim>> = if self.has_input(1) {
            self.cval(1).and_then(Const::dims)
        } else {
            self.attrs.ints("shape")?.map(|v| v.into_iter().map(SymDim::Known).collect())
        };
        let Some(target) = target else {
            let rank = self.shape(1).and_then(|s| s.first().and_then(SymDim::known));
            let shape = rank.map(|r| (0..r).map(|_| self.fresh()).collect());
            return Ok(vec![out(dtype, shape)]);
        };
        let mut shape = Vec::with_capacity(target.len());
        let mut infer_at = None;
        for (i, t) in target.iter().enumerate() {
            match t {
                SymDim::Known(0) if !allow_zero => match xs.as_ref().and_then(|s| s.get(i)) {
                    Some(d) => shape.push(d.clone()),
                    None if xs.is_some() => {
                        return Err(self.err(format!(
                            "target dim {i} is 0 (copy) but the input has rank {}",
                            xs.as_ref().map_or(0, |s| s.len())
                        )))
                    }
                    None => shape.push(self.fresh()),
                },
                SymDim::Known(-1) => {
                    if infer_at.replace(i).is_some() {
                        return Err(self.err(format!(
                            "target shape {} has more than one -1",
                            fmt_shape(&target)
                        )));
                    }
                    shape.push(SymDim::Known(-1));
                }
                SymDim::Known(k) if *k < -1 => {
                    return Err(
                        self.err(format!("target shape {} has a negative dim", fmt_shape(&target)))
                    )
                }
                d => shape.push(d.clone()),
            }
        }
        let total = xs.as_ref().map(|s| Mono::from_dim(&dims_product(s)));
        if let Some(i) = infer_at {
            let rest: Vec<SymDim> =
                shape.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, d)| d.clone()).collect();
            let rest = Mono::from_dim(&dims_product(&rest));
            shape[i] = match total.as_ref().map(|t| (t, t.div(&rest))) {
                Some((_, Some(q))) => q.to_dim(),
                Some((t, None)) if t.as_int().is_some() && rest.as_int().is_some() => {
                    return Err(self.err(format!(
                        "cannot reshape {} to {}",
                        fmt_shape(xs.as_deref().unwrap_or_default()),
                        fmt_shape(&target)
                    )))
                }
                _ => self.fresh(),
            };
        } else if let (Some(t), Some(n)) =
            (total.as_ref().and_then(Mono::as_int), Mono::from_dim(&dims_product(&shape)).as_int())
        {
            if t != n {
                return Err(self.err(format!(
                    "cannot reshape {} ({t} elements) to {} ({n} elements)",
                    fmt_shape(xs.as_deref().unwrap_or_default()),
                    fmt_shape(&target)
                )));
            }
        }
        let val = self.cval(0).and_then(|c| c.reshaped(&shape));
        Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
    }

    /// Axes from attribute `axes` or, when absent, input `input`; `Ok(None)` when the input is
    /// not constant, `Ok(Some(None))` when neither is given.
    fn axes_arg(&self, input: usize) -> Result<Option<Option<Vec<i64>>>> {
        if let Some(a) = self.attrs.ints("axes")? {
            return Ok(Some(Some(a)));
        }
        if self.has_input(input) {
            return Ok(self.ints(input).map(Some));
        }
        Ok(Some(None))
    }

    fn squeeze(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let (Some(xs), Some(axes)) = (self.shape(0), self.axes_arg(1)?) else {
            return Ok(vec![out(dtype, None)]);
        };
        let shape: Vec<SymDim> = match axes {
            Some(a) => {
                let a = self.axes(&a, xs.len())?;
                for &i in &a {
                    if let Some(k) = xs[i].known().filter(|&k| k != 1) {
                        return Err(self.err(format!("cannot squeeze axis {i} of size {k}")));
                    }
                }
                xs.iter()
                    .enumerate()
                    .filter(|(i, _)| !a.contains(i))
                    .map(|(_, d)| d.clone())
                    .collect()
            }
            None => xs.iter().filter(|d| **d != SymDim::Known(1)).cloned().collect(),
        };
        let val = self.cval(0).and_then(|c| c.reshaped(&shape));
        Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
    }

    fn unsqueeze(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let (Some(xs), Some(Some(axes))) = (self.shape(0), self.axes_arg(1)?) else {
            return Ok(vec![out(dtype, None)]);
        };
        let r = xs.len() + axes.len();
        let mut a = self.axes(&axes, r)?;
        a.sort_unstable();
        let mut it = xs.into_iter();
        let shape: Vec<SymDim> = (0..r)
            .map(|i| {
                if a.contains(&i) {
                    SymDim::Known(1)
                } else {
                    it.next().unwrap_or(SymDim::Known(1))
                }
            })
            .collect();
        let val = self.cval(0).and_then(|c| c.reshaped(&shape));
        Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
    }

    fn concat(&mut self) -> Result<Vec<Out>> {
        let axis = self.attrs.req_int("axis")?;
        let dtype = (0..self.node.input.len()).find_map(|i| self.dtype(i));
        let shapes: Option<Vec<Vec<SymDim>>> =
            (0..self.node.input.len()).map(|i| self.shape(i)).collect();
        let Some(shapes) = shapes else {
            let rank = (0..self.node.input.len()).find_map(|i| self.rank(i));
            return Ok(vec![out(dtype, rank.map(|r| (0..r).map(|_| self.fresh()).collect()))]);
        };
        let Some(first) = shapes.first() else { return Ok(vec![out(dtype, None)]) };
        let r = first.len();
        if let Some(s) = shapes.iter().find(|s| s.len() != r) {
            return Err(self.err(format!(
                "inputs have different ranks: {} and {}",
                fmt_shape(first),
                fmt_shape(s)
            )));
        }
        let a = self.axis(axis, r)?;
        let mut shape = Vec::with_capacity(r);
        for i in 0..r {
            if i == a {
                let sum =
                    shapes.iter().try_fold(Mono::int(0), |acc, s| acc.add(&Mono::from_dim(&s[i])));
                shape.push(sum.map(|m| m.to_dim()).unwrap_or_else(|| self.fresh()));
            } else {
                let col: Vec<Vec<SymDim>> = shapes.iter().map(|s| vec![s[i].clone()]).collect();
                // Non-axis dims must agree; merge them as broadcasting would (it errors on a
                // known mismatch) but without letting 1 stretch.
                let known: Vec<i64> = col.iter().filter_map(|c| c[0].known()).collect();
                if known.iter().any(|&k| k != known[0]) {
                    let shown: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
                    return Err(
                        self.err(format!("inputs {} differ outside axis {a}", shown.join(", ")))
                    );
                }
                let d = match known.first() {
                    Some(&k) => SymDim::Known(k),
                    None => self.broadcast(&col)?.remove(0),
                };
                shape.push(d);
            }
        }
        let val = self.fold_concat(a, &shape);
        Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
    }

    fn fold_concat(&self, axis: usize, shape: &[SymDim]) -> Option<Const> {
        let cs: Vec<&Const> =
            (0..self.node.input.len()).map(|i| self.cval(i)).collect::<Option<_>>()?;
        let out_shape: Vec<usize> =
            shape.iter().map(|d| d.known().map(|k| k as usize)).collect::<Option<_>>()?;
        let outer: usize = out_shape[..axis].iter().product();
        let mut data = Vec::new();
        for o in 0..outer {
            for c in &cs {
                let chunk: usize = c.shape[axis..].iter().product();
                data.extend_from_slice(c.data.get(o * chunk..(o + 1) * chunk)?);
            }
        }
        (data.len() == out_shape.iter().product::<usize>())
            .then_some(Const { shape: out_shape, data })
    }

    fn split(&mut self, n_out: usize) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let Some(xs) = self.shape(0) else {
            return Ok((0..n_out).map(|_| out(dtype, None)).collect());
        };
        let a = self.axis(self.attrs.int_or("axis", 0)?, xs.len())?;
        let sizes: Option<Vec<i64>> = if let Some(s) = self.attrs.ints("split")? {
            Some(s)
        } else if self.has_input(1) {
            self.ints(1)
        } else {
            let parts = self.attrs.int("num_outputs")?.map_or(n_out as i64, |k| k);
            match xs[a].known() {
                Some(d) if parts > 0 => {
                    let chunk = (d + parts - 1) / parts;
                    Some((0..parts).map(|i| chunk.min(d - i * chunk).max(0)).collect())
                }
                _ => {
                    let each =
                        Mono::from_dim(&xs[a]).div(&Mono::int(parts.max(1))).map(|m| m.to_dim());
                    return Ok((0..n_out)
                        .map(|_| {
                            let mut s = xs.clone();
                            s[a] = each.clone().unwrap_or_else(|| self.fresh());
                            out(dtype, Some(s))
                        })
                        .collect());
                }
            }
        };
        let Some(sizes) = sizes else {
            return Ok((0..n_out)
                .map(|_| {
                    let mut s = xs.clone();
                    s[a] = self.fresh();
                    out(dtype, Some(s))
                })
                .collect());
        };
        if sizes.len() != n_out {
            return Err(self.err(format!("{} split sizes for {n_out} outputs", sizes.len())));
        }
        if let Some(d) = xs[a].known() {
            if sizes.iter().sum::<i64>() != d {
                return Err(self.err(format!(
                    "split sizes {sizes:?} do not add up to dim {d} of {}",
                    fmt_shape(&xs)
                )));
            }
        }
        Ok(sizes
            .iter()
            .map(|&k| {
                let mut s = xs.clone();
                s[a] = SymDim::Known(k);
                out(dtype, Some(s))
            })
            .collect())
    }

    fn slice(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let Some(xs) = self.shape(0) else { return Ok(vec![out(dtype, None)]) };
        let r = xs.len();
        let known = |v: Vec<i64>| v.into_iter().map(SymDim::Known).collect::<Vec<_>>();
        let (starts, ends, axes, steps) = if let Some(starts) = self.attrs.ints("starts")? {
            let ends =
                self.attrs.ints("ends")?.ok_or_else(|| self.err("attribute 'ends' is required"))?;
            (Some(known(starts)), Some(known(ends)), Some(self.attrs.ints("axes")?), Some(None))
        } else {
            let opt =
                |i: usize| if self.has_input(i) { self.ints(i).map(Some) } else { Some(None) };
            let dims = |i: usize| self.cval(i).and_then(Const::dims);
            (dims(1), dims(2), opt(3), opt(4))
        };
        // Without constant starts/ends/axes/steps only the rank is known.
        let (Some(starts), Some(ends), Some(axes), Some(steps)) = (starts, ends, axes, steps)
        else {
            let shape = xs.iter().map(|_| self.fresh()).collect();
            return Ok(vec![out(dtype, Some(shape))]);
        };
        let n = starts.len();
        let axes = axes.filter(|a| !a.is_empty()).unwrap_or_else(|| (0..n as i64).collect());
        let steps = steps.filter(|s| !s.is_empty()).unwrap_or_else(|| vec![1; n]);
        if ends.len() != n || axes.len() != n || steps.len() != n {
            return Err(self.err(format!(
                "starts {}, ends {}, axes {axes:?}, steps {steps:?} differ in length",
                fmt_shape(&starts),
                fmt_shape(&ends)
            )));
        }
        let axes = self.axes(&axes, r)?;
        let mut shape = xs.clone();
        let mut picks: Option<Vec<Vec<usize>>> =
            self.cval(0).map(|c| c.shape.iter().map(|&n| (0..n).collect()).collect());
        for (k, &a) in axes.iter().enumerate() {
            let step = steps[k];
            if step == 0 {
                return Err(self.err("slice step is 0"));
            }
            let big = |e: &SymDim| e.known().is_some_and(|e| e >= i32::MAX as i64);
            shape[a] = match (xs[a].known(), starts[k].known(), ends[k].known()) {
                (Some(d), Some(start), Some(end)) => {
                    let (first, count) = slice_span(start, end, step, d);
                    if let Some(p) = picks.as_mut() {
                        p[a] = (0..count).map(|i| (first + i * step) as usize).collect();
                    }
                    SymDim::Known(count)
                }
                (None, Some(0), _) if step == 1 && (big(&ends[k]) || ends[k] == xs[a]) => {
                    xs[a].clone()
                }
                (None, Some(start), _) if step == 1 && start < 0 && big(&ends[k]) => {
                    SymDim::Known(-start)
                }
                // `x[:n]` with a symbolic `n` (positions up to the sequence length): assumes
                // `n` fits the dim, as exporters emitting it do.
                (_, Some(0), None) if step == 1 => ends[k].clone(),
                _ => {
                    picks = None;
                    self.fresh()
                }
            };
        }
        let val = match (self.cval(0), picks) {
            (Some(c), Some(p)) => {
                let idx = pick_indices(&c.shape, &p);
                Some(Const {
                    shape: p.iter().map(Vec::len).collect(),
                    data: idx.iter().map(|&i| c.data[i].clone()).collect(),
                })
            }
            _ => None,
        };
        Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
    }

    fn gather(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let (Some(xs), Some(is)) = (self.shape(0), self.shape(1)) else {
            return Ok(vec![out(dtype, None)]);
        };
        let a = self.axis(self.attrs.int_or("axis", 0)?, xs.len())?;
        let mut shape = xs[..a].to_vec();
        shape.extend(is.iter().cloned());
        shape.extend(xs[a + 1..].iter().cloned());
        let val = match (self.cval(0), self.ints(1)) {
            (Some(c), Some(idx)) => {
                let n = c.shape[a] as i64;
                let outer: usize = c.shape[..a].iter().product();
                let inner: usize = c.shape[a + 1..].iter().product();
                let mut data = Vec::new();
                let mut ok = true;
                for o in 0..outer {
                    for &i in &idx {
                        let i = if i < 0 { i + n } else { i };
                        if i < 0 || i >= n {
                            ok = false;
                            break;
                        }
                        let base = (o * c.shape[a] + i as usize) * inner;
                        data.extend_from_slice(&c.data[base..base + inner]);
                    }
                }
                let out_shape: Option<Vec<usize>> =
                    shape.iter().map(|d| d.known().map(|k| k as usize)).collect();
                match out_shape {
                    Some(s) if ok && s.iter().product::<usize>() == data.len() => {
                        Some(Const { shape: s, data })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(vec![Out { ty: ValueType::new(dtype, Some(shape)), val }])
    }

    fn reduce(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let keep = self.attrs.int_or("keepdims", 1)? != 0;
        let noop = self.attrs.int_or("noop_with_empty_axes", 0)? != 0;
        let Some(xs) = self.shape(0) else { return Ok(vec![out(dtype, None)]) };
        let Some(axes) = self.axes_arg(1)? else {
            let shape = if keep { Some(xs.iter().map(|_| self.fresh()).collect()) } else { None };
            return Ok(vec![out(dtype, shape)]);
        };
        let axes = match axes {
            Some(a) if !a.is_empty() => self.axes(&a, xs.len())?,
            _ if noop => return Ok(vec![out(dtype, Some(xs))]),
            _ => (0..xs.len()).collect(),
        };
        let shape = xs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (axes.contains(&i), keep) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(SymDim::Known(1)),
                (true, false) => None,
            })
            .collect();
        Ok(vec![out(dtype, Some(shape))])
    }

    fn constant(&mut self) -> Result<Vec<Out>> {
        let a = &self.attrs;
        if let Some(t) = a.tensor("value")? {
            let ty = ValueType {
                dtype: DType::from_onnx(t.data_type),
                shape: Some(t.dims.iter().map(|&d| SymDim::Known(d)).collect()),
            };
            return Ok(vec![Out { ty, val: Const::from_proto(t) }]);
        }
        if let Some(f) = a.float("value_float")? {
            let val = Const { shape: vec![], data: vec![Elem::F(f as f64)] };
            return Ok(vec![Out { ty: ValueType::known(DType::F32, &[]), val: Some(val) }]);
        }
        if let Some(v) = a.floats("value_floats")? {
            let ty = ValueType::known(DType::F32, &[v.len() as i64]);
            let val = Const {
                shape: vec![v.len()],
                data: v.into_iter().map(|f| Elem::F(f as f64)).collect(),
            };
            return Ok(vec![Out { ty, val: Some(val) }]);
        }
        if let Some(k) = a.int("value_int")? {
            let val = Const { shape: vec![], data: vec![Elem::I(Mono::int(k))] };
            return Ok(vec![Out { ty: ValueType::known(DType::I64, &[]), val: Some(val) }]);
        }
        if let Some(v) = a.ints("value_ints")? {
            let ty = ValueType::known(DType::I64, &[v.len() as i64]);
            let val = Const {
                shape: vec![v.len()],
                data: v.into_iter().map(|k| Elem::I(Mono::int(k))).collect(),
            };
            return Ok(vec![Out { ty, val: Some(val) }]);
        }
        if a.has("value_string") {
            return Ok(vec![out(Some(DType::String), Some(vec![]))]);
        }
        if let Some(v) = a.strings("value_strings")? {
            return Ok(vec![out(Some(DType::String), Some(vec![SymDim::Known(v.len() as i64)]))]);
        }
        if let Some(s) = a.get("sparse_value").and_then(|a| a.sparse_tensor.as_ref()) {
            let dtype = s.values.as_ref().and_then(|v| DType::from_onnx(v.data_type));
            return Ok(vec![out(dtype, Some(s.dims.iter().map(|&d| SymDim::Known(d)).collect()))]);
        }
        Ok(Vec::new())
    }

    fn pad(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let Some(xs) = self.shape(0) else { return Ok(vec![out(dtype, None)]) };
        let r = xs.len();
        let pads = if let Some(p) = self.attrs.ints("pads")? { Some(p) } else { self.ints(1) };
        let axes: Vec<usize> = if self.has_input(3) {
            match self.ints(3) {
                Some(a) => self.axes(&a, r)?,
                None => {
                    return Ok(vec![out(dtype, Some(xs.iter().map(|_| self.fresh()).collect()))])
                }
            }
        } else {
            (0..r).collect()
        };
        let Some(pads) = pads else {
            return Ok(vec![out(dtype, Some(xs.iter().map(|_| self.fresh()).collect()))]);
        };
        let n = axes.len();
        if pads.len() != 2 * n {
            return Err(self.err(format!(
                "{} pads for {n} axes of input {}",
                pads.len(),
                fmt_shape(&xs)
            )));
        }
        let mut shape = xs.clone();
        for (k, &a) in axes.iter().enumerate() {
            let add = pads[k] + pads[k + n];
            shape[a] = Mono::from_dim(&xs[a])
                .add(&Mono::int(add))
                .map(|m| m.to_dim())
                .unwrap_or_else(|| self.fresh());
            if let Some(v) = shape[a].known().filter(|&v| v < 0) {
                return Err(self.err(format!(
                    "pads {pads:?} make dim {a} of {} negative ({v})",
                    fmt_shape(&xs)
                )));
            }
        }
        Ok(vec![out(dtype, Some(shape))])
    }

    fn resize(&mut self) -> Result<Vec<Out>> {
        let dtype = self.dtype(0);
        let Some(xs) = self.shape(0) else { return Ok(vec![out(dtype, None)]) };
        let r = xs.len();
        let upsample = self.node.op_type == "Upsample";
        let (scales_in, sizes_in) =
            if upsample || self.opset < 11 { (1, usize::MAX) } else { (2, 3) };
        let axes = match self.attrs.ints("axes")? {
            Some(a) => self.axes(&a, r)?,
            None => (0..r).collect(),
        };
        let sizes = if self.has_input(sizes_in) {
            self.ints(sizes_in).filter(|s| !s.is_empty())
        } else {
            None
        };
        let scales: Option<Vec<f64>> = match self.attrs.floats("scales")? {
            Some(s) => Some(s.into_iter().map(f64::from).collect()),
            None if self.has_input(scales_in) => self
                .cval(scales_in)
                .and_then(|c| c.data.iter().map(Elem::num).collect::<Option<Vec<_>>>())
                .filter(|s| !s.is_empty()),
            None => None,
        };
        let mut shape = xs.clone();
        if let Some(sizes) = sizes {
            if sizes.len() != axes.len() {
                return Err(self.err(format!("{} sizes for {} axes", sizes.len(), axes.len())));
            }
            let policy = self.attrs.string_or("keep_aspect_ratio_policy", "stretch")?;
            if policy == "stretch" {
                for (k, &a) in axes.iter().enumerate() {
                    shape[a] = SymDim::Known(sizes[k]);
                }
            } else {
                let ratios: Option<Vec<f64>> = axes
                    .iter()
                    .enumerate()
                    .map(|(k, &a)| xs[a].known().map(|d| sizes[k] as f64 / d as f64))
                    .collect();
                let Some(ratios) = ratios else {
                    return Ok(vec![out(
                        dtype,
                        Some(xs.iter().map(|_| self.fresh.dim()).collect()),
                    )]);
                };
                let s = if policy == "not_larger" {
                    ratios.iter().cloned().fold(f64::INFINITY, f64::min)
                } else {
                    ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                };
                for &a in &axes {
                    let d = xs[a].known().unwrap_or(0) as f64;
                    shape[a] = SymDim::Known((d * s + 0.5).floor() as i64);
                }
            }
        } else if let Some(scales) = scales {
            if scales.len() != axes.len() {
                return Err(self.err(format!("{} scales for {} axes", scales.len(), axes.len())));
            }
            for (k, &a) in axes.iter().enumerate() {
                shape[a] = match xs[a].known() {
                    _ if scales[k] == 1.0 => xs[a].clone(),
                    Some(d) => SymDim::Known((d as f64 * scales[k]).floor() as i64),
                    None => self.fresh(),
                };
            }
        } else {
            shape = xs.iter().map(|_| self.fresh()).collect();
        }
        Ok(vec![out(dtype, Some(shape))])
    }
}

/// The first index and the number of elements ONNX `Slice` picks from a dim of size `d`.
fn slice_span(start: i64, end: i64, step: i64, d: i64) -> (i64, i64) {
    let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = (norm(start), norm(end));
    if step > 0 {
        let (s, e) = (s.clamp(0, d), e.clamp(0, d));
        (s, if e > s { (e - s + step - 1) / step } else { 0 })
    } else {
        let (s, e) = (s.clamp(-1, d - 1), e.clamp(-1, d - 1));
        (s, if s > e { (s - e + (-step) - 1) / (-step) } else { 0 })
    }
}

fn binary_elem(op: &str, a: &Elem, b: &Elem) -> Option<Elem> {
    let b2i = |x: bool| Elem::I(Mono::int(x as i64));
    match (a, b) {
        (Elem::I(x), Elem::I(y)) => Some(match op {
            "Add" => Elem::I(x.add(y)?),
            "Sub" => Elem::I(x.add(&y.neg())?),
            "Mul" => Elem::I(x.mul(y)),
            "Div" => match (x.as_int(), y.as_int()) {
                (Some(p), Some(q)) => Elem::I(Mono::int(p.checked_div(q)?)),
                _ => Elem::I(x.div(y)?),
            },
            "Max" | "Min" => {
                let (p, q) = (x.as_int()?, y.as_int()?);
                Elem::I(Mono::int(if op == "Max" { p.max(q) } else { p.min(q) }))
            }
            // Symbolic dims are positive: they equal a number only when it is the same
            // symbol; a symbol never equals 0 or a negative number.
            "Equal" => match (x.as_int(), y.as_int()) {
                (Some(p), Some(q)) => b2i(p == q),
                (None, None) if x == y => b2i(true),
                (Some(p), None) | (None, Some(p)) if p <= 0 => b2i(false),
                _ => return None,
            },
            "Less" => b2i(x.as_int()? < y.as_int()?),
            "Greater" => b2i(x.as_int()? > y.as_int()?),
            "LessOrEqual" => b2i(x.as_int()? <= y.as_int()?),
            "GreaterOrEqual" => b2i(x.as_int()? >= y.as_int()?),
            "And" => b2i(x.as_int()? != 0 && y.as_int()? != 0),
            "Or" => b2i(x.as_int()? != 0 || y.as_int()? != 0),
            _ => return None,
        }),
        _ => {
            let (p, q) = (a.num()?, b.num()?);
            let float = matches!(a, Elem::F(_));
            let num = |v: f64| if float { Elem::F(v) } else { Elem::I(Mono::int(v as i64)) };
            Some(match op {
                "Add" => num(p + q),
                "Sub" => num(p - q),
                "Mul" => num(p * q),
                "Div" => num(p / q),
                "Max" => num(p.max(q)),
                "Min" => num(p.min(q)),
                "Equal" => b2i(p == q),
                "Less" => b2i(p < q),
                "Greater" => b2i(p > q),
                "LessOrEqual" => b2i(p <= q),
                "GreaterOrEqual" => b2i(p >= q),
                _ => return None,
            })
        }
    }
}

fn fold_unary(op: &str, c: &Const) -> Option<Const> {
    let data = c
        .data
        .iter()
        .map(|e| match (op, e) {
            ("Identity", e) => Some(e.clone()),
            ("Neg", Elem::I(m)) => Some(Elem::I(m.neg())),
            ("Neg", Elem::F(f)) => Some(Elem::F(-f)),
            ("Abs", Elem::I(m)) => m.as_int().map(|k| Elem::I(Mono::int(k.abs()))),
            ("Abs", Elem::F(f)) => Some(Elem::F(f.abs())),
            ("Floor", Elem::F(f)) => Some(Elem::F(f.floor())),
            ("Ceil", Elem::F(f)) => Some(Elem::F(f.ceil())),
            ("Sqrt", Elem::F(f)) => Some(Elem::F(f.sqrt())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Const { shape: c.shape.clone(), data })
}

fn cast_const(c: &Const, to: DType) -> Option<Const> {
    let data = c
        .data
        .iter()
        .map(|e| {
            Some(match (e, to) {
                (Elem::I(m), DType::Bool) => Elem::I(Mono::int((m.as_int()? != 0) as i64)),
                (Elem::I(m), d) if d.is_float() => Elem::F(m.as_int()? as f64),
                (Elem::I(m), _) => Elem::I(m.clone()),
                (Elem::F(f), DType::Bool) => Elem::I(Mono::int((*f != 0.0) as i64)),
                (Elem::F(f), d) if d.is_float() => Elem::F(*f),
                (Elem::F(f), _) => Elem::I(Mono::int(*f as i64)),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Const { shape: c.shape.clone(), data })
}

fn fmt_shape(s: &[SymDim]) -> String {
    let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::AttributeProto;

    /// A tensor type; dims that parse as numbers are fixed, others are names.
    fn tt(dtype: DType, dims: &[&str]) -> TypeProto {
        let dims = dims
            .iter()
            .map(|d| match d.parse::<i64>() {
                Ok(k) => SymDim::Known(k),
                Err(_) => SymDim::sym(d),
            })
            .collect();
        ValueType::new(Some(dtype), Some(dims)).to_proto().unwrap()
    }

    fn input(name: &str, dtype: DType, dims: &[&str]) -> ValueInfoProto {
        ValueInfoProto { name: name.into(), r#type: Some(tt(dtype, dims)), ..Default::default() }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: 7, ints: v.to_vec(), ..Default::default() }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: 2, i: v, ..Default::default() }
    }

    fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: 3,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            name: format!("{op}_{}", outs[0]),
            op_type: op.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        }
    }

    fn init(name: &str, dtype: DType, dims: &[i64], vals: &[i64]) -> TensorProto {
        let mut t = TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: dtype.onnx_id(),
            ..Default::default()
        };
        match dtype {
            DType::I64 => t.int64_data = vals.to_vec(),
            DType::F32 => t.float_data = vals.iter().map(|&v| v as f32).collect(),
            _ => t.int32_data = vals.iter().map(|&v| v as i32).collect(),
        }
        t
    }

    fn model(
        inputs: Vec<ValueInfoProto>,
        inits: Vec<TensorProto>,
        nodes: Vec<NodeProto>,
    ) -> ModelProto {
        ModelProto {
            opset_import: vec![crate::pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: nodes,
                input: inputs,
                initializer: inits,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn shape_of(types: &HashMap<String, ValueType>, name: &str) -> String {
        types[name].to_string()
    }

    #[test]
    fn bert_shape_arithmetic_keeps_symbolic_dims() {
        let m = model(
            vec![input("x", DType::F32, &["batch", "seq", "384"])],
            vec![
                init("i0", DType::I64, &[], &[0]),
                init("i1", DType::I64, &[], &[1]),
                init("ax0", DType::I64, &[1], &[0]),
                init("c12", DType::I64, &[1], &[12]),
                init("c32", DType::I64, &[1], &[32]),
                init("flat", DType::I64, &[2], &[-1, 384]),
                init("w", DType::F32, &[384, 1536], &[]),
            ],
            vec![
                node("Shape", &["x"], &["s"], vec![]),
                node("Gather", &["s", "i0"], &["b"], vec![]),
                node("Gather", &["s", "i1"], &["q"], vec![]),
                node("Unsqueeze", &["b", "ax0"], &["ub"], vec![]),
                node("Unsqueeze", &["q", "ax0"], &["uq"], vec![]),
                node("Concat", &["ub", "uq", "c12", "c32"], &["target"], vec![int("axis", 0)]),
                node("Reshape", &["x", "target"], &["heads"], vec![]),
                node("Transpose", &["heads"], &["t"], vec![ints("perm", &[0, 2, 1, 3])]),
                node("Transpose", &["heads"], &["kt"], vec![ints("perm", &[0, 2, 3, 1])]),
                node("MatMul", &["t", "kt"], &["scores"], vec![]),
                node("Reshape", &["x", "flat"], &["x2d"], vec![]),
                node("MatMul", &["x", "w"], &["ff"], vec![]),
                node("Mul", &["b", "q"], &["n_tokens"], vec![]),
                node("Unsqueeze", &["n_tokens", "ax0"], &["nt1"], vec![]),
                node("ConstantOfShape", &["nt1"], &["zeros"], vec![]),
                node("Softmax", &["scores"], &["probs"], vec![int("axis", -1)]),
            ],
        );
        let t = infer_shapes(&m).unwrap();
        assert_eq!(shape_of(&t, "target"), "int64[4]");
        assert_eq!(shape_of(&t, "heads"), "float32[batch, seq, 12, 32]");
        assert_eq!(shape_of(&t, "scores"), "float32[batch, 12, seq, seq]");
        assert_eq!(shape_of(&t, "probs"), "float32[batch, 12, seq, seq]");
        assert_eq!(shape_of(&t, "x2d"), "float32[batch*seq, 384]");
        assert_eq!(shape_of(&t, "ff"), "float32[batch, seq, 1536]");
        assert_eq!(shape_of(&t, "zeros"), "float32[batch*seq]");
    }

    #[test]
    fn broadcasting_comparisons_and_where() {
        let m = model(
            vec![
                input("mask", DType::F32, &["batch", "1", "1", "seq"]),
                input("scores", DType::F32, &["batch", "12", "seq", "seq"]),
                input("v", DType::F32, &["3"]),
                input("u", DType::F32, &["4"]),
            ],
            vec![],
            vec![
                node("Add", &["scores", "mask"], &["masked"], vec![]),
                node("Less", &["mask", "scores"], &["lt"], vec![]),
                node("Where", &["lt", "mask", "scores"], &["w"], vec![]),
                node("Cast", &["lt"], &["lt_i"], vec![int("to", 7)]),
                node("Erf", &["masked"], &["e"], vec![]),
            ],
        );
        let t = infer_shapes(&m).unwrap();
        assert_eq!(shape_of(&t, "masked"), "float32[batch, 12, seq, seq]");
        assert_eq!(shape_of(&t, "lt"), "bool[batch, 12, seq, seq]");
        assert_eq!(shape_of(&t, "w"), "float32[batch, 12, seq, seq]");
        assert_eq!(shape_of(&t, "lt_i"), "int64[batch, 12, seq, seq]");
        assert_eq!(shape_of(&t, "e"), "float32[batch, 12, seq, seq]");

        let mut bad = m.clone();
        bad.graph.as_mut().unwrap().node.push(node("Add", &["v", "u"], &["bad"], vec![]));
        let e = infer_shapes(&bad).unwrap_err().to_string();
        assert!(
            e.contains("Add_bad") && e.contains("Add") && e.contains("[3]") && e.contains("[4]"),
            "{e}"
        );
    }

    #[test]
    fn conv_and_pool_windows() {
        let m = model(
            vec![
                input("x", DType::F32, &["1", "3", "32", "33"]),
                input("y", DType::F32, &["n", "3", "h", "w"]),
            ],
            vec![
                init("w", DType::F32, &[8, 3, 3, 3], &[]),
                init("wt", DType::F32, &[8, 4, 2, 2], &[]),
            ],
            vec![
                node(
                    "Conv",
                    &["x", "w"],
                    &["c1"],
                    vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
                ),
                node(
                    "Conv",
                    &["x", "w"],
                    &["c2"],
                    vec![string("auto_pad", "SAME_UPPER"), ints("strides", &[2, 2])],
                ),
                node("Conv", &["x", "w"], &["c3"], vec![ints("dilations", &[2, 2])]),
                node("Conv", &["y", "w"], &["c4"], vec![ints("pads", &[1, 1, 1, 1])]),
                node(
                    "MaxPool",
                    &["c3"],
                    &["p1"],
                    vec![
                        ints("kernel_shape", &[3, 3]),
                        ints("strides", &[2, 2]),
                        int("ceil_mode", 1),
                    ],
                ),
                node(
                    "AveragePool",
                    &["c3"],
                    &["p2"],
                    vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])],
                ),
                node("GlobalAveragePool", &["c4"], &["g"], vec![]),
                node("ConvTranspose", &["c1", "wt"], &["ct"], vec![ints("strides", &[2, 2])]),
                node("Flatten", &["g"], &["f"], vec![]),
            ],
        );
        let t = infer_shapes(&m).unwrap();
        assert_eq!(shape_of(&t, "c1"), "float32[1, 8, 16, 17]");
        assert_eq!(shape_of(&t, "c2"), "float32[1, 8, 16, 17]");
        assert_eq!(shape_of(&t, "c3"), "float32[1, 8, 28, 29]");
        assert_eq!(shape_of(&t, "c4"), "float32[n, 8, h, w]");
        assert_eq!(shape_of(&t, "p1"), "float32[1, 8, 14, 14]");
        assert_eq!(shape_of(&t, "p2"), "float32[1, 8, 13, 14]");
        assert_eq!(shape_of(&t, "g"), "float32[n, 8, 1, 1]");
        assert_eq!(shape_of(&t, "f"), "float32[n, 8]");
        assert_eq!(shape_of(&t, "ct"), "float32[1, 4, 32, 34]");

        let mut bad = m.clone();
        bad.graph.as_mut().unwrap().node.push(node("Conv", &["c1", "w"], &["bad"], vec![]));
        let e = infer_shapes(&bad).unwrap_err().to_string();
        assert!(e.contains("Conv_bad") && e.contains("8 channels"), "{e}");
    }

    #[test]
    fn quantization_ops_take_dtypes_from_zero_points() {
        let m = model(
            vec![input("x", DType::F32, &["b", "16"])],
            vec![
                init("s", DType::F32, &[], &[1]),
                init("zp8", DType::I8, &[], &[0]),
                init("wq", DType::I8, &[16, 4], &[]),
            ],
            vec![
                node("QuantizeLinear", &["x", "s", "zp8"], &["q_i8"], vec![]),
                node("QuantizeLinear", &["x", "s"], &["q_u8"], vec![]),
                node("QuantizeLinear", &["x", "s"], &["q_i4"], vec![int("output_dtype", 22)]),
                node("DequantizeLinear", &["q_i8", "s", "zp8"], &["dq"], vec![]),
                node("DynamicQuantizeLinear", &["x"], &["dy", "dy_s", "dy_zp"], vec![]),
                node("MatMulInteger", &["dy", "wq", "dy_zp"], &["acc"], vec![]),
            ],
        );
        let t = infer_shapes(&m).unwrap();
        assert_eq!(shape_of(&t, "q_i8"), "int8[b, 16]");
        assert_eq!(shape_of(&t, "q_u8"), "uint8[b, 16]");
        assert_eq!(shape_of(&t, "q_i4"), "int4[b, 16]");
        assert_eq!(shape_of(&t, "dq"), "float32[b, 16]");
        assert_eq!(shape_of(&t, "dy"), "uint8[b, 16]");
        assert_eq!(shape_of(&t, "dy_s"), "float32[]");
        assert_eq!(shape_of(&t, "acc"), "int32[b, 4]");
    }

    #[test]
    fn shape_ops_with_constant_arguments() {
        let m = model(
            vec![input("x", DType::F32, &["b", "6", "1", "4"])],
            vec![
                init("starts", DType::I64, &[2], &[1, -2]),
                init("ends", DType::I64, &[2], &[i64::MAX, i64::MAX]),
                init("axes", DType::I64, &[2], &[1, 3]),
                init("split", DType::I64, &[2], &[2, 4]),
                init("sq", DType::I64, &[1], &[2]),
                init("reps", DType::I64, &[4], &[1, 2, 3, 1]),
                init("idx", DType::I64, &[2, 3], &[0, 1, 2, 3, 4, 5]),
                init("rax", DType::I64, &[1], &[-1]),
            ],
            vec![
                node("Slice", &["x", "starts", "ends", "axes"], &["sl"], vec![]),
                node("Split", &["x", "split"], &["sp0", "sp1"], vec![int("axis", 1)]),
                node("Split", &["x"], &["h0", "h1"], vec![int("axis", 3)]),
                node("Squeeze", &["x", "sq"], &["sqz"], vec![]),
                node("Unsqueeze", &["x"], &["usq"], vec![ints("axes", &[0, -1])]),
                node("Tile", &["x", "reps"], &["tile"], vec![]),
                node("Gather", &["x", "idx"], &["g"], vec![int("axis", 1)]),
                node("ReduceSum", &["x", "rax"], &["rs"], vec![int("keepdims", 0)]),
                node("ReduceMean", &["x"], &["rm"], vec![ints("axes", &[1])]),
                node("ArgMax", &["x"], &["am"], vec![int("axis", 1), int("keepdims", 0)]),
                node("Concat", &["x", "x"], &["cat"], vec![int("axis", 0)]),
                node("Pad", &["x"], &["pad"], vec![ints("pads", &[0, 1, 0, 0, 0, 2, 0, 0])]),
                node("TopK", &["x"], &["tv", "ti"], vec![int("k", 2)]),
                node("Transpose", &["x"], &["tr"], vec![]),
            ],
        );
        let mut m = m;
        m.opset_import[0].version = 9; // TopK's `k` and Pad's `pads` attributes
        let t = infer_shapes(&m).unwrap();
        assert_eq!(shape_of(&t, "sl"), "float32[b, 5, 1, 2]");
        assert_eq!(shape_of(&t, "sp0"), "float32[b, 2, 1, 4]");
        assert_eq!(shape_of(&t, "sp1"), "float32[b, 4, 1, 4]");
        assert_eq!(shape_of(&t, "h1"), "float32[b, 6, 1, 2]");
        assert_eq!(shape_of(&t, "sqz"), "float32[b, 6, 4]");
        assert_eq!(shape_of(&t, "usq"), "float32[1, b, 6, 1, 4, 1]");
        assert_eq!(shape_of(&t, "tile"), "float32[b, 12, 3, 4]");
        assert_eq!(shape_of(&t, "g"), "float32[b, 2, 3, 1, 4]");
        assert_eq!(shape_of(&t, "rs"), "float32[b, 6, 1]");
        assert_eq!(shape_of(&t, "rm"), "float32[b, 1, 1, 4]");
        assert_eq!(shape_of(&t, "am"), "int64[b, 1, 4]");
        assert_eq!(shape_of(&t, "cat"), "float32[2*b, 6, 1, 4]");
        assert_eq!(shape_of(&t, "pad"), "float32[b, 9, 1, 4]");
        assert_eq!(shape_of(&t, "ti"), "int64[b, 6, 1, 2]");
        assert_eq!(shape_of(&t, "tr"), "float32[4, 1, 6, b]");
    }

    #[test]
    fn reshape_errors_name_the_node() {
        let m = model(
            vec![input("x", DType::F32, &["2", "6"])],
            vec![init("t", DType::I64, &[2], &[5, -1])],
            vec![node("Reshape", &["x", "t"], &["y"], vec![])],
        );
        let e = infer_shapes(&m).unwrap_err().to_string();
        assert!(e.contains("Reshape_y") && e.contains("[2, 6]") && e.contains("[5, -1]"), "{e}");

        let m = model(
            vec![input("a", DType::F32, &["b", "3"]), input("c", DType::F32, &["4", "5"])],
            vec![],
            vec![node("MatMul", &["a", "c"], &["y"], vec![])],
        );
        let e = infer_shapes(&m).unwrap_err().to_string();
        assert!(e.contains("MatMul_y") && e.contains("inner dims"), "{e}");
    }

    #[test]
    fn unknown_ops_give_unknown_types_and_value_info_fills_gaps() {
        let mut m = model(
            vec![input("x", DType::F32, &["b", "8"])],
            vec![],
            vec![
                node("FancyOp", &["x"], &["f"], vec![]),
                node("Relu", &["f"], &["r"], vec![]),
                node("NonZero", &["x"], &["nz"], vec![]),
            ],
        );
        let t = infer_shapes(&m).unwrap();
        assert_eq!(t["f"], ValueType::default());
        assert_eq!(t["r"], ValueType::default());
        assert!(t["nz"].shape.as_ref().unwrap()[1].is_anonymous());

        let g = m.graph.as_mut().unwrap();
        g.value_info.push(input("f", DType::F16, &["b", "8"]));
        g.value_info.push(input("nz", DType::I64, &["2", "n_nonzero"]));
        let t = infer_shapes(&m).unwrap();
        assert_eq!(shape_of(&t, "r"), "float16[b, 8]");
        assert_eq!(shape_of(&t, "nz"), "int64[2, n_nonzero]");
    }

    #[test]
    fn annotate_writes_value_info_for_node_outputs() {
        let mut m = model(
            vec![input("x", DType::F32, &["b", "8"])],
            vec![init("w", DType::F32, &[8, 4], &[])],
            vec![
                node("MatMul", &["x", "w"], &["h"], vec![]),
                node("Relu", &["h"], &["y"], vec![]),
                node("FancyOp", &["y"], &["z"], vec![]),
            ],
        );
        m.graph
            .as_mut()
            .unwrap()
            .output
            .push(ValueInfoProto { name: "y".into(), ..Default::default() });
        let n = annotate_value_info(&mut m).unwrap();
        assert_eq!(n, 2); // `h` into value_info, `y` as the graph output; `z` stays unknown
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.value_info.len(), 1);
        assert_eq!(g.value_info[0].r#type, Some(tt(DType::F32, &["b", "4"])));
        assert_eq!(g.output[0].r#type, Some(tt(DType::F32, &["b", "4"])));
        // Idempotent: a second run replaces instead of duplicating.
        annotate_value_info(&mut m).unwrap();
        assert_eq!(m.graph.as_ref().unwrap().value_info.len(), 1);
    }

    #[test]
    fn monomial_dims() {
        let d = |s: &str| Mono::from_dim(&SymDim::sym(s));
        assert_eq!(d("seq*batch").to_dim(), SymDim::sym("batch*seq"));
        assert_eq!(d("2*batch").mul(&d("seq")).to_dim(), SymDim::sym("2*batch*seq"));
        assert_eq!(d("batch*seq").div(&d("seq")).unwrap().to_dim(), SymDim::sym("batch"));
        assert_eq!(d("batch").div(&d("seq")), None);
        assert_eq!(d("batch").add(&d("batch")).unwrap().to_dim(), SymDim::sym("2*batch"));
        assert_eq!(d("batch").add(&d("seq")), None);
        assert_eq!(slice_span(0, i64::MAX, 1, 5), (0, 5));
        assert_eq!(slice_span(-1, i64::MIN, -1, 5), (4, 5));
        assert_eq!(slice_span(1, 100, 3, 10), (1, 3));
    }
}
