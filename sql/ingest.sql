-- payments.ingest end to end in SQL: verification, idempotent storage, rotation,
-- expiry and revocation, tolerance, malformed bodies, and what is recorded.
-- Signatures are made here with pgcrypto, an implementation independent of ours.
\set SHOW_CONTEXT never

CREATE SCHEMA t;
CREATE FUNCTION t.now_s() RETURNS bigint LANGUAGE sql
	AS $$ SELECT floor(extract(epoch FROM clock_timestamp()))::bigint $$;
CREATE FUNCTION t.stripe_sig(body bytea, secret text, ts bigint DEFAULT t.now_s()) RETURNS text
	LANGUAGE sql AS $$
	SELECT 't=' || ts || ',v1=' || encode(hmac(convert_to(ts || '.', 'UTF8') || body, convert_to(secret, 'UTF8'), 'sha256'), 'hex')
$$;
CREATE FUNCTION t.stripe(body text, secret text, ts bigint DEFAULT t.now_s()) RETURNS jsonb
	LANGUAGE sql AS $$
	SELECT jsonb_build_object('stripe-signature', t.stripe_sig(convert_to(body, 'UTF8'), secret, ts),
							  'content-type', 'application/json',
							  'authorization', 'Bearer must-not-be-stored')
$$;
CREATE FUNCTION t.standard(id text, body text, secret text, ts bigint DEFAULT t.now_s(), prefix text DEFAULT 'webhook') RETURNS jsonb
	LANGUAGE sql AS $$
	SELECT jsonb_build_object(prefix || '-id', id, prefix || '-timestamp', ts::text,
		prefix || '-signature', 'v1,' || encode(hmac(convert_to(id || '.' || ts || '.' || body, 'UTF8'),
												   decode(substr(secret, 7), 'base64'), 'sha256'), 'base64'))
$$;

SELECT payments.register_provider('shop', 'stripe');
SELECT payments.add_secret('shop', 'whsec_old') AS old_secret \gset
\set ev1 '{"id":"evt_1","object":"event","type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_1","amount":2500,"currency":"usd"}}}'

-- a valid delivery is stored once; the second is a duplicate
SELECT * FROM payments.ingest('shop', t.stripe(:'ev1', 'whsec_old'), convert_to(:'ev1', 'UTF8'), '203.0.113.7', 'req-1');
SELECT * FROM payments.ingest('shop', t.stripe(:'ev1', 'whsec_old'), convert_to(:'ev1', 'UTF8'), '203.0.113.7', 'req-2');
SELECT provider, event_id, event_type, event_at = to_timestamp(1718000000) AS event_at_ok,
	   convert_from(body, 'UTF8') = :'ev1' AS body_exact, payload -> 'data' -> 'object' ->> 'id' AS object_id,
	   headers ? 'stripe-signature' AS has_signature, headers ? 'authorization' AS has_authorization,
	   source_ip, request_id, state
  FROM payments.events WHERE provider = 'shop';

-- tampered body, wrong secret, missing header, garbage header: rejected and recorded, nothing stored
SELECT * FROM payments.ingest('shop', t.stripe(:'ev1', 'whsec_old'), convert_to(replace(:'ev1', '2500', '1'), 'UTF8'));
SELECT * FROM payments.ingest('shop', t.stripe(:'ev1', 'whsec_wrong'), convert_to(:'ev1', 'UTF8'));
SELECT * FROM payments.ingest('shop', '{"content-type": "application/json"}', convert_to(:'ev1', 'UTF8'));
SELECT * FROM payments.ingest('shop', '{"stripe-signature": "garbage"}', convert_to(:'ev1', 'UTF8'));
SELECT * FROM payments.ingest('shop', '{"stripe-signature": ["t=1", "v1=2"]}', convert_to(:'ev1', 'UTF8'));

-- livemode: a test-mode event is stored and ignored by a provider in live mode (the default), and
-- a live one by a provider in test mode (200: Stripe sends connected accounts' test events to a
-- live Connect endpoint, and retries anything else); an event without livemode is taken; a
-- test-mode api_key needs "livemode": false
\set evtest '{"id":"evt_test_1","object":"event","type":"payment_intent.succeeded","livemode":false,"data":{"object":{"id":"pi_test_1","amount":100,"currency":"usd"}}}'
\set evlive '{"id":"evt_live_1","object":"event","type":"payment_intent.succeeded","livemode":true,"data":{"object":{"id":"pi_live_1","amount":100,"currency":"usd"}}}'
SELECT * FROM payments.ingest('shop', t.stripe(:'evtest', 'whsec_old'), convert_to(:'evtest', 'UTF8'), NULL, 'req-testmode');
SELECT provider, event_id, state FROM payments.events WHERE event_id IN ('evt_test_1', 'evt_live_1') ORDER BY 1, 2;
-- in a batch too, and when applied again
SELECT http_status, outcome FROM payments.ingest_batch(ARRAY['shop'], ARRAY[t.stripe(replace(:'evtest', 'evt_test_1', 'evt_test_2'), 'whsec_old')],
	ARRAY[convert_to(replace(:'evtest', 'evt_test_1', 'evt_test_2'), 'UTF8')], ARRAY[NULL]::inet[], ARRAY[NULL]::text[]);
SELECT payments.apply_event(id) FROM payments.events WHERE provider = 'shop' AND event_id = 'evt_test_2';
SELECT * FROM payments.ingest('shop', t.stripe(:'evlive', 'whsec_old'), convert_to(:'evlive', 'UTF8'));
SELECT payments.register_provider('shop-test', 'stripe', '{"livemode": false}');
SELECT payments.add_secret('shop-test', 'whsec_old') IS NOT NULL AS added;
SELECT * FROM payments.ingest('shop-test', t.stripe(:'evtest', 'whsec_old'), convert_to(:'evtest', 'UTF8'));
SELECT * FROM payments.ingest('shop-test', t.stripe(:'evlive', 'whsec_old'), convert_to(:'evlive', 'UTF8'));
SELECT provider, provider_ref, status FROM payments.payments WHERE provider_ref IN ('pi_test_1', 'pi_live_1') ORDER BY 1;
SELECT provider, event_id, state FROM payments.events WHERE event_id IN ('evt_test_1', 'evt_live_1') ORDER BY 1, 2;
SELECT payments.register_provider('shop-test', 'stripe', '{"livemode": "no"}');
SELECT payments.register_provider('shop-test', 'stripe', '{"api_key": "sk_test_abc"}');
SELECT payments.register_provider('shop-test', 'stripe', '{"api_key": "rk_live_abc", "livemode": false}');
SELECT payments.register_provider('shop-test', 'stripe', '{"api_key": "sk_test_abc", "livemode": false}');

-- tolerance (default 300 s) for old and future timestamps, then a wider window by setting
\set ev2 '{"id":"evt_2","type":"charge.succeeded"}'
SELECT * FROM payments.ingest('shop', t.stripe(:'ev2', 'whsec_old', t.now_s() - 400), convert_to(:'ev2', 'UTF8'));
SELECT * FROM payments.ingest('shop', t.stripe(:'ev2', 'whsec_old', t.now_s() + 400), convert_to(:'ev2', 'UTF8'));
SELECT payments.register_provider('shop', 'stripe', '{"tolerance": 600}');
SELECT * FROM payments.ingest('shop', t.stripe(:'ev2', 'whsec_old', t.now_s() - 400), convert_to(:'ev2', 'UTF8'));
-- written with a fraction part, the whole number it is
SELECT payments.register_provider('shop', 'stripe', '{"tolerance": 600.0}');
\set ev2b '{"id":"evt_2b","type":"charge.succeeded"}'
SELECT * FROM payments.ingest('shop', t.stripe(:'ev2b', 'whsec_old', t.now_s() - 400), convert_to(:'ev2b', 'UTF8'));
SELECT payments.register_provider('shop', 'stripe', '{}');
-- a tolerance changed behind register_provider's back: the server's problem (SQLSTATE 55000, which
-- the shim answers 503 so that the sender retries), not a data exception answered 400
BEGIN;
UPDATE payments.providers SET settings = '{"tolerance": "soon"}' WHERE name = 'shop';
\set VERBOSITY sqlstate
SELECT * FROM payments.ingest('shop', t.stripe(:'ev2b', 'whsec_old'), convert_to(:'ev2b', 'UTF8'));
\set VERBOSITY default
ROLLBACK;

-- rotation: old and new secrets both verify until the old one is revoked
SELECT payments.add_secret('shop', 'whsec_new') AS new_secret \gset
\set ev3 '{"id":"evt_3","type":"charge.succeeded"}'
\set ev4 '{"id":"evt_4","type":"charge.succeeded"}'
SELECT * FROM payments.ingest('shop', t.stripe(:'ev3', 'whsec_old'), convert_to(:'ev3', 'UTF8'));
SELECT * FROM payments.ingest('shop', t.stripe(:'ev4', 'whsec_new'), convert_to(:'ev4', 'UTF8'));
SELECT payments.revoke_secret(:old_secret);
\set ev5 '{"id":"evt_5","type":"charge.succeeded"}'
SELECT * FROM payments.ingest('shop', t.stripe(:'ev5', 'whsec_old'), convert_to(:'ev5', 'UTF8'));
-- an expired secret no longer verifies; with none live, every delivery is refused
UPDATE payments.secrets SET expires_at = now() - interval '1 minute' WHERE id = :new_secret;
SELECT * FROM payments.ingest('shop', t.stripe(:'ev5', 'whsec_new'), convert_to(:'ev5', 'UTF8'));
UPDATE payments.secrets SET expires_at = NULL WHERE id = :new_secret;

-- within one transaction (the shim's batches) a provider and its secrets are read once, and read
-- again after any change to them, including one a rolled-back savepoint undid
BEGIN;
\set ev7 '{"id":"evt_7","type":"charge.succeeded"}'
\set ev8 '{"id":"evt_8","type":"charge.succeeded"}'
\set ev9 '{"id":"evt_9","type":"charge.succeeded"}'
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev7', 'whsec_new'), convert_to(:'ev7', 'UTF8'));
SELECT payments.add_secret('shop', 'whsec_txn') AS txn_secret \gset
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev8', 'whsec_txn'), convert_to(:'ev8', 'UTF8'));
SELECT payments.revoke_secret(:txn_secret);
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev9', 'whsec_txn'), convert_to(:'ev9', 'UTF8'));
SAVEPOINT s;
SELECT payments.add_secret('shop', 'whsec_savepoint') IS NOT NULL AS added;
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev9', 'whsec_savepoint'), convert_to(:'ev9', 'UTF8'));
ROLLBACK TO s;
\set ev10 '{"id":"evt_10","type":"charge.succeeded"}'
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev10', 'whsec_savepoint'), convert_to(:'ev10', 'UTF8'));
SELECT payments.register_provider('shop', 'stripe', '{"tolerance": 600}');
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev10', 'whsec_new', t.now_s() - 400), convert_to(:'ev10', 'UTF8'));
ROLLBACK;
-- kept across transactions, but not what a rolled-back one changed: the tolerance of 600 and the
-- secret whsec_txn it read are gone with it
\set ev11 '{"id":"evt_11","type":"charge.succeeded"}'
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev11', 'whsec_new', t.now_s() - 400), convert_to(:'ev11', 'UTF8'));
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev11', 'whsec_txn'), convert_to(:'ev11', 'UTF8'));
SELECT http_status, outcome FROM payments.ingest('shop', t.stripe(:'ev11', 'whsec_new'), convert_to(:'ev11', 'UTF8'));

-- verified but unusable bodies: 400 invalid, recorded, nothing stored
CREATE FUNCTION t.try(body bytea) RETURNS TABLE (http_status int, outcome text, event_id text)
	LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('shop', jsonb_build_object('stripe-signature', t.stripe_sig(body, 'whsec_new')), body)
$$;
SELECT * FROM t.try(convert_to('{"id":"evt_6",', 'UTF8'));
SELECT * FROM t.try(convert_to('[{"id":"evt_6"}]', 'UTF8'));
SELECT * FROM t.try(convert_to('"evt_6"', 'UTF8'));
SELECT * FROM t.try('\x7b226964223a226576745f36222c2278223a22ff227d'::bytea);	-- invalid UTF-8
SELECT * FROM t.try('\x7b226964223a226576745f36227d00'::bytea);				-- trailing NUL byte
SELECT * FROM t.try(convert_to('{"id":"evt_6","x":"\u0000"}', 'UTF8'));			-- \u0000 cannot be stored
SELECT * FROM t.try(convert_to('{"id":"evt_6","n":1e1000000}', 'UTF8'));		-- number out of range
SELECT * FROM t.try(convert_to(repeat('[', 200000) || repeat(']', 200000), 'UTF8'));	-- too deep
SELECT * FROM t.try(convert_to('', 'UTF8'));
SELECT * FROM t.try(convert_to('{"type":"charge.succeeded"}', 'UTF8'));			-- no id
SELECT * FROM t.try(convert_to('{"id":42}', 'UTF8'));
SELECT * FROM t.try(convert_to('{"id":""}', 'UTF8'));
SELECT * FROM t.try(convert_to('{"id":"' || repeat('e', 256) || '"}', 'UTF8'));
-- unicode is fine
SELECT * FROM t.try(convert_to('{"id":"evt_ü","note":"Tatenda 🙏 \u00e9\ud83d\ude00"}', 'UTF8'));

-- what the rejections table holds: reasons, sender, request id, size and hash of the body, no credentials
SELECT outcome, reason, count(*) FROM payments.rejections WHERE provider = 'shop' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT reason, regexp_replace(detail, '\d+ s (old|in)', 'N s \1') AS detail
  FROM payments.rejections WHERE provider = 'shop' AND outcome = 'rejected' ORDER BY id;
SELECT bool_and(body_sha256 = sha256(convert_to(replace(:'ev1', '2500', '1'), 'UTF8'))) AS hash_kept,
	   bool_and(body_size = length(convert_to(replace(:'ev1', '2500', '1'), 'UTF8'))) AS size_kept
  FROM payments.rejections WHERE id = (SELECT min(id) FROM payments.rejections WHERE provider = 'shop');
SELECT count(*) FILTER (WHERE headers ? 'authorization') AS with_authorization FROM payments.rejections WHERE provider = 'shop';
-- rejections are kept for a while, not for ever (payments.prune_rejections, the daily job payments-prune):
-- two of them made 91 and 89 days old, then the default 90 days pruned
UPDATE payments.rejections SET received_at = now() - interval '91 days'
 WHERE id = (SELECT min(id) FROM payments.rejections WHERE provider = 'shop');
UPDATE payments.rejections SET received_at = now() - interval '89 days'
 WHERE id = (SELECT max(id) FROM payments.rejections WHERE provider = 'shop');
SELECT count(*) AS shop_rejections FROM payments.rejections WHERE provider = 'shop' \gset
SELECT payments.prune_rejections() AS pruned;
SELECT :shop_rejections - count(*) AS gone, min(received_at) > now() - interval '90 days' AS none_older
  FROM payments.rejections WHERE provider = 'shop';
-- except PayPal deliveries whose signature verified (invalid: no usable event), however old: their
-- transmission ids must stay spent
-- (of a PayPal provider: anyone may send any provider that header)
SELECT payments.register_provider('pp-prune', 'paypal', '{"webhook_id": "WH-PRUNE"}');
INSERT INTO payments.rejections (provider, received_at, outcome, reason, body_sha256, body_size, headers)
VALUES ('pp-prune', now() - interval '400 days', 'invalid', 'missing_event_id', sha256('x'), 1, '{"paypal-transmission-id": "t-kept"}'),
	   ('pp-prune', now() - interval '400 days', 'rejected', 'signature_mismatch', sha256('x'), 1, '{"paypal-transmission-id": "t-gone"}'),
	   ('shop', now() - interval '400 days', 'invalid', 'invalid_json', sha256('x'), 1, '{"paypal-transmission-id": "t-shop"}');
SELECT payments.prune_rejections() AS pruned;
SELECT headers ->> 'paypal-transmission-id' AS kept FROM payments.rejections
 WHERE provider IN ('shop', 'pp-prune') AND headers ? 'paypal-transmission-id';
DELETE FROM payments.providers WHERE name = 'pp-prune';
SELECT payments.prune_rejections(interval '-1 day');
SELECT payments.prune_rejections(NULL);
SELECT event_id FROM payments.events WHERE provider = 'shop' ORDER BY id;

-- unknown provider: 404, nothing recorded
SELECT * FROM payments.ingest('nobody', t.stripe(:'ev1', 'whsec_new'), convert_to(:'ev1', 'UTF8'));
-- an answer is durable: ingest's transaction commits with synchronous_commit on even where the
-- session (its role, its database) says off; the session's setting comes back after it
SET synchronous_commit = off;
BEGIN;
SELECT http_status FROM payments.ingest('nobody', '{}', ''::bytea);
SHOW synchronous_commit;
COMMIT;
SHOW synchronous_commit;
SET synchronous_commit = local;
SELECT http_status FROM payments.ingest('nobody', '{}', ''::bytea);
SHOW synchronous_commit;
RESET synchronous_commit;
SELECT * FROM payments.ingest('NOT a name', '{}', ''::bytea);

-- caller errors
SELECT * FROM payments.ingest(NULL, '{}', ''::bytea);
SELECT * FROM payments.ingest('shop', '{}', NULL);
SELECT * FROM payments.ingest('shop', '[]', ''::bytea);
SELECT * FROM payments.ingest('shop', NULL, convert_to(:'ev1', 'UTF8'));
-- only at READ COMMITTED: deliveries of one signature wait for each other, then must see what the
-- other committed
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM payments.ingest('shop', t.stripe(:'ev1', 'whsec_old'), convert_to(:'ev1', 'UTF8'));
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT * FROM payments.ingest_batch(ARRAY['shop'], ARRAY[t.stripe(:'ev1', 'whsec_old')], ARRAY[convert_to(:'ev1', 'UTF8')],
									ARRAY[NULL]::inet[], ARRAY[NULL]::text[]);
ROLLBACK;

-- Standard Webhooks: the id comes from webhook-id (or svix-id), the event time from "timestamp"
SELECT payments.register_provider('hooks', 'standard');
SELECT payments.add_secret('hooks', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') IS NOT NULL AS added;
\set sw '{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52"}}'
SELECT * FROM payments.ingest('hooks', t.standard('msg_1', :'sw', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to(:'sw', 'UTF8'));
-- a retry has a new timestamp and signature but the same id: duplicate
SELECT * FROM payments.ingest('hooks', t.standard('msg_1', :'sw', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', t.now_s() - 5), convert_to(:'sw', 'UTF8'));
SELECT * FROM payments.ingest('hooks', t.standard('msg_2', :'sw', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', t.now_s(), 'svix'), convert_to(:'sw', 'UTF8'));
SELECT * FROM payments.ingest('hooks', t.standard('msg_3', :'sw', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', t.now_s() - 301), convert_to(:'sw', 'UTF8'));
SELECT * FROM payments.ingest('hooks', t.standard('msg_3', :'sw', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') - 'webhook-timestamp', convert_to(:'sw', 'UTF8'));
SELECT * FROM payments.ingest('hooks', t.standard('msg.3', :'sw', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to(:'sw', 'UTF8'));
SELECT * FROM payments.ingest('hooks', t.standard('msg_3', '{}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to('{}', 'UTF8'));
SELECT * FROM payments.ingest('hooks', t.standard('msg_4', 'null', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to('null', 'UTF8'));
-- a zone name in "timestamp": a known one is read, an unknown one (PostgreSQL 15's parser raises an
-- error for it) leaves the event without a time, stored all the same
\set swz '{"type":"contact.created","timestamp":"2024-05-01 10:00:00 Africa/Harare","data":{"id":"1f81eb53"}}'
SELECT * FROM payments.ingest('hooks', t.standard('msg_5', :'swz', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to(:'swz', 'UTF8'));
\set swz '{"type":"contact.created","timestamp":"2024-05-01T10:00:00 Mars/Olympus","data":{"id":"1f81eb54"}}'
SELECT * FROM payments.ingest('hooks', t.standard('msg_6', :'swz', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to(:'swz', 'UTF8'));
SELECT event_id, event_type, event_at FROM payments.events WHERE provider = 'hooks' ORDER BY id;
-- rotation: a second secret; both verify until the first is revoked
SELECT payments.add_secret('hooks', 'whsec_' || encode(decode(repeat('cd', 32), 'hex'), 'base64')) AS hooks_new \gset
SELECT http_status, outcome FROM payments.ingest('hooks', t.standard('msg_r1', '{}', 'whsec_' || encode(decode(repeat('cd', 32), 'hex'), 'base64')), convert_to('{}', 'UTF8'));
SELECT http_status, outcome FROM payments.ingest('hooks', t.standard('msg_r2', '{}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to('{}', 'UTF8'));
SELECT payments.revoke_secret(id) FROM payments.secrets WHERE provider = 'hooks' AND id <> :hooks_new;
SELECT http_status, outcome FROM payments.ingest('hooks', t.standard('msg_r3', '{}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'), convert_to('{}', 'UTF8'));
SELECT http_status, outcome FROM payments.ingest('hooks', t.standard('msg_r4', '{}', 'whsec_' || encode(decode(repeat('cd', 32), 'hex'), 'base64')), convert_to('{}', 'UTF8'));
-- a secret is checked however it is written (payments_admin may write payments.secrets), the
-- message naming the problem, never the secret: an empty Standard key would let anyone sign
SELECT payments.add_secret('hooks', 'whsec_');
INSERT INTO payments.secrets (provider, secret) VALUES ('hooks', 'whsec_');
UPDATE payments.secrets SET secret = 'whsec_' WHERE id = :hooks_new;
SELECT payments.add_secret('hooks', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' || E'\n');
SELECT payments.add_secret('hooks', ' whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
-- the README's placeholders pasted as they are
SELECT payments.add_secret('hooks', 'whsec_…');
SELECT payments.secret_problem('hmac', '<webhook secret>'), payments.secret_problem('meta', '<app secret from the Meta app dashboard>'),
	   payments.secret_problem('hmac', '<b>real</b> secret') IS NULL AS brackets_inside_usable;
-- base64 in its one canonical form: nothing after the padding, no padding bits set
SELECT payments.add_secret('hooks', 'whsec_QUJDREVGR0hJSktMTU5PUA==QUJD');
SELECT payments.add_secret('hooks', 'whsec_QUJDREVGR0hJSktMTU5PUB==');
SELECT payments.secret_problem('standard', 'whsec_QUJDREVGR0hJSktMTU5PUA==') IS NULL AS canonical_usable;
-- one kept from before these checks (written with triggers off, as a restore may) is skipped
SET session_replication_role = replica;
INSERT INTO payments.secrets (provider, secret) VALUES ('hooks', 'whsec_');
RESET session_replication_role;
SELECT http_status, outcome FROM payments.ingest('hooks', t.standard('msg_empty_key', '{}', 'whsec_'), convert_to('{}', 'UTF8'));
DELETE FROM payments.secrets WHERE provider = 'hooks' AND secret = 'whsec_';
-- a revoked one is never used: not checked (a restore keeps it)
INSERT INTO payments.secrets (provider, secret, revoked_at) VALUES ('hooks', 'whsec_', now());
UPDATE payments.secrets SET revoked_at = NULL WHERE provider = 'hooks' AND secret = 'whsec_';
DELETE FROM payments.secrets WHERE provider = 'hooks' AND secret = 'whsec_';
