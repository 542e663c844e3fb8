"""sutra on Citus: a coordinator and two workers (scripts/citus-test.sh).

Every test has a row of another tenant in the same distributed table that would show if
isolation broke, and reads through the coordinator, directly on the workers, or both.
"""

import re
import time

import psycopg
from psycopg.types.json import Jsonb
import pytest

from psycopg import sql

from conftest import node, nodes

ACME_ROWS = ["acme one", "acme two", "acme three"]


@pytest.fixture(scope="module")
def app():
    """sutra installed on the coordinator (so on every node), a tenant table `notes` made a tenant
    table and then distributed (the natural order), tenants acme and globex with a key each."""
    with node(0) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION sutra")
        c.execute("CREATE ROLE app LOGIN")
        c.execute("GRANT USAGE ON SCHEMA sutra TO app")
        c.execute("CREATE TABLE notes (id bigserial, tenant_id uuid NOT NULL, body text, PRIMARY KEY (tenant_id, id))")
        c.execute("GRANT ALL ON notes TO app")
        c.execute("GRANT ALL ON SEQUENCE notes_id_seq TO app")
        c.execute("SELECT sutra.enable_tenancy('notes')")
        c.execute("SELECT create_distributed_table('notes', 'tenant_id')")
        acme = c.execute("SELECT sutra.create_tenant('acme')").fetchone()[0]
        globex = c.execute("SELECT sutra.create_tenant('globex')").fetchone()[0]
        keys = {
            "acme": c.execute("SELECT sutra.create_api_key('acme', 'app')").fetchone()[0],
            "globex": c.execute("SELECT sutra.create_api_key('globex', 'app')").fetchone()[0],
        }
        for body in ACME_ROWS:
            c.execute("INSERT INTO notes (tenant_id, body) VALUES (%s, %s)", (acme, body))
        # The hidden row: another tenant's, in the same table.
        c.execute("INSERT INTO notes (tenant_id, body) VALUES (%s, 'globex secret')", (globex,))
    return {"acme": acme, "globex": globex, "keys": keys}


def shard_node(tenant):
    """The index (1 or 2) of the worker holding `tenant`'s shard of notes."""
    with node(0) as c:
        port = c.execute(
            "SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = get_shard_id_for_distribution_column('notes', %s)",
            (tenant,),
        ).fetchone()[0]
    return [p for _, p in nodes()].index(str(port))


def in_context(conn, key):
    """Authenticates `key` for the transaction conn has open; returns the signed context."""
    conn.execute("SELECT sutra.authenticate(%s)", (key,))
    return conn.execute("SELECT current_setting('sutra.tenant_id')").fetchone()[0]


def set_context(conn, value):
    """A SET LOCAL of sutra.tenant_id, as a client connected directly to a worker can send."""
    conn.execute(sql.SQL("SET LOCAL sutra.tenant_id = {}").format(sql.Literal(value)))


def explain(conn, query):
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + query).fetchall())


def test_setup_in_the_natural_order(app):
    with node(0) as c:
        kinds = dict(c.execute("SELECT logicalrelid::text, partmethod FROM pg_dist_partition").fetchall())
        assert kinds["notes"] == "h"
        assert kinds["sutra.cluster_grants"] == "n", "the cluster's grants are a reference table"
        assert [r for r in c.execute("SELECT * FROM sutra.check_tenancy('notes') WHERE severity = 'error'")] == []
    for i in (1, 2):
        with node(i) as w:
            # Each worker's shards carry the tenant policies, forced.
            shards = w.execute(
                "SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity,"
                " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname LIKE 'sutra_tenant_%')"
                " FROM pg_class c WHERE c.relname ~ '^notes_[0-9]+$' AND c.relkind = 'r'"
            ).fetchall()
            assert shards, f"worker {i} holds shards of notes"
            assert all(forced and policies == 4 for _, forced, policies in shards), shards


def test_setup_in_the_other_order(app):
    with node(0) as c:
        c.execute("CREATE TABLE docs (id bigserial, tenant_id uuid NOT NULL, title text, PRIMARY KEY (tenant_id, id))")
        c.execute("SELECT create_distributed_table('docs', 'tenant_id')")
        c.execute("INSERT INTO docs (tenant_id, title) VALUES (%s, 'globex doc'), (%s, 'acme doc')",
                  (app["globex"], app["acme"]))
        c.execute("GRANT ALL ON docs TO app")
        c.execute("GRANT ALL ON SEQUENCE docs_id_seq TO app")
        c.execute("SELECT sutra.enable_tenancy('docs')")
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        assert [r[0] for r in a.execute("SELECT title FROM docs")] == ["acme doc"]
        a.execute("INSERT INTO docs (title) VALUES ('acme doc 2')")
        assert a.execute("SELECT count(*) FROM docs").fetchone()[0] == 2
        a.commit()


def test_context_reaches_the_workers(app):
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        assert sorted(r[0] for r in a.execute("SELECT body FROM notes")) == sorted(ACME_ROWS)
        # A fan-out query (no tenant constant can route a join on id alone) sees the tenant too.
        a.execute("SET LOCAL sutra.tenant_pruning = off")
        assert a.execute("SELECT count(*) FROM notes").fetchone()[0] == len(ACME_ROWS)
        assert a.execute("SELECT count(*) FROM notes WHERE body = 'globex secret'").fetchone()[0] == 0
        a.rollback()
    with node(0, "app", autocommit=False) as a:
        # Without a context, every worker refuses.
        with pytest.raises(psycopg.Error, match="no tenant context"):
            a.execute("SELECT count(*) FROM notes")


def test_writes_land_in_the_tenant_shard(app):
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["globex"])
        a.execute("INSERT INTO notes (body) VALUES ('globex two')")
        with pytest.raises(psycopg.Error, match="row-level security"):
            a.execute("INSERT INTO notes (tenant_id, body) VALUES (%s, 'planted')", (app["acme"],))
        a.rollback()
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["globex"])
        assert a.execute("UPDATE notes SET body = body").rowcount == 1
        assert a.execute("DELETE FROM notes WHERE body LIKE 'acme%'").rowcount == 0
        a.rollback()


def test_tenant_query_routes_to_one_shard(app):
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        plan = explain(a, "SELECT body FROM notes")
        assert "Task Count: 1" in plan, plan
        a.execute("SET LOCAL sutra.tenant_pruning = off")
        plan = explain(a, "SELECT body FROM notes")
        assert "Task Count: 8" in plan, "without the hook, row level security alone fans out:\n" + plan
        a.rollback()


def test_forged_context_refused_on_a_worker(app):
    with node(0, "app", autocommit=False) as a:
        real = in_context(a, app["keys"]["acme"])
        a.rollback()
    # Another tenant in a context signed for acme: the signature no longer matches.
    forged = real.replace(str(app["acme"]), str(app["globex"]))
    for i in (1, 2):
        with node(i, "app", autocommit=False) as w:
            with pytest.raises(psycopg.Error, match="invalid tenant context") as e:
                set_context(w, forged)
            assert "same sutra.context_secret" in (e.value.diag.message_hint or "")


def test_context_from_a_node_with_another_secret(app):
    """A worker whose secret differs refuses the coordinator's contexts, and says why."""
    worker = shard_node(app["acme"])
    with node(worker) as w:
        w.execute("ALTER SYSTEM SET sutra.context_secret = 'another-secret-another-secret-another-secret'")
        w.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        with node(0, "app", autocommit=False) as a:
            in_context(a, app["keys"]["acme"])
            with pytest.raises(psycopg.Error) as e:
                a.execute("SELECT count(*) FROM notes")
            assert "invalid tenant context" in str(e.value)
            assert "same sutra.context_secret" in (e.value.diag.message_hint or "")
    finally:
        with node(worker) as w:
            w.execute("ALTER SYSTEM RESET sutra.context_secret")
            w.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        assert a.execute("SELECT count(*) FROM notes").fetchone()[0] == len(ACME_ROWS)


PARALLEL = ["SET LOCAL parallel_setup_cost = 0", "SET LOCAL parallel_tuple_cost = 0",
            "SET LOCAL min_parallel_table_scan_size = 0", "SET LOCAL max_parallel_workers_per_gather = 2",
            "SET LOCAL parallel_leader_participation = off", "SET LOCAL enable_indexscan = off",
            "SET LOCAL enable_bitmapscan = off"]


# The name Citus gives its own connections: a client that can reach a worker and takes it is
# the strongest direct attacker (a forwarded context is refused on any other connection).
AS_CITUS = "citus_internal gpid=10000000001"


def direct_count(worker, context, parallel=False):
    """Counts notes on a worker's own shards (the names Citus gives them), in `context`, on a
    connection named as Citus's own; with `parallel`, in parallel workers only (the leader takes
    no part)."""
    with node(worker, "app", autocommit=False, application_name=AS_CITUS) as w:
        set_context(w, context)
        for setting in PARALLEL if parallel else []:
            w.execute(setting)
        shards = [r[0] for r in w.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relname ~ '^notes_[0-9]+$' AND c.relkind = 'r'")]
        return sum(w.execute(f"SELECT count(*) FROM {s}").fetchone()[0] for s in shards)


def test_suspended_tenant_is_refused_by_every_node(app):
    worker = shard_node(app["acme"])
    with node(0, "app", autocommit=False) as a:
        context = in_context(a, app["keys"]["acme"])
        a.rollback()
    assert direct_count(worker, context) == len(ACME_ROWS)
    with node(0) as c:
        c.execute("SELECT sutra.suspend_tenant('acme')")
    try:
        # Directly on the worker, with the context issued before the suspension, also when the
        # rows are read by parallel workers alone (they do not look tenant status up).
        with pytest.raises(psycopg.Error, match="is suspended"):
            direct_count(worker, context)
        with pytest.raises(psycopg.Error, match="is suspended"):
            direct_count(worker, context, parallel=True)
        with node(worker, "app", autocommit=False, application_name=AS_CITUS) as w:
            set_context(w, context)
            for setting in PARALLEL:
                w.execute(setting)
            shard = w.execute("SELECT c.relname FROM pg_class c WHERE c.relname ~ '^notes_[0-9]+$'"
                              " AND c.relkind = 'r' LIMIT 1").fetchone()[0]
            # sutra's policy keeps the scan in the process that checks the context.
            assert "Parallel" not in explain(w, f"SELECT count(*) FROM {shard}")
        # Through the coordinator: no new context, and the old one is refused too.
        with node(0, "app", autocommit=False) as a:
            with pytest.raises(psycopg.Error, match="is suspended"):
                in_context(a, app["keys"]["acme"])
    finally:
        with node(0) as c:
            c.execute("SELECT sutra.resume_tenant('acme')")
    assert direct_count(worker, context) == len(ACME_ROWS)


def test_revoked_key_is_refused_by_every_node(app):
    with node(0) as c:
        key = c.execute("SELECT sutra.create_api_key('acme', 'short-lived')").fetchone()[0]
    worker = shard_node(app["acme"])
    with node(0, "app", autocommit=False) as a:
        context = in_context(a, key)
        a.rollback()
    assert direct_count(worker, context) == len(ACME_ROWS)
    key_id = re.match(r"sk_([0-9a-f]{16})_", key).group(1)
    with node(0) as c:
        c.execute("SELECT sutra.revoke_api_key(%s)", (key_id,))
    with pytest.raises(psycopg.Error, match="has been revoked"):
        direct_count(worker, context)


def test_cluster_grants_match_the_coordinator(app):
    with node(0) as c:
        want = sorted(c.execute("SELECT * FROM sutra._cluster_grant_rows()").fetchall())
    for i in (1, 2):
        with node(i) as w:
            assert sorted(w.execute("SELECT kind, id, value FROM sutra.cluster_grants").fetchall()) == want


def test_hnsw_index_per_shard(app):
    with node(0) as c:
        c.execute("CREATE TABLE chunks (id bigserial, tenant_id uuid NOT NULL, embedding sutra.vector(3),"
                  " PRIMARY KEY (tenant_id, id))")
        c.execute("SELECT sutra.enable_tenancy('chunks')")
        c.execute("SELECT create_distributed_table('chunks', 'tenant_id')")
        c.execute("GRANT ALL ON chunks TO app")
        c.execute("GRANT ALL ON SEQUENCE chunks_id_seq TO app")
        c.execute("INSERT INTO chunks (tenant_id, embedding) SELECT %s, ARRAY[i, 0, 0]::real[]::sutra.vector"
                  " FROM generate_series(1, 50) i", (app["acme"],))
        # The other tenant's vector is the nearest to the query.
        c.execute("INSERT INTO chunks (tenant_id, embedding) VALUES (%s, '[0,0,0]')", (app["globex"],))
        c.execute("CREATE INDEX ON chunks USING sutra_hnsw (tenant_id, embedding sutra.vector_l2_ops)")
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        a.execute("SET LOCAL search_path = public, sutra")
        a.execute("SET LOCAL enable_seqscan = off")
        query = "SELECT embedding::text FROM chunks ORDER BY embedding <-> '[0,0,0]' LIMIT 3"
        plan = explain(a, query)
        assert "Task Count: 1" in plan and "Index Scan using chunks_tenant_id_embedding_idx" in plan, plan
        assert re.search(r"Index Cond: \(tenant_id = '[0-9a-f-]+'::uuid\)", plan), plan
        assert [r[0] for r in a.execute(query)] == ["[1,0,0]", "[2,0,0]", "[3,0,0]"]
        a.rollback()
    # From the coordinator, per shard: every row of both tenants is in some shard's index.
    with node(0) as c:
        stats = c.execute("SELECT node, shard, elements FROM sutra.cluster_hnsw_stats('chunks_tenant_id_embedding_idx')").fetchall()
        # One row per tenant partition of each shard's index; empty shards have none.
        assert sum(e for _, _, e in stats) == 51, stats
        assert all(s.startswith("chunks_") for _, s, _ in stats), stats
        checks = c.execute("SELECT shard, heap_rows, problems FROM sutra.cluster_hnsw_check('chunks_tenant_id_embedding_idx')").fetchall()
        assert len(checks) == 8 and sum(h for _, h, _ in checks) == 51
        assert all(p == [] for _, _, p in checks), checks
        with pytest.raises(psycopg.Error, match="not on a table distributed by Citus"):
            c.execute("CREATE TABLE local_chunks (tenant_id uuid, embedding sutra.vector(3))")
            c.execute("CREATE INDEX local_chunks_idx ON local_chunks USING sutra_hnsw (tenant_id, embedding sutra.vector_l2_ops)")
            c.execute("SELECT * FROM sutra.cluster_hnsw_stats('local_chunks_idx')")


def test_isolated_tenant_keeps_its_guarantees(app):
    with node(0) as c:
        c.execute("SET client_min_messages = warning")
        c.execute("SELECT isolate_tenant_to_new_shard('notes', %s, 'CASCADE', shard_transfer_mode => 'block_writes')",
                  (app["acme"],))
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        assert "Task Count: 1" in explain(a, "SELECT body FROM notes")
        assert sorted(r[0] for r in a.execute("SELECT body FROM notes")) == sorted(ACME_ROWS)
        a.rollback()
    worker = shard_node(app["acme"])
    with node(worker) as w:
        # The new shards carry the policies, forced, like the others.
        assert w.execute(
            "SELECT bool_and(c.relrowsecurity AND c.relforcerowsecurity) FROM pg_class c"
            " WHERE c.relname ~ '^notes_[0-9]+$' AND c.relkind = 'r'").fetchone()[0]


def test_catalog_changes_on_the_coordinator_only(app):
    """A worker's own tenants or keys would be known to it alone: sutra refuses them there."""
    with node(1) as w:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="on its coordinator only"):
            w.execute("SELECT sutra.create_tenant('rogue')")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="on its coordinator only"):
            w.execute("UPDATE sutra.tenants SET status = 'suspended' WHERE slug = 'default'")
        # And a key of the coordinator does not authenticate on a worker: it holds no credentials.
        with w.transaction():
            with pytest.raises(psycopg.Error):
                w.execute("SELECT sutra.authenticate(%s)", (app["keys"]["acme"],))


def test_moved_shard_keeps_its_guarantees(app):
    """A tenant's shard moved to the other worker: still one task, still the tenant's rows only,
    and the context still checked there."""
    before = shard_node(app["globex"])
    after = 2 if before == 1 else 1
    (src_host, src_port), (dst_host, dst_port) = nodes()[before], nodes()[after]
    with node(0) as c:
        shard = c.execute("SELECT get_shard_id_for_distribution_column('notes', %s)", (app["globex"],)).fetchone()[0]
        c.execute("SELECT citus_move_shard_placement(%s, %s, %s, %s, %s, shard_transfer_mode => 'block_writes')",
                  (shard, src_host, int(src_port), dst_host, int(dst_port)))
    assert shard_node(app["globex"]) == after
    with node(0, "app", autocommit=False) as a:
        context = in_context(a, app["keys"]["globex"])
        assert "Task Count: 1" in explain(a, "SELECT body FROM notes")
        assert [r[0] for r in a.execute("SELECT body FROM notes")] == ["globex secret"]
        a.rollback()
    with node(0) as c:
        c.execute("SELECT sutra.suspend_tenant('globex')")
    try:
        with pytest.raises(psycopg.Error, match="is suspended"):
            direct_count(after, context)
    finally:
        with node(0) as c:
            c.execute("SELECT sutra.resume_tenant('globex')")


def counters(i, tenant):
    """The live usage counters of `tenant` on node i (zeros when the node never saw it)."""
    with node(i) as c:
        row = c.execute("SELECT statements, rows_read, rows_written, vector_searches FROM sutra._tenant_counters()"
                        " WHERE tenant_id = %s", (tenant,)).fetchone()
    return row or (0, 0, 0, 0)


@pytest.fixture
def metered(app):
    """A tenant of its own, with a key, limited to bursts of 4 statements."""
    with node(0) as c:
        tenant = c.execute("SELECT sutra.create_tenant('metered')").fetchone()[0]
        key = c.execute("SELECT sutra.create_api_key('metered', 'app')").fetchone()[0]
        c.execute("SELECT sutra.update_tenant('metered', quota_overrides => %s)",
                  (Jsonb({"ops_per_second": 0.01, "burst": 4}),))
    yield tenant, key
    with node(0) as c:
        c.execute("SELECT sutra.drop_tenant('metered', purge => true)")


def test_statements_are_charged_where_the_session_is(app, metered):
    """A fan-out statement is one statement of the tenant's, charged to its rate limit and metered
    once, on the coordinator; the workers that ran its tasks charge nothing."""
    tenant, key = metered
    before = [counters(i, tenant) for i in range(3)]
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        a.execute("INSERT INTO notes (body) SELECT 'metered ' || i FROM generate_series(1, 5) i")
        a.execute("SET LOCAL sutra.tenant_pruning = off")
        # Asks all 8 shards: before, each worker charged its tasks and refused past the burst.
        assert a.execute("SELECT count(*) FROM notes").fetchone()[0] == 5
        assert a.execute("SELECT count(*) FROM notes").fetchone()[0] == 5
        assert a.execute("SELECT count(*) FROM notes").fetchone()[0] == 5
        with pytest.raises(psycopg.Error) as e:
            a.execute("SELECT count(*) FROM notes")
        assert e.value.sqlstate == "53400"
        a.rollback()
    after = [counters(i, tenant) for i in range(3)]
    coordinator = [x - y for x, y in zip(after[0], before[0])]
    assert coordinator[0] == 4 and coordinator[2] == 5, coordinator
    for i in (1, 2):
        assert after[i][:3] == before[i][:3], f"worker {i} charged the coordinator's statements"


def test_partitioned_tenant_table(app):
    """A tenant table partitioned by time, made a tenant table and then distributed: every
    partition's shards carry the policies, a partition added later too, and a tenant's query
    routes to one shard per partition it reads."""
    with node(0) as c:
        c.execute("CREATE TABLE events (tenant_id uuid NOT NULL, at date NOT NULL, what text,"
                  " PRIMARY KEY (tenant_id, at)) PARTITION BY RANGE (at)")
        c.execute("CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        c.execute("SELECT sutra.enable_tenancy('events')")
        c.execute("SELECT create_distributed_table('events', 'tenant_id')")
        c.execute("CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')")
        c.execute("GRANT ALL ON events TO app")
        c.execute("INSERT INTO events VALUES (%s, '2026-05-01', 'globex 2026'), (%s, '2027-05-01', 'globex 2027'),"
                  " (%s, '2026-06-01', 'acme 2026'), (%s, '2027-06-01', 'acme 2027')",
                  (app["globex"], app["globex"], app["acme"], app["acme"]))
        assert [r for r in c.execute("SELECT * FROM sutra.check_tenancy('events') WHERE severity = 'error'")] == []
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        assert sorted(r[0] for r in a.execute("SELECT what FROM events")) == ["acme 2026", "acme 2027"]
        assert "Task Count: 1" in explain(a, "SELECT what FROM events WHERE at >= '2027-01-01'")
        a.execute("INSERT INTO events (at, what) VALUES ('2027-07-01', 'acme later')")
        with pytest.raises(psycopg.Error, match="row-level security"):
            a.execute("INSERT INTO events VALUES (%s, '2027-08-01', 'planted')", (app["globex"],))
        a.rollback()
    for i in (1, 2):
        with node(i) as w:
            shards = w.execute(
                "SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity,"
                " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname LIKE 'sutra_tenant_%')"
                " FROM pg_class c WHERE c.relname ~ '^events_(2026|2027)_[0-9]+$' AND c.relkind = 'r'").fetchall()
            assert shards and all(forced and policies == 4 for _, forced, policies in shards), shards


def test_copy_through_the_coordinator(app):
    """COPY into a distributed tenant table through the coordinator reaches the tenant's shard
    (Citus copies into the shards, where the policies apply), and refuses another tenant's rows."""
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        with a.cursor().copy("COPY notes (body) FROM STDIN") as copy:
            copy.write_row(["acme copied"])
        assert [r[0] for r in a.execute("SELECT body FROM notes WHERE body = 'acme copied'")] == ["acme copied"]
        a.rollback()
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        with pytest.raises(psycopg.Error):
            with a.cursor().copy("COPY notes (tenant_id, body) FROM STDIN") as copy:
                copy.write_row([str(app["globex"]), "planted"])
        a.rollback()
    with node(0) as c:
        assert c.execute("SELECT count(*) FROM notes WHERE body IN ('acme copied', 'planted')").fetchone()[0] == 0


def test_tenant_table_distributed_by_another_column(app):
    """A tenant table distributed by a column other than its tenant column: enable_tenancy refuses
    it, and made a tenant table first, its shards' COPY path does not take the distribution column
    for the tenant column (a row naming another tenant is refused)."""
    with node(0) as c:
        c.execute("CREATE TABLE keyed (id uuid NOT NULL, tenant_id uuid NOT NULL, body text)")
        c.execute("SELECT create_distributed_table('keyed', 'id')")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="not by its tenant column"):
            c.execute("SELECT sutra.enable_tenancy('keyed')")
        c.execute("CREATE TABLE keyed2 (id uuid NOT NULL, tenant_id uuid NOT NULL, body text)")
        c.execute("SELECT sutra.enable_tenancy('keyed2')")
        c.execute("SELECT create_distributed_table('keyed2', 'id')")
        c.execute("GRANT ALL ON keyed2 TO app")
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        # id is acme's uuid, tenant_id the victim's: through Citus's COPY into the shards.
        with pytest.raises(psycopg.Error):
            a.execute("INSERT INTO keyed2 SELECT %s, %s, 'planted' FROM generate_series(1, 2)", (app["acme"], app["globex"]))
        a.rollback()
    with node(0) as c:
        assert c.execute("SELECT count(*) FROM keyed2").fetchone()[0] == 0


def test_cluster_hnsw_stats_of_an_awkward_name(app):
    """Shard and index names with quotes are names, never SQL."""
    with node(0) as c:
        c.execute("""CREATE TABLE "it's" (id bigserial, tenant_id uuid NOT NULL, embedding sutra.vector(2), PRIMARY KEY (tenant_id, id))""")
        c.execute("""SELECT create_distributed_table('"it''s"', 'tenant_id')""")
        c.execute("""INSERT INTO "it's" (tenant_id, embedding) VALUES (%s, '[1,2]')""", (app["acme"],))
        c.execute("""CREATE INDEX "q'idx" ON "it's" USING sutra_hnsw (tenant_id, embedding sutra.vector_l2_ops)""")
        stats = c.execute("""SELECT sum(elements) FROM sutra.cluster_hnsw_stats('"q''idx"')""").fetchone()[0]
        assert stats == 1


def test_a_client_named_like_citus_is_charged_on_the_coordinator(app, metered):
    tenant, key = metered
    before = counters(0, tenant)
    host, port = nodes()[0]
    # Citus itself refuses distributed queries from a connection so named; its other statements
    # are the tenant's, charged on the coordinator as any other.
    with psycopg.connect(host=host, port=port, user="app", dbname="app", application_name="citus_internal gpid=1") as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        a.execute("SELECT 1")
        a.execute("SELECT 2")
        a.rollback()
    assert counters(0, tenant)[0] == before[0] + 2


def test_forwarded_context_is_refused_outside_citus_connections(app):
    """What the coordinator forwards, which workers see as statement text, is signed with a secret
    of its own: another session cannot take it up, on the coordinator or on a worker, unless it
    connects to a worker under Citus's name (keep workers off the clients' network)."""
    with node(0, "app", autocommit=False) as a:
        forwarded = in_context(a, app["keys"]["acme"])
        a.rollback()
    worker = shard_node(app["acme"])
    for i in (0, worker):
        with node(i, "app", autocommit=False) as s:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="invalid tenant context"):
                set_context(s, forwarded)
    assert direct_count(worker, forwarded) == len(ACME_ROWS)
    # A context the session holds for itself (session => true, outside a transaction) is the
    # ordinary kind: it is the one that verifies everywhere.
    with node(0, "app") as a:
        a.execute("SELECT sutra.authenticate(%s, session => true)", (app["keys"]["acme"],))
        own = a.execute("SELECT current_setting('sutra.tenant_id')").fetchone()[0]
    assert own != forwarded
    with node(worker, "app", autocommit=False) as w:
        set_context(w, own)


def test_database_without_citus_on_a_citus_server(app):
    """Citus is loaded in the server but not installed in this database: sutra works there as on
    any server (a COPY into a tenant table does not look for Citus's catalog)."""
    host, port = nodes()[0]
    with node(0) as c:
        c.execute("CREATE DATABASE plain")
    try:
        with psycopg.connect(host=host, port=port, user="postgres", dbname="plain", autocommit=True) as c:
            c.execute("CREATE EXTENSION sutra")
            c.execute("CREATE TABLE t (id int, tenant_id uuid)")
            c.execute("SELECT sutra.enable_tenancy('t')")
            c.execute("GRANT ALL ON t TO app")
            key = c.execute("SELECT sutra.create_api_key('default', 'k')").fetchone()[0]
            other = c.execute("SELECT sutra.create_tenant('other')").fetchone()[0]
            c.execute("INSERT INTO t VALUES (0, %s)", (other,))
        with psycopg.connect(host=host, port=port, user="app", dbname="plain") as a:
            a.execute("SELECT sutra.authenticate(%s)", (key,))
            with a.cursor().copy("COPY t (id) FROM STDIN") as copy:
                copy.write_row([1])
                copy.write_row([2])
            assert a.execute("SELECT count(*) FROM t").fetchone()[0] == 2
            a.commit()
    finally:
        with node(0) as c:
            c.execute("DROP DATABASE plain WITH (FORCE)")


def assert_shards_have_quota_triggers(table):
    """Each worker holds shards of `table`, and every one carries sutra's row quota trigger."""
    for i in (1, 2):
        with node(i) as w:
            shards = w.execute(
                "SELECT c.relname, EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid"
                " AND g.tgname = 'sutra_quota_row') FROM pg_class c"
                " WHERE c.relname ~ %s AND c.relkind = 'r'", (f"^{table}_[0-9]+$",)).fetchall()
            assert shards and all(t for _, t in shards), (i, shards)
    with node(0) as c:
        # The coordinator's table holds no rows, and no quota triggers (Citus would refuse them).
        assert c.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass"
                         " AND tgname LIKE 'sutra_quota%%'", (table,)).fetchone()[0] == 0


def quota_usage(tenant):
    with node(0) as c:
        return {name: (used, limit) for name, used, limit in
                c.execute("SELECT * FROM sutra.quota_usage(%s)", (tenant,)).fetchall()}


def test_row_quotas_across_the_cluster(app):
    """Row quotas of a distributed tenant table are counted once, on the shards holding the rows,
    against the limits set on the coordinator: raised there, they apply on the next transaction.
    The other tenant's rows in the same table do not count."""
    with node(0) as c:
        tenant = c.execute("SELECT sutra.create_tenant('quoted')").fetchone()[0]
        key = c.execute("SELECT sutra.create_api_key('quoted', 'app')").fetchone()[0]
        c.execute("SELECT sutra.update_tenant('quoted', quota_overrides => %s)", (Jsonb({"rows_per_table": 3}),))
        c.execute("CREATE TABLE quoted_notes (id bigserial, tenant_id uuid NOT NULL, body text,"
                  " PRIMARY KEY (tenant_id, id))")
        c.execute("SELECT sutra.enable_tenancy('quoted_notes')")
        c.execute("SELECT create_distributed_table('quoted_notes', 'tenant_id')")
        c.execute("GRANT ALL ON quoted_notes TO app")
        c.execute("GRANT ALL ON SEQUENCE quoted_notes_id_seq TO app")
        # Another tenant's rows in the same shards would fill the quota if they counted.
        c.execute("INSERT INTO quoted_notes (tenant_id, body) SELECT %s, 'acme ' || i FROM generate_series(1, 5) i",
                  (app["acme"],))
    # Every shard of the table carries the quota triggers; the coordinator's table has none.
    assert_shards_have_quota_triggers("quoted_notes")
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        a.execute("INSERT INTO quoted_notes (body) VALUES ('one')")
        a.execute("INSERT INTO quoted_notes (body) VALUES ('two'), ('three')")
        a.commit()
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        with pytest.raises(psycopg.Error, match="quota exceeded") as e:
            a.execute("INSERT INTO quoted_notes (body) VALUES ('four')")
        assert e.value.sqlstate == "53100"
        a.rollback()
    assert quota_usage(tenant)["rows_per_table:public.quoted_notes"] == (3, 3)
    with node(0) as c:
        c.execute("SELECT sutra.update_tenant('quoted', quota_overrides => %s)", (Jsonb({"rows_per_table": 5}),))
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        with a.cursor().copy("COPY quoted_notes (body) FROM STDIN") as copy:
            copy.write_row(["four"])
            copy.write_row(["five"])
        a.commit()
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        with pytest.raises(psycopg.Error, match="quota exceeded"):
            a.execute("INSERT INTO quoted_notes (body) VALUES ('six')")
        a.rollback()
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        a.execute("DELETE FROM quoted_notes WHERE body = 'five'")
        a.execute("INSERT INTO quoted_notes (body) VALUES ('five again')")
        a.commit()
    usage = quota_usage(tenant)
    assert usage["rows_per_table:public.quoted_notes"] == (5, 5), usage
    assert usage["rows_total"][0] == 5, usage
    with node(0) as c:
        assert c.execute("SELECT count(*) FROM quoted_notes WHERE tenant_id = %s", (tenant,)).fetchone()[0] == 5
        assert c.execute("SELECT count(*) FROM quoted_notes WHERE tenant_id = %s", (app["acme"],)).fetchone()[0] == 5
        # The coordinator's reports of stored rows add up the nodes too.
        text = c.execute("SELECT sutra.metrics(1000)").fetchone()[0]
        assert re.search(r'sutra_tenant_stored_rows\{[^}]*tenant="quoted"[^}]*\} 5\n', text), text
        c.execute("SELECT sutra.update_tenant('quoted', quota_overrides => %s)",
                  (Jsonb({"rows_per_table": 5, "rows_total": 6}),))
        near = c.execute("SELECT limit_name, used FROM sutra.tenants_near_limits WHERE slug = 'quoted'").fetchall()
        assert ("rows_total", 5) in [(n, int(u)) for n, u in near], near


def test_quota_counts_follow_a_moved_shard(app):
    """A shard moved to the other node: the rows are counted there, once, and no longer on the
    node they left; the quota still holds."""
    with node(0) as c:
        tenant = c.execute("SELECT id FROM sutra.tenants WHERE slug = 'quoted'").fetchone()[0]
        key = c.execute("SELECT sutra.create_api_key('quoted', 'app')").fetchone()[0]
        before = [p for _, p in nodes()].index(str(c.execute(
            "SELECT nodeport FROM pg_dist_shard_placement"
            " WHERE shardid = get_shard_id_for_distribution_column('quoted_notes', %s)", (tenant,)).fetchone()[0]))
        after = 2 if before == 1 else 1
        (src_host, src_port), (dst_host, dst_port) = nodes()[before], nodes()[after]
        shard = c.execute("SELECT get_shard_id_for_distribution_column('quoted_notes', %s)", (tenant,)).fetchone()[0]
        c.execute("SET client_min_messages = warning")
        c.execute("SELECT citus_move_shard_placement(%s, %s, %s, %s, %s, shard_transfer_mode => 'block_writes')",
                  (shard, src_host, int(src_port), dst_host, int(dst_port)))
        c.execute("CALL citus_cleanup_orphaned_resources()")
    assert quota_usage(tenant)["rows_per_table:public.quoted_notes"] == (5, 5)
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        with pytest.raises(psycopg.Error, match="quota exceeded"):
            a.execute("INSERT INTO quoted_notes (body) VALUES ('six')")
        a.rollback()


def test_quota_counts_follow_a_split_shard(app):
    """A shard split in two, the halves on both workers: the new shards carry the quota triggers,
    the rows are counted once where they land, and the quota still holds."""
    with node(0) as c:
        tenant = c.execute("SELECT id FROM sutra.tenants WHERE slug = 'quoted'").fetchone()[0]
        key = c.execute("SELECT sutra.create_api_key('quoted', 'app')").fetchone()[0]
        shard, low, high = c.execute(
            "SELECT shardid, shardminvalue::int8, shardmaxvalue::int8 FROM pg_dist_shard"
            " WHERE shardid = get_shard_id_for_distribution_column('quoted_notes', %s)", (tenant,)).fetchone()
        workers = [r[0] for r in c.execute("SELECT nodeid FROM pg_dist_node WHERE noderole = 'primary'"
                                           " AND nodeport <> %s ORDER BY nodeport", (int(nodes()[0][1]),))]
        count = "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'quoted_notes'::regclass"
        shards = c.execute(count).fetchone()[0]
        c.execute("SET client_min_messages = warning")
        c.execute("SELECT citus_split_shard_by_split_points(%s, ARRAY[%s], %s, 'block_writes')",
                  (shard, str((low + high) // 2), workers))
        c.execute("CALL citus_cleanup_orphaned_resources()")
        assert c.execute(count).fetchone()[0] == shards + 1
    assert_shards_have_quota_triggers("quoted_notes")
    assert quota_usage(tenant)["rows_per_table:public.quoted_notes"] == (5, 5)
    with node(0, "app", autocommit=False) as a:
        a.execute("SELECT sutra.authenticate(%s)", (key,))
        assert a.execute("SELECT count(*) FROM quoted_notes").fetchone()[0] == 5
        with pytest.raises(psycopg.Error, match="quota exceeded"):
            a.execute("INSERT INTO quoted_notes (body) VALUES ('six')")
        a.rollback()


def test_vector_searches_are_counted_once_on_the_coordinator(app):
    """A nearest-neighbour search through the coordinator is one vector search of the tenant's,
    metered on the coordinator with its statement, routed to one shard or asked of every shard;
    the workers that ran it count none."""
    with node(0) as c:
        c.execute("CREATE TABLE passages (id bigserial, tenant_id uuid NOT NULL, embedding sutra.vector(2),"
                  " PRIMARY KEY (tenant_id, id))")
        c.execute("SELECT sutra.enable_tenancy('passages')")
        c.execute("SELECT create_distributed_table('passages', 'tenant_id')")
        c.execute("GRANT ALL ON passages TO app")
        c.execute("INSERT INTO passages (tenant_id, embedding) SELECT %s, ARRAY[i, 0]::real[]::sutra.vector"
                  " FROM generate_series(1, 20) i", (app["acme"],))
        c.execute("INSERT INTO passages (tenant_id, embedding) VALUES (%s, '[0,0]')", (app["globex"],))
        c.execute("CREATE INDEX ON passages USING sutra_hnsw (tenant_id, embedding sutra.vector_l2_ops)")
    before = [counters(i, app["acme"]) for i in range(3)]
    with node(0, "app", autocommit=False) as a:
        in_context(a, app["keys"]["acme"])
        a.execute("SET LOCAL enable_seqscan = off")
        query = "SELECT embedding::text FROM passages ORDER BY embedding OPERATOR(sutra.<->) '[0,0]' LIMIT 2"
        assert [r[0] for r in a.execute(query)] == ["[1,0]", "[2,0]"]
        a.execute("SET LOCAL sutra.tenant_pruning = off")
        assert [r[0] for r in a.execute(query)] == ["[1,0]", "[2,0]"]
        # Not a search: no ORDER BY a distance.
        a.execute("SELECT count(*) FROM passages")
        a.rollback()
    after = [counters(i, app["acme"]) for i in range(3)]
    assert after[0][3] - before[0][3] == 2, (before[0], after[0])
    for i in (1, 2):
        assert after[i][3] == before[i][3], f"worker {i} counted the coordinator's searches"


def test_a_table_dressed_as_a_shard_moves_no_counts(app):
    """On a worker, a role's own table named like a shard, with a policy named and written like
    sutra's insert policy, gets no say over quota counts: rows written there, naming a tenant,
    are counted for nobody."""
    tenant = app["globex"]
    totals = "SELECT rows FROM sutra._quota_counts(%s) q WHERE q.table_name IS NULL"
    with node(0) as c:
        # A schema of the role's own (Citus refuses changes to public on a worker).
        c.execute("CREATE SCHEMA own AUTHORIZATION app")
    try:
        with node(1, "app") as a:
            a.execute("SET search_path = own")
            a.execute("CREATE TABLE mine_4242 (tenant_id uuid NOT NULL, body text)")
            a.execute("CREATE POLICY sutra_tenant_insert ON mine_4242 FOR INSERT"
                      " WITH CHECK (tenant_id = sutra.current_tenant_checked('write'))")
            # It looks like a shard to the handler that gives shards their quota triggers...
            assert a.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'mine_4242'::regclass"
                             " AND tgname LIKE 'sutra_quota%'").fetchone()[0] == 2
            # (the tenant's counts on this node known again, so that a counted row would show)
            with node(1) as w:
                before = w.execute(totals, (tenant,)).fetchone()[0]
            # ...but the triggers ask Citus's catalog, which knows no such shard.
            a.execute("INSERT INTO mine_4242 SELECT %s, 'planted ' || i FROM generate_series(1, 50) i", (tenant,))
        with node(1) as w:
            counted = w.execute("SELECT coalesce(sum(rows), 0) FROM sutra._quota_counts(%s) q"
                                " WHERE q.table_name = 'own.mine_4242'::regclass", (tenant,)).fetchone()[0]
            assert counted == 0, counted
            assert w.execute(totals, (tenant,)).fetchone()[0] == before
    finally:
        with node(1) as w:
            w.execute("DROP TABLE IF EXISTS own.mine_4242")
        with node(0) as c:
            c.execute("DROP SCHEMA own CASCADE")
