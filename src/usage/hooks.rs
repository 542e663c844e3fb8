//! Rate limits, concurrency limits, connection limits and metering, charged in the executor.
//!
//! Every top-level statement a tenant session runs passes ExecutorStart: its tenant's GCRA
//! limiter is charged (53400 with the wait in DETAIL when over the rate) and its running-statement
//! count is raised (53000 over the limit). ExecutorEnd lowers the count and meters the statement
//! and its rows; an aborted statement is settled by the transaction callback, so nothing leaks a
//! slot. A session attaches to its tenant when it gets the tenant's context (53300 past the
//! connection limit) and detaches when the context goes, or at exit; connection time is metered
//! then and at each statement. Parallel workers and nested statements are not charged again, nor
//! are the statements Citus runs on a node for a session connected to another one.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use sutra_core::gcra::Gcra;

use super::limits;
use super::meter;
use super::shmem::{self, Metric, Pin, Refusal, Slot};
use crate::backend::caller::in_parallel_worker;
use crate::backend::{ms_ceil, now_ns};
use crate::error::{raise_detail, raise_hint};
use crate::tenancy::{citus, context};

static mut PREV_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_END: pg_sys::ExecutorEnd_hook_type = None;

/// The tenant's slot, the tenant, and since when its connection time is metered.
type Attachment = (Pin<Slot>, [u8; 16], Instant);

thread_local! {
    /// Executor nesting depth: only depth 0 is a statement of the session.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The slot whose running-statement count the current statement holds.
    static HOLD: RefCell<Option<Pin<Slot>>> = const { RefCell::new(None) };
    /// The tenant this session is attached to, and since when (connection time metered so far).
    static ATTACHED: RefCell<Option<Attachment>> = const { RefCell::new(None) };
    /// A connection counted by `reserve_connection` that the next attach takes over.
    static RESERVED: RefCell<Option<(Pin<Slot>, [u8; 16])>> = const { RefCell::new(None) };
}

/// Meters one vector index search for the tenant of the running statement (none outside a
/// tenant session).
pub fn meter_vector_search() {
    if !crate::guc::METERING.get() {
        return;
    }
    // A search Citus runs here for a session on another node was counted there, with its
    // statement (`citus::vector_searches`): no statement holds a count here.
    HOLD.with(|h| h.borrow().as_ref().map(|slot| meter::add(slot, Metric::VectorSearches, 1)));
}

pub fn init() {
    // SAFETY: _PG_init, single-threaded in the postmaster; hooks and callbacks are chained or
    // registered once and inherited by every backend.
    unsafe {
        PREV_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
    }
}

/// Counts one more in `counter` of `slot`, unless that would pass `max`: then it counts a
/// refusal (`why`) instead and returns the limit.
fn take_one(slot: &Slot, counter: &AtomicI32, max: Option<i32>, why: Refusal, limit: &str) -> Option<i32> {
    let now = counter.fetch_add(1, Ordering::AcqRel) + 1;
    match max {
        Some(max) if now > max => {
            counter.fetch_sub(1, Ordering::AcqRel);
            super::refusals::refused(slot, why, limit, now as f64, max as f64);
            Some(max)
        }
        _ => None,
    }
}

/// Charges the statement to the tenant's limiter and concurrency count; raises when over.
fn admit(tenant: pgrx::Uuid) {
    let slot = tenant_slot(tenant.as_bytes()).unwrap_or_else(|_| shmem::raise_full("tenant"));
    // Reading limits may run a query: that nested statement must not be charged.
    DEPTH.with(|d| d.set(d.get() + 1));
    let limits = limits::of(&tenant);
    super::quota::ensure_known_in(&tenant, &slot);
    DEPTH.with(|d| d.set(d.get() - 1));
    if let Some((rate, burst)) = limits.rate() {
        if let Err(wait) = Gcra::new(rate, burst).take(&slot.tat, now_ns()) {
            super::refusals::refused(&slot, Refusal::Rate, "ops_per_second", rate, rate);
            raise_detail(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!("rate limit exceeded for tenant {tenant}"),
                format!(
                    "The limit is {rate} statements per second with bursts of {burst}; retry after {} ms.",
                    ms_ceil(wait)
                ),
            );
        }
    }
    if let Some(max) =
        take_one(&slot, &slot.active, limits.concurrent_statements, Refusal::Concurrency, "concurrent_statements")
    {
        raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            format!("too many concurrent statements for tenant {tenant}"),
            format!("The limit is {max} statements running at once; retry when one has finished."),
        );
    }
    HOLD.with(|h| *h.borrow_mut() = Some(slot));
}

/// The tenant's slot, pinned: the attachment's when the session is attached to it (no lookup).
fn tenant_slot(key: &[u8; 16]) -> Result<Pin<Slot>, shmem::Full> {
    let attached = ATTACHED.with(|a| a.borrow().as_ref().filter(|(_, t, _)| t == key).map(|(p, _, _)| p.clone()));
    match attached {
        Some(pin) => Ok(pin),
        None => shmem::slot(shmem::my_db(), key),
    }
}

/// Ends the statement holding a running-statement count: lowers it and meters the statement.
fn settle(rows: Option<(Metric, u64)>) {
    if let Some(slot) = HOLD.with(|h| h.borrow_mut().take()) {
        slot.active.fetch_sub(1, Ordering::AcqRel);
        if !crate::guc::METERING.get() {
            return;
        }
        meter::add(&slot, Metric::Statements, 1);
        if let Some((metric, n)) = rows {
            if n > 0 {
                meter::add(&slot, metric, n);
            }
        }
        meter_connection_time();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    let depth = DEPTH.with(|d| d.get());
    if depth == 0 && !in_parallel_worker() && eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 == 0 {
        // A statement Citus runs here for a session on another node was charged there. Telling
        // may run a query: that nested statement must not be charged.
        DEPTH.with(|d| d.set(depth + 1));
        citus::note_connection();
        DEPTH.with(|d| d.set(depth));
        if let Some(tenant) = context::peek_tenant() {
            if !citus::internal_connection() {
                admit(tenant);
                // Looking up sutra_hnsw's distances may run a query, not to be charged.
                DEPTH.with(|d| d.set(depth + 1));
                let searches = citus::vector_searches((*query_desc).plannedstmt);
                DEPTH.with(|d| d.set(depth));
                if searches > 0 && crate::guc::METERING.get() {
                    HOLD.with(|h| h.borrow().as_ref().map(|slot| meter::add(slot, Metric::VectorSearches, searches)));
                }
            } else if (*query_desc).operation != pg_sys::CmdType::CMD_SELECT {
                // Citus writes a tenant's rows into this node's shards: the quota triggers there
                // count them against the counts of what this node holds, known before the rows.
                DEPTH.with(|d| d.set(depth + 1));
                super::quota::ensure_tenant_known(&tenant);
                DEPTH.with(|d| d.set(depth));
            }
        }
    }
    DEPTH.with(|d| d.set(depth + 1));
    match PREV_START {
        Some(prev) => prev(query_desc, eflags),
        None => crate::fmgr::standard::executor_start(query_desc, eflags),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
    let depth = DEPTH.with(|d| d.get()).saturating_sub(1);
    DEPTH.with(|d| d.set(depth));
    if depth == 0 {
        let estate = (*query_desc).estate;
        let processed = if estate.is_null() { 0 } else { (*estate).es_processed };
        let metric = match (*query_desc).operation {
            pg_sys::CmdType::CMD_SELECT => Metric::RowsRead,
            _ => Metric::RowsWritten,
        };
        settle(Some((metric, processed)));
    }
    match PREV_END {
        Some(prev) => prev(query_desc),
        None => crate::fmgr::standard::executor_end(query_desc),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT {
        DEPTH.with(|d| d.set(0));
        settle(None);
        // A connection reserved for a context that never took effect.
        if let Some((slot, _)) = RESERVED.with(|r| r.borrow_mut().take()) {
            slot.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Adds the time since the last accounting to the attached tenant's connection time.
fn meter_connection_time() {
    ATTACHED.with(|a| {
        if let Some((slot, _, since)) = a.borrow_mut().as_mut() {
            let ms = since.elapsed().as_millis() as u64;
            if ms > 0 {
                meter::add(slot, Metric::ConnectionTime, ms);
                *since = Instant::now();
            }
        }
    });
}

/// Before a context for `tenant` is set: counts the session against the tenant's connection limit
/// (53300 when full), unless it is attached to that tenant already.
pub fn reserve_connection(tenant: &pgrx::Uuid) {
    let key = *tenant.as_bytes();
    if ATTACHED.with(|a| a.borrow().as_ref().map(|(_, t, _)| *t) == Some(key)) {
        return;
    }
    let slot = shmem::slot(shmem::my_db(), &key).unwrap_or_else(|_| shmem::raise_full("tenant"));
    if let Some(max) =
        take_one(&slot, &slot.connections, limits::of(tenant).connections, Refusal::Connections, "connections")
    {
        raise_hint(
            PgSqlErrorCode::ERRCODE_TOO_MANY_CONNECTIONS,
            format!("too many connections for tenant {tenant}"),
            format!("The limit is {max} sessions holding the tenant's context at once."),
        );
    }
    if let Some((previous, _)) = RESERVED.with(|r| r.borrow_mut().replace((slot, key))) {
        previous.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The session's context changed to `tenant` (or to none): moves its connection. Called from the
/// parameter's assign hook, so it must not fail.
pub fn attach(tenant: Option<[u8; 16]>) {
    // Citus's own connection holds the context of a session on another node, which counts there.
    if citus::internal_connection() {
        return;
    }
    let current = ATTACHED.with(|a| a.borrow().as_ref().map(|(_, t, _)| *t));
    if current == tenant {
        return;
    }
    detach();
    let Some(key) = tenant else { return };
    let reserved = RESERVED.with(|r| {
        let mut r = r.borrow_mut();
        match r.take() {
            Some((pin, t)) if t == key => Some(pin),
            other => {
                *r = other;
                None
            }
        }
    });
    let slot = match reserved {
        Some(pin) => pin,
        None => {
            // A context arriving without sutra issuing it here (SET of a value from elsewhere, a
            // parallel worker, a transaction's end restoring the session's context). Without a
            // slot (all in use right now) the session stays unattached: its statements fail.
            let Ok(pin) = shmem::slot(shmem::my_db(), &key) else { return };
            pin.connections.fetch_add(1, Ordering::AcqRel);
            pin
        }
    };
    meter::begin(slot.get());
    ATTACHED.with(|a| *a.borrow_mut() = Some((slot, key, Instant::now())));
}

/// Detaches the session from its tenant, metering the connection time.
pub fn detach() {
    meter_connection_time();
    if let Some((slot, _, _)) = ATTACHED.with(|a| a.borrow_mut().take()) {
        // Gathered metering goes to the slot before the pin that keeps it the tenant's goes.
        meter::end();
        slot.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
