//! The cost of one rate-limit check, the executor hook's own code (`Gcra::take`: a GCRA decision
//! and a compare-and-swap of the limiter's word), against a baseline of the same loop doing only an
//! atomic load and add (what any shared counter costs). One thread, then two contending.
//! Run: cargo run --release -p sutra-bench --bin ratelimit

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sutra_core::gcra::Gcra;

const N: u64 = 20_000_000;

fn ns_per(threads: usize, f: impl Fn(u64) + Send + Sync + 'static) -> f64 {
    let f = Arc::new(f);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    f(i)
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

fn main() {
    // A limit that always admits (the common case) at a nanosecond clock that moves on.
    let g = Gcra::new(1e9, 1_000_000);
    for threads in [1, 2] {
        let tat = Arc::new(AtomicI64::new(0));
        let limiter = {
            let tat = tat.clone();
            ns_per(threads, move |i| {
                black_box(g.take(&tat, black_box(i as i64 * 10)).is_ok());
            })
        };
        let counter = Arc::new(AtomicI64::new(0));
        let baseline = {
            let c = counter.clone();
            ns_per(threads, move |i| {
                black_box(c.load(Ordering::Relaxed));
                c.fetch_add(black_box(i as i64 & 1), Ordering::AcqRel);
            })
        };
        println!(
            "rate-limit check, {threads} thread(s): {limiter:.1} ns per check vs {baseline:.1} ns for a shared counter update, ratio {:.2} (bar < 1000 ns)",
            limiter / baseline
        );
    }
    println!("reproduce: cargo run --release -p sutra-bench --bin ratelimit");
}
