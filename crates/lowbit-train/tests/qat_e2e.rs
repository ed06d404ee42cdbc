//! End to end on a tiny hand-built CNN (Conv → Relu → MaxPool → Flatten → Gemm → Relu → Gemm →
//! LogSoftmax, fixed-seed weights): QAT with ternary and int4 weights beats post-training
//! quantization at the same bit width on samples it never trained on, the trained file runs on
//! lowbit's engine and ONNX Runtime with the same results, and a seed gives the same model.
//! int4 keeps the first and last layers on int8 codes; `init` starts from a given QDQ model's
//! codes; blocked int4 MatMul weights (a tiny MLP) train one step per block.

use lowbit_data::Rng;
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::build::{int_attr as int, ints_attr as ints};
use lowbit_onnx::build::{model, node, tensor_value_info, Dim};
use lowbit_onnx::pb::ModelProto;
use lowbit_onnx::tensor_to_proto;
use lowbit_quant::calibrate::{calibrate_samples, CalibrationTable, CalibratorOptions};
use lowbit_quant::samples::NoProgress;
use lowbit_tensor::{DType, Tensor};
use lowbit_train::program::WeightStart;
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

/// Default calibration of `m` on the samples' feeds (what `quantize` and `qat` start from).
fn calibrate(m: &ModelProto, samples: &[Sample]) -> CalibrationTable {
    let mut feeds: Vec<Vec<(String, Tensor)>> = samples.iter().map(|s| s.feeds.clone()).collect();
    calibrate_samples(m, &mut feeds, CalibratorOptions::default(), 1, &NoProgress).unwrap()
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
    let table = calibrate(&fp32, &train_set);
    // Every layer on the trained grid (the int8 ends have their own test).
    let opts = QatOptions {
        weights,
        epochs: 8,
        lr: 2e-2,
        batch: 16,
        seed,
        int8_ends: false,
        ..QatOptions::default()
    };
    let out = train(&fp32, &table, &train_set, &opts, &NoProgress).unwrap();
    assert!(
        out.holdout_loss_after < out.holdout_loss_before,
        "{weights}: held-out loss {} -> {}",
        out.holdout_loss_before,
        out.holdout_loss_after
    );
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
    let Some(y) = run_ort(&trained, &test[..16]) else { return };
    let ours = run(&trained, &test[..16]);
    let (_, agree) = kl_and_agreement(&ours, &y);
    assert!(agree >= 0.9, "ORT and lowbit's engine agree on {agree} of the samples");
}

/// `m`'s first output on `samples` (input `x`, batched) in ONNX Runtime, one row per sample;
/// `None` (with a note) where no Python with onnxruntime is set up.
fn run_ort(m: &ModelProto, samples: &[Sample]) -> Option<Vec<Vec<f32>>> {
    let py = python()?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qat.onnx");
    lowbit_onnx::save_model(m, &path).unwrap();
    let one = samples[0].feeds[0].1.shape().to_vec();
    let batch: Vec<f32> =
        samples.iter().flat_map(|s| s.feeds[0].1.as_f32().unwrap().to_vec()).collect();
    let mut shape = one.clone();
    shape[0] = samples.len();
    let x = Tensor::from_vec(shape, batch).unwrap();
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
    let per = y.len() / samples.len();
    Some(y.as_f32().unwrap().chunks(per).map(|c| c.to_vec()).collect())
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

/// The integer codes of initializer `name` and their type.
fn codes(m: &ModelProto, name: &str) -> (DType, Vec<i32>) {
    let g = m.graph.as_ref().unwrap();
    let p = g.initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name}"));
    let t = lowbit_onnx::tensor_from_proto(p).unwrap();
    (t.dtype(), lowbit_kernels::quantize::int_values(t.data()).unwrap())
}

#[test]
fn int4_trains_the_first_and_last_layers_on_int8_codes_unless_told() {
    let fp32 = tiny_cnn();
    let train_set = samples(64, 1);
    let table = calibrate(&fp32, &train_set);
    let opts = |int8_ends| QatOptions {
        weights: WeightBits::Int4,
        epochs: 2,
        batch: 16,
        int8_ends,
        ..QatOptions::default()
    };
    let ends = train(&fp32, &table, &train_set, &opts(true), &NoProgress).unwrap();
    // The stem and the classifier on int8 codes that use more than 4 bits; the middle on int4.
    for layer in ["conv.w", "fc2.w"] {
        let (t, v) = codes(&ends.model, &format!("{layer}_quantized"));
        assert_eq!(t, DType::I8, "{layer}");
        assert!(v.iter().any(|c| !(-8..=7).contains(c)), "{layer}: codes never leave int4's range");
        assert!(v.iter().all(|c| (-127..=127).contains(c)), "{layer}");
    }
    assert_eq!(codes(&ends.model, "fc1.w_quantized").0, DType::I4);
    let all4 = train(&fp32, &table, &train_set, &opts(false), &NoProgress).unwrap();
    for layer in ["conv.w", "fc1.w", "fc2.w"] {
        assert_eq!(codes(&all4.model, &format!("{layer}_quantized")).0, DType::I4, "{layer}");
    }
}

#[test]
fn qat_starts_from_the_init_models_codes() {
    let fp32 = tiny_cnn();
    let train_set = samples(96, 1);
    let table = calibrate(&fp32, &train_set);
    let base = QatOptions { weights: WeightBits::Int4, epochs: 3, batch: 16, ..Default::default() };
    let rtn = train(&fp32, &table, &train_set, &base, &NoProgress).unwrap().ptq;
    // A starting model whose int4 codes differ from round-to-nearest (as AdaRound's do): every
    // third code of the middle layer one step towards zero.
    let mut init = rtn.clone();
    let name = "fc1.w_quantized";
    let (dtype, mut v) = codes(&init, name);
    for c in v.iter_mut().step_by(3) {
        *c -= c.signum();
    }
    let t = Tensor::new(
        lowbit_onnx::tensor_from_proto(
            rtn.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == name).unwrap(),
        )
        .unwrap()
        .shape()
        .to_vec(),
        lowbit_tensor::cast::int_data(&v, dtype).unwrap(),
    )
    .unwrap();
    let g = init.graph.as_mut().unwrap();
    let at = g.initializer.iter().position(|t| t.name == name).unwrap();
    g.initializer[at] = tensor_to_proto(name, &t);
    assert_ne!(codes(&init, name).1, codes(&rtn, name).1);

    let opts = QatOptions { init: Some(init.clone()), start: WeightStart::Codes, ..base.clone() };
    let out = train(&fp32, &table, &train_set, &opts, &NoProgress).unwrap();
    // The baseline is the starting model itself, and training never keeps a worse one.
    assert_eq!(codes(&out.ptq, name).1, v, "QAT did not start from the init model's codes");
    assert!(out.holdout_loss_after <= out.holdout_loss_before);
    // From FP32 weights with the init model's scales instead: round-to-nearest codes.
    let fp = QatOptions { init: Some(init), start: WeightStart::Fp32, ..base };
    let out = train(&fp32, &table, &train_set, &fp, &NoProgress).unwrap();
    assert_eq!(codes(&out.ptq, name).1, codes(&rtn, name).1);
}

/// x[n, 64] → MatMul [64, 32] → Relu → MatMul [32, 32] → Relu → MatMul [32, 8] (fixed seed).
fn tiny_mlp() -> ModelProto {
    let mut rng = Rng::new(11);
    let mut t = |name: &str, shape: &[usize], scale: f32| {
        let n = shape.iter().product();
        tensor_to_proto(name, &Tensor::from_vec(shape.to_vec(), rng.normals(n, scale)).unwrap())
    };
    let graph = lowbit_onnx::pb::GraphProto {
        name: "mlp".into(),
        node: vec![
            node("MatMul", "mm1", &["x", "w1"], &["a"]),
            node("Relu", "r1", &["a"], &["ra"]),
            node("MatMul", "mm2", &["ra", "w2"], &["b"]),
            node("Relu", "r2", &["b"], &["rb"]),
            node("MatMul", "mm3", &["rb", "w3"], &["y"]),
        ],
        initializer: vec![
            t("w1", &[64, 32], 0.2),
            t("w2", &[32, 32], 0.25),
            t("w3", &[32, 8], 0.3),
        ],
        input: vec![tensor_value_info("x", DType::F32, &[Dim::Named("n"), Dim::Fixed(64)])],
        output: vec![tensor_value_info("y", DType::F32, &[Dim::Named("n"), Dim::Fixed(8)])],
        ..Default::default()
    };
    model(graph, 13)
}

#[test]
fn blocked_int4_qat_learns_one_step_per_block_and_runs_on_ort() {
    let fp32 = tiny_mlp();
    let mut rng = Rng::new(5);
    let mut rows = |n: usize| -> Vec<Sample> {
        (0..n)
            .map(|_| Sample {
                feeds: vec![(
                    "x".into(),
                    Tensor::from_vec(vec![1, 64], rng.normals(64, 1.0)).unwrap(),
                )],
                label: None,
            })
            .collect()
    };
    let (train_set, test) = (rows(200), rows(100));
    let table = calibrate(&fp32, &train_set);
    let opts = QatOptions {
        weights: WeightBits::Int4,
        block_size: Some(16),
        int8_ends: false,
        epochs: 6,
        lr: 5e-3,
        batch: 16,
        ..QatOptions::default()
    };
    let out = train(&fp32, &table, &train_set, &opts, &NoProgress).unwrap();
    assert!(out.holdout_loss_after < out.holdout_loss_before);

    // Blocked DequantizeLinear (block_size 16 along K, opset 21): scales [K / 16, N].
    let g = out.model.graph.as_ref().unwrap();
    for (w, k, n) in [("w1", 64, 32), ("w2", 32, 32), ("w3", 32, 8)] {
        let dq = g.node.iter().find(|d| d.input[0] == format!("{w}_quantized")).unwrap();
        let block = dq.attribute.iter().find(|a| a.name == "block_size").map(|a| a.i);
        assert_eq!(block, Some(16), "{w}");
        let s = g.initializer.iter().find(|t| t.name == dq.input[1]).unwrap();
        assert_eq!(s.dims, vec![k / 16, n], "{w}'s scales");
        assert_eq!(codes(&out.model, &format!("{w}_quantized")).0, DType::I4);
    }
    assert!(out.model.opset_import.iter().any(|o| o.domain.is_empty() && o.version >= 21));

    // Closer to FP32 than post-training on rows it never saw; ORT runs it like lowbit.
    let cos = |a: &[f32], b: &[f32]| {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        d / (a.iter().map(|x| x * x).sum::<f32>() * b.iter().map(|x| x * x).sum::<f32>()).sqrt()
    };
    let mean_cos = |r: &[Vec<f32>], o: &[Vec<f32>]| {
        r.iter().zip(o).map(|(a, b)| cos(a, b)).sum::<f32>() / r.len() as f32
    };
    let reference = run(&fp32, &test);
    let ours = run(&out.model, &test);
    let (c_ptq, c_qat) = (mean_cos(&reference, &run(&out.ptq, &test)), mean_cos(&reference, &ours));
    eprintln!("blocked int4: PTQ cosine {c_ptq:.5}, QAT {c_qat:.5}");
    assert!(c_qat > c_ptq, "QAT cosine {c_qat} vs post-training {c_ptq}");
    let Some(y) = run_ort(&out.model, &test) else { return };
    assert!(mean_cos(&ours, &y) > 0.9999, "ORT and lowbit's engine differ");
}

#[test]
fn a_collapsed_weight_step_is_raised_to_what_its_int32_bias_needs() {
    use lowbit_train::program::ParamKind;
    let fp32 = tiny_cnn();
    let train_set = samples(32, 1);
    let table = calibrate(&fp32, &train_set);
    let opts = QatOptions { weights: WeightBits::Int4, ..QatOptions::default() };
    let mut p = lowbit_train::qat::prepare(&fp32, &table, &opts).unwrap();
    // A channel whose step trained towards zero: its bias no longer fits int32 at s_in · s_w.
    let conv = p
        .program
        .params
        .iter()
        .position(|x| x.kind == ParamKind::WeightScale && x.label == "conv")
        .unwrap();
    p.program.params[conv].value[0] = 1e-12;
    assert!(p.program.export(&p.qdq).is_err(), "an overflowing bias must not be written");
    p.program.project();
    assert!(p.program.params[conv].value[0] > 1e-12);
    let m = p.program.export(&p.qdq).unwrap();
    let (_, b) = codes(&m, "conv.b_quantized");
    assert!(b.iter().all(|&c| c.unsigned_abs() < 1 << 30), "bias codes within the headroom");
}

#[test]
fn asymmetric_int4_weights_train_around_their_zero_points() {
    use lowbit_quant::quantize::{quantize_with_plan, QuantPlan, QuantizeConfig};
    use lowbit_quant::scheme::{IntType, Mode};
    let fp32 = tiny_cnn();
    let train_set = samples(96, 1);
    let table = calibrate(&fp32, &train_set);
    // `quantize --weights int4` writes asymmetric weights (a zero point per channel).
    let cfg = QuantizeConfig {
        weights: IntType::Int4,
        weight_mode: Some(Mode::Asymmetric),
        ..QuantizeConfig::default()
    };
    let plan = QuantPlan::resolve(&cfg).unwrap();
    let (init, _) = quantize_with_plan(fp32.clone(), &plan, Some(&table)).unwrap();
    let (_, zp) = codes(&init, "fc1.w_zero_point");
    assert!(zp.iter().any(|&z| z != 0), "the middle layer should be asymmetric");
    let opts = QatOptions {
        weights: WeightBits::Int4,
        epochs: 3,
        batch: 16,
        init: Some(init.clone()),
        start: WeightStart::Codes,
        ..QatOptions::default()
    };
    let out = train(&fp32, &table, &train_set, &opts, &NoProgress).unwrap();
    // Every layer's weights are trained (none frozen for its zero points), the start is the
    // init model exactly, and the zero points are kept.
    assert_eq!(out.trained_weights, 54 + 16 * 96 + 5 * 16);
    assert_eq!(codes(&out.ptq, "fc1.w_quantized").1, codes(&init, "fc1.w_quantized").1);
    assert_eq!(codes(&out.model, "fc1.w_zero_point").1, zp);
    assert!(out.holdout_loss_after <= out.holdout_loss_before);
}
