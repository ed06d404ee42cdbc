//! A graph IR over [`ModelProto`] that is lossless by construction.
//!
//! [`Graph`] owns the model and edits `graph.node`, `graph.initializer` and the other fields in
//! place, so [`Graph::into_model`] gives back every field it did not touch exactly as loaded
//! (doc strings, metadata, functions, training info, unknown opsets). What it adds on top:
//! topological ordering, the producer and consumers of every value name (built on demand and
//! dropped on every edit), renaming, initializer bookkeeping and fresh names.
//!
//! Values read implicitly by subgraphs (`If`/`Loop`/`Scan` bodies that use an outer value
//! without listing it as an input) count as inputs of the node that owns the subgraph, for
//! ordering, consumers and renaming alike.
//!
//! ```
//! use lowbit_onnx::graph::Graph;
//! use lowbit_onnx::pb::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
//!
//! let node = |op: &str, i: &str, o: &str| NodeProto {
//!     op_type: op.into(), input: vec![i.into()], output: vec![o.into()], ..Default::default()
//! };
//! let graph = GraphProto {
//!     node: vec![node("Relu", "y", "z"), node("Neg", "x", "y")],
//!     input: vec![ValueInfoProto { name: "x".into(), ..Default::default() }],
//!     output: vec![ValueInfoProto { name: "z".into(), ..Default::default() }],
//!     ..Default::default()
//! };
//! let mut g = Graph::new(ModelProto { graph: Some(graph), ..Default::default() }).unwrap();
//! g.topo_sort().unwrap();
//! assert_eq!(g.nodes()[0].op_type, "Neg");
//! assert_eq!(g.producer("y"), Some(0));
//! assert_eq!(g.consumers("y"), &[1]);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::OnceLock;

use crate::pb::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// Errors of graph edits and ordering; each names the node or value it is about.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The model has no `graph` field.
    #[error("the model has no graph")]
    NoGraph,

    /// A node reads a value that no node produces and that is neither a graph input nor an
    /// initializer.
    #[error(
        "node {node} ({op_type}) reads '{value}', which no node produces and which is neither a \
         graph input nor an initializer"
    )]
    UndefinedValue { node: String, op_type: String, value: String },

    /// The nodes form a cycle; `nodes` lists it in data-flow order, first node repeated last.
    #[error("the graph has a cycle: {}", .nodes.join(" -> "))]
    Cycle { nodes: Vec<String> },

    /// Two nodes write the same value name.
    #[error("value '{value}' is produced by two nodes: {first} and {second}")]
    DuplicateProducer { value: String, first: String, second: String },

    /// A node index past the end of the node list.
    #[error("node index {index} is out of range: the graph has {len} nodes")]
    NodeIndex { index: usize, len: usize },

    /// `replace_input` was asked to replace an input the node does not read.
    #[error("node {node} ({op_type}) does not read '{value}'")]
    NoSuchInput { node: String, op_type: String, value: String },

    /// A rename or insertion would reuse a name the graph already has.
    #[error("the name '{name}' is already used in the graph")]
    NameTaken { name: String },
}

/// `Result` with [`GraphError`].
pub type Result<T> = std::result::Result<T, GraphError>;

/// How a node is named in messages: `'name'`, or `#index` for an unnamed node.
pub fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("#{index}")
    } else {
        format!("'{}'", node.name)
    }
}

/// Producers and consumers of every value name, built on demand.
#[derive(Clone, Debug, Default)]
struct Index {
    producers: HashMap<String, usize>,
    consumers: HashMap<String, Vec<usize>>,
    /// Every name used anywhere (values, nodes, initializers, subgraphs included).
    names: HashSet<String>,
}

impl Index {
    fn build(g: &GraphProto) -> Index {
        let mut ix = Index::default();
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                ix.producers.entry(o.clone()).or_insert(i);
            }
            for v in node_reads(n) {
                ix.consumers.entry(v).or_default().push(i);
            }
        }
        collect_names(g, &mut ix.names);
        ix
    }
}

fn collect_names(g: &GraphProto, names: &mut HashSet<String>) {
    let vi = g.input.iter().chain(&g.output).chain(&g.value_info);
    names.extend(vi.map(|v| v.name.clone()));
    names.extend(g.initializer.iter().map(|t| t.name.clone()));
    names.extend(
        g.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).map(|t| t.name.clone()),
    );
    for n in &g.node {
        names.insert(n.name.clone());
        names.extend(n.input.iter().chain(&n.output).cloned());
        for sg in subgraphs(n) {
            collect_names(sg, names);
        }
    }
    names.remove("");
}

/// The subgraphs in `node`'s attributes (an `If`'s branches, a `Loop`'s or `Scan`'s body).
pub fn subgraphs(node: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    node.attribute.iter().flat_map(|a| a.g.iter().chain(&a.graphs))
}

/// Every value a node reads, each once, in first-use order: its inputs (empty optional inputs
/// skipped) followed by the outer-scope values its subgraphs read.
pub fn node_reads(node: &NodeProto) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |v: &str| {
        if !v.is_empty() && !out.iter().any(|o| o == v) {
            out.push(v.to_string());
        }
    };
    for i in &node.input {
        push(i);
    }
    let mut free = Vec::new();
    subgraph_free_values(node, &mut free);
    for v in &free {
        push(v);
    }
    out
}

/// Outer-scope values read by the subgraphs in `node`'s attributes.
fn subgraph_free_values(node: &NodeProto, out: &mut Vec<String>) {
    for g in subgraphs(node) {
        graph_free_values(g, out);
    }
}

fn graph_defines(g: &GraphProto) -> HashSet<&str> {
    let mut d: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    d.extend(g.initializer.iter().map(|t| t.name.as_str()));
    d.extend(
        g.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).map(|t| t.name.as_str()),
    );
    d.extend(g.node.iter().flat_map(|n| n.output.iter().map(|o| o.as_str())));
    d
}

/// The outer-scope values subgraph `g` reads (nested subgraphs included), each once, in
/// first-use order: what a control-flow node must be given besides its inputs.
pub fn outer_reads(g: &GraphProto) -> Vec<String> {
    let mut out = Vec::new();
    graph_free_values(g, &mut out);
    out
}

fn graph_free_values(g: &GraphProto, out: &mut Vec<String>) {
    let defined = graph_defines(g);
    let add = |v: &str, out: &mut Vec<String>| {
        if !v.is_empty() && !defined.contains(v) && !out.iter().any(|o| o == v) {
            out.push(v.to_string());
        }
    };
    for n in &g.node {
        for i in &n.input {
            add(i, out);
        }
        let mut inner = Vec::new();
        subgraph_free_values(n, &mut inner);
        for v in &inner {
            add(v, out);
        }
    }
    for o in &g.output {
        add(&o.name, out);
    }
}

/// Renames the outer-scope value `old` to `new` inside subgraph `g` (unless `g` defines its own
/// `old`, which shadows the outer one). Returns how many references changed.
fn rename_free_in_graph(g: &mut GraphProto, old: &str, new: &str) -> usize {
    if graph_defines(g).contains(old) {
        return 0;
    }
    let mut n_changed = 0;
    for n in &mut g.node {
        n_changed += rename_in_list(&mut n.input, old, new);
        n_changed += rename_free_in_node(n, old, new);
    }
    for o in &mut g.output {
        if o.name == old {
            o.name = new.to_string();
            n_changed += 1;
        }
    }
    n_changed
}

fn rename_free_in_node(n: &mut NodeProto, old: &str, new: &str) -> usize {
    let mut changed = 0;
    for a in &mut n.attribute {
        for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
            changed += rename_free_in_graph(g, old, new);
        }
    }
    changed
}

fn rename_in_list(list: &mut [String], old: &str, new: &str) -> usize {
    let mut changed = 0;
    for s in list.iter_mut().filter(|s| *s == old) {
        *s = new.to_string();
        changed += 1;
    }
    changed
}

/// The order in which `g.node` can run: a stable topological order (among nodes that are ready,
/// the earliest in the current list goes first, so a sorted graph keeps its order).
pub fn topo_order(g: &GraphProto) -> Result<Vec<usize>> {
    topo_order_with_outer(g, &HashSet::new())
}

/// [`topo_order`] for a subgraph that may also read the values in `outer`.
pub fn topo_order_with_outer(g: &GraphProto, outer: &HashSet<String>) -> Result<Vec<usize>> {
    let n = g.node.len();
    let mut available: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    available.extend(g.initializer.iter().map(|t| t.name.as_str()));
    available.extend(
        g.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).map(|t| t.name.as_str()),
    );
    available.extend(outer.iter().map(|s| s.as_str()));
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in g.node.iter().enumerate() {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            if let Some(&first) = producer.get(o.as_str()) {
                return Err(GraphError::DuplicateProducer {
                    value: o.clone(),
                    first: node_label(&g.node[first], first),
                    second: node_label(node, i),
                });
            }
            producer.insert(o, i);
        }
    }
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in g.node.iter().enumerate() {
        for v in node_reads(node) {
            match producer.get(v.as_str()) {
                Some(&p) => {
                    succ[p].push(i);
                    preds[i].push(p);
                    indeg[i] += 1;
                }
                None if available.contains(v.as_str()) => {}
                None => {
                    return Err(GraphError::UndefinedValue {
                        node: node_label(node, i),
                        op_type: node.op_type.clone(),
                        value: v,
                    })
                }
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &s in &succ[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.push(Reverse(s));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every node left has a predecessor that is also left: walking back from one of them must
    // come round to a node already seen, and the walk from there is a cycle.
    let start = (0..n).find(|&i| indeg[i] > 0).expect("some node is left");
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut path = Vec::new();
    let mut cur = start;
    while !seen.contains_key(&cur) {
        seen.insert(cur, path.len());
        path.push(cur);
        cur = *preds[cur].iter().find(|&&p| indeg[p] > 0).expect("a left predecessor");
    }
    let mut cycle: Vec<usize> = path[seen[&cur]..].to_vec();
    cycle.reverse(); // walked consumer -> producer; report producer -> consumer
    cycle.push(cycle[0]);
    let nodes = cycle
        .iter()
        .map(|&i| format!("{} ({})", node_label(&g.node[i], i), g.node[i].op_type))
        .collect();
    Err(GraphError::Cycle { nodes })
}

/// A model's graph with producer/consumer indices; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Graph {
    model: ModelProto,
    index: OnceLock<Index>,
    /// Names handed out by [`Graph::unique_name`] that may not be in the graph yet.
    reserved: HashSet<String>,
}

impl Graph {
    /// Wraps a model; errors only when it has no graph.
    pub fn new(model: ModelProto) -> Result<Graph> {
        if model.graph.is_none() {
            return Err(GraphError::NoGraph);
        }
        Ok(Graph { model, index: OnceLock::new(), reserved: HashSet::new() })
    }

    /// The model, with every edit applied and everything else as it was.
    pub fn into_model(self) -> ModelProto {
        self.model
    }

    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// Mutable access to the whole model; the indices are rebuilt on next use.
    pub fn model_mut(&mut self) -> &mut ModelProto {
        self.invalidate();
        &mut self.model
    }

    /// The graph message.
    pub fn proto(&self) -> &GraphProto {
        self.model.graph.as_ref().expect("checked in Graph::new")
    }

    /// Mutable access to the graph message; the indices are rebuilt on next use.
    pub fn proto_mut(&mut self) -> &mut GraphProto {
        self.invalidate();
        self.model.graph.as_mut().expect("checked in Graph::new")
    }

    fn invalidate(&mut self) {
        self.index.take();
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| Index::build(self.proto()))
    }

    pub fn nodes(&self) -> &[NodeProto] {
        &self.proto().node
    }

    pub fn node(&self, index: usize) -> Option<&NodeProto> {
        self.proto().node.get(index)
    }

    /// A node to edit in place; the indices are rebuilt on next use.
    pub fn node_mut(&mut self, index: usize) -> Option<&mut NodeProto> {
        self.proto_mut().node.get_mut(index)
    }

    pub fn num_nodes(&self) -> usize {
        self.proto().node.len()
    }

    /// `'name'` or `#index`, for messages.
    pub fn node_label(&self, index: usize) -> String {
        self.node(index).map(|n| node_label(n, index)).unwrap_or_else(|| format!("#{index}"))
    }

    fn check_index(&self, index: usize, len: usize) -> Result<()> {
        if index < len {
            Ok(())
        } else {
            Err(GraphError::NodeIndex { index, len: self.num_nodes() })
        }
    }

    /// Reorders `graph.node` topologically, stably (a sorted graph keeps its order). Errors
    /// name a cycle, a value no one produces, or a value produced twice; the graph is left
    /// unchanged then.
    pub fn topo_sort(&mut self) -> Result<()> {
        let order = topo_order(self.proto())?;
        if order.iter().enumerate().all(|(i, &j)| i == j) {
            return Ok(());
        }
        let g = self.proto_mut();
        let mut old: Vec<Option<NodeProto>> =
            std::mem::take(&mut g.node).into_iter().map(Some).collect();
        g.node = order.iter().map(|&i| old[i].take().expect("each index once")).collect();
        Ok(())
    }

    /// Index of the node that writes `value` (the first one, if the graph is malformed).
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.index().producers.get(value).copied()
    }

    /// The node that writes `value`.
    pub fn producer_node(&self, value: &str) -> Option<&NodeProto> {
        self.producer(value).and_then(|i| self.node(i))
    }

    /// Indices of the nodes that read `value` (each once, ascending), subgraph reads included.
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.index().consumers.get(value).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Inserts `node` before position `index` (`index == num_nodes()` appends).
    pub fn insert_node(&mut self, index: usize, node: NodeProto) -> Result<()> {
        self.check_index(index, self.num_nodes() + 1)?;
        self.proto_mut().node.insert(index, node);
        Ok(())
    }

    /// Appends `node` and returns its index.
    pub fn push_node(&mut self, node: NodeProto) -> usize {
        let g = self.proto_mut();
        g.node.push(node);
        g.node.len() - 1
    }

    /// Removes and returns the node at `index`; later nodes move down by one.
    pub fn remove_node(&mut self, index: usize) -> Result<NodeProto> {
        self.check_index(index, self.num_nodes())?;
        Ok(self.proto_mut().node.remove(index))
    }

    /// Makes node `node` read `new` wherever it read `old` (inputs, and outer-scope reads of
    /// its subgraphs). Returns how many references changed; an error if there were none.
    pub fn replace_input(&mut self, node: usize, old: &str, new: &str) -> Result<usize> {
        self.check_index(node, self.num_nodes())?;
        let n = &mut self.proto_mut().node[node];
        let changed = rename_in_list(&mut n.input, old, new) + rename_free_in_node(n, old, new);
        if changed == 0 {
            let n = &self.proto().node[node];
            return Err(GraphError::NoSuchInput {
                node: node_label(n, node),
                op_type: n.op_type.clone(),
                value: old.to_string(),
            });
        }
        Ok(changed)
    }

    /// Makes every node that reads `old` read `new` instead (graph outputs keep naming `old`).
    /// Returns how many references changed.
    pub fn replace_uses(&mut self, old: &str, new: &str) -> usize {
        let mut changed = 0;
        for n in &mut self.proto_mut().node {
            changed += rename_in_list(&mut n.input, old, new) + rename_free_in_node(n, old, new);
        }
        changed
    }

    /// Renames value `old` to `new` everywhere: producer output, consumer inputs, subgraph
    /// reads, graph inputs/outputs, value_info, initializers, quantization annotations.
    /// `new` must not be a name the graph already uses.
    pub fn rename_value(&mut self, old: &str, new: &str) -> Result<()> {
        if old == new {
            return Ok(());
        }
        if self.index().names.contains(new) {
            return Err(GraphError::NameTaken { name: new.to_string() });
        }
        let g = self.proto_mut();
        for n in &mut g.node {
            rename_in_list(&mut n.input, old, new);
            rename_in_list(&mut n.output, old, new);
            rename_free_in_node(n, old, new);
        }
        for v in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
            if v.name == old {
                v.name = new.to_string();
            }
        }
        let sparse = g.sparse_initializer.iter_mut().filter_map(|s| s.values.as_mut());
        for t in g.initializer.iter_mut().chain(sparse) {
            if t.name == old {
                t.name = new.to_string();
            }
        }
        for a in &mut g.quantization_annotation {
            if a.tensor_name == old {
                a.tensor_name = new.to_string();
            }
        }
        Ok(())
    }

    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.proto().initializer.iter().find(|t| t.name == name)
    }

    pub fn initializer_mut(&mut self, name: &str) -> Option<&mut TensorProto> {
        self.proto_mut().initializer.iter_mut().find(|t| t.name == name)
    }

    pub fn is_initializer(&self, name: &str) -> bool {
        self.initializer(name).is_some()
    }

    /// Adds `tensor` as an initializer, replacing (and returning) one with the same name.
    pub fn add_initializer(&mut self, tensor: TensorProto) -> Option<TensorProto> {
        let g = self.proto_mut();
        match g.initializer.iter_mut().find(|t| t.name == tensor.name) {
            Some(slot) => Some(std::mem::replace(slot, tensor)),
            None => {
                g.initializer.push(tensor);
                None
            }
        }
    }

    /// Removes and returns the initializer `name`.
    pub fn remove_initializer(&mut self, name: &str) -> Option<TensorProto> {
        let g = self.proto_mut();
        let pos = g.initializer.iter().position(|t| t.name == name)?;
        Some(g.initializer.remove(pos))
    }

    /// Drops initializers no node reads and that are not graph outputs. Initializers also
    /// listed as graph inputs (overridable defaults) are part of the interface and stay.
    /// Returns the removed names.
    pub fn remove_unused_initializers(&mut self) -> Vec<String> {
        let keep: HashSet<String> = {
            let g = self.proto();
            let ix = self.index();
            g.initializer
                .iter()
                .filter(|t| {
                    ix.consumers.contains_key(&t.name)
                        || g.output.iter().chain(&g.input).any(|v| v.name == t.name)
                })
                .map(|t| t.name.clone())
                .collect()
        };
        let g = self.proto_mut();
        let mut removed = Vec::new();
        g.initializer.retain(|t| {
            let k = keep.contains(&t.name);
            if !k {
                removed.push(t.name.clone());
            }
            k
        });
        removed
    }

    /// Whether `name` is listed in `graph.input` (old models list initializers there too; see
    /// [`Graph::runtime_inputs`]).
    pub fn is_graph_input(&self, name: &str) -> bool {
        self.proto().input.iter().any(|v| v.name == name)
    }

    pub fn is_graph_output(&self, name: &str) -> bool {
        self.proto().output.iter().any(|v| v.name == name)
    }

    /// The graph inputs a caller must feed: `graph.input` minus initializers.
    pub fn runtime_inputs(&self) -> Vec<&ValueInfoProto> {
        let inits: HashSet<&str> =
            self.proto().initializer.iter().map(|t| t.name.as_str()).collect();
        self.proto().input.iter().filter(|v| !inits.contains(v.name.as_str())).collect()
    }

    /// The declared type of `name`: its graph input, graph output or value_info entry.
    pub fn value_info(&self, name: &str) -> Option<&ValueInfoProto> {
        let g = self.proto();
        g.input.iter().chain(&g.output).chain(&g.value_info).find(|v| v.name == name)
    }

    /// A name no value, node or initializer in the graph uses and that no earlier call
    /// returned: `prefix` itself if free, else `prefix_1`, `prefix_2`, …
    pub fn unique_name(&mut self, prefix: &str) -> String {
        let taken = |s: &str, g: &Graph| g.index().names.contains(s) || g.reserved.contains(s);
        let mut name = prefix.to_string();
        let mut k = 1usize;
        while name.is_empty() || taken(&name, self) {
            name = format!("{prefix}_{k}");
            k += 1;
        }
        self.reserved.insert(name.clone());
        name
    }

    /// The opset version the model imports for `domain` (`""` and `"ai.onnx"` are the same).
    pub fn opset_version(&self, domain: &str) -> Option<i64> {
        opset_version(&self.model, domain)
    }
}

/// The opset version `model` imports for `domain` (`""` and `"ai.onnx"` are the same).
pub fn opset_version(model: &ModelProto, domain: &str) -> Option<i64> {
    let norm = |d: &str| if d == "ai.onnx" { "" } else { d }.to_string();
    let want = norm(domain);
    model.opset_import.iter().find(|o| norm(&o.domain) == want).map(|o| o.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{AttributeProto, OperatorSetIdProto};

    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        crate::build::node(op, name, inputs, outputs)
    }

    fn vi(name: &str) -> ValueInfoProto {
        ValueInfoProto { name: name.into(), ..Default::default() }
    }

    fn model(nodes: Vec<NodeProto>) -> ModelProto {
        ModelProto {
            ir_version: 8,
            doc_string: "kept".into(),
            opset_import: vec![
                OperatorSetIdProto { domain: "".into(), version: 17 },
                OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 },
            ],
            graph: Some(GraphProto {
                node: nodes,
                input: vec![vi("x")],
                output: vec![vi("out")],
                initializer: vec![
                    TensorProto { name: "w".into(), dims: vec![1], ..Default::default() },
                    TensorProto { name: "unused".into(), dims: vec![1], ..Default::default() },
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ops(g: &Graph) -> Vec<&str> {
        g.nodes().iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn topo_sort_is_stable_and_orders_dependencies() {
        let m = model(vec![
            node("c", "Add", &["b", "a2"], &["out"]),
            node("a", "Relu", &["x"], &["a1"]),
            node("a_side", "Neg", &["x"], &["a2"]),
            node("b", "Mul", &["a1", "w"], &["b"]),
        ]);
        let mut g = Graph::new(m).unwrap();
        g.topo_sort().unwrap();
        assert_eq!(ops(&g), ["a", "a_side", "b", "c"]);
        let before = g.clone().into_model();
        g.topo_sort().unwrap();
        assert_eq!(g.into_model(), before);
    }

    #[test]
    fn topo_sort_names_cycles_and_undefined_values() {
        let m = model(vec![
            node("p", "Relu", &["x"], &["p"]),
            node("q", "Add", &["p", "s"], &["q"]),
            node("r", "Neg", &["q"], &["r"]),
            node("s", "Neg", &["r"], &["s"]),
        ]);
        let e = Graph::new(m.clone()).unwrap().topo_sort().unwrap_err();
        let GraphError::Cycle { nodes } = &e else { panic!("{e}") };
        assert_eq!(nodes.len(), 4, "{e}");
        assert_eq!(nodes.first(), nodes.last());
        for n in ["'q'", "'r'", "'s'"] {
            assert!(e.to_string().contains(n), "{e}");
        }
        assert!(!e.to_string().contains("'p'"), "{e}");

        let m = model(vec![node("n1", "Relu", &["nowhere"], &["out"])]);
        let e = Graph::new(m).unwrap().topo_sort().unwrap_err().to_string();
        assert!(e.contains("'n1'") && e.contains("Relu") && e.contains("'nowhere'"), "{e}");

        let m =
            model(vec![node("d1", "Relu", &["x"], &["out"]), node("d2", "Neg", &["x"], &["out"])]);
        let e = Graph::new(m).unwrap().topo_sort().unwrap_err().to_string();
        assert!(e.contains("'out'") && e.contains("'d1'") && e.contains("'d2'"), "{e}");

        let e = Graph::new(ModelProto::default()).unwrap_err();
        assert!(matches!(e, GraphError::NoGraph));
    }

    #[test]
    fn producers_and_consumers_follow_edits() {
        let m = model(vec![
            node("a", "Relu", &["x"], &["a"]),
            node("b", "Mul", &["a", "a"], &["b"]),
            node("c", "Add", &["a", "b"], &["out"]),
        ]);
        let mut g = Graph::new(m).unwrap();
        assert_eq!(g.producer("a"), Some(0));
        assert_eq!(g.producer("x"), None);
        assert_eq!(g.consumers("a"), &[1, 2]);
        assert_eq!(g.consumers("w"), &[] as &[usize]);

        g.insert_node(1, node("q", "Identity", &["a"], &["a_q"])).unwrap();
        assert_eq!(g.replace_input(3, "a", "a_q").unwrap(), 1);
        assert_eq!(g.consumers("a"), &[1, 2]);
        assert_eq!(g.consumers("a_q"), &[3]);
        assert_eq!(g.producer("out"), Some(3));
        let e = g.replace_input(3, "zzz", "y").unwrap_err().to_string();
        assert!(e.contains("'c'") && e.contains("zzz"), "{e}");

        let removed = g.remove_node(1).unwrap();
        assert_eq!(removed.name, "q");
        assert_eq!(g.producer("a_q"), None);
        assert!(matches!(g.remove_node(9), Err(GraphError::NodeIndex { index: 9, len: 3 })));
        assert!(g.insert_node(4, node("z", "Relu", &[], &[])).is_err());

        assert_eq!(g.replace_uses("a", "x"), 2); // both inputs of `b`
        assert!(g.consumers("a").is_empty());
    }

    #[test]
    fn rename_value_reaches_everything_and_refuses_taken_names() {
        let mut body = GraphProto {
            node: vec![node("inner", "Add", &["a", "w"], &["t"])],
            output: vec![vi("t")],
            ..Default::default()
        };
        body.node.push(node("inner2", "Relu", &["t"], &["t2"]));
        let mut ifn = node("if", "If", &["x"], &["out"]);
        ifn.attribute.push(AttributeProto {
            name: "then_branch".into(),
            r#type: 5,
            g: Some(body),
            ..Default::default()
        });
        let m = model(vec![node("a", "Relu", &["x"], &["a"]), ifn]);
        let mut g = Graph::new(m).unwrap();
        // The If node reads `a` and `w` through its subgraph.
        assert_eq!(g.consumers("a"), &[1]);
        assert_eq!(g.consumers("w"), &[1]);
        assert!(g.remove_unused_initializers() == ["unused"]);
        assert!(g.initializer("w").is_some());

        assert!(matches!(g.rename_value("a", "w"), Err(GraphError::NameTaken { .. })));
        g.rename_value("a", "a_renamed").unwrap();
        g.rename_value("out", "result").unwrap();
        g.rename_value("w", "weight").unwrap();
        assert!(g.is_graph_output("result") && !g.is_graph_output("out"));
        assert!(g.initializer("weight").is_some());
        let body = g.nodes()[1].attribute[0].g.as_ref().unwrap();
        assert_eq!(body.node[0].input, ["a_renamed", "weight"]);
        assert_eq!(g.consumers("a_renamed"), &[1]);
        // A subgraph's own value shadows the outer one.
        g.rename_value("t", "t_outer").unwrap();
        let body = g.nodes()[1].attribute[0].g.as_ref().unwrap();
        assert_eq!(body.node[1].input, ["t"]);
    }

    #[test]
    fn initializers_names_and_opsets() {
        let m = model(vec![node("a", "Mul", &["x", "w"], &["out"])]);
        let original = m.clone();
        let mut g = Graph::new(m).unwrap();
        assert_eq!(g.opset_version(""), Some(17));
        assert_eq!(g.opset_version("ai.onnx"), Some(17));
        assert_eq!(g.opset_version("com.microsoft"), Some(1));
        assert_eq!(g.opset_version("ai.onnx.ml"), None);
        assert!(g.is_graph_input("x") && !g.is_graph_input("w") && g.is_initializer("w"));
        assert_eq!(g.runtime_inputs().len(), 1);

        assert_eq!(g.unique_name("fresh"), "fresh");
        assert_eq!(g.unique_name("fresh"), "fresh_1");
        assert_eq!(g.unique_name("w"), "w_1");
        assert_eq!(g.unique_name("a"), "a_1"); // node names count too

        let t = TensorProto { name: "w".into(), dims: vec![2], ..Default::default() };
        assert_eq!(g.add_initializer(t).unwrap().dims, vec![1]);
        assert_eq!(g.initializer("w").unwrap().dims, vec![2]);
        assert!(g
            .add_initializer(TensorProto { name: "w2".into(), ..Default::default() })
            .is_none());
        assert_eq!(g.remove_unused_initializers(), ["unused", "w2"]);
        assert!(g.remove_initializer("w").is_some());
        assert!(g.remove_initializer("w").is_none());

        // Untouched models come back identical.
        assert_eq!(Graph::new(original.clone()).unwrap().into_model(), original);
    }
}
