-- Text input and output of sutra.vector, the vector(n) modifier, and every kind of bad input.
-- try() (setup.sql) reports each error's SQLSTATE, message and DETAIL.
SET search_path TO public, sutra;

-- well-formed input, as written and as printed back
SELECT '[1,2,3]'::vector;
SELECT '  [ 1 , -2.5 , +3e2 ]  '::vector;
SELECT '[.5,5.,1E-3,-0]'::vector;
SELECT '[0.1,100000,123456.7,1000000,1234567,0.0001,0.00001,-3e-7]'::vector;
SELECT '[3.4028235e38,-3.4028235e38,1.1754944e-38,1e-45]'::vector;
SELECT '[1e-50]'::vector AS underflow_rounds_to_zero;
SELECT pg_typeof('[1]'::vector), '[1,2]'::vector(2);

-- malformed text
SELECT try($$SELECT '[1,2'::vector::text$$);
SELECT try($$SELECT '[1,,2]'::vector::text$$);
SELECT try($$SELECT '[a]'::vector::text$$);
SELECT try($$SELECT '[1,2]x'::vector::text$$);
SELECT try($$SELECT '[1,2] ]'::vector::text$$);
SELECT try($$SELECT '1,2'::vector::text$$);
SELECT try($$SELECT ''::vector::text$$);
SELECT try($$SELECT '[1 2]'::vector::text$$);
SELECT try($$SELECT '[1,]'::vector::text$$);
SELECT try($$SELECT '[0x10]'::vector::text$$);
SELECT try($$SELECT '[1e]'::vector::text$$);
SELECT try($$SELECT '[[1]]'::vector::text$$);

-- values a vector cannot hold
SELECT try($$SELECT '[]'::vector::text$$);
SELECT try($$SELECT '[ ]'::vector::text$$);
SELECT try($$SELECT '[NaN]'::vector::text$$);
SELECT try($$SELECT '[1,-nan]'::vector::text$$);
SELECT try($$SELECT '[Infinity]'::vector::text$$);
SELECT try($$SELECT '[1,-inf]'::vector::text$$);
SELECT try($$SELECT '[1e39]'::vector::text$$);
SELECT try($$SELECT '[-1e99999]'::vector::text$$);
SELECT try($$SELECT '[1e999999999999999999999]'::vector::text$$);

-- the dimension limit: 16000 is accepted, 16001 is not
SELECT vector_dims(('[' || array_to_string(array_fill(1, ARRAY[16000]), ',') || ']')::vector);
SELECT try($$SELECT vector_dims(('[' || array_to_string(array_fill(1, ARRAY[16001]), ',') || ']')::vector)::text$$);

-- the vector(n) modifier
CREATE TABLE items (id int, embedding vector(3));
INSERT INTO items VALUES (1, '[1,2,3]');
SELECT try($$INSERT INTO items VALUES (2, '[1,2]')$$);
SELECT try($$INSERT INTO items VALUES (2, '[1,2,3,4]'::vector)$$);
SELECT try($$UPDATE items SET embedding = '[1]'::vector$$);
SELECT try($$SELECT '[1,2]'::vector(3)::text$$);
SELECT try($$CREATE TABLE bad (v vector(0))$$);
SELECT try($$CREATE TABLE bad (v vector(16001))$$);
SELECT try($$CREATE TABLE bad (v vector(2, 3))$$);
SELECT try($$CREATE TABLE bad (v vector('a'))$$);
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'items'::regclass AND attname = 'embedding';
SELECT * FROM items;

-- what a user sees, with DETAIL
\set VERBOSITY default
SELECT '[1,2'::vector;
SELECT 'x'::vector;

-- the session is still alive and the committed row is still there
SELECT count(*) FROM items;
DROP TABLE items;
