//! The limits in force for a tenant, as this backend knows them: read from `sutra._limits()` on
//! first use and kept until `sutra.tenants` or `sutra.plans` change (the same invalidation that
//! ends a suspended tenant's sessions), so a plan or override change applies at once everywhere.

use std::cell::RefCell;

use pgrx::prelude::*;
use serde_json::Value;
pub use sutra_core::limits::Limits;

use crate::backend::caller::as_superuser;
use crate::backend::GenerationMap;
use crate::tenancy::context;

thread_local! {
    static CACHE: RefCell<GenerationMap<[u8; 16], Limits>> = RefCell::new(GenerationMap::new());
}

/// The limits of `tenant` (read once per invalidation).
pub fn of(tenant: &pgrx::Uuid) -> Limits {
    let generation = context::status_generation();
    let key = *tenant.as_bytes();
    if let Some(l) = CACHE.with(|c| c.borrow().get(generation, &key)) {
        return l;
    }
    let json = as_superuser(|| Spi::get_one_with_args::<pgrx::JsonB>("SELECT sutra._limits($1)", &[(*tenant).into()]))
        .ok()
        .flatten()
        .map(|j| j.0)
        .unwrap_or(Value::Null);
    let limits = Limits::from_json(&json);
    CACHE.with(|c| c.borrow_mut().insert(generation, key, limits.clone()));
    limits
}
