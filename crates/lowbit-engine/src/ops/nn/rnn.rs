//! Recurrent layers: `RNN`, `GRU` and `LSTM`, forward, reverse or bidirectional, with
//! per-batch `sequence_lens`, initial states, `layout` 0 (`[seq, batch, …]`) or 1
//! (`[batch, seq, …]`), the `activations` attribute (with `activation_alpha`/`_beta`), `clip`,
//! GRU's `linear_before_reset`, and LSTM's peepholes `P` and `input_forget`.
//!
//! Each direction runs the input projection of every time step as one GEMM
//! (`[seq·batch, input] × Wᵀ`, both biases folded in), then per step one GEMM of the hidden
//! state with `Rᵀ` for the whole batch and the gate math per batch row. A batch row whose
//! sequence is shorter stops early: its later `Y` rows stay zero and `Y_h`/`Y_c` hold its
//! state after its last step (ONNX Runtime's behaviour). Computes in f32; other float inputs
//! are converted and the outputs converted back.

use super::{f32_data, from_f32, same_float_dtype};
use crate::bail;
use crate::error::OpResult;
use crate::op::{input, opt_input, BuildCtx, Kernel, KernelResult};
use crate::ops::elementwise::SigmoidExp;
use lowbit_kernels::gemm::{sgemm, Trans};
use lowbit_onnx::attr::Attrs;
use lowbit_tensor::Tensor;

/// Which recurrent cell, with its cell-specific switches.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    Rnn,
    Gru { linear_before_reset: bool },
    Lstm { input_forget: bool },
}

impl Cell {
    /// Gates stacked in `W`/`R`: RNN `i`; GRU `z, r, h`; LSTM `i, o, f, c`.
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 3,
            Cell::Lstm { .. } => 4,
        }
    }

    /// Activations per direction: RNN `f`; GRU `f, g`; LSTM `f, g, h`.
    fn num_activations(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 2,
            Cell::Lstm { .. } => 3,
        }
    }

    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Gru { .. } => &["Sigmoid", "Tanh"],
            Cell::Lstm { .. } => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

/// One of the activation functions the recurrent ops accept by name.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f32, f32),
    LeakyRelu(f32),
    ThresholdedRelu(f32),
    ScaledTanh(f32, f32),
    HardSigmoid(f32, f32),
    Elu(f32),
    Softsign,
    Softplus,
}

impl Act {
    /// The activation named `name` (case-insensitive, as ONNX Runtime reads it), taking its
    /// alpha/beta from the front of `alphas`/`betas` when it uses them, else its ONNX default.
    fn parse(
        name: &str,
        alphas: &mut impl Iterator<Item = f32>,
        betas: &mut impl Iterator<Item = f32>,
    ) -> OpResult<Act> {
        let mut alpha = |d: f32| alphas.next().unwrap_or(d);
        Ok(match name.to_ascii_lowercase().as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "affine" => Act::Affine(alpha(1.0), betas.next().unwrap_or(0.0)),
            "leakyrelu" => Act::LeakyRelu(alpha(0.01)),
            "thresholdedrelu" => Act::ThresholdedRelu(alpha(1.0)),
            "scaledtanh" => Act::ScaledTanh(alpha(1.0), betas.next().unwrap_or(1.0)),
            "hardsigmoid" => Act::HardSigmoid(alpha(0.2), betas.next().unwrap_or(0.5)),
            "elu" => Act::Elu(alpha(1.0)),
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            _ => bail!("attribute 'activations' names unknown activation '{name}'"),
        })
    }

    #[inline]
    fn apply(self, x: f32) -> f32 {
        match self {
            Act::Relu => x.max(0.0),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => x.sigmoid(),
            Act::Affine(a, b) => a * x + b,
            Act::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Act::ThresholdedRelu(a) => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            Act::ScaledTanh(a, b) => a * (b * x).tanh(),
            Act::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Act::Elu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            Act::Softsign => x / (1.0 + x.abs()),
            Act::Softplus => x.softplus(),
        }
    }
}

/// A recurrent layer as configured by its attributes.
#[derive(Debug)]
struct Recurrent {
    cell: Cell,
    /// `hidden_size`, when the node states it (else read from `R`).
    hidden: Option<usize>,
    /// Per direction, in order: `true` runs backwards in time.
    reverse: Vec<bool>,
    /// Per direction, [`Cell::num_activations`] functions.
    acts: Vec<Vec<Act>>,
    clip: Option<f32>,
    batch_first: bool,
}

pub(super) fn build_rnn(ctx: &BuildCtx) -> KernelResult {
    build(ctx, Cell::Rnn)
}

pub(super) fn build_gru(ctx: &BuildCtx) -> KernelResult {
    let linear_before_reset = ctx.attrs.int_or("linear_before_reset", 0)? != 0;
    build(ctx, Cell::Gru { linear_before_reset })
}

pub(super) fn build_lstm(ctx: &BuildCtx) -> KernelResult {
    let input_forget = ctx.attrs.int_or("input_forget", 0)? != 0;
    build(ctx, Cell::Lstm { input_forget })
}

fn build(ctx: &BuildCtx, cell: Cell) -> KernelResult {
    Ok(Box::new(Recurrent::read(&ctx.attrs, cell)?))
}

impl Recurrent {
    fn read(a: &Attrs, cell: Cell) -> OpResult<Recurrent> {
        let reverse = match a.string_or("direction", "forward")?.as_str() {
            "forward" => vec![false],
            "reverse" => vec![true],
            "bidirectional" => vec![false, true],
            other => bail!(
                "attribute 'direction' must be forward, reverse or bidirectional, got '{other}'"
            ),
        };
        let hidden = match a.int("hidden_size")? {
            Some(h) if h < 1 => bail!("attribute 'hidden_size' must be positive, got {h}"),
            h => h.map(|h| h as usize),
        };
        let per_dir = cell.num_activations();
        let names = match a.strings("activations")? {
            Some(n) => n,
            None => {
                let d = cell.default_activations().iter().map(|s| s.to_string());
                d.cycle().take(per_dir * reverse.len()).collect()
            }
        };
        if names.len() != per_dir * reverse.len() {
            bail!(
                "attribute 'activations' has {} names; a {} layer with {} direction(s) needs {}",
                names.len(),
                match cell {
                    Cell::Rnn => "RNN",
                    Cell::Gru { .. } => "GRU",
                    Cell::Lstm { .. } => "LSTM",
                },
                reverse.len(),
                per_dir * reverse.len()
            );
        }
        let mut alphas = a.floats("activation_alpha")?.unwrap_or_default().into_iter();
        let mut betas = a.floats("activation_beta")?.unwrap_or_default().into_iter();
        let acts: Vec<Act> = names
            .iter()
            .map(|n| Act::parse(n, &mut alphas, &mut betas))
            .collect::<OpResult<_>>()?;
        let clip = match a.float("clip")? {
            Some(c) if c <= 0.0 => bail!("attribute 'clip' must be positive, got {c}"),
            c => c,
        };
        let batch_first = match a.int_or("layout", 0)? {
            0 => false,
            1 => true,
            v => bail!("attribute 'layout' must be 0 or 1, got {v}"),
        };
        Ok(Recurrent {
            cell,
            hidden,
            acts: acts.chunks(per_dir).map(<[Act]>::to_vec).collect(),
            reverse,
            clip,
            batch_first,
        })
    }
}

/// `[a, b, rest]` → `[b, a, rest]` (the layout-1 ↔ layout-0 swap of the first two dims).
fn swap01(v: &[f32], a: usize, b: usize, rest: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            let src = (i * b + j) * rest;
            let dst = (j * a + i) * rest;
            out[dst..dst + rest].copy_from_slice(&v[src..src + rest]);
        }
    }
    out
}

/// The operand shapes of one run, checked.
struct Dims {
    seq: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    dirs: usize,
}

impl Recurrent {
    fn dims(&self, x: &Tensor, w: &Tensor, r: &Tensor) -> OpResult<Dims> {
        let (xs, ws, rs) = (x.shape(), w.shape(), r.shape());
        if xs.len() != 3 {
            bail!("X must be 3-D, got shape {xs:?}");
        }
        let (seq, batch) = if self.batch_first { (xs[1], xs[0]) } else { (xs[0], xs[1]) };
        let dirs = self.reverse.len();
        let g = self.cell.gates();
        let hidden = match self.hidden {
            Some(h) => h,
            None if rs.len() == 3 => rs[2],
            None => bail!("R must be 3-D, got shape {rs:?}"),
        };
        let input = xs[2];
        if ws != [dirs, g * hidden, input] {
            bail!("W has shape {ws:?}, expected {:?}", [dirs, g * hidden, input]);
        }
        if rs != [dirs, g * hidden, hidden] {
            bail!("R has shape {rs:?}, expected {:?}", [dirs, g * hidden, hidden]);
        }
        Ok(Dims { seq, batch, input, hidden, dirs })
    }

    /// An optional `[dirs, batch, hidden]` state input (`[batch, dirs, hidden]` in layout 1)
    /// in layout 0, zeros when absent.
    fn state(&self, t: Option<&Tensor>, d: &Dims, what: &str) -> OpResult<Vec<f32>> {
        let Some(t) = t else { return Ok(vec![0.0; d.dirs * d.batch * d.hidden]) };
        let want = if self.batch_first {
            [d.batch, d.dirs, d.hidden]
        } else {
            [d.dirs, d.batch, d.hidden]
        };
        if t.shape() != want {
            bail!("{what} has shape {:?}, expected {want:?}", t.shape());
        }
        let v = f32_data(t)?;
        Ok(if self.batch_first { swap01(&v, d.batch, d.dirs, d.hidden) } else { v.into_owned() })
    }
}

/// Per-batch sequence lengths, each checked against `seq`.
fn sequence_lens(t: Option<&Tensor>, batch: usize, seq: usize) -> OpResult<Vec<usize>> {
    let Some(t) = t else { return Ok(vec![seq; batch]) };
    let v = t.to_i64_vec()?;
    if v.len() != batch {
        bail!("sequence_lens has {} values for a batch of {batch}", v.len());
    }
    v.iter()
        .map(|&l| {
            if l < 0 || l as usize > seq {
                bail!("sequence_lens value {l} is outside 0..={seq}");
            }
            Ok(l as usize)
        })
        .collect()
}

/// One direction's state while it steps through time.
struct DirState<'a> {
    /// Hidden and (LSTM) cell state, `[batch, hidden]`.
    h: Vec<f32>,
    c: Vec<f32>,
    /// `R` of this direction, `[gates·hidden, hidden]`.
    r: &'a [f32],
    /// Recurrent bias of GRU's `h` gate when `linear_before_reset` keeps it inside the reset.
    rbh: Option<&'a [f32]>,
    /// Peepholes `i, o, f`, `[3·hidden]`.
    p: Option<&'a [f32]>,
    acts: &'a [Act],
}

impl Kernel for Recurrent {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let (x, w, r) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
        let dtype = same_float_dtype(&[x, w, r])?;
        let d = self.dims(x, w, r)?;
        let (g, hs) = (self.cell.gates(), d.hidden);
        let gh = g * hs;
        let bias = match opt_input(inputs, 3) {
            Some(b) if b.shape() != [d.dirs, 2 * gh] => {
                bail!("B has shape {:?}, expected {:?}", b.shape(), [d.dirs, 2 * gh])
            }
            Some(b) => f32_data(b)?.into_owned(),
            None => vec![0.0; d.dirs * 2 * gh],
        };
        let lens = sequence_lens(opt_input(inputs, 4), d.batch, d.seq)?;
        let h0 = self.state(opt_input(inputs, 5), &d, "initial_h")?;
        let lstm = matches!(self.cell, Cell::Lstm { .. });
        let c0 = if lstm { self.state(opt_input(inputs, 6), &d, "initial_c")? } else { Vec::new() };
        let peep = match opt_input(inputs, 7).filter(|_| lstm) {
            Some(p) if p.shape() != [d.dirs, 3 * hs] => {
                bail!("P has shape {:?}, expected {:?}", p.shape(), [d.dirs, 3 * hs])
            }
            Some(p) => Some(f32_data(p)?.into_owned()),
            None => None,
        };
        let xv = f32_data(x)?;
        let xs = if self.batch_first {
            std::borrow::Cow::Owned(swap01(&xv, d.batch, d.seq, d.input))
        } else {
            xv
        };
        let (wv, rv) = (f32_data(w)?, f32_data(r)?);

        let (seq, batch) = (d.seq, d.batch);
        let mut y = vec![0.0f32; seq * d.dirs * batch * hs];
        let mut y_h = vec![0.0f32; d.dirs * batch * hs];
        let mut y_c = vec![0.0f32; if lstm { d.dirs * batch * hs } else { 0 }];
        for (dir, &reverse) in self.reverse.iter().enumerate() {
            // Input projections of every step, with both biases folded in (but for GRU's
            // `Rbh` when it sits inside the reset).
            let mut xw = vec![0.0f32; seq * batch * gh];
            let wd = &wv[dir * gh * d.input..(dir + 1) * gh * d.input];
            sgemm(
                Trans::No,
                Trans::Yes,
                seq * batch,
                gh,
                d.input,
                1.0,
                &xs,
                d.input,
                wd,
                d.input,
                0.0,
                &mut xw,
                gh,
            );
            let (wb, rb) = bias[dir * 2 * gh..(dir + 1) * 2 * gh].split_at(gh);
            let lbr = matches!(self.cell, Cell::Gru { linear_before_reset: true });
            let folded: Vec<f32> =
                (0..gh).map(|j| if lbr && j >= 2 * hs { wb[j] } else { wb[j] + rb[j] }).collect();
            for row in xw.chunks_exact_mut(gh) {
                row.iter_mut().zip(&folded).for_each(|(v, b)| *v += b);
            }
            let state_range = dir * batch * hs..(dir + 1) * batch * hs;
            let mut st = DirState {
                h: h0[state_range.clone()].to_vec(),
                c: if lstm { c0[state_range.clone()].to_vec() } else { Vec::new() },
                r: &rv[dir * gh * hs..(dir + 1) * gh * hs],
                rbh: lbr.then(|| &rb[2 * hs..]),
                p: peep.as_ref().map(|p| &p[dir * 3 * hs..(dir + 1) * 3 * hs]),
                acts: &self.acts[dir],
            };
            for s in 0..seq {
                // The time index each batch row reads at step `s` (`None`: finished).
                let times: Vec<Option<usize>> = lens
                    .iter()
                    .map(|&len| (s < len).then(|| if reverse { len - 1 - s } else { s }))
                    .collect();
                self.step(&mut st, &xw, &times, gh, hs);
                for (b, t) in times.iter().enumerate() {
                    if let Some(t) = *t {
                        let dst = ((t * d.dirs + dir) * batch + b) * hs;
                        y[dst..dst + hs].copy_from_slice(&st.h[b * hs..(b + 1) * hs]);
                    }
                }
            }
            y_h[state_range.clone()].copy_from_slice(&st.h);
            if lstm {
                y_c[state_range].copy_from_slice(&st.c);
            }
        }

        let (y, y_shape, state_shape) = if self.batch_first {
            (
                swap01(&y, seq, batch, d.dirs * hs),
                vec![batch, seq, d.dirs, hs],
                vec![batch, d.dirs, hs],
            )
        } else {
            (y, vec![seq, d.dirs, batch, hs], vec![d.dirs, batch, hs])
        };
        let state = |v: Vec<f32>| -> OpResult<Tensor> {
            let v = if self.batch_first { swap01(&v, d.dirs, batch, hs) } else { v };
            from_f32(dtype, state_shape.clone(), v)
        };
        let mut outs = vec![from_f32(dtype, y_shape, y)?, state(y_h)?];
        if lstm {
            outs.push(state(y_c)?);
        }
        Ok(outs)
    }
}

impl Recurrent {
    #[inline]
    fn clip(&self, v: f32) -> f32 {
        match self.clip {
            Some(c) => v.clamp(-c, c),
            None => v,
        }
    }

    /// One time step of every batch row still running (`times[b]` is the row's time index in
    /// `xw`, `[seq, batch, gates·hidden]`).
    fn step(&self, st: &mut DirState, xw: &[f32], times: &[Option<usize>], gh: usize, hs: usize) {
        let batch = times.len();
        // H·Rᵀ for every gate but GRU's `h` gate when the reset applies before the product.
        let rec_gates = match self.cell {
            Cell::Gru { linear_before_reset: false } => 2 * hs,
            _ => gh,
        };
        let mut hr = vec![0.0f32; batch * gh];
        sgemm(
            Trans::No,
            Trans::Yes,
            batch,
            rec_gates,
            hs,
            1.0,
            &st.h,
            hs,
            &st.r[..rec_gates * hs],
            hs,
            0.0,
            &mut hr,
            gh,
        );
        let pre = |b: usize, t: usize, j: usize| xw[(t * batch + b) * gh + j] + hr[b * gh + j];
        match self.cell {
            Cell::Rnn => {
                let f = st.acts[0];
                for (b, t) in times.iter().enumerate() {
                    let Some(t) = *t else { continue };
                    for j in 0..hs {
                        st.h[b * hs + j] = f.apply(self.clip(pre(b, t, j)));
                    }
                }
            }
            Cell::Gru { linear_before_reset } => {
                let (f, g) = (st.acts[0], st.acts[1]);
                let mut z = vec![0.0f32; batch * hs];
                let mut rh = vec![0.0f32; batch * hs];
                for (b, t) in times.iter().enumerate() {
                    let Some(t) = *t else { continue };
                    for j in 0..hs {
                        z[b * hs + j] = f.apply(self.clip(pre(b, t, j)));
                        let r = f.apply(self.clip(pre(b, t, hs + j)));
                        rh[b * hs + j] = if linear_before_reset {
                            // r ⊙ (H·Rhᵀ + Rbh), the product already in `hr`.
                            r * (hr[b * gh + 2 * hs + j] + st.rbh.map_or(0.0, |v| v[j]))
                        } else {
                            r * st.h[b * hs + j]
                        };
                    }
                }
                // Without linear_before_reset the reset gates the state before the product.
                let mut hh = vec![0.0f32; batch * hs];
                if !linear_before_reset {
                    let rh_rows = &st.r[2 * hs * hs..3 * hs * hs];
                    sgemm(
                        Trans::No,
                        Trans::Yes,
                        batch,
                        hs,
                        hs,
                        1.0,
                        &rh,
                        hs,
                        rh_rows,
                        hs,
                        0.0,
                        &mut hh,
                        hs,
                    );
                }
                for (b, t) in times.iter().enumerate() {
                    let Some(t) = *t else { continue };
                    for j in 0..hs {
                        let k = b * hs + j;
                        let rec = if linear_before_reset { rh[k] } else { hh[k] };
                        let x = xw[(t * batch + b) * gh + 2 * hs + j];
                        let cand = g.apply(self.clip(x + rec));
                        st.h[k] = (1.0 - z[k]) * cand + z[k] * st.h[k];
                    }
                }
            }
            Cell::Lstm { input_forget } => {
                let (f, g, h) = (st.acts[0], st.acts[1], st.acts[2]);
                let peep = |k: usize, j: usize| st.p.map_or(0.0, |p| p[k * hs + j]);
                for (b, t) in times.iter().enumerate() {
                    let Some(t) = *t else { continue };
                    for j in 0..hs {
                        let k = b * hs + j;
                        let c_prev = st.c[k];
                        let i = f.apply(self.clip(pre(b, t, j) + peep(0, j) * c_prev));
                        let fg = if input_forget {
                            1.0 - i
                        } else {
                            f.apply(self.clip(pre(b, t, 2 * hs + j) + peep(2, j) * c_prev))
                        };
                        let cand = g.apply(self.clip(pre(b, t, 3 * hs + j)));
                        let c = fg * c_prev + i * cand;
                        let o = f.apply(self.clip(pre(b, t, hs + j) + peep(1, j) * c));
                        st.c[k] = c;
                        st.h[k] = o * h.apply(c);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_onnx::build::{int_attr, string_attr as str_attr};
    use lowbit_onnx::pb::{attribute_proto::AttributeType, AttributeProto, NodeProto};

    fn node(op: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto { op_type: op.into(), attribute: attrs, ..Default::default() }
    }

    fn t(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    /// A scalar RNN (`hidden = input = 1`) written out by hand: `h = tanh(w·x + r·h + b)`.
    #[test]
    fn rnn_follows_the_recurrence_and_stops_short_sequences() {
        let n = node("RNN", vec![int_attr("hidden_size", 1)]);
        let k = Recurrent::read(&Attrs::new(&n), Cell::Rnn).unwrap();
        let (w, r, b) = (0.5f32, -0.25f32, 0.125f32);
        // seq 3, batch 2; the second row has length 2.
        let xs = [1.0f32, 2.0, -1.0, 0.5, 3.0, 9.0];
        let x = t(vec![3, 2, 1], xs.to_vec());
        let lens = Tensor::from_vec(vec![2], vec![3i32, 2]).unwrap();
        let out = k
            .run(&[
                Some(&x),
                Some(&t(vec![1, 1, 1], vec![w])),
                Some(&t(vec![1, 1, 1], vec![r])),
                Some(&t(vec![1, 2], vec![b, 0.0])),
                Some(&lens),
            ])
            .unwrap();
        let mut want_y = vec![0.0f32; 6];
        let mut hb = [0.0f32; 2];
        for s in 0..3 {
            for bi in 0..2 {
                if bi == 1 && s == 2 {
                    continue;
                }
                hb[bi] = (w * xs[s * 2 + bi] + r * hb[bi] + b).tanh();
                want_y[s * 2 + bi] = hb[bi];
            }
        }
        assert_eq!(out[0].shape(), [3, 1, 2, 1]);
        // Within an ulp or two: an optimized build's tanh may round differently from std's.
        let close = |got: &[f32], want: &[f32]| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 2e-7 * w.abs().max(1.0), "{got:?} vs {want:?}");
            }
        };
        close(out[0].as_f32().unwrap(), &want_y);
        close(out[1].as_f32().unwrap(), &hb);
    }

    /// The reverse direction of a bidirectional layer reads time backwards from each row's
    /// own end, and batch-first layout only moves the axes.
    #[test]
    fn bidirectional_reverse_half_reads_time_backwards_in_both_layouts() {
        let x0 = t(vec![3, 1, 1], vec![1.0, 2.0, 3.0]);
        let w = t(vec![2, 1, 1], vec![1.0, 1.0]);
        let r = t(vec![2, 1, 1], vec![0.5, 0.5]);
        let acts = AttributeProto {
            name: "activations".into(),
            strings: vec![b"Affine".to_vec(), b"Affine".to_vec()],
            r#type: AttributeType::Strings as i32,
            ..Default::default()
        };
        let mut attrs = vec![str_attr("direction", "bidirectional"), acts];
        let n = node("RNN", attrs.clone());
        let k = Recurrent::read(&Attrs::new(&n), Cell::Rnn).unwrap();
        let out = k.run(&[Some(&x0), Some(&w), Some(&r)]).unwrap();
        // forward: 1, 2.5, 4.25; reverse: h(t=2)=3, h(t=1)=3.5, h(t=0)=2.75
        assert_eq!(out[0].as_f32().unwrap(), &[1.0, 2.75, 2.5, 3.5, 4.25, 3.0]);
        assert_eq!(out[1].as_f32().unwrap(), &[4.25, 2.75]);

        attrs.push(int_attr("layout", 1));
        let n = node("RNN", attrs);
        let k = Recurrent::read(&Attrs::new(&n), Cell::Rnn).unwrap();
        let x1 = t(vec![1, 3, 1], vec![1.0, 2.0, 3.0]);
        let out1 = k.run(&[Some(&x1), Some(&w), Some(&r)]).unwrap();
        assert_eq!(out1[0].shape(), [1, 3, 2, 1]);
        assert_eq!(out1[0].as_f32().unwrap(), out[0].as_f32().unwrap());
        assert_eq!(out1[1].shape(), [1, 2, 1]);
    }

    #[test]
    fn bad_shapes_and_attributes_are_errors() {
        let n = node("LSTM", vec![str_attr("direction", "sideways")]);
        assert!(Recurrent::read(&Attrs::new(&n), Cell::Lstm { input_forget: false }).is_err());
        let n = node("GRU", vec![int_attr("hidden_size", 2)]);
        let k = Recurrent::read(&Attrs::new(&n), Cell::Gru { linear_before_reset: false }).unwrap();
        let x = t(vec![1, 1, 3], vec![0.0; 3]);
        let e = k
            .run(&[
                Some(&x),
                Some(&t(vec![1, 6, 2], vec![0.0; 12])),
                Some(&t(vec![1, 6, 2], vec![0.0; 12])),
            ])
            .unwrap_err();
        assert!(e.0.contains("W has shape"), "{e}");
    }
}
