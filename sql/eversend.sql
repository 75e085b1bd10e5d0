-- Eversend (PROVIDERS.md §5): X-Eversend-Signature, hex HMAC of the raw body, SHA-512 by
-- default or SHA-256 by setting.  Eversend publishes no vector: the fixed ones below were
-- made with `openssl dgst -sha512 -hmac` over the docs' sample; ingest signatures are made
-- with pgcrypto's hmac(), independently of our code.
\set SHOW_CONTEXT never
\set sample '{"eventType":"transaction.success","transactionId":"EVS12345678","transactionRef":"ORD-1001","type":"collection","status":"successful","amount":"50000","currency":"UGX","fees":"1500","createdAt":"2024-06-10T08:00:00.000Z","updatedAt":"2024-06-10T08:01:12.000Z"}'
\set secret 'eversend_test_secret'
\set sig512 '51543fecb0ed18c0e16e295c9394b883c8e3e7d594f7300a643ee57703cd695c90fb8072aa416ba470e542b8302c59059fc69f83dc8410c0c8c043b699920b80'
\set sig256 'aaf2cc0d8dfba097170dc38e28a01d976e79f58588187ccd09345522dae53c90'
-- the unkeyed SHA-512 that Eversend's sample code computes (createHash ignores the secret)
\set unkeyed 'eea9ff6b0943f9b46a22dcfbdfbedbfab91c1b40d061f7434c8fb72818a6fbd43ce19929d159352c22bd0da1add7f1eed7ddb45544fe0cd3616b2b89d0abd399'

SELECT payments.verify_eversend(:'sample'::bytea, :'sig512', :'secret') AS sha512_default,
	   payments.verify_eversend(:'sample'::bytea, :'sig256', :'secret', 'sha256') AS sha256;
-- pgcrypto agrees with the fixed vectors
SELECT encode(hmac(:'sample'::bytea, :'secret'::bytea, 'sha512'), 'hex') = :'sig512' AS pgcrypto_512,
	   encode(hmac(:'sample'::bytea, :'secret'::bytea, 'sha256'), 'hex') = :'sig256' AS pgcrypto_256;

-- Table-driven cases: signature header value, algorithm, the verdict we chose, why
CREATE TEMP TABLE cases (n serial, body text, signature text, algorithm text, expected text, why text);
INSERT INTO cases (body, signature, algorithm, expected, why) VALUES
	(:'sample', :'sig512', 'sha512', 'valid', 'documented scheme: HMAC-SHA512 hex'),
	(:'sample', upper(:'sig512'), 'sha512', 'valid', 'upper-case hex: the case of hex digits carries no information'),
	(:'sample', 'sha512=' || :'sig512', 'sha512', 'valid', 'a prefix naming the configured algorithm is allowed'),
	(:'sample', 'sha256=' || :'sig256', 'sha256', 'valid', 'sha256= prefix, as some integrations send'),
	(:'sample', 'sha256=' || :'sig512', 'sha512', 'malformed_header', 'the prefix never chooses the algorithm (no downgrade)'),
	(:'sample', 'SHA512=' || :'sig512', 'sha512', 'malformed_header', 'prefixes are lower case'),
	(:'sample', :'sig256', 'sha512', 'malformed_header', 'a SHA-256 length when SHA-512 is configured: detail says to check the setting'),
	(:'sample', :'sig512', 'sha256', 'malformed_header', 'and the other way round'),
	(:'sample', :'unkeyed', 'sha512', 'signature_mismatch', 'the sample code''s unkeyed SHA-512: anyone can compute it, never accepted'),
	(:'sample' || ' ', :'sig512', 'sha512', 'signature_mismatch', 'tampered body (a trailing space)'),
	(replace(:'sample', '50000', '5000'), :'sig512', 'sha512', 'signature_mismatch', 'tampered amount'),
	(:'sample', left(:'sig512', 127), 'sha512', 'malformed_header', 'one digit short'),
	(:'sample', left(:'sig512', 127) || 'g', 'sha512', 'malformed_header', 'not hex'),
	(:'sample', ' ' || left(:'sig512', 127), 'sha512', 'malformed_header', 'leading space'),
	(:'sample', '', 'sha512', 'malformed_header', 'empty header'),
	(:'sample', repeat('0', 128), 'sha512', 'signature_mismatch', 'well formed, wrong');
SELECT n, payments.verify_eversend(convert_to(body, 'UTF8'), signature, :'secret', algorithm) AS verdict, expected, why
  FROM cases WHERE payments.verify_eversend(convert_to(body, 'UTF8'), signature, :'secret', algorithm) <> expected ORDER BY n;
SELECT count(*) AS cases,
	   count(*) FILTER (WHERE payments.verify_eversend(convert_to(body, 'UTF8'), signature, :'secret', algorithm) = expected) AS as_expected
  FROM cases;
-- the secret is the key as written (its UTF-8 bytes), whatever it looks like
SELECT payments.verify_eversend(:'sample'::bytea, :'sig512', upper(:'secret')) AS other_case_secret;
SELECT payments.verify_eversend(:'sample'::bytea, :'sig512', :'secret', 'sha1');
SELECT payments.verify_eversend(NULL, :'sig512', :'secret') IS NULL AS null_body;

-- Registration
SELECT payments.register_provider('ev', 'eversend', '{"algorithm": "md5"}');
SELECT payments.register_provider('ev', 'eversend', '{"algorithm": "SHA512"}');
SELECT payments.register_provider('ev', 'eversend', '{"algorithm": 512}');
SELECT payments.register_provider('ev', 'eversend', '{"tolerance": 300}');
SELECT payments.register_provider('ev', 'eversend');
SELECT payments.add_secret('ev', :'secret') AS old_secret \gset

CREATE FUNCTION pg_temp.ev(body text, secret text DEFAULT 'eversend_test_secret', algorithm text DEFAULT 'sha512')
	RETURNS TABLE (http_status int, outcome text, event_id text) LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('ev', jsonb_build_object('x-eversend-signature',
		encode(hmac(convert_to(body, 'UTF8'), convert_to(secret, 'UTF8'), algorithm), 'hex')), convert_to(body, 'UTF8'))
$$;

-- flat sample: id "<transactionId>:<status>", type eventType, time updatedAt
SELECT * FROM pg_temp.ev(:'sample');
SELECT * FROM pg_temp.ev(:'sample');
SELECT event_id, event_type, event_at = '2024-06-10T08:01:12Z'::timestamptz AS event_at_ok,
	   convert_from(body, 'UTF8') = :'sample' AS body_exact, payload ->> 'transactionRef' AS ref
  FROM payments.events WHERE provider = 'ev';
-- the next status of the transaction is a new event
SELECT * FROM pg_temp.ev(replace(replace(:'sample', 'successful', 'failed'), 'transaction.success', 'transaction.failed'));
-- the envelope shape {type|eventType, data:{...}}: fields under data, type from the top level
SELECT * FROM pg_temp.ev('{"type":"transaction.success","data":{"transactionId":"EVS2","status":"successful","createdAt":"2024-06-11T10:00:00Z","type":"payout"}}');
SELECT * FROM pg_temp.ev('{"eventType":"transaction.pending","data":{"transactionId":"EVS3","status":"pending"}}');
-- a numeric transactionId is written in decimal
SELECT * FROM pg_temp.ev('{"data":{"transactionId":4242,"status":"pending"}}');
-- in the flat shape "type" is the transaction's type (collection, payout), not the event's
SELECT * FROM pg_temp.ev('{"transactionId":"EVS5","status":"pending","type":"collection"}');
SELECT event_id, event_type, event_at AT TIME ZONE 'UTC' AS event_at_utc FROM payments.events WHERE provider = 'ev' ORDER BY id;
-- no transactionId or status: invalid; not JSON: invalid
SELECT * FROM pg_temp.ev('{"eventType":"transaction.success","transactionRef":"ORD-1"}');
SELECT * FROM pg_temp.ev('{"transactionId":"EVS6"}');
SELECT * FROM pg_temp.ev('{"transactionId":"EVS6","status":7}');
SELECT * FROM pg_temp.ev('{"data":{"transactionId":"","status":"pending"}}');
SELECT * FROM pg_temp.ev('{"data":"EVS6"}');
SELECT * FROM pg_temp.ev('transactionId=EVS6&status=pending');
-- missing header, unkeyed SHA-512, wrong secret, SHA-256 when SHA-512 is configured: rejected
SELECT * FROM payments.ingest('ev', '{}', convert_to(:'sample', 'UTF8'));
SELECT * FROM payments.ingest('ev', jsonb_build_object('x-eversend-signature', :'unkeyed'), convert_to(:'sample', 'UTF8'));
SELECT * FROM pg_temp.ev('{"transactionId":"EVS7","status":"pending"}', 'wrong');
SELECT * FROM pg_temp.ev('{"transactionId":"EVS7","status":"pending"}', :'secret', 'sha256');
SELECT outcome, reason, detail FROM payments.rejections WHERE provider = 'ev' ORDER BY id;

-- the algorithm setting switches to SHA-256
SELECT payments.register_provider('ev', 'eversend', '{"algorithm": "sha256"}');
SELECT * FROM pg_temp.ev('{"transactionId":"EVS7","status":"pending"}', :'secret', 'sha256');
SELECT * FROM pg_temp.ev('{"transactionId":"EVS8","status":"pending"}', :'secret', 'sha512');
SELECT payments.register_provider('ev', 'eversend', '{}');

-- rotation: both secrets verify until the old one is revoked
SELECT payments.add_secret('ev', 'eversend_new_secret') AS new_secret \gset
SELECT * FROM pg_temp.ev('{"transactionId":"EVS9","status":"pending"}', :'secret');
SELECT * FROM pg_temp.ev('{"transactionId":"EVS10","status":"pending"}', 'eversend_new_secret');
SELECT payments.revoke_secret(:old_secret);
SELECT * FROM pg_temp.ev('{"transactionId":"EVS11","status":"pending"}', :'secret');
SELECT * FROM pg_temp.ev('{"transactionId":"EVS11","status":"pending"}', 'eversend_new_secret');
SELECT count(*) AS eversend_events FROM payments.events WHERE provider = 'ev';

-- an algorithm changed behind register_provider's back: the server's problem (503), not a 400
BEGIN;
UPDATE payments.providers SET settings = '{"algorithm": "md5"}' WHERE name = 'ev';
\set VERBOSITY sqlstate
SELECT * FROM pg_temp.ev('{"transactionId":"EVS12","status":"pending"}', 'eversend_new_secret');
\set VERBOSITY default
ROLLBACK;

-- The kind (PROVIDERS.md section 5: the shape is not confirmed).  It is the transaction's type,
-- else the top level's eventType/type when it names one (payout.success, or the bare word); news
-- that states none creates a collection assumed (metadata.kind_assumed), and the first news that
-- states a kind sets it while the payment has no receipt.  A pending news without a type, then
-- its payout: a payout, paid, no receipt, in no report
SELECT * FROM pg_temp.ev('{"transactionId":"B3","status":"pending","amount":"7000","currency":"UGX","updatedAt":"2026-09-02T08:00:00Z"}', 'eversend_new_secret');
SELECT kind, status, metadata FROM payments.payments WHERE provider = 'ev' AND provider_ref = 'B3';
SELECT * FROM pg_temp.ev('{"transactionId":"B3","type":"payout","status":"successful","amount":"7000","currency":"UGX","updatedAt":"2026-09-02T09:00:00Z"}', 'eversend_new_secret');
-- in the envelope shape the kind may be only in the event's type (payout.success) or eventType
SELECT * FROM pg_temp.ev('{"type":"payout.success","data":{"transactionId":"B1","status":"successful","amount":"5000","currency":"UGX","updatedAt":"2026-09-02T10:00:00Z"}}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"eventType":"payout","data":{"transactionId":"B2","status":"successful","amount":"6000","currency":"UGX","updatedAt":"2026-09-02T10:30:00Z"}}', 'eversend_new_secret');
-- an event type naming no kind states none (transaction.success): a collection assumed; its
-- collection stated later confirms it
SELECT * FROM pg_temp.ev('{"type":"transaction.pending","data":{"transactionId":"B8","status":"pending","amount":"900","currency":"UGX","updatedAt":"2026-09-02T11:00:00Z"}}', 'eversend_new_secret');
SELECT provider_ref, kind, metadata ? 'kind_assumed' AS assumed FROM payments.payments WHERE provider = 'ev' AND provider_ref = 'B8';
SELECT * FROM pg_temp.ev('{"eventType":"collection.success","transactionId":"B8","status":"successful","amount":"900","currency":"UGX","updatedAt":"2026-09-02T11:05:00Z"}', 'eversend_new_secret');
SELECT p.provider_ref, p.kind, p.status, p.metadata ? 'kind_assumed' AS assumed, r.receipt_no IS NOT NULL AS has_receipt
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE p.provider = 'ev' AND p.provider_ref IN ('B1', 'B2', 'B3', 'B8') ORDER BY p.provider_ref;
-- the day's report counts the donation (B8), not the payouts
SELECT currency, method, paid, gross, receipts FROM payments.daily_report('2026-09-02') WHERE currency = 'UGX' ORDER BY method;
-- in the flat shape too, a type with a dot is the event's name: transaction.success names no
-- kind (a collection assumed), collection.success one; a bare word of another type is no payment
SELECT * FROM pg_temp.ev('{"type":"transaction.success","transactionId":"B9","status":"successful","amount":"50000","currency":"UGX","updatedAt":"2026-09-02T12:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"type":"collection.success","transactionId":"B10","status":"successful","amount":"800","currency":"UGX","updatedAt":"2026-09-02T12:05:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"type":"airtime","transactionId":"B11","status":"successful","amount":"800","currency":"UGX","updatedAt":"2026-09-02T12:06:00Z"}', 'eversend_new_secret');
SELECT provider_ref, kind, status, amount, metadata ? 'kind_assumed' AS assumed
  FROM payments.payments WHERE provider = 'ev' AND provider_ref IN ('B9', 'B10', 'B11') ORDER BY provider_ref;
-- a fee stated in another currency than the payment's is no fee of it (0.50 USD is not 0.50 UGX)
SELECT * FROM pg_temp.ev('{"transactionId":"B12","status":"pending","amount":"50000","currency":"UGX","fees":"0","updatedAt":"2026-09-02T13:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"B12","status":"successful","amount":"13.50","currency":"USD","fees":"0.50","updatedAt":"2026-09-02T13:05:00Z"}', 'eversend_new_secret');
SELECT provider_ref, status, amount, currency, fee FROM payments.payments WHERE provider = 'ev' AND provider_ref = 'B12';
-- a kind contradicting one stated before is refused, the whole news (recorded, nothing moved);
-- so is a kind stated after the assumed collection's receipt was issued (receipts stay gapless)
SELECT * FROM pg_temp.ev('{"transactionId":"B4","type":"payout","status":"pending","amount":"100","currency":"UGX","updatedAt":"2026-09-03T08:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"B4","type":"collection","status":"successful","amount":"100","currency":"UGX","updatedAt":"2026-09-03T09:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"B5","status":"successful","amount":"200","currency":"UGX","updatedAt":"2026-09-03T08:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"B5","type":"payout","status":"reversed","amount":"200","currency":"UGX","updatedAt":"2026-09-03T09:00:00Z"}', 'eversend_new_secret');
SELECT p.provider_ref, p.kind, p.status, p.amount_refunded, t.from_status, t.to_status,
	   regexp_replace(t.reason, 'LP-[0-9]{8}-[0-9]{6}', 'LP-…') AS reason
  FROM payments.payments p JOIN payments.refused_transitions t ON t.payment_id = p.id
 WHERE p.provider = 'ev' AND p.provider_ref LIKE 'B%' ORDER BY p.provider_ref;
-- an exchange is the merchant's own money: news of one makes a payment of kind exchange, and a
-- payment news without a type created (a collection assumed) becomes one: no receipt, in no report
SELECT * FROM pg_temp.ev('{"transactionId":"B7","type":"exchange","status":"successful","amount":"300","currency":"UGX","updatedAt":"2026-09-04T08:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"B6","status":"pending","amount":"400","currency":"UGX","updatedAt":"2026-09-04T08:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"eventType":"exchange.success","data":{"transactionId":"B6","status":"successful","amount":"400","currency":"UGX","updatedAt":"2026-09-04T09:00:00Z"}}', 'eversend_new_secret');
-- another type is no payment: ignored
SELECT * FROM pg_temp.ev('{"transactionId":"B6","type":"airtime","status":"reversed","updatedAt":"2026-09-04T10:00:00Z"}', 'eversend_new_secret');
SELECT p.provider_ref, p.kind, p.status, r.receipt_no IS NOT NULL AS has_receipt
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE p.provider = 'ev' AND p.provider_ref IN ('B6', 'B7') ORDER BY p.provider_ref;
SELECT count(*) AS reported FROM payments.daily_report('2026-09-04') WHERE currency = 'UGX';
-- news of an exchange first, then news of it stating no kind (Eversend promises no order): the
-- exchange was kept, so the later news is of it, never a collection made by assumption
SELECT * FROM pg_temp.ev('{"transactionId":"X1","type":"exchange","status":"pending","amount":"300","currency":"UGX","updatedAt":"2026-09-04T08:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"eventType":"transaction.success","data":{"transactionId":"X1","status":"successful","amount":"300","currency":"UGX","updatedAt":"2026-09-04T08:10:00Z"}}', 'eversend_new_secret');
-- an eventType naming no kind beside a type naming one: the type's
SELECT * FROM pg_temp.ev('{"eventType":"transaction.success","type":"payout","data":{"transactionId":"P1","status":"successful","amount":"70","currency":"UGX","updatedAt":"2026-09-04T08:20:00Z"}}', 'eversend_new_secret');
SELECT p.provider_ref, p.kind, p.status, p.metadata ? 'kind_assumed' AS assumed, r.receipt_no IS NOT NULL AS has_receipt
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE p.provider = 'ev' AND p.provider_ref IN ('X1', 'P1') ORDER BY p.provider_ref;
SELECT count(*) AS reported FROM payments.daily_report('2026-09-04') WHERE currency = 'UGX';

-- A reversal before its payment, without an amount, then the news that 20000 was paid (older):
-- the refund is of the reversal's time, the 5th, not of the payment's news
SELECT * FROM pg_temp.ev('{"transactionId":"H1","status":"reversed","currency":"UGX","updatedAt":"2026-09-05T12:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"H1","status":"successful","amount":"20000","currency":"UGX","updatedAt":"2026-09-01T12:00:00Z"}', 'eversend_new_secret');
SELECT p.status, p.amount, f.amount AS refunded, f.refunded_at AT TIME ZONE 'UTC' AS refunded_at_utc,
	   p.paid_at AT TIME ZONE 'UTC' AS paid_at_utc
  FROM payments.payments p JOIN payments.refunds f ON f.payment_id = p.id
 WHERE p.provider = 'ev' AND p.provider_ref = 'H1';
SELECT currency, method, refunds, refunded FROM payments.daily_report('2026-09-05') WHERE currency = 'UGX' ORDER BY method;
SELECT currency, method, paid, refunds FROM payments.daily_report('2026-09-01') WHERE currency = 'UGX' ORDER BY method;
-- the same when the amount comes with older news of another status (the pending one, dated by its
-- createdAt): the refund is of the reversal's time, not of that news's
SELECT * FROM pg_temp.ev('{"transactionId":"H2","status":"reversed","currency":"UGX","updatedAt":"2026-09-06T12:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"H2","status":"pending","amount":"30000","currency":"UGX","createdAt":"2026-06-01T08:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"H2","status":"successful","amount":"30000","currency":"UGX","updatedAt":"2026-06-01T08:05:00Z"}', 'eversend_new_secret');
SELECT p.status, p.amount, f.amount AS refunded, f.refunded_at AT TIME ZONE 'UTC' AS refunded_at_utc
  FROM payments.payments p JOIN payments.refunds f ON f.payment_id = p.id
 WHERE p.provider = 'ev' AND p.provider_ref = 'H2';

-- Without updatedAt: createdAt dates only the pending status (the one a transaction is created
-- with); another status is as of its arrival, as Paynow's are, not of the creation day
SELECT * FROM pg_temp.ev('{"transactionId":"T3","status":"pending","amount":"800","currency":"UGX","createdAt":"2026-06-01T08:00:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"T3","status":"successful","amount":"800","currency":"UGX","createdAt":"2026-06-01T08:00:00Z","updatedAt":"2026-06-01T08:05:00Z"}', 'eversend_new_secret');
SELECT * FROM pg_temp.ev('{"transactionId":"T3","status":"reversed","amount":"800","currency":"UGX","createdAt":"2026-06-01T08:00:00Z"}', 'eversend_new_secret');
SELECT e.event_id, e.event_at AT TIME ZONE 'UTC' AS event_at_utc, e.event_at IS NULL AND e.received_at IS NOT NULL AS on_arrival
  FROM payments.events e WHERE e.provider = 'ev' AND e.event_id LIKE 'T3:%' ORDER BY e.id;
SELECT p.status, p.status_at = e.received_at AS status_on_arrival, f.refunded_at = e.received_at AS refund_on_arrival
  FROM payments.payments p JOIN payments.refunds f ON f.payment_id = p.id
  JOIN payments.events e ON e.id = f.event_id
 WHERE p.provider = 'ev' AND p.provider_ref = 'T3';
-- applied again later (a replay), still as of its arrival
BEGIN;
UPDATE payments.events SET received_at = '2026-07-01T00:00:00Z' WHERE provider = 'ev' AND event_id = 'T3:reversed';
SELECT (payments.event_change('eversend', '{}', e)).status_at AT TIME ZONE 'UTC' AS event_change_at_utc
  FROM payments.events e WHERE e.provider = 'ev' AND e.event_id = 'T3:reversed';
ROLLBACK;

-- leave nothing behind for the tests that follow
DELETE FROM payments.payments WHERE provider = 'ev';
DELETE FROM payments.events WHERE provider = 'ev';
DELETE FROM payments.providers WHERE name = 'ev';
