//! Command-line arguments as clap parses them ("low" arguments). Each command module validates
//! them into what it runs on, so nothing past that point re-checks strings.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Lossless ONNX I/O and an FP32 CPU engine, the base of a quantization toolkit.
#[derive(Parser, Debug)]
#[command(name = "lowbit", version, about, propagate_version = true)]
pub struct Cli {
    /// Print no progress bars or notes on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a model and data, calibrate, quantize to int8 and show what it cost (no download).
    Demo(DemoArgs),
    /// Show a model's metadata, inputs, outputs, op histogram, parameters and unsupported ops.
    Inspect(InspectArgs),
    /// Run a model on .npy inputs and write its outputs as .npy files.
    Run(RunArgs),
    /// Measure per-sample latency, throughput and peak memory (--vs-ort: against ONNX Runtime).
    Bench(BenchArgs),
    /// Time the int8 and f32 GEMM kernels on an N×N×N product against this core's int8 peak.
    BenchKernels(BenchKernelsArgs),
    /// Write a small MLP model (fixed-seed weights) with sample inputs and expected outputs.
    ExampleModel(ExampleModelArgs),
    /// Stream --data samples through the model and write every tensor's ranges (ranges.json).
    Calibrate(CalibrateArgs),
    /// Quantize a model: static (QDQ), dynamic, weight-only, fp16 or bf16.
    Quantize(Box<QuantizeArgs>),
    /// Per-layer quantization noise between an FP32 model and its quantized version, worst
    /// layers first with hints; JSON and an HTML report.
    Compare(CompareArgs),
    /// Score a model on data (accuracy, sentence-pair Spearman, agreement and SQNR against a
    /// reference), with its latency and size.
    Eval(EvalArgs),
    // --- monitoring (issue 17) ---
    /// Run new inputs through a quantized model and report, per quantized tensor, clip rate,
    /// range and drift (PSI) against calibration; exits 3 on drift.
    Monitor(MonitorArgs),
    /// Serve a model over HTTP: POST JSON or .npy inputs to /v1/run, Prometheus metrics (latency,
    /// per-tensor saturation and drift) at /metrics.
    Serve(ServeArgs),
    /// Choose each layer's precision (int4/int8/int16/fp16/fp32) automatically under an
    /// accuracy budget, measuring size and latency; JSON with the Pareto front, HTML report.
    Tune(Box<TuneArgs>),
    // --- deployment (issue 17): target profiles and this CPU
    /// Lint a quantized model (lowbit's, ONNX Runtime's, NNCF's) against a target runtime's
    /// rules: one finding per node or tensor, exit 6 when the runtime would refuse it.
    Check(CheckArgs),
    /// This CPU's int8 instructions, the target `auto` picks and why, and the int8 speed-up
    /// measured here.
    Doctor(DoctorArgs),
    /// Quantization-aware training on the ONNX graph: int8, int4, ternary or binary weights
    /// learned by distillation from the FP32 model (or labels); writes a QDQ model.
    Qat(Box<QatArgs>),
}

/// How `--data` is read, the same for every command that reads it: `--preprocess` for image
/// arrays and photo folders, `--tokenizer` and the field flags for raw text.
#[derive(Args, Debug, Default)]
pub struct DataArgs {
    /// Convert integer (uint8) images and photos for float inputs: inline
    /// `resize=256,crop=224,mean=127,std=128` (keys scale, mean, std, layout, resize, crop,
    /// color, interp), a JSON file with those keys (the corpus sidecar configs), or both:
    /// `model.json,crop=224`.
    #[arg(long, value_name = "SPEC")]
    pub preprocess: Option<String>,
    /// Raw text --data (.txt, .jsonl, .csv, .tsv): the Hugging Face tokenizer.json that turns
    /// each sentence into token ids (its truncation is kept, its padding switched off).
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    /// Raw text: the field (.jsonl) or column (.csv, .tsv) holding the sentences [default:
    /// text, else sentence, else the only text field].
    #[arg(long, value_name = "NAME", requires = "tokenizer", conflicts_with = "pair_fields")]
    pub text_field: Option<String>,
    /// Raw text: sentence pairs in fields A and B (two samples per record, a then b; eval
    /// scores the pairs with --gold-field).
    #[arg(long, value_name = "A,B", requires = "tokenizer")]
    pub pair_fields: Option<String>,
    /// Raw text: the field holding each record's gold similarity score (eval: Spearman of
    /// the pairs' cosine against it).
    #[arg(long, value_name = "NAME", requires = "pair_fields")]
    pub gold_field: Option<String>,
}

/// `--threads`, the same on every command that runs a model on this machine's cores (serve,
/// quantize and bench-kernels word or default theirs differently and keep their own).
#[derive(Args, Debug, Clone, Copy)]
pub struct Threads {
    /// Worker threads (0: one per core).
    #[arg(id = "threads", short = 't', long = "threads", default_value_t = 0, value_name = "N")]
    pub n: usize,
}

/// `--json`, the same on every command that has it: the result as one JSON object on stdout
/// instead of the text (notes and progress stay on stderr). A file is `--json-out FILE`.
#[derive(Args, Debug, Clone, Copy)]
pub struct JsonFlag {
    /// Print one JSON object instead of text (schema: docs/json.md).
    #[arg(id = "json", long = "json")]
    pub on: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the model, data, ranges and int8 model [default: <temp>/lowbit-demo,
    /// replaced on every run].
    #[arg(short, long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Write into an existing, non-empty -o folder.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub threads: Threads,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The FP32 .onnx file the quantized one was made from.
    pub fp32: PathBuf,
    /// The quantized (QDQ) .onnx file, written by lowbit or another tool.
    pub quant: PathBuf,
    /// Inputs as for `run --data`.
    #[arg(short, long, value_name = "DIR")]
    pub data: PathBuf,
    /// Compare on the first N samples [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: Option<u64>,
    #[command(flatten)]
    pub format: DataArgs,
    /// Labels (one per sample, .npy): the report then shows top-1 of both models [default: a
    /// photo folder's own labels].
    #[arg(long, value_name = "FILE.npy")]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
    /// Write a self-contained HTML report (charts inline).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Replace an existing --report file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub threads: Threads,
    /// Feed rows at their padded length, in batches.
    #[arg(long)]
    pub no_trim: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The .onnx file.
    pub model: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("feed").required(true).args(["input", "data"])))]
pub struct RunArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// A graph input from a .npy file, samples along axis 0 (repeat for each input).
    #[arg(short, long, value_name = "NAME=FILE.npy")]
    pub input: Vec<String>,
    /// A folder with one <input-name>.npy per graph input, .npz files (one data set, or one
    /// file per sample), a photo folder (JPEG/PNG/WebP, see --preprocess), or a text file
    /// (.txt, .jsonl, .csv, .tsv, with --tokenizer).
    #[arg(short, long, value_name = "DIR|FILE")]
    pub data: Option<PathBuf>,
    /// Folder for the outputs: one <output-name>.npy each, plus outputs.json.
    #[arg(short, long, value_name = "OUTDIR")]
    pub output: PathBuf,
    /// Write into an existing, non-empty output folder (replacing files of the same names).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub threads: Threads,
    /// Samples per run when the model's first dimension is free [default: 32].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Use only the first N samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Cut each batch's padding: inputs sharing the *mask* input's second axis are trimmed to
    /// the batch's longest real length (outputs are zero-padded back when stacked).
    #[arg(long)]
    pub trim_padding: bool,
    #[command(flatten)]
    pub format: DataArgs,
    #[command(flatten)]
    pub adaptive: AdaptiveArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// Inputs as for `run --data`; without it, inputs are synthesized from the declared shapes.
    #[arg(short, long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub threads: Threads,
    /// Timed runs [default: one per sample with --data, else 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: Option<u64>,
    /// Untimed runs first.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub warmup: usize,
    /// Use only the first N samples of --data.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Feed --data rows at their padded length (by default each row is cut to its *mask*
    /// input's real length).
    #[arg(long)]
    pub no_trim: bool,
    #[command(flatten)]
    pub format: DataArgs,
    /// Also time ONNX Runtime (Python onnxruntime) on the same file and feeds, after lowbit:
    /// same warm-up, runs and threads; prints both, the median ratio and the outputs' max
    /// difference on the first sample.
    #[arg(long)]
    pub vs_ort: bool,
    /// The Python with onnxruntime for --vs-ort [default: $LOWBIT_PYTHON, else
    /// ./.venv/bin/python, else python3].
    #[arg(long, value_name = "PATH", requires = "vs_ort")]
    pub python: Option<PathBuf>,
    /// After the timed runs, run as many again timing every step: time per op type and the
    /// slowest nodes (not included in the latency figures).
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub json: JsonFlag,
    #[command(flatten)]
    pub adaptive: AdaptiveArgs,
}

#[derive(Args, Debug)]
pub struct BenchKernelsArgs {
    /// M = N = K of the product.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub size: usize,
    /// Worker threads (0: one per core).
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    #[command(flatten)]
    pub json: JsonFlag,
    /// Instead: f32 × int8 / int4 weight-only GEMM against f32 GEMM at M = 1 and 16,
    /// K, N in 384..1536 (the shapes of sentence encoders and small LLMs).
    #[arg(long)]
    pub weight_only: bool,
    /// Instead: requantized u8×i8 GEMM (`M×K×N`, output bytes as a QLinearConv/QLinearMatMul
    /// writes them) at the shapes of the corpus: EfficientNet-Lite0's pointwise convs
    /// (pixels × channels) and MiniLM's token GEMMs.
    #[arg(long, conflicts_with = "weight_only")]
    pub shapes: bool,
}

#[derive(Args, Debug)]
pub struct ExampleModelArgs {
    /// Folder to create: model.onnx, data/x.npy, expected/probs.npy.
    pub out_dir: PathBuf,
    /// Number of sample rows in data/x.npy.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub samples: usize,
    /// Write into an existing, non-empty OUT_DIR.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The FP32 .onnx file.
    pub model: PathBuf,
    /// A folder with one <input-name>.npy per graph input (samples on axis 0), .npz files (one
    /// data set, or one file per sample), a photo folder, or a text file with --tokenizer.
    #[arg(short, long, value_name = "DIR|FILE")]
    pub data: PathBuf,
    /// Calibrate on the first N samples only [default: all].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: Option<u64>,
    #[command(flatten)]
    pub threads: Threads,
    /// Feed rows at their padded length, in batches (by default a model with a *mask* input
    /// gets one row per run, cut to its real length, so padding stays out of the statistics).
    #[arg(long)]
    pub no_trim: bool,
    #[command(flatten)]
    pub format: DataArgs,
    /// The calibration table to write (JSON).
    #[arg(short, long, value_name = "RANGES.json")]
    pub output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The FP32 .onnx file (never overwritten).
    pub model: PathBuf,
    /// The quantized .onnx file to write.
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// What to quantize: static (calibrated QDQ), dynamic, weight-only, fp16 or bf16.
    #[arg(long, default_value = "static", value_parser = ["static", "dynamic", "weight-only", "fp16", "bf16"])]
    pub mode: String,
    /// Calibration data (static): as for `calibrate --data`.
    #[arg(short, long, value_name = "DIR", conflicts_with = "ranges")]
    pub data: Option<PathBuf>,
    /// A calibration table written by `lowbit calibrate` (static).
    #[arg(long, value_name = "RANGES.json")]
    pub ranges: Option<PathBuf>,
    /// Calibrate on the first N samples of --data only [default: all].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: Option<u64>,
    /// Which calibrated range to use (static).
    #[arg(long, default_value = "minmax", value_parser = ["minmax", "moving-average", "percentile", "entropy", "mse"])]
    pub method: String,
    /// One weight scale per output channel (the default).
    #[arg(long, conflicts_with = "per_tensor")]
    pub per_channel: bool,
    /// One weight scale per weight tensor.
    #[arg(long)]
    pub per_tensor: bool,
    /// The runtime and CPU the file is for: auto (this CPU under ONNX Runtime), ort-avx2,
    /// ort-vnni, arm, openvino, tensorrt or lowbit. It sets what the options below leave open
    /// (8- or 7-bit weights, activation type) and refuses what the target cannot run.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ort-avx2", "ort-vnni", "arm", "openvino", "tensorrt", "lowbit"])]
    pub target: String,
    /// Activation type (static) [default: the target's, uint8 except tensorrt's int8].
    #[arg(long, value_parser = ["uint8", "int8", "int16"])]
    pub activations: Option<String>,
    /// Weight type.
    #[arg(long, default_value = "int8", value_parser = ["int8", "int4", "uint8", "uint4"])]
    pub weights: String,
    /// Quantize weights in blocks of N along the reduction axis; 0: per channel (or per tensor
    /// with --per-tensor). Static: MatMul/Gemm weights only (Conv stays per channel, a blocked
    /// layer's bias stays float) [default: 32 for 4-bit weight-only, else 0].
    #[arg(long, value_name = "N")]
    pub block_size: Option<usize>,
    /// Static with 4-bit weights: quantize the first and last weighted layers (a CNN's stem
    /// and classifier) to 4 bits too. By default they keep int8 weights: 4-bit stems and
    /// classifiers lose the most accuracy.
    #[arg(long)]
    pub int4_ends: bool,
    /// How each weight scale's range is chosen: minmax (nothing clipped) or mse (the narrowed
    /// range with the smallest squared weight error) [default: mse for 4-bit weights, else
    /// minmax].
    #[arg(long, value_parser = ["minmax", "mse"])]
    pub weight_range: Option<String>,
    /// Give 8-bit weights 7 bits (ONNX Runtime's reduce_range), whatever the target says.
    /// By default only target ort-avx2 does: ORT's u8×s8 AVX2 kernel (`vpmaddubsw`) saturates
    /// 16-bit pair sums of full-range weights; VNNI, ARM, OpenVINO and lowbit do not.
    #[arg(long, conflicts_with = "no_reduce_range")]
    pub reduce_range: bool,
    /// Use all 8 bits of int8 weights, whatever the target says.
    #[arg(long)]
    pub no_reduce_range: bool,
    /// Static: keep in float any Conv/MatMul/Gemm whose input activation is expected to keep
    /// less than this SQNR (dB, estimated from its calibration histogram and range), e.g. an
    /// activation whose outliers leave most values a few levels. 0 quantizes everything.
    #[arg(long, value_name = "DB", default_value_t = lowbit_quant::quantize::DEFAULT_MIN_ACTIVATION_SQNR)]
    pub min_sqnr: f64,
    /// Leave nodes in float: a node name, a `*`/`?` pattern over names, or `op:TYPE`
    /// (repeat for more).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Static: cross-layer equalization before calibration (Nagel et al. 2019, DFQ): rescales
    /// the channels of consecutive Conv/Gemm pairs (through Relu, Clip/ReLU6, pools) so one
    /// weight scale fits every channel; the FP32 function is unchanged (a clip's bound becomes
    /// per channel: Clip + Min). For --per-tensor weights. Needs --data.
    #[arg(long)]
    pub equalize: bool,
    /// Static: remove the per-channel output shift quantization adds to each layer, measured on
    /// --data against the FP32 layer on the same inputs (empirical, two passes) or from the
    /// weights' rounding error times the input's calibrated mean (analytic) [Nagel et al. 2019].
    #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "empirical", value_parser = ["empirical", "analytic"])]
    pub bias_correction: Option<String>,
    /// Static: learn each weight's rounding (up or down) layer by layer on --data (AdaRound,
    /// Nagel et al. 2020).
    #[arg(long)]
    pub adaround: bool,
    /// AdaRound optimizer steps per layer.
    #[arg(long, value_name = "N", default_value_t = lowbit_quant::config::AdaRoundOptions::default().iterations)]
    pub adaround_iters: usize,
    /// Stop AdaRound after this many minutes (layers not reached keep round-to-nearest).
    #[arg(long, value_name = "MIN")]
    pub time_budget: Option<f64>,
    /// Static: migrate activation outliers of MatMul/Gemm inputs into their weights with
    /// strength ALPHA in [0, 1] (SmoothQuant, Xiao et al. 2023; 0.5 is the paper's default).
    #[arg(long, value_name = "ALPHA")]
    pub smooth_quant: Option<f32>,
    /// Keep embedding tables (a Gather's float32 initializer, e.g. word embeddings) float32.
    /// By default static, dynamic and weight-only mode store them int8 with one scale per row,
    /// dequantized after the Gather.
    #[arg(long)]
    pub float_embeddings: bool,
    /// Validate the quantized model before writing it: run it and the FP32 model on N samples
    /// of --data the calibration did not use (the next N after --samples; the last N
    /// calibration samples when there are no others) and compare every output. 0: skip.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub validate: usize,
    /// The validation floor: every float output keeps at least this SQNR (dB) against FP32.
    #[arg(long, value_name = "DB", default_value_t = lowbit_eval::validate::Floor::DEFAULT_SQNR_DB)]
    pub min_output_sqnr: f64,
    /// Write the model even when it fails validation (the failure is still printed).
    #[arg(long)]
    pub allow_degraded: bool,
    /// Write the model even when fewer than 10 % of its weighted nodes (Conv, Gemm, MatMul, ...)
    /// could be quantized (the causes are still printed; without it that exits 5).
    #[arg(long)]
    pub allow_partial: bool,
    /// Replace existing output files (-o, --report).
    #[arg(long)]
    pub force: bool,
    /// Worker threads for calibration (0: one per core).
    #[arg(short, long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Calibrate on rows at their padded length (see `calibrate --no-trim`).
    #[arg(long)]
    pub no_trim: bool,
    #[command(flatten)]
    pub format: DataArgs,
    /// After writing, compare the quantized model with the FP32 one on --report-data (or
    /// --data) and write an HTML report of per-layer noise (see `lowbit compare`).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Data for --report [default: --data, the calibration samples].
    #[arg(long, value_name = "DIR", requires = "report")]
    pub report_data: Option<PathBuf>,
    /// Labels for --report-data: the report then shows top-1 of both models.
    #[arg(long, value_name = "FILE.npy", requires = "report")]
    pub report_labels: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The .onnx file to score (FP32 or quantized).
    pub model: PathBuf,
    /// Inputs as for `run --data` (side a's with --pairs).
    #[arg(short, long, value_name = "DIR")]
    pub data: PathBuf,
    /// Integer class labels (.npy, one per sample of --data): top-1 and top-5 accuracy [default:
    /// a photo folder's own labels (labels.tsv, labels.txt or class sub-folders)].
    #[arg(long, value_name = "FILE.npy", conflicts_with = "pairs")]
    pub labels: Option<PathBuf>,
    /// The FP32 original: top-1 agreement, output cosine and SQNR against its outputs on the
    /// same inputs, and its own score.
    #[arg(long, value_name = "FP32_MODEL")]
    pub reference: Option<PathBuf>,
    /// Sentence pairs (STS): side b's inputs, as --data holds side a's; needs --gold.
    #[arg(long, value_name = "DIR_B", requires = "gold")]
    pub pairs: Option<PathBuf>,
    /// Gold similarity scores (.npy, one per pair): Spearman×100 of cosine(emb_a, emb_b).
    #[arg(long, value_name = "SCORES.npy", requires = "pairs")]
    pub gold: Option<PathBuf>,
    /// The graph output to score (logits, or a pooled embedding with --pairs) [default: the
    /// model's first float output].
    #[arg(long, value_name = "NAME")]
    pub output: Option<String>,
    #[command(flatten)]
    pub format: DataArgs,
    /// Score only the first N samples (pairs).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub threads: Threads,
    /// Samples per run when the model's first dimension is free [default: 32].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Time N samples one at a time, evenly spread over the data (0: no timing).
    #[arg(long, value_name = "N", default_value_t = lowbit_eval::latency::DEFAULT_SAMPLES)]
    pub latency: usize,
    /// Feed rows at their padded length (by default each batch is cut to its *mask* input's
    /// longest real length, and each timed sample to its own).
    #[arg(long)]
    pub no_trim: bool,
    #[command(flatten)]
    pub json: JsonFlag,
    #[command(flatten)]
    pub adaptive: AdaptiveArgs,
}

// --- monitoring and adaptive precision (issue 17) ---

/// `--adaptive` for the commands that run a model (run, eval, bench, serve).
#[derive(Args, Debug, Default)]
pub struct AdaptiveArgs {
    /// Quantized models: count, per sample, the share of each quantized activation's codes at
    /// the ends of its range; a sample that saturates more than calibration did (by more than
    /// --adaptive-threshold) is re-run on the float path of the same graph (activation Q/DQ
    /// skipped) and counted.
    #[arg(long)]
    pub adaptive: bool,
    /// Saturation share above calibration's that re-runs a sample.
    #[arg(long, value_name = "SHARE", default_value_t = lowbit_engine::adaptive::DEFAULT_THRESHOLD, requires = "adaptive")]
    pub adaptive_threshold: f64,
    /// Re-run flagged samples on this model instead (the FP32 original, same inputs and
    /// outputs): what recovers accuracy when the quantized weights cost it, not only the
    /// activations [default: the quantized model's float path].
    #[arg(long, value_name = "FP32.onnx", requires = "adaptive")]
    pub adaptive_fallback: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// TCP port (0: one the system picks, printed on the first line).
    #[arg(short, long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Worker threads for the model's kernels (0: one per core).
    #[arg(short, long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Largest request body accepted, MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub max_body_mb: usize,
    #[command(flatten)]
    pub adaptive: AdaptiveArgs,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// The quantized (QDQ) .onnx file.
    pub model: PathBuf,
    /// The new inputs, as for `run --data`.
    #[arg(short, long, value_name = "DIR")]
    pub data: PathBuf,
    #[command(flatten)]
    pub format: DataArgs,
    /// The calibration table (`lowbit calibrate`) to compare with, for models that carry no
    /// calibration record (quantized by another tool or an older lowbit) [default: the
    /// model's own record].
    #[arg(long, value_name = "RANGES.json")]
    pub ranges: Option<PathBuf>,
    /// The FP32 original: top-1 agreement, cosine and SQNR of the first float output against it.
    #[arg(long, value_name = "FP32.onnx")]
    pub reference: Option<PathBuf>,
    /// Monitor only the first N samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Samples per run when the model's first dimension is free [default: 32].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// PSI above which a tensor counts as drifted (0.1: moderate shift, 0.25: significant).
    #[arg(long, value_name = "X", default_value_t = lowbit_eval::monitor::MonitorOptions::default().psi)]
    pub psi_threshold: f64,
    /// Clip rate above calibration's at which a tensor counts as drifted.
    #[arg(long, value_name = "SHARE", default_value_t = lowbit_eval::monitor::MonitorOptions::default().clip_rate)]
    pub clip_threshold: f64,
    #[command(flatten)]
    pub json: JsonFlag,
    /// Also write the report as JSON to this file (schema: docs/json.md).
    #[arg(long, value_name = "FILE.json")]
    pub json_out: Option<PathBuf>,
    /// Replace an existing --json-out file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub threads: Threads,
    /// Feed rows at their padded length.
    #[arg(long)]
    pub no_trim: bool,
}

#[derive(Args, Debug)]
pub struct QatArgs {
    /// The FP32 .onnx file (never overwritten).
    pub model: PathBuf,
    /// The trained QDQ .onnx file to write.
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Training samples (also calibrated on), as for `quantize --data`.
    #[arg(short, long, value_name = "DIR")]
    pub data: PathBuf,
    /// Integer class labels (.npy, one per sample of --data): train with cross-entropy instead
    /// of distillation [default: distillation; a photo folder's labels are not used for it].
    #[arg(long, value_name = "FILE.npy")]
    pub labels: Option<PathBuf>,
    /// Weight grid: int8, int4 (per channel), ternary {-a,0,+a} or binary {-a,+a} per channel
    /// (both written as int8 QDQ with codes in {-1,0,1}).
    #[arg(long, default_value = "int8", value_parser = ["int8", "int4", "ternary", "binary"])]
    pub weights: String,
    /// Activation type.
    #[arg(long, default_value = "uint8", value_parser = ["uint8", "int8"])]
    pub activations: String,
    /// Passes over the training samples.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub epochs: usize,
    /// Learning rate, relative: each tensor moves by about X times its mean magnitude per step
    /// (cosine-decayed to 0).
    #[arg(long, default_value_t = 1e-2, value_name = "X")]
    pub lr: f32,
    /// Samples per optimizer step.
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Optimizer.
    #[arg(long, default_value = "adam", value_parser = ["adam", "sgd"])]
    pub optimizer: String,
    /// Objective [default: ce with --labels, else kl for classifiers (a softmax, log-softmax
    /// or Gemm output), else cosine].
    #[arg(long, value_parser = ["kl", "cosine", "mse", "ce"])]
    pub loss: Option<String>,
    /// Stop training after this many minutes (the model kept is the best so far).
    #[arg(long, value_name = "MIN")]
    pub time_budget: Option<f64>,
    /// Seed for the shuffles (the same seed gives the same model).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Train on the first N samples of --data only [default: all].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub samples: Option<u64>,
    /// Share of the training samples held out for early stopping.
    #[arg(long, default_value_t = 0.1, value_name = "X")]
    pub holdout: f32,
    /// Epochs without a better held-out loss before stopping.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub patience: usize,
    /// Samples to score the FP32, post-training and QAT models on (never trained on), as for
    /// `eval --data`.
    #[arg(long, value_name = "DIR")]
    pub eval_data: Option<PathBuf>,
    /// Skip the first N samples of --eval-data (to score the rest of the --data folder).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "eval_data")]
    pub eval_from: usize,
    /// Class labels of --eval-data (.npy) [default: a photo folder's own labels, else the
    /// folder's labels.npy].
    #[arg(long, value_name = "FILE.npy", requires = "eval_data")]
    pub eval_labels: Option<PathBuf>,
    /// The graph output trained on (a classifier's logits, a pooled embedding) [default: the
    /// model's first float output].
    #[arg(long, value_name = "NAME")]
    pub output_name: Option<String>,
    /// Also write the post-training model at the same bit width (the baseline).
    #[arg(long, value_name = "PTQ.onnx")]
    pub ptq_output: Option<PathBuf>,
    /// MatMul/Gemm weights in blocks of N values along K, one learned step per block
    /// (DequantizeLinear block_size, opset 21; a power of two >= 16); Conv weights stay per
    /// channel, biases of blocked layers stay float [default: per channel].
    #[arg(long, value_name = "N")]
    pub block_size: Option<usize>,
    /// With --weights int4: quantize the first and last weighted layers (a CNN's stem and
    /// classifier) to 4 bits too [default: they train and stay on int8, as `quantize` keeps them].
    #[arg(long)]
    pub int4_ends: bool,
    /// Start from this QDQ model of MODEL (e.g. `quantize --adaround`'s, same --weights and
    /// --activations) instead of round-to-nearest: its codes, weight and activation scales; it
    /// is the post-training baseline, and the kept model is never worse on the held-out share.
    #[arg(long, value_name = "QDQ.onnx")]
    pub init: Option<PathBuf>,
    /// Where the trained float weights start: the starting model's dequantized codes, or the
    /// FP32 weights (fake-quantized to nearest) [default: codes with --init, else fp32].
    #[arg(long, value_parser = ["codes", "fp32"])]
    pub init_weights: Option<String>,
    #[command(flatten)]
    pub format: DataArgs,
    #[command(flatten)]
    pub threads: Threads,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// The FP32 .onnx file (never overwritten).
    pub model: PathBuf,
    /// The chosen model to write.
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Calibration data, as for `calibrate --data` (calibrated once, reused by every
    /// configuration).
    #[arg(short, long, value_name = "DIR")]
    pub data: PathBuf,
    /// Calibrate on the first N samples of --data only [default: all].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: Option<u64>,
    /// The data the metric is measured on (part of it held out, see --holdout).
    #[arg(long, value_name = "DIR")]
    pub eval_data: PathBuf,
    /// Class labels of --eval-data (.npy) [default: a photo folder's own labels].
    #[arg(long, value_name = "FILE.npy", conflicts_with = "reference_only")]
    pub labels: Option<PathBuf>,
    /// Added to every label (e.g. 1 for a model with a background class first).
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub label_offset: i64,
    /// Score against the FP32 model's own outputs, ignoring any labels: top-1 agreement
    /// (--metric top1) or cosine.
    #[arg(long)]
    pub reference_only: bool,
    /// The task metric: top1 (accuracy, or agreement with FP32 without labels), spearman
    /// (sentence pairs: --pair-fields and --gold-field), cosine or sqnr (against FP32's
    /// outputs) [default: spearman for sentence pairs, else top1].
    #[arg(long, value_parser = ["top1", "spearman", "cosine", "sqnr"])]
    pub metric: Option<String>,
    /// The largest drop of the metric from FP32's allowed, in its units (points of % for
    /// top1, ×100 for spearman and cosine); for sqnr the lowest SQNR allowed, in dB.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub max_drop: f64,
    /// How sure the search must be that a configuration's true drop is within --max-drop,
    /// from the drop's paired standard error on the search samples (normal approximation):
    /// 0.5 lets the measured drop decide; 0.8 asks the drop to sit about one standard error
    /// inside the budget (fewer search samples mean a wider margin).
    #[arg(long, value_name = "P", default_value_t = 0.5)]
    pub confidence: f64,
    /// What to minimize within the budget: latency on lowbit's engine, or the file's size.
    #[arg(long, default_value = "latency", value_parser = ["latency", "size"])]
    pub objective: String,
    /// Candidate precisions, cheapest first (int4, int8-per-tensor, int8, int16, fp16,
    /// fp32); every layer starts at the first [default: int8,int16,fp16,fp32 for latency,
    /// int4,int8,fp16,fp32 for size].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub candidates: Vec<String>,
    /// bisect (bisection on how many of the noisiest layers to promote, then per-layer
    /// refinement) or greedy (promote the noisiest layer one at a time: the baseline).
    #[arg(long, default_value = "bisect", value_parser = ["bisect", "greedy"])]
    pub strategy: String,
    /// The deployment target, as for `quantize --target`.
    #[arg(long, default_value = "lowbit", value_parser = ["auto", "ort-avx2", "ort-vnni", "arm", "openvino", "tensorrt", "lowbit"])]
    pub target: String,
    /// Keep embedding tables (Gather on a weight) float32, as `quantize --float-embeddings`:
    /// in every configuration, so the search does not pay an int8 table's dequantization.
    #[arg(long)]
    pub float_embeddings: bool,
    /// Share of --eval-data held out from the search to confirm the chosen point.
    #[arg(long, value_name = "F", default_value_t = 0.5)]
    pub holdout: f64,
    /// Stop searching after this many minutes, keeping the best configuration found so far.
    #[arg(long, value_name = "MIN")]
    pub time_budget: Option<f64>,
    /// Learn the int4 weights' rounding and scales with AdaRound on the calibration samples,
    /// once (every layer at int4), and reuse each layer's learned weights in every
    /// configuration that keeps it at int4.
    #[arg(long)]
    pub adaround: bool,
    /// AdaRound optimizer steps per layer (with --adaround).
    #[arg(long, value_name = "N", default_value_t = lowbit_quant::config::AdaRoundOptions::default().iterations, requires = "adaround")]
    pub adaround_iters: usize,
    /// Samples timed per configuration (0: no latency; --objective latency needs some).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub latency: usize,
    /// Calibration samples the per-layer noise is measured on.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub noise_samples: usize,
    /// Samples per run.
    #[arg(short, long, value_name = "N", default_value_t = 8)]
    pub batch: usize,
    /// The graph output to score [default: the model's first float output].
    #[arg(long, value_name = "NAME")]
    pub output_name: Option<String>,
    #[command(flatten)]
    pub format: DataArgs,
    #[command(flatten)]
    pub json: JsonFlag,
    /// Also write every evaluated configuration, the Pareto front and the choice as JSON to
    /// this file (schema: docs/json.md).
    #[arg(long, value_name = "FILE.json")]
    pub json_out: Option<PathBuf>,
    /// Write a self-contained HTML report: the Pareto front and the per-layer precision map.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub threads: Threads,
    /// Feed rows at their padded length.
    #[arg(long)]
    pub no_trim: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

// --- deployment (issue 17)

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The quantized .onnx file.
    pub model: PathBuf,
    /// The runtime the file is for: auto (this CPU under ONNX Runtime), ort-avx2, ort-vnni,
    /// arm, openvino, tensorrt or lowbit.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ort-avx2", "ort-vnni", "arm", "openvino", "tensorrt", "lowbit"])]
    pub target: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// M = N = K of the GEMM timed for the int8 speed-up.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub size: usize,
    #[command(flatten)]
    pub json: JsonFlag,
}
