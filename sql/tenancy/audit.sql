-- Tenancy: the audit log of who did what to which tenant.

-- Audit log -------------------------------------------------------------------------------------

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tenant_id uuid,
    action text NOT NULL,
    actor name NOT NULL,
    session_role name NOT NULL,
    context_tenant uuid,
    client_addr inet,
    details jsonb NOT NULL DEFAULT '{}',
    -- The user of the context (sutra.current_user_id()), when a user granted it.
    user_id text
);
CREATE INDEX ON audit_log (tenant_id, at);
-- Retention deletes by time.
CREATE INDEX ON audit_log (at);
COMMENT ON TABLE audit_log IS 'who did what to which tenant, when, from where; append-only, kept for sutra.audit_retention';

-- Writes one audit row. Only sutra's own functions call it.
CREATE FUNCTION _audit(action text, tenant uuid, details jsonb DEFAULT '{}') RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO sutra.audit_log (tenant_id, action, actor, session_role, context_tenant, client_addr, details, user_id)
    VALUES (tenant, action, sutra._caller(), session_user, sutra._context_tenant(),
            inet_client_addr(), coalesce(details, '{}'), sutra._context_user());
$$;

-- Deletes audit rows older than sutra.audit_retention (0, the default, keeps them for good) and
-- audits that it did. The metering worker runs it hourly in each database it flushes, with the
-- compaction of usage rollups. Returns the rows deleted.
CREATE FUNCTION trim_audit_log() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    retention interval := current_setting('sutra.audit_retention')::interval;
    n bigint;
BEGIN
    PERFORM sutra._require_service('trim the audit log');
    IF retention <= interval '0' THEN
        RETURN 0;
    END IF;
    DELETE FROM sutra.audit_log a WHERE a.at < now() - retention;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM sutra._audit('audit.trim', NULL, jsonb_build_object('deleted', n, 'retention', retention::text));
    END IF;
    RETURN n;
END $$;
REVOKE ALL ON FUNCTION trim_audit_log() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION trim_audit_log() TO sutra_service;

REVOKE ALL ON audit_log FROM PUBLIC;
GRANT SELECT ON audit_log TO PUBLIC;
SELECT _own_rows_policies('audit_log', 'tenant_id', 'admin');
SELECT pg_catalog.pg_extension_config_dump('audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log_id_seq', '');
REVOKE ALL ON FUNCTION _audit(text, uuid, jsonb) FROM PUBLIC;
