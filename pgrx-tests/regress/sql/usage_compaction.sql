-- Compaction of metered usage: minute rows older than sutra.usage_minutes_kept (1 day) become hour
-- rows, older than sutra.usage_hours_kept (31 days) day rows; usage_summary and invoice give the
-- same totals before and after. Then the audit log's retention. Rolled back at the end.
BEGIN;
SELECT count(*) FROM (
    SELECT sutra.create_tenant('compact-a', id => '00000000-0000-0000-0000-00000000c0a1'),
           sutra.create_tenant('compact-b', id => '00000000-0000-0000-0000-00000000c0b1')) x;
CREATE TEMP TABLE c_tenants (id uuid) ON COMMIT DROP;
INSERT INTO c_tenants VALUES ('00000000-0000-0000-0000-00000000c0a1'), ('00000000-0000-0000-0000-00000000c0b1');
-- 3 hours of minutes 3 days ago; 2 days of every 7th minute 40 days ago; the last 10 minutes.
INSERT INTO sutra.usage_rollups (tenant_id, metric, minute, quantity)
SELECT t.id, m, date_trunc('hour', now() - interval '3 days', 'UTC') + i * interval '1 minute', i + 1
FROM c_tenants t, (VALUES ('statements'), ('rows_read')) y(m), generate_series(0, 179) i
UNION ALL
SELECT t.id, m, date_trunc('day', now() - interval '40 days', 'UTC') + i * interval '7 minutes', 2
FROM c_tenants t, (VALUES ('statements'), ('rows_read')) y(m), generate_series(0, 411) i
UNION ALL
SELECT t.id, m, date_trunc('minute', now()) - i * interval '1 minute', 5
FROM c_tenants t, (VALUES ('statements'), ('rows_read')) y(m), generate_series(1, 10) i;
INSERT INTO sutra.prices (metric, plan, unit_price, included, currency) VALUES ('statements', NULL, 0.01, 100, 'USD');
SELECT count(*) AS rows_before FROM sutra.usage_rollups WHERE tenant_id IN (SELECT id FROM c_tenants);
-- Totals as the reports give them: per hour, day and month, and both months' invoices.
CREATE TEMP TABLE c_totals (granularity text, tenant uuid, bucket timestamptz, metric text, quantity numeric) ON COMMIT DROP;
CREATE TEMP VIEW c_now AS
SELECT g, t.id, s.bucket, s.metric, s.quantity
FROM c_tenants t, (VALUES ('hour'), ('day'), ('month')) x(g),
     sutra.usage_summary(t.id, now() - interval '60 days', now() + interval '1 day', g) s
-- (hours only where hours are kept: older ones are compacted into days)
WHERE g <> 'hour' OR s.bucket > now() - interval '30 days'
UNION ALL
SELECT 'invoice ' || mo, t.id, NULL, i.metric, i.amount
FROM c_tenants t, (VALUES (now()::date), ((now() - interval '40 days')::date)) m(mo), sutra.invoice(t.id, mo) i;
INSERT INTO c_totals SELECT * FROM c_now;
SELECT count(*) > 0 AS have_totals FROM c_totals;
-- From the start, whatever the metering worker compacted before.
UPDATE sutra.usage_compaction SET hours_until = '-infinity', days_until = '-infinity', retained_from = '-infinity';
SELECT sutra.compact_usage() >= 720 + 1648 - 12 - 8 AS removed_enough;
-- 3 hours x 2 metrics x 2 tenants, 2 days x 4, the 40 recent minutes untouched.
SELECT count(*) AS rows_after FROM sutra.usage_rollups WHERE tenant_id IN (SELECT id FROM c_tenants);
SELECT count(*) FILTER (WHERE minute = date_trunc('hour', minute, 'UTC') AND minute < now() - interval '1 day') AS on_the_hour,
       count(*) FILTER (WHERE minute = date_trunc('day', minute, 'UTC') AND minute < now() - interval '31 days') AS on_the_day
FROM sutra.usage_rollups WHERE tenant_id IN (SELECT id FROM c_tenants);
-- The same totals, both ways.
SELECT count(*) AS changed FROM ((SELECT * FROM c_totals EXCEPT SELECT * FROM c_now)
                                 UNION ALL (SELECT * FROM c_now EXCEPT SELECT * FROM c_totals)) d;
-- A second run finds nothing to do.
SELECT sutra.compact_usage() AS removed_again;
-- Retention: with one of 10 days, the day rows of 40 days ago go.
SET LOCAL sutra.usage_retention = '10d';
SELECT sutra.compact_usage() >= 8 AS removed_old;
SELECT count(*) AS rows_kept FROM sutra.usage_rollups WHERE tenant_id IN (SELECT id FROM c_tenants);
-- The audit log's retention: off by default; with 30 days, rows older go and the trim is audited.
INSERT INTO sutra.audit_log (at, tenant_id, action, actor, session_role)
SELECT now() - interval '40 days', '00000000-0000-0000-0000-00000000c0a1', 'old.action', 'x', 'x' FROM generate_series(1, 5);
SELECT sutra.trim_audit_log() AS trimmed_by_default;
SET LOCAL sutra.audit_retention = '30d';
SELECT sutra.trim_audit_log() >= 5 AS trimmed;
SELECT count(*) AS old_left FROM sutra.audit_log WHERE at < now() - interval '30 days';
SELECT action, details ->> 'retention' AS retention FROM sutra.audit_log WHERE action = 'audit.trim';
ROLLBACK;
