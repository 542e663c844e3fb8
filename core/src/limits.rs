//! The limits a tenant's plan and overrides set, as the hooks and quota triggers enforce them:
//! parsed from the merged JSON of `sutra._limits()` (plan limits, then the tenant's overrides).
//! A missing, zero, negative or non-numeric value is unlimited.

use serde_json::Value;

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
            soft_threshold: v
                .get("soft_threshold")
                .and_then(Value::as_f64)
                .filter(|t| *t > 0.0 && *t <= 1.0)
                .unwrap_or(0.8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_zero_negative_and_text_are_unlimited() {
        let l = Limits::from_json(&json!({"rows_total": 0, "vectors": -5, "connections": "10", "burst": null}));
        assert_eq!(l, Limits { soft_threshold: 0.8, ..Limits::default() });
        assert_eq!(Limits::from_json(&Value::Null), Limits { soft_threshold: 0.8, ..Limits::default() });
    }

    #[test]
    fn values_are_read_and_clamped() {
        let l = Limits::from_json(&json!({
            "ops_per_second": 2.5, "burst": 1e12, "concurrent_statements": 1e12, "connections": 3,
            "rows_total": 100, "rows_per_table": 7, "storage_bytes": 1073741824, "vectors": 9,
            "soft_threshold": 0.5
        }));
        assert_eq!(l.ops_per_second, Some(2.5));
        assert_eq!(l.burst, Some(u32::MAX));
        assert_eq!(l.concurrent_statements, Some(i32::MAX));
        assert_eq!(l.connections, Some(3));
        assert_eq!(
            (l.rows_total, l.rows_per_table, l.storage_bytes, l.vectors),
            (Some(100), Some(7), Some(1 << 30), Some(9))
        );
        assert_eq!(l.soft_threshold, 0.5);
    }

    #[test]
    fn soft_threshold_outside_zero_to_one_is_the_default() {
        for t in [json!(0), json!(1.5), json!(-0.1), json!("0.5")] {
            assert_eq!(Limits::from_json(&json!({ "soft_threshold": t })).soft_threshold, 0.8);
        }
        assert_eq!(Limits::from_json(&json!({"soft_threshold": 1})).soft_threshold, 1.0);
    }

    #[test]
    fn the_burst_defaults_to_one_seconds_worth() {
        assert_eq!(Limits::from_json(&json!({"ops_per_second": 2.5})).rate(), Some((2.5, 3)));
        assert_eq!(Limits::from_json(&json!({"ops_per_second": 0.1})).rate(), Some((0.1, 1)));
        assert_eq!(Limits::from_json(&json!({"ops_per_second": 100, "burst": 7})).rate(), Some((100.0, 7)));
        assert_eq!(Limits::from_json(&json!({"burst": 7})).rate(), None);
    }
}
