"""Errors that pass through sutra's hooks reach the client exactly as PostgreSQL raised them, also
when the server's environment sets RUST_BACKTRACE: no Rust backtrace, no empty DETAIL. A throwaway
cluster of its own, started with RUST_BACKTRACE=1."""

import os
import subprocess

import psycopg
import pytest

from conftest import BIN, own_cluster

PORT = 54721


@pytest.fixture(scope="module")
def server():
    with own_cluster("sutra-errors-", PORT, "fsync = off\n", start=False) as (base, _):
        env = dict(os.environ, RUST_BACKTRACE="1")
        data = os.path.join(base, "data")
        start = [f"{BIN}/pg_ctl", "-D", data, "-l", data + ".log", "-w", "start"]
        if os.geteuid() == 0:
            start = ["runuser", "-u", "postgres", "--", "env", "RUST_BACKTRACE=1"] + start
        subprocess.run(start, env=env, check=True, capture_output=True)
        with psycopg.connect(host=base, port=PORT, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE EXTENSION sutra")
            c.execute("SELECT sutra.create_tenant('errs')")
            c.execute("CREATE TABLE t (id int PRIMARY KEY)")
            c.execute("SELECT sutra.enable_tenancy('t')")
            c.execute("CREATE ROLE errs_app LOGIN IN ROLE sutra_service")
        yield base


@pytest.mark.parametrize("user,statements,sqlstate", [
    ("postgres", ["CREATE TABLE t (id int)"], "42P07"),
    ("postgres", ["ALTER EXTENSION sutra UPDATE TO '9.9'"], "22023"),
    ("errs_app", ["SELECT * FROM t"], "42501"),
    ("postgres", ["BEGIN", "SELECT sutra.set_tenant('errs')", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)"], "23505"),
    ("postgres", ["BEGIN", "SELECT sutra.set_tenant('errs')", "SELECT 1 / 0"], "22012"),
])
def test_errors_pass_through_unchanged(server, user, statements, sqlstate):
    with psycopg.connect(host=server, port=PORT, user=user, dbname="postgres", autocommit=True) as c:
        with pytest.raises(psycopg.Error) as info:
            for s in statements:
                c.execute(s)
        err = info.value
        assert err.sqlstate == sqlstate, err
        detail = err.diag.message_detail
        assert detail is None or (detail.strip() and "pgrx" not in detail and "panic" not in detail), repr(detail)
