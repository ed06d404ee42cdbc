//! `lowbit bench-kernels [--size N] [--threads N] [--json]`: the int8 and f32 GEMM kernels on
//! an `N × N × N` product (weights packed once, as at model load), against this core's peak for
//! the instructions of the int8 path it runs ([`lowbit_kernels::qgemm::peak_probe`], timed
//! here: `vpdpbusd` with AVX-512 VNNI, `vpmaddubsw` + `vpmaddwd` with AVX2).
//!
//! Reported: GMAC/s of u8×i8 GEMM with 7-bit weights (`vpmaddubsw` path, what reduce-range
//! models run), with full-range weights (the exact `vpmaddwd` path on AVX2, `vpdpbusd` with
//! VNNI), f32 GEMM (GFLOP/s / 2, i.e. multiply-adds), each as a fraction of the probe's peak
//! per thread. Medians of repeated timings.
//!
//! `--weight-only`: f32 × int8 (per column) and f32 × int4 (blocks of 32 along K) weight-only
//! GEMM ([`lowbit_kernels::wgemm`]) against f32 GEMM with packed weights, at M = 1 and 16.
//! Each timing cycles through enough copies of the weights that the f32 copies exceed 64 MiB,
//! as a model's layers do, so f32 weights stream from memory as they would in a model run.
//!
//! `--shapes`: the requantizing int8 GEMM at the corpus' shapes (EfficientNet-Lite0's pointwise
//! convs: `M` pixels × `K` input channels × `N` output channels; MiniLM's token GEMMs), in µs
//! and GMAC/s, for the small-`K` and small-`M` cases that `--size` does not show.

use crate::cli::BenchKernelsArgs;
use crate::gemm_timing::{measure, time};
use crate::text::{print, print_json};
use anyhow::Result;
use lowbit_data::Rng;
use lowbit_kernels::gemm::{sgemm_packed, PackedB, Trans};
use lowbit_kernels::qgemm::{qgemm, Output, PackedI8, Stage};
use lowbit_kernels::wgemm::{wgemm, Codes, PackedWeights, WeightSpec};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Serialize)]
struct WeightOnlyRow {
    m: usize,
    k: usize,
    n: usize,
    f32_us: f64,
    int8_us: f64,
    int4_us: f64,
}

/// The `--weight-only` table.
fn bench_weight_only(args: &BenchKernelsArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
    let threads = pool.current_num_threads();
    let mut rng = Rng::new(11);
    let mut rows = Vec::new();
    for (k, n) in [(384, 384), (384, 1536), (1536, 384), (1536, 1536)] {
        let copies = (64usize << 20).div_ceil(k * n * 4);
        let wf: Vec<f32> = rng.normals(k * n, 0.05);
        let f32s: Vec<PackedB> =
            (0..copies).map(|_| PackedB::pack(Trans::No, k, n, &wf, n)).collect();
        let i8s: Vec<i8> = (0..k * n).map(|_| rng.next_u64() as i8).collect();
        let i4s: Vec<i8> = (0..k * n).map(|_| (rng.next_u64() % 16) as i8 - 8).collect();
        let s8: Vec<f32> = (0..n).map(|j| 1e-3 + j as f32 * 1e-6).collect();
        let s4: Vec<f32> = (0..k.div_ceil(32) * n).map(|j| 1e-2 + j as f32 * 1e-7).collect();
        let spec8 = WeightSpec {
            k,
            n,
            trans: Trans::No,
            codes: Codes::I8(&i8s),
            block_size: 0,
            scales: &s8,
            zero_points: None,
        };
        let spec4 = WeightSpec { codes: Codes::I4(&i4s), block_size: 32, scales: &s4, ..spec8 };
        let p8: Vec<PackedWeights> = (0..copies)
            .map(|_| PackedWeights::pack(&spec8))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let p4: Vec<PackedWeights> = (0..copies)
            .map(|_| PackedWeights::pack(&spec4))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        for m in [1, 16] {
            let a: Vec<f32> = rng.normals(m * k, 1.0);
            let mut c = vec![0f32; m * n];
            let mut i = 0;
            let mut next = || {
                i = (i + 1) % copies;
                i
            };
            let tf =
                pool.install(|| time(|| sgemm_packed(m, &a, k, &f32s[next()], 0.0, &mut c, n)));
            let t8 = pool.install(|| time(|| wgemm(m, &a, k, &p8[next()], None, &mut c, n)));
            let t4 = pool.install(|| time(|| wgemm(m, &a, k, &p4[next()], None, &mut c, n)));
            rows.push(WeightOnlyRow {
                m,
                k,
                n,
                f32_us: tf * 1e6,
                int8_us: t8 * 1e6,
                int4_us: t4 * 1e6,
            });
        }
    }
    if args.json.on {
        return print_json(&rows);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "weight-only GEMM, {threads} thread(s), path {:?}, f32 weights streamed (> 64 MiB of copies)",
        lowbit_kernels::cpu::best().wgemm
    );
    let _ = writeln!(s, "   m     k     n   f32 µs   int8 µs (vs f32)   int4/b32 µs (vs f32)");
    for r in &rows {
        let _ = writeln!(
            s,
            "{:4} {:5} {:5} {:8.1} {:9.1} ({:4.2}x) {:12.1} ({:4.2}x)",
            r.m,
            r.k,
            r.n,
            r.f32_us,
            r.int8_us,
            r.f32_us / r.int8_us,
            r.int4_us,
            r.f32_us / r.int4_us
        );
    }
    print(&s)
}

#[derive(Serialize)]
struct ShapeRow {
    what: &'static str,
    m: usize,
    k: usize,
    n: usize,
    us: f64,
    gmacs: f64,
}

/// `M × K × N` with what it is: EfficientNet-Lite0's pointwise convs at 224² (expand convs
/// at small K over many pixels, project convs at large K over few) and MiniLM's GEMMs
/// (45 tokens, hidden 384, FFN 1536).
const SHAPES: [(&str, usize, usize, usize); 10] = [
    ("effnet block 1 expand", 112 * 112, 16, 96),
    ("effnet block 2 expand", 56 * 56, 24, 144),
    ("effnet block 4 expand", 28 * 28, 40, 240),
    ("effnet block 8 expand", 14 * 14, 80, 480),
    ("effnet block 15 project", 7 * 7, 1152, 320),
    ("effnet head", 7 * 7, 320, 1280),
    ("minilm qkv, 45 tokens", 45, 384, 384),
    ("minilm ffn up, 45 tokens", 45, 384, 1536),
    ("minilm ffn down, 45 tokens", 45, 1536, 384),
    ("minilm qkv, 16 tokens", 16, 384, 384),
];

/// The `--shapes` table.
fn bench_shapes(args: &BenchKernelsArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
    let threads = pool.current_num_threads();
    let mut rng = Rng::new(13);
    let mut rows = Vec::new();
    for (what, m, k, n) in SHAPES {
        let a: Vec<u8> = (0..m * k).map(|_| rng.next_u64() as u8).collect();
        let w: Vec<i8> = (0..k * n).map(|_| rng.next_u64() as i8).collect();
        let packed = PackedI8::pack(Trans::No, k, n, &w, n, &[0]);
        let mult: Vec<f32> = (0..n).map(|j| 1e-4 + j as f32 * 1e-7).collect();
        let bias: Vec<i32> = (0..n as i32).map(|j| j * 7 - 100).collect();
        let mut out = vec![0u8; m * n];
        let t = pool.install(|| {
            time(|| {
                let stage = Stage::Requantize {
                    bias: Some(&bias),
                    multiplier: &mult,
                    zero_point: 3,
                    qmin: 0,
                    qmax: 255,
                    out: &mut out,
                };
                qgemm(m, &a, k, 117, &packed, Output { stage, row_stride: n, col_stride: 1 });
            })
        });
        let gmacs = (m * k * n) as f64 / t / 1e9;
        rows.push(ShapeRow { what, m, k, n, us: t * 1e6, gmacs });
    }
    if args.json.on {
        return print_json(&rows);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "requantized int8 GEMM at corpus shapes, {threads} thread(s), path {:?}",
        lowbit_kernels::cpu::best().qgemm
    );
    let _ = writeln!(s, "{:28} {:>6} {:>5} {:>5} {:>9} {:>8}", "", "M", "K", "N", "µs", "GMAC/s");
    for r in &rows {
        let _ =
            writeln!(s, "{:28} {:6} {:5} {:5} {:9.1} {:8.1}", r.what, r.m, r.k, r.n, r.us, r.gmacs);
    }
    print(&s)
}

pub fn bench_kernels(args: BenchKernelsArgs) -> Result<()> {
    if args.weight_only {
        return bench_weight_only(&args);
    }
    if args.shapes {
        return bench_shapes(&args);
    }
    let r = measure(args.size, args.threads)?;
    if args.json.on {
        return print_json(&r);
    }
    let n = r.size;
    let mut s = String::new();
    let _ = writeln!(s, "GEMM {n}x{n}x{n}, {} thread(s), int8 path {}", r.threads, r.isa);
    if let (Some(p), Some(isa), Some(ins)) =
        (r.peak_gmacs_per_core, &r.peak_isa, &r.peak_instructions)
    {
        let _ =
            writeln!(s, "peak         {p:.1} GMAC/s per core ({isa}: register-only {ins} loop)");
    }
    let of = |v: Option<f64>| v.map_or(String::new(), |f| format!(" ({:.0} % of peak)", 100.0 * f));
    let _ = writeln!(s, "int8 7-bit   {:.1} GMAC/s{}", r.int8_7bit_gmacs, of(r.int8_7bit_of_peak));
    let _ = writeln!(
        s,
        "int8 8-bit   {:.1} GMAC/s (weights packed as {})",
        r.int8_full_range_gmacs, r.int8_full_range_form
    );
    let _ = writeln!(s, "f32          {:.1} GMAC/s", r.f32_gmacs);
    print(&s)
}
