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
