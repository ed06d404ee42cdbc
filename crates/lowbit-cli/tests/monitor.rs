//! `lowbit monitor` and `--adaptive` on real models and data from the corpus (skipped when
//! `../shared/corpus` is absent; `LOWBIT_SHARED` points elsewhere): the calibration record the
//! quantizer stores, no alarm on in-distribution inputs, an alarm naming tensors on shifted ones
//! (MNIST digits inverted, photos over-exposed), and adaptive runs recovering over-exposed photos.

use lowbit_data::photos::{PhotoFormat, PhotoList};
use lowbit_quant::calibrate::CalibrationRecord;
use lowbit_tensor::{npy, Tensor};
use std::path::Path;

mod common;
use common::{argv, corpus_with, expect, ok, s};

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The monitor report's drift flag and drifted tensors, checked against its tensor list.
fn drift_of(report: &serde_json::Value) -> (bool, Vec<String>) {
    let drifted: Vec<String> = report["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let tensors = report["tensors"].as_array().unwrap();
    for name in &drifted {
        let t = tensors.iter().find(|t| t["tensor"] == name.as_str()).unwrap();
        assert_eq!(t["drift"], true);
        assert!(!t["reasons"].as_array().unwrap().is_empty(), "{t}");
    }
    (report["drift"].as_bool().unwrap(), drifted)
}

/// `images` rows as a uint8 array file `dir/name.npy`, each pixel through `f`.
fn save_u8(dir: &Path, name: &str, shape: Vec<usize>, rows: &[u8], f: impl Fn(u8) -> u8) {
    std::fs::create_dir_all(dir).unwrap();
    let v: Vec<u8> = rows.iter().map(|&x| f(x)).collect();
    npy::write_npy(&dir.join(name), &Tensor::from_vec(shape, v).unwrap()).unwrap();
}

#[test]
fn monitor_stays_quiet_on_mnist_digits_and_flags_them_inverted() {
    let Some(c) = corpus_with(&[]) else { return };
    let model = c.join("models/mnist-8_cntk.onnx");
    let images = npy::read_npy(&c.join("data/mnist_test_0-4999/images.npy")).unwrap();
    let px = images.as_slice::<u8>().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let per = 784;
    let rows = |a: usize, b: usize| &px[a * per..b * per];
    save_u8(&d.join("calib"), "Input3.npy", vec![100, 1, 28, 28], rows(0, 100), |x| x);
    save_u8(&d.join("new"), "Input3.npy", vec![200, 1, 28, 28], rows(1000, 1200), |x| x);
    save_u8(&d.join("inverted"), "Input3.npy", vec![200, 1, 28, 28], rows(1000, 1200), |x| 255 - x);
    let pre = "scale=1,mean=0,std=1";
    let q = d.join("mnist.int8.onnx");
    let calib = d.join("calib");
    ok(&argv(
        "quantize {} -o {} --data {} --preprocess {} -q",
        &[&model, &q, &calib, pre.as_ref()],
    ));

    // The record: every activation the model quantizes, with its calibration statistics.
    let m = lowbit_onnx::load_model(&q).unwrap();
    let record = CalibrationRecord::stored(&m).expect("a record").unwrap();
    let quantized = lowbit_engine::adaptive::quantized_activations(&m);
    assert!(!quantized.is_empty());
    for a in &quantized {
        let t = &record.tensors[&a.tensor];
        assert!(t.histogram.bins <= 64 && t.histogram.counts.iter().sum::<u64>() == t.count);
        assert_eq!(t.count % 100, 0, "{}: {} values over 100 samples", a.tensor, t.count);
        assert!(t.min <= t.max && (0.0..=1.0).contains(&t.clip_rate), "{t:?}");
    }

    let report = d.join("new.json");
    let fp32 = s(&model);
    let args = |data: &str, out: &Path| -> Vec<String> {
        [
            "monitor",
            s(&q),
            "--data",
            data,
            "--preprocess",
            pre,
            "--json-out",
            s(out),
            "--reference",
            fp32,
        ]
        .map(String::from)
        .to_vec()
    };
    let run =
        |code, a: Vec<String>| expect(code, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(0, args(s(&d.join("new")), &report));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("drift        no"), "{text}");
    let j = json(&report);
    assert_eq!(j["samples"], 200);
    assert_eq!(drift_of(&j), (false, vec![]));
    assert!(j["reference"]["top1_agreement"].as_f64().unwrap() >= 0.95, "{}", j["reference"]);
    let psi_max = |j: &serde_json::Value| {
        j["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["psi"].as_f64())
            .fold(0.0, f64::max)
    };
    let quiet_psi = psi_max(&j);
    // 100 calibration digits against 200 others: sampling noise alone, below the alarm.
    assert!(quiet_psi < 0.2, "in-distribution PSI {quiet_psi}");

    let report = d.join("inverted.json");
    let o = run(3, args(s(&d.join("inverted")), &report));
    let err = String::from_utf8_lossy(&o.stderr);
    let j = json(&report);
    let (drift, drifted) = drift_of(&j);
    assert!(drift && drifted.iter().any(|t| t == "Input3"), "{drifted:?}");
    assert!(err.contains("drift:") && err.contains("Input3"), "{err}");
    assert!(psi_max(&j) > 10.0 * quiet_psi.max(0.025));
    // `--json` prints the same report on stdout instead of the text (the drift line stays on
    // stderr, the exit code is still 3).
    let mut a: Vec<String> = args(s(&d.join("inverted")), &report);
    a.retain(|x| x != "--json-out" && x != s(&report));
    a.push("--json".into());
    let o = run(3, a);
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(drift_of(&printed), drift_of(&j));
    assert_eq!(printed["samples"], j["samples"]);

    // Adaptive: inverted digits saturate (the input's range ends hold most pixels); they are
    // re-run on the FP32 model and score as it does, while in-distribution digits rarely are.
    let labels = d.join("labels.npy");
    let all = npy::read_npy(&c.join("data/mnist_test_0-4999/labels.npy")).unwrap();
    let l: Vec<i64> = all.to_i64_vec().unwrap()[1000..1200].to_vec();
    npy::write_npy(&labels, &Tensor::from_vec(vec![200], l).unwrap()).unwrap();
    let top1 = |model: &str, data: &Path, extra: &[&str]| -> (f64, serde_json::Value) {
        let mut a = vec!["eval", model, "--data", s(data), "--labels", s(&labels)];
        a.extend_from_slice(&["--preprocess", pre, "--latency", "0", "--json", "-q"]);
        a.extend_from_slice(extra);
        let o = expect(0, &a);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (j["classification"]["top1"].as_f64().unwrap(), j)
    };
    let fallback = ["--adaptive", "--adaptive-fallback", fp32];
    let inverted = d.join("inverted");
    let (plain, _) = top1(s(&q), &inverted, &[]);
    let (reference, _) = top1(fp32, &inverted, &[]);
    let (adaptive, j) = top1(s(&q), &inverted, &fallback);
    let stats = &j["adaptive"];
    assert_eq!(stats["samples"], 200);
    assert!(stats["rerun"].as_u64().unwrap() >= 180, "{stats}");
    assert!(
        adaptive >= plain + 0.02 || (adaptive - reference).abs() <= 0.005,
        "inverted top-1: int8 {plain}, adaptive {adaptive}, FP32 {reference}"
    );
    let (normal, j) = top1(s(&q), &d.join("new"), &fallback);
    let rerun = j["adaptive"]["rerun"].as_u64().unwrap();
    // A digit bolder than most pins more input pixels at 255, and one saturated logit of ten
    // is 10 %: a few in-distribution digits are re-run (14 of these 200 at the default 5 %).
    assert!(rerun <= 20, "{rerun} of 200 in-distribution digits re-run: {}", j["adaptive"]);
    let (plain_normal, _) = top1(s(&q), &d.join("new"), &[]);
    assert!(normal >= plain_normal - 0.005, "adaptive {normal} vs int8 {plain_normal}");
}

/// EfficientNet-Lite0 photos of the corpus, decoded as `score.py` does: rows `0..n`, uint8
/// `[n, 224, 224, 3]`, with their labels.
fn photos(c: &Path, n: usize) -> (Vec<u8>, Vec<usize>) {
    let dir = c.join("data/imagenet_sample1000");
    let list = PhotoList::read(&dir).unwrap();
    let fmt = PhotoFormat::resolve(None, &dir, Some([224, 224]), Some(3)).unwrap();
    let mut px = vec![0u8; n * fmt.len()];
    for (out, f) in px.chunks_mut(fmt.len()).zip(&list.files[..n]) {
        fmt.load(f, out).unwrap();
    }
    (px, list.labels.unwrap()[..n].to_vec())
}

/// Over-exposure: pixel · 1.8, clipped to 255.
fn over_expose(x: u8) -> u8 {
    (x as f32 * 1.8).min(255.0) as u8
}

// The goals on the real model (71 s on 2 idle cores: EfficientNet-Lite0 quantized and run
// over 300 photos several times); the MNIST test above covers the same paths in seconds.
#[test]
fn efficientnet_monitor_and_adaptive_precision_on_over_exposed_photos() {
    let Some(c) = corpus_with(&[]) else { return };
    let model = c.join("models/efficientnet-lite0.onnx");
    let pre = format!("{},layout=NHWC", s(&c.join("models/efficientnet-lite0.json")));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 100 calibration photos, then 200 others as they are and over-exposed.
    let (px, labels) = photos(&c, 300);
    let per = 224 * 224 * 3;
    let shape = |n: usize| vec![n, 224, 224, 3];
    save_u8(&d.join("calib"), "input.npy", shape(100), &px[..100 * per], |x| x);
    save_u8(&d.join("new"), "input.npy", shape(200), &px[100 * per..], |x| x);
    save_u8(&d.join("over"), "input.npy", shape(200), &px[100 * per..], over_expose);
    let l: Vec<i64> = labels[100..].iter().map(|&x| x as i64).collect();
    let labels = d.join("labels.npy");
    npy::write_npy(&labels, &Tensor::from_vec(vec![200], l).unwrap()).unwrap();

    // Per-tensor weights: the file the adaptive goal is about (it fails validation, on purpose).
    let q = d.join("lite0.pt.onnx");
    let calib = d.join("calib");
    ok(&argv(
        "quantize {} -o {} --data {} --preprocess {} --per-tensor --validate 0 -q",
        &[&model, &q, &calib, pre.as_ref()],
    ));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let m = lowbit_onnx::load_model(&q).unwrap();
    let meta = m.metadata_props.iter().find(|p| p.key == "lowbit.calibration").unwrap();
    // The record costs little next to the int8 weights.
    assert!((meta.value.len() as f64) < 0.02 * size(&q), "{} bytes", meta.value.len());

    // Monitor: quiet on the 200 photos, an alarm naming tensors on them over-exposed.
    let monitor = |code, data: &str, extra: &str| -> serde_json::Value {
        let report = d.join(format!("{data}.json"));
        let template = format!("monitor {{}} --data {{}} --preprocess {{}} --json-out {{}}{extra}");
        expect(code, &argv(&template, &[&q, &d.join(data), pre.as_ref(), &report]));
        json(&report)
    };
    assert_eq!(drift_of(&monitor(0, "new", "")), (false, vec![]));
    let (drift, drifted) = drift_of(&monitor(3, "over", " --limit 50"));
    assert!(drift && !drifted.is_empty());

    // Adaptive: over-exposed photos saturate the input's range; re-run on the FP32 original,
    // top-1 recovers at least 2 pt over plain int8 (or comes within 0.5 pt of FP32), while few
    // normal photos are re-run.
    let top1 = |model: &Path, data: &str, extra: &[&str]| -> (f64, serde_json::Value) {
        let mut a = vec![
            "eval",
            s(model),
            "--data",
            data,
            "--labels",
            s(&labels),
            "--preprocess",
            &pre,
            "--latency",
            "0",
            "--json",
            "-q",
        ];
        a.extend_from_slice(extra);
        let o = expect(0, &a);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (j["classification"]["top1"].as_f64().unwrap(), j)
    };
    let over = s(&d.join("over")).to_string();
    let fallback = ["--adaptive", "--adaptive-fallback", s(&model)];
    let (plain, _) = top1(&q, &over, &[]);
    let (fp32, _) = top1(&model, &over, &[]);
    let (adaptive, j) = top1(&q, &over, &fallback);
    let stats = &j["adaptive"];
    assert_eq!(stats["samples"], 200);
    assert!(stats["rerun"].as_u64().unwrap() >= 150, "{stats}");
    assert!(stats["triggers"]["input"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        adaptive >= plain + 0.02 || adaptive >= fp32 - 0.005,
        "over-exposed top-1: int8 {plain}, adaptive {adaptive}, FP32 {fp32}"
    );
    let (_, j) = top1(&q, s(&d.join("new")), &fallback);
    let rerun = j["adaptive"]["rerun"].as_u64().unwrap();
    assert!(rerun <= 10, "{rerun} of 200 in-distribution photos re-run: {}", j["adaptive"]);
}
