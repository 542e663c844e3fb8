//! The graph stored in index pages, as the core's search and linking algorithms read it.

use pgrx::pg_sys;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use sutra_core::hnsw::{Graph, Scored, Space};

use super::pages::{
    element_item, partition_pages, prefetch_item, ElementData, ElementView, IdHasher, Locked, Meta, Partition,
    PrefetchStage, Tid,
};

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// How many pages [`DiskGraph::distances`] pins at once: PostgreSQL keeps a backend's first
/// eight pins in an array and looks further ones up in a hash table.
const PIN_BATCH: usize = 6;

/// What a search learned about an element when it scored it.
#[derive(Clone, Copy)]
pub struct Seen {
    pub heap: pg_sys::ItemPointerData,
    pub deleted: bool,
}

/// One map entry per element a search touched: when it was last visited, and what scoring it
/// read (its heap row and deletion flag).
#[derive(Clone, Copy, Default)]
struct Node {
    epoch: u32,
    scored: bool,
    deleted: bool,
    heap: pg_sys::ItemPointerData,
}

/// The graph of one index, read page by page through shared buffers.
pub struct DiskGraph {
    index: pg_sys::Relation,
    pub space: Space,
    dims: usize,
    m: usize,
    nodes: IdMap<Node>,
    epoch: u32,
    /// Elements read, for the scan's bound on work.
    pub reads: usize,
    /// Kept vectors (inserts compare candidates with each other).
    vectors: Option<IdMap<Vec<f32>>>,
    /// The directory entry of the partition being searched: an element of a shared page is read
    /// only when its owner tag names it, so no link can lead to another partition's element.
    owner: Tid,
}

impl DiskGraph {
    pub fn new(index: pg_sys::Relation, meta: &Meta, keep_vectors: bool) -> DiskGraph {
        DiskGraph {
            index,
            space: meta.space(),
            dims: meta.dims as usize,
            m: meta.m as usize,
            nodes: IdMap::with_capacity_and_hasher(1024, Default::default()),
            epoch: 1,
            reads: 0,
            vectors: keep_vectors.then(IdMap::default),
            owner: Tid { block: 0, offset: 0 },
        }
    }

    /// The partition the next searches are in.
    pub fn set_owner(&mut self, owner: Tid) {
        self.owner = owner;
    }

    pub fn owner(&self) -> Tid {
        self.owner
    }

    /// Runs `f` on page `block` under a share lock.
    fn with_page<R>(&mut self, block: u32, f: impl FnOnce(pg_sys::Page) -> R) -> R {
        let b = Locked::read(self.index, block, false);
        f(b.page())
    }

    /// Runs `f` on the element at `id` under a share lock; `None` when it is gone.
    fn with_element<R>(&mut self, id: Tid, f: impl FnOnce(&ElementView) -> R) -> Option<R> {
        self.reads += 1;
        let (dims, m, owner) = (self.dims, self.m, self.owner);
        self.with_page(id.block, |page| {
            element_item(page, id.offset, owner).and_then(|bytes| ElementView::new(bytes, dims, m)).map(|v| f(&v))
        })
    }

    /// The stored vector of `id` (kept when the graph keeps vectors).
    pub fn vector(&mut self, id: Tid) -> Option<Vec<f32>> {
        if let Some(v) = self.vectors.as_ref().and_then(|m| m.get(&id.pack())) {
            return Some(v.clone());
        }
        let v = self.with_element(id, |e| e.vector().to_vec())?;
        if let Some(m) = self.vectors.as_mut() {
            m.insert(id.pack(), v.clone());
        }
        Some(v)
    }

    /// The internal distance between two stored elements (infinite when one is gone).
    pub fn between(&mut self, a: Tid, b: Tid) -> f32 {
        match (self.vector(a), self.vector(b)) {
            (Some(x), Some(y)) => self.space.distance(&x, &y),
            _ => f32::INFINITY,
        }
    }

    /// `ids` scored by internal distance to `base`, nearest first; elements that can no longer
    /// be read are left out.
    pub fn scored(&mut self, base: &[f32], ids: &[Tid]) -> Vec<Scored<Tid>> {
        let mut out: Vec<Scored<Tid>> = ids
            .iter()
            .filter_map(|&t| self.vector(t).map(|v| Scored { dist: self.space.distance(base, &v), id: t }))
            .collect();
        out.sort();
        out
    }

    /// Heap row and deletion flag of an element this graph scored.
    pub fn seen(&self, id: Tid) -> Option<Seen> {
        self.nodes.get(&id.pack()).filter(|n| n.scored).map(|n| Seen { heap: n.heap, deleted: n.deleted })
    }

    pub fn is_deleted(&self, id: Tid) -> bool {
        self.seen(id).is_none_or(|s| s.deleted)
    }

    /// Scores every element of a partition against `q` (the exact scan), skipping deleted ones
    /// and those in `skip`; reports each with its heap tid.
    pub fn scan_partition(
        &mut self,
        p: &Partition,
        q: Option<&[f32]>,
        skip: &IdSet,
        out: &mut Vec<(Scored<Tid>, pg_sys::ItemPointerData)>,
    ) {
        let blocks = partition_pages(self.index, p);
        self.scan_blocks(p, &blocks, q, skip, out);
    }

    /// [`DiskGraph::scan_partition`] of the partition's shared page alone (none: nothing). A graph
    /// search adds these: the few elements there have compact link lists, so they are read
    /// whole rather than left to the graph.
    pub fn scan_shared(
        &mut self,
        p: &Partition,
        q: Option<&[f32]>,
        skip: &IdSet,
        out: &mut Vec<(Scored<Tid>, pg_sys::ItemPointerData)>,
    ) {
        if p.head.shared_block == 0 {
            return;
        }
        self.scan_blocks(p, &[p.head.shared_block], q, skip, out);
    }

    fn scan_blocks(
        &mut self,
        p: &Partition,
        blocks: &[u32],
        q: Option<&[f32]>,
        skip: &IdSet,
        out: &mut Vec<(Scored<Tid>, pg_sys::ItemPointerData)>,
    ) {
        for &block in blocks {
            let b = Locked::read(self.index, block, false);
            let page = b.page();
            for off in 1..=super::pages::max_offset(page) {
                let id = Tid { block, offset: off };
                if skip.contains(&id.pack()) {
                    continue;
                }
                let Some(v) =
                    element_item(page, off, p.at).and_then(|bytes| ElementView::new(bytes, self.dims, self.m))
                else {
                    continue;
                };
                if v.deleted() {
                    continue;
                }
                self.reads += 1;
                let dist = q.map_or(0.0, |q| self.space.distance(q, v.vector()));
                out.push((Scored { dist, id }, v.heap()));
            }
            drop(b);
        }
    }
}

impl Graph for DiskGraph {
    type Id = Tid;

    fn distance(&mut self, q: &[f32], id: Tid) -> Option<f32> {
        let space = self.space;
        let keep = self.vectors.is_some();
        let (d, heap, deleted, v) = self.with_element(id, |e| {
            (space.distance(q, e.vector()), e.heap(), e.deleted(), keep.then(|| e.vector().to_vec()))
        })?;
        let node = self.nodes.entry(id.pack()).or_default();
        *node = Node { scored: true, deleted, heap, ..*node };
        if let (Some(map), Some(v)) = (self.vectors.as_mut(), v) {
            map.insert(id.pack(), v);
        }
        Some(d)
    }

    /// Scores a node's neighbours together: every page is pinned and the lines each element's
    /// scoring reads are requested from memory before the first is scored, so the waits for
    /// them overlap instead of following one another (most of a search's time is those waits).
    fn distances(&mut self, q: &[f32], ids: &[Tid], out: &mut Vec<Option<f32>>) {
        out.clear();
        if self.vectors.is_some() || ids.len() < 2 {
            for &id in ids {
                let d = self.distance(q, id);
                out.push(d);
            }
            return;
        }
        // Scoring reads an element's header and vector, not its links.
        let bytes = sutra_core::hnsw_tuple::ELEMENT_HEADER + 4 * self.dims;
        let (space, dims, m, owner) = (self.space, self.dims, self.m, self.owner);
        // A few at a time: a backend keeps its first pins in a small array, more in a hash table.
        for chunk in ids.chunks(PIN_BATCH) {
            let mut pinned = [0 as pg_sys::Buffer; PIN_BATCH];
            for (slot, id) in pinned.iter_mut().zip(chunk) {
                *slot = Locked::pin(self.index, id.block);
            }
            for (id, &buf) in chunk.iter().zip(&pinned) {
                prefetch_item(buf, id.offset, PrefetchStage::Header, bytes);
            }
            for (id, &buf) in chunk.iter().zip(&pinned) {
                prefetch_item(buf, id.offset, PrefetchStage::Item, bytes);
            }
            for (id, &buf) in chunk.iter().zip(&pinned) {
                self.reads += 1;
                let b = Locked::lock(buf);
                let scored = element_item(b.page(), id.offset, owner)
                    .and_then(|bytes| ElementView::new(bytes, dims, m))
                    .map(|e| (space.distance(q, e.vector()), e.heap(), e.deleted()));
                drop(b);
                out.push(scored.map(|(d, heap, deleted)| {
                    let node = self.nodes.entry(id.pack()).or_default();
                    *node = Node { scored: true, deleted, heap, ..*node };
                    d
                }));
            }
        }
    }

    fn neighbors(&mut self, id: Tid, level: usize, out: &mut Vec<Tid>) {
        self.with_element(id, |e| e.links(level, out));
    }

    fn visit(&mut self, id: Tid) -> bool {
        let epoch = self.epoch;
        let node = self.nodes.entry(id.pack()).or_default();
        if node.epoch == epoch {
            false
        } else {
            node.epoch = epoch;
            true
        }
    }

    /// A new layer's search: nothing visited. What scoring read (heap row, deletion flag)
    /// stays: a graph lives for one scan round or one insert.
    fn clear_visited(&mut self) {
        self.epoch += 1;
    }
}
