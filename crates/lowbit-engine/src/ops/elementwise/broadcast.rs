//! Multi-input numpy broadcasting without per-element index arithmetic.
//!
//! The output shape is split into rows: output dims of size 1 are dropped and neighbouring dims
//! where every input either follows or is broadcast alike are merged, so `[1,128,384] + [384]`
//! becomes 128 rows of 384 contiguous elements, and same-shape inputs one single row. Inside a
//! row each input is read either contiguously (step 1) or as one repeated value (step 0).

use crate::error::OpResult;
use crate::ops::util::broadcast_shapes;
use lowbit_tensor::tensor::numel;

/// How to walk N inputs broadcast to a common output shape, row by row.
pub struct Bcast {
    pub out_shape: Vec<usize>,
    /// Length of one row (the innermost merged dim).
    inner: usize,
    /// Per input: 1 when it advances along the row, 0 when broadcast over it.
    steps: Vec<usize>,
    /// Merged outer dims, outermost first.
    outer: Vec<usize>,
    /// Per input, its stride (in elements) along each outer dim (0 when broadcast).
    strides: Vec<Vec<usize>>,
}

impl Bcast {
    pub fn new(shapes: &[&[usize]]) -> OpResult<Bcast> {
        let mut out_shape: Vec<usize> = Vec::new();
        for s in shapes {
            out_shape = broadcast_shapes(&out_shape, s)?;
        }
        let rank = out_shape.len();
        let n = shapes.len();
        // Per kept output dim: its size and, per input, whether the input follows it.
        let mut dims: Vec<(usize, Vec<bool>)> = Vec::new();
        for (i, &d) in out_shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let flags: Vec<bool> = shapes
                .iter()
                .map(|s| {
                    let off = rank - s.len();
                    i >= off && s[i - off] != 1
                })
                .collect();
            match dims.last_mut() {
                Some((size, f)) if *f == flags => *size *= d,
                _ => dims.push((d, flags)),
            }
        }
        let Some((inner, inner_flags)) = dims.pop() else {
            return Ok(Bcast {
                out_shape,
                inner: 1,
                steps: vec![0; n],
                outer: vec![],
                strides: vec![vec![]; n],
            });
        };
        let steps = inner_flags.iter().map(|&f| f as usize).collect();
        let mut strides = vec![vec![0; dims.len()]; n];
        for (k, st) in strides.iter_mut().enumerate() {
            let mut acc = if inner_flags[k] { inner } else { 1 };
            for (j, (size, flags)) in dims.iter().enumerate().rev() {
                if flags[k] {
                    st[j] = acc;
                    acc *= size;
                }
            }
        }
        let outer = dims.into_iter().map(|(s, _)| s).collect();
        Ok(Bcast { out_shape, inner, steps, outer, strides })
    }

    pub fn numel(&self) -> usize {
        numel(&self.out_shape)
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Step (0 or 1) of input `k` along a row.
    pub fn step(&self, k: usize) -> usize {
        self.steps[k]
    }

    /// Number of rows (output elements / row length).
    pub fn rows(&self) -> usize {
        self.numel().checked_div(self.inner).unwrap_or(0)
    }

    /// Calls `f` with the start offset of every input for each row, in output order.
    pub fn for_each_row(&self, f: impl FnMut(&[usize])) {
        self.for_rows(0, self.rows(), f)
    }

    /// Calls `f` with the input offsets of rows `start..start + count`, in order.
    pub fn for_rows(&self, start: usize, count: usize, mut f: impl FnMut(&[usize])) {
        if count == 0 || self.numel() == 0 {
            return;
        }
        let n = self.steps.len();
        let mut offs = vec![0usize; n];
        let mut idx = vec![0usize; self.outer.len()];
        let mut rest = start;
        for d in (0..self.outer.len()).rev() {
            idx[d] = rest % self.outer[d];
            rest /= self.outer[d];
            for (o, st) in offs.iter_mut().zip(&self.strides) {
                *o += idx[d] * st[d];
            }
        }
        for _ in 1..count {
            f(&offs);
            // Odometer increment over the outer dims.
            let mut d = self.outer.len();
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                for (o, st) in offs.iter_mut().zip(&self.strides) {
                    *o += st[d];
                }
                if idx[d] < self.outer[d] {
                    break;
                }
                for (o, st) in offs.iter_mut().zip(&self.strides) {
                    *o -= st[d] * self.outer[d];
                }
                idx[d] = 0;
            }
        }
        f(&offs);
    }
}

/// Outputs at least this large are computed in parallel chunks on the rayon pool.
pub const PAR_MIN: usize = 1 << 15;
/// Elements per parallel task.
const PAR_CHUNK: usize = 1 << 14;

/// Whether an output of `n` elements is worth splitting over threads.
pub fn parallel(n: usize) -> bool {
    n >= PAR_MIN && rayon::current_num_threads() > 1
}

/// Writes one row of `f(a, b)` into `dst`.
#[inline(always)]
fn row2<A, B, O: Clone>(
    dst: &mut [O],
    a: &[A],
    b: &[B],
    (sa, sb): (usize, usize),
    f: &impl Fn(&A, &B) -> O,
) {
    let inner = dst.len();
    match (sa, sb) {
        (1, 1) => {
            for ((d, x), y) in dst.iter_mut().zip(&a[..inner]).zip(&b[..inner]) {
                *d = f(x, y);
            }
        }
        (1, _) => {
            let y = &b[0];
            for (d, x) in dst.iter_mut().zip(&a[..inner]) {
                *d = f(x, y);
            }
        }
        (_, 1) => {
            let x = &a[0];
            for (d, y) in dst.iter_mut().zip(&b[..inner]) {
                *d = f(x, y);
            }
        }
        _ => {
            dst.fill(f(&a[0], &b[0]));
        }
    }
}

/// `f(a, b)` over `a` and `b` broadcast together; returns the output shape and values.
/// Large outputs are computed in parallel row chunks.
pub fn map2<A: Sync, B: Sync, O: Clone + Default + Send>(
    a: (&[usize], &[A]),
    b: (&[usize], &[B]),
    f: impl Fn(&A, &B) -> O + Sync,
) -> OpResult<(Vec<usize>, Vec<O>)> {
    use rayon::prelude::*;
    let plan = Bcast::new(&[a.0, b.0])?;
    let (a, b) = (a.1, b.1);
    let inner = plan.inner();
    let steps = (plan.step(0), plan.step(1));
    let n = plan.numel();
    if parallel(n) {
        let mut out = vec![O::default(); n];
        let rows_per_task = PAR_CHUNK.div_ceil(inner);
        out.par_chunks_mut(rows_per_task * inner).enumerate().for_each(|(t, chunk)| {
            let count = chunk.len() / inner;
            let mut rows = chunk.chunks_exact_mut(inner);
            plan.for_rows(t * rows_per_task, count, |offs| {
                if let Some(dst) = rows.next() {
                    row2(dst, &a[offs[0]..], &b[offs[1]..], steps, &f);
                }
            });
        });
        return Ok((plan.out_shape, out));
    }
    let mut out = Vec::with_capacity(n);
    plan.for_each_row(|offs| {
        let (oa, ob) = (offs[0], offs[1]);
        match steps {
            (1, 1) => {
                out.extend(a[oa..oa + inner].iter().zip(&b[ob..ob + inner]).map(|(x, y)| f(x, y)))
            }
            (1, _) => {
                let y = &b[ob];
                out.extend(a[oa..oa + inner].iter().map(|x| f(x, y)))
            }
            (_, 1) => {
                let x = &a[oa];
                out.extend(b[ob..ob + inner].iter().map(|y| f(x, y)))
            }
            _ => out.extend(std::iter::repeat_n(f(&a[oa], &b[ob]), inner)),
        }
    });
    Ok((plan.out_shape, out))
}

/// `f(a, b, c)` over three inputs broadcast together.
pub fn map3<A, B, C, O>(
    a: (&[usize], &[A]),
    b: (&[usize], &[B]),
    c: (&[usize], &[C]),
    f: impl Fn(&A, &B, &C) -> O,
) -> OpResult<(Vec<usize>, Vec<O>)> {
    let plan = Bcast::new(&[a.0, b.0, c.0])?;
    let (a, b, c) = (a.1, b.1, c.1);
    let inner = plan.inner();
    let (sa, sb, sc) = (plan.step(0), plan.step(1), plan.step(2));
    let mut out = Vec::with_capacity(plan.numel());
    plan.for_each_row(|offs| {
        let (oa, ob, oc) = (offs[0], offs[1], offs[2]);
        if sa == 1 && sb == 1 && sc == 1 {
            out.extend(
                a[oa..oa + inner]
                    .iter()
                    .zip(&b[ob..ob + inner])
                    .zip(&c[oc..oc + inner])
                    .map(|((x, y), z)| f(x, y, z)),
            );
        } else {
            out.extend((0..inner).map(|j| f(&a[oa + j * sa], &b[ob + j * sb], &c[oc + j * sc])));
        }
    });
    Ok((plan.out_shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive2(a: &[usize], b: &[usize]) -> Vec<(usize, usize)> {
        let out = broadcast_shapes(a, b).unwrap();
        let sa = crate::ops::util::broadcast_strides(a, &out);
        let sb = crate::ops::util::broadcast_strides(b, &out);
        let n = numel(&out);
        (0..n)
            .map(|mut flat| {
                let (mut ia, mut ib) = (0, 0);
                for d in (0..out.len()).rev() {
                    let i = flat % out[d];
                    flat /= out[d];
                    ia += i * sa[d];
                    ib += i * sb[d];
                }
                (ia, ib)
            })
            .collect()
    }

    #[test]
    fn rows_match_naive_indexing() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[1, 5, 4], &[4]),
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 1, 4], &[3, 1]),
            (&[], &[3]),
            (&[3, 1, 2, 1], &[1, 4, 1, 5]),
            (&[2, 3], &[1, 1]),
            (&[2, 0, 3], &[3]),
            (&[2, 3, 0], &[0]),
            (&[1], &[]),
        ];
        for (a, b) in cases {
            let va: Vec<usize> = (0..numel(a)).collect();
            let vb: Vec<usize> = (0..numel(b)).collect();
            let (shape, got) = map2((a, &va), (b, &vb), |&x, &y| (x, y)).unwrap();
            assert_eq!(shape, broadcast_shapes(a, b).unwrap());
            assert_eq!(got, naive2(a, b), "{a:?} with {b:?}");
        }
    }

    #[test]
    fn parallel_rows_match_sequential() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (a, b) in [
            (vec![3, 70, 300], vec![300]),
            (vec![70_000], vec![1]),
            (vec![9, 1, 5000], vec![9, 3, 1]),
        ] {
            let va: Vec<usize> = (0..numel(&a)).collect();
            let vb: Vec<usize> = (0..numel(&b)).collect();
            let (_, got) = pool.install(|| map2((&a, &va), (&b, &vb), |&x, &y| (x, y))).unwrap();
            assert_eq!(got, naive2(&a, &b), "{a:?} with {b:?}");
        }
    }

    #[test]
    fn three_way_broadcast() {
        let c = [true, false];
        let x = [1, 2, 3, 4];
        let y = [9];
        let (shape, got) = map3(
            (&[2, 1], &c[..]),
            (&[2, 2], &x[..]),
            (&[], &y[..]),
            |&c, &x, &y| {
                if c {
                    x
                } else {
                    y
                }
            },
        )
        .unwrap();
        assert_eq!(shape, vec![2, 2]);
        assert_eq!(got, vec![1, 2, 9, 9]);
    }
}
