"""Django 5 with pgvector.django, as docs/tenancy.md shows: a small app (pgrx-tests/client/
django_docs) whose migration creates the table with a `sutra_hnsw` index through
`sutra_client.django.SutraHnswIndex` and makes it a tenant table; requests go through
`sutra_client.django.TenantMiddleware`, which runs each one in a transaction that starts with
`sutra.authenticate`. Two tenants write and search through the ORM; each sees only its own rows,
and a third tenant's rows, right on the query, never come back."""

import os
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from conftest import superuser

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

DB = f"django_{uuid.uuid4().hex[:8]}"
QUERY = [0.5, 0.5, 0.5]


def database(user):
    return {"ENGINE": "django.db.backends.postgresql", "NAME": DB, "USER": user, "HOST": os.environ["SUTRA_TEST_HOST"],
            "PORT": os.environ["SUTRA_TEST_PORT"], "OPTIONS": {"options": "-c search_path=public,sutra"}}


@pytest.fixture(scope="module")
def app():
    with superuser() as c:
        c.execute(f"CREATE DATABASE {DB}")
        c.execute("DROP ROLE IF EXISTS django_app")
        c.execute("CREATE ROLE django_app LOGIN NOBYPASSRLS")
    with psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user="postgres",
                         dbname=DB, autocommit=True) as c:
        c.execute("CREATE EXTENSION sutra")
        keys = {}
        for slug in ["dj-a", "dj-b", "dj-c"]:
            c.execute("SELECT sutra.create_tenant(%s)", (slug,))
            keys[slug] = c.execute("SELECT sutra.create_api_key(%s, 'web', '{read,write}')", (slug,)).fetchone()[0]
    import django
    from django.conf import settings
    settings.configure(
        DATABASES={"default": database("django_app"), "admin": database("postgres")},
        INSTALLED_APPS=["django_docs"], DEFAULT_AUTO_FIELD="django.db.models.BigAutoField", USE_TZ=True,
        ALLOWED_HOSTS=["testserver"])
    django.setup()
    from django.core.management import call_command
    # Migrations run as the table's owner; requests as the application role.
    call_command("migrate", "django_docs", database="admin", verbosity=0)
    with psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user="postgres",
                         dbname=DB, autocommit=True) as c:
        c.execute("GRANT SELECT, INSERT ON django_docs TO django_app")
        c.execute("GRANT USAGE ON SEQUENCE django_docs_id_seq TO django_app")
        c.execute("INSERT INTO django_docs (tenant_id, body, embedding) "
                  "SELECT (SELECT id FROM sutra.tenants WHERE slug = 'dj-c'), 'hidden', '[0.5,0.5,0.5]' "
                  "FROM generate_series(1, 5)")
    yield keys
    from django.db import connections
    connections.close_all()
    with superuser() as c:
        c.execute(f"DROP DATABASE {DB} WITH (FORCE)")
        c.execute("DROP ROLE django_app")


def request(key, view):
    from django.test import RequestFactory
    from sutra_client.django import TenantMiddleware
    return TenantMiddleware(view)(RequestFactory().get("/", HTTP_AUTHORIZATION=f"Bearer {key}"))


def test_migration_makes_a_tenant_table_with_a_sutra_hnsw_index(app):
    with psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user="postgres",
                         dbname=DB) as c:
        indexdef = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'django_docs_embedding'").fetchone()[0]
        registered = c.execute("SELECT tenant_column FROM sutra.tenant_tables "
                               "WHERE table_name = 'django_docs'::regclass").fetchone()
    assert "USING sutra_hnsw (tenant_id, embedding)" in indexdef and "m='8'" in indexdef, indexdef
    assert registered == ("tenant_id",)


def test_requests_write_and_search_their_own_tenant_only(app):
    from django.http import JsonResponse
    from django_docs.models import Doc
    from pgvector.django import L2Distance

    def add(req):
        for i in range(3):
            Doc.objects.create(body=f"doc {i}", embedding=[-1.0, -1.0, float(i)])
        return JsonResponse({})

    def search(req):
        docs = Doc.objects.order_by(L2Distance("embedding", QUERY))[:5]
        return JsonResponse({"tenants": sorted({str(d.tenant_id) for d in docs}), "n": len(docs),
                             "bodies": [d.body for d in docs]})

    ids = {}
    with psycopg.connect(host=os.environ["SUTRA_TEST_HOST"], port=os.environ["SUTRA_TEST_PORT"], user="postgres",
                         dbname=DB) as c:
        for slug in ["dj-a", "dj-b"]:
            ids[slug] = str(c.execute("SELECT id FROM sutra.tenants WHERE slug = %s", (slug,)).fetchone()[0])
    import json
    for slug in ["dj-a", "dj-b"]:
        request(app[slug], add)
    for slug in ["dj-a", "dj-b"]:
        got = json.loads(request(app[slug], search).content)
        assert got["tenants"] == [ids[slug]] and got["n"] == 3 and "hidden" not in got["bodies"], got
    # Outside a request's transaction there is no tenant context: the ORM is refused.
    from django.db import DatabaseError
    with pytest.raises(DatabaseError):
        list(Doc.objects.all())
