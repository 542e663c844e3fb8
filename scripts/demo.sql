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
