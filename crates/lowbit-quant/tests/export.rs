//! Quantized export checked against what we did not write: every model written here is saved,
//! loaded back, run by lowbit's engine and by ONNX Runtime (through `tests/ort_run.py`), and
//! the two must agree; corpus models must keep their accuracy.
//!
//! Needs the shared corpus (`$LOWBIT_SHARED` or `<crate>/../../../shared`) and a Python with
//! onnxruntime (`$LOWBIT_PYTHON`, else `<workspace>/.venv/bin/python`); without them the tests
//! say so and pass.

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::{CalibrationTable, Calibrator, CalibratorOptions};
use lowbit_quant::quantize::{quantize_model, QuantPlan, QuantizeConfig, QuantizeSummary};
use lowbit_quant::target::{Target, TargetChoice};
use lowbit_tensor::Tensor;
use std::path::{Path, PathBuf};

mod common;
use common::{ort_run, ort_run_opt, output, shared, stsb_sentences};

/// Saves into a fresh folder, reloads (the written file is what is checked) and returns the
/// folder (removed when it drops), the path and the model read back.
fn save(model: &ModelProto, tag: &str) -> (tempfile::TempDir, PathBuf, ModelProto) {
    let dir = tempfile::Builder::new().prefix(&format!("lowbit-export-{tag}-")).tempdir().unwrap();
    let path = dir.path().join(format!("{tag}.onnx"));
    lowbit_onnx::save_model(model, &path).unwrap();
    let back = lowbit_onnx::load_model(&path).unwrap();
    (dir, path, back)
}

// ---------------------------------------------------------------- MNIST-style models

struct Mnist {
    #[allow(dead_code)]
    name: &'static str,
    model: ModelProto,
    input: String,
    output: String,
    batch: usize,
    pixels: Tensor,
    labels: Vec<u8>,
    scale: f32,
    mean: f32,
    std: f32,
}

fn mnist(name: &'static str) -> Option<Mnist> {
    let dir = shared("mnist-8_cntk.onnx")?.join("corpus/dev");
    let model = lowbit_onnx::load_model(dir.join(format!("models/{name}.onnx"))).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("models/{name}.json"))).unwrap(),
    )
    .unwrap();
    let pixels =
        lowbit_tensor::npy::read_npy(&dir.join("data/mnist_test_0-4999/images.npy")).unwrap();
    let labels = lowbit_tensor::npy::read_npy(&dir.join("data/mnist_test_0-4999/labels.npy"))
        .unwrap()
        .as_slice::<u8>()
        .unwrap()
        .to_vec();
    let f = |k: &str| cfg[k].as_f64().unwrap() as f32;
    Some(Mnist {
        name,
        model,
        input: cfg["input"].as_str().unwrap().into(),
        output: cfg["output"].as_str().unwrap().into(),
        batch: cfg["batch"].as_u64().unwrap() as usize,
        pixels,
        labels,
        scale: f("scale"),
        mean: f("mean"),
        std: f("std"),
    })
}

impl Mnist {
    /// Rows `[start, end)` preprocessed as the sidecar says, as `[n, 1, 28, 28]`.
    fn rows(&self, start: usize, end: usize) -> Tensor {
        let p = &self.pixels.as_slice::<u8>().unwrap()[start * 784..end * 784];
        let v = p.iter().map(|&b| (b as f32 * self.scale - self.mean) / self.std).collect();
        Tensor::from_vec(vec![end - start, 1, 28, 28], v).unwrap()
    }

    /// Batches over rows `[start, end)` the model accepts (its fixed batch, else 100).
    fn batches(&self, start: usize, end: usize) -> Vec<Tensor> {
        let b = if self.batch == 1 { 1 } else { 100 };
        (start..end).step_by(b).map(|s| self.rows(s, (s + b).min(end))).collect()
    }

    fn calibrate(&self, start: usize, end: usize) -> CalibrationTable {
        let session = Session::new(&self.model, &SessionOptions::unfused(0)).unwrap();
        let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
        for x in self.batches(start, end) {
            cal.run(&session, vec![(self.input.clone(), x)]).unwrap();
        }
        cal.table().unwrap()
    }

    /// Arg-max class per row of `[start, end)`, and the raw outputs.
    fn predict(&self, model: &ModelProto, start: usize, end: usize) -> (Vec<usize>, Vec<f32>) {
        let session = Session::new(model, &SessionOptions::default()).unwrap();
        let mut classes = Vec::new();
        let mut raw = Vec::new();
        for x in self.batches(start, end) {
            let outs = session.run(vec![(self.input.clone(), x)]).unwrap();
            let y = output(&outs, &self.output).to_f32_vec().unwrap();
            for row in y.chunks(10) {
                classes.push(argmax(row));
            }
            raw.extend(y);
        }
        (classes, raw)
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

fn accuracy(pred: &[usize], labels: &[u8]) -> f64 {
    let ok = pred.iter().zip(labels).filter(|(p, l)| **p == **l as usize).count();
    100.0 * ok as f64 / pred.len() as f64
}

const CALIB: (usize, usize) = (0, 100);
const EVAL: (usize, usize) = (1000, 2000);
/// Largest top-1 accuracy loss allowed (percentage points) for static int8 per channel.
const MAX_ACCURACY_DROP: f64 = 0.3;

/// Static int8 per-channel: accuracy on 1000 held-out rows with lowbit's engine, and ORT vs
/// engine on the written file within one quantization step of the output. With 8-bit weights
/// ORT is compared as written (optimizations off); with `reduce_range` (7-bit weights) ORT's
/// fused integer kernels must agree too.
fn static_int8_check(name: &'static str) {
    let Some(m) = mnist(name) else { return };
    let table = m.calibrate(CALIB.0, CALIB.1);
    let (p32, _) = m.predict(&m.model, EVAL.0, EVAL.1);
    for reduce_range in [false, true] {
        let cfg = QuantizeConfig { reduce_range: Some(reduce_range), ..QuantizeConfig::default() };
        let tag = if reduce_range { "int8-rr" } else { "int8" };
        let (q, summary) = quantize_model(m.model.clone(), &cfg, Some(&table)).unwrap();
        println!("{name} ({tag}):\n{summary}");
        assert!(summary.total_quantized() > 0);
        let (_dir, path, q) = save(&q, &format!("{name}-{tag}"));

        let labels = &m.labels[EVAL.0..EVAL.1];
        let (p8, _) = m.predict(&q, EVAL.0, EVAL.1);
        let (a32, a8) = (accuracy(&p32, labels), accuracy(&p8, labels));
        let agree =
            100.0 * p32.iter().zip(&p8).filter(|(a, b)| a == b).count() as f64 / p8.len() as f64;
        println!(
            "{name}: static {tag} per-channel, rows {}..{}: fp32 {a32:.2} %, int8 {a8:.2} %, drop {:.2} pt, top-1 agreement {agree:.2} %",
            EVAL.0,
            EVAL.1,
            a32 - a8
        );
        assert!(a32 - a8 <= MAX_ACCURACY_DROP, "{name} {tag}: accuracy drop {:.2} pt", a32 - a8);
        assert!(agree >= 98.0, "{name} {tag}: top-1 agreement {agree:.2} %");

        let (same, worst, step) = fused_vs_unfused(&m, &q, &table);
        println!(
            "{name} ({tag}): lowbit fused integer kernels vs unfused float simulation: {:.2} % of outputs identical, max |diff| {worst:.5} (output step {step:.5})",
            100.0 * same
        );
        // One step of the last quantized tensor; burn's LogSoftmax after it spreads a one-step
        // logit change over the normalizer too (measured 1.27 steps), hence 2.
        assert!(
            worst <= 2.0 * step,
            "{name} {tag}: fused and unfused differ by {worst} > 2 steps of {step}"
        );

        let Some((plain, fused, step)) = ort_agreement(&m, &path, &q, &table) else { return };
        println!(
            "{name} ({tag}): lowbit engine vs ORT on the file: max |diff| {plain:.5} (ORT unfused QDQ), {fused:.5} (ORT fused integer kernels); output step {step:.5}"
        );
        assert!(
            plain <= step,
            "{name} {tag}: ORT (QDQ) and lowbit differ by {plain} > one step {step}"
        );
        if reduce_range {
            // 7-bit weights keep MLAS's AVX2 u8×s8 pair sums inside int16, so its fused
            // kernels compute what the QDQ graph says (up to requantization rounding).
            assert!(
                fused <= step,
                "{name} {tag}: ORT (fused) and lowbit differ by {fused} > one step {step}"
            );
        }
    }
}

/// lowbit's engine on the quantized model with load-time fusion (integer kernels) and without
/// (float Q/DQ simulation), over 200 evaluation rows: the fraction of identical outputs, the
/// largest difference, and the output's quantization step.
fn fused_vs_unfused(m: &Mnist, q: &ModelProto, table: &CalibrationTable) -> (f64, f32, f32) {
    let fused = Session::new(q, &SessionOptions::default()).unwrap();
    let plain = Session::new(q, &SessionOptions::unfused(0)).unwrap();
    assert!(
        fused.fused_ops().get("QLinearConv").is_some_and(|&n| n > 0),
        "no conv fused: {:?}",
        fused.fused_ops()
    );
    let r = table.range(&m.output, lowbit_quant::calibrate::Method::MinMax).unwrap();
    let step =
        lowbit_quant::qparams::range_qparams(&lowbit_quant::QuantScheme::uint8(), r.min, r.max)
            .unwrap()
            .scale;
    let (mut same, mut n, mut worst) = (0usize, 0usize, 0f32);
    for x in m.batches(EVAL.0, EVAL.0 + 200) {
        let a = fused.run(vec![(m.input.clone(), x.clone())]).unwrap();
        let b = plain.run(vec![(m.input.clone(), x)]).unwrap();
        let (a, b) =
            (output(&a, &m.output).as_f32().unwrap(), output(&b, &m.output).as_f32().unwrap());
        for (x, y) in a.iter().zip(b) {
            same += (x == y) as usize;
            n += 1;
            worst = worst.max((x - y).abs());
        }
    }
    (same as f64 / n as f64, worst, step)
}

/// Max |lowbit − ORT| on the output over 20 evaluation batches, ORT unfused and fused, and the
/// output's quantization step; `None` without Python/ORT.
fn ort_agreement(
    m: &Mnist,
    path: &Path,
    q: &ModelProto,
    table: &CalibrationTable,
) -> Option<(f32, f32, f32)> {
    let xs: Vec<Tensor> =
        m.batches(EVAL.0, EVAL.1).into_iter().take(if m.batch == 1 { 20 } else { 2 }).collect();
    let samples: Vec<Vec<(String, Tensor)>> =
        xs.iter().map(|x| vec![(m.input.clone(), x.clone())]).collect();
    let plain = ort_run_opt(path, &samples, false)?;
    let fused = ort_run(path, &samples).expect("python found above");
    let session = Session::new(q, &SessionOptions::default()).unwrap();
    let r = table.range(&m.output, lowbit_quant::calibrate::Method::MinMax).unwrap();
    let step =
        lowbit_quant::qparams::range_qparams(&lowbit_quant::QuantScheme::uint8(), r.min, r.max)
            .unwrap()
            .scale;
    let (mut worst, mut worst_fused) = (0f32, 0f32);
    for ((x, o), f) in xs.iter().zip(&plain).zip(&fused) {
        let ours = session.run(vec![(m.input.clone(), x.clone())]).unwrap();
        let a = output(&ours, &m.output).to_f32_vec().unwrap();
        let b = output(o, &m.output).to_f32_vec().unwrap();
        let c = output(f, &m.output).to_f32_vec().unwrap();
        assert_eq!(a.len(), b.len());
        for ((x, y), z) in a.iter().zip(&b).zip(&c) {
            worst = worst.max((x - y).abs());
            worst_fused = worst_fused.max((x - z).abs());
        }
    }
    Some((worst, worst_fused, step))
}

#[test]
fn static_int8_mnist_8_cntk() {
    static_int8_check("mnist-8_cntk");
}

#[test]
fn static_int8_burn_mnist_bn() {
    static_int8_check("burn_mnist_bn");
}

#[test]
fn static_int8_mnist_mobilenetv2() {
    static_int8_check("mnist_mobilenetv2");
}

#[test]
fn static_int8_mnist_resnet() {
    static_int8_check("mnist_resnet");
}

#[test]
fn batch_norm_folding_keeps_shared_initializers_and_outputs() {
    let Some(m) = mnist("mnist_resnet") else { return };
    let mut g = lowbit_onnx::graph::Graph::new(m.model.clone()).unwrap();
    let shared_bias = g.initializer("layer2.0.bn2.bias").unwrap().clone();
    let n = lowbit_quant::passes::bn_fold::fold_batch_norms(&mut g).unwrap();
    assert!(n > 0);
    assert!(g.nodes().iter().all(|n| n.op_type != "BatchNormalization"));
    let folded = g.into_model();
    let still: Vec<_> = folded
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.name == "layer2.0.bn2.bias")
        .collect();
    assert!(still.is_empty() || *still[0] == shared_bias, "shared bias edited in place");
    let x = m.rows(0, 8);
    let run = |model: &ModelProto| {
        let s = Session::new(model, &SessionOptions::default()).unwrap();
        output(&s.run(vec![(m.input.clone(), x.clone())]).unwrap(), &m.output).to_f32_vec().unwrap()
    };
    let (a, b) = (run(&m.model), run(&folded));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "folding changed the logits by {worst}");
}

#[test]
fn excluded_nodes_stay_float_and_are_reported() {
    let Some(m) = mnist("burn_mnist_bn") else { return };
    let table = m.calibrate(0, 20);
    let mut cfg = QuantizeConfig::default();
    cfg.exclude.op_types.push("Gemm".into());
    cfg.exclude.patterns.push("/conv3/*".into());
    let (q, s) = quantize_model(m.model.clone(), &cfg, Some(&table)).unwrap();
    assert_eq!(s.quantized.get("Gemm"), None);
    assert_eq!(s.quantized.get("Conv"), Some(&2));
    assert_eq!(s.excluded.len(), 3, "{s}");
    let g = q.graph.as_ref().unwrap();
    for n in g.node.iter().filter(|n| n.op_type == "Gemm") {
        assert!(
            g.initializer.iter().any(|t| t.name == n.input[1] && t.data_type == 1),
            "{} reads a quantized weight",
            n.name
        );
    }
    let (_dir, path, _) = save(&q, "burn-excluded");
    let x = m.rows(0, 1);
    let _ = ort_run(&path, &[vec![(m.input.clone(), x)]]);
}

#[test]
fn static_needs_a_calibration_table() {
    let Some(m) = mnist("mnist-8_cntk") else { return };
    let e = quantize_model(m.model.clone(), &QuantizeConfig::default(), None).unwrap_err();
    assert!(e.to_string().contains("calibrat"), "{e}");
}

#[test]
fn fp16_mnist_runs_in_onnx_runtime_and_agrees() {
    let Some(m) = mnist("burn_mnist_bn") else { return };
    let (q, s) = quantize_model(m.model.clone(), &QuantizeConfig::float16(false), None).unwrap();
    println!("{s}");
    assert!(s.size_after * 2 <= s.size_before + 16);
    let (_dir, path, _) = save(&q, "burn-fp16");
    let samples: Vec<Vec<(String, Tensor)>> =
        (EVAL.0..EVAL.0 + 50).map(|r| vec![(m.input.clone(), m.rows(r, r + 1))]).collect();
    let Some(ort) = ort_run(&path, &samples) else { return };
    let (p32, raw32) = m.predict(&m.model, EVAL.0, EVAL.0 + 50);
    let mut agree = 0;
    let mut worst = 0f32;
    for (i, o) in ort.iter().enumerate() {
        let y = output(o, &m.output);
        assert_eq!(y.dtype(), lowbit_tensor::DType::F32, "float32 output kept");
        let y = y.to_f32_vec().unwrap();
        agree += (argmax(&y) == p32[i]) as usize;
        for (a, b) in y.iter().zip(&raw32[i * 10..i * 10 + 10]) {
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
        }
    }
    println!("burn_mnist_bn fp16 (ORT) vs fp32 (lowbit): top-1 agreement {agree}/50, max rel diff {worst:.4}");
    assert!(agree >= 49);
    assert!(worst < 0.05);
    // lowbit's engine on the same file, where it runs fp16.
    match Session::new(&q, &SessionOptions::default()) {
        Ok(s) => match s.run(samples[0].clone()) {
            Ok(outs) => {
                let a = output(&outs, &m.output).to_f32_vec().unwrap();
                let b = output(&ort[0], &m.output).to_f32_vec().unwrap();
                let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                println!("fp16: lowbit engine vs ORT max |diff| {d:.4}");
                assert!(d < 0.05 * b.iter().fold(1f32, |m, v| m.max(v.abs())));
            }
            Err(e) => println!("fp16: lowbit engine cannot run the file yet: {e}"),
        },
        Err(e) => println!("fp16: lowbit engine cannot load the file yet: {e}"),
    }
}

// ---------------------------------------------------------------- MiniLM

struct MiniLm {
    model: ModelProto,
    /// Sentences of STS-B dev side a, rows `0..SENTENCES`, each at its own length.
    sentences: Vec<Vec<(String, Tensor)>>,
    /// Calibration sentences: side b, rows `0..CALIBRATION_SENTENCES`.
    calibration: Vec<Vec<(String, Tensor)>>,
}

const SENTENCES: usize = 50;
const CALIBRATION_SENTENCES: usize = 100;
const EMBEDDING: &str = "461";

fn minilm() -> Option<MiniLm> {
    let dir = shared("mnist-8_cntk.onnx")?.join("corpus/dev");
    let model = lowbit_onnx::load_model(dir.join("models/paraphrase-MiniLM-L3-v2.onnx")).unwrap();
    let sentences = stsb_sentences(&dir, "a", SENTENCES);
    let calibration = stsb_sentences(&dir, "b", CALIBRATION_SENTENCES);
    Some(MiniLm { model, sentences, calibration })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn embeddings(model: &ModelProto, sentences: &[Vec<(String, Tensor)>]) -> Vec<Vec<f32>> {
    let s = Session::new(model, &SessionOptions::default()).unwrap();
    sentences
        .iter()
        .map(|f| output(&s.run(f.clone()).unwrap(), EMBEDDING).to_f32_vec().unwrap())
        .collect()
}

/// Mean and min cosine of `q`'s embeddings to FP32's (lowbit engine), and the min cosine of
/// ORT's embeddings of the written file to lowbit's (ORT's fusions on with `ort_fused`).
fn minilm_check(
    m: &MiniLm,
    cfg: &QuantizeConfig,
    table: Option<&CalibrationTable>,
    ort_fused: bool,
    tag: &str,
) -> (f64, f64, Option<f64>, QuantizeSummary) {
    let (q, summary) = quantize_model(m.model.clone(), cfg, table).unwrap();
    let (_dir, path, q) = save(&q, tag);
    let e32 = embeddings(&m.model, &m.sentences);
    let eq = embeddings(&q, &m.sentences);
    // The engine's load-time fusion against the graph as written (float Q/DQ): dynamic
    // matmuls fuse bit-identically; static ones run integer sums (within 1e-4 cosine).
    let plain = Session::new(&q, &SessionOptions::unfused(0)).unwrap();
    for (f, e) in m.sentences.iter().zip(&eq).take(10) {
        let u = output(&plain.run(f.clone()).unwrap(), EMBEDDING).to_f32_vec().unwrap();
        if cfg.mode == lowbit_quant::quantize::QuantMode::Dynamic {
            assert_eq!(&u, e, "{tag}: fused and unfused embeddings differ");
        } else {
            assert!(cosine(&u, e) > 0.9999, "{tag}: fused vs unfused cosine {}", cosine(&u, e));
        }
    }
    let cos: Vec<f64> = e32.iter().zip(&eq).map(|(a, b)| cosine(a, b)).collect();
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    let min = cos.iter().copied().fold(1.0, f64::min);
    let ort = ort_run_opt(&path, &m.sentences[..10], ort_fused).map(|outs| {
        let c: Vec<f64> = outs
            .iter()
            .zip(&eq)
            .map(|(o, b)| cosine(&output(o, EMBEDDING).to_f32_vec().unwrap(), b))
            .collect();
        c.iter().copied().fold(1.0, f64::min)
    });
    (mean, min, ort, summary)
}

/// Static int8 (MatMuls, per-channel 7-bit weights, min-max): the bar is mean cosine
/// ≥ 0.99 to FP32. The one activation whose outliers would cost most (layer 0's GELU output,
/// expected 22.0 dB) is left float by the default SQNR floor, and the summary says so.
#[test]
fn minilm_static_int8_keeps_embeddings() {
    let Some(m) = minilm() else { return };
    let session = Session::new(&m.model, &SessionOptions::unfused(0)).unwrap();
    let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
    for f in &m.calibration {
        cal.run(&session, f.clone()).unwrap();
    }
    let table = cal.table().unwrap();
    // The ort-avx2 target: the one whose defaults give 7-bit weights.
    let cfg = QuantizeConfig {
        target: TargetChoice::Named(Target::OrtAvx2),
        ..QuantizeConfig::static_int8()
    };
    assert!(QuantPlan::resolve(&cfg).unwrap().weights.reduce_range, "7-bit weights on ort-avx2");
    let (mean, min, ort, s) = minilm_check(&m, &cfg, Some(&table), true, "minilm-static");
    println!("{s}");
    println!("MiniLM static int8 (reduce_range, min-max, {CALIBRATION_SENTENCES} calibration sentences): mean cosine to FP32 {mean:.4} (min {min:.4}) on {SENTENCES} sentences; ORT (fused) vs lowbit min cosine {ort:?}");
    assert_eq!(s.quantized.get("MatMul"), Some(&23), "{s}");
    assert_eq!(s.left_float.len(), 1, "{s}");
    assert!(s.left_float[0].node.contains("layer.0/output/dense"), "{s}");
    assert!(mean >= 0.99, "mean cosine {mean}");
    if let Some(c) = ort {
        assert!(c >= 0.995, "ORT (fused) and lowbit disagree: min cosine {c}");
    }
    // Without the floor every MatMul is quantized and the embeddings drift.
    let all = QuantizeConfig { min_activation_sqnr: None, ..cfg };
    let (mean_all, ..) = minilm_check(&m, &all, Some(&table), false, "minilm-static-all");
    println!("MiniLM static int8, every MatMul quantized: mean cosine {mean_all:.4}");
    assert!(mean_all < mean, "{mean_all} vs {mean}");
}

#[test]
fn minilm_dynamic_int8_keeps_embeddings() {
    let Some(m) = minilm() else { return };
    let (mean, min, ort, s) =
        minilm_check(&m, &QuantizeConfig::dynamic_int8(), None, true, "minilm-dynamic");
    println!("{s}");
    println!("MiniLM dynamic int8 per-channel: mean cosine to FP32 {mean:.4} (min {min:.4}) on {SENTENCES} sentences; ORT vs lowbit min cosine {ort:?}");
    assert!(s.quantized.get("MatMul").copied().unwrap_or(0) >= 18, "{s}");
    assert!(s.quantized.get("Gather").copied().unwrap_or(0) >= 1, "int8 embedding table: {s}");
    assert!(mean >= 0.98, "mean cosine {mean}");
    if let Some(c) = ort {
        // Int8 embedding rows move ORT and lowbit apart a little (measured 0.99990 on a VNNI
        // CPU against 0.999992 with float embeddings, below). Not traced yet: the suspect is
        // DynamicQuantizeLinear meeting more exact halves, which the two may round apart.
        assert!(c >= 0.9995, "ORT (fused) and lowbit disagree: min cosine {c}");
    }
    // Float embeddings isolate the integer MatMuls: with full 8-bit weights ORT's fused u8×s8
    // MatMulInteger saturated int16 pair sums on an AVX2 CPU (min cosine 0.988 to lowbit's
    // exact integer result); the target's weight width avoids that (measured 0.999992 on VNNI,
    // 0.9999998 with 7-bit weights on AVX2).
    let float_emb =
        QuantizeConfig { quantize_embeddings: Some(false), ..QuantizeConfig::dynamic_int8() };
    let (_, _, ort, _) = minilm_check(&m, &float_emb, None, true, "minilm-dynamic-float-emb");
    if let Some(c) = ort {
        assert!(c >= 0.9999, "ORT (fused) and lowbit disagree on the MatMuls: min cosine {c}");
    }
}

#[test]
fn minilm_weight_only_int4_blocked() {
    let Some(m) = minilm() else { return };
    let (mean, min, ort, s) =
        minilm_check(&m, &QuantizeConfig::weight_only_int4(32), None, false, "minilm-int4");
    println!("{s}");
    println!("MiniLM weight-only int4 (block 32): mean cosine to FP32 {mean:.4} (min {min:.4}); ORT vs lowbit min cosine {ort:?}; initializers {} -> {} bytes", s.size_before, s.size_after);
    assert!(mean >= 0.9, "mean cosine {mean}");
    // The 30522×384 word-embedding table (a Gather, not a MatMul) stays float32.
    assert!(s.size_after < s.size_before);
    if let Some(c) = ort {
        assert!(c >= 0.999, "ORT and lowbit disagree: min cosine {c}");
    }
}

// ---------------------------------------------------------------- models from other exporters

/// Text-line-like crops for PaddleOCR's direction classifier (`[1, 3, 48, 192]`, BGR scaled to
/// [-1, 1]): a light, slightly noisy background with dark glyph-sized blocks on a baseline.
fn text_crops(n: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = lowbit_data::rng::Rng::new(seed);
    (0..n)
        .map(|_| {
            let (h, w) = (48, 192);
            let mut px = vec![0f32; 3 * h * w];
            for v in px.iter_mut() {
                *v = 0.85 + 0.1 * rng.uniform() as f32;
            }
            let mut x = 4 + (rng.uniform() * 12.0) as usize;
            while x + 10 < w {
                let (gw, top) =
                    (4 + (rng.uniform() * 8.0) as usize, 8 + (rng.uniform() * 10.0) as usize);
                for c in 0..3 {
                    for y in top..38 {
                        for dx in 0..gw {
                            px[(c * h + y) * w + x + dx] = -0.8 + 0.2 * rng.uniform() as f32;
                        }
                    }
                }
                x += gw + 2 + (rng.uniform() * 6.0) as usize;
            }
            Tensor::from_vec(vec![1, 3, h, w], px).unwrap()
        })
        .collect()
}

/// PaddleOCR's direction classifier as paddle2onnx writes it (every weight a `Constant` node):
/// lowbit's engine agrees with ONNX Runtime on it, and static int8 quantizes its convolutions
/// (they become initializers first), with outputs close to FP32 in lowbit and in ORT.
#[test]
fn paddle_classifier_with_constant_weights_is_quantized() {
    let Some(shared) = shared("efficientnet-lite0.onnx") else { return };
    let path = shared.join("corpus/dev/other_exporters/ch_ppocr_mobile_v2.0_cls_infer.onnx");
    let model = lowbit_onnx::load_model(&path).unwrap();
    let out_name = model.graph.as_ref().unwrap().output[0].name.clone();
    let feeds = |xs: &[Tensor]| -> Vec<Vec<(String, Tensor)>> {
        xs.iter().map(|x| vec![("x".to_string(), x.clone())]).collect()
    };
    let calib = text_crops(16, 1);
    // Each crop upright and turned 180° (both spatial axes reversed): the two classes.
    let mut eval = text_crops(16, 2);
    let turned: Vec<Tensor> = eval
        .iter()
        .map(|x| {
            let v = x.as_f32().unwrap();
            let plane = 48 * 192;
            let t = (0..v.len()).map(|i| v[(i / plane) * plane + plane - 1 - i % plane]).collect();
            Tensor::from_vec(vec![1, 3, 48, 192], t).unwrap()
        })
        .collect();
    eval.extend(turned);
    let fp32 = Session::new(&model, &SessionOptions::default()).unwrap();
    let fp32_out: Vec<Vec<f32>> = eval
        .iter()
        .map(|x| {
            let o = fp32.run(vec![("x".into(), x.clone())]).unwrap();
            output(&o, &out_name).to_f32_vec().unwrap()
        })
        .collect();
    if let Some(ort) = ort_run(&path, &feeds(&eval)) {
        let worst = ort.iter().zip(&fp32_out).fold(0f32, |m, (o, ours)| {
            let theirs = output(o, &out_name).to_f32_vec().unwrap();
            theirs.iter().zip(ours).fold(m, |m, (a, b)| m.max((a - b).abs()))
        });
        println!("ppocr cls FP32: lowbit vs ORT max |diff| {worst:.2e}");
        assert!(worst < 1e-4, "lowbit and ORT differ by {worst} on the FP32 model");
    }

    let session = Session::new(&model, &SessionOptions::unfused(0)).unwrap();
    let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
    for x in &calib {
        cal.run(&session, vec![("x".into(), x.clone())]).unwrap();
    }
    let table = cal.table().unwrap();
    let (q, summary) =
        quantize_model(model.clone(), &QuantizeConfig::default(), Some(&table)).unwrap();
    println!("{summary}");
    assert!(summary.normalized.constants >= 53, "{:?}", summary.normalized);
    let cov = summary.coverage();
    let convs = summary.weighted["Conv"];
    assert_eq!(convs, 53);
    assert!(summary.quantized["Conv"] * 10 >= convs * 9, "{cov}");
    assert!(!cov.is_partial());
    let (_dir, qpath, q) = save(&q, "ppocr-cls");

    let sqnr = |outs: &[Vec<f32>]| {
        let (mut s, mut e) = (0f64, 0f64);
        for (a, b) in outs.iter().zip(&fp32_out) {
            for (x, y) in a.iter().zip(b) {
                s += (*y as f64).powi(2);
                e += ((x - y) as f64).powi(2);
            }
        }
        10.0 * (s / e.max(1e-30)).log10()
    };
    let qs = Session::new(&q, &SessionOptions::default()).unwrap();
    let ours: Vec<Vec<f32>> = eval
        .iter()
        .map(|x| {
            output(&qs.run(vec![("x".into(), x.clone())]).unwrap(), &out_name).to_f32_vec().unwrap()
        })
        .collect();
    let ours_db = sqnr(&ours);
    let decisions = |outs: &[Vec<f32>]| outs.iter().map(|o| argmax(o)).collect::<Vec<_>>();
    let same = decisions(&ours).iter().zip(decisions(&fp32_out)).filter(|(a, b)| **a == *b).count();
    let upright = decisions(&fp32_out).iter().filter(|&&c| c == 0).count();
    println!(
        "ppocr cls int8 vs FP32 on lowbit's engine: SQNR {ours_db:.1} dB, 0°/180° decision the \
         same on {same} of {} crops (FP32 says 0° for {upright})",
        eval.len()
    );
    assert_eq!(same, eval.len(), "the int8 model turns some decisions");
    assert!(ours_db >= 20.0, "int8 output SQNR {ours_db:.1} dB");
    if let Some(ort) = ort_run(&qpath, &feeds(&eval)) {
        let theirs: Vec<Vec<f32>> =
            ort.iter().map(|o| output(o, &out_name).to_f32_vec().unwrap()).collect();
        let ort_db = sqnr(&theirs);
        println!("ppocr cls int8 vs FP32 in ONNX Runtime: SQNR {ort_db:.1} dB");
        assert!(ort_db >= 20.0, "ORT int8 output SQNR {ort_db:.1} dB");
    }
}
