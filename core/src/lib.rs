//! The parts of sutra that need no PostgreSQL: the vector text format, distance kernels,
//! element-wise arithmetic, the signed tenant context, API keys and JWT. Everything here is plain Rust with plain unit tests; the extension
//! crate turns the error values into PostgreSQL errors.

pub mod api_key;
pub mod arith;
pub mod distance;
pub mod gcra;
pub mod jwt;
pub mod tenant_context;
pub mod throttle;
pub mod vector_text;

/// The largest number of dimensions a `sutra.vector` may have (the same bound as pgvector's).
pub const VECTOR_MAX_DIM: usize = 16000;
