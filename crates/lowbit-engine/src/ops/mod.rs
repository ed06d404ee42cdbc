//! Op implementations, one file per ONNX op family, each with a `register` function. The
//! family names are also the names of `lowbit_onnx::infer`'s rule files: the registry's tests
//! check that every op run here has a shape rule filed under the same family.
//!
//! | file | ops |
//! |---|---|
//! | `elementwise` | unary and broadcasting binary math, comparisons, logic, `Where`, `Clip`, `Cast` |
//! | `reduce` | `Reduce*`, `ArgMax`/`ArgMin` |
//! | `linalg` | `MatMul`, `Gemm`, `Einsum` |
//! | `nn` | `Conv`, pooling, normalizations, `Softmax`/`LogSoftmax`, `RNN`/`GRU`/`LSTM`, `Attention` (ONNX and `com.microsoft`) |
//! | `shape` | layout and indexing: `Reshape`, `Transpose`, `Concat`, `Gather`, `Slice`, `Shape`, … |
//! | `resize` | `Resize`: nearest, linear and cubic interpolation |
//! | `quant` | `QuantizeLinear`, `DequantizeLinear`, `DynamicQuantizeLinear`, reference integer matmul/conv |
//! | `weight_only` | f32 × int8/int4 weight-only products: lowbit's fused `WeightOnlyMatMul`, ORT's `MatMulNBits` |
//! | `control` | `If`, `Loop`, `Scan`: subgraphs run as nested plans |
//! | `qlinear` | integer ops on the packed int8 kernels: `QLinearConv`/`MatMul`, `*Integer`, ORT's `QGemm`, `QLinearAdd`, … |

pub mod control;
pub mod elementwise;
pub mod linalg;
pub mod nn;
pub mod qlinear;
pub mod quant;
pub mod reduce;
pub mod resize;
pub mod shape;
pub mod util;
pub mod weight_only;

use crate::registry::Registry;

/// A family's `register` functions.
type Registers = &'static [fn(&mut Registry)];

/// Each family's name (the file) and its `register` functions.
const FAMILIES: [(&str, Registers); 8] = [
    ("elementwise", &[elementwise::register]),
    ("reduce", &[reduce::register]),
    ("linalg", &[linalg::register]),
    ("nn", &[nn::register]),
    ("shape", &[shape::register]),
    ("resize", &[resize::register]),
    ("quant", &[quant::register, qlinear::register, weight_only::register]),
    ("control", &[control::register]),
];

/// Registers every op family.
pub fn register_all_ops(reg: &mut Registry) {
    for (family, registers) in FAMILIES {
        reg.set_family(family);
        registers.iter().for_each(|register| register(reg));
    }
}
