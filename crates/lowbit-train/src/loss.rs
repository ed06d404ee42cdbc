//! Objectives on the model's output: distillation from the FP32 model (KL divergence of the
//! softmaxes for classifiers, cosine or MSE for embeddings) or cross-entropy with labels.
//! Each returns the loss of one sample and its gradient with respect to the output.

use crate::arr::Arr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// KL(softmax(teacher) ‖ softmax(student)) over the last axis (log-probabilities work as
    /// well as logits: softmax is unchanged by the log-softmax shift).
    Kl,
    /// 1 − cosine similarity of the flattened outputs.
    Cosine,
    /// Mean squared error.
    Mse,
    /// −log softmax(student)[label] (needs labels).
    CrossEntropy,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "kl" => Objective::Kl,
            "cosine" => Objective::Cosine,
            "mse" => Objective::Mse,
            "ce" | "cross-entropy" => Objective::CrossEntropy,
            _ => return Err(format!("unknown objective '{s}' (kl, cosine, mse, ce)")),
        })
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Objective::Kl => "KL to FP32",
            Objective::Cosine => "cosine to FP32",
            Objective::Mse => "MSE to FP32",
            Objective::CrossEntropy => "cross-entropy",
        })
    }
}

fn softmax_rows(x: &[f32], n: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_mut(n.max(1)) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = row.iter().map(|v| (v - m).exp()).sum();
        row.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
    }
    out
}

/// The loss of `out` against the teacher's output or the label, and ∂loss/∂out.
pub fn loss_and_grad(
    obj: Objective,
    out: &Arr,
    teacher: Option<&Arr>,
    label: Option<usize>,
) -> Result<(f32, Arr), String> {
    let n = *out.shape.last().unwrap_or(&1);
    let rows = out.len() / n.max(1);
    match obj {
        Objective::Kl => {
            let t = teacher.ok_or("KL needs the FP32 model's output")?;
            let (ps, pt) = (softmax_rows(&out.data, n), softmax_rows(&t.data, n));
            let mut loss = 0.0f32;
            for (a, b) in pt.iter().zip(&ps) {
                if *a > 0.0 {
                    loss += a * (a.max(1e-30).ln() - b.max(1e-30).ln());
                }
            }
            let g = ps.iter().zip(&pt).map(|(s, t)| (s - t) / rows as f32).collect();
            Ok((loss / rows as f32, Arr::new(out.shape.clone(), g)))
        }
        Objective::CrossEntropy => {
            let y = label.ok_or("cross-entropy needs a label per sample")?;
            if rows != 1 || y >= n {
                return Err(format!("label {y} for an output of shape {:?}", out.shape));
            }
            let mut g = softmax_rows(&out.data, n);
            let loss = -g[y].max(1e-30).ln();
            g[y] -= 1.0;
            Ok((loss, Arr::new(out.shape.clone(), g)))
        }
        Objective::Cosine => {
            let t = teacher.ok_or("cosine needs the FP32 model's output")?;
            let (dot, ss, tt) = out
                .data
                .iter()
                .zip(&t.data)
                .fold((0.0f64, 0.0f64, 0.0f64), |(d, s, q), (&a, &b)| {
                    (d + (a * b) as f64, s + (a * a) as f64, q + (b * b) as f64)
                });
            let (ns, nt) = (ss.sqrt().max(1e-12), tt.sqrt().max(1e-12));
            let cos = dot / (ns * nt);
            // d cos / d s = t/(|s||t|) − cos · s/|s|²
            let g = out
                .data
                .iter()
                .zip(&t.data)
                .map(|(&s, &tv)| -((tv as f64 / (ns * nt)) - cos * s as f64 / (ns * ns)) as f32)
                .collect();
            Ok(((1.0 - cos) as f32, Arr::new(out.shape.clone(), g)))
        }
        Objective::Mse => {
            let t = teacher.ok_or("MSE needs the FP32 model's output")?;
            let m = out.len().max(1) as f32;
            let loss =
                out.data.iter().zip(&t.data).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / m;
            let g = out.data.iter().zip(&t.data).map(|(a, b)| 2.0 * (a - b) / m).collect();
            Ok((loss, Arr::new(out.shape.clone(), g)))
        }
    }
}
