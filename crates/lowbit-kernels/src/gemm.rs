//! f32 matrix multiply: `C = alpha * op(A) * op(B) + beta * C`, row-major with leading dims.
//!
//! [`sgemm`] wraps the `gemm` crate (packed, SIMD micro-kernels picked at run time) and uses
//! the current rayon pool once the problem is large enough; [`sgemm_ref`] is the scalar
//! reference it is tested against. `beta == 0` ignores `C`'s old contents (NaNs included), as
//! BLAS does. `op(X)` is `X` or its transpose.
//!
//! For products with a constant operand, [`PackedB`] (a constant right side: MatMul/Gemm
//! weights) and [`PackedA`] (a constant left side: convolution weights, `C_out x K`) are laid
//! out once in the order the micro-kernels read them. [`sgemm_packed_with`] and
//! [`sgemm_packed_ab`] apply an [`Epilogue`] (per-row or per-column bias, then an
//! [`Activation`]) to each output tile while it is still in registers.
//!
//! ```
//! use lowbit_kernels::gemm::{sgemm, Trans};
//! let a = [1.0, 2.0, 3.0, 4.0]; // 2x2
//! let b = [5.0, 6.0, 7.0, 8.0]; // 2x2
//! let mut c = [0.0; 4];
//! sgemm(Trans::No, Trans::No, 2, 2, 2, 1.0, &a, 2, &b, 2, 0.0, &mut c, 2);
//! assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
//! ```

use crate::cpu::{self, Isa};

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

/// An element-wise function applied to a product's output in its output stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    Relu,
    /// Clamp to `[min, max]`.
    Clip(f32, f32),
    LeakyRelu(f32),
}

impl Activation {
    /// The activation of one value.
    #[inline(always)]
    pub fn of(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu => v.max(0.0),
            Activation::Clip(lo, hi) => v.max(lo).min(hi),
            Activation::LeakyRelu(a) => {
                if v < 0.0 {
                    v * a
                } else {
                    v
                }
            }
        }
    }

    /// Applies the activation in place.
    pub fn apply(self, y: &mut [f32]) {
        if self != Activation::None {
            y.iter_mut().for_each(|v| *v = self.of(*v));
        }
    }
}

/// What a packed product does to each output value after the sum: `act(sum + row_bias[i] +
/// col_bias[j])`. A convolution's bias is per row (output channel), a MatMul's per column.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub row_bias: Option<&'a [f32]>,
    pub col_bias: Option<&'a [f32]>,
    pub act: Option<Activation>,
}

impl Epilogue<'_> {
    fn is_identity(&self) -> bool {
        self.row_bias.is_none()
            && self.col_bias.is_none()
            && self.act.is_none_or(|a| a == Activation::None)
    }

    /// The epilogue of the tile at row `i0`, column `j0` (raw, for the micro-kernels).
    fn at(&self, i0: usize, j0: usize) -> Post {
        Post {
            row_bias: self.row_bias.map_or(std::ptr::null(), |b| b[i0..].as_ptr()),
            col_bias: self.col_bias.map_or(std::ptr::null(), |b| b[j0..].as_ptr()),
            act: self.act.unwrap_or(Activation::None),
        }
    }

    /// Applies the epilogue to an `m x n` block of `c` in place (for products computed
    /// without it).
    ///
    /// # Panics
    /// When `c` or a bias is too short for the block.
    pub fn apply(&self, m: usize, n: usize, c: &mut [f32], ldc: usize) {
        if self.is_identity() || m == 0 || n == 0 {
            return;
        }
        assert!(c.len() >= needed(m, n, ldc), "epilogue: C is too short");
        assert!(self.row_bias.is_none_or(|v| v.len() >= m), "epilogue: row bias too short");
        assert!(self.col_bias.is_none_or(|v| v.len() >= n), "epilogue: column bias too short");
        for i in 0..m {
            let post = self.at(i, 0);
            for (j, v) in c[i * ldc..i * ldc + n].iter_mut().enumerate() {
                // SAFETY: `at` points into biases that cover rows `i` and columns `< n`.
                *v = unsafe { post.one(*v, 0, j) };
            }
        }
    }
}

/// [`Epilogue`] of one micro-tile: bias pointers offset to the tile (null: none).
#[derive(Clone, Copy)]
struct Post {
    row_bias: *const f32,
    col_bias: *const f32,
    act: Activation,
}

impl Post {
    const NONE: Post =
        Post { row_bias: std::ptr::null(), col_bias: std::ptr::null(), act: Activation::None };

    /// The output stage of the tile's value at row `r`, column `j`.
    ///
    /// # Safety
    /// Non-null biases must cover row `r` and column `j`.
    #[inline(always)]
    unsafe fn one(self, mut v: f32, r: usize, j: usize) -> f32 {
        // SAFETY: the caller's bounds.
        unsafe {
            if !self.row_bias.is_null() {
                v += *self.row_bias.add(r);
            }
            if !self.col_bias.is_null() {
                v += *self.col_bias.add(j);
            }
        }
        self.act.of(v)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::{activation as activation_avx2, activation_avx512};

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
        // Every element is written below: only a longer buffer needs filling first.
        data.truncate(panels * k * NR);
        data.resize(panels * k * NR, 0.0);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in 0..panels {
                let cols = NR.min(n - p * NR);
                for kk in 0..kc {
                    let row = &mut data[block_offset(k0, panels, p, kc) + kk * NR..][..NR];
                    let (dst, zeros) = row.split_at_mut(cols);
                    zeros.fill(0.0);
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

    /// Packs a `k x n` matrix given row by row: `row(r, dst)` writes row `r`'s `n` values
    /// into `dst` (for operands built on the fly, such as convolution patches).
    pub fn repack_rows(&mut self, k: usize, n: usize, mut row: impl FnMut(usize, &mut [f32])) {
        let panels = n.div_ceil(NR);
        // Lanes past `n` in the last panel are never stored (their sums are discarded), so
        // the buffer is only grown, never cleared.
        if self.data.len() < panels * k * NR {
            self.data.resize(panels * k * NR, 0.0);
        }
        ROW.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < panels * NR {
                buf.resize(panels * NR, 0.0);
            }
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for kk in 0..kc {
                    row(k0 + kk, &mut buf[..n]);
                    for (p, src) in buf[..panels * NR].chunks_exact(NR).enumerate() {
                        let dst = block_offset(k0, panels, p, kc) + kk * NR;
                        let dst: &mut [f32; NR] =
                            (&mut self.data[dst..dst + NR]).try_into().expect("NR lanes");
                        *dst = src.try_into().expect("NR lanes");
                    }
                }
            }
        });
        self.k = k;
        self.n = n;
    }
}

thread_local! {
    /// One row of [`PackedB::repack_rows`], reused across calls.
    static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `A` (`m x k`, a constant left operand such as convolution weights) re-laid out once: blocks
/// of `KC` columns, each holding row blocks of `MR` rows stored column by column (`kc`
/// columns of `MR` values, zero-padded past `m`), so a micro-kernel reads its rows as one
/// linear stream.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Packs row-major `A` (`m x k`, leading dim `lda`).
    ///
    /// # Panics
    /// When `a` is too short for its dims.
    pub fn pack(m: usize, k: usize, a: &[f32], lda: usize) -> PackedA {
        assert!(k == 0 || m <= 1 || lda >= k, "PackedA: lda {lda} < {k}");
        assert!(a.len() >= needed(m, k, lda), "PackedA: A is too short");
        let rows = m.div_ceil(MR) * MR;
        let mut data = vec![0f32; rows * k];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for i0 in (0..m).step_by(MR) {
                let block = &mut data[k0 * rows + i0 * kc..][..kc * MR];
                for r in 0..MR.min(m - i0) {
                    let src = &a[(i0 + r) * lda + k0..][..kc];
                    for (kk, &v) in src.iter().enumerate() {
                        block[kk * MR + r] = v;
                    }
                }
            }
        }
        PackedA { m, k, data }
    }

    pub fn m(&self) -> usize {
        self.m
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Start of the row block at `i0` in the K block at `k0` (`kc` deep).
    fn block(&self, k0: usize, kc: usize, i0: usize) -> *const f32 {
        let rows = self.m.div_ceil(MR) * MR;
        self.data[k0 * rows + i0 * kc..].as_ptr()
    }
}

/// Where panel `p` of the K block starting at row `k0` (`kc` rows deep) starts in packed data.
fn block_offset(k0: usize, panels: usize, p: usize, kc: usize) -> usize {
    (k0 * panels + p * kc) * NR
}

/// A raw output pointer shared by tasks that write disjoint elements (column panels here,
/// tiles in [`crate::qgemm`], rows of pixels in [`crate::qconv`]).
#[derive(Clone, Copy)]
pub(crate) struct Ptr<T>(pub(crate) *mut T);
// SAFETY: tasks given a Ptr write disjoint elements.
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// How the micro-kernels read `A`: element `(r, kk)` of the row block at `i0` in the K block
/// at `k0` is `ptr[r * rs + kk * cs]`.
#[derive(Clone, Copy)]
enum ASource<'a> {
    RowMajor(&'a [f32], usize),
    Packed(&'a PackedA),
}

impl ASource<'_> {
    fn at(&self, k0: usize, kc: usize, i0: usize) -> (*const f32, usize, usize) {
        match *self {
            ASource::RowMajor(a, lda) => (a[i0 * lda + k0..].as_ptr(), lda, 1),
            ASource::Packed(p) => (p.block(k0, kc, i0), 1, MR),
        }
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
    sgemm_packed_with(m, a, lda, b, beta, c, ldc, &Epilogue::default());
}

/// [`sgemm_packed`] followed by `epi` on every output value, in the same pass.
///
/// # Panics
/// When a slice (the epilogue's biases included) is too short for its dims.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_with(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    let k = b.k;
    assert!(k == 0 || m <= 1 || lda >= k, "sgemm_packed: lda {lda} < {k}");
    assert!(a.len() >= needed(m, k, lda), "sgemm_packed: A is too short");
    let n = b.n;
    assert!(n == 0 || m <= 1 || ldc >= n, "sgemm_packed: ldc {ldc} < {n}");
    assert!(c.len() >= needed(m, n, ldc), "sgemm_packed: C is too short");
    let parallel = rayon::current_num_threads() > 1;
    // SAFETY: A is checked above, C just before; the epilogue in `packed_product`.
    unsafe {
        packed_product(
            cpu::best().sgemm,
            m,
            ASource::RowMajor(a, lda),
            b,
            beta,
            Ptr(c.as_mut_ptr()),
            ldc,
            epi,
            parallel,
        )
    };
}

/// `C = epi(A * B)` with both operands packed (`C` is `m x n`, leading dim `ldc`), on the
/// calling thread: the convolution's product of packed weights and a block of patches.
///
/// # Panics
/// When the operands' inner dims differ or a slice is too short for its dims.
pub fn sgemm_packed_ab(a: &PackedA, b: &PackedB, c: &mut [f32], ldc: usize, epi: &Epilogue) {
    let n = b.n;
    assert!(n == 0 || a.m <= 1 || ldc >= n, "sgemm_packed_ab: ldc {ldc} < {n}");
    assert!(c.len() >= needed(a.m, n, ldc), "sgemm_packed_ab: C is too short");
    // SAFETY: C is checked above.
    unsafe { sgemm_packed_ab_raw(a, b, c.as_mut_ptr(), ldc, epi) };
}

/// [`sgemm_packed_ab`] into a raw `C`, for callers that write disjoint column blocks of one
/// output from several threads.
///
/// # Safety
/// `c` must be writable for `a.m()` rows of `b.n()` elements at stride `ldc`, and no other
/// thread may access those elements meanwhile.
///
/// # Panics
/// When the operands' inner dims differ or the epilogue's biases are too short.
pub(crate) unsafe fn sgemm_packed_ab_raw(
    a: &PackedA,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    epi: &Epilogue,
) {
    assert_eq!(a.k, b.k, "sgemm_packed_ab: inner dims differ");
    // SAFETY: forwarded from the caller.
    unsafe {
        packed_product(cpu::best().sgemm, a.m, ASource::Packed(a), b, 0.0, Ptr(c), ldc, epi, false)
    };
}

/// `C = epi(A * B)` with `A` row-major (leading dim `lda`) and `B` packed, into `C` through a
/// raw pointer: for callers that run several products at once over disjoint rows of one output
/// (the channels-last convolution's blocks of pixels). `parallel` shares B's panels among the
/// current pool's threads (for a caller with one block only).
///
/// # Safety
/// `c` must be writable for `m` rows of `b.n()` elements at stride `ldc`, and no other thread
/// may touch those elements during the call.
///
/// # Panics
/// When `a` is too short for `m` rows of `b.k()` at `lda`, or a bias of `epi` too short.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_rows_packed_raw(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    epi: &Epilogue,
    parallel: bool,
) {
    assert!(b.k == 0 || m <= 1 || lda >= b.k, "sgemm_rows_packed: lda {lda} < {}", b.k);
    assert!(a.len() >= needed(m, b.k, lda), "sgemm_rows_packed: A is too short");
    // SAFETY: A is checked above, C by the caller, the epilogue in `packed_product`.
    unsafe {
        packed_product(
            cpu::best().sgemm,
            m,
            ASource::RowMajor(a, lda),
            b,
            0.0,
            Ptr(c),
            ldc,
            epi,
            parallel,
        )
    };
}

/// The shared driver, on the micro-kernels of `isa`: K blocks, then units of B panels (one
/// panel, or two side by side on AVX-512) in parallel when allowed and worth it, then
/// `MR`-row blocks of A, each one micro-kernel call; the epilogue runs on the last K block.
///
/// # Safety
/// `out` must be writable for `m` rows of `b.n` elements at stride `ldc`, and `a` readable
/// for `m x b.k`; the CPU must run `isa`'s code.
#[allow(clippy::too_many_arguments)]
unsafe fn packed_product(
    isa: Isa,
    m: usize,
    a: ASource,
    b: &PackedB,
    beta: f32,
    out: Ptr<f32>,
    ldc: usize,
    epi: &Epilogue,
    may_parallelize: bool,
) {
    let (k, n) = (b.k, b.n);
    assert!(epi.row_bias.is_none_or(|v| v.len() >= m), "sgemm_packed: row bias too short");
    assert!(epi.col_bias.is_none_or(|v| v.len() >= n), "sgemm_packed: column bias too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || (beta != 0.0 && beta != 1.0) {
        for i in 0..m {
            let post = epi.at(i, 0);
            for j in 0..n {
                // SAFETY: (caller) element (i, j) of C; the asserts above bound the biases.
                unsafe {
                    let p = out.get().add(i * ldc + j);
                    let v = if beta == 0.0 { 0.0 } else { beta * *p };
                    *p = if k == 0 { post.one(v, 0, j) } else { v };
                }
            }
        }
        if k == 0 {
            return;
        }
    }
    let panels = n.div_ceil(NR);
    let width = if isa >= Isa::Avx512Vnni { 2 } else { 1 };
    let units = panels.div_ceil(width);
    let parallel = may_parallelize && units > 1 && m * n * k >= PARALLEL_MIN_WORK;
    let with_epi = !epi.is_identity();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let overwrite = k0 == 0 && beta == 0.0;
        let last = k0 + kc == k;
        let unit = |u: usize| {
            let p = u * width;
            let np = width.min(panels - p);
            // The panels of one K block lie one after another.
            let bp = &b.data[block_offset(k0, panels, p, kc)..][..np * kc * NR];
            let cols = (np * NR).min(n - p * NR);
            let mut i0 = 0;
            while i0 < m {
                let mr = MR.min(m - i0);
                let (ap, rs, cs) = a.at(k0, kc, i0);
                let post = if last && with_epi { epi.at(i0, p * NR) } else { Post::NONE };
                // SAFETY: the caller bounds every A element of rows `i0 + r < m` and this K
                // block read through `ap`, and every C element `(i0 + r, p * NR + j)` with
                // `j < cols`; the slice above bounds these B panels, the caller the biases of
                // those rows and columns; units write disjoint columns.
                unsafe {
                    let cp = out.get().add(i0 * ldc + p * NR);
                    let tile = Tile { kc, a: ap, rs, cs, b: bp.as_ptr(), c: cp, ldc, cols };
                    micro(isa, mr, np, &tile, overwrite, post);
                }
                i0 += mr;
            }
        };
        if parallel {
            use rayon::prelude::*;
            (0..units).into_par_iter().for_each(unit);
        } else {
            (0..units).for_each(unit);
        }
    }
}

/// One micro-kernel call: `kc`-deep sums of A rows (element `(r, kk)` at `a[r * rs + kk *
/// cs]`) with one or two packed B panel slices (`kc x NR` each, one after the other), into
/// `cols` columns of C rows at stride `ldc`.
struct Tile {
    kc: usize,
    a: *const f32,
    rs: usize,
    cs: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
}

/// Dispatches a micro-kernel for `mr <= MR` rows and `np` panels (2 only on AVX-512).
///
/// # Safety
/// `t.a` must be readable for `mr` rows of `kc` elements through its strides; `t.b` for
/// `np * kc * NR` elements; `t.c` writable for `mr` rows of `cols` elements at stride `ldc`;
/// `post`'s biases readable for `mr` rows and `cols` columns.
unsafe fn micro(isa: Isa, mr: usize, np: usize, t: &Tile, overwrite: bool, post: Post) {
    macro_rules! go {
        ($($f:ident)::+ $(, $p:literal)?) => {
            match mr {
                1 => $($f)::+::<1 $(, $p)?>(t, overwrite, post),
                2 => $($f)::+::<2 $(, $p)?>(t, overwrite, post),
                3 => $($f)::+::<3 $(, $p)?>(t, overwrite, post),
                4 => $($f)::+::<4 $(, $p)?>(t, overwrite, post),
                5 => $($f)::+::<5 $(, $p)?>(t, overwrite, post),
                _ => $($f)::+::<6 $(, $p)?>(t, overwrite, post),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512Vnni {
        // SAFETY: forwarded from the caller; the CPU has AVX-512 F (`isa` says so).
        unsafe {
            if np == 2 {
                go!(x86_64::micro_avx512, 2)
            } else {
                go!(x86_64::micro_avx512, 1)
            }
        };
        return;
    }
    debug_assert_eq!(np, 1, "two panels per call on AVX-512 only");
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: forwarded from the caller; the CPU has AVX2 and FMA (`isa` says so).
        unsafe { go!(x86_64::micro) };
        return;
    }
    let _ = isa;
    // SAFETY: forwarded from the caller.
    unsafe { go!(micro_generic) };
}

/// [`micro`] over row-major A (`lda`) with no output stage, for kernels that build their own
/// B panels ([`crate::wgemm`] dequantizes weights into one).
///
/// # Safety
/// `a` readable for `mr` rows of `kc` elements at stride `lda`; `b` for `kc * NR` elements;
/// `c` writable for `mr` rows of `cols` elements at stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_rows(
    isa: Isa,
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
    let t = Tile { kc, a, rs: lda, cs: 1, b, c, ldc, cols };
    // SAFETY: forwarded.
    unsafe { micro(isa, mr, 1, &t, overwrite, Post::NONE) };
}

/// Stores a finished `NR`-wide accumulator row `r` of a tile into `c` (`cols` of it), through
/// the output stage.
///
/// # Safety
/// `c` writable for `cols` elements; `post`'s biases readable for row `r` and `cols` columns.
#[inline(always)]
unsafe fn store_row(
    acc: &[f32; NR],
    c: *mut f32,
    cols: usize,
    overwrite: bool,
    post: Post,
    r: usize,
) {
    for (j, &v) in acc.iter().enumerate().take(cols) {
        // SAFETY: j < cols.
        unsafe {
            let p = c.add(j);
            *p = post.one(if overwrite { v } else { *p + v }, r, j);
        }
    }
}

/// Portable micro-kernel (auto-vectorized).
///
/// # Safety
/// As [`micro`].
unsafe fn micro_generic<const R: usize>(t: &Tile, overwrite: bool, post: Post) {
    let mut acc = [[0f32; NR]; R];
    for kk in 0..t.kc {
        // SAFETY: kk < kc, r < R = mr (caller's bounds).
        let bv: &[f32; NR] = unsafe { &*(t.b.add(kk * NR) as *const [f32; NR]) };
        for (r, row) in acc.iter_mut().enumerate() {
            let av = unsafe { *t.a.add(r * t.rs + kk * t.cs) };
            for j in 0..NR {
                row[j] += av * bv[j];
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: r < mr rows of C.
        unsafe { store_row(row, t.c.add(r * t.ldc), t.cols, overwrite, post, r) };
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

/// The AVX2 + FMA micro-kernel and its output stage.
#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use super::{store_row, Activation, Post, Tile, NR, PREFETCH_ROWS};
    use std::arch::x86_64::*;

    /// The AVX2 form of [`Activation::of`] on 8 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn activation(act: Activation, v: __m256) -> __m256 {
        match act {
            Activation::None => v,
            Activation::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
            Activation::Clip(lo, hi) => {
                _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(lo)), _mm256_set1_ps(hi))
            }
            Activation::LeakyRelu(a) => {
                let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_setzero_ps());
                _mm256_blendv_ps(v, _mm256_mul_ps(v, _mm256_set1_ps(a)), neg)
            }
        }
    }

    /// The AVX-512 form of [`Activation::of`] on 16 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn activation_avx512(act: Activation, v: __m512) -> __m512 {
        match act {
            Activation::None => v,
            Activation::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
            Activation::Clip(lo, hi) => {
                _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi))
            }
            Activation::LeakyRelu(a) => {
                let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_setzero_ps());
                _mm512_mask_mul_ps(v, neg, v, _mm512_set1_ps(a))
            }
        }
    }

    /// AVX-512 micro-kernel: `R x 16P` accumulators in registers, over `P` packed B panels
    /// (the second `kc * NR` floats after the first). The columns past `cols` are masked off
    /// in every load and store of C and the column bias.
    ///
    /// # Safety
    /// As [`super::micro`] with `np = P`, and the CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn micro_avx512<const R: usize, const P: usize>(
        t: &Tile,
        overwrite: bool,
        post: Post,
    ) {
        let (a, b, rs, cs) = (t.a, t.b, t.rs, t.cs);
        let next = t.kc * NR;
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for kk in 0..t.kc {
            // SAFETY: (caller's bounds) kk < kc, r < mr, panel h < P; a prefetch never faults.
            unsafe {
                let mut bv = [_mm512_setzero_ps(); P];
                for (h, v) in bv.iter_mut().enumerate() {
                    let p = b.add(h * next + kk * NR);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_ROWS * NR) as *const i8);
                    *v = _mm512_loadu_ps(p);
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(r * rs + kk * cs));
                    for (v, &bh) in row.iter_mut().zip(&bv) {
                        *v = _mm512_fmadd_ps(av, bh, *v);
                    }
                }
            }
        }
        let mask = |h: usize| -> __mmask16 {
            let lanes = t.cols.saturating_sub(h * NR).min(NR);
            ((1u32 << lanes) - 1) as __mmask16
        };
        for (r, row) in acc.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                let m = mask(h);
                // SAFETY: r < mr rows of C; the lanes of `m` are columns < cols, which the
                // caller's bounds (C and the biases) cover; masked-off lanes are not accessed.
                unsafe {
                    let cr = t.c.add(r * t.ldc + h * NR);
                    let mut v =
                        if overwrite { v } else { _mm512_add_ps(_mm512_maskz_loadu_ps(m, cr), v) };
                    if !post.row_bias.is_null() {
                        v = _mm512_add_ps(v, _mm512_set1_ps(*post.row_bias.add(r)));
                    }
                    if !post.col_bias.is_null() {
                        let cb = _mm512_maskz_loadu_ps(m, post.col_bias.add(h * NR));
                        v = _mm512_add_ps(v, cb);
                    }
                    _mm512_mask_storeu_ps(cr, m, activation_avx512(post.act, v));
                }
            }
        }
    }

    /// AVX2 + FMA micro-kernel: `R x 16` accumulators in registers.
    ///
    /// # Safety
    /// As [`super::micro`], and the CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro<const R: usize>(t: &Tile, overwrite: bool, post: Post) {
        let (a, b, rs, cs) = (t.a, t.b, t.rs, t.cs);
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kk in 0..t.kc {
            // Packed B is read as one linear stream: fetch ahead of it (a prefetch never faults,
            // so running past the end of the data is harmless).
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PREFETCH_ROWS) * NR) as *const i8);
            // SAFETY: (caller's bounds) kk < kc, r < mr.
            unsafe {
                let b0 = _mm256_loadu_ps(b.add(kk * NR));
                let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(r * rs + kk * cs));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: r < mr rows of C, `cols` columns each; biases cover them (caller).
            unsafe {
                let cr = t.c.add(r * t.ldc);
                if t.cols == NR {
                    let (mut v0, mut v1) = if overwrite {
                        (row[0], row[1])
                    } else {
                        (
                            _mm256_add_ps(_mm256_loadu_ps(cr), row[0]),
                            _mm256_add_ps(_mm256_loadu_ps(cr.add(8)), row[1]),
                        )
                    };
                    if !post.row_bias.is_null() {
                        let rb = _mm256_set1_ps(*post.row_bias.add(r));
                        v0 = _mm256_add_ps(v0, rb);
                        v1 = _mm256_add_ps(v1, rb);
                    }
                    if !post.col_bias.is_null() {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(post.col_bias));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(post.col_bias.add(8)));
                    }
                    _mm256_storeu_ps(cr, activation(post.act, v0));
                    _mm256_storeu_ps(cr.add(8), activation(post.act, v1));
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), row[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), row[1]);
                    store_row(&tmp, cr, t.cols, overwrite, post, r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        crate::test_data::levels(n, seed, 17, 8.0, 1.0)
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn packed_products_apply_the_epilogue(
            m in 1usize..20, n in 1usize..50, k in 0usize..300, seed in any::<u32>(),
            act_i in 0usize..4, rows in any::<bool>(), cols in any::<bool>(),
        ) {
            let act = [
                Activation::None,
                Activation::Relu,
                Activation::Clip(-0.3, 0.4),
                Activation::LeakyRelu(0.2),
            ][act_i];
            let (a, b) = (fill(m * k, seed), fill(k * n, seed ^ 77));
            let (rb, cb) = (fill(m, seed ^ 3), fill(n, seed ^ 4));
            let epi = Epilogue {
                row_bias: rows.then_some(&rb[..]),
                col_bias: cols.then_some(&cb[..]),
                act: Some(act),
            };
            let mut want = vec![0.0; m * n];
            sgemm_ref(Trans::No, Trans::No, m, n, k, 1.0, &a, k, &b, n, 0.0, &mut want, n);
            for i in 0..m {
                for j in 0..n {
                    let v = want[i * n + j]
                        + if rows { rb[i] } else { 0.0 }
                        + if cols { cb[j] } else { 0.0 };
                    want[i * n + j] = act.of(v);
                }
            }
            let packed_b = PackedB::pack(Trans::No, k, n, &b, n);
            let mut c1 = vec![f32::NAN; m * n];
            sgemm_packed_with(m, &a, k, &packed_b, 0.0, &mut c1, n, &epi);
            let mut c2 = vec![f32::NAN; m * n];
            sgemm_packed_ab(&PackedA::pack(m, k, &a, k), &packed_b, &mut c2, n, &epi);
            let mut c3 = vec![f32::NAN; m * n];
            let mut by_rows = PackedB::pack(Trans::No, 0, 0, &[], 0);
            by_rows.repack_rows(k, n, |r, d| d.copy_from_slice(&b[r * n..(r + 1) * n]));
            sgemm_packed_ab(&PackedA::pack(m, k, &a, k), &by_rows, &mut c3, n, &epi);
            for ((x, y), (z, r)) in c1.iter().zip(&c2).zip(c3.iter().zip(&want)) {
                prop_assert!((x - r).abs() <= 1e-4 * (1.0 + r.abs()), "{x} vs {r}");
                prop_assert!((y - r).abs() <= 1e-4 * (1.0 + r.abs()), "{y} vs {r}");
                prop_assert!((z - r).abs() <= 1e-4 * (1.0 + r.abs()), "{z} vs {r}");
            }
            // Every micro-kernel level the CPU has (AVX-512's two-panel tiles and masked column
            // tails included), with both A sources.
            let pa = PackedA::pack(m, k, &a, k);
            for isa in crate::cpu::levels(|k| k.sgemm) {
                for src in [ASource::Packed(&pa), ASource::RowMajor(&a, k)] {
                    let mut c = vec![f32::NAN; m * n];
                    // SAFETY: `c` is m x n and A m x k; the level is one this CPU runs.
                    unsafe {
                        packed_product(isa, m, src, &packed_b, 0.0, Ptr(c.as_mut_ptr()), n, &epi, false)
                    };
                    for (x, r) in c.iter().zip(&want) {
                        prop_assert!((x - r).abs() <= 1e-4 * (1.0 + r.abs()), "{isa:?}: {x} vs {r}");
                    }
                }
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
