//! Weight-only fusion (`DequantizeLinear(W const) → MatMul/Gemm` → `ai.lowbit`
//! `WeightOnlyMatMul`) against the unfused graph (float DQ, then f32 MatMul), and ONNX
//! Runtime's `MatMulNBits` against the same weights written as DQ → MatMul. The products
//! differ by f32 rounding only.

mod common;

use common::{int, Graph as G};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use lowbit_tensor::Tensor;

impl G {
    fn model(self, outs: &[&str]) -> ModelProto {
        self.build(None, outs, 10, &[("", 21), ("com.microsoft", 1)])
    }
}

fn hash(i: usize, seed: u32, modulus: u32) -> u32 {
    let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed).rotate_left(13);
    (x.wrapping_mul(40503) >> 8) % modulus
}

fn floats(shape: &[usize], seed: u32, lo: f32, step: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(
        shape.to_vec(),
        (0..n).map(|i| lo + step * hash(i, seed, 1000) as f32).collect(),
    )
    .unwrap()
}

/// Runs `m` on `x` fused and unfused: (fused output, unfused output, WeightOnlyMatMul count).
fn both(m: &ModelProto, x: &Tensor) -> (Vec<f32>, Vec<f32>, Vec<usize>, usize) {
    let run = |fuse: bool| {
        let s = Session::new(
            m,
            &SessionOptions {
                threads: 2,
                fuse_quantized: fuse,
                fuse_float: fuse,
                ..Default::default()
            },
        )
        .unwrap();
        let out = s.run(vec![("x".into(), x.clone())]).unwrap().remove(0).1;
        let count = s.fused_ops().get("WeightOnlyMatMul").copied().unwrap_or(0);
        (out.shape().to_vec(), out.to_f32_vec().unwrap(), count)
    };
    let (shape, fused, count) = run(true);
    let (shape_u, plain, _) = run(false);
    assert_eq!(shape, shape_u);
    (fused, plain, shape, count)
}

fn assert_close(got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 2e-5 * scale, "element {i}: {g} vs {w} (max |y| {scale})");
    }
}

#[test]
fn int4_blocked_matmul_and_bias_add_fuse_into_one_op() {
    let (k, n, bs): (usize, usize, usize) = (70, 37, 32);
    let nb = k.div_ceil(bs);
    let mut g = G::new();
    let codes: Vec<i8> = (0..k * n).map(|i| hash(i, 1, 16) as i8 - 8).collect();
    let w = g.init(Tensor::new(vec![k, n], lowbit_tensor::TensorData::I4(codes)).unwrap());
    let s = g.init(floats(&[nb, n], 2, 0.001, 1e-4));
    let z = g.init(
        Tensor::new(
            vec![nb, n],
            lowbit_tensor::TensorData::I4((0..nb * n).map(|i| hash(i, 3, 16) as i8 - 8).collect()),
        )
        .unwrap(),
    );
    let dq =
        g.op("DequantizeLinear", &[&w, &s, &z], vec![int("axis", 0), int("block_size", bs as i64)]);
    let mm = g.op("MatMul", &["x", &dq], vec![]);
    let b = g.init(floats(&[n], 4, -1.0, 2e-3));
    let y = g.op("Add", &[&mm, &b], vec![]);
    let m = g.model(&[&y]);
    for rows in [1, 3, 9] {
        let x = floats(&[2, rows, k], 5, -1.0, 2e-3);
        let (fused, plain, shape, count) = both(&m, &x);
        assert_eq!(count, 1);
        assert_eq!(shape, vec![2, rows, n]);
        assert_close(&fused, &plain);
    }
}

#[test]
fn gemm_trans_b_uint4_blocked_along_k_with_bias_fuses() {
    let (k, n, bs): (usize, usize, usize) = (50, 20, 16);
    let nb = k.div_ceil(bs);
    let mut g = G::new();
    let codes: Vec<u8> = (0..k * n).map(|i| hash(i, 7, 16) as u8).collect();
    let w = g.init(Tensor::new(vec![n, k], lowbit_tensor::TensorData::U4(codes)).unwrap());
    let s = g.init(floats(&[n, nb], 8, 0.002, 1e-4));
    let zps: Vec<u8> = (0..n * nb).map(|i| hash(i, 9, 16) as u8).collect();
    let z = g.init(Tensor::new(vec![n, nb], lowbit_tensor::TensorData::U4(zps)).unwrap());
    let dq =
        g.op("DequantizeLinear", &[&w, &s, &z], vec![int("axis", 1), int("block_size", bs as i64)]);
    let c = g.init(floats(&[n], 10, -0.5, 1e-3));
    let y = g.op("Gemm", &["x", &dq, &c], vec![int("transB", 1)]);
    let m = g.model(&[&y]);
    let x = floats(&[6, k], 11, -1.0, 2e-3);
    let (fused, plain, shape, count) = both(&m, &x);
    assert_eq!((count, shape), (1, vec![6, n]));
    assert_close(&fused, &plain);
}

#[test]
fn int8_per_channel_matmul_fuses_and_a_shared_weight_does_not() {
    let (k, n) = (40, 24);
    let mut g = G::new();
    let w = g.init(
        Tensor::from_vec(
            vec![k, n],
            (0..k * n).map(|i| hash(i, 12, 255) as i8).collect::<Vec<i8>>(),
        )
        .unwrap(),
    );
    let s = g.init(floats(&[n], 13, 0.001, 1e-5));
    let dq = g.op("DequantizeLinear", &[&w, &s], vec![int("axis", 1)]);
    let y = g.op("MatMul", &["x", &dq], vec![]);
    let x = floats(&[k], 14, -1.0, 2e-3);
    let (fused, plain, shape, count) = both(&g.model(&[&y]), &x);
    assert_eq!((count, shape), (1, vec![n]), "a 1-D A gives a 1-D output");
    assert_close(&fused, &plain);

    // The dequantized weight is also a graph output: it must stay, and nothing fuses.
    let mut g = G::new();
    let w = g.init(Tensor::from_vec(vec![k, n], vec![3i8; k * n]).unwrap());
    let s = g.init(floats(&[n], 13, 0.001, 1e-5));
    let dq = g.op("DequantizeLinear", &[&w, &s], vec![int("axis", 1)]);
    let y = g.op("MatMul", &["x", &dq], vec![]);
    let x = floats(&[2, k], 14, -1.0, 2e-3);
    let s = Session::new(&g.model(&[&y, &dq]), &SessionOptions::default()).unwrap();
    assert!(s.fused_ops().get("WeightOnlyMatMul").is_none());
    assert_eq!(s.run(vec![("x".into(), x)]).unwrap().len(), 2);
}

/// `MatMulNBits` as ONNX Runtime's 4-bit quantizer writes it (`B [N, blocks, bs/2]`, uint8
/// zero points packed two per byte along blocks) against the same codes as DQ → MatMul.
#[test]
fn matmul_nbits_matches_the_same_weights_as_dequantize_matmul() {
    let (k, n, bs): (usize, usize, usize) = (72, 19, 32);
    let nb = k.div_ceil(bs);
    let code = |kk: usize, j: usize| hash(kk * n + j, 21, 16) as u8;
    let zp = |b: usize, j: usize| hash(b * n + j, 22, 16) as u8;
    let scales = floats(&[nb, n], 23, 0.002, 1e-4);
    let sv = scales.to_f32_vec().unwrap();
    // Reference: DQ(uint4 [K, N], blocked along K) → MatMul.
    let mut g = G::new();
    let w = g.init(
        Tensor::new(
            vec![k, n],
            lowbit_tensor::TensorData::U4((0..k * n).map(|i| code(i / n, i % n)).collect()),
        )
        .unwrap(),
    );
    let s = g.init(scales.clone());
    let z = g.init(
        Tensor::new(
            vec![nb, n],
            lowbit_tensor::TensorData::U4((0..nb * n).map(|i| zp(i / n, i % n)).collect()),
        )
        .unwrap(),
    );
    let dq =
        g.op("DequantizeLinear", &[&w, &s, &z], vec![int("axis", 0), int("block_size", bs as i64)]);
    let y = g.op("MatMul", &["x", &dq], vec![]);
    let reference = g.model(&[&y]);
    // MatMulNBits: per column, K codes in order, two per byte (low nibble first), padded.
    let blob = bs / 2;
    let mut bytes = vec![0u8; n * nb * blob];
    for j in 0..n {
        for kk in 0..k {
            bytes[j * nb * blob + kk / 2] |= code(kk, j) << (4 * (kk % 2));
        }
    }
    let zrow = nb.div_ceil(2);
    let mut zbytes = vec![0u8; n * zrow];
    for j in 0..n {
        for b in 0..nb {
            zbytes[j * zrow + b / 2] |= zp(b, j) << (4 * (b % 2));
        }
    }
    let st: Vec<f32> = (0..n * nb).map(|i| sv[(i % nb) * n + i / nb]).collect();
    let mut g = G::new();
    let b = g.init(Tensor::from_vec(vec![n, nb, blob], bytes).unwrap());
    let s = g.init(Tensor::from_vec(vec![n * nb], st).unwrap());
    let z = g.init(Tensor::from_vec(vec![n * zrow], zbytes).unwrap());
    let attrs =
        vec![int("K", k as i64), int("N", n as i64), int("bits", 4), int("block_size", bs as i64)];
    let y = g.op_in("com.microsoft", "MatMulNBits", &["x", &b, &s, &z], attrs);
    let nbits = g.model(&[&y]);
    let x = floats(&[5, k], 24, -1.0, 2e-3);
    let run = |m: &ModelProto, fuse: bool| {
        let s = Session::new(
            m,
            &SessionOptions {
                threads: 1,
                fuse_quantized: fuse,
                fuse_float: fuse,
                ..Default::default()
            },
        )
        .unwrap();
        s.run(vec![("x".into(), x.clone())]).unwrap().remove(0).1.to_f32_vec().unwrap()
    };
    assert_close(&run(&nbits, true), &run(&reference, false));
}
