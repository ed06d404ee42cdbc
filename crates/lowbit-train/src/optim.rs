//! Optimizers (Adam, SGD with momentum) and the cosine learning-rate schedule.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adam" => Ok(OptimizerKind::Adam),
            "sgd" => Ok(OptimizerKind::Sgd),
            _ => Err(format!("unknown optimizer '{s}' (adam, sgd)")),
        }
    }
}

/// State for every parameter tensor.
pub struct Optimizer {
    kind: OptimizerKind,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: i32,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;
const MOMENTUM: f32 = 0.9;

impl Optimizer {
    pub fn new(kind: OptimizerKind, sizes: &[usize]) -> Optimizer {
        let zeros = || sizes.iter().map(|&n| vec![0.0; n]).collect();
        Optimizer { kind, m: zeros(), v: zeros(), t: 0 }
    }

    /// One update of every parameter `params[i] -= lr · step(grads[i])`; `lr_mult[i]` scales the
    /// learning rate per tensor.
    pub fn step(
        &mut self,
        params: &mut [&mut Vec<f32>],
        grads: &[Vec<f32>],
        lr: f32,
        lr_mult: &[f32],
    ) {
        self.t += 1;
        let (b1t, b2t) = (1.0 - BETA1.powi(self.t), 1.0 - BETA2.powi(self.t));
        for (i, p) in params.iter_mut().enumerate() {
            let lr = lr * lr_mult[i];
            let g = &grads[i];
            match self.kind {
                OptimizerKind::Adam => {
                    let (m, v) = (&mut self.m[i], &mut self.v[i]);
                    for j in 0..p.len() {
                        m[j] = BETA1 * m[j] + (1.0 - BETA1) * g[j];
                        v[j] = BETA2 * v[j] + (1.0 - BETA2) * g[j] * g[j];
                        p[j] -= lr * (m[j] / b1t) / ((v[j] / b2t).sqrt() + EPS);
                    }
                }
                OptimizerKind::Sgd => {
                    let m = &mut self.m[i];
                    for j in 0..p.len() {
                        m[j] = MOMENTUM * m[j] + g[j];
                        p[j] -= lr * m[j];
                    }
                }
            }
        }
    }
}

/// Cosine decay from `lr` to 0 over `total` steps.
pub fn cosine_lr(lr: f32, step: usize, total: usize) -> f32 {
    let t = step as f32 / total.max(1) as f32;
    0.5 * lr * (1.0 + (std::f32::consts::PI * t.min(1.0)).cos())
}
