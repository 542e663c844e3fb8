//! Metering in a backend: counts for the tenant the session is attached to gather here and go to
//! the tenant's shared-memory slot at most every 50 ms (busy sessions would otherwise fight over
//! one cache line), when the session detaches, before a flush, and at exit. Counts for any other
//! tenant (bytes a service role writes into a tenant's rows) go to its slot at once.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::shmem::{Counts, Metric, Slot};

/// How long metering may wait in a backend before it is added to shared memory.
const PUSH_INTERVAL: Duration = Duration::from_millis(50);

thread_local! {
    /// Metering of the attached tenant not yet added to its slot. The slot is pinned by the
    /// attachment ([`super::hooks`]), which ends this with [`end`] before it lets the pin go.
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

/// Starts gathering metering for `slot`, the tenant the session just attached to. The caller
/// holds a pin on `slot` until it calls [`end`].
pub fn begin(slot: &'static Slot) {
    end();
    LOCAL.with(|l| *l.borrow_mut() = Some((slot, [0; Metric::COUNT], Instant::now())));
    register_exit();
}

/// Adds what was gathered to the attached tenant's slot and stops gathering.
pub fn end() {
    push();
    LOCAL.with(|l| l.borrow_mut().take());
}

/// Adds `n` of `metric` for the tenant of `slot` (which the caller holds pinned).
pub fn add(slot: &Slot, metric: Metric, n: u64) {
    let gathered = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        match l.as_mut() {
            Some((s, counts, since)) if std::ptr::eq(*s, slot) => {
                counts[metric.index()] += n;
                if since.elapsed() >= PUSH_INTERVAL {
                    for (m, c) in Metric::ALL.into_iter().zip(counts.iter_mut()) {
                        s.meter(m, std::mem::take(c));
                    }
                    *since = Instant::now();
                }
                true
            }
            _ => false,
        }
    });
    if !gathered {
        slot.meter(metric, n);
    }
}

/// Meters bytes written for a tenant (from the quota trigger, which sees every row written).
pub fn bytes(slot: &Slot, bytes: u64) {
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
    end();
}

/// Registers the exit callback in a backend (once).
pub fn register_exit() {
    thread_local! { static DONE: Cell<bool> = const { Cell::new(false) }; }
    if !DONE.with(|d| d.replace(true)) {
        // SAFETY: registering a callback for this process's exit.
        unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    }
}
