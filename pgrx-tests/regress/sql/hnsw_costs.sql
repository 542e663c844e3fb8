-- sutra_hnsw planner costs: the plans the planner chooses where bench/hnsw_cost.sh measured which
-- one is faster. One partition of 4,000 x 128 dimensions: the index at every ef_search up to 640
-- (it read every element and was still faster than a sequential scan and sort; before the costs
-- were calibrated the planner switched to the sort at ef_search 160 on such data). 1,500 tenants
-- of 2 rows: a search without the key would visit every partition, so the planner sorts; one
-- tenant's search uses its partition.
SET search_path = public, sutra;
SET max_parallel_workers_per_gather = 0;
CREATE TABLE hc (id int PRIMARY KEY, embedding vector(128));
INSERT INTO hc SELECT i, (SELECT array_agg(sin(i * 0.37 + j * (1 + i % 17) * 0.11)) FROM generate_series(1, 128) j)::vector
FROM generate_series(1, 4000) i;
CREATE INDEX hc_embedding ON hc USING sutra_hnsw (embedding vector_cosine_ops);
ANALYZE hc;
SET sutra.hnsw_ef_search = 40;
EXPLAIN (COSTS OFF) SELECT id FROM hc ORDER BY embedding <=> (SELECT embedding FROM hc WHERE id = 7) LIMIT 10;
SET sutra.hnsw_ef_search = 320;
EXPLAIN (COSTS OFF) SELECT id FROM hc ORDER BY embedding <=> (SELECT embedding FROM hc WHERE id = 7) LIMIT 10;
SET sutra.hnsw_ef_search = 640;
EXPLAIN (COSTS OFF) SELECT id FROM hc ORDER BY embedding <=> (SELECT embedding FROM hc WHERE id = 7) LIMIT 10;
-- Its cost grows with ef_search until the search reads every element (from ef_search 160
-- here), and stays below the sort's.
CREATE FUNCTION plan_cost(ef int, sort boolean) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE p json;
BEGIN
    PERFORM set_config('sutra.hnsw_ef_search', ef::text, true);
    PERFORM set_config('enable_indexscan', CASE WHEN sort THEN 'off' ELSE 'on' END, true);
    EXECUTE format('EXPLAIN (FORMAT JSON) SELECT id FROM hc ORDER BY embedding <=> %L LIMIT 10',
                   (SELECT embedding FROM hc WHERE id = 7)) INTO p;
    RETURN (p -> 0 -> 'Plan' ->> 'Total Cost')::float8;
END $$;
SELECT ef, plan_cost(ef / 2, false) < plan_cost(ef, false) AS more_than_half,
       plan_cost(ef / 2, false) <= plan_cost(ef, false) AS not_less, plan_cost(ef, false) < plan_cost(ef, true) AS below_sort
FROM (VALUES (40), (80), (160), (320), (640)) v(ef) ORDER BY ef;
RESET sutra.hnsw_ef_search;

CREATE TABLE hk (id int PRIMARY KEY, tenant int NOT NULL, embedding vector(16));
INSERT INTO hk SELECT i, i % 1500, (SELECT array_agg(cos(i * 0.13 + j)) FROM generate_series(1, 16) j)::vector
FROM generate_series(1, 3000) i;
CREATE INDEX hk_tenant_embedding ON hk USING sutra_hnsw (tenant, embedding vector_l2_ops);
ANALYZE hk;
SELECT partitions FROM hnsw_check('hk_tenant_embedding');
-- Without the key: every one of 1,500 partitions; the planner sorts instead, and EXPLAIN says why.
EXPLAIN (COSTS OFF) SELECT id FROM hk ORDER BY embedding <-> (SELECT embedding FROM hk WHERE id = 3) LIMIT 10;
-- With it: one partition.
EXPLAIN (COSTS OFF) SELECT id FROM hk WHERE tenant = 3 ORDER BY embedding <-> (SELECT embedding FROM hk WHERE id = 3) LIMIT 10;
-- Forced onto the index, the keyless search still answers, nearest first, and agrees with the sort.
SET enable_seqscan = off;
SELECT array_agg(id ORDER BY d, id) FROM (
    SELECT id, embedding <-> (SELECT embedding FROM hk WHERE id = 3) AS d FROM hk
    ORDER BY embedding <-> (SELECT embedding FROM hk WHERE id = 3) LIMIT 5) s;
RESET enable_seqscan;
SET enable_indexscan = off;
SELECT array_agg(id ORDER BY d, id) FROM (
    SELECT id, embedding <-> (SELECT embedding FROM hk WHERE id = 3) AS d FROM hk
    ORDER BY embedding <-> (SELECT embedding FROM hk WHERE id = 3) LIMIT 5) s;
RESET enable_indexscan;
DROP TABLE hc, hk;
DROP FUNCTION plan_cost(int, boolean);
