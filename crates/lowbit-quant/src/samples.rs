//! The samples the quantizer runs a model on: calibration, the data-driven accuracy-recovery
//! algorithms (SmoothQuant, AdaRound, bias correction) and validation all read them through
//! [`SampleSource`], which replays the same batches on every pass, so no pass holds more than
//! one batch and every pass sees identical data. [`Progress`] reports long passes.
//!
//! ```
//! use lowbit_quant::samples::{Feeds, SampleSource};
//! use lowbit_tensor::Tensor;
//! let mut batches: Vec<Feeds> =
//!     vec![vec![("x".to_string(), Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap())]];
//! let mut rows = 0;
//! batches.replay(&mut |feeds| { rows += feeds[0].1.shape()[0]; Ok(()) }).unwrap();
//! assert_eq!((rows, batches.batches()), (1, Some(1)));
//! ```

use crate::error::Result;
use lowbit_tensor::Tensor;

/// One batch: a tensor per graph input, by name.
pub type Feeds = Vec<(String, Tensor)>;

/// A replayable stream of batches.
pub trait SampleSource {
    /// Batches one pass yields, when known (for progress).
    fn batches(&self) -> Option<usize> {
        None
    }

    /// Feeds every batch to `f`, in order; an error from `f` stops the pass and is returned.
    /// Calling it again replays the same batches.
    fn replay(&mut self, f: &mut dyn FnMut(Feeds) -> Result<()>) -> Result<()>;
}

/// Batches held in memory (tests, small data, Python callers that pass arrays).
impl SampleSource for Vec<Feeds> {
    fn batches(&self) -> Option<usize> {
        Some(self.len())
    }

    fn replay(&mut self, f: &mut dyn FnMut(Feeds) -> Result<()>) -> Result<()> {
        self.iter().try_for_each(|b| f(b.clone()))
    }
}

/// Reports a long pass (the CLI draws a progress bar; libraries pass [`NoProgress`]).
pub trait Progress: Sync {
    /// A pass named `stage` of `total` steps begins.
    fn start(&self, stage: &str, total: u64);
    /// `n` more steps are done; `message` (a loss, a layer name) may be shown beside the bar.
    fn advance(&self, n: u64, message: Option<&str>);
    /// The pass is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64, _: Option<&str>) {}
    fn finish(&self) {}
}
