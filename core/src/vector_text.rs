//! The text form of a vector: `[1,2.5,-3e-07]`, the same as pgvector's.
//!
//! Input accepts whitespace around elements and brackets, decimal numbers with an optional sign,
//! fraction and exponent. Output prints each element with the fewest digits that read back to the
//! same `float4`, in the layout of PostgreSQL's `float4out` (fixed notation for decimal exponents
//! from -4 to 5, scientific notation with a signed two-digit exponent otherwise).

use std::fmt::Write;

use crate::VECTOR_MAX_DIM;

/// Why a text value is not a vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The text is not of the form `[n, n, ...]`; the detail says what was wrong.
    Syntax { detail: Option<&'static str> },
    /// `[]`.
    Empty,
    /// More than [`VECTOR_MAX_DIM`] elements.
    TooManyDimensions,
    /// A number that does not fit a `float4`; holds the number as written.
    OutOfRange(String),
    /// `NaN` as an element.
    NaN,
    /// `Infinity` or `-Infinity` as an element.
    Infinite,
}

/// Element errors shared by every way a vector is made (text, binary, arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementError {
    NaN,
    Infinite,
}

/// Checks one element: vectors hold finite numbers only.
#[inline]
pub fn check_element(x: f32) -> Result<(), ElementError> {
    if x.is_nan() {
        Err(ElementError::NaN)
    } else if x.is_infinite() {
        Err(ElementError::Infinite)
    } else {
        Ok(())
    }
}

impl From<ElementError> for ParseError {
    fn from(e: ElementError) -> Self {
        match e {
            ElementError::NaN => ParseError::NaN,
            ElementError::Infinite => ParseError::Infinite,
        }
    }
}

#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn skip_space(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_space(s[i]) {
        i += 1;
    }
    i
}

/// Length of the number token at the start of `s`, or 0 when there is none. Recognises the
/// words `nan`, `inf` and `infinity` (any case, optional sign) so that they can be refused with
/// their own message rather than as a syntax error.
fn number_token_len(s: &[u8]) -> usize {
    let mut i = 0;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        i += 1;
    }
    let rest = &s[i..];
    for word in [&b"infinity"[..], b"inf", b"nan"] {
        if rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word) {
            return i + word.len();
        }
    }
    let start_digits = i;
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - start_digits;
    if i < s.len() && s[i] == b'.' {
        i += 1;
        let f = i;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - f;
    }
    if digits == 0 {
        return 0;
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        let mut j = i + 1;
        if j < s.len() && (s[j] == b'+' || s[j] == b'-') {
            j += 1;
        }
        let e = j;
        while j < s.len() && s[j].is_ascii_digit() {
            j += 1;
        }
        if j > e {
            i = j;
        }
    }
    i
}

/// Parses the text form of a vector.
pub fn parse(text: &str) -> Result<Vec<f32>, ParseError> {
    let s = text.as_bytes();
    let mut i = skip_space(s, 0);
    if i >= s.len() || s[i] != b'[' {
        return Err(ParseError::Syntax {
            detail: Some("Vector contents must start with \"[\"."),
        });
    }
    i = skip_space(s, i + 1);
    if i < s.len() && s[i] == b']' {
        return Err(ParseError::Empty);
    }
    let mut out = Vec::new();
    loop {
        i = skip_space(s, i);
        if i >= s.len() {
            return Err(ParseError::Syntax {
                detail: Some("Unexpected end of input."),
            });
        }
        let len = number_token_len(&s[i..]);
        if len == 0 {
            return Err(ParseError::Syntax { detail: None });
        }
        // The token is ASCII by construction, so this slice is on char boundaries.
        let token = &text[i..i + len];
        let value = parse_number(token)?;
        if out.len() == VECTOR_MAX_DIM {
            return Err(ParseError::TooManyDimensions);
        }
        out.push(value);
        i = skip_space(s, i + len);
        match s.get(i) {
            Some(b',') => i += 1,
            Some(b']') => {
                i += 1;
                break;
            }
            Some(_) => return Err(ParseError::Syntax { detail: None }),
            None => {
                return Err(ParseError::Syntax {
                    detail: Some("Unexpected end of input."),
                })
            }
        }
    }
    if skip_space(s, i) != s.len() {
        return Err(ParseError::Syntax {
            detail: Some("Junk after closing right brace."),
        });
    }
    Ok(out)
}

fn parse_number(token: &str) -> Result<f32, ParseError> {
    let unsigned = token.trim_start_matches(['+', '-']);
    if unsigned.eq_ignore_ascii_case("nan") {
        return Err(ParseError::NaN);
    }
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity") {
        return Err(ParseError::Infinite);
    }
    // The token matches the decimal grammar above, which Rust's parser accepts; a value too
    // large for f32 comes back as infinity.
    let value: f32 = token.parse().map_err(|_| ParseError::Syntax { detail: None })?;
    if value.is_infinite() {
        return Err(ParseError::OutOfRange(token.to_string()));
    }
    Ok(value)
}

/// True when the decimal `digits` (as printed) lies exactly on the edge of the interval of
/// values that round to `x`, that is, on the midpoint between `x` and a neighbouring f32.
/// Such a decimal reads back as `x` only under round-half-even, so PostgreSQL never prints one.
fn on_rounding_edge(x: f32, digits: &str) -> bool {
    // Midpoints between neighbouring f32 values need 25 significant bits: exact in f64. A
    // decimal of at most 9 digits that is not exactly a midpoint cannot parse to one.
    let v: f64 = digits.parse().expect("formatted by Rust");
    let xf = x as f64;
    let below = x.next_down() as f64;
    let above = if x.next_up().is_finite() {
        x.next_up() as f64
    } else {
        xf + (xf - below)
    };
    v == (xf + below) / 2.0 || v == (xf + above) / 2.0
}

/// The shortest decimal digits of a positive finite `x` in scientific form (`d.ddde-N`), chosen
/// as PostgreSQL's float4out chooses them: the fewest significant digits that read back as `x`
/// under any rounding (never a value on the edge of `x`'s rounding interval), and among those the
/// nearest to `x`, ties to an even last digit.
fn shortest_digits(x: f32, scratch: &mut String) {
    scratch.clear();
    // Rust's shortest form has the fewest digits that round-trip, possibly on an edge; PostgreSQL
    // needs at least as many.
    let _ = write!(scratch, "{:e}", x);
    let mut n = scratch.split('e').next().unwrap().bytes().filter(u8::is_ascii_digit).count();
    loop {
        scratch.clear();
        // Exact formatting to `n` significant digits rounds the exact value half to even.
        let _ = write!(scratch, "{:.*e}", n - 1, x);
        if n >= 9 || (scratch.parse::<f32>() == Ok(x) && !on_rounding_edge(x, scratch)) {
            return;
        }
        n += 1;
    }
}

/// Appends one element in PostgreSQL's `float4out` layout (shortest round-trip digits).
pub fn write_element(out: &mut String, x: f32, scratch: &mut String) {
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    if !x.is_finite() {
        // Vectors never hold these; print them the way float4out does all the same.
        out.push_str(if x.is_nan() {
            "NaN"
        } else if x > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    shortest_digits(x.abs(), scratch);
    let (mantissa, exp) = scratch.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    let mut digits = [0u8; 16];
    let mut n = 0;
    for b in mantissa.bytes().filter(|b| b.is_ascii_digit()) {
        digits[n] = b;
        n += 1;
    }
    // Exact formatting may leave trailing zeros ("1.500e0"); they are not significant.
    while n > 1 && digits[n - 1] == b'0' {
        n -= 1;
    }
    let digits = &digits[..n];
    let push = |out: &mut String, d: &[u8]| {
        for &b in d {
            out.push(b as char);
        }
    };
    if (-4..6).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                push(out, digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
            } else {
                push(out, &digits[..int_len]);
                out.push('.');
                push(out, &digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            push(out, digits);
        }
    } else {
        push(out, &digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            push(out, &digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// Formats a vector in its text form.
pub fn format(v: &[f32]) -> String {
    let mut out = String::with_capacity(2 + v.len() * 12);
    let mut scratch = String::with_capacity(24);
    out.push('[');
    for (i, &x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_element(&mut out, x, &mut scratch);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn el(x: f32) -> String {
        let mut s = String::new();
        write_element(&mut s, x, &mut String::new());
        s
    }

    #[test]
    fn parses_plain_and_spaced_forms() {
        assert_eq!(parse("[1,2,3]").unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(parse("  [ 1 , -2.5 ,+3e2 ]  ").unwrap(), vec![1.0, -2.5, 300.0]);
        assert_eq!(parse("[.5,5.,1E-3]").unwrap(), vec![0.5, 5.0, 0.001]);
        assert_eq!(parse("[1e-50]").unwrap(), vec![0.0]);
    }

    #[test]
    fn refuses_malformed_text() {
        let syntax = |s: &str| matches!(parse(s), Err(ParseError::Syntax { .. }));
        for bad in [
            "", "1,2", "[1,2", "[1,,2]", "[a]", "[1,2]x", "[1 2]", "[,1]", "[1,]", "[-]", "[.]",
            "[1e]", "[0x10]", "[1]]", "[[1]]", "[1;2]",
        ] {
            assert!(syntax(bad), "{bad:?} gave {:?}", parse(bad));
        }
        assert_eq!(parse("[]"), Err(ParseError::Empty));
        assert_eq!(parse(" [ ] "), Err(ParseError::Empty));
        assert_eq!(parse("[NaN]"), Err(ParseError::NaN));
        assert_eq!(parse("[1,-nan]"), Err(ParseError::NaN));
        assert_eq!(parse("[Infinity]"), Err(ParseError::Infinite));
        assert_eq!(parse("[-inf]"), Err(ParseError::Infinite));
        assert_eq!(parse("[1e39]"), Err(ParseError::OutOfRange("1e39".into())));
        assert_eq!(
            parse("[-1e99999999999]"),
            Err(ParseError::OutOfRange("-1e99999999999".into()))
        );
    }

    #[test]
    fn dimension_limit() {
        let ok = format!("[{}]", vec!["1"; VECTOR_MAX_DIM].join(","));
        assert_eq!(parse(&ok).unwrap().len(), VECTOR_MAX_DIM);
        let too_many = format!("[{}]", vec!["1"; VECTOR_MAX_DIM + 1].join(","));
        assert_eq!(parse(&too_many), Err(ParseError::TooManyDimensions));
    }

    #[test]
    fn elements_print_like_float4out() {
        assert_eq!(el(1.0), "1");
        assert_eq!(el(-0.0), "-0");
        assert_eq!(el(0.1), "0.1");
        assert_eq!(el(1.5), "1.5");
        assert_eq!(el(100000.0), "100000");
        assert_eq!(el(123456.7), "123456.7");
        assert_eq!(el(1000000.0), "1e+06");
        assert_eq!(el(1234567.0), "1.234567e+06");
        assert_eq!(el(0.0001), "0.0001");
        assert_eq!(el(0.00012), "0.00012");
        assert_eq!(el(0.00001), "1e-05");
        assert_eq!(el(-3.0e-7), "-3e-07");
        assert_eq!(el(f32::MAX), "3.4028235e+38");
        assert_eq!(el(f32::MIN_POSITIVE), "1.1754944e-38");
        assert_eq!(format(&[1.0, 2.5, -3.0]), "[1,2.5,-3]");
        // Exact ties round to an even last digit (19781.0625 is exactly between two 8-digit
        // decimals).
        assert_eq!(el(19781.0625), "19781.062");
        // The 7-digit decimal 2.747984e9 lies exactly on the edge of the float's rounding
        // interval: PostgreSQL prints 8 digits instead.
        assert_eq!(el(-2747983872.0), "-2.7479839e+09");
        assert_eq!(el(50816768.0), "5.0816768e+07");
        assert_eq!(el(1e-45), "1e-45");
    }

    proptest! {
        #[test]
        fn text_round_trips(bits in proptest::collection::vec(any::<u32>(), 1..64)) {
            let v: Vec<f32> = bits.into_iter().map(f32::from_bits).filter(|x| x.is_finite()).collect();
            prop_assume!(!v.is_empty());
            let back = parse(&format(&v)).unwrap();
            prop_assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
