//! Walking the plan trees of a planned statement.

use pgrx::{pg_sys, PgList};

/// Calls `f` on every node of `pstmt`'s plan trees: the main tree and each subplan, through the
/// children of joins, appends, subquery scans and custom scans.
///
/// # Safety
/// `pstmt` is a valid planned statement, live for the call.
pub unsafe fn for_each_node(pstmt: *mut pg_sys::PlannedStmt, mut f: impl FnMut(*mut pg_sys::Plan)) {
    let list = |l: *mut pg_sys::List| PgList::<pg_sys::Plan>::from_pg(l).iter_ptr().collect::<Vec<_>>();
    let mut stack = vec![(*pstmt).planTree];
    stack.extend(list((*pstmt).subplans));
    while let Some(plan) = stack.pop() {
        if plan.is_null() {
            continue;
        }
        f(plan);
        stack.push((*plan).lefttree);
        stack.push((*plan).righttree);
        match (*plan).type_ {
            pg_sys::NodeTag::T_Append => stack.extend(list((*(plan as *mut pg_sys::Append)).appendplans)),
            pg_sys::NodeTag::T_MergeAppend => stack.extend(list((*(plan as *mut pg_sys::MergeAppend)).mergeplans)),
            pg_sys::NodeTag::T_SubqueryScan => stack.push((*(plan as *mut pg_sys::SubqueryScan)).subplan),
            pg_sys::NodeTag::T_CustomScan => stack.extend(list((*(plan as *mut pg_sys::CustomScan)).custom_plans)),
            _ => {}
        }
    }
}
