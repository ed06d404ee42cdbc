//! `Einsum`: the equation is parsed once at load (explicit `->` output or numpy's implicit
//! one: broadcast dims, then the letters used once, sorted). Each operand first takes the
//! diagonal of repeated letters, broadcasts size-1 dims to the size the other operands give the
//! letter (`...` dims included), and sums away letters no one else reads; operands are then
//! contracted left to right, each pair as one batched GEMM (`[batch, kept A, summed] ×
//! [batch, summed, kept B]`, through [`super::matmul`]), and the result is permuted into the
//! output's order. Computes in f32; other float inputs are converted and the result back.

use crate::bail;
use crate::error::OpResult;
use crate::op::{BuildCtx, Kernel, KernelResult};
use crate::ops::nn::{f32_data, from_f32, same_float_dtype};
use crate::ops::util::strides;
use lowbit_tensor::tensor::numel;
use lowbit_tensor::Tensor;

/// A subscript: a letter, or the `k`-th dim of the broadcast (`...`) block counted from its
/// start when the block is as wide as the widest operand's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Label {
    Ellipsis(usize),
    Letter(u8),
}

/// One term of the equation: letters around at most one `...`.
#[derive(Debug, Clone)]
struct Term {
    before: Vec<u8>,
    /// `Some(letters after)` when the term has an ellipsis.
    after: Option<Vec<u8>>,
}

impl Term {
    fn parse(s: &str) -> OpResult<Term> {
        let letters = |p: &str| -> OpResult<Vec<u8>> {
            p.bytes()
                .map(|c| {
                    if !c.is_ascii_alphabetic() {
                        bail!("equation term '{s}' has '{}', not a letter", c as char);
                    }
                    Ok(c)
                })
                .collect()
        };
        match s.split_once("...") {
            None => Ok(Term { before: letters(s)?, after: None }),
            Some((a, b)) => {
                if b.contains("...") {
                    bail!("equation term '{s}' has more than one '...'");
                }
                Ok(Term { before: letters(a)?, after: Some(letters(b)?) })
            }
        }
    }

    fn num_letters(&self) -> usize {
        self.before.len() + self.after.as_ref().map_or(0, Vec::len)
    }

    /// The labels of an operand of `rank` dims, its `...` right-aligned in a block `width`
    /// wide.
    fn labels(&self, rank: usize, width: usize) -> OpResult<Vec<Label>> {
        let n = self.num_letters();
        let mut out: Vec<Label> = self.before.iter().map(|&c| Label::Letter(c)).collect();
        match &self.after {
            None if rank != n => bail!("equation term has {n} letters for an input of rank {rank}"),
            None => {}
            Some(after) => {
                if rank < n {
                    bail!("equation term has {n} letters for an input of rank {rank}");
                }
                let e = rank - n;
                out.extend((width - e..width).map(Label::Ellipsis));
                out.extend(after.iter().map(|&c| Label::Letter(c)));
            }
        }
        Ok(out)
    }
}

/// A parsed equation.
#[derive(Debug)]
struct Equation {
    inputs: Vec<Term>,
    /// `None` for the implicit output.
    output: Option<Term>,
}

impl Equation {
    fn parse(eq: &str) -> OpResult<Equation> {
        let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l.to_string(), Some(r.to_string())),
            None => (eq.clone(), None),
        };
        let inputs = lhs.split(',').map(Term::parse).collect::<OpResult<Vec<_>>>()?;
        let output = rhs.map(|r| Term::parse(&r)).transpose()?;
        Ok(Equation { inputs, output })
    }
}

/// An operand with a label per dim, in f32.
#[derive(Debug, Clone)]
struct Operand {
    labels: Vec<Label>,
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Operand {
    /// The operand whose dim `j` (size `shape[j]`) walks this one's storage with stride
    /// `step[j]` (0 repeats, a sum of strides walks a diagonal).
    fn gather(&self, labels: Vec<Label>, shape: Vec<usize>, step: &[usize]) -> Operand {
        let n = numel(&shape);
        let mut data = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        let mut off = 0usize;
        for _ in 0..n {
            data.push(self.data[off]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                off += step[d];
                if idx[d] < shape[d] {
                    break;
                }
                off -= step[d] * shape[d];
                idx[d] = 0;
            }
        }
        Operand { labels, shape, data }
    }

    /// Takes the diagonal of repeated labels (one dim per label, first-seen order).
    fn diagonal(self) -> OpResult<Operand> {
        let st = strides(&self.shape);
        let mut labels: Vec<Label> = Vec::new();
        let (mut shape, mut step) = (Vec::new(), Vec::new());
        for (d, &l) in self.labels.iter().enumerate() {
            match labels.iter().position(|&x| x == l) {
                Some(p) => {
                    if shape[p] != self.shape[d] {
                        bail!(
                            "a repeated subscript spans dims of sizes {} and {}",
                            shape[p],
                            self.shape[d]
                        );
                    }
                    step[p] += st[d];
                }
                None => {
                    labels.push(l);
                    shape.push(self.shape[d]);
                    step.push(st[d]);
                }
            }
        }
        if labels.len() == self.labels.len() {
            return Ok(self);
        }
        Ok(self.gather(labels, shape, &step))
    }

    /// Repeats size-1 dims to `size(label)`.
    fn broadcast(self, size: impl Fn(Label) -> usize) -> Operand {
        let target: Vec<usize> = self.labels.iter().map(|&l| size(l)).collect();
        if target == self.shape {
            return self;
        }
        let st = strides(&self.shape);
        let step: Vec<usize> =
            st.iter().zip(&self.shape).map(|(&s, &n)| if n == 1 { 0 } else { s }).collect();
        self.gather(self.labels.clone(), target, &step)
    }

    /// Sums away every label `keep` rejects.
    fn sum_except(self, keep: impl Fn(Label) -> bool) -> Operand {
        if self.labels.iter().all(|&l| keep(l)) {
            return self;
        }
        let kept: Vec<usize> = (0..self.labels.len()).filter(|&d| keep(self.labels[d])).collect();
        let shape: Vec<usize> = kept.iter().map(|&d| self.shape[d]).collect();
        let ost = strides(&shape);
        let mut step = vec![0usize; self.shape.len()];
        for (j, &d) in kept.iter().enumerate() {
            step[d] = ost[j];
        }
        let mut data = vec![0.0f32; numel(&shape)];
        let mut idx = vec![0usize; self.shape.len()];
        let mut off = 0usize;
        for &v in &self.data {
            data[off] += v;
            for d in (0..self.shape.len()).rev() {
                idx[d] += 1;
                off += step[d];
                if idx[d] < self.shape[d] {
                    break;
                }
                off -= step[d] * self.shape[d];
                idx[d] = 0;
            }
        }
        let labels = kept.iter().map(|&d| self.labels[d]).collect();
        Operand { labels, shape, data }
    }

    /// This operand with its dims in the order of `labels` (each of its labels once).
    fn permute(self, labels: &[Label]) -> Operand {
        if labels == self.labels.as_slice() {
            return self;
        }
        let st = strides(&self.shape);
        let pos = |l: &Label| self.labels.iter().position(|x| x == l).unwrap_or(0);
        let shape: Vec<usize> = labels.iter().map(|l| self.shape[pos(l)]).collect();
        let step: Vec<usize> = labels.iter().map(|l| st[pos(l)]).collect();
        self.gather(labels.to_vec(), shape, &step)
    }

    fn size(&self, ls: &[Label]) -> usize {
        ls.iter()
            .map(|l| self.shape[self.labels.iter().position(|x| x == l).unwrap_or(0)])
            .product()
    }
}

/// `a · b` over the labels they share that `keep` rejects; shared labels `keep` accepts are
/// batch dims. Labels only one side has are all kept (callers summed the others away).
fn contract(a: Operand, b: Operand, keep: impl Fn(Label) -> bool) -> OpResult<Operand> {
    let shared = |l: &Label| b.labels.contains(l);
    let batch: Vec<Label> = a.labels.iter().copied().filter(|l| shared(l) && keep(*l)).collect();
    let summed: Vec<Label> = a.labels.iter().copied().filter(|l| shared(l) && !keep(*l)).collect();
    let a_only: Vec<Label> = a.labels.iter().copied().filter(|l| !shared(l)).collect();
    let b_only: Vec<Label> = b.labels.iter().copied().filter(|l| !a.labels.contains(l)).collect();
    let (nb, m, k, n) = (a.size(&batch), a.size(&a_only), a.size(&summed), b.size(&b_only));
    let mut out_labels = batch.clone();
    out_labels.extend(&a_only);
    out_labels.extend(&b_only);
    let mut shape: Vec<usize> = batch.iter().map(|l| a.shape[pos(&a.labels, l)]).collect();
    shape.extend(a_only.iter().map(|l| a.shape[pos(&a.labels, l)]));
    shape.extend(b_only.iter().map(|l| b.shape[pos(&b.labels, l)]));

    let a = a.permute(&[batch.clone(), a_only, summed.clone()].concat());
    let b = b.permute(&[batch, summed, b_only].concat());
    let at = Tensor::from_vec(vec![nb, m, k], a.data)?;
    let bt = Tensor::from_vec(vec![nb, k, n], b.data)?;
    let data = super::matmul(&at, &bt)?.into_vec::<f32>()?;
    Ok(Operand { labels: out_labels, shape, data })
}

fn pos(labels: &[Label], l: &Label) -> usize {
    labels.iter().position(|x| x == l).unwrap_or(0)
}

struct EinsumKernel {
    eq: Equation,
}

pub(super) fn build_einsum(ctx: &BuildCtx) -> KernelResult {
    let Some(text) = ctx.attrs.string("equation")? else {
        bail!("attribute 'equation' is required");
    };
    let eq =
        Equation::parse(&text).map_err(|e| crate::OpError(format!("equation '{text}': {e}")))?;
    if eq.inputs.len() != ctx.num_inputs() {
        bail!("equation '{text}' has {} terms for {} inputs", eq.inputs.len(), ctx.num_inputs());
    }
    Ok(Box::new(EinsumKernel { eq }))
}

impl Kernel for EinsumKernel {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        let ts: Vec<&Tensor> =
            (0..inputs.len()).map(|i| crate::op::input(inputs, i)).collect::<OpResult<_>>()?;
        let dtype = same_float_dtype(&ts)?;
        let width = ts
            .iter()
            .zip(&self.eq.inputs)
            .filter(|(_, term)| term.after.is_some())
            .map(|(t, term)| t.rank().saturating_sub(term.num_letters()))
            .max()
            .unwrap_or(0);
        let mut ops = Vec::with_capacity(ts.len());
        for (t, term) in ts.iter().zip(&self.eq.inputs) {
            let labels = term.labels(t.rank(), width)?;
            let op = Operand { labels, shape: t.shape().to_vec(), data: f32_data(t)?.into_owned() };
            ops.push(op.diagonal()?);
        }

        // Each label's size over all operands: equal, or 1 (broadcast).
        let mut sizes: Vec<(Label, usize)> = Vec::new();
        for op in &ops {
            for (&l, &n) in op.labels.iter().zip(&op.shape) {
                match sizes.iter_mut().find(|(x, _)| *x == l) {
                    None => sizes.push((l, n)),
                    Some((_, s)) if *s == n || n == 1 => {}
                    Some((_, s)) if *s == 1 => *s = n,
                    Some((_, s)) => {
                        bail!("subscript {l:?} has sizes {s} and {n} in different inputs")
                    }
                }
            }
        }
        let size_of = |l: Label| sizes.iter().find(|(x, _)| *x == l).map_or(1, |p| p.1);

        let output: Vec<Label> = match &self.eq.output {
            Some(term) => {
                let mut out: Vec<Label> = term.before.iter().map(|&c| Label::Letter(c)).collect();
                if let Some(after) = &term.after {
                    out.extend((0..width).map(Label::Ellipsis));
                    out.extend(after.iter().map(|&c| Label::Letter(c)));
                }
                for l in &out {
                    if !sizes.iter().any(|(x, _)| x == l) {
                        bail!("output subscript {l:?} is in no input");
                    }
                }
                out
            }
            None => {
                let mut once: Vec<Label> = sizes
                    .iter()
                    .map(|p| p.0)
                    .filter(|l| matches!(l, Label::Letter(_)))
                    .filter(|l| {
                        let terms = self.eq.inputs.iter();
                        let count = |t: &Term| {
                            let all = t.before.iter().chain(t.after.iter().flatten());
                            all.filter(|&&c| Label::Letter(c) == *l).count()
                        };
                        terms.map(count).sum::<usize>() == 1
                    })
                    .collect();
                once.sort();
                let mut out: Vec<Label> = (0..width).map(Label::Ellipsis).collect();
                out.extend(once);
                out
            }
        };

        // Broadcast, and sum what only this operand reads; then contract left to right.
        let n = ops.len();
        let wanted_after = |ops: &[Operand], i: usize, l: Label| {
            output.contains(&l) || ops.iter().skip(i + 1).any(|o| o.labels.contains(&l))
        };
        for i in 0..n {
            let op = std::mem::replace(
                &mut ops[i],
                Operand { labels: vec![], shape: vec![], data: vec![] },
            );
            let others = |l: Label| {
                output.contains(&l)
                    || ops.iter().enumerate().any(|(j, o)| j != i && o.labels.contains(&l))
            };
            let op = op.broadcast(size_of).sum_except(others);
            ops[i] = op;
        }
        let mut acc = ops[0].clone();
        for i in 1..n {
            let b = ops[i].clone();
            let acc_keep = |l: Label| wanted_after(&ops, i, l) || b.labels.contains(&l);
            acc = acc.sum_except(acc_keep);
            acc = contract(acc, b, |l| wanted_after(&ops, i, l))?;
        }
        let acc = acc.sum_except(|l| output.contains(&l)).permute(&output);
        Ok(vec![from_f32(dtype, acc.shape, acc.data)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(eq: &str, ins: &[(Vec<usize>, Vec<f32>)]) -> OpResult<Tensor> {
        let k = EinsumKernel { eq: Equation::parse(eq)? };
        let ts: Vec<Tensor> =
            ins.iter().map(|(s, v)| Tensor::from_vec(s.clone(), v.clone()).unwrap()).collect();
        let args: Vec<Option<&Tensor>> = ts.iter().map(Some).collect();
        Ok(k.run(&args)?.remove(0))
    }

    fn iota(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn matmul_trace_and_outer_product_match_loops() {
        let a = (vec![2, 3], iota(6));
        let b = (vec![3, 2], iota(6));
        let c = run("ij,jk->ik", &[a.clone(), b.clone()]).unwrap();
        assert_eq!(c.as_f32().unwrap(), &[10.0, 13.0, 28.0, 40.0]);
        // implicit output: letters used once, sorted → "ik" again
        assert_eq!(run("ij,jk", &[a.clone(), b]).unwrap().as_f32().unwrap(), c.as_f32().unwrap());
        let sq = (vec![3, 3], iota(9));
        assert_eq!(run("ii", std::slice::from_ref(&sq)).unwrap().as_f32().unwrap(), &[12.0]);
        assert_eq!(run("ii->i", &[sq]).unwrap().as_f32().unwrap(), &[0.0, 4.0, 8.0]);
        let outer = run("i,j->ji", &[(vec![2], vec![1.0, 2.0]), (vec![3], vec![1.0, 10.0, 100.0])])
            .unwrap();
        assert_eq!(outer.shape(), [3, 2]);
        assert_eq!(outer.as_f32().unwrap(), &[1.0, 2.0, 10.0, 20.0, 100.0, 200.0]);
    }

    #[test]
    fn ellipsis_broadcasts_and_three_operands_chain() {
        // [2,1,2] and [3,2] under "...j,...j->..." broadcast to [2,3].
        let x = (vec![2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let y = (vec![3, 2], vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let z = run("...j,...j->...", &[x, y]).unwrap();
        assert_eq!(z.shape(), [2, 3]);
        assert_eq!(z.as_f32().unwrap(), &[1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
        // i,ij,j over a 2x2 matrix: x^T A y.
        let v = run(
            "i,ij,j->",
            &[
                (vec![2], vec![1.0, 2.0]),
                (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
                (vec![2], vec![5.0, 6.0]),
            ],
        )
        .unwrap();
        assert_eq!(v.shape(), [] as [usize; 0]);
        // [1,2]·[[1,2],[3,4]] = [7,10]; ·[5,6] = 95
        assert_eq!(v.as_f32().unwrap(), &[95.0]);
    }

    #[test]
    fn bad_equations_are_errors() {
        assert!(Equation::parse("i1,j").is_err());
        assert!(Equation::parse("...i...").is_err());
        assert!(run("ij->k", &[(vec![1, 1], vec![0.0])]).is_err());
        assert!(run("ijk", &[(vec![1, 1], vec![0.0])]).is_err());
        assert!(run("i,i", &[(vec![2], vec![0.0; 2]), (vec![3], vec![0.0; 3])]).is_err());
    }
}
