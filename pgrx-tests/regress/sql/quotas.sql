-- Quotas on tenant tables: counted per row, enforced per statement, right across rollbacks,
-- savepoints, COPY, TRUNCATE and purges.
\set VERBOSITY terse
SELECT sutra.create_tenant('quota-a', plan => 'enterprise', id => 'aa000000-0000-0000-0000-000000000000',
    quota_overrides => '{"rows_total": 10, "rows_per_table": 8, "vectors": 3, "soft_threshold": 0.5}') IS NOT NULL AS a,
       sutra.create_tenant('quota-b', plan => 'enterprise', id => 'bb000000-0000-0000-0000-000000000000') IS NOT NULL AS b;
CREATE TABLE notes (id int, body text);
CREATE TABLE embeddings (id int, v sutra.vector(2));
SELECT sutra.enable_tenancy('notes'), sutra.enable_tenancy('embeddings');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'notes'::regclass AND NOT tgisinternal ORDER BY 1;
CREATE ROLE regress_quota NOLOGIN IN ROLE sutra_service;
GRANT ALL ON notes, embeddings TO regress_quota;
SET ROLE regress_quota;
SELECT sutra.set_tenant('quota-a', session => true) IS NOT NULL AS a;

-- The soft threshold warns once, on the way up, and is audited.
INSERT INTO notes SELECT i, 'n' || i FROM generate_series(1, 4) i;
INSERT INTO notes VALUES (5, 'crosses half of 8 rows per table and of 10 in total');
INSERT INTO notes VALUES (6, 'no second warning');
SELECT limit_name, used, limit_value FROM sutra.quota_usage('quota-a') WHERE limit_name IN ('rows_total', 'vectors');

-- Over a hard limit the statement fails, with nothing of it kept.
SELECT try($$INSERT INTO notes SELECT i, 'x' FROM generate_series(7, 9) i$$);
SELECT count(*) AS notes FROM notes;
-- Rolled back rows and savepoints give their rows back.
BEGIN;
INSERT INTO notes VALUES (7, 'kept'), (8, 'kept');
SAVEPOINT s;
SELECT try($$INSERT INTO notes VALUES (9, 'over the per-table limit')$$);
ROLLBACK TO SAVEPOINT s;
DELETE FROM notes WHERE id = 1;
INSERT INTO notes VALUES (9, 'fits after a delete');
ROLLBACK;
SELECT limit_name, used FROM sutra.quota_usage('quota-a') WHERE limit_name = 'rows_total';
-- Vectors: only non-null ones count.
INSERT INTO embeddings VALUES (1, '[1,2]'), (2, NULL), (3, '[3,4]');
SELECT try($$INSERT INTO embeddings VALUES (4, '[5,6]'), (5, '[7,8]')$$);
UPDATE embeddings SET v = '[0,0]' WHERE id = 2;
SELECT try($$UPDATE embeddings SET v = '[0,1]' WHERE id = 3$$);
SELECT limit_name, used, limit_value FROM sutra.quota_usage('quota-a') WHERE limit_name IN ('rows_total', 'vectors');
-- COPY is counted like INSERT.
SELECT try($$SELECT 1$$);
COPY notes (id, body) FROM STDIN;
10	copied
\.
COPY notes (id, body) FROM STDIN;
11	over the total
\.
SELECT limit_name, used FROM sutra.quota_usage('quota-a') WHERE limit_name = 'rows_total';
SELECT sutra.clear_tenant();
RESET ROLE;

-- TRUNCATE takes every tenant's rows of the table out of the counts.
INSERT INTO notes VALUES (100, 'a row of b', 'bb000000-0000-0000-0000-000000000000');
TRUNCATE notes;
SELECT limit_name, used FROM sutra.quota_usage('quota-a') WHERE limit_name IN ('rows_total', 'rows_per_table:public.notes');
SELECT limit_name, used FROM sutra.quota_usage('quota-b') WHERE limit_name = 'rows_total';
BEGIN;
INSERT INTO embeddings VALUES (9, NULL, 'bb000000-0000-0000-0000-000000000000');
TRUNCATE embeddings;
ROLLBACK;
SELECT limit_name, used FROM sutra.quota_usage('quota-a') WHERE limit_name IN ('rows_total', 'vectors');

-- reconcile_usage recounts from the tables (here after counts were lost to a plain DELETE with
-- the triggers disabled, as a bulk repair might do).
ALTER TABLE embeddings DISABLE TRIGGER sutra_quota_row;
DELETE FROM embeddings WHERE id = 1;
ALTER TABLE embeddings ENABLE TRIGGER sutra_quota_row;
SELECT limit_name, used FROM sutra.quota_usage('quota-a') WHERE limit_name = 'rows_total';
SELECT table_name, rows, vectors FROM sutra.reconcile_usage('quota-a');
SELECT limit_name, used FROM sutra.quota_usage('quota-a') WHERE limit_name IN ('rows_total', 'vectors');

-- Purging a tenant removes its rows and its counts.
SELECT sutra.drop_tenant('quota-a', purge => true) IS NOT NULL AS purged;
SELECT action, details ->> 'limit' AS lim, details ->> 'value' AS value FROM sutra.audit_log
WHERE action = 'quota.soft_limit' AND tenant_id = 'aa000000-0000-0000-0000-000000000000' ORDER BY id;

DROP TABLE notes, embeddings;
SELECT sutra.drop_tenant('quota-b', purge => true) IS NOT NULL AS cleanup;
DROP ROLE regress_quota;
