-- Members of a tenant and their roles: who may change them, and the last owner.
\set VERBOSITY terse
SELECT sutra.create_tenant('mem-a', id => 'e3000000-0000-0000-0000-000000000000') IS NOT NULL AS a,
       sutra.create_tenant('mem-b', id => 'e4000000-0000-0000-0000-000000000000') IS NOT NULL AS b;
SELECT sutra.add_member('alice', 'owner', tenant => 'mem-a');
SELECT sutra.add_member('bob', tenant => 'mem-a');
SELECT sutra.add_member('bob', 'viewer', tenant => 'mem-b');
SELECT sutra.add_member('zoe', 'owner', tenant => 'mem-b');
SELECT user_id, role, scopes, created_at = updated_at AS unchanged FROM sutra.members('mem-a');
SELECT try($$SELECT sutra.add_member('bob', 'admin', tenant => 'mem-a')$$);
SELECT try($$SELECT sutra.add_member('carol', 'boss', tenant => 'mem-a')$$);
-- The last owner can be neither removed nor demoted; with a second owner, the first can go.
SELECT try($$SELECT sutra.remove_member('alice', tenant => 'mem-a')$$);
SELECT try($$SELECT sutra.update_member('alice', 'admin', tenant => 'mem-a')$$);
SELECT sutra.update_member('bob', 'owner', tenant => 'mem-a');
SELECT sutra.update_member('alice', 'admin', tenant => 'mem-a');
SELECT user_id, role, scopes FROM sutra.members('mem-a');
-- A tenant session with the admin scope manages its own tenant's members, but not its owners.
SELECT sutra.create_api_key('mem-a', 'admin', '{read,write,admin}') AS admin_key \gset
SELECT sutra.create_api_key('mem-a', 'writer', '{read,write}') AS writer_key \gset
CREATE ROLE regress_members NOLOGIN;
SET ROLE regress_members;
BEGIN;
SELECT sutra.authenticate(:'admin_key') IS NOT NULL AS a_admin;
SELECT sutra.add_member('carol', 'viewer');
SELECT sutra.update_member('carol', 'member');
SELECT try($$SELECT sutra.add_member('dave', 'owner')$$);
SELECT try($$SELECT sutra.update_member('carol', 'owner')$$);
SELECT try($$SELECT sutra.remove_member('bob')$$);
SELECT try($$SELECT sutra.add_member('mallory', 'admin', tenant => 'mem-b')$$);
SELECT user_id, role FROM sutra.tenant_members ORDER BY 1;
SELECT sutra.remove_member('carol') AS removed, sutra.remove_member('nobody') AS removed_nobody;
COMMIT;
BEGIN;
SELECT sutra.authenticate(:'writer_key') IS NOT NULL AS a_writer;
SELECT user_id, role FROM sutra.members();
SELECT try($$SELECT sutra.add_member('eve')$$);
COMMIT;
RESET ROLE;
SELECT action, details FROM sutra.audit_log
WHERE tenant_id = 'e3000000-0000-0000-0000-000000000000' AND action LIKE 'member.%' ORDER BY id;
-- Members go with their tenant.
SELECT sutra.drop_tenant('mem-b', purge => true) IS NOT NULL AS dropped;
SELECT count(*) AS members_of_b FROM sutra.tenant_members WHERE tenant_id = 'e4000000-0000-0000-0000-000000000000';
