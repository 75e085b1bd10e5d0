-- Roles: payments_admin configures, payments_ingest only ingests, payments_analyst only reads the
-- reports (donors masked).  Each denial is tried as each role; SECURITY DEFINER functions pin
-- search_path and a malicious schema earlier on the path does not hijack them.
\set SHOW_CONTEXT never
\set ON_ERROR_ROLLBACK on
-- in one transaction, on a clean slate: the ROLLBACK at the end puts back what other tests left
BEGIN;
SET LOCAL client_min_messages = warning;
TRUNCATE payments.payments, payments.events, payments.rejections, payments.fx_rates CASCADE;
RESET client_min_messages;
\set VERBOSITY terse

SELECT rolname, rolcanlogin, rolsuper, rolinherit FROM pg_roles WHERE rolname LIKE 'payments\_%' ORDER BY 1;

-- what PUBLIC and each role may do in the schema
SELECT r AS role, has_schema_privilege(r, 'payments', 'USAGE') AS usage, has_schema_privilege(r, 'payments', 'CREATE') AS "create"
  FROM unnest(ARRAY['public', 'payments_admin', 'payments_ingest', 'payments_analyst']) AS r;
SELECT c.relname, c.relkind,
	   has_table_privilege('payments_admin', c.oid, 'SELECT') AS admin_select,
	   has_table_privilege('payments_admin', c.oid, 'INSERT') AS admin_insert,
	   has_table_privilege('payments_ingest', c.oid, 'SELECT') AS ingest_select,
	   has_table_privilege('payments_analyst', c.oid, 'SELECT') AS analyst_select
  FROM pg_class c WHERE c.relnamespace = 'payments'::regnamespace AND c.relkind IN ('r', 'v')
   AND c.relname IN ('certificates', 'currencies', 'daily_summary', 'donor_summary', 'events', 'fx_rates', 'payments',
					 'provider_kinds', 'providers', 'receipt_counters', 'receipts', 'refused_transitions', 'rejections', 'secrets',
					 'status_history', 'statuses', 'transitions')
 ORDER BY c.relname;
-- in the whole schema, ingest reads nothing and the analyst only the report views
SELECT c.relname, has_table_privilege('payments_ingest', c.oid, 'SELECT') AS ingest_select,
	   has_table_privilege('payments_analyst', c.oid, 'SELECT') AS analyst_select
  FROM pg_class c WHERE c.relnamespace = 'payments'::regnamespace
   AND (has_table_privilege('payments_ingest', c.oid, 'SELECT, INSERT, UPDATE, DELETE')
		OR has_table_privilege('payments_analyst', c.oid, 'SELECT, INSERT, UPDATE, DELETE'))
 ORDER BY 1;
SELECT p.proname,
	   has_function_privilege('payments_ingest', p.oid, 'EXECUTE') AS ingest,
	   has_function_privilege('payments_analyst', p.oid, 'EXECUTE') AS analyst,
	   has_function_privilege('payments_admin', p.oid, 'EXECUTE') AS admin
  FROM pg_proc p WHERE p.pronamespace = 'payments'::regnamespace
   AND (has_function_privilege('payments_ingest', p.oid, 'EXECUTE')
		OR has_function_privilege('payments_analyst', p.oid, 'EXECUTE')
		OR p.proname IN ('register_provider', 'add_secret', 'revoke_secret', 'add_certificate', 'recent_events',
						 'receipt', 'apply_change', 'apply_event', 'issue_receipt', 'donor_history'))
   AND NOT has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1;

-- every SECURITY DEFINER function pins search_path
SELECT p.oid::regprocedure AS unpinned_security_definer
  FROM pg_proc p WHERE p.pronamespace = 'payments'::regnamespace AND p.prosecdef
   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) AS c WHERE c LIKE 'search\_path=%');
SELECT count(*) > 8 AS several_security_definers FROM pg_proc p
 WHERE p.pronamespace = 'payments'::regnamespace AND p.prosecdef;

-- the PL/pgSQL steps that run under their caller's search_path (no SET clause) are not granted
-- to the ingest or analyst roles: only pinned callers reach them
SELECT p.oid::regprocedure AS unpinned_step_granted
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'payments'::regnamespace AND l.lanname = 'plpgsql'
   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) AS c WHERE c LIKE 'search\_path=%')
   AND (has_function_privilege('payments_ingest', p.oid, 'EXECUTE')
		OR has_function_privilege('payments_analyst', p.oid, 'EXECUTE'))
 ORDER BY 1;
SELECT count(*) >= 12 AS several_unpinned_steps
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'payments'::regnamespace AND l.lanname = 'plpgsql'
   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) AS c WHERE c LIKE 'search\_path=%');

-- test logins (NOLOGIN here: SET ROLE is enough) in each group, and one in none
CREATE ROLE regress_admin NOLOGIN IN ROLE payments_admin;
CREATE ROLE regress_ingest NOLOGIN IN ROLE payments_ingest;
CREATE ROLE regress_analyst NOLOGIN IN ROLE payments_analyst;
CREATE ROLE regress_nobody NOLOGIN;

-- known data, as the superuser
SELECT payments.register_provider('ro-stripe', 'stripe', '{"receipt_prefix": "RO"}');
SELECT payments.add_secret('ro-stripe', 'whsec_roles') AS secret_id \gset
WITH p AS (
	INSERT INTO payments.payments (provider_ref, provider, status, amount, currency, fee, method,
								   donor_name, donor_phone, donor_email, paid_at, status_at)
	VALUES ('pi_r1', 'ro-stripe', 'paid', 20, 'USD', 0.88, 'card', 'Rudo N', '263779876543', 'rudo@example.net',
			'2024-07-01 10:00Z', '2024-07-01 10:00Z')
	RETURNING id)
INSERT INTO payments.receipts (receipt_no, payment_id) SELECT 'LP-20240701-000001', p.id FROM p;
INSERT INTO payments.events (provider, event_id, body, payload, headers) VALUES ('ro-stripe', 'evt_r1', '{}', '{}', '{}');
INSERT INTO payments.events (provider, event_id, body, payload, headers, state) VALUES ('ro-stripe', 'evt_r2', '{}', '{}', '{}', 'dead');
INSERT INTO payments.rejections (provider, outcome, reason, body_sha256, body_size, headers)
VALUES ('ro-stripe', 'rejected', 'bad_signature', '\x00', 2, '{}');

-- the analyst: reports, masked
SET ROLE regress_analyst;
SELECT day, provider, currency, method, status, count, gross, fees, net FROM payments.daily_summary;
SELECT donor, name, email, phone, currency, gifts, total FROM payments.donor_summary;
SELECT currency, method, paid, gross, new_donors, first_receipt FROM payments.daily_report('2024-07-01');
SELECT "rank", donor, currency_code, total FROM payments.top_donors('2024-07-01', '2024-07-02');
SELECT currency, paid, net FROM payments.currency_summary('2024-07-01', '2024-07-02');
SELECT currency, method, paid FROM payments.method_summary('2024-07-01', '2024-07-02');
SELECT provider, currency, fees FROM payments.earnings('2024-07-01', '2024-07-02');
SELECT * FROM payments.base_totals('2024-07-01', '2024-07-02');
SELECT status, amount, receipt_no FROM payments.donor_history_by_id((SELECT donor_id FROM payments.donor_summary));
-- by e-mail or phone, a lookup would unmask them: admins only
SELECT status, amount, receipt_no FROM payments.donor_history('rudo@example.net');
-- the rates in fx_rates are to the database's base currency: a session cannot name another
SET payments.base_currency = 'GBP';
-- ... and nothing else
SELECT * FROM payments.payments;
SELECT donor_email FROM payments.payments;
SELECT * FROM payments.secrets;
SELECT body FROM payments.events;
SELECT headers FROM payments.events;
SELECT * FROM payments.rejections;
SELECT * FROM payments.providers;
SELECT * FROM payments.certificates;
SELECT * FROM payments.status_history;
SELECT * FROM payments.fx_rates;
SELECT * FROM payments.recent_events();
SELECT * FROM payments.receipt('LP-20240701-000001');
SELECT * FROM payments.ingest('ro-stripe', '{}', '{}');
SELECT * FROM payments.meta_subscribe('x', 'subscribe', 't', 'c');
SELECT payments.register_provider('evil', 'stripe');
SELECT payments.add_secret('ro-stripe', 'whsec_mine');
SELECT payments.apply_event(1);
SELECT payments.issue_receipt(1, now());
INSERT INTO payments.fx_rates VALUES ('2024-07-01', 'EUR', 1);
CREATE TABLE payments.mine (x int);
-- nor attaches the commit steps (SECURITY DEFINER) to a table of its own, to act on rows made up there
CREATE TEMP TABLE made_up (id bigint, payment_id bigint, from_status text, to_status text, status_at timestamptz,
						   recorded_at timestamptz DEFAULT now());
CREATE TRIGGER made_up_paid AFTER INSERT ON made_up FOR EACH ROW EXECUTE FUNCTION payments.transition_committed();
CREATE TRIGGER made_up_event AFTER INSERT ON made_up FOR EACH ROW EXECUTE FUNCTION payments.enqueue_event();
RESET ROLE;

-- the ingest role: ingest and the Meta handshake, nothing else
SET ROLE regress_ingest;
SELECT http_status, outcome FROM payments.ingest('ro-stripe', '{}', '{}');
SELECT http_status, outcome FROM payments.ingest('no-such-provider', '{}', '{}');
SELECT * FROM payments.meta_subscribe('no-such-provider', 'subscribe', 't', 'c');
SELECT * FROM payments.payments;
SELECT * FROM payments.secrets;
SELECT * FROM payments.events;
SELECT * FROM payments.rejections;
SELECT * FROM payments.providers;
SELECT * FROM payments.daily_summary;
SELECT * FROM payments.donor_summary;
SELECT * FROM payments.daily_report('2024-07-01');
SELECT * FROM payments.top_donors('2024-07-01', '2024-07-02');
SELECT * FROM payments.donor_history('rudo@example.net');
SELECT * FROM payments.recent_events();
SELECT * FROM payments.receipt('LP-20240701-000001');
SELECT payments.register_provider('evil', 'stripe');
SELECT payments.add_secret('ro-stripe', 'whsec_mine');
SELECT payments.revoke_secret(:secret_id);
SELECT payments.apply_event(1);
SELECT payments.issue_receipt(1, now());
INSERT INTO payments.events (provider, event_id, body, payload, headers) VALUES ('ro-stripe', 'forged', '{}', '{}', '{}');
RESET ROLE;

-- the admin: configuration, rates, the event listing; payments and events stay read-only
SET ROLE regress_admin;
SELECT payments.register_provider('ro-paynow', 'paynow');
SELECT payments.add_secret('ro-paynow', 'integration-key') IS NOT NULL AS added;
SELECT payments.revoke_secret(:secret_id);
SELECT provider, secret, revoked_at IS NOT NULL AS revoked FROM payments.secrets WHERE provider LIKE 'ro-%' ORDER BY id;
INSERT INTO payments.fx_rates VALUES ('2024-07-01', 'EUR', 1.07);
INSERT INTO payments.currencies (code, exponent) VALUES ('XTS', 2);
-- the installed currencies stay as installed (a restore installs them again, as they were); the
-- admin's own may change
UPDATE payments.currencies SET exponent = 0 WHERE code = 'MGA';
DELETE FROM payments.currencies WHERE code = 'ZWG';
UPDATE payments.currencies SET exponent = 3, seeded = true WHERE code = 'XTS';
SELECT code, exponent, seeded FROM payments.currencies WHERE code IN ('MGA', 'XTS', 'ZWG') ORDER BY code;
SELECT provider_name, event_id, state FROM payments.recent_events('ro-stripe');
SELECT count(*) AS rejections FROM payments.rejections;
SELECT donor_email FROM payments.payments;
SELECT currency, paid FROM payments.daily_report('2024-07-01') WHERE method = '(all)';
UPDATE payments.payments SET amount = 0;
DELETE FROM payments.events;
DELETE FROM payments.status_history;
INSERT INTO payments.receipt_counters VALUES ('LP', '2024-07-01', 5);
SELECT payments.apply_event(1);
SELECT payments.issue_receipt(1, now());
SELECT payments.enqueue_raw_event(e) FROM payments.events e WHERE false;
CREATE TABLE payments.mine (x int);
-- it replays stored events through the state machine ...
SELECT payments.replay_event(e.id) FROM payments.events e WHERE e.event_id = 'evt_r1';
SELECT payments.replay_dead('ro-stripe') AS requeued;
SELECT outcome FROM payments.retry_events();
SELECT event_id, state FROM payments.events ORDER BY event_id;
-- ... but calls no shim function and runs no job that calls providers or endpoints
SELECT * FROM payments.ingest('ro-stripe', '{}', '{}');
SELECT * FROM payments.ingest_batch('{}', '{}', '{}', '{}', '{}');
SELECT * FROM payments.flows_exchange('ro-stripe', '{}', '\x7b7d');
CALL payments.deliver_outbox();
CALL payments.reconcile();
CALL payments.run_job('retry');
RESET ROLE;

-- a role in no payments group cannot even reach the schema
SET ROLE regress_nobody;
SELECT payments.e164_digits('+263 77 123 4567');
SELECT * FROM payments.daily_summary;
SELECT * FROM payments.ingest('ro-stripe', '{}', '{}');
RESET ROLE;

-- hijacking: a schema first on the path with look-alike functions and operators
CREATE SCHEMA regress_evil;
GRANT USAGE ON SCHEMA regress_evil TO PUBLIC;
CREATE FUNCTION regress_evil.hijacked(text) RETURNS text LANGUAGE plpgsql AS
	$$ BEGIN RAISE EXCEPTION 'hijacked by %', $1; END $$;
CREATE FUNCTION regress_evil.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT regress_evil.hijacked('lower(' || $1 || ')') $$;
CREATE FUNCTION regress_evil.upper(text) RETURNS text LANGUAGE sql AS $$ SELECT regress_evil.hijacked('upper(' || $1 || ')') $$;
CREATE FUNCTION regress_evil.left(text, integer) RETURNS text LANGUAGE sql AS $$ SELECT regress_evil.hijacked('left(' || $1 || ')') $$;
CREATE FUNCTION regress_evil.right(text, integer) RETURNS text LANGUAGE sql AS $$ SELECT regress_evil.hijacked('right(' || $1 || ')') $$;
CREATE FUNCTION regress_evil.split_part(text, text, integer) RETURNS text LANGUAGE sql AS $$ SELECT regress_evil.hijacked('split_part(' || $1 || ')') $$;
CREATE FUNCTION regress_evil.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT regress_evil.hijacked('current_setting') $$;
CREATE FUNCTION regress_evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS
	$$ BEGIN RAISE EXCEPTION 'hijacked by % = %', $1, $2; END $$;
CREATE OPERATOR regress_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.texteq);
SET ROLE regress_analyst;
SET search_path = regress_evil, pg_catalog, public;
-- the trap works on a query that does not pin its path ...
SELECT lower('X');
SELECT 'a'::text = 'a'::text;
-- ... and not on the reports
SELECT donor, email, phone FROM payments.donor_summary;
SELECT currency, paid, gross, new_donors FROM payments.daily_report('2024-07-01');
SELECT "rank", donor, total FROM payments.top_donors('2024-07-01', '2024-07-02', 'usd');
SELECT currency, paid FROM payments.currency_summary('2024-07-01', '2024-07-02');
SELECT count(*) FROM payments.donor_history_by_id((SELECT min(donor_id) FROM payments.donor_summary));
SELECT payments.mask_email('rudo@example.net'), payments.mask_phone('263779876543');
RESET search_path;
RESET ROLE;
-- (the admin's lookup by e-mail, under the trap too)
SET ROLE regress_admin;
SET search_path = regress_evil, pg_catalog, public;
SELECT count(*) FROM payments.donor_history('RUDO@example.net');
RESET search_path;
RESET ROLE;
-- the jobs, run as a superuser: oid = integer has no exact operator in pg_catalog, so one first on
-- the path would be chosen where the caller's path is used (whoever may create in public, the
-- database's owner in PostgreSQL 15, would run code as the job); this session holds the job's
-- lock, which run_job looks up and lets go
CREATE FUNCTION regress_evil.oideq(oid, integer) RETURNS boolean LANGUAGE plpgsql AS
	$$ BEGIN RAISE EXCEPTION 'hijacked by % = %', $1, $2; END $$;
CREATE OPERATOR regress_evil.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = regress_evil.oideq);
SELECT pg_advisory_lock(1885436269, payments.job_lock_key('retry'));
SET search_path = regress_evil, pg_catalog, public;
SELECT 1::oid = 1 AS trap_set;
CALL payments.run_job('retry');
SHOW search_path;
RESET search_path;
SELECT count(*) AS job_locks_left FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
-- a valid delivery ingested under the trap is applied as usual (receipt issued)
SELECT payments.add_secret('ro-stripe', 'whsec_hijack') IS NOT NULL AS added;
SELECT extract(epoch FROM now())::bigint AS t,
	   '{"id":"evt_hj","object":"event","type":"payment_intent.succeeded","created":1719828000,"data":{"object":{"id":"pi_hj","object":"payment_intent","amount":1500,"currency":"usd","receipt_email":"hj@example.org"}}}' AS body \gset
SELECT 't=' || :'t' || ',v1=' || encode(hmac(:'t' || '.' || :'body', 'whsec_hijack', 'sha256'), 'hex') AS sig \gset
-- and a batch of three (stored by one statement, numbered together)
SELECT array_agg(jsonb_build_object('stripe-signature', 't=' || :'t' || ',v1=' ||
			encode(hmac(:'t' || '.' || b, 'whsec_hijack', 'sha256'), 'hex')) ORDER BY i) AS batch_headers,
	   array_agg(convert_to(b, 'UTF8') ORDER BY i) AS batch_bodies
  FROM (SELECT i, format('{"id":"evt_hjb%s","object":"event","type":"payment_intent.succeeded","created":1719828000,'
						 '"data":{"object":{"id":"pi_hjb%s","object":"payment_intent","amount":1500,"currency":"usd"}}}', i, i) AS b
		  FROM generate_series(1, 3) i) x \gset
SET ROLE regress_ingest;
SET search_path = regress_evil, pg_catalog, public;
SELECT http_status, outcome FROM payments.ingest('ro-stripe', '{"stripe-signature": "t=1,v1=00"}', '{"id": "evt_x"}');
SELECT http_status, outcome FROM payments.ingest('ro-stripe', jsonb_build_object('stripe-signature', :'sig'), convert_to(:'body', 'UTF8'));
SELECT http_status, outcome, event_id FROM payments.ingest_batch('{ro-stripe,ro-stripe,ro-stripe}', :'batch_headers',
	:'batch_bodies', '{NULL,NULL,NULL}', '{NULL,NULL,NULL}');
-- the receipt number is taken at commit: take it now, still under the trap
SET CONSTRAINTS payments.status_history_at_commit IMMEDIATE;
RESET search_path;
RESET ROLE;
SELECT provider_ref, status, amount, currency, receipt_no LIKE 'RO-%' AS has_receipt
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE provider_ref IN ('pi_hj', 'pi_hjb1', 'pi_hjb2', 'pi_hjb3') ORDER BY provider_ref;
-- the batch's receipts were inserted by one statement
SELECT count(DISTINCT r.cmin::text) AS statements FROM payments.receipts r JOIN payments.payments p ON p.id = r.payment_id
 WHERE p.provider_ref LIKE 'pi_hjb%';

ROLLBACK;
