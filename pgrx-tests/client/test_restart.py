"""Metering across restarts, on a throwaway cluster of its own: a clean shutdown keeps what was
counted but not yet flushed; after a crash (kill -9 of a backend, so the postmaster resets shared
memory) the counters start again from what was flushed, and the limits still work."""

import os
import signal
import subprocess
import tempfile
import time

import psycopg
import pytest

BIN = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
PORT = 54717


def as_postgres(*args):
    cmd = [str(a) for a in args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def cluster():
    base = tempfile.mkdtemp(prefix="sutra-restart-")
    os.chmod(base, 0o777)
    data = os.path.join(base, "data")
    as_postgres(f"{BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"port = {PORT}\nlisten_addresses = ''\nunix_socket_directories = '{base}'\n"
                "shared_preload_libraries = 'sutra'\nfsync = off\nsutra.usage_flush_interval = 3600\n")
    ctl = lambda *a: as_postgres(f"{BIN}/pg_ctl", "-D", data, "-l", os.path.join(base, "log"), "-w", *a)
    ctl("start")
    yield base, ctl
    subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                   + [f"{BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
    subprocess.run(["rm", "-rf", base])


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
        a.execute("SELECT sutra.set_tenant('restart')")
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
        a.execute("SELECT sutra.set_tenant('restart')")
        for i in range(3):
            a.execute("SELECT %s", (i,))
    with connect(base) as c:
        c.execute("SELECT sutra.flush_usage()")
        assert statements(c, tenant) == before + 3
    with connect(base, user="restart_app") as a:
        a.execute("SELECT sutra.set_tenant('restart')")
        a.execute("SELECT 'unflushed'")
        pid = a.info.backend_pid
        os.kill(pid, signal.SIGKILL)
    # The postmaster restarts every process and resets shared memory.
    for _ in range(100):
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
        a.execute("SELECT sutra.set_tenant('restart')")
        for i in range(4):
            a.execute("SELECT %s", (i,))
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT 'over'")
        assert e.value.sqlstate == "53400"
