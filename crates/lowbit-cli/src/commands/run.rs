//! `lowbit run MODEL (--input NAME=FILE.npy ... | --data DIR) -o OUTDIR`: runs a model over
//! every sample and writes each graph output as `OUTDIR/<output-name>.npy`, samples stacked
//! along axis 0. How inputs are batched is described in [`lowbit_data::dataset`]; how outputs
//! are named and joined in [`lowbit_data::outputs`].

use super::{feed_source, load_model, new_session, preprocess_arg, print, print_notes};
use crate::cli::RunArgs;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lowbit_data::outputs::Collector;
use lowbit_data::Dataset;
use std::fmt::Write as _;
use std::time::Instant;

/// Default samples per run where the model's batch dimension is free.
pub const DEFAULT_BATCH: usize = 32;

/// A progress bar on stderr (hidden when stderr is not a terminal or `quiet`).
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

pub fn run(args: RunArgs, quiet: bool) -> Result<()> {
    let src = feed_source(&args.input, args.data.as_deref())?;
    let preprocess = preprocess_arg(args.preprocess.as_deref())?;
    let model = load_model(&args.model)?;
    let session = new_session(&model, &args.model, args.threads)?;
    drop(model);

    let mut data = Dataset::load(&session.inputs(), &src, preprocess.as_ref())?;
    print_notes(&data, quiet);
    if let Some(n) = args.limit {
        data.limit(n)?;
    }
    let batch = match (data.fixed_batch, args.batch) {
        (Some(fixed), Some(asked)) if fixed as u64 != asked => {
            if !quiet {
                eprintln!(
                    "note: the model fixes its batch dimension at {fixed}; ignoring --batch {asked}"
                );
            }
            fixed
        }
        (Some(fixed), _) => fixed,
        (None, asked) => asked.map_or(DEFAULT_BATCH, |b| b as usize),
    };
    if args.trim_padding && data.mask_name().is_none() && !quiet {
        eprintln!("note: --trim-padding: no *mask* input to measure padding by; nothing is cut");
    }

    let ranges = data.ranges(batch);
    let bar = progress(data.samples as u64, quiet, "run");
    let mut collector =
        Collector::new(session.output_names().iter().map(|s| s.to_string()).collect());
    let start = Instant::now();
    for &(s, e) in &ranges {
        let feeds = data.feeds(s, e, args.trim_padding)?;
        let outputs = session.run(feeds).with_context(|| {
            format!("{}: run on {} failed", args.model.display(), data.range_label(s, e))
        })?;
        collector.push(e - s, outputs);
        bar.inc((e - s) as u64);
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();

    let written = collector.write(&args.output)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ran {} sample{} in {} run{} (batch {batch}, {} thread{}) in {:.1} ms",
        data.samples,
        if data.samples == 1 { "" } else { "s" },
        ranges.len(),
        if ranges.len() == 1 { "" } else { "s" },
        session.threads(),
        if session.threads() == 1 { "" } else { "s" },
        elapsed.as_secs_f64() * 1e3
    );
    let w = written.iter().map(|o| o.name.len()).max().unwrap_or(0);
    for o in &written {
        let _ = writeln!(
            out,
            "  {:w$}  {} {:?}  -> {}",
            o.name,
            o.dtype,
            o.shape,
            args.output.join(&o.file).display()
        );
    }
    print(&out)
}
