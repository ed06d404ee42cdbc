//! Constant folding for shape arithmetic: small tensors whose values are known (initializers,
//! `Constant` nodes, results of ops on them; at most [`MAX_CONST_ELEMS`] elements), with integer
//! elements that may be symbolic dims (the elements of a `Shape` result), so
//! `Shape -> Gather -> Concat -> Reshape` keeps `batch` and `seq` by name.

use lowbit_tensor::DType;

use super::sym::{Mono, SymDim};
use super::{Cx, MAX_CONST_ELEMS};
use crate::pb::TensorProto;
use crate::tensor_proto::tensor_from_proto;

/// One element of a known tensor.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Elem {
    /// Integers and bools (0/1); may be symbolic (elements of a `Shape` result).
    I(Mono),
    F(f64),
}

impl Elem {
    pub(super) fn int(&self) -> Option<i64> {
        match self {
            Elem::I(m) => m.as_int(),
            Elem::F(_) => None,
        }
    }

    pub(super) fn num(&self) -> Option<f64> {
        match self {
            Elem::I(m) => m.as_int().map(|k| k as f64),
            Elem::F(f) => Some(*f),
        }
    }
}

/// A small tensor whose contents are known (possibly symbolically).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Const {
    pub(super) shape: Vec<usize>,
    pub(super) data: Vec<Elem>,
}

impl Const {
    pub(super) fn ints(&self) -> Option<Vec<i64>> {
        self.data.iter().map(Elem::int).collect()
    }

    pub(super) fn dims(&self) -> Option<Vec<SymDim>> {
        self.data
            .iter()
            .map(|e| match e {
                Elem::I(m) => Some(m.to_dim()),
                Elem::F(_) => None,
            })
            .collect()
    }

    pub(super) fn from_proto(t: &TensorProto) -> Option<Const> {
        let n: i64 = t.dims.iter().product();
        if n < 0 || n as usize > MAX_CONST_ELEMS {
            return None;
        }
        let tensor = tensor_from_proto(t).ok()?;
        let shape = tensor.shape().to_vec();
        let data = if tensor.dtype().is_float() {
            tensor.to_f64_vec().ok()?.into_iter().map(Elem::F).collect()
        } else if tensor.dtype() == DType::String {
            return None;
        } else {
            tensor.to_i64_vec().ok()?.into_iter().map(|k| Elem::I(Mono::int(k))).collect()
        };
        Some(Const { shape, data })
    }

    pub(super) fn reshaped(&self, shape: &[SymDim]) -> Option<Const> {
        let shape: Vec<usize> = shape
            .iter()
            .map(|d| d.known().and_then(|k| usize::try_from(k).ok()))
            .collect::<Option<_>>()?;
        (shape.iter().product::<usize>() == self.data.len())
            .then(|| Const { shape, data: self.data.clone() })
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Flat indices into a tensor of `shape` of the elements at the cartesian product of
/// `picks[axis]` (row-major order).
pub(super) fn pick_indices(shape: &[usize], picks: &[Vec<usize>]) -> Vec<usize> {
    let st = strides(shape);
    let mut out = vec![0usize];
    for (ax, p) in picks.iter().enumerate() {
        let stride = st[ax];
        out = out.iter().flat_map(|&base| p.iter().map(move |&i| base + i * stride)).collect();
    }
    out
}

/// For each element of a tensor of `out` shape, the flat index of the element of a tensor of
/// `shape` that broadcasts to it.
fn broadcast_indices(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let off = out.len() - shape.len();
    let picks: Vec<Vec<usize>> = out
        .iter()
        .enumerate()
        .map(
            |(ax, &n)| {
                if ax < off || shape[ax - off] == 1 {
                    vec![0; n]
                } else {
                    (0..n).collect()
                }
            },
        )
        .collect();
    let mut padded = vec![1usize; off];
    padded.extend_from_slice(shape);
    pick_indices(&padded, &picks)
}

/// Folding of the ops whose result is computed element by element from known inputs.
impl Cx<'_> {
    /// Inputs `0..n` broadcast to `out_shape`, when all are known and the result is small.
    fn const_operands(
        &self,
        out_shape: &[SymDim],
        n: usize,
    ) -> Option<(Vec<usize>, Vec<Vec<Elem>>)> {
        let shape: Vec<usize> =
            out_shape.iter().map(|d| d.known().map(|k| k as usize)).collect::<Option<_>>()?;
        if shape.iter().product::<usize>() > MAX_CONST_ELEMS {
            return None;
        }
        let mut ops = Vec::new();
        for i in 0..n {
            let c = self.cval(i)?;
            let idx = broadcast_indices(&c.shape, &shape);
            ops.push(idx.iter().map(|&j| c.data[j].clone()).collect());
        }
        Some((shape, ops))
    }

    pub(super) fn fold_binary(&self, op: &str, out_shape: &[SymDim]) -> Option<Const> {
        if self.node.input.len() != 2 {
            return None;
        }
        let (shape, ops) = self.const_operands(out_shape, 2)?;
        let data = ops[0]
            .iter()
            .zip(&ops[1])
            .map(|(a, b)| binary_elem(op, a, b))
            .collect::<Option<Vec<_>>>()?;
        Some(Const { shape, data })
    }

    pub(super) fn fold_where(&self, out_shape: &[SymDim]) -> Option<Const> {
        let (shape, ops) = self.const_operands(out_shape, 3)?;
        let data = (0..ops[0].len())
            .map(|i| {
                Some(if ops[0][i].int()? != 0 { ops[1][i].clone() } else { ops[2][i].clone() })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Const { shape, data })
    }

    pub(super) fn fold_concat(&self, axis: usize, shape: &[SymDim]) -> Option<Const> {
        let cs: Vec<&Const> =
            (0..self.node.input.len()).map(|i| self.cval(i)).collect::<Option<_>>()?;
        let out_shape: Vec<usize> =
            shape.iter().map(|d| d.known().map(|k| k as usize)).collect::<Option<_>>()?;
        let outer: usize = out_shape[..axis].iter().product();
        let mut data = Vec::new();
        for o in 0..outer {
            for c in &cs {
                let chunk: usize = c.shape[axis..].iter().product();
                data.extend_from_slice(c.data.get(o * chunk..(o + 1) * chunk)?);
            }
        }
        (data.len() == out_shape.iter().product::<usize>())
            .then_some(Const { shape: out_shape, data })
    }
}

fn binary_elem(op: &str, a: &Elem, b: &Elem) -> Option<Elem> {
    let b2i = |x: bool| Elem::I(Mono::int(x as i64));
    match (a, b) {
        (Elem::I(x), Elem::I(y)) => Some(match op {
            "Add" => Elem::I(x.add(y)?),
            "Sub" => Elem::I(x.add(&y.neg())?),
            "Mul" => Elem::I(x.mul(y)),
            "Div" => match (x.as_int(), y.as_int()) {
                (Some(p), Some(q)) => Elem::I(Mono::int(p.checked_div(q)?)),
                _ => Elem::I(x.div(y)?),
            },
            "Max" | "Min" => {
                let (p, q) = (x.as_int()?, y.as_int()?);
                Elem::I(Mono::int(if op == "Max" { p.max(q) } else { p.min(q) }))
            }
            // Symbolic dims are positive: they equal a number only when it is the same
            // symbol; a symbol never equals 0 or a negative number.
            "Equal" => match (x.as_int(), y.as_int()) {
                (Some(p), Some(q)) => b2i(p == q),
                (None, None) if x == y => b2i(true),
                (Some(p), None) | (None, Some(p)) if p <= 0 => b2i(false),
                _ => return None,
            },
            "Less" => b2i(x.as_int()? < y.as_int()?),
            "Greater" => b2i(x.as_int()? > y.as_int()?),
            "LessOrEqual" => b2i(x.as_int()? <= y.as_int()?),
            "GreaterOrEqual" => b2i(x.as_int()? >= y.as_int()?),
            "And" => b2i(x.as_int()? != 0 && y.as_int()? != 0),
            "Or" => b2i(x.as_int()? != 0 || y.as_int()? != 0),
            _ => return None,
        }),
        _ => {
            let (p, q) = (a.num()?, b.num()?);
            let float = matches!(a, Elem::F(_));
            let num = |v: f64| if float { Elem::F(v) } else { Elem::I(Mono::int(v as i64)) };
            Some(match op {
                "Add" => num(p + q),
                "Sub" => num(p - q),
                "Mul" => num(p * q),
                "Div" => num(p / q),
                "Max" => num(p.max(q)),
                "Min" => num(p.min(q)),
                "Equal" => b2i(p == q),
                "Less" => b2i(p < q),
                "Greater" => b2i(p > q),
                "LessOrEqual" => b2i(p <= q),
                "GreaterOrEqual" => b2i(p >= q),
                _ => return None,
            })
        }
    }
}

pub(super) fn fold_unary(op: &str, c: &Const) -> Option<Const> {
    let data = c
        .data
        .iter()
        .map(|e| match (op, e) {
            ("Identity", e) => Some(e.clone()),
            ("Neg", Elem::I(m)) => Some(Elem::I(m.neg())),
            ("Neg", Elem::F(f)) => Some(Elem::F(-f)),
            ("Abs", Elem::I(m)) => m.as_int().map(|k| Elem::I(Mono::int(k.abs()))),
            ("Abs", Elem::F(f)) => Some(Elem::F(f.abs())),
            ("Floor", Elem::F(f)) => Some(Elem::F(f.floor())),
            ("Ceil", Elem::F(f)) => Some(Elem::F(f.ceil())),
            ("Sqrt", Elem::F(f)) => Some(Elem::F(f.sqrt())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Const { shape: c.shape.clone(), data })
}

pub(super) fn cast_const(c: &Const, to: DType) -> Option<Const> {
    let data = c
        .data
        .iter()
        .map(|e| {
            Some(match (e, to) {
                (Elem::I(m), DType::Bool) => Elem::I(Mono::int((m.as_int()? != 0) as i64)),
                (Elem::I(m), d) if d.is_float() => Elem::F(m.as_int()? as f64),
                (Elem::I(m), _) => Elem::I(m.clone()),
                (Elem::F(f), DType::Bool) => Elem::I(Mono::int((*f != 0.0) as i64)),
                (Elem::F(f), d) if d.is_float() => Elem::F(*f),
                (Elem::F(f), _) => Elem::I(Mono::int(*f as i64)),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Const { shape: c.shape.clone(), data })
}
