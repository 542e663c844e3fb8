//! The per-tenant state sutra keeps in shared memory: rate limiter, concurrency and connection
//! counts, and metering counters not yet flushed to `sutra.usage_rollups`.
//!
//! One fixed table of [`CAPACITY`] slots, keyed by (database, tenant), allocated at server start.
//! A slot is claimed once, with a compare-and-swap, and never freed; everything in it is an atomic,
//! so the hot paths (a rate-limit check, a counter update) take no lock. The state is not
//! transactional and not crash-safe: it starts empty at every server start (and after a crash
//! restart) and is rebuilt as tenants come back; metering loses at most what was not yet flushed.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use pgrx::pg_sys;

/// Slots in the table: tenants (per database) that can be tracked at once.
pub const CAPACITY: usize = 16384;
/// How far a lookup probes before it gives up (the table is then too full around that key).
const MAX_PROBE: usize = 512;

const EMPTY: u32 = 0;
const CLAIMING: u32 = 1;
const READY: u32 = 2;

/// One tenant's state.
#[repr(C)]
pub struct Slot {
    state: AtomicU32,
    db: AtomicU32,
    tenant: UnsafeCell<[u8; 16]>,
    /// GCRA theoretical arrival time, nanoseconds since the Unix epoch.
    pub tat: AtomicI64,
    /// Statements running now.
    pub active: AtomicI32,
    /// Sessions attached to the tenant (holding its context) now.
    pub connections: AtomicI32,
    /// Metered since the last flush.
    pub pending: Counters,
    /// Metered since server start (what `sutra.metrics()` reports).
    pub total: Counters,
    pub rate_limited: AtomicU64,
    pub concurrency_refused: AtomicU64,
    pub connections_refused: AtomicU64,
    pub quota_refused: AtomicU64,
    /// Quota counts: committed rows plus those of transactions in flight (see `quota`).
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

    /// Sets counts never counted before; counts another process counted stay as they are.
    pub fn claim(&self, rows: i64, bytes: i64, vectors: i64) {
        if self.known.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.set(rows, bytes, vectors);
        }
    }
}

/// One tenant's counts in one tenant table.
#[repr(C)]
pub struct TableSlot {
    state: AtomicU32,
    db: AtomicU32,
    relid: AtomicU32,
    tenant: UnsafeCell<[u8; 16]>,
    pub quota: QuotaCounts,
}

// SAFETY: as for Slot.
unsafe impl Sync for TableSlot {}

impl TableSlot {
    pub fn relid(&self) -> u32 {
        self.relid.load(Ordering::Relaxed)
    }
    pub fn db(&self) -> u32 {
        self.db.load(Ordering::Relaxed)
    }
    pub fn tenant(&self) -> [u8; 16] {
        // SAFETY: only slots loaded as READY are handed out.
        unsafe { *self.tenant.get() }
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

// SAFETY: every field is an atomic, except `tenant`, which is written only by the process that
// claimed the slot, before it publishes the slot with a release store of READY, and read only after
// an acquire load of READY.
unsafe impl Sync for Slot {}

impl Slot {
    pub fn db(&self) -> u32 {
        self.db.load(Ordering::Relaxed)
    }

    pub fn tenant(&self) -> [u8; 16] {
        // SAFETY: see `impl Sync`: only slots loaded as READY are handed out.
        unsafe { *self.tenant.get() }
    }

    /// Adds to a metered quantity (pending and total).
    pub fn meter(&self, metric: Metric, n: u64) {
        if n > 0 {
            self.pending.fields()[metric.index()].fetch_add(n, Ordering::Relaxed);
            self.total.fields()[metric.index()].fetch_add(n, Ordering::Relaxed);
        }
    }
}

static mut TABLE: *mut Slot = std::ptr::null_mut();
static mut TABLES: *mut TableSlot = std::ptr::null_mut();
/// Slots of (tenant, table) counts.
pub const TABLE_CAPACITY: usize = 65536;
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
/// What runs in the postmaster once the tables exist (reading back saved metering).
static mut AFTER_STARTUP: Option<fn()> = None;

fn size() -> usize {
    std::mem::size_of::<Slot>() * CAPACITY + std::mem::size_of::<TableSlot>() * TABLE_CAPACITY
}

/// Bytes of shared memory per tracked tenant, and per tenant and table.
pub fn slot_size() -> (usize, usize) {
    (std::mem::size_of::<Slot>(), std::mem::size_of::<TableSlot>())
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
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup() {
    if let Some(prev) = PREV_STARTUP {
        prev();
    }
    let mut found = false;
    let p = pg_sys::ShmemInitStruct(c"sutra tenants".as_ptr(), size(), &mut found);
    if !found {
        // All zero is a table of empty slots: every field is an integer or an atomic.
        std::ptr::write_bytes(p as *mut u8, 0, size());
    }
    TABLE = p as *mut Slot;
    TABLES = (p as *mut u8).add(std::mem::size_of::<Slot>() * CAPACITY) as *mut TableSlot;
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

fn tenant_table() -> &'static [Slot] {
    // SAFETY: TABLE is null or set once, by the startup hook, to CAPACITY slots.
    unsafe { shared(TABLE, CAPACITY) }
}

fn count_table() -> &'static [TableSlot] {
    // SAFETY: TABLES is null or set once, by the startup hook, to TABLE_CAPACITY slots.
    unsafe { shared(TABLES, TABLE_CAPACITY) }
}

fn in_use<S: Keyed>(table: &'static [S]) -> impl Iterator<Item = &'static S> {
    table.iter().filter(|s| s.state().load(Ordering::Acquire) == READY)
}

/// All slots in use (for reports and the flush).
pub fn slots() -> impl Iterator<Item = &'static Slot> {
    in_use(tenant_table())
}

/// All (tenant, table) slots in use.
pub fn table_slots() -> impl Iterator<Item = &'static TableSlot> {
    in_use(count_table())
}

/// A slot of one of the shared tables: claimed once with a compare-and-swap, then read-only key.
trait Keyed: Sync + 'static {
    type Key;
    fn state(&self) -> &AtomicU32;
    fn matches(&self, key: &Self::Key) -> bool;
    /// Writes the key; only the process that claimed the slot calls it, before publishing it.
    fn write_key(&self, key: &Self::Key);
}

impl Keyed for Slot {
    type Key = (u32, [u8; 16]);
    fn state(&self) -> &AtomicU32 {
        &self.state
    }
    fn matches(&self, key: &Self::Key) -> bool {
        self.db.load(Ordering::Relaxed) == key.0 && self.tenant() == key.1
    }
    fn write_key(&self, key: &Self::Key) {
        self.db.store(key.0, Ordering::Relaxed);
        // SAFETY: the caller claimed the slot; nobody reads `tenant` before READY.
        unsafe { *self.tenant.get() = key.1 };
    }
}

impl Keyed for TableSlot {
    type Key = (u32, u32, [u8; 16]);
    fn state(&self) -> &AtomicU32 {
        &self.state
    }
    fn matches(&self, key: &Self::Key) -> bool {
        self.db.load(Ordering::Relaxed) == key.0
            && self.relid.load(Ordering::Relaxed) == key.1
            && self.tenant() == key.2
    }
    fn write_key(&self, key: &Self::Key) {
        self.db.store(key.0, Ordering::Relaxed);
        self.relid.store(key.1, Ordering::Relaxed);
        // SAFETY: the caller claimed the slot; nobody reads `tenant` before READY.
        unsafe { *self.tenant.get() = key.2 };
    }
}

/// Says once per process that a shared table is full: the tenants that do not fit are neither
/// limited nor metered.
fn full(which: &str) {
    thread_local! { static SAID: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }
    if !SAID.with(|s| s.replace(true)) {
        pgrx::warning!("sutra: the shared {which} table is full; limits and metering skip the tenants that do not fit");
    }
}

/// Finds the slot of `key` by linear probing from `start`, claiming an empty one if the key is
/// new; `None` if the table is too full around it.
fn lookup<S: Keyed>(table: &'static [S], start: usize, key: &S::Key) -> Option<&'static S> {
    for i in 0..MAX_PROBE {
        let s = &table[(start + i) % table.len()];
        loop {
            match s.state().load(Ordering::Acquire) {
                READY => {
                    if s.matches(key) {
                        return Some(s);
                    }
                    break;
                }
                EMPTY => {
                    if s.state().compare_exchange(EMPTY, CLAIMING, Ordering::Acquire, Ordering::Acquire).is_ok() {
                        s.write_key(key);
                        s.state().store(READY, Ordering::Release);
                        return Some(s);
                    }
                }
                // Another process is writing the key: it takes nanoseconds.
                _ => std::hint::spin_loop(),
            }
        }
    }
    None
}

/// The slot of `tenant` in database `db`, claimed if new; `None` if the table is full.
pub fn slot(db: u32, tenant: &[u8; 16]) -> Option<&'static Slot> {
    let table = tenant_table();
    if table.is_empty() {
        return None;
    }
    let found = lookup(table, hash(db, tenant), &(db, *tenant));
    if found.is_none() {
        full("tenant");
    }
    found
}

/// The counts of `tenant` in table `relid` of database `db`, claimed if new.
pub fn table_slot(db: u32, relid: u32, tenant: &[u8; 16]) -> Option<&'static TableSlot> {
    let table = count_table();
    if table.is_empty() {
        return None;
    }
    let found = lookup(table, hash(db ^ relid.rotate_left(16), tenant), &(db, relid, *tenant));
    if found.is_none() {
        full("tenant table counts");
    }
    found
}

/// The current database's oid.
pub fn my_db() -> u32 {
    // SAFETY: a plain backend global, set at connection.
    unsafe { pg_sys::MyDatabaseId.to_u32() }
}

#[allow(dead_code)]
const _: () = assert!(std::mem::size_of::<Slot>() <= 1024, "a tenant's shared state stays under 1 KiB");
