-- Standard Webhooks verification (PROVIDERS.md §6): the spec's vector, then the
-- edge cases with the verdict we chose.
\set body '{"test": 2432232314}'
\set secret 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
\set id 'msg_p5jXN8AQM9LWM0D4loKWxJek'
\set sig 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
\set at 'to_timestamp(1614265330)'

-- the vector verifies, with and without the whsec_ prefix on the secret
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 300, :at);

-- several signatures, space-separated: rotation and unknown versions (v1a is ignored in 0.1.0)
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330',
	'v1,' || repeat('A', 43) || '= v1a,c29tZQ== ' || :'sig', :'secret', 300, :at);
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

-- unusable secrets are a caller's error
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', 'whsec_not base64!', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', 'whsec_c2hvcnQ=', 300, :at);
SELECT payments.verify_standard(:'body'::bytea, :'id', '1614265330', :'sig', :'secret', -5, :at);
