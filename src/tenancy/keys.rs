//! API key material: minting keys and the random bytes behind them. Storage, scopes and
//! lifecycle are SQL (`sql/tenancy/keys.sql`); verification is in [`super::auth`].

use pgrx::prelude::*;
use sutra_core::api_key;

use crate::backend::random_bytes;

/// `sutra._mint_api_key(pepper)`: a new key id and secret from the strong random source, the
/// full key (shown once) and the HMAC of its secret under `pepper` (what is stored).
#[pg_extern(volatile, name = "_mint_api_key")]
fn mint_api_key(
    pepper: &[u8],
) -> TableIterator<'static, (name!(key_id, String), name!(api_key, String), name!(secret_hash, Vec<u8>))> {
    let (key_id, key) = api_key::new_key(&random_bytes(), &random_bytes());
    let parsed = api_key::parse(&key).expect("a minted key parses");
    let hash = api_key::hash(pepper, parsed.key_id, parsed.secret);
    TableIterator::once((key_id, key, hash))
}

/// `sutra._key_id_of(api_key)`: the key id part of a key.
#[pg_extern(immutable, parallel_safe, name = "_key_id_of")]
fn key_id_of(api_key: &str) -> Option<String> {
    api_key::key_id_of(api_key).map(str::to_string)
}

/// `sutra._random_bytes(n)`: n bytes from PostgreSQL's strong random source.
#[pg_extern(volatile, name = "_random_bytes")]
fn random_bytes_sql(n: i32) -> Vec<u8> {
    (0..n.max(0) / 32 + 1).flat_map(|_| random_bytes::<32>()).take(n.max(0) as usize).collect()
}
