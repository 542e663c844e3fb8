//! The planner hook: a tenant table partitioned by its tenant column is planned for the session's
//! tenant only, and a tenant table distributed by Citus is routed to the tenant's shard.
//!
//! Row level security adds `tenant_id = (SELECT sutra.current_tenant(scope))` to every scan of a
//! tenant table. That value is known only when the query runs, so the planner plans every
//! partition and the executor skips all but one (run-time pruning): planning grows with the
//! number of partitions. When the session has a verified context, this hook adds
//! `tenant_id = '<that tenant>'` next to sutra's own policy qual on each scanned partitioned
//! tenant table, and the planner prunes the other partitions. In a Citus database the policies
//! call `sutra.current_tenant_checked(scope)` directly (Citus refuses subqueries in policies) and the
//! constant goes next to them on every tenant table: Citus then routes the query to one shard.
//!
//! The added qual only ever narrows: it goes where sutra's policy already restricts the scan to
//! the current tenant (the same relation, the same column, the same security barrier), and only
//! there: not for superusers and other roles the policies do not apply to, not next to a policy
//! of the user's own that widens sutra's (OR). A plan holding the constant must not serve
//! another tenant: when the session's context moves to another tenant after such a plan was
//! made, every cached plan of the backend is invalidated and planned again on next use.

use std::cell::Cell;
use std::ffi::c_void;

use pgrx::{pg_sys, PgList};

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

thread_local! {
    /// The tenant whose constant is in this backend's cached plans, if any plan holds one.
    static PLANNED_FOR: Cell<Option<[u8; 16]>> = const { Cell::new(None) };
}

/// Installs the hook. Called from `_PG_init` in the postmaster.
pub fn init() {
    // SAFETY: _PG_init runs single-threaded in the postmaster; the previous hook is kept and
    // called, as every planner hook must.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
    }
    super::context::on_change_for_plans(context_changed);
}

/// The session's context now names `tenant`: plans made for another tenant are planned again.
fn context_changed(tenant: Option<[u8; 16]>) {
    let Some(tenant) = tenant else { return };
    if PLANNED_FOR.with(|p| p.get()).is_some_and(|planned| planned != tenant) {
        // SAFETY: marks every cached plan of this backend invalid; it only sets flags, so it is
        // safe in an assign hook, also during abort.
        unsafe { pg_sys::ResetPlanCache() };
        PLANNED_FOR.with(|p| p.set(None));
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: i32,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    let tenant = if crate::guc::TENANT_PRUNING.get() { super::context::peek_tenant() } else { None };
    if let Some(tenant) = tenant {
        let mut walk = Walk { tenant: *tenant.as_bytes(), namespace: None, added: false };
        // SAFETY: the planner's own query tree, which it may modify (plan caches plan a copy);
        // the walker only appends to security quals.
        walker(parse as *mut pg_sys::Node, &mut walk as *mut Walk as *mut c_void);
        if walk.added {
            PLANNED_FOR.with(|p| p.set(Some(walk.tenant)));
        }
    }
    match PREV_PLANNER {
        Some(prev) => prev(parse, query_string, cursor_options, bound_params),
        // Called directly, so that its errors reach the client unchanged (see `crate::fmgr::standard`).
        None => crate::fmgr::standard::planner(parse, query_string, cursor_options, bound_params),
    }
}

struct Walk {
    tenant: [u8; 16],
    /// The oid of schema `sutra`, looked up at the first partitioned table with security quals.
    namespace: Option<pg_sys::Oid>,
    added: bool,
}

impl Walk {
    fn namespace(&mut self) -> pg_sys::Oid {
        // SAFETY: a catalog lookup by a constant name, inside the planner's transaction.
        *self.namespace.get_or_insert_with(|| unsafe { pg_sys::get_namespace_oid(c"sutra".as_ptr(), true) })
    }
}

/// Visits every query of the tree (subqueries, CTEs, sublinks), adding the constant to the
/// partitioned tenant tables each one scans.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, cx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: cx is the Walk passed by `planner`; node is a valid node of the tree.
    let walk = &mut *(cx as *mut Walk);
    if (*node).type_ == pg_sys::NodeTag::T_Query {
        let query = node as *mut pg_sys::Query;
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*query).rtable);
        for (i, rte) in rtable.iter_ptr().enumerate() {
            add_constant(rte, (i + 1) as pg_sys::Index, walk);
        }
        return pg_sys::query_tree_walker(query, Some(walker), cx, 0);
    }
    pg_sys::expression_tree_walker(node, Some(walker), cx)
}

/// Adds `column = '<tenant>'` to the security quals of range table entry `rti` when one of them
/// is sutra's tenant policy qual and the relation is partitioned or distributed by Citus.
unsafe fn add_constant(rte: *mut pg_sys::RangeTblEntry, rti: pg_sys::Index, walk: &mut Walk) {
    if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION || (*rte).securityQuals.is_null() {
        return;
    }
    let partitioned = (*rte).relkind as u8 == pg_sys::RELKIND_PARTITIONED_TABLE;
    let quals = PgList::<pg_sys::Node>::from_pg((*rte).securityQuals);
    for qual in quals.iter_ptr() {
        let Some((opno, var, direct)) = tenant_policy(qual, rti, walk.namespace()) else { continue };
        // A Citus database's policies call the function directly (Citus refuses subqueries in
        // policies): there the constant routes the query to the tenant's shard, whatever the
        // table's kind.
        if partitioned || direct {
            let bytes = pg_sys::palloc(16) as *mut u8;
            std::ptr::copy_nonoverlapping(walk.tenant.as_ptr(), bytes, 16);
            let value = pg_sys::makeConst(
                pg_sys::UUIDOID,
                -1,
                pg_sys::InvalidOid,
                16,
                pg_sys::Datum::from(bytes as usize),
                false,
                false,
            );
            let var = pg_sys::copyObjectImpl(var as *const c_void) as *mut pg_sys::Expr;
            let op = pg_sys::make_opclause(
                opno,
                pg_sys::BOOLOID,
                false,
                var,
                value as *mut pg_sys::Expr,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
            ) as *mut pg_sys::OpExpr;
            (*op).opfuncid = pg_sys::get_opcode(opno);
            (*rte).securityQuals = pg_sys::lappend((*rte).securityQuals, op as *mut c_void);
            walk.added = true;
            return;
        }
    }
}

/// The operator and the tenant column of `qual` when it is sutra's policy qual on entry `rti`:
/// `<uuid column of rti> = (SELECT sutra.current_tenant(...))`, or, directly,
/// `<uuid column of rti> = sutra.current_tenant_checked(...)` (then the third value is true).
unsafe fn tenant_policy(
    qual: *mut pg_sys::Node,
    rti: pg_sys::Index,
    namespace: pg_sys::Oid,
) -> Option<(pg_sys::Oid, *mut pg_sys::Var, bool)> {
    if qual.is_null() || (*qual).type_ != pg_sys::NodeTag::T_OpExpr {
        return None;
    }
    let op = qual as *mut pg_sys::OpExpr;
    let args = PgList::<pg_sys::Node>::from_pg((*op).args);
    if args.len() != 2 || pg_sys::get_opcode((*op).opno) != pg_sys::Oid::from(pg_sys::F_UUID_EQ) {
        return None;
    }
    let (left, right) = (args.get_ptr(0)?, args.get_ptr(1)?);
    if (*left).type_ != pg_sys::NodeTag::T_Var {
        return None;
    }
    let var = left as *mut pg_sys::Var;
    if (*var).varno as pg_sys::Index != rti || (*var).varlevelsup != 0 || (*var).vartype != pg_sys::UUIDOID {
        return None;
    }
    if (*right).type_ == pg_sys::NodeTag::T_FuncExpr {
        return is_current_tenant(right, namespace).then_some(((*op).opno, var, true));
    }
    if (*right).type_ != pg_sys::NodeTag::T_SubLink {
        return None;
    }
    let sublink = right as *mut pg_sys::SubLink;
    if (*sublink).subLinkType != pg_sys::SubLinkType::EXPR_SUBLINK || (*sublink).subselect.is_null() {
        return None;
    }
    let sub = (*sublink).subselect as *mut pg_sys::Query;
    let targets = PgList::<pg_sys::TargetEntry>::from_pg((*sub).targetList);
    if (*(sub as *mut pg_sys::Node)).type_ != pg_sys::NodeTag::T_Query || !(*sub).rtable.is_null() || targets.len() != 1
    {
        return None;
    }
    let target = targets.get_ptr(0)?;
    let expr = (*target).expr as *mut pg_sys::Node;
    is_current_tenant(expr, namespace).then_some(((*op).opno, var, false))
}

/// Whether `expr` is a call of `sutra.current_tenant` or `sutra.current_tenant_checked`.
unsafe fn is_current_tenant(expr: *mut pg_sys::Node, namespace: pg_sys::Oid) -> bool {
    if expr.is_null() || (*expr).type_ != pg_sys::NodeTag::T_FuncExpr {
        return false;
    }
    let func = (*(expr as *mut pg_sys::FuncExpr)).funcid;
    let name = pg_sys::get_func_name(func);
    !name.is_null()
        && matches!(std::ffi::CStr::from_ptr(name).to_bytes(), b"current_tenant" | b"current_tenant_checked")
        && pg_sys::get_func_namespace(func) == namespace
}
