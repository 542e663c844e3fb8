"""Data, ground truth and recall for bench/hnsw.sh (the sutra_hnsw index against pgvector's hnsw).

Subcommands:
  gen-single DIR      100,000 x 128 clustered vectors (items.tsv), held-out queries (queries.tsv)
                      and their exact cosine top 10 (truth.npz); fixed seed.
  gen-tenants DIR     1,000 tenants of power-law sizes, 200,000 x 128 rows (docs.tsv), queries
                      sampled over the size buckets (queries.tsv) and the exact cosine top 10
                      within each query's tenant (truth.npz); fixed seed.
  recall-single       runs the held-out queries against one side's table, prints recall@10.
  recall-tenants      runs the tenant queries for one setup, prints per bucket recall@10, short
                      results and which index each query's plan used.
  latency PREFIX      p50 and p99 in ms of the transactions in pgbench's -l logs PREFIX.*.

Vectors are rounded to 4 decimals before anything else, so that the text written for COPY reads
back as exactly the float4 values the ground truth is computed from.
"""

import argparse
import glob
import os
import sys
import uuid

import numpy as np

# Part single runs at 128 and 768 dimensions (BENCH_DIMS); the other parts at 128.
DIMS = int(os.environ.get("BENCH_DIMS", "128"))
SEED_SINGLE = 20240601
SEED_TENANTS = 20240602
BUCKETS = ("small", "medium", "large")  # < 100 rows, 100 to 1000, > 1000


def bucket_of(size):
    return "small" if size < 100 else ("medium" if size <= 1000 else "large")


# --- Data -------------------------------------------------------------------------------------


class Clusters:
    """Gaussian clusters: each is a centre, a random 64-dimensional subspace along which its points
    spread (about half as far from the centre as the centre is from the origin), and a little
    isotropic noise. On this data HNSW's recall@10 climbs with ef_search (pgvector, m = 16,
    ef_construction = 64: about 0.87 at 10, 0.94 at 20, 0.97 at 40), and about 1% of queries
    end in another cluster whatever ef_search, as HNSW does on clustered data."""

    def __init__(self, rng, n, latent=64, spread=0.06, noise=0.15):
        self.centers = rng.normal(size=(n, DIMS))
        self.bases = rng.normal(scale=spread, size=(n, DIMS, latent))
        self.latent = latent
        self.noise = noise

    def sample(self, rng, cluster, offset=None):
        """One point per entry of the integer array `cluster`; `offset` (same length, DIMS
        wide) shifts each point's centre."""
        z = rng.normal(size=(len(cluster), self.latent))
        x = self.centers[cluster].copy()
        for c in np.unique(cluster):
            sel = cluster == c
            x[sel] += z[sel] @ self.bases[c].T
        if offset is not None:
            x += offset
        x += rng.normal(scale=self.noise, size=x.shape)
        return x


def rounded(x):
    return np.round(x.astype(np.float64), 4).astype(np.float32)


def normalized(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vec_text(row):
    return "[" + ",".join("%.4f" % v for v in row) + "]"


def write_rows(path, prefix_cols, vectors):
    """Writes COPY text lines: the prefix columns, then the vector."""
    fmt = "\t".join(["%s"] * len(prefix_cols)) + "\t[" + ",".join(["%.4f"] * DIMS) + "]\n"
    with open(path, "w") as f:
        for i in range(len(vectors)):
            f.write(fmt % (*(c[i] for c in prefix_cols), *vectors[i].tolist()))


def top_k(base_n, query_n, ids, k):
    """Ids of the k nearest rows of base (cosine) to each query, nearest first."""
    sims = query_n @ base_n.T
    k = min(k, base_n.shape[0])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-sims, part, axis=1).argsort(axis=1)
    return ids[np.take_along_axis(part, order, axis=1)]


FRESH_ROWS = 20_000


def gen_single(out, rows=100_000, queries=500, clusters=100):
    rng = np.random.default_rng(SEED_SINGLE)
    cl = Clusters(rng, clusters)
    items = rounded(cl.sample(rng, rng.integers(0, clusters, rows)))
    qs = rounded(cl.sample(rng, rng.integers(0, clusters, queries)))
    ids = np.arange(1, rows + 1)
    truth = np.concatenate(
        [top_k(normalized(items), normalized(qs[i:i + 100]), ids, 10) for i in range(0, queries, 100)])
    write_rows(f"{out}/items.tsv", [ids], items)
    write_rows(f"{out}/queries.tsv", [np.arange(1, queries + 1)], qs)
    np.savez(f"{out}/truth.npz", truth=truth)
    # Rows to insert one at a time, from the same clusters (drawn last: the rest stays the same).
    fresh = rounded(cl.sample(rng, rng.integers(0, clusters, FRESH_ROWS)))
    write_rows(f"{out}/fresh.tsv", [np.arange(1, FRESH_ROWS + 1)], fresh)
    print(f"{rows} items x {DIMS} dims in {clusters} clusters, {queries} held-out queries")


def gen_tiny(out, tenants=50_000, per_tenant=4, topics=64):
    """Many tiny tenants: `per_tenant` rows each, from topics shared across tenants, interleaved."""
    rng = np.random.default_rng(SEED_TENANTS + 1)
    cl = Clusters(rng, topics)
    rows = tenants * per_tenant
    owner = rng.permutation(np.repeat(np.arange(tenants), per_tenant))
    vecs = rounded(cl.sample(rng, rng.integers(0, topics, rows)))
    tids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(tenants)]
    write_rows(f"{out}/tiny.tsv", [np.arange(1, rows + 1), [tids[t] for t in owner]], vecs)
    print(f"{tenants} tenants x {per_tenant} rows x {DIMS} dims ({rows} rows)")


def tenant_sizes(rng, tenants, total):
    """Power law by rank (size ~ rank^-0.8) with some noise; a few tenants of about 10,000
    rows, most of tens to hundreds, 2% under 10."""
    ranks = np.arange(1, tenants + 1)
    w = ranks ** -0.8 * rng.lognormal(0.0, 0.5, tenants)
    sizes = np.maximum(10, np.round(w / w.sum() * total)).astype(np.int64)
    sizes[-tenants // 50:] = rng.integers(1, 10, tenants // 50)  # the smallest ranks: 1 to 9 rows
    sizes[np.argmax(sizes)] += total - sizes.sum()
    return rng.permutation(sizes)


def gen_tenants(out, tenants=1000, rows=200_000, per_bucket=100, topics=64):
    rng = np.random.default_rng(SEED_TENANTS)
    sizes = tenant_sizes(rng, tenants, rows)
    tids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(tenants)]
    cl = Clusters(rng, topics)
    # Each tenant draws its vectors from 1 to 3 topics shared with other tenants, each shifted
    # a little for that tenant: a tenant's neighbours in the whole table are mostly other tenants'.
    t_topics = [rng.choice(topics, size=rng.integers(1, 4), replace=False) for _ in range(tenants)]
    t_offsets = [rng.normal(scale=0.3, size=(len(tp), DIMS)) for tp in t_topics]

    def draw(t, n):
        pick = rng.integers(0, len(t_topics[t]), n)
        return rounded(cl.sample(rng, t_topics[t][pick], t_offsets[t][pick]))

    owner = np.repeat(np.arange(tenants), sizes)
    vecs = np.concatenate([draw(t, sizes[t]) for t in range(tenants)])
    # Rows arrive interleaved, as appends from every tenant do.
    order = rng.permutation(rows)
    owner, vecs = owner[order], vecs[order]
    ids = np.arange(1, rows + 1)
    write_rows(f"{out}/docs.tsv", [ids, [tids[t] for t in owner]], vecs)

    # Queries: per bucket, up to per_bucket tenants drawn without replacement; a bucket with
    # fewer tenants repeats them (a fresh query vector each time).
    q_tenant, q_bucket = [], []
    for b in BUCKETS:
        members = np.array([t for t in range(tenants) if bucket_of(sizes[t]) == b])
        if len(members) == 0:
            continue
        picked = rng.permutation(members)[:per_bucket]
        picked = np.resize(picked, per_bucket)
        q_tenant += picked.tolist()
        q_bucket += [b] * per_bucket
    q_vecs = np.concatenate([draw(t, 1) for t in q_tenant])
    rows_of = {t: np.nonzero(owner == t)[0] for t in set(q_tenant)}
    truth = np.full((len(q_tenant), 10), -1, dtype=np.int64)
    for i, t in enumerate(q_tenant):
        r = rows_of[t]
        nn = top_k(normalized(vecs[r]), normalized(q_vecs[i:i + 1]), ids[r], 10)[0]
        truth[i, :len(nn)] = nn
    rn = np.zeros(len(q_tenant), dtype=np.int64)  # the query's number within its bucket
    for b in BUCKETS:
        sel = np.array(q_bucket) == b
        rn[sel] = np.arange(1, sel.sum() + 1)
    write_rows(f"{out}/queries.tsv",
               [np.arange(1, len(q_tenant) + 1), q_bucket, rn, [tids[t] for t in q_tenant]], q_vecs)
    np.savez(f"{out}/truth.npz", truth=truth, owner=owner,
             q_tenant=np.array(q_tenant), q_bucket=np.array(q_bucket),
             q_size=sizes[np.array(q_tenant)], sizes=sizes, tids=np.array(tids))
    counts = {b: int(sum(bucket_of(s) == b for s in sizes)) for b in BUCKETS}
    print(f"{rows} rows x {DIMS} dims over {tenants} tenants (sizes {sizes.min()} to {sizes.max()}; "
          f"small {counts['small']}, medium {counts['medium']}, large {counts['large']}), "
          f"{len(q_tenant)} queries: " + ", ".join(f"{b} {q_bucket.count(b)}" for b in BUCKETS))


# --- Recall -----------------------------------------------------------------------------------


def connect(dsn):
    import psycopg
    # No automatic server-side preparation: each query is planned with its own parameters, as
    # the planner would for an application that does not prepare (and for setup 5, which asks
    # the planner to choose per tenant).
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=None)


def plan_index(conn, sql, params, indexes):
    """The first of `indexes` that EXPLAIN shows a scan on (else "other"), and the plan."""
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (COSTS OFF) " + sql, params).fetchall())
    words = plan.replace("\n", " ").split()
    for name in indexes:
        if any(w in ("using", "on") and words[i + 1] == name for i, w in enumerate(words[:-1])):
            return name, plan
    return "other", plan


def recall_single(a):
    truth = np.load(f"{a.dir}/truth.npz")["truth"]
    sql = f"SELECT id FROM {a.table} ORDER BY embedding <=> (SELECT v FROM {a.queries} WHERE qid = %s) LIMIT 10"
    hits, short = 0, 0
    with connect(a.dsn) as conn:
        for s in a.set:
            conn.execute(s)
        used, plan = plan_index(conn, sql, (1,), [a.index])
        if used != a.index:
            sys.exit(f"{a.table}: the query does not use {a.index}:\n{plan}")
        for q in range(len(truth)):
            got = [r[0] for r in conn.execute(sql, (q + 1,)).fetchall()]
            hits += len(set(got) & set(truth[q].tolist()))
            short += len(got) < 10
    print(f"{hits / truth.size:.4f} {short / len(truth):.4f}")


def recall_tenants(a):
    d = np.load(f"{a.dir}/truth.npz")
    truth, owner, q_tenant, q_bucket, tids = d["truth"], d["owner"], d["q_tenant"], d["q_bucket"], d["tids"]
    where = "" if a.rls else "WHERE tenant_id = %s "
    sql = (f"SELECT id FROM {a.table} {where}ORDER BY embedding <=> "
           f"(SELECT v FROM {a.queries} WHERE qn = %s) LIMIT 10")
    per = {b: {"recall": [], "short": 0, "plans": {}} for b in BUCKETS}
    with connect(a.dsn) as conn:
        for s in a.set:
            conn.execute(s)
        for i in range(len(truth)):
            tenant = str(tids[q_tenant[i]])
            params = (i + 1,) if a.rls else (tenant, i + 1)
            want = [x for x in truth[i].tolist() if x >= 0]
            if a.rls:
                conn.autocommit = False  # the context for this transaction only
                conn.execute("SELECT sutra.set_tenant(%s, local => true)", (tenant,))
            used, plan = plan_index(conn, sql, params, a.index)
            got = [r[0] for r in conn.execute(sql, params).fetchall()]
            if a.rls:
                conn.commit()
                conn.autocommit = True
            if a.require and used != a.index[0]:
                sys.exit(f"{a.table}: query {i + 1} (tenant {tenant}, {q_bucket[i]}) does not use "
                         f"{a.index[0]}:\n{plan}")
            foreign = [x for x in got if tids[owner[x - 1]] != tenant]
            if foreign:
                sys.exit(f"{a.table}: query {i + 1} for tenant {tenant} returned rows of other tenants: {foreign}")
            p = per[str(q_bucket[i])]
            p["recall"].append(len(set(got) & set(want)) / len(want))
            p["short"] += len(got) < len(want)
            p["plans"][used] = p["plans"].get(used, 0) + 1
    for b in BUCKETS:
        p = per[b]
        if not p["recall"]:
            continue
        plans = ",".join(f"{k}:{v}" for k, v in sorted(p["plans"].items()))
        print(f"{b} {np.mean(p['recall']):.4f} {min(p['recall']):.4f} {p['short'] / len(p['recall']):.4f} "
              f"{len(p['recall'])} {plans.replace(' ', '_')}")


def latency(a):
    lat = []
    for path in glob.glob(a.prefix + ".*"):  # pgbench adds .<pid> and, past the first thread, .<n>
        with open(path) as f:
            lat += [int(line.split()[2]) for line in f if line.strip()]
    if not lat:
        sys.exit(f"no pgbench log lines in {a.prefix}.*")
    p50, p99 = np.percentile(np.array(lat) / 1000.0, [50, 99])
    print(f"{p50:.3f} {p99:.3f} {len(lat)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("gen-single").add_argument("dir")
    sub.add_parser("gen-tenants").add_argument("dir")
    sub.add_parser("gen-tiny").add_argument("dir")
    for name in ("recall-single", "recall-tenants"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True)
        p.add_argument("--dsn", required=True)
        p.add_argument("--table", required=True)
        p.add_argument("--queries", required=True)
        p.add_argument("--set", action="append", default=[], help="a statement to run first")
        if name == "recall-single":
            p.add_argument("--index", required=True, help="the index every query must use")
        else:
            p.add_argument("--index", action="append", required=True,
                           help="indexes to recognise in the plans (the first is the expected one)")
            p.add_argument("--require", action="store_true", help="fail unless every query uses the first --index")
            p.add_argument("--rls", action="store_true",
                           help="no WHERE: set the tenant context per transaction (sutra.set_tenant local)")
    sub.add_parser("latency").add_argument("prefix")
    a = ap.parse_args()
    if a.cmd.startswith("gen-"):
        os.makedirs(a.dir, exist_ok=True)
    {"gen-single": lambda: gen_single(a.dir), "gen-tenants": lambda: gen_tenants(a.dir),
     "gen-tiny": lambda: gen_tiny(a.dir),
     "recall-single": lambda: recall_single(a), "recall-tenants": lambda: recall_tenants(a),
     "latency": lambda: latency(a)}[a.cmd]()


if __name__ == "__main__":
    main()
