//! `lowbit_eval::tune` end to end on a small hand-built classifier: the chosen point meets the
//! budget on the search samples and is the cheapest that does, the Pareto front is
//! non-dominated and sorted, the report's JSON has its documented fields, and the result is
//! the same twice.

use lowbit_data::{Dataset, FeedSource};
use lowbit_engine::{Session, SessionOptions};
use lowbit_eval::score::ScoredModel;
use lowbit_eval::tune::scorer::{Scorer, Truth};
use lowbit_eval::tune::search::Strategy;
use lowbit_eval::tune::{tune, Metric, Objective, Precision, TuneInputs, TuneOptions, TuneReport};
use lowbit_onnx::build::{self, Dim};
use lowbit_onnx::pb::{self, ModelProto, NodeProto};
use lowbit_onnx::tensor_to_proto;
use lowbit_quant::calibrate::{calibrate_samples, CalibratorOptions};
use lowbit_quant::quantize::QuantizeConfig;
use lowbit_quant::samples::NoProgress;
use lowbit_quant::target::{Target, TargetChoice};
use lowbit_tensor::{npy, DType, Tensor};
use std::path::Path;

/// Uniform values in `[-1, 1)` from a xorshift stream.
fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            2.0 * ((s >> 40) as f32 / (1u64 << 24) as f32) - 1.0
        })
        .collect()
}

/// x [N, 16] -> MatMul 16x32 -> Relu -> MatMul 32x32 -> Relu -> MatMul 32x10: logits.
fn classifier() -> ModelProto {
    let dims = [(16, 32), (32, 32), (32, 10)];
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = "x".to_string();
    for (i, &(k, n)) in dims.iter().enumerate() {
        let w = format!("w{i}");
        inits.push(tensor_to_proto(
            &w,
            &Tensor::from_vec(vec![k, n], uniform(i as u64 + 7, k * n)).unwrap(),
        ));
        let out = if i == dims.len() - 1 { "logits".to_string() } else { format!("mm{i}") };
        nodes.push(NodeProto {
            op_type: "MatMul".into(),
            name: format!("fc{i}"),
            input: vec![cur.clone(), w],
            output: vec![out.clone()],
            ..Default::default()
        });
        cur = out;
        if i < dims.len() - 1 {
            let r = format!("relu{i}");
            nodes.push(NodeProto {
                op_type: "Relu".into(),
                name: r.clone(),
                input: vec![cur.clone()],
                output: vec![r.clone()],
                ..Default::default()
            });
            cur = r;
        }
    }
    ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(pb::GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![build::tensor_value_info(
                "x",
                DType::F32,
                &[Dim::Named("N"), Dim::Fixed(16)],
            )],
            output: vec![build::unshaped_value_info("logits", DType::F32)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A folder with `x.npy` of `n` samples.
fn data(dir: &Path, seed: u64, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    npy::write_npy(
        &dir.join("x.npy"),
        &Tensor::from_vec(vec![n, 16], uniform(seed, n * 16)).unwrap(),
    )
    .unwrap();
}

fn run(model: &ModelProto, dir: &Path) -> TuneReport {
    let session = Session::new(model, &SessionOptions::with_threads(1)).unwrap();
    let src = FeedSource::Data(dir.join("eval"));
    let mut eval = Dataset::load(&session.inputs(), &src, None).unwrap();
    // Labels: the FP32 model's own classes, so FP32 scores 100 %.
    let fp32 = ScoredModel { path: "fp32".into(), bytes: 0, session, output: "logits".into() };
    let n = eval.samples;
    let out = fp32.run(&mut eval, 0, n, false).unwrap();
    let o = out.as_f32().unwrap();
    let labels: Vec<usize> = o.chunks(10).map(lowbit_eval::metrics::argmax).collect();
    let cal = Tensor::from_vec(vec![64, 16], uniform(5, 64 * 16)).unwrap();
    let mut samples = vec![vec![("x".to_string(), cal)]];
    let table =
        calibrate_samples(model, &mut samples, CalibratorOptions::default(), 1, &NoProgress)
            .unwrap();
    let sens =
        Dataset::load(&fp32.session.inputs(), &FeedSource::Data(dir.join("cal")), None).unwrap();
    let scorer =
        Scorer { metric: Metric::Top1, data: eval, truth: Truth::Classes(labels), trim: false };
    let inputs = TuneInputs {
        fp32: model,
        model_path: "classifier.onnx".into(),
        table: &table,
        sensitivity_data: sens,
        calibration_samples: None,
        scorer,
        output: "logits".into(),
        against: "FP32 classes".into(),
    };
    let opts = TuneOptions {
        base: QuantizeConfig { target: TargetChoice::Named(Target::Lowbit), ..Default::default() },
        ladder: vec![Precision::Int4, Precision::Int8, Precision::Fp32],
        max_drop: 2.0,
        confidence: 0.5,
        objective: Objective::Size,
        strategy: Strategy::Bisect,
        held_out: 0.5,
        batch: 16,
        latency_samples: 2,
        threads: 1,
        time_budget: None,
        adaround: None,
    };
    let tuned = tune(inputs, &opts, &NoProgress).unwrap();
    // The model returned runs and is the chosen configuration's.
    let bytes = prost::Message::encoded_len(&tuned.model) as u64;
    if let Some(c) = tuned.report.chosen {
        assert_eq!(bytes, tuned.report.evaluated[c].bytes);
    }
    tuned.report
}

#[test]
fn tune_chooses_the_cheapest_configuration_within_budget_and_reports_the_front() {
    let dir = tempfile::tempdir().unwrap();
    data(&dir.path().join("eval"), 11, 400);
    data(&dir.path().join("cal"), 5, 32);
    let model = classifier();
    let r = run(&model, dir.path());

    assert_eq!(r.search_samples + r.held_out_samples, 400);
    assert_eq!(r.search_samples, 208); // 25 runs of 16 samples, every other one held out
    assert_eq!(r.reference_metric, 100.0);
    assert_eq!(r.nodes.len(), 3);
    let c = r.chosen.expect("fp32 everywhere meets any budget");
    let chosen = &r.evaluated[c];
    assert!(chosen.meets_budget && chosen.drop <= 2.0, "{chosen:?}");
    assert!(chosen.metric >= r.reference_metric - 2.0);
    for e in &r.evaluated {
        assert_eq!(e.meets_budget, e.drop <= 2.0 + 1e-9, "{e:?}");
        assert!(!e.meets_budget || e.bytes >= chosen.bytes, "{e:?} is cheaper than {chosen:?}");
    }
    // Chosen precisions agree with the node map; int4 everywhere is the first trial.
    let n: usize = chosen.precisions.values().sum();
    assert_eq!(n, 3);
    assert_eq!(r.evaluated[1].label, "all int4");
    assert!(r.nodes.iter().all(|x| r.candidates.contains(&x.precision)));

    // The front: sorted by size, each better than the last, nothing evaluated dominating it.
    assert!(!r.pareto.is_empty());
    for w in r.pareto.windows(2) {
        let (a, b) = (&r.evaluated[w[0]], &r.evaluated[w[1]]);
        assert!(a.bytes < b.bytes && a.metric < b.metric, "{a:?} {b:?}");
    }
    for &p in &r.pareto {
        let x = &r.evaluated[p];
        assert!(!r.evaluated.iter().any(|e| e.bytes <= x.bytes
            && e.metric >= x.metric
            && (e.bytes < x.bytes || e.metric > x.metric)));
    }
    assert!(
        r.pareto.contains(&c)
            || r.evaluated.iter().any(|e| e.bytes <= chosen.bytes && e.metric > chosen.metric)
    );

    // Held out: FP32 first (drop 0), the chosen point among them.
    assert_eq!(r.held_out[0].id, 0);
    assert_eq!(r.held_out[0].drop, 0.0);
    assert!(r.held_out.iter().any(|h| h.id == c));
    assert!(!r.confidence.is_empty());

    // The JSON has the documented fields.
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["format"], "lowbit-tune/1");
    for k in [
        "model",
        "output",
        "metric",
        "against",
        "objective",
        "max_drop",
        "candidates",
        "strategy",
        "threads",
        "search_samples",
        "held_out_samples",
        "reference_metric",
        "evaluated",
        "pareto",
        "chosen",
        "nodes",
        "held_out",
        "confidence",
        "cut_short",
        "seconds",
    ] {
        assert!(j.get(k).is_some(), "missing {k}");
    }
    assert_eq!(j["metric"], "top1");
    assert_eq!(j["candidates"], serde_json::json!(["int4", "int8", "fp32"]));
    for k in ["id", "label", "metric", "drop", "bytes", "latency_ms", "meets_budget", "precisions"]
    {
        assert!(j["evaluated"][1].get(k).is_some(), "evaluated: missing {k}");
    }
    for k in ["node", "op_type", "weight_values", "sqnr_db", "output_sqnr_db", "rank", "precision"]
    {
        assert!(j["nodes"][0].get(k).is_some(), "nodes: missing {k}");
    }

    // The HTML report draws the front and the precision map.
    let html = lowbit_eval::report::render_tune_html(&r);
    assert!(html.contains("<svg id=\"pareto-chart\"") && html.contains("id=\"precision-map\""));
    assert_eq!(html.matches("class=\"pt").count(), r.evaluated.len());
    assert_eq!(html.matches("<span class=\"p-").count(), 3);

    // Deterministic: the same configurations, metrics, sizes and choice again.
    let again = run(&model, dir.path());
    let key = |r: &TuneReport| -> Vec<(String, u64, u64)> {
        r.evaluated.iter().map(|e| (e.label.clone(), e.metric.to_bits(), e.bytes)).collect()
    };
    assert_eq!(key(&r), key(&again));
    assert_eq!((r.chosen, &r.pareto), (again.chosen, &again.pareto));
}
