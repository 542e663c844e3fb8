-- Tenancy: lifecycle, keys, the tenant context, tenant tables, audit. Identifiers that are
-- random (uuids, keys) are compared, never printed.
\set VERBOSITY terse
CREATE FUNCTION masked(q text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(try(q), '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\m[0-9a-f]{16}\M', '<id>', 'g')
$$;
CREATE ROLE regress_app NOLOGIN;
CREATE ROLE regress_service NOLOGIN IN ROLE sutra_service;

-- Lifecycle: creation and its errors
SELECT sutra.create_tenant('acme', 'Acme Inc', plan => 'pro') IS NOT NULL AS created;
SELECT sutra.create_tenant('globex') IS NOT NULL AS created;
SELECT try($$SELECT sutra.create_tenant('Bad Slug')$$);
SELECT try($$SELECT sutra.create_tenant('a')$$);
SELECT try($$SELECT sutra.create_tenant('acme')$$);
SELECT try($$SELECT sutra.create_tenant('initech', plan => 'platinum')$$);
SELECT try($$SELECT sutra.suspend_tenant('nobody')$$);
SELECT slug, name, plan, status FROM sutra.tenants ORDER BY slug;
SELECT sutra.update_tenant('globex', name => 'Globex Corp', plan => 'pro') = sutra.tenant_id('globex') AS updated;
SELECT sutra.tenant_id('acme') = (SELECT id FROM sutra.tenants WHERE slug = 'acme') AS by_slug,
       sutra.tenant_id(sutra.tenant_id('acme')) = sutra.tenant_id('acme') AS by_uuid;
SELECT try($$SELECT sutra.drop_tenant('default')$$);

-- Only superusers and sutra_service manage tenants
SET ROLE regress_app;
SELECT try($$SELECT sutra.create_tenant('sneaky')$$);
SELECT try($$SELECT sutra.set_tenant('acme', session => true)$$);
SELECT try($$SELECT count(*) FROM sutra.tenants$$);
RESET ROLE;
SET ROLE regress_service;
SELECT sutra.create_tenant('hooli') IS NOT NULL AS service_created;
SELECT count(*) AS service_sees_all FROM sutra.tenants;
RESET ROLE;

-- A tenant table, with a row of every tenant
CREATE TABLE docs (id bigserial PRIMARY KEY, body text);
INSERT INTO docs (body) VALUES ('existing row');
SELECT sutra.enable_tenancy('docs');
GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO regress_app;
GRANT USAGE ON SEQUENCE docs_id_seq TO regress_app;
SELECT table_name, tenant_column FROM sutra.tenant_tables;
SELECT count(*) AS backfilled FROM docs WHERE tenant_id = '00000000-0000-0000-0000-000000000000';
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'docs'::regclass;
SELECT polname, polcmd FROM pg_policy WHERE polrelid = 'docs'::regclass ORDER BY polname;
SELECT indexrelid::regclass FROM pg_index WHERE indrelid = 'docs'::regclass AND indkey[0] = 3;
INSERT INTO docs (tenant_id, body) VALUES
    (sutra.tenant_id('acme'), 'acme secret'), (sutra.tenant_id('globex'), 'globex secret');

-- Without a context: clear errors, no rows
SET ROLE regress_app;
SELECT try($$SELECT count(*) FROM docs$$);
SELECT try($$INSERT INTO docs (body) VALUES ('orphan')$$);
SELECT try($$DELETE FROM docs$$);
SELECT sutra.current_scopes() AS no_scopes;

-- The context cannot be forged
SELECT try($$SET sutra.tenant_id = 'v1.00000000-0000-0000-0000-000000000000.rwa.99999999999.AAAA'$$);
SELECT try($$SELECT set_config('sutra.tenant_id', 'anything', false)$$);
SELECT try($$SET LOCAL sutra.tenant_id = 'x'$$);
SELECT try($$SET sutra.context_secret = 'abc'$$);
SELECT try($$SHOW sutra.context_secret$$);
SELECT try($$SHOW sutra.jwt_secret$$);
RESET ROLE;

-- API keys
SELECT sutra.create_api_key('acme', 'ci', '{read,write}') AS acme_key \gset
SELECT sutra.create_api_key('globex', 'ci', '{read}') AS globex_key \gset
SELECT sutra.create_api_key('acme', 'admin', '{read,write,admin}') AS acme_admin_key \gset
SELECT :'acme_key' ~ '^sk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$' AS key_format;
SELECT try($$SELECT sutra.create_api_key('acme', 'bad', '{read,root}')$$);
SELECT try($$SELECT sutra.create_api_key('acme', 'old', expires_at => now() - interval '1 day')$$);
SELECT count(*) AS keys, count(DISTINCT secret_hash) AS hashes,
       bool_and(octet_length(secret_hash) = 32) AS hmac_sha256 FROM sutra.api_key_store;
SELECT bool_and(position(encode(secret_hash, 'hex') IN :'acme_key') = 0) AS secret_not_stored
FROM sutra.api_key_store;

-- Authenticated as acme: only acme's rows
SET ROLE regress_app;
SELECT sutra.authenticate(:'acme_key', session => true) = sutra.current_tenant() AS authenticated;
SELECT sutra.current_scopes();
SELECT body FROM docs ORDER BY id;
INSERT INTO docs (body) VALUES ('acme second') RETURNING body, tenant_id = sutra.current_tenant() AS stamped;
SELECT try($$INSERT INTO docs (tenant_id, body) VALUES ('00000000-0000-0000-0000-000000000000', 'planted')$$);
SELECT try($$UPDATE docs SET tenant_id = '00000000-0000-0000-0000-000000000000' WHERE body = 'acme secret'$$);
UPDATE docs SET body = body WHERE body LIKE 'globex%';
DELETE FROM docs WHERE body LIKE 'globex%';
SELECT try($$SELECT count(*) FROM sutra.api_keys$$);
SELECT try($$SELECT sutra.create_api_key('acme', 'self-service')$$);
SELECT count(*) AS own_tenant_row FROM sutra.tenants;

-- globex's read-only key: reads its rows, cannot write
SELECT sutra.authenticate(:'globex_key', session => true) IS NOT NULL AS switched;
SELECT body FROM docs ORDER BY id;
SELECT try($$INSERT INTO docs (body) VALUES ('no write scope')$$);

-- admin scope: own keys and audit rows only
SELECT sutra.authenticate(:'acme_admin_key', session => true) IS NOT NULL AS admin;
SELECT name, scopes, status FROM sutra.api_keys ORDER BY name;
SELECT count(*) > 0 AS sees_own_audit, bool_and(tenant_id = sutra.current_tenant()) AS only_own
FROM sutra.audit_log;
SELECT try($$SELECT secret_hash FROM sutra.api_key_store$$);
SELECT try($$DELETE FROM sutra.audit_log$$);
SELECT try($$SELECT count(*) FROM sutra.secrets$$);
SELECT sutra.create_api_key('acme', 'self-service', '{read}') IS NOT NULL AS admin_created_key;
SELECT try($$SELECT sutra.create_api_key('globex', 'cross')$$);

-- Local contexts end with the transaction
SELECT sutra.clear_tenant();
BEGIN;
SELECT sutra.authenticate(:'acme_key', local => true) IS NOT NULL AS local_auth;
SELECT count(*) AS acme_rows FROM docs;
COMMIT;
SELECT try($$SELECT count(*) FROM docs$$);
BEGIN;
SELECT sutra.authenticate(:'acme_key', session => true) IS NOT NULL AS session_auth_rolled_back;
ROLLBACK;
SELECT try($$SELECT count(*) FROM docs$$);

-- RESET and DISCARD drop to no tenant
SELECT sutra.authenticate(:'acme_key', session => true) IS NOT NULL AS auth;
RESET sutra.tenant_id;
SELECT try($$SELECT count(*) FROM docs$$);
SELECT sutra.authenticate(:'acme_key', session => true) IS NOT NULL AS auth;
RESET ALL;
SELECT try($$SELECT count(*) FROM docs$$);

-- Bad keys
SELECT try($$SELECT sutra.authenticate('sk_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', session => true)$$);
SELECT try(format('SELECT sutra.authenticate(%L, session => true)', left(:'acme_key', -1) ||
    CASE WHEN right(:'acme_key', 1) = 'A' THEN 'B' ELSE 'A' END));
SELECT try($$SELECT sutra.authenticate('not a key', session => true)$$);
RESET ROLE;

-- Revocation, rotation
SELECT sutra.revoke_api_key(sutra._key_id_of(:'globex_key'));
SELECT masked(format('SELECT sutra.authenticate(%L, session => true)', :'globex_key'));
SELECT sutra.rotate_api_key(sutra._key_id_of(:'acme_key')) AS acme_key2 \gset
SELECT masked(format('SELECT sutra.authenticate(%L, session => true)', :'acme_key'));
SELECT sutra.authenticate(:'acme_key2', session => true) = sutra.tenant_id('acme') AS rotated_key_works;
SELECT sutra.clear_tenant();

-- Suspension ends access at once, also for a context issued before
SET ROLE regress_app;
SELECT sutra.authenticate(:'acme_key2', session => true) IS NOT NULL AS auth;
RESET ROLE;
SELECT sutra.suspend_tenant('acme') IS NOT NULL AS suspended;
SET ROLE regress_app;
SELECT masked($$SELECT count(*) FROM docs$$);
SELECT masked(format('SELECT sutra.authenticate(%L, session => true)', :'acme_key2'));
RESET ROLE;
SELECT sutra.resume_tenant('acme') IS NOT NULL AS resumed;
SET ROLE regress_app;
SELECT sutra.authenticate(:'acme_key2', session => true) IS NOT NULL AS auth_again;
SELECT count(*) AS acme_rows FROM docs;
RESET ROLE;

-- set_tenant for the service role
SET ROLE regress_service;
SELECT sutra.set_tenant('globex', session => true) = sutra.tenant_id('globex') AS service_context;
SELECT sutra.current_scopes();
SELECT sutra.set_tenant(sutra.tenant_id('acme'), scopes => '{read}', session => true) = sutra.tenant_id('acme') AS by_uuid;
SELECT try($$SELECT sutra.set_tenant('acme', scopes => '{}', session => true)$$);
SELECT sutra.clear_tenant();
RESET ROLE;

-- Lints
CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE, owner_id int REFERENCES accounts);
SELECT sutra.enable_tenancy('accounts');
CREATE VIEW accounts_view AS SELECT * FROM accounts;
CREATE FUNCTION accounts_count() RETURNS bigint SECURITY DEFINER LANGUAGE sql AS 'SELECT count(*) FROM accounts';
SELECT * FROM sutra.check_tenancy('accounts') ORDER BY 2;
SELECT * FROM sutra.check_tenancy('docs') ORDER BY 2;
SELECT try($$SELECT sutra.enable_tenancy('sutra.tenants')$$);
DROP VIEW accounts_view;
DROP FUNCTION accounts_count();
SELECT sutra.disable_tenancy('accounts');
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'accounts'::regclass;
DROP TABLE accounts;

-- Soft delete denies access; purge removes the rows
SELECT sutra.tenant_checksum('globex') = sutra.tenant_checksum('globex') AS checksum_stable,
       sutra.tenant_checksum('globex') <> sutra.tenant_checksum('acme') AS checksum_differs;
SELECT sutra.drop_tenant('globex') IS NOT NULL AS dropped;
SELECT status, deleted_at IS NOT NULL AS has_deleted_at, purge_after - deleted_at AS retention
FROM sutra.tenants WHERE slug = 'globex';
SELECT masked($$SELECT sutra.set_tenant('globex', session => true)$$);
SELECT count(*) AS globex_rows_kept FROM docs WHERE tenant_id = sutra.tenant_id('globex');
SELECT sutra.drop_tenant('globex', purge => true) IS NOT NULL AS purged;
SELECT count(*) AS rows_left FROM docs WHERE body LIKE 'globex%';
SELECT count(*) AS tenant_left FROM sutra.tenants WHERE slug = 'globex';

-- The audit trail. Failed authentications reach it through a background worker, within about a
-- second.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT count(*) FROM sutra.audit_log WHERE action = 'auth.failure') >= 6;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT action, count(*) FROM sutra.audit_log GROUP BY action ORDER BY action;
SELECT details ->> 'reason' AS reason, details ? 'key_id' AS has_key_id,
       tenant_id IS NOT NULL AS key_tenant_known, actor
FROM sutra.audit_log WHERE action = 'auth.failure' ORDER BY at, id;

DROP TABLE docs;
SELECT count(*) AS registrations_left FROM sutra.tenant_tables;
SELECT sutra.drop_tenant('acme', purge => true) IS NOT NULL AS cleanup;
SELECT sutra.drop_tenant('hooli', purge => true) IS NOT NULL AS cleanup;
SELECT sutra.reset_auth_failures() > 0 AS had_failures;
DROP ROLE regress_app;
DROP ROLE regress_service;

-- A sutra_hnsw index led by the tenant column (as an ORM's create_all makes it) does not stand in
-- for the tenant btree: enable_tenancy still adds one, and check_tenancy warns when it is missing.
CREATE TABLE embedded (id int PRIMARY KEY, tenant_id uuid NOT NULL, e sutra.vector(2));
CREATE INDEX embedded_hnsw ON embedded USING sutra_hnsw (tenant_id, e);
SELECT sutra.enable_tenancy('embedded');
SELECT c.relname, a.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
WHERE i.indrelid = 'embedded'::regclass ORDER BY 1;
DROP INDEX embedded_tenant_id_sutra_idx;
SELECT * FROM sutra.check_tenancy('embedded') ORDER BY 2, 3;
DROP TABLE embedded;

-- sutra_service manages prices.
CREATE ROLE regress_pricer NOLOGIN IN ROLE sutra_service;
SET ROLE regress_pricer;
INSERT INTO sutra.prices (metric, unit_price) VALUES ('regress_metric', 0.5);
UPDATE sutra.prices SET unit_price = 0.25 WHERE metric = 'regress_metric';
DELETE FROM sutra.prices WHERE metric = 'regress_metric';
RESET ROLE;
DROP ROLE regress_pricer;
