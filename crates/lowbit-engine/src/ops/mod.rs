//! Op implementations, one file per ONNX op family, each with a `register` function.
//!
//! | file | ops |
//! |---|---|
//! | `elementwise` | unary and broadcasting binary math, comparisons, logic, `Where`, `Clip`, `Cast` |
//! | `reduce` | `Reduce*`, `ArgMax`/`ArgMin` |
//! | `linalg` | `MatMul`, `Gemm`, `Einsum`-free matrix products |
//! | `nn` | `Conv`, pooling, normalizations, `Softmax`/`LogSoftmax`, activations with attributes |
//! | `shape` | layout and indexing: `Reshape`, `Transpose`, `Concat`, `Gather`, `Slice`, `Shape`, … |
//! | `quant` | `QuantizeLinear`, `DequantizeLinear`, `DynamicQuantizeLinear`, reference integer matmul/conv |
//! | `weight_only` | f32 × int8/int4 weight-only products: lowbit's fused `WeightOnlyMatMul`, ORT's `MatMulNBits` |
//! | `qlinear` | integer ops on the packed int8 kernels: `QLinearConv`/`MatMul`, `*Integer`, ORT's `QGemm`, `QLinearAdd`, … |

pub mod elementwise;
pub mod linalg;
pub mod nn;
pub mod qlinear;
pub mod quant;
pub mod reduce;
pub mod shape;
pub mod util;
pub mod weight_only;

use crate::registry::Registry;

/// Registers every op family.
pub fn register_all_ops(reg: &mut Registry) {
    reg.set_family("elementwise");
    elementwise::register(reg);
    reg.set_family("reduce");
    reduce::register(reg);
    reg.set_family("linalg");
    linalg::register(reg);
    reg.set_family("nn");
    nn::register(reg);
    reg.set_family("shape");
    shape::register(reg);
    reg.set_family("quant");
    quant::register(reg);
    qlinear::register(reg);
    weight_only::register(reg);
}
