//! The report's sections as HTML: summary, what lowbit did, outputs, per-layer SQNR, worst
//! activations, per-channel weight ranges and the ranking tables (the charts come from [`super::svg`]).

use super::format::{esc, fmt_bytes, fmt_db, fmt_fixed, fmt_sig, name, signed, w};
use super::select::{highlighted_layers, worst_weight};
use super::svg;
use super::{ReportSummary, HIGHLIGHTED};
use crate::compare::{ActivationNoise, CompareReport, RankedLayer};

pub(super) fn summary_section(
    h: &mut String,
    report: &CompareReport,
    summary: Option<&ReportSummary>,
) {
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

/// Layers listed per step (the largest changes first).
const STEP_LAYERS: usize = 12;

/// The plan's decisions and each accuracy-recovery step with its per-layer figure.
pub(super) fn quantization_section(h: &mut String, report: &CompareReport) {
    let Some(q) = &report.quantization else { return };
    h.push_str("<section id=\"quantization\"><h2>How it was quantized</h2>\n<ul>\n");
    for d in &q.decisions {
        w(h, format_args!("<li>{}</li>\n", esc(d)));
    }
    if let Some((batches, secs)) = q.calibrated {
        w(h, format_args!("<li>calibrated the transformed FP32 graph: {batches} batches in {secs:.1} s</li>\n"));
    }
    for n in &q.notes {
        w(h, format_args!("<li>{}</li>\n", esc(n)));
    }
    h.push_str("</ul>\n");
    for st in &q.steps {
        w(
            h,
            format_args!(
                "<h3>{} <small>({:.1} s)</small></h3>\n<p>{}</p>\n",
                esc(&st.step),
                st.seconds,
                esc(&st.summary)
            ),
        );
        if st.layers.is_empty() {
            continue;
        }
        let mut layers: Vec<_> = st.layers.iter().collect();
        layers.sort_by(|a, b| (b.after - b.before).abs().total_cmp(&(a.after - a.before).abs()));
        w(
            h,
            format_args!(
                "<table class=\"step\"><tr><th>layer</th><th>{}</th>\
                 <th class=\"num\">before</th><th class=\"num\">after</th></tr>\n",
                esc(&layers[0].metric)
            ),
        );
        for l in layers.iter().take(STEP_LAYERS) {
            w(
                h,
                format_args!(
                    "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                    name(&l.node),
                    esc(&l.metric),
                    fmt_sig(l.before),
                    fmt_sig(l.after)
                ),
            );
        }
        if layers.len() > STEP_LAYERS {
            w(
                h,
                format_args!(
                    "<tr><td colspan=\"4\">… {} more layers</td></tr>\n",
                    layers.len() - STEP_LAYERS
                ),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

pub(super) fn outputs_section(h: &mut String, report: &CompareReport) {
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

pub(super) fn sqnr_section(h: &mut String, report: &CompareReport, acts: &[&ActivationNoise]) {
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
    // The ranking's worst layers, in rank order: (rank, index into `acts`).
    let highlighted: Vec<(usize, usize)> = highlighted_layers(report, acts);
    svg::sqnr_chart(h, report, acts, &highlighted);
    h.push_str(
        "<div class=\"legend\"><span><i class=\"sw acc\"></i>accumulated</span>\
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

pub(super) fn histogram_section(
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
        svg::histogram(h, &format!("hist-{}", k + 1), a);
        h.push_str("</figure>\n");
    }
    h.push_str(
        "</div>\n<div class=\"legend\"><span><i class=\"sw hist\"></i>FP32 values</span>\
         <span><i class=\"sw clip\"></i>clip range [(qmin − zp)·s, (qmax − zp)·s]</span>\
         <span>SQNR: accumulated / isolated</span></div>\n</section>\n",
    );
}

pub(super) fn weight_section(h: &mut String, report: &CompareReport) {
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
    svg::weight_ranges(h, weight, n, (g_min, g_max));
    w(
        h,
        format_args!(
            "<div class=\"legend\"><span><i class=\"sw range\"></i>min..max of the FP32 weights \
             per channel</span>{}</div>\n</section>\n",
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

pub(super) fn ranking_section(h: &mut String, report: &CompareReport, acts: &[&ActivationNoise]) {
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
