//! Failed authentications: slowed down per key id and per client address, and audited. Only the
//! failing attempts are slowed: a valid key is admitted at once, so failures (an attacker's, or
//! another tenant's behind the same pooler) never delay anybody's valid authentication. Refused
//! statements (over a limit: [`queue_refusal`]) are audited and notified the same way, at most
//! once per tenant and limit in `sutra.refusal_audit_interval`.
//!
//! Both live in shared memory, because the failing statement aborts and takes any row it wrote
//! with it. Counts slow down the next attempts ([`sutra_core::throttle`]); each failure is also
//! queued as an event, and a short-lived background worker connected to the failing database
//! writes the queued events into `sutra.audit_log` within about a second. Events also go to the
//! server log at once. A queue overflow or a server stop before the worker ran loses queued events
//! (the server log keeps them); `dropped` counts overflows.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::{pg_sys, PGRXSharedMemory};
use sutra_core::throttle;

use crate::backend::caller;
use crate::backend::now_unix;

const SLOTS: usize = 1024;
const EVENTS: usize = 256;
const LAUNCHES: usize = 16;
const KIND_KEY: u8 = 1;
const KIND_CLIENT: u8 = 2;
const KIND_REFUSAL: u8 = 3;
/// The limits refusals are counted by; every usage cap counts as `usage_cap`.
pub const LIMITS: [&str; 8] = [
    "ops_per_second",
    "concurrent_statements",
    "connections",
    "rows_total",
    "rows_per_table",
    "storage_bytes",
    "vectors",
    "usage_cap",
];
/// What a queued event is.
const EVENT_AUTH_FAILURE: u8 = 0;
const EVENT_REFUSAL: u8 = 1;
const EVENT_SECRET_READ: u8 = 2;

#[derive(Copy, Clone, Default)]
#[repr(C)]
struct Slot {
    hash: u64,
    count: u32,
    last: i64,
}

#[derive(Copy, Clone)]
#[repr(C)]
struct Event {
    /// 0: free slot.
    db: u32,
    role: u32,
    at_us: i64,
    kind: u8,
    key_id: [u8; 16],
    key_len: u8,
    client: [u8; 46],
    client_len: u8,
    reason: [u8; 32],
    reason_len: u8,
    /// A refusal's tenant, limit, the value the statement would have reached, and the limit's
    /// value; a secret read's tenant and the secret's name (in `limit`).
    tenant: [u8; 16],
    limit: [u8; 64],
    limit_len: u8,
    value: f64,
    limit_value: f64,
    /// The user of the session's context, if a user granted it.
    user: [u8; 255],
    user_len: u8,
}

impl Event {
    /// An event of this backend's database and session role, now.
    fn new(kind: u8) -> Event {
        // SAFETY: plain backend globals.
        let (db, role) = unsafe { (pg_sys::MyDatabaseId, caller::outer_user()) };
        let mut e = Event { db: db.to_u32(), role: role.to_u32(), at_us: now_micros(), kind, ..Event::default() };
        if let Some(user) = super::context::peek_user() {
            // A user id is at most 255 bytes, so it is never cut.
            e.user_len = copy_into(&mut e.user, &user);
        }
        e
    }
}

impl Default for Event {
    fn default() -> Self {
        Event {
            db: 0,
            role: 0,
            at_us: 0,
            kind: EVENT_AUTH_FAILURE,
            key_id: [0; 16],
            key_len: 0,
            client: [0; 46],
            client_len: 0,
            reason: [0; 32],
            reason_len: 0,
            tenant: [0; 16],
            limit: [0; 64],
            limit_len: 0,
            value: 0.0,
            limit_value: 0.0,
            user: [0; 255],
            user_len: 0,
        }
    }
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Failures {
    slots: [Slot; SLOTS],
    /// Per (tenant, limit): when a refusal was last queued (`last`); apart from `slots`, so that
    /// refusals never take the place of failure counts.
    refusals: [Slot; SLOTS],
    events: [Event; EVENTS],
    next_event: u64,
    dropped: u64,
    /// Failed authentications since server start.
    auth_failures: u64,
    /// Refusals since server start, by [`LIMITS`].
    refused: [u64; LIMITS.len()],
    /// Per database: when a flushing worker was last started (Unix seconds).
    launches: [(u32, i64); LAUNCHES],
}

impl Default for Failures {
    fn default() -> Self {
        Failures {
            slots: [Slot::default(); SLOTS],
            refusals: [Slot::default(); SLOTS],
            events: [Event::default(); EVENTS],
            next_event: 0,
            dropped: 0,
            auth_failures: 0,
            refused: [0; LIMITS.len()],
            launches: [(0, 0); LAUNCHES],
        }
    }
}

// SAFETY: plain old data (integers and byte arrays), no pointers; valid at any bit pattern the
// code writes, and only accessed under the lock.
unsafe impl PGRXSharedMemory for Failures {}

pub static FAILURES: PgLwLock<Failures> = unsafe { PgLwLock::new(c"sutra_auth_failures") };

pub fn init() {
    pgrx::pg_shmem_init!(FAILURES);
}

fn copy_into<const N: usize>(dst: &mut [u8; N], s: &str) -> u8 {
    let n = s.len().min(N);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    n as u8
}

fn find(slots: &[Slot; SLOTS], hash: u64) -> Option<usize> {
    let start = (hash as usize) % SLOTS;
    (0..8).map(|i| (start + i) % SLOTS).find(|&i| slots[i].hash == hash)
}

/// The slot for `hash`, taking over the least recently used of its neighbourhood if needed.
fn slot_for(slots: &mut [Slot; SLOTS], hash: u64) -> &mut Slot {
    let i = find(slots, hash).unwrap_or_else(|| {
        let start = (hash as usize) % SLOTS;
        let i = (0..8).map(|i| (start + i) % SLOTS).min_by_key(|&i| slots[i].last).expect("8 candidates");
        slots[i] = Slot { hash, count: 0, last: 0 };
        i
    });
    &mut slots[i]
}

impl Failures {
    fn count(&self, hash: u64, now: i64) -> u32 {
        find(&self.slots, hash)
            .map(|i| throttle::current_count(self.slots[i].count, self.slots[i].last, now))
            .unwrap_or(0)
    }

    /// Queues an event; returns whether a writer should be started for its database (none
    /// started for it within the last second).
    fn push(&mut self, e: Event, now: i64) -> bool {
        let i = (self.next_event % EVENTS as u64) as usize;
        if self.events[i].db != 0 {
            self.dropped += 1;
        }
        let db = e.db;
        self.events[i] = e;
        self.next_event += 1;
        let slot = self.launches.iter().position(|(d, _)| *d == db).unwrap_or_else(|| {
            self.launches.iter().enumerate().min_by_key(|(_, (_, t))| *t).map(|(i, _)| i).expect("16 entries")
        });
        let due = self.launches[slot].0 != db || now - self.launches[slot].1 >= 1;
        if due {
            self.launches[slot] = (db, now);
        }
        due
    }
}

thread_local! {
    static CLIENT: std::cell::OnceCell<String> = const { std::cell::OnceCell::new() };
}

/// The client's address (`local` for a Unix socket or a background process), looked up once per
/// session: it does not change.
fn client_address() -> String {
    CLIENT.with(|c| {
        c.get_or_init(|| {
            Spi::get_one::<String>("SELECT coalesce(host(inet_client_addr()), 'local')")
                .ok()
                .flatten()
                .unwrap_or_else(|| "local".to_string())
        })
        .clone()
    })
}

/// Waits as long as recent failures of this key id (if any) or this client call for. Only a
/// failing attempt waits (see [`record`]): a valid credential is checked and admitted at full
/// speed, whatever failures came before from its client or for its key id.
fn throttle(key_id: Option<&str>) {
    let now = now_unix();
    let client = client_address();
    let failures = {
        let f = FAILURES.share();
        let by_key = key_id.map(|k| f.count(throttle::hash(KIND_KEY, k.as_bytes()), now)).unwrap_or(0);
        by_key.max(f.count(throttle::hash(KIND_CLIENT, client.as_bytes()), now))
    };
    let mut left = throttle::delay_ms(failures);
    while left > 0 {
        let step = left.min(100);
        // SAFETY: sleeping and checking for query cancel between steps, holding no lock.
        unsafe {
            pg_sys::pg_usleep((step * 1000) as _);
            pgrx::check_for_interrupts!();
        }
        left -= step;
    }
}

/// A successful authentication clears its key id's count.
pub fn forget(key_id: &str) {
    let hash = throttle::hash(KIND_KEY, key_id.as_bytes());
    if find(&FAILURES.share().slots, hash).is_none() {
        return;
    }
    let mut f = FAILURES.exclusive();
    if let Some(i) = find(&f.slots, hash) {
        f.slots[i].count = 0;
    }
}

/// Counts a failure, queues its audit event, and then holds the failing attempt back as long as
/// the recent failures of its key id and its client call for.
pub fn record(key_id: Option<&str>, reason: &str) {
    count_and_queue(key_id, reason);
    throttle(key_id);
}

fn count_and_queue(key_id: Option<&str>, reason: &str) {
    let now = now_unix();
    let client = client_address();
    pgrx::log!("sutra: failed authentication: {reason}, key id {}, client {client}", key_id.unwrap_or("-"));
    let mut e = Event::new(EVENT_AUTH_FAILURE);
    e.key_len = copy_into(&mut e.key_id, key_id.unwrap_or(""));
    e.client_len = copy_into(&mut e.client, &client);
    e.reason_len = copy_into(&mut e.reason, reason);
    let launch = {
        let mut f = FAILURES.exclusive();
        f.auth_failures += 1;
        for (kind, what) in [(KIND_KEY, key_id.unwrap_or("")), (KIND_CLIENT, client.as_str())] {
            if kind == KIND_KEY && what.is_empty() {
                continue;
            }
            let slot = slot_for(&mut f.slots, throttle::hash(kind, what.as_bytes()));
            slot.count = throttle::next_count(slot.count, slot.last, now);
            slot.last = now;
        }
        f.push(e, now)
    };
    if launch {
        start_writer();
    }
}

/// Queues the audit row and notification of a statement refused over a limit (`limit`: its
/// name, such as `rows_total` or `monthly.tokens`), unless one for the same tenant and limit was
/// queued within `sutra.refusal_audit_interval`. Called before the refusal is raised.
pub fn queue_refusal(tenant: [u8; 16], limit: &str, value: f64, limit_value: f64) {
    let now = now_unix();
    let interval = crate::guc::REFUSAL_AUDIT_INTERVAL.get() as i64;
    let hash = throttle::hash(KIND_REFUSAL, &[&tenant[..], limit.as_bytes()].concat());
    let mut e = Event { tenant, value, limit_value, ..Event::new(EVENT_REFUSAL) };
    e.limit_len = copy_into(&mut e.limit, limit);
    let launch = {
        let mut f = FAILURES.exclusive();
        f.refused[LIMITS.iter().position(|l| *l == limit).unwrap_or(LIMITS.len() - 1)] += 1;
        let slot = slot_for(&mut f.refusals, hash);
        if slot.last != 0 && now - slot.last < interval {
            return;
        }
        slot.last = now;
        f.push(e, now)
    };
    if launch {
        start_writer();
    }
}

/// Queues the audit row of a read of tenant secret `name`: written whether or not the reading
/// transaction commits. Also logged at once (the name, never the value).
pub fn queue_secret_read(tenant: [u8; 16], name: &str) {
    pgrx::log!("sutra: secret \"{name}\" of tenant {} read", pgrx::Uuid::from_bytes(tenant));
    let mut e = Event { tenant, ..Event::new(EVENT_SECRET_READ) };
    e.limit_len = copy_into(&mut e.limit, name);
    let launch = FAILURES.exclusive().push(e, now_unix());
    if launch {
        start_writer();
    }
}

/// Starts a writer of this backend's database's queued events.
fn start_writer() {
    // SAFETY: a plain backend global.
    let db = unsafe { pg_sys::MyDatabaseId };
    let started = BackgroundWorkerBuilder::new("sutra audit flush")
        .set_type("sutra audit flush")
        .set_library("sutra")
        .set_function("sutra_audit_flush_main")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32())))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic();
    if started.is_err() {
        pgrx::log!("sutra: could not start the audit flush worker; failed authentications and refusals stay queued");
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Ends the writer of database `db` unless events arrived meanwhile: under the lock, so that a
/// failure recorded after this sees no writer and starts one.
fn retire(db: u32) -> bool {
    let mut f = FAILURES.exclusive();
    if f.events.iter().any(|e| e.db == db) {
        return false;
    }
    if let Some(slot) = f.launches.iter_mut().find(|(d, _)| *d == db) {
        *slot = (db, 0);
    }
    true
}

/// Takes the queued events of database `db`.
fn take_events(db: u32) -> Vec<Event> {
    let mut f = FAILURES.exclusive();
    let mut out = Vec::new();
    for e in f.events.iter_mut().filter(|e| e.db == db) {
        out.push(*e);
        e.db = 0;
    }
    out.sort_by_key(|e| e.at_us);
    out
}

fn text(bytes: &[u8], len: u8) -> String {
    String::from_utf8_lossy(&bytes[..len as usize]).into_owned()
}

/// Entry point of the flushing worker: connects to the database given as argument and writes its
/// queued events into `sutra.audit_log`, until none have arrived for a while.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn sutra_audit_flush_main(arg: pg_sys::Datum) {
    let db = arg.value() as u32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    let mut idle = 0;
    // A stop request (smart or fast shutdown) ends the loop at once: wait_latch reports it, and
    // reading it consumes it, so its answer is what decides.
    loop {
        let events = take_events(db);
        if events.is_empty() {
            if idle >= 5 && retire(db) {
                break;
            }
            idle += 1;
            if !BackgroundWorker::wait_latch(Some(Duration::from_millis(200))) {
                break;
            }
            continue;
        }
        idle = 0;
        // With the catalog's functions and operators, whatever search_path the database sets.
        BackgroundWorker::transaction(|| {
            crate::backend::caller::with_catalog_search_path(|| {
                let installed = Spi::get_one::<bool>("SELECT to_regclass('sutra.audit_log') IS NOT NULL")
                    .ok()
                    .flatten()
                    .unwrap_or(false);
                if !installed {
                    pgrx::log!(
                        "sutra: {} failed authentication(s) and refusal(s) not audited: sutra is not installed here",
                        events.len()
                    );
                    return;
                }
                for e in &events {
                    if e.kind == EVENT_REFUSAL {
                        write_refusal(e);
                        continue;
                    }
                    if e.kind == EVENT_SECRET_READ {
                        write_secret_read(e);
                        continue;
                    }
                    let key_id = text(&e.key_id, e.key_len);
                    let r = Spi::run_with_args(
                        "INSERT INTO sutra.audit_log (at, tenant_id, action, actor, session_role, client_addr, details)
                     VALUES (to_timestamp($1 / 1e6), (SELECT tenant_id FROM sutra.api_key_store WHERE key_id = $2),
                             'auth.failure', coalesce((SELECT rolname FROM pg_roles WHERE oid = $3), '?'),
                             coalesce((SELECT rolname FROM pg_roles WHERE oid = $3), '?'),
                             CASE WHEN $4 <> 'local' THEN $4::inet END,
                             jsonb_strip_nulls(jsonb_build_object('key_id', nullif($2, ''), 'reason', $5,
                                                                  'client', $4)))",
                        &[
                            e.at_us.into(),
                            key_id.into(),
                            pg_sys::Oid::from(e.role).into(),
                            text(&e.client, e.client_len).into(),
                            text(&e.reason, e.reason_len).into(),
                        ],
                    );
                    if let Err(err) = r {
                        pgrx::log!("sutra: could not audit a failed authentication: {err}");
                    }
                }
            })
        });
    }
}

/// Writes a queued event's audit row: its time, tenant and role, `action` and `details`.
fn audit_row(e: &Event, action: &str, details: serde_json::Value) -> Result<(), pgrx::spi::Error> {
    Spi::run_with_args(
        "INSERT INTO sutra.audit_log (at, tenant_id, action, actor, session_role, details, user_id)
         VALUES (to_timestamp($1 / 1e6), $2, $3, coalesce((SELECT rolname FROM pg_roles WHERE oid = $4), '?'),
                 coalesce((SELECT rolname FROM pg_roles WHERE oid = $4), '?'), $5, nullif($6, ''))",
        &[
            e.at_us.into(),
            pgrx::Uuid::from_bytes(e.tenant).into(),
            action.into(),
            pg_sys::Oid::from(e.role).into(),
            pgrx::JsonB(details).into(),
            text(&e.user, e.user_len).into(),
        ],
    )
}

fn write_secret_read(e: &Event) {
    if let Err(err) = audit_row(e, "secret.read", serde_json::json!({ "name": text(&e.limit, e.limit_len) })) {
        pgrx::log!("sutra: could not audit a secret read: {err}");
    }
}

/// Writes a refusal's audit row and notifies channel `sutra_limits` with the same details
/// (delivered when the writer's transaction commits).
fn write_refusal(e: &Event) {
    let r = Spi::get_one_with_args::<pgrx::JsonB>(
        "SELECT jsonb_build_object('limit', $1, 'value', $2, 'limit_value', $3)",
        &[text(&e.limit, e.limit_len).into(), e.value.into(), e.limit_value.into()],
    )
    .and_then(|details| {
        let details = details.map_or(serde_json::Value::Null, |d| d.0);
        audit_row(e, "limit.refused", details.clone())?;
        Spi::run_with_args(
            "SELECT pg_notify('sutra_limits', ($1 || jsonb_build_object('tenant', $2, 'event', 'limit.refused'))::text)",
            &[pgrx::JsonB(details).into(), pgrx::Uuid::from_bytes(e.tenant).into()],
        )
    });
    if let Err(err) = r {
        pgrx::log!("sutra: could not audit a refusal: {err}");
    }
}

/// Failed authentications, refusals by limit ([`LIMITS`]) and audit events lost to a full queue,
/// since server start, for `sutra.metrics()`.
pub fn counters() -> (u64, [u64; LIMITS.len()], u64) {
    let f = FAILURES.share();
    (f.auth_failures, f.refused, f.dropped)
}

/// `sutra.reset_auth_failures()`: forgets every failure count (superusers only), e.g. after an
/// incident has been dealt with. Returns how many counts were cleared.
#[pg_extern(volatile)]
fn reset_auth_failures() -> i64 {
    let mut f = FAILURES.exclusive();
    let n = f.slots.iter().filter(|s| s.hash != 0).count() as i64;
    f.slots = [Slot::default(); SLOTS];
    n
}
