//! Tenancy: the tenant context, authentication, API keys and the helpers sutra's SQL calls.
//!
//! The tables, policies and lifecycle functions are SQL (`sql/tenancy/*.sql`, one file per topic);
//! this module holds
//! what needs Rust: signing and checking contexts, verifying keys and tokens, COPY into tenant
//! tables and purges.

pub mod auth;
pub mod citus;
pub mod context;
pub mod copy;
pub mod failures;
pub mod keys;
pub mod planner;
pub mod purge;
pub mod secrets;
pub mod settings;

/// Defines the tenancy parameters and registers cache invalidation. Called from `_PG_init`.
pub fn init() {
    citus::init();
    context::init();
    failures::init();
    copy::init();
    planner::init();
}
