-- A short tour of sutra. Everything lives in schema sutra.
CREATE EXTENSION sutra;
SET search_path TO public, sutra;

-- A table of documents with 3-dimensional embeddings.
CREATE TABLE docs (id int PRIMARY KEY, title text, embedding vector(3));
INSERT INTO docs VALUES
    (1, 'apples',  '[1, 0.9, 0]'),
    (2, 'pears',   '[0.9, 1, 0.1]'),
    (3, 'engines', '[0, 0.1, 1]'),
    (4, 'gears',   ARRAY[0.1, 0, 0.95]);

-- Nearest neighbours of a query vector, by cosine distance and by Euclidean distance.
SELECT id, title, round((embedding <=> '[1,1,0]')::numeric, 4) AS cosine_distance
  FROM docs ORDER BY embedding <=> '[1,1,0]' LIMIT 2;
SELECT id, title, round((embedding <-> '[0,0,1]')::numeric, 4) AS l2_distance
  FROM docs ORDER BY embedding <-> '[0,0,1]' LIMIT 2;

-- Arithmetic, aggregates and casts.
SELECT '[1,2,3]'::vector + '[10,20,30]' AS sum, vector_norm('[3,4]') AS norm;
SELECT avg(embedding) AS centroid FROM docs;
SELECT embedding::real[] AS as_array FROM docs WHERE id = 1;

-- Bad input is refused with a clear error (and the session goes on).
\set ON_ERROR_STOP 0
INSERT INTO docs VALUES (5, 'broken', '[1, NaN, 2]');
INSERT INTO docs VALUES (5, 'short', '[1, 2]');
\set ON_ERROR_STOP 1
SELECT count(*) AS docs FROM docs;

-- Tenants. Each tenant sees and changes only its own rows, enforced by the database.
SELECT sutra.create_tenant('acme', 'Acme Inc', plan => 'pro') IS NOT NULL AS acme_created;
SELECT sutra.create_tenant('globex', 'Globex') IS NOT NULL AS globex_created;
CREATE TABLE notes (id bigserial PRIMARY KEY, body text, embedding vector(3));
-- Adds tenant_id (defaulting to the session's tenant), forces row level security with
-- per-command policies, and indexes tenant_id.
SELECT sutra.enable_tenancy('notes');
-- Vector search per tenant: one HNSW graph per tenant in one index.
CREATE INDEX notes_embedding ON notes USING sutra_hnsw (tenant_id, embedding vector_cosine_ops);
-- The role the application connects as: an ordinary role, no special rights.
CREATE ROLE demo_app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO demo_app;
GRANT USAGE ON SEQUENCE notes_id_seq TO demo_app;
-- API keys are shown once; only an HMAC of the secret is stored.
SELECT sutra.create_api_key('acme', 'backend', '{read,write}') AS acme_key \gset
SELECT sutra.create_api_key('globex', 'backend') AS globex_key \gset
SELECT key_id, name, scopes, status FROM sutra.api_keys ORDER BY name, key_id;

SET ROLE demo_app;
SELECT sutra.authenticate(:'acme_key', session => true) IS NOT NULL AS authenticated, sutra.current_scopes();
INSERT INTO notes (body, embedding) VALUES ('acme: Q3 roadmap', '[1,0,0]'), ('acme: hiring plan', '[0,1,0]');
SELECT sutra.authenticate(:'globex_key', session => true) IS NOT NULL AS now_globex;
INSERT INTO notes (body, embedding) VALUES ('globex: launch date', '[0.5,0.5,0.1]');
SELECT body FROM notes ORDER BY id;                -- globex's row only
-- The nearest note to [1,0,0] is acme's roadmap; globex's search reads only globex's graph.
SET enable_seqscan = off;                          -- a three-row table: show the index anyway
EXPLAIN (COSTS OFF) SELECT body FROM notes ORDER BY embedding <=> '[1,0,0]' LIMIT 1;
SELECT body FROM notes ORDER BY embedding <=> '[1,0,0]' LIMIT 1;
RESET enable_seqscan;
-- Per transaction (the default), as behind a transaction-pooling PgBouncer:
BEGIN;
SELECT sutra.authenticate(:'acme_key') IS NOT NULL AS acme_for_this_transaction;
SELECT body FROM notes ORDER BY id;                -- acme's rows only
SELECT body FROM notes ORDER BY embedding <=> '[1,0,0]' LIMIT 1;
COMMIT;
\set ON_ERROR_STOP 0
SELECT body FROM notes;                            -- back to globex (the session's context)
SET sutra.tenant_id = 'v1.forged';                 -- refused: only sutra issues contexts
SELECT sutra.clear_tenant();
SELECT count(*) FROM notes;                        -- refused: no tenant context
UPDATE notes SET body = 'x';                       -- refused as well
\set ON_ERROR_STOP 1
RESET ROLE;
-- As the superuser: every tenant's rows, and the audit trail.
SELECT t.slug, count(*) AS notes FROM notes n JOIN sutra.tenants t ON t.id = n.tenant_id GROUP BY 1 ORDER BY 1;
SELECT action, count(*) FROM sutra.audit_log GROUP BY 1 ORDER BY 1;
SELECT * FROM sutra.check_tenancy('notes');
SELECT partition IS NOT NULL AS tenant_partition, elements, kind FROM sutra.hnsw_stats('notes_embedding');
-- Members: users of a tenant with a role; a member's token (authenticate_jwt, sub = user id)
-- gets at most the role's scopes.
SELECT sutra.add_member('alice@acme.example', 'owner', tenant => 'acme');
SELECT sutra.add_member('bob@acme.example', 'viewer', tenant => 'acme');
SELECT user_id, role, scopes FROM sutra.members('acme');
-- Feature flags: the plan's default, and one tenant's own value.
UPDATE sutra.plans SET features = '{"beta_search": false}' WHERE name IN ('free', 'pro');
SELECT sutra.set_feature('beta_search', true, tenant => 'acme');
SELECT s.slug, e.effective_value AS beta_search
FROM (VALUES ('acme'), ('globex')) s(slug), sutra.effective_settings(s.slug) e WHERE e.key = 'beta_search';
