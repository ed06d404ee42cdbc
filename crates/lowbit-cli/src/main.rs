//! `lowbit`: inspect, run and benchmark ONNX models on lowbit's CPU engine.
//!
//! This file only turns the outcome into an exit status: 0 on success (and when stdout is a
//! closed pipe, as in `lowbit inspect m.onnx | head -1`), 1 on errors, 2 on usage errors, 4 when a
//! quantized model fails validation (`quantize`), 5 when `quantize` could quantize fewer than
//! 10 % of the weighted nodes, 6 when `check` finds a rule the target runtime enforces broken.
//! Errors are printed as `error: <context>: <cause>: ...`. The commands live in [`commands`], one module
//! each; [`cli`] declares the arguments; the modules beside them hold what commands share.

mod calibration;
mod cli;
mod commands;
mod gemm_timing;
mod inputs;
mod models;
mod noise_report;
mod onnx_build;
mod paths;
mod progress;
mod text;
mod usage;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version go to stdout and exit 0; usage errors go to stderr, exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            if usage::is_usage(&e) {
                eprintln!("\nFor more information, try '--help'.");
                ExitCode::from(2)
            } else if e.downcast_ref::<usage::ValidationFailed>().is_some() {
                ExitCode::from(4)
            } else if e.downcast_ref::<usage::PartialQuantization>().is_some() {
                ExitCode::from(5)
            } else if e.downcast_ref::<usage::RulesBroken>().is_some() {
                ExitCode::from(6)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, `: `-separated. Causes whose text the message already shows are
/// skipped: library errors often print their source inside their own message too.
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// True when the error comes from writing to a pipe whose reader has gone away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
