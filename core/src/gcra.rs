//! Rate limiting with the generic cell rate algorithm (GCRA).
//!
//! The whole state of a limiter is one number, the theoretical arrival time (TAT), so it fits in
//! one atomic word in shared memory and a check is a compare-and-swap. With a rate of `r` per
//! second and a burst of `b`, a request at time `now` is allowed when `now >= TAT - (b - 1) / r`;
//! the TAT then moves to `max(TAT, now) + 1 / r`. A refused request is told how long to wait.

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
        // A TAT further ahead than these parameters can ever produce was left by stricter ones:
        // start from a full burst's worth used, so a raised limit applies at once.
        let mut tat = tat.max(now);
        if tat > now.saturating_add(self.tolerance).saturating_add(self.interval) {
            tat = now.saturating_add(self.tolerance);
        }
        let allowed_at = tat.saturating_sub(self.tolerance);
        if now < allowed_at {
            Err(allowed_at - now)
        } else {
            Ok(tat.saturating_add(self.interval))
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
}
