"""Stopping a server with sutra loaded, on a throwaway cluster of its own: sutra in many databases,
a one-second metering flush, tenants busy in every database. A fast stop (the default of
`pg_ctl stop`, `systemctl stop` and every restart) and a smart stop must complete, however the
metering launcher and its per-database flush workers happen to be occupied at that moment, and
metering counted before the stop is still written after the next start."""

import os
import random
import threading
import time

import psycopg
import pytest

from conftest import own_cluster

PORT = 54719
DATABASES = [f"shut_{i}" for i in range(8)]
CYCLES = int(os.environ.get("SUTRA_SHUTDOWN_CYCLES", "20"))
STOP_TIMEOUT = 10


@pytest.fixture(scope="module")
def cluster():
    conf = "fsync = off\nsutra.usage_flush_interval = 1\nmax_worker_processes = 16\n"
    with own_cluster("sutra-shutdown-", PORT, conf) as (base, ctl):
        with connect(base, "postgres") as c:
            for db in DATABASES:
                c.execute(f"CREATE DATABASE {db}")
        for db in DATABASES:
            with connect(base, db) as c:
                c.execute("CREATE EXTENSION sutra")
                c.execute("SELECT sutra.create_tenant('shut')")
                c.execute("CREATE TABLE items (id serial PRIMARY KEY, body text)")
                c.execute("SELECT sutra.enable_tenancy('items')")
        yield base, ctl


def connect(base, dbname, **kw):
    return psycopg.connect(host=base, port=PORT, user="postgres", dbname=dbname, autocommit=True, **kw)


def tenant_statements(base, db):
    """Statements of tenant `shut` in `db` (one per call, so every database has pending metering)."""
    with connect(base, db) as c:
        with c.transaction():
            c.execute("SELECT sutra.set_tenant('shut')")
            c.execute("INSERT INTO items (body) VALUES ('x')")
            c.execute("SELECT count(*) FROM items")


def stop(ctl, mode):
    """Stops the server with `mode`; fails the test if it does not stop within STOP_TIMEOUT s."""
    started = time.monotonic()
    r = ctl("-m", mode, "-t", str(STOP_TIMEOUT), "stop", check=False)
    took = time.monotonic() - started
    if r.returncode != 0:
        ctl("-m", "immediate", "stop", check=False)
        pytest.fail(f"pg_ctl stop -m {mode} did not complete within {STOP_TIMEOUT} s: {r.stdout}{r.stderr}")
    return took


def metered(base, db):
    with connect(base, db) as c:
        c.execute("SELECT sutra.flush_usage()")
        return c.execute("SELECT coalesce(sum(quantity), 0)::int FROM sutra.usage_rollups "
                         "WHERE metric = 'statements'").fetchone()[0]


def test_fast_stop_completes_in_every_cycle(cluster):
    base, ctl = cluster
    rng = random.Random(18)
    before = sum(metered(base, db) for db in DATABASES)
    times = []
    for _ in range(CYCLES):
        for db in DATABASES:
            tenant_statements(base, db)
        time.sleep(rng.uniform(0, 2))
        times.append(stop(ctl, "fast"))
        ctl("start")
    # Nothing counted was lost: each cycle ran at least one statement per database.
    after = sum(metered(base, db) for db in DATABASES)
    assert after - before >= CYCLES * len(DATABASES)
    print(f"{CYCLES} fast stops, slowest {max(times):.2f} s")


def test_smart_stop_completes_after_sessions_end(cluster):
    base, ctl = cluster
    for _ in range(3):
        for db in DATABASES:
            tenant_statements(base, db)
        time.sleep(0.5)
        stop(ctl, "smart")
        ctl("start")


def test_restart_under_insert_load(cluster):
    base, ctl = cluster
    done = threading.Event()
    errors = []

    def load(db):
        while not done.is_set():
            try:
                tenant_statements(base, db)
            except psycopg.Error:
                # The stop ends sessions and refuses connections until the start completes.
                time.sleep(0.05)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=load, args=(db,)) for db in DATABASES[:4]]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(1.5)
            started = time.monotonic()
            r = ctl("-m", "fast", "-t", str(STOP_TIMEOUT), "restart", check=False)
            assert r.returncode == 0, f"restart under load failed: {r.stdout}{r.stderr}"
            assert time.monotonic() - started < STOP_TIMEOUT + 5
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors
    for db in DATABASES:
        tenant_statements(base, db)


def test_launcher_flushes_every_interval(cluster):
    """The launcher keeps flushing, interval after interval, in every database (it once waited
    forever for its first flush worker's exit notice)."""
    base, _ = cluster

    def written(db):
        with connect(base, db) as c:
            return c.execute("SELECT coalesce(sum(quantity), 0)::int FROM sutra.usage_rollups "
                             "WHERE metric = 'statements'").fetchone()[0]

    for _ in range(3):
        before = {db: written(db) for db in DATABASES}
        for db in DATABASES:
            tenant_statements(base, db)
        deadline = time.monotonic() + 10
        while any(written(db) <= before[db] for db in DATABASES):
            assert time.monotonic() < deadline, "metering was not flushed within 10 s at a 1 s interval"
            time.sleep(0.2)
