//! Quotas on tenant tables: rows per table and in total, storage bytes, vectors.
//!
//! `enable_tenancy` installs two triggers on every tenant table: `sutra_quota_row` (AFTER
//! INSERT, UPDATE, DELETE, for each row, so COPY keeps its batched inserts) and
//! `sutra_quota_truncate` (BEFORE TRUNCATE). The counts live in shared memory and are
//! reservations: a row counts from the moment it is written, and an abort, or a rollback to a
//! savepoint, takes back what that (sub)transaction added. Every write checks the counts after
//! adding to them, so all concurrent writers see each other's rows in flight: a quota is never
//! overshot, whatever the number of writers; a writer may instead be refused because of rows of
//! a transaction that then aborts. After a server start, a tenant's counts are read from its
//! tables on first use; `sutra.reconcile_usage(tenant)` recounts them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::limits::{self, Limits};
use super::shmem::{self, Keyed, Pin, Slot, TableSlot};
use crate::backend::caller::as_superuser;
use crate::backend::GenerationMap;
use crate::error::raise_detail;
use crate::fmgr::pg_function;

/// What one (sub)transaction level added to one tenant's counts in one table.
#[derive(Clone, Copy)]
struct Delta {
    level: i32,
    tenant: [u8; 16],
    relid: u32,
    rows: i64,
    bytes: i64,
    vectors: i64,
    /// Whether the tenant's totals, and its counts in the table, took the delta.
    in_total: bool,
    in_table: bool,
}

thread_local! {
    static PENDING: RefCell<Vec<Delta>> = const { RefCell::new(Vec::new()) };
    /// The slots the transaction's deltas went to, pinned until it ends: an abort takes the
    /// deltas back from the same counts, never from counts made again since.
    static PINNED: RefCell<Pinned> = RefCell::new(Pinned::default());
    /// Tenants whose counts, total and per table, are known (as of a status generation and of
    /// how many shared slots were reused).
    static ALL_KNOWN: RefCell<(Generation, std::collections::HashSet<[u8; 16]>)> =
        RefCell::new(((0, 0), Default::default()));
    /// Whether this transaction made or dropped a shard of a tenant table (a Citus worker).
    static SHARDS_CHANGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A status generation and a count of reused shared slots: what per-backend knowledge of quota
/// counts holds for.
type Generation = (u64, u64);

#[derive(Default)]
struct Pinned {
    tenants: HashMap<[u8; 16], Pin<Slot>>,
    tables: HashMap<(u32, [u8; 16]), Pin<TableSlot>>,
}

/// The tenant's slot and its counts in `relid`, pinned for the rest of the transaction; raises
/// 53400 when either table is full of tenants active right now.
fn pinned(tenant: &[u8; 16], relid: u32) -> (&'static Slot, &'static TableSlot) {
    let db = shmem::my_db();
    PINNED.with(|p| {
        let mut p = p.borrow_mut();
        let slot = match p.tenants.get(tenant) {
            Some(s) => s.get(),
            None => {
                let pin = shmem::slot(db, tenant).unwrap_or_else(|_| shmem::raise_full("tenant"));
                p.tenants.entry(*tenant).or_insert(pin).get()
            }
        };
        let table = match p.tables.get(&(relid, *tenant)) {
            Some(t) => t.get(),
            None => {
                let pin =
                    shmem::table_slot(db, relid, tenant).unwrap_or_else(|_| shmem::raise_full("tenant table counts"));
                p.tables.entry((relid, *tenant)).or_insert(pin).get()
            }
        };
        (slot, table)
    })
}

pub fn init() {
    // SAFETY: _PG_init in the postmaster: callbacks inherited by every backend.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
    crate::backend::utility::register(on_shard_ddl);
}

/// Whether a DROP statement drops a shard of a distributed tenant table held here.
unsafe fn drops_a_tenant_shard(drop: *mut pg_sys::DropStmt) -> bool {
    if (*drop).removeType != pg_sys::ObjectType::OBJECT_TABLE {
        return false;
    }
    pgrx::PgList::<pg_sys::List>::from_pg((*drop).objects).iter_ptr().any(|names| {
        let relation = pg_sys::makeRangeVarFromNameList(names);
        let relid = pg_sys::RangeVarGetRelidExtended(
            relation,
            pg_sys::NoLock as _,
            pg_sys::RVROption::RVR_MISSING_OK as _,
            None,
            std::ptr::null_mut(),
        );
        relid != pg_sys::InvalidOid && crate::tenancy::citus::shard_tenant_column(relid).is_some()
    })
}

/// Before `ALTER TABLE parent ATTACH PARTITION part` on a Citus worker: a shard about to become
/// a partition gives up a row quota trigger of its own for its parent's.
unsafe fn before_attach(alter: *mut pg_sys::AlterTableStmt) {
    for cmd in pgrx::PgList::<pg_sys::AlterTableCmd>::from_pg((*alter).cmds).iter_ptr() {
        if (*cmd).subtype != pg_sys::AlterTableType::AT_AttachPartition || (*cmd).def.is_null() {
            continue;
        }
        let part = (*((*cmd).def as *mut pg_sys::PartitionCmd)).name;
        let missing_ok = pg_sys::RVROption::RVR_MISSING_OK as _;
        let parent = pg_sys::RangeVarGetRelidExtended(
            (*alter).relation,
            pg_sys::NoLock as _,
            missing_ok,
            None,
            std::ptr::null_mut(),
        );
        let part = pg_sys::RangeVarGetRelidExtended(part, pg_sys::NoLock as _, missing_ok, None, std::ptr::null_mut());
        if parent == pg_sys::InvalidOid || part == pg_sys::InvalidOid {
            continue;
        }
        as_superuser(|| Spi::run_with_args("SELECT sutra._citus_shard_attach($1, $2)", &[parent.into(), part.into()]))
            .unwrap_or_else(|e| {
                crate::error::raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("could not attach a shard's quota triggers to its parent's: {e}"),
                )
            });
    }
}

/// `ProcessUtility` handler on a Citus worker. Citus creates a shard of a tenant table with the
/// table's policies but without its triggers (it refuses to distribute a table with triggers):
/// when it creates sutra's insert policy on a shard, the shard gets the quota triggers, so the
/// rows are counted where they are stored, once. A shard made or dropped here (placed, moved,
/// split) changes what this node holds without its rows passing the triggers: the node's counts
/// are then recounted from its shards on next use.
unsafe fn on_shard_ddl(call: &crate::backend::utility::Utility, next: &dyn Fn()) {
    let policy = call
        .statement::<pg_sys::CreatePolicyStmt>(pg_sys::NodeTag::T_CreatePolicyStmt)
        .filter(|p| {
            !(**p).policy_name.is_null() && CStr::from_ptr((**p).policy_name).to_bytes() == b"sutra_tenant_insert"
        })
        .map(|p| (*p).table);
    let drop = call.statement::<pg_sys::DropStmt>(pg_sys::NodeTag::T_DropStmt);
    let alter = call.statement::<pg_sys::AlterTableStmt>(pg_sys::NodeTag::T_AlterTableStmt);
    // An extension's script (Citus's own among them) makes no shards.
    let on_worker = (policy.is_some() || drop.is_some() || alter.is_some())
        && !pg_sys::creating_extension
        && crate::tenancy::citus::loaded()
        && crate::tenancy::citus::is_worker();
    if !on_worker {
        return next();
    }
    if let Some(alter) = alter {
        before_attach(alter);
    }
    let shard_dropped = drop.is_some_and(|d| drops_a_tenant_shard(d));
    next();
    let shard_made = policy.is_some_and(|table| {
        // The policy exists now, on the relation the statement named.
        let relid = pg_sys::RangeVarGetRelidExtended(table, pg_sys::NoLock as _, 0, None, std::ptr::null_mut());
        as_superuser(|| Spi::get_one_with_args::<bool>("SELECT sutra._citus_shard_quota_triggers($1)", &[relid.into()]))
            .unwrap_or_else(|e| {
                crate::error::raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("could not add quota triggers to a shard of a tenant table: {e}"),
                )
            })
            .unwrap_or(false)
    });
    if shard_made || shard_dropped {
        // Now, so that rows Citus copies in are not added meanwhile, and again at commit, when
        // every backend can see the shard (or its absence).
        shmem::forget_quota_counts(shmem::my_db());
        SHARDS_CHANGED.with(|c| c.set(true));
    }
}

/// Takes deltas back from the counts they went to (pinned since).
fn undo(deltas: &[Delta]) {
    PINNED.with(|p| {
        let p = p.borrow();
        for d in deltas {
            if let Some(s) = p.tenants.get(&d.tenant).filter(|_| d.in_total) {
                s.quota.add(-d.rows, -d.bytes, -d.vectors);
            }
            if let Some(t) = p.tables.get(&(d.relid, d.tenant)).filter(|_| d.in_table) {
                t.quota.add(-d.rows, -d.bytes, -d.vectors);
            }
        }
    });
}

/// The transaction ended: its slots may be reused again.
fn unpin_all() {
    let released = PINNED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    drop(released);
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            let deltas = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            undo(&deltas);
            unpin_all();
            SHARDS_CHANGED.with(|c| c.set(false));
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            PENDING.with(|p| p.borrow_mut().clear());
            unpin_all();
            if SHARDS_CHANGED.with(|c| c.replace(false)) {
                shmem::forget_quota_counts(shmem::my_db());
            }
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    let level = pg_sys::GetCurrentTransactionNestLevel();
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            let undone: Vec<Delta> = PENDING.with(|p| {
                let mut p = p.borrow_mut();
                let (gone, kept): (Vec<Delta>, Vec<Delta>) = p.iter().partition(|d| d.level >= level);
                *p = kept;
                gone
            });
            undo(&undone);
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => PENDING.with(|p| {
            for d in p.borrow_mut().iter_mut().filter(|d| d.level >= level) {
                d.level = level - 1;
            }
        }),
        _ => {}
    }
}

/// Tenant tables and their tenant columns.
type TenantTables = Vec<(pg_sys::Oid, String)>;

thread_local! {
    /// The registered tenant tables, as of a status generation (registrations change it); on a
    /// Citus worker, the shards it holds, as of a count of shard changes.
    static TENANT_TABLES: RefCell<Option<(u64, TenantTables)>> = const { RefCell::new(None) };
}

/// The registered tenant tables and their tenant columns; on a Citus worker, the shards of
/// tenant tables it holds.
fn tenant_tables() -> TenantTables {
    let worker = crate::tenancy::citus::is_worker();
    let generation = if worker { shmem::shards_changed() } else { crate::tenancy::context::status_generation() };
    if let Some(tables) =
        TENANT_TABLES.with(|t| t.borrow().as_ref().filter(|(g, _)| *g == generation).map(|(_, v)| v.clone()))
    {
        return tables;
    }
    let tables = if worker {
        crate::tenancy::citus::local_tenant_shards()
    } else {
        crate::backend::caller::with_catalog_search_path(|| {
            Spi::connect(|client| {
                let t =
                    client.select("SELECT table_name::oid, tenant_column::text FROM sutra.tenant_tables", None, &[])?;
                let mut out = Vec::new();
                for row in t {
                    if let (Some(oid), Some(col)) = (row.get::<pg_sys::Oid>(1)?, row.get::<String>(2)?) {
                        out.push((oid, col));
                    }
                }
                Ok::<_, pgrx::spi::Error>(out)
            })
        })
        .unwrap_or_default()
    };
    TENANT_TABLES.with(|t| *t.borrow_mut() = Some((generation, tables.clone())));
    tables
}

/// Counts of one tenant in the given tenant tables, read from the tables themselves
/// without running any code of theirs ([`super::count`]).
fn count_from_tables(
    tenant: &pgrx::Uuid,
    tables: impl IntoIterator<Item = (pg_sys::Oid, String)>,
) -> Vec<(u32, i64, i64, i64)> {
    tables
        .into_iter()
        .map(|(oid, col)| {
            let counts = super::count::count_rows(oid, &col, Some(*tenant.as_bytes()));
            let (rows, bytes, vectors) = counts.values().fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
            (oid.to_u32(), rows, bytes, vectors)
        })
        .collect()
}

/// `sutra._count_tenant_rows(tenant, table)`: a tenant's rows, bytes and vectors in each tenant
/// table (or in `table` only), counted from the tables (superusers; see `sutra.reconcile_usage`).
#[pg_extern(volatile, name = "_count_tenant_rows")]
fn count_tenant_rows(
    tenant: pgrx::Uuid,
    table: default!(Option<pg_sys::Oid>, "NULL"),
) -> TableIterator<'static, (name!(table_name, pg_sys::Oid), name!(rows, i64), name!(bytes, i64), name!(vectors, i64))>
{
    let tables = tenant_tables().into_iter().filter(|(oid, _)| table.is_none_or(|t| t == *oid));
    let rows: Vec<_> = count_from_tables(&tenant, tables)
        .into_iter()
        .map(|(oid, r, b, v)| (pg_sys::Oid::from(oid), r, b, v))
        .collect();
    TableIterator::new(rows)
}

/// Makes sure the tenant's counts, in total and in each tenant table, are known: after a
/// server start the first statement of one of its sessions counts them from the tables, before
/// it writes anything. Until then writes are not added (the recount sees them once committed).
pub fn ensure_tenant_known(tenant: &pgrx::Uuid) {
    if !known(tenant) {
        let slot = shmem::slot(shmem::my_db(), tenant.as_bytes()).unwrap_or_else(|_| shmem::raise_full("tenant"));
        ensure_known_in(tenant, &slot);
    }
}

/// [`ensure_tenant_known`] for a caller that holds the tenant's slot already (the executor hook's
/// statement).
pub fn ensure_known_in(tenant: &pgrx::Uuid, slot: &Slot) {
    if known(tenant) {
        return;
    }
    let generation = (crate::tenancy::context::status_generation(), shmem::reused());
    let key = *tenant.as_bytes();
    let db = shmem::my_db();
    let table_slot =
        |relid: u32| shmem::table_slot(db, relid, &key).unwrap_or_else(|_| shmem::raise_full("tenant table counts"));
    // Known totals: only tables whose counts are not known yet (registered since, or dropped from
    // shared memory) are counted.
    let counts = if slot.quota.is_known() {
        let unknown = tenant_tables().into_iter().filter(|(oid, _)| !table_slot(oid.to_u32()).quota.is_known());
        count_from_tables(tenant, unknown)
    } else {
        count_from_tables(tenant, tenant_tables())
    };
    for (relid, rows, bytes, vectors) in &counts {
        table_slot(*relid).quota.claim(*rows, *bytes, *vectors);
    }
    let (rows, bytes, vectors) = counts.iter().fold((0, 0, 0), |a, r| (a.0 + r.1, a.1 + r.2, a.2 + r.3));
    slot.quota.claim(rows, bytes, vectors);
    ALL_KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.0 != generation {
            *k = (generation, Default::default());
        }
        k.1.insert(key);
    });
}

/// Whether this backend knows the tenant's counts to be known, as of the current status
/// generation and slot reuses.
fn known(tenant: &pgrx::Uuid) -> bool {
    let generation = (crate::tenancy::context::status_generation(), shmem::reused());
    ALL_KNOWN.with(|k| {
        let k = k.borrow();
        k.0 == generation && k.1.contains(tenant.as_bytes())
    })
}

fn exceeded(slot: &Slot, tenant: &pgrx::Uuid, what: &str, limit: i64, value: i64, unit: &str) -> ! {
    super::refusals::refused(slot, shmem::Refusal::Quota, what, value as f64, limit as f64);
    raise_detail(
        PgSqlErrorCode::ERRCODE_DISK_FULL,
        format!("quota exceeded for tenant {tenant}: {what} is limited to {limit}"),
        format!("The statement would bring the tenant to {value} {unit}."),
    )
}

/// Warns (and audits) when a count crosses the soft threshold of its limit upwards.
fn crossed(tenant: &pgrx::Uuid, what: &str, limit: i64, before: i64, after: i64, threshold: f64) {
    let line = (limit as f64 * threshold).ceil() as i64;
    if before < line && after >= line {
        pgrx::warning!("tenant {tenant} has used {after} of its {what} limit of {limit}");
        // A Citus worker's audit log is not the cluster's, and a NOTIFY there would stop the
        // coordinator's two-phase commit: the warning reaches the client through the coordinator.
        if crate::tenancy::citus::is_worker() {
            return;
        }
        let details =
            format!(r#"{{"limit": "{what}", "value": {after}, "limit_value": {limit}, "threshold": {threshold}}}"#);
        // Audited, and notified on channel sutra_limits, in the writing transaction.
        let _ = as_superuser(|| {
            Spi::run_with_args(
                "SELECT sutra._audit('quota.soft_limit', $1, $2::jsonb),
                        pg_notify('sutra_limits', (jsonb_build_object('tenant', $1, 'event', 'quota.soft_limit')
                                                   || $2::jsonb - 'threshold')::text)",
                &[(*tenant).into(), details.into()],
            )
        });
    }
}

/// Adds a row's worth (or takes it away) and enforces the quotas.
fn apply(tenant: [u8; 16], relid: u32, rows: i64, bytes: i64, vectors: i64) {
    let uuid = pgrx::Uuid::from_bytes(tenant);
    let (slot, table) = pinned(&tenant, relid);
    // SAFETY: reads the current nesting level of this backend's transaction.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    let (in_total, in_table) = (slot.quota.is_known(), table.quota.is_known());
    let (total_rows, total_bytes, total_vectors) =
        if in_total { slot.quota.add(rows, bytes, vectors) } else { (0, 0, 0) };
    let (table_rows, _, _) = if in_table { table.quota.add(rows, bytes, vectors) } else { (0, 0, 0) };
    PENDING.with(|p| p.borrow_mut().push(Delta { level, tenant, relid, rows, bytes, vectors, in_total, in_table }));
    if bytes > 0 {
        super::meter::bytes(slot, bytes as u64);
    }
    if rows <= 0 && bytes <= 0 && vectors <= 0 {
        return;
    }
    let l: Limits = limits::of(&uuid);
    let checks = [
        ("rows_total", in_total, l.rows_total, total_rows - rows, total_rows, rows, "rows"),
        ("rows_per_table", in_table, l.rows_per_table, table_rows - rows, table_rows, rows, "rows in this table"),
        ("storage_bytes", in_total, l.storage_bytes, total_bytes - bytes, total_bytes, bytes, "bytes"),
        ("vectors", in_total, l.vectors, total_vectors - vectors, total_vectors, vectors, "vectors"),
    ];
    for (what, counted, limit, before, after, delta, unit) in checks {
        if let (true, Some(limit)) = (counted, limit) {
            if delta > 0 && after > limit {
                exceeded(slot, &uuid, what, limit, after, unit);
            }
            if delta > 0 {
                crossed(&uuid, what, limit, before, after, l.soft_threshold);
            }
        }
    }
}

thread_local! {
    /// Per table: whether it (or the partitioned table it belongs to) is a registered tenant
    /// table, as of a status generation (registrations change it).
    static REGISTERED: RefCell<GenerationMap<pg_sys::Oid, bool>> = RefCell::new(GenerationMap::new());
}

/// Whether `relid` is a registered tenant table or a partition of one (on a Citus worker: a shard
/// of a distributed tenant table, or a partition of one). The quota triggers count rows of those
/// tables only: attached by hand to any other table, they do nothing, so no table's owner can
/// move another tenant's counts.
fn registered(relid: pg_sys::Oid) -> bool {
    let generation = crate::tenancy::context::status_generation();
    if let Some(known) = REGISTERED.with(|r| r.borrow().get(generation, &relid)) {
        return known;
    }
    let known = if crate::tenancy::citus::is_worker() {
        // SAFETY: a catalog cache lookup by oid.
        let root = if unsafe { pg_sys::get_rel_relispartition(relid) } {
            crate::backend::caller::with_catalog_search_path(|| {
                Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_partition_root($1)::oid", &[relid.into()])
            })
            .ok()
            .flatten()
            .unwrap_or(relid)
        } else {
            relid
        };
        crate::tenancy::citus::shard_tenant_column(root).is_some()
    } else {
        crate::backend::caller::with_catalog_search_path(|| {
            Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT 1 FROM sutra.tenant_tables t
                                WHERE t.table_name = coalesce(pg_partition_root($1), $1::regclass))",
                &[relid.into()],
            )
        })
        .ok()
        .flatten()
        .unwrap_or(false)
    };
    REGISTERED.with(|r| r.borrow_mut().insert(generation, relid, known));
    known
}

/// The trigger data of a quota trigger call and the tenant column its argument names; `None`
/// when the table is not a registered tenant table (then the trigger does nothing).
///
/// # Safety
/// `fcinfo` is the call's own.
unsafe fn quota_trigger(
    fcinfo: pg_sys::FunctionCallInfo,
    name: &str,
) -> Option<(*mut pg_sys::TriggerData, *mut std::ffi::c_char)> {
    let td = (*fcinfo).context as *mut pg_sys::TriggerData;
    if td.is_null() || (*td).type_ != pg_sys::NodeTag::T_TriggerData {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            format!("sutra.{name}() must be called as a trigger"),
        );
    }
    if !registered((*(*td).tg_relation).rd_id) {
        return None;
    }
    let trigger = (*td).tg_trigger;
    let column = if (*trigger).tgnargs > 0 { *(*trigger).tgargs } else { c"tenant_id".as_ptr() as *mut _ };
    Some((td, column))
}

unsafe fn on_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let Some((td, column)) = quota_trigger(fcinfo, "_quota_row") else {
        return pg_sys::Datum::from(0);
    };
    let rel = (*td).tg_relation;
    let desc = (*rel).rd_att;
    let attnum = pg_sys::SPI_fnumber(desc, column);
    if attnum <= 0 {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("tenant column \"{}\" not found", CStr::from_ptr(column).to_string_lossy()),
        );
    }
    // The trigger's argument names the column; its value is read as a uuid, so it must be one.
    if pg_sys::SPI_gettypeid(desc, attnum) != pg_sys::UUIDOID {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("tenant column \"{}\" is not of type uuid", CStr::from_ptr(column).to_string_lossy()),
        );
    }
    let vector = super::count::vector_type();
    let op = (*td).tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let (old, new) = match op {
        pg_sys::TRIGGER_EVENT_INSERT => (std::ptr::null_mut(), (*td).tg_trigtuple),
        pg_sys::TRIGGER_EVENT_DELETE => ((*td).tg_trigtuple, std::ptr::null_mut()),
        _ => ((*td).tg_trigtuple, (*td).tg_newtuple),
    };
    let relid = (*rel).rd_id.to_u32();
    let old = super::count::measure(old, desc, attnum, vector);
    let new = super::count::measure(new, desc, attnum, vector);
    match (old, new) {
        (Some((t0, b0, v0)), Some((t1, b1, v1))) if t0 == t1 => apply(t1, relid, 0, b1 - b0, v1 - v0),
        (old, new) => {
            if let Some((t, b, v)) = old {
                apply(t, relid, -1, -b, -v);
            }
            if let Some((t, b, v)) = new {
                apply(t, relid, 1, b, v);
            }
        }
    }
    pg_sys::Datum::from(0)
}

pg_function! {
    /// `sutra._quota_row()`: the AFTER ROW trigger of tenant tables.
    fn sutra_quota_row(fcinfo) {
        on_row(fcinfo)
    }
}

unsafe fn on_truncate(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let Some((td, column)) = quota_trigger(fcinfo, "_quota_truncate") else {
        return pg_sys::Datum::from(0);
    };
    let column = CStr::from_ptr(column).to_string_lossy().into_owned();
    let relid = (*(*td).tg_relation).rd_id;
    for (tenant, (rows, bytes, vectors)) in super::count::count_rows(relid, &column, None) {
        apply(tenant, relid.to_u32(), -rows, -bytes, -vectors);
    }
    pg_sys::Datum::from(0)
}

pg_function! {
    /// `sutra._quota_truncate()`: the BEFORE TRUNCATE trigger of tenant tables: the rows about to
    /// go leave every tenant's counts.
    fn sutra_quota_truncate(fcinfo) {
        on_truncate(fcinfo)
    }
}

/// `sutra._quota_set(table, tenant, rows, bytes, vectors)`: sets counts recounted by
/// `sutra.reconcile_usage` (table null: the tenant's totals).
#[pg_extern(volatile, name = "_quota_set")]
fn quota_set(table: Option<pg_sys::Oid>, tenant: pgrx::Uuid, rows: i64, bytes: i64, vectors: i64) {
    let db = shmem::my_db();
    match table {
        None => shmem::slot(db, tenant.as_bytes())
            .unwrap_or_else(|_| shmem::raise_full("tenant"))
            .quota
            .set(rows, bytes, vectors),
        Some(t) => shmem::table_slot(db, t.to_u32(), tenant.as_bytes())
            .unwrap_or_else(|_| shmem::raise_full("tenant table counts"))
            .quota
            .set(rows, bytes, vectors),
    }
}

/// `sutra._quota_totals()`: the known quota totals of every tenant of this database in shared
/// memory, in one pass (for `sutra.tenants_near_limits`).
#[pg_extern(volatile, name = "_quota_totals")]
fn quota_totals(
) -> TableIterator<'static, (name!(tenant_id, pgrx::Uuid), name!(rows, i64), name!(bytes, i64), name!(vectors, i64))> {
    let db = shmem::my_db();
    let mut out = Vec::new();
    shmem::for_each_slot(|s| {
        if s.db() == db && s.quota.is_known() {
            let (rows, bytes, vectors) = s.quota.read();
            out.push((pgrx::Uuid::from_bytes(s.tenant()), rows, bytes, vectors));
        }
    });
    TableIterator::new(out)
}

/// `sutra._quota_counts(tenant)`: the tenant's counts as sutra holds them, in total (table null)
/// and per table.
#[pg_extern(volatile, name = "_quota_counts")]
fn quota_counts(
    tenant: pgrx::Uuid,
    count_if_unknown: default!(bool, true),
) -> TableIterator<
    'static,
    (name!(table_name, Option<pg_sys::Oid>), name!(rows, i64), name!(bytes, i64), name!(vectors, i64)),
> {
    let db = shmem::my_db();
    let mut out = Vec::new();
    if count_if_unknown {
        ensure_tenant_known(&tenant);
    }
    if let Some(s) = shmem::find(db, tenant.as_bytes()).filter(|s| s.quota.is_known()) {
        let (rows, bytes, vectors) = s.quota.read();
        out.push((None, rows, bytes, vectors));
    }
    shmem::for_each_table_slot(|t| {
        if t.db() == db && t.tenant() == *tenant.as_bytes() && t.quota.is_known() {
            let (rows, bytes, vectors) = t.quota.read();
            out.push((Some(pg_sys::Oid::from(t.relid())), rows, bytes, vectors));
        }
    });
    TableIterator::new(out)
}
