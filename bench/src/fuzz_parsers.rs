//! Fuzzing of every parser that reads input from a database session: API keys (and their check
//! against the stored hash), JWTs, signed tenant contexts, uuids, key ids, scope names, and the
//! text and binary forms of vectors.
//!
//! Per parser, N inputs (default 1,000,000) from a seeded generator: random bytes, random
//! printable and Unicode text, text in the parser's own alphabet, and changes to valid inputs (a
//! flipped, replaced or case-changed byte, truncation, appended, inserted, deleted, repeated or
//! swapped bytes, a changed signature or claim, another secret or pepper, an expired value). Each
//! input goes to the real function under `catch_unwind`, and the outcome is judged against what
//! that input must do:
//!   - signed values (an API key with its stored hash, a JWT, a tenant context): changed after
//!     signing, accepted only if byte for byte the original; changed and signed again with the
//!     right secret, accepted only if an independent reading of the format takes it (and then
//!     with the same content); with another secret or past expiry, refused;
//!   - unsigned forms (API key form, key ids, uuids, scope names, vector text and binary): outcome
//!     and value equal to those of an independent reading of the format, and what is accepted
//!     reads back from its own rendering.
//!
//! Figures per parser: inputs, accepted, rejected, panics, bad accepts (accepted but must not be,
//! or accepted as another value; counted in accepted), bad rejects (refused but must be accepted;
//! counted in rejected), and wall-clock seconds (generation and judging included). Exits 1 on any
//! panic, bad accept or bad reject.
//!
//! Run: cargo run --release -p sutra-bench --bin fuzz_parsers -- [N] [SEED]

use std::cell::RefCell;
use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use sutra_core::api_key;
use sutra_core::jwt::{self, Claims};
use sutra_core::tenant_context::{self, Context, Grant, Scopes};
use sutra_core::vector_binary;
use sutra_core::vector_text;
use sutra_core::VECTOR_MAX_DIM;

// The independent readings of the formats, shared with the property tests.
#[path = "../../core/tests/reference/mod.rs"]
mod reference;
use reference::{bits, hex, reference_binary, reference_key_id, reference_uuid, reference_vector};

const DEFAULT_N: u64 = 1_000_000;
const DEFAULT_SEED: u64 = 0x5eed_f022;
/// The clock of every check, in Unix seconds.
const NOW: i64 = 1_800_000_000;

// --- Random input ---------------------------------------------------------------------------------

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In `lo..hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        (0..self.below(max_len + 1)).map(|_| self.byte()).collect()
    }

    /// Bytes with no NUL, as a setting or a key can hold.
    fn text_bytes(&mut self, min_len: usize, max_len: usize) -> Vec<u8> {
        (0..min_len + self.below(max_len - min_len + 1)).map(|_| 1 + self.byte() % 255).collect()
    }

    fn string_of(&mut self, alphabet: &[u8], min_len: usize, max_len: usize) -> String {
        let n = min_len + self.below(max_len - min_len + 1);
        (0..n).map(|_| *self.pick(alphabet) as char).collect()
    }

    fn printable(&mut self, max_len: usize) -> String {
        (0..self.below(max_len + 1)).map(|_| (0x20 + self.below(95) as u8) as char).collect()
    }

    /// Characters from every plane, with ASCII and Latin-1 more likely.
    fn unicode(&mut self, min_len: usize, max_len: usize) -> String {
        let n = min_len + self.below(max_len - min_len + 1);
        (0..n)
            .map(|_| {
                let c = match self.below(4) {
                    0 => self.below(0x80) as u32,
                    1 => self.below(0x100) as u32,
                    2 => self.below(0x1_0000) as u32,
                    _ => self.below(0x11_0000) as u32,
                };
                char::from_u32(c).unwrap_or('\u{fffd}')
            })
            .collect()
    }

    /// Arbitrary text: random bytes (invalid UTF-8 replaced), printable ASCII, or any characters.
    fn noise(&mut self) -> String {
        match self.below(3) {
            0 => text(self.bytes(96)),
            1 => self.printable(96),
            _ => self.unicode(0, 32),
        }
    }
}

/// Bytes as the text a session would pass: invalid UTF-8 sequences replaced.
fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Bytes that matter to the formats: separators, signs, digits, letters of both cases.
const SPECIAL: &[u8] = b"._-+=/:, []{}\"eE0123456789abcdefABCDEFrwavnNiI\t\n";

/// One to three changes to `b`.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let n = b.len();
        let new_byte = |rng: &mut Rng| if rng.one_in(2) { *rng.pick(SPECIAL) } else { rng.byte() };
        match rng.below(10) {
            0 if n > 0 => {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                b[i] = new_byte(rng);
            }
            2 if n > 0 => {
                let i = rng.below(n);
                b[i] = if b[i].is_ascii_alphabetic() { b[i] ^ 0x20 } else { b[i].wrapping_add(1) };
            }
            3 => b.truncate(rng.below(n + 1)),
            4 => {
                for _ in 0..1 + rng.below(8) {
                    let x = new_byte(rng);
                    b.push(x);
                }
            }
            5 => {
                let (i, x) = (rng.below(n + 1), new_byte(rng));
                b.insert(i, x);
            }
            6 if n > 0 => {
                b.remove(rng.below(n));
            }
            7 if n > 0 => {
                // Repeat a span somewhere.
                let i = rng.below(n);
                let j = (i + 1 + rng.below(12)).min(n);
                let span = b[i..j].to_vec();
                let at = rng.below(n + 1);
                b.splice(at..at, span);
            }
            8 if n > 1 => {
                let (i, j) = (rng.below(n), rng.below(n));
                b.swap(i, j);
            }
            9 if n > 0 => {
                let i = rng.below(n);
                let j = (i + 1 + rng.below(12)).min(n);
                b.drain(i..j);
            }
            _ => b.push(*rng.pick(SPECIAL)),
        }
    }
}

fn mutated(rng: &mut Rng, s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    mutate(rng, &mut b);
    text(b)
}

fn random_uuid(rng: &mut Rng) -> String {
    let h = hex(&rng.next().to_le_bytes()) + &hex(&rng.next().to_le_bytes());
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

// --- SHA-256, HMAC and base64url, to sign test inputs ------------------------------------------------

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, x) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(msg.iter().copied()).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(sha256(&inner)).collect();
    sha256(&outer)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url.
fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Unpadded base64url decoded, in its one spelling only (what re-encodes to the input).
fn reference_b64_decode(s: &str) -> Option<Vec<u8>> {
    let sextets: Vec<u32> =
        s.bytes().map(|c| B64.iter().position(|&b| b == c).map(|i| i as u32)).collect::<Option<_>>()?;
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &v)| n | v << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    (b64(&out) == s).then_some(out)
}

/// A user id as identity providers write them, now and then with a character a context refuses.
fn user_id(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => format!("auth0|{}", hex(&rng.next().to_le_bytes())),
        1 => format!("{}@example.com", slug(rng)),
        2 => rng.unicode(1, 40),
        3 => rng.pick(&["a\nb", "tab\there", "", "\u{7f}"]).to_string(),
        4 => "x".repeat(250 + rng.below(10)),
        _ => slug(rng),
    }
}

/// A user id a context can carry.
fn valid_user_id(rng: &mut Rng) -> String {
    let u = user_id(rng);
    if u.is_empty() || u.len() > 255 || u.chars().any(char::is_control) {
        slug(rng)
    } else {
        u
    }
}

/// Known answers for the signing code above, and agreement with the product's own signers.
fn self_test() -> Result<(), String> {
    let digest = hex(&sha256(b"abc"));
    if digest != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
        return Err(format!("sha256(\"abc\") = {digest}"));
    }
    let mac = hex(&hmac(b"Jefe", b"what do ya want for nothing?"));
    if mac != "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" {
        return Err(format!("RFC 4231 case 2 gives {mac}"));
    }
    let long_key = [0xaau8; 131];
    let mac = hex(&hmac(&long_key, b"Test Using Larger Than Block-Size Key - Hash Key First"));
    if mac != "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54" {
        return Err(format!("RFC 4231 case 6 gives {mac}"));
    }
    if b64(b"any carnal pleas") != "YW55IGNhcm5hbCBwbGVhcw" || b64(b"\xfb\xff") != "-_8" {
        return Err("base64url".into());
    }
    if api_key::hash(b"pepper", "0123456789abcdef", "secret") != hmac(b"pepper", b"0123456789abcdef:secret") {
        return Err("API key hash".into());
    }
    let ctx = Context { tenant: random_uuid(&mut Rng(1)), scopes: Scopes::ALL, expires: NOW, grant: None };
    let signed = tenant_context::sign(&ctx, b"context secret");
    let (payload, tag) = signed.rsplit_once('.').unwrap();
    if tag != b64(&hmac(b"context secret", payload.as_bytes())) {
        return Err("tenant context tag".into());
    }
    let t = sign_token(b"s", HS256_HEADER, r#"{"tenant_id":"t","role":"read","exp":1800000001}"#);
    if jwt::verify_hs256(&t, b"s", NOW).is_err() {
        return Err("JWT signature".into());
    }
    Ok(())
}

// --- Running and judging ------------------------------------------------------------------------------

/// What one input did.
enum Outcome {
    Accepted,
    Rejected,
    BadAccept(String),
    BadReject(String),
    Panic(String),
}

thread_local! {
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Calls `f`, turning a panic into its message.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    panic::catch_unwind(AssertUnwindSafe(f))
        .map_err(|_| PANIC_MESSAGE.with(|m| m.borrow_mut().take()).unwrap_or_default())
}

fn show(input: &dyn Debug) -> String {
    let s = format!("{input:?}");
    if s.chars().count() > 200 {
        format!("{}... ({} characters)", s.chars().take(200).collect::<String>(), s.chars().count())
    } else {
        s
    }
}

/// Judges what a parser gave (`None`: refused) against what the input must give.
fn judge<T: PartialEq + Debug>(input: &dyn Debug, got: Result<Option<T>, String>, want: Option<T>) -> Outcome {
    match (got, want) {
        (Err(message), _) => Outcome::Panic(format!("{} panicked: {message}", show(input))),
        (Ok(Some(g)), Some(w)) if g == w => Outcome::Accepted,
        (Ok(Some(g)), Some(w)) => Outcome::BadAccept(format!("{} read as {g:?}, must read as {w:?}", show(input))),
        (Ok(Some(g)), None) => Outcome::BadAccept(format!("{} accepted as {g:?}", show(input))),
        (Ok(None), None) => Outcome::Rejected,
        (Ok(None), Some(w)) => Outcome::BadReject(format!("{} refused, must read as {w:?}", show(input))),
    }
}

#[derive(Default)]
struct Row {
    inputs: u64,
    accepted: u64,
    rejected: u64,
    panics: u64,
    bad_accepts: u64,
    bad_rejects: u64,
    examples: Vec<String>,
}

impl Row {
    fn failures(&self) -> u64 {
        self.panics + self.bad_accepts + self.bad_rejects
    }
}

/// Runs `n` cases of one parser and prints its line.
fn fuzz(name: &str, n: u64, rng: &mut Rng, mut case: impl FnMut(&mut Rng) -> Outcome) -> Row {
    let start = Instant::now();
    let mut row = Row::default();
    for _ in 0..n {
        row.inputs += 1;
        let example = match case(rng) {
            Outcome::Accepted => {
                row.accepted += 1;
                None
            }
            Outcome::Rejected => {
                row.rejected += 1;
                None
            }
            Outcome::BadAccept(e) => {
                row.accepted += 1;
                row.bad_accepts += 1;
                Some(format!("bad accept: {e}"))
            }
            Outcome::BadReject(e) => {
                row.rejected += 1;
                row.bad_rejects += 1;
                Some(format!("bad reject: {e}"))
            }
            Outcome::Panic(e) => {
                row.panics += 1;
                Some(format!("panic: {e}"))
            }
        };
        if let Some(e) = example.filter(|_| row.examples.len() < 5) {
            row.examples.push(e);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{name:<34} {:>9} {:>9} {:>9} {:>7} {:>11} {:>11} {seconds:>8.2}",
        row.inputs, row.accepted, row.rejected, row.panics, row.bad_accepts, row.bad_rejects
    );
    for e in &row.examples {
        println!("    {e}");
    }
    row
}

// --- API keys -------------------------------------------------------------------------------------

const HEX_BOTH_CASES: &[u8] = b"0123456789abcdefABCDEF";
const KEY_SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.";

/// The key form, read independently: `sk_`, 16 lower-case hex digits, `_`, 43 base64url
/// characters; the key id and the secret.
fn reference_key(key: &str) -> Option<(String, String)> {
    let b = key.as_bytes();
    let form = b.len() == 63
        && b.starts_with(b"sk_")
        && b[3..19].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && b[19] == b'_'
        && b[20..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
    form.then(|| (key[3..19].to_string(), key[20..].to_string()))
}

/// The key id in its place after `sk_`, read independently.
fn reference_key_id_of(key: &str) -> Option<String> {
    let b = key.as_bytes();
    let id =
        b.get(3..19).filter(|id| b.starts_with(b"sk_") && id.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))?;
    Some(String::from_utf8(id.to_vec()).unwrap())
}

struct MintedKey {
    id: String,
    key: String,
    hash: Vec<u8>,
}

const PEPPER: &[u8] = b"fuzzing pepper, as a setting holds it";

fn mint_keys(rng: &mut Rng) -> Vec<MintedKey> {
    (0..16)
        .map(|_| {
            let id: [u8; 8] = rng.next().to_le_bytes();
            let mut secret = [0u8; 32];
            secret.iter_mut().for_each(|b| *b = rng.byte());
            let (id, key) = api_key::new_key(&id, &secret);
            let hash = api_key::hash(PEPPER, &id, &key[20..]);
            MintedKey { id, key, hash }
        })
        .collect()
}

/// Text for the key parsers: noise, near the key form, or a minted key (changed or not).
fn key_text(rng: &mut Rng, keys: &[MintedKey]) -> String {
    match rng.below(10) {
        0..=2 => rng.noise(),
        3 => {
            let id = rng.string_of(HEX_BOTH_CASES, 14, 18);
            let sep = *rng.pick(&["_", "", "-", "__"]);
            format!("sk_{id}{sep}{}", rng.string_of(KEY_SECRET_CHARS, 40, 46))
        }
        4 => rng.pick(keys).key.clone(),
        _ => {
            let k = rng.pick(keys);
            mutated(rng, &k.key)
        }
    }
}

fn fuzz_api_key_parse(n: u64, rng: &mut Rng) -> Row {
    let keys = mint_keys(rng);
    fuzz("api_key::parse", n, rng, |rng| {
        let s = key_text(rng, &keys);
        let got = guarded(|| api_key::parse(&s).map(|p| (p.key_id.to_string(), p.secret.to_string())));
        judge(&s, got, reference_key(&s))
    })
}

fn fuzz_key_id_of(n: u64, rng: &mut Rng) -> Row {
    let keys = mint_keys(rng);
    fuzz("api_key::key_id_of", n, rng, |rng| {
        let s = key_text(rng, &keys);
        let got = guarded(|| api_key::key_id_of(&s).map(str::to_string));
        judge(&s, got, reference_key_id_of(&s))
    })
}

/// The authentication path: parse, find the row by key id, check the secret against its hash.
fn fuzz_api_key_verify(n: u64, rng: &mut Rng) -> Row {
    let keys = mint_keys(rng);
    fuzz("api_key::verify (parse+row+hash)", n, rng, |rng| {
        let k = rng.pick(&keys);
        let mut pepper = PEPPER.to_vec();
        let mut stored: Option<Vec<u8>> = None;
        let s = match rng.below(10) {
            0 => k.key.clone(),
            1 => {
                // Another pepper.
                let i = rng.below(pepper.len());
                pepper[i] = if pepper[i] == b'x' { b'y' } else { b'x' };
                k.key.clone()
            }
            2 => {
                // A stored hash that is not this key's: random, or this one changed in length.
                stored = Some(match rng.below(3) {
                    0 => rng.bytes(64),
                    1 => k.hash[..rng.below(k.hash.len())].to_vec(),
                    _ => [k.hash.as_slice(), &rng.bytes(8)[..]].concat(),
                });
                k.key.clone()
            }
            3 => rng.noise(),
            4 => format!("sk_{}_{}", k.id, rng.string_of(&KEY_SECRET_CHARS[..64], 43, 43)),
            _ => mutated(rng, &k.key),
        };
        let got = guarded(|| {
            let p = api_key::parse(&s)?;
            let row = keys.iter().find(|r| r.id == p.key_id)?;
            let hash = stored.as_deref().unwrap_or(&row.hash);
            api_key::verify(&pepper, &p, hash).then(|| p.key_id.to_string())
        });
        let want = keys
            .iter()
            .find(|r| r.key == s)
            .filter(|r| pepper == PEPPER && stored.as_ref().is_none_or(|h| *h == r.hash))
            .map(|r| r.id.clone());
        judge(&s, got, want)
    })
}

// --- JWT ------------------------------------------------------------------------------------------

const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn sign_token(secret: &[u8], header: &str, payload: &str) -> String {
    let hp = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    format!("{hp}.{}", b64(&hmac(secret, hp.as_bytes())))
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Claims as written: names and raw JSON values, in order.
#[derive(Clone, PartialEq)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn set(&mut self, name: &str, raw: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = raw,
            None => self.0.push((name.to_string(), raw)),
        }
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    fn render(&self, spaced: bool) -> String {
        let (sep, colon, open, close) = if spaced { (" , ", " : ", "{ ", " }") } else { (",", ":", "{", "}") };
        let body: Vec<String> = self.0.iter().map(|(n, v)| format!("{}{colon}{v}", json_str(n))).collect();
        format!("{open}{}{close}", body.join(sep))
    }
}

const SCOPE_NAMES: [&str; 3] = ["read", "write", "admin"];

fn scopes_of(bits: usize) -> Scopes {
    Scopes::from_names(SCOPE_NAMES.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, n)| *n)).unwrap()
}

fn slug(rng: &mut Rng) -> String {
    rng.string_of(b"abcdefghijklmnopqrstuvwxyz0123456789-", 1, 24)
}

/// A valid token's claims, and what they grant.
struct TokenClaims {
    fields: Fields,
    spaced: bool,
    claims: Claims,
    nbf: Option<i64>,
}

fn valid_claims(rng: &mut Rng) -> TokenClaims {
    let tenant = match rng.below(3) {
        0 => random_uuid(rng),
        1 => slug(rng),
        _ => rng.unicode(1, 16),
    };
    let bits = 1 + rng.below(7);
    let names: Vec<&str> =
        SCOPE_NAMES.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, n)| *n).collect();
    let mut scopes = scopes_of(bits);
    let mut f = Fields(vec![("tenant_id".into(), json_str(&tenant))]);
    let key = if rng.one_in(2) { "scopes" } else { "scope" };
    match rng.below(3) {
        0 => f.set(key, format!("[{}]", names.iter().map(|n| json_str(n)).collect::<Vec<_>>().join(","))),
        1 => f.set(key, json_str(&names.join(*rng.pick(&[" ", "  ", " \t"])))),
        _ => {
            let (role, s) = match bits {
                1 => (*rng.pick(&["read", "reader"]), Scopes::READ),
                2 | 3 => (*rng.pick(&["write", "writer"]), Scopes::READ.union(Scopes::WRITE)),
                _ => ("admin", Scopes::ALL),
            };
            f.set("role", json_str(role));
            scopes = s;
        }
    }
    let exp = NOW + rng.range(1, 1_000_000_000);
    // A fractional expiry counts from its whole second.
    f.set("exp", if rng.one_in(8) { format!("{exp}.5") } else { exp.to_string() });
    let nbf = rng.one_in(3).then(|| NOW - rng.range(0, 1_000_000));
    if let Some(nbf) = nbf {
        f.set("nbf", nbf.to_string());
    }
    let mut subject = None;
    match rng.below(6) {
        0 => f.set("iss", json_str("sutra")),
        1 => {
            let sub = valid_user_id(rng);
            f.set("sub", json_str(&sub));
            subject = Some(sub);
        }
        2 => f.set("aud", r#"["a","b"]"#.into()),
        _ => {}
    }
    for i in (1..f.0.len()).rev() {
        let j = rng.below(i + 1);
        f.0.swap(i, j);
    }
    TokenClaims {
        fields: f,
        spaced: rng.one_in(4),
        claims: Claims { tenant, subject, scopes: Some(scopes), expires: exp },
        nbf,
    }
}

/// One claim made invalid (the token is then signed again).
fn invalidate(rng: &mut Rng, f: &mut Fields) {
    let scope_claim = |f: &mut Fields, raw: &str| {
        f.remove("scope");
        f.remove("scopes");
        f.set("scopes", raw.to_string());
    };
    let role_claim = |f: &mut Fields, raw: Option<&str>| {
        f.remove("scope");
        f.remove("scopes");
        f.remove("role");
        if let Some(raw) = raw {
            f.set("role", raw.to_string());
        }
    };
    match rng.below(10) {
        0 => f.set("exp", (NOW - rng.range(0, 1_000_000_000)).to_string()),
        1 => match rng.below(4) {
            0 => f.remove("exp"),
            1 => f.set("exp", json_str(&(NOW + 60).to_string())),
            2 => f.set("exp", "null".into()),
            _ => f.set("exp", (*rng.pick(&["true", "[1900000000]", "{}", "-1"])).into()),
        },
        2 => f.set("nbf", (NOW + rng.range(1, 1_000_000)).to_string()),
        3 => f.set("nbf", (*rng.pick(&["\"0\"", "[0]", "true", "{}"])).into()),
        4 => match rng.below(3) {
            0 => f.remove("tenant_id"),
            _ => f.set("tenant_id", (*rng.pick(&["\"\"", "null", "42", "[\"acme\"]", "{}", "true"])).into()),
        },
        5 | 6 => scope_claim(
            f,
            rng.pick::<&str>(&[
                "[]",
                "\"\"",
                "\"  \"",
                "[\"root\"]",
                "[\"read\",1]",
                "{\"read\":true}",
                "\"READ\"",
                "[\"Read\"]",
                "7",
                "null",
                "[\"read \"]",
                "\"read,write\"",
                "[\"\"]",
                "[[\"read\"]]",
                "\"readwrite\"",
            ]),
        ),
        7 => {
            let other = rng.string_of(b"abcdefghijklmnopqrstuvwxyz", 1, 8);
            let unknown = if SCOPE_NAMES.contains(&other.as_str()) { "sudo".to_string() } else { other };
            scope_claim(f, &format!("[\"read\",{}]", json_str(&unknown)));
        }
        8 => f.set("sub", (*rng.pick(&["\"\"", "42", "[\"a\"]", "{}", "true", "\"a\\nb\"", "\"a\\u0000\""])).into()),
        _ => role_claim(
            f,
            *rng.pick(&[
                Some("\"root\""),
                Some("\"Admin\""),
                Some("\"\""),
                Some("1"),
                Some("[\"admin\"]"),
                Some("\"readers\""),
                Some("\"admin \""),
            ]),
        ),
    }
}

/// A change to valid claims that still leaves them valid (for a forgery under the old signature).
fn change_claim(rng: &mut Rng, f: &mut Fields) {
    match rng.below(5) {
        0 => f.set("tenant_id", json_str(&slug(rng))),
        1 => f.set("exp", (NOW + rng.range(1, 2_000_000_000)).to_string()),
        2 => {
            f.remove("scope");
            f.set("scopes", r#"["read","write","admin"]"#.into());
        }
        3 => f.remove("nbf"),
        _ => f.set("role", json_str("admin")),
    }
}

/// Headers that are not `alg: HS256`, or not a JSON object.
const BAD_HEADERS: &[&str] = &[
    r#"{"alg":"none","typ":"JWT"}"#,
    r#"{"alg":"none"}"#,
    r#"{"alg":"HS512"}"#,
    r#"{"alg":"RS256"}"#,
    r#"{"alg":"hs256"}"#,
    r#"{"alg":"HS256 "}"#,
    r#"{"alg":" HS256"}"#,
    r#"{"alg":"HS256\u0000"}"#,
    r#"{"typ":"JWT"}"#,
    r#"{"alg":null}"#,
    r#"{"alg":["HS256"]}"#,
    r#"{"alg":256}"#,
    r#"{"ALG":"HS256"}"#,
    r#"[]"#,
    r#""HS256""#,
    r#"null"#,
    r#"{"alg":"HS256""#,
    r#"{"alg":"HS256"}}"#,
    "",
];

/// Headers that are `alg: HS256` however written.
const GOOD_HEADERS: &[&str] = &[
    r#"{"alg":"HS256"}"#,
    r#"{"typ":"JWT","alg":"HS256"}"#,
    r#" { "alg" : "HS256" , "kid" : "k1" } "#,
    r#"{"alg":"HS\u0032\u00356"}"#,
];

fn fuzz_jwt(n: u64, rng: &mut Rng) -> Row {
    fuzz("jwt::verify_hs256", n, rng, |rng| {
        // A setting's secret: 1 to 96 bytes, no NUL (HMAC pads keys with zeros, so `s` and `s\0`
        // would be the same key; a setting cannot hold a NUL).
        let secret = rng.text_bytes(1, 96);
        let tc = valid_claims(rng);
        let payload = tc.fields.render(tc.spaced);
        let token = sign_token(&secret, HS256_HEADER, &payload);
        let mut key = secret.clone();
        let mut now = NOW;
        let good = Some(tc.claims.clone());
        let (input, want) = match rng.below(20) {
            0 => (token, good),
            1 => {
                // The last second before expiry, and any second from it on.
                if rng.one_in(2) {
                    now = tc.claims.expires - 1;
                    (token, good)
                } else {
                    now = tc.claims.expires + rng.range(0, 1_000_000);
                    (token, None)
                }
            }
            2 => match tc.nbf {
                Some(nbf) => {
                    now = nbf - rng.range(1, 1000);
                    (token, None)
                }
                None => (token, good),
            },
            3..=9 => {
                let changed = mutated(rng, &token);
                let want = if changed == token { good } else { None };
                (changed, want)
            }
            10 => {
                // Claims changed under the original signature.
                let mut f = tc.fields.clone();
                change_claim(rng, &mut f);
                let (h, _) = token.split_once('.').unwrap();
                let (_, sig) = token.rsplit_once('.').unwrap();
                let forged = format!("{h}.{}.{sig}", b64(f.render(tc.spaced).as_bytes()));
                let want = if forged == token { good } else { None };
                (forged, want)
            }
            11 | 12 => {
                let mut f = tc.fields.clone();
                invalidate(rng, &mut f);
                (sign_token(&secret, HS256_HEADER, &f.render(tc.spaced)), None)
            }
            13 => (sign_token(&secret, rng.pick::<&str>(BAD_HEADERS), &payload), None),
            14 => (sign_token(&secret, rng.pick::<&str>(GOOD_HEADERS), &payload), good),
            15 => {
                // Another secret.
                match rng.below(4) {
                    0 => {
                        let i = rng.below(key.len());
                        key[i] = if key[i] == 0xff { 1 } else { key[i] + 1 };
                    }
                    1 => key.push(1 + rng.byte() % 255),
                    2 if key.len() > 1 => {
                        key.remove(rng.below(key.len()));
                    }
                    _ => key = rng.text_bytes(1, 96),
                }
                let want = if key == secret { good } else { None };
                (token, want)
            }
            16 => {
                // Another signature, or this one spelled otherwise.
                let (hp, _) = token.rsplit_once('.').unwrap();
                let mut mac = hmac(&secret, hp.as_bytes()).to_vec();
                let sig = match rng.below(6) {
                    0 => {
                        mac[rng.below(32)] ^= 1 << rng.below(8);
                        b64(&mac)
                    }
                    1 => b64(&rng.bytes(40)),
                    2 => b64(&mac[..rng.below(32)]),
                    3 => b64(&[mac.as_slice(), &rng.bytes(4)].concat()),
                    4 => {
                        // The same 32 bytes with non-zero unused low bits in the last character.
                        let mut s = b64(&mac).into_bytes();
                        let last = B64.iter().position(|&c| c == s[42]).unwrap();
                        s[42] = B64[last | (1 + rng.below(3))];
                        String::from_utf8(s).unwrap()
                    }
                    _ => format!("{}{}", b64(&mac), rng.pick(&["=", "==", " ", "\n", "."])),
                };
                let changed = format!("{hp}.{sig}");
                let want = if changed == token { good } else { None };
                (changed, want)
            }
            17 => {
                // Three parts of arbitrary content.
                let parts: Vec<String> = (0..3).map(|_| b64(&rng.bytes(64))).collect();
                (parts.join("."), None)
            }
            18 => {
                let p = if rng.one_in(2) { b64(rng.noise().as_bytes()) } else { b64(&rng.bytes(48)) };
                (sign_token(&secret, HS256_HEADER, "").replacen(".", &format!(".{p}"), 1), None)
            }
            _ => (rng.noise(), None),
        };
        let got = guarded(|| jwt::verify_hs256(&input, &key, now).ok());
        judge(&input, got, want)
    })
}

// --- Tenant contexts ------------------------------------------------------------------------------

/// A tenant context, read independently: its tag is the base64url HMAC of the rest under
/// `secret`, and each field is in its one spelling.
fn reference_context(value: &str, secret: &[u8], now: i64) -> Option<Context> {
    let (payload, tag) = value.rsplit_once('.')?;
    if tag != b64(&hmac(secret, payload.as_bytes())) {
        return None;
    }
    let fields: Vec<&str> = payload.split('.').collect();
    let ["v1", tenant, scopes, expires, grant] = fields.as_slice() else {
        return None;
    };
    if !reference_uuid(tenant) {
        return None;
    }
    let scopes = match *scopes {
        "-" => Scopes::default(),
        "r" => Scopes::READ,
        "w" => Scopes::WRITE,
        "a" => Scopes::ADMIN,
        "rw" => Scopes::READ.union(Scopes::WRITE),
        "ra" => Scopes::READ.union(Scopes::ADMIN),
        "wa" => Scopes::WRITE.union(Scopes::ADMIN),
        "rwa" => Scopes::ALL,
        _ => return None,
    };
    let e: u64 = expires.parse().ok()?;
    if e.to_string() != *expires || e >= 1_000_000_000_000_000_000 {
        return None;
    }
    let grant = match *grant {
        "-" => None,
        g if reference_key_id(g) => Some(Grant::Key(g.to_string())),
        g => {
            let (kind, b64) = g.split_at_checked(1)?;
            let user = String::from_utf8(reference_b64_decode(b64)?).ok()?;
            if user.is_empty() || user.len() > 255 || user.chars().any(char::is_control) {
                return None;
            }
            match kind {
                "m" => Some(Grant::Member(user)),
                "u" => Some(Grant::User(user)),
                _ => return None,
            }
        }
    };
    (now < e as i64).then(|| Context { tenant: tenant.to_string(), scopes, expires: e as i64, grant })
}

const SCOPE_SPELLINGS: &[&str] = &["-", "r", "w", "a", "rw", "ra", "wa", "rwa"];

fn expires_value(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => NOW + rng.range(-100_000_000, 100_000_000),
        1 => rng.range(0, 1_000_000_000_000_000_000),
        2 => rng.range(0, 100),
        _ => *rng.pick(&[0, 999_999_999_999_999_999, NOW, NOW + 1]),
    }
}

fn random_context(rng: &mut Rng) -> Context {
    let grant = match rng.below(4) {
        0 => None,
        1 => Some(Grant::Key(hex(&rng.next().to_le_bytes()))),
        2 => Some(Grant::Member(valid_user_id(rng))),
        _ => Some(Grant::User(valid_user_id(rng))),
    };
    let scopes = scopes_of(rng.below(8));
    Context { tenant: random_uuid(rng), scopes, expires: expires_value(rng).max(1), grant }
}

/// Context fields, each in its one spelling most of the time, and any of them not.
fn context_payload(rng: &mut Rng) -> String {
    let version = match rng.below(10) {
        0 => rng.pick(&["v2", "V1", "v1 ", "", "v01", "1", "v", "v1\u{0}"]).to_string(),
        1 => mutated(rng, "v1"),
        _ => "v1".into(),
    };
    let uuid = random_uuid(rng);
    let tenant = match rng.below(10) {
        0 => uuid.to_uppercase(),
        1 => uuid.replace('-', ""),
        2 => mutated(rng, &uuid),
        3 => format!("{{{uuid}}}"),
        _ => uuid,
    };
    let scopes = match rng.below(10) {
        0 | 1 => {
            rng.pick(&["", "wr", "rr", "--", "r-", "-r", "x", "R", "rwax", "ar", "aw", "rwaa", " r", "r "]).to_string()
        }
        2 => rng.string_of(b"rwa-", 0, 4),
        _ => rng.pick(SCOPE_SPELLINGS).to_string(),
    };
    let e = expires_value(rng);
    let expires = match rng.below(12) {
        0 => format!("{}{e}", "0".repeat(1 + rng.below(3))),
        1 => format!("{}{e}", rng.pick(&["+", "-", " ", "\t"])),
        2 => format!("{e}{}", rng.pick(&[" ", ".0", "e0", "\n"])),
        3 => rng
            .pick(&["", "1e9", "0x10", "9223372036854775807", "1000000000000000000", "99999999999999999999", "-0"])
            .to_string(),
        4 => mutated(rng, &e.to_string()),
        _ => e.to_string(),
    };
    let id = hex(&rng.next().to_le_bytes());
    let grant = match rng.below(10) {
        0 => id.to_uppercase(),
        1 => id[..15].to_string(),
        2 => format!("{id}0"),
        3 => rng.pick(&["", "--", "_", "null"]).to_string(),
        4 => mutated(rng, &id),
        5 | 6 => "-".into(),
        7 => {
            let b64 = b64(user_id(rng).as_bytes());
            let spelled = format!("{}{b64}", rng.pick(&["m", "u", "x", "M", ""]));
            if rng.one_in(3) {
                mutated(rng, &spelled)
            } else {
                spelled
            }
        }
        _ => id,
    };
    let mut fields = vec![version, tenant, scopes, expires, grant];
    if rng.one_in(30) {
        let at = rng.below(fields.len() + 1);
        fields.insert(at, rng.pick(&["", "-", "v1", "r"]).to_string());
    }
    if rng.one_in(30) {
        fields.remove(rng.below(5));
    }
    fields.join(".")
}

fn fuzz_context(n: u64, rng: &mut Rng) -> Row {
    fuzz("tenant_context::verify", n, rng, |rng| {
        // The cluster's context secret: at least 32 bytes, no NUL.
        let secret = rng.text_bytes(32, 80);
        let ctx = random_context(rng);
        let value = tenant_context::sign(&ctx, &secret);
        let mut key = secret.clone();
        let mut now = NOW;
        let input = match rng.below(20) {
            0 | 1 => {
                // The last seconds before expiry, or any second from it on.
                now = if rng.one_in(2) {
                    ctx.expires - rng.range(1, 1_000_000)
                } else {
                    ctx.expires + rng.range(0, 1000)
                };
                value
            }
            2..=7 => mutated(rng, &value),
            8..=11 => {
                // The payload changed and signed again.
                let (payload, _) = value.rsplit_once('.').unwrap();
                let p = mutated(rng, payload);
                format!("{p}.{}", b64(&hmac(&secret, p.as_bytes())))
            }
            12..=15 => {
                let p = context_payload(rng);
                format!("{p}.{}", b64(&hmac(&secret, p.as_bytes())))
            }
            16 => {
                // Another secret.
                let i = rng.below(key.len());
                key[i] = if key[i] == 0xff { 1 } else { key[i] + 1 };
                value
            }
            17 => {
                // The same tag spelled otherwise.
                let mut b = value.into_bytes();
                let n = b.len();
                let last = B64.iter().position(|&c| c == b[n - 1]).unwrap();
                b[n - 1] = B64[last | (1 + rng.below(3))];
                String::from_utf8(b).unwrap()
            }
            _ => rng.noise(),
        };
        let got = guarded(|| tenant_context::verify(&input, &key, now).ok());
        judge(&input, got, reference_context(&input, &key, now))
    })
}

/// Text near a uuid or a key id of `len` characters.
fn id_text(rng: &mut Rng, valid: &str) -> String {
    match rng.below(10) {
        0 | 1 => valid.to_string(),
        2..=5 => mutated(rng, valid),
        6 => valid.to_uppercase(),
        7 => rng.string_of(b"0123456789abcdefABCDEFg-+ ", valid.len() - 2, valid.len() + 2),
        _ => rng.noise(),
    }
}

fn fuzz_uuid(n: u64, rng: &mut Rng) -> Row {
    fuzz("tenant_context::is_canonical_uuid", n, rng, |rng| {
        let u = random_uuid(rng);
        let s = id_text(rng, &u);
        let got = guarded(|| tenant_context::is_canonical_uuid(&s).then_some(()));
        judge(&s, got, reference_uuid(&s).then_some(()))
    })
}

fn fuzz_key_id(n: u64, rng: &mut Rng) -> Row {
    fuzz("tenant_context::is_key_id", n, rng, |rng| {
        let id = hex(&rng.next().to_le_bytes());
        let s = id_text(rng, &id);
        let got = guarded(|| tenant_context::is_key_id(&s).then_some(()));
        judge(&s, got, reference_key_id(&s).then_some(()))
    })
}

fn fuzz_scope_names(n: u64, rng: &mut Rng) -> Row {
    const NEAR: &[&str] =
        &["Read", "READ", "reader", "writer", "admin ", " read", "", "rw", "r", "adm", "read\u{0}", "ádmin", "admins"];
    fuzz("Scopes::from_names", n, rng, |rng| {
        let names: Vec<String> = (0..rng.below(6))
            .map(|_| match rng.below(10) {
                0..=5 => rng.pick(&SCOPE_NAMES).to_string(),
                6 | 7 => rng.pick(NEAR).to_string(),
                8 => {
                    let name = *rng.pick(&SCOPE_NAMES);
                    mutated(rng, name)
                }
                _ => rng.noise(),
            })
            .collect();
        let got = guarded(|| Scopes::from_names(names.iter().map(String::as_str)));
        let want = names.iter().try_fold(Scopes::default(), |acc, n| {
            let i = SCOPE_NAMES.iter().position(|s| s == n)?;
            Some(acc.union(scopes_of(1 << i)))
        });
        judge(&names, got, want)
    })
}

// --- Vector text ------------------------------------------------------------------------------------

fn random_finite(rng: &mut Rng) -> f32 {
    match rng.below(3) {
        0 => rng.range(-1000, 1000) as f32 / 8.0,
        1 => rng.range(-100, 100) as f32,
        _ => loop {
            let x = f32::from_bits(rng.next() as u32);
            if x.is_finite() {
                break x;
            }
        },
    }
}

fn random_vector(rng: &mut Rng, max_len: usize) -> Vec<f32> {
    (0..1 + rng.below(max_len)).map(|_| random_finite(rng)).collect()
}

fn render(rng: &mut Rng, v: &[f32]) -> String {
    let space = |rng: &mut Rng| rng.pick(&["", "", "", " ", "  ", "\t", "\n", " \r\n"]).to_string();
    let style = rng.below(4);
    let items: Vec<String> = v
        .iter()
        .map(|x| {
            let t = match style {
                0 => x.to_string(),
                1 => format!("{x:e}"),
                2 => format!("{x:E}"),
                _ => format!("{x:.3}"),
            };
            format!("{}{t}{}", space(rng), space(rng))
        })
        .collect();
    format!("{}[{}]{}", space(rng), items.join(","), space(rng))
}

/// A number token of the decimal grammar, or near it.
fn number_token(rng: &mut Rng) -> String {
    let digits = |rng: &mut Rng, max| rng.string_of(b"0123456789", 0, max);
    let mut t = rng.pick(&["", "", "+", "-", "+-", "--"]).to_string();
    t += &digits(rng, 4);
    if rng.one_in(2) {
        t.push('.');
        t += &digits(rng, 4);
    }
    if rng.one_in(3) {
        t += *rng.pick(&["e", "E", "e+", "e-", "E-"]);
        let max = if rng.one_in(20) { 14 } else { 3 };
        t += &digits(rng, max);
    }
    if rng.one_in(20) {
        t = rng
            .pick(&["nan", "NaN", "-inf", "Infinity", "+INF", "infinit", "in", "na", "0x1p3", "1_000", "١"])
            .to_string();
    }
    t
}

fn non_finite_word(rng: &mut Rng) -> String {
    let w = *rng.pick(&["nan", "inf", "infinity"]);
    let w: String = w.chars().map(|c| if rng.one_in(2) { c.to_ascii_uppercase() } else { c }).collect();
    format!("{}{w}", rng.pick(&["", "+", "-"]))
}

fn fuzz_vector_text(n: u64, rng: &mut Rng) -> Row {
    fuzz("vector_text::parse", n, rng, |rng| {
        let input = match rng.below(1000) {
            0 => {
                // More dimensions than allowed, or exactly as many.
                let extra = rng.below(3);
                let item = random_finite(rng).to_string();
                format!("[{}]", vec![item.as_str(); VECTOR_MAX_DIM + extra].join(","))
            }
            1..=200 => rng.noise(),
            201..=350 => rng.string_of(b"[]0123456789.,eE+- \t\nnaifNAIF", 0, 40),
            351..=500 => {
                let v = random_vector(rng, 16);
                render(rng, &v)
            }
            501..=800 => {
                let v = random_vector(rng, 8);
                let t = render(rng, &v);
                mutated(rng, &t)
            }
            801..=900 => {
                let tokens: Vec<String> = (0..1 + rng.below(6)).map(|_| number_token(rng)).collect();
                format!("[{}]", tokens.join(*rng.pick(&[",", ", ", " ,", ",,", " "])))
            }
            901..=950 => {
                let mut items: Vec<String> = random_vector(rng, 6).iter().map(|x| x.to_string()).collect();
                let at = rng.below(items.len() + 1);
                items.insert(at, non_finite_word(rng));
                format!("[{}]", items.join(","))
            }
            _ => format!(
                "{}[{}]{}",
                rng.string_of(b" \t\n\r", 0, 3),
                rng.string_of(b" \t\n\r", 0, 3),
                rng.string_of(b" \t\n\r", 0, 3)
            ),
        };
        let got = guarded(|| vector_text::parse(&input).ok().map(|v| bits(&v)));
        let outcome = judge(&input, got, reference_vector(&input).map(|v| bits(&v)));
        if let Outcome::Accepted = outcome {
            // What is accepted reads back from its own rendering.
            let v = vector_text::parse(&input).unwrap();
            let rendered = format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
            let back = vector_text::parse(&rendered).map(|b| b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            if back != Ok(v.iter().map(|x| x.to_bits()).collect()) {
                return Outcome::BadAccept(format!("{} does not read back from {}", show(&input), show(&rendered)));
            }
        }
        outcome
    })
}

// --- Vector binary ------------------------------------------------------------------------------------

fn fuzz_vector_binary(n: u64, rng: &mut Rng) -> Row {
    fuzz("vector_binary::decode", n, rng, |rng| {
        let input: Vec<u8> = match rng.below(1000) {
            0 => {
                // As many dimensions as allowed, or one more with its elements.
                let dim = VECTOR_MAX_DIM + rng.below(2);
                let element = 1.5f32.to_bits().to_be_bytes();
                [&(dim as i16).to_be_bytes()[..], &[0, 0], &element.repeat(dim)].concat()
            }
            1..=150 => rng.bytes(80),
            151..=300 => {
                // A header of any dimensions, then about as many bytes as it announces.
                let dim: i16 = match rng.below(3) {
                    0 => *rng.pick(&[0, -1, i16::MIN, i16::MAX, VECTOR_MAX_DIM as i16, VECTOR_MAX_DIM as i16 + 1]),
                    _ => rng.range(-4, 24) as i16,
                };
                let unused: i16 = if rng.one_in(4) { rng.next() as i16 } else { 0 };
                let len = (4 * dim.clamp(0, 24) as usize + rng.below(9)).saturating_sub(4);
                let body: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                [&dim.to_be_bytes()[..], &unused.to_be_bytes(), &body].concat()
            }
            301..=500 => vector_binary::encode(&random_vector(rng, 16)),
            501..=900 => {
                let mut b = vector_binary::encode(&random_vector(rng, 8));
                mutate(rng, &mut b);
                b
            }
            _ => {
                let mut v = random_vector(rng, 8);
                let i = rng.below(v.len());
                v[i] = match rng.below(3) {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    _ => f32::from_bits(rng.next() as u32 | 0x7f80_0001),
                };
                vector_binary::encode(&v)
            }
        };
        let got = guarded(|| vector_binary::decode(&input).ok().map(|v| bits(&v)));
        let outcome = judge(&input, got, reference_binary(&input).map(|v| bits(&v)));
        if let Outcome::Accepted = outcome {
            // What is accepted writes back byte for byte.
            let v = vector_binary::decode(&input).unwrap();
            if vector_binary::encode(&v) != input {
                return Outcome::BadAccept(format!("{} does not write back", show(&input)));
            }
        }
        outcome
    })
}

// --- Main ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.first().map(|a| a.parse().expect("N: inputs per parser")).unwrap_or(DEFAULT_N);
    let seed: u64 = args.get(1).map(|a| a.parse().expect("SEED: an integer")).unwrap_or(DEFAULT_SEED);
    let seed_arg = if seed == DEFAULT_SEED { String::new() } else { format!(" {seed}") };
    println!("reproduce: cargo run --release -p sutra-bench --bin fuzz_parsers -- {n}{seed_arg}");
    if let Err(e) = self_test() {
        println!("self-test of the signing code failed: {e}");
        std::process::exit(2);
    }
    // Panics are counted and shown with their input, not printed as they happen.
    panic::set_hook(Box::new(|info| {
        let message = match (info.payload().downcast_ref::<&str>(), info.payload().downcast_ref::<String>()) {
            (Some(s), _) => s.to_string(),
            (_, Some(s)) => s.clone(),
            _ => "(no message)".into(),
        };
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{message}{at}")));
    }));
    println!("{n} inputs per parser, seed {seed}, clock {NOW}");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>7} {:>11} {:>11} {:>8}",
        "parser", "inputs", "accepted", "rejected", "panics", "bad-accepts", "bad-rejects", "seconds"
    );
    let parsers: [fn(u64, &mut Rng) -> Row; 10] = [
        fuzz_api_key_parse,
        fuzz_key_id_of,
        fuzz_api_key_verify,
        fuzz_jwt,
        fuzz_context,
        fuzz_uuid,
        fuzz_key_id,
        fuzz_scope_names,
        fuzz_vector_text,
        fuzz_vector_binary,
    ];
    let start = Instant::now();
    let mut failures = 0;
    for (i, run) in parsers.iter().enumerate() {
        // Each parser has its own stream, so that a line reproduces on its own.
        let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        failures += run(n, &mut rng).failures();
    }
    println!(
        "total: {} inputs in {:.1} s, {failures} failures (panics, bad accepts, bad rejects)",
        n * parsers.len() as u64,
        start.elapsed().as_secs_f64()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
