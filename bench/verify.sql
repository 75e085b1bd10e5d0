-- Signature verification per kind, for bench/throughput.sh: µs per call of each SQL verify_*
-- function on a valid signature over a 1 KB and a 64 KB body, timed with clock_timestamp() in a
-- PL/pgSQL loop, minus the same loop assigning a trivial expression instead (the loop overhead).
-- Signatures are made with pgcrypto. Prints "kind µs_1KB µs_64KB".
CREATE FUNCTION pg_temp.bench_verify(kind text, size integer, n integer) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
	body	bytea := convert_to('{"data":"' || repeat('x', size - 11) || '"}', 'UTF8');
	ts		text := extract(epoch FROM now())::bigint::text;
	key		bytea := '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea;
	secret	text;
	sig		text;
	hdrs	jsonb;
	settings jsonb := '{"header": "x-sig"}';
	r		text;
	t0		timestamptz;
	t1		timestamptz;
	t2		timestamptz;
BEGIN
	IF kind = 'stripe' THEN
		secret := 'whsec_bench_stripe_secret_0123456789';
		sig := 't=' || ts || ',v1=' || encode(hmac(convert_to(ts || '.', 'UTF8') || body, convert_to(secret, 'UTF8'), 'sha256'), 'hex');
		r := payments.verify_stripe(body, sig, secret);
	ELSIF kind = 'standard' THEN
		secret := 'whsec_' || encode(key, 'base64');
		sig := 'v1,' || encode(hmac(convert_to('msg_bench.' || ts || '.', 'UTF8') || body, key, 'sha256'), 'base64');
		r := payments.verify_standard(body, 'msg_bench', ts, sig, secret);
	ELSIF kind = 'meta' THEN
		secret := 'bench_meta_app_secret';
		sig := 'sha256=' || encode(hmac(body, convert_to(secret, 'UTF8'), 'sha256'), 'hex');
		r := payments.verify_meta(body, sig, secret);
	ELSIF kind = 'eversend' THEN
		secret := 'bench_eversend_secret';
		sig := encode(hmac(body, convert_to(secret, 'UTF8'), 'sha512'), 'hex');
		r := payments.verify_eversend(body, sig, secret);
	ELSIF kind = 'hmac' THEN
		secret := 'bench_hmac_secret';
		hdrs := jsonb_build_object('x-sig', encode(hmac(body, convert_to(secret, 'UTF8'), 'sha256'), 'hex'));
		r := payments.verify_hmac(body, hdrs, secret, settings);
	END IF;
	IF r IS DISTINCT FROM 'valid' THEN
		RAISE EXCEPTION 'bench: % over % bytes does not verify: %', kind, size, r;
	END IF;

	t0 := clock_timestamp();
	IF kind = 'stripe' THEN
		FOR i IN 1..n LOOP r := payments.verify_stripe(body, sig, secret); END LOOP;
	ELSIF kind = 'standard' THEN
		FOR i IN 1..n LOOP r := payments.verify_standard(body, 'msg_bench', ts, sig, secret); END LOOP;
	ELSIF kind = 'meta' THEN
		FOR i IN 1..n LOOP r := payments.verify_meta(body, sig, secret); END LOOP;
	ELSIF kind = 'eversend' THEN
		FOR i IN 1..n LOOP r := payments.verify_eversend(body, sig, secret); END LOOP;
	ELSIF kind = 'hmac' THEN
		FOR i IN 1..n LOOP r := payments.verify_hmac(body, hdrs, secret, settings); END LOOP;
	END IF;
	t1 := clock_timestamp();
	FOR i IN 1..n LOOP r := coalesce(sig, secret); END LOOP;
	t2 := clock_timestamp();
	RETURN round((extract(epoch FROM (t1 - t0)) - extract(epoch FROM (t2 - t1))) * 1e6 / n, 2);
END
$$;

SELECT k, pg_temp.bench_verify(k, 1024, 20000), pg_temp.bench_verify(k, 65536, 2000)
  FROM unnest(ARRAY['stripe', 'standard', 'meta', 'eversend', 'hmac']) k;
