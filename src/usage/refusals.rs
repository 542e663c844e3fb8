//! Refusals leave a trace. A statement refused over a limit (rate, concurrent statements,
//! connections, a quota, a usage cap) is counted in its tenant's slot and for the server (by kind:
//! [`Refusal`]), and the first refusal per tenant and limit in each `sutra.refusal_audit_interval`
//! is audited (`limit.refused`, with the limit, the value the statement would have reached and the
//! limit's value) and notified on channel `sutra_limits`. The refused statement aborts, taking any
//! row it wrote with it, so both go through shared memory and a background writer, as failed
//! authentications do ([`crate::tenancy::failures`]).

use pgrx::prelude::*;

use super::shmem::{self, Keyed, Refusal, Slot};

/// Counts a refusal and queues its audit row and notification; the caller raises the error.
pub fn refused(slot: &Slot, why: Refusal, limit: &str, value: f64, limit_value: f64) {
    slot.refuse(why);
    crate::tenancy::failures::queue_refusal(slot.tenant(), limit, value, limit_value);
}

/// `sutra._cap_refused(tenant, limit, value, cap)`: what record_usage calls just before it refuses
/// an event over a hard usage cap (counted as a quota refusal). Superusers only: record_usage
/// runs as its owner; nobody else may count refusals or write their audit rows.
#[pg_extern(volatile)]
fn _cap_refused(tenant: pgrx::Uuid, limit: &str, value: f64, limit_value: f64) {
    crate::backend::caller::require_superuser("record a refusal");
    if let Ok(slot) = shmem::slot(shmem::my_db(), tenant.as_bytes()) {
        refused(&slot, Refusal::Quota, limit, value, limit_value);
    }
}
