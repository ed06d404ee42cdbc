//! The CLI's data as the quantizer's [`SampleSource`] (batches of a [`Dataset`], replayed for
//! each pass of calibration and the accuracy-recovery steps) and indicatif bars as its
//! [`Progress`].

use crate::feeds::Dataset;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit_quant::samples::{Feeds, Progress, SampleSource};
use lowbit_quant::QuantError;
use std::sync::Mutex;

/// A dataset cut into the runs calibration feeds (see `commands::calibrate`).
pub struct DatasetSamples {
    pub dataset: Dataset,
    pub ranges: Vec<(usize, usize)>,
    pub trim: bool,
}

impl SampleSource for DatasetSamples {
    fn batches(&self) -> Option<usize> {
        Some(self.ranges.len())
    }

    fn replay(
        &mut self,
        f: &mut dyn FnMut(Feeds) -> lowbit_quant::error::Result<()>,
    ) -> lowbit_quant::error::Result<()> {
        for &(s, e) in &self.ranges {
            let feeds = self.dataset.feeds(s, e, self.trim).map_err(|err| {
                QuantError::Data(format!("{}: {err:#}", self.dataset.range_label(s, e)))
            })?;
            f(feeds)?;
        }
        Ok(())
    }
}

/// One progress bar per pass, hidden with `--quiet`.
pub struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Bars {
        Bars { quiet, bar: Mutex::new(None) }
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        if self.quiet || total < 2 {
            return;
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len}, {elapsed} elapsed, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(stage.to_string());
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn advance(&self, n: u64, message: Option<&str>) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if let Some(m) = message {
                b.set_message(m.to_string());
            }
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}
