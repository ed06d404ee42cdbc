//! ONNX Runtime's fused `com.microsoft.Attention` (what ORT's transformer optimizer and some
//! exporters write for BERT-like encoders and GPT-2-like decoders): lowbit's engine against ORT
//! on hand-built graphs covering the mask forms, `unidirectional`, `past`/`present` and
//! `attention_bias`; then its packed QKV weight in int8 (dynamic and weight-only), run in both
//! engines, and static mode naming it among the nodes it leaves float. Last, the corpus MiniLM
//! with its attention fused by ORT's own transformer optimizer: the same checks on a real
//! model.

use lowbit_onnx::build::{node, tensor_value_info, Dim};
use lowbit_onnx::pb::{self, attribute_proto::AttributeType, AttributeProto, GraphProto};
use lowbit_onnx::tensor_proto::tensor_to_proto;
use lowbit_quant::quantize::{
    quantize_model, static_coverage, QuantMode, QuantPlan, QuantizeConfig,
};
use lowbit_tensor::{DType, Tensor};

mod common;
use common::{check_saved_sqnr, ort_run, output, python, run_all, shared, stsb_sentences};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|_| self.next() * scale).collect()).unwrap()
    }
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

const B: usize = 2;
const S: usize = 5;
const HIDDEN: usize = 16;
const HEADS: usize = 4;
const PAST: usize = 3;

/// What a case feeds the Attention node besides `x`.
#[derive(Clone, Copy, Debug)]
enum Mask {
    None,
    /// `[B]` key lengths.
    Lengths,
    /// `[2B]` ends then starts.
    EndsStarts,
    /// `[B, T]` 1/0 per key.
    Raw2d,
    /// `[B, S, T]` 1/0 per query and key.
    Raw3d,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    mask: Mask,
    unidirectional: bool,
    past: bool,
    attention_bias: bool,
    /// A MatMul head after the attention (for the quantization tests).
    head: bool,
}

const PLAIN: Case = Case {
    mask: Mask::None,
    unidirectional: false,
    past: false,
    attention_bias: false,
    head: false,
};

/// `x [B, S, 16]` → com.microsoft.Attention (4 heads, packed `[16, 48]` weight and bias) → `y`
/// (→ MatMul `[16, 8]` when `head`), plus `present` with `past`.
fn attention_model(c: Case) -> pb::ModelProto {
    let mut r = Rng(0x9e3779b97f4a7c15);
    let total = S + if c.past { PAST } else { 0 };
    let mut ins = vec!["x", "w_qkv", "b_qkv", "", "", ""];
    let mut inputs = vec![tensor_value_info(
        "x",
        DType::F32,
        &[Dim::Fixed(B as i64), Dim::Fixed(S as i64), Dim::Fixed(HIDDEN as i64)],
    )];
    let dims = |d: &[usize]| d.iter().map(|&v| Dim::Fixed(v as i64)).collect::<Vec<_>>();
    let mask_shape: Option<Vec<usize>> = match c.mask {
        Mask::None => None,
        Mask::Lengths => Some(vec![B]),
        Mask::EndsStarts => Some(vec![2 * B]),
        Mask::Raw2d => Some(vec![B, total]),
        Mask::Raw3d => Some(vec![B, S, total]),
    };
    if let Some(ms) = &mask_shape {
        ins[3] = "mask_index";
        inputs.push(tensor_value_info("mask_index", DType::I32, &dims(ms)));
    }
    if c.past {
        ins[4] = "past";
        inputs.push(tensor_value_info(
            "past",
            DType::F32,
            &dims(&[2, B, HEADS, PAST, HIDDEN / HEADS]),
        ));
    }
    if c.attention_bias {
        ins[5] = "attn_bias";
        inputs.push(tensor_value_info("attn_bias", DType::F32, &dims(&[1, HEADS, S, total])));
    }
    while ins.last() == Some(&"") {
        ins.pop();
    }
    let attn_out = if c.head { "ctx" } else { "y" };
    let mut outs = vec![attn_out];
    if c.past {
        outs.push("present");
    }
    let mut attn = node("Attention", "attention", &ins, &outs);
    attn.domain = "com.microsoft".into();
    attn.attribute.push(attr_i("num_heads", HEADS as i64));
    attn.attribute.push(attr_i("unidirectional", c.unidirectional as i64));
    let mut nodes = vec![attn];
    let mut initializer = vec![
        tensor_to_proto("w_qkv", &r.tensor(&[HIDDEN, 3 * HIDDEN], 0.5)),
        tensor_to_proto("b_qkv", &r.tensor(&[3 * HIDDEN], 0.1)),
    ];
    let mut output =
        vec![tensor_value_info("y", DType::F32, &dims(&[B, S, if c.head { 8 } else { HIDDEN }]))];
    if c.head {
        nodes.push(node("MatMul", "head", &["ctx", "w_out"], &["y"]));
        initializer.push(tensor_to_proto("w_out", &r.tensor(&[HIDDEN, 8], 0.5)));
    }
    if c.past {
        output.push(tensor_value_info(
            "present",
            DType::F32,
            &dims(&[2, B, HEADS, total, HIDDEN / HEADS]),
        ));
    }
    let g = GraphProto {
        name: "ms_attention".into(),
        node: nodes,
        initializer,
        input: inputs,
        output,
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto { domain: String::new(), version: 14 },
            pb::OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 },
        ],
        graph: Some(g),
        ..Default::default()
    }
}

/// Feeds for a case: random `x` (and `past`, `attn_bias`), masks that leave every query at
/// least one key (ORT gives a fully masked row uniform weights over finite filler values;
/// lowbit does the same, but such rows say nothing about the masks).
fn feeds(c: Case, r: &mut Rng, n: usize) -> Vec<Vec<(String, Tensor)>> {
    let total = S + if c.past { PAST } else { 0 };
    (0..n)
        .map(|i| {
            let mut f = vec![("x".to_string(), r.tensor(&[B, S, HIDDEN], 1.0))];
            let len = |b: usize| (total - (i + b) % 3) as i32;
            let i32s = |shape: Vec<usize>, v: Vec<i32>| Tensor::from_vec(shape, v).unwrap();
            let mask = match c.mask {
                Mask::None => None,
                Mask::Lengths => Some(i32s(vec![B], (0..B).map(len).collect())),
                Mask::EndsStarts => {
                    let mut v: Vec<i32> = (0..B).map(len).collect();
                    v.extend((0..B).map(|b| ((i + b) % 2) as i32));
                    Some(i32s(vec![2 * B], v))
                }
                Mask::Raw2d => Some(i32s(
                    vec![B, total],
                    (0..B * total).map(|k| (k % total == 0 || (k + i) % 4 != 0) as i32).collect(),
                )),
                Mask::Raw3d => Some(i32s(
                    vec![B, S, total],
                    (0..B * S * total)
                        .map(|k| (k % total == 0 || (k * 7 + i) % 5 != 0) as i32)
                        .collect(),
                )),
            };
            f.extend(mask.map(|m| ("mask_index".to_string(), m)));
            if c.past {
                f.push(("past".into(), r.tensor(&[2, B, HEADS, PAST, HIDDEN / HEADS], 1.0)));
            }
            if c.attention_bias {
                f.push(("attn_bias".into(), r.tensor(&[1, HEADS, S, total], 2.0)));
            }
            f
        })
        .collect()
}

/// Largest |lowbit − ORT| over every output of every sample, and the largest |ORT| value.
fn worst_diff(
    m: &pb::ModelProto,
    samples: &[Vec<(String, Tensor)>],
    ort: &[Vec<(String, Tensor)>],
) -> (f32, f32) {
    let s = lowbit_engine::Session::new(m, &lowbit_engine::SessionOptions::with_threads(1))
        .expect("lowbit plans the model");
    let (mut diff, mut scale) = (0f32, 0f32);
    for (feed, theirs) in samples.iter().zip(ort) {
        let ours = s.run(feed.clone()).expect("lowbit runs the model");
        for (name, t) in theirs {
            let a = output(&ours, name).to_f32_vec().unwrap();
            let b = t.to_f32_vec().unwrap();
            assert_eq!(a.len(), b.len(), "{name}");
            for (x, y) in a.iter().zip(&b) {
                diff = diff.max((x - y).abs());
                scale = scale.max(y.abs());
            }
        }
    }
    (diff, scale)
}

#[test]
fn engine_matches_onnx_runtime_on_com_microsoft_attention() {
    let cases = [
        PLAIN,
        Case { mask: Mask::Lengths, ..PLAIN },
        Case { mask: Mask::EndsStarts, ..PLAIN },
        Case { mask: Mask::Raw2d, ..PLAIN },
        Case { mask: Mask::Raw3d, ..PLAIN },
        Case { unidirectional: true, ..PLAIN },
        Case { mask: Mask::Raw2d, unidirectional: true, ..PLAIN },
        Case { past: true, unidirectional: true, ..PLAIN },
        Case { mask: Mask::Raw2d, past: true, unidirectional: true, ..PLAIN },
        Case { attention_bias: true, ..PLAIN },
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rng(7);
    let mut compared = 0;
    for (k, c) in cases.into_iter().enumerate() {
        let m = attention_model(c);
        let samples = feeds(c, &mut r, 4);
        let path = dir.path().join(format!("attention-{k}.onnx"));
        lowbit_onnx::save_model(&m, &path).unwrap();
        let Some(ort) = ort_run(&path, &samples) else { return };
        let (diff, scale) = worst_diff(&m, &samples, &ort);
        println!("{c:?}: max |lowbit - ORT| {diff:.2e} (outputs up to {scale:.2})");
        // f32 sums of 4-16 terms in another order: a few ulps of values around 1.
        assert!(diff <= 1e-5 * scale.max(1.0), "{c:?}: lowbit and ORT differ by {diff:e}");
        compared += 1;
    }
    assert_eq!(compared, cases.len());
}

/// An engine-only check that needs no ORT: masking changes the output exactly where it should.
#[test]
fn key_length_mask_hides_the_padded_keys() {
    let c = Case { mask: Mask::Lengths, ..PLAIN };
    let m = attention_model(c);
    let s =
        lowbit_engine::Session::new(&m, &lowbit_engine::SessionOptions::with_threads(1)).unwrap();
    let mut r = Rng(3);
    let x = r.tensor(&[B, S, HIDDEN], 1.0);
    let run = |x: Tensor, lens: [i32; B]| {
        let mask = Tensor::from_vec(vec![B], lens.to_vec()).unwrap();
        let o = s.run(vec![("x".into(), x), ("mask_index".into(), mask)]).unwrap();
        output(&o, "y").to_f32_vec().unwrap()
    };
    let base = run(x.clone(), [3, S as i32]);
    // Changing batch 0's positions 3 and 4 (masked keys) changes only its own rows 3 and 4
    // (they are queries too), never what rows 0-2 of batch 0 see.
    let mut xv = x.to_f32_vec().unwrap();
    for v in &mut xv[3 * HIDDEN..S * HIDDEN] {
        *v += 5.0;
    }
    let moved = run(Tensor::from_vec(vec![B, S, HIDDEN], xv).unwrap(), [3, S as i32]);
    assert_eq!(&base[..3 * HIDDEN], &moved[..3 * HIDDEN]);
    assert_eq!(&base[S * HIDDEN..], &moved[S * HIDDEN..]);
    assert_ne!(&base[3 * HIDDEN..S * HIDDEN], &moved[3 * HIDDEN..S * HIDDEN]);
}

// int8 weights with one scale per output column keep about 40 dB each (measured: 41-44 dB at
// the output); the softmax and the int8 head add a little.
const MIN_SQNR_DB: f64 = 30.0;

#[test]
fn packed_attention_weight_becomes_int8_and_runs_in_both_runtimes() {
    let c = Case { mask: Mask::Raw2d, head: true, ..PLAIN };
    let m = attention_model(c);
    let eval = feeds(c, &mut Rng(11), 12);
    let fp32 = run_all(&m, &eval);

    // Static mode leaves the attention float and says so.
    let cov = static_coverage(m.clone(), &QuantPlan::resolve(&QuantizeConfig::default()).unwrap())
        .unwrap();
    assert_eq!((cov.weighted, cov.quantized), (2, 1), "{cov}");
    assert!(
        cov.causes.iter().any(|(n, why)| *n == 1
            && why.starts_with("static mode does not quantize Attention")
            && why.contains("--mode dynamic or weight-only")),
        "{cov}"
    );

    for (tag, cfg) in [
        ("dynamic", QuantizeConfig { mode: QuantMode::Dynamic, ..Default::default() }),
        ("weight-only", QuantizeConfig::weight_only_int8()),
    ] {
        let (q, summary) = quantize_model(m.clone(), &cfg, None).unwrap();
        println!("{tag}:\n{summary}");
        assert_eq!(summary.quantized.get("Attention"), Some(&1), "{summary}");
        assert_eq!(summary.quantized.get("MatMul"), Some(&1), "{summary}");
        let cov = summary.coverage();
        assert_eq!((cov.weighted, cov.quantized), (2, 2), "{cov}");
        assert!(summary.notes.iter().any(|n| n.contains("com.microsoft.Attention")), "{summary}");
        let g = q.graph.as_ref().unwrap();
        let attn = g.node.iter().find(|n| n.op_type == "Attention").unwrap();
        let dq = g.node.iter().find(|n| n.output[0] == attn.input[1]).unwrap();
        assert_eq!(dq.op_type, "DequantizeLinear");
        let w = g.initializer.iter().find(|t| t.name == dq.input[0]).unwrap();
        assert_eq!(w.data_type, DType::I8.onnx_id());
        let s = g.initializer.iter().find(|t| t.name == dq.input[1]).unwrap();
        assert_eq!(s.dims, vec![3 * HIDDEN as i64], "one scale per output column");

        check_saved_sqnr(&q, &format!("attention-{tag}.onnx"), &eval, &fp32, MIN_SQNR_DB);
    }
}

// ---------------------------------------------------------------- MiniLM, attention fused by ORT

/// MiniLM's pooled sentence embedding.
const EMBEDDING: &str = "461";

fn embeddings(m: &pb::ModelProto, feeds: &[Vec<(String, Tensor)>]) -> Vec<Vec<f32>> {
    let s = lowbit_engine::Session::new(m, &lowbit_engine::SessionOptions::with_threads(1))
        .expect("lowbit plans the model");
    feeds
        .iter()
        .map(|f| output(&s.run(f.clone()).unwrap(), EMBEDDING).to_f32_vec().unwrap())
        .collect()
}

fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let n = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            dot / (n(x) * n(y)).max(1e-30)
        })
        .fold(1.0, f64::min)
}

#[test]
fn minilm_with_attention_fused_by_onnx_runtime_runs_and_quantizes() {
    let Some(root) = shared("paraphrase-MiniLM-L3-v2.onnx") else { return };
    let Some(py) = python() else { return };
    let dev = root.join("corpus/dev");
    let dir = tempfile::tempdir().unwrap();
    let fused_path = dir.path().join("minilm-attention.onnx");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_fuse_attention.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .arg(dev.join("models/paraphrase-MiniLM-L3-v2.onnx"))
        .arg(&fused_path)
        .args(["12", "384"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let original =
        lowbit_onnx::load_model(dev.join("models/paraphrase-MiniLM-L3-v2.onnx")).unwrap();
    let fused = lowbit_onnx::load_model(&fused_path).unwrap();
    let attention = |m: &pb::ModelProto| {
        let g = m.graph.as_ref().unwrap();
        g.node.iter().filter(|n| n.op_type == "Attention" && n.domain == "com.microsoft").count()
    };
    assert_eq!(attention(&fused), 3, "one fused Attention per layer");

    // Sentences at their own lengths, and padded to a common one (the mask then matters).
    let mut sentences = stsb_sentences(&dev, "a", 12);
    let padded: Vec<Vec<(String, Tensor)>> = sentences
        .iter()
        .map(|f| {
            f.iter()
                .map(|(name, t)| {
                    let mut v = t.to_i64_vec().unwrap();
                    v.resize(32, 0);
                    (name.clone(), Tensor::from_vec(vec![1, 32], v).unwrap())
                })
                .collect()
        })
        .collect();
    sentences.extend(padded);

    let ours = embeddings(&fused, &sentences);
    let unfused = embeddings(&original, &sentences);
    let vs_unfused = min_cosine(&ours, &unfused);
    println!("fused vs unfused MiniLM on lowbit's engine: min cosine {vs_unfused:.7}");
    assert!(vs_unfused > 0.99999, "{vs_unfused}");
    if let Some(ort) = ort_run(&fused_path, &sentences) {
        let theirs: Vec<Vec<f32>> =
            ort.iter().map(|o| output(o, EMBEDDING).to_f32_vec().unwrap()).collect();
        let c = min_cosine(&ours, &theirs);
        let diff = ours
            .iter()
            .flatten()
            .zip(theirs.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("fused MiniLM, lowbit vs ONNX Runtime: min cosine {c:.7}, max |diff| {diff:.2e}");
        assert!(c > 0.99999, "{c}");
    }

    // Dynamic int8: the three packed attention weights and the six other MatMuls.
    let cfg = QuantizeConfig { mode: QuantMode::Dynamic, ..Default::default() };
    let (q, summary) = quantize_model(fused.clone(), &cfg, None).unwrap();
    println!("{summary}");
    assert_eq!(summary.quantized.get("Attention"), Some(&3), "{summary}");
    let cov = summary.coverage();
    assert_eq!(cov.quantized, cov.weighted, "{cov}");
    let q_path = dir.path().join("minilm-attention-dynamic.onnx");
    lowbit_onnx::save_model(&q, &q_path).unwrap();
    let eq = embeddings(&q, &sentences);
    let c = min_cosine(&eq, &ours);
    println!("dynamic int8 vs FP32 (fused) on lowbit's engine: min cosine {c:.5}");
    // Measured 0.996 (lowest of 24 sentences) in both engines.
    assert!(c > 0.98, "{c}");
    if let Some(ort) = ort_run(&q_path, &sentences) {
        let theirs: Vec<Vec<f32>> =
            ort.iter().map(|o| output(o, EMBEDDING).to_f32_vec().unwrap()).collect();
        let c = min_cosine(&theirs, &ours);
        println!("dynamic int8 in ONNX Runtime vs FP32: min cosine {c:.5}");
        assert!(c > 0.98, "{c}");
    }
}
