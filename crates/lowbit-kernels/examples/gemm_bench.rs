//! Times `sgemm` on the MiniLM encoder's matrix shapes, one thread.
//!
//! `cargo run --release -p lowbit-kernels --example gemm_bench`

use lowbit_kernels::gemm::{sgemm, sgemm_packed, PackedB, Trans};
use std::time::Instant;

fn time(label: &str, batch: usize, m: usize, n: usize, k: usize) {
    let a: Vec<f32> = (0..batch * m * k).map(|i| (i % 13) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..batch * k * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut c = vec![0f32; batch * m * n];
    let run = |c: &mut [f32]| {
        for i in 0..batch {
            sgemm(
                Trans::No,
                Trans::No,
                m,
                n,
                k,
                1.0,
                &a[i * m * k..],
                k,
                &b[i * k * n..],
                n,
                0.0,
                &mut c[i * m * n..],
                n,
            );
        }
    };
    for _ in 0..20 {
        run(&mut c);
    }
    let iters = 30;
    let min_time = |f: &dyn Fn(&mut [f32]), c: &mut [f32]| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    f(c);
                }
                t.elapsed().as_secs_f64() / iters as f64 * 1e6
            })
            .fold(f64::INFINITY, f64::min)
    };
    let us = min_time(&run, &mut c);
    let packed: Vec<PackedB> =
        (0..batch).map(|i| PackedB::pack(Trans::No, k, n, &b[i * k * n..], n)).collect();
    let runp = |c: &mut [f32]| {
        for i in 0..batch {
            sgemm_packed(m, &a[i * m * k..], k, &packed[i], 0.0, &mut c[i * m * n..], n);
        }
    };
    for _ in 0..20 {
        runp(&mut c);
    }
    let usp = min_time(&runp, &mut c);
    println!("{label:>28}: gemm crate {us:8.1} us, packed {usp:8.1} us");
}

fn main() {
    if std::env::args().any(|a| a == "sweep") {
        for seq in [10, 20] {
            encoder_sweep(seq);
        }
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        for seq in [10, 20, 128] {
            time(&format!("[{seq},384]x[384,384]"), 1, seq, 384, 384);
            time(&format!("[{seq},384]x[384,1536]"), 1, seq, 1536, 384);
            time(&format!("[{seq},1536]x[1536,384]"), 1, seq, 384, 1536);
            time(&format!("12x[{seq},32]x[32,{seq}]"), 12, seq, seq, 32);
            time(&format!("12x[{seq},{seq}]x[{seq},32]"), 12, seq, 32, seq);
        }
    });
}

/// The MiniLM-L3 encoder's weight GEMMs in order (3 layers, distinct weights, ~21 MB), `seq`
/// rows: weights stream from L3/DRAM as in the real model.
pub fn encoder_sweep(seq: usize) {
    let shapes: Vec<(usize, usize)> = (0..3)
        .flat_map(|_| [(384, 384), (384, 384), (384, 384), (384, 384), (384, 1536), (1536, 384)])
        .collect();
    let packed: Vec<PackedB> = shapes
        .iter()
        .map(|&(k, n)| {
            let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
            PackedB::pack(Trans::No, k, n, &b, n)
        })
        .collect();
    let a: Vec<f32> = (0..seq * 1536).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut c = vec![0f32; seq * 1536];
    let macs: usize = shapes.iter().map(|&(k, n)| seq * k * n).sum();
    let mut best = f64::INFINITY;
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        for p in &packed {
            sgemm_packed(seq, &a, p.k(), p, 0.0, &mut c, p.n());
        }
        let us = t.elapsed().as_secs_f64() * 1e6;
        best = best.min(us);
        times.push(us);
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "encoder sweep seq {seq}: min {best:7.1} us, median {med:7.1} us ({:.1} GMAC/s median)",
        macs as f64 / med / 1e3
    );
}
