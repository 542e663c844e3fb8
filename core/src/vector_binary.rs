//! The binary form of a vector, the same as pgvector's: int16 dimensions, int16 unused (0), then
//! one float4 per dimension, all in network byte order.
//!
//! [`decode`] takes the whole value as received and makes the checks the text form makes:
//! between 1 and [`VECTOR_MAX_DIM`] dimensions, finite elements, and nothing before or after the
//! elements but the header.

use crate::vector_text::{check_element, ElementError};
use crate::VECTOR_MAX_DIM;

/// Bytes before the elements: dimensions and the unused field.
pub const HEADER_LEN: usize = 4;

/// Why bytes are not the binary form of a vector, in the order the checks are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header and the elements it announces need ("insufficient data left in
    /// message").
    Truncated,
    /// A dimension count below 1 or above [`VECTOR_MAX_DIM`], as sent.
    Dimensions(i16),
    /// The unused field is not 0; holds it as sent.
    Unused(i16),
    /// A NaN or infinite element (the first one).
    Element(ElementError),
    /// Bytes left after the elements the header announces.
    TrailingBytes,
}

impl From<ElementError> for DecodeError {
    fn from(e: ElementError) -> Self {
        DecodeError::Element(e)
    }
}

/// Reads the binary form of a vector: `bytes` is the whole value.
pub fn decode(bytes: &[u8]) -> Result<Vec<f32>, DecodeError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated);
    };
    let dim = i16::from_be_bytes([header[0], header[1]]);
    let unused = i16::from_be_bytes([header[2], header[3]]);
    if dim < 1 || dim as usize > VECTOR_MAX_DIM {
        return Err(DecodeError::Dimensions(dim));
    }
    if unused != 0 {
        return Err(DecodeError::Unused(unused));
    }
    let dim = dim as usize;
    let mut out = Vec::with_capacity(dim);
    let mut chunks = body.chunks_exact(4);
    for _ in 0..dim {
        // Elements are checked as they are read: a NaN before the end of short data is reported
        // as a NaN.
        let x = f32::from_be_bytes(chunks.next().ok_or(DecodeError::Truncated)?.try_into().expect("4 bytes"));
        check_element(x)?;
        out.push(x);
    }
    if body.len() != 4 * dim {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(out)
}

/// Writes the binary form of a vector (at most [`VECTOR_MAX_DIM`] elements).
pub fn encode(v: &[f32]) -> Vec<u8> {
    debug_assert!(v.len() <= VECTOR_MAX_DIM);
    let mut bytes = Vec::with_capacity(HEADER_LEN + 4 * v.len());
    bytes.extend_from_slice(&(v.len() as i16).to_be_bytes());
    bytes.extend_from_slice(&0i16.to_be_bytes());
    for x in v {
        bytes.extend_from_slice(&x.to_bits().to_be_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(dim: i16, unused: i16) -> Vec<u8> {
        [dim.to_be_bytes(), unused.to_be_bytes()].concat()
    }

    #[test]
    fn reads_what_it_writes() {
        let v = [1.0f32, -2.5, 0.0, -0.0, f32::MIN_POSITIVE / 2.0, f32::MAX, f32::MIN];
        let bytes = encode(&v);
        assert_eq!(bytes.len(), 4 + 4 * v.len());
        assert_eq!(&bytes[..8], &[0, 7, 0, 0, 0x3f, 0x80, 0, 0]);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), v.map(f32::to_bits));
    }

    #[test]
    fn dimension_bounds() {
        for dim in [0i16, -1, i16::MIN, VECTOR_MAX_DIM as i16 + 1, i16::MAX] {
            assert_eq!(decode(&header(dim, 0)), Err(DecodeError::Dimensions(dim)), "{dim}");
        }
        let max = encode(&vec![1.0; VECTOR_MAX_DIM]);
        assert_eq!(decode(&max).unwrap().len(), VECTOR_MAX_DIM);
        // The dimensions are checked before the unused field and the elements.
        assert_eq!(decode(&header(0, 5)), Err(DecodeError::Dimensions(0)));
    }

    #[test]
    fn refuses_malformed_bytes() {
        let good = encode(&[1.0, 2.0]);
        for n in 0..good.len() {
            assert_eq!(decode(&good[..n]), Err(DecodeError::Truncated), "{n} bytes");
        }
        assert_eq!(decode(&[good.as_slice(), &[0]].concat()), Err(DecodeError::TrailingBytes));
        assert_eq!(decode(&[good.as_slice(), &[0; 4]].concat()), Err(DecodeError::TrailingBytes));
        let mut unused = good.clone();
        unused[3] = 1;
        assert_eq!(decode(&unused), Err(DecodeError::Unused(1)));
        unused[2] = 0xff;
        assert_eq!(decode(&unused), Err(DecodeError::Unused(-255)));
        for (x, e) in [
            (f32::NAN, ElementError::NaN),
            (-f32::NAN, ElementError::NaN),
            (f32::INFINITY, ElementError::Infinite),
            (f32::NEG_INFINITY, ElementError::Infinite),
        ] {
            assert_eq!(decode(&encode(&[1.0, x])), Err(DecodeError::Element(e)));
            // An element error comes first when it is read before the data runs out.
            let short = encode(&[x, 1.0, 1.0]);
            assert_eq!(decode(&short[..short.len() - 1]), Err(DecodeError::Element(e)));
        }
        // A signalling NaN payload is still a NaN.
        assert_eq!(decode(&[header(1, 0), vec![0x7f, 0x80, 0, 1]].concat()), Err(ElementError::NaN.into()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any finite vector reads back bit for bit, and what is read writes back byte for byte.
        #[test]
        fn round_trip(bits in proptest::collection::vec(any::<u32>(), 1..64)) {
            let v: Vec<f32> = bits.into_iter().map(f32::from_bits).filter(|x| x.is_finite()).collect();
            prop_assume!(!v.is_empty());
            let bytes = encode(&v);
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(encode(&back), bytes);
        }

        /// Arbitrary bytes never panic, and whatever is accepted is exactly a valid encoding.
        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80), dim in 0i16..24) {
            for b in [bytes.clone(), [header(dim, 0), bytes].concat()] {
                if let Ok(v) = decode(&b) {
                    prop_assert!(!v.is_empty() && v.len() <= VECTOR_MAX_DIM);
                    prop_assert!(v.iter().all(|x| x.is_finite()));
                    prop_assert_eq!(encode(&v), b);
                }
            }
        }
    }
}
