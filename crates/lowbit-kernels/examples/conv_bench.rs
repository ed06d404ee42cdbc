//! Times `conv_packed` (weights prepared once) on MNIST- and EfficientNet-Lite0-style
//! convolutions, one thread.
//!
//! `cargo run --release -p lowbit-kernels --example conv_bench [FILTER [REPEATS]]`: only the
//! shapes whose label contains FILTER, each run REPEATS times per timing (for profilers).
//! Where Linux reports it, the time is the thread's CPU time (`/proc/thread-self/schedstat`),
//! which other processes sharing the cores do not inflate as much as wall time.

use lowbit_kernels::conv::{conv_packed, Activation, ConvParams, ConvWeights};
use lowbit_kernels::window::Window;
use std::time::Instant;

/// Nanoseconds this thread has run on a CPU, when Linux reports it.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// One convolution: channels, groups, square size, kernel, stride and begin/end pads.
struct Shape {
    label: &'static str,
    c_in: usize,
    c_out: usize,
    group: usize,
    hw: usize,
    k: usize,
    s: usize,
    pads: (usize, usize),
}

const fn shape(
    label: &'static str,
    c: [usize; 3],
    hw: usize,
    k: usize,
    s: usize,
    pads: (usize, usize),
) -> Shape {
    Shape { label, c_in: c[0], c_out: c[1], group: c[2], hw, k, s, pads }
}

const SHAPES: [Shape; 14] = [
    shape("1->8 5x5 p2 28x28", [1, 8, 1], 28, 5, 1, (2, 2)),
    shape("8->16 5x5 p2 14x14", [8, 16, 1], 14, 5, 1, (2, 2)),
    shape("32->32 3x3 p1 14x14", [32, 32, 1], 14, 3, 1, (1, 1)),
    shape("pw 32->96 14x14", [32, 96, 1], 14, 1, 1, (0, 0)),
    shape("effnet stem 3->32 3x3 s2 224", [3, 32, 1], 224, 3, 2, (0, 1)),
    shape("effnet dw 32 3x3 112", [32, 32, 32], 112, 3, 1, (1, 1)),
    shape("effnet dw 96 3x3 s2 112", [96, 96, 96], 112, 3, 2, (0, 1)),
    shape("effnet dw 144 5x5 s2 56", [144, 144, 144], 56, 5, 2, (1, 2)),
    shape("effnet dw 672 5x5 14", [672, 672, 672], 14, 5, 1, (2, 2)),
    shape("effnet dw 1152 5x5 7", [1152, 1152, 1152], 7, 5, 1, (2, 2)),
    shape("effnet pw 16->96 112", [16, 96, 1], 112, 1, 1, (0, 0)),
    shape("effnet pw 144->24 56", [144, 24, 1], 56, 1, 1, (0, 0)),
    shape("effnet pw 672->112 14", [672, 112, 1], 14, 1, 1, (0, 0)),
    shape("effnet pw 1152->320 7", [1152, 320, 1], 7, 1, 1, (0, 0)),
];

fn time(sh: &Shape, repeats: usize) {
    let (hw, k, s, (pb, pe)) = (sh.hw, sh.k, sh.s, sh.pads);
    let o = (hw + pb + pe - k) / s + 1;
    let window =
        Window::new(&[hw, hw], &[k, k], &[s, s], &[1, 1], &[pb, pb], &[pe, pe], &[o, o]).unwrap();
    let p = ConvParams { batch: 1, c_in: sh.c_in, c_out: sh.c_out, group: sh.group, window };
    let (nx, nw, ny) = p.sizes();
    let x: Vec<f32> = (0..nx).map(|i| (i % 17) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..nw).map(|i| (i % 5) as f32 * 0.1).collect();
    let kdim = sh.c_in / sh.group * k * k;
    let weights = ConvWeights::new(sh.c_out, sh.group, kdim, p.is_depthwise(), &w);
    let b = vec![0.5f32; sh.c_out];
    let mut y = vec![0f32; ny];
    let act = Activation::Clip(0.0, 6.0);
    let best = (0..10)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_ns());
            for _ in 0..repeats {
                conv_packed(&p, &x, &weights, Some(&b), act, &mut y);
            }
            let ns = match (c, cpu_ns()) {
                (Some(c0), Some(c1)) => (c1 - c0) as f64,
                _ => t.elapsed().as_secs_f64() * 1e9,
            };
            ns / repeats as f64 / 1e3
        })
        .fold(f64::INFINITY, f64::min);
    let macs = (sh.c_out * kdim * o * o) as f64;
    println!("{:>32}: {best:9.2} us  ({:.1} GMAC/s)", sh.label, macs / best / 1e3);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let filter = args.get(1).map_or("", String::as_str);
    let repeats = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(20);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        for sh in SHAPES.iter().filter(|s| s.label.contains(filter)) {
            time(sh, repeats);
        }
    });
}
