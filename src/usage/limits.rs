//! The limits in force for a tenant, as this backend knows them: read from `sutra._limits()` on
//! first use and kept until `sutra.tenants` or `sutra.plans` change (the same invalidation that
//! ends a suspended tenant's sessions), so a plan or override change applies at once everywhere.
//! A Citus worker reads them from `sutra.cluster_grants`, once per transaction.

use std::cell::RefCell;

use pgrx::prelude::*;
use serde_json::Value;
pub use sutra_core::limits::Limits;

use crate::backend::caller::as_superuser;
use crate::backend::GenerationMap;
use crate::tenancy::context;

/// The keys of the limits that record_usage checks (usage caps), kept as JSON.
const CAP_KEYS: [&str; 5] = ["monthly", "daily", "monthly_cost", "daily_cost", "soft_threshold"];

thread_local! {
    static CACHE: RefCell<GenerationMap<[u8; 16], (Limits, Value)>> = RefCell::new(GenerationMap::new());
}

/// The limits of `tenant`, and its usage caps (read once per invalidation).
fn cached(tenant: &pgrx::Uuid) -> (Limits, Value) {
    let generation = context::status_generation();
    let key = *tenant.as_bytes();
    if let Some(l) = CACHE.with(|c| c.borrow().get(generation, &key)) {
        return l;
    }
    // A Citus worker has the limits the coordinator keeps for the cluster, not its own.
    let json = if crate::tenancy::citus::is_worker() {
        crate::tenancy::citus::grant("limits", &tenant.to_string())
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or(Value::Null)
    } else {
        as_superuser(|| Spi::get_one_with_args::<pgrx::JsonB>("SELECT sutra._limits($1)", &[(*tenant).into()]))
            .ok()
            .flatten()
            .map(|j| j.0)
            .unwrap_or(Value::Null)
    };
    let caps: serde_json::Map<String, Value> = CAP_KEYS
        .iter()
        .filter_map(|k| json.get(*k).map(|v| (k.to_string(), v.clone())))
        .filter(|(k, _)| k != "soft_threshold" || CAP_KEYS[..4].iter().any(|c| json.get(*c).is_some()))
        .collect();
    let entry = (Limits::from_json(&json), Value::Object(caps));
    CACHE.with(|c| c.borrow_mut().insert(generation, key, entry.clone()));
    entry
}

/// The limits of `tenant` (read once per invalidation).
pub fn of(tenant: &pgrx::Uuid) -> Limits {
    cached(tenant).0
}

/// `sutra._usage_caps(tenant)`: the tenant's usage caps (`monthly`, `daily`, `monthly_cost`,
/// `daily_cost`, and `soft_threshold` when there is a cap) from this backend's cache of its
/// limits: what record_usage checks on every event, without reading the plan and overrides.
#[pg_extern(stable, parallel_restricted)]
fn _usage_caps(tenant: pgrx::Uuid) -> pgrx::JsonB {
    pgrx::JsonB(cached(&tenant).1)
}
