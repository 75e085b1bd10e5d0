-- Retrying stored events (DESIGN.md §7): the schedule with jitter, every error kept, dead
-- letters after the last attempt, replay by the DBA.
\set SHOW_CONTEXT never

-- the schedule: immediate, then 1 min, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, then dead
SELECT n AS failed_attempts, payments.retry_delay(n) FROM generate_series(0, 8) n;
-- jitter stays within +-10%, Retry-After is a floor (capped at 24 hours), NULL after the 8th failure
SELECT n, bool_and(payments.next_attempt_at(n) - now() BETWEEN payments.retry_delay(n) * 0.9
												 AND payments.retry_delay(n) * 1.1 + interval '1 second') AS within_jitter,
	   count(DISTINCT payments.next_attempt_at(n)) > 1 AS jittered
  FROM generate_series(1, 7) n, generate_series(1, 20) GROUP BY n ORDER BY n;
SELECT payments.next_attempt_at(8) IS NULL AS gives_up,
	   payments.next_attempt_at(1, interval '20 minutes') >= now() + interval '20 minutes' AS honours_retry_after,
	   payments.next_attempt_at(1, interval '9 days') <= clock_timestamp() + interval '1 day' AS retry_after_capped;
-- counted from the failure, not from the start of its transaction (a retry run is one transaction)
BEGIN;
SELECT pg_sleep(1.1);
SELECT payments.next_attempt_at(1, interval '20 minutes') >= now() + interval '20 minutes 1 second' AS from_the_failure;
COMMIT;

CREATE SCHEMA tr;
CREATE SEQUENCE tr.ids;
-- posts a Stripe event, signed like Stripe; warnings (they name event ids) are not shown
CREATE FUNCTION tr.stripe(etype text, obj jsonb, ts bigint) RETURNS text
	LANGUAGE sql SET client_min_messages = error AS $$
	WITH body AS (
		SELECT convert_to(jsonb_build_object('id', 'evt_r' || nextval('tr.ids'), 'object', 'event', 'type', etype,
			'created', ts, 'data', jsonb_build_object('object', obj))::text, 'UTF8') AS b,
			floor(extract(epoch FROM clock_timestamp()))::bigint AS now_s)
	SELECT i.outcome FROM body, payments.ingest('retryshop', jsonb_build_object('stripe-signature',
		't=' || now_s || ',v1=' || encode(hmac(convert_to(now_s || '.', 'UTF8') || b, 'whsec_retry'::bytea, 'sha256'), 'hex')), b) i
$$;
CREATE FUNCTION tr.pi(id text, amount bigint, currency text DEFAULT 'usd') RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('id', id, 'object', 'payment_intent', 'amount', amount, 'currency', currency,
		'payment_method_types', '["card"]'::jsonb)
$$;
CREATE FUNCTION tr.charge(pi text, amount bigint, refunded bigint) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('id', 'ch_' || pi, 'object', 'charge', 'payment_intent', pi, 'amount', amount,
		'amount_refunded', refunded, 'currency', 'usd', 'payment_method_details', '{"type":"card"}'::jsonb)
$$;
-- the event about an object, its state and its failed attempts
-- (waits: the delay of the schedule, on_schedule: next_attempt_at within its jitter, less up to
-- 30 s for the time this test took since the attempt on a loaded machine)
CREATE FUNCTION tr.ev(ref text) RETURNS TABLE (state text, attempts integer, waits interval, on_schedule boolean,
	last_error text, errors_kept bigint, gave_up boolean) LANGUAGE sql AS $$
	SELECT e.state, e.attempts, CASE WHEN e.next_attempt_at IS NOT NULL THEN payments.retry_delay(e.attempts) END,
		   e.next_attempt_at IS NULL OR e.next_attempt_at - now()
				BETWEEN payments.retry_delay(e.attempts) * 0.9 - interval '30 seconds'
					AND payments.retry_delay(e.attempts) * 1.1,
		   e.last_error, (SELECT count(*) FROM payments.event_attempts a WHERE a.event_id = e.id),
		   (SELECT bool_or(a.gave_up) FROM payments.event_attempts a WHERE a.event_id = e.id)
	  FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'id' IN (ref, 'ch_' || ref)
	 ORDER BY e.id
$$;
-- makes the pending events of this test due now, as if their time had come
CREATE FUNCTION tr.time_passes() RETURNS void LANGUAGE sql AS $$
	UPDATE payments.events SET next_attempt_at = now() - interval '1 second' WHERE state = 'pending' AND provider = 'retryshop'
$$;

SELECT payments.register_provider('retryshop', 'stripe');
SELECT payments.add_secret('retryshop', 'whsec_retry') IS NOT NULL AS added;

-- an event that cannot be applied (unknown currency) is stored with its first error,
-- due again in about a minute
SELECT tr.stripe('payment_intent.succeeded', tr.pi('pi_r1', 100, 'qqq'), 1718000000);
SELECT * FROM tr.ev('pi_r1');
-- not due yet: nothing to do
SELECT count(*) FROM payments.retry_events();
-- each failed retry is kept and waits longer; after the 8th attempt the event is dead
SELECT tr.time_passes();
SELECT outcome FROM payments.retry_events();
SELECT * FROM tr.ev('pi_r1');
DO $$ BEGIN FOR i IN 3..7 LOOP PERFORM tr.time_passes(); PERFORM payments.retry_events(); END LOOP; END $$;
SELECT * FROM tr.ev('pi_r1');
SELECT tr.time_passes();
SELECT outcome FROM payments.retry_events();
SELECT * FROM tr.ev('pi_r1');
SELECT attempt, error, gave_up FROM payments.event_attempts a JOIN payments.events e ON e.id = a.event_id
 WHERE e.payload -> 'data' -> 'object' ->> 'id' = 'pi_r1' ORDER BY a.id;
-- dead events are not retried
SELECT tr.time_passes();
SELECT count(*) FROM payments.retry_events();
SELECT * FROM payments.event_backlog WHERE provider = 'retryshop';

-- replay by the DBA: still failing, it starts a fresh schedule; once fixed it applies
SELECT e.id AS dead_event FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'id' = 'pi_r1' \gset
SELECT payments.replay_event(:dead_event);
SELECT * FROM tr.ev('pi_r1');
INSERT INTO payments.currencies (code, exponent) VALUES ('QQQ', 2);
SELECT payments.replay_event(:dead_event);
SELECT * FROM tr.ev('pi_r1');
SELECT status, amount, currency FROM payments.payments WHERE provider_ref = 'pi_r1';
SET client_min_messages = warning;	-- the notice names the event's id
SELECT payments.replay_event(:dead_event);
RESET client_min_messages;
SELECT payments.replay_event(-1);

-- a refund before its payment: unresolved is a failed attempt on the schedule (at most an hour apart);
-- once the payment is known the retry applies it
SELECT tr.stripe('charge.refunded', tr.charge('pi_r2', 500, 500), 1718000200);
SELECT * FROM tr.ev('pi_r2');
SELECT tr.stripe('payment_intent.succeeded', tr.pi('pi_r2', 500), 1718000100);
SELECT count(*) FROM payments.retry_events();
SELECT tr.time_passes();
SELECT outcome FROM payments.retry_events();
SELECT * FROM tr.ev('pi_r2');
SELECT status, amount_refunded FROM payments.payments WHERE provider_ref = 'pi_r2';

-- a refund waiting for its payment is asked again hourly at least, 96 times (four days: its
-- provider may send the news of the payment for three), not for the 27 hours of the schedule
SELECT tr.stripe('charge.refunded', tr.charge('pi_r6', 500, 500), 1718000200);
UPDATE payments.events SET attempts = 7 WHERE payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
SELECT tr.time_passes();
SELECT outcome FROM payments.retry_events();
SELECT state, attempts, next_attempt_at BETWEEN now() AND now() + interval '1 hour' AS within_the_hour
  FROM payments.events WHERE payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
UPDATE payments.events SET attempts = 95 WHERE payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
SELECT tr.time_passes();
SELECT outcome FROM payments.retry_events();
-- ... whatever error an attempt of it meets meanwhile (a deadlock, a timeout)
UPDATE payments.events SET state = 'pending', attempts = 20, last_error = 'payment pi_r6 is not known yet'
 WHERE payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
SELECT payments.event_failed(e.id, 'deadlock detected') AS after_a_deadlock
  FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
SELECT payments.event_failed(e.id, 'canceling statement due to statement timeout') AS and_a_timeout_after_it
  FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
-- ... but an error of another kind (its payment known by then) ends its waiting: the schedule's
-- eight attempts are long used, so it is given up
SELECT payments.event_failed(e.id, 'unknown currency "XYZ"') AS then_another_error
  FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
-- ... also right after its last "not known yet"
UPDATE payments.events SET state = 'pending', attempts = 20, last_error = 'payment pi_r6 is not known yet'
 WHERE payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
SELECT payments.event_failed(e.id, 'unknown currency "XYZ"') AS another_error_at_once
  FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';
DELETE FROM payments.events WHERE payload -> 'data' -> 'object' ->> 'payment_intent' = 'pi_r6';

-- the currencies are read once per transaction, and again after a change to them in it: an event
-- in a currency added later in the same transaction applies, and a currency whose insert a
-- rolled-back savepoint undid is unknown again
SELECT tr.stripe('payment_intent.succeeded', tr.pi('pi_r5', 100, 'qqr'), 1718000000);
SELECT e.id AS qqr_event FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'id' = 'pi_r5' \gset
BEGIN;
SELECT payments.currency_exponent('qqr') AS unknown;
INSERT INTO payments.currencies (code, exponent) VALUES ('QQR', 0);
SELECT payments.replay_event(:qqr_event);
SAVEPOINT s;
INSERT INTO payments.currencies (code, exponent) VALUES ('QQS', 3);
SELECT payments.major_units(1000, 'qqs') AS qqs_known;
ROLLBACK TO s;
SELECT payments.major_units(1000, 'qqs') AS qqs_unknown_again;
COMMIT;
SELECT status, amount, currency FROM payments.payments WHERE provider_ref = 'pi_r5';

-- replay_dead requeues the dead events of a provider since a time; retry_events applies them
-- (refunds waiting for their payments at their last attempt but one: given up at the next)
SELECT tr.stripe('charge.refunded', tr.charge('pi_r3', 700, 700), 1718000300);
SELECT tr.stripe('charge.refunded', tr.charge('pi_r4', 800, 800), 1718000300);
UPDATE payments.events SET attempts = 95
 WHERE payload -> 'data' -> 'object' ->> 'payment_intent' IN ('pi_r3', 'pi_r4');
DO $$ BEGIN FOR i IN 2..8 LOOP PERFORM tr.time_passes(); PERFORM payments.retry_events(); END LOOP; END $$;
SELECT * FROM tr.ev('pi_r3') UNION ALL SELECT * FROM tr.ev('pi_r4');
SELECT tr.stripe('payment_intent.succeeded', tr.pi('pi_r3', 700), 1718000100);
SELECT payments.replay_dead('retryshop', now() + interval '1 hour') AS none_since_later;
SELECT payments.replay_dead('otherprovider') AS none_elsewhere;
SELECT payments.replay_dead('retryshop', now() - interval '1 hour') AS requeued;
SELECT outcome, count(*) FROM payments.retry_events() GROUP BY outcome ORDER BY outcome;
SELECT * FROM tr.ev('pi_r3') UNION ALL SELECT * FROM tr.ev('pi_r4');

-- a statement_timeout while an event is applied (a lock waited for, a slow trigger) records its
-- failed attempt and ends the run, keeping it: rolled back, the next run would meet it first again
SELECT tr.stripe('payment_intent.succeeded', tr.pi('pi_r7', 100, 'qqt'), 1718000000);
INSERT INTO payments.currencies (code, exponent) VALUES ('QQT', 2);
UPDATE payments.events SET next_attempt_at = now() - interval '1 second'
 WHERE payload -> 'data' -> 'object' ->> 'id' = 'pi_r7';
CREATE FUNCTION tr.slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.provider_ref = 'pi_r7' THEN PERFORM pg_sleep(2); END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER slow BEFORE INSERT ON payments.payments FOR EACH ROW EXECUTE FUNCTION tr.slow();
SET statement_timeout = '300ms';
SELECT outcome FROM payments.retry_events();
RESET statement_timeout;
DROP TRIGGER slow ON payments.payments;
SELECT state, attempts, last_error FROM payments.events WHERE payload -> 'data' -> 'object' ->> 'id' = 'pi_r7';
UPDATE payments.events SET next_attempt_at = now() - interval '1 second'
 WHERE payload -> 'data' -> 'object' ->> 'id' = 'pi_r7';
SELECT outcome FROM payments.retry_events() WHERE event = (SELECT e.id FROM payments.events e
 WHERE e.payload -> 'data' -> 'object' ->> 'id' = 'pi_r7');

-- the retry job goes on, committing between batches, while a batch came back full: 250 due
-- events are all retried in one run (a batch of 100 a minute fell behind for good)
SELECT count(*) AS stored FROM (SELECT tr.stripe('payment_intent.succeeded', tr.pi('pi_many' || n, 100, 'qqz'), 1718000000)
								  FROM generate_series(1, 250) n) s;
SELECT tr.time_passes();
CALL payments.run_job('retry');
SELECT state, attempts, count(*) FROM payments.events
 WHERE payload -> 'data' -> 'object' ->> 'id' LIKE 'pi\_many%' GROUP BY state, attempts;
-- (gone before the next tests, which make every pending event due)
DELETE FROM payments.events WHERE payload -> 'data' -> 'object' ->> 'id' LIKE 'pi\_many%';

-- max_items bounds a run
SELECT payments.retry_events(0);
SELECT tr.time_passes();
SELECT count(*) FROM payments.retry_events(1);

-- the retry job runs at READ COMMITTED whatever the default (a role's or database's, which
-- pg_cron's jobs inherit): receipt numbers are taken at commit from the day's counter row, which
-- under snapshot isolation fails whenever another transaction paid that day since the snapshot,
-- rolling the run back (the race itself: regress/e2e/background.test.mjs).  The functions that
-- cannot commit refuse the other levels.
SELECT tr.stripe('payment_intent.succeeded', tr.pi('pi_r8', 100, 'qqi'), 1718000000);
INSERT INTO payments.currencies (code, exponent) VALUES ('QQI', 2);
SELECT tr.time_passes();
SELECT e.id AS iso_event FROM payments.events e WHERE e.payload -> 'data' -> 'object' ->> 'id' = 'pi_r8' \gset
SET default_transaction_isolation = 'repeatable read';
SELECT count(*) FROM payments.retry_events();
SELECT payments.replay_event(:iso_event);
SELECT payments.apply_event(:iso_event);
SET default_transaction_isolation = 'serializable';
SELECT count(*) FROM payments.retry_events();
-- inside a transaction block the job cannot change its level
BEGIN;
CALL payments.run_job('retry');
ROLLBACK;
CALL payments.run_job('retry');
SHOW transaction_isolation;
RESET default_transaction_isolation;
SELECT state, attempts, last_error FROM tr.ev('pi_r8');
SELECT p.status, r.receipt_no IS NOT NULL AS has_receipt
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE p.provider_ref = 'pi_r8';

-- leave nothing behind for the other tests
DELETE FROM payments.payments WHERE provider = 'retryshop';
DELETE FROM payments.events WHERE provider = 'retryshop';
DELETE FROM payments.secrets WHERE provider = 'retryshop';
DELETE FROM payments.providers WHERE name = 'retryshop';
DELETE FROM payments.currencies WHERE code IN ('QQQ', 'QQR', 'QQT', 'QQI');
DROP SCHEMA tr CASCADE;
