//! One AdaRound problem: the rounding of an `o × k` weight matrix `W` (one group of a layer:
//! output channels × inputs) on a fixed integer grid, learned by Adam.
//!
//! The weight is `Ŵ(V) = s · (clamp(⌊W/s⌋ + z + h(V), qmin, qmax) − z)` per output row (scale
//! `s`, zero point `z`), with the rectified sigmoid `h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)`,
//! ζ = 1.1, γ = −0.1. The loss is
//!
//! `L(V) = (1/(n·o)) Σ_r ‖W x_r − Ŵ(V) x̂_r‖² + λ Σ (1 − |2h(V) − 1|^β)`
//!
//! (the output MSE per element, as in the paper and AIMET, so that λ weighs the same against it
//! in every layer) over the `n` input rows `x_r` (FP32 model) and `x̂_r` (quantized model) of the layer. With
//! `Δ = Ŵ − W` and `d_r = x_r − x̂_r`, `W x_r − Ŵ x̂_r = W d_r − Δ x̂_r`, so the reconstruction
//! term is the quadratic `(c₀ − 2⟨Δ, Q⟩ + ⟨Δ A, Δ⟩) / (n·o)` with `A = Σ x̂ x̂ᵀ`, `Q = W Σ d x̂ᵀ`,
//! `c₀ = Σ ‖W d‖²` ([`Objective`]): the statistics of all rows in `k × k` matrices, whatever
//! their number. Its gradient is `(2/(n·o))(Δ A − Q)`, one `o × k × k` product per step (or two
//! through the rows themselves when there are fewer than `k / 2`, see [`Curvature`]); once
//! most `h` are decided, `Δ A` is updated with the rows of `A` whose `Δ` moved instead.
//!
//! Schedule (the paper's and AIMET's defaults): no regularizer for the first 20 % of the steps
//! (warm-up), then β decays from 20 to 2 along a cosine; `V` starts where `h(V)` equals the
//! fractional part of `W/s`, so the soft weight starts at `W` and its hard rounding
//! (`h ≥ 0.5` rounds up) is round-to-nearest.

use lowbit_kernels::gemm::{sgemm, Trans};
use lowbit_kernels::quantize::quantize_one;
use rayon::prelude::*;
use std::borrow::Cow;
use std::time::Instant;

/// The rectified sigmoid's stretch: `h = clip(σ(V)(ζ − γ) + γ, 0, 1)`.
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;

/// Adam's moment decay rates and denominator guard (Kingma & Ba defaults).
const ADAM_B1: f32 = 0.9;
const ADAM_B2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;

/// Elements per parallel task of the element-wise steps.
const TASK_ELEMS: usize = 1 << 14;

/// Steps between two looks at the clock.
const DEADLINE_EVERY: usize = 16;

/// How the optimizer runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Schedule {
    pub iterations: usize,
    /// λ, the regularizer's weight.
    pub reg_weight: f32,
    pub learning_rate: f32,
    /// Fraction of the steps before the regularizer starts.
    pub warmup: f32,
    pub beta_start: f32,
    pub beta_end: f32,
}

impl Schedule {
    /// The paper's schedule with `iterations` steps and weight `reg_weight`.
    pub fn new(iterations: usize, reg_weight: f32) -> Schedule {
        Schedule {
            iterations,
            reg_weight,
            learning_rate: DEFAULT_LEARNING_RATE,
            warmup: 0.2,
            beta_start: 20.0,
            beta_end: 2.0,
        }
    }

    /// β at step `t`, `None` during the warm-up (no regularizer).
    pub fn beta(&self, t: usize) -> Option<f32> {
        let start = (self.warmup * self.iterations as f32) as usize;
        if t < start {
            return None;
        }
        let span = (self.iterations - start).max(1) as f32;
        let rel = (t - start) as f32 / span;
        let cos = (std::f32::consts::PI * rel).cos();
        Some(self.beta_end + 0.5 * (self.beta_start - self.beta_end) * (1.0 + cos))
    }
}

/// Adam's step size. AIMET's 1e-3 is for 10,000 steps of noisy mini-batch gradients; these
/// gradients are exact (all rows, through [`Objective`]) and there are fewer steps, so `V`
/// must be able to travel further: it starts within ±2.4 and must leave that band for `h` to
/// reach 0 or 1.
pub(crate) const DEFAULT_LEARNING_RATE: f32 = 1e-2;

/// `A = Σ x̂ x̂ᵀ` of a layer group, in the cheaper of two forms.
pub(crate) enum Curvature {
    /// `A` itself, `k × k`.
    Gram(Vec<f32>),
    /// The rows `x̂` (`n × k`), when `n < k / 2`: `Δ A = (Δ X̂ᵀ) X̂` costs `2·o·k·n`, less than
    /// `o·k²`.
    Rows { n: usize, x: Vec<f32> },
}

/// The reconstruction error of one group as a function of the weight error `Δ` (see the module
/// docs): `n · error(Δ) = c₀ − 2⟨Δ, Q⟩ + ⟨Δ A, Δ⟩`.
pub(crate) struct Objective {
    pub o: usize,
    pub k: usize,
    /// Rows the statistics summarize.
    pub n: f64,
    pub curvature: Curvature,
    /// `W Σ d x̂ᵀ`, `o × k`.
    pub q: Vec<f32>,
    /// `Σ ‖W d‖²`.
    pub c0: f64,
}

impl Objective {
    /// `out = Δ A` (`o × k`); `scratch` holds `Δ X̂ᵀ` in the rows form.
    fn apply(&self, delta: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
        let (o, k) = (self.o, self.k);
        match &self.curvature {
            Curvature::Gram(a) => {
                sgemm(Trans::No, Trans::No, o, k, k, 1.0, delta, k, a, k, 0.0, out, k);
            }
            Curvature::Rows { n, x } => {
                let n = *n;
                scratch.resize(o * n, 0.0);
                sgemm(Trans::No, Trans::Yes, o, n, k, 1.0, delta, k, x, k, 0.0, scratch, n);
                sgemm(Trans::No, Trans::No, o, k, n, 1.0, scratch, n, x, k, 0.0, out, k);
            }
        }
    }

    /// `Σ_r ‖W d_r − Δ x̂_r‖²` from `Δ` and `Δ A`.
    fn sum_sq(&self, delta: &[f32], delta_a: &[f32]) -> f64 {
        let (cross, quad) = delta
            .par_chunks(TASK_ELEMS)
            .zip(delta_a.par_chunks(TASK_ELEMS))
            .zip(self.q.par_chunks(TASK_ELEMS))
            .map(|((d, da), q)| {
                d.iter().zip(da).zip(q).fold((0f64, 0f64), |(c, s), ((&d, &da), &q)| {
                    (c + d as f64 * q as f64, s + d as f64 * da as f64)
                })
            })
            .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        (self.c0 - 2.0 * cross + quad).max(0.0)
    }

    /// `A` itself (computed from the rows in the rows form).
    fn gram(&self) -> Cow<'_, [f32]> {
        match &self.curvature {
            Curvature::Gram(a) => Cow::Borrowed(a),
            Curvature::Rows { n, x } => {
                let k = self.k;
                let mut a = vec![0f32; k * k];
                sgemm(Trans::Yes, Trans::No, k, k, *n, 1.0, x, k, x, k, 0.0, &mut a, k);
                Cow::Owned(a)
            }
        }
    }

    /// Per output row `r`, `‖W d − Δ_r x̂‖²` summed over the rows of data, less its part that
    /// does not depend on `Δ` (`c₀`'s share of the row): what compares two weight errors of the
    /// same row.
    pub fn row_errors(&self, delta: &[f32]) -> Vec<f64> {
        let mut da = vec![0f32; delta.len()];
        self.apply(delta, &mut da, &mut Vec::new());
        let k = self.k.max(1);
        delta
            .chunks(k)
            .zip(da.chunks(k))
            .zip(self.q.chunks(k))
            .map(|((d, da), q)| {
                d.iter().zip(da).zip(q).fold(0f64, |acc, ((&d, &da), &q)| {
                    acc + d as f64 * (da as f64 - 2.0 * q as f64)
                })
            })
            .collect()
    }

    /// Mean squared output error per output element for the weight error `delta`.
    pub fn mse(&self, delta: &[f32]) -> f64 {
        let mut da = vec![0f32; delta.len()];
        self.apply(delta, &mut da, &mut Vec::new());
        self.sum_sq(delta, &da) / (self.n * self.o as f64).max(1.0)
    }
}

/// The integer grid of one group: `o × k` weights, a scale and a zero point per row.
#[derive(Clone, Copy)]
pub(crate) struct Grid<'a> {
    pub w: &'a [f32],
    pub scale: &'a [f32],
    pub zero: &'a [i32],
    pub qmin: i32,
    pub qmax: i32,
}

impl Grid<'_> {
    fn k(&self) -> usize {
        self.w.len() / self.scale.len().max(1)
    }

    /// `Ŵ − W` for the codes `codes`.
    pub fn delta(&self, codes: &[i32]) -> Vec<f32> {
        let k = self.k();
        let mut out = vec![0f32; self.w.len()];
        for (r, row) in out.chunks_mut(k).enumerate() {
            let (s, z) = (self.scale[r], self.zero[r]);
            for (j, d) in row.iter_mut().enumerate() {
                let i = r * k + j;
                *d = s * (codes[i] - z) as f32 - self.w[i];
            }
        }
        out
    }

    /// `⌊W/s⌋ + z` per element (the code `h = 0` gives) and the `V` whose `h(V)` is the
    /// fractional part of `W/s`.
    fn start(&self) -> (Vec<f32>, Vec<f32>) {
        let k = self.k();
        let mut base = vec![0f32; self.w.len()];
        let mut v = vec![0f32; self.w.len()];
        for (i, (b, v)) in base.iter_mut().zip(v.iter_mut()).enumerate() {
            let r = i / k;
            let x = self.w[i] / self.scale[r];
            let fl = x.floor();
            *b = fl + self.zero[r] as f32;
            // σ(V)(ζ − γ) + γ = frac, kept inside (0, 1) so the logit is finite.
            let sig = ((x - fl - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1.0 - 1e-6);
            *v = (sig / (1.0 - sig)).ln();
        }
        (base, v)
    }
}

/// Fractions of each row's scale the scale search tries: 1.00, 0.98, ... 0.50.
const SCALE_FRACTIONS: usize = 26;

/// The scale of each row of `grid`, among fractions of its own (not below `floor`), whose
/// round-to-nearest codes give the lowest output error of `obj`, with those codes (starting
/// from `nearest`, the codes of the scales as they are). A min-max scale spends the grid's few
/// levels of a 4-bit row on its largest weights; a narrower one clips them and rounds all the
/// others finer, and the layer's own input statistics say which costs less. Zero points stay:
/// narrowing a range by a factor keeps `zero = qmin − lo / scale`.
pub(crate) fn fit_scales(
    grid: &Grid,
    obj: &Objective,
    nearest: &[i32],
    floor: &[f32],
) -> (Vec<f32>, Vec<i32>) {
    let k = grid.k().max(1);
    let mut best = obj.row_errors(&grid.delta(nearest));
    let mut scale = grid.scale.to_vec();
    let mut codes = nearest.to_vec();
    for step in 1..SCALE_FRACTIONS {
        let f = 1.0 - 0.02 * step as f32;
        let s: Vec<f32> = grid.scale.iter().zip(floor).map(|(&s, &m)| (s * f).max(m)).collect();
        let c: Vec<i32> = grid
            .w
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let r = i / k;
                quantize_one(w, s[r], grid.zero[r], grid.qmin, grid.qmax)
            })
            .collect();
        let candidate = Grid { scale: &s, ..*grid };
        let err = obj.row_errors(&candidate.delta(&c));
        for (r, e) in err.into_iter().enumerate() {
            if e < best[r] {
                best[r] = e;
                scale[r] = s[r];
                codes[r * k..(r + 1) * k].copy_from_slice(&c[r * k..(r + 1) * k]);
            }
        }
    }
    (scale, codes)
}

/// `h(V)` and `dh/dV` (0 where the clip is active).
#[inline]
fn rect_sigmoid(v: f32) -> (f32, f32) {
    let sig = 1.0 / (1.0 + (-v).exp());
    let h = sig * (ZETA - GAMMA) + GAMMA;
    if h <= 0.0 {
        (0.0, 0.0)
    } else if h >= 1.0 {
        (1.0, 0.0)
    } else {
        (h, (ZETA - GAMMA) * sig * (1.0 - sig))
    }
}

/// Working buffers of one problem.
struct Buffers {
    /// `Δ(V)`, `o × k`.
    delta: Vec<f32>,
    /// `dΔ/dV` (0 where `h` or the code is clamped).
    ddelta: Vec<f32>,
    h: Vec<f32>,
    dh: Vec<f32>,
    /// `Δ A`.
    delta_a: Vec<f32>,
    scratch: Vec<f32>,
    /// The `Δ` that `delta_a` was computed for (empty: none yet).
    last_delta: Vec<f32>,
    /// Incremental updates of `delta_a` since it was last computed in full.
    updates: usize,
}

impl Buffers {
    fn new(n: usize) -> Buffers {
        let z = || vec![0f32; n];
        Buffers {
            delta: z(),
            ddelta: z(),
            h: z(),
            dh: z(),
            delta_a: z(),
            scratch: Vec::new(),
            last_delta: Vec::new(),
            updates: 0,
        }
    }

    /// `delta_a = Δ A`. With `gram` (`A` itself), only the rows of `A` whose element of `Δ`
    /// changed since the last call are added, when that costs less than the product: once the
    /// regularizer has pushed most `h` to 0 or 1 their part of `Δ` no longer moves.
    fn update_delta_a(&mut self, obj: &Objective, gram: Option<&[f32]>) {
        let k = obj.k;
        let Some(a) = gram else {
            obj.apply(&self.delta, &mut self.delta_a, &mut self.scratch);
            return;
        };
        let incremental = self.last_delta.len() == self.delta.len() && self.updates < REFRESH_EVERY;
        if incremental {
            let changed: usize = self
                .delta
                .par_chunks(TASK_ELEMS)
                .zip(self.last_delta.par_chunks(TASK_ELEMS))
                .map(|(d, l)| d.iter().zip(l).filter(|(a, b)| a != b).count())
                .sum();
            let dense = match &obj.curvature {
                Curvature::Gram(_) => obj.o * k * k,
                Curvature::Rows { n, .. } => 2 * obj.o * k * n,
            };
            if changed * k * SPARSE_COST < dense {
                let rows_per_task = (TASK_ELEMS / k.max(1)).max(1);
                let chunk = rows_per_task * k;
                self.delta_a
                    .par_chunks_mut(chunk)
                    .zip(self.delta.par_chunks(chunk))
                    .zip(self.last_delta.par_chunks_mut(chunk))
                    .for_each(|((da, d), last)| {
                        for ((da, d), last) in
                            da.chunks_mut(k).zip(d.chunks(k)).zip(last.chunks_mut(k))
                        {
                            for j in 0..k {
                                let step = d[j] - last[j];
                                if step != 0.0 {
                                    let row = &a[j * k..(j + 1) * k];
                                    da.iter_mut().zip(row).for_each(|(x, &aj)| *x += step * aj);
                                    last[j] = d[j];
                                }
                            }
                        }
                    });
                self.updates += 1;
                return;
            }
        }
        obj.apply(&self.delta, &mut self.delta_a, &mut self.scratch);
        self.last_delta.clone_from(&self.delta);
        self.updates = 0;
    }
}

/// Incremental updates of `Δ A` between two full products (bounds the rounding drift).
const REFRESH_EVERY: usize = 100;

/// What a multiply-add of an incremental update costs against one of the product: a row of
/// `A` streamed from memory per changed element, against a blocked product.
const SPARSE_COST: usize = 4;

/// The loss at `v` (when `want_loss`) and its gradient into `grad`; `beta = None` leaves the
/// regularizer out (warm-up). `gram` (`A`, when the caller has it) lets `Δ A` be updated
/// rather than recomputed ([`Buffers::update_delta_a`]).
#[allow(clippy::too_many_arguments)]
fn loss_grad(
    grid: &Grid,
    obj: &Objective,
    gram: Option<&[f32]>,
    base: &[f32],
    v: &[f32],
    beta: Option<f32>,
    reg_weight: f32,
    buf: &mut Buffers,
    grad: &mut [f32],
    want_loss: bool,
) -> f64 {
    let k = obj.k;
    let rows_per_task = (TASK_ELEMS / k.max(1)).max(1);
    let chunk = rows_per_task * k;
    let (qmin, qmax) = (grid.qmin as f32, grid.qmax as f32);
    buf.delta
        .par_chunks_mut(chunk)
        .zip(buf.ddelta.par_chunks_mut(chunk))
        .zip(buf.h.par_chunks_mut(chunk))
        .zip(buf.dh.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(t, (((delta, ddelta), h), dh))| {
            let first = t * chunk;
            for j in 0..delta.len() {
                let i = first + j;
                let r = i / k;
                let (s, z) = (grid.scale[r], grid.zero[r] as f32);
                let (hv, dhv) = rect_sigmoid(v[i]);
                let code = base[i] + hv;
                let inside = (qmin..=qmax).contains(&code);
                delta[j] = s * (code.clamp(qmin, qmax) - z) - grid.w[i];
                ddelta[j] = if inside { s * dhv } else { 0.0 };
                h[j] = hv;
                dh[j] = dhv;
            }
        });
    buf.update_delta_a(obj, gram);
    let elems = (obj.n * obj.o as f64).max(1.0);
    let two_over_n = (2.0 / elems) as f32;
    let loss_recon = if want_loss { obj.sum_sq(&buf.delta, &buf.delta_a) / elems } else { 0.0 };
    let reg: f64 = grad
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(t, g)| {
            let first = t * chunk;
            let mut reg = 0f64;
            for (j, g) in g.iter_mut().enumerate() {
                let i = first + j;
                let recon = two_over_n * (buf.delta_a[i] - obj.q[i]) * buf.ddelta[i];
                let mut gr = 0.0;
                if let Some(b) = beta {
                    let u = 2.0 * buf.h[i] - 1.0;
                    let a = u.abs();
                    if want_loss {
                        reg += (1.0 - a.powf(b)) as f64;
                    }
                    if buf.dh[i] != 0.0 && a > 0.0 {
                        // d/dh (1 − |2h − 1|^β) = −2β |2h − 1|^(β−1) sign(2h − 1)
                        gr = -2.0 * b * a.powf(b - 1.0) * u.signum() * buf.dh[i];
                    }
                }
                *g = recon + reg_weight * gr;
            }
            reg
        })
        .sum();
    loss_recon + reg_weight as f64 * reg
}

/// What [`optimize`] found.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// The codes to keep: the learned rounding, or round-to-nearest where that was no better.
    pub codes: Vec<i32>,
    pub mse_nearest: f64,
    /// The MSE of `codes`.
    pub mse: f64,
    /// Whether the learned rounding was kept (false: no better than round-to-nearest, or cut
    /// off by the deadline).
    pub learned: bool,
    /// Fraction of `h(V)` strictly between 0.01 and 0.99 at the last step.
    pub undecided: f64,
    /// Whether all steps ran before the deadline.
    pub finished: bool,
}

/// Learns the rounding of `grid` for `obj`, starting from round-to-nearest; returns
/// `nearest` (the current codes) unless the learned rounding has a lower error.
pub(crate) fn optimize(
    grid: &Grid,
    obj: &Objective,
    nearest: &[i32],
    sched: &Schedule,
    deadline: Option<Instant>,
) -> Outcome {
    let n = grid.w.len();
    let mse_nearest = obj.mse(&grid.delta(nearest));
    let keep = |finished| Outcome {
        codes: nearest.to_vec(),
        mse_nearest,
        mse: mse_nearest,
        learned: false,
        undecided: 0.0,
        finished,
    };
    if n == 0 || mse_nearest == 0.0 {
        return keep(true);
    }
    let (base, mut v) = grid.start();
    let gram = obj.gram();
    let mut buf = Buffers::new(n);
    let mut grad = vec![0f32; n];
    let (mut m1, mut m2) = (vec![0f32; n], vec![0f32; n]);
    let lr = sched.learning_rate;
    let chunk = TASK_ELEMS;
    for t in 0..sched.iterations {
        if t % DEADLINE_EVERY == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return keep(false);
        }
        let beta = sched.beta(t);
        loss_grad(
            grid,
            obj,
            Some(&gram),
            &base,
            &v,
            beta,
            sched.reg_weight,
            &mut buf,
            &mut grad,
            false,
        );
        let step = (t + 1) as i32;
        let c1 = 1.0 / (1.0 - ADAM_B1.powi(step));
        let c2 = 1.0 / (1.0 - ADAM_B2.powi(step));
        v.par_chunks_mut(chunk)
            .zip(m1.par_chunks_mut(chunk))
            .zip(m2.par_chunks_mut(chunk))
            .zip(grad.par_chunks(chunk))
            .for_each(|(((v, m1), m2), g)| {
                for j in 0..v.len() {
                    m1[j] = ADAM_B1 * m1[j] + (1.0 - ADAM_B1) * g[j];
                    m2[j] = ADAM_B2 * m2[j] + (1.0 - ADAM_B2) * g[j] * g[j];
                    v[j] -= lr * (m1[j] * c1) / ((m2[j] * c2).sqrt() + ADAM_EPS);
                }
            });
    }
    let mut undecided = 0usize;
    let codes: Vec<i32> = v
        .iter()
        .enumerate()
        .map(|(i, &vi)| {
            let (h, _) = rect_sigmoid(vi);
            if h > 0.01 && h < 0.99 {
                undecided += 1;
            }
            let up = if h >= 0.5 { 1.0 } else { 0.0 };
            ((base[i] + up) as i32).clamp(grid.qmin, grid.qmax)
        })
        .collect();
    let mse = obj.mse(&grid.delta(&codes));
    let undecided = undecided as f64 / n as f64;
    if mse < mse_nearest {
        Outcome { codes, mse_nearest, mse, learned: true, undecided, finished: true }
    } else {
        Outcome { undecided, ..keep(true) }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (xorshift), uniform in [-1, 1).
    pub(crate) struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.max(1))
        }
        pub fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// A layer with correlated inputs: rows `x = M u` for random `u`, and `x̂ = x + noise`.
    struct Layer {
        o: usize,
        k: usize,
        w: Vec<f32>,
        x: Vec<f32>,
        xh: Vec<f32>,
    }

    fn layer(o: usize, k: usize, n: usize, noise: f32, seed: u64) -> Layer {
        let mut rng = Rng::new(seed);
        let w: Vec<f32> = (0..o * k).map(|_| rng.next()).collect();
        let mix: Vec<f32> = (0..k * k).map(|_| rng.next()).collect();
        let mut x = vec![0f32; n * k];
        let mut xh = vec![0f32; n * k];
        for r in 0..n {
            let u: Vec<f32> = (0..k).map(|_| rng.next()).collect();
            for j in 0..k {
                // A dominant shared direction makes the inputs strongly correlated, where
                // rounding choices interact and round-to-nearest is far from optimal.
                let v: f32 = (0..k).map(|i| mix[j * k + i] * u[i]).sum::<f32>() * 0.3 + 2.0 * u[0];
                x[r * k + j] = v;
                xh[r * k + j] = v + noise * rng.next();
            }
        }
        Layer { o, k, w, x, xh }
    }

    /// The objective from the rows, computed directly (the statistics module computes it by
    /// streaming; this is the reference).
    fn objective(l: &Layer, gram: bool) -> Objective {
        let (o, k) = (l.o, l.k);
        let n = l.x.len() / k;
        let d: Vec<f32> = l.x.iter().zip(&l.xh).map(|(a, b)| a - b).collect();
        // T = W Dᵀ (o × n), Q = T X̂, c0 = ‖T‖².
        let mut t = vec![0f32; o * n];
        sgemm(Trans::No, Trans::Yes, o, n, k, 1.0, &l.w, k, &d, k, 0.0, &mut t, n);
        let mut q = vec![0f32; o * k];
        sgemm(Trans::No, Trans::No, o, k, n, 1.0, &t, n, &l.xh, k, 0.0, &mut q, k);
        let c0 = t.iter().map(|&v| (v as f64).powi(2)).sum();
        let curvature = if gram {
            let mut a = vec![0f32; k * k];
            sgemm(Trans::Yes, Trans::No, k, k, n, 1.0, &l.xh, k, &l.xh, k, 0.0, &mut a, k);
            Curvature::Gram(a)
        } else {
            Curvature::Rows { n, x: l.xh.clone() }
        };
        Objective { o, k, n: n as f64, curvature, q, c0 }
    }

    /// The output MSE of codes, straight from the rows.
    fn direct_mse(l: &Layer, grid: &Grid, codes: &[i32]) -> f64 {
        let (o, k) = (l.o, l.k);
        let n = l.x.len() / k;
        let delta = grid.delta(codes);
        let mut sum = 0f64;
        for r in 0..n {
            for c in 0..o {
                let mut e = 0f64;
                for j in 0..k {
                    let w = l.w[c * k + j] as f64;
                    let wh = w + delta[c * k + j] as f64;
                    e += w * l.x[r * k + j] as f64 - wh * l.xh[r * k + j] as f64;
                }
                sum += e * e;
            }
        }
        sum / (n * o) as f64
    }

    struct Quant {
        scale: Vec<f32>,
        zero: Vec<i32>,
        nearest: Vec<i32>,
        qmin: i32,
        qmax: i32,
    }

    /// Per-channel asymmetric `bits`-bit grid from each row's min/max, round-to-nearest codes.
    fn quant(l: &Layer, bits: u32, per_channel: bool) -> Quant {
        let (qmin, qmax) = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1);
        let (o, k) = (l.o, l.k);
        let rows: Vec<(f32, f32)> = (0..o)
            .map(|c| {
                let r = if per_channel { &l.w[c * k..(c + 1) * k] } else { &l.w[..] };
                let lo = r.iter().fold(0f32, |a, &b| a.min(b));
                let hi = r.iter().fold(0f32, |a, &b| a.max(b));
                (lo, hi)
            })
            .collect();
        let mut scale = vec![0f32; o];
        let mut zero = vec![0i32; o];
        for (c, &(lo, hi)) in rows.iter().enumerate() {
            scale[c] = (hi - lo) / (qmax - qmin) as f32;
            zero[c] = (qmin as f32 - lo / scale[c]).round() as i32;
        }
        let nearest = (0..o * k)
            .map(|i| {
                let c = i / k;
                ((l.w[i] / scale[c]).round() as i32 + zero[c]).clamp(qmin, qmax)
            })
            .collect();
        Quant { scale, zero, nearest, qmin, qmax }
    }

    fn grid<'a>(l: &'a Layer, q: &'a Quant) -> Grid<'a> {
        Grid { w: &l.w, scale: &q.scale, zero: &q.zero, qmin: q.qmin, qmax: q.qmax }
    }

    #[test]
    fn the_quadratic_objective_is_the_output_error() {
        for gram in [true, false] {
            let l = layer(6, 20, 40, 0.05, 3);
            let q = quant(&l, 4, true);
            let obj = objective(&l, gram);
            let g = grid(&l, &q);
            let (fast, direct) = (obj.mse(&g.delta(&q.nearest)), direct_mse(&l, &g, &q.nearest));
            assert!((fast - direct).abs() <= 1e-4 * direct, "{fast} vs {direct}");
        }
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let l = layer(5, 12, 60, 0.05, 11);
        let q = quant(&l, 4, true);
        let g = grid(&l, &q);
        for (gram, beta) in [(true, None), (true, Some(3.5)), (false, Some(12.0))] {
            let obj = objective(&l, gram);
            let (base, v0) = g.start();
            // Move V off its start so h is away from its clip points and from 1/2.
            let v: Vec<f32> =
                v0.iter().enumerate().map(|(i, &v)| 0.5 * v + 0.01 * i as f32).collect();
            let n = v.len();
            let mut buf = Buffers::new(n);
            let mut grad = vec![0f32; n];
            let lambda = 0.05;
            loss_grad(&g, &obj, None, &base, &v, beta, lambda, &mut buf, &mut grad, true);
            let mut checked = 0;
            for i in (0..n).step_by(3) {
                let (h, dh) = rect_sigmoid(v[i]);
                let code = base[i] + h;
                // Only where the loss is smooth in V_i: h unclipped, the code inside the grid.
                if dh == 0.0 || code < q.qmin as f32 + 0.02 || code > q.qmax as f32 - 0.02 {
                    continue;
                }
                let eps = 2e-3;
                let at = |x: f32| {
                    let mut vv = v.clone();
                    vv[i] = x;
                    let mut b = Buffers::new(n);
                    let mut gg = vec![0f32; n];
                    loss_grad(&g, &obj, None, &base, &vv, beta, lambda, &mut b, &mut gg, true)
                };
                let fd = (at(v[i] + eps) - at(v[i] - eps)) / (2.0 * eps as f64);
                let scale = fd.abs().max(1e-3);
                assert!(
                    (grad[i] as f64 - fd).abs() <= 2e-2 * scale,
                    "gram {gram} beta {beta:?} element {i}: analytic {} vs finite difference {fd}",
                    grad[i]
                );
                checked += 1;
            }
            assert!(checked >= 10, "only {checked} elements checked");
        }
    }

    #[test]
    fn incremental_delta_a_matches_the_full_product() {
        for gram in [true, false] {
            let (o, k) = (6, 20);
            let l = layer(o, k, if gram { 80 } else { 8 }, 0.05, 13);
            let obj = objective(&l, gram);
            let a = obj.gram();
            let mut buf = Buffers::new(o * k);
            let mut rng = Rng::new(5);
            let mut incremental = 0;
            for _ in 0..30 {
                // A few elements of Δ move per step, as once most h are decided.
                for _ in 0..3 {
                    let i = ((rng.next() + 1.0) * 0.5 * (o * k) as f32) as usize % (o * k);
                    buf.delta[i] = rng.next();
                }
                buf.update_delta_a(&obj, Some(&a));
                incremental += (buf.updates > 0) as usize;
                let mut full = vec![0f32; o * k];
                obj.apply(&buf.delta, &mut full, &mut Vec::new());
                let scale = full.iter().fold(1e-6f32, |m, &v| m.max(v.abs()));
                for (x, y) in buf.delta_a.iter().zip(&full) {
                    assert!((x - y).abs() <= 1e-4 * scale, "gram {gram}: {x} vs {y}");
                }
            }
            assert!(incremental >= 25, "gram {gram}: {incremental} incremental steps");
        }
    }

    #[test]
    fn beta_anneals_from_20_to_2_after_the_warm_up() {
        let s = Schedule::new(1000, 0.01);
        assert_eq!(s.beta(0), None);
        assert_eq!(s.beta(199), None);
        assert!((s.beta(200).unwrap() - 20.0).abs() < 1e-4);
        assert!((s.beta(600).unwrap() - 11.0).abs() < 1e-3);
        assert!((s.beta(999).unwrap() - 2.0).abs() < 1e-3);
    }

    #[test]
    fn learned_rounding_beats_round_to_nearest_and_stays_on_the_grid() {
        for (bits, per_channel, gram, noise) in [
            (4, true, true, 0.0),
            (4, false, true, 0.1),
            (8, true, false, 0.05),
            (3, true, true, 0.02),
        ] {
            let l = layer(8, 24, if gram { 200 } else { 10 }, noise, 7 + bits as u64);
            let q = quant(&l, bits, per_channel);
            let obj = objective(&l, gram);
            let g = grid(&l, &q);
            let out = optimize(&g, &obj, &q.nearest, &Schedule::new(1000, 0.01), None);
            let what = format!("{bits}-bit per_channel {per_channel} gram {gram} noise {noise}");
            assert!(out.finished && out.learned, "{what}: {out:?}");
            assert!(out.mse <= out.mse_nearest, "{what}");
            // A clear gain on correlated inputs, measured straight from the rows.
            let (before, after) = (direct_mse(&l, &g, &q.nearest), direct_mse(&l, &g, &out.codes));
            assert!(after < 0.8 * before, "{what}: MSE {before} -> {after}");
            assert!((out.mse - after).abs() <= 1e-3 * before, "{what}: {} vs {after}", out.mse);
            for (i, (&c, &r)) in out.codes.iter().zip(&q.nearest).enumerate() {
                assert!((q.qmin..=q.qmax).contains(&c), "{what}: code {c} at {i}");
                assert!((c - r).abs() <= 1, "{what}: code {c} vs nearest {r} at {i}");
            }
            // The regularizer has decided nearly every weight by the last step (2 of 192 of
            // the 3-bit case stay within 0.01 of a decision with the per-element loss).
            assert!(out.undecided < 0.02, "{what}: {} undecided", out.undecided);
        }
    }

    #[test]
    fn fitted_scales_lower_each_rows_output_error_and_respect_the_floor() {
        let mut l = layer(6, 16, 120, 0.02, 17);
        // One large weight in every other row: min-max scales spend the 4-bit grid on it.
        for r in (0..l.o).step_by(2) {
            l.w[r * l.k + 3] = 6.0;
        }
        let q = quant(&l, 4, true);
        let g = grid(&l, &q);
        let obj = objective(&l, true);
        let (scale, codes) = fit_scales(&g, &obj, &q.nearest, &vec![0.0; l.o]);
        let fitted = Grid { scale: &scale, ..g };
        let before = obj.row_errors(&g.delta(&q.nearest));
        let after = obj.row_errors(&fitted.delta(&codes));
        for r in 0..l.o {
            assert!(after[r] <= before[r], "row {r}: {} -> {}", before[r], after[r]);
            assert!(scale[r] <= q.scale[r] && scale[r] >= 0.5 * q.scale[r] * 0.999, "row {r}");
            for j in 0..l.k {
                let i = r * l.k + j;
                let want = quantize_one(l.w[i], scale[r], q.zero[r], q.qmin, q.qmax);
                assert_eq!(codes[i], want, "row {r}: codes are round-to-nearest on the new scale");
            }
        }
        let narrowed = (0..l.o).filter(|&r| scale[r] < q.scale[r]).count();
        assert!(narrowed >= l.o / 2, "{narrowed} rows narrowed");
        let (mse0, mse1) = (direct_mse(&l, &g, &q.nearest), direct_mse(&l, &fitted, &codes));
        assert!(mse1 < 0.8 * mse0, "output MSE {mse0} -> {mse1}");
        // A floor at the scales themselves (a bias that needs them) keeps everything.
        let (kept, kept_codes) = fit_scales(&g, &obj, &q.nearest, &q.scale);
        assert_eq!((kept, kept_codes), (q.scale.clone(), q.nearest.clone()));
    }

    #[test]
    fn an_expired_deadline_keeps_round_to_nearest() {
        let l = layer(4, 8, 50, 0.0, 5);
        let q = quant(&l, 4, true);
        let obj = objective(&l, true);
        let g = grid(&l, &q);
        let out = optimize(&g, &obj, &q.nearest, &Schedule::new(500, 0.01), Some(Instant::now()));
        assert!(!out.finished && !out.learned);
        assert_eq!(out.codes, q.nearest);
        assert_eq!(out.mse, out.mse_nearest);
    }
}
