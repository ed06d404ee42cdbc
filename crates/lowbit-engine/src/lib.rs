//! The lowbit execution engine: ONNX graph → execution plan → run on the CPU.
//!
//! [`Session::new`] checks every node against the op [`registry`], fuses quantized
//! ([`fuse`]) and float ([`fuse_float`]) patterns, builds one kernel per node (weights can be
//! pre-packed then), folds nodes whose inputs are all constant, and records each
//! value's last use so its buffer is dropped as soon as nothing needs it. [`Session::run`] feeds
//! named inputs; [`Session::run_observed`] also calls an observer with every tensor as it is
//! produced (graph inputs, then each node output, by its ONNX name) — calibration and debugging
//! are built on it, and an unobserved run pays nothing for it.
//!
//! ```no_run
//! use lowbit_engine::{Session, SessionOptions};
//! let model = lowbit_onnx::load_model("model.onnx")?;
//! let session = Session::new(&model, &SessionOptions::default())?;
//! let x = lowbit_tensor::Tensor::from_vec(vec![1, 4], vec![0f32; 4])?;
//! let outputs = session.run(vec![("x".to_string(), x)])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adaptive;
pub mod error;
pub mod fuse;
pub mod fuse_float;
pub mod layout;
pub mod normalize;
pub mod op;
pub mod ops;
pub mod registry;
pub mod session;

pub use error::{EngineError, OpError};
pub use op::{BuildCtx, Kernel};
pub use registry::Registry;
pub use session::{InputSpec, Observer, Session, SessionOptions};
