//! What an op implementation is: a builder run once per node at load time, and a kernel run
//! on every inference.

use crate::error::OpResult;
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::NodeProto;
use lowbit_tensor::Tensor;

/// Everything a builder may look at: the node, its attributes, the opset version of its
/// domain, and the values of inputs that are constant (initializers, folded constants) so
/// weights can be checked and pre-packed once.
pub struct BuildCtx<'a> {
    pub node: &'a NodeProto,
    pub attrs: Attrs<'a>,
    pub opset: i64,
    pub constants: Vec<Option<&'a Tensor>>,
    /// Set for a node with subgraphs (`If`, `Loop`, `Scan`) inside a session: what planning
    /// them needs. Its inputs past `explicit_inputs` are the outer-scope values they read.
    pub subgraphs: Option<&'a crate::session::SubgraphCtx<'a>>,
}

impl<'a> BuildCtx<'a> {
    /// The constant value of input `i`, if it is known at load time.
    pub fn constant(&self, i: usize) -> Option<&'a Tensor> {
        self.constants.get(i).copied().flatten()
    }

    /// Number of inputs the node names (omitted optional inputs included, as empty names).
    pub fn num_inputs(&self) -> usize {
        self.node.input.len()
    }
}

/// One node's computation. `inputs[i]` is `None` for an omitted optional input. Kernels must
/// not panic on bad data: shape or dtype problems are returned as [`crate::OpError`].
pub trait Kernel: Send + Sync {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>>;

    /// Narrows a requantizing kernel's output to the codes `[lo, hi]` (a following activation
    /// that is only a clamp, folded at load: clamping the requantized code is the same as
    /// requantizing into the narrower range). `false` when the kernel cannot.
    fn clamp_output(&mut self, _lo: i32, _hi: i32) -> bool {
        false
    }

    /// [`Kernel::run`] with an observer: kernels that run subgraphs show it their values,
    /// named `scope` + the subgraph's attribute + `/` + the value's name.
    fn run_observed(
        &self,
        inputs: &[Option<&Tensor>],
        _observer: &mut crate::session::Observer<'_>,
        _scope: &str,
    ) -> OpResult<Vec<Tensor>> {
        self.run(inputs)
    }
}

/// What a builder returns.
pub type KernelResult = OpResult<Box<dyn Kernel>>;

/// A kernel from a plain function, for ops that need no load-time state.
pub struct FnKernel<F>(pub F);

/// Boxes `f` as a [`FnKernel`].
pub fn kernel(
    f: impl Fn(&[Option<&Tensor>]) -> OpResult<Vec<Tensor>> + Send + Sync + 'static,
) -> KernelResult {
    Ok(Box::new(FnKernel(f)))
}

impl<F> Kernel for FnKernel<F>
where
    F: Fn(&[Option<&Tensor>]) -> OpResult<Vec<Tensor>> + Send + Sync,
{
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        (self.0)(inputs)
    }
}

/// Input `i`, or an error naming it when it is missing.
pub fn input<'t>(inputs: &[Option<&'t Tensor>], i: usize) -> OpResult<&'t Tensor> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| crate::OpError::new(format!("input {i} is required but missing")))
}

/// Optional input `i`.
pub fn opt_input<'t>(inputs: &[Option<&'t Tensor>], i: usize) -> Option<&'t Tensor> {
    inputs.get(i).copied().flatten()
}
