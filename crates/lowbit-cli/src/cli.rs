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
    /// Show a model's metadata, inputs, outputs, op histogram, parameters and unsupported ops.
    Inspect(InspectArgs),
    /// Run a model on .npy inputs and write its outputs as .npy files.
    Run(RunArgs),
    /// Measure per-sample latency, throughput and peak memory.
    Bench(BenchArgs),
    /// Write a small MLP model (fixed-seed weights) with sample inputs and expected outputs.
    ExampleModel(ExampleModelArgs),
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("feed").required(true).args(["input", "data"])))]
pub struct RunArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// A graph input from a .npy file, samples along axis 0 (repeat for each input).
    #[arg(short, long, value_name = "NAME=FILE.npy")]
    pub input: Vec<String>,
    /// A folder with one <input-name>.npy per graph input, or one .npz holding them.
    #[arg(short, long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Folder for the outputs: one <output-name>.npy each, plus outputs.json.
    #[arg(short, long, value_name = "OUTDIR")]
    pub output: PathBuf,
    /// Worker threads (0: one per core).
    #[arg(short, long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
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
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// Inputs as for `run --data`; without it, inputs are synthesized from the declared shapes.
    #[arg(short, long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Worker threads (0: one per core).
    #[arg(short, long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
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
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExampleModelArgs {
    /// Folder to create: model.onnx, data/x.npy, expected/probs.npy.
    pub out_dir: PathBuf,
    /// Number of sample rows in data/x.npy.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub samples: usize,
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
