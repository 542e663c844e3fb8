-- The sutra_hnsw index access method: HNSW graphs, one per value of an optional leading
-- partition key column (the tenant), for ORDER BY embedding <op> $q LIMIT k.

CREATE ACCESS METHOD sutra_hnsw TYPE INDEX HANDLER hnsw_handler;
COMMENT ON ACCESS METHOD sutra_hnsw IS 'HNSW vector index, partitioned by an optional leading key column';

CREATE OPERATOR CLASS vector_l2_ops DEFAULT FOR TYPE vector USING sutra_hnsw AS
    OPERATOR 1 <-> (vector, vector) FOR ORDER BY pg_catalog.float_ops,
    FUNCTION 1 _hnsw_l2_support(internal);
CREATE OPERATOR CLASS vector_ip_ops FOR TYPE vector USING sutra_hnsw AS
    OPERATOR 1 <#> (vector, vector) FOR ORDER BY pg_catalog.float_ops,
    FUNCTION 1 _hnsw_ip_support(internal);
CREATE OPERATOR CLASS vector_cosine_ops FOR TYPE vector USING sutra_hnsw AS
    OPERATOR 1 <=> (vector, vector) FOR ORDER BY pg_catalog.float_ops,
    FUNCTION 1 _hnsw_cosine_support(internal);

-- Partition key columns: equality only. The integer and text classes share a family with the
-- cross-type equalities, as PostgreSQL's btree families do, so that `key = $1` is an index
-- condition whatever integer type (or text, varchar, name) a driver sends for $1.
CREATE OPERATOR CLASS uuid_ops DEFAULT FOR TYPE uuid USING sutra_hnsw AS
    OPERATOR 1 pg_catalog.= (uuid, uuid);
CREATE OPERATOR FAMILY integer_ops USING sutra_hnsw;
CREATE OPERATOR CLASS int4_ops DEFAULT FOR TYPE integer USING sutra_hnsw FAMILY integer_ops AS
    OPERATOR 1 pg_catalog.= (integer, integer);
CREATE OPERATOR CLASS int8_ops DEFAULT FOR TYPE bigint USING sutra_hnsw FAMILY integer_ops AS
    OPERATOR 1 pg_catalog.= (bigint, bigint);
ALTER OPERATOR FAMILY integer_ops USING sutra_hnsw ADD
    OPERATOR 1 pg_catalog.= (integer, smallint),
    OPERATOR 1 pg_catalog.= (integer, bigint),
    OPERATOR 1 pg_catalog.= (bigint, smallint),
    OPERATOR 1 pg_catalog.= (bigint, integer);
CREATE OPERATOR FAMILY text_ops USING sutra_hnsw;
CREATE OPERATOR CLASS text_ops DEFAULT FOR TYPE text USING sutra_hnsw FAMILY text_ops AS
    OPERATOR 1 pg_catalog.= (text, text);
ALTER OPERATOR FAMILY text_ops USING sutra_hnsw ADD
    OPERATOR 1 pg_catalog.= (text, name);

REVOKE ALL ON FUNCTION hnsw_check(regclass) FROM PUBLIC;
