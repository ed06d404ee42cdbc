//! Weight-only quantized matrix products on [`lowbit_kernels::wgemm`]: f32 activations times
//! int8/int4 weights dequantized inside the GEMM, packed once at load.
//!
//! - `ai.lowbit` `WeightOnlyMatMul(A, W, scale, [zero_point], [bias])`, attributes
//!   `block_size` (0: per column or per tensor) and `trans_b`: what [`crate::fuse`] makes of
//!   `DequantizeLinear(W const) → MatMul/Gemm` (scale and zero point exactly as the
//!   `DequantizeLinear` had them: `[ceil(K/bs), N]` for `W [K, N]`, `[N, ceil(K/bs)]` for
//!   `W [N, K]`; `[N]` or one value per column/tensor).
//! - `com.microsoft` `MatMulNBits(A, B, scales, [zero_points], [g_idx], [bias])` (ONNX
//!   Runtime's 4-bit weight format; 4 and 8 bits, without `g_idx`).
//!
//! `A` is f32 of any rank ≥ 1 with last dim K; the output replaces that dim by N.

use crate::bail;
use crate::error::{OpError, OpResult};
use crate::op::{input, BuildCtx, Kernel};
use crate::registry::Registry;
use lowbit_kernels::gemm::Trans;
use lowbit_kernels::wgemm::{wgemm, Codes, PackedWeights, WeightSpec};
use lowbit_tensor::tensor::numel;
use lowbit_tensor::{DType, Tensor, TensorData};

pub fn register(reg: &mut Registry) {
    reg.register(crate::fuse::LOWBIT_DOMAIN, "WeightOnlyMatMul", build_weight_only_matmul);
    reg.register("com.microsoft", "MatMulNBits", build_matmul_nbits);
}

struct WeightOnlyKernel {
    b: PackedWeights,
    bias: Option<Vec<f32>>,
}

impl Kernel for WeightOnlyKernel {
    fn run(&self, ins: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let a = input(ins, 0)?;
        let (k, n) = (self.b.k(), self.b.n());
        let av = match a.data() {
            TensorData::F32(v) => v,
            _ => bail!("A must be float32, got {}", a.dtype()),
        };
        if a.rank() == 0 || a.shape()[a.rank() - 1] != k {
            bail!("A has shape {:?}; its last dim must be K = {k}", a.shape());
        }
        let m = numel(&a.shape()[..a.rank() - 1]);
        let mut c = vec![0f32; m * n];
        wgemm(m, av, k, &self.b, self.bias.as_deref(), &mut c, n);
        let mut shape = a.shape()[..a.rank() - 1].to_vec();
        shape.push(n);
        Ok(vec![Tensor::from_vec(shape, c).map_err(|e| OpError::new(e.to_string()))?])
    }
}

/// A constant float input as f32 values (f16/bf16 converted).
fn floats(ctx: &BuildCtx, i: usize, what: &str) -> OpResult<Vec<f32>> {
    let t = ctx.constant(i).ok_or_else(|| OpError::new(format!("{what} must be a constant")))?;
    if !t.dtype().is_float() {
        bail!("{what} must be float, got {}", t.dtype());
    }
    t.to_f32_vec().map_err(|e| OpError::new(e.to_string()))
}

/// Input `i` when the node names it.
fn named(ctx: &BuildCtx, i: usize) -> bool {
    ctx.node.input.get(i).is_some_and(|s| !s.is_empty())
}

/// An optional constant bias of `n` values.
fn bias(ctx: &BuildCtx, i: usize, n: usize) -> OpResult<Option<Vec<f32>>> {
    if !named(ctx, i) {
        return Ok(None);
    }
    let v = floats(ctx, i, "bias")?;
    if v.len() != n {
        bail!("bias has {} values for N = {n}", v.len());
    }
    Ok(Some(v))
}

/// `[rows, cols]` row-major values transposed to `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows).map(|i| v[(i % rows) * cols + i / rows]).collect()
}

fn build_weight_only_matmul(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let w = ctx.constant(1).ok_or_else(|| OpError::new("W must be a constant"))?;
    if w.rank() != 2 {
        bail!("W must be 2-D, got shape {:?}", w.shape());
    }
    let trans = ctx.attrs.int_or("trans_b", 0)? != 0;
    let block = ctx.attrs.int_or("block_size", 0)?;
    if block < 0 {
        bail!("block_size must be >= 0, got {block}");
    }
    let block = block as usize;
    let (k, n) = if trans { (w.shape()[1], w.shape()[0]) } else { (w.shape()[0], w.shape()[1]) };
    let codes = match w.data() {
        TensorData::I8(v) => Codes::I8(v),
        TensorData::U8(v) => Codes::U8(v),
        TensorData::I4(v) => Codes::I4(v),
        TensorData::U4(v) => Codes::U4(v),
        _ => bail!("W must be int8/uint8/int4/uint4, got {}", w.dtype()),
    };
    let blocks = if block == 0 { 1 } else { k.div_ceil(block) };
    let mut scales = floats(ctx, 2, "scale")?;
    if scales.len() != 1 && scales.len() != blocks * n {
        bail!("scale has {} values for {blocks} block(s) x {n} columns", scales.len());
    }
    let mut zps = match named(ctx, 3) {
        false => None,
        true => {
            let z = ctx.constant(3).ok_or_else(|| OpError::new("zero_point must be a constant"))?;
            if z.dtype() != w.dtype() || z.len() != scales.len() {
                bail!("zero_point must be {} with {} value(s)", w.dtype(), scales.len());
            }
            Some(z.to_f32_vec().map_err(|e| OpError::new(e.to_string()))?)
        }
    };
    if trans && blocks > 1 && scales.len() > 1 {
        // Stored [N, blocks] beside a [N, K] weight; the kernel reads [blocks, N].
        scales = transpose(&scales, n, blocks);
        zps = zps.map(|z| transpose(&z, n, blocks));
    }
    let spec = WeightSpec {
        k,
        n,
        trans: if trans { Trans::Yes } else { Trans::No },
        codes,
        block_size: block,
        scales: &scales,
        zero_points: zps.as_deref(),
    };
    let b = PackedWeights::pack(&spec).map_err(OpError::new)?;
    Ok(Box::new(WeightOnlyKernel { b, bias: bias(ctx, 4, n)? }))
}

/// `MatMulNBits`: `B` is `[N, blocks, block_size · bits / 8]` uint8, each column's K codes in
/// order (low nibble first for 4 bits); `scales` `[N · blocks]`; `zero_points` uint8 packed
/// like `B` along blocks (`[N, ceil(blocks · bits / 8)]`) or float `[N · blocks]`, default
/// `2^(bits-1)`.
fn build_matmul_nbits(ctx: &BuildCtx) -> OpResult<Box<dyn Kernel>> {
    let int = |name: &str| -> OpResult<usize> {
        let v = ctx.attrs.int_or(name, -1)?;
        if v <= 0 {
            bail!("attribute {name} must be positive, got {v}");
        }
        Ok(v as usize)
    };
    let (k, n, bits, block) = (int("K")?, int("N")?, int("bits")?, int("block_size")?);
    if bits != 4 && bits != 8 {
        bail!("bits = {bits} is not supported (4 or 8)");
    }
    if block < 16 || !block.is_power_of_two() {
        bail!("block_size must be a power of two >= 16, got {block}");
    }
    if named(ctx, 4) {
        bail!("g_idx (act-order) is not supported");
    }
    let blocks = k.div_ceil(block);
    let blob = block * bits / 8;
    let b = ctx.constant(1).ok_or_else(|| OpError::new("B must be a constant"))?;
    let bytes = match b.data() {
        TensorData::U8(v) if v.len() == n * blocks * blob => v,
        _ => bail!("B must be uint8 with N x blocks x blob = {} bytes", n * blocks * blob),
    };
    let per_byte = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    let code = |col: &[u8], i: usize| (col[i / per_byte] >> ((i % per_byte) * bits)) & mask;
    let mut codes = vec![0u8; n * k];
    for (j, col) in bytes.chunks_exact(blocks * blob).enumerate() {
        for kk in 0..k {
            codes[j * k + kk] = code(col, kk);
        }
    }
    let scales = floats(ctx, 2, "scales")?;
    if scales.len() != n * blocks {
        bail!("scales has {} values, expected N x blocks = {}", scales.len(), n * blocks);
    }
    let zps: Vec<f32> = match ctx.constant(3) {
        None if named(ctx, 3) => bail!("zero_points must be a constant"),
        None => vec![(1 << (bits - 1)) as f32; n * blocks],
        Some(z) if z.dtype() == DType::U8 => {
            let zb = z.as_slice::<u8>().map_err(|e| OpError::new(e.to_string()))?;
            let row = (blocks * bits).div_ceil(8);
            if zb.len() != n * row {
                bail!("zero_points has {} bytes, expected {}", zb.len(), n * row);
            }
            (0..n * blocks).map(|i| code(&zb[(i / blocks) * row..], i % blocks) as f32).collect()
        }
        Some(_) => {
            let z = floats(ctx, 3, "zero_points")?;
            if z.len() != n * blocks {
                bail!("zero_points has {} values, expected {}", z.len(), n * blocks);
            }
            z
        }
    };
    let codes_t = if bits == 4 { Codes::U4(&codes) } else { Codes::U8(&codes) };
    let (scales, zps) = (transpose(&scales, n, blocks), transpose(&zps, n, blocks));
    let spec = WeightSpec {
        k,
        n,
        trans: Trans::Yes,
        codes: codes_t,
        block_size: block,
        scales: &scales,
        zero_points: Some(&zps),
    };
    let b = PackedWeights::pack(&spec).map_err(OpError::new)?;
    Ok(Box::new(WeightOnlyKernel { b, bias: bias(ctx, 5, n)? }))
}
