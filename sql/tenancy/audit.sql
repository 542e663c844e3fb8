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
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ON audit_log (tenant_id, at);
COMMENT ON TABLE audit_log IS 'who did what to which tenant, when, from where; append-only';

-- Writes one audit row. Only sutra's own functions call it.
CREATE FUNCTION _audit(action text, tenant uuid, details jsonb DEFAULT '{}') RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO sutra.audit_log (tenant_id, action, actor, session_role, context_tenant, client_addr, details)
    VALUES (tenant, action, sutra._caller(), session_user, sutra._context_tenant(),
            inet_client_addr(), coalesce(details, '{}'));
$$;

REVOKE ALL ON audit_log FROM PUBLIC;
GRANT SELECT ON audit_log TO PUBLIC;
SELECT _own_rows_policies('audit_log', 'tenant_id', 'admin');
SELECT pg_catalog.pg_extension_config_dump('audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('audit_log_id_seq', '');
REVOKE ALL ON FUNCTION _audit(text, uuid, jsonb) FROM PUBLIC;
