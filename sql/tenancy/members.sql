-- Tenancy: the users who belong to a tenant, each with a role: owner and admin (scopes read, write,
-- admin), member (read, write), viewer (read). A tenant always keeps at least one owner.

CREATE TABLE tenant_members (
    tenant_id uuid NOT NULL,
    user_id text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
-- A user's tenants.
CREATE INDEX ON tenant_members (user_id);
COMMENT ON TABLE tenant_members IS 'users of each tenant and their roles (sutra.add_member and friends)';
REVOKE ALL ON tenant_members FROM PUBLIC;
GRANT SELECT ON tenant_members TO PUBLIC;
SELECT _own_rows_policies('tenant_members', 'tenant_id', 'read');
SELECT pg_catalog.pg_extension_config_dump('tenant_members', '');
-- Membership applies at once in every backend, as a tenant's status does.
CREATE TRIGGER member_changed AFTER INSERT OR UPDATE OR DELETE ON tenant_members
    FOR EACH STATEMENT EXECUTE FUNCTION _tenants_changed();

-- The scopes a role grants.
CREATE FUNCTION role_scopes(role text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE role WHEN 'owner' THEN '{read,write,admin}'::text[] WHEN 'admin' THEN '{read,write,admin}'
                     WHEN 'member' THEN '{read,write}' WHEN 'viewer' THEN '{read}' END
$$;

-- The tenant whose members are to change, locked against concurrent changes of its members (so
-- that two removals cannot both leave it without an owner): the named one for superusers and
-- members of sutra_service, the session's otherwise, with the admin scope. Only sutra_service
-- makes or unmakes owners.
CREATE FUNCTION _members_tenant(tenant text, role text) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid;
BEGIN
    IF role IS NOT NULL AND role NOT IN ('owner', 'admin', 'member', 'viewer') THEN
        RAISE EXCEPTION 'invalid role "%"', role USING ERRCODE = '22023',
            DETAIL = 'Roles are owner, admin, member and viewer.';
    END IF;
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service('manage the members of a named tenant');
        t := (sutra._tenant_row(tenant)).id;
    ELSE
        t := sutra.current_tenant('admin');
        IF role = 'owner' AND NOT sutra._caller_is_service() THEN
            RAISE EXCEPTION 'permission denied to change the owners of a tenant' USING ERRCODE = '42501',
                HINT = 'Superusers and members of sutra_service make and unmake owners.';
        END IF;
    END IF;
    PERFORM 1 FROM sutra.tenants x WHERE x.id = t FOR UPDATE;
    RETURN t;
END $$;
REVOKE ALL ON FUNCTION _members_tenant(text, text) FROM PUBLIC;

-- Fails when the change would leave the tenant without an owner.
CREATE FUNCTION _keep_an_owner(tenant uuid, user_id text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sutra.tenant_members m WHERE m.tenant_id = tenant AND m.user_id = _keep_an_owner.user_id
               AND m.role = 'owner')
       AND NOT EXISTS (SELECT 1 FROM sutra.tenant_members m WHERE m.tenant_id = tenant
                       AND m.user_id <> _keep_an_owner.user_id AND m.role = 'owner') THEN
        RAISE EXCEPTION 'user "%" is the last owner of the tenant', user_id USING ERRCODE = '55000',
            HINT = 'Make another member an owner first.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION _keep_an_owner(uuid, text) FROM PUBLIC;

CREATE FUNCTION add_member(user_id text, role text DEFAULT 'member', tenant text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._members_tenant(tenant, coalesce(role, 'member'));
BEGIN
    IF user_id IS NULL OR length(user_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'invalid user id' USING ERRCODE = '22023', DETAIL = 'A user id is 1 to 255 characters.';
    END IF;
    INSERT INTO sutra.tenant_members (tenant_id, user_id, role) VALUES (t, add_member.user_id, coalesce(role, 'member'));
    PERFORM sutra._audit('member.add', t, jsonb_build_object('user_id', user_id, 'role', coalesce(role, 'member')));
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'user "%" is a member of the tenant already', user_id USING ERRCODE = '42710',
        HINT = 'sutra.update_member changes a member''s role.';
END $$;

CREATE FUNCTION update_member(user_id text, role text, tenant text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._members_tenant(tenant, role);
    old text;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'invalid role "%"', role USING ERRCODE = '22023';
    END IF;
    SELECT m.role INTO old FROM sutra.tenant_members m WHERE m.tenant_id = t AND m.user_id = update_member.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user "%" is not a member of the tenant', user_id USING ERRCODE = '42704';
    END IF;
    IF old = 'owner' AND NOT sutra._caller_is_service() THEN
        RAISE EXCEPTION 'permission denied to change the owners of a tenant' USING ERRCODE = '42501',
            HINT = 'Superusers and members of sutra_service make and unmake owners.';
    END IF;
    IF role <> 'owner' THEN
        PERFORM sutra._keep_an_owner(t, user_id);
    END IF;
    UPDATE sutra.tenant_members m SET role = update_member.role, updated_at = now()
    WHERE m.tenant_id = t AND m.user_id = update_member.user_id;
    PERFORM sutra._audit('member.update', t, jsonb_build_object('user_id', user_id, 'role', role, 'was', old));
END $$;

CREATE FUNCTION remove_member(user_id text, tenant text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := sutra._members_tenant(tenant, NULL);
    old text;
BEGIN
    SELECT m.role INTO old FROM sutra.tenant_members m WHERE m.tenant_id = t AND m.user_id = remove_member.user_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF old = 'owner' AND NOT sutra._caller_is_service() THEN
        RAISE EXCEPTION 'permission denied to change the owners of a tenant' USING ERRCODE = '42501',
            HINT = 'Superusers and members of sutra_service make and unmake owners.';
    END IF;
    PERFORM sutra._keep_an_owner(t, user_id);
    DELETE FROM sutra.tenant_members m WHERE m.tenant_id = t AND m.user_id = remove_member.user_id;
    PERFORM sutra._audit('member.remove', t, jsonb_build_object('user_id', user_id, 'role', old));
    RETURN true;
END $$;

-- The members of the current tenant (any scope), or of the named tenant (sutra_service).
CREATE FUNCTION members(tenant text DEFAULT NULL)
RETURNS TABLE (user_id text, role text, scopes text[], created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid;
BEGIN
    IF tenant IS NOT NULL THEN
        PERFORM sutra._require_service('list the members of a named tenant');
        t := (sutra._tenant_row(tenant)).id;
    ELSE
        t := sutra.current_tenant('read');
    END IF;
    RETURN QUERY SELECT m.user_id, m.role, sutra.role_scopes(m.role), m.created_at, m.updated_at
    FROM sutra.tenant_members m WHERE m.tenant_id = t ORDER BY m.user_id;
END $$;
