//! Cost estimates: cheap for `ORDER BY <distance> LIMIT k` within one partition, never chosen
//! for a scan without an ORDER BY it could serve.
//!
//! The work of a scan is the elements it reads: all of them for a partition of at most
//! [`FLAT_LIMIT`] elements, about `ef_search * m` (a little more in large graphs) for a graph
//! search. Each element read costs [`per_element`]: a buffer access and a distance, calibrated
//! against a sequential scan and sort of the same table by `bench/hnsw_cost.sh` (cached data; one
//! cost unit was about 2 µs of either plan). Pages cost I/O only for the share of the index that
//! does not fit in `effective_cache_size`. An index with a key column scanned without
//! `key = ...` searches every partition: [`PER_PARTITION`] each plus its elements, so across
//! many tenants the planner sorts instead.
use pgrx::pg_sys;

use super::options;
use super::FLAT_LIMIT;

#[pgrx::pg_guard]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C-unwind" fn amcostestimate(
    root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    loop_count: f64,
    startup: *mut pg_sys::Cost,
    total: *mut pg_sys::Cost,
    selectivity: *mut pg_sys::Selectivity,
    correlation: *mut f64,
    pages: *mut f64,
) {
    // SAFETY: the planner's own structures for this path, valid during the call.
    if (*path).indexorderbys.is_null() {
        *startup = f64::INFINITY;
        *total = f64::INFINITY;
        *selectivity = 0.0;
        *correlation = 0.0;
        *pages = 0.0;
        return;
    }
    let mut costs = pg_sys::GenericCosts::default();
    pg_sys::genericcostestimate(root, path, loop_count, &mut costs);
    let info = (*path).indexinfo;
    let index_tuples = (*info).tuples.max(1.0);
    let keyed = (*info).nkeycolumns == 2;
    let has_key_qual = !(*path).indexclauses.is_null();

    let keyless = keyed && !has_key_qual;
    // m and dimensions from the index definition, and for a search of every partition their
    // number from the metapage; the planner holds a lock on the index.
    let rel = pg_sys::RelationIdGetRelation((*info).indexoid);
    let (m, dims, partitions) = if rel.is_null() {
        (options::M_DEFAULT as f64, 128.0, 1.0)
    } else {
        let natts = (*(*rel).rd_index).indnatts as usize;
        let typmod = (*super::attribute((*rel).rd_att, natts - 1)).atttypmod.max(1);
        let m = options::raw_options(rel).0;
        let partitions = if keyless { super::pages::read_meta(rel).partitions as f64 } else { 1.0 };
        pg_sys::RelationClose(rel);
        (m as f64, typmod as f64, partitions.max(1.0))
    };

    let ef = crate::guc::HNSW_EF_SEARCH.get().max(1) as f64;
    // The elements of each partition the scan reads: every partition, of the average size, or one.
    let partition = if keyless {
        index_tuples / partitions
    } else if has_key_qual {
        costs.numIndexTuples.max(1.0)
    } else {
        index_tuples
    };
    let read = partitions * elements_read(partition, ef, m);
    let per_element = per_element(dims);
    let elements_per_page = (8000.0 / (8.0 + 4.0 * dims + 6.0 * 2.0 * m)).max(1.0);
    let read_pages = (read / elements_per_page).max(1.0);
    let index_pages = ((*info).pages as f64).max(1.0);
    let cache_pages = pg_sys::effective_cache_size as f64;
    let uncached = if index_pages > cache_pages { 1.0 - cache_pages / index_pages } else { 0.0 };
    let page_cost = if partition <= FLAT_LIMIT as f64 { pg_sys::seq_page_cost } else { pg_sys::random_page_cost };
    // All the work of the first round happens before its first row comes out; all rows of the
    // partitions take reading them whole.
    *startup = read * per_element + partitions * PER_PARTITION + read_pages * uncached * page_cost;
    *total = *startup + (partitions * partition - read).max(0.0) * per_element + costs.indexTotalCost * 0.01;
    if keyless {
        super::explain::note_keyless((*info).indexoid, partitions, *startup);
    }
    *selectivity = costs.indexSelectivity;
    *correlation = 0.0;
    *pages = read_pages;
}

/// What reading one element costs: its buffer access and its distance (calibrated, see the
/// module comment: 0.06 at 128 dimensions, 0.07 at 384).
fn per_element(dims: f64) -> f64 {
    // SAFETY: plain planner settings.
    unsafe { 11.0 * pg_sys::cpu_index_tuple_cost + pg_sys::cpu_operator_cost * dims / 64.0 }
}

/// The cost of visiting one partition beyond its elements: its directory entry, its first page
/// and the batch it adds to (measured: about 7 µs each across 50,000 partitions).
const PER_PARTITION: f64 = 3.5;

/// The elements a search of a partition of `size` elements reads.
fn elements_read(size: f64, ef: f64, m: f64) -> f64 {
    if size <= FLAT_LIMIT as f64 {
        size
    } else {
        (ef * m * (1.0 + size.log10() / 4.0)).min(size)
    }
}
