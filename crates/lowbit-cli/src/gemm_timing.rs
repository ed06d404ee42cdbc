//! The int8 and f32 GEMM kernels timed on an `N × N × N` product (weights packed once, as at
//! model load), with this core's peak for the int8 path's instructions
//! ([`lowbit_kernels::qgemm::peak_probe`]): what `bench-kernels` prints and what `doctor`
//! reads its int8 speed-up from.

use anyhow::{bail, Result};
use lowbit_data::Rng;
use lowbit_eval::metrics::median;
use lowbit_kernels::gemm::{sgemm_packed, PackedB, Trans};
use lowbit_kernels::qgemm::{peak_probe, qgemm, Output, PackedI8, Stage};
use serde::Serialize;
use std::time::Instant;

#[derive(Serialize)]
pub struct KernelReport {
    pub size: usize,
    pub threads: usize,
    pub isa: String,
    /// u8×i8 multiply-adds per second one core can issue with the fast path's instructions.
    pub peak_gmacs_per_core: Option<f64>,
    /// The path whose instructions the peak loop ran (the int8 path, `isa`).
    pub peak_isa: Option<String>,
    pub peak_instructions: Option<String>,
    pub int8_7bit_gmacs: f64,
    pub int8_7bit_of_peak: Option<f64>,
    pub int8_full_range_gmacs: f64,
    pub int8_full_range_form: String,
    pub f32_gmacs: f64,
}

/// Seconds of `f`, sorted, over enough repetitions to fill ~0.3 s (at least 5).
pub fn timings(mut f: impl FnMut()) -> Vec<f64> {
    f();
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 5 || (start.elapsed().as_secs_f64() < 0.3 && t.len() < 1000) {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    t
}

/// Median seconds of `f` (see [`timings`]).
pub fn time(f: impl FnMut()) -> f64 {
    median(&timings(f))
}

/// Times the products and the peak loop.
pub fn measure(size: usize, threads: usize) -> Result<KernelReport> {
    let n = size;
    if n == 0 || n > 8192 {
        bail!("--size must be 1..=8192, got {n}");
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let threads = pool.current_num_threads();
    let mut rng = Rng::new(7);
    let a: Vec<u8> = (0..n * n).map(|_| rng.next_u64() as u8).collect();
    let w7: Vec<i8> = (0..n * n).map(|_| ((rng.next_u64() % 129) as i32 - 64) as i8).collect();
    let w8: Vec<i8> = (0..n * n).map(|_| rng.next_u64() as i8).collect();
    let af: Vec<f32> = rng.normals(n * n, 1.0);
    let wf: Vec<f32> = rng.normals(n * n, 1.0);
    let macs = (n * n * n) as f64;
    let (p7, p8) = (
        PackedI8::pack(Trans::No, n, n, &w7, n, &[0]),
        PackedI8::pack(Trans::No, n, n, &w8, n, &[0]),
    );
    let pf = PackedB::pack(Trans::No, n, n, &wf, n);
    let mut out = vec![0u8; n * n];
    let mult = [1e-4f32];
    let mut run8 = |p: &PackedI8| {
        pool.install(|| {
            time(|| {
                let stage = Stage::Requantize {
                    bias: None,
                    multiplier: &mult,
                    zero_point: 128,
                    qmin: 0,
                    qmax: 255,
                    out: &mut out,
                };
                qgemm(n, &a, n, 3, p, Output { stage, row_stride: n, col_stride: 1 });
            })
        })
    };
    let t7 = run8(&p7);
    let t8 = run8(&p8);
    let mut c = vec![0f32; n * n];
    let tf = pool.install(|| time(|| sgemm_packed(n, &af, n, &pf, 0.0, &mut c, n)));
    // Short runs, and the fastest of them: a peak is what the core does undisturbed.
    let probe_iters = 200_000u64;
    let peak = peak_probe(probe_iters).map(|p| {
        let s = timings(|| {
            peak_probe(probe_iters);
        })[0];
        (p, p.macs as f64 / s / 1e9)
    });
    let gmacs = peak.map(|p| p.1);
    let g = |t: f64| macs / t / 1e9;
    Ok(KernelReport {
        size: n,
        threads,
        isa: format!("{:?}", p7.isa()),
        peak_gmacs_per_core: gmacs,
        peak_isa: peak.map(|p| format!("{:?}", p.0.isa)),
        peak_instructions: peak.map(|p| p.0.instructions.to_string()),
        int8_7bit_gmacs: g(t7),
        int8_7bit_of_peak: gmacs.map(|p| g(t7) / (p * threads as f64)),
        int8_full_range_gmacs: g(t8),
        int8_full_range_form: format!("{:?}", p8.form()),
        f32_gmacs: g(tf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_measured_on_the_int8_path_the_gemm_ran() {
        let r = measure(16, 1).unwrap();
        match &r.peak_isa {
            Some(isa) => assert_eq!(isa, &r.isa),
            None => assert_eq!(r.isa, "Generic"),
        }
        assert!(r.peak_gmacs_per_core.is_some() == r.peak_instructions.is_some());
    }
}
