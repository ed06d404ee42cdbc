//! The HTML report of a [`TuneReport`] (`lowbit tune --report`), self-contained like the
//! comparison's: the summary and held-out confirmation (`id="summary"`), the Pareto chart of
//! every evaluated configuration (`<svg id="pareto-chart">`) with its table (`id="configs"`),
//! and the chosen point's per-layer precision map (`id="precision-map"`: one cell per layer in
//! graph order, `class="p-<precision>"`, and a table with each layer's isolated SQNR).

use super::format::{esc, fmt_bytes, fmt_db, fmt_fixed, name, w};
use super::style::STYLE;
use super::svg::{pareto_chart, ParetoPoint};
use crate::tune::{Evaluated, Metric, Objective, TuneReport};

fn metric_title(m: Metric) -> &'static str {
    match m {
        Metric::Top1 => "top-1 (%)",
        Metric::Cosine => "mean cosine ×100",
        Metric::Spearman => "Spearman ×100",
        Metric::Sqnr => "output SQNR (dB)",
    }
}

fn cost_of(r: &TuneReport, e: &Evaluated) -> f64 {
    match (r.objective, e.latency_ms) {
        (Objective::Latency, Some(ms)) => ms,
        _ => e.bytes as f64 / 1e6,
    }
}

fn latency(e: &Evaluated) -> String {
    e.latency_ms.map_or("–".into(), |ms| format!("{ms:.2} ms"))
}

/// The report as one HTML page.
pub fn render_tune_html(r: &TuneReport) -> String {
    let mut h = String::with_capacity(32 * 1024);
    w(
        &mut h,
        format_args!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>lowbit tune: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
            esc(&r.model)
        ),
    );
    w(
        &mut h,
        format_args!(
            "<header><h1>Hybrid precision under a {} budget</h1><p class=\"sub\"><code>{}</code> · \
             {} on output <code>{}</code> against {} · objective {} · {} configurations \
             evaluated in {:.0} s</p></header>\n",
            fmt_fixed(r.max_drop, 2),
            name(&r.model),
            metric_title(r.metric),
            esc(&r.output),
            esc(&r.against),
            if r.objective == Objective::Size { "size" } else { "latency" },
            r.evaluated.len(),
            r.seconds
        ),
    );

    // Summary.
    h.push_str("<section id=\"summary\"><h2>Chosen configuration</h2>\n");
    match r.chosen.and_then(|c| r.evaluated.get(c)) {
        Some(c) => {
            let fp32 = &r.evaluated[0];
            w(
                &mut h,
                format_args!(
                    "<p class=\"note\">#{} <b>{}</b>: metric {} on {} search samples (FP32 {}, \
                     drop {}), {} ({:.1} % of FP32), latency {} (FP32 {}).</p>\n",
                    c.id,
                    esc(&c.label),
                    fmt_fixed(c.metric, 2),
                    r.search_samples,
                    fmt_fixed(fp32.metric, 2),
                    fmt_fixed(c.drop, 2),
                    fmt_bytes(c.bytes),
                    100.0 * c.bytes as f64 / fp32.bytes.max(1) as f64,
                    latency(c),
                    latency(fp32)
                ),
            );
        }
        None => h.push_str("<p class=\"note bad\">No configuration met the budget.</p>\n"),
    }
    if !r.held_out.is_empty() {
        w(
            &mut h,
            format_args!(
                "<table><tr><th>on {} held-out samples</th><th class=\"num\">metric</th>\
                 <th class=\"num\">drop</th><th class=\"num\">95 % interval</th></tr>\n",
                r.held_out_samples
            ),
        );
        for s in &r.held_out {
            let label = r.evaluated.get(s.id).map_or("", |e| e.label.as_str());
            let interval = s.drop_interval.map_or("–".into(), |hw| {
                format!("{} to {}", fmt_fixed(s.drop - hw, 2), fmt_fixed(s.drop + hw, 2))
            });
            w(
                &mut h,
                format_args!(
                    "<tr><td>#{} {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                     <td class=\"num\">{interval}</td></tr>\n",
                    s.id,
                    esc(label),
                    fmt_fixed(s.metric, 2),
                    fmt_fixed(s.drop, 2)
                ),
            );
        }
        h.push_str("</table>\n");
    }
    w(&mut h, format_args!("<p class=\"note\">{}</p></section>\n", esc(&r.confidence)));

    // Pareto front.
    h.push_str(
        "<section id=\"pareto\"><h2>Pareto front</h2>\n<p class=\"note\">Every \
                configuration measured, metric on the search samples against cost; the \
                non-dominated ones joined, the chosen one ringed, the budget dashed.</p>\n\
                <div class=\"scroll\">",
    );
    let points: Vec<ParetoPoint> = r
        .evaluated
        .iter()
        .map(|e| ParetoPoint {
            id: e.id,
            cost: cost_of(r, e),
            metric: e.metric,
            front: r.pareto.contains(&e.id),
            chosen: r.chosen == Some(e.id),
        })
        .collect();
    let floor = match r.metric {
        Metric::Sqnr => r.max_drop,
        _ => r.reference_metric - r.max_drop,
    };
    let cost_title = match r.objective {
        Objective::Size => "model size (MB)",
        Objective::Latency => "median latency (ms)",
    };
    pareto_chart(&mut h, &points, Some(floor), cost_title, metric_title(r.metric));
    h.push_str(
        "</div>\n<table id=\"configs\"><tr><th>#</th><th>configuration</th>\
                <th class=\"num\">metric</th><th class=\"num\">drop</th><th class=\"num\">size</th>\
                <th class=\"num\">latency</th><th>precisions</th></tr>\n",
    );
    for e in &r.evaluated {
        let mix: Vec<String> = e.precisions.iter().map(|(p, n)| format!("{n} {p}")).collect();
        let mark = if r.pareto.contains(&e.id) { " ◆" } else { "" };
        let class = if e.meets_budget { "" } else { " class=\"bad\"" };
        w(
            &mut h,
            format_args!(
                "<tr><td>{}{mark}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\"{class}>{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
                e.id,
                esc(&e.label),
                fmt_fixed(e.metric, 2),
                fmt_fixed(e.drop, 2),
                fmt_bytes(e.bytes),
                latency(e),
                esc(&mix.join(", "))
            ),
        );
    }
    h.push_str("</table><p class=\"note\">◆ on the Pareto front; drops in red miss the budget.</p></section>\n");

    // Precision map.
    h.push_str(
        "<section id=\"precision-map\"><h2>Per-layer precision of the chosen point</h2>\n\
                <p class=\"note\">One cell per layer in graph order.</p><div class=\"pmap\">",
    );
    for n in &r.nodes {
        w(
            &mut h,
            format_args!(
                "<span class=\"p-{}\" title=\"{} ({}): {}\"></span>",
                n.precision,
                esc(&n.node),
                esc(&n.op_type),
                n.precision
            ),
        );
    }
    h.push_str("</div><div class=\"legend\">");
    for p in &r.candidates {
        w(&mut h, format_args!("<span><i class=\"sw p-{p}\"></i>{p}</span>"));
    }
    h.push_str("</div>\n<details><summary>Layers</summary><table><tr><th>layer</th><th>op</th>\
                <th class=\"num\">weights</th><th class=\"num\">isolated SQNR (dB)</th>\
                <th class=\"num\">output SQNR alone (dB)</th><th class=\"num\">noise rank</th><th>precision</th></tr>\n");
    for n in &r.nodes {
        w(
            &mut h,
            format_args!(
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td>{}</td></tr>\n",
                esc(&n.node),
                esc(&n.op_type),
                n.weight_values,
                fmt_db(n.sqnr_db),
                fmt_db(n.output_sqnr_db),
                n.rank + 1,
                n.precision
            ),
        );
    }
    h.push_str("</table></details></section>\n");
    w(
        &mut h,
        format_args!(
            "<footer>lowbit {} · <code>{}</code></footer>\n</main>\n</body>\n</html>\n",
            env!("CARGO_PKG_VERSION"),
            r.format
        ),
    );
    h
}
