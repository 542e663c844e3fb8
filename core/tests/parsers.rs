//! Properties of every parser that reads input from a database session: API keys, JWTs, signed
//! tenant contexts, scope names, and the text and binary forms of vectors. For each: arbitrary
//! input never panics; what the signer or encoder makes is accepted with the same value; a
//! changed input is refused (or, where it is still well formed, reads as what it now says).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};
use sutra_core::api_key;
use sutra_core::jwt::{self, Claims, JwtError};
use sutra_core::tenant_context::{self, Context, ContextError, Grant, Scopes};
use sutra_core::vector_binary::{self, DecodeError};
use sutra_core::vector_text::{self, ParseError};
use sutra_core::VECTOR_MAX_DIM;

mod reference;
use reference::{bits, hex, reference_binary, reference_key_id, reference_uuid, reference_vector};

const CASES: u32 = 256;

/// `cases` cases per property; a failure is reported with its minimal input, not saved to a file.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}
const NOW: i64 = 1_800_000_000;

// --- Changing an input ------------------------------------------------------------------------

/// One change to a byte string; `at` is taken modulo the length.
#[derive(Debug, Clone)]
enum Change {
    /// XOR one byte with a non-zero value.
    Flip(usize, u8),
    /// Toggle the case of one ASCII letter (or flip its low bit if it is not one).
    Case(usize),
    Truncate(usize),
    Append(Vec<u8>),
    Insert(usize, u8),
    Delete(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Change::Flip(i, x)),
        any::<usize>().prop_map(Change::Case),
        any::<usize>().prop_map(Change::Truncate),
        proptest::collection::vec(any::<u8>(), 1..8).prop_map(Change::Append),
        (any::<usize>(), prop_oneof![Just(b'.'), Just(b'-'), Just(b'_'), Just(b'0'), any::<u8>()])
            .prop_map(|(i, b)| Change::Insert(i, b)),
        any::<usize>().prop_map(Change::Delete),
    ]
}

fn apply_bytes(b: &[u8], c: &Change) -> Vec<u8> {
    let mut b = b.to_vec();
    let n = b.len();
    match *c {
        Change::Flip(i, x) if n > 0 => b[i % n] ^= x,
        Change::Case(i) if n > 0 => {
            let x = &mut b[i % n];
            *x = if x.is_ascii_alphabetic() { *x ^ 0x20 } else { *x ^ 1 };
        }
        Change::Truncate(i) => b.truncate(i % (n + 1)),
        Change::Append(ref tail) => b.extend_from_slice(tail),
        Change::Insert(i, x) => b.insert(i % (n + 1), x),
        Change::Delete(i) if n > 0 => {
            b.remove(i % n);
        }
        _ => {}
    }
    b
}

/// A changed string; bytes that are no longer UTF-8 are replaced, as a session's input is text.
fn apply(s: &str, c: &Change) -> String {
    String::from_utf8_lossy(&apply_bytes(s.as_bytes(), c)).into_owned()
}

fn uuid(bytes: [u8; 16]) -> String {
    let h = hex(&bytes);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

// --- API keys ---------------------------------------------------------------------------------

const PEPPER: &[u8] = b"api key pepper";

/// The authentication path: a key is accepted when it parses, its key id is the stored one and
/// its secret matches the stored hash.
fn key_accepted(key: &str, stored_id: &str, stored_hash: &[u8]) -> bool {
    api_key::parse(key).is_some_and(|p| p.key_id == stored_id && api_key::verify(PEPPER, &p, stored_hash))
}

/// The key form, written independently: `sk_`, 16 lower-case hex digits, `_`, 43 base64url
/// characters.
fn is_key_form(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 63
        && key.starts_with("sk_")
        && key.get(3..19).is_some_and(tenant_context::is_key_id)
        && b[19] == b'_'
        && b[20..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

fn check_key_parsers(key: &str) -> Result<(), TestCaseError> {
    match api_key::parse(key) {
        Some(p) => {
            prop_assert!(is_key_form(key), "{key:?}");
            prop_assert_eq!(p.key_id, &key[3..19]);
            prop_assert_eq!(p.secret, &key[20..]);
        }
        None => prop_assert!(!is_key_form(key), "{key:?}"),
    }
    let expected = key.strip_prefix("sk_").and_then(|r| r.get(..16)).filter(|id| tenant_context::is_key_id(id));
    prop_assert_eq!(api_key::key_id_of(key), expected, "{:?}", key);
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn api_key_arbitrary_text(s in any::<String>(), near in "sk_[0-9a-fA-F]{14,18}[_-]?[A-Za-z0-9_=+/-]{40,46}") {
        check_key_parsers(&s)?;
        check_key_parsers(&near)?;
    }

    #[test]
    fn api_key_round_trip_and_changes(id in any::<[u8; 8]>(), secret in any::<[u8; 32]>(), c in change()) {
        let (key_id, key) = api_key::new_key(&id, &secret);
        prop_assert_eq!(&key_id, &hex(&id));
        prop_assert_eq!(api_key::key_id_of(&key), Some(key_id.as_str()));
        let p = api_key::parse(&key).unwrap();
        prop_assert_eq!(p.key_id, key_id.as_str());
        prop_assert_eq!(URL_SAFE_NO_PAD.decode(p.secret).unwrap(), secret.to_vec());
        let stored = api_key::hash(PEPPER, p.key_id, p.secret);
        prop_assert!(key_accepted(&key, &key_id, &stored));
        prop_assert!(!api_key::verify(b"another pepper", &p, &stored));

        let changed = apply(&key, &c);
        check_key_parsers(&changed)?;
        if changed != key {
            prop_assert!(!key_accepted(&changed, &key_id, &stored), "{changed:?}");
        }
    }
}

// --- JWT --------------------------------------------------------------------------------------

fn sign_with_header(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Valid claims, in each of the forms the scopes may take, and what they grant.
fn valid_claims() -> impl Strategy<Value = (Value, Claims)> {
    let tenant = prop_oneof![any::<[u8; 16]>().prop_map(uuid), "[a-z][a-z0-9-]{0,30}", "\\PC{1,20}"];
    let scopes = (1..8u8, 0..3u8, any::<bool>());
    (tenant, scopes, 1..1_000_000_000i64, proptest::option::of(0..1_000_000i64)).prop_map(
        |(tenant, (bits, form, scope_key), ttl, nbf_ago)| {
            let names: Vec<&str> = ["read", "write", "admin"]
                .into_iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, n)| n)
                .collect();
            let mut scopes = Scopes::from_names(names.iter().copied()).unwrap();
            let mut c = json!({"tenant_id": tenant, "exp": NOW + ttl});
            let key = if scope_key { "scopes" } else { "scope" };
            match form {
                0 => c[key] = json!(names),
                1 => c[key] = json!(names.join(" ")),
                _ => {
                    // A role names the scopes of its level.
                    let (role, s) = match bits {
                        1 => ("reader", Scopes::READ),
                        2 | 3 => ("writer", Scopes::READ.union(Scopes::WRITE)),
                        _ => ("admin", Scopes::ALL),
                    };
                    c["role"] = json!(role);
                    scopes = s;
                }
            }
            if let Some(ago) = nbf_ago {
                c["nbf"] = json!(NOW - ago);
            }
            let claims = Claims {
                tenant: c["tenant_id"].as_str().unwrap().to_string(),
                subject: None,
                scopes: Some(scopes),
                expires: NOW + ttl,
            };
            (c, claims)
        },
    )
}

/// A change to one claim that makes the claims invalid at `NOW`.
fn bad_claim() -> impl Strategy<Value = (&'static str, Value, fn(&JwtError) -> bool)> {
    fn expired(e: &JwtError) -> bool {
        *e == JwtError::Expired
    }
    fn not_yet(e: &JwtError) -> bool {
        *e == JwtError::NotYetValid
    }
    fn claim(e: &JwtError) -> bool {
        matches!(e, JwtError::Claim(_))
    }
    prop_oneof![
        (0..1_000_000_000i64).prop_map(|ago| ("exp", json!(NOW - ago), expired as fn(&JwtError) -> bool)),
        Just(("exp", Value::Null, claim as fn(&JwtError) -> bool)),
        Just(("exp", json!("2100000000"), claim as fn(&JwtError) -> bool)),
        (1..1_000_000i64).prop_map(|ahead| ("nbf", json!(NOW + ahead), not_yet as fn(&JwtError) -> bool)),
        Just(("nbf", json!([1]), claim as fn(&JwtError) -> bool)),
        Just(("tenant_id", json!(""), claim as fn(&JwtError) -> bool)),
        Just(("tenant_id", Value::Null, claim as fn(&JwtError) -> bool)),
        Just(("tenant_id", json!(42), claim as fn(&JwtError) -> bool)),
        "[a-z]{1,8}"
            .prop_map(|s| ("scopes", json!([s]), claim as fn(&JwtError) -> bool))
            .prop_filter("a scope name", |(_, v, _)| Scopes::by_name(v[0].as_str().unwrap()).is_none()),
        Just(("scopes", json!([]), claim as fn(&JwtError) -> bool)),
        Just(("scopes", json!(""), claim as fn(&JwtError) -> bool)),
        Just(("scopes", json!(["read", 1]), claim as fn(&JwtError) -> bool)),
        Just(("scopes", json!({"read": true}), claim as fn(&JwtError) -> bool)),
        Just(("scopes", json!("READ"), claim as fn(&JwtError) -> bool)),
        Just(("sub", json!(""), claim as fn(&JwtError) -> bool)),
        Just(("sub", json!(7), claim as fn(&JwtError) -> bool)),
        Just(("sub", json!("a\nb"), claim as fn(&JwtError) -> bool)),
    ]
}

/// An `alg` header value other than HS256 (almost always).
fn other_alg() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("none")),
        Just(json!("HS512")),
        Just(json!("hs256")),
        Just(json!("HS256 ")),
        Just(json!(null)),
        Just(json!(["HS256"])),
        "\\PC{0,8}".prop_map(Value::from),
    ]
}

/// The claims without any scope claim, so that a changed `role` is the one that counts.
fn without_scopes(mut c: Value) -> Value {
    let o = c.as_object_mut().unwrap();
    o.remove("scopes");
    o.remove("scope");
    c
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn jwt_arbitrary_input(s in any::<String>(), parts in proptest::collection::vec(any::<Vec<u8>>(), 3),
                           header in any::<String>(), secret in proptest::collection::vec(any::<u8>(), 0..80)) {
        prop_assert!(jwt::verify_hs256(&s, &secret, NOW).is_err());
        // Three well-encoded parts of arbitrary content, and arbitrary JSON-ish headers.
        let t = parts.iter().map(|p| URL_SAFE_NO_PAD.encode(p)).collect::<Vec<_>>().join(".");
        prop_assert!(jwt::verify_hs256(&t, &secret, NOW).is_err());
        let t = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&parts[1]),
            URL_SAFE_NO_PAD.encode(&parts[2]));
        prop_assert!(jwt::verify_hs256(&t, &secret, NOW).is_err());
    }

    #[test]
    fn jwt_round_trip_and_changes((claims, expected) in valid_claims(),
                                  secret in proptest::collection::vec(any::<u8>(), 1..64),
                                  c in change(), at in any::<usize>(), x in 1..=255u8) {
        let token = jwt::sign_hs256(&claims, &secret);
        prop_assert_eq!(jwt::verify_hs256(&token, &secret, NOW), Ok(expected.clone()));
        // The last second before expiry, and expiry itself.
        prop_assert!(jwt::verify_hs256(&token, &secret, expected.expires - 1).is_ok());
        prop_assert_eq!(jwt::verify_hs256(&token, &secret, expected.expires), Err(JwtError::Expired));
        // Any changed token is refused: the signature covers the text, and has one spelling.
        let changed = apply(&token, &c);
        if changed != token {
            prop_assert!(jwt::verify_hs256(&changed, &secret, NOW).is_err(), "{changed}");
        }
        // Another secret. (Secrets up to 64 bytes differing in one byte: HMAC pads shorter keys
        // with zeros, so `s` and `s\0` would be the same key; a setting cannot hold a NUL.)
        let mut wrong = secret.clone();
        let i = at % wrong.len();
        wrong[i] ^= x;
        prop_assert_eq!(jwt::verify_hs256(&token, &wrong, NOW), Err(JwtError::BadSignature));
        // Another signature.
        let (hp, sig) = token.rsplit_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[at % 32] ^= x;
        prop_assert_eq!(jwt::verify_hs256(&format!("{hp}.{}", URL_SAFE_NO_PAD.encode(&raw)), &secret, NOW),
            Err(JwtError::BadSignature));
    }

    #[test]
    fn jwt_changed_claims((claims, _) in valid_claims(), (name, value, refusal) in bad_claim(), tenant in "[a-z]{1,12}",
                          role in prop_oneof![Just("reader"), Just("root"), Just("Admin"), Just("")]) {
        let secret = b"jwt secret";
        let token = jwt::sign_hs256(&claims, secret);
        let parts: Vec<&str> = token.split('.').collect();
        // One claim changed under the original signature.
        let mut forged = claims.clone();
        forged["tenant_id"] = json!(tenant);
        if forged != claims {
            let p = URL_SAFE_NO_PAD.encode(forged.to_string());
            prop_assert_eq!(jwt::verify_hs256(&format!("{}.{p}.{}", parts[0], parts[2]), secret, NOW),
                Err(JwtError::BadSignature));
        }
        // One claim made invalid and the token signed again: refused for that claim.
        let mut bad = claims.clone();
        if value.is_null() {
            bad.as_object_mut().unwrap().remove(name);
        } else {
            bad[name] = value;
        }
        if name == "scopes" {
            bad.as_object_mut().unwrap().remove("scope");
        }
        let e = jwt::verify_hs256(&jwt::sign_hs256(&bad, secret), secret, NOW).unwrap_err();
        prop_assert!(refusal(&e), "{name}: {e:?}");
        // A role alone decides the scopes; an unknown one is refused.
        let mut r = without_scopes(claims.clone());
        r["role"] = json!(role);
        let got = jwt::verify_hs256(&jwt::sign_hs256(&r, secret), secret, NOW);
        if role == "reader" {
            prop_assert_eq!(got.map(|c| c.scopes), Ok(Some(Scopes::READ)));
        } else {
            prop_assert_eq!(got, Err(JwtError::Claim("scopes")));
        }
    }

    #[test]
    fn jwt_only_hs256(alg in other_alg(), (claims, _) in valid_claims()) {
        let secret = b"jwt secret";
        prop_assume!(alg != json!("HS256"));
        let t = sign_with_header(&json!({"alg": alg, "typ": "JWT"}), &claims, secret);
        prop_assert!(matches!(jwt::verify_hs256(&t, secret, NOW), Err(JwtError::Algorithm(_))));
        // Without an alg at all, and with a header that is not an object.
        let t = sign_with_header(&json!({"typ": "JWT"}), &claims, secret);
        prop_assert!(matches!(jwt::verify_hs256(&t, secret, NOW), Err(JwtError::Algorithm(_))));
        let t = sign_with_header(&json!(["HS256"]), &claims, secret);
        prop_assert!(matches!(jwt::verify_hs256(&t, secret, NOW), Err(JwtError::Malformed(_))));
        // Signed with its own header, the same claims are fine.
        let t = sign_with_header(&json!({"alg": "HS256"}), &claims, secret);
        prop_assert!(jwt::verify_hs256(&t, secret, NOW).is_ok());
    }
}

// --- Tenant contexts --------------------------------------------------------------------------

const CONTEXT_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn context() -> impl Strategy<Value = Context> {
    let grant = proptest::option::of(prop_oneof![
        any::<[u8; 8]>().prop_map(|g| Grant::Key(hex(&g))),
        "[^\\p{Cc}]{1,60}".prop_map(Grant::Member),
        "[^\\p{Cc}]{1,60}".prop_map(Grant::User),
    ]);
    (any::<[u8; 16]>(), 0..8u8, 1..1_000_000_000_000_000_000i64, grant).prop_map(|(t, s, expires, grant)| {
        let scopes = Scopes::from_names(
            ["read", "write", "admin"].into_iter().enumerate().filter(|(i, _)| s & (1 << i) != 0).map(|(_, n)| n),
        )
        .unwrap();
        Context { tenant: uuid(t), scopes, expires, grant }
    })
}

fn mac_of(payload: &str, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(payload.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A value accepted with the right secret must be the one spelling of what it grants.
fn check_one_spelling(value: &str) -> Result<(), TestCaseError> {
    if let Ok(ctx) = tenant_context::verify(value, CONTEXT_SECRET, 0) {
        prop_assert_eq!(tenant_context::sign(&ctx, CONTEXT_SECRET), value);
    }
    Ok(())
}

/// Context payload fields, valid and not.
fn payload_parts() -> impl Strategy<Value = String> {
    let version = prop_oneof![Just("v1".to_string()), "v[0-9]", "V1", ""];
    let tenant = prop_oneof![any::<[u8; 16]>().prop_map(uuid), "[0-9a-fA-F-]{30,38}", "[0-9a-f]{32}"];
    let scopes = prop_oneof!["[rwa]{0,4}", "-", "--", "[rwax-]{0,3}"];
    let expires = prop_oneof!["[1-9][0-9]{0,17}", "0[0-9]{0,18}", "[+-]?[0-9]{1,20}", " [0-9]{1,5}", ""];
    let grant =
        prop_oneof![Just("-".to_string()), "[0-9a-f]{16}", "[0-9a-fA-F]{15,17}", "", "[mux][A-Za-z0-9_=+/-]{0,12}"];
    (version, tenant, scopes, expires, grant).prop_map(|(v, t, s, e, g)| format!("{v}.{t}.{s}.{e}.{g}"))
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn context_arbitrary_input(s in any::<String>(), payload in payload_parts()) {
        prop_assert!(tenant_context::verify(&s, CONTEXT_SECRET, 0).is_err());
        // Well-formed or not, signed with the secret: accepted only in the one spelling.
        check_one_spelling(&format!("{payload}.{}", mac_of(&payload, CONTEXT_SECRET)))?;
        let v = format!("{s}.{}", mac_of(&s, CONTEXT_SECRET));
        check_one_spelling(&v)?;
    }

    #[test]
    fn context_round_trip_and_changes(ctx in context(), c in change(), at in any::<usize>(), x in 1..=255u8) {
        let v = tenant_context::sign(&ctx, CONTEXT_SECRET);
        prop_assert_eq!(tenant_context::verify(&v, CONTEXT_SECRET, ctx.expires - 1), Ok(ctx.clone()));
        prop_assert_eq!(tenant_context::verify(&v, CONTEXT_SECRET, ctx.expires), Err(ContextError::Expired));
        let mut wrong = CONTEXT_SECRET.to_vec();
        wrong[at % CONTEXT_SECRET.len()] ^= x;
        prop_assert_eq!(tenant_context::verify(&v, &wrong, 0), Err(ContextError::BadSignature));
        // Changed under the original signature: refused.
        let changed = apply(&v, &c);
        if changed != v {
            prop_assert!(tenant_context::verify(&changed, CONTEXT_SECRET, 0).is_err(), "{changed}");
        }
        // Changed and signed again: accepted only if still in the one spelling.
        let (payload, _) = v.rsplit_once('.').unwrap();
        let p = apply(payload, &c);
        check_one_spelling(&format!("{p}.{}", mac_of(&p, CONTEXT_SECRET)))?;
    }

    #[test]
    fn uuid_and_key_id_forms(s in any::<String>(), t in any::<[u8; 16]>(), k in any::<[u8; 8]>(), c in change()) {
        for u in [s.clone(), uuid(t), apply(&uuid(t), &c)] {
            prop_assert_eq!(tenant_context::is_canonical_uuid(&u), reference_uuid(&u), "{:?}", u);
        }
        for id in [s, hex(&k), apply(&hex(&k), &c)] {
            prop_assert_eq!(tenant_context::is_key_id(&id), reference_key_id(&id), "{:?}", id);
        }
    }

    #[test]
    fn scope_names(names in proptest::collection::vec(
        prop_oneof![Just("read"), Just("write"), Just("admin"), Just("Read"), Just("admin "), Just(""), Just("rw"),
                    Just("reader"), Just("write\0")], 0..5)) {
        let known = |n: &str| ["read", "write", "admin"].contains(&n);
        let got = Scopes::from_names(names.iter().copied());
        if names.iter().all(|n| known(n)) {
            let s = got.unwrap();
            for n in ["read", "write", "admin"] {
                prop_assert_eq!(s.contains(Scopes::by_name(n).unwrap()), names.contains(&n));
            }
            prop_assert_eq!(Scopes::from_names(s.names()), Some(s));
        } else {
            prop_assert_eq!(got, None);
        }
    }
}

// --- Vector text --------------------------------------------------------------------------------

/// What the parser says agrees with the reference, and what it accepts reads back from its own
/// rendering.
fn check_vector_text(text: &str) -> Result<(), TestCaseError> {
    let got = vector_text::parse(text);
    prop_assert_eq!(got.as_ref().ok().map(|v| bits(v)), reference_vector(text).map(|v| bits(&v)), "{:?}", text);
    if let Ok(v) = got {
        prop_assert!(!v.is_empty() && v.len() <= VECTOR_MAX_DIM);
        for rendered in [
            format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")),
            format!("[{}]", v.iter().map(|x| format!("{x:e}")).collect::<Vec<_>>().join(",")),
        ] {
            prop_assert_eq!(bits(&vector_text::parse(&rendered).unwrap()), bits(&v));
        }
    }
    Ok(())
}

/// A number token of the text form, or something near one.
const NUMBER_TOKEN: &str = "[+-]?[0-9]{0,3}\\.?[0-9]{0,3}([eE][+-]?[0-9]{1,3})?";

fn finite() -> impl Strategy<Value = f32> {
    any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite())
}

/// A word that is not a finite number, in any case, with a sign or not.
fn non_finite() -> impl Strategy<Value = (String, ParseError)> {
    (prop_oneof![Just("nan"), Just("inf"), Just("infinity")], proptest::collection::vec(any::<bool>(), 8), "[+-]?")
        .prop_map(|(w, upper, sign)| {
            let w: String = w.chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect();
            let e = if w.eq_ignore_ascii_case("nan") { ParseError::NaN } else { ParseError::Infinite };
            (format!("{sign}{w}"), e)
        })
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn vector_text_arbitrary(s in any::<String>(), near in "[ \t]?\\[[0-9eE.,+ -]{0,24}\\][ \n]?",
                             tokens in proptest::collection::vec(NUMBER_TOKEN, 1..6)) {
        check_vector_text(&s)?;
        check_vector_text(&near)?;
        check_vector_text(&format!("[{}]", tokens.join(",")))?;
    }

    #[test]
    fn vector_text_changes(v in proptest::collection::vec(finite(), 1..12), c in change(), sci in any::<bool>()) {
        let text = if sci {
            format!("[{}]", v.iter().map(|x| format!("{x:e}")).collect::<Vec<_>>().join(","))
        } else {
            format!(" [ {} ] ", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" , "))
        };
        prop_assert_eq!(bits(&vector_text::parse(&text).unwrap()), bits(&v));
        check_vector_text(&apply(&text, &c))?;
    }

    #[test]
    fn vector_text_refuses_non_finite(v in proptest::collection::vec(finite(), 0..6), at in any::<usize>(),
                                      (word, error) in non_finite()) {
        let mut items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        let i = at % (items.len() + 1);
        items.insert(i, format!(" {word} "));
        prop_assert_eq!(vector_text::parse(&format!("[{}]", items.join(","))), Err(error));
    }

    #[test]
    fn vector_text_refuses_empty(space in "[ \t\n\r\x0b\x0c]{0,4}", space2 in "[ \t\n\r\x0b\x0c]{0,4}") {
        prop_assert_eq!(vector_text::parse(&format!("{space}[{space2}]{space}")), Err(ParseError::Empty));
    }
}

proptest! {
    // Each case reads a vector of more than 16,000 elements.
    #![proptest_config(config(8))]

    #[test]
    fn vector_text_refuses_too_many_dimensions(extra in 1..40usize, x in finite()) {
        let item = x.to_string();
        let text = format!("[{}]", vec![item.as_str(); VECTOR_MAX_DIM + extra].join(","));
        prop_assert_eq!(vector_text::parse(&text), Err(ParseError::TooManyDimensions));
        let text = format!("[{}]", vec![item.as_str(); VECTOR_MAX_DIM].join(","));
        prop_assert_eq!(vector_text::parse(&text).map(|v| v.len()), Ok(VECTOR_MAX_DIM));
    }
}

// --- Vector binary ------------------------------------------------------------------------------

fn check_binary(b: &[u8]) -> Result<(), TestCaseError> {
    let got = vector_binary::decode(b);
    prop_assert_eq!(got.as_ref().ok().map(|v| bits(v)), reference_binary(b).map(|v| bits(&v)), "{:?}", b);
    if let Ok(v) = got {
        prop_assert_eq!(vector_binary::encode(&v), b);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn vector_binary_changes(v in proptest::collection::vec(finite(), 1..12), c in change(),
                             noise in proptest::collection::vec(any::<u8>(), 0..40)) {
        let bytes = vector_binary::encode(&v);
        prop_assert_eq!(bits(&vector_binary::decode(&bytes).unwrap()), bits(&v));
        check_binary(&apply_bytes(&bytes, &c))?;
        check_binary(&noise)?;
        // The header of a vector in front of arbitrary bytes.
        check_binary(&[&bytes[..4], noise.as_slice()].concat())?;
    }

    #[test]
    fn vector_binary_refuses_non_finite(v in proptest::collection::vec(finite(), 1..8), at in any::<usize>(),
                                        x in prop_oneof![Just(f32::INFINITY), Just(f32::NEG_INFINITY),
                                                         any::<u32>().prop_map(|b| f32::from_bits(b | 0x7f80_0001))]) {
        let mut v = v;
        let i = at % v.len();
        v[i] = x;
        let e = if x.is_nan() { DecodeError::Element(vector_text::ElementError::NaN) }
                else { DecodeError::Element(vector_text::ElementError::Infinite) };
        prop_assert_eq!(vector_binary::decode(&vector_binary::encode(&v)), Err(e));
    }
}
