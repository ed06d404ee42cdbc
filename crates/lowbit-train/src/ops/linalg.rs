//! Gemm and MatMul on lowbit_kernels' f32 GEMM (the serial variant: QAT already runs one
//! sample per thread). The backward products are GEMMs too, with the operands transposed.

use super::elementwise::{binary_forward, reduce_to, Binary};
use crate::arr::Arr;
use lowbit_kernels::gemm::{sgemm_serial, Trans};

fn t(on: bool) -> Trans {
    if on {
        Trans::Yes
    } else {
        Trans::No
    }
}

/// `C[m×n] (+)= alpha · op(A) · op(B)` with `op(A)` `m×k`, `op(B)` `k×n`, both row-major as
/// stored (`A` is `m×k` or, transposed, `k×m`).
#[allow(clippy::too_many_arguments)]
fn gemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    let lda = if ta { m } else { k };
    let ldb = if tb { k } else { n };
    sgemm_serial(t(ta), t(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, n);
}

#[derive(Clone, Debug, PartialEq)]
pub struct GemmAttrs {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

fn gemm_dims(p: &GemmAttrs, a: &Arr, b: &Arr) -> Result<(usize, usize, usize), String> {
    if a.rank() != 2 || b.rank() != 2 {
        return Err(format!("Gemm needs 2-D inputs, got {:?} and {:?}", a.shape, b.shape));
    }
    let (m, k) = if p.trans_a { (a.shape[1], a.shape[0]) } else { (a.shape[0], a.shape[1]) };
    let (k2, n) = if p.trans_b { (b.shape[1], b.shape[0]) } else { (b.shape[0], b.shape[1]) };
    if k != k2 {
        return Err(format!("Gemm: inner dims {k} and {k2} differ"));
    }
    Ok((m, n, k))
}

pub fn gemm_forward(p: &GemmAttrs, a: &Arr, b: &Arr, c: Option<&Arr>) -> Result<Arr, String> {
    let (m, n, k) = gemm_dims(p, a, b)?;
    let mut y = vec![0.0; m * n];
    gemm(p.trans_a, p.trans_b, m, n, k, p.alpha, &a.data, &b.data, 0.0, &mut y);
    let y = Arr::new(vec![m, n], y);
    match c {
        Some(c) if p.beta != 0.0 => {
            let bc = Arr::new(c.shape.clone(), c.data.iter().map(|v| v * p.beta).collect());
            binary_forward(Binary::Add, &y, &bc)
        }
        _ => Ok(y),
    }
}

pub fn gemm_backward(
    p: &GemmAttrs,
    a: &Arr,
    b: &Arr,
    c: Option<&Arr>,
    gy: &Arr,
) -> Result<Vec<Option<Arr>>, String> {
    let (m, n, k) = gemm_dims(p, a, b)?;
    // op(A) = A or Aᵀ: dop(A) = alpha · dY · op(B)ᵀ, then stored back transposed if needed.
    let mut ga = vec![0.0; m * k];
    if p.trans_a {
        // dA (k×m) = alpha · op(B) · dYᵀ
        gemm(p.trans_b, true, k, m, n, p.alpha, &b.data, &gy.data, 0.0, &mut ga);
    } else {
        gemm(false, !p.trans_b, m, k, n, p.alpha, &gy.data, &b.data, 0.0, &mut ga);
    }
    let mut gb = vec![0.0; k * n];
    if p.trans_b {
        // dB (n×k) = alpha · dYᵀ · op(A)
        gemm(true, p.trans_a, n, k, m, p.alpha, &gy.data, &a.data, 0.0, &mut gb);
    } else {
        gemm(!p.trans_a, false, k, n, m, p.alpha, &a.data, &gy.data, 0.0, &mut gb);
    }
    let gc = c.map(|c| {
        let mut g = reduce_to(gy, &c.shape);
        g.data.iter_mut().for_each(|v| *v *= p.beta);
        g
    });
    Ok(vec![Some(Arr::new(a.shape.clone(), ga)), Some(Arr::new(b.shape.clone(), gb)), gc])
}

/// How a MatMul's operands line up: `batch` products of `m×k · k×n`, `b` shared across the
/// batch when it is 2-D (a layer's weight).
struct MatMulDims {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_shared: bool,
    out: Vec<usize>,
}

fn matmul_dims(a: &Arr, b: &Arr) -> Result<MatMulDims, String> {
    if a.rank() < 2 || b.rank() < 2 {
        return Err(format!(
            "MatMul of rank-1 operands ({:?}, {:?}) is not supported",
            a.shape, b.shape
        ));
    }
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(format!("MatMul: inner dims of {:?} and {:?} differ", a.shape, b.shape));
    }
    if rb == 2 {
        let batch = a.shape[..ra - 2].iter().product();
        let mut out = a.shape[..ra - 1].to_vec();
        out.push(n);
        return Ok(MatMulDims { batch, m, k, n, b_shared: true, out });
    }
    if a.shape[..ra - 2] != b.shape[..rb - 2] {
        return Err(format!(
            "MatMul: broadcasting batch dims {:?} against {:?} is not supported",
            a.shape, b.shape
        ));
    }
    let batch = a.shape[..ra - 2].iter().product();
    let mut out = a.shape[..ra - 1].to_vec();
    out.push(n);
    Ok(MatMulDims { batch, m, k, n, b_shared: false, out })
}

pub fn matmul_forward(a: &Arr, b: &Arr) -> Result<Arr, String> {
    let d = matmul_dims(a, b)?;
    let mut y = vec![0.0; d.batch * d.m * d.n];
    if d.b_shared {
        // One product with the batch folded into the rows.
        gemm(false, false, d.batch * d.m, d.n, d.k, 1.0, &a.data, &b.data, 0.0, &mut y);
    } else {
        for i in 0..d.batch {
            gemm(
                false,
                false,
                d.m,
                d.n,
                d.k,
                1.0,
                &a.data[i * d.m * d.k..(i + 1) * d.m * d.k],
                &b.data[i * d.k * d.n..(i + 1) * d.k * d.n],
                0.0,
                &mut y[i * d.m * d.n..(i + 1) * d.m * d.n],
            );
        }
    }
    Ok(Arr::new(d.out, y))
}

pub fn matmul_backward(a: &Arr, b: &Arr, gy: &Arr) -> Result<(Arr, Arr), String> {
    let d = matmul_dims(a, b)?;
    let mut ga = vec![0.0; a.len()];
    let mut gb = vec![0.0; b.len()];
    if d.b_shared {
        let rows = d.batch * d.m;
        gemm(false, true, rows, d.k, d.n, 1.0, &gy.data, &b.data, 0.0, &mut ga);
        gemm(true, false, d.k, d.n, rows, 1.0, &a.data, &gy.data, 0.0, &mut gb);
    } else {
        let (sa, sb, sy) = (d.m * d.k, d.k * d.n, d.m * d.n);
        for i in 0..d.batch {
            let gyi = &gy.data[i * sy..(i + 1) * sy];
            gemm(
                false,
                true,
                d.m,
                d.k,
                d.n,
                1.0,
                gyi,
                &b.data[i * sb..(i + 1) * sb],
                0.0,
                &mut ga[i * sa..(i + 1) * sa],
            );
            gemm(
                true,
                false,
                d.k,
                d.n,
                d.m,
                1.0,
                &a.data[i * sa..(i + 1) * sa],
                gyi,
                0.0,
                &mut gb[i * sb..(i + 1) * sb],
            );
        }
    }
    Ok((Arr::new(a.shape.clone(), ga), Arr::new(b.shape.clone(), gb)))
}
