//! Counting a tenant's rows, bytes and vectors in a tenant table, without running anybody's code.
//!
//! Quotas need counts of tables whose owners are not the session counting them (the first
//! statement of a tenant after a server start counts that tenant in every tenant table; TRUNCATE
//! takes a table's rows out of every tenant's counts). Counting with SQL would evaluate whatever
//! the table's owner attached to it (policies, views, operators found through search_path), in
//! the counting session and, to see every row, with rights the session does not have. Instead the
//! table's heap is read directly, through its tenant btree when it has one: the only code that
//! runs is PostgreSQL's own `uuid` equality and btree comparison, and no user switch is needed.
//! Each tuple is measured by [`measure`], as the quota trigger measures the rows it sees.

use std::collections::HashMap;
use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Rows, bytes and vectors.
pub type RowCounts = (i64, i64, i64);

/// The counts of `tenant` (or, with `None`, of every tenant) in table `relid` and, for a
/// partitioned table, in all its partitions. A relation that no longer exists counts nothing.
pub fn count_rows(relid: pg_sys::Oid, column: &str, tenant: Option<[u8; 16]>) -> HashMap<[u8; 16], RowCounts> {
    let mut out = HashMap::new();
    let Ok(column) = CString::new(column) else {
        return out;
    };
    // The plain tables to read: the table itself, or the leaves of a partitioned table (a table
    // outside any partition tree has no rows in pg_partition_tree).
    let mut leaves = vec![relid];
    leaves.extend(crate::backend::caller::with_catalog_search_path(|| Spi::connect(|client| {
        let t = client.select(
            "SELECT p.relid FROM pg_catalog.pg_partition_tree($1::pg_catalog.oid::pg_catalog.regclass) p WHERE p.isleaf",
            None,
            &[relid.into()],
        )?;
        let mut out = Vec::new();
        for row in t {
            out.extend(row.get::<pg_sys::Oid>(1)?);
        }
        Ok::<_, pgrx::spi::Error>(out)
    }))
    .unwrap_or_default()
    .into_iter()
    .filter(|l| *l != relid));
    // SAFETY: catalog lookups and relation access by oid within the current transaction; every
    // relation opened here is closed before returning (its lock is kept until transaction end,
    // as for any read), and tuples are only read while the scan that returned them is open.
    unsafe {
        for leaf in leaves {
            if pg_sys::get_rel_relkind(leaf) as u8 == pg_sys::RELKIND_RELATION {
                count_leaf(leaf, &column, tenant, &mut out);
            }
        }
    }
    out
}

/// Adds the counts of one plain table to `out`.
unsafe fn count_leaf(
    relid: pg_sys::Oid,
    column: &CString,
    tenant: Option<[u8; 16]>,
    out: &mut HashMap<[u8; 16], RowCounts>,
) {
    let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32);
    if rel.is_null() {
        return;
    }
    let desc = (*rel).rd_att;
    let attnum = pg_sys::get_attnum(relid, column.as_ptr());
    // Registration requires a uuid tenant column; a table whose column changed since counts
    // nothing (sutra.check_tenancy reports it as an error) rather than failing every tenant's
    // statements.
    if attnum <= 0 || pg_sys::get_atttype(relid, attnum) != pg_sys::UUIDOID {
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        return;
    }
    let vector = vector_type();
    let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
    let bytes = tenant.unwrap_or([0; 16]);
    let nkeys = if tenant.is_some() {
        pg_sys::ScanKeyInit(
            &mut key,
            attnum,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::regproc::from(pg_sys::F_UUID_EQ),
            pg_sys::Datum::from(bytes.as_ptr()),
        );
        1
    } else {
        0
    };
    let index = if tenant.is_some() { tenant_btree(rel, attnum) } else { None };
    let snapshot =
        if pg_sys::ActiveSnapshotSet() { pg_sys::GetActiveSnapshot() } else { pg_sys::GetTransactionSnapshot() };
    let scan = pg_sys::systable_beginscan(
        rel,
        index.unwrap_or(pg_sys::InvalidOid),
        index.is_some(),
        snapshot,
        nkeys,
        if nkeys > 0 { &mut key } else { std::ptr::null_mut() },
    );
    loop {
        let tuple = pg_sys::systable_getnext(scan);
        if tuple.is_null() {
            break;
        }
        if let Some((t, b, v)) = measure(tuple, desc, attnum as i32, vector) {
            if tenant.is_some_and(|x| x != t) {
                continue;
            }
            let c = out.entry(t).or_insert((0, 0, 0));
            c.0 += 1;
            c.1 += b;
            c.2 += v;
        }
    }
    pg_sys::systable_endscan(scan);
    pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
}

/// A valid btree index of `rel` led by column `attnum` with the default `uuid` operator class
/// family (PostgreSQL's own comparison), without expressions or a predicate; None if there is none.
unsafe fn tenant_btree(rel: pg_sys::Relation, attnum: i16) -> Option<pg_sys::Oid> {
    let default_class = pg_sys::GetDefaultOpClass(pg_sys::UUIDOID, pg_sys::BTREE_AM_OID);
    // The comparison a btree scan calls comes from the index's operator family.
    let family = pg_sys::get_opclass_family(default_class);
    let list = pg_sys::RelationGetIndexList(rel);
    let n = if list.is_null() { 0 } else { (*list).length };
    let mut found = None;
    for i in 0..n {
        let oid = pg_sys::list_nth_oid(list, i);
        let irel = pg_sys::index_open(oid, pg_sys::AccessShareLock as i32);
        let index = (*irel).rd_index;
        let usable = (*(*irel).rd_rel).relam == pg_sys::BTREE_AM_OID
            && (*index).indisvalid
            && (*index).indnkeyatts >= 1
            && *(*index).indkey.values.as_ptr() == attnum
            && *(*irel).rd_opcintype == pg_sys::UUIDOID
            && *(*irel).rd_opfamily == family
            && pg_sys::heap_attisnull(
                (*irel).rd_indextuple,
                pg_sys::Anum_pg_index_indexprs as i32,
                std::ptr::null_mut(),
            )
            && pg_sys::heap_attisnull(
                (*irel).rd_indextuple,
                pg_sys::Anum_pg_index_indpred as i32,
                std::ptr::null_mut(),
            );
        pg_sys::index_close(irel, pg_sys::AccessShareLock as i32);
        if usable {
            found = Some(oid);
            break;
        }
    }
    pg_sys::list_free(list);
    found
}

thread_local! {
    static VECTOR_TYPE: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) };
}

/// The oid of `sutra.vector`, looked up once per backend.
pub(super) fn vector_type() -> pg_sys::Oid {
    if let Some(oid) = VECTOR_TYPE.with(|v| v.get()) {
        return oid;
    }
    let oid = crate::backend::caller::with_catalog_search_path(|| {
        Spi::get_one::<pg_sys::Oid>("SELECT pg_catalog.to_regtype('sutra.vector')::pg_catalog.oid")
    })
    .ok()
    .flatten()
    .unwrap_or(pg_sys::InvalidOid);
    VECTOR_TYPE.with(|v| v.set(Some(oid)));
    oid
}

/// The tenant, size and vector count of a row.
pub(super) unsafe fn measure(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attnum: i32,
    vector: pg_sys::Oid,
) -> Option<([u8; 16], i64, i64)> {
    if tuple.is_null() {
        return None;
    }
    let mut isnull = false;
    let d = pg_sys::heap_getattr(tuple, attnum, desc, &mut isnull);
    if isnull {
        return None;
    }
    let tenant = *(d.cast_mut_ptr::<[u8; 16]>());
    let mut vectors = 0;
    if vector != pg_sys::InvalidOid {
        for i in 0..(*desc).natts as usize {
            let att = (*desc).attrs.as_ptr().add(i);
            if !(*att).attisdropped && (*att).atttypid == vector {
                let mut null = false;
                pg_sys::heap_getattr(tuple, i as i32 + 1, desc, &mut null);
                vectors += (!null) as i64;
            }
        }
    }
    Some((tenant, (*tuple).t_len as i64, vectors))
}
