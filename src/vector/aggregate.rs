//! `avg(vector)`: a `double precision[]` state `{count, sum_1, ..., sum_n}`, combinable for
//! parallel aggregation. (`sum(vector)` needs no code of its own: it folds with `vector_add`.)

use pgrx::datum::{Array, FromDatum, IntoDatum};
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use sutra_core::arith;

use super::{arg, check_element, NewVector};
use crate::error::raise;
use crate::fmgr::pg_function;

/// The state argument `n` as a vector of f64.
///
/// # Safety
/// Argument `n` is a non-null `double precision[]` without nulls.
unsafe fn state(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Vec<f64> {
    let datum = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n);
    let arr = Array::<f64>::from_datum(datum, false).expect("state is not null");
    arr.iter_deny_null().collect()
}

fn mismatch(a: usize, b: usize) -> ! {
    raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, format!("different vector dimensions {a} and {b}"))
}

fn state_datum(s: Vec<f64>) -> pg_sys::Datum {
    s.into_datum().expect("an array is never null")
}

pg_function! {
    /// `vector_accum(double precision[], vector)`: adds one vector to the state.
    fn vector_accum(fcinfo) {
        let mut s = state(fcinfo, 0);
        let v = arg(fcinfo, 1);
        if s.len() == 1 {
            s.resize(v.len() + 1, 0.0);
        } else if s.len() != v.len() + 1 {
            mismatch(s.len() - 1, v.len());
        }
        s[0] += 1.0;
        arith::accumulate(&mut s[1..], v);
        state_datum(s)
    }
}

pg_function! {
    /// `vector_combine(double precision[], double precision[])`: merges two partial states.
    fn vector_combine(fcinfo) {
        let a = state(fcinfo, 0);
        let b = state(fcinfo, 1);
        if a.len() == 1 {
            return state_datum(b);
        }
        if b.len() == 1 {
            return state_datum(a);
        }
        if a.len() != b.len() {
            mismatch(a.len() - 1, b.len() - 1);
        }
        state_datum(a.iter().zip(&b).map(|(x, y)| x + y).collect())
    }
}

pg_function! {
    /// `vector_avg(double precision[])`: the element-wise mean, or NULL for no rows.
    fn vector_avg(fcinfo) {
        let s = state(fcinfo, 0);
        if s.len() == 1 || s[0] == 0.0 {
            return pgrx::fcinfo::pg_return_null(fcinfo);
        }
        let mut v = NewVector::new(s.len() - 1);
        for (x, sum) in v.elements_mut().iter_mut().zip(&s[1..]) {
            *x = (sum / s[0]) as f32;
            check_element(*x);
        }
        v.into_datum()
    }
}
