-- COPY FROM into a tenant table: allowed for a tenant session with the write scope, rows stamped
-- with the tenant and checked like INSERTs; anything else as stock PostgreSQL does.
\set VERBOSITY terse
SELECT sutra.create_tenant('copy-a', plan => 'enterprise', id => '0000000a-0000-0000-0000-000000000000') IS NOT NULL AS a,
       sutra.create_tenant('copy-b', plan => 'enterprise', id => '0000000b-0000-0000-0000-000000000000') IS NOT NULL AS b;
CREATE ROLE regress_copier NOLOGIN;
CREATE ROLE regress_copy_service NOLOGIN IN ROLE sutra_service;
CREATE TABLE items (id int, body text, n int DEFAULT 7);
SELECT sutra.enable_tenancy('items');
GRANT SELECT, INSERT ON items TO regress_copier, regress_copy_service;
INSERT INTO items (id, body, tenant_id) VALUES (100, 'b hidden', '0000000b-0000-0000-0000-000000000000');

-- Stock PostgreSQL still refuses a table with row level security that is not a tenant table.
CREATE TABLE plain_rls (id int);
ALTER TABLE plain_rls ENABLE ROW LEVEL SECURITY;
ALTER TABLE plain_rls FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON plain_rls USING (true);
GRANT INSERT ON plain_rls TO regress_copier;
SET ROLE regress_copier;
COPY plain_rls FROM STDIN;
1
\.
-- No tenant context
COPY items (id, body) FROM STDIN;
1	orphan
\.
RESET ROLE;

SET ROLE regress_copy_service;
SELECT sutra.set_tenant('copy-a', scopes => '{read}', session => true) IS NOT NULL AS read_only;
COPY items (id, body) FROM STDIN;
1	no write scope
\.
SELECT sutra.set_tenant('copy-a', session => true) IS NOT NULL AS writer;
COPY items (id, body) FROM STDIN;
1	one
2	two
\.
COPY items (id, body) FROM STDIN (FORMAT csv, HEADER true) WHERE id > 10;
id,body
3,filtered out
11,eleven
\.
-- The tenant column given explicitly: its own id passes, another tenant's fails the whole COPY.
COPY items (id, body, tenant_id) FROM STDIN;
12	explicit	0000000a-0000-0000-0000-000000000000
\.
COPY items (id, body, tenant_id) FROM STDIN;
13	before the planted row	0000000a-0000-0000-0000-000000000000
14	planted	0000000b-0000-0000-0000-000000000000
\.
COPY items (id, body, tenant_id) FROM STDIN;
15	null tenant	\N
\.
-- Server files need their usual role.
COPY items FROM '/etc/hostname';
SELECT id, body, n, tenant_id FROM items ORDER BY id;
RESET ROLE;
SELECT id, body, tenant_id FROM items ORDER BY id;

-- Superusers bypass row level security: COPY behaves as stock.
COPY items (id, body, tenant_id) FROM STDIN;
20	restored by a superuser	0000000b-0000-0000-0000-000000000000
\.
SELECT count(*) AS b_rows FROM items WHERE tenant_id = '0000000b-0000-0000-0000-000000000000';

DROP TABLE items, plain_rls;
SELECT sutra.drop_tenant('copy-a', purge => true) IS NOT NULL AS cleanup,
       sutra.drop_tenant('copy-b', purge => true) IS NOT NULL AS cleanup;
DROP ROLE regress_copier;
DROP ROLE regress_copy_service;
