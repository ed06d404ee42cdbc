//! `lowbit run MODEL (--input NAME=FILE.npy ... | --data DIR) -o OUTDIR`: runs a model over
//! every sample and writes each graph output as `OUTDIR/<output-name>.npy`, samples stacked
//! along axis 0. How inputs are batched is described in [`lowbit_data::dataset`]; how outputs
//! are named and joined in [`lowbit_data::outputs`].

use crate::cli::RunArgs;
use crate::inputs::{data_format, feed_source, load_dataset};
use crate::models::{adaptive_line, load_model, new_session_adaptive};
use crate::paths::OutputPaths;
use crate::progress::progress;
use crate::text::{plural, print};
use anyhow::{Context, Result};
use lowbit_data::outputs::Collector;
use lowbit_data::DEFAULT_BATCH;
use std::fmt::Write as _;
use std::time::Instant;

pub fn run(args: RunArgs, quiet: bool) -> Result<()> {
    let format = data_format(&args.format)?;
    let src = feed_source(&args.input, args.data.as_deref(), &format)?;
    let mut inputs = vec![("the input model", args.model.as_path())];
    if let Some(d) = &args.data {
        inputs.push(("the data folder", d.as_path()));
    }
    OutputPaths::new(args.force, &inputs).folder("-o", &args.output)?;
    let model = load_model(&args.model)?;
    let session = new_session_adaptive(&model, &args.model, args.threads.n, &args.adaptive, quiet)?;
    drop(model);

    let mut data = load_dataset(&session, &src, format.preprocess.as_ref(), quiet)?;
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
        plural(data.samples),
        ranges.len(),
        plural(ranges.len()),
        session.threads(),
        plural(session.threads()),
        elapsed.as_secs_f64() * 1e3
    );
    if let Some(a) = session.adaptive_stats() {
        let _ = writeln!(out, "adaptive: {}", adaptive_line(&a));
    }
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
