-- sutra_hnsw: options, operator classes, partitioned scans, filters, NULLs, VACUUM and the
-- structure check. Graph levels are random, so approximate results are checked as properties
-- (counts, recall against exact search) instead of printed; partitions of at most 1,000
-- elements are scanned exactly and their rows are printed.
\set VERBOSITY terse
SET search_path = public, sutra;

-- Options and shapes
CREATE TABLE hv (id int PRIMARY KEY, tenant int, label text, embedding vector(3));
CREATE TABLE hv_nodim (id int, embedding vector);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (embedding) WITH (m = 1)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (embedding) WITH (m = 101)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (embedding) WITH (ef_construction = 2000)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (embedding) WITH (m = 32, ef_construction = 40)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (embedding) WITH (lists = 3)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (embedding, tenant)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (tenant)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw (tenant, id, embedding)$$);
SELECT try($$CREATE INDEX ON hv_nodim USING sutra_hnsw (embedding)$$);
SELECT try($$CREATE INDEX ON hv USING sutra_hnsw ((embedding::real[]))$$);
CREATE TABLE hv_big (id int, embedding vector(4000));
SELECT try($$CREATE INDEX ON hv_big USING sutra_hnsw (embedding)$$);
DROP TABLE hv_nodim, hv_big;

-- An exact partition per tenant: rows come back nearest first, and only the tenant's own.
INSERT INTO hv SELECT i, i % 3, 'row ' || i, format('[%s,%s,%s]', i, i % 7, i % 11)::vector
FROM generate_series(1, 300) i;
CREATE INDEX hv_tenant_l2 ON hv USING sutra_hnsw (tenant, embedding vector_l2_ops);
-- The table is tiny: keep the planner on the index, as it is on large partitions.
SET enable_seqscan = off;
SELECT partition, elements, kind FROM hnsw_stats('hv_tenant_l2') ORDER BY partition;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hv_tenant_l2');
EXPLAIN (COSTS OFF) SELECT id FROM hv WHERE tenant = 1 ORDER BY embedding <-> '[100,1,1]' LIMIT 5;
SELECT id, tenant, round((embedding <-> '[100,1,1]')::numeric, 3) AS d
FROM hv WHERE tenant = 1 ORDER BY embedding <-> '[100,1,1]' LIMIT 5;
-- Row 100 is the nearest of all but belongs to tenant 1: tenant 2 must not see it.
SELECT id, tenant FROM hv WHERE tenant = 2 ORDER BY embedding <-> '[100,2,1]' LIMIT 3;
-- A key that has no partition, a NULL key, contradictory keys.
SELECT count(*) FROM (SELECT id FROM hv WHERE tenant = 7 ORDER BY embedding <-> '[1,1,1]' LIMIT 5) s;
SELECT count(*) FROM (SELECT id FROM hv WHERE tenant = NULL ORDER BY embedding <-> '[1,1,1]' LIMIT 5) s;
SELECT count(*) FROM (SELECT id FROM hv WHERE tenant = 1 AND tenant = 2 ORDER BY embedding <-> '[1,1,1]' LIMIT 5) s;
-- Without the key, every partition is searched and merged.
EXPLAIN (COSTS OFF) SELECT id FROM hv ORDER BY embedding <-> '[100,1,1]' LIMIT 3;
SELECT id FROM hv ORDER BY embedding <-> '[100,1,1]' LIMIT 3;

-- Other filters throw rows away: the scan goes on until LIMIT is met.
SET sutra.hnsw_ef_search = 1;
SELECT count(*) FROM (SELECT id FROM hv WHERE tenant = 0 AND id % 5 = 0 ORDER BY embedding <-> '[1,1,1]' LIMIT 15) s;
RESET sutra.hnsw_ef_search;

-- Not a query the index serves: no ORDER BY distance (even with sequential scans disabled).
EXPLAIN (COSTS OFF) SELECT id FROM hv WHERE tenant = 1;
-- Wrong dimensions
SELECT try($$SELECT id FROM hv WHERE tenant = 1 ORDER BY embedding <-> '[1,2]' LIMIT 1$$);
SELECT try($$INSERT INTO hv VALUES (1000, 1, 'x', '[1,2]')$$);

-- NULL vectors are not indexed; NULL keys form their own partition.
INSERT INTO hv VALUES (1001, 1, 'null vector', NULL), (1002, NULL, 'null key', '[100,1,1]');
SELECT partition, elements FROM hnsw_stats('hv_tenant_l2') ORDER BY partition NULLS LAST;
SELECT id FROM hv WHERE tenant = 1 ORDER BY embedding <-> '[100,1,1]' LIMIT 1;

-- Updates, deletes and VACUUM
UPDATE hv SET embedding = '[100,1,2]' WHERE id = 103;
DELETE FROM hv WHERE id % 2 = 0;
VACUUM hv;
SELECT partition, elements FROM hnsw_stats('hv_tenant_l2') ORDER BY partition NULLS LAST;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hv_tenant_l2');
SELECT id FROM hv WHERE tenant = 1 ORDER BY embedding <-> '[100,1,1]' LIMIT 3;

-- REINDEX gives the same answers.
REINDEX INDEX hv_tenant_l2;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hv_tenant_l2');
SELECT id FROM hv WHERE tenant = 1 ORDER BY embedding <-> '[100,1,1]' LIMIT 3;

RESET enable_seqscan;

-- Key types: uuid, bigint and text; cosine and inner product.
CREATE TABLE hk (u uuid, b bigint, t text, embedding vector(2));
INSERT INTO hk SELECT ('00000000-0000-0000-0000-00000000000' || (i % 2))::uuid, i % 2, 'k' || (i % 2),
    format('[%s,%s]', cos(i), sin(i))::vector FROM generate_series(1, 50) i;
INSERT INTO hk VALUES (NULL, NULL, NULL, '[0,0]');
CREATE INDEX hk_u ON hk USING sutra_hnsw (u, embedding vector_cosine_ops);
CREATE INDEX hk_b ON hk USING sutra_hnsw (b, embedding vector_ip_ops);
CREATE INDEX hk_t ON hk USING sutra_hnsw (t, embedding vector_cosine_ops);
SELECT partition, elements FROM hnsw_stats('hk_u') ORDER BY partition;
SELECT partition, elements FROM hnsw_stats('hk_b') ORDER BY partition NULLS LAST;
SELECT partition, elements FROM hnsw_stats('hk_t') ORDER BY partition;
SET enable_seqscan = off;
SELECT b, round((embedding <=> '[1,0]')::numeric, 4) AS d FROM hk
WHERE u = '00000000-0000-0000-0000-000000000001' ORDER BY embedding <=> '[1,0]' LIMIT 3;
SELECT b, round((embedding <#> '[1,0]')::numeric, 4) AS d FROM hk
WHERE b = 0 ORDER BY embedding <#> '[1,0]' LIMIT 3;
SELECT t FROM hk WHERE t = 'k1' ORDER BY embedding <=> '[0,1]' LIMIT 2;
EXPLAIN (COSTS OFF) SELECT t FROM hk WHERE t = 'k1' ORDER BY embedding <=> '[0,1]' LIMIT 2;
RESET enable_seqscan;
SELECT try($$SELECT hnsw_check('hv_pkey')$$);
SELECT try($$SELECT hnsw_stats('hv')$$);

-- A graph partition: recall against exact search, and no short results.
CREATE TABLE hg (id int, tenant int, embedding vector(8));
INSERT INTO hg SELECT i, i % 2,
    ('[' || array_to_string(ARRAY(SELECT round((sin(i * k) + (i % 10))::numeric, 4) FROM generate_series(1, 8) k), ',') || ']')::vector
FROM generate_series(1, 6000) i;
CREATE INDEX hg_idx ON hg USING sutra_hnsw (tenant, embedding) WITH (m = 8, ef_construction = 32);
SELECT partition, elements, kind FROM hnsw_stats('hg_idx') ORDER BY partition;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hg_idx');
ANALYZE hg;
-- The planner picks the index on its own for a partition of thousands of rows.
EXPLAIN (COSTS OFF) SELECT id FROM hg WHERE tenant = 1 ORDER BY embedding <-> '[1,1,1,1,1,1,1,1]' LIMIT 10;
CREATE TABLE hg_queries AS SELECT id AS qid, embedding AS q FROM hg WHERE id % 300 = 7;
CREATE FUNCTION hg_recall() RETURNS numeric LANGUAGE sql AS $$
    SELECT round(avg(hits) / 10, 2) FROM (
        SELECT (SELECT count(*) FROM
            (SELECT id FROM hg WHERE tenant = 1 ORDER BY embedding <-> q LIMIT 10) a
            WHERE id IN (SELECT id FROM (SELECT id, embedding <-> q AS d FROM hg WHERE tenant = 1
                                         ORDER BY d LIMIT 10) e)) AS hits
        FROM hg_queries) s
$$;
SET enable_seqscan = off;
SELECT hg_recall() >= 0.9 AS good_recall;
-- Every partition row is still reachable when other filters discard most candidates.
SELECT count(*) FROM (SELECT id FROM hg WHERE tenant = 1 AND id % 97 = 0 ORDER BY embedding <-> '[1,1,1,1,1,1,1,1]' LIMIT 30) s;
SELECT count(*) FROM hg WHERE tenant = 1 AND id % 97 = 0;
RESET enable_seqscan;
DELETE FROM hg WHERE id % 3 = 0;
VACUUM hg;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hg_idx');
SET enable_seqscan = off;
SELECT hg_recall() >= 0.9 AS good_recall_after_vacuum;
RESET enable_seqscan;
REINDEX INDEX CONCURRENTLY hg_idx;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hg_idx');

-- Through row level security: the policy's tenant becomes the index key, so a tenant session
-- reads only its own partition. Row 7 is the nearest to the query but belongs to the other
-- tenant.
SELECT sutra.create_tenant('hnsw-a') IS NOT NULL AS a, sutra.create_tenant('hnsw-b') IS NOT NULL AS b;
CREATE TABLE hdocs (id int, tenant_id uuid, embedding vector(2));
INSERT INTO hdocs SELECT i, sutra.tenant_id(CASE WHEN i % 2 = 0 THEN 'hnsw-a' ELSE 'hnsw-b' END),
    format('[%s,1]', i)::vector FROM generate_series(1, 40) i;
SELECT sutra.enable_tenancy('hdocs', 'tenant_id');
CREATE INDEX hdocs_idx ON hdocs USING sutra_hnsw (tenant_id, embedding);
CREATE ROLE regress_hnsw_app NOLOGIN IN ROLE sutra_service;
GRANT SELECT ON hdocs TO regress_hnsw_app;
SET ROLE regress_hnsw_app;
SELECT sutra.set_tenant('hnsw-a', session => true) = sutra.tenant_id('hnsw-a') AS tenant_a;
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM hdocs ORDER BY embedding <-> '[7,1]' LIMIT 3;
SELECT id FROM hdocs ORDER BY embedding <-> '[7,1]' LIMIT 3;
RESET enable_seqscan;
SELECT sutra.clear_tenant();
RESET ROLE;
DROP TABLE hdocs;
DROP ROLE regress_hnsw_app;

-- Thousands of partitions: the directory grows a page at a time, and every key is found. Tiny
-- partitions share pages (far fewer pages than partitions), each keeping room there for its next
-- rows, so a second row arriving after thousands of other tenants' rows joins its first.
CREATE TABLE hp (id int, tenant int, embedding vector(2));
CREATE INDEX hp_idx ON hp USING sutra_hnsw (tenant, embedding);
INSERT INTO hp SELECT i, i, format('[%s,1]', i)::vector FROM generate_series(1, 2000) i;
INSERT INTO hp SELECT i + 2000, i, format('[%s,2]', i)::vector FROM generate_series(1, 2000, 100) i;
SELECT count(*) AS partitions, sum(elements) AS elements, count(*) FILTER (WHERE pages > 1) <= 5 AS few_own_pages
FROM hnsw_stats('hp_idx');
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hp_idx');
SELECT pg_relation_size('hp_idx') / current_setting('block_size')::int < 2000 / 4 AS far_fewer_pages_than_partitions;
SET enable_seqscan = off;
SELECT id FROM hp WHERE tenant = 1 ORDER BY embedding <-> '[1,2]' LIMIT 2;
SELECT id FROM hp WHERE tenant = 1999 ORDER BY embedding <-> '[0,0]' LIMIT 2;
SELECT id FROM hp WHERE tenant = 2001 ORDER BY embedding <-> '[0,0]' LIMIT 2;
RESET enable_seqscan;
REINDEX INDEX hp_idx;
SELECT partitions, elements, heap_rows, unreachable, problems FROM hnsw_check('hp_idx');
-- Built in one pass, each partition's rows sit together on a shared page.
SELECT max(pages) AS max_pages FROM hnsw_stats('hp_idx');
SELECT pg_relation_size('hp_idx') / current_setting('block_size')::int < 2000 / 4 AS far_fewer_pages_than_partitions;
DROP TABLE hp;

-- A build that outgrows maintenance_work_mem writes what it built and inserts the rest.
CREATE TABLE hm (id int, embedding vector(128));
INSERT INTO hm SELECT i, ARRAY(SELECT sin(i * 0.37 + k) FROM generate_series(1, 128) k)::vector
FROM generate_series(1, 3000) i;
SET maintenance_work_mem = '1MB';
CREATE INDEX hm_idx ON hm USING sutra_hnsw (embedding) WITH (m = 4, ef_construction = 8);
RESET maintenance_work_mem;
SELECT partitions, elements, heap_rows, problems FROM hnsw_check('hm_idx');
SET enable_seqscan = off;
SELECT id FROM hm ORDER BY embedding <-> (SELECT embedding FROM hm WHERE id = 2999) LIMIT 1;
RESET enable_seqscan;
DROP TABLE hm;

-- Unlogged tables get an empty index in the init fork.
CREATE UNLOGGED TABLE hu (embedding vector(2));
CREATE INDEX ON hu USING sutra_hnsw (embedding);
INSERT INTO hu VALUES ('[1,1]'), ('[2,2]');
SELECT embedding FROM hu ORDER BY embedding <-> '[2,2]' LIMIT 1;

DROP TABLE hv, hk, hg, hg_queries, hu;
DROP FUNCTION hg_recall();
