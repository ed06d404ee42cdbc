//! The HTML report's structure: every chart and table, graph order, highlighting, escaping,
//! non-finite numbers and scale, checked on the text `render_html` writes (`tests/report.rs`
//! checks what a browser draws of it).

mod common;

use common::{summary, synthetic, CHANNELS};
use lowbit_eval::report::{clip_range, escape_html, render_html};

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

/// The SQNR chart of `synthetic(layers)`, checked to have one bar per layer.
fn sqnr_chart_of(layers: usize) -> String {
    let h = render_html(&synthetic(layers), None);
    let chart = svg(&h, "sqnr-chart");
    assert_eq!(count(chart, "class=\"bar acc"), layers);
    chart.to_string()
}

#[test]
fn one_sqnr_bar_per_activation_in_graph_order() {
    let chart = &sqnr_chart_of(30);
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
    assert_eq!(count(chart, "class=\"range-bar\""), CHANNELS);
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
    let chart = &sqnr_chart_of(800);
    assert_eq!(count(chart, "class=\"label\""), 3);
    // The x axis has a handful of ticks, not one per layer.
    let ticks = count(chart, "text-anchor=\"middle\">");
    assert!(ticks < 40, "{ticks}");
    // Wider than the default (30 layers); the chart scrolls.
    let width = |chart: &str| -> f64 {
        chart["<svg id=\"sqnr-chart\" width=\"".len()..].split('"').next().unwrap().parse().unwrap()
    };
    let default = width(&sqnr_chart_of(30));
    assert!(width(chart) > default, "{} vs {default}", width(chart));
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
fn the_header_counts_samples_and_runs() {
    let mut r = synthetic(8);
    let h = render_html(&r, None);
    assert!(h.contains("· 16 samples in 2 runs ·"), "{}", &h[h.find("<header>").unwrap()..][..300]);
    r.runs = 16;
    assert!(render_html(&r, None).contains("· 16 samples ·"));
    (r.samples, r.runs) = (1, 1);
    assert!(render_html(&r, None).contains("· 1 sample ·"));
}

#[test]
fn the_quantization_section_lists_decisions_and_steps_largest_change_first() {
    use lowbit_quant::algorithms::{LayerChange, StepReport};
    use lowbit_quant::quantize::QuantizeSummary;
    let mut r = synthetic(8);
    assert!(!render_html(&r, None).contains("id=\"quantization\""), "no summary, no section");
    let change = |node: &str, before, after| LayerChange {
        node: node.into(),
        metric: "output SQNR (dB)".into(),
        before,
        after,
    };
    r.quantization = Some(QuantizeSummary {
        decisions: vec!["weights 7-bit <because>".into()],
        steps: vec![StepReport {
            step: "bias-correction".into(),
            seconds: 1.2,
            summary: "corrected 2 layers".into(),
            layers: vec![change("small", 20.0, 21.0), change("big", 10.0, 25.0)],
        }],
        ..Default::default()
    });
    let h = render_html(&r, None);
    let sec = &h[h.find("<section id=\"quantization\">").expect("section")..];
    let sec = &sec[..sec.find("</section>").unwrap()];
    assert!(sec.contains("weights 7-bit &lt;because&gt;"), "{sec}");
    assert!(sec.contains("bias-correction <small>(1.2 s)</small>"), "{sec}");
    let (big, small) = (sec.find(">big<").expect("big"), sec.find(">small<").expect("small"));
    assert!(big < small, "largest change first: {sec}");
}
