//! Distance-kernel throughput: every SIMD kernel set this CPU runs against the scalar loops, on
//! the same vectors in the same run.
//!
//! Run: `cargo run --release -p sutra-bench --bin kernels`.
//! Prints, per dimension and distance, million distance computations per second for each kernel
//! set and its speed-up over scalar.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sutra_core::distance::{available, Kernels, SCALAR};

/// A deterministic pseudo-random stream, so every run measures the same data.
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

type Reduction = fn(&Kernels, &[f32], &[f32]) -> f32;

const REDUCTIONS: [(&str, Reduction); 3] = [
    ("l2", |k, a, b| (k.l2_squared)(a, b)),
    ("dot", |k, a, b| (k.dot)(a, b)),
    ("cosine", |k, a, b| {
        let (d, x, y) = (k.cosine_parts)(a, b);
        d + x + y
    }),
];

/// Million distance computations per second of `f` over `vectors` against `query`: the best of
/// five rounds of about `round` each.
fn throughput(k: &Kernels, f: Reduction, query: &[f32], vectors: &[Vec<f32>], round: Duration) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        let mut acc = 0.0f32;
        while start.elapsed() < round {
            for v in vectors {
                acc += f(k, black_box(query), black_box(v));
            }
            n += vectors.len() as u64;
        }
        black_box(acc);
        best = best.max(n as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    best
}

fn main() {
    let round =
        Duration::from_millis(std::env::var("SUTRA_BENCH_ROUND_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(200));
    let sets = available();
    println!("distance kernels, million distances per second (best of 5 rounds of {round:?})");
    println!("kernel sets on this CPU: {}", sets.iter().map(|k| k.name).collect::<Vec<_>>().join(", "));
    println!("{:>6} {:>7} {:>10} {:>10} {:>8}", "dims", "metric", "kernel", "Mdist/s", "vs scalar");
    let mut rng = Lcg(42);
    for dims in [128usize, 384, 768, 1536] {
        // 1,000 vectors of 1536 dims are 6 MB: the data set is larger than L2, as in a real scan.
        let vectors: Vec<Vec<f32>> = (0..1000).map(|_| (0..dims).map(|_| rng.next_f32()).collect()).collect();
        let query: Vec<f32> = (0..dims).map(|_| rng.next_f32()).collect();
        for (metric, f) in REDUCTIONS {
            let base = throughput(&SCALAR, f, &query, &vectors, round);
            println!("{dims:>6} {metric:>7} {:>10} {base:>10.2} {:>8.2}x", "scalar", 1.0);
            for k in sets.iter().filter(|k| k.name != SCALAR.name) {
                let t = throughput(k, f, &query, &vectors, round);
                println!("{dims:>6} {metric:>7} {:>10} {t:>10.2} {:>8.2}x", k.name, t / base);
            }
        }
    }
    println!("reproduce: cargo run --release -p sutra-bench --bin kernels");
}
