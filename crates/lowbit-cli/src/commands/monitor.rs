//! `lowbit monitor QUANT.onnx --data DIR [--ranges ranges.json] [--reference FP32.onnx] [--json]
//! [--json-out F]`: runs new inputs through a quantized model and reports, per quantized activation, its
//! clip rate, observed range and drift (PSI) against the calibration statistics the quantizer
//! stored in the model (or a `--ranges` table), plus the output's agreement with the FP32
//! model when given ([`lowbit_eval::monitor`]). Drift exits 3 ([`crate::usage::DriftDetected`])
//! after the report is printed.
//!
//! The model runs unfused (every quantized activation is a float value the observer sees),
//! batch by batch: memory does not grow with the number of samples.

use crate::cli::MonitorArgs;
use crate::inputs::{data_format, load_dataset};
use crate::models::{load_model, new_session, new_unfused_session};
use crate::paths::OutputPaths;
use crate::progress::progress;
use crate::text::{plural, print, print_json};
use crate::usage::{usage_bail, DriftDetected};
use anyhow::{bail, Context, Result};
use lowbit_data::DEFAULT_BATCH;
use lowbit_eval::monitor::{Monitor, MonitorOptions, MonitorReport};
use lowbit_eval::score::choose_output;
use lowbit_quant::calibrate::{CalibrationRecord, CalibrationTable, CALIBRATION_METADATA_KEY};
use std::fmt::Write as _;
use std::path::Path;

/// Tensors listed in the text report (all of them are in the JSON).
const SHOWN: usize = 10;

pub fn monitor(args: MonitorArgs, quiet: bool) -> Result<()> {
    let quiet = quiet || args.json.on;
    let opts = MonitorOptions { psi: args.psi_threshold, clip_rate: args.clip_threshold };
    if !(opts.psi >= 0.0 && opts.psi.is_finite()) {
        usage_bail!("--psi-threshold must be a non-negative number, got {}", opts.psi);
    }
    if !(0.0..=1.0).contains(&opts.clip_rate) {
        usage_bail!("--clip-threshold must be a share in [0, 1], got {}", opts.clip_rate);
    }
    if args.limit == Some(0) {
        usage_bail!("--limit must be at least 1");
    }
    let format = data_format(&args.format)?;
    let src = format.source(&args.data)?;
    if let Some(j) = &args.json_out {
        let inputs = [("the model", args.model.as_path()), ("the data folder", &args.data)];
        OutputPaths::new(args.force, &inputs).file("--json-out", j)?;
    }

    let model = load_model(&args.model)?;
    let (record, source) = match &args.ranges {
        Some(p) => {
            let table = CalibrationTable::load(p).context("--ranges")?;
            (Some(CalibrationRecord::new(&model, &table)), "ranges")
        }
        None => match CalibrationRecord::stored(&model) {
            Some(Ok(r)) => (Some(r), "model"),
            Some(Err(e)) => bail!(
                "{}: its calibration record (metadata '{CALIBRATION_METADATA_KEY}') is \
                 unreadable: {e}; pass --ranges",
                args.model.display()
            ),
            None => (None, "none"),
        },
    };
    let mut mon = Monitor::new(&model, record.as_ref(), source, opts);
    if mon.is_empty() {
        bail!(
            "{}: no activation is quantized by a QuantizeLinear with constant per-tensor \
             parameters: nothing to monitor (is it a static QDQ model?)",
            args.model.display()
        );
    }
    if record.is_none() && !quiet {
        eprintln!(
            "note: {} carries no calibration record (quantized by another tool or an older \
             lowbit): clip rates only; pass --ranges ranges.json for drift",
            args.model.display()
        );
    }
    let session = new_unfused_session(&model, &args.model, args.threads.n)?;
    let output = choose_output(&model, &args.model, None)?;
    drop(model);
    let reference = match &args.reference {
        Some(p) => {
            let m = load_model(p).with_context(|| format!("reference {}", p.display()))?;
            Some(new_session(&m, p, args.threads.n)?)
        }
        None => None,
    };

    let mut data = load_dataset(&session, &src, format.preprocess.as_ref(), quiet)?;
    let mut ref_data = match &reference {
        Some(r) => Some(load_dataset(r, &src, format.preprocess.as_ref(), true)?),
        None => None,
    };
    if let Some(n) = args.limit {
        data.limit(n)?;
        for d in ref_data.iter_mut() {
            d.limit(n)?;
        }
    }
    let batch = data.fixed_batch.unwrap_or(args.batch.map_or(DEFAULT_BATCH, |b| b as usize));
    let trim = !args.no_trim;
    let bar = progress(data.samples as u64, quiet, "monitor");
    for (s, e) in data.ranges(batch) {
        let feeds = data.feeds(s, e, trim)?;
        let rows = e - s;
        let out = session
            .run_observed(feeds, &mut |name, t| {
                if mon.watches(name) {
                    mon.observe(name, t, rows);
                }
            })
            .with_context(|| {
                format!("{}: run on {} failed", args.model.display(), data.range_label(s, e))
            })?;
        mon.end_batch(rows);
        if let (Some(r), Some(rd)) = (&reference, ref_data.as_mut()) {
            let rfeeds = rd.feeds(s, e, trim)?;
            let rout = r
                .run(rfeeds)
                .with_context(|| format!("reference: run on {} failed", data.range_label(s, e)))?;
            let find =
                |o: &[(String, lowbit_tensor::Tensor)]| o.iter().position(|(n, _)| *n == output);
            match (find(&out), find(&rout)) {
                (Some(i), Some(j)) => mon.compare_outputs(&output, &rout[j].1, &out[i].1),
                (_, None) => bail!(
                    "the reference has no output '{output}' (the quantized model's first float \
                     output): pass the FP32 model it was made from"
                ),
                (None, _) => {}
            }
        }
        bar.inc(rows as u64);
    }
    bar.finish_and_clear();

    let report = mon.report();
    if let Some(p) = &args.json_out {
        let text = serde_json::to_string_pretty(&report)?;
        lowbit_tensor::npy::write_atomic(p, text.as_bytes())
            .with_context(|| format!("cannot write --json-out {}", p.display()))?;
    }
    if args.json.on {
        print_json(&report)?;
    } else {
        print(&render(&report, &args.model))?;
    }
    if report.drift {
        return Err(DriftDetected(format!(
            "{} of {} quantized tensor{} drifted: {}",
            report.drifted.len(),
            report.tensors.len(),
            plural(report.tensors.len()),
            report.drifted.join(", ")
        ))
        .into());
    }
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.3} %", 100.0 * x)
}

/// The text report: a summary, then the drifted tensors and the highest PSIs.
fn render(r: &MonitorReport, model: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model        {}", model.display());
    let _ = writeln!(
        s,
        "samples      {} ({} quantized tensor{} watched; calibration statistics: {})",
        r.samples,
        r.tensors.len(),
        plural(r.tensors.len()),
        match r.calibration.as_str() {
            "model" => "the model's own record",
            "ranges" => "--ranges",
            _ => "none, clip rates only",
        }
    );
    let _ = writeln!(
        s,
        "thresholds   PSI > {}, clip rate > calibration's + {}",
        r.thresholds.psi,
        pct(r.thresholds.clip_rate)
    );
    if let Some(a) = &r.reference {
        let sqnr = a.noise.map_or("n/a".into(), |n| {
            if n.sqnr_db.is_finite() {
                format!("{:.2} dB", n.sqnr_db)
            } else {
                "inf".into()
            }
        });
        let _ = writeln!(
            s,
            "reference    output '{}': top-1 agreement {:.2} %, mean cosine {:.5}, SQNR {sqnr}",
            a.output,
            100.0 * a.top1_agreement,
            a.cosine_mean
        );
    }
    let _ = writeln!(
        s,
        "drift        {}",
        if r.drift {
            format!("YES: {} tensor{}", r.drifted.len(), plural(r.drifted.len()))
        } else {
            "no".into()
        }
    );
    let w = r.tensors.iter().take(SHOWN).map(|t| t.tensor.len()).max().unwrap_or(0).max(6);
    let _ = writeln!(
        s,
        "\n  {:w$}  {:>8}  {:>10}  {:>9}  {:>21}  {:>21}",
        "tensor", "PSI", "clip rate", "clipping", "observed range", "calibrated range"
    );
    for t in r.tensors.iter().take(SHOWN) {
        let psi = t.psi.map_or("n/a".into(), |p| format!("{p:.4}"));
        let obs = t.observed.map_or("never produced".into(), |[a, b]| format!("[{a:.3}, {b:.3}]"));
        let cal =
            t.calibrated.as_ref().map_or("n/a".into(), |c| format!("[{:.3}, {:.3}]", c.min, c.max));
        let _ = writeln!(
            s,
            "{} {:w$}  {psi:>8}  {:>10}  {:>9}  {obs:>21}  {cal:>21}",
            if t.drift { "!" } else { " " },
            t.tensor,
            pct(t.clip_rate),
            t.samples_clipping
        );
    }
    if r.tensors.len() > SHOWN {
        let _ = writeln!(s, "  ... {} more (all in --json)", r.tensors.len() - SHOWN);
    }
    for t in r.tensors.iter().filter(|t| t.drift).take(SHOWN) {
        let _ = writeln!(s, "! {}: {}", t.tensor, t.reasons.join("; "));
    }
    s
}
