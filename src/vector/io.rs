//! Text and binary forms of `sutra.vector`, and its `vector(n)` type modifier.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use sutra_core::vector_binary::{self, DecodeError};
use sutra_core::vector_text::{self, ParseError};
use sutra_core::VECTOR_MAX_DIM;

use super::{arg, check_dims, check_typmod, raise_element_error, NewVector};
use crate::error::{raise, raise_detail};
use crate::fmgr::{arg_i32, palloc_cstring, pg_function};

/// The binary form's errors, as PostgreSQL's receive functions word them.
fn raise_decode_error(e: DecodeError) -> ! {
    match e {
        DecodeError::Truncated => {
            raise(PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION, "insufficient data left in message")
        }
        DecodeError::Dimensions(d) => {
            check_dims(d.max(0) as usize);
            raise(PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION, "invalid binary data for type vector")
        }
        DecodeError::Unused(u) => raise_detail(
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            "invalid binary data for type vector",
            format!("Expected the unused field to be 0, not {u}."),
        ),
        DecodeError::Element(e) => raise_element_error(e),
        DecodeError::TrailingBytes => raise_detail(
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            "invalid binary data for type vector",
            "Bytes follow the last element.",
        ),
    }
}

fn raise_parse_error(e: ParseError, input: &str) -> ! {
    match e {
        ParseError::Syntax { detail } => {
            let message = format!("invalid input syntax for type vector: \"{input}\"");
            match detail {
                Some(d) => raise_detail(PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, message, d),
                None => raise(PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, message),
            }
        }
        ParseError::Empty => check_dims(0),
        ParseError::TooManyDimensions => check_dims(VECTOR_MAX_DIM + 1),
        ParseError::OutOfRange(token) => raise(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("\"{token}\" is out of range for type vector"),
        ),
        ParseError::NaN => raise_element_error(vector_text::ElementError::NaN),
        ParseError::Infinite => raise_element_error(vector_text::ElementError::Infinite),
    }
    unreachable!("each arm raises")
}

pg_function! {
    /// `vector_in(cstring, oid, integer)`: the text form `[1,2,3]`.
    fn vector_in(fcinfo) {
        // SAFETY: argument 0 of a type input function is a NUL-terminated C string.
        let cstr = CStr::from_ptr(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr());
        let typmod = arg_i32(fcinfo, 2);
        let text = match cstr.to_str() {
            Ok(t) => t,
            Err(_) => raise_parse_error(
                ParseError::Syntax { detail: None },
                &cstr.to_string_lossy(),
            ),
        };
        let values = vector_text::parse(text).unwrap_or_else(|e| raise_parse_error(e, text));
        check_typmod(values.len(), typmod);
        NewVector::from_slice(&values).into_datum()
    }
}

extern "C" {
    /// PostgreSQL's float4 formatting (`common/shortest_dec.h`, exported by the server): writes
    /// the fewest digits that read back as `f` into `result` (at most 15 bytes, no NUL) and
    /// returns the length. It cannot fail and raises no error.
    fn float_to_shortest_decimal_bufn(f: f32, result: *mut std::ffi::c_char) -> std::ffi::c_int;
}

/// `FLOAT_SHORTEST_DECIMAL_LEN`: room for any float4 in shortest form plus a NUL.
const FLOAT_SHORTEST_DECIMAL_LEN: usize = 16;

pg_function! {
    /// `vector_out(vector)`: each element exactly as `float4out` prints it.
    fn vector_out(fcinfo) {
        let v = arg(fcinfo, 0);
        // "[" + elements + commas + "]" + NUL
        let mut out = Vec::<u8>::with_capacity(v.len() * FLOAT_SHORTEST_DECIMAL_LEN + 2);
        out.push(b'[');
        for (i, &x) in v.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let at = out.len();
            out.resize(at + FLOAT_SHORTEST_DECIMAL_LEN, 0);
            // SAFETY: the buffer has FLOAT_SHORTEST_DECIMAL_LEN writable bytes at `at`, the most
            // the function writes.
            let n = float_to_shortest_decimal_bufn(x, out[at..].as_mut_ptr() as *mut std::ffi::c_char);
            out.truncate(at + n as usize);
        }
        out.push(b']');
        // SAFETY: the function writes only ASCII digits, signs, '.', 'e' and letters.
        palloc_cstring(std::str::from_utf8_unchecked(&out))
    }
}

pg_function! {
    /// `vector_typmod_in(cstring[])`: the `n` of `vector(n)`.
    fn vector_typmod_in(fcinfo) {
        let arr = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<pg_sys::ArrayType>();
        let mut n: std::ffi::c_int = 0;
        // SAFETY: the argument is the cstring[] PostgreSQL built from the modifier list;
        // ArrayGetIntegerTypmods raises an ERROR itself for anything that is not an integer.
        let mods = pg_sys::ArrayGetIntegerTypmods(arr, &mut n);
        if n != 1 {
            raise_detail(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "invalid type modifier",
                "Type vector takes one modifier, the number of dimensions.",
            );
        }
        let dims = *mods;
        if dims < 1 {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "dimensions for type vector must be at least 1",
            );
        }
        if dims as usize > VECTOR_MAX_DIM {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("dimensions for type vector cannot exceed {VECTOR_MAX_DIM}"),
            );
        }
        pg_sys::Datum::from(dims)
    }
}

pg_function! {
    /// `vector_typmod_out(integer)`: `(n)`, or nothing for an unconstrained vector.
    fn vector_typmod_out(fcinfo) {
        let typmod = arg_i32(fcinfo, 0);
        if typmod >= 0 {
            palloc_cstring(&format!("({typmod})"))
        } else {
            palloc_cstring("")
        }
    }
}

pg_function! {
    /// `vector_recv(internal, oid, integer)`: int16 dim, int16 unused (0), dim x float4, all in
    /// network byte order.
    fn vector_recv(fcinfo) {
        let buf = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<pg_sys::StringInfoData>();
        let typmod = arg_i32(fcinfo, 2);
        // SAFETY: `buf` is the message buffer PostgreSQL passes to a receive function: `len`
        // bytes from `data`, of which the bytes from `cursor` on are this value's. They are read
        // in place, then the cursor is moved past them, as pq_getmsgbytes would.
        let bytes = std::slice::from_raw_parts(
            (*buf).data.add((*buf).cursor as usize) as *const u8,
            ((*buf).len - (*buf).cursor).max(0) as usize,
        );
        // The declared dimensions against the type modifier first, as before any element is read.
        if bytes.len() >= vector_binary::HEADER_LEN {
            let dim = i16::from_be_bytes([bytes[0], bytes[1]]);
            if dim > 0 && dim as usize <= VECTOR_MAX_DIM {
                check_typmod(dim as usize, typmod);
            }
        }
        let values = vector_binary::decode(bytes).unwrap_or_else(|e| raise_decode_error(e));
        (*buf).cursor = (*buf).len;
        check_typmod(values.len(), typmod);
        NewVector::from_slice(&values).into_datum()
    }
}

pg_function! {
    /// `vector_send(vector)`: the binary form read by [`vector_recv`].
    fn vector_send(fcinfo) {
        let bytes = vector_binary::encode(arg(fcinfo, 0));
        pg_sys::Datum::from(pgrx::varlena::rust_byte_slice_to_bytea(&bytes).into_pg())
    }
}

pg_function! {
    /// `vector(vector, integer, boolean)`: the cast that applies a `vector(n)` modifier.
    fn vector_typmod_cast(fcinfo) {
        let v = arg(fcinfo, 0);
        check_typmod(v.len(), arg_i32(fcinfo, 1));
        pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0)
    }
}
