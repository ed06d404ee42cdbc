//! f32 matrix multiply: `C = alpha * op(A) * op(B) + beta * C`, row-major with leading dims.
//!
//! [`sgemm`] wraps the `gemm` crate (packed, SIMD micro-kernels picked at run time) and uses
//! the current rayon pool once the problem is large enough; [`sgemm_ref`] is the scalar
//! reference it is tested against. `beta == 0` ignores `C`'s old contents (NaNs included), as
//! BLAS does. `op(X)` is `X` or its transpose.
//!
//! ```
//! use lowbit_kernels::gemm::{sgemm, Trans};
//! let a = [1.0, 2.0, 3.0, 4.0]; // 2x2
//! let b = [5.0, 6.0, 7.0, 8.0]; // 2x2
//! let mut c = [0.0; 4];
//! sgemm(Trans::No, Trans::No, 2, 2, 2, 1.0, &a, 2, &b, 2, 0.0, &mut c, 2);
//! assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
//! ```

/// Whether an operand is read as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    No,
    Yes,
}

/// Work (m·n·k) below which threads cost more than they save.
const PARALLEL_MIN_WORK: usize = 64 * 64 * 64;

/// Row and column strides of a row-major operand with leading dim `ld`, read as `t`.
fn strides(t: Trans, ld: usize) -> (isize, isize) {
    match t {
        Trans::No => (ld as isize, 1),
        Trans::Yes => (1, ld as isize),
    }
}

/// Minimum slice length for a `rows x cols` operand (as stored) with leading dim `ld`.
fn needed(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    }
}

#[allow(clippy::too_many_arguments)]
fn check_args(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &[f32],
    ldc: usize,
) {
    let (ar, ac) = if ta == Trans::No { (m, k) } else { (k, m) };
    let (br, bc) = if tb == Trans::No { (k, n) } else { (n, k) };
    assert!(ac == 0 || ar <= 1 || lda >= ac, "sgemm: lda {lda} < {ac}");
    assert!(bc == 0 || br <= 1 || ldb >= bc, "sgemm: ldb {ldb} < {bc}");
    assert!(n == 0 || m <= 1 || ldc >= n, "sgemm: ldc {ldc} < {n}");
    assert!(a.len() >= needed(ar, ac, lda), "sgemm: A is too short");
    assert!(b.len() >= needed(br, bc, ldb), "sgemm: B is too short");
    assert!(c.len() >= needed(m, n, ldc), "sgemm: C is too short");
}

/// Scales the `m x n` block of `c` by `beta` (writing zeros when `beta == 0`).
fn scale_c(m: usize, n: usize, beta: f32, c: &mut [f32], ldc: usize) {
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|v| *v *= beta);
        }
    }
}

/// `C = alpha * op(A) * op(B) + beta * C`. `op(A)` is `m x k`, `op(B)` is `k x n`, `C` is
/// `m x n`; all row-major with leading dims `lda`, `ldb`, `ldc` (of the stored matrices).
///
/// # Panics
/// When a slice is too short for its dims and leading dim (a caller bug, never user data).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let work = m.saturating_mul(n).saturating_mul(k);
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && work >= PARALLEL_MIN_WORK {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    sgemm_with(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, par);
}

/// [`sgemm`] on the calling thread only (for callers that parallelize over batches).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_serial(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    sgemm_with(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, gemm::Parallelism::None);
}

#[allow(clippy::too_many_arguments)]
fn sgemm_with(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    par: gemm::Parallelism,
) {
    check_args(ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        scale_c(m, n, beta, c, ldc);
        return;
    }
    let (a_rs, a_cs) = strides(ta, lda);
    let (b_rs, b_cs) = strides(tb, ldb);
    // SAFETY: check_args proved every element (i, j) addressed through these strides lies
    // inside its slice; `c` is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// Columns per packed panel of B (two AVX registers).
pub const NR: usize = 16;
/// Rows of A per micro-kernel call.
pub(crate) const MR: usize = 6;
/// Rows of packed B (one cache line each) the micro-kernels prefetch ahead of their reads.
const PREFETCH_ROWS: usize = 32;
/// Depth of one K block: a `KC x NR` panel slice stays in L1 across row blocks.
const KC: usize = 256;

/// `B` (`k x n`) re-laid out once for [`sgemm_packed`]: blocks of `KC` rows, each holding
/// panels of [`NR`] columns stored row by row (`kc` rows of `NR` values, zero-padded past
/// `n`), in exactly the order [`sgemm_packed`] reads them, so a weight too big for the caches
/// streams from memory as one linear sweep. Build it once for a constant weight and reuse it
/// on every call.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs `op(B)` (`k x n`) from a row-major slice with leading dim `ldb`.
    ///
    /// # Panics
    /// When `b` is too short for its dims.
    pub fn pack(tb: Trans, k: usize, n: usize, b: &[f32], ldb: usize) -> PackedB {
        let mut p = PackedB { k: 0, n: 0, data: Vec::new() };
        p.repack(tb, k, n, b, ldb);
        p
    }

    /// Packs new contents into this buffer, reusing its allocation.
    ///
    /// # Panics
    /// When `b` is too short for its dims.
    pub fn repack(&mut self, tb: Trans, k: usize, n: usize, b: &[f32], ldb: usize) {
        let (br, bc) = if tb == Trans::No { (k, n) } else { (n, k) };
        assert!(bc == 0 || br <= 1 || ldb >= bc, "PackedB: ldb {ldb} < {bc}");
        assert!(b.len() >= needed(br, bc, ldb), "PackedB: B is too short");
        let panels = n.div_ceil(NR);
        let data = &mut self.data;
        data.clear();
        data.resize(panels * k * NR, 0.0);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in 0..panels {
                let cols = NR.min(n - p * NR);
                for kk in 0..kc {
                    let dst = &mut data[block_offset(k0, panels, p, kc) + kk * NR..][..cols];
                    if tb == Trans::No {
                        dst.copy_from_slice(&b[(k0 + kk) * ldb + p * NR..][..cols]);
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = b[(p * NR + j) * ldb + k0 + kk];
                        }
                    }
                }
            }
        }
        self.k = k;
        self.n = n;
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

/// Where panel `p` of the K block starting at row `k0` (`kc` rows deep) starts in packed data.
fn block_offset(k0: usize, panels: usize, p: usize, kc: usize) -> usize {
    (k0 * panels + p * kc) * NR
}

/// A raw output pointer shared by tasks that write disjoint column panels.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks given an OutPtr write disjoint elements (one column panel each).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `C = A * B + beta * C` with `B` pre-packed. `A` is `m x k` row-major (leading dim `lda`),
/// `C` is `m x n` row-major (leading dim `ldc`).
///
/// # Panics
/// When a slice is too short for its dims.
pub fn sgemm_packed(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let (k, n) = (b.k, b.n);
    assert!(k == 0 || m <= 1 || lda >= k, "sgemm_packed: lda {lda} < {k}");
    assert!(n == 0 || m <= 1 || ldc >= n, "sgemm_packed: ldc {ldc} < {n}");
    assert!(a.len() >= needed(m, k, lda), "sgemm_packed: A is too short");
    assert!(c.len() >= needed(m, n, ldc), "sgemm_packed: C is too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        scale_c(m, n, beta, c, ldc);
        return;
    }
    if beta != 0.0 && beta != 1.0 {
        scale_c(m, n, beta, c, ldc);
    }
    let panels = n.div_ceil(NR);
    let out = OutPtr(c.as_mut_ptr());
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && panels > 1 && m * n * k >= PARALLEL_MIN_WORK;
    let avx2 = has_avx2_fma();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let overwrite = k0 == 0 && beta == 0.0;
        let panel = |p: usize| {
            let bp = &b.data[block_offset(k0, panels, p, kc)..][..kc * NR];
            let cols = NR.min(n - p * NR);
            let mut i0 = 0;
            while i0 < m {
                let mr = MR.min(m - i0);
                let ap = &a[i0 * lda + k0..];
                // SAFETY: the asserts above bound every A row `i0 + r < m` read through `ap`
                // with `kc` columns, every packed B element of this panel, and every C element
                // `(i0 + r, p * NR + j)` with `j < cols`; panels write disjoint columns.
                unsafe {
                    let cp = out.get().add(i0 * ldc + p * NR);
                    micro(avx2, mr, kc, ap.as_ptr(), lda, bp.as_ptr(), cp, ldc, cols, overwrite);
                }
                i0 += mr;
            }
        };
        if parallel {
            use rayon::prelude::*;
            (0..panels).into_par_iter().for_each(panel);
        } else {
            (0..panels).for_each(panel);
        }
    }
}

/// Whether the CPU has AVX2 and FMA (the fast micro-kernels' features).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dispatches a micro-kernel for `mr <= MR` rows.
///
/// # Safety
/// `a` must be readable for `mr` rows of `kc` elements at stride `lda`; `b` for `kc * NR`
/// elements; `c` writable for `mr` rows of `cols` elements at stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro(
    avx2: bool,
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    overwrite: bool,
) {
    macro_rules! go {
        ($f:ident) => {
            match mr {
                1 => $f::<1>(kc, a, lda, b, c, ldc, cols, overwrite),
                2 => $f::<2>(kc, a, lda, b, c, ldc, cols, overwrite),
                3 => $f::<3>(kc, a, lda, b, c, ldc, cols, overwrite),
                4 => $f::<4>(kc, a, lda, b, c, ldc, cols, overwrite),
                5 => $f::<5>(kc, a, lda, b, c, ldc, cols, overwrite),
                _ => $f::<6>(kc, a, lda, b, c, ldc, cols, overwrite),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: forwarded from the caller; the CPU has AVX2 and FMA.
        unsafe { go!(micro_avx2) };
        return;
    }
    let _ = avx2;
    // SAFETY: forwarded from the caller.
    unsafe { go!(micro_generic) };
}

/// Stores a finished `NR`-wide accumulator row into `c` (`cols` of it).
///
/// # Safety
/// `c` writable for `cols` elements.
#[inline(always)]
unsafe fn store_row(acc: &[f32; NR], c: *mut f32, cols: usize, overwrite: bool) {
    for (j, &v) in acc.iter().enumerate().take(cols) {
        // SAFETY: j < cols.
        unsafe {
            let p = c.add(j);
            *p = if overwrite { v } else { *p + v };
        }
    }
}

/// Portable micro-kernel (auto-vectorized).
///
/// # Safety
/// As [`micro`].
#[allow(clippy::too_many_arguments)]
unsafe fn micro_generic<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    overwrite: bool,
) {
    let mut acc = [[0f32; NR]; R];
    for kk in 0..kc {
        // SAFETY: kk < kc, r < R = mr (caller's bounds).
        let bv: &[f32; NR] = unsafe { &*(b.add(kk * NR) as *const [f32; NR]) };
        for (r, row) in acc.iter_mut().enumerate() {
            let av = unsafe { *a.add(r * lda + kk) };
            for j in 0..NR {
                row[j] += av * bv[j];
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: r < mr rows of C.
        unsafe { store_row(row, c.add(r * ldc), cols, overwrite) };
    }
}

/// AVX2 + FMA micro-kernel: `R x 16` accumulators in registers.
///
/// # Safety
/// As [`micro`], and the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx2<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for kk in 0..kc {
        // Packed B is read as one linear stream: fetch ahead of it (a prefetch never faults,
        // so running past the end of the data is harmless).
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PREFETCH_ROWS) * NR) as *const i8);
        // SAFETY: (caller's bounds) kk < kc, r < mr.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*a.add(r * lda + kk));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: r < mr rows of C, `cols` columns each.
        unsafe {
            let cr = c.add(r * ldc);
            if cols == NR {
                let (v0, v1) = if overwrite {
                    (row[0], row[1])
                } else {
                    (
                        _mm256_add_ps(_mm256_loadu_ps(cr), row[0]),
                        _mm256_add_ps(_mm256_loadu_ps(cr.add(8)), row[1]),
                    )
                };
                _mm256_storeu_ps(cr, v0);
                _mm256_storeu_ps(cr.add(8), v1);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), row[0]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), row[1]);
                store_row(&tmp, cr, cols, overwrite);
            }
        }
    }
}

/// Scalar reference for [`sgemm`] (f64 accumulation).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_ref(
    ta: Trans,
    tb: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    check_args(ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
    let at = |i: usize, p: usize| if ta == Trans::No { a[i * lda + p] } else { a[p * lda + i] };
    let bt = |p: usize, j: usize| if tb == Trans::No { b[p * ldb + j] } else { b[j * ldb + p] };
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for p in 0..k {
                acc += at(i, p) as f64 * bt(p, j) as f64;
            }
            let old = if beta == 0.0 { 0.0 } else { beta * c[i * ldc + j] };
            c[i * ldc + j] = alpha * acc as f32 + old;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 17) as f32 / 8.0
                    - 1.0
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn sgemm_matches_reference(
            m in 0usize..40, n in 0usize..40, k in 0usize..40,
            ta in any::<bool>(), tb in any::<bool>(),
            pad in 0usize..3, beta_i in 0usize..3, seed in any::<u32>(),
        ) {
            let ta = if ta { Trans::Yes } else { Trans::No };
            let tb = if tb { Trans::Yes } else { Trans::No };
            let (ar, ac) = if ta == Trans::No { (m, k) } else { (k, m) };
            let (br, bc) = if tb == Trans::No { (k, n) } else { (n, k) };
            let (lda, ldb, ldc) = (ac + pad, bc + pad, n + pad);
            let a = fill(ar * lda, seed);
            let b = fill(br * ldb, seed ^ 77);
            let beta = [0.0, 1.0, -0.5][beta_i];
            let mut c1 = fill(m * ldc, seed ^ 5);
            let mut c2 = c1.clone();
            sgemm(ta, tb, m, n, k, 0.75, &a, lda, &b, ldb, beta, &mut c1, ldc);
            sgemm_ref(ta, tb, m, n, k, 0.75, &a, lda, &b, ldb, beta, &mut c2, ldc);
            for (x, y) in c1.iter().zip(&c2) {
                prop_assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn packed_gemm_matches_reference(
            m in 0usize..20, n in 0usize..50, k in 0usize..300,
            tb in any::<bool>(), beta_i in 0usize..3, seed in any::<u32>(),
        ) {
            let tb = if tb { Trans::Yes } else { Trans::No };
            let ldb = if tb == Trans::No { n } else { k };
            let a = fill(m * k, seed);
            let b = fill(k * n, seed ^ 77);
            let beta = [0.0, 1.0, -0.5][beta_i];
            let mut c1 = fill(m * n, seed ^ 5);
            let mut c2 = c1.clone();
            let packed = PackedB::pack(tb, k, n, &b, ldb);
            sgemm_packed(m, &a, k, &packed, beta, &mut c1, n);
            sgemm_ref(Trans::No, tb, m, n, k, 1.0, &a, k, &b, ldb, beta, &mut c2, n);
            for (x, y) in c1.iter().zip(&c2) {
                prop_assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn large_parallel_gemm_matches_reference() {
        let (m, n, k) = (70, 130, 90);
        let a = fill(m * k, 1);
        let b = fill(k * n, 2);
        let mut c1 = vec![f32::NAN; m * n];
        let mut c2 = vec![0.0; m * n];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| sgemm(Trans::No, Trans::No, m, n, k, 1.0, &a, k, &b, n, 0.0, &mut c1, n));
        sgemm_ref(Trans::No, Trans::No, m, n, k, 1.0, &a, k, &b, n, 0.0, &mut c2, n);
        for (x, y) in c1.iter().zip(&c2) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()));
        }
        let packed = PackedB::pack(Trans::No, k, n, &b, n);
        let mut c3 = vec![f32::NAN; m * n];
        pool.install(|| sgemm_packed(m, &a, k, &packed, 0.0, &mut c3, n));
        for (x, y) in c3.iter().zip(&c2) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()));
        }
    }
}
