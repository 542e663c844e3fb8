//! The `sutra.vector` type: its on-disk layout and the SQL functions over it.
//!
//! A vector is a varlena with the layout pgvector uses, so the binary send/receive form is the
//! same and pgvector's client adapters work unchanged:
//!
//! ```text
//! int32 vl_len_   varlena header
//! int16 dim       number of elements, 1..=16000
//! int16 unused    always 0
//! float4 x[dim]
//! ```
//!
//! The split: [`io`] reads and writes the text and binary forms and the `vector(n)` modifier,
//! [`ops`] has the distances and arithmetic, [`cast`] the array casts, [`aggregate`] `avg` and
//! `sum`, [`compare`] the btree ordering.

pub mod aggregate;
pub mod cast;
pub mod compare;
pub mod io;
pub mod ops;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use sutra_core::vector_text::ElementError;
use sutra_core::VECTOR_MAX_DIM;

use crate::error::{raise, raise_detail};

/// Bytes before the first element: varlena header, dim, unused.
const HEADER_BYTES: usize = 8;

#[repr(C)]
struct Header {
    vl_len: i32,
    dim: i16,
    unused: i16,
}

/// The elements of vector argument `n`, detoasted.
///
/// # Safety
/// `fcinfo` is the call's own and argument `n` is a non-null `sutra.vector`. The slice lives in
/// the current memory context: do not keep it past the function call.
pub unsafe fn arg<'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> &'a [f32] {
    from_datum(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n))
}

/// The elements of a vector datum, detoasted.
///
/// # Safety
/// `datum` is a non-null `sutra.vector`; the slice lives as long as the current memory context.
pub unsafe fn from_datum<'a>(datum: pg_sys::Datum) -> &'a [f32] {
    // SAFETY: pg_detoast_datum returns an uncompressed, in-line copy with a 4-byte header (or the
    // datum itself when it already is one), aligned for int4 like every varlena of this type.
    let p = pg_sys::pg_detoast_datum(datum.cast_mut_ptr::<pg_sys::varlena>());
    let size = pgrx::varlena::varsize_4b(p);
    let header = &*(p as *const Header);
    let dim = header.dim as isize;
    // A value that does not hold what its header says is corrupt: refuse it instead of reading
    // past its end.
    if dim < 1 || size < HEADER_BYTES + 4 * dim as usize {
        raise_detail(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            "invalid vector value",
            format!("The value holds {size} bytes for {dim} dimensions."),
        );
    }
    std::slice::from_raw_parts((p as *const u8).add(HEADER_BYTES) as *const f32, dim as usize)
}

/// A new vector in the current memory context, zero-filled, ready to be filled and returned.
pub struct NewVector {
    ptr: *mut Header,
    dim: usize,
}

impl NewVector {
    /// Allocates a vector of `dim` elements; `dim` must already be checked against the limits.
    pub fn new(dim: usize) -> Self {
        debug_assert!((1..=VECTOR_MAX_DIM).contains(&dim));
        let size = HEADER_BYTES + 4 * dim;
        // SAFETY: palloc0 returns `size` zeroed bytes (MAXALIGNed) or raises an ERROR; the header
        // is written within them.
        unsafe {
            let ptr = pg_sys::palloc0(size) as *mut Header;
            pgrx::varlena::set_varsize_4b(ptr as *mut pg_sys::varlena, size as i32);
            (*ptr).dim = dim as i16;
            NewVector { ptr, dim }
        }
    }

    /// A new vector holding `values`.
    pub fn from_slice(values: &[f32]) -> Self {
        let mut v = Self::new(values.len());
        v.elements_mut().copy_from_slice(values);
        v
    }

    pub fn elements_mut(&mut self) -> &mut [f32] {
        // SAFETY: the allocation holds `dim` f32 after the 8-byte header, 4-byte aligned.
        unsafe { std::slice::from_raw_parts_mut((self.ptr as *mut u8).add(HEADER_BYTES) as *mut f32, self.dim) }
    }

    pub fn into_datum(self) -> pg_sys::Datum {
        pg_sys::Datum::from(self.ptr)
    }
}

/// Refuses a dimension count outside `1..=16000`.
pub fn check_dims(dim: usize) {
    if dim < 1 {
        raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, "vector must have at least 1 dimension");
    }
    if dim > VECTOR_MAX_DIM {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("vector cannot have more than {VECTOR_MAX_DIM} dimensions"),
        );
    }
}

/// Refuses a NaN or infinite element.
pub fn check_element(x: f32) {
    if let Err(e) = sutra_core::vector_text::check_element(x) {
        raise_element_error(e);
    }
}

pub fn raise_element_error(e: ElementError) -> ! {
    match e {
        ElementError::NaN => raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, "NaN not allowed in vector"),
        ElementError::Infinite => raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, "infinite value not allowed in vector"),
    }
}

/// Refuses a vector whose dimensions differ from the column's `vector(n)` modifier.
pub fn check_typmod(dim: usize, typmod: i32) {
    if typmod >= 0 && typmod as usize != dim {
        raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, format!("expected {typmod} dimensions, not {dim}"));
    }
}

/// Refuses two operands of different dimensions.
pub fn check_same_dims(a: &[f32], b: &[f32]) {
    if a.len() != b.len() {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("different vector dimensions {} and {}", a.len(), b.len()),
        );
    }
}
