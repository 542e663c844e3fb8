-- Tenancy: API keys and the server-side secret they are checked with. Authentication itself
-- (sutra.authenticate, sutra.authenticate_jwt) is sutra's own code: src/tenancy/auth.rs.

-- Secrets (superusers only) ---------------------------------------------------------------------

CREATE TABLE secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
COMMENT ON TABLE secrets IS 'server-side secrets (the API key pepper); superusers only';
CREATE TRIGGER replace_seeded_row BEFORE INSERT ON secrets
    FOR EACH ROW EXECUTE FUNCTION _replace_seeded_row('name', 'api_key_pepper');
INSERT INTO secrets VALUES ('api_key_pepper', _random_bytes(32));

-- API keys --------------------------------------------------------------------------------------

CREATE TABLE api_key_store (
    key_id text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL,
    scopes text[] NOT NULL CHECK (scopes <@ '{read,write,admin}' AND cardinality(scopes) > 0),
    secret_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    replaced_by text
);
CREATE INDEX ON api_key_store (tenant_id);
-- Revoking a key, or moving its expiry, ends the contexts it granted, in every backend (see tenant_changed).
CREATE TRIGGER key_revoked AFTER UPDATE OF revoked_at, expires_at ON api_key_store
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at)
    EXECUTE FUNCTION _tenants_changed();
CREATE TRIGGER key_deleted AFTER DELETE ON api_key_store
    FOR EACH STATEMENT EXECUTE FUNCTION _tenants_changed();
COMMENT ON TABLE api_key_store IS 'API keys: only an HMAC of each secret; read through sutra.api_keys';

CREATE VIEW api_keys WITH (security_invoker = true) AS
    SELECT key_id, tenant_id, name, scopes, created_at, expires_at, revoked_at, last_used_at,
           replaced_by,
           CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                WHEN expires_at <= now() THEN 'expired'
                ELSE 'active' END AS status
    FROM api_key_store;

-- Privileges and row level security ------------------------------------------------------------

REVOKE ALL ON secrets, api_key_store FROM PUBLIC;
GRANT SELECT ON api_keys TO PUBLIC;
GRANT SELECT (key_id, tenant_id, name, scopes, created_at, expires_at, revoked_at, last_used_at,
              replaced_by) ON api_key_store TO PUBLIC;

ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
SELECT _own_rows_policies('api_key_store', 'tenant_id', 'admin');
SELECT pg_catalog.pg_extension_config_dump('secrets', '');
SELECT pg_catalog.pg_extension_config_dump('api_key_store', '');

-- API key management ----------------------------------------------------------------------------

-- Fails unless the caller may act on the tenant's own affairs (`what`): sutra_service, or a
-- session of that tenant holding the admin scope.
CREATE FUNCTION _require_tenant_admin(tenant uuid, what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF sutra._caller_is_service() THEN
        RETURN;
    END IF;
    IF sutra.current_tenant('admin') IS DISTINCT FROM tenant THEN
        RAISE EXCEPTION 'permission denied to % of another tenant', what USING ERRCODE = '42501';
    END IF;
END $$;

CREATE FUNCTION _require_key_admin(tenant uuid) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT sutra._require_tenant_admin(tenant, 'manage the API keys');
$$;

CREATE FUNCTION _check_scopes(scopes text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF scopes IS NULL OR cardinality(scopes) = 0 OR NOT scopes <@ '{read,write,admin}'::text[]
       OR array_position(scopes, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'invalid scopes %', coalesce(scopes::text, 'NULL') USING ERRCODE = '22023',
            DETAIL = 'Scopes are read, write and admin; a key has at least one.';
    END IF;
END $$;

CREATE FUNCTION _insert_api_key(tenant uuid, name text, scopes text[], expires_at timestamptz)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k record;
BEGIN
    SELECT * INTO k FROM sutra._mint_api_key(
        (SELECT s.value FROM sutra.secrets s WHERE s.name = 'api_key_pepper'));
    INSERT INTO sutra.api_key_store (key_id, tenant_id, name, scopes, secret_hash, expires_at)
    VALUES (k.key_id, tenant, name, ARRAY(SELECT DISTINCT unnest(scopes) ORDER BY 1), k.secret_hash,
            expires_at);
    RETURN k.api_key;
END $$;
REVOKE ALL ON FUNCTION _insert_api_key(uuid, text, text[], timestamptz) FROM PUBLIC;

-- Returns the full key, once; only an HMAC of its secret is stored.
CREATE FUNCTION create_api_key(tenant text, name text DEFAULT 'default',
                               scopes text[] DEFAULT '{read,write}', expires_at timestamptz DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sutra.tenants;
    key text;
BEGIN
    r := sutra._tenant_row(tenant);
    PERFORM sutra._require_key_admin(r.id);
    PERFORM sutra._check_scopes(scopes);
    IF r.status <> 'active' THEN
        RAISE EXCEPTION 'tenant "%" is %', r.slug, r.status USING ERRCODE = '55000';
    END IF;
    IF expires_at <= now() THEN
        RAISE EXCEPTION 'expires_at is in the past' USING ERRCODE = '22023';
    END IF;
    key := sutra._insert_api_key(r.id, coalesce(name, 'default'), scopes, expires_at);
    PERFORM sutra._audit('api_key.create', r.id, jsonb_build_object(
        'key_id', sutra._key_id_of(key), 'name', name, 'scopes', scopes, 'expires_at', expires_at));
    RETURN key;
END $$;
CREATE FUNCTION create_api_key(tenant uuid, name text DEFAULT 'default',
                               scopes text[] DEFAULT '{read,write}', expires_at timestamptz DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT sutra.create_api_key(tenant::text, name, scopes, expires_at);
$$;

CREATE FUNCTION _api_key_row(key_id text) RETURNS api_key_store
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k sutra.api_key_store;
BEGIN
    SELECT * INTO k FROM sutra.api_key_store s WHERE s.key_id = _api_key_row.key_id FOR UPDATE;
    -- Another tenant's key is reported exactly as a key that does not exist.
    IF k.key_id IS NULL OR NOT (sutra._caller_is_service() OR k.tenant_id = sutra._context_tenant()) THEN
        RAISE EXCEPTION 'API key "%" does not exist', key_id USING ERRCODE = '42704';
    END IF;
    PERFORM sutra._require_key_admin(k.tenant_id);
    RETURN k;
END $$;
REVOKE ALL ON FUNCTION _api_key_row(text) FROM PUBLIC;

CREATE FUNCTION revoke_api_key(key_id text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k sutra.api_key_store := sutra._api_key_row(key_id);
BEGIN
    UPDATE sutra.api_key_store s SET revoked_at = coalesce(s.revoked_at, now())
    WHERE s.key_id = k.key_id;
    PERFORM sutra._audit('api_key.revoke', k.tenant_id, jsonb_build_object('key_id', k.key_id));
END $$;

-- Issues a new key with the same tenant, name, scopes and expiry, and retires the old one: at
-- once, or after grace (so running clients can switch over).
CREATE FUNCTION rotate_api_key(key_id text, grace interval DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k sutra.api_key_store := sutra._api_key_row(key_id);
    key text;
BEGIN
    IF k.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'API key "%" is revoked', k.key_id USING ERRCODE = '55000';
    END IF;
    key := sutra._insert_api_key(k.tenant_id, k.name, k.scopes, k.expires_at);
    UPDATE sutra.api_key_store s SET
        replaced_by = sutra._key_id_of(key),
        revoked_at = CASE WHEN grace IS NULL THEN now() END,
        expires_at = CASE WHEN grace IS NULL THEN s.expires_at
                          ELSE least(s.expires_at, now() + grace) END
    WHERE s.key_id = k.key_id;
    PERFORM sutra._audit('api_key.rotate', k.tenant_id, jsonb_build_object(
        'key_id', k.key_id, 'new_key_id', sutra._key_id_of(key), 'grace', grace));
    RETURN key;
END $$;

-- Who may call what -----------------------------------------------------------------------------

REVOKE ALL ON FUNCTION reset_auth_failures() FROM PUBLIC;
REVOKE ALL ON FUNCTION _mint_api_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION _random_bytes(integer) FROM PUBLIC;
