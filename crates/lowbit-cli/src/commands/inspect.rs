//! `lowbit inspect MODEL [--json]`: what a model is made of and whether lowbit can run it.
//!
//! Shows producer, IR version, opset imports, graph inputs and outputs (element type and
//! declared shape, symbolic dimensions by name), node count and op histogram of the main graph,
//! initializer parameters and bytes per element type, and the ops lowbit's engine does not
//! implement.

use crate::cli::InspectArgs;
use crate::models::load_model;
use crate::text::{human_bytes, print, thousands};
use anyhow::Result;
use lowbit_engine::Registry;
use lowbit_onnx::pb::{ModelProto, TensorProto};
use lowbit_onnx::value_info::{dtype_name, fed_inputs, ValueInfo};
use lowbit_quant::error::QuantError;
use lowbit_quant::quantize::{static_coverage, QuantPlan, QuantizeConfig};
use lowbit_tensor::DType;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Serialize)]
struct Opset {
    domain: String,
    version: i64,
}

#[derive(Serialize)]
struct OpCount {
    op_type: String,
    /// `""` for the default ONNX domain.
    domain: String,
    count: usize,
    supported: bool,
}

#[derive(Serialize)]
struct DTypeParams {
    dtype: String,
    tensors: usize,
    parameters: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    file_bytes: Option<u64>,
    producer_name: String,
    producer_version: String,
    ir_version: i64,
    opsets: Vec<Opset>,
    graph_name: String,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    nodes: usize,
    ops: Vec<OpCount>,
    initializers: usize,
    parameters: u64,
    parameter_bytes: u64,
    parameters_by_dtype: Vec<DTypeParams>,
    /// Op types lowbit's engine does not implement (domain-qualified outside `ai.onnx`).
    unsupported_ops: Vec<String>,
    /// What static int8 quantization with the default settings would cover; `None` for a model
    /// that is already quantized.
    quantizable: Option<Quantizable>,
    /// Why the dry run behind `quantizable` failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    quantizable_error: Option<String>,
}

#[derive(Serialize)]
struct Quantizable {
    /// Weighted nodes (Conv, ConvTranspose, Gemm, MatMul, Einsum, LSTM, GRU, RNN).
    weighted: usize,
    /// Of those, quantized by `quantize` with the default settings.
    quantized: usize,
    /// Why the others are not, most frequent first.
    not_quantized: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    nodes: usize,
    cause: String,
}

/// A dry run of default static quantization (no data needed): how many weighted nodes it
/// quantizes and why not the rest.
fn quantizable(model: &ModelProto) -> Result<Option<Quantizable>> {
    let plan = QuantPlan::resolve(&QuantizeConfig::default())?;
    let c = match static_coverage(model.clone(), &plan) {
        Err(QuantError::AlreadyQuantized(_)) => return Ok(None),
        c => c?,
    };
    Ok(Some(Quantizable {
        weighted: c.weighted,
        quantized: c.quantized,
        not_quantized: c.causes.into_iter().map(|(nodes, cause)| Cause { nodes, cause }).collect(),
    }))
}

/// Elements and bytes of an initializer as stored.
fn tensor_size(t: &TensorProto) -> (u64, u64) {
    let n: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
    match DType::from_onnx(t.data_type) {
        Some(DType::String) => (n, t.string_data.iter().map(|s| s.len() as u64).sum()),
        Some(d) => (n, (n * d.bits() as u64).div_ceil(8)),
        None => (n, t.raw_data.len() as u64),
    }
}

fn qualified(op: &str, domain: &str) -> String {
    if domain.is_empty() || domain == "ai.onnx" {
        op.to_string()
    } else {
        format!("{domain}.{op}")
    }
}

fn report(path: &str, file_bytes: Option<u64>, model: &ModelProto) -> Report {
    let graph = model.graph.clone().unwrap_or_default();
    let registry = Registry::with_all_ops();
    let mut hist: BTreeMap<(String, String), usize> = BTreeMap::new();
    for n in &graph.node {
        *hist.entry((n.domain.clone(), n.op_type.clone())).or_default() += 1;
    }
    let mut ops: Vec<OpCount> = hist
        .into_iter()
        .map(|((domain, op_type), count)| OpCount {
            supported: registry.supports(&domain, &op_type),
            op_type,
            domain,
            count,
        })
        .collect();
    ops.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.op_type.cmp(&b.op_type)));
    let unsupported_ops =
        ops.iter().filter(|o| !o.supported).map(|o| qualified(&o.op_type, &o.domain)).collect();

    let mut by_dtype: BTreeMap<String, DTypeParams> = BTreeMap::new();
    for t in &graph.initializer {
        let (n, bytes) = tensor_size(t);
        let name = dtype_name(t.data_type).to_string();
        let e = by_dtype.entry(name.clone()).or_insert(DTypeParams {
            dtype: name,
            tensors: 0,
            parameters: 0,
            bytes: 0,
        });
        e.tensors += 1;
        e.parameters += n;
        e.bytes += bytes;
    }
    let mut parameters_by_dtype: Vec<DTypeParams> = by_dtype.into_values().collect();
    parameters_by_dtype.sort_by_key(|d| std::cmp::Reverse(d.bytes));

    let (quantizable, quantizable_error) = match quantizable(model) {
        Ok(q) => (q, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Report {
        model: path.to_string(),
        file_bytes,
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        ir_version: model.ir_version,
        opsets: model
            .opset_import
            .iter()
            .map(|o| Opset {
                domain: if o.domain.is_empty() { "ai.onnx".into() } else { o.domain.clone() },
                version: o.version,
            })
            .collect(),
        graph_name: graph.name.clone(),
        inputs: fed_inputs(&graph),
        outputs: graph.output.iter().map(ValueInfo::from_proto).collect(),
        nodes: graph.node.len(),
        ops,
        initializers: graph.initializer.len(),
        parameters: parameters_by_dtype.iter().map(|d| d.parameters).sum(),
        parameter_bytes: parameters_by_dtype.iter().map(|d| d.bytes).sum(),
        parameters_by_dtype,
        unsupported_ops,
        quantizable,
        quantizable_error,
    }
}

fn text(r: &Report) -> String {
    let mut s = String::new();
    let size = r.file_bytes.map(|b| format!(" ({})", human_bytes(b))).unwrap_or_default();
    let _ = writeln!(s, "model        {}{size}", r.model);
    let producer = format!("{} {}", r.producer_name, r.producer_version);
    let _ = writeln!(
        s,
        "producer     {}",
        if producer.trim().is_empty() { "-" } else { producer.trim() }
    );
    let _ = writeln!(s, "ir version   {}", r.ir_version);
    let opsets: Vec<String> =
        r.opsets.iter().map(|o| format!("{} {}", o.domain, o.version)).collect();
    let _ = writeln!(s, "opsets       {}", opsets.join(", "));
    if !r.graph_name.is_empty() {
        let _ = writeln!(s, "graph        {}", r.graph_name);
    }
    for (title, values) in [("inputs", &r.inputs), ("outputs", &r.outputs)] {
        let _ = writeln!(s, "{title} ({})", values.len());
        let w = values.iter().map(|v| v.name.len()).max().unwrap_or(0);
        for v in values {
            let _ = writeln!(s, "  {:w$}  {} {}", v.name, v.dtype, v.shape_text());
        }
    }
    let _ = writeln!(s, "nodes        {}", r.nodes);
    let _ = writeln!(s, "ops ({} types)", r.ops.len());
    let names: Vec<String> = r.ops.iter().map(|o| qualified(&o.op_type, &o.domain)).collect();
    let w = names.iter().map(String::len).max().unwrap_or(0);
    for (o, name) in r.ops.iter().zip(&names) {
        let flag = if o.supported { "" } else { "  unsupported" };
        let _ = writeln!(s, "  {name:w$}  {:>5}{flag}", o.count);
    }
    let _ = writeln!(
        s,
        "parameters   {} in {} initializers, {}",
        thousands(r.parameters),
        r.initializers,
        human_bytes(r.parameter_bytes)
    );
    for d in &r.parameters_by_dtype {
        let _ = writeln!(
            s,
            "  {:12} {:>14}  {:>11}  ({} tensors)",
            d.dtype,
            thousands(d.parameters),
            human_bytes(d.bytes),
            d.tensors
        );
    }
    if r.unsupported_ops.is_empty() {
        let _ = writeln!(s, "unsupported  none: lowbit's engine implements every op");
    } else {
        let _ = writeln!(
            s,
            "unsupported  {} (lowbit's engine cannot run this model yet)",
            r.unsupported_ops.join(", ")
        );
    }
    if let Some(q) = &r.quantizable {
        let _ = writeln!(
            s,
            "quantizable  {} of {} weighted nodes by static int8 (default settings)",
            q.quantized, q.weighted
        );
        for c in &q.not_quantized {
            let _ = writeln!(s, "  {:>5} not: {}", c.nodes, c.cause);
        }
    }
    if let Some(e) = &r.quantizable_error {
        let _ = writeln!(s, "quantizable  unknown: {e}");
    }
    s
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let model = load_model(&args.model)?;
    let file_bytes = std::fs::metadata(&args.model).ok().map(|m| m.len());
    let r = report(&args.model.display().to_string(), file_bytes, &model);
    if args.json.on {
        print(&(serde_json::to_string_pretty(&r)? + "\n"))
    } else {
        print(&text(&r))
    }
}
