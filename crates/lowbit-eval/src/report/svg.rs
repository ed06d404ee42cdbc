//! The report's charts, written as inline SVG: the per-layer SQNR chart, an activation's
//! histogram with its clip range, and a weight's per-channel ranges; plus the axes and grids
//! they share.

use super::format::{esc, fmt_count, fmt_db, fmt_fixed, fmt_sig, shorten, w};
use super::MAX_LAYERS_AT_DEFAULT_WIDTH;
use crate::compare::{ActivationNoise, CompareReport, Histogram, WeightNoise};
use lowbit_kernels::quantize::representable_range;
use lowbit_tensor::{DType, Tensor};

/// A chart's width and the margins around its plot (pixels; the SVG is drawn 1:1).
struct Frame {
    width: f64,
    plot_h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn plot_w(&self) -> f64 {
        self.width - self.left - self.right
    }
}

/// The SQNR chart; its `top` is where the first label lane starts (the plot starts below the
/// lanes).
const SQNR: Frame =
    Frame { width: 1100.0, plot_h: 260.0, left: 52.0, right: 12.0, top: 8.0, bottom: 42.0 };
/// Height of one label lane above the SQNR plot.
const LANE_H: f64 = 15.0;
const HIST: Frame =
    Frame { width: 360.0, plot_h: 176.0, left: 44.0, right: 12.0, top: 30.0, bottom: 34.0 };
/// Bars per histogram at most (adjacent bins are merged beyond).
const HIST_MAX_BARS: usize = 160;
const WEIGHT_RANGES: Frame =
    Frame { width: 1100.0, plot_h: 220.0, left: 60.0, right: 12.0, top: 14.0, bottom: 42.0 };

/// `<svg id=… width=… height=…>` with its accessible label.
fn open_svg(h: &mut String, id: &str, class: &str, (width, height): (f64, f64), label: &str) {
    let class = if class.is_empty() { String::new() } else { format!(" class=\"{class}\"") };
    w(
        h,
        format_args!(
            "<svg id=\"{id}\"{class} width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 \
             {width:.0} {height:.0}\" role=\"img\" aria-label=\"{label}\" \
             xmlns=\"http://www.w3.org/2000/svg\">\n"
        ),
    );
}

/// An axis title along the x axis, centred on `x`.
fn x_title(h: &mut String, x: f64, y: f64, text: &str) {
    w(
        h,
        format_args!(
            "<text class=\"title\" x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"middle\">{text}</text>"
        ),
    );
}

/// An axis title turned along the y axis, centred on `y`.
fn y_title(h: &mut String, x: f64, y: f64, text: &str) {
    w(
        h,
        format_args!(
            "<text class=\"title\" transform=\"translate({x} {y:.1}) rotate(-90)\" \
             text-anchor=\"middle\">{text}</text>"
        ),
    );
}

/// A tick below the x axis at `x` (the axis at `base`), labelled.
fn x_tick(h: &mut String, x: f64, base: f64, label: &str) {
    w(
        h,
        format_args!(
            "<line class=\"axis\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            base + 4.0,
            base + 16.0
        ),
    );
}

/// A handful of ticks along an axis of `n` indices (layers, channels), index `i` at `x(i)`.
fn index_ticks(h: &mut String, n: usize, plot_w: f64, base: f64, x: impl Fn(usize) -> f64) {
    let step = nice_step(n as f64, (plot_w / 70.0).max(2.0)).max(1.0) as usize;
    for i in (0..n).step_by(step) {
        x_tick(h, x(i), base, &i.to_string());
    }
}

/// Horizontal grid lines across a plot `plot_w` wide starting at `left`, at the rows of
/// `ticks` (`(y, label)`), each labelled `gap` pixels left of the plot.
fn grid_rows(h: &mut String, left: f64, plot_w: f64, gap: f64, ticks: Vec<(f64, String)>) {
    h.push_str("<g class=\"grid\">");
    for (ty, label) in ticks {
        w(
            h,
            format_args!(
                "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                left + plot_w,
                left - gap,
                ty + 4.0
            ),
        );
    }
    h.push_str("</g>\n");
}

/// [`grid_rows`] at every `step` from `lo` to `hi`, labelled with the value (`y` maps a value
/// to its row).
fn value_grid(
    h: &mut String,
    (lo, hi, step): (f64, f64, f64),
    left: f64,
    plot_w: f64,
    y: impl Fn(f64) -> f64,
) {
    let decimals = step_decimals(step);
    // + 0.0 turns a -0 tick into 0.
    let ticks = steps(lo, hi, step).map(|t| (y(t), fmt_fixed(t + 0.0, decimals))).collect();
    grid_rows(h, left, plot_w, 6.0, ticks);
}

/// `lo, lo + step, …` up to `hi` (and a rounding error beyond).
fn steps(lo: f64, hi: f64, step: f64) -> impl Iterator<Item = f64> {
    std::iter::successors(Some(lo), move |t| Some(t + step))
        .take_while(move |&t| t <= hi + step * 1e-6)
}

const PARETO: Frame =
    Frame { width: 760.0, plot_h: 340.0, left: 60.0, right: 20.0, top: 14.0, bottom: 42.0 };

/// One configuration on the Pareto chart.
pub(super) struct ParetoPoint {
    pub id: usize,
    pub cost: f64,
    pub metric: f64,
    pub front: bool,
    pub chosen: bool,
}

/// Metric against cost of every evaluated configuration (`<svg id="pareto-chart">`): grey
/// dots (`class="pt"`), the front joined and labelled with ids (`class="pt front"`), the chosen
/// point ringed (`class="chosen"`), the budget's floor dashed (`class="floor"`).
pub(super) fn pareto_chart(
    h: &mut String,
    points: &[ParetoPoint],
    floor: Option<f64>,
    cost_title: &str,
    metric_title: &str,
) {
    let f = &PARETO;
    let pw = f.plot_w();
    let finite: Vec<&ParetoPoint> =
        points.iter().filter(|p| p.cost.is_finite() && p.metric.is_finite()).collect();
    let (mut c_lo, mut c_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut m_lo, mut m_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in &finite {
        (c_lo, c_hi) = (c_lo.min(p.cost), c_hi.max(p.cost));
        (m_lo, m_hi) = (m_lo.min(p.metric), m_hi.max(p.metric));
    }
    if let Some(fl) = floor.filter(|v| v.is_finite()) {
        (m_lo, m_hi) = (m_lo.min(fl), m_hi.max(fl));
    }
    if finite.is_empty() {
        (c_lo, c_hi, m_lo, m_hi) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |lo: f64, hi: f64| {
        let span = (hi - lo).max(hi.abs() * 1e-3).max(1e-9);
        (lo - span * 0.06, hi + span * 0.06)
    };
    let (c_lo, c_hi) = pad(0.0f64.min(c_lo), c_hi);
    let (m_lo, m_hi) = pad(m_lo, m_hi);
    let x = |c: f64| f.left + (c - c_lo) / (c_hi - c_lo) * pw;
    let y = |m: f64| f.top + (m_hi - m) / (m_hi - m_lo) * f.plot_h;
    let height = f.top + f.plot_h + f.bottom;
    open_svg(
        h,
        "pareto-chart",
        "",
        (f.width, height),
        "metric against cost of every configuration",
    );
    let m_step = nice_step(m_hi - m_lo, 6.0);
    value_grid(h, ((m_lo / m_step).ceil() * m_step, m_hi, m_step), f.left, pw, y);
    let base = f.top + f.plot_h;
    let c_step = nice_step(c_hi - c_lo, 7.0);
    let decimals = step_decimals(c_step);
    for t in steps((c_lo / c_step).ceil() * c_step, c_hi, c_step) {
        x_tick(h, x(t), base, &fmt_fixed(t + 0.0, decimals));
    }
    w(
        h,
        format_args!(
            "<line class=\"axis\" x1=\"{}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\"/>",
            f.left,
            f.left + pw
        ),
    );
    if let Some(fl) = floor.filter(|v| v.is_finite()) {
        w(
            h,
            format_args!(
                "<line class=\"floor\" x1=\"{}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
                f.left,
                f.left + pw,
                y(fl),
                y(fl)
            ),
        );
    }
    let mut front: Vec<&&ParetoPoint> = finite.iter().filter(|p| p.front).collect();
    front.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    if front.len() > 1 {
        let path: Vec<String> =
            front.iter().map(|p| format!("{:.1},{:.1}", x(p.cost), y(p.metric))).collect();
        w(h, format_args!("<polyline class=\"front-line\" points=\"{}\"/>", path.join(" ")));
    }
    for p in &finite {
        let class = if p.front { "pt front" } else { "pt" };
        w(
            h,
            format_args!(
                "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\"><title>#{} \
                 {} / {}</title></circle>",
                x(p.cost),
                y(p.metric),
                p.id,
                fmt_sig(p.cost),
                fmt_sig(p.metric)
            ),
        );
        if p.front {
            w(
                h,
                format_args!(
                    "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\">#{}</text>",
                    x(p.cost) + 6.0,
                    y(p.metric) - 6.0,
                    p.id
                ),
            );
        }
        if p.chosen {
            w(
                h,
                format_args!(
                    "<circle class=\"chosen\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"8\"/>",
                    x(p.cost),
                    y(p.metric)
                ),
            );
        }
    }
    x_title(h, f.left + pw / 2.0, height - 6.0, cost_title);
    y_title(h, 14.0, f.top + f.plot_h / 2.0, metric_title);
    h.push_str("</svg>\n");
}

/// The per-layer SQNR chart (`<svg id="sqnr-chart">` in a scrolling box): a bar per
/// activation for the accumulated SQNR, a marker for the isolated one, the `highlighted`
/// layers ((rank, index into `acts`) pairs) banded, coloured and labelled.
pub(super) fn sqnr_chart(
    h: &mut String,
    report: &CompareReport,
    acts: &[&ActivationNoise],
    highlighted: &[(usize, usize)],
) {
    let n = acts.len();
    let top = SQNR.top + LANE_H * highlighted.len() as f64 + 8.0;
    let default_plot_w = SQNR.plot_w();
    let plot_w = default_plot_w.max(n as f64 * default_plot_w / MAX_LAYERS_AT_DEFAULT_WIDTH as f64);
    let width = SQNR.left + plot_w + SQNR.right;
    let height = top + SQNR.plot_h + SQNR.bottom;
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
    let y = |v: f64| top + SQNR.plot_h * (hi - v.clamp(lo, hi)) / (hi - lo);
    let x0 = |i: usize| SQNR.left + i as f64 * pitch + (pitch - bar_w) / 2.0;
    let xc = |i: usize| SQNR.left + (i as f64 + 0.5) * pitch;

    h.push_str("<div class=\"scroll\">");
    open_svg(h, "sqnr-chart", "", (width, height), "SQNR per layer in graph order");
    value_grid(h, (lo, hi, step), SQNR.left, plot_w, y);
    y_title(h, 14.0, top + SQNR.plot_h / 2.0, "SQNR (dB)");
    h.push('\n');
    let base = top + SQNR.plot_h;
    index_ticks(h, n, plot_w, base, xc);
    h.push('\n');
    x_title(h, SQNR.left + plot_w / 2.0, base + 34.0, "layer (graph order)");
    h.push('\n');
    // A band behind each highlighted layer, wide enough to see among hundreds of thin bars.
    let band_w = pitch.max(7.0);
    for &(_, i) in highlighted {
        w(
            h,
            format_args!(
                "<rect class=\"worst-band\" x=\"{:.2}\" y=\"{top:.1}\" width=\"{band_w:.2}\" \
                 height=\"{}\"/>\n",
                xc(i) - band_w / 2.0,
                SQNR.plot_h
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
        let ly = SQNR.top + LANE_H * (lane as f64 + 1.0) - 3.0;
        let bx = xc(i);
        let bar_top = y(a.accumulated.sqnr_db.max(a.isolated.sqnr_db)).min(zero);
        let (anchor, tx) =
            if bx < SQNR.left + plot_w / 2.0 { ("start", bx + 3.0) } else { ("end", bx - 3.0) };
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
            "<line class=\"axis\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{zero:.1}\" y2=\"{zero:.1}\"/>\
             <line class=\"axis\" x1=\"{left}\" x2=\"{left}\" y1=\"{top:.1}\" y2=\"{base:.1}\"/>\n\
             </svg></div>\n",
            SQNR.left + plot_w,
            left = SQNR.left
        ),
    );
}

/// The histogram of activation `a` (`<svg id="{id}" class="hist">`) with the clip range of its
/// quantization and the saturated zones shaded.
pub(super) fn histogram(h: &mut String, id: &str, a: &ActivationNoise) {
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
    let (left, top, plot_w, plot_h) = (HIST.left, HIST.top, HIST.plot_w(), HIST.plot_h);
    let height = top + plot_h + HIST.bottom;
    let base = top + plot_h;
    let x = |v: f64| left + plot_w * (v - d_lo) / (d_hi - d_lo);

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

    open_svg(h, id, "hist", (HIST.width, height), &format!("histogram of {}", esc(&a.tensor)));
    // Count ticks.
    let next = |t: f64| if log { t * 10.0 } else { t + nice_step(top_count, 4.0) };
    let ticks = std::iter::successors(Some(if log { 1.0 } else { 0.0 }), |&t| Some(next(t)))
        .take_while(|&t| t <= top_count * 1.000_001)
        .map(|t| (y(t), fmt_count(t)))
        .collect();
    grid_rows(h, left, plot_w, 5.0, ticks);
    y_title(h, 11.0, top + plot_h / 2.0, if log { "count (log)" } else { "count" });
    h.push('\n');
    // Value ticks.
    let vstep = nice_step(d_hi - d_lo, 5.0);
    let decimals = step_decimals(vstep);
    for t in steps((d_lo / vstep).ceil() * vstep, d_hi, vstep) {
        x_tick(h, x(t), base, &fmt_fixed(t + 0.0, decimals));
    }
    // Saturated zones behind the bars.
    if let Some((c_lo, c_hi)) = clip {
        if c_lo > d_lo {
            w(
                h,
                format_args!(
                    "\n<rect class=\"clip-zone\" x=\"{left}\" y=\"{top}\" width=\"{:.1}\" \
                     height=\"{plot_h}\"/>",
                    x(c_lo.min(d_hi)) - left
                ),
            );
        }
        if c_hi < d_hi {
            let cx = x(c_hi.max(d_lo));
            w(
                h,
                format_args!(
                    "\n<rect class=\"clip-zone\" x=\"{cx:.1}\" y=\"{top}\" width=\"{:.1}\" \
                     height=\"{plot_h}\"/>",
                    left + plot_w - cx
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
                        top - 4.0 - 12.0 * (1 - k) as f64,
                        top - 6.0 - 12.0 * (1 - k) as f64,
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
                left + plot_w / 2.0,
                top - 8.0,
                esc(&a.value_type)
            ),
        ),
    }
    w(
        h,
        format_args!(
            "<line class=\"axis\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\"/>",
            left + plot_w
        ),
    );
    x_title(h, left + plot_w / 2.0, height - 4.0, "FP32 value");
    h.push_str("\n</svg>\n");
}

/// The min..max bars of `weight`'s first `n` output channels (`<svg id="weight-ranges">` in a
/// scrolling box) over `[g_min, g_max]`; for a per-tensor weight that shared range is drawn
/// too.
pub(super) fn weight_ranges(
    h: &mut String,
    weight: &WeightNoise,
    n: usize,
    (g_min, g_max): (f64, f64),
) {
    let f = &WEIGHT_RANGES;
    let plot_w = f.plot_w().max(n as f64 * 1.5);
    let width = f.left + plot_w + f.right;
    let height = f.top + f.plot_h + f.bottom;
    let pitch = plot_w / n as f64;
    let bar_w = if pitch >= 4.0 { pitch * 0.7 } else { pitch };
    let (mut lo, mut hi) = (g_min, g_max);
    let drawable = hi > lo && lo.is_finite() && hi.is_finite();
    if !drawable {
        (lo, hi) = (-1.0, 1.0);
    }
    let step = nice_step(hi - lo, 6.0);
    let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let y = |v: f64| f.top + f.plot_h * (hi - v.clamp(lo, hi)) / (hi - lo);
    let base = f.top + f.plot_h;
    h.push_str("<div class=\"scroll\">");
    let label = format!("weight range per output channel of {}", esc(&weight.weight));
    open_svg(h, "weight-ranges", "", (width, height), &label);
    value_grid(h, (lo, hi, step), f.left, plot_w, y);
    index_ticks(h, n, plot_w, base, |c| f.left + (c as f64 + 0.5) * pitch);
    h.push('\n');
    x_title(h, f.left + plot_w / 2.0, base + 34.0, "output channel");
    y_title(h, 14.0, f.top + f.plot_h / 2.0, "weight");
    h.push('\n');
    for c in 0..n {
        let (mn, mx) = (weight.channel_min[c] as f64, weight.channel_max[c] as f64);
        let (y1, y2) = (y(mx), y(mn));
        w(
            h,
            format_args!(
                "<rect class=\"range-bar\" x=\"{:.2}\" y=\"{y1:.1}\" width=\"{bar_w:.2}\" \
                 height=\"{:.1}\"><title>channel {c}: {} .. {}</title></rect>\n",
                f.left + c as f64 * pitch + (pitch - bar_w) / 2.0,
                (y2 - y1).max(1.0),
                fmt_sig(mn),
                fmt_sig(mx)
            ),
        );
    }
    let mut hline = |class: &str, v: f64| {
        let ly = y(v);
        w(
            h,
            format_args!(
                "<line class=\"{class}\" x1=\"{}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\"/>\n",
                f.left,
                f.left + plot_w
            ),
        );
    };
    hline("zero", 0.0);
    if weight.axis.is_none() {
        hline("shared-range", g_min);
        hline("shared-range", g_max);
    }
    w(
        h,
        format_args!(
            "<line class=\"axis\" x1=\"{left}\" x2=\"{left}\" y1=\"{}\" y2=\"{base:.1}\"/>\
             </svg></div>\n",
            f.top,
            left = f.left
        ),
    );
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

/// The real range a quantized tensor of type `value_type` (an ONNX type name as
/// [`DType::name`] spells it) can represent: `[(qmin − zp)·s, (qmax − zp)·s]` over the
/// storage type's full range (what QuantizeLinear saturates to); float8 types `±max·s`. From
/// the math core ([`representable_range`]). `None` for a type that is not quantized to or a
/// scale that is not positive and finite.
pub fn clip_range(scale: f32, zero_point: i32, value_type: &str) -> Option<(f64, f64)> {
    if !(scale.is_finite() && scale > 0.0) {
        return None;
    }
    let name = value_type.trim().to_ascii_lowercase();
    let dtype = DType::ALL.into_iter().find(|d| d.name() == name)?;
    // Float8 zero points are 0 (what ONNX Runtime writes); integer ones are stored in the type.
    let zp = match dtype.is_integer() {
        true => Some(Tensor::scalar(zero_point).cast(dtype).ok()?.into_data()),
        false => None,
    };
    let (lo, hi) = representable_range(dtype, scale, zp.as_ref()).ok()?;
    Some((lo as f64, hi as f64))
}

/// A 1, 2 or 5 × 10^k step giving about `target` ticks over `span`.
pub(super) fn nice_step(span: f64, target: f64) -> f64 {
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

/// The fewest decimals that print every multiple of `step` exactly (0.5 needs one, 2.5 one,
/// 0.25 two), at most 6.
fn step_decimals(step: f64) -> usize {
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

    #[test]
    fn ticks_are_nice_steps() {
        assert_eq!(nice_step(63.0, 6.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(step_decimals(0.25), 2);
        assert_eq!(step_decimals(2.5), 1);
        assert_eq!(step_decimals(20.0), 0);
        assert_eq!(steps(0.0, 1.0, 0.25).collect::<Vec<_>>(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn clip_ranges_come_from_the_core() {
        assert_eq!(clip_range(1.0, 0, "int4"), Some((-8.0, 7.0)));
        assert_eq!(clip_range(0.5, 8, "uint4"), Some((-4.0, 3.5)));
        assert_eq!(clip_range(2.0, 0, "float8e5m2"), Some((-114688.0, 114688.0)));
        assert_eq!(clip_range(1.0, 0, "int64"), None);
        assert_eq!(clip_range(f32::NAN, 0, "int8"), None);
        assert_eq!(clip_range(1.0, 0, "qint8"), None);
    }
}
