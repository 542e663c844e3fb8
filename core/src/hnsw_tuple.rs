//! The bytes of a `sutra_hnsw` index's items, without PostgreSQL: element tuples, their link
//! slots, and directory entries. The extension's page code (`src/hnsw/pages.rs`) puts these
//! bytes on pages; this module decides what they are, and its tests pin the format down.
//!
//! An element tuple is `flags u8, level u8, heap tid (6 bytes), vector (4 d bytes), links`:
//! `2 m` link slots for level 0 and `m` for each level above, each slot a 6-byte element id
//! (block u32, offset u16, little-endian; block `u32::MAX` when empty).
//!
//! A directory entry is a 32-byte [`DirHead`] followed by the partition key's bytes.

/// The block number that means "none" (an empty link slot, the end of a chain).
pub const NO_BLOCK: u32 = u32::MAX;
/// Bytes before an element's vector: flags, level, heap tid.
pub const ELEMENT_HEADER: usize = 8;
/// Bytes of one link slot.
pub const LINK_BYTES: usize = 6;
/// Element flag: deleted by VACUUM (its line pointer stays so that ids do not move).
pub const FLAG_DELETED: u8 = 1;
/// Element flag: written with the link slots of [`compact_m`] instead of `m` (the elements of
/// small partitions on shared pages, which scans read whole).
pub const FLAG_COMPACT: u8 = 2;

/// The `m` whose link slots a compact element has: half the index's, at least 1.
pub fn compact_m(m: usize) -> usize {
    (m / 2).max(1)
}

/// An element's place in the index: block and line pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

impl Tid {
    /// The id as one integer (block in the high bits), for sets and maps.
    pub fn pack(self) -> u64 {
        ((self.block as u64) << 16) | self.offset as u64
    }

    /// The id [`Tid::pack`] made.
    pub fn unpack(id: u64) -> Tid {
        Tid { block: (id >> 16) as u32, offset: (id & 0xffff) as u16 }
    }

    /// Writes the id into a 6-byte link slot.
    pub fn write(self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.block.to_le_bytes());
        out[4..6].copy_from_slice(&self.offset.to_le_bytes());
    }

    /// The id in a 6-byte link slot, `None` for an empty slot.
    pub fn read(b: &[u8]) -> Option<Tid> {
        let block = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (block != NO_BLOCK).then(|| Tid { block, offset: u16::from_le_bytes([b[4], b[5]]) })
    }
}

/// A heap row's tid as PostgreSQL's ItemPointerData holds it: block high and low halves, offset.
pub type HeapTid = [u16; 3];

/// Link slots of an element at `level`: `2 m` on level 0, `m` above.
pub fn slot_count(m: usize, level: usize) -> usize {
    if level == 0 {
        2 * m
    } else {
        m
    }
}

/// Bytes of an element tuple of `dims` dimensions, `m` links per level, top level `level`.
pub fn element_size(dims: usize, m: usize, level: usize) -> usize {
    ELEMENT_HEADER + 4 * dims + LINK_BYTES * (2 * m + level * m)
}

/// Byte offset of the link slots of `level` in an element tuple.
pub fn links_offset(dims: usize, m: usize, level: usize) -> usize {
    let base = ELEMENT_HEADER + 4 * dims;
    if level == 0 {
        base
    } else {
        base + LINK_BYTES * (2 * m + (level - 1) * m)
    }
}

/// Writes `links` into the slot bytes `slots`, padding with empty slots (links beyond the slots
/// are left out).
pub fn write_slots(slots: &mut [u8], links: &[Tid]) {
    for (i, chunk) in slots.chunks_exact_mut(LINK_BYTES).enumerate() {
        match links.get(i) {
            Some(t) => t.write(chunk),
            None => chunk.fill(0xFF),
        }
    }
}

/// Encodes an element tuple: `links[l]` are its links at level `l` (missing levels are empty).
pub fn encode_element(level: usize, heap: HeapTid, v: &[f32], m: usize, links: &[Vec<Tid>]) -> Vec<u8> {
    let dims = v.len();
    let mut out = vec![0u8; element_size(dims, m, level)];
    out[1] = level as u8;
    for (i, half) in heap.iter().enumerate() {
        out[2 + 2 * i..4 + 2 * i].copy_from_slice(&half.to_le_bytes());
    }
    for (i, x) in v.iter().enumerate() {
        out[ELEMENT_HEADER + 4 * i..ELEMENT_HEADER + 4 * i + 4].copy_from_slice(&x.to_ne_bytes());
    }
    for l in 0..=level {
        let start = links_offset(dims, m, l);
        let list = links.get(l).map(|v| v.as_slice()).unwrap_or(&[]);
        write_slots(&mut out[start..start + slot_count(m, l) * LINK_BYTES], list);
    }
    out
}

/// Encodes a compact element tuple ([`FLAG_COMPACT`]): the links of [`compact_m`]`(m)` slots per
/// level, the nearest first of each list kept.
pub fn encode_compact_element(level: usize, heap: HeapTid, v: &[f32], m: usize, links: &[Vec<Tid>]) -> Vec<u8> {
    let mut out = encode_element(level, heap, v, compact_m(m), links);
    out[0] |= FLAG_COMPACT;
    out
}

/// Plain accessors over the bytes of an element tuple.
pub struct ElementView<'a> {
    pub bytes: &'a [u8],
    pub dims: usize,
    pub m: usize,
}

impl<'a> ElementView<'a> {
    /// A view, or `None` when the bytes are too short for the header, the vector and the link
    /// slots of the level they claim.
    /// `m` is the index's; a compact element's view has its own, smaller one.
    pub fn new(bytes: &'a [u8], dims: usize, m: usize) -> Option<Self> {
        if bytes.len() < ELEMENT_HEADER + 4 * dims {
            return None;
        }
        let m = if bytes[0] & FLAG_COMPACT != 0 { compact_m(m) } else { m };
        let v = ElementView { bytes, dims, m };
        (bytes.len() >= element_size(dims, m, v.level())).then_some(v)
    }

    pub fn flags(&self) -> u8 {
        self.bytes[0]
    }

    pub fn deleted(&self) -> bool {
        self.flags() & FLAG_DELETED != 0
    }

    /// Link slots at `level` of this element.
    pub fn slots(&self, level: usize) -> usize {
        slot_count(self.m, level)
    }

    pub fn level(&self) -> usize {
        self.bytes[1] as usize
    }

    /// The heap row's tid.
    pub fn heap_tid(&self) -> HeapTid {
        let b = &self.bytes[2..8];
        [u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]]), u16::from_le_bytes([b[4], b[5]])]
    }

    /// The vector's bytes (`4 dims`, native-endian `f32`s).
    pub fn vector_bytes(&self) -> &'a [u8] {
        &self.bytes[ELEMENT_HEADER..ELEMENT_HEADER + 4 * self.dims]
    }

    /// The vector, copied out.
    pub fn vector_vec(&self) -> Vec<f32> {
        self.vector_bytes().chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// The links at `level` (empty slots skipped; nothing above the element's level).
    pub fn links(&self, level: usize, out: &mut Vec<Tid>) {
        if level <= self.level() {
            out.extend(self.slot_bytes(level).chunks_exact(LINK_BYTES).filter_map(Tid::read));
        }
    }

    /// The raw link slots at `level` (at most the element's level).
    pub fn slot_bytes(&self, level: usize) -> &'a [u8] {
        let start = links_offset(self.dims, self.m, level);
        &self.bytes[start..start + slot_count(self.m, level) * LINK_BYTES]
    }
}

/// The fixed head of a directory entry; the key's bytes follow it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirHead {
    pub entry_block: u32,
    pub entry_offset: u16,
    pub entry_level: u8,
    pub flags: u8,
    pub head_block: u32,
    pub tail_block: u32,
    pub count: u64,
    pub key_len: u16,
    /// The shared page holding the partition's first elements, or 0 for none (block 0 is the
    /// metapage). In the head's former padding, so entries written before it read as 0.
    pub shared_block: u32,
}

/// Directory entry flag: the partition has an entry point.
pub const DIR_HAS_ENTRY: u8 = 1;
/// Directory entry flag: the partition of the NULL key.
pub const DIR_NULL_KEY: u8 = 2;
/// Bytes of a [`DirHead`] on disk (the last 2 are padding).
pub const DIR_HEAD_BYTES: usize = 32;

impl DirHead {
    /// The head at the start of `bytes`, or `None` when they are shorter than a head. Fields are
    /// native-endian at fixed offsets (the layout of a C struct of these fields).
    pub fn read(bytes: &[u8]) -> Option<DirHead> {
        let b = bytes.get(..DIR_HEAD_BYTES)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(DirHead {
            entry_block: u32_at(0),
            entry_offset: u16_at(4),
            entry_level: b[6],
            flags: b[7],
            head_block: u32_at(8),
            tail_block: u32_at(12),
            count: u64::from_ne_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
            key_len: u16_at(24),
            shared_block: u32_at(26),
        })
    }

    /// Writes the head into the first [`DIR_HEAD_BYTES`] of `out` (the padding zeroed).
    pub fn write(&self, out: &mut [u8]) {
        let b = &mut out[..DIR_HEAD_BYTES];
        b[0..4].copy_from_slice(&self.entry_block.to_ne_bytes());
        b[4..6].copy_from_slice(&self.entry_offset.to_ne_bytes());
        b[6] = self.entry_level;
        b[7] = self.flags;
        b[8..12].copy_from_slice(&self.head_block.to_ne_bytes());
        b[12..16].copy_from_slice(&self.tail_block.to_ne_bytes());
        b[16..24].copy_from_slice(&self.count.to_ne_bytes());
        b[24..26].copy_from_slice(&self.key_len.to_ne_bytes());
        b[26..30].copy_from_slice(&self.shared_block.to_ne_bytes());
        b[30..].fill(0);
    }

    /// The partition's entry point and its level.
    pub fn entry(&self) -> Option<(Tid, usize)> {
        (self.flags & DIR_HAS_ENTRY != 0)
            .then_some((Tid { block: self.entry_block, offset: self.entry_offset }, self.entry_level as usize))
    }

    pub fn set_entry(&mut self, e: Option<(Tid, usize)>) {
        match e {
            Some((t, l)) => {
                self.entry_block = t.block;
                self.entry_offset = t.offset;
                self.entry_level = l as u8;
                self.flags |= DIR_HAS_ENTRY;
            }
            None => self.flags &= !DIR_HAS_ENTRY,
        }
    }
}

/// Bytes of the owner tag before each element on a shared page: the directory entry of the
/// element's partition (block u32, offset u16, native-endian) and 2 bytes of padding, so that the
/// element after it stays 8-byte aligned.
pub const OWNER_BYTES: usize = 8;

/// The owner tag of an element of the partition whose directory entry is `owner`.
pub fn encode_owner(owner: Tid) -> [u8; OWNER_BYTES] {
    let mut b = [0u8; OWNER_BYTES];
    b[0..4].copy_from_slice(&owner.block.to_ne_bytes());
    b[4..6].copy_from_slice(&owner.offset.to_ne_bytes());
    b
}

/// The partition an item of a shared page belongs to, and the element's bytes after the tag.
pub fn split_owner(item: &[u8]) -> Option<(Tid, &[u8])> {
    let (tag, element) = (item.get(..OWNER_BYTES)?, item.get(OWNER_BYTES..)?);
    let block = u32::from_ne_bytes([tag[0], tag[1], tag[2], tag[3]]);
    let offset = u16::from_ne_bytes([tag[4], tag[5]]);
    Some((Tid { block, offset }, element))
}

/// A partition key as stored: `None` for a NULL key; the empty key for an index without a key
/// column.
pub type Key = Option<Vec<u8>>;

/// Encodes a directory entry.
pub fn encode_dir(head: &DirHead, key: &Key) -> Vec<u8> {
    let mut h = *head;
    let bytes: &[u8] = key.as_deref().unwrap_or(&[]);
    h.key_len = bytes.len() as u16;
    if key.is_none() {
        h.flags |= DIR_NULL_KEY;
    }
    let mut out = vec![0u8; DIR_HEAD_BYTES + bytes.len()];
    h.write(&mut out);
    out[DIR_HEAD_BYTES..].copy_from_slice(bytes);
    out
}

/// Decodes a directory entry, or `None` when the bytes are not one.
pub fn decode_dir(bytes: &[u8]) -> Option<(DirHead, Key)> {
    let h = DirHead::read(bytes)?;
    let key = bytes.get(DIR_HEAD_BYTES..DIR_HEAD_BYTES + h.key_len as usize)?;
    Some((h, if h.flags & DIR_NULL_KEY != 0 { None } else { Some(key.to_vec()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(block: u32, offset: u16) -> Tid {
        Tid { block, offset }
    }

    #[test]
    fn compact_elements_have_fewer_slots() {
        let links = vec![(1..20).map(|i| t(i, 1)).collect::<Vec<_>>(), vec![t(5, 5)]];
        let full = encode_element(1, [0, 7, 3], &[1.0, 2.0], 16, &links);
        let compact = encode_compact_element(1, [0, 7, 3], &[1.0, 2.0], 16, &links);
        assert_eq!(compact.len(), element_size(2, 8, 1));
        assert!(compact.len() < full.len());
        let v = ElementView::new(&compact, 2, 16).unwrap();
        assert_eq!((v.m, v.slots(0), v.slots(1), v.level(), v.deleted()), (8, 16, 8, 1, false));
        let mut out = Vec::new();
        v.links(0, &mut out);
        assert_eq!(out, (1..17).map(|i| t(i, 1)).collect::<Vec<_>>());
        out.clear();
        v.links(1, &mut out);
        assert_eq!(out, vec![t(5, 5)]);
        assert_eq!(v.heap_tid(), [0, 7, 3]);
        assert_eq!(v.vector_vec(), vec![1.0, 2.0]);
        assert_eq!(ElementView::new(&full, 2, 16).unwrap().slots(0), 32);
    }

    #[test]
    fn owner_tags_and_shared_blocks_read_back() {
        let tag = encode_owner(t(7, 3));
        let mut item = tag.to_vec();
        item.extend_from_slice(b"element");
        assert_eq!(split_owner(&item), Some((t(7, 3), &b"element"[..])));
        assert_eq!(split_owner(&tag[..5]), None);
        let head = DirHead { head_block: 9, shared_block: 12, count: 3, ..Default::default() };
        let bytes = encode_dir(&head, &Some(b"k".to_vec()));
        let (back, key) = decode_dir(&bytes).unwrap();
        assert_eq!((back.shared_block, back.head_block, back.count, key), (12, 9, 3, Some(b"k".to_vec())));
        // An entry written before shared pages (zero padding) has none.
        let mut old = bytes.clone();
        old[26..32].fill(0);
        assert_eq!(decode_dir(&old).unwrap().0.shared_block, 0);
    }

    #[test]
    fn an_element_reads_back_as_written() {
        let (m, dims) = (3, 4);
        let v = [1.5f32, -2.0, 0.0, 7.25];
        let links = vec![vec![t(1, 2), t(70000, 65535)], vec![t(9, 1)], vec![]];
        let bytes = encode_element(2, [1, 2, 3], &v, m, &links);
        assert_eq!(bytes.len(), element_size(dims, m, 2));
        assert_eq!(bytes.len(), ELEMENT_HEADER + 16 + LINK_BYTES * (6 + 3 + 3));
        let e = ElementView::new(&bytes, dims, m).unwrap();
        assert_eq!((e.level(), e.deleted(), e.heap_tid()), (2, false, [1, 2, 3]));
        assert_eq!(e.vector_vec(), v);
        for (l, want) in links.iter().enumerate() {
            let mut got = Vec::new();
            e.links(l, &mut got);
            assert_eq!(&got, want, "level {l}");
            assert_eq!(e.slot_bytes(l).len(), slot_count(m, l) * LINK_BYTES);
        }
        // Above the element's level there is nothing, not a read past its end.
        let mut above = Vec::new();
        e.links(3, &mut above);
        assert!(above.is_empty());
    }

    #[test]
    fn the_layout_is_fixed() {
        // Level 0 slots right after the vector, then m slots per level above.
        assert_eq!(links_offset(4, 3, 0), 8 + 16);
        assert_eq!(links_offset(4, 3, 1), 8 + 16 + 6 * 6);
        assert_eq!(links_offset(4, 3, 2), 8 + 16 + 6 * 9);
        // The top level's slots end where the tuple ends.
        for level in 0..5 {
            assert_eq!(links_offset(4, 3, level) + slot_count(3, level) * LINK_BYTES, element_size(4, 3, level));
        }
        // A link slot: block and offset little-endian; all ones is empty.
        let mut slot = [0u8; 6];
        t(0x0102_0304, 0x0506).write(&mut slot);
        assert_eq!(slot, [4, 3, 2, 1, 6, 5]);
        assert_eq!(Tid::read(&[0xFF; 6]), None);
        assert_eq!(Tid::unpack(t(70000, 12).pack()), t(70000, 12));
    }

    #[test]
    fn more_links_than_slots_are_cut_and_fewer_are_padded() {
        let mut slots = [0u8; 2 * LINK_BYTES];
        write_slots(&mut slots, &[t(1, 1), t(2, 2), t(3, 3)]);
        assert_eq!(Tid::read(&slots[6..]), Some(t(2, 2)));
        write_slots(&mut slots, &[t(1, 1)]);
        assert_eq!(Tid::read(&slots[6..]), None);
    }

    #[test]
    fn a_short_or_inconsistent_element_has_no_view() {
        let bytes = encode_element(1, [0, 0, 1], &[1.0, 2.0], 2, &[]);
        assert!(ElementView::new(&bytes, 2, 2).is_some());
        assert!(ElementView::new(&bytes[..bytes.len() - 1], 2, 2).is_none());
        assert!(ElementView::new(&bytes[..3], 2, 2).is_none());
        // A level byte claiming more levels than the bytes hold.
        let mut lying = bytes.clone();
        lying[1] = 9;
        assert!(ElementView::new(&lying, 2, 2).is_none());
    }

    #[test]
    fn a_directory_entry_reads_back_as_written() {
        let mut head = DirHead { head_block: 7, tail_block: 9, count: 1 << 40, ..Default::default() };
        head.set_entry(Some((t(5, 6), 3)));
        for key in [None, Some(vec![]), Some(b"tenant-key".to_vec())] {
            let bytes = encode_dir(&head, &key);
            assert_eq!(bytes.len(), DIR_HEAD_BYTES + key.as_ref().map_or(0, |k| k.len()));
            let (h, k) = decode_dir(&bytes).unwrap();
            assert_eq!(k, key);
            assert_eq!(h.entry(), Some((t(5, 6), 3)));
            assert_eq!((h.head_block, h.tail_block, h.count), (7, 9, 1 << 40));
        }
        let mut h = head;
        h.set_entry(None);
        assert_eq!(h.entry(), None);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn the_directory_head_has_the_c_layout() {
        // The bytes a #[repr(C)] struct of these fields has (u32, u16, u8, u8, u32, u32, u64, u16,
        // 6 bytes of padding), which indexes on disk hold.
        let c_bytes: [u8; DIR_HEAD_BYTES] = [
            0x0D, 0x0C, 0x0B, 0x0A, 0x0F, 0x0E, 3, 1, 11, 0, 0, 0, 12, 0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 14, 0, 0, 0,
            0, 0, 0, 0,
        ];
        let h = DirHead::read(&c_bytes).unwrap();
        assert_eq!(
            (h.entry_block, h.entry_offset, h.entry_level, h.flags, h.head_block, h.tail_block, h.count, h.key_len),
            (0x0A0B_0C0D, 0x0E0F, 3, 1, 11, 12, 13, 14)
        );
        let mut out = [0xAAu8; DIR_HEAD_BYTES];
        h.write(&mut out);
        assert_eq!(out, c_bytes);
    }

    #[test]
    fn short_or_truncated_directory_entries_are_refused() {
        assert!(decode_dir(&[0u8; DIR_HEAD_BYTES - 1]).is_none());
        let bytes = encode_dir(&DirHead::default(), &Some(b"abc".to_vec()));
        assert!(decode_dir(&bytes[..bytes.len() - 1]).is_none());
    }
}
