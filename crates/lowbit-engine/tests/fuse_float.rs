//! Load-time float fusion against the unfused graph it replaces, on small hand-built graphs:
//! batch norms folded into convs and Gemms, bias adds and activations taken into the
//! product's output stage, and the conditions that must keep a pattern unfused.

mod common;

use common::{float, int, ints, Graph as G};
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use lowbit_tensor::Tensor;

impl G {
    /// A constant of `shape` with varied values in about [lo, lo + span].
    fn values(&mut self, shape: Vec<usize>, seed: u32, lo: f32, span: f32) -> String {
        let v = varied(shape.iter().product(), seed, lo, span);
        self.init(Tensor::from_vec(shape, v).unwrap())
    }

    /// A BatchNormalization of `x` over `c` channels with varied constant parameters.
    fn batch_norm(&mut self, x: &str, c: usize, seed: u32) -> String {
        let gamma = self.values(vec![c], seed, 0.5, 1.0);
        let beta = self.values(vec![c], seed + 1, -0.5, 1.0);
        let mean = self.values(vec![c], seed + 2, -0.3, 0.6);
        let var = self.values(vec![c], seed + 3, 0.2, 2.0);
        self.op("BatchNormalization", &[x, &gamma, &beta, &mean, &var], vec![])
    }

    fn model(self, x_shape: &[usize], outs: &[&str]) -> ModelProto {
        self.build(Some(x_shape), outs, 8, &[("", 17)])
    }
}

fn varied(n: usize, seed: u32, lo: f32, span: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503);
            lo + span * ((h >> 7) % 1000) as f32 / 1000.0
        })
        .collect()
}

fn input(shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), varied(shape.iter().product(), 99, -2.0, 4.0)).unwrap()
}

struct Runs {
    fused: Vec<Tensor>,
    plain: Vec<Tensor>,
    steps: Vec<String>,
    counts: Vec<(String, usize)>,
}

/// Runs `m` with float fusion and without.
fn both(m: &ModelProto, x: &Tensor) -> Runs {
    let opts = |fuse: bool| SessionOptions { threads: 1, fuse_float: fuse, ..Default::default() };
    let f = Session::new(m, &opts(true)).unwrap();
    let p = Session::new(m, &opts(false)).unwrap();
    let run = |s: &Session| -> Vec<Tensor> {
        s.run(vec![("x".into(), x.clone())]).unwrap().into_iter().map(|(_, t)| t).collect()
    };
    assert!(p.fused_ops().is_empty());
    // The layout pass's transposes around channels-last convs are checked on their own
    // (`a_mobilenet_block_runs_channels_last_between_two_transposes`).
    Runs {
        fused: run(&f),
        plain: run(&p),
        steps: f.step_ops().iter().filter(|s| **s != "Transpose").map(|s| s.to_string()).collect(),
        counts: f
            .fused_ops()
            .iter()
            .filter(|(k, _)| *k != LAYOUT)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    }
}

/// The fused-op count of convs the layout pass ran channels-last.
const LAYOUT: &str = "channels-last float convs";

/// Largest difference relative to the output's largest magnitude.
fn assert_close(r: &Runs) {
    for (f, p) in r.fused.iter().zip(&r.plain) {
        assert_eq!(f.shape(), p.shape());
        let (f, p) = (f.as_f32().unwrap(), p.as_f32().unwrap());
        let scale = p.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = f.iter().zip(p).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale, "fused differs from unfused by {diff} (scale {scale})");
    }
}

fn count(r: &Runs, what: &str) -> usize {
    r.counts.iter().find(|(k, _)| k == what).map_or(0, |(_, v)| *v)
}

#[test]
fn conv_batch_norm_relu_becomes_one_fused_conv() {
    let mut g = G::new();
    let w = g.values(vec![8, 3, 3, 3], 1, -0.5, 1.0);
    let b = g.values(vec![8], 2, -0.2, 0.4);
    let c = g.op("Conv", &["x", &w, &b], vec![ints("pads", &[1, 1, 1, 1])]);
    let n = g.batch_norm(&c, 8, 10);
    let y = g.op("Relu", &[&n], vec![]);
    let r = both(&g.model(&[2, 3, 9, 9], &[&y]), &input(&[2, 3, 9, 9]));
    assert_close(&r);
    assert_eq!(r.steps, ["FusedConv"]);
    assert_eq!((count(&r, "Conv+BatchNormalization"), count(&r, "Conv+Relu")), (1, 1));
    assert!(r.fused[0].as_f32().unwrap().iter().all(|&v| v >= 0.0));
}

#[test]
fn batch_norm_folding_leaves_shared_weights_and_biases_alone() {
    // Two convs share one weight and one bias; only the first feeds a batch norm.
    let mut g = G::new();
    let w = g.values(vec![4, 2, 1, 1], 3, -1.0, 2.0);
    let b = g.values(vec![4], 4, -0.5, 1.0);
    let c1 = g.op("Conv", &["x", &w, &b], vec![]);
    let n = g.batch_norm(&c1, 4, 20);
    let c2 = g.op("Conv", &["x", &w, &b], vec![]);
    let r = both(&g.model(&[1, 2, 5, 5], &[&n, &c2]), &input(&[1, 2, 5, 5]));
    assert_close(&r);
    assert_eq!(count(&r, "Conv+BatchNormalization"), 1);
    assert_eq!(r.steps, ["Conv", "Conv"]);
}

#[test]
fn depthwise_conv_with_clip_and_gemm_with_batch_norm_and_leaky_relu() {
    let mut g = G::new();
    let w = g.values(vec![4, 1, 3, 3], 5, -1.0, 2.0);
    let dw = g.op(
        "Conv",
        &["x", &w],
        vec![int("group", 4), ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
    );
    let lo = g.init(Tensor::scalar(0.0f32));
    let hi = g.init(Tensor::scalar(0.75f32));
    let clipped = g.op("Clip", &[&dw, &lo, &hi], vec![]);
    let flat = g.op("Flatten", &[&clipped], vec![]);
    let gw = g.values(vec![6, 4 * 5 * 5], 6, -0.3, 0.6);
    let gb = g.values(vec![6], 7, -0.1, 0.2);
    let gemm = g.op("Gemm", &[&flat, &gw, &gb], vec![int("transB", 1), float("alpha", 0.5)]);
    let n = g.batch_norm(&gemm, 6, 30);
    let y = g.op("LeakyRelu", &[&n], vec![float("alpha", 0.1)]);
    let r = both(&g.model(&[2, 4, 10, 10], &[&y]), &input(&[2, 4, 10, 10]));
    assert_close(&r);
    assert_eq!(r.steps, ["FusedConv", "Flatten", "FusedGemm"]);
    assert_eq!(count(&r, "Gemm+BatchNormalization"), 1);
    assert_eq!((count(&r, "Conv+Clip"), count(&r, "Gemm+LeakyRelu")), (1, 1));
}

#[test]
fn matmul_bias_and_relu_fuse_into_one_matmul() {
    let mut g = G::new();
    let w = g.values(vec![12, 7], 8, -0.5, 1.0);
    let b = g.values(vec![7], 9, -0.5, 1.0);
    let mm = g.op("MatMul", &["x", &w], vec![]);
    let add = g.op("Add", &[&b, &mm], vec![]);
    let y = g.op("Relu", &[&add], vec![]);
    // A second product without an activation still takes its bias.
    let w2 = g.values(vec![7, 5], 10, -0.5, 1.0);
    let b2 = g.values(vec![5], 11, -0.5, 1.0);
    let mm2 = g.op("MatMul", &[&y, &w2], vec![]);
    let z = g.op("Add", &[&mm2, &b2], vec![]);
    let r = both(&g.model(&[2, 6, 12], &[&z]), &input(&[2, 6, 12]));
    assert_close(&r);
    assert_eq!(r.steps, ["FusedMatMul", "FusedMatMul"]);
    assert_eq!((count(&r, "MatMul+Add"), count(&r, "FusedMatMul+Relu")), (2, 1));
}

#[test]
fn shared_or_observable_intermediates_stay_unfused() {
    let mut g = G::new();
    let w = g.values(vec![3, 2, 1, 1], 12, -1.0, 2.0);
    // Read twice: the conv output must survive for the Add.
    let c = g.op("Conv", &["x", &w], vec![]);
    let relu = g.op("Relu", &[&c], vec![]);
    let sum = g.op("Add", &[&relu, &c], vec![]);
    // A graph output: the pre-activation value must be produced.
    let c2 = g.op("Conv", &["x", &w], vec![]);
    let relu2 = g.op("Relu", &[&c2], vec![]);
    // A bound known only at run time.
    let c3 = g.op("Conv", &["x", &w], vec![]);
    let hi = g.op("ReduceMax", &["x"], vec![int("keepdims", 0)]);
    let clip = g.op("Clip", &[&c3, "", &hi], vec![]);
    let r = both(&g.model(&[1, 2, 4, 4], &[&sum, &c2, &relu2, &clip]), &input(&[1, 2, 4, 4]));
    assert_close(&r);
    assert!(r.counts.is_empty(), "{:?}", r.counts);
}

#[test]
fn per_channel_adds_become_conv_and_matmul_biases() {
    // mnist-8's form: Conv → Add([C, 1, 1]) → Relu, and MatMul → Add([1, n]).
    let mut g = G::new();
    let w = g.values(vec![5, 1, 3, 3], 13, -1.0, 2.0);
    let c = g.op("Conv", &["x", &w], vec![]);
    let b = g.values(vec![5, 1, 1], 14, -0.5, 1.0);
    let add = g.op("Add", &[&c, &b], vec![]);
    let relu = g.op("Relu", &[&add], vec![]);
    let shape = g.init(Tensor::from_vec(vec![2], vec![1i64, 5 * 4 * 4]).unwrap());
    let flat = g.op("Reshape", &[&relu, &shape], vec![]);
    let mw = g.values(vec![80, 3], 15, -0.2, 0.4);
    let mb = g.values(vec![1, 3], 16, -0.5, 1.0);
    let mm = g.op("MatMul", &[&flat, &mw], vec![]);
    let y = g.op("Add", &[&mm, &mb], vec![]);
    // A whole-plane constant is not a bias: stays an Add.
    let plane = g.values(vec![1, 4, 4], 17, -0.5, 1.0);
    let c2 = g.op("Conv", &["x", &w], vec![]);
    let z = g.op("Add", &[&c2, &plane], vec![]);
    let r = both(&g.model(&[1, 1, 6, 6], &[&y, &z]), &input(&[1, 1, 6, 6]));
    assert_close(&r);
    assert_eq!(r.steps, ["FusedConv", "Reshape", "FusedMatMul", "Conv", "Add"]);
    assert_eq!((count(&r, "Conv+Add"), count(&r, "MatMul+Add")), (1, 1));
}

/// A MobileNet-style block (1×1 expand with ReLU6, strided 3×3 depthwise with ReLU6, 1×1
/// project, residual add, a second depthwise, a 3×3 conv, a grouped 1×1) runs channels-last between one
/// transpose in and one out, and matches the unfused NCHW graph on two images.
#[test]
fn a_mobilenet_block_runs_channels_last_between_two_transposes() {
    let mut g = G::new();
    let relu6 = |g: &mut G, x: &str| {
        let (lo, hi) = (g.init(Tensor::scalar(0f32)), g.init(Tensor::scalar(6f32)));
        g.op("Clip", &[x, &lo, &hi], vec![])
    };
    let w1 = g.values(vec![24, 8, 1, 1], 30, -0.5, 1.0);
    let e = g.op("Conv", &["x", &w1], vec![]);
    let e = relu6(&mut g, &e);
    let wd = g.values(vec![24, 1, 3, 3], 31, -0.5, 1.0);
    let pads = ints("pads", &[1, 1, 1, 1]);
    let dw_attrs = vec![int("group", 24), pads.clone(), ints("strides", &[2, 2])];
    let d = g.op("Conv", &[&e, &wd], dw_attrs);
    let d = relu6(&mut g, &d);
    let w2 = g.values(vec![16, 24, 1, 1], 32, -0.5, 1.0);
    let b2 = g.values(vec![16], 33, -0.2, 0.4);
    let p = g.op("Conv", &[&d, &w2, &b2], vec![]);
    let wd2 = g.values(vec![16, 1, 5, 5], 34, -0.3, 0.6);
    let d2 = g.op("Conv", &[&p, &wd2], vec![int("group", 16), ints("pads", &[2, 2, 2, 2])]);
    let sum = g.op("Add", &[&p, &d2], vec![]);
    let w3 = g.values(vec![4, 16, 3, 3], 35, -0.3, 0.6);
    let c3 = g.op("Conv", &[&sum, &w3], vec![pads]);
    // Grouped, not depthwise: the channels-first kernel between transposes inside the step.
    let wg = g.values(vec![6, 2, 1, 1], 36, -0.5, 1.0);
    let y = g.op("Conv", &[&c3, &wg], vec![int("group", 2)]);
    let m = g.model(&[2, 8, 15, 15], &[&y]);
    let x = input(&[2, 8, 15, 15]);
    let r = both(&m, &x);
    assert_close(&r);
    let f = Session::new(&m, &SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let steps = f.step_ops();
    assert_eq!(steps.iter().filter(|s| **s == "Transpose").count(), 2, "{steps:?}");
    assert_eq!((steps.first(), steps.last()), (Some(&"Transpose"), Some(&"Transpose")));
    assert_eq!(f.fused_ops().get(LAYOUT), Some(&6));
    // Two threads split the pixels and the depthwise rows: the same values.
    let two = Session::new(&m, &SessionOptions { threads: 2, ..Default::default() }).unwrap();
    let run = |s: &Session| s.run(vec![("x".into(), x.clone())]).unwrap().remove(0).1;
    assert_eq!(run(&f).as_f32().unwrap(), run(&two).as_f32().unwrap());
}
