//! Matrix products: `MatMul` (numpy semantics: 1-D operands promoted, batch dims broadcast)
//! and `Gemm` (`alpha * op(A) * op(B) + beta * C`, `C` broadcast to the output).
//!
//! lowbit's `FusedMatMul(A, B, [bias])` and `FusedGemm` (made by [`crate::fuse_float`]) add
//! a per-column bias and an activation (`activation`, `activation_params`) in the product's
//! output stage.
//!
//! `Einsum` ([`einsum`]) reduces each pair of operands to one batched [`matmul`].
//!
//! All compute in f32 through [`lowbit_kernels::gemm`]; f64, f16 and bf16 inputs are converted
//! to f32 and the result back. A `MatMul` whose `B` has no batch dims runs as one GEMM over all
//! of `A`'s rows; batched products with small matrices are spread over the rayon pool one
//! matrix per task.

mod einsum;

use crate::bail;
use crate::error::OpResult;
use crate::op::{input, opt_input, BuildCtx, Kernel};
use crate::ops::nn::{f32_data, from_f32, same_float_dtype};
use crate::ops::util::fused_activation;
use crate::ops::util::{broadcast_shapes, broadcast_strides};
use crate::registry::Registry;
use lowbit_kernels::gemm::{
    sgemm, sgemm_packed_with, sgemm_serial, Activation, Epilogue, PackedB, Trans,
};
use lowbit_tensor::tensor::numel;
use lowbit_tensor::Tensor;

pub fn register(reg: &mut Registry) {
    reg.register("", "MatMul", build_matmul);
    reg.register("", "Gemm", build_gemm);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "FusedMatMul", build_fused_matmul);
    reg.register(crate::fuse::LOWBIT_DOMAIN, "FusedGemm", build_fused_gemm);
    reg.register("", "Einsum", einsum::build_einsum);
}

/// `MatMul` (and `FusedMatMul`), with `B` packed once at load time when it is a constant
/// matrix.
struct MatMulKernel {
    packed_b: Option<PackedB>,
    act: Activation,
}

fn build_matmul(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_matmul_with(ctx, Activation::None)
}

fn build_fused_matmul(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_matmul_with(ctx, fused_activation(&ctx.attrs)?)
}

fn build_matmul_with(ctx: &BuildCtx, act: Activation) -> OpResult<Box<dyn Kernel>> {
    Ok(Box::new(MatMulKernel { packed_b: packed_constant(ctx.constant(1))?, act }))
}

/// A `MatMul` right operand known at load time, packed once when it is one float matrix (no
/// batch dims); `None` otherwise.
pub(crate) fn packed_constant(b: Option<&Tensor>) -> OpResult<Option<PackedB>> {
    Ok(match b {
        Some(b)
            if b.rank() >= 2 && numel(&b.shape()[..b.rank() - 2]) == 1 && b.dtype().is_float() =>
        {
            let (k, n) = (b.shape()[b.rank() - 2], b.shape()[b.rank() - 1]);
            let v = f32_data(b)?;
            Some(PackedB::pack(Trans::No, k, n, &v, n))
        }
        _ => None,
    })
}

impl Kernel for MatMulKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
        let c = opt_input(inputs, 2);
        let bias = match c {
            Some(c) => {
                let n = if b.rank() == 1 { 1 } else { b.shape()[b.rank() - 1] };
                let row = c.rank() > 0 && c.len() == n && c.shape()[c.rank() - 1] == n;
                if !row {
                    bail!("FusedMatMul bias must have shape [1, ..., 1, {n}], got {:?}", c.shape());
                }
                same_float_dtype(&[a, c])?;
                Some(f32_data(c)?)
            }
            None => None,
        };
        let epi = Epilogue { row_bias: None, col_bias: bias.as_deref(), act: Some(self.act) };
        let y = matmul_with(a, b, self.packed_b.as_ref(), &epi)?;
        // The bias broadcasts: more dims than the product add leading ones.
        match c {
            Some(c) if c.rank() > y.rank() => {
                let mut shape = vec![1; c.rank() - y.rank()];
                shape.extend_from_slice(y.shape());
                Ok(vec![y.reshape(shape)?])
            }
            _ => Ok(vec![y]),
        }
    }
}

/// Rows below which packing a non-constant `B` costs more than it saves.
const PACK_MIN_ROWS: usize = 4;

/// `C[rows, n] = A[rows, k] * B[k, n]`, packing `B` unless it already is.
#[allow(clippy::too_many_arguments)]
fn product(
    rows: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    packed: Option<&PackedB>,
    c: &mut [f32],
    serial: bool,
    epi: &Epilogue,
) {
    match packed {
        Some(p) => sgemm_packed_with(rows, a, k, p, 0.0, c, n, epi),
        None if rows >= PACK_MIN_ROWS => {
            sgemm_packed_with(rows, a, k, &PackedB::pack(Trans::No, k, n, b, n), 0.0, c, n, epi)
        }
        None if serial => {
            sgemm_serial(Trans::No, Trans::No, rows, n, k, 1.0, a, k, b, n, 0.0, c, n);
            epi.apply(rows, n, c, n);
        }
        None => {
            sgemm(Trans::No, Trans::No, rows, n, k, 1.0, a, k, b, n, 0.0, c, n);
            epi.apply(rows, n, c, n);
        }
    }
}

/// Below this many multiply-adds per matrix, batched products go one matrix per task.
const SMALL_MATRIX_WORK: usize = 96 * 96 * 96;

/// Numpy `matmul` of two float tensors of the same dtype.
pub fn matmul(a: &Tensor, b: &Tensor) -> OpResult<Tensor> {
    matmul_with(a, b, None, &Epilogue::default())
}

/// [`matmul`], with `packed_b` the pre-packed value of `b` when it is known, and `epi` on
/// every output value (a column bias has the output's last dim).
pub(crate) fn matmul_with(
    a: &Tensor,
    b: &Tensor,
    packed_b: Option<&PackedB>,
    epi: &Epilogue,
) -> OpResult<Tensor> {
    let dtype = same_float_dtype(&[a, b])?;
    if a.rank() == 0 || b.rank() == 0 {
        bail!("MatMul needs operands of rank >= 1, got shapes {:?} and {:?}", a.shape(), b.shape());
    }
    let mut ash = a.shape().to_vec();
    let mut bsh = b.shape().to_vec();
    let a_vec = ash.len() == 1;
    let b_vec = bsh.len() == 1;
    if a_vec {
        ash.insert(0, 1);
    }
    if b_vec {
        bsh.push(1);
    }
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (k2, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != k2 {
        bail!("MatMul inner dims differ: shapes {:?} and {:?}", a.shape(), b.shape());
    }
    let a_batch = &ash[..ash.len() - 2];
    let b_batch = &bsh[..bsh.len() - 2];
    let batch = broadcast_shapes(a_batch, b_batch)?;
    let mut out_shape = batch.clone();
    if !a_vec {
        out_shape.push(m);
    }
    if !b_vec {
        out_shape.push(n);
    }
    let av = f32_data(a)?;
    let bv = f32_data(b)?;
    let nb = numel(&batch);
    let mut out = vec![0f32; nb * m * n];
    if numel(b_batch) == 1 {
        // B is one matrix: every row of every A batch is a row of one big GEMM.
        let rows = nb * m;
        let packed = packed_b.filter(|p| p.k() == k && p.n() == n && !b_vec);
        product(rows, n, k, &av, &bv, packed, &mut out, false, epi);
    } else {
        let sa = broadcast_strides(a_batch, &batch);
        let sb = broadcast_strides(b_batch, &batch);
        let offsets: Vec<(usize, usize)> = (0..nb)
            .map(|i| {
                let (mut rem, mut oa, mut ob) = (i, 0, 0);
                for d in (0..batch.len()).rev() {
                    let idx = rem % batch[d];
                    rem /= batch[d];
                    oa += idx * sa[d];
                    ob += idx * sb[d];
                }
                (oa * m * k, ob * k * n)
            })
            .collect();
        let one = |(i, c): (usize, &mut [f32]), serial: bool| {
            let (oa, ob) = offsets[i];
            product(m, n, k, &av[oa..oa + m * k], &bv[ob..ob + k * n], None, c, serial, epi);
        };
        if m * n == 0 {
        } else if rayon::current_num_threads() > 1 && m * n * k < SMALL_MATRIX_WORK && nb > 1 {
            use rayon::prelude::*;
            out.par_chunks_mut(m * n).enumerate().for_each(|x| one(x, true));
        } else {
            out.chunks_mut(m * n).enumerate().for_each(|x| one(x, false));
        }
    }
    from_f32(dtype, out_shape, out)
}

struct GemmKernel {
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
    /// `op(B)` packed at load time when `B` is a constant.
    packed_b: Option<PackedB>,
    act: Activation,
}

fn build_gemm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_gemm_with(ctx, Activation::None)
}

fn build_fused_gemm(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    build_gemm_with(ctx, fused_activation(&ctx.attrs)?)
}

fn build_gemm_with(ctx: &BuildCtx, act: Activation) -> OpResult<Box<dyn Kernel>> {
    let a = &ctx.attrs;
    let trans_b = a.int_or("transB", 0)? != 0;
    let packed_b = match ctx.constant(1) {
        Some(b) if b.rank() == 2 && b.dtype().is_float() => {
            let (r, c) = (b.shape()[0], b.shape()[1]);
            let (k, n) = if trans_b { (c, r) } else { (r, c) };
            let tb = if trans_b { Trans::Yes } else { Trans::No };
            Some(PackedB::pack(tb, k, n, &f32_data(b)?, c))
        }
        _ => None,
    };
    Ok(Box::new(GemmKernel {
        trans_a: a.int_or("transA", 0)? != 0,
        trans_b,
        alpha: a.float_or("alpha", 1.0)?,
        beta: a.float_or("beta", 1.0)?,
        packed_b,
        act,
    }))
}

impl Kernel for GemmKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let a = input(inputs, 0)?;
        let b = input(inputs, 1)?;
        let c = opt_input(inputs, 2);
        let mut all = vec![a, b];
        all.extend(c);
        let dtype = same_float_dtype(&all)?;
        if a.rank() != 2 || b.rank() != 2 {
            bail!("Gemm needs 2-D A and B, got shapes {:?} and {:?}", a.shape(), b.shape());
        }
        let (m, k) =
            if self.trans_a { (a.shape()[1], a.shape()[0]) } else { (a.shape()[0], a.shape()[1]) };
        let (k2, n) =
            if self.trans_b { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
        if k != k2 {
            bail!(
                "Gemm inner dims differ: A {:?} (transA={}) and B {:?} (transB={})",
                a.shape(),
                self.trans_a as u8,
                b.shape(),
                self.trans_b as u8
            );
        }
        let av = f32_data(a)?;
        // The packed kernel reads A row-major: materialize op(A).
        let av: Vec<f32> = if self.trans_a {
            let mut t = vec![0f32; m * k];
            for p in 0..k {
                for i in 0..m {
                    t[i * k + p] = av[p * m + i];
                }
            }
            t
        } else {
            av.into_owned()
        };
        if let Some(c) = c {
            if c.rank() > 2 {
                bail!("Gemm C must have rank <= 2, got shape {:?}", c.shape());
            }
            let bs = broadcast_shapes(c.shape(), &[m, n])?;
            if bs != [m, n] {
                bail!("Gemm C of shape {:?} does not broadcast to [{m}, {n}]", c.shape());
            }
        }
        let cv = c.map(f32_data).transpose()?;
        // A row-vector C with unit alpha and beta is a column bias: added in the output stage.
        let row_vector =
            c.is_some_and(|c| c.len() == n && c.shape().iter().rev().skip(1).all(|&d| d == 1));
        let in_stage = self.alpha == 1.0 && self.beta == 1.0 && (c.is_none() || row_vector);
        let epi = if in_stage {
            Epilogue { row_bias: None, col_bias: cv.as_deref(), act: Some(self.act) }
        } else {
            Epilogue::default()
        };
        let mut out = vec![0f32; m * n];
        let tb = if self.trans_b { Trans::Yes } else { Trans::No };
        match self.packed_b.as_ref().filter(|p| p.k() == k && p.n() == n) {
            Some(p) => sgemm_packed_with(m, &av, k, p, 0.0, &mut out, n, &epi),
            None => {
                let bv = f32_data(b)?;
                let ldb = b.shape()[1];
                if m >= PACK_MIN_ROWS {
                    let p = PackedB::pack(tb, k, n, &bv, ldb);
                    sgemm_packed_with(m, &av, k, &p, 0.0, &mut out, n, &epi)
                } else {
                    sgemm(Trans::No, tb, m, n, k, 1.0, &av, k, &bv, ldb, 0.0, &mut out, n);
                    epi.apply(m, n, &mut out, n);
                }
            }
        }
        if !in_stage {
            if self.alpha != 1.0 {
                out.iter_mut().for_each(|v| *v *= self.alpha);
            }
            if let (Some(c), Some(cv)) = (c, &cv) {
                let st = broadcast_strides(c.shape(), &[m, n]);
                for i in 0..m {
                    for j in 0..n {
                        out[i * n + j] += self.beta * cv[i * st[0] + j * st[1]];
                    }
                }
            }
            self.act.apply(&mut out);
        }
        Ok(vec![from_f32(dtype, vec![m, n], out)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    #[test]
    fn matmul_promotes_vectors_and_broadcasts_batches() {
        let a = t(vec![2, 1, 2, 3], (0..12).map(|v| v as f32).collect());
        let b = t(vec![3, 3, 1], (0..9).map(|v| v as f32).collect());
        let y = matmul(&a, &b).unwrap();
        assert_eq!(y.shape(), &[2, 3, 2, 1]);
        let v = t(vec![3], vec![1.0, 2.0, 3.0]);
        let y = matmul(&v, &v).unwrap();
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.as_f32().unwrap(), &[14.0]);
        assert!(matmul(&t(vec![2, 3], vec![0.0; 6]), &t(vec![2, 3], vec![0.0; 6])).is_err());
    }
}
