"""Per-tenant secrets (bring-your-own provider keys), as an attacker would try them: another
tenant's secret, a key without the admin scope, the value in pg_stat_activity or the stored bytes,
a tampered or moved ciphertext, a dump restored into a server without the master key, and master
key rotation. Clusters of their own, with sutra.secrets_key in their configuration."""

import os
import subprocess
import time

import psycopg
import pytest

from conftest import BIN, own_cluster

PORT, OTHER_PORT = 54681, 54682
KEY1 = "11" * 32
KEY2 = "22" * 32
VALUE = "sk-live-0123456789abcdefghij"


def connect(base, port=PORT, user="postgres", dbname="postgres"):
    return psycopg.connect(host=base, port=port, user=user, dbname=dbname, autocommit=True)


def reconfigure(base, c, lines):
    """Appends lines to the cluster's configuration (later lines win) and reloads it."""
    with open(os.path.join(base, "data", "postgresql.conf"), "a") as f:
        f.write("".join(line + "\n" for line in lines))
    c.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)


@pytest.fixture(scope="module")
def server():
    with own_cluster("sutra-secrets-", PORT, f"fsync = off\nsutra.secrets_key = '{KEY1}'\n") as (base, ctl):
        with connect(base) as c:
            c.execute("CREATE EXTENSION sutra")
            c.execute("CREATE ROLE app LOGIN")
            keys = {}
            for slug in ["acme", "globex"]:
                c.execute("SELECT sutra.create_tenant(%s)", (slug,))
                keys[slug] = c.execute("SELECT sutra.create_api_key(%s, 'admin', '{read,write,admin}')",
                                       (slug,)).fetchone()[0]
            keys["acme-reader"] = c.execute("SELECT sutra.create_api_key('acme', 'reader', '{read,write}')").fetchone()[0]
        yield base, ctl, keys


def as_tenant(base, key):
    c = connect(base, user="app")
    c.execute("SELECT sutra.authenticate(%s, session => true)", (key,))
    return c


def test_a_tenant_reads_its_own_secret_and_nobody_else_learns_of_it(server):
    base, _, keys = server
    with as_tenant(base, keys["acme"]) as acme:
        acme.execute(f"SELECT sutra.set_secret('openai', '{VALUE}')")
        # The statement that set it, as pg_stat_activity shows it, holds no value; nor does the
        # stored row.
        with connect(base) as su:
            queries = [r[0] for r in su.execute("SELECT query FROM pg_stat_activity WHERE usename = 'app'")]
            assert any("set_secret" in q for q in queries) and not any(VALUE in q for q in queries), queries
            sealed = su.execute("SELECT sealed FROM sutra.tenant_secrets").fetchone()[0]
            assert VALUE.encode() not in bytes(sealed)
        assert acme.execute("SELECT sutra.secret('openai')").fetchone()[0] == VALUE
        assert [r[0] for r in acme.execute("SELECT name FROM sutra.secrets_list()")] == ["openai"]
    with as_tenant(base, keys["globex"]) as globex:
        # Another tenant's secret is exactly a secret that does not exist.
        for name in ["openai", "no-such-secret"]:
            with pytest.raises(psycopg.errors.UndefinedObject) as e:
                globex.execute("SELECT sutra.secret(%s)", (name,))
            assert e.value.diag.message_primary == f'secret "{name}" does not exist'
        assert globex.execute("SELECT count(*) FROM sutra.secrets_list()").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            globex.execute("SELECT sutra.secret('openai', tenant => 'acme')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            globex.execute("SELECT * FROM sutra.tenant_secrets")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            globex.execute("SHOW sutra.secrets_key")
        globex.execute("SELECT sutra.set_secret('openai', 'sk-globex')")
        assert globex.execute("SELECT sutra.secret('openai')").fetchone()[0] == "sk-globex"
    # Without the admin scope, a tenant's own secrets are out of reach.
    with as_tenant(base, keys["acme-reader"]) as reader:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT sutra.secret('openai')")
    # Each read is audited, also a read whose transaction rolled back; no value is.
    with as_tenant(base, keys["acme"]) as acme:
        acme.execute("BEGIN")
        acme.execute("SELECT sutra.secret('openai')")
        acme.execute("ROLLBACK")
    time.sleep(2)
    with connect(base) as su:
        rows = su.execute("SELECT action, details::text FROM sutra.audit_log a JOIN sutra.tenants t ON t.id = a.tenant_id "
                          "WHERE t.slug = 'acme' AND action LIKE 'secret.%' ORDER BY a.id").fetchall()
        assert [r[0] for r in rows] == ["secret.set", "secret.read", "secret.read"], rows
        assert not any(VALUE in r[1] for r in rows)


def test_a_tampered_or_moved_ciphertext_does_not_open(server):
    base, _, keys = server
    with as_tenant(base, keys["acme"]) as acme:
        acme.execute("SELECT sutra.set_secret('tampered', 'value-one')")
        acme.execute("SELECT sutra.set_secret('moved', 'value-two')")
    with connect(base) as su:
        su.execute("UPDATE sutra.tenant_secrets SET sealed = set_byte(sealed, 20, get_byte(sealed, 20) # 1) "
                   "WHERE name = 'tampered'")
        # acme's sealed value, copied into globex's row of the same name.
        su.execute("INSERT INTO sutra.tenant_secrets (tenant_id, name, sealed, key_id) "
                   "SELECT (SELECT id FROM sutra.tenants WHERE slug = 'globex'), name, sealed, key_id "
                   "FROM sutra.tenant_secrets WHERE name = 'moved'")
    with as_tenant(base, keys["acme"]) as acme:
        with pytest.raises(psycopg.errors.DataCorrupted) as e:
            acme.execute("SELECT sutra.secret('tampered')")
        assert e.value.diag.message_primary == 'secret "tampered" does not open'
        assert "value-one" not in str(e.value)
    with as_tenant(base, keys["globex"]) as globex:
        with pytest.raises(psycopg.errors.DataCorrupted):
            globex.execute("SELECT sutra.secret('moved')")
    # A rotation leaves what does not open as it is, with a warning, and seals the rest again.
    with connect(base) as su:
        su.execute("DELETE FROM sutra.tenant_secrets WHERE name = 'moved' AND tenant_id = "
                   "(SELECT id FROM sutra.tenants WHERE slug = 'globex')")


def test_a_dump_restored_without_the_master_key_reveals_nothing(server):
    base, _, keys = server
    with as_tenant(base, keys["acme"]) as acme:
        acme.execute("SELECT sutra.set_secret('dumped', %s)", (VALUE,))
    dump = subprocess.run([f"{BIN}/pg_dump", "-h", base, "-p", str(PORT), "-U", "postgres", "postgres"],
                          capture_output=True, text=True, check=True).stdout
    assert VALUE not in dump
    with own_cluster("sutra-secrets-other-", OTHER_PORT, "fsync = off\n") as (other, _):
        subprocess.run([f"{BIN}/psql", "-X", "-q", "-h", other, "-p", str(OTHER_PORT), "-U", "postgres", "-d",
                         "postgres", "-v", "ON_ERROR_STOP=0"], input=dump, capture_output=True, text=True)
        with connect(other, port=OTHER_PORT) as c:
            assert c.execute("SELECT count(*) FROM sutra.tenant_secrets WHERE name = 'dumped'").fetchone()[0] == 1
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                c.execute("SELECT sutra.secret('dumped', tenant => 'acme')")
            assert "sealed with a master key this server does not have" in e.value.diag.message_primary
            assert VALUE not in str(e.value) + (e.value.diag.message_detail or "")


def test_rotating_the_master_key_seals_every_secret_again(server):
    base, _, keys = server
    with as_tenant(base, keys["acme"]) as acme:
        acme.execute("SELECT sutra.set_secret('rotated', 'before-rotation')")
    with connect(base) as su:
        # The new key alone: secrets sealed with the old one no longer open.
        reconfigure(base, su, [f"sutra.secrets_key = '{KEY2}'"])
    with as_tenant(base, keys["acme"]) as acme:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            acme.execute("SELECT sutra.secret('rotated')")
    with connect(base) as su:
        reconfigure(base, su, [f"sutra.secrets_key_previous = '{KEY1}'"])
    with connect(base) as su:
        assert su.execute("SELECT sutra.secret('rotated', tenant => 'acme')").fetchone()[0] == "before-rotation"
        rotated = su.execute("SELECT sutra.rotate_secrets_key()").fetchone()[0]
        # Every secret but the tampered one (left as it is, with a warning).
        expected = su.execute("SELECT count(*) - 1 FROM sutra.tenant_secrets").fetchone()[0]
        assert rotated == expected
        assert su.execute("SELECT sutra.rotate_secrets_key()").fetchone()[0] == 0
        assert su.execute("SELECT count(*) FROM sutra.tenant_secrets WHERE key_id <> "
                          "(SELECT key_id FROM sutra.tenant_secrets WHERE name = 'rotated')").fetchone()[0] == 1
        reconfigure(base, su, ["sutra.secrets_key_previous = ''"])
    with as_tenant(base, keys["acme"]) as acme:
        assert acme.execute("SELECT sutra.secret('rotated')").fetchone()[0] == "before-rotation"
        assert acme.execute("SELECT sutra.secret('openai')").fetchone()[0] == VALUE
