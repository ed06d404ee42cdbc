//! The HTML report of a [`CompareReport`]: one self-contained file (a stylesheet in `<style>`,
//! charts as inline SVG written here; no script, no external asset, nothing fetched) that
//! shows what quantization cost and where.
//!
//! Sections, top to bottom:
//!
//! 1. **Summary** (`id="summary"`): the two models, and with a [`ReportSummary`] their file
//!    sizes, a task metric and latency before and after.
//! 2. **Quantization** (`id="quantization"`, for models lowbit made): the plan's decisions and
//!    what each accuracy-recovery step did, with its per-layer figure before → after.
//! 3. **Outputs** (`id="outputs"`): noise of each graph output against FP32.
//! 4. **Per-layer SQNR** (`<svg id="sqnr-chart">`): every quantized activation in graph order
//!    (sorted by [`ActivationNoise::order`]); a bar (`class="bar acc …"`) per activation for the
//!    accumulated SQNR and a marker (`class="mark iso …"`) for the isolated one, on a dB axis.
//!    The worst layers of the ranking (up to [`HIGHLIGHTED`]) are drawn in red (`worst`) and
//!    labelled. An infinite SQNR (identical tensors) is drawn to the top of the axis in a pale
//!    colour (`inf`); hundreds of layers give thin bars (and a horizontally scrolling chart
//!    past [`MAX_LAYERS_AT_DEFAULT_WIDTH`]), only the highlighted layers get labels.
//! 5. **Histograms** (`<svg id="hist-1">`, `hist-2`, `hist-3`): the FP32 values of the worst
//!    three activations (`class="hist-bar"`), log-scaled counts when the peak dwarfs the tails,
//!    and the clip range of their quantization, `[(qmin − zp)·s, (qmax − zp)·s]` over the
//!    storage type's full range (`class="clip-line"`, what QuantizeLinear saturates to), with
//!    the saturated region shaded.
//! 6. **Weight ranges** (`<svg id="weight-ranges">`): min..max per output channel
//!    (`class="range-bar"`) of the worst Conv/Gemm weight of the ranking; for a per-tensor
//!    weight the shared range every channel is quantized over is drawn too.
//! 7. **Ranking** (`<table id="ranking">`): the worst layers with their hints, then all layers
//!    and weights in collapsed tables.
//!
//! Every name is HTML-escaped. Non-finite numbers print as `∞`, `−∞` or `–`.
//!
//! ```
//! use lowbit_eval::compare::CompareReport;
//! use lowbit_eval::report::render_html;
//! let report = CompareReport {
//!     format: "lowbit-compare/1".into(),
//!     fp32_model: "model.onnx".into(),
//!     quant_model: "model.int8.onnx".into(),
//!     samples: 0,
//!     runs: 0,
//!     outputs: vec![],
//!     activations: vec![],
//!     weights: vec![],
//!     ranking: vec![],
//!     quantization: None,
//! };
//! let html = render_html(&report, None);
//! assert!(html.starts_with("<!DOCTYPE html>") && html.contains("model.int8.onnx"));
//! ```

mod format;
mod sections;
mod select;
mod style;
mod svg;
mod tune;

pub use format::escape_html;
pub use svg::clip_range;
pub use tune::render_tune_html;

use crate::compare::{ActivationNoise, CompareReport};
use format::{esc, name, w};
use sections::{
    histogram_section, outputs_section, quantization_section, ranking_section, sqnr_section,
    summary_section, weight_section,
};
use select::worst_activations;
use serde::{Deserialize, Serialize};
use style::STYLE;

/// Worst layers of the ranking highlighted and labelled in the SQNR chart.
pub const HIGHLIGHTED: usize = 5;

/// Activations drawn as histograms.
pub const HISTOGRAMS: usize = 3;

/// Up to this many layers the SQNR chart keeps its default width (bars at least 2 px apart);
/// beyond, it widens and scrolls.
pub const MAX_LAYERS_AT_DEFAULT_WIDTH: usize = 500;

/// What the report's summary shows beyond the comparison itself: what `lowbit eval` and
/// `lowbit bench` measured on both models.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportSummary {
    /// The models' names as the user knows them (file names).
    pub fp32_model: String,
    pub quant_model: String,
    /// File sizes in bytes (external data included).
    pub fp32_bytes: u64,
    pub quant_bytes: u64,
    /// A task metric on both models, higher is better: e.g. "top-1 %", "Spearman×100",
    /// "agreement with FP32 %".
    pub metric: Option<SummaryMetric>,
    /// Median latency per sample on lowbit's engine, milliseconds.
    pub latency_ms: Option<BeforeAfter>,
}

/// A named metric measured on both models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryMetric {
    pub name: String,
    pub value: BeforeAfter,
}

/// One number on the FP32 model and on the quantized one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BeforeAfter {
    pub fp32: f64,
    pub quant: f64,
}

/// The report as one HTML document.
pub fn render_html(report: &CompareReport, summary: Option<&ReportSummary>) -> String {
    let mut acts: Vec<&ActivationNoise> = report.activations.iter().collect();
    acts.sort_by_key(|a| a.order);
    let worst = worst_activations(report, &acts);

    let mut h = String::with_capacity(64 * 1024 + 600 * acts.len());
    let title = summary.map_or(report.quant_model.as_str(), |s| s.quant_model.as_str());
    w(
        &mut h,
        format_args!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>lowbit report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
            esc(title)
        ),
    );
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    // Runs are worth naming only when a run fed a batch of samples.
    let runs = match report.runs {
        r if r == 0 || r == report.samples => String::new(),
        r => format!(" in {r} run{}", plural(r)),
    };
    w(
        &mut h,
        format_args!(
            "<header><h1>What quantization cost</h1><p class=\"sub\"><code>{}</code> → \
             <code>{}</code> · {} sample{}{runs} · {} quantized activations · {} quantized \
             weights</p></header>\n",
            name(&report.fp32_model),
            name(&report.quant_model),
            report.samples,
            plural(report.samples),
            report.activations.len(),
            report.weights.len()
        ),
    );
    summary_section(&mut h, report, summary);
    quantization_section(&mut h, report);
    outputs_section(&mut h, report);
    sqnr_section(&mut h, report, &acts);
    histogram_section(&mut h, report, &acts, &worst);
    weight_section(&mut h, report);
    ranking_section(&mut h, report, &acts);
    w(
        &mut h,
        format_args!(
            "<footer>lowbit {} · <code>{}</code></footer>\n</main>\n</body>\n</html>\n",
            env!("CARGO_PKG_VERSION"),
            esc(&report.format)
        ),
    );
    h
}
