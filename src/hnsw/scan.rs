//! Index scans: `ORDER BY embedding <op> $q [LIMIT k]`, optionally with `key = $1`.
//!
//! A scan works in rounds. Round one searches each partition it must read with
//! `sutra.hnsw_ef_search` candidates (a partition of at most [`super::FLAT_LIMIT`] elements is
//! read whole, exactly) and hands the results out nearest first. When the executor wants more
//! rows than that (other filters or heap visibility threw some away), the next round searches
//! again with twice the candidates and hands out only what it had not yet. A partition whose
//! graph search comes back short (elements not reachable, for example right after a VACUUM) is
//! then read exactly, so every row is found. `sutra.hnsw_max_scan_tuples` bounds the elements
//! read across rounds.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::collections::VecDeque;
use sutra_core::hnsw::{search, Scored};

use super::graph::{DiskGraph, IdSet};
use super::pages::{all_partitions, find_partition, read_meta, Key, KeyKind, Meta, Partition, Tid};
use super::{key_of_value, FLAT_LIMIT};
use crate::error::raise;

enum Filter {
    /// Every partition.
    All,
    /// No row can match (`key = NULL`, or two different keys).
    Nothing,
    One(Key),
}

struct PartScan {
    part: Partition,
    done: bool,
    exact_next: bool,
}

struct ScanState {
    index: pg_sys::Relation,
    meta: Meta,
    filter: Filter,
    /// The prepared query vector; `None` without ORDER BY or with a NULL or zero query.
    query: Option<Vec<f32>>,
    ordered: bool,
    parts: Option<Vec<PartScan>>,
    ready: VecDeque<(f64, pg_sys::ItemPointerData)>,
    emitted: IdSet,
    ef: usize,
    reads: usize,
    finished: bool,
}

/// Where the scan state lives: a palloc'd holder whose reset callback frees the state when the
/// scan's memory context goes away, also when the query fails before `amendscan`.
#[repr(C)]
struct Holder {
    cb: pg_sys::MemoryContextCallback,
    state: *mut ScanState,
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn free_holder(arg: *mut std::ffi::c_void) {
    // SAFETY: arg is the Holder registered in ambeginscan, alive as long as its context.
    let h = arg as *mut Holder;
    if !(*h).state.is_null() {
        drop(Box::from_raw((*h).state));
        (*h).state = std::ptr::null_mut();
    }
}

fn state<'a>(scan: pg_sys::IndexScanDesc) -> &'a mut ScanState {
    // SAFETY: opaque is the Holder set in ambeginscan, and its state is freed only by amendscan
    // or the context reset, after which PostgreSQL makes no more calls on this scan.
    unsafe {
        let h = (*scan).opaque as *mut Holder;
        &mut *(*h).state
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
    // The metapage has everything a scan needs (dimensions, metric, key kind); the index
    // cannot be rebuilt while the scan holds its lock, so it is read once.
    let meta = read_meta(index);
    let st = Box::new(ScanState {
        index,
        meta,
        filter: Filter::All,
        query: None,
        ordered: norderbys > 0,
        parts: None,
        ready: VecDeque::new(),
        emitted: IdSet::default(),
        ef: 0,
        reads: 0,
        finished: false,
    });
    // SAFETY: palloc0 in the scan's context; the callback is registered in the same context.
    let h = pg_sys::palloc0(std::mem::size_of::<Holder>()) as *mut Holder;
    (*h).state = Box::into_raw(st);
    (*h).cb.func = Some(free_holder);
    (*h).cb.arg = h as *mut std::ffi::c_void;
    pg_sys::MemoryContextRegisterResetCallback(pg_sys::CurrentMemoryContext, &mut (*h).cb);
    (*scan).opaque = h as *mut std::ffi::c_void;
    if norderbys > 0 {
        (*scan).xs_orderbyvals =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::Datum>() * norderbys as usize) as *mut pg_sys::Datum;
        (*scan).xs_orderbynulls = pg_sys::palloc0(norderbys as usize) as *mut bool;
    }
    scan
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    keys: pg_sys::ScanKey,
    nkeys: i32,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) {
    // SAFETY: keys and orderbys hold nkeys and norderbys entries, copied into the scan
    // descriptor as every access method does.
    if !keys.is_null() && nkeys > 0 {
        std::ptr::copy(keys, (*scan).keyData, nkeys as usize);
    }
    if !orderbys.is_null() && norderbys > 0 {
        std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
    }
    let st = state(scan);
    st.filter = Filter::All;
    let key_kind = st.meta.key_kind();
    for i in 0..(*scan).numberOfKeys as usize {
        let k = &*(*scan).keyData.add(i);
        if key_kind == KeyKind::None || k.sk_attno != 1 {
            continue;
        }
        if k.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
            st.filter = Filter::Nothing;
            break;
        }
        // A value of another type of the key's family (an int2 or int8 against an int4 key, a
        // name against text) is converted to the column's type; one no key can equal matches
        // nothing.
        let Some(bytes) = key_of_value(key_kind, k.sk_argument, k.sk_subtype) else {
            st.filter = Filter::Nothing;
            break;
        };
        let key = Some(bytes);
        st.filter = match &st.filter {
            Filter::One(existing) if *existing != key => Filter::Nothing,
            Filter::Nothing => Filter::Nothing,
            _ => Filter::One(key),
        };
    }
    st.query = None;
    if (*scan).numberOfOrderBys > 0 {
        let o = &*(*scan).orderByData;
        if o.sk_flags & pg_sys::SK_ISNULL as i32 == 0 {
            let v = crate::vector::from_datum(o.sk_argument);
            if v.len() != st.meta.dims as usize {
                raise(
                    PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
                    format!("different vector dimensions {} and {}", st.meta.dims, v.len()),
                );
            }
            st.query = st.meta.space().metric.prepare(v);
            crate::usage::hooks::meter_vector_search();
        }
    }
    st.parts = None;
    st.ready.clear();
    st.emitted.clear();
    st.ef = crate::guc::HNSW_EF_SEARCH.get().max(1) as usize;
    st.reads = 0;
    st.finished = false;
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(scan: pg_sys::IndexScanDesc, _dir: pg_sys::ScanDirection::Type) -> bool {
    let st = state(scan);
    loop {
        if let Some((dist, heap)) = st.ready.pop_front() {
            // SAFETY: the scan descriptor's own fields; the order-by arrays were allocated in
            // ambeginscan when there are order-bys.
            (*scan).xs_heaptid = heap;
            (*scan).xs_recheck = false;
            (*scan).xs_recheckorderby = false;
            if st.ordered {
                let null = st.query.is_none();
                *(*scan).xs_orderbyvals = pg_sys::Datum::from(dist.to_bits());
                *(*scan).xs_orderbynulls = null;
            }
            return true;
        }
        if st.finished {
            return false;
        }
        st.next_round();
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: the Holder of this scan; freeing here and nulling the pointer keeps the context
    // callback from freeing twice.
    free_holder((*scan).opaque);
}

impl ScanState {
    fn load_partitions(&mut self) -> Vec<PartScan> {
        let parts = match &self.filter {
            Filter::Nothing => Vec::new(),
            Filter::One(key) => find_partition(self.index, &self.meta, key).into_iter().collect(),
            Filter::All => all_partitions(self.index, &self.meta),
        };
        parts.into_iter().map(|part| PartScan { part, done: false, exact_next: false }).collect()
    }

    /// Finds the next batch of rows, nearest first, into `ready`.
    fn next_round(&mut self) {
        if self.parts.is_none() {
            self.parts = Some(self.load_partitions());
        }
        let max_reads = crate::guc::HNSW_MAX_SCAN_TUPLES.get().max(1) as usize;
        let ef = self.ef;
        let q = self.query.clone();
        let mut graph = DiskGraph::new(self.index, &self.meta, false);
        let mut batch: Vec<(Scored<Tid>, pg_sys::ItemPointerData)> = Vec::new();
        let parts = self.parts.as_mut().unwrap();
        for ps in parts.iter_mut().filter(|p| !p.done) {
            let count = ps.part.head.count as usize;
            let budget_left = max_reads.saturating_sub(self.reads + graph.reads);
            let exact = match &q {
                None => true,
                Some(_) => count <= FLAT_LIMIT || (ps.exact_next && count <= budget_left.max(FLAT_LIMIT)),
            };
            if exact {
                graph.scan_partition(&ps.part, q.as_deref(), &self.emitted, &mut batch);
                ps.done = true;
                continue;
            }
            let (Some(q), Some((entry, level))) = (q.as_deref(), ps.part.head.entry()) else {
                ps.done = true;
                continue;
            };
            graph.set_owner(ps.part.at);
            let found = search(&mut graph, q, entry, level, ef);
            graph.scan_shared(&ps.part, Some(q), &self.emitted, &mut batch);
            if found.len() < ef.min(count) || ef >= count {
                // The graph gave what it can: read the partition exactly next, or stop.
                if ps.exact_next {
                    ps.done = true;
                }
                ps.exact_next = true;
            }
            for s in found {
                if self.emitted.contains(&s.id.pack()) {
                    continue;
                }
                if let Some(seen) = graph.seen(s.id) {
                    if !seen.deleted {
                        batch.push((s, seen.heap));
                    }
                }
            }
        }
        self.reads += graph.reads;
        batch.sort_by_key(|a| a.0);
        let space = self.meta.space();
        for (s, heap) in batch {
            if self.emitted.insert(s.id.pack()) {
                self.ready.push_back((space.sql_distance(s.dist), heap));
            }
        }
        self.ef = self.ef.saturating_mul(2);
        if parts.iter().all(|p| p.done) || self.reads >= max_reads {
            self.finished = true;
        }
    }
}
