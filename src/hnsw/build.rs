//! Building an index: the table's rows go into in-memory graphs, one per partition, within
//! `maintenance_work_mem`; the graphs are then written as pages in one pass. When memory runs
//! out, what was built is written and the remaining rows are inserted one by one into the
//! stored graph.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::collections::HashMap;
use sutra_core::hnsw::{MemGraph, Rng};

use sutra_core::hnsw_tuple::compact_m;

use super::pages::{
    add_item, compact_base_room, encode_compact_element, encode_dir, encode_element, fits_shared, init_page, item_room,
    max_level_fitting, set_next_block, shared_item, write_empty, DirHead, Key, Locked, Meta, Tid, Wal, DIR_HEAD_BYTES,
    KIND_DIR, KIND_ELEMENTS, KIND_META, KIND_SHARED, META_BLOCK, NO_BLOCK, OWNER_BYTES, PAGE_ROOM, SHARED_RESERVE,
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
    // Each partition's directory entry: the owner tag of its elements on shared pages.
    let mut owners = vec![Tid { block: 0, offset: 0 }; parts.len()];
    for (d, entries) in dir_pages.iter().enumerate() {
        for (j, &i) in entries.iter().enumerate() {
            owners[i] = Tid { block: 1 + d as u32, offset: j as u16 + 1 };
        }
    }

    // Element places, page by page in block order: a small partition's elements together on a
    // shared page (the current one while they fit, else a new one), any other partition on pages
    // of its own.
    enum Layout {
        Own { part: usize, elements: Vec<u32>, next: u32 },
        Shared { elements: Vec<(usize, u32)>, used: usize },
    }
    let mut layout: Vec<Layout> = Vec::new();
    let mut current_shared: Option<usize> = None;
    let mut places: Vec<Vec<Tid>> = Vec::with_capacity(parts.len());
    let mut heads: Vec<(u32, u32, u32)> = Vec::with_capacity(parts.len());
    let block_of = |n: usize| first_element_block + n as u32;
    for (i, p) in parts.iter().enumerate() {
        let rooms: Vec<usize> = (0..p.graph.len() as u32)
            .map(|e| item_room(super::pages::element_size(dims, m, p.graph.level(e))))
            .collect();
        // On a shared page its elements are compact, after an owner tag.
        let shared_room: usize = (0..p.graph.len() as u32)
            .map(|e| item_room(OWNER_BYTES + super::pages::element_size(dims, compact_m(m), p.graph.level(e))))
            .sum();
        // As on insert, a partition with fewer than SHARED_RESERVE elements keeps room for the rest.
        let promised = shared_room + SHARED_RESERVE.saturating_sub(rooms.len()) * compact_base_room(dims, m);
        let mut ids = Vec::with_capacity(p.graph.len());
        if state.meta.shares_pages() && !rooms.is_empty() && fits_shared(1, shared_room) {
            let fits_current = current_shared
                .is_some_and(|n| matches!(&layout[n], Layout::Shared { used, .. } if used + promised <= PAGE_ROOM));
            if !fits_current {
                layout.push(Layout::Shared { elements: Vec::new(), used: 0 });
                current_shared = Some(layout.len() - 1);
            }
            let n = current_shared.expect("set above");
            let Layout::Shared { elements, used } = &mut layout[n] else { unreachable!("a shared page") };
            for e in 0..p.graph.len() as u32 {
                elements.push((i, e));
                ids.push(Tid { block: block_of(n), offset: elements.len() as u16 });
            }
            *used += promised;
            heads.push((NO_BLOCK, NO_BLOCK, block_of(n)));
        } else {
            let mut first = None;
            let mut used = PAGE_ROOM;
            for (e, &room) in rooms.iter().enumerate() {
                if used + room > PAGE_ROOM {
                    let following = block_of(layout.len());
                    if let Some(Layout::Own { next, .. }) = layout.last_mut().filter(|_| first.is_some()) {
                        *next = following;
                    }
                    layout.push(Layout::Own { part: i, elements: Vec::new(), next: NO_BLOCK });
                    first.get_or_insert(layout.len() - 1);
                    used = 0;
                }
                used += room;
                let n = layout.len() - 1;
                let Layout::Own { elements, .. } = &mut layout[n] else { unreachable!("an own page") };
                elements.push(e as u32);
                ids.push(Tid { block: block_of(n), offset: elements.len() as u16 });
            }
            heads.push(match first {
                Some(f) => (block_of(f), block_of(layout.len() - 1), 0),
                None => (NO_BLOCK, NO_BLOCK, 0),
            });
        }
        places.push(ids);
    }

    // Metapage and directory.
    let mut meta = state.meta;
    meta.dir_head = 1;
    meta.dir_tail = dir_pages.len() as u32;
    meta.partitions = parts.len() as u32;
    meta.shared_tail = current_shared.map_or(0, block_of);
    write_page(index, META_BLOCK, KIND_META, NO_BLOCK, |page| super::pages::write_meta_into(page, &meta));
    for (d, entries) in dir_pages.iter().enumerate() {
        let blk = 1 + d as u32;
        let next = if d + 1 < dir_pages.len() { blk + 1 } else { NO_BLOCK };
        write_page(index, blk, KIND_DIR, next, |page| {
            for &i in entries {
                let p = &parts[i];
                let (head_block, tail_block, shared_block) = heads[i];
                let mut head =
                    DirHead { head_block, tail_block, shared_block, count: p.graph.len() as u64, ..Default::default() };
                head.set_entry(p.graph.entry().map(|(e, l)| (places[i][e as usize], l)));
                add_item(page, &encode_dir(&head, &p.key)).unwrap_or_else(|| {
                    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "directory layout does not fit its page")
                });
            }
        });
    }
    state.meta = meta;

    // Element pages, in block order.
    let tuple = |i: usize, e: u32, compact: bool| {
        let p = &parts[i];
        let level = p.graph.level(e);
        let links: Vec<Vec<Tid>> =
            (0..=level).map(|l| p.graph.links(e, l).map(|n| places[i][n as usize]).collect()).collect();
        if compact {
            encode_compact_element(level, &p.heap[e as usize], p.graph.vector(e), m, &links)
        } else {
            encode_element(level, &p.heap[e as usize], p.graph.vector(e), m, &links)
        }
    };
    let misplaced =
        || -> ! { raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "sutra_hnsw element layout does not match its page") };
    for (n, page_layout) in layout.iter().enumerate() {
        match page_layout {
            Layout::Own { part, elements, next } => write_page(index, block_of(n), KIND_ELEMENTS, *next, |page| {
                for &e in elements {
                    if add_item(page, &tuple(*part, e, false)) != Some(places[*part][e as usize].offset) {
                        misplaced();
                    }
                }
            }),
            Layout::Shared { elements, .. } => write_page(index, block_of(n), KIND_SHARED, NO_BLOCK, |page| {
                for &(i, e) in elements {
                    if add_item(page, &shared_item(owners[i], &tuple(i, e, true))) != Some(places[i][e as usize].offset)
                    {
                        misplaced();
                    }
                }
            }),
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
