"""sutra.vector through a real driver: psycopg 3 with pgvector-python's adapter, in text and
binary mode, and the preload requirement as a client sees it."""

import numpy as np
import psycopg
import pytest
from pgvector import Vector
from psycopg.adapt import Dumper
from psycopg.pq import Format
from pgvector.psycopg import register_vector

from conftest import connect


@pytest.fixture
def table(conn):
    register_vector(conn)
    conn.execute("CREATE TEMP TABLE items (id int PRIMARY KEY, embedding sutra.vector(3))")
    return conn


@pytest.mark.parametrize("binary", [False, True])
def test_round_trip(table, binary):
    rows = [
        (1, np.array([1.0, 2.0, 3.0], dtype=np.float32)),
        (2, np.array([0.1, -2.5e-7, 3.4028235e38], dtype=np.float32)),
        (3, np.array([-0.0, 1e-45, 123456.7], dtype=np.float32)),
    ]
    with table.cursor(binary=binary) as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s)", rows)
        cur.execute("SELECT id, embedding FROM items ORDER BY id")
        got = cur.fetchall()
    assert [r[0] for r in got] == [1, 2, 3]
    for (_, want), (_, have) in zip(rows, got):
        assert isinstance(have, Vector)
        # Bit-for-bit: nothing is rounded on the way in or out.
        assert have.to_numpy().tobytes() == want.tobytes()


def test_binary_and_text_agree(table):
    v = np.array([0.5, -1.25, 1e-3], dtype=np.float32)
    table.execute("INSERT INTO items VALUES (1, %s)", (v,))
    text = table.execute("SELECT embedding::text FROM items").fetchone()[0]
    assert text == "[0.5,-1.25,0.001]"
    with table.cursor(binary=True) as cur:
        raw = cur.execute("SELECT sutra.vector_send(embedding) FROM items").fetchone()[0]
    assert raw == bytes.fromhex("0003 0000") + v.astype(">f4").tobytes()


def test_distance_in_both_modes(table):
    table.execute("INSERT INTO items VALUES (1, '[1,1,1]'), (2, '[5,5,5]'), (3, '[2,2,2]')")
    q = np.array([1.9, 2.0, 2.1], dtype=np.float32)
    for binary in (False, True):
        with table.cursor(binary=binary) as cur:
            ids = [r[0] for r in cur.execute(
                "SELECT id FROM items ORDER BY embedding <-> %s LIMIT 2", (q,)
            )]
        assert ids == [3, 1]


@pytest.mark.parametrize("binary", [False, True])
def test_bad_input_is_refused_and_the_connection_survives(table, binary):
    bad = [
        (np.array([np.nan, 1, 2], dtype=np.float32), "22000", "NaN not allowed in vector"),
        (np.array([np.inf, 1, 2], dtype=np.float32), "22000", "infinite value not allowed in vector"),
        (np.array([1, 2], dtype=np.float32), "22000", "expected 3 dimensions, not 2"),
    ]
    for value, sqlstate, message in bad:
        with table.cursor(binary=binary) as cur:
            cur.execute("SAVEPOINT s")
            with pytest.raises(psycopg.Error) as err:
                cur.execute("INSERT INTO items VALUES (1, %s)", (value,))
            assert err.value.sqlstate == sqlstate
            assert err.value.diag.message_primary == message
            cur.execute("ROLLBACK TO SAVEPOINT s")
    assert table.execute("SELECT count(*) FROM items").fetchone()[0] == 0
    assert table.execute("SELECT 1").fetchone()[0] == 1


class RawBytes:
    """Bytes sent as-is as a binary parameter of type sutra.vector."""

    def __init__(self, payload):
        self.payload = payload


def test_malformed_binary_is_refused(conn):
    oid = conn.execute("SELECT 'sutra.vector'::regtype::oid").fetchone()[0]
    dumper = type(
        "RawVectorDumper",
        (Dumper,),
        {"oid": oid, "format": Format.BINARY, "dump": lambda self, obj: obj.payload},
    )
    conn.adapters.register_dumper(RawBytes, dumper)
    good = bytes.fromhex("0001 0000") + np.array([2.5], dtype=">f4").tobytes()
    assert conn.execute("SELECT %b::text", (RawBytes(good),)).fetchone()[0] == "[2.5]"
    cases = [
        # more dimensions than the message holds
        (bytes.fromhex("0004 0000") + np.zeros(2, dtype=">f4").tobytes(), "08P01"),
        # bytes left over after the last element
        (good + b"\x00", "22P03"),
        # the unused field is not zero
        (bytes.fromhex("0001 0007") + np.zeros(1, dtype=">f4").tobytes(), "22P03"),
        # a negative and a zero dimension count
        (bytes.fromhex("ffff 0000"), "22000"),
        (bytes.fromhex("0000 0000"), "22000"),
        # 16001 dimensions
        (bytes.fromhex("3e81 0000"), "54000"),
        # NaN and infinity as elements
        (bytes.fromhex("0001 0000 7fc00000"), "22000"),
        (bytes.fromhex("0001 0000 7f800000"), "22000"),
        # nothing at all
        (b"", "08P01"),
    ]
    for payload, sqlstate in cases:
        with conn.cursor() as cur:
            cur.execute("SAVEPOINT s")
            with pytest.raises(psycopg.Error) as err:
                cur.execute("SELECT %b::text", (RawBytes(payload),))
            assert err.value.sqlstate == sqlstate, (payload.hex(), err.value)
            cur.execute("ROLLBACK TO SAVEPOINT s")
    assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_loading_without_preload_is_refused(plain_conn):
    with pytest.raises(psycopg.Error) as err:
        plain_conn.execute("CREATE EXTENSION sutra")
    assert err.value.sqlstate == "55000"
    assert err.value.diag.message_primary == "sutra must be loaded via shared_preload_libraries"
    assert "shared_preload_libraries = 'sutra'" in err.value.diag.message_hint
    assert plain_conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'sutra'").fetchone()[0] == 0


def test_sutra_parameters_cannot_be_planted(conn):
    # The sutra. prefix is reserved: no route can create a value under a name sutra did not define.
    for stmt in (
        "SET sutra.not_a_parameter = 'planted'",
        "SET LOCAL sutra.not_a_parameter = 'planted'",
        "SELECT set_config('sutra.not_a_parameter', 'planted', false)",
        "SELECT set_config('sutra.not_a_parameter', 'planted', true)",
        "ALTER ROLE CURRENT_USER SET sutra.not_a_parameter = 'planted'",
        "ALTER DATABASE sutra_client SET sutra.not_a_parameter = 'planted'",
    ):
        with conn.cursor() as cur:
            cur.execute("SAVEPOINT s")
            with pytest.raises(psycopg.Error) as err:
                cur.execute(stmt)
            assert err.value.sqlstate == "42602"
            assert '"sutra" is a reserved prefix' in (err.value.diag.message_detail or "")
            cur.execute("ROLLBACK TO SAVEPOINT s")


def test_sutra_parameters_cannot_come_with_the_connection():
    with pytest.raises(psycopg.OperationalError) as err:
        connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", options="-c sutra.not_a_parameter=planted")
    assert 'invalid configuration parameter name "sutra.not_a_parameter"' in str(err.value)
    assert '"sutra" is a reserved prefix' in str(err.value)
    # The tenant context is a defined parameter: it takes no value sutra did not sign.
    with pytest.raises(psycopg.OperationalError) as err:
        connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", options="-c sutra.tenant_id=forged")
    assert "invalid tenant context" in str(err.value)
