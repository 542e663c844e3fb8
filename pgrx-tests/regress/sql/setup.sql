-- Shared by the regression tests (pg_regress runs them in order in one database).
-- try(q) runs a statement and reports its SQLSTATE, message and DETAIL/HINT (or "ok" and the
-- first column of a SELECT), so expected output pins all three; the session going on after each
-- error shows the backend survived it.
CREATE FUNCTION public.try(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r text; st text; msg text; det text; hnt text;
BEGIN
    IF q ~* '^\s*(select|values|with)' THEN
        EXECUTE q INTO r;
    ELSE
        EXECUTE q;
    END IF;
    RETURN 'ok' || coalesce(': ' || r, '');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
        det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg || coalesce(' DETAIL: ' || nullif(det, ''), '')
        || coalesce(' HINT: ' || nullif(hnt, ''), '');
END $$;
SELECT try('SELECT 1'), try('SELECT 1/0'), try('CREATE TEMP TABLE t (a int)');
