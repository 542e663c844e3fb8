//! Metering in a backend: counts gather here per tenant and go to the tenant's shared-memory
//! slot at most every 50 ms (busy sessions would otherwise fight over one cache line), when the
//! session meters another tenant, before a flush, and at exit.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::shmem::{Counts, Metric, Slot};

/// How long metering may wait in a backend before it is added to shared memory.
const PUSH_INTERVAL: Duration = Duration::from_millis(50);

thread_local! {
    /// Metering gathered in this backend and not yet added to shared memory.
    static LOCAL: RefCell<Option<(&'static Slot, Counts, Instant)>> = const { RefCell::new(None) };
}

/// What runs at backend exit before the last push (the session's detach, which meters its
/// connection time). Set once in `_PG_init`.
static mut BEFORE_EXIT: Option<fn()> = None;

/// Sets what runs at exit before the last push. Call from `_PG_init` only.
pub fn init(before_exit: fn()) {
    // SAFETY: _PG_init, single-threaded in the postmaster; backends only read it.
    unsafe { BEFORE_EXIT = Some(before_exit) };
}

/// Adds `n` of `metric` to this backend's metering for `slot`.
pub fn add(slot: &'static Slot, metric: Metric, n: u64) {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if let Some((s, counts, since)) = l.as_mut() {
            if std::ptr::eq(*s, slot) {
                counts[metric.index()] += n;
                if since.elapsed() >= PUSH_INTERVAL {
                    for (m, c) in Metric::ALL.into_iter().zip(counts.iter_mut()) {
                        s.meter(m, std::mem::take(c));
                    }
                    *since = Instant::now();
                }
                return;
            }
            for (m, c) in Metric::ALL.into_iter().zip(counts.iter()) {
                s.meter(m, *c);
            }
        }
        let mut counts: Counts = [0; Metric::COUNT];
        counts[metric.index()] = n;
        *l = Some((slot, counts, Instant::now()));
    });
    register_exit();
}

/// Meters bytes written for a tenant (from the quota trigger, which sees every row written).
pub fn bytes(slot: &'static Slot, bytes: u64) {
    if crate::guc::METERING.get() {
        add(slot, Metric::BytesWritten, bytes);
    }
}

/// Adds this backend's metering to shared memory now (at exit, and before a flush reads it).
pub fn push() {
    LOCAL.with(|l| {
        if let Some((s, counts, since)) = l.borrow_mut().as_mut() {
            for (m, c) in Metric::ALL.into_iter().zip(counts.iter_mut()) {
                s.meter(m, std::mem::take(c));
            }
            *since = Instant::now();
        }
    });
}

/// At backend exit.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    if let Some(before) = BEFORE_EXIT {
        before();
    }
    push();
}

/// Registers the exit callback in a backend (once).
pub fn register_exit() {
    thread_local! { static DONE: Cell<bool> = const { Cell::new(false) }; }
    if !DONE.with(|d| d.replace(true)) {
        // SAFETY: registering a callback for this process's exit.
        unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    }
}
