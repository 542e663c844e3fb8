//! The per-tenant state sutra keeps in shared memory: rate limiter, concurrency and connection
//! counts, quota counts, and metering counters not yet flushed to `sutra.usage_rollups`.
//!
//! Two hash tables of fixed size, allocated at server start and sized by `sutra.max_tenants`
//! (slots of (database, tenant)) and `sutra.max_tenant_table_counts` (slots of (database, tenant
//! table, tenant)), plus an overflow list for the metering of tenants whose slot was reused.
//! Lookups take the tables' lock shared; claiming a slot takes it exclusive. Everything in a slot
//! is an atomic, so the hot paths (a rate-limit check, a counter update) take no lock once a
//! backend holds its slot.
//!
//! **A slot is reused, never lost.** Whoever keeps a reference to a slot holds a [`Pin`] on it: a
//! session attached to its tenant, a running statement, a transaction that wrote the tenant's
//! rows. When a new tenant needs a slot and none is free near its hash, the least recently used
//! slot that nobody pins and whose rate limiter is idle is given to it: its unflushed metering
//! moves to the overflow list (the flush writes it as usual), its quota counts are dropped and
//! counted again from the tables when the tenant comes back, its limiter carries no state. When
//! every candidate is pinned (tenants active right now), the statement that needs a slot fails
//! with 53400 naming the setting to raise: a tenant is never let through unlimited or unmetered.
//!
//! The state is not transactional and not crash-safe: it starts empty at every server start (and
//! after a crash restart) and is rebuilt as tenants come back; metering loses at most what was not
//! yet flushed.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use pgrx::{pg_sys, PgSqlErrorCode};

/// How many slots from a key's hash a lookup probes, and where a new tenant's slot is found.
const MAX_PROBE: usize = 512;

const EMPTY: u32 = 0;
const READY: u32 = 2;
/// A freed slot: reusable, but a lookup probes past it.
const FREED: u32 = 3;

/// What a slot of either table starts with: its state, who holds it, and its key: database, table
/// (0 in tenant slots) and tenant.
#[repr(C)]
pub struct SlotHead {
    state: AtomicU32,
    db: AtomicU32,
    relid: AtomicU32,
    /// References held to the slot (see [`Pin`]); a pinned slot is never reused.
    pins: AtomicU32,
    /// When the slot was last looked up, seconds since the Unix epoch (least recently used first).
    last_used: AtomicI64,
    tenant: UnsafeCell<[u8; 16]>,
}

impl SlotHead {
    fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    fn db(&self) -> u32 {
        self.db.load(Ordering::Relaxed)
    }

    fn tenant(&self) -> [u8; 16] {
        // SAFETY: see `impl Sync for Slot`.
        unsafe { *self.tenant.get() }
    }

    fn is(&self, db: u32, relid: u32, tenant: &[u8; 16]) -> bool {
        self.db() == db && self.relid.load(Ordering::Relaxed) == relid && self.tenant() == *tenant
    }

    /// Writes the key. Only under the exclusive lock, on a slot nobody pins.
    fn set_key(&self, db: u32, relid: u32, tenant: &[u8; 16]) {
        self.db.store(db, Ordering::Relaxed);
        self.relid.store(relid, Ordering::Relaxed);
        // SAFETY: under the exclusive lock, on an unpinned slot: nobody reads `tenant` now.
        unsafe { *self.tenant.get() = *tenant };
    }
}

/// One tenant's state.
#[repr(C)]
pub struct Slot {
    head: SlotHead,
    /// GCRA theoretical arrival time, nanoseconds since the Unix epoch.
    pub tat: AtomicI64,
    /// Statements running now.
    pub active: AtomicI32,
    /// Sessions attached to the tenant (holding its context) now.
    pub connections: AtomicI32,
    /// Metered since the last flush.
    pub pending: Counters,
    /// Metered since the slot was claimed (what `sutra.metrics()` reports).
    pub total: Counters,
    pub rate_limited: AtomicU64,
    pub concurrency_refused: AtomicU64,
    pub connections_refused: AtomicU64,
    pub quota_refused: AtomicU64,
    /// Quota counts: committed rows plus those of transactions in flight (see `quota`).
    pub quota: QuotaCounts,
}

/// One tenant's counts in one tenant table.
#[repr(C)]
pub struct TableSlot {
    head: SlotHead,
    pub quota: QuotaCounts,
}

/// Rows, bytes and vectors of a tenant (in all its tables, or in one).
#[repr(C)]
#[derive(Default)]
pub struct QuotaCounts {
    /// 0: not counted since server start; 1: being counted; 2: counted.
    pub known: AtomicU32,
    pub rows: AtomicI64,
    pub bytes: AtomicI64,
    pub vectors: AtomicI64,
}

impl QuotaCounts {
    /// Whether the counts hold the tenant's rows (counted from the tables since server start).
    pub fn is_known(&self) -> bool {
        self.known.load(Ordering::Acquire) == 2
    }

    pub fn read(&self) -> (i64, i64, i64) {
        (self.rows.load(Ordering::Acquire), self.bytes.load(Ordering::Acquire), self.vectors.load(Ordering::Acquire))
    }

    /// Adds to the counts; returns them after.
    pub fn add(&self, rows: i64, bytes: i64, vectors: i64) -> (i64, i64, i64) {
        (
            self.rows.fetch_add(rows, Ordering::AcqRel) + rows,
            self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes,
            self.vectors.fetch_add(vectors, Ordering::AcqRel) + vectors,
        )
    }

    /// Replaces the counts with a recount, which makes them known.
    pub fn set(&self, rows: i64, bytes: i64, vectors: i64) {
        self.rows.store(rows, Ordering::Release);
        self.bytes.store(bytes, Ordering::Release);
        self.vectors.store(vectors, Ordering::Release);
        self.known.store(2, Ordering::Release);
    }

    /// Forgets the counts: the next use counts them from the tables again.
    pub fn forget(&self) {
        self.known.store(0, Ordering::Release);
        self.rows.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.vectors.store(0, Ordering::Relaxed);
    }

    /// Sets counts never counted before; counts another process counted stay as they are.
    pub fn claim(&self, rows: i64, bytes: i64, vectors: i64) {
        if self.known.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.set(rows, bytes, vectors);
        }
    }
}

/// The metered quantities.
#[repr(C)]
#[derive(Default)]
pub struct Counters {
    pub statements: AtomicU64,
    pub rows_read: AtomicU64,
    pub rows_written: AtomicU64,
    pub vector_searches: AtomicU64,
    pub bytes_written: AtomicU64,
    pub connection_ms: AtomicU64,
}

/// The metered quantities, in the order of [`Counters`]' fields and of every count array.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Metric {
    Statements,
    RowsRead,
    RowsWritten,
    VectorSearches,
    BytesWritten,
    /// Counted in milliseconds, reported in seconds.
    ConnectionTime,
}

/// One count per metric, indexed by [`Metric::index`].
pub type Counts = [u64; Metric::COUNT];

impl Metric {
    pub const COUNT: usize = 6;
    pub const ALL: [Metric; Metric::COUNT] = [
        Metric::Statements,
        Metric::RowsRead,
        Metric::RowsWritten,
        Metric::VectorSearches,
        Metric::BytesWritten,
        Metric::ConnectionTime,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The name in `sutra.usage_rollups.metric`, `usage_summary` and `sutra.metrics()`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Statements => "statements",
            Metric::RowsRead => "rows_read",
            Metric::RowsWritten => "rows_written",
            Metric::VectorSearches => "vector_searches",
            Metric::BytesWritten => "bytes_written",
            Metric::ConnectionTime => "connection_seconds",
        }
    }

    /// A stored count as a quantity in the metric's unit.
    pub fn quantity(self, count: u64) -> f64 {
        match self {
            Metric::ConnectionTime => count as f64 / 1000.0,
            _ => count as f64,
        }
    }
}

impl Counters {
    fn fields(&self) -> [&AtomicU64; Metric::COUNT] {
        [
            &self.statements,
            &self.rows_read,
            &self.rows_written,
            &self.vector_searches,
            &self.bytes_written,
            &self.connection_ms,
        ]
    }

    pub fn read(&self) -> Counts {
        self.fields().map(|f| f.load(Ordering::Relaxed))
    }

    /// Takes the counts (leaving zero), for a flush.
    pub fn take(&self) -> Counts {
        self.fields().map(|f| f.swap(0, Ordering::AcqRel))
    }

    /// Puts counts back (a flush that failed).
    pub fn give_back(&self, counts: Counts) {
        for (f, n) in self.fields().into_iter().zip(counts) {
            f.fetch_add(n, Ordering::AcqRel);
        }
    }
}

// SAFETY: every field is an atomic, except `tenant`, which is written only under the tables'
// lock held exclusively, to a slot nobody pins, and read under the lock or through a pin.
unsafe impl Sync for Slot {}
// SAFETY: as for Slot.
unsafe impl Sync for TableSlot {}

impl Slot {
    /// Adds to a metered quantity (pending, the slot's total and the server's).
    pub fn meter(&self, metric: Metric, n: u64) {
        if n > 0 {
            self.pending.fields()[metric.index()].fetch_add(n, Ordering::Relaxed);
            self.total.fields()[metric.index()].fetch_add(n, Ordering::Relaxed);
            if let Some(h) = header() {
                h.totals.fields()[metric.index()].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Counts a refusal of the tenant (in the slot and for the server).
    pub fn refuse(&self, why: Refusal) {
        let counter = match why {
            Refusal::Rate => &self.rate_limited,
            Refusal::Concurrency => &self.concurrency_refused,
            Refusal::Connections => &self.connections_refused,
            Refusal::Quota => &self.quota_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = header() {
            h.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl TableSlot {
    pub fn relid(&self) -> u32 {
        self.head.relid.load(Ordering::Relaxed)
    }
}

/// A slot of one of the shared tables.
pub trait Keyed: Sync + 'static {
    type Key: Copy;
    fn head(&self) -> &SlotHead;
    fn matches(&self, key: &Self::Key) -> bool;
    /// Makes the slot `key`'s, with every count zero. Only under the exclusive lock, on a slot
    /// nobody pins.
    fn reset(&self, key: &Self::Key);

    /// The database of the slot's key.
    fn db(&self) -> u32 {
        self.head().db()
    }

    /// The tenant of the slot's key.
    fn tenant(&self) -> [u8; 16] {
        self.head().tenant()
    }
}

impl Keyed for Slot {
    type Key = (u32, [u8; 16]);
    fn head(&self) -> &SlotHead {
        &self.head
    }
    fn matches(&self, key: &Self::Key) -> bool {
        self.head.is(key.0, 0, &key.1)
    }
    fn reset(&self, key: &Self::Key) {
        self.head.set_key(key.0, 0, &key.1);
        self.tat.store(0, Ordering::Relaxed);
        self.active.store(0, Ordering::Relaxed);
        self.connections.store(0, Ordering::Relaxed);
        self.pending.take();
        self.total.take();
        for c in [&self.rate_limited, &self.concurrency_refused, &self.connections_refused, &self.quota_refused] {
            c.store(0, Ordering::Relaxed);
        }
        self.quota.forget();
    }
}

impl Keyed for TableSlot {
    type Key = (u32, u32, [u8; 16]);
    fn head(&self) -> &SlotHead {
        &self.head
    }
    fn matches(&self, key: &Self::Key) -> bool {
        self.head.is(key.0, key.1, &key.2)
    }
    fn reset(&self, key: &Self::Key) {
        self.head.set_key(key.0, key.1, &key.2);
        self.quota.forget();
    }
}

/// A reference to a slot that keeps it from being given to another key: taken by a lookup, given
/// up when dropped.
pub struct Pin<S: Keyed>(&'static S);

impl<S: Keyed> Pin<S> {
    /// Pins a slot found under the lock (or already pinned by the caller).
    fn new(s: &'static S) -> Pin<S> {
        s.head().pins.fetch_add(1, Ordering::AcqRel);
        Pin(s)
    }

    /// The slot itself, for as long as the pin is held.
    pub fn get(&self) -> &'static S {
        self.0
    }
}

impl<S: Keyed> Clone for Pin<S> {
    fn clone(&self) -> Pin<S> {
        // Already pinned: a second pin needs no lock.
        Pin::new(self.0)
    }
}

impl<S: Keyed> std::ops::Deref for Pin<S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.0
    }
}

impl<S: Keyed> Drop for Pin<S> {
    fn drop(&mut self) {
        self.0.head().pins.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Metering of tenants whose slot was given to another tenant, waiting for the flush.
#[repr(C)]
struct Spilled {
    used: AtomicU32,
    db: AtomicU32,
    tenant: UnsafeCell<[u8; 16]>,
    counts: Counters,
}

/// What the tables share: their sizes, and counters of their life.
#[repr(C)]
struct Header {
    capacity: usize,
    table_capacity: usize,
    spill_capacity: usize,
    /// Slots given to another key so far (per-backend caches of what a slot held check it).
    reused: AtomicU64,
    /// Shards of tenant tables made or dropped on this node so far (a Citus worker's caches of
    /// the shards it holds check it).
    shards_changed: AtomicU64,
    /// Statements refused because every candidate slot was pinned.
    refused: AtomicU64,
    /// Every tenant's metering since server start, whatever slot it was counted in.
    totals: Counters,
    /// Every tenant's refusals since server start, by [`Refusal`].
    refusals: [AtomicU64; Refusal::COUNT],
    /// When the metering launcher last looked for pending metering, and when a flush last
    /// committed (Unix seconds; 0: not yet).
    launcher_seen: AtomicI64,
    last_flush: AtomicI64,
}

/// Why a tenant's statement or context was refused.
#[derive(Clone, Copy)]
pub enum Refusal {
    Rate,
    Concurrency,
    Connections,
    Quota,
}

impl Refusal {
    pub const COUNT: usize = 4;
}

static mut HEADER: *mut Header = std::ptr::null_mut();
static mut TABLE: *mut Slot = std::ptr::null_mut();
static mut TABLES: *mut TableSlot = std::ptr::null_mut();
static mut SPILL: *mut Spilled = std::ptr::null_mut();
static mut LOCK: *mut pg_sys::LWLock = std::ptr::null_mut();
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
/// What runs in the postmaster once the tables exist (reading back saved metering).
static mut AFTER_STARTUP: Option<fn()> = None;
const LOCK_TRANCHE: &std::ffi::CStr = c"sutra tenants";

/// Sizes from the settings (fixed at server start).
fn sizes() -> (usize, usize, usize) {
    let capacity = crate::guc::MAX_TENANTS.get().max(16) as usize;
    let table_capacity = crate::guc::MAX_TENANT_TABLE_COUNTS.get().max(16) as usize;
    (capacity, table_capacity, capacity.max(1024))
}

fn size() -> usize {
    let (capacity, table_capacity, spill) = sizes();
    std::mem::size_of::<Header>()
        + std::mem::size_of::<Slot>() * capacity
        + std::mem::size_of::<TableSlot>() * table_capacity
        + std::mem::size_of::<Spilled>() * spill
}

/// Bytes of shared memory per tracked tenant, and per tenant and table.
pub fn slot_size() -> (usize, usize) {
    (std::mem::size_of::<Slot>() + std::mem::size_of::<Spilled>(), std::mem::size_of::<TableSlot>())
}

/// Reserves and sets up the tables; `after_startup` runs once they exist.
pub fn init(after_startup: fn()) {
    // SAFETY: _PG_init, single-threaded in the postmaster; hooks are chained.
    unsafe {
        AFTER_STARTUP = Some(after_startup);
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request() {
    if let Some(prev) = PREV_REQUEST {
        prev();
    }
    pg_sys::RequestAddinShmemSpace(size());
    pg_sys::RequestNamedLWLockTranche(LOCK_TRANCHE.as_ptr(), 1);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup() {
    if let Some(prev) = PREV_STARTUP {
        prev();
    }
    let (capacity, table_capacity, spill) = sizes();
    let mut found = false;
    let p = pg_sys::ShmemInitStruct(c"sutra tenants".as_ptr(), size(), &mut found) as *mut u8;
    if !found {
        // All zero is a table of empty slots: every field is an integer or an atomic.
        std::ptr::write_bytes(p, 0, size());
        let h = p as *mut Header;
        (*h).capacity = capacity;
        (*h).table_capacity = table_capacity;
        (*h).spill_capacity = spill;
    }
    HEADER = p as *mut Header;
    let mut at = p.add(std::mem::size_of::<Header>());
    TABLE = at as *mut Slot;
    at = at.add(std::mem::size_of::<Slot>() * capacity);
    TABLES = at as *mut TableSlot;
    at = at.add(std::mem::size_of::<TableSlot>() * table_capacity);
    SPILL = at as *mut Spilled;
    LOCK = &raw mut (*pg_sys::GetNamedLWLockTranche(LOCK_TRANCHE.as_ptr())).lock;
    if let Some(after) = AFTER_STARTUP {
        after();
    }
}

fn hash(db: u32, tenant: &[u8; 16]) -> usize {
    sutra_core::fnv1a(db as u64, tenant) as usize
}

/// A table in shared memory as a slice: empty before shared memory exists.
///
/// # Safety
/// `p` is null or points to `n` slots that live for the rest of the process.
unsafe fn shared<S>(p: *mut S, n: usize) -> &'static [S] {
    if p.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(p, n)
    }
}

fn header() -> Option<&'static Header> {
    // SAFETY: HEADER is null or set once, by the startup hook, to the live header.
    unsafe { HEADER.as_ref() }
}

fn tenant_table() -> &'static [Slot] {
    // SAFETY: TABLE is null or set once, by the startup hook, to `capacity` slots.
    header().map_or(&[], |h| unsafe { shared(TABLE, h.capacity) })
}

fn count_table() -> &'static [TableSlot] {
    // SAFETY: TABLES is null or set once, by the startup hook, to `table_capacity` slots.
    header().map_or(&[], |h| unsafe { shared(TABLES, h.table_capacity) })
}

fn spill_list() -> &'static [Spilled] {
    // SAFETY: SPILL is null or set once, by the startup hook, to `spill_capacity` entries.
    header().map_or(&[], |h| unsafe { shared(SPILL, h.spill_capacity) })
}

/// Runs `f` with the tables' lock held (shared or exclusive). `f` must not raise an error while
/// it holds the lock (an error would release it at abort, but leave a half-made change).
fn locked<T>(exclusive: bool, f: impl FnOnce() -> T) -> T {
    let mode = if exclusive { pg_sys::LWLockMode::LW_EXCLUSIVE } else { pg_sys::LWLockMode::LW_SHARED };
    // SAFETY: LOCK was set by the startup hook before any backend ran; LWLockAcquire and
    // LWLockRelease pair up here, and an error in between releases every LWLock at abort.
    unsafe {
        pg_sys::LWLockAcquire(LOCK, mode);
        let out = f();
        pg_sys::LWLockRelease(LOCK);
        out
    }
}

/// The slot of `key` in `table`, probing from `start`; the caller holds the lock.
fn find_in<S: Keyed>(table: &'static [S], start: usize, key: &S::Key) -> Option<&'static S> {
    for i in 0..MAX_PROBE.min(table.len()) {
        let s = &table[(start + i) % table.len()];
        match s.head().state.load(Ordering::Acquire) {
            EMPTY => return None,
            READY if s.matches(key) => return Some(s),
            _ => {}
        }
    }
    None
}

/// The slots of `table` that hold a key.
fn in_use<S: Keyed>(table: &'static [S]) -> impl Iterator<Item = &'static S> {
    table.iter().filter(|s| s.head().is_ready())
}

/// The table is full around a key: every candidate slot is in use right now.
#[derive(Debug)]
pub struct Full;

/// The slot of `key`, pinned: found under the shared lock, or claimed under the exclusive lock
/// (a free slot near the hash, else the least recently used one `evict` agrees to give up).
fn pin_or_claim<S: Keyed>(
    table: &'static [S],
    start: usize,
    key: &S::Key,
    mut evict: impl FnMut(&'static S) -> bool,
) -> Result<Pin<S>, Full> {
    if table.is_empty() {
        return Err(Full);
    }
    let now = crate::backend::now_unix();
    let touch = |s: &'static S| {
        if s.head().last_used.load(Ordering::Relaxed) != now {
            s.head().last_used.store(now, Ordering::Relaxed);
        }
        Pin::new(s)
    };
    if let Some(pin) = locked(false, || find_in(table, start, key).map(touch)) {
        return Ok(pin);
    }
    locked(true, || {
        let mut free = None;
        for i in 0..MAX_PROBE.min(table.len()) {
            let s = &table[(start + i) % table.len()];
            match s.head().state.load(Ordering::Acquire) {
                READY if s.matches(key) => return Ok(touch(s)),
                READY => {}
                state => {
                    free = free.or(Some(s));
                    if state == EMPTY {
                        break;
                    }
                }
            }
        }
        let s = match free {
            Some(s) => s,
            None => {
                // Least recently used first; `evict` says whether a slot can go (and saves what
                // must outlive it).
                let mut candidates: Vec<&'static S> = (0..MAX_PROBE.min(table.len()))
                    .map(|i| &table[(start + i) % table.len()])
                    .filter(|s| {
                        s.head().state.load(Ordering::Acquire) == READY && s.head().pins.load(Ordering::Acquire) == 0
                    })
                    .collect();
                candidates.sort_by_key(|s| s.head().last_used.load(Ordering::Relaxed));
                let Some(s) = candidates.into_iter().find(|s| evict(s)) else {
                    if let Some(h) = header() {
                        h.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(Full);
                };
                if let Some(h) = header() {
                    h.reused.fetch_add(1, Ordering::AcqRel);
                }
                s.head().state.store(FREED, Ordering::Release);
                s
            }
        };
        s.reset(key);
        s.head().state.store(READY, Ordering::Release);
        Ok(touch(s))
    })
}

/// The slot of `tenant` in database `db`, pinned; claimed if new (an idle tenant's slot is
/// reused when none is free). `Err(Full)` when every candidate slot is in use right now.
pub fn slot(db: u32, tenant: &[u8; 16]) -> Result<Pin<Slot>, Full> {
    let now = crate::backend::now_ns();
    pin_or_claim(tenant_table(), hash(db, tenant), &(db, *tenant), |s| {
        // A limiter whose schedule has passed carries no state; unflushed metering moves to the
        // overflow list (or the slot stays when that is full).
        s.tat.load(Ordering::Acquire) <= now
            && s.active.load(Ordering::Acquire) == 0
            && s.connections.load(Ordering::Acquire) == 0
            && spill_add(s.db(), &s.tenant(), s.pending.read())
            && {
                s.pending.take();
                true
            }
    })
}

/// The counts of `tenant` in table `relid` of database `db`, pinned; claimed if new. A slot is
/// reused only when its tenant's own slot is not pinned (a session of that tenant checked its
/// counts before its statement and counts on them being kept).
pub fn table_slot(db: u32, relid: u32, tenant: &[u8; 16]) -> Result<Pin<TableSlot>, Full> {
    pin_or_claim(count_table(), hash(db ^ relid.rotate_left(16), tenant), &(db, relid, *tenant), |t| {
        let owner = (t.db(), t.tenant());
        find_in(tenant_table(), hash(owner.0, &owner.1), &owner)
            .is_none_or(|s| s.head.pins.load(Ordering::Acquire) == 0)
    })
}

/// The slot of `tenant` if it has one now (nothing is claimed), pinned.
pub fn find(db: u32, tenant: &[u8; 16]) -> Option<Pin<Slot>> {
    let table = tenant_table();
    if table.is_empty() {
        return None;
    }
    locked(false, || find_in(table, hash(db, tenant), &(db, *tenant)).map(Pin::new))
}

/// The metering launcher is alive and looking for pending metering.
pub fn note_launcher() {
    if let Some(h) = header() {
        h.launcher_seen.store(crate::backend::now_unix(), Ordering::Relaxed);
    }
}

/// A flush of metering committed.
pub fn note_flush() {
    if let Some(h) = header() {
        h.last_flush.store(crate::backend::now_unix(), Ordering::Relaxed);
    }
}

/// When the launcher was last seen and a flush last committed (Unix seconds; 0: not yet).
pub fn metering_health() -> (i64, i64) {
    header().map_or((0, 0), |h| (h.launcher_seen.load(Ordering::Relaxed), h.last_flush.load(Ordering::Relaxed)))
}

/// How many slots were given to another key so far: a per-backend cache of what slots held
/// (quota counts known) holds while this does not change.
pub fn reused() -> u64 {
    header().map_or(0, |h| h.reused.load(Ordering::Acquire))
}

/// How many times shards of tenant tables were made or dropped here (see [`forget_quota_counts`]).
pub fn shards_changed() -> u64 {
    header().map_or(0, |h| h.shards_changed.load(Ordering::Acquire))
}

/// The tenant shards this node holds changed: the quota counts of database `db` are to be
/// counted again from its tables, and the caches of what it holds are stale.
pub fn forget_quota_counts(db: u32) {
    for_each_slot(|s| {
        if s.db() == db {
            s.quota.forget();
        }
    });
    for_each_table_slot(|t| {
        if t.db() == db {
            t.quota.forget();
        }
    });
    if let Some(h) = header() {
        h.shards_changed.fetch_add(1, Ordering::AcqRel);
    }
}

/// The tables' sizes, slots in use, slots reused and statements refused, for `sutra.metrics()`.
pub fn occupancy() -> [i64; 6] {
    let Some(h) = header() else { return [0; 6] };
    let (tenants, tables) = locked(false, || (in_use(tenant_table()).count(), in_use(count_table()).count()));
    [
        h.capacity as i64,
        tenants as i64,
        h.table_capacity as i64,
        tables as i64,
        h.reused.load(Ordering::Relaxed) as i64,
        h.refused.load(Ordering::Relaxed) as i64,
    ]
}

/// Every tenant's metering and refusals since server start (monotonic: slot reuse loses nothing).
pub fn server_totals() -> (Counts, [u64; Refusal::COUNT]) {
    match header() {
        Some(h) => (h.totals.read(), std::array::from_fn(|i| h.refusals[i].load(Ordering::Relaxed))),
        None => ([0; Metric::COUNT], [0; Refusal::COUNT]),
    }
}

/// Calls `f` on every slot in use, under the shared lock (`f` must not raise an error).
pub fn for_each_slot(mut f: impl FnMut(&Slot)) {
    if tenant_table().is_empty() {
        return;
    }
    locked(false, || {
        for s in in_use(tenant_table()) {
            f(s)
        }
    })
}

/// Calls `f` on every (tenant, table) slot in use, under the shared lock (`f` must not raise).
pub fn for_each_table_slot(mut f: impl FnMut(&TableSlot)) {
    if count_table().is_empty() {
        return;
    }
    locked(false, || {
        for s in in_use(count_table()) {
            f(s)
        }
    })
}

/// The entries of the overflow list that hold counts.
fn spilled() -> impl Iterator<Item = &'static Spilled> {
    spill_list().iter().filter(|e| e.used.load(Ordering::Acquire) == 1)
}

/// Adds counts to the overflow list (merged with the tenant's entry); false when it is full.
/// The caller holds the lock exclusively, or is the postmaster before any backend runs.
fn spill_add(db: u32, tenant: &[u8; 16], counts: Counts) -> bool {
    if counts.iter().all(|c| *c == 0) {
        return true;
    }
    let list = spill_list();
    let mut free = None;
    for e in list {
        if e.used.load(Ordering::Acquire) == 0 {
            free = free.or(Some(e));
        // SAFETY: a used entry's tenant is written before `used` is set, under the lock.
        } else if e.db.load(Ordering::Relaxed) == db && unsafe { *e.tenant.get() } == *tenant {
            e.counts.give_back(counts);
            return true;
        }
    }
    let Some(e) = free else { return false };
    e.db.store(db, Ordering::Relaxed);
    // SAFETY: an unused entry, written under the exclusive lock.
    unsafe { *e.tenant.get() = *tenant };
    e.counts.take();
    e.counts.give_back(counts);
    e.used.store(1, Ordering::Release);
    true
}

/// Puts counts back into pending metering (a flush that failed, or what the last shutdown saved):
/// into the tenant's slot if it has one, else into the overflow list. Returns false when both
/// were full and the counts are lost.
pub fn give_back(db: u32, tenant: &[u8; 16], counts: Counts) -> bool {
    if tenant_table().is_empty() {
        return false;
    }
    // SAFETY: a plain global of the process.
    if !unsafe { pg_sys::IsUnderPostmaster } {
        // The postmaster at start, alone: no lock to take.
        return spill_add(db, tenant, counts);
    }
    locked(true, || match find_in(tenant_table(), hash(db, tenant), &(db, *tenant)) {
        Some(s) => {
            s.pending.give_back(counts);
            true
        }
        None => spill_add(db, tenant, counts),
    })
}

/// Takes the pending metering of database `db` (slots and overflow list), leaving zero.
pub fn take_pending(db: u32) -> Vec<([u8; 16], Counts)> {
    let mut out = Vec::new();
    if tenant_table().is_empty() {
        return out;
    }
    locked(true, || {
        for s in in_use(tenant_table()).filter(|s| s.db() == db) {
            let counts = s.pending.take();
            if counts.iter().any(|n| *n > 0) {
                out.push((s.tenant(), counts));
            }
        }
        for e in spilled().filter(|e| e.db.load(Ordering::Relaxed) == db) {
            // SAFETY: a used entry, under the exclusive lock.
            out.push((unsafe { *e.tenant.get() }, e.counts.take()));
            e.used.store(0, Ordering::Release);
        }
    });
    // A tenant whose slot was given to another, and who came back to a slot since, has counts in
    // both places: one entry per tenant (the flush writes each (tenant, metric) once).
    out.sort_unstable_by_key(|(tenant, _)| *tenant);
    out.dedup_by(|later, kept| {
        if later.0 != kept.0 {
            return false;
        }
        for (k, l) in kept.1.iter_mut().zip(later.1.iter()) {
            *k += *l;
        }
        true
    });
    out
}

/// Every (database, tenant, counts) of pending metering, without the lock: for the postmaster's
/// save at exit, when no other process runs.
pub fn all_pending_unlocked() -> Vec<(u32, [u8; 16], Counts)> {
    let mut out = Vec::new();
    for s in in_use(tenant_table()) {
        let counts = s.pending.read();
        if counts.iter().any(|n| *n > 0) {
            out.push((s.db(), s.tenant(), counts));
        }
    }
    for e in spilled() {
        // SAFETY: no other process runs (see above).
        out.push((e.db.load(Ordering::Relaxed), unsafe { *e.tenant.get() }, e.counts.read()));
    }
    out
}

/// The databases with pending metering. Reads only atomics, without the lock: a database seen
/// by mistake only costs a flush worker that finds nothing.
pub fn databases_with_pending() -> Vec<u32> {
    let mut dbs: Vec<u32> = in_use(tenant_table())
        .filter(|s| s.pending.read().iter().any(|c| *c > 0))
        .map(|s| s.db())
        .chain(spilled().map(|e| e.db.load(Ordering::Relaxed)))
        .collect();
    dbs.sort_unstable();
    dbs.dedup();
    dbs
}

/// The error of a statement that needs a slot when every candidate is in use right now.
pub fn raise_full(which: &str) -> ! {
    let (setting, size) = match which {
        "tenant table counts" => ("sutra.max_tenant_table_counts", header().map_or(0, |h| h.table_capacity)),
        _ => ("sutra.max_tenants", header().map_or(0, |h| h.capacity)),
    };
    crate::error::raise_detail_hint(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!("sutra's shared {which} table is full"),
        format!("All {size} slots that could hold this tenant belong to tenants active right now."),
        format!("Raise {setting} and restart the server."),
    )
}

/// The current database's oid.
pub fn my_db() -> u32 {
    // SAFETY: a plain backend global, set at connection.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}
