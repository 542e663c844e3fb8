//! Settings and feature flags of the current tenant, read in constant time: each backend keeps a
//! tenant's effective settings and flags (its plan's defaults, overridden key by key by the
//! tenant's own, `sutra._tenant_settings`) until `sutra.tenants` or `sutra.plans` change, the
//! same invalidation that applies limits at once everywhere. The SQL surface that changes them is
//! `sql/tenancy/settings.sql`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::prelude::*;
use serde_json::Value;

use super::context;
use crate::backend::caller::as_superuser;
use crate::backend::GenerationMap;

struct Effective {
    settings: serde_json::Map<String, Value>,
    features: HashMap<String, bool>,
}

thread_local! {
    static CACHE: RefCell<GenerationMap<[u8; 16], Rc<Effective>>> = RefCell::new(GenerationMap::new());
}

fn effective(tenant: pgrx::Uuid) -> Rc<Effective> {
    let generation = context::status_generation();
    let key = *tenant.as_bytes();
    if let Some(e) = CACHE.with(|c| c.borrow().get(generation, &key)) {
        return e;
    }
    let json =
        as_superuser(|| Spi::get_one_with_args::<pgrx::JsonB>("SELECT sutra._tenant_settings($1)", &[tenant.into()]))
            .ok()
            .flatten()
            .map(|j| j.0)
            .unwrap_or(Value::Null);
    let settings = json.get("settings").and_then(Value::as_object).cloned().unwrap_or_default();
    let features = json
        .get("features")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_bool().unwrap_or(false))).collect())
        .unwrap_or_default();
    let e = Rc::new(Effective { settings, features });
    CACHE.with(|c| c.borrow_mut().insert(generation, key, e.clone()));
    e
}

/// `sutra.setting(key)`: the current tenant's value of setting `key` (its own, else its plan's;
/// null when neither sets it).
#[pg_extern(stable, parallel_restricted)]
fn setting(key: &str) -> Option<pgrx::JsonB> {
    let (_, tenant) = context::required_tenant();
    effective(tenant).settings.get(key).map(|v| pgrx::JsonB(v.clone()))
}

/// `sutra.feature_enabled(flag)`: whether feature flag `flag` is on for the current tenant (its
/// own value, else its plan's; off when neither sets it).
#[pg_extern(stable, parallel_restricted)]
fn feature_enabled(flag: &str) -> bool {
    let (_, tenant) = context::required_tenant();
    effective(tenant).features.get(flag).copied().unwrap_or(false)
}
