-- Tiny partitions share pages: a tenant's search still never returns, counts or scores another
-- tenant's elements, even when its neighbours on the same page are nearer to the query; a
-- partition that grows continues on pages of its own; VACUUM, REINDEX and hnsw_check cover
-- shared pages.
\set VERBOSITY terse
SET search_path = public, sutra;
CREATE TABLE hs (id int PRIMARY KEY, tenant int, embedding vector(4));
-- 300 tenants of 3 rows, inserted one row at a time (the insert path fills shared pages). Tenant
-- t's rows are near [t, 0, 0, 0]; tenant 0 owns a row at exactly [100, 0, 0, 0], the query below.
CREATE INDEX hs_idx ON hs USING sutra_hnsw (tenant, embedding);
INSERT INTO hs SELECT t * 3 + k, t, format('[%s,%s,0,0]', t, k)::vector
FROM generate_series(0, 299) t, generate_series(0, 2) k ORDER BY t, k;
UPDATE hs SET embedding = '[100,0,0,0]' WHERE id = 0;
-- (An element of a higher graph level is larger than the room kept for it, so now and then a
-- tenant's last row starts a page of its own.)
SELECT count(*) AS partitions, sum(elements) AS elements, count(*) FILTER (WHERE pages > 1) <= 5 AS few_own_pages
FROM hnsw_stats('hs_idx');
SELECT pg_relation_size('hs_idx') / current_setting('block_size')::int < 300 / 5 AS fewer_pages_than_tenants;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hs_idx');
SET enable_seqscan = off;
-- Tenant 101's page neighbours (tenants 99 to 104 and others) are nearer to [100,0,0,0] than its
-- own rows: none of them comes back, and tenant 0's exact match neither.
EXPLAIN (COSTS OFF) SELECT id FROM hs WHERE tenant = 101 ORDER BY embedding <-> '[100,0,0,0]' LIMIT 10;
SELECT id, tenant FROM hs WHERE tenant = 101 ORDER BY embedding <-> '[100,0,0,0]' LIMIT 10;
SELECT count(*) FROM (SELECT id FROM hs WHERE tenant = 101 ORDER BY embedding <-> '[100,0,0,0]') s;
SELECT id, tenant FROM hs WHERE tenant = 0 ORDER BY embedding <-> '[100,0,0,0]' LIMIT 1;
-- Every tenant's search returns exactly its own rows, nearest first, as a sort does.
CREATE TEMP TABLE via_index AS
SELECT t, (SELECT array_agg(id) FROM (SELECT id FROM hs WHERE tenant = t ORDER BY embedding <-> '[50,1,0,0]', id LIMIT 5) s) AS ids
FROM generate_series(0, 299) t;
RESET enable_seqscan;
SET enable_indexscan = off;
SELECT count(*) AS tenants_agreeing FROM via_index v
WHERE v.ids = (SELECT array_agg(id) FROM (SELECT id FROM hs WHERE tenant = v.t ORDER BY embedding <-> '[50,1,0,0]', id LIMIT 5) s);
RESET enable_indexscan;
-- A tenant that grows past half a page continues on pages of its own; its search stays exact.
INSERT INTO hs SELECT 10000 + k, 7, format('[7,%s,1,0]', k)::vector FROM generate_series(1, 200) k;
SELECT elements, pages > 1 AS own_pages FROM hnsw_stats('hs_idx') WHERE partition = '7';
SET enable_seqscan = off;
SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM hs WHERE tenant = 7 ORDER BY embedding <-> '[7,150,1,0]' LIMIT 3) s;
RESET enable_seqscan;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hs_idx');
-- VACUUM removes elements from shared pages; the neighbours on the page are untouched.
DELETE FROM hs WHERE tenant BETWEEN 100 AND 199 AND id % 3 = 1;
VACUUM hs;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hs_idx');
SET enable_seqscan = off;
SELECT id FROM hs WHERE tenant = 150 ORDER BY embedding <-> '[150,0,0,0]' LIMIT 5;
SELECT id FROM hs WHERE tenant = 99 ORDER BY embedding <-> '[99,0,0,0]' LIMIT 5;
RESET enable_seqscan;
-- New rows after VACUUM, and REINDEX (the build packs tiny partitions onto shared pages).
INSERT INTO hs SELECT 20000 + t, t, format('[%s,9,0,0]', t)::vector FROM generate_series(100, 110) t;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hs_idx');
REINDEX INDEX hs_idx;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hs_idx');
SELECT pg_relation_size('hs_idx') / current_setting('block_size')::int < 300 / 5 AS fewer_pages_than_tenants;
SET enable_seqscan = off;
SELECT id, tenant FROM hs WHERE tenant = 101 ORDER BY embedding <-> '[100,0,0,0]' LIMIT 10;
RESET enable_seqscan;
DROP TABLE hs;
