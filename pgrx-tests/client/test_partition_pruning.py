"""A tenant table partitioned by its tenant column is planned for the session's tenant only: the
plan names one partition. The constant sutra adds only narrows what row level security already
allows, so every result is the one without it (sutra.tenant_pruning = off), and a cached plan never
serves another tenant: prepared statements, PL/pgSQL and pooled transactions switch tenants here.
"""

import re
import secrets

import psycopg
import pytest
from psycopg import sql

from conftest import as_role, require_cluster, superuser

PARTITIONS = 8


class Env:
    pass


@pytest.fixture(scope="module")
def env():
    require_cluster()
    e = Env()
    sfx = secrets.token_hex(4)
    e.app, e.table, e.labels = f"prune_app_{sfx}", f"prune_notes_{sfx}", f"prune_labels_{sfx}"
    e.su = su = superuser()
    T, L, APP = sql.Identifier(e.table), sql.Identifier(e.labels), sql.Identifier(e.app)
    su.execute(sql.SQL("CREATE ROLE {} LOGIN").format(APP))
    su.execute(sql.SQL("CREATE TABLE {} (id bigserial, tenant_id uuid NOT NULL, body text NOT NULL, label int)"
                       " PARTITION BY HASH (tenant_id)").format(T))
    for r in range(PARTITIONS):
        su.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(
            sql.Identifier(f"{e.table}_{r}"), T, sql.Literal(PARTITIONS), sql.Literal(r)))
    su.execute("SELECT sutra.enable_tenancy(%s)", (e.table,))
    su.execute(sql.SQL("CREATE TABLE {} (label int PRIMARY KEY, name text)").format(L))
    su.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one'), (2, 'two'), (3, 'three')").format(L))
    su.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(T, APP))
    su.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(L, APP))
    su.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(e.table + "_id_seq"), APP))
    e.tenants = [su.execute("SELECT sutra.create_tenant(%s)", (f"prune-{n}-{sfx}",)).fetchone()[0] for n in "abc"]
    e.keys = [su.execute("SELECT sutra.create_api_key(%s::uuid)", (t,)).fetchone()[0] for t in e.tenants]
    for i, t in enumerate(e.tenants):
        su.execute(sql.SQL("INSERT INTO {} (tenant_id, body, label) SELECT %s, %s || ' ' || g, 1 + g %% 2"
                           " FROM generate_series(1, %s) g").format(T), (t, f"note of {'abc'[i]}", 10 * (i + 1)))
    su.execute(sql.SQL("ANALYZE {}").format(T))
    try:
        yield e
    finally:
        su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (e.app,))
        su.execute(sql.SQL("DROP TABLE {}, {}").format(T, L))
        for t in e.tenants:
            su.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (t,))
        su.execute(sql.SQL("DROP ROLE {}").format(APP))
        su.close()


def app(env, tenant=None):
    c = as_role(env.app)
    if tenant is not None:
        c.execute("SELECT sutra.authenticate(%s, session => true)", (env.keys[tenant],))
    return c


def partitions_in(conn, query, params=None):
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (COSTS OFF) " + query, params))
    return set(re.findall(r" on (prune_notes_\w+_\d+)", plan))


def both_ways(conn, query, params=None):
    """The rows of `query` with the constant and without it (sutra.tenant_pruning off)."""
    with_it = sorted(conn.execute(query, params).fetchall())
    conn.execute("SET sutra.tenant_pruning = off")
    try:
        without = sorted(conn.execute(query, params).fetchall())
    finally:
        conn.execute("RESET sutra.tenant_pruning")
    return with_it, without


def test_the_plan_reads_one_partition(env):
    c = app(env, 0)
    q = f"SELECT count(*) FROM {env.table}"
    assert len(partitions_in(c, q)) == 1
    c.execute("SET sutra.tenant_pruning = off")
    assert len(partitions_in(c, q)) == PARTITIONS
    c.execute("RESET sutra.tenant_pruning")
    assert c.execute(q).fetchone()[0] == 10
    # UPDATE and DELETE are planned for the one partition too, and change only the tenant's rows.
    assert len(partitions_in(c, f"UPDATE {env.table} SET body = body")) == 1
    assert c.execute(f"UPDATE {env.table} SET body = body").rowcount == 10
    assert len(partitions_in(c, f"DELETE FROM {env.table} WHERE body = 'none'")) == 1


@pytest.mark.parametrize("query", [
    "SELECT tenant_id, body FROM {t}",
    "SELECT l.name, n.body FROM {l} l LEFT JOIN {t} n ON n.label = l.label",
    "SELECT l.name, (SELECT count(*) FROM {t} n WHERE n.label = l.label) FROM {l} l",
    "WITH x AS (SELECT label, count(*) AS n FROM {t} GROUP BY label) SELECT * FROM {l} l FULL JOIN x USING (label)",
    "SELECT count(*) FROM {t} a JOIN {t} b ON a.label = b.label",
    "SELECT * FROM (SELECT body FROM {t} UNION ALL SELECT name FROM {l}) s",
], ids=["plain", "left join", "sublink", "cte full join", "self join", "union"])
def test_results_are_those_without_the_constant(env, query):
    c = app(env, 1)
    q = query.format(t=env.table, l=env.labels)
    with_it, without = both_ways(c, q)
    assert with_it == without
    assert len(partitions_in(c, q)) == 1


def test_sessions_the_policies_do_not_restrict_get_no_constant(env):
    # A superuser with a context sees every row, as row level security does not apply to it.
    env.su.execute("SELECT sutra.authenticate(%s, session => true)", (env.keys[0],))
    try:
        assert env.su.execute(f"SELECT count(*) FROM {env.table}").fetchone()[0] == 60
        assert len(partitions_in(env.su, f"SELECT count(*) FROM {env.table}")) == PARTITIONS
    finally:
        env.su.execute("SELECT sutra.clear_tenant()")


def test_a_widening_policy_of_the_owner_keeps_its_rows(env):
    """A permissive policy of the table's owner ORs with sutra's: no constant may hide its rows."""
    env.su.execute(sql.SQL("CREATE POLICY public_label ON {} FOR SELECT USING (label = 2)").format(
        sql.Identifier(env.table)))
    try:
        c = app(env, 0)
        rows = c.execute(f"SELECT tenant_id, count(*) FROM {env.table} GROUP BY 1 ORDER BY 2").fetchall()
        assert {t for t, _ in rows} == set(env.tenants)
        with_it, without = both_ways(c, f"SELECT tenant_id, body FROM {env.table}")
        assert with_it == without
    finally:
        env.su.execute(sql.SQL("DROP POLICY public_label ON {}").format(sql.Identifier(env.table)))


def test_a_cached_plan_never_serves_another_tenant(env):
    c = app(env)
    q = f"SELECT tenant_id, count(*) FROM {env.table} GROUP BY 1"
    # Server-side prepared from the first execution; generic plans after five.
    for round_ in range(3):
        for i, key in enumerate(env.keys):
            c.execute("SELECT sutra.authenticate(%s, session => true)", (key,))
            for _ in range(7):
                assert c.execute(q, prepare=True).fetchall() == [(env.tenants[i], 10 * (i + 1))], (round_, i)
    # Transaction-scoped contexts, as behind a pool, alternating tenants on one connection.
    for _ in range(3):
        for i, key in enumerate(env.keys):
            with c.transaction():
                c.execute("SELECT sutra.authenticate(%s)", (key,))
                assert c.execute(q, prepare=True).fetchall() == [(env.tenants[i], 10 * (i + 1))]
    # PL/pgSQL caches its plans for the session: the function's answer follows the tenant.
    env.su.execute(f"""CREATE OR REPLACE FUNCTION public.{env.table}_count() RETURNS bigint LANGUAGE plpgsql
                       AS $$ BEGIN RETURN (SELECT count(*) FROM {env.table}); END $$""")
    try:
        for _ in range(2):
            for i, key in enumerate(env.keys):
                c.execute("SELECT sutra.authenticate(%s, session => true)", (key,))
                assert c.execute(f"SELECT public.{env.table}_count()").fetchone()[0] == 10 * (i + 1)
    finally:
        env.su.execute(f"DROP FUNCTION public.{env.table}_count()")


def test_a_forged_or_missing_context_adds_nothing(env):
    c = app(env)
    with pytest.raises(psycopg.Error) as e:
        c.execute(f"SELECT count(*) FROM {env.table}")
    assert e.value.sqlstate == "28000"
    with pytest.raises(psycopg.Error) as e:
        c.execute("SELECT set_config('sutra.tenant_id', %s, false)",
                  ("v1." + str(env.tenants[1]) + ".rwa.9999999999.-.forged",))
    assert e.value.sqlstate == "42501"
