//! `sutra.hnsw_check(index)` verifies an index's structure; `sutra.hnsw_stats(index)` describes
//! its partitions.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::graph::IdSet;
use super::pages::{all_partitions, partition_pages, read_meta, Key, KeyKind};
use super::vacuum::{partition_elements, unreached};
use super::{index_shape, prepare_vector, row_of, IndexShape, FLAT_LIMIT};
use crate::error::raise;

/// Opens an index of this access method, or refuses with a clear error. Its partitions name
/// tenants, so only the index's owner, superusers and members of sutra_service may look.
fn open_index(index: pg_sys::Oid, lock: u32) -> pg_sys::Relation {
    // SAFETY: catalog lookups by oid; index_open raises an ERROR for a relation that is not an
    // index; get_am_oid raises one if the access method is missing.
    unsafe {
        let kind = pg_sys::get_rel_relkind(index) as u8;
        if kind == 0 {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("index with OID {} does not exist", index.to_u32()),
            );
        }
        let caller = crate::backend::caller::outer_user();
        if !pg_sys::pg_class_ownercheck(index, caller) && !crate::backend::caller::is_service(caller) {
            crate::error::raise_hint(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "permission denied to inspect an index",
                "Only the index's owner, superusers and members of sutra_service may; its partitions name tenants.",
            );
        }
        if kind != pg_sys::RELKIND_INDEX {
            let name = std::ffi::CStr::from_ptr(pg_sys::get_rel_name(index)).to_string_lossy().into_owned();
            raise(PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, format!("\"{name}\" is not a sutra_hnsw index"));
        }
        let rel = pg_sys::index_open(index, lock as i32);
        let ours = (*(*rel).rd_rel).relam == pg_sys::get_am_oid(c"sutra_hnsw".as_ptr(), false);
        if !ours {
            let name = super::pages::relation_name(rel);
            pg_sys::index_close(rel, lock as i32);
            raise(PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, format!("\"{name}\" is not a sutra_hnsw index"));
        }
        rel
    }
}

fn heap_key(t: &pg_sys::ItemPointerData) -> u64 {
    ((t.ip_blkid.bi_hi as u64) << 32) | ((t.ip_blkid.bi_lo as u64) << 16) | t.ip_posid as u64
}

struct HeapScan {
    shape: IndexShape,
    tids: Vec<u64>,
}

#[pg_guard]
unsafe extern "C-unwind" fn heap_callback(
    _index: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    alive: bool,
    state: *mut std::ffi::c_void,
) {
    // SAFETY: state is the HeapScan passed to table_index_build_scan.
    let st = &mut *(state as *mut HeapScan);
    if !alive {
        return;
    }
    let Some((_, v)) = row_of(&st.shape, values, isnull) else { return };
    if prepare_vector(&st.shape, v).is_some() {
        st.tids.push(heap_key(&*tid));
    }
}

/// Verifies a sutra_hnsw index: every link points to an element of the same partition with
/// the level it is used on, entry points are live and on the partition's top level, element
/// counts match, and every live row of the table with an indexable vector has its element (so
/// an exact scan of its partition finds it). Also counts the live elements no path from their
/// partition's entry point reaches (a graph search cannot find them; builds and VACUUM link
/// them). Takes a SHARE lock on the table (writes wait). Returns the problems found; none
/// means consistent.
#[pg_extern(sql = "
CREATE FUNCTION hnsw_check(index regclass)
    RETURNS TABLE (partitions bigint, elements bigint, heap_rows bigint, unreachable bigint, problems text[])
    LANGUAGE C STRICT VOLATILE AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn hnsw_check(
    index: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(partitions, i64),
        name!(elements, i64),
        name!(heap_rows, i64),
        name!(unreachable, i64),
        name!(problems, Vec<String>),
    ),
> {
    let rel = open_index(index, pg_sys::AccessShareLock);
    // SAFETY: an open index; its table is opened with a SHARE lock to keep writers out while the
    // structure and the table are compared.
    let heap = unsafe { pg_sys::table_open((*(*rel).rd_index).indrelid, pg_sys::ShareLock as i32) };
    let meta = read_meta(rel);
    let shape = index_shape(rel);
    let mut problems: Vec<String> = Vec::new();
    let parts = all_partitions(rel, &meta);
    let mut indexed_heap = IdSet::default();
    let mut elements = 0i64;
    let mut unreachable = 0i64;
    for p in &parts {
        let stored = partition_elements(rel, &meta, p);
        let name = key_text(meta.key_kind(), &p.key).unwrap_or_else(|| "NULL".into());
        let live: Vec<u64> = stored.iter().filter(|(_, s)| !s.deleted).map(|(k, _)| *k).collect();
        elements += live.len() as i64;
        if live.len() as u64 != p.head.count {
            problems.push(format!("partition {name}: {} live elements, directory says {}", live.len(), p.head.count));
        }
        let top = stored.values().filter(|s| !s.deleted).map(|s| s.level).max();
        match p.head.entry() {
            None if !live.is_empty() => {
                problems.push(format!("partition {name}: no entry point for {} elements", live.len()))
            }
            None => {}
            Some((e, l)) => match stored.get(&e.pack()) {
                None => {
                    problems.push(format!("partition {name}: entry point ({},{}) is not an element", e.block, e.offset))
                }
                Some(s) if s.deleted => {
                    problems.push(format!("partition {name}: entry point ({},{}) is deleted", e.block, e.offset))
                }
                Some(s) if s.level != l || Some(l) != top => problems
                    .push(format!("partition {name}: entry point level {l} but the top level is {}", top.unwrap_or(0))),
                _ => {}
            },
        }
        for (&id, s) in &stored {
            if s.deleted {
                continue;
            }
            indexed_heap.insert(heap_key(&s.heap));
            for (l, links) in s.links.iter().enumerate() {
                let mut seen = IdSet::default();
                for t in links {
                    if t.pack() == id {
                        problems.push(format!("partition {name}: element {} links to itself", show(id)));
                    }
                    if !seen.insert(t.pack()) {
                        problems.push(format!(
                            "partition {name}: element {} links twice to ({},{})",
                            show(id),
                            t.block,
                            t.offset
                        ));
                    }
                    match stored.get(&t.pack()) {
                        None => problems.push(format!(
                            "partition {name}: element {} links to ({},{}), not an element of the partition",
                            show(id),
                            t.block,
                            t.offset
                        )),
                        Some(target) if target.level < l => problems.push(format!(
                            "partition {name}: element {} links on level {l} to an element of level {}",
                            show(id),
                            target.level
                        )),
                        _ => {}
                    }
                }
            }
        }
        unreachable += unreached(p, &stored).len() as i64;
    }
    let mut scan = HeapScan { shape, tids: Vec::new() };
    // SAFETY: the standard heap scan of an index build over the table locked above; the callback
    // gets `scan` back.
    // The table's index expressions and predicate are the owner's code: they run as the owner,
    // inside a security-restricted operation and with search_path pg_catalog, pg_temp, as they
    // do for CREATE INDEX, whoever calls hnsw_check.
    crate::backend::caller::with_catalog_search_path(|| unsafe {
        let mut user = pg_sys::InvalidOid;
        let mut sec = 0;
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            (*(*heap).rd_rel).relowner,
            sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        );
        let info = pg_sys::BuildIndexInfo(rel);
        pg_sys::table_index_build_scan(
            heap,
            rel,
            info,
            true,
            false,
            Some(heap_callback),
            &mut scan as *mut HeapScan as *mut std::ffi::c_void,
            std::ptr::null_mut(),
        );
        pg_sys::SetUserIdAndSecContext(user, sec);
    });
    let missing = scan.tids.iter().filter(|t| !indexed_heap.contains(t)).count();
    if missing > 0 {
        problems.push(format!("{missing} of {} live rows of the table have no element in the index", scan.tids.len()));
    }
    let heap_rows = scan.tids.len() as i64;
    // SAFETY: closing what was opened above; the locks stay until the transaction ends.
    unsafe {
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
        pg_sys::index_close(rel, pg_sys::NoLock as i32);
    }
    problems.sort();
    TableIterator::once((parts.len() as i64, elements, heap_rows, unreachable, problems))
}

fn show(id: u64) -> String {
    format!("({},{})", id >> 16, id & 0xffff)
}

/// A partition key as text: the uuid, the number or the string; `None` for NULL or no key.
fn key_text(kind: KeyKind, key: &Key) -> Option<String> {
    let k = key.as_ref()?;
    Some(match kind {
        KeyKind::None => return None,
        KeyKind::Uuid if k.len() == 16 => {
            let h: String = k.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
        }
        KeyKind::Int4 if k.len() == 4 => i32::from_le_bytes([k[0], k[1], k[2], k[3]]).to_string(),
        KeyKind::Int8 if k.len() == 8 => i64::from_le_bytes(k[..8].try_into().unwrap_or([0; 8])).to_string(),
        _ => String::from_utf8_lossy(k).into_owned(),
    })
}

/// One row per partition of a sutra_hnsw index: its key (NULL for an index without a key
/// column, or for the rows whose key is NULL), live elements, pages, levels of its graph, and
/// whether scans read it exactly (`flat`) or search its graph (`graph`).
#[pg_extern(sql = "
CREATE FUNCTION hnsw_stats(index regclass)
    RETURNS TABLE (partition text, elements bigint, pages bigint, levels integer, kind text)
    LANGUAGE C STRICT STABLE AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn hnsw_stats(
    index: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(partition, Option<String>),
        name!(elements, i64),
        name!(pages, i64),
        name!(levels, i32),
        name!(kind, String),
    ),
> {
    let rel = open_index(index, pg_sys::AccessShareLock);
    let meta = read_meta(rel);
    let rows: Vec<_> = all_partitions(rel, &meta)
        .iter()
        .map(|p| {
            let pages = partition_pages(rel, p).len() as i64;
            let levels = p.head.entry().map_or(0, |(_, l)| l as i32 + 1);
            let kind = if p.head.count as usize <= FLAT_LIMIT { "flat" } else { "graph" };
            (key_text(meta.key_kind(), &p.key), p.head.count as i64, pages, levels, kind.to_string())
        })
        .collect();
    // SAFETY: closing the index opened above; the lock stays until the transaction ends.
    unsafe { pg_sys::index_close(rel, pg_sys::NoLock as i32) };
    TableIterator::new(rows)
}
