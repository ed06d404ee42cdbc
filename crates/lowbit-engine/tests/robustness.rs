//! Bad data given to real ops must come back as an error naming the node, never a panic.

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::pb::{self, ModelProto, NodeProto, ValueInfoProto};
use lowbit_tensor::Tensor;

fn untyped(name: &str) -> ValueInfoProto {
    ValueInfoProto { name: name.into(), ..Default::default() }
}

/// A model with one node `op` reading inputs `in0..inN` (declared without type or shape, so
/// the session accepts anything and the op itself must validate).
fn one_node(op: &str, n_inputs: usize, attrs: Vec<pb::AttributeProto>) -> ModelProto {
    let inputs: Vec<String> = (0..n_inputs).map(|i| format!("in{i}")).collect();
    ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            node: vec![NodeProto {
                op_type: op.into(),
                name: format!("the_{op}"),
                input: inputs.clone(),
                output: vec!["out".into()],
                attribute: attrs,
                ..Default::default()
            }],
            input: inputs.iter().map(|n| untyped(n)).collect(),
            output: vec![untyped("out")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32s(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), vec![1f32; n]).unwrap()
}

fn assert_error(op: &str, model: ModelProto, feeds: Vec<Tensor>) {
    let result = std::panic::catch_unwind(|| {
        let s = Session::new(&model, &SessionOptions::with_threads(1))?;
        let feeds = feeds.into_iter().enumerate().map(|(i, t)| (format!("in{i}"), t)).collect();
        s.run(feeds)
    });
    let outcome = result.unwrap_or_else(|_| panic!("{op} panicked on bad input"));
    let err = outcome.err().unwrap_or_else(|| panic!("{op} accepted bad input"));
    assert!(
        err.to_string().contains(&format!("the_{op}")),
        "{op}: error does not name the node: {err}"
    );
}

#[test]
fn broadcasting_ops_reject_incompatible_shapes() {
    assert_error("Add", one_node("Add", 2, vec![]), vec![f32s(&[2, 3]), f32s(&[4])]);
    let cond = Tensor::from_vec(vec![3], vec![true, false, true]).unwrap();
    assert_error("Where", one_node("Where", 3, vec![]), vec![cond, f32s(&[2]), f32s(&[2])]);
}

#[test]
fn clip_rejects_bounds_of_another_type() {
    let lo = Tensor::scalar(0f64);
    assert_error("Clip", one_node("Clip", 2, vec![]), vec![f32s(&[4]), lo]);
}

#[test]
fn matmul_and_gemm_reject_mismatched_inner_dims() {
    assert_error("MatMul", one_node("MatMul", 2, vec![]), vec![f32s(&[2, 3]), f32s(&[4, 5])]);
    assert_error("Gemm", one_node("Gemm", 2, vec![]), vec![f32s(&[2, 3]), f32s(&[4, 5])]);
}

#[test]
fn conv_rejects_channel_mismatch_and_bad_rank() {
    assert_error(
        "Conv",
        one_node("Conv", 2, vec![]),
        vec![f32s(&[1, 3, 8, 8]), f32s(&[4, 2, 3, 3])],
    );
    assert_error("Conv", one_node("Conv", 2, vec![]), vec![f32s(&[3, 8]), f32s(&[4, 3, 3, 3])]);
}

#[test]
fn indexing_ops_reject_out_of_range_and_bad_counts() {
    let idx = Tensor::from_vec(vec![1], vec![7i64]).unwrap();
    assert_error("Gather", one_node("Gather", 2, vec![]), vec![f32s(&[3, 2]), idx]);
    let shape = Tensor::from_vec(vec![2], vec![4i64, 4]).unwrap();
    assert_error("Reshape", one_node("Reshape", 2, vec![]), vec![f32s(&[3, 5]), shape]);
    let axis = pb::AttributeProto { name: "axis".into(), r#type: 2, i: 0, ..Default::default() };
    assert_error(
        "Concat",
        one_node("Concat", 2, vec![axis]),
        vec![f32s(&[2, 3]), f32s(&[2, 3, 1])],
    );
}

#[test]
fn layer_norm_and_softmax_reject_bad_scale_or_axis() {
    assert_error(
        "LayerNormalization",
        one_node("LayerNormalization", 2, vec![]),
        vec![f32s(&[2, 8]), f32s(&[5])],
    );
    let axis = pb::AttributeProto { name: "axis".into(), r#type: 2, i: 5, ..Default::default() };
    assert_error("Softmax", one_node("Softmax", 1, vec![axis]), vec![f32s(&[2, 8])]);
}

#[test]
fn attention_rejects_heads_masks_and_caches_that_do_not_fit() {
    let qkv = |h: usize| f32s(&[1, h, 4, 8]);
    // 3 query heads cannot share 2 key/value heads.
    assert_error("Attention", one_node("Attention", 3, vec![]), vec![qkv(3), qkv(2), qkv(2)]);
    // A mask over more keys than there are.
    assert_error(
        "Attention",
        one_node("Attention", 4, vec![]),
        vec![qkv(2), qkv(2), qkv(2), f32s(&[4, 6])],
    );
    // past_key without past_value.
    assert_error(
        "Attention",
        one_node("Attention", 5, vec![]),
        vec![qkv(2), qkv(2), qkv(2), f32s(&[4, 4]), qkv(2)],
    );

    // ONNX Runtime's fused op: a mask_index of none of its forms, and weights that do not fit.
    let heads =
        pb::AttributeProto { name: "num_heads".into(), r#type: 2, i: 2, ..Default::default() };
    let mut m = one_node("Attention", 4, vec![heads]);
    m.opset_import.push(pb::OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 });
    m.graph.as_mut().unwrap().node[0].domain = "com.microsoft".into();
    let mask = Tensor::from_vec(vec![3, 3], vec![1i32; 9]).unwrap();
    let (x, w, b) = (f32s(&[1, 4, 8]), f32s(&[8, 24]), f32s(&[24]));
    assert_error("Attention", m.clone(), vec![x.clone(), w, b.clone(), mask]);
    let lengths = Tensor::from_vec(vec![1], vec![4i32]).unwrap();
    assert_error("Attention", m, vec![x, f32s(&[6, 24]), b, lengths]);
}
