//! HNSW graph search and construction (Malkov and Yashunin, "Efficient and robust approximate
//! nearest neighbor search using Hierarchical Navigable Small World graphs"), independent of
//! where the graph lives.
//!
//! The algorithms work over the [`Graph`] trait, implemented twice: by [`MemGraph`]'s searcher,
//! over the in-memory graph an index build fills (from several threads) before it writes pages, and by the index's page reader
//! in the extension, which inserts into and searches the graph stored in PostgreSQL pages. Both
//! therefore search and link the same way.
//!
//! Distances here are the *internal* ones of a [`Space`]: smaller is closer, and they are cheap
//! to compute (squared L2, negative dot product, `1 - dot` on normalized vectors).
//! [`Space::sql_distance`] turns them into what the SQL operators return.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::Mutex;

use crate::distance::kernels;

/// The highest level an element may get, whatever its page size allows.
pub const MAX_LEVEL: usize = 15;

/// The distance an index orders by, chosen by its operator class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `<->`, Euclidean distance.
    L2 = 1,
    /// `<#>`, negative inner product.
    InnerProduct = 2,
    /// `<=>`, cosine distance. Vectors are normalized when they enter the index.
    Cosine = 3,
}

impl Metric {
    pub fn from_code(code: u8) -> Option<Metric> {
        match code {
            1 => Some(Metric::L2),
            2 => Some(Metric::InnerProduct),
            3 => Some(Metric::Cosine),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "inner_product",
            Metric::Cosine => "cosine",
        }
    }

    /// The form a vector is stored and searched in: cosine vectors are scaled to length 1; `None`
    /// when the vector has no such form (a zero vector has no cosine distance to anything).
    pub fn prepare(self, v: &[f32]) -> Option<Vec<f32>> {
        match self {
            Metric::Cosine => {
                let norm = crate::distance::norm(v);
                if norm == 0.0 || !norm.is_finite() {
                    return None;
                }
                Some(v.iter().map(|&x| (x as f64 / norm) as f32).collect())
            }
            _ => Some(v.to_vec()),
        }
    }
}

/// A metric with its distance kernel resolved for this CPU.
#[derive(Clone, Copy)]
pub struct Space {
    pub metric: Metric,
    kernel: fn(&[f32], &[f32]) -> f32,
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Space({:?})", self.metric)
    }
}

impl Space {
    pub fn new(metric: Metric) -> Space {
        let k = kernels();
        let kernel = match metric {
            Metric::L2 => k.l2_squared,
            Metric::InnerProduct | Metric::Cosine => k.dot,
        };
        Space { metric, kernel }
    }

    /// The internal distance between two prepared vectors: smaller is closer.
    #[inline]
    pub fn distance(&self, a: &[f32], b: &[f32]) -> f32 {
        let r = (self.kernel)(a, b);
        match self.metric {
            Metric::L2 => r,
            Metric::InnerProduct => -r,
            Metric::Cosine => 1.0 - r,
        }
    }

    /// What the SQL operator returns for an internal distance.
    pub fn sql_distance(&self, d: f32) -> f64 {
        match self.metric {
            Metric::L2 => (d.max(0.0) as f64).sqrt(),
            Metric::InnerProduct => d as f64,
            Metric::Cosine => (d as f64).clamp(0.0, 2.0),
        }
    }
}

/// An element and its distance to the query, ordered by distance (then id, so the order is
/// total and ties are stable).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored<I> {
    pub dist: f32,
    pub id: I,
}

impl<I: Ord> Eq for Scored<I> {}

impl<I: Ord> PartialOrd for Scored<I> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<I: Ord> Ord for Scored<I> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist.total_cmp(&other.dist).then_with(|| self.id.cmp(&other.id))
    }
}

/// Read access to a graph, as the search needs it.
pub trait Graph {
    type Id: Copy + Ord;

    /// The internal distance from `q` to element `id`, or `None` when the element can no longer
    /// be read (removed by a concurrent VACUUM); such elements are skipped.
    fn distance(&mut self, q: &[f32], id: Self::Id) -> Option<f32>;

    /// The distances from `q` to each of `ids`, in order, into `out` (cleared first): what
    /// [`Graph::distance`] returns for each. A graph whose elements live in memory that is slow
    /// to reach overrides it to fetch them all before scoring any.
    fn distances(&mut self, q: &[f32], ids: &[Self::Id], out: &mut Vec<Option<f32>>) {
        out.clear();
        for &id in ids {
            let d = self.distance(q, id);
            out.push(d);
        }
    }

    /// Appends the neighbours of `id` at `level` to `out` (nothing when it cannot be read).
    fn neighbors(&mut self, id: Self::Id, level: usize, out: &mut Vec<Self::Id>);

    /// Marks `id` visited by the current search; true when it was not visited before.
    fn visit(&mut self, id: Self::Id) -> bool;

    /// Starts a new search: nothing is visited.
    fn clear_visited(&mut self);
}

/// The `ef` elements nearest to `q` reachable at `level` from `entries`, nearest first
/// (the paper's SEARCH-LAYER). Entries come scored; each call starts with nothing visited.
pub fn search_layer<G: Graph>(
    g: &mut G,
    q: &[f32],
    entries: &[Scored<G::Id>],
    ef: usize,
    level: usize,
) -> Vec<Scored<G::Id>> {
    let ef = ef.max(1);
    g.clear_visited();
    for e in entries {
        g.visit(e.id);
    }
    let mut candidates: BinaryHeap<Reverse<Scored<G::Id>>> = entries.iter().map(|&e| Reverse(e)).collect();
    let mut results: BinaryHeap<Scored<G::Id>> = BinaryHeap::with_capacity(ef + 1);
    for &e in entries {
        results.push(e);
        if results.len() > ef {
            results.pop();
        }
    }
    let mut buf = Vec::new();
    let mut dists = Vec::new();
    while let Some(Reverse(c)) = candidates.pop() {
        if results.len() >= ef && c.dist > results.peek().map_or(f32::INFINITY, |w| w.dist) {
            break;
        }
        buf.clear();
        g.neighbors(c.id, level, &mut buf);
        // The unvisited neighbours, scored together (see `Graph::distances`).
        buf.retain(|&n| g.visit(n));
        g.distances(q, &buf, &mut dists);
        for (&n, &d) in buf.iter().zip(dists.iter()) {
            let Some(d) = d else { continue };
            if results.len() < ef || d < results.peek().map_or(f32::INFINITY, |w| w.dist) {
                let s = Scored { dist: d, id: n };
                candidates.push(Reverse(s));
                results.push(s);
                if results.len() > ef {
                    results.pop();
                }
            }
        }
    }
    results.into_sorted_vec()
}

/// Searches the whole graph from its entry point: a greedy descent through the upper levels,
/// then [`search_layer`] with `ef` on level 0. Nearest first.
pub fn search<G: Graph>(g: &mut G, q: &[f32], entry: G::Id, entry_level: usize, ef: usize) -> Vec<Scored<G::Id>> {
    let cur = descend(g, q, entry, entry_level, 0);
    if cur.is_empty() {
        return cur;
    }
    search_layer(g, q, &cur, ef, 0)
}

/// Starts a new search at the entry point and walks greedily down the levels above `to_level`:
/// returns the nearest element found, scored, as the entry for a search on `to_level`. Empty
/// when the entry point cannot be read.
fn descend<G: Graph>(g: &mut G, q: &[f32], entry: G::Id, entry_level: usize, to_level: usize) -> Vec<Scored<G::Id>> {
    let Some(d) = g.distance(q, entry) else { return Vec::new() };
    let mut cur = vec![Scored { dist: d, id: entry }];
    let mut level = entry_level;
    while level > to_level {
        let found = search_layer(g, q, &cur, 1, level);
        if let Some(&best) = found.first() {
            cur = vec![best];
        }
        level -= 1;
    }
    cur
}

/// The paper's SELECT-NEIGHBORS-HEURISTIC: from `candidates` (scored by distance to the base
/// element, nearest first), keeps at most `m`, skipping a candidate that is closer to an already
/// kept one than to the base. This keeps links pointing in different directions, which keeps the
/// graph navigable across clusters. `between(a, b)` is the distance between two candidates.
pub fn select_neighbors<I: Copy + Ord>(
    candidates: &[Scored<I>],
    m: usize,
    mut between: impl FnMut(I, I) -> f32,
) -> Vec<Scored<I>> {
    let mut kept: Vec<Scored<I>> = Vec::with_capacity(m);
    for &c in candidates {
        if kept.len() >= m {
            break;
        }
        if kept.iter().all(|k| between(c.id, k.id) > c.dist) {
            kept.push(c);
        }
    }
    kept
}

/// The neighbours a new element gets on each level `0..=min(level, entry_level)`, found from
/// the entry point with `ef_construction`: level 0 keeps up to `2 m`, the others `m`.
/// `usable(id)` excludes elements that must not be linked (deleted ones); they are still walked
/// through. Index `l` of the result is level `l`.
#[allow(clippy::too_many_arguments)]
pub fn find_neighbors<G: Graph>(
    g: &mut G,
    q: &[f32],
    entry: G::Id,
    entry_level: usize,
    level: usize,
    m: usize,
    ef_construction: usize,
    mut usable: impl FnMut(&mut G, G::Id) -> bool,
    mut between: impl FnMut(&mut G, G::Id, G::Id) -> f32,
) -> Vec<Vec<Scored<G::Id>>> {
    let top = level.min(entry_level);
    let mut cur = descend(g, q, entry, entry_level, top);
    let mut out = vec![Vec::new(); top + 1];
    if cur.is_empty() {
        return out;
    }
    for l in (0..=top).rev() {
        let found = search_layer(g, q, &cur, ef_construction, l);
        let linkable: Vec<Scored<G::Id>> = found.iter().copied().filter(|s| usable(g, s.id)).collect();
        let cap = if l == 0 { 2 * m } else { m };
        out[l] = select_neighbors(&linkable, cap, |a, b| between(g, a, b));
        if !found.is_empty() {
            cur = found;
        }
    }
    out
}

/// A random level with the paper's distribution, `floor(-ln(U) / ln(m))`, capped at `max`.
/// Walks every element reachable from `entry` along links of any level, depth first: the one
/// reachability routine behind the build's and VACUUM's repair of unreachable elements and
/// `sutra.hnsw_check`. `visit(id)` marks an element reached and answers whether it was not
/// before (and whether it counts: a deleted element can answer false); `links(id, out)` appends
/// the elements `id` links to.
pub fn reach<I: Copy>(entry: I, mut visit: impl FnMut(I) -> bool, mut links: impl FnMut(I, &mut Vec<I>)) {
    if !visit(entry) {
        return;
    }
    let mut stack = vec![entry];
    let mut out = Vec::new();
    while let Some(id) = stack.pop() {
        out.clear();
        links(id, &mut out);
        for &x in &out {
            if visit(x) {
                stack.push(x);
            }
        }
    }
}

pub fn random_level(rng: &mut Rng, m: usize, max: usize) -> usize {
    let ml = 1.0 / (m.max(2) as f64).ln();
    let u = rng.next_f64();
    let l = (-(u.max(f64::MIN_POSITIVE)).ln() * ml).floor();
    (l as usize).min(max)
}

/// A small deterministic generator (SplitMix64) for levels.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    pub fn next_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// Slot value of an empty link in [`MemGraph`].
const NO_LINK: u32 = u32::MAX;
/// Locks guarding neighbour lists while a build links elements from several threads.
const LOCK_STRIPES: usize = 1024;

/// An HNSW graph in memory, filled by an index build and then written out as pages. Elements
/// are numbered in the order they are pushed. Vectors and levels never change once pushed;
/// neighbour lists are atomic slots, changed under a striped lock, so [`MemGraph::build`] can link
/// elements from several threads (searches read lists without locking, as in hnswlib).
pub struct MemGraph {
    pub space: Space,
    pub dims: usize,
    pub m: usize,
    pub ef_construction: usize,
    max_level: usize,
    vectors: Vec<f32>,
    levels: Vec<u8>,
    /// `2 m` slots per element.
    links0: Vec<AtomicU32>,
    /// `m` slots per upper level of each element, level 1 first.
    upper: Vec<Box<[AtomicU32]>>,
    locks: Box<[Mutex<()>]>,
    entry: Mutex<Option<(u32, usize)>>,
    /// Elements `..linked` are in the graph.
    linked: usize,
    searcher_visited: Vec<u32>,
    searcher_epoch: u32,
}

impl MemGraph {
    /// An empty graph; `max_level` caps element levels (what fits on a page).
    pub fn new(space: Space, dims: usize, m: usize, ef_construction: usize, max_level: usize) -> MemGraph {
        MemGraph {
            space,
            dims,
            m,
            ef_construction,
            max_level: max_level.min(MAX_LEVEL),
            vectors: Vec::new(),
            levels: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            entry: Mutex::new(None),
            linked: 0,
            searcher_visited: Vec::new(),
            searcher_epoch: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The bytes one element of `level` takes, for the build's memory budget.
    pub fn element_bytes(dims: usize, m: usize, level: usize) -> usize {
        dims * 4 + 1 + 2 * m * 4 + 16 + level * (m * 4) + 4
    }

    pub fn entry(&self) -> Option<(u32, usize)> {
        *self.entry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn vector(&self, id: u32) -> &[f32] {
        let i = id as usize * self.dims;
        &self.vectors[i..i + self.dims]
    }

    pub fn level(&self, id: u32) -> usize {
        self.levels[id as usize] as usize
    }

    fn slots(&self, id: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            let i = id as usize * 2 * self.m;
            &self.links0[i..i + 2 * self.m]
        } else {
            let i = (level - 1) * self.m;
            &self.upper[id as usize][i..i + self.m]
        }
    }

    fn lock(&self, id: u32) -> std::sync::MutexGuard<'_, ()> {
        self.locks[id as usize % LOCK_STRIPES].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The neighbours of `id` at `level` (up to `2 m` on level 0, `m` above).
    pub fn links(&self, id: u32, level: usize) -> impl Iterator<Item = u32> + '_ {
        self.slots(id, level).iter().map(|s| s.load(Relaxed)).take_while(|&s| s != NO_LINK)
    }

    /// Adds a prepared vector, with a level drawn from `rng`, without linking it yet (see
    /// [`MemGraph::build`]); returns its id.
    pub fn push(&mut self, v: &[f32], rng: &mut Rng) -> u32 {
        let level = random_level(rng, self.m, self.max_level);
        self.push_at_level(v, level)
    }

    pub fn push_at_level(&mut self, v: &[f32], level: usize) -> u32 {
        assert_eq!(v.len(), self.dims, "vector of the wrong dimension");
        let id = self.levels.len() as u32;
        self.vectors.extend_from_slice(v);
        self.levels.push(level.min(self.max_level) as u8);
        self.links0.extend((0..2 * self.m).map(|_| AtomicU32::new(NO_LINK)));
        self.upper.push((0..level.min(self.max_level) * self.m).map(|_| AtomicU32::new(NO_LINK)).collect());
        id
    }

    /// Adds a prepared vector and links it at once; returns its id.
    pub fn insert(&mut self, v: &[f32], rng: &mut Rng) -> u32 {
        let id = self.push(v, rng);
        self.build(1, || false);
        id
    }

    /// Links every pushed element not yet in the graph, with `threads` threads taking elements
    /// in order. The calling thread does no graph work when `threads > 1`: it calls `cancel`
    /// every few milliseconds (with one thread, every 256 elements) and stops the build when it
    /// returns true. Returns false when stopped; the graph must then be dropped. Only the
    /// calling thread ever runs `cancel`.
    pub fn build(&mut self, threads: usize, mut cancel: impl FnMut() -> bool) -> bool {
        let n = self.len();
        if self.linked >= n {
            return true;
        }
        if self.entry().is_none() {
            let first = self.linked as u32;
            *self.entry.lock().unwrap_or_else(|e| e.into_inner()) = Some((first, self.level(first)));
            self.linked += 1;
        }
        let next = AtomicUsize::new(self.linked);
        let stop = AtomicBool::new(false);
        let finished = AtomicUsize::new(0);
        let this = &*self;
        let threads = threads.clamp(1, 64).min(n - self.linked);
        let work = |check: &mut dyn FnMut() -> bool| {
            let mut s = Searcher { g: this, visited: vec![0; n], epoch: 0 };
            let mut count = 0usize;
            loop {
                count += 1;
                if stop.load(Relaxed) || (count.is_multiple_of(256) && check()) {
                    stop.store(true, Relaxed);
                    break;
                }
                let id = next.fetch_add(1, Relaxed);
                if id >= n {
                    break;
                }
                this.link_element(&mut s, id as u32);
            }
            finished.fetch_add(1, Relaxed);
        };
        if threads <= 1 {
            work(&mut cancel);
        } else {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        block_signals();
                        work(&mut || false)
                    });
                }
                while finished.load(Relaxed) < threads {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    if cancel() {
                        stop.store(true, Relaxed);
                    }
                }
            });
        }
        if stop.load(Relaxed) {
            return false;
        }
        self.linked = n;
        true
    }

    /// Finds the neighbours of element `id` and links it both ways.
    fn link_element(&self, s: &mut Searcher<'_>, id: u32) {
        let level = self.level(id);
        let Some((entry, entry_level)) = self.entry() else { return };
        let q = self.vector(id);
        let space = self.space;
        let chosen = find_neighbors(
            s,
            q,
            entry,
            entry_level,
            level,
            self.m,
            self.ef_construction,
            |_, n| n != id,
            |s, a, b| space.distance(s.g.vector(a), s.g.vector(b)),
        );
        {
            let _guard = self.lock(id);
            for (l, list) in chosen.iter().enumerate() {
                for (slot, s) in self.slots(id, l).iter().zip(list) {
                    slot.store(s.id, Relaxed);
                }
            }
        }
        for (l, list) in chosen.iter().enumerate() {
            for s in list {
                self.link(s.id, l, id, s.dist);
            }
        }
        if level > entry_level {
            let mut e = self.entry.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none_or(|(_, el)| level > el) {
                *e = Some((id, level));
            }
        }
    }

    /// Adds `new` to the links of `id` at `level`, pruning with the heuristic when full.
    fn link(&self, id: u32, level: usize, new: u32, dist: f32) {
        let _guard = self.lock(id);
        let slots = self.slots(id, level);
        let current: Vec<u32> = slots.iter().map(|s| s.load(Relaxed)).take_while(|&s| s != NO_LINK).collect();
        if current.contains(&new) {
            return;
        }
        if current.len() < slots.len() {
            slots[current.len()].store(new, Relaxed);
            return;
        }
        let base = self.vector(id);
        let mut cands: Vec<Scored<u32>> =
            current.iter().map(|&n| Scored { dist: self.space.distance(base, self.vector(n)), id: n }).collect();
        cands.push(Scored { dist, id: new });
        cands.sort();
        let kept = select_neighbors(&cands, slots.len(), |a, b| self.space.distance(self.vector(a), self.vector(b)));
        for (i, slot) in slots.iter().enumerate() {
            slot.store(kept.get(i).map_or(NO_LINK, |k| k.id), Relaxed);
        }
    }

    /// Links every element that no path from the entry point reaches (the neighbour heuristic
    /// can prune away all links to an element) from its nearest reachable element. Returns how
    /// many needed a link.
    pub fn connect_unreachable(&mut self) -> usize {
        let mut fixed = 0;
        for _ in 0..16 {
            let orphans = self.unreachable();
            if orphans.is_empty() {
                break;
            }
            for u in orphans {
                let q = self.vector(u).to_vec();
                let found = self.search(&q, self.ef_construction);
                // Prefer a near element with a free slot: replacing a link could cut off another.
                let has_room = |id: u32| self.slots(id, 0).iter().any(|s| s.load(Relaxed) == NO_LINK);
                let with_room = found.iter().find(|s| s.id != u && has_room(s.id));
                if let Some(r) = with_room.or_else(|| found.iter().find(|s| s.id != u)) {
                    self.force_link(r.id, u);
                    fixed += 1;
                }
            }
        }
        fixed
    }

    /// Elements no path from the entry point reaches.
    pub fn unreachable(&self) -> Vec<u32> {
        let Some((entry, _)) = self.entry() else { return Vec::new() };
        let n = self.linked.min(self.len());
        let mut reached = vec![false; self.len()];
        reach(
            entry,
            |x| !std::mem::replace(&mut reached[x as usize], true),
            |id, out| out.extend((0..=self.level(id)).flat_map(|l| self.links(id, l))),
        );
        (0..n as u32).filter(|&i| !reached[i as usize]).collect()
    }

    /// Adds `new` to the level-0 links of `id`, replacing the farthest link when full.
    fn force_link(&self, id: u32, new: u32) {
        if self.links(id, 0).any(|n| n == new) {
            return;
        }
        let slots = self.slots(id, 0);
        if let Some(free) = slots.iter().position(|s| s.load(Relaxed) == NO_LINK) {
            slots[free].store(new, Relaxed);
            return;
        }
        let base = self.vector(id);
        let far = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, self.space.distance(base, self.vector(s.load(Relaxed)))))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(i, _)| i);
        slots[far].store(new, Relaxed);
    }

    /// The `ef` nearest elements to `q` found by a graph search, nearest first.
    pub fn search(&mut self, q: &[f32], ef: usize) -> Vec<Scored<u32>> {
        let Some((e, l)) = self.entry() else { return Vec::new() };
        let mut visited = std::mem::take(&mut self.searcher_visited);
        visited.resize(self.len(), 0);
        let mut s = Searcher { g: self, visited, epoch: self.searcher_epoch };
        let found = search(&mut s, q, e, l, ef);
        let (visited, epoch) = (s.visited, s.epoch);
        self.searcher_visited = visited;
        self.searcher_epoch = epoch;
        found
    }
}

/// Keeps signals off a build thread: the process it runs in (a PostgreSQL backend) handles its
/// signals on its main thread.
fn block_signals() {
    // SAFETY: sigfillset initializes the set; pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// One thread's view of a [`MemGraph`] for searching: the graph and its own visited marks.
struct Searcher<'a> {
    g: &'a MemGraph,
    visited: Vec<u32>,
    epoch: u32,
}

impl Graph for Searcher<'_> {
    type Id = u32;

    #[inline]
    fn distance(&mut self, q: &[f32], id: u32) -> Option<f32> {
        Some(self.g.space.distance(q, self.g.vector(id)))
    }

    fn neighbors(&mut self, id: u32, level: usize, out: &mut Vec<u32>) {
        if level <= self.g.level(id) {
            out.extend(self.g.links(id, level));
        }
    }

    #[inline]
    fn visit(&mut self, id: u32) -> bool {
        let v = &mut self.visited[id as usize];
        if *v == self.epoch {
            false
        } else {
            *v = self.epoch;
            true
        }
    }

    fn clear_visited(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
    }
}

/// The exact `k` nearest of `vectors` to `q` by brute force, nearest first: the reference for
/// recall and the scan of partitions too small for a graph.
pub fn exact_nearest(space: &Space, q: &[f32], vectors: &[Vec<f32>], k: usize) -> Vec<Scored<u32>> {
    let mut all: Vec<Scored<u32>> =
        vectors.iter().enumerate().map(|(i, v)| Scored { dist: space.distance(q, v), id: i as u32 }).collect();
    all.sort();
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` points around 10 centres (fixed by `dims`), varying along 6 hidden directions, the
    /// way embeddings have a low intrinsic dimension. `seed` picks the points.
    fn clustered(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut shape = Rng::new(dims as u64);
        let uniform = |r: &mut Rng| r.next_f64() as f32 * 2.0 - 1.0;
        let centers: Vec<Vec<f32>> = (0..10).map(|_| (0..dims).map(|_| uniform(&mut shape)).collect()).collect();
        let directions: Vec<Vec<f32>> =
            (0..6).map(|_| (0..dims).map(|_| uniform(&mut shape) * 0.3).collect()).collect();
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|i| {
                let mut v = centers[i % centers.len()].clone();
                for d in &directions {
                    let w = uniform(&mut rng);
                    v.iter_mut().zip(d).for_each(|(x, y)| *x += w * y);
                }
                v.iter_mut().for_each(|x| *x += uniform(&mut rng) * 0.01);
                v
            })
            .collect()
    }

    fn recall(metric: Metric) -> f64 {
        let space = Space::new(metric);
        let data: Vec<Vec<f32>> = clustered(3000, 32, 7).iter().map(|v| metric.prepare(v).unwrap()).collect();
        let mut g = MemGraph::new(space, 32, 8, 64, MAX_LEVEL);
        let mut rng = Rng::new(1);
        for v in &data {
            g.insert(v, &mut rng);
        }
        let queries: Vec<Vec<f32>> = clustered(50, 32, 99).iter().map(|v| metric.prepare(v).unwrap()).collect();
        let mut hits = 0;
        for q in &queries {
            let truth: Vec<u32> = exact_nearest(&space, q, &data, 10).iter().map(|s| s.id).collect();
            let found: Vec<u32> = g.search(q, 40).iter().take(10).map(|s| s.id).collect();
            hits += found.iter().filter(|id| truth.contains(id)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    #[test]
    fn recall_is_high_for_every_metric() {
        for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
            let r = recall(metric);
            assert!(r >= 0.95, "{metric:?}: recall {r}");
        }
    }

    #[test]
    fn a_build_on_several_threads_has_the_same_quality() {
        let space = Space::new(Metric::L2);
        let data = clustered(4000, 32, 3);
        let mut g = MemGraph::new(space, 32, 8, 64, MAX_LEVEL);
        let mut rng = Rng::new(5);
        for v in &data {
            g.push(v, &mut rng);
        }
        assert!(g.build(4, || false));
        g.connect_unreachable();
        assert!(g.unreachable().is_empty());
        let queries = clustered(50, 32, 77);
        let mut hits = 0;
        for q in &queries {
            let truth: Vec<u32> = exact_nearest(&space, q, &data, 10).iter().map(|s| s.id).collect();
            hits += g.search(q, 40).iter().take(10).filter(|s| truth.contains(&s.id)).count();
        }
        let r = hits as f64 / 500.0;
        assert!(r >= 0.95, "recall {r}");
        // A stop request ends a build early.
        let mut h = MemGraph::new(space, 32, 8, 64, MAX_LEVEL);
        for v in &data {
            h.push(v, &mut rng);
        }
        assert!(!h.build(2, || true));
        let mut h = MemGraph::new(space, 32, 8, 64, MAX_LEVEL);
        for v in &data {
            h.push(v, &mut rng);
        }
        assert!(!h.build(1, || true));
    }

    /// A graph of points on a line, each linked to the 3 on either side, element 7 unreadable;
    /// `batched` scores neighbours through its own `distances` (in reverse, then put in order).
    struct LineGraph {
        batched: bool,
        batches: Vec<usize>,
        visited: Vec<bool>,
    }

    impl Graph for LineGraph {
        type Id = usize;

        fn distance(&mut self, q: &[f32], id: usize) -> Option<f32> {
            (id != 7).then(|| (q[0] - id as f32).powi(2))
        }

        fn distances(&mut self, q: &[f32], ids: &[usize], out: &mut Vec<Option<f32>>) {
            if !self.batched {
                out.clear();
                for &id in ids {
                    let d = self.distance(q, id);
                    out.push(d);
                }
                return;
            }
            self.batches.push(ids.len());
            let mut rev: Vec<Option<f32>> = ids.iter().rev().map(|&id| self.distance(q, id)).collect();
            rev.reverse();
            *out = rev;
        }

        fn neighbors(&mut self, id: usize, _level: usize, out: &mut Vec<usize>) {
            out.extend((id.saturating_sub(3)..=(id + 3).min(99)).filter(|&n| n != id));
        }

        fn visit(&mut self, id: usize) -> bool {
            !std::mem::replace(&mut self.visited[id], true)
        }

        fn clear_visited(&mut self) {
            self.visited.iter_mut().for_each(|v| *v = false);
        }
    }

    #[test]
    fn neighbours_scored_in_one_batch_give_the_same_search() {
        let run = |batched: bool| {
            let mut g = LineGraph { batched, batches: Vec::new(), visited: vec![false; 100] };
            let q = [8.4];
            let entry = [Scored { dist: g.distance(&q, 90).unwrap(), id: 90 }];
            (search_layer(&mut g, &q, &entry, 6, 0), g.batches)
        };
        let (plain, _) = run(false);
        let (batched, batches) = run(true);
        assert_eq!(plain, batched);
        assert!(batches.iter().any(|&n| n > 1), "{batches:?}");
        let ids: Vec<usize> = batched.iter().map(|s| s.id).collect();
        // The unreadable element is skipped, the rest are the nearest.
        assert_eq!(ids, vec![8, 9, 10, 6, 11, 5]);
    }

    #[test]
    fn search_returns_sorted_distinct_results() {
        let space = Space::new(Metric::L2);
        let mut g = MemGraph::new(space, 4, 4, 16, MAX_LEVEL);
        let mut rng = Rng::new(3);
        for i in 0..200 {
            g.insert(&[i as f32, 0.0, 0.0, 0.0], &mut rng);
        }
        let found = g.search(&[50.2, 0.0, 0.0, 0.0], 20);
        assert_eq!(found.len(), 20);
        assert_eq!(found[0].id, 50);
        assert!(found.windows(2).all(|w| w[0] <= w[1]));
        let mut ids: Vec<u32> = found.iter().map(|s| s.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20);
    }

    #[test]
    fn reach_follows_links_once_and_skips_what_visit_refuses() {
        // 0 -> 1 -> 2 -> 0 (a cycle), 2 -> 3 (refused: deleted), 3 -> 4, 5 alone.
        let links: [&[usize]; 6] = [&[1], &[2], &[0, 3], &[4], &[], &[0]];
        let mut reached = [false; 6];
        let mut expanded = Vec::new();
        reach(
            0usize,
            |x| x != 3 && !std::mem::replace(&mut reached[x], true),
            |id, out| {
                expanded.push(id);
                out.extend_from_slice(links[id]);
            },
        );
        assert_eq!(reached, [true, true, true, false, false, false]);
        expanded.sort();
        assert_eq!(expanded, [0, 1, 2], "each reached element is expanded once");
        // An entry that visit refuses reaches nothing.
        let mut none = false;
        reach(3usize, |_| false, |_, _: &mut Vec<usize>| none = true);
        assert!(!none);
    }

    #[test]
    fn every_element_is_reachable_with_a_large_ef() {
        let space = Space::new(Metric::Cosine);
        let data: Vec<Vec<f32>> = clustered(500, 16, 5).iter().map(|v| Metric::Cosine.prepare(v).unwrap()).collect();
        let mut g = MemGraph::new(space, 16, 4, 32, MAX_LEVEL);
        let mut rng = Rng::new(11);
        for v in &data {
            g.insert(v, &mut rng);
        }
        assert_eq!(g.search(&data[0], 1000).len(), 500);
    }

    #[test]
    fn connecting_leaves_nothing_unreachable() {
        let space = Space::new(Metric::L2);
        // Points on a line with many duplicates prune links hard.
        let data: Vec<Vec<f32>> = (0..2000).map(|i| vec![(i % 50) as f32, 0.0]).collect();
        let mut g = MemGraph::new(space, 2, 4, 8, MAX_LEVEL);
        let mut rng = Rng::new(8);
        for v in &data {
            g.insert(v, &mut rng);
        }
        g.connect_unreachable();
        assert!(g.unreachable().is_empty());
    }

    #[test]
    fn links_stay_within_capacity_and_never_point_to_self() {
        let space = Space::new(Metric::L2);
        let data = clustered(1000, 8, 2);
        let mut g = MemGraph::new(space, 8, 4, 16, MAX_LEVEL);
        let mut rng = Rng::new(4);
        for v in &data {
            g.insert(v, &mut rng);
        }
        for id in 0..g.len() as u32 {
            for l in 0..=g.level(id) {
                let links: Vec<u32> = g.links(id, l).collect();
                assert!(links.len() <= if l == 0 { 8 } else { 4 });
                assert!(!links.contains(&id));
                assert!(links.iter().all(|&n| g.level(n) >= l), "link to an element without level {l}");
            }
        }
    }

    #[test]
    fn heuristic_skips_candidates_shadowed_by_a_kept_one() {
        // Base at 0; candidates at 1, 1.1 (shadowed by 1) and -1 (another direction).
        let pos = [1.0f32, 1.1, -1.0];
        let cands =
            vec![Scored { dist: 1.0, id: 0u32 }, Scored { dist: 1.0, id: 2u32 }, Scored { dist: 1.1, id: 1u32 }];
        let mut sorted = cands.clone();
        sorted.sort();
        let kept = select_neighbors(&sorted, 3, |a, b| (pos[a as usize] - pos[b as usize]).abs());
        let ids: Vec<u32> = kept.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![0, 2]);
    }

    #[test]
    fn cosine_refuses_zero_vectors_and_normalizes() {
        assert!(Metric::Cosine.prepare(&[0.0, 0.0]).is_none());
        let v = Metric::Cosine.prepare(&[3.0, 4.0]).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let s = Space::new(Metric::Cosine);
        assert!((s.sql_distance(s.distance(&v, &v))).abs() < 1e-6);
    }

    #[test]
    fn levels_follow_the_distribution() {
        let mut rng = Rng::new(9);
        let n = 100_000;
        let above = (0..n).filter(|_| random_level(&mut rng, 16, MAX_LEVEL) >= 1).count();
        // P(level >= 1) = 1/m.
        let p = above as f64 / n as f64;
        assert!((p - 1.0 / 16.0).abs() < 0.005, "{p}");
    }
}
