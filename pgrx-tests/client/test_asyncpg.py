"""asyncpg with pgvector's binary codec and a pool, as docs/tenancy.md "Connection pools" shows:
`register_vector(conn, schema='sutra')` in the pool's init (sutra's vector type lives in schema
sutra), and each request in `async with pool.acquire() as conn, conn.transaction()` with the
per-transaction context. 20 concurrent tasks of two tenants search and insert through a
sutra_hnsw index; a third tenant's rows sit right on every query and must never come back."""

import asyncio
import os

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector

from conftest import make_tenant_table, superuser

TENANTS = {"apg-a": "00000000-0000-0000-0000-00000000a6a1", "apg-b": "00000000-0000-0000-0000-00000000a6b1"}
HIDDEN = "00000000-0000-0000-0000-00000000a6c1"
QUERY = [0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def setup():
    drop = make_tenant_table("apg_docs", "apg_app", {**TENANTS, "apg-c": HIDDEN},
                             "id serial PRIMARY KEY, embedding sutra.vector(3)")
    with superuser() as c:
        c.execute("CREATE INDEX ON apg_docs USING sutra_hnsw (tenant_id, embedding)")
        c.execute("INSERT INTO apg_docs (tenant_id, embedding) SELECT %s, '[0.5,0.5,0.5]' FROM generate_series(1, 20)",
                  (HIDDEN,))
        for tid in TENANTS.values():
            c.execute("INSERT INTO apg_docs (tenant_id, embedding) SELECT %s, '[-1,-1,-1]' FROM generate_series(1, 5)",
                      (tid,))
    yield
    drop()


async def run():
    pool = await asyncpg.create_pool(host=os.environ["SUTRA_TEST_HOST"], port=int(os.environ["SUTRA_TEST_PORT"]),
                                     user="apg_app", database="sutra_client", min_size=2, max_size=4,
                                     server_settings={"search_path": "public, sutra"},
                                     init=lambda conn: register_vector(conn, schema="sutra"))
    problems = []

    async def task(n):
        slug = list(TENANTS)[n % 2]
        for i in range(10):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT sutra.set_tenant($1)", slug)
                await conn.execute("INSERT INTO apg_docs (embedding) VALUES ($1)", np.array([-1.0, -1.0, float(i)]))
                rows = await conn.fetch("SELECT tenant_id::text, embedding FROM apg_docs "
                                        "ORDER BY embedding <-> $1 LIMIT 5", np.array(QUERY))
                if {r["tenant_id"] for r in rows} != {TENANTS[slug]} or len(rows) != 5:
                    problems.append((n, i, [r["tenant_id"] for r in rows]))
                if not all(len(r["embedding"].to_list()) == 3 for r in rows):
                    problems.append((n, i, "embedding not decoded"))

    await asyncio.gather(*(task(n) for n in range(20)))
    async with pool.acquire() as conn:
        # On so small a table a sequential scan may cost less; what matters here is that the
        # tenant condition reaches an index through the driver's prepared statement.
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT id FROM apg_docs ORDER BY embedding <-> $1 LIMIT 5", np.array(QUERY)))
        try:
            await conn.fetch("SELECT count(*) FROM apg_docs")
            no_context = "read without a context"
        except asyncpg.PostgresError as e:
            no_context = e.sqlstate
    await pool.close()
    return problems, plan, no_context


def test_asyncpg_pool_with_the_binary_codec(setup):
    problems, plan, no_context = asyncio.run(run())
    assert not problems, problems[:5]
    # Through an index on the tenant (the btree or sutra_hnsw), never by filtering every
    # tenant's rows.
    assert "Cond: (tenant_id = $0)" in plan, plan
    assert no_context == "28000"
    with superuser() as c:
        counts = dict(c.execute("SELECT tenant_id::text, count(*) FROM apg_docs GROUP BY 1").fetchall())
    assert counts == {TENANTS["apg-a"]: 5 + 100, TENANTS["apg-b"]: 5 + 100, HIDDEN: 20}
