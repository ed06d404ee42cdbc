//! The QDQ graph as a differentiable program: the nodes in topological order, each an [`Op`]
//! reading value slots, with the quantization points made trainable:
//!
//! * a `QuantizeLinear → DequantizeLinear` pair on an activation becomes one fake-quant step
//!   whose step size is a parameter ([`ParamKind::ActScale`], per tensor, zero point fixed);
//! * a `DequantizeLinear` of a Conv/Gemm/MatMul weight's integer codes becomes a float weight
//!   ([`ParamKind::Weight`], initialised from the FP32 model, BN folded) fake-quantized with a
//!   per-channel step size ([`ParamKind::WeightScale`]) once per batch ([`Program::leaves`]);
//! * its int32 bias becomes a float bias ([`ParamKind::Bias`]), recoded on export.
//!
//! Everything else is constant. [`Program::export`] writes the learned values back into the
//! same QDQ graph, so the file deployment runs is the one whose arithmetic was trained.

use crate::arr::Arr;
use crate::error::{Result, TrainError};
use crate::fake_quant::{
    fake_quant, fake_quant_backward, lsq_grad_scale, mse_scales, Grid, ScaleMap,
};
use crate::ops::Op;
use lowbit_kernels::quantize::{bias_scales, int_range, min_weight_scales_for_bias, quantize_bias};
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::graph::{topo_order, Graph};
use lowbit_onnx::pb::{ModelProto, NodeProto};
use lowbit_onnx::{tensor_from_proto, tensor_to_proto};
use lowbit_tensor::{DType, Tensor, TensorData};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    WeightScale,
    ActScale,
    Bias,
}

/// A trainable tensor and where it goes on export.
#[derive(Clone, Debug)]
pub struct Param {
    /// What it is, for messages: the layer or tensor name.
    pub label: String,
    pub kind: ParamKind,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
    /// LSQ's gradient scale for step sizes (1 for weights and biases).
    pub grad_scale: f32,
}

/// How a slot computed once per batch comes from the parameters.
#[derive(Clone, Debug)]
pub enum Leaf {
    /// `fake_quant(W)` with per-channel or per-block steps (and their fixed zero points where
    /// the weights are asymmetric; empty: the grid's).
    Weight {
        slot: usize,
        weight: usize,
        scale: usize,
        grid: Grid,
        map: ScaleMap,
        zero_points: Vec<i32>,
    },
    /// The parameter as it is (biases, activation step sizes).
    Direct { slot: usize, param: usize },
}

#[derive(Clone, Debug)]
pub struct Step {
    pub op: Op,
    pub inputs: Vec<Option<usize>>,
    pub output: usize,
    /// `name (op_type)` for messages.
    pub label: String,
}

/// Where each learned value is written on export.
#[derive(Clone, Debug)]
enum Export {
    /// Integer codes and per-channel scales of a weight.
    Weight { weight: usize, scale: usize, codes: String, scale_names: Vec<String>, dtype: DType },
    /// The step size of an activation (the Q's and the DQ's scale initializers).
    ActScale { param: usize, names: Vec<String> },
    /// An int32 bias: `scale = s_in · s_w`, codes recoded from the float bias.
    Int32Bias { bias: usize, codes: String, scale_name: String, in_scale: ScaleRef, w_scale: usize },
}

/// A learned activation scale.
#[derive(Clone, Copy, Debug)]
enum ScaleRef {
    Param(usize),
}

/// How weights are quantized while training.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightGrid {
    /// Each layer on the symmetric integer grid of its codes' type in the QDQ graph, starting
    /// from the step sizes written there: one entry `(code type, qmin, qmax)` per type the
    /// plan writes (int4 layers and the int8 first and last layers of a 4-bit plan).
    Int { ranges: Vec<(DType, i32, i32)> },
    /// {−a, 0, +a} per channel (int8 codes), the MSE-best step to start.
    Ternary,
    /// {−a, +a} per channel (int8 codes), the MSE-best step to start.
    Binary,
}

impl WeightGrid {
    /// The grid of a weight whose codes are of type `dtype`.
    fn grid(&self, dtype: DType) -> Option<Grid> {
        match self {
            WeightGrid::Int { ranges } => {
                ranges.iter().find(|(t, _, _)| *t == dtype).map(|&(_, lo, hi)| Grid::new(0, lo, hi))
            }
            WeightGrid::Ternary => Some(Grid::new(0, -1, 1)),
            WeightGrid::Binary => Some(Grid::binary()),
        }
    }
}

/// Where the trained float weights start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightStart {
    /// The FP32 model's weights (BN folded): fake quantization rounds them to nearest.
    Fp32,
    /// The QDQ graph's dequantized codes: training starts exactly at the file's model (e.g.
    /// AdaRound's learned rounding).
    Codes,
}

pub struct Program {
    pub steps: Vec<Step>,
    pub params: Vec<Param>,
    pub leaves: Vec<Leaf>,
    /// Constant slot values (initializers, `Constant` nodes, frozen dequantized tensors).
    pub consts: Vec<(usize, Arr)>,
    /// Graph inputs fed per sample: name and slot.
    pub inputs: Vec<(String, usize)>,
    /// The output the loss reads.
    pub output: usize,
    pub output_name: String,
    pub num_slots: usize,
    exports: Vec<Export>,
}

fn node_label(n: &NodeProto, i: usize) -> String {
    let name = if n.name.is_empty() { format!("#{i}") } else { n.name.clone() };
    format!("{name} ({})", n.op_type)
}

fn node_err(n: &NodeProto, msg: impl Into<String>) -> TrainError {
    TrainError::Node { node: n.name.clone(), op_type: n.op_type.clone(), msg: msg.into() }
}

fn init(g: &Graph, name: &str) -> Result<Option<Tensor>> {
    Ok(g.initializer(name).map(tensor_from_proto).transpose()?)
}

fn f32_of(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    Arr::from_tensor(t)
        .map(|a| a.data)
        .ok_or_else(|| TrainError::Config(format!("{what}: type {} not understood", t.dtype())))
}

/// The integer codes of `data` as a tensor of the integer type `dtype`.
fn code_data(dtype: DType, codes: &[i32]) -> Result<TensorData> {
    lowbit_tensor::cast::int_data(codes, dtype)
        .ok_or_else(|| TrainError::Config(format!("codes of type {dtype} cannot be written")))
}

fn replace_init(g: &mut Graph, name: &str, t: &Tensor) {
    g.add_initializer(tensor_to_proto(name, t));
}

impl Program {
    /// The program for the QDQ model `qdq` (as `lowbit_quant`'s static pass writes it), with
    /// float weights and biases taken from `fp32` (the FP32 model with BatchNormalization
    /// folded as the quantizer folds it) where a layer of the same output name exists there.
    /// `output`: the graph output the loss reads (default: the first float one).
    pub fn build(
        qdq: &ModelProto,
        fp32: &ModelProto,
        wgrid: &WeightGrid,
        start: WeightStart,
        output: Option<&str>,
    ) -> Result<Program> {
        let g = Graph::new(qdq.clone())?;
        let f = Graph::new(fp32.clone())?;
        let opset = g.opset_version("").unwrap_or(13);
        let order = topo_order(g.proto())?;
        let nodes = g.nodes();
        let mut b = Builder::default();
        let mut deferred = Vec::new();

        // Runtime inputs.
        let mut inputs = Vec::new();
        for v in g.runtime_inputs() {
            inputs.push((v.name.clone(), b.slot(&v.name)));
        }
        // Q nodes folded into their DQ: their outputs are never materialized.
        let producer = |v: &str| g.producer_node(v);
        let mut folded_q: HashSet<String> = HashSet::new();
        for n in nodes {
            if n.op_type == "DequantizeLinear" {
                if let Some(q) = n
                    .input
                    .first()
                    .and_then(|x| producer(x))
                    .filter(|q| q.op_type == "QuantizeLinear")
                {
                    folded_q.insert(q.output[0].clone());
                }
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            if n.op_type == "QuantizeLinear" && folded_q.contains(&n.output[0]) {
                let others = g
                    .consumers(&n.output[0])
                    .iter()
                    .any(|&c| nodes[c].op_type != "DequantizeLinear");
                if others || g.is_graph_output(&n.output[0]) {
                    return Err(node_err(
                        n,
                        format!("{} feeds more than DequantizeLinear nodes", node_label(n, i)),
                    ));
                }
            }
        }
        // Consumers: (op_type, input slot) of each value, to tell weights from biases.
        let uses = |v: &str| -> Vec<(&NodeProto, usize)> {
            g.consumers(v)
                .iter()
                .flat_map(|&c| {
                    nodes[c]
                        .input
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| *x == v)
                        .map(move |(k, _)| (&nodes[c], k))
                })
                .collect()
        };

        for &i in &order {
            let n = &nodes[i];
            if !n.domain.is_empty() && n.domain != "ai.onnx" {
                return Err(node_err(n, format!("domain '{}' is not supported by QAT", n.domain)));
            }
            match n.op_type.as_str() {
                "QuantizeLinear" if folded_q.contains(&n.output[0]) => continue,
                "Constant" => {
                    let a = Attrs::new(n);
                    let t = match a.tensor("value").map_err(|e| node_err(n, e.to_string()))? {
                        Some(t) => tensor_from_proto(t)?,
                        None => match a
                            .float("value_float")
                            .map_err(|e| node_err(n, e.to_string()))?
                        {
                            Some(v) => Tensor::scalar(v),
                            None => match a
                                .ints("value_ints")
                                .map_err(|e| node_err(n, e.to_string()))?
                            {
                                Some(v) => Tensor::from_vec(vec![v.len()], v)?,
                                None => match a
                                    .int("value_int")
                                    .map_err(|e| node_err(n, e.to_string()))?
                                {
                                    Some(v) => Tensor::scalar(v),
                                    None => return Err(node_err(n, "Constant form not supported")),
                                },
                            },
                        },
                    };
                    let arr = Arr::from_tensor(&t)
                        .ok_or_else(|| node_err(n, "constant type not understood"))?;
                    let s = b.slot(&n.output[0]);
                    b.consts.push((s, arr));
                    continue;
                }
                "DequantizeLinear" => {
                    // An int32 bias follows its layer's weight and input scales: done last.
                    let int32 = g
                        .initializer(&n.input[0])
                        .is_some_and(|t| DType::from_onnx(t.data_type) == Some(DType::I32));
                    if int32 {
                        b.slot(&n.output[0]);
                        deferred.push(i);
                    } else {
                        b.dequantize(&g, &f, n, (wgrid, start), &uses)?;
                    }
                    continue;
                }
                "QuantizeLinear" => {
                    return Err(node_err(
                        n,
                        "a QuantizeLinear without its DequantizeLinear is not supported",
                    ))
                }
                _ => {}
            }
            let op = Op::from_node(n, opset).map_err(|m| node_err(n, m))?;
            let mut ins = Vec::with_capacity(n.input.len());
            for x in &n.input {
                ins.push(if x.is_empty() { None } else { Some(b.read(&g, x)?) });
            }
            if n.output.iter().skip(1).any(|o| !o.is_empty() && !g.consumers(o).is_empty()) {
                return Err(node_err(n, "only a node's first output may be read"));
            }
            let out = b.slot(&n.output[0]);
            b.steps.push(Step { op, inputs: ins, output: out, label: node_label(n, i) });
        }
        for i in deferred {
            b.dequantize(&g, &f, &nodes[i], (wgrid, start), &uses)?;
        }
        let output_name = match output {
            Some(o) if g.is_graph_output(o) => o.to_string(),
            Some(o) => {
                return Err(TrainError::Config(format!("'{o}' is not an output of the model")))
            }
            None => first_float_output(g.proto())
                .ok_or_else(|| TrainError::Config("the model has no float output".into()))?,
        };
        let output = *b
            .slots
            .get(&output_name)
            .ok_or_else(|| TrainError::MissingValue(output_name.clone()))?;
        let num_slots = b.names.len();
        Ok(Program {
            steps: b.steps,
            params: b.params,
            leaves: b.leaves,
            consts: b.consts,
            inputs,
            output,
            output_name,
            num_slots,
            exports: b.exports,
        })
    }

    /// The value of each leaf slot for the current parameters.
    pub fn leaf_values(&self) -> Vec<(usize, Arr)> {
        self.leaves
            .iter()
            .map(|l| match l {
                Leaf::Weight { slot, weight, scale, grid, map, zero_points } => {
                    let w = &self.params[*weight];
                    let s = &self.params[*scale];
                    let y = fake_quant(&w.value, &s.value, zero_points, map, grid);
                    (*slot, Arr::new(w.shape.clone(), y))
                }
                Leaf::Direct { slot, param } => {
                    let p = &self.params[*param];
                    (*slot, Arr::new(p.shape.clone(), p.value.clone()))
                }
            })
            .collect()
    }

    /// Parameter gradients from the leaf slots' gradients (`None`: not reached).
    pub fn param_grads(&self, leaf_grads: &[Option<Arr>]) -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = self.params.iter().map(|p| vec![0.0; p.value.len()]).collect();
        for (l, g) in self.leaves.iter().zip(leaf_grads) {
            let Some(g) = g else { continue };
            match l {
                Leaf::Weight { weight, scale, grid, map, zero_points, .. } => {
                    let (w, s) = (&self.params[*weight], &self.params[*scale]);
                    let (gw, gs) =
                        fake_quant_backward(&w.value, &s.value, zero_points, map, grid, &g.data);
                    out[*weight] = gw;
                    out[*scale] = gs.iter().map(|v| v * s.grad_scale).collect();
                }
                Leaf::Direct { param, .. } => {
                    let p = &self.params[*param];
                    out[*param] = g.data.iter().map(|v| v * p.grad_scale).collect();
                }
            }
        }
        out
    }

    /// The QDQ model `qdq` (the one [`Program::build`] read) with the current weights, step sizes
    /// and biases written into its initializers.
    pub fn export(&self, qdq: &ModelProto) -> Result<ModelProto> {
        let mut g = Graph::new(qdq.clone())?;
        let scalar =
            |v: f32, like: &[usize]| Tensor::from_vec(like.to_vec(), vec![v]).expect("one value");
        for e in &self.exports {
            match e {
                Export::Weight { weight, scale, codes, scale_names, dtype } => {
                    let (w, s) = (&self.params[*weight], &self.params[*scale]);
                    let Some(Leaf::Weight { grid, map, zero_points, .. }) = self
                        .leaves
                        .iter()
                        .find(|l| matches!(l, Leaf::Weight { weight: x, .. } if x == weight))
                    else {
                        unreachable!("every exported weight has its leaf")
                    };
                    let q: Vec<i32> = w
                        .value
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let j = map.index(i);
                            let z = zero_points
                                .get(j)
                                .map_or(*grid, |&z| Grid { zero_point: z, ..*grid });
                            z.code(v, s.value[j])
                        })
                        .collect();
                    replace_init(
                        &mut g,
                        codes,
                        &Tensor::new(w.shape.clone(), code_data(*dtype, &q)?)?,
                    );
                    for name in scale_names {
                        replace_init(
                            &mut g,
                            name,
                            &Tensor::from_vec(s.shape.clone(), s.value.clone())?,
                        );
                    }
                }
                Export::ActScale { param, names } => {
                    let p = &self.params[*param];
                    for name in names {
                        replace_init(&mut g, name, &scalar(p.value[0], &p.shape));
                    }
                }
                Export::Int32Bias { bias, codes, scale_name, in_scale, w_scale } => {
                    let b = &self.params[*bias];
                    let ScaleRef::Param(p) = in_scale;
                    let s_in = self.params[*p].value[0];
                    let s_w = &self.params[*w_scale].value;
                    let q = quantize_bias(&b.value, s_in, s_w).map_err(|o| {
                        TrainError::Config(format!(
                            "bias {} channel {}: {} does not fit int32 at scale {:e}",
                            b.label, o.channel, o.bias, o.scale
                        ))
                    })?;
                    replace_init(&mut g, codes, &Tensor::from_vec(b.shape.clone(), q)?);
                    let scales = bias_scales(s_in, s_w);
                    let n = if s_w.len() == 1 { vec![] } else { vec![scales.len()] };
                    replace_init(&mut g, scale_name, &Tensor::from_vec(n, scales)?);
                }
            }
        }
        Ok(g.into_model())
    }

    /// Keeps the parameters exportable after an optimizer step: step sizes positive, and a
    /// weight step no smaller than its int32 bias needs (`s_in · s_w` must code the bias within
    /// the accumulator's headroom, as the quantizer widens such scales): a channel whose
    /// weights train towards zero would otherwise shrink its step until the bias overflows.
    pub fn project(&mut self) {
        for p in self.params.iter_mut() {
            if matches!(p.kind, ParamKind::WeightScale | ParamKind::ActScale) {
                p.value.iter_mut().for_each(|s| *s = s.abs().max(1e-8));
            }
        }
        for e in &self.exports {
            let Export::Int32Bias { bias, in_scale: ScaleRef::Param(s_in), w_scale, .. } = e else {
                continue;
            };
            let floor =
                min_weight_scales_for_bias(&self.params[*bias].value, self.params[*s_in].value[0]);
            let s_w = &mut self.params[*w_scale].value;
            if s_w.len() == floor.len() {
                s_w.iter_mut().zip(&floor).for_each(|(s, f)| *s = s.max(*f));
            } else if let Some(f) = floor.iter().copied().reduce(f32::max) {
                s_w.iter_mut().for_each(|s| *s = s.max(f));
            }
        }
    }

    /// Number of trainable values per kind.
    pub fn count(&self, kind: ParamKind) -> usize {
        self.params.iter().filter(|p| p.kind == kind).map(|p| p.value.len()).sum()
    }
}

#[derive(Default)]
struct Builder {
    names: Vec<String>,
    slots: HashMap<String, usize>,
    steps: Vec<Step>,
    params: Vec<Param>,
    leaves: Vec<Leaf>,
    consts: Vec<(usize, Arr)>,
    exports: Vec<Export>,
    /// Initializer name → learned scale parameter (shared by every pair that reads it).
    act_scales: HashMap<String, usize>,
    /// Weight DQ output → its weight-scale parameter (for the bias's export).
    weight_scales: HashMap<String, usize>,
    /// Activation DQ output → its scale (for biases).
    act_scale_of: HashMap<String, ScaleRef>,
}

impl Builder {
    fn slot(&mut self, name: &str) -> usize {
        if let Some(&s) = self.slots.get(name) {
            return s;
        }
        self.names.push(name.to_string());
        self.slots.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }

    /// The slot of a value a node reads: produced already, or an initializer (made a constant).
    fn read(&mut self, g: &Graph, name: &str) -> Result<usize> {
        if let Some(&s) = self.slots.get(name) {
            return Ok(s);
        }
        let t = init(g, name)?.ok_or_else(|| TrainError::MissingValue(name.to_string()))?;
        let arr = Arr::from_tensor(&t).ok_or_else(|| {
            TrainError::Config(format!("initializer '{name}' of type {} not understood", t.dtype()))
        })?;
        let s = self.slot(name);
        self.consts.push((s, arr));
        Ok(s)
    }

    fn param(
        &mut self,
        label: &str,
        kind: ParamKind,
        shape: Vec<usize>,
        value: Vec<f32>,
        grad_scale: f32,
    ) -> usize {
        self.params.push(Param { label: label.to_string(), kind, shape, value, grad_scale });
        self.params.len() - 1
    }

    fn dequantize<'a>(
        &mut self,
        g: &'a Graph,
        f: &Graph,
        n: &NodeProto,
        (wgrid, start): (&WeightGrid, WeightStart),
        uses: &dyn Fn(&str) -> Vec<(&'a NodeProto, usize)>,
    ) -> Result<()> {
        let x = &n.input[0];
        let scale_name = n.input.get(1).cloned().ok_or_else(|| node_err(n, "scale is missing"))?;
        let zp_name = n.input.get(2).filter(|z| !z.is_empty()).cloned();
        let scale =
            init(g, &scale_name)?.ok_or_else(|| node_err(n, "scale is not an initializer"))?;
        let scale_v = f32_of(&scale, &scale_name)?;
        let zp = match &zp_name {
            Some(z) => {
                Some(init(g, z)?.ok_or_else(|| node_err(n, "zero point is not an initializer"))?)
            }
            None => None,
        };
        let out = n.output[0].clone();
        let a = Attrs::new(n);
        let axis = a.int_or("axis", 1).map_err(|e| node_err(n, e.to_string()))?;
        let block = a.int_or("block_size", 0).map_err(|e| node_err(n, e.to_string()))?;
        if let Some(q) = g.producer_node(x).filter(|q| q.op_type == "QuantizeLinear") {
            // An activation pair: one learnable step, the zero point and type kept.
            if scale_v.len() != 1 {
                return Err(node_err(
                    n,
                    "per-axis activation quantization is not supported by QAT",
                ));
            }
            let dtype = zp.as_ref().map_or(DType::U8, |z| z.dtype());
            let (qmin, qmax) =
                int_range(dtype).ok_or_else(|| node_err(n, format!("activation type {dtype}")))?;
            let z = zp.as_ref().map_or(0, |z| f32_of(z, "zero point").map_or(0.0, |v| v[0]) as i32);
            let grid = Grid::new(z, qmin, qmax);
            let p = match self.act_scales.get(&scale_name) {
                Some(&p) => p,
                None => {
                    let p = self.param(
                        &q.input[0],
                        ParamKind::ActScale,
                        scale.shape().to_vec(),
                        scale_v.clone(),
                        1.0,
                    );
                    let mut names = vec![scale_name.clone()];
                    if let Some(qs) = q.input.get(1).filter(|s| **s != scale_name) {
                        names.push(qs.clone());
                    }
                    self.exports.push(Export::ActScale { param: p, names });
                    self.act_scales.insert(scale_name.clone(), p);
                    let slot = self.slot(&format!("{scale_name}::learned"));
                    self.leaves.push(Leaf::Direct { slot, param: p });
                    p
                }
            };
            let s_slot = self.leaves.iter().find_map(|l| match l {
                Leaf::Direct { slot, param } if *param == p => Some(*slot),
                _ => None,
            });
            let xin = self.read(g, &q.input[0])?;
            let o = self.slot(&out);
            self.steps.push(Step {
                op: Op::FakeQuant(grid),
                inputs: vec![Some(xin), s_slot],
                output: o,
                label: format!("{} ({} → DequantizeLinear)", q.input[0], q.op_type),
            });
            self.act_scale_of.insert(out, ScaleRef::Param(p));
            return Ok(());
        }
        let codes = init(g, x)?.ok_or_else(|| {
            node_err(
                n,
                format!("input '{x}' is neither an initializer nor a QuantizeLinear output"),
            )
        })?;
        let codes_v = f32_of(&codes, x)?;
        let zp_v = match &zp {
            Some(z) => f32_of(z, "zero point")?,
            None => vec![0.0],
        };
        let rank = codes.shape().len();
        let ax = crate::arr::norm_axis(axis, rank.max(1)).unwrap_or(0);
        let map = if scale_v.len() == 1 {
            ScaleMap::PER_TENSOR
        } else {
            let shape = codes.shape();
            let inner = shape[ax + 1..].iter().product::<usize>();
            if block > 0 {
                ScaleMap::blocked(shape[ax], inner, block as usize)
            } else {
                ScaleMap::per_channel(shape[ax], inner)
            }
        };
        if map.steps(codes_v.len()) != scale_v.len() {
            return Err(node_err(
                n,
                format!(
                    "{} scales for a weight of shape {:?} (axis {axis}, block size {block})",
                    scale_v.len(),
                    codes.shape()
                ),
            ));
        }
        let dequant: Vec<f32> = codes_v
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let j = map.index(i);
                (c - zp_v[if zp_v.len() == 1 { 0 } else { j }]) * scale_v[j]
            })
            .collect();
        let consumers = uses(&out);
        let weight_of: Vec<&(&NodeProto, usize)> = consumers
            .iter()
            .filter(|(c, k)| *k == 1 && matches!(c.op_type.as_str(), "Conv" | "Gemm" | "MatMul"))
            .collect();
        let bias_of: Vec<&(&NodeProto, usize)> = consumers
            .iter()
            .filter(|(c, k)| *k == 2 && matches!(c.op_type.as_str(), "Conv" | "Gemm"))
            .collect();
        let all_zero = zp_v.iter().all(|&z| z == 0.0);
        let slot = self.slot(&out);
        // Integer grids keep asymmetric weights' zero points (fixed, one per step).
        if !weight_of.is_empty()
            && weight_of.len() == consumers.len()
            && (all_zero || matches!(wgrid, WeightGrid::Int { .. }))
            && codes.dtype() != DType::I32
        {
            // A layer's weight: float values from the FP32 model where its layer is found.
            let layer = weight_of[0].0;
            let grid = wgrid.grid(codes.dtype()).ok_or_else(|| {
                node_err(
                    layer,
                    format!("weight codes of type {} are not on a grid QAT trains", codes.dtype()),
                )
            })?;
            let w = match start {
                WeightStart::Fp32 => {
                    fp32_input(f, layer, 1)?.filter(|w| w.len() == codes_v.len()).unwrap_or(dequant)
                }
                WeightStart::Codes => dequant,
            };
            // Ternary and binary weights from FP32 start at the MSE-best step (a min-max step
            // would round almost every weight to zero); otherwise the file's steps.
            let s0 = match (wgrid, start) {
                (WeightGrid::Ternary | WeightGrid::Binary, WeightStart::Fp32) => {
                    mse_scales(&w, &map, &grid)
                }
                _ => scale_v.clone(),
            };
            let label = if layer.name.is_empty() { x.clone() } else { layer.name.clone() };
            let wp = self.param(&label, ParamKind::Weight, codes.shape().to_vec(), w, 1.0);
            let gs = lsq_grad_scale(codes_v.len() / scale_v.len().max(1), &grid);
            let sp = self.param(&label, ParamKind::WeightScale, scale.shape().to_vec(), s0, gs);
            let zero_points = if all_zero {
                Vec::new()
            } else {
                (0..scale_v.len())
                    .map(|j| zp_v[if zp_v.len() == 1 { 0 } else { j }] as i32)
                    .collect()
            };
            self.leaves.push(Leaf::Weight { slot, weight: wp, scale: sp, grid, map, zero_points });
            self.exports.push(Export::Weight {
                weight: wp,
                scale: sp,
                codes: x.clone(),
                scale_names: vec![scale_name],
                dtype: codes.dtype(),
            });
            self.weight_scales.insert(out, sp);
            return Ok(());
        }
        if !bias_of.is_empty()
            && bias_of.len() == consumers.len()
            && codes.dtype() == DType::I32
            && all_zero
        {
            let layer = bias_of[0].0;
            let fp32_b = fp32_input(f, layer, 2)?.filter(|b| b.len() == codes_v.len());
            let bvals = fp32_b.unwrap_or(dequant.clone());
            let in_scale = layer.input.first().and_then(|x0| self.act_scale_of.get(x0)).copied();
            let w_scale = layer.input.get(1).and_then(|w| self.weight_scales.get(w)).copied();
            if let (Some(in_scale), Some(w_scale)) = (in_scale, w_scale) {
                let label = if layer.name.is_empty() { x.clone() } else { layer.name.clone() };
                let bp = self.param(&label, ParamKind::Bias, codes.shape().to_vec(), bvals, 1.0);
                self.leaves.push(Leaf::Direct { slot, param: bp });
                self.exports.push(Export::Int32Bias {
                    bias: bp,
                    codes: x.clone(),
                    scale_name,
                    in_scale,
                    w_scale,
                });
                return Ok(());
            }
        }
        // Anything else stays as PTQ wrote it.
        self.consts.push((slot, Arr::new(codes.shape().to_vec(), dequant)));
        Ok(())
    }
}

/// The first graph output declared as float32 (or undeclared).
pub fn first_float_output(g: &lowbit_onnx::pb::GraphProto) -> Option<String> {
    use lowbit_onnx::pb::type_proto::Value;
    g.output
        .iter()
        .find(|o| match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(Value::TensorType(t)) => t.elem_type == DType::F32.onnx_id(),
            _ => true,
        })
        .map(|o| o.name.clone())
}

/// Input `k` of the FP32 counterpart of `layer` (the node producing the same output), when it
/// is a float initializer.
fn fp32_input(f: &Graph, layer: &NodeProto, k: usize) -> Result<Option<Vec<f32>>> {
    let Some(fnode) = layer.output.first().and_then(|o| f.producer_node(o)) else {
        return Ok(None);
    };
    if fnode.op_type != layer.op_type {
        return Ok(None);
    }
    let Some(name) = fnode.input.get(k) else { return Ok(None) };
    Ok(match init(f, name)? {
        Some(t) if t.dtype() == DType::F32 => Some(t.as_f32()?.to_vec()),
        _ => None,
    })
}
