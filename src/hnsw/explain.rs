//! EXPLAIN says why a keyed `sutra_hnsw` index is not searched for a query that names no key.
//!
//! Without `key = ...` such an index can only be searched partition by partition, so its cost
//! grows with the number of tenants and the planner sorts instead (see `cost.rs`). The plan alone
//! does not say so: it shows a sequential scan and a sort. While a query is explained, the cost
//! estimate notes each keyless costing, and after the plan EXPLAIN (text format) prints a line
//! per such index the plan does not use:
//!
//! ```text
//! Note: sutra_hnsw index hk_tenant_embedding not used: the query has no condition on its key column, so a search would visit all 1500 partitions
//! ```
//!
//! with the estimated cost of that search unless `COSTS OFF`.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CString};

use pgrx::pg_sys;

static mut PREV_EXPLAIN: pg_sys::ExplainOneQuery_hook_type = None;

/// At most this many notes per EXPLAIN (one per index; a query names few indexes).
const MAX_NOTES: usize = 16;

thread_local! {
    /// Whether a query is being explained in this backend (set again by each EXPLAIN: an error
    /// that left it set only makes later costings note what nobody prints).
    static EXPLAINING: Cell<bool> = const { Cell::new(false) };
    /// Keyless costings of the query being explained: index, partitions, estimated cost.
    static NOTES: RefCell<Vec<(pg_sys::Oid, f64, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Installs the hook. Called from `_PG_init` in the postmaster.
pub fn init() {
    // SAFETY: _PG_init runs single-threaded in the postmaster; the previous hook is kept and
    // called.
    unsafe {
        PREV_EXPLAIN = pg_sys::ExplainOneQuery_hook;
        pg_sys::ExplainOneQuery_hook = Some(explain_one_query);
    }
}

/// The cost estimate of `index` for a search of all its `partitions` (no key in the query).
pub fn note_keyless(index: pg_sys::Oid, partitions: f64, cost: f64) {
    if !EXPLAINING.with(|e| e.get()) {
        return;
    }
    NOTES.with(|n| {
        let mut n = n.borrow_mut();
        if let Some(note) = n.iter_mut().find(|(oid, _, _)| *oid == index) {
            note.2 = note.2.min(cost);
        } else if n.len() < MAX_NOTES {
            n.push((index, partitions, cost));
        }
    });
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn explain_one_query(
    query: *mut pg_sys::Query,
    cursor_options: i32,
    into: *mut pg_sys::IntoClause,
    es: *mut pg_sys::ExplainState,
    query_string: *const c_char,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
) {
    NOTES.with(|n| n.borrow_mut().clear());
    EXPLAINING.with(|e| e.set(true));
    match PREV_EXPLAIN {
        Some(prev) => prev(query, cursor_options, into, es, query_string, params, query_env),
        None => explain_standard(query, cursor_options, into, es, query_string, params, query_env),
    }
    EXPLAINING.with(|e| e.set(false));
    let notes = NOTES.with(|n| std::mem::take(&mut *n.borrow_mut()));
    // Text only: in the structured formats the plan's group is closed by now.
    if (*es).format != pg_sys::ExplainFormat::EXPLAIN_FORMAT_TEXT {
        return;
    }
    let pstmt = (*es).pstmt;
    for (index, partitions, cost) in notes {
        let name = pg_sys::get_rel_name(index);
        if name.is_null() || pstmt.is_null() || plan_uses(pstmt, index) {
            continue;
        }
        let name = std::ffi::CStr::from_ptr(name).to_string_lossy();
        let mut text = format!(
            "sutra_hnsw index {name} not used: the query has no condition on its key column, so a search would visit all {} partitions",
            partitions as i64
        );
        if (*es).costs {
            text.push_str(&format!(" (estimated cost {cost:.2})"));
        }
        let text = CString::new(text).unwrap_or_default();
        pg_sys::ExplainPropertyText(c"Note".as_ptr(), text.as_ptr(), es);
    }
}

/// What PostgreSQL's ExplainOneQuery does without a hook: plan the query, then explain the plan
/// with its planning time and buffer usage.
#[allow(clippy::too_many_arguments)]
unsafe fn explain_standard(
    query: *mut pg_sys::Query,
    cursor_options: i32,
    into: *mut pg_sys::IntoClause,
    es: *mut pg_sys::ExplainState,
    query_string: *const c_char,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
) {
    let buffers = (*es).buffers;
    let usage_start = pg_sys::pgBufferUsage;
    let start = std::time::Instant::now();
    let plan = crate::fmgr::standard::pg_plan_query(query, query_string, cursor_options, params);
    let took = start.elapsed();
    let planning = pg_sys::instr_time { tv_sec: took.as_secs() as _, tv_nsec: took.subsec_nanos() as _ };
    let mut usage = pg_sys::BufferUsage::default();
    if buffers {
        pg_sys::BufferUsageAccumDiff(&mut usage, &raw const pg_sys::pgBufferUsage, &usage_start);
    }
    let usage_ptr: *const pg_sys::BufferUsage = if buffers { &usage } else { std::ptr::null() };
    crate::fmgr::standard::explain_one_plan(plan, into, es, query_string, params, query_env, &planning, usage_ptr);
}

/// Whether the plan scans index `index` anywhere (its subplans included).
unsafe fn plan_uses(pstmt: *mut pg_sys::PlannedStmt, index: pg_sys::Oid) -> bool {
    let mut found = false;
    crate::backend::plan::for_each_node(pstmt, |plan| {
        found |= match (*plan).type_ {
            pg_sys::NodeTag::T_IndexScan => (*(plan as *mut pg_sys::IndexScan)).indexid == index,
            pg_sys::NodeTag::T_IndexOnlyScan => (*(plan as *mut pg_sys::IndexOnlyScan)).indexid == index,
            _ => false,
        };
    });
    found
}
