//! The btree ordering of vectors: element by element, then the shorter vector first. It gives
//! `=`, `<>`, `<`, `<=`, `>`, `>=`, ORDER BY, DISTINCT, GROUP BY and unique indexes.

use std::cmp::Ordering;

use pgrx::pg_sys;

use super::arg;
use crate::fmgr::pg_function;

fn compare(a: &[f32], b: &[f32]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        // Vectors hold no NaN, so the partial order is total here.
        match x.partial_cmp(y).unwrap_or(Ordering::Equal) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

/// The ordering of the two vector arguments.
///
/// # Safety
/// Both arguments are non-null vectors.
unsafe fn args_cmp(fcinfo: pg_sys::FunctionCallInfo) -> Ordering {
    compare(arg(fcinfo, 0), arg(fcinfo, 1))
}

pg_function! {
    /// `vector_cmp(vector, vector)`: the btree support function.
    fn vector_cmp(fcinfo) { pg_sys::Datum::from(args_cmp(fcinfo) as i32) }
}

/// Declares the boolean comparison functions behind `<`, `<=`, `=`, `<>`, `>=`, `>`.
macro_rules! comparisons {
    ($($name:ident => $test:ident),* $(,)?) => {
        $(
            pg_function! {
                fn $name(fcinfo) { pg_sys::Datum::from(args_cmp(fcinfo).$test()) }
            }
        )*
    };
}

comparisons! {
    vector_lt => is_lt,
    vector_le => is_le,
    vector_eq => is_eq,
    vector_ne => is_ne,
    vector_ge => is_ge,
    vector_gt => is_gt,
}
