-- Generic HMAC providers configured in SQL (kind hmac): Paystack and GitHub with their
-- published vectors (PROVIDERS.md §7) and nothing but a register_provider call, then the
-- settings and their edge cases.  Ingest signatures are made with pgcrypto's hmac().
\set SHOW_CONTEXT never
\set paystack_body '{"event":"charge.success","data":{"id":302961,"domain":"live","status":"success","reference":"qTPrJoy9Bx","amount":10000,"currency":"NGN","paid_at":"2016-09-30T21:10:19.000Z","channel":"card","customer":{"id":68324,"email":"bojack@horsinaround.com"}}}'
\set paystack_sig 'ad64f22c2b9cef3f9837227cee5067ffb5cf4860f8005ba632379d43f313e39717d74cb35880c63309b13df27ea30af94b43136ac6c26e863bb0d29d160d14b3'
\set paystack '{"header": "x-paystack-signature", "algorithm": "sha512", "event_id_path": ["$.event", "$.data.id"], "event_type_path": "$.event"}'
\set github '{"header": "x-hub-signature-256", "prefix": "sha256=", "event_id_header": "x-github-delivery", "event_type_header": "x-github-event"}'
\set github_sig 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17'

-- the published vectors
SELECT payments.verify_hmac(:'paystack_body'::bytea, jsonb_build_object('x-paystack-signature', :'paystack_sig'),
							'sk_test_xxx', :'paystack') AS paystack_vector;
SELECT payments.verify_hmac('Hello, World!'::bytea, jsonb_build_object('x-hub-signature-256', :'github_sig'),
							'It''s a Secret to Everybody', :'github') AS github_vector;
-- GitHub's legacy X-Hub-Signature (sha1=) is the same kind with other settings
SELECT payments.verify_hmac('Hello, World!'::bytea,
	jsonb_build_object('x-hub-signature', 'sha1=' || encode(hmac('Hello, World!'::bytea, 'It''s a Secret to Everybody'::bytea, 'sha1'), 'hex')),
	'It''s a Secret to Everybody', '{"header": "x-hub-signature", "prefix": "sha1=", "algorithm": "sha1"}') AS github_sha1;

-- Paystack end to end: only register_provider and add_secret
SELECT payments.register_provider('paystack', 'hmac', :'paystack');
SELECT payments.add_secret('paystack', 'sk_test_xxx') AS paystack_old \gset
SELECT * FROM payments.ingest('paystack', jsonb_build_object('x-paystack-signature', :'paystack_sig'), convert_to(:'paystack_body', 'UTF8'));
SELECT * FROM payments.ingest('paystack', jsonb_build_object('x-paystack-signature', :'paystack_sig'), convert_to(:'paystack_body', 'UTF8'));
SELECT event_id, event_type, convert_from(body, 'UTF8') = :'paystack_body' AS body_exact, payload -> 'data' ->> 'reference' AS reference
  FROM payments.events WHERE provider = 'paystack';
-- tampered, wrong key, missing header, uppercase hex (accepted: hex case carries no information)
SELECT * FROM payments.ingest('paystack', jsonb_build_object('x-paystack-signature', :'paystack_sig'), convert_to(replace(:'paystack_body', '10000', '100000'), 'UTF8'));
SELECT * FROM payments.ingest('paystack', jsonb_build_object('x-paystack-signature',
	encode(hmac(convert_to(:'paystack_body', 'UTF8'), 'sk_test_yyy'::bytea, 'sha512'), 'hex')), convert_to(:'paystack_body', 'UTF8'));
SELECT * FROM payments.ingest('paystack', '{}', convert_to(:'paystack_body', 'UTF8'));
SELECT * FROM payments.ingest('paystack', jsonb_build_object('x-paystack-signature', upper(:'paystack_sig')), convert_to(:'paystack_body', 'UTF8'));
-- rotation
CREATE FUNCTION pg_temp.paystack(body text, secret text) RETURNS TABLE (http_status int, outcome text, event_id text)
	LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('paystack', jsonb_build_object('x-paystack-signature',
		encode(hmac(convert_to(body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha512'), 'hex')), convert_to(body, 'UTF8'))
$$;
SELECT payments.add_secret('paystack', 'sk_live_new') AS paystack_new \gset
SELECT * FROM pg_temp.paystack('{"event":"charge.success","data":{"id":1}}', 'sk_test_xxx');
SELECT * FROM pg_temp.paystack('{"event":"charge.success","data":{"id":2}}', 'sk_live_new');
SELECT payments.revoke_secret(:paystack_old);
SELECT * FROM pg_temp.paystack('{"event":"charge.success","data":{"id":3}}', 'sk_test_xxx');
SELECT * FROM pg_temp.paystack('{"event":"charge.success","data":{"id":3}}', 'sk_live_new');
-- an event without data.id is named by the hash of its body, so an exact resend is a duplicate
SELECT http_status, outcome, event_id = 'sha256:' || encode(sha256('{"event":"subscription.create","data":{}}'::bytea), 'hex') AS body_hash_id
  FROM pg_temp.paystack('{"event":"subscription.create","data":{}}', 'sk_live_new');
SELECT http_status, outcome FROM pg_temp.paystack('{"event":"subscription.create","data":{}}', 'sk_live_new');
SELECT left(event_id, 7) AS event_id, event_type FROM payments.events WHERE provider = 'paystack' ORDER BY id;

-- GitHub end to end: the id is the X-GitHub-Delivery header, the type X-GitHub-Event
SELECT payments.register_provider('github', 'hmac', :'github');
SELECT payments.add_secret('github', 'It''s a Secret to Everybody') AS github_old \gset
-- the published vector verifies through ingest; its body is not JSON, so it is invalid (400), not rejected (401)
SELECT * FROM payments.ingest('github', jsonb_build_object('x-hub-signature-256', :'github_sig', 'x-github-delivery', 'd1'), 'Hello, World!'::bytea);
SELECT * FROM payments.ingest('github', jsonb_build_object('x-hub-signature-256', :'github_sig', 'x-github-delivery', 'd1'), 'Hello, World?'::bytea);
CREATE FUNCTION pg_temp.github(body text, delivery text, secret text DEFAULT 'It''s a Secret to Everybody')
	RETURNS TABLE (http_status int, outcome text, event_id text) LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('github', jsonb_build_object(
		'x-hub-signature-256', 'sha256=' || encode(hmac(convert_to(body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha256'), 'hex'),
		'x-github-event', 'sponsorship', 'x-github-delivery', delivery), convert_to(body, 'UTF8'))
$$;
SELECT * FROM pg_temp.github('{"action":"created","sponsorship":{"tier":{"monthly_price_in_cents":500}}}', '72d3162e-cc78-11e3-81ab-4c9367dc0958');
SELECT * FROM pg_temp.github('{"action":"created","sponsorship":{"tier":{"monthly_price_in_cents":500}}}', '72d3162e-cc78-11e3-81ab-4c9367dc0958');
-- no delivery header: the body hash names the event
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.github('{"zen":"Keep it logically awesome."}', NULL);
SELECT event_id, event_type FROM payments.events WHERE provider = 'github' AND event_id NOT LIKE 'sha256:%';
-- without the prefix, or with another scheme's prefix, the header is malformed
SELECT * FROM payments.ingest('github', jsonb_build_object('x-hub-signature-256', substr(:'github_sig', 8)), 'Hello, World!'::bytea);
SELECT * FROM payments.ingest('github', jsonb_build_object('x-hub-signature-256', 'sha1=' || substr(:'github_sig', 8)), 'Hello, World!'::bytea);
SELECT reason, detail FROM payments.rejections WHERE provider IN ('paystack', 'github') ORDER BY id;

-- Table-driven verification cases: settings, headers, the verdict we chose and why.
-- Secret 'k', body '{"a":1}', at unix time 1718000000.
CREATE TEMP TABLE cases (n serial, settings jsonb, headers jsonb, expected text, why text);
CREATE FUNCTION pg_temp.mac(algo text, msg text DEFAULT '{"a":1}') RETURNS bytea LANGUAGE sql
	AS $$ SELECT hmac(convert_to(msg, 'UTF8'), 'k'::bytea, algo) $$;
INSERT INTO cases (settings, headers, expected, why) VALUES
	('{"header": "x-sig"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha256'), 'hex')), 'valid', 'defaults: sha256, hex, no prefix'),
	('{"header": "x-sig"}', jsonb_build_object('x-sig', upper(encode(pg_temp.mac('sha256'), 'hex'))), 'valid', 'hex in upper case'),
	('{"header": "x-sig", "algorithm": "sha1"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha1'), 'hex')), 'valid', 'sha1'),
	('{"header": "x-sig", "algorithm": "sha512"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha512'), 'hex')), 'valid', 'sha512'),
	('{"header": "x-sig", "algorithm": "sha512"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha256'), 'hex')), 'malformed_header', 'a sha256 MAC where sha512 is configured'),
	('{"header": "x-sig", "encoding": "base64"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha256'), 'base64')), 'valid', 'base64 (padded, standard)'),
	('{"header": "x-sig", "encoding": "base64", "algorithm": "sha1"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha1'), 'base64')), 'valid', 'base64 of sha1'),
	('{"header": "x-sig", "encoding": "base64"}', jsonb_build_object('x-sig', rtrim(encode(pg_temp.mac('sha256'), 'base64'), '=')), 'malformed_header', 'base64 without padding'),
	('{"header": "x-sig", "encoding": "base64"}', jsonb_build_object('x-sig', translate(encode(pg_temp.mac('sha256'), 'base64'), '+/', '-_')), 'signature_mismatch', 'base64url is not base64 (compared as text)'),
	('{"header": "x-sig", "encoding": "base64"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha256'), 'hex')), 'malformed_header', 'hex where base64 is configured'),
	('{"header": "x-sig", "prefix": "v1="}', jsonb_build_object('x-sig', 'v1=' || encode(pg_temp.mac('sha256'), 'hex')), 'valid', 'prefix'),
	('{"header": "x-sig", "prefix": "v1="}', jsonb_build_object('x-sig', 'V1=' || encode(pg_temp.mac('sha256'), 'hex')), 'malformed_header', 'the prefix is compared exactly'),
	('{"header": "x-sig", "prefix": "v1="}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha256'), 'hex')), 'malformed_header', 'prefix missing'),
	('{"header": "x-sig"}', jsonb_build_object('x-sig', 'v1=' || encode(pg_temp.mac('sha256'), 'hex')), 'malformed_header', 'an unexpected prefix'),
	('{"header": "x-sig"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha256'), 'hex') || ' '), 'malformed_header', 'trailing space'),
	('{"header": "x-sig"}', jsonb_build_object('x-sig', encode(pg_temp.mac('sha256'), 'hex') || ',' || encode(pg_temp.mac('sha256'), 'hex')), 'malformed_header', 'one signature per header'),
	('{"header": "x-sig"}', jsonb_build_object('x-sig', repeat('0', 64)), 'signature_mismatch', 'well formed, wrong'),
	('{"header": "x-sig"}', jsonb_build_object('x-sig', repeat('z', 64)), 'malformed_header', 'not hex'),
	('{"header": "x-sig"}', jsonb_build_object('x-other', encode(pg_temp.mac('sha256'), 'hex')), 'missing_header', 'header absent'),
	('{"header": "x-sig"}', jsonb_build_object('x-sig', jsonb_build_array(encode(pg_temp.mac('sha256'), 'hex'))), 'missing_header', 'header that is not a string'),
	-- a signed timestamp: "<ts>.<body>", within tolerance both ways
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1718000000', 'x-sig', encode(pg_temp.mac('sha256', '1718000000.{"a":1}'), 'hex')), 'valid', 'timestamp.body'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1718000300', 'x-sig', encode(pg_temp.mac('sha256', '1718000300.{"a":1}'), 'hex')), 'valid', '300 s in the future'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1718000301', 'x-sig', encode(pg_temp.mac('sha256', '1718000301.{"a":1}'), 'hex')), 'timestamp_too_new', '301 s in the future'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1717999700', 'x-sig', encode(pg_temp.mac('sha256', '1717999700.{"a":1}'), 'hex')), 'valid', '300 s old'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1717999699', 'x-sig', encode(pg_temp.mac('sha256', '1717999699.{"a":1}'), 'hex')), 'timestamp_too_old', '301 s old'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body", "tolerance": 600}',
	 jsonb_build_object('x-ts', '1717999699', 'x-sig', encode(pg_temp.mac('sha256', '1717999699.{"a":1}'), 'hex')), 'valid', '301 s old, tolerance 600'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1718000001', 'x-sig', encode(pg_temp.mac('sha256', '1718000000.{"a":1}'), 'hex')), 'signature_mismatch', 'the timestamp is signed'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '01718000000', 'x-sig', encode(pg_temp.mac('sha256', '1718000000.{"a":1}'), 'hex')), 'signature_mismatch', 'the header is signed as received (leading zero kept)'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-sig', encode(pg_temp.mac('sha256', '1718000000.{"a":1}'), 'hex')), 'missing_header', 'timestamp header absent'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1718000000.5', 'x-sig', encode(pg_temp.mac('sha256', '1718000000.5.{"a":1}'), 'hex')), 'malformed_header', 'timestamp not whole seconds'),
	('{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body"}',
	 jsonb_build_object('x-ts', '1718000000', 'x-sig', encode(pg_temp.mac('sha256'), 'hex')), 'signature_mismatch', 'only the body signed where timestamp.body is configured');
SELECT n, payments.verify_hmac('{"a":1}'::bytea, headers, 'k', settings, to_timestamp(1718000000)) AS verdict, expected, why
  FROM cases WHERE payments.verify_hmac('{"a":1}'::bytea, headers, 'k', settings, to_timestamp(1718000000)) <> expected ORDER BY n;
SELECT count(*) AS cases,
	   count(*) FILTER (WHERE payments.verify_hmac('{"a":1}'::bytea, headers, 'k', settings, to_timestamp(1718000000)) = expected) AS as_expected
  FROM cases;

-- Settings: checked when registering (and by verify_hmac)
SELECT payments.register_provider('h', 'hmac');
SELECT payments.register_provider('h', 'hmac', '{"header": "X-Sig"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x sig"}');
SELECT payments.register_provider('h', 'hmac', '{"header": 1}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "algorithm": "md5"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "encoding": "base64url"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "prefix": "sha256 = "}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "prefix": null}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "signed": "timestamp.body"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "timestamp_header": "x-ts"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "timestamp_header": "x-sig", "signed": "timestamp.body"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "signed": "body.timestamp"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "tolerance": 600}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body", "tolerance": 0}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": "$.data.id ? ("}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_type_path": "data.type"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": "$.id", "event_id_header": "x-id"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_type_path": "$.t", "event_type_header": "x-t"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_header": "X-Id"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id": "$.id"}');
SELECT payments.verify_hmac('{}'::bytea, '{}', 'k', '{"header": "x-sig", "algorithm": "sha384"}');
SELECT payments.verify_hmac('{}'::bytea, '{}', 'k', '{"header": "x-sig", "headers": "x"}');
SELECT payments.verify_hmac('{}'::bytea, '[]', 'k', '{"header": "x-sig"}');
-- settings every kind has (receipt_prefix) are checked by register_provider, not refused here
SELECT payments.settings_problem('hmac', '{"header": "x-sig", "receipt_prefix": "PS"}') IS NULL AS receipt_prefix_ok,
	   payments.verify_hmac('{}'::bytea, '{}', 'k', '{"header": "x-sig", "receipt_prefix": "PS"}') AS receipt_prefix_verify;
SELECT count(*) AS registered FROM payments.providers WHERE name = 'h';
-- settings_problem may be called directly: settings that are no object are a problem, for every kind
SELECT k.kind, count(*) AS tried, array_agg(DISTINCT payments.settings_problem(k.kind, s.settings)) AS problems
  FROM payments.provider_kinds k, (VALUES ('[]'::jsonb), ('["a", "b", "c", "d"]'), ('"x"'), ('42'), ('null')) AS s (settings)
 GROUP BY 1 ORDER BY 1;

-- Event ids and types by path: the first string or number found; nothing found, the body hash
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": "$.data.id", "event_type_path": "$.kind"}');
SELECT payments.add_secret('h', 'k') AS h_secret \gset
CREATE FUNCTION pg_temp.h(body text, secret text DEFAULT 'k') RETURNS TABLE (http_status int, outcome text, event_id text)
	LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('h', jsonb_build_object('x-sig', encode(hmac(convert_to(body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha256'), 'hex')),
								  convert_to(body, 'UTF8'))
$$;
SELECT * FROM pg_temp.h('{"data":{"id":"ev_1"},"kind":"paid"}');
SELECT * FROM pg_temp.h('{"data":{"id":"ev_1"},"kind":"paid","retry":1}');
SELECT * FROM pg_temp.h('{"data":{"id":12345.50},"kind":7}');
SELECT * FROM pg_temp.h('{"data":[{"id":"ev_first"},{"id":"ev_second"}]}');
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.h('{"data":{"id":{"nested":true}}}');
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.h('{"data":{"id":""}}');
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.h('{"data":{"id":true}}');
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.h('{}');
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.h('{}');
SELECT * FROM pg_temp.h('{"data":{"id":"' || repeat('x', 256) || '"}}');
SELECT * FROM pg_temp.h('[1,2]');
SELECT * FROM pg_temp.h('not json');
SELECT left(event_id, 12) AS event_id, event_type FROM payments.events WHERE provider = 'h' ORDER BY id;
-- an id made of several paths, their values joined by ':' (Paystack sends transfer.success and
-- transfer.reversed about one data.id: two events); one path finding nothing, the body hash
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": ["$.event", "$.data.id"]}');
SELECT * FROM pg_temp.h('{"event":"transfer.success","data":{"id":555}}');
SELECT * FROM pg_temp.h('{"event":"transfer.reversed","data":{"id":555}}');
SELECT * FROM pg_temp.h('{"event":"transfer.reversed","data":{"id":555}}');
-- a ':' or '\' within a value is escaped, so other values never make the same id
SELECT * FROM pg_temp.h('{"event":"transfer:success","data":{"id":"T1"}}');
SELECT * FROM pg_temp.h('{"event":"transfer","data":{"id":"success:T1"}}');
SELECT * FROM pg_temp.h('{"event":"transfer\\","data":{"id":"x"}}');
SELECT * FROM pg_temp.h('{"event":"transfer","data":{"id":"\\:x"}}');
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.h('{"data":{"id":555}}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": []}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": ["$.a", 1]}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": 42}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": ["$.a", "$.b", "$.c", "$.d", "$.e"]}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": ["$.a", "$.b ? ("]}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": ["$.a"], "event_id_header": "x-id"}');
-- a $variable nobody passes ("$id" for "$.id"): refused at registration, where evaluating the
-- path on an empty object finds it; one deeper, in a filter, fails every delivery: the settings'
-- fault (55000: the shim answers 503 and the sender retries), not the event's
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": "$id"}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_type_path": "$.t ? (@ == $x)", "event_id_path": ["$.a", "$b"]}');
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_id_path": "$.id ? (@ == $x)"}');
CREATE FUNCTION pg_temp.h_unusable(body text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM * FROM pg_temp.h(body);
	RAISE NOTICE 'taken';
EXCEPTION WHEN object_not_in_prerequisite_state THEN
	RAISE NOTICE 'unusable settings: %', SQLERRM;
END
$$;
SELECT pg_temp.h_unusable('{"id":"ev_9"}');
-- so is a path broken by a direct UPDATE (registration's check never saw it), and a regular
-- expression that does not compile: an authentic event is not refused as invalid for them
UPDATE payments.providers SET settings = '{"header": "x-sig", "event_id_path": "$.data.id ?("}' WHERE name = 'h';
SELECT pg_temp.h_unusable('{"data":{"id":"ev_10"}}');
UPDATE payments.providers SET settings = '{"header": "x-sig", "event_type_path": "$.type ? (@ like_regex \"(\")"}' WHERE name = 'h';
SELECT pg_temp.h_unusable('{"id":"ev_11","type":"a"}');
UPDATE payments.providers SET settings = '{"header": "x-sig", "event_id_path": "$.id ? (@ like_regex \"a\" flag \"x\")"}' WHERE name = 'h';
SELECT pg_temp.h_unusable('{"id":"ev_12"}');
-- a datetime template fails only on an event that has the member, yet fails every such event:
-- registration's check on an empty object cannot see it
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig", "event_type_path": "$.created.datetime(\"YYYY FF7\")"}');
SELECT pg_temp.h_unusable('{"id":"ev_13","created":"2024"}');
-- with no type configured, the payload's top-level "type" is the type, as for other kinds
SELECT payments.register_provider('h', 'hmac', '{"header": "x-sig"}');
SELECT http_status, outcome, left(event_id, 7) FROM pg_temp.h('{"type":"invoice.paid"}');
SELECT event_type FROM payments.events WHERE provider = 'h' AND payload ? 'type';
SELECT outcome, reason, detail FROM payments.rejections WHERE provider = 'h' ORDER BY id;

-- a signed timestamp through ingest: now is fine, 400 s either way is not; tolerance widens it
SELECT payments.register_provider('ts', 'hmac', '{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body", "event_id_path": "$.id"}');
SELECT payments.add_secret('ts', 'k') AS ts_old \gset
CREATE FUNCTION pg_temp.ts(body text, skew int, secret text DEFAULT 'k') RETURNS TABLE (http_status int, outcome text, event_id text)
	LANGUAGE sql AS $$
	SELECT i.* FROM (SELECT floor(extract(epoch FROM clock_timestamp()))::bigint + skew AS s) t,
		payments.ingest('ts', jsonb_build_object('x-ts', s::text,
			'x-sig', encode(hmac(convert_to(s::text || '.' || body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha256'), 'hex')),
			convert_to(body, 'UTF8')) i
$$;
SELECT * FROM pg_temp.ts('{"id":"t1"}', 0);
SELECT * FROM pg_temp.ts('{"id":"t2"}', -400);
SELECT * FROM pg_temp.ts('{"id":"t2"}', 400);
SELECT payments.register_provider('ts', 'hmac', '{"header": "x-sig", "timestamp_header": "x-ts", "signed": "timestamp.body", "event_id_path": "$.id", "tolerance": 600}');
SELECT * FROM pg_temp.ts('{"id":"t2"}', -400);
SELECT * FROM pg_temp.ts('{"id":"t3"}', 400);
-- rotation with a timestamp
SELECT payments.add_secret('ts', 'k2') AS ts_new \gset
SELECT * FROM pg_temp.ts('{"id":"t4"}', 0, 'k2');
SELECT payments.revoke_secret(:ts_old);
SELECT * FROM pg_temp.ts('{"id":"t5"}', 0, 'k');
SELECT * FROM pg_temp.ts('{"id":"t5"}', 0, 'k2');
SELECT reason FROM payments.rejections WHERE provider = 'ts' ORDER BY id;

-- settings changed behind register_provider's back are the server's problem, not the delivery's:
-- not a data exception (class 22, which the shim answers 400), so the sender retries on a 503
BEGIN;
UPDATE payments.providers SET settings = '{"header": "x-sig", "algorithm": "md5"}' WHERE name = 'ts';
\set VERBOSITY sqlstate
SELECT * FROM pg_temp.ts('{"id":"t6"}', 0, 'k2');
\set VERBOSITY default
ROLLBACK;

-- leave nothing behind for the tests that follow
DELETE FROM payments.payments WHERE provider IN ('paystack', 'github', 'h', 'ts');
DELETE FROM payments.events WHERE provider IN ('paystack', 'github', 'h', 'ts');
DELETE FROM payments.providers WHERE name IN ('paystack', 'github', 'h', 'ts');
