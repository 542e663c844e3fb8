//! Events of the tenant context. The tenancy module announces them; metering and limits subscribe
//! once, when the library loads, so that tenancy never needs to know who listens.

use std::sync::OnceLock;

/// What a subscriber is told.
pub struct Subscriber {
    /// The session's context now names `tenant` (`None`: no tenant).
    pub context_changed: fn(Option<[u8; 16]>),
    /// A context for the tenant is about to be issued to this session; may refuse by raising.
    pub before_issue: fn(&pgrx::Uuid),
    /// Rows of the tenant are about to be written without the executor (COPY into a tenant table).
    pub before_bulk_write: fn(&pgrx::Uuid),
}

/// Set in the postmaster while it loads the library; every backend inherits it.
static SUBSCRIBER: OnceLock<Subscriber> = OnceLock::new();

/// Registers the one subscriber (from `_PG_init`).
pub fn subscribe(subscriber: Subscriber) {
    let _ = SUBSCRIBER.set(subscriber);
}

pub fn context_changed(tenant: Option<[u8; 16]>) {
    if let Some(s) = SUBSCRIBER.get() {
        (s.context_changed)(tenant);
    }
}

pub fn before_issue(tenant: &pgrx::Uuid) {
    if let Some(s) = SUBSCRIBER.get() {
        (s.before_issue)(tenant);
    }
}

pub fn before_bulk_write(tenant: &pgrx::Uuid) {
    if let Some(s) = SUBSCRIBER.get() {
        (s.before_bulk_write)(tenant);
    }
}
