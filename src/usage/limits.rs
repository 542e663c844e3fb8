//! The limits in force for a tenant, as this backend knows them: read from `sutra._limits()` on
//! first use and kept until `sutra.tenants` or `sutra.plans` change (the same invalidation that
//! ends a suspended tenant's sessions), so a plan or override change applies at once everywhere.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::prelude::*;
use serde_json::Value;

use crate::backend::caller::as_superuser;
use crate::tenancy::context;

/// The limits the hooks enforce; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub ops_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub concurrent_statements: Option<i32>,
    pub connections: Option<i32>,
    pub rows_total: Option<i64>,
    pub rows_per_table: Option<i64>,
    pub storage_bytes: Option<i64>,
    pub vectors: Option<i64>,
    /// Fraction of a quota past which a write warns (and is audited once per crossing).
    pub soft_threshold: f64,
}

fn positive(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| *x > 0.0)
}

impl Limits {
    /// The rate limit in force: statements per second and the burst, which defaults to one
    /// second's worth.
    pub fn rate(&self) -> Option<(f64, u32)> {
        self.ops_per_second.map(|r| (r, self.burst.unwrap_or(r.ceil().max(1.0) as u32)))
    }

    pub fn from_json(v: &Value) -> Limits {
        Limits {
            ops_per_second: positive(v, "ops_per_second"),
            burst: positive(v, "burst").map(|b| b.min(u32::MAX as f64) as u32),
            concurrent_statements: positive(v, "concurrent_statements").map(|n| n.min(i32::MAX as f64) as i32),
            connections: positive(v, "connections").map(|n| n.min(i32::MAX as f64) as i32),
            rows_total: positive(v, "rows_total").map(|n| n as i64),
            rows_per_table: positive(v, "rows_per_table").map(|n| n as i64),
            storage_bytes: positive(v, "storage_bytes").map(|n| n as i64),
            vectors: positive(v, "vectors").map(|n| n as i64),
            soft_threshold: v.get("soft_threshold").and_then(Value::as_f64).filter(|t| *t > 0.0 && *t <= 1.0).unwrap_or(0.8),
        }
    }
}

thread_local! {
    static CACHE: RefCell<(u64, HashMap<[u8; 16], Limits>)> = RefCell::new((0, HashMap::new()));
}

/// The limits of `tenant` (read once per invalidation).
pub fn of(tenant: &pgrx::Uuid) -> Limits {
    let generation = context::status_generation();
    let key = *tenant.as_bytes();
    if let Some(l) = CACHE.with(|c| {
        let c = c.borrow();
        (c.0 == generation).then(|| c.1.get(&key).cloned()).flatten()
    }) {
        return l;
    }
    let json = as_superuser(|| Spi::get_one_with_args::<pgrx::JsonB>("SELECT sutra._limits($1)", &[(*tenant).into()]))
        .ok()
        .flatten()
        .map(|j| j.0)
        .unwrap_or(Value::Null);
    let limits = Limits::from_json(&json);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != generation {
            *c = (generation, HashMap::new());
        }
        c.1.insert(key, limits.clone());
    });
    limits
}
