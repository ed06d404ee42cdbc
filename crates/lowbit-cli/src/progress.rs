//! Progress bars on stderr: hidden when stderr is not a terminal, with `--quiet`, or for fewer
//! than two steps.

use indicatif::{ProgressBar, ProgressStyle};
use lowbit_quant::samples::Progress;
use std::sync::Mutex;

/// A bar over `len` samples, labelled `what`.
pub fn progress(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet || len < 2 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} samples, {elapsed} elapsed, ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// A library's progress callback (samples done) that advances `bar`.
pub fn advance(bar: &ProgressBar) -> impl FnMut(usize) + '_ {
    move |n| bar.inc(n as u64)
}

/// The quantizer's [`Progress`]: one bar per pass (calibration, AdaRound, ...), hidden with
/// `--quiet`.
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
