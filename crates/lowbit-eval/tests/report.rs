//! The HTML report as a browser draws it: a synthetic comparison is rendered, opened in
//! headless Chromium, screenshotted, and the PNG's pixels are checked against the SVG the
//! report wrote (each chart's marks have their own colour, so their pixels can be counted).
//!
//! Needs a Chromium binary: `$LOWBIT_CHROMIUM`, else `chromium` or `chromium-browser` on the
//! PATH (`scripts/setup-test-env.sh` installs Debian's `chromium`). Without one the test says so
//! and passes. `LOWBIT_KEEP_SCREENSHOT=1` keeps the HTML and PNG (their folder is printed).

mod common;

use common::{summary, synthetic, CHANNELS};
use lowbit_eval::compare::CompareReport;
use lowbit_eval::report::{render_html, render_tune_html};
use lowbit_eval::tune::{
    Evaluated, HeldOutScore, Metric, NodeChoice, Objective, Precision, TuneReport,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A hung browser is killed after this long.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
const WINDOW: (usize, usize) = (1280, 2400);

// The report's stylesheet colours of the marks counted here.
const ACC_BAR: [u8; 3] = [0x4e, 0x79, 0xa7];
const WORST_BAR: [u8; 3] = [0xe1, 0x57, 0x59];
const HIST_BAR: [u8; 3] = [0x76, 0xb7, 0xb2];
const CLIP_LINE: [u8; 3] = [0x7b, 0x32, 0x94];
const RANGE_BAR: [u8; 3] = [0x59, 0xa1, 0x4f];

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOWBIT_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Screenshots `html` with headless Chromium; the PNG's path and how long the browser took.
fn screenshot(browser: &Path, html: &Path, dir: &Path) -> (PathBuf, Duration) {
    let png = dir.join("report.png");
    let log = dir.join("chromium.log");
    let start = Instant::now();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("chromium.err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CHROMIUM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not finish in {CHROMIUM_TIMEOUT:?}; killed", browser.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = start.elapsed();
    if !status.success() || !png.is_file() {
        let err = std::fs::read_to_string(dir.join("chromium.err")).unwrap_or_default();
        let tail: String = err.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        panic!(
            "{} failed ({status}), no screenshot; stderr ends (reversed):\n{tail}",
            browser.display()
        );
    }
    (png, took)
}

/// RGB pixels of a PNG, row-major.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut decoder = png::Decoder::new(file);
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Indexed => unreachable!("expanded"),
        };
        let rgb = buf[..info.buffer_size()]
            .chunks_exact(info.line_size)
            .flat_map(|row| {
                row[..info.width as usize * channels].chunks_exact(channels).map(|p| {
                    if channels < 3 {
                        [p[0]; 3]
                    } else {
                        [p[0], p[1], p[2]]
                    }
                })
            })
            .collect();
        Image { width: info.width as usize, height: info.height as usize, rgb }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.rgb[y * self.width + x]
    }

    fn is(&self, x: usize, y: usize, colour: [u8; 3]) -> bool {
        let p = self.at(x, y);
        (0..3).all(|c| p[c].abs_diff(colour[c]) <= 3)
    }

    /// Pixels of `colour` in rows `y0..y1`.
    fn count(&self, colour: [u8; 3], y0: usize, y1: usize) -> usize {
        (y0..y1.min(self.height))
            .map(|y| (0..self.width).filter(|&x| self.is(x, y, colour)).count())
            .sum()
    }

    /// Rows holding at least `min` pixels of `colour`: the first and last (inclusive).
    fn rows_with(&self, colour: [u8; 3], min: usize) -> Option<(usize, usize)> {
        let rows: Vec<usize> = (0..self.height)
            .filter(|&y| (0..self.width).filter(|&x| self.is(x, y, colour)).count() >= min)
            .collect();
        Some((*rows.first()?, *rows.last()?))
    }

    /// Runs of `colour` along row `y`: `(first x, last x)` each.
    fn runs(&self, colour: [u8; 3], y: usize) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut start = None;
        for x in 0..=self.width {
            let on = x < self.width && self.is(x, y, colour);
            match (on, start) {
                (true, None) => start = Some(x),
                (false, Some(s)) => {
                    runs.push((s, x - 1));
                    start = None;
                }
                _ => {}
            }
        }
        runs
    }
}

/// `(x, y, width, height)` of every `<rect class="CLASS">` (exactly that class) in the SVG
/// with `id`.
fn rects(html: &str, id: &str, class: &str) -> Vec<[f64; 4]> {
    let start = html.find(&format!("<svg id=\"{id}\"")).unwrap_or_else(|| panic!("no svg {id}"));
    let svg = &html[start..start + html[start..].find("</svg>").unwrap()];
    let attr = |tag: &str, name: &str| -> f64 {
        let key = format!(" {name}=\"");
        let i = tag.find(&key).unwrap_or_else(|| panic!("no {name} in {tag}")) + key.len();
        tag[i..i + tag[i..].find('"').unwrap()].parse().unwrap()
    };
    svg.split("<rect ")
        .skip(1)
        .map(|t| &t[..t.find('>').unwrap()])
        .filter(|t| t.starts_with(&format!("class=\"{class}\"")))
        .map(|t| [attr(t, "x"), attr(t, "y"), attr(t, "width"), attr(t, "height")])
        .collect()
}

fn area(rects: &[[f64; 4]]) -> f64 {
    rects.iter().map(|r| r[2] * r[3]).sum()
}

fn assert_close(what: &str, seen: usize, expected: f64, tolerance: f64) {
    let ratio = seen as f64 / expected;
    assert!(
        (1.0 - tolerance..=1.0 + tolerance).contains(&ratio),
        "{what}: {seen} px drawn, {expected:.0} px expected from the SVG (ratio {ratio:.3})"
    );
}

/// A rendered report and its screenshot.
struct Shot {
    html: String,
    img: Image,
    took: Duration,
    dir: PathBuf,
    browser: PathBuf,
}

impl Shot {
    /// Renders `report` and screenshots it; `None` (with the skip note) without Chromium.
    fn take(tag: &str, report: &CompareReport) -> Option<Shot> {
        Shot::of(tag, render_html(report, Some(&summary())))
    }

    /// Screenshots the page `html`; `None` (with the skip note) without Chromium.
    fn of(tag: &str, html: String) -> Option<Shot> {
        let Some(browser) = chromium() else {
            println!("skipped: chromium not installed (scripts/setup-test-env.sh installs it)");
            return None;
        };
        let dir =
            std::env::temp_dir().join(format!("lowbit-report-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let page = dir.join("report.html");
        std::fs::write(&page, &html).unwrap();
        let (png, took) = screenshot(&browser, &page, &dir);
        let img = Image::read(&png);
        assert_eq!((img.width, img.height), WINDOW);
        Some(Shot { html, img, took, dir, browser })
    }

    /// Removes the files unless `LOWBIT_KEEP_SCREENSHOT` is set.
    fn done(self) {
        if std::env::var_os("LOWBIT_KEEP_SCREENSHOT").is_some() {
            println!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn chromium_draws_every_chart_of_the_report() {
    const LAYERS: usize = 30;
    let Some(shot) = Shot::take("30", &synthetic(LAYERS)) else { return };
    let (html, img) = (&shot.html, &shot.img);

    // Not blank: a good share of the page is neither background nor white.
    let background = img.at(2, img.height - 2);
    let inked = img.rgb.iter().filter(|&&p| p != background && p != [255; 3]).count();
    assert!(inked > img.rgb.len() / 25, "page nearly blank: {inked} inked px");

    // SQNR chart: its bar rows, one blue run per blue bar, as much blue as the SVG's bars.
    let acc = rects(html, "sqnr-chart", "bar acc");
    let worst = rects(html, "sqnr-chart", "bar acc worst");
    assert_eq!(acc.len() + worst.len() + 1, LAYERS, "one bar is infinite");
    // Rows with at least 12 px of a colour: a bar's rows, not a legend swatch's (11 px).
    let (s0, s1) = img.rows_with(ACC_BAR, 12).expect("no SQNR bars drawn");
    let tallest = acc.iter().map(|r| r[3]).fold(0.0, f64::max);
    let rows = (s1 - s0 + 1) as f64;
    assert!((rows - tallest).abs() <= 3.0, "bar rows {s0}..{s1}, tallest bar {tallest}");
    let blue = img.count(ACC_BAR, s0, s1 + 1);
    assert_close("accumulated-SQNR bars", blue, area(&acc), 0.08);
    let runs = img.runs(ACC_BAR, s1 - 2);
    assert_eq!(runs.len(), acc.len(), "blue bars along the chart's base: {runs:?}");
    let svg_left = runs[0].0 as f64 - acc[0][0];
    let span = acc.last().map(|r| r[0] + r[2]).unwrap() - acc[0][0];
    let seen_span = (runs.last().unwrap().1 - runs[0].0 + 1) as f64;
    assert!((seen_span - span).abs() <= 2.0, "bars span {seen_span} px, SVG {span}");
    let red = img.count(WORST_BAR, s0, s1 + 1);
    assert_close("highlighted worst bars", red, area(&worst), 0.10);

    // Weight ranges at the bottom: one green bar per channel, all crossing zero.
    let ranges = rects(html, "weight-ranges", "range-bar");
    let (g0, g1) = img.rows_with(RANGE_BAR, 12).expect("no weight ranges drawn");
    let green = img.count(RANGE_BAR, g0, g1 + 1);
    assert_close("weight range bars", green, area(&ranges), 0.08);
    // The fullest green row (the dashed zero line cuts the bars on its own rows).
    let fullest = (g0..=g1).max_by_key(|&y| img.count(RANGE_BAR, y, y + 1)).unwrap();
    let channels = img.runs(RANGE_BAR, fullest);
    assert_eq!(channels.len(), CHANNELS, "channel bars across row {fullest}");
    // Both full-width charts start at the same page x (their sections' content edge).
    let wr_left = channels[0].0 as f64 - ranges[0][0];
    assert!((wr_left - svg_left).abs() <= 2.0, "chart origins {svg_left} vs {wr_left}");

    // Histograms between the two: their bars and six clip lines (two per histogram).
    let hist: Vec<[f64; 4]> =
        (1..=3).flat_map(|k| rects(html, &format!("hist-{k}"), "hist-bar")).collect();
    let (h0, h1) = img.rows_with(HIST_BAR, 1).expect("no histogram drawn");
    assert!(s1 < h0 && h1 < g0, "histograms (rows {h0}..{h1}) not between {s1} and {g0}");
    let teal = img.count(HIST_BAR, h0, h1 + 1);
    assert_close("histogram bars", teal, area(&hist), 0.10);
    let (c0, c1) = img.rows_with(CLIP_LINE, 4).expect("no clip lines drawn");
    let mid = (c0 + c1) / 2;
    let lines = img.runs(CLIP_LINE, mid);
    assert_eq!(lines.len(), 6, "clip lines across row {mid}: {lines:?}");
    assert!(c1 - c0 > 150 && s1 < c0 && c1 < g0, "clip lines span rows {c0}..{c1}");

    println!(
        "chromium ({}) took {:.2} s; pixels: {blue} blue SQNR bars (SVG area {:.0}, {} bars \
         seen), {red} red worst bars (SVG {:.0}), {teal} histogram (SVG {:.0}), {} clip lines, \
         {green} weight ranges (SVG {:.0}, {} channels seen); {inked} inked of {}; rows: SQNR \
         {s0}..{s1}, histograms {h0}..{h1}, weights {g0}..{g1}",
        shot.browser.display(),
        shot.took.as_secs_f64(),
        area(&acc),
        runs.len(),
        area(&worst),
        area(&hist),
        lines.len(),
        area(&ranges),
        channels.len(),
        img.rgb.len()
    );
    shot.done();
}

/// Hundreds of layers: thin bars, still all drawn, still as wide as the SVG says.
#[test]
fn chromium_draws_hundreds_of_layers() {
    const LAYERS: usize = 480;
    let Some(shot) = Shot::take("480", &synthetic(LAYERS)) else { return };
    let (html, img) = (&shot.html, &shot.img);
    let acc = rects(html, "sqnr-chart", "bar acc");
    let worst = rects(html, "sqnr-chart", "bar acc worst");
    assert_eq!(acc.len() + worst.len() + 1, LAYERS, "one bar is infinite");
    let (s0, s1) = img.rows_with(ACC_BAR, 12).expect("no SQNR bars drawn");
    let blue = img.count(ACC_BAR, s0, s1 + 1);
    assert_close("accumulated-SQNR bars", blue, area(&acc), 0.10);
    let red = img.count(WORST_BAR, s0, s1 + 1);
    assert!(red > 0, "highlighted bars not drawn");
    let columns: Vec<usize> =
        (0..img.width).filter(|&x| (s0..=s1).any(|y| img.is(x, y, ACC_BAR))).collect();
    let seen_span = (columns.last().unwrap() - columns[0] + 1) as f64;
    let span = acc.last().map(|r| r[0] + r[2]).unwrap() - acc[0][0];
    assert!((seen_span - span).abs() <= 3.0, "bars span {seen_span} px, SVG {span}");
    println!(
        "{LAYERS} layers: chromium took {:.2} s; {blue} blue px (SVG area {:.0}), {red} red px, \
         bars span {seen_span} px (SVG {span:.1})",
        shot.took.as_secs_f64(),
        area(&acc)
    );
    shot.done();
}

// The tune report's colours (precision map cells, the front's points, the chosen ring).
const P_INT4: [u8; 3] = [0xb0, 0x7a, 0xa1];
const P_INT16: [u8; 3] = [0xf2, 0x8e, 0x2b];
const PT_OTHER: [u8; 3] = [0xba, 0xc4, 0xce];

/// A `lowbit tune` report with `n` layers (a third int4, a quarter int16, the rest int8) and
/// ten configurations, four of them on the front.
fn tune_report(n: usize) -> TuneReport {
    let p = |i: usize| match i % 12 {
        0..=3 => Precision::Int4,
        4..=6 => Precision::Int16,
        _ => Precision::Int8,
    };
    let nodes = (0..n)
        .map(|i| NodeChoice {
            node: format!("/layer{i}/Conv"),
            op_type: "Conv".into(),
            weight_values: 1000 + 10 * i as u64,
            sqnr_db: 20.0 + i as f64 * 0.1,
            output_sqnr_db: 30.0 + i as f64 * 0.2,
            rank: i,
            precision: p(i),
        })
        .collect();
    // (bytes, metric): the front is 1, 3, 6, 0; the others lie below it.
    let points = [
        (40.0, 80.0),
        (10.0, 20.0),
        (14.0, 30.0),
        (15.0, 70.0),
        (22.0, 60.0),
        (25.0, 65.0),
        (20.0, 79.5),
        (30.0, 75.0),
        (35.0, 78.0),
        (18.0, 50.0),
    ];
    let evaluated = points
        .iter()
        .enumerate()
        .map(|(id, &(mb, metric))| Evaluated {
            id,
            label: if id == 0 { "FP32 model".into() } else { format!("configuration {id}") },
            metric,
            drop: 80.0 - metric,
            drop_se: Some(0.5),
            p_within: if 80.0 - metric <= 1.0 { 0.9 } else { 0.1 },
            bytes: (mb * 1e6) as u64,
            latency_ms: None,
            meets_budget: 80.0 - metric <= 1.0,
            precisions: Default::default(),
        })
        .collect();
    TuneReport {
        format: lowbit_eval::tune::FORMAT,
        model: "model.onnx".into(),
        output: "logits".into(),
        metric: Metric::Top1,
        against: "labels".into(),
        objective: Objective::Size,
        max_drop: 1.0,
        confidence_level: 0.5,
        candidates: vec![Precision::Int4, Precision::Int8, Precision::Int16],
        strategy: "bisect",
        threads: 1,
        search_samples: 100,
        held_out_samples: 100,
        reference_metric: 80.0,
        evaluated,
        pareto: vec![1, 3, 6, 0],
        int4_rounding: None,
        chosen: Some(6),
        nodes,
        held_out: vec![HeldOutScore {
            id: 0,
            metric: 81.0,
            drop: 0.0,
            drop_interval: Some(0.0),
            p_within: 1.0,
        }],
        confidence: "confident".into(),
        cut_short: false,
        seconds: 1.0,
    }
}

/// `lowbit tune --report`: the Pareto chart's points and the per-layer precision map drawn.
#[test]
fn chromium_draws_the_tune_reports_front_and_precision_map() {
    const LAYERS: usize = 48;
    let r = tune_report(LAYERS);
    let Some(shot) = Shot::of("tune", render_tune_html(&r)) else { return };
    let (html, img) = (&shot.html, &shot.img);
    assert_eq!(html.matches("<circle class=\"pt front\"").count(), r.pareto.len());
    assert_eq!(html.matches("<circle class=\"pt\"").count(), r.evaluated.len() - r.pareto.len());

    // The grey off-front dots: about a disc of radius 4 each (6 of them), in the chart.
    let (g0, g1) = img.rows_with(PT_OTHER, 1).expect("no off-front point drawn");
    let grey = img.count(PT_OTHER, g0, g1 + 1);
    let disc = std::f64::consts::PI * 16.0;
    assert_close("off-front points", grey, disc * 6.0, 0.35);

    // The precision map below the chart: one 14x22 cell per layer in its colour (the legend's
    // 11 px swatches are left out by asking rows with at least 12 px of the colour).
    let cell = 14.0 * 22.0;
    let count = |want: Precision| r.nodes.iter().filter(|n| n.precision == want).count() as f64;
    for (colour, precision) in [(P_INT4, Precision::Int4), (P_INT16, Precision::Int16)] {
        let (c0, c1) = img.rows_with(colour, 12).unwrap_or_else(|| panic!("no {precision} cells"));
        assert!(c0 > g1, "{precision} cells (rows {c0}..{c1}) above the chart's points ({g1})");
        let px = img.count(colour, c0, c1 + 1);
        assert_close(&format!("{precision} cells"), px, cell * count(precision), 0.12);
    }
    println!(
        "tune report: chromium took {:.2} s; {grey} grey px of 6 off-front points, \
         precision cells checked for {LAYERS} layers",
        shot.took.as_secs_f64()
    );
    shot.done();
}
