//! `lowbit check MODEL [--target T] [--json]`: lints a quantized model against a target
//! runtime's rules ([`lowbit_quant::target::check`]): one line per finding naming the node or
//! tensor, the rule and why; exit 6 when a rule the runtime enforces is broken.

use crate::cli::CheckArgs;
use crate::models::load_model;
use crate::text::{plural, print, print_json};
use crate::usage::RulesBroken;
use anyhow::Result;
use lowbit_quant::target::check::check_model;
use lowbit_quant::target::TargetChoice;
use std::fmt::Write as _;

pub fn check(args: CheckArgs) -> Result<()> {
    let (target, why) = args.target.parse::<TargetChoice>()?.resolve();
    let model = load_model(&args.model)?;
    let report = check_model(&model, target)?;
    if args.json.on {
        print_json(&report)?;
    } else {
        let mut s = String::new();
        let _ = writeln!(s, "{}: target {target} ({why})", args.model.display());
        let _ = writeln!(
            s,
            "opset {}, {} Q/DQ node{}, {} of {} Conv/MatMul/Gemm layers quantized",
            report.opset,
            report.qdq_nodes,
            plural(report.qdq_nodes),
            report.quantized_layers,
            report.weighted_layers
        );
        for f in &report.findings {
            let _ = writeln!(s, "{f}");
        }
        let _ = writeln!(
            s,
            "{} error{}, {} warning{}",
            report.errors,
            plural(report.errors),
            report.warnings,
            plural(report.warnings)
        );
        print(&s)?;
    }
    if !report.passes() {
        return Err(RulesBroken(format!(
            "{}: {} error{} against target {target}'s rules",
            args.model.display(),
            report.errors,
            plural(report.errors)
        ))
        .into());
    }
    Ok(())
}
