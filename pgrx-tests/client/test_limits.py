"""Rate, concurrency and connection limits per tenant, and metering, over real connections."""

import json
import os
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

from conftest import as_role, superuser


@pytest.fixture
def tenant():
    """A tenant with the given overrides, an app role and a key; yields a factory of sessions."""
    suffix = uuid.uuid4().hex[:8]
    role = f"lim_app_{suffix}"
    made = {}

    def make(overrides):
        with superuser() as c:
            if "id" not in made:
                c.execute(f"CREATE ROLE {role} LOGIN")
                made["id"] = c.execute("SELECT sutra.create_tenant(%s, quota_overrides => %s)",
                                       (f"lim-{suffix}", psycopg.types.json.Jsonb(overrides))).fetchone()[0]
                made["key"] = c.execute("SELECT sutra.create_api_key(%s::uuid)", (made["id"],)).fetchone()[0]
            else:
                c.execute("SELECT sutra.update_tenant(%s::uuid, quota_overrides => %s)",
                          (made["id"], psycopg.types.json.Jsonb(overrides)))

        def session():
            s = as_role(role)
            s.execute("SELECT sutra.authenticate(%s, session => true)", (made["key"],))
            return s

        return made["id"], session

    yield make
    with superuser() as c:
        if "id" in made:
            c.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (made["id"],))
            c.execute(f"DROP ROLE {role}")


def status(tenant_id):
    with superuser() as c:
        row = c.execute("SELECT * FROM sutra.rate_limit_status(%s::uuid)", (tenant_id,)).fetchone()
        names = [d.name for d in c.execute("SELECT * FROM sutra.rate_limit_status(%s::uuid)", (tenant_id,)).description]
    return dict(zip(names, row))


def test_rate_limit_refuses_past_the_burst_and_says_when_to_retry(tenant):
    tid, session = tenant({"ops_per_second": 0.01, "burst": 3})
    with session() as s:
        for i in range(3):
            s.execute("SELECT %s", (i,))
        with pytest.raises(psycopg.Error) as e:
            s.execute("SELECT 4")
        assert e.value.sqlstate == "53400"
        assert "rate limit exceeded for tenant" in e.value.diag.message_primary
        assert "retry after" in e.value.diag.message_detail
        assert status(tid)["available"] == 0
    # Another session of the same tenant shares the limiter.
    with session() as s2, pytest.raises(psycopg.Error) as e:
        s2.execute("SELECT 5")
    assert e.value.sqlstate == "53400"
    # A change of limits applies at once, in every backend: of the tenant's overrides...
    tenant({"ops_per_second": None})
    time.sleep(0.05)
    with session() as s3:
        for i in range(20):
            s3.execute("SELECT %s", (i,))
        # ... and of its plan, while the session is open (and has read the old limits).
        tenant({})
        time.sleep(0.05)  # a raised limit applies within one of its intervals (10 ms here)
        s3.execute("SELECT 'limits read again'")
        with superuser() as c:
            c.execute("""UPDATE sutra.plans SET limits = limits || '{"ops_per_second": 0.01, "burst": 1}'
                         WHERE name = 'free'""")
        try:
            # The limiter still holds the earlier statements: the next one is over at once.
            with pytest.raises(psycopg.Error) as e:
                s3.execute("SELECT 'over the plan'")
            assert e.value.sqlstate == "53400"
        finally:
            with superuser() as c:
                c.execute("""UPDATE sutra.plans SET limits = limits || '{"ops_per_second": 100, "burst": 1000}'
                             WHERE name = 'free'""")


def test_other_tenants_and_unauthenticated_sessions_are_not_charged(tenant):
    tid, session = tenant({"ops_per_second": 0.01, "burst": 1})
    with session() as s:
        s.execute("SELECT 1")
        with pytest.raises(psycopg.Error):
            s.execute("SELECT 2")
        s.execute("RESET sutra.tenant_id")  # a utility statement: not charged; the context goes
        for i in range(5):
            s.execute("SELECT %s", (i,))


def test_concurrent_statement_limit_and_no_leak_on_errors(tenant):
    tid, session = tenant({"concurrent_statements": 1})
    with session() as a, session() as b:
        started = threading.Event()

        def slow():
            started.set()
            a.execute("SELECT pg_sleep(1.5)")

        t = threading.Thread(target=slow)
        t.start()
        started.wait()
        time.sleep(0.5)
        with pytest.raises(psycopg.Error) as e:
            b.execute("SELECT 1")
        assert e.value.sqlstate == "53000"
        t.join()
        b.execute("SELECT 1")
        # Failed statements and aborted transactions give their slot back.
        for stmt in ("SELECT 1/0", "SELECT * FROM no_such_table"):
            with pytest.raises(psycopg.Error):
                a.execute(stmt)
        a.execute("BEGIN")
        a.execute("SELECT 1")
        with pytest.raises(psycopg.Error):
            a.execute("SELECT 1/0")
        a.execute("ROLLBACK")
        assert status(tid)["active_statements"] == 0
        b.execute("SELECT 2")


def test_connection_limit_counts_sessions_holding_the_context(tenant):
    tid, session = tenant({"connections": 2})
    first, second = session(), session()
    assert status(tid)["connections"] == 2
    with pytest.raises(psycopg.Error) as e:
        session()
    assert e.value.sqlstate == "53300"
    assert "too many connections for tenant" in e.value.diag.message_primary
    first.close()
    time.sleep(0.2)
    third = session()
    assert status(tid)["connections"] == 2
    # Dropping the context frees the slot too.
    third.execute("SELECT sutra.clear_tenant()")
    assert status(tid)["connections"] == 1
    with superuser() as c:
        pid = second.info.backend_pid
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.3)
    assert status(tid)["connections"] == 0
    third.close()


def test_metering_reaches_the_rollups(tenant):
    tid, session = tenant({})
    with superuser() as c:
        c.execute("CREATE TABLE IF NOT EXISTS lim_items (id int, tenant_id uuid NOT NULL DEFAULT sutra.current_tenant())")
        c.execute("SELECT sutra.enable_tenancy('lim_items')")
        c.execute("GRANT SELECT, INSERT ON lim_items TO PUBLIC")
        c.execute("SELECT sutra.flush_usage()")
    try:
        with session() as s:
            s.execute("INSERT INTO lim_items SELECT generate_series(1, 25)")
            assert s.execute("SELECT count(*) FROM lim_items").fetchone()[0] == 25
            s.execute("SELECT id FROM lim_items WHERE id <= 10").fetchall()
        # The session's last counts reach shared memory as its backend exits, a moment after
        # close, and the metering launcher may be writing some of them at the same time: wait
        # until the statements are all there.
        with superuser() as c:
            deadline = time.monotonic() + 10
            while True:
                c.execute("SELECT sutra.flush_usage()")
                got = dict(c.execute("SELECT metric, sum(quantity)::int FROM sutra.usage_rollups "
                                     "WHERE tenant_id = %s GROUP BY 1", (tid,)).fetchall())
                if got.get("statements", 0) >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            text = c.execute("SELECT sutra.metrics(top => 1000000)").fetchone()[0]
    finally:
        with superuser() as c:
            c.execute("DROP TABLE lim_items")
    # authenticate's own SELECT ran before the context existed: 3 statements are the tenant's.
    assert got["statements"] == 3
    assert got["rows_written"] == 25
    assert got["rows_read"] == 1 + 10
    assert got["bytes_written"] >= 25 * 28  # at least a tuple header and an int per row
    assert f'sutra_tenant_rows_written_total{{tenant_id="{tid}"' in text


def test_quota_holds_under_16_concurrent_writers(tenant):
    """16 sessions of one tenant insert one row at a time until refused: the committed rows never
    exceed the quota (the counts include every writer's rows in flight)."""
    limit = 300
    tid, session = tenant({"rows_total": limit, "concurrent_statements": None, "connections": None})
    with superuser() as c:
        c.execute("CREATE TABLE lim_race (id int, tenant_id uuid NOT NULL DEFAULT sutra.current_tenant())")
        c.execute("SELECT sutra.enable_tenancy('lim_race')")
        c.execute("GRANT SELECT, INSERT ON lim_race TO PUBLIC")
    refused = []
    try:
        def writer(n):
            with session() as s:
                for i in range(60):
                    try:
                        s.execute("INSERT INTO lim_race (id) VALUES (%s)", (n * 1000 + i,))
                    except psycopg.Error as e:
                        refused.append(e.sqlstate)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with superuser() as c:
            rows = c.execute("SELECT count(*) FROM lim_race").fetchone()[0]
            counted = c.execute("SELECT used FROM sutra.quota_usage(%s::uuid) WHERE limit_name = 'rows_total'",
                                (tid,)).fetchone()[0]
    finally:
        with superuser() as c:
            c.execute("DROP TABLE lim_race")
    # 16 x 60 = 960 attempts: exactly the quota's worth got in, the rest was refused with 53100.
    assert rows == limit
    assert counted == limit
    assert set(refused) == {"53100"} and len(refused) == 16 * 60 - limit


def test_metrics_stay_bounded_whatever_the_tenant_count(tenant):
    """metrics(top => 1) has one tenant's series (the busiest), the server-wide totals and the
    shared tables' use; the server-wide totals are at least the sum over every tenant."""
    tid, session = tenant({})
    with session() as s:
        s.execute("SELECT 1")
    with superuser() as c:
        top_one = c.execute("SELECT sutra.metrics(top => 1)").fetchone()[0]
        every = c.execute("SELECT sutra.metrics(top => 1000000)").fetchone()[0]
    series = lambda text: [l for l in text.splitlines() if l.startswith("sutra_tenant_statements_total{")]
    value = lambda line: float(line.rsplit(" ", 1)[1])
    assert len(series(top_one)) == 1
    assert len(series(every)) >= 2
    assert value(series(top_one)[0]) == max(value(l) for l in series(every))
    total = next(l for l in top_one.splitlines() if l.startswith("sutra_statements_total "))
    assert value(total) >= sum(value(l) for l in series(every))
    assert any(l.startswith("sutra_tenant_slots ") for l in top_one.splitlines())


def test_metrics_parse_as_prometheus_text_through_the_documented_scrape(tenant, tmp_path):
    """The textfile collector scrape of docs/usage.md (psql -X -A -t into a .prom file) parses with
    prometheus_client's own parser: HELP and TYPE for every family, counters named *_total in base
    units, labels tenant (slug) and plan on every per-tenant series, storage gauges, the auth
    failure and per-limit refusal counters, and the metering workers' health."""
    from prometheus_client.parser import text_string_to_metric_families

    tid, session = tenant({"rows_total": 1})
    with superuser() as c:
        c.execute("CREATE TABLE IF NOT EXISTS metrics_probe (id serial PRIMARY KEY, tenant_id uuid NOT NULL "
                  "DEFAULT sutra.current_tenant())")
        c.execute("SELECT sutra.enable_tenancy('metrics_probe')")
        c.execute("GRANT SELECT, INSERT ON metrics_probe TO PUBLIC")
        c.execute("GRANT USAGE ON SEQUENCE metrics_probe_id_seq TO PUBLIC")
        slug, plan = c.execute("SELECT slug, plan FROM sutra.tenants WHERE id = %s", (tid,)).fetchone()
    try:
        with session() as s:
            s.execute("INSERT INTO metrics_probe DEFAULT VALUES")
            with pytest.raises(psycopg.Error):
                s.execute("INSERT INTO metrics_probe DEFAULT VALUES")
        prom = tmp_path / "sutra.prom"
        out = subprocess.run(["psql", "-X", "-A", "-t", "-h", os.environ["SUTRA_TEST_HOST"], "-p",
                              os.environ["SUTRA_TEST_PORT"], "-U", "postgres", "-d", "sutra_client",
                              "-c", "SELECT sutra.metrics(top => 100000)"],
                             capture_output=True, text=True, check=True).stdout
        prom.write_text(out)
        families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    finally:
        with superuser() as c:
            c.execute("DROP TABLE metrics_probe")
    for f in families.values():
        assert f.documentation, f.name
        assert f.type in ("counter", "gauge"), f.name
    # Counters: the parser names the family without _total; every sample has it.
    assert "sutra_tenant_written_bytes" in families and "sutra_tenant_bytes_written" not in families
    for name in ["sutra_auth_failures", "sutra_quota_refusals", "sutra_rate_limited", "sutra_tenant_statements"]:
        assert families[name].type == "counter", name
        assert all(s.name == name + "_total" for s in families[name].samples), name
    mine = [s for s in families["sutra_tenant_statements"].samples if s.labels.get("tenant_id") == str(tid)]
    assert len(mine) == 1 and mine[0].labels["tenant"] == slug and mine[0].labels["plan"] == plan, mine
    for gauge, value in [("sutra_tenant_stored_rows", 1), ("sutra_tenant_storage_bytes", None),
                         ("sutra_tenant_stored_vectors", 0)]:
        sample = next(s for s in families[gauge].samples if s.labels["tenant_id"] == str(tid))
        assert families[gauge].type == "gauge"
        assert (sample.value == value) if value is not None else sample.value > 0, (gauge, sample)
    refusals = {s.labels["limit"]: s.value for s in families["sutra_quota_refusals"].samples}
    assert refusals["rows_total"] >= 1 and "usage_cap" in refusals, refusals
    for health in ["sutra_metering_launcher_up", "sutra_metering_last_flush_timestamp_seconds",
                   "sutra_metering_last_flush_age_seconds", "sutra_tenant_slots_in_use"]:
        assert families[health].type == "gauge", health
    assert families["sutra_metering_launcher_up"].samples[0].value == 1


def test_tenants_near_limits_lists_exactly_the_tenants_near_a_limit():
    """A tenant at 9 of 10 rows and one at 9 of 10 monthly tokens are listed; one at 9 of 100
    rows, one whose limit of 0.0 means unlimited, and one whose override lifts the plan's limit
    are not."""
    suffix = uuid.uuid4().hex[:8]
    made = {}
    with superuser() as c:
        c.execute("CREATE TABLE near_items (id int, tenant_id uuid NOT NULL)")
        c.execute("SELECT sutra.enable_tenancy('near_items')")
        try:
            for name, overrides in [("rows", {"rows_total": 10}), ("far", {"rows_total": 100}),
                                    ("zero", {"rows_total": 0.0}), ("lifted", {"rows_total": None}),
                                    ("tokens", {"monthly": {"tokens": 10}})]:
                made[name] = c.execute(
                    "SELECT sutra.create_tenant(%s, plan => 'free', quota_overrides => %s)",
                    (f"near-{name}-{suffix}", psycopg.types.json.Jsonb(overrides))).fetchone()[0]
            for name in ["rows", "far", "zero", "lifted"]:
                c.execute("INSERT INTO near_items SELECT g, %s FROM generate_series(1, 9) g", (made[name],))
                c.execute("SELECT sutra.reconcile_usage(%s::uuid)", (made[name],))
            c.execute("SELECT sutra.record_usage('tokens', 9, tenant => %s::text)", (made["tokens"],))
            listed = c.execute("SELECT tenant_id, limit_name, limit_value::int, used::int FROM sutra.tenants_near_limits "
                               "WHERE tenant_id = ANY(%s)", (list(made.values()),)).fetchall()
        finally:
            c.execute("DROP TABLE near_items")
            for t in made.values():
                c.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (t,))
    assert sorted(listed) == sorted([(made["rows"], "rows_total", 10, 9), (made["tokens"], "monthly.tokens", 10, 9)])


@pytest.mark.parametrize("kind", ["rate", "quota", "cap"])
def test_refusals_are_counted_audited_once_per_interval_and_notified(tenant, kind):
    """Three refusals of one limit: all counted in the tenant's refusal counts; the first (of the
    default 60 s interval) audited as limit.refused and notified on channel sutra_limits, although
    each refused statement aborted."""
    overrides, limit, counter = {
        "rate": ({"ops_per_second": 0.01, "burst": 1}, "ops_per_second", "rate_limited"),
        "quota": ({"rows_total": 1}, "rows_total", "quota_refused"),
        "cap": ({"monthly": {"limit.probe": 5}}, "monthly.limit.probe", "quota_refused"),
    }[kind]
    tid, session = tenant(overrides)
    if kind == "quota":
        with superuser() as c:
            c.execute("CREATE TABLE IF NOT EXISTS refusal_probe (id serial PRIMARY KEY, tenant_id uuid NOT NULL "
                      "DEFAULT sutra.current_tenant())")
            c.execute("SELECT sutra.enable_tenancy('refusal_probe')")
            c.execute("GRANT SELECT, INSERT ON refusal_probe TO PUBLIC")
            c.execute("GRANT USAGE ON SEQUENCE refusal_probe_id_seq TO PUBLIC")
    attempt = {"rate": "SELECT 1",
               "quota": "INSERT INTO refusal_probe DEFAULT VALUES",
               "cap": "SELECT sutra.record_usage('limit.probe', 10)"}[kind]
    try:
        with superuser() as listener:
            listener.execute("LISTEN sutra_limits")
            with session() as s:
                refused = 0
                for _ in range(6 if kind == "rate" else 4):
                    try:
                        s.execute(attempt)
                    except psycopg.Error as e:
                        assert e.sqlstate in ("53400", "53100"), e
                        refused += 1
                assert refused >= 3
            # The refusal's notification comes from the audit writer within about a second (a
            # quota's soft threshold, crossed by the row that was let in, is notified before it).
            got = [json.loads(n.payload) for n in listener.notifies(timeout=5)]
            refusals = [(g["tenant"], g["limit"], g["event"]) for g in got if g["event"] == "limit.refused"]
            assert refusals == [(str(tid), limit, "limit.refused")], got
        with superuser() as c:
            counted = c.execute(f"SELECT {counter} FROM sutra._tenant_counters() WHERE tenant_id = %s",
                                (tid,)).fetchone()[0]
        assert counted == refused
        with superuser() as c:
            rows = c.execute("SELECT details FROM sutra.audit_log WHERE tenant_id = %s AND action = 'limit.refused'",
                             (tid,)).fetchall()
        assert [r[0]["limit"] for r in rows] == [limit], rows
    finally:
        if kind == "quota":
            with superuser() as c:
                c.execute("DROP TABLE refusal_probe")
