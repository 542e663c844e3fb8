//! API keys: `sk_<key id>_<secret>`.
//!
//! The key id (16 lower-case hex digits) is public and finds the key's row; the secret (32
//! random bytes, unpadded base64url, 43 characters) is never stored: the row holds
//! HMAC-SHA256(pepper, key id ":" secret) under a server-side pepper, compared in constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "sk_";
pub const KEY_ID_BYTES: usize = 8;
pub const SECRET_BYTES: usize = 32;
const KEY_ID_LEN: usize = KEY_ID_BYTES * 2;
const SECRET_LEN: usize = 43;

/// The parts of a key as presented.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

/// Splits a presented key; `None` if it is not of the key form at all. (Its key id is still
/// worth auditing: [`key_id_of`] gets it from a malformed key.)
pub fn parse(key: &str) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix(PREFIX)?;
    let (key_id, secret) = rest.split_at_checked(KEY_ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let b64 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (hex(key_id) && secret.len() == SECRET_LEN && b64(secret)).then_some(PresentedKey { key_id, secret })
}

/// The key id of a presented key, if it has one in the right place, for auditing a failure.
pub fn key_id_of(key: &str) -> Option<&str> {
    let id = key.strip_prefix(PREFIX)?.get(..KEY_ID_LEN)?;
    id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)).then_some(id)
}

/// A new key from random bytes: `(key id, full key)`.
pub fn new_key(id_bytes: &[u8; KEY_ID_BYTES], secret_bytes: &[u8; SECRET_BYTES]) -> (String, String) {
    let key_id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    let key = format!("{PREFIX}{key_id}_{secret}");
    (key_id, key)
}

fn mac(pepper: &[u8], key_id: &str, secret: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(pepper).expect("HMAC takes keys of any length");
    m.update(key_id.as_bytes());
    m.update(b":");
    m.update(secret.as_bytes());
    m
}

/// What the key's row stores.
pub fn hash(pepper: &[u8], key_id: &str, secret: &str) -> Vec<u8> {
    mac(pepper, key_id, secret).finalize().into_bytes().to_vec()
}

/// Whether a presented secret matches the stored hash, in constant time.
pub fn verify(pepper: &[u8], key: &PresentedKey<'_>, stored: &[u8]) -> bool {
    mac(pepper, key.key_id, key.secret).verify_slice(stored).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEPPER: &[u8] = b"pepper";

    fn key() -> (String, String) {
        new_key(&[0xab, 0xcd, 1, 2, 3, 4, 5, 0xff], &[7u8; SECRET_BYTES])
    }

    #[test]
    fn new_keys_parse_and_verify() {
        let (id, k) = key();
        assert_eq!(id, "abcd0102030405ff");
        assert!(k.starts_with("sk_abcd0102030405ff_"));
        let p = parse(&k).unwrap();
        assert_eq!(p.key_id, id);
        let stored = hash(PEPPER, &id, p.secret);
        assert!(verify(PEPPER, &p, &stored));
        assert!(!verify(b"other pepper", &p, &stored));
    }

    #[test]
    fn any_changed_character_fails() {
        let (id, k) = key();
        let stored = hash(PEPPER, &id, parse(&k).unwrap().secret);
        for i in 0..k.len() {
            let mut b = k.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let s = String::from_utf8(b).unwrap();
            if let Some(p) = parse(&s) {
                // A changed key id finds another row; a changed secret fails here.
                assert!(p.key_id != id || !verify(PEPPER, &p, &stored), "{s}");
            }
        }
    }

    #[test]
    fn malformed_keys() {
        let (_, k) = key();
        for bad in [
            "",
            "sk_",
            "pk_abcd0102030405ff_x",
            &k[..k.len() - 1],
            &format!("{k}x"),
            &k.replace("sk_abcd", "sk_ABCD"),
            &k.replacen('_', "-", 2),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert_eq!(key_id_of("sk_abcd0102030405ff_garbage"), Some("abcd0102030405ff"));
        assert_eq!(key_id_of("garbage"), None);
        // Key ids are lower case: an upper-case one is no key's id.
        assert_eq!(key_id_of("sk_ABCD0102030405FF_garbage"), None);
        assert_eq!(key_id_of(&k.replace("sk_abcd", "sk_ABCD")), None);
    }
}
