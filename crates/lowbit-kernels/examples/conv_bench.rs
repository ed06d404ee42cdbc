//! Times `conv` on small MNIST-style convolutions, one thread.
//!
//! `cargo run --release -p lowbit-kernels --example conv_bench`

use lowbit_kernels::conv::{conv, Activation, ConvParams};
use lowbit_kernels::window::Window;
use std::time::Instant;

#[allow(clippy::too_many_arguments)]
fn time(
    label: &str,
    c_in: usize,
    c_out: usize,
    group: usize,
    hw: usize,
    k: usize,
    s: usize,
    pad: usize,
) {
    let o = (hw + 2 * pad - k) / s + 1;
    let window =
        Window::new(&[hw, hw], &[k, k], &[s, s], &[1, 1], &[pad, pad], &[pad, pad], &[o, o])
            .unwrap();
    let p = ConvParams { batch: 1, c_in, c_out, group, window };
    let (nx, nw, ny) = p.sizes();
    let x: Vec<f32> = (0..nx).map(|i| (i % 17) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..nw).map(|i| (i % 5) as f32 * 0.1).collect();
    let b = vec![0.5f32; c_out];
    let mut y = vec![0f32; ny];
    let best = (0..10)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..200 {
                conv(&p, &x, &w, Some(&b), Activation::None, &mut y);
            }
            t.elapsed().as_secs_f64() / 200.0 * 1e6
        })
        .fold(f64::INFINITY, f64::min);
    let macs = (c_out * (c_in / group) * k * k * o * o) as f64;
    println!("{label:>32}: {best:8.2} us  ({:.1} GMAC/s)", macs / best / 1e3);
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        time("1->8 5x5 p2 28x28", 1, 8, 1, 28, 5, 1, 2);
        time("8->16 5x5 p2 14x14", 8, 16, 1, 14, 5, 1, 2);
        time("32->32 3x3 p1 14x14", 32, 32, 1, 14, 3, 1, 1);
        time("dw 96 3x3 p1 14x14", 96, 96, 96, 14, 3, 1, 1);
        time("dw 96 3x3 s2 p1 28x28", 96, 96, 96, 28, 3, 2, 1);
        time("pw 32->96 14x14", 32, 96, 1, 14, 1, 1, 0);
    });
}
