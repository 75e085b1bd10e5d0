-- Reconciliation without the network: settings, the selection of stuck payments, the requests
-- built for each provider, token caching, recording answers, the summary.
\set SHOW_CONTEXT never

-- API settings are validated
SELECT payments.register_provider('rc_stripe', 'stripe', '{"api_key": "sk_test_abc", "livemode": false, "api_base": "http://127.0.0.1:9/"}');
SELECT payments.register_provider('rc_bad', 'stripe', '{"api_key": "whsec_abc"}');
SELECT payments.register_provider('rc_bad', 'stripe', '{"api_base": "ftp://example.com"}');
-- a user or password in api_base is refused (the URLs asked are kept in reconciliation_checks),
-- and no refusal repeats the value, which the server log would keep
SELECT payments.register_provider('rc_bad', 'stripe', '{"api_base": "http://u:ApiPw88@127.0.0.1:9"}');
SELECT payments.register_provider('rc_bad', 'paypal', '{"api_base": "http://api.example/?key=ApiPw99"}');
SELECT payments.register_provider('rc_bad', 'stripe', '{"api_key": "sk_test with space"}');
SELECT payments.register_provider('rc_bad', 'eversend', '{"client_id": "abc"}');
SELECT payments.register_provider('rc_bad', 'eversend', '{"api_token": "abc"}');
SELECT payments.register_provider('rc_paypal', 'paypal',
	'{"webhook_id": "WH1", "client_id": "cid", "client_secret": "csecret", "api_base": "http://127.0.0.1:9"}');
SELECT payments.register_provider('rc_ever', 'eversend', '{"client_id": "eid", "client_secret": "esecret"}');
SELECT payments.register_provider('rc_paynow', 'paynow', '{"api_base": "http://127.0.0.1:9"}');
SELECT kind, payments.api_base(kind, '{}') FROM payments.provider_kinds
 WHERE kind IN ('stripe', 'paypal', 'eversend', 'paynow') ORDER BY kind;

-- the setting: 15 minutes unless set
SELECT payments.reconcile_after();
SET payments.reconcile_after = '10min';
SELECT payments.reconcile_after();
SET payments.reconcile_after = '5min';

-- stuck: pending for longer than reconcile_after; not recent ones, not paid ones
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, status_at, metadata) VALUES
	('rc_stripe', 'pi_old', 'pending', 10, 'USD', now() - interval '2 days', '{}'),
	('rc_stripe', 'pi_new', 'pending', 10, 'USD', now() - interval '1 minute', '{}'),
	('rc_stripe', 'pi_paid', 'paid', 10, 'USD', now() - interval '20 minutes', '{}'),
	('rc_stripe', 'cs_session', 'pending', 10, 'USD', now() - interval '30 minutes', '{}'),
	('rc_paypal', 'ORDER1', 'pending', 30, 'USD', now() - interval '20 minutes', '{"capture_id": "CAP1"}'),
	('rc_paypal', 'ORDER2', 'pending', 30, 'USD', now() - interval '20 minutes', '{"capture_id": "CAP2"}'),
	('rc_ever', 'EVS1', 'pending', 500, 'UGX', now() - interval '20 minutes', '{}'),
	('rc_paynow', '9510', 'pending', 5, 'USD', now() - interval '20 minutes', '{"pollurl": "http://127.0.0.1:9/poll?guid=1"}'),
	('rc_paynow', '9511', 'pending', 5, 'USD', now() - interval '20 minutes', '{}'),
	-- a pollurl naming another host (here behind userinfo) is never asked
	('rc_paynow', '9512', 'pending', 5, 'USD', now() - interval '20 minutes', '{"pollurl": "http://127.0.0.1:9@evil.example/poll?guid=2"}');
SELECT provider, provider_kind, provider_ref, last_checked_at IS NULL AS never_checked
  FROM payments.stuck_payments WHERE provider LIKE 'rc\_%' ORDER BY provider, provider_ref;

-- tokens first: PayPal client credentials (Basic), Eversend clientId/clientSecret headers
SELECT provider, method, url, headers, body FROM payments.api_token_requests() WHERE provider LIKE 'rc\_%' ORDER BY provider;
SELECT payments.store_api_token('rc_paypal', 200, NULL, '{"access_token": "A21AA", "token_type": "Bearer", "expires_in": 32400}',
	(SELECT credentials FROM payments.api_token_requests() WHERE provider = 'rc_paypal'));
SELECT payments.store_api_token('rc_ever', 500, NULL, 'oops',
	(SELECT credentials FROM payments.api_token_requests() WHERE provider = 'rc_ever'));
SELECT provider, token, expires_at > now() + interval '8 hours' AS cached_long, last_error
  FROM payments.api_tokens WHERE provider LIKE 'rc\_%' ORDER BY provider;
SELECT provider FROM payments.api_token_requests() WHERE provider LIKE 'rc\_%';

-- the claim: one request per checkable payment; the others recorded as errors at once
-- (other tests' payments are claimed too: only ours are shown)
SELECT url, method, headers, body FROM payments.claim_reconciliation(50) WHERE url LIKE 'http://127.0.0.1:9/%' ORDER BY url;
SELECT provider, request, outcome, error FROM payments.reconciliation_checks
 WHERE outcome = 'error' AND provider LIKE 'rc\_%' ORDER BY provider, request;
-- checked: not claimed again within reconcile_after
SELECT count(*) FROM payments.claim_reconciliation(50) WHERE url LIKE 'http://127.0.0.1:9/%';

-- answers go through the state machine; errors change nothing
SELECT payments.record_reconciliation(c.id, 200, NULL,
	'{"id": "pi_old", "object": "payment_intent", "status": "succeeded", "amount": 1000, "amount_received": 1000, "currency": "usd"}')
  FROM payments.reconciliation_checks c WHERE c.request LIKE '%pi_old';
SELECT payments.record_reconciliation(c.id, 500, NULL, '{"error": "boom"}')
  FROM payments.reconciliation_checks c WHERE c.request LIKE '%CAP1';
SELECT payments.record_reconciliation(c.id, 200, NULL, 'status=Paid&paynowreference=9510&hash=00')
  FROM payments.reconciliation_checks c WHERE c.request LIKE '%poll%';
SELECT payments.record_reconciliation(c.id, 200, NULL, format(
	'{"id": "CAP2", "status": "COMPLETED", "amount": {"currency_code": "USD", "value": "30.00"}, "update_time": "%s"}',
	to_char((now() - interval '5 minutes') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
  FROM payments.reconciliation_checks c WHERE c.request LIKE '%CAP2';
SELECT provider_ref, status, receipt_no IS NOT NULL AS has_receipt
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE provider_ref IN ('pi_old', 'ORDER1', 'ORDER2', '9510') ORDER BY provider_ref;
-- the providers' times in answers are read as events read them (payments.provider_time): UTC
-- without a zone, none outside the years 1 to 9999 (a receipt number has four digits of year)
SET timezone = 'Africa/Harare';
SELECT v, payments.provider_time(v) AT TIME ZONE 'UTC' AS utc
  FROM unnest(ARRAY['2024-06-10T08:01:12Z', '2024-06-10 23:30:00', '2024-06-10T10:00:00+02:00',
					'10000-01-01T00:00:00Z', '4713-01-01T00:00:00Z BC', 'soon', '2024-05-01T10:00 Mars/X']) v;
RESET timezone;
-- dated by the provider's time where the answer has one (PayPal's update_time), else by the status
-- the payment had, not by the poll: news of what happened before the poll still applies after it.
-- Paid, without the provider's time, by the time of the poll: its receipt is of that day, not of
-- the day it was last known pending (two days before)
SELECT provider_ref, paid_at = status_at AS paid_then, status_at < now() - interval '15 minutes' AS at_last_known_status,
	   status_at BETWEEN now() - interval '6 minutes' AND now() - interval '4 minutes' AS at_provider_time,
	   paid_at > now() - interval '1 minute' AS paid_when_polled,
	   r.receipt_no LIKE '%-' || to_char(payments.receipt_day(paid_at), 'YYYYMMDD') || '-%' AS receipt_of_paid_day
  FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id
 WHERE provider_ref IN ('pi_old', 'ORDER2') ORDER BY provider_ref;
SELECT payments.apply_change(NULL, 'rc_stripe', payments.stripe_change(jsonb_build_object('type', 'charge.refunded',
	'created', extract(epoch FROM now() - interval '10 minutes'), 'data', jsonb_build_object('object',
	'{"id": "ch_old", "object": "charge", "payment_intent": "pi_old", "amount": 1000, "amount_refunded": 400, "currency": "usd"}'::jsonb))));
SELECT status, amount_refunded FROM payments.payments WHERE provider_ref = 'pi_old';
-- a change at an infinite time (any kind's; 'infinity' casts to timestamptz) is refused: it would
-- have no day, and its payment no receipt number
SELECT payments.apply_change(NULL, 'rc_stripe', ROW('pi_forever', true, 'paid', 'infinity', NULL, NULL, 5, 'USD',
	NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::payments.payment_change);
SELECT provider, http_status, found_status, found, status_before, status_after, outcome, error
  FROM payments.reconciliation_checks WHERE finished_at IS NOT NULL AND http_status IS NOT NULL AND provider LIKE 'rc\_%'
 ORDER BY provider;
SELECT from_status, to_status, event_id FROM payments.status_history h JOIN payments.payments p ON p.id = h.payment_id
 WHERE p.provider_ref = 'pi_old' ORDER BY h.id;

-- the summary
SELECT * FROM payments.reconciliation_summary(24) WHERE provider LIKE 'rc\_%';

-- a procedure that commits: not inside a transaction block
BEGIN;
CALL payments.reconcile();
ROLLBACK;
CALL payments.run_job('nope');
SELECT jobname, schedule, command FROM payments.cron_jobs() ORDER BY 1;
-- the prune job prunes what is not kept for ever: rejections (keep_rejections) and finished
-- outbox items (keep_outbox); both kept for ever, no prune job
SELECT command FROM payments.cron_jobs(keep_rejections => NULL, keep_outbox => '30 days') WHERE jobname LIKE 'payments-prune@%';
SELECT command FROM payments.cron_jobs(keep_outbox => NULL) WHERE jobname LIKE 'payments-prune@%';
SELECT count(*) AS prune_jobs FROM payments.cron_jobs(keep_rejections => NULL, keep_outbox => NULL) WHERE jobname LIKE 'payments-prune@%';
SELECT payments.schedule_jobs(keep_rejections => interval '-1 day');
SELECT payments.schedule_jobs(keep_outbox => interval '-1 day');
-- schedule_jobs and unschedule_jobs remove the jobs of ours named after a database that no longer
-- exists (payments-retry@gone), never a DBA's own jobs whose names merely look like ours
-- (schedules that never come during the test)
CREATE EXTENSION pg_cron;
SELECT cron.schedule('payments-export@nightly', '0 2 * * *', 'SELECT 1') > 0 AS scheduled;
SELECT cron.schedule('payments-report@finance-team', '0 2 * * *', 'SELECT 1') > 0 AS scheduled;
SELECT cron.schedule('payments-retry@gone', '0 4 1 1 *', 'SELECT 1') > 0 AS scheduled;
SELECT jobname FROM payments.schedule_jobs('0 4 1 1 *', '0 4 1 1 *', '0 4 1 1 *', '7 days', '0 4 1 1 *') ORDER BY 1;
SELECT jobname FROM cron.job ORDER BY 1;
SELECT cron.schedule('payments-retry@gone', '0 4 1 1 *', 'SELECT 1') > 0 AS scheduled;
-- a NULL schedule, or run details kept for ever: no such job, and one scheduled before goes; a
-- negative keep_run_details (every run detail deleted) is refused
SELECT jobname FROM payments.schedule_jobs('0 4 1 1 *', NULL, '0 4 1 1 *', NULL, '0 4 1 1 *') ORDER BY 1;
SELECT jobname FROM cron.job WHERE jobname LIKE 'payments-%@contrib_regression' ORDER BY 1;
SELECT payments.schedule_jobs(keep_run_details => interval '-1 day');
SELECT payments.unschedule_jobs();
SELECT jobname FROM cron.job ORDER BY 1;
-- the housekeeping deletes the old run details of the jobs that run in this database, and its
-- own (it runs in pg_cron's), not those of another database's jobs: each keeps its own
INSERT INTO cron.job_run_details (jobid, database, command, status, start_time, end_time)
SELECT j.id, j.db, 'SELECT 1', 'succeeded', now() - j.age, now() - j.age
  FROM (VALUES (101, 'contrib_regression', interval '8 days'), (102, 'contrib_regression', interval '1 day'),
			   (103, 'otherdb', interval '8 days')) AS j (id, db, age);
SELECT command AS housekeeping FROM payments.cron_jobs() WHERE jobname LIKE 'payments-housekeeping@%' \gset
:housekeeping;
SELECT jobid, database FROM cron.job_run_details ORDER BY jobid;
DROP EXTENSION pg_cron;
-- never-checked payments first; after n checks the next waits reconcile_after (5 min) * 2^(n-1):
-- three checks, the last 41 minutes ago, is due (20 min); five is not (80 min)
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, status_at, metadata) VALUES
	('rc_stripe', 'pi_backoff3', 'pending', 10, 'USD', now() - interval '3 days', '{}'),
	('rc_stripe', 'pi_backoff5', 'pending', 10, 'USD', now() - interval '3 days', '{}'),
	('rc_stripe', 'pi_never', 'pending', 10, 'USD', now() - interval '1 hour', '{}');
INSERT INTO payments.reconciliation_checks (payment_id, provider, request, status_before, started_at, finished_at, outcome)
SELECT p.id, p.provider, 'GET earlier', 'pending', now() - interval '40 minutes' - n * interval '1 minute',
	   now() - interval '40 minutes', 'unchanged'
  FROM payments.payments p, generate_series(1, CASE p.provider_ref WHEN 'pi_backoff3' THEN 3 ELSE 5 END) n
 WHERE p.provider_ref IN ('pi_backoff3', 'pi_backoff5');
SELECT url FROM payments.claim_reconciliation(1);
SELECT url FROM payments.claim_reconciliation(50) WHERE url LIKE 'http://127.0.0.1:9/%' ORDER BY url;
RESET payments.reconcile_after;

-- token fetches: only for a check that is due (payments.reconciliation_due, the claim's own
-- question), and after a failed fetch not before reconcile_after, doubling with each failure
-- after it, at most 24 hours (revoked credentials sent the client secret every minute while the
-- payment itself was asked every few hours)
BEGIN;
SET LOCAL payments.reconcile_after = '5min';
SELECT payments.register_provider('rc_ever2', 'eversend', '{"client_id": "eid", "client_secret": "revoked", "api_base": "http://127.0.0.1:9"}');
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, status_at, metadata) VALUES
	('rc_ever2', 'EVS2', 'pending', 500, 'UGX', now() - interval '2 days', '{}');
-- checked three times, the last 15 minutes ago: the next check waits 5 min * 2^2, so no token yet
INSERT INTO payments.reconciliation_checks (payment_id, provider, request, status_before, started_at, finished_at, outcome, error)
SELECT p.id, p.provider, 'GET earlier', 'pending', now() - interval '15 minutes' - n * interval '1 hour',
	   now() - interval '15 minutes' - n * interval '1 hour', 'error', 'no API token: HTTP 401'
  FROM payments.payments p, generate_series(0, 2) n WHERE p.provider_ref = 'EVS2';
SELECT provider FROM payments.api_token_requests() WHERE provider = 'rc_ever2';
UPDATE payments.reconciliation_checks SET started_at = started_at - interval '10 minutes'
 WHERE request = 'GET earlier' AND provider = 'rc_ever2';
SELECT provider FROM payments.api_token_requests() WHERE provider = 'rc_ever2';
SELECT credentials AS ever2 FROM payments.api_token_requests() WHERE provider = 'rc_ever2' \gset
-- refused: not asked again for reconcile_after
SELECT payments.store_api_token('rc_ever2', 401, NULL, '{"message": "invalid credentials"}', :'ever2');
SELECT token IS NULL AS no_token, failures, next_fetch_at - fetched_at AS waits, last_error
  FROM payments.api_tokens WHERE provider = 'rc_ever2';
SELECT provider FROM payments.api_token_requests() WHERE provider = 'rc_ever2';
-- its wait over, asked again; refused again, it waits twice as long, and so on up to a day
UPDATE payments.api_tokens SET next_fetch_at = now() - interval '1 second' WHERE provider = 'rc_ever2';
SELECT provider FROM payments.api_token_requests() WHERE provider = 'rc_ever2';
SELECT payments.store_api_token('rc_ever2', 401, NULL, '{"message": "invalid credentials"}', :'ever2');
SELECT failures, next_fetch_at - fetched_at AS waits FROM payments.api_tokens WHERE provider = 'rc_ever2';
UPDATE payments.api_tokens SET failures = 12 WHERE provider = 'rc_ever2';
SELECT payments.store_api_token('rc_ever2', 500, NULL, 'oops', :'ever2');
SELECT failures, next_fetch_at - fetched_at AS waits FROM payments.api_tokens WHERE provider = 'rc_ever2';
-- a token fetched ends the wait
SELECT payments.store_api_token('rc_ever2', 200, NULL, '{"token": "EVTOKEN"}', :'ever2');
SELECT token, failures, next_fetch_at, last_error FROM payments.api_tokens WHERE provider = 'rc_ever2';
-- new credentials forget the token and the failures: the next check that is due asks at once
UPDATE payments.api_tokens SET token = NULL, failures = 3, next_fetch_at = now() + interval '1 hour' WHERE provider = 'rc_ever2';
SELECT payments.register_provider('rc_ever2', 'eversend', '{"client_id": "eid", "client_secret": "renewed", "api_base": "http://127.0.0.1:9"}');
SELECT count(*) AS kept FROM payments.api_tokens WHERE provider = 'rc_ever2';
SELECT provider FROM payments.api_token_requests() WHERE provider = 'rc_ever2';
-- a token asked with the old credentials and answered after they changed (the trigger had nothing
-- to forget yet) is discarded, as is a failure: never kept, nor sent with the new ones
SELECT payments.store_api_token('rc_ever2', 200, NULL, '{"token": "OLDTOKEN"}', :'ever2');
SELECT payments.store_api_token('rc_ever2', 401, NULL, '{"message": "invalid credentials"}', :'ever2');
SELECT payments.store_api_token('rc_ever2', 200, NULL, '{"token": "NOTOKEN"}', NULL);
SELECT count(*) AS kept FROM payments.api_tokens WHERE provider = 'rc_ever2';
-- the request carries the digest of what it is made with, not the secret; one asked with the
-- current credentials is kept
SELECT credentials AS ever2 FROM payments.api_token_requests() WHERE provider = 'rc_ever2' \gset
SELECT :'ever2' ~ '^[0-9a-f]{64}$' AS digest, strpos(:'ever2', 'renewed') = 0 AS no_secret;
SELECT payments.store_api_token('rc_ever2', 200, NULL, '{"token": "NEWTOKEN"}', :'ever2');
SELECT token FROM payments.api_tokens WHERE provider = 'rc_ever2';
-- the api_base alone changed while a request was out: discarded too (the token it brings is
-- never sent to the new host)
SELECT payments.register_provider('rc_ever2', 'eversend', '{"client_id": "eid", "client_secret": "renewed", "api_base": "http://127.0.0.1:8"}');
SELECT payments.store_api_token('rc_ever2', 200, NULL, '{"token": "NEWTOKEN2"}', :'ever2');
SELECT count(*) AS kept FROM payments.api_tokens WHERE provider = 'rc_ever2';
ROLLBACK;

-- Stripe Connect: a connected account's payment is asked as that account (Stripe-Account: the
-- account its events named, metadata.stripe_account); a value that is no account id is an error
-- recorded, never sent (rolled back: later tests claim stuck payments)
BEGIN;
SELECT payments.apply_change(NULL, 'rc_stripe', payments.stripe_change(jsonb_build_object('type', 'payment_intent.processing',
	'account', 'acct_1Conn', 'created', extract(epoch FROM now() - interval '1 hour'), 'data', jsonb_build_object('object',
	'{"id": "pi_conn", "object": "payment_intent", "amount": 1000, "currency": "usd", "metadata": {"reference": "C1"}}'::jsonb))));
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, status_at, metadata) VALUES
	('rc_stripe', 'pi_conn_bad', 'pending', 10, 'USD', now() - interval '1 hour', '{"stripe_account": "acct_1\nStripe-Version: 1"}'),
	('rc_stripe', 'pi_conn_null', 'pending', 10, 'USD', now() - interval '1 hour', '{"stripe_account": null}');
SELECT provider_ref, metadata FROM payments.payments WHERE provider_ref = 'pi_conn';
SELECT url, headers FROM payments.claim_reconciliation(50) WHERE url LIKE 'http://127.0.0.1:9/v1/payment_intents/pi_conn%' ORDER BY url;
SELECT request, outcome, error FROM payments.reconciliation_checks WHERE request LIKE '%pi_conn%' AND outcome = 'error' ORDER BY request;
-- its answer (which names no account) keeps it
SELECT payments.record_reconciliation(c.id, 200, NULL,
	'{"id": "pi_conn", "object": "payment_intent", "status": "succeeded", "amount": 1000, "amount_received": 1000, "currency": "usd", "metadata": {"reference": "C1"}}')
  FROM payments.reconciliation_checks c WHERE c.request LIKE '%/pi_conn' AND c.outcome IS NULL;
SELECT provider_ref, status, metadata FROM payments.payments WHERE provider_ref = 'pi_conn';
ROLLBACK;

-- reconcile called by hand runs at READ COMMITTED whatever the session's default (a role's or
-- database's, which pg_cron's jobs inherit), in each of its transactions (an answer that pays numbers
-- a receipt at commit, which under snapshot isolation fails when another transaction paid that day
-- since the snapshot): a trigger notes the level of the claim (the check) and of the recorded answer
CREATE TABLE rc_levels (step text, level text);
CREATE FUNCTION rc_note_level() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.rc_levels VALUES (TG_OP, pg_catalog.current_setting('transaction_isolation'));
	RETURN NEW;
END $$;
CREATE TRIGGER rc_note_level AFTER INSERT OR UPDATE ON payments.reconciliation_checks
	FOR EACH ROW EXECUTE FUNCTION public.rc_note_level();
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, status_at, metadata) VALUES
	('rc_stripe', 'pi_levels', 'pending', 10, 'USD', now() - interval '1 hour', '{}');
SET default_transaction_isolation = 'serializable';
CALL payments.reconcile();
RESET default_transaction_isolation;
SELECT DISTINCT step, level FROM rc_levels ORDER BY step;
SELECT c.outcome FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
 WHERE p.provider_ref = 'pi_levels';
DROP TRIGGER rc_note_level ON payments.reconciliation_checks;
DROP FUNCTION rc_note_level();
DROP TABLE rc_levels;

-- Eversend answers (faked replies to checks, rolled back): a reply must be about the payment
-- asked for, and the kind it states sets one assumed (a pending payment whose news stated no
-- kind), as news would; one contradicting a kind stated before is an error, nothing changed
BEGIN;
INSERT INTO payments.payments (provider, provider_ref, kind, status, amount, currency, status_at, metadata) VALUES
	('rc_ever', 'C4', 'collection', 'pending', 500, 'UGX', now() - interval '1 hour', '{"kind_assumed": true}'),
	('rc_ever', 'C5', 'payout', 'pending', 500, 'UGX', now() - interval '1 hour', '{}'),
	('rc_ever', 'C6', 'collection', 'pending', 500, 'UGX', now() - interval '1 hour', '{"kind_assumed": true}');
INSERT INTO payments.reconciliation_checks (payment_id, provider, request, status_before)
SELECT p.id, p.provider, 'GET http://127.0.0.1:9/v1/transactions/' || p.provider_ref, 'pending'
  FROM payments.payments p WHERE p.provider = 'rc_ever' AND p.provider_ref IN ('C4', 'C5', 'C6');
SELECT p.provider_ref, payments.record_reconciliation(c.id, 200, NULL, format(
	'{"data": {"transaction": {"transactionId": "%s", "type": "%s", "status": "successful", "amount": "500", "currency": "UGX", "updatedAt": "%s"}}}',
	CASE p.provider_ref WHEN 'C6' THEN 'C7' ELSE p.provider_ref END,
	CASE p.provider_ref WHEN 'C5' THEN 'collection' ELSE 'payout' END,
	to_char((now() - interval '5 minutes') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
  FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
 WHERE p.provider = 'rc_ever' AND p.provider_ref IN ('C4', 'C5', 'C6') ORDER BY p.provider_ref;
-- receipts taken now, not at the commit that does not come
SET CONSTRAINTS payments.status_history_at_commit IMMEDIATE;
SELECT p.provider_ref, p.kind, p.status, p.metadata ? 'kind_assumed' AS assumed, r.receipt_no IS NOT NULL AS has_receipt,
	   c.outcome, c.error
  FROM payments.payments p JOIN payments.reconciliation_checks c ON c.payment_id = p.id
  LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE p.provider = 'rc_ever' AND c.request LIKE 'GET http://127.0.0.1:9/v1/transactions/C%' ORDER BY c.id;
SELECT count(*) AS renamed FROM payments.payments WHERE provider = 'rc_ever' AND provider_ref = 'C7';
ROLLBACK;
