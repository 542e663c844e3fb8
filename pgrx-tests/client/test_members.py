"""Members and roles through tokens: `sutra.authenticate_jwt` takes the user from `sub`, who must
be a member of the token's tenant; the session's scopes are the token's that the member's role
has too; the user is part of the context (`sutra.current_user_id()`) and of the audit log; and a
removed or demoted member loses access from the next transaction.

Two tenants share one application role; every test has a row of the other tenant that would be
seen if isolation broke. SQLAlchemy, at the end, runs the same through a pool.
"""

import os
import secrets
import time

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy import event
from sqlalchemy.orm import Session

from conftest import as_role, connect, require_cluster, superuser
from test_tenancy_adversarial import expect_error, make_jwt

DB = "sutra_client"


class Env:
    pass


def set_system(su, name, value):
    """ALTER SYSTEM SET (or RESET, for None) and wait until new sessions see it."""
    if value is None:
        su.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.SQL(name)))
    else:
        su.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.SQL(name), sql.Literal(value)))
    su.execute("SELECT pg_reload_conf()")
    want = value if value is not None else {"sutra.jwt_secret": "", "sutra.jwt_membership": "required"}[name]
    deadline = time.monotonic() + 10
    while True:
        with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname=DB) as probe:
            if probe.execute(sql.SQL("SHOW {}").format(sql.SQL(name))).fetchone()[0] == want:
                return
        assert time.monotonic() < deadline, f"{name} did not reload"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def env():
    require_cluster()
    e = Env()
    sfx = secrets.token_hex(4)
    e.app, e.table = f"members_app_{sfx}", f"member_notes_{sfx}"
    e.su = su = superuser()
    e.secret = "members-jwt-" + secrets.token_hex(24)
    su.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(e.app)))
    su.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, tenant_id uuid NOT NULL, body text NOT NULL)")
               .format(sql.Identifier(e.table)))
    su.execute("SELECT sutra.enable_tenancy(%s)", (e.table,))
    su.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(sql.Identifier(e.table),
                                                                                sql.Identifier(e.app)))
    su.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(e.table + "_id_seq"),
                                                                sql.Identifier(e.app)))
    e.a = su.execute("SELECT sutra.create_tenant(%s)", (f"members-a-{sfx}",)).fetchone()[0]
    e.b = su.execute("SELECT sutra.create_tenant(%s)", (f"members-b-{sfx}",)).fetchone()[0]
    e.user = {n: f"{n}-{sfx}@example.com" for n in ("carol", "bob", "dave", "alice", "erin")}
    for name, tenant, role in [("carol", e.a, "owner"), ("bob", e.a, "admin"), ("dave", e.a, "member"),
                               ("alice", e.a, "viewer"), ("alice", e.b, "member"), ("erin", e.b, "owner")]:
        su.execute("SELECT sutra.add_member(%s, %s, tenant => %s)", (e.user[name], role, str(tenant)))
    su.execute(sql.SQL("INSERT INTO {} (tenant_id, body) VALUES (%s, 'a note'), (%s, 'hidden note of b')")
               .format(sql.Identifier(e.table)), (e.a, e.b))
    set_system(su, "sutra.jwt_secret", e.secret)
    try:
        yield e
    finally:
        set_system(su, "sutra.jwt_membership", None)
        set_system(su, "sutra.jwt_secret", None)
        su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (e.app,))
        su.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(e.table)))
        for t in (e.a, e.b):
            su.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (t,))
        su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(e.app)))
        su.execute("SELECT sutra.reset_auth_failures()")
        su.close()


def token(env, who, tenant, **claims):
    body = {"tenant_id": str(tenant), "exp": int(time.time()) + 300, **claims}
    if who is not None:
        body["sub"] = env.user.get(who, who)
    return make_jwt(body, env.secret.encode())


def session_as(env, who, tenant, **claims):
    """An application connection whose session context comes from `who`'s token."""
    c = as_role(env.app)
    c.execute("SELECT sutra.authenticate_jwt(%s, session => true)", (token(env, who, tenant, **claims),))
    return c


def bodies(env, c):
    return sorted(r[0] for r in c.execute(sql.SQL("SELECT body FROM {}").format(sql.Identifier(env.table))))


def insert(env, c, body):
    return c.execute(sql.SQL("INSERT INTO {} (body) VALUES (%s)").format(sql.Identifier(env.table)), (body,))


def test_the_role_bounds_what_a_member_may_do(env):
    # A viewer reads its tenant's rows only and cannot write, whatever the token claims.
    viewer = session_as(env, "alice", env.a, scopes=["read", "write", "admin"])
    assert viewer.execute("SELECT sutra.current_scopes()").fetchone()[0] == ["read"]
    assert bodies(env, viewer) == ["a note"]
    expect_error(viewer, "42501", "lacks the write scope", *_insert_stmt(env, "by a viewer"))
    # A member writes but cannot manage members.
    member = session_as(env, "dave", env.a)
    assert member.execute("SELECT sutra.current_scopes()").fetchone()[0] == ["read", "write"]
    insert(env, member, "by a member")
    expect_error(member, "42501", "lacks the admin scope", "SELECT sutra.add_member('mallory', 'admin')")
    expect_error(member, "42501", "lacks the admin scope", "SELECT sutra.remove_member(%s)", (env.user["bob"],))
    # An admin manages members but not owners; a token's narrower scopes narrow the session.
    admin = session_as(env, "bob", env.a)
    admin.execute("SELECT sutra.add_member('frank@example.com', 'viewer')")
    expect_error(admin, "42501", "change the owners", "SELECT sutra.add_member('mallory', 'owner')")
    expect_error(admin, "42501", "change the owners", "SELECT sutra.remove_member(%s)", (env.user["carol"],))
    assert admin.execute("SELECT sutra.remove_member('frank@example.com')").fetchone()[0] is True
    narrowed = session_as(env, "bob", env.a, scopes=["read"])
    expect_error(narrowed, "42501", "lacks the admin scope", "SELECT sutra.add_member('mallory', 'viewer')")
    # The members of the other tenant stay out of sight.
    assert {r[0] for r in admin.execute("SELECT user_id FROM sutra.tenant_members")} == {
        env.user[n] for n in ("carol", "bob", "dave", "alice")}
    env.su.execute(sql.SQL("DELETE FROM {} WHERE body = 'by a member'").format(sql.Identifier(env.table)))


def _insert_stmt(env, body):
    return sql.SQL("INSERT INTO {} (body) VALUES (%s)").format(sql.Identifier(env.table)), (body,)


@pytest.mark.parametrize("who,tenant,claims,detail", [
    ("carol", "b", {}, "is not a member of tenant"),
    ("mallory@example.com", "a", {}, "is not a member of tenant"),
    (None, "a", {"role": "admin"}, 'no "sub" claim'),
    ("alice", "a", {"scopes": ["write", "admin"]}, "none of which the token grants"),
], ids=["member of another tenant", "no member", "no sub", "no scope in common"])
def test_tokens_outside_membership_are_refused(env, who, tenant, claims, detail):
    app = as_role(env.app)
    t = token(env, who, env.a if tenant == "a" else env.b, **claims)
    expect_error(app, "28000", "JWT authentication failed", "SELECT sutra.authenticate_jwt(%s, session => true)",
                 (t,), detail=detail)
    assert app.execute("SHOW sutra.tenant_id").fetchone()[0] == ""
    expect_error(app, "28000", "no tenant context", *_insert_stmt(env, "x"))
    env.su.execute("SELECT sutra.reset_auth_failures()")


def test_the_user_is_in_the_context_and_the_audit_log(env):
    c = session_as(env, "bob", env.a)
    assert c.execute("SELECT sutra.current_user_id()").fetchone()[0] == env.user["bob"]
    c.execute("SELECT sutra.add_member('grace@example.com', 'viewer')")
    c.execute("SELECT sutra.remove_member('grace@example.com')")
    rows = env.su.execute("SELECT action, user_id FROM sutra.audit_log WHERE tenant_id = %s AND action LIKE 'member.%%'"
                          " AND details->>'user_id' = 'grace@example.com' ORDER BY id", (env.a,)).fetchall()
    assert rows == [("member.add", env.user["bob"]), ("member.remove", env.user["bob"])]
    # An API key or a trusted server grants a context without a user.
    key = env.su.execute("SELECT sutra.create_api_key(%s::uuid)", (env.a,)).fetchone()[0]
    c.execute("SELECT sutra.authenticate(%s, session => true)", (key,))
    assert c.execute("SELECT sutra.current_user_id()").fetchone()[0] is None
    c.execute("SELECT sutra.clear_tenant()")
    assert c.execute("SELECT sutra.current_user_id()").fetchone()[0] is None


def test_a_user_of_two_tenants_switches_with_a_new_token(env):
    c = session_as(env, "alice", env.a)
    assert bodies(env, c) == ["a note"]
    c.execute("SELECT sutra.authenticate_jwt(%s, session => true)", (token(env, "alice", env.b),))
    assert bodies(env, c) == ["hidden note of b"]
    assert c.execute("SELECT sutra.current_scopes()").fetchone()[0] == ["read", "write"]
    # The context names the user and the tenant together: alice's B context is not an A one.
    assert c.execute("SELECT sutra.current_tenant()").fetchone()[0] == env.b


def test_a_removed_member_loses_a_live_session_at_the_next_transaction(env):
    env.su.execute("SELECT sutra.add_member('henry@example.com', 'member', tenant => %s)", (str(env.a),))
    c = session_as(env, "henry@example.com", env.a)
    assert bodies(env, c) == ["a note"]
    # Demoted: the live session keeps its tenant with the new role's scopes.
    env.su.execute("SELECT sutra.update_member('henry@example.com', 'viewer', tenant => %s)", (str(env.a),))
    assert bodies(env, c) == ["a note"]
    expect_error(c, "42501", "lacks the write scope", *_insert_stmt(env, "by a demoted member"))
    # Removed: the next transaction is refused, and so is any other use of the context.
    c.execute("BEGIN")
    assert bodies(env, c) == ["a note"]
    env.su.execute("SELECT sutra.remove_member('henry@example.com', tenant => %s)", (str(env.a),))
    # A transaction that started before the removal committed finishes with what it had.
    c.execute("COMMIT")
    expect_error(c, "28000", "is no longer a member of tenant", "SELECT count(*) FROM " + env.table)
    expect_error(c, "28000", "is no longer a member", "SELECT sutra.current_tenant()")
    # Added back, the same signed context works again: membership is looked up, not remembered.
    env.su.execute("SELECT sutra.add_member('henry@example.com', 'viewer', tenant => %s)", (str(env.a),))
    assert bodies(env, c) == ["a note"]


def test_a_trusted_issuer_vouches_for_membership(env):
    set_system(env.su, "sutra.jwt_membership", "trusted")
    try:
        # No membership row needed; the token's scopes apply as they are; sub, if any, is the user.
        c = session_as(env, "mallory@example.com", env.a, scopes=["read", "write"])
        assert c.execute("SELECT sutra.current_user_id(), sutra.current_scopes()").fetchone() == (
            "mallory@example.com", ["read", "write"])
        assert bodies(env, c) == ["a note"]
        c = session_as(env, None, env.b, role="reader")
        assert c.execute("SELECT sutra.current_user_id()").fetchone()[0] is None
        assert bodies(env, c) == ["hidden note of b"]
        # Without scopes the token says nothing about what it grants: refused.
        app = as_role(env.app)
        expect_error(app, "28P01", "JWT authentication failed", "SELECT sutra.authenticate_jwt(%s)",
                     (token(env, "mallory@example.com", env.a),), detail='"scopes"')
    finally:
        set_system(env.su, "sutra.jwt_membership", None)
        env.su.execute("SELECT sutra.reset_auth_failures()")
    # Back to required: the same user is refused.
    app = as_role(env.app)
    expect_error(app, "28000", "JWT authentication failed", "SELECT sutra.authenticate_jwt(%s)",
                 (token(env, "mallory@example.com", env.a, scopes=["read"]),), detail="is not a member")
    env.su.execute("SELECT sutra.reset_auth_failures()")


def test_sqlalchemy_requests_act_as_their_member(env):
    """Each request authenticates its user's token in its own transaction on a pooled connection
    (one connection, so requests reuse it); nothing of one request's user is left for the next."""
    url = sa.engine.URL.create("postgresql+psycopg", username=env.app, host=os.environ["SUTRA_TEST_HOST"],
                               port=int(os.environ["SUTRA_TEST_PORT"]), database=DB)
    engine = sa.create_engine(url, pool_size=1, max_overflow=0)
    notes = sa.table(env.table, sa.column("body"))

    def request(who, tenant):
        s = Session(engine)

        @event.listens_for(s, "after_begin")
        def authenticate(session, transaction, connection):
            connection.execute(sa.text("SELECT sutra.authenticate_jwt(:t)"), {"t": token(env, who, tenant)})

        return s

    try:
        with request("dave", env.a) as s:
            s.execute(sa.insert(notes).values(body="orm note of dave"))
            assert s.execute(sa.text("SELECT sutra.current_user_id()")).scalar() == env.user["dave"]
            s.commit()
        with request("alice", env.a) as s:
            assert sorted(s.scalars(sa.select(notes.c.body))) == ["a note", "orm note of dave"]
            with pytest.raises(sa.exc.ProgrammingError) as e:
                s.execute(sa.insert(notes).values(body="orm note of a viewer"))
            assert e.value.orig.sqlstate == "42501"
            s.rollback()
        with request("alice", env.b) as s:
            assert s.scalars(sa.select(notes.c.body)).all() == ["hidden note of b"]
            s.commit()
        # The pooled connection carries no context and no user between requests.
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_setting('sutra.tenant_id'), sutra.current_user_id()")).one() == (
                "", None)
        # A member removed between two requests is refused at the next one.
        env.su.execute("SELECT sutra.remove_member(%s, tenant => %s)", (env.user["dave"], str(env.a)))
        with request("dave", env.a) as s:
            with pytest.raises(sa.exc.OperationalError) as e:
                s.execute(sa.select(notes.c.body)).all()
            assert "is not a member" in (e.value.orig.diag.message_detail or "")
    finally:
        engine.dispose()
        env.su.execute(sql.SQL("DELETE FROM {} WHERE body LIKE 'orm note%%'").format(sql.Identifier(env.table)))
        env.su.execute("SELECT sutra.add_member(%s, 'member', tenant => %s) "
                       "WHERE NOT EXISTS (SELECT 1 FROM sutra.tenant_members WHERE user_id = %s AND tenant_id = %s)",
                       (env.user["dave"], str(env.a), env.user["dave"], env.a))
        env.su.execute("SELECT sutra.reset_auth_failures()")
