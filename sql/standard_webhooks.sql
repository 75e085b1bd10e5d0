-- Standard Webhooks verification (PROVIDERS.md §6): the spec's vector, then the
-- edge cases with the verdict we chose.
\set body '{"test": 2432232314}'
\set secret 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
\set id 'msg_p5jXN8AQM9LWM0D4loKWxJek'
\set sig 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
\set at 'to_timestamp(1614265330)'
-- an Ed25519 key pair made for these tests, and its v1a signature of the same message
\set pk 'whpk_3uQm5xb4DiC0ufrJDEaI3pJhGyq01FcFGXh8wmLZn/w='
\set v1a 'v1a,2rW4k3tBhEFDDi9ilzBfs/pwUhdbLxuc858KGA9XZyxQN3CKN9XYQyhCGylkdRUjMvtzuhSo9Bx+UEXbR/g3Cw=='

-- the vector verifies, with and without the whsec_ prefix on the secret
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 300, :at);

-- a secret without its base64 padding is the same key, as the libraries take it (a 32-byte key:
-- 43 characters); a length no base64 has, '=' inside, or bits past the key's end are refused
SELECT payments.sign_webhook('msg_1', 1614265330, :'body', 'whsec_j82H/BJ+HPaRxOp5NnM5jNKjDodVkwiI1I4ALfrQ+4Y')
	 = payments.sign_webhook('msg_1', 1614265330, :'body', 'whsec_j82H/BJ+HPaRxOp5NnM5jNKjDodVkwiI1I4ALfrQ+4Y=') AS same_key;
SELECT payments.verify_standard(:'body'::bytea, 'msg_1', '1614265330',
	payments.sign_webhook('msg_1', 1614265330, :'body', 'whsec_j82H/BJ+HPaRxOp5NnM5jNKjDodVkwiI1I4ALfrQ+4Y='),
	'whsec_j82H/BJ+HPaRxOp5NnM5jNKjDodVkwiI1I4ALfrQ+4Y', 300, :at);
SELECT payments.secret_problem('standard', s) FROM (VALUES ('whsec_j82H/BJ+HPaRxOp5NnM5jNKjDodVkwiI1I4ALfrQ+4Z'),
	('whsec_j82H/BJ+HPaRxOp5NnM5jNKjDodVkwiI1I4ALfrQ+'), ('whsec_j82H/BJ+HPaRxOp5NnM5jNKj=odVkwiI1I4ALfrQ+4Y'),
	('whpk_3uQm5xb4DiC0ufrJDEaI3pJhGyq01FcFGXh8wmLZn/w')) AS x (s);

-- several signatures, space-separated: rotation, other versions, unknown versions
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330',
	'v1,' || repeat('A', 43) || '= ' || :'v1a' || ' v2,xyz ' || :'sig', :'secret', 300, :at);
-- extra spaces between items are harmless
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', '  ' || :'sig' || '  ', :'secret', 300, :at);

-- tampered body, other id, other timestamp, other secret
SELECT payments.verify_standard((:'body' || ' ')::bytea, :'id', '1614265330', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, 'msg_other', '1614265330', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265331', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', 'whsec_' || encode(decode(repeat('ab', 24), 'hex'), 'base64'), 300, :at);

-- tolerance both ways, as the libraries (±300 s)
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', 300, to_timestamp(1614265630));
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', 300, to_timestamp(1614265631));
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', 300, to_timestamp(1614265030));
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', 300, to_timestamp(1614265029));

-- the timestamp must be plain unix seconds (JS parseInt accepts "…abc", Python float() accepts "1.6e9")
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330abc', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330.9', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '', :'sig', :'secret', 300, :at);
-- the id may not be empty nor contain '.', spaces or control characters
SELECT payments.verify_standard(:'body'::bytea, '', '1614265330', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, 'msg.1', '1614265330', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, 'msg 1', '1614265330', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, repeat('m', 256), '1614265330', :'sig', :'secret', 300, :at);

-- signature items: no comma (JS skips it, Python raises), two commas, bad length, no v1 at all
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', 'v1' || substr(:'sig', 4), :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig' || ',x', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', ',' || substr(:'sig', 4), :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', left(:'sig', 46), :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', 'v2,' || substr(:'sig', 4), :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', '', :'secret', 300, :at);
-- the signature is compared as canonical base64, like the JS library: a wrong last character
-- or a non-canonical encoding of the right bytes fails
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', rtrim(:'sig', '=') || 'A', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', left(:'sig', 45) || 'F=', :'secret', 300, :at);

-- v1a: Ed25519 signatures checked with whpk_ public keys
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'v1a', :'pk', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig' || ' ' || :'v1a', :'pk', 300, :at);
SELECT payments.verify_standard((:'body' || ' ')::bytea, :'id', '1614265330', :'v1a', :'pk', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, 'msg_other', '1614265330', :'v1a', :'pk', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'v1a', 'whpk_fxEmmFbpQDGwhV7N7jAuWca5NMsNUr4xXvxzLRp473U=', 300, :at);
-- a public key does not check v1 (HMAC) signatures, nor an HMAC secret v1a ones
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'pk', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'v1a', :'secret', 300, :at);
-- malformed v1a items: wrong length, not base64
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', 'v1a,c29tZQ==', :'pk', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', 'v1a,' || repeat('!', 88), :'pk', 300, :at);
-- tolerance applies to v1a too
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'v1a', :'pk', 300, to_timestamp(1614265631));

-- unusable secrets are a caller's error
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', 'whsec_not base64!', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', 'whsec_c2hvcnQ=', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'v1a', 'whpk_c2hvcnQ=', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'v1a', 'whsk_' || repeat('A', 86) || '==', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', -5, :at);

-- Small-order public keys (libsodium's list: y = 0, 1, p-1, p, p+1 and the two points of order
-- 8, with either sign bit) are refused: with one, R = the identity and S = 0 verify any message.
\set forged 'v1a,AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=='
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'forged',
	'whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', 300, :at);
SELECT payments.register_provider('sw', 'standard');
CREATE FUNCTION pg_temp.try_add_secret(secret text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	PERFORM payments.add_secret('sw', secret);
	RETURN 'added';
EXCEPTION WHEN invalid_parameter_value THEN
	RETURN SQLERRM;
END
$$;
SELECT k, pg_temp.try_add_secret(k) FROM (VALUES
	('whpk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='), ('whpk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIA='),
	('whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='), ('whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIA='),
	('whpk_JuiVj8KyJ7BFw/SJ8u+Y8NXfrAXTxjM5sTgCiG1T/AU='), ('whpk_JuiVj8KyJ7BFw/SJ8u+Y8NXfrAXTxjM5sTgCiG1T/IU='),
	('whpk_xxdqcD1N2E+6PAt2DRBnDyogU/osOczGTsf9d5KsA3o='), ('whpk_xxdqcD1N2E+6PAt2DRBnDyogU/osOczGTsf9d5KsA/o='),
	('whpk_7P///////////////////////////////////////38='), ('whpk_7P////////////////////////////////////////8='),
	('whpk_7f///////////////////////////////////////38='), ('whpk_7f////////////////////////////////////////8='),
	('whpk_7v///////////////////////////////////////38='), ('whpk_7v////////////////////////////////////////8='),
	-- without padding, the same key
	('whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'),
	-- a normal key is added
	(:'pk')) AS x (k);
-- written by hand (payments_admin may write payments.secrets), the same check
INSERT INTO payments.secrets (provider, secret) VALUES ('sw', 'whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=');
-- one kept from before the check verifies nothing
ALTER TABLE payments.secrets DISABLE TRIGGER secrets_check;
INSERT INTO payments.secrets (provider, secret) VALUES ('sw', 'whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=');
ALTER TABLE payments.secrets ENABLE TRIGGER secrets_check;
CREATE FUNCTION pg_temp.sw(id text, body text, signature text) RETURNS TABLE (http_status int, outcome text, event_id text)
	LANGUAGE sql AS $$
	SELECT * FROM payments.ingest('sw', jsonb_build_object('webhook-id', id,
		'webhook-timestamp', extract(epoch FROM now())::bigint::text, 'webhook-signature', signature),
		convert_to(body, 'UTF8'))
$$;
SELECT * FROM pg_temp.sw('msg_forged', '{"type": "forged"}', :'forged');
SELECT reason FROM payments.rejections WHERE provider = 'sw' ORDER BY id DESC LIMIT 1;
DELETE FROM payments.secrets WHERE provider = 'sw' AND secret LIKE 'whpk_AQAA%';

-- At most 8 v1a items are checked (a sender sends one per key): the genuine one among the first
-- 8 verifies, the 9th is not looked at
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330',
	repeat('v1a,' || repeat('A', 86) || '== ', 7) || :'v1a', :'pk', 300, :at) AS seventh_of_8;
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330',
	repeat('v1a,' || repeat('A', 86) || '== ', 8) || :'v1a', :'pk', 300, :at) AS ninth;
-- v1 items do not count, nor does the cap apply to them
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330',
	repeat('v1,' || repeat('A', 43) || '= ', 20) || repeat('v1a,' || repeat('A', 86) || '== ', 7) || :'v1a', :'pk', 300, :at) AS eighth_v1a;
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330',
	repeat('v1,' || repeat('A', 43) || '= ', 20) || :'sig', :'secret', 300, :at) AS twenty_first_v1;

-- a verified event's payload is the sender's: a top-level "hash" of 6,400 bytes that do not
-- compress is stored (the index of Paynow's hashes takes only theirs)
SELECT payments.add_secret('sw', :'secret') IS NOT NULL AS added;
SELECT string_agg(md5(g::text), '') AS long_value FROM generate_series(1, 200) g \gset
SELECT '{"type": "long.hash", "hash": "' || :'long_value' || '"}' AS long_body \gset
SELECT * FROM pg_temp.sw('msg_long_hash', :'long_body',
	payments.sign_webhook('msg_long_hash', extract(epoch FROM now())::bigint, :'long_body', :'secret'));
SELECT event_id, length(payload ->> 'hash') FROM payments.events WHERE provider = 'sw';

-- two webhook-signature lines joined as HTTP joins them (", "): the comma left after the first
-- line's last item is taken off; a comma at the very end, or two in an item, is still malformed
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330',
	'v1,' || repeat('A', 43) || '=, ' || :'sig', :'secret', 300, :at) AS joined_lines;
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig' || ',', :'secret', 300, :at) AS comma_at_end;
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig' || ',x ' || :'sig', :'secret', 300, :at) AS two_commas;
-- both header sets: svix-* are read first, as the svix library reads them (webhook-* here carry a
-- signature of nothing)
SELECT extract(epoch FROM now())::bigint AS now_ts \gset
SELECT * FROM payments.ingest('sw', jsonb_build_object(
		'webhook-id', 'msg_other', 'webhook-timestamp', :'now_ts', 'webhook-signature', 'v1,' || repeat('A', 43) || '=',
		'svix-id', 'msg_both', 'svix-timestamp', :'now_ts',
		'svix-signature', payments.sign_webhook('msg_both', :'now_ts', '{"type": "both.sets"}', :'secret')),
	convert_to('{"type": "both.sets"}', 'UTF8'));

DELETE FROM payments.events WHERE provider = 'sw';
DELETE FROM payments.providers WHERE name = 'sw';
