//! Progress bars on stderr: hidden when stderr is not a terminal, with `--quiet`, or for fewer
//! than two steps.

use indicatif::{ProgressBar, ProgressStyle};

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
