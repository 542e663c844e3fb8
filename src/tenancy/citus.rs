//! sutra on a Citus cluster: the tenant context travels to the workers of a transaction, and a
//! worker checks it against the cluster's tenants and keys.
//!
//! Citus forwards to the workers of a transaction only real `SET LOCAL` statements, and only
//! with `citus.propagate_set_commands = 'local'`; a parameter set from C (as sutra sets
//! `sutra.tenant_id` on one node) never reaches them. So on a node where Citus is loaded, a
//! transaction's context is set by running `SET LOCAL sutra.tenant_id = '<signed value>'`, with
//! that Citus setting turned on for the transaction. A worker verifies the value with the secret
//! every node shares (`sutra.context_secret`).
//!
//! Credentials (API keys, members, the key pepper) live on the coordinator only: contexts are
//! issued there. What a worker needs to check a context on every transaction (the tenant's
//! status, whether the key that granted it is still valid, the member's role) is kept by the
//! coordinator in `sutra.cluster_grants`, a Citus reference table: each change to tenants, keys
//! or members is written there in the same distributed transaction, so every node sees it from
//! its next transaction (see `sql/tenancy/citus.sql`). `CREATE EXTENSION sutra` on the
//! coordinator makes it one.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;

use pgrx::prelude::*;

/// Whether Citus was loaded before sutra (it must come first in `shared_preload_libraries`).
/// Set in the postmaster; backends inherit it.
static mut LOADED: bool = false;

thread_local! {
    /// Whether this node is a Citus worker (`Some` once known; a backend serves one database).
    static WORKER: Cell<Option<bool>> = const { Cell::new(None) };
    /// The local transaction a worker last read the cluster's grants in.
    static READ_IN: Cell<u32> = const { Cell::new(0) };
    /// Whether this backend serves a connection Citus opened from another node (decided once).
    static INTERNAL: Cell<Option<bool>> = const { Cell::new(None) };
    /// The lookup in this node's shard of `sutra.cluster_grants`, prepared.
    static GRANT_LOOKUP: RefCell<Option<pgrx::spi::OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// Notes whether Citus is loaded. Called from `_PG_init`, after Citus's own.
pub fn init() {
    // SAFETY: _PG_init runs single-threaded in the postmaster; GetConfigOption with missing_ok
    // returns null for a parameter no loaded library defined.
    unsafe {
        LOADED = !pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false).is_null();
    }
    crate::backend::utility::register(after_create_extension);
}

/// Whether Citus is loaded in this server.
pub fn loaded() -> bool {
    // SAFETY: written once by the postmaster before any backend exists.
    unsafe { LOADED }
}

/// Runs `SET LOCAL <name> = '<value>'` as a statement, so that Citus forwards it to every
/// worker the transaction uses (those already connected and those it connects to later).
pub fn set_local(name: &str, value: &str) {
    // SAFETY: sets a parameter Citus defined, for the current transaction only, as a SET LOCAL
    // in the session would; a refused value raises a PostgreSQL ERROR.
    unsafe {
        pg_sys::set_config_option(
            c"citus.propagate_set_commands".as_ptr(),
            c"local".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
    let literal = value.replace('\'', "''");
    Spi::run(&format!("SET LOCAL {name} = '{literal}'")).unwrap_or_else(|e| {
        crate::error::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not set {name}: {e}"))
    });
}

/// Whether the citus extension is installed in this database (Citus may be loaded in the server
/// and absent from a database: its catalog tables are then missing too).
fn installed() -> bool {
    crate::backend::caller::as_superuser(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')")
    })
    .unwrap_or_else(|e| {
        crate::error::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not read pg_extension: {e}"))
    })
    .unwrap_or(false)
}

/// Whether this server is a Citus worker: Citus is loaded and installed in this database, and
/// the database is not the coordinator's.
pub fn is_worker() -> bool {
    if !loaded() {
        return false;
    }
    if let Some(w) = WORKER.with(|w| w.get()) {
        return w;
    }
    // citus_is_coordinator exists only where the citus extension does: asked only then.
    let worker = installed()
        && crate::backend::caller::as_superuser(|| {
            Spi::get_one::<bool>("SELECT NOT pg_catalog.citus_is_coordinator()")
        })
        .unwrap_or_else(|e| {
            crate::error::raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("could not tell whether this node is a Citus worker: {e}"),
            )
        })
        .unwrap_or(false);
    WORKER.with(|w| w.set(Some(worker)));
    worker
}

/// On a worker: whether this is a transaction in which the cluster's grants have not been read
/// yet (what the coordinator changed is seen from the next transaction on).
pub fn new_transaction() -> bool {
    // SAFETY: MyProc is this backend's own PGPROC, valid for the life of the backend.
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    READ_IN.with(|r| r.replace(lxid) != lxid)
}

/// What the coordinator recorded for a grant of `kind` (`tenant`, `key` or `member`) and `id`.
///
/// Read from this node's copy of the reference table (its shard) directly: the check runs inside
/// the queries Citus sends to shards, where Citus refuses a query on a distributed table.
pub fn grant(kind: &str, id: &str) -> Option<String> {
    // Prepared once per backend: the lookup runs on every transaction of a worker.
    let read = || -> Result<Option<String>, pgrx::spi::Error> {
        Spi::connect(|client| {
            GRANT_LOOKUP.with(|cell| {
                let mut cell = cell.borrow_mut();
                if cell.is_none() {
                    let query = format!("SELECT value FROM {} WHERE kind = $1 AND id = $2", grants_shard());
                    *cell =
                        Some(client.prepare(query.as_str(), &[pg_sys::TEXTOID.into(), pg_sys::TEXTOID.into()])?.keep());
                }
                let stmt = cell.as_ref().expect("prepared above");
                let table = client.select(stmt, Some(1), &[kind.into(), id.into()])?;
                match table.into_iter().next() {
                    Some(row) => row.get::<String>(1),
                    None => Ok(None),
                }
            })
        })
    };
    crate::backend::caller::as_superuser(read).unwrap_or_else(|e| {
        crate::error::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not read the cluster's tenant grants on this worker: {e}"),
        )
    })
}

/// The name of this node's shard of `sutra.cluster_grants`; raises when it has none.
fn grants_shard() -> String {
    Spi::get_one::<String>(
        "SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid) FROM pg_catalog.pg_dist_shard s
         WHERE s.logicalrelid = 'sutra.cluster_grants'::regclass",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        crate::error::raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "sutra.cluster_grants is not a reference table on this worker",
            "CREATE EXTENSION sutra on the coordinator makes it one (or SELECT sutra.citus_setup() there); until then a worker refuses every tenant context.",
        )
    })
}

/// `ProcessUtility` handler: after `CREATE EXTENSION sutra` or `CREATE EXTENSION citus` (the
/// other one being there), on a coordinator, makes `sutra.cluster_grants` a reference table. Citus
/// has by then created the extension on the workers too.
unsafe fn after_create_extension(call: &crate::backend::utility::Utility, next: &dyn Fn()) {
    let stmt = call.statement::<pg_sys::CreateExtensionStmt>(pg_sys::NodeTag::T_CreateExtensionStmt);
    next();
    let Some(stmt) = stmt else { return };
    if !loaded() || (*stmt).extname.is_null() {
        return;
    }
    let name = std::ffi::CStr::from_ptr((*stmt).extname).to_bytes();
    if name != b"sutra" && name != b"citus" {
        return;
    }
    // Run as the user who created the extension (a superuser: neither extension is trusted).
    let both =
        Spi::get_one::<bool>("SELECT count(*) = 2 FROM pg_catalog.pg_extension WHERE extname IN ('sutra', 'citus')");
    if both.ok().flatten() == Some(true) {
        Spi::run("SELECT sutra.citus_setup()").unwrap_or_else(|e| {
            crate::error::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not set up sutra on Citus: {e}"))
        });
    }
}

/// Whether this session is one Citus opened to this worker to run part of a statement of a
/// session on another node: Citus names those connections `citus_internal gpid=<n>`. Their
/// statements are charged (limits, metering) where that session runs, not again here. Decided
/// once per backend, at its first statement (`note_connection`), from the name the connection
/// had then, and only on a worker: on a coordinator no connection is exempt, whatever its name.
pub fn internal_connection() -> bool {
    INTERNAL.with(|i| i.get()).unwrap_or(false)
}

/// Whether this session's name says Citus opened it (`citus_internal gpid=...`); any client can
/// take that name, so on its own it decides nothing but which signatures are tried.
pub fn named_internal() -> bool {
    // SAFETY: application_name is a GUC string PostgreSQL keeps valid (or null) between statements.
    let name = unsafe { pg_sys::application_name.as_ref().map(|p| std::ffi::CStr::from_ptr(p).to_bytes()) };
    name.is_some_and(|n| n.starts_with(b"citus_internal gpid="))
}

/// Decides `internal_connection` for this backend, if not done yet. Called where a query may run
/// (at the start of a statement), never from a parameter's hook.
pub fn note_connection() {
    if !loaded() || INTERNAL.with(|i| i.get()).is_some() {
        return;
    }
    let named = named_internal();
    // Decided (not internal) before the lookup: its own statements pass the executor hook too.
    INTERNAL.with(|i| i.set(Some(false)));
    let internal = named && is_worker();
    INTERNAL.with(|i| i.set(Some(internal)));
}

/// The tenant column of relation `relid` when it is a shard of a distributed tenant table: a
/// shard Citus's catalog knows, carrying sutra's tenant policies on the column the table is
/// distributed by. Citus writes rows into shards with COPY, which sutra then runs under the policies as it
/// does for tenant tables (the registration of the table is the coordinator's).
pub fn shard_tenant_column(relid: pg_sys::Oid) -> Option<String> {
    if !loaded() || !installed() {
        return None;
    }
    // Citus hides shards from pg_class in sessions other than its own: the name comes from the
    // relation cache, and the query reads no pg_class.
    // SAFETY: a relation cache lookup by oid; null when there is no such relation.
    let name = unsafe {
        let name = pg_sys::get_rel_name(relid);
        if name.is_null() {
            return None;
        }
        CStr::from_ptr(name).to_string_lossy().into_owned()
    };
    let shard: i64 = name.rsplit_once('_')?.1.parse().ok()?;
    crate::backend::caller::as_superuser(|| {
        Spi::get_one_with_args::<String>(
            &format!(
                "SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
                 FROM pg_catalog.pg_dist_shard s JOIN pg_catalog.pg_dist_partition p USING (logicalrelid)
                 WHERE s.shardid = $2
                   AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)) = $1::regclass
                   AND p.partkey IS NOT NULL AND {SUTRA_POLICIES}"
            ),
            &[relid.into(), shard.into()],
        )
    })
    .ok()
    .flatten()
}

/// The condition that shard `$1` of table `p` carries sutra's four tenant policies, its insert
/// policy checking the column the table is distributed by.
const SUTRA_POLICIES: &str = "(SELECT count(*) FROM pg_catalog.pg_policy y WHERE y.polrelid = $1
                               AND y.polname ~ '^sutra_tenant_(select|insert|update|delete)$') = 4
    AND (SELECT pg_catalog.pg_get_expr(y.polwithcheck, y.polrelid) FROM pg_catalog.pg_policy y
         WHERE y.polrelid = $1 AND y.polname = 'sutra_tenant_insert')
        = pg_catalog.format('(%s = sutra.current_tenant_checked(''write''::text))',
                            pg_catalog.quote_ident(pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)))";

/// The shards of distributed tenant tables this node holds, each with its tenant column (the
/// tables a worker's quota counts read; partitions are read through their parent's shard).
pub fn local_tenant_shards() -> Vec<(pg_sys::Oid, String)> {
    if !loaded() || !installed() {
        return Vec::new();
    }
    crate::backend::caller::as_superuser(|| {
        Spi::connect(|client| {
            // No pg_class: Citus hides shards there from sessions other than its own. Shard names
            // qualified (false: public too), whatever the search path.
            let rows = client.select(
                "SELECT x.shard, pg_catalog.convert_from(
                            substring(t.tgargs FROM 1 FOR position('\\x00'::bytea IN t.tgargs) - 1), 'UTF8')
                 FROM (SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))::oid AS shard
                       FROM pg_catalog.pg_dist_shard s) x
                 JOIN pg_catalog.pg_trigger t ON t.tgrelid = x.shard AND t.tgname = 'sutra_quota_row' AND t.tgnargs = 1
                 WHERE coalesce(pg_catalog.pg_partition_root(x.shard)::oid, x.shard) = x.shard",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for row in rows {
                // The quota trigger's one argument: the tenant column.
                if let (Some(oid), Some(column)) = (row.get::<pg_sys::Oid>(1)?, row.get::<String>(2)?) {
                    out.push((oid, column));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_default()
}

thread_local! {
    /// The ordering operators of sutra_hnsw (the distances an index search orders by).
    static DISTANCES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// `:opno <oid> ` for each distance sutra_hnsw orders by, as a plan's text shows it.
fn distance_operators() -> Vec<String> {
    if let Some(ops) = DISTANCES.with(|d| d.borrow().clone()) {
        return ops;
    }
    let ops: Vec<String> = crate::backend::caller::as_superuser(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT a.amopopr FROM pg_catalog.pg_amop a JOIN pg_catalog.pg_am m ON m.oid = a.amopmethod
                 WHERE m.amname = 'sutra_hnsw' AND a.amoppurpose = 'o'",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for row in rows {
                out.extend(row.get::<pg_sys::Oid>(1)?.map(|o| format!(":opno {} ", o.to_u32())));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_default();
    DISTANCES.with(|d| *d.borrow_mut() = Some(ops.clone()));
    ops
}

/// The vector searches a statement on a coordinator runs through Citus: one for each Citus scan
/// whose query to the workers orders by a distance sutra_hnsw serves (a nearest-neighbour search,
/// on one shard or on each). On Citus a statement is metered on the node its session is
/// connected to: the searches on the workers are counted here, once per statement.
///
/// # Safety
/// `pstmt` is the planned statement being started.
pub unsafe fn vector_searches(pstmt: *mut pg_sys::PlannedStmt) -> u64 {
    if !loaded() || pstmt.is_null() {
        return 0;
    }
    let mut scans = Vec::new();
    crate::backend::plan::for_each_node(pstmt, |plan| {
        if (*plan).type_ != pg_sys::NodeTag::T_CustomScan {
            return;
        }
        let scan = plan as *mut pg_sys::CustomScan;
        let methods = (*scan).methods;
        if !methods.is_null()
            && !(*methods).CustomName.is_null()
            && CStr::from_ptr((*methods).CustomName).to_bytes().starts_with(b"Citus")
        {
            scans.extend(pgrx::PgList::<std::ffi::c_void>::from_pg((*scan).custom_private).get_ptr(0));
        }
    });
    if scans.is_empty() {
        return 0;
    }
    let distances = distance_operators();
    let mut searches = 0;
    for plan in scans.into_iter().filter(|p| !p.is_null()) {
        // Citus's distributed plan, as text: its queries to the workers, with their ORDER BY.
        let text = pg_sys::nodeToString(plan as *const std::ffi::c_void);
        let t = CStr::from_ptr(text).to_string_lossy();
        if t.contains(":sortClause (") && distances.iter().any(|d| t.contains(d.as_str())) {
            searches += 1;
        }
        pg_sys::pfree(text as *mut std::ffi::c_void);
    }
    searches
}

/// Whether relation `relid` is a table Citus distributes (its rows live in shards): Citus runs a
/// COPY into it, and sutra's COPY path applies on the shards.
pub fn distributed(relid: pg_sys::Oid) -> bool {
    if !loaded() || !installed() {
        return false;
    }
    crate::backend::caller::as_superuser(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1::regclass)",
            &[relid.into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}
