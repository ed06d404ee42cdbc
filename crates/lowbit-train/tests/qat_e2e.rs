//! End to end on a tiny hand-built CNN (Conv → Relu → MaxPool → Flatten → Gemm → Relu → Gemm →
//! LogSoftmax, fixed-seed weights): QAT with ternary and int4 weights beats post-training
//! quantization at the same bit width on samples it never trained on, the trained file runs on
//! lowbit's engine and ONNX Runtime with the same results, and a seed gives the same model.

use lowbit_data::Rng;
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::build::{int_attr as int, ints_attr as ints};
use lowbit_onnx::build::{model, node, tensor_value_info, Dim};
use lowbit_onnx::pb::ModelProto;
use lowbit_onnx::tensor_to_proto;
use lowbit_quant::calibrate::{calibrate_samples, CalibratorOptions};
use lowbit_quant::samples::NoProgress;
use lowbit_tensor::{DType, Tensor};
use lowbit_train::qat::{train, QatOptions, Sample, WeightBits};
use std::path::PathBuf;

fn tiny_cnn() -> ModelProto {
    let mut rng = Rng::new(7);
    let mut t = |name: &str, shape: &[usize], scale: f32| {
        let n = shape.iter().product();
        tensor_to_proto(name, &Tensor::from_vec(shape.to_vec(), rng.normals(n, scale)).unwrap())
    };
    let inits = vec![
        t("conv.w", &[6, 1, 3, 3], 0.5),
        t("conv.b", &[6], 0.1),
        t("fc1.w", &[16, 6 * 4 * 4], 0.15),
        t("fc1.b", &[16], 0.1),
        t("fc2.w", &[5, 16], 0.5),
        t("fc2.b", &[5], 0.1),
    ];
    let mut conv = node("Conv", "conv", &["x", "conv.w", "conv.b"], &["c"]);
    conv.attribute = vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])];
    let mut pool = node("MaxPool", "pool", &["r"], &["p"]);
    pool.attribute = vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])];
    let mut fc1 = node("Gemm", "fc1", &["f", "fc1.w", "fc1.b"], &["h"]);
    fc1.attribute = vec![int("transB", 1)];
    let mut fc2 = node("Gemm", "fc2", &["h2", "fc2.w", "fc2.b"], &["logits"]);
    fc2.attribute = vec![int("transB", 1)];
    let mut lsm = node("LogSoftmax", "lsm", &["logits"], &["y"]);
    lsm.attribute = vec![int("axis", 1)];
    let graph = lowbit_onnx::pb::GraphProto {
        name: "tiny".into(),
        node: vec![
            conv,
            node("Relu", "relu", &["c"], &["r"]),
            pool,
            node("Flatten", "flat", &["p"], &["f"]),
            fc1,
            node("Relu", "relu2", &["h"], &["h2"]),
            fc2,
            lsm,
        ],
        initializer: inits,
        input: vec![tensor_value_info(
            "x",
            DType::F32,
            &[Dim::Named("n"), Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8)],
        )],
        output: vec![tensor_value_info("y", DType::F32, &[Dim::Named("n"), Dim::Fixed(5)])],
        ..Default::default()
    };
    model(graph, 13)
}

fn samples(n: usize, seed: u64) -> Vec<Sample> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| Sample {
            feeds: vec![(
                "x".into(),
                Tensor::from_vec(vec![1, 1, 8, 8], rng.normals(64, 1.0)).unwrap(),
            )],
            label: None,
        })
        .collect()
}

fn run(m: &ModelProto, s: &[Sample]) -> Vec<Vec<f32>> {
    let session = Session::new(m, &SessionOptions::with_threads(1)).unwrap();
    s.iter()
        .map(|x| session.run(x.feeds.clone()).unwrap().remove(0).1.as_f32().unwrap().to_vec())
        .collect()
}

/// Mean KL(FP32 ‖ model) of log-softmax outputs, and top-1 agreement.
fn kl_and_agreement(reference: &[Vec<f32>], got: &[Vec<f32>]) -> (f64, f64) {
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let mut kl = 0.0;
    let mut agree = 0;
    for (r, g) in reference.iter().zip(got) {
        kl += r.iter().zip(g).map(|(&a, &b)| (a.exp() * (a - b)) as f64).sum::<f64>();
        agree += (argmax(r) == argmax(g)) as usize;
    }
    (kl / reference.len() as f64, agree as f64 / reference.len() as f64)
}

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOWBIT_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    eprintln!("skipping the ONNX Runtime check: no LOWBIT_PYTHON and no .venv (source scripts/setup-test-env.sh)");
    None
}

fn qat(weights: WeightBits, seed: u64) -> (ModelProto, ModelProto) {
    let fp32 = tiny_cnn();
    let train_set = samples(300, 1);
    let mut cal: Vec<Vec<(String, Tensor)>> = train_set.iter().map(|s| s.feeds.clone()).collect();
    let table =
        calibrate_samples(&fp32, &mut cal, CalibratorOptions::default(), 1, &NoProgress).unwrap();
    let opts =
        QatOptions { weights, epochs: 8, lr: 2e-2, batch: 16, seed, ..QatOptions::default() };
    let out = train(&fp32, &table, &train_set, &opts, &NoProgress).unwrap();
    assert!(out.holdout_loss_after < out.holdout_loss_before, "{weights}: {out:?}");
    (out.model, out.ptq)
}

#[test]
fn ternary_qat_beats_post_training_on_unseen_samples_and_runs_on_ort() {
    let fp32 = tiny_cnn();
    let (trained, ptq) = qat(WeightBits::Ternary, 3);
    let test = samples(200, 99);
    let reference = run(&fp32, &test);
    let (kl_ptq, agree_ptq) = kl_and_agreement(&reference, &run(&ptq, &test));
    let (kl_qat, agree_qat) = kl_and_agreement(&reference, &run(&trained, &test));
    eprintln!("ternary: PTQ KL {kl_ptq:.4} agreement {agree_ptq:.3}; QAT KL {kl_qat:.4} agreement {agree_qat:.3}");
    assert!(kl_qat < 0.7 * kl_ptq, "QAT KL {kl_qat} vs PTQ {kl_ptq}");
    assert!(agree_qat > agree_ptq, "QAT agreement {agree_qat} vs PTQ {agree_ptq}");

    // Ternary codes: int8 QDQ with codes in {-1, 0, 1}.
    let g = trained.graph.as_ref().unwrap();
    let codes: Vec<_> = g.initializer.iter().filter(|t| t.name.ends_with(".w_quantized")).collect();
    assert_eq!(codes.len(), 3, "one code tensor per layer");
    for c in codes {
        let t = lowbit_onnx::tensor_from_proto(c).unwrap();
        assert_eq!(t.dtype(), DType::I8);
        let v = lowbit_kernels::quantize::int_values(t.data()).unwrap();
        assert!(v.iter().all(|x| (-1..=1).contains(x)), "{}: codes beyond ternary", c.name);
        assert!(v.contains(&0) && v.contains(&1) && v.contains(&-1));
    }

    // ONNX Runtime runs the file and agrees with lowbit's engine.
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qat.onnx");
    lowbit_onnx::save_model(&trained, &path).unwrap();
    let batch: Vec<f32> =
        test[..16].iter().flat_map(|s| s.feeds[0].1.as_f32().unwrap().to_vec()).collect();
    let x = Tensor::from_vec(vec![16, 1, 8, 8], batch).unwrap();
    lowbit_tensor::npy::write_npy(&dir.path().join("x.npy"), &x).unwrap();
    let script = "import sys, numpy as np, onnxruntime as ort\n\
        s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
        y = s.run(None, {'x': np.load(sys.argv[2])})[0]\n\
        np.save(sys.argv[3], y)\n";
    let status = std::process::Command::new(py)
        .args(["-c", script])
        .arg(&path)
        .arg(dir.path().join("x.npy"))
        .arg(dir.path().join("y.npy"))
        .status()
        .unwrap();
    assert!(status.success(), "onnxruntime could not run the QAT model");
    let y = lowbit_tensor::npy::read_npy(&dir.path().join("y.npy")).unwrap();
    let ours = run(&trained, &test[..16]);
    let (_, agree) = kl_and_agreement(
        &ours,
        &y.as_f32().unwrap().chunks(5).map(|c| c.to_vec()).collect::<Vec<_>>(),
    );
    assert!(agree >= 0.9, "ORT and lowbit's engine agree on {agree} of the samples");
}

#[test]
fn int4_qat_beats_post_training_and_is_deterministic() {
    let fp32 = tiny_cnn();
    let (a, ptq) = qat(WeightBits::Int4, 5);
    let test = samples(200, 98);
    let reference = run(&fp32, &test);
    let (kl_ptq, _) = kl_and_agreement(&reference, &run(&ptq, &test));
    let (kl_qat, _) = kl_and_agreement(&reference, &run(&a, &test));
    eprintln!("int4: PTQ KL {kl_ptq:.5}; QAT KL {kl_qat:.5}");
    assert!(kl_qat < kl_ptq, "QAT KL {kl_qat} vs PTQ {kl_ptq}");
    let (b, _) = qat(WeightBits::Int4, 5);
    assert_eq!(a, b, "the same seed gives the same model");
}
