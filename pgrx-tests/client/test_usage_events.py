"""Application events over real connections: monthly caps hold under concurrent calls, and no role
outside sutra can hold up the making of a month's partition."""

import json
import os
import threading
import time
import uuid

import psycopg
import pytest

from conftest import as_role, superuser


@pytest.fixture
def tenant():
    """A tenant capped at 10 tokens a month, with a write key; an application role (LOGIN, no
    privileges of its own), a sutra_service role and an ordinary role with nothing to do with sutra."""
    suffix = uuid.uuid4().hex[:8]
    roles = {kind: f"ev_{kind}_{suffix}" for kind in ("app", "service", "outsider")}
    with superuser() as c:
        c.execute(f"CREATE ROLE {roles['app']} LOGIN")
        c.execute(f"CREATE ROLE {roles['service']} LOGIN IN ROLE sutra_service")
        c.execute(f"CREATE ROLE {roles['outsider']} LOGIN")
        # enterprise: no rate or concurrency limit gets in the way of the concurrent calls.
        tid = c.execute("SELECT sutra.create_tenant(%s, plan => 'enterprise', quota_overrides => %s)",
                        (f"ev-{suffix}", psycopg.types.json.Jsonb({"monthly": {"tokens": 10}}))).fetchone()[0]
        key = c.execute("SELECT sutra.create_api_key(%s::uuid, 'writer', '{read,write}')", (tid,)).fetchone()[0]
    # A first use of the key, committed: authenticate writes a key's last use at most once a
    # minute, and that write would make concurrent first authentications wait for each other.
    # Its event (of a type without a cap) makes this month's partition, so that the concurrent
    # calls below only check the cap.
    with as_role(roles["app"]) as s:
        s.execute("BEGIN")
        s.execute("SELECT sutra.authenticate(%s)", (key,))
        s.execute("SELECT sutra.record_usage('api.call', 1)")
        s.execute("COMMIT")
    yield {"id": tid, "key": key, **roles}
    with superuser() as c:
        c.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (tid,))
        for r in roles.values():
            c.execute(f"DROP ROLE {r}")


def recorded(tid, event_type):
    with superuser() as c:
        return c.execute("SELECT coalesce(sum(quantity), 0) FROM sutra.usage_events WHERE tenant_id = %s AND event_type = %s",
                         (tid, event_type)).fetchone()[0]


def month_without_partition():
    """A month (as a timestamp in it) that has no partition of sutra.usage_events yet."""
    with superuser() as c:
        names = {r[0] for r in c.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'sutra.usage_events'::regclass").fetchall()}
    for year in range(2001, 2020):
        for month in range(1, 13):
            if f"usage_events_{year}{month:02d}" not in names:
                return f"usage_events_{year}{month:02d}", f"{year}-{month:02d}-15 12:00+00"
    pytest.fail("no free month left between 2001 and 2019")


def concurrent_calls(tenant, isolation, event_type, n=16):
    """n sessions of the tenant, started together, each recording 5 of event_type in a transaction
    that stays open a while; returns each one's outcome: "recorded" or the SQLSTATE."""
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def call(i):
        with as_role(tenant["app"]) as s:
            s.execute(f"BEGIN ISOLATION LEVEL {isolation}")
            s.execute("SET LOCAL statement_timeout = '30s'")
            s.execute("SELECT sutra.authenticate(%s)", (tenant["key"],))
            barrier.wait(timeout=30)
            try:
                s.execute("SELECT sutra.record_usage(%s, 5)", (event_type,))
                # The transaction stays open a while: a check that could not see this event
                # (uncommitted) would let every other call through.
                time.sleep(0.3)
                s.execute("COMMIT")
                outcomes[i] = "recorded"
            except psycopg.Error as e:
                s.execute("ROLLBACK")
                outcomes[i] = e.sqlstate

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert None not in outcomes, outcomes
    return outcomes


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_a_monthly_cap_is_never_overshot_by_concurrent_calls(tenant, isolation):
    outcomes = concurrent_calls(tenant, isolation, "tokens")
    total = recorded(tenant["id"], "tokens")
    assert total <= 10, (total, outcomes)
    assert total == 5 * outcomes.count("recorded"), (total, outcomes)
    refused = [o for o in outcomes if o != "recorded"]
    assert refused, outcomes
    if isolation == "READ COMMITTED":
        # Each call waits for the one before and sees its event: the cap is reached, then refused.
        assert total == 10, outcomes
        assert set(refused) == {"53100"}, outcomes
    else:
        # A call that cannot see the events committed since its snapshot fails rather than guess.
        assert set(refused) <= {"53100", "40001"}, outcomes


@pytest.mark.parametrize("cap", ["daily", "monthly_cost", "soft and hard"])
def test_daily_and_cost_caps_are_never_overshot_by_concurrent_calls(tenant, cap):
    """16 concurrent writers against a daily cap of 10, a monthly cost cap of 0.10 (at 0.01 a unit),
    or a soft monthly cap beside a hard daily one: exactly two events of 5 get through."""
    event_type = f"units_{uuid.uuid4().hex[:8]}"
    overrides = {"daily": {"daily": {event_type: 10}},
                 "monthly_cost": {"monthly_cost": 0.1},
                 "soft and hard": {"monthly": {event_type: {"cap": 1, "soft": True}}, "daily": {event_type: 10}}}[cap]
    with superuser() as c:
        c.execute("UPDATE sutra.tenants SET quota_overrides = %s WHERE id = %s",
                  (psycopg.types.json.Jsonb(overrides), tenant["id"]))
        c.execute("INSERT INTO sutra.prices (metric, unit_price) VALUES (%s, 0.01)", (event_type,))
    try:
        outcomes = concurrent_calls(tenant, "READ COMMITTED", event_type)
    finally:
        with superuser() as c:
            c.execute("DELETE FROM sutra.prices WHERE metric = %s", (event_type,))
    assert outcomes.count("recorded") == 2, outcomes
    assert set(outcomes) == {"recorded", "53100"}, outcomes
    assert recorded(tenant["id"], event_type) == 10


def test_caps_notify_listeners_when_crossed(tenant):
    """LISTEN sutra_limits: the soft threshold (0.8 by default) and a soft cap's crossing arrive as
    notifications once the recording transaction commits, with tenant, limit and value."""
    event_type = f"images_{uuid.uuid4().hex[:8]}"
    with superuser() as c:
        c.execute("UPDATE sutra.tenants SET quota_overrides = %s WHERE id = %s",
                  (psycopg.types.json.Jsonb({"monthly": {event_type: {"cap": 10, "soft": True}}}), tenant["id"]))
    with psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user="postgres",
                         dbname="sutra_client", autocommit=True) as listener:
        listener.execute("LISTEN sutra_limits")
        with as_role(tenant["app"]) as s:
            for quantity in [7, 2, 3]:
                s.execute("BEGIN")
                s.execute("SELECT sutra.authenticate(%s)", (tenant["key"],))
                s.execute("SELECT sutra.record_usage(%s, %s)", (event_type, quantity))
                s.execute("COMMIT")
        got = []
        for n in listener.notifies(timeout=5, stop_after=2):
            got.append(json.loads(n.payload))
    assert [(g["tenant"], g["limit"], g["value"], g["limit_value"], g["event"]) for g in got] == [
        (str(tenant["id"]), f"monthly.{event_type}", 9, 10, "usage.soft_limit"),
        (str(tenant["id"]), f"monthly.{event_type}", 12, 10, "usage.soft_cap_exceeded"),
    ], got


@pytest.mark.parametrize("hold", ["advisory lock", "read lock on usage_events"])
def test_no_other_role_holds_up_a_new_month(tenant, hold):
    partition, when = month_without_partition()
    with as_role(tenant["outsider"]) as o:
        if hold == "advisory lock":
            o.execute("SELECT pg_advisory_lock(hashtext('sutra.usage_events partitions'))")
        else:
            # What any read of usage_events takes, kept until the transaction ends.
            o.execute("BEGIN")
            o.execute("LOCK TABLE sutra.usage_events IN ACCESS SHARE MODE")
        with as_role(tenant["service"]) as s:
            s.execute("SET statement_timeout = '5s'")
            assert s.execute("SELECT sutra.record_usage('api.call', 1, occurred_at => %s::timestamptz, tenant => %s::text)",
                             (when, tenant["id"])).fetchone()[0] is True
    with superuser() as c:
        assert c.execute("SELECT to_regclass(%s) IS NOT NULL", (f"sutra.{partition}",)).fetchone()[0]
        assert c.execute("SELECT count(*) FROM sutra.usage_events WHERE tableoid = %s::regclass",
                         (f"sutra.{partition}",)).fetchone()[0] == 1


def test_concurrent_calls_make_a_new_month_once(tenant):
    partition, when = month_without_partition()
    n = 6
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def call(i):
        with as_role(tenant["service"]) as s:
            s.execute("SET statement_timeout = '30s'")
            barrier.wait(timeout=30)
            try:
                outcomes[i] = s.execute("SELECT sutra.record_usage('api.call', 1, occurred_at => %s::timestamptz, tenant => %s::text)",
                                        (when, tenant["id"])).fetchone()[0]
            except psycopg.Error as e:
                outcomes[i] = e.sqlstate

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes == [True] * n
    with superuser() as c:
        assert c.execute("SELECT count(*) FROM sutra.usage_events WHERE tableoid = %s::regclass",
                         (f"sutra.{partition}",)).fetchone()[0] == n
