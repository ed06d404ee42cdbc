//! Attention: ONNX's `Attention` (opset 23; 24's `nonpad_kv_seqlen`) and ONNX Runtime's fused
//! `com.microsoft.Attention` (packed QKV projection, `mask_index`, `unidirectional`, `past`),
//! which ORT's transformer optimizer and several exporters write.
//!
//! Both come down to one [`attend`]: scores `Q·Kᵀ` per head through the engine's batched
//! [`matmul`], an additive bias (masks, causality), the engine's [`softmax_rows`], then `P·V`.
//! Grouped-query attention needs no copy of K and V: query heads `g·G .. (g+1)·G` share KV head
//! `g`, so `Q [B, Hq, S, D]` read as `[B, Hkv, G·S, D]` multiplies `Kᵀ [B, Hkv, D, T]` as is.
//! Everything computes in f32 (f16/bf16/f64 converted in and back, as `MatMul` does), so
//! `softmax_precision` asks for nothing more.

use super::{f32_data, from_f32, same_float_dtype};
use crate::bail;
use crate::error::OpResult;
use crate::op::{input, opt_input, BuildCtx, Kernel, KernelResult};
use crate::ops::elementwise::broadcast::map2;
use crate::ops::linalg::{matmul, matmul_with, packed_constant};
use crate::ops::shape::{concat, stack, take_index, transposed};
use lowbit_kernels::gemm::{Epilogue, PackedB};
use lowbit_kernels::norm::softmax_rows;
use lowbit_tensor::{DType, Tensor, TensorData};

/// An additive score bias, broadcastable to the scores `[B, Hq, Sq, T]`.
struct Bias {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Bias {
    /// `self + other`, broadcast.
    fn add(self, other: Bias) -> OpResult<Bias> {
        let (shape, data) =
            map2((&self.shape, &self.data), (&other.shape, &other.data), |a, b| a + b)?;
        Ok(Bias { shape, data })
    }

    fn add_opt(this: Option<Bias>, other: Bias) -> OpResult<Bias> {
        match this {
            Some(b) => b.add(other),
            None => Ok(other),
        }
    }
}

/// Which intermediate ONNX's `qk_matmul_output` shows (`qk_matmul_output_mode`): `Q·Kᵀ·scale`
/// (0), after softcap (1), after the mask/bias (2), after softmax (3), the order the op
/// computes them in and the node tests' numbering. Mode 0 with a softcap is the product
/// before it, as ONNX Runtime 1.32 writes it (ONNX's Python reference returns it after; no
/// node test has both).
#[derive(Clone, Copy, PartialEq)]
enum QkStage {
    Scaled = 0,
    Softcapped = 1,
    Biased = 2,
    Softmax = 3,
}

/// The scores and what to do with them.
struct Scoring {
    scale: f32,
    /// `softcap · tanh(s / softcap)` when positive.
    softcap: f32,
    /// Keep a copy of the scores at this stage (`qk_matmul_output`).
    keep: Option<QkStage>,
}

/// Multi-head attention over f32 `q [B, Hq, Sq, D]`, `k [B, Hkv, T, D]`, `v [B, Hkv, T, Dv]`
/// (`Hq` a multiple of `Hkv`): `y [B, Hq, Sq, Dv]`, and the kept scores `[B, Hq, Sq, T]`.
///
/// A query row whose bias is `-inf` everywhere attends to nothing: its probabilities and its
/// output are 0 (ONNX's rule; a softmax of all `-inf` would be NaN).
fn attend(
    q: Tensor,
    k: &Tensor,
    v: &Tensor,
    how: &Scoring,
    bias: Option<&Bias>,
) -> OpResult<(Tensor, Option<Tensor>)> {
    let (&[b, hq, sq, d], &[bk, hkv, t, dk], &[bv, hv, tv, dv]) = (q.shape(), k.shape(), v.shape())
    else {
        bail!(
            "attention needs 4-D Q, K and V, got {:?}, {:?} and {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    };
    if bk != b || bv != b || hv != hkv || tv != t || dk != d {
        bail!(
            "Q {:?}, K {:?} and V {:?} do not fit: batch, KV heads, key length and Q/K head size \
             must agree",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if hkv == 0 || hq % hkv != 0 {
        bail!("{hq} query heads cannot share {hkv} key/value heads (need a multiple)");
    }
    let group = hq / hkv;
    let qg = q.reshape(vec![b, hkv, group * sq, d])?;
    let kt = transposed(k, &[0, 1, 3, 2])?;
    let mut s = matmul(&qg, &kt)?.into_vec::<f32>()?;
    let scores_shape = vec![b, hq, sq, t];
    s.iter_mut().for_each(|x| *x *= how.scale);
    let mut kept = None;
    let mut keep = |stage: QkStage, s: &[f32]| {
        if how.keep == Some(stage) {
            kept = Some(s.to_vec());
        }
    };
    keep(QkStage::Scaled, &s);
    if how.softcap > 0.0 {
        let c = how.softcap;
        s.iter_mut().for_each(|x| *x = c * (*x / c).tanh());
    }
    keep(QkStage::Softcapped, &s);
    let mut masked_rows = Vec::new();
    if let Some(bias) = bias {
        // The bias broadcast to the scores' shape: added, and read for fully masked rows.
        let (shape, full) = map2((&scores_shape, &s), (&bias.shape, &bias.data), |_, &m| m)?;
        if shape != scores_shape {
            bail!("attention mask/bias of shape {:?} does not broadcast to the scores {scores_shape:?}", bias.shape);
        }
        s.iter_mut().zip(&full).for_each(|(x, m)| *x += m);
        if t > 0 {
            masked_rows = full
                .chunks_exact(t)
                .map(|row| row.iter().all(|&m| m == f32::NEG_INFINITY))
                .collect();
        }
    }
    keep(QkStage::Biased, &s);
    softmax_rows(&mut s, t);
    if t > 0 {
        for (row, _) in s.chunks_exact_mut(t).zip(&masked_rows).filter(|(_, &m)| m) {
            row.fill(0.0);
        }
    }
    keep(QkStage::Softmax, &s);
    let p = Tensor::from_vec(vec![b, hkv, group * sq, t], s)?;
    let y = matmul(&p, v)?.reshape(vec![b, hq, sq, dv])?;
    let kept = kept.map(|k| Tensor::from_vec(scores_shape, k)).transpose()?;
    Ok((y, kept))
}

/// `t` as an f32 tensor (a float of another width is converted).
fn to_f32(t: &Tensor) -> OpResult<Tensor> {
    same_float_dtype(&[t])?;
    Ok(Tensor::from_vec(t.shape().to_vec(), f32_data(t)?.into_owned())?)
}

/// `[B, S, H·D]` → `[B, H, S, D]`.
fn split_heads(x: Tensor, heads: usize, what: &str) -> OpResult<Tensor> {
    let &[b, s, hidden] = x.shape() else {
        bail!("{what} must be 3-D [batch, sequence, hidden], got {:?}", x.shape())
    };
    if heads == 0 || hidden % heads != 0 {
        bail!("{what} hidden size {hidden} is not a multiple of {heads} heads");
    }
    transposed(&x.reshape(vec![b, s, heads, hidden / heads])?, &[0, 2, 1, 3])
}

/// `[B, H, S, D]` → `[B, S, H·D]`.
fn merge_heads(y: &Tensor) -> OpResult<Tensor> {
    let &[b, h, s, d] = y.shape() else { bail!("internal: attention output {:?}", y.shape()) };
    Ok(transposed(y, &[0, 2, 1, 3])?.reshape(vec![b, s, h * d])?)
}

// ---------------------------------------------------------------------------------------------
// ONNX `Attention`

struct OnnxAttention {
    is_causal: bool,
    /// `q_num_heads`, `kv_num_heads`: required for 3-D inputs.
    heads: Option<(usize, usize)>,
    scale: Option<f32>,
    softcap: f32,
    keep: Option<QkStage>,
}

pub(super) fn build_attention(ctx: &BuildCtx) -> KernelResult {
    let a = &ctx.attrs;
    let heads = match (a.int("q_num_heads")?, a.int("kv_num_heads")?) {
        (Some(q), Some(kv)) if q > 0 && kv > 0 => Some((q as usize, kv as usize)),
        (None, None) => None,
        (q, kv) => {
            return Err(a
                .invalid(
                    "q_num_heads",
                    format!("q_num_heads {q:?} and kv_num_heads {kv:?} must both be positive"),
                )
                .into())
        }
    };
    let stage = match a.int_or("qk_matmul_output_mode", 0)? {
        0 => QkStage::Scaled,
        1 => QkStage::Softcapped,
        2 => QkStage::Biased,
        3 => QkStage::Softmax,
        m => {
            return Err(a.invalid("qk_matmul_output_mode", format!("must be 0..3, got {m}")).into())
        }
    };
    let wants_qk = ctx.node.output.get(3).is_some_and(|o| !o.is_empty());
    for w in ["left_window_size", "right_window_size"] {
        if a.int_or(w, -1)? != -1 {
            return Err(a
                .invalid(w, "sliding-window attention (opset 25) is not supported")
                .into());
        }
    }
    Ok(Box::new(OnnxAttention {
        is_causal: a.int_or("is_causal", 0)? != 0,
        heads,
        scale: a.float("scale")?,
        softcap: a.float_or("softcap", 0.0)?,
        keep: wants_qk.then_some(stage),
    }))
}

/// `-inf` where key `j` is after query `i`'s frontier `i + offset`, else 0: `[Sq, T]` for one
/// offset, `[B, 1, Sq, T]` for one per batch.
fn causal_bias(sq: usize, t: usize, offsets: &[i64], per_batch: bool) -> Bias {
    let mut data = Vec::with_capacity(offsets.len() * sq * t);
    for &off in offsets {
        for i in 0..sq as i64 {
            data.extend((0..t as i64).map(|j| if j <= i + off { 0.0 } else { f32::NEG_INFINITY }));
        }
    }
    let shape = if per_batch { vec![offsets.len(), 1, sq, t] } else { vec![sq, t] };
    Bias { shape, data }
}

/// `attn_mask` as an additive bias over `t` keys: bool `true` attends (0) and `false` does
/// not (`-inf`); float values are added. A mask shorter than `t` is padded with "not".
fn mask_bias(m: &Tensor, t: usize) -> OpResult<Bias> {
    let data: Vec<f32> = match m.data() {
        TensorData::Bool(v) => {
            v.iter().map(|&keep| if keep { 0.0 } else { f32::NEG_INFINITY }).collect()
        }
        _ => f32_data(m)
            .map_err(|e| crate::OpError::new(format!("attn_mask: {}", e.0)))?
            .into_owned(),
    };
    let Some(&last) = m.shape().last() else { bail!("attn_mask must have rank >= 1") };
    if last == t {
        return Ok(Bias { shape: m.shape().to_vec(), data });
    }
    if last > t {
        bail!("attn_mask covers {last} keys but there are only {t}");
    }
    let rows: usize = m.shape()[..m.rank() - 1].iter().product();
    let mut padded = Vec::with_capacity(rows * t);
    for r in 0..rows {
        padded.extend_from_slice(&data[r * last..(r + 1) * last]);
        padded.resize((r + 1) * t, f32::NEG_INFINITY);
    }
    let mut shape = m.shape().to_vec();
    shape[m.rank() - 1] = t;
    Ok(Bias { shape, data: padded })
}

impl Kernel for OnnxAttention {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let (q, k, v) = (input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?);
        let mask = opt_input(inputs, 3);
        let (past_k, past_v) = (opt_input(inputs, 4), opt_input(inputs, 5));
        let nonpad = opt_input(inputs, 6);
        let (q_dtype, k_dtype, v_dtype) = (same_float_dtype(&[q, k])?, k.dtype(), v.dtype());
        same_float_dtype(&[v])?;
        if q.rank() != k.rank() || q.rank() != v.rank() {
            bail!(
                "Q, K and V must have one rank, got {:?}, {:?} and {:?}",
                q.shape(),
                k.shape(),
                v.shape()
            );
        }
        let three_d = q.rank() == 3;
        let (q4, k4, v4) = match (q.rank(), self.heads) {
            (3, Some((hq, hkv))) => (
                split_heads(to_f32(q)?, hq, "Q")?,
                split_heads(to_f32(k)?, hkv, "K")?,
                split_heads(to_f32(v)?, hkv, "V")?,
            ),
            (3, None) => bail!("3-D Q, K and V need the q_num_heads and kv_num_heads attributes"),
            (4, _) => (to_f32(q)?, to_f32(k)?, to_f32(v)?),
            (r, _) => bail!("Q, K and V must be 3-D or 4-D, got rank {r}"),
        };
        let past_len = match (past_k, past_v) {
            (Some(pk), Some(_)) if pk.rank() == 4 => pk.shape()[2],
            (None, None) => 0,
            (Some(pk), Some(_)) => bail!("past_key must be 4-D, got {:?}", pk.shape()),
            _ => bail!("past_key and past_value must be given together"),
        };
        let (k4, v4) = match (past_k, past_v) {
            (Some(pk), Some(pv)) => {
                (concat(&[&to_f32(pk)?, &k4], 2)?, concat(&[&to_f32(pv)?, &v4], 2)?)
            }
            _ => (k4, v4),
        };
        let (b, sq, t) = (q4.shape()[0], q4.shape()[2], k4.shape()[2]);
        let nonpad: Option<Vec<i64>> = match nonpad {
            Some(_) if past_k.is_some() => {
                bail!("nonpad_kv_seqlen cannot be combined with past_key/past_value")
            }
            Some(n) => {
                let n = n.to_i64_vec()?;
                if n.len() != b {
                    bail!("nonpad_kv_seqlen has {} entries for batch {b}", n.len());
                }
                Some(n)
            }
            None => None,
        };
        let mut bias = mask.map(|m| mask_bias(m, t)).transpose()?;
        if self.is_causal {
            // Bottom-right aligned: a query block follows the keys already there (the past,
            // or a static cache's valid keys).
            let causal = match &nonpad {
                Some(n) => {
                    let offsets: Vec<i64> = n.iter().map(|&l| l - sq as i64).collect();
                    causal_bias(sq, t, &offsets, true)
                }
                None => causal_bias(sq, t, &[past_len as i64], false),
            };
            bias = Some(Bias::add_opt(bias, causal)?);
        }
        if let Some(n) = &nonpad {
            let mut data = Vec::with_capacity(b * t);
            for &l in n {
                data.extend((0..t as i64).map(|j| if j < l { 0.0 } else { f32::NEG_INFINITY }));
            }
            bias = Some(Bias::add_opt(bias, Bias { shape: vec![b, 1, 1, t], data })?);
        }
        let d = q4.shape()[3];
        let how = Scoring {
            scale: self.scale.unwrap_or(1.0 / (d as f32).sqrt()),
            softcap: self.softcap,
            keep: self.keep,
        };
        let (y, qk) = attend(q4, &k4, &v4, &how, bias.as_ref())?;
        let y = if three_d { merge_heads(&y)? } else { y };
        let cast = |t: Tensor, d: DType| -> OpResult<Tensor> {
            Ok(if d == DType::F32 { t } else { t.cast(d)? })
        };
        let mut outs = vec![cast(y, q_dtype)?, cast(k4, k_dtype)?, cast(v4, v_dtype)?];
        if let Some(qk) = qk {
            outs.push(cast(qk, q_dtype)?);
        }
        Ok(outs)
    }
}

// ---------------------------------------------------------------------------------------------
// com.microsoft `Attention`

/// ONNX Runtime's fused self-attention: `input [B, S, K] · weights [K, Hq+Hk+Hv] + bias`, split
/// into Q, K, V of `num_heads` heads, attention, output `[B, S, Hv]` (and `present
/// [2, B, heads, past+S, Dh]` when `past` is given).
struct OrtAttention {
    heads: usize,
    /// Hidden sizes of Q, K, V (`qkv_hidden_sizes`), when given.
    sizes: Option<[usize; 3]>,
    causal: bool,
    scale: f32,
    mask_filter: f32,
    packed: Option<PackedB>,
}

pub(super) fn build_ort_attention(ctx: &BuildCtx) -> KernelResult {
    let a = &ctx.attrs;
    let heads = a.req_int("num_heads")?;
    if heads <= 0 {
        return Err(a.invalid("num_heads", format!("must be positive, got {heads}")).into());
    }
    let sizes = match a.ints("qkv_hidden_sizes")? {
        None => None,
        Some(v) if v.len() == 3 && v.iter().all(|&x| x > 0 && x % heads == 0) => {
            Some([v[0] as usize, v[1] as usize, v[2] as usize])
        }
        Some(v) => {
            return Err(a
                .invalid(
                    "qkv_hidden_sizes",
                    format!("{v:?}: need 3 positive multiples of num_heads {heads}"),
                )
                .into())
        }
    };
    if let Some([q, k, _]) = sizes {
        if q != k {
            return Err(a.invalid("qkv_hidden_sizes", "Q and K hidden sizes must agree").into());
        }
    }
    for (name, what) in [
        ("do_rotary", "rotary embeddings are not supported"),
        ("past_present_share_buffer", "a shared past/present buffer is not supported"),
    ] {
        if a.int_or(name, 0)? != 0 {
            return Err(a.invalid(name, what).into());
        }
    }
    if ctx.node.input.get(6).is_some_and(|s| !s.is_empty()) {
        bail!("input past_sequence_length (a shared past/present buffer) is not supported");
    }
    Ok(Box::new(OrtAttention {
        heads: heads as usize,
        sizes,
        causal: a.int_or("unidirectional", 0)? != 0,
        scale: a.float_or("scale", 0.0)?,
        mask_filter: a.float_or("mask_filter_value", -10000.0)?,
        packed: packed_constant(ctx.constant(1))?,
    }))
}

impl OrtAttention {
    /// `mask_index` (and `unidirectional`) as a `[B, 1, S, T]` bias: `mask_filter_value` on the
    /// keys it masks, the lowest float after a query's position when causal, as ORT's CPU
    /// kernel writes it. Forms: `[B]` key lengths, `[2B]` ends then starts, `[B, T]` 1/0 per
    /// key, `[B, S, T]` 1/0 per query and key.
    fn bias(
        &self,
        mask: Option<&Tensor>,
        b: usize,
        s: usize,
        past: usize,
    ) -> OpResult<Option<Bias>> {
        let t = past + s;
        if mask.is_none() && !self.causal {
            return Ok(None);
        }
        let filter = self.mask_filter;
        let mut data = vec![0f32; b * s * t];
        if let Some(m) = mask {
            let v = m.to_i64_vec()?;
            match m.shape() {
                [n] if *n == b || *n == 2 * b => {
                    for bi in 0..b {
                        let end = v[bi].clamp(0, t as i64) as usize;
                        let start =
                            if *n == 2 * b { v[b + bi].clamp(0, t as i64) as usize } else { 0 };
                        for row in data[bi * s * t..(bi + 1) * s * t].chunks_exact_mut(t) {
                            row[end..].fill(filter);
                            row[..start].fill(filter);
                        }
                    }
                }
                [mb, mt] if *mb == b && *mt == t => {
                    for bi in 0..b {
                        for row in data[bi * s * t..(bi + 1) * s * t].chunks_exact_mut(t) {
                            for (x, &keep) in row.iter_mut().zip(&v[bi * t..(bi + 1) * t]) {
                                *x = if keep > 0 { 0.0 } else { filter };
                            }
                        }
                    }
                }
                [mb, ms, mt] if *mb == b && *ms == s && *mt == t => {
                    for (x, &keep) in data.iter_mut().zip(&v) {
                        *x = if keep > 0 { 0.0 } else { filter };
                    }
                }
                sh => bail!(
                    "mask_index of shape {sh:?} is not one of the forms supported for batch {b}, \
                     sequence {s}, total sequence {t}: [B], [2B], [B, T], [B, S, T]"
                ),
            }
        }
        if self.causal {
            for rows in data.chunks_exact_mut(s * t) {
                for (i, row) in rows.chunks_exact_mut(t).enumerate() {
                    row[(past + i + 1).min(t)..].fill(f32::MIN);
                }
            }
        }
        Ok(Some(Bias { shape: vec![b, 1, s, t], data }))
    }
}

impl Kernel for OrtAttention {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let (x, w) = (input(inputs, 0)?, input(inputs, 1)?);
        let qkv_bias = opt_input(inputs, 2);
        let (mask, past, attn_bias) =
            (opt_input(inputs, 3), opt_input(inputs, 4), opt_input(inputs, 5));
        let mut all = vec![x, w];
        all.extend(qkv_bias);
        let dtype = same_float_dtype(&all)?;
        let (&[b, s, k_in], &[wk, n]) = (x.shape(), w.shape()) else {
            bail!(
                "input must be [batch, sequence, hidden] and weights [hidden, Q+K+V hidden], got \
                 {:?} and {:?}",
                x.shape(),
                w.shape()
            );
        };
        if wk != k_in {
            bail!("weights {:?} do not fit input {:?}", w.shape(), x.shape());
        }
        let [hq, hk, hv] = self.sizes.unwrap_or([n / 3; 3]);
        if hq + hk + hv != n || hq % self.heads != 0 || hv % self.heads != 0 {
            bail!(
                "weights have {n} columns: not Q/K/V hidden sizes {:?} for {} heads",
                [hq, hk, hv],
                self.heads
            );
        }
        let bias_v = qkv_bias.map(f32_data).transpose()?;
        if let Some(bv) = &bias_v {
            if bv.len() != n {
                bail!("bias has {} values for {n} projection columns", bv.len());
            }
        }
        let epi = Epilogue { row_bias: None, col_bias: bias_v.as_deref(), act: None };
        let packed = self.packed.as_ref().filter(|p| p.k() == k_in && p.n() == n);
        let proj = matmul_with(x, w, packed, &epi)?;
        let proj = f32_data(&proj)?.into_owned();
        // Q, K and V are column ranges of each projected row.
        let cols = |from: usize, width: usize| -> OpResult<Tensor> {
            let mut out = Vec::with_capacity(b * s * width);
            for row in proj.chunks_exact(n) {
                out.extend_from_slice(&row[from..from + width]);
            }
            Ok(Tensor::from_vec(vec![b, s, width], out)?)
        };
        let q4 = split_heads(cols(0, hq)?, self.heads, "Q")?;
        let mut k4 = split_heads(cols(hq, hk)?, self.heads, "K")?;
        let mut v4 = split_heads(cols(hq + hk, hv)?, self.heads, "V")?;
        let mut past_len = 0;
        if let Some(p) = past {
            let pf = to_f32(p)?;
            match pf.shape() {
                &[2, pb, ph, pl, _] if pb == b && ph == self.heads => past_len = pl,
                sh => bail!("past must be [2, {b}, {}, past, head size], got {sh:?}", self.heads),
            }
            k4 = concat(&[&take_index(&pf, 0, 0)?, &k4], 2)?;
            v4 = concat(&[&take_index(&pf, 0, 1)?, &v4], 2)?;
        }
        let mut bias = self.bias(mask, b, s, past_len)?;
        if let Some(ab) = attn_bias {
            let ab = Bias { shape: ab.shape().to_vec(), data: to_f32(ab)?.into_vec::<f32>()? };
            bias = Some(Bias::add_opt(bias, ab)?);
        }
        let dh = hq / self.heads;
        let scale = if self.scale == 0.0 { 1.0 / (dh as f32).sqrt() } else { self.scale };
        let how = Scoring { scale, softcap: 0.0, keep: None };
        let (y, _) = attend(q4, &k4, &v4, &how, bias.as_ref())?;
        let y = from_f32(dtype, vec![b, s, hv], merge_heads(&y)?.into_vec::<f32>()?)?;
        if past.is_some() {
            let present = stack(&[k4, v4], 0)?;
            let present = if dtype == DType::F32 { present } else { present.cast(dtype)? };
            return Ok(vec![y, present]);
        }
        Ok(vec![y])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    /// Straight loops over heads, for the grouped-query layout and the masked-row rule.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, bias: &[f32]) -> Vec<f32> {
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        let (b, hq, sq, d, hkv, tl, dv) = (qs[0], qs[1], qs[2], qs[3], ks[1], ks[2], vs[3]);
        let (qv, kv, vv) = (q.as_f32().unwrap(), k.as_f32().unwrap(), v.as_f32().unwrap());
        let mut out = vec![0f32; b * hq * sq * dv];
        for bi in 0..b {
            for h in 0..hq {
                let g = h / (hq / hkv);
                for i in 0..sq {
                    let mut p: Vec<f64> = (0..tl)
                        .map(|j| {
                            let dot: f32 = (0..d)
                                .map(|x| {
                                    qv[((bi * hq + h) * sq + i) * d + x]
                                        * kv[((bi * hkv + g) * tl + j) * d + x]
                                })
                                .sum();
                            (dot * scale + bias[i * tl + j]) as f64
                        })
                        .collect();
                    if p.iter().all(|&x| x == f64::NEG_INFINITY) {
                        continue;
                    }
                    let m = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    p.iter_mut().for_each(|x| *x = (*x - m).exp());
                    let sum: f64 = p.iter().sum();
                    for c in 0..dv {
                        out[((bi * hq + h) * sq + i) * dv + c] = (0..tl)
                            .map(|j| (p[j] / sum) as f32 * vv[((bi * hkv + g) * tl + j) * dv + c])
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn grouped_query_heads_share_kv_heads_and_fully_masked_rows_are_zero() {
        let vals = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * seed).sin()).collect();
        let q = t(&[1, 4, 3, 2], vals(24, 0.7));
        let k = t(&[1, 2, 3, 2], vals(12, 1.3));
        let v = t(&[1, 2, 3, 5], vals(30, 0.9));
        let ninf = f32::NEG_INFINITY;
        // Row 0 sees keys 0-1, row 1 nothing, row 2 everything.
        let bias = vec![0.0, 0.0, ninf, ninf, ninf, ninf, 0.0, 0.5, -0.5];
        let how = Scoring { scale: 0.5, softcap: 0.0, keep: Some(QkStage::Softmax) };
        let b = Bias { shape: vec![3, 3], data: bias.clone() };
        let (y, p) = attend(q.clone(), &k, &v, &how, Some(&b)).unwrap();
        assert_eq!(y.shape(), &[1, 4, 3, 5]);
        let want = reference(&q, &k, &v, 0.5, &bias);
        for (a, b) in y.as_f32().unwrap().iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let p = p.unwrap();
        assert_eq!(p.shape(), &[1, 4, 3, 3]);
        // Fully masked row: zero probabilities, not NaN.
        assert_eq!(&p.as_f32().unwrap()[3..6], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn short_masks_are_padded_as_masked() {
        let m = Tensor::from_vec(vec![2, 1], vec![true, false]).unwrap();
        let b = mask_bias(&m, 3).unwrap();
        assert_eq!(b.shape, vec![2, 3]);
        let ninf = f32::NEG_INFINITY;
        assert_eq!(b.data, vec![0.0, ninf, ninf, ninf, ninf, ninf]);
        assert!(mask_bias(&m, 0).is_err());
    }
}
