//! The layers' inputs for AdaRound's passes, computed incrementally. After each weight's pass
//! the tensors live at that point of a graph (computed, and read by a node not yet run) are
//! kept for every sample run, so the next pass runs only the nodes after them instead of the
//! model's whole prefix again. Kept values are exactly what a full run computes: a tensor is
//! kept only when no weight still to be rounded feeds it, and a cut whose tensors would exceed
//! the byte cap is not taken (the next pass starts from the last cut that fitted, or from the
//! graph inputs).

use crate::error::{QuantError, Result};
use crate::samples::Feeds;
use lowbit_engine::{Session, SessionOptions};
use lowbit_onnx::graph::{node_reads, topo_order};
use lowbit_onnx::pb::{GraphProto, ModelProto, ValueInfoProto};
use lowbit_tensor::Tensor;
use std::collections::{HashMap, HashSet};

/// One graph's structure and the tensors kept from its last cut.
pub(crate) struct Stream {
    /// Node index producing each value.
    producer: HashMap<String, usize>,
    /// Per node, the values it reads (initializers included).
    reads: Vec<Vec<String>>,
    /// Values computed from a graph input (the others are constants a pass recomputes).
    varying: HashSet<String>,
    /// Per value, the last weight (in AdaRound's order) whose codes feed it, if any.
    last: HashMap<String, usize>,
    /// Nodes some pass has run (the ancestors of every value asked for so far).
    done: Vec<bool>,
    /// The kept values' names and, per run, their values in that order.
    kept: Vec<String>,
    values: Vec<Vec<Tensor>>,
    /// Most bytes the kept values may take.
    cap: usize,
}

/// One pass over a graph: a session from the kept values to the values asked for and the
/// next cut.
pub(crate) struct Pass {
    session: Session,
    /// Kept values the session reads, by index in [`Stream::kept`].
    from_kept: Vec<usize>,
    /// Graph inputs the session reads.
    from_feeds: Vec<String>,
    /// The next cut, kept when it fits.
    next: Vec<String>,
    staged: Vec<Vec<Tensor>>,
    bytes: usize,
    overflow: bool,
}

impl Pass {
    /// The nodes the pass runs, by type.
    #[cfg(test)]
    pub fn ops(&self) -> Vec<&str> {
        self.session.step_ops()
    }
}

impl Stream {
    /// The structure of `g`; `owned` pairs each initializer a weight's pass rewrites (its codes,
    /// scales, bias) with the weight's index `j` (empty for the FP32 graph).
    pub fn new(g: &GraphProto, owned: &[(&str, usize)], cap: usize) -> Stream {
        let mut producer = HashMap::new();
        let mut reads = Vec::with_capacity(g.node.len());
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.clone(), i);
            }
            reads.push(node_reads(n));
        }
        let mut last: HashMap<String, usize> =
            owned.iter().map(|&(c, j)| (c.to_string(), j)).collect();
        let mut varying: HashSet<String> = g.input.iter().map(|v| v.name.clone()).collect();
        // A graph that cannot be ordered keeps nothing varying, so nothing is ever kept.
        for i in topo_order(g).unwrap_or_default() {
            let r = &reads[i];
            let dep = r.iter().filter_map(|v| last.get(v)).max().copied();
            let any = r.iter().any(|v| varying.contains(v));
            for o in g.node[i].output.iter().filter(|o| !o.is_empty()) {
                if let Some(d) = dep {
                    last.insert(o.clone(), d);
                }
                if any {
                    varying.insert(o.clone());
                }
            }
        }
        Stream {
            producer,
            reads,
            varying,
            last,
            done: vec![false; g.node.len()],
            kept: Vec::new(),
            values: Vec::new(),
            cap,
        }
    }

    /// Bytes of the kept values.
    pub fn kept_bytes(&self) -> usize {
        self.values.iter().flatten().map(bytes).sum()
    }

    /// Plans the pass that computes `wanted` while weight `current` (and those after it) still
    /// have their old codes.
    pub fn plan(
        &mut self,
        model: &ModelProto,
        wanted: &[String],
        current: usize,
        opts: &SessionOptions,
    ) -> Result<Pass> {
        let empty = GraphProto::default();
        let g = model.graph.as_ref().unwrap_or(&empty);
        // Everything upstream of `wanted` has run once this pass is done.
        let mut stack: Vec<&str> = wanted.iter().map(String::as_str).collect();
        while let Some(v) = stack.pop() {
            let Some(&p) = self.producer.get(v) else { continue };
            if !std::mem::replace(&mut self.done[p], true) {
                stack.extend(self.reads[p].iter().map(String::as_str));
            }
        }
        // The next cut: values computed so far that a node still to run reads, and that no
        // weight from `current` on feeds.
        let mut next: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for (r, _) in self.reads.iter().zip(&self.done).filter(|(_, &done)| !done) {
            for v in r {
                // Graph inputs come with every run's feeds: only computed values are kept.
                let computed = self.producer.get(v).is_some_and(|&q| self.done[q]);
                let fixed =
                    self.varying.contains(v) && self.last.get(v).is_none_or(|&d| d < current);
                if computed && fixed && seen.insert(v) {
                    next.push(v.clone());
                }
            }
        }
        let mut outputs: Vec<String> = wanted.to_vec();
        outputs.extend(next.iter().filter(|v| !wanted.contains(v)).cloned());
        let kept: HashMap<&str, usize> =
            self.kept.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let (sub, read) = slice(g, &outputs, &kept);
        let inputs: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
        let mut from_kept: Vec<usize> =
            read.iter().filter_map(|v| kept.get(v.as_str())).copied().collect();
        from_kept.sort_unstable();
        let from_feeds = read
            .into_iter()
            .filter(|v| inputs.contains(v.as_str()) && !kept.contains_key(v.as_str()))
            .collect();
        let sub = ModelProto { graph: Some(sub), ..model_shell(model) };
        Ok(Pass {
            session: Session::new(&sub, opts)?,
            from_kept,
            from_feeds,
            next,
            staged: Vec::new(),
            bytes: 0,
            overflow: false,
        })
    }

    /// Runs `pass` on run `index` (whose graph inputs are `feeds`): its outputs by name. The
    /// next cut's values are staged.
    pub fn run(
        &self,
        pass: &mut Pass,
        index: usize,
        feeds: &Feeds,
    ) -> Result<HashMap<String, Tensor>> {
        let mut args: Vec<(String, Tensor)> = Vec::new();
        if !pass.from_kept.is_empty() {
            let kept = self.values.get(index).ok_or_else(|| {
                QuantError::Config(
                    "the samples yielded more batches than in AdaRound's first pass".into(),
                )
            })?;
            for &k in &pass.from_kept {
                args.push((self.kept[k].clone(), kept[k].clone()));
            }
        }
        for name in &pass.from_feeds {
            if let Some((_, t)) = feeds.iter().find(|(n, _)| n == name) {
                args.push((name.clone(), t.clone()));
            }
        }
        let out: HashMap<String, Tensor> = pass.session.run(args)?.into_iter().collect();
        if !pass.overflow && !pass.next.is_empty() {
            let cut: Vec<Tensor> = pass.next.iter().map(|n| out[n].clone()).collect();
            pass.bytes += cut.iter().map(bytes).sum::<usize>();
            if pass.bytes > self.cap {
                pass.overflow = true;
                pass.staged = Vec::new();
            } else {
                pass.staged.push(cut);
            }
        }
        Ok(out)
    }

    /// The values kept from the last cut.
    #[cfg(test)]
    pub fn kept(&self) -> &[String] {
        &self.kept
    }

    /// Keeps `pass`'s cut if it fitted; otherwise the last one stays.
    pub fn finish(&mut self, pass: Pass) {
        if !pass.overflow && !pass.next.is_empty() {
            self.kept = pass.next;
            self.values = pass.staged;
        }
    }
}

/// Bytes `t`'s values take.
fn bytes(t: &Tensor) -> usize {
    (t.len() * t.dtype().bits()).div_ceil(8)
}

/// An empty model with `model`'s versions, to hold a sliced graph.
fn model_shell(model: &ModelProto) -> ModelProto {
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        functions: model.functions.clone(),
        ..Default::default()
    }
}

/// The part of `g` that computes `outputs` from the values in `given` and `g`'s inputs, which
/// become its inputs; also every value it reads.
fn slice(
    g: &GraphProto,
    outputs: &[String],
    given: &HashMap<&str, usize>,
) -> (GraphProto, HashSet<String>) {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o, i);
        }
    }
    let mut keep = vec![false; g.node.len()];
    let mut read: HashSet<String> = outputs.iter().cloned().collect();
    let mut stack: Vec<String> = outputs.to_vec();
    while let Some(v) = stack.pop() {
        if given.contains_key(v.as_str()) {
            continue;
        }
        let Some(&p) = producer.get(v.as_str()) else { continue };
        if std::mem::replace(&mut keep[p], true) {
            continue;
        }
        for r in node_reads(&g.node[p]) {
            if read.insert(r.clone()) {
                stack.push(r);
            }
        }
    }
    let name_only = |n: &str| ValueInfoProto { name: n.to_string(), ..Default::default() };
    let mut input: Vec<ValueInfoProto> = g
        .input
        .iter()
        .filter(|v| read.contains(&v.name) && !given.contains_key(v.name.as_str()))
        .cloned()
        .collect();
    let mut given_read: Vec<(&str, usize)> =
        given.iter().filter(|(n, _)| read.contains(**n)).map(|(n, &i)| (*n, i)).collect();
    given_read.sort_by_key(|&(_, i)| i);
    input.extend(given_read.iter().map(|(n, _)| name_only(n)));
    let graph = GraphProto {
        name: g.name.clone(),
        node: g.node.iter().zip(&keep).filter(|(_, &k)| k).map(|(n, _)| n.clone()).collect(),
        initializer: g.initializer.iter().filter(|t| read.contains(&t.name)).cloned().collect(),
        input,
        output: outputs.iter().map(|n| name_only(n)).collect(),
        ..Default::default()
    };
    (graph, read)
}
