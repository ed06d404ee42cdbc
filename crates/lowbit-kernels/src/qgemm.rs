//! Integer matrix multiply: `u8` activations × `i8` weights → exact `i32` sums, with the output
//! stage fused: requantize to `u8`/`i8` (bias, per-column multiplier, zero point, clamp),
//! scale to `f32`, or the raw `i32`.
//!
//! `C[i, j] = Σ_k (A[i, k] - a_zp) · (B[k, j] - b_zp[j])`, computed as the raw product `Σ A·B`
//! corrected by `a_zp · colsum(B)`, `b_zp · rowsum(A)` and `k · a_zp · b_zp`, so the inner loop
//! never touches zero points. The weight operand `B` is packed once ([`PackedI8`]) in panels
//! of [`NR`] columns; the AVX2 and generic micro-kernels compute 4 rows × 16 columns.
//!
//! Three instruction paths, chosen at run time ([`cpu::best`], never `target-cpu=native`):
//! - **AVX-512 VNNI** (`vpdpbusd` on zmm registers, tiles of 8 rows × 32 columns): 4 u8×i8
//!   products summed into each i32 lane, exact.
//! - **AVX2**: `vpmaddubsw` multiplies u8×i8 and adds adjacent pairs into *saturating* i16,
//!   then `vpmaddwd` by ones widens to i32. A pair saturates only when
//!   `255 · (|b_k| + |b_k+1|) > 32767`; [`PackedI8::pack`] checks every adjacent pair of every
//!   column and, when any could saturate (full-range 8-bit weights), packs the weights as i16
//!   instead and multiplies with `vpmaddwd` (exact, about half the throughput). Weights written
//!   with reduce-range (7 bits, lowbit's and ONNX Runtime's default for x86) always take the
//!   fast path; ONNX Runtime on AVX2 takes `vpmaddubsw` regardless and saturates.
//! - **Generic**: the same packed layout in plain Rust, for other CPUs.
//!
//! [`qgemm_ref`] is the textbook triple loop every path is tested against, bit for bit.
//! Requantization is [`crate::quantize::requantize_one`]'s rule (the SIMD epilogue reproduces
//! it exactly: f32 multiply, round half to even, add the zero point, saturate).

use crate::cpu::{self, Isa};
use crate::gemm::{Ptr, Trans};
use crate::quantize::requantize_one;

/// Columns per packed panel (and per micro-kernel tile).
pub const NR: usize = 16;
/// Rows per micro-kernel tile.
const MR: usize = 4;
/// Rows per AVX-512 VNNI tile.
const VNNI_MR: usize = 8;
/// Work (m·n·k) below which threads cost more than they save.
const PARALLEL_MIN_WORK: usize = 32 * 32 * 64;
/// Row-major tile order from this many rows of A, while B is at most this many bytes.
const ROW_MAJOR_MIN_M: usize = 256;
const ROW_MAJOR_MAX_B: usize = 256 << 10;

/// How the weights are laid out inside a panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Groups of 4 consecutive k per column, as i8 (`vpmaddubsw` / `vpdpbusd` / generic).
    Quads,
    /// Groups of 2 consecutive k per column, widened to i16 (`vpmaddwd`: AVX2 with weights
    /// whose pair sums could saturate `vpmaddubsw`).
    Pairs,
}

/// The constant `k × n` i8 operand, packed once (weights at model load).
#[derive(Clone, Debug)]
pub struct PackedI8 {
    k: usize,
    n: usize,
    isa: Isa,
    form: Form,
    quads: Vec<i8>,
    pairs: Vec<i16>,
    /// `Σ_k B[k, j]` per column (zero-padded to whole panels).
    col_sums: Vec<i32>,
    /// Zero point per column (zero-padded to whole panels).
    zero_points: Vec<i32>,
    any_zero_point: bool,
}

impl PackedI8 {
    /// Packs `op(B)` (`k × n`, stored row-major with leading dim `ldb`) for this CPU.
    /// `zero_points` has one value, or one per column.
    ///
    /// # Panics
    /// When `b` is too short or `zero_points` has another length (caller bugs).
    pub fn pack(tb: Trans, k: usize, n: usize, b: &[i8], ldb: usize, zero_points: &[i32]) -> Self {
        PackedI8::pack_for(cpu::best().qgemm, tb, k, n, b, ldb, zero_points)
    }

    /// [`PackedI8::pack`] for a given path (tests run every path the CPU has).
    pub fn pack_for(
        isa: Isa,
        tb: Trans,
        k: usize,
        n: usize,
        b: &[i8],
        ldb: usize,
        zero_points: &[i32],
    ) -> Self {
        assert!(zero_points.len() == 1 || zero_points.len() == n, "PackedI8: zero points");
        let at = |kk: usize, j: usize| -> i8 {
            match tb {
                Trans::No => b[kk * ldb + j],
                Trans::Yes => b[j * ldb + kk],
            }
        };
        if k > 0 && n > 0 {
            let last = match tb {
                Trans::No => (k - 1) * ldb + n - 1,
                Trans::Yes => (n - 1) * ldb + k - 1,
            };
            assert!(b.len() > last, "PackedI8: B is too short");
        }
        let panels = n.div_ceil(NR);
        let width = panels * NR;
        let mut col_sums = vec![0i32; width];
        let mut zps = vec![0i32; width];
        for j in 0..n {
            col_sums[j] = (0..k).map(|kk| at(kk, j) as i32).sum();
            zps[j] = if zero_points.len() == 1 { zero_points[0] } else { zero_points[j] };
        }
        let saturates = (0..n).any(|j| {
            (0..k).step_by(2).any(|kk| {
                let next = if kk + 1 < k { (at(kk + 1, j) as i32).abs() } else { 0 };
                255 * ((at(kk, j) as i32).abs() + next) > i16::MAX as i32
            })
        });
        let form = if isa == Isa::Avx2 && saturates { Form::Pairs } else { Form::Quads };
        let mut quads = Vec::new();
        let mut pairs = Vec::new();
        match form {
            Form::Quads => {
                let groups = k.div_ceil(4);
                quads = vec![0i8; panels * groups * NR * 4];
                for p in 0..panels {
                    for g in 0..groups {
                        let base = (p * groups + g) * NR * 4;
                        for jj in 0..NR.min(n - p * NR) {
                            for t in 0..4.min(k - 4 * g) {
                                quads[base + jj * 4 + t] = at(4 * g + t, p * NR + jj);
                            }
                        }
                    }
                }
            }
            Form::Pairs => {
                let groups = k.div_ceil(2);
                pairs = vec![0i16; panels * groups * NR * 2];
                for p in 0..panels {
                    for g in 0..groups {
                        let base = (p * groups + g) * NR * 2;
                        for jj in 0..NR.min(n - p * NR) {
                            for t in 0..2.min(k - 2 * g) {
                                pairs[base + jj * 2 + t] = at(2 * g + t, p * NR + jj) as i16;
                            }
                        }
                    }
                }
            }
        }
        let any_zero_point = zps.iter().any(|&z| z != 0);
        PackedI8 { k, n, isa, form, quads, pairs, col_sums, zero_points: zps, any_zero_point }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn form(&self) -> Form {
        self.form
    }
}

/// What happens to each exact `i32` sum.
pub enum Stage<'a> {
    /// Stored as is (`MatMulInteger`, `ConvInteger`).
    I32 { out: &'a mut [i32] },
    /// `saturate(round_half_even((acc + bias[j]) · multiplier[j]) + zero_point)` into
    /// `[qmin, qmax]`, stored as bytes (i8 results as their two's-complement bits).
    Requantize {
        bias: Option<&'a [i32]>,
        /// One value, or one per column.
        multiplier: &'a [f32],
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        out: &'a mut [u8],
    },
    /// `acc · scale[j] + bias[j]` (f32 multiply, then add).
    Dequantize {
        /// One value, or one per column.
        scale: &'a [f32],
        bias: Option<&'a [f32]>,
        out: &'a mut [f32],
    },
}

/// Where `C[i, j]` goes: `out[i · row_stride + j · col_stride]` (row-major: `(ldc, 1)`;
/// a conv's pixels × channels product written as NCHW: `(1, pixels)`).
pub struct Output<'a> {
    pub stage: Stage<'a>,
    pub row_stride: usize,
    pub col_stride: usize,
}

#[derive(Clone, Copy)]
enum Sink<'a> {
    I32(Ptr<i32>),
    Requantize {
        bias: Option<&'a [i32]>,
        multiplier: &'a [f32],
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        out: Ptr<u8>,
    },
    Dequantize {
        scale: &'a [f32],
        bias: Option<&'a [f32]>,
        out: Ptr<f32>,
    },
}

/// `C = (A - a_zero_point) · (B - b_zero_points)` through `out`'s stage. `A` is `m × k` u8,
/// row-major with leading dim `lda`; `k` and `n` come from `b`. Runs on the current rayon
/// pool when the product is large enough.
///
/// # Panics
/// When a slice is too short for its dims, or a bias/multiplier/scale has a length other than
/// 1 (multiplier, scale) or `n` (caller bugs, never user data).
pub fn qgemm(m: usize, a: &[u8], lda: usize, a_zero_point: i32, b: &PackedI8, out: Output<'_>) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || m <= 1 || lda >= k, "qgemm: lda {lda} < {k}");
    assert!(a.len() >= (m - 1) * lda + k, "qgemm: A is too short");
    let last = (m - 1) * out.row_stride + (n - 1) * out.col_stride;
    let per_col = |len: usize, what: &str| {
        assert!(len == 1 || len == n, "qgemm: {what} has {len} values for {n} columns")
    };
    let sink = match out.stage {
        Stage::I32 { out } => {
            assert!(out.len() > last, "qgemm: C is too short");
            Sink::I32(Ptr(out.as_mut_ptr()))
        }
        Stage::Requantize { bias, multiplier, zero_point, qmin, qmax, out } => {
            assert!(out.len() > last, "qgemm: C is too short");
            assert!(byte_range(qmin, qmax), "qgemm: [{qmin}, {qmax}] is not a u8 or i8 range");
            per_col(multiplier.len(), "multiplier");
            if let Some(b) = bias {
                assert_eq!(b.len(), n, "qgemm: bias length");
            }
            Sink::Requantize {
                bias,
                multiplier,
                zero_point,
                qmin,
                qmax,
                out: Ptr(out.as_mut_ptr()),
            }
        }
        Stage::Dequantize { scale, bias, out } => {
            assert!(out.len() > last, "qgemm: C is too short");
            per_col(scale.len(), "scale");
            if let Some(b) = bias {
                assert_eq!(b.len(), n, "qgemm: bias length");
            }
            Sink::Dequantize { scale, bias, out: Ptr(out.as_mut_ptr()) }
        }
    };
    let row_sums: Vec<i32> = if b.any_zero_point {
        (0..m).map(|i| a[i * lda..i * lda + k].iter().map(|&v| v as i32).sum()).collect()
    } else {
        Vec::new()
    };
    let (rs, cs) = (out.row_stride, out.col_stride);
    let panels = n.div_ceil(NR);
    // AVX-512 VNNI tiles are 8 rows × 2 panels (16 zmm accumulators: enough independent
    // `vpdpbusd` chains to cover its latency on two ports); the others 4 rows × 1 panel.
    let vnni = b.isa == Isa::Avx512Vnni && b.form == Form::Quads;
    let (tile_rows, tile_panels) = if vnni { (VNNI_MR, 2) } else { (MR, 1) };
    let row_blocks = m.div_ceil(tile_rows);
    // Everything per column is folded once per call into `adj` (added to every row's sums:
    // the requantize bias, `-a_zp·colsum(B)`, `+k·a_zp·b_zp`) and `scale` (the multiplier or
    // dequantization scale, expanded; 0 past `n`), so a tile's epilogue is one vector pass.
    let width = panels * NR;
    let (kz, az) = (k as i32, a_zero_point);
    let mut adj: Vec<i32> = (0..width)
        .map(|j| {
            let zb = b.zero_points[j];
            kz.wrapping_mul(az).wrapping_mul(zb).wrapping_sub(az.wrapping_mul(b.col_sums[j]))
        })
        .collect();
    let mut scale = vec![0f32; width];
    match sink {
        Sink::Requantize { bias, multiplier: v, .. } => {
            for (j, s) in scale.iter_mut().enumerate().take(n) {
                *s = if v.len() == 1 { v[0] } else { v[j] };
            }
            if let Some(bv) = bias {
                for (a, &x) in adj.iter_mut().zip(bv) {
                    *a = a.wrapping_add(x);
                }
            }
        }
        Sink::Dequantize { scale: v, .. } => {
            for (j, s) in scale.iter_mut().enumerate().take(n) {
                *s = if v.len() == 1 { v[0] } else { v[j] };
            }
        }
        Sink::I32(_) => {}
    }
    let col_tiles = panels.div_ceil(tile_panels);
    // Panel-major (a panel of B stays in L1 while every row block of A passes over it; A is
    // re-read from L2 at worst) when A is short (a sentence's tokens); row-major when A is tall and B small (a pointwise conv over many pixels):
    // then each output row is written once, in order, and threads own disjoint row ranges
    // instead of sharing every output cache line.
    let row_major = m >= ROW_MAJOR_MIN_M && k * n <= ROW_MAJOR_MAX_B;
    let tile = |t: usize| {
        let (p, rb) = if row_major {
            ((t % col_tiles) * tile_panels, t / col_tiles)
        } else {
            ((t / row_blocks) * tile_panels, t % row_blocks)
        };
        #[cfg(target_arch = "x86_64")]
        if vnni {
            let i0 = rb * VNNI_MR;
            let t = VnniTile { i0, rows: VNNI_MR.min(m - i0), p0: p, panels: 2.min(panels - p) };
            // SAFETY: the CPU has AVX-512 VNNI (the operand was packed for it); A's rows are
            // readable for k bytes and C holds (i, j) for i < m, j < n (asserted above).
            unsafe { vnni_tile(b, a, lda, &t, sink, &adj, &scale, &row_sums, rs, cs) };
            return;
        }
        let i0 = rb * MR;
        let mr = MR.min(m - i0);
        let j0 = p * NR;
        let cols = NR.min(n - j0);
        let mut rows = [a.as_ptr(); MR];
        for (r, row) in rows.iter_mut().enumerate().take(mr) {
            *row = a[(i0 + r) * lda..].as_ptr();
        }
        let adj_p: &[i32; NR] = adj[j0..j0 + NR].try_into().expect("one panel");
        let scale_p: &[f32; NR] = scale[j0..j0 + NR].try_into().expect("one panel");
        if let (Sink::Requantize { zero_point, qmin, qmax, out, .. }, true) = (sink, cs == 1) {
            let mut e = RequantizeRows {
                adj: *adj_p,
                zps: [0; NR],
                row_sums: [0; MR],
                scale: *scale_p,
                zero_point,
                qmin,
                qmax,
                out: [out.get(); MR],
                rows: mr,
                cols,
            };
            if b.any_zero_point {
                e.zps.copy_from_slice(&b.zero_points[j0..j0 + NR]);
                e.row_sums[..mr].copy_from_slice(&row_sums[i0..i0 + mr]);
            }
            for (r, o) in e.out.iter_mut().enumerate().take(mr) {
                // SAFETY: row i0 + r, columns j0..j0 + cols are inside C (asserted `last`).
                *o = unsafe { o.add((i0 + r) * rs + j0) };
            }
            // SAFETY: as below; each of the `mr` output rows has `cols` writable bytes.
            unsafe { micro(b, p, &rows, Done::Requantize(&e)) };
            return;
        }
        let mut acc = [[0i32; NR]; MR];
        // SAFETY: every row pointer is readable for k bytes (asserted above; missing rows of
        // a short tile repeat row i0 and are discarded); the panel holds `groups * NR * 4`
        // (or `* 2`) packed values for this panel.
        unsafe { micro(b, p, &rows, Done::Spill(&mut acc)) };
        for (r, acc_row) in acc.iter().enumerate().take(mr) {
            let mut adj_r = *adj_p;
            if b.any_zero_point {
                let rsum = row_sums[i0 + r];
                for (v, &z) in adj_r.iter_mut().zip(&b.zero_points[j0..j0 + NR]) {
                    *v = v.wrapping_sub(z.wrapping_mul(rsum));
                }
            }
            let base = (i0 + r) * rs + j0 * cs;
            // SAFETY: (i0 + r, j0 + jj) with jj < cols is inside C (asserted `last`); tiles
            // are disjoint.
            unsafe { finish_row(b.isa, sink, acc_row, &adj_r, scale_p, j0, cols, base, cs) };
        }
    };
    let tiles = row_blocks * col_tiles;
    let threads = rayon::current_num_threads();
    if threads > 1 && tiles > 1 && m * n * k.max(1) >= PARALLEL_MIN_WORK {
        use rayon::prelude::*;
        (0..tiles).into_par_iter().for_each(tile);
    } else {
        (0..tiles).for_each(tile);
    }
    adj.clear();
}

/// Which rows and panels an AVX-512 VNNI tile covers.
#[cfg(target_arch = "x86_64")]
struct VnniTile {
    i0: usize,
    /// 1..=8 rows from `i0`.
    rows: usize,
    /// First panel.
    p0: usize,
    /// 1 or 2 panels from `p0`.
    panels: usize,
}

/// One AVX-512 VNNI tile through the sink: requantized in registers for row-major byte
/// output, else spilled and finished row by row like the other paths.
///
/// # Safety
/// The CPU has AVX-512 VNNI, VL and BW; `a`'s rows `i0..i0 + rows` readable for `b.k` bytes;
/// the tile's outputs inside the sink's buffer; `adj` and `scale` hold every panel's columns.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn vnni_tile(
    b: &PackedI8,
    a: &[u8],
    lda: usize,
    t: &VnniTile,
    sink: Sink<'_>,
    adj: &[i32],
    scale: &[f32],
    row_sums: &[i32],
    rs: usize,
    cs: usize,
) {
    let k = b.k;
    let groups = k.div_ceil(4);
    let j0 = t.p0 * NR;
    let cols = (b.n - j0).min(t.panels * NR);
    let mut rows = [a[t.i0 * lda..].as_ptr(); VNNI_MR];
    for (r, row) in rows.iter_mut().enumerate().take(t.rows) {
        *row = a[(t.i0 + r) * lda..].as_ptr();
    }
    let bp = |q: usize| b.quads[(t.p0 + q.min(t.panels - 1)) * groups * NR * 4..].as_ptr();
    let panel_ptrs = [bp(0), bp(1)];
    let mut sums = [0i32; VNNI_MR];
    if b.any_zero_point {
        sums[..t.rows].copy_from_slice(&row_sums[t.i0..t.i0 + t.rows]);
    }
    // Only an unfused tile spills (zeroing 1 KiB per tile costs as much as a small-k tile).
    let mut spill = None;
    let fused = matches!((sink, cs), (Sink::Requantize { .. }, 1));
    let done = match (sink, fused) {
        (Sink::Requantize { zero_point, qmin, qmax, out, .. }, true) => {
            let mut o = [out.get(); VNNI_MR];
            for (r, o) in o.iter_mut().enumerate().take(t.rows) {
                // SAFETY: row i0 + r, columns j0.. are inside C.
                *o = unsafe { o.add((t.i0 + r) * rs + j0) };
            }
            x86_64::VnniDone::Requantize(x86_64::VnniRequantize {
                adj: adj[j0..].as_ptr(),
                zps: b.zero_points[j0..].as_ptr(),
                any_zero_point: b.any_zero_point,
                row_sums: sums,
                scale: scale[j0..].as_ptr(),
                zero_point,
                qmin,
                qmax,
                out: o,
                cols,
            })
        }
        _ => x86_64::VnniDone::Spill(spill.insert([[0i32; NR]; 2 * VNNI_MR])),
    };
    // SAFETY: forwarded; each panel pointer holds `groups` groups of 64 bytes.
    unsafe { x86_64::tile_vnni_dispatch(&rows, t.rows, k, panel_ptrs, t.panels, done) };
    if let Some(spill) = &spill {
        for r in 0..t.rows {
            for q in 0..t.panels {
                let jq = j0 + q * NR;
                let mut adj_r: [i32; NR] = adj[jq..jq + NR].try_into().expect("one panel");
                if b.any_zero_point {
                    for (v, &z) in adj_r.iter_mut().zip(&b.zero_points[jq..jq + NR]) {
                        *v = v.wrapping_sub(z.wrapping_mul(sums[r]));
                    }
                }
                let scale_p: &[f32; NR] = scale[jq..jq + NR].try_into().expect("one panel");
                let base = (t.i0 + r) * rs + jq * cs;
                let cq = NR.min(b.n - jq);
                // SAFETY: (i0 + r, jq + jj) with jj < cq is inside C.
                unsafe {
                    finish_row(b.isa, sink, &spill[r * 2 + q], &adj_r, scale_p, jq, cq, base, cs)
                };
            }
        }
    }
}

/// What a micro-kernel does with its tile's sums.
enum Done<'a> {
    /// Stores them for the caller's epilogue.
    Spill(&'a mut [[i32; NR]; MR]),
    /// Requantizes whole 16-byte rows in registers and stores them (the common case:
    /// a spill and reload per tile cost as much as the multiply-adds at small `k`).
    Requantize(&'a RequantizeRows),
}

/// One tile's requantize epilogue: row `r < rows` gets
/// `clamp(round((acc + adj - zps·row_sums[r]) · scale) + zero_point)` into `out[r][..cols]`.
struct RequantizeRows {
    adj: [i32; NR],
    zps: [i32; NR],
    row_sums: [i32; MR],
    scale: [f32; NR],
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: [*mut u8; MR],
    rows: usize,
    /// Columns stored per row (16, or fewer in the last panel).
    cols: usize,
}

/// Dispatches the micro-kernel of `b`'s path for panel `p`.
///
/// # Safety
/// Each of `rows` readable for `b.k` bytes.
unsafe fn micro(b: &PackedI8, p: usize, rows: &[*const u8; MR], done: Done<'_>) {
    let k = b.k;
    match b.form {
        Form::Quads => {
            let groups = k.div_ceil(4);
            let bp = b.quads[p * groups * NR * 4..].as_ptr();
            match b.isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX2 (Isa::Avx2 is only detected or requested then).
                Isa::Avx2 => unsafe { x86_64::quads_avx2(rows, k, bp, done) },
                // SAFETY: forwarded.
                _ => unsafe { quads_generic(rows, k, bp, done) },
            }
        }
        Form::Pairs => {
            let groups = k.div_ceil(2);
            let bp = b.pairs[p * groups * NR * 2..].as_ptr();
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Pairs is only packed for Isa::Avx2.
            unsafe {
                x86_64::pairs_avx2(rows, k, bp, done)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("Pairs is an x86 layout: {bp:?}")
        }
    }
}

/// Portable micro-kernel over the `Quads` layout.
///
/// # Safety
/// Each of `rows` readable for `k` bytes; `bp` for `k.div_ceil(4) * NR * 4` values.
unsafe fn quads_generic(rows: &[*const u8; MR], k: usize, bp: *const i8, done: Done<'_>) {
    let mut tile = [[0i32; NR]; MR];
    let (acc, fused) = match done {
        Done::Spill(acc) => (acc, None),
        Done::Requantize(e) => (&mut tile, Some(e)),
    };
    // SAFETY: per the contract.
    let b = unsafe { std::slice::from_raw_parts(bp, k.div_ceil(4) * NR * 4) };
    for (r, &row) in rows.iter().enumerate() {
        // SAFETY: per the contract.
        let a = unsafe { std::slice::from_raw_parts(row, k) };
        for (kk, &av) in a.iter().enumerate() {
            let (g, t) = (kk / 4, kk % 4);
            let grp = &b[g * NR * 4..];
            for (j, v) in acc[r].iter_mut().enumerate() {
                *v = v.wrapping_add(av as i32 * grp[j * 4 + t] as i32);
            }
        }
    }
    if let Some(e) = fused {
        for (r, row) in acc.iter().enumerate().take(e.rows) {
            for (j, &v) in row.iter().enumerate() {
                let v = v.wrapping_add(e.adj[j]).wrapping_sub(e.zps[j].wrapping_mul(e.row_sums[r]));
                if j < e.cols {
                    let q = requantize_one(v, e.scale[j], e.zero_point, e.qmin, e.qmax);
                    // SAFETY: the caller's contract: `cols` writable bytes per row.
                    unsafe { *e.out[r].add(j) = q as u8 };
                }
            }
        }
    }
}

/// Applies the stage to one row of a tile (`acc + adj`, scaled by `scale` for the float
/// stages) and stores `cols` values.
///
/// # Safety
/// `base + jj · cs` for `jj < cols` inside the sink's output.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn finish_row(
    isa: Isa,
    sink: Sink<'_>,
    acc: &[i32; NR],
    adj: &[i32; NR],
    scale: &[f32; NR],
    j0: usize,
    cols: usize,
    base: usize,
    cs: usize,
) {
    match sink {
        Sink::I32(out) => {
            let mut v = [0i32; NR];
            for j in 0..NR {
                v[j] = acc[j].wrapping_add(adj[j]);
            }
            store(&v, cols, out, base, cs);
        }
        Sink::Requantize { zero_point, qmin, qmax, out, .. } => {
            let mut q = [0u8; NR];
            #[cfg(target_arch = "x86_64")]
            if isa >= Isa::Avx2 {
                // SAFETY: the CPU has AVX2 (the operand was packed for a level that has it).
                unsafe { x86_64::requantize16(acc, adj, scale, zero_point, qmin, qmax, &mut q) };
                store(&q, cols, out, base, cs);
                return;
            }
            let _ = isa;
            for jj in 0..cols {
                let v = acc[jj].wrapping_add(adj[jj]);
                q[jj] = requantize_one(v, scale[jj], zero_point, qmin, qmax) as u8;
            }
            store(&q, cols, out, base, cs);
        }
        Sink::Dequantize { bias, out, .. } => {
            let mut y = [0f32; NR];
            for jj in 0..cols {
                let v = (acc[jj].wrapping_add(adj[jj])) as f32 * scale[jj];
                y[jj] = match bias {
                    Some(b) => v + b[j0 + jj],
                    None => v,
                };
            }
            store(&y, cols, out, base, cs);
        }
    }
}

/// Requantizes `acc[i] + bias[i]` with `mult[i]` into `out[i]` (all the same length): the rule
/// of [`requantize_one`], 16 lanes at a time with AVX2 (depthwise convolutions, channels-last).
pub fn requantize_into(
    acc: &[i32],
    bias: &[i32],
    mult: &[f32],
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) {
    let n = acc.len();
    assert!(bias.len() == n && mult.len() == n && out.len() == n, "requantize_into: lengths");
    assert!(byte_range(qmin, qmax), "requantize_into: [{qmin}, {qmax}] is not a u8 or i8 range");
    #[cfg(target_arch = "x86_64")]
    if cpu::best().requantize >= Isa::Avx2 {
        let whole = n / NR * NR;
        for i0 in (0..whole).step_by(NR) {
            let r = i0..i0 + NR;
            let (a, bb, m) = (&acc[r.clone()], &bias[r.clone()], &mult[r.clone()]);
            let q: &mut [u8; NR] = (&mut out[r]).try_into().expect("16 lanes");
            // SAFETY: the CPU has AVX2 (`cpu::best` chose that level).
            unsafe {
                x86_64::requantize16(
                    a.try_into().expect("16 lanes"),
                    bb.try_into().expect("16 lanes"),
                    m.try_into().expect("16 lanes"),
                    zero_point,
                    qmin,
                    qmax,
                    q,
                )
            };
        }
        for i0 in (whole..n).step_by(NR) {
            let len = n - i0;
            let (mut a, mut bb, mut m, mut q) = ([0i32; NR], [0i32; NR], [0f32; NR], [0u8; NR]);
            a[..len].copy_from_slice(&acc[i0..i0 + len]);
            bb[..len].copy_from_slice(&bias[i0..i0 + len]);
            m[..len].copy_from_slice(&mult[i0..i0 + len]);
            // SAFETY: the CPU has AVX2 (`cpu::best` chose that level).
            unsafe { x86_64::requantize16(&a, &bb, &m, zero_point, qmin, qmax, &mut q) };
            out[i0..i0 + len].copy_from_slice(&q[..len]);
        }
        return;
    }
    for i in 0..n {
        out[i] =
            requantize_one(acc[i].wrapping_add(bias[i]), mult[i], zero_point, qmin, qmax) as u8;
    }
}

/// Whether `[qmin, qmax]` lies within the u8 or the i8 range (what the byte packing assumes).
fn byte_range(qmin: i32, qmax: i32) -> bool {
    qmin <= qmax && ((0..=255).contains(&qmin) && qmax <= 255 || qmin >= -128 && qmax <= 127)
}

#[inline]
fn store<T: Copy>(vals: &[T; NR], cols: usize, out: Ptr<T>, base: usize, cs: usize) {
    // SAFETY: callers pass the `finish_row` contract on.
    unsafe {
        if cs == 1 && cols == NR {
            // A fixed-size copy is a few vector moves; a `cols`-long one is a memmove call.
            (out.get().add(base) as *mut [T; NR]).write_unaligned(*vals);
        } else if cs == 1 {
            std::ptr::copy_nonoverlapping(vals.as_ptr(), out.get().add(base), cols);
        } else {
            for (jj, &v) in vals.iter().enumerate().take(cols) {
                *out.get().add(base + jj * cs) = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64 {
    use super::{Done, MR, NR, VNNI_MR};
    use std::arch::x86_64::*;

    /// `clamp(round(v · scale) + zp, lo, hi)` on 8 i32 lanes: [`super::requantize_one`]'s rule
    /// (the float product clamped to ±2^30 before rounding, as it does). A macro, like
    /// `finish!`, so the intrinsics inline into each `target_feature` function.
    macro_rules! requantize8 {
        ($v:expr, $scale:expr, $zp:expr, $lo:expr, $hi:expr) => {{
            let x = _mm256_mul_ps(_mm256_cvtepi32_ps($v), $scale);
            let x = _mm256_min_ps(
                _mm256_max_ps(x, _mm256_set1_ps(-1_073_741_824.0)),
                _mm256_set1_ps(1_073_741_824.0),
            );
            _mm256_min_epi32(
                _mm256_max_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(x), $zp), $lo),
                $hi,
            )
        }};
    }
    pub(crate) use requantize8;

    /// Two requantized halves (clamped within [-128, 255]) as 16 bytes: the i16 packs are
    /// exact, and the bytes come out as `v as u8` (unsigned saturation for u8 codes, signed
    /// for i8 codes).
    macro_rules! pack16 {
        ($q0:expr, $q1:expr, $qmin:expr) => {{
            let w = _mm256_permute4x64_epi64(_mm256_packs_epi32($q0, $q1), 0b11_01_10_00);
            let (l, h) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
            if $qmin >= 0 {
                _mm_packus_epi16(l, h)
            } else {
                _mm_packs_epi16(l, h)
            }
        }};
    }
    pub(crate) use pack16;

    /// The end of every micro-kernel (a macro: it must expand inside each `target_feature`
    /// function for its intrinsics to inline).
    macro_rules! finish {
        ($c:expr, $done:expr) => {
            match $done {
                // SAFETY: acc is a plain array.
                Done::Spill(acc) => unsafe { spill(&$c, acc) },
                Done::Requantize(e) => {
                    let zp = _mm256_set1_epi32(e.zero_point);
                    let (lo, hi) = (_mm256_set1_epi32(e.qmin), _mm256_set1_epi32(e.qmax));
                    // SAFETY: 16-element arrays.
                    let (adj, zps, scale) = unsafe {
                        (
                            [
                                _mm256_loadu_si256(e.adj.as_ptr() as *const __m256i),
                                _mm256_loadu_si256(e.adj.as_ptr().add(8) as *const __m256i),
                            ],
                            [
                                _mm256_loadu_si256(e.zps.as_ptr() as *const __m256i),
                                _mm256_loadu_si256(e.zps.as_ptr().add(8) as *const __m256i),
                            ],
                            [
                                _mm256_loadu_ps(e.scale.as_ptr()),
                                _mm256_loadu_ps(e.scale.as_ptr().add(8)),
                            ],
                        )
                    };
                    for r in 0..e.rows {
                        let rs = _mm256_set1_epi32(e.row_sums[r]);
                        let mut q = [_mm256_setzero_si256(); 2];
                        for h in 0..2 {
                            let v = _mm256_add_epi32($c[r][h], adj[h]);
                            let v = _mm256_sub_epi32(v, _mm256_mullo_epi32(zps[h], rs));
                            q[h] = requantize8!(v, scale[h], zp, lo, hi);
                        }
                        let b = pack16!(q[0], q[1], e.qmin);
                        if e.cols == NR {
                            // SAFETY: the caller's contract: `cols` writable bytes per row.
                            unsafe { _mm_storeu_si128(e.out[r] as *mut __m128i, b) };
                        } else {
                            let mut t = [0u8; NR];
                            // SAFETY: 16 bytes; then `cols` writable bytes per row.
                            unsafe {
                                _mm_storeu_si128(t.as_mut_ptr() as *mut __m128i, b);
                                for (j, &v) in t.iter().enumerate().take(e.cols) {
                                    *e.out[r].add(j) = v;
                                }
                            }
                        }
                    }
                }
            }
        };
    }

    /// Reads 4 bytes of row `a` at `4g`, zero-padding past `k`.
    ///
    /// # Safety
    /// `a` readable for `k` bytes.
    #[inline(always)]
    unsafe fn quad(a: *const u8, g: usize, k: usize) -> i32 {
        if 4 * g + 4 <= k {
            // SAFETY: inside the row.
            unsafe { (a.add(4 * g) as *const i32).read_unaligned() }
        } else {
            let mut b = [0u8; 4];
            for (t, v) in b.iter_mut().enumerate().take(k - 4 * g) {
                // SAFETY: 4g + t < k.
                *v = unsafe { *a.add(4 * g + t) };
            }
            i32::from_le_bytes(b)
        }
    }

    /// Reads 2 bytes of row `a` at `2g` as two zero-extended i16 lanes, zero-padding past `k`.
    ///
    /// # Safety
    /// `a` readable for `k` bytes.
    #[inline(always)]
    unsafe fn pair(a: *const u8, g: usize, k: usize) -> i32 {
        // SAFETY: 2g < k.
        let lo = i32::from(unsafe { *a.add(2 * g) });
        // SAFETY: checked.
        let hi = if 2 * g + 1 < k { i32::from(unsafe { *a.add(2 * g + 1) }) } else { 0 };
        lo | (hi << 16)
    }

    /// Stores the accumulators.
    #[inline(always)]
    unsafe fn spill(c: &[[__m256i; 2]; MR], acc: &mut [[i32; NR]; MR]) {
        for r in 0..MR {
            // SAFETY: each acc row holds 16 i32.
            unsafe {
                _mm256_storeu_si256(acc[r].as_mut_ptr() as *mut __m256i, c[r][0]);
                _mm256_storeu_si256(acc[r].as_mut_ptr().add(8) as *mut __m256i, c[r][1]);
            }
        }
    }

    /// The micro-kernel's loop: for each of `$groups` packed groups, the panel's two vectors
    /// (`$width` elements of `$bp` per group), and for each row the group of its values
    /// (`$read`) broadcast as `a`, then `c = $madd` into both halves of the row's sums.
    macro_rules! panel_loop {
        ($rows:expr, $k:expr, $bp:expr, $groups:expr, $width:expr, $read:ident,
         |$c:ident, $a:ident, $b:ident| $madd:expr) => {{
            let mut sums = [[_mm256_setzero_si256(); 2]; MR];
            for g in 0..$groups {
                // SAFETY: inside the panel.
                let halves = unsafe {
                    [
                        _mm256_loadu_si256($bp.add(g * $width) as *const __m256i),
                        _mm256_loadu_si256($bp.add(g * $width + $width / 2) as *const __m256i),
                    ]
                };
                for r in 0..MR {
                    // SAFETY: rows readable for k bytes.
                    let $a = _mm256_set1_epi32(unsafe { $read($rows[r], g, $k) });
                    for (h, &$b) in halves.iter().enumerate() {
                        let $c = sums[r][h];
                        sums[r][h] = $madd;
                    }
                }
            }
            sums
        }};
    }

    /// `vpmaddubsw` + `vpmaddwd(1)`: only for weights whose adjacent pairs cannot saturate.
    ///
    /// # Safety
    /// AVX2; rows readable for `k` bytes; `bp` for `k.div_ceil(4) · 64` bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quads_avx2(
        rows: &[*const u8; MR],
        k: usize,
        bp: *const i8,
        done: Done<'_>,
    ) {
        let ones = _mm256_set1_epi16(1);
        let c = panel_loop!(rows, k, bp, k.div_ceil(4), 64, quad, |c, a, b| _mm256_add_epi32(
            c,
            _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones)
        ));
        finish!(c, done);
    }

    /// A VNNI tile's requantize epilogue: row `r < rows` gets
    /// `clamp(round((acc + adj - zps·row_sums[r]) · scale) + zero_point)` into
    /// `out[r][..cols]` (`adj`, `zps`, `scale` point at the tile's first column).
    pub(super) struct VnniRequantize {
        pub adj: *const i32,
        pub zps: *const i32,
        pub any_zero_point: bool,
        pub row_sums: [i32; VNNI_MR],
        pub scale: *const f32,
        pub zero_point: i32,
        pub qmin: i32,
        pub qmax: i32,
        pub out: [*mut u8; VNNI_MR],
        pub cols: usize,
    }

    /// What a VNNI tile does with its sums.
    pub(super) enum VnniDone<'a> {
        /// Stores row `r`, panel `q` at `[2r + q]`.
        Spill(&'a mut [[i32; NR]; 2 * VNNI_MR]),
        Requantize(VnniRequantize),
    }

    /// [`tile_vnni`] for `mr` rows (1..=8) and `panels` panels (1 or 2): the smallest
    /// instance that covers them.
    ///
    /// # Safety
    /// As [`tile_vnni`].
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile_vnni_dispatch(
        rows: &[*const u8; VNNI_MR],
        mr: usize,
        k: usize,
        bp: [*const i8; 2],
        panels: usize,
        done: VnniDone<'_>,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match (mr, panels) {
                (5.., 2) => tile_vnni::<8, 2>(rows, mr, k, bp, done),
                (3..=4, 2) => tile_vnni::<4, 2>(rows, mr, k, bp, done),
                (2, 2) => tile_vnni::<2, 2>(rows, mr, k, bp, done),
                (_, 2) => tile_vnni::<1, 2>(rows, mr, k, bp, done),
                (5.., _) => tile_vnni::<8, 1>(rows, mr, k, bp, done),
                (3..=4, _) => tile_vnni::<4, 1>(rows, mr, k, bp, done),
                (2, _) => tile_vnni::<2, 1>(rows, mr, k, bp, done),
                _ => tile_vnni::<1, 1>(rows, mr, k, bp, done),
            }
        }
    }

    /// `R` rows × `P` panels of 16 columns on zmm registers: per group of 4 k, one 64-byte
    /// load per panel, one broadcast per row, `R · P` `vpdpbusd` (16 lanes × 4 products).
    /// Rows `mr..R` are computed (from repeated row pointers) but not stored.
    ///
    /// # Safety
    /// AVX-512 F/VL/VNNI; the first `R` rows readable for `k` bytes; `bp[q]` for `q < P`
    /// holds `k.div_ceil(4)` groups of 64 bytes; the epilogue's pointers as
    /// [`VnniRequantize`] says, `cols ≤ 16 · P`.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn tile_vnni<const R: usize, const P: usize>(
        rows: &[*const u8; VNNI_MR],
        mr: usize,
        k: usize,
        bp: [*const i8; 2],
        done: VnniDone<'_>,
    ) {
        let mut acc = [[_mm512_setzero_si512(); P]; R];
        let full = k / 4;
        for g in 0..full {
            // SAFETY: inside the panels and the rows.
            unsafe {
                let b: [__m512i; P] =
                    std::array::from_fn(|q| _mm512_loadu_si512(bp[q].add(g * 64) as *const _));
                for r in 0..R {
                    let a = _mm512_set1_epi32((rows[r].add(4 * g) as *const i32).read_unaligned());
                    for q in 0..P {
                        acc[r][q] = _mm512_dpbusd_epi32(acc[r][q], a, b[q]);
                    }
                }
            }
        }
        if full * 4 < k {
            // SAFETY: as above; `quad` zero-pads past k.
            unsafe {
                let b: [__m512i; P] =
                    std::array::from_fn(|q| _mm512_loadu_si512(bp[q].add(full * 64) as *const _));
                for r in 0..R {
                    let a = _mm512_set1_epi32(quad(rows[r], full, k));
                    for q in 0..P {
                        acc[r][q] = _mm512_dpbusd_epi32(acc[r][q], a, b[q]);
                    }
                }
            }
        }
        match done {
            VnniDone::Spill(out) => {
                for r in 0..R.min(mr) {
                    for q in 0..P {
                        // SAFETY: 16 i32 per spill row.
                        unsafe {
                            _mm512_storeu_si512(out[2 * r + q].as_mut_ptr() as *mut _, acc[r][q])
                        };
                    }
                }
            }
            VnniDone::Requantize(e) => {
                let zp = _mm512_set1_epi32(e.zero_point);
                // requantize_one's rule is clamp(round(x) + zp, qmin, qmax); the bounds are
                // integers and rounding (half to even, the default MXCSR mode) is monotone, so
                // clamping x to [qmin - zp, qmax - zp] first gives the same code, keeps the
                // conversion in range, and leaves a value that one truncating narrowing
                // stores exactly, u8 or i8.
                let lo = _mm512_set1_ps((e.qmin - e.zero_point) as f32);
                let hi = _mm512_set1_ps((e.qmax - e.zero_point) as f32);
                // SAFETY: the epilogue's arrays hold P panels of columns.
                let (adj, zps, scale): ([__m512i; P], [__m512i; P], [__m512; P]) = unsafe {
                    (
                        std::array::from_fn(|q| _mm512_loadu_si512(e.adj.add(16 * q) as *const _)),
                        std::array::from_fn(|q| _mm512_loadu_si512(e.zps.add(16 * q) as *const _)),
                        std::array::from_fn(|q| _mm512_loadu_ps(e.scale.add(16 * q))),
                    )
                };
                // Columns past `cols` (the last panel of an odd width) are masked off.
                let mask: [__mmask16; P] = std::array::from_fn(|q| {
                    let c = e.cols.saturating_sub(16 * q).min(16);
                    ((1u32 << c) - 1) as __mmask16
                });
                for (r, acc_r) in acc.iter().enumerate().take(mr) {
                    for q in 0..P {
                        let mut v = _mm512_add_epi32(acc_r[q], adj[q]);
                        if e.any_zero_point {
                            let rs = _mm512_set1_epi32(e.row_sums[r]);
                            v = _mm512_sub_epi32(v, _mm512_mullo_epi32(zps[q], rs));
                        }
                        let x = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale[q]);
                        let x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
                        let v = _mm512_add_epi32(_mm512_cvtps_epi32(x), zp);
                        // SAFETY: the mask covers the writable bytes at column 16q of row r.
                        unsafe {
                            // wrapping: past a short last panel the pointer may leave the
                            // row (and its mask is empty).
                            let dst = e.out[r].wrapping_add(16 * q) as *mut i8;
                            _mm512_mask_cvtepi32_storeu_epi8(dst, mask[q], v)
                        };
                    }
                }
            }
        }
    }

    /// `vpmaddwd` on i16-widened values: exact for any i8 weights.
    ///
    /// # Safety
    /// AVX2; rows readable for `k` bytes; `bp` for `k.div_ceil(2) · 32` i16.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pairs_avx2(
        rows: &[*const u8; MR],
        k: usize,
        bp: *const i16,
        done: Done<'_>,
    ) {
        let c = panel_loop!(rows, k, bp, k.div_ceil(2), 32, pair, |c, a, b| _mm256_add_epi32(
            c,
            _mm256_madd_epi16(a, b)
        ));
        finish!(c, done);
    }

    /// `$step` (`|v, b| …`, giving `v`'s next value) on 12 independent register chains,
    /// `$iters` times, then the chains' sum: the body of the peak loops (a macro, so the
    /// intrinsics inline into each `target_feature` function).
    macro_rules! register_chains {
        ($iters:expr, |$v:ident, $b:ident| $step:expr) => {{
            let $b = _mm256_set1_epi32(0x0101_0101);
            let mut c: [__m256i; 12] = std::array::from_fn(|i| _mm256_set1_epi32(i as i32 + 1));
            for _ in 0..$iters {
                // Each chain feeds on its own accumulator, so nothing can be hoisted or shared;
                // 12 chains keep the multiply pipes busy despite each chain's latency.
                for $v in c.iter_mut() {
                    *$v = $step;
                }
            }
            let mut out = [0i32; 8];
            let mut t = c[0];
            for v in &c[1..] {
                t = _mm256_add_epi32(t, *v);
            }
            // SAFETY: 8 lanes into an 8-element array.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, t) };
            out[0]
        }};
    }

    /// The register-only loop of [`super::peak_probe`] on AVX2: [`quads_avx2`]'s
    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd`.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn peak_loop_avx2(iters: u64) -> i32 {
        let ones = _mm256_set1_epi16(1);
        register_chains!(iters, |v, b| _mm256_add_epi32(
            *v,
            _mm256_madd_epi16(_mm256_maddubs_epi16(*v, b), ones)
        ))
    }

    /// The register-only loop of [`super::peak_probe`] on AVX-512 VNNI: [`tile_vnni`]'s
    /// `vpdpbusd` on zmm registers.
    ///
    /// # Safety
    /// AVX-512 VNNI.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn peak_loop_vnni(iters: u64) -> i32 {
        let b = _mm512_set1_epi32(0x0101_0101);
        let mut c: [__m512i; 12] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32 + 1));
        for _ in 0..iters {
            for v in c.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, *v, b);
            }
        }
        c.iter().fold(0, |s, &v| s ^ _mm512_reduce_add_epi32(v))
    }

    /// [`crate::quantize::requantize_one`] on 16 sums `acc + bias` at once, bit for bit: the product is
    /// clamped to ±2^30 first (beyond it every result saturates anyway, and `vcvtps2dq` would
    /// turn out-of-range values into i32::MIN), rounded half to even by `vcvtps2dq`.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn requantize16(
        acc: &[i32; NR],
        bias: &[i32; NR],
        mult: &[f32; NR],
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        out: &mut [u8; NR],
    ) {
        let zp = _mm256_set1_epi32(zero_point);
        let lo = _mm256_set1_epi32(qmin);
        let hi = _mm256_set1_epi32(qmax);
        let mut q = [_mm256_setzero_si256(); 2];
        for (h, qh) in q.iter_mut().enumerate() {
            // SAFETY: 8 lanes inside 16-element arrays.
            let (v, m) = unsafe {
                (
                    _mm256_add_epi32(
                        _mm256_loadu_si256(acc.as_ptr().add(8 * h) as *const __m256i),
                        _mm256_loadu_si256(bias.as_ptr().add(8 * h) as *const __m256i),
                    ),
                    _mm256_loadu_ps(mult.as_ptr().add(8 * h)),
                )
            };
            *qh = requantize8!(v, m, zp, lo, hi);
        }
        let b = pack16!(q[0], q[1], qmin);
        // SAFETY: 16 bytes.
        unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, b) };
    }
}

/// A timing reference for the int8 GEMM: the multiply-add instructions of one path's inner
/// loop, run on registers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peak {
    /// The path whose instructions ran.
    pub isa: Isa,
    /// Those instructions.
    pub instructions: &'static str,
    /// The u8 × i8 multiply-adds performed.
    pub macs: u64,
}

/// Runs the multiply-add instructions of the int8 path this CPU runs ([`cpu::best`]'s
/// `qgemm`: `vpdpbusd` with AVX-512 VNNI, `vpmaddubsw` + `vpmaddwd` + `vpaddd` with AVX2) on 12
/// independent register chains, no memory, `iters` times. Timed by the caller, it gives this
/// core's peak for that path at the clock it runs at: the reference the GEMM's efficiency is
/// quoted against. `None` on the generic path (no fixed instruction mix).
pub fn peak_probe(iters: u64) -> Option<Peak> {
    peak_probe_on(cpu::best().qgemm, iters)
}

/// [`peak_probe`] for the path of level `isa`.
///
/// # Panics
/// When the CPU does not run `isa`.
pub fn peak_probe_on(isa: Isa, iters: u64) -> Option<Peak> {
    assert!(isa <= Isa::detect(), "peak_probe: this CPU does not run {isa:?}");
    // 12 chains of one instruction on 8 (ymm, AVX2) or 16 (zmm, VNNI) lanes of 4 products.
    let macs = iters * 12 * if isa == Isa::Avx512Vnni { 64 } else { 32 };
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU runs `isa` (asserted).
        let (sink, instructions) = unsafe {
            match isa {
                Isa::Generic => return None,
                Isa::Avx2 => (x86_64::peak_loop_avx2(iters), "vpmaddubsw + vpmaddwd + vpaddd"),
                Isa::Avx512Vnni => (x86_64::peak_loop_vnni(iters), "vpdpbusd (zmm)"),
            }
        };
        std::hint::black_box(sink);
        Some(Peak { isa, instructions, macs })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = macs;
        None
    }
}

/// The textbook reference: `A` (`m × k` u8), `B` (`k × n` i8, row-major), exact i32 sums of
/// `(a - a_zp)(b - b_zp[j])`.
pub fn qgemm_ref(
    m: usize,
    n: usize,
    k: usize,
    a: &[u8],
    a_zero_point: i32,
    b: &[i8],
    b_zero_points: &[i32],
) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let zb = if b_zero_points.len() == 1 { b_zero_points[0] } else { b_zero_points[j] };
            let mut s = 0i32;
            for kk in 0..k {
                s += (a[i * k + kk] as i32 - a_zero_point) * (b[kk * n + j] as i32 - zb);
            }
            c[i * n + j] = s;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[allow(clippy::too_many_arguments)]
    fn run(
        isa: Isa,
        m: usize,
        n: usize,
        k: usize,
        a: &[u8],
        za: i32,
        b: &[i8],
        zb: &[i32],
    ) -> Vec<i32> {
        let p = PackedI8::pack_for(isa, Trans::No, k, n, b, n, zb);
        let mut c = vec![0i32; m * n];
        qgemm(
            m,
            a,
            k,
            za,
            &p,
            Output { stage: Stage::I32 { out: &mut c }, row_stride: n, col_stride: 1 },
        );
        c
    }

    fn shapes() -> impl Strategy<Value = (usize, usize, usize, bool, bool)> {
        (1usize..23, 1usize..40, 1usize..70, any::<bool>(), any::<bool>())
    }

    /// Tall A with a small B: the row-major tile order (a pointwise conv over many pixels).
    fn tall_shapes() -> impl Strategy<Value = (usize, usize, usize, bool, bool)> {
        (
            ROW_MAJOR_MIN_M..ROW_MAJOR_MIN_M + 40,
            1usize..50,
            1usize..30,
            any::<bool>(),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Every path (and both AVX2 forms: 7-bit and full-range weights) equals the
        /// reference exactly, for odd shapes, zero points and per-column zero points.
        #[test]
        fn every_path_matches_the_reference(
            (m, n, k, full, per_col) in shapes(),
            seed in any::<u64>(),
            za in 0i32..256,
        ) {
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            let a: Vec<u8> = (0..m * k).map(|_| next() as u8).collect();
            let b: Vec<i8> = (0..k * n)
                .map(|_| if full { next() as i8 } else { ((next() % 129) as i32 - 64) as i8 })
                .collect();
            let zb: Vec<i32> = if per_col {
                (0..n).map(|_| (next() % 21) as i32 - 10).collect()
            } else {
                vec![0]
            };
            let want = qgemm_ref(m, n, k, &a, za, &b, &zb);
            for isa in cpu::levels(|k| k.qgemm) {
                prop_assert_eq!(run(isa, m, n, k, &a, za, &b, &zb), want.clone(), "{:?}", isa);
            }
        }

        /// The fused requantize / dequantize stages equal the scalar rule on the exact sums,
        /// through row-major output (whole tiles requantize inside the micro-kernel) and
        /// transposed (NCHW-style) output, with and without per-column zero points.
        #[test]
        fn fused_stages_match_the_scalar_rule(
            (m, n, k, full, per_col) in shapes(),
            seed in any::<u64>(),
            za in 0i32..256,
            zy in -128i32..256,
            per_col_mult in any::<bool>(),
            row_major in any::<bool>(),
            narrow in any::<bool>(),
        ) {
            fused_stages_case(m, n, k, full, per_col, seed, za, zy, per_col_mult, row_major, narrow)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// The same on tall products, on 1 and 2 threads (row blocks shared out).
        #[test]
        fn tall_products_match_the_scalar_rule_on_one_and_two_threads(
            (m, n, k, full, per_col) in tall_shapes(),
            seed in any::<u64>(),
            za in 0i32..256,
            zy in -128i32..256,
            narrow in any::<bool>(),
            threads in 1usize..3,
        ) {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            pool.install(|| fused_stages_case(m, n, k, full, per_col, seed, za, zy, true, true, narrow))?;
        }
    }

    /// One case of the fused-stage properties; `narrow`: an output range inside the type's
    /// (a requantizing kernel that absorbed a following Relu/Clip).
    #[allow(clippy::too_many_arguments)]
    fn fused_stages_case(
        m: usize,
        n: usize,
        k: usize,
        full: bool,
        per_col: bool,
        seed: u64,
        za: i32,
        zy: i32,
        per_col_mult: bool,
        row_major: bool,
        narrow: bool,
    ) -> Result<(), TestCaseError> {
        {
            let mut s = seed | 1;
            let mut next = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let a: Vec<u8> = (0..m * k).map(|_| next() as u8).collect();
            let b: Vec<i8> = (0..k * n)
                .map(|_| if full { next() as i8 } else { ((next() % 129) as i32 - 64) as i8 })
                .collect();
            let zb: Vec<i32> =
                if per_col { (0..n).map(|_| (next() % 21) as i32 - 10).collect() } else { vec![0] };
            let bias: Vec<i32> = (0..n).map(|_| (next() % 20001) as i32 - 10000).collect();
            let mult: Vec<f32> = (0..if per_col_mult { n } else { 1 })
                .map(|_| 1e-5 + (next() % 1000) as f32 * 1e-5)
                .collect();
            let (qmin, qmax, zy) = if zy < 0 { (-128, 127, zy + 64) } else { (0, 255, zy) };
            let (qmin, qmax) = if narrow {
                let lo = qmin + (next() % 100) as i32;
                (lo, (qmax - (next() % 100) as i32).max(lo))
            } else {
                (qmin, qmax)
            };
            let exact = qgemm_ref(m, n, k, &a, za, &b, &zb);
            let (rs, cs) = if row_major { (n, 1) } else { (1, m) };
            for isa in cpu::levels(|k| k.qgemm) {
                let p = PackedI8::pack_for(isa, Trans::No, k, n, &b, n, &zb);
                let mut q = vec![0u8; m * n];
                qgemm(
                    m,
                    &a,
                    k,
                    za,
                    &p,
                    Output {
                        stage: Stage::Requantize {
                            bias: Some(&bias),
                            multiplier: &mult,
                            zero_point: zy,
                            qmin,
                            qmax,
                            out: &mut q,
                        },
                        row_stride: rs,
                        col_stride: cs,
                    },
                );
                let mut f = vec![0f32; m * n];
                qgemm(
                    m,
                    &a,
                    k,
                    za,
                    &p,
                    Output {
                        stage: Stage::Dequantize { scale: &mult, bias: None, out: &mut f },
                        row_stride: n,
                        col_stride: 1,
                    },
                );
                for i in 0..m {
                    for j in 0..n {
                        let mj = if mult.len() == 1 { mult[0] } else { mult[j] };
                        let want =
                            requantize_one(exact[i * n + j] + bias[j], mj, zy, qmin, qmax) as u8;
                        prop_assert_eq!(q[i * rs + j * cs], want, "{:?} ({}, {})", isa, i, j);
                        prop_assert_eq!(f[i * n + j], exact[i * n + j] as f32 * mj);
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn seven_bit_weights_take_the_byte_path_and_full_range_the_exact_one() {
        let seven: Vec<i8> = (0..64).map(|i| (i % 129 - 64) as i8).collect();
        let full: Vec<i8> = (0..64).map(|i| if i % 2 == 0 { -128 } else { 127 }).collect();
        let p7 = PackedI8::pack_for(Isa::Avx2, Trans::No, 8, 8, &seven, 8, &[0]);
        let p8 = PackedI8::pack_for(Isa::Avx2, Trans::No, 8, 8, &full, 8, &[0]);
        assert_eq!(p7.form(), Form::Quads);
        assert_eq!(p8.form(), Form::Pairs);
        assert_eq!(
            PackedI8::pack_for(Isa::Avx512Vnni, Trans::No, 8, 8, &full, 8, &[0]).form(),
            Form::Quads
        );
    }

    #[test]
    fn requantize_saturates_huge_products_like_the_scalar_rule() {
        for isa in cpu::levels(|k| k.qgemm) {
            let b = vec![127i8; 16 * 4];
            let p = PackedI8::pack_for(isa, Trans::No, 4, 16, &b, 16, &[0]);
            let a = vec![255u8; 4];
            let mut q = vec![0u8; 16];
            qgemm(
                1,
                &a,
                4,
                0,
                &p,
                Output {
                    stage: Stage::Requantize {
                        bias: None,
                        multiplier: &[1e9],
                        zero_point: 3,
                        qmin: 0,
                        qmax: 255,
                        out: &mut q,
                    },
                    row_stride: 16,
                    col_stride: 1,
                },
            );
            assert_eq!(q, vec![255u8; 16], "{isa:?}");
            let mut q = vec![0u8; 16];
            qgemm(
                1,
                &a,
                4,
                0,
                &p,
                Output {
                    stage: Stage::Requantize {
                        bias: None,
                        multiplier: &[-1e9],
                        zero_point: 3,
                        qmin: 0,
                        qmax: 255,
                        out: &mut q,
                    },
                    row_stride: 16,
                    col_stride: 1,
                },
            );
            assert_eq!(q, vec![0u8; 16], "{isa:?}");
        }
    }

    #[test]
    fn transposed_weights_pack_like_their_transpose() {
        let (k, n) = (7, 19);
        let b: Vec<i8> = (0..k * n).map(|i| (i as i32 * 37 % 255 - 127) as i8).collect();
        let bt: Vec<i8> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let a: Vec<u8> = (0..3 * k).map(|i| (i * 11) as u8).collect();
        let want = qgemm_ref(3, n, k, &a, 5, &b, &[0]);
        for isa in cpu::levels(|k| k.qgemm) {
            let p = PackedI8::pack_for(isa, Trans::Yes, k, n, &bt, k, &[0]);
            let mut c = vec![0i32; 3 * n];
            qgemm(
                3,
                &a,
                k,
                5,
                &p,
                Output { stage: Stage::I32 { out: &mut c }, row_stride: n, col_stride: 1 },
            );
            assert_eq!(c, want, "{isa:?}");
        }
    }

    #[test]
    fn the_peak_probe_times_the_path_products_run_on() {
        let packed = PackedI8::pack(Trans::No, 4, 4, &[1; 16], 4, &[0]);
        match peak_probe(10) {
            Some(p) => {
                assert_eq!(p.isa, packed.isa());
                let lanes = if p.isa == Isa::Avx512Vnni { 16 } else { 8 };
                assert_eq!(p.macs, 10 * 12 * lanes * 4);
            }
            None => assert_eq!(packed.isa(), Isa::Generic),
        }
        for isa in Isa::available() {
            let peak = peak_probe_on(isa, 10);
            assert_eq!(peak.map(|p| p.isa), (isa != Isa::Generic).then_some(isa));
        }
    }
}
