//! VACUUM: elements of dead rows are marked deleted, the links that pointed to them are
//! repaired from the deleted elements' own neighbours, entry points move off them, and then
//! the tuples are removed from their pages.
//!
//! Concurrent inserts hold the graph lock shared for as long as they may add links. After the
//! marking pass VACUUM takes it exclusively, which waits for every insert that could have seen
//! a now-deleted element as live, and holds it while it repairs and removes (inserts wait for
//! that; the marking pass, usually the long one, runs beside them). Scans take no lock: an element removed under a running scan reads as gone and is skipped,
//! and a partition whose graph search comes back short is read exactly (see `scan`).

use pgrx::pg_sys;
use sutra_core::hnsw::{reach, select_neighbors};

use super::graph::{DiskGraph, IdMap, IdSet};
use super::insert::{write_links, LinkList};
use super::pages::{
    all_partitions, element_item, element_item_mut, max_offset, partition_pages, read_meta, update_partition,
    ElementData, ElementView, Locked, Meta, Partition, Tid, Wal, FLAG_DELETED, GRAPH_LOCK,
};

struct PartVacuum {
    part: Partition,
    dead: usize,
    /// The live element with the highest level: the entry point if the current one dies.
    best: Option<(Tid, usize)>,
    pages: Vec<(u32, Vec<u16>)>,
}

fn stats_or_new(stats: *mut pg_sys::IndexBulkDeleteResult) -> *mut pg_sys::IndexBulkDeleteResult {
    if stats.is_null() {
        // SAFETY: a zeroed result struct in the current (VACUUM's) memory context.
        unsafe {
            pg_sys::palloc0(std::mem::size_of::<pg_sys::IndexBulkDeleteResult>()) as *mut pg_sys::IndexBulkDeleteResult
        }
    } else {
        stats
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    let stats = stats_or_new(stats);
    let index = (*info).index;
    let meta = read_meta(index);
    let (dims, m) = (meta.dims as usize, meta.m as usize);
    let Some(callback) = callback else { return stats };
    let mut dead = IdSet::default();
    let mut work: Vec<PartVacuum> = Vec::new();
    let mut live_total = 0f64;

    // 1. Mark the elements of dead rows.
    for part in all_partitions(index, &meta) {
        let mut pv = PartVacuum { part, dead: 0, best: None, pages: Vec::new() };
        for block in partition_pages(index, &pv.part) {
            pg_sys::vacuum_delay_point();
            let b = Locked::read(index, block, true);
            let page = b.page();
            let mut doomed = Vec::new();
            for off in 1..=max_offset(page) {
                let Some(e) = element_item(page, off, pv.part.at).and_then(|x| ElementView::new(x, dims, m)) else {
                    continue;
                };
                if e.deleted() {
                    continue;
                }
                let mut heap = e.heap();
                // SAFETY: VACUUM's callback with its own state and a heap tid.
                if callback(&mut heap, callback_state) {
                    doomed.push(off);
                } else {
                    live_total += 1.0;
                    if pv.best.is_none_or(|(_, l)| e.level() > l) {
                        pv.best = Some((Tid { block, offset: off }, e.level()));
                    }
                }
            }
            if !doomed.is_empty() {
                let mut wal = Wal::start(index);
                let copy = wal.register(&b, false);
                for &off in &doomed {
                    if let Some(bytes) = element_item_mut(copy, off, pv.part.at) {
                        bytes[0] |= FLAG_DELETED;
                    }
                    dead.insert(Tid { block, offset: off }.pack());
                }
                wal.finish();
                pv.dead += doomed.len();
                pv.pages.push((block, doomed));
            }
            drop(b);
        }
        if pv.dead > 0 {
            work.push(pv);
        }
    }
    (*stats).num_index_tuples = live_total;
    if work.is_empty() {
        return stats;
    }

    // Wait for inserts that may have read a marked element as live, and keep others out.
    pg_sys::LockPage(index, GRAPH_LOCK, pg_sys::ExclusiveLock as i32);

    // 2. Repair links and entry points.
    let mut graph = DiskGraph::new(index, &meta, true);
    for pv in &work {
        graph.set_owner(pv.part.at);
        for block in partition_pages(index, &pv.part) {
            pg_sys::vacuum_delay_point();
            repair_page(index, &meta, &mut graph, block, pv.part.at, &dead);
        }
        let dead_count = pv.dead as u64;
        let best = pv.best;
        update_partition(index, pv.part.at, |h| {
            if let Some((e, _)) = h.entry() {
                if dead.contains(&e.pack()) {
                    h.set_entry(best);
                }
            }
            h.count = h.count.saturating_sub(dead_count);
            true
        });
    }

    // Elements that lost every path from the entry point get a link from their nearest
    // reachable element.
    for pv in &work {
        if let Some(p) = super::pages::read_partition(index, pv.part.at) {
            graph.set_owner(p.at);
            connect_partition(index, &meta, &mut graph, &p);
        }
    }

    // 3. Remove the marked tuples.
    let mut removed = 0f64;
    for pv in &work {
        for (block, offsets) in &pv.pages {
            let b = Locked::read(index, *block, true);
            let mut wal = Wal::start(index);
            let copy = wal.register(&b, false);
            for &off in offsets.iter().rev() {
                if element_item(copy, off, pv.part.at).is_some_and(|x| x[0] & FLAG_DELETED != 0) {
                    pg_sys::PageIndexTupleDeleteNoCompact(copy, off);
                    removed += 1.0;
                }
            }
            wal.finish();
        }
    }
    pg_sys::UnlockPage(index, GRAPH_LOCK, pg_sys::ExclusiveLock as i32);
    (*stats).tuples_removed += removed;
    stats
}

/// Replaces, in every live element of `block`, links to deleted elements by the best of the
/// remaining links and the deleted elements' own links.
fn repair_page(index: pg_sys::Relation, meta: &Meta, graph: &mut DiskGraph, block: u32, owner: Tid, dead: &IdSet) {
    let (dims, m) = (meta.dims as usize, meta.m as usize);
    let b = Locked::read(index, block, false);
    let page = b.page();
    let mut todo = Vec::new();
    for off in 1..=max_offset(page) {
        let Some(e) = element_item(page, off, owner).and_then(|x| ElementView::new(x, dims, m)) else { continue };
        if e.deleted() {
            continue;
        }
        for l in 0..=e.level() {
            let mut links = Vec::new();
            e.links(l, &mut links);
            if links.iter().any(|t| dead.contains(&t.pack())) {
                todo.push((
                    off,
                    l,
                    LinkList { slots: e.slot_bytes(l).to_vec(), vector: e.vector().to_vec(), links, cap: e.slots(l) },
                ));
            }
        }
    }
    drop(b);
    for (off, level, read) in todo {
        let me = Tid { block, offset: off };
        let mut ids: Vec<Tid> = Vec::new();
        for &t in &read.links {
            if dead.contains(&t.pack()) {
                let mut theirs = Vec::new();
                let bb = Locked::read(index, t.block, false);
                if let Some(e) = element_item(bb.page(), t.offset, owner).and_then(|x| ElementView::new(x, dims, m)) {
                    e.links(level, &mut theirs);
                }
                drop(bb);
                ids.extend(theirs.into_iter().filter(|x| !dead.contains(&x.pack()) && *x != me));
            } else {
                ids.push(t);
            }
        }
        ids.sort();
        ids.dedup();
        let cands = graph.scored(&read.vector, &ids);
        let kept: Vec<Tid> =
            select_neighbors(&cands, read.cap, |a, b| graph.between(a, b)).iter().map(|s| s.id).collect();
        // Nobody else writes links while VACUUM holds the graph lock, so the list is unchanged.
        write_links(index, meta, me, owner, level, &read, &kept);
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    if (*info).analyze_only {
        return stats;
    }
    let index = (*info).index;
    let stats = if stats.is_null() {
        let s = stats_or_new(stats);
        let meta = read_meta(index);
        (*s).num_index_tuples = all_partitions(index, &meta).iter().map(|p| p.head.count as f64).sum();
        s
    } else {
        stats
    };
    (*stats).num_pages = pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM);
    stats
}

/// An element as read by a walk over its partition.
pub struct StoredElement {
    pub level: usize,
    pub deleted: bool,
    pub heap: pg_sys::ItemPointerData,
    /// Links per level, level 0 first.
    pub links: Vec<Vec<Tid>>,
}

/// Every element of a partition (deleted ones included), by packed id.
pub fn partition_elements(index: pg_sys::Relation, meta: &Meta, p: &Partition) -> IdMap<StoredElement> {
    let (dims, m) = (meta.dims as usize, meta.m as usize);
    let mut out = IdMap::default();
    for block in partition_pages(index, p) {
        let b = Locked::read(index, block, false);
        let page = b.page();
        for off in 1..=max_offset(page) {
            let Some(e) = element_item(page, off, p.at).and_then(|x| ElementView::new(x, dims, m)) else { continue };
            let links = (0..=e.level())
                .map(|l| {
                    let mut v = Vec::new();
                    e.links(l, &mut v);
                    v
                })
                .collect();
            out.insert(
                Tid { block, offset: off }.pack(),
                StoredElement { level: e.level(), deleted: e.deleted(), heap: e.heap(), links },
            );
        }
    }
    out
}

/// Live elements of partition `p` (read into `elements`) that no path of live elements from
/// its entry point reaches.
pub fn unreached(p: &Partition, elements: &IdMap<StoredElement>) -> Vec<Tid> {
    let Some((entry, _)) = p.head.entry() else { return Vec::new() };
    let live = |id: &u64| elements.get(id).filter(|s| !s.deleted);
    let mut reached = IdSet::default();
    reach(
        entry.pack(),
        |id| live(&id).is_some() && reached.insert(id),
        |id, out| out.extend(live(&id).iter().flat_map(|s| s.links.iter().flatten()).map(|t| t.pack())),
    );
    let mut out: Vec<Tid> = elements
        .keys()
        .filter(|id| live(id).is_some() && !reached.contains(id))
        .map(|&id| Tid { block: (id >> 16) as u32, offset: (id & 0xffff) as u16 })
        .collect();
    out.sort();
    out
}

/// Links every unreachable live element of a partition from its nearest reachable element.
fn connect_partition(index: pg_sys::Relation, meta: &Meta, graph: &mut DiskGraph, p: &Partition) {
    let Some((entry, level)) = p.head.entry() else { return };
    for _ in 0..4 {
        let orphans = unreached(p, &partition_elements(index, meta, p));
        if orphans.is_empty() {
            return;
        }
        for u in orphans {
            let Some(q) = graph.vector(u) else { continue };
            let found = sutra_core::hnsw::search(graph, &q, entry, level, meta.ef_construction as usize);
            let candidates: Vec<Tid> =
                found.iter().filter(|s| s.id != u && !graph.is_deleted(s.id)).map(|s| s.id).collect();
            for r in candidates {
                if super::insert::force_link(index, meta, graph, r, u) {
                    break;
                }
            }
        }
    }
}
