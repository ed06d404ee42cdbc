//! Weight-only GEMM: `C = A · dequant(B) [+ bias]` with `A` f32 and `B` 8-bit or 4-bit codes,
//! dequantized inside the product, never as a whole f32 matrix.
//!
//! `dequant(B)[k, j] = (B[k, j] - zp[blk, j]) · scale[blk, j]`, `blk = k / block_size`: blocks
//! run along the reduction axis K (per column when `block_size` is 0), as ONNX's opset-21
//! `DequantizeLinear` with `block_size` (and ONNX Runtime's `MatMulNBits`) define it.
//!
//! [`PackedWeights`] lays the codes out once (model load) in panels of [`NR`] columns, each
//! panel K rows deep, as unsigned codes (signed codes are shifted by 8 or 128 and the shift
//! folded into the zero point): 16 bytes per row for 8 bits, 8 bytes for 4 bits with column
//! `j` in the low nibble and column `j + 8` in the high nibble of byte `j`, so one zero-extend
//! plus a mask and a shift gives both halves of the panel row. Per block and column it keeps
//! `scale` and `offset = -zp · scale`, so a weight is one `fma(code, scale, offset)`.
//!
//! Two ways through, picked by the row count:
//! - **few rows** (≤ [`DIRECT_MAX_M`], sentence-length or decode products, memory-bound):
//!   AVX2+FMA micro-kernels dequantize each panel row in registers and multiply it into up to
//!   4 rows of accumulators; the f32 weight never exists, and 4-bit weights read 8× fewer
//!   bytes than f32.
//! - **more rows**: each panel is dequantized [`KC`] rows at a time into a small f32 buffer
//!   that stays in L1/L2, and the f32 GEMM's own micro-kernel ([`crate::gemm`]) runs over it
//!   for all rows, so dequantization costs once per weight per call, not once per row.
//!
//! The generic path ([`Isa::Generic`]) uses the same layout with plain Rust dequantization.
//! [`wgemm_ref`] (dequantize with ONNX's formula, f64 sums) is what every path is tested
//! against; results differ from it by f32 rounding only (`fma` order).

use crate::cpu::{self, Isa, Kernels};
use crate::gemm::{self, Ptr, Trans};

/// Columns per packed panel (the f32 GEMM's panel width: two AVX registers).
pub const NR: usize = gemm::NR;
/// Rows up to which the in-register path runs (one 4-row tile; the crossover with the
/// buffered path is not measured yet).
pub const DIRECT_MAX_M: usize = 4;
/// Panel rows dequantized per buffer (16 KiB of f32).
const KC: usize = 256;
/// Work (m·n·k) below which threads cost more than they save.
const PARALLEL_MIN_WORK: usize = 64 * 64 * 64;

/// The codes of `B`, one value per element (ONNX int4 tensors decode to one value per byte).
#[derive(Clone, Copy, Debug)]
pub enum Codes<'a> {
    I8(&'a [i8]),
    U8(&'a [u8]),
    I4(&'a [i8]),
    U4(&'a [u8]),
}

impl Codes<'_> {
    fn len(&self) -> usize {
        match self {
            Codes::I8(v) | Codes::I4(v) => v.len(),
            Codes::U8(v) | Codes::U4(v) => v.len(),
        }
    }

    fn four_bit(&self) -> bool {
        matches!(self, Codes::I4(_) | Codes::U4(_))
    }

    /// What is added to a code to make it unsigned.
    fn shift(&self) -> i32 {
        match self {
            Codes::I8(_) => 128,
            Codes::I4(_) => 8,
            _ => 0,
        }
    }

    fn value(&self, i: usize) -> i32 {
        match self {
            Codes::I8(v) | Codes::I4(v) => v[i] as i32,
            Codes::U8(v) | Codes::U4(v) => v[i] as i32,
        }
    }
}

/// A weight-only quantized `B` (`k × n`) as stored in a model.
#[derive(Clone, Copy, Debug)]
pub struct WeightSpec<'a> {
    pub k: usize,
    pub n: usize,
    /// `No`: codes are `k × n` row-major (MatMul); `Yes`: `n × k` (Gemm with `transB`).
    pub trans: Trans,
    pub codes: Codes<'a>,
    /// Rows of K sharing a scale; 0 means one scale per column over all of K.
    pub block_size: usize,
    /// `blocks × n` row-major (`blocks = ceil(k / block_size)`, 1 when `block_size` is 0),
    /// or a single value for the whole tensor.
    pub scales: &'a [f32],
    /// Zero points in the layout of `scales` (absent: 0). Float, so `MatMulNBits`' float zero
    /// points fit too.
    pub zero_points: Option<&'a [f32]>,
}

impl WeightSpec<'_> {
    fn blocks(&self) -> usize {
        match self.block_size {
            0 => 1,
            b => self.k.div_ceil(b),
        }
    }

    fn block_of(&self, kk: usize) -> usize {
        kk.checked_div(self.block_size).unwrap_or(0)
    }

    fn code(&self, kk: usize, j: usize) -> i32 {
        match self.trans {
            Trans::No => self.codes.value(kk * self.n + j),
            Trans::Yes => self.codes.value(j * self.k + kk),
        }
    }

    /// Index into `scales` / `zero_points` of block `blk`, column `j`.
    fn param(&self, blk: usize, j: usize) -> usize {
        if self.scales.len() == 1 {
            0
        } else {
            blk * self.n + j
        }
    }

    /// Checks every length against the dims.
    pub fn validate(&self) -> Result<(), String> {
        if self.codes.len() != self.k * self.n {
            return Err(format!("{} codes for a {}x{} weight", self.codes.len(), self.k, self.n));
        }
        let want = self.blocks() * self.n;
        if self.scales.len() != want && self.scales.len() != 1 {
            return Err(format!("{} scales, expected {want} (or 1)", self.scales.len()));
        }
        if let Some(z) = self.zero_points {
            if z.len() != self.scales.len() {
                return Err(format!("{} zero points for {} scales", z.len(), self.scales.len()));
            }
        }
        Ok(())
    }

    /// The f32 weight as ONNX's `DequantizeLinear` computes it (`(q - zp) · scale`), `k × n`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.k * self.n];
        for kk in 0..self.k {
            let blk = self.block_of(kk);
            for j in 0..self.n {
                let p = self.param(blk, j);
                let zp = self.zero_points.map_or(0.0, |z| z[p]);
                w[kk * self.n + j] = (self.code(kk, j) as f32 - zp) * self.scales[p];
            }
        }
        w
    }
}

/// `B` packed once for [`wgemm`] (see the module docs for the layout).
#[derive(Clone, Debug)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    four_bit: bool,
    /// K rows per scale block (`k` for per-column scales; at least 1).
    block: usize,
    path: Isa,
    codes: Vec<u8>,
    /// Per panel, per block: `NR` scales (0 past `n`).
    scales: Vec<f32>,
    /// Per panel, per block: `NR` values of `-zp · scale` (zp including the unsigned shift).
    offsets: Vec<f32>,
}

impl PackedWeights {
    /// Packs `spec` for this CPU.
    pub fn pack(spec: &WeightSpec) -> Result<PackedWeights, String> {
        PackedWeights::pack_for(cpu::best().wgemm, spec)
    }

    /// [`PackedWeights::pack`] for the path of a CPU of level `isa` (tests run every path the
    /// CPU has).
    pub fn pack_for(isa: Isa, spec: &WeightSpec) -> Result<PackedWeights, String> {
        let path = Kernels::at(isa).wgemm;
        spec.validate()?;
        let (k, n) = (spec.k, spec.n);
        let four_bit = spec.codes.four_bit();
        let shift = spec.codes.shift();
        let panels = n.div_ceil(NR);
        let row_bytes = if four_bit { NR / 2 } else { NR };
        let blocks = spec.blocks();
        let mut codes = vec![0u8; panels * k * row_bytes];
        let mut scales = vec![0f32; panels * blocks * NR];
        let mut offsets = vec![0f32; panels * blocks * NR];
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            for kk in 0..k {
                let row = &mut codes[(p * k + kk) * row_bytes..][..row_bytes];
                for jj in 0..cols {
                    let u = (spec.code(kk, p * NR + jj) + shift) as u8;
                    if !four_bit {
                        row[jj] = u;
                    } else if jj < NR / 2 {
                        row[jj] |= u & 0x0f;
                    } else {
                        row[jj - NR / 2] |= (u & 0x0f) << 4;
                    }
                }
            }
            for blk in 0..blocks {
                let at = (p * blocks + blk) * NR;
                for jj in 0..cols {
                    let i = spec.param(blk, p * NR + jj);
                    let s = spec.scales[i];
                    let zp = spec.zero_points.map_or(0.0, |z| z[i]) + shift as f32;
                    scales[at + jj] = s;
                    offsets[at + jj] = -zp * s;
                }
            }
        }
        let block = if spec.block_size == 0 { k.max(1) } else { spec.block_size };
        Ok(PackedWeights { k, n, four_bit, block, path, codes, scales, offsets })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn path(&self) -> Isa {
        self.path
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    fn row_bytes(&self) -> usize {
        if self.four_bit {
            NR / 2
        } else {
            NR
        }
    }

    fn panel_codes(&self, p: usize) -> &[u8] {
        let len = self.k * self.row_bytes();
        &self.codes[p * len..][..len]
    }

    fn panel_params(&self, p: usize) -> (&[f32], &[f32]) {
        let len = self.blocks() * NR;
        (&self.scales[p * len..][..len], &self.offsets[p * len..][..len])
    }

    /// Dequantizes rows `k0..k0 + kc` of panel `p` into `buf` (`kc × NR`, row-major).
    fn dequantize_rows(&self, p: usize, k0: usize, kc: usize, buf: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.path >= Isa::Avx2 {
            // SAFETY: the path was chosen (or asked for by a test) on a CPU with AVX2 and FMA.
            unsafe { self.dequantize_rows_fma(p, k0, kc, buf) };
            return;
        }
        self.dequantize_rows_with::<false>(p, k0, kc, buf);
    }

    /// [`Self::dequantize_rows`] compiled with FMA, so `mul_add` is one instruction (without
    /// the feature it is a libm call).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dequantize_rows_fma(&self, p: usize, k0: usize, kc: usize, buf: &mut [f32]) {
        self.dequantize_rows_with::<true>(p, k0, kc, buf);
    }

    #[inline(always)]
    fn dequantize_rows_with<const FMA: bool>(
        &self,
        p: usize,
        k0: usize,
        kc: usize,
        buf: &mut [f32],
    ) {
        let codes = self.panel_codes(p);
        let (scales, offsets) = self.panel_params(p);
        let rb = self.row_bytes();
        for kk in 0..kc {
            let blk = (k0 + kk) / self.block;
            let s: &[f32; NR] = scales[blk * NR..][..NR].try_into().expect("one panel row");
            let o: &[f32; NR] = offsets[blk * NR..][..NR].try_into().expect("one panel row");
            let out: &mut [f32; NR] = (&mut buf[kk * NR..][..NR]).try_into().expect("one row");
            let row = &codes[(k0 + kk) * rb..][..rb];
            let mut q = [0u8; NR];
            if self.four_bit {
                for j in 0..NR / 2 {
                    q[j] = row[j] & 0x0f;
                    q[j + NR / 2] = row[j] >> 4;
                }
            } else {
                q.copy_from_slice(row);
            }
            for j in 0..NR {
                let v = q[j] as f32;
                out[j] = if FMA { v.mul_add(s[j], o[j]) } else { v * s[j] + o[j] };
            }
        }
    }
}

/// `C = A · dequant(B) [+ bias]`: `A` is `m × k` row-major (leading dim `lda`), `C` is `m × n`
/// row-major (leading dim `ldc`, overwritten), `bias` has `n` values. Runs on the current
/// rayon pool when the product is large enough.
///
/// # Panics
/// When a slice is too short for its dims (caller bugs).
pub fn wgemm(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedWeights,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (b.k, b.n);
    let needed =
        |rows: usize, cols: usize, ld: usize| if rows == 0 { 0 } else { (rows - 1) * ld + cols };
    assert!(m <= 1 || (lda >= k && ldc >= n), "wgemm: leading dims");
    assert!(a.len() >= needed(m, k, lda), "wgemm: A is too short");
    assert!(c.len() >= needed(m, n, ldc), "wgemm: C is too short");
    assert!(bias.is_none_or(|v| v.len() >= n), "wgemm: bias is too short");
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let out = Ptr(c.as_mut_ptr());
    let direct = b.path >= Isa::Avx2 && m <= DIRECT_MAX_M && k > 0;
    let panel = |p: usize| {
        let cols = NR.min(n - p * NR);
        let mut bias_p = [0f32; NR];
        if let Some(v) = bias {
            bias_p[..cols].copy_from_slice(&v[p * NR..][..cols]);
        }
        // SAFETY: the asserts bound every A element (r < m, kk < k) and C element
        // (r < m, p·NR + jj with jj < cols) the panel touches; panels write disjoint columns.
        unsafe {
            let cp = out.get().add(p * NR);
            if direct {
                direct_panel(b, p, m, a.as_ptr(), lda, &bias_p, cp, ldc, cols);
            } else {
                buffered_panel(b, p, m, a.as_ptr(), lda, &bias_p, cp, ldc, cols);
            }
        }
    };
    if rayon::current_num_threads() > 1 && panels > 1 && m * n * k >= PARALLEL_MIN_WORK {
        use rayon::prelude::*;
        (0..panels).into_par_iter().for_each(panel);
    } else {
        (0..panels).for_each(panel);
    }
}

/// Panel `p` of `C` through the dequantize-to-buffer path.
///
/// # Safety
/// `a` readable for `m` rows of `b.k` at stride `lda`; `c` writable for `m` rows of `cols` at
/// stride `ldc`.
#[allow(clippy::too_many_arguments)]
unsafe fn buffered_panel(
    b: &PackedWeights,
    p: usize,
    m: usize,
    a: *const f32,
    lda: usize,
    bias: &[f32; NR],
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    for r in 0..m {
        for (jj, &v) in bias.iter().enumerate().take(cols) {
            // SAFETY: r < m, jj < cols (caller's bounds).
            unsafe { *c.add(r * ldc + jj) = v };
        }
    }
    let mut buf = [0f32; KC * NR];
    for k0 in (0..b.k).step_by(KC) {
        let kc = KC.min(b.k - k0);
        b.dequantize_rows(p, k0, kc, &mut buf);
        for i0 in (0..m).step_by(gemm::MR) {
            let mr = gemm::MR.min(m - i0);
            // SAFETY: rows i0..i0 + mr < m, columns k0..k0 + kc < k of A; the buffer holds
            // kc·NR values; C as the caller bounds it.
            unsafe {
                gemm::micro_rows(
                    b.path,
                    mr,
                    kc,
                    a.add(i0 * lda + k0),
                    lda,
                    buf.as_ptr(),
                    c.add(i0 * ldc),
                    ldc,
                    cols,
                    false,
                )
            };
        }
    }
}

/// Panel `p` of `C` through the in-register path, 4 rows at a time.
///
/// # Safety
/// As [`buffered_panel`], and the CPU has AVX2 and FMA (`b.path` says so).
#[allow(clippy::too_many_arguments)]
unsafe fn direct_panel(
    b: &PackedWeights,
    p: usize,
    m: usize,
    a: *const f32,
    lda: usize,
    bias: &[f32; NR],
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let codes = b.panel_codes(p).as_ptr();
        let (s, o) = b.panel_params(p);
        let (s, o) = (s.as_ptr(), o.as_ptr());
        let mut i0 = 0;
        while i0 < m {
            let mr = 4.min(m - i0);
            // SAFETY: forwarded from the caller; the panel's codes hold k rows and its
            // params one NR-row per block.
            unsafe {
                let (a, c) = (a.add(i0 * lda), c.add(i0 * ldc));
                macro_rules! go {
                    ($r:literal) => {
                        if b.four_bit {
                            x86_64::direct::<$r, true>(
                                b.k, b.block, a, lda, codes, s, o, bias, c, ldc, cols,
                            )
                        } else {
                            x86_64::direct::<$r, false>(
                                b.k, b.block, a, lda, codes, s, o, bias, c, ldc, cols,
                            )
                        }
                    };
                }
                match mr {
                    1 => go!(1),
                    2 => go!(2),
                    3 => go!(3),
                    _ => go!(4),
                }
            }
            i0 += mr;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded from the caller.
    unsafe {
        buffered_panel(b, p, m, a, lda, bias, c, ldc, cols)
    }
}

/// Reference: `C = A · spec.dequantize() [+ bias]` with f64 sums.
///
/// # Panics
/// When `spec` is inconsistent or a slice is too short.
pub fn wgemm_ref(
    m: usize,
    a: &[f32],
    lda: usize,
    spec: &WeightSpec,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    spec.validate().expect("wgemm_ref: spec");
    let (k, n) = (spec.k, spec.n);
    let w = spec.dequantize();
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.map_or(0.0, |b| b[j] as f64);
            for kk in 0..k {
                acc += a[i * lda + kk] as f64 * w[kk * n + j] as f64;
            }
            c[i * ldc + j] = acc as f32;
        }
    }
}

/// The in-register dequantizing micro-kernel (AVX2 + FMA).
#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use super::NR;
    use std::arch::x86_64::*;

    /// `R` rows × one panel over all of K, each panel row dequantized in registers:
    /// zero-extend the codes to i32, split nibbles (4-bit) or halves (8-bit), convert, and
    /// `fma(code, scale, offset)`; then one FMA per row and half-panel.
    ///
    /// # Safety
    /// `a` readable for `R` rows of `k` at stride `lda`; `codes` for `k` panel rows; `scales` and
    /// `offsets` for `ceil(k / block)` rows of `NR`; `c` writable for `R` rows of `cols`; the CPU
    /// has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn direct<const R: usize, const FOUR: bool>(
        k: usize,
        block: usize,
        a: *const f32,
        lda: usize,
        codes: *const u8,
        scales: *const f32,
        offsets: *const f32,
        bias: &[f32; NR],
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let low = _mm256_set1_epi32(0x0f);
        let mut k0 = 0;
        let mut blk = 0;
        while k0 < k {
            let k1 = (k0 + block).min(k);
            // SAFETY: (caller's bounds) blk < ceil(k / block); kk < k; r < R.
            unsafe {
                let s0 = _mm256_loadu_ps(scales.add(blk * NR));
                let s1 = _mm256_loadu_ps(scales.add(blk * NR + 8));
                let o0 = _mm256_loadu_ps(offsets.add(blk * NR));
                let o1 = _mm256_loadu_ps(offsets.add(blk * NR + 8));
                for kk in k0..k1 {
                    let (q0, q1) = if FOUR {
                        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            codes.add(kk * 8) as *const __m128i
                        ));
                        (_mm256_and_si256(v, low), _mm256_srli_epi32::<4>(v))
                    } else {
                        let v = _mm_loadu_si128(codes.add(kk * 16) as *const __m128i);
                        (_mm256_cvtepu8_epi32(v), _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)))
                    };
                    let w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q0), s0, o0);
                    let w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q1), s1, o1);
                    for (r, row) in acc.iter_mut().enumerate() {
                        let av = _mm256_set1_ps(*a.add(r * lda + kk));
                        row[0] = _mm256_fmadd_ps(av, w0, row[0]);
                        row[1] = _mm256_fmadd_ps(av, w1, row[1]);
                    }
                }
            }
            k0 = k1;
            blk += 1;
        }
        // SAFETY: bias is NR values; r < R rows of C with `cols` columns each.
        unsafe {
            let b0 = _mm256_loadu_ps(bias.as_ptr());
            let b1 = _mm256_loadu_ps(bias.as_ptr().add(8));
            for (r, row) in acc.iter().enumerate() {
                let (v0, v1) = (_mm256_add_ps(row[0], b0), _mm256_add_ps(row[1], b1));
                let cr = c.add(r * ldc);
                if cols == NR {
                    _mm256_storeu_ps(cr, v0);
                    _mm256_storeu_ps(cr.add(8), v1);
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), cr, cols);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random values in `0..modulus`.
    fn hash(i: usize, seed: u32, modulus: u32) -> u32 {
        let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed).rotate_left(13);
        (x.wrapping_mul(40503) >> 8) % modulus
    }

    struct Case {
        m: usize,
        k: usize,
        n: usize,
        trans: Trans,
        kind: usize,
        block_size: usize,
        zp: bool,
        per_tensor: bool,
        bias: bool,
        seed: u32,
    }

    fn run_case(c: &Case) -> Result<(), TestCaseError> {
        let (m, k, n) = (c.m, c.k, c.n);
        let len = k * n;
        let i8s: Vec<i8> = (0..len).map(|i| hash(i, c.seed, 256) as u8 as i8).collect();
        let u8s: Vec<u8> = (0..len).map(|i| hash(i, c.seed, 256) as u8).collect();
        let i4s: Vec<i8> = (0..len).map(|i| hash(i, c.seed, 16) as i8 - 8).collect();
        let u4s: Vec<u8> = (0..len).map(|i| hash(i, c.seed, 16) as u8).collect();
        let codes = match c.kind {
            0 => Codes::I8(&i8s),
            1 => Codes::U8(&u8s),
            2 => Codes::I4(&i4s),
            _ => Codes::U4(&u4s),
        };
        let blocks = if c.block_size == 0 { 1 } else { k.div_ceil(c.block_size) };
        let params = if c.per_tensor { 1 } else { blocks * n };
        let scales: Vec<f32> =
            (0..params).map(|i| 0.001 + hash(i, c.seed ^ 5, 1000) as f32 * 1e-4).collect();
        let zmax = if c.codes_four_bit() { 16 } else { 256 };
        let zps: Vec<f32> = (0..params)
            .map(|i| {
                let z = hash(i, c.seed ^ 9, zmax) as f32;
                if matches!(c.kind, 0 | 2) {
                    z - zmax as f32 / 2.0
                } else {
                    z
                }
            })
            .collect();
        let spec = WeightSpec {
            k,
            n,
            trans: c.trans,
            codes,
            block_size: c.block_size,
            scales: &scales,
            zero_points: c.zp.then_some(zps.as_slice()),
        };
        let lda = k + 1;
        let a: Vec<f32> =
            (0..m * lda).map(|i| hash(i, c.seed ^ 3, 2001) as f32 / 1000.0 - 1.0).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 1.0).collect();
        let bias = c.bias.then_some(bias.as_slice());
        let ldc = n + 2;
        let mut want = vec![0f32; m * ldc];
        wgemm_ref(m, &a, lda, &spec, bias, &mut want, ldc);
        // Sum of |terms| bounds the f32 rounding error of any summation order.
        let w = spec.dequantize();
        for path in cpu::levels(|k| k.wgemm) {
            let packed = PackedWeights::pack_for(path, &spec).map_err(TestCaseError::fail)?;
            let mut got = vec![f32::NAN; m * ldc];
            wgemm(m, &a, lda, &packed, bias, &mut got, ldc);
            for i in 0..m {
                for j in 0..n {
                    let mag: f32 = (0..k).map(|kk| (a[i * lda + kk] * w[kk * n + j]).abs()).sum();
                    let tol = 1e-5 + 4e-6 * (mag + bias.map_or(0.0, |b| b[j].abs()));
                    let (g, e) = (got[i * ldc + j], want[i * ldc + j]);
                    prop_assert!(
                        (g - e).abs() <= tol,
                        "{path:?} ({i},{j}) of {m}x{k}x{n}: {g} vs {e}"
                    );
                }
            }
        }
        Ok(())
    }

    impl Case {
        fn codes_four_bit(&self) -> bool {
            self.kind >= 2
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn wgemm_matches_dequantize_then_matmul(
            m in 1usize..20, k in 1usize..300, n in 1usize..50,
            trans in any::<bool>(), kind in 0usize..4, block_i in 0usize..5,
            zp in any::<bool>(), per_tensor_i in 0usize..6, bias in any::<bool>(),
            seed in any::<u32>(),
        ) {
            run_case(&Case {
                m, k, n,
                trans: if trans { Trans::Yes } else { Trans::No },
                kind,
                block_size: [0, 16, 32, 64, 128][block_i],
                zp,
                per_tensor: per_tensor_i == 0,
                bias,
                seed,
            })?;
        }
    }

    #[test]
    fn int4_odd_k_and_odd_n_pack_edge_nibbles() {
        for (k, n) in [(1, 1), (33, 17), (65, 9), (127, 31)] {
            for kind in [2, 3] {
                for m in [1, 3, 5, 9] {
                    run_case(&Case {
                        m,
                        k,
                        n,
                        trans: Trans::No,
                        kind,
                        block_size: 32,
                        zp: true,
                        per_tensor: false,
                        bias: false,
                        seed: 11,
                    })
                    .unwrap();
                }
            }
        }
    }

    #[test]
    fn threads_split_panels_without_changing_results() {
        let (m, k, n) = (3, 256, 200);
        let codes: Vec<i8> = (0..k * n).map(|i| hash(i, 1, 16) as i8 - 8).collect();
        let scales: Vec<f32> = (0..k.div_ceil(32) * n).map(|i| 0.01 + i as f32 * 1e-5).collect();
        let spec = WeightSpec {
            k,
            n,
            trans: Trans::No,
            codes: Codes::I4(&codes),
            block_size: 32,
            scales: &scales,
            zero_points: None,
        };
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let p = PackedWeights::pack(&spec).unwrap();
        let mut one = vec![0f32; m * n];
        wgemm(m, &a, k, &p, None, &mut one, n);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut two = vec![0f32; m * n];
        pool.install(|| wgemm(m, &a, k, &p, None, &mut two, n));
        assert_eq!(one, two);
    }

    #[test]
    fn inconsistent_lengths_are_errors() {
        let codes = [0i8; 6];
        let spec = WeightSpec {
            k: 2,
            n: 3,
            trans: Trans::No,
            codes: Codes::I4(&codes),
            block_size: 1,
            scales: &[1.0; 5],
            zero_points: None,
        };
        assert!(PackedWeights::pack(&spec).unwrap_err().contains("scales"));
        let spec = WeightSpec { k: 3, ..spec };
        assert!(PackedWeights::pack(&spec).unwrap_err().contains("codes"));
    }
}
