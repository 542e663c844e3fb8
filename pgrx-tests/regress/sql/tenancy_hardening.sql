-- What an attacker with a SQL connection or a table of their own might try beyond the basics.
\set VERBOSITY terse
SELECT sutra.create_tenant('hard-a', id => 'aaaaaaaa-0000-0000-0000-000000000000') IS NOT NULL AS a,
       sutra.create_tenant('hard-b', id => 'bbbbbbbb-0000-0000-0000-000000000000') IS NOT NULL AS b;
CREATE ROLE regress_owner NOLOGIN;
CREATE ROLE regress_user NOLOGIN;
GRANT CREATE ON SCHEMA public TO regress_owner;
SELECT sutra.create_api_key('hard-a', 'rw', '{read,write}') AS key_a \gset

-- Partitions: each gets the policies, also those created or attached later, and reading a
-- partition directly shows only the tenant's rows.
CREATE TABLE events (id int, tenant_id uuid NOT NULL, body text) PARTITION BY LIST (tenant_id);
CREATE TABLE events_a PARTITION OF events FOR VALUES IN ('aaaaaaaa-0000-0000-0000-000000000000');
SELECT sutra.enable_tenancy('events');
CREATE TABLE events_b PARTITION OF events FOR VALUES IN ('bbbbbbbb-0000-0000-0000-000000000000');
CREATE TABLE events_rest (id int, tenant_id uuid NOT NULL, body text);
ALTER TABLE events ATTACH PARTITION events_rest DEFAULT;
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname LIKE 'sutra%') AS policies
FROM pg_class c WHERE c.relname LIKE 'events%' AND c.relkind IN ('r', 'p') ORDER BY 1;
SELECT * FROM sutra.check_tenancy('events');
INSERT INTO events VALUES (1, 'aaaaaaaa-0000-0000-0000-000000000000', 'a row'),
                          (2, 'bbbbbbbb-0000-0000-0000-000000000000', 'hidden row of b');
GRANT SELECT, UPDATE ON events, events_a, events_b, events_rest TO regress_user;
SET ROLE regress_user;
SELECT sutra.authenticate(:'key_a', session => true) IS NOT NULL AS auth;
SELECT body FROM events_b;
SELECT body FROM events_a;
UPDATE events_b SET body = 'changed';
SELECT sutra.clear_tenant();
RESET ROLE;
SELECT body FROM events ORDER BY id;

-- A context lives in one session only: it cannot be stored.
SELECT sutra.set_tenant('hard-a', session => true) IS NOT NULL AS issued;
SELECT current_setting('sutra.tenant_id') AS ctx \gset
SELECT sutra.clear_tenant();
SELECT try(format('ALTER ROLE regress_user SET sutra.tenant_id = %L', :'ctx'));
SELECT try(format('ALTER DATABASE %I SET sutra.tenant_id = %L', current_database(), :'ctx'));
SELECT try(format('CREATE FUNCTION planted() RETURNS int LANGUAGE sql SET sutra.tenant_id = %L AS ''SELECT 1''', :'ctx'));
ALTER SYSTEM SET sutra.tenant_id = :'ctx';
-- In a session it is accepted, as a Citus worker receives it.
BEGIN;
SELECT set_config('sutra.tenant_id', :'ctx', true) IS NOT NULL AS set_local;
SELECT sutra.current_tenant() = 'aaaaaaaa-0000-0000-0000-000000000000' AS is_a;
COMMIT;

-- Revoking a key ends the sessions it opened, at once.
SET ROLE regress_user;
SELECT sutra.authenticate(:'key_a', session => true) IS NOT NULL AS auth;
SELECT count(*) AS a_rows FROM events;
RESET ROLE;
SELECT sutra.revoke_api_key(sutra._key_id_of(:'key_a'));
SET ROLE regress_user;
SELECT regexp_replace(try('SELECT count(*) FROM events'), '[0-9a-f]{16}', '<id>');
SELECT sutra.clear_tenant();
RESET ROLE;

-- A temporary table belongs to one session: it cannot be a tenant table.
CREATE TEMP TABLE scratch (id int);
SELECT try($$SELECT sutra.enable_tenancy('scratch')$$);

-- Purging a tenant runs the table owner's triggers as the owner, not as a superuser.
CREATE TABLE evidence (who name, superuser boolean);
GRANT INSERT ON evidence TO PUBLIC;
SET ROLE regress_owner;
CREATE TABLE spied (id int, body text);
SELECT sutra.enable_tenancy('spied');
CREATE FUNCTION spy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.evidence SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
    RETURN OLD;
END $$;
CREATE TRIGGER spy BEFORE DELETE ON spied FOR EACH ROW EXECUTE FUNCTION spy();
RESET ROLE;
INSERT INTO spied VALUES (1, 'b', 'bbbbbbbb-0000-0000-0000-000000000000'),
                         (2, 'a', 'aaaaaaaa-0000-0000-0000-000000000000');
SELECT sutra.drop_tenant('hard-b', purge => true) IS NOT NULL AS purged;
SELECT * FROM evidence;
SELECT body FROM spied;
SELECT count(*) AS b_events_left FROM events WHERE tenant_id = 'bbbbbbbb-0000-0000-0000-000000000000';

-- COPY into a table with a BEFORE INSERT trigger is checked after the trigger, as INSERT is.
SELECT sutra.create_tenant('hard-c', id => 'cccccccc-0000-0000-0000-000000000000') IS NOT NULL AS c;
SET ROLE regress_owner;
CREATE FUNCTION retarget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.body = 'move me' THEN
        NEW.tenant_id := 'cccccccc-0000-0000-0000-000000000000';
    END IF;
    NEW.body := upper(NEW.body);
    RETURN NEW;
END $$;
CREATE TRIGGER retarget BEFORE INSERT ON spied FOR EACH ROW EXECUTE FUNCTION retarget();
GRANT INSERT, SELECT ON spied TO regress_user;
RESET ROLE;
SELECT sutra.create_api_key('hard-a', 'rw2') AS key_a2 \gset
SET ROLE regress_user;
SELECT sutra.authenticate(:'key_a2', session => true) IS NOT NULL AS auth;
COPY spied (id, body) FROM STDIN;
3	copied
\.
COPY spied (id, body) FROM STDIN;
4	move me
\.
SELECT id, body FROM spied ORDER BY id;
SELECT sutra.clear_tenant();
RESET ROLE;
SELECT count(*) AS c_rows FROM spied WHERE tenant_id = 'cccccccc-0000-0000-0000-000000000000';

DROP TABLE events, spied, evidence;
DROP FUNCTION spy(), retarget();
SELECT sutra.drop_tenant('hard-a', purge => true) IS NOT NULL AS cleanup,
       sutra.drop_tenant('hard-c', purge => true) IS NOT NULL AS cleanup;
REVOKE CREATE ON SCHEMA public FROM regress_owner;
DROP ROLE regress_owner;
DROP ROLE regress_user;
SELECT sutra.reset_auth_failures() >= 0 AS reset;
