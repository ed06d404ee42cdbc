//! The ops the autodiff differentiates: each has a forward pass (the same arithmetic the engine
//! runs at deployment, in f32) and a backward pass giving the gradient of every input.
//!
//! | family | ops |
//! |---|---|
//! | [`elementwise`] | Relu, LeakyRelu, Sigmoid, Tanh, Erf, Sqrt, Neg, Exp, HardSigmoid, HardSwish, Clip, Identity/Cast/Dropout; Add, Sub, Mul, Div, Pow (broadcast) |
//! | [`linalg`] | Gemm, MatMul |
//! | [`conv`] | Conv (1-3 spatial dims, grouped, depthwise) |
//! | [`pool`] | MaxPool, AveragePool, GlobalAveragePool |
//! | [`norm`] | BatchNormalization (inference), LayerNormalization, Softmax, LogSoftmax, ReduceMean, ReduceSum |
//! | [`shape`] | Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Slice, Gather, Shape, Expand, Where |
//! | (no gradient) | Shape, Equal, ConstantOfShape, Cast to integers and bool (masks and shapes) |
//! | [`crate::fake_quant`] | a QuantizeLinear → DequantizeLinear pair (per-tensor, learnable step) |

pub mod conv;
pub mod elementwise;
pub mod linalg;
pub mod norm;
pub mod pool;
pub mod shape;

use crate::arr::Arr;
use crate::fake_quant::{Grid, ScaleMap};
use conv::ConvAttrs;
use elementwise::{Binary, Unary};
use linalg::GemmAttrs;
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::NodeProto;
use pool::PoolAttrs;

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Unary(Unary),
    /// Bounds from the attributes (opset < 11) or inputs 1 and 2.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Binary(Binary),
    Gemm(GemmAttrs),
    MatMul,
    Conv(ConvAttrs),
    MaxPool(PoolAttrs),
    AveragePool(PoolAttrs),
    GlobalAveragePool,
    BatchNorm {
        eps: f32,
    },
    LayerNorm {
        axis: i64,
        eps: f32,
    },
    Softmax {
        axis: i64,
        log: bool,
        coerce: bool,
    },
    /// Axes from the attribute, else input 1.
    ReduceMean {
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty: bool,
    },
    Flatten {
        axis: i64,
    },
    Reshape {
        allowzero: bool,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Concat {
        axis: i64,
    },
    /// Bounds from the attributes (opset < 10), else inputs 1-4.
    Slice {
        attrs: Option<(Vec<i64>, Vec<i64>, Vec<i64>)>,
    },
    Gather {
        axis: i64,
    },
    Shape,
    /// Cast to an integer type (truncates) or bool; float casts are [`Unary::Identity`].
    CastInt {
        to_bool: bool,
    },
    /// Equal (a mask: no gradient).
    Equal,
    /// Where(cond, a, b).
    Where,
    /// Expand(x, shape): numpy broadcast to the shape.
    Expand,
    /// ConstantOfShape(shape) filled with `value`.
    ConstantOfShape {
        value: f32,
    },
    /// Axes from the attribute (opset < 13), else input 1.
    ReduceSum {
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty: bool,
    },
    /// A QuantizeLinear → DequantizeLinear pair: inputs `x` and the (learnable) step size.
    FakeQuant(Grid),
}

/// Why an op cannot be built or run.
pub type OpResult<T> = Result<T, String>;

fn attr_err(e: lowbit_onnx::attr::AttrError) -> String {
    e.to_string()
}

fn usizes(v: Vec<i64>) -> Vec<usize> {
    v.into_iter().map(|x| x.max(0) as usize).collect()
}

fn pool_attrs(a: &Attrs, opset: i64) -> OpResult<PoolAttrs> {
    Ok(PoolAttrs {
        kernel: usizes(a.ints("kernel_shape").map_err(attr_err)?.ok_or("kernel_shape is missing")?),
        strides: usizes(a.ints_or("strides", &[]).map_err(attr_err)?),
        pads: usizes(a.ints_or("pads", &[]).map_err(attr_err)?),
        dilations: usizes(a.ints_or("dilations", &[]).map_err(attr_err)?),
        ceil_mode: a.int_or("ceil_mode", 0).map_err(attr_err)? != 0,
        auto_pad: a.string_or("auto_pad", "NOTSET").map_err(attr_err)?,
        count_include_pad: opset >= 7 && a.int_or("count_include_pad", 0).map_err(attr_err)? != 0,
    })
}

/// `x` broadcast to `shape` (which it must broadcast to).
fn expand(x: &Arr, shape: &[usize]) -> OpResult<Arr> {
    if x.shape == shape {
        return Ok(x.clone());
    }
    let zeros = Arr::zeros(shape);
    elementwise::binary_forward(Binary::Add, &zeros, x)
}

impl Op {
    /// The op for an ONNX node (default domain) at `opset`.
    pub fn from_node(node: &NodeProto, opset: i64) -> OpResult<Op> {
        let a = Attrs::new(node);
        let e = attr_err;
        Ok(match node.op_type.as_str() {
            "Relu" => Op::Unary(Unary::Relu),
            "LeakyRelu" => Op::Unary(Unary::LeakyRelu(a.float_or("alpha", 0.01).map_err(e)?)),
            "Sigmoid" => Op::Unary(Unary::Sigmoid),
            "Tanh" => Op::Unary(Unary::Tanh),
            "Erf" => Op::Unary(Unary::Erf),
            "Sqrt" => Op::Unary(Unary::Sqrt),
            "Neg" => Op::Unary(Unary::Neg),
            "Exp" => Op::Unary(Unary::Exp),
            "HardSigmoid" => Op::Unary(Unary::HardSigmoid {
                alpha: a.float_or("alpha", 0.2).map_err(e)?,
                beta: a.float_or("beta", 0.5).map_err(e)?,
            }),
            "HardSwish" => Op::Unary(Unary::HardSwish),
            // Float-to-float casts and inference-mode dropout pass values through.
            "Identity" | "Dropout" => Op::Unary(Unary::Identity),
            "Cast" => {
                let to = a.int("to").map_err(e)?.ok_or("Cast without 'to'")?;
                match lowbit_tensor::DType::from_onnx(to as i32) {
                    Some(d) if d.is_float() => Op::Unary(Unary::Identity),
                    Some(lowbit_tensor::DType::Bool) => Op::CastInt { to_bool: true },
                    Some(_) => Op::CastInt { to_bool: false },
                    None => return Err(format!("Cast to type {to} is not supported")),
                }
            }
            "Equal" => Op::Equal,
            "Where" => Op::Where,
            "Expand" => Op::Expand,
            "ConstantOfShape" => {
                let value = match a.tensor("value").map_err(e)? {
                    Some(t) => lowbit_onnx::tensor_from_proto(t)
                        .ok()
                        .and_then(|t| Arr::from_tensor(&t))
                        .and_then(|a| a.data.first().copied())
                        .ok_or("ConstantOfShape value not understood")?,
                    None => 0.0,
                };
                Op::ConstantOfShape { value }
            }
            "ReduceSum" => Op::ReduceSum {
                axes: a.ints("axes").map_err(e)?,
                keepdims: a.int_or("keepdims", 1).map_err(e)? != 0,
                noop_with_empty: a.int_or("noop_with_empty_axes", 0).map_err(e)? != 0,
            },
            "Clip" => Op::Clip { min: a.float("min").map_err(e)?, max: a.float("max").map_err(e)? },
            "Add" => Op::Binary(Binary::Add),
            "Sub" => Op::Binary(Binary::Sub),
            "Mul" => Op::Binary(Binary::Mul),
            "Div" => Op::Binary(Binary::Div),
            "Pow" => Op::Binary(Binary::Pow),
            "Gemm" => Op::Gemm(GemmAttrs {
                alpha: a.float_or("alpha", 1.0).map_err(e)?,
                beta: a.float_or("beta", 1.0).map_err(e)?,
                trans_a: a.int_or("transA", 0).map_err(e)? != 0,
                trans_b: a.int_or("transB", 0).map_err(e)? != 0,
            }),
            "MatMul" => Op::MatMul,
            "Conv" => Op::Conv(ConvAttrs {
                group: a.int_or("group", 1).map_err(e)?.max(1) as usize,
                strides: usizes(a.ints_or("strides", &[]).map_err(e)?),
                dilations: usizes(a.ints_or("dilations", &[]).map_err(e)?),
                pads: usizes(a.ints_or("pads", &[]).map_err(e)?),
                auto_pad: a.string_or("auto_pad", "NOTSET").map_err(e)?,
            }),
            "MaxPool" => {
                if node.output.get(1).is_some_and(|o| !o.is_empty()) {
                    return Err("MaxPool's Indices output is not supported".into());
                }
                Op::MaxPool(pool_attrs(&a, opset)?)
            }
            "AveragePool" => Op::AveragePool(pool_attrs(&a, opset)?),
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "BatchNormalization" => {
                if a.int_or("training_mode", 0).map_err(e)? != 0 {
                    return Err("training_mode BatchNormalization is not supported".into());
                }
                Op::BatchNorm { eps: a.float_or("epsilon", 1e-5).map_err(e)? }
            }
            "LayerNormalization" => Op::LayerNorm {
                axis: a.int_or("axis", -1).map_err(e)?,
                eps: a.float_or("epsilon", 1e-5).map_err(e)?,
            },
            "Softmax" | "LogSoftmax" => Op::Softmax {
                axis: a.int_or("axis", if opset >= 13 { -1 } else { 1 }).map_err(e)?,
                log: node.op_type == "LogSoftmax",
                coerce: opset < 13,
            },
            "ReduceMean" => Op::ReduceMean {
                axes: a.ints("axes").map_err(e)?,
                keepdims: a.int_or("keepdims", 1).map_err(e)? != 0,
                noop_with_empty: a.int_or("noop_with_empty_axes", 0).map_err(e)? != 0,
            },
            "Flatten" => Op::Flatten { axis: a.int_or("axis", 1).map_err(e)? },
            "Reshape" => Op::Reshape { allowzero: a.int_or("allowzero", 0).map_err(e)? != 0 },
            "Squeeze" => Op::Squeeze { axes: a.ints("axes").map_err(e)? },
            "Unsqueeze" => Op::Unsqueeze { axes: a.ints("axes").map_err(e)? },
            "Transpose" => Op::Transpose { perm: usizes(a.ints_or("perm", &[]).map_err(e)?) },
            "Concat" => Op::Concat { axis: a.int("axis").map_err(e)?.ok_or("axis is missing")? },
            "Slice" => Op::Slice {
                attrs: match a.ints("starts").map_err(e)? {
                    Some(s) => Some((
                        s,
                        a.ints_or("ends", &[]).map_err(e)?,
                        a.ints_or("axes", &[]).map_err(e)?,
                    )),
                    None => None,
                },
            },
            "Gather" => Op::Gather { axis: a.int_or("axis", 0).map_err(e)? },
            "Shape" => {
                if a.has("start") || a.has("end") {
                    return Err("Shape with start/end is not supported".into());
                }
                Op::Shape
            }
            other => return Err(format!("QAT has no backward pass for {other}")),
        })
    }

    /// Inputs whose gradient is never needed (shapes, indices, axes, BN statistics).
    pub fn constant_input(&self, i: usize) -> bool {
        match self {
            Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::ReduceMean { .. } => i >= 1,
            Op::ReduceSum { .. } | Op::Expand => i >= 1,
            Op::Where => i == 0,
            Op::Equal | Op::CastInt { .. } | Op::ConstantOfShape { .. } => true,
            Op::Slice { .. } | Op::Clip { .. } | Op::BatchNorm { .. } => i >= 1,
            Op::Gather { .. } => i == 1,
            Op::Shape => true,
            _ => false,
        }
    }

    pub fn forward(&self, x: &[Option<&Arr>]) -> OpResult<Arr> {
        let req =
            |i: usize| x.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"));
        let opt = |i: usize| x.get(i).copied().flatten();
        let x0 = req(0)?;
        Ok(match self {
            Op::Unary(u) => elementwise::unary_forward(u, x0),
            Op::Clip { min, max } => {
                let (lo, hi) = self.clip_bounds(x, *min, *max);
                elementwise::clip_forward(x0, lo, hi)
            }
            Op::Binary(b) => elementwise::binary_forward(*b, x0, req(1)?)?,
            Op::Gemm(p) => linalg::gemm_forward(p, x0, req(1)?, opt(2))?,
            Op::MatMul => linalg::matmul_forward(x0, req(1)?)?,
            Op::Conv(p) => conv::conv_forward(p, x0, req(1)?, opt(2))?,
            Op::MaxPool(p) => pool::max_pool_forward(p, x0)?,
            Op::AveragePool(p) => pool::avg_pool_forward(p, x0)?,
            Op::GlobalAveragePool => pool::global_avg_forward(x0)?,
            Op::BatchNorm { eps } => {
                let (a, b) = norm::batch_norm_coeffs(req(1)?, req(2)?, req(3)?, req(4)?, *eps);
                norm::channel_affine(x0, &a, Some(&b))?
            }
            Op::LayerNorm { axis, eps } => {
                norm::layer_norm_forward(x0, req(1)?, opt(2), *axis, *eps)?
            }
            Op::Softmax { axis, log, coerce } => norm::softmax_forward(x0, *axis, *log, *coerce)?,
            Op::ReduceMean { keepdims, .. } => {
                let axes = self.reduce_axes(x)?;
                norm::reduce_mean_forward(x0, &axes, *keepdims)
            }
            Op::Transpose { perm } => shape::transpose(x0, perm, false)?,
            Op::Concat { axis } => {
                let xs: Vec<&Arr> = x.iter().flatten().copied().collect();
                shape::concat_forward(&xs, *axis)?
            }
            Op::Slice { .. } => shape::slice_forward(x0, &self.slice_plan(x)?),
            Op::Gather { axis } => shape::gather_forward(x0, req(1)?, *axis)?,
            Op::Shape => Arr::new(vec![x0.rank()], x0.shape.iter().map(|&d| d as f32).collect()),
            Op::CastInt { to_bool } => Arr::new(
                x0.shape.clone(),
                x0.data
                    .iter()
                    .map(|&v| if *to_bool { (v != 0.0) as u8 as f32 } else { v.trunc() })
                    .collect(),
            ),
            Op::Equal => {
                let (a, b) = (x0, req(1)?);
                let ones = elementwise::binary_forward(Binary::Sub, a, b)?;
                Arr::new(ones.shape, ones.data.iter().map(|&d| (d == 0.0) as u8 as f32).collect())
            }
            Op::Where => {
                let (c, a, b) = (x0, req(1)?, req(2)?);
                let shape = elementwise::broadcast_shape(
                    &elementwise::broadcast_shape(&c.shape, &a.shape)?,
                    &b.shape,
                )?;
                let (c, a, b) = (expand(c, &shape)?, expand(a, &shape)?, expand(b, &shape)?);
                let y = c
                    .data
                    .iter()
                    .zip(&a.data)
                    .zip(&b.data)
                    .map(|((&c, &a), &b)| if c != 0.0 { a } else { b })
                    .collect();
                Arr::new(shape, y)
            }
            Op::Expand => {
                let target: Vec<usize> =
                    req(1)?.ints().into_iter().map(|d| d.max(0) as usize).collect();
                let shape = elementwise::broadcast_shape(&x0.shape, &target)?;
                expand(x0, &shape)?
            }
            Op::ConstantOfShape { value } => {
                let shape: Vec<usize> = x0.ints().into_iter().map(|d| d.max(0) as usize).collect();
                Arr::new(shape.clone(), vec![*value; shape.iter().product()])
            }
            Op::ReduceSum { keepdims, .. } => {
                let axes = self.reduce_axes(x)?;
                let count: usize = axes.iter().map(|&a| x0.shape[a]).product();
                let mut y = norm::reduce_mean_forward(x0, &axes, *keepdims);
                y.data.iter_mut().for_each(|v| *v *= count.max(1) as f32);
                y
            }
            Op::FakeQuant(grid) => {
                let s = req(1)?;
                if s.len() != 1 {
                    return Err(format!(
                        "per-axis activation quantization ({} scales) is not supported",
                        s.len()
                    ));
                }
                Arr::new(
                    x0.shape.clone(),
                    crate::fake_quant::fake_quant(
                        &x0.data,
                        &s.data,
                        &[],
                        &ScaleMap::PER_TENSOR,
                        grid,
                    ),
                )
            }
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                Arr::new(self.new_shape(x)?, x0.data.clone())
            }
        })
    }

    /// Gradients of the inputs (`None` where constant or absent), given the forward inputs,
    /// output `y` and the output's gradient `gy`.
    pub fn backward(&self, x: &[Option<&Arr>], y: &Arr, gy: &Arr) -> OpResult<Vec<Option<Arr>>> {
        let req =
            |i: usize| x.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"));
        let opt = |i: usize| x.get(i).copied().flatten();
        let x0 = req(0)?;
        let one = |g: Arr| vec![Some(g)];
        Ok(match self {
            Op::Unary(u) => one(elementwise::unary_backward(u, x0, y, gy)),
            Op::Clip { min, max } => {
                let (lo, hi) = self.clip_bounds(x, *min, *max);
                one(elementwise::clip_backward(x0, lo, hi, gy))
            }
            Op::Binary(b) => {
                let (ga, gb) = elementwise::binary_backward(*b, x0, req(1)?, y, gy);
                vec![Some(ga), Some(gb)]
            }
            Op::Gemm(p) => linalg::gemm_backward(p, x0, req(1)?, opt(2), gy)?,
            Op::MatMul => {
                let (ga, gb) = linalg::matmul_backward(x0, req(1)?, gy)?;
                vec![Some(ga), Some(gb)]
            }
            Op::Conv(p) => conv::conv_backward(p, x0, req(1)?, opt(2), gy)?,
            Op::MaxPool(p) => one(pool::max_pool_backward(p, x0, gy)?),
            Op::AveragePool(p) => one(pool::avg_pool_backward(p, x0, gy)?),
            Op::GlobalAveragePool => one(pool::global_avg_backward(x0, gy)),
            Op::BatchNorm { eps } => {
                let (a, _) = norm::batch_norm_coeffs(req(1)?, req(2)?, req(3)?, req(4)?, *eps);
                one(norm::channel_affine(gy, &a, None)?)
            }
            Op::LayerNorm { axis, eps } => {
                norm::layer_norm_backward(x0, req(1)?, opt(2), gy, *axis, *eps)?
            }
            Op::Softmax { axis, log, coerce } => {
                one(norm::softmax_backward(x0, y, gy, *axis, *log, *coerce)?)
            }
            Op::ReduceMean { .. } => {
                one(norm::reduce_mean_backward(x0, &self.reduce_axes(x)?, gy)?)
            }
            Op::Transpose { perm } => one(shape::transpose(gy, perm, true)?),
            Op::Concat { axis } => {
                let xs: Vec<&Arr> = x.iter().flatten().copied().collect();
                let mut gs = shape::concat_backward(&xs, *axis, gy).into_iter();
                // Absent (empty-named) inputs keep their slots.
                x.iter().map(|xi| xi.and_then(|_| gs.next().flatten())).collect()
            }
            Op::Slice { .. } => one(shape::slice_backward(x0, &self.slice_plan(x)?, gy)),
            Op::Gather { axis } => {
                vec![Some(shape::gather_backward(x0, req(1)?, *axis, gy)?), None]
            }
            Op::Shape | Op::CastInt { .. } | Op::Equal | Op::ConstantOfShape { .. } => {
                vec![None; x.len()]
            }
            Op::Where => {
                let (c, a, b) = (x0, req(1)?, req(2)?);
                let cs = expand(c, &gy.shape)?;
                let ga: Vec<f32> = gy
                    .data
                    .iter()
                    .zip(&cs.data)
                    .map(|(&g, &c)| if c != 0.0 { g } else { 0.0 })
                    .collect();
                let gb: Vec<f32> = gy
                    .data
                    .iter()
                    .zip(&cs.data)
                    .map(|(&g, &c)| if c != 0.0 { 0.0 } else { g })
                    .collect();
                let ga = elementwise::reduce_to(&Arr::new(gy.shape.clone(), ga), &a.shape);
                let gb = elementwise::reduce_to(&Arr::new(gy.shape.clone(), gb), &b.shape);
                vec![None, Some(ga), Some(gb)]
            }
            Op::Expand => vec![Some(elementwise::reduce_to(gy, &x0.shape)), None],
            Op::ReduceSum { .. } => {
                let axes = self.reduce_axes(x)?;
                let count: usize = axes.iter().map(|&a| x0.shape[a]).product();
                let mut g = norm::reduce_mean_backward(x0, &axes, gy)?;
                g.data.iter_mut().for_each(|v| *v *= count.max(1) as f32);
                vec![Some(g), None]
            }
            Op::FakeQuant(grid) => {
                let s = req(1)?;
                let (gx, gs) = crate::fake_quant::fake_quant_backward(
                    &x0.data,
                    &s.data,
                    &[],
                    &ScaleMap::PER_TENSOR,
                    grid,
                    &gy.data,
                );
                vec![Some(Arr::new(x0.shape.clone(), gx)), Some(Arr::new(s.shape.clone(), gs))]
            }
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                one(Arr::new(x0.shape.clone(), gy.data.clone()))
            }
        })
    }

    fn clip_bounds(&self, x: &[Option<&Arr>], min: Option<f32>, max: Option<f32>) -> (f32, f32) {
        let input = |i: usize| x.get(i).copied().flatten().and_then(|a| a.data.first().copied());
        (input(1).or(min).unwrap_or(f32::NEG_INFINITY), input(2).or(max).unwrap_or(f32::INFINITY))
    }

    fn reduce_axes(&self, x: &[Option<&Arr>]) -> OpResult<Vec<usize>> {
        let (Op::ReduceMean { axes, noop_with_empty, .. }
        | Op::ReduceSum { axes, noop_with_empty, .. }) = self
        else {
            unreachable!()
        };
        let rank = x[0].map_or(0, |a| a.rank());
        let axes = match axes {
            Some(a) => a.clone(),
            None => x.get(1).copied().flatten().map(|a| a.ints()).unwrap_or_default(),
        };
        norm::reduce_axes(rank, &axes, *noop_with_empty)
    }

    fn slice_plan(&self, x: &[Option<&Arr>]) -> OpResult<Vec<(i64, i64, usize)>> {
        let Op::Slice { attrs } = self else { unreachable!() };
        let shape = &x[0].ok_or("input 0 is missing")?.shape;
        let ints = |i: usize| x.get(i).copied().flatten().map(|a| a.ints()).unwrap_or_default();
        match attrs {
            Some((s, e, a)) => shape::slice_plan(shape, s, e, a, &[]),
            None => shape::slice_plan(shape, &ints(1), &ints(2), &ints(3), &ints(4)),
        }
    }

    fn new_shape(&self, x: &[Option<&Arr>]) -> OpResult<Vec<usize>> {
        let s = &x[0].ok_or("input 0 is missing")?.shape;
        let ints = |i: usize| x.get(i).copied().flatten().map(|a| a.ints());
        match self {
            Op::Flatten { axis } => shape::flatten_shape(s, *axis),
            Op::Reshape { allowzero } => {
                shape::reshape_shape(s, &ints(1).ok_or("shape input is missing")?, *allowzero)
            }
            Op::Squeeze { axes } => {
                shape::squeeze_shape(s, &axes.clone().or_else(|| ints(1)).unwrap_or_default())
            }
            Op::Unsqueeze { axes } => shape::unsqueeze_shape(
                s,
                &axes.clone().or_else(|| ints(1)).ok_or("axes are missing")?,
            ),
            _ => unreachable!(),
        }
    }
}
