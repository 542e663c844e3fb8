"""Many more tenants than shared-memory slots, on a throwaway cluster of its own with
`sutra.max_tenants = 64` and `sutra.max_tenant_table_counts = 64`: 1,000 tenants take turns, so
slots are reused over and over, and every tenant's row quota and rate limit still hold and its
metering adds up exactly. When every slot belongs to a tenant active right now, a further
tenant's statement fails with 53400 naming the setting to raise: never unlimited."""

import time

import psycopg
import pytest

from conftest import own_cluster

PORT = 54721
SLOTS = 64
TENANTS = 1000
# The plan every tenant is on: 3 rows, 5 statements a second in bursts of 2. A tenant's limiter is
# idle (its slot reusable) 0.4 s after its last statement; turns are paced so that fewer than
# SLOTS tenants are active in any 0.4 s.
TURN_SECONDS = 0.01


@pytest.fixture(scope="module")
def cluster():
    conf = (f"fsync = off\nsutra.max_tenants = {SLOTS}\nsutra.max_tenant_table_counts = {SLOTS}\n"
            "sutra.usage_flush_interval = 1\nmax_connections = 120\n")
    with own_cluster("sutra-slots-", PORT, conf) as (base, _):
        setup(base)
        yield base


def setup(base):
    with connect(base, "postgres") as c:
        c.execute("CREATE DATABASE slots")
    with connect(base) as c:
        c.execute("CREATE EXTENSION sutra")
        c.execute("""INSERT INTO sutra.plans (name, limits) VALUES
                     ('tiny', '{"rows_total": 3, "ops_per_second": 5, "burst": 2}')""")
        c.execute(f"""SELECT count(sutra.create_tenant('t' || i, plan => 'tiny',
                          id => ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid))
                      FROM generate_series(1, {TENANTS}) i""")
        c.execute("CREATE TABLE items (id bigserial PRIMARY KEY, body text)")
        c.execute("SELECT sutra.enable_tenancy('items')")
        c.execute("CREATE ROLE app LOGIN NOBYPASSRLS IN ROLE sutra_service")
        c.execute("GRANT SELECT, INSERT ON items TO app")
        c.execute("GRANT USAGE ON SEQUENCE items_id_seq TO app")


def connect(base, dbname="slots", user="postgres", **kw):
    return psycopg.connect(host=base, port=PORT, user=user, dbname=dbname, autocommit=True, **kw)


def tenant(i):
    return f"00000000-0000-0000-0000-{i:012d}"


def as_tenant(c, t, sql):
    """Runs `sql` in a transaction of its own in tenant `t`'s context; returns the first row or
    the SQLSTATE of the error."""
    try:
        with c.transaction():
            c.execute("SELECT sutra.set_tenant(%s)", (t,))
            return c.execute(sql).fetchone()
    except psycopg.Error as e:
        return e.sqlstate


def shared(c):
    return dict(c.execute("SELECT name, value FROM sutra._shared_tables()").fetchall())


def paced(turns):
    for i in turns:
        started = time.monotonic()
        yield i
        rest = TURN_SECONDS - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)


def test_every_tenant_stays_limited_and_metered_while_slots_are_reused(cluster):
    base = cluster
    with connect(base, user="app") as c, connect(base) as admin:
        reused_before = shared(admin)["slots_reused_total"]
        # Round 1: each tenant fills its quota, is refused one row more, and is refused a third
        # statement by its rate limit (two statements make its burst).
        for i in paced(range(1, TENANTS + 1)):
            t = tenant(i)
            assert as_tenant(c, t, "INSERT INTO items (body) SELECT 'x' FROM generate_series(1, 3) RETURNING 1") == (1,)
            assert as_tenant(c, t, "INSERT INTO items (body) VALUES ('y') RETURNING 1") == "53100", t
            assert as_tenant(c, t, "SELECT 1") == "53400", t
        state = shared(admin)
        assert state["tenant_slots"] == SLOTS
        assert state["tenant_slots_in_use"] <= SLOTS
        assert state["slots_reused_total"] - reused_before >= TENANTS - SLOTS, state
        # Round 2: every tenant's slot was given to others meanwhile. Its quota counts come back
        # from the table (the row more is still refused), its rate limit still holds, and it
        # still sees its own rows only.
        for i in paced(range(1, TENANTS + 1)):
            t = tenant(i)
            assert as_tenant(c, t, "INSERT INTO items (body) VALUES ('z') RETURNING 1") == "53100", t
            assert as_tenant(c, t, "SELECT count(*) FROM items") == (3,), t
            assert as_tenant(c, t, "SELECT 1") == "53400", t
        assert shared(admin)["slots_refused_total"] == 0
        # Metering adds up exactly for every tenant: 4 statements (the refused INSERTs ran and
        # failed; rate-limited statements never ran), 3 rows written, 1 row read.
        admin.execute("SELECT sutra.flush_usage()")
        rows = admin.execute("""
            SELECT t.id::text, coalesce(sum(r.quantity) FILTER (WHERE r.metric = 'statements'), 0)::int,
                   coalesce(sum(r.quantity) FILTER (WHERE r.metric = 'rows_written'), 0)::int,
                   coalesce(sum(r.quantity) FILTER (WHERE r.metric = 'rows_read'), 0)::int
            FROM sutra.tenants t LEFT JOIN sutra.usage_rollups r ON r.tenant_id = t.id
            WHERE t.plan = 'tiny' GROUP BY t.id""").fetchall()
        assert len(rows) == TENANTS
        wrong = [r for r in rows if r[1:] != (4, 3, 1)]
        assert not wrong, f"{len(wrong)} tenants metered wrongly, e.g. {wrong[:5]}"
        assert admin.execute("SELECT count(*) FROM items").fetchone()[0] == 3 * TENANTS
        # The metering worker also compacts the rollups (at most hourly): it has run here.
        assert admin.execute("SELECT last_run IS NOT NULL FROM sutra.usage_compaction").fetchone()[0]


def test_a_full_table_of_active_tenants_fails_closed(cluster):
    base = cluster
    holders = []
    # The tenants of the last turns above are active for 0.4 s more (their limiters' schedule):
    # their slots cannot be reused until then.
    time.sleep(1.0)
    try:
        # Sessions holding the contexts of SLOTS tenants: their slots are in use right now.
        for i in range(1, SLOTS + 1):
            h = connect(base, user="app")
            h.execute("SELECT sutra.set_tenant(%s, session => true)", (tenant(i),))
            holders.append(h)
        with connect(base, user="app") as c:
            newcomer = tenant(SLOTS + 1)
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT sutra.set_tenant(%s, session => true)", (newcomer,))
            assert e.value.sqlstate == "53400"
            assert e.value.diag.message_primary == "sutra's shared tenant table is full"
            assert "sutra.max_tenants" in e.value.diag.message_hint
            assert c.execute("SHOW sutra.tenant_id").fetchone()[0] == ""
            with connect(base) as admin:
                assert shared(admin)["slots_refused_total"] >= 1
            # One tenant leaves: the newcomer gets its slot and its limits.
            holders.pop().close()
            time.sleep(0.5)
            c.execute("SELECT sutra.set_tenant(%s, session => true)", (newcomer,))
            assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 3
            with pytest.raises(psycopg.Error) as e:
                c.execute("INSERT INTO items (body) VALUES ('over')")
            assert e.value.sqlstate == "53100"
    finally:
        for h in holders:
            h.close()
