//! Establishing a tenant context: `sutra.authenticate` (API keys), `sutra.authenticate_jwt`
//! (HS256 tokens) and `sutra.set_tenant` (trusted application servers).
//!
//! Each checks its credential or privilege, then the tenant's status, and only then signs a
//! context into `sutra.tenant_id`. A failure says as little as possible about why until the
//! credential itself has been verified: an unknown key id and a wrong secret fail alike.

use std::cell::RefCell;
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, PgSqlErrorCode};
use sutra_core::tenant_context::{Grant, Scopes};
use sutra_core::{api_key, jwt};

use super::context::{issue, member_scopes, uuid_of};
use super::failures;
use crate::backend::caller;
use crate::backend::{now_unix, GenerationMap};
use crate::error::{raise, raise_detail, raise_hint};

fn scopes_of(names: &[String]) -> Scopes {
    Scopes::from_names(names.iter().map(String::as_str)).unwrap_or_default()
}

/// What the key lookup returns.
#[derive(Clone)]
struct KeyRow {
    tenant: String,
    hash: Vec<u8>,
    scopes: Vec<String>,
    revoked: bool,
    expired: bool,
    expires: Option<i64>,
    stale: bool,
    status: String,
}

thread_local! {
    static KEY_LOOKUP: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    /// Key rows read in this backend, with when they were read (seconds), as of the status
    /// generation: revoking a key, moving its expiry, deleting it and any change of its tenant
    /// move the generation on, so a cached row never outlives what it says.
    static KEY_CACHE: RefCell<GenerationMap<String, (KeyRow, i64)>> = RefCell::new(GenerationMap::new());
}

/// How long a cached key row serves before it is read again (which also tells whether its
/// `last_used_at` is due: at most one write per key per minute, across backends).
const KEY_CACHE_SECONDS: i64 = 60;

/// The key's row: from this backend's cache when read less than a minute ago, else from the
/// table (and cached, when it is active).
fn key_row(key_id: &str) -> Option<KeyRow> {
    let generation = super::context::status_generation();
    let now = now_unix();
    let cached = KEY_CACHE.with(|c| c.borrow().get(generation, &key_id.to_string()));
    if let Some((mut row, read_at)) = cached {
        if now - read_at < KEY_CACHE_SECONDS {
            row.expired = row.expires.is_some_and(|e| e <= now);
            row.stale = false;
            return Some(row);
        }
    }
    let row = lookup_key(key_id)?;
    if !row.revoked && !row.expired && row.status == "active" {
        KEY_CACHE.with(|c| c.borrow_mut().insert(generation, key_id.to_string(), (row.clone(), now)));
    }
    Some(row)
}

/// The key's row and its tenant's status; `last_used_at` counts as stale (to be written again)
/// after a minute.
const KEY_LOOKUP_SQL: &str = "
    SELECT k.tenant_id::text, k.secret_hash, k.scopes, k.revoked_at IS NOT NULL,
           coalesce(k.expires_at <= now(), false), extract(epoch FROM k.expires_at)::int8,
           k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute',
           t.status
    FROM sutra.api_key_store k JOIN sutra.tenants t ON t.id = k.tenant_id
    WHERE k.key_id = $1";

fn lookup_key(key_id: &str) -> Option<KeyRow> {
    let result: Result<Option<KeyRow>, pgrx::spi::Error> = Spi::connect(|client| {
        let table = KEY_LOOKUP.with(|cell| -> Result<_, pgrx::spi::Error> {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(client.prepare(KEY_LOOKUP_SQL, &[pg_sys::TEXTOID.into()])?.keep());
            }
            let stmt = cell.as_ref().expect("prepared above");
            client.select(stmt, Some(1), &[key_id.into()])
        })?;
        let Some(row) = table.into_iter().next() else { return Ok(None) };
        Ok(Some(KeyRow {
            tenant: row.get(1)?.unwrap_or_default(),
            hash: row.get(2)?.unwrap_or_default(),
            scopes: row.get(3)?.unwrap_or_default(),
            revoked: row.get(4)?.unwrap_or(true),
            expired: row.get(5)?.unwrap_or(true),
            expires: row.get(6)?,
            stale: row.get(7)?.unwrap_or(false),
            status: row.get(8)?.unwrap_or_default(),
        }))
    });
    result.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not read API keys: {e}")))
}

thread_local! {
    static PEPPER: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

fn pepper() -> Vec<u8> {
    if let Some(p) = PEPPER.with(|c| c.borrow().clone()) {
        return p;
    }
    let p = Spi::get_one::<Vec<u8>>("SELECT value FROM sutra.secrets WHERE name = 'api_key_pepper'")
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            raise_hint(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "the API key pepper is missing",
                "Restore the row api_key_pepper of sutra.secrets.",
            )
        });
    PEPPER.with(|c| *c.borrow_mut() = Some(p.clone()));
    p
}

fn auth_failed(key_id: Option<&str>, reason: &str) -> ! {
    failures::record(key_id, reason);
    raise_hint(
        PgSqlErrorCode::ERRCODE_INVALID_PASSWORD,
        "API key authentication failed",
        "Check the key; a revoked or expired key must be replaced.",
    )
}

fn denied(key_id: &str, reason: &str, message: String) -> ! {
    failures::record(Some(key_id), reason);
    raise(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, message)
}

/// Takes a credential out of the statement text others can see: `pg_stat_activity.query` of
/// sessions of the same role, and the statement the server logs with an error. (A statement
/// sent with the credential as a bind parameter never contained it.)
pub(crate) fn hide_credential(credential: &str) {
    if credential.len() < 16 {
        return;
    }
    // SAFETY: debug_query_string is null or the current top-level statement's text, which lives
    // as long as the statement; the redacted copy is allocated in the same per-message context
    // (or the transaction's), so it lives as long as the statement too.
    unsafe {
        let q = pg_sys::debug_query_string;
        if q.is_null() {
            return;
        }
        let text = CStr::from_ptr(q).to_string_lossy();
        if !text.contains(credential) {
            return;
        }
        let Ok(redacted) = std::ffi::CString::new(text.replace(credential, "<redacted>")) else { return };
        let cx = if pg_sys::MessageContext.is_null() { pg_sys::TopTransactionContext } else { pg_sys::MessageContext };
        let copy = pg_sys::MemoryContextStrdup(cx, redacted.as_ptr());
        pg_sys::debug_query_string = copy;
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, copy);
    }
}

/// Whether a context is for the session (true) or the current transaction. The transaction is
/// the default: it is the only scope that cannot outlive a pooled client's use of a server
/// connection. `session => true` asks for a session-long context (psql, dedicated connections).
/// `local` is the older spelling: `local => true` is the default, `local => false` a session.
pub fn session_scope(local: Option<bool>, session: bool) -> bool {
    let session = match (local, session) {
        (Some(true), true) => raise_detail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "conflicting context scopes",
            "local => true asks for the current transaction and session => true for the session; pass only session.",
        ),
        (Some(local), _) => !local,
        (None, session) => session,
    };
    // SAFETY: reads backend state.
    if !session && !unsafe { pg_sys::IsTransactionBlock() } {
        // As SET LOCAL outside a transaction block warns: the context ends with this statement.
        crate::error::warn_hint(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            "the tenant context lasts for this statement only",
            "Call it after BEGIN so that it holds until COMMIT, or pass session => true for a session-long context.",
        );
    }
    session
}

/// `sutra.authenticate(api_key, local, session)`: checks an API key and sets its tenant and scopes
/// as the context of the current transaction, or of the session when `session`.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn authenticate(api_key: &str, local: default!(Option<bool>, "NULL"), session: default!(bool, false)) -> pgrx::Uuid {
    hide_credential(api_key);
    let session = session_scope(local, session);
    let Some(presented) = api_key::parse(api_key) else {
        auth_failed(api_key::key_id_of(api_key), "malformed key");
    };
    let pepper = pepper();
    let Some(row) = key_row(presented.key_id) else {
        // Spend the time a real check takes, so timing does not tell unknown ids apart.
        let _ = api_key::verify(&pepper, &presented, &[0u8; 32]);
        auth_failed(Some(presented.key_id), "unknown key id");
    };
    if !api_key::verify(&pepper, &presented, &row.hash) {
        auth_failed(Some(presented.key_id), "wrong secret");
    }
    if row.revoked {
        denied(presented.key_id, "revoked key", format!("API key {} has been revoked", presented.key_id));
    }
    if row.expired {
        denied(presented.key_id, "expired key", format!("API key {} has expired", presented.key_id));
    }
    if row.status != "active" {
        denied(presented.key_id, "tenant not active", format!("tenant {} is {}", row.tenant, row.status));
    }
    failures::forget(presented.key_id);
    issue(&row.tenant, scopes_of(&row.scopes), row.expires, Some(Grant::Key(presented.key_id.to_string())), session);
    // SAFETY: plain backend globals.
    let writable = unsafe { !pg_sys::XactReadOnly && !pg_sys::RecoveryInProgress() };
    if row.stale && writable {
        // At most one write per key per minute, however often it authenticates; a transaction that
        // finds the row locked by another one's write skips it instead of waiting for its commit.
        Spi::run_with_args(
            "UPDATE sutra.api_key_store SET last_used_at = now()
             WHERE key_id = (SELECT k.key_id FROM sutra.api_key_store k WHERE k.key_id = $1 FOR UPDATE SKIP LOCKED)",
            &[presented.key_id.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not update API key: {e}")));
    }
    uuid_of(&row.tenant)
}

/// Resolves a tenant named by uuid or slug to `(uuid, status)`.
fn find_tenant(tenant: &str) -> Option<(String, String)> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT id::text, status FROM sutra.tenants
             WHERE CASE WHEN $1 ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                        THEN id = $1::uuid ELSE slug = $1 END",
            Some(1),
            &[tenant.into()],
        )?;
        match table.into_iter().next() {
            None => Ok(None),
            Some(row) => {
                Ok(Some((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
            }
        }
    })
    .unwrap_or_else(|e: pgrx::spi::Error| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not read tenants: {e}"))
    })
}

fn jwt_secret() -> Vec<u8> {
    // SAFETY: the GUC machinery keeps this pointer valid (or null) between statements.
    let s = crate::guc::JWT_SECRET.get().map(|c| c.into_bytes());
    match s {
        Some(s) if !s.is_empty() => s,
        _ => raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "JWT authentication is not configured",
            "Set sutra.jwt_secret in postgresql.conf and reload.",
        ),
    }
}

/// A token that does not verify, or lacks a claim: recorded, and refused with a DETAIL that says
/// what is wrong with it.
fn token_invalid(e: jwt::JwtError) -> ! {
    let detail = match e {
        jwt::JwtError::Malformed(what) => format!("The token is malformed: {what}."),
        jwt::JwtError::Algorithm(alg) => format!("Algorithm \"{alg}\" is not accepted; only HS256 is."),
        jwt::JwtError::BadSignature => "The signature does not match.".to_string(),
        jwt::JwtError::Expired => "The token has expired.".to_string(),
        jwt::JwtError::NotYetValid => "The token is not valid yet (nbf).".to_string(),
        jwt::JwtError::Claim(c) => format!("Claim \"{c}\" is missing or invalid."),
    };
    failures::record(None, "invalid token");
    raise_detail(PgSqlErrorCode::ERRCODE_INVALID_PASSWORD, "JWT authentication failed", detail)
}

/// A verified token's refusal, after its signature held: the reason is recorded, and the DETAIL
/// says it (the token's issuer is trusted, so nothing is given away).
fn token_refused(reason: &str, detail: String) -> ! {
    failures::record(None, reason);
    raise_detail(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "JWT authentication failed", detail)
}

/// The scopes and the grant of a verified token for `tenant`. With `sutra.jwt_membership =
/// required` (the default) the token's `sub` must be a member of the tenant, and the scopes are
/// those of the token (all when it names none) that the member's role has too; with `trusted`
/// the issuer vouches for the user and the token's scopes apply as they are.
fn token_grant(claims: jwt::Claims, tenant: &str) -> (Scopes, Option<Grant>) {
    if crate::guc::JWT_MEMBERSHIP.get() == crate::guc::JwtMembership::Trusted {
        let scopes = claims.scopes.unwrap_or_else(|| token_invalid(jwt::JwtError::Claim("scopes")));
        return (scopes, claims.subject.map(Grant::User));
    }
    let Some(user) = claims.subject else {
        token_refused(
            "token without a user",
            "The token has no \"sub\" claim; with sutra.jwt_membership = required it must name a member of the tenant."
                .to_string(),
        )
    };
    let Some(role) = member_scopes(tenant, &user) else {
        token_refused(
            "token for a user who is not a member",
            format!("User \"{user}\" is not a member of tenant {tenant}."),
        )
    };
    let scopes = claims.scopes.map_or(role, |s| s.intersection(role));
    if scopes.is_empty() {
        token_refused(
            "token scopes outside the member's role",
            format!(
                "User \"{user}\" has the scopes {} in tenant {tenant}, none of which the token grants.",
                role.names().join(", ")
            ),
        );
    }
    (scopes, Some(Grant::Member(user)))
}

/// `sutra.authenticate_jwt(token, local, session)`: checks an HS256 token and sets the tenant and
/// scopes it names as the context, for the current transaction or (`session`) the session, until
/// the token's `exp` at the latest. The token's user (`sub`) is part of the context.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn authenticate_jwt(token: &str, local: default!(Option<bool>, "NULL"), session: default!(bool, false)) -> pgrx::Uuid {
    hide_credential(token);
    let session = session_scope(local, session);
    let secret = jwt_secret();
    let claims = jwt::verify_hs256(token, &secret, now_unix()).unwrap_or_else(|e| token_invalid(e));
    let Some((tenant, status)) = find_tenant(&claims.tenant) else {
        failures::record(None, "token for an unknown tenant");
        raise_detail(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "JWT authentication failed",
            format!("Tenant \"{}\" does not exist.", claims.tenant),
        )
    };
    if status != "active" {
        failures::record(None, "token for a tenant not active");
        raise(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, format!("tenant {tenant} is {status}"));
    }
    let expires = claims.expires;
    let (scopes, grant) = token_grant(claims, &tenant);
    issue(&tenant, scopes, Some(expires), grant, session);
    uuid_of(&tenant)
}

fn do_set_tenant(tenant: &str, session: bool, scopes: &[String]) -> pgrx::Uuid {
    if !caller::is_service(caller::outer_user()) {
        raise_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to set the tenant",
            "Only members of sutra_service may call sutra.set_tenant; tenants use sutra.authenticate.",
        );
    }
    let wanted = Scopes::from_names(scopes.iter().map(String::as_str)).filter(|s| !s.is_empty()).unwrap_or_else(|| {
        raise_detail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "invalid scopes",
            "Scopes are read, write and admin; give at least one.",
        )
    });
    let Some((id, status)) = find_tenant(tenant) else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("tenant \"{tenant}\" does not exist"))
    };
    if status != "active" {
        raise(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, format!("tenant {id} is {status}"));
    }
    issue(&id, wanted, None, None, session);
    uuid_of(&id)
}

/// `sutra.set_tenant(tenant, local, scopes, session)`: for trusted application servers (members
/// of `sutra_service`): sets the context to a tenant named by uuid or slug, with all scopes unless
/// `scopes` narrows them, for the current transaction or (`session`) the session.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_tenant(
    tenant: &str,
    local: default!(Option<bool>, "NULL"),
    scopes: default!(Vec<String>, "'{read,write,admin}'"),
    session: default!(bool, false),
) -> pgrx::Uuid {
    let session = session_scope(local, session);
    do_set_tenant(tenant, session, &scopes)
}

/// `sutra.set_tenant(uuid, local, scopes, session)`.
#[pg_extern(volatile, security_definer, name = "set_tenant")]
#[search_path(pg_catalog, pg_temp)]
fn set_tenant_uuid(
    tenant: pgrx::Uuid,
    local: default!(Option<bool>, "NULL"),
    scopes: default!(Vec<String>, "'{read,write,admin}'"),
    session: default!(bool, false),
) -> pgrx::Uuid {
    let session = session_scope(local, session);
    do_set_tenant(&tenant.to_string(), session, &scopes)
}
