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
//! The modules: `sym` (dims and their arithmetic), `fold` (known values), `rules` (one file per
//! op family, named as the engine's op registry names its families: [`rule_family`]), and this
//! driver, which walks the graph and hands each node to its op's rule. Ops without a rule (see
//! [`is_supported_op`]) give values of unknown type, never an error. When inference leaves a
//! type or dim unknown and the model declares one in `graph.value_info`, the declaration fills
//! the gap. Shapes that cannot be right (a MatMul whose inner dims are both known and differ, a
//! Reshape that changes the element count) are errors naming the node.
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

mod fold;
mod rules;
mod sym;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;

use lowbit_tensor::DType;

use crate::attr::{AttrError, Attrs};
use crate::graph::{node_label, topo_order_with_outer, GraphError};
use crate::pb::tensor_shape_proto::{dimension, Dimension};
use crate::pb::{
    type_proto, GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use fold::Const;
pub use sym::SymDim;
use sym::{fmt_shape, Fresh};

/// Constant values with more elements than this are not tracked (shape arithmetic is tiny;
/// weights are not needed for inference).
pub const MAX_CONST_ELEMS: usize = 4096;

/// Opset assumed when a model imports none for the default domain.
const DEFAULT_OPSET: i64 = 21;

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
                    // Some exporters write "?" for every unknown dim: a name shared by all
                    // of them would claim they are equal.
                    Some(dimension::Value::DimParam(p)) if !p.is_empty() && p != "?" => {
                        SymDim::Sym(p.clone())
                    }
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
    inf.run(graph, &[], &HashSet::new())?;
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
/// for its Q/DQ ops and its fused `Attention`).
pub fn is_supported_op(domain: &str, op_type: &str) -> bool {
    rules::lookup(domain, op_type).is_some()
}

/// The op family whose rules type `op_type` in `domain` (`elementwise`, `nn`, `shape`, …: the
/// names the engine's op registry files its ops under), if inference has a rule for it.
pub fn rule_family(domain: &str, op_type: &str) -> Option<&'static str> {
    rules::lookup(domain, op_type).map(|r| r.family)
}

/// `(domain, op type, family)` of every op inference has a rule for.
pub fn ops_with_rules() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    rules::all().map(|r| (r.domain, r.op, r.family))
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
    /// Infers `g`'s values. `seeds[i]` fills what graph input `i` does not declare (a control-flow
    /// body's inputs, typed from the node that runs it); `outer` names the enclosing scopes'
    /// values a body may read.
    fn run(&mut self, g: &GraphProto, seeds: &[ValueType], outer: &HashSet<String>) -> Result<()> {
        for (i, v) in g.input.iter().enumerate() {
            let mut t = v
                .r#type
                .as_ref()
                .map(|t| ValueType::from_proto(t, &mut self.fresh))
                .unwrap_or_default();
            if let Some(seed) = seeds.get(i) {
                merge_hint(&mut t, seed.clone());
            }
            // An input dim the model leaves unnamed is named after its input and axis, so
            // the dims computed from it can be named too.
            for (axis, d) in t.shape.iter_mut().flatten().enumerate() {
                if d.is_anonymous() {
                    *d = SymDim::Sym(format!("{}_dim{axis}", v.name));
                }
            }
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
        for i in topo_order_with_outer(g, outer)? {
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
        let Some(rule) = rules::lookup(&node.domain, &node.op_type) else {
            return Ok(Vec::new());
        };
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
        let bodies = self.infer_bodies(node, &ins)?;
        let mut cx = Cx {
            node,
            label,
            attrs: Attrs::new(node),
            ins,
            cins,
            bodies,
            opset: self.opset,
            fresh: &mut self.fresh,
        };
        (rule.infer)(&mut cx)
    }

    /// The inferred output types of each graph attribute of `node` (If branches, Loop and Scan
    /// bodies), by attribute name. A body sees the outer scope's values; its inputs are typed
    /// from the node's inputs where it does not declare them (exporters' expanded functions
    /// often declare nothing inside a body).
    fn infer_bodies(
        &mut self,
        node: &NodeProto,
        ins: &[Option<ValueType>],
    ) -> Result<HashMap<String, Vec<ValueType>>> {
        let mut bodies = HashMap::new();
        if node.attribute.iter().all(|a| a.g.is_none()) {
            return Ok(bodies);
        }
        let seeds = body_input_seeds(node, ins, self.opset);
        let outer: HashSet<String> = self.types.keys().cloned().collect();
        for a in &node.attribute {
            let Some(g) = a.g.as_ref() else { continue };
            let mut sub = Inferer {
                types: self.types.clone(),
                consts: self.consts.clone(),
                fresh: Fresh(self.fresh.0),
                opset: self.opset,
            };
            // A body the rules cannot follow leaves the node's outputs to what it declares,
            // as before bodies were inferred: never an error for the whole model.
            if sub.run(g, &seeds, &outer).is_err() {
                continue;
            }
            self.fresh.0 = sub.fresh.0;
            let outs = g.output.iter().map(|o| sub.types.remove(&o.name).unwrap_or_default());
            bodies.insert(a.name.clone(), outs.collect());
        }
        Ok(bodies)
    }
}

/// What a control-flow body's inputs are, from the node: Loop's iteration count (int64 scalar),
/// condition (bool scalar) and loop-carried values; Scan's states and one slice of each scanned
/// input (its dtype). If branches have no inputs.
fn body_input_seeds(node: &NodeProto, ins: &[Option<ValueType>], opset: i64) -> Vec<ValueType> {
    let ty = |i: usize| ins.get(i).cloned().flatten().unwrap_or_default();
    match node.op_type.as_str() {
        "Loop" => {
            let mut seeds =
                vec![ValueType::known(DType::I64, &[]), ValueType::known(DType::Bool, &[])];
            seeds.extend((2..ins.len()).map(ty));
            seeds
        }
        "Scan" => {
            let first = usize::from(opset < 9);
            (first..ins.len()).map(|i| ValueType::new(ty(i).dtype, None)).collect()
        }
        _ => Vec::new(),
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

/// Everything one node's inference needs: its inputs' types and known values, its attributes,
/// and the helpers every rule shares (axes, broadcasting, errors naming the node).
struct Cx<'a> {
    node: &'a NodeProto,
    label: &'a str,
    attrs: Attrs<'a>,
    ins: Vec<Option<ValueType>>,
    cins: Vec<Option<Const>>,
    /// Inferred output types of the node's graph attributes, by attribute name.
    bodies: HashMap<String, Vec<ValueType>>,
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
}
