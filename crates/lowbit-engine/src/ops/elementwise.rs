//! Element-wise ops: unary math and activations, numpy-broadcasting binary arithmetic,
//! comparisons and logic, variadic `Max`/`Min`/`Sum`/`Mean`, `Where`, `Clip`, `Cast`,
//! `CastLike`, `BitCast`.
//!
//! Semantics follow ONNX Runtime's CPU kernels: integer arithmetic wraps, integer `Div`
//! truncates toward zero (a zero divisor is an error, not a crash), `Mod` follows the divisor's
//! sign unless `fmod=1`, `Round` rounds half to even, float ops on `f16`/`bf16` compute in `f32`
//! and round once. Broadcasting walks rows (see [`broadcast`]), so the hot `[1,seq,384] + [384]`
//! case is a contiguous loop per row with no index arithmetic per element.

pub mod broadcast;
pub mod num;

use crate::bail;
use crate::error::{OpError, OpResult};
use crate::op::{input, kernel, opt_input, KernelResult};
use crate::registry::Registry;
use broadcast::{map2, map3};
use half::{bf16, f16};
use lowbit_tensor::cast::cast_with;
use lowbit_tensor::tensor::Element;
use lowbit_tensor::{DType, Tensor, TensorData};
use num::{dispatch_int, dispatch_num, dispatch_ord, Int, Num};

/// A kernel from a closure over the node's inputs.
/// A one-input, one-output kernel.
fn unary(f: impl Fn(&Tensor) -> OpResult<Tensor> + Send + Sync + 'static) -> KernelResult {
    kernel(move |ins| Ok(vec![f(input(ins, 0)?)?]))
}

/// A two-input, one-output kernel.
fn binary(
    f: impl Fn(&Tensor, &Tensor) -> OpResult<Tensor> + Send + Sync + 'static,
) -> KernelResult {
    kernel(move |ins| Ok(vec![f(input(ins, 0)?, input(ins, 1)?)?]))
}

/// `f` over every element of `x`.
fn map_unary<T: Element, O: Element>(x: &Tensor, f: impl Fn(T) -> O + Sync) -> OpResult<Tensor> {
    use rayon::prelude::*;
    let v = x.as_slice::<T>()?;
    let out = if broadcast::parallel(v.len()) {
        v.par_iter().map(|&e| f(e)).collect()
    } else {
        v.iter().map(|&e| f(e)).collect()
    };
    Ok(Tensor::from_vec(x.shape().to_vec(), out)?)
}

/// `f` over `a` and `b` broadcast together.
fn map_binary<A: Element, B: Element, O: Element + Default>(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(A, B) -> O + Sync,
) -> OpResult<Tensor> {
    let (shape, v) =
        map2((a.shape(), a.as_slice::<A>()?), (b.shape(), b.as_slice::<B>()?), |&x, &y| f(x, y))?;
    Ok(Tensor::from_vec(shape, v)?)
}

fn same_dtype(a: &Tensor, b: &Tensor) -> OpResult<DType> {
    if a.dtype() != b.dtype() {
        bail!("inputs must have the same type, got {} and {}", a.dtype(), b.dtype());
    }
    Ok(a.dtype())
}

fn unsupported<T>(what: &str, dt: DType) -> OpResult<T> {
    Err(OpError::new(format!("{what} is not supported for {dt} tensors")))
}

/// Applies `|$v: $F| $body` to a float tensor: `$F` is `f32` or `f64`; `f16`/`bf16` elements are
/// computed in `f32` and rounded back.
macro_rules! float_map {
    ($x:expr, |$v:ident: $F:ident| $body:expr) => {{
        let x: &Tensor = $x;
        let data = match x.data() {
            TensorData::F32(d) => {
                #[allow(dead_code)]
                type $F = f32;
                if broadcast::parallel(d.len()) {
                    use rayon::prelude::*;
                    TensorData::F32(d.par_iter().map(|&$v| $body).collect())
                } else {
                    TensorData::F32(d.iter().map(|&$v| $body).collect())
                }
            }
            TensorData::F64(d) => {
                #[allow(dead_code)]
                type $F = f64;
                TensorData::F64(d.iter().map(|&$v| $body).collect())
            }
            TensorData::F16(d) => {
                #[allow(dead_code)]
                type $F = f32;
                TensorData::F16(
                    d.iter()
                        .map(|h| {
                            let $v = h.to_f32();
                            f16::from_f32($body)
                        })
                        .collect(),
                )
            }
            TensorData::BF16(d) => {
                #[allow(dead_code)]
                type $F = f32;
                TensorData::BF16(
                    d.iter()
                        .map(|h| {
                            let $v = h.to_f32();
                            bf16::from_f32($body)
                        })
                        .collect(),
                )
            }
            _ => return unsupported("this op", x.dtype()),
        };
        Ok(Tensor::new(x.shape().to_vec(), data)?)
    }};
}

/// Registers float-only unary ops whose body needs no attributes.
macro_rules! float_unary_ops {
    ($reg:expr; $($name:literal => |$v:ident: $F:ident| $body:expr;)*) => {$(
        $reg.register("", $name, |_ctx| unary(|x| float_map!(x, |$v: $F| $body)));
    )*};
}

/// `erf` in f32 precision: Eigen's rational approximation on [-4, 4] (±1 beyond), the same
/// one ONNX Runtime's MLAS uses. Plain multiply-add rather than `mul_add`: without FMA enabled
/// at compile time `mul_add` is a software `fmaf` call, which profiled at 15 % of MiniLM.
#[inline]
#[allow(clippy::excessive_precision)] // the published coefficients, kept verbatim
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_2e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_473_9e-2;
    (x * p / q).clamp(-1.0, 1.0)
}

trait ErfExt {
    fn erf_(self) -> Self;
}
impl ErfExt for f32 {
    #[inline]
    fn erf_(self) -> Self {
        erf_f32(self)
    }
}
impl ErfExt for f64 {
    #[inline]
    fn erf_(self) -> Self {
        num::erf_f64(self)
    }
}

/// The logistic sigmoid and softplus, overflow-safe for either sign (shared with the
/// recurrent layers' gate activations).
pub(crate) trait SigmoidExp {
    fn sigmoid(self) -> Self;
    fn softplus(self) -> Self;
}
macro_rules! sigmoid_impl {
    ($t:ty) => {
        impl SigmoidExp for $t {
            #[inline]
            fn sigmoid(self) -> Self {
                if self >= 0.0 {
                    1.0 / (1.0 + (-self).exp())
                } else {
                    let e = self.exp();
                    e / (1.0 + e)
                }
            }
            #[inline]
            fn softplus(self) -> Self {
                if self > 0.0 {
                    self + (-self).exp().ln_1p()
                } else {
                    self.exp().ln_1p()
                }
            }
        }
    };
}
sigmoid_impl!(f32);
sigmoid_impl!(f64);

fn register_unary(reg: &mut Registry) {
    float_unary_ops!(reg;
        "Exp" => |x: F| x.exp();
        "Log" => |x: F| x.ln();
        "Sqrt" => |x: F| x.sqrt();
        "Reciprocal" => |x: F| 1.0 / x;
        "Floor" => |x: F| x.floor();
        "Ceil" => |x: F| x.ceil();
        "Round" => |x: F| x.round_ties_even();
        "Sin" => |x: F| x.sin();
        "Cos" => |x: F| x.cos();
        "Tan" => |x: F| x.tan();
        "Asin" => |x: F| x.asin();
        "Acos" => |x: F| x.acos();
        "Atan" => |x: F| x.atan();
        "Sinh" => |x: F| x.sinh();
        "Cosh" => |x: F| x.cosh();
        "Asinh" => |x: F| x.asinh();
        "Acosh" => |x: F| x.acosh();
        "Atanh" => |x: F| x.atanh();
        "Tanh" => |x: F| x.tanh();
        "Sigmoid" => |x: F| x.sigmoid();
        "Erf" => |x: F| x.erf_();
        "Softplus" => |x: F| x.softplus();
        "Softsign" => |x: F| x / (1.0 + x.abs());
        "Mish" => |x: F| x * x.softplus().tanh();
        "HardSwish" => |x: F| x * (x / 6.0 + 0.5).clamp(0.0, 1.0);
    );

    reg.register("", "LeakyRelu", |ctx| {
        let alpha = ctx.attrs.float_or("alpha", 0.01)? as f64;
        unary(move |x| float_map!(x, |v: F| if v >= 0.0 { v } else { alpha as F * v }))
    });
    reg.register("", "Elu", |ctx| {
        let alpha = ctx.attrs.float_or("alpha", 1.0)? as f64;
        unary(move |x| float_map!(x, |v: F| if v >= 0.0 { v } else { alpha as F * v.exp_m1() }))
    });
    reg.register("", "Selu", |ctx| {
        let alpha = ctx.attrs.float_or("alpha", 1.673_263_2)? as f64;
        let gamma = ctx.attrs.float_or("gamma", 1.050_701)? as f64;
        unary(move |x| {
            float_map!(x, |v: F| if v > 0.0 {
                gamma as F * v
            } else {
                gamma as F * (alpha as F * v.exp() - alpha as F)
            })
        })
    });
    reg.register("", "Celu", |ctx| {
        let alpha = ctx.attrs.float_or("alpha", 1.0)? as f64;
        unary(move |x| {
            float_map!(x, |v: F| v.max(0.0) + (alpha as F * (v / alpha as F).exp_m1()).min(0.0))
        })
    });
    reg.register("", "HardSigmoid", |ctx| {
        let alpha = ctx.attrs.float_or("alpha", 0.2)? as f64;
        let beta = ctx.attrs.float_or("beta", 0.5)? as f64;
        unary(move |x| float_map!(x, |v: F| (alpha as F * v + beta as F).clamp(0.0, 1.0)))
    });
    reg.register("", "ThresholdedRelu", |ctx| {
        let alpha = ctx.attrs.float_or("alpha", 1.0)? as f64;
        unary(move |x| float_map!(x, |v: F| if v > alpha as F { v } else { 0.0 }))
    });
    reg.register("", "Shrink", |ctx| {
        let lambd = ctx.attrs.float_or("lambd", 0.5)? as f64;
        let bias = ctx.attrs.float_or("bias", 0.0)? as f64;
        unary(move |x| {
            float_map!(x, |v: F| if v < -lambd as F {
                v + bias as F
            } else if v > lambd as F {
                v - bias as F
            } else {
                0.0
            })
        })
    });
    reg.register("", "Gelu", |ctx| {
        let approximate = ctx.attrs.string_or("approximate", "none")?;
        match approximate.as_str() {
            "none" => unary(|x| {
                float_map!(x, |v: F| 0.5
                    * v
                    * (1.0 + (v * std::f64::consts::FRAC_1_SQRT_2 as F).erf_()))
            }),
            "tanh" => unary(|x| {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                float_map!(x, |v: F| 0.5 * v * (1.0 + (k as F * (v + 0.044715 * v * v * v)).tanh()))
            }),
            other => {
                Err(ctx.attrs.invalid("approximate", format!("'{other}' is not none or tanh")))?
            }
        }
    });

    // Numeric unary ops that also take integers.
    reg.register("", "Abs", |_| {
        unary(|x| dispatch_num!(x.dtype(), T => map_unary(x, |v: T| v.abs()), _ => unsupported("Abs", x.dtype())))
    });
    reg.register("", "Neg", |_| {
        unary(|x| dispatch_num!(x.dtype(), T => map_unary(x, |v: T| v.neg()), _ => unsupported("Neg", x.dtype())))
    });
    reg.register("", "Sign", |_| {
        unary(|x| {
            dispatch_num!(x.dtype(), T => map_unary(x, |v: T| {
                if v > T::zero() {
                    T::one()
                } else if v < T::zero() {
                    T::one().neg()
                } else {
                    v
                }
            }), _ => unsupported("Sign", x.dtype()))
        })
    });
    reg.register("", "Relu", |_| {
        unary(|x| {
            dispatch_num!(x.dtype(), T => map_unary(x, |v: T| if v < T::zero() { T::zero() } else { v }),
                _ => unsupported("Relu", x.dtype()))
        })
    });
    reg.register("", "Not", |_| unary(|x| map_unary(x, |v: bool| !v)));
    reg.register("", "BitwiseNot", |_| {
        unary(|x| dispatch_int!(x.dtype(), T => map_unary(x, |v: T| v.not()), _ => unsupported("BitwiseNot", x.dtype())))
    });
    reg.register("", "IsNaN", |_| {
        unary(|x| {
            if !x.dtype().is_float() {
                return unsupported("IsNaN", x.dtype());
            }
            Ok(Tensor::from_vec(
                x.shape().to_vec(),
                x.to_f64_vec()?.iter().map(|v| v.is_nan()).collect(),
            )?)
        })
    });
    reg.register("", "IsInf", |ctx| {
        let neg = ctx.attrs.int_or("detect_negative", 1)? != 0;
        let pos = ctx.attrs.int_or("detect_positive", 1)? != 0;
        unary(move |x| {
            if !x.dtype().is_float() {
                return unsupported("IsInf", x.dtype());
            }
            let v = x.to_f64_vec()?;
            let out =
                v.iter().map(|&v| (pos && v == f64::INFINITY) || (neg && v == f64::NEG_INFINITY));
            Ok(Tensor::from_vec(x.shape().to_vec(), out.collect())?)
        })
    });
}

/// Registers a same-dtype numeric binary op; `$int_div` rejects integer zero divisors.
macro_rules! arith_op {
    ($reg:expr, $name:literal, $int_div:expr, |$x:ident, $y:ident| $body:expr) => {
        $reg.register("", $name, |_| {
            binary(|a, b| {
                let dt = same_dtype(a, b)?;
                dispatch_num!(dt, T => {
                    if $int_div && !T::IS_FLOAT {
                        check_no_zero::<T>(b)?;
                    }
                    map_binary(a, b, |$x: T, $y: T| $body)
                }, _ => unsupported($name, dt))
            })
        });
    };
}

/// Integer `Div`/`Mod` by zero is undefined in C++; here it is an error.
fn check_no_zero<T: Num>(b: &Tensor) -> OpResult<()> {
    if b.as_slice::<T>()?.iter().any(|&v| v == T::zero()) {
        bail!("integer division by zero");
    }
    Ok(())
}

/// `Pow`: the output has the base's type; the exponent may be any numeric type.
fn pow(a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
    if a.dtype() == DType::F32 && b.len() == 1 && b.rank() <= a.rank() {
        // The common `x ^ 2` / `x ^ 0.5` of decomposed LayerNorm and friends.
        let e = b.to_f64_vec()?[0] as f32;
        let x = a.as_f32()?;
        let out: Vec<f32> = match e {
            1.0 => x.to_vec(),
            2.0 => x.iter().map(|&v| v * v).collect(),
            3.0 => x.iter().map(|&v| v * v * v).collect(),
            0.5 => x.iter().map(|&v| v.sqrt()).collect(),
            _ => x.iter().map(|&v| v.powf(e)).collect(),
        };
        return Ok(Tensor::from_vec(a.shape().to_vec(), out)?);
    }
    match a.dtype() {
        DType::F32 => map_binary(a, &b.cast(DType::F32)?, |x: f32, y: f32| x.powf(y)),
        DType::F64 => map_binary(a, &b.cast(DType::F64)?, |x: f64, y: f64| x.powf(y)),
        dt => {
            if !(b.dtype().is_float() || b.dtype().is_integer()) {
                return unsupported("Pow exponent", b.dtype());
            }
            let e = b.cast(DType::F64)?;
            dispatch_num!(dt, T => map_binary(a, &e, |x: T, y: f64| T::from_f64(x.to_f64().powf(y))),
                _ => unsupported("Pow", dt))
        }
    }
}

/// Folds a variadic op's inputs pairwise with broadcasting.
fn variadic(
    ins: &[Option<&Tensor>],
    f: impl Fn(&Tensor, &Tensor) -> OpResult<Tensor>,
) -> OpResult<Tensor> {
    let mut it = ins.iter().flatten();
    let Some(&first) = it.next() else { bail!("needs at least one input") };
    let Some(&second) = it.next() else { return Ok(first.clone()) };
    let mut acc = f(first, second)?;
    for &t in it {
        acc = f(&acc, t)?;
    }
    Ok(acc)
}

/// Registers a variadic op built from a same-dtype numeric pairwise function.
macro_rules! variadic_op {
    ($reg:expr, $name:literal, |$x:ident, $y:ident| $body:expr) => {
        $reg.register("", $name, |_| {
            kernel(|ins| {
                Ok(vec![variadic(ins, |a, b| {
                    let dt = same_dtype(a, b)?;
                    dispatch_num!(dt, T => map_binary(a, b, |$x: T, $y: T| $body),
                        _ => unsupported($name, dt))
                })?])
            })
        });
    };
}

/// Registers a comparison: bool output over numeric or bool inputs.
macro_rules! compare_op {
    ($reg:expr, $name:literal, |$x:ident, $y:ident| $body:expr) => {
        $reg.register("", $name, |_| {
            binary(|a, b| {
                let dt = same_dtype(a, b)?;
                dispatch_ord!(dt, T => map_binary(a, b, |$x: T, $y: T| -> bool { $body }),
                    _ => unsupported($name, dt))
            })
        });
    };
}

/// Registers a same-dtype integer binary op.
macro_rules! int_op {
    ($reg:expr, $name:literal, |$x:ident, $y:ident| $body:expr) => {
        $reg.register("", $name, |_| {
            binary(|a, b| {
                let dt = same_dtype(a, b)?;
                dispatch_int!(dt, T => map_binary(a, b, |$x: T, $y: T| $body),
                    _ => unsupported($name, dt))
            })
        });
    };
}

#[inline]
fn max_nan<T: Num>(x: T, y: T) -> T {
    if x.is_nan() || x >= y {
        x
    } else {
        y
    }
}

#[inline]
fn min_nan<T: Num>(x: T, y: T) -> T {
    if x.is_nan() || x <= y {
        x
    } else {
        y
    }
}

#[allow(clippy::bool_comparison)] // comparisons are written once for numbers and bools
fn register_binary(reg: &mut Registry) {
    arith_op!(reg, "Add", false, |x, y| x.add(y));
    arith_op!(reg, "Sub", false, |x, y| x.sub(y));
    arith_op!(reg, "Mul", false, |x, y| x.mul(y));
    arith_op!(reg, "Div", true, |x, y| x.div(y));
    reg.register("", "Pow", |_| binary(pow));
    reg.register("", "Mod", |ctx| {
        let fmod = ctx.attrs.int_or("fmod", 0)? != 0;
        binary(move |a, b| {
            let dt = same_dtype(a, b)?;
            dispatch_num!(dt, T => {
                if !T::IS_FLOAT {
                    check_no_zero::<T>(b)?;
                }
                if fmod {
                    map_binary(a, b, |x: T, y: T| x.fmod(y))
                } else {
                    map_binary(a, b, |x: T, y: T| x.pymod(y))
                }
            }, _ => unsupported("Mod", dt))
        })
    });
    reg.register("", "PRelu", |_| {
        binary(|x, slope| {
            let dt = same_dtype(x, slope)?;
            dispatch_num!(dt, T => map_binary(x, slope, |v: T, s: T| if v < T::zero() { v.mul(s) } else { v }),
                _ => unsupported("PRelu", dt))
        })
    });
    reg.register("", "BitShift", |ctx| {
        let direction = ctx.attrs.string_or("direction", "")?;
        let left = match direction.as_str() {
            "LEFT" => true,
            "RIGHT" => false,
            other => {
                Err(ctx.attrs.invalid("direction", format!("'{other}' is not LEFT or RIGHT")))?
            }
        };
        binary(move |a, b| {
            let dt = same_dtype(a, b)?;
            dispatch_int!(dt, T => if left {
                map_binary(a, b, |x: T, n: T| x.shl(n))
            } else {
                map_binary(a, b, |x: T, n: T| x.shr(n))
            }, _ => unsupported("BitShift", dt))
        })
    });
    int_op!(reg, "BitwiseAnd", |x, y| x.and(y));
    int_op!(reg, "BitwiseOr", |x, y| x.or(y));
    int_op!(reg, "BitwiseXor", |x, y| x.xor(y));

    reg.register("", "Equal", |_| {
        binary(|a, b| {
            let dt = same_dtype(a, b)?;
            if let (TensorData::String(x), TensorData::String(y)) = (a.data(), b.data()) {
                let (shape, v) = map2((a.shape(), x), (b.shape(), y), |x, y| x == y)?;
                return Ok(Tensor::from_vec(shape, v)?);
            }
            dispatch_ord!(dt, T => map_binary(a, b, |x: T, y: T| x == y), _ => unsupported("Equal", dt))
        })
    });
    compare_op!(reg, "Less", |x, y| x < y);
    compare_op!(reg, "LessOrEqual", |x, y| x <= y);
    compare_op!(reg, "Greater", |x, y| x > y);
    compare_op!(reg, "GreaterOrEqual", |x, y| x >= y);
    reg.register("", "And", |_| binary(|a, b| map_binary(a, b, |x: bool, y: bool| x & y)));
    reg.register("", "Or", |_| binary(|a, b| map_binary(a, b, |x: bool, y: bool| x | y)));
    reg.register("", "Xor", |_| binary(|a, b| map_binary(a, b, |x: bool, y: bool| x ^ y)));

    variadic_op!(reg, "Max", |x, y| max_nan(x, y));
    variadic_op!(reg, "Min", |x, y| min_nan(x, y));
    variadic_op!(reg, "Sum", |x, y| x.add(y));
    reg.register("", "Mean", |_| {
        kernel(|ins| {
            let sum = variadic(ins, |a, b| {
                let dt = same_dtype(a, b)?;
                dispatch_num!(dt, T => map_binary(a, b, |x: T, y: T| x.add(y)), _ => unsupported("Mean", dt))
            })?;
            let n = ins.iter().flatten().count() as f64;
            let dt = sum.dtype();
            let mean = dispatch_num!(dt, T => {
                let d = T::from_f64(n);
                map_unary(&sum, |x: T| x.div(d))?
            }, _ => return unsupported("Mean", dt));
            Ok(vec![mean])
        })
    });
}

/// `Where`: `x` where `cond`, else `y`, the three broadcast together.
fn where_op(cond: &Tensor, x: &Tensor, y: &Tensor) -> OpResult<Tensor> {
    fn pick<T: Clone>(
        c: (&[usize], &[bool]),
        x: (&[usize], &[T]),
        y: (&[usize], &[T]),
    ) -> OpResult<(Vec<usize>, Vec<T>)> {
        map3(c, x, y, |&c, x, y| if c { x.clone() } else { y.clone() })
    }
    let c = (cond.shape(), cond.as_slice::<bool>()?);
    let (xs, ys) = (x.shape(), y.shape());
    macro_rules! arms {
        ($($v:ident),*) => {
            match (x.data(), y.data()) {
                $((TensorData::$v(a), TensorData::$v(b)) => {
                    let (shape, v) = pick(c, (xs, a), (ys, b))?;
                    Tensor::new(shape, TensorData::$v(v))?
                })*
                _ => bail!("X and Y must have the same type, got {} and {}", x.dtype(), y.dtype()),
            }
        };
    }
    Ok(arms!(
        F32, F64, F16, BF16, F8E4M3FN, F8E5M2, I64, I32, I16, I8, U64, U32, U16, U8, I4, U4, Bool,
        String
    ))
}

/// The single value of an optional scalar input (`None` when omitted or empty).
fn scalar_input<T: Element>(t: Option<&Tensor>) -> OpResult<Option<T>> {
    match t {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.len() == 1 => Ok(Some(t.as_slice::<T>()?[0])),
        Some(t) => bail!("expected a scalar bound, got shape {:?}", t.shape()),
    }
}

#[inline]
fn clip<T: PartialOrd>(v: T, lo: Option<T>, hi: Option<T>) -> T {
    let v = match lo {
        Some(l) if v < l => l,
        _ => v,
    };
    match hi {
        Some(h) if v > h => h,
        _ => v,
    }
}

/// Bit pattern of every element and the element width in bits (`None` for 4-bit and strings).
fn element_bits(d: &TensorData) -> Option<(Vec<u64>, usize)> {
    fn bits<T>(v: &[T], width: usize, f: impl Fn(&T) -> u64) -> (Vec<u64>, usize) {
        (v.iter().map(f).collect(), width)
    }
    Some(match d {
        TensorData::F32(v) => bits(v, 32, |x| x.to_bits() as u64),
        TensorData::F64(v) => bits(v, 64, |x| x.to_bits()),
        TensorData::F16(v) => bits(v, 16, |x| x.to_bits() as u64),
        TensorData::BF16(v) => bits(v, 16, |x| x.to_bits() as u64),
        TensorData::F8E4M3FN(v) | TensorData::F8E5M2(v) | TensorData::U8(v) => {
            bits(v, 8, |&x| x as u64)
        }
        TensorData::I8(v) => bits(v, 8, |&x| x as u8 as u64),
        TensorData::I16(v) => bits(v, 16, |&x| x as u16 as u64),
        TensorData::I32(v) => bits(v, 32, |&x| x as u32 as u64),
        TensorData::I64(v) => bits(v, 64, |&x| x as u64),
        TensorData::U16(v) => bits(v, 16, |&x| x as u64),
        TensorData::U32(v) => bits(v, 32, |&x| x as u64),
        TensorData::U64(v) => bits(v, 64, |&x| x),
        TensorData::Bool(v) => bits(v, 8, |&x| x as u64),
        _ => return None,
    })
}

/// Elements of type `to` from bit patterns of its width (`None` for 4-bit and strings).
fn from_bits(b: &[u64], to: DType) -> Option<TensorData> {
    Some(match to {
        DType::F32 => TensorData::F32(b.iter().map(|&x| f32::from_bits(x as u32)).collect()),
        DType::F64 => TensorData::F64(b.iter().map(|&x| f64::from_bits(x)).collect()),
        DType::F16 => TensorData::F16(b.iter().map(|&x| f16::from_bits(x as u16)).collect()),
        DType::BF16 => TensorData::BF16(b.iter().map(|&x| bf16::from_bits(x as u16)).collect()),
        DType::F8E4M3FN => TensorData::F8E4M3FN(b.iter().map(|&x| x as u8).collect()),
        DType::F8E5M2 => TensorData::F8E5M2(b.iter().map(|&x| x as u8).collect()),
        DType::U8 => TensorData::U8(b.iter().map(|&x| x as u8).collect()),
        DType::I8 => TensorData::I8(b.iter().map(|&x| x as u8 as i8).collect()),
        DType::I16 => TensorData::I16(b.iter().map(|&x| x as u16 as i16).collect()),
        DType::I32 => TensorData::I32(b.iter().map(|&x| x as u32 as i32).collect()),
        DType::I64 => TensorData::I64(b.iter().map(|&x| x as i64).collect()),
        DType::U16 => TensorData::U16(b.iter().map(|&x| x as u16).collect()),
        DType::U32 => TensorData::U32(b.iter().map(|&x| x as u32).collect()),
        DType::U64 => TensorData::U64(b.to_vec()),
        DType::Bool => TensorData::Bool(b.iter().map(|&x| x != 0).collect()),
        _ => return None,
    })
}

/// `BitCast`: the same bits read as another type of the same width.
fn bitcast(x: &Tensor, to: DType) -> OpResult<Tensor> {
    let Some((bits, width)) = element_bits(x.data()) else {
        return unsupported("BitCast", x.dtype());
    };
    if width != to.bits() {
        bail!("BitCast from {} to {to} changes the element width", x.dtype());
    }
    let Some(data) = from_bits(&bits, to) else { return unsupported("BitCast", to) };
    Ok(Tensor::new(x.shape().to_vec(), data)?)
}

fn register_misc(reg: &mut Registry) {
    reg.register("", "Where", |_| {
        kernel(|ins| Ok(vec![where_op(input(ins, 0)?, input(ins, 1)?, input(ins, 2)?)?]))
    });
    reg.register("", "Clip", |ctx| {
        if ctx.opset < 11 {
            let lo = ctx.attrs.float_or("min", f32::NEG_INFINITY)? as f64;
            let hi = ctx.attrs.float_or("max", f32::INFINITY)? as f64;
            return unary(move |x| float_map!(x, |v: F| clip(v, Some(lo as F), Some(hi as F))));
        }
        kernel(|ins| {
            let x = input(ins, 0)?;
            let out = dispatch_num!(x.dtype(), T => {
                let lo = scalar_input::<T>(opt_input(ins, 1))?;
                let hi = scalar_input::<T>(opt_input(ins, 2))?;
                map_unary(x, |v: T| clip(v, lo, hi))?
            }, _ => return unsupported("Clip", x.dtype()));
            Ok(vec![out])
        })
    });
    reg.register("", "Cast", |ctx| {
        let to = ctx.attrs.req_int("to")?;
        let saturate = ctx.attrs.int_or("saturate", 1)? != 0;
        let Some(dt) = i32::try_from(to).ok().and_then(DType::from_onnx) else {
            bail!("Cast to ONNX data type {to} is not supported");
        };
        unary(move |x| Ok(Tensor::new(x.shape().to_vec(), cast_with(x.data(), dt, saturate)?)?))
    });
    reg.register("", "BitCast", |ctx| {
        let to = ctx.attrs.req_int("to")?;
        let Some(dt) = i32::try_from(to).ok().and_then(DType::from_onnx) else {
            bail!("BitCast to ONNX data type {to} is not supported");
        };
        unary(move |x| bitcast(x, dt))
    });
    reg.register("", "CastLike", |ctx| {
        let saturate = ctx.attrs.int_or("saturate", 1)? != 0;
        binary(move |x, like| {
            Ok(Tensor::new(x.shape().to_vec(), cast_with(x.data(), like.dtype(), saturate)?)?)
        })
    });
}

pub fn register(reg: &mut Registry) {
    register_unary(reg);
    register_binary(reg);
    register_misc(reg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitcast_round_trips_bits() {
        let x = Tensor::from_vec(vec![2], vec![1.0f32, -2.5]).unwrap();
        let y = bitcast(&x, DType::I32).unwrap();
        assert_eq!(y.as_slice::<i32>().unwrap(), &[0x3f80_0000, 0xc020_0000u32 as i32]);
        assert_eq!(bitcast(&y, DType::F32).unwrap(), x);
        assert!(bitcast(&x, DType::I64).is_err());
    }

    #[test]
    fn fast_erf_is_within_f32_tolerance() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            let d = (erf_f32(x as f32) as f64 - num::erf_f64(x)).abs();
            worst = worst.max(d);
        }
        assert!(worst < 1e-6, "max error {worst}");
    }
}
