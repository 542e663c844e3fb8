"""sutra_hnsw under real concurrency, crashes and replication: several backends insert (and
VACUUM runs) at once, then every row is found through the index and hnsw_check reports a
consistent structure; on a throwaway cluster of its own, the postmaster and its backends are
killed with SIGKILL during a concurrent insert load, and after crash recovery every committed
row is found by the index; and a streaming standby replays the index's WAL (build, inserts,
VACUUM) and answers the same searches through it."""

import os
import random
import signal
import subprocess
import threading
import time

import psycopg
import pytest


DIMS = 16
from conftest import BIN, as_postgres, init_cluster, pg_ctl, throwaway_dir

PORT = 54718


def vec(rng):
    return "[" + ",".join(f"{rng.uniform(-1, 1):.5f}" for _ in range(DIMS)) + "]"


def make_table(c, name):
    c.execute(f"DROP TABLE IF EXISTS {name}")
    c.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, tenant int, embedding sutra.vector({DIMS}))")
    c.execute(f"CREATE INDEX {name}_idx ON {name} USING sutra_hnsw (tenant, embedding) WITH (m = 8, ef_construction = 32)")


def insert_worker(conninfo, table, ids, seed, committed, errors):
    rng = random.Random(seed)
    try:
        with psycopg.connect(**conninfo, autocommit=True) as c:
            for i in ids:
                v = vec(rng)
                c.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)", (i, i % 3, v))
                committed[i] = (i % 3, v)
    except psycopg.OperationalError as e:
        errors.append(e)


def assert_found(c, table, rows):
    """Each row is the nearest to its own vector within its tenant, through the index."""
    c.execute("SET enable_seqscan = off")
    c.execute("SET search_path = public, sutra")
    plan = "\n".join(r[0] for r in c.execute(
        f"EXPLAIN SELECT id FROM {table} WHERE tenant = 1 ORDER BY embedding <-> %s LIMIT 1", (vec(random.Random(0)),)))
    assert f"Index Scan using {table}_idx" in plan
    missing = []
    for i, (tenant, v) in rows.items():
        got = c.execute(f"SELECT id FROM {table} WHERE tenant = %s ORDER BY embedding <-> %s LIMIT 1", (tenant, v)).fetchone()
        if got is None or got[0] != i:
            missing.append(i)
    assert missing == [], f"{len(missing)} of {len(rows)} rows not found first by their own vector"


def check(c, idx):
    return c.execute(f"SELECT elements, heap_rows, unreachable, problems FROM sutra.hnsw_check('{idx}')").fetchone()


def test_concurrent_inserts_and_vacuum(conn):
    conn.commit()
    conn.autocommit = True
    make_table(conn, "hnsw_conc")
    info = conn.info
    conninfo = dict(host=info.host, port=info.port, user=info.user, dbname=info.dbname)
    committed, errors = {}, []
    threads = [threading.Thread(target=insert_worker, args=(conninfo, "hnsw_conc", range(w, 1600, 4), w, committed, errors))
               for w in range(4)]
    for t in threads:
        t.start()
    # Deletes and VACUUMs run beside the inserts.
    with psycopg.connect(**conninfo, autocommit=True) as v:
        for _ in range(3):
            time.sleep(0.5)
            v.execute("DELETE FROM hnsw_conc WHERE id % 10 = 3")
            v.execute("VACUUM hnsw_conc")
    for t in threads:
        t.join()
    assert errors == []
    live = {i: r for i, r in committed.items() if i % 10 != 3 or
            conn.execute("SELECT 1 FROM hnsw_conc WHERE id = %s", (i,)).fetchone()}
    elements, heap_rows, unreachable, problems = check(conn, "hnsw_conc_idx")
    assert problems == []
    assert heap_rows == len(live)
    conn.execute("VACUUM hnsw_conc")
    elements, heap_rows, unreachable, problems = check(conn, "hnsw_conc_idx")
    assert (elements, heap_rows, unreachable, problems) == (len(live), len(live), 0, [])
    assert_found(conn, "hnsw_conc", live)


def test_searches_are_metered_for_the_tenant(conn):
    conn.commit()
    conn.autocommit = True
    make_table(conn, "hnsw_meter")
    rng = random.Random(5)
    for i in range(50):
        conn.execute("INSERT INTO hnsw_meter VALUES (%s, %s, %s)", (i, i % 3, vec(rng)))
    tenant = conn.execute("SELECT sutra.create_tenant('hnsw-meter')").fetchone()[0]
    conn.execute("DROP ROLE IF EXISTS hnsw_meter_app")
    conn.execute("CREATE ROLE hnsw_meter_app LOGIN IN ROLE sutra_service")
    conn.execute("GRANT SELECT ON hnsw_meter TO hnsw_meter_app")
    info = conn.info
    with psycopg.connect(host=info.host, port=info.port, user="hnsw_meter_app", dbname=info.dbname, autocommit=True) as a:
        a.execute("SET search_path = public, sutra")
        a.execute("SET enable_seqscan = off")
        a.execute("SELECT sutra.set_tenant('hnsw-meter', session => true)")
        for _ in range(3):
            a.execute("SELECT id FROM hnsw_meter WHERE tenant = 1 ORDER BY embedding <-> %s LIMIT 5", (vec(rng),)).fetchall()
        # A search without ORDER BY distance is not a vector search.
        a.execute("SELECT count(*) FROM hnsw_meter").fetchall()
    # The session's last counts reach shared memory when its backend exits, a moment after close.
    deadline = time.monotonic() + 5
    while True:
        conn.execute("SELECT sutra.flush_usage()")
        n = conn.execute("SELECT coalesce(sum(quantity), 0)::int FROM sutra.usage_rollups "
                         "WHERE tenant_id = %s AND metric = 'vector_searches'", (tenant,)).fetchone()[0]
        if n >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert n == 3
    conn.execute("DROP TABLE hnsw_meter")
    conn.execute("DROP OWNED BY hnsw_meter_app")
    conn.execute("DROP ROLE hnsw_meter_app")


def test_crash_during_concurrent_inserts_loses_no_committed_row():
    base = throwaway_dir("sutra-hnsw-crash-")
    data = os.path.join(base, "data")
    ctl = init_cluster(base, "data", PORT, "restart_after_crash = off\n")
    ctl("start")
    conninfo = dict(host=base, port=PORT, user="postgres", dbname="postgres")
    try:
        with psycopg.connect(**conninfo, autocommit=True) as c:
            c.execute("CREATE EXTENSION sutra")
            make_table(c, "hnsw_crash")
            # Rows present before the crash, partly written out by a checkpoint.
            rng = random.Random(99)
            before = {}
            for i in range(100000, 100300):
                v = vec(rng)
                c.execute("INSERT INTO hnsw_crash VALUES (%s, %s, %s)", (i, i % 3, v))
                before[i] = (i % 3, v)
            c.execute("CHECKPOINT")
        committed, errors = {}, []
        threads = [threading.Thread(target=insert_worker, args=(conninfo, "hnsw_crash", range(w, 100000, 3), w, committed, errors))
                   for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(3)
        with open(os.path.join(data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        os.kill(postmaster, signal.SIGKILL)
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for t in threads:
            t.join()
        assert len(committed) > 50, "the load did not get going before the crash"
        assert errors, "the crash did not interrupt the load"
        for pid in [postmaster] + [int(p) for p in children]:
            while os.path.exists(f"/proc/{pid}"):
                time.sleep(0.05)
        started = ctl("start", check=False)
        if started.returncode != 0:
            with open(data + ".log") as f:
                pytest.fail("restart failed:\n" + f.read()[-3000:])
        with psycopg.connect(**conninfo, autocommit=True) as c:
            rows = {**before, **committed}
            elements, heap_rows, unreachable, problems = check(c, "hnsw_crash_idx")
            assert problems == []
            # Rows of transactions cut off by the crash may have index elements, never the reverse.
            assert heap_rows >= len(rows) and elements >= heap_rows
            assert_found(c, "hnsw_crash", rows)
    finally:
        ctl("-m", "immediate", "stop", check=False)
        subprocess.run(["rm", "-rf", base])


def test_standby_replays_the_index():
    base = throwaway_dir("sutra-hnsw-standby-")
    standby = os.path.join(base, "standby")
    port_p, port_s = PORT + 1, PORT + 2
    primary_ctl = init_cluster(base, "primary", port_p, "fsync = off\n")
    standby_ctl = pg_ctl(standby)
    primary_ctl("start")
    try:
        as_postgres(f"{BIN}/pg_basebackup", "-h", base, "-p", port_p, "-U", "postgres", "-D", standby, "-R", "-X", "stream")
        with open(os.path.join(standby, "postgresql.conf"), "a") as f:
            f.write(f"port = {port_s}\n")
        standby_ctl("start")
        p = dict(host=base, port=port_p, user="postgres", dbname="postgres")
        s = dict(host=base, port=port_s, user="postgres", dbname="postgres")
        rng = random.Random(7)
        rows = {}
        with psycopg.connect(**p, autocommit=True) as c:
            c.execute("CREATE EXTENSION sutra")
            make_table(c, "hnsw_rep")
            for i in range(600):
                v = vec(rng)
                c.execute("INSERT INTO hnsw_rep VALUES (%s, %s, %s)", (i, i % 3, v))
                rows[i] = (i % 3, v)
            # A rebuilt index (full-page images) and more inserts and a VACUUM (deltas).
            c.execute("REINDEX INDEX hnsw_rep_idx")
            c.execute("DELETE FROM hnsw_rep WHERE id % 7 = 0")
            for i in [i for i in rows if i % 7 == 0]:
                del rows[i]
            c.execute("VACUUM hnsw_rep")
            for i in range(600, 900):
                v = vec(rng)
                c.execute("INSERT INTO hnsw_rep VALUES (%s, %s, %s)", (i, i % 3, v))
                rows[i] = (i % 3, v)
            lsn = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            assert check(c, "hnsw_rep_idx")[3] == []
        with psycopg.connect(**s, autocommit=True) as r:
            for _ in range(200):
                if r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the standby did not catch up")
            assert r.execute("SELECT count(*) FROM hnsw_rep").fetchone()[0] == len(rows)
            assert_found(r, "hnsw_rep", rows)
    finally:
        standby_ctl("-m", "immediate", "stop", check=False)
        primary_ctl("-m", "immediate", "stop", check=False)
        subprocess.run(["rm", "-rf", base])
