-- Settings and feature flags: plan defaults, tenant overrides key by key, the values in force,
-- who may change which key, and rules on values.
\set VERBOSITY terse
UPDATE sutra.plans SET settings = '{"execution_mode": "hosted", "max_tokens": 1000}',
                       features = '{"beta_search": false, "exports": true}',
                       tenant_editable = '{execution_mode,beta_search}'
WHERE name = 'pro';
INSERT INTO sutra.setting_rules VALUES ('execution_mode', 'string', '["hosted", "byo_key"]', 'where model calls run'),
                                       ('max_tokens', 'number', NULL, 'most tokens a request');
SELECT sutra.create_tenant('set-a', plan => 'pro', id => 'e1000000-0000-0000-0000-000000000000') IS NOT NULL AS a,
       sutra.create_tenant('set-b', plan => 'pro', id => 'e2000000-0000-0000-0000-000000000000') IS NOT NULL AS b;
SELECT sutra.create_api_key('set-a', 'admin', '{read,write,admin}') AS admin_key \gset
SELECT sutra.create_api_key('set-a', 'writer', '{read,write}') AS writer_key \gset
CREATE ROLE regress_settings NOLOGIN;
SET ROLE regress_settings;
BEGIN;
SELECT sutra.authenticate(:'admin_key') IS NOT NULL AS a_admin;
SELECT sutra.setting('execution_mode') AS mode, sutra.setting('max_tokens') AS max_tokens,
       sutra.setting('missing') AS missing, sutra.feature_enabled('exports') AS exports,
       sutra.feature_enabled('beta_search') AS beta, sutra.feature_enabled('missing') AS missing_flag;
-- A tenant admin changes the keys its plan marks tenant-editable, one at a time; the change reads
-- back at once.
SELECT sutra.set_setting('execution_mode', '"byo_key"');
SELECT sutra.set_feature('beta_search', true);
SELECT sutra.setting('execution_mode') AS mode, sutra.feature_enabled('beta_search') AS beta;
SELECT try($$SELECT sutra.set_setting('execution_mode', '"local"')$$);
SELECT try($$SELECT sutra.set_setting('execution_mode', '7')$$);
SELECT try($$SELECT sutra.set_setting('max_tokens', '5')$$);
SELECT try($$SELECT sutra.set_feature('exports', false)$$);
SELECT try($$SELECT sutra.set_setting('execution_mode', '"byo_key"', tenant => 'set-b')$$);
SELECT try($$SELECT sutra.set_setting('bad key!', '1')$$);
SELECT * FROM sutra.effective_settings('set-a');
SELECT try($$SELECT * FROM sutra.effective_settings('set-b')$$);
COMMIT;
-- Without the admin scope: reads, no changes.
BEGIN;
SELECT sutra.authenticate(:'writer_key') IS NOT NULL AS a_writer;
SELECT sutra.feature_enabled('beta_search') AS beta;
SELECT try($$SELECT sutra.set_setting('execution_mode', '"hosted"')$$);
COMMIT;
SELECT try($$SELECT sutra.feature_enabled('beta_search')$$);
RESET ROLE;
-- sutra_service changes any key of any tenant; unset goes back to the plan's value; the other
-- tenant of the plan keeps the plan's values.
SELECT sutra.set_setting('max_tokens', '2000', tenant => 'set-a');
SELECT try($$SELECT sutra.set_setting('max_tokens', '"many"', tenant => 'set-a')$$);
SELECT sutra.unset_setting('execution_mode', tenant => 'set-a');
SELECT sutra.set_feature('beta_search', NULL, tenant => 'set-a');
SELECT key, kind, override_value, effective_value FROM sutra.effective_settings('set-a');
SELECT key, kind, override_value, effective_value FROM sutra.effective_settings('set-b');
-- A plan's change applies to its tenants at once.
SELECT sutra.set_tenant('set-b', session => true) IS NOT NULL AS b;
SELECT sutra.feature_enabled('exports') AS exports_before;
UPDATE sutra.plans SET features = features || '{"exports": false}' WHERE name = 'pro';
SELECT sutra.feature_enabled('exports') AS exports_after;
SELECT sutra.clear_tenant();
SELECT action, details FROM sutra.audit_log
WHERE tenant_id = 'e1000000-0000-0000-0000-000000000000' AND action IN ('setting.set', 'setting.unset', 'feature.set')
ORDER BY id;
UPDATE sutra.plans SET settings = '{}', features = '{}', tenant_editable = '{}' WHERE name = 'pro';
DELETE FROM sutra.setting_rules;
