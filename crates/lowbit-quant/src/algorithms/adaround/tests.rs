//! AdaRound end to end on hand-built graphs: quantized through [`crate::quantize::quantize_run`]
//! with and without `--adaround`, the results compared through the engine.

use super::optimize::tests::Rng;
use crate::config::{AdaRoundOptions, QuantPlan, QuantizeConfig};
use crate::quantize::{quantize_run, QuantizeInputs, QuantizeSummary};
use crate::samples::{Feeds, NoProgress};
use crate::scheme::IntType;
use lowbit_engine::{Session, SessionOptions};
use lowbit_kernels::quantize::int_values;
use lowbit_onnx::build::{int_attr as int, ints_attr as ints};
use lowbit_onnx::build::{model, node, tensor_value_info, Dim};
use lowbit_onnx::pb::{GraphProto, ModelProto, NodeProto};
use lowbit_onnx::{tensor_from_proto, tensor_to_proto};
use lowbit_tensor::{DType, Tensor};

fn random(rng: &mut Rng, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), (0..n).map(|_| scale * rng.next()).collect()).unwrap()
}

/// A model of `nodes` from `x` (`x_shape`, batch first) to `y`, with these initializers.
fn graph(nodes: Vec<NodeProto>, inits: Vec<(&str, Tensor)>, x_shape: &[i64]) -> ModelProto {
    let mut dims = vec![Dim::Named("N")];
    dims.extend(x_shape.iter().map(|&d| Dim::Fixed(d)));
    let g = GraphProto {
        name: "adaround".into(),
        node: nodes,
        initializer: inits.iter().map(|(n, t)| tensor_to_proto(n, t)).collect(),
        input: vec![tensor_value_info("x", DType::F32, &dims)],
        output: vec![tensor_value_info("y", DType::F32, &[])],
        ..Default::default()
    };
    model(g, 17)
}

/// Conv 3×3 (4 → 8) → Relu → depthwise Conv 3×3 → Relu → GlobalAveragePool → Flatten → Gemm
/// (8 → 5), random weights.
fn conv_net(seed: u64) -> ModelProto {
    let mut rng = Rng::new(seed);
    let mut conv = node("Conv", "conv", &["x", "w1", "b1"], &["c1"]);
    conv.attribute = vec![ints("pads", &[1, 1, 1, 1])];
    let mut dw = node("Conv", "depthwise", &["r1", "w2"], &["c2"]);
    dw.attribute = vec![ints("pads", &[1, 1, 1, 1]), int("group", 8)];
    let mut gemm = node("Gemm", "fc", &["f", "w3", "b3"], &["y"]);
    gemm.attribute = vec![int("transB", 1)];
    let nodes = vec![
        conv,
        node("Relu", "relu1", &["c1"], &["r1"]),
        dw,
        node("Relu", "relu2", &["c2"], &["r2"]),
        node("GlobalAveragePool", "gap", &["r2"], &["p"]),
        node("Flatten", "flatten", &["p"], &["f"]),
        gemm,
    ];
    let inits = vec![
        ("w1", random(&mut rng, &[8, 4, 3, 3], 0.5)),
        ("b1", random(&mut rng, &[8], 0.1)),
        ("w2", random(&mut rng, &[8, 1, 3, 3], 0.5)),
        ("w3", random(&mut rng, &[5, 8], 0.5)),
        ("b3", random(&mut rng, &[5], 0.1)),
    ];
    graph(nodes, inits, &[4, 6, 6])
}

/// One Gemm `[N, 48] → [N, 12]` (`transB = 0`: the weight is stored `[k, o]`) on inputs with
/// a shared component, where rounding choices interact.
fn gemm_net(seed: u64) -> ModelProto {
    let mut rng = Rng::new(seed);
    let nodes = vec![node("Gemm", "fc", &["x", "w"], &["y"])];
    graph(nodes, vec![("w", random(&mut rng, &[48, 12], 1.0))], &[48])
}

/// `batches` batches of `rows` inputs of shape `shape`; the first input feature is shared
/// by all so that the inputs are correlated.
fn samples(shape: &[usize], batches: usize, rows: usize, seed: u64) -> Vec<Feeds> {
    let mut rng = Rng::new(seed);
    (0..batches)
        .map(|_| {
            let mut full = vec![rows];
            full.extend_from_slice(shape);
            let per: usize = shape.iter().product();
            let mut v = Vec::with_capacity(rows * per);
            for _ in 0..rows {
                let common = rng.next();
                v.extend((0..per).map(|_| common + 0.5 * rng.next()));
            }
            vec![("x".to_string(), Tensor::from_vec(full, v).unwrap())]
        })
        .collect()
}

/// Static W4A8, per channel, with AdaRound as given.
fn quantize(
    m: &ModelProto,
    data: &[Feeds],
    adaround: Option<AdaRoundOptions>,
) -> (ModelProto, QuantizeSummary) {
    let mut config = QuantizeConfig {
        weights: IntType::Int4,
        per_channel: true,
        block_size: Some(0),
        min_activation_sqnr: None,
        // Every layer on the 4-bit grid these tests check (not int8 ends).
        int8_ends: Some(false),
        ..QuantizeConfig::default()
    };
    config.algorithms.adaround = adaround;
    let plan = QuantPlan::resolve(&config).unwrap();
    let mut src: Vec<Feeds> = data.to_vec();
    let inputs =
        QuantizeInputs { table: None, samples: Some(&mut src), threads: 2, progress: &NoProgress };
    quantize_run(m.clone(), &plan, inputs).unwrap()
}

/// Mean squared difference of `y` between `a` and `b` over `data`.
fn output_mse(a: &ModelProto, b: &ModelProto, data: &[Feeds]) -> f64 {
    let opts = SessionOptions::unfused(2);
    let (sa, sb) = (Session::new(a, &opts).unwrap(), Session::new(b, &opts).unwrap());
    let (mut sum, mut n) = (0f64, 0usize);
    for feeds in data {
        let ya = sa.run(feeds.clone()).unwrap().remove(0).1;
        let yb = sb.run(feeds.clone()).unwrap().remove(0).1;
        for (p, q) in ya.as_f32().unwrap().iter().zip(yb.as_f32().unwrap()) {
            sum += (*p as f64 - *q as f64).powi(2);
            n += 1;
        }
    }
    sum / n as f64
}

/// The integer codes of every weight the quantized model dequantizes, by initializer name.
fn weight_codes(m: &ModelProto) -> Vec<(String, Vec<i32>)> {
    let g = m.graph.as_ref().unwrap();
    let mut out = Vec::new();
    for n in g.node.iter().filter(|n| n.op_type == "DequantizeLinear") {
        let Some(init) = g.initializer.iter().find(|t| t.name == n.input[0]) else { continue };
        let t = tensor_from_proto(init).unwrap();
        if t.dtype() == DType::I4 {
            out.push((init.name.clone(), int_values(t.data()).unwrap()));
        }
    }
    out.sort();
    out
}

/// Per DequantizeLinear of the model: its input names and the tensors behind them (codes,
/// scales, zero points when given), by the codes' initializer name.
fn dequantized(m: &ModelProto) -> Vec<(String, Vec<Tensor>)> {
    let g = m.graph.as_ref().unwrap();
    let init = |name: &str| {
        g.initializer.iter().find(|t| t.name == name).map(|t| tensor_from_proto(t).unwrap())
    };
    g.node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .filter_map(|n| {
            let ts: Option<Vec<Tensor>> = n.input.iter().map(|i| init(i)).collect();
            Some((n.input[0].clone(), ts?))
        })
        .collect()
}

/// The codes round-to-nearest gives weight `w` on the grid of the DequantizeLinear that reads
/// `codes` in `m` (its scales per output channel, axis 0).
fn nearest_on_grid(m: &ModelProto, codes: &str, w: &Tensor) -> Vec<i32> {
    let dq = dequantized(m);
    let (_, ts) = dq.iter().find(|(c, _)| c == codes).unwrap();
    let scale = ts[1].as_f32().unwrap();
    let zero = int_values(ts[2].data()).unwrap();
    let per = w.len() / scale.len();
    w.as_f32()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i / per;
            lowbit_kernels::quantize::quantize_one(v, scale[c], zero[c], -8, 7)
        })
        .collect()
}

fn opts(iterations: usize) -> AdaRoundOptions {
    AdaRoundOptions { iterations, ..AdaRoundOptions::default() }
}

#[test]
fn adaround_lowers_a_gemm_output_error_at_int4() {
    let m = gemm_net(21);
    let data = samples(&[48], 4, 32, 22);
    let (nearest, _) = quantize(&m, &data, None);
    let (learned, summary) = quantize(&m, &data, Some(opts(1000)));
    let step = summary.steps.iter().find(|s| s.step == "adaround").expect("an adaround step");
    assert_eq!(step.layers.len(), 1, "{step:?}");
    let layer = &step.layers[0];
    assert!(layer.after < 0.9 * layer.before, "{layer:?}");
    // Measured independently, on the calibration inputs through the engine.
    let (before, after) = (output_mse(&m, &nearest, &data), output_mse(&m, &learned, &data));
    assert!(after < 0.9 * before, "output MSE {before} -> {after}");
    assert!((after - layer.after).abs() <= 0.05 * layer.after, "{after} vs report {layer:?}");
}

#[test]
fn adaround_on_convolutions_keeps_codes_on_the_grid_within_one_step() {
    let m = conv_net(31);
    let data = samples(&[4, 6, 6], 3, 8, 32);
    let (nearest, _) = quantize(&m, &data, None);
    let (learned, summary) = quantize(&m, &data, Some(opts(600)));
    let step = summary.steps.iter().find(|s| s.step == "adaround").expect("an adaround step");
    let names: Vec<&str> = step.layers.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(names, ["conv", "depthwise", "fc"], "{step:?}");
    for l in &step.layers {
        assert!(l.after <= l.before, "{l:?}");
    }
    assert!(step.layers.iter().any(|l| l.after < 0.95 * l.before), "{step:?}");
    let (a, b) = (weight_codes(&nearest), weight_codes(&learned));
    assert_eq!(a.len(), 3);
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let g = m.graph.as_ref().unwrap();
    let mut changed = 0;
    for (name, c) in &b {
        let w = name.strip_suffix("_quantized").unwrap();
        let w = tensor_from_proto(g.initializer.iter().find(|t| t.name == w).unwrap()).unwrap();
        // Within one step of round-to-nearest on the grid the file ends with (its scales
        // may have been narrowed first).
        let r = nearest_on_grid(&learned, name, &w);
        for (&r, &c) in r.iter().zip(c) {
            assert!((-8..=7).contains(&c), "{name}: code {c}");
            assert!((c - r).abs() <= 1, "{name}: {c} vs nearest {r}");
            changed += (c != r) as usize;
        }
    }
    assert!(changed > 0);
    // The whole network's output is no worse for it.
    assert!(output_mse(&m, &learned, &data) <= output_mse(&m, &nearest, &data));
}

#[test]
fn fitted_scales_narrow_outlier_rows_and_recode_their_bias() {
    let mut m = conv_net(61);
    // Every other output channel of the first conv gets one large weight.
    let g = m.graph.as_mut().unwrap();
    let w1 = g.initializer.iter_mut().find(|t| t.name == "w1").unwrap();
    let mut w = tensor_from_proto(w1).unwrap().as_f32().unwrap().to_vec();
    for c in (0..8).step_by(2) {
        w[c * 36 + 5] = 4.0;
    }
    *w1 = tensor_to_proto("w1", &Tensor::from_vec(vec![8, 4, 3, 3], w).unwrap());
    let data = samples(&[4, 6, 6], 3, 8, 62);
    let (nearest, _) = quantize(&m, &data, None);
    let (learned, summary) = quantize(&m, &data, Some(opts(600)));
    let step = summary.steps.iter().find(|s| s.step == "adaround").expect("an adaround step");
    assert!(step.summary.contains("narrowed the scales of"), "{}", step.summary);
    let (before, after) = (dequantized(&nearest), dequantized(&learned));
    let find =
        |d: &[(String, Vec<Tensor>)], n: &str| d.iter().find(|(c, _)| c == n).unwrap().1.clone();
    let (s0, s1) =
        (find(&before, "w1_quantized")[1].clone(), find(&after, "w1_quantized")[1].clone());
    let (s0, s1) = (s0.as_f32().unwrap(), s1.as_f32().unwrap());
    let narrowed: Vec<usize> = (0..8).filter(|&c| s1[c] < s0[c]).collect();
    assert!(narrowed.iter().any(|c| c % 2 == 0), "scales {s0:?} -> {s1:?}");
    for c in 0..8 {
        assert!(s1[c] <= s0[c] && s1[c] >= 0.5 * s0[c] * 0.999, "channel {c}: {s0:?} -> {s1:?}");
    }
    // The conv's int32 bias follows: scale s_in · s_w per channel, values kept within half a
    // step of the FP32 bias.
    let x_scale = {
        let g = learned.graph.as_ref().unwrap();
        let conv = g.node.iter().find(|n| n.name == "conv").unwrap();
        let dq = g.node.iter().find(|n| n.output[0] == conv.input[0]).unwrap();
        let s = g.initializer.iter().find(|t| t.name == dq.input[1]).unwrap();
        tensor_from_proto(s).unwrap().as_f32().unwrap()[0]
    };
    let bias = find(&after, "b1_quantized");
    let (codes, scales) = (bias[0].as_slice::<i32>().unwrap(), bias[1].as_f32().unwrap());
    let b1 = m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == "b1").unwrap();
    let b1 = tensor_from_proto(b1).unwrap();
    for c in 0..8 {
        assert_eq!(scales[c], x_scale * s1[c], "channel {c}");
        let err = (codes[c] as f32 * scales[c] - b1.as_f32().unwrap()[c]).abs();
        assert!(err <= 0.5 * scales[c] + 1e-7, "channel {c}: bias off by {err}");
    }
    // The network as a whole is closer to FP32 than with the quantizer's scales.
    assert!(output_mse(&m, &learned, &data) < output_mse(&m, &nearest, &data));
}

#[test]
fn a_spent_time_budget_keeps_round_to_nearest_and_says_so() {
    let m = conv_net(41);
    let data = samples(&[4, 6, 6], 2, 4, 42);
    let (nearest, _) = quantize(&m, &data, None);
    let budget = AdaRoundOptions { time_budget_s: Some(0.0), ..opts(500) };
    let (learned, summary) = quantize(&m, &data, Some(budget));
    let step = summary.steps.iter().find(|s| s.step == "adaround").expect("an adaround step");
    assert!(step.summary.contains("3 not reached within the time budget"), "{}", step.summary);
    assert_eq!(weight_codes(&nearest), weight_codes(&learned));
}

/// Conv 3×3 (3 → 6) → Relu → Conv 1×1 (6 → 6) → Relu → Add with the first Relu (a skip the
/// cut must keep) → depthwise Conv 3×3 → GlobalAveragePool → Flatten → Gemm (6 → 4).
fn residual_net(seed: u64) -> ModelProto {
    let mut rng = Rng::new(seed);
    let mut c1 = node("Conv", "c1", &["x", "w1", "b1"], &["y1"]);
    c1.attribute = vec![ints("pads", &[1, 1, 1, 1])];
    let c2 = node("Conv", "c2", &["r1", "w2"], &["y2"]);
    let mut dw = node("Conv", "dw", &["s", "w3"], &["y3"]);
    dw.attribute = vec![ints("pads", &[1, 1, 1, 1]), int("group", 6)];
    let mut fc = node("Gemm", "fc", &["f", "w4"], &["y"]);
    fc.attribute = vec![int("transB", 1)];
    let nodes = vec![
        c1,
        node("Relu", "relu1", &["y1"], &["r1"]),
        c2,
        node("Relu", "relu2", &["y2"], &["r2"]),
        node("Add", "add", &["r1", "r2"], &["s"]),
        dw,
        node("GlobalAveragePool", "gap", &["y3"], &["p"]),
        node("Flatten", "flatten", &["p"], &["f"]),
        fc,
    ];
    let inits = vec![
        ("w1", random(&mut rng, &[6, 3, 3, 3], 0.5)),
        ("b1", random(&mut rng, &[6], 0.1)),
        ("w2", random(&mut rng, &[6, 6, 1, 1], 0.5)),
        ("w3", random(&mut rng, &[6, 1, 3, 3], 0.5)),
        ("w4", random(&mut rng, &[4, 6], 0.5)),
    ];
    graph(nodes, inits, &[3, 5, 5])
}

/// Per weight: name, loss before and after.
type Losses = Vec<(String, f64, f64)>;
/// Per weight: name and its integer codes.
type Codes = Vec<(String, Vec<i32>)>;

/// AdaRound's report and codes on `m` with at most `cap` bytes kept between passes.
fn adaround_with_cap(m: &ModelProto, data: &[Feeds], cap: usize) -> (Losses, Codes) {
    use crate::algorithms::StepContext;
    use lowbit_onnx::graph::Graph;
    let (nearest, _) = quantize(m, data, None);
    let config = QuantizeConfig {
        weights: IntType::Int4,
        per_channel: true,
        block_size: Some(0),
        ..QuantizeConfig::default()
    };
    let plan = QuantPlan::resolve(&config).unwrap();
    let fp32 = Graph::new(m.clone()).unwrap();
    let mut q = Graph::new(nearest).unwrap();
    let mut src: Vec<Feeds> = data.to_vec();
    let mut ctx = StepContext { samples: Some(&mut src), threads: 2, progress: &NoProgress };
    let report = super::adaround_kept(&fp32, &mut q, &plan, &opts(300), &mut ctx, cap).unwrap();
    let layers = report.layers.iter().map(|l| (l.node.clone(), l.before, l.after)).collect();
    (layers, weight_codes(q.model()))
}

#[test]
fn kept_cuts_give_the_statistics_of_full_prefix_runs() {
    let m = residual_net(51);
    // Batches of 6 rows are run 4 + 2: the kept values must line up with the runs.
    let data = samples(&[3, 5, 5], 3, 6, 52);
    let (full_layers, full_codes) = adaround_with_cap(&m, &data, 0);
    let (kept_layers, kept_codes) = adaround_with_cap(&m, &data, usize::MAX);
    let names: Vec<&str> = full_layers.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["c1", "c2", "dw", "fc"]);
    // The same inputs give bit-identical statistics, hence the same losses and rounding.
    assert_eq!(full_layers, kept_layers);
    assert_eq!(full_codes, kept_codes);
    assert!(full_layers.iter().any(|l| l.2 < l.1), "{full_layers:?}");
}

#[test]
fn a_pass_runs_only_the_nodes_after_the_kept_cut() {
    use super::stream::Stream;
    let m = residual_net(61);
    let g = m.graph.as_ref().unwrap();
    let data = samples(&[3, 5, 5], 1, 2, 62);
    let opts = SessionOptions::unfused(1);
    let pass = |s: &mut Stream, wanted: &str, current: usize| {
        let mut p = s.plan(&m, &[wanted.to_string()], current, &opts).unwrap();
        let ops: Vec<String> = p.ops().iter().map(|o| o.to_string()).collect();
        let out = s.run(&mut p, 0, &data[0]).unwrap();
        assert!(out.contains_key(wanted));
        s.finish(p);
        ops
    };
    let mut s = Stream::new(g, &[], usize::MAX);
    assert_eq!(pass(&mut s, "r1", 0), ["Conv", "Relu"]);
    assert_eq!(s.kept(), ["r1"]);
    // `r1`, which the second Conv and the Add read, comes from the cut.
    assert_eq!(pass(&mut s, "s", 1), ["Conv", "Relu", "Add"]);
    assert_eq!(s.kept(), ["s"]);
    assert_eq!(pass(&mut s, "f", 2), ["Conv", "GlobalAveragePool", "Flatten"]);
    // No room: nothing is kept and every pass starts from the input.
    let mut s = Stream::new(g, &[], 0);
    pass(&mut s, "r1", 0);
    assert!(s.kept().is_empty());
    assert_eq!(pass(&mut s, "s", 1), ["Conv", "Relu", "Conv", "Relu", "Add"]);
    // A value the weight being rounded (or a later one) feeds is never kept.
    let mut s = Stream::new(g, &[("w1", 0)], usize::MAX);
    pass(&mut s, "r1", 0);
    assert!(s.kept().is_empty());
}
