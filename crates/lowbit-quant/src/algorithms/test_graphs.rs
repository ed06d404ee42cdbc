//! Small graphs built by hand for the algorithms' tests (float input `x`, opset 13), a
//! deterministic noise source and an engine runner.

use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::build::{self, Dim};
pub use lowbit_onnx::build::{int_attr as int, ints_attr as ints};
use lowbit_onnx::pb::{self, AttributeProto, ModelProto, NodeProto};
use lowbit_onnx::tensor_to_proto;
use lowbit_tensor::{DType, Tensor};

/// A graph under construction.
#[derive(Default)]
pub struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<pb::TensorProto>,
    n: usize,
}

impl Builder {
    /// An initializer named `name` holding `t`.
    pub fn init(&mut self, name: &str, t: Tensor) -> String {
        self.inits.push(tensor_to_proto(name, &t));
        name.to_string()
    }

    /// A float initializer of `shape` holding `v`.
    pub fn f32(&mut self, name: &str, shape: &[usize], v: Vec<f32>) -> String {
        self.init(name, Tensor::from_vec(shape.to_vec(), v).unwrap())
    }

    /// A default-domain node with one output; returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.n += 1;
        let out = format!("{}{}", op.to_lowercase(), self.n);
        self.nodes.push(NodeProto { attribute: attrs, ..build::node(op, &out, inputs, &[&out]) });
        out
    }

    /// The model: float input `x` of `shape`, float `outputs`, opset 13.
    pub fn model(self, shape: &[usize], outputs: &[&str]) -> ModelProto {
        let dims: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d as i64)).collect();
        ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(pb::GraphProto {
                node: self.nodes,
                initializer: self.inits,
                input: vec![build::tensor_value_info("x", DType::F32, &dims)],
                output: outputs.iter().map(|o| build::unshaped_value_info(o, DType::F32)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Uniform values in `[lo, hi)` from a xorshift stream: data the tests can regenerate.
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// `uniform(-1, 1)` values with output channel `c` (rows of `per` values) multiplied by
/// `10^e_c`, `e_c` spread over `[-spread, spread]`: the wildly different channel ranges BN
/// folding leaves.
pub fn uneven_weights(seed: u64, channels: usize, per: usize, spread: f32) -> Vec<f32> {
    let e = uniform(seed ^ 0x9e37, channels, -spread, spread);
    let mut w = uniform(seed, channels * per, -1.0, 1.0);
    for (c, row) in w.chunks_mut(per).enumerate() {
        let k = 10f32.powf(e[c]);
        row.iter_mut().for_each(|v| *v *= k);
    }
    w
}

/// Runs `model` on `x` (fed as input `x` of `shape`), returning the first output's values.
pub fn run(model: &ModelProto, shape: &[usize], x: &[f32]) -> Vec<f32> {
    let s = Session::new(model, &SessionOptions::unfused(1)).unwrap();
    let feeds = vec![("x".to_string(), Tensor::from_vec(shape.to_vec(), x.to_vec()).unwrap())];
    s.run(feeds).unwrap().remove(0).1.as_f32().unwrap().to_vec()
}

/// The largest `|a − b|` over the largest `|a|`.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
