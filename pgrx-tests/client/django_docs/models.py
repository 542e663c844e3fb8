"""The test project's one model: tenant documents with embeddings, searched through a sutra_hnsw
index led by the tenant column."""

from django.db import models
from django.db.models import Func
from pgvector.django import VectorField

from sutra_client.django import SutraHnswIndex


class Doc(models.Model):
    # The tenant column is filled by the database from the request's tenant context.
    tenant_id = models.UUIDField(db_default=Func(function="sutra.current_tenant", output_field=models.UUIDField()),
                                 editable=False)
    body = models.TextField()
    embedding = VectorField(dimensions=3)

    class Meta:
        app_label = "django_docs"
        db_table = "django_docs"
        indexes = [SutraHnswIndex(fields=["tenant_id", "embedding"], name="django_docs_embedding", m=8,
                                  ef_construction=32)]
