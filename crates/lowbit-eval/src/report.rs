//! The HTML report of a [`CompareReport`]: one self-contained file (a stylesheet in `<style>`,
//! charts as inline SVG written here; no script, no external asset, nothing fetched) that
//! shows what quantization cost and where.
//!
//! Sections, top to bottom:
//!
//! 1. **Summary** (`id="summary"`): the two models, and with a [`ReportSummary`] their file
//!    sizes, a task metric and latency before and after.
//! 2. **Outputs** (`id="outputs"`): noise of each graph output against FP32.
//! 3. **Per-layer SQNR** (`<svg id="sqnr-chart">`): every quantized activation in graph order
//!    (sorted by [`ActivationNoise::order`]); a bar (`class="bar acc …"`) per activation for the
//!    accumulated SQNR and a marker (`class="mark iso …"`) for the isolated one, on a dB axis.
//!    The worst layers of the ranking (up to [`HIGHLIGHTED`]) are drawn in red (`worst`) and
//!    labelled. An infinite SQNR (identical tensors) is drawn to the top of the axis in a pale
//!    colour (`inf`); hundreds of layers give thin bars (and a horizontally scrolling chart
//!    past [`MAX_LAYERS_AT_DEFAULT_WIDTH`]), only the highlighted layers get labels.
//! 4. **Histograms** (`<svg id="hist-1">`, `hist-2`, `hist-3`): the FP32 values of the worst
//!    three activations (`class="hist-bar"`), log-scaled counts when the peak dwarfs the tails,
//!    and the clip range of their quantization, `[(qmin − zp)·s, (qmax − zp)·s]` over the
//!    storage type's full range (`class="clip-line"`, what QuantizeLinear saturates to), with
//!    the saturated region shaded.
//! 5. **Weight ranges** (`<svg id="weight-ranges">`): min..max per output channel
//!    (`class="range-bar"`) of the worst Conv/Gemm weight of the ranking; for a per-tensor
//!    weight the shared range every channel is quantized over is drawn too.
//! 6. **Ranking** (`<table id="ranking">`): the worst layers with their hints, then all layers
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
//!     outputs: vec![],
//!     activations: vec![],
//!     weights: vec![],
//!     ranking: vec![],
//! };
//! let html = render_html(&report, None);
//! assert!(html.starts_with("<!DOCTYPE html>") && html.contains("model.int8.onnx"));
//! ```

use crate::compare::{ActivationNoise, CompareReport, Histogram, RankedLayer, WeightNoise};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

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
    w(
        &mut h,
        format_args!(
            "<header><h1>What quantization cost</h1><p class=\"sub\"><code>{}</code> → \
             <code>{}</code> · {} sample{} · {} quantized activations · {} quantized weights</p>\
             </header>\n",
            name(&report.fp32_model),
            name(&report.quant_model),
            report.samples,
            if report.samples == 1 { "" } else { "s" },
            report.activations.len(),
            report.weights.len()
        ),
    );
    summary_section(&mut h, report, summary);
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

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;background:#f3f5f8;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px}
header h1{font-size:22px;margin:0 0 2px}
.sub{color:#59636e;margin:0 0 16px}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:16px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 4px}
p.note{color:#59636e;margin:2px 0 10px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-weight:600;color:#59636e;background:#f6f8fa}
.num{text-align:right;white-space:nowrap}
tr.worst td:first-child{border-left:3px solid #e15759}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;overflow-wrap:anywhere}
.good{color:#1a7f37}.bad{color:#cf222e}
.scroll{overflow-x:auto}
svg{display:block}
svg text{font:11px system-ui,"DejaVu Sans",sans-serif;fill:#59636e}
svg text.label{fill:#1f2328;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
svg text.title{font-weight:600;fill:#1f2328}
.grid line{stroke:#eaeef2}
.axis{stroke:#8c959f;stroke-width:1}
.bar,.hist-bar,.range-bar,.clip-line,.grid line,.axis{shape-rendering:crispEdges}
.bar.acc{fill:#4e79a7}.bar.acc.worst{fill:#e15759}.bar.acc.inf{fill:#c6d4e6}
.worst-band{fill:#e15759;fill-opacity:.1}
.mark.iso{fill:#f28e2b;stroke:#fff;stroke-width:1}.mark.iso.inf{fill:#fff;stroke:#f28e2b;stroke-width:1.5}
.leader{stroke:#8c959f;stroke-dasharray:2 2}
.hist-bar{fill:#76b7b2}
.clip-line{stroke:#7b3294;stroke-width:2}
.clip-zone{fill:#e15759;fill-opacity:.08}
.range-bar{fill:#59a14f}
.shared-range{stroke:#e15759;stroke-width:1.5;stroke-dasharray:6 4}
.zero{stroke:#8c959f;stroke-dasharray:3 3}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;color:#59636e;font-size:12.5px;margin:6px 0 0}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.sw.acc{background:#4e79a7}.sw.worst{background:#e15759}.sw.inf{background:#c6d4e6}
.sw.iso{background:#f28e2b;border-radius:50%}.sw.clip{background:#7b3294;width:3px}
.sw.hist{background:#76b7b2}.sw.range{background:#59a14f}.sw.shared{border-top:2px dashed #e15759;height:0;border-radius:0}
.hists{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.hists figure{margin:0;min-width:0}
.hists svg{max-width:100%;height:auto}
figcaption{font-size:12.5px;color:#59636e;margin:0 0 4px}
figcaption code{color:#1f2328}
details{margin-top:10px}
summary{cursor:pointer;color:#0969da}
footer{color:#8c959f;font-size:12px;text-align:right}
"#;

// --- sections ------------------------------------------------------------------------------

fn summary_section(h: &mut String, report: &CompareReport, summary: Option<&ReportSummary>) {
    h.push_str("<section id=\"summary\"><h2>Summary</h2>\n<table>\n");
    h.push_str(
        "<tr><th></th><th class=\"num\">FP32</th><th class=\"num\">quantized</th>\
         <th class=\"num\">change</th></tr>\n",
    );
    let (fp32_name, quant_name) = match summary {
        Some(s) => (s.fp32_model.as_str(), s.quant_model.as_str()),
        None => (report.fp32_model.as_str(), report.quant_model.as_str()),
    };
    w(
        h,
        format_args!(
            "<tr><td>model</td><td class=\"num\"><code>{}</code></td>\
             <td class=\"num\"><code>{}</code></td><td></td></tr>\n",
            esc(fp32_name),
            esc(quant_name)
        ),
    );
    if let Some(s) = summary {
        let change = if s.fp32_bytes > 0 {
            let r = s.quant_bytes as f64 / s.fp32_bytes as f64;
            let class = if r <= 1.0 { "good" } else { "bad" };
            format!(
                "<span class=\"{class}\">{} % (×{} smaller)</span>",
                signed(100.0 * (r - 1.0), 1),
                fmt_fixed(1.0 / r, 2)
            )
        } else {
            String::new()
        };
        w(
            h,
            format_args!(
                "<tr><td>file size</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{change}</td></tr>\n",
                fmt_bytes(s.fp32_bytes),
                fmt_bytes(s.quant_bytes)
            ),
        );
        if let Some(m) = &s.metric {
            let d = m.value.quant - m.value.fp32;
            let class = if d >= 0.0 { "good" } else { "bad" };
            w(
                h,
                format_args!(
                    "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\"><span class=\"{class}\">{}</span></td></tr>\n",
                    esc(&m.name),
                    fmt_fixed(m.value.fp32, 2),
                    fmt_fixed(m.value.quant, 2),
                    signed(d, 2)
                ),
            );
        }
        if let Some(l) = s.latency_ms {
            let speedup = l.fp32 / l.quant;
            let change = if speedup.is_finite() && speedup > 0.0 {
                let (class, word) =
                    if speedup >= 1.0 { ("good", "faster") } else { ("bad", "slower") };
                let factor = if speedup >= 1.0 { speedup } else { 1.0 / speedup };
                format!("<span class=\"{class}\">×{} {word}</span>", fmt_fixed(factor, 2))
            } else {
                String::new()
            };
            w(
                h,
                format_args!(
                    "<tr><td>latency (ms per sample, lowbit engine, median)</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{change}</td></tr>\n",
                    fmt_fixed(l.fp32, 3),
                    fmt_fixed(l.quant, 3)
                ),
            );
        }
    }
    h.push_str("</table>\n");
    let worst_out =
        report.outputs.iter().min_by(|a, b| a.noise.sqnr_db.total_cmp(&b.noise.sqnr_db));
    let mut facts = Vec::new();
    if let Some(o) = worst_out {
        facts.push(format!(
            "output SQNR {} dB (<code>{}</code>)",
            fmt_db(o.noise.sqnr_db),
            name(&o.name)
        ));
    }
    if let Some(r) = report.ranking.first() {
        facts.push(format!(
            "worst layer <code>{}</code> ({}) at {} dB: {}",
            name(&r.node),
            esc(&r.op_type),
            fmt_db(r.sqnr_db),
            esc(&r.hint)
        ));
    }
    if !facts.is_empty() {
        w(h, format_args!("<p class=\"note\">{}</p>\n", facts.join(" · ")));
    }
    h.push_str("</section>\n");
}

fn outputs_section(h: &mut String, report: &CompareReport) {
    h.push_str("<section id=\"outputs\"><h2>Outputs</h2>\n");
    if report.outputs.is_empty() {
        h.push_str("<p class=\"note\">No graph output compared.</p></section>\n");
        return;
    }
    h.push_str(
        "<p class=\"note\">Each graph output of the quantized model against FP32's, over all \
         samples.</p>\n<table>\n<tr><th>output</th><th class=\"num\">SQNR (dB)</th>\
         <th class=\"num\">MSE</th><th class=\"num\">cosine</th><th class=\"num\">max |error|</th>\
         <th class=\"num\">values</th></tr>\n",
    );
    for o in &report.outputs {
        let n = &o.noise;
        w(
            h,
            format_args!(
                "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                name(&o.name),
                fmt_db(n.sqnr_db),
                fmt_sig(n.mse),
                fmt_fixed(n.cosine, 6),
                fmt_sig(n.max_abs),
                n.count
            ),
        );
    }
    h.push_str("</table></section>\n");
}

/// The SQNR chart's geometry (pixels; the SVG is drawn 1:1).
const SQNR_W: f64 = 1100.0;
const SQNR_PLOT_H: f64 = 260.0;
const SQNR_LEFT: f64 = 52.0;
const SQNR_RIGHT: f64 = 12.0;
const SQNR_BOTTOM: f64 = 42.0;
const LANE_H: f64 = 15.0;

fn sqnr_section(h: &mut String, report: &CompareReport, acts: &[&ActivationNoise]) {
    h.push_str("<section id=\"sqnr\"><h2>Per-layer SQNR</h2>\n");
    if acts.is_empty() {
        h.push_str("<p class=\"note\">No quantized activation.</p></section>\n");
        return;
    }
    h.push_str(
        "<p class=\"note\">Signal-to-quantization-noise ratio of every quantized activation, in \
         graph order; higher is better (each 6 dB is one bit). <b>Accumulated</b>: the whole \
         model quantized, so noise of earlier layers shows here too. <b>Isolated</b>: only this \
         tensor quantized, so a low marker marks a layer that <i>causes</i> the loss.</p>\n",
    );
    let n = acts.len();
    // The ranking's worst layers, in rank order: (rank, index into `acts`).
    let highlighted: Vec<(usize, usize)> = highlighted_layers(report, acts);
    let top = 8.0 + LANE_H * highlighted.len() as f64 + 8.0;
    let default_plot_w = SQNR_W - SQNR_LEFT - SQNR_RIGHT;
    let plot_w = default_plot_w.max(n as f64 * default_plot_w / MAX_LAYERS_AT_DEFAULT_WIDTH as f64);
    let width = SQNR_LEFT + plot_w + SQNR_RIGHT;
    let height = top + SQNR_PLOT_H + SQNR_BOTTOM;
    let pitch = plot_w / n as f64;
    let bar_w = if pitch >= 4.0 { pitch * 0.75 } else { pitch };

    // dB axis over every finite value, always including 0.
    let finite = acts
        .iter()
        .flat_map(|a| [a.accumulated.sqnr_db, a.isolated.sqnr_db])
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    let mut any = false;
    for v in finite {
        lo = lo.min(v);
        hi = hi.max(v);
        any = true;
    }
    if !any || hi - lo < 1.0 {
        hi = lo + 10.0;
    }
    let step = nice_step(hi - lo, 6.0);
    let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let y = |v: f64| top + SQNR_PLOT_H * (hi - v.clamp(lo, hi)) / (hi - lo);
    let x0 = |i: usize| SQNR_LEFT + i as f64 * pitch + (pitch - bar_w) / 2.0;
    let xc = |i: usize| SQNR_LEFT + (i as f64 + 0.5) * pitch;

    w(
        h,
        format_args!(
            "<div class=\"scroll\"><svg id=\"sqnr-chart\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" aria-label=\"SQNR per layer in \
             graph order\" xmlns=\"http://www.w3.org/2000/svg\">\n"
        ),
    );
    // Grid and dB ticks.
    y_grid(h, (lo, hi, step), SQNR_LEFT, plot_w, y);
    w(
        h,
        format_args!(
            "<text class=\"title\" transform=\"translate(14 {:.1}) rotate(-90)\" \
             text-anchor=\"middle\">SQNR (dB)</text>\n",
            top + SQNR_PLOT_H / 2.0
        ),
    );
    // Layer-index ticks.
    let base = top + SQNR_PLOT_H;
    let istep = nice_step(n as f64, (plot_w / 70.0).max(2.0)).max(1.0) as usize;
    let mut i = 0;
    while i < n {
        let tx = xc(i);
        w(
            h,
            format_args!(
                "<line class=\"axis\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\"/>\
                 <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{i}</text>",
                base + 4.0,
                base + 16.0
            ),
        );
        i += istep;
    }
    w(
        h,
        format_args!(
            "\n<text class=\"title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">layer (graph \
             order)</text>\n",
            SQNR_LEFT + plot_w / 2.0,
            base + 34.0
        ),
    );
    // A band behind each highlighted layer, wide enough to see among hundreds of thin bars.
    let band_w = pitch.max(7.0);
    for &(_, i) in &highlighted {
        w(
            h,
            format_args!(
                "<rect class=\"worst-band\" x=\"{:.2}\" y=\"{top:.1}\" width=\"{band_w:.2}\" \
                 height=\"{SQNR_PLOT_H}\"/>\n",
                xc(i) - band_w / 2.0
            ),
        );
    }
    // Bars: accumulated SQNR.
    let zero = y(0.0f64.clamp(lo, hi));
    let is_worst = |i: usize| highlighted.iter().any(|&(_, j)| j == i);
    for (i, a) in acts.iter().enumerate() {
        let v = a.accumulated.sqnr_db;
        let mut class = String::from("bar acc");
        if is_worst(i) {
            class.push_str(" worst");
        }
        let (y1, y2) = if v.is_nan() {
            class.push_str(" nan");
            (zero, zero)
        } else {
            if v.is_infinite() {
                class.push_str(" inf");
            }
            let vy = y(v);
            (vy.min(zero), vy.max(zero))
        };
        w(
            h,
            format_args!(
                "<rect class=\"{class}\" x=\"{:.2}\" y=\"{y1:.1}\" width=\"{bar_w:.2}\" \
                 height=\"{:.1}\"><title>#{} {} ({}): accumulated {} dB, isolated {} dB, clip \
                 {} %</title></rect>\n",
                x0(i),
                y2 - y1,
                a.order,
                esc(&a.tensor),
                esc(&a.producer_op),
                fmt_db(v),
                fmt_db(a.isolated.sqnr_db),
                fmt_fixed(100.0 * a.clip_rate, 2)
            ),
        );
    }
    // Markers: isolated SQNR.
    let r = (pitch * 0.35).clamp(1.5, 4.0);
    for (i, a) in acts.iter().enumerate() {
        let v = a.isolated.sqnr_db;
        if v.is_nan() {
            continue;
        }
        let class = if v.is_infinite() { "mark iso inf" } else { "mark iso" };
        let (cx, cy) = (xc(i), y(v));
        if pitch >= 5.0 {
            w(
                h,
                format_args!(
                    "<circle class=\"{class}\" cx=\"{cx:.2}\" cy=\"{cy:.1}\" r=\"{r:.1}\"/>\n"
                ),
            );
        } else {
            w(
                h,
                format_args!(
                    "<rect class=\"{class}\" x=\"{:.2}\" y=\"{:.1}\" width=\"{pitch:.2}\" \
                     height=\"2.5\"/>\n",
                    xc(i) - pitch / 2.0,
                    cy - 1.25
                ),
            );
        }
    }
    // Labels of the worst layers, one lane each above the plot.
    for (lane, &(rank, i)) in highlighted.iter().enumerate() {
        let a = acts[i];
        let ly = 8.0 + LANE_H * (lane as f64 + 1.0) - 3.0;
        let bx = xc(i);
        let bar_top = y(a.accumulated.sqnr_db.max(a.isolated.sqnr_db)).min(zero);
        let (anchor, tx) =
            if bx < SQNR_LEFT + plot_w / 2.0 { ("start", bx + 3.0) } else { ("end", bx - 3.0) };
        let r = &report.ranking[rank];
        w(
            h,
            format_args!(
                "<line class=\"leader\" x1=\"{bx:.1}\" x2=\"{bx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
                 <text class=\"label\" x=\"{tx:.1}\" y=\"{ly:.1}\" text-anchor=\"{anchor}\">#{} {} \
                 · {} dB</text>\n",
                ly - 9.0,
                (bar_top - 2.0).max(ly + 2.0),
                rank + 1,
                esc(&shorten(if a.tensor == r.tensor { &a.tensor } else { &r.node }, 48)),
                fmt_db(r.sqnr_db)
            ),
        );
    }
    w(
        h,
        format_args!(
            "<line class=\"axis\" x1=\"{SQNR_LEFT}\" x2=\"{:.1}\" y1=\"{zero:.1}\" y2=\"{zero:.1}\"/>\
             <line class=\"axis\" x1=\"{SQNR_LEFT}\" x2=\"{SQNR_LEFT}\" y1=\"{top:.1}\" y2=\"{base:.1}\"/>\n",
            SQNR_LEFT + plot_w
        ),
    );
    h.push_str(
        "</svg></div>\n<div class=\"legend\"><span><i class=\"sw acc\"></i>accumulated</span>\
        <span><i class=\"sw iso\"></i>isolated</span><span><i class=\"sw worst\"></i>worst layers \
        of the ranking</span><span><i class=\"sw inf\"></i>∞ (identical to FP32)</span></div>\n",
    );
    let barless: Vec<String> = (0..report.ranking.len().min(HIGHLIGHTED))
        .filter(|&k| !highlighted.iter().any(|&(rank, _)| rank == k))
        .map(|k| {
            let r = &report.ranking[k];
            format!(
                "#{} <code>{}</code> ({}, {} dB)",
                k + 1,
                name(&r.node),
                esc(&r.op_type),
                fmt_db(r.sqnr_db)
            )
        })
        .collect();
    if !barless.is_empty() {
        w(
            h,
            format_args!(
                "<p class=\"note\">Worst layers without a bar here (ranked by a weight or an \
                 input, their node's output is not quantized): {}.</p>\n",
                barless.join(", ")
            ),
        );
    }
    h.push_str("</section>\n");
}

const HIST_W: f64 = 360.0;
const HIST_H: f64 = 240.0;
const HIST_LEFT: f64 = 44.0;
const HIST_RIGHT: f64 = 12.0;
const HIST_TOP: f64 = 30.0;
const HIST_BOTTOM: f64 = 34.0;
/// Bars per histogram at most (adjacent bins are merged beyond).
const HIST_MAX_BARS: usize = 160;

fn histogram_section(
    h: &mut String,
    report: &CompareReport,
    acts: &[&ActivationNoise],
    worst: &[usize],
) {
    h.push_str("<section id=\"histograms\"><h2>Worst activations</h2>\n");
    if worst.is_empty() {
        h.push_str("<p class=\"note\">No activation histogram recorded.</p></section>\n");
        return;
    }
    h.push_str(
        "<p class=\"note\">FP32 values of the activations that lose the most, with the range \
         their quantization can represent: values beyond the lines saturate (clip), values inside \
         are rounded to one of the type's levels.</p>\n<div class=\"hists\">\n",
    );
    for (k, &i) in worst.iter().enumerate() {
        let a = acts[i];
        let rank = report.ranking.iter().position(|r| r.tensor == a.tensor);
        w(
            h,
            format_args!(
                "<figure><figcaption>{}<code>{}</code> ({}{})<br>{} · scale {} · zero point {} · \
                 clipped {} % · SQNR {} / {} dB</figcaption>\n",
                rank.map_or(String::new(), |r| format!("#{} ", r + 1)),
                name(&a.tensor),
                esc(&a.producer_op),
                if a.producer.is_empty() {
                    String::new()
                } else {
                    format!(" {}", name(&a.producer))
                },
                esc(&a.value_type),
                fmt_sig(a.scale as f64),
                a.zero_point,
                fmt_fixed(100.0 * a.clip_rate, 3),
                fmt_db(a.accumulated.sqnr_db),
                fmt_db(a.isolated.sqnr_db)
            ),
        );
        histogram_svg(h, &format!("hist-{}", k + 1), a);
        h.push_str("</figure>\n");
    }
    h.push_str(
        "</div>\n<div class=\"legend\"><span><i class=\"sw hist\"></i>FP32 values</span>\
         <span><i class=\"sw clip\"></i>clip range [(qmin − zp)·s, (qmax − zp)·s]</span>\
         <span>SQNR: accumulated / isolated</span></div>\n</section>\n",
    );
}

fn histogram_svg(h: &mut String, id: &str, a: &ActivationNoise) {
    let hist = &a.histogram;
    let bins = merged_bins(hist);
    let (lo, hi) = (hist.lo as f64, hist.hi as f64);
    let (data_lo, data_hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let span = data_hi - data_lo;
    let clip = clip_range(a.scale, a.zero_point, &a.value_type);
    let (mut d_lo, mut d_hi) = (data_lo, data_hi);
    if let Some((c_lo, c_hi)) = clip {
        d_lo = d_lo.min(c_lo).max(data_lo - 0.3 * span);
        d_hi = d_hi.max(c_hi).min(data_hi + 0.3 * span);
    }
    let plot_w = HIST_W - HIST_LEFT - HIST_RIGHT;
    let plot_h = HIST_H - HIST_TOP - HIST_BOTTOM;
    let base = HIST_TOP + plot_h;
    let x = |v: f64| HIST_LEFT + plot_w * (v - d_lo) / (d_hi - d_lo);

    let max_count = bins.iter().map(|b| b.2).max().unwrap_or(0);
    let mut nonzero: Vec<u64> = bins.iter().map(|b| b.2).filter(|&c| c > 0).collect();
    nonzero.sort_unstable();
    let median = nonzero.get(nonzero.len() / 2).copied().unwrap_or(0);
    let log = max_count >= 50 * median.max(1);
    let top_count = if log {
        10f64.powi((max_count.max(1) as f64).log10().ceil() as i32).max(10.0)
    } else {
        let s = nice_step(max_count.max(1) as f64, 4.0);
        ((max_count as f64 / s).ceil() * s).max(1.0)
    };
    let y = |c: f64| {
        let f = if log { (1.0 + c).log10() / (1.0 + top_count).log10() } else { c / top_count };
        base - plot_h * f.clamp(0.0, 1.0)
    };

    w(
        h,
        format_args!(
            "<svg id=\"{id}\" class=\"hist\" width=\"{HIST_W}\" height=\"{HIST_H}\" viewBox=\"0 0 \
             {HIST_W} {HIST_H}\" role=\"img\" aria-label=\"histogram of {}\" \
             xmlns=\"http://www.w3.org/2000/svg\">\n",
            esc(&a.tensor)
        ),
    );
    // Count ticks.
    h.push_str("<g class=\"grid\">");
    let mut ticks = Vec::new();
    if log {
        let mut t = 1.0;
        while t <= top_count * 1.000_001 {
            ticks.push(t);
            t *= 10.0;
        }
    } else {
        let s = nice_step(top_count, 4.0);
        let mut t = 0.0;
        while t <= top_count * 1.000_001 {
            ticks.push(t);
            t += s;
        }
    }
    for t in ticks {
        let ty = y(t);
        w(
            h,
            format_args!(
                "<line x1=\"{HIST_LEFT}\" x2=\"{:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                HIST_LEFT + plot_w,
                HIST_LEFT - 5.0,
                ty + 4.0,
                fmt_count(t)
            ),
        );
    }
    h.push_str("</g>\n");
    w(
        h,
        format_args!(
            "<text class=\"title\" transform=\"translate(11 {:.1}) rotate(-90)\" \
             text-anchor=\"middle\">{}</text>\n",
            HIST_TOP + plot_h / 2.0,
            if log { "count (log)" } else { "count" }
        ),
    );
    // Value ticks.
    let vstep = nice_step(d_hi - d_lo, 5.0);
    let decimals = step_decimals(vstep);
    let mut t = (d_lo / vstep).ceil() * vstep;
    while t <= d_hi + vstep * 1e-6 {
        let tx = x(t);
        w(
            h,
            format_args!(
                "<line class=\"axis\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\"/>\
                 <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                base + 4.0,
                base + 16.0,
                fmt_fixed(t + 0.0, decimals)
            ),
        );
        t += vstep;
    }
    // Saturated zones behind the bars.
    if let Some((c_lo, c_hi)) = clip {
        if c_lo > d_lo {
            w(
                h,
                format_args!(
                    "\n<rect class=\"clip-zone\" x=\"{HIST_LEFT}\" y=\"{HIST_TOP}\" width=\"{:.1}\" \
                     height=\"{plot_h}\"/>",
                    x(c_lo.min(d_hi)) - HIST_LEFT
                ),
            );
        }
        if c_hi < d_hi {
            let cx = x(c_hi.max(d_lo));
            w(
                h,
                format_args!(
                    "\n<rect class=\"clip-zone\" x=\"{cx:.1}\" y=\"{HIST_TOP}\" width=\"{:.1}\" \
                     height=\"{plot_h}\"/>",
                    HIST_LEFT + plot_w - cx
                ),
            );
        }
    }
    h.push('\n');
    let bin_w = (data_hi - data_lo) / hist.counts.len().max(1) as f64;
    for &(b0, b1, c) in &bins {
        if c == 0 {
            continue;
        }
        let (v0, v1) = if hi > lo {
            (lo + b0 as f64 * bin_w, lo + b1 as f64 * bin_w)
        } else {
            (lo - 0.02 * span, lo + 0.02 * span)
        };
        let (x1, x2) = (x(v0), x(v1));
        let ty = y(c as f64);
        w(
            h,
            format_args!(
                "<rect class=\"hist-bar\" x=\"{x1:.2}\" y=\"{ty:.1}\" width=\"{:.2}\" \
                 height=\"{:.1}\"/>\n",
                (x2 - x1).max(1.0),
                base - ty
            ),
        );
    }
    // Clip lines, labelled above the plot.
    match clip {
        Some((c_lo, c_hi)) => {
            for (k, (v, name)) in [(c_lo, "qmin"), (c_hi, "qmax")].into_iter().enumerate() {
                let inside = v >= d_lo && v <= d_hi;
                let cx = x(v.clamp(d_lo, d_hi));
                let (anchor, tx) = if k == 0 { ("start", cx + 3.0) } else { ("end", cx - 3.0) };
                let arrow = match (inside, k) {
                    (true, _) => "",
                    (false, 0) => "◂ ",
                    (false, _) => " ▸",
                };
                let (pre, post) = if k == 0 { (arrow, "") } else { ("", arrow) };
                w(
                    h,
                    format_args!(
                        "<line class=\"clip-line\" x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" \
                         y2=\"{base:.1}\"/><text class=\"label\" x=\"{tx:.1}\" y=\"{:.1}\" \
                         text-anchor=\"{anchor}\">{pre}{name} {}{post}</text>\n",
                        HIST_TOP - 4.0 - 12.0 * (1 - k) as f64,
                        HIST_TOP - 6.0 - 12.0 * (1 - k) as f64,
                        fmt_sig(v)
                    ),
                );
            }
        }
        None => w(
            h,
            format_args!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">clip range unknown for {}\
                 </text>\n",
                HIST_LEFT + plot_w / 2.0,
                HIST_TOP - 8.0,
                esc(&a.value_type)
            ),
        ),
    }
    w(
        h,
        format_args!(
            "<line class=\"axis\" x1=\"{HIST_LEFT}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\"/>\
             <text class=\"title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">FP32 value</text>\n\
             </svg>\n",
            HIST_LEFT + plot_w,
            HIST_LEFT + plot_w / 2.0,
            HIST_H - 4.0
        ),
    );
}

const WR_W: f64 = 1100.0;
const WR_PLOT_H: f64 = 220.0;
const WR_LEFT: f64 = 60.0;
const WR_RIGHT: f64 = 12.0;
const WR_TOP: f64 = 14.0;
const WR_BOTTOM: f64 = 42.0;

fn weight_section(h: &mut String, report: &CompareReport) {
    h.push_str("<section id=\"weights\"><h2>Per-channel weight ranges</h2>\n");
    let Some((weight, ranked)) = worst_weight(report) else {
        h.push_str("<p class=\"note\">No per-channel weight ranges recorded.</p></section>\n");
        return;
    };
    let n = weight.channel_min.len().min(weight.channel_max.len());
    let depthwise = weight.op_type == "Conv" && weight.group > 1 && weight.group as usize == n;
    let granularity = match weight.axis {
        None => "per-tensor".to_string(),
        Some(axis) => format!("per-channel (axis {axis})"),
    };
    let ranges: Vec<f64> =
        (0..n).map(|c| weight.channel_max[c] as f64 - weight.channel_min[c] as f64).collect();
    let (g_min, g_max) = (0..n).fold((0.0f64, 0.0f64), |(a, b), c| {
        (a.min(weight.channel_min[c] as f64), b.max(weight.channel_max[c] as f64))
    });
    let mut sorted: Vec<f64> = ranges.iter().copied().filter(|r| r.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let widest = sorted.last().copied().unwrap_or(0.0);
    let narrowest = sorted.iter().copied().find(|&r| r > 0.0).unwrap_or(0.0);
    let mut facts = vec![
        format!(
            "<code>{}</code> of {} <code>{}</code>{}",
            name(&weight.weight),
            esc(&weight.op_type),
            name(&weight.node),
            if depthwise { " (depthwise)".to_string() } else { String::new() }
        ),
        format!("{n} channels, {} {}", esc(&weight.value_type), granularity),
        format!("weight SQNR {} dB", fmt_db(weight.noise.sqnr_db)),
    ];
    if let Some(r) = ranked {
        facts.push(format!("ranked #{}", r + 1));
    }
    if narrowest > 0.0 {
        facts.push(format!("widest / narrowest channel range ×{}", fmt_sig(widest / narrowest)));
    }
    if weight.axis.is_none() && g_max > g_min {
        facts.push(format!(
            "the median channel spans {} % of the shared range",
            fmt_fixed(100.0 * median / (g_max - g_min), 1)
        ));
    }
    w(h, format_args!("<p class=\"note\">{}</p>\n", facts.join(" · ")));
    if n == 0 {
        h.push_str("</section>\n");
        return;
    }

    let default_plot_w = WR_W - WR_LEFT - WR_RIGHT;
    let plot_w = default_plot_w.max(n as f64 * 1.5);
    let width = WR_LEFT + plot_w + WR_RIGHT;
    let height = WR_TOP + WR_PLOT_H + WR_BOTTOM;
    let pitch = plot_w / n as f64;
    let bar_w = if pitch >= 4.0 { pitch * 0.7 } else { pitch };
    let (mut lo, mut hi) = (g_min, g_max);
    let drawable = hi > lo && lo.is_finite() && hi.is_finite();
    if !drawable {
        (lo, hi) = (-1.0, 1.0);
    }
    let step = nice_step(hi - lo, 6.0);
    let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let y = |v: f64| WR_TOP + WR_PLOT_H * (hi - v.clamp(lo, hi)) / (hi - lo);
    let base = WR_TOP + WR_PLOT_H;
    w(
        h,
        format_args!(
            "<div class=\"scroll\"><svg id=\"weight-ranges\" width=\"{width:.0}\" \
             height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" \
             aria-label=\"weight range per output channel of {}\" \
             xmlns=\"http://www.w3.org/2000/svg\">\n",
            esc(&weight.weight)
        ),
    );
    y_grid(h, (lo, hi, step), WR_LEFT, plot_w, y);
    let istep = nice_step(n as f64, (plot_w / 70.0).max(2.0)).max(1.0) as usize;
    let mut c = 0;
    while c < n {
        let tx = WR_LEFT + (c as f64 + 0.5) * pitch;
        w(
            h,
            format_args!(
                "<line class=\"axis\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\"/>\
                 <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{c}</text>",
                base + 4.0,
                base + 16.0
            ),
        );
        c += istep;
    }
    w(
        h,
        format_args!(
            "\n<text class=\"title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">output channel\
             </text><text class=\"title\" transform=\"translate(14 {:.1}) rotate(-90)\" \
             text-anchor=\"middle\">weight</text>\n",
            WR_LEFT + plot_w / 2.0,
            base + 34.0,
            WR_TOP + WR_PLOT_H / 2.0
        ),
    );
    for c in 0..n {
        let (mn, mx) = (weight.channel_min[c] as f64, weight.channel_max[c] as f64);
        let (y1, y2) = (y(mx), y(mn));
        w(
            h,
            format_args!(
                "<rect class=\"range-bar\" x=\"{:.2}\" y=\"{y1:.1}\" width=\"{bar_w:.2}\" \
                 height=\"{:.1}\"><title>channel {c}: {} .. {}</title></rect>\n",
                WR_LEFT + c as f64 * pitch + (pitch - bar_w) / 2.0,
                (y2 - y1).max(1.0),
                fmt_sig(mn),
                fmt_sig(mx)
            ),
        );
    }
    let zy = y(0.0);
    w(
        h,
        format_args!(
            "<line class=\"zero\" x1=\"{WR_LEFT}\" x2=\"{:.1}\" y1=\"{zy:.1}\" y2=\"{zy:.1}\"/>\n",
            WR_LEFT + plot_w
        ),
    );
    if weight.axis.is_none() {
        for v in [g_min, g_max] {
            let ly = y(v);
            w(
                h,
                format_args!(
                    "<line class=\"shared-range\" x1=\"{WR_LEFT}\" x2=\"{:.1}\" y1=\"{ly:.1}\" \
                     y2=\"{ly:.1}\"/>\n",
                    WR_LEFT + plot_w
                ),
            );
        }
    }
    w(
        h,
        format_args!(
            "<line class=\"axis\" x1=\"{WR_LEFT}\" x2=\"{WR_LEFT}\" y1=\"{WR_TOP}\" y2=\"{base:.1}\"/>\
             </svg></div>\n<div class=\"legend\"><span><i class=\"sw range\"></i>min..max of the \
             FP32 weights per channel</span>{}</div>\n</section>\n",
            if weight.axis.is_none() {
                "<span><i class=\"sw shared\"></i>the range all channels share (per-tensor \
                 quantization)</span>"
            } else {
                ""
            }
        ),
    );
}

/// Rows of the ranking shown before the rest is folded away.
const RANKING_ROWS: usize = 25;

fn ranking_section(h: &mut String, report: &CompareReport, acts: &[&ActivationNoise]) {
    h.push_str("<section id=\"ranking-section\"><h2>Worst layers</h2>\n");
    if report.ranking.is_empty() {
        h.push_str("<p class=\"note\">No ranking.</p>\n");
    } else {
        h.push_str(
            "<p class=\"note\">Ranked by the isolated SQNR of what each layer adds (the lower of \
             its activation's and its weight's), worst first.</p>\n<table id=\"ranking\">\n",
        );
        let head = "<tr><th class=\"num\">#</th><th>node</th><th>op</th><th>tensor</th>\
                    <th class=\"num\">SQNR (dB)</th><th class=\"num\">clipped</th><th>hint</th></tr>\n";
        h.push_str(head);
        for (k, r) in report.ranking.iter().enumerate() {
            if k == RANKING_ROWS {
                w(
                    h,
                    format_args!(
                        "</table>\n<details><summary>{} more</summary>\n<table>\n{head}",
                        report.ranking.len() - RANKING_ROWS
                    ),
                );
            }
            ranking_row(h, k, r, acts);
        }
        h.push_str("</table>\n");
        if report.ranking.len() > RANKING_ROWS {
            h.push_str("</details>\n");
        }
    }
    if !acts.is_empty() {
        w(
            h,
            format_args!(
                "<details id=\"all-activations\"><summary>All {} activations</summary>\n<table>\n\
                 <tr><th class=\"num\">#</th><th>tensor</th><th>producer</th><th>type</th>\
                 <th class=\"num\">scale</th><th class=\"num\">zp</th>\
                 <th class=\"num\">clipped</th><th class=\"num\">acc. SQNR</th>\
                 <th class=\"num\">iso. SQNR</th><th class=\"num\">acc. cosine</th></tr>\n",
                acts.len()
            ),
        );
        for a in acts {
            w(
                h,
                format_args!(
                    "<tr><td class=\"num\">{}</td><td><code>{}</code></td><td>{} <code>{}</code>\
                     </td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{} %</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{}</td></tr>\n",
                    a.order,
                    name(&a.tensor),
                    esc(&a.producer_op),
                    name(&a.producer),
                    esc(&a.value_type),
                    fmt_sig(a.scale as f64),
                    a.zero_point,
                    fmt_fixed(100.0 * a.clip_rate, 3),
                    fmt_db(a.accumulated.sqnr_db),
                    fmt_db(a.isolated.sqnr_db),
                    fmt_fixed(a.accumulated.cosine, 6)
                ),
            );
        }
        h.push_str("</table></details>\n");
    }
    if !report.weights.is_empty() {
        w(
            h,
            format_args!(
                "<details id=\"all-weights\"><summary>All {} weights</summary>\n<table>\n\
                 <tr><th>weight</th><th>node</th><th>type</th><th>granularity</th>\
                 <th class=\"num\">group</th><th class=\"num\">SQNR (dB)</th>\
                 <th class=\"num\">max |error|</th></tr>\n",
                report.weights.len()
            ),
        );
        for wt in &report.weights {
            w(
                h,
                format_args!(
                    "<tr><td><code>{}</code></td><td>{} <code>{}</code></td><td>{}</td><td>{}</td>\
                     <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     </tr>\n",
                    name(&wt.weight),
                    esc(&wt.op_type),
                    name(&wt.node),
                    esc(&wt.value_type),
                    wt.axis.map_or("per-tensor".to_string(), |a| format!("per-channel, axis {a}")),
                    wt.group,
                    fmt_db(wt.noise.sqnr_db),
                    fmt_sig(wt.noise.max_abs)
                ),
            );
        }
        h.push_str("</table></details>\n");
    }
    h.push_str("</section>\n");
}

fn ranking_row(h: &mut String, k: usize, r: &RankedLayer, acts: &[&ActivationNoise]) {
    let clip = acts
        .iter()
        .find(|a| a.tensor == r.tensor)
        .map_or(String::new(), |a| format!("{} %", fmt_fixed(100.0 * a.clip_rate, 3)));
    w(
        h,
        format_args!(
            "<tr{}><td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td>\
             <td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{clip}</td>\
             <td>{}</td></tr>\n",
            if k < HIGHLIGHTED { " class=\"worst\"" } else { "" },
            k + 1,
            name(&r.node),
            esc(&r.op_type),
            name(&r.tensor),
            fmt_db(r.sqnr_db),
            esc(&r.hint)
        ),
    );
}

// --- choosing what to draw -----------------------------------------------------------------

/// The activation (index into `acts`) a ranked layer points at: its tensor, else the first
/// activation its node produces.
fn ranked_activation(r: &RankedLayer, acts: &[&ActivationNoise]) -> Option<usize> {
    acts.iter()
        .position(|a| a.tensor == r.tensor)
        .or_else(|| acts.iter().position(|a| !r.node.is_empty() && a.producer == r.node))
}

/// The first [`HIGHLIGHTED`] layers of the ranking that have a bar in the SQNR chart, as
/// (rank, activation index) pairs, each activation once. A layer ranked by its weight whose
/// node produces no quantized activation has none.
fn highlighted_layers(report: &CompareReport, acts: &[&ActivationNoise]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (rank, r) in report.ranking.iter().enumerate().take(HIGHLIGHTED) {
        if let Some(i) = ranked_activation(r, acts) {
            if !out.iter().any(|&(_, j)| j == i) {
                out.push((rank, i));
            }
        }
    }
    out
}

/// The activations (indices into `acts`) whose histograms are drawn: the ranking's first, then
/// the lowest isolated SQNR; only those with a histogram.
fn worst_activations(report: &CompareReport, acts: &[&ActivationNoise]) -> Vec<usize> {
    let has_hist = |i: usize| acts[i].histogram.counts.iter().any(|&c| c > 0);
    let mut out = Vec::new();
    for r in &report.ranking {
        if let Some(i) = ranked_activation(r, acts) {
            if has_hist(i) && !out.contains(&i) && out.len() < HISTOGRAMS {
                out.push(i);
            }
        }
    }
    let mut rest: Vec<usize> =
        (0..acts.len()).filter(|&i| !out.contains(&i) && has_hist(i)).collect();
    rest.sort_by(|&a, &b| {
        let (x, y) = (acts[a].isolated.sqnr_db, acts[b].isolated.sqnr_db);
        // NaN last.
        x.is_nan().cmp(&y.is_nan()).then(x.total_cmp(&y))
    });
    out.extend(rest.into_iter().take(HISTOGRAMS - out.len()));
    out
}

/// The weight whose channel ranges are drawn, and its rank: the ranking's worst Conv or Gemm
/// (ConvTranspose, MatMul next) with channel ranges; else the noisiest weight that has them.
fn worst_weight(report: &CompareReport) -> Option<(&WeightNoise, Option<usize>)> {
    let has_ranges = |w: &&WeightNoise| !w.channel_min.is_empty() && !w.channel_max.is_empty();
    for ops in [&["Conv", "Gemm"][..], &["ConvTranspose", "MatMul"][..]] {
        for (rank, r) in report.ranking.iter().enumerate() {
            if !ops.contains(&r.op_type.as_str()) {
                continue;
            }
            if let Some(w) = report.weights.iter().filter(has_ranges).find(|w| w.node == r.node) {
                return Some((w, Some(rank)));
            }
        }
    }
    report
        .weights
        .iter()
        .filter(has_ranges)
        .min_by(|a, b| {
            let (x, y) = (a.noise.sqnr_db, b.noise.sqnr_db);
            x.is_nan().cmp(&y.is_nan()).then(x.total_cmp(&y))
        })
        .map(|w| (w, None))
}

/// `(first bin, end bin, count)` groups of at most [`HIST_MAX_BARS`] bars.
fn merged_bins(hist: &Histogram) -> Vec<(usize, usize, u64)> {
    let n = hist.counts.len();
    let f = n.div_ceil(HIST_MAX_BARS).max(1);
    (0..n)
        .step_by(f)
        .map(|b| (b, (b + f).min(n), hist.counts[b..(b + f).min(n)].iter().sum()))
        .collect()
}

/// The real range a quantized tensor can represent: `[(qmin − zp)·s, (qmax − zp)·s]` over the
/// storage type's full range (what QuantizeLinear saturates to); float8 types `±max·s`.
/// `None` for an unknown type or a scale that is not positive and finite.
pub fn clip_range(scale: f32, zero_point: i32, value_type: &str) -> Option<(f64, f64)> {
    let s = scale as f64;
    if !(s.is_finite() && s > 0.0) {
        return None;
    }
    let t = value_type.trim().to_ascii_lowercase();
    let t = t.strip_prefix("tensor(").and_then(|t| t.strip_suffix(')')).unwrap_or(&t);
    let (qmin, qmax): (f64, f64) = match t {
        "int8" | "i8" | "qint8" => (-128.0, 127.0),
        "uint8" | "u8" | "quint8" => (0.0, 255.0),
        "int16" | "i16" | "qint16" => (-32768.0, 32767.0),
        "uint16" | "u16" | "quint16" => (0.0, 65535.0),
        "int4" | "i4" => (-8.0, 7.0),
        "uint4" | "u4" => (0.0, 15.0),
        "float8e4m3fn" | "f8e4m3fn" | "fp8" | "float8" => (-448.0, 448.0),
        "float8e4m3fnuz" => (-240.0, 240.0),
        "float8e5m2" | "float8e5m2fnuz" | "f8e5m2" => (-57344.0, 57344.0),
        _ => return None,
    };
    let zp = if t.contains("float") || t.starts_with("f8") || t == "fp8" {
        0.0
    } else {
        zero_point as f64
    };
    Some(((qmin - zp) * s, (qmax - zp) * s))
}

// --- formatting ----------------------------------------------------------------------------

fn w(h: &mut String, args: std::fmt::Arguments<'_>) {
    // Writing to a String cannot fail.
    let _ = h.write_fmt(args);
}

/// `s` with `& < > " '` escaped, safe in HTML text, attributes and inline SVG.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn esc(s: &str) -> String {
    escape_html(s)
}

/// A tensor or node name for HTML text: escaped, with line-break opportunities after each '/'
/// so long paths wrap between their parts (not for SVG, which has no `<wbr>`).
fn name(s: &str) -> String {
    escape_html(s).replace('/', "/<wbr>")
}

/// At most `max` characters: the start and the end of a long name (the end of a tensor name
/// says the most), joined by `…`.
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head = max / 3;
    let tail = max - head - 1;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

fn fmt_db(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v == f64::INFINITY {
        "∞".into()
    } else if v == f64::NEG_INFINITY {
        "−∞".into()
    } else {
        fmt_fixed(v, 1)
    }
}

fn fmt_fixed(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        return "–".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "∞".into() } else { "−∞".into() };
    }
    let s = format!("{v:.decimals$}");
    // A rounded negative zero prints as "-0.0"; a minus sign reads better than a hyphen.
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        Some(rest) => format!("−{rest}"),
        None => s,
    }
}

fn signed(v: f64, decimals: usize) -> String {
    let s = fmt_fixed(v, decimals);
    if v.is_finite() && !s.starts_with('−') && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        format!("+{s}")
    } else {
        s
    }
}

/// Four significant digits, scientific outside 1e-3..1e5.
fn fmt_sig(v: f64) -> String {
    if !v.is_finite() {
        return fmt_fixed(v, 0);
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-3..5).contains(&mag) {
        let s = format!("{v:.3e}");
        return s.replace('-', "−");
    }
    fmt_fixed(v, (3 - mag).clamp(0, 6) as usize)
}

fn fmt_count(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", v / 1e9),
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

fn fmt_bytes(b: u64) -> String {
    let v = b as f64;
    if v >= 1e9 {
        format!("{:.2} GB", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB", v / 1e3)
    } else {
        format!("{b} B")
    }
}

/// A 1, 2 or 5 × 10^k step giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / target.max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Decimals that print every multiple of `step` exactly.
/// Horizontal grid lines across a plot `plot_w` wide starting at `left`, one per `step` from
/// `lo` to `hi`, each labelled with its value on the left (`y` maps a value to its row).
fn y_grid(
    h: &mut String,
    (lo, hi, step): (f64, f64, f64),
    left: f64,
    plot_w: f64,
    y: impl Fn(f64) -> f64,
) {
    h.push_str("<g class=\"grid\">");
    let decimals = step_decimals(step);
    let mut t = lo;
    while t <= hi + step * 1e-6 {
        let ty = y(t);
        w(
            h,
            format_args!(
                "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left + plot_w,
                left - 6.0,
                ty + 4.0,
                // + 0.0 turns a -0 tick into 0.
                fmt_fixed(t + 0.0, decimals)
            ),
        );
        t += step;
    }
    h.push_str("</g>\n");
}

fn step_decimals(step: f64) -> usize {
    // The fewest decimals that print every multiple of the step exactly (0.5 needs one, 2.5
    // one, 0.25 two), at most 6.
    (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::TensorNoise;
    use crate::metrics::Noise;

    fn noise(sqnr_db: f64) -> Noise {
        Noise { sqnr_db, mse: 1e-4, cosine: 0.999, max_abs: 0.05, count: 1000 }
    }

    /// `n` layers of a small convnet, the third worst-first in the ranking, plus one layer
    /// identical to FP32 (infinite SQNR) and a tensor name that needs escaping.
    fn synthetic(n: usize) -> CompareReport {
        let mut activations = Vec::new();
        let mut weights = Vec::new();
        for i in 0..n {
            let acc = 40.0 - 0.6 * i as f64 + 5.0 * ((i * 7) % 5) as f64;
            let iso = acc + 4.0 + (i % 3) as f64;
            let counts: Vec<u64> = (0..128)
                .map(|b| {
                    (10_000.0 * (-((b as f64 - 40.0) / 9.0).powi(2)).exp()) as u64
                        + (b % 7 == 0) as u64
                })
                .collect();
            activations.push(ActivationNoise {
                // Reverse insertion order: the report must sort by `order`.
                tensor: format!("/features.{}/conv/Conv_output_0", n - 1 - i),
                producer: format!("/features.{}/conv/Conv", n - 1 - i),
                producer_op: "Conv".into(),
                order: 2 * (n - 1 - i),
                scale: 0.02,
                zero_point: 100,
                value_type: "uint8".into(),
                accumulated: noise(acc),
                isolated: noise(iso),
                clip_rate: 0.001 * (i % 4) as f64,
                min: -2.5,
                max: 4.0,
                histogram: Histogram { lo: -2.5, hi: 4.0, counts },
            });
            weights.push(WeightNoise {
                weight: format!("features.{}.weight", n - 1 - i),
                node: format!("/features.{}/conv/Conv", n - 1 - i),
                op_type: "Conv".into(),
                group: if i % 2 == 0 { 32 } else { 1 },
                axis: if i % 2 == 0 { None } else { Some(0) },
                value_type: "int8".into(),
                noise: noise(30.0 + i as f64),
                channel_min: (0..32).map(|c| -0.1 - 0.05 * (c % 9) as f32).collect(),
                channel_max: (0..32).map(|c| 0.1 + 0.08 * (c % 5) as f32).collect(),
            });
        }
        // One identical layer, one name with markup in it.
        activations[3].accumulated.sqnr_db = f64::INFINITY;
        activations[3].isolated.sqnr_db = f64::INFINITY;
        activations[5].tensor = "a<b>&\"c\"/x".into();
        let ranking = [
            (n - 1, "depthwise conv with per-tensor weights: use per-channel"),
            (5, "activation <outliers>: try percentile"),
            (n - 4, "try entropy"),
        ]
        .iter()
        .map(|&(i, hint)| RankedLayer {
            node: activations[i].producer.clone(),
            op_type: "Conv".into(),
            tensor: activations[i].tensor.clone(),
            sqnr_db: activations[i].isolated.sqnr_db,
            hint: hint.into(),
        })
        .collect();
        CompareReport {
            format: "lowbit-compare/1".into(),
            fp32_model: "mobilenet.onnx".into(),
            quant_model: "mobilenet.int8.onnx".into(),
            samples: 16,
            outputs: vec![TensorNoise { name: "logits".into(), noise: noise(18.5) }],
            activations,
            weights,
            ranking,
        }
    }

    fn summary() -> ReportSummary {
        ReportSummary {
            fp32_model: "mobilenet.onnx".into(),
            quant_model: "mobilenet.int8.onnx".into(),
            fp32_bytes: 14_000_000,
            quant_bytes: 3_600_000,
            metric: Some(SummaryMetric {
                name: "top-1 %".into(),
                value: BeforeAfter { fp32: 71.8, quant: 70.9 },
            }),
            latency_ms: Some(BeforeAfter { fp32: 12.0, quant: 5.5 }),
        }
    }

    fn count(h: &str, needle: &str) -> usize {
        h.matches(needle).count()
    }

    /// The text of the element with `id`, up to its closing `</svg>`.
    fn svg<'a>(h: &'a str, id: &str) -> &'a str {
        let start = h.find(&format!("<svg id=\"{id}\"")).unwrap_or_else(|| panic!("no {id}"));
        let end = start + h[start..].find("</svg>").unwrap();
        &h[start..end]
    }

    #[test]
    fn every_chart_and_table_is_present() {
        let h = render_html(&synthetic(30), Some(&summary()));
        assert!(h.starts_with("<!DOCTYPE html>") && h.ends_with("</html>\n"));
        for id in [
            "summary",
            "outputs",
            "sqnr-chart",
            "hist-1",
            "hist-2",
            "hist-3",
            "weight-ranges",
            "ranking",
        ] {
            assert_eq!(count(&h, &format!("id=\"{id}\"")), 1, "{id}");
        }
        assert!(!h.contains("hist-4"));
        assert!(h.contains("top-1 %") && h.contains("71.80") && h.contains("−0.90"));
        assert!(h.contains("14.00 MB") && h.contains("3.60 MB") && h.contains("×2.18 faster"));
        // Self-contained: no script, no fetched asset.
        for bad in ["<script", "src=", "href=", "@import", "url("] {
            assert!(!h.contains(bad), "{bad}");
        }
    }

    #[test]
    fn one_sqnr_bar_per_activation_in_graph_order() {
        let r = synthetic(30);
        let h = render_html(&r, None);
        let chart = svg(&h, "sqnr-chart");
        assert_eq!(count(chart, "class=\"bar acc"), 30);
        assert_eq!(count(chart, "class=\"mark iso"), 30);
        // The three ranked layers are highlighted and labelled.
        assert_eq!(count(chart, "class=\"bar acc worst"), 3);
        assert_eq!(count(chart, "class=\"label\""), 3);
        // Graph order: the tooltips' order numbers increase.
        let orders: Vec<usize> = chart
            .split("<title>#")
            .skip(1)
            .map(|s| s[..s.find(' ').unwrap()].parse().unwrap())
            .collect();
        assert_eq!(orders.len(), 30);
        assert!(orders.windows(2).all(|p| p[0] < p[1]), "{orders:?}");
    }

    #[test]
    fn layers_ranked_by_weights_are_found_by_node_or_listed() {
        let mut r = synthetic(30);
        // #1: a Conv ranked by its weight, its output quantized: highlighted, labelled by node.
        r.ranking[0].tensor = "features.0.weight".into();
        // #2: a Conv whose output is not quantized: no bar, named in a note.
        r.ranking[1].node = "/head/Gemm".into();
        r.ranking[1].tensor = "head.weight".into();
        let h = render_html(&r, None);
        let chart = svg(&h, "sqnr-chart");
        assert_eq!(count(chart, "class=\"bar acc worst"), 2);
        assert!(chart.contains(">#1 /features.0/conv/Conv · "));
        assert!(h.contains("Worst layers without a bar here"));
        assert!(h.contains("#2 <code>/<wbr>head/<wbr>Gemm</code>"));
    }

    #[test]
    fn histograms_mark_the_clip_range() {
        let h = render_html(&synthetic(30), None);
        for k in 1..=3 {
            let hist = svg(&h, &format!("hist-{k}"));
            assert_eq!(count(hist, "class=\"clip-line\""), 2);
            assert!(count(hist, "class=\"hist-bar\"") > 20);
        }
        // uint8, scale 0.02, zero point 100: [(0 − 100)·0.02, (255 − 100)·0.02] = [−2, 3.1].
        assert!(h.contains("qmin −2.000") && h.contains("qmax 3.100"), "clip labels");
        let (lo, hi) = clip_range(0.02, 100, "uint8").unwrap();
        assert!((lo + 2.0).abs() < 1e-6 && (hi - 3.1).abs() < 1e-6, "{lo} {hi}");
        assert_eq!(clip_range(0.5, 0, "int8"), Some((-64.0, 63.5)));
        assert_eq!(clip_range(1.0, 3, "float8e4m3fn"), Some((-448.0, 448.0)));
        assert_eq!(clip_range(1.0, 0, "float16"), None);
        assert_eq!(clip_range(0.0, 0, "int8"), None);
    }

    #[test]
    fn weight_ranges_of_the_worst_conv() {
        let r = synthetic(30);
        let h = render_html(&r, None);
        let chart = svg(&h, "weight-ranges");
        assert_eq!(count(chart, "class=\"range-bar\""), 32);
        // The worst ranked layer is features.0 (i = n − 1, odd: per-channel) → no shared range.
        assert!(h.contains("<code>features.0.weight</code>"));
        assert_eq!(count(chart, "class=\"shared-range\""), 0);
        // A per-tensor depthwise weight draws the range all channels share.
        let mut r2 = r.clone();
        r2.ranking.swap(0, 2);
        let h2 = render_html(&r2, None);
        assert!(h2.contains("features.3.weight</code> of Conv") && h2.contains("(depthwise)"));
        assert_eq!(count(svg(&h2, "weight-ranges"), "class=\"shared-range\""), 2);
    }

    #[test]
    fn names_are_escaped() {
        let h = render_html(&synthetic(30), None);
        assert!(!h.contains("a<b>"));
        assert!(h.contains("a&lt;b&gt;&amp;&quot;c&quot;/x"));
        assert!(h.contains("activation &lt;outliers&gt;: try percentile"));
        assert_eq!(escape_html("<'&\">"), "&lt;&#39;&amp;&quot;&gt;");
        // Every '<' opens a tag or a comment we wrote: no stray markup from names.
        for (i, _) in h.match_indices('<') {
            let next = h[i + 1..].chars().next().unwrap();
            assert!(next.is_ascii_alphabetic() || next == '/' || next == '!', "at {i}");
        }
    }

    #[test]
    fn infinite_sqnr_renders_sanely() {
        let mut r = synthetic(30);
        r.outputs[0].noise.sqnr_db = f64::INFINITY;
        r.ranking[1].sqnr_db = f64::INFINITY;
        let h = render_html(&r, None);
        let chart = svg(&h, "sqnr-chart");
        assert_eq!(count(chart, "class=\"bar acc inf\""), 1);
        assert_eq!(count(chart, "class=\"mark iso inf\""), 1);
        assert!(h.contains("accumulated ∞ dB"));
        for bad in ["NaN", "inf<", ">inf", "=\"-", "e308"] {
            assert!(!h.contains(bad), "{bad}");
        }
        // All layers identical: the axis still has a range.
        let mut same = synthetic(8);
        for a in &mut same.activations {
            a.accumulated.sqnr_db = f64::INFINITY;
            a.isolated.sqnr_db = f64::INFINITY;
        }
        let h = render_html(&same, None);
        let chart = svg(&h, "sqnr-chart");
        assert_eq!(count(chart, "class=\"bar acc inf\""), 5);
        assert_eq!(count(chart, "class=\"bar acc worst inf\""), 3);
        assert!(chart.contains(">0</text>") && chart.contains(">10</text>"), "a 0..10 dB axis");
        assert!(!h.contains("NaN"));
    }

    #[test]
    fn hundreds_of_layers_get_thin_bars_and_few_labels() {
        let r = synthetic(800);
        let h = render_html(&r, None);
        let chart = svg(&h, "sqnr-chart");
        assert_eq!(count(chart, "class=\"bar acc"), 800);
        assert_eq!(count(chart, "class=\"label\""), 3);
        // The x axis has a handful of ticks, not one per layer.
        let ticks = count(chart, "text-anchor=\"middle\">");
        assert!(ticks < 40, "{ticks}");
        // Wider than the default, in a scrolling box.
        let width: f64 = chart["<svg id=\"sqnr-chart\" width=\"".len()..]
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(width > SQNR_W, "{width}");
    }

    #[test]
    fn an_empty_report_renders() {
        let mut r = synthetic(8);
        r.activations.clear();
        r.weights.clear();
        r.ranking.clear();
        r.outputs.clear();
        let h = render_html(&r, None);
        assert!(!h.contains("<svg"));
        assert!(h.contains("No quantized activation."));
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_db(f64::INFINITY), "∞");
        assert_eq!(fmt_db(f64::NAN), "–");
        assert_eq!(fmt_db(-3.04), "−3.0");
        assert_eq!(fmt_fixed(-0.0001, 2), "0.00");
        assert_eq!(signed(1.5, 1), "+1.5");
        assert_eq!(fmt_sig(0.00001234), "1.234e−5");
        assert_eq!(fmt_sig(12.3456), "12.35");
        assert_eq!(nice_step(63.0, 6.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(shorten("abcdefghij", 7), "ab…ghij");
    }
}
