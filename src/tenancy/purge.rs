//! Purging a tenant's rows without running anyone's code with more rights than they have.
//!
//! `sutra.drop_tenant(..., purge => true)` runs as the extension's owner, a superuser. A plain
//! DELETE from there would fire the tenant tables' triggers (and evaluate anything their owners
//! attached) as that superuser. Instead each table's rows are deleted as the table's owner, the
//! way VACUUM and ANALYZE run as the owner, inside a security-restricted operation, and through
//! the table's own policies: the tenant's context (write scope) is set for the DELETE only.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};
use sutra_core::tenant_context::Scopes;

use super::context;
use crate::error::raise;

/// `sutra._purge_rows(table, tenant_column, tenant)`: deletes the tenant's rows of one tenant
/// table as the table's owner; returns how many.
#[pg_extern(volatile, name = "_purge_rows")]
fn purge_rows(table: pg_sys::Oid, tenant_column: &str, tenant: pgrx::Uuid) -> i64 {
    let tenant_text = tenant.to_string();
    let (owner, name) = Spi::connect(|client| {
        let t = client.select(
            "SELECT c.relowner, c.oid::regclass::text FROM pg_class c WHERE c.oid = $1",
            Some(1),
            &[table.into()],
        )?;
        let row = t.first();
        Ok::<_, pgrx::spi::Error>((row.get::<pg_sys::Oid>(1)?, row.get::<String>(2)?))
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not read table {table:?}: {e}")));
    let (Some(owner), Some(name)) = (owner, name) else {
        raise(PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE, format!("table {table:?} does not exist"))
    };
    let sql = format!("DELETE FROM {name} WHERE {} = $1", spi::quote_identifier(tenant_column));
    // The context and search_path are scoped to the DELETE, and whatever the owner's triggers set
    // is rolled back with them (as VACUUM does): nothing they set reaches the purging session. The
    // context lives a minute at most, so a copy kept by a trigger is of no use afterwards.
    let not_after = crate::backend::now_unix() + 60;
    context::while_purging(&tenant_text, || {
        crate::backend::caller::with_catalog_search_path(|| {
            // SAFETY: the user switch is what SECURITY DEFINER and VACUUM do, restored below and, on
            // error, by transaction abort.
            unsafe {
                // Read and write: what the DELETE and its policies need; never admin.
                context::put(
                    &tenant_text,
                    Scopes::READ.union(Scopes::WRITE),
                    Some(not_after),
                    None,
                    pg_sys::GucAction::GUC_ACTION_SAVE,
                );
                let mut user = pg_sys::InvalidOid;
                let mut sec = 0;
                pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
                pg_sys::SetUserIdAndSecContext(
                    owner,
                    sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
                );
                let deleted = Spi::connect_mut(|client| {
                    client.update(sql.as_str(), None, &[tenant.into()]).map(|t| t.len() as i64)
                });
                pg_sys::SetUserIdAndSecContext(user, sec);
                deleted.unwrap_or_else(|e| {
                    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("could not purge {name}: {e}"))
                })
            }
        })
    })
}
