//! Who is calling: the role the session acts as, which a SECURITY DEFINER function cannot see
//! through `current_user` (that is the definer).

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;

thread_local! {
    /// While sutra's own code runs as superuser ([`as_superuser`]): on whose behalf, innermost last.
    /// With each: whether it was itself inside a security-restricted operation.
    static PRINCIPALS: std::cell::RefCell<Vec<(pg_sys::Oid, bool)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The role the session acts as (its login role, or the role of `SET ROLE`), also inside
/// SECURITY DEFINER functions and inside sutra's own superuser lookups.
pub fn outer_user() -> pg_sys::Oid {
    if let Some((p, _)) = PRINCIPALS.with(|p| p.borrow().last().copied()) {
        return p;
    }
    // SAFETY: reads a backend global that is always set once the session is established.
    unsafe { pg_sys::GetOuterUserId() }
}

/// Raises 42501 ("permission denied to `what`") unless the current user (inside a SECURITY
/// DEFINER function of sutra's: its owner) is a superuser: for sutra's internal functions that
/// only its own SQL functions call.
pub fn require_superuser(what: &str) {
    // SAFETY: reads the current user's role attributes.
    if !unsafe { pg_sys::superuser() } {
        crate::error::raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied to {what}"));
    }
}

/// Whether `role` is a superuser or has the privileges of `sutra_service`.
///
/// Inside a security-restricted operation that sutra did not start (a table owner's trigger or
/// index expression run by a purge, VACUUM, ANALYZE, CREATE INDEX or REFRESH MATERIALIZED VIEW)
/// nobody is: the session's role is still the one that started the operation (a superuser, say),
/// but the code running is the table owner's.
pub fn is_service(role: pg_sys::Oid) -> bool {
    if restricted() {
        return false;
    }
    // SAFETY: catalog lookups by oid and name; get_role_oid with missing_ok returns InvalidOid
    // instead of raising when the role does not exist.
    unsafe {
        if pg_sys::superuser_arg(role) {
            return true;
        }
        let service = pg_sys::get_role_oid(c"sutra_service".as_ptr(), true);
        service != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, service)
    }
}

/// Whether code runs inside a security-restricted operation that sutra did not start itself.
fn restricted() -> bool {
    match PRINCIPALS.with(|p| p.borrow().last().copied()) {
        Some((_, restricted)) => restricted,
        // SAFETY: reads backend globals.
        None => unsafe { pg_sys::InSecurityRestrictedOperation() },
    }
}

/// `sutra._caller()`: the name of the role the session acts as.
#[pg_extern(stable, parallel_safe, name = "_caller")]
fn caller_name() -> String {
    // SAFETY: GetUserNameFromId with noerr returns null for a dropped role instead of raising.
    unsafe {
        let p = pg_sys::GetUserNameFromId(outer_user(), true);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// `sutra._caller_is_service()`: whether the caller may manage every tenant.
#[pg_extern(stable, parallel_safe, name = "_caller_is_service")]
fn caller_is_service() -> bool {
    is_service(outer_user())
}

/// Whether this process is a parallel worker (which gets its settings from the leader and must
/// not run queries of its own).
pub fn in_parallel_worker() -> bool {
    // SAFETY: a plain backend global.
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
}

/// Runs `f` as the bootstrap superuser, for sutra's own lookups into tables the caller may not
/// read (and that row level security would route back into the tenant context). The previous
/// identity is restored afterwards; if `f` raises, transaction abort restores it.
///
/// `f` must only run sutra's own queries on sutra's own tables. So that no operator or function
/// of the session's search_path can stand in for PostgreSQL's (a `public.=` ahead of
/// `pg_catalog` in a tenant's search_path), `search_path` is `pg_catalog, pg_temp` while `f` runs,
/// as in sutra's SECURITY DEFINER functions; and the switch is marked a security-restricted
/// operation, so nothing inside can SET ROLE, create temporary objects or change settings for
/// the rest of the session.
pub fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    let principal = (outer_user(), restricted());
    with_catalog_search_path(|| {
        let mut user = pg_sys::InvalidOid;
        let mut sec = 0;
        // SAFETY: saving and switching the current user id is what SECURITY DEFINER functions do;
        // undone below, and by transaction abort if `f` raises.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
            pg_sys::SetUserIdAndSecContext(
                pg_sys::BOOTSTRAP_SUPERUSERID.into(),
                sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
            );
        }
        PRINCIPALS.with(|p| p.borrow_mut().push(principal));
        // Popped also when `f` raises (the error unwinds through this frame as a Rust panic).
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                PRINCIPALS.with(|p| p.borrow_mut().pop());
            }
        }
        let pop = Pop;
        let r = f();
        drop(pop);
        // SAFETY: restores exactly what was saved above.
        unsafe { pg_sys::SetUserIdAndSecContext(user, sec) };
        r
    })
}

/// Runs `f` with `search_path = pg_catalog, pg_temp`, for sutra's own queries in hooks, triggers
/// and background workers: no function, operator or type of the session's search_path can stand
/// in for PostgreSQL's in them. Settings changed inside are undone when `f` returns.
pub fn with_catalog_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level scopes the setting to this call, as a function's SET clause does;
    // it is popped below (rolling back whatever `f` set), and by transaction abort if `f` raises.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let r = f();
    // SAFETY: pops the nest level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(false, level) };
    r
}
