"""Random bytes into every entry point that parses what a session sends: API keys, JWTs, the
signed tenant context, and the vector type's text and binary input. Each call must fail cleanly or
succeed; the backend and the server must survive (pg_postmaster_start_time unchanged, the
connection still answering)."""

import random
import struct

import psycopg
import pytest

from conftest import connect

ROUNDS = 300


def random_text(rng):
    kind = rng.random()
    if kind < 0.3:
        alphabet = "sk_0123456789abcdefABCDEF-_.=[],eE+ninfa"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
    if kind < 0.6:
        return bytes(rng.randint(1, 127) for _ in range(rng.randint(0, 200))).decode("ascii")
    return "".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(0, 80)))


@pytest.fixture(scope="module")
def server():
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client", autocommit=True) as c:
        started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        yield started
        assert c.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started


@pytest.mark.parametrize("query", [
    "SELECT sutra.authenticate(%s)",
    "SELECT sutra.authenticate_jwt(%s)",
    "SELECT set_config('sutra.tenant_id', %s, false)",
    "SELECT %s::sutra.vector",
    "SELECT sutra._key_id_of(%s)",
])
def test_random_text_is_refused_cleanly(server, query):
    rng = random.Random(hash(query) & 0xFFFF)
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client", autocommit=True) as c:
        c.execute("SELECT sutra.reset_auth_failures()")
        # Failed authentications are slowed down; keep the delay out of the way.
        for i in range(ROUNDS):
            try:
                c.execute(query, (random_text(rng),))
            except psycopg.errors.DataError:
                pass
            except psycopg.Error as e:
                assert e.sqlstate and not e.sqlstate.startswith("XX"), f"{query}: {e.sqlstate} {e}"
            if "authenticate" in query:
                c.execute("SELECT sutra.reset_auth_failures()")
        assert c.execute("SELECT 1").fetchone()[0] == 1
        c.execute("SELECT sutra.reset_auth_failures()")


def test_random_binary_vectors_are_refused_cleanly(server):
    """pgvector's binary format (int16 dimensions, int16 unused, float4 elements), mutated."""
    rng = random.Random(7)
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client", autocommit=True) as c:
        oid = c.execute("SELECT 'sutra.vector'::regtype::oid").fetchone()[0]

        class Raw:
            def __init__(self, data):
                self.data = data

        class RawDumper(psycopg.adapt.Dumper):
            format = psycopg.pq.Format.BINARY

            def dump(self, obj):
                return obj.data

        RawDumper.oid = oid
        c.adapters.register_dumper(Raw, RawDumper)
        for _ in range(ROUNDS):
            dims = rng.choice([0, 1, 3, rng.randint(-5, 20000)])
            body = struct.pack(">hh", max(-32768, min(32767, dims)), rng.choice([0, 0, 1]))
            body += bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 64)))
            if rng.random() < 0.5:
                n = max(0, min(dims, 16))
                body = struct.pack(">hh", n, 0) + struct.pack(f">{n}f", *[rng.uniform(-1e3, 1e3) for _ in range(n)])
                cut = rng.randint(0, len(body))
                body = body[:cut] + bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 4)))
            try:
                c.execute("SELECT %b::text", (Raw(body),))
            except psycopg.Error as e:
                assert e.sqlstate and not e.sqlstate.startswith("XX"), f"{body!r}: {e.sqlstate} {e}"
        assert c.execute("SELECT 1").fetchone()[0] == 1
