-- Report benchmark data: 1,000,000 payments over two years (2024-2025, in time order), their
-- events and status history, generated with SQL directly into the tables (no ingest).
\set ON_ERROR_STOP on
\timing on
SET synchronous_commit = off;
SELECT payments.register_provider(n, k) FROM (VALUES ('stripe', 'stripe'), ('paynow', 'paynow'), ('paypal-live', 'standard')) AS v(n, k);

CREATE TEMP TABLE gen AS
SELECT i,
	   timestamptz '2024-01-01 00:00Z' + (i - 1) * (interval '731 days' / 1000000) + (hashint4(i) % 60) * interval '1 second' AS t,
	   (ARRAY['stripe', 'paynow', 'paypal-live'])[1 + abs(hashint4(i * 3)) % 3] AS provider,
	   abs(hashint4(i * 5)) % 100 AS r_cur,
	   abs(hashint4(i * 7)) % 100 AS r_status,
	   abs(hashint4(i * 11)) % 100000 AS donor,
	   abs(hashint4(i * 13)) % 10000 AS r_amount
  FROM generate_series(1, 1000000) AS i;

INSERT INTO payments.events (provider, event_id, event_type, event_at, received_at, body, payload, headers, state, attempts)
SELECT g.provider, 'evt_' || g.i, 'payment.succeeded', g.t, g.t + interval '2 seconds',
	   convert_to('{"id":"evt_' || g.i || '","amount":' || g.r_amount || '}', 'UTF8'),
	   jsonb_build_object('id', 'evt_' || g.i, 'amount', g.r_amount),
	   '{"content-type":"application/json"}', 'applied', 1
  FROM gen g ORDER BY g.i;

INSERT INTO payments.payments (provider, provider_ref, reference, status, amount, currency, amount_refunded, fee, method,
							   donor_name, donor_phone, donor_email, country, paid_at, status_at, created_at, updated_at)
SELECT g.provider, 'pay_' || g.i, 'ref-' || g.i, s.status,
	   c.amount, c.currency,
	   CASE s.status WHEN 'refunded' THEN c.amount WHEN 'partially_refunded' THEN round(c.amount / 4, c.e) ELSE 0 END,
	   round(c.amount * 0.029, c.e),
	   CASE g.provider WHEN 'paynow' THEN (ARRAY['ecocash', 'onemoney', 'card'])[1 + g.r_amount % 3]
					   WHEN 'stripe' THEN 'card' ELSE 'paypal' END,
	   'Donor ' || g.donor,
	   CASE WHEN g.donor % 10 BETWEEN 6 AND 8 THEN (263770000000 + g.donor)::text END,
	   CASE WHEN g.donor % 10 < 6 THEN 'donor' || g.donor || '@example.org' END,
	   'ZW',
	   CASE WHEN s.status NOT IN ('pending', 'failed', 'cancelled') THEN g.t + interval '1 second' END,
	   g.t + interval '1 second', g.t, g.t
  FROM gen g
 CROSS JOIN LATERAL (SELECT CASE WHEN g.r_status < 80 THEN 'paid' WHEN g.r_status < 88 THEN 'failed'
								 WHEN g.r_status < 90 THEN 'pending' WHEN g.r_status < 93 THEN 'cancelled'
								 WHEN g.r_status < 96 THEN 'refunded' WHEN g.r_status < 98 THEN 'partially_refunded'
								 ELSE 'disputed' END AS status) AS s
 CROSS JOIN LATERAL (SELECT x.currency, x.e, round((1 + g.r_amount) * x.unit, x.e) AS amount
					   FROM (SELECT CASE WHEN g.r_cur < 70 THEN 'USD' WHEN g.r_cur < 85 THEN 'ZWG'
										 WHEN g.r_cur < 95 THEN 'EUR' ELSE 'UGX' END AS currency) AS cc
					   CROSS JOIN LATERAL (SELECT cc.currency, CASE cc.currency WHEN 'UGX' THEN 0 ELSE 2 END AS e,
												  CASE cc.currency WHEN 'UGX' THEN 37 WHEN 'ZWG' THEN 0.27 ELSE 0.01 END AS unit) AS x) AS c
 ORDER BY g.i;

-- receipts: gapless per day in time order, as the state machine would have issued them
INSERT INTO payments.receipts (receipt_no, payment_id)
SELECT 'LP-' || to_char(x.day, 'YYYYMMDD') || '-' || lpad(x.n::text, 6, '0'), x.id
  FROM (SELECT q.id, payments.receipt_day(q.paid_at) AS day,
			   row_number() OVER (PARTITION BY payments.receipt_day(q.paid_at) ORDER BY q.paid_at, q.id) AS n
		  FROM payments.payments q WHERE q.paid_at IS NOT NULL) AS x;
INSERT INTO payments.receipt_counters (prefix, day, last_no)
SELECT 'LP', payments.receipt_day(paid_at), count(*) FROM payments.payments WHERE paid_at IS NOT NULL GROUP BY 2;

-- in time order, first statuses and the later refunds and disputes together, as a server appends
-- them. Inserted as two statements (the refunds after all the first statuses), the table's layout
-- and so its BRIN ranges on status_at differed between runs: daily_report's scan of the day's
-- refunds read 445 pages in one make bench and 4,413 in the next (60-74 ms, over its goal of
-- 50); in time order it reads about 200
INSERT INTO payments.status_history (payment_id, from_status, to_status, event_id, status_at, recorded_at)
SELECT h.payment_id, h.from_status, h.to_status, h.event_id, h.status_at, h.status_at
  FROM (SELECT p.id, NULL, CASE WHEN p.paid_at IS NOT NULL THEN 'paid' ELSE p.status END, p.id, p.created_at
		  FROM payments.payments p
		UNION ALL
		SELECT p.id, 'paid', p.status, NULL, p.created_at + interval '3 days'
		  FROM payments.payments p WHERE p.status IN ('refunded', 'partially_refunded', 'disputed'))
	   AS h (payment_id, from_status, to_status, event_id, status_at)
 ORDER BY h.status_at, h.payment_id;

-- the money given back, as apply_change records it, at the refund's time
INSERT INTO payments.refunds (payment_id, amount, refunded_at, recorded_at)
SELECT p.id, payments.refunded_total(p.status, p.amount, p.amount_refunded), p.created_at + interval '3 days',
	   p.created_at + interval '3 days'
  FROM payments.payments p
 WHERE p.status IN ('refunded', 'partially_refunded') AND payments.refunded_total(p.status, p.amount, p.amount_refunded) > 0
 ORDER BY 3, 1;

INSERT INTO payments.fx_rates (day, currency, rate)
SELECT d::date, c, CASE c WHEN 'EUR' THEN 1.08 WHEN 'ZWG' THEN 0.037 ELSE 0.00027 END
  FROM generate_series(date '2024-01-01', date '2025-12-31', '1 day') AS d, unnest(ARRAY['EUR', 'ZWG', 'UGX']) AS c
 WHERE d::date <> date '2025-03-01';	-- one missing day, to show it is reported

VACUUM (ANALYZE) payments.payments, payments.events, payments.status_history, payments.refunds, payments.fx_rates;
SELECT pg_size_pretty(pg_total_relation_size('payments.payments')) AS payments_size,
	   pg_size_pretty(pg_total_relation_size('payments.events')) AS events_size,
	   (SELECT count(*) FROM payments.payments) AS payments, (SELECT count(*) FROM payments.events) AS events;
