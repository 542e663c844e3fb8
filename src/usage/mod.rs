//! Quotas, rate limits and metering: per-tenant state in shared memory, the executor hooks that
//! charge it, and the SQL-callable views of it. Limits and usage tables are SQL
//! (`sql/usage.sql`).

pub mod count;
pub mod flush;
pub mod hooks;
pub mod limits;
pub mod meter;
pub mod quota;
pub mod refusals;
pub mod report;
pub mod shmem;

/// Allocates the shared state and installs the hooks. Called from `_PG_init`.
pub fn init() {
    // Metering and limits follow the tenant context through the events it announces.
    crate::backend::events::subscribe(crate::backend::events::Subscriber {
        context_changed: hooks::attach,
        before_issue: hooks::reserve_connection,
        before_bulk_write: quota::ensure_tenant_known,
    });
    meter::init(hooks::detach);
    shmem::init(flush::on_startup);
    hooks::init();
    flush::init();
    quota::init();
}
