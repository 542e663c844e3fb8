-- Tenancy: per-tenant secrets (bring-your-own provider keys), sealed with AES-256-GCM under a
-- master key from the server's configuration, sutra.secrets_key (src/tenancy/secrets.rs). The
-- table holds ciphertext only: a dump of the database cannot reveal a value without that key.
-- Values never appear in errors, in the audit log or in pg_stat_activity; each read is audited,
-- also when the reading transaction rolls back.

CREATE TABLE tenant_secrets (
    tenant_id uuid NOT NULL,
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    sealed bytea NOT NULL,
    key_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
COMMENT ON TABLE tenant_secrets IS 'tenant secrets, sealed (AES-256-GCM) under the master key sutra.secrets_key; read through sutra.secret';
-- No privileges for PUBLIC: sutra's functions read the rows (their owner bypasses row level
-- security). A role given SELECT by other means (pg_read_all_data: scripts/tenant-export.sh) sees
-- the sealed rows of its context's tenant only.
REVOKE ALL ON tenant_secrets FROM PUBLIC;
ALTER TABLE tenant_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY own_tenant ON tenant_secrets FOR SELECT USING (tenant_id = (SELECT sutra.current_tenant('admin')));
SELECT pg_catalog.pg_extension_config_dump('tenant_secrets', '');

-- Seal and open: sutra's own (superusers only, checked inside too).
REVOKE ALL ON FUNCTION _seal_secret(uuid, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _open_secret(uuid, text, bytea, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _secrets_key_id() FROM PUBLIC;
REVOKE ALL ON FUNCTION _hide_secret_value(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION _secret_read(uuid, text) FROM PUBLIC;

-- The tenant of a secrets call: the named one for superusers and members of sutra_service, the
-- session's otherwise, which must hold the admin scope.
CREATE FUNCTION _secret_tenant(tenant text, what text) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service(what || ' of a named tenant');
        RETURN (sutra._tenant_row(tenant)).id;
    END IF;
    RETURN sutra.current_tenant('admin');
END $$;
REVOKE ALL ON FUNCTION _secret_tenant(text, text) FROM PUBLIC;

CREATE FUNCTION _check_secret_name(name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z0-9_.:-]{1,64}$' THEN
        RAISE EXCEPTION 'invalid secret name "%"', left(name, 64) USING ERRCODE = '22023',
            DETAIL = 'A secret name is 1 to 64 characters: letters, digits, and _ . : or -.';
    END IF;
END $$;

-- Sets (or replaces) a secret of the current tenant (or, for sutra_service, of the tenant named).
CREATE FUNCTION set_secret(name text, value text, tenant text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid;
    s record;
BEGIN
    PERFORM sutra._hide_secret_value(value);
    t := sutra._secret_tenant(tenant, 'set a secret');
    PERFORM sutra._check_secret_name(set_secret.name);
    IF value IS NULL OR value = '' THEN
        RAISE EXCEPTION 'a secret''s value must not be empty' USING ERRCODE = '22023',
            HINT = 'sutra.delete_secret(name) removes a secret.';
    END IF;
    SELECT * INTO s FROM sutra._seal_secret(t, name, value);
    INSERT INTO sutra.tenant_secrets AS x (tenant_id, name, sealed, key_id) VALUES (t, set_secret.name, s.sealed, s.key_id)
    ON CONFLICT ON CONSTRAINT tenant_secrets_pkey
    DO UPDATE SET sealed = EXCLUDED.sealed, key_id = EXCLUDED.key_id, rotated_at = now();
    PERFORM sutra._audit('secret.set', t, jsonb_build_object('name', set_secret.name));
END $$;

-- A secret's value. Another tenant's secret is reported exactly as one that does not exist.
CREATE FUNCTION secret(name text, tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._secret_tenant(tenant, 'read a secret');
    r sutra.tenant_secrets;
BEGIN
    SELECT * INTO r FROM sutra.tenant_secrets x WHERE x.tenant_id = t AND x.name = secret.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'secret "%" does not exist', left(secret.name, 64) USING ERRCODE = '42704';
    END IF;
    PERFORM sutra._secret_read(t, r.name);
    RETURN sutra._open_secret(t, r.name, r.sealed, r.key_id);
END $$;

CREATE FUNCTION delete_secret(name text, tenant text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._secret_tenant(tenant, 'delete a secret');
BEGIN
    DELETE FROM sutra.tenant_secrets x WHERE x.tenant_id = t AND x.name = delete_secret.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM sutra._audit('secret.delete', t, jsonb_build_object('name', delete_secret.name));
    RETURN true;
END $$;

-- The current tenant's secrets (or the named tenant's): names and times, never values.
CREATE FUNCTION secrets_list(tenant text DEFAULT NULL)
RETURNS TABLE (name text, created_at timestamptz, rotated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.name, x.created_at, x.rotated_at FROM sutra.tenant_secrets x
    WHERE x.tenant_id = sutra._secret_tenant(tenant, 'list the secrets') ORDER BY x.name;
$$;

-- Seals every secret sealed with another key again with sutra.secrets_key. While rotating, set the
-- new key as sutra.secrets_key and the old one as sutra.secrets_key_previous, reload, run this,
-- then remove sutra.secrets_key_previous. Returns how many secrets were sealed again.
CREATE FUNCTION rotate_secrets_key() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current text;
    r record;
    s record;
    n integer := 0;
BEGIN
    PERFORM sutra._require_service('rotate the secrets key');
    current := sutra._secrets_key_id();
    IF current IS NULL THEN
        RAISE EXCEPTION 'tenant secrets are off: sutra.secrets_key is not set' USING ERRCODE = '55000';
    END IF;
    FOR r IN SELECT * FROM sutra.tenant_secrets x WHERE x.key_id <> current FOR UPDATE LOOP
        BEGIN
            SELECT * INTO s FROM sutra._seal_secret(r.tenant_id, r.name,
                                                    sutra._open_secret(r.tenant_id, r.name, r.sealed, r.key_id));
        EXCEPTION WHEN data_corrupted OR object_not_in_prerequisite_state THEN
            -- A value that does not open (changed, or sealed with a key not configured) stays as
            -- it is; the others are sealed again.
            RAISE WARNING 'secret "%" of tenant % does not open; it is left as it is', r.name, r.tenant_id;
            CONTINUE;
        END;
        UPDATE sutra.tenant_secrets x SET sealed = s.sealed, key_id = s.key_id
        WHERE x.tenant_id = r.tenant_id AND x.name = r.name;
        n := n + 1;
    END LOOP;
    PERFORM sutra._audit('secret.rotate_key', NULL, jsonb_build_object('sealed_again', n, 'key_id', current));
    RETURN n;
END $$;
REVOKE ALL ON FUNCTION rotate_secrets_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rotate_secrets_key() TO sutra_service;
