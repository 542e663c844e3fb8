//! The signed tenant context: the value sutra puts in the `sutra.tenant_id` parameter.
//!
//! ```text
//! v1.<tenant uuid>.<scopes>.<expires>.<grant>.<mac>
//! ```
//!
//! `scopes` is a subset of `rwa` in that order (`r` read, `w` write, `a` admin), `expires` is in
//! Unix seconds, `grant` says what granted the context (see [`Grant`]; `-` for a trusted server
//! or a token without a user), and `mac` is the unpadded base64url HMAC-SHA256, under the
//! cluster's context secret, of everything before the last dot. Every node that holds the secret can check a value
//! without having seen the authentication (a Citus worker receiving `SET LOCAL`), and no one
//! without the secret can make one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";

/// A set of scopes: what a tenant session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const READ: Scopes = Scopes(1);
    pub const WRITE: Scopes = Scopes(2);
    pub const ADMIN: Scopes = Scopes(4);
    pub const ALL: Scopes = Scopes(7);
    const LETTERS: [(char, Scopes); 3] = [('r', Self::READ), ('w', Self::WRITE), ('a', Self::ADMIN)];
    const NAMES: [(&'static str, Scopes); 3] = [("read", Self::READ), ("write", Self::WRITE), ("admin", Self::ADMIN)];

    pub fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    pub fn intersection(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// One scope by name: `read`, `write` or `admin`.
    pub fn by_name(name: &str) -> Option<Scopes> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|&(_, s)| s)
    }

    /// A set from scope names; `None` if any name is unknown.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Scopes> {
        names.into_iter().try_fold(Scopes(0), |acc, n| Some(acc.union(Self::by_name(n)?)))
    }

    /// The scope names, in the order read, write, admin.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES.iter().filter(|(_, s)| self.contains(*s)).map(|&(n, _)| n).collect()
    }

    fn letters(self) -> String {
        let s: String = Self::LETTERS.iter().filter(|(_, s)| self.contains(*s)).map(|&(c, _)| c).collect();
        if s.is_empty() {
            "-".into()
        } else {
            s
        }
    }

    fn from_letters(s: &str) -> Option<Scopes> {
        if s == "-" {
            return Some(Scopes(0));
        }
        // No scopes are spelled "-" only, never as an empty field.
        if s.is_empty() {
            return None;
        }
        let mut out = Scopes(0);
        let mut last = 0;
        for c in s.chars() {
            let i = Self::LETTERS.iter().position(|&(l, _)| l == c)?;
            // In canonical order, each letter once: a value has one spelling only.
            if i < last {
                return None;
            }
            last = i + 1;
            out = out.union(Self::LETTERS[i].1);
        }
        Some(out)
    }
}

/// What granted a context, so that taking it back ends the context from the next transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// An API key, by id: 16 lower-case hex digits.
    Key(String),
    /// A member of the tenant, by user id (from a token's `sub`): `m` and the unpadded base64url
    /// of the id. Removing the member or changing the role is seen from the next transaction.
    Member(String),
    /// A user a trusted token issuer vouched for, without a membership row: `u` and the unpadded
    /// base64url of the id.
    User(String),
}

/// The longest user id, in bytes.
pub const MAX_USER_ID: usize = 255;

/// True for a user id a context can carry: 1 to [`MAX_USER_ID`] bytes without control
/// characters.
pub fn is_user_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_USER_ID && !s.chars().any(char::is_control)
}

impl Grant {
    /// The user the context acts for, if a user granted it.
    pub fn user(&self) -> Option<&str> {
        match self {
            Grant::Key(_) => None,
            Grant::Member(u) | Grant::User(u) => Some(u),
        }
    }

    fn spelling(&self) -> String {
        match self {
            Grant::Key(id) => id.clone(),
            Grant::Member(u) => format!("m{}", URL_SAFE_NO_PAD.encode(u)),
            Grant::User(u) => format!("u{}", URL_SAFE_NO_PAD.encode(u)),
        }
    }

    /// The grant spelled `s`, in its one spelling only.
    fn parse(s: &str) -> Option<Grant> {
        if is_key_id(s) {
            return Some(Grant::Key(s.to_string()));
        }
        let user = |b64: &str| -> Option<String> {
            let bytes = URL_SAFE_NO_PAD.decode(b64).ok()?;
            let user = String::from_utf8(bytes).ok()?;
            // The engine refuses padding and stray trailing bits, so this is the one spelling.
            (is_user_id(&user) && URL_SAFE_NO_PAD.encode(&user) == b64).then_some(user)
        };
        match s.split_at_checked(1)? {
            ("m", rest) => user(rest).map(Grant::Member),
            ("u", rest) => user(rest).map(Grant::User),
            _ => None,
        }
    }
}

/// What a verified context grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The tenant's uuid, canonical lower-case form.
    pub tenant: String,
    pub scopes: Scopes,
    /// Unix seconds after which the context is no longer valid.
    pub expires: i64,
    /// What granted it: `None` for a trusted server or a token without a user.
    pub grant: Option<Grant>,
}

/// Why a value is not a valid context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextError {
    /// Not of the form `v1.<uuid>.<scopes>.<expires>.<grant>.<mac>`.
    Malformed,
    /// Well formed, but not signed with this cluster's secret.
    BadSignature,
    /// Valid, but past its expiry.
    Expired,
}

/// True for the canonical text form of a uuid: 8-4-4-4-12 lower-case hex digits.
pub fn is_canonical_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

fn mac(secret: &[u8], payload: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(payload.as_bytes());
    m
}

/// A secret of its own for `purpose`, derived from `secret` (HMAC-SHA256 of the purpose): a value
/// signed with it does not verify with `secret`, nor the other way round.
pub fn derive_secret(secret: &[u8], purpose: &str) -> Vec<u8> {
    mac(secret, purpose).finalize().into_bytes().to_vec()
}

/// Signs a context. `ctx.tenant` must be a canonical uuid.
pub fn sign(ctx: &Context, secret: &[u8]) -> String {
    debug_assert!(is_canonical_uuid(&ctx.tenant));
    let grant = ctx.grant.as_ref().map_or_else(|| "-".to_string(), Grant::spelling);
    debug_assert!(grant == "-" || Grant::parse(&grant).as_ref() == ctx.grant.as_ref());
    let payload = format!("{VERSION}.{}.{}.{}.{grant}", ctx.tenant, ctx.scopes.letters(), ctx.expires);
    let tag = mac(secret, &payload).finalize().into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Checks a value's form and signature (in constant time) and its expiry against `now`.
pub fn verify(value: &str, secret: &[u8], now: i64) -> Result<Context, ContextError> {
    let (payload, tag) = value.rsplit_once('.').ok_or(ContextError::Malformed)?;
    let mut parts = payload.split('.');
    let (Some(VERSION), Some(tenant), Some(scopes), Some(expires), Some(grant), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ContextError::Malformed);
    };
    let grant = match grant {
        "-" => None,
        g => Some(Grant::parse(g).ok_or(ContextError::Malformed)?),
    };
    if !is_canonical_uuid(tenant) {
        return Err(ContextError::Malformed);
    }
    let scopes = Scopes::from_letters(scopes).ok_or(ContextError::Malformed)?;
    // Digits only and no leading zero, so "+5", " 5" or "05" cannot give a second spelling of
    // the same value.
    if expires.is_empty()
        || expires.len() > 18
        || !expires.bytes().all(|b| b.is_ascii_digit())
        || (expires.len() > 1 && expires.starts_with('0'))
    {
        return Err(ContextError::Malformed);
    }
    let expires: i64 = expires.parse().map_err(|_| ContextError::Malformed)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| ContextError::Malformed)?;
    mac(secret, payload).verify_slice(&tag).map_err(|_| ContextError::BadSignature)?;
    if now >= expires {
        return Err(ContextError::Expired);
    }
    Ok(Context { tenant: tenant.to_string(), scopes, expires, grant })
}

/// True for an API key id: 16 lower-case hex digits.
pub fn is_key_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const TENANT: &str = "5f0c6a2e-8d5b-4b8e-9a51-0c1d2e3f4a5b";

    fn ctx(scopes: Scopes) -> Context {
        Context { tenant: TENANT.into(), scopes, expires: 2_000_000_000, grant: None }
    }

    #[test]
    fn the_granting_key_is_signed_too() {
        let keyed = Context { grant: Some(Grant::Key("0123456789abcdef".into())), ..ctx(Scopes::READ) };
        let v = sign(&keyed, SECRET);
        assert_eq!(verify(&v, SECRET, 0), Ok(keyed));
        assert!(v.contains(".0123456789abcdef."));
        // Dropping or changing the key id breaks the signature.
        assert_eq!(verify(&v.replace(".0123456789abcdef.", ".-."), SECRET, 0), Err(ContextError::BadSignature));
        assert_eq!(
            verify(&v.replace(".0123456789abcdef.", ".0123456789abcdee."), SECRET, 0),
            Err(ContextError::BadSignature)
        );
        assert_eq!(
            verify(&v.replace(".0123456789abcdef.", ".0123456789ABCDEF."), SECRET, 0),
            Err(ContextError::Malformed)
        );
    }

    #[test]
    fn the_granting_user_is_signed_too() {
        for user in ["alice", "auth0|5f0c6a2e", "a.b.c", "ünïcode@example.com", &"x".repeat(MAX_USER_ID)] {
            for grant in [Grant::Member(user.into()), Grant::User(user.into())] {
                let c = Context { grant: Some(grant.clone()), ..ctx(Scopes::READ) };
                let v = sign(&c, SECRET);
                assert_eq!(verify(&v, SECRET, 0), Ok(c), "{v}");
                assert_eq!(grant.user(), Some(user));
                // Member and user are not interchangeable.
                let swapped = match grant {
                    Grant::Member(_) => v.replace(".m", ".u"),
                    _ => v.replace(".u", ".m"),
                };
                assert_eq!(verify(&swapped, SECRET, 0), Err(ContextError::BadSignature));
            }
        }
        assert_eq!(Grant::Key("0123456789abcdef".into()).user(), None);
    }

    #[test]
    fn user_grants_have_one_spelling() {
        for bad in ["m", "u", "mYWxpY2U=", "x", "mYWxpY2", "m!!", "M", "mAA", "mCg"] {
            assert_eq!(Grant::parse(bad), None, "{bad}");
        }
        assert_eq!(Grant::parse("mYWxpY2U"), Some(Grant::Member("alice".into())));
        assert!(!is_user_id(""));
        assert!(!is_user_id("a\nb"));
        assert!(!is_user_id(&"x".repeat(MAX_USER_ID + 1)));
    }

    #[test]
    fn signed_values_verify() {
        for scopes in [Scopes::READ, Scopes::READ.union(Scopes::WRITE), Scopes::ALL, Scopes(0)] {
            let v = sign(&ctx(scopes), SECRET);
            assert_eq!(verify(&v, SECRET, 1_700_000_000), Ok(ctx(scopes)), "{v}");
        }
    }

    #[test]
    fn expiry_is_checked() {
        let v = sign(&ctx(Scopes::READ), SECRET);
        assert_eq!(verify(&v, SECRET, 1_999_999_999).map(|c| c.expires), Ok(2_000_000_000));
        assert_eq!(verify(&v, SECRET, 2_000_000_000), Err(ContextError::Expired));
    }

    #[test]
    fn forgeries_fail() {
        let v = sign(&ctx(Scopes::READ), SECRET);
        // another secret
        assert_eq!(verify(&v, b"another secret", 0), Err(ContextError::BadSignature));
        // another tenant, more scopes, a later expiry: each with the original signature
        let other = "00000000-0000-0000-0000-000000000001";
        for forged in [v.replace(TENANT, other), v.replace(".r.", ".rwa."), v.replace("2000000000", "2000000001")] {
            assert_eq!(verify(&forged, SECRET, 0), Err(ContextError::BadSignature), "{forged}");
        }
        // every single-character change of the value
        for i in 0..v.len() {
            let mut b = v.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).unwrap();
            assert!(verify(&s, SECRET, 0).is_err(), "{s}");
        }
    }

    #[test]
    fn malformed_values_fail() {
        let v = sign(&ctx(Scopes::READ), SECRET);
        let (payload, tag) = v.rsplit_once('.').unwrap();
        for bad in [
            String::new(),
            "forged".into(),
            TENANT.into(),
            payload.into(),
            format!("v2{}", &v[2..]),
            format!("{payload}.{tag}.x"),
            v.replace(TENANT, &TENANT.to_uppercase()),
            v.replace(".r.", ".wr."),
            v.replace(".r.", ".rr."),
            v.replace(".r.", ".x."),
            v.replace("2000000000", "+2000000000"),
            v.replace(".-.", ".."),
            v.replace(".-.", ".x."),
            format!("{payload}.{tag}="),
        ] {
            assert_eq!(verify(&bad, SECRET, 0), Err(ContextError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn one_spelling_even_when_signed() {
        let v = sign(&ctx(Scopes(0)), SECRET);
        let (payload, _) = v.rsplit_once('.').unwrap();
        for other in [payload.replace(".-.2", "..2"), payload.replace("2000000000", "02000000000")] {
            let tag = URL_SAFE_NO_PAD.encode(mac(SECRET, &other).finalize().into_bytes());
            assert_eq!(verify(&format!("{other}.{tag}"), SECRET, 0), Err(ContextError::Malformed), "{other}");
        }
        let zero = Context { expires: 0, ..ctx(Scopes::READ) };
        assert_eq!(verify(&sign(&zero, SECRET), SECRET, -1), Ok(zero));
    }

    #[test]
    fn scope_names() {
        assert_eq!(Scopes::from_names(["read", "write"]), Some(Scopes(3)));
        assert_eq!(Scopes::from_names(["read", "root"]), None);
        assert_eq!(Scopes::ALL.names(), vec!["read", "write", "admin"]);
        assert!(Scopes::ALL.contains(Scopes::WRITE));
        assert!(!Scopes::READ.contains(Scopes::WRITE));
        assert_eq!(Scopes::ALL.intersection(Scopes::READ.union(Scopes::WRITE)), Scopes(3));
        assert!(Scopes::READ.intersection(Scopes::WRITE).is_empty());
    }

    #[test]
    fn uuid_form() {
        assert!(is_canonical_uuid(TENANT));
        assert!(!is_canonical_uuid(&TENANT.to_uppercase()));
        assert!(!is_canonical_uuid(&TENANT.replace('-', "")));
        assert!(!is_canonical_uuid("5f0c6a2e-8d5b-4b8e-9a51-0c1d2e3f4a5"));
    }
}

#[cfg(test)]
mod derived_secret_tests {
    use super::*;

    #[test]
    fn a_value_signed_with_a_derived_secret_verifies_only_with_it() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let derived = derive_secret(secret, "forwarded");
        assert_ne!(derived.as_slice(), secret.as_slice());
        assert_eq!(derived, derive_secret(secret, "forwarded"));
        assert_ne!(derived, derive_secret(secret, "other"));
        let ctx = Context {
            tenant: "00000000-0000-4000-8000-000000000001".into(),
            scopes: Scopes::READ,
            expires: 100,
            grant: None,
        };
        let value = sign(&ctx, &derived);
        assert_eq!(verify(&value, &derived, 1), Ok(ctx.clone()));
        assert_eq!(verify(&value, secret, 1), Err(ContextError::BadSignature));
        assert_eq!(verify(&sign(&ctx, secret), &derived, 1), Err(ContextError::BadSignature));
    }
}
