-- Limits and their merge, application usage events, rollups, prices, summaries and invoices.
\set VERBOSITY terse
SET timezone = 'UTC';
SELECT sutra.create_tenant('use-a', plan => 'pro', id => 'a0000000-0000-0000-0000-000000000000',
    quota_overrides => '{"rows_total": 50, "connections": null, "burst": 0, "monthly": {"statements": 1000}}',
    settings => '{"stripe_customer_id": "cus_123"}') IS NOT NULL AS a,
       sutra.create_tenant('use-b', id => 'b0000000-0000-0000-0000-000000000000') IS NOT NULL AS b;

-- An override replaces the plan's value; null or 0 lifts the limit; monthly merges by key.
SELECT * FROM sutra.effective_limits('use-a');
SELECT * FROM sutra.effective_limits('b0000000-0000-0000-0000-000000000000'::uuid) WHERE limit_name = 'rows_total';
UPDATE sutra.plans SET limits = limits || '{"rows_total": 20000000}' WHERE name = 'pro';
SELECT effective_value FROM sutra.effective_limits('use-a') WHERE limit_name = 'rows_total';
SELECT sutra.update_tenant('use-a', quota_overrides => '{}') IS NOT NULL AS overrides_dropped;
SELECT effective_value FROM sutra.effective_limits('use-a') WHERE limit_name = 'rows_total';

-- Application events: deduplicated per tenant by idempotency key, partitioned by month.
CREATE ROLE regress_usage NOLOGIN IN ROLE sutra_service;
SET ROLE regress_usage;
SELECT sutra.set_tenant('use-a', scopes => '{read,write}', session => true) IS NOT NULL AS a_writer;
SELECT sutra.record_usage('api.call', 2, '{"path": "/search"}', 'req-1', '2026-10-03 10:00+00') AS recorded,
       sutra.record_usage('api.call', 2, '{"path": "/search"}', 'req-1', '2026-10-03 10:00+00') AS retried,
       sutra.record_usage('api.call', 1, '{}', 'req-2', '2026-10-20 08:30+00') AS recorded,
       sutra.record_usage('tokens', 1500, occurred_at => '2026-10-21 00:00+00') AS recorded,
       sutra.record_usage('tokens', 700, occurred_at => '2026-11-02 00:00+00') AS recorded;
SELECT try($$SELECT sutra.record_usage('bad type!', 1)$$);
SELECT try($$SELECT sutra.record_usage('api.call', -1)$$);
SELECT try($$SELECT count(*) FROM sutra.usage_events$$);
SELECT sutra.set_tenant('use-b', scopes => '{write}', session => true) IS NOT NULL AS b_writer;
SELECT sutra.record_usage('api.call', 5, idempotency_key => 'req-1', occurred_at => '2026-10-03 11:00+00') AS same_key_other_tenant;
SELECT sutra.clear_tenant();
SELECT sutra.record_usage('api.call', 1, idempotency_key => 'backfill-1', occurred_at => '2026-10-04 00:00+00',
                          tenant => 'use-b') AS service_recorded;
RESET ROLE;
-- The months of these events have partitions (and so may the coming month: record_usage makes it ahead).
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'sutra.usage_events'::regclass AND c.relname < 'usage_events_202612' ORDER BY 1;
SELECT tableoid::regclass, tenant_id, event_type, quantity, occurred_at FROM sutra.usage_events ORDER BY occurred_at, tenant_id;

-- What an event may be, and when it may have happened. Nothing refused is written.
SELECT sutra.create_tenant('use-c', id => 'c0000000-0000-0000-0000-000000000000',
    quota_overrides => '{"monthly": {"tokens": 10}}') IS NOT NULL AS c;
SELECT sutra.create_api_key('use-c', 'writer', '{read,write}') AS writer_key \gset
CREATE ROLE regress_usage_writer NOLOGIN;
SHOW sutra.usage_event_max_age;
SHOW sutra.usage_event_max_future;
SET ROLE regress_usage_writer;
BEGIN;
SELECT sutra.authenticate(:'writer_key') IS NOT NULL AS c_writer;
-- A quantity is a finite number from 0 to 10^15.
SELECT q, try(format($$SELECT sutra.record_usage('api.call', %L)$$, q))
FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '-1', NULL, '1000000000000001', '0', '1000000000000000']) q;
-- An event type is 1 to 100 letters, digits and _ . : -
SELECT try(format($$SELECT sutra.record_usage(%L, 1)$$, repeat('e', 101)));
SELECT try(format($$SELECT sutra.record_usage(%L, 1)$$, repeat('e', 100)));
SELECT try($$SELECT sutra.record_usage('', 1)$$);
-- An idempotency key is 1 to 255 characters.
SELECT try(format($$SELECT sutra.record_usage('api.call', 1, idempotency_key => %L)$$, repeat('k', 256)));
SELECT try(format($$SELECT sutra.record_usage('api.call', 1, idempotency_key => %L)$$, repeat('k', 255)));
SELECT try($$SELECT sutra.record_usage('api.call', 1, idempotency_key => '')$$);
-- Properties are a JSON object of at most 8192 bytes (as jsonb).
SELECT try(format($$SELECT sutra.record_usage('api.call', 1, %L::jsonb)$$, jsonb_build_object('blob', repeat('x', 8200))));
SELECT try(format($$SELECT sutra.record_usage('api.call', 1, %L::jsonb)$$, jsonb_build_object('blob', repeat('x', 8000))));
SELECT try($$SELECT sutra.record_usage('api.call', 1, '[1, 2]')$$);
-- A tenant session dates events from 35 days back to 1 day ahead (by default).
SELECT w, try(format($$SELECT sutra.record_usage('api.call', 1, occurred_at => %L)$$, v))
FROM (VALUES ('infinity', 'infinity'::timestamptz), ('-infinity', '-infinity'), ('year 1', '0001-01-01 00:00+00'),
             ('year 1999', '1999-06-01 00:00+00'), ('year 294000', '294000-01-01 00:00+00'),
             ('2 days ahead', now() + interval '2 days'), ('40 days back', now() - interval '40 days'),
             ('12 hours ahead', now() + interval '12 hours'), ('34 days back', now() - interval '34 days')) x(w, v);
-- Only superusers set the window.
SELECT try($$SET sutra.usage_event_max_age = '400d'$$);
SELECT try($$SELECT set_config('sutra.usage_event_max_future', '400d', true)$$);
COMMIT;
RESET ROLE;
SET sutra.usage_event_max_age = '50d';
SET ROLE regress_usage_writer;
BEGIN;
SELECT sutra.authenticate(:'writer_key') IS NOT NULL AS c_writer;
SELECT try(format($$SELECT sutra.record_usage('api.call', 1, occurred_at => %L)$$, now() - interval '40 days')) AS wider_window;
COMMIT;
RESET ROLE;
RESET sutra.usage_event_max_age;
-- sutra_service backfills back to 2000-01-01, and no further ahead than anyone.
SET ROLE regress_usage;
SELECT w, try(format($$SELECT sutra.record_usage('api.call', 1, occurred_at => %L, tenant => 'use-c')$$, v))
FROM (VALUES ('infinity', 'infinity'::timestamptz), ('-infinity', '-infinity'), ('year 1', '0001-01-01 00:00+00'),
             ('just before 2000', '1999-12-31 23:59:59.999999+00'), ('2 days ahead', now() + interval '2 days'),
             ('2000-01-01', '2000-01-01 00:00+00'), ('40 days back', now() - interval '40 days')) x(w, v);
RESET ROLE;
-- What was recorded: the accepted calls only, and no partition outside the window.
SELECT count(*) AS events, sum(quantity) AS quantity, max(length(idempotency_key)) AS longest_key,
       max(pg_column_size(properties)) < 8192 AS small_properties,
       min(occurred_at) AS earliest, max(occurred_at) < now() + interval '1 day' AS none_ahead
FROM sutra.usage_events WHERE tenant_id = 'c0000000-0000-0000-0000-000000000000';
SELECT count(*) AS partitions_outside_window FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'sutra.usage_events'::regclass
  AND (c.relname !~ '^usage_events_\d{6}$' OR c.relname < 'usage_events_200001'
       OR c.relname > 'usage_events_' || to_char(date_trunc('month', now()) + interval '1 month', 'YYYYMM'));

-- A monthly cap is never overshot; a retried event at the cap is still recognised as a retry.
SET ROLE regress_usage_writer;
BEGIN;
SELECT sutra.authenticate(:'writer_key') IS NOT NULL AS c_writer;
SELECT sutra.record_usage('tokens', 5, idempotency_key => 'tok-1') AS first,
       sutra.record_usage('tokens', 5, idempotency_key => 'tok-2') AS second;
SELECT try($$SELECT sutra.record_usage('tokens', 5, idempotency_key => 'tok-3')$$);
SELECT try($$SELECT sutra.record_usage('tokens', 0.5)$$);
SELECT sutra.record_usage('tokens', 5, idempotency_key => 'tok-2') AS retried_at_cap;
SELECT sutra.record_usage('tokens', 0) AS nothing_more;
COMMIT;
-- The locks that make partitions and check caps are sutra's own: no other role can take them.
SELECT try($$LOCK TABLE sutra.usage_events IN SHARE UPDATE EXCLUSIVE MODE$$);
SELECT try($$SELECT 1 FROM sutra.usage_totals FOR UPDATE$$);
SET ROLE regress_usage;
SELECT try($$LOCK TABLE sutra.usage_events IN SHARE UPDATE EXCLUSIVE MODE$$);
RESET ROLE;

-- Many events at once (record_usage_batch): the same checks, deduplication within and before the
-- batch, caps, and all or nothing; and COPY through sutra.usage_ingest, one record_usage a row.
SET ROLE regress_usage_writer;
BEGIN;
SELECT sutra.authenticate(:'writer_key') IS NOT NULL AS c_writer;
SELECT sutra.record_usage_batch('[{"event_type": "batch.call", "idempotency_key": "b-1"},
                                  {"event_type": "batch.call", "quantity": 2, "idempotency_key": "b-1"},
                                  {"event_type": "batch.call", "quantity": 3, "properties": {"model": "small"}}]') AS recorded;
SELECT sutra.record_usage_batch('[{"event_type": "batch.call", "idempotency_key": "b-1"}]') AS retried;
SELECT try($$SELECT sutra.record_usage_batch('[{"event_type": "batch.call"}, {"event_type": "bad type!"}]')$$);
SELECT try($$SELECT sutra.record_usage_batch('[{"event_type": "batch.call", "quantity": -1}]')$$);
SELECT try($$SELECT sutra.record_usage_batch('[{"event_type": "batch.call", "occurred_at": "1999-01-01"}]')$$);
SELECT try($$SELECT sutra.record_usage_batch('[{"event_type": "batch.call", "extra": 1}]')$$);
SELECT try($$SELECT sutra.record_usage_batch('{"event_type": "batch.call"}')$$);
-- use-c is at its monthly cap of 10 tokens: the whole batch is refused.
SELECT try($$SELECT sutra.record_usage_batch('[{"event_type": "batch.call"}, {"event_type": "tokens", "quantity": 1}]')$$);
COPY sutra.usage_ingest (event_type, quantity, idempotency_key) FROM STDIN;
batch.call	4	copy-1
batch.call	4	copy-1
batch.call	5	copy-2
\.
COMMIT;
RESET ROLE;
SELECT quantity, properties, idempotency_key FROM sutra.usage_events
WHERE tenant_id = 'c0000000-0000-0000-0000-000000000000' AND event_type = 'batch.call' ORDER BY quantity;

-- Daily caps, caps on the priced cost and soft caps, each checked against a running total.
SELECT sutra.create_tenant('use-d', id => 'd0000000-0000-0000-0000-000000000000',
    quota_overrides => '{"daily": {"gpu.seconds": 100}, "monthly": {"images": {"cap": 10, "soft": true}},
                         "monthly_cost": 2, "soft_threshold": 0.5}') IS NOT NULL AS d;
INSERT INTO sutra.prices (metric, unit_price, included) VALUES ('gpu.seconds', 0.01, 50);
SELECT limit_name, plan_value, override_value, effective_value FROM sutra.effective_limits('use-d')
WHERE limit_name ~ '^(daily|monthly)';
-- 100 gpu.seconds a day: warned at 50, refused past 100; the next day has a total of its own.
SELECT sutra.record_usage('gpu.seconds', 60, occurred_at => '2026-10-05 10:00+00', tenant => 'use-d') AS day1;
SELECT sutra.record_usage('gpu.seconds', 40, occurred_at => '2026-10-05 11:00+00', tenant => 'use-d') AS day1_at_cap;
SELECT try($$SELECT sutra.record_usage('gpu.seconds', 1, occurred_at => '2026-10-05 12:00+00', tenant => 'use-d')$$);
SELECT sutra.record_usage('gpu.seconds', 100, occurred_at => '2026-10-06 10:00+00', tenant => 'use-d') AS day2;
-- The month's bill for gpu.seconds: 0.01 each beyond 50, so 1.50 after 200; warned at 1.00 of 2,
-- and 60 more (2.10) is refused by the cost cap although the day's cap allows it.
SELECT try($$SELECT sutra.record_usage('gpu.seconds', 60, occurred_at => '2026-10-07 10:00+00', tenant => 'use-d')$$);
SELECT sutra.record_usage('gpu.seconds', 50, occurred_at => '2026-10-07 10:00+00', tenant => 'use-d') AS cost_at_cap;
-- A soft cap warns at the threshold and when exceeded, and refuses nothing.
SELECT sutra.record_usage('images', n, occurred_at => '2026-10-08 10:00+00', tenant => 'use-d') AS recorded
FROM unnest(ARRAY[4, 2, 5, 5]) n;
SELECT key, period, period_start, quantity FROM sutra.usage_totals
WHERE tenant_id = 'd0000000-0000-0000-0000-000000000000' ORDER BY 1, 2, 3;
SELECT action, details FROM sutra.audit_log
WHERE tenant_id = 'd0000000-0000-0000-0000-000000000000' AND action LIKE 'usage.%' ORDER BY id;
-- New limits drop the tenant's totals; the next capped event sums its total from the events. On
-- 2026-10-07 the events added 0.50 to the bill (50 gpu.seconds, all beyond the month's 50 included).
SELECT sutra.update_tenant('use-d', quota_overrides => '{"monthly": {"images": 100}, "daily_cost": 1}') IS NOT NULL AS changed;
SELECT count(*) AS totals_left FROM sutra.usage_totals WHERE tenant_id = 'd0000000-0000-0000-0000-000000000000';
SELECT sutra.record_usage('images', 1, occurred_at => '2026-10-09 10:00+00', tenant => 'use-d') AS recorded;
SELECT sutra.record_usage('gpu.seconds', 40, occurred_at => '2026-10-07 12:00+00', tenant => 'use-d') AS day3;
SELECT try($$SELECT sutra.record_usage('gpu.seconds', 20, occurred_at => '2026-10-07 13:00+00', tenant => 'use-d')$$);
SELECT key, period, period_start, quantity FROM sutra.usage_totals
WHERE tenant_id = 'd0000000-0000-0000-0000-000000000000' ORDER BY 1, 2, 3;
-- A cap that is neither a number nor {"cap": N, "soft": true} is an error, not unlimited.
SELECT sutra.update_tenant('use-d', quota_overrides => '{"daily": {"images": "lots"}}') IS NOT NULL AS changed;
SELECT try($$SELECT sutra.record_usage('images', 1, occurred_at => '2026-10-09 11:00+00', tenant => 'use-d')$$);
DELETE FROM sutra.prices WHERE metric = 'gpu.seconds';

-- Export shapes
SELECT event_name, CASE WHEN identifier ~ '^req-' THEN identifier ELSE '<event id>' END AS identifier, "timestamp", payload FROM sutra.usage_events_stripe
WHERE tenant_id = 'a0000000-0000-0000-0000-000000000000' ORDER BY "timestamp";
SELECT specversion, type, source, subject, time, data FROM sutra.usage_events_cloudevents
WHERE subject = 'a0000000-0000-0000-0000-000000000000' ORDER BY time LIMIT 1;

-- Metered usage (as the metering worker writes it), summaries and an invoice.
INSERT INTO sutra.usage_rollups VALUES
    ('a0000000-0000-0000-0000-000000000000', 'statements', '2026-10-03 10:00+00', 400),
    ('a0000000-0000-0000-0000-000000000000', 'statements', '2026-10-03 10:01+00', 700),
    ('a0000000-0000-0000-0000-000000000000', 'rows_written', '2026-10-03 10:01+00', 90),
    ('b0000000-0000-0000-0000-000000000000', 'statements', '2026-10-03 10:00+00', 99999);
SELECT * FROM sutra.usage_summary('use-a', '2026-10-01', '2026-11-01', 'hour');
SELECT * FROM sutra.usage_summary('use-a', '2026-10-01', '2027-01-01', 'month');
SELECT try($$SELECT * FROM sutra.usage_summary('use-a', '2026-10-01', '2026-11-01', 'week')$$);
-- Application events split by a property; metered usage has none.
SELECT * FROM sutra.usage_summary('use-a', '2026-10-01', '2026-11-01', 'month', group_by => 'path');
-- Metered usage in the export views, once its minute is over, each minute with a stable identifier.
SELECT event_name, identifier, "timestamp", payload FROM sutra.usage_events_stripe
WHERE tenant_id = 'a0000000-0000-0000-0000-000000000000' AND event_name LIKE 'sutra.%' ORDER BY identifier;
SELECT type, id, subject, time, data FROM sutra.usage_events_cloudevents
WHERE subject = 'a0000000-0000-0000-0000-000000000000' AND type LIKE 'sutra.%' ORDER BY id;
INSERT INTO sutra.prices (metric, plan, unit_price, included, unit) VALUES
    ('statements', NULL, 0.001, 1000, 'statement'),
    ('statements', 'pro', 0.0005, 500, 'statement'),
    ('api.call', NULL, 0.01, 0, 'call'),
    ('tokens', 'pro', 0.002, 1000, 'token');
SELECT * FROM sutra.invoice('use-a', '2026-10-01');
SELECT * FROM sutra.invoice('b0000000-0000-0000-0000-000000000000'::uuid, '2026-10-15');

-- A tenant reads its own usage with the admin scope, never another tenant's.
CREATE ROLE regress_usage_app NOLOGIN;
SELECT sutra.create_api_key('use-a', 'admin', '{read,admin}') AS admin_key \gset
SET ROLE regress_usage_app;
SELECT sutra.authenticate(:'admin_key', session => true) IS NOT NULL AS admin;
SELECT count(*) AS own_events, bool_and(tenant_id = 'a0000000-0000-0000-0000-000000000000') AS only_own FROM sutra.usage_events;
SELECT count(*) AS own_rollups FROM sutra.usage_rollups;
SELECT count(*) AS own_limits FROM sutra.effective_limits('use-a');
SELECT try($$SELECT * FROM sutra.effective_limits('use-b')$$);
SELECT try($$SELECT * FROM sutra.invoice('use-b', '2026-10-01')$$);
SELECT try($$INSERT INTO sutra.usage_rollups VALUES ('a0000000-0000-0000-0000-000000000000', 'statements', now(), -5)$$);
SELECT sutra.clear_tenant();
RESET ROLE;

DELETE FROM sutra.prices;
-- Purging a tenant removes its usage too.
SELECT sutra.drop_tenant('use-a', purge => true) IS NOT NULL AS purged;
SELECT (SELECT count(*) FROM sutra.usage_events WHERE tenant_id = 'a0000000-0000-0000-0000-000000000000') AS events,
       (SELECT count(*) FROM sutra.usage_event_keys WHERE tenant_id = 'a0000000-0000-0000-0000-000000000000') AS keys,
       (SELECT count(*) FROM sutra.usage_rollups WHERE tenant_id = 'a0000000-0000-0000-0000-000000000000') AS rollups,
       (SELECT count(*) FROM sutra.usage_rollups WHERE tenant_id = 'b0000000-0000-0000-0000-000000000000') AS b_rollups_kept;
SELECT sutra.drop_tenant('use-b', purge => true) IS NOT NULL AS cleanup,
       sutra.drop_tenant('use-c', purge => true) IS NOT NULL AS cleanup;
DROP ROLE regress_usage, regress_usage_app, regress_usage_writer;
