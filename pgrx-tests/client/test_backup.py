"""Backups with stock tools: a whole-database pg_dump / pg_restore keeps tenants, plans, keys and
data; scripts/tenant-export.sh and tenant-import.sh move ONE tenant to another database."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())


def env():
    e = dict(os.environ)
    e.update(PGHOST=os.environ["SUTRA_TEST_HOST"], PGPORT=os.environ["SUTRA_TEST_PORT"], PGUSER="postgres", PG_BIN=str(BIN))
    return e


def run(*args):
    return subprocess.run([str(a) for a in args], env=env(), capture_output=True, text=True, check=True)


def db(name):
    return psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user="postgres",
                           dbname=name, autocommit=True)


@pytest.fixture
def databases():
    """Three fresh databases: a source and a per-tenant target with sutra, an empty one for a
    whole-database restore."""
    suffix = uuid.uuid4().hex[:8]
    names = [f"backup_{kind}_{suffix}" for kind in ("src", "full", "one")]
    with db("postgres") as c:
        for n in names:
            c.execute(f"CREATE DATABASE {n}")
    for n in (names[0], names[2]):
        with db(n) as c:
            c.execute("CREATE EXTENSION sutra")
    yield names
    with db("postgres") as c:
        for n in names:
            c.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")


def make_schema(c):
    c.execute("CREATE TABLE docs (id int, body text)")
    c.execute("SELECT sutra.enable_tenancy('docs')")
    c.execute("CREATE TABLE notes (id int PRIMARY KEY, note text)")


def fill_source(c):
    make_schema(c)
    a = c.execute("SELECT sutra.create_tenant('alpha', plan => 'pro')").fetchone()[0]
    b = c.execute("SELECT sutra.create_tenant('beta')").fetchone()[0]
    c.execute("INSERT INTO docs SELECT i, 'alpha ' || i, %s FROM generate_series(1, 50) i", (a,))
    c.execute("INSERT INTO docs SELECT i, 'beta hidden ' || i, %s FROM generate_series(1, 30) i", (b,))
    c.execute("INSERT INTO notes VALUES (1, 'shared')")
    c.execute("UPDATE sutra.plans SET retention = '11 days' WHERE name = 'free'")
    c.execute("INSERT INTO sutra.plans (name, limits) VALUES ('team', '{\"rows_total\": 5}')")
    key_a = c.execute("SELECT sutra.create_api_key('alpha')").fetchone()[0]
    key_b = c.execute("SELECT sutra.create_api_key('beta')").fetchone()[0]
    for when in ("2026-09-30 23:00+00", "2026-10-01 01:00+00"):  # two month partitions
        c.execute("SELECT sutra.record_usage('api.call', 3, idempotency_key => %s, occurred_at => %s, tenant => 'alpha')",
                  (when, when))
    return a, b, key_a, key_b


def checksum(c, tenant):
    return c.execute("SELECT sutra.tenant_checksum(%s::uuid)", (tenant,)).fetchone()[0]


def test_whole_database_round_trip(databases, tmp_path):
    src, full, _ = databases
    with db(src) as c:
        a, b, key_a, key_b = fill_source(c)
        sums = {t: checksum(c, t) for t in (a, b)}
    dump = tmp_path / "full.dump"
    run(BIN / "pg_dump", "-Fc", "-d", src, "-f", dump)
    run(BIN / "pg_restore", "--exit-on-error", "-d", full, dump)
    with db(full) as c:
        assert {t: checksum(c, t) for t in (a, b)} == sums
        assert c.execute("SELECT sutra.authenticate(%s, session => true)", (key_a,)).fetchone()[0] == a
        assert c.execute("SELECT sutra.authenticate(%s, session => true)", (key_b,)).fetchone()[0] == b
        plans = dict(c.execute("SELECT name, retention::text FROM sutra.plans").fetchall())
        assert plans == {"free": "11 days", "pro": "30 days", "enterprise": "90 days", "team": "30 days"}
        assert c.execute("SELECT count(*) FROM sutra.tenant_tables").fetchone()[0] == 1
        policies = c.execute("SELECT count(*) FROM pg_policy WHERE polrelid = 'docs'::regclass").fetchone()[0]
        assert policies == 4
        assert c.execute("SELECT count(*) FROM sutra.audit_log WHERE action = 'tenant.create'").fetchone()[0] == 2
        assert c.execute("SELECT count(*), sum(quantity) FROM sutra.usage_events").fetchone() == (2, 6)
        # Idempotency keys came along: a retried event is still recorded once.
        assert c.execute("SELECT sutra.record_usage('api.call', 3, idempotency_key => '2026-09-30 23:00+00', "
                         "tenant => 'alpha')").fetchone()[0] is False


def secrets_key():
    """This cluster's master key of tenant secrets, set (once) through ALTER SYSTEM."""
    with db("postgres") as c:
        c.execute("ALTER SYSTEM SET sutra.secrets_key = '" + "5a" * 32 + "'")
        c.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)


def test_one_tenant_moves_alone(databases, tmp_path):
    src, _, one = databases
    secrets_key()
    with db(src) as c:
        a, b, key_a, _ = fill_source(c)
        sum_a = checksum(c, a)
        c.execute("SELECT sutra.set_secret('openai', 'sk-alpha-secret', tenant => 'alpha')")
        c.execute("SELECT sutra.set_secret('openai', 'sk-beta-secret', tenant => 'beta')")
        c.execute("SELECT sutra.add_member('alice@alpha', 'owner', tenant => 'alpha')")
        c.execute("SELECT sutra.add_member('bob@beta', 'owner', tenant => 'beta')")
        c.execute("SELECT sutra.set_feature('bulk_export', true, tenant => 'alpha')")
    with db(one) as c:
        make_schema(c)
    dump = tmp_path / "alpha.dump"
    out = run(REPO / "scripts/tenant-export.sh", "-d", src, "alpha", dump).stdout
    assert str(a) in out
    # The dump holds alpha's rows and nothing of beta's, sutra's tables included.
    text = run(BIN / "pg_restore", "-f", "-", dump).stdout
    assert "alpha 1\t" in text
    assert "beta" not in text and str(b) not in text
    assert "api_key_pepper" not in text
    assert "sk-alpha-secret" not in text and "COPY sutra.tenant_secrets" in text
    assert "COPY public.notes" not in text
    run(REPO / "scripts/tenant-import.sh", "-d", one, dump)
    with db(one) as c:
        assert checksum(c, a) == sum_a
        assert c.execute("SELECT count(*), bool_and(tenant_id = %s) FROM docs", (a,)).fetchone() == (50, True)
        assert c.execute("SELECT slug FROM sutra.tenants ORDER BY slug").fetchall() == [("alpha",), ("default",)]
        assert c.execute("SELECT count(*) FROM sutra.api_key_store").fetchone()[0] == 1
        # Its secret came along sealed (the same master key opens it here); beta's did not.
        assert c.execute("SELECT sutra.secret('openai', tenant => 'alpha')").fetchone()[0] == "sk-alpha-secret"
        assert c.execute("SELECT count(*) FROM sutra.tenant_secrets").fetchone()[0] == 1
        # Its members and feature flags came along; beta's members did not.
        assert c.execute("SELECT tenant_id, user_id, role FROM sutra.tenant_members").fetchall() == [
            (a, "alice@alpha", "owner")]
        assert c.execute("SELECT features FROM sutra.tenants WHERE slug = 'alpha'").fetchone()[0] == {"bulk_export": True}
        # Another pepper here: the key came along but does not authenticate.
        with pytest.raises(psycopg.Error) as e:
            c.execute("SELECT sutra.authenticate(%s, session => true)", (key_a,))
        assert e.value.sqlstate == "28P01"
        c.execute("SELECT sutra.reset_auth_failures()")
    # Importing the same tenant twice fails as a whole and leaves the first import intact.
    with pytest.raises(subprocess.CalledProcessError):
        run(REPO / "scripts/tenant-import.sh", "-d", one, dump)
    with db(one) as c:
        assert checksum(c, a) == sum_a


def test_import_into_a_database_without_the_registrations_says_what_to_run(databases, tmp_path):
    """A target made from a schema-only dump has the table but not sutra's registration: the
    import stops before loading anything and names the enable_tenancy call to run."""
    src, _, one = databases
    with db(src) as c:
        a, _, _, _ = fill_source(c)
    with db(one) as c:
        c.execute("CREATE TABLE docs (id int, body text, tenant_id uuid)")
    dump = tmp_path / "alpha.dump"
    run(REPO / "scripts/tenant-export.sh", "-d", src, "alpha", dump)
    with pytest.raises(subprocess.CalledProcessError) as e:
        run(REPO / "scripts/tenant-import.sh", "-d", one, dump)
    assert "SELECT sutra.enable_tenancy('docs', 'tenant_id');" in e.value.stderr
    with db(one) as c:
        assert c.execute("SELECT count(*) FROM docs").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM sutra.tenants WHERE id = %s", (a,)).fetchone()[0] == 0
        c.execute("SELECT sutra.enable_tenancy('docs', 'tenant_id')")
    run(REPO / "scripts/tenant-import.sh", "-d", one, dump)
    with db(one) as c:
        assert c.execute("SELECT count(*) FROM docs").fetchone()[0] == 50
