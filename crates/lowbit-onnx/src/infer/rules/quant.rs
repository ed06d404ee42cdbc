//! Quantization: `QuantizeLinear` (the code type from the zero point or `output_dtype`, u8 by
//! default), `DequantizeLinear` (the scale's type), `DynamicQuantizeLinear`, and the integer
//! products (`MatMulInteger`/`ConvInteger` give int32, `QLinear*` the output zero point's type)
//! with the shapes of their float forms.

use lowbit_tensor::DType;

use super::linalg::matmul_shape;
use super::nn::conv_shape;
use super::RuleFn;
use crate::infer::{out, Cx, Out, Result};

pub(super) const RULES: &[(&str, RuleFn)] = &[
    ("QuantizeLinear", quantize),
    ("DequantizeLinear", dequantize),
    ("DynamicQuantizeLinear", dynamic_quantize),
    ("MatMulInteger", matmul_integer),
    ("ConvInteger", conv_integer),
    ("QLinearMatMul", qlinear_matmul),
    ("QLinearConv", qlinear_conv),
];

fn quantize(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = if cx.has_input(2) {
        cx.dtype(2)
    } else {
        match cx.attrs.int_or("output_dtype", 0)? {
            0 => Some(DType::U8),
            d => DType::from_onnx(d as i32),
        }
    };
    Ok(vec![out(dtype, cx.shape(0))])
}

fn dequantize(cx: &mut Cx) -> Result<Vec<Out>> {
    let dtype = match cx.attrs.int_or("output_dtype", 0)? {
        0 => cx.dtype(1).or(Some(DType::F32)),
        d => DType::from_onnx(d as i32),
    };
    Ok(vec![out(dtype, cx.shape(0))])
}

/// Codes (u8) of the input's shape, then the scalar scale and zero point.
fn dynamic_quantize(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![
        out(Some(DType::U8), cx.shape(0)),
        out(Some(DType::F32), Some(vec![])),
        out(Some(DType::U8), Some(vec![])),
    ])
}

fn matmul_integer(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(Some(DType::I32), matmul_shape(cx, 0, 1)?)])
}

fn conv_integer(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(Some(DType::I32), conv_shape(cx, 0, 1, false)?)])
}

/// Inputs: a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp.
fn qlinear_matmul(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(cx.dtype(7), matmul_shape(cx, 0, 3)?)])
}

/// Inputs: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias.
fn qlinear_conv(cx: &mut Cx) -> Result<Vec<Out>> {
    Ok(vec![out(cx.dtype(7), conv_shape(cx, 0, 3, false)?)])
}
