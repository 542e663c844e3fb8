//! `COPY ... FROM` into tenant tables.
//!
//! Stock PostgreSQL refuses COPY FROM into a table whose row level security applies to the
//! user. For a tenant table (one registered by `sutra.enable_tenancy`), sutra runs the COPY itself
//! instead, the way PostgreSQL's own DoCopy does (same privilege checks, same lock, same WHERE
//! handling, the same CopyFrom with its batched inserts), with one condition added to the COPY's
//! WHERE clause: `sutra._copy_row_check(<tenant column>)`, evaluated on each row after column
//! defaults are filled in. It passes rows of the session's tenant and raises, like the INSERT
//! policy's WITH CHECK, on any other, so the whole COPY fails. The session needs the write scope.
//! Any other COPY goes to PostgreSQL unchanged.

use std::cell::RefCell;
use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::context;
use crate::backend::caller::as_superuser;
use crate::backend::utility::Utility;
use crate::error::{raise, raise_hint};
use sutra_core::tenant_context::Scopes;

pub fn init() {
    crate::backend::utility::register(copy_from);
}

/// The COPY in progress in this backend: its table's name and the tenant its rows must carry.
struct CopyTarget {
    table: String,
    tenant: [u8; 16],
}

thread_local! {
    static TARGET: RefCell<Option<CopyTarget>> = const { RefCell::new(None) };
}

/// Runs a `COPY ... FROM` into a tenant table under row level security itself; passes on any
/// other utility statement.
unsafe fn copy_from(call: &Utility, next: &dyn Fn()) {
    // A COPY that failed part way left its target behind.
    TARGET.with(|t| *t.borrow_mut() = None);
    if let Some(copy) = call.statement::<pg_sys::CopyStmt>(pg_sys::NodeTag::T_CopyStmt) {
        if (*copy).is_from && !(*copy).relation.is_null() {
            if let Some(column) = tenant_column_under_rls((*copy).relation).filter(|_| !citus_table((*copy).relation)) {
                let processed = if has_before_insert_row_triggers((*copy).relation) {
                    copy_through_insert(call, copy)
                } else {
                    copy_into_tenant_table(copy, &column, call.query_string, call.query_env)
                };
                if !call.qc.is_null() {
                    (*call.qc).commandTag = pg_sys::CommandTag::CMDTAG_COPY;
                    (*call.qc).nprocessed = processed;
                }
                return;
            }
        }
    }
    next();
}

/// The tenant column of the COPY's table, when it is a tenant table and row level security
/// applies to the current user; `None` leaves the COPY to PostgreSQL.
unsafe fn tenant_column_under_rls(relation: *mut pg_sys::RangeVar) -> Option<String> {
    let relid = pg_sys::RangeVarGetRelidExtended(
        relation,
        pg_sys::NoLock as _,
        pg_sys::RVROption::RVR_MISSING_OK,
        None,
        std::ptr::null_mut(),
    );
    if relid == pg_sys::InvalidOid
        || pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true) != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    {
        return None;
    }
    let schema = pg_sys::get_namespace_oid(c"sutra".as_ptr(), true);
    if schema == pg_sys::InvalidOid
        || pg_sys::get_relname_relid(c"tenant_tables".as_ptr(), schema) == pg_sys::InvalidOid
    {
        return None;
    }
    as_superuser(|| {
        Spi::get_one_with_args::<String>(
            "SELECT (SELECT tenant_column::text FROM sutra.tenant_tables WHERE table_name = $1)",
            &[relid.into()],
        )
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not read tenant tables: {e}")))
    .or_else(|| super::citus::shard_tenant_column(relid))
}

/// Whether the COPY's table is distributed by Citus: Citus then sends the rows to the shards,
/// where this path applies to each shard's COPY.
unsafe fn citus_table(relation: *mut pg_sys::RangeVar) -> bool {
    let relid = pg_sys::RangeVarGetRelidExtended(relation, pg_sys::NoLock as _, 0, None, std::ptr::null_mut());
    super::citus::distributed(relid)
}

/// Whether a COPY into the table must go through INSERT: when the table or any of its partitions
/// has enabled BEFORE INSERT (or INSTEAD OF INSERT) row triggers (they run after a COPY's WHERE
/// clause and may change the row), or policies besides sutra's own (the direct path checks only
/// sutra's tenant condition; INSERT applies every policy).
unsafe fn has_before_insert_row_triggers(relation: *mut pg_sys::RangeVar) -> bool {
    let relid = pg_sys::RangeVarGetRelidExtended(relation, pg_sys::NoLock as _, 0, None, std::ptr::null_mut());
    // tgtype bits: 1 row, 2 before, 4 insert, 64 instead.
    // sutra's own query: with the catalog's operators, not the session's (a tenant's `&` or `=`
    // must not decide which way a COPY goes).
    crate::backend::caller::with_catalog_search_path(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger t
                            WHERE t.tgrelid IN (SELECT $1::regclass UNION SELECT p.relid FROM pg_partition_tree($1) p)
                              AND t.tgenabled <> 'D' AND t.tgtype & 1 = 1 AND t.tgtype & 4 = 4
                              AND (t.tgtype & 2 = 2 OR t.tgtype & 64 = 64))
                 OR EXISTS (SELECT 1 FROM pg_policy y
                            WHERE y.polrelid IN (SELECT $1::regclass UNION SELECT p.relid FROM pg_partition_tree($1) p)
                              AND y.polname !~ '^sutra_tenant_(select|insert|update|delete)$')",
            &[relid.into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(true)
}

/// COPY FROM into a tenant table with BEFORE INSERT row triggers, with exactly INSERT's
/// semantics: the rows are copied into a temporary table of the COPY's columns, then inserted
/// with INSERT ... SELECT, so triggers run first and the policies' WITH CHECK sees their result.
unsafe fn copy_through_insert(call: &Utility, copy: *mut pg_sys::CopyStmt) -> u64 {
    context::require_scope(Scopes::WRITE, "write");
    let rel = pg_sys::table_openrv((*copy).relation, pg_sys::RowExclusiveLock as i32);
    let relid = (*rel).rd_id;
    // The COPY's columns: as listed, or every column that is neither dropped nor generated.
    let mut columns = Vec::new();
    if (*copy).attlist.is_null() {
        let desc = (*rel).rd_att;
        for i in 0..(*desc).natts as usize {
            let att = (*desc).attrs.as_ptr().add(i);
            if !(*att).attisdropped && (*att).attgenerated == 0 {
                columns.push(CStr::from_ptr((*att).attname.data.as_ptr()).to_string_lossy().into_owned());
            }
        }
    } else {
        let list = (*copy).attlist;
        for i in 0..(*list).length as usize {
            let node = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::String;
            columns.push(CStr::from_ptr((*node).sval).to_string_lossy().into_owned());
        }
    }
    pg_sys::table_close(rel, pg_sys::NoLock as _);
    let cols = columns.iter().map(spi::quote_identifier).collect::<Vec<_>>().join(", ");
    let target = Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[relid.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, "the COPY's table is gone"));
    let pid = pg_sys::MyProcPid;
    let staging = format!("sutra_copy_{pid}");
    let run =
        |sql: String| Spi::run(&sql).unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}")));
    // Column types from the catalog: the COPY needs INSERT on the table, not SELECT.
    let definition = Spi::get_one_with_args::<String>(
        "SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                           ORDER BY array_position($2, a.attname::text))
         FROM pg_attribute a WHERE a.attrelid = $1 AND a.attname::text = ANY ($2) AND NOT a.attisdropped",
        &[relid.into(), columns.clone().into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN, "the COPY names no column of its table"));
    run(format!("CREATE TEMP TABLE {staging} ({definition})"));

    // The user's COPY, unchanged but for its table, into the staging table.
    let staged = pg_sys::palloc0(std::mem::size_of::<pg_sys::CopyStmt>()) as *mut pg_sys::CopyStmt;
    *staged = *copy;
    let name = CString::new(staging.as_str()).expect("no NUL");
    (*staged).relation = pg_sys::makeRangeVar(c"pg_temp".as_ptr() as *mut _, pg_sys::pstrdup(name.as_ptr()), -1);
    let planned = pg_sys::palloc0(std::mem::size_of::<pg_sys::PlannedStmt>()) as *mut pg_sys::PlannedStmt;
    *planned = *call.pstmt;
    (*planned).utilityStmt = staged as *mut pg_sys::Node;
    let mut qc = pg_sys::QueryCompletion::default();
    pg_sys::standard_ProcessUtility(
        planned,
        call.query_string,
        false,
        call.context,
        call.params,
        call.query_env,
        call.dest,
        &mut qc,
    );

    let inserted = Spi::connect_mut(|client| {
        client
            .update(format!("INSERT INTO {target} ({cols}) SELECT {cols} FROM pg_temp.{staging}").as_str(), None, &[])
            .map(|t| t.len() as u64)
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}")));
    run(format!("DROP TABLE pg_temp.{staging}"));
    inserted
}

unsafe fn list1<T>(p: *mut T) -> *mut pg_sys::List {
    pg_sys::lappend(std::ptr::null_mut(), p as *mut std::ffi::c_void)
}

unsafe fn string_node(s: &str) -> *mut pg_sys::String {
    let c = CString::new(s).expect("no NUL in an identifier");
    pg_sys::makeString(pg_sys::pstrdup(c.as_ptr()))
}

/// The raw parse tree of `sutra._copy_row_check(<column>)`.
unsafe fn row_check_call(column: &str) -> *mut pg_sys::Node {
    let cref = pg_sys::palloc0(std::mem::size_of::<pg_sys::ColumnRef>()) as *mut pg_sys::ColumnRef;
    (*cref).type_ = pg_sys::NodeTag::T_ColumnRef;
    (*cref).fields = list1(string_node(column));
    (*cref).location = -1;
    let name = pg_sys::lappend(list1(string_node("sutra")), string_node("_copy_row_check") as *mut _);
    pg_sys::makeFuncCall(name, list1(cref), pg_sys::CoercionForm::COERCE_EXPLICIT_CALL, -1) as *mut pg_sys::Node
}

/// What PostgreSQL's DoCopy does for COPY FROM, minus its refusal under row level security, plus
/// the tenant check in the WHERE clause. Returns the number of rows inserted.
unsafe fn copy_into_tenant_table(
    copy: *mut pg_sys::CopyStmt,
    column: &str,
    query_string: *const std::ffi::c_char,
    query_env: *mut pg_sys::QueryEnvironment,
) -> u64 {
    // The session must be a tenant's, allowed to write.
    let tenant = context::require_scope(Scopes::WRITE, "write");
    crate::backend::events::before_bulk_write(&tenant);
    // Reading a server file or running a program needs the same roles as for any COPY.
    let user = pg_sys::GetUserId();
    if !(*copy).filename.is_null() {
        if (*copy).is_program {
            if !pg_sys::has_privs_of_role(user, pg_sys::ROLE_PG_EXECUTE_SERVER_PROGRAM.into()) {
                raise_hint(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    "must be superuser or have privileges of the pg_execute_server_program role to COPY to or from an external program",
                    "Anyone can COPY to stdout or from stdin. psql's \\copy command also works for anyone.",
                );
            }
        } else if !pg_sys::has_privs_of_role(user, pg_sys::ROLE_PG_READ_SERVER_FILES.into()) {
            raise_hint(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "must be superuser or have privileges of the pg_read_server_files role to COPY from a file",
                "Anyone can COPY to stdout or from stdin. psql's \\copy command also works for anyone.",
            );
        }
    }

    let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
    (*pstate).p_sourcetext = query_string;
    (*pstate).p_queryEnv = query_env;
    let lockmode = pg_sys::RowExclusiveLock as i32;
    let rel = pg_sys::table_openrv((*copy).relation, lockmode);
    let nsitem = pg_sys::addRangeTableEntryForRelation(pstate, rel, lockmode, std::ptr::null_mut(), false, false);
    let rte = (*nsitem).p_rte;
    (*rte).requiredPerms = pg_sys::ACL_INSERT as _;

    // WHERE <user's condition> AND sutra._copy_row_check(<tenant column>)
    let mut raw = row_check_call(column);
    if !(*copy).whereClause.is_null() {
        let both = pg_sys::lappend(list1((*copy).whereClause), raw as *mut _);
        raw = pg_sys::makeBoolExpr(pg_sys::BoolExprType::AND_EXPR, both, -1) as *mut pg_sys::Node;
    }
    pg_sys::addNSItemToQuery(pstate, nsitem, false, true, true);
    let mut where_clause = pg_sys::transformExpr(pstate, raw, pg_sys::ParseExprKind::EXPR_KIND_COPY_WHERE);
    where_clause = pg_sys::coerce_to_boolean(pstate, where_clause, c"WHERE".as_ptr());
    pg_sys::assign_expr_collations(pstate, where_clause);
    where_clause = pg_sys::eval_const_expressions(std::ptr::null_mut(), where_clause);
    where_clause = pg_sys::canonicalize_qual(where_clause as *mut pg_sys::Expr, false) as *mut pg_sys::Node;
    let where_list = pg_sys::make_ands_implicit(where_clause as *mut pg_sys::Expr) as *mut pg_sys::Node;

    // Column privileges: INSERT on every column the COPY fills.
    let attnums = pg_sys::CopyGetAttnums((*rel).rd_att, rel, (*copy).attlist);
    if !attnums.is_null() {
        for i in 0..(*attnums).length as usize {
            let attno = (*(*attnums).elements.add(i)).int_value;
            (*rte).insertedCols =
                pg_sys::bms_add_member((*rte).insertedCols, attno - pg_sys::FirstLowInvalidHeapAttributeNumber);
        }
    }
    pg_sys::ExecCheckRTPerms((*pstate).p_rtable, true);
    if pg_sys::XactReadOnly && !(*rel).rd_islocaltemp {
        pg_sys::PreventCommandIfReadOnly(c"COPY FROM".as_ptr());
    }

    let table = CStr::from_ptr(pg_sys::get_rel_name((*rel).rd_id)).to_string_lossy().into_owned();
    TARGET.with(|t| *t.borrow_mut() = Some(CopyTarget { table, tenant: *tenant.as_bytes() }));
    let cstate = pg_sys::BeginCopyFrom(
        pstate,
        rel,
        where_list,
        (*copy).filename,
        (*copy).is_program,
        None,
        (*copy).attlist,
        (*copy).options,
    );
    let processed = pg_sys::CopyFrom(cstate);
    pg_sys::EndCopyFrom(cstate);
    TARGET.with(|t| *t.borrow_mut() = None);
    pg_sys::table_close(rel, pg_sys::NoLock as _);
    processed
}

/// `sutra._copy_row_check(tenant)`: true for a row of the COPY's tenant; raises for any other.
/// Stable, so that COPY keeps its batched inserts.
#[pg_extern(stable, name = "_copy_row_check")]
fn copy_row_check(tenant: Option<pgrx::Uuid>) -> bool {
    let (expected, table) = TARGET.with(|t| match &*t.borrow() {
        Some(target) => (target.tenant, Some(target.table.clone())),
        // Outside a COPY (a direct call): check against the context itself.
        None => (*context::required_tenant().1.as_bytes(), None),
    });
    if tenant.map(|t| *t.as_bytes()) != Some(expected) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            match table {
                Some(table) => {
                    format!("new row violates row-level security policy for table \"{table}\"")
                }
                None => "new row violates row-level security policy".to_string(),
            },
        );
    }
    true
}
