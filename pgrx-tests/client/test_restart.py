"""Metering across restarts, on a throwaway cluster of its own: a clean shutdown keeps what was
counted but not yet flushed; after a crash (kill -9 of a backend, so the postmaster resets shared
memory) the counters start again from what was flushed, and the limits still work."""

import os
import signal
import time

import psycopg
import pytest

from conftest import own_cluster

PORT = 54717


@pytest.fixture(scope="module")
def cluster():
    with own_cluster("sutra-restart-", PORT, "fsync = off\nsutra.usage_flush_interval = 3600\n") as (base, ctl):
        yield base, ctl


def connect(base, user="postgres", **kw):
    return psycopg.connect(host=base, port=PORT, user=user, dbname="postgres", autocommit=True, **kw)


def statements(c, tenant):
    return c.execute("SELECT coalesce(sum(quantity), 0)::int FROM sutra.usage_rollups "
                     "WHERE tenant_id = %s AND metric = 'statements'", (tenant,)).fetchone()[0]


def test_clean_shutdown_keeps_pending_metering(cluster):
    base, ctl = cluster
    with connect(base) as c:
        c.execute("CREATE EXTENSION sutra")
        c.execute("CREATE ROLE restart_app LOGIN IN ROLE sutra_service")
        tenant = c.execute("SELECT sutra.create_tenant('restart')").fetchone()[0]
    with connect(base, user="restart_app") as a:
        a.execute("SELECT sutra.set_tenant('restart', session => true)")
        for i in range(7):
            a.execute("SELECT %s", (i,))
    ctl("-m", "fast", "stop")
    ctl("start")
    with connect(base) as c:
        c.execute("SELECT sutra.flush_usage()")
        assert statements(c, tenant) == 7


def test_crash_loses_at_most_the_unflushed_counts(cluster):
    base, ctl = cluster
    with connect(base) as c:
        tenant = c.execute("SELECT id FROM sutra.tenants WHERE slug = 'restart'").fetchone()[0]
        before = statements(c, tenant)
        c.execute("SELECT sutra.update_tenant('restart', quota_overrides => '{\"ops_per_second\": 0.01, \"burst\": 4}')")
    with connect(base, user="restart_app") as a:
        a.execute("SELECT sutra.set_tenant('restart', session => true)")
        for i in range(3):
            a.execute("SELECT %s", (i,))
    with connect(base) as c:
        c.execute("SELECT sutra.flush_usage()")
        assert statements(c, tenant) == before + 3
    with connect(base, user="restart_app") as a:
        a.execute("SELECT sutra.set_tenant('restart', session => true)")
        a.execute("SELECT 'unflushed'")
        pid = a.info.backend_pid
        os.kill(pid, signal.SIGKILL)
    # The postmaster restarts every process and resets shared memory (crash recovery may take a
    # while on a loaded machine).
    for _ in range(600):
        try:
            with connect(base) as c:
                c.execute("SELECT 1")
                break
        except psycopg.OperationalError:
            time.sleep(0.1)
    with connect(base) as c:
        c.execute("SELECT sutra.flush_usage()")
        assert statements(c, tenant) == before + 3
        # The limiter starts again from nothing, and enforces the limit again.
    with connect(base, user="restart_app") as a:
        a.execute("SELECT sutra.set_tenant('restart', session => true)")
        for i in range(4):
            a.execute("SELECT %s", (i,))
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT 'over'")
        assert e.value.sqlstate == "53400"
