-- WhatsApp donations (issue 9): the conversation state machine in SQL, Paynow initiation
-- requests and replies, receipts and failure messages, statuses of sent messages, admin
-- commands, volunteers.  Messages are ingested as Meta would sign them (pgcrypto's hmac).
\set SHOW_CONTEXT never
\set key '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977'

SELECT payments.register_provider('pn_usd', 'paynow', '{"integration_id": "1201", "result_url": "https://clinic.example/webhooks/pn_usd",
	"auth_email": "donations@clinic.example", "api_base": "http://127.0.0.1:9", "currency": "USD"}');
SELECT payments.register_provider('pn_zwg', 'paynow', '{"integration_id": "1202", "result_url": "https://clinic.example/webhooks/pn_zwg",
	"auth_email": "donations@clinic.example", "api_base": "http://127.0.0.1:9", "currency": "ZWG"}');
SELECT payments.add_secret('pn_usd', :'key') IS NOT NULL AS key_added;
SELECT payments.add_secret('pn_zwg', :'key') IS NOT NULL AS key_added;

-- the settings of the conversation are checked when the meta provider is registered
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "phone_number_id": "+26377"}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "access_token": "has space"}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "admin_numbers": "263770000001"}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "admin_numbers": ["not a phone"]}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "paynow_providers": {"USD": "nobody"}}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "paynow_providers": {"XYZ": "pn_usd"}}');
-- Paynow charges in its integration's currency: ZWG cannot go to the USD integration
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "paynow_providers": {"ZWG": "pn_usd"}}');
-- card and TeleCash donors come back from Paynow's page to the provider's return_url
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "paynow_providers": {"USD": "pn_usd"}}');
SELECT payments.register_provider('pn_usd', 'paynow', '{"integration_id": "1201", "result_url": "https://clinic.example/webhooks/pn_usd",
	"return_url": "https://clinic.example/thanks", "auth_email": "donations@clinic.example", "api_base": "http://127.0.0.1:9", "currency": "USD"}');
SELECT payments.register_provider('pn_zwg', 'paynow', '{"integration_id": "1202", "result_url": "https://clinic.example/webhooks/pn_zwg",
	"return_url": "https://clinic.example/thanks", "auth_email": "donations@clinic.example", "api_base": "http://127.0.0.1:9", "currency": "ZWG"}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "methods": ["ecocash", "bitcoin"]}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "methods": ["ecocash", "ecocash"]}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "purposes": ["A purpose far too long for a button"]}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "purposes": ["Medicines", "medicines "]}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "purposes": ["Medicines", " "]}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "min_amount": 0}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "min_amount": 500}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "min_amount": {"usd": 1}}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "max_amount": {"USD": 480, "ZWG": "lots"}}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "min_amount": {"ZWG": 600}}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "session_timeout": 1.5}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "rate_limit": 0}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "receipt_template": {"name": "Donation Receipt", "language": "en"}}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "receipt_template": {"name": "donation_receipt"}}');
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "notice_template": {"name": "donation_notice", "language": "en", "body": "x"}}');
-- (the notice_template: the donors below last wrote in 2024, Meta's times, so their failed,
-- cancelled and refunded notices go as it)
SELECT payments.register_provider('chat', 'meta', '{"verify_token": "t", "access_token": "EAAtoken", "phone_number_id": "106540352242922",
	"api_base": "http://127.0.0.1:9/v21.0", "admin_numbers": ["+263 77 000 0001"],
	"paynow_providers": {"USD": "pn_usd", "ZWG": "pn_zwg"}, "methods": ["ecocash", "onemoney", "telecash", "card"],
	"purposes": ["Maternity ward", "Medicines"], "notice_template": {"name": "donation_notice", "language": "en"}}');
SELECT payments.add_secret('chat', 'test_app_secret') IS NOT NULL AS secret_added;
-- a Paynow provider the chat maps keeps what the chat needs: its return_url, its currency
SELECT payments.register_provider('pn_usd', 'paynow', '{"integration_id": "1201", "result_url": "https://clinic.example/webhooks/pn_usd",
	"auth_email": "donations@clinic.example", "api_base": "http://127.0.0.1:9", "currency": "USD"}');
SELECT payments.register_provider('pn_zwg', 'paynow', '{"integration_id": "1202", "result_url": "https://clinic.example/webhooks/pn_zwg",
	"return_url": "https://clinic.example/thanks", "auth_email": "donations@clinic.example", "api_base": "http://127.0.0.1:9", "currency": "USD"}');
SELECT settings ->> 'return_url' AS kept_return_url FROM payments.providers WHERE name = 'pn_usd';

-- deliver(value): one delivery of a change of the messages field, signed with the app secret as
-- Meta signs it, through payments.ingest: its status and outcome
CREATE FUNCTION pg_temp.deliver(value jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	body	text := jsonb_build_object('object', 'whatsapp_business_account', 'entry', jsonb_build_array(jsonb_build_object(
		'id', '1', 'changes', jsonb_build_array(jsonb_build_object('field', 'messages', 'value', value)))))::text;
	r		record;
BEGIN
	SELECT * INTO r FROM payments.ingest('chat', jsonb_build_object('x-hub-signature-256',
		'sha256=' || encode(hmac(convert_to(body, 'UTF8'), 'test_app_secret', 'sha256'), 'hex')), convert_to(body, 'UTF8'));
	RETURN r.http_status || ' ' || r.outcome;
END
$$;
-- say(from, text or button id, seconds): one signed delivery of one message at 1718000000 + seconds
CREATE SEQUENCE pg_temp.wamid;
CREATE FUNCTION pg_temp.say(sender text, said text, at integer, button boolean DEFAULT false,
							number_id text DEFAULT '106540352242922', content jsonb DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	msg		jsonb := jsonb_build_object('from', sender, 'id', 'wamid.in' || nextval('pg_temp.wamid'),
										'timestamp', (1718000000 + at)::text);
BEGIN
	msg := msg || CASE WHEN button
		THEN jsonb_build_object('type', 'interactive', 'interactive', jsonb_build_object('type', 'button_reply',
								'button_reply', jsonb_build_object('id', said, 'title', said)))
		ELSE jsonb_build_object('type', 'text', 'text', jsonb_build_object('body', said)) END;
	msg := CASE WHEN content IS NULL THEN msg ELSE msg - 'type' - 'text' || content END;	-- another type of message
	RETURN pg_temp.deliver(jsonb_build_object(
			'messaging_product', 'whatsapp', 'metadata', jsonb_build_object('phone_number_id', number_id),
			'contacts', jsonb_build_array(jsonb_build_object('profile', jsonb_build_object('name', 'Tendai'), 'wa_id', sender)),
			'messages', jsonb_build_array(msg)));
END
$$;
-- what was queued for a number since the last look: text, or body [button ids], or [template name]
-- its parameters
CREATE TABLE pg_temp.seen (who text PRIMARY KEY, id bigint);
CREATE FUNCTION pg_temp.replies(who text) RETURNS SETOF text LANGUAGE sql AS $$
	WITH r AS (
		SELECT o.id, regexp_replace(coalesce(o.payload -> 'text' ->> 'body',
				   (o.payload -> 'interactive' -> 'body' ->> 'text') || ' [' ||
				   (SELECT string_agg(coalesce(b -> 'reply' ->> 'id', b ->> 'id'), ' ')
					  FROM jsonb_array_elements(coalesce(o.payload -> 'interactive' -> 'action' -> 'buttons',
														 o.payload -> 'interactive' -> 'action' -> 'sections' -> 0 -> 'rows')) b) || ']',
				   '[document ' || (o.payload -> 'message' -> 'document' ->> 'filename') || ', ' ||
				   (o.payload -> 'upload' ->> 'type') || '] ' || (o.payload -> 'message' -> 'document' ->> 'caption'),
				   '[template ' || (o.payload -> 'template' ->> 'name') || '] ' ||
				   (SELECT string_agg(t ->> 'text', ' | ') FROM jsonb_array_elements(o.payload -> 'template' -> 'components' -> 0 -> 'parameters') t)),
				   -- (a Confirm button's id hashes its draft, which may hold a payment id, and a Donate
				   -- anyway button's names one: masked, so that payments made by earlier tests do not
				   -- change them)
				   '(WA|LP)-[0-9]{8}-[0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}|(?<=confirm_)[0-9a-f]{16}|(?<=donate_anyway_)[0-9]+', 'X', 'g') AS said
		  FROM payments.outbox o
		 WHERE o.recipient = who AND o.id > coalesce((SELECT s.id FROM pg_temp.seen s WHERE s.who = replies.who), 0)),
	u AS (INSERT INTO pg_temp.seen SELECT who, max(o.id) FROM payments.outbox o WHERE o.recipient = who
		  ON CONFLICT (who) DO UPDATE SET id = excluded.id)
	SELECT said FROM r ORDER BY id
$$;
-- (the payment id a draft keeps, of a donation warned of or gone past, masked as in replies)
CREATE FUNCTION pg_temp.session(who text) RETURNS text LANGUAGE sql AS $$
	SELECT state || ' ' || regexp_replace(draft::text, '(?<="(warned|pending_ok)": )[0-9]+', 'X', 'g')
	  FROM payments.chat_sessions WHERE wa_id = who
$$;

-- a greeting gets the menu (a list: four choices); the message is applied, the reply queued
SELECT pg_temp.say('263771234567', 'Hi', 0);
SELECT * FROM pg_temp.replies('263771234567');
SELECT provider, recipient, event_type, state, payload ->> 'to' AS "to" FROM payments.outbox ORDER BY id;

-- a donation: amount (validated), currency, method, number, purpose, summary
SELECT pg_temp.say('263771234567', 'donate', 1, true);
SELECT pg_temp.say('263771234567', 'ten dollars', 2);
SELECT pg_temp.say('263771234567', '0.50', 3);
SELECT pg_temp.say('263771234567', '481', 4);
SELECT pg_temp.say('263771234567', '12.345', 5);
SELECT * FROM pg_temp.replies('263771234567');
SELECT pg_temp.say('263771234567', '25', 6);
SELECT pg_temp.say('263771234567', 'GBP', 7);
SELECT pg_temp.say('263771234567', 'cur_USD', 8, true);
SELECT pg_temp.say('263771234567', 'EcoCash', 9);
SELECT pg_temp.say('263771234567', '12345', 10);
SELECT pg_temp.say('263771234567', 'phone_same', 11, true);
SELECT * FROM pg_temp.replies('263771234567');
SELECT pg_temp.session('263771234567');
SELECT pg_temp.say('263771234567', 'purpose_2', 12, true);
SELECT * FROM pg_temp.replies('263771234567');

-- edit: the amount, then the method (which asks for the number again)
SELECT pg_temp.say('263771234567', 'edit', 13, true);
SELECT pg_temp.say('263771234567', 'edit_amount', 14, true);
SELECT pg_temp.say('263771234567', '30', 15);
SELECT pg_temp.say('263771234567', 'edit', 16, true);
SELECT pg_temp.say('263771234567', 'edit_method', 17, true);
SELECT pg_temp.say('263771234567', 'onemoney', 18);
-- (an EcoCash number for OneMoney, the donor's own by an old button or typed, is refused: Paynow
-- would refuse it, and the request would count against the number's limits)
SELECT pg_temp.say('263771234567', 'phone_same', 18, true);
SELECT pg_temp.say('263771234567', '0781234567', 18);
SELECT pg_temp.say('263771234567', '+263 71 234 5678', 19);
SELECT * FROM pg_temp.replies('263771234567');

-- confirm (the button of the last summary): the payment is pending with our reference, and its
-- initiation queued, before Paynow answers
SELECT pg_temp.say('263771234567', payments.chat_confirm_id(draft), 20, true) FROM payments.chat_sessions
 WHERE wa_id = '263771234567';
SELECT * FROM pg_temp.replies('263771234567');
SELECT pg_temp.session('263771234567');
SELECT provider, provider_ref ~ '^WA-[0-9]{8}-[0-9]+$' AS our_ref, reference = provider_ref AS same, status, amount, currency,
	   method, donor_name, donor_phone, metadata FROM payments.payments WHERE provider LIKE 'pn\_%';
SELECT provider, method, phone, state FROM payments.paynow_initiations;
-- check while it is pending: wait, never "start again" (a request still live would be paid twice)
SELECT pg_temp.say('263771234567', 'check', 20);
SELECT * FROM pg_temp.replies('263771234567');

-- the request: hashed like Paynow's SDKs, mobile checkout, the hash verifies with the key
CREATE TABLE pg_temp.claimed AS SELECT * FROM payments.claim_initiations(10);
SELECT url, method, headers, regexp_replace(regexp_replace(body, 'WA-[0-9]{8}-[0-9]+', 'WA-DAY-N', 'g'), 'hash=[0-9A-F]{128}$', 'hash=HEX') AS body
  FROM pg_temp.claimed;
SELECT payments.verify_paynow(convert_to(body, 'UTF8'), :'key') FROM pg_temp.claimed;
SELECT state FROM payments.paynow_initiations;
SELECT count(*) AS claimed_again FROM payments.claim_initiations(10);
-- cancel once the request is being sent says the request is not cancelled by it (the payment stays
-- pending: the donor's phone may still ask)
SELECT pg_temp.say('263771234567', 'cancel', 20);
SELECT * FROM pg_temp.replies('263771234567');
SELECT status FROM payments.payments WHERE provider LIKE 'pn\_%';

-- Paynow's status update arrives before the initiate reply is recorded: it pays our payment
SELECT reference AS ref FROM payments.payments WHERE provider LIKE 'pn\_%' \gset
CREATE FUNCTION pg_temp.paynow(provider text, fields text[][]) RETURNS text LANGUAGE sql AS $$
	SELECT http_status || ' ' || outcome FROM payments.ingest(provider, '{}',
		convert_to(payments.paynow_request((SELECT jsonb_agg(jsonb_build_array(f[1], f[2])) FROM
			(SELECT ARRAY[fields[i][1], fields[i][2]] AS f FROM generate_subscripts(fields, 1) i) x), '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977'), 'UTF8'))
$$;
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'ref'], ['paynowreference', '9001'], ['amount', '30.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g1']]);
SELECT status, receipt_no ~ '^LP-[0-9]{8}-[0-9]{6}$' AS receipt, metadata ->> 'paynowreference' AS paynowreference
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE provider LIKE 'pn\_%';
SELECT count(*) AS payments FROM payments.payments WHERE provider LIKE 'pn\_%';
SELECT * FROM pg_temp.replies('263771234567');
-- then the initiate reply: pollurl kept, no instructions (the payment is paid already)
SELECT payments.record_initiation((SELECT initiation_id FROM pg_temp.claimed), 200, NULL,
	payments.paynow_request(jsonb_build_array(jsonb_build_array('status', 'Ok'), jsonb_build_array('instructions', 'Dial *151#'),
		jsonb_build_array('paynowreference', '9001'), jsonb_build_array('pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g1')), :'key'));
SELECT state, paynow_status, http_status FROM payments.paynow_initiations;
SELECT metadata ->> 'pollurl' AS pollurl FROM payments.payments WHERE provider LIKE 'pn\_%';
SELECT * FROM pg_temp.replies('263771234567');
-- check: the last payment's status
SELECT pg_temp.say('263771234567', 'check', 21);
SELECT * FROM pg_temp.replies('263771234567');

-- card (web checkout link), Paynow refuses a mobile one, a bad reply hash, no reply at all
CREATE FUNCTION pg_temp.donate(who text, at integer, method text) RETURNS void LANGUAGE sql AS $$
	SELECT pg_temp.say(who, 'donate', at, true);
	SELECT pg_temp.say(who, '5', at + 1);
	SELECT pg_temp.say(who, 'cur_ZWG', at + 2, true);
	SELECT pg_temp.say(who, 'pay_' || method, at + 3, true);
	SELECT pg_temp.say(who, 'phone_same', at + 4, true) WHERE NOT payments.paynow_web_checkout(method);
	SELECT pg_temp.say(who, 'Clinic roof', at + 5);
	-- typed: it confirms the draft as it is now
	SELECT pg_temp.say(who, 'confirm', at + 6);
$$;
SELECT pg_temp.donate('263772000001', 0, 'card');
SELECT pg_temp.donate('263772000002', 0, 'telecash');
SELECT pg_temp.donate('263772000003', 0, 'ecocash');
SELECT pg_temp.donate('263712000004', 0, 'onemoney');
TRUNCATE pg_temp.claimed;
INSERT INTO pg_temp.claimed SELECT * FROM payments.claim_initiations(10);
SELECT i.phone, c.url, regexp_replace(regexp_replace(c.body, 'WA-[0-9]{8}-[0-9]+', 'WA-DAY-N', 'g'), 'hash=[0-9A-F]{128}$', 'hash=HEX') AS body
  FROM pg_temp.claimed c JOIN payments.paynow_initiations i ON i.id = c.initiation_id ORDER BY c.initiation_id;
SELECT payments.record_initiation(initiation_id, 200, NULL, CASE i.method
	WHEN 'card' THEN payments.paynow_request('[["status", "Ok"], ["browserurl", "https://www.paynow.co.zw/Payment/ConfirmPayment/9510"],
		["pollurl", "https://www.paynow.co.zw/Interface/CheckPayment/?guid=g2"]]', :'key')
	WHEN 'telecash' THEN 'status=Error&error=Insufficient+balance'
	WHEN 'ecocash' THEN payments.paynow_request('[["status", "Ok"], ["pollurl", "https://www.paynow.co.zw/Interface/CheckPayment/?guid=g3"]]',
												'00000000-0000-0000-0000-000000000000') END)
  FROM pg_temp.claimed c JOIN payments.paynow_initiations i ON i.id = c.initiation_id WHERE i.method <> 'onemoney'
 ORDER BY c.initiation_id;
SELECT payments.record_initiation(c.initiation_id, NULL, 'Connection refused', NULL)
  FROM pg_temp.claimed c JOIN payments.paynow_initiations i ON i.id = c.initiation_id WHERE i.method = 'onemoney';
SELECT i.method, i.state, i.error, p.status FROM payments.paynow_initiations i JOIN payments.payments p ON p.id = i.payment_id
 WHERE i.id > (SELECT min(id) FROM payments.paynow_initiations) ORDER BY i.id;
SELECT * FROM pg_temp.replies('263772000001');
SELECT * FROM pg_temp.replies('263772000002');
SELECT * FROM pg_temp.replies('263772000003');
SELECT * FROM pg_temp.replies('263712000004');
-- the card payment is cancelled at Paynow: the donor is told
SELECT reference AS card_ref FROM payments.payments WHERE provider LIKE 'pn\_%' AND method = 'card' \gset
SELECT pg_temp.paynow('pn_zwg', ARRAY[['reference', :'card_ref'], ['paynowreference', '9002'], ['amount', '5.00'],
	['status', 'Cancelled'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g2']]);
SELECT * FROM pg_temp.replies('263772000001');
-- an initiation interrupted mid-request (no reply recorded) is failed, never sent again;
-- one that cannot be made (no live integration key) fails at once
SELECT pg_temp.donate('263772000005', 0, 'ecocash');
UPDATE payments.paynow_initiations i SET state = 'sending', started_at = now() - interval '10 minutes'
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone = '263772000005';
UPDATE payments.secrets SET revoked_at = now() WHERE provider = 'pn_zwg';
SELECT pg_temp.donate('263712000006', 0, 'onemoney');
SELECT count(*) AS sent FROM payments.claim_initiations(10);
UPDATE payments.secrets SET revoked_at = NULL WHERE provider = 'pn_zwg';
SELECT p.donor_phone, i.state, i.error, p.status FROM payments.paynow_initiations i JOIN payments.payments p ON p.id = i.payment_id
 WHERE p.donor_phone IN ('263772000005', '263712000006') ORDER BY 1;
SELECT * FROM pg_temp.replies('263772000005') OFFSET 7;
SELECT * FROM pg_temp.replies('263712000006') OFFSET 7;
-- reconciliation of unconfirmed payments (no pollurl): Paynow's trace, by the merchant trace sent
-- with the initiation (our reference); a status update settles one, NotFound (the request never
-- reached Paynow: nothing can be taken) fails the other, and its donor is told
BEGIN;
SET LOCAL payments.reconcile_after = '1min';
UPDATE payments.payments SET status_at = now() - interval '1 hour'
 WHERE donor_phone IN ('263772000003', '263772000005', '263712000004') AND provider LIKE 'pn\_%';
-- sent an hour ago (263772000005's went as the sending code sends, with its merchant trace: above,
-- only its state was set); 263712000004's never went (Connection refused: failed, not traced)
UPDATE payments.paynow_initiations i SET started_at = now() - interval '1 hour',
	   merchanttrace = coalesce(i.merchanttrace, i.reference), integration_id = coalesce(i.integration_id, '1202')
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone IN ('263772000003', '263772000005');
CREATE TEMP TABLE traces AS SELECT * FROM payments.claim_reconciliation(50) WHERE url LIKE '%/interface/trace';
SELECT p.donor_phone, t.url, t.method,
	   regexp_replace(regexp_replace(t.body, 'WA-[0-9]{8}-[0-9]+', 'WA-DAY-N', 'g'), 'hash=[0-9A-F]{128}$', 'hash=HEX') AS body
  FROM traces t JOIN payments.reconciliation_checks c ON c.id = t.check_id JOIN payments.payments p ON p.id = c.payment_id
 ORDER BY 1;
SELECT payments.record_reconciliation(t.check_id, 200, NULL, CASE p.donor_phone
	WHEN '263772000003' THEN payments.paynow_request(jsonb_build_array(jsonb_build_array('reference', p.reference),
		'["paynowreference", "9005"]'::jsonb, '["amount", "5.00"]'::jsonb, '["status", "Paid"]'::jsonb,
		'["pollurl", "https://www.paynow.co.zw/Interface/CheckPayment/?guid=g5"]'::jsonb), :'key')
	ELSE payments.paynow_request('[["status", "NotFound"]]', :'key') END) AS outcome
  FROM traces t JOIN payments.reconciliation_checks c ON c.id = t.check_id JOIN payments.payments p ON p.id = c.payment_id
 ORDER BY p.donor_phone;
SELECT p.donor_phone, p.status, p.metadata ->> 'pollurl' AS pollurl, c.found_status, c.status_after
  FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
 WHERE c.request LIKE '%/interface/trace' ORDER BY 1;
SET CONSTRAINTS ALL IMMEDIATE;		-- the donor's message is queued at commit
SELECT * FROM pg_temp.replies('263772000005');
ROLLBACK;
-- a trace crossing Paynow's news: claimed, then a status update pays one (263772000003) and names
-- the other's transaction (Sent, 263772000005), then the answers.  The Paid the webhook applied
-- first is unchanged, not fixed; the NotFound fails nothing (an error: Paynow has spoken of the
-- payment since), and its donor is not told that no money was taken
BEGIN;
SET LOCAL payments.reconcile_after = '1min';
UPDATE payments.payments SET status_at = now() - interval '1 hour'
 WHERE donor_phone IN ('263772000003', '263772000005') AND provider LIKE 'pn\_%';
UPDATE payments.paynow_initiations i SET started_at = now() - interval '1 hour',
	   merchanttrace = coalesce(i.merchanttrace, i.reference), integration_id = coalesce(i.integration_id, '1202')
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone IN ('263772000003', '263772000005');
CREATE TEMP TABLE crossed AS SELECT * FROM payments.claim_reconciliation(50) WHERE url LIKE '%/interface/trace';
SELECT p.donor_phone, pg_temp.paynow(p.provider, ARRAY[['reference', p.reference],
	['paynowreference', CASE p.donor_phone WHEN '263772000003' THEN '9005' ELSE '9006' END],
	['status', CASE p.donor_phone WHEN '263772000003' THEN 'Paid' ELSE 'Sent' END],
	['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g' || right(p.donor_phone, 1)]]) AS webhook
  FROM payments.payments p WHERE p.donor_phone IN ('263772000003', '263772000005') AND p.provider LIKE 'pn\_%' ORDER BY 1;
SELECT p.donor_phone, payments.record_reconciliation(t.check_id, 200, NULL, CASE p.donor_phone
	WHEN '263772000003' THEN payments.paynow_request(jsonb_build_array(jsonb_build_array('reference', p.reference),
		'["paynowreference", "9005"]'::jsonb, '["status", "Paid"]'::jsonb,
		'["pollurl", "https://www.paynow.co.zw/Interface/CheckPayment/?guid=g3"]'::jsonb), :'key')
	ELSE payments.paynow_request('[["status", "NotFound"]]', :'key') END) AS outcome
  FROM crossed t JOIN payments.reconciliation_checks c ON c.id = t.check_id JOIN payments.payments p ON p.id = c.payment_id
 ORDER BY p.donor_phone;
SELECT p.donor_phone, p.status, c.found_status, c.status_after, c.error
  FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
 WHERE c.request LIKE '%/interface/trace' ORDER BY 1;
SET CONSTRAINTS ALL IMMEDIATE;		-- the donor's message is queued at commit
SELECT count(*) AS told_not_taken FROM pg_temp.replies('263772000005') r WHERE r LIKE '%did not go through%';
ROLLBACK;
-- Failed, then Cancelled (an allowed move): the donor was told it did not go through and that no
-- money was taken, and is not told again that it was cancelled
-- (each as its own commit would: the notices run at the constraints' check)
BEGIN;
SELECT pg_temp.paynow(p.provider, ARRAY[['reference', p.reference], ['paynowreference', '9007'], ['status', 'Failed']]) AS webhook
  FROM payments.payments p WHERE p.donor_phone = '263772000005' AND p.provider LIKE 'pn\_%';
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SELECT pg_temp.paynow(p.provider, ARRAY[['reference', p.reference], ['paynowreference', '9007'], ['status', 'Cancelled']]) AS webhook
  FROM payments.payments p WHERE p.donor_phone = '263772000005' AND p.provider LIKE 'pn\_%';
SET CONSTRAINTS ALL IMMEDIATE;
SELECT status FROM payments.payments WHERE donor_phone = '263772000005';
SELECT count(*) FILTER (WHERE r LIKE '%did not go through%') AS told_failed, count(*) FILTER (WHERE r LIKE '%was cancelled%') AS told_cancelled
  FROM pg_temp.replies('263772000005') r;
ROLLBACK;
-- not traced: an initiation sent less than reconcile_after ago (it may be in flight), one sent to
-- an integration since replaced (its NotFound would say nothing), one sent without a merchant trace
BEGIN;
SET LOCAL payments.reconcile_after = '1min';
UPDATE payments.payments SET status_at = now() - interval '1 hour' WHERE donor_phone IN ('263772000003', '263772000005');
UPDATE payments.paynow_initiations i SET started_at = now() - CASE p.donor_phone WHEN '263772000003' THEN interval '10 s' ELSE interval '1 hour' END,
	   merchanttrace = coalesce(i.merchanttrace, i.reference), integration_id = coalesce(i.integration_id, '1202')
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone IN ('263772000003', '263772000005');
UPDATE payments.providers SET settings = settings || '{"integration_id": "1299"}' WHERE name = 'pn_zwg';
SELECT count(*) AS traced FROM payments.claim_reconciliation(50) WHERE url LIKE '%/interface/trace';
SELECT p.donor_phone, c.outcome, c.error FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
 WHERE p.donor_phone IN ('263772000003', '263772000005') ORDER BY 1;
ROLLBACK;
BEGIN;
SET LOCAL payments.reconcile_after = '1min';
UPDATE payments.payments SET status_at = now() - interval '1 hour' WHERE donor_phone = '263772000005';
UPDATE payments.paynow_initiations i SET started_at = now() - interval '1 hour', merchanttrace = NULL
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone = '263772000005';
SELECT count(*) AS traced FROM payments.claim_reconciliation(50) WHERE url LIKE '%/interface/trace';
SELECT c.outcome, c.error FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
 WHERE p.donor_phone = '263772000005';
-- a NotFound answering a poll of the pollurl (not a trace) fails nothing
UPDATE payments.payments SET metadata = metadata || '{"pollurl": "http://127.0.0.1:9/Interface/CheckPayment/?guid=g9"}'
 WHERE donor_phone = '263772000005';
UPDATE payments.reconciliation_checks SET started_at = now() - interval '1 hour';
CREATE TEMP TABLE polls AS SELECT * FROM payments.claim_reconciliation(50) WHERE url LIKE '%guid=g9';
SELECT payments.record_reconciliation(check_id, 200, NULL, payments.paynow_request('[["status", "NotFound"]]', :'key'))
  FROM polls;
SELECT status FROM payments.payments WHERE donor_phone = '263772000005';
ROLLBACK;

-- the procedure commits: not inside a transaction block
BEGIN;
CALL payments.initiate_payments(5);
ROLLBACK;
CALL payments.initiate_payments(0);

-- commands: cancel at any step, help; a session that sat idle expires
SELECT pg_temp.say('263773000001', 'donate', 0, true);
SELECT pg_temp.say('263773000001', '7', 1);
SELECT pg_temp.say('263773000001', 'help', 2);
SELECT pg_temp.say('263773000001', 'Cancel', 3);
SELECT * FROM pg_temp.replies('263773000001');
SELECT pg_temp.session('263773000001');
SELECT pg_temp.say('263773000001', 'donate', 4, true);
UPDATE payments.chat_sessions SET last_activity_at = now() - interval '31 minutes' WHERE wa_id = '263773000001';
SELECT pg_temp.say('263773000001', '7', 5);
SELECT * FROM pg_temp.replies('263773000001');
SELECT pg_temp.session('263773000001');

-- out of order: a message older than the last one answered is not answered; a duplicate is not applied twice
SELECT pg_temp.say('263773000001', 'help', 4);
SELECT * FROM pg_temp.replies('263773000001');
-- another phone number of the same app: not this conversation
SELECT pg_temp.say('263773000001', 'help', 9, false, '999');
SELECT * FROM pg_temp.replies('263773000001');
-- a Flow's completion (nfm_reply) is not answered: the Flow started the payment and said so
SELECT pg_temp.say('263773000001', '', 10, content => '{"type": "interactive", "interactive": {"type": "nfm_reply",
	"nfm_reply": {"name": "flow", "body": "Sent", "response_json": "{\"flow_token\": \"t\"}"}}}');
SELECT * FROM pg_temp.replies('263773000001');
-- a delivery of two senders' messages: each conversation takes its own sender's profile name
SELECT pg_temp.deliver(jsonb_build_object(
			'messaging_product', 'whatsapp', 'metadata', jsonb_build_object('phone_number_id', '106540352242922'),
			'contacts', jsonb_build_array(
				jsonb_build_object('profile', jsonb_build_object('name', 'Chipo'), 'wa_id', '263773000011'),
				jsonb_build_object('profile', jsonb_build_object('name', 'Farai'), 'wa_id', '263773000012')),
			'messages', jsonb_build_array(
				jsonb_build_object('from', '263773000011', 'id', 'wamid.two1', 'timestamp', '1718000001', 'type', 'text',
								   'text', jsonb_build_object('body', 'Hi')),
				jsonb_build_object('from', '263773000012', 'id', 'wamid.two2', 'timestamp', '1718000001', 'type', 'text',
								   'text', jsonb_build_object('body', 'Hi'))))) AS two_senders;
SELECT wa_id, name FROM payments.chat_sessions WHERE wa_id IN ('263773000011', '263773000012') ORDER BY 1;
SELECT left(r, 20) AS greeting FROM pg_temp.replies('263773000012') r;
-- a Paynow provider whose currency changed since the chat was set up starts nothing: Paynow would
-- charge its own currency
BEGIN;
UPDATE payments.providers SET settings = settings || '{"currency": "USD"}' WHERE name = 'pn_zwg';
SELECT payments.chat_start_payment(NULL, 'chat', '263773000013', 'Rudo',
	payments.chat_settings((SELECT settings FROM payments.providers WHERE name = 'chat')),
	'{"amount": "100.00", "currency": "ZWG", "method": "ecocash", "phone": "0771234567", "purpose": "Medicines"}') AS started;
SELECT * FROM pg_temp.replies('263773000013');
ROLLBACK;
-- nobody can flood a stranger's phone with PIN prompts: a chat asks numbers other than its own
-- at most 5 times a day (its own, as often as it likes), and a number is asked by other chats at
-- most 3 times a day
CREATE FUNCTION pg_temp.ask(who text, phone text) RETURNS boolean LANGUAGE sql AS $$
	SELECT payments.chat_start_payment(NULL, 'chat', who, 'Rudo',
		payments.chat_settings((SELECT settings FROM payments.providers WHERE name = 'chat')),
		jsonb_build_object('amount', '1.00', 'currency', 'USD', 'method', 'ecocash', 'phone', phone, 'purpose', 'Medicines')) IS NOT NULL
$$;
BEGIN;
SELECT n, pg_temp.ask('263773000021', '07790000' || lpad(n::text, 2, '0')) AS started FROM generate_series(1, 6) n;
SELECT pg_temp.ask('263773000021', '0773000021') AS own_number;
SELECT replace(r, payments.chat_try_again(now() + interval '24 hours'), '<24 hours after the first>') AS r FROM pg_temp.replies('263773000021') r WHERE r LIKE 'Sorry%';
SELECT w, pg_temp.ask(w, '0779000099') AS started FROM unnest(ARRAY['263773000031', '263773000032', '263773000033', '263773000034']) w;
SELECT replace(r, payments.chat_try_again(now() + interval '24 hours'), '<24 hours after the first>') AS r FROM pg_temp.replies('263773000034') r;
SELECT pg_temp.ask('263779000099', '0779000099') AS its_owner;
ROLLBACK;
-- in any 24 hours, not since midnight (5 asked at 23:59 and 5 more at 00:01 would be 10 in two
-- minutes): a request leaves the count 24 hours after it was made, and the donor is told after
-- what time of the clinic's clock to try again (when the oldest request counted leaves)
BEGIN;
SELECT n, pg_temp.ask('263773000023', '07790003' || lpad(n::text, 2, '0')) AS started FROM generate_series(1, 5) n;
SELECT w, pg_temp.ask(w, '0779000097') AS started FROM unnest(ARRAY['263773000035', '263773000036', '263773000037']) w;
-- made 23 hours ago and after (the first 23 hours 59 minutes ago, before any midnight of today)
UPDATE payments.chat_donations d SET created_at = now() - interval '23 hours 59 minutes' + (i.id - m.first) * interval '1 hour'
  FROM payments.paynow_initiations i, (SELECT min(id) AS first FROM payments.paynow_initiations WHERE phone LIKE '07790003__') m
 WHERE d.payment_id = i.payment_id AND d.wa_id = '263773000023';
UPDATE payments.paynow_initiations i SET created_at = d.created_at
  FROM payments.chat_donations d WHERE d.payment_id = i.payment_id AND d.wa_id = '263773000023';
UPDATE payments.chat_donations SET created_at = now() - interval '23 hours 30 minutes' WHERE wa_id IN ('263773000035', '263773000036', '263773000037');
UPDATE payments.paynow_initiations SET created_at = now() - interval '23 hours 30 minutes' WHERE phone = '0779000097';
SELECT pg_temp.ask('263773000023', '0779000399') AS started_within_24h, pg_temp.ask('263773000038', '0779000097') AS asked_within_24h;
SELECT r = format('Sorry, this chat has asked other people''s numbers for payments 5 times in the last 24 hours. Please pay from your own number, or try again %s. Nothing was charged.',
				  payments.chat_try_again(now() + interval '1 minute')) AS told_when
  FROM pg_temp.replies('263773000023') r WHERE r LIKE 'Sorry%';
SELECT r = format('Sorry, 0779000097 has had 3 payment requests from other chats in the last 24 hours. Its owner can donate from their own WhatsApp, or you can try again %s. Nothing was charged.',
				  payments.chat_try_again(now() + interval '30 minutes')) AS told_when
  FROM pg_temp.replies('263773000038') r WHERE r LIKE 'Sorry%';
-- 24 hours and a second later, the oldest no longer counts
UPDATE payments.chat_donations SET created_at = created_at - interval '1 minute 1 second' WHERE wa_id LIKE '2637730000__' AND wa_id <> '263773000038';
UPDATE payments.paynow_initiations SET created_at = created_at - interval '1 minute 1 second' WHERE phone LIKE '07790003__' OR phone = '0779000097';
UPDATE payments.chat_donations SET created_at = now() - interval '24 hours 1 second' WHERE wa_id = '263773000035';
UPDATE payments.paynow_initiations i SET created_at = now() - interval '24 hours 1 second'
  FROM payments.chat_donations d WHERE d.payment_id = i.payment_id AND d.wa_id = '263773000035';
SELECT pg_temp.ask('263773000023', '0779000398') AS started_after_24h, pg_temp.ask('263773000039', '0779000097') AS asked_after_24h;
-- the time as a clock at the clinic shows it: the next whole minute, today or tomorrow there
SELECT payments.chat_try_again(now()) ~ '^after ([01][0-9]|2[0-3]):[0-5][0-9] (today|tomorrow)$' AS phrased,
	   payments.chat_try_again(payments.day_start(payments.receipt_day(now())) + interval '1 day' + interval '9 hours 4 minutes 30 seconds') AS next_morning;
ROLLBACK;
-- counted: the requests that may have prompted a phone (queued, sending, done, unconfirmed), not
-- those that prompted nobody (error: Paynow refused it or was never reached; skipped)
BEGIN;
SELECT n, pg_temp.ask('263773000022', '07790001' || lpad(n::text, 2, '0')) AS started FROM generate_series(1, 5) n;
UPDATE payments.paynow_initiations SET state = CASE WHEN phone < '0779000104' THEN 'error' ELSE 'skipped' END
 WHERE phone LIKE '07790001__';
SELECT n, pg_temp.ask('263773000022', '07790002' || lpad(n::text, 2, '0')) AS started FROM generate_series(1, 6) n;
SELECT w, pg_temp.ask(w, '0779000098') AS started FROM unnest(ARRAY['263773000041', '263773000042', '263773000043']) w;
UPDATE payments.paynow_initiations SET state = CASE WHEN id % 2 = 0 THEN 'error' ELSE 'skipped' END WHERE phone = '0779000098';
SELECT w, pg_temp.ask(w, '0779000098') AS started FROM unnest(ARRAY['263773000044', '263773000045', '263773000046']) w;
UPDATE payments.paynow_initiations i SET state = CASE d.wa_id WHEN '263773000044' THEN 'sending' WHEN '263773000045' THEN 'done'
	ELSE 'unconfirmed' END
  FROM payments.chat_donations d WHERE d.payment_id = i.payment_id AND i.phone = '0779000098' AND i.state = 'queued';
SELECT pg_temp.ask('263773000047', '0779000098') AS started;
ROLLBACK;

-- the rate limit: a bucket of rate_limit tokens; the first message over it is told once, the rest ignored
UPDATE payments.chat_sessions SET tokens = 1.5, tokens_at = now() WHERE wa_id = '263773000001';
SELECT pg_temp.say('263773000001', 'help', 10);
SELECT pg_temp.say('263773000001', 'help', 11);
SELECT pg_temp.say('263773000001', 'help', 12);
SELECT * FROM pg_temp.replies('263773000001');
SELECT limited_at IS NOT NULL AS limited, round(tokens::numeric, 1) AS tokens FROM payments.chat_sessions WHERE wa_id = '263773000001';
UPDATE payments.chat_sessions SET tokens_at = now() - interval '60 seconds' WHERE wa_id = '263773000001';
SELECT pg_temp.say('263773000001', 'help', 13);
SELECT count(*) AS replies FROM pg_temp.replies('263773000001');

-- volunteers: name, skills, availability; analysts see the number masked
SELECT pg_temp.say('263774000001', 'volunteer', 0, true);
SELECT pg_temp.say('263774000001', 'Rudo Chikore', 1);
SELECT pg_temp.say('263774000001', 'Nursing, driving', 2);
SELECT pg_temp.say('263774000001', 'Weekends', 3);
SELECT * FROM pg_temp.replies('263774000001');
SELECT name, phone, skills, availability FROM payments.volunteer_list;

-- amounts in chats with their currency's decimals: a report may hold any currency
SELECT payments.chat_amount(12.345, 'BHD') AS bhd, payments.chat_amount(5000, 'UGX') AS ugx,
	   payments.chat_amount(25.5, 'USD') AS usd, payments.chat_amount(7, NULL) AS unknown;

-- admin commands: only from admin_numbers; anyone else gets the donor menu
SELECT pg_temp.say('263775000009', '/stats', 0);
SELECT * FROM pg_temp.replies('263775000009');
-- (the totals of this test alone: the other tests' payments are set aside until ROLLBACK)
BEGIN;
DELETE FROM payments.payments WHERE provider NOT LIKE 'pn\_%';
-- (a method naming a comma and a quote, to show the CSV's quoting)
UPDATE payments.payments SET method = 'card, "visa"' WHERE method = 'card';
SELECT pg_temp.say('263770000001', '/admin', 0);
SELECT pg_temp.say('263770000001', '/stats', 1);
SELECT pg_temp.say('263770000001', '/report', 2);
SELECT * FROM pg_temp.replies('263770000001');
-- the report also as a CSV document, queued after the text: RFC 4180, CRLF line ends
SELECT regexp_replace(line, '(LP)-[0-9]{8}-[0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}', 'X', 'g') AS csv_line
  FROM payments.outbox o, string_to_table(rtrim(o.payload -> 'upload' ->> 'content', E'\r\n'), E'\r\n') AS line
 WHERE o.recipient = '263770000001' AND o.event_type = 'whatsapp.document';
SELECT right(payload -> 'upload' ->> 'content', 2) = E'\r\n' AS crlf_ends, payload -> 'message' ->> 'to' AS to,
	   payload -> 'message' -> 'document' ? 'id' AS has_media_id
  FROM payments.outbox WHERE recipient = '263770000001' AND event_type = 'whatsapp.document';
-- the document's first attempt is its upload (multipart to /media, the CSV as the file); a 2xx
-- without a media id is retried; with one, the id goes into the message, due at once, and the next
-- attempt sends it to /messages; a 400 on upload is final
UPDATE payments.outbox SET state = 'delivered' WHERE recipient = '263770000001' AND event_type <> 'whatsapp.document';
CREATE TEMP TABLE doc_claim AS SELECT * FROM payments.claim_outbox(200) c
 WHERE c.outbox_id = (SELECT id FROM payments.outbox WHERE event_type = 'whatsapp.document');
SELECT url, upload_filename ~ '^report-[0-9]{4}-[0-9]{2}-[0-9]{2}\.csv$' AS filename, upload_type, headers,
	   left(body, 20) AS body FROM doc_claim;
SELECT payments.record_delivery(attempt_id, 200, NULL, NULL, 5, 2, '{"ok": true}') FROM doc_claim;
SELECT state, last_status, last_error, attempts FROM payments.outbox WHERE event_type = 'whatsapp.document';
-- nor is an answer jsonb cannot hold (\u0000): retried, not an error of the run
UPDATE payments.outbox SET next_attempt_at = now() WHERE event_type = 'whatsapp.document';
DELETE FROM doc_claim;
INSERT INTO doc_claim SELECT * FROM payments.claim_outbox(200) c
 WHERE c.outbox_id = (SELECT id FROM payments.outbox WHERE event_type = 'whatsapp.document');
SELECT payments.record_delivery(attempt_id, 200, NULL, NULL, 5, 2, '{"id": "\u0000"}') FROM doc_claim;
SELECT state, last_status, last_error, attempts FROM payments.outbox WHERE event_type = 'whatsapp.document';
UPDATE payments.outbox SET next_attempt_at = now() WHERE event_type = 'whatsapp.document';
DELETE FROM doc_claim;
INSERT INTO doc_claim SELECT * FROM payments.claim_outbox(200) c
 WHERE c.outbox_id = (SELECT id FROM payments.outbox WHERE event_type = 'whatsapp.document');
SELECT url, upload_filename IS NOT NULL AS upload FROM doc_claim;
SELECT payments.record_delivery(attempt_id, 200, NULL, NULL, 5, 2, '{"id": "1234567890"}') FROM doc_claim;
SELECT state, last_status, last_error, attempts, next_attempt_at <= now() AS due FROM payments.outbox WHERE event_type = 'whatsapp.document';
DELETE FROM doc_claim;
INSERT INTO doc_claim SELECT * FROM payments.claim_outbox(200) c
 WHERE c.outbox_id = (SELECT id FROM payments.outbox WHERE event_type = 'whatsapp.document');
SELECT url, upload_filename, upload_type, regexp_replace(body, '[0-9]{4}-[0-9]{2}-[0-9]{2}', 'X', 'g') AS body FROM doc_claim;
SELECT payments.record_delivery(attempt_id, 200, NULL, NULL, 5, 2, '{"messages": [{"id": "wamid.DOC1"}]}') FROM doc_claim;
SELECT state, wamid, attempts FROM payments.outbox WHERE event_type = 'whatsapp.document';
UPDATE payments.outbox SET state = 'pending', wamid = NULL, payload = payload #- '{message,document,id}'
 WHERE event_type = 'whatsapp.document';
DELETE FROM doc_claim;
INSERT INTO doc_claim SELECT * FROM payments.claim_outbox(200) c
 WHERE c.outbox_id = (SELECT id FROM payments.outbox WHERE event_type = 'whatsapp.document');
SELECT payments.record_delivery(attempt_id, 400, NULL, NULL, 5, 2, '{"error": {"code": 100}}') FROM doc_claim;
SELECT state, last_status, last_error FROM payments.outbox WHERE event_type = 'whatsapp.document';
-- a method a spreadsheet would read as a formula stays text in the CSV
UPDATE payments.payments SET method = '=HYPERLINK("http://x.example")' WHERE method = 'onemoney';
SELECT regexp_replace(line, '(LP)-[0-9]{8}-[0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}', 'X', 'g') AS csv_line
  FROM string_to_table(payments.daily_report_csv((SELECT payments.receipt_day(max(coalesce(paid_at, created_at))) FROM payments.payments
												  WHERE method LIKE '=%')), E'\r\n') AS line
 WHERE line LIKE '%HYPERLINK%';
-- also after leading spaces, which some spreadsheets skip
UPDATE payments.payments SET method = '  +SUM(1)' WHERE method LIKE '=%';
SELECT regexp_replace(line, '(LP)-[0-9]{8}-[0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}', 'X', 'g') AS csv_line
  FROM string_to_table(payments.daily_report_csv((SELECT payments.receipt_day(max(coalesce(paid_at, created_at))) FROM payments.payments
												  WHERE method LIKE '%SUM%')), E'\r\n') AS line
 WHERE line LIKE '%SUM%';
-- a paid payment whose amount is not known: the report says the gross leaves it out
UPDATE payments.payments SET amount = NULL WHERE method LIKE '%SUM%' AND currency = 'USD' AND paid_at IS NOT NULL;
SELECT pg_temp.say('263770000001', '/report', 3);
SELECT r FROM pg_temp.replies('263770000001') AS r WHERE r LIKE 'Daily report%';
ROLLBACK;
DELETE FROM pg_temp.seen WHERE who = '263770000001';
SELECT pg_temp.say('263770000001', '/admin', 1);
SELECT pg_temp.say('263770000001', '/report 2026-02-30', 3);
SELECT pg_temp.say('263770000001', '/report Yesterday', 3);
SELECT pg_temp.say('263770000001', '/approve', 4);
SELECT pg_temp.say('263770000001', '/approve NOPE', 5);
-- (of yesterday's reports, the first line: just after midnight, the payments other test files
-- made minutes before are yesterday's)
SELECT CASE WHEN r LIKE 'Daily report %' THEN split_part(r, E'\n', 1) ELSE r END AS replies
  FROM pg_temp.replies('263770000001') AS r;
SELECT reference AS eco_ref FROM payments.payments WHERE donor_phone = '263772000003' \gset
-- (each case below is rolled back: the approvals after it are made on the payments as they were)
-- a command and its argument apart at any white space the chat trims: a tab, a line break, a
-- non-breaking space (U+00A0), around the argument too
BEGIN;
SELECT pg_temp.say('263770000001', E'/report\u00a0yesterday', 6);
SELECT pg_temp.say('263770000001', E'/approve\t' || lower(:'eco_ref') || E'\u00a0', 7);
SELECT pg_temp.say('263770000001', E'/Approve\n\n' || :'eco_ref', 8);
SELECT CASE WHEN r LIKE 'Daily report %' THEN split_part(r, E'\n', 1) ELSE r END AS replies
  FROM pg_temp.replies('263770000001') AS r;
ROLLBACK;
-- /approve of a payment Paynow reported failed (or cancelled) after its request was sent: no
-- prompt is pending, and the answer says so (a pending one's warning is below)
BEGIN;
SELECT pg_temp.paynow('pn_zwg', ARRAY[['reference', :'eco_ref'], ['paynowreference', '9003'], ['amount', '5.00'],
	['status', 'Failed'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g3']]);
SELECT p.status, i.state FROM payments.payments p JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE p.reference = :'eco_ref';
SELECT pg_temp.say('263770000001', '/approve ' || :'eco_ref', 6);
SELECT p.status, i.state FROM payments.payments p JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE p.reference = :'card_ref';
SELECT pg_temp.say('263770000001', '/approve ' || :'card_ref', 7);
SELECT * FROM pg_temp.replies('263770000001');
ROLLBACK;
-- an admin number written with the trunk zero after the country code matches the sender (read as
-- donors' typed numbers are); another country's "(0)" is dropped too; a number without its
-- country code is not one
SELECT a AS entry, payments.chat_admin_id(a) AS admin_id
  FROM unnest(ARRAY['+263 (0)77 000 0001', '2630770000001', E'00263\u00a077 000 0001', '+44 (0)20 7946 0000',
					'+1 (415) 555 0100', 'US.13491208655302741918', '0770000001']) AS a;
BEGIN;
UPDATE payments.providers SET settings = settings || '{"admin_numbers": ["+263 (0)77 000 0001", "2630770000002"]}' WHERE name = 'chat';
SELECT payments.chat_admin_numbers('chat') AS admins;
SELECT pg_temp.say('263770000001', '/admin', 6);
SELECT pg_temp.say('263770000002', '/admin', 6);
SELECT * FROM pg_temp.replies('263770000001');
SELECT * FROM pg_temp.replies('263770000002');
ROLLBACK;
-- a text split for WhatsApp: at line breaks, a line longer than a message where the limit falls,
-- each part after the first headed; an empty text is one part
SELECT k, length(part) AS length, left(part, 14) AS starts, right(part, 5) AS ends
  FROM unnest(payments.chat_text_parts(repeat('x', 9000) || E'\nend', E'(continued)\n')) WITH ORDINALITY AS t (part, k);
SELECT payments.chat_text_parts('', 'more') AS empty, payments.chat_text_parts(E'one\ntwo', 'more') AS short;
-- a report longer than WhatsApp's 4096 characters (another provider's paid collections in 8
-- currencies by 4 methods: 40 lines) is sent as several messages, each within the limit, split at
-- line breaks and queued in order, the CSV after them: no line is lost (ZWG, the clinic's own
-- currency, sorts last)
BEGIN;
DELETE FROM payments.payments WHERE provider NOT LIKE 'pn\_%';
SELECT payments.register_provider('wa_other', 'standard');
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, fee, method, status_at, paid_at)
SELECT 'wa_other', 'big_' || c || '_' || m, 'paid', 100, c, 1.5, m || ' (through the other provider)', now(), now()
  FROM unnest('{BWP,EUR,GBP,KES,UGX,USD,ZAR,ZWG}'::text[]) AS c, unnest('{ecocash,onemoney,card,bank transfer}'::text[]) AS m;
SELECT max(id) AS big_report_after FROM payments.outbox \gset
SELECT pg_temp.say('263770000001', '/report', 6);
SELECT length(r) <= 4096 AS fits, length(r) > 3000 AS long, split_part(r, E'\n', 1) AS first_line,
	   regexp_replace(regexp_replace(r, E'^.*\n', ''), '[A-Z]+-[0-9]{8}-[0-9]+', 'X', 'g') AS last_line
  FROM pg_temp.replies('263770000001') AS r;
-- every row of the report is a line of one of the messages, whole, in order
WITH m AS (SELECT o.id, o.payload -> 'text' ->> 'body' AS body FROM payments.outbox o
			WHERE o.recipient = '263770000001' AND o.event_type = 'whatsapp.text' AND o.id > :big_report_after),
	 l AS (SELECT m.id, t.n, t.line FROM m, string_to_table(m.body, E'\n') WITH ORDINALITY AS t (line, n)
			WHERE t.line NOT LIKE 'Daily report%')
SELECT count(DISTINCT l.id) AS messages, count(*) AS lines, bool_and(l.line ~ '; [0-9]+ new donors(; receipts .*)?$') AS none_cut,
	   string_agg(split_part(l.line, ':', 1), ', ' ORDER BY l.id, l.n)
		   = (SELECT string_agg(r.currency || ' ' || r.method, ', ' ORDER BY r.ordinality)
				FROM payments.daily_report(payments.receipt_day(now())) WITH ORDINALITY AS r) AS every_row_in_order
  FROM l;
ROLLBACK;
-- typed in lower case, it finds the payment all the same
SELECT pg_temp.say('263770000001', '/approve ' || lower(:'eco_ref'), 6);
SELECT pg_temp.say('263770000001', '/approve ' || :'eco_ref', 7);
SELECT * FROM pg_temp.replies('263770000001');
SELECT status, receipt_no IS NOT NULL AS receipt, metadata ->> 'approved_by' AS approved_by
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE reference = :'eco_ref';
SELECT * FROM pg_temp.replies('263772000003');
-- a receipt due more than 23 hours after the donor's last message goes as the provider's
-- receipt_template (Meta refuses free text outside its 24-hour window), its parameters on one line
-- each; within the window, or without a template, as text. (The thank-you is queued at commit:
-- each step commits.)
CREATE FUNCTION pg_temp.late_donation(donor text, name text, purpose text, last_message_ago interval) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	started bigint;
BEGIN
	UPDATE payments.chat_sessions SET last_message_at = now() - last_message_ago WHERE wa_id = donor;
	started := payments.chat_start_payment(NULL, 'chat', donor, name,
		(SELECT payments.chat_settings(settings) FROM payments.providers WHERE providers.name = 'chat'),
		jsonb_build_object('amount', '3.00', 'currency', 'USD', 'method', 'ecocash', 'phone', payments.chat_local_phone(donor), 'purpose', purpose));
	RETURN (SELECT reference FROM payments.payments WHERE id = started);
END
$$;
CREATE FUNCTION pg_temp.last_sent(donor text) RETURNS TABLE (event_type text, template text, language text, parameters text)
LANGUAGE sql AS $$
	SELECT event_type, payload -> 'template' ->> 'name', payload -> 'template' -> 'language' ->> 'code',
		   CASE WHEN payload ? 'template'
				THEN regexp_replace(jsonb_path_query_array(payload, '$.template.components[*].parameters[*].text')::text,
									'(WA|LP)-[0-9]{8}-[0-9]+', 'X', 'g')
				WHEN payload -> 'text' ->> 'body' ~ 'Your receipt number is' THEN 'a receipt as text' END
	  FROM payments.outbox WHERE recipient = donor ORDER BY id DESC LIMIT 1
$$;
SELECT wa_id AS late_donor FROM payments.chat_sessions WHERE provider = 'chat' AND wa_id = '263772000003' \gset
UPDATE payments.providers SET settings = settings || '{"receipt_template": {"name": "donation_receipt", "language": "en_US"}}'
 WHERE name = 'chat';
SELECT pg_temp.late_donation(:'late_donor', E'Tendai\n  Moyo ', E'Clinic\n\nroof\tfund', '25 hours') AS late_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'late_ref', 8);
SELECT * FROM pg_temp.last_sent(:'late_donor');
SELECT pg_temp.late_donation(:'late_donor', '   ', 'General fund', '25 hours') AS late_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'late_ref', 9);
SELECT * FROM pg_temp.last_sent(:'late_donor');
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'General fund', '2 hours') AS late_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'late_ref', 10);
SELECT * FROM pg_temp.last_sent(:'late_donor');
UPDATE payments.providers SET settings = settings - 'receipt_template' WHERE name = 'chat';
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'General fund', '25 hours') AS late_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'late_ref', 11);
SELECT * FROM pg_temp.last_sent(:'late_donor');
SELECT count(*) AS admin_replies FROM pg_temp.replies('263770000001');

-- statuses of sent messages: the wamid comes with the Graph API's answer; statuses move forward only,
-- whatever their order, and one that comes before the answer is recorded still applies
SELECT min(id) AS first_out, max(id) AS last_out FROM payments.outbox WHERE provider = 'chat' \gset
SELECT payments.chat_message_sent(:first_out, '{"messaging_product": "whatsapp", "messages": [{"id": "wamid.CHAT1"}]}');
SELECT payments.chat_message_sent(:last_out, 'not json');
SELECT payments.chat_message_sent(:last_out, '{"messages": [{"id": "\u0000"}]}');
CREATE FUNCTION pg_temp.status(wamid text, status text, at integer) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.deliver(jsonb_build_object(
			'metadata', jsonb_build_object('phone_number_id', '106540352242922'),
			'statuses', jsonb_build_array(jsonb_build_object('id', wamid, 'status', status,
				'timestamp', (1718000000 + at)::text, 'recipient_id', '263771234567'))))
$$;
SELECT pg_temp.status('wamid.CHAT1', 'read', 30);
SELECT pg_temp.status('wamid.CHAT1', 'delivered', 20);
SELECT pg_temp.status('wamid.CHAT1', 'sent', 10);
SELECT pg_temp.status('wamid.CHAT1', 'read', 30);
SELECT message_status, message_status_at = to_timestamp(1718000030) AS read_at FROM payments.outbox WHERE id = :first_out;
SELECT pg_temp.status('wamid.CHAT2', 'delivered', 40);
SELECT payments.chat_message_sent(:first_out + 1, '{"messages": [{"id": "wamid.CHAT2"}]}');
SELECT id - :first_out AS n, wamid, message_status FROM payments.outbox WHERE wamid IS NOT NULL ORDER BY id;
SELECT pg_temp.status('wamid.CHAT2', 'failed', 50);
SELECT message_status FROM payments.outbox WHERE wamid = 'wamid.CHAT2';

-- failed, cancelled and refunded notices are free text too: one due more than 23 hours after the
-- donor's last message (a refund days after the gift) goes as the notice_template, its text on one
-- line; without one it is not queued (Meta would drop it), and chat_donations.unsent_notice keeps
-- which it was. (Rolled back; notices are queued at commit, here at each statement.)
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
CREATE FUNCTION pg_temp.paid_then_refunded(ref text, n integer, last_message_ago interval) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', ref], ['paynowreference', (9300 + n)::text], ['amount', '3.00'],
		['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g3' || n]]);
	UPDATE payments.chat_sessions SET last_message_at = now() - last_message_ago WHERE wa_id = '263772000003';
	SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', ref], ['paynowreference', (9300 + n)::text], ['amount', '3.00'],
		['status', 'Refunded'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g3' || n]]);
$$;
SELECT count(*) >= 0 AS looked FROM pg_temp.replies(:'late_donor');
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'General fund', '1 hour') AS refund_ref \gset
SELECT pg_temp.paid_then_refunded(:'refund_ref', 1, '2 hours');
SELECT * FROM pg_temp.replies(:'late_donor');
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'General fund', '1 hour') AS refund_ref \gset
SELECT pg_temp.paid_then_refunded(:'refund_ref', 2, '3 days');
SELECT * FROM pg_temp.replies(:'late_donor');
UPDATE payments.providers SET settings = settings - 'notice_template' WHERE name = 'chat';
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'General fund', '1 hour') AS refund_ref \gset
SELECT pg_temp.paid_then_refunded(:'refund_ref', 3, '3 days');
SELECT * FROM pg_temp.replies(:'late_donor');
SELECT p.status, d.unsent_notice FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
 WHERE d.wa_id = :'late_donor' AND p.metadata ->> 'paynowreference' LIKE '930_' ORDER BY p.id;
ROLLBACK;

-- a thank-you sent as text that Meta reports failed with 131047 (Re-engagement message: it went
-- out past the 24 hours, after retries or behind other messages) is queued again as the
-- receipt_template, once; not for another error, nor without a template. A failed status that
-- came before the Graph API's answer was recorded does the same when it is.
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
UPDATE payments.providers SET settings = settings || '{"receipt_template": {"name": "donation_receipt", "language": "en_US"}}'
 WHERE name = 'chat';
CREATE FUNCTION pg_temp.receipt_failed(ref text, wamid text, code integer, at integer, answered boolean DEFAULT true) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	outcome	text;
	sent	bigint := (SELECT o.id FROM payments.outbox o JOIN payments.status_history h ON h.id = o.status_history_id
						JOIN payments.payments p ON p.id = h.payment_id WHERE p.reference = ref AND o.event_type = 'whatsapp.text');
BEGIN
	IF answered THEN
		PERFORM payments.chat_message_sent(sent, jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('id', wamid)))::text);
	END IF;
	outcome := pg_temp.deliver(jsonb_build_object('metadata', jsonb_build_object('phone_number_id', '106540352242922'),
		'statuses', jsonb_build_array(jsonb_build_object('id', wamid, 'status', 'failed', 'timestamp', (1718000000 + at)::text,
			'recipient_id', '263772000003', 'errors', jsonb_build_array(jsonb_build_object('code', code, 'title', 'Re-engagement message'))))));
	IF NOT answered THEN
		PERFORM payments.chat_message_sent(sent, jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('id', wamid)))::text);
	END IF;
	RETURN outcome;
END
$$;
SELECT count(*) >= 0 AS looked FROM pg_temp.replies(:'late_donor');
SELECT max(id) AS resend_mark FROM payments.outbox \gset
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'General fund', '2 hours') AS resend_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'resend_ref', 12);
SELECT * FROM pg_temp.last_sent(:'late_donor');
SELECT pg_temp.receipt_failed(:'resend_ref', 'wamid.RCPT1', 131047, 60);
SELECT * FROM pg_temp.last_sent(:'late_donor');
SELECT payments.chat_resend_notice(o) AS again FROM payments.outbox o WHERE o.wamid = 'wamid.RCPT1';
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '2 hours') AS resend_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'resend_ref', 13);
SELECT pg_temp.receipt_failed(:'resend_ref', 'wamid.RCPT2', 131047, 61, answered => false);
SELECT * FROM pg_temp.last_sent(:'late_donor');
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '2 hours') AS resend_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'resend_ref', 14);
SELECT pg_temp.receipt_failed(:'resend_ref', 'wamid.RCPT3', 131026, 62);
SELECT * FROM pg_temp.last_sent(:'late_donor');
UPDATE payments.providers SET settings = settings - 'receipt_template' WHERE name = 'chat';
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '2 hours') AS resend_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'resend_ref', 15);
SELECT pg_temp.receipt_failed(:'resend_ref', 'wamid.RCPT4', 131047, 63);
SELECT * FROM pg_temp.replies(:'late_donor');
-- (without a receipt_template that thank-you is recorded unsent, for the admins' /unsent and /stats)
SELECT unsent_notice FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id WHERE p.reference = :'resend_ref';
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('263770000001');
SELECT pg_temp.say('263770000001', '/unsent', 16);
SELECT pg_temp.say('263770000001', '/stats', 17);
SELECT said FROM pg_temp.replies('263770000001') AS said WHERE said !~ '^Today';
SELECT substring(o.payload -> 'text' ->> 'body' FROM E'\n(Notices not sent[^\n]*)$') AS stats_line
  FROM payments.outbox o WHERE o.recipient = '263770000001' ORDER BY o.id DESC LIMIT 1;
UPDATE payments.payments p SET status_at = now() - interval '31 days' WHERE p.reference = :'resend_ref';
SELECT pg_temp.say('263770000001', '/unsent', 18);
SELECT * FROM pg_temp.replies('263770000001');
-- (the 20 newest are listed, and how many there are)
SELECT count(pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '2 hours')) FROM generate_series(1, 8);
UPDATE payments.chat_donations d SET unsent_notice = 'failed' FROM payments.payments p
 WHERE p.id = d.payment_id AND d.provider = 'chat' AND p.status_at >= now() - interval '30 days';
SELECT count(*) > 20 AS more_than_20 FROM payments.chat_donations WHERE unsent_notice IS NOT NULL;
SELECT pg_temp.say('263770000001', '/unsent', 19);
SELECT array_length(string_to_array(r, E'\n'), 1) AS lines, r ~ E'\n[(]the 20 newest of [0-9]+[)]$' AS says_how_many
  FROM pg_temp.replies('263770000001') AS r;
SELECT o.wamid, o.event_type, o.message_status, o.payload -> 'template' ->> 'name' AS template
  FROM payments.outbox o JOIN payments.status_history h ON h.id = o.status_history_id
  JOIN payments.chat_donations d ON d.payment_id = h.payment_id
 WHERE d.wa_id = :'late_donor' AND h.to_status = 'paid' AND o.id > :resend_mark ORDER BY o.id;
ROLLBACK;

-- the window is opened by any message of the donor's (a Flow's completion is kept in last_seen_at
-- only): a notice inside it goes as text, not recorded unsent.  A text notice Meta reports failed
-- with 131047 is sent again as the notice_template (a refund's), or recorded unsent without one; a
-- thank-you is not sent again as a receipt once the payment was refunded
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
UPDATE payments.providers SET settings = settings - 'notice_template' || '{"receipt_template": {"name": "donation_receipt", "language": "en_US"}}'
 WHERE name = 'chat';
CREATE FUNCTION pg_temp.text_failed(ref text, notice text, wamid text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	sent	bigint := (SELECT o.id FROM payments.outbox o JOIN payments.status_history h ON h.id = o.status_history_id
						JOIN payments.payments p ON p.id = h.payment_id
					   WHERE p.reference = ref AND h.to_status = notice AND o.event_type = 'whatsapp.text');
BEGIN
	PERFORM payments.chat_message_sent(sent, jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('id', wamid)))::text);
	RETURN pg_temp.deliver(jsonb_build_object('metadata', jsonb_build_object('phone_number_id', '106540352242922'),
		'statuses', jsonb_build_array(jsonb_build_object('id', wamid, 'status', 'failed', 'timestamp', '1718000100',
			'recipient_id', '263772000003', 'errors', jsonb_build_array(jsonb_build_object('code', 131047))))));
END
$$;
SELECT count(*) >= 0 AS looked FROM pg_temp.replies(:'late_donor');
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '1 hour') AS flow_ref \gset
UPDATE payments.chat_sessions SET last_message_at = NULL, last_seen_at = now() - interval '1 minute' WHERE wa_id = :'late_donor';
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'flow_ref'], ['paynowreference', '9401'], ['amount', '3.00'],
	['status', 'Failed'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g401']]);
SELECT * FROM pg_temp.last_sent(:'late_donor');
SELECT unsent_notice FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id WHERE p.reference = :'flow_ref';
-- (that failed notice failing with 131047 once an admin approved the payment, the donor thanked:
-- nothing stale is sent again, nor recorded unsent)
UPDATE payments.providers SET settings = settings || '{"notice_template": {"name": "donation_notice", "language": "en_US"}}' WHERE name = 'chat';
SELECT pg_temp.say('263770000001', '/approve ' || :'flow_ref', 20);
SELECT count(*) >= 0 AS looked FROM pg_temp.replies(:'late_donor');
SELECT pg_temp.text_failed(:'flow_ref', 'failed', 'wamid.STALE1');
SELECT * FROM pg_temp.replies(:'late_donor');
SELECT p.status, d.unsent_notice FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id WHERE p.reference = :'flow_ref';
-- (a failed notice failing so once the payment was cancelled is sent again: no cancelled notice
-- follows a failed one, the donor having been told it did not go through)
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '1 hour') AS gone_ref \gset
UPDATE payments.chat_sessions SET last_message_at = now() - interval '1 minute' WHERE wa_id = :'late_donor';
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'gone_ref'], ['paynowreference', '9404'], ['amount', '3.00'],
	['status', 'Failed'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g404']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'gone_ref'], ['paynowreference', '9404'], ['amount', '3.00'],
	['status', 'Cancelled'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g404']]);
SELECT count(*) >= 0 AS looked FROM pg_temp.replies(:'late_donor');
SELECT pg_temp.text_failed(:'gone_ref', 'failed', 'wamid.GONE1');
SELECT * FROM pg_temp.replies(:'late_donor');
-- (Paynow's Failed and Cancelled in one transaction, as a batch stores them: the donor is told it
-- did not go through; the cancelled notice follows no failed one)
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '1 hour') AS gone_ref \gset
UPDATE payments.chat_sessions SET last_message_at = now() - interval '1 minute' WHERE wa_id = :'late_donor';
SELECT count(*) >= 0 AS looked FROM pg_temp.replies(:'late_donor');
SET CONSTRAINTS ALL DEFERRED;
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'gone_ref'], ['paynowreference', '9405'], ['amount', '3.00'],
	['status', 'Failed'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g405']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'gone_ref'], ['paynowreference', '9405'], ['amount', '3.00'],
	['status', 'Cancelled'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g405']]);
SET CONSTRAINTS ALL IMMEDIATE;
SELECT * FROM pg_temp.replies(:'late_donor');
UPDATE payments.providers SET settings = settings - 'notice_template' WHERE name = 'chat';
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '2 hours') AS undone_ref \gset
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'undone_ref'], ['paynowreference', '9402'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g402']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'undone_ref'], ['paynowreference', '9402'], ['amount', '3.00'],
	['status', 'Refunded'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g402']]);
SELECT pg_temp.text_failed(:'undone_ref', 'paid', 'wamid.UNDONE1');
SELECT pg_temp.text_failed(:'undone_ref', 'refunded', 'wamid.UNDONE2');
SELECT o.event_type, h.to_status, o.payload -> 'template' ->> 'name' AS template
  FROM payments.outbox o JOIN payments.status_history h ON h.id = o.status_history_id
  JOIN payments.payments p ON p.id = h.payment_id WHERE p.reference = :'undone_ref' ORDER BY o.id;
SELECT unsent_notice FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id WHERE p.reference = :'undone_ref';
UPDATE payments.providers SET settings = settings || '{"notice_template": {"name": "donation_notice", "language": "en_US"}}' WHERE name = 'chat';
SELECT pg_temp.late_donation(:'late_donor', 'Tendai', 'Medicines', '2 hours') AS undone_ref \gset
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'undone_ref'], ['paynowreference', '9403'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g403']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'undone_ref'], ['paynowreference', '9403'], ['amount', '3.00'],
	['status', 'Refunded'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g403']]);
SELECT pg_temp.text_failed(:'undone_ref', 'refunded', 'wamid.UNDONE3');
SELECT * FROM pg_temp.last_sent(:'late_donor');
ROLLBACK;

-- a WhatsApp message is claimed for the Graph API with the bearer token, not signed like a webhook
SELECT DISTINCT url, secret, headers, body::jsonb ->> 'messaging_product' AS product
  FROM payments.claim_outbox(200) WHERE url LIKE '%/messages';
SELECT endpoint, pending > 0 AS pending FROM payments.outbox_backlog WHERE endpoint = 'whatsapp:chat';

-- the results of a run are recorded once its whole batch is sent: every item claimed with a slow
-- endpoint is leased for that endpoint's time (the message's own 30 s ran out while it waited, and
-- it was sent again)
BEGIN;
SELECT payments.add_endpoint('slow-crm', 'https://crm.example/slow', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
							 timeout_ms => 60000) IS NOT NULL AS added;
INSERT INTO payments.outbox (endpoint_id, event_type, payload)
SELECT id, 'payment.paid', '{}' FROM payments.endpoints WHERE name = 'slow-crm';
SELECT pg_temp.say('263772000094', 'help', 1);
CREATE TEMP TABLE lease_claim AS SELECT * FROM payments.claim_outbox(200);
SELECT count(*) AS claimed, count(*) FILTER (WHERE c.url LIKE '%/messages') AS messages,
	   date_trunc('second', min(o.next_attempt_at - a.started_at)) AS shortest_lease,
	   date_trunc('second', max(o.next_attempt_at - a.started_at)) AS longest_lease
  FROM lease_claim c JOIN payments.outbox o ON o.id = c.outbox_id JOIN payments.outbox_attempts a ON a.id = c.attempt_id;
ROLLBACK;

-- Meta's rate limits are answered HTTP 400 like refusals; only their codes are retried
SELECT r AS response, payments.graph_throttled(r) AS throttled
  FROM (VALUES ('{"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}}'),
			   ('{"error": {"code": 131056, "error_subcode": 2494055}}'),
			   ('{"error": {"code": 131026, "message": "Message Undeliverable"}}'),
			   ('{"error": {"code": "4"}}'),
			   ('{"error": {"code": "soon"}}'),
			   ('{"error": {"code": 99999999999}}'),
			   ('{"error": {"message": "(#131056) pair rate limit hit", "code": 1310'),
			   ('{"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429, "error_data": {"details": "Cloud API message throughput has been reac'),
			   ('[]'), ('')) AS x (r);

-- amounts per currency (ZWG 480 is about USD 18): the amount comes first, checked against the
-- widest range, then again against the currency's once chosen
BEGIN;
UPDATE payments.providers SET settings = settings || '{"min_amount": {"ZWG": 20}, "max_amount": {"USD": 480, "ZWG": 13000}}'
 WHERE name = 'chat';
SELECT payments.chat_settings_problem(settings) FROM payments.providers WHERE name = 'chat';
SELECT pg_temp.say('263772000090', 'donate', 1, true);
SELECT pg_temp.say('263772000090', '13000.01', 2);
SELECT pg_temp.say('263772000090', '1000', 3);
SELECT pg_temp.say('263772000090', 'cur_USD', 4, true);
SELECT pg_temp.say('263772000090', '1000', 5);
SELECT pg_temp.say('263772000090', '300', 6);
SELECT * FROM pg_temp.replies('263772000090');
SELECT pg_temp.say('263772000091', 'donate', 1, true);
SELECT pg_temp.say('263772000091', '10', 2);
SELECT pg_temp.say('263772000091', 'cur_ZWG', 3, true);
SELECT pg_temp.say('263772000091', '2500', 4);
SELECT * FROM pg_temp.replies('263772000091');
-- the currency changed with the amount kept: checked again against the new one
SELECT pg_temp.say('263772000091', 'pay_ecocash', 5, true);
SELECT pg_temp.say('263772000091', 'phone_same', 6, true);
SELECT pg_temp.say('263772000091', 'purpose_1', 7, true);
SELECT pg_temp.say('263772000091', 'edit', 8, true);
SELECT pg_temp.say('263772000091', 'edit_currency', 9, true);
SELECT pg_temp.say('263772000091', 'cur_USD', 10, true);
SELECT * FROM pg_temp.replies('263772000091');
-- the examples in the messages are amounts the currency allows
SELECT pg_temp.say('263772000092', 'donate', 1, true);
SELECT pg_temp.say('263772000092', '5', 2);
SELECT pg_temp.say('263772000092', 'cur_ZWG', 3, true);
SELECT pg_temp.say('263772000092', '7', 4);
SELECT pg_temp.say('263772000092', 'usd 30', 5);
SELECT * FROM pg_temp.replies('263772000092');
SELECT low, high, currency, payments.chat_amount_examples(low, high, currency)
  FROM (VALUES (1, 480, 'USD'), (20, 13000, 'ZWG'), (600.00, 13000, 'ZWG'), (1, 20, 'USD'), (1, 8, 'USD'),
			   (0.25, 0.90, 'USD'), (1000, 5000000, 'UGX'), (1, 480, NULL)) AS v (low, high, currency);
SELECT wa_id, state, draft ->> 'amount' AS amount, draft ->> 'currency' AS currency FROM payments.chat_sessions
 WHERE wa_id IN ('263772000090', '263772000091') ORDER BY wa_id;
ROLLBACK;

-- a reaction is not answered; a sticker or a picture gets a word, and the conversation stays where it was
SELECT pg_temp.say('263772000092', 'donate', 1, true);
SELECT pg_temp.say('263772000092', NULL, 2, false, '106540352242922',
				   '{"type": "reaction", "reaction": {"message_id": "wamid.out1", "emoji": "\ud83d\udc4d"}}');
SELECT pg_temp.say('263772000092', NULL, 3, false, '106540352242922',
				   '{"type": "sticker", "sticker": {"id": "1130273158150592", "mime_type": "image/webp", "animated": false}}');
SELECT pg_temp.say('263772000092', '25', 4);
SELECT * FROM pg_temp.replies('263772000092');
SELECT pg_temp.say('263772000093', NULL, 1, false, '106540352242922',
				   '{"type": "image", "image": {"id": "2754859441498128", "mime_type": "image/jpeg"}}');
SELECT * FROM pg_temp.replies('263772000093');
-- a number also used in the WhatsApp Business app (coexistence) is sent the donor's deletions and
-- edits: a deletion is not answered; an edit is not read, and the donor is asked to send it again.
-- The donor's answer to a request for permission to call is not answered either
SELECT pg_temp.say('263772000094', 'donate', 1, true);
SELECT pg_temp.say('263772000094', NULL, 2, false, '106540352242922',
				   '{"type": "revoke", "revoke": {"original_message_id": "wamid.in1"}}');
SELECT pg_temp.say('263772000094', NULL, 2, false, '106540352242922',
				   '{"type": "interactive", "interactive": {"type": "call_permission_reply", "call_permission_reply": {"response": "accept", "is_permanent": false, "expiration_timestamp": 1746645600, "response_source": "user_action"}}}');
SELECT pg_temp.say('263772000094', NULL, 3, false, '106540352242922',
				   '{"type": "edit", "edit": {"original_message_id": "wamid.in1", "message": {"type": "text", "text": {"body": "25"}}}}');
SELECT pg_temp.session('263772000094');
SELECT * FROM pg_temp.replies('263772000094');
-- an interactive reply of a type the chat does not read (one Meta adds later) gets the word that
-- text and buttons are read, as a picture does, not an answer to an empty message
SELECT pg_temp.say('263772000087', 'donate', 1, true);
SELECT pg_temp.say('263772000087', NULL, 2, false, '106540352242922',
				   '{"type": "interactive", "interactive": {"type": "some_new_reply", "some_new_reply": {"response": "x"}}}');
SELECT pg_temp.session('263772000087');
SELECT * FROM pg_temp.replies('263772000087');
-- an album is a message per picture: told once a minute at most, not once per picture
BEGIN;
UPDATE payments.chat_sessions SET media_notice_at = now() - interval '61 seconds' WHERE wa_id = '263772000093';
SELECT pg_temp.say('263772000093', NULL, 5, false, '106540352242922',
				   '{"type": "image", "image": {"id": "2754859441498129", "mime_type": "image/jpeg"}}');
SELECT pg_temp.say('263772000093', NULL, 5, false, '106540352242922',
				   '{"type": "image", "image": {"id": "2754859441498130", "mime_type": "image/jpeg"}}');
SELECT * FROM pg_temp.replies('263772000093');
SELECT pg_temp.say('263772000093', NULL, 6, false, '106540352242922',
				   '{"type": "image", "image": {"id": "2754859441498131", "mime_type": "image/jpeg"}}');
SELECT * FROM pg_temp.replies('263772000093');
ROLLBACK;
-- WhatsApp's own notice that the donor changed number, and a message in a group, are not
-- answered; request_welcome (the chat opened for the first time) gets the menu
SELECT pg_temp.say('263772000088', NULL, 1, false, '106540352242922',
				   '{"type": "system", "system": {"body": "User A changed from 263772000088 to 263772000095", "wa_id": "263772000095", "type": "user_changed_number"}}');
SELECT pg_temp.say('263772000088', NULL, 2, false, '106540352242922',
				   '{"type": "text", "text": {"body": "hi"}, "group_id": "120363041234567890"}');
SELECT * FROM pg_temp.replies('263772000088');
SELECT pg_temp.say('263772000088', NULL, 3, false, '106540352242922', '{"type": "request_welcome"}');
SELECT * FROM pg_temp.replies('263772000088');

-- Paynow's Paid and the donor's *check* in one transaction (one shim batch): the receipt is
-- taken for the answer, not left to the commit, so the answer names it (and the commit's
-- thank-you the same number); so does /approve of a payment paid in the same transaction
SELECT pg_temp.late_donation('263772000096', 'Nyasha', 'Medicines', '1 hour') AS same_ref \gset
SELECT pg_temp.late_donation('263772000097', 'Kuda', 'Medicines', '1 hour') AS approved_ref \gset
SELECT max(id) AS before_out FROM payments.outbox \gset
BEGIN;
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'same_ref'], ['paynowreference', '9096'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g96']]);
SELECT pg_temp.say('263772000096', 'check', 30);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'approved_ref'], ['paynowreference', '9097'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g97']]);
SELECT pg_temp.say('263770000001', '/approve ' || :'approved_ref', 30);
SELECT o.recipient, o.payload -> 'text' ->> 'body' IS NOT NULL AS has_body,
	   o.payload -> 'text' ->> 'body' LIKE '%' || r.receipt_no || '%' AS names_receipt
  FROM payments.outbox o JOIN payments.payments p ON p.reference IN (:'same_ref', :'approved_ref')
							AND o.recipient IN (p.donor_phone, '263770000001')
  LEFT JOIN payments.receipts r ON r.payment_id = p.id
 WHERE o.id > :before_out AND o.event_type = 'whatsapp.text'
   AND (o.recipient = p.donor_phone OR o.payload -> 'text' ->> 'body' LIKE '%' || p.reference || '%')
 ORDER BY o.id;
COMMIT;
SELECT * FROM pg_temp.replies('263772000096');
SELECT r FROM pg_temp.replies('263770000001') r;
SELECT count(*) AS receipts, count(DISTINCT r.receipt_no) AS numbers,
	   bool_and((SELECT count(*) FROM payments.outbox o WHERE o.recipient = p.donor_phone
				  AND o.payload -> 'text' ->> 'body' LIKE '%' || r.receipt_no || '%') = 2) AS check_and_thanks_agree
  FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id WHERE p.reference = :'same_ref';
-- no text message is queued without a body
SELECT payments.chat_text('263772000096', NULL) -> 'text' ->> 'body' IS NOT NULL AS text_body,
	   payments.chat_choices('263772000096', NULL, '[["a", "A"]]') -> 'interactive' -> 'body' ->> 'text' IS NOT NULL AS choices_body;

-- a currency typed with the amount is kept ($ and USD are USD, ZWG and ZiG are ZWG): with none
-- chosen yet it goes into the draft (its question is not asked) and its range applies; another
-- than the draft's, or one the chat does not take, is refused and the amount asked again
BEGIN;
UPDATE payments.providers SET settings = settings || '{"min_amount": {"ZWG": 20}, "max_amount": {"USD": 480, "ZWG": 13000}}'
 WHERE name = 'chat';
SELECT pg_temp.say('263772000080', 'donate', 1, true);
SELECT pg_temp.say('263772000080', 'ZWG 10', 2);
SELECT pg_temp.say('263772000080', 'ZiG 100', 3);
SELECT pg_temp.say('263772000080', 'cur_USD', 4, true);
SELECT * FROM pg_temp.replies('263772000080');
SELECT pg_temp.session('263772000080');
SELECT pg_temp.say('263772000081', 'donate', 1, true);
SELECT pg_temp.say('263772000081', '$ 500', 2);
SELECT pg_temp.say('263772000081', 'usd5', 3);
SELECT * FROM pg_temp.replies('263772000081');
SELECT pg_temp.session('263772000081');
-- a draft in ZWG (Edit, Amount): "$5" is not 5 ZWG
SELECT pg_temp.say('263772000082', 'donate', 1, true);
SELECT pg_temp.say('263772000082', '100', 2);
SELECT pg_temp.say('263772000082', 'cur_ZWG', 3, true);
SELECT pg_temp.say('263772000082', 'pay_ecocash', 4, true);
SELECT pg_temp.say('263772000082', 'phone_same', 5, true);
SELECT pg_temp.say('263772000082', 'purpose_1', 6, true);
SELECT pg_temp.say('263772000082', 'edit', 7, true);
SELECT pg_temp.say('263772000082', 'edit_amount', 8, true);
SELECT * FROM pg_temp.replies('263772000082') OFFSET 7;
SELECT pg_temp.say('263772000082', '$5', 9);
SELECT pg_temp.say('263772000082', 'USD 5', 10);
SELECT pg_temp.session('263772000082');
SELECT pg_temp.say('263772000082', 'zwg 50', 11);
SELECT * FROM pg_temp.replies('263772000082');
SELECT pg_temp.session('263772000082');
-- nothing to change after all: from Edit back to the summary, by its row or typed
SELECT pg_temp.say('263772000089', 'donate', 1, true);
SELECT pg_temp.say('263772000089', '100', 2);
SELECT pg_temp.say('263772000089', 'cur_ZWG', 3, true);
SELECT pg_temp.say('263772000089', 'pay_ecocash', 4, true);
SELECT pg_temp.say('263772000089', 'phone_same', 5, true);
SELECT pg_temp.say('263772000089', 'purpose_1', 6, true);
SELECT pg_temp.say('263772000089', 'edit', 7, true);
SELECT pg_temp.say('263772000089', 'edit_back', 8, true);
SELECT pg_temp.session('263772000089');
SELECT pg_temp.say('263772000089', 'edit', 9, true);
SELECT pg_temp.say('263772000089', 'Back', 10);
SELECT * FROM pg_temp.replies('263772000089') OFFSET 6;
SELECT pg_temp.session('263772000089');
-- a chat taking USD only: "ZWG 100" is not USD 100
UPDATE payments.providers SET settings = settings || '{"paynow_providers": {"USD": "pn_usd"}}' WHERE name = 'chat';
SELECT pg_temp.say('263772000083', 'donate', 1, true);
SELECT pg_temp.say('263772000083', 'ZWG 100', 2);
SELECT pg_temp.session('263772000083');
SELECT pg_temp.say('263772000083', '$100', 3);
SELECT * FROM pg_temp.replies('263772000083');
SELECT pg_temp.session('263772000083');
ROLLBACK;

-- the reference is dated like receipts, /stats and /report: the day in the receipt time zone
-- (here one where it is another day than in UTC, whatever the hour)
BEGIN;
SELECT set_config('payments.receipt_timezone',
				  CASE WHEN extract(hour FROM now() AT TIME ZONE 'UTC') < 12 THEN 'Etc/GMT+12' ELSE 'Pacific/Kiritimati' END,
				  true) IS NOT NULL AS zone_set;
SELECT pg_temp.late_donation('263772000084', 'Tatenda', 'Medicines', '1 hour') AS zone_ref \gset
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'zone_ref'], ['paynowreference', '9084'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g84']]);
SET CONSTRAINTS ALL IMMEDIATE;		-- the receipt is taken at commit
SELECT split_part(p.reference, '-', 2) = to_char(payments.receipt_day(now()), 'YYYYMMDD') AS receipt_time_zone_day,
	   split_part(p.reference, '-', 2) = split_part(r.receipt_no, '-', 2) AS receipts_day,
	   split_part(p.reference, '-', 2) <> to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD') AS not_utc_day
  FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id WHERE p.reference = :'zone_ref';
ROLLBACK;

-- a web checkout (card, TeleCash) whose reply was lost (an HTTP error, a reply not verified, a
-- request interrupted) cannot be paid: its only link was in that reply.  It ends as an error, the
-- problem kept, its payment failed; the donor is told as for any failure and may give again.  A
-- mobile one (EcoCash) whose reply was lost stays pending, unconfirmed: the phone may still prompt
SELECT pg_temp.donate('263772000101', 100, 'card');
SELECT pg_temp.donate('263772000102', 100, 'telecash');
SELECT pg_temp.donate('263772000103', 100, 'ecocash');
SELECT pg_temp.donate('263772000104', 100, 'card');
SELECT count(*) AS before FROM unnest(ARRAY['263772000101', '263772000102', '263772000103', '263772000104']) w, pg_temp.replies(w);
UPDATE payments.paynow_initiations i SET state = 'sending', started_at = now() - interval '10 minutes'
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone = '263772000104';
TRUNCATE pg_temp.claimed;
INSERT INTO pg_temp.claimed SELECT * FROM payments.claim_initiations(100);
SELECT p.donor_phone, i.method, payments.record_initiation(c.initiation_id, CASE i.method WHEN 'card' THEN 502 ELSE 200 END,
	CASE i.method WHEN 'ecocash' THEN 'Operation timed out after 30000 milliseconds with 0 bytes received' END,
	CASE i.method WHEN 'card' THEN 'Bad Gateway'
		WHEN 'telecash' THEN payments.paynow_request('[["status", "Ok"], ["browserurl", "https://www.paynow.co.zw/Payment/ConfirmPayment/9530"],
			["pollurl", "https://www.paynow.co.zw/Interface/CheckPayment/?guid=g30"]]', '00000000-0000-0000-0000-000000000000') END) AS recorded
  FROM pg_temp.claimed c JOIN payments.paynow_initiations i ON i.id = c.initiation_id JOIN payments.payments p ON p.id = i.payment_id
 WHERE p.donor_phone IN ('263772000101', '263772000102', '263772000103') ORDER BY 1;
SELECT p.donor_phone, i.method, i.state, i.error, p.status
  FROM payments.paynow_initiations i JOIN payments.payments p ON p.id = i.payment_id
 WHERE p.donor_phone IN ('263772000101', '263772000102', '263772000103', '263772000104') ORDER BY 1;
SELECT w, r FROM unnest(ARRAY['263772000101', '263772000102', '263772000103', '263772000104']) WITH ORDINALITY AS u (w, n),
	pg_temp.replies(w) WITH ORDINALITY AS x (r, m) ORDER BY n, m;
SELECT pg_temp.say('263772000101', 'check', 200);
SELECT pg_temp.say('263772000101', 'donate', 201, true);
SELECT * FROM pg_temp.replies('263772000101');
-- an unconfirmed request (the EcoCash one) an hour old has expired as a confirmed one has (a PIN
-- prompt lasts minutes, and Paynow may leave the transaction at Sent for ever): *check* says so,
-- and *donate* is not held back by it; within the hour it is (rolled back)
BEGIN;
SELECT pg_temp.say('263772000103', 'check', 300);
-- (a request that waited in the queue is live from when it left: the donation 70 minutes old, its
-- request confirmed a minute ago)
UPDATE payments.paynow_initiations i SET state = 'done', finished_at = now() - interval '1 minute', started_at = now() - interval '1 minute'
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone = '263772000103';
UPDATE payments.chat_donations d SET created_at = now() - interval '70 minutes'
  FROM payments.payments p WHERE p.id = d.payment_id AND p.donor_phone = '263772000103';
SELECT pg_temp.say('263772000103', 'check', 301);
UPDATE payments.paynow_initiations i SET state = 'unconfirmed'
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone = '263772000103';
-- (from when it was sent: one given up as lost a minute ago, sent 62 minutes ago, has expired)
UPDATE payments.paynow_initiations i SET finished_at = now() - interval '1 minute', started_at = now() - interval '62 minutes'
  FROM payments.payments p WHERE p.id = i.payment_id AND p.donor_phone = '263772000103';
UPDATE payments.chat_donations d SET created_at = now() - interval '62 minutes'
  FROM payments.payments p WHERE p.id = d.payment_id AND p.donor_phone = '263772000103';
SELECT pg_temp.say('263772000103', 'check', 302);
SELECT pg_temp.say('263772000103', 'donate', 303, true);
SELECT * FROM pg_temp.replies('263772000103');
ROLLBACK;
-- a number that never gave asks to check: told so
SELECT pg_temp.say('263779900001', 'check', 1, true);
SELECT * FROM pg_temp.replies('263779900001');

-- donations switched off (paynow_providers emptied) while a donor is at the currency question:
-- tapping a currency says donations cannot be made and goes back to the menu, not a list
-- without rows, which the Graph API refuses; the method question alike when methods is emptied
-- (written directly: register_provider refuses it)
BEGIN;
SELECT pg_temp.say('263772000110', 'donate', 1, true);
SELECT pg_temp.say('263772000110', '10', 2);
UPDATE payments.providers SET settings = settings || '{"paynow_providers": {}}' WHERE name = 'chat';
SELECT pg_temp.say('263772000110', 'cur_USD', 3, true);
SELECT pg_temp.say('263772000110', 'ZWG', 4);
SELECT * FROM pg_temp.replies('263772000110');
SELECT pg_temp.session('263772000110');
UPDATE payments.providers SET settings = settings || '{"paynow_providers": {"USD": "pn_usd", "ZWG": "pn_zwg"}}' WHERE name = 'chat';
SELECT pg_temp.say('263772000111', 'donate', 1, true);
SELECT pg_temp.say('263772000111', '10', 2);
SELECT pg_temp.say('263772000111', 'cur_USD', 3, true);
UPDATE payments.providers SET settings = settings || '{"methods": []}' WHERE name = 'chat';
SELECT pg_temp.say('263772000111', 'pay_card', 4, true);
SELECT * FROM pg_temp.replies('263772000111');
SELECT pg_temp.session('263772000111');
SELECT count(*) AS choices_without_rows FROM payments.outbox
 WHERE recipient IN ('263772000110', '263772000111') AND payload ? 'interactive'
   AND coalesce(payload #> '{interactive,action,buttons}', payload #> '{interactive,action,sections,0,rows}', 'null') = 'null';
ROLLBACK;

-- a confirmed draft is checked again against the settings of now: a 400 USD card donation whose
-- summary was sent before max_amount became 100 and methods EcoCash only starts nothing, and the
-- donation goes on from the first detail that no longer fits; a currency no longer offered is
-- asked again with its amount (the one currency left is the draft's)
BEGIN;
SELECT pg_temp.say('263772000120', 'donate', 1, true);
SELECT pg_temp.say('263772000120', '400', 2);
SELECT pg_temp.say('263772000120', 'cur_USD', 3, true);
SELECT pg_temp.say('263772000120', 'pay_card', 4, true);
SELECT pg_temp.say('263772000120', 'purpose_1', 5, true);
SELECT count(*) AS before FROM pg_temp.replies('263772000120');
UPDATE payments.providers SET settings = settings || '{"max_amount": 100, "methods": ["ecocash"]}' WHERE name = 'chat';
SELECT pg_temp.say('263772000120', 'yes', 6);
SELECT * FROM pg_temp.replies('263772000120');
SELECT pg_temp.session('263772000120');
SELECT count(*) AS payments FROM payments.chat_donations WHERE wa_id = '263772000120';
SELECT pg_temp.say('263772000120', '100', 7);
SELECT pg_temp.say('263772000120', 'pay_ecocash', 8, true);
SELECT pg_temp.say('263772000120', 'phone_same', 9, true);
SELECT pg_temp.say('263772000120', 'yes', 10);
SELECT * FROM pg_temp.replies('263772000120');
SELECT p.amount, p.currency, p.method, i.phone FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE d.wa_id = '263772000120';
ROLLBACK;
BEGIN;
SELECT pg_temp.say('263772000121', 'donate', 1, true);
SELECT pg_temp.say('263772000121', '50', 2);
SELECT pg_temp.say('263772000121', 'cur_ZWG', 3, true);
SELECT pg_temp.say('263772000121', 'pay_ecocash', 4, true);
SELECT pg_temp.say('263772000121', 'phone_same', 5, true);
SELECT pg_temp.say('263772000121', 'purpose_1', 6, true);
SELECT count(*) AS before FROM pg_temp.replies('263772000121');
UPDATE payments.providers SET settings = settings || '{"paynow_providers": {"USD": "pn_usd"}}' WHERE name = 'chat';
SELECT pg_temp.say('263772000121', payments.chat_confirm_id(draft), 7, true) FROM payments.chat_sessions WHERE wa_id = '263772000121';
SELECT * FROM pg_temp.replies('263772000121');
SELECT pg_temp.session('263772000121');
SELECT count(*) AS payments FROM payments.chat_donations WHERE wa_id = '263772000121';
ROLLBACK;

-- what donors type, as they type it: a line break after it (the Enter key), a tab or a
-- non-breaking space around it, at every step
SELECT pg_temp.say('263772000130', E'donate\n', 1);
SELECT pg_temp.say('263772000130', E'10\n', 2);
SELECT pg_temp.say('263772000130', E'\u00a0zwg\t', 3);
SELECT pg_temp.say('263772000130', E'EcoCash\n', 4);
SELECT pg_temp.say('263772000130', E' 0771234567\u00a0\n', 5);
SELECT pg_temp.say('263772000130', E'Medicines\r\n', 6);
SELECT * FROM pg_temp.replies('263772000130');
SELECT pg_temp.session('263772000130');
SELECT pg_temp.say('263772000131', E'\u00a0Help\r\n', 1);
SELECT left(r, 20) AS help FROM pg_temp.replies('263772000131') r;

-- the currency question takes the names the amount takes: $ and USD, ZWG and ZiG, any case
SELECT pg_temp.say(w, 'donate', 1, true), pg_temp.say(w, '25', 2), pg_temp.say(w, typed, 3), pg_temp.session(w)
  FROM (VALUES ('263772000132', '$'), ('263772000133', 'ZiG'), ('263772000134', 'Usd'), ('263772000135', 'zig'),
			   ('263772000149', 'US $')) AS t (w, typed);

-- a number in any of its usual forms: with the 0 after 263, 00 for +, without the first 0,
-- dots, dashes, parentheses, non-breaking spaces
SELECT pg_temp.say('263772000136', 'donate', 1, true);
SELECT pg_temp.say('263772000136', '25', 2);
SELECT pg_temp.say('263772000136', 'cur_USD', 3, true);
SELECT pg_temp.say('263772000136', 'pay_ecocash', 4, true);
SELECT pg_temp.say('263772000136', '+263 (0)77 123 4567', 5);
SELECT pg_temp.session('263772000136');
SELECT pg_temp.say('263772000137', 'donate', 1, true);
SELECT pg_temp.say('263772000137', '25', 2);
SELECT pg_temp.say('263772000137', 'cur_USD', 3, true);
SELECT pg_temp.say('263772000137', 'pay_onemoney', 4, true);
SELECT pg_temp.say('263772000137', E'00263\u00a071\u00a0234\u00a05678', 5);
SELECT pg_temp.session('263772000137');
SELECT replace(typed, E'\u00a0', '<nbsp>') AS typed, payments.chat_local_phone(typed)
  FROM unnest(ARRAY['0771234567', '771234567', '263771234567', '2630771234567', '00263771234567', '002630771234567',
					'+263 (0)77 123 4567', E'077\u00a0123\u00a04567', '077.123.4567', '(077) 123-4567', '+263-71-234-5678',
					'0071234567', '0263771234567', '07712345678', '+27 82 123 4567', '', NULL]) AS typed;

-- a second donation while one may still be paid (its request unconfirmed: a bad reply hash) is
-- not started: the donor is told about the waiting one (amount, reference, where it stands) and
-- offered to check it; the steps typed after are not a donation.  Only *Donate anyway* starts one
SELECT pg_temp.donate('263776000001', 0, 'ecocash');
UPDATE payments.paynow_initiations i SET state = 'sending', started_at = now()
  FROM payments.chat_donations d WHERE d.payment_id = i.payment_id AND d.wa_id = '263776000001';
SELECT payments.record_initiation(i.id, 200, NULL,
	payments.paynow_request('[["status", "Ok"], ["pollurl", "https://www.paynow.co.zw/Interface/CheckPayment/?guid=g140"]]',
							'00000000-0000-0000-0000-000000000000'))
  FROM payments.paynow_initiations i JOIN payments.chat_donations d ON d.payment_id = i.payment_id WHERE d.wa_id = '263776000001';
SELECT count(*) AS before FROM pg_temp.replies('263776000001');
SELECT pg_temp.say('263776000001', 'donate', 10);
SELECT pg_temp.say('263776000001', '$20', 11);
SELECT pg_temp.say('263776000001', 'pay_ecocash', 12, true);
SELECT pg_temp.say('263776000001', 'phone_same', 13, true);
SELECT pg_temp.say('263776000001', 'purpose_1', 14, true);
SELECT pg_temp.say('263776000001', 'yes', 15);
SELECT * FROM pg_temp.replies('263776000001');
SELECT count(*) AS payments FROM payments.chat_donations WHERE wa_id = '263776000001';
SELECT pg_temp.say('263776000001', 'check', 16, true);
SELECT pg_temp.say('263776000001', 'donate_anyway_' || max(payment_id), 17, true) FROM payments.chat_donations
 WHERE wa_id = '263776000001';
SELECT pg_temp.say('263776000001', '$20', 18);
SELECT pg_temp.say('263776000001', 'pay_ecocash', 19, true);
SELECT pg_temp.say('263776000001', 'phone_same', 20, true);
SELECT pg_temp.say('263776000001', 'purpose_1', 21, true);
SELECT pg_temp.say('263776000001', 'yes', 22);
SELECT * FROM pg_temp.replies('263776000001');
SELECT p.amount, p.currency, i.state FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE d.wa_id = '263776000001' ORDER BY p.id;
-- typed too; and a donation started while the donor drafted (a Flow, another phone) stops the
-- confirmation: the summary comes again, its Confirm the choice to give again
BEGIN;
SELECT pg_temp.say('263776000002', 'donate', 1, true);
SELECT pg_temp.say('263776000002', '10', 2);
SELECT pg_temp.say('263776000002', 'cur_USD', 3, true);
SELECT pg_temp.say('263776000002', 'pay_card', 4, true);
SELECT pg_temp.say('263776000002', 'purpose_1', 5, true);
SELECT payments.chat_confirm_id(draft) AS old_confirm FROM payments.chat_sessions WHERE wa_id = '263776000002' \gset
SELECT pg_temp.ask('263776000002', '0776000002') AS flow_started;
SELECT count(*) AS before FROM pg_temp.replies('263776000002');
SELECT pg_temp.say('263776000002', :'old_confirm', 6, true);
SELECT * FROM pg_temp.replies('263776000002');
SELECT count(*) AS payments FROM payments.chat_donations WHERE wa_id = '263776000002';
SELECT pg_temp.say('263776000002', :'old_confirm', 7, true);
SELECT pg_temp.say('263776000002', payments.chat_confirm_id(draft), 8, true) FROM payments.chat_sessions WHERE wa_id = '263776000002';
SELECT count(*) AS payments FROM payments.chat_donations WHERE wa_id = '263776000002';
-- (typed, it answers a notice: the one just confirmed was not warned of, and is first)
SELECT pg_temp.say('263776000002', 'Donate anyway', 9);
SELECT pg_temp.session('263776000002');
SELECT pg_temp.say('263776000002', 'Donate anyway', 10);
SELECT pg_temp.session('263776000002');
ROLLBACK;
-- a prompt that went out more than an hour ago (initiation done) is no longer live: no word;
-- within the hour it is
BEGIN;
SELECT pg_temp.ask('263776000003', '0776000003') AS started, pg_temp.ask('263776000004', '0776000004') AS started;
UPDATE payments.paynow_initiations i SET state = 'done'
  FROM payments.chat_donations d WHERE d.payment_id = i.payment_id AND d.wa_id IN ('263776000003', '263776000004');
UPDATE payments.chat_donations SET created_at = now() - interval '2 hours' WHERE wa_id = '263776000003';
SELECT (SELECT count(*) FROM pg_temp.replies('263776000003')) + (SELECT count(*) FROM pg_temp.replies('263776000004')) AS before;
SELECT pg_temp.say('263776000003', 'donate', 1, true);
SELECT pg_temp.say('263776000004', 'donate', 1, true);
SELECT * FROM pg_temp.replies('263776000003');
SELECT * FROM pg_temp.replies('263776000004');
-- and check says the same: the one donate no longer waits for has expired (Paynow may leave it
-- pending for ever), the other is to be waited for
SELECT pg_temp.say('263776000003', 'check', 2);
SELECT pg_temp.say('263776000004', 'check', 2);
SELECT * FROM pg_temp.replies('263776000003');
SELECT * FROM pg_temp.replies('263776000004');
ROLLBACK;

-- Edit, Currency: the amount was given in the old currency, so a new one asks for it again
-- (100 ZWG is not 100 USD); the same currency again keeps it
SELECT pg_temp.say(w, 'donate', 1, true), pg_temp.say(w, '100', 2), pg_temp.say(w, 'cur_ZWG', 3, true),
	   pg_temp.say(w, 'pay_card', 4, true), pg_temp.say(w, 'purpose_1', 5, true), pg_temp.say(w, 'edit', 6, true),
	   pg_temp.say(w, 'edit_currency', 7, true), pg_temp.say(w, typed, 8, true), pg_temp.session(w)
  FROM (VALUES ('263776000010', 'cur_USD'), ('263776000011', 'cur_ZWG')) AS t (w, typed);
SELECT * FROM pg_temp.replies('263776000010') OFFSET 5;
SELECT pg_temp.say('263776000010', '15', 9);
SELECT pg_temp.session('263776000010');

-- amounts as people write them: thousands in groups of three after a comma or a space, the currency
-- after the amount as before it; cents after a comma are not guessed
SELECT replace(typed, E'\u00a0', '<nbsp>') AS typed, t.*
  FROM unnest(ARRAY['10', '25.50', '$10', 'USD 10', '10 USD', '10.50usd', '10 dollars', '10$', 'US$ 5', 'US $10', '10 US $', 'ZiG 100', '100 zig',
					'1,000', '1 000', E'1\u00a0000', '1,000.50', '12,345,678', '10 000 ZWG', '10,5', '10,50', 'usd 10,5',
					'1,00', '1,0000', '1 00', '1,000 000', 'usd 10 usd', 'ten dollars', '', NULL]) AS typed,
	   payments.chat_typed_amount(typed) t;
BEGIN;
UPDATE payments.providers SET settings = settings || '{"min_amount": {"ZWG": 20}, "max_amount": {"USD": 480, "ZWG": 13000}}'
 WHERE name = 'chat';
SELECT pg_temp.say('263776000020', 'donate', 1, true);
SELECT pg_temp.say('263776000020', '10,5', 2);
SELECT pg_temp.say('263776000020', '1,000', 3);
SELECT * FROM pg_temp.replies('263776000020');
SELECT w, pg_temp.say(w, 'donate', 1, true), pg_temp.say(w, typed, 2), pg_temp.session(w)
  FROM (VALUES ('263776000021', '10.50usd'), ('263776000022', '10 dollars'), ('263776000023', '1 000 ZWG'),
			   ('263776000024', '10 USD')) AS t (w, typed);
-- a chat taking one currency names it
UPDATE payments.providers SET settings = settings || '{"paynow_providers": {"ZWG": "pn_zwg"}}' WHERE name = 'chat';
SELECT pg_temp.say('263776000025', 'donate', 1, true);
SELECT pg_temp.say('263776000025', 'lots', 2);
SELECT * FROM pg_temp.replies('263776000025');
ROLLBACK;

-- the purpose: the number of one in the list is that purpose; a number otherwise (a phone number)
-- is not a purpose; a purpose over 100 characters is refused with the reason
SELECT pg_temp.say('263776000030', 'donate', 1, true), pg_temp.say('263776000030', '10', 2),
	   pg_temp.say('263776000030', 'cur_USD', 3, true), pg_temp.say('263776000030', 'pay_card', 4, true);
SELECT pg_temp.say('263776000030', '2', 5);
SELECT pg_temp.session('263776000030');
SELECT pg_temp.say('263776000031', 'donate', 1, true), pg_temp.say('263776000031', '10', 2),
	   pg_temp.say('263776000031', 'cur_USD', 3, true), pg_temp.say('263776000031', 'pay_card', 4, true);
SELECT count(*) AS before FROM pg_temp.replies('263776000031');
SELECT pg_temp.say('263776000031', '0731234567', 5);
SELECT pg_temp.say('263776000031', '3', 6);
SELECT pg_temp.say('263776000031', repeat('Clinic roof ', 9), 7);
SELECT pg_temp.say('263776000031', '1.', 8);
SELECT * FROM pg_temp.replies('263776000031');
SELECT pg_temp.session('263776000031');

-- a button tapped where the amount or the number is to be typed: asked to type it
SELECT pg_temp.say('263776000032', 'donate', 1, true);
SELECT pg_temp.say('263776000032', 'purpose_1', 2, true);
SELECT pg_temp.say('263776000032', '10', 3);
SELECT pg_temp.say('263776000032', 'cur_USD', 4, true);
SELECT pg_temp.say('263776000032', 'pay_onemoney', 5, true);
SELECT pg_temp.say('263776000032', 'pay_onemoney', 6, true);
SELECT * FROM pg_temp.replies('263776000032');
SELECT pg_temp.session('263776000032');

-- Paynow's Paid after an admin's /approve of the same donation: it may have been collected twice.
-- Flagged on the payment, and the admin who approved it told, once
SELECT pg_temp.late_donation('263776000040', 'Rufaro', 'Medicines', '1 hour') AS twice_ref \gset
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('263770000001');
SELECT pg_temp.say('263770000001', '/approve ' || :'twice_ref', 40);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'twice_ref'], ['paynowreference', '9140'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g140']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'twice_ref'], ['paynowreference', '9140'], ['amount', '3.00'],
	['status', 'Delivered'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g140']]);
SELECT status, (metadata -> 'paynow_paid_after_approval') - 'reported_at' AS flag
  FROM payments.payments WHERE reference = :'twice_ref';
SELECT * FROM pg_temp.replies('263770000001');
-- ... also for another amount than the one approved: the admin is told what Paynow took, which
-- the payment keeps apart (payments.paynow_amount_checked)
SELECT pg_temp.late_donation('263776000041', 'Tariro', 'Medicines', '1 hour') AS other_ref \gset
SELECT pg_temp.say('263770000001', '/approve ' || :'other_ref', 41);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'other_ref'], ['paynowreference', '9141'], ['amount', '2.50'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g141']]);
SELECT status, amount, metadata -> 'paynow_paid_after_approval' ->> 'amount' AS paynow_took,
	   metadata -> 'paynow_amount_mismatch' ->> 'reported' AS reported
  FROM payments.payments WHERE reference = :'other_ref';
SELECT * FROM pg_temp.replies('263770000001');
-- a donation Paynow reported disputed before any news of payment, approved by an admin: the
-- approval is no Paynow news (dated by arrival), it is made now: paid, receipt, donor thanked
SELECT pg_temp.late_donation('263776000042', 'Farai', 'Medicines', '1 hour') AS disputed_ref \gset
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'disputed_ref'], ['paynowreference', '9142'], ['amount', '3.00'],
	['status', 'Disputed'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g142']]);
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('263770000001');
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('263776000042');
SELECT pg_temp.say('263770000001', '/approve ' || :'disputed_ref', 42);
SELECT p.status, p.paid_at IS NOT NULL AS paid_at, r.receipt_no IS NOT NULL AS has_receipt,
	   (SELECT string_agg(h.from_status || '>' || h.to_status, ' ' ORDER BY h.id) FROM payments.status_history h
		 WHERE h.payment_id = p.id) AS moves
  FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE p.reference = :'disputed_ref';
SELECT regexp_replace(r, 'LP-[0-9]{8}-[0-9]{6}', 'LP-...', 'g') FROM pg_temp.replies('263770000001') r;
SELECT regexp_replace(r, 'LP-[0-9]{8}-[0-9]{6}', 'LP-...', 'g') FROM pg_temp.replies('263776000042') r;
-- a donation paid, then disputed, then approved by an admin (the dispute settled by hand): paid
-- again, its receipt kept; the donor, thanked when it was paid, is not thanked a second time
SELECT pg_temp.late_donation('263776000044', 'Nyasha', 'Medicines', '1 hour') AS settled_ref \gset
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'settled_ref'], ['paynowreference', '9144'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g144']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'settled_ref'], ['paynowreference', '9144'], ['amount', '3.00'],
	['status', 'Disputed'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g144']]);
SELECT pg_temp.say('263770000001', '/approve ' || :'settled_ref', 43);
SELECT p.status, (SELECT string_agg(h.from_status || '>' || h.to_status, ' ' ORDER BY h.id) FROM payments.status_history h
		 WHERE h.payment_id = p.id) AS moves
  FROM payments.payments p WHERE p.reference = :'settled_ref';
SELECT regexp_replace(r, 'LP-[0-9]{8}-[0-9]{6}', 'LP-...', 'g') FROM pg_temp.replies('263770000001') r;
SELECT regexp_replace(r, '(LP|WA)-[0-9]{8}-[0-9]+', 'X', 'g') FROM pg_temp.replies('263776000044') r;
-- ... but one whose payment was disputed in the transaction that paid it (no thank-you at that
-- commit: it had moved on) is thanked when an admin settles it
SELECT pg_temp.late_donation('263776000045', 'Rudo', 'Medicines', '1 hour') AS batch_ref \gset
BEGIN;
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'batch_ref'], ['paynowreference', '9145'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g145']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'batch_ref'], ['paynowreference', '9145'], ['amount', '3.00'],
	['status', 'Disputed'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g145']]);
COMMIT;
SELECT count(*) AS told_before_approval FROM pg_temp.replies('263776000045') r WHERE r LIKE 'Thank you, Rudo!%';
SELECT pg_temp.say('263770000001', '/approve ' || :'batch_ref', 44);
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('263770000001');
SELECT regexp_replace(r, '(LP|WA)-[0-9]{8}-[0-9]+', 'X', 'g') FROM pg_temp.replies('263776000045') r;
-- Paynow reporting another amount than the donation's: the admins are told, once
SELECT pg_temp.late_donation('263776000043', 'Chipo', 'Medicines', '1 hour') AS short_ref \gset
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'short_ref'], ['paynowreference', '9143'], ['amount', '0.50'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g143']]);
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'short_ref'], ['paynowreference', '9143'], ['amount', '0.50'],
	['status', 'Delivered'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g143']]);
SELECT status, amount, metadata -> 'paynow_amount_mismatch' ->> 'known' AS known FROM payments.payments WHERE reference = :'short_ref';
SELECT * FROM pg_temp.replies('263770000001');
-- a donation's update sent to another Paynow provider with the same integration key makes no
-- payment there (it made one of its own, counted twice in the reports)
SELECT payments.register_provider('pn_twin', 'paynow', '{"currency": "USD"}');
SELECT payments.add_secret('pn_twin', '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977') IS NOT NULL AS twin_key;
SELECT pg_temp.late_donation('263776000042', 'Nyasha', 'Medicines', '1 hour') AS twin_ref \gset
SELECT pg_temp.paynow('pn_twin', ARRAY[['reference', :'twin_ref'], ['paynowreference', '9142'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g142']]);
SELECT count(*) AS twin_payments FROM payments.payments WHERE provider = 'pn_twin';
DELETE FROM payments.events WHERE provider = 'pn_twin';
DELETE FROM payments.providers WHERE name = 'pn_twin';

-- cancel right after Confirm: the Paynow request is only queued (initiate_payments sends it on its
-- next pass) and has prompted nobody, so the payment is cancelled through the state machine (by
-- the message's event), its initiation skipped and never sent, and the donor told nothing was
-- charged, with no prompt to decline.  check says so; donate is not held back by it
SELECT pg_temp.donate('263776000050', 0, 'ecocash');
SELECT count(*) AS before FROM pg_temp.replies('263776000050');
SELECT pg_temp.say('263776000050', 'cancel', 7);
SELECT * FROM pg_temp.replies('263776000050');
SELECT pg_temp.session('263776000050');
SELECT p.status, i.state, i.error, p.metadata ->> 'cancelled_by' AS cancelled_by
  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE d.wa_id = '263776000050';
SELECT h.from_status, h.to_status, e.payload -> 'message' -> 'text' ->> 'body' AS by_message
  FROM payments.chat_donations d JOIN payments.status_history h ON h.payment_id = d.payment_id
  LEFT JOIN payments.events e ON e.id = h.event_id WHERE d.wa_id = '263776000050' ORDER BY h.id;
SELECT count(*) AS claimed FROM payments.claim_initiations(10) c
  JOIN payments.paynow_initiations i ON i.id = c.initiation_id JOIN payments.chat_donations d ON d.payment_id = i.payment_id
 WHERE d.wa_id = '263776000050';
SELECT pg_temp.say('263776000050', 'check', 8);
SELECT pg_temp.say('263776000050', 'donate', 9);
SELECT * FROM pg_temp.replies('263776000050');

-- WhatsApp usernames (2026): a user who adopts one may have their phone number withheld from
-- webhooks; every message carries their business-scoped user id (BSUID: messages[].from_user_id,
-- contacts[].user_id), which the Graph API takes as "recipient" where a phone number is "to".
-- say_as(phone or NULL, BSUID or NULL, text or button id, seconds): as say, the phone number
-- (messages[].from, contacts[].wa_id) left out when NULL
-- (in_message false: the BSUID only in the contact, contacts[].user_id)
CREATE FUNCTION pg_temp.say_as(phone text, bsuid text, said text, at integer, button boolean DEFAULT false,
							   in_message boolean DEFAULT true)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	msg		jsonb := jsonb_strip_nulls(jsonb_build_object('from', phone, 'from_user_id', CASE WHEN in_message THEN bsuid END,
										'id', 'wamid.in' || nextval('pg_temp.wamid'), 'timestamp', (1718000000 + at)::text));
BEGIN
	msg := msg || CASE WHEN button
		THEN jsonb_build_object('type', 'interactive', 'interactive', jsonb_build_object('type', 'button_reply',
								'button_reply', jsonb_build_object('id', said, 'title', said)))
		ELSE jsonb_build_object('type', 'text', 'text', jsonb_build_object('body', said)) END;
	RETURN pg_temp.deliver(jsonb_build_object(
			'messaging_product', 'whatsapp', 'metadata', jsonb_build_object('phone_number_id', '106540352242922'),
			'contacts', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
				'profile', jsonb_build_object('name', 'Rudo', 'username', 'rudo.m'), 'wa_id', phone, 'user_id', bsuid))),
			'messages', jsonb_build_array(msg)));
END
$$;
UPDATE payments.providers SET settings = settings || '{"paynow_providers": {"USD": "pn_usd"}, "min_amount": 1, "max_amount": 480,
	"methods": ["ecocash", "onemoney", "telecash", "card"], "admin_numbers": ["+263 77 000 0001", "ZW.9000000000000000001"]}'
 WHERE name = 'chat';
SELECT payments.chat_settings_problem(settings) AS problem FROM payments.providers WHERE name = 'chat';
-- what is a WhatsApp user id: a phone number (as E.164 digits), else a BSUID exactly as Meta writes
-- it (country code in upper case, a period, up to 128 letters and digits; a parent BSUID with ENT)
SELECT CASE WHEN length(i) > 40 THEN left(i, 8) || '... (' || length(i) || ' characters)' ELSE i END AS id,
	   CASE WHEN length(i) > 40 THEN payments.whatsapp_user_id(i) = i ELSE NULL END AS long_kept,
	   left(payments.whatsapp_user_id(i), 40) AS user_id, left(payments.whatsapp_bsuid(i), 40) AS bsuid,
	   payments.whatsapp_recipient_field(i) AS sent_as
  FROM unnest(ARRAY['+263 77 123 4567', 'US.13491208655302741918', 'US.ENT.11815799212886844830', 'BR.abcXYZ09',
					'us.13491208655302741918', 'US13491208655302741918', 'USA.1349', 'US.', 'US.ENT.', 'US.1349-1208',
					'US.1349 1208', ' US.1349', 'US.' || repeat('7', 128), 'US.' || repeat('7', 129), '', NULL]) AS i;

-- a donor known by BSUID alone: answered, messages sent with "recipient" (no "to"); the number to
-- pay from is typed (there is none to offer), checked, and edited from the summary
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'Hi', 0);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');
SELECT wa_id, user_id, name, state FROM payments.chat_sessions WHERE user_id = 'ZW.1502576394655843';
SELECT recipient, event_type, payload ->> 'recipient' AS recipient_field, payload ? 'to' AS has_to,
	   payload ->> 'recipient_type' AS recipient_type
  FROM payments.outbox WHERE recipient = 'ZW.1502576394655843' ORDER BY id;
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'donate', 1, true);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', '5', 2);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'pay_ecocash', 3, true);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');
-- (an old "Use my number" button, or a number not on the network, is refused)
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'phone_same', 4, true);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', '0712345678', 5);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', '+263 78 900 0001', 6);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'purpose_1', 7, true);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'edit', 8, true);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'edit_phone', 9, true);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', '0789000002', 10);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');
SELECT pg_temp.session('ZW.1502576394655843');
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'confirm', 11);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');
-- the payment has no donor phone (the number typed may be anyone's; a BSUID is no phone number):
-- the BSUID is in its metadata, and the donor is known to analysts by name
SELECT p.donor_phone, p.donor_name, p.donor_key, p.metadata ->> 'whatsapp_user_id' AS whatsapp_user_id,
	   i.phone AS initiation_phone, d.wa_id AS chat_wa_id
  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE d.wa_id = 'ZW.1502576394655843';
SELECT reference AS bsuid_ref FROM payments.payments p JOIN payments.chat_donations d ON d.payment_id = p.id
 WHERE d.wa_id = 'ZW.1502576394655843' \gset
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'check', 12);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');
-- its receipt after the 24-hour window: the template, to "recipient" (a utility template: Meta
-- refuses BSUID recipients only for authentication templates, error 131062)
UPDATE payments.providers SET settings = settings || '{"receipt_template": {"name": "donation_receipt", "language": "en_US"}}'
 WHERE name = 'chat';
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('263770000001');
SELECT pg_temp.say('263770000001', '/approve ' || :'bsuid_ref', 900000);
SELECT * FROM pg_temp.last_sent('ZW.1502576394655843');
SELECT payload ->> 'recipient' AS recipient_field, payload ? 'to' AS has_to FROM payments.outbox
 WHERE recipient = 'ZW.1502576394655843' ORDER BY id DESC LIMIT 1;
UPDATE payments.providers SET settings = settings - 'receipt_template' WHERE name = 'chat';
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('ZW.1502576394655843');
-- volunteering by BSUID: the clinic contacts them on WhatsApp; analysts see no phone number
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'volunteer', 14);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'Rudo Moyo', 15);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'Driving', 16);
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'Weekends', 17);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');
SELECT name, phone FROM payments.volunteer_list WHERE name = 'Rudo Moyo';
-- a message whose BSUID is only in its contact (contacts[].user_id) is theirs too
SELECT pg_temp.say_as(NULL, 'ZW.1502576394655843', 'menu', 18, false, false);
SELECT * FROM pg_temp.replies('ZW.1502576394655843');

-- a donor who chatted with their number, then hid it: the conversation (its draft, donations,
-- check) goes on, and messages are still sent "to" the phone number, as Meta recommends
SELECT pg_temp.say_as('263774000901', 'ZW.1774000901000000001', 'donate', 0, true);
SELECT pg_temp.say_as('263774000901', 'ZW.1774000901000000001', '7', 1);
SELECT * FROM pg_temp.replies('263774000901');
SELECT pg_temp.say_as(NULL, 'ZW.1774000901000000001', 'pay_ecocash', 2, true);
SELECT * FROM pg_temp.replies('263774000901');
SELECT count(*) AS bsuid_replies FROM payments.outbox WHERE recipient = 'ZW.1774000901000000001';
SELECT wa_id, user_id, state, draft ->> 'method' AS method FROM payments.chat_sessions WHERE user_id = 'ZW.1774000901000000001';
SELECT payload ->> 'to' AS "to", payload ? 'recipient' AS has_recipient FROM payments.outbox
 WHERE recipient = '263774000901' ORDER BY id DESC LIMIT 1;
SELECT pg_temp.say_as(NULL, 'ZW.1774000901000000001', 'phone_same', 3, true);
SELECT pg_temp.say_as(NULL, 'ZW.1774000901000000001', 'purpose_2', 4, true);
SELECT pg_temp.say_as(NULL, 'ZW.1774000901000000001', 'confirm', 5);
SELECT pg_temp.say_as(NULL, 'ZW.1774000901000000001', 'check', 6);
SELECT * FROM pg_temp.replies('263774000901');
SELECT p.donor_phone, p.metadata ? 'whatsapp_user_id' AS has_whatsapp_user_id, i.phone AS initiation_phone
  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE d.wa_id = '263774000901';

-- an admin listed by BSUID is one; a message carrying neither a phone number nor a valid BSUID
-- (lower case, no period, too long, another shape) is ignored, as one without a sender always was
SELECT pg_temp.say_as(NULL, 'ZW.9000000000000000001', '/admin', 0);
SELECT * FROM pg_temp.replies('ZW.9000000000000000001');
SELECT pg_temp.say_as(NULL, b, 'Hi', 0)
  FROM unnest(ARRAY['zw.1502576394655843', 'ZW1502576394655843', 'ZW.' || repeat('1', 129), 'ZW.15025-76394', NULL]) AS b;
SELECT pg_temp.say_as('not a phone', 'ZW.15025-76394', 'Hi', 0);
SELECT count(*) AS sessions FROM payments.chat_sessions
 WHERE wa_id IN ('zw.1502576394655843', 'ZW1502576394655843', 'ZW.15025-76394') OR wa_id LIKE 'ZW.111%';

-- the checks that took a phone number take a BSUID as strictly, and refuse anything else
CREATE FUNCTION pg_temp.accepted(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE statement;
	RAISE EXCEPTION USING ERRCODE = 'PTEST';	-- (undone)
EXCEPTION
	WHEN check_violation THEN RETURN 'refused';
	WHEN SQLSTATE 'PTEST' THEN RETURN 'accepted';
END
$$;
SELECT CASE WHEN length(v) > 40 THEN left(v, 8) || '... (' || length(v) || ' characters)' ELSE v END AS id,
	   pg_temp.accepted(format('INSERT INTO payments.chat_sessions (provider, wa_id, tokens) VALUES (''chat'', %L, 1)', v)) AS chat_session,
	   pg_temp.accepted(format('INSERT INTO payments.chat_sessions (provider, wa_id, tokens, user_id) VALUES (''chat'', ''263774000999'', 1, %L)', v)) AS session_user_id,
	   pg_temp.accepted(format('INSERT INTO payments.volunteers (provider, wa_id, name, skills, availability) VALUES (''chat'', %L, ''n'', ''s'', ''a'')', v)) AS volunteer,
	   pg_temp.accepted(format('INSERT INTO payments.outbox (provider, recipient, event_type, payload) VALUES (''chat'', %L, ''whatsapp.text'', ''{}'')', v)) AS outbox,
	   pg_temp.accepted(format('INSERT INTO payments.flow_tokens (token, provider, wa_id, expires_at) VALUES (''ft_0123456789abcdef'', ''chat'', %L, now() + interval ''1 hour'')', v)) AS flow_token
  FROM unnest(ARRAY['ZW.1502576394655999', 'US.ENT.11815799212886844830', '263774000998', 'zw.1502576394655999', 'ZW.',
					'ZW.15025 76394', 'ZW.' || repeat('1', 129), '+263774000998']) AS v;
SELECT payments.issue_flow_token('chat', 'ZW.1502576394655843') ~ '^ft_[0-9a-f]{32}$' AS bsuid_token;
SELECT wa_id FROM payments.flow_tokens WHERE provider = 'chat';
SELECT payments.issue_flow_token('chat', 'zw.1502576394655843');
DELETE FROM payments.flow_tokens WHERE provider = 'chat';
SELECT payments.register_provider('chat_bad_admin', 'meta', '{"verify_token": "t", "admin_numbers": ["ZW.bad-id"]}');

-- analysts know a donor by BSUID by that id (two donors of one profile name are two donors), masked
SELECT payments.mask_donor('whatsapp:ZW.1502576394655843') AS masked,
	   payments.donor_key_of(' ZW.1502576394655843 ') AS key_of, payments.donor_key_of('zw.1502576394655843') AS not_one;
SELECT count(*) AS history FROM payments.donor_history('ZW.1502576394655843');
BEGIN;
SELECT pg_temp.ask(w, '0777000070') AS started FROM unnest(ARRAY['ZW.7000000000000000003', 'ZW.7000000000000000004']) w;
SELECT p.donor_key, p.donor_name FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
 WHERE d.wa_id IN ('ZW.7000000000000000003', 'ZW.7000000000000000004') ORDER BY p.id;
ROLLBACK;
-- a Flow token issued for the BSUID of a donor whose conversation is at their number is that
-- conversation's (its donations, *check*); an unknown BSUID stands for itself
SELECT payments.issue_flow_token('chat', 'ZW.1774000901000000001') AS known_token,
	   payments.issue_flow_token('chat', 'ZW.1774000901000000999') AS unknown_token \gset
SELECT (SELECT wa_id FROM payments.flow_tokens WHERE token = :'known_token') AS known,
	   (SELECT wa_id FROM payments.flow_tokens WHERE token = :'unknown_token') AS unknown;
DELETE FROM payments.flow_tokens WHERE provider = 'chat';
-- a chat known by BSUID alone has no number of its own: every number it asks counts against its 5
-- a day, none against the number's 3 a day from other chats (the number may be its user's); other
-- chats' requests to that number still count
BEGIN;
SELECT n, pg_temp.ask('ZW.7000000000000000005', '0777000005') AS started FROM generate_series(1, 6) n;
SELECT replace(r, payments.chat_try_again(now() + interval '24 hours'), '<24 hours after the first>') AS r FROM pg_temp.replies('ZW.7000000000000000005') r WHERE r LIKE 'Sorry%';
SELECT w, pg_temp.ask(w, '0777000006') AS started
  FROM unnest(ARRAY['ZW.7000000000000000006', 'ZW.7000000000000000007', '263773000041', 'ZW.7000000000000000008']) w;
SELECT replace(r, payments.chat_try_again(now() + interval '24 hours'), '<24 hours after the first>') AS r FROM pg_temp.replies('ZW.7000000000000000008') r WHERE r LIKE 'Sorry%';
ROLLBACK;
-- an admin listed by BSUID, writing with their number: Paynow's news that a donation they approved
-- by hand was paid goes to them alone
SELECT pg_temp.late_donation('263772000098', 'Farai', 'Medicines', '1 hour') AS bsuid_admin_ref \gset
SELECT pg_temp.say_as('263770000009', 'ZW.9000000000000000001', '/approve ' || :'bsuid_admin_ref', 40);
SELECT max(id) AS before_out FROM payments.outbox \gset
SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', :'bsuid_admin_ref'], ['paynowreference', '9098'], ['amount', '3.00'],
	['status', 'Paid'], ['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=g98']]);
SELECT recipient, payload -> 'text' ->> 'body' LIKE 'Paynow reports%' AS told FROM payments.outbox
 WHERE id > :before_out AND payload -> 'text' ->> 'body' LIKE 'Paynow reports%' ORDER BY id;
-- A user who changes phone number: Meta sends a system message (no contacts array) from the OLD
-- number, the new one in system.wa_id; since August 2026 with the previous BSUID
-- (system.previous_user_id) and the new one (system.user_id), and user_changed_user_id when only
-- the BSUID changed.  What the chat keeps for them follows them; the notice is not answered.
-- notice(old phone or NULL, system object, seconds, from_user_id or NULL)
CREATE FUNCTION pg_temp.notice(phone text, sys jsonb, at integer, from_user_id text DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.deliver(jsonb_build_object(
			'messaging_product', 'whatsapp', 'metadata', jsonb_build_object('phone_number_id', '106540352242922'),
			'messages', jsonb_build_array(jsonb_strip_nulls(jsonb_build_object('from', phone, 'from_user_id', from_user_id,
				'id', 'wamid.in' || nextval('pg_temp.wamid'), 'timestamp', (1718000000 + at)::text,
				'type', 'system', 'system', sys)))))
$$;
CREATE FUNCTION pg_temp.moved(old text, new text, at integer, uid text DEFAULT NULL, previous text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
	SELECT pg_temp.notice(old, jsonb_strip_nulls(jsonb_build_object('body', format('User Tendai changed from %s to %s', old, new),
		'wa_id', new, 'type', 'user_changed_number', 'user_id', uid, 'previous_user_id', previous)), at)
$$;
CREATE FUNCTION pg_temp.where_is(who text[]) RETURNS TABLE (wa_id text, state text, user_id text, sessions bigint, donations bigint,
	volunteers bigint, flow_tokens bigint, pending_out bigint)
LANGUAGE sql AS $$
	SELECT w, (SELECT s.state FROM payments.chat_sessions s WHERE s.provider = 'chat' AND s.wa_id = w),
		   (SELECT s.user_id FROM payments.chat_sessions s WHERE s.provider = 'chat' AND s.wa_id = w),
		   (SELECT count(*) FROM payments.chat_sessions s WHERE s.provider = 'chat' AND s.wa_id = w),
		   (SELECT count(*) FROM payments.chat_donations d WHERE d.provider = 'chat' AND d.wa_id = w),
		   (SELECT count(*) FROM payments.volunteers v WHERE v.provider = 'chat' AND v.wa_id = w),
		   (SELECT count(*) FROM payments.flow_tokens t WHERE t.provider = 'chat' AND t.wa_id = w),
		   (SELECT count(*) FROM payments.outbox o WHERE o.provider = 'chat' AND o.recipient = w AND o.state = 'pending')
	  FROM unnest(who) WITH ORDINALITY AS x (w, n) ORDER BY n
$$;

-- a donor whose donation is still pending changes number: the conversation, the donation and a
-- valid flow token move (an expired token, the payment's donor_phone and the Paynow request's
-- number stay: history); *check* from the new number finds the donation, and its thank-you goes
-- there.  A reply queued to the old number and not yet out is re-addressed; one in flight is not
SELECT pg_temp.say('263775100001', 'donate', 100, true);
SELECT pg_temp.say('263775100001', '5', 101);
SELECT pg_temp.say('263775100001', 'pay_ecocash', 102, true);
SELECT pg_temp.say('263775100001', 'phone_same', 103, true);
SELECT pg_temp.say('263775100001', 'Medicines', 104);
SELECT pg_temp.say('263775100001', 'confirm', 105);
SELECT p.reference AS moved_ref FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
 WHERE d.wa_id = '263775100001' \gset
SELECT payments.issue_flow_token('chat', '263775100001') AS moved_token \gset
INSERT INTO payments.flow_tokens (token, provider, wa_id, created_at, expires_at)
VALUES ('ft_expired0123456789', 'chat', '263775100001', now() - interval '2 days', now() - interval '1 day');
UPDATE payments.outbox SET state = 'delivered' WHERE recipient = '263775100001';
SELECT pg_temp.say('263775100001', 'help', 106);
SELECT pg_temp.say('263775100001', 'menu', 107);
-- (the first of the two is being sent: an attempt started, its lease running)
WITH o AS (UPDATE payments.outbox SET attempts = 1, next_attempt_at = now() + interval '1 minute'
			WHERE id = (SELECT min(id) FROM payments.outbox WHERE recipient = '263775100001' AND state = 'pending')
		   RETURNING id)
INSERT INTO payments.outbox_attempts (outbox_id, attempt) SELECT id, 1 FROM o;
SELECT pg_temp.moved('263775100001', '263775100011', 108);
SELECT * FROM pg_temp.where_is(ARRAY['263775100001', '263775100011']);
SELECT wa_id, expires_at > now() AS valid FROM payments.flow_tokens
 WHERE token IN (:'moved_token', 'ft_expired0123456789') ORDER BY token = :'moved_token';
SELECT recipient, payload ->> 'to' AS "to", payload ? 'recipient' AS has_recipient, state, attempts
  FROM payments.outbox WHERE recipient IN ('263775100001', '263775100011') AND state = 'pending' ORDER BY id;
SELECT p.donor_phone, i.phone AS initiation_phone FROM payments.payments p
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE p.reference = :'moved_ref';
SELECT count(*) AS old_replies FROM pg_temp.replies('263775100001');
UPDATE payments.outbox SET state = 'delivered' WHERE recipient = '263775100011';
SELECT * FROM pg_temp.replies('263775100011');
SELECT pg_temp.say('263775100011', 'check', 109);
SELECT * FROM pg_temp.replies('263775100011');
SELECT pg_temp.say('263770000001', '/approve ' || :'moved_ref', 900010);
SELECT * FROM pg_temp.replies('263775100011');
SELECT * FROM pg_temp.replies('263775100001');
-- a redelivery of the same change (another wamid) finds nothing left to move
SELECT pg_temp.moved('263775100001', '263775100011', 108);
-- in the reports the donor is one: the payment made under the old number is known by the new
-- one, its details kept; a gift from the old number since (given to someone else) is another donor's
SELECT donor_phone, donor_key, donor_moved FROM payments.payments WHERE reference = :'moved_ref';
BEGIN;
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, donor_phone, status_at, paid_at)
VALUES ('pn_usd', 'reassigned_number', 'paid', 2, 'USD', '263775100001', now(), now());
SELECT donor_phone, donor_key, donor_moved FROM payments.payments WHERE provider_ref = 'reassigned_number';
ROLLBACK;
-- a second change: the payment, still with its details of the first number, is known by the third
BEGIN;
SELECT pg_temp.moved('263775100011', '263775100021', 1000000);
SELECT donor_phone, donor_key, donor_moved FROM payments.payments WHERE reference = :'moved_ref';
-- (paid: the analysts' donor is shown with the number of now, not the one it gave from)
UPDATE payments.payments SET status = 'paid', status_at = now(), paid_at = now() WHERE reference = :'moved_ref';
SELECT donor, phone, gifts FROM payments.donor_summary WHERE donor = payments.mask_donor('phone:263775100021');
ROLLBACK;

-- a volunteer changes number to one that registered too, earlier: the later entry is kept, at the
-- new number
SELECT pg_temp.say('263775100012', 'volunteer', 100, true);
SELECT pg_temp.say('263775100012', 'Farai', 101);
SELECT pg_temp.say('263775100012', 'Driving', 102);
SELECT pg_temp.say('263775100012', 'Sundays', 103);
SELECT pg_temp.say('263775100002', 'volunteer', 100, true);
SELECT pg_temp.say('263775100002', 'Farai Moyo', 101);
SELECT pg_temp.say('263775100002', 'Nursing', 102);
SELECT pg_temp.say('263775100002', 'Weekends', 103);
SELECT pg_temp.moved('263775100002', '263775100012', 104);
SELECT wa_id, name, skills, availability FROM payments.volunteers WHERE wa_id IN ('263775100002', '263775100012');
SELECT phone, name FROM payments.volunteer_list WHERE name LIKE 'Farai%';

-- the new number wrote first (its message newer than the change): the two conversations merge,
-- the one active last kept (the new number's menu, not the old number's amount question), with
-- the later time of the last message answered; the old number's donation moves to it
SELECT pg_temp.say('263775100004', 'donate', 100, true);
SELECT pg_temp.say('263775100004', '5', 101);
SELECT pg_temp.say('263775100004', 'pay_ecocash', 102, true);
SELECT pg_temp.say('263775100004', 'phone_same', 103, true);
SELECT pg_temp.say('263775100004', 'Medicines', 104);
SELECT pg_temp.say('263775100004', 'confirm', 105);
SELECT pg_temp.say('263775100004', 'donate_anyway_' || max(payment_id), 106, true) FROM payments.chat_donations
 WHERE wa_id = '263775100004';
SELECT pg_temp.say('263775100014', 'Hi', 120);
SELECT pg_temp.moved('263775100004', '263775100014', 110);
SELECT * FROM pg_temp.where_is(ARRAY['263775100004', '263775100014']);
SELECT last_message_at = to_timestamp(1718000120) AS last_message_kept, messages FROM payments.chat_sessions
 WHERE wa_id = '263775100014';

-- an invalid new number, or a system message of another type, moves nothing and starts no
-- conversation
SELECT pg_temp.say('263775100005', 'donate', 100, true);
SELECT pg_temp.moved('263775100005', 'not a number', 101);
SELECT pg_temp.notice('263775100005', '{"body": "User Tendai changed", "type": "customer_identity_changed", "wa_id": "263775100015"}', 102);
SELECT pg_temp.moved('263775100025', '263775100035', 103);
SELECT * FROM pg_temp.where_is(ARRAY['263775100005', '263775100015', '263775100025', '263775100035']);

-- a system message older than the old number's last message answered: the number was answered
-- since, so it is someone else's now; nothing moves.  A later one moves the conversation
SELECT pg_temp.say('263775100008', 'donate', 120, true);
SELECT pg_temp.moved('263775100008', '263775100018', 110);
SELECT * FROM pg_temp.where_is(ARRAY['263775100008', '263775100018']);
SELECT pg_temp.moved('263775100008', '263775100018', 130);
SELECT * FROM pg_temp.where_is(ARRAY['263775100008', '263775100018']);

-- user_changed_user_id: a conversation at a phone number learns the new BSUID, so that a message
-- without the number still finds it; then a number change with the number withheld (no "from")
-- finds the conversation by the previous BSUID and takes the new one
SELECT pg_temp.say_as('263775100006', 'ZW.1775100006000000001', 'Hi', 100);
SELECT pg_temp.notice(NULL, '{"body": "User Tendai changed", "type": "user_changed_user_id",
	"previous_user_id": "ZW.1775100006000000001", "user_id": "ZW.1775100006000000002"}', 101);
SELECT * FROM pg_temp.where_is(ARRAY['263775100006']);
SELECT pg_temp.say_as(NULL, 'ZW.1775100006000000002', 'help', 102);
SELECT count(*) > 0 AS answered_at_the_number FROM pg_temp.replies('263775100006');
SELECT pg_temp.moved(NULL, '263775100016', 103, 'ZW.1775100006000000003', 'ZW.1775100006000000002');
SELECT * FROM pg_temp.where_is(ARRAY['263775100006', '263775100016']);
-- a number change with only the previous BSUID: the old one is dead, none is kept
SELECT pg_temp.moved('263775100016', '263775100026', 104, NULL, 'ZW.1775100006000000003');
SELECT * FROM pg_temp.where_is(ARRAY['263775100016', '263775100026']);

-- user_changed_user_id of a user known by BSUID alone: the conversation keyed by it moves to the
-- new BSUID (here given as the message's from_user_id), its queued reply sent as "recipient" to it
SELECT pg_temp.say_as(NULL, 'ZW.1775100007000000001', 'volunteer', 100);
SELECT pg_temp.notice(NULL, '{"body": "User Rudo changed", "type": "user_changed_user_id",
	"previous_user_id": "ZW.1775100007000000001"}', 101, 'ZW.1775100007000000002');
SELECT * FROM pg_temp.where_is(ARRAY['ZW.1775100007000000001', 'ZW.1775100007000000002']);
SELECT recipient, payload ->> 'recipient' AS payload_recipient, payload ? 'to' AS has_to FROM payments.outbox
 WHERE recipient LIKE 'ZW.1775100007%' AND state = 'pending' ORDER BY id;
SELECT pg_temp.say_as(NULL, 'ZW.1775100007000000002', 'Rudo', 102);
SELECT * FROM pg_temp.replies('ZW.1775100007000000002');

-- a user known by BSUID alone whose number then shows (Meta's contact book): their conversation
-- moves to the number, the draft going on there; so do their donations (*check*, and the guard
-- against giving twice)
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000001', 'donate', 0, true);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000001', '5', 1);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000001', 'pay_ecocash', 2, true);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000001', '0777000001', 3);
SELECT pg_temp.say_as('263777000001', 'ZW.7000000000000000001', 'purpose_1', 4, true);
SELECT * FROM pg_temp.replies('263777000001');
SELECT wa_id, user_id, state FROM payments.chat_sessions WHERE user_id = 'ZW.7000000000000000001';
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000002', 'donate', 0, true);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000002', '5', 1);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000002', 'pay_ecocash', 2, true);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000002', '0777000002', 3);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000002', 'purpose_1', 4, true);
SELECT pg_temp.say_as(NULL, 'ZW.7000000000000000002', 'confirm', 5);
SELECT count(*) >= 0 AS looked FROM pg_temp.replies('ZW.7000000000000000002');
SELECT pg_temp.say_as('263777000002', 'ZW.7000000000000000002', 'check', 6);
SELECT pg_temp.say_as('263777000002', 'ZW.7000000000000000002', 'donate', 7, true);
SELECT * FROM pg_temp.replies('263777000002');
SELECT d.wa_id, s.user_id FROM payments.chat_donations d
  JOIN payments.chat_sessions s ON s.provider = d.provider AND s.wa_id = d.wa_id
 WHERE s.user_id = 'ZW.7000000000000000002';
-- and the donor of that donation is the number's in the reports
SELECT p.donor_phone, p.donor_key, p.donor_moved FROM payments.chat_donations d
  JOIN payments.payments p ON p.id = d.payment_id WHERE d.wa_id = '263777000002';

-- a notice older than what the old number did since is someone else's (the number given to
-- another user), and moves nothing of theirs: a donation given through a Flow with no
-- conversation (made after the change), a conversation whose messages were never answered (a
-- reaction), one carrying another BSUID than the notice's previous one; a notice of now moves the
-- Flow donor who did change number
BEGIN;
SELECT pg_temp.ask('263775300001', '0775300001') AS flow_donation;
SELECT pg_temp.moved('263775300001', '263775300011', 400);
SELECT * FROM pg_temp.where_is(ARRAY['263775300001', '263775300011']);
SELECT pg_temp.moved('263775300001', '263775300011', extract(epoch FROM now())::integer - 1718000000 + 60);
SELECT * FROM pg_temp.where_is(ARRAY['263775300001', '263775300011']);
SELECT pg_temp.say('263775300002', 'x', 500, false, '106540352242922',
	'{"type": "reaction", "reaction": {"message_id": "wamid.out1", "emoji": "\ud83d\ude4f"}}');
SELECT wa_id, last_message_at, last_seen_at = to_timestamp(1718000500) AS seen FROM payments.chat_sessions WHERE wa_id = '263775300002';
SELECT pg_temp.moved('263775300002', '263775300012', 400);
SELECT * FROM pg_temp.where_is(ARRAY['263775300002', '263775300012']);
SELECT pg_temp.say_as('263775300003', 'ZW.7530000300000000009', 'Hi', 300);
SELECT pg_temp.moved('263775300003', '263775300013', 400, NULL, 'ZW.7530000300000000001');
SELECT pg_temp.moved('263775300003', '263775300013', 401, NULL, 'ZW.7530000300000000009');
SELECT * FROM pg_temp.where_is(ARRAY['263775300003', '263775300013']);
ROLLBACK;

-- Meta may batch a donor's messages out of order: they are answered in the order of their times
-- (the amount, then the currency), not the later one first and the earlier one left unanswered
SELECT pg_temp.say('263772000086', 'donate', 1, true);
SELECT pg_temp.deliver(jsonb_build_object('messaging_product', 'whatsapp',
	'metadata', jsonb_build_object('phone_number_id', '106540352242922'),
	'contacts', jsonb_build_array(jsonb_build_object('profile', jsonb_build_object('name', 'Tendai'), 'wa_id', '263772000086')),
	'messages', jsonb_build_array(
		jsonb_build_object('from', '263772000086', 'id', 'wamid.late2', 'timestamp', '1718000011', 'type', 'text',
						   'text', jsonb_build_object('body', 'USD')),
		jsonb_build_object('from', '263772000086', 'id', 'wamid.late1', 'timestamp', '1718000010', 'type', 'text',
						   'text', jsonb_build_object('body', '20')))));
SELECT * FROM pg_temp.replies('263772000086');
SELECT pg_temp.session('263772000086');

-- (review "donor") d(who, amount): a donation of that many USD by EcoCash from the donor's own
-- number, drafted to its summary; paid(who): Paynow's status update paying their last donation
CREATE FUNCTION pg_temp.d(who text, amount text DEFAULT '10') RETURNS void LANGUAGE sql AS $$
	SELECT pg_temp.say(who, 'donate', 1, true);
	SELECT pg_temp.say(who, amount, 2);
	SELECT pg_temp.say(who, 'cur_USD', 3, true);
	SELECT pg_temp.say(who, 'pay_ecocash', 4, true);
	SELECT pg_temp.say(who, 'phone_same', 5, true);
	SELECT pg_temp.say(who, 'purpose_1', 6, true);
$$;
CREATE FUNCTION pg_temp.paid(who text) RETURNS text LANGUAGE sql AS $$
	SELECT pg_temp.paynow('pn_usd', ARRAY[['reference', p.reference], ['paynowreference', '98' || p.id],
		['amount', payments.chat_amount(p.amount, p.currency)], ['status', 'Paid'],
		['pollurl', 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=d' || p.id]])
	  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id WHERE d.wa_id = who
	 ORDER BY p.id DESC LIMIT 1
$$;

-- cancel with no draft, just after a donation was paid: not "nothing was charged", but that there
-- is nothing to cancel, the donation paid with its receipt number, and that the clinic refunds.
-- With a draft, what is cancelled is the draft; a session that expires says the same of the draft
-- alone (another donation of the donor's was paid)
SELECT pg_temp.d('263778100001');
SELECT pg_temp.say('263778100001', 'yes', 7);
SELECT pg_temp.paid('263778100001');
SELECT count(*) > 0 AS looked FROM pg_temp.replies('263778100001');
SELECT pg_temp.say('263778100001', 'cancel', 8);
SELECT * FROM pg_temp.replies('263778100001');
SELECT pg_temp.say('263778100001', 'donate', 9, true);
SELECT pg_temp.say('263778100001', 'stop', 10);
SELECT * FROM pg_temp.replies('263778100001') OFFSET 1;
SELECT pg_temp.say('263778100001', 'volunteer', 11);
SELECT pg_temp.say('263778100001', 'Cancel', 12);
SELECT * FROM pg_temp.replies('263778100001') OFFSET 1;
SELECT pg_temp.say('263778100001', 'donate', 13, true);
UPDATE payments.chat_sessions SET last_activity_at = now() - interval '31 minutes' WHERE wa_id = '263778100001';
SELECT pg_temp.say('263778100001', '5', 14);
SELECT * FROM pg_temp.replies('263778100001') OFFSET 1;
-- a request sent within the hour may still prompt the phone: cancel says how to stop it (without a
-- draft, that it cannot be cancelled here); one sent days ago has expired (as *check* says), and
-- there is nothing to cancel
BEGIN;
SELECT pg_temp.d('263778100002');
SELECT pg_temp.say('263778100002', 'yes', 7);
UPDATE payments.paynow_initiations i SET state = 'done'
  FROM payments.chat_donations d WHERE d.payment_id = i.payment_id AND d.wa_id = '263778100002';
SELECT count(*) > 0 AS looked FROM pg_temp.replies('263778100002');
SELECT pg_temp.say('263778100002', 'cancel', 8);
SELECT * FROM pg_temp.replies('263778100002');
UPDATE payments.chat_donations SET created_at = now() - interval '3 days' WHERE wa_id = '263778100002';
SELECT pg_temp.say('263778100002', 'check', 9);
SELECT pg_temp.say('263778100002', 'cancel', 10);
SELECT * FROM pg_temp.replies('263778100002');
ROLLBACK;

-- commands, amounts and numbers are read without a full stop, ! or ? or emoji after them
-- (payments.chat_word); nothing before or between is dropped
SELECT replace(typed, E'\U0001F44D', '<thumbs up>') AS typed,
	   replace(payments.chat_word(typed), E'\U0001F44D', '<thumbs up>') AS word, (payments.chat_typed_amount(payments.chat_word(typed))).amount
  FROM (VALUES ('Yes!'), ('Cancel.'), ('yes please '), (E'ok \U0001F44D'), (E'\U0001F44D'), ('5.'), ('$5!'), ('5.5'),
			   ('12.345.'), ('1,000.'), ('5?!'), (E'10\u2764\ufe0f'), (E'5\ufe0f\u20e3'), (E'0771234567 \U0001F44D'),
			   ('...'), ('No.')) AS t (typed);
-- at the summary the words for yes (English, Shona, Ndebele) confirm it, and so does a thumbs-up
-- alone (any skin tone, spaces after it); no, kwete and hayi cancel it; anything else is said not
-- to be understood, with the summary again
SELECT t.w, t.said, pg_temp.d(t.w), pg_temp.say(t.w, t.said, 7)
  FROM (VALUES ('263778100010', 'Yes!'), ('263778100011', 'Yes.'), ('263778100012', 'ok'), ('263778100013', 'okay'),
			   ('263778100014', 'hongu'), ('263778100015', 'Ehe'), ('263778100016', 'Yebo'), ('263778100017', 'yes please'),
			   ('263778100018', 'Confirm.'), ('263778100019', 'Y'), ('263778100020', 'no'), ('263778100021', 'Kwete'),
			   ('263778100022', 'hayi'), ('263778100023', 'cancel.'), ('263778100024', E'\U0001F44D'),
			   ('263778100025', 'maybe later'), ('263778100026', E'\U0001F44D\U0001F3FD  '),
			   ('263778100027', E'\U0001F44D\uFE0F')) AS t (w, said);
SELECT s.wa_id, s.state, (SELECT count(*) FROM payments.chat_donations d WHERE d.wa_id = s.wa_id) AS donations,
	   (SELECT array_agg(r) FROM (SELECT r FROM pg_temp.replies(s.wa_id) r OFFSET 6) x) AS last_replies
  FROM payments.chat_sessions s WHERE s.wa_id BETWEEN '263778100010' AND '263778100027' AND s.wa_id <> '263778100025'
 ORDER BY s.wa_id;
SELECT r FROM pg_temp.replies('263778100025') r OFFSET 6;
SELECT pg_temp.session('263778100025');
-- at the amount: "5." is 5, "$5!" 5 USD; a word, "no", "Good morning" are not amounts, and the
-- donor is told *cancel* stops; "Cancel!" and "Hello!" are commands; 0,50 is below the minimum,
-- so no dot is suggested for it (10,50 still gets one); a number with a thumbs-up is the number,
-- and a thumbs-up alone no amount (it is yes at the summary only)
SELECT pg_temp.say('263778100030', 'donate', 1, true);
SELECT pg_temp.say('263778100030', 'no', 2);
SELECT pg_temp.say('263778100030', 'Good morning', 3);
SELECT pg_temp.say('263778100030', '0,50', 4);
SELECT pg_temp.say('263778100030', '10,50', 5);
SELECT pg_temp.say('263778100030', E'\U0001F44D ', 5);
SELECT pg_temp.say('263778100030', '5.', 6);
SELECT * FROM pg_temp.replies('263778100030');
SELECT pg_temp.session('263778100030');
SELECT pg_temp.say('263778100030', 'Cancel!', 7);
SELECT pg_temp.say('263778100030', 'donate', 8, true);
SELECT pg_temp.say('263778100030', '$5!', 9);
SELECT pg_temp.say('263778100030', 'EcoCash.', 10);
SELECT pg_temp.say('263778100030', E'0771234567 \U0001F44D', 11);
SELECT pg_temp.session('263778100030');
SELECT pg_temp.say('263778100030', 'Hello!', 12);
SELECT * FROM pg_temp.replies('263778100030');

-- a typed yes quoting (context.id) an earlier summary, sent before an edit, starts nothing: it is
-- refused as that summary's Confirm button is, and the current summary sent; quoting the latest
-- summary, it confirms
SELECT pg_temp.d('263778100040');
UPDATE payments.outbox SET wamid = 'wamid.SUMMARY10'
 WHERE id = (SELECT max(id) FROM payments.outbox WHERE recipient = '263778100040');
SELECT pg_temp.say('263778100040', 'edit', 7, true);
SELECT pg_temp.say('263778100040', 'edit_amount', 8, true);
SELECT pg_temp.say('263778100040', '100', 9);
SELECT count(*) > 0 AS looked FROM pg_temp.replies('263778100040');
SELECT pg_temp.say('263778100040', 'x', 10, false,
	content => '{"type": "text", "text": {"body": "yes"}, "context": {"from": "15550001111", "id": "wamid.SUMMARY10"}}');
SELECT * FROM pg_temp.replies('263778100040');
SELECT count(*) AS donations FROM payments.chat_donations WHERE wa_id = '263778100040';
UPDATE payments.outbox SET wamid = 'wamid.SUMMARY100'
 WHERE id = (SELECT max(id) FROM payments.outbox WHERE recipient = '263778100040');
SELECT pg_temp.say('263778100040', 'x', 11, false,
	content => '{"type": "text", "text": {"body": "Yes!"}, "context": {"from": "15550001111", "id": "wamid.SUMMARY100"}}');
SELECT p.amount, p.currency FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
 WHERE d.wa_id = '263778100040';

-- a Donate anyway button names the donation it was offered for: tapped after that one was paid and
-- another started, it is *donate*, which warns of the other; the button of the notice about the
-- other goes past it
SELECT pg_temp.d('263778100050');
SELECT pg_temp.say('263778100050', 'yes', 7);
SELECT pg_temp.say('263778100050', 'donate', 8, true);
SELECT 'donate_anyway_' || max(payment_id) AS old_anyway FROM payments.chat_donations WHERE wa_id = '263778100050' \gset
SELECT * FROM pg_temp.replies('263778100050') OFFSET 7;
SELECT pg_temp.paid('263778100050');
SELECT pg_temp.say('263778100050', 'donate', 9, true);
SELECT pg_temp.say('263778100050', '20', 10);
SELECT pg_temp.say('263778100050', 'cur_USD', 11, true);
SELECT pg_temp.say('263778100050', 'pay_ecocash', 12, true);
SELECT pg_temp.say('263778100050', 'phone_same', 13, true);
SELECT pg_temp.say('263778100050', 'purpose_1', 14, true);
SELECT pg_temp.say('263778100050', 'yes', 15);
SELECT count(*) > 0 AS looked FROM pg_temp.replies('263778100050');
SELECT pg_temp.say('263778100050', :'old_anyway', 16, true);
SELECT * FROM pg_temp.replies('263778100050');
SELECT pg_temp.session('263778100050');
SELECT pg_temp.say('263778100050', 'donate_anyway_' || max(payment_id), 17, true) FROM payments.chat_donations
 WHERE wa_id = '263778100050';
SELECT s.state, (s.draft ->> 'pending_ok')::bigint = (SELECT max(payment_id) FROM payments.chat_donations WHERE wa_id = s.wa_id)
	   AS going_past_the_second
  FROM payments.chat_sessions s WHERE s.wa_id = '263778100050';

-- typed, donate anyway names no donation: it goes past the one of the notice it quotes
-- (context.id), else of the last notice the conversation gave (kept in the draft), and only while
-- that one is the donation waiting.  A donation started after the notice (a Flow, another device)
-- is warned of first, not gone past; so is one when the notice quoted was of another
SELECT pg_temp.d('263778100080');
SELECT pg_temp.say('263778100080', 'yes', 7);
SELECT pg_temp.say('263778100080', 'donate', 8, true);
SELECT pg_temp.session('263778100080');
UPDATE payments.outbox SET wamid = 'wamid.NOTICE80A'
 WHERE id = (SELECT max(id) FROM payments.outbox WHERE recipient = '263778100080');
SELECT pg_temp.ask('263778100080', '0778100080') AS flow_started;
SELECT count(*) > 0 AS looked FROM pg_temp.replies('263778100080');
SELECT pg_temp.say('263778100080', 'donate anyway', 9);
SELECT * FROM pg_temp.replies('263778100080');
SELECT pg_temp.session('263778100080');
UPDATE payments.outbox SET wamid = 'wamid.NOTICE80B'
 WHERE id = (SELECT max(id) FROM payments.outbox WHERE recipient = '263778100080');
SELECT pg_temp.say('263778100080', 'x', 10, false,
	content => '{"type": "text", "text": {"body": "Donate anyway"}, "context": {"from": "15550001111", "id": "wamid.NOTICE80A"}}');
SELECT * FROM pg_temp.replies('263778100080');
SELECT pg_temp.say('263778100080', 'x', 11, false,
	content => '{"type": "text", "text": {"body": "Give anyway!"}, "context": {"from": "15550001111", "id": "wamid.NOTICE80B"}}');
SELECT * FROM pg_temp.replies('263778100080');
SELECT s.state, (s.draft ->> 'pending_ok')::bigint = (SELECT max(payment_id) FROM payments.chat_donations WHERE wa_id = s.wa_id)
	   AS going_past_the_flows
  FROM payments.chat_sessions s WHERE s.wa_id = '263778100080';
-- with no notice to answer (the menu since), it is *donate*: a notice
SELECT pg_temp.say('263778100080', 'menu', 12, true);
SELECT pg_temp.say('263778100080', 'donate anyway', 13);
SELECT * FROM pg_temp.replies('263778100080') OFFSET 1;
SELECT pg_temp.session('263778100080');

-- *check* right after Confirm, its request still queued: being sent, not waiting on the phone; the
-- current summary's Confirm tapped at the Edit list confirms it
SELECT pg_temp.d('263778100060');
SELECT pg_temp.say('263778100060', 'edit', 7, true);
SELECT pg_temp.say('263778100060', payments.chat_confirm_id(draft), 8, true) FROM payments.chat_sessions WHERE wa_id = '263778100060';
SELECT pg_temp.say('263778100060', 'check', 9);
SELECT * FROM pg_temp.replies('263778100060') OFFSET 7;
SELECT p.amount, i.state FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE d.wa_id = '263778100060';

-- a cancel sent after Confirm but delivered after a later message (a hi, answered first) still
-- cancels the donation whose request is queued, the donor told by its notice, and the
-- conversation stays where the later message left it; an older cancel sent before the Confirm,
-- or one with nothing queued any more, is not answered
SELECT pg_temp.d('263778100070');
SELECT pg_temp.say('263778100070', 'yes', 7);
SELECT pg_temp.say('263778100070', 'donate', 9, true);
SELECT count(*) > 0 AS looked FROM pg_temp.replies('263778100070');
SELECT pg_temp.say('263778100070', 'cancel', 6);
SELECT p.status, i.state FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
  JOIN payments.paynow_initiations i ON i.payment_id = p.id WHERE d.wa_id = '263778100070';
SELECT pg_temp.say('263778100070', 'Cancel!', 8);
SELECT * FROM pg_temp.replies('263778100070');
SELECT p.status, i.state, p.metadata ->> 'cancelled_by' AS cancelled_by FROM payments.chat_donations d
  JOIN payments.payments p ON p.id = d.payment_id JOIN payments.paynow_initiations i ON i.payment_id = p.id
 WHERE d.wa_id = '263778100070';
SELECT pg_temp.session('263778100070');
SELECT pg_temp.say('263778100070', 'stop', 8);
SELECT * FROM pg_temp.replies('263778100070');
