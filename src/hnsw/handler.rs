//! The access method's routine and the support functions that tell an operator class's metric
//! (the options `m` and `ef_construction` are in [`super::options`]).

use pgrx::datum::Internal;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgBox};

#[pg_guard]
unsafe extern "C-unwind" fn amvalidate(_opclass: pg_sys::Oid) -> bool {
    // The operator classes are sutra's own, defined with the extension; the shape of an index
    // (key column first, vector last, support function present) is checked at build.
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    super::build::build(heap, index, info)
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    super::build::build_empty(index)
}

#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    _heap: pg_sys::Relation,
    _unique: pg_sys::IndexUniqueCheck::Type,
    _unchanged: bool,
    _info: *mut pg_sys::IndexInfo,
) -> bool {
    let meta = super::pages::read_meta(index);
    let shape = meta.shape();
    // SAFETY: values and isnull hold one entry per index column.
    let Some((key, v)) = super::row_of(&shape, values, isnull) else { return false };
    let Some(v) = super::prepare_vector(&shape, v) else { return false };
    super::insert::insert_vector(index, &meta, &key, &v, &*heap_tid);
    false
}

/// The access method handler.
#[pg_extern(sql = "
CREATE FUNCTION hnsw_handler(internal) RETURNS index_am_handler
    LANGUAGE C STRICT AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn hnsw_handler(_fcinfo: pg_sys::FunctionCallInfo) -> Internal {
    let mut am = unsafe { PgBox::<pg_sys::IndexAmRoutine>::alloc_node(pg_sys::NodeTag::T_IndexAmRoutine) };
    am.amstrategies = 0;
    am.amsupport = 1;
    am.amoptsprocnum = 0;
    am.amcanorder = false;
    am.amcanorderbyop = true;
    am.amcanbackward = false;
    am.amcanunique = false;
    am.amcanmulticol = true;
    am.amoptionalkey = true;
    am.amsearcharray = false;
    am.amsearchnulls = false;
    am.amstorage = false;
    am.amclusterable = false;
    am.ampredlocks = false;
    am.amcanparallel = false;
    am.amcaninclude = false;
    am.amusemaintenanceworkmem = true;
    am.amparallelvacuumoptions = pg_sys::VACUUM_OPTION_NO_PARALLEL as u8;
    am.amkeytype = pg_sys::InvalidOid;

    am.ambuild = Some(ambuild);
    am.ambuildempty = Some(ambuildempty);
    am.aminsert = Some(aminsert);
    am.ambulkdelete = Some(super::vacuum::ambulkdelete);
    am.amvacuumcleanup = Some(super::vacuum::amvacuumcleanup);
    am.amcanreturn = None;
    am.amcostestimate = Some(super::cost::amcostestimate);
    am.amoptions = Some(super::options::amoptions);
    am.amproperty = None;
    am.ambuildphasename = None;
    am.amvalidate = Some(amvalidate);
    am.amadjustmembers = None;
    am.ambeginscan = Some(super::scan::ambeginscan);
    am.amrescan = Some(super::scan::amrescan);
    am.amgettuple = Some(super::scan::amgettuple);
    am.amgetbitmap = None;
    am.amendscan = Some(super::scan::amendscan);
    am.ammarkpos = None;
    am.amrestrpos = None;
    am.amestimateparallelscan = None;
    am.aminitparallelscan = None;
    am.amparallelrescan = None;
    Internal::from(Some(pg_sys::Datum::from(am.into_pg())))
}

/// Support function 1 of `vector_l2_ops`: names the metric.
#[pg_extern(immutable, parallel_safe, name = "_hnsw_l2_support")]
fn hnsw_l2_support(_unused: Internal) -> i32 {
    sutra_core::hnsw::Metric::L2.code() as i32
}

/// Support function 1 of `vector_ip_ops`.
#[pg_extern(immutable, parallel_safe, name = "_hnsw_ip_support")]
fn hnsw_ip_support(_unused: Internal) -> i32 {
    sutra_core::hnsw::Metric::InnerProduct.code() as i32
}

/// Support function 1 of `vector_cosine_ops`.
#[pg_extern(immutable, parallel_safe, name = "_hnsw_cosine_support")]
fn hnsw_cosine_support(_unused: Internal) -> i32 {
    sutra_core::hnsw::Metric::Cosine.code() as i32
}
