//! sutra's configuration parameters: every one of them is defined here, in one list.
//!
//! | parameter | type, default | who sets it | what it does |
//! |---|---|---|---|
//! | `sutra.tenant_id` | text, empty | sutra's authenticating functions | the session's tenant context, signed ([`crate::tenancy::context`]) |
//! | `sutra.context_secret` | text, empty | superusers, configuration file | the secret contexts are signed with; empty: a random one per server start |
//! | `sutra.context_lifetime` | seconds, 1 day | superusers | how long an issued context stays valid |
//! | `sutra.jwt_secret` | text, empty | superusers, configuration file | the HS256 secret of `sutra.authenticate_jwt`; empty: JWT off |
//! | `sutra.jwt_membership` | `required` | superusers, configuration file | `required`: a token names its user in `sub`, who must be a member of the token's tenant, with scopes at most the role's; `trusted`: the issuer vouches for membership and the token's scopes apply as they are ([`crate::tenancy::auth`]) |
//! | `sutra.secrets_key` | text, empty | configuration file (superusers only can read it) | the master key of tenant secrets, 64 hex digits ([`crate::tenancy::secrets`]); empty: secrets are off |
//! | `sutra.secrets_key_previous` | text, empty | configuration file (superusers only can read it) | the key before it, while `sutra.rotate_secrets_key()` seals secrets again |
//! | `sutra.metering` | on | superusers | whether tenant statements are metered |
//! | `sutra.tenant_pruning` | on | anyone | whether a tenant table partitioned by its tenant column is planned for the session's tenant only (plan-time partition pruning, [`crate::tenancy::planner`]); off: every partition is planned and all but one skipped when the query runs. Either way a session reads its own tenant's rows only |
//! | `sutra.max_tenants` | 32,768 | configuration file, at server start | tenants (per database) limited and metered at once in shared memory: 288 bytes each (about 9 MB at the default); an idle tenant's slot is reused for another, and when every slot belongs to a tenant active right now, statements of further tenants fail with 53400 ([`crate::usage::shmem`]) |
//! | `sutra.max_tenant_table_counts` | 131,072 | configuration file, at server start | (tenant, tenant table) quota counts held at once: 72 bytes each (about 9 MB at the default); reused like tenant slots |
//! | `sutra.usage_flush_interval` | seconds, 10 | configuration file | how often metering is written to `sutra.usage_rollups` |
//! | `sutra.usage_minutes_kept` | seconds, 1 day | superusers (the worker: configuration file) | minute rows of `sutra.usage_rollups` older than this become hour rows (`sutra.compact_usage`, run by the metering worker hourly) |
//! | `sutra.usage_hours_kept` | seconds, 31 days | superusers (the worker: configuration file) | hour rows older than this become day rows |
//! | `sutra.usage_retention` | seconds, 0 | superusers (the worker: configuration file) | metered usage older than this is deleted; 0 keeps it for good |
//! | `sutra.audit_retention` | seconds, 0 | superusers (the worker: configuration file) | rows of `sutra.audit_log` older than this are deleted (`sutra.trim_audit_log`, run by the metering worker hourly); 0 keeps them for good |
//! | `sutra.refusal_audit_interval` | seconds, 60 | configuration file | the first refusal (rate, concurrency, connections, quota, usage cap) per tenant and limit in each interval is audited (`limit.refused`) and notified on channel `sutra_limits`; every refusal is counted ([`crate::usage::refusals`]) |
//! | `sutra.usage_event_max_age` | seconds, 35 days | superusers | how far back a tenant session may date a usage event |
//! | `sutra.usage_event_max_future` | seconds, 1 day | superusers | how far ahead any caller may date a usage event |
//! | `sutra.hnsw_ef_search` | 40 | anyone | candidate list size of `sutra_hnsw` scans |
//! | `sutra.hnsw_max_scan_tuples` | 20,000 | anyone | most elements a `sutra_hnsw` scan reads while filters discard rows |
//!
//! The prefix `sutra.` is reserved last: after that, PostgreSQL refuses to create a placeholder for
//! any `sutra.*` name sutra did not define, so no value can be planted under a sutra name by SET,
//! `set_config`, PGOPTIONS or `ALTER ROLE ... SET`, and any placeholder set before the library
//! loaded is removed with a warning.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_sys, PostgresGucEnum};

/// Who decides that a token's user belongs to its tenant.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum JwtMembership {
    /// sutra, from `sutra.tenant_members`.
    #[name = c"required"]
    Required,
    /// The token's issuer.
    #[name = c"trusted"]
    Trusted,
}

pub static CONTEXT_LIFETIME: GucSetting<i32> = GucSetting::<i32>::new(86400);
pub static JWT_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static JWT_MEMBERSHIP: GucSetting<JwtMembership> = GucSetting::<JwtMembership>::new(JwtMembership::Required);
pub static SECRETS_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static SECRETS_KEY_PREVIOUS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static METERING: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static TENANT_PRUNING: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MAX_TENANTS: GucSetting<i32> = GucSetting::<i32>::new(32_768);
pub static MAX_TENANT_TABLE_COUNTS: GucSetting<i32> = GucSetting::<i32>::new(131_072);
pub static USAGE_FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static USAGE_MINUTES_KEPT: GucSetting<i32> = GucSetting::<i32>::new(86400);
pub static USAGE_HOURS_KEPT: GucSetting<i32> = GucSetting::<i32>::new(31 * 86400);
pub static USAGE_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static AUDIT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static REFUSAL_AUDIT_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static USAGE_EVENT_MAX_AGE: GucSetting<i32> = GucSetting::<i32>::new(35 * 86400);
pub static USAGE_EVENT_MAX_FUTURE: GucSetting<i32> = GucSetting::<i32>::new(86400);
pub static HNSW_EF_SEARCH: GucSetting<i32> = GucSetting::<i32>::new(40);
pub static HNSW_MAX_SCAN_TUPLES: GucSetting<i32> = GucSetting::<i32>::new(20_000);

/// Defines sutra's parameters and reserves the prefix. Called once from `_PG_init`, last.
/// `with_hooks` define the parameters whose check and assign hooks live with the module they
/// guard (the tenant context's two, `tenancy::context::define_parameters`); they are defined
/// first, in order.
pub fn init(with_hooks: &[fn()]) {
    for define in with_hooks {
        define();
    }
    GucRegistry::define_int_guc(
        c"sutra.context_lifetime",
        c"How long a tenant context issued by sutra stays valid.",
        c"A context never outlives the key or token that granted it either.",
        &CONTEXT_LIFETIME,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"sutra.jwt_secret",
        c"Secret of the HS256 tokens sutra.authenticate_jwt accepts.",
        c"Empty: JWT authentication is off.",
        &JWT_SECRET,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::from_bits_retain(pg_sys::GUC_NOT_IN_SAMPLE as i32),
    );
    GucRegistry::define_enum_guc(
        c"sutra.jwt_membership",
        c"Whether a token's user must be a member of its tenant (required) or the issuer vouches for it (trusted).",
        c"required: the sub claim names a member of the tenant, whose role bounds the scopes.",
        &JWT_MEMBERSHIP,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"sutra.secrets_key",
        c"Master key of tenant secrets (sutra.set_secret): 64 hex digits.",
        c"Empty: tenant secrets are off. Only in the configuration file, never in the database.",
        &SECRETS_KEY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::from_bits_retain(pg_sys::GUC_NOT_IN_SAMPLE as i32),
    );
    GucRegistry::define_string_guc(
        c"sutra.secrets_key_previous",
        c"The master key before the current one, while sutra.rotate_secrets_key() re-encrypts.",
        c"Secrets sealed with it still open; rotate_secrets_key() seals them again with sutra.secrets_key.",
        &SECRETS_KEY_PREVIOUS,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::from_bits_retain(pg_sys::GUC_NOT_IN_SAMPLE as i32),
    );
    GucRegistry::define_bool_guc(
        c"sutra.metering",
        c"Whether tenant statements are metered into sutra.usage_rollups.",
        c"Rate, concurrency and connection limits apply either way.",
        &METERING,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"sutra.tenant_pruning",
        c"Whether tenant tables partitioned by their tenant column are planned for the session's tenant only.",
        c"Off: every partition is planned and all but the tenant's skipped when the query runs.",
        &TENANT_PRUNING,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sutra.max_tenants",
        c"Tenants (per database) limited and metered at once in shared memory.",
        c"An idle tenant's slot is reused; when every slot belongs to a tenant active right now, further tenants' statements fail.",
        &MAX_TENANTS,
        16,
        i32::MAX / 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sutra.max_tenant_table_counts",
        c"Quota counts of (tenant, tenant table) held at once in shared memory.",
        c"An unused count is dropped and counted again from the table when needed.",
        &MAX_TENANT_TABLE_COUNTS,
        16,
        i32::MAX / 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sutra.usage_flush_interval",
        c"How often metered usage is written to sutra.usage_rollups.",
        c"A crash loses at most this much metering.",
        &USAGE_FLUSH_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.usage_minutes_kept",
        c"How long metered usage is kept per minute before it is compacted to hours.",
        c"sutra.compact_usage, which the metering worker runs hourly, sums older minutes into hours.",
        &USAGE_MINUTES_KEPT,
        3600,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.usage_hours_kept",
        c"How long metered usage is kept per hour before it is compacted to days.",
        c"Days are UTC days.",
        &USAGE_HOURS_KEPT,
        86400,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.usage_retention",
        c"How long metered usage is kept at all; 0 keeps it for good.",
        c"Older rows of sutra.usage_rollups are deleted by sutra.compact_usage.",
        &USAGE_RETENTION,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.audit_retention",
        c"How long rows of sutra.audit_log are kept; 0 keeps them for good.",
        c"sutra.trim_audit_log, which the metering worker runs hourly, deletes older rows.",
        &AUDIT_RETENTION,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.refusal_audit_interval",
        c"How often a refused statement of one tenant and limit is audited and notified.",
        c"The first refusal per tenant and limit in each interval writes an audit row and notifies channel sutra_limits; every refusal is counted.",
        &REFUSAL_AUDIT_INTERVAL,
        1,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.usage_event_max_age",
        c"How far back a tenant session may date a usage event.",
        c"Superusers and members of sutra_service may date events back to 2000-01-01.",
        &USAGE_EVENT_MAX_AGE,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.usage_event_max_future",
        c"How far ahead of the current time a usage event may be dated.",
        c"The same for every caller.",
        &USAGE_EVENT_MAX_FUTURE,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"sutra.hnsw_ef_search",
        c"Size of the candidate list of sutra_hnsw index scans.",
        c"Higher finds more of the true nearest neighbours, more slowly.",
        &HNSW_EF_SEARCH,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sutra.hnsw_max_scan_tuples",
        c"Most index elements a sutra_hnsw scan reads while filters or visibility discard rows.",
        c"When reached, the scan ends even if LIMIT is not yet satisfied.",
        &HNSW_MAX_SCAN_TUPLES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init in the postmaster, where GUC definition is allowed; the name
    // is a static NUL-terminated string that outlives the call (PostgreSQL copies it).
    unsafe { pg_sys::MarkGUCPrefixReserved(c"sutra".as_ptr()) };
}
