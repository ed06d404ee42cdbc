//! `lowbit serve MODEL --port P`: the model behind a small HTTP/1 server (axum on tokio).
//!
//! * `POST /v1/run`: a JSON body `{"inputs": {"NAME": VALUE, ...}}`, each `VALUE` a nested
//!   array (its shape is the nesting) or `{"shape": [...], "data": [...]}` (data flat or
//!   nested), numbers cast to the input's element type; or a `.npy` body
//!   (`Content-Type: application/x-npy` or `application/octet-stream`) for input `?input=NAME`
//!   (default: the model's only input), taken as it is. The answer is
//!   `{"outputs": {"NAME": {"dtype", "shape", "data"}}, "latency_ms", "samples", "flagged",
//!   "rerun"}` (`data` flat, row-major). A bad input name, shape, element type or body is a
//!   400 with `{"error": "..."}` naming it; a node that fails on the input, 422.
//! * `GET /metrics`: Prometheus text format: requests by status, a latency histogram, samples,
//!   and per quantized activation the values at a saturating code, the samples whose
//!   saturation passed calibration's by the threshold (`--adaptive-threshold`), the drift
//!   (PSI of the dequantized codes against the calibration histogram the quantizer stored in
//!   the model) and a 0/1 drift flag, as `lowbit monitor` decides it.
//! * `GET /v1/model`: inputs and outputs; `GET /health`: `ok`.
//!
//! The session always watches the quantized activations' integer codes (the engine's adaptive
//! watch, [`lowbit_engine::adaptive`]); with `--adaptive` the flagged samples are also re-run
//! on the float path (or `--adaptive-fallback`). Runs happen on tokio's blocking pool, each
//! on the session's own worker threads. The first line on stdout is
//! `listening on http://ADDR` (with `--port 0`, the port the system chose).

use crate::cli::ServeArgs;
use crate::models::{adaptive_options, load_model, session_with};
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lowbit_engine::adaptive::{quantized_activations, AdaptiveStats, QuantizedActivation};
use lowbit_engine::{EngineError, Session, SessionOptions};
use lowbit_eval::monitor::{psi, MonitorOptions};
use lowbit_quant::calibrate::{CalibrationRecord, Histogram};
use lowbit_tensor::{npy, DType, Tensor};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Latency histogram bucket bounds, seconds (Prometheus' defaults, finer below 5 ms).
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub fn serve(args: ServeArgs, quiet: bool) -> Result<()> {
    let model = load_model(&args.model)?;
    let mut adaptive =
        adaptive_options(&model, &args.model, &args.adaptive, quiet || !args.adaptive.adaptive)?;
    adaptive.rerun = args.adaptive.adaptive;
    adaptive.code_counts = true;
    let opts =
        SessionOptions { adaptive: Some(adaptive), ..SessionOptions::with_threads(args.threads) };
    let session = session_with(&model, &args.model, &opts)?;
    let record = match CalibrationRecord::stored(&model) {
        Some(Ok(r)) => Some(r),
        _ => None,
    };
    let tensors: Vec<Watched> = quantized_activations(&model)
        .into_iter()
        .filter(|q| session.adaptive_watched().is_some_and(|w| w.contains(&q.tensor.as_str())))
        .map(|act| {
            // Served values are codes: compared with calibration's values as the range clips
            // them (a conv output quantized over its ReLU's range has no negative codes).
            let (lo, hi) = act.range();
            let calibration = record
                .as_ref()
                .and_then(|r| r.tensors.get(&act.tensor))
                .and_then(|t| Some((t.histogram()?.clamped(lo, hi), t.saturation)));
            Watched { act, calibration }
        })
        .collect();
    drop(model);
    let state = Arc::new(Served {
        session,
        tensors,
        monitor: MonitorOptions::default(),
        metrics: Mutex::new(Metrics::default()),
        adaptive: args.adaptive.adaptive,
    });
    let app = Router::new()
        .route("/v1/run", post(run))
        .route("/v1/model", get(model_info))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(args.max_body_mb * 1024 * 1024))
        .with_state(state);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .context("cannot start the server's runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        // Scripts (and the tests) read the port from this line.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
        drop(out);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the server stopped")
    })
}

/// A quantized activation the session watches, and what calibration saw of it.
struct Watched {
    act: QuantizedActivation,
    /// The calibration histogram and saturation share, when the model carries its record.
    calibration: Option<(Histogram, f64)>,
}

struct Served {
    session: Session,
    tensors: Vec<Watched>,
    monitor: MonitorOptions,
    metrics: Mutex<Metrics>,
    adaptive: bool,
}

#[derive(Default)]
struct Metrics {
    /// Requests by HTTP status.
    requests: BTreeMap<u16, u64>,
    /// Run latency: counts per bucket (not cumulative), sum and count.
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Metrics {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// An error answer: the status and a message naming what was wrong.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, msg.into())
}

#[derive(Deserialize)]
struct RunQuery {
    input: Option<String>,
}

async fn run(
    State(s): State<Arc<Served>>,
    Query(q): Query<RunQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let served = s.clone();
    let res = tokio::task::spawn_blocking(move || answer(&served, q, &headers, &body)).await;
    let resp = match res {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(f)) => f.into_response(),
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("the run failed: {e}"))
            .into_response(),
    };
    if let Ok(mut m) = s.metrics.lock() {
        *m.requests.entry(resp.status().as_u16()).or_default() += 1;
    }
    resp
}

fn answer(s: &Served, q: RunQuery, headers: &HeaderMap, body: &[u8]) -> Result<Value, Failure> {
    let inputs = s.session.inputs();
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let feeds: Vec<(String, Tensor)> = if ctype.starts_with("application/x-npy")
        || ctype.starts_with("application/octet-stream")
    {
        let name = match (q.input, inputs.as_slice()) {
            (Some(n), _) => n,
            (None, [only]) => only.name.clone(),
            (None, _) => {
                return Err(bad(format!(
                    "a .npy body feeds one input: name it with ?input=NAME (inputs: {})",
                    names(&inputs)
                )))
            }
        };
        let t = npy::decode_npy(body, "the request body").map_err(|e| bad(e.to_string()))?;
        vec![(name, t)]
    } else if ctype.is_empty() || ctype.starts_with("application/json") {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
        let Some(obj) = v.get("inputs").and_then(Value::as_object) else {
            return Err(bad(format!(
                "expected {{\"inputs\": {{\"NAME\": [...]}}}} (inputs: {})",
                names(&inputs)
            )));
        };
        let mut feeds = Vec::with_capacity(obj.len());
        for (name, value) in obj {
            let dtype = inputs
                .iter()
                .find(|i| i.name == *name)
                .map(|i| i.dtype.unwrap_or(DType::F32))
                .ok_or_else(|| {
                    bad(format!("unknown input '{name}' (inputs: {})", names(&inputs)))
                })?;
            feeds.push((name.clone(), json_tensor(name, value, dtype)?));
        }
        feeds
    } else {
        return Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type '{ctype}': send application/json or application/x-npy"),
        ));
    };
    let before = s.session.adaptive_stats().unwrap_or_default();
    let t0 = Instant::now();
    let out = s.session.run(feeds).map_err(|e| {
        let status = match &e {
            EngineError::MissingInput { .. }
            | EngineError::UnknownInput { .. }
            | EngineError::InputDType { .. }
            | EngineError::InputShape { .. } => StatusCode::BAD_REQUEST,
            EngineError::Node { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, e.to_string())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    if let Ok(mut m) = s.metrics.lock() {
        m.observe(secs);
    }
    // Concurrent requests may interleave: these per-request counts are approximate then.
    let after = s.session.adaptive_stats().unwrap_or_default();
    let mut outputs = Map::new();
    for (name, t) in out {
        let data = tensor_json(&t).map_err(|e| {
            Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("output '{name}': {e}"))
        })?;
        outputs
            .insert(name, json!({ "dtype": t.dtype().name(), "shape": t.shape(), "data": data }));
    }
    Ok(json!({
        "outputs": outputs,
        "latency_ms": secs * 1e3,
        "samples": after.samples - before.samples,
        "flagged": after.flagged - before.flagged,
        "rerun": after.rerun - before.rerun,
    }))
}

fn names(inputs: &[&lowbit_engine::InputSpec]) -> String {
    inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// A JSON value as input `name`'s tensor: a nested array, or `{"shape", "data"}`.
fn json_tensor(name: &str, v: &Value, dtype: DType) -> Result<Tensor, Failure> {
    let (shape, flat) = match v {
        Value::Object(o) => {
            let shape: Vec<usize> = o
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| bad(format!("input '{name}': \"shape\" must be a list of sizes")))?;
            let data =
                o.get("data").ok_or_else(|| bad(format!("input '{name}': \"data\" is missing")))?;
            let mut flat = Vec::new();
            let mut inner = Vec::new();
            nested(name, data, 0, &mut inner, &mut flat)?;
            let n: usize = shape.iter().product();
            if flat.len() != n {
                return Err(bad(format!(
                    "input '{name}': shape {shape:?} holds {n} values, \"data\" has {}",
                    flat.len()
                )));
            }
            (shape, flat)
        }
        _ => {
            let mut flat = Vec::new();
            let mut shape = Vec::new();
            nested(name, v, 0, &mut shape, &mut flat)?;
            (shape, flat)
        }
    };
    let t = Tensor::from_vec(shape, flat).map_err(|e| bad(format!("input '{name}': {e}")))?;
    t.cast(dtype).map_err(|e| bad(format!("input '{name}': as {dtype}: {e}")))
}

/// Walks a nested array: `shape` gets each level's length (checked equal across siblings),
/// `flat` the numbers in row-major order.
fn nested(
    name: &str,
    v: &Value,
    depth: usize,
    shape: &mut Vec<usize>,
    flat: &mut Vec<f64>,
) -> Result<(), Failure> {
    match v {
        Value::Array(a) => {
            match shape.get(depth) {
                None => shape.push(a.len()),
                Some(&n) if n != a.len() => {
                    return Err(bad(format!(
                        "input '{name}': ragged array: {} and {n} elements at depth {depth}",
                        a.len()
                    )))
                }
                _ => {}
            }
            for x in a {
                nested(name, x, depth + 1, shape, flat)?;
            }
            Ok(())
        }
        Value::Number(n) if shape.len() == depth => {
            flat.push(n.as_f64().unwrap_or(f64::NAN));
            Ok(())
        }
        Value::Bool(b) if shape.len() == depth => {
            flat.push(f64::from(u8::from(*b)));
            Ok(())
        }
        _ => Err(bad(format!(
            "input '{name}': expected numbers in nested lists of equal length, found {v} at depth \
             {depth}"
        ))),
    }
}

/// A tensor's values as a flat JSON list.
fn tensor_json(t: &Tensor) -> Result<Value, String> {
    Ok(match t.dtype() {
        DType::F32 => json!(t.as_f32().map_err(|e| e.to_string())?),
        d if d.is_integer() || d == DType::Bool => {
            json!(t.to_i64_vec().map_err(|e| e.to_string())?)
        }
        _ => json!(t.to_f64_vec().map_err(|e| e.to_string())?),
    })
}

async fn model_info(State(s): State<Arc<Served>>) -> axum::Json<Value> {
    let inputs: Vec<Value> = s
        .session
        .inputs()
        .iter()
        .map(|i| {
            json!({
                "name": i.name,
                "dtype": i.dtype.map(DType::name),
                "shape": i.shape_text(),
            })
        })
        .collect();
    axum::Json(json!({
        "inputs": inputs,
        "outputs": s.session.output_names(),
        "quantized_tensors": s.tensors.len(),
        "adaptive": s.adaptive,
    }))
}

async fn metrics(State(s): State<Arc<Served>>) -> Response {
    let text = prometheus(&s);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// One `/metrics` sample of a watched tensor from its PSI and drift flag (`None`: no sample).
type TensorSample<'a> = dyn Fn(&Watched, Option<f64>, bool) -> Option<String> + 'a;

/// Prometheus label value escaping: backslash, quote and newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Per watched tensor: its PSI against calibration (the codes dequantized onto the calibration
/// histogram's grid) and whether it drifts, as `lowbit monitor` decides (PSI past the
/// threshold, or saturation past calibration's by the clip threshold).
fn drift(s: &Served, stats: &AdaptiveStats, w: &Watched) -> (Option<f64>, bool) {
    let sat = stats.saturation.get(&w.act.tensor).copied().unwrap_or_default();
    let Some((hist, base)) = &w.calibration else { return (None, false) };
    let psi = stats.codes.get(&w.act.tensor).and_then(|codes| {
        let mut h = hist.empty_on_grid();
        for (i, &n) in codes.iter().enumerate() {
            let code = w.act.qmin + i as i32;
            h.observe_repeated_on_grid((code - w.act.zero_point) as f32 * w.act.scale, n);
        }
        psi(hist.counts(), h.counts())
    });
    let share = sat.saturated as f64 / sat.values.max(1) as f64;
    let drifted = psi.is_some_and(|p| p > s.monitor.psi)
        || (*base < s.monitor.clip_rate && share - base > s.monitor.clip_rate);
    (psi, drifted)
}

fn prometheus(s: &Served) -> String {
    let stats = s.session.adaptive_stats().unwrap_or_default();
    let mut o = String::new();
    let m = s.metrics.lock().map(|m| (m.requests.clone(), m.buckets, m.sum, m.count));
    let (requests, buckets, sum, count) = m.unwrap_or_default();
    let _ = writeln!(o, "# HELP lowbit_requests_total Run requests answered, by HTTP status.");
    let _ = writeln!(o, "# TYPE lowbit_requests_total counter");
    for (code, n) in &requests {
        let _ = writeln!(o, "lowbit_requests_total{{code=\"{code}\"}} {n}");
    }
    let _ = writeln!(o, "# HELP lowbit_run_duration_seconds Time the model took per request.");
    let _ = writeln!(o, "# TYPE lowbit_run_duration_seconds histogram");
    let mut cumulative = 0;
    for (b, n) in BUCKETS.iter().zip(buckets) {
        cumulative += n;
        let _ = writeln!(o, "lowbit_run_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(o, "lowbit_run_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(o, "lowbit_run_duration_seconds_sum {sum}");
    let _ = writeln!(o, "lowbit_run_duration_seconds_count {count}");
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(&mut o, "lowbit_samples_total", "Samples run (rows of batched inputs).", stats.samples);
    counter(
        &mut o,
        "lowbit_flagged_samples_total",
        "Samples whose saturation passed calibration's by the threshold.",
        stats.flagged,
    );
    counter(
        &mut o,
        "lowbit_rerun_samples_total",
        "Samples re-run at higher precision (--adaptive).",
        stats.rerun,
    );

    let rows: Vec<(&Watched, Option<f64>, bool)> = s
        .tensors
        .iter()
        .map(|w| {
            let (p, d) = drift(s, &stats, w);
            (w, p, d)
        })
        .collect();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    // One family with a sample per tensor that has a value (`None`: the tensor is left out).
    let per_tensor =
        |o: &mut String, (name, kind, help): (&str, &str, &str), value: &TensorSample<'_>| {
            family(o, name, kind, help);
            for &(w, p, d) in &rows {
                if let Some(v) = value(w, p, d) {
                    let _ = writeln!(o, "{name}{{tensor=\"{}\"}} {v}", label(&w.act.tensor));
                }
            }
        };
    let saturation = |w: &Watched| stats.saturation.get(&w.act.tensor).copied().unwrap_or_default();
    per_tensor(
        &mut o,
        ("lowbit_tensor_values_total", "counter", "Values of each quantized activation."),
        &|w, _, _| Some(saturation(w).values.to_string()),
    );
    per_tensor(
        &mut o,
        (
            "lowbit_tensor_saturated_values_total",
            "counter",
            "Values of each quantized activation at a saturating integer code.",
        ),
        &|w, _, _| Some(saturation(w).saturated.to_string()),
    );
    per_tensor(
        &mut o,
        (
            "lowbit_tensor_calibration_saturation_ratio",
            "gauge",
            "Share of calibration values at a saturating code.",
        ),
        &|w, _, _| w.calibration.as_ref().map(|c| c.1.to_string()),
    );
    per_tensor(
        &mut o,
        (
            "lowbit_tensor_flagged_samples_total",
            "counter",
            "Samples this tensor flagged (saturation past calibration's by the threshold).",
        ),
        &|w, _, _| Some(stats.triggers.get(&w.act.tensor).copied().unwrap_or(0).to_string()),
    );
    per_tensor(
        &mut o,
        (
            "lowbit_tensor_psi",
            "gauge",
            "Population stability index of the served values against calibration.",
        ),
        &|_, p, _| p.map(|p| p.to_string()),
    );
    per_tensor(
        &mut o,
        ("lowbit_tensor_drift", "gauge", "1 when this tensor drifted from calibration."),
        &|_, _, d| Some(u8::from(d).to_string()),
    );
    let any = rows.iter().any(|(_, _, d)| *d);
    family(&mut o, "lowbit_drift", "gauge", "1 when any quantized activation drifted.");
    let _ = writeln!(o, "lowbit_drift {}", u8::from(any));
    o
}
