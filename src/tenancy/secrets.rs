//! Per-tenant secrets (bring-your-own provider keys), sealed with AES-256-GCM
//! ([`sutra_core::secrets`]) under a master key that lives in the server's configuration
//! (`sutra.secrets_key`, readable by superusers only), never in the database: a dump of the
//! database alone holds ciphertext. Each value has a fresh random nonce and is bound to its tenant
//! and name. The SQL surface (`sql/tenancy/secrets.sql`) checks who may do what; these functions
//! seal and open, for superusers only (the SQL functions' owner).

use pgrx::prelude::*;
use sutra_core::secrets::{MasterKey, OpenError};

use crate::error::{raise_detail, raise_hint};

fn require_superuser() {
    crate::backend::caller::require_superuser("seal or open secrets");
}

fn key_from(setting: &pgrx::guc::GucSetting<Option<std::ffi::CString>>) -> Option<MasterKey> {
    let value = setting.get()?;
    let text = value.to_str().unwrap_or("");
    if text.is_empty() {
        return None;
    }
    match MasterKey::from_hex(text) {
        Ok(k) => Some(k),
        Err(_) => raise_hint(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "sutra's master key of tenant secrets is not 64 hex digits",
            "Set sutra.secrets_key (and sutra.secrets_key_previous, if set) in postgresql.conf to 32 random bytes as hex, e.g. the output of openssl rand -hex 32.",
        ),
    }
}

fn current_key() -> MasterKey {
    key_from(&crate::guc::SECRETS_KEY).unwrap_or_else(|| {
        raise_hint(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenant secrets are off: sutra.secrets_key is not set",
            "Set sutra.secrets_key in postgresql.conf to 32 random bytes as hex (openssl rand -hex 32) and reload.",
        )
    })
}

/// `sutra._seal_secret(tenant, name, value)`: the sealed value and the fingerprint of the key
/// that sealed it.
#[pg_extern(volatile)]
fn _seal_secret(
    tenant: pgrx::Uuid,
    name: &str,
    value: &str,
) -> TableIterator<'static, (name!(sealed, Vec<u8>), name!(key_id, String))> {
    require_superuser();
    let key = current_key();
    let sealed = key.seal(tenant.as_bytes(), name, value.as_bytes(), crate::backend::random_bytes());
    TableIterator::once((sealed, key.fingerprint()))
}

/// `sutra._open_secret(tenant, name, sealed, key_id)`: the value, opened with the current or the
/// previous master key, whichever sealed it.
#[pg_extern(volatile)]
fn _open_secret(tenant: pgrx::Uuid, name: &str, sealed: &[u8], key_id: &str) -> String {
    require_superuser();
    let key = [key_from(&crate::guc::SECRETS_KEY), key_from(&crate::guc::SECRETS_KEY_PREVIOUS)]
        .into_iter()
        .flatten()
        .find(|k| k.fingerprint() == key_id)
        .unwrap_or_else(|| {
            raise_detail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("secret \"{name}\" was sealed with a master key this server does not have"),
                format!(
                    "Its key's fingerprint is {key_id}. Configure that key as sutra.secrets_key (or sutra.secrets_key_previous while rotating)."
                ),
            )
        });
    match key.open(tenant.as_bytes(), name, sealed) {
        Ok(value) => value,
        Err(OpenError::Truncated | OpenError::Rejected | OpenError::NotText) => raise_detail(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("secret \"{name}\" does not open"),
            "Its stored value was changed, or was sealed for another tenant or name.",
        ),
    }
}

/// `sutra._secrets_key_id()`: the current master key's fingerprint (null when secrets are off).
#[pg_extern(volatile)]
fn _secrets_key_id() -> Option<String> {
    require_superuser();
    key_from(&crate::guc::SECRETS_KEY).map(|k| k.fingerprint())
}

/// Takes a secret's value out of the statement text others can see, as authentication does for
/// credentials.
#[pg_extern(volatile)]
fn _hide_secret_value(value: &str) {
    super::auth::hide_credential(value);
}

/// `sutra._secret_read(tenant, name)`: audits a read of a secret, whether or not the reading
/// transaction commits ([`super::failures::queue_secret_read`]).
#[pg_extern(volatile)]
fn _secret_read(tenant: pgrx::Uuid, name: &str) {
    require_superuser();
    super::failures::queue_secret_read(*tenant.as_bytes(), name);
}
