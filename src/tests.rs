//! Tests that need a running PostgreSQL (`cargo pgrx test`). Error messages and the SQL surface
//! are covered by the regression files in `pgrx-tests/regress`; these check what is easier to
//! state in Rust: agreement with PostgreSQL's own float4 output, the exact binary bytes, and the
//! distance functions against an f64 reference computed by SQL.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A deterministic stream of f32 values spread over the whole exponent range.
    fn sample_floats(n: usize) -> Vec<f32> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let x = f32::from_bits((state >> 32) as u32);
            if x.is_finite() {
                out.push(x);
            }
        }
        out
    }

    fn real_array_literal(values: &[f32]) -> String {
        // `{:e}` is exact (round-trip), so the array holds exactly these floats.
        let items: Vec<String> = values.iter().map(|x| format!("{x:e}")).collect();
        format!("'{{{}}}'::real[]", items.join(","))
    }

    #[pg_test]
    fn vector_text_matches_float4out() {
        let mut values = sample_floats(2000);
        values.extend([0.1, 1e6, 123456.7, 1234567.0, 1e-5, 1e-4, -0.0, 3.4028235e38]);
        for chunk in values.chunks(500) {
            let arr = real_array_literal(chunk);
            let q = format!("SELECT array_to_string({arr}, ',') = btrim(({arr}::sutra.vector)::text, '[]')");
            assert_eq!(Spi::get_one::<bool>(&q).unwrap(), Some(true), "{q}");
        }
    }

    #[pg_test]
    fn text_form_reads_back_bit_for_bit() {
        let values = sample_floats(5000);
        for chunk in values.chunks(1000) {
            let arr = real_array_literal(chunk);
            let q = format!(
                "SELECT sutra.vector_send(v::text::sutra.vector) = sutra.vector_send(v)
                 FROM (SELECT {arr}::sutra.vector AS v) s"
            );
            assert_eq!(Spi::get_one::<bool>(&q).unwrap(), Some(true));
        }
    }

    #[pg_test]
    fn binary_form_is_pgvectors() {
        let bytes = Spi::get_one::<Vec<u8>>("SELECT sutra.vector_send('[1,2,-0.5]')").unwrap().unwrap();
        let mut want = vec![0, 3, 0, 0];
        for x in [1.0f32, 2.0, -0.5] {
            want.extend_from_slice(&x.to_be_bytes());
        }
        assert_eq!(bytes, want);
    }

    #[pg_test]
    fn distances_match_an_f64_reference() {
        // Vectors of 1..=100 dimensions (every SIMD tail length), compared with the same
        // distances computed in double precision by plain SQL over the elements.
        Spi::run(
            "CREATE TEMP TABLE pairs AS
             SELECT d, array_agg((random() * 20 - 10)::real) AS a, array_agg((random() * 20 - 10)::real) AS b
             FROM generate_series(1, 100) d, generate_series(1, d) i GROUP BY d",
        )
        .unwrap();
        let bad = Spi::get_one::<i64>(
            "SELECT count(*) FROM (
               SELECT d, a::sutra.vector AS va, b::sutra.vector AS vb,
                 (SELECT sqrt(sum((x::float8 - y::float8)^2)) FROM unnest(a, b) u(x, y)) AS l2,
                 (SELECT sum(x::float8 * y::float8) FROM unnest(a, b) u(x, y)) AS ip,
                 (SELECT sum(x::float8 * y::float8) / sqrt(sum(x::float8^2) * sum(y::float8^2))
                    FROM unnest(a, b) u(x, y)) AS cos,
                 (SELECT sqrt(sum(x::float8^2)) FROM unnest(a) x) AS norm
               FROM pairs) s
             WHERE abs(sutra.l2_distance(va, vb) - l2) > 1e-4 * (1 + l2)
                OR abs(sutra.inner_product(va, vb) - ip) > 1e-4 * (1 + abs(ip))
                OR abs(sutra.vector_negative_inner_product(va, vb) + ip) > 1e-4 * (1 + abs(ip))
                OR abs(sutra.cosine_distance(va, vb) - (1 - cos)) > 1e-5
                OR abs(sutra.vector_norm(va) - norm) > 1e-9 * (1 + norm)
                OR sutra.vector_dims(va) <> d",
        )
        .unwrap();
        assert_eq!(bad, Some(0));
    }

    #[pg_test]
    fn avg_and_sum_match_element_sums() {
        Spi::run(
            "CREATE TEMP TABLE vs AS
             SELECT array[i, i * 2, -i]::real[]::sutra.vector AS v FROM generate_series(1, 1000) i",
        )
        .unwrap();
        let avg = Spi::get_one::<String>("SELECT sutra.avg(v)::text FROM vs").unwrap();
        assert_eq!(avg.as_deref(), Some("[500.5,1001,-500.5]"));
        let sum = Spi::get_one::<String>("SELECT sutra.sum(v)::text FROM vs").unwrap();
        // 1001000 prints as float4out prints it.
        assert_eq!(sum.as_deref(), Some("[500500,1.001e+06,-500500]"));
        let none = Spi::get_one::<String>("SELECT sutra.avg(v)::text FROM vs WHERE false").unwrap();
        assert_eq!(none, None);
    }

    #[pg_test]
    fn unset_sutra_parameter_reads_as_missing() {
        let r = Spi::get_one::<String>("SELECT current_setting('sutra.anything', true)").unwrap();
        assert_eq!(r, None);
    }

    /// The library is preloaded, so the prefix is reserved: no placeholder can be created.
    #[pg_test(error = "invalid configuration parameter name \"sutra.no_such_parameter\"")]
    fn sutra_prefix_is_reserved() {
        Spi::run("SELECT set_config('sutra.no_such_parameter', 'planted', false)").unwrap();
    }

    /// An index whose metapage has another page format version (written by a sutra of another
    /// format) is not read as if it were this one: the error names the index, and its DETAIL says
    /// that REINDEX rebuilds it.
    #[pg_test(error = "index \"old_format_idx\" is not a valid sutra_hnsw index")]
    fn an_index_of_another_format_version_is_refused() {
        Spi::run("CREATE TABLE old_format (id int, embedding sutra.vector(2))").unwrap();
        Spi::run("INSERT INTO old_format SELECT i, ARRAY[i, 1]::real[]::sutra.vector FROM generate_series(1, 10) i")
            .unwrap();
        Spi::run("CREATE INDEX old_format_idx ON old_format USING sutra_hnsw (embedding sutra.vector_l2_ops)").unwrap();
        let index = Spi::get_one::<pg_sys::Oid>("SELECT 'old_format_idx'::regclass::oid").unwrap().unwrap();
        crate::hnsw::pages::set_format_version(index, crate::hnsw::pages::FORMAT_VERSION + 1);
        Spi::run("SET enable_seqscan = off").unwrap();
        Spi::run("SELECT id FROM old_format ORDER BY embedding OPERATOR(sutra.<->) '[0,0]' LIMIT 1").unwrap();
    }

    /// The backend caches of tenant status, keys, members, settings and limits hold at most
    /// MAX_ENTRIES entries and forget an older generation: a backend that serves very many tenants
    /// does not grow with them.
    #[pg_test]
    fn backend_caches_are_bounded() {
        use crate::backend::GenerationMap;
        let max = GenerationMap::<u32, u32>::MAX_ENTRIES as u32;
        let mut map = GenerationMap::new();
        for k in 0..max {
            map.insert(1, k, k);
        }
        assert_eq!((map.get(1, &0), map.get(1, &(max - 1))), (Some(0), Some(max - 1)));
        map.insert(1, max, max);
        assert_eq!((map.get(1, &0), map.get(1, &(max - 1)), map.get(1, &max)), (None, None, Some(max)));
        assert_eq!(map.get(2, &max), None);
        map.insert(2, 7, 7);
        assert_eq!((map.get(2, &7), map.get(1, &max)), (Some(7), None));
    }

    /// sutra.tenant_id exists, and takes no value sutra did not sign.
    #[pg_test(error = "invalid tenant context")]
    fn forged_tenant_context_is_refused() {
        Spi::run("SELECT set_config('sutra.tenant_id', 'v1.00000000-0000-0000-0000-000000000000.rwa.9999999999.-.AAAA', false)")
            .unwrap();
    }

    /// A context sutra issued reads back as its tenant and scopes, in this backend and in a
    /// parallel worker (which receives the parameter and checks it again).
    #[pg_test]
    fn issued_context_reads_back_in_parallel_workers() {
        Spi::run("SELECT sutra.create_tenant('pgtest', id => '11111111-2222-3333-4444-555555555555')").unwrap();
        Spi::run("SELECT sutra.set_tenant('pgtest', scopes => '{read}', session => true)").unwrap();
        let scopes = Spi::get_one::<Vec<String>>("SELECT sutra.current_scopes()").unwrap();
        assert_eq!(scopes, Some(vec!["read".to_string()]));
        Spi::run(
            "SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0;
             SET LOCAL min_parallel_table_scan_size = 0; SET LOCAL max_parallel_workers_per_gather = 2;
             CREATE TABLE pt AS SELECT i FROM generate_series(1, 10000) i; ANALYZE pt",
        )
        .unwrap();
        let plan = Spi::explain(
            "SELECT count(*) FROM pt WHERE sutra.current_tenant()::text = '11111111-2222-3333-4444-555555555555'",
        )
        .unwrap();
        assert!(format!("{plan:?}").contains("Gather"), "{plan:?}");
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pt WHERE sutra.current_tenant()::text = '11111111-2222-3333-4444-555555555555'",
        )
        .unwrap();
        assert_eq!(n, Some(10000));
    }
}
