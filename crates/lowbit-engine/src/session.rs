//! Loading a model into an execution plan, and running it.

use crate::adaptive::{Adaptive, AdaptiveOptions, AdaptiveStats};
use crate::error::{EngineError, Result};
use crate::op::{BuildCtx, Kernel};
use crate::registry::{canonical_domain, Registry};
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::{self, ModelProto, NodeProto};
use lowbit_onnx::tensor_proto::tensor_from_proto;
use lowbit_tensor::{DType, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A callback shown every tensor by its ONNX name as it is produced.
pub type Observer<'a> = dyn FnMut(&str, &Tensor) + Send + 'a;

/// A callback shown each value a step produces, by slot (the adaptive watch).
pub(crate) type Watcher<'a> = dyn FnMut(usize, &Tensor) + 'a;

/// Options for building a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Worker threads for kernels; 0 means one per core.
    pub threads: usize,
    /// Fuse QDQ patterns into integer ops at load ([`crate::fuse`]; on by default). Off, a
    /// quantized model runs as written (float Q/DQ), and every value it names is observable.
    pub fuse_quantized: bool,
    /// Fuse float patterns at load ([`crate::fuse_float`]: batch norms folded into the conv
    /// before them, bias adds and activations into the product's output stage; on by
    /// default). Off, every value the model names is observable.
    pub fuse_float: bool,
    /// Run adaptively ([`crate::adaptive`]): samples whose quantized activations saturate
    /// beyond calibration are re-run on the model's float path. `None`: off.
    pub adaptive: Option<AdaptiveOptions>,
    /// With 2+ threads, keep the other workers spinning (taking work) for the length of each
    /// run instead of letting them sleep between parallel kernels (ONNX Runtime's default
    /// too): lower latency, one busy core per extra thread while a run lasts. On by default;
    /// the environment variable `LOWBIT_SPIN=0` turns it off (shared machines).
    pub spin: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: 0,
            fuse_quantized: true,
            fuse_float: true,
            adaptive: None,
            spin: spin_default(),
        }
    }
}

/// [`SessionOptions::spin`]'s default: on unless `LOWBIT_SPIN=0`.
pub fn spin_default() -> bool {
    std::env::var("LOWBIT_SPIN").map_or(true, |v| v.trim() != "0")
}

impl SessionOptions {
    /// Default options with `threads` worker threads (0: one per core).
    pub fn with_threads(threads: usize) -> Self {
        SessionOptions { threads, ..Default::default() }
    }

    /// No load-time fusion, so observers see every value the model names (calibration,
    /// `compare`), with `threads` worker threads.
    pub fn unfused(threads: usize) -> Self {
        SessionOptions { threads, fuse_quantized: false, fuse_float: false, ..Default::default() }
    }
}

pub use lowbit_tensor::spec::{Dim, InputSpec};

/// Checks a fed tensor against the input's declared element type and shape.
fn check_input(spec: &InputSpec, t: &Tensor) -> Result<()> {
    if let Some(dt) = spec.dtype {
        if dt != t.dtype() {
            return Err(EngineError::InputDType {
                name: spec.name.clone(),
                expected: dt,
                actual: t.dtype(),
            });
        }
    }
    if !spec.accepts_shape(t.shape()) {
        return Err(EngineError::InputShape {
            name: spec.name.clone(),
            expected: spec.shape_text(),
            actual: t.shape().to_vec(),
        });
    }
    Ok(())
}

struct Step {
    node_name: String,
    op_type: String,
    kernel: Box<dyn Kernel>,
    /// Slot per input; `None` for an omitted optional input.
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    /// Runtime slots to drop after this step: their last consumer.
    free_after: Vec<usize>,
}

/// One graph's execution plan: the main graph's, or a control-flow subgraph's (built by
/// [`Plan::subgraph`] from the op's builder, run by its kernel).
pub struct Plan {
    steps: Vec<Step>,
    slot_names: Vec<String>,
    /// Values known at load time (initializers and folded nodes), by slot.
    constants: Vec<Option<Tensor>>,
    /// Slots produced by folded nodes (shown to observers, unlike initializers).
    folded: Vec<usize>,
    /// The graph's inputs, in order (a subgraph's: all of them, fed by position).
    inputs: Vec<(InputSpec, usize)>,
    /// Outer-scope values a subgraph reads that are not constant: fed by the kernel each run.
    outer: Vec<(String, usize)>,
    outputs: Vec<(String, usize)>,
}

/// A model ready to run. Immutable after construction: `run` may be called from many threads.
pub struct Session {
    plan: Plan,
    pool: rayon::ThreadPool,
    /// [`SessionOptions::spin`].
    spin: bool,
    fused: BTreeMap<String, usize>,
    adaptive: Option<Box<Adaptive>>,
}

/// What a control-flow op's builder needs to plan its subgraphs: the session's registry and
/// opsets, and how many of the node's inputs are its own (the rest are the outer-scope values
/// its subgraphs read, appended by the planner).
pub struct SubgraphCtx<'a> {
    pub(crate) reg: &'a Registry,
    pub(crate) opsets: &'a HashMap<String, i64>,
    pub explicit_inputs: usize,
}

/// Ops whose output must not be computed once at load time.
pub(crate) const NOT_FOLDABLE: &[&str] = &[
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
];

pub(crate) fn node_label(node: &NodeProto, idx: usize) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else if let Some(o) = node.output.first() {
        format!("{}#{idx} -> {o}", node.op_type)
    } else {
        format!("{}#{idx}", node.op_type)
    }
}

fn input_spec(vi: &pb::ValueInfoProto) -> InputSpec {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as TV;
    let tensor_type = vi.r#type.as_ref().and_then(|t| match &t.value {
        Some(TV::TensorType(tt)) => Some(tt),
        _ => None,
    });
    let dtype = tensor_type.and_then(|t| DType::from_onnx(t.elem_type));
    let dims = tensor_type.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as usize),
                Some(Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    InputSpec { name: vi.name.clone(), dtype, dims }
}

/// Orders nodes so every input is produced before use (ONNX requires it, some exporters
/// don't); a cycle or a value nobody produces is an error naming it.
fn topo_order(nodes: &[NodeProto], available: &HashSet<String>) -> Result<Vec<usize>> {
    let mut produced: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            produced.insert(o, i);
        }
    }
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 visiting, 2 done
    let mut order = Vec::with_capacity(nodes.len());
    for root in 0..nodes.len() {
        let mut stack = vec![(root, 0usize)];
        while let Some((n, k)) = stack.pop() {
            if k == 0 {
                if state[n] == 2 {
                    continue;
                }
                state[n] = 1;
            }
            let node = &nodes[n];
            if let Some(inp) = node.input.get(k) {
                stack.push((n, k + 1));
                if inp.is_empty() || available.contains(inp) {
                    continue;
                }
                match produced.get(inp.as_str()) {
                    Some(&p) if state[p] == 1 => {
                        return Err(EngineError::Graph(format!("cycle through value '{inp}'")))
                    }
                    Some(&p) if state[p] == 0 => stack.push((p, 0)),
                    Some(_) => {}
                    None => {
                        return Err(EngineError::Graph(format!(
                            "node '{}' ({}) reads '{inp}', which no node, input or initializer provides",
                            node_label(node, n),
                            node.op_type
                        )))
                    }
                }
            } else {
                state[n] = 2;
                order.push(n);
            }
        }
    }
    Ok(order)
}

/// `name` under `prefix` (a subgraph's scope; empty in the main graph).
fn scoped<'n>(prefix: &str, name: &'n str) -> std::borrow::Cow<'n, str> {
    if prefix.is_empty() {
        name.into()
    } else {
        format!("{prefix}{name}").into()
    }
}

/// Every node of `graph` and of the subgraphs inside it.
fn all_nodes<'g>(graph: &'g pb::GraphProto, out: &mut Vec<&'g NodeProto>) {
    for n in &graph.node {
        out.push(n);
        for g in lowbit_onnx::graph::subgraphs(n) {
            all_nodes(g, out);
        }
    }
}

/// `node` with the outer-scope values its subgraphs read appended to its inputs, so they are
/// scheduled, kept alive and handed to its kernel like inputs; `None` when it has no subgraph.
fn with_implicit_inputs(node: &NodeProto) -> Option<NodeProto> {
    lowbit_onnx::graph::subgraphs(node).next()?;
    let mut n = node.clone();
    for v in lowbit_onnx::graph::node_reads(node) {
        if !n.input.contains(&v) {
            n.input.push(v);
        }
    }
    Some(n)
}

impl Session {
    /// Plans `model` with every op lowbit implements.
    pub fn new(model: &ModelProto, opts: &SessionOptions) -> Result<Session> {
        Session::with_registry(model, opts, &Registry::with_all_ops())
    }

    pub fn with_registry(
        model: &ModelProto,
        opts: &SessionOptions,
        reg: &Registry,
    ) -> Result<Session> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| EngineError::Graph("the model has no graph".into()))?;
        let opsets: HashMap<String, i64> = model
            .opset_import
            .iter()
            .map(|o| (canonical_domain(&o.domain).to_string(), o.version))
            .collect();

        // Every op (subgraphs' too) is checked before anything is built, so the user hears of
        // all of them.
        let mut every = Vec::new();
        all_nodes(graph, &mut every);
        let unsupported: Vec<&NodeProto> =
            every.into_iter().filter(|n| !reg.supports(&n.domain, &n.op_type)).collect();
        if let Some(n) = unsupported.first() {
            let mut ops: Vec<String> = unsupported.iter().map(|n| n.op_type.clone()).collect();
            ops.sort();
            ops.dedup();
            return Err(EngineError::UnsupportedOp {
                node: node_label(n, 0),
                op_type: if ops.len() == 1 { ops[0].clone() } else { ops.join(", ") },
                domain: n.domain.clone(),
            });
        }

        let by_ref: HashMap<&str, i64> = opsets.iter().map(|(d, v)| (d.as_str(), *v)).collect();
        // Graph outputs keep their layout through both layout passes.
        let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let mut fused = if opts.fuse_quantized {
            let mut f = crate::fuse::fuse_qdq(graph, &by_ref, reg);
            let rank = |name: &str| constant_rank(graph, name);
            let (nodes, n) = crate::layout::channels_last(
                std::mem::take(&mut f.nodes),
                rank,
                &outputs,
                crate::layout::Mode::Integer,
            );
            f.nodes = nodes;
            if n > 0 {
                f.counts.insert("channels-last convs".into(), n);
            }
            f
        } else {
            crate::fuse::Fused { nodes: graph.node.clone(), ..Default::default() }
        };
        if opts.fuse_float {
            let opset = opsets.get("").copied().unwrap_or(1);
            crate::fuse_float::fuse_float(graph, opset, reg, &mut fused);
            // Folded weights are new constants: their ranks are in `fused.constants`.
            let ranks: HashMap<&str, usize> =
                fused.constants.iter().map(|(n, t)| (n.as_str(), t.rank())).collect();
            let rank = |name: &str| ranks.get(name).copied().or_else(|| constant_rank(graph, name));
            let nodes = std::mem::take(&mut fused.nodes);
            let (nodes, n) =
                crate::layout::channels_last(nodes, rank, &outputs, crate::layout::Mode::Float);
            fused.nodes = nodes;
            if n > 0 {
                fused.counts.insert("channels-last float convs".into(), n);
            }
        }
        let env = SubgraphCtx { reg, opsets: &opsets, explicit_inputs: 0 };
        let plan = Plan::build(graph, &fused.nodes, fused.constants, &[], &env)?;

        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| EngineError::Graph(format!("cannot start worker threads: {e}")))?;
        let adaptive = match &opts.adaptive {
            Some(a) => Some(Box::new(Adaptive::new(model, opts, a, &plan)?)),
            None => None,
        };
        Ok(Session { plan, pool, fused: fused.counts, adaptive, spin: opts.spin })
    }
}

impl Plan {
    /// Plans subgraph `graph` of a control-flow node. `outer` names each outer-scope value it
    /// reads with its value when that is constant (copied into the plan, so weights are known
    /// at load); the others are fed at every run, in [`Plan::outer_names`] order. Subgraphs
    /// run unfused (their Q/DQ pairs as float ops).
    pub(crate) fn subgraph(
        graph: &pb::GraphProto,
        outer: &[(String, Option<&Tensor>)],
        ctx: &SubgraphCtx,
    ) -> Result<Plan> {
        let reads = lowbit_onnx::graph::outer_reads(graph);
        let mut constants = Vec::new();
        let mut runtime = Vec::new();
        for v in reads {
            match outer.iter().find(|(n, _)| *n == v) {
                Some((_, Some(t))) => constants.push((v, (*t).clone())),
                Some((_, None)) => runtime.push(v),
                None => {
                    return Err(EngineError::Graph(format!(
                        "subgraph '{}' reads '{v}', which the enclosing graph does not provide",
                        graph.name
                    )))
                }
            }
        }
        Plan::build(graph, &graph.node, constants, &runtime, ctx)
    }

    /// Every value's name, by slot.
    pub(crate) fn slot_names(&self) -> &[String] {
        &self.slot_names
    }

    /// The slots some step produces at run time (not constants, not inputs).
    pub(crate) fn produced_slots(&self) -> HashSet<usize> {
        self.steps.iter().flat_map(|s| s.outputs.iter().flatten().copied()).collect()
    }

    /// The outer-scope values fed at every run, in order.
    pub(crate) fn outer_names(&self) -> impl Iterator<Item = &str> {
        self.outer.iter().map(|(n, _)| n.as_str())
    }

    /// How many inputs and outputs the graph declares.
    pub(crate) fn arity(&self) -> (usize, usize) {
        (self.inputs.len(), self.outputs.len())
    }

    /// Plans `nodes` (the graph's, possibly fused) with `extra` constants besides the graph's
    /// initializers and `outer` values fed at run time.
    fn build(
        graph: &pb::GraphProto,
        nodes: &[NodeProto],
        extra: Vec<(String, Tensor)>,
        outer: &[String],
        env: &SubgraphCtx,
    ) -> Result<Plan> {
        let (reg, opsets) = (env.reg, env.opsets);
        let explicit_counts: Vec<usize> = nodes.iter().map(|n| n.input.len()).collect();
        let implicit: Vec<Option<NodeProto>> = nodes.iter().map(with_implicit_inputs).collect();
        let owned: Vec<NodeProto>;
        let nodes: &[NodeProto] = if implicit.iter().any(Option::is_some) {
            owned =
                nodes.iter().zip(implicit).map(|(n, i)| i.unwrap_or_else(|| n.clone())).collect();
            &owned
        } else {
            nodes
        };

        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut slot_names: Vec<String> = Vec::new();
        let mut slot_of = |name: &str, slots: &mut HashMap<String, usize>| -> usize {
            if let Some(&s) = slots.get(name) {
                return s;
            }
            slot_names.push(name.to_string());
            slots.insert(name.to_string(), slot_names.len() - 1);
            slot_names.len() - 1
        };

        let mut constants: Vec<Option<Tensor>> = Vec::new();
        let set_const = |constants: &mut Vec<Option<Tensor>>, slot: usize, t: Tensor| {
            if constants.len() <= slot {
                constants.resize(slot + 1, None);
            }
            constants[slot] = Some(t);
        };
        for init in &graph.initializer {
            let t = tensor_from_proto(init)?;
            let s = slot_of(&init.name, &mut slots);
            set_const(&mut constants, s, t);
        }
        for (name, t) in &extra {
            let s = slot_of(name, &mut slots);
            set_const(&mut constants, s, t.clone());
        }
        let init_names: HashSet<&str> = graph
            .initializer
            .iter()
            .map(|t| t.name.as_str())
            .chain(extra.iter().map(|(n, _)| n.as_str()))
            .collect();
        let mut inputs = Vec::new();
        for vi in &graph.input {
            // Before IR 4, initializers were also listed as inputs; they need no feed.
            if init_names.contains(vi.name.as_str()) {
                continue;
            }
            let s = slot_of(&vi.name, &mut slots);
            inputs.push((input_spec(vi), s));
        }
        let outer: Vec<(String, usize)> =
            outer.iter().map(|n| (n.clone(), slot_of(n, &mut slots))).collect();

        let mut available: HashSet<String> = graph.input.iter().map(|v| v.name.clone()).collect();
        available.extend(init_names.iter().map(|s| s.to_string()));
        available.extend(outer.iter().map(|(n, _)| n.clone()));
        let order = topo_order(nodes, &available)?;

        let mut steps = Vec::with_capacity(order.len());
        let mut folded = Vec::new();
        for idx in order {
            let node = &nodes[idx];
            let label = node_label(node, idx);
            let node_err = |msg: String| EngineError::Node {
                node: label.clone(),
                op_type: node.op_type.clone(),
                msg,
            };
            let in_slots: Vec<Option<usize>> = node
                .input
                .iter()
                .map(|n| (!n.is_empty()).then(|| slot_of(n, &mut slots)))
                .collect();
            let out_slots: Vec<Option<usize>> = node
                .output
                .iter()
                .map(|n| (!n.is_empty()).then(|| slot_of(n, &mut slots)))
                .collect();
            let const_of =
                |s: &Option<usize>| s.and_then(|s| constants.get(s).and_then(|c| c.as_ref()));
            let sub = SubgraphCtx { reg, opsets, explicit_inputs: explicit_counts[idx] };
            let ctx = BuildCtx {
                node,
                attrs: Attrs::new(node),
                opset: opsets.get(canonical_domain(&node.domain)).copied().unwrap_or(1),
                constants: in_slots.iter().map(const_of).collect(),
                subgraphs: lowbit_onnx::graph::subgraphs(node).next().map(|_| &sub),
            };
            let builder = reg.get(&node.domain, &node.op_type).expect("checked above");
            let kernel = builder(&ctx).map_err(|e| node_err(e.0))?;
            let all_const = in_slots.iter().all(|s| s.is_none() || const_of(s).is_some());
            if all_const && !NOT_FOLDABLE.contains(&node.op_type.as_str()) {
                let outs = kernel.run(&ctx.constants).map_err(|e| node_err(e.0))?;
                drop(ctx);
                for (s, t) in out_slots.iter().zip(outs) {
                    if let Some(s) = *s {
                        set_const(&mut constants, s, t);
                        folded.push(s);
                    }
                }
                continue;
            }
            drop(ctx);
            steps.push(Step {
                node_name: label,
                op_type: node.op_type.clone(),
                kernel,
                inputs: in_slots,
                outputs: out_slots,
                free_after: Vec::new(),
            });
        }
        constants.resize(slot_names.len(), None);

        let outputs: Vec<(String, usize)> = graph
            .output
            .iter()
            .map(|o| {
                slots.get(&o.name).map(|&s| (o.name.clone(), s)).ok_or_else(|| {
                    EngineError::Graph(format!("graph output '{}' is never produced", o.name))
                })
            })
            .collect::<Result<_>>()?;

        // Last consumer of every runtime value; graph outputs live to the end.
        let keep: HashSet<usize> = outputs.iter().map(|(_, s)| *s).collect();
        let mut last_use: HashMap<usize, usize> = HashMap::new();
        for (i, st) in steps.iter().enumerate() {
            for s in st.inputs.iter().chain(st.outputs.iter()).flatten() {
                if constants[*s].is_none() {
                    last_use.insert(*s, i);
                }
            }
        }
        for (s, i) in last_use {
            if !keep.contains(&s) {
                steps[i].free_after.push(s);
            }
        }
        Ok(Plan { steps, slot_names, constants, folded, inputs, outer, outputs })
    }

    /// Runs the plan on `feeds` (one per graph input, in order) and `outer` (one per
    /// [`Plan::outer_names`]); returns the graph outputs in order. `observer` sees every
    /// value as `prefix` + its name; `times` gets each step's seconds.
    pub(crate) fn execute(
        &self,
        feeds: Vec<Tensor>,
        outer: &[&Tensor],
        mut observer: Option<&mut Observer<'_>>,
        prefix: &str,
        mut times: Option<&mut Vec<f64>>,
        mut watch: Option<&mut Watcher<'_>>,
    ) -> Result<Vec<Tensor>> {
        if feeds.len() != self.inputs.len() || outer.len() != self.outer.len() {
            return Err(EngineError::Graph(format!(
                "graph given {} inputs and {} outer values, expects {} and {}",
                feeds.len(),
                outer.len(),
                self.inputs.len(),
                self.outer.len()
            )));
        }
        let mut values: Vec<Option<Tensor>> = vec![None; self.slot_names.len()];
        let mut borrowed: Vec<Option<&Tensor>> = vec![None; self.slot_names.len()];
        for ((_, s), t) in self.outer.iter().zip(outer) {
            borrowed[*s] = Some(*t);
        }
        for ((_, slot), t) in self.inputs.iter().zip(feeds) {
            values[*slot] = Some(t);
        }
        if let Some(obs) = observer.as_mut() {
            for (spec, slot) in &self.inputs {
                obs(&scoped(prefix, &spec.name), values[*slot].as_ref().expect("fed"));
            }
            for &s in &self.folded {
                obs(
                    &scoped(prefix, &self.slot_names[s]),
                    self.constants[s].as_ref().expect("folded"),
                );
            }
        }
        for (i, st) in self.steps.iter().enumerate() {
            let t0 = times.is_some().then(std::time::Instant::now);
            let outs = {
                let args: Vec<Option<&Tensor>> = st
                    .inputs
                    .iter()
                    .map(|s| {
                        s.and_then(|s| {
                            self.constants[s].as_ref().or(borrowed[s]).or(values[s].as_ref())
                        })
                    })
                    .collect();
                let res = match observer.as_mut() {
                    Some(obs) => {
                        let scope = format!("{prefix}{}/", st.node_name);
                        st.kernel.run_observed(&args, &mut **obs, &scope)
                    }
                    None => st.kernel.run(&args),
                };
                res.map_err(|e| EngineError::Node {
                    node: st.node_name.clone(),
                    op_type: st.op_type.clone(),
                    msg: e.0,
                })?
            };
            for (slot, t) in st.outputs.iter().zip(outs) {
                if let Some(s) = *slot {
                    if let Some(obs) = observer.as_mut() {
                        obs(&scoped(prefix, &self.slot_names[s]), &t);
                    }
                    if let Some(w) = watch.as_mut() {
                        w(s, &t);
                    }
                    values[s] = Some(t);
                }
            }
            for &s in &st.free_after {
                values[s] = None;
            }
            if let (Some(t), Some(t0)) = (times.as_mut(), t0) {
                t[i] += t0.elapsed().as_secs_f64();
            }
        }
        self.outputs
            .iter()
            .map(|(name, s)| {
                values[*s]
                    .take()
                    .or_else(|| self.constants[*s].clone())
                    .or_else(|| borrowed[*s].cloned())
                    .ok_or_else(|| {
                        EngineError::Graph(format!("graph output '{name}' was not produced"))
                    })
            })
            .collect()
    }
}

impl Session {
    /// The inputs a caller must feed, in graph order.
    pub fn inputs(&self) -> Vec<&InputSpec> {
        self.plan.inputs.iter().map(|(s, _)| s).collect()
    }

    /// Graph output names, in graph order.
    pub fn output_names(&self) -> Vec<&str> {
        self.plan.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// How many ops of each kind load-time fusion made: integer ops (`QLinearConv`, …) and
    /// float patterns (`Conv+BatchNormalization`, `Conv+Relu`, …); empty when it was off or
    /// found nothing to fuse.
    pub fn fused_ops(&self) -> &BTreeMap<String, usize> {
        &self.fused
    }

    /// Kernels one run executes (nodes left after fusion and constant folding).
    pub fn num_steps(&self) -> usize {
        self.plan.steps.len()
    }

    /// The op type of every step, in run order (for profiles and tests).
    pub fn step_ops(&self) -> Vec<&str> {
        self.plan.steps.iter().map(|s| s.op_type.as_str()).collect()
    }

    /// Number of threads kernels run on.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// With [`SessionOptions::adaptive`]: the quantized tensors watched (float names, plan
    /// order); `None` when the session is not adaptive.
    pub fn adaptive_watched(&self) -> Option<Vec<&str>> {
        self.adaptive.as_ref().map(|a| a.watched())
    }

    /// With [`SessionOptions::adaptive`]: samples run and re-run on the float path so far, and
    /// which tensors sent them there; `None` when the session is not adaptive.
    pub fn adaptive_stats(&self) -> Option<AdaptiveStats> {
        self.adaptive.as_ref().map(|a| a.stats())
    }

    /// Runs the model; returns graph outputs in graph order.
    pub fn run(&self, feeds: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        self.run_inner(feeds, None, None)
    }

    /// Runs the model and adds each step's wall time (seconds) to `times` (one entry per
    /// step, in [`Session::step_ops`] order; resized on first use).
    pub fn run_profiled(
        &self,
        feeds: Vec<(String, Tensor)>,
        times: &mut Vec<f64>,
    ) -> Result<Vec<(String, Tensor)>> {
        times.resize(self.plan.steps.len(), 0.0);
        self.run_inner(feeds, None, Some(times))
    }

    /// The node name of every step, in run order.
    pub fn step_names(&self) -> Vec<&str> {
        self.plan.steps.iter().map(|s| s.node_name.as_str()).collect()
    }

    /// Runs the model, showing `observer` every tensor as it is produced, by ONNX name. Values
    /// inside control-flow subgraphs are shown under scoped names,
    /// `node/attribute/value` (e.g. `cond_if/then_branch/conv_out`, nested scopes
    /// chained), once per time their subgraph runs.
    pub fn run_observed(
        &self,
        feeds: Vec<(String, Tensor)>,
        observer: &mut Observer<'_>,
    ) -> Result<Vec<(String, Tensor)>> {
        self.run_inner(feeds, Some(observer), None)
    }

    fn run_inner(
        &self,
        feeds: Vec<(String, Tensor)>,
        observer: Option<&mut Observer<'_>>,
        times: Option<&mut Vec<f64>>,
    ) -> Result<Vec<(String, Tensor)>> {
        let inputs = &self.plan.inputs;
        let mut fed: Vec<Option<Tensor>> = vec![None; inputs.len()];
        for (name, t) in feeds {
            let Some(i) = inputs.iter().position(|(s, _)| s.name == name) else {
                let known: Vec<&str> = inputs.iter().map(|(s, _)| s.name.as_str()).collect();
                return Err(EngineError::UnknownInput { name, known: known.join(", ") });
            };
            check_input(&inputs[i].0, &t)?;
            fed[i] = Some(t);
        }
        let mut ordered = Vec::with_capacity(inputs.len());
        for ((spec, _), t) in inputs.iter().zip(fed) {
            let Some(t) = t else {
                return Err(EngineError::MissingInput {
                    name: spec.name.clone(),
                    expected: format!(
                        "{} {}",
                        spec.dtype.map_or("tensor".into(), |d| d.to_string()),
                        spec.shape_text()
                    ),
                });
            };
            ordered.push(t);
        }
        let Some(a) = self.adaptive.as_deref() else {
            let outs = self.pool.install(|| {
                warm_workers(self.spin, || {
                    self.plan.execute(ordered, &[], observer, "", times, None)
                })
            })?;
            return Ok(self.plan.outputs.iter().map(|(n, _)| n.clone()).zip(outs).collect());
        };
        // The fallback needs the inputs again.
        let kept: Vec<(String, Tensor)> =
            inputs.iter().map(|(s, _)| s.name.clone()).zip(ordered.iter().cloned()).collect();
        let mut run = a.start(&kept);
        let mut check = |s: usize, t: &Tensor| {
            if let Some(w) = a.watch_of[s] {
                a.check(w, t, &mut run);
            }
        };
        let outs = self.pool.install(|| {
            warm_workers(self.spin, || {
                self.plan.execute(ordered, &[], observer, "", times, Some(&mut check))
            })
        })?;
        let outputs = self.plan.outputs.iter().map(|(n, _)| n.clone()).zip(outs).collect();
        a.finish(run, kept, outputs)
    }
}

/// Runs `f` (a whole plan, on a worker of the current pool) while the pool's other workers
/// stay awake, taking its parallel work as it appears. A run alternates parallel kernels with
/// short sequential steps; idle rayon workers go to sleep within microseconds and each
/// parallel kernel then waits for a wake-up (futex, scheduler), which on CNNs cost more than
/// the second thread gained. ONNX Runtime's pool spins between ops for the same reason.
fn warm_workers<R>(spin: bool, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let threads = rayon::current_num_threads();
    let Some(me) = rayon::current_thread_index() else { return f() };
    if threads < 2 || !spin {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|_| {
                // The plan's own thread may pick this job up while it waits inside a join:
                // it must not spin there (its plan could not go on).
                if rayon::current_thread_index() == Some(me) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Set on the way out, a panic included (the scope waits for the spinners).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _done = Done(&done);
        f()
    })
}

/// The rank of constant `name` (an initializer or a `Constant` node's value).
fn constant_rank(graph: &lowbit_onnx::pb::GraphProto, name: &str) -> Option<usize> {
    if let Some(t) = graph.initializer.iter().find(|t| t.name == name) {
        return Some(t.dims.len());
    }
    let n = graph
        .node
        .iter()
        .find(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name))?;
    let t = lowbit_onnx::attr::Attrs::new(n).tensor("value").ok()??;
    Some(t.dims.len())
}

#[cfg(test)]
mod warm_tests {
    use super::warm_workers;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool")
    }

    #[test]
    fn warm_workers_run_parallel_work_and_return() {
        for (threads, spin) in [(1, true), (2, true), (3, true), (2, false)] {
            let sum = pool(threads).install(|| {
                warm_workers(spin, || {
                    // Parallel steps between sequential ones, as a plan runs them.
                    (0..20u64)
                        .map(|i| (0..10_000u64).into_par_iter().map(|x| x ^ i).sum::<u64>())
                        .sum::<u64>()
                })
            });
            let want: u64 = (0..20u64).map(|i| (0..10_000u64).map(|x| x ^ i).sum::<u64>()).sum();
            assert_eq!(sum, want, "{threads} threads");
        }
    }

    #[test]
    fn a_panic_inside_warm_workers_reaches_the_caller() {
        let p = pool(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.install(|| warm_workers(true, || -> u32 { panic!("kernel bug") }))
        }));
        assert!(r.is_err(), "the panic was swallowed");
        // The pool is still usable: no spinner was left behind.
        assert_eq!(
            p.install(|| warm_workers(true, || (0..100u32).into_par_iter().sum::<u32>())),
            4950
        );
    }

    #[test]
    fn concurrent_runs_on_one_pool_finish() {
        let p = pool(2);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        p.install(|| {
                            warm_workers(true, || {
                                (0..50_000u64).into_par_iter().map(|x| x * 3).sum::<u64>()
                            })
                        })
                    })
                })
                .collect();
            for h in hs {
                assert_eq!(h.join().expect("run"), 3 * 49_999 * 50_000 / 2);
            }
        });
    }
}
