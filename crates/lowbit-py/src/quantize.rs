//! `quantize(...)`: the command line's `lowbit quantize`, for Python. The samples come from a
//! `CalibrationDataReader` ([`crate::reader`]) or a `data=` path; the quantizer is
//! [`quantize_run`] on the resolved [`QuantPlan`], and static models pass the validation gate
//! ([`lowbit_eval::validate`]) before they are written: on held-back samples of a `data=` path
//! (the ones after `samples`), on the reader's last batches (a reader has no others).

use crate::data::{load, unfused_session, DataOptions};
use crate::errors::{to_py, with_context, LowbitError, ValidationError};
use crate::reader::{ReaderSource, DEFAULT_MEMORY_BUDGET};
use lowbit_eval::validate::{validate_models, Floor, Validation};
use lowbit_onnx::pb::ModelProto;
use lowbit_quant::calibrate::dataset::DatasetBatches;
use lowbit_quant::config::{AdaRoundOptions, Algorithms, BiasCorrection};
use lowbit_quant::passes::Exclusions;
use lowbit_quant::quantize::{
    parse_int_type, quantize_run, QuantMode, QuantPlan, QuantizeConfig, QuantizeInputs,
    QuantizeSummary, DEFAULT_MIN_ACTIVATION_SQNR,
};
use lowbit_quant::samples::{NoProgress, SampleSource};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The validation gate's outcome: what it saw, and the layers that lost most when it failed.
struct Gate {
    validation: Validation,
    held_back: bool,
    worst: Vec<String>,
}

/// Runs the gate on `samples` (see the module docs).
fn gate(
    fp32: &ModelProto,
    q: &ModelProto,
    samples: &mut dyn SampleSource,
    floor: Floor,
    threads: usize,
    held_back: bool,
) -> lowbit_quant::error::Result<Gate> {
    let validation = validate_models(fp32, q, samples, floor, threads)?;
    let worst = validation
        .worst_layers
        .iter()
        .map(|l| format!("{} ({}): {:.1} dB, {}", l.node, l.op_type, l.sqnr_db, l.hint))
        .collect();
    Ok(Gate { validation, held_back, worst })
}

/// What Python passes besides the model paths and the samples.
#[allow(clippy::too_many_arguments)]
fn config(
    model: &ModelProto,
    mode: &str,
    method: &str,
    per_channel: bool,
    target: &str,
    activations: Option<&str>,
    weights: &str,
    reduce_range: Option<bool>,
    block_size: Option<usize>,
    int4_ends: bool,
    min_sqnr: f64,
    exclude: &[String],
    quantize_op_types: Option<Vec<String>>,
    quantize_nodes: Option<Vec<String>>,
    algorithms: Algorithms,
) -> PyResult<QuantizeConfig> {
    let mut exclude = Exclusions::parse(exclude);
    let nodes = model.graph.as_ref().map_or(&[][..], |g| &g.node[..]);
    // ONNX Runtime names what to quantize; lowbit what to leave: the complement in this model.
    if let Some(ops) = quantize_op_types {
        let present: BTreeSet<&str> = nodes.iter().map(|n| n.op_type.as_str()).collect();
        exclude
            .op_types
            .extend(present.into_iter().filter(|o| !ops.iter().any(|x| x == o)).map(String::from));
    }
    if let Some(names) = quantize_nodes {
        exclude
            .node_names
            .extend(nodes.iter().filter(|n| !names.contains(&n.name)).map(|n| n.name.clone()));
    }
    let cfg = QuantizeConfig {
        mode: mode.parse().map_err(to_py)?,
        method: method.parse().map_err(to_py)?,
        target: target.parse().map_err(to_py)?,
        activations: activations.map(parse_int_type).transpose().map_err(to_py)?,
        weights: parse_int_type(weights).map_err(to_py)?,
        per_channel,
        block_size,
        int8_ends: int4_ends.then_some(false),
        reduce_range,
        min_activation_sqnr: (min_sqnr > 0.0).then_some(min_sqnr),
        exclude,
        algorithms,
        ..QuantizeConfig::default()
    };
    cfg.validate().map_err(|e| PyValueError::new_err(crate::errors::message(&e)))?;
    Ok(cfg)
}

/// Quantizes `model_input` into `model_output` (see the Python docstring of
/// `lowbit.quantize_static` for the arguments); returns the summary as JSON.
#[pyfunction]
#[pyo3(signature = (
    model_input, model_output, mode = "static", reader = None, data = None, *,
    preprocess = None, tokenizer = None, text_field = None, samples = None,
    method = "minmax", per_channel = true, target = "auto", activations = None,
    weights = "int8", reduce_range = None, block_size = None, int4_ends = false,
    min_sqnr = DEFAULT_MIN_ACTIVATION_SQNR, exclude = Vec::new(), quantize_op_types = None,
    quantize_nodes = None, equalize = false, smooth_quant = None, bias_correction = None,
    adaround = false, validate = 32, min_output_sqnr = Floor::DEFAULT_SQNR_DB,
    allow_degraded = false, allow_partial = false, threads = 0,
    memory_budget = DEFAULT_MEMORY_BUDGET,
))]
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    py: Python<'_>,
    model_input: PathBuf,
    model_output: PathBuf,
    mode: &str,
    reader: Option<Py<PyAny>>,
    data: Option<PathBuf>,
    preprocess: Option<String>,
    tokenizer: Option<PathBuf>,
    text_field: Option<String>,
    samples: Option<usize>,
    method: &str,
    per_channel: bool,
    target: &str,
    activations: Option<String>,
    weights: &str,
    reduce_range: Option<bool>,
    block_size: Option<usize>,
    int4_ends: bool,
    min_sqnr: f64,
    exclude: Vec<String>,
    quantize_op_types: Option<Vec<String>>,
    quantize_nodes: Option<Vec<String>>,
    equalize: bool,
    smooth_quant: Option<f32>,
    bias_correction: Option<String>,
    adaround: bool,
    validate: usize,
    min_output_sqnr: f64,
    allow_degraded: bool,
    allow_partial: bool,
    threads: usize,
    memory_budget: usize,
) -> PyResult<String> {
    if model_input == model_output
        || std::fs::canonicalize(&model_input).ok() == std::fs::canonicalize(&model_output).ok()
            && model_output.exists()
    {
        return Err(PyValueError::new_err(format!(
            "model_output {} is the input model: lowbit never overwrites it",
            model_output.display()
        )));
    }
    if reader.is_some() && data.is_some() {
        return Err(PyValueError::new_err("pass a calibration_data_reader or data=, not both"));
    }
    let model = lowbit_onnx::load_model(&model_input)
        .map_err(|e| with_context("cannot load the model", e))?;
    let algorithms = Algorithms {
        equalize,
        smooth_quant,
        adaround: adaround.then(AdaRoundOptions::default),
        bias_correction: match bias_correction.as_deref() {
            None => None,
            Some("analytic") => Some(BiasCorrection::Analytic),
            Some("empirical") => Some(BiasCorrection::Empirical),
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "bias_correction '{other}': expected 'empirical' or 'analytic'"
                )))
            }
        },
    };
    let cfg = config(
        &model,
        mode,
        method,
        per_channel,
        target,
        activations.as_deref(),
        weights,
        reduce_range,
        block_size,
        int4_ends,
        min_sqnr,
        &exclude,
        quantize_op_types,
        quantize_nodes,
        algorithms,
    )?;
    let plan = QuantPlan::resolve(&cfg).map_err(to_py)?;
    let static_mode = plan.mode == QuantMode::Static;
    if static_mode && reader.is_none() && data.is_none() {
        return Err(PyValueError::new_err(
            "static quantization needs calibration samples: pass a calibration_data_reader or \
             data=PATH, or use quantize_dynamic",
        ));
    }
    let opts = DataOptions { preprocess, tokenizer, text_field, ..DataOptions::default() };
    let format = opts.format()?;
    let floor = Floor { min_sqnr_db: min_output_sqnr, ..Floor::default() };
    let fp32 = (static_mode && validate > 0).then(|| model.clone());

    // The work, without the GIL (a reader's get_next() takes it back for each call).
    let mut reader_source = reader.map(|r| ReaderSource::new(r, memory_budget));
    let result = py.detach(|| -> PyResult<(ModelProto, QuantizeSummary, Option<Gate>)> {
        let quantized = match (static_mode, &mut reader_source, &data) {
            (false, _, _) => quantize_run(model, &plan, QuantizeInputs::table(None)),
            (true, Some(src), _) => {
                let inputs = QuantizeInputs {
                    table: None,
                    samples: Some(src),
                    threads,
                    progress: &NoProgress,
                };
                quantize_run(model, &plan, inputs)
            }
            (true, None, Some(path)) => {
                let session = unfused_session(&model, &model_input, threads)?;
                let mut batches =
                    DatasetBatches::new(load(&session, &format, path, samples)?, true);
                drop(session);
                let inputs = QuantizeInputs {
                    table: None,
                    samples: Some(&mut batches),
                    threads,
                    progress: &NoProgress,
                };
                quantize_run(model, &plan, inputs)
            }
            (true, None, None) => unreachable!("checked above"),
        };
        let (q, summary) = quantized
            .map_err(|e| with_context(&format!("cannot quantize {}", model_input.display()), e))?;
        let Some(fp32) = &fp32 else { return Ok((q, summary, None)) };
        let outcome = match (&mut reader_source, &data) {
            (Some(src), _) => {
                src.read_all().map_err(to_py)?;
                let mut tail = src.tail(validate);
                gate(fp32, &q, &mut tail, floor, threads, false)
            }
            (None, Some(path)) => {
                let session = unfused_session(fp32, &model_input, threads)?;
                let all = load(&session, &format, path, None)?;
                let calibrated = samples.unwrap_or(all.samples);
                let (mut held, held_back) =
                    DatasetBatches::validation(all, true, calibrated, validate);
                gate(fp32, &q, &mut held, floor, threads, held_back)
            }
            (None, None) => return Ok((q, summary, None)),
        };
        let outcome = outcome.map_err(|e| with_context("validation run failed", e))?;
        Ok((q, summary, Some(outcome)))
    });
    // The reader's own exception, as it was raised.
    if let Some(e) = reader_source.as_mut().and_then(|r| r.error.take()) {
        return Err(e);
    }
    let (q, summary, outcome) = result?;
    let coverage = summary.coverage();
    if coverage.is_partial() && !allow_partial {
        return Err(LowbitError::new_err(format!(
            "only {coverage}\nnot written: the file would be (almost) the FP32 model; pass \
             allow_partial=True to write it anyway"
        )));
    }
    if let Some(g) = &outcome {
        if !g.validation.passed() && !allow_degraded {
            return Err(ValidationError::new_err(format!(
                "the quantized model fails validation ({}); worst layers:\n  {}\n\
                 not written: try per_channel=True, another calibrate_method, nodes_to_exclude \
                 on those layers, or allow_degraded=True to write it anyway",
                g.validation.failures.join("; "),
                g.worst.join("\n  ")
            )));
        }
    }
    py.detach(|| lowbit_onnx::save_model(&q, &model_output))
        .map_err(|e| with_context("cannot write the quantized model", e))?;
    let validation = outcome.as_ref().map(|g| {
        serde_json::json!({
            "samples": g.validation.samples,
            "held_back": g.held_back,
            "passed": g.validation.passed(),
            "lines": g.validation.lines(),
            "failures": g.validation.failures,
            "worst_layers": g.worst,
        })
    });
    let json = serde_json::json!({
        "summary": summary,
        "text": summary.to_string(),
        "validation": validation,
        "output": model_output.display().to_string(),
    });
    Ok(json.to_string())
}
