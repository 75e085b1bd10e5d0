-- Meta / WhatsApp Cloud API (PROVIDERS.md §4): X-Hub-Signature-256, batches split into
-- one event per message and per status, and the GET subscription handshake.
\set SHOW_CONTEXT never
\set sample '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Tendai Moyo"},"wa_id":"263771234567"}],"messages":[{"from":"263771234567","id":"wamid.HBgMMjYzNzcxMjM0NTY3FQIAEhgUM0VCMDRGQTc3QjQ0RkE3QjZBMkUA","timestamp":"1718000000","type":"text","text":{"body":"Hi, I want to pay"}}]},"field":"messages"}]}]}'

-- the published vector: app secret test_app_secret over the compact sample
SELECT payments.verify_meta(:'sample'::bytea, 'sha256=60f11d1c036edea781e814a9bcf7f6b9d35b641d0ebec3230eea5d720f27c835', 'test_app_secret');
-- wrong secret, tampered body
SELECT payments.verify_meta(:'sample'::bytea, 'sha256=60f11d1c036edea781e814a9bcf7f6b9d35b641d0ebec3230eea5d720f27c835', 'other_secret');
SELECT payments.verify_meta((:'sample' || ' ')::bytea, 'sha256=60f11d1c036edea781e814a9bcf7f6b9d35b641d0ebec3230eea5d720f27c835', 'test_app_secret');
-- the header's form is strict: uppercase hex (the Node SDK's == fails too), no prefix, the legacy sha1=, wrong length
SELECT payments.verify_meta(:'sample'::bytea, 'sha256=60F11D1C036EDEA781E814A9BCF7F6B9D35B641D0EBEC3230EEA5D720F27C835', 'test_app_secret');
SELECT payments.verify_meta(:'sample'::bytea, '60f11d1c036edea781e814a9bcf7f6b9d35b641d0ebec3230eea5d720f27c835', 'test_app_secret');
SELECT payments.verify_meta(:'sample'::bytea, 'sha1=60f11d1c036edea781e814a9bcf7f6b9d35b641d', 'test_app_secret');
SELECT payments.verify_meta(:'sample'::bytea, 'sha256=60f11d1c', 'test_app_secret');
SELECT payments.verify_meta(:'sample'::bytea, 'SHA256=60f11d1c036edea781e814a9bcf7f6b9d35b641d0ebec3230eea5d720f27c835', 'test_app_secret');

-- registration needs the handshake's verify_token
SELECT payments.register_provider('wa', 'meta');
SELECT payments.register_provider('wa', 'meta', '{"verify_token": ""}');
SELECT payments.register_provider('wa', 'meta', '{"verify_token": 42}');
-- the README's placeholders pasted as they are
SELECT payments.register_provider('wa', 'meta', E'{"verify_token": "\u2026"}');
SELECT payments.register_provider('wa', 'meta', '{"verify_token": "<a long random string>"}');
SELECT payments.register_provider('wa', 'meta', E'{"verify_token": "clinic-hook-7f3a", "access_token": "EAA\u2026"}');
SELECT payments.register_provider('wa', 'meta', '{"verify_token": "clinic-hook-7f3a"}');
SELECT payments.add_secret('wa', 'test_app_secret') AS old_secret \gset

CREATE FUNCTION pg_temp.meta(body text, secret text DEFAULT 'test_app_secret') RETURNS TABLE (http_status int, outcome text, event_id text)
	LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('wa', jsonb_build_object('x-hub-signature-256',
		'sha256=' || encode(hmac(convert_to(body, 'UTF8'), convert_to(secret, 'UTF8'), 'sha256'), 'hex')), convert_to(body, 'UTF8'))
$$;

-- one message: one event, its wamid the id
SELECT * FROM pg_temp.meta(:'sample');
SELECT * FROM pg_temp.meta(:'sample');
SELECT event_id, event_type, event_at = to_timestamp(1718000000) AS event_at_ok,
	   payload -> 'message' -> 'text' ->> 'body' AS text, payload -> 'contacts' -> 0 ->> 'wa_id' AS wa_id,
	   payload -> 'metadata' ->> 'phone_number_id' AS phone_number_id
  FROM payments.events WHERE provider = 'wa' ORDER BY id;

-- a batch: two entries, messages and statuses; each status of a wamid is its own event
\set batch '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"106"},"statuses":[{"id":"wamid.OUT1","status":"sent","timestamp":"1718000100","recipient_id":"263771234567"},{"id":"wamid.OUT1","status":"delivered","timestamp":"1718000105","recipient_id":"263771234567"}]}}]},{"id":"2","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"106"},"messages":[{"from":"263772222222","id":"wamid.IN2","timestamp":"1718000110","type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"donate","title":"Donate"}}}],"statuses":[{"id":"wamid.OUT2","status":"read","timestamp":"1718000120","recipient_id":"263772222222"}]}}]}]}'
SELECT * FROM pg_temp.meta(:'batch');
SELECT event_id, event_type, extract(epoch FROM event_at) AS event_at FROM payments.events
 WHERE provider = 'wa' AND event_id <> 'wamid.HBgMMjYzNzcxMjM0NTY3FQIAEhgUM0VCMDRGQTc3QjQ0RkE3QjZBMkUA' ORDER BY event_id;
-- the same batch again is a duplicate; a batch with one new status stores only that one
SELECT * FROM pg_temp.meta(:'batch');
SELECT * FROM pg_temp.meta(replace(:'batch', '"status":"read"', '"status":"failed"'));
SELECT count(*) AS meta_events FROM payments.events WHERE provider = 'wa';

-- a change with neither messages nor statuses is kept whole, named by the hash of its body
\set other '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"account_update","value":{"event":"VERIFIED_ACCOUNT"}}]}]}'
SELECT http_status, outcome, event_id = 'sha256:' || encode(sha256(convert_to(:'other', 'UTF8')), 'hex') AS id_is_body_hash
  FROM pg_temp.meta(:'other');
SELECT event_type FROM payments.events WHERE event_id LIKE 'sha256:%';

-- a message or status without an id, or a status without a status, makes the delivery invalid (nothing stored)
SELECT * FROM pg_temp.meta('{"entry":[{"changes":[{"value":{"messages":[{"type":"text"}]}}]}]}');
SELECT * FROM pg_temp.meta('{"entry":[{"changes":[{"value":{"messages":[{"id":42}]}}]}]}');
SELECT * FROM pg_temp.meta('{"entry":[{"changes":[{"value":{"statuses":[{"id":"wamid.X"}]}}]}]}');
SELECT * FROM pg_temp.meta('{"entry":[{"changes":[{"value":{"messages":[{"id":"wamid.OK"}, {"id":null}]}}]}]}');
SELECT count(*) FROM payments.events WHERE event_id = 'wamid.OK';
-- odd shapes never raise: an entry that is not an array, a timestamp that is not a number
SELECT * FROM pg_temp.meta('{"entry":{"changes":[{"value":{"messages":[{"id":"wamid.ODD","timestamp":"soon"}]}}]}}');
SELECT event_id, event_at FROM payments.events WHERE event_id = 'wamid.ODD';
SELECT http_status, outcome FROM pg_temp.meta('{"entry":"nothing"}');
SELECT * FROM pg_temp.meta('[1,2]');

-- rotation: a new app secret and the old one verify until the old one is revoked
SELECT payments.add_secret('wa', 'new_app_secret') IS NOT NULL AS added;
SELECT http_status, outcome FROM pg_temp.meta(replace(:'sample', 'wamid.H', 'wamid.R1'), 'new_app_secret');
SELECT http_status, outcome FROM pg_temp.meta(replace(:'sample', 'wamid.H', 'wamid.R2'), 'test_app_secret');
SELECT payments.revoke_secret(:old_secret);
SELECT http_status, outcome FROM pg_temp.meta(replace(:'sample', 'wamid.H', 'wamid.R3'), 'test_app_secret');
SELECT * FROM payments.ingest('wa', '{}', convert_to(:'sample', 'UTF8'));
SELECT reason, count(*) FROM payments.rejections WHERE provider = 'wa' GROUP BY 1 ORDER BY 1;

-- the GET handshake
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3a', '1158201444');
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3b', '1158201444');
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3', '1158201444');
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3ab', '1158201444');
SELECT * FROM payments.meta_subscribe('wa', 'unsubscribe', 'clinic-hook-7f3a', '1158201444');
SELECT * FROM payments.meta_subscribe('wa', NULL, NULL, NULL);
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3a', '');
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3a', '<script>');
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3a', 'abc-DEF_123');
SELECT * FROM payments.meta_subscribe('wa', 'subscribe', 'clinic-hook-7f3a', repeat('9', 257));
SELECT * FROM payments.meta_subscribe('nobody', 'subscribe', 'clinic-hook-7f3a', '1');
SELECT payments.register_provider('shop', 'stripe');
SELECT * FROM payments.meta_subscribe('shop', 'subscribe', 'clinic-hook-7f3a', '1');
SELECT * FROM payments.meta_subscribe(NULL, 'subscribe', 'x', '1');
