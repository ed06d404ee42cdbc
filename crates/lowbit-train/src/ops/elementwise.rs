//! Element-wise ops: unary activations and numpy-broadcast binary arithmetic. Their backward
//! passes reduce a broadcast input's gradient back to its own shape.

use crate::arr::Arr;
use lowbit_engine::ops::elementwise::erf_f32;
use lowbit_engine::ops::util::{broadcast_shapes, broadcast_strides};

#[derive(Clone, Debug, PartialEq)]
pub enum Unary {
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    Tanh,
    /// `erf`, the engine's approximation (the forward pass must match what deployment runs).
    Erf,
    Sqrt,
    Neg,
    Exp,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    Identity,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Unary {
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Unary::Relu => x.max(0.0),
            Unary::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Unary::Sigmoid => sigmoid(x),
            Unary::Tanh => x.tanh(),
            Unary::Erf => erf_f32(x),
            Unary::Sqrt => x.sqrt(),
            Unary::Neg => -x,
            Unary::Exp => x.exp(),
            Unary::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Unary::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Unary::Identity => x,
        }
    }

    /// dy/dx at `x` (with `y` the forward value).
    pub fn derivative(&self, x: f32, y: f32) -> f32 {
        match *self {
            Unary::Relu => (x > 0.0) as u8 as f32,
            Unary::LeakyRelu(a) => {
                if x >= 0.0 {
                    1.0
                } else {
                    a
                }
            }
            Unary::Sigmoid => y * (1.0 - y),
            Unary::Tanh => 1.0 - y * y,
            // d erf / dx = 2/√π · e^(−x²); the engine's approximation saturates at |x| = 4.
            Unary::Erf => {
                if x.abs() >= 4.0 {
                    0.0
                } else {
                    std::f32::consts::FRAC_2_SQRT_PI * (-x * x).exp()
                }
            }
            Unary::Sqrt => {
                if y > 0.0 {
                    0.5 / y
                } else {
                    0.0
                }
            }
            Unary::Neg => -1.0,
            Unary::Exp => y,
            Unary::HardSigmoid { alpha, beta } => {
                let v = alpha * x + beta;
                if v > 0.0 && v < 1.0 {
                    alpha
                } else {
                    0.0
                }
            }
            Unary::HardSwish => {
                if x <= -3.0 {
                    0.0
                } else if x >= 3.0 {
                    1.0
                } else {
                    x / 3.0 + 0.5
                }
            }
            Unary::Identity => 1.0,
        }
    }
}

pub fn unary_forward(op: &Unary, x: &Arr) -> Arr {
    Arr::new(x.shape.clone(), x.data.iter().map(|&v| op.apply(v)).collect())
}

pub fn unary_backward(op: &Unary, x: &Arr, y: &Arr, gy: &Arr) -> Arr {
    let data = x
        .data
        .iter()
        .zip(&y.data)
        .zip(&gy.data)
        .map(|((&xv, &yv), &g)| g * op.derivative(xv, yv))
        .collect();
    Arr::new(x.shape.clone(), data)
}

/// `Clip(x, lo, hi)`: the gradient passes where `lo < x < hi` (bounds are constants).
pub fn clip_forward(x: &Arr, lo: f32, hi: f32) -> Arr {
    Arr::new(x.shape.clone(), x.data.iter().map(|&v| v.max(lo).min(hi)).collect())
}

pub fn clip_backward(x: &Arr, lo: f32, hi: f32, gy: &Arr) -> Arr {
    let data = x
        .data
        .iter()
        .zip(&gy.data)
        .map(|(&v, &g)| if v > lo && v < hi { g } else { 0.0 })
        .collect();
    Arr::new(x.shape.clone(), data)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

/// The numpy broadcast of two shapes (the engine's rule).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    broadcast_shapes(a, b).map_err(|e| e.to_string())
}

/// Calls `f(out_index, a_index, b_index)` over every element of the broadcast output.
fn for_each_broadcast(
    a: &[usize],
    b: &[usize],
    out: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) {
    let n: usize = out.iter().product();
    if a == out && b == out {
        for i in 0..n {
            f(i, i, i);
        }
        return;
    }
    let (sa, sb) = (broadcast_strides(a, out), broadcast_strides(b, out));
    let r = out.len();
    let mut idx = vec![0usize; r];
    let (mut ia, mut ib) = (0usize, 0usize);
    for i in 0..n {
        f(i, ia, ib);
        // Odometer increment, keeping the two input offsets in step.
        for d in (0..r).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < out[d] {
                break;
            }
            ia -= sa[d] * out[d];
            ib -= sb[d] * out[d];
            idx[d] = 0;
        }
    }
}

impl Binary {
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Pow => a.powf(b),
        }
    }

    /// (∂y/∂a, ∂y/∂b).
    fn partials(self, a: f32, b: f32, y: f32) -> (f32, f32) {
        match self {
            Binary::Add => (1.0, 1.0),
            Binary::Sub => (1.0, -1.0),
            Binary::Mul => (b, a),
            Binary::Div => (1.0 / b, -a / (b * b)),
            Binary::Pow => {
                let da = if b == 2.0 { 2.0 * a } else { b * a.powf(b - 1.0) };
                let db = if a > 0.0 { y * a.ln() } else { 0.0 };
                (da, db)
            }
        }
    }
}

pub fn binary_forward(op: Binary, a: &Arr, b: &Arr) -> Result<Arr, String> {
    let out = broadcast_shape(&a.shape, &b.shape)?;
    let mut y = vec![0.0; out.iter().product()];
    for_each_broadcast(&a.shape, &b.shape, &out, |i, ia, ib| {
        y[i] = op.apply(a.data[ia], b.data[ib]);
    });
    Ok(Arr::new(out, y))
}

pub fn binary_backward(op: Binary, a: &Arr, b: &Arr, y: &Arr, gy: &Arr) -> (Arr, Arr) {
    let mut ga = Arr::zeros(&a.shape);
    let mut gb = Arr::zeros(&b.shape);
    for_each_broadcast(&a.shape, &b.shape, &y.shape, |i, ia, ib| {
        let (pa, pb) = op.partials(a.data[ia], b.data[ib], y.data[i]);
        ga.data[ia] += gy.data[i] * pa;
        gb.data[ib] += gy.data[i] * pb;
    });
    (ga, gb)
}

/// `gy` (of the broadcast shape) summed back to `shape`.
pub fn reduce_to(gy: &Arr, shape: &[usize]) -> Arr {
    if gy.shape == shape {
        return gy.clone();
    }
    let mut g = Arr::zeros(shape);
    for_each_broadcast(shape, shape, &gy.shape, |i, ia, _| g.data[ia] += gy.data[i]);
    g
}
