//! The parts of sutra that need no PostgreSQL: the vector text and binary forms, distance kernels,
//! element-wise arithmetic, HNSW search and construction and the bytes of the index's items, the
//! signed tenant context, API keys and JWT, rate limits and tenant limits. Everything here is
//! plain Rust with plain unit tests; the extension crate turns the error values into PostgreSQL
//! errors.

pub mod api_key;
pub mod arith;
pub mod distance;
pub mod gcra;
pub mod hnsw;
pub mod hnsw_tuple;
pub mod jwt;
pub mod limits;
pub mod secrets;
pub mod tenant_context;
pub mod throttle;
pub mod vector_binary;
pub mod vector_text;

/// FNV-1a of `bytes`, the offset basis mixed with `seed`: places keys in sutra's fixed-size
/// shared tables.
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The largest number of dimensions a `sutra.vector` may have (the same bound as pgvector's).
pub const VECTOR_MAX_DIM: usize = 16000;
