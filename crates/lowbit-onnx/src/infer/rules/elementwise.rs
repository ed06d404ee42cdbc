//! Element-wise ops: unary maps keep their input's type, binary ops broadcast, comparisons and
//! logic give `bool`, `Cast`/`BitCast` change the element type only. Known inputs fold.

use lowbit_tensor::DType;

use super::RuleFn;
use crate::infer::fold::{cast_const, fold_unary};
use crate::infer::{out, Cx, Out, Result, ValueType};

pub(super) const RULES: &[(&str, RuleFn)] = &[
    ("Abs", unary),
    ("Neg", unary),
    ("Relu", unary),
    ("Sigmoid", unary),
    ("Tanh", unary),
    ("Exp", unary),
    ("Log", unary),
    ("Sqrt", unary),
    ("Erf", unary),
    ("Reciprocal", unary),
    ("Floor", unary),
    ("Ceil", unary),
    ("Round", unary),
    ("Sign", unary),
    ("Sin", unary),
    ("Cos", unary),
    ("Tan", unary),
    ("Asin", unary),
    ("Acos", unary),
    ("Atan", unary),
    ("Sinh", unary),
    ("Cosh", unary),
    ("Asinh", unary),
    ("Acosh", unary),
    ("Atanh", unary),
    ("Softplus", unary),
    ("Softsign", unary),
    ("HardSigmoid", unary),
    ("HardSwish", unary),
    ("LeakyRelu", unary),
    ("Elu", unary),
    ("Selu", unary),
    ("Celu", unary),
    ("Gelu", unary),
    ("ThresholdedRelu", unary),
    ("Mish", unary),
    ("Swish", unary),
    ("Clip", unary),
    ("Shrink", unary),
    ("BitwiseNot", unary),
    ("Add", binary),
    ("Sub", binary),
    ("Mul", binary),
    ("Div", binary),
    ("Pow", binary),
    ("Mod", binary),
    ("Max", binary),
    ("Min", binary),
    ("Sum", binary),
    ("Mean", binary),
    ("BitShift", binary),
    ("BitwiseAnd", binary),
    ("BitwiseOr", binary),
    ("BitwiseXor", binary),
    ("PRelu", prelu),
    ("Equal", comparison),
    ("Less", comparison),
    ("Greater", comparison),
    ("LessOrEqual", comparison),
    ("GreaterOrEqual", comparison),
    ("And", comparison),
    ("Or", comparison),
    ("Xor", comparison),
    ("Not", predicate),
    ("IsNaN", predicate),
    ("IsInf", predicate),
    ("Where", where_),
    ("Cast", cast),
    ("CastLike", cast),
    ("BitCast", bitcast),
];

/// Output 0 has input 0's type (and its value, for the few maps that fold).
pub(super) fn unary(cx: &mut Cx) -> Result<Vec<Out>> {
    let val = cx.cval(0).and_then(|c| fold_unary(&cx.node.op_type, c));
    Ok(vec![Out { ty: ValueType::new(cx.dtype(0), cx.shape(0)), val }])
}

/// Every input broadcast together, as `dtype`.
fn broadcasting(cx: &mut Cx, dtype: Option<DType>) -> Result<Vec<Out>> {
    let shape = cx.broadcast_inputs(0..cx.node.input.len())?;
    let val = shape.as_ref().and_then(|s| cx.fold_binary(&cx.node.op_type, s));
    Ok(vec![Out { ty: ValueType::new(dtype, shape), val }])
}

fn binary(cx: &mut Cx) -> Result<Vec<Out>> {
    broadcasting(cx, cx.dtype(0))
}

fn comparison(cx: &mut Cx) -> Result<Vec<Out>> {
    broadcasting(cx, Some(DType::Bool))
}

/// `PRelu`: the slope must broadcast to the input, whose type the output keeps.
fn prelu(cx: &mut Cx) -> Result<Vec<Out>> {
    cx.broadcast_inputs(0..cx.node.input.len())?;
    Ok(vec![out(cx.dtype(0), cx.shape(0))])
}

fn predicate(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(Some(DType::Bool), cx.shape(0))])
}

fn where_(cx: &mut Cx) -> Result<Vec<Out>> {
    let shape = cx.broadcast_inputs(0..3)?;
    let val = shape.as_ref().and_then(|s| cx.fold_where(s));
    Ok(vec![Out { ty: ValueType::new(cx.dtype(1).or(cx.dtype(2)), shape), val }])
}

fn cast(cx: &mut Cx) -> Result<Vec<Out>> {
    let to = if cx.node.op_type == "Cast" {
        DType::from_onnx(cx.attrs.req_int("to")? as i32)
    } else {
        cx.dtype(1)
    };
    let val = to.and_then(|d| cx.cval(0).and_then(|c| cast_const(c, d)));
    Ok(vec![Out { ty: ValueType::new(to, cx.shape(0)), val }])
}

/// `BitCast`: the same bits as `to`; the shape is kept when the element widths agree (the
/// only case the engine runs).
fn bitcast(cx: &mut Cx) -> Result<Vec<Out>> {
    let to = DType::from_onnx(cx.attrs.req_int("to")? as i32);
    let same_width = matches!((cx.dtype(0), to), (Some(a), Some(b)) if a.bits() == b.bits());
    Ok(vec![out(to, cx.shape(0).filter(|_| same_width))])
}
