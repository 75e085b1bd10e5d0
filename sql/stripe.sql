-- Stripe-Signature verification (PROVIDERS.md §1): the published vector, then
-- every edge case of §1.2 with the verdict we chose.
\set body '{"id":"evt_1PXyZ2AbCdEfGh","object":"event","type":"payment_intent.succeeded"}'
\set secret 'whsec_test_secret'
\set sig '2872d838d35405d3022bc6e2c5188cedd5409c181156c9e353fa699a2ce1d108'
\set at 'to_timestamp(1718000000)'

-- the vector verifies at its own time
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', 300, :at);

-- items may come in any order; v0 test signatures and unknown schemes are ignored
SELECT payments.verify_stripe(:'body'::bytea, 'v1=' || :'sig' || ',t=1718000000', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig' || ',v0=' || repeat('0', 64) || ',v9=x', :'secret', 300, :at);

-- rotation: several v1 items, one match is enough (the wrong one first)
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || repeat('a', 64) || ',v1=' || :'sig', :'secret', 300, :at);

-- tampered body, wrong secret, secret without its whsec_ prefix (the key is the whole string)
SELECT payments.verify_stripe((:'body' || ' ')::bytea, 't=1718000000,v1=' || :'sig', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', 'whsec_other', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', 'test_secret', 300, :at);

-- the timestamp is signed: changing it breaks the signature
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000001,v1=' || :'sig', :'secret', 300, :at);

-- tolerance: 300 s either way passes, 301 s fails, old and future alike (the SDKs never refuse the future; we do)
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', 300, to_timestamp(1718000300));
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', 300, to_timestamp(1718000301));
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', 300, to_timestamp(1717999700));
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', 300, to_timestamp(1717999699));
-- a tolerance of 0 means the same second only (stripe-node would enforce 300, stripe-python nothing)
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', 0, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', 0, to_timestamp(1718000001));
-- a negative tolerance is a caller's error (stripe-python would always refuse, stripe-node never check)
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig', :'secret', -1, :at);

-- header grammar: the SDKs' quirks and our stricter verdicts
-- space after a comma: the key is " v1", not v1, so there is no signature (as in both SDKs)
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000, v1=' || :'sig', :'secret', 300, :at);
-- leading space on t: no t at all (as in both SDKs)
SELECT payments.verify_stripe(:'body'::bytea, ' t=1718000000,v1=' || :'sig', :'secret', 300, :at);
-- missing t
SELECT payments.verify_stripe(:'body'::bytea, 'v1=' || :'sig', :'secret', 300, :at);
-- duplicate t: refused (stripe-node takes the last, stripe-python the first)
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,t=1718000000,v1=' || :'sig', :'secret', 300, :at);
-- t must be plain digits: NaN in node, 123 from "123abc" in node, "+123" and "1_7" in python are all refused
SELECT payments.verify_stripe(:'body'::bytea, 't=abc,v1=' || :'sig', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000abc,v1=' || :'sig', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=+1718000000,v1=' || :'sig', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1_718_000_000,v1=' || :'sig', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=,v1=' || :'sig', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=9999999999999999999,v1=' || :'sig', :'secret', 300, :at);
-- leading zeros: the canonical decimal is signed, as the SDKs do
SELECT payments.verify_stripe(:'body'::bytea, 't=01718000000,v1=' || :'sig', :'secret', 300, :at);
-- v1 must be 64 lowercase hex digits: uppercase fails in both SDKs; empty throws in node; non-ASCII throws in both
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || upper(:'sig'), :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || left(:'sig', 63) || 'é', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || left(:'sig', 63), :'secret', 300, :at);
-- only a v0 signature: no v1 to check
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v0=' || :'sig', :'secret', 300, :at);
-- items that are not key=value, empty items, empty header
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig' || ',junk', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,,v1=' || :'sig', :'secret', 300, :at);
SELECT payments.verify_stripe(:'body'::bytea, '', :'secret', 300, :at);
-- a value containing '=' is part of the value (and then not hex)
SELECT payments.verify_stripe(:'body'::bytea, 't=1718000000,v1=' || :'sig' || '=', :'secret', 300, :at);

-- the body is bytes: invalid UTF-8 and NUL bytes are verified as they are
SELECT payments.verify_stripe('\x00ff'::bytea, 't=1718000000,v1=' ||
	encode(hmac('1718000000.'::bytea || '\x00ff'::bytea, :'secret'::bytea, 'sha256'), 'hex'),
	:'secret', 300, :at);

-- NULL in, NULL out
SELECT payments.verify_stripe(NULL, 't=1', :'secret', 300, :at) IS NULL AS null_body;

-- What payments.stripe_change makes of each kind of event and of odd payloads, as the jsonb
-- operators read them (a member of a non-object is NULL, ->> gives a number or a container as
-- its text, "->> 0" of a scalar is that scalar) and as SQL casts convert them (their errors);
-- the event type's prefixes are matched exactly (paymentXintent is no payment_intent); amounts
-- are whole numbers of minor units (no fraction, sign, NaN or more than 15 digits), a charge's
-- amount_refunded is not more than its amount, and created is a finite time
CREATE FUNCTION pg_temp.change_of(payload text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	RETURN (SELECT c::text FROM payments.stripe_change(payload::jsonb) c);
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT n, pg_temp.change_of(payload) FROM unnest(ARRAY[
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_1","amount":1050,"amount_received":1050,"currency":"usd","payment_method_types":["card"],"receipt_email":"a@b.org","metadata":{"reference":"R1","donor_name":"Amina","phone":"263771234567"},"shipping":{"name":"Ship Name","phone":"+1 555"}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_2","amount":1050,"amount_received":0,"currency":"jpy"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_2","amount":1050,"amount_received":"0","currency":"JPY"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_3","amount":12345,"currency":"mga"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_4","amount":12345,"currency":"qqq"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_5","amount":12345,"currency":"bhd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_6","amount":10.5,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_7","currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_8","amount":100,"currency":null}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_9","amount":100,"currency":5}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_10","amount":100,"currency":"usd","metadata":["reference"]}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_11","amount":100,"currency":"usd","metadata":"x","client_reference_id":"CR"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_12","amount":100,"currency":"usd","metadata":{"order_id":7,"reference":null}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_13","amount":100,"currency":"usd","metadata":{"reference":{"a":[1,2]}}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_14","amount":100,"currency":"usd","payment_method_types":"card"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_15","amount":100,"currency":"usd","payment_method_types":{"0":"x"}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_16","amount":100,"currency":"usd","payment_method_types":[]}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_17","amount":100,"currency":"usd","payment_method_types":[null,"card"]}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_18","amount":100,"currency":"usd","payment_method_types":[{"t":1}]}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_19","amount":100,"currency":"usd","shipping":null,"metadata":{"phone":"26377"}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":12,"amount":100,"currency":"usd","receipt_email":true}}}',
 '{"type":"payment_intent.succeeded","created":"1718000000","data":{"object":{"id":"pi_20","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000.75,"data":{"object":{"id":"pi_21","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","data":{"object":{"id":"pi_22","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":null,"data":{"object":{"id":"pi_23","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":"abc","data":{"object":{"id":"pi_24","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1e300,"data":{"object":{"id":"pi_25","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":"NaN","data":{"object":{"id":"pi_26","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":"Infinity","data":{"object":{"id":"pi_27","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":-1,"data":{"object":{"id":"pi_28","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_29","amount":"ten","currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_30","amount":[1],"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_31","amount":1e40,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_32","amount":-5,"currency":"usd"}}}',
 '{"type":"payment_intent.processing","created":1718000000,"data":{"object":{"id":"pi_p","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.payment_failed","created":1718000000,"data":{"object":{"id":"pi_f","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.canceled","created":1718000000,"data":{"object":{"id":"pi_c","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.created","created":1718000000,"data":{"object":{"id":"pi_x","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.requires_action","created":"abc","data":{"object":{"id":"pi_x","amount":100,"currency":"usd"}}}',
 '{"type":"charge.succeeded","created":1718000000,"data":{"object":{"id":"ch_1","payment_intent":"pi_1","amount":500,"amount_refunded":0,"currency":"eur","payment_method_details":{"type":"card"},"billing_details":{"name":"B N","email":"b@x.org","phone":"+263","address":{"country":"ZW"}},"receipt_email":"r@x.org"}}}',
 '{"type":"charge.succeeded","created":1718000000,"data":{"object":{"id":"ch_2","payment_intent":null,"amount":500,"currency":"eur","billing_details":{"email":null},"receipt_email":"r@x.org"}}}',
 '{"type":"charge.failed","created":1718000000,"data":{"object":{"id":"ch_3","amount":500,"currency":"eur","billing_details":"none","payment_method_details":[1]}}}',
 '{"type":"charge.refunded","created":1718000000,"data":{"object":{"id":"ch_4","payment_intent":"pi_4","amount":500,"amount_refunded":500,"currency":"eur"}}}',
 '{"type":"charge.refunded","created":1718000000,"data":{"object":{"id":"ch_5","payment_intent":"pi_5","amount":500,"amount_refunded":200,"currency":"eur"}}}',
 '{"type":"charge.refunded","created":1718000000,"data":{"object":{"id":"ch_6","payment_intent":"pi_6","amount":500,"currency":"eur"}}}',
 '{"type":"charge.refunded","created":1718000000,"data":{"object":{"id":"ch_7","amount_refunded":"x","amount":500,"currency":"eur"}}}',
 '{"type":"charge.refunded","created":1718000000,"data":{"object":{"id":"ch_8","amount_refunded":700,"amount":500,"currency":"mga"}}}',
 '{"type":"charge.dispute.created","created":1718000000,"data":{"object":{"id":"dp_1","charge":"ch_1","payment_intent":"pi_1","status":"needs_response","amount":500,"currency":"usd"}}}',
 '{"type":"charge.dispute.created","created":1718000000,"data":{"object":{"id":"dp_2","charge":"ch_2"}}}',
 '{"type":"charge.dispute.created","created":1718000000,"data":{"object":{"id":"dp_6","charge":"ch_6","payment_intent":"pi_6","status":"lost","amount":500,"currency":"usd"}}}',
 '{"type":"charge.dispute.closed","created":1718000000,"data":{"object":{"id":"dp_3","charge":"ch_3","status":"lost"}}}',
 '{"type":"charge.dispute.closed","created":1718000000,"data":{"object":{"id":"dp_4","charge":"ch_4","status":"won"}}}',
 '{"type":"charge.dispute.closed","created":1718000000,"data":{"object":{"id":"dp_5","status":"warning_closed"}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_1","payment_intent":"pi_cs1","payment_status":"paid","amount_total":2500,"currency":"usd","client_reference_id":"CR1","payment_method_types":["card","link"],"customer_details":{"name":"C D","email":"c@d.org","phone":"+1","address":{"country":"US"}}}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_2","payment_status":"unpaid","amount_total":2500,"currency":"usd"}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_3","payment_status":"no_payment_required","amount_total":0,"currency":"usd","customer_details":null}}}',
 '{"type":"checkout.session.async_payment_succeeded","created":1718000000,"data":{"object":{"id":"cs_4","amount_total":2500,"currency":"usd"}}}',
 '{"type":"checkout.session.async_payment_failed","created":1718000000,"data":{"object":{"id":"cs_5","amount_total":2500,"currency":"usd"}}}',
 '{"type":"checkout.session.expired","created":1718000000,"data":{"object":{"id":"cs_6","amount_total":2500,"currency":"usd"}}}',
 '{"type":"checkout.session.created","created":1718000000,"data":{"object":{"id":"cs_7"}}}',
 '{"type":"customer.created","created":1718000000,"data":{"object":{"id":"cus_1"}}}',
 '{"type":5,"created":1718000000,"data":{"object":{"id":"x"}}}',
 '{"type":null}',
 '{}',
 '{"type":"payment_intent.succeeded"}',
 '{"type":"payment_intent.succeeded","data":null}',
 '{"type":"payment_intent.succeeded","data":{"object":[1,2]}}',
 '{"type":"payment_intent.succeeded","data":{"object":"str"}}',
 '{"type":"payment_intent.succeeded","data":[{"object":{"id":"pi"}}]}',
 '{"type":"charge.succeeded","created":1718000000,"data":{"object":{"id":"ch_u","amount":100,"currency":"usd","billing_details":{"address":"none"}}}}',
 '{"type":"charge.succeeded","created":1718000000,"data":{"object":{"id":"ch_v","amount":100,"currency":"usd","billing_details":{"address":{"country":["Z"]}}}}}',
 '[1,2]', '"scalar"', '42', 'null',
 '{"type":"paymentXintent.succeeded","created":1718000000,"data":{"object":{"id":"pi_w","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_v","amount":100,"currency":"Usd","metadata":{}}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_8","mode":"payment","payment_intent":"pi_cs8","payment_status":"paid","amount_total":900,"currency":"usd"}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_9","mode":"subscription","payment_intent":null,"invoice":"in_9","payment_status":"paid","amount_total":2000,"currency":"usd"}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_10","mode":"setup","payment_intent":null,"payment_status":"no_payment_required","amount_total":null,"currency":null}}}',
 '{"type":"checkout.session.expired","created":1718000000,"data":{"object":{"id":"cs_11","mode":"subscription","amount_total":2000,"currency":"usd"}}}',
 '{"type":"charge.succeeded","created":1718000000,"data":{"object":{"id":"ch_m","payment_intent":"pi_m","captured":false,"amount":1000,"amount_captured":0,"currency":"usd"}}}',
 '{"type":"charge.captured","created":1718000000,"data":{"object":{"id":"ch_m","payment_intent":"pi_m","captured":true,"amount":1000,"amount_captured":700,"currency":"usd"}}}',
 '{"type":"charge.succeeded","created":1718000000,"data":{"object":{"id":"ch_n","payment_intent":"pi_n","captured":true,"amount":1000,"currency":"usd"}}}',
 '{"type":"charge.refunded","created":1718000000,"data":{"object":{"id":"ch_m","payment_intent":"pi_m","captured":false,"amount":1000,"amount_refunded":1000,"currency":"usd"}}}',
 '{"type":"charge.expired","created":1718000000,"data":{"object":{"id":"ch_e","payment_intent":"pi_e","captured":false,"amount":1000,"currency":"usd"}}}',
 '{"type":"charge.captured","created":1718000000,"data":{"object":{"id":"ch_o","payment_intent":"pi_o","captured":true,"amount":1000,"amount_captured":1001,"currency":"usd"}}}',
 '{"type":"charge.refunded","api_version":"2024-06-20","created":1718000000,"data":{"object":{"id":"ch_p","payment_intent":"pi_p","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":1000,"currency":"usd"}}}',
 '{"type":"charge.refunded","api_version":"2025-03-31.basil","created":1718000000,"data":{"object":{"id":"ch_p","payment_intent":"pi_p","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":300,"currency":"usd"}}}',
 '{"type":"charge.refunded","api_version":"2025-03-31.basil","created":1718000000,"data":{"object":{"id":"ch_p","payment_intent":"pi_p","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":100,"currency":"usd"}}}',
 '{"type":"charge.refunded","api_version":"2024-6-20","created":1718000000,"data":{"object":{"id":"ch_p","payment_intent":"pi_p","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":800,"currency":"usd"}}}',
 -- the amount quoted in the error is cut at 40 bytes between characters, never inside one
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_33","amount":"xéééééééééééééééééééééééé","currency":"usd"}}}'
]) WITH ORDINALITY AS t (payload, n);
SELECT payments.stripe_change(NULL) IS NULL AS null_for_null;

-- a thin event (object v2.core.event: Stripe's event destinations, API 2024-09-30.acacia on) names
-- its object without carrying it, and its created is an ISO 8601 string: NULL, whatever its type
-- (stripe-node's V2 Core Event: created: string).  An event of a type that says no status is NULL
-- whatever its created or amounts; the events we read still fail on a created that is no number
SELECT n, pg_temp.change_of(payload) FROM unnest(ARRAY[
 '{"id":"evt_test_65R9Ijk8Y6LV5Oq7Bjx16RwbXZxJ2ZiUP8FpsBn5gGTVA4","object":"v2.core.event","type":"v2.core.event_destination.ping","livemode":false,"created":"2025-10-30T06:20:52.246Z","related_object":{"id":"ed_test_61RM8ltWcTW4mbsxf16RJyfa2xSQLHJJh1sxm7H0KVT6","type":"v2.core.event_destination","url":"/v2/core/event_destinations/ed_test_61RM8ltWcTW4mbsxf16RJyfa2xSQLHJJh1sxm7H0KVT6"}}',
 '{"id":"evt_test_65R9Ijk8Y6LV5Oq7Bjx16RwbXZxJ2ZiUP8FpsBn5gGTVA5","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","livemode":false,"created":"2025-10-30T06:20:52.246Z","related_object":{"id":"mtr_test_61R9IjkFg7HqW1Ynt41JWO8Xd7vWIdPh","type":"billing.meter","url":"/v1/billing/meters/mtr_test_61R9IjkFg7HqW1Ynt41JWO8Xd7vWIdPh"}}',
 '{"object":"v2.core.event","type":"payment_intent.succeeded","created":"2025-10-30T06:20:52.246Z","related_object":{"id":"pi_thin","type":"payment_intent"},"data":{"object":{"id":"pi_thin","amount":100,"currency":"usd"}}}',
 '{"object":"event","type":"customer.created","created":"2025-10-30T06:20:52.246Z","data":{"object":{"id":"cus_1"}}}',
 '{"type":"payment_intent.created","created":"2025-10-30T06:20:52.246Z","data":{"object":{"id":"pi_x","amount":"ten","currency":"usd"}}}',
 '{"type":"checkout.session.completed","created":"Infinity","data":{"object":{"id":"cs_x","payment_status":"no_payment_required","amount_total":"x","currency":"usd"}}}',
 '{"object":"event","type":"payment_intent.succeeded","created":"2025-10-30T06:20:52.246Z","data":{"object":{"id":"pi_iso","amount":100,"currency":"usd"}}}',
 '{"object":"event","type":"charge.succeeded","created":"Infinity","data":{"object":{"id":"ch_inf","payment_intent":"pi_inf","amount":100,"currency":"usd"}}}'
]) WITH ORDINALITY AS t (payload, n);

-- the method is the one used, where the event says it: a charge's payment_method_details.type, an
-- intent's expanded latest_charge or embedded charges (API versions before 2022-11-15: the one
-- that succeeded or is pending, else the latest attempt), else a list of allowed methods only
-- when it has one; a list of several (what the donor could choose from) says nothing
SELECT n, (payments.stripe_change(payload::jsonb)).method FROM unnest(ARRAY[
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_m1","amount":100,"currency":"usd","payment_method_types":["card","link","us_bank_account"]}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_m2","amount":100,"currency":"usd","payment_method_types":["paypal"]}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_m3","amount":100,"currency":"usd","payment_method_types":["card","paypal"],"charges":{"object":"list","data":[{"id":"ch_b","status":"succeeded","payment_method_details":{"type":"paypal"}},{"id":"ch_a","status":"failed","payment_method_details":{"type":"card"}}]}}}}',
 '{"type":"payment_intent.processing","created":1718000000,"data":{"object":{"id":"pi_m4","amount":100,"currency":"usd","payment_method_types":["card","us_bank_account"],"charges":{"data":[{"id":"ch_b","status":"failed","payment_method_details":{"type":"card"}},{"id":"ch_a","status":"pending","payment_method_details":{"type":"us_bank_account"}}]}}}}',
 '{"type":"payment_intent.payment_failed","created":1718000000,"data":{"object":{"id":"pi_m5","amount":100,"currency":"usd","payment_method_types":["card","link"],"charges":{"data":[{"id":"ch_a","status":"failed","payment_method_details":{"type":"card"}}]}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_m6","amount":100,"currency":"usd","payment_method_types":["card","us_bank_account"],"latest_charge":{"id":"ch_a","payment_method_details":{"type":"us_bank_account"}}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_m7","amount":100,"currency":"usd","payment_method_types":["card","link"],"latest_charge":"ch_a","charges":{"data":[]}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_m8","amount":100,"currency":"usd","payment_method_types":["card","link"],"charges":{"data":[1,null,"ch",{"payment_method_details":"x"},{"payment_method_details":{"type":null}}]}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_m9","amount":100,"currency":"usd","payment_method_types":["card"],"charges":{"data":{"0":{"payment_method_details":{"type":"paypal"}}}}}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_m1","payment_intent":"pi_csm1","payment_status":"paid","amount_total":100,"currency":"usd","payment_method_types":["card","paypal"]}}}',
 '{"type":"checkout.session.completed","created":1718000000,"data":{"object":{"id":"cs_m2","payment_intent":"pi_csm2","payment_status":"paid","amount_total":100,"currency":"usd","payment_method_types":["paypal"]}}}',
 '{"type":"charge.succeeded","created":1718000000,"data":{"object":{"id":"ch_m","payment_intent":"pi_m1","amount":100,"currency":"usd","payment_method_details":{"type":"us_bank_account"}}}}'
]) WITH ORDINALITY AS t (payload, n);

-- a Connect event's account is kept in metadata.stripe_account (what reconciliation asks as);
-- the object's own stripe_account never is
SELECT n, (payments.stripe_change(payload::jsonb)).metadata FROM unnest(ARRAY[
 '{"type":"payment_intent.processing","account":"acct_1Conn","created":1718000000,"data":{"object":{"id":"pi_a1","amount":100,"currency":"usd","metadata":{"reference":"R1","z":{"a":[1]}}}}}',
 '{"type":"charge.succeeded","account":"acct_1Conn","created":1718000000,"data":{"object":{"id":"ch_a2","payment_intent":"pi_a2","amount":100,"currency":"usd"}}}',
 '{"type":"payment_intent.succeeded","account":"acct_1Conn","created":1718000000,"data":{"object":{"id":"pi_a3","amount":100,"currency":"usd","metadata":{"stripe_account":"acct_other"}}}}',
 '{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_a4","amount":100,"currency":"usd","metadata":{"stripe_account":"acct_other","reference":"R4"}}}}',
 '{"type":"payment_intent.succeeded","account":null,"created":1718000000,"data":{"object":{"id":"pi_a5","amount":100,"currency":"usd","metadata":{}}}}',
 '{"type":"payment_intent.succeeded","account":7,"created":1718000000,"data":{"object":{"id":"pi_a6","amount":100,"currency":"usd","metadata":"x"}}}',
 '{"type":"customer.created","account":"acct_1Conn","created":1718000000,"data":{"object":{"id":"cus_1"}}}'
]) WITH ORDINALITY AS t (payload, n);

-- through the state machine (rolled back: other tests count payments)
BEGIN;
SELECT payments.register_provider('st_fix', 'stripe', '{"livemode": false}') IS NOT NULL AS registered;
CREATE FUNCTION pg_temp.apply(payload text) RETURNS text LANGUAGE sql AS $$
	SELECT payments.apply_change(NULL, 'st_fix', payments.stripe_change(payload::jsonb)) $$;
-- the intent that allowed several methods, then its charge (and in the other order): the
-- charge's method, whichever came first
SELECT pg_temp.apply('{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_o1","amount":1000,"amount_received":1000,"currency":"usd","payment_method_types":["card","link","us_bank_account"]}}}'),
	   pg_temp.apply('{"type":"charge.succeeded","created":1718000001,"data":{"object":{"id":"ch_o1","payment_intent":"pi_o1","amount":1000,"currency":"usd","payment_method_details":{"type":"us_bank_account"}}}}'),
	   pg_temp.apply('{"type":"charge.succeeded","created":1718000001,"data":{"object":{"id":"ch_o2","payment_intent":"pi_o2","amount":1000,"currency":"usd","payment_method_details":{"type":"paypal"}}}}'),
	   pg_temp.apply('{"type":"payment_intent.succeeded","created":1718000000,"data":{"object":{"id":"pi_o2","amount":1000,"amount_received":1000,"currency":"usd","payment_method_types":["card","paypal"]}}}');
-- a card declined, then paid with PayPal: the method paid with; in the other order too
SELECT pg_temp.apply('{"type":"charge.failed","created":1718000000,"data":{"object":{"id":"ch_o3a","payment_intent":"pi_o3","amount":1000,"currency":"usd","payment_method_details":{"type":"card"}}}}'),
	   pg_temp.apply('{"type":"charge.succeeded","created":1718000005,"data":{"object":{"id":"ch_o3b","payment_intent":"pi_o3","amount":1000,"currency":"usd","payment_method_details":{"type":"paypal"}}}}'),
	   pg_temp.apply('{"type":"charge.succeeded","created":1718000005,"data":{"object":{"id":"ch_o4b","payment_intent":"pi_o4","amount":1000,"currency":"usd","payment_method_details":{"type":"paypal"}}}}'),
	   pg_temp.apply('{"type":"charge.failed","created":1718000000,"data":{"object":{"id":"ch_o4a","payment_intent":"pi_o4","amount":1000,"currency":"usd","payment_method_details":{"type":"card"}}}}');
SELECT provider_ref, status, method FROM payments.payments WHERE provider = 'st_fix' ORDER BY provider_ref;
-- API version before 2025-03-31: 300 of a hold of 1000 captured (reported without its release in
-- amount_refunded), then 1.00 refunded: a partial refund, not nothing
SELECT pg_temp.apply('{"type":"charge.succeeded","api_version":"2024-06-20","created":1718000000,"data":{"object":{"id":"ch_r1","payment_intent":"pi_r1","captured":false,"amount":1000,"amount_captured":0,"amount_refunded":0,"currency":"usd"}}}'),
	   pg_temp.apply('{"type":"charge.captured","api_version":"2024-06-20","created":1718000010,"data":{"object":{"id":"ch_r1","payment_intent":"pi_r1","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":0,"currency":"usd"}}}'),
	   pg_temp.apply('{"type":"charge.refunded","api_version":"2024-06-20","created":1718000020,"data":{"object":{"id":"ch_r1","payment_intent":"pi_r1","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":100,"currency":"usd"}}}');
-- the same with the release counted (700 + 100 refunded): 1.00 refunded too
SELECT pg_temp.apply('{"type":"charge.succeeded","api_version":"2024-06-20","created":1718000000,"data":{"object":{"id":"ch_r2","payment_intent":"pi_r2","captured":false,"amount":1000,"amount_captured":0,"amount_refunded":0,"currency":"usd"}}}'),
	   pg_temp.apply('{"type":"charge.captured","api_version":"2024-06-20","created":1718000010,"data":{"object":{"id":"ch_r2","payment_intent":"pi_r2","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":700,"currency":"usd"}}}'),
	   pg_temp.apply('{"type":"charge.refunded","api_version":"2024-06-20","created":1718000020,"data":{"object":{"id":"ch_r2","payment_intent":"pi_r2","captured":true,"amount":1000,"amount_captured":300,"amount_refunded":800,"currency":"usd"}}}');
SELECT provider_ref, status, amount, amount_refunded, (SELECT sum(f.amount) FROM payments.refunds f WHERE f.payment_id = p.id) AS refunds
  FROM payments.payments p WHERE provider = 'st_fix' AND provider_ref LIKE 'pi_r%' ORDER BY provider_ref;
-- a connected account's payment keeps its account; the object's metadata beside it
SELECT pg_temp.apply('{"type":"payment_intent.processing","account":"acct_1Conn","created":1718000000,"data":{"object":{"id":"pi_c1","amount":1000,"currency":"usd","metadata":{"reference":"C1"}}}}'),
	   pg_temp.apply('{"type":"charge.succeeded","account":"acct_1Conn","created":1718000010,"data":{"object":{"id":"ch_c1","payment_intent":"pi_c1","amount":1000,"currency":"usd","metadata":{"reference":"C1","note":"x"}}}}');
SELECT provider_ref, status, reference, metadata FROM payments.payments WHERE provider = 'st_fix' AND provider_ref = 'pi_c1';
ROLLBACK;

-- a thin event delivered, signed, to a provider of its mode: ignored (it was stored, pending with
-- the error of its created, retried and dead), nothing made of it; its ISO created is its event_at
BEGIN;
SELECT payments.register_provider('st_thin', 'stripe', '{"livemode": false}') IS NOT NULL AS registered;
SELECT payments.add_secret('st_thin', 'whsec_thin') IS NOT NULL AS secret_added;
\set thin '{"id":"evt_test_65R9Ijk8Y6LV5Oq7Bjx16RwbXZxJ2ZiUP8FpsBn5gGTVA4","object":"v2.core.event","type":"v2.core.event_destination.ping","livemode":false,"created":"2025-10-30T06:20:52.246Z","related_object":{"id":"ed_test_61RM8ltWcTW4mbsxf16RJyfa2xSQLHJJh1sxm7H0KVT6","type":"v2.core.event_destination","url":"/v2/core/event_destinations/ed_test_61RM8ltWcTW4mbsxf16RJyfa2xSQLHJJh1sxm7H0KVT6"},"reason":null}'
SELECT floor(extract(epoch FROM clock_timestamp()))::bigint AS now_s \gset
SELECT * FROM payments.ingest('st_thin', jsonb_build_object('stripe-signature', 't=' || :now_s || ',v1=' ||
	encode(hmac(convert_to(:now_s || '.' || :'thin', 'UTF8'), 'whsec_thin'::bytea, 'sha256'), 'hex')),
	convert_to(:'thin', 'UTF8'));
SELECT event_type, event_at, state, attempts, last_error FROM payments.events WHERE provider = 'st_thin';
SELECT count(*) AS payments FROM payments.payments WHERE provider = 'st_thin';
ROLLBACK;
