"""Attacks on sutra's privileged paths, by an ordinary role: each test tries to make sutra run the
attacker's code with rights the attacker lacks, to learn about another tenant, or to slow another
tenant down, and asserts that it fails. The fixture is the adversarial suite's (two tenants, an
application role with DML grants only, a table owner, a sutra_service member)."""

import time
import uuid

import psycopg
import pytest
from psycopg import sql

from test_tenancy_adversarial import env, expect_error, guard  # noqa: F401 - fixtures

SUPERUSER_NAMES = {"postgres"}


def notices_of(conn):
    seen = []
    conn.add_notice_handler(lambda d: seen.append(d.message_primary or ""))
    return seen


def test_temporary_view_is_never_registered_nor_read_by_sutra(env):
    app = env.app_conn()
    seen = notices_of(app)
    app.execute("CREATE FUNCTION pg_temp.evil() RETURNS int LANGUAGE plpgsql AS "
                "$$BEGIN RAISE NOTICE 'evil as %', current_user; RETURN 1; END$$")
    app.execute(sql.SQL("CREATE TEMP VIEW v AS SELECT {}::uuid AS tenant_id, pg_temp.evil() AS e").format(
        sql.Literal(str(env.b))))
    expect_error(app, "42501", "row-level security",
                 "INSERT INTO sutra.tenant_tables (table_name, tenant_column) VALUES ('pg_temp.v', 'tenant_id')")
    expect_error(app, "42809", "is not a table", "SELECT sutra.enable_tenancy('pg_temp.v')")
    app.execute("CREATE TEMP TABLE t (tenant_id uuid)")
    expect_error(app, "42501", "row-level security",
                 "INSERT INTO sutra.tenant_tables (table_name, tenant_column) VALUES ('pg_temp.t', 'tenant_id')")
    # Nothing was registered, and the tenant's first statements run none of the attacker's code.
    assert env.su.execute("SELECT count(*) FROM sutra.tenant_tables WHERE table_name::oid NOT IN "
                          "(SELECT oid FROM pg_class WHERE relpersistence <> 't')").fetchone()[0] == 0
    app.execute("SELECT sutra.authenticate(%s, session => true)", (env.keys["b"],))
    app.execute("SELECT count(*) FROM docs")
    assert not [n for n in seen if n.startswith("evil as ") and n.split()[-1] in SUPERUSER_NAMES], seen


def test_no_underscore_helper_with_elevated_rights_is_callable(env):
    """sutra's internal SECURITY DEFINER functions are not executable by an ordinary role."""
    rows = env.su.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'sutra'::regnamespace "
        "AND p.prosecdef AND p.proname LIKE '\\_%%' AND has_function_privilege(%s, p.oid, 'EXECUTE')",
        (env.app,)).fetchall()
    assert rows == []


def test_cluster_grants_trigger_writes_only_sutras_own_changes(env):
    """The definer trigger that writes what every Citus node checks contexts against cannot be
    attached by a table owner to a table of its own, to declare a suspended tenant active or a
    revoked key valid; granted by mistake, it still refuses any table but sutra's."""
    owner = env.connect(env.owner)
    owner.execute("CREATE TABLE tenants (id uuid, status text)")
    try:
        expect_error(owner, "42501", "permission denied for function",
                     "CREATE TRIGGER t AFTER INSERT ON tenants FOR EACH ROW EXECUTE FUNCTION sutra._cluster_grants_sync()")
        env.su.execute(sql.SQL("GRANT EXECUTE ON FUNCTION sutra._cluster_grants_sync() TO {}").format(
            sql.Identifier(env.owner)))
        owner.execute("CREATE TRIGGER t AFTER INSERT ON tenants FOR EACH ROW EXECUTE FUNCTION sutra._cluster_grants_sync()")
        expect_error(owner, "42501", "trigger of sutra's own tables only",
                     sql.SQL("INSERT INTO tenants VALUES ({}, 'active')").format(sql.Literal(str(env.b))))
        assert env.su.execute("SELECT count(*) FROM sutra.cluster_grants").fetchone()[0] == 0
    finally:
        env.su.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION sutra._cluster_grants_sync() FROM {}").format(
            sql.Identifier(env.owner)))
        owner.execute("DROP TABLE tenants")


@pytest.fixture
def spy_operators(env):
    """Operators `=` for uuid and text in the owner's schema that report who runs them."""
    owner = env.connect(env.owner)
    owner.execute("""CREATE FUNCTION spy_uuid_eq(a uuid, b uuid) RETURNS boolean LANGUAGE plpgsql AS
                     $$BEGIN RAISE NOTICE 'spy as %', current_user; RETURN a OPERATOR(pg_catalog.=) b; END$$""")
    owner.execute("""CREATE FUNCTION spy_text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS
                     $$BEGIN RAISE NOTICE 'spy as %', current_user; RETURN a OPERATOR(pg_catalog.=) b; END$$""")
    owner.execute("CREATE OPERATOR = (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = spy_uuid_eq)")
    owner.execute("CREATE OPERATOR = (LEFTARG = text, RIGHTARG = text, FUNCTION = spy_text_eq)")
    owner.execute(sql.SQL("GRANT EXECUTE ON FUNCTION spy_uuid_eq(uuid, uuid), spy_text_eq(text, text) TO {}").format(
        sql.Identifier(env.app)))
    yield
    owner.execute(sql.SQL("DROP OPERATOR {}.= (uuid, uuid)").format(sql.Identifier(env.schema)))
    owner.execute(sql.SQL("DROP OPERATOR {}.= (text, text)").format(sql.Identifier(env.schema)))
    owner.execute("DROP FUNCTION spy_uuid_eq(uuid, uuid), spy_text_eq(text, text)")


def test_operators_on_the_search_path_never_run_as_superuser(env, spy_operators):
    """A tenant session puts its own `=` ahead of pg_catalog's; sutra's lookups as superuser (key
    and tenant status, limits, quota counts) must not pick it up."""
    app = env.connect(env.app)
    seen = notices_of(app)
    app.execute(sql.SQL("SET search_path = {}, pg_catalog").format(sql.Identifier(env.schema)))
    app.execute("SELECT sutra.authenticate(%s, session => true)", (env.keys["a"],))
    app.execute("SELECT count(*) FROM docs")
    app.execute("INSERT INTO docs (k, code, body) VALUES ('spy', %s, 'x')", (f"SPY-{env.sfx}",))
    app.execute("DELETE FROM docs WHERE k = 'spy'")
    env.su.execute("SELECT sutra.update_tenant(%s::uuid, settings => '{\"x\": 1}')", (env.a,))
    app.execute("SELECT count(*) FROM docs")
    elevated = [n for n in seen if n.startswith("spy as ") and n.split()[-1] != env.app]
    assert elevated == [], elevated


def test_purge_does_not_lend_service_rights_to_a_table_owners_trigger(env):
    owner = env.connect(env.owner)
    owner.execute("CREATE TABLE purge_trap (tenant_id uuid NOT NULL, n int)")
    owner.execute("SELECT sutra.enable_tenancy('purge_trap')")
    owner.execute("CREATE TABLE loot (what text)")
    owner.execute(sql.SQL("""
        CREATE FUNCTION steal() RETURNS trigger LANGUAGE plpgsql SET search_path = {s} AS $$
        BEGIN
            BEGIN
                INSERT INTO loot SELECT sutra.create_api_key({b}::uuid, 'stolen', '{{read,write,admin}}');
            EXCEPTION WHEN others THEN INSERT INTO loot VALUES ('refused: ' || SQLERRM);
            END;
            BEGIN
                INSERT INTO loot SELECT 'context ' || sutra.set_tenant({b}::uuid)::text;
            EXCEPTION WHEN others THEN INSERT INTO loot VALUES ('refused: ' || SQLERRM);
            END;
            RETURN OLD;
        END $$""").format(b=sql.Literal(str(env.b)), s=sql.Identifier(env.schema)))
    owner.execute("CREATE TRIGGER steal AFTER DELETE ON purge_trap FOR EACH ROW EXECUTE FUNCTION steal()")
    c, _ = env.create_tenant("purge")
    env.su.execute(sql.SQL("INSERT INTO {}.purge_trap VALUES (%s, 1)").format(sql.Identifier(env.schema)), (c,))
    keys_before = env.su.execute("SELECT count(*) FROM sutra.api_key_store WHERE tenant_id = %s", (env.b,)).fetchone()[0]
    try:
        env.purge(c)
        loot = [r[0] for r in owner.execute("SELECT what FROM loot").fetchall()]
        assert loot and all(w.startswith("refused: ") for w in loot), loot
        assert env.su.execute("SELECT count(*) FROM sutra.api_key_store WHERE tenant_id = %s",
                              (env.b,)).fetchone()[0] == keys_before
    finally:
        owner.execute("DROP TABLE purge_trap, loot")
        owner.execute("DROP FUNCTION steal()")


def test_index_statistics_are_for_owners_and_service(env):
    owner = env.connect(env.owner)
    owner.execute("CREATE TABLE vecs (tenant_id uuid NOT NULL, e sutra.vector(2))")
    owner.execute("CREATE INDEX vecs_hnsw ON vecs USING sutra_hnsw (tenant_id, e)")
    owner.execute(sql.SQL("GRANT SELECT ON vecs TO {}").format(sql.Identifier(env.app)))
    try:
        app = env.app_conn("a")
        expect_error(app, "42501", "permission denied to inspect an index", "SELECT * FROM sutra.hnsw_stats('vecs_hnsw')")
        assert owner.execute("SELECT count(*) FROM sutra.hnsw_stats('vecs_hnsw')").fetchone()[0] == 0
        svc = env.connect(env.svc)
        assert svc.execute("SELECT count(*) FROM sutra.hnsw_stats(%s::regclass)",
                           (f"{env.schema}.vecs_hnsw",)).fetchone()[0] == 0
        expect_error(env.su, "42704", "index with OID 0 does not exist", "SELECT * FROM sutra.hnsw_stats(0)")
    finally:
        owner.execute("DROP TABLE vecs")


def test_failures_do_not_slow_a_valid_key(env):
    """Failures from the same client, and failures naming the valid key's own key id, slow the
    failing attempts only."""
    env.su.execute("SELECT sutra.reset_auth_failures()")
    app = env.app_conn()
    good = env.keys["b"]
    key_id = good.split("_")[1]
    wrong = f"sk_{key_id}_" + "A" * 43
    try:
        for _ in range(6):
            with pytest.raises(psycopg.Error):
                app.execute("SELECT sutra.authenticate(%s)", (wrong,))
        started = time.monotonic()
        assert app.execute("SELECT sutra.authenticate(%s, session => true)", (good,)).fetchone()[0] == env.b
        took = time.monotonic() - started
        assert took < 0.25, f"a valid key waited {took:.2f} s after failures"
        # The failures themselves were slowed.
        started = time.monotonic()
        with pytest.raises(psycopg.Error):
            app.execute("SELECT sutra.authenticate(%s)", (wrong,))
        assert time.monotonic() - started >= 0.1
    finally:
        env.su.execute("SELECT sutra.reset_auth_failures()")


ORACLE_CALLS = [
    "SELECT sutra.create_api_key({t}, 'x')",
    "SELECT * FROM sutra.effective_limits({t})",
    "SELECT * FROM sutra.quota_usage({t})",
    "SELECT * FROM sutra.usage_summary({t}, now() - interval '1 day', now())",
    "SELECT * FROM sutra.invoice({t}, date_trunc('month', now())::date)",
    "SELECT * FROM sutra.rate_limit_status({t})",
    "SELECT sutra.tenant_checksum({t})",
]


@pytest.mark.parametrize("call", ORACLE_CALLS)
def test_another_tenant_looks_like_no_tenant(env, call):
    app = env.app_conn("a_admin")
    answers = []
    for name in [env.slug_b, str(env.b), f"adv-none-{env.sfx}", str(uuid.uuid4())]:
        err = expect_error(app, "42704", "does not exist", call.format(t=sql.Literal(name).as_string(app)))
        answers.append((err.sqlstate, err.diag.message_primary.replace(name, "<tenant>"), err.diag.message_hint))
    assert len(set(answers)) == 1, answers


def test_another_tenants_key_looks_like_no_key(env):
    app = env.app_conn("a_admin")
    b_key_id = env.keys["b"].split("_")[1]
    answers = []
    for key_id in [b_key_id, "0123456789abcdef"]:
        for call in ["SELECT sutra.revoke_api_key(%s)", "SELECT sutra.rotate_api_key(%s)"]:
            err = expect_error(app, "42704", "does not exist", call, (key_id,))
            answers.append((call, err.diag.message_primary.replace(key_id, "<key>")))
    assert len(set(answers)) == 2, answers


def test_a_tenant_checksums_its_own_rows(env):
    app = env.app_conn("a")
    mine = app.execute("SELECT sutra.tenant_checksum(%s::uuid)", (env.a,)).fetchone()[0]
    assert mine == env.su.execute("SELECT sutra.tenant_checksum(%s::uuid)", (env.a,)).fetchone()[0]
    assert mine != env.su.execute("SELECT sutra.tenant_checksum(%s::uuid)", (env.b,)).fetchone()[0]


def test_transaction_context_is_the_default(env):
    """Without session => true a context ends with its transaction: a pooled server connection
    handed to the next client carries no tenant."""
    app = env.connect(env.app)
    with app.transaction():
        app.execute("SELECT sutra.authenticate(%s)", (env.keys["a"],))
        assert app.execute("SELECT count(*) FROM docs").fetchone()[0] == len(env.rows_of(env.a))
    assert app.execute("SHOW sutra.tenant_id").fetchone()[0] == ""
    expect_error(app, "28000", "no tenant context", "SELECT count(*) FROM docs")
    with app.transaction():
        app.execute("SELECT sutra.authenticate_jwt(%s)", (make_token(env),))
    assert app.execute("SHOW sutra.tenant_id").fetchone()[0] == ""
    svc = env.connect(env.svc)
    with svc.transaction():
        svc.execute("SELECT sutra.set_tenant(%s::uuid)", (env.a,))
    assert svc.execute("SHOW sutra.tenant_id").fetchone()[0] == ""
    # Outside a transaction block it holds for the one statement, with a warning that says so.
    seen = notices_of(app)
    app.execute("SELECT sutra.authenticate(%s)", (env.keys["a"],))
    assert any("lasts for this statement only" in n for n in seen), seen
    assert app.execute("SHOW sutra.tenant_id").fetchone()[0] == ""


def make_token(env):
    from test_tenancy_adversarial import make_jwt
    return make_jwt({"tenant_id": str(env.a), "sub": env.user, "scopes": ["read"], "exp": int(time.time()) + 600},
                    env.jwt_secret)


def test_settings_of_an_owners_trigger_do_not_outlive_a_purge(env):
    """A DELETE trigger that changes search_path during a purge: the change ends with the DELETE,
    so neither the rest of the purge nor the purging session picks up the owner's operators."""
    owner = env.connect(env.owner)
    owner.execute("CREATE TABLE path_trap (tenant_id uuid NOT NULL, n int)")
    owner.execute("SELECT sutra.enable_tenancy('path_trap')")
    owner.execute(sql.SQL("""
        CREATE FUNCTION move_path() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM set_config('search_path', {path}, false);
            PERFORM set_config('sutra_test.seen_context', current_setting('sutra.tenant_id'), false);
            RETURN OLD;
        END $$""").format(path=sql.Literal(f"{env.schema}, pg_catalog")))
    owner.execute("CREATE TRIGGER move_path AFTER DELETE ON path_trap FOR EACH ROW EXECUTE FUNCTION move_path()")
    c, _ = env.create_tenant("path")
    env.su.execute(sql.SQL("INSERT INTO {}.path_trap VALUES (%s, 1)").format(sql.Identifier(env.schema)), (c,))
    su = env.connect("postgres", options="")
    try:
        path = su.execute("SHOW search_path").fetchone()[0]
        su.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (c,))
        assert su.execute("SHOW search_path").fetchone()[0] == path
        assert su.execute("SELECT current_setting('sutra_test.seen_context', true)").fetchone()[0] in (None, "")
    finally:
        owner.execute("DROP TABLE path_trap")
        owner.execute("DROP FUNCTION move_path()")


def test_quota_triggers_count_registered_tables_only(env):
    """sutra's quota trigger attached by hand to a table that is not registered counts nothing."""
    owner = env.connect(env.owner)
    before = env.su.execute("SELECT used FROM sutra.quota_usage(%s::uuid) WHERE limit_name = 'rows_total'",
                            (env.b,)).fetchone()
    owner.execute("CREATE TABLE fake_counts (tenant_id uuid NOT NULL)")
    try:
        owner.execute("CREATE TRIGGER q AFTER INSERT OR UPDATE OR DELETE ON fake_counts "
                      "FOR EACH ROW EXECUTE FUNCTION sutra._quota_row('tenant_id')")
        owner.execute("INSERT INTO fake_counts SELECT %s FROM generate_series(1, 50)", (env.b,))
        after = env.su.execute("SELECT used FROM sutra.quota_usage(%s::uuid) WHERE limit_name = 'rows_total'",
                               (env.b,)).fetchone()
        assert after == before
    finally:
        owner.execute("DROP TABLE fake_counts")


def test_copy_applies_the_owners_other_policies(env):
    """A restrictive policy the owner adds refuses a row through COPY as it does through INSERT."""
    owner = env.connect(env.owner)
    owner.execute("CREATE TABLE guarded (tenant_id uuid NOT NULL, body text NOT NULL)")
    owner.execute("SELECT sutra.enable_tenancy('guarded')")
    owner.execute("CREATE POLICY no_forbidden ON guarded AS RESTRICTIVE FOR INSERT WITH CHECK (body <> 'forbidden')")
    owner.execute(sql.SQL("GRANT SELECT, INSERT ON guarded TO {}").format(sql.Identifier(env.app)))
    try:
        app = env.app_conn("a")
        expect_error(app, "42501", "row-level security", "INSERT INTO guarded (body) VALUES ('forbidden')")
        with pytest.raises(psycopg.Error) as info:
            with app.cursor().copy("COPY guarded (body) FROM STDIN") as cp:
                cp.write_row(("forbidden",))
        assert info.value.sqlstate == "42501", info.value
        with app.cursor().copy("COPY guarded (body) FROM STDIN") as cp:
            cp.write_row(("allowed",))
        assert app.execute("SELECT body FROM guarded").fetchall() == [("allowed",)]
    finally:
        owner.execute("DROP TABLE guarded")


def test_index_check_runs_the_owners_predicate_as_the_owner(env):
    owner = env.connect(env.owner)
    owner.execute("""CREATE FUNCTION keep(t uuid) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
                     BEGIN RAISE NOTICE 'keep as %', current_user; RETURN true; END $$""")
    owner.execute("CREATE TABLE pvecs (tenant_id uuid NOT NULL, e sutra.vector(2))")
    owner.execute(sql.SQL("CREATE INDEX pvecs_hnsw ON pvecs USING sutra_hnsw (tenant_id, e) WHERE {s}.keep(tenant_id)").format(
        s=sql.Identifier(env.schema)))
    owner.execute("INSERT INTO pvecs VALUES (%s, '[1,2]')", (env.a,))
    try:
        su = env.connect("postgres", options="")
        seen = notices_of(su)
        problems = su.execute(sql.SQL("SELECT problems FROM sutra.hnsw_check({}::regclass)").format(
            sql.Literal(f"{env.schema}.pvecs_hnsw"))).fetchone()[0]
        assert problems == []
        who = {n.split()[-1] for n in seen if n.startswith("keep as ")}
        assert who == {env.owner}, seen
    finally:
        owner.execute("DROP TABLE pvecs")
        owner.execute("DROP FUNCTION keep(uuid)")


def test_audit_writer_uses_the_catalogs_functions(env):
    """The background worker that writes failed authentications into the audit log resolves no
    function through the database's search_path (it runs as superuser)."""
    env.su.execute("CREATE TABLE public.sutra_test_spy (who text)")
    env.su.execute("""CREATE FUNCTION public.to_timestamp(numeric) RETURNS timestamptz LANGUAGE plpgsql AS
                      $$BEGIN INSERT INTO public.sutra_test_spy VALUES (current_user); RETURN now(); END$$""")
    try:
        before = env.su.execute("SELECT count(*) FROM sutra.audit_log WHERE action = 'auth.failure'").fetchone()[0]
        app = env.app_conn()
        with pytest.raises(psycopg.Error):
            app.execute("SELECT sutra.authenticate('sk_0123456789abcdef_" + "A" * 43 + "')")
        deadline = time.monotonic() + 10
        while env.su.execute("SELECT count(*) FROM sutra.audit_log WHERE action = 'auth.failure'").fetchone()[0] == before:
            assert time.monotonic() < deadline, "the failure was not audited"
            time.sleep(0.1)
        assert env.su.execute("SELECT count(*) FROM public.sutra_test_spy").fetchone()[0] == 0
    finally:
        env.su.execute("DROP FUNCTION public.to_timestamp(numeric)")
        env.su.execute("DROP TABLE public.sutra_test_spy")
        env.su.execute("SELECT sutra.reset_auth_failures()")


def test_quota_trigger_on_a_column_that_is_not_uuid_is_refused(env):
    """The quota trigger attached to a registered table with a non-uuid column as its argument
    raises instead of reading an integer as a uuid."""
    owner = env.connect(env.owner)
    owner.execute("CREATE TABLE wrong_col (tenant_id uuid NOT NULL, n int NOT NULL)")
    owner.execute("SELECT sutra.enable_tenancy('wrong_col')")
    owner.execute("CREATE TRIGGER wrong AFTER INSERT ON wrong_col FOR EACH ROW EXECUTE FUNCTION sutra._quota_row('n')")
    try:
        started = env.su.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        expect_error(env.su, "42804", "is not of type uuid",
                     sql.SQL("INSERT INTO {}.wrong_col VALUES (%s, 12345)").format(sql.Identifier(env.schema)), (env.a,))
        assert env.su.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started
    finally:
        owner.execute("DROP TABLE wrong_col")


def test_service_reads_tenants_near_limits(env):
    svc = env.connect(env.svc)
    svc.execute("SELECT count(*) FROM sutra.tenants_near_limits").fetchone()


def test_maintenance_and_report_functions_are_for_the_service_only(env):
    """The compaction of usage, the audit log's trim and the functions behind the reports are
    EXECUTE-revoked from PUBLIC: an application role cannot delete usage or audit rows, nor read
    every tenant's counters, through them; a sutra_service member can."""
    app = env.connect(env.app)
    for call in ["SELECT sutra.compact_usage()", "SELECT sutra.trim_audit_log()",
                 "SELECT count(*) FROM sutra._tenants_near_limits()", "SELECT count(*) FROM sutra._quota_totals()",
                 "SELECT count(*) FROM sutra._server_counters()", "SELECT count(*) FROM sutra._shared_tables()",
                 "SELECT sutra._compact_rollups(now() - interval '1 day', now(), 'hour')"]:
        expect_error(app, "42501", "permission denied", call)
    svc = env.connect(env.svc)
    assert svc.execute("SELECT sutra.trim_audit_log()").fetchone()[0] == 0  # retention off by default
    svc.execute("SELECT sutra.compact_usage()")
