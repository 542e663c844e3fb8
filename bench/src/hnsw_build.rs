//! The in-memory HNSW build of `sutra_hnsw` (what CREATE INDEX runs before it writes pages),
//! on clustered vectors, with recall@10 against exact search.
//! Run: cargo run --release -p sutra-bench --bin hnsw_build [rows] [dims] [threads]

use std::time::Instant;
use sutra_core::hnsw::{exact_nearest, MemGraph, Metric, Rng, Space, MAX_LEVEL};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(100_000);
    let dims = args.get(1).copied().unwrap_or(128);
    let mut rng = Rng::new(42);
    let mut gauss = move || {
        let (u, v) = (rng.next_f64(), rng.next_f64());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    };
    let centers: Vec<Vec<f32>> = (0..100).map(|_| (0..dims).map(|_| gauss()).collect()).collect();
    let mut point = |i: usize| -> Vec<f32> {
        let c = &centers[i % centers.len()];
        let v: Vec<f32> = c.iter().map(|&x| x + 0.5 * gauss()).collect();
        Metric::Cosine.prepare(&v).unwrap()
    };
    let data: Vec<Vec<f32>> = (0..n).map(&mut point).collect();
    let queries: Vec<Vec<f32>> = (0..200).map(|i| point(i * 7 + 3)).collect();
    let space = Space::new(Metric::Cosine);
    let threads = args.get(2).copied().unwrap_or(1);
    let mut g = MemGraph::new(space, dims, 16, 64, MAX_LEVEL);
    let mut lr = Rng::new(1);
    for v in &data {
        g.push(v, &mut lr);
    }
    let start = Instant::now();
    g.build(threads, || false);
    let built = start.elapsed();
    let fixed = g.connect_unreachable();
    let connected = start.elapsed();
    for ef in [40, 100] {
        let mut hits = 0;
        let t = Instant::now();
        for q in &queries {
            let truth: Vec<u32> = exact_nearest(&space, q, &data, 10).iter().map(|s| s.id).collect();
            hits += g.search(q, ef).iter().take(10).filter(|s| truth.contains(&s.id)).count();
        }
        let _ = t;
        println!("ef_search {ef}: recall@10 {:.3}", hits as f64 / (queries.len() * 10) as f64);
    }
    println!(
        "{n} x {dims}, m 16, ef_construction 64, {threads} threads: link {:.2} s, connect {:.2} s ({fixed} linked)",
        built.as_secs_f64(),
        (connected - built).as_secs_f64()
    );
}
