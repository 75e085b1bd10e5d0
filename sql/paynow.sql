-- Paynow status updates (PROVIDERS.md §3): form-urlencoded, the hash inside the form.
-- Published vectors, then the decoder's and the hash's edge cases with the verdict we
-- chose, then payments.ingest end to end.  Expected hashes are made here with pgcrypto's
-- digest() over the decoded values, independently of our code.
\set SHOW_CONTEXT never
\set key '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977'

-- Paynow's hash of decoded values: concatenated in order, + the key in lower case, SHA-512, upper hex
CREATE FUNCTION pg_temp.pn_hash(vals text[], key text) RETURNS text LANGUAGE sql AS $$
	SELECT upper(encode(digest(convert_to(array_to_string(vals, '') || lower(key), 'UTF8'), 'sha512'), 'hex'))
$$;
-- A body "k1=v1&k2=v2...&hash=H" with the values written as given (already encoded) and H
-- computed over the decoded values given separately
CREATE FUNCTION pg_temp.pn_body(raw text, decoded text[], key text) RETURNS bytea LANGUAGE sql AS $$
	SELECT convert_to(raw || '&hash=' || pg_temp.pn_hash(decoded, key), 'UTF8')
$$;

-- the docs vector (an initiate reply, the same algorithm), and the sample status update
\set docs 'status=Ok&browserurl=https%3a%2f%2fstaging.paynow.co.zw%2fPayment%2fConfirmPayment%2f9510&pollurl=https%3a%2f%2fstaging.paynow.co.zw%2fInterface%2fCheckPayment%2f%3fguid%3dc7ed41da-0159-46da-b428-69549f770413&paynowreference=9510&hash=750DD0B0DF374678707BB5AF915AF81C228B9058AD57BB7120569EC68BBB9C2EFC1B26C6375D2BC562AC909B3CD6B2AF1D42E1A5E479FFAC8F4FB3FDCE71DF4D'
\set sample 'reference=INV-1001&paynowreference=12345678&amount=25.00&status=Paid&pollurl=https%3a%2f%2fwww.paynow.co.zw%2fInterface%2fCheckPayment%2f%3fguid%3d0b9c1f0e-4a57-4a6b-9a0e-2d0c6f1c9e11&hash=1F6979A7033570E3CF3D2AB8C4C93CC7E69513EC60EB8A47644B0F58D021CCCC665A8399918C0F2768AF5084E3387E95EDA6C96970E97EB16D2FE212DEF9F35F'
SELECT payments.verify_paynow(:'docs'::bytea, :'key') AS docs_vector,
	   payments.verify_paynow(:'sample'::bytea, :'key') AS sample_update;
-- our independent hash agrees with the vector
SELECT pg_temp.pn_hash(ARRAY['INV-1001', '12345678', '25.00', 'Paid',
	'https://www.paynow.co.zw/Interface/CheckPayment/?guid=0b9c1f0e-4a57-4a6b-9a0e-2d0c6f1c9e11'], :'key')
	= '1F6979A7033570E3CF3D2AB8C4C93CC7E69513EC60EB8A47644B0F58D021CCCC665A8399918C0F2768AF5084E3387E95EDA6C96970E97EB16D2FE212DEF9F35F' AS independent_hash_agrees;

-- Table-driven cases: each row is a body and the verdict we chose, with why.
CREATE TEMP TABLE cases (n serial, body bytea, expected text, why text);
INSERT INTO cases (body, expected, why) VALUES
	(:'sample'::bytea, 'valid', 'sample as sent'),
	-- the hash field: compared ignoring case (the SDKs use ===, so lower case would fail there)
	(convert_to(regexp_replace(:'sample', 'hash=(.*)$', 'hash=') || lower(substring(:'sample' from 'hash=(.*)$')), 'UTF8'),
	 'valid', 'hash in lower case: compared ignoring case'),
	-- the hash key is found ignoring case (PHP does; node would hash "Hash" as data and fail)
	(convert_to(replace(:'sample', '&hash=', '&Hash='), 'UTF8'), 'valid', 'Hash= key: found ignoring case, as PHP does'),
	(convert_to(replace(:'sample', '&hash=', '&HASH='), 'UTF8'), 'valid', 'HASH= key'),
	-- the hash may stand anywhere; the other fields keep their order
	(pg_temp.pn_body('a=1&b=2', ARRAY['1', '2'], :'key'), 'valid', 'hash last'),
	(convert_to('hash=' || pg_temp.pn_hash(ARRAY['1', '2'], :'key') || '&a=1&b=2', 'UTF8'), 'valid', 'hash first'),
	(convert_to('a=1&hash=' || pg_temp.pn_hash(ARRAY['1', '2'], :'key') || '&b=2', 'UTF8'), 'valid', 'hash in the middle'),
	(pg_temp.pn_body('b=2&a=1', ARRAY['1', '2'], :'key'), 'signature_mismatch', 'order matters: hashed 1,2 but sent 2,1'),
	-- decoding: + is a space, %xx a byte (either case), an unencoded = belongs to the value
	(pg_temp.pn_body('a=x+y&b=%41%3a%3A', ARRAY['x y', 'A::'], :'key'), 'valid', '+ and %xx in either case'),
	(pg_temp.pn_body('a=%2B%25%26%3D', ARRAY['+%&='], :'key'), 'valid', 'encoded + % & ='),
	(pg_temp.pn_body('a=b=c', ARRAY['b=c'], :'key'), 'valid', 'unencoded = is part of the value (node would cut it at the =)'),
	(pg_temp.pn_body('a=b=c', ARRAY['b'], :'key'), 'signature_mismatch', '... so the value is not truncated'),
	(pg_temp.pn_body('a=&b=2', ARRAY['', '2'], :'key'), 'valid', 'an empty value is a value'),
	(pg_temp.pn_body('name=Zo%C3%AB+%F0%9F%99%8F', ARRAY['Zoë 🙏'], :'key'), 'valid', 'UTF-8 escapes'),
	(pg_temp.pn_body('name=Zoë', ARRAY['Zoë'], :'key'), 'valid', 'raw UTF-8 bytes are taken as they are'),
	(pg_temp.pn_body('n%61me=1', ARRAY['1'], :'key'), 'valid', 'keys are decoded too'),
	-- tampering, wrong key
	(convert_to(replace(:'sample', '25.00', '2500'), 'UTF8'), 'signature_mismatch', 'tampered amount'),
	(pg_temp.pn_body('a=1', ARRAY['1'], 'another-key'), 'signature_mismatch', 'hashed with another key'),
	-- the hash field itself
	(convert_to('a=1&b=2', 'UTF8'), 'missing_hash', 'no hash field: rejected (401), not invalid'),
	(convert_to('a=1&hash=', 'UTF8'), 'malformed_hash', 'empty hash'),
	(convert_to('a=1&hash=' || repeat('A', 127), 'UTF8'), 'malformed_hash', '127 digits'),
	(convert_to('a=1&hash=' || repeat('G', 128), 'UTF8'), 'malformed_hash', 'not hex'),
	(convert_to('a=1&hash=' || repeat('0', 128), 'UTF8'), 'signature_mismatch', 'well formed, wrong'),
	-- malformed forms: invalid (400) before any hash is computed
	(''::bytea, 'invalid_form', 'empty body'),
	(pg_temp.pn_body('a=100%', ARRAY['100%'], :'key'), 'valid', 'stray % at the end: itself, as node reads it'),
	(pg_temp.pn_body('a=%zz', ARRAY['%zz'], :'key'), 'valid', '% not followed by hex digits: itself'),
	(pg_temp.pn_body('a=%zz', ARRAY['zz'], :'key'), 'signature_mismatch', '% not followed by hex digits: not dropped'),
	(pg_temp.pn_body('a=%4', ARRAY['%4'], :'key'), 'valid', '% followed by one hex digit: itself'),
	(pg_temp.pn_body('a=%FF', ARRAY[''], :'key'), 'invalid_form', 'decodes to invalid UTF-8 (node''s decodeURIComponent throws)'),
	(pg_temp.pn_body('a=%C3', ARRAY[''], :'key'), 'invalid_form', 'truncated UTF-8 sequence'),
	(pg_temp.pn_body('a=%00', ARRAY[''], :'key'), 'invalid_form', 'NUL byte: cannot be stored as text'),
	('\x613dff'::bytea || convert_to('&hash=' || repeat('0', 128), 'UTF8'), 'invalid_form', 'raw byte 0xff'),
	(pg_temp.pn_body('a=1&a=1', ARRAY['1', '1'], :'key'), 'invalid_form', 'duplicate key (node and PHP keep the last)'),
	(pg_temp.pn_body('status=Paid&Status=Paid', ARRAY['Paid', 'Paid'], :'key'), 'invalid_form', 'keys differing only in case are duplicates'),
	(convert_to(:'sample' || '&hash=' || repeat('0', 128), 'UTF8'), 'invalid_form', 'two hash fields'),
	(pg_temp.pn_body('a=1&&b=2', ARRAY['1', '2'], :'key'), 'invalid_form', 'empty field (PHP skips it, node makes a key "")'),
	(convert_to('&' || :'sample', 'UTF8'), 'invalid_form', 'leading &'),
	(convert_to(:'sample' || '&', 'UTF8'), 'invalid_form', 'trailing &'),
	(pg_temp.pn_body('a', ARRAY[''], :'key'), 'invalid_form', 'field without = (node takes the value as "")'),
	(pg_temp.pn_body('=1', ARRAY['1'], :'key'), 'invalid_form', 'empty key'),
	(pg_temp.pn_body('%zz=1', ARRAY['1'], :'key'), 'valid', 'a key with a stray %: keys are not hashed'),
	(pg_temp.pn_body('a=%ff', ARRAY['x'], :'key'), 'invalid_form', 'not UTF-8 once decoded');
SELECT n, payments.verify_paynow(body, :'key') AS verdict, expected, why
  FROM cases WHERE payments.verify_paynow(body, :'key') <> expected ORDER BY n;
SELECT count(*) AS cases, count(*) FILTER (WHERE payments.verify_paynow(body, :'key') = expected) AS as_expected FROM cases;
SELECT expected, count(*) FROM cases GROUP BY expected ORDER BY expected;

-- the key given in upper case or mixed case is lower-cased, as the SDKs do
SELECT payments.verify_paynow(:'sample'::bytea, upper(:'key')) AS upper_key;
-- the form may hold far more fields than Paynow sends, but not more than 1000
SELECT payments.verify_paynow(convert_to(string_agg('f' || i || '=' || i, '&'), 'UTF8'), :'key') AS many_fields
  FROM generate_series(1, 1000) i;
SELECT payments.verify_paynow(convert_to(string_agg('f' || i || '=' || i, '&'), 'UTF8'), :'key') AS too_many_fields
  FROM generate_series(1, 1001) i;
-- NULL in, NULL out
SELECT payments.verify_paynow(NULL, :'key') IS NULL AS null_body;

-- Registration: settings and integration keys
SELECT payments.register_provider('pn', 'paynow', '{"tolerance": 300}');
SELECT payments.register_provider('pn', 'paynow', '{"integration_id": 1201}');
SELECT payments.register_provider('pn', 'paynow', '{"integration_id": "12a"}');
SELECT payments.register_provider('pn', 'paynow', '{"result_url": "ftp://example.org/"}');
SELECT payments.register_provider('pn', 'paynow', '{"api_base": 7}');
-- (a user or password in api_base: refused, the trace URLs asked with it are kept)
SELECT payments.register_provider('pn', 'paynow', '{"api_base": "https://merchant:PnPw55@www.paynow.co.zw"}');
SELECT payments.register_provider('pn', 'paynow',
	'{"integration_id": "1201", "result_url": "https://clinic.example/webhooks/pn", "return_url": "https://clinic.example/thanks", "api_base": "https://www.paynow.co.zw"}');
SELECT payments.add_secret('pn', ' 3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977');
SELECT payments.add_secret('pn', '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977' || chr(10));
SELECT payments.add_secret('pn', 'clé');
SELECT payments.add_secret('pn', upper(:'key')) AS old_key \gset

-- Ingest: a status update is stored once, id "<paynowreference>:<status>", type the status
CREATE FUNCTION pg_temp.pn(body bytea) RETURNS TABLE (http_status int, outcome text, event_id text)
	LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('pn', '{"content-type": "application/x-www-form-urlencoded"}', body, '196.44.0.1', 'pn-req')
$$;
SELECT * FROM pg_temp.pn(:'sample'::bytea);
SELECT * FROM pg_temp.pn(:'sample'::bytea);
SELECT event_id, event_type, convert_from(body, 'UTF8') = :'sample' AS body_exact, payload
  FROM payments.events WHERE provider = 'pn';
-- the hash covers the values run together, not their names nor where one ends: the sample's hash
-- with digits moved from paynowreference to amount, or with an empty field added, verifies (a new
-- event id, another amount), but that hash is stored with another form: refused
SELECT payments.verify_paynow(convert_to(replace(:'sample', 'paynowreference=12345678&amount=25.00',
	'paynowreference=1234567&amount=825.00'), 'UTF8'), :'key') AS shifted_verifies;
SELECT * FROM pg_temp.pn(convert_to(replace(:'sample', 'paynowreference=12345678&amount=25.00',
	'paynowreference=1234567&amount=825.00'), 'UTF8'));
SELECT * FROM pg_temp.pn(convert_to('x=&' || :'sample', 'UTF8'));
SELECT count(*) AS forged_payments FROM payments.payments WHERE provider = 'pn' AND provider_ref <> '12345678';
-- one integration key may serve two providers (a shop and a chat): an update stored by one is
-- refused by the other, as sent and shifted (either would verify there, as a payment of its own)
SELECT payments.register_provider('pn-chat', 'paynow');
SELECT payments.add_secret('pn-chat', :'key') > 0 AS chat_has_the_key;
SELECT * FROM payments.ingest('pn-chat', '{"content-type": "application/x-www-form-urlencoded"}', :'sample'::bytea,
	'196.44.0.1', 'pn-chat-req');
SELECT * FROM payments.ingest('pn-chat', '{"content-type": "application/x-www-form-urlencoded"}',
	convert_to(replace(:'sample', 'paynowreference=12345678&amount=25.00', 'paynowreference=1234567&amount=825.00'), 'UTF8'),
	'196.44.0.1', 'pn-chat-req');
SELECT count(*) AS chat_payments, (SELECT string_agg(reason, ', ' ORDER BY id) FROM payments.rejections
	WHERE provider = 'pn-chat') AS refused FROM payments.payments WHERE provider = 'pn-chat';
DELETE FROM payments.providers WHERE name = 'pn-chat';
-- field names in any case ("Status" is "status"): the payload's keys are lower case
SELECT * FROM pg_temp.pn(pg_temp.pn_body('Reference=INV-77&PaynowReference=777&Amount=5.00&Status=Paid',
	ARRAY['INV-77', '777', '5.00', 'Paid'], :'key'));
SELECT provider_ref, reference, status, amount FROM payments.payments WHERE provider = 'pn' AND provider_ref = '777';
-- the next status of the same payment is a new event; a resend of it a duplicate
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=INV-1001&paynowreference=12345678&amount=25.00&status=Refunded&pollurl=x',
	ARRAY['INV-1001', '12345678', '25.00', 'Refunded', 'x'], :'key'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=INV-1001&paynowreference=12345678&amount=25.00&status=Refunded&pollurl=x',
	ARRAY['INV-1001', '12345678', '25.00', 'Refunded', 'x'], :'key'));
-- without paynowreference or status, or with an empty one, there is no id: invalid
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=INV-1&status=Paid', ARRAY['INV-1', 'Paid'], :'key'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=1&amount=1.00', ARRAY['1', '1.00'], :'key'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=1&status=', ARRAY['1', ''], :'key'));
-- the id may be 255 bytes, not more
SELECT http_status, outcome, length(event_id) FROM pg_temp.pn(pg_temp.pn_body('paynowreference=' || repeat('9', 250) || '&status=Paid',
	ARRAY[repeat('9', 250), 'Paid'], :'key'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=' || repeat('9', 251) || '&status=Paid',
	ARRAY[repeat('9', 251), 'Paid'], :'key'));
-- a "%" not followed by two hex digits is itself (as the Node SDK reads it), hashed and stored so
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=2&status=Paid&additionalinfo=100%+sure%2',
	ARRAY['2', 'Paid', '100% sure%2'], :'key'));
SELECT payload ->> 'additionalinfo' AS additionalinfo FROM payments.events WHERE provider = 'pn' AND event_id = '2:Paid';
-- malformed forms are invalid (400), missing or wrong hashes rejected (401)
SELECT * FROM pg_temp.pn(''::bytea);
SELECT * FROM pg_temp.pn(convert_to('paynowreference=2&status=Paid', 'UTF8'));
SELECT * FROM pg_temp.pn(convert_to(replace(:'sample', '25.00', '2500'), 'UTF8'));
SELECT outcome, reason, detail, body_size, host(source_ip), request_id FROM payments.rejections
 WHERE provider = 'pn' ORDER BY id;

-- headers are the sender's, whoever it is: a paypal-transmission-id of 6,400 bytes that do not
-- compress, with a malformed form (invalid, 400) or a genuine one (stored), is kept with the
-- delivery (a refused one's cut to 256 characters); the indexes of PayPal's transmission ids take
-- only what PayPal may send (255)
SELECT string_agg(md5(g::text), '') AS long_header FROM generate_series(1, 200) g \gset
SELECT * FROM payments.ingest('pn', jsonb_build_object('paypal-transmission-id', :'long_header'), 'a=1&&b=2'::bytea);
SELECT outcome, reason, length(headers ->> 'paypal-transmission-id') AS header_length
  FROM payments.rejections WHERE provider = 'pn' ORDER BY id DESC LIMIT 1;
SELECT * FROM payments.ingest('pn', jsonb_build_object('paypal-transmission-id', :'long_header'),
	pg_temp.pn_body('paynowreference=10&status=Paid', ARRAY['10', 'Paid'], :'key'));
SELECT length(headers ->> 'paypal-transmission-id') AS header_length FROM payments.events
 WHERE provider = 'pn' AND event_id = '10:Paid';
-- anyone may send a refused delivery: its headers are kept up to 4 KB (40 of 400 bytes: 15 kept,
-- cut to 256 characters, and how many were), a genuine one's whole
-- (PayPal's transmission id kept first, whatever else was sent)
SELECT * FROM payments.ingest('pn', (SELECT jsonb_object_agg('a-pad-' || g, repeat('p', 400)) FROM generate_series(10, 49) g)
	|| '{"user-agent": "Paynow", "paypal-transmission-id": "69cd13f0-d67a-11e5-baa3-778b53f4ae55"}', 'a=1&&b=2'::bytea);
SELECT outcome, reason, octet_length(headers::text) <= 4200 AS bounded, headers ->> '(cut)' AS cut,
	   length(headers ->> 'a-pad-10') AS value_length, headers ->> 'paypal-transmission-id' AS transmission_id
  FROM payments.rejections WHERE provider = 'pn' ORDER BY id DESC LIMIT 1;

-- rotation: the old and the new key both verify until the old one is revoked
SELECT payments.add_secret('pn', 'b0d1e2f3-0000-4000-8000-123456789abc') AS new_key \gset
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=3&status=Paid', ARRAY['3', 'Paid'], :'key'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=4&status=Paid', ARRAY['4', 'Paid'], 'B0D1E2F3-0000-4000-8000-123456789ABC'));
SELECT payments.revoke_secret(:old_key);
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=5&status=Paid', ARRAY['5', 'Paid'], :'key'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('paynowreference=5&status=Paid', ARRAY['5', 'Paid'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT left(event_id, 20) AS event_id, event_type FROM payments.events WHERE provider = 'pn' ORDER BY id;

-- a Paynow transaction's amount never changes: news of another amount is kept for review, and a
-- paid payment's amount stays (Delivered of 500.00 after Paid of 10.00 raised it to 500.00)
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=AM-1&paynowreference=20&amount=10.00&status=Paid',
	ARRAY['AM-1', '20', '10.00', 'Paid'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=AM-1&paynowreference=20&amount=500.00&status=Delivered',
	ARRAY['AM-1', '20', '500.00', 'Delivered'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT status, amount, metadata -> 'paynow_amount_mismatch' ->> 'known' AS known,
	   metadata -> 'paynow_amount_mismatch' ->> 'reported' AS reported
  FROM payments.payments WHERE provider = 'pn' AND provider_ref = '20';
-- on-call sees it
SELECT metric, provider, detail, count FROM payments.reconciliation_summary(24) WHERE metric = 'flagged' AND provider = 'pn';
-- decided under the payment's lock too: news checked before another's payment committed (two
-- deliveries at once) raises nothing either
SELECT payments.apply_change(NULL, 'pn', ROW('20', false, 'paid', now(), 'AM-1', NULL, 500.00, 'USD',
	NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::payments.payment_change) AS raced;
SELECT amount FROM payments.payments WHERE provider = 'pn' AND provider_ref = '20';
-- amounts with thousands grouped by commas are read, not left unknown
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=AM-2&paynowreference=21&amount=1%2c000.00&status=Paid',
	ARRAY['AM-2', '21', '1,000.00', 'Paid'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=AM-3&paynowreference=22&amount=1%2c00&status=Paid',
	ARRAY['AM-3', '22', '1,00', 'Paid'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT provider_ref, amount FROM payments.payments WHERE provider = 'pn' AND provider_ref IN ('21', '22') ORDER BY 1;

-- a Refunded without an amount, then (arriving later) its Paid of 25.00: the 25.00 was given back
-- when the Refunded arrived, the 5th, not when the Paid did
SELECT payments.apply_change(NULL, 'pn', payments.paynow_change(
	'{"reference": "RF-1", "paynowreference": "30", "status": "Refunded"}', '{}', '2026-09-05T12:00:00Z')) AS refunded_first;
SELECT payments.apply_change(NULL, 'pn', payments.paynow_change(
	'{"reference": "RF-1", "paynowreference": "30", "amount": "25.00", "status": "Paid"}', '{}', '2026-09-06T12:00:00Z')) AS then_paid;
SELECT p.status, p.amount, f.amount AS refunded, f.refunded_at AT TIME ZONE 'UTC' AS refunded_at_utc
  FROM payments.payments p JOIN payments.refunds f ON f.payment_id = p.id
 WHERE p.provider = 'pn' AND p.provider_ref = '30';

-- Paynow's news is dated by its arrival: a Paid delivered after the Disputed is the late news of
-- the payment, not the dispute won (Paynow's Paid again after a dispute has the first Paid's
-- event id: a duplicate).  In either order the payment ends disputed, paid, with its receipt
SELECT payments.apply_change(NULL, 'pn', payments.paynow_change(
	jsonb_build_object('reference', 'DS-1', 'paynowreference', '41', 'amount', '5.00', 'status', st), '{}', at)) AS outcome
  FROM (VALUES ('Paid', '2026-09-05T12:00:00Z'::timestamptz), ('Disputed', '2026-09-05T12:01:00Z')) AS v (st, at);
SELECT payments.apply_change(NULL, 'pn', payments.paynow_change(
	jsonb_build_object('reference', 'DS-2', 'paynowreference', '42', 'amount', '5.00', 'status', st), '{}', at)) AS outcome
  FROM (VALUES ('Disputed', '2026-09-05T12:00:00Z'::timestamptz), ('Paid', '2026-09-05T12:01:00Z')) AS v (st, at);
SELECT p.provider_ref, p.status, p.amount, p.paid_at IS NOT NULL AS paid, r.receipt_no IS NOT NULL AS has_receipt
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE p.provider = 'pn' AND p.provider_ref IN ('41', '42') ORDER BY 1;

-- a payment we initiated is the Paynow transaction its initiate reply named: an update about
-- another transaction made with its reference (reused) moves it not, and is a payment of its own,
-- so that money it took is not lost, marked with the reference it reused
INSERT INTO payments.payments (provider, provider_ref, reference, status, amount, currency, status_at, metadata)
VALUES ('pn', 'WA-RU-1', 'WA-RU-1', 'pending', 5.00, 'USD', now(), '{"paynowreference": "9104", "pollurl": "https://www.paynow.co.zw/x"}');
INSERT INTO payments.paynow_initiations (payment_id, provider, reference, method, phone, state)
SELECT id, 'pn', 'WA-RU-1', 'ecocash', '0771234567', 'done' FROM payments.payments WHERE provider_ref = 'WA-RU-1';
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=WA-RU-1&paynowreference=9999&amount=5.00&status=Cancelled',
	ARRAY['WA-RU-1', '9999', '5.00', 'Cancelled'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=WA-RU-1&paynowreference=9998&amount=5.00&status=Paid',
	ARRAY['WA-RU-1', '9998', '5.00', 'Paid'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=WA-RU-1&paynowreference=9104&amount=5.00&status=Paid',
	ARRAY['WA-RU-1', '9104', '5.00', 'Paid'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT p.provider_ref, p.reference, p.status, p.amount, p.metadata ->> 'paynow_reference_reused' AS reused
  FROM payments.payments p WHERE p.provider = 'pn' AND p.reference = 'WA-RU-1' ORDER BY 1;

-- an amount said but not read is another amount than the payment's: kept for review as said
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=AM-4&paynowreference=23&amount=5.00&status=Sent',
	ARRAY['AM-4', '23', '5.00', 'Sent'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT * FROM pg_temp.pn(pg_temp.pn_body('reference=AM-4&paynowreference=23&amount=USD+0.01&status=Paid',
	ARRAY['AM-4', '23', 'USD 0.01', 'Paid'], 'b0d1e2f3-0000-4000-8000-123456789abc'));
SELECT status, amount, (metadata -> 'paynow_amount_mismatch') - 'at' AS mismatch
  FROM payments.payments WHERE provider = 'pn' AND provider_ref = '23';

-- leave nothing behind for the tests that follow
DELETE FROM payments.payments WHERE provider = 'pn';
DELETE FROM payments.events WHERE provider = 'pn';
DELETE FROM payments.providers WHERE name = 'pn';
