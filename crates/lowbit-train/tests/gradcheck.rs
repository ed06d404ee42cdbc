//! Every op's backward pass against central finite differences of its forward pass, on random
//! inputs (proptest draws the seeds and shapes). The checked loss is `Σ y·r` for a random `r`,
//! so each check covers the whole Jacobian-vector product.

use lowbit_data::Rng;
use lowbit_train::arr::Arr;
use lowbit_train::ops::conv::ConvAttrs;
use lowbit_train::ops::elementwise::{Binary, Unary};
use lowbit_train::ops::linalg::GemmAttrs;
use lowbit_train::ops::pool::PoolAttrs;
use lowbit_train::ops::Op;
use proptest::prelude::*;

fn randn(rng: &mut Rng, shape: &[usize], scale: f32) -> Arr {
    let n = shape.iter().product();
    Arr::new(shape.to_vec(), rng.normals(n, scale))
}

/// Values at least `gap` apart (and away from 0), shuffled: max pooling and ReLU keep their
/// choices under the finite-difference step.
fn distinct(rng: &mut Rng, shape: &[usize], gap: f32) -> Arr {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> =
        (0..n).map(|i| (i as f32 - (n as f32 - 1.0) / 2.0 + 0.25) * gap).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    Arr::new(shape.to_vec(), v)
}

fn loss(op: &Op, xs: &[Option<Arr>], r: &[f32]) -> f64 {
    let refs: Vec<Option<&Arr>> = xs.iter().map(|x| x.as_ref()).collect();
    let y = op.forward(&refs).expect("forward");
    y.data.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Checks the gradients of inputs `wrt` (at most 40 elements each, spread over the tensor).
fn check(op: &Op, xs: Vec<Option<Arr>>, wrt: &[usize], h: f32, tol: f32, seed: u64) {
    let mut rng = Rng::new(seed ^ 0x9e37);
    let refs: Vec<Option<&Arr>> = xs.iter().map(|x| x.as_ref()).collect();
    let y = op.forward(&refs).expect("forward");
    let r = randn(&mut rng, &y.shape, 1.0);
    let grads = op.backward(&refs, &y, &r).expect("backward");
    for &i in wrt {
        let x = xs[i].as_ref().unwrap();
        let g = grads[i].as_ref().unwrap_or_else(|| panic!("{op:?}: no gradient for input {i}"));
        assert_eq!(g.shape, x.shape, "{op:?}: gradient shape of input {i}");
        let n = x.len();
        let picks: Vec<usize> =
            if n <= 40 { (0..n).collect() } else { (0..40).map(|k| k * n / 40).collect() };
        for j in picks {
            let mut plus = xs.clone();
            plus[i].as_mut().unwrap().data[j] += h;
            let mut minus = xs.clone();
            minus[i].as_mut().unwrap().data[j] -= h;
            let num =
                ((loss(op, &plus, &r.data) - loss(op, &minus, &r.data)) / (2.0 * h as f64)) as f32;
            let ana = g.data[j];
            assert!(
                (num - ana).abs() <= tol * (1.0 + num.abs()),
                "{op:?}: input {i} element {j}: analytic {ana} vs numeric {num}"
            );
        }
    }
}

fn some(v: Vec<Arr>) -> Vec<Option<Arr>> {
    v.into_iter().map(Some).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn unary_ops(seed in any::<u64>(), n in 1usize..20) {
        let mut rng = Rng::new(seed);
        let smooth = [Unary::Sigmoid, Unary::Tanh, Unary::Erf, Unary::Neg, Unary::Exp, Unary::Identity];
        for u in smooth {
            check(&Op::Unary(u), some(vec![randn(&mut rng, &[n], 1.0)]), &[0], 1e-2, 2e-2, seed);
        }
        // Kinked ones away from their kinks.
        let x = distinct(&mut rng, &[n], 0.37);
        check(&Op::Unary(Unary::Relu), some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
        check(&Op::Unary(Unary::LeakyRelu(0.1)), some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
        check(&Op::Unary(Unary::HardSigmoid { alpha: 0.2, beta: 0.5 }), some(vec![x.clone()]), &[0], 1e-3, 2e-2, seed);
        check(&Op::Unary(Unary::HardSwish), some(vec![x.clone()]), &[0], 1e-3, 2e-2, seed);
        let pos = Arr::new(vec![n], x.data.iter().map(|v| v.abs() + 0.5).collect());
        check(&Op::Unary(Unary::Sqrt), some(vec![pos]), &[0], 1e-3, 2e-2, seed);
        let lo = Arr::scalar(-0.5);
        let hi = Arr::scalar(0.8);
        check(&Op::Clip { min: None, max: None }, vec![Some(x), Some(lo), Some(hi)], &[0], 1e-3, 2e-2, seed);
    }

    #[test]
    fn binary_ops_broadcast(seed in any::<u64>(), a in 1usize..4, b in 1usize..4, c in 1usize..5) {
        let mut rng = Rng::new(seed);
        for (sa, sb) in [(vec![a, b, c], vec![a, b, c]), (vec![a, b, c], vec![c]), (vec![a, 1, c], vec![b, 1]), (vec![1], vec![a, c])] {
            for op in [Binary::Add, Binary::Sub, Binary::Mul] {
                check(&Op::Binary(op), some(vec![randn(&mut rng, &sa, 1.0), randn(&mut rng, &sb, 1.0)]), &[0, 1], 1e-2, 2e-2, seed);
            }
            let den = Arr::new(sb.clone(), randn(&mut rng, &sb, 1.0).data.iter().map(|v| v.signum() * (v.abs() + 1.0)).collect());
            check(&Op::Binary(Binary::Div), some(vec![randn(&mut rng, &sa, 1.0), den]), &[0, 1], 1e-3, 2e-2, seed);
            let base = Arr::new(sa.clone(), randn(&mut rng, &sa, 1.0).data.iter().map(|v| v.abs() + 0.5).collect());
            check(&Op::Binary(Binary::Pow), some(vec![base, randn(&mut rng, &sb, 0.5)]), &[0, 1], 1e-3, 3e-2, seed);
        }
    }

    #[test]
    fn gemm(seed in any::<u64>(), m in 1usize..5, n in 1usize..6, k in 1usize..7, ta: bool, tb: bool) {
        let mut rng = Rng::new(seed);
        let a = randn(&mut rng, &if ta { [k, m] } else { [m, k] }, 1.0);
        let b = randn(&mut rng, &if tb { [n, k] } else { [k, n] }, 1.0);
        let op = Op::Gemm(GemmAttrs { alpha: 0.7, beta: 1.3, trans_a: ta, trans_b: tb });
        check(&op, some(vec![a.clone(), b.clone(), randn(&mut rng, &[n], 1.0)]), &[0, 1, 2], 1e-2, 2e-2, seed);
        check(&op, some(vec![a, b, randn(&mut rng, &[m, n], 1.0)]), &[0, 1, 2], 1e-2, 2e-2, seed);
    }

    #[test]
    fn matmul(seed in any::<u64>(), bt in 1usize..3, m in 1usize..4, n in 1usize..5, k in 1usize..5) {
        let mut rng = Rng::new(seed);
        // A weight shared across the batch (2-D), and batched × batched (attention).
        check(&Op::MatMul, some(vec![randn(&mut rng, &[bt, m, k], 1.0), randn(&mut rng, &[k, n], 1.0)]), &[0, 1], 1e-2, 2e-2, seed);
        check(&Op::MatMul, some(vec![randn(&mut rng, &[bt, 2, m, k], 1.0), randn(&mut rng, &[bt, 2, k, n], 1.0)]), &[0, 1], 1e-2, 2e-2, seed);
    }

    #[test]
    fn conv(seed in any::<u64>(), group in 1usize..3, cg in 1usize..3, og in 1usize..3, h in 3usize..7, kk in 1usize..4, stride in 1usize..3, pad in 0usize..2, dil in 1usize..3, bias: bool) {
        prop_assume!(h + 2 * pad > (kk - 1) * dil);
        let mut rng = Rng::new(seed);
        let (ci, co) = (group * cg, group * og);
        let x = randn(&mut rng, &[2, ci, h, h + 1], 1.0);
        let w = randn(&mut rng, &[co, cg, kk, kk], 1.0);
        let op = Op::Conv(ConvAttrs { group, strides: vec![stride, stride], dilations: vec![dil, dil], pads: vec![pad; 4], auto_pad: "NOTSET".into() });
        let b = bias.then(|| randn(&mut rng, &[co], 1.0));
        let wrt: &[usize] = if bias { &[0, 1, 2] } else { &[0, 1] };
        check(&op, vec![Some(x), Some(w), b], wrt, 1e-2, 2e-2, seed);
    }

    #[test]
    fn depthwise_and_1d_conv(seed in any::<u64>(), c in 1usize..4, l in 3usize..9) {
        let mut rng = Rng::new(seed);
        let op = Op::Conv(ConvAttrs { group: c, strides: vec![], dilations: vec![], pads: vec![], auto_pad: "SAME_UPPER".into() });
        check(&op, some(vec![randn(&mut rng, &[1, c, l, l], 1.0), randn(&mut rng, &[c, 1, 3, 3], 1.0)]), &[0, 1], 1e-2, 2e-2, seed);
        let op = Op::Conv(ConvAttrs { group: 1, strides: vec![2], dilations: vec![1], pads: vec![1, 0], auto_pad: "NOTSET".into() });
        check(&op, some(vec![randn(&mut rng, &[1, c, l], 1.0), randn(&mut rng, &[2, c, 3], 1.0)]), &[0, 1], 1e-2, 2e-2, seed);
    }

    #[test]
    fn pools(seed in any::<u64>(), c in 1usize..3, h in 3usize..7, k in 1usize..4, s in 1usize..3, p in 0usize..2, include: bool) {
        prop_assume!(k > p && h + 2 * p >= k);
        let mut rng = Rng::new(seed);
        let attrs = PoolAttrs { kernel: vec![k, k], strides: vec![s, s], pads: vec![p; 4], dilations: vec![], ceil_mode: false, auto_pad: "NOTSET".into(), count_include_pad: include };
        let x = distinct(&mut rng, &[2, c, h, h], 0.05);
        check(&Op::MaxPool(attrs.clone()), some(vec![x.clone()]), &[0], 1e-3, 2e-2, seed);
        check(&Op::AveragePool(attrs), some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
        check(&Op::GlobalAveragePool, some(vec![x]), &[0], 1e-2, 2e-2, seed);
    }

    #[test]
    fn norms(seed in any::<u64>(), a in 1usize..4, b in 2usize..6, c in 1usize..4) {
        let mut rng = Rng::new(seed);
        let x = randn(&mut rng, &[a, b, c], 1.0);
        let var = Arr::new(vec![b], randn(&mut rng, &[b], 1.0).data.iter().map(|v| v.abs() + 0.5).collect());
        check(&Op::BatchNorm { eps: 1e-5 }, some(vec![x.clone(), randn(&mut rng, &[b], 1.0), randn(&mut rng, &[b], 1.0), randn(&mut rng, &[b], 1.0), var]), &[0], 1e-2, 2e-2, seed);
        for axis in [-1i64, 1] {
            let n: usize = if axis == -1 { c } else { b * c };
            let pshape = if axis == -1 { vec![c] } else { vec![b, c] };
            // Rows of 2 are normalized to ±1 whatever the values: ill-conditioned, no test.
            if n > 2 {
                check(&Op::LayerNorm { axis, eps: 1e-5 }, some(vec![x.clone(), randn(&mut rng, &pshape, 1.0), randn(&mut rng, &pshape, 1.0)]), &[0, 1, 2], 1e-3, 3e-2, seed);
            }
            for log in [false, true] {
                check(&Op::Softmax { axis, log, coerce: false }, some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
                check(&Op::Softmax { axis, log, coerce: true }, some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
            }
        }
        for (axes, keep) in [(vec![-1i64], true), (vec![0, 2], false), (vec![], true)] {
            check(&Op::ReduceMean { axes: Some(axes), keepdims: keep, noop_with_empty: false }, some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
        }
        // Axes as an input (opset 18).
        check(&Op::ReduceMean { axes: None, keepdims: true, noop_with_empty: false }, some(vec![x, Arr::new(vec![1], vec![1.0])]), &[0], 1e-2, 2e-2, seed);
    }

    #[test]
    fn shape_ops(seed in any::<u64>(), a in 1usize..4, b in 1usize..4, c in 1usize..5) {
        let mut rng = Rng::new(seed);
        let x = randn(&mut rng, &[a, b, c], 1.0);
        check(&Op::Flatten { axis: 1 }, some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
        let target = Arr::new(vec![2], vec![-1.0, (b * c) as f32]);
        check(&Op::Reshape { allowzero: false }, some(vec![x.clone(), target]), &[0], 1e-2, 2e-2, seed);
        check(&Op::Unsqueeze { axes: Some(vec![1]) }, some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
        let y = randn(&mut rng, &[a, 1, c], 1.0);
        check(&Op::Squeeze { axes: None }, some(vec![y.clone(), Arr::new(vec![1], vec![1.0])]), &[0], 1e-2, 2e-2, seed);
        for perm in [vec![2, 0, 1], vec![1, 0, 2], vec![]] {
            check(&Op::Transpose { perm }, some(vec![x.clone()]), &[0], 1e-2, 2e-2, seed);
        }
        check(&Op::Concat { axis: 1 }, some(vec![x.clone(), y, randn(&mut rng, &[a, 2, c], 1.0)]), &[0, 1, 2], 1e-2, 2e-2, seed);
        // Slice: starts, ends, axes, steps as inputs (forward and backward steps).
        let ints = |v: &[f32]| Some(Arr::new(vec![v.len()], v.to_vec()));
        check(&Op::Slice { attrs: None }, vec![Some(x.clone()), ints(&[0.0, -1.0]), ints(&[b as f32, -1000.0]), ints(&[1.0, 2.0]), ints(&[1.0, -2.0])], &[0], 1e-2, 2e-2, seed);
        let idx = Arr::new(vec![2, 2], vec![0.0, (c - 1) as f32, 0.0, -1.0]);
        check(&Op::Gather { axis: 2 }, some(vec![x.clone(), idx]), &[0], 1e-2, 2e-2, seed);
        // Expand, Where (gradients to both branches, through broadcasting) and ReduceSum.
        check(&Op::Expand, some(vec![randn(&mut rng, &[b, 1], 1.0), Arr::new(vec![3], vec![a as f32, b as f32, c as f32])]), &[0], 1e-2, 2e-2, seed);
        let cond = Arr::new(vec![c], (0..c).map(|i| (i % 2) as f32).collect());
        check(&Op::Where, some(vec![cond, x.clone(), randn(&mut rng, &[b, 1], 1.0)]), &[1, 2], 1e-2, 2e-2, seed);
        check(&Op::ReduceSum { axes: None, keepdims: false, noop_with_empty: false }, some(vec![x.clone(), Arr::new(vec![2], vec![0.0, -1.0])]), &[0], 1e-2, 2e-2, seed);
        let idx = Arr::new(vec![3], vec![0.0, (a - 1) as f32, 0.0]);
        check(&Op::Gather { axis: 0 }, some(vec![x, idx]), &[0], 1e-2, 2e-2, seed);
    }

    /// Each objective's gradient with respect to the model's output (what the backward pass
    /// starts from) against central differences of its loss.
    #[test]
    fn objectives(seed in any::<u64>(), rows in 1usize..4, n in 2usize..8) {
        use lowbit_train::loss::{loss_and_grad, Objective};
        let mut rng = Rng::new(seed);
        let out = randn(&mut rng, &[rows, n], 1.0);
        let teacher = randn(&mut rng, &[rows, n], 1.0);
        let label = (rng.next_u64() % n as u64) as usize;
        for obj in [Objective::Kl, Objective::Cosine, Objective::Mse, Objective::CrossEntropy] {
            // Cross-entropy scores one sample (one row) against its label.
            let out = if obj == Objective::CrossEntropy {
                Arr::new(vec![1, n], out.data[..n].to_vec())
            } else {
                out.clone()
            };
            let f = |o: &Arr| loss_and_grad(obj, o, Some(&teacher), Some(label)).unwrap();
            let (_, g) = f(&out);
            prop_assert_eq!(&g.shape, &out.shape);
            let h = 1e-2f32;
            for j in 0..out.len() {
                let (mut plus, mut minus) = (out.clone(), out.clone());
                plus.data[j] += h;
                minus.data[j] -= h;
                let num = (f(&plus).0 as f64 - f(&minus).0 as f64) / (2.0 * h as f64);
                let ana = g.data[j] as f64;
                prop_assert!(
                    (num - ana).abs() <= 2e-3 + 2e-2 * ana.abs(),
                    "{obj}: d/d out[{j}] analytic {ana} vs numeric {num}"
                );
            }
        }
    }
}
