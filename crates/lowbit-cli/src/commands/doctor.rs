//! `lowbit doctor [--size N] [--json]`: what this CPU offers int8 inference. Its int8
//! instruction-set extensions ([`lowbit_kernels::cpu::int8_features`]), cores, the path
//! lowbit's kernels run, the target `quantize --target auto` picks and why, and the int8
//! speed-up to expect, measured here: lowbit's u8×i8 GEMM against its f32 GEMM on an
//! `N × N × N` product, 1 thread ([`crate::gemm_timing::measure`], as `bench-kernels` times it).

use crate::cli::DoctorArgs;
use crate::gemm_timing::measure;
use crate::text::{print, print_json};
use anyhow::Result;
use lowbit_kernels::cpu::{int8_features, Isa};
use lowbit_quant::target::TargetChoice;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Serialize)]
struct Feature {
    name: &'static str,
    present: bool,
    means: &'static str,
}

#[derive(Serialize)]
struct Speedup {
    size: usize,
    threads: usize,
    /// The int8 path the GEMM ran.
    isa: String,
    f32_gmacs: f64,
    /// Full-range 8-bit weights (what every target but ort-avx2 writes).
    int8_gmacs: f64,
    /// 7-bit weights (ort-avx2's reduce-range).
    int8_7bit_gmacs: f64,
    /// int8 over f32 for the weights the `auto` target writes.
    int8_over_f32: f64,
}

#[derive(Serialize)]
struct Report {
    cpu: Option<String>,
    arch: &'static str,
    cores: usize,
    features: Vec<Feature>,
    /// The path lowbit's kernels run (Generic, Avx2, Avx512Vnni).
    kernels: String,
    auto_target: String,
    auto_reason: String,
    /// The auto target's weight width, and why.
    auto_weights: String,
    speedup: Speedup,
}

/// The CPU's model name (Linux `/proc/cpuinfo`).
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

pub fn doctor(args: DoctorArgs) -> Result<()> {
    let (target, why) = TargetChoice::Auto.resolve();
    let rules = target.rules();
    let g = measure(args.size, 1)?;
    let int8 = if rules.reduce_range_weights { g.int8_7bit_gmacs } else { g.int8_full_range_gmacs };
    let r = Report {
        cpu: cpu_name(),
        arch: std::env::consts::ARCH,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        features: int8_features()
            .into_iter()
            .map(|f| Feature { name: f.name, present: f.present, means: f.means })
            .collect(),
        kernels: format!("{:?}", Isa::detect()),
        auto_target: target.to_string(),
        auto_reason: why,
        auto_weights: rules.weight_reason.to_string(),
        speedup: Speedup {
            size: g.size,
            threads: g.threads,
            isa: g.isa,
            f32_gmacs: g.f32_gmacs,
            int8_gmacs: g.int8_full_range_gmacs,
            int8_7bit_gmacs: g.int8_7bit_gmacs,
            int8_over_f32: int8 / g.f32_gmacs,
        },
    };
    if args.json.on {
        return print_json(&r);
    }
    let mut s = String::new();
    let cpu = r.cpu.as_deref().unwrap_or("unknown CPU");
    let _ = writeln!(s, "cpu: {cpu} ({}, {} cores)", r.arch, r.cores);
    for f in &r.features {
        let mark = if f.present { "yes" } else { "no " };
        let _ = writeln!(s, "  {:<11} {mark}  {}", f.name, f.means);
    }
    let _ = writeln!(s, "lowbit's int8 kernels: {} path", r.kernels);
    let why = r.auto_reason.strip_prefix("auto: ").unwrap_or(&r.auto_reason);
    let _ = writeln!(s, "--target auto: {} ({why})", r.auto_target);
    let _ = writeln!(s, "  {}", r.auto_weights);
    let p = &r.speedup;
    let _ = writeln!(
        s,
        "int8 speed-up here: {:.1}x (GEMM {n}x{n}x{n}, 1 thread, {} path: int8 {:.1} GMAC/s \
         with {} weights, f32 {:.1} GMAC/s)",
        p.int8_over_f32,
        p.isa,
        int8,
        if rules.reduce_range_weights { "7-bit" } else { "8-bit" },
        p.f32_gmacs,
        n = p.size
    );
    let _ = writeln!(
        s,
        "  a whole model gains less: its non-GEMM ops, quantize/requantize steps and memory \
         traffic do not speed up (bench a quantized file with `lowbit bench` to see)"
    );
    print(&s)
}
