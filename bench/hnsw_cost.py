"""Planner costs of sutra_hnsw against measured times (bench/hnsw_cost.sh runs this).

For each data set (rows x dimensions, clustered unit vectors; one partition, or many small tenant
partitions with a key column), and for each sutra.hnsw_ef_search of the sweep, it measures the
median time of the top-10 query through the index (enable_seqscan off) and through a sequential
scan and sort (index scans off), reads the planner's estimated total cost of both plans, and
what the planner chooses with both allowed. A choice is right when the chosen plan is the faster
one, or within 25% of it. Keyless queries on a keyed index (a search across every tenant) are
timed the same way.
"""

import argparse
import statistics
import sys
import time

import numpy as np
import psycopg

QUERIES = 25


def vectors(rng, n, dims, clusters=50):
    centers = rng.standard_normal((clusters, dims)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dims)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def text(v):
    return "[" + ",".join(f"{x:.5f}" for x in v) + "]"


def load(conn, table, dims, data, tenants):
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    key = "tenant int4 NOT NULL, " if tenants else ""
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, {key}embedding vector({dims}))")
    cols = "(id, tenant, embedding)" if tenants else "(id, embedding)"
    with conn.cursor().copy(f"COPY {table} {cols} FROM STDIN") as copy:
        for i, v in enumerate(data):
            copy.write_row((i, i % tenants, text(v)) if tenants else (i, text(v)))
    conn.execute(f"VACUUM ANALYZE {table}")
    t0 = time.monotonic()
    keycol = "tenant, " if tenants else ""
    conn.execute(f"CREATE INDEX {table}_idx ON {table} USING sutra_hnsw ({keycol}embedding vector_cosine_ops)")
    return time.monotonic() - t0


def plan(conn, sql, params):
    doc = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0][0]["Plan"]
    node, uses_index = doc, False
    stack = [doc]
    while stack:
        n = stack.pop()
        if n.get("Index Name", "").endswith("_idx"):
            uses_index = True
        stack.extend(n.get("Plans", []))
    return node["Total Cost"], uses_index


def timed(conn, sql, params_list):
    times = []
    for p in params_list:
        t0 = time.perf_counter()
        conn.execute(sql, p).fetchall()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(conn, sql, params_list):
    """(index ms, index cost, seq ms, seq cost, planner uses the index, its cost)."""
    conn.execute("RESET enable_seqscan")
    conn.execute("RESET enable_indexscan")
    chosen_cost, chosen_index = plan(conn, sql, params_list[0])
    conn.execute("SET enable_seqscan = off")
    idx_cost, forced = plan(conn, sql, params_list[0])
    assert forced, "the index is not used even with enable_seqscan off"
    timed(conn, sql, params_list[:3])
    idx_ms = timed(conn, sql, params_list)
    conn.execute("RESET enable_seqscan")
    conn.execute("SET enable_indexscan = off")
    seq_cost, _ = plan(conn, sql, params_list[0])
    timed(conn, sql, params_list[:3])
    seq_ms = timed(conn, sql, params_list)
    conn.execute("RESET enable_indexscan")
    return idx_ms, idx_cost, seq_ms, seq_cost, chosen_index


def verdict(idx_ms, seq_ms, chosen_index):
    chosen, other = (idx_ms, seq_ms) if chosen_index else (seq_ms, idx_ms)
    return "right" if chosen <= other * 1.25 else "WRONG"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--sets", default="10000x128,30000x384,100000x128")
    ap.add_argument("--efs", default="20,40,80,160,320,640")
    ap.add_argument("--keyless", default="50000x4x128", help="tenants x rows x dims, or empty")
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    efs = [int(e) for e in a.efs.split(",")]
    wrong = 0
    # No server-side prepared statements: a cached plan would outlive the enable_* settings.
    with psycopg.connect(a.dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SET search_path = public, sutra")
        conn.execute("SET max_parallel_workers_per_gather = 2")
        print("set               ef   index ms  seq ms   index cost  seq cost   planner  choice")
        for s in [x for x in a.sets.split(",") if x]:
            n, dims = (int(x) for x in s.split("x"))
            data = vectors(rng, n, dims)
            build = load(conn, "cost_items", dims, data, 0)
            print(f"# {n} x {dims}: index built in {build:.1f} s", flush=True)
            qs = [(text(v),) for v in vectors(rng, QUERIES, dims)]
            sql = "SELECT id FROM cost_items ORDER BY embedding <=> %s::vector LIMIT 10"
            for ef in efs:
                conn.execute(f"SET sutra.hnsw_ef_search = {ef}")
                idx_ms, idx_cost, seq_ms, seq_cost, chosen = measure(conn, sql, qs)
                v = verdict(idx_ms, seq_ms, chosen)
                wrong += v == "WRONG"
                print(f"{s:<16} {ef:>4} {idx_ms:>9.2f} {seq_ms:>7.2f} {idx_cost:>11.0f} {seq_cost:>9.0f}   "
                      f"{'index' if chosen else 'seq':<7}  {v}", flush=True)
            conn.execute("DROP TABLE cost_items")
            conn.execute("RESET sutra.hnsw_ef_search")
        if a.keyless:
            tenants, per, dims = (int(x) for x in a.keyless.split("x"))
            data = vectors(rng, tenants * per, dims)
            build = load(conn, "cost_keyed", dims, data, tenants)
            print(f"# keyless search on a keyed index: {tenants} tenants x {per} rows x {dims}: built in {build:.1f} s",
                  flush=True)
            qs = [(text(v),) for v in vectors(rng, QUERIES, dims)]
            sql = "SELECT id FROM cost_keyed ORDER BY embedding <=> %s::vector LIMIT 10"
            idx_ms, idx_cost, seq_ms, seq_cost, chosen = measure(conn, sql, qs[:5])
            v = verdict(idx_ms, seq_ms, chosen)
            wrong += v == "WRONG"
            print(f"keyless          {40:>4} {idx_ms:>9.2f} {seq_ms:>7.2f} {idx_cost:>11.0f} {seq_cost:>9.0f}   "
                  f"{'index' if chosen else 'seq':<7}  {v}")
            keyed = "SELECT id FROM cost_keyed WHERE tenant = %s ORDER BY embedding <=> %s::vector LIMIT 10"
            kqs = [(int(rng.integers(0, tenants)), q[0]) for q in qs]
            idx_ms, idx_cost, seq_ms, seq_cost, chosen = measure(conn, keyed, kqs)
            v = verdict(idx_ms, seq_ms, chosen)
            wrong += v == "WRONG"
            print(f"one tenant       {40:>4} {idx_ms:>9.2f} {seq_ms:>7.2f} {idx_cost:>11.0f} {seq_cost:>9.0f}   "
                  f"{'index' if chosen else 'seq':<7}  {v}")
            conn.execute("DROP TABLE cost_keyed")
    print(f"wrong choices: {wrong}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
