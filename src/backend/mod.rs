//! Backend-wide helpers that every concept module uses and that belong to none of them: who is
//! calling and running sutra's own code with other rights ([`caller`]), the events the tenant
//! context announces ([`events`]), the one utility-statement hook
//! ([`utility`]), walking plan trees ([`plan`]), clocks and random bytes. Nothing here imports a concept module.

use std::ffi::c_void;
use std::time::{SystemTime, UNIX_EPOCH};

use pgrx::{pg_sys, PgSqlErrorCode};

pub mod caller;
pub mod events;
pub mod plan;
pub mod utility;

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Nanoseconds since the Unix epoch (the limiters' clock).
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Milliseconds, rounded up, of a wait in nanoseconds.
pub fn ms_ceil(ns: i64) -> i64 {
    (ns + 999_999) / 1_000_000
}

/// Random bytes from PostgreSQL's strong random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SAFETY: writes exactly N bytes into a live buffer.
    let ok = unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr() as *mut c_void, N) };
    if !ok {
        crate::error::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "could not generate random bytes");
    }
    buf
}

/// A per-backend map whose entries hold for one generation of a cache invalidation counter (such
/// as the tenant context's status generation): the first use under a newer generation empties it.
/// It holds at most [`GenerationMap::MAX_ENTRIES`] entries (it starts over past that), so a
/// backend that meets a great many tenants or keys does not grow with them.
pub struct GenerationMap<K, V> {
    generation: u64,
    entries: std::collections::HashMap<K, V>,
}

impl<K: std::hash::Hash + Eq, V: Clone> GenerationMap<K, V> {
    pub fn new() -> Self {
        GenerationMap { generation: 0, entries: std::collections::HashMap::new() }
    }

    /// The value of `key` as of `generation`, if known.
    pub fn get(&self, generation: u64, key: &K) -> Option<V> {
        (self.generation == generation).then(|| self.entries.get(key).cloned()).flatten()
    }

    pub const MAX_ENTRIES: usize = 10_000;

    /// Remembers `value` for `key` as of `generation`, forgetting older generations' entries
    /// (and all entries when the map is full).
    pub fn insert(&mut self, generation: u64, key: K, value: V) {
        if self.generation != generation || self.entries.len() >= Self::MAX_ENTRIES {
            self.generation = generation;
            self.entries.clear();
        }
        self.entries.insert(key, value);
    }
}
