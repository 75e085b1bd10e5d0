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
