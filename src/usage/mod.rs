//! Quotas, rate limits and metering: per-tenant state in shared memory, the executor hooks that
//! charge it, and the SQL-callable views of it. Limits and usage tables are SQL
//! (`sql/usage.sql`).

pub mod count;
pub mod flush;
pub mod hooks;
pub mod limits;
pub mod quota;
pub mod report;
pub mod shmem;

/// Allocates the shared state and installs the hooks. Called from `_PG_init`.
pub fn init() {
    shmem::init();
    hooks::init();
    flush::init();
    quota::init();
}
