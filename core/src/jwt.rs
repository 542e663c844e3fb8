//! HS256 JSON Web Tokens for `sutra.authenticate_jwt`.
//!
//! Only `alg: HS256` is accepted (`none` and every other algorithm are refused before the
//! signature is looked at). Claims: `tenant_id` (a uuid or a slug), `sub` (the user, optional
//! here: the caller decides whether it needs one), `scopes` (an array or a space-separated string
//! of `read`, `write`, `admin`) or `role` (`read`/`reader`, `write`/`writer`, `admin`), optional
//! too, `exp` (required) and `nbf` (optional), in Unix seconds.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::tenant_context::{is_user_id, Scopes};

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The `tenant_id` claim: a uuid or a slug, resolved by the caller.
    pub tenant: String,
    /// The `sub` claim: the user the token speaks for.
    pub subject: Option<String>,
    /// The scopes the token grants; `None` when it names none (neither `scopes` nor `role`).
    pub scopes: Option<Scopes>,
    pub expires: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    Malformed(&'static str),
    /// An `alg` other than HS256 (including `none`).
    Algorithm(String),
    BadSignature,
    Expired,
    NotYetValid,
    /// A required claim is missing or has the wrong type or value.
    Claim(&'static str),
}

fn json_part(part: &str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed("a part is not base64url"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("a part is not JSON"))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(JwtError::Malformed("a part is not a JSON object"))
    }
}

fn int_claim(payload: &Value, name: &'static str) -> Result<Option<i64>, JwtError> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64))
            .map(Some)
            .ok_or(JwtError::Claim(name)),
    }
}

fn scopes_claim(payload: &Value) -> Result<Option<Scopes>, JwtError> {
    if let Some(s) = payload.get("scopes").or_else(|| payload.get("scope")) {
        let names: Vec<&str> = match s {
            Value::String(s) => s.split_whitespace().collect(),
            Value::Array(a) => {
                a.iter().map(|v| v.as_str().ok_or(JwtError::Claim("scopes"))).collect::<Result<_, _>>()?
            }
            _ => return Err(JwtError::Claim("scopes")),
        };
        let scopes = Scopes::from_names(names).ok_or(JwtError::Claim("scopes"))?;
        return if scopes.is_empty() { Err(JwtError::Claim("scopes")) } else { Ok(Some(scopes)) };
    }
    match payload.get("role") {
        None | Some(Value::Null) => Ok(None),
        Some(role) => match role.as_str() {
            Some("read" | "reader") => Ok(Some(Scopes::READ)),
            Some("write" | "writer") => Ok(Some(Scopes::READ.union(Scopes::WRITE))),
            Some("admin") => Ok(Some(Scopes::ALL)),
            _ => Err(JwtError::Claim("scopes")),
        },
    }
}

/// Verifies an HS256 token with `secret` at time `now` (Unix seconds).
pub fn verify_hs256(token: &str, secret: &[u8], now: i64) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("a token has three parts"));
    };
    let header = json_part(h)?;
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {}
        Some(other) => return Err(JwtError::Algorithm(other.to_string())),
        None => return Err(JwtError::Algorithm(String::new())),
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed("a part is not base64url"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| JwtError::BadSignature)?;
    let payload = json_part(p)?;
    let expires = int_claim(&payload, "exp")?.ok_or(JwtError::Claim("exp"))?;
    if now >= expires {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = int_claim(&payload, "nbf")? {
        if now < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    let tenant = match payload.get("tenant_id") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(JwtError::Claim("tenant_id")),
    };
    let subject = match payload.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_user_id(s) => Some(s.clone()),
        Some(_) => return Err(JwtError::Claim("sub")),
    };
    Ok(Claims { tenant, subject, scopes: scopes_claim(&payload)?, expires })
}

/// Makes an HS256 token (for tests and tools).
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"jwt secret";
    const NOW: i64 = 1_800_000_000;

    fn token(claims: Value) -> String {
        sign_hs256(&claims, SECRET)
    }

    #[test]
    fn valid_tokens() {
        let t = token(json!({"tenant_id": "acme", "scopes": ["read", "write"], "exp": NOW + 60}));
        assert_eq!(
            verify_hs256(&t, SECRET, NOW),
            Ok(Claims {
                tenant: "acme".into(),
                subject: None,
                scopes: Some(Scopes::READ.union(Scopes::WRITE)),
                expires: NOW + 60
            })
        );
        let t = token(json!({"tenant_id": "acme", "scope": "read admin", "exp": NOW + 1, "nbf": NOW}));
        assert_eq!(verify_hs256(&t, SECRET, NOW).unwrap().scopes, Some(Scopes::READ.union(Scopes::ADMIN)));
        let t = token(json!({"tenant_id": "acme", "role": "writer", "exp": NOW + 1}));
        assert_eq!(verify_hs256(&t, SECRET, NOW).unwrap().scopes, Some(Scopes::READ.union(Scopes::WRITE)));
        // A user, and no scopes: the caller takes them from the user's role.
        let t = token(json!({"tenant_id": "acme", "sub": "auth0|42", "exp": NOW + 1}));
        let c = verify_hs256(&t, SECRET, NOW).unwrap();
        assert_eq!((c.subject.as_deref(), c.scopes), (Some("auth0|42"), None));
    }

    #[test]
    fn refused_tokens() {
        let good = token(json!({"tenant_id": "acme", "role": "admin", "exp": NOW + 60}));
        assert_eq!(verify_hs256(&good, b"wrong", NOW), Err(JwtError::BadSignature));
        let (hp, _) = good.rsplit_once('.').unwrap();
        assert_eq!(verify_hs256(&format!("{hp}.AAAA"), SECRET, NOW), Err(JwtError::BadSignature));
        // alg none, with or without a signature
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = good.split('.').nth(1).unwrap();
        for t in [
            format!("{none_header}.{payload}."),
            format!("{none_header}.{payload}.{}", good.split('.').nth(2).unwrap()),
        ] {
            assert_eq!(verify_hs256(&t, SECRET, NOW), Err(JwtError::Algorithm("none".into())));
        }
        let hs512 = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512"}"#);
        assert!(matches!(verify_hs256(&format!("{hs512}.{payload}.x"), SECRET, NOW), Err(JwtError::Algorithm(_))));
        // a payload swapped under a valid signature
        let other =
            URL_SAFE_NO_PAD.encode(json!({"tenant_id": "victim", "role": "admin", "exp": NOW + 60}).to_string());
        let parts: Vec<&str> = good.split('.').collect();
        assert_eq!(
            verify_hs256(&format!("{}.{other}.{}", parts[0], parts[2]), SECRET, NOW),
            Err(JwtError::BadSignature)
        );
        // time
        assert_eq!(
            verify_hs256(&token(json!({"tenant_id": "a", "role": "read", "exp": NOW})), SECRET, NOW),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify_hs256(
                &token(json!({"tenant_id": "a", "role": "read", "exp": NOW + 9, "nbf": NOW + 5})),
                SECRET,
                NOW
            ),
            Err(JwtError::NotYetValid)
        );
        // claims
        assert_eq!(
            verify_hs256(&token(json!({"tenant_id": "a", "role": "read"})), SECRET, NOW),
            Err(JwtError::Claim("exp"))
        );
        assert_eq!(
            verify_hs256(&token(json!({"role": "read", "exp": NOW + 9})), SECRET, NOW),
            Err(JwtError::Claim("tenant_id"))
        );
        assert_eq!(
            verify_hs256(&token(json!({"tenant_id": "a", "role": "root", "exp": NOW + 9})), SECRET, NOW),
            Err(JwtError::Claim("scopes"))
        );
        assert_eq!(
            verify_hs256(&token(json!({"tenant_id": "a", "scopes": ["sudo"], "exp": NOW + 9})), SECRET, NOW),
            Err(JwtError::Claim("scopes"))
        );
        for sub in [json!(""), json!(42), json!(["a"]), json!("a\u{0}b"), json!("x".repeat(256))] {
            assert_eq!(
                verify_hs256(&token(json!({"tenant_id": "a", "sub": sub, "exp": NOW + 9})), SECRET, NOW),
                Err(JwtError::Claim("sub"))
            );
        }
        // shape
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(matches!(verify_hs256(bad, SECRET, NOW), Err(JwtError::Malformed(_))), "{bad}");
        }
    }
}
