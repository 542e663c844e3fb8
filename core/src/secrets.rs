//! Sealing of per-tenant secrets: AES-256-GCM (RustCrypto's `aes-gcm`), a fresh random nonce per
//! value, and the tenant id and secret name bound as associated data, so that a sealed value
//! moved to another tenant or name does not open. The master key is 32 bytes, given as 64 hex
//! digits; its fingerprint (the first 8 bytes of SHA-256 of the key, as hex) is stored beside each
//! value to tell which key sealed it, and reveals nothing usable about the key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

pub const NONCE_BYTES: usize = 12;

/// A master key, parsed from 64 hex digits.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
}

#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Not 64 hex digits.
    Malformed,
}

#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Too short to hold a nonce and a tag.
    Truncated,
    /// The tag does not verify: another key, another tenant or name, or a changed value.
    Rejected,
    /// Opened, but not UTF-8 text.
    NotText,
}

impl MasterKey {
    pub fn from_hex(hex: &str) -> Result<MasterKey, KeyError> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::Malformed);
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| KeyError::Malformed)?;
        }
        Ok(MasterKey { key })
    }

    /// The key's fingerprint: 16 hex digits of SHA-256 of the key.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(self.key)[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.key).expect("a 32-byte key")
    }

    /// Seals `value` for (tenant, name) with `nonce` (12 random bytes the caller draws afresh for
    /// every value): nonce, then ciphertext and tag.
    pub fn seal(&self, tenant: &[u8; 16], name: &str, value: &[u8], nonce: [u8; NONCE_BYTES]) -> Vec<u8> {
        let aad = associated_data(tenant, name);
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value, aad: &aad })
            .expect("AES-GCM encrypts any value under 64 GiB");
        [&nonce[..], &sealed].concat()
    }

    /// Opens what [`seal`](Self::seal) made for the same (tenant, name).
    pub fn open(&self, tenant: &[u8; 16], name: &str, sealed: &[u8]) -> Result<String, OpenError> {
        if sealed.len() < NONCE_BYTES + 16 {
            return Err(OpenError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        let aad = associated_data(tenant, name);
        let plain = self
            .cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &aad })
            .map_err(|_| OpenError::Rejected)?;
        String::from_utf8(plain).map_err(|_| OpenError::NotText)
    }
}

/// Tenant id, then the name's length and bytes: no two (tenant, name) pairs give the same bytes.
fn associated_data(tenant: &[u8; 16], name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(20 + name.len());
    aad.extend_from_slice(tenant);
    aad.extend_from_slice(&(name.len() as u32).to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const OTHER: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    #[test]
    fn sealed_values_open_for_their_tenant_and_name_only() {
        let k = MasterKey::from_hex(KEY).unwrap();
        let sealed = k.seal(&A, "openai", b"sk-live-123", [7; 12]);
        assert_eq!(k.open(&A, "openai", &sealed).unwrap(), "sk-live-123");
        assert_eq!(k.open(&B, "openai", &sealed), Err(OpenError::Rejected));
        assert_eq!(k.open(&A, "anthropic", &sealed), Err(OpenError::Rejected));
        assert_eq!(MasterKey::from_hex(OTHER).unwrap().open(&A, "openai", &sealed), Err(OpenError::Rejected));
    }

    #[test]
    fn any_changed_byte_is_rejected() {
        let k = MasterKey::from_hex(KEY).unwrap();
        let sealed = k.seal(&A, "n", b"value", [9; 12]);
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(k.open(&A, "n", &t), Err(OpenError::Rejected), "byte {i}");
        }
        assert_eq!(k.open(&A, "n", &sealed[..20]), Err(OpenError::Truncated));
    }

    #[test]
    fn the_value_is_not_in_the_sealed_bytes_and_nonces_differ() {
        let k = MasterKey::from_hex(KEY).unwrap();
        let a = k.seal(&A, "n", b"plaintext-secret", [1; 12]);
        let b = k.seal(&A, "n", b"plaintext-secret", [2; 12]);
        assert_ne!(a, b);
        assert!(!a.windows(16).any(|w| w == b"plaintext-secret"));
    }

    #[test]
    fn names_cannot_borrow_bytes_from_the_tenant() {
        // (tenant, "ab") and a tenant whose id ends differently cannot collide: the length is bound.
        assert_ne!(associated_data(&A, "ab"), associated_data(&A, "a"));
        assert_ne!(associated_data(&A, ""), associated_data(&B, ""));
    }

    #[test]
    fn keys_are_64_hex_digits_with_a_stable_fingerprint() {
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"g".repeat(64)).is_err());
        let k = MasterKey::from_hex(KEY).unwrap();
        assert_eq!(k.fingerprint().len(), 16);
        assert_eq!(k.fingerprint(), MasterKey::from_hex(&KEY.to_uppercase()).unwrap().fingerprint());
        assert_ne!(k.fingerprint(), MasterKey::from_hex(OTHER).unwrap().fingerprint());
    }
}
