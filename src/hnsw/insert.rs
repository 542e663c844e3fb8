//! Inserting one element into the stored graph: find its neighbours from the partition's entry
//! point, append it to the partition's last page, then add the links back to it.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use sutra_core::hnsw::{find_neighbors, random_level, select_neighbors, Rng, Scored};

use super::graph::DiskGraph;
use super::pages::{
    add_item, compact_base_room, element_item, element_item_mut, encode_compact_element, encode_element, fits_shared,
    init_page, item_mut, item_room, max_level_fitting, page_kind, read_meta, read_partition, set_next_block,
    shared_item, shared_room_for, update_meta, write_slots, DirHead, ElementData, ElementView, Key, Locked, Meta,
    Partition, Tid, Wal, DIR_HEAD_BYTES, GRAPH_LOCK, KIND_ELEMENTS, KIND_SHARED, LINK_BYTES, NO_BLOCK,
};
use crate::error::raise;

thread_local! {
    static RNG: RefCell<Rng> = RefCell::new(Rng::new(seed()));
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ ((std::process::id() as u64) << 32)
}

/// A level for a new element.
pub fn new_level(meta: &Meta) -> usize {
    let max = max_level_fitting(meta.dims as usize, meta.m as usize).unwrap_or(0);
    RNG.with(|r| random_level(&mut r.borrow_mut(), meta.m as usize, max))
}

/// Inserts a prepared vector (already checked and, for cosine, normalized) for heap row `heap`
/// into the partition of `key`.
pub fn insert_vector(index: pg_sys::Relation, meta: &Meta, key: &Key, v: &[f32], heap: &pg_sys::ItemPointerData) {
    // SAFETY: a heavyweight lock on an open index, held while this insert can still add links;
    // VACUUM takes it exclusively to wait for such inserts. Released below or at abort.
    unsafe { pg_sys::LockPage(index, GRAPH_LOCK, pg_sys::ShareLock as i32) };
    let part = super::pages::find_or_create_partition(index, meta, key);
    let level = new_level(meta);
    let m = meta.m as usize;
    let mut graph = DiskGraph::new(index, meta, true);
    graph.set_owner(part.at);
    let mut attempts = 0;
    let (id, links) = loop {
        let part = read_partition(index, part.at)
            .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED, "sutra_hnsw partition entry is missing"));
        let entry = part.head.entry();
        let links: Vec<Vec<Scored<Tid>>> = match entry {
            None => Vec::new(),
            Some((e, el)) => find_neighbors(
                &mut graph,
                v,
                e,
                el,
                level,
                m,
                meta.ef_construction as usize,
                |g, id| !g.is_deleted(id),
                |g, a, b| g.between(a, b),
            ),
        };
        let ids: Vec<Vec<Tid>> = links.iter().map(|l| l.iter().map(|s| s.id).collect()).collect();
        let tuple = encode_element(level, heap, v, m, &ids);
        // The shared-page form, only for a partition without pages of its own (it never loses them).
        let shared = (meta.shares_pages() && part.head.head_block == NO_BLOCK)
            .then(|| shared_item(part.at, &encode_compact_element(level, heap, v, m, &ids)));
        match append_element(index, meta, &part, &tuple, shared.as_deref(), level, entry.is_none()) {
            Some(id) => break (id, links),
            // Another backend gave the empty partition its first element meanwhile: search again
            // from it, so that this element is linked.
            None if attempts < 10 => attempts += 1,
            None => raise(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                "could not insert into sutra_hnsw index under concurrent inserts",
            ),
        }
    };
    for (l, list) in links.iter().enumerate() {
        for s in list {
            add_link(index, meta, &mut graph, s.id, l, id, s.dist);
        }
    }
    // SAFETY: the lock taken above.
    unsafe { pg_sys::UnlockPage(index, GRAPH_LOCK, pg_sys::ShareLock as i32) };
}

/// Appends an element to the partition: `shared` (its shared-page item, when the caller found the
/// partition without pages of its own) on a shared page while the partition is small (its shared
/// page, or the index's current one, or a new one), else `tuple` on its last own page (a new page
/// when full); makes it the entry point when it is the first or reaches a higher
/// level. Returns `None` without writing when `expect_empty` and the partition got an entry point
/// meanwhile.
pub fn append_element(
    index: pg_sys::Relation,
    meta: &Meta,
    part: &Partition,
    tuple: &[u8],
    shared: Option<&[u8]>,
    level: usize,
    expect_empty: bool,
) -> Option<Tid> {
    let dir = Locked::read(index, part.at.block, true);
    let mut wal = Wal::start(index);
    let dpage = wal.register(&dir, false);
    let Some(bytes) = item_mut(dpage, part.at.offset).filter(|b| b.len() >= DIR_HEAD_BYTES) else {
        drop(wal);
        drop(dir);
        raise(PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED, "sutra_hnsw partition entry is missing");
    };
    let mut head = DirHead::read(bytes).unwrap_or_default();
    if expect_empty && head.entry().is_some() {
        return None;
    }
    let mut guards: Vec<Locked> = Vec::new();
    let mut placed = None;
    let mut new_shared_tail = None;
    // A small partition without pages of its own: its shared page, else the index's current
    // shared page, else a new shared page (which becomes the current one).
    let room = shared.map_or(0, |item| item_room(item.len()));
    let base_room = compact_base_room(meta.dims as usize, meta.m as usize);
    if let Some(shared) = shared.filter(|_| head.head_block == NO_BLOCK && fits_shared(head.count as usize + 1, room)) {
        let candidate = if head.shared_block != 0 { head.shared_block } else { read_meta(index).shared_tail };
        if candidate != 0 && candidate != NO_BLOCK {
            let t = Locked::read(index, candidate, true);
            if page_kind(t.page()) == Some(KIND_SHARED) && shared_room_for(t.page(), part.at, room, base_room) {
                let tpage = wal.register(&t, false);
                if let Some(off) = add_item(tpage, shared) {
                    placed = Some(Tid { block: t.block(), offset: off });
                }
            }
            guards.push(t);
        }
        if placed.is_none() && head.shared_block == 0 {
            let fresh = Locked::extend(index, pg_sys::ForkNumber::MAIN_FORKNUM);
            let fpage = wal.register(&fresh, true);
            init_page(fpage, KIND_SHARED);
            let Some(off) = add_item(fpage, shared) else {
                drop(wal);
                raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "sutra_hnsw element does not fit an empty page");
            };
            placed = Some(Tid { block: fresh.block(), offset: off });
            new_shared_tail = Some(fresh.block());
            guards.push(fresh);
        }
        if let Some(id) = placed {
            head.shared_block = id.block;
        }
    }
    if placed.is_none() {
        let mut tail_page = None;
        if head.tail_block != NO_BLOCK {
            let t = Locked::read(index, head.tail_block, true);
            let tpage = wal.register(&t, false);
            if let Some(off) = add_item(tpage, tuple) {
                placed = Some(Tid { block: t.block(), offset: off });
            }
            tail_page = Some(tpage);
            guards.push(t);
        }
        if placed.is_none() {
            let fresh = Locked::extend(index, pg_sys::ForkNumber::MAIN_FORKNUM);
            let fpage = wal.register(&fresh, true);
            init_page(fpage, KIND_ELEMENTS);
            let Some(off) = add_item(fpage, tuple) else {
                drop(wal);
                raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "sutra_hnsw element does not fit an empty page");
            };
            match tail_page {
                Some(tpage) => set_next_block(tpage, fresh.block()),
                None => head.head_block = fresh.block(),
            }
            head.tail_block = fresh.block();
            placed = Some(Tid { block: fresh.block(), offset: off });
            guards.push(fresh);
        }
    }
    let id = placed?;
    head.count += 1;
    if head.entry().is_none_or(|(_, el)| level > el) {
        head.set_entry(Some((id, level)));
    }
    // The same entry bytes as above, in the registered page copy.
    head.write(bytes);
    wal.finish();
    drop(guards);
    drop(dir);
    // The metapage is locked last, after every other lock is released.
    if let Some(block) = new_shared_tail {
        update_meta(index, |m| m.shared_tail = block);
    }
    Some(id)
}

/// One element's links on one level, as read under a share lock: the raw slots (to see
/// whether they changed before writing), the element's vector and the links.
pub struct LinkList {
    pub slots: Vec<u8>,
    pub vector: Vec<f32>,
    pub links: Vec<Tid>,
    /// The element's link slots on that level (fewer for a compact element).
    pub cap: usize,
}

/// Reads the links of element `at` on `level`; `None` when it is gone, deleted or has no such
/// level.
pub fn read_links(index: pg_sys::Relation, meta: &Meta, at: Tid, owner: Tid, level: usize) -> Option<LinkList> {
    let b = Locked::read(index, at.block, false);
    element_item(b.page(), at.offset, owner)
        .and_then(|bytes| ElementView::new(bytes, meta.dims as usize, meta.m as usize))
        .filter(|e| !e.deleted() && e.level() >= level)
        .map(|e| {
            let mut links = Vec::new();
            e.links(level, &mut links);
            LinkList { slots: e.slot_bytes(level).to_vec(), vector: e.vector().to_vec(), links, cap: e.slots(level) }
        })
}

/// Writes `links` as element `at`'s list on `level`, WAL-logged, unless the list is no longer
/// `read.slots` (someone changed it since it was read) or the element is gone: then false.
pub fn write_links(
    index: pg_sys::Relation,
    meta: &Meta,
    at: Tid,
    owner: Tid,
    level: usize,
    read: &LinkList,
    links: &[Tid],
) -> bool {
    let (dims, m) = (meta.dims as usize, meta.m as usize);
    let b = Locked::read(index, at.block, true);
    let mut wal = Wal::start(index);
    let page = wal.register(&b, false);
    let Some(bytes) = element_item_mut(page, at.offset, owner) else { return false };
    let Some((start, cap)) = ElementView::new(bytes, dims, m)
        .filter(|e| e.level() >= level && e.slot_bytes(level) == read.slots.as_slice())
        .map(|e| (super::pages::links_offset(dims, e.m, level), e.slots(level)))
    else {
        return false;
    };
    write_slots(&mut bytes[start..start + cap * LINK_BYTES], links);
    wal.finish();
    true
}

/// Adds a link to `new` (at internal distance `dist`) to element `at`'s list on `level`; a full
/// list is pruned with the neighbour heuristic. A list that changed between reading and writing
/// is read again; after a few tries the link is given up (the graph stays valid, only a little
/// less connected).
pub fn add_link(
    index: pg_sys::Relation,
    meta: &Meta,
    graph: &mut DiskGraph,
    at: Tid,
    level: usize,
    new: Tid,
    dist: f32,
) {
    let owner = graph.owner();
    for _ in 0..3 {
        let Some(read) = read_links(index, meta, at, owner, level) else { return };
        let cap = read.cap;
        if read.links.contains(&new) {
            return;
        }
        let kept: Vec<Tid> = if read.links.len() < cap {
            read.links.iter().copied().chain(std::iter::once(new)).collect()
        } else {
            let mut cands = graph.scored(&read.vector, &read.links);
            cands.push(Scored { dist, id: new });
            cands.sort();
            let kept = select_neighbors(&cands, cap, |a, b| graph.between(a, b));
            if !kept.iter().any(|s| s.id == new) {
                return;
            }
            kept.iter().map(|s| s.id).collect()
        };
        if write_links(index, meta, at, owner, level, &read, &kept) {
            return;
        }
    }
}

/// Adds a level-0 link from `at` to `new`, replacing `at`'s farthest link when its list is full:
/// used to reconnect elements that no path reaches. Returns false when `at` cannot take it.
pub fn force_link(index: pg_sys::Relation, meta: &Meta, graph: &mut DiskGraph, at: Tid, new: Tid) -> bool {
    let owner = graph.owner();
    let Some(read) = read_links(index, meta, at, owner, 0) else { return false };
    if read.links.contains(&new) {
        return true;
    }
    let mut links = read.links.clone();
    if links.len() >= read.cap {
        // The link to replace: one that can no longer be read, else the farthest.
        let scored = graph.scored(&read.vector, &links);
        let far = links
            .iter()
            .position(|t| !scored.iter().any(|s| s.id == *t))
            .or_else(|| scored.last().and_then(|s| links.iter().position(|&t| t == s.id)))
            .unwrap_or(0);
        links[far] = new;
    } else {
        links.push(new);
    }
    write_links(index, meta, at, owner, 0, &read, &links)
}
