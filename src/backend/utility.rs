//! sutra's one `ProcessUtility_hook`: concept modules register a handler for utility statements
//! (tenancy runs `COPY ... FROM` into tenant tables itself; usage forgets a dropped database's
//! metering), and the hook calls them in turn, each deciding whether the statement goes on.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// One utility statement on its way through the hook, with the arguments PostgreSQL passed.
pub struct Utility {
    pub pstmt: *mut pg_sys::PlannedStmt,
    pub query_string: *const std::ffi::c_char,
    pub read_only_tree: bool,
    pub context: pg_sys::ProcessUtilityContext::Type,
    pub params: pg_sys::ParamListInfo,
    pub query_env: *mut pg_sys::QueryEnvironment,
    pub dest: *mut pg_sys::DestReceiver,
    pub qc: *mut pg_sys::QueryCompletion,
}

impl Utility {
    /// The statement's parse node when it is of type `tag`.
    pub fn statement<T>(&self, tag: pg_sys::NodeTag) -> Option<*mut T> {
        // SAFETY: `pstmt` is the planned statement PostgreSQL passed to the hook, live for the call.
        let stmt = unsafe { (*self.pstmt).utilityStmt };
        // SAFETY: a non-null utilityStmt is a Node, whose first field is its tag.
        (!stmt.is_null() && unsafe { (*stmt).type_ } == tag).then_some(stmt as *mut T)
    }
}

/// A handler gets the statement and `next`, which runs it (through the handlers after this one
/// and then PostgreSQL); a handler that does the statement itself does not call `next`.
pub type Handler = unsafe fn(call: &Utility, next: &dyn Fn());

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut HANDLERS: Vec<Handler> = Vec::new();

/// Adds a handler; the first registration installs the hook. Call from `_PG_init` only.
pub fn register(handler: Handler) {
    // SAFETY: _PG_init runs once, single-threaded, in the postmaster; backends inherit the list
    // and never change it. The previous hook is chained.
    unsafe {
        let handlers = &mut *std::ptr::addr_of_mut!(HANDLERS);
        if handlers.is_empty() {
            PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
            pg_sys::ProcessUtility_hook = Some(process_utility);
        }
        handlers.push(handler);
    }
}

/// The signature is PostgreSQL's `ProcessUtility_hook_type`.
#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let call = Utility { pstmt, query_string, read_only_tree, context, params, query_env, dest, qc };
    run(&call, 0);
}

/// Runs handler `i` with the rest of the chain as its `next`.
unsafe fn run(call: &Utility, i: usize) {
    // SAFETY: the list is fixed after _PG_init (see `register`).
    let handlers = &*std::ptr::addr_of!(HANDLERS);
    match handlers.get(i) {
        Some(handler) => handler(call, &|| run(call, i + 1)),
        None => pass_on(call),
    }
}

/// The statement to the previous hook, or to PostgreSQL's standard_ProcessUtility.
unsafe fn pass_on(c: &Utility) {
    match PREV_PROCESS_UTILITY {
        Some(prev) => prev(c.pstmt, c.query_string, c.read_only_tree, c.context, c.params, c.query_env, c.dest, c.qc),
        None => crate::fmgr::standard::process_utility(
            c.pstmt,
            c.query_string,
            c.read_only_tree,
            c.context,
            c.params,
            c.query_env,
            c.dest,
            c.qc,
        ),
    }
}
