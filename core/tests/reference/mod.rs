//! Independent readings of the formats sutra parses, written without sutra-core's parsers: what
//! the property tests (`core/tests/parsers.rs`) and the fuzzer (`bench/src/fuzz_parsers.rs`)
//! judge the real parsers against. One copy, so that both judge by the same rules.

use sutra_core::VECTOR_MAX_DIM;

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bit patterns of a vector's elements (so that equal means identical, -0 and NaN included).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The uuid text form: five groups of 8, 4, 4, 4 and 12 lower-case hex digits that print back
/// the same.
pub fn reference_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && u64::from_str_radix(g, 16).is_ok_and(|v| format!("{v:0n$x}") == *g))
}

/// A key id: 16 hex digits that print back the same.
pub fn reference_key_id(s: &str) -> bool {
    s.len() == 16 && u64::from_str_radix(s, 16).is_ok_and(|v| format!("{v:016x}") == s)
}

fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`
fn is_decimal(t: &str) -> bool {
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

/// The vector text form: the vector it reads, or `None`.
pub fn reference_vector(text: &str) -> Option<Vec<f32>> {
    let inner = text.trim_matches(is_pg_space).strip_prefix('[')?.strip_suffix(']')?;
    let v = inner
        .split(',')
        .map(|piece| {
            let t = piece.trim_matches(is_pg_space);
            is_decimal(t).then(|| t.parse::<f32>().ok()).flatten().filter(|x| x.is_finite())
        })
        .collect::<Option<Vec<f32>>>()?;
    (v.len() <= VECTOR_MAX_DIM).then_some(v)
}

/// The binary form: the vector it holds, or `None`.
pub fn reference_binary(b: &[u8]) -> Option<Vec<f32>> {
    let dim = i16::from_be_bytes(b.get(..2)?.try_into().ok()?);
    let unused = i16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    if !(1..=VECTOR_MAX_DIM as i64).contains(&(dim as i64)) || unused != 0 || b.len() != 4 + 4 * dim as usize {
        return None;
    }
    let v: Vec<f32> = b[4..].chunks(4).map(|c| f32::from_be_bytes(c.try_into().unwrap())).collect();
    v.iter().all(|x| x.is_finite()).then_some(v)
}
