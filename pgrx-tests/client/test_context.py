"""The signed tenant context across sessions and nodes: a value issued on one backend is accepted
as SET LOCAL by another that holds the same secret (how a Citus worker receives it), refused where
the secret differs, and refused once expired. Plus last_used_at without a write per authentication."""

import time
import uuid

import psycopg
import pytest

from conftest import connect


def superuser():
    return connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client", autocommit=True)


def as_role(role):
    import os
    return psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user=role,
                           dbname="sutra_client", autocommit=True)


def set_secret(c, secret):
    if secret is None:
        c.execute("ALTER SYSTEM RESET sutra.context_secret")
    else:
        c.execute("ALTER SYSTEM SET sutra.context_secret = %s" % psycopg.sql.quote(secret))
    c.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)


@pytest.fixture
def world():
    suffix = uuid.uuid4().hex[:8]
    role = f"ctx_app_{suffix}"
    with superuser() as c:
        c.execute(f"CREATE ROLE {role} LOGIN")
        c.execute("CREATE TABLE ctx_docs (id int, body text)")
        c.execute("SELECT sutra.enable_tenancy('ctx_docs')")
        c.execute(f"GRANT SELECT ON ctx_docs TO {role}")
        a = c.execute("SELECT sutra.create_tenant(%s)", (f"ctx-a-{suffix}",)).fetchone()[0]
        b = c.execute("SELECT sutra.create_tenant(%s)", (f"ctx-b-{suffix}",)).fetchone()[0]
        c.execute("INSERT INTO ctx_docs VALUES (1, 'a row', %s), (2, 'hidden row of b', %s)", (a, b))
    yield role, a, b
    with superuser() as c:
        set_secret(c, None)
        c.execute("DROP TABLE ctx_docs")
        for t in (a, b):
            c.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (t,))
        c.execute(f"DROP ROLE {role}")


def issue(tenant, lifetime=None):
    with superuser() as c:
        if lifetime:
            c.execute(f"SET sutra.context_lifetime = {lifetime}")
        c.execute("SELECT sutra.set_tenant(%s::uuid, scopes => '{read}', session => true)", (tenant,))
        return c.execute("SHOW sutra.tenant_id").fetchone()[0]


def test_same_secret_other_backend_accepts_set_local(world):
    role, a, _ = world
    with superuser() as c:
        set_secret(c, "s" * 40)
    value = issue(a)
    with as_role(role) as c:
        with c.transaction():
            c.execute("SET LOCAL sutra.tenant_id = %s" % psycopg.sql.quote(value))
            assert c.execute("SELECT sutra.current_tenant()").fetchone()[0] == a
            assert c.execute("SELECT body FROM ctx_docs").fetchall() == [("a row",)]
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT count(*) FROM ctx_docs")
        assert e.value.sqlstate == "28000" and "no tenant context" in str(e.value)


def test_other_secret_refuses_and_invalidates(world):
    role, a, _ = world
    with superuser() as c:
        set_secret(c, "s" * 40)
    value = issue(a)
    with as_role(role) as held:
        held.execute("SET sutra.tenant_id = %s" % psycopg.sql.quote(value))
        assert held.execute("SELECT count(*) FROM ctx_docs").fetchone()[0] == 1
        with superuser() as c:
            set_secret(c, "t" * 40)
        # A node with another secret refuses the value outright...
        with as_role(role) as c, pytest.raises(psycopg.Error) as e:
            c.execute("SET LOCAL sutra.tenant_id = %s" % psycopg.sql.quote(value))
        assert e.value.sqlstate == "42501" and "invalid tenant context" in str(e.value)
        # ... and a session that held it stops working.
        with pytest.raises(psycopg.Error) as e:
            held.execute("SELECT count(*) FROM ctx_docs")
        assert e.value.sqlstate == "28000"


def test_expired_context(world):
    role, a, _ = world
    value = issue(a, lifetime=1)
    with as_role(role) as c:
        c.execute("SET sutra.tenant_id = %s" % psycopg.sql.quote(value))
        assert c.execute("SELECT count(*) FROM ctx_docs").fetchone()[0] == 1
        time.sleep(1.2)
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT count(*) FROM ctx_docs")
        assert e.value.sqlstate == "28000" and "expired" in str(e.value)
    with as_role(role) as c, pytest.raises(psycopg.Error) as e:
        c.execute("SET sutra.tenant_id = %s" % psycopg.sql.quote(value))
    assert e.value.sqlstate == "28000" and "expired" in str(e.value)


def test_tampered_values_are_refused(world):
    role, a, b = world
    value = issue(a)
    v, tenant, scopes, expires, grant, mac = value.split(".")
    for forged in (
        ".".join([v, str(b), scopes, expires, grant, mac]),          # another tenant, same signature
        ".".join([v, tenant, "rwa", expires, grant, mac]),           # more scopes
        ".".join([v, tenant, scopes, str(int(expires) + 86400), grant, mac]),  # later expiry
        ".".join([v, tenant, scopes, expires, "0123456789abcdef", mac]),  # another granting key
        ".".join([v, tenant, scopes, expires, grant, mac[:-2] + ("AA" if mac[-2:] != "AA" else "BA")]),
    ):
        with as_role(role) as c, pytest.raises(psycopg.Error) as e:
            c.execute("SET sutra.tenant_id = %s" % psycopg.sql.quote(forged))
        assert e.value.sqlstate == "42501", forged


def test_last_used_at_written_at_most_once_a_minute(world):
    role, a, _ = world
    with superuser() as c:
        key = c.execute("SELECT sutra.create_api_key(%s::uuid)", (a,)).fetchone()[0]
        key_id = key.split("_")[1]
        stamp = lambda: c.execute("SELECT last_used_at FROM sutra.api_key_store WHERE key_id = %s", (key_id,)).fetchone()[0]
        xmin = lambda: c.execute("SELECT xmin::text FROM sutra.api_key_store WHERE key_id = %s", (key_id,)).fetchone()[0]
        assert stamp() is None
    with as_role(role) as c:
        c.execute("SELECT sutra.authenticate(%s, session => true)", (key,))
    with superuser() as c:
        first, version = stamp(), xmin()
        assert first is not None
    with as_role(role) as c:
        for _ in range(20):
            c.execute("SELECT sutra.authenticate(%s, session => true)", (key,))
    with superuser() as c:
        assert (stamp(), xmin()) == (first, version)
