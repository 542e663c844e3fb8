"""What sutra reads per authentication and per statement grows with nothing but the tenant's
own data: with 3,000 tenants (and an API key each) present, a fresh session that authenticates
with a key, sets contexts by uuid and by slug, and runs statements on a tenant table reads
sutra's tenant-sized tables by index only. PostgreSQL's per-transaction statistics
(pg_stat_xact_user_tables) count every scan sutra's own queries make in the session's
transaction, so a lookup that turned into a sequential scan fails the test."""

import psycopg
import pytest

from conftest import as_role, superuser

TENANTS = 3000
# Tables whose size grows with the number of tenants.
GROWING = ["tenants", "api_key_store", "audit_log", "usage_rollups"]


@pytest.fixture(scope="module")
def many_tenants():
    with superuser() as c:
        c.execute("DROP ROLE IF EXISTS scan_app")
        c.execute("CREATE ROLE scan_app LOGIN NOBYPASSRLS IN ROLE sutra_service")
        c.execute(f"""INSERT INTO sutra.tenants (id, slug, name, plan)
                      SELECT ('00000000-0000-0000-00ca-' || lpad(i::text, 12, '0'))::uuid, 'scan-' || i,
                             'scan-' || i, 'pro'
                      FROM generate_series(1, {TENANTS}) i""")
        c.execute(f"""INSERT INTO sutra.api_key_store (key_id, tenant_id, name, scopes, secret_hash)
                      SELECT lpad(to_hex(i + 3000000), 16, '0'),
                             ('00000000-0000-0000-00ca-' || lpad(i::text, 12, '0'))::uuid,
                             'filler', '{{read}}', sha256(i::text::bytea)
                      FROM generate_series(1, {TENANTS}) i""")
        key = c.execute("SELECT sutra.create_api_key('scan-7', 'k', '{read,write}')").fetchone()[0]
        c.execute("CREATE TABLE scan_items (id bigserial PRIMARY KEY, body text)")
        c.execute("SELECT sutra.enable_tenancy('scan_items')")
        c.execute("GRANT SELECT, INSERT ON scan_items TO scan_app")
        c.execute("GRANT USAGE ON SEQUENCE scan_items_id_seq TO scan_app")
        c.execute("ANALYZE sutra.tenants, sutra.api_key_store, sutra.audit_log, sutra.usage_rollups, scan_items")
    yield key
    with superuser() as c:
        c.execute("DROP TABLE scan_items")
        c.execute("DELETE FROM sutra.api_key_store WHERE tenant_id IN "
                  "(SELECT id FROM sutra.tenants WHERE slug LIKE 'scan-%')")
        c.execute("DELETE FROM sutra.tenants WHERE slug LIKE 'scan-%'")
        c.execute("DROP ROLE scan_app")


def scans(c):
    rows = c.execute("SELECT relname, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables "
                     "WHERE schemaname = 'sutra'").fetchall()
    return {name: (seq, idx) for name, seq, idx in rows}


@pytest.mark.parametrize("how", ["api key", "uuid", "slug"])
def test_sessions_read_sutras_tables_by_index_only(many_tenants, how):
    key = many_tenants
    with as_role("scan_app") as c:
        with c.transaction():
            if how == "api key":
                c.execute("SELECT sutra.authenticate(%s)", (key,))
            elif how == "uuid":
                c.execute("SELECT sutra.set_tenant('00000000-0000-0000-00ca-000000000007')")
            else:
                c.execute("SELECT sutra.set_tenant('scan-7')")
            c.execute("INSERT INTO scan_items (body) VALUES ('x')")
            assert c.execute("SELECT count(*) FROM scan_items").fetchone()[0] >= 1
            c.execute("SELECT sutra.current_tenant()")
            seen = scans(c)
        read = {t: seen.get(t, (0, 0)) for t in GROWING}
        assert all(seq == 0 for seq, _ in read.values()), f"sequential scans of tenant-sized tables: {read}"
        assert read["tenants"][1] > 0, f"the tenant was not looked up at all: {seen}"
        if how == "api key":
            assert read["api_key_store"][1] > 0, seen


def test_a_failed_authentication_reads_by_index_only(many_tenants):
    key = many_tenants
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    with as_role("scan_app") as c:
        with c.transaction():
            with pytest.raises(psycopg.Error):
                with c.transaction():
                    c.execute("SELECT sutra.authenticate(%s)", (wrong,))
            seen = scans(c)
        assert seen.get("api_key_store", (0, 0))[1] > 0, f"the key was not looked up: {seen}"
        assert all(seen.get(t, (0, 0))[0] == 0 for t in GROWING), seen


def test_the_measure_sees_a_sequential_scan(many_tenants):
    """The counters the tests above read do see a scan of sutra.tenants by a column without an
    index: the tests above could fail."""
    with as_role("scan_app") as c:
        with c.transaction():
            c.execute("SELECT count(*) FROM sutra.tenants WHERE name LIKE 'scan-1%'")
            seen = scans(c)
        assert seen["tenants"][0] > 0, seen
