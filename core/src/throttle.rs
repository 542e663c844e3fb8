//! Slowing down repeated failed authentications.
//!
//! Each key id and each client address has a count of recent failures; a failure more than
//! [`WINDOW_SECS`] after the previous one starts the count again. Past [`FREE_FAILURES`], every
//! further attempt waits, twice as long each time, up to [`MAX_DELAY_MS`].

/// Failures after which attempts start to wait.
pub const FREE_FAILURES: u32 = 5;
/// The first wait, in milliseconds.
pub const BASE_DELAY_MS: u64 = 100;
/// The longest wait, in milliseconds.
pub const MAX_DELAY_MS: u64 = 5_000;
/// Seconds without a failure after which the count starts again.
pub const WINDOW_SECS: i64 = 900;

/// How long an attempt waits after `failures` recent failures.
pub fn delay_ms(failures: u32) -> u64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = (failures - FREE_FAILURES).min(16);
    (BASE_DELAY_MS << doublings).min(MAX_DELAY_MS)
}

/// The failure count after one more failure at `now`, given the count and the time of the last.
pub fn next_count(count: u32, last: i64, now: i64) -> u32 {
    if now - last > WINDOW_SECS {
        1
    } else {
        count.saturating_add(1)
    }
}

/// The count that still applies at `now`.
pub fn current_count(count: u32, last: i64, now: i64) -> u32 {
    if now - last > WINDOW_SECS {
        0
    } else {
        count
    }
}

/// Where a key id or an address goes in the table of failure counts.
pub fn hash(kind: u8, bytes: &[u8]) -> u64 {
    crate::fnv1a(kind as u64, bytes) | 1 // 0 marks an empty slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_do_not_wait() {
        for n in 0..FREE_FAILURES {
            assert_eq!(delay_ms(n), 0);
        }
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        assert_eq!(delay_ms(FREE_FAILURES), BASE_DELAY_MS);
        assert_eq!(delay_ms(FREE_FAILURES + 1), 2 * BASE_DELAY_MS);
        assert_eq!(delay_ms(FREE_FAILURES + 2), 4 * BASE_DELAY_MS);
        assert_eq!(delay_ms(FREE_FAILURES + 10), MAX_DELAY_MS);
        assert_eq!(delay_ms(u32::MAX), MAX_DELAY_MS);
    }

    #[test]
    fn count_restarts_after_a_quiet_window() {
        assert_eq!(next_count(7, 1000, 1000 + WINDOW_SECS), 8);
        assert_eq!(next_count(7, 1000, 1001 + WINDOW_SECS), 1);
        assert_eq!(current_count(7, 1000, 1001 + WINDOW_SECS), 0);
        assert_eq!(current_count(7, 1000, 1000), 7);
        assert_eq!(next_count(u32::MAX, 0, 0), u32::MAX);
    }

    #[test]
    fn hashes_are_never_zero_and_depend_on_kind() {
        assert_ne!(hash(0, b""), 0);
        assert_ne!(hash(1, b"abc"), hash(2, b"abc"));
    }
}
