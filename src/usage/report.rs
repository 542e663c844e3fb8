//! Reading the shared per-tenant state from SQL: counters for `sutra.metrics()`, the limiter's
//! state for `sutra.rate_limit_status()`, and the pending metering the flush writes out.

use std::sync::atomic::Ordering;

use pgrx::prelude::*;
use sutra_core::gcra::Gcra;

use super::limits;
use super::shmem::{self, Counts, Keyed, Metric};

/// `sutra._tenant_counters()`: every tenant of this database in shared memory, with its totals
/// since its slot was claimed, its current statement and connection counts, and whether it was
/// active since the last flush (`recent`).
// The row type is the SQL function's signature.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, name = "_tenant_counters")]
fn tenant_counters() -> TableIterator<
    'static,
    (
        name!(tenant_id, pgrx::Uuid),
        name!(statements, i64),
        name!(rows_read, i64),
        name!(rows_written, i64),
        name!(vector_searches, i64),
        name!(bytes_written, i64),
        name!(connection_seconds, f64),
        name!(rate_limited, i64),
        name!(concurrency_refused, i64),
        name!(connections_refused, i64),
        name!(quota_refused, i64),
        name!(active_statements, i32),
        name!(connections, i32),
        name!(recent, bool),
    ),
> {
    let db = shmem::my_db();
    let mut rows = Vec::new();
    shmem::for_each_slot(|s| {
        if s.db() == db {
            let t = s.total.read();
            rows.push((
                pgrx::Uuid::from_bytes(s.tenant()),
                t[Metric::Statements.index()] as i64,
                t[Metric::RowsRead.index()] as i64,
                t[Metric::RowsWritten.index()] as i64,
                t[Metric::VectorSearches.index()] as i64,
                t[Metric::BytesWritten.index()] as i64,
                Metric::ConnectionTime.quantity(t[Metric::ConnectionTime.index()]),
                s.rate_limited.load(Ordering::Relaxed) as i64,
                s.concurrency_refused.load(Ordering::Relaxed) as i64,
                s.connections_refused.load(Ordering::Relaxed) as i64,
                s.quota_refused.load(Ordering::Relaxed) as i64,
                s.active.load(Ordering::Relaxed),
                s.connections.load(Ordering::Relaxed),
                s.active.load(Ordering::Relaxed) > 0
                    || s.connections.load(Ordering::Relaxed) > 0
                    || s.pending.read().iter().any(|n| *n > 0),
            ));
        }
    });
    TableIterator::new(rows)
}

/// `sutra._rate_limit_state(tenant)`: the tenant's limits and where its limiter stands now.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, name = "_rate_limit_state")]
fn rate_limit_state(
    tenant: pgrx::Uuid,
) -> TableIterator<
    'static,
    (
        name!(ops_per_second, Option<f64>),
        name!(burst, Option<i64>),
        name!(available, Option<i64>),
        name!(retry_after_ms, Option<i64>),
        name!(active_statements, i32),
        name!(concurrent_statements_limit, Option<i32>),
        name!(connections, i32),
        name!(connections_limit, Option<i32>),
    ),
> {
    let l = limits::of(&tenant);
    let slot = shmem::find(shmem::my_db(), tenant.as_bytes());
    let active = slot.as_ref().map(|s| s.active.load(Ordering::Relaxed)).unwrap_or(0);
    let connections = slot.as_ref().map(|s| s.connections.load(Ordering::Relaxed)).unwrap_or(0);
    let (burst, available, retry) = match l.rate() {
        Some((rate, burst)) => {
            let g = Gcra::new(rate, burst);
            let now = crate::backend::now_ns();
            let tat = slot.as_ref().map(|s| s.tat.load(Ordering::Relaxed)).unwrap_or(0).max(now);
            let available = g.available(tat, now);
            let retry = g.check(tat, now).err().map(crate::backend::ms_ceil).unwrap_or(0);
            (Some(burst as i64), Some(available), Some(retry))
        }
        None => (None, None, None),
    };
    TableIterator::once((
        l.ops_per_second,
        burst,
        available,
        retry,
        active,
        l.concurrent_statements,
        connections,
        l.connections,
    ))
}

/// `sutra._server_counters()`: every tenant's metering and refusals since server start, as
/// (metric, value) rows for `sutra.metrics()`.
#[pg_extern(volatile, name = "_server_counters")]
fn server_counters() -> TableIterator<'static, (name!(metric, &'static str), name!(value, f64))> {
    let (counts, refusals) = shmem::server_totals();
    let mut rows: Vec<(&'static str, f64)> =
        Metric::ALL.into_iter().map(|m| (m.name(), m.quantity(counts[m.index()]))).collect();
    for (name, n) in
        ["rate_limited", "concurrency_refused", "connections_refused", "quota_refused"].into_iter().zip(refusals)
    {
        rows.push((name, n as f64));
    }
    TableIterator::new(rows)
}

/// `sutra._limit_counters()`: failed authentications, refusals by limit and audit events lost,
/// since server start, as (name, limit, value) rows for `sutra.metrics()`.
#[pg_extern(volatile, name = "_limit_counters")]
fn limit_counters(
) -> TableIterator<'static, (name!(name, &'static str), name!(limit_name, Option<&'static str>), name!(value, i64))> {
    let (auth_failures, refused, dropped) = crate::tenancy::failures::counters();
    let mut rows = vec![("auth_failures", None, auth_failures as i64), ("audit_events_dropped", None, dropped as i64)];
    for (limit, n) in crate::tenancy::failures::LIMITS.into_iter().zip(refused) {
        rows.push(("refusals", Some(limit), n as i64));
    }
    TableIterator::new(rows)
}

/// `sutra._shared_tables()`: the shared tables' sizes and use, and the metering workers' health,
/// as (name, kind, value, help) rows for `sutra.metrics()`.
#[pg_extern(volatile, name = "_shared_tables")]
fn shared_tables() -> TableIterator<
    'static,
    (name!(name, &'static str), name!(kind, &'static str), name!(value, i64), name!(help, &'static str)),
> {
    let [tenants, tenants_used, tables, tables_used, reused, refused] = shmem::occupancy();
    let (launcher_seen, last_flush) = shmem::metering_health();
    let now = crate::backend::now_unix();
    let interval = crate::guc::USAGE_FLUSH_INTERVAL.get() as i64;
    TableIterator::new(vec![
        ("tenant_slots", "gauge", tenants, "Tenant slots in shared memory (sutra.max_tenants)."),
        ("tenant_slots_in_use", "gauge", tenants_used, "Tenant slots holding a tenant now."),
        ("table_count_slots", "gauge", tables, "Tenant table count slots (sutra.max_tenant_table_counts)."),
        ("table_count_slots_in_use", "gauge", tables_used, "Tenant table count slots holding counts now."),
        ("slots_reused_total", "counter", reused, "Slots given to another tenant or table since server start."),
        ("slots_refused_total", "counter", refused, "Statements refused because every candidate slot was in use."),
        (
            "metering_launcher_up",
            "gauge",
            (launcher_seen > 0 && now - launcher_seen <= 2 * interval + 5) as i64,
            "1 while the metering launcher looks for pending metering every sutra.usage_flush_interval.",
        ),
        (
            "metering_last_flush_timestamp_seconds",
            "gauge",
            last_flush,
            "When metering was last written to sutra.usage_rollups (Unix time; 0: not since server start).",
        ),
        (
            "metering_last_flush_age_seconds",
            "gauge",
            if last_flush > 0 { now - last_flush } else { -1 },
            "Seconds since metering was last written (-1: not since server start; idle tenants write nothing).",
        ),
    ])
}

/// Puts pending metering back after a failed flush (see [`shmem::give_back`]).
pub fn give_back(db: u32, pending: &[([u8; 16], Counts)]) {
    for (tenant, counts) in pending {
        if !shmem::give_back(db, tenant, *counts) {
            pgrx::warning!(
                "sutra: metering of tenant {} could not be kept for the next flush: shared memory is full",
                pgrx::Uuid::from_bytes(*tenant)
            );
        }
    }
}

/// `sutra.shared_memory_per_tenant(tables)`: bytes of shared memory one tracked tenant takes
/// with counts in `tables` tenant tables.
#[pg_extern(immutable, parallel_safe)]
fn shared_memory_per_tenant(tables: default!(i32, 1)) -> i32 {
    let (tenant, per_table) = shmem::slot_size();
    (tenant + per_table * tables.max(0) as usize) as i32
}
