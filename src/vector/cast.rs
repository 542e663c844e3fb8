//! Casts between `sutra.vector` and `real[]`, `double precision[]`, `integer[]`, `numeric[]`.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use super::{arg, check_dims, check_element, check_typmod, NewVector};
use crate::error::raise;
use crate::fmgr::{arg_i32, pg_function};

/// Element type facts needed to take arrays apart and build them.
struct ElementType {
    oid: pg_sys::Oid,
    len: i16,
    byval: bool,
    align: std::ffi::c_char,
}

impl ElementType {
    fn of(oid: pg_sys::Oid) -> Self {
        let (mut len, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
        // SAFETY: looks up a built-in type in the syscache; the out-pointers are live locals.
        unsafe { pg_sys::get_typlenbyvalalign(oid, &mut len, &mut byval, &mut align) };
        ElementType { oid, len, byval, align }
    }
}

fn out_of_range() -> ! {
    raise(PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, "value out of range: overflow")
}

/// A `double precision` value as a vector element: a finite value beyond float4's range is an
/// overflow, not an infinity.
fn from_f64(x: f64) -> f32 {
    let y = x as f32;
    if x.is_finite() && y.is_infinite() {
        out_of_range();
    }
    y
}

pg_function! {
    /// `array_to_vector(integer[] | real[] | double precision[] | numeric[], integer, boolean)`.
    fn array_to_vector(fcinfo) {
        let typmod = arg_i32(fcinfo, 1);
        // SAFETY: argument 0 is a non-null array of one of the four declared element types.
        let arr = pg_sys::pg_detoast_datum(
            pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<pg_sys::varlena>(),
        ) as *mut pg_sys::ArrayType;
        let ndim = (*arr).ndim;
        if ndim > 1 {
            raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, "array must be 1-D");
        }
        let et = ElementType::of((*arr).elemtype);
        let mut elems: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut n: std::ffi::c_int = 0;
        // SAFETY: the array and its element type facts match; the out-pointers are live locals
        // and receive palloc'd arrays of `n` entries.
        pg_sys::deconstruct_array(arr, et.oid, et.len as i32, et.byval, et.align, &mut elems, &mut nulls, &mut n);
        let n = n as usize;
        check_dims(n);
        check_typmod(n, typmod);
        let elems = std::slice::from_raw_parts(elems, n);
        if std::slice::from_raw_parts(nulls, n).iter().any(|&isnull| isnull) {
            raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "array must not contain nulls");
        }
        let mut v = NewVector::new(n);
        for (x, d) in v.elements_mut().iter_mut().zip(elems) {
            *x = match et.oid {
                pg_sys::INT4OID => d.value() as i32 as f32,
                pg_sys::FLOAT4OID => f32::from_bits(d.value() as u32),
                pg_sys::FLOAT8OID => from_f64(f64::from_bits(d.value() as u64)),
                pg_sys::NUMERICOID => {
                    // SAFETY: numeric_float8 takes one non-null numeric and returns a float8
                    // datum (it maps NaN and ±Infinity, and raises for nothing else).
                    let f = pgrx::fcinfo::direct_function_call_as_datum(
                        pg_sys::numeric_float8,
                        &[Some(*d)],
                    )
                    .expect("numeric_float8 never returns null");
                    from_f64(f64::from_bits(f.value() as u64))
                }
                other => raise(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!("cannot cast an array of type {} to vector", other.to_u32()),
                ),
            };
            check_element(*x);
        }
        v.into_datum()
    }
}

/// Builds a one-dimensional array of `elem` from datums.
fn build_array(datums: &mut [pg_sys::Datum], elem: pg_sys::Oid) -> pg_sys::Datum {
    let et = ElementType::of(elem);
    // SAFETY: `datums` holds `len` valid datums of type `elem`; construct_array copies them.
    let arr = unsafe {
        pg_sys::construct_array(datums.as_mut_ptr(), datums.len() as i32, et.oid, et.len as i32, et.byval, et.align)
    };
    pg_sys::Datum::from(arr)
}

pg_function! {
    /// `vector_to_float4(vector, integer, boolean)`: the cast to `real[]`.
    fn vector_to_float4(fcinfo) {
        let mut d: Vec<_> = arg(fcinfo, 0).iter().map(|x| pg_sys::Datum::from(x.to_bits())).collect();
        build_array(&mut d, pg_sys::FLOAT4OID)
    }
}

pg_function! {
    /// `vector_to_float8(vector, integer, boolean)`: the cast to `double precision[]` (exact).
    fn vector_to_float8(fcinfo) {
        let mut d: Vec<_> = arg(fcinfo, 0)
            .iter()
            .map(|&x| pg_sys::Datum::from((x as f64).to_bits()))
            .collect();
        build_array(&mut d, pg_sys::FLOAT8OID)
    }
}

pg_function! {
    /// `vector_to_int4(vector, integer, boolean)`: the cast to `integer[]`, rounding half to
    /// even as the `real` to `integer` cast does.
    fn vector_to_int4(fcinfo) {
        let mut d: Vec<_> = arg(fcinfo, 0)
            .iter()
            .map(|&x| {
                let r = x.round_ties_even();
                // i32::MIN is exactly representable in f32; -(i32::MIN as f32) is 2^31.
                if !(r >= i32::MIN as f32 && r < -(i32::MIN as f32)) {
                    raise(PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, "integer out of range");
                }
                pg_sys::Datum::from(r as i32)
            })
            .collect();
        build_array(&mut d, pg_sys::INT4OID)
    }
}

pg_function! {
    /// `vector_to_numeric(vector, integer, boolean)`: the cast to `numeric[]`, with the digits
    /// the text form shows (as the `real` to `numeric` cast does).
    fn vector_to_numeric(fcinfo) {
        let mut d: Vec<_> = arg(fcinfo, 0)
            .iter()
            .map(|x| {
                // SAFETY: float4_numeric takes one non-null float4 and returns a numeric datum.
                unsafe {
                    pgrx::fcinfo::direct_function_call_as_datum(
                        pg_sys::float4_numeric,
                        &[Some(pg_sys::Datum::from(x.to_bits()))],
                    )
                    .expect("float4_numeric never returns null")
                }
            })
            .collect();
        build_array(&mut d, pg_sys::NUMERICOID)
    }
}
