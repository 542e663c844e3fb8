"""Upgrading sutra: a cluster made with the previous release (its own library and install script,
built from its git tag by scripts/test.sh, see release_tree in scripts/lib.sh) holds tenants, keys,
a tenant table with sutra_hnsw indexes and usage; then the server is restarted with this build's
library and the catalog updated with ALTER EXTENSION sutra UPDATE, as README's "Upgrading" says.
Everything must still work, the old indexes included, and the updated catalog must equal a fresh
install's (pg_dump --schema-only of the extension's objects)."""

import difflib
import os
import re
import subprocess
import time

import psycopg
import pytest

from conftest import BIN, own_cluster, pg_ctl

FROM_BIN = os.environ.get("SUTRA_UPGRADE_FROM_BIN")
FROM_VERSION = os.environ.get("SUTRA_UPGRADE_FROM_VERSION")
PORT = 54671

pytestmark = pytest.mark.skipif(
    not FROM_BIN, reason="SUTRA_UPGRADE_FROM_BIN is not set: scripts/test.sh builds the previous release and sets it")

ACME, GLOBEX = "00000000-0000-0000-0000-00000000ac01", "00000000-0000-0000-0000-00000000c1b0"
QUERY = "[0.5,0.5,0.5]"


def connect(base, dbname="postgres", user="postgres"):
    return psycopg.connect(host=base, port=PORT, user=user, dbname=dbname, autocommit=True,
                           options="-c search_path=public,sutra")


def version(c):
    return c.execute("SELECT extversion FROM pg_extension WHERE extname = 'sutra'").fetchone()[0]


def make_data(c):
    """What a user of the previous release has: tenants, a key, tenant tables with sutra_hnsw
    indexes (a uuid key and an integer key), events, including one in the default partition the
    previous release had."""
    c.execute("CREATE ROLE app LOGIN NOBYPASSRLS")
    for slug, tid in [("acme", ACME), ("globex", GLOBEX)]:
        c.execute("SELECT sutra.create_tenant(%s, id => %s::uuid)", (slug, tid))
    key = c.execute("SELECT sutra.create_api_key('acme', 'upgrade')").fetchone()[0]
    c.execute("CREATE SCHEMA app")
    c.execute("GRANT USAGE ON SCHEMA app TO app")
    c.execute("CREATE TABLE app.docs (id serial PRIMARY KEY, tenant_id uuid NOT NULL, body text, "
              "embedding sutra.vector(3))")
    c.execute("SELECT sutra.enable_tenancy('app.docs')")
    c.execute("GRANT SELECT, INSERT ON app.docs TO app")
    c.execute("GRANT USAGE ON SEQUENCE app.docs_id_seq TO app")
    # acme's rows are far from the query, globex's sit on it: a search that left acme's partition
    # would return them.
    c.execute("INSERT INTO app.docs (tenant_id, body, embedding) SELECT %s, 'acme ' || i, "
              "('[' || -1 - i / 1000.0 || ',-1,' || -i / 300.0 || ']')::sutra.vector FROM generate_series(1, 300) i",
              (ACME,))
    c.execute("INSERT INTO app.docs (tenant_id, body, embedding) SELECT %s, 'globex ' || i, %s "
              "FROM generate_series(1, 300) i", (GLOBEX, QUERY))
    c.execute("CREATE INDEX docs_embedding ON app.docs USING sutra_hnsw (tenant_id, embedding)")
    c.execute("CREATE TABLE app.items (id serial PRIMARY KEY, shard integer, embedding sutra.vector(3))")
    c.execute("INSERT INTO app.items (shard, embedding) SELECT i % 3, ('[-1,' || -i / 3000.0 || ',-1]')::sutra.vector "
              "FROM generate_series(1, 3000) i")
    c.execute("INSERT INTO app.items (shard, embedding) SELECT 9, %s FROM generate_series(1, 1200) i", (QUERY,))
    c.execute("CREATE INDEX items_embedding ON app.items USING sutra_hnsw (shard, embedding)")
    c.execute("ANALYZE app.docs, app.items")
    c.execute("SELECT sutra.set_tenant('acme')")
    c.execute("SELECT sutra.record_usage('tokens', 5)")
    c.execute("SELECT sutra.clear_tenant()")
    c.execute("INSERT INTO sutra.usage_events (tenant_id, event_type, quantity, occurred_at) "
              "VALUES (%s, 'tokens', 7, '2001-03-05 12:00+00')", (ACME,))
    return key


def extension_schema(base, dbname):
    """The extension's objects as pg_dump --schema-only --binary-upgrade writes them (extension
    members with their initial privileges), without the object ids, transaction ids and sequence
    values that differ between any two databases, and without the application's objects."""
    out = subprocess.run([f"{BIN}/pg_dump", "-h", base, "-p", str(PORT), "-U", "postgres", "--schema-only",
                          "--binary-upgrade", dbname], capture_output=True, text=True, check=True).stdout
    blocks, block = [], []
    for line in out.splitlines() + ["--"]:
        if line == "--":
            text = "\n".join(block)
            block = []
            if not text or re.search(r"\bapp\b|usage_events_\d{6}", text):
                continue
            blocks.append(text)
        elif not (line.startswith(("-- ", "SET ", "\\restrict", "\\unrestrict", "SELECT pg_catalog.set_config",
                                   "SELECT pg_catalog.binary_upgrade_set_next", "SELECT pg_catalog.setval(",
                                   # how rows written before ADD COLUMN read it: storage, not schema
                                   "SELECT pg_catalog.binary_upgrade_set_missing_value"))
                  or line.startswith("SET relfrozenxid") or re.fullmatch(r"WHERE oid = '\d+';", line) or not line):
            block.append(re.sub(r"'\{[0-9,]*\}', '\{[\",]*\}'", "'{config tables}'", line))
    return sorted(blocks)


def test_upgrade_keeps_tenants_keys_indexes_and_usage_and_equals_a_fresh_install():
    with own_cluster("sutra-upgrade-", PORT, "sutra.usage_flush_interval = 1\n", start=False) as (base, ctl):
        old = pg_ctl(os.path.join(base, "data"), bin=FROM_BIN)
        old("start")
        with connect(base) as c:
            c.execute("CREATE DATABASE up")
        with connect(base, "up") as c:
            c.execute("CREATE EXTENSION sutra")
            assert version(c) == FROM_VERSION
            key = make_data(c)
        old("-m", "fast", "stop")

        # The new library, then the update. Meanwhile the metering workers flush into the older
        # catalog and leave alone what it does not have yet.
        log = os.path.join(base, "data.log")
        old_log = os.path.getsize(log)
        ctl("start")
        with connect(base, "up") as c:
            assert version(c) == FROM_VERSION
            time.sleep(3)
            with open(log) as f:
                f.seek(old_log)
                assert "exited with exit code 1" not in f.read()
            c.execute("ALTER EXTENSION sutra UPDATE")
            assert version(c) != FROM_VERSION
            new_version = version(c)
            c.execute("CREATE DATABASE fresh")
        with connect(base, "fresh") as c:
            c.execute("CREATE EXTENSION sutra")
            assert version(c) == new_version

        up, fresh = extension_schema(base, "up"), extension_schema(base, "fresh")
        assert up == fresh, "\n".join(difflib.unified_diff(fresh, up, "fresh install", "updated", lineterm=""))

        with connect(base, "up", user="app") as c:
            # The key made by the previous release, with this release's per-transaction context.
            with c.transaction():
                assert str(c.execute("SELECT sutra.authenticate(%s)", (key,)).fetchone()[0]) == ACME
                rows = c.execute("SELECT body FROM app.docs ORDER BY embedding <-> %s::sutra.vector LIMIT 5",
                                 (QUERY,)).fetchall()
                assert len(rows) == 5 and all(r[0].startswith("acme ") for r in rows), rows
                assert c.execute("SELECT count(*), count(DISTINCT tenant_id) FROM app.docs").fetchone() == (300, 1)
                c.execute("INSERT INTO app.docs (tenant_id, body, embedding) "
                          "VALUES (sutra.current_tenant(), 'new', '[0,0,0]')")
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
                c.execute("SELECT count(*) FROM app.docs")  # the context ended with the transaction
        with connect(base, "up") as c:
            # An index built by the previous release, searched with this one's plans and checks. The
            # tables are tiny, where a sort costs about as much: keep the planner on the index.
            c.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in c.execute(
                "EXPLAIN SELECT id FROM app.docs WHERE tenant_id = %s ORDER BY embedding <-> %s::sutra.vector LIMIT 5",
                (ACME, QUERY)))
            assert "Index Scan using docs_embedding" in plan and "Index Cond: (tenant_id =" in plan, plan
            for index, rows in [("app.docs_embedding", 601), ("app.items_embedding", 4200)]:
                check = c.execute("SELECT elements, heap_rows, unreachable, problems FROM sutra.hnsw_check(%s)",
                                  (index,)).fetchone()
                assert check == (rows, rows, 0, []), (index, check)
            # An integer key of the previous release's operator class, sent as bigint and smallint:
            # an index condition on the key (the class moved into the family with cross-type equality).
            for cast in ["int8", "int2"]:
                q = f"SELECT shard FROM app.items WHERE shard = 1::{cast} ORDER BY embedding <-> %s::sutra.vector LIMIT 5"
                plan = "\n".join(r[0] for r in c.execute("EXPLAIN " + q, (QUERY,)))
                assert "Index Scan using items_embedding" in plan and "Index Cond: (shard =" in plan, plan
                assert [r[0] for r in c.execute(q, (QUERY,))] == [1] * 5
            # Usage: both events, the one from the default partition now in its month's partition,
            # which belongs to the application's data, not to the extension.
            assert c.execute("SELECT count(*), sum(quantity) FROM sutra.usage_events").fetchone() == (2, 12)
            assert c.execute("SELECT count(*) FROM sutra.usage_events_200103").fetchone()[0] == 1
            assert c.execute("SELECT count(*) FROM pg_depend WHERE objid = 'sutra.usage_events_200103'::regclass "
                             "AND deptype = 'e'").fetchone()[0] == 0
            with c.transaction():
                c.execute("SELECT sutra.set_tenant('acme')")
                assert c.execute("SELECT sutra.record_usage('tokens', 1)").fetchone()[0] is True
        ctl("-m", "fast", "stop")
