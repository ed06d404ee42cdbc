//! The synthetic comparison the report tests render (`tests/render.rs` checks the HTML,
//! `tests/report.rs` a browser's screenshot of it).

use lowbit_eval::compare::{
    ActivationNoise, CompareReport, Histogram, RankedLayer, TensorNoise, WeightNoise,
};
use lowbit_eval::metrics::Noise;
use lowbit_eval::report::{BeforeAfter, ReportSummary, SummaryMetric};

/// Output channels of every weight.
pub const CHANNELS: usize = 48;

fn noise(sqnr_db: f64) -> Noise {
    Noise { sqnr_db, mse: 1e-4, cosine: 0.999, max_abs: 0.05, count: 1000 }
}

/// `layers` (at least 8) conv layers of a convnet, inserted in reverse graph order (the
/// report must sort them by `order`), SQNR falling with depth but positive. Layer `i` of the
/// insertion order is `features.{layers − 1 − i}`; its weight (48 output channels, all
/// crossing zero) is per-tensor with 48 groups (depthwise) for even `i`, per-channel with one
/// group for odd `i`. Activation 3 is identical to FP32 (infinite SQNR), activation 5 has a
/// name with markup; the ranking holds three layers: `features.0` (a per-channel weight),
/// activation 5 (a hint with markup) and `features.3` (a per-tensor depthwise weight).
pub fn synthetic(layers: usize) -> CompareReport {
    let n = layers;
    let mut activations = Vec::new();
    let mut weights = Vec::new();
    for i in 0..n {
        let acc = 42.0 - 21.0 * i as f64 / n as f64 + 4.0 * ((i * 7) % 5) as f64;
        let counts = (0..128)
            .map(|b| {
                let z = (b as f64 - 40.0) / 10.0;
                (20_000.0 * (-z * z).exp()) as u64 + 3 * (b % 5 == 0) as u64
            })
            .collect();
        activations.push(ActivationNoise {
            tensor: format!("/features.{}/conv/Conv_output_0", n - 1 - i),
            producer: format!("/features.{}/conv/Conv", n - 1 - i),
            producer_op: "Conv".into(),
            order: 2 * (n - 1 - i),
            scale: 0.02,
            zero_point: 100,
            value_type: "uint8".into(),
            accumulated: noise(acc),
            isolated: noise(acc + 4.0 + (i % 3) as f64),
            clip_rate: 0.001 * (i % 4) as f64,
            min: -2.5,
            max: 4.0,
            histogram: Histogram { lo: -2.5, hi: 4.0, counts },
        });
        let per_tensor = i % 2 == 0;
        weights.push(WeightNoise {
            weight: format!("features.{}.weight", n - 1 - i),
            node: format!("/features.{}/conv/Conv", n - 1 - i),
            op_type: "Conv".into(),
            group: if per_tensor { CHANNELS as i64 } else { 1 },
            axis: if per_tensor { None } else { Some(0) },
            value_type: "int8".into(),
            noise: noise(28.0 + i as f64),
            channel_min: (0..CHANNELS).map(|c| -0.2 - 0.1 * (c % 7) as f32).collect(),
            channel_max: (0..CHANNELS).map(|c| 0.15 + 0.12 * (c % 5) as f32).collect(),
        });
    }
    activations[3].accumulated.sqnr_db = f64::INFINITY;
    activations[3].isolated.sqnr_db = f64::INFINITY;
    activations[5].tensor = "a<b>&\"c\"/x".into();
    let ranking = [
        (n - 1, "depthwise conv with per-tensor weights: use per-channel"),
        (5, "activation <outliers>: try percentile"),
        (n - 4, "try entropy"),
    ]
    .iter()
    .map(|&(i, hint)| RankedLayer {
        node: activations[i].producer.clone(),
        op_type: "Conv".into(),
        tensor: activations[i].tensor.clone(),
        sqnr_db: activations[i].isolated.sqnr_db,
        hint: hint.into(),
    })
    .collect();
    CompareReport {
        format: "lowbit-compare/1".into(),
        fp32_model: "mobilenet.onnx".into(),
        quant_model: "mobilenet.int8.onnx".into(),
        samples: 16,
        runs: 2,
        outputs: vec![TensorNoise { name: "logits".into(), noise: noise(18.5) }],
        activations,
        weights,
        ranking,
        quantization: None,
    }
}

/// Sizes, a metric and latency of both models.
pub fn summary() -> ReportSummary {
    ReportSummary {
        fp32_model: "mobilenet.onnx".into(),
        quant_model: "mobilenet.int8.onnx".into(),
        fp32_bytes: 14_000_000,
        quant_bytes: 3_600_000,
        metric: Some(SummaryMetric {
            name: "top-1 %".into(),
            value: BeforeAfter { fp32: 71.8, quant: 70.9 },
        }),
        latency_ms: Some(BeforeAfter { fp32: 12.0, quant: 5.5 }),
    }
}
