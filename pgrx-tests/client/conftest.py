"""Connections to the throwaway clusters that scripts/test.sh starts.

SUTRA_TEST_HOST / SUTRA_TEST_PORT: a cluster with sutra preloaded and installed in database
sutra_client. SUTRA_NOPRELOAD_HOST / SUTRA_NOPRELOAD_PORT: a cluster without the preload.
"""

import os

import psycopg
import pytest


def connect(host_var, port_var, dbname="postgres", **kwargs):
    return psycopg.connect(
        host=os.environ[host_var],
        port=os.environ[port_var],
        user="postgres",
        dbname=dbname,
        **kwargs,
    )


@pytest.fixture
def conn():
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client") as c:
        # pgvector's adapter looks the type up by name, so sutra's schema goes on the path.
        c.execute("SET search_path TO public, sutra")
        yield c
        c.rollback()


@pytest.fixture
def plain_conn():
    with connect("SUTRA_NOPRELOAD_HOST", "SUTRA_NOPRELOAD_PORT", autocommit=True) as c:
        yield c
