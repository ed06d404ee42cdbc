//! Tensors and element types shared by every lowbit crate.
//!
//! A [`Tensor`] is a dense, row-major (C order) array with a concrete [`DType`] and a shape of
//! `usize` dims. Storage is one typed `Vec` per element type ([`TensorData`]), so kernels borrow
//! `&[f32]`/`&[i8]` slices without any unsafe reinterpretation. 4-bit types are stored one value
//! per byte (`i8`/`u8`) in memory; nibble packing happens only at the file boundary
//! (see [`int4`]).

pub mod cast;
pub mod dtype;
pub mod error;
pub mod float8;
pub mod int4;
pub mod npy;
pub mod spec;
pub mod tensor;

pub use dtype::DType;
pub use error::TensorError;
pub use half::{bf16, f16};
pub use spec::{Dim, InputSpec};
pub use tensor::{Tensor, TensorData};
