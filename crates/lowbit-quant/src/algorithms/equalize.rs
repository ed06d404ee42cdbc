//! Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
//! Equalization and Bias Correction", §4) of an FP32 graph whose BatchNormalization nodes are
//! folded.
//!
//! Two layers A → B (`Conv` or `Gemm`) joined by ops that commute with a positive per-channel
//! scale compute the same function when A's output channel `c` is divided by `s_c` and B's
//! input channel `c` multiplied by it: `W_A[c] /= s_c`, `b_A[c] /= s_c`, `W_B[:, c] *= s_c`.
//! With `r_A[c]`, `r_B[c]` the channel's largest `|w|` in each, `s_c = sqrt(r_A[c] / r_B[c])`
//! makes both `sqrt(r_A[c] · r_B[c])`, so per-tensor weight grids fit every channel better.
//! A layer in two pairs (a depthwise conv between expand and project) takes both scales; the
//! pairs are swept until no scale moves by more than [`SETTLED`].
//!
//! | between A and B | why the function is unchanged |
//! |---|---|
//! | nothing, `Identity`, `Relu`, `LeakyRelu` | positive homogeneous: `f(x / s) = f(x) / s` |
//! | `MaxPool`, `AveragePool`, `GlobalAveragePool`, `GlobalMaxPool` | per channel and positive homogeneous |
//! | `Clip(0 or none, hi)` | `clip(x / s, 0, hi / s) = clip(x, 0, hi) / s`: the Clip's max becomes `max_c hi / s_c` and a `Min` with the per-channel bounds `hi / s_c` follows it (ONNX Clip bounds are scalars) |
//! | `Flatten(axis 1)` / `Reshape` to `[N, C·m]` before a `Gemm` | feature `f` belongs to channel `⌊f / m⌋` |
//!
//! Left alone: a value with other readers (a residual branch), a `Clip` with a nonzero lower
//! bound, any other op between the layers. Grouped and depthwise convs are layers like any
//! other (a scale on input channel `c` multiplies every weight that reads it). Equal up to
//! float rounding, nothing else: the tests compare engine outputs.
//!
//! **Bias absorption** (§4.2), only where exact: when A's input is bounded to `[0, u]` per
//! channel (a clip of the previous pair) its output channel `c` is provably at least
//! `l_c = b_A[c] + Σ min(0, w) · u` (zero padding lies inside the bound). Where `l_c > 0`, only
//! elementwise ops lie between A and B and B has no padding, `a_c = min(l_c, hi_c)` moves from
//! A's bias into B's (`b_B += W_B · a`), and the clip bound drops by `a_c`: the activation
//! never crosses its lower kink, so `f(x) = f(x − a) + a`.

use super::{store_initializer, LayerChange, StepReport};
use crate::error::Result;
use crate::passes::{add_init, attr, attr_f, attr_i, init_f32, is_default_domain, make_node};

/// A node's name (or `Op#index`), for the report.
fn node_name(g: &Graph, i: usize) -> String {
    crate::passes::label(&g.nodes()[i], i)
}
use lowbit_onnx::graph::Graph;
use lowbit_onnx::pb::NodeProto;
use lowbit_onnx::tensor_from_proto;
use lowbit_tensor::{DType, Tensor};
use std::collections::HashMap;

/// Sweeps stop when no scale of a sweep differs from 1 by more than this.
pub const SETTLED: f64 = 1e-4;
/// At most this many sweeps over the pairs (chains of three settle in a few dozen).
const MAX_SWEEPS: usize = 500;
/// A channel whose range is below this fraction of its layer's largest is unused (dead after
/// BN folding): it keeps scale 1 rather than a scale that would blow its bias up.
const DEAD: f64 = 1e-6;

fn max_of(v: &[f64]) -> f64 {
    v.iter().fold(0f64, |a, &b| a.max(b))
}

/// A Conv or Gemm whose weight (and bias) are float initializers.
struct Layer {
    node: usize,
    kind: Kind,
    shape: Vec<usize>,
    w: Vec<f64>,
    /// The effective bias (Gemm: `beta · C`), zeros when there is none.
    b: Vec<f64>,
    has_bias: bool,
    out_ch: usize,
    in_ch: usize,
    /// Whether the weight or bias changed.
    touched: bool,
    bias_touched: bool,
    /// [`range_uniformity`] before.
    before: f64,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Elements per output channel, kernel elements, input channels per group, output channels
    /// per group; `padded` when any pad is nonzero (or `auto_pad` pads).
    Conv { inner: usize, kernel: usize, in_group: usize, out_group: usize, padded: bool },
    /// `trans_b`: B is `[N, K]`; `beta` scales C.
    Gemm { trans_b: bool, cols: usize, beta: f64 },
}

impl Layer {
    fn out_of(&self, i: usize) -> usize {
        match self.kind {
            Kind::Conv { inner, .. } => i / inner,
            Kind::Gemm { trans_b: true, cols, .. } => i / cols,
            Kind::Gemm { trans_b: false, cols, .. } => i % cols,
        }
    }

    fn in_of(&self, i: usize) -> usize {
        match self.kind {
            Kind::Conv { inner, kernel, in_group, out_group, .. } => {
                (i / inner / out_group) * in_group + (i % inner) / kernel
            }
            Kind::Gemm { trans_b: true, cols, .. } => i % cols,
            Kind::Gemm { trans_b: false, cols, .. } => i / cols,
        }
    }

    fn padded(&self) -> bool {
        matches!(self.kind, Kind::Conv { padded: true, .. })
    }

    /// Largest |w| per output channel.
    fn out_ranges(&self) -> Vec<f64> {
        let mut r = vec![0f64; self.out_ch];
        for (i, w) in self.w.iter().enumerate() {
            let c = self.out_of(i);
            r[c] = r[c].max(w.abs());
        }
        r
    }

    /// Largest |w| per input channel, input features grouped `per` to a channel.
    fn in_ranges(&self, per: usize) -> Vec<f64> {
        let mut r = vec![0f64; self.in_ch / per];
        for (i, w) in self.w.iter().enumerate() {
            let c = self.in_of(i) / per;
            r[c] = r[c].max(w.abs());
        }
        r
    }
}

/// How uniform a layer's output-channel weight ranges are: the mean channel range over the
/// largest (1: every channel uses the whole per-tensor grid).
pub fn range_uniformity(ranges: &[f64]) -> f64 {
    let max = max_of(ranges);
    if max == 0.0 || ranges.is_empty() {
        return 1.0;
    }
    ranges.iter().sum::<f64>() / ranges.len() as f64 / max
}

/// A Clip between two layers: its node and upper bound (the lower one is 0 or none).
struct ClipAt {
    node: usize,
    lower_zero: bool,
    hi: f64,
}

/// Two layers joined by ops that commute with a positive per-channel scale.
struct Pair {
    a: usize,
    b: usize,
    /// B's input features per channel of A (a Flatten of `m` positions, else 1).
    per: usize,
    clip: Option<ClipAt>,
    /// Only elementwise ops between (bias absorption needs it).
    elementwise: bool,
    /// The product of the scales applied to channel `c` (A's output divided by it).
    scale: Vec<f64>,
    /// Bias absorbed from A into B, per channel.
    shift: Vec<f64>,
}

/// What [`equalize`] did, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    pairs: usize,
    sweeps: usize,
    /// Clips given per-channel bounds (a `Min` node each).
    bounded: usize,
    /// Channels whose bias moved into the next layer.
    absorbed: usize,
}

/// Equalizes the weight ranges of consecutive convolutions in the FP32 graph `g`
/// (BatchNormalization already folded); the graph's function is unchanged.
pub fn equalize(g: &mut Graph) -> Result<StepReport> {
    run(g).map(|(r, _)| r)
}

fn run(g: &mut Graph) -> Result<(StepReport, Counts)> {
    g.topo_sort()?;
    let mut layers: Vec<Layer> = Vec::new();
    let mut layer_of: HashMap<usize, usize> = HashMap::new();
    for i in 0..g.num_nodes() {
        if let Some(l) = read_layer(g, i)? {
            layer_of.insert(i, layers.len());
            layers.push(l);
        }
    }
    let mut skipped: Vec<String> = Vec::new();
    let mut pairs: Vec<Pair> = Vec::new();
    let mut shapes = None;
    for a in 0..layers.len() {
        match find_pair(g, &layers, &layer_of, a, &mut shapes)? {
            Ok(Some(p)) => pairs.push(p),
            Ok(None) => {}
            Err(why) => skipped.push(format!("{}: {why}", node_name(g, layers[a].node))),
        }
    }
    for p in &pairs {
        for l in [p.a, p.b] {
            let layer = &mut layers[l];
            if !layer.touched {
                layer.before = range_uniformity(&layer.out_ranges());
                layer.touched = true;
            }
        }
    }

    let sweeps = settle(&mut layers, &mut pairs);
    let absorbed = absorb(&mut layers, &mut pairs);
    let bounded = write(g, &mut layers, &pairs)?;

    let mut report = StepReport { step: "equalize".into(), ..Default::default() };
    for l in layers.iter().filter(|l| l.touched) {
        report.layers.push(LayerChange {
            node: node_name(g, l.node),
            metric: "weight range uniformity (mean output-channel max|w| / largest)".into(),
            before: l.before,
            after: range_uniformity(&l.out_ranges()),
        });
    }
    let mean = |f: fn(&LayerChange) -> f64| {
        report.layers.iter().map(f).sum::<f64>() / report.layers.len().max(1) as f64
    };
    report.summary = format!(
        "{} layer pairs equalized in {} sweeps (range uniformity {:.2} -> {:.2} on average), {} \
         clip bounds made per channel, {} channels' bias absorbed{}",
        pairs.len(),
        sweeps,
        mean(|c| c.before),
        mean(|c| c.after),
        bounded,
        absorbed,
        if skipped.is_empty() {
            String::new()
        } else {
            format!("; left alone: {}", skipped.join("; "))
        }
    );
    g.topo_sort()?;
    let counts = Counts { pairs: pairs.len(), sweeps, bounded, absorbed };
    Ok((report, counts))
}

/// The layer node `i` is, when its weight (and bias) are float initializers of a layout it
/// understands.
fn read_layer(g: &Graph, i: usize) -> Result<Option<Layer>> {
    let n = &g.nodes()[i];
    if !is_default_domain(n) || !matches!(n.op_type.as_str(), "Conv" | "Gemm") {
        return Ok(None);
    }
    let Some(w) = n.input.get(1) else { return Ok(None) };
    let Some(wt) = init_f32(g, w)? else { return Ok(None) };
    let shape = wt.shape().to_vec();
    let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
        None => None,
        Some(b) => match init_f32(g, b)? {
            Some(t) => Some(t),
            None => return Ok(None),
        },
    };
    let (kind, out_ch, in_ch) = if n.op_type == "Conv" {
        if shape.len() < 3 || shape.contains(&0) {
            return Ok(None);
        }
        let group = attr_i(n, "group").unwrap_or(1).max(1) as usize;
        let out_ch = shape[0];
        if out_ch % group != 0 {
            return Ok(None);
        }
        let inner: usize = shape[1..].iter().product();
        let kernel: usize = shape[2..].iter().product();
        let auto_pad = attr(n, "auto_pad").map(|a| a.s.as_slice()).unwrap_or(b"NOTSET");
        let pads = attr(n, "pads").map(|a| a.ints.iter().any(|&p| p != 0)).unwrap_or(false);
        let padded =
            pads || !(auto_pad == b"NOTSET" || auto_pad == b"VALID" || auto_pad.is_empty());
        let kind =
            Kind::Conv { inner, kernel, in_group: shape[1], out_group: out_ch / group, padded };
        (kind, out_ch, shape[1] * group)
    } else {
        if shape.len() != 2 || attr_i(n, "transA").unwrap_or(0) != 0 {
            return Ok(None);
        }
        let trans_b = attr_i(n, "transB").unwrap_or(0) != 0;
        let (out_ch, in_ch) = if trans_b { (shape[0], shape[1]) } else { (shape[1], shape[0]) };
        let beta = attr_f(n, "beta").unwrap_or(1.0) as f64;
        (Kind::Gemm { trans_b, cols: shape[1], beta }, out_ch, in_ch)
    };
    let scale = match kind {
        Kind::Gemm { beta, .. } => beta,
        Kind::Conv { .. } => 1.0,
    };
    let b = match &bias {
        Some(t) if t.shape() == [out_ch] => t.as_f32()?.iter().map(|&v| v as f64 * scale).collect(),
        Some(_) => return Ok(None),
        None => vec![0.0; out_ch],
    };
    Ok(Some(Layer {
        node: i,
        kind,
        shape,
        w: wt.as_f32()?.iter().map(|&v| v as f64).collect(),
        b,
        has_bias: bias.is_some(),
        out_ch,
        in_ch,
        touched: false,
        bias_touched: false,
        before: 1.0,
    }))
}

/// A scalar constant (initializer or `Constant` output), if `name` is one.
fn const_scalar(g: &Graph, name: &str) -> Result<Option<f64>> {
    let t = match g.initializer(name) {
        Some(p) => tensor_from_proto(p)?,
        None => match g.producer_node(name) {
            Some(n) if n.op_type == "Constant" && is_default_domain(n) => {
                match (attr(n, "value").and_then(|a| a.t.as_ref()), attr_f(n, "value_float")) {
                    (Some(p), _) => tensor_from_proto(p)?,
                    (None, Some(v)) => Tensor::scalar(v),
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        },
    };
    if t.len() != 1 || !matches!(t.dtype(), DType::F32) {
        return Ok(None);
    }
    Ok(Some(t.as_f32()?[0] as f64))
}

/// A Clip's bounds (`-inf`/`inf` where absent), when they are constants.
fn clip_bounds(g: &Graph, n: &NodeProto) -> Result<Option<(f64, f64)>> {
    let opset = g.opset_version("").unwrap_or(1);
    if opset < 11 {
        let lo = attr_f(n, "min").map_or(f64::NEG_INFINITY, |v| v as f64);
        let hi = attr_f(n, "max").map_or(f64::INFINITY, |v| v as f64);
        return Ok(Some((lo, hi)));
    }
    let mut b = [f64::NEG_INFINITY, f64::INFINITY];
    for (k, slot) in b.iter_mut().enumerate() {
        match n.input.get(k + 1).filter(|s| !s.is_empty()) {
            None => {}
            Some(name) => match const_scalar(g, name)? {
                Some(v) => *slot = v,
                None => return Ok(None),
            },
        }
    }
    Ok(Some((b[0], b[1])))
}

/// Ops that map each channel on its own and commute with a positive scale.
const ELEMENTWISE: &[&str] = &["Relu", "LeakyRelu", "Identity", "Clip"];
const POOLS: &[&str] = &["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"];
const FLATTENS: &[&str] = &["Flatten", "Reshape"];

type Shapes = Option<HashMap<String, lowbit_onnx::infer::ValueType>>;

/// The pair layer `a` starts, `Ok(None)` when its output does not lead to a layer at all, and
/// `Err(why)` when it does but cannot be equalized exactly.
fn find_pair(
    g: &Graph,
    layers: &[Layer],
    layer_of: &HashMap<usize, usize>,
    a: usize,
    shapes: &mut Shapes,
) -> Result<std::result::Result<Option<Pair>, String>> {
    let la = &layers[a];
    let node_a = &g.nodes()[la.node];
    if node_a.output.len() != 1 {
        return Ok(Ok(None));
    }
    let mut value = node_a.output[0].clone();
    let mut clip: Option<ClipAt> = None;
    let mut elementwise = true;
    let mut per = 1usize;
    let mut flattened = false;
    loop {
        if g.is_graph_output(&value) {
            return Ok(Ok(None));
        }
        let users = g.consumers(&value);
        let [next] = users else { return Ok(Ok(None)) };
        let n = &g.nodes()[*next];
        if let Some(&b) = layer_of.get(next) {
            let lb = &layers[b];
            if n.input[0] != value || n.input.iter().skip(1).any(|s| *s == value) {
                return Ok(Ok(None));
            }
            if lb.in_ch != la.out_ch * per {
                return Ok(Err(format!(
                    "{} reads {} features, not {} channels × {per}",
                    node_name(g, lb.node),
                    lb.in_ch,
                    la.out_ch
                )));
            }
            if flattened && !matches!(lb.kind, Kind::Gemm { .. }) {
                return Ok(Ok(None));
            }
            let channels = la.out_ch;
            return Ok(Ok(Some(Pair {
                a,
                b,
                per,
                clip,
                elementwise,
                scale: vec![1.0; channels],
                shift: vec![0.0; channels],
            })));
        }
        let op = n.op_type.as_str();
        let single_out = n.output.iter().skip(1).all(|o| o.is_empty());
        if !is_default_domain(n) || !single_out || n.input.first() != Some(&value) {
            return Ok(Ok(None));
        }
        if ELEMENTWISE.contains(&op) {
            if op == "Clip" {
                if flattened {
                    return Ok(Err("a Clip after the flatten".into()));
                }
                let Some((lo, hi)) = clip_bounds(g, n)? else {
                    return Ok(Err("a Clip whose bounds are not constants".into()));
                };
                let lower_zero = lo == 0.0;
                if !(lower_zero || lo <= f32::MIN as f64) {
                    return Ok(Err(format!(
                        "Clip lower bound {lo} would need a per-channel Max after scaling"
                    )));
                }
                if hi.is_finite() && hi < f32::MAX as f64 {
                    if clip.is_some() || hi <= 0.0 || g.opset_version("").unwrap_or(1) < 8 {
                        return Ok(Err("a second Clip, a bound ≤ 0 or opset < 8".into()));
                    }
                    clip = Some(ClipAt { node: *next, lower_zero, hi });
                }
            }
        } else if POOLS.contains(&op) && !flattened {
            elementwise = false;
        } else if FLATTENS.contains(&op) && !flattened {
            let Some(m) = flatten_factor(g, n, la.out_ch, shapes) else { return Ok(Ok(None)) };
            per = m;
            flattened = true;
            elementwise = false;
        } else {
            return Ok(Ok(None));
        }
        value = n.output[0].clone();
    }
}

/// Positions per channel when `n` flattens `[N, C, d...]` to `[N, C · Π d]` (known shapes).
fn flatten_factor(g: &Graph, n: &NodeProto, channels: usize, shapes: &mut Shapes) -> Option<usize> {
    if n.op_type == "Flatten" && attr_i(n, "axis").unwrap_or(1) != 1 {
        return None;
    }
    if shapes.is_none() {
        *shapes = Some(lowbit_onnx::infer::infer_shapes(g.model()).ok()?);
    }
    let s = shapes.as_ref()?;
    let inp = s.get(&n.input[0])?.shape.clone()?;
    let out = s.get(&n.output[0])?.shape.clone()?;
    if inp.len() < 2 || out.len() != 2 || inp[0] != out[0] || inp[1].known()? != channels as i64 {
        return None;
    }
    let m: i64 = inp[2..].iter().map(|d| d.known()).product::<Option<i64>>()?;
    (out[1].known()? == channels as i64 * m && m > 0).then_some(m as usize)
}

/// Sweeps the pairs until the scales settle; returns the number of sweeps.
fn settle(layers: &mut [Layer], pairs: &mut [Pair]) -> usize {
    for sweep in 1..=MAX_SWEEPS {
        let mut moved = 0f64;
        for p in pairs.iter_mut() {
            let ra = layers[p.a].out_ranges();
            let rb = layers[p.b].in_ranges(p.per);
            let (fa, fb) = (DEAD * max_of(&ra), DEAD * max_of(&rb));
            let s: Vec<f64> = ra
                .iter()
                .zip(&rb)
                .map(|(&x, &y)| if x > fa && y > fb { (x / y).sqrt() } else { 1.0 })
                .collect();
            moved = s.iter().fold(moved, |m, &v| m.max((v - 1.0).abs()));
            let la = &mut layers[p.a];
            for i in 0..la.w.len() {
                let c = la.out_of(i);
                la.w[i] /= s[c];
            }
            for (b, &sc) in la.b.iter_mut().zip(&s) {
                *b /= sc;
            }
            let lb = &mut layers[p.b];
            for i in 0..lb.w.len() {
                let c = lb.in_of(i) / p.per;
                lb.w[i] *= s[c];
            }
            for (acc, &sc) in p.scale.iter_mut().zip(&s) {
                *acc *= sc;
            }
        }
        if moved <= SETTLED {
            return sweep;
        }
    }
    MAX_SWEEPS
}

/// Moves provably positive parts of A's output into B's bias (see the module docs); returns the
/// number of channels shifted.
fn absorb(layers: &mut [Layer], pairs: &mut [Pair]) -> usize {
    let mut count = 0;
    // Per layer, the per-channel upper bound of its input (lower bound 0) where known, and the
    // input features per channel.
    let mut input_bound: HashMap<usize, (Vec<f64>, usize)> = HashMap::new();
    for p in pairs.iter_mut() {
        let bound_after = |p: &Pair| -> Option<Vec<f64>> {
            let c = p.clip.as_ref().filter(|c| c.lower_zero)?;
            Some(p.scale.iter().zip(&p.shift).map(|(s, a)| c.hi / s - a).collect())
        };
        let la = &layers[p.a];
        let lbl = &layers[p.b];
        let eligible = p.elementwise && !lbl.padded() && p.per == 1;
        let bias_ok = |l: &Layer| !matches!(l.kind, Kind::Gemm { beta, .. } if beta == 0.0);
        let bound = input_bound.get(&p.a).filter(|_| eligible && bias_ok(la) && bias_ok(lbl));
        if let Some((u, per)) = bound {
            let mut low = la.b.clone();
            for (i, &w) in la.w.iter().enumerate() {
                if w < 0.0 {
                    low[la.out_of(i)] += w * u[la.in_of(i) / per];
                }
            }
            let cap = bound_after(p);
            for (c, &l) in low.iter().enumerate() {
                let a = match &cap {
                    Some(cap) => l.min(cap[c]),
                    None => l,
                };
                if a > 0.0 && a.is_finite() {
                    p.shift[c] = a;
                    count += 1;
                }
            }
            if p.shift.iter().any(|&a| a > 0.0) {
                let shift = p.shift.clone();
                let la = &mut layers[p.a];
                for (b, a) in la.b.iter_mut().zip(&shift) {
                    *b -= a;
                }
                la.bias_touched = true;
                let lb = &mut layers[p.b];
                let mut add = vec![0f64; lb.out_ch];
                for (i, &w) in lb.w.iter().enumerate() {
                    add[lb.out_of(i)] += w * shift[lb.in_of(i)];
                }
                for (b, a) in lb.b.iter_mut().zip(add) {
                    *b += a;
                }
                lb.bias_touched = true;
            }
        }
        if let Some(u) = bound_after(p) {
            input_bound.insert(p.b, (u, p.per));
        }
    }
    count
}

/// Writes the layers' weights and biases and the pairs' clip bounds into `g`; returns how many
/// clips got per-channel bounds (a `Min` node).
fn write(g: &mut Graph, layers: &mut [Layer], pairs: &[Pair]) -> Result<usize> {
    for l in layers.iter().filter(|l| l.touched) {
        let node = g.nodes()[l.node].clone();
        let w: Vec<f32> = l.w.iter().map(|&v| v as f32).collect();
        let wname =
            store_initializer(g, &node.input[1], l.node, Tensor::from_vec(l.shape.clone(), w)?);
        g.node_mut(l.node).expect("layer index").input[1] = wname;
        let beta = match l.kind {
            Kind::Gemm { beta, .. } => beta,
            Kind::Conv { .. } => 1.0,
        };
        // The bias changes with the scales unless it is absent (or ignored: beta 0) and
        // nothing was absorbed.
        if (l.has_bias && beta != 0.0) || l.bias_touched {
            let b: Vec<f32> = l.b.iter().map(|&v| (v / beta) as f32).collect();
            let t = Tensor::from_vec(vec![l.out_ch], b)?;
            let bname = match node.input.get(2).filter(|s| !s.is_empty()) {
                Some(old) => store_initializer(g, old, l.node, t),
                None => add_init(g, &format!("{}_bias_absorbed", node.input[1]), &t),
            };
            let n = g.node_mut(l.node).expect("layer index");
            if n.input.len() > 2 {
                n.input[2] = bname;
            } else {
                n.input.push(bname);
            }
        }
    }
    let opset = g.opset_version("").unwrap_or(1);
    let mut bounded = 0;
    // Clip bounds replaced: the Constant nodes that made them, dropped once nothing reads them.
    let mut old_bounds: Vec<String> = Vec::new();
    for p in pairs {
        let Some(clip) = &p.clip else { continue };
        let bound: Vec<f32> =
            p.scale.iter().zip(&p.shift).map(|(s, a)| (clip.hi / s - a) as f32).collect();
        let hi = bound.iter().fold(f32::NEG_INFINITY, |m, &b| m.max(b));
        let node = g.nodes()[clip.node].clone();
        let label = node_name(g, clip.node);
        if opset < 11 {
            let n = g.node_mut(clip.node).expect("clip index");
            for a in n.attribute.iter_mut().filter(|a| a.name == "max") {
                a.f = hi;
            }
        } else {
            let name = add_init(g, &format!("{label}_max"), &Tensor::scalar(hi));
            let n = g.node_mut(clip.node).expect("clip index");
            while n.input.len() < 3 {
                n.input.push(String::new());
            }
            old_bounds.push(std::mem::replace(&mut n.input[2], name));
        }
        if bound.iter().all(|&b| b == hi) {
            continue;
        }
        // Per-channel bounds: Clip(lo, max bound) → Min(bounds), the Min taking over the
        // Clip's output name so every reader is unchanged.
        let out = node.output[0].clone();
        let clipped = g.unique_name(&format!("{out}_clip"));
        g.node_mut(clip.node).expect("clip index").output[0] = clipped.clone();
        let rank = match layers[p.a].kind {
            Kind::Conv { .. } => layers[p.a].shape.len(),
            Kind::Gemm { .. } => 2,
        };
        let mut bshape = vec![bound.len()];
        bshape.resize(rank - 1, 1);
        let bname = add_init(g, &format!("{label}_channel_max"), &Tensor::from_vec(bshape, bound)?);
        let mname = g.unique_name(&format!("{label}_channel_min"));
        g.push_node(make_node("Min", mname, vec![clipped, bname], vec![out], vec![]));
        bounded += 1;
    }
    let mut dead: Vec<usize> = old_bounds
        .iter()
        .filter(|v| !v.is_empty() && g.consumers(v).is_empty() && !g.is_graph_output(v))
        .filter_map(|v| g.producer(v))
        .filter(|&i| g.nodes()[i].op_type == "Constant" && is_default_domain(&g.nodes()[i]))
        .collect();
    dead.sort_unstable();
    dead.dedup();
    for i in dead.into_iter().rev() {
        g.remove_node(i)?;
    }
    Ok(bounded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::test_graphs::{
        int, ints, max_rel_diff, run as run_model, uneven_weights, uniform, Builder,
    };
    use lowbit_onnx::pb::ModelProto;

    /// Equalization may change outputs by float rounding only: the largest difference over
    /// the largest output.
    const EXACT: f32 = 1e-4;

    /// expand 1x1 (4 → 8) → Clip(0, 6) → depthwise 3x3 (pad 1) → Clip(0, 6) → project 1x1
    /// (8 → 4), the MobileNetV2 / EfficientNet-Lite block, with channel ranges spread over
    /// `10^±spread` and depthwise biases `dw_bias`.
    fn mobile_block(spread: f32, dw_bias: Vec<f32>) -> ModelProto {
        let mut b = Builder::default();
        let zero = b.f32("zero", &[], vec![0.0]);
        let six = b.f32("six", &[], vec![6.0]);
        let we = b.f32("we", &[8, 4, 1, 1], uneven_weights(1, 8, 4, spread));
        let be = b.f32("be", &[8], uniform(2, 8, -1.0, 1.0));
        let wd: Vec<f32> = uneven_weights(3, 8, 9, spread).iter().map(|w| 3.0 * w).collect();
        let wd = b.f32("wd", &[8, 1, 3, 3], wd);
        let bd = b.f32("bd", &[8], dw_bias);
        let wp = b.f32("wp", &[4, 8, 1, 1], uneven_weights(5, 4, 8, spread));
        let bp = b.f32("bp", &[4], uniform(6, 4, -1.0, 1.0));
        let e = b.op("Conv", &["x", &we, &be], vec![]);
        let e = b.op("Clip", &[&e, &zero, &six], vec![]);
        let dw_attrs = vec![int("group", 8), ints("pads", &[1, 1, 1, 1])];
        let d = b.op("Conv", &[&e, &wd, &bd], dw_attrs);
        let d = b.op("Clip", &[&d, &zero, &six], vec![]);
        let p = b.op("Conv", &[&d, &wp, &bp], vec![]);
        b.model(&[2, 4, 7, 7], &[&p])
    }

    fn equalized(m: &ModelProto) -> (ModelProto, StepReport, Counts) {
        let mut g = Graph::new(m.clone()).unwrap();
        let (r, c) = run(&mut g).unwrap();
        (g.into_model(), r, c)
    }

    /// The largest value `name` takes on input `x`.
    fn observed_max(m: &ModelProto, x: &[f32], shape: &[usize], name: &str) -> f32 {
        let s = lowbit_engine::Session::new(m, &lowbit_engine::SessionOptions::unfused(1)).unwrap();
        let feeds = vec![("x".to_string(), Tensor::from_vec(shape.to_vec(), x.to_vec()).unwrap())];
        let mut max = f32::NEG_INFINITY;
        s.run_observed(feeds, &mut |n, t| {
            if n == name {
                max = t.as_f32().unwrap().iter().fold(max, |m, &v| m.max(v));
            }
        })
        .unwrap();
        max
    }

    fn count_ops(m: &ModelProto, op: &str) -> usize {
        m.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == op).count()
    }

    #[test]
    fn a_depthwise_relu6_block_keeps_its_function() {
        let m = mobile_block(1.0, uniform(4, 8, -1.0, 1.0));
        let shape = [2, 4, 7, 7];
        let x = uniform(7, 2 * 4 * 49, -3.0, 3.0);
        // Both clips cut at 6 on this input, so their bounds matter.
        let (m1, m3) =
            (observed_max(&m, &x, &shape, "conv1"), observed_max(&m, &x, &shape, "conv3"));
        assert!(m1 > 6.0 && m3 > 6.0, "{m1} {m3}");
        let (eq, report, counts) = equalized(&m);
        assert_eq!((counts.pairs, counts.bounded), (2, 2), "{}", report.summary);
        assert_eq!(count_ops(&eq, "Min"), 2);
        let d = max_rel_diff(&run_model(&m, &shape, &x), &run_model(&eq, &shape, &x));
        assert!(d < EXACT, "outputs moved by {d} of their range");
        // The clip's bound now differs per channel: the function would change without it.
        let mut no_min = eq.clone();
        let gp = no_min.graph.as_mut().unwrap();
        for n in gp.node.iter_mut().filter(|n| n.op_type == "Min") {
            n.op_type = "Max".into();
            n.input[1] = "zero".into();
        }
        let d = max_rel_diff(&run_model(&m, &shape, &x), &run_model(&no_min, &shape, &x));
        assert!(d > 100.0 * EXACT, "the per-channel bounds did not matter ({d})");
    }

    #[test]
    fn weight_ranges_become_uniform_and_a_pair_meets_in_the_middle() {
        let m = mobile_block(1.5, uniform(4, 8, -1.0, 1.0));
        let (eq, report, counts) = equalized(&m);
        assert!(counts.sweeps > 1 && counts.sweeps < MAX_SWEEPS, "{counts:?}");
        assert_eq!(report.layers.len(), 3);
        for l in &report.layers {
            assert!(l.after >= l.before - 1e-9, "{l:?}");
        }
        // The depthwise conv, uneven on both sides, gains the most.
        let dw = report.layers.iter().find(|l| l.node == "conv3").unwrap();
        assert!(dw.after > 2.0 * dw.before, "{dw:?}");
        // Settled: every channel's range in the first layer equals the same channel's range
        // in the depthwise's input, as the DFQ optimum says (r_A = r_B = sqrt(r_A r_B)).
        let g = Graph::new(eq).unwrap();
        let read =
            |i: usize| read_layer(&g, g.producer(&format!("conv{i}")).unwrap()).unwrap().unwrap();
        let (e, d) = (read(1), read(3));
        let (re, rd) = (e.out_ranges(), d.in_ranges(1));
        for (a, b) in re.iter().zip(&rd) {
            assert!((a - b).abs() <= 1e-3 * a.max(*b), "{re:?} vs {rd:?}");
        }
    }

    #[test]
    fn a_classifier_head_through_pooling_and_flatten_keeps_its_function() {
        let mut b = Builder::default();
        let zero = b.f32("zero", &[], vec![0.0]);
        let six = b.f32("six", &[], vec![6.0]);
        let wc = b.f32("wc", &[6, 3, 3, 3], uneven_weights(11, 6, 27, 1.0));
        let wg = b.f32("wg", &[5, 6], uneven_weights(12, 5, 6, 1.0));
        let bg = b.f32("bg", &[5], uniform(13, 5, -1.0, 1.0));
        let c = b.op("Conv", &["x", &wc], vec![ints("pads", &[1, 1, 1, 1])]);
        let c = b.op("Clip", &[&c, &zero, &six], vec![]);
        let p = b.op("GlobalAveragePool", &[&c], vec![]);
        let f = b.op("Flatten", &[&p], vec![int("axis", 1)]);
        let o = b.op("Gemm", &[&f, &wg, &bg], vec![int("transB", 1)]);
        let m = b.model(&[2, 3, 5, 5], &[&o]);
        let x = uniform(14, 2 * 3 * 25, -2.0, 2.0);
        let (eq, report, counts) = equalized(&m);
        assert_eq!((counts.pairs, counts.bounded), (1, 1), "{}", report.summary);
        let d = max_rel_diff(&run_model(&m, &[2, 3, 5, 5], &x), &run_model(&eq, &[2, 3, 5, 5], &x));
        assert!(d < EXACT, "{d}");
    }

    #[test]
    fn residual_branches_and_clip_floors_are_left_alone() {
        let mut b = Builder::default();
        let lo = b.f32("lo", &[], vec![-1.0]);
        let six = b.f32("six", &[], vec![6.0]);
        let w1 = b.f32("w1", &[4, 4, 1, 1], uneven_weights(21, 4, 4, 1.0));
        let w2 = b.f32("w2", &[4, 4, 1, 1], uneven_weights(22, 4, 4, 1.0));
        let w3 = b.f32("w3", &[4, 4, 1, 1], uneven_weights(23, 4, 4, 1.0));
        // c1 feeds both c2's branch and the residual Add; c2 feeds the Add.
        let c1 = b.op("Conv", &["x", &w1], vec![]);
        let r = b.op("Relu", &[&c1], vec![]);
        let c2 = b.op("Conv", &[&r, &w2], vec![]);
        let a = b.op("Add", &[&c1, &c2], vec![]);
        // Clip(-1, 6): its floor would have to differ per channel.
        let c3 = b.op("Conv", &[&a, &w3], vec![]);
        let k = b.op("Clip", &[&c3, &lo, &six], vec![]);
        // c4 → c5 is the one pair; their weights are shared with c2 and c1.
        let c4 = b.op("Conv", &[&k, &w2], vec![]);
        let c5 = b.op("Conv", &[&c4, &w1], vec![]);
        let m = b.model(&[1, 4, 3, 3], &[&c5]);
        let (eq, report, counts) = equalized(&m);
        assert_eq!(counts.pairs, 1, "{}", report.summary);
        assert!(report.summary.contains("Clip lower bound -1"), "{}", report.summary);
        // The scaled copies of shared weights get new names; the other readers keep theirs.
        let nodes = &eq.graph.as_ref().unwrap().node;
        let weight = |v: &str| nodes.iter().find(|n| n.output[0] == v).unwrap().input[1].clone();
        assert_eq!([weight(&c1), weight(&c2), weight(&c3)], ["w1", "w2", "w3"]);
        assert!(weight(&c4) != "w2" && weight(&c5) != "w1");
        let x = uniform(24, 36, -2.0, 2.0);
        let d = max_rel_diff(&run_model(&m, &[1, 4, 3, 3], &x), &run_model(&eq, &[1, 4, 3, 3], &x));
        assert!(d < EXACT, "{d}");
    }

    #[test]
    fn high_biases_are_absorbed_where_provably_exact() {
        // Half the depthwise channels carry a bias far above what their weights can take away
        // from inputs clipped to [0, 6]: their outputs are provably positive.
        let bias: Vec<f32> = (0..8).map(|c| if c % 2 == 0 { 100.0 } else { 0.5 }).collect();
        let m = mobile_block(0.3, bias);
        let shape = [2, 4, 7, 7];
        let x = uniform(31, 2 * 4 * 49, -3.0, 3.0);
        let (eq, report, counts) = equalized(&m);
        assert!(counts.absorbed >= 4, "{}", report.summary);
        let d = max_rel_diff(&run_model(&m, &shape, &x), &run_model(&eq, &shape, &x));
        assert!(d < EXACT, "{d}");
    }
}
