-- payments.ingest_batch, the shim's group commit: one call for the deliveries that arrive
-- together.  The same deliveries stored one by one with payments.ingest (to provider batch-one)
-- and as one batch (to batch-set) must give the same answers and the same payments, events,
-- history and receipts, whichever path each event takes inside the batch (the set statement,
-- settled alone after it, stored alone when the set fails, or not stored at all).
\set SHOW_CONTEXT never

CREATE SCHEMA tb;
SELECT payments.register_provider('batch-one', 'stripe', '{}');
SELECT payments.register_provider('batch-set', 'stripe', '{}');
SELECT payments.add_secret('batch-one', 'whsec_batch') IS NOT NULL AS added;
SELECT payments.add_secret('batch-set', 'whsec_batch') IS NOT NULL AS added;

-- a Stripe event signed now with a secret, with a credential header that must not be stored
CREATE FUNCTION tb.signed(evt text, etype text, obj jsonb, ts bigint, secret text DEFAULT 'whsec_batch')
RETURNS TABLE (headers jsonb, body bytea) LANGUAGE sql AS $$
	WITH b AS (
		SELECT convert_to(jsonb_build_object('id', evt, 'object', 'event', 'type', etype, 'created', ts,
					'data', jsonb_build_object('object', obj))::text, 'UTF8') AS b,
			   floor(extract(epoch FROM clock_timestamp()))::bigint AS now_s)
	SELECT jsonb_build_object('stripe-signature', 't=' || now_s || ',v1=' ||
				encode(hmac(convert_to(now_s || '.', 'UTF8') || b, secret::bytea, 'sha256'), 'hex'),
				'authorization', 'Bearer not-to-be-stored'), b
	  FROM b
$$;
CREATE FUNCTION tb.pi(id text, amount bigint, currency text DEFAULT 'usd') RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('id', id, 'object', 'payment_intent', 'amount', amount, 'currency', currency,
		'payment_method_types', '["card"]'::jsonb, 'receipt_email', 'chipo@example.org',
		'metadata', jsonb_build_object('order_id', 'ORD-' || id, 'donor_name', 'Chipo Dube'))
$$;
CREATE FUNCTION tb.charge(pi text, amount bigint, refunded bigint DEFAULT 0) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('id', 'ch_' || pi, 'object', 'charge', 'payment_intent', pi, 'amount', amount,
		'amount_refunded', refunded, 'currency', 'usd', 'payment_method_details', '{"type":"card"}'::jsonb)
$$;

-- deliveries in arrival order; known: to the provider under test, else to one that does not exist
CREATE TABLE tb.deliveries (n integer PRIMARY KEY, known boolean NOT NULL, headers jsonb, body bytea);
-- both providers already know pi_bt_old (paid) and evt_bt_old
SELECT provider, i.outcome
  FROM unnest(ARRAY['batch-one', 'batch-set']) AS provider,
	   tb.signed('evt_bt_old', 'payment_intent.succeeded', tb.pi('pi_bt_old', 900), 1718000000) s,
	   payments.ingest(provider, s.headers, s.body) i;

-- the batch: tb.run(provider) stores it one by one, tb.run_batch(provider) with one call
CREATE FUNCTION tb.plan() RETURNS void LANGUAGE sql AS $$
	TRUNCATE tb.deliveries;
	INSERT INTO tb.deliveries (n, known, headers, body)
	SELECT d.n, d.known, s.headers, s.body
	  FROM (VALUES
		-- a new paid payment: created by the set statement, receipt at commit
		(1, true, 'evt_b1', 'payment_intent.succeeded', tb.pi('pi_b1', 2500), 1718000100::bigint),
		-- a new pending payment, then its charge in the same batch (settled alone after the set)
		(2, true, 'evt_b2', 'payment_intent.processing', tb.pi('pi_b2', 1000), 1718000100),
		(3, true, 'evt_b1', 'payment_intent.succeeded', tb.pi('pi_b1', 2500), 1718000100),	-- again: duplicate
		(4, true, 'evt_b3', 'customer.created', '{"id": "cus_1", "object": "customer"}', 1718000100),
		(5, true, 'evt_b4', 'charge.succeeded', tb.charge('pi_b2', 1000), 1718000200),
		-- a refund of a payment not known yet: stored, to be retried
		(6, true, 'evt_b5', 'charge.refunded', tb.charge('pi_unknown', 700, 700), 1718000200),
		-- a currency we do not know: stored with the error
		(7, true, 'evt_b6', 'payment_intent.succeeded', tb.pi('pi_b6', 100, 'zzz'), 1718000200),
		-- a payment that existed before the batch: disputed
		(8, true, 'evt_b7', 'charge.dispute.created', '{"id": "dp_1", "object": "dispute", "payment_intent": "pi_bt_old"}', 1718000300),
		(9, true, 'evt_bt_old', 'payment_intent.succeeded', tb.pi('pi_bt_old', 900), 1718000000),	-- stored before: duplicate
		(11, false, 'evt_b9', 'payment_intent.succeeded', tb.pi('pi_b9', 300), 1718000300),	-- unknown provider
		(12, true, 'evt_b10', 'payment_intent.succeeded', tb.pi('pi_b10', 400), 1718000300),
		-- a new payment whose first news has part of it given back already: its refund is recorded
		(14, true, 'evt_b11', 'charge.succeeded', tb.charge('pi_b11', 1000, 300), 1718000300)
	  ) AS d (n, known, evt, etype, obj, ts), tb.signed(d.evt, d.etype, d.obj, d.ts) s;
	-- a wrong signature, and a delivery without a body (an error for it alone)
	INSERT INTO tb.deliveries (n, known, headers, body)
	SELECT 10, true, s.headers, s.body
	  FROM tb.signed('evt_b8', 'payment_intent.succeeded', tb.pi('pi_b8', 200), 1718000300, 'whsec_wrong') s;
	INSERT INTO tb.deliveries VALUES (13, true, '{}', NULL);
$$;
CREATE TABLE tb.answers (provider text, n bigint, http_status integer, outcome text, event_id text, sqlstate text);
CREATE FUNCTION tb.run(provider text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO tb.answers
	SELECT provider, d.n, i.http_status, i.outcome, i.event_id, NULL
	  FROM tb.deliveries d,
		   LATERAL payments.ingest(CASE WHEN d.known THEN provider ELSE 'batch-nobody' END, d.headers, d.body,
								   '192.0.2.7', 'req-' || d.n) i
	 WHERE d.body IS NOT NULL;
$$;
CREATE FUNCTION tb.run_batch(provider text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO tb.answers
	SELECT provider, (SELECT d.n FROM tb.deliveries d ORDER BY d.n OFFSET r.ord - 1 LIMIT 1),
		   r.http_status, r.outcome, r.event_id, r.sqlstate
	  FROM payments.ingest_batch(
			ARRAY(SELECT CASE WHEN d.known THEN provider ELSE 'batch-nobody' END FROM tb.deliveries d ORDER BY d.n),
			ARRAY(SELECT d.headers FROM tb.deliveries d ORDER BY d.n),
			ARRAY(SELECT d.body FROM tb.deliveries d ORDER BY d.n),
			ARRAY(SELECT '192.0.2.7'::inet FROM tb.deliveries d ORDER BY d.n),
			ARRAY(SELECT 'req-' || d.n FROM tb.deliveries d ORDER BY d.n))
		   WITH ORDINALITY AS r (http_status, outcome, event_id, sqlstate, error, ord);
$$;
-- the planned deliveries one by one to batch-one, then as a batch to batch-set
CREATE FUNCTION tb.run_both() RETURNS void LANGUAGE sql AS $$
	SELECT tb.run('batch-one');
	SELECT tb.run_batch('batch-set');
$$;
-- the batch's answers after delivery n, and whether each is the one-by-one answer
CREATE FUNCTION tb.answers_compared(after bigint) RETURNS TABLE (n bigint, http_status integer, outcome text,
	event_id text, sqlstate text, same boolean) LANGUAGE sql AS $$
	SELECT b.n, b.http_status, b.outcome, b.event_id, b.sqlstate,
		   CASE WHEN o.n IS NOT NULL
				THEN (b.http_status, b.outcome, b.event_id) IS NOT DISTINCT FROM (o.http_status, o.outcome, o.event_id) END
	  FROM tb.answers b LEFT JOIN tb.answers o ON o.provider = 'batch-one' AND o.n = b.n
	 WHERE b.provider = 'batch-set' AND b.n > after ORDER BY b.n
$$;
-- what a provider's deliveries left behind, to compare
CREATE FUNCTION tb.payments_of(provider text) RETURNS TABLE (provider_ref text, status text, amount numeric,
	currency char(3), method text, reference text, donor text, receipt boolean, history text, refunds text)
LANGUAGE sql AS $$
	SELECT p.provider_ref, p.status, p.amount, p.currency, p.method, p.reference,
		   concat_ws(' / ', p.donor_name, p.donor_email), r.receipt_no IS NOT NULL,
		   (SELECT string_agg(concat_ws(' > ', h.from_status, h.to_status) || ' by ' || e.event_id, ', ' ORDER BY h.id)
			  FROM payments.status_history h JOIN payments.events e ON e.id = h.event_id WHERE h.payment_id = p.id),
		   (SELECT string_agg(f.amount || ' by ' || e.event_id, ', ' ORDER BY f.id)
			  FROM payments.refunds f JOIN payments.events e ON e.id = f.event_id WHERE f.payment_id = p.id)
	  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
	 WHERE p.provider = payments_of.provider
$$;
CREATE FUNCTION tb.events_of(provider text) RETURNS TABLE (event_id text, state text, attempts integer,
	failed boolean, credentials_stored boolean, source_ip inet, request_id text) LANGUAGE sql AS $$
	SELECT e.event_id, e.state, e.attempts, e.last_error IS NOT NULL, e.headers ? 'authorization',
		   e.source_ip, e.request_id
	  FROM payments.events e WHERE e.provider = events_of.provider
$$;

SET client_min_messages = error;	-- the warnings name event rows, whose ids vary
SELECT tb.plan();
SELECT tb.run_both();
RESET client_min_messages;

-- the batch's answers, and whether each is the one-by-one answer
SELECT * FROM tb.answers_compared(0);
SELECT * FROM tb.payments_of('batch-set') ORDER BY provider_ref;
SELECT * FROM tb.events_of('batch-set') ORDER BY event_id;
SELECT e.event_id, e.last_error FROM payments.events e WHERE e.provider = 'batch-set' AND e.last_error IS NOT NULL ORDER BY 1;
SELECT reason, request_id FROM payments.rejections WHERE provider = 'batch-set' ORDER BY id;
-- the batch's new events were stored by one statement (one command id); one by one, each by its own
-- (the two that failed are left out: recording the failure wrote them again)
SELECT e.provider, count(*) AS events, count(DISTINCT e.cmin::text) AS statements
  FROM payments.events e
 WHERE e.provider IN ('batch-one', 'batch-set') AND e.event_id <> 'evt_bt_old' AND e.last_error IS NULL
 GROUP BY e.provider ORDER BY 1;
-- the same payments, events and receipts either way
(SELECT * FROM tb.payments_of('batch-set') EXCEPT SELECT * FROM tb.payments_of('batch-one'))
UNION ALL (SELECT * FROM tb.payments_of('batch-one') EXCEPT SELECT * FROM tb.payments_of('batch-set'));
(SELECT * FROM tb.events_of('batch-set') EXCEPT SELECT * FROM tb.events_of('batch-one'))
UNION ALL (SELECT * FROM tb.events_of('batch-one') EXCEPT SELECT * FROM tb.events_of('batch-set'));

-- when the set statement fails (here a negative amount, refused by the payments table), its work is
-- rolled back and its deliveries are stored one by one: only the bad event fails, stored to retry
-- (and an event delivered twice is still stored once)
CREATE FUNCTION tb.plan_bad() RETURNS void LANGUAGE sql AS $$
	TRUNCATE tb.deliveries;
	INSERT INTO tb.deliveries (n, known, headers, body)
	SELECT d.n, true, s.headers, s.body
	  FROM (VALUES (21, 'evt_c1', tb.pi('pi_c1', 500)), (22, 'evt_c2', tb.pi('pi_c2', -500)),
				   (23, 'evt_c3', tb.pi('pi_c3', 700)), (24, 'evt_c1', tb.pi('pi_c1', 500))) AS d (n, evt, obj),
		   tb.signed(d.evt, 'payment_intent.succeeded', d.obj, 1718000400) s;
$$;
SET client_min_messages = error;
SELECT tb.plan_bad();
SELECT tb.run_both();
RESET client_min_messages;
SELECT * FROM tb.answers_compared(20);
SELECT * FROM tb.events_of('batch-set') WHERE event_id LIKE 'evt_c%' ORDER BY event_id;
SELECT e.last_error FROM payments.events e WHERE e.provider = 'batch-set' AND e.event_id = 'evt_c2';
SELECT count(DISTINCT e.cmin::text) AS statements FROM payments.events e
 WHERE e.provider = 'batch-set' AND e.event_id LIKE 'evt_c%';
(SELECT * FROM tb.payments_of('batch-set') EXCEPT SELECT * FROM tb.payments_of('batch-one'))
UNION ALL (SELECT * FROM tb.payments_of('batch-one') EXCEPT SELECT * FROM tb.payments_of('batch-set'));
(SELECT * FROM tb.events_of('batch-set') EXCEPT SELECT * FROM tb.events_of('batch-one'))
UNION ALL (SELECT * FROM tb.events_of('batch-one') EXCEPT SELECT * FROM tb.events_of('batch-set'));

-- a retry applies the stored events once their causes are gone, as for any stored event
BEGIN;
INSERT INTO payments.currencies (code, exponent) VALUES ('ZZZ', 2);
SELECT payments.apply_event(e.id) FROM payments.events e WHERE e.provider = 'batch-set' AND e.event_id = 'evt_b6';
SELECT status, amount, currency FROM payments.payments WHERE provider = 'batch-set' AND provider_ref = 'pi_b6';
ROLLBACK;

-- the arrays: of one length, one-dimensional, not null; none at all is no delivery
SELECT * FROM payments.ingest_batch('{}', '{}', '{}', '{}', '{}');
SELECT * FROM payments.ingest_batch('{batch-set}', '{}', '{}', '{}', '{}');
SELECT * FROM payments.ingest_batch(NULL, '{}', '{}', '{}', '{}');
SELECT * FROM payments.ingest_batch('{{batch-set}}', '{{"{}"}}', '{{""}}', '{{NULL}}', '{{NULL}}');
-- a null provider or headers that are not an object fail that delivery alone
SELECT * FROM payments.ingest_batch('{NULL,batch-nobody}', '{"{}","{}"}', '{"",""}', '{NULL,NULL}', '{NULL,NULL}');
SELECT * FROM payments.ingest_batch('{batch-set,batch-nobody}', '{"[]","{}"}', '{"",""}', '{NULL,NULL}', '{NULL,NULL}');

-- receipts: the payments a transaction made paid are numbered together at the commit (one statement
-- for every prefix and day they need, taken in (prefix, day) order; numbers in the order the
-- payments were made paid), a payment alone when it is the only one
SELECT payments.register_provider('batch-rc', 'stripe', '{"receipt_prefix": "RC"}');
SELECT payments.register_provider('batch-rd', 'stripe', '{"receipt_prefix": "RD"}');
SELECT payments.add_secret(p, 'whsec_batch') IS NOT NULL AS added FROM unnest(ARRAY['batch-rc', 'batch-rd']) p;
CREATE FUNCTION tb.batch(deliveries jsonb) RETURNS TABLE (outcome text, event_id text) LANGUAGE sql AS $$
	WITH d AS (
		SELECT v.ord, v.provider, s.headers, s.body
		  FROM ROWS FROM (jsonb_to_recordset(deliveries) AS (provider text, evt text, etype text, obj jsonb, ts bigint))
			   WITH ORDINALITY AS v (provider, evt, etype, obj, ts, ord),
			   tb.signed(v.evt, v.etype, v.obj, v.ts) s)
	SELECT r.outcome, r.event_id
	  FROM payments.ingest_batch(ARRAY(SELECT d.provider FROM d ORDER BY d.ord), ARRAY(SELECT d.headers FROM d ORDER BY d.ord),
								 ARRAY(SELECT d.body FROM d ORDER BY d.ord), ARRAY(SELECT NULL::inet FROM d),
								 ARRAY(SELECT NULL::text FROM d)) r
$$;
CREATE FUNCTION tb.receipts() RETURNS TABLE (provider_ref text, receipt_no text, with_batch boolean) LANGUAGE sql AS $$
	-- with_batch: inserted by the statement that numbered the payments of pi_bt_r1's batch
	SELECT p.provider_ref, r.receipt_no,
		   r.cmin = (SELECT r1.cmin FROM payments.receipts r1 JOIN payments.payments p1 ON p1.id = r1.payment_id
					  WHERE p1.provider_ref = 'pi_bt_r1')
	  FROM payments.receipts r JOIN payments.payments p ON p.id = r.payment_id
	 WHERE p.provider IN ('batch-rc', 'batch-rd')
$$;
-- RC has a number on 2024-06-10 already
SELECT * FROM tb.batch('[{"provider": "batch-rc", "evt": "evt_bt_r0", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r0", "amount": 100, "currency": "usd"}, "ts": 1718000100}]');
-- RC on 2024-06-10 twice and 2024-06-11 (its first), RD on 2024-06-10 (its first); pi_bt_r4 created
-- pending, then paid by a later event of the batch (settled alone): numbered with them, after them
SELECT * FROM tb.batch('[
	{"provider": "batch-rc", "evt": "evt_bt_r1", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r1", "amount": 100, "currency": "usd"}, "ts": 1718000200},
	{"provider": "batch-rd", "evt": "evt_bt_r2", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r2", "amount": 100, "currency": "usd"}, "ts": 1718000200},
	{"provider": "batch-rc", "evt": "evt_bt_r3", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r3", "amount": 100, "currency": "usd"}, "ts": 1718100000},
	{"provider": "batch-rc", "evt": "evt_bt_r4", "etype": "payment_intent.processing", "obj": {"id": "pi_bt_r4", "amount": 100, "currency": "usd"}, "ts": 1718000200},
	{"provider": "batch-rc", "evt": "evt_bt_r5", "etype": "charge.succeeded", "obj": {"id": "ch_bt_r4", "payment_intent": "pi_bt_r4", "amount": 100, "currency": "usd"}, "ts": 1718000300},
	{"provider": "batch-rc", "evt": "evt_bt_r6", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r6", "amount": 100, "currency": "usd"}, "ts": 1718000200}]');
SELECT * FROM tb.receipts() ORDER BY receipt_no;
SELECT prefix, day, last_no FROM payments.receipt_counters WHERE prefix IN ('RC', 'RD') ORDER BY 1, 2;
-- a payment numbered before the commit (WhatsApp's /approve does so) is not numbered again
BEGIN;
SELECT * FROM tb.batch('[{"provider": "batch-rc", "evt": "evt_bt_r7", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r7", "amount": 100, "currency": "usd"}, "ts": 1718000200}]');
SELECT payments.issue_receipt(p.id, p.paid_at) FROM payments.payments p WHERE p.provider_ref = 'pi_bt_r7';
COMMIT;
-- a batch rolled back gives its numbers back: the next one takes them
BEGIN;
SAVEPOINT before_batch;
SELECT * FROM tb.batch('[{"provider": "batch-rc", "evt": "evt_bt_r8", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r8", "amount": 100, "currency": "usd"}, "ts": 1718000200}]');
ROLLBACK TO SAVEPOINT before_batch;
SELECT * FROM tb.batch('[{"provider": "batch-rc", "evt": "evt_bt_r9", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_r9", "amount": 100, "currency": "usd"}, "ts": 1718000200}]');
COMMIT;
SELECT provider_ref, receipt_no FROM tb.receipts() WHERE provider_ref IN ('pi_bt_r7', 'pi_bt_r8', 'pi_bt_r9') ORDER BY receipt_no;
SELECT prefix, day, last_no FROM payments.receipt_counters WHERE prefix = 'RC' ORDER BY 1, 2;
-- numbered early (the constraint made immediate) in a savepoint then rolled back: the numbers go
-- back, and the commit numbers the batch's payments again
BEGIN;
SELECT count(*) AS stored FROM tb.batch('[
	{"provider": "batch-rd", "evt": "evt_bt_s1", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_s1", "amount": 100, "currency": "usd"}, "ts": 1718000200},
	{"provider": "batch-rd", "evt": "evt_bt_s2", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_s2", "amount": 100, "currency": "usd"}, "ts": 1718000200},
	{"provider": "batch-rd", "evt": "evt_bt_s3", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_s3", "amount": 100, "currency": "usd"}, "ts": 1718000200}]');
SAVEPOINT early;
SET CONSTRAINTS payments.status_history_at_commit IMMEDIATE;
SELECT count(*) AS numbered_early FROM tb.receipts() WHERE provider_ref LIKE 'pi_bt_s%';
ROLLBACK TO SAVEPOINT early;
SELECT count(*) AS numbered_after_rollback FROM tb.receipts() WHERE provider_ref LIKE 'pi_bt_s%';
COMMIT;
SELECT provider_ref, receipt_no FROM tb.receipts() WHERE provider_ref LIKE 'pi_bt_s%' ORDER BY receipt_no;
-- a payment made paid in a savepoint rolled back is not numbered with the transaction's others
SELECT * FROM tb.batch('[{"provider": "batch-rd", "evt": "evt_bt_u0", "etype": "payment_intent.processing", "obj": {"id": "pi_bt_u0", "amount": 100, "currency": "usd"}, "ts": 1718200000}]');
BEGIN;
SAVEPOINT paying;
SELECT * FROM tb.batch('[{"provider": "batch-rd", "evt": "evt_bt_u1", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_u0", "amount": 100, "currency": "usd"}, "ts": 1718200100}]');
ROLLBACK TO SAVEPOINT paying;
SELECT * FROM tb.batch('[
	{"provider": "batch-rd", "evt": "evt_bt_u2", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_u2", "amount": 100, "currency": "usd"}, "ts": 1718200200},
	{"provider": "batch-rc", "evt": "evt_bt_u3", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_u3", "amount": 100, "currency": "usd"}, "ts": 1718200200}]');
COMMIT;
SELECT p.provider_ref, p.status, r.receipt_no FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE p.provider_ref LIKE 'pi_bt_u%' ORDER BY p.provider_ref;

-- news dated ahead of our clock (three days) is paid as of when it was recorded, its receipt
-- numbered into today, when the batch's set statement creates the payment too (rolled back)
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
SELECT * FROM tb.batch(jsonb_build_array(jsonb_build_object('provider', 'batch-rc', 'evt', 'evt_bt_fut',
	'etype', 'payment_intent.succeeded', 'obj', '{"id": "pi_bt_fut", "amount": 100, "currency": "usd"}'::jsonb,
	'ts', extract(epoch FROM now() + interval '3 days')::bigint)));
SELECT p.status, p.paid_at <= now() AS paid_by_now,
	   r.receipt_no LIKE 'RC-' || to_char(payments.receipt_day(now()), 'YYYYMMDD') || '-%' AS numbered_today
  FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id WHERE p.provider_ref = 'pi_bt_fut';
ROLLBACK;

-- payments.flush_wal(): the shim commits a batch with synchronous_commit off and calls it before
-- answering.  After it, the WAL is flushed at least to where it had been written before the call
-- (less a page header, where that position is just past one: nothing is written there yet).
SET synchronous_commit = off;
SELECT * FROM tb.batch('[{"provider": "batch-rc", "evt": "evt_bt_f1", "etype": "payment_intent.succeeded", "obj": {"id": "pi_bt_f1", "amount": 100, "currency": "usd"}, "ts": 1718000200}]');
SELECT pg_catalog.pg_current_wal_insert_lsn() AS written \gset
SELECT payments.flush_wal() AS flushed \gset
SELECT :'flushed'::pg_lsn >= :'written'::pg_lsn - 40 AS covers_what_was_written,
	   pg_catalog.pg_current_wal_flush_lsn() >= :'flushed'::pg_lsn AS flushed_that_far;
RESET synchronous_commit;

-- a hold captured in two parts, 300 then 800 of 1000, 1.00 given back between them, then all of
-- it: each of the 24 orders of its four events, as one batch (a refund before any capture stored,
-- applied when retried after), ends as in order (1234): 8.00 taken, 8.00 given back, 1.00 then
-- 7.00 (rolled back, as the payments below)
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
SELECT payments.register_provider('batch-hp', 'stripe', '{}');
SELECT payments.add_secret('batch-hp', 'whsec_batch') IS NOT NULL AS added;
CREATE FUNCTION tb.hold_in_order(ord integer[]) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	ref text := 'pi_hp' || array_to_string(ord, '');
	ev bigint;
BEGIN
	PERFORM tb.batch((SELECT jsonb_agg(jsonb_build_object('provider', 'batch-hp', 'evt', 'evt_' || ref || '_' || e.k,
															'etype', e.etype, 'obj', e.obj, 'ts', e.ts) ORDER BY o.n)
						FROM unnest(ord) WITH ORDINALITY AS o (k, n),
							 (VALUES (1, 'charge.captured', tb.charge(ref, 1000) || '{"captured": true, "amount_captured": 300}', 1718001000),
									 (2, 'charge.refunded', tb.charge(ref, 1000, 100) || '{"captured": true, "amount_captured": 300}', 1718002000),
									 (3, 'charge.captured', tb.charge(ref, 1000, 100) || '{"captured": true, "amount_captured": 800}', 1718003000),
									 (4, 'charge.refunded', tb.charge(ref, 1000, 800) || '{"captured": true, "amount_captured": 800}', 1718004000))
							 AS e (k, etype, obj, ts)
					   WHERE e.k = o.k));
	FOR ev IN SELECT e.id FROM payments.events e
			   WHERE e.provider = 'batch-hp' AND e.state = 'pending' AND e.payload -> 'data' -> 'object' ->> 'payment_intent' = ref
			   ORDER BY e.id LOOP
		PERFORM payments.apply_event(ev);
	END LOOP;
	RETURN ref;
END
$$;
SET LOCAL client_min_messages = error;	-- (the warnings name event rows, whose ids vary)
SELECT count(tb.hold_in_order(ARRAY[a, b, c, d])) AS orders
  FROM generate_series(1, 4) a, generate_series(1, 4) b, generate_series(1, 4) c, generate_series(1, 4) d
 WHERE a NOT IN (b, c, d) AND b NOT IN (c, d) AND c <> d;
SELECT p.status, p.amount, p.amount_refunded,
	   (SELECT string_agg(f.amount || ' at ' || extract(epoch FROM f.refunded_at), ', ' ORDER BY f.refunded_at, f.id)
		  FROM payments.refunds f WHERE f.payment_id = p.id) AS refunds,
	   r.receipt_no IS NOT NULL AS receipt, count(*) AS orders, bool_or(p.provider_ref = 'pi_hp1234') AS in_order,
	   CASE WHEN count(*) < 24 THEN string_agg(substr(p.provider_ref, 6), ' ' ORDER BY p.provider_ref) END AS which
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE p.provider = 'batch-hp'
 GROUP BY 1, 2, 3, 4, 5 ORDER BY in_order DESC, orders DESC;
ROLLBACK;
