//! Building an index: the table's rows go into in-memory graphs, one per partition, within
//! `maintenance_work_mem`; the graphs are then written as pages in one pass. When memory runs
//! out, what was built is written and the remaining rows are inserted one by one into the
//! stored graph.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::collections::HashMap;
use sutra_core::hnsw::{MemGraph, Rng};

use super::pages::{
    add_item, encode_dir, encode_element, init_page, item_room, max_level_fitting, set_next_block, write_empty,
    DirHead, Key, Locked, Meta, Tid, Wal, DIR_HEAD_BYTES, KIND_DIR, KIND_ELEMENTS, KIND_META, META_BLOCK, NO_BLOCK,
    PAGE_ROOM,
};
use super::{index_shape, insert, prepare_vector, IndexShape};
use crate::error::raise;

struct PartBuild {
    key: Key,
    graph: MemGraph,
    heap: Vec<pg_sys::ItemPointerData>,
}

struct BuildState {
    index: pg_sys::Relation,
    shape: IndexShape,
    meta: Meta,
    parts: Vec<PartBuild>,
    by_key: HashMap<Key, usize>,
    rng: Rng,
    memory: usize,
    limit: usize,
    /// Pages are written; further rows go through the on-disk insert.
    written: bool,
    index_tuples: f64,
}

pub fn build(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: called by PostgreSQL for an empty index relation it just created.
    if unsafe { pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM) } != 0 {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "sutra_hnsw index is not empty at build");
    }
    let shape = index_shape(index);
    let meta = Meta::new(shape.dims, shape.m, shape.ef_construction, shape.metric.code(), shape.key_kind, build_id());
    // SAFETY: a global setting, in kilobytes.
    let limit = unsafe { pg_sys::maintenance_work_mem } as usize * 1024;
    let mut state = BuildState {
        index,
        shape,
        meta,
        parts: Vec::new(),
        by_key: HashMap::new(),
        rng: Rng::new(0x5eed_0000 ^ meta.build_id),
        memory: 0,
        limit,
        written: false,
        index_tuples: 0.0,
    };
    // SAFETY: the standard heap scan of an index build; the callback gets this state back.
    let heap_tuples = unsafe {
        pg_sys::table_index_build_scan(
            heap,
            index,
            info,
            true,
            true,
            Some(build_callback),
            &mut state as *mut BuildState as *mut std::ffi::c_void,
            std::ptr::null_mut(),
        )
    };
    if !state.written {
        write_graphs(&mut state);
    }
    // SAFETY: palloc0 of a plain struct PostgreSQL frees with the build's memory context.
    unsafe {
        let r = pg_sys::palloc0(std::mem::size_of::<pg_sys::IndexBuildResult>()) as *mut pg_sys::IndexBuildResult;
        (*r).heap_tuples = heap_tuples;
        (*r).index_tuples = state.index_tuples;
        r
    }
}

/// An empty index in the init fork, for unlogged tables.
pub fn build_empty(index: pg_sys::Relation) {
    let shape = index_shape(index);
    let meta = Meta::new(shape.dims, shape.m, shape.ef_construction, shape.metric.code(), shape.key_kind, build_id());
    write_empty(index, pg_sys::ForkNumber::INIT_FORKNUM, &meta);
}

fn build_id() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: pg_strong_random fills the 8 bytes or returns false.
    if !unsafe { pg_sys::pg_strong_random(b.as_mut_ptr() as *mut std::ffi::c_void, 8) } {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        return t ^ std::process::id() as u64;
    }
    u64::from_ne_bytes(b)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn build_callback(
    _index: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    _alive: bool,
    state: *mut std::ffi::c_void,
) {
    // SAFETY: state is the BuildState passed to table_index_build_scan; values and isnull hold
    // one entry per index column.
    let state = &mut *(state as *mut BuildState);
    let Some((key, v)) = super::row_of(&state.shape, values, isnull) else { return };
    let Some(v) = prepare_vector(&state.shape, v) else { return };
    state.index_tuples += 1.0;
    if state.written {
        insert::insert_vector(state.index, &state.meta, &key, &v, &*tid);
        return;
    }
    let i = match state.by_key.get(&key) {
        Some(&i) => i,
        None => {
            let s = &state.shape;
            let max_level = max_level_fitting(s.dims, s.m).unwrap_or(0);
            state.parts.push(PartBuild {
                key: key.clone(),
                graph: MemGraph::new(sutra_core::hnsw::Space::new(s.metric), s.dims, s.m, s.ef_construction, max_level),
                heap: Vec::new(),
            });
            state.by_key.insert(key.clone(), state.parts.len() - 1);
            state.memory += 256 + key.as_ref().map_or(0, |k| k.len());
            state.parts.len() - 1
        }
    };
    let p = &mut state.parts[i];
    p.graph.push(&v, &mut state.rng);
    p.heap.push(*tid);
    state.memory += MemGraph::element_bytes(state.shape.dims, state.shape.m, 1) + 6;
    if state.memory > state.limit {
        pgrx::notice!(
            "sutra_hnsw graph no longer fits into maintenance_work_mem after {} rows; the rest is inserted one by one, which is slower",
            state.index_tuples as u64
        );
        write_graphs(state);
    }
}

/// Writes the in-memory graphs as the index's pages: metapage, directory, then each partition's
/// element pages. Element ids are laid out first so that links can be written directly.
fn write_graphs(state: &mut BuildState) {
    let index = state.index;
    let (dims, m) = (state.shape.dims, state.shape.m);
    let mut parts = std::mem::take(&mut state.parts);
    state.by_key.clear();
    let threads = build_threads();
    for p in &mut parts {
        // Small graphs are not worth the threads.
        let t = if p.graph.len() < 5_000 { 1 } else { threads };
        // SAFETY: InterruptPending is a flag the signal handlers set; reading it is how
        // PostgreSQL's own CHECK_FOR_INTERRUPTS starts. Only this thread reads it.
        if !p.graph.build(t, || unsafe { pg_sys::InterruptPending != 0 }) {
            pgrx::check_for_interrupts!();
            raise(PgSqlErrorCode::ERRCODE_QUERY_CANCELED, "canceling statement due to user request");
        }
        p.graph.connect_unreachable();
    }
    state.written = true;

    // Directory pages.
    let entry_sizes: Vec<usize> =
        parts.iter().map(|p| DIR_HEAD_BYTES + p.key.as_ref().map_or(0, |k| k.len())).collect();
    let mut dir_pages: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0;
    for (i, &size) in entry_sizes.iter().enumerate() {
        if item_room(size) > PAGE_ROOM {
            raise(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "partition key too long for sutra_hnsw");
        }
        if used + item_room(size) > PAGE_ROOM {
            dir_pages.push(Vec::new());
            used = 0;
        }
        used += item_room(size);
        dir_pages.last_mut().unwrap().push(i);
    }
    let first_element_block = 1 + dir_pages.len() as u32;

    // Element places: each partition starts a page of its own.
    let mut block = first_element_block;
    let mut places: Vec<Vec<Tid>> = Vec::with_capacity(parts.len());
    let mut page_lists: Vec<Vec<(u32, Vec<u32>)>> = Vec::with_capacity(parts.len());
    for p in &parts {
        let mut ids = Vec::with_capacity(p.graph.len());
        let mut pages: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut used = PAGE_ROOM;
        for e in 0..p.graph.len() as u32 {
            let room = item_room(super::pages::element_size(dims, m, p.graph.level(e)));
            if used + room > PAGE_ROOM {
                if !pages.is_empty() {
                    block += 1;
                }
                pages.push((block, Vec::new()));
                used = 0;
            }
            used += room;
            let page = pages.last_mut().unwrap();
            page.1.push(e);
            ids.push(Tid { block, offset: page.1.len() as u16 });
        }
        if !pages.is_empty() {
            block += 1;
        }
        places.push(ids);
        page_lists.push(pages);
    }

    // Metapage and directory.
    let mut meta = state.meta;
    meta.dir_head = 1;
    meta.dir_tail = dir_pages.len() as u32;
    meta.partitions = parts.len() as u32;
    write_page(index, META_BLOCK, KIND_META, NO_BLOCK, |page| super::pages::write_meta_into(page, &meta));
    for (d, entries) in dir_pages.iter().enumerate() {
        let blk = 1 + d as u32;
        let next = if d + 1 < dir_pages.len() { blk + 1 } else { NO_BLOCK };
        write_page(index, blk, KIND_DIR, next, |page| {
            for &i in entries {
                let p = &parts[i];
                let pages = &page_lists[i];
                let mut head = DirHead {
                    head_block: pages.first().map_or(NO_BLOCK, |x| x.0),
                    tail_block: pages.last().map_or(NO_BLOCK, |x| x.0),
                    count: p.graph.len() as u64,
                    ..Default::default()
                };
                head.set_entry(p.graph.entry().map(|(e, l)| (places[i][e as usize], l)));
                add_item(page, &encode_dir(&head, &p.key)).unwrap_or_else(|| {
                    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "directory layout does not fit its page")
                });
            }
        });
    }
    state.meta = meta;

    // Element pages.
    for (i, p) in parts.iter().enumerate() {
        let pages = &page_lists[i];
        for (n, (blk, elements)) in pages.iter().enumerate() {
            let next = pages.get(n + 1).map_or(NO_BLOCK, |x| x.0);
            write_page(index, *blk, KIND_ELEMENTS, next, |page| {
                for &e in elements {
                    let level = p.graph.level(e);
                    let links: Vec<Vec<Tid>> =
                        (0..=level).map(|l| p.graph.links(e, l).map(|n| places[i][n as usize]).collect()).collect();
                    let tuple = encode_element(level, &p.heap[e as usize], p.graph.vector(e), m, &links);
                    let off = add_item(page, &tuple);
                    if off != Some(places[i][e as usize].offset) {
                        raise(
                            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                            "sutra_hnsw element layout does not match its page",
                        );
                    }
                }
            });
        }
    }
}

/// Threads linking a large partition's graph: the leader and the parallel maintenance
/// workers PostgreSQL would allow this build (`max_parallel_maintenance_workers`), at most one
/// per CPU. The threads run plain Rust code only; they never call into PostgreSQL.
fn build_threads() -> usize {
    // SAFETY: a global setting.
    let workers = unsafe { pg_sys::max_parallel_maintenance_workers }.max(0) as usize;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (workers + 1).min(cpus).max(1)
}

/// Adds block `blk` (the next one of the relation), formats it as `kind` with `next`, fills it
/// and WAL-logs it as a full page image.
fn write_page(index: pg_sys::Relation, blk: u32, kind: u16, next: u32, fill: impl FnOnce(pg_sys::Page)) {
    let b = Locked::extend(index, pg_sys::ForkNumber::MAIN_FORKNUM);
    if b.block() != blk {
        drop(b);
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "sutra_hnsw index grew during its build");
    }
    let mut wal = Wal::start(index);
    let page = wal.register(&b, true);
    init_page(page, kind);
    set_next_block(page, next);
    fill(page);
    wal.finish();
}
