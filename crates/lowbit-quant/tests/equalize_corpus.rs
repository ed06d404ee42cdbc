//! Cross-layer equalization of real models from the shared corpus keeps their FP32 function:
//! a MobileNetV2 trained on MNIST (BatchNormalization, ReLU6 as Clip, depthwise convs, a
//! Gemm head) on real digits, and EfficientNet-Lite0 on deterministic noise images.
//!
//! The corpus lives outside the repository: `$LOWBIT_SHARED` or `<crate>/../../../shared`.
//! When it is missing the tests say so and pass (a fresh clone without the corpus).

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::graph::Graph;
use lowbit_quant::algorithms::equalize::equalize;
use lowbit_quant::passes::bn_fold::fold_batch_norms;
use lowbit_tensor::Tensor;
use std::path::PathBuf;

/// Equalization may move the logits by float rounding only: the largest difference over the
/// largest logit.
const EXACT: f32 = 1e-4;

fn corpus_file(rel: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let path = dir.join("corpus").join(rel);
    if !path.exists() {
        eprintln!("skipping: {} not found (set LOWBIT_SHARED)", path.display());
    }
    path.exists().then_some(path)
}

/// The FP32 graph with BatchNormalization folded, before and after equalization, and the
/// step's summary.
fn folded_and_equalized(path: &PathBuf) -> (Graph, Graph, String) {
    let mut g = Graph::new(lowbit_onnx::load_model(path).unwrap()).unwrap();
    fold_batch_norms(&mut g).unwrap();
    let before = g.clone();
    let report = equalize(&mut g).unwrap();
    (before, g, report.summary)
}

fn logits(g: &Graph, input: &str, x: &Tensor) -> Vec<f32> {
    let s = Session::new(g.model(), &SessionOptions::with_threads(0)).unwrap();
    let out = s.run(vec![(input.to_string(), x.clone())]).unwrap();
    out[0].1.as_f32().unwrap().to_vec()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn argmax(v: &[f32]) -> Vec<usize> {
    v.chunks(10)
        .map(|r| r.iter().enumerate().fold(0, |b, (i, &x)| if x > r[b] { i } else { b }))
        .collect()
}

#[test]
fn mnist_mobilenetv2_keeps_its_logits() {
    let Some(model) = corpus_file("dev/models/mnist_mobilenetv2.onnx") else { return };
    let Some(images) = corpus_file("dev/data/mnist_test_0-4999/images.npy") else { return };
    let all = lowbit_tensor::npy::read_npy(&images).unwrap();
    let n = 64;
    // (x / 255 − 0.1307) / 0.3081, as the model's sidecar says.
    let x: Vec<f32> = all.as_slice::<u8>().unwrap()[..n * 784]
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.1307) / 0.3081)
        .collect();
    let x = Tensor::from_vec(vec![n, 1, 28, 28], x).unwrap();
    let (before, after, summary) = folded_and_equalized(&model);
    assert!(summary.contains("layer pairs equalized"), "{summary}");
    assert!(!summary.starts_with("0 layer pairs"), "{summary}");
    // The Constant nodes that made the ReLU6 bounds (exported as Clip(x, Constant, Constant))
    // go with the bounds they made.
    let unread: Vec<&str> = after
        .nodes()
        .iter()
        .filter(|n| n.op_type == "Constant" && after.consumers(&n.output[0]).is_empty())
        .map(|n| n.name.as_str())
        .collect();
    assert!(unread.is_empty(), "Constant nodes nothing reads: {unread:?}");
    let (a, b) = (logits(&before, "input", &x), logits(&after, "input", &x));
    let d = max_rel_diff(&a, &b);
    assert!(d < EXACT, "logits moved by {d} of their range ({summary})");
    assert_eq!(argmax(&a), argmax(&b));
}

#[test]
fn efficientnet_lite0_keeps_its_logits() {
    let Some(model) = corpus_file("dev/models/efficientnet-lite0.onnx") else { return };
    // Two noise images in the model's input range ((pixel − 127) / 128).
    let len = 2 * 3 * 224 * 224;
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let x: Vec<f32> = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let x = Tensor::from_vec(vec![2, 3, 224, 224], x).unwrap();
    let (before, after, summary) = folded_and_equalized(&model);
    // Every expand → depthwise → project chain of the 16 blocks, the stem and the head.
    assert!(summary.starts_with("35 layer pairs"), "{summary}");
    let d = max_rel_diff(&logits(&before, "input", &x), &logits(&after, "input", &x));
    assert!(d < EXACT, "logits moved by {d} of their range ({summary})");
}
