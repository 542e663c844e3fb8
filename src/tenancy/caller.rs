//! Who is calling: the role the session acts as, which a SECURITY DEFINER function cannot see
//! through `current_user` (that is the definer).

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// The role the session acts as (its login role, or the role of `SET ROLE`), also inside
/// SECURITY DEFINER functions.
pub fn outer_user() -> pg_sys::Oid {
    // SAFETY: reads a backend global that is always set once the session is established.
    unsafe { pg_sys::GetOuterUserId() }
}

/// Whether `role` is a superuser or has the privileges of `sutra_service`.
pub fn is_service(role: pg_sys::Oid) -> bool {
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
pub fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::InvalidOid;
    let mut sec = 0;
    // SAFETY: saving and switching the current user id is what SECURITY DEFINER functions do;
    // SECURITY_LOCAL_USERID_CHANGE marks it so that SET ROLE inside is refused.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::BOOTSTRAP_SUPERUSERID.into(),
            sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let r = f();
    // SAFETY: restores exactly what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, sec) };
    r
}
