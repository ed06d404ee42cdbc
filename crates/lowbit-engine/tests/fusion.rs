//! Load-time QDQ fusion against the unfused graph it replaces (the float simulation of the
//! same quantization): lookups, 8-bit moves, QLinearAdd and the dynamic matmul chain must be
//! bit-identical; integer convolutions and matmuls may differ where the float simulation's
//! rounding of the sum crosses a rounding boundary, by one output step at most.

mod common;

use common::{int, ints, Graph as G};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::{ModelProto, NodeProto};
use lowbit_tensor::{DType, Tensor};

impl G {
    /// Q then DQ with per-tensor uint8 parameters (an activation's QDQ pair).
    fn qdq(&mut self, x: &str, scale: f32, zp: u8) -> (String, String) {
        let s = self.init(Tensor::scalar(scale));
        let z = self.init(Tensor::scalar(zp));
        let q = self.op("QuantizeLinear", &[x, &s, &z], vec![]);
        let d = self.op("DequantizeLinear", &[&q, &s, &z], vec![]);
        (q, d)
    }

    /// Constant int8 weights with per-axis scales, dequantized.
    fn weights(&mut self, shape: Vec<usize>, axis: usize, seed: u32) -> String {
        let n: usize = shape.iter().product();
        let v: Vec<i8> = (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) % 127)
            .map(|v| v as i8 - 63)
            .collect();
        let ch = shape[axis];
        let w = self.init(Tensor::from_vec(shape, v).unwrap());
        let s = self.init(
            Tensor::from_vec(vec![ch], (0..ch).map(|c| 0.01 + 0.002 * c as f32).collect()).unwrap(),
        );
        let z = self.init(Tensor::from_vec(vec![ch], vec![0i8; ch]).unwrap());
        self.op("DequantizeLinear", &[&w, &s, &z], vec![int("axis", axis as i64)])
    }

    fn model(self, x_shape: &[usize], out: &str) -> ModelProto {
        self.build(Some(x_shape), &[out], 8, &[("", 17)])
    }
}

fn input(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u32).wrapping_mul(2246822519) ^ seed) % 2000) as f32 / 500.0 - 2.0)
        .collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

/// Outputs of the model fused and unfused, and the fused session's op counts.
fn both(m: &ModelProto, x: &Tensor) -> (Tensor, Tensor, Vec<(String, usize)>) {
    let run = |fuse: bool| {
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
        let counts: Vec<(String, usize)> =
            s.fused_ops().iter().map(|(k, v)| (k.clone(), *v)).collect();
        let out = s.run(vec![("x".into(), x.clone())]).unwrap().remove(0).1;
        (out, counts)
    };
    let (f, counts) = run(true);
    let (u, none) = run(false);
    assert!(none.is_empty());
    (f, u, counts)
}

fn bytes(t: &Tensor) -> Vec<u8> {
    match t.dtype() {
        DType::U8 => t.as_slice::<u8>().unwrap().to_vec(),
        d => panic!("expected uint8, got {d}"),
    }
}

#[test]
fn lookups_adds_and_moves_are_bit_identical() {
    let mut g = G::new();
    let (q, d) = g.qdq("x", 0.02, 128);
    let _ = q;
    // DQ → Sigmoid → Q and DQ → Relu → Q: tables.
    let sig = g.op("Sigmoid", &[&d], vec![]);
    let (_, sig_d) = g.qdq(&sig, 1.0 / 255.0, 0);
    let relu = g.op("Relu", &[&d], vec![]);
    let (_, relu_d) = g.qdq(&relu, 0.01, 0);
    // DQ, DQ → Add → Q: QLinearAdd.
    let add = g.op("Add", &[&sig_d, &relu_d], vec![]);
    let (_, add_d) = g.qdq(&add, 0.015, 10);
    // DQ → MaxPool → Q with the same parameters: MaxPool on codes.
    let pool = g.op(
        "MaxPool",
        &[&add_d],
        vec![ints("kernel_shape", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
    );
    let s = g.init(Tensor::scalar(0.015f32));
    let z = g.init(Tensor::scalar(10u8));
    let pq = g.op("QuantizeLinear", &[&pool, &s, &z], vec![]);
    // DQ → Q with other parameters: a requantizing table; then Flatten on codes.
    let pd = g.op("DequantizeLinear", &[&pq, &s, &z], vec![]);
    let (rq, rd) = g.qdq(&pd, 0.03, 5);
    let _ = rq;
    let flat = g.op("Flatten", &[&rd], vec![]);
    let s2 = g.init(Tensor::scalar(0.03f32));
    let z2 = g.init(Tensor::scalar(5u8));
    let out = g.op("QuantizeLinear", &[&flat, &s2, &z2], vec![]);
    let shape = [2, 3, 5, 7];
    let m = g.model(&shape, &out);
    for seed in 0..5 {
        let (f, u, counts) = both(&m, &input(&shape, seed));
        assert_eq!(bytes(&f), bytes(&u), "seed {seed}");
        let kinds: Vec<&str> = counts.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["QLinearLookup", "QLinearAdd", "MaxPool", "Flatten"] {
            assert!(kinds.contains(&k), "{k} not fused: {counts:?}");
        }
    }
}

/// Fraction of equal outputs and the largest difference in steps.
fn steps_apart(f: &Tensor, u: &Tensor) -> (f64, i32) {
    let (a, b) = (bytes(f), bytes(u));
    assert_eq!(a.len(), b.len());
    let equal = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let worst = a.iter().zip(&b).map(|(&x, &y)| (x as i32 - y as i32).abs()).max().unwrap_or(0);
    (equal as f64 / a.len() as f64, worst)
}

#[test]
fn integer_conv_matmul_and_gemm_are_within_one_step_of_the_float_simulation() {
    // Conv (per-channel weights, int32 bias) → Q → DQ → MatMul (per-column weights) → Q →
    // DQ → Flatten → Gemm (transB, bias) → Q.
    let mut g = G::new();
    let (_, xd) = g.qdq("x", 0.02, 120);
    let w = g.weights(vec![8, 3, 3, 3], 0, 1);
    let bias_v: Vec<i32> = (0..8).map(|c| c * 50 - 200).collect();
    let b = g.init(Tensor::from_vec(vec![8], bias_v).unwrap());
    let bs = g.init(
        Tensor::from_vec(vec![8], (0..8).map(|c| 0.02f32 * (0.01 + 0.002 * c as f32)).collect())
            .unwrap(),
    );
    let bd = g.op("DequantizeLinear", &[&b, &bs], vec![int("axis", 0)]);
    let conv =
        g.op("Conv", &[&xd, &w, &bd], vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[1, 1])]);
    let (_, cd) = g.qdq(&conv, 0.05, 128);
    let mw = g.weights(vec![6, 4], 1, 2);
    let mm = g.op("MatMul", &[&cd, &mw], vec![]);
    let (_, md) = g.qdq(&mm, 0.04, 128);
    let fl = g.op("Flatten", &[&md], vec![]);
    let (_, fd) = g.qdq(&fl, 0.04, 128);
    let gw = g.weights(vec![5, 8 * 6 * 4], 0, 3);
    let gb = g.init(Tensor::from_vec(vec![5], vec![0.1f32, -0.2, 0.3, 0.0, 0.05]).unwrap());
    let gemm = g.op("Gemm", &[&fd, &gw, &gb], vec![int("transB", 1)]);
    let s = g.init(Tensor::scalar(0.1f32));
    let z = g.init(Tensor::scalar(128u8));
    let out = g.op("QuantizeLinear", &[&gemm, &s, &z], vec![]);
    let shape = [2, 3, 6, 6];
    let m = g.model(&shape, &out);
    let (mut total, mut equal) = (0usize, 0f64);
    for seed in 0..10 {
        let (f, u, counts) = both(&m, &input(&shape, seed));
        let kinds: Vec<&str> = counts.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["QLinearConv", "QLinearMatMul", "QGemm"] {
            assert!(kinds.contains(&k), "{k} not fused: {counts:?}");
        }
        let (eq, worst) = steps_apart(&f, &u);
        assert!(worst <= 1, "seed {seed}: fused and unfused differ by {worst} steps");
        equal += eq;
        total += 1;
    }
    let equal = equal / total as f64;
    eprintln!("integer vs float simulation: {:.1} % of outputs identical", 100.0 * equal);
    assert!(equal >= 0.9, "only {:.1} % identical", 100.0 * equal);
}

#[test]
fn a_gemm_whose_float_output_is_the_result_runs_as_qgemm_close_to_the_float_simulation() {
    // DQ → Flatten → DQ(x), DQ(w), DQ(int32 bias) → Gemm (transB) → graph output: a
    // classifier's logits, left in float.
    let mut g = G::new();
    let (_, xd) = g.qdq("x", 0.02, 120);
    let fl = g.op("Flatten", &[&xd], vec![]);
    let (_, fd) = g.qdq(&fl, 0.02, 120);
    let gw = g.weights(vec![7, 3 * 4 * 4], 0, 5);
    let b = g.init(
        Tensor::from_vec(vec![7], (0..7).map(|c| c * 90 - 300).collect::<Vec<i32>>()).unwrap(),
    );
    let bs = g.init(
        Tensor::from_vec(vec![7], (0..7).map(|c| 0.02f32 * (0.01 + 0.002 * c as f32)).collect())
            .unwrap(),
    );
    let bd = g.op("DequantizeLinear", &[&b, &bs], vec![int("axis", 0)]);
    let out = g.op("Gemm", &[&fd, &gw, &bd], vec![int("transB", 1)]);
    let shape = [2, 3, 4, 4];
    let m = g.model(&shape, &out);
    for seed in 0..5 {
        let (f, u, counts) = both(&m, &input(&shape, seed));
        assert!(counts.iter().any(|(k, _)| k == "QGemm"), "QGemm not fused: {counts:?}");
        let (f, u) = (f.as_f32().unwrap(), u.as_f32().unwrap());
        let top = u.iter().fold(0f32, |a, &v| a.max(v.abs()));
        assert!(top > 0.1, "seed {seed}: logits {u:?}");
        for (a, b) in f.iter().zip(u) {
            // Exact integer sums scaled once vs a float sum of exact products: f32 rounding.
            assert!((a - b).abs() <= 1e-5 * top, "seed {seed}: {a} vs {b}");
        }
    }
}

#[test]
fn dynamic_matmul_chain_fuses_bit_identically() {
    let mut g = G::new();
    let dq = NodeProto {
        op_type: "DynamicQuantizeLinear".into(),
        name: "dq".into(),
        input: vec!["x".into()],
        output: vec!["xq".into(), "xs".into(), "xz".into()],
        ..Default::default()
    };
    g.nodes.push(dq);
    let w: Vec<i8> = (0..7 * 5).map(|i| (i * 37 % 255 - 127) as i8).collect();
    let wq = g.init(Tensor::from_vec(vec![7, 5], w).unwrap());
    let ws = g.init(Tensor::from_vec(vec![5], vec![0.01f32, 0.02, 0.015, 0.03, 0.005]).unwrap());
    let bias = g.init(Tensor::from_vec(vec![5], vec![0.5f32, -0.25, 0.0, 1.0, 2.0]).unwrap());
    let mmi = g.op("MatMulInteger", &["xq", &wq, "xz"], vec![]);
    let cast = g.op("Cast", &[&mmi], vec![int("to", 1)]);
    let scale = g.op("Mul", &["xs", &ws], vec![]);
    let mul = g.op("Mul", &[&cast, &scale], vec![]);
    let out = g.op("Add", &[&bias, &mul], vec![]);
    let shape = [3, 4, 7];
    let m = g.model(&shape, &out);
    for seed in 0..5 {
        let (f, u, counts) = both(&m, &input(&shape, seed));
        assert_eq!(counts, vec![("MatMulIntegerToFloat".to_string(), 1)]);
        assert_eq!(f.as_f32().unwrap(), u.as_f32().unwrap(), "seed {seed}");
    }
}
