//! The page format of a `sutra_hnsw` index and the buffer-level operations on it.
//!
//! ```text
//! block 0      metapage: parameters, first and last directory page, build id, the shared
//!              page new small partitions fill
//! directory    a chain of pages of partition entries: key, entry point, first and last
//!              element page, the shared page of its first elements, live element count;
//!              entries never move
//! elements     a partition's own chain of pages of element tuples
//! shared       pages of the elements of several small partitions, each element compact (half
//!              the link slots) after an owner tag (its partition's directory entry); a partition
//!              keeps its first elements on one shared page while they take at most half a page,
//!              with room kept for 4, and continues on its own chain when it grows
//! ```
//!
//! Format version 2 added shared pages; version 1 indexes (no shared pages) are read as they
//! are, and their inserts keep to own pages.
//!
//! An element tuple is `flags u8, level u8, heap tid (6 bytes), vector (4 d bytes), links`:
//! `2 m` link slots for level 0 and `m` for each level above, each slot a 6-byte element id
//! (block u32, offset u16, little-endian; block `u32::MAX` when empty). The bytes of element
//! tuples and directory entries are `sutra_core::hnsw_tuple`'s, unit-tested there. Element
//! tuples never move and never change size, only their flags and links change; VACUUM deletes
//! them (the line pointer stays, so other elements keep their ids).
//!
//! Every change goes through GenericXLog, so the index is crash-safe and replicates. Locking
//! rules, which keep the index free of deadlocks: at most one element page is locked at a time,
//! except when an append links a new page (directory page, then the old last page, then the new
//! page, in that order); a directory page is only ever locked before element pages; the metapage
//! is locked last. Each buffer lock is held only for copying bytes in or out: no code that can
//! raise an error runs under it except PostgreSQL's own buffer functions.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::HashMap;

use crate::error::{raise, raise_detail};
pub use sutra_core::hnsw_tuple::{
    decode_dir, element_size, encode_dir, links_offset, write_slots, DirHead, ElementView, Key, Tid, DIR_HEAD_BYTES,
    FLAG_DELETED, LINK_BYTES, NO_BLOCK, OWNER_BYTES,
};
use sutra_core::hnsw_tuple::{encode_owner, split_owner};

pub const META_BLOCK: u32 = 0;
const MAGIC: u32 = 0x5354_4857;
const VERSION: u32 = 2;
/// The format before shared pages, still read.
const VERSION_OWN_PAGES_ONLY: u32 = 1;
const PAGE_ID: u16 = 0xFF8A;
pub const KIND_META: u16 = 1;
pub const KIND_DIR: u16 = 2;
pub const KIND_ELEMENTS: u16 = 3;
pub const KIND_SHARED: u16 = 4;

/// Heavyweight page-lock tags (not real blocks): inserts hold [`GRAPH_LOCK`] shared while they
/// link, VACUUM takes it exclusively to wait them out before deleting elements;
/// [`DIRECTORY_LOCK`] serializes the creation of partitions.
pub const GRAPH_LOCK: u32 = 0;
pub const DIRECTORY_LOCK: u32 = 1;

const PAGE_HEADER: usize = 24;
const SPECIAL: usize = 8;
const LINE_POINTER: usize = 4;
/// Bytes of a page available to items and their line pointers.
pub const PAGE_ROOM: usize = pg_sys::BLCKSZ as usize - PAGE_HEADER - SPECIAL;

pub fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// The room an item of `size` bytes takes on a page, line pointer included.
pub fn item_room(size: usize) -> usize {
    maxalign(size) + LINE_POINTER
}

/// The special space at the end of every page.
#[repr(C)]
#[derive(Clone, Copy)]
struct Opaque {
    next: u32,
    kind: u16,
    page_id: u16,
}

/// The kind of the partition key column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    None = 0,
    Uuid = 1,
    Int4 = 2,
    Int8 = 3,
    Text = 4,
}

impl KeyKind {
    pub fn from_code(c: u8) -> KeyKind {
        match c {
            1 => KeyKind::Uuid,
            2 => KeyKind::Int4,
            3 => KeyKind::Int8,
            4 => KeyKind::Text,
            _ => KeyKind::None,
        }
    }
}

/// The metapage's contents.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    magic: u32,
    version: u32,
    pub dims: u32,
    pub m: u16,
    pub ef_construction: u16,
    pub metric: u8,
    pub key_kind: u8,
    _pad: u16,
    pub dir_head: u32,
    pub dir_tail: u32,
    pub partitions: u32,
    pub flat_limit: u32,
    pub build_id: u64,
    /// The shared page new small partitions fill, 0 for none (and in version 1 metapages, whose
    /// bytes here are zero).
    pub shared_tail: u32,
}

impl Meta {
    pub fn new(dims: usize, m: usize, ef_construction: usize, metric: u8, key_kind: KeyKind, build_id: u64) -> Meta {
        Meta {
            magic: MAGIC,
            version: VERSION,
            dims: dims as u32,
            m: m as u16,
            ef_construction: ef_construction as u16,
            metric,
            key_kind: key_kind as u8,
            _pad: 0,
            dir_head: 1,
            dir_tail: 1,
            partitions: 0,
            flat_limit: super::FLAT_LIMIT as u32,
            build_id,
            shared_tail: 0,
        }
    }

    pub fn key_kind(&self) -> KeyKind {
        KeyKind::from_code(self.key_kind)
    }

    pub fn space(&self) -> sutra_core::hnsw::Space {
        sutra_core::hnsw::Space::new(
            sutra_core::hnsw::Metric::from_code(self.metric).unwrap_or(sutra_core::hnsw::Metric::L2),
        )
    }

    /// The shape of the index this metapage describes: what inserts need, without the catalog
    /// lookups of [`super::index_shape`].
    pub fn shape(&self) -> super::IndexShape {
        let key_kind = self.key_kind();
        super::IndexShape {
            key_kind,
            vector_column: usize::from(key_kind != KeyKind::None),
            dims: self.dims as usize,
            metric: self.space().metric,
            m: self.m as usize,
            ef_construction: self.ef_construction as usize,
        }
    }
}

/// The highest level whose element still fits on a page, or `None` when not even level 0 does.
pub fn max_level_fitting(dims: usize, m: usize) -> Option<usize> {
    if item_room(element_size(dims, m, 0)) > PAGE_ROOM {
        return None;
    }
    let mut level = 0;
    while level < sutra_core::hnsw::MAX_LEVEL && item_room(element_size(dims, m, level + 1)) <= PAGE_ROOM {
        level += 1;
    }
    Some(level)
}

/// A directory entry read out of its page.
#[derive(Clone, Debug)]
pub struct Partition {
    pub at: Tid,
    pub head: DirHead,
    pub key: Key,
}

/// A hasher for ids packed in one integer (an element's block and offset, a relation and a
/// block): one multiplication, enough for keys that are not chosen by an adversary.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
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

/// How many blocks [`RECENT`] remembers before it starts over (a few hundred kB).
const RECENT_MAX: usize = 1 << 16;

thread_local! {
    /// The buffer each index block (relation file number, block) was in when this backend last
    /// pinned it: a hint for `ReadRecentBuffer`, never trusted without its check.
    static RECENT: RefCell<HashMap<u64, pg_sys::Buffer, std::hash::BuildHasherDefault<IdHasher>>> =
        RefCell::new(HashMap::default());
}

/// A pinned and locked buffer, released when dropped.
pub struct Locked {
    pub buf: pg_sys::Buffer,
}

impl Locked {
    /// Reads `block` of the main fork and locks it (`exclusive` or shared).
    pub fn read(index: pg_sys::Relation, block: u32, exclusive: bool) -> Locked {
        Self::read_fork(index, pg_sys::ForkNumber::MAIN_FORKNUM, block, exclusive)
    }

    pub fn read_fork(index: pg_sys::Relation, fork: pg_sys::ForkNumber::Type, block: u32, exclusive: bool) -> Locked {
        // SAFETY: index is an open relation; ReadBufferExtended raises an ERROR for a block past
        // the end, and the lock mode is one of the two buffer lock modes.
        unsafe {
            let buf = if fork == pg_sys::ForkNumber::MAIN_FORKNUM {
                Self::pin(index, block)
            } else {
                pg_sys::ReadBufferExtended(index, fork, block, pg_sys::ReadBufferMode::RBM_NORMAL, std::ptr::null_mut())
            };
            pg_sys::LockBuffer(
                buf,
                if exclusive { pg_sys::BUFFER_LOCK_EXCLUSIVE } else { pg_sys::BUFFER_LOCK_SHARE } as i32,
            );
            Locked { buf }
        }
    }

    /// Adds a page at the end of the fork, locked exclusively and not yet initialized.
    pub fn extend(index: pg_sys::Relation, fork: pg_sys::ForkNumber::Type) -> Locked {
        // SAFETY: the relation extension lock serializes extension with other backends (as every
        // index AM does); P_NEW returns a new zeroed buffer, locked before the extension lock is
        // released so nobody else can take the same block.
        unsafe {
            let local = (*(*index).rd_rel).relpersistence == pg_sys::RELPERSISTENCE_TEMP as i8;
            if !local {
                pg_sys::LockRelationForExtension(index, pg_sys::ExclusiveLock as i32);
            }
            let buf = pg_sys::ReadBufferExtended(
                index,
                fork,
                NO_BLOCK,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                std::ptr::null_mut(),
            );
            pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
            if !local {
                pg_sys::UnlockRelationForExtension(index, pg_sys::ExclusiveLock as i32);
            }
            Locked { buf }
        }
    }

    /// Pins `block` of the main fork without locking it (see [`Locked::lock`]). The buffer that
    /// held the block when this backend last read it is tried first (`ReadRecentBuffer`, which
    /// pins it only if it still holds that block): a search reads thousands of pages, and the
    /// lookup in the shared buffer table it saves is the costliest part of reading one.
    pub fn pin(index: pg_sys::Relation, block: u32) -> pg_sys::Buffer {
        // SAFETY: index is an open relation; ReadRecentBuffer checks the buffer's tag under its
        // header lock before pinning it, so a stale or colliding entry only fails the check;
        // ReadBufferExtended raises an ERROR for a block past the end. The pin is given back by
        // the `Locked` made of it, or at transaction abort.
        unsafe {
            let node = (*index).rd_node;
            let key = ((node.relNode.to_u32() as u64) << 32) | block as u64;
            if let Some(recent) = RECENT.with(|r| r.borrow().get(&key).copied()) {
                if pg_sys::ReadRecentBuffer(node, pg_sys::ForkNumber::MAIN_FORKNUM, block, recent) {
                    return recent;
                }
            }
            let buf = pg_sys::ReadBufferExtended(
                index,
                pg_sys::ForkNumber::MAIN_FORKNUM,
                block,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                std::ptr::null_mut(),
            );
            RECENT.with(|r| {
                let mut r = r.borrow_mut();
                if r.len() >= RECENT_MAX {
                    r.clear();
                }
                r.insert(key, buf);
            });
            buf
        }
    }

    /// Share-locks a buffer [`Locked::pin`] pinned; the guard unlocks and unpins it.
    pub fn lock(buf: pg_sys::Buffer) -> Locked {
        // SAFETY: buf is pinned by this backend and not locked by it.
        unsafe { pg_sys::LockBuffer(buf, pg_sys::BUFFER_LOCK_SHARE as i32) };
        Locked { buf }
    }

    pub fn block(&self) -> u32 {
        // SAFETY: a valid pinned buffer.
        unsafe { pg_sys::BufferGetBlockNumber(self.buf) }
    }

    pub fn page(&self) -> pg_sys::Page {
        // SAFETY: a valid pinned buffer.
        unsafe { pg_sys::BufferGetPage(self.buf) }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: the buffer is pinned and locked by this guard. When an ERROR is raised, pgrx
        // unwinds the Rust frames before PostgreSQL's abort processing runs, so here the buffer
        // is still pinned and locked by this backend.
        unsafe { pg_sys::UnlockReleaseBuffer(self.buf) }
    }
}

/// A GenericXLog record under construction: pages registered in it are modified through the
/// returned copies and written, WAL-logged, by [`Wal::finish`].
pub struct Wal {
    state: *mut pg_sys::GenericXLogState,
}

impl Wal {
    pub fn start(index: pg_sys::Relation) -> Wal {
        // SAFETY: index is an open relation; the state lives in the current memory context.
        Wal { state: unsafe { pg_sys::GenericXLogStart(index) } }
    }

    /// Registers a locked buffer; `fresh` pages are logged as full images (new pages).
    pub fn register(&mut self, b: &Locked, fresh: bool) -> pg_sys::Page {
        // SAFETY: at most 4 buffers per record (callers register at most 3); the buffer is
        // exclusively locked by the caller.
        unsafe {
            pg_sys::GenericXLogRegisterBuffer(
                self.state,
                b.buf,
                if fresh { pg_sys::GENERIC_XLOG_FULL_IMAGE as i32 } else { 0 },
            )
        }
    }

    pub fn finish(mut self) {
        // SAFETY: the state came from GenericXLogStart and is finished once.
        unsafe { pg_sys::GenericXLogFinish(self.state) };
        self.state = std::ptr::null_mut();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if !self.state.is_null() {
            // SAFETY: an unfinished record is abandoned: the registered pages stay unchanged.
            unsafe { pg_sys::GenericXLogAbort(self.state) };
        }
    }
}

/// Initializes a page of `kind` (on a page copy from [`Wal::register`]).
pub fn init_page(page: pg_sys::Page, kind: u16) {
    // SAFETY: page points to a full page buffer; PageInit formats it with SPECIAL bytes of
    // special space, which Opaque fills exactly.
    unsafe {
        pg_sys::PageInit(page, pg_sys::BLCKSZ as usize, SPECIAL);
        let o = pg_sys::PageGetSpecialPointer(page) as *mut Opaque;
        *o = Opaque { next: NO_BLOCK, kind, page_id: PAGE_ID };
    }
}

fn opaque(page: pg_sys::Page) -> Option<Opaque> {
    // SAFETY: page is a full page; a page whose special space is not ours (new, zeroed, or
    // another format) is reported as None instead of being trusted.
    unsafe {
        if pg_sys::PageIsNew(page) {
            return None;
        }
        let header = page as *const pg_sys::PageHeaderData;
        if (*header).pd_special as usize != pg_sys::BLCKSZ as usize - SPECIAL {
            return None;
        }
        let o = *(pg_sys::PageGetSpecialPointer(page) as *const Opaque);
        (o.page_id == PAGE_ID).then_some(o)
    }
}

/// The page's kind, or `None` when it is not a page of this format.
pub fn page_kind(page: pg_sys::Page) -> Option<u16> {
    opaque(page).map(|o| o.kind)
}

pub fn next_block(page: pg_sys::Page) -> u32 {
    opaque(page).map_or(NO_BLOCK, |o| o.next)
}

pub fn set_next_block(page: pg_sys::Page, next: u32) {
    // SAFETY: an initialized page of this format (callers initialized or checked it).
    unsafe { (*(pg_sys::PageGetSpecialPointer(page) as *mut Opaque)).next = next };
}

/// Adds an item; returns its offset, or `None` when it does not fit.
pub fn add_item(page: pg_sys::Page, item: &[u8]) -> Option<u16> {
    // SAFETY: page is a locked, registered page copy; PageAddItemExtended checks the room and
    // returns InvalidOffsetNumber (0) instead of writing past it.
    let off = unsafe { pg_sys::PageAddItemExtended(page, item.as_ptr() as pg_sys::Item, item.len(), 0, 0) };
    (off != 0).then_some(off)
}

/// The bytes of item `offset`, or `None` when the line pointer is out of range or not in use.
pub fn item<'a>(page: pg_sys::Page, offset: u16) -> Option<&'a [u8]> {
    // SAFETY: page is a locked page; the offset is checked against the line pointer count and
    // the item's extent against the page before the slice is made.
    unsafe {
        let max = pg_sys::PageGetMaxOffsetNumber(page);
        if offset == 0 || offset > max {
            return None;
        }
        let id = pg_sys::PageGetItemId(page, offset);
        if (*id).lp_flags() != pg_sys::LP_NORMAL {
            return None;
        }
        let (start, len) = ((*id).lp_off() as usize, (*id).lp_len() as usize);
        if start + len > pg_sys::BLCKSZ as usize || len == 0 {
            return None;
        }
        Some(std::slice::from_raw_parts((page as *const u8).add(start), len))
    }
}

/// Asks the CPU to start loading the cache lines of page `buf` that reading item `offset` will
/// touch: the page header with the line pointer, the special space, and the item's first `bytes`
/// (what the reader needs of it; after an owner tag on a shared page). Only a
/// hint: the page is pinned but not locked, so the line pointer read here may be changing; an
/// address it yields is never dereferenced, and prefetching any address is harmless.
pub fn prefetch_item(buf: pg_sys::Buffer, offset: u16, stage: PrefetchStage, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: buf is pinned, so its page stays in shared buffers at this address; prefetch
    // instructions never fault. The line pointer is read with a volatile load of four bytes
    // inside the page (offset bounded by the page), as a hint only.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let page = pg_sys::BufferGetPage(buf) as *const u8;
        let slot = std::mem::size_of::<pg_sys::PageHeaderData>() + 4 * (offset.max(1) as usize - 1);
        if slot + 4 > pg_sys::BLCKSZ as usize {
            return;
        }
        match stage {
            PrefetchStage::Header => {
                _mm_prefetch::<_MM_HINT_T0>(page as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(page.add(slot) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(page.add(pg_sys::BLCKSZ as usize - 8) as *const i8);
            }
            PrefetchStage::Item => {
                let raw = std::ptr::read_volatile(page.add(slot) as *const u32);
                // ItemIdData: lp_off in the low 15 bits, lp_len in the high 15.
                let (start, len) = ((raw & 0x7fff) as usize, (raw >> 17) as usize);
                let end = (start + len.min(bytes + OWNER_BYTES)).min(pg_sys::BLCKSZ as usize);
                let mut at = start & !63;
                while at < end {
                    _mm_prefetch::<_MM_HINT_T0>(page.add(at) as *const i8);
                    at += 64;
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (buf, offset, stage, bytes);
}

/// What [`prefetch_item`] loads: the lines that locate the item, or (once those have arrived)
/// the item's own.
#[derive(Clone, Copy)]
pub enum PrefetchStage {
    Header,
    Item,
}

/// Mutable bytes of item `offset` of a registered page copy.
pub fn item_mut<'a>(page: pg_sys::Page, offset: u16) -> Option<&'a mut [u8]> {
    item(page, offset).map(|s| {
        // SAFETY: the page copy is ours alone until the record is finished.
        unsafe { std::slice::from_raw_parts_mut(s.as_ptr() as *mut u8, s.len()) }
    })
}

pub fn max_offset(page: pg_sys::Page) -> u16 {
    // SAFETY: a locked page.
    unsafe { pg_sys::PageGetMaxOffsetNumber(page) }
}

impl Meta {
    /// Whether new small partitions may go to shared pages (format version 2 and later).
    pub fn shares_pages(&self) -> bool {
        self.version >= VERSION
    }
}

/// The bytes of element `offset` of an element page, or of a shared page when the element
/// belongs to the partition whose directory entry is `owner`; `None` otherwise (another
/// partition's element, not an element page, no such item).
pub fn element_item<'a>(page: pg_sys::Page, offset: u16, owner: Tid) -> Option<&'a [u8]> {
    match page_kind(page)? {
        KIND_ELEMENTS => item(page, offset),
        KIND_SHARED => split_owner(item(page, offset)?).filter(|(o, _)| *o == owner).map(|(_, e)| e),
        _ => None,
    }
}

/// [`element_item`] of a registered page copy, for changing the element's flags and links.
pub fn element_item_mut<'a>(page: pg_sys::Page, offset: u16, owner: Tid) -> Option<&'a mut [u8]> {
    let kind = page_kind(page)?;
    let bytes = item_mut(page, offset)?;
    match kind {
        KIND_ELEMENTS => Some(bytes),
        KIND_SHARED => {
            let (o, _) = split_owner(bytes)?;
            (o == owner).then(|| &mut bytes[OWNER_BYTES..])
        }
        _ => None,
    }
}

/// The item of an element of partition `owner` on a shared page: its owner tag, then `tuple`.
pub fn shared_item(owner: Tid, tuple: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OWNER_BYTES + tuple.len());
    out.extend_from_slice(&encode_owner(owner));
    out.extend_from_slice(tuple);
    out
}

/// Whether a partition of `count` elements of `room` bytes each (owner tags included) keeps
/// them on a shared page: while they take at most half a page.
pub fn fits_shared(count: usize, room: usize) -> bool {
    count.saturating_mul(room) <= PAGE_ROOM / 2
}

/// Elements of room each partition on a shared page is promised: a partition placed there with
/// fewer keeps the room for the rest, so that tenants whose rows arrive interleaved with other
/// tenants' still find their first rows together.
pub const SHARED_RESERVE: usize = 4;

/// Whether an element of `room` bytes of partition `owner` may go on shared page `page` now:
/// it fits, and leaves the room promised to the page's partitions that have fewer than
/// [`SHARED_RESERVE`] elements there, this one included, counting `base_room` (a level-0
/// element's room) for each promised element.
pub fn shared_room_for(page: pg_sys::Page, owner: Tid, room: usize, base_room: usize) -> bool {
    let mut counts: HashMap<Tid, usize> = HashMap::new();
    for off in 1..=max_offset(page) {
        if let Some((o, _)) = item(page, off).and_then(split_owner) {
            *counts.entry(o).or_default() += 1;
        }
    }
    let mine = counts.remove(&owner).unwrap_or(0);
    let promised: usize = counts.values().map(|&n| SHARED_RESERVE.saturating_sub(n)).sum::<usize>() * base_room;
    let own = room + SHARED_RESERVE.saturating_sub(mine + 1) * base_room;
    // SAFETY: a locked page.
    let free = unsafe { pg_sys::PageGetFreeSpace(page) };
    free >= promised + own
}

/// The pages holding partition `p`'s elements: its shared page, if any, then its own chain,
/// stopping at a cycle or a foreign page.
pub fn partition_pages(index: pg_sys::Relation, p: &Partition) -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: an open relation.
    let nblocks = unsafe { pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM) };
    let shared = p.head.shared_block;
    if shared != 0 && shared != NO_BLOCK && shared < nblocks {
        let b = Locked::read(index, shared, false);
        if page_kind(b.page()) == Some(KIND_SHARED) {
            out.push(shared);
        }
    }
    let mut block = p.head.head_block;
    while block != NO_BLOCK && block < nblocks && out.len() <= nblocks as usize {
        let b = Locked::read(index, block, false);
        if page_kind(b.page()) != Some(KIND_ELEMENTS) {
            break;
        }
        out.push(block);
        block = next_block(b.page());
    }
    out
}

/// Writes the metapage and an empty first directory page into `fork` of an empty relation.
pub fn write_empty(index: pg_sys::Relation, fork: pg_sys::ForkNumber::Type, meta: &Meta) {
    let metabuf = Locked::extend(index, fork);
    let dirbuf = Locked::extend(index, fork);
    if metabuf.block() != META_BLOCK || dirbuf.block() != 1 {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "sutra_hnsw index is not empty at build");
    }
    let mut wal = Wal::start(index);
    let page = wal.register(&metabuf, true);
    init_page(page, KIND_META);
    write_meta_into(page, meta);
    let page = wal.register(&dirbuf, true);
    init_page(page, KIND_DIR);
    wal.finish();
}

/// Writes the metapage's contents into a page initialized as [`KIND_META`].
pub fn write_meta_into(page: pg_sys::Page, meta: &Meta) {
    // SAFETY: the contents area of an initialized page holds far more than a Meta; pd_lower
    // is moved past it so that full-page images keep it (the hole between pd_lower and pd_upper
    // may be left out of WAL).
    unsafe {
        let contents = pg_sys::PageGetContents(page) as *mut Meta;
        std::ptr::write_unaligned(contents, *meta);
        let header = page as *mut pg_sys::PageHeaderData;
        (*header).pd_lower = ((contents as usize - page as usize) + std::mem::size_of::<Meta>()) as u16;
    }
}

/// Reads the metapage, refusing a relation that is not a valid `sutra_hnsw` index.
pub fn read_meta(index: pg_sys::Relation) -> Meta {
    let b = Locked::read(index, META_BLOCK, false);
    let page = b.page();
    // SAFETY: a locked page; the Meta is copied out unaligned after the kind is checked.
    let meta = (page_kind(page) == Some(KIND_META))
        .then(|| unsafe { std::ptr::read_unaligned(pg_sys::PageGetContents(page) as *const Meta) });
    drop(b);
    match meta {
        Some(m) if m.magic == MAGIC && (m.version == VERSION || m.version == VERSION_OWN_PAGES_ONLY) => m,
        _ => raise_detail(
            PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
            format!("index \"{}\" is not a valid sutra_hnsw index", relation_name(index)),
            "Its metapage is missing or has an unknown version. REINDEX rebuilds it.",
        ),
    }
}

/// Applies `f` to the metapage's contents and WAL-logs the change. The caller may hold other
/// buffer locks (the metapage is always locked last).
pub fn update_meta(index: pg_sys::Relation, f: impl FnOnce(&mut Meta)) {
    let b = Locked::read(index, META_BLOCK, true);
    let mut wal = Wal::start(index);
    let page = wal.register(&b, false);
    // SAFETY: the registered copy of a locked metapage (checked by read_meta at scan start).
    unsafe {
        let p = pg_sys::PageGetContents(page) as *mut Meta;
        let mut m = std::ptr::read_unaligned(p);
        f(&mut m);
        std::ptr::write_unaligned(p, m);
    }
    wal.finish();
}

/// For tests: writes another format version into an index's metapage, as a sutra with another
/// page format would have left it.
#[cfg(any(test, feature = "pg_test"))]
pub fn set_format_version(index: pg_sys::Oid, version: u32) {
    // SAFETY: index_open raises an ERROR for a relation that is not an index; the lock is held
    // until index_close.
    unsafe {
        let rel = pg_sys::index_open(index, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        update_meta(rel, |m| m.version = version);
        pg_sys::index_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    }
}

/// The page format version this build reads and writes.
#[cfg(any(test, feature = "pg_test"))]
pub const FORMAT_VERSION: u32 = VERSION;

pub fn relation_name(index: pg_sys::Relation) -> String {
    // SAFETY: an open relation's name is a NUL-terminated NameData.
    unsafe { std::ffi::CStr::from_ptr((*(*index).rd_rel).relname.data.as_ptr()).to_string_lossy().into_owned() }
}

/// Reads the directory entry at `at`.
pub fn read_partition(index: pg_sys::Relation, at: Tid) -> Option<Partition> {
    let b = Locked::read(index, at.block, false);
    let page = b.page();
    let entry = (page_kind(page) == Some(KIND_DIR)).then(|| item(page, at.offset).and_then(decode_dir)).flatten();
    drop(b);
    entry.map(|(head, key)| Partition { at, head, key })
}

/// Changes the head of the directory entry at `at` under an exclusive lock and WAL-logs it;
/// `f` returns false to leave it unchanged.
pub fn update_partition(index: pg_sys::Relation, at: Tid, f: impl FnOnce(&mut DirHead) -> bool) {
    let b = Locked::read(index, at.block, true);
    let mut wal = Wal::start(index);
    let page = wal.register(&b, false);
    if let Some(bytes) = item_mut(page, at.offset) {
        if bytes.len() >= DIR_HEAD_BYTES {
            let mut h = DirHead::read(bytes).unwrap_or_default();
            if f(&mut h) {
                h.write(bytes);
                wal.finish();
            }
        }
    }
}

/// Every partition of the index, in directory order.
pub fn all_partitions(index: pg_sys::Relation, meta: &Meta) -> Vec<Partition> {
    let mut out = Vec::new();
    walk_directory(index, meta.dir_head, 0, |p| {
        out.push(p);
        false
    });
    out
}

/// Walks directory entries from page `block`, item after `after`; `f` returns true to stop.
/// Returns the last position seen (page, last offset).
fn walk_directory(
    index: pg_sys::Relation,
    mut block: u32,
    mut after: u16,
    mut f: impl FnMut(Partition) -> bool,
) -> (u32, u16) {
    let mut last = (block, after);
    while block != NO_BLOCK {
        let b = Locked::read(index, block, false);
        let page = b.page();
        if page_kind(page) != Some(KIND_DIR) {
            break;
        }
        let max = max_offset(page);
        let mut found = Vec::new();
        for off in after + 1..=max {
            if let Some((head, key)) = item(page, off).and_then(decode_dir) {
                found.push(Partition { at: Tid { block, offset: off }, head, key });
            }
        }
        let next = next_block(page);
        drop(b);
        last = (block, max);
        for p in found {
            if f(p) {
                return last;
            }
        }
        block = next;
        after = 0;
    }
    last
}

/// A backend's map from partition key to directory entry, per index build. Entries never move
/// within one build, so a cached place stays right; it is still checked against the key read
/// there.
struct DirCache {
    places: HashMap<Key, Tid>,
    /// How far the directory has been read: page and last offset.
    seen: (u32, u16),
}

thread_local! {
    static DIR_CACHE: RefCell<HashMap<(pg_sys::Oid, u64), DirCache>> = RefCell::new(HashMap::new());
}

/// The partition of `key`, if it exists.
pub fn find_partition(index: pg_sys::Relation, meta: &Meta, key: &Key) -> Option<Partition> {
    // SAFETY: an open relation.
    let id = (unsafe { (*index).rd_id }, meta.build_id);
    let cached = DIR_CACHE.with(|c| c.borrow().get(&id).and_then(|d| d.places.get(key).copied()));
    if let Some(at) = cached {
        if let Some(p) = read_partition(index, at) {
            if &p.key == key {
                return Some(p);
            }
        }
        DIR_CACHE.with(|c| c.borrow_mut().remove(&id));
    }
    let seen = DIR_CACHE.with(|c| c.borrow().get(&id).map(|d| d.seen)).unwrap_or((meta.dir_head, 0));
    let mut places = Vec::new();
    let mut hit = None;
    let last = walk_directory(index, seen.0, seen.1, |p| {
        places.push((p.key.clone(), p.at));
        if &p.key == key {
            hit = Some(p);
        }
        false
    });
    DIR_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 64 {
            c.clear();
        }
        let d = c.entry(id).or_insert_with(|| DirCache { places: HashMap::new(), seen: (meta.dir_head, 0) });
        if d.places.len() > 1_000_000 {
            d.places.clear();
        }
        d.places.extend(places);
        d.seen = last;
    });
    hit
}

/// The partition of `key`, created when missing.
pub fn find_or_create_partition(index: pg_sys::Relation, meta: &Meta, key: &Key) -> Partition {
    if let Some(p) = find_partition(index, meta, key) {
        return p;
    }
    // SAFETY: a heavyweight lock on an open relation, released below or at transaction end.
    unsafe { pg_sys::LockPage(index, DIRECTORY_LOCK, pg_sys::ExclusiveLock as i32) };
    let meta = read_meta(index);
    let p = match find_partition(index, &meta, key) {
        Some(p) => p,
        None => {
            let at = append_dir_entry(
                index,
                &meta,
                &encode_dir(&DirHead { head_block: NO_BLOCK, tail_block: NO_BLOCK, ..Default::default() }, key),
            );
            update_meta(index, |m| m.partitions += 1);
            read_partition(index, at).unwrap_or_else(|| {
                raise(PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED, "sutra_hnsw partition vanished after it was created")
            })
        }
    };
    // SAFETY: the lock taken above.
    unsafe { pg_sys::UnlockPage(index, DIRECTORY_LOCK, pg_sys::ExclusiveLock as i32) };
    p
}

/// Appends an encoded directory entry on the last directory page, adding a page when full.
/// The caller holds [`DIRECTORY_LOCK`].
pub fn append_dir_entry(index: pg_sys::Relation, meta: &Meta, entry: &[u8]) -> Tid {
    if item_room(entry.len()) > PAGE_ROOM {
        raise(PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "partition key too long for sutra_hnsw");
    }
    let tail = Locked::read(index, meta.dir_tail, true);
    let mut wal = Wal::start(index);
    let page = wal.register(&tail, false);
    if let Some(off) = add_item(page, entry) {
        wal.finish();
        return Tid { block: tail.block(), offset: off };
    }
    let fresh = Locked::extend(index, pg_sys::ForkNumber::MAIN_FORKNUM);
    let new_page = wal.register(&fresh, true);
    init_page(new_page, KIND_DIR);
    let off = add_item(new_page, entry)
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "directory entry does not fit an empty page"));
    set_next_block(page, fresh.block());
    let block = fresh.block();
    wal.finish();
    drop(fresh);
    drop(tail);
    update_meta(index, |m| m.dir_tail = block);
    Tid { block, offset: off }
}

/// What the extension reads of an element tuple beyond its bytes: the heap row as PostgreSQL's
/// item pointer, and the vector in place.
pub trait ElementData<'a> {
    fn heap(&self) -> pg_sys::ItemPointerData;
    fn vector(&self) -> &'a [f32];
}

impl<'a> ElementData<'a> for ElementView<'a> {
    fn heap(&self) -> pg_sys::ItemPointerData {
        let [hi, lo, posid] = self.heap_tid();
        let mut t = pg_sys::ItemPointerData::default();
        t.ip_blkid.bi_hi = hi;
        t.ip_blkid.bi_lo = lo;
        t.ip_posid = posid;
        t
    }

    /// The vector; element tuples start MAXALIGNed and the vector at byte 8, so it is aligned.
    fn vector(&self) -> &'a [f32] {
        let bytes = self.vector_bytes();
        if !(bytes.as_ptr() as usize).is_multiple_of(4) {
            return &[];
        }
        // SAFETY: aligned (checked), and `vector_bytes` holds exactly 4 dims bytes.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, self.dims) }
    }
}

/// Encodes a compact element tuple of heap row `heap`: the form of elements on shared pages.
pub fn encode_compact_element(
    level: usize,
    heap: &pg_sys::ItemPointerData,
    v: &[f32],
    m: usize,
    links: &[Vec<Tid>],
) -> Vec<u8> {
    sutra_core::hnsw_tuple::encode_compact_element(level, heap_tid(heap), v, m, links)
}

/// The room a level-0 compact element takes on a shared page, owner tag included.
pub fn compact_base_room(dims: usize, m: usize) -> usize {
    item_room(OWNER_BYTES + element_size(dims, sutra_core::hnsw_tuple::compact_m(m), 0))
}

/// Encodes an element tuple of heap row `heap`.
pub fn encode_element(
    level: usize,
    heap: &pg_sys::ItemPointerData,
    v: &[f32],
    m: usize,
    links: &[Vec<Tid>],
) -> Vec<u8> {
    sutra_core::hnsw_tuple::encode_element(level, heap_tid(heap), v, m, links)
}

/// A heap tid as element tuples store it.
fn heap_tid(heap: &pg_sys::ItemPointerData) -> sutra_core::hnsw_tuple::HeapTid {
    [heap.ip_blkid.bi_hi, heap.ip_blkid.bi_lo, heap.ip_posid]
}
