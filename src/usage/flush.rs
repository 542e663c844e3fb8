//! Writing metering from shared memory to `sutra.usage_rollups`.
//!
//! A launcher background worker wakes every `sutra.usage_flush_interval` and, for each database
//! with pending counts, starts a short-lived worker connected to it, which adds the counts to the
//! current minute's rows (one upsert per tenant and metric) and exits. `sutra.flush_usage()` does
//! the same at once for the current database. Counts are taken out of shared memory only in the
//! transaction that writes them, and put back if it aborts.
//!
//! Clean shutdown loses nothing: the postmaster, after every other process has exited, writes
//! the pending counts to `pg_stat/sutra_metering.stat`, and the next start reads them back (and
//! removes the file). A crash loses what was counted since the last flush: at most one interval.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::report::give_back;
use super::shmem::take_pending;
use super::shmem::{self, Counts, Metric};
use crate::backend::utility::Utility;
use crate::error::raise;

const STATE_FILE: &str = "pg_stat/sutra_metering.stat";
const MAGIC: &[u8; 8] = b"sutram01";

pub fn init() {
    // SAFETY: _PG_init in the postmaster: the callback is inherited by every backend; hooks are
    // chained.
    unsafe {
        pg_sys::RegisterXactCallback(Some(flush_xact_callback), std::ptr::null_mut());
    }
    crate::backend::utility::register(forget_dropped_database);
    BackgroundWorkerBuilder::new("sutra metering launcher")
        .set_type("sutra metering launcher")
        .set_library("sutra")
        .set_function("sutra_metering_launcher_main")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

/// Called from the shared-memory startup hook in the postmaster: reads back what the last clean
/// shutdown saved, and arranges for this run's pending counts to be saved at exit.
pub fn on_startup() {
    // SAFETY: plain globals of the postmaster.
    if unsafe { pg_sys::IsUnderPostmaster } {
        return;
    }
    // SAFETY: registers a callback for the postmaster's own exit.
    unsafe { pg_sys::on_shmem_exit(Some(save_pending), pg_sys::Datum::from(0)) };
    let Ok(mut f) = std::fs::File::open(STATE_FILE) else {
        return;
    };
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() && buf.len() >= 8 && &buf[..8] == MAGIC {
        for rec in buf[8..].chunks_exact(4 + 16 + 8 * Metric::COUNT) {
            let db = u32::from_le_bytes(rec[0..4].try_into().expect("4 bytes"));
            let tenant: [u8; 16] = rec[4..20].try_into().expect("16 bytes");
            let mut counts: Counts = [0; Metric::COUNT];
            for (i, c) in counts.iter_mut().enumerate() {
                *c = u64::from_le_bytes(rec[20 + 8 * i..28 + 8 * i].try_into().expect("8 bytes"));
            }
            shmem::give_back(db, &tenant, counts);
        }
    }
    let _ = std::fs::remove_file(STATE_FILE);
}

#[pg_guard]
unsafe extern "C-unwind" fn save_pending(code: i32, _arg: pg_sys::Datum) {
    // After a crash shared memory cannot be trusted: nothing is saved.
    if code != 0 {
        return;
    }
    let mut out = MAGIC.to_vec();
    for (db, tenant, counts) in shmem::all_pending_unlocked() {
        out.extend(db.to_le_bytes());
        out.extend(tenant);
        for c in counts {
            out.extend(c.to_le_bytes());
        }
    }
    if out.len() > MAGIC.len() {
        let tmp = format!("{STATE_FILE}.tmp");
        if let Ok(mut f) = std::fs::File::create(&tmp) {
            if f.write_all(&out).and_then(|_| f.sync_all()).is_ok() {
                let _ = std::fs::rename(&tmp, STATE_FILE);
            }
        }
    }
}

/// After `DROP DATABASE`, that database's pending metering has nowhere to go: it is dropped, so
/// that the launcher does not try to connect to the database again and again.
unsafe fn forget_dropped_database(call: &Utility, next: &dyn Fn()) {
    let dropped = match call.statement::<pg_sys::DropdbStmt>(pg_sys::NodeTag::T_DropdbStmt) {
        Some(stmt) => pg_sys::get_database_oid((*stmt).dbname, true),
        None => pg_sys::InvalidOid,
    };
    next();
    if dropped != pg_sys::InvalidOid && pg_sys::get_database_name(dropped).is_null() {
        take_pending(dropped.to_u32());
    }
}

/// A database and the counts taken from shared memory for each of its tenants.
type Taken = (u32, Vec<([u8; 16], Counts)>);

thread_local! {
    /// Counts taken by a flush in the current transaction, given back if it aborts.
    static TAKEN: RefCell<Option<Taken>> = const { RefCell::new(None) };
}

#[pg_guard]
unsafe extern "C-unwind" fn flush_xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_ABORT => {
            if let Some((db, taken)) = TAKEN.with(|t| t.borrow_mut().take()) {
                give_back(db, &taken);
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => TAKEN.with(|t| *t.borrow_mut() = None),
        _ => {}
    }
}

/// Writes the current database's pending metering into `sutra.usage_rollups`, in the current
/// transaction. Returns the number of (tenant, metric) rows written.
pub fn flush_current_db() -> i64 {
    let db = shmem::my_db();
    super::meter::push();
    let pending = take_pending(db);
    TAKEN.with(|t| {
        let mut t = t.borrow_mut();
        match t.as_mut() {
            Some((_, taken)) => taken.extend(pending.iter().cloned()),
            None => *t = Some((db, pending.clone())),
        }
    });
    let mut tenants = Vec::new();
    let mut metrics = Vec::new();
    let mut quantities = Vec::new();
    for (tenant, counts) in &pending {
        for (m, c) in Metric::ALL.into_iter().zip(counts.iter()) {
            if *c > 0 {
                tenants.push(pgrx::Uuid::from_bytes(*tenant));
                metrics.push(m.name().to_string());
                quantities.push(m.quantity(*c));
            }
        }
    }
    if tenants.is_empty() {
        return 0;
    }
    let n = tenants.len() as i64;
    Spi::run_with_args(
        "INSERT INTO sutra.usage_rollups AS r (tenant_id, metric, minute, quantity)
         SELECT t, m, date_trunc('minute', now()), q::numeric
         FROM unnest($1::uuid[], $2::text[], $3::float8[]) u(t, m, q)
         ON CONFLICT (tenant_id, metric, minute) DO UPDATE SET quantity = r.quantity + EXCLUDED.quantity",
        &[tenants.into(), metrics.into(), quantities.into()],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not write usage: {e}")));
    n
}

/// `sutra.flush_usage()`: writes this database's metered usage now (superusers and
/// sutra_service); returns the number of rows written.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn flush_usage() -> i64 {
    if !crate::backend::caller::is_service(crate::backend::caller::outer_user()) {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, "permission denied to flush usage");
    }
    flush_current_db()
}

/// Whether the postmaster asked this worker to stop (SIGTERM: smart, fast shutdown, or
/// `pg_terminate_backend`). pgrx's SIGTERM handler sets `ShutdownRequestPending`; reading it,
/// unlike `BackgroundWorker::sigterm_received`, does not consume the request.
fn stop_requested() -> bool {
    // SAFETY: a sig_atomic_t global that signal handlers set; a volatile read.
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

/// SIGUSR1 of the launcher: the postmaster signals a worker's start and exit to the process that
/// registered it with SIGUSR1. A background worker without a database connection ignores
/// SIGUSR1 by default, so without this handler those notices never wake the launcher's latch.
extern "C-unwind" fn launcher_sigusr1(_signal: i32) {
    // SAFETY: SetLatch is meant to be called from signal handlers (PostgreSQL's own handlers do
    // exactly this); errno is restored for the code the signal interrupted.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        pg_sys::SetLatch(pg_sys::MyLatch);
        *errno = saved;
    }
}

/// Sleeps on the latch for at most `timeout`; returns false once the worker should stop.
fn sleep(timeout: Duration) -> bool {
    // SAFETY: waits on this process's own latch; the timeout bounds the wait even if a wakeup
    // were missed, and the process exits if the postmaster dies.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    !stop_requested()
}

/// Starts a flush worker for `db` and waits until it has exited, or until this worker is asked to
/// stop. Returns false when it should stop.
fn flush_database(db: u32) -> bool {
    let worker = BackgroundWorkerBuilder::new("sutra metering flush")
        .set_type("sutra metering flush")
        .set_library("sutra")
        .set_function("sutra_metering_flush_main")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .enable_spi_access()
        // SAFETY: a plain global of this process.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .set_restart_time(None)
        .load_dynamic();
    let Ok(worker) = worker else {
        pgrx::log!("sutra: could not start a metering flush worker (max_worker_processes is reached)");
        return !stop_requested();
    };
    loop {
        // Once shutdown begins the postmaster starts no new worker and forgets this one; a worker
        // that runs finishes its transaction. Either way the launcher need not wait: what is not
        // written yet is saved with the rest at shutdown.
        if stop_requested() {
            return false;
        }
        match worker.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => {}
            Err(_) => return true,
        }
        // Woken by the postmaster's notice of the worker's exit; the timeout only bounds a wait
        // whose notice went astray.
        sleep(Duration::from_millis(500));
    }
}

/// The launcher: starts a flush for every database with pending counts, every interval.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn sutra_metering_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: installs a handler that only sets this process's latch.
    unsafe { pg_sys::pqsignal(pg_sys::SIGUSR1 as i32, Some(launcher_sigusr1)) };
    let interval = || Duration::from_secs(crate::guc::USAGE_FLUSH_INTERVAL.get().max(1) as u64);
    let mut next = std::time::Instant::now() + interval();
    shmem::note_launcher();
    loop {
        let now = std::time::Instant::now();
        if now < next {
            if !sleep(next - now) {
                return;
            }
            if BackgroundWorker::sighup_received() {
                // SAFETY: rereads the configuration file, as any process does on SIGHUP.
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
                next = next.min(std::time::Instant::now() + interval());
            }
            continue;
        }
        next = now + interval();
        shmem::note_launcher();
        for db in shmem::databases_with_pending() {
            if !flush_database(db) {
                return;
            }
        }
    }
}

/// A flush worker: connects to one database and writes its pending metering.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn sutra_metering_flush_main(arg: pg_sys::Datum) {
    let db = arg.value() as u32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    let yes = |sql: &str| Spi::get_one::<bool>(sql).ok().flatten().unwrap_or(false);
    // With the catalog's functions and operators, whatever search_path the database sets.
    let installed = BackgroundWorker::transaction(|| {
        crate::backend::caller::with_catalog_search_path(|| {
            let installed = yes("SELECT to_regclass('sutra.usage_rollups') IS NOT NULL");
            if installed {
                flush_current_db();
            } else {
                // No sutra here any more: nothing to meter into.
                take_pending(db);
            }
            installed
        })
    });
    if installed {
        shmem::note_flush();
    }
    // Then, in a transaction of its own (a failure leaves the flush done), the compaction of
    // older rollups and the audit log's retention, at most once an hour per database; not while
    // the database's sutra is of another version than this library (between a library upgrade
    // and its ALTER EXTENSION sutra UPDATE), whose catalog may lack what they use.
    if installed {
        BackgroundWorker::transaction(|| {
            crate::backend::caller::with_catalog_search_path(|| {
                let current = yes(&format!(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'sutra' AND extversion = '{}')",
                    env!("CARGO_PKG_VERSION")
                ));
                let due = current
                    && yes("SELECT EXISTS (SELECT 1 FROM sutra.usage_compaction
                                           WHERE last_run IS NULL OR last_run < now() - interval '1 hour')");
                if due {
                    let _ = Spi::run("SELECT sutra.compact_usage(), sutra.trim_audit_log()");
                }
            })
        });
    }
}
