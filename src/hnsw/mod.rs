//! `sutra_hnsw`: an HNSW index access method whose graphs are partitioned by a key column.
//!
//! `CREATE INDEX ON docs USING sutra_hnsw (tenant_id, embedding vector_cosine_ops)` gives each
//! tenant its own graph and entry point; a scan with `tenant_id = $1` (from WHERE or from a row
//! level security policy) reads only that tenant's pages. Partitions of at most [`FLAT_LIMIT`]
//! elements are scanned exactly. Without the key column it is an ordinary HNSW index.
//!
//! The split follows the phases of an index access method: [`handler`] (the routine and its
//! options), [`build`], [`insert`], [`scan`], [`vacuum`], [`cost`], with the page format in
//! [`pages`], the stored graph as the core's algorithms see it in [`graph`], and the operator
//! functions `hnsw_check` and `hnsw_stats` in [`check`]. The graph algorithms themselves are
//! Postgres-free, in `sutra_core::hnsw`.

pub mod build;
pub mod check;
pub mod cost;
pub mod explain;
pub mod graph;
pub mod handler;
pub mod insert;
pub mod options;
pub mod pages;
pub mod scan;
pub mod vacuum;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use sutra_core::hnsw::Metric;

use crate::error::{raise, raise_detail, raise_hint};
use pages::{Key, KeyKind};

/// Partitions with at most this many elements are scanned exactly instead of through their
/// graph: reading a few hundred pages in order costs less than a graph search, and is exact.
/// Their links are still kept, so a partition that grows past it needs no rebuild.
pub const FLAT_LIMIT: usize = 1000;

pub fn init() {
    options::init_reloptions();
    explain::init();
}

/// What an index's definition says: its columns, metric and options.
#[derive(Clone, Copy, Debug)]
pub struct IndexShape {
    pub key_kind: KeyKind,
    /// 0-based position of the vector column among the index columns.
    pub vector_column: usize,
    pub dims: usize,
    pub metric: Metric,
    pub m: usize,
    pub ef_construction: usize,
}

/// Reads an index's columns and options, refusing shapes the access method cannot serve.
pub fn index_shape(index: pg_sys::Relation) -> IndexShape {
    // SAFETY: an open index relation; its tuple descriptor has natts attributes.
    let (natts, desc) = unsafe { ((*(*index).rd_index).indnatts as usize, (*index).rd_att) };
    if natts == 0 || natts > 2 {
        raise_hint(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "sutra_hnsw indexes a vector column, optionally after one partition key column",
            "Write USING sutra_hnsw (embedding vector_l2_ops) or USING sutra_hnsw (tenant_id, embedding vector_cosine_ops).",
        );
    }
    let vector_column = natts - 1;
    // SAFETY: attribute numbers within natts; index_getprocid returns InvalidOid when the
    // column's operator class has no support function 1 (a key column).
    let (support, key_support) = unsafe {
        (
            pg_sys::index_getprocid(index, natts as i16, 1),
            if natts == 2 { pg_sys::index_getprocid(index, 1, 1) } else { pg_sys::InvalidOid },
        )
    };
    if support == pg_sys::InvalidOid || key_support != pg_sys::InvalidOid {
        raise_hint(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "the last column of a sutra_hnsw index must be the vector column",
            "Put the partition key first: USING sutra_hnsw (tenant_id, embedding vector_cosine_ops).",
        );
    }
    // SAFETY: the support function takes an ignored internal argument and returns the metric's
    // code as an int4.
    let code = unsafe {
        let f = pg_sys::index_getprocinfo(index, natts as i16, 1);
        pg_sys::FunctionCall1Coll(f, pg_sys::InvalidOid, pg_sys::Datum::from(0usize)).value() as i32
    };
    let metric = Metric::from_code(code as u8)
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "unknown sutra_hnsw distance"));
    let key_kind = if natts == 2 {
        // SAFETY: attribute 0 of the descriptor.
        let typ = unsafe { (*attribute(desc, 0)).atttypid };
        match typ {
            pg_sys::UUIDOID => KeyKind::Uuid,
            pg_sys::INT4OID => KeyKind::Int4,
            pg_sys::INT8OID => KeyKind::Int8,
            pg_sys::TEXTOID | pg_sys::VARCHAROID => KeyKind::Text,
            _ => raise_hint(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "sutra_hnsw partition keys must be uuid, integer, bigint or text",
                "Partition by the tenant column.",
            ),
        }
    } else {
        KeyKind::None
    };
    // SAFETY: the vector attribute of the descriptor.
    let typmod = unsafe { (*attribute(desc, vector_column)).atttypmod };
    if typmod < 1 {
        raise_hint(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "column does not have dimensions",
            "Declare the column with its dimensions, for example vector(1536).",
        );
    }
    let (m, ef_construction) = options::options(index);
    if pages::max_level_fitting(typmod as usize, m).is_none() {
        let mut most = 1;
        while pages::max_level_fitting(most + 1, m).is_some() {
            most += 1;
        }
        raise_detail(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("vectors of {typmod} dimensions do not fit a sutra_hnsw index page with m = {m}"),
            format!("At m = {m}, sutra_hnsw indexes at most {most} dimensions."),
        );
    }
    IndexShape { key_kind, vector_column, dims: typmod as usize, metric, m, ef_construction }
}

/// Attribute `i` (0-based) of a tuple descriptor.
///
/// # Safety
/// `desc` is a valid tuple descriptor with more than `i` attributes.
pub unsafe fn attribute(desc: pg_sys::TupleDesc, i: usize) -> *const pg_sys::FormData_pg_attribute {
    (*desc).attrs.as_ptr().add(i)
}

/// The partition key a scan condition `key = value` asks for, where `value` is of type `subtype`
/// (the right-hand type of the operator of the key's operator family; `InvalidOid` for the
/// column's own type): converted to the column's type, or `None` when no value of the column's
/// type can equal it (an int8 beyond the int4 range against an int4 column).
///
/// # Safety
/// `datum` is a non-null value of type `subtype` (or of the column's type).
pub unsafe fn key_of_value(kind: KeyKind, datum: pg_sys::Datum, subtype: pg_sys::Oid) -> Option<Vec<u8>> {
    let wide = |d: pg_sys::Datum| -> i64 {
        match subtype {
            pg_sys::INT2OID => d.value() as i16 as i64,
            pg_sys::INT4OID => d.value() as i32 as i64,
            _ => d.value() as i64,
        }
    };
    match (kind, subtype) {
        (KeyKind::Int4, pg_sys::INT2OID | pg_sys::INT8OID) => {
            i32::try_from(wide(datum)).ok().map(|v| v.to_le_bytes().to_vec())
        }
        (KeyKind::Int8, pg_sys::INT2OID | pg_sys::INT4OID) => Some(wide(datum).to_le_bytes().to_vec()),
        (KeyKind::Text, pg_sys::NAMEOID) => {
            // A name is a fixed NUL-padded field.
            Some(std::ffi::CStr::from_ptr(datum.cast_mut_ptr::<std::ffi::c_char>()).to_bytes().to_vec())
        }
        _ => Some(key_of(kind, datum)),
    }
}

/// The partition key of a datum of the key column.
///
/// # Safety
/// `datum` is a non-null value of the type `kind` stands for.
pub unsafe fn key_of(kind: KeyKind, datum: pg_sys::Datum) -> Vec<u8> {
    match kind {
        KeyKind::None => Vec::new(),
        KeyKind::Uuid => std::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), 16).to_vec(),
        KeyKind::Int4 => (datum.value() as i32).to_le_bytes().to_vec(),
        KeyKind::Int8 => (datum.value() as i64).to_le_bytes().to_vec(),
        KeyKind::Text => {
            let p = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            pgrx::varlena::varlena_to_byte_slice(p).to_vec()
        }
    }
}

/// The key and vector of an index row, or `None` when the vector is NULL (not indexed).
///
/// # Safety
/// `values` and `isnull` hold one entry per index column of an index of `shape`.
pub unsafe fn row_of<'a>(
    shape: &IndexShape,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
) -> Option<(Key, &'a [f32])> {
    let vc = shape.vector_column;
    if *isnull.add(vc) {
        return None;
    }
    let key = if shape.key_kind == KeyKind::None {
        Some(Vec::new())
    } else if *isnull {
        None
    } else {
        Some(key_of(shape.key_kind, *values))
    };
    Some((key, crate::vector::from_datum(*values.add(vc))))
}

/// Checks a vector against the index and puts it in its stored form; `None` for a vector the
/// metric cannot place (a zero vector under cosine), which is then not indexed.
pub fn prepare_vector(shape: &IndexShape, v: &[f32]) -> Option<Vec<f32>> {
    if v.len() != shape.dims {
        raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, format!("expected {} dimensions, not {}", shape.dims, v.len()));
    }
    shape.metric.prepare(v)
}
