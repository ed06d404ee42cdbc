//! One module per `lowbit` command. Commands never import each other: what two of them share
//! lives in the modules beside this folder or in the library crates.

pub mod bench;
pub mod bench_kernels;
pub mod calibrate;
pub mod check;
pub mod compare;
pub mod demo;
pub mod doctor;
pub mod eval;
pub mod example_model;
pub mod inspect;
pub mod monitor;
pub mod qat;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod tune;

use crate::cli::{Cli, Command};
use anyhow::Result;

/// Runs the command `cli` names.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(a) => demo::demo(a, cli.quiet),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Run(a) => run::run(a, cli.quiet),
        Command::Bench(a) => bench::bench(a, cli.quiet),
        Command::BenchKernels(a) => bench_kernels::bench_kernels(a),
        Command::ExampleModel(a) => example_model::example_model(a),
        Command::Calibrate(a) => calibrate::calibrate(a, cli.quiet),
        Command::Quantize(a) => quantize::quantize(*a, cli.quiet),
        Command::Compare(a) => compare::compare(a, cli.quiet),
        Command::Eval(a) => eval::eval(a, cli.quiet),
        // --- monitoring (issue 17) ---
        Command::Monitor(a) => monitor::monitor(a, cli.quiet),
        Command::Serve(a) => serve::serve(a, cli.quiet),
        Command::Tune(a) => tune::tune(*a, cli.quiet),
        // deployment (issue 17)
        Command::Check(a) => check::check(a),
        Command::Doctor(a) => doctor::doctor(a),
        // quantization-aware training (issue 14)
        Command::Qat(a) => qat::qat(*a, cli.quiet),
    }
}
