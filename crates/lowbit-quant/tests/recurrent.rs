//! Recurrent layers (a bidirectional LSTM feeding a GRU, then a MatMul head, as speech and OCR
//! models stack them) in dynamic and weight-only int8: the LSTM/GRU weights become int8 +
//! DequantizeLinear, and the model runs in lowbit's engine and in ONNX Runtime close to FP32.

use lowbit_onnx::build::{model, node, tensor_value_info, Dim};
use lowbit_onnx::pb::{self, GraphProto};
use lowbit_onnx::tensor_proto::tensor_to_proto;
use lowbit_quant::quantize::{quantize_model, QuantizeConfig};
use lowbit_tensor::{DType, Tensor};

mod common;
use common::{check_saved_sqnr, run_all, Rng};
use lowbit_onnx::build::{int_attr as attr_i, ints_attr as attr_ints, string_attr as attr_s};

const SEQ: usize = 6;

/// `x [6, 1, 8]` → bidirectional LSTM (16) → `[6, 1, 32]` → GRU (8) → last state → MatMul → `y [1, 4]`.
fn lstm_gru_model() -> pb::ModelProto {
    let mut r = Rng(0x853c49e6748fea9b);
    let mut lstm = node("LSTM", "lstm", &["x", "lstm_w", "lstm_r", "lstm_b"], &["lstm_y"]);
    lstm.attribute.push(attr_i("hidden_size", 16));
    lstm.attribute.push(attr_s("direction", "bidirectional"));
    let mut tr = node("Transpose", "to_seq_batch", &["lstm_y"], &["lstm_t"]);
    tr.attribute.push(attr_ints("perm", &[0, 2, 1, 3]));
    let mut gru = node("GRU", "gru", &["lstm_seq", "gru_w", "gru_r", "gru_b"], &["", "gru_h"]);
    gru.attribute.push(attr_i("hidden_size", 8));
    gru.attribute.push(attr_i("linear_before_reset", 1));
    let i64s = |v: &[i64]| Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap();
    let g = GraphProto {
        name: "lstm_gru".into(),
        node: vec![
            lstm,
            tr,
            node("Reshape", "merge_dirs", &["lstm_t", "seq_shape"], &["lstm_seq"]),
            gru,
            node("Reshape", "state", &["gru_h", "row_shape"], &["h"]),
            node("MatMul", "head", &["h", "w_out"], &["y"]),
        ],
        initializer: vec![
            tensor_to_proto("lstm_w", &r.tensor(&[2, 64, 8], 0.4)),
            tensor_to_proto("lstm_r", &r.tensor(&[2, 64, 16], 0.3)),
            tensor_to_proto("lstm_b", &r.tensor(&[2, 128], 0.1)),
            tensor_to_proto("gru_w", &r.tensor(&[1, 24, 32], 0.3)),
            tensor_to_proto("gru_r", &r.tensor(&[1, 24, 8], 0.4)),
            tensor_to_proto("gru_b", &r.tensor(&[1, 48], 0.1)),
            tensor_to_proto("w_out", &r.tensor(&[8, 4], 0.7)),
            tensor_to_proto("seq_shape", &i64s(&[SEQ as i64, 1, 32])),
            tensor_to_proto("row_shape", &i64s(&[1, 8])),
        ],
        input: vec![tensor_value_info(
            "x",
            DType::F32,
            &[Dim::Fixed(SEQ as i64), Dim::Fixed(1), Dim::Fixed(8)],
        )],
        output: vec![tensor_value_info("y", DType::F32, &[Dim::Fixed(1), Dim::Fixed(4)])],
        ..Default::default()
    };
    model(g, 14)
}

// int8 weights with one scale per gate row keep about 40 dB each (uniform-ish values, 255
// levels); the gates' sigmoid/tanh do not amplify the error, and dynamic mode's head adds
// per-tensor uint8 activations (about 40 dB on these inputs). 30 dB leaves room for the
// recurrence accumulating the error over 6 steps and two layers, and fails on a wrong axis
// (a scale per direction or per input column shows up below 20 dB).
const MIN_SQNR_DB: f64 = 30.0;

#[test]
fn lstm_and_gru_weights_become_int8_and_run_in_both_runtimes() {
    let m = lstm_gru_model();
    let mut r = Rng(5);
    let eval: Vec<Vec<(String, Tensor)>> =
        (0..12).map(|_| vec![("x".to_string(), r.tensor(&[SEQ, 1, 8], 1.0))]).collect();
    let fp32 = run_all(&m, &eval);
    for (tag, cfg) in [
        (
            "dynamic",
            QuantizeConfig {
                mode: lowbit_quant::quantize::QuantMode::Dynamic,
                ..Default::default()
            },
        ),
        ("weight-only", QuantizeConfig::weight_only_int8()),
    ] {
        let (q, summary) = quantize_model(m.clone(), &cfg, None).unwrap();
        println!("{tag}:\n{summary}");
        assert_eq!(summary.quantized.get("LSTM"), Some(&1), "{summary}");
        assert_eq!(summary.quantized.get("GRU"), Some(&1), "{summary}");
        assert_eq!(summary.quantized.get("MatMul"), Some(&1), "{summary}");
        let cov = summary.coverage();
        assert_eq!((cov.weighted, cov.quantized), (3, 3), "{cov}");
        let g = q.graph.as_ref().unwrap();
        for rnn in g.node.iter().filter(|n| n.op_type == "LSTM" || n.op_type == "GRU") {
            for slot in [1, 2] {
                let dq = g.node.iter().find(|n| n.output[0] == rnn.input[slot]).unwrap();
                assert_eq!(dq.op_type, "DequantizeLinear", "{} input {slot}", rnn.name);
                let w = g.initializer.iter().find(|t| t.name == dq.input[0]).unwrap();
                assert_eq!(w.data_type, DType::I8.onnx_id());
                // One scale per gate row, shared by the directions.
                let s = g.initializer.iter().find(|t| t.name == dq.input[1]).unwrap();
                assert_eq!(s.dims, vec![w.dims[1]], "{}", rnn.name);
            }
        }
        // W and R (88 % of the float bytes) shrink 4×; the float biases and scales stay.
        assert!(summary.size_after * 5 < summary.size_before * 2, "{summary}");

        check_saved_sqnr(&q, &format!("lstm-gru-{tag}.onnx"), &eval, &fp32, MIN_SQNR_DB);
    }
}
