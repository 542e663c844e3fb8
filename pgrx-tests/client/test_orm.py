"""An ORM works unchanged against tenant tables: SQLAlchemy with the tenant context set per
transaction (the PgBouncer transaction pooling pattern), defaults stamping the tenant."""

import os
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from conftest import connect


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "orm_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    # Filled by the column default, sutra.current_tenant(), never by the application.
    tenant_id: Mapped[uuid.UUID] = mapped_column(server_default=sa.FetchedValue())


@pytest.fixture
def setup():
    suffix = uuid.uuid4().hex[:8]
    role = f"orm_app_{suffix}"
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client", autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN")
        c.execute("CREATE TABLE orm_notes (id serial PRIMARY KEY, body text NOT NULL)")
        c.execute("SELECT sutra.enable_tenancy('orm_notes')")
        c.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON orm_notes TO {role}")
        c.execute(f"GRANT USAGE ON SEQUENCE orm_notes_id_seq TO {role}")
        tenants = [c.execute("SELECT sutra.create_tenant(%s)", (f"orm-{n}-{suffix}",)).fetchone()[0] for n in "ab"]
        keys = [c.execute("SELECT sutra.create_api_key(%s)", (t,)).fetchone()[0] for t in tenants]
        c.execute("INSERT INTO orm_notes (body, tenant_id) VALUES ('hidden row of b', %s)", (tenants[1],))
    yield role, tenants, keys
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client", autocommit=True) as c:
        c.execute("DROP TABLE orm_notes")
        for t in tenants:
            c.execute("SELECT sutra.drop_tenant(%s::uuid, purge => true)", (t,))
        c.execute(f"DROP ROLE {role}")


def engine_for(role):
    url = sa.engine.URL.create(
        "postgresql+psycopg", username=role, host=os.environ["SUTRA_TEST_HOST"],
        port=int(os.environ["SUTRA_TEST_PORT"]), database="sutra_client")
    return sa.create_engine(url, pool_size=1, max_overflow=0)


def tenant_session(engine, key):
    """A session whose every transaction first authenticates with key, for that transaction only."""
    session = Session(engine)

    @event.listens_for(session, "after_begin")
    def authenticate(session, transaction, connection):
        # The default context lasts for this transaction only: nothing is left on the pooled
        # connection for the next request.
        connection.execute(sa.text("SELECT sutra.authenticate(:key)"), {"key": key})

    return session


def test_orm_sees_and_writes_only_its_tenant(setup):
    role, (a, b), (key_a, key_b) = setup
    engine = engine_for(role)
    with tenant_session(engine, key_a) as s:
        s.add_all([Note(body="first"), Note(body="second")])
        s.commit()
        notes = s.scalars(sa.select(Note).order_by(Note.id)).all()
        assert [(n.body, n.tenant_id) for n in notes] == [("first", a), ("second", a)]
        # A bulk update that names every row changes only the tenant's own.
        s.execute(sa.update(Note).values(body=Note.body + "!"))
        s.commit()
    # The same pooled connection, another tenant: the earlier context is gone with its transaction.
    with tenant_session(engine, key_b) as s:
        assert [n.body for n in s.scalars(sa.select(Note))] == ["hidden row of b"]
        s.add(Note(body="b's own"))
        s.commit()
        assert s.scalar(sa.select(sa.func.count()).select_from(Note)) == 2
    # Without authentication: an error, not rows.
    with Session(engine) as s, pytest.raises(sa.exc.DBAPIError) as e:
        s.scalars(sa.select(Note)).all()
    assert e.value.orig.sqlstate == "28000"
    # A request that authenticated the plain way, committed and gave its connection back: the next
    # request on that connection (pool_size 1) has no tenant.
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT sutra.authenticate(:key)"), {"key": key_a})
        assert conn.scalar(sa.select(sa.func.count()).select_from(Note)) == 2
        conn.commit()
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SHOW sutra.tenant_id")) == ""
        with pytest.raises(sa.exc.DBAPIError) as e:
            conn.execute(sa.select(Note)).all()
        assert e.value.orig.sqlstate == "28000"
    engine.dispose()
    with connect("SUTRA_TEST_HOST", "SUTRA_TEST_PORT", dbname="sutra_client") as c:
        rows = c.execute("SELECT body, tenant_id FROM orm_notes ORDER BY id").fetchall()
    assert rows == [("hidden row of b", b), ("first!", a), ("second!", a), ("b's own", b)]


def test_create_all_with_pgvector_and_a_sutra_hnsw_index(setup):
    """SQLAlchemy 2 with pgvector.sqlalchemy: `create_all` makes the table and its `sutra_hnsw`
    index (in SQLAlchemy's order: table, then indexes), an `after_create` hook makes it a tenant
    table, and per-transaction sessions search their own tenant's rows only. enable_tenancy adds
    its tenant btree although the vector index already leads with the tenant column."""
    from pgvector.sqlalchemy import VECTOR

    role, (a, b), (key_a, key_b) = setup

    class VBase(DeclarativeBase):
        pass

    class Doc(VBase):
        __tablename__ = "orm_docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]
        tenant_id: Mapped[uuid.UUID] = mapped_column(server_default=sa.text("sutra.current_tenant()"))
        embedding = mapped_column(VECTOR(3))
        __table_args__ = (sa.Index("orm_docs_embedding", "tenant_id", "embedding", postgresql_using="sutra_hnsw"),)

    event.listen(Doc.__table__, "after_create", sa.DDL("SELECT sutra.enable_tenancy('orm_docs')"))
    options = {"options": "-c search_path=public,sutra"}
    admin_url = sa.engine.URL.create("postgresql+psycopg", username="postgres", host=os.environ["SUTRA_TEST_HOST"],
                                     port=int(os.environ["SUTRA_TEST_PORT"]), database="sutra_client")
    admin = sa.create_engine(admin_url, connect_args=options)
    try:
        VBase.metadata.create_all(admin)
        with admin.begin() as c:
            c.execute(sa.text(f"GRANT SELECT, INSERT ON orm_docs TO {role}"))
            c.execute(sa.text(f"GRANT USAGE ON SEQUENCE orm_docs_id_seq TO {role}"))
            c.execute(sa.text("INSERT INTO orm_docs (body, tenant_id, embedding) VALUES ('hidden', :b, '[0.5,0.5,0.5]')"),
                      {"b": b})
            indexes = dict(c.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'orm_docs'")).all())
        assert "USING sutra_hnsw (tenant_id, embedding)" in indexes["orm_docs_embedding"]
        assert any("USING btree (tenant_id" in d for d in indexes.values()), indexes
        url = sa.engine.URL.create("postgresql+psycopg", username=role, host=os.environ["SUTRA_TEST_HOST"],
                                   port=int(os.environ["SUTRA_TEST_PORT"]), database="sutra_client")
        engine = sa.create_engine(url, pool_size=1, max_overflow=0, connect_args=options)
        try:
            with tenant_session(engine, key_a) as s:
                s.add_all([Doc(body=f"a{i}", embedding=[-1, -1, i]) for i in range(3)])
                s.commit()
            with tenant_session(engine, key_a) as s:
                found = s.scalars(sa.select(Doc).order_by(Doc.embedding.l2_distance([0.5, 0.5, 0.5])).limit(5)).all()
                assert sorted(d.body for d in found) == ["a0", "a1", "a2"]
                assert {d.tenant_id for d in found} == {a}
        finally:
            engine.dispose()
    finally:
        VBase.metadata.drop_all(admin)
        admin.dispose()
