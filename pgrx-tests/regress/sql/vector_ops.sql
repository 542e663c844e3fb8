-- Operators, functions, casts, aggregates and ordering of sutra.vector.
SET search_path TO public, sutra;

-- distances
SELECT '[0,0]'::vector <-> '[3,4]' AS l2, l2_distance('[1,2,3]', '[1,2,3]') AS l2_same;
SELECT '[1,2,3]'::vector <#> '[4,5,6]' AS neg_ip, inner_product('[1,2,3]', '[4,5,6]') AS ip;
SELECT '[1,0]'::vector <=> '[0,1]' AS orthogonal, '[1,2]'::vector <=> '[2,4]' AS parallel,
       '[1,0]'::vector <=> '[-1,0]' AS opposite, cosine_distance('[0,0]', '[1,1]') AS zero_is_nan;
SELECT vector_dims('[1,2,3]'), vector_norm('[3,4]'), vector_norm('[0]');

-- arithmetic
SELECT '[1,2,3]'::vector + '[4,5,6]' AS sum, '[1,2,3]'::vector - '[4,5,6]' AS diff,
       '[1,2,3]'::vector * '[4,5,6]' AS product;

-- dimension mismatch and range errors in every operator
SELECT try($$SELECT ('[1,2]'::vector <-> '[1,2,3]')::text$$);
SELECT try($$SELECT ('[1,2]'::vector <#> '[1,2,3]')::text$$);
SELECT try($$SELECT ('[1,2]'::vector <=> '[1,2,3]')::text$$);
SELECT try($$SELECT ('[1,2]'::vector + '[1,2,3]')::text$$);
SELECT try($$SELECT ('[1,2]'::vector - '[1,2,3]')::text$$);
SELECT try($$SELECT ('[1,2]'::vector * '[1,2,3]')::text$$);
SELECT try($$SELECT inner_product('[1]', '[1,2]')::text$$);
SELECT try($$SELECT ('[3e38]'::vector + '[3e38]')::text$$);
SELECT try($$SELECT ('[-3e38]'::vector - '[3e38]')::text$$);
SELECT try($$SELECT ('[1e30]'::vector * '[1e30]')::text$$);
SELECT try($$SELECT ('[1e-30]'::vector * '[1e-30]')::text$$);

-- casts from arrays
SELECT ARRAY[1,2,3]::vector, ARRAY[1.5,2.5]::real[]::vector, ARRAY[0.1,2]::float8[]::vector,
       ARRAY[1.25,2]::numeric[]::vector;
SELECT ARRAY[1,2,3]::vector(3);
SELECT try($$SELECT ARRAY[1,2]::vector(3)::text$$);
SELECT try($$SELECT ARRAY[]::int[]::vector::text$$);
SELECT try($$SELECT ARRAY[1,NULL]::int[]::vector::text$$);
SELECT try($$SELECT ARRAY[[1,2],[3,4]]::int[]::vector::text$$);
SELECT try($$SELECT ARRAY['NaN']::real[]::vector::text$$);
SELECT try($$SELECT ARRAY['Infinity']::float8[]::vector::text$$);
SELECT try($$SELECT ARRAY[1e300]::float8[]::vector::text$$);
SELECT try($$SELECT ARRAY['NaN']::numeric[]::vector::text$$);
SELECT try($$SELECT ARRAY[1e100]::numeric[]::vector::text$$);
SELECT try($$SELECT array_fill(1, ARRAY[16001])::vector::text$$);

-- casts to arrays
SELECT '[1.5,-2,0.1]'::vector::real[] AS r, '[1.5,-2,0.1]'::vector::float8[] AS d,
       '[1.5,2.5,-0.5,0.1]'::vector::int[] AS i, '[1.5,-2,0.1]'::vector::numeric[] AS n;
SELECT try($$SELECT '[3e9]'::vector::int[]::text$$);
-- a vector column takes an array by assignment
CREATE TABLE items (id int, embedding vector(2));
INSERT INTO items VALUES (1, ARRAY[1,2]), (2, ARRAY[1.5,2.5]::real[]), (3, '{3,4}'::int[]);
SELECT try($$INSERT INTO items VALUES (4, ARRAY[1,2,3])$$);
SELECT * FROM items ORDER BY id;

-- aggregates
SELECT avg(embedding), sum(embedding) FROM items;
SELECT avg(embedding) IS NULL AS avg_of_nothing, sum(embedding) IS NULL AS sum_of_nothing
  FROM items WHERE false;
SELECT try($$SELECT avg(v)::text FROM (VALUES ('[1,2]'::vector), ('[1,2,3]')) t(v)$$);
SELECT try($$SELECT sum(v)::text FROM (VALUES ('[1,2]'::vector), ('[1,2,3]')) t(v)$$);
-- in parallel: the partial states are combined
-- (small integer elements: every partial sum is exact in float4, whatever rows each worker gets)
CREATE TABLE many AS SELECT i, ARRAY[i % 100, -(i % 7), 1]::vector AS v FROM generate_series(1, 100000) i;
ANALYZE many;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT avg(v), sum(v) FROM many;
SELECT avg(v), sum(v) FROM many;
RESET ALL;
SET search_path TO public, sutra;

-- ordering, equality, a unique index
SELECT v FROM (VALUES ('[1,2,3]'::vector), ('[1,2]'), ('[0,5]'), ('[1,2,3]'), ('[-1,9,9]')) t(v)
 ORDER BY v;
SELECT DISTINCT v FROM (VALUES ('[1,2]'::vector), ('[1,2]'), ('[2,1]')) t(v) ORDER BY v;
SELECT '[1,2]'::vector = '[1,2]', '[1,2]'::vector <> '[1,2]', '[1,2]'::vector < '[1,2,0]',
       '[1,3]'::vector > '[1,2,9]', '[0]'::vector = '[-0]';
CREATE UNIQUE INDEX ON items (embedding);
SELECT try($$INSERT INTO items VALUES (9, '[1,2]')$$);
SELECT id FROM items WHERE embedding = '[3,4]';

-- the type is stored out of line uncompressed, like pgvector's
SELECT typstorage, typalign FROM pg_type WHERE oid = 'vector'::regtype;
DROP TABLE items, many;
