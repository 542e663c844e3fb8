//! The tenant context: the `sutra.tenant_id` parameter and the functions that read it.
//!
//! The parameter holds a value signed with the cluster's context secret (see
//! `sutra_core::tenant_context`). Any role may SET it (so a Citus worker can receive it as a
//! `SET LOCAL`), but the check hook refuses any value sutra did not sign, and every read checks
//! the signature and the expiry again. The empty value means "no tenant"; RESET, RESET ALL and
//! DISCARD ALL return to it. Because it is a real parameter, SET LOCAL, rollback and parallel
//! workers behave as they do for any setting.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use sutra_core::tenant_context::{self, Context, ContextError, Grant, Scopes};

use super::citus;
use crate::backend::{now_unix, random_bytes, GenerationMap};
use crate::error::{raise_detail, raise_hint};

/// The current value of `sutra.tenant_id` (owned by the GUC machinery).
static mut TENANT_ID: *mut c_char = std::ptr::null_mut();
/// The current value of `sutra.context_secret` (owned by the GUC machinery).
static mut CONTEXT_SECRET: *mut c_char = std::ptr::null_mut();
/// Random secret drawn by the postmaster at start, used while `sutra.context_secret` is empty.
/// Backends and parallel workers are forked from the postmaster and so share it.
static RANDOM_SECRET: OnceLock<[u8; 32]> = OnceLock::new();

const NO_CONTEXT_HINT: &str =
    "Call sutra.authenticate(api_key), sutra.authenticate_jwt(token) or sutra.set_tenant(tenant) first.";

/// The secret contexts are signed with.
fn secret() -> Vec<u8> {
    // SAFETY: the GUC machinery keeps this pointer valid (or null) between statements.
    let configured = unsafe { CONTEXT_SECRET.as_ref().map(|p| CStr::from_ptr(p).to_bytes()) };
    match configured {
        Some(s) if !s.is_empty() => s.to_vec(),
        _ => RANDOM_SECRET.get_or_init(random_bytes::<32>).to_vec(),
    }
}

/// The purpose the secret of forwarded contexts is derived for.
const FORWARDED: &str = "sutra context forwarded to Citus workers";

/// The secret a coordinator signs the contexts it forwards to Citus workers with: derived from
/// `sutra.context_secret`, so every node has it, and another one, so that a forwarded value, which
/// workers see as statement text, is refused by every session but the ones Citus opens.
fn forwarded_secret() -> Vec<u8> {
    tenant_context::derive_secret(&secret(), FORWARDED)
}

/// Verifies `value` with the secret or, where forwarded contexts are taken, with the forwarded
/// secret: in a parallel worker (its leader took the value) and on a connection Citus opened
/// (named `citus_internal gpid=...`), which `strict` also requires to be on a Citus worker.
fn verify_value(value: &str, now: i64, strict: bool) -> Result<Context, ContextError> {
    match tenant_context::verify(value, &secret(), now) {
        Err(ContextError::BadSignature)
            if citus::loaded()
                && (crate::backend::caller::in_parallel_worker()
                    || (citus::named_internal() && (!strict || citus::is_worker()))) =>
        {
            tenant_context::verify(value, &forwarded_secret(), now)
        }
        other => other,
    }
}

/// Sets a GUC check-hook failure message (the hook itself must not raise).
unsafe fn check_failure(code: PgSqlErrorCode, message: &str, detail: &str) -> bool {
    check_failure_hint(code, message, detail, NO_CONTEXT_HINT)
}

unsafe fn check_failure_hint(code: PgSqlErrorCode, message: &str, detail: &str, hint: &str) -> bool {
    let m = CString::new(message).unwrap_or_default();
    let d = CString::new(detail).unwrap_or_default();
    let h = CString::new(hint).unwrap_or_default();
    pg_sys::GUC_check_errcode(code as i32);
    pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(m.as_ptr());
    pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(d.as_ptr());
    pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(h.as_ptr());
    false
}

/// The secret is the random one of this server: contexts it signs verify nowhere else.
fn secret_is_random() -> bool {
    // SAFETY: the GUC machinery keeps this pointer valid (or null) between statements.
    unsafe { CONTEXT_SECRET.as_ref().is_none_or(|p| *p == 0) }
}

/// Warns in the server log at start when this server is meant to be a node of a Citus cluster
/// but has no `sutra.context_secret`: contexts issued on one node would be refused on the others.
/// Called from `_PG_init`, after the parameters are defined.
pub fn check_cluster_settings() {
    if citus::loaded() && secret_is_random() {
        pgrx::warning!(
            "sutra.context_secret is empty: tenant contexts issued on this server will not verify on other nodes of the Citus cluster"
        );
    }
}

/// Check hook of `sutra.tenant_id`: only the empty value or a value sutra signed is accepted.
#[pg_guard]
unsafe extern "C-unwind" fn check_tenant_id(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: the GUC machinery passes a valid pointer to a NUL-terminated string (or null).
    let value = match (*newval).as_ref() {
        None => return true,
        Some(p) => CStr::from_ptr(p).to_string_lossy(),
    };
    if value.is_empty() {
        return true;
    }
    // A context belongs to one session: it may come from the client at connection (PGOPTIONS)
    // or from SET / set_config in the session, never from a stored setting (ALTER ROLE or
    // DATABASE ... SET, a function's SET clause, a configuration file).
    if source != pg_sys::GucSource::PGC_S_CLIENT && source != pg_sys::GucSource::PGC_S_SESSION {
        return check_failure(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "a tenant context can only be set in a session",
            "sutra.tenant_id cannot be stored with ALTER ROLE, ALTER DATABASE, a function's SET clause or a configuration file.",
        );
    }
    let now = now_unix();
    // A value this backend verified or signed itself needs no second HMAC.
    if let Some(expires) = VERIFIED.with(|c| c.borrow().as_ref().filter(|v| v.value == value).map(|v| v.ctx.expires)) {
        if now < expires {
            return true;
        }
    }
    match verify_value(&value, now, false) {
        Ok(_) => true,
        Err(ContextError::Expired) => check_failure(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "tenant context has expired",
            "sutra.tenant_id holds a tenant context past its expiry.",
        ),
        Err(ContextError::BadSignature) if citus::loaded() => check_failure_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "invalid tenant context",
            "Its signature does not verify with this server's sutra.context_secret: it was forged, or issued by a node with another secret.",
            "Every node of a Citus cluster needs the same sutra.context_secret in postgresql.conf.",
        ),
        Err(_) => check_failure(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "invalid tenant context",
            "sutra.tenant_id only takes a tenant context issued by sutra.",
        ),
    }
}

/// Check hook of `sutra.context_secret`: empty, or at least 32 bytes.
#[pg_guard]
unsafe extern "C-unwind" fn check_context_secret(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let len = (*newval).as_ref().map(|p| CStr::from_ptr(p).to_bytes().len()).unwrap_or(0);
    if len == 0 || len >= 32 {
        return true;
    }
    let m = CString::new("sutra.context_secret must be empty or at least 32 bytes long").unwrap();
    pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(m.as_ptr());
    false
}

/// The tenant a checked value names, without checking it again.
fn tenant_of_value(value: &str) -> Option<[u8; 16]> {
    let t = value.strip_prefix("v1.")?.get(..36)?;
    tenant_context::is_canonical_uuid(t).then(|| *uuid_of(t).as_bytes())
}

/// Assign hook of `sutra.tenant_id`: the session's connection moves to the new tenant (or to
/// none). It runs for every change, also RESET and the end of a SET LOCAL, and must not fail.
#[pg_guard]
unsafe extern "C-unwind" fn assign_tenant_id(newval: *const c_char, _extra: *mut c_void) {
    if crate::backend::caller::in_parallel_worker() || pg_sys::MyDatabaseId == pg_sys::InvalidOid {
        return;
    }
    let tenant = newval.as_ref().and_then(|p| CStr::from_ptr(p).to_str().ok()).and_then(tenant_of_value);
    if let Some(listener) = PLAN_LISTENER.get() {
        listener(tenant);
    }
    crate::backend::events::context_changed(tenant);
}

/// Told of every change of the session's context before anyone else (the planner hook, whose
/// plans for one tenant must not run for another).
static PLAN_LISTENER: OnceLock<fn(Option<[u8; 16]>)> = OnceLock::new();

/// Registers [`PLAN_LISTENER`] (from `_PG_init`).
pub fn on_change_for_plans(listener: fn(Option<[u8; 16]>)) {
    let _ = PLAN_LISTENER.set(listener);
}

/// Assign hook of `sutra.context_secret`: values verified under the old secret are forgotten.
#[pg_guard]
unsafe extern "C-unwind" fn assign_context_secret(_newval: *const c_char, _extra: *mut c_void) {
    VERIFIED.with(|c| *c.borrow_mut() = None);
}

/// Defines the parameters of the tenant context. Called from `_PG_init` in the postmaster.
pub fn init() {
    RANDOM_SECRET.get_or_init(random_bytes::<32>);
    // SAFETY: registering a callback in the postmaster; every backend inherits the registration.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(tenants_invalidated), pg_sys::Datum::from(0)) };
}

/// Defines `sutra.tenant_id` and `sutra.context_secret` with their check and assign hooks (called
/// from [`crate::guc::init`], the list of every parameter).
pub fn define_parameters() {
    // SAFETY: _PG_init runs single-threaded in the postmaster; names and descriptions are static
    // strings PostgreSQL copies; the value pointers are statics that live for the process.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"sutra.tenant_id".as_ptr(),
            c"The tenant context of this session, as issued by sutra.".as_ptr(),
            c"Set by sutra.authenticate, sutra.authenticate_jwt and sutra.set_tenant; any other value is refused."
                .as_ptr(),
            &raw mut TENANT_ID,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GUC_NOT_IN_SAMPLE as i32,
            Some(check_tenant_id),
            Some(assign_tenant_id),
            None,
        );
        pg_sys::DefineCustomStringVariable(
            c"sutra.context_secret".as_ptr(),
            c"Secret that signs tenant contexts; the same on every node of a cluster.".as_ptr(),
            c"Empty: a random secret drawn at server start (one node only).".as_ptr(),
            &raw mut CONTEXT_SECRET,
            c"".as_ptr(),
            pg_sys::GucContext::PGC_SIGHUP,
            (pg_sys::GUC_SUPERUSER_ONLY | pg_sys::GUC_NOT_IN_SAMPLE) as i32,
            Some(check_context_secret),
            Some(assign_context_secret),
            None,
        );
    }
}

/// A value of `sutra.tenant_id` this backend verified (or signed) and what it grants.
struct Verified {
    value: String,
    ctx: Context,
    uuid: pgrx::Uuid,
    /// The tenant status generation at which the tenant was last found active.
    active_at: u64,
}

thread_local! {
    /// The last value read: reads of an unchanged value skip the HMAC and the status lookup.
    static VERIFIED: RefCell<Option<Verified>> = const { RefCell::new(None) };
    /// Bumped whenever tenant status may have changed.
    static STATUS_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

thread_local! {
    /// Status of the tenants this backend has seen in a context (`active`, `suspended`, ...),
    /// as of the status generation, which moves on when `sutra.tenants` changes (a relcache
    /// invalidation its trigger sends). Like the two maps below, it holds at most
    /// `GenerationMap::MAX_ENTRIES` entries, so a backend that serves many tenants does not grow
    /// with them.
    static STATUS: RefCell<GenerationMap<String, String>> = RefCell::new(GenerationMap::new());
    /// Until when the API keys that granted contexts here are valid (Unix seconds; 0 when
    /// revoked or gone, i64::MAX without expiry), of the same generation (revoking a key or
    /// changing its expiry sends the same invalidation).
    static KEYS: RefCell<GenerationMap<String, i64>> = RefCell::new(GenerationMap::new());
    /// The scopes of the roles of the members that granted contexts here, by (tenant, user);
    /// `None` for a user who is not a member; of the same generation (changes of
    /// `sutra.tenant_members` send the same invalidation).
    static MEMBERS: RefCell<GenerationMap<(String, String), Option<Scopes>>> = RefCell::new(GenerationMap::new());
    /// The tenant whose rows sutra is purging in this backend: its contexts count as active.
    static PURGING: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The oid of `sutra.tenants`, learnt on the first lookup.
    static TENANTS_OID: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// Relcache invalidation callback: forgets tenant status when `sutra.tenants` changed.
#[pg_guard]
unsafe extern "C-unwind" fn tenants_invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let tenants = TENANTS_OID.with(|c| c.get());
    if relid == pg_sys::InvalidOid || relid == tenants {
        // The caches below are of the generation: the next one starts them afresh.
        STATUS_GENERATION.with(|g| g.set(g.get() + 1));
    }
}

/// `sutra._invalidate_tenant_cache()`: called by the trigger on `sutra.tenants`, so that every
/// backend rereads tenant status after the change commits.
#[pg_extern(volatile, name = "_invalidate_tenant_cache")]
fn invalidate_tenant_cache() {
    // SAFETY: to_regclass-like lookup by a constant name; the invalidation is queued and sent at
    // commit, like the one DDL sends.
    unsafe {
        let oid = tenants_oid();
        if oid != pg_sys::InvalidOid {
            pg_sys::CacheInvalidateRelcacheByRelid(oid);
        }
    }
}

unsafe fn tenants_oid() -> pg_sys::Oid {
    let oid = pg_sys::get_relname_relid(c"tenants".as_ptr(), schema_oid());
    TENANTS_OID.with(|c| c.set(oid));
    oid
}

unsafe fn schema_oid() -> pg_sys::Oid {
    pg_sys::get_namespace_oid(c"sutra".as_ptr(), true)
}

/// `key`'s value in one of the caches above, as of the status generation; else what `fetch`
/// reads, kept when there is one.
fn cached<K: std::hash::Hash + Eq, V: Clone>(
    cache: &'static std::thread::LocalKey<RefCell<GenerationMap<K, V>>>,
    key: K,
    fetch: impl FnOnce() -> Option<V>,
) -> Option<V> {
    if let Some(v) = cache.with(|c| c.borrow().get(status_generation(), &key)) {
        return Some(v);
    }
    // SAFETY: only resolves the tenants table's oid for the invalidation callback.
    unsafe { tenants_oid() };
    let v = fetch()?;
    cache.with(|c| c.borrow_mut().insert(status_generation(), key, v.clone()));
    Some(v)
}

/// The status of a tenant (`None` when it no longer exists), cached per backend.
pub fn tenant_status(tenant: &str) -> Option<String> {
    cached(&STATUS, tenant.to_string(), || {
        if citus::is_worker() {
            return citus::grant("tenant", tenant);
        }
        crate::backend::caller::as_superuser(|| {
            Spi::get_one_with_args::<String>(
                "SELECT (SELECT status FROM sutra.tenants WHERE id = $1::uuid)",
                &[tenant.into()],
            )
        })
        .unwrap_or_else(|e| {
            crate::error::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not read tenant status: {e}"))
        })
    })
}

/// Whether the API key `key_id` is still valid (exists, not revoked), cached per backend.
fn key_valid(key_id: &str) -> bool {
    let until = cached(&KEYS, key_id.to_string(), || {
        if citus::is_worker() {
            return Some(citus::grant("key", key_id).and_then(|u| u.parse().ok()).unwrap_or(0));
        }
        let until = crate::backend::caller::as_superuser(|| {
            Spi::get_one_with_args::<i64>(
                "SELECT coalesce((SELECT CASE WHEN revoked_at IS NOT NULL THEN 0
                                              ELSE coalesce(extract(epoch FROM expires_at)::int8, 9223372036854775807) END
                                  FROM sutra.api_key_store WHERE key_id = $1), 0)",
                &[key_id.into()],
            )
        });
        Some(until.ok().flatten().unwrap_or(0))
    });
    now_unix() < until.unwrap_or(0)
}

/// The scopes the role of `user` in `tenant` grants, or `None` when the user is not a member;
/// cached per backend until members change.
pub fn member_scopes(tenant: &str, user: &str) -> Option<Scopes> {
    cached(&MEMBERS, (tenant.to_string(), user.to_string()), || {
        if citus::is_worker() {
            let names = citus::grant("member", &format!("{tenant}/{user}"));
            return Some(names.map(|n| Scopes::from_names(n.split(',').filter(|s| !s.is_empty())).unwrap_or_default()));
        }
        let names = crate::backend::caller::as_superuser(|| {
            Spi::get_one_with_args::<Vec<String>>(
                "SELECT (SELECT sutra.role_scopes(m.role) FROM sutra.tenant_members m
                         WHERE m.tenant_id = $1::uuid AND m.user_id = $2)",
                &[tenant.into(), user.into()],
            )
        })
        .unwrap_or_else(|e| {
            crate::error::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not read tenant members: {e}"))
        });
        Some(names.map(|n| Scopes::from_names(n.iter().map(String::as_str)).unwrap_or_default()))
    })
    .flatten()
}

/// Runs `f` with contexts of `tenant` counting as active whatever its status (purging a deleted
/// tenant's rows runs as each table's owner, through the tenant's policies).
pub fn while_purging<R>(tenant: &str, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            PURGING.with(|p| *p.borrow_mut() = None);
        }
    }
    PURGING.with(|p| *p.borrow_mut() = Some(tenant.to_string()));
    let _reset = Reset;
    f()
}

/// The scopes the context has now; raises unless it may act: its tenant exists and is active,
/// the key that granted it (if any) has not been revoked, and the member who did (if any) still
/// is one. A member's scopes are at most those of the role the member has now.
fn require_valid(ctx: &Context) -> Scopes {
    // A parallel worker cannot run queries of its own. It gets the context from the leader,
    // checks the signature and the expiry, and leaves tenant and key status to the leader, which
    // evaluates the policies (their tenant lookup is an InitPlan, run by the leader).
    if crate::backend::caller::in_parallel_worker() {
        return ctx.scopes;
    }
    require_active(&ctx.tenant);
    match &ctx.grant {
        Some(Grant::Key(key_id)) if !key_valid(key_id) => raise_hint(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            format!("API key {key_id} has been revoked or has expired"),
            NO_CONTEXT_HINT,
        ),
        Some(Grant::Member(user)) => match member_scopes(&ctx.tenant, user) {
            Some(role) => ctx.scopes.intersection(role),
            None => raise_hint(
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                format!("user \"{user}\" is no longer a member of tenant {}", ctx.tenant),
                NO_CONTEXT_HINT,
            ),
        },
        _ => ctx.scopes,
    }
}

/// Raises unless the tenant may act now (exists and is active).
pub fn require_active(tenant: &str) {
    if PURGING.with(|p| p.borrow().as_deref() == Some(tenant)) {
        return;
    }
    match tenant_status(tenant).as_deref() {
        Some("active") => {}
        Some(status) => raise_hint(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            format!("tenant {tenant} is {status}"),
            "A suspended or deleted tenant has no access; sutra.resume_tenant restores it.",
        ),
        None => crate::error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            format!("tenant {tenant} does not exist"),
        ),
    }
}

/// The raw value of `sutra.tenant_id` ("" when unset).
fn raw_value() -> &'static str {
    // SAFETY: the GUC machinery keeps this pointer valid (or null) until the value changes; the
    // caller copies what it keeps.
    unsafe { TENANT_ID.as_ref().map(|p| CStr::from_ptr(p).to_str().unwrap_or("")).unwrap_or("") }
}

/// `sutra._context_tenant()`: the tenant of a valid context, or null; never raises (for audit
/// rows written in any state).
#[pg_extern(stable, parallel_safe, name = "_context_tenant")]
fn context_tenant() -> Option<pgrx::Uuid> {
    peek_tenant()
}

/// The current tenant context, verified, with its tenant's uuid; `None` when there is none.
/// Raises for an expired context or a tenant that is no longer active.
fn current_checked() -> Option<(Scopes, pgrx::Uuid)> {
    let value = raw_value();
    if value.is_empty() {
        return None;
    }
    let now = now_unix();
    // A worker learns of changes on the coordinator only by reading again: once per transaction.
    if citus::is_worker() && citus::new_transaction() {
        STATUS_GENERATION.with(|g| g.set(g.get() + 1));
    }
    let generation = STATUS_GENERATION.with(|g| g.get());
    let hit = VERIFIED.with(|c| {
        c.borrow().as_ref().filter(|v| v.value == value).map(|v| (v.ctx.scopes, v.uuid, v.ctx.expires, v.active_at))
    });
    if let Some((scopes, uuid, expires, active_at)) = hit {
        if now >= expires {
            expired();
        }
        if active_at == generation {
            return Some((scopes, uuid));
        }
    }
    // A value verified (or issued) here before keeps its signature: only the tenant's status,
    // the key and the member are checked again.
    let known = VERIFIED.with(|c| c.borrow().as_ref().filter(|v| v.value == value).map(|v| v.ctx.clone()));
    let ctx = match known.map(Ok).unwrap_or_else(|| verify_value(value, now, true)) {
        Ok(ctx) => ctx,
        Err(ContextError::Expired) => expired(),
        // The check hook let it in, so the secret changed since (a reload).
        Err(_) => raise_hint(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "tenant context is no longer valid",
            NO_CONTEXT_HINT,
        ),
    };
    let mut ctx = ctx;
    ctx.scopes = require_valid(&ctx);
    let (scopes, uuid) = (ctx.scopes, uuid_of(&ctx.tenant));
    remember(value.to_string(), ctx, generation);
    Some((scopes, uuid))
}

fn remember(value: String, ctx: Context, active_at: u64) {
    // Status changes of tenants reach this backend only once it knows which relation they
    // invalidate.
    if TENANTS_OID.with(|c| c.get()) == pg_sys::InvalidOid {
        // SAFETY: a catalog lookup by name, inside a transaction.
        unsafe { tenants_oid() };
    }
    let uuid = uuid_of(&ctx.tenant);
    VERIFIED.with(|c| *c.borrow_mut() = Some(Verified { value, ctx, uuid, active_at }));
}

/// The generation of tenant status: it changes whenever tenants, plans or keys change.
pub fn status_generation() -> u64 {
    STATUS_GENERATION.with(|g| g.get())
}

/// `f` of the current context and its tenant's uuid if its signature and expiry hold, without
/// raising and without looking at tenant status (a value this backend verified is not checked
/// again).
fn peek<R>(f: impl Fn(&Context, pgrx::Uuid) -> R) -> Option<R> {
    let value = raw_value();
    if value.is_empty() {
        return None;
    }
    let now = now_unix();
    let cached = VERIFIED
        .with(|c| c.borrow().as_ref().filter(|v| v.value == value && now < v.ctx.expires).map(|v| f(&v.ctx, v.uuid)));
    cached.or_else(|| verify_value(value, now, false).ok().map(|c| f(&c, uuid_of(&c.tenant))))
}

/// The tenant of the current context if its signature and expiry hold, without raising and
/// without looking at tenant status (for the executor hooks, which only meter and limit).
pub fn peek_tenant() -> Option<pgrx::Uuid> {
    peek(|_, uuid| uuid)
}

/// The user of the current context, if a user granted it, without raising and without looking
/// at tenant status or membership (for audit rows, written in any state).
pub fn peek_user() -> Option<String> {
    peek(|c, _| c.grant.as_ref().and_then(Grant::user).map(str::to_string)).flatten()
}

fn expired() -> ! {
    raise_hint(
        PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        "tenant context has expired",
        NO_CONTEXT_HINT,
    )
}

fn no_context() -> ! {
    raise_hint(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "no tenant context", NO_CONTEXT_HINT)
}

/// The current tenant's scopes and uuid, or an error that says how to get a context.
pub fn required_tenant() -> (Scopes, pgrx::Uuid) {
    current_checked().unwrap_or_else(|| no_context())
}

pub fn uuid_of(canonical: &str) -> pgrx::Uuid {
    let hex: Vec<u8> = canonical.bytes().filter(|b| *b != b'-').collect();
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        let s = std::str::from_utf8(&hex[2 * i..2 * i + 2]).expect("hex");
        *b = u8::from_str_radix(s, 16).expect("hex");
    }
    pgrx::Uuid::from_bytes(bytes)
}

/// Signs a context for `tenant` and puts it in `sutra.tenant_id`, for the current transaction or
/// (`session`) the session. Only sutra's own authenticating functions call this, after checking
/// the credential (`grant`: the API key or the user, if any) and that the tenant is active.
pub fn issue(tenant: &str, scopes: Scopes, not_after: Option<i64>, grant: Option<Grant>, session: bool) {
    let action = if session { pg_sys::GucAction::GUC_ACTION_SET } else { pg_sys::GucAction::GUC_ACTION_LOCAL };
    put(tenant, scopes, not_after, grant, action);
}

/// Signs a context and sets it with `action`.
pub fn put(
    tenant: &str,
    scopes: Scopes,
    not_after: Option<i64>,
    grant: Option<Grant>,
    action: pg_sys::GucAction::Type,
) {
    // SAFETY: a plain integer the GUC machinery maintains.
    let lifetime = crate::guc::CONTEXT_LIFETIME.get() as i64;
    let mut expires = now_unix() + lifetime;
    if let Some(limit) = not_after {
        expires = expires.min(limit);
    }
    let ctx = Context { tenant: tenant.to_string(), scopes, expires, grant };
    let signed = tenant_context::sign(&ctx, &secret());
    let value = CString::new(signed.as_str()).expect("no NUL in a context");
    if action != pg_sys::GucAction::GUC_ACTION_SAVE {
        crate::backend::events::before_issue(&uuid_of(tenant));
    }
    // The caller checked the credential and the tenant; the check hook finds the value verified.
    let generation = STATUS_GENERATION.with(|g| g.get());
    // SAFETY: reads a flag of this backend's transaction state.
    let forward = citus::loaded()
        && (action == pg_sys::GucAction::GUC_ACTION_LOCAL
            || (action == pg_sys::GucAction::GUC_ACTION_SET && unsafe { pg_sys::IsTransactionBlock() }));
    if action != pg_sys::GucAction::GUC_ACTION_LOCAL || !forward {
        remember(signed, ctx.clone(), generation);
        set_tenant_id(&value, action);
    }
    if forward {
        // A statement Citus forwards to the transaction's workers (for a session context, for
        // the rest of this transaction: Citus forwards SET LOCAL only), with the forwarded
        // secret's signature.
        let forwarded = tenant_context::sign(&ctx, &forwarded_secret());
        remember(forwarded.clone(), ctx, generation);
        citus::set_local("sutra.tenant_id", &forwarded);
    }
}

/// Sets `sutra.tenant_id` as a SET in the session would (the check hook still runs).
fn set_tenant_id(value: &CStr, action: pg_sys::GucAction::Type) {
    // SAFETY: sets a parameter this library defined; a value its check hook refuses raises a
    // PostgreSQL ERROR (elevel ERROR).
    unsafe {
        pg_sys::set_config_option(
            c"sutra.tenant_id".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// `sutra.current_tenant()`: the tenant of the current context; an error without one.
#[pg_extern(stable, parallel_safe)]
fn current_tenant() -> pgrx::Uuid {
    required_tenant().1
}

/// `sutra.current_tenant(scope)`: the tenant of the current context, if it holds `scope`
/// (`read`, `write` or `admin`); an error otherwise. Row level security policies use this.
#[pg_extern(stable, parallel_safe, name = "current_tenant")]
fn current_tenant_with_scope(scope: &str) -> pgrx::Uuid {
    let wanted = Scopes::by_name(scope).unwrap_or_else(|| {
        raise_detail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown scope \"{scope}\""),
            "Scopes are read, write and admin.",
        )
    });
    require_scope(wanted, scope)
}

/// `sutra.current_tenant_checked(scope)`: `current_tenant(scope)`, never run in a parallel worker
/// (PARALLEL RESTRICTED), so that the process running the query checks the context in full: the
/// tenant's status, the key, the member. The policies of a Citus database call it directly, once
/// per row, where Citus refuses the `(SELECT sutra.current_tenant(scope))` the leader evaluates
/// elsewhere; a parallel worker checks only the signature and expiry.
#[pg_extern(stable, parallel_restricted)]
fn current_tenant_checked(scope: &str) -> pgrx::Uuid {
    current_tenant_with_scope(scope)
}

/// The current tenant, if the context holds `wanted` (called `name`); an error otherwise.
pub fn require_scope(wanted: Scopes, name: &str) -> pgrx::Uuid {
    let (scopes, uuid) = required_tenant();
    if !scopes.contains(wanted) {
        raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("tenant context lacks the {name} scope"),
            "Authenticate with a key or token that has this scope.",
        );
    }
    uuid
}

/// `sutra.current_user_id()`: the user of the current context (the `sub` of the token that
/// granted it); null without a context or when an API key or a trusted server granted it.
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> Option<String> {
    current_checked()?;
    VERIFIED.with(|c| c.borrow().as_ref().and_then(|v| v.ctx.grant.as_ref()?.user().map(str::to_string)))
}

/// `sutra._context_user()`: the user of a valid context, or null; never raises (for audit rows).
#[pg_extern(stable, parallel_safe, name = "_context_user")]
fn context_user() -> Option<String> {
    peek_user()
}

/// `sutra.current_scopes()`: the scopes of the current context (empty without one).
#[pg_extern(stable, parallel_safe)]
fn current_scopes() -> Vec<String> {
    current_checked().map(|(scopes, _)| scopes.names().iter().map(|s| s.to_string()).collect()).unwrap_or_default()
}

/// `sutra.clear_tenant()`: back to no tenant, for the session.
#[pg_extern(volatile)]
fn clear_tenant() {
    set_tenant_id(c"", pg_sys::GucAction::GUC_ACTION_SET);
    // SAFETY: reads a flag of this backend's transaction state.
    if citus::loaded() && unsafe { pg_sys::IsTransactionBlock() } {
        // The workers of this transaction drop the context too.
        citus::set_local("sutra.tenant_id", "");
    }
}
