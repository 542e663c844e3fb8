import pgvector.django
from django.db import migrations, models
from django.db.models import Func

import sutra_client.django


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Doc",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("tenant_id", models.UUIDField(db_default=Func(function="sutra.current_tenant",
                                                               output_field=models.UUIDField()), editable=False)),
                ("body", models.TextField()),
                ("embedding", pgvector.django.VectorField(dimensions=3)),
            ],
            options={"db_table": "django_docs"},
        ),
        migrations.AddIndex(
            model_name="doc",
            index=sutra_client.django.SutraHnswIndex(fields=["tenant_id", "embedding"], name="django_docs_embedding",
                                                     m=8, ef_construction=32),
        ),
        # The table becomes a tenant table: the tenant column defaults to the context's tenant,
        # row level security is forced, and a btree leads with the tenant column.
        migrations.RunSQL("SELECT sutra.enable_tenancy('django_docs')", "SELECT sutra.disable_tenancy('django_docs')"),
    ]
