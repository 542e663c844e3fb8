//! Cost estimates: cheap for `ORDER BY <distance> LIMIT k` within one partition, never chosen
//! for a scan without an ORDER BY it could serve.
//!
//! The work of a scan is the elements it reads: all of them for a partition of at most
//! [`FLAT_LIMIT`] elements, about `ef_search * m` (a little more in large graphs) for a graph
//! search. An index with a key column scanned without `key = ...` searches every partition, which
//! is costed as reading the whole index, so the planner sorts instead unless the table is small.

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

    // m and dimensions from the index definition; the planner holds a lock on the index.
    let rel = pg_sys::RelationIdGetRelation((*info).indexoid);
    let (m, dims) = if rel.is_null() {
        (options::M_DEFAULT as f64, 128.0)
    } else {
        let natts = (*(*rel).rd_index).indnatts as usize;
        let typmod = (*super::attribute((*rel).rd_att, natts - 1)).atttypmod.max(1);
        let m = options::raw_options(rel).0;
        pg_sys::RelationClose(rel);
        (m as f64, typmod as f64)
    };

    // Elements in the partitions the scan reads.
    let partition = if keyed && has_key_qual { costs.numIndexTuples.max(1.0) } else { index_tuples };
    let ef = crate::guc::HNSW_EF_SEARCH.get().max(1) as f64;
    let read = if !keyed || has_key_qual {
        if partition <= FLAT_LIMIT as f64 {
            partition
        } else {
            (ef * m * (1.0 + partition.log10() / 4.0)).min(partition)
        }
    } else {
        index_tuples
    };
    let per_element = pg_sys::cpu_index_tuple_cost + pg_sys::cpu_operator_cost * (dims / 16.0).max(1.0);
    let elements_per_page = (8000.0 / (8.0 + 4.0 * dims + 6.0 * 2.0 * m)).max(1.0);
    let page_cost = if partition <= FLAT_LIMIT as f64 { pg_sys::seq_page_cost } else { pg_sys::random_page_cost };
    let read_pages = (read / elements_per_page).max(1.0);
    // All the work happens before the first row comes out.
    *startup = read * per_element + read_pages * page_cost;
    *total = *startup + costs.indexTotalCost * 0.01;
    *selectivity = costs.indexSelectivity;
    *correlation = 0.0;
    *pages = read_pages;
}
