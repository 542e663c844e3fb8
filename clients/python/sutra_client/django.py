"""sutra for Django.

- `SutraHnswIndex`: a `sutra_hnsw` index in a model's Meta.indexes, optionally led by the tenant
  column (pgvector's `HnswIndex` emits `USING hnsw`, pgvector's access method).
- `TenantMiddleware`: runs each request in a transaction that starts with
  `sutra.authenticate(<API key>)`, so the tenant context holds for exactly that request, on
  whichever pooled connection serves it.
"""

from typing import Any

from django.contrib.postgres.indexes import PostgresIndex
from django.db import connection, transaction


class SutraHnswIndex(PostgresIndex):
    """`CREATE INDEX ... USING sutra_hnsw (fields...) WITH (m, ef_construction)`: list the tenant
    column first to partition the graph by tenant."""

    suffix = "sutra_hnsw"

    def __init__(self, *expressions: Any, m: int | None = None, ef_construction: int | None = None,
                 **kwargs: Any) -> None:
        self.m = m
        self.ef_construction = ef_construction
        super().__init__(*expressions, **kwargs)

    def deconstruct(self) -> tuple[Any, Any, Any]:
        path, args, kwargs = super().deconstruct()
        if self.m is not None:
            kwargs["m"] = self.m
        if self.ef_construction is not None:
            kwargs["ef_construction"] = self.ef_construction
        return path, args, kwargs

    def get_with_params(self) -> list[str]:
        params = []
        if self.m is not None:
            params.append("m = %d" % self.m)
        if self.ef_construction is not None:
            params.append("ef_construction = %d" % self.ef_construction)
        return params


class TenantMiddleware:
    """Authenticates each request with the API key in its `Authorization: Bearer sk_...` header,
    in a transaction around the whole request (the per-transaction context ends with it)."""

    header = "HTTP_AUTHORIZATION"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        value = request.META.get(self.header, "")
        if not value.startswith("Bearer "):
            return self.get_response(request)
        with transaction.atomic():
            with connection.cursor() as c:
                c.execute("SELECT sutra.authenticate(%s)", [value[len("Bearer "):]])
            return self.get_response(request)
