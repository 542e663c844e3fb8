//! Reading the text form of a vector: `[1,2.5,-3e-07]`, the same as pgvector's.
//!
//! Input accepts whitespace around elements and brackets, and decimal numbers with an optional
//! sign, fraction and exponent. (Output is PostgreSQL's own float4 formatting, called by the
//! extension, so a vector prints exactly as a `real[]` does.)

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
        return Err(ParseError::Syntax { detail: Some("Vector contents must start with \"[\".") });
    }
    i = skip_space(s, i + 1);
    if i < s.len() && s[i] == b']' {
        return Err(ParseError::Empty);
    }
    let mut out = Vec::new();
    loop {
        i = skip_space(s, i);
        if i >= s.len() {
            return Err(ParseError::Syntax { detail: Some("Unexpected end of input.") });
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
            None => return Err(ParseError::Syntax { detail: Some("Unexpected end of input.") }),
        }
    }
    if skip_space(s, i) != s.len() {
        return Err(ParseError::Syntax { detail: Some("Junk after closing right brace.") });
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            "", "1,2", "[1,2", "[1,,2]", "[a]", "[1,2]x", "[1 2]", "[,1]", "[1,]", "[-]", "[.]", "[1e]", "[0x10]",
            "[1]]", "[[1]]", "[1;2]",
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
        assert_eq!(parse("[-1e99999999999]"), Err(ParseError::OutOfRange("-1e99999999999".into())));
    }

    proptest! {
        /// Any finite float, written in either notation, reads back bit for bit.
        #[test]
        fn reads_back_exactly(bits in proptest::collection::vec(any::<u32>(), 1..64)) {
            let v: Vec<f32> = bits.into_iter().map(f32::from_bits).filter(|x| x.is_finite()).collect();
            prop_assume!(!v.is_empty());
            let sci: Vec<String> = v.iter().map(|x| format!("{x:e}")).collect();
            let plain: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
            for text in [format!("[{}]", sci.join(",")), format!("[ {} ]", plain.join(" , "))] {
                let back = parse(&text).unwrap();
                prop_assert_eq!(
                    back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn dimension_limit() {
        let ok = format!("[{}]", vec!["1"; VECTOR_MAX_DIM].join(","));
        assert_eq!(parse(&ok).unwrap().len(), VECTOR_MAX_DIM);
        let too_many = format!("[{}]", vec!["1"; VECTOR_MAX_DIM + 1].join(","));
        assert_eq!(parse(&too_many), Err(ParseError::TooManyDimensions));
    }
}
