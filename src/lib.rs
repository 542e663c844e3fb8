//! sutra: in-database multi-tenancy for PostgreSQL.
//!
//! This crate is the PostgreSQL side: loading, configuration, and the SQL-callable functions.
//! The algorithms themselves live in the Postgres-free `sutra-core` crate.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

::pgrx::pg_module_magic!(name, version);

mod backend;
mod error;
mod fmgr;
mod guc;
mod hnsw;
mod tenancy;
mod usage;
mod vector;

extension_sql_file!("../sql/vector.sql", name = "vector");
extension_sql_file!(
    "../sql/hnsw.sql",
    name = "hnsw",
    requires = [
        "vector",
        handler::hnsw_handler,
        handler::hnsw_l2_support,
        handler::hnsw_ip_support,
        handler::hnsw_cosine_support,
        check::hnsw_check,
    ]
);
// Tenancy, by topic, in install order: each file after the one it builds on.
extension_sql_file!(
    "../sql/tenancy/registry.sql",
    name = "tenancy_registry",
    requires = [
        "vector",
        context::current_tenant,
        context::current_tenant_with_scope,
        context::context_tenant,
        context::context_user,
        context::invalidate_tenant_cache,
        caller::caller_name,
        caller::caller_is_service,
        purge::purge_rows,
    ]
);
extension_sql_file!("../sql/tenancy/audit.sql", name = "tenancy_audit", requires = ["tenancy_registry"]);
extension_sql_file!(
    "../sql/tenancy/keys.sql",
    name = "tenancy_keys",
    requires =
        ["tenancy_audit", keys::mint_api_key, keys::key_id_of, keys::random_bytes_sql, failures::reset_auth_failures,]
);
extension_sql_file!("../sql/tenancy/tables.sql", name = "tenancy_tables", requires = ["tenancy_keys"]);
extension_sql_file!("../sql/tenancy/backups.sql", name = "tenancy_backups", requires = ["tenancy_tables"]);
extension_sql_file!(
    "../sql/tenancy/secrets.sql",
    name = "tenancy_secrets",
    requires = [
        "tenancy_backups",
        secrets::_seal_secret,
        secrets::_open_secret,
        secrets::_secrets_key_id,
        secrets::_hide_secret_value,
        secrets::_secret_read,
    ]
);
extension_sql_file!(
    "../sql/tenancy/settings.sql",
    name = "tenancy_settings",
    requires = ["tenancy_secrets", settings::setting, settings::feature_enabled]
);
extension_sql_file!("../sql/tenancy/members.sql", name = "tenancy_members", requires = ["tenancy_settings"]);
extension_sql_file!("../sql/tenancy/citus.sql", name = "tenancy_citus", requires = ["tenancy_members"]);
// Last: limits, usage and the reports, over everything above.
extension_sql_file!("../sql/usage.sql", name = "usage", finalize);

/// Library entry point. sutra keeps state in shared memory and hooks the executor, which only
/// works when the postmaster loads it at start, so any other way of loading it is refused.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain global of the backend, written only by the postmaster while it loads the
    // preload libraries; reading it here, single-threaded, is sound.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !preloading {
        error::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "sutra must be loaded via shared_preload_libraries",
            "Add shared_preload_libraries = 'sutra' to postgresql.conf and restart the server.",
        );
    }
    tenancy::init();
    usage::init();
    hnsw::init();
    // Last: reserving the prefix removes any sutra.* placeholder not defined above.
    guc::init(&[tenancy::context::define_parameters]);
    tenancy::context::check_cluster_settings();
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Settings for the cluster `cargo pgrx test` starts.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'sutra'"]
    }
}
