//! The quantizer's settings: [`QuantizeConfig`] in the user's words (what the CLI and the Python
//! module fill in), and the [`QuantPlan`] it resolves into once, against a deployment
//! [`Target`]. Every pass reads the plan and never re-derives a choice: which weights are per
//! channel and on which axis, their bit width, the activation scheme, and the levels calibration
//! aims at are decided here and nowhere else.
//!
//! ```
//! use lowbit_quant::config::{QuantPlan, QuantizeConfig, WeightGranularity};
//! use lowbit_quant::target::{Target, TargetChoice};
//! let cfg = QuantizeConfig { target: TargetChoice::Named(Target::OrtAvx2), ..Default::default() };
//! let plan = QuantPlan::resolve(&cfg)?;
//! assert!(plan.weights.reduce_range); // 7-bit weights for ORT's AVX2 kernels
//! assert_eq!(plan.weights.granularity, WeightGranularity::PerChannel);
//! // A Conv weight [O, I, kh, kw] is quantized per output channel, axis 0.
//! let s = plan.weights.scheme_for("Conv", false, 4).unwrap();
//! assert_eq!(s.to_string(), "int8 symmetric per-channel(axis 0) reduce-range");
//! # Ok::<(), lowbit_quant::QuantError>(())
//! ```

use crate::calibrate::Method;
use crate::error::{QuantError, Result};
use crate::passes::Exclusions;
use crate::scheme::{IntType, Mode, QuantScheme, RangeFit, ValueType};
use crate::target::{qdq_min_opset, Support, Target, TargetChoice};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What kind of quantization is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantMode {
    /// Calibrated activations and weights, QDQ format.
    Static,
    /// Weights offline, activations quantized at run time.
    Dynamic,
    /// Weights only; compute stays float.
    WeightOnly,
    /// float16 weights and compute.
    Fp16,
    /// bfloat16 weights and compute (ONNX Runtime's CPU provider has few bf16 kernels).
    Bf16,
}

impl QuantMode {
    pub const ALL: [QuantMode; 5] = [
        QuantMode::Static,
        QuantMode::Dynamic,
        QuantMode::WeightOnly,
        QuantMode::Fp16,
        QuantMode::Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Static => "static",
            QuantMode::Dynamic => "dynamic",
            QuantMode::WeightOnly => "weight-only",
            QuantMode::Fp16 => "fp16",
            QuantMode::Bf16 => "bf16",
        }
    }

    /// Modes whose weights feed integer kernels (where reduced-range weights can matter).
    pub fn integer_kernels(self) -> bool {
        matches!(self, QuantMode::Static | QuantMode::Dynamic)
    }
}

display_and_parse_by_name!(QuantMode, Config, "mode");

/// One node's precision in a hybrid static plan (what `lowbit tune` chooses per
/// `Conv`/`MatMul`/`Gemm`), cheapest storage first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Precision {
    /// 4-bit weights, one scale per output channel fitted by MSE; the plan's activations.
    #[serde(rename = "int4")]
    Int4,
    /// int8 weights with one scale per tensor; the plan's activations.
    #[serde(rename = "int8-per-tensor")]
    Int8PerTensor,
    /// int8 weights with one scale per output channel; the plan's activations.
    #[serde(rename = "int8")]
    Int8,
    /// int16 activations and int16 weights (the plan's weight granularity).
    #[serde(rename = "int16")]
    Int16,
    /// Float compute with float16 weights (a `Cast` to float32 before the node).
    #[serde(rename = "fp16")]
    Fp16,
    /// Left in float32, as `--exclude` leaves it.
    #[serde(rename = "fp32")]
    Fp32,
}

impl Precision {
    pub const ALL: [Precision; 6] = [
        Precision::Int4,
        Precision::Int8PerTensor,
        Precision::Int8,
        Precision::Int16,
        Precision::Fp16,
        Precision::Fp32,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Int4 => "int4",
            Precision::Int8PerTensor => "int8-per-tensor",
            Precision::Int8 => "int8",
            Precision::Int16 => "int16",
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
        }
    }

    /// Whether the node stays out of the QDQ flow (float compute).
    pub fn is_float(self) -> bool {
        matches!(self, Precision::Fp16 | Precision::Fp32)
    }

    /// The settings a whole-model run at this precision would take, on top of `base`.
    fn config_on(self, base: &QuantizeConfig) -> QuantizeConfig {
        let (weights, per_channel, activations) = match self {
            Precision::Int4 => (IntType::Int4, true, base.activations),
            Precision::Int8PerTensor => (IntType::Int8, false, base.activations),
            Precision::Int16 => (IntType::Int16, base.per_channel, Some(IntType::Int16)),
            _ => (IntType::Int8, true, base.activations),
        };
        QuantizeConfig {
            weights,
            per_channel,
            activations,
            weight_mode: None,
            block_size: None,
            reduce_range: if weights == IntType::Int8 { base.reduce_range } else { None },
            // 4-bit min-max grids are coarse enough that clipping outliers pays (the accuracy
            // issue's MSE range fit, per output channel).
            weight_range: if self == Precision::Int4 {
                Some(RangeFit::Mse)
            } else {
                base.weight_range
            },
            node_precision: BTreeMap::new(),
            ..base.clone()
        }
    }
}

display_and_parse_by_name!(Precision, Config, "precision");

/// A node's precision resolved against the target: what the static pass does with it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum NodePlan {
    /// Not quantized; float32 weights.
    Float32,
    /// Not quantized; float16 weights cast to float32 before the node.
    Float16,
    /// Quantized with these weights and this activation scheme (inputs and output).
    Quantized { weights: WeightPlan, activations: QuantScheme },
}

/// Parses `int8`, `uint8`, `int16`, `uint16`, `int4`, `uint4`.
pub fn parse_int_type(s: &str) -> Result<IntType> {
    Ok(match s {
        "int8" => IntType::Int8,
        "uint8" => IntType::Uint8,
        "int16" => IntType::Int16,
        "uint16" => IntType::Uint16,
        "int4" => IntType::Int4,
        "uint4" => IntType::Uint4,
        _ => {
            return Err(QuantError::Config(format!(
                "unknown integer type '{s}' (use int8, uint8, int16, uint16, int4, uint4)"
            )))
        }
    })
}

/// The default floor (dB) on an activation's expected SQNR under static quantization. An 8-bit
/// grid over a Gaussian's ±4σ gives about 41 dB; a transformer's first FFN output (GELU with
/// rare large outliers) falls near 21 dB and is better left in float.
pub const DEFAULT_MIN_ACTIVATION_SQNR: f64 = 24.0;

/// The block size int4 weight-only quantization uses when none is given.
pub const DEFAULT_INT4_BLOCK: usize = 32;

/// How bias correction measures the shift it removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BiasCorrection {
    /// Per output channel, the mean of (quantized − FP32) layer outputs over the samples.
    Empirical,
    /// From the weights' rounding error and the input's expected value (no samples needed).
    Analytic,
}

/// AdaRound's settings (Nagel et al. 2020, "Up or Down? Adaptive Rounding").
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaRoundOptions {
    /// Optimizer steps per layer.
    pub iterations: usize,
    /// Weight of the rounding regularizer (λ in the paper).
    pub reg_weight: f32,
    /// Stop optimizing (keeping what is learned so far, round-to-nearest for layers not
    /// reached) after this many seconds.
    pub time_budget_s: Option<f64>,
    /// Fit each layer on its FP32 inputs (the paper's plain reconstruction) instead of the
    /// quantized model's: the learned weights then do not absorb the error of the quantized
    /// layers before them, so they stay right whatever precision those layers take (what
    /// `lowbit tune` needs to reuse one layer's rounding across configurations).
    #[serde(default)]
    pub fp32_inputs: bool,
}

impl Default for AdaRoundOptions {
    fn default() -> Self {
        AdaRoundOptions {
            iterations: 2000,
            reg_weight: 0.01,
            time_budget_s: None,
            fp32_inputs: false,
        }
    }
}

/// Accuracy-recovery algorithms (static mode), run in this order: equalization and SmoothQuant
/// transform the FP32 graph before calibration; AdaRound chooses the weights' rounding and bias
/// correction removes the remaining output shift after Q/DQ insertion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Algorithms {
    /// Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization").
    pub equalize: bool,
    /// SmoothQuant migration strength α in [0, 1] (Xiao et al. 2023).
    pub smooth_quant: Option<f32>,
    /// Learned weight rounding.
    pub adaround: Option<AdaRoundOptions>,
    /// Bias correction.
    pub bias_correction: Option<BiasCorrection>,
}

impl Algorithms {
    /// Whether an algorithm rewrites the FP32 graph, so it must be calibrated afterwards.
    pub fn transforms_fp32(&self) -> bool {
        self.equalize || self.smooth_quant.is_some()
    }

    /// Whether an algorithm runs the model on samples.
    pub fn needs_samples(&self) -> bool {
        self.smooth_quant.is_some()
            || self.adaround.is_some()
            || self.bias_correction == Some(BiasCorrection::Empirical)
    }

    /// Whether any algorithm is on.
    pub fn any(&self) -> bool {
        self.transforms_fp32() || self.adaround.is_some() || self.bias_correction.is_some()
    }
}

/// Everything `lowbit quantize` can be asked, in the user's words. `None` fields are decided by
/// the target when the plan is resolved. [`Default`]: static, target `auto`, the target's
/// activation type (uint8 asymmetric on most), int8 symmetric per-channel weights, min-max
/// ranges, BN folding on, float inputs/outputs kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeConfig {
    pub mode: QuantMode,
    /// The runtime and CPU the file is for (`auto`: this CPU under ONNX Runtime).
    pub target: TargetChoice,
    /// Activation type (static); `None`: the target's default.
    pub activations: Option<IntType>,
    /// Symmetric activation ranges (static); `None`: the target's rule (asymmetric on most).
    pub symmetric_activations: Option<bool>,
    /// Weight type: int8 (default), uint8, int4, uint4 (int16 also accepted in static mode).
    pub weights: IntType,
    /// Weight range mode; `None`: symmetric for int8/int16 (ORT's default), asymmetric for
    /// unsigned and 4-bit weights.
    pub weight_mode: Option<Mode>,
    /// How weight ranges are chosen from the weights; `None`: min-max.
    #[serde(default)]
    pub weight_range: Option<RangeFit>,
    /// One scale per output channel. Off: one scale per weight tensor.
    pub per_channel: bool,
    /// Blocked weights along the reduction axis (weight-only): `Some(0)` none (per channel or
    /// per tensor); `None`: [`DEFAULT_INT4_BLOCK`] for int4 weight-only, else none.
    pub block_size: Option<usize>,
    /// 7-bit 8-bit weights for integer kernels (ONNX Runtime's `reduce_range`); `None`: the
    /// target's rule.
    pub reduce_range: Option<bool>,
    /// Which calibration range to use (static).
    pub method: Method,
    /// Static: leave in float any Conv/MatMul/Gemm whose activation input is expected to fall
    /// below this SQNR in dB with its calibrated range. `None`: quantize everything.
    pub min_activation_sqnr: Option<f64>,
    /// Nodes left in float32.
    pub exclude: Exclusions,
    /// Keep float32 graph inputs/outputs (fp16/bf16: Casts at the boundary).
    pub keep_float_io: bool,
    /// Fold BatchNormalization into the preceding Conv/Gemm first (static).
    pub fold_batch_norm: bool,
    /// Accuracy-recovery algorithms (static).
    #[serde(default)]
    pub algorithms: Algorithms,
    /// int8 per-row embedding tables (`Gather` on a float32 initializer, see
    /// [`crate::passes::embeddings`]); `None`: on in static, dynamic and weight-only mode.
    #[serde(default)]
    pub quantize_embeddings: Option<bool>,
    /// Static: per-node precision by node name (`Op#index` for an unnamed node), overriding
    /// the settings above for that node (hybrid precision).
    #[serde(default)]
    pub node_precision: BTreeMap<String, Precision>,
    /// Static with 4-bit weights: the first and last weighted layers (a CNN's stem and
    /// classifier) keep int8 weights. `None`: on; `Some(false)`: every layer 4-bit.
    #[serde(default)]
    pub int8_ends: Option<bool>,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            mode: QuantMode::Static,
            target: TargetChoice::Auto,
            activations: None,
            symmetric_activations: None,
            weights: IntType::Int8,
            weight_mode: None,
            weight_range: None,
            per_channel: true,
            block_size: None,
            reduce_range: None,
            method: Method::MinMax,
            min_activation_sqnr: Some(DEFAULT_MIN_ACTIVATION_SQNR),
            exclude: Exclusions::default(),
            keep_float_io: true,
            fold_batch_norm: true,
            algorithms: Algorithms::default(),
            quantize_embeddings: None,
            node_precision: BTreeMap::new(),
            int8_ends: None,
        }
    }
}

impl QuantizeConfig {
    /// Static QDQ with the defaults.
    pub fn static_int8() -> QuantizeConfig {
        QuantizeConfig::default()
    }

    /// Dynamic int8 (per channel).
    pub fn dynamic_int8() -> QuantizeConfig {
        QuantizeConfig { mode: QuantMode::Dynamic, ..Default::default() }
    }

    /// Weight-only int8 per channel.
    pub fn weight_only_int8() -> QuantizeConfig {
        QuantizeConfig { mode: QuantMode::WeightOnly, ..Default::default() }
    }

    /// Weight-only int4, blocks of `block_size` along K (0: per channel).
    pub fn weight_only_int4(block_size: usize) -> QuantizeConfig {
        QuantizeConfig {
            mode: QuantMode::WeightOnly,
            weights: IntType::Int4,
            block_size: Some(block_size),
            ..Default::default()
        }
    }

    /// float16 (or bfloat16 with `bf16`), float32 I/O kept.
    pub fn float16(bf16: bool) -> QuantizeConfig {
        QuantizeConfig {
            mode: if bf16 { QuantMode::Bf16 } else { QuantMode::Fp16 },
            ..Default::default()
        }
    }

    /// Checks the settings and resolves them (shorthand for [`QuantPlan::resolve`]).
    pub fn validate(&self) -> Result<()> {
        QuantPlan::resolve(self).map(|_| ())
    }
}

/// Which weight elements share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "size")]
pub enum WeightGranularity {
    PerTensor,
    /// One scale per output channel (the axis depends on the op and layout).
    PerChannel,
    /// Blocks of this many elements along the reduction axis K.
    Blocked(usize),
}

/// How weights are quantized: resolved once, asked per weight through [`WeightPlan::scheme_for`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightPlan {
    pub value: IntType,
    pub mode: Mode,
    pub granularity: WeightGranularity,
    /// 7-bit grid for 8-bit weights (only ever true for integer-kernel modes).
    pub reduce_range: bool,
    /// How each weight's range is chosen from its values.
    #[serde(default)]
    pub range_fit: RangeFit,
}

impl WeightPlan {
    /// The scheme for the weight of a `Conv`/`MatMul`/`Gemm` (`trans_b`: Gemm's attribute) of
    /// `rank`; `None` when the layout is not understood. The one place per-channel and block
    /// axes are chosen: output channels (Conv axis 0, Gemm `transB=1` axis 0 else 1, MatMul the
    /// last axis); blocks along K (Gemm `transB=1` axis 1 else 0, MatMul axis `rank − 2`).
    pub fn scheme_for(&self, op: &str, trans_b: bool, rank: usize) -> Option<QuantScheme> {
        let base = QuantScheme::new(ValueType::Int(self.value))
            .with_mode(self.mode)
            .with_reduce_range(self.reduce_range)
            .with_range_fit(self.range_fit);
        let channel = crate::passes::qdq::weight_axis(op, trans_b, rank)?;
        Some(match self.granularity {
            WeightGranularity::PerTensor => base.per_tensor(),
            WeightGranularity::PerChannel => base.per_channel(channel),
            WeightGranularity::Blocked(b) => {
                let k_axis = match op {
                    "Gemm" => i64::from(trans_b),
                    "MatMul" => rank as i64 - 2,
                    "LSTM" | "GRU" | "RNN" => 2,
                    _ => return None,
                };
                base.per_block(k_axis, b)
            }
        })
    }
}

/// What calibration aims at: a method and the grid it must fit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationPlan {
    pub method: Method,
    /// Levels of the activation grid (256 for 8 bits): entropy and MSE search for this grid.
    pub levels: usize,
}

/// How activations are quantized (static mode).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationPlan {
    /// Per-tensor scheme: type and mode.
    pub scheme: QuantScheme,
    pub calibration: CalibrationPlan,
    pub min_sqnr: Option<f64>,
}

/// The resolved quantization plan: made once from a [`QuantizeConfig`], read by every pass.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantPlan {
    pub mode: QuantMode,
    pub target: Target,
    pub activations: ActivationPlan,
    pub weights: WeightPlan,
    pub exclude: Exclusions,
    pub keep_float_io: bool,
    pub fold_batch_norm: bool,
    pub algorithms: Algorithms,
    /// int8 per-row embedding tables ([`crate::passes::embeddings`]).
    pub quantize_embeddings: bool,
    /// Per-node precision (static), keyed as [`QuantizeConfig::node_precision`].
    pub nodes: BTreeMap<String, NodePlan>,
    /// The plan of the first and last weighted layers where it differs from `weights` (4-bit
    /// static weights keep them int8, see [`QuantizeConfig::int8_ends`]); the static pass names
    /// those layers with [`QuantPlan::with_end_layers`]. A `nodes` entry wins.
    pub ends: Option<NodePlan>,
    /// The default-domain opset the written model needs at least.
    pub min_opset: i64,
    /// Why each target-dependent choice was made, for the summary.
    pub decisions: Vec<String>,
    /// What the target runs badly in this plan (it is written anyway), for the summary.
    pub warnings: Vec<String>,
}

impl QuantPlan {
    /// The per-node precision of `node` (at `index` in the graph, for an unnamed node), if the
    /// plan sets one.
    pub fn node_plan(&self, node: &lowbit_onnx::pb::NodeProto, index: usize) -> Option<&NodePlan> {
        if self.nodes.is_empty() {
            return None;
        }
        self.nodes.get(&crate::passes::label(node, index))
    }

    /// The weights of `node` (at `index`): its own plan's, else the plan's; `None` when the
    /// per-node plan keeps it float.
    pub fn weights_of(
        &self,
        node: &lowbit_onnx::pb::NodeProto,
        index: usize,
    ) -> Option<&WeightPlan> {
        match self.node_plan(node, index) {
            Some(NodePlan::Quantized { weights, .. }) => Some(weights),
            Some(NodePlan::Float32 | NodePlan::Float16) => None,
            None => Some(&self.weights),
        }
    }

    /// This plan with [`QuantPlan::ends`] given by name to the first and last weighted layers
    /// of `g` that are neither excluded nor have a plan of their own (the static pass reads
    /// `nodes` only).
    pub fn with_end_layers(&self, g: &lowbit_onnx::graph::Graph) -> QuantPlan {
        let mut plan = self.clone();
        let Some(ends) = self.ends else { return plan };
        let mut named = Vec::new();
        for idx in crate::passes::end_layers(g) {
            let node = &g.nodes()[idx];
            let label = crate::passes::label(node, idx);
            // Excluded layers stay float; a layer's own precision wins.
            if self.exclude.reason(node).is_none() && !plan.nodes.contains_key(&label) {
                plan.nodes.insert(label.clone(), ends);
                named.push(label);
            }
        }
        if !named.is_empty() {
            plan.decisions.push(format!(
                "int8 weights for the first and last weighted layers ({}): at 4 bits they lose \
                 the most accuracy (--int4-ends to quantize them to 4 bits too)",
                named.join(", ")
            ));
        }
        plan
    }

    /// Resolves `config`: the target's rules fill what the user left open and reject what the
    /// target cannot run; combinations no pass can write are errors.
    pub fn resolve(config: &QuantizeConfig) -> Result<QuantPlan> {
        let (target, why_target) = config.target.resolve();
        let rules = target.rules();
        let bad = |m: String| Err(QuantError::Config(m));
        let mut decisions = vec![format!("target {target} ({why_target})")];
        let mode = config.mode;

        // Activations (static).
        let act_type = config.activations.unwrap_or(rules.activation_types[0]);
        let symmetric = config.symmetric_activations.unwrap_or(rules.symmetric_activations);
        if mode == QuantMode::Static {
            if matches!(act_type, IntType::Int4 | IntType::Uint4) {
                return bad(
                    "4-bit activations are not supported (use uint8, int8, int16 or uint16)".into(),
                );
            }
            let why = rules.type_reason.unwrap_or("");
            if !rules.activation_types.contains(&act_type) {
                return bad(format!(
                    "target {target} does not run {} activations quantized: {why}",
                    act_type.name()
                ));
            }
            if rules.symmetric_activations && !symmetric {
                return bad(format!("target {target} needs symmetric activations: {why}"));
            }
            if config.activations.is_none() && act_type != IntType::Uint8 {
                decisions.push(format!("{} activations: {why}", act_type.name()));
            }
        }
        let act_scheme = QuantScheme::new(ValueType::Int(act_type)).with_mode(if symmetric {
            Mode::Symmetric
        } else {
            Mode::Asymmetric
        });
        let (lo, hi) = act_scheme.qrange()?;
        let activations = ActivationPlan {
            scheme: act_scheme,
            calibration: CalibrationPlan { method: config.method, levels: (hi - lo) as usize + 1 },
            min_sqnr: config.min_activation_sqnr,
        };

        // Weights.
        let w = config.weights;
        let four_bit = matches!(w, IntType::Int4 | IntType::Uint4);
        match mode {
            QuantMode::Dynamic if !matches!(w, IntType::Int8 | IntType::Uint8) => {
                return bad(format!(
                    "dynamic quantization stores int8 or uint8 weights (MatMulInteger), not {}",
                    w.name()
                ));
            }
            QuantMode::WeightOnly if matches!(w, IntType::Int16 | IntType::Uint16) => {
                return bad("weight-only quantization writes 8- or 4-bit weights".into());
            }
            _ => {}
        }
        if mode.integer_kernels() && !rules.weight_types.contains(&w) {
            return bad(format!(
                "target {target} does not run {} weights: {}",
                w.name(),
                rules.type_reason.unwrap_or("")
            ));
        }
        let block = match (mode, config.block_size) {
            (QuantMode::WeightOnly, None) if four_bit => DEFAULT_INT4_BLOCK,
            (QuantMode::WeightOnly, b) => b.unwrap_or(0),
            (_, None | Some(0)) => 0,
            // Static: MatMul/Gemm weights in blocks (Conv keeps per channel), for 4-bit
            // transformers with quantized activations (and QAT of them).
            (QuantMode::Static, Some(b)) => b,
            (_, Some(_)) => {
                return bad("--block-size applies to weight-only and static quantization".into())
            }
        };
        if block != 0 && (block < 16 || !block.is_power_of_two()) {
            return bad(format!("block size must be a power of two >= 16, got {block}"));
        }
        let granularity = match (block, config.per_channel) {
            (0, true) => WeightGranularity::PerChannel,
            (0, false) => WeightGranularity::PerTensor,
            (b, _) => WeightGranularity::Blocked(b),
        };
        let eight_bit = matches!(w, IntType::Int8 | IntType::Uint8);
        let reduce_range = mode.integer_kernels()
            && eight_bit
            && match config.reduce_range {
                Some(r) => {
                    if r != rules.reduce_range_weights {
                        let what = if r { "7-bit" } else { "8-bit" };
                        decisions.push(format!(
                            "{what} weights as asked, against the target's rule ({})",
                            rules.weight_reason
                        ));
                    }
                    r
                }
                None => {
                    decisions.push(rules.weight_reason.to_string());
                    rules.reduce_range_weights
                }
            };
        let weight_mode = config.weight_mode.unwrap_or(match w {
            _ if rules.symmetric_weights && mode.integer_kernels() => Mode::Symmetric,
            IntType::Int8 | IntType::Int16 => Mode::Symmetric,
            _ => Mode::Asymmetric,
        });
        if rules.symmetric_weights && mode.integer_kernels() && weight_mode != Mode::Symmetric {
            return bad(format!(
                "target {target} needs symmetric weights: {}",
                rules.type_reason.unwrap_or("")
            ));
        }
        let range_fit = config.weight_range.unwrap_or_default();
        let weights =
            WeightPlan { value: w, mode: weight_mode, granularity, reduce_range, range_fit };
        let alg = &config.algorithms;
        if alg.any() && mode != QuantMode::Static {
            return bad(format!(
                "equalization, SmoothQuant, AdaRound and bias correction apply to static \
                 quantization, not --mode {mode}"
            ));
        }
        if let Some(a) = alg.smooth_quant {
            if !(0.0..=1.0).contains(&a) {
                return bad(format!("SmoothQuant's alpha must be in [0, 1], got {a}"));
            }
        }
        if let Some(o) = &alg.adaround {
            if o.iterations == 0 || o.reg_weight.is_nan() || o.reg_weight < 0.0 {
                return bad(
                    "AdaRound needs at least one iteration and a regularizer weight >= 0".into()
                );
            }
        }

        let quantize_embeddings = match (config.quantize_embeddings, mode) {
            (Some(true), QuantMode::Fp16 | QuantMode::Bf16) => {
                return bad(format!(
                    "--mode {mode} converts embedding tables to {mode} with every other weight; \
                     int8 embedding tables go with the integer modes"
                ));
            }
            (Some(q), _) => q,
            (None, m) => m.integer_kernels() || m == QuantMode::WeightOnly,
        };

        let mut nodes = BTreeMap::new();
        let mut node_opset = 1;
        if !config.node_precision.is_empty() && mode != QuantMode::Static {
            return bad(format!(
                "per-node precision applies to static quantization, not --mode {mode}"
            ));
        }
        for (name, &p) in &config.node_precision {
            let node_plan = match p {
                Precision::Fp32 => NodePlan::Float32,
                Precision::Fp16 => NodePlan::Float16,
                q => {
                    let sub = QuantPlan::resolve(&q.config_on(config))
                        .map_err(|e| QuantError::Config(format!("node '{name}' at {q}: {e}")))?;
                    node_opset = node_opset.max(sub.min_opset);
                    NodePlan::Quantized {
                        weights: sub.weights,
                        activations: sub.activations.scheme,
                    }
                }
            };
            nodes.insert(name.clone(), node_plan);
        }

        let ends = if mode == QuantMode::Static && four_bit && config.int8_ends != Some(false) {
            let sub = QuantPlan::resolve(&Precision::Int8.config_on(config))?;
            Some(NodePlan::Quantized { weights: sub.weights, activations: sub.activations.scheme })
        } else {
            None
        };

        let mut warnings = Vec::new();
        if mode == QuantMode::Dynamic {
            match rules.dynamic {
                Support::Yes => {}
                Support::Slow(why) => warnings.push(format!("target {target}: {why}")),
                Support::No(why) => return bad(format!("target {target}: {why}")),
            }
        }

        // Static writes per-axis weights' opset (13) even per tensor: its passes assume it.
        let min_opset = match mode {
            QuantMode::Static => {
                qdq_min_opset(act_type, false, false).max(qdq_min_opset(w, true, block > 0))
            }
            QuantMode::Dynamic => 11,
            QuantMode::WeightOnly => qdq_min_opset(w, config.per_channel, block > 0),
            QuantMode::Fp16 | QuantMode::Bf16 => 1,
        };
        let min_opset = if mode == QuantMode::Fp16 || mode == QuantMode::Bf16 {
            min_opset
        } else {
            min_opset.max(rules.min_opset).max(node_opset)
        };
        Ok(QuantPlan {
            mode,
            target,
            activations,
            weights,
            exclude: config.exclude.clone(),
            keep_float_io: config.keep_float_io,
            fold_batch_norm: config.fold_batch_norm,
            algorithms: config.algorithms.clone(),
            quantize_embeddings,
            nodes,
            ends,
            min_opset,
            decisions,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cfg: QuantizeConfig) -> Result<QuantPlan> {
        QuantPlan::resolve(&cfg)
    }

    fn on(target: Target) -> QuantizeConfig {
        QuantizeConfig { target: TargetChoice::Named(target), ..Default::default() }
    }

    #[test]
    fn modes_and_types_parse_by_name() {
        for m in QuantMode::ALL {
            assert_eq!(m.name().parse::<QuantMode>().unwrap(), m);
        }
        assert!("int8".parse::<QuantMode>().is_err());
        assert_eq!(parse_int_type("int4").unwrap(), IntType::Int4);
        assert!(parse_int_type("int3").is_err());
    }

    #[test]
    fn seven_bit_weights_only_where_the_target_needs_them() {
        assert!(plan(on(Target::OrtAvx2)).unwrap().weights.reduce_range);
        for t in [Target::OrtVnni, Target::Arm, Target::OpenVino, Target::Lowbit] {
            assert!(!plan(on(t)).unwrap().weights.reduce_range, "{t}");
        }
        // An explicit choice wins and is reported.
        let p = plan(QuantizeConfig { reduce_range: Some(true), ..on(Target::OrtVnni) }).unwrap();
        assert!(p.weights.reduce_range);
        assert!(p.decisions.iter().any(|d| d.contains("against the target")), "{:?}", p.decisions);
        // Never for 4-bit weights or weight-only mode.
        let p = plan(QuantizeConfig { weights: IntType::Int4, ..on(Target::OrtAvx2) }).unwrap();
        assert!(!p.weights.reduce_range);
        let p = plan(QuantizeConfig { mode: QuantMode::WeightOnly, ..on(Target::OrtAvx2) });
        assert!(!p.unwrap().weights.reduce_range);
    }

    #[test]
    fn tensorrt_gets_symmetric_int8_activations_and_refuses_uint8() {
        let p = plan(on(Target::TensorRt)).unwrap();
        assert_eq!(p.activations.scheme.to_string(), "int8 symmetric per-tensor");
        assert_eq!(p.activations.calibration.levels, 255);
        let e = plan(QuantizeConfig { activations: Some(IntType::Uint8), ..on(Target::TensorRt) });
        assert!(e.unwrap_err().to_string().contains("tensorrt"));
    }

    #[test]
    fn tensorrt_gets_symmetric_weights_opset_13_and_no_dynamic_quantization() {
        // 4-bit weights default to asymmetric elsewhere, symmetric for TensorRT.
        let c = QuantizeConfig { weights: IntType::Int4, ..on(Target::TensorRt) };
        let p = plan(c).unwrap();
        assert_eq!(p.weights.mode, Mode::Symmetric);
        assert_eq!(p.min_opset, 21);
        let c = QuantizeConfig { weights: IntType::Int4, ..on(Target::Lowbit) };
        assert_eq!(plan(c).unwrap().weights.mode, Mode::Asymmetric);
        let c = QuantizeConfig { weight_mode: Some(Mode::Asymmetric), ..on(Target::TensorRt) };
        let e = plan(c).unwrap_err().to_string();
        assert!(e.contains("tensorrt") && e.contains("symmetric weights"), "{e}");
        let c = QuantizeConfig { weights: IntType::Uint8, ..on(Target::TensorRt) };
        assert!(plan(c).is_err());
        // TensorRT parses Q/DQ from opset 13: even per-tensor weight-only files get it.
        let c = QuantizeConfig { per_channel: false, ..QuantizeConfig::weight_only_int8() };
        assert_eq!(
            plan(QuantizeConfig { target: on(Target::Lowbit).target, ..c.clone() })
                .unwrap()
                .min_opset,
            10
        );
        assert_eq!(
            plan(QuantizeConfig { target: on(Target::TensorRt).target, ..c }).unwrap().min_opset,
            13
        );
        let e = plan(QuantizeConfig { mode: QuantMode::Dynamic, ..on(Target::TensorRt) });
        assert!(e.unwrap_err().to_string().contains("DynamicQuantizeLinear"));
    }

    #[test]
    fn openvino_dynamic_quantization_is_written_with_a_warning() {
        let p = plan(QuantizeConfig { mode: QuantMode::Dynamic, ..on(Target::OpenVino) }).unwrap();
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("slower than its FP32"), "{:?}", p.warnings);
        for t in [Target::OrtVnni, Target::Lowbit] {
            let p = plan(QuantizeConfig { mode: QuantMode::Dynamic, ..on(t) }).unwrap();
            assert!(p.warnings.is_empty(), "{t}: {:?}", p.warnings);
        }
        assert!(plan(on(Target::OpenVino)).unwrap().warnings.is_empty());
    }

    #[test]
    fn calibration_aims_at_the_activation_grid() {
        let p = plan(on(Target::Lowbit)).unwrap();
        assert_eq!(p.activations.calibration.levels, 256);
        let p = plan(QuantizeConfig { activations: Some(IntType::Int16), ..on(Target::Lowbit) });
        let p = p.unwrap();
        assert_eq!(p.activations.calibration.levels, 65536);
        assert_eq!(p.min_opset, 21);
    }

    #[test]
    fn block_size_zero_means_per_channel_and_none_means_32_for_int4() {
        let p = plan(QuantizeConfig::weight_only_int4(0)).unwrap();
        assert_eq!(p.weights.granularity, WeightGranularity::PerChannel);
        let none = QuantizeConfig { block_size: None, ..QuantizeConfig::weight_only_int4(0) };
        assert_eq!(plan(none).unwrap().weights.granularity, WeightGranularity::Blocked(32));
        assert_eq!(
            plan(QuantizeConfig::weight_only_int4(64)).unwrap().weights.granularity,
            WeightGranularity::Blocked(64)
        );
        assert!(plan(QuantizeConfig::weight_only_int4(48)).is_err());
        let static_blocked =
            QuantizeConfig { weights: IntType::Int4, block_size: Some(32), ..Default::default() };
        let p = plan(static_blocked).unwrap();
        assert_eq!(p.weights.granularity, WeightGranularity::Blocked(32));
        assert!(p.min_opset >= 21, "blocked DequantizeLinear needs opset 21");
        let dynamic_blocked =
            QuantizeConfig { block_size: Some(32), ..QuantizeConfig::dynamic_int8() };
        assert!(plan(dynamic_blocked).is_err());
        let static_zero = QuantizeConfig { block_size: Some(0), ..Default::default() };
        assert!(plan(static_zero).is_ok());
    }

    #[test]
    fn weight_axes_are_chosen_in_one_place() {
        let p = plan(on(Target::Lowbit)).unwrap();
        let axis =
            |op: &str, t: bool, r: usize| p.weights.scheme_for(op, t, r).map(|s| s.granularity);
        use crate::scheme::Granularity::*;
        assert_eq!(axis("Conv", false, 4), Some(PerChannel { axis: 0 }));
        assert_eq!(axis("Gemm", true, 2), Some(PerChannel { axis: 0 }));
        assert_eq!(axis("Gemm", false, 2), Some(PerChannel { axis: 1 }));
        assert_eq!(axis("MatMul", false, 3), Some(PerChannel { axis: 2 }));
        assert_eq!(axis("Conv", false, 1), None);
        let w = WeightPlan { granularity: WeightGranularity::Blocked(32), ..p.weights };
        assert_eq!(
            w.scheme_for("MatMul", false, 2).unwrap().granularity,
            PerBlock { axis: 0, block_size: 32 }
        );
        assert_eq!(
            w.scheme_for("Gemm", true, 2).unwrap().granularity,
            PerBlock { axis: 1, block_size: 32 }
        );
        assert!(w.scheme_for("Conv", false, 4).is_none());
    }

    #[test]
    fn impossible_combinations_are_refused() {
        let c = QuantizeConfig { weights: IntType::Int4, ..QuantizeConfig::dynamic_int8() };
        assert!(plan(c).is_err());
        let c = QuantizeConfig { activations: Some(IntType::Int4), ..Default::default() };
        assert!(plan(c).is_err());
        let c = QuantizeConfig { weights: IntType::Int16, ..QuantizeConfig::weight_only_int8() };
        assert!(plan(c).is_err());
    }
}
