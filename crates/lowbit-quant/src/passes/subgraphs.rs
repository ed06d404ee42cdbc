//! Quantization inside control-flow bodies (`If` branches, `Loop` and `Scan` bodies, nested to
//! any depth): each subgraph is taken out as a graph of its own, rewritten by the same pass as
//! the main graph, and put back.
//!
//! What a subgraph reads from outer scopes is made visible to the pass while it runs, then
//! taken away again, so the body keeps reading the outer value wherever it was left float:
//!
//! * outer-scope **initializers** (a `Loop` body's `MatMul` reading the main graph's weight)
//!   are lent to the subgraph as its own initializers; a quantized copy is written into the
//!   subgraph under a new name and the float original, once nothing reads it, is dropped from
//!   the outer graph by the usual unused-initializer clean-up;
//! * outer-scope **activations** are declared as inputs of the lent graph with their element
//!   type, so type inference (and so "is this a float activation") works;
//! * **calibration ranges**: the engine's observer names a subgraph value
//!   `node/attribute/value` (see `lowbit_engine::Session::run_observed`), nested scopes
//!   concatenated; the pass sees the table cut to the subgraph's scope with the prefix removed
//!   ([`scoped_table`]).
//!
//! Every name the pass makes is unique across the whole model (the outer graph's names are
//! reserved), the subgraph is normalized first (weights stored as `Constant` nodes inside a
//! body become initializers, as in the main graph) and its nodes carry the opset the model
//! was written for, so the pass's opset upgrade rewrites them as it does the main graph's. Nodes
//! the pass reports are named with their scope (`branch/then_branch/conv1`).

use super::value_dtypes;
use crate::calibrate::CalibrationTable;
use crate::error::Result;
use crate::quantize::{NodeNote, QuantizeSummary};
use lowbit_onnx::graph::{outer_reads, subgraphs, Graph};
use lowbit_onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use lowbit_tensor::DType;
use std::collections::{HashMap, HashSet};

/// What a subgraph can see of the scopes around it.
#[derive(Clone, Default)]
pub(crate) struct Outer {
    /// Initializers of the enclosing graphs (inner ones shadow outer ones).
    inits: HashMap<String, TensorProto>,
    /// Element types of the enclosing graphs' values.
    dtypes: HashMap<String, DType>,
    /// The calibration scope of the subgraph, `node/attribute/` per level.
    pub prefix: String,
    /// The scopes from the main graph's (`""`) in to this one's.
    scopes: Vec<String>,
    /// The opsets the model was written for (before the pass raised the main graph's).
    opsets: Vec<OperatorSetIdProto>,
    ir_version: i64,
}

impl Outer {
    /// The root context: nothing outside the main graph. `model` as loaded (its opsets are the
    /// ones the subgraphs' nodes were written for).
    pub fn root(model: &ModelProto) -> Outer {
        Outer {
            scopes: vec![String::new()],
            opsets: model.opset_import.clone(),
            ir_version: model.ir_version,
            ..Default::default()
        }
    }
}

/// A rewrite of one graph: the graph (main graph or lent subgraph), what it sees of the scopes
/// around it, and the summary to count into.
pub(crate) type Pass<'p> = dyn FnMut(&mut Graph, &Outer, &mut QuantizeSummary) -> Result<()> + 'p;

/// The table as the subgraph `ctx` names its values: the entries under its scope with the
/// prefix removed, over those of the enclosing scopes (an outer-scope value the body reads,
/// which the observer reports only where it is made, has the range it has there).
pub(crate) fn scoped_table(table: &CalibrationTable, ctx: &Outer) -> CalibrationTable {
    let mut t = CalibrationTable {
        format: table.format.clone(),
        settings: table.settings,
        batches: table.batches,
        tensors: Default::default(),
    };
    for prefix in &ctx.scopes {
        for (k, v) in &table.tensors {
            if let Some(s) = k.strip_prefix(prefix.as_str()).filter(|s| !s.is_empty()) {
                t.tensors.insert(s.to_string(), v.clone());
            }
        }
    }
    t
}

/// The scope under which the engine's observer reports the values of `node`'s subgraph in
/// attribute `attr`: `name/attr/`, or for an unnamed node the engine's `Op#index -> output`
/// label, looked up in `table` (the index is the node's place in the graph the engine planned,
/// which load-time rewrites may have shifted).
fn scope(
    node: &NodeProto,
    idx: usize,
    attr: &str,
    prefix: &str,
    table: Option<&CalibrationTable>,
) -> String {
    if !node.name.is_empty() {
        return format!("{prefix}{}/{attr}/", node.name);
    }
    let out = node.output.first().map(String::as_str).unwrap_or("");
    let head = format!("{prefix}{}#", node.op_type);
    let tail = format!(" -> {out}/{attr}/");
    let found = table.and_then(|t| {
        t.tensors.keys().find_map(|k| {
            let rest = k.strip_prefix(&head)?;
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            (digits > 0 && rest[digits..].starts_with(&tail))
                .then(|| format!("{head}{}{tail}", &rest[..digits]))
        })
    });
    found.unwrap_or_else(|| format!("{head}{idx}{tail}"))
}

/// Runs `pass` on every control-flow body of `g`, innermost first, then on `g` itself: for the
/// passes that need no scope (dynamic, weight-only), each graph on its own.
pub(crate) fn rewrite_everywhere(
    g: &mut Graph,
    summary: &mut QuantizeSummary,
    pass: &mut dyn FnMut(&mut Graph, &mut QuantizeSummary) -> Result<()>,
) -> Result<()> {
    let root = Outer::root(g.model());
    rewrite_subgraphs(g, &root, None, summary, &mut |sg, _, s| pass(sg, s))?;
    pass(g, summary)
}

/// Runs `pass` on every subgraph of `g`'s nodes, innermost first (a body's nested subgraphs
/// before the body itself), and puts each rewritten subgraph back. `g` itself is not passed.
/// `table` only names the scopes of unnamed nodes.
pub(crate) fn rewrite_subgraphs(
    g: &mut Graph,
    outer: &Outer,
    table: Option<&CalibrationTable>,
    summary: &mut QuantizeSummary,
    pass: &mut Pass,
) -> Result<()> {
    let holders: Vec<usize> =
        (0..g.num_nodes()).filter(|&i| subgraphs(&g.nodes()[i]).next().is_some()).collect();
    if holders.is_empty() {
        return Ok(());
    }
    // What the subgraphs of `g` see: `g`'s initializers over the outer ones, `g`'s value types.
    let mut inner = outer.clone();
    for t in &g.proto().initializer {
        inner.inits.insert(t.name.clone(), t.clone());
    }
    inner.dtypes.extend(value_dtypes(g));
    for idx in holders {
        let node = g.nodes()[idx].clone();
        for (a, attr) in node.attribute.iter().enumerate() {
            let Some(sub) = attr.g.as_ref() else { continue };
            let mut ctx = inner.clone();
            ctx.prefix = scope(&node, idx, &attr.name, &outer.prefix, table);
            ctx.scopes.push(ctx.prefix.clone());
            let mut sub_summary = QuantizeSummary { mode: summary.mode, ..Default::default() };
            let new_sub = rewrite_one(g, sub.clone(), &ctx, table, &mut sub_summary, pass)?;
            merge(summary, sub_summary, &ctx.prefix);
            g.node_mut(idx).expect("holder index").attribute[a].g = Some(new_sub);
        }
    }
    Ok(())
}

/// Lends `sub` out as a model of its own, runs its nested subgraphs and then `pass` on it, and
/// returns it with the lent outer values taken away again.
fn rewrite_one(
    g: &Graph,
    sub: GraphProto,
    ctx: &Outer,
    table: Option<&CalibrationTable>,
    summary: &mut QuantizeSummary,
    pass: &mut Pass,
) -> Result<GraphProto> {
    let reads = outer_reads(&sub);
    let own_inputs = sub.input.len();
    let mut lent_inits: HashSet<String> = HashSet::new();
    let mut sub = sub;
    for r in &reads {
        if let Some(t) = ctx.inits.get(r) {
            sub.initializer.push(t.clone());
            lent_inits.insert(r.clone());
        } else {
            let dtype = ctx.dtypes.get(r).copied().or_else(|| {
                // A value inference could not type but calibration observed: float.
                let key = format!("{}{r}", ctx.prefix);
                table.is_some_and(|t| t.tensors.contains_key(&key)).then_some(DType::F32)
            });
            if let Some(d) = dtype {
                sub.input.push(lowbit_onnx::build::unshaped_value_info(r, d));
            }
        }
    }
    let lent_inputs: HashSet<String> =
        sub.input[own_inputs..].iter().map(|v| v.name.clone()).collect();
    let model = ModelProto {
        ir_version: ctx.ir_version,
        opset_import: ctx.opsets.clone(),
        graph: Some(sub),
        ..Default::default()
    };
    let mut lent = Graph::new(model)?;
    lent.reserve(g.used_names());
    lent.topo_sort()?;
    lowbit_engine::normalize::normalize(lent.model_mut())?;
    rewrite_subgraphs(&mut lent, ctx, table, summary, pass)?;
    pass(&mut lent, ctx, summary)?;
    lent.remove_unused_initializers();
    lent.topo_sort()?;
    let mut sub = lent.into_model().graph.expect("a graph");
    sub.initializer.retain(|t| !lent_inits.contains(&t.name));
    sub.input.retain(|v| !lent_inputs.contains(&v.name));
    Ok(sub)
}

/// Adds what a subgraph's pass did to the outer summary, its nodes named with their scope.
fn merge(into: &mut QuantizeSummary, sub: QuantizeSummary, prefix: &str) {
    for (op, n) in sub.quantized {
        *into.quantized.entry(op).or_default() += n;
    }
    let scoped = |n: NodeNote| NodeNote { node: format!("{prefix}{}", n.node), ..n };
    into.excluded.extend(sub.excluded.into_iter().map(scoped));
    into.left_float.extend(sub.left_float.into_iter().map(scoped));
    for note in sub.notes {
        if !into.notes.contains(&note) {
            into.notes.push(note);
        }
    }
    into.folded_batch_norms += sub.folded_batch_norms;
}
