//! Calibration of a real third-party model (ONNX Model Zoo MNIST, CNTK export) on real MNIST
//! test images from the shared corpus, through lowbit's engine.
//!
//! The corpus lives outside the repository: `$LOWBIT_SHARED` or `<crate>/../../../shared`.
//! When it is missing the tests say so and pass (a fresh clone without the corpus).

use lowbit_engine::{Session, SessionOptions};
use lowbit_quant::calibrate::{CalibrationTable, Calibrator, CalibratorOptions, Method, Range};
use lowbit_tensor::Tensor;
use std::collections::BTreeMap;

mod common;
use common::shared;

struct Mnist {
    model: lowbit_onnx::pb::ModelProto,
    /// One `[1, 1, 28, 28]` float32 tensor (pixels 0..255) per image.
    images: Vec<Tensor>,
}

fn mnist(n: usize) -> Option<Mnist> {
    let dir = shared("mnist-8_cntk.onnx")?;
    let model = lowbit_onnx::load_model(dir.join("corpus/dev/models/mnist-8_cntk.onnx")).unwrap();
    let all =
        lowbit_tensor::npy::read_npy(&dir.join("corpus/dev/data/mnist_test_0-4999/images.npy"))
            .unwrap();
    let pixels = all.as_slice::<u8>().unwrap();
    let images = pixels
        .chunks_exact(28 * 28)
        .take(n)
        .map(|p| {
            Tensor::from_vec(vec![1, 1, 28, 28], p.iter().map(|&b| b as f32).collect()).unwrap()
        })
        .collect();
    Some(Mnist { model, images })
}

fn input_name(m: &Mnist) -> String {
    m.model.graph.as_ref().unwrap().input[0].name.clone()
}

/// Outputs of the model's Conv and MatMul nodes.
fn conv_matmul_outputs(m: &Mnist) -> Vec<String> {
    let g = m.model.graph.as_ref().unwrap();
    g.node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "MatMul")
        .flat_map(|n| n.output.clone())
        .collect()
}

fn calibrate(m: &Mnist, samples: usize, threads: usize) -> (CalibrationTable, usize) {
    let session = Session::new(&m.model, &SessionOptions::unfused(threads)).unwrap();
    let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
    let input = input_name(m);
    for img in &m.images[..samples] {
        cal.run(&session, vec![(input.clone(), img.clone())]).unwrap();
    }
    (cal.table().unwrap(), cal.memory_bytes())
}

#[test]
fn mnist_calibration_covers_every_conv_and_matmul_output() {
    let Some(m) = mnist(200) else { return };
    let (table, _) = calibrate(&m, 200, 1);
    assert_eq!(table.batches, 200);

    // The true extremes, seen independently through the engine's observer hook.
    let session = Session::new(&m.model, &SessionOptions::unfused(1)).unwrap();
    let mut truth: BTreeMap<String, Range> = BTreeMap::new();
    for img in &m.images {
        session
            .run_observed(vec![(input_name(&m), img.clone())], &mut |name, t| {
                if let Ok(v) = t.as_f32() {
                    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let r = truth.entry(name.to_string()).or_insert(Range::new(lo, hi));
                    *r = Range::new(r.min.min(lo), r.max.max(hi));
                }
            })
            .unwrap();
    }

    let wanted = conv_matmul_outputs(&m);
    assert_eq!(wanted.len(), 3, "mnist-8 has two Conv and one MatMul");
    for name in &wanted {
        assert!(table.range(name, Method::MinMax).is_some(), "no range for {name}");
    }
    for (name, t) in &table.tensors {
        let minmax = t.ranges.minmax;
        let seen = truth[name];
        assert!(minmax.contains(&seen), "{name}: minmax {minmax:?} misses {seen:?}");
        assert_eq!(minmax, seen, "{name}: minmax is exact");
        for method in [Method::Percentile, Method::Entropy, Method::Mse, Method::MovingAverage] {
            let r = t.ranges.get(method);
            assert!(minmax.contains(&r), "{name}: {method} {r:?} outside minmax {minmax:?}");
        }
        assert_eq!(t.count, t.histogram.counts.iter().sum::<u64>());
        assert_eq!(t.histogram.counts.len(), 2048);
    }
    // The input image: 0..255 pixels.
    assert_eq!(table.range(&input_name(&m), Method::MinMax), Some(Range::new(0.0, 255.0)));
}

#[test]
fn calibration_memory_does_not_grow_with_samples() {
    let Some(m) = mnist(200) else { return };
    let (t50, mem50) = calibrate(&m, 50, 1);
    let (t200, mem200) = calibrate(&m, 200, 1);
    assert_eq!(mem50, mem200, "observer state grows with samples");
    assert_eq!(t50.tensors.len(), t200.tensors.len());
    for (name, t) in &t50.tensors {
        let u = &t200.tensors[name];
        assert_eq!(t.histogram.counts.len(), u.histogram.counts.len(), "{name}");
        assert_eq!(u.count, 4 * t.count, "{name}");
    }
    // Serialized size differs only by the digits of the counts and bounds, not by samples.
    let (a, b) = (t50.to_json().len() as f64, t200.to_json().len() as f64);
    assert!((b / a) < 1.5, "ranges.json grew from {a} to {b} bytes");
}

#[test]
fn calibration_is_deterministic_across_thread_counts() {
    let Some(m) = mnist(200) else { return };
    let (one, _) = calibrate(&m, 200, 1);
    let (two, _) = calibrate(&m, 200, 2);
    assert!(one.to_json() == two.to_json(), "tables differ between 1 and 2 threads");
}

#[test]
fn calibration_table_is_saved_and_reused() {
    let Some(m) = mnist(20) else { return };
    let (t, _) = calibrate(&m, 20, 1);
    let dir = std::env::temp_dir().join(format!("lowbit-quant-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ranges.json");
    t.save(&path).unwrap();
    assert!(CalibrationTable::load(&path).unwrap() == t, "ranges.json does not round-trip");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_finite_input_is_reported_with_tensor_and_sample() {
    let Some(m) = mnist(3) else { return };
    let session = Session::new(&m.model, &SessionOptions::unfused(1)).unwrap();
    let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
    let input = input_name(&m);
    cal.run(&session, vec![(input.clone(), m.images[0].clone())]).unwrap();
    let mut bad = m.images[1].clone();
    bad.as_slice_mut::<f32>().unwrap()[5] = f32::NAN;
    let e = cal.run(&session, vec![(input.clone(), bad)]).unwrap_err().to_string();
    assert!(
        e.contains(&format!("'{input}'")) && e.contains("sample 1") && e.contains("element 5"),
        "{e}"
    );
}
