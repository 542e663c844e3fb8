//! sutra's configuration parameters.
//!
//! Every parameter lives under the `sutra.` prefix, which [`init`] reserves: after it, PostgreSQL
//! refuses to create a placeholder for any `sutra.*` name sutra did not define, so no value can be
//! planted under a sutra name by SET, `set_config`, PGOPTIONS or `ALTER ROLE ... SET`, and any
//! placeholder set before the library loaded is removed with a warning.

use pgrx::pg_sys;

/// Defines sutra's parameters and reserves the prefix. Called once from `_PG_init`.
pub fn init() {
    // SAFETY: called from _PG_init in the postmaster, where GUC definition is allowed; the name
    // is a static NUL-terminated string that outlives the call (PostgreSQL copies it).
    unsafe { pg_sys::MarkGUCPrefixReserved(c"sutra".as_ptr()) };
}
