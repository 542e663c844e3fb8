//! Rate limiting with the generic cell rate algorithm (GCRA).
//!
//! The whole state of a limiter is one number, the theoretical arrival time (TAT), so it fits in
//! one atomic word in shared memory and a check is a compare-and-swap. With a rate of `r` per
//! second and a burst of `b`, a request at time `now` is allowed when `now >= TAT - (b - 1) / r`;
//! the TAT then moves to `max(TAT, now) + 1 / r`. A refused request is told how long to wait.

use std::sync::atomic::{AtomicI64, Ordering};

/// A rate and a burst, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between requests at the sustained rate.
    pub interval: i64,
    /// How far ahead of the schedule a burst may run.
    pub tolerance: i64,
}

impl Gcra {
    /// `rate` requests per second (> 0), bursts of up to `burst` at once (at least 1).
    pub fn new(rate: f64, burst: u32) -> Gcra {
        let interval = (1e9 / rate).max(1.0).min(i64::MAX as f64 / 4.0) as i64;
        let tolerance = interval.saturating_mul(burst.max(1) as i64 - 1);
        Gcra { interval, tolerance }
    }

    /// The decision for a request at `now` given the stored `tat`: `Ok(new tat)` to store, or
    /// `Err(nanoseconds to wait)`.
    pub fn check(&self, tat: i64, now: i64) -> Result<i64, i64> {
        let tat = self.effective_tat(tat, now);
        let allowed_at = tat.saturating_sub(self.tolerance);
        if now < allowed_at {
            Err(allowed_at - now)
        } else {
            Ok(tat.saturating_add(self.interval))
        }
    }
}

impl Gcra {
    /// The stored `tat` as these parameters read it at `now`: never in the past, and a TAT further
    /// ahead than these parameters can ever produce (left by stricter ones) counts as a full
    /// burst's worth used, so a raised limit applies at once.
    fn effective_tat(&self, tat: i64, now: i64) -> i64 {
        let tat = tat.max(now);
        if tat > now.saturating_add(self.tolerance).saturating_add(self.interval) {
            now.saturating_add(self.tolerance)
        } else {
            tat
        }
    }

    /// How many requests would pass one after another at `now`, given the stored `tat`: what
    /// is left of the burst (`sutra.rate_limit_status()` reports it).
    pub fn available(&self, tat: i64, now: i64) -> i64 {
        let tat = self.effective_tat(tat, now);
        let slack = now - (tat - self.tolerance);
        if slack < 0 {
            0
        } else {
            (slack / self.interval + 1).min(self.tolerance / self.interval + 1)
        }
    }

    /// Admits one request against a theoretical arrival time shared between threads or processes
    /// (a limiter in shared memory): decides with [`Gcra::check`] and stores the new time with a
    /// compare-and-swap, deciding again when another request took the limiter meanwhile. `Err`
    /// carries the nanoseconds to wait; a refusal stores nothing.
    pub fn take(&self, tat: &AtomicI64, now: i64) -> Result<(), i64> {
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let next = self.check(current, now)?;
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    /// Runs requests at the given times through a limiter, returning which were allowed.
    fn run(g: Gcra, times: &[i64]) -> Vec<bool> {
        let mut tat = 0;
        times
            .iter()
            .map(|&t| match g.check(tat, t) {
                Ok(next) => {
                    tat = next;
                    true
                }
                Err(_) => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let g = Gcra::new(10.0, 5);
        // Six at once: the burst of five passes, the sixth waits.
        assert_eq!(run(g, &[S; 6]), [true, true, true, true, true, false]);
        // Then one per 100 ms.
        let mut times = vec![S; 5];
        times.extend([S + S / 10, S + S / 10, S + 2 * S / 10]);
        assert_eq!(run(g, &times), [true, true, true, true, true, true, false, true]);
    }

    #[test]
    fn the_refusal_says_how_long_to_wait() {
        let g = Gcra::new(2.0, 1);
        let tat = g.check(0, S).unwrap();
        assert_eq!(g.check(tat, S), Err(S / 2));
        assert_eq!(g.check(tat, S + S / 4), Err(S / 4));
        assert!(g.check(tat, S + S / 2).is_ok());
    }

    #[test]
    fn a_long_pause_does_not_bank_more_than_the_burst() {
        let g = Gcra::new(1.0, 3);
        let times = [0, 100 * S, 100 * S, 100 * S, 100 * S];
        assert_eq!(run(g, &times), [true, true, true, true, false]);
    }

    #[test]
    fn over_many_seconds_the_rate_holds() {
        let g = Gcra::new(50.0, 10);
        // A request every millisecond for 10 s: 50/s plus the burst get through.
        let times: Vec<i64> = (0..10_000).map(|i| S + i * S / 1000).collect();
        let allowed = run(g, &times).iter().filter(|a| **a).count();
        assert!((500..=511).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_raised_limit_applies_at_once() {
        let strict = Gcra::new(0.01, 1);
        let tat = strict.check(0, S).unwrap(); // 100 s ahead
        assert!(strict.check(tat, S + 1).is_err());
        let relaxed = Gcra::new(100.0, 10);
        assert!(relaxed.check(tat, S + 1).is_ok());
    }

    #[test]
    fn extreme_settings_do_not_overflow() {
        let g = Gcra::new(1e-9, u32::MAX);
        assert!(g.check(0, 0).is_ok());
        let g = Gcra::new(1e12, 1);
        assert!(g.check(i64::MAX - 1, i64::MAX).is_ok() || g.check(i64::MAX - 1, i64::MAX).is_err());
    }

    #[test]
    fn available_is_how_many_would_pass_now() {
        for (rate, burst) in [(10.0, 5), (1000.0, 1), (0.5, 3), (1e9, 100)] {
            let g = Gcra::new(rate, burst);
            let start = 1_000_000_000_000i64;
            // At several moments of a run of requests, available must equal the number of
            // requests that would pass one after another right then.
            let mut tat = 0i64;
            for step in 0..40i64 {
                let now = start + step * g.interval / 3;
                let mut t = tat;
                let mut passing = 0;
                while let Ok(next) = g.check(t, now) {
                    t = next;
                    passing += 1;
                    assert!(passing <= burst as i64, "more than the burst would pass");
                }
                assert_eq!(g.available(tat, now), passing, "rate {rate} burst {burst} step {step}");
                if let Ok(next) = g.check(tat, now) {
                    tat = next;
                }
            }
        }
        // A TAT left by a stricter limit far ahead counts as the burst used up: one request passes
        // now (the schedule's), as check says, not none and not the whole burst.
        let g = Gcra::new(10.0, 5);
        assert_eq!(g.available(i64::MAX / 2, 0), 1);
        assert!(g.check(i64::MAX / 2, 0).is_ok());
    }

    #[test]
    fn take_admits_the_burst_then_refuses_without_storing() {
        let g = Gcra::new(1.0, 3);
        let tat = AtomicI64::new(0);
        let now = 1_000_000_000_000;
        for _ in 0..3 {
            assert!(g.take(&tat, now).is_ok());
        }
        let before = tat.load(Ordering::Relaxed);
        assert!(g.take(&tat, now).is_err());
        assert_eq!(tat.load(Ordering::Relaxed), before);
    }

    #[test]
    fn take_never_admits_more_than_the_burst_across_threads() {
        let g = std::sync::Arc::new(Gcra::new(1.0, 50));
        let tat = std::sync::Arc::new(AtomicI64::new(0));
        let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let now = 1_000_000_000_000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (g, tat, admitted) = (g.clone(), tat.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if g.take(&tat, now).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 50);
    }
}
