"""Connections to the Citus cluster scripts/citus-test.sh starts: a coordinator and two workers,
database app, Citus installed in it on every node, sutra preloaded everywhere.

SUTRA_CITUS_HOSTS / SUTRA_CITUS_PORTS: the coordinator's then each worker's socket directory and
port, comma-separated.
"""

import os

import psycopg
import pytest


def nodes():
    hosts = os.environ.get("SUTRA_CITUS_HOSTS", "")
    ports = os.environ.get("SUTRA_CITUS_PORTS", "")
    if not hosts or not ports:
        pytest.skip("SUTRA_CITUS_HOSTS / SUTRA_CITUS_PORTS not set: scripts/citus-test.sh runs these tests")
    return list(zip(hosts.split(","), ports.split(",")))


def node(i, user="postgres", autocommit=True, application_name="pytest"):
    """A connection to database app on node i (0: the coordinator, 1 and 2: the workers)."""
    host, port = nodes()[i]
    # Citus hides shards from pg_class for clients; the tests look at them.
    return psycopg.connect(host=host, port=port, user=user, dbname="app", autocommit=autocommit,
                           application_name=application_name,
                           options="-c citus.show_shards_for_app_name_prefixes=*")
