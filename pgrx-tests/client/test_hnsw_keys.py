"""The partition key of a sutra_hnsw index as drivers send it: psycopg 3 sends a Python int as
smallint, integer or bigint depending on its value, SQLAlchemy binds through psycopg, and
prepared statements end up with a generic plan. Whatever integer type arrives, `tenant = $1` must
be the index's condition on the key (EXPLAIN shows it), the search must read that tenant's
partition only, and a value no key can equal (beyond the column's range) must find nothing. Each
table holds another tenant whose rows are nearer to the query, which a scan outside the
partition would return."""

import psycopg
import pytest
import sqlalchemy

from conftest import superuser as _superuser

DIMS = 8
# Tenant keys of each size psycopg tells apart: smallint, integer, bigint (bigint tables only).
SMALL, MEDIUM, LARGE = 7, 40_000, 5_000_000_000
QUERY = "[" + ",".join(["0.5"] * DIMS) + "]"
NEAR = QUERY  # the other tenant's rows sit on the query itself
FAR = "[" + ",".join(["-0.5"] * DIMS) + "]"


def superuser():
    """A superuser connection with sutra's operators on the path, as applications set it up."""
    c = _superuser()
    c.execute("SET search_path = public, sutra")
    return c


@pytest.fixture(scope="module")
def tables():
    with superuser() as c:
        for name, coltype, tenants in [("key_int4", "integer", [SMALL, MEDIUM]),
                                       ("key_int8", "bigint", [SMALL, MEDIUM, LARGE]),
                                       ("key_text", "text", ["acme", "other"])]:
            c.execute(f"DROP TABLE IF EXISTS {name}")
            c.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, tenant {coltype}, embedding sutra.vector({DIMS}))")
            # 1,200 rows per tenant: above the size a partition is read whole.
            for t in tenants:
                c.execute(f"INSERT INTO {name} (tenant, embedding) SELECT %s, %s FROM generate_series(1, 1200)", (t, FAR))
            # A tenant with rows right on the query: it must never show up in another's search.
            other = -1 if coltype != "text" else "intruder"
            c.execute(f"INSERT INTO {name} (tenant, embedding) SELECT %s, %s FROM generate_series(1, 1200)", (other, NEAR))
            c.execute(f"CREATE INDEX {name}_idx ON {name} USING sutra_hnsw (tenant, embedding) WITH (m = 8, ef_construction = 32)")
            c.execute(f"ANALYZE {name}")
    yield
    with superuser() as c:
        for name in ["key_int4", "key_int8", "key_text"]:
            c.execute(f"DROP TABLE {name}")


def search(c, table, key, explain=False, **kw):
    sql = f"SELECT id, tenant FROM {table} WHERE tenant = %s ORDER BY embedding <-> %s::sutra.vector LIMIT 5"
    if explain:
        return "\n".join(r[0] for r in c.execute("EXPLAIN " + sql, (key, QUERY), **kw))
    return c.execute(sql, (key, QUERY), **kw).fetchall()


def assert_index_cond_on_key(plan, table):
    assert f"Index Scan using {table}_idx" in plan, plan
    assert "Index Cond: (tenant = " in plan, plan


@pytest.mark.parametrize("table,key", [("key_int4", SMALL), ("key_int4", MEDIUM),
                                       ("key_int8", SMALL), ("key_int8", MEDIUM), ("key_int8", LARGE)])
def test_python_ints_of_every_size_use_the_partition(tables, table, key):
    with superuser() as c:
        plan = search(c, table, key, explain=True)
        assert_index_cond_on_key(plan, table)
        rows = search(c, table, key)
    assert len(rows) == 5 and {t for _, t in rows} == {key}, rows


def test_a_key_beyond_the_columns_range_finds_nothing(tables):
    with superuser() as c:
        plan = search(c, "key_int4", LARGE, explain=True)
        assert_index_cond_on_key(plan, "key_int4")
        assert search(c, "key_int4", LARGE) == []


def test_sent_types_are_what_the_test_claims(tables):
    """The test is only worth its name if psycopg really sends these types."""
    with superuser() as c:
        types = c.execute("SELECT pg_typeof(%s)::text, pg_typeof(%s)::text, pg_typeof(%s)::text",
                          (SMALL, MEDIUM, LARGE)).fetchone()
    assert types == ("smallint", "integer", "bigint")


@pytest.mark.parametrize("table,key", [("key_int4", SMALL), ("key_int8", MEDIUM), ("key_int8", SMALL)])
def test_prepared_statements_with_a_generic_plan_use_the_partition(tables, table, key):
    with superuser() as c:
        c.execute("SET plan_cache_mode = force_generic_plan")
        plan = search(c, table, key, explain=True, prepare=True)
        assert_index_cond_on_key(plan, table)
        for _ in range(6):
            rows = search(c, table, key, prepare=True)
            assert {t for _, t in rows} == {key}, rows


def test_text_keys_as_text_and_varchar(tables):
    """(A `name` value compares with a text key under the C collation, not the column's, so
    neither a btree nor this index takes it as a condition on the key.)"""
    with superuser() as c:
        for cast in ["text", "varchar"]:
            sql = (f"SELECT id, tenant FROM key_text WHERE tenant = %s::{cast} "
                   f"ORDER BY embedding <-> %s::sutra.vector LIMIT 5")
            plan = "\n".join(r[0] for r in c.execute("EXPLAIN " + sql, ("acme", QUERY)))
            assert_index_cond_on_key(plan, "key_text")
            rows = c.execute(sql, ("acme", QUERY)).fetchall()
            assert len(rows) == 5 and {t for _, t in rows} == {"acme"}, (cast, rows)


def test_sqlalchemy_bound_parameters_use_the_partition(tables):
    import os
    url = sqlalchemy.engine.URL.create("postgresql+psycopg", username="postgres", host=os.environ["SUTRA_TEST_HOST"],
                                       port=int(os.environ["SUTRA_TEST_PORT"]), database="sutra_client")
    engine = sqlalchemy.create_engine(url, connect_args={"options": "-c search_path=public,sutra"})
    try:
        with engine.connect() as c:
            stmt = sqlalchemy.text("SELECT id, tenant FROM key_int8 WHERE tenant = :t "
                                   "ORDER BY embedding <-> CAST(:q AS sutra.vector) LIMIT 5")
            for key in [SMALL, MEDIUM, LARGE]:
                plan = "\n".join(r[0] for r in c.execute(sqlalchemy.text("EXPLAIN " + stmt.text), {"t": key, "q": QUERY}))
                assert_index_cond_on_key(plan, "key_int8")
                rows = c.execute(stmt, {"t": key, "q": QUERY}).fetchall()
                assert len(rows) == 5 and {r.tenant for r in rows} == {key}, rows
    finally:
        engine.dispose()
