//! `compare_models` on real data: MobileNetV2 (MNIST) quantized by lowbit with per-tensor and
//! per-channel weights, compared on held-out rows; plus small hand-made QDQ models for the
//! noise arithmetic and the error cases.
//!
//! The corpus tests need the shared corpus (`$LOWBIT_SHARED` or `<crate>/../../../shared`);
//! without it they say so and pass.

use lowbit_eval::compare::{compare_models, CompareError, CompareOptions, CompareReport};
use lowbit_onnx::infer::{SymDim, ValueType};
use lowbit_onnx::pb::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use lowbit_quant::calibrate::{CalibrationTable, Calibrator, CalibratorOptions};
use lowbit_quant::quantize::{quantize_model, QuantizeConfig};
use lowbit_tensor::Tensor;
use std::path::PathBuf;
use std::sync::OnceLock;

// ------------------------------------------------------------------------- corpus: MobileNetV2

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let ok = dir.join("corpus/dev/models/mnist_mobilenetv2.onnx").exists();
    if !ok {
        eprintln!("skipping: shared corpus not found at {} (set LOWBIT_SHARED)", dir.display());
    }
    ok.then_some(dir)
}

struct Mnist {
    model: ModelProto,
    input: String,
    pixels: Tensor,
}

impl Mnist {
    fn load(name: &str) -> Option<Mnist> {
        let dir = shared()?.join("corpus/dev");
        let model = lowbit_onnx::load_model(dir.join(format!("models/{name}.onnx"))).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("models/{name}.json"))).unwrap(),
        )
        .unwrap();
        let pixels =
            lowbit_tensor::npy::read_npy(&dir.join("data/mnist_test_0-4999/images.npy")).unwrap();
        Some(Mnist { model, input: cfg["input"].as_str().unwrap().into(), pixels })
    }

    /// Rows `[start, end)` as `(x/255 − 0.1307)/0.3081`, shape `[n, 1, 28, 28]`.
    fn rows(&self, start: usize, end: usize) -> Tensor {
        let p = &self.pixels.as_slice::<u8>().unwrap()[start * 784..end * 784];
        let v = p.iter().map(|&b| (b as f32 / 255.0 - 0.1307) / 0.3081).collect();
        Tensor::from_vec(vec![end - start, 1, 28, 28], v).unwrap()
    }

    /// Feeds of `batch` rows each over `[start, end)`.
    fn samples(&self, start: usize, end: usize, batch: usize) -> Vec<Vec<(String, Tensor)>> {
        (start..end)
            .step_by(batch)
            .map(|s| vec![(self.input.clone(), self.rows(s, (s + batch).min(end)))])
            .collect()
    }

    fn calibrate(&self, start: usize, end: usize) -> CalibrationTable {
        let session =
            lowbit_engine::Session::new(&self.model, &lowbit_engine::SessionOptions::unfused(0))
                .unwrap();
        let mut cal = Calibrator::new(CalibratorOptions::default()).unwrap();
        for feeds in self.samples(start, end, 100) {
            cal.run(&session, feeds).unwrap();
        }
        cal.table().unwrap()
    }
}

/// Calibration rows and the 50 held-out rows compared.
const CALIB: (usize, usize) = (0, 100);
const EVAL: (usize, usize) = (1000, 1050);

struct MobileNet {
    fp32: ModelProto,
    per_tensor: ModelProto,
    samples: Vec<Vec<(String, Tensor)>>,
    /// Compared at 1 engine thread.
    report_pt: CompareReport,
    report_pc: CompareReport,
}

/// MobileNetV2 quantized both ways and compared once, shared by the tests below.
fn mobilenet() -> Option<&'static MobileNet> {
    static CELL: OnceLock<Option<MobileNet>> = OnceLock::new();
    CELL.get_or_init(|| {
        let m = Mnist::load("mnist_mobilenetv2")?;
        let table = m.calibrate(CALIB.0, CALIB.1);
        let quantize = |per_channel: bool| {
            let cfg = QuantizeConfig { per_channel, ..QuantizeConfig::static_int8() };
            quantize_model(m.model.clone(), &cfg, Some(&table)).unwrap().0
        };
        let (per_tensor, per_channel) = (quantize(false), quantize(true));
        let samples = m.samples(EVAL.0, EVAL.1, 10);
        let opts = |tag: &str| CompareOptions {
            threads: 1,
            fp32_model: "mnist_mobilenetv2.onnx".into(),
            quant_model: format!("mnist_mobilenetv2.{tag}.onnx"),
        };
        let report_pt =
            compare_models(&m.model, &per_tensor, samples.clone(), &opts("per-tensor")).unwrap();
        let report_pc =
            compare_models(&m.model, &per_channel, samples.clone(), &opts("per-channel")).unwrap();
        Some(MobileNet { fp32: m.model, per_tensor, samples, report_pt, report_pc })
    })
    .as_ref()
}

fn print_top(title: &str, r: &CompareReport, n: usize) {
    println!("{title}: top {n} of {} ranked layers", r.ranking.len());
    for (i, l) in r.ranking.iter().take(n).enumerate() {
        println!(
            "  {}. {} ({}) {:.1} dB via '{}': {}",
            i + 1,
            l.node,
            l.op_type,
            l.sqnr_db,
            l.tensor,
            l.hint
        );
    }
    for o in &r.outputs {
        println!("  output {}: {:.1} dB accumulated", o.name, o.noise.sqnr_db);
    }
}

/// Whether `node` is a depthwise Conv (group > 1) according to the report's weights.
fn is_depthwise(r: &CompareReport, node: &str) -> bool {
    r.weights.iter().any(|w| w.node == node && w.op_type == "Conv" && w.group > 1)
}

#[test]
fn per_tensor_mobilenet_ranks_depthwise_convs_first() {
    let Some(mb) = mobilenet() else { return };
    let r = &mb.report_pt;
    print_top("mnist_mobilenetv2, static int8, per-tensor weights", r, 5);
    print_top("mnist_mobilenetv2, static int8, per-channel weights", &mb.report_pc, 5);
    assert_eq!(r.format, "lowbit-compare/1");
    // 50 rows in runs of 10 (the input is declared [N, 1, 28, 28]).
    assert_eq!((r.samples, r.runs), (50, 5));
    assert!(!r.activations.is_empty() && !r.weights.is_empty());
    let depthwise = r.weights.iter().filter(|w| w.group > 1).count();
    assert!(depthwise >= 3, "expected depthwise convs, got {depthwise}");
    let top = &r.ranking[..3];
    for l in top {
        assert!(is_depthwise(r, &l.node), "{} ({}) at the top is not depthwise", l.node, l.op_type);
        assert!(l.hint.contains("--per-channel"), "hint: {}", l.hint);
        assert!(l.hint.starts_with("depthwise conv with per-tensor weights"), "{}", l.hint);
    }
    // Ranked worst first.
    assert!(r.ranking.windows(2).all(|w| w[0].sqnr_db <= w[1].sqnr_db));
}

#[test]
fn per_channel_weights_lift_the_depthwise_layers() {
    let Some(mb) = mobilenet() else { return };
    let (pt, pc) = (&mb.report_pt, &mb.report_pc);
    let mut checked = 0;
    for w in pt.weights.iter().filter(|w| w.group > 1) {
        let c = pc.weights.iter().find(|c| c.node == w.node && c.weight == w.weight).unwrap();
        assert_eq!(w.axis, None);
        assert_eq!(c.axis, Some(0));
        assert!(
            c.noise.sqnr_db > w.noise.sqnr_db + 3.0,
            "{}: per-channel {:.1} dB vs per-tensor {:.1} dB",
            w.node,
            c.noise.sqnr_db,
            w.noise.sqnr_db
        );
        // The per-channel ranges are those of the FP32 (BN-folded) weight, one per channel.
        assert_eq!(w.channel_min.len() as i64, w.group);
        assert_eq!(w.channel_min, c.channel_min);
        checked += 1;
    }
    assert!(checked >= 3);
    // No longer dominated: no depthwise per-tensor hint, and the depthwise layers' scores rose.
    assert!(pc.ranking.iter().all(|l| !l.hint.starts_with("depthwise conv")));
    for l in pt.ranking.iter().filter(|l| is_depthwise(pt, &l.node)) {
        let after = pc.ranking.iter().find(|m| m.node == l.node).unwrap();
        assert!(after.sqnr_db > l.sqnr_db, "{}: {} -> {}", l.node, l.sqnr_db, after.sqnr_db);
    }
    let worst_dw_before = pt.ranking.iter().position(|l| is_depthwise(pt, &l.node)).unwrap();
    assert_eq!(worst_dw_before, 0);
    assert!(!pc.ranking[..3].iter().all(|l| is_depthwise(pc, &l.node)));
}

#[test]
fn accumulated_noise_at_the_output_is_no_better_than_the_last_layer_alone() {
    let Some(mb) = mobilenet() else { return };
    for r in [&mb.report_pt, &mb.report_pc] {
        assert_eq!(r.outputs.len(), 1);
        let out = &r.outputs[0].noise;
        // The last layer, the classifier's Gemm, and its input activation (the last quantized
        // tensor in graph order): the output carries their noise and everything upstream.
        let last = r.activations.last().unwrap();
        let gemm = r.ranking.iter().find(|l| l.op_type == "Gemm").unwrap();
        println!(
            "{}: output {:.2} dB accumulated; last layer {} isolated {:.2} dB, its input {} {:.2} dB",
            r.quant_model, out.sqnr_db, gemm.node, gemm.sqnr_db, last.tensor, last.isolated.sqnr_db
        );
        assert!(out.sqnr_db <= gemm.sqnr_db, "{} vs {}", out.sqnr_db, gemm.sqnr_db);
        assert!(out.sqnr_db <= last.isolated.sqnr_db);
        // Accumulated noise of a tensor includes its own isolated noise, up to sampling.
        for a in &r.activations {
            assert!(
                a.accumulated.sqnr_db <= a.isolated.sqnr_db + 0.5,
                "{}: accumulated {:.2} dB, isolated {:.2} dB",
                a.tensor,
                a.accumulated.sqnr_db,
                a.isolated.sqnr_db
            );
            assert_eq!(a.histogram.counts.iter().sum::<u64>(), a.isolated.count);
            assert!(a.min <= a.max && (0.0..=1.0).contains(&a.clip_rate));
        }
    }
}

#[test]
fn isolated_noise_of_well_spread_tensors_matches_the_uniform_prediction() {
    let Some(mb) = mobilenet() else { return };
    // Residual Add outputs: continuous, no clamp after them, inside the calibrated range.
    let mut checked = 0;
    for a in mb.report_pt.activations.iter().filter(|a| a.producer_op == "Add") {
        assert!(a.clip_rate < 1e-3, "{}: clip rate {}", a.tensor, a.clip_rate);
        let step = a.scale as f64;
        let predicted_mse = step * step / 12.0;
        let ratio = a.isolated.mse / predicted_mse;
        // SQNR = 10·log10(P / mse): the prediction in dB differs by 10·log10(ratio).
        let signal = a.isolated.mse * 10f64.powf(a.isolated.sqnr_db / 10.0);
        let predicted_db = 10.0 * (signal / predicted_mse).log10();
        println!(
            "{}: isolated {:.2} dB, uniform-noise prediction {:.2} dB (mse ratio {ratio:.3})",
            a.tensor, a.isolated.sqnr_db, predicted_db
        );
        assert!((a.isolated.sqnr_db - predicted_db).abs() < 0.5, "{}", a.tensor);
        checked += 1;
    }
    assert!(checked >= 2, "{checked} residual adds");
}

#[test]
fn the_report_does_not_depend_on_engine_threads() {
    let Some(mb) = mobilenet() else { return };
    let opts = CompareOptions {
        threads: 2,
        fp32_model: "mnist_mobilenetv2.onnx".into(),
        quant_model: "mnist_mobilenetv2.per-tensor.onnx".into(),
    };
    let r2 = compare_models(&mb.fp32, &mb.per_tensor, mb.samples.clone(), &opts).unwrap();
    assert_eq!(r2, mb.report_pt);
    let json = serde_json::to_string(&r2).unwrap();
    let back: CompareReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.ranking, r2.ranking);
}

// ------------------------------------------------------------- ONNX Runtime's QDQ files

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOWBIT_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping ONNX Runtime check: no LOWBIT_PYTHON and no .venv \
             (source scripts/setup-test-env.sh)"
        );
        None
    }
}

/// MobileNetV2 quantized per tensor by ONNX Runtime's `quantize_static` (its names:
/// `X_QuantizeLinear_Output`, `ConvBnFusion_W_…`, Clip removed, graph output renamed): matched
/// by name against the FP32 file, BatchNormalization folded by ORT found as the reference.
#[test]
fn onnx_runtime_qdq_model_is_matched_by_name() {
    let Some(m) = Mnist::load("mnist_mobilenetv2") else { return };
    let Some(py) = python() else { return };
    let dir = std::env::temp_dir().join(format!("lowbit-compare-ort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let calib = dir.join("calib.npy");
    lowbit_tensor::npy::write_npy(&calib, &m.rows(CALIB.0, CALIB.1)).unwrap();
    let src = shared().unwrap().join("corpus/dev/models/mnist_mobilenetv2.onnx");
    let out = dir.join("mnist_mobilenetv2.ort.onnx");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ort_quantize.py");
    let run = std::process::Command::new(py)
        .arg(&script)
        .arg(&src)
        .arg(&out)
        .arg(&calib)
        .arg(&m.input)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let quant = lowbit_onnx::load_model(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let opts = CompareOptions { threads: 1, ..Default::default() };
    let r = compare_models(&m.model, &quant, m.samples(EVAL.0, EVAL.1, 10), &opts).unwrap();
    print_top("mnist_mobilenetv2, ONNX Runtime static int8, per-tensor weights", &r, 5);
    // ORT quantizes the graph output too, renaming its producer's output.
    assert!(r.activations.iter().any(|a| a.tensor == "logits"));
    assert!(r.activations.iter().all(|a| a.clip_rate < 0.01 && a.isolated.sqnr_db > 30.0));
    // Every weight found its FP32 reference (an unfolded one would be off by the BN scale).
    for w in r.weights.iter().filter(|w| w.value_type == "int8") {
        assert!(w.noise.sqnr_db > 30.0, "{} of {}: {:.1} dB", w.weight, w.node, w.noise.sqnr_db);
        assert!(!w.weight.starts_with("ConvBnFusion"), "{}", w.weight);
    }
    let top = &r.ranking[0];
    assert!(is_depthwise(&r, &top.node), "{} ({})", top.node, top.op_type);
    assert!(top.hint.starts_with("depthwise conv with per-tensor weights"), "{}", top.hint);
}

// ------------------------------------------------------------------------- hand-made models

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto { name: name.into(), ..Default::default() }
}

/// A float tensor value declared with `dims` (`None`: the symbolic dimension `batch`).
fn declared(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dims = dims.iter().map(|d| d.map_or(SymDim::sym("batch"), SymDim::Known)).collect();
    let t = ValueType::new(Some(lowbit_tensor::DType::F32), Some(dims));
    ValueInfoProto { name: name.into(), r#type: t.to_proto(), ..Default::default() }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: vec![value("x")],
            output: vec![value("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn init<T: lowbit_tensor::tensor::Element>(
    name: &str,
    shape: Vec<usize>,
    v: Vec<T>,
) -> TensorProto {
    lowbit_onnx::tensor_to_proto(name, &Tensor::from_vec(shape, v).unwrap())
}

/// `y = x · W` in FP32, and its QDQ version with `x` on a uint8 grid of step `s` over
/// `[-1, 1]` (zero point 128) and `W` per-tensor int8.
fn matmul_pair(s: f32) -> (ModelProto, ModelProto) {
    let w: Vec<f32> = (0..16).map(|i| ((i * 7 % 16) as f32 - 7.5) / 8.0).collect();
    let fp32 = model(
        vec![node("MatMul", "mm", &["x", "W"], &["y"])],
        vec![init("W", vec![4, 4], w.clone())],
    );
    let ws = 1.0f32 / 127.0;
    let wq: Vec<i8> = w.iter().map(|&v| (v / ws).round() as i8).collect();
    let quant = model(
        vec![
            node("QuantizeLinear", "x_q", &["x", "x_scale", "x_zp"], &["x_quantized"]),
            node(
                "DequantizeLinear",
                "x_dq",
                &["x_quantized", "x_scale", "x_zp"],
                &["x_dequantized"],
            ),
            node("DequantizeLinear", "W_dq", &["W_quantized", "W_scale"], &["W_dequantized"]),
            node("MatMul", "mm", &["x_dequantized", "W_dequantized"], &["y"]),
        ],
        vec![
            init("x_scale", vec![], vec![s]),
            init("x_zp", vec![], vec![128u8]),
            init("W_quantized", vec![4, 4], wq),
            init("W_scale", vec![], vec![ws]),
        ],
    );
    (fp32, quant)
}

/// Uniform values in `[-1, 1)` from a fixed LCG.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn x_samples(n: usize, rows: usize) -> Vec<Vec<(String, Tensor)>> {
    (0..n)
        .map(|k| {
            let t = Tensor::from_vec(vec![rows, 4], uniform(rows * 4, k as u64 + 1)).unwrap();
            vec![("x".to_string(), t)]
        })
        .collect()
}

#[test]
fn uniform_input_on_a_fine_grid_has_the_uniform_noise_sqnr() {
    let s = 2.0 / 255.0;
    let (fp32, quant) = matmul_pair(s);
    let r = compare_models(&fp32, &quant, x_samples(20, 500), &CompareOptions::default()).unwrap();
    // `x` is declared without a shape: each run is fed whole, one sample.
    assert_eq!((r.samples, r.runs), (20, 20));
    assert_eq!(r.activations.len(), 1);
    let a = &r.activations[0];
    assert_eq!((a.tensor.as_str(), a.value_type.as_str(), a.zero_point), ("x", "uint8", 128));
    assert_eq!(a.isolated.count, 20 * 500 * 4);
    // Uniform on [-1, 1): power 1/3; rounding noise s²/12.
    let predicted = 10.0 * ((1.0 / 3.0) / (s as f64 * s as f64 / 12.0)).log10();
    assert!((a.isolated.sqnr_db - predicted).abs() < 0.2, "{} vs {predicted}", a.isolated.sqnr_db);
    // The input is quantized directly: accumulated equals isolated.
    assert_eq!(a.accumulated, a.isolated);
    // [-1, 1) sits inside [(0 − 128)·s, (255 − 128)·s] = [-1.004, 0.996] widened by half a
    // step (values there still round onto the end codes): nothing saturates.
    assert_eq!(a.clip_rate, 0.0);
    assert_eq!(a.histogram.counts.len(), 64);
    assert!(a.histogram.lo < -1.0 && a.histogram.hi > 1.0);
    // The weight and the ranked MatMul.
    assert_eq!(r.weights.len(), 1);
    let w = &r.weights[0];
    assert_eq!((w.weight.as_str(), w.node.as_str(), w.axis), ("W", "mm", None));
    assert_eq!(w.channel_min.len(), 4); // MatMul: output channels on the last axis
    assert_eq!(r.ranking.len(), 1);
    assert_eq!(r.ranking[0].node, "mm");
    // Scored by the worst of the activation and the weight's worst output channel.
    let pooled = a.isolated.sqnr_db.min(w.noise.sqnr_db);
    assert!(r.ranking[0].sqnr_db <= pooled);
    assert!(r.ranking[0].sqnr_db == a.isolated.sqnr_db || r.ranking[0].tensor == "W");
    assert!(r.outputs[0].noise.sqnr_db < pooled + 0.5);
}

#[test]
fn a_coarse_grid_clips_and_the_hint_says_so() {
    // Step 0.002 covers [-0.256, 0.254]: most of [-1, 1) saturates.
    let (fp32, quant) = matmul_pair(0.002);
    let r = compare_models(&fp32, &quant, x_samples(20, 100), &CompareOptions::default()).unwrap();
    let a = &r.activations[0];
    // Saturated: below -0.256 − 0.001 or above 0.254 + 0.001 (half a step), 74.4 % of U[-1, 1).
    assert!((a.clip_rate - 0.744).abs() < 0.02, "{}", a.clip_rate);
    assert_eq!((a.min < -0.99, a.max > 0.99), (true, true));
    // Out-of-window values land in the end bins.
    let c = &a.histogram.counts;
    assert!(c[0] > 1000 && c[63] > 1000, "{c:?}");
    assert!(r.ranking[0].hint.starts_with("clipped activation 'x'"), "{}", r.ranking[0].hint);
}

#[test]
fn errors_name_what_is_missing() {
    let (fp32, quant) = matmul_pair(2.0 / 255.0);
    // FP32 against itself: nothing is quantized.
    let e = compare_models(&fp32, &fp32, x_samples(1, 4), &CompareOptions::default()).unwrap_err();
    assert!(matches!(e, CompareError::NoQuantizedTensor), "{e}");
    // A quantized tensor the FP32 model does not have.
    let mut renamed = quant.clone();
    let g = renamed.graph.as_mut().unwrap();
    g.input[0].name = "x2".into();
    g.node[0].input[0] = "x2".into();
    let e =
        compare_models(&fp32, &renamed, x_samples(1, 4), &CompareOptions::default()).unwrap_err();
    assert!(matches!(&e, CompareError::MissingInFp32 { tensor, .. } if tensor == "x2"), "{e}");
    assert!(e.to_string().contains("'x2'"), "{e}");
    // No samples.
    let e = compare_models(&fp32, &quant, Vec::new(), &CompareOptions::default()).unwrap_err();
    assert!(matches!(e, CompareError::NoSamples), "{e}");
    // An engine failure names the model and the node.
    let bad = vec![vec![("x".to_string(), Tensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap())]];
    let e = compare_models(&fp32, &quant, bad, &CompareOptions::default()).unwrap_err();
    assert!(matches!(e, CompareError::Engine { .. }), "{e}");
    assert!(e.to_string().contains("mm"), "{e}");
}

#[test]
fn samples_are_rows_of_the_batched_inputs() {
    // `x` declared [batch, 4]: every run of 500 rows is 500 samples.
    let (mut fp32, mut quant) = matmul_pair(2.0 / 255.0);
    for m in [&mut fp32, &mut quant] {
        m.graph.as_mut().unwrap().input[0] = declared("x", &[None, Some(4)]);
    }
    let opts = CompareOptions::default();
    let r = compare_models(&fp32, &quant, x_samples(3, 500), &opts).unwrap();
    assert_eq!((r.samples, r.runs), (1500, 3));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!((json["samples"].as_u64(), json["runs"].as_u64()), (Some(1500), Some(3)));
    // A fixed batch of 1 fed row by row: one sample per run.
    for m in [&mut fp32, &mut quant] {
        m.graph.as_mut().unwrap().input[0] = declared("x", &[Some(1), Some(4)]);
    }
    let r = compare_models(&fp32, &quant, x_samples(4, 1), &opts).unwrap();
    assert_eq!((r.samples, r.runs), (4, 4));
}

#[test]
fn swapped_models_are_refused_naming_the_order() {
    let (fp32, quant) = matmul_pair(2.0 / 255.0);
    let opts = CompareOptions {
        fp32_model: "model.int8.onnx".into(),
        quant_model: "model.onnx".into(),
        ..Default::default()
    };
    let e = compare_models(&quant, &fp32, x_samples(1, 4), &opts).unwrap_err();
    assert!(matches!(e, CompareError::Swapped { nodes: 3, .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "the models are in the wrong order: the first model ('model.int8.onnx') has 3 \
         quantization nodes and the second model ('model.onnx') has none; give the FP32 model \
         first, then its quantized version"
    );
    // Unnamed models (library use) are called first and second.
    let e = compare_models(&quant, &fp32, x_samples(1, 4), &CompareOptions::default()).unwrap_err();
    assert!(e.to_string().starts_with("the models are in the wrong order: the first model has 3"));
    // Nothing quantized in either order is still "no quantized tensor".
    let e = compare_models(&fp32, &fp32, x_samples(1, 4), &opts).unwrap_err();
    assert!(matches!(e, CompareError::NoQuantizedTensor), "{e}");
}
