"""Connections to the throwaway clusters that scripts/test.sh starts.

SUTRA_TEST_HOST / SUTRA_TEST_PORT: a cluster with sutra preloaded and installed in database
sutra_client. SUTRA_NOPRELOAD_HOST / SUTRA_NOPRELOAD_PORT: a cluster without the preload.
"""

import contextlib
import os
import subprocess
import tempfile

import psycopg
import pytest

BIN = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()


def connect(host_var, port_var, dbname="postgres", **kwargs):
    return psycopg.connect(
        host=os.environ[host_var],
        port=os.environ[port_var],
        user="postgres",
        dbname=dbname,
        **kwargs,
    )


def require_cluster():
    """Skips the test unless scripts/test.sh started the cluster with sutra."""
    if not os.environ.get("SUTRA_TEST_HOST") or not os.environ.get("SUTRA_TEST_PORT"):
        pytest.skip("SUTRA_TEST_HOST / SUTRA_TEST_PORT not set")


def superuser():
    """An autocommit superuser connection to the sutra_client database."""
    return connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client", autocommit=True)


def as_role(role):
    """An autocommit connection to the sutra_client database as `role`."""
    return psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user=role,
                           dbname="sutra_client", autocommit=True)


@pytest.fixture
def conn():
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client") as c:
        # pgvector's adapter looks the type up by name, so sutra's schema goes on the path.
        c.execute("SET search_path TO public, sutra")
        yield c
        c.rollback()


@pytest.fixture
def plain_conn():
    with connect("SUTRA_NOPRELOAD_HOST", "SUTRA_NOPRELOAD_PORT", autocommit=True) as c:
        yield c


# Clusters of their own, for tests that stop, crash or replicate a server.

def as_postgres(*args, check=True):
    """Runs a PostgreSQL program as the postgres OS user (initdb and pg_ctl refuse root)."""
    cmd = [str(a) for a in args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def throwaway_dir(prefix):
    """A directory the postgres OS user can use for clusters and their sockets."""
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o777)
    return base


def pg_ctl(data, bin=BIN):
    """pg_ctl for the cluster in `data`, logging to `data`.log; `bin`: the directory of the server
    programs (another one starts the cluster with another build of sutra)."""
    return lambda *a, check=True: as_postgres(f"{bin}/pg_ctl", "-D", data, "-l", data + ".log", "-w", *a, check=check)


def init_cluster(base, name, port, conf=""):
    """A new cluster in base/name with sutra preloaded, on `port` through a socket in `base`, with
    `conf` appended to its configuration; returns its pg_ctl."""
    data = os.path.join(base, name)
    as_postgres(f"{BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{base}'\n"
                f"shared_preload_libraries = 'sutra'\n{conf}")
    return pg_ctl(data)


@contextlib.contextmanager
def own_cluster(prefix, port, conf="", start=True):
    """A throwaway cluster of the test's own (sutra preloaded, `conf` appended), started unless
    `start` is false; yields (base directory, its pg_ctl); stopped at once and removed after."""
    base = throwaway_dir(prefix)
    ctl = init_cluster(base, "data", port, conf)
    try:
        if start:
            ctl("start")
        yield base, ctl
    finally:
        ctl("-m", "immediate", "stop", check=False)
        subprocess.run(["rm", "-rf", base])


# A tenant table for driver and pool tests.

def make_tenant_table(table, role, tenants, columns):
    """As a superuser: `tenants` ({slug: uuid}), the tenant table `table` with `columns` (plus
    sutra's tenant column), and an application role `role` (NOBYPASSRLS, in sutra_service) that
    may read and insert. Returns a function that drops all of it."""
    with superuser() as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"DROP ROLE IF EXISTS {role}")
        c.execute(f"CREATE ROLE {role} LOGIN NOBYPASSRLS IN ROLE sutra_service")
        for slug, tid in tenants.items():
            c.execute("SELECT sutra.create_tenant(%s, id => %s::uuid)", (slug, tid))
        c.execute(f"CREATE TABLE {table} ({columns})")
        c.execute("SELECT sutra.enable_tenancy(%s)", (table,))
        c.execute(f"GRANT SELECT, INSERT ON {table} TO {role}")
        c.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")

    def drop():
        with superuser() as c:
            c.execute(f"DROP TABLE {table}")
            for tid in tenants.values():
                c.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (tid,))
            c.execute(f"DROP OWNED BY {role}")
            c.execute(f"DROP ROLE {role}")

    return drop
