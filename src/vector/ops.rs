//! Distances, norms and element-wise arithmetic.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use sutra_core::arith::{self, ArithError, Op};
use sutra_core::distance;

use super::{arg, check_same_dims, NewVector};
use crate::error::raise;
use crate::fmgr::pg_function;

/// The two vector arguments of a binary function, checked to have the same dimensions.
///
/// # Safety
/// As [`arg`]: both arguments are non-null vectors.
unsafe fn pair<'a>(fcinfo: pg_sys::FunctionCallInfo) -> (&'a [f32], &'a [f32]) {
    let (a, b) = (arg(fcinfo, 0), arg(fcinfo, 1));
    check_same_dims(a, b);
    (a, b)
}

fn float8(x: f64) -> pg_sys::Datum {
    pg_sys::Datum::from(x.to_bits())
}

pg_function! {
    /// `l2_distance(vector, vector)` and `<->`.
    fn l2_distance(fcinfo) {
        let (a, b) = pair(fcinfo);
        float8(distance::l2_distance(a, b))
    }
}

pg_function! {
    /// `inner_product(vector, vector)`.
    fn inner_product(fcinfo) {
        let (a, b) = pair(fcinfo);
        float8(distance::inner_product(a, b))
    }
}

pg_function! {
    /// `vector_negative_inner_product(vector, vector)` and `<#>`: smaller is closer.
    fn vector_negative_inner_product(fcinfo) {
        let (a, b) = pair(fcinfo);
        float8(-distance::inner_product(a, b))
    }
}

pg_function! {
    /// `cosine_distance(vector, vector)` and `<=>`; NaN when either vector is all zeros.
    fn cosine_distance(fcinfo) {
        let (a, b) = pair(fcinfo);
        float8(distance::cosine_distance(a, b))
    }
}

pg_function! {
    /// `vector_dims(vector)`.
    fn vector_dims(fcinfo) {
        pg_sys::Datum::from(arg(fcinfo, 0).len() as i32)
    }
}

pg_function! {
    /// `vector_norm(vector)`: the Euclidean norm.
    fn vector_norm(fcinfo) {
        float8(distance::norm(arg(fcinfo, 0)))
    }
}

/// Applies an element-wise operator to the two arguments into a new vector.
///
/// # Safety
/// As [`pair`].
unsafe fn elementwise(fcinfo: pg_sys::FunctionCallInfo, op: Op) -> pg_sys::Datum {
    let (a, b) = pair(fcinfo);
    let mut out = NewVector::new(a.len());
    if let Err(e) = arith::apply(op, a, b, out.elements_mut()) {
        let which = match e {
            ArithError::Overflow => "overflow",
            ArithError::Underflow => "underflow",
        };
        raise(PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, format!("value out of range: {which}"));
    }
    out.into_datum()
}

pg_function! {
    /// `vector_add(vector, vector)` and `+`.
    fn vector_add(fcinfo) { elementwise(fcinfo, Op::Add) }
}

pg_function! {
    /// `vector_sub(vector, vector)` and `-`.
    fn vector_sub(fcinfo) { elementwise(fcinfo, Op::Sub) }
}

pg_function! {
    /// `vector_mul(vector, vector)` and `*`: the element-wise product.
    fn vector_mul(fcinfo) { elementwise(fcinfo, Op::Mul) }
}
