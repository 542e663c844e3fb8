//! Declaring PostgreSQL version-1 C functions.
//!
//! sutra writes the SQL of its types, operators and casts by hand (`sql/*.sql`), the way a C
//! extension does, so it has full control of volatility, strictness and parallel safety. The Rust
//! side of each such function is declared with [`pg_function!`].

/// Declares `pg_finfo_<name>` (the version-1 call convention record PostgreSQL looks up with
/// `dlsym`) and the entry point `<name>`, guarded as `#[pg_guard]` guards, so that a Rust panic or an
/// `ereport` becomes a PostgreSQL error instead of unwinding into C.
macro_rules! pg_function {
    ($(#[$meta:meta])* fn $name:ident($fcinfo:ident) $body:block) => {
        ::paste::paste! {
            #[unsafe(no_mangle)]
            #[doc(hidden)]
            pub extern "C" fn [<pg_finfo_ $name>]() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
                const V1: ::pgrx::pg_sys::Pg_finfo_record =
                    ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
                &V1
            }
        }
        $(#[$meta])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C-unwind" fn $name(
            $fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
        ) -> ::pgrx::pg_sys::Datum {
            // What `#[pg_guard]` expands to: run the body under pgrx's guard, which turns a
            // panic or an ereport into a PostgreSQL error at this boundary.
            ::pgrx::pg_sys::submodules::panic::pgrx_extern_c_guard(move || {
                #[allow(unused_unsafe)]
                unsafe { $body }
            })
        }
    };
}

pub(crate) use pg_function;

use pgrx::pg_sys;

/// Argument `n` as an `i32`.
///
/// # Safety
/// `fcinfo` is the call's own, with at least `n + 1` arguments, argument `n` an `int4`.
#[inline]
pub unsafe fn arg_i32(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> i32 {
    pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n).value() as i32
}

/// Copies a Rust string into a palloc'd, NUL-terminated C string (for `cstring` results).
pub fn palloc_cstring(s: &str) -> pg_sys::Datum {
    // SAFETY: palloc either returns `len + 1` writable bytes or raises an ERROR (no return).
    unsafe {
        let p = pg_sys::palloc(s.len() + 1) as *mut u8;
        std::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        *p.add(s.len()) = 0;
        pg_sys::Datum::from(p)
    }
}

/// PostgreSQL's standard implementations behind the hooks sutra installs, called directly.
///
/// pgrx's `pg_sys` versions of these catch a PostgreSQL error and raise it again from Rust, which
/// rewrites it: the DETAIL becomes empty, or a Rust backtrace when the server's environment sets
/// `RUST_BACKTRACE`. Called directly, an error raised inside passes through sutra's hook
/// untouched, exactly as it would without sutra. The hooks hold no value with a destructor at
/// the call, so nothing is skipped when such an error leaves through them.
pub mod standard {
    use std::ffi::c_char;

    use pgrx::pg_sys;

    unsafe extern "C-unwind" {
        #[link_name = "standard_ExecutorStart"]
        pub fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32);
        #[link_name = "standard_planner"]
        pub fn planner(
            parse: *mut pg_sys::Query,
            query_string: *const c_char,
            cursor_options: i32,
            bound_params: pg_sys::ParamListInfo,
        ) -> *mut pg_sys::PlannedStmt;
        #[link_name = "pg_plan_query"]
        pub fn pg_plan_query(
            query: *mut pg_sys::Query,
            query_string: *const c_char,
            cursor_options: i32,
            bound_params: pg_sys::ParamListInfo,
        ) -> *mut pg_sys::PlannedStmt;
        #[allow(clippy::too_many_arguments)]
        #[link_name = "ExplainOnePlan"]
        pub fn explain_one_plan(
            plannedstmt: *mut pg_sys::PlannedStmt,
            into: *mut pg_sys::IntoClause,
            es: *mut pg_sys::ExplainState,
            query_string: *const c_char,
            params: pg_sys::ParamListInfo,
            query_env: *mut pg_sys::QueryEnvironment,
            planduration: *const pg_sys::instr_time,
            bufusage: *const pg_sys::BufferUsage,
        );
        #[link_name = "standard_ExecutorEnd"]
        pub fn executor_end(query_desc: *mut pg_sys::QueryDesc);
        #[link_name = "standard_ProcessUtility"]
        pub fn process_utility(
            pstmt: *mut pg_sys::PlannedStmt,
            query_string: *const c_char,
            read_only_tree: bool,
            context: pg_sys::ProcessUtilityContext::Type,
            params: pg_sys::ParamListInfo,
            query_env: *mut pg_sys::QueryEnvironment,
            dest: *mut pg_sys::DestReceiver,
            qc: *mut pg_sys::QueryCompletion,
        );
    }
}
