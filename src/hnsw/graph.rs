//! The graph stored in index pages, as the core's search and linking algorithms read it.

use pgrx::pg_sys;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use sutra_core::hnsw::{Graph, Scored, Space};

use super::pages::{item, next_block, page_kind, ElementView, Locked, Meta, Partition, Tid, KIND_ELEMENTS, NO_BLOCK};

/// A hasher for element ids (packed block and offset): one multiplication, enough for keys
/// that are not chosen by an adversary.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// What a search learned about an element when it scored it.
#[derive(Clone, Copy)]
pub struct Seen {
    pub heap: pg_sys::ItemPointerData,
    pub deleted: bool,
}

/// One map entry per element a search touched: when it was last visited, and what scoring it
/// read (its heap row, deletion flag and level-0 links, kept in the arena).
#[derive(Clone, Copy, Default)]
struct Node {
    epoch: u32,
    scored: bool,
    deleted: bool,
    heap: pg_sys::ItemPointerData,
    links_start: u32,
    links_len: u16,
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
    /// Level-0 links copied when an element is scored, so expanding it reads no page again.
    arena: Vec<Tid>,
    /// Buffers pinned during this search: pages are read again and again, and a pin saves the
    /// buffer mapping lookup each time.
    pins: HashMap<u32, pg_sys::Buffer, BuildHasherDefault<IdHasher>>,
}

/// Most buffers a search keeps pinned.
const MAX_PINS: usize = 4096;

impl Drop for DiskGraph {
    fn drop(&mut self) {
        for (_, b) in self.pins.drain() {
            // SAFETY: each buffer was pinned once by this graph and not released since; when an
            // ERROR unwinds through here the pins are still this backend's.
            unsafe { pg_sys::ReleaseBuffer(b) };
        }
    }
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
            arena: Vec::new(),
            pins: HashMap::default(),
        }
    }

    /// Runs `f` on page `block` under a share lock, through the pin cache.
    fn with_page<R>(&mut self, block: u32, f: impl FnOnce(pg_sys::Page) -> R) -> R {
        let buf = match self.pins.get(&block) {
            Some(&b) => b,
            None => {
                // SAFETY: an open relation; ReadBufferExtended pins the block or raises an ERROR.
                let b = unsafe {
                    pg_sys::ReadBufferExtended(self.index, pg_sys::ForkNumber::MAIN_FORKNUM, block, pg_sys::ReadBufferMode::RBM_NORMAL, std::ptr::null_mut())
                };
                if self.pins.len() < MAX_PINS {
                    self.pins.insert(block, b);
                } else {
                    // SAFETY: the pin taken just above, used once and released below.
                    let r = unsafe {
                        pg_sys::LockBuffer(b, pg_sys::BUFFER_LOCK_SHARE as i32);
                        let r = f(pg_sys::BufferGetPage(b));
                        pg_sys::UnlockReleaseBuffer(b);
                        r
                    };
                    return r;
                }
                b
            }
        };
        // SAFETY: a buffer pinned by this graph; the share lock is held only while `f` copies
        // out of the page, and `f` raises no error.
        unsafe {
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as i32);
            let r = f(pg_sys::BufferGetPage(buf));
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_UNLOCK as i32);
            r
        }
    }

    /// Runs `f` on the element at `id` under a share lock; `None` when it is gone.
    fn with_element<R>(&mut self, id: Tid, f: impl FnOnce(&ElementView) -> R) -> Option<R> {
        self.reads += 1;
        let (dims, m) = (self.dims, self.m);
        self.with_page(id.block, |page| {
            if page_kind(page) != Some(KIND_ELEMENTS) {
                return None;
            }
            item(page, id.offset).and_then(|bytes| ElementView::new(bytes, dims, m)).map(|v| f(&v))
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

    /// Heap row and deletion flag of an element this graph scored.
    pub fn seen(&self, id: Tid) -> Option<Seen> {
        self.nodes.get(&id.pack()).filter(|n| n.scored).map(|n| Seen { heap: n.heap, deleted: n.deleted })
    }

    pub fn is_deleted(&self, id: Tid) -> bool {
        self.seen(id).is_none_or(|s| s.deleted)
    }

    /// Scores every element of a partition against `q` (the exact scan), skipping deleted ones
    /// and those in `skip`; reports each with its heap tid.
    pub fn scan_partition(&mut self, p: &Partition, q: Option<&[f32]>, skip: &IdSet, out: &mut Vec<(Scored<Tid>, pg_sys::ItemPointerData)>) {
        let mut block = p.head.head_block;
        let mut pages = 0u32;
        while block != NO_BLOCK {
            // A chain longer than the relation means a cycle: stop instead of looping.
            pages += 1;
            // SAFETY: an open relation.
            if pages > unsafe { pg_sys::RelationGetNumberOfBlocksInFork(self.index, pg_sys::ForkNumber::MAIN_FORKNUM) } {
                break;
            }
            let b = Locked::read(self.index, block, false);
            let page = b.page();
            if page_kind(page) != Some(KIND_ELEMENTS) {
                break;
            }
            for off in 1..=super::pages::max_offset(page) {
                let id = Tid { block, offset: off };
                if skip.contains(&id.pack()) {
                    continue;
                }
                let Some(v) = item(page, off).and_then(|bytes| ElementView::new(bytes, self.dims, self.m)) else { continue };
                if v.deleted() {
                    continue;
                }
                self.reads += 1;
                let dist = q.map_or(0.0, |q| self.space.distance(q, v.vector()));
                out.push((Scored { dist, id }, v.heap()));
            }
            block = next_block(page);
            drop(b);
        }
    }
}

impl Graph for DiskGraph {
    type Id = Tid;

    fn distance(&mut self, q: &[f32], id: Tid) -> Option<f32> {
        let space = self.space;
        let keep = self.vectors.is_some();
        let mut arena = std::mem::take(&mut self.arena);
        let start = arena.len();
        let read = self.with_element(id, |e| {
            let d = space.distance(q, e.vector());
            e.links(0, &mut arena);
            (d, e.heap(), e.deleted(), keep.then(|| e.vector().to_vec()))
        });
        let len = arena.len() - start;
        self.arena = arena;
        let (d, heap, deleted, v) = read?;
        let node = self.nodes.entry(id.pack()).or_default();
        *node = Node { scored: true, deleted, heap, links_start: start as u32, links_len: len as u16, ..*node };
        if let (Some(map), Some(v)) = (self.vectors.as_mut(), v) {
            map.insert(id.pack(), v);
        }
        Some(d)
    }

    fn neighbors(&mut self, id: Tid, level: usize, out: &mut Vec<Tid>) {
        if level == 0 {
            if let Some(n) = self.nodes.get(&id.pack()).filter(|n| n.scored) {
                let start = n.links_start as usize;
                out.extend_from_slice(&self.arena[start..start + n.links_len as usize]);
                return;
            }
        }
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

    /// A new layer's search: nothing visited. What scoring read stays: a graph lives for one
    /// scan round or one insert, and links that change meanwhile only change which elements
    /// the search walks through.
    fn clear_visited(&mut self) {
        self.epoch += 1;
    }
}
