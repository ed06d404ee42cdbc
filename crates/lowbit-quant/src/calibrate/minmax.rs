//! Min-max observers: the global extremes, and their moving average across batches.
//!
//! [`MovingAverageMinMax`] follows ONNX Runtime's `MinMaxCalibrater(moving_average=True)` (and
//! PyTorch's `MovingAverageMinMaxObserver`): the first batch sets `(min, max)`, every later
//! batch moves them by `c · (batch_min − min)` and `c · (batch_max − max)` in f32, with
//! `c = averaging_constant` (0.01 by default). One `observe` call is one batch; empty batches
//! are skipped.

use super::{min_max, Observer, Range};

/// The smallest and largest value ever observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MinMax {
    range: Option<Range>,
}

impl Observer for MinMax {
    fn observe_finite(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = min_max(x) {
            self.range = Some(match self.range {
                None => Range::new(lo, hi),
                Some(r) => Range::new(r.min.min(lo), r.max.max(hi)),
            });
        }
    }

    fn range(&self) -> Option<Range> {
        self.range
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// Per-batch min/max, exponentially averaged with `averaging_constant`.
#[derive(Clone, Debug, PartialEq)]
pub struct MovingAverageMinMax {
    averaging_constant: f32,
    range: Option<Range>,
}

impl Default for MovingAverageMinMax {
    fn default() -> Self {
        MovingAverageMinMax::new(0.01)
    }
}

impl MovingAverageMinMax {
    /// `averaging_constant` in [0, 1]: 0 keeps the first batch, 1 keeps the last.
    pub fn new(averaging_constant: f32) -> MovingAverageMinMax {
        MovingAverageMinMax { averaging_constant, range: None }
    }
}

impl Observer for MovingAverageMinMax {
    fn observe_finite(&mut self, x: &[f32]) {
        if let Some((lo, hi)) = min_max(x) {
            self.observe_with_extremes(x, lo, hi);
        }
    }

    fn observe_with_extremes(&mut self, _x: &[f32], lo: f32, hi: f32) {
        let c = self.averaging_constant;
        self.range = Some(match self.range {
            None => Range::new(lo, hi),
            Some(r) => Range::new(r.min + c * (lo - r.min), r.max + c * (hi - r.max)),
        });
    }

    fn range(&self) -> Option<Range> {
        self.range
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_calibration_range_covers_every_batch() {
        let mut o = MinMax::default();
        assert_eq!(o.range(), None);
        o.observe_finite(&[1.0, 2.0]);
        o.observe_finite(&[]);
        o.observe_finite(&[-3.0, 0.5]);
        assert_eq!(o.range(), Some(Range::new(-3.0, 2.0)));
    }

    #[test]
    fn moving_average_follows_onnx_runtime_averaging_constant() {
        let mut o = MovingAverageMinMax::default();
        o.observe_finite(&[0.0, 10.0]);
        o.observe_finite(&[-100.0, 110.0]);
        let r = o.range().unwrap();
        assert_eq!(r, Range::new(0.0 + 0.01 * -100.0, 10.0 + 0.01 * 100.0));
        let mut last = MovingAverageMinMax::new(1.0);
        last.observe_finite(&[5.0]);
        last.observe_finite(&[-1.0, 1.0]);
        assert_eq!(last.range(), Some(Range::new(-1.0, 1.0)));
    }

    #[test]
    fn observers_reject_non_finite_tensors() {
        let t = lowbit_tensor::Tensor::from_vec(vec![2], vec![1.0f32, f32::INFINITY]).unwrap();
        let mut o = MinMax::default();
        assert!(o.observe(&t).is_err());
        assert_eq!(o.range(), None);
    }
}
