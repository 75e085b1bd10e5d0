-- payments 0.1.0: verified, durable webhook events inside PostgreSQL.
\echo Use "CREATE EXTENSION payments" to load this file. \quit

--------------------------------------------------------------------------------------------------
-- Kinds of provider this version can verify
--------------------------------------------------------------------------------------------------

CREATE TABLE payments.provider_kinds (
	kind		text PRIMARY KEY,
	settings	text[] NOT NULL,
	description	text NOT NULL
);
COMMENT ON TABLE payments.provider_kinds IS
	'Signature schemes this version verifies, and the settings keys each accepts';

INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('stripe', '{tolerance}',
	 'Stripe-Signature: HMAC-SHA256 over "t.body", hex, key = the whole whsec_ secret');
INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('standard', '{tolerance}',
	 'Standard Webhooks (and Svix): HMAC-SHA256 over "id.timestamp.body", base64, key = base64-decoded whsec_ secret');

--------------------------------------------------------------------------------------------------
-- Configuration
--------------------------------------------------------------------------------------------------

CREATE TABLE payments.providers (
	name		text PRIMARY KEY
				CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
	kind		text NOT NULL REFERENCES payments.provider_kinds (kind),
	settings	jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE payments.providers IS
	'Webhook senders; name is the {provider} of the URL /webhooks/{provider}';

CREATE TABLE payments.secrets (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider	text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	secret		text NOT NULL CHECK (secret <> ''),
	created_at	timestamptz NOT NULL DEFAULT now(),
	expires_at	timestamptz,
	revoked_at	timestamptz
);
CREATE INDEX secrets_provider_idx ON payments.secrets (provider);
COMMENT ON TABLE payments.secrets IS
	'Signing secrets per provider; every live secret is tried, so secrets can be rotated';

--------------------------------------------------------------------------------------------------
-- Events and rejections
--------------------------------------------------------------------------------------------------

CREATE TABLE payments.events (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider		text NOT NULL REFERENCES payments.providers (name),
	event_id		text NOT NULL,
	event_type		text,
	event_at		timestamptz,
	received_at		timestamptz NOT NULL DEFAULT now(),
	body			bytea NOT NULL,
	payload			jsonb NOT NULL,
	headers			jsonb NOT NULL,
	source_ip		inet,
	request_id		text,
	state			text NOT NULL DEFAULT 'pending'
					CHECK (state IN ('pending', 'applied', 'ignored', 'dead')),
	attempts		integer NOT NULL DEFAULT 0,
	next_attempt_at	timestamptz,
	last_error		text,
	UNIQUE (provider, event_id)
);
CREATE INDEX events_received_at_idx ON payments.events USING brin (received_at);
COMMENT ON TABLE payments.events IS
	'Every verified delivery, once per (provider, event_id): raw body as signed, parsed payload, headers without credentials';
COMMENT ON COLUMN payments.events.body IS 'The request body exactly as received and verified';
COMMENT ON COLUMN payments.events.event_at IS 'The provider''s time of the event, where the payload gives one';
COMMENT ON COLUMN payments.events.state IS
	'pending: to be applied; applied: changed a payment; ignored: valid, nothing to do; dead: gave up after retries';

CREATE TABLE payments.rejections (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider		text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	received_at		timestamptz NOT NULL DEFAULT now(),
	outcome			text NOT NULL CHECK (outcome IN ('rejected', 'invalid')),
	reason			text NOT NULL,
	detail			text,
	source_ip		inet,
	request_id		text,
	body_sha256		bytea NOT NULL,
	body_size		integer NOT NULL,
	headers			jsonb NOT NULL
);
CREATE INDEX rejections_provider_received_at_idx ON payments.rejections (provider, received_at);
COMMENT ON TABLE payments.rejections IS
	'Deliveries refused: bad or missing signature, timestamp outside tolerance, no live secret (rejected, 401), or a verified body that is not a usable event (invalid, 400)';

--------------------------------------------------------------------------------------------------
-- Verification primitives (C)
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.verify_stripe(body bytea, header text, secret text,
									   tolerance integer DEFAULT 300,
									   at timestamptz DEFAULT now())
RETURNS text
AS 'MODULE_PATHNAME', 'verify_stripe'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.verify_stripe(bytea, text, text, integer, timestamptz) IS
	'Verifies a Stripe-Signature header over a raw body at a given time; returns valid or the rejection reason';

CREATE FUNCTION payments.verify_standard(body bytea, msg_id text, msg_timestamp text,
										 signature text, secret text,
										 tolerance integer DEFAULT 300,
										 at timestamptz DEFAULT now())
RETURNS text
AS 'MODULE_PATHNAME', 'verify_standard'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.verify_standard(bytea, text, text, text, text, integer, timestamptz) IS
	'Verifies Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature) over a raw body; returns valid or the rejection reason';

CREATE FUNCTION payments.secret_problem(kind text, secret text)
RETURNS text
AS 'MODULE_PATHNAME', 'secret_problem'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.secret_problem(text, text) IS
	'Why a secret cannot be used by a kind of provider, or NULL when it can';

CREATE FUNCTION payments.settings_problem(kind text, settings jsonb)
RETURNS text
AS 'MODULE_PATHNAME', 'settings_problem'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.settings_problem(text, jsonb) IS
	'Why settings do not suit a kind of provider (beyond unknown keys and tolerance), or NULL';

--------------------------------------------------------------------------------------------------
-- Configuration API
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.check_settings(kind text, settings jsonb)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	allowed	text[];
	unknown	text;
	tol		jsonb;
	problem	text;
BEGIN
	SELECT k.settings INTO allowed FROM payments.provider_kinds k WHERE k.kind = check_settings.kind;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown provider kind "%"', kind
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Kinds in this version: ' ||
						 (SELECT string_agg(k.kind, ', ' ORDER BY k.kind) FROM payments.provider_kinds k) || '.';
	END IF;
	IF settings IS NULL OR jsonb_typeof(settings) <> 'object' THEN
		RAISE EXCEPTION 'provider settings must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	allowed := allowed || '{receipt_prefix}'::text[];	-- settings every kind has
	SELECT k INTO unknown FROM jsonb_object_keys(settings) AS k WHERE k <> ALL (allowed) LIMIT 1;
	IF unknown IS NOT NULL THEN
		RAISE EXCEPTION 'unknown setting "%" for provider kind "%"', unknown, kind
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Settings of this kind: ' || array_to_string(allowed, ', ') || '.';
	END IF;
	tol := settings -> 'tolerance';
	IF tol IS NOT NULL AND (jsonb_typeof(tol) <> 'number'
							OR tol::numeric <> trunc(tol::numeric)
							OR tol::numeric NOT BETWEEN 1 AND 604800) THEN
		RAISE EXCEPTION 'setting "tolerance" must be a whole number of seconds between 1 and 604800, not %', tol
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF settings ? 'receipt_prefix' AND coalesce(settings ->> 'receipt_prefix', '') !~ '^[A-Z0-9]{1,10}$' THEN
		RAISE EXCEPTION 'setting "receipt_prefix" must be 1 to 10 characters of A-Z and 0-9'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF settings ? 'currency' AND NOT EXISTS (SELECT FROM payments.currencies c
											 WHERE c.code = settings ->> 'currency') THEN
		RAISE EXCEPTION 'setting "currency" must be an ISO 4217 code in upper case from payments.currencies, not %',
			settings -> 'currency'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	problem := payments.settings_problem(kind, settings);
	IF problem IS NOT NULL THEN
		RAISE EXCEPTION 'unusable settings for provider kind "%": %', kind, problem
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;
COMMENT ON FUNCTION payments.check_settings(text, jsonb) IS
	'Raises a clear error if settings do not suit the kind of provider';

CREATE FUNCTION payments.register_provider(name text, kind text, settings jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF name IS NULL OR name !~ '^[a-z0-9][a-z0-9_-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid provider name "%"', name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A provider name is 1 to 63 characters of a-z, 0-9, "_" and "-", starting with a letter or digit; it appears in the URL /webhooks/{name}.';
	END IF;
	PERFORM payments.check_settings(kind, settings);
	INSERT INTO payments.providers AS p (name, kind, settings)
	VALUES (register_provider.name, register_provider.kind, register_provider.settings)
	ON CONFLICT ON CONSTRAINT providers_pkey DO UPDATE
		SET settings = excluded.settings, updated_at = now()
		WHERE p.kind = excluded.kind;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'provider "%" is already registered with another kind', name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'A provider keeps its kind; register the new one under another name.';
	END IF;
END
$$;
COMMENT ON FUNCTION payments.register_provider(text, text, jsonb) IS
	'Registers a webhook provider, or replaces the settings of an existing one of the same kind';

CREATE FUNCTION payments.add_secret(provider text, secret text, expires_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	provider_kind	text;
	problem			text;
	new_id			bigint;
BEGIN
	SELECT p.kind INTO provider_kind FROM payments.providers p WHERE p.name = add_secret.provider;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown provider "%"', provider
			USING ERRCODE = 'undefined_object';
	END IF;
	IF secret IS NULL THEN
		RAISE EXCEPTION 'secret must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	problem := payments.secret_problem(provider_kind, secret);
	IF problem IS NOT NULL THEN
		RAISE EXCEPTION 'unusable secret for provider "%": %', provider, problem
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF expires_at IS NOT NULL AND expires_at <= now() THEN
		RAISE EXCEPTION 'expires_at is in the past'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give a future time, or NULL for a secret that lives until revoked.';
	END IF;
	INSERT INTO payments.secrets (provider, secret, expires_at)
	VALUES (add_secret.provider, add_secret.secret, add_secret.expires_at)
	RETURNING id INTO new_id;
	RETURN new_id;
END
$$;
COMMENT ON FUNCTION payments.add_secret(text, text, timestamptz) IS
	'Adds a live signing secret to a provider and returns its id; older secrets stay valid until revoked or expired';

CREATE FUNCTION payments.revoke_secret(id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE payments.secrets s SET revoked_at = now()
	WHERE s.id = revoke_secret.id AND s.revoked_at IS NULL;
	IF NOT FOUND THEN
		IF EXISTS (SELECT FROM payments.secrets s WHERE s.id = revoke_secret.id) THEN
			RAISE NOTICE 'secret % was already revoked', id;
		ELSE
			RAISE EXCEPTION 'unknown secret %', id USING ERRCODE = 'undefined_object';
		END IF;
	END IF;
END
$$;
COMMENT ON FUNCTION payments.revoke_secret(bigint) IS
	'Revokes a secret at once: deliveries signed only with it are rejected from now on';

--------------------------------------------------------------------------------------------------
-- The entry point of the shim (C)
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.ingest(provider text, headers jsonb, body bytea,
								source_ip inet DEFAULT NULL, request_id text DEFAULT NULL)
RETURNS TABLE (http_status integer, outcome text, event_id text)
AS 'MODULE_PATHNAME', 'ingest'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION payments.ingest(text, jsonb, bytea, inet, text) IS
	'Verifies one webhook delivery and stores it once; returns the HTTP status and outcome for the sender';

--------------------------------------------------------------------------------------------------
-- Payments: currencies, the state machine, receipts
--------------------------------------------------------------------------------------------------

CREATE TABLE payments.currencies (
	code		char(3) PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
	exponent	smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4)
);
COMMENT ON TABLE payments.currencies IS
	'ISO 4217 currencies and their minor-unit exponents: 2 for USD (cents), 0 for UGX and JPY, 3 for KWD';

INSERT INTO payments.currencies (code, exponent) VALUES
	('AED',2), ('AFN',2), ('ALL',2), ('AMD',2), ('ANG',2), ('AOA',2), ('ARS',2), ('AUD',2), ('AWG',2),
	('AZN',2), ('BAM',2), ('BBD',2), ('BDT',2), ('BGN',2), ('BHD',3), ('BIF',0), ('BMD',2), ('BND',2),
	('BOB',2), ('BOV',2), ('BRL',2), ('BSD',2), ('BTN',2), ('BWP',2), ('BYN',2), ('BZD',2), ('CAD',2),
	('CDF',2), ('CHE',2), ('CHF',2), ('CHW',2), ('CLF',4), ('CLP',0), ('CNY',2), ('COP',2), ('COU',2),
	('CRC',2), ('CUP',2), ('CVE',2), ('CZK',2), ('DJF',0), ('DKK',2), ('DOP',2), ('DZD',2), ('EGP',2),
	('ERN',2), ('ETB',2), ('EUR',2), ('FJD',2), ('FKP',2), ('GBP',2), ('GEL',2), ('GHS',2), ('GIP',2),
	('GMD',2), ('GNF',0), ('GTQ',2), ('GYD',2), ('HKD',2), ('HNL',2), ('HTG',2), ('HUF',2), ('IDR',2),
	('ILS',2), ('INR',2), ('IQD',3), ('IRR',2), ('ISK',0), ('JMD',2), ('JOD',3), ('JPY',0), ('KES',2),
	('KGS',2), ('KHR',2), ('KMF',0), ('KPW',2), ('KRW',0), ('KWD',3), ('KYD',2), ('KZT',2), ('LAK',2),
	('LBP',2), ('LKR',2), ('LRD',2), ('LSL',2), ('LYD',3), ('MAD',2), ('MDL',2), ('MGA',2), ('MKD',2),
	('MMK',2), ('MNT',2), ('MOP',2), ('MRU',2), ('MUR',2), ('MVR',2), ('MWK',2), ('MXN',2), ('MXV',2),
	('MYR',2), ('MZN',2), ('NAD',2), ('NGN',2), ('NIO',2), ('NOK',2), ('NPR',2), ('NZD',2), ('OMR',3),
	('PAB',2), ('PEN',2), ('PGK',2), ('PHP',2), ('PKR',2), ('PLN',2), ('PYG',0), ('QAR',2), ('RON',2),
	('RSD',2), ('RUB',2), ('RWF',0), ('SAR',2), ('SBD',2), ('SCR',2), ('SDG',2), ('SEK',2), ('SGD',2),
	('SHP',2), ('SLE',2), ('SOS',2), ('SRD',2), ('SSP',2), ('STN',2), ('SVC',2), ('SYP',2), ('SZL',2),
	('THB',2), ('TJS',2), ('TMT',2), ('TND',3), ('TOP',2), ('TRY',2), ('TTD',2), ('TWD',2), ('TZS',2),
	('UAH',2), ('UGX',0), ('USD',2), ('USN',2), ('UYI',0), ('UYU',2), ('UYW',4), ('UZS',2), ('VED',2),
	('VES',2), ('VND',0), ('VUV',0), ('WST',2), ('XAF',0), ('XCD',2), ('XOF',0), ('XPF',0), ('YER',2),
	('ZAR',2), ('ZMW',2), ('ZWG',2), ('ZWL',2);

CREATE TABLE payments.statuses (
	status		text PRIMARY KEY,
	terminal	boolean NOT NULL,
	description	text NOT NULL
);
COMMENT ON TABLE payments.statuses IS 'The normalized payment statuses';

INSERT INTO payments.statuses (status, terminal, description) VALUES
	('pending', false, 'created or in progress, no money yet'),
	('paid', false, 'money received'),
	('failed', false, 'the attempt failed; a late capture may still pay it'),
	('cancelled', false, 'cancelled or expired before payment; a late capture may still pay it'),
	('partially_refunded', false, 'part of the money returned'),
	('disputed', false, 'the payer disputes it; it returns to paid when won, or becomes refunded when lost'),
	('refunded', true, 'all the money returned, or a dispute lost');

CREATE TABLE payments.transitions (
	from_status	text NOT NULL REFERENCES payments.statuses (status),
	to_status	text NOT NULL REFERENCES payments.statuses (status),
	PRIMARY KEY (from_status, to_status),
	CHECK (from_status <> to_status)
);
COMMENT ON TABLE payments.transitions IS
	'The forward-only state machine: every allowed move; anything else is refused and recorded';

INSERT INTO payments.transitions (from_status, to_status) VALUES
	('pending', 'paid'), ('pending', 'failed'), ('pending', 'cancelled'),
	('pending', 'partially_refunded'), ('pending', 'refunded'), ('pending', 'disputed'),
	('failed', 'paid'), ('failed', 'cancelled'),
	('cancelled', 'paid'),
	('paid', 'partially_refunded'), ('paid', 'refunded'), ('paid', 'disputed'),
	('partially_refunded', 'refunded'), ('partially_refunded', 'disputed'),
	('disputed', 'paid'), ('disputed', 'refunded');

CREATE TABLE payments.payments (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider		text NOT NULL REFERENCES payments.providers (name),
	provider_ref	text NOT NULL,
	reference		text,
	kind			text NOT NULL DEFAULT 'collection' CHECK (kind IN ('collection', 'payout', 'refund')),
	status			text NOT NULL REFERENCES payments.statuses (status),
	amount			numeric CHECK (amount >= 0),
	currency		char(3) REFERENCES payments.currencies (code),
	amount_refunded	numeric NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
	fee				numeric,
	method			text,
	donor_name		text,
	donor_phone		text CHECK (donor_phone ~ '^[1-9][0-9]{5,14}$'),
	donor_email		text,
	country			char(2) CHECK (country ~ '^[A-Z]{2}$'),
	metadata		jsonb NOT NULL DEFAULT '{}',
	receipt_no		text UNIQUE,
	paid_at			timestamptz,
	status_at		timestamptz NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (provider, provider_ref)
);
CREATE INDEX payments_reference_idx ON payments.payments (reference);
CREATE INDEX payments_created_at_idx ON payments.payments USING brin (created_at);
COMMENT ON TABLE payments.payments IS
	'One row per provider payment object; amount in major units of currency; moved only forward by payments.apply_event';
COMMENT ON COLUMN payments.payments.status_at IS 'The provider''s time of the current status; older events never move the payment';
COMMENT ON COLUMN payments.payments.receipt_no IS 'LP-YYYYMMDD-NNNNNN, issued once, when the payment first became paid';
COMMENT ON COLUMN payments.payments.donor_phone IS 'E.164 digits, no plus sign';

CREATE TABLE payments.status_history (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id		bigint NOT NULL REFERENCES payments.payments (id) ON DELETE CASCADE,
	from_status		text REFERENCES payments.statuses (status),
	to_status		text NOT NULL REFERENCES payments.statuses (status),
	event_id		bigint REFERENCES payments.events (id),
	status_at		timestamptz NOT NULL,
	recorded_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX status_history_payment_idx ON payments.status_history (payment_id);
COMMENT ON TABLE payments.status_history IS 'Every applied transition (from_status NULL: the payment was created)';

CREATE TABLE payments.refused_transitions (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id		bigint NOT NULL REFERENCES payments.payments (id) ON DELETE CASCADE,
	from_status		text NOT NULL REFERENCES payments.statuses (status),
	to_status		text NOT NULL REFERENCES payments.statuses (status),
	event_id		bigint REFERENCES payments.events (id),
	reason			text NOT NULL,
	recorded_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refused_transitions_payment_idx ON payments.refused_transitions (payment_id);
COMMENT ON TABLE payments.refused_transitions IS
	'Transitions an event asked for and the state machine refused (not allowed, or older than the current status)';

CREATE TABLE payments.receipt_counters (
	prefix		text NOT NULL,
	day			date NOT NULL,
	last_no		integer NOT NULL CHECK (last_no BETWEEN 1 AND 999999),
	PRIMARY KEY (prefix, day)
);
COMMENT ON TABLE payments.receipt_counters IS
	'Last receipt number per prefix and day, updated in the paying transaction: gapless, never a sequence';

--------------------------------------------------------------------------------------------------
-- Normalized changes: what an event says about a payment
--------------------------------------------------------------------------------------------------

CREATE TYPE payments.payment_change AS (
	provider_ref	text,		-- the payment object the event is about
	creates			boolean,	-- whether the event may create the payment if it is not known yet
	status			text,
	status_at		timestamptz,
	reference		text,
	kind			text,
	amount			numeric,
	currency		text,
	amount_refunded	numeric,
	fee				numeric,
	method			text,
	donor_name		text,
	donor_phone		text,
	donor_email		text,
	country			text,
	metadata		jsonb
);
COMMENT ON TYPE payments.payment_change IS
	'What one event says about one payment, in normalized terms; NULL fields say nothing';

CREATE FUNCTION payments.major_units(minor numeric, currency text, exponent_override integer DEFAULT NULL)
RETURNS numeric
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT round(minor / 10::numeric ^ e, e)
	  FROM (SELECT coalesce(exponent_override,
							(SELECT c.exponent FROM payments.currencies c WHERE c.code = upper(currency)))::integer AS e) AS x
$$;
COMMENT ON FUNCTION payments.major_units(numeric, text, integer) IS
	'Converts an amount in minor units (cents) to major units with the currency''s ISO 4217 exponent; NULL for an unknown currency';

CREATE FUNCTION payments.e164_digits(phone text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN d ~ '^[1-9][0-9]{5,14}$' THEN d END
	  FROM (SELECT regexp_replace(phone, '[\s().+-]', '', 'g') AS d) AS digits
$$;
COMMENT ON FUNCTION payments.e164_digits(text) IS
	'A phone number as E.164 digits (country code first, no plus sign), or NULL when it is not one';

CREATE FUNCTION payments.country_code(country text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN upper(country) ~ '^[A-Z]{2}$' THEN upper(country) END
$$;
COMMENT ON FUNCTION payments.country_code(text) IS 'An ISO 3166 alpha-2 country code in upper case, or NULL';

--------------------------------------------------------------------------------------------------
-- Applying changes: the one place where payments move
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.receipt_prefix(provider text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce((SELECT p.settings ->> 'receipt_prefix' FROM payments.providers p WHERE p.name = provider),
					nullif(current_setting('payments.receipt_prefix', true), ''), 'LP')
$$;
COMMENT ON FUNCTION payments.receipt_prefix(text) IS
	'The receipt prefix of a provider: its receipt_prefix setting, else the payments.receipt_prefix setting, else LP';

CREATE FUNCTION payments.receipt_day(paid_at timestamptz)
RETURNS date
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT (paid_at AT TIME ZONE coalesce(nullif(current_setting('payments.receipt_timezone', true), ''), 'UTC'))::date
$$;
COMMENT ON FUNCTION payments.receipt_day(timestamptz) IS
	'The day of a time in the receipt time zone (the payments.receipt_timezone setting, default UTC)';

CREATE FUNCTION payments.next_receipt_no(prefix text, day date)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO payments.receipt_counters AS rc (prefix, day, last_no)
	VALUES (next_receipt_no.prefix, next_receipt_no.day, 1)
	ON CONFLICT (prefix, day) DO UPDATE SET last_no = rc.last_no + 1
	RETURNING rc.prefix || '-' || to_char(rc.day, 'YYYYMMDD') || '-' || lpad(rc.last_no::text, 6, '0')
$$;
COMMENT ON FUNCTION payments.next_receipt_no(text, date) IS
	'Takes the next receipt number of a prefix and day; the counter row stays locked until the transaction ends, so numbers are gapless and unique, and a rollback gives its number back';

CREATE FUNCTION payments.apply_change(event_row bigint, provider_name text, change payments.payment_change)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pay		payments.payments;
	at		timestamptz := coalesce(change.status_at, now());
BEGIN
	IF change.provider_ref IS NULL OR change.status IS NULL THEN
		RETURN 'ignored';
	END IF;
	IF change.currency IS NOT NULL AND NOT EXISTS (SELECT FROM payments.currencies c
												  WHERE c.code = upper(change.currency)) THEN
		RAISE EXCEPTION 'unknown currency "%"', change.currency
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Add it to payments.currencies with its ISO 4217 exponent, then replay the event.';
	END IF;

	-- a new payment: created with its first status, in this transaction
	IF change.creates THEN
		INSERT INTO payments.payments AS p
			(provider, provider_ref, reference, kind, status, amount, currency, amount_refunded, fee,
			 method, donor_name, donor_phone, donor_email, country, metadata, status_at, paid_at)
		VALUES (provider_name, change.provider_ref, change.reference,
				coalesce(change.kind, 'collection'), change.status, change.amount, upper(change.currency),
				coalesce(change.amount_refunded, 0), change.fee, change.method, change.donor_name,
				payments.e164_digits(change.donor_phone), change.donor_email, payments.country_code(change.country),
				coalesce(change.metadata, '{}'), at, CASE WHEN change.status = 'paid' THEN at END)
		ON CONFLICT (provider, provider_ref) DO NOTHING
		RETURNING * INTO pay;
		IF FOUND THEN
			INSERT INTO payments.status_history (payment_id, from_status, to_status, event_id, status_at)
			VALUES (pay.id, NULL, pay.status, event_row, at);
			IF pay.status = 'paid' THEN
				UPDATE payments.payments p
				   SET receipt_no = payments.next_receipt_no(payments.receipt_prefix(pay.provider),
															 payments.receipt_day(at))
				 WHERE p.id = pay.id;
			END IF;
			RETURN 'applied';
		END IF;
	END IF;

	-- an existing payment: one lock per payment serializes its events
	SELECT * INTO pay FROM payments.payments p
	 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref
	   FOR UPDATE;
	IF NOT FOUND THEN
		RETURN 'unresolved';
	END IF;

	-- details the payment does not know yet are filled in; what it knows is kept
	UPDATE payments.payments p
	   SET reference = coalesce(p.reference, change.reference),
		   amount = coalesce(p.amount, change.amount),
		   currency = coalesce(p.currency, upper(change.currency)),
		   amount_refunded = greatest(p.amount_refunded, coalesce(change.amount_refunded, 0)),
		   fee = coalesce(change.fee, p.fee),
		   method = coalesce(p.method, change.method),
		   donor_name = coalesce(p.donor_name, change.donor_name),
		   donor_phone = coalesce(p.donor_phone, payments.e164_digits(change.donor_phone)),
		   donor_email = coalesce(p.donor_email, change.donor_email),
		   country = coalesce(p.country, payments.country_code(change.country)),
		   metadata = coalesce(change.metadata, '{}') || p.metadata,
		   status_at = CASE WHEN change.status = p.status THEN greatest(p.status_at, at) ELSE p.status_at END,
		   updated_at = now()
	 WHERE p.id = pay.id;

	-- refund events report the total refunded so far: less than the amount is a partial refund
	IF change.status = 'refunded' AND change.amount_refunded < pay.amount THEN
		change.status := 'partially_refunded';
	END IF;
	IF change.status = pay.status THEN
		RETURN 'ignored';
	END IF;
	IF at < pay.status_at THEN
		INSERT INTO payments.refused_transitions (payment_id, from_status, to_status, event_id, reason)
		VALUES (pay.id, pay.status, change.status, event_row, 'older than the current status');
		RETURN 'ignored';
	END IF;
	IF NOT EXISTS (SELECT FROM payments.transitions t
				   WHERE t.from_status = pay.status AND t.to_status = change.status) THEN
		INSERT INTO payments.refused_transitions (payment_id, from_status, to_status, event_id, reason)
		VALUES (pay.id, pay.status, change.status, event_row, 'transition not allowed');
		RETURN 'ignored';
	END IF;

	UPDATE payments.payments p
	   SET status = change.status,
		   status_at = at,
		   paid_at = CASE WHEN change.status = 'paid' THEN coalesce(p.paid_at, at) ELSE p.paid_at END,
		   receipt_no = CASE WHEN change.status = 'paid' AND p.receipt_no IS NULL
							 THEN payments.next_receipt_no(payments.receipt_prefix(p.provider), payments.receipt_day(at))
							 ELSE p.receipt_no END
	 WHERE p.id = pay.id;
	INSERT INTO payments.status_history (payment_id, from_status, to_status, event_id, status_at)
	VALUES (pay.id, pay.status, change.status, event_row, at);
	RETURN 'applied';
END
$$;
COMMENT ON FUNCTION payments.apply_change(bigint, text, payments.payment_change) IS
	'Moves a payment by one normalized change: creates it, fills in details, or applies an allowed, not older transition; returns applied, ignored, or unresolved (the payment it refers to is not known yet)';

--------------------------------------------------------------------------------------------------
-- Normalization: Stripe
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.stripe_change(payload jsonb)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	etype	text := payload ->> 'type';
	obj		jsonb := payload -> 'data' -> 'object';
	c		payments.payment_change;
	minor	numeric;
	cur		text := upper(obj ->> 'currency');
	-- Stripe treats MGA as zero-decimal, unlike ISO 4217
	exp		integer := CASE WHEN upper(obj ->> 'currency') = 'MGA' THEN 0 END;
BEGIN
	c.status_at := to_timestamp((payload ->> 'created')::double precision);
	c.currency := cur;
	c.metadata := CASE WHEN jsonb_typeof(obj -> 'metadata') = 'object' THEN obj -> 'metadata' END;
	c.reference := coalesce(obj -> 'metadata' ->> 'reference', obj -> 'metadata' ->> 'order_id',
							obj ->> 'client_reference_id');

	IF etype LIKE 'payment_intent.%' THEN
		c.provider_ref := obj ->> 'id';
		c.creates := true;
		c.status := CASE etype
			WHEN 'payment_intent.processing' THEN 'pending'
			WHEN 'payment_intent.succeeded' THEN 'paid'
			WHEN 'payment_intent.payment_failed' THEN 'failed'
			WHEN 'payment_intent.canceled' THEN 'cancelled' END;
		minor := coalesce(nullif(obj ->> 'amount_received', '0'), obj ->> 'amount')::numeric;
		c.method := obj -> 'payment_method_types' ->> 0;
		c.donor_email := obj ->> 'receipt_email';
		c.donor_name := coalesce(obj -> 'shipping' ->> 'name', obj -> 'metadata' ->> 'donor_name');
		c.donor_phone := coalesce(obj -> 'shipping' ->> 'phone', obj -> 'metadata' ->> 'phone');
	ELSIF etype IN ('charge.succeeded', 'charge.failed', 'charge.refunded') THEN
		c.provider_ref := coalesce(obj ->> 'payment_intent', obj ->> 'id');
		c.creates := etype <> 'charge.refunded';
		c.status := CASE etype
			WHEN 'charge.succeeded' THEN 'paid'
			WHEN 'charge.failed' THEN 'failed'
			ELSE CASE WHEN (obj ->> 'amount_refunded')::numeric >= (obj ->> 'amount')::numeric
					  THEN 'refunded' ELSE 'partially_refunded' END END;
		minor := (obj ->> 'amount')::numeric;
		c.amount_refunded := payments.major_units((obj ->> 'amount_refunded')::numeric, cur, exp);
		c.method := obj -> 'payment_method_details' ->> 'type';
		c.donor_name := obj -> 'billing_details' ->> 'name';
		c.donor_email := coalesce(obj -> 'billing_details' ->> 'email', obj ->> 'receipt_email');
		c.donor_phone := obj -> 'billing_details' ->> 'phone';
		c.country := obj -> 'billing_details' -> 'address' ->> 'country';
	ELSIF etype IN ('charge.dispute.created', 'charge.dispute.closed') THEN
		c.provider_ref := coalesce(obj ->> 'payment_intent', obj ->> 'charge');
		c.creates := false;
		c.status := CASE
			WHEN etype = 'charge.dispute.created' THEN 'disputed'
			WHEN obj ->> 'status' = 'lost' THEN 'refunded'
			ELSE 'paid' END;		-- won, or an inquiry closed with a warning
	ELSIF etype LIKE 'checkout.session.%' THEN
		c.provider_ref := coalesce(obj ->> 'payment_intent', obj ->> 'id');
		c.creates := true;
		c.status := CASE etype
			WHEN 'checkout.session.completed' THEN
				CASE obj ->> 'payment_status' WHEN 'paid' THEN 'paid' WHEN 'no_payment_required' THEN 'paid'
											  ELSE 'pending' END
			WHEN 'checkout.session.async_payment_succeeded' THEN 'paid'
			WHEN 'checkout.session.async_payment_failed' THEN 'failed'
			WHEN 'checkout.session.expired' THEN 'cancelled' END;
		minor := (obj ->> 'amount_total')::numeric;
		c.method := obj -> 'payment_method_types' ->> 0;
		c.donor_name := obj -> 'customer_details' ->> 'name';
		c.donor_email := obj -> 'customer_details' ->> 'email';
		c.donor_phone := obj -> 'customer_details' ->> 'phone';
		c.country := obj -> 'customer_details' -> 'address' ->> 'country';
	END IF;

	IF c.status IS NULL THEN
		RETURN NULL;			-- not an event about a payment's status
	END IF;
	c.amount := payments.major_units(minor, cur, exp);
	RETURN c;
END
$$;
COMMENT ON FUNCTION payments.stripe_change(jsonb) IS
	'What a Stripe event says about a payment (payment_intent.*, charge.*, charge.dispute.*, checkout.session.*), or NULL';

--------------------------------------------------------------------------------------------------
-- Normalization: Paynow and Eversend
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.paynow_change(payload jsonb, settings jsonb, received_at timestamptz)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c		payments.payment_change;
	channel	text := lower(coalesce(payload ->> 'paymentchannel', payload ->> 'paymentinstrument', ''));
BEGIN
	c.provider_ref := payload ->> 'paynowreference';
	c.creates := true;
	c.status := CASE lower(payload ->> 'status')
		WHEN 'paid' THEN 'paid'
		WHEN 'awaiting delivery' THEN 'paid'
		WHEN 'delivered' THEN 'paid'
		WHEN 'created' THEN 'pending'
		WHEN 'sent' THEN 'pending'
		WHEN 'awaiting redirect' THEN 'pending'
		WHEN 'created but not paid' THEN 'pending'
		WHEN 'cancelled' THEN 'cancelled'
		WHEN 'failed' THEN 'failed'
		WHEN 'disputed' THEN 'disputed'
		WHEN 'refunded' THEN 'refunded' END;
	-- Paynow sends no time of its own: the status is as of its arrival
	c.status_at := received_at;
	c.reference := payload ->> 'reference';
	c.amount := CASE WHEN payload ->> 'amount' ~ '^[0-9]{1,12}(\.[0-9]{1,2})?$' THEN (payload ->> 'amount')::numeric END;
	-- an integration takes one currency; Paynow's messages do not say which
	c.currency := coalesce(settings ->> 'currency', 'USD');
	c.method := CASE
		WHEN channel LIKE '%ecocash%' THEN 'ecocash'
		WHEN channel LIKE '%onemoney%' THEN 'onemoney'
		WHEN channel LIKE '%telecash%' THEN 'telecash'
		WHEN channel LIKE '%innbucks%' THEN 'innbucks'
		WHEN channel IN ('vmc', 'visa', 'mastercard') OR channel LIKE '%card%' THEN 'card'
		WHEN channel LIKE '%zimswitch%' THEN 'zimswitch'
		WHEN channel <> '' THEN channel END;
	c.metadata := jsonb_strip_nulls(jsonb_build_object('pollurl', payload ->> 'pollurl'));
	RETURN CASE WHEN c.status IS NOT NULL AND c.provider_ref IS NOT NULL THEN c END;
END
$$;
COMMENT ON FUNCTION payments.paynow_change(jsonb, jsonb, timestamptz) IS
	'What a Paynow status update says about a payment: Paid, Awaiting Delivery, Delivered are paid; Created, Sent pending; Cancelled; Failed; Disputed; Refunded';

CREATE FUNCTION payments.eversend_change(payload jsonb, event_at timestamptz)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t		jsonb := CASE WHEN payload ? 'transactionId' THEN payload ELSE payload -> 'data' END;
	c		payments.payment_change;
BEGIN
	c.provider_ref := t ->> 'transactionId';
	c.creates := true;
	c.status := CASE lower(t ->> 'status')
		WHEN 'successful' THEN 'paid'
		WHEN 'success' THEN 'paid'
		WHEN 'completed' THEN 'paid'
		WHEN 'pending' THEN 'pending'
		WHEN 'processing' THEN 'pending'
		WHEN 'failed' THEN 'failed'
		WHEN 'cancelled' THEN 'cancelled'
		WHEN 'reversed' THEN 'refunded' END;
	c.status_at := event_at;
	c.reference := t ->> 'transactionRef';
	c.kind := CASE lower(t ->> 'type') WHEN 'payout' THEN 'payout' ELSE 'collection' END;
	c.amount := CASE WHEN t ->> 'amount' ~ '^[0-9]{1,15}(\.[0-9]{1,4})?$' THEN (t ->> 'amount')::numeric END;
	c.currency := upper(t ->> 'currency');
	c.fee := CASE WHEN t ->> 'fees' ~ '^[0-9]{1,15}(\.[0-9]{1,4})?$' THEN (t ->> 'fees')::numeric END;
	c.method := 'mobile_money';
	c.country := t ->> 'country';
	c.donor_phone := coalesce(t ->> 'phoneNumber', t -> 'customer' ->> 'phone');
	c.donor_name := t -> 'customer' ->> 'name';
	c.donor_email := t -> 'customer' ->> 'email';
	RETURN CASE WHEN c.status IS NOT NULL AND c.provider_ref IS NOT NULL THEN c END;
END
$$;
COMMENT ON FUNCTION payments.eversend_change(jsonb, timestamptz) IS
	'What an Eversend transaction event says about a payment: successful is paid, pending, failed; type collection or payout; fees';

--------------------------------------------------------------------------------------------------
-- Normalization: PayPal
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.paypal_change(payload jsonb, provider_name text, event_at timestamptz)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	etype	text := payload ->> 'event_type';
	r		jsonb := payload -> 'resource';
	c		payments.payment_change;
	up		text;
BEGIN
	c.status_at := coalesce(event_at, (r ->> 'update_time')::timestamptz);
	c.reference := coalesce(r ->> 'invoice_id', r ->> 'custom_id');
	c.method := 'paypal';

	IF etype IN ('PAYMENT.CAPTURE.COMPLETED', 'PAYMENT.CAPTURE.PENDING', 'PAYMENT.CAPTURE.DENIED',
				 'PAYMENT.CAPTURE.DECLINED') THEN
		-- a capture of an order is the order's payment; the capture id is kept for its refunds
		c.provider_ref := coalesce(r -> 'supplementary_data' -> 'related_ids' ->> 'order_id', r ->> 'id');
		c.creates := true;
		c.status := CASE etype WHEN 'PAYMENT.CAPTURE.COMPLETED' THEN 'paid'
							   WHEN 'PAYMENT.CAPTURE.PENDING' THEN 'pending' ELSE 'failed' END;
		c.amount := (r -> 'amount' ->> 'value')::numeric;
		c.currency := r -> 'amount' ->> 'currency_code';
		c.fee := (r -> 'seller_receivable_breakdown' -> 'paypal_fee' ->> 'value')::numeric;
		c.metadata := jsonb_build_object('capture_id', r ->> 'id');
	ELSIF etype IN ('PAYMENT.CAPTURE.REFUNDED', 'PAYMENT.CAPTURE.REVERSED') THEN
		-- the resource is the refund; its capture is only named by the "up" link
		SELECT substring(l ->> 'href' FROM '/captures/([^/?#]+)') INTO up
		  FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r -> 'links') = 'array' THEN r -> 'links' ELSE '[]' END) l
		 WHERE l ->> 'rel' = 'up' LIMIT 1;
		c.provider_ref := coalesce((SELECT p.provider_ref FROM payments.payments p
									 WHERE p.provider = provider_name
									   AND (p.provider_ref = up OR p.metadata ->> 'capture_id' = up)
									 LIMIT 1), up);
		c.creates := false;
		c.status := 'refunded';
		c.amount_refunded := coalesce((r -> 'seller_payable_breakdown' -> 'total_refunded_amount' ->> 'value')::numeric,
									  (r -> 'amount' ->> 'value')::numeric);
		c.reference := NULL;
	ELSIF etype LIKE 'PAYMENT.SALE.%' THEN
		-- the v1 Payments API: amounts in resource.amount.total
		c.provider_ref := CASE WHEN etype IN ('PAYMENT.SALE.REFUNDED', 'PAYMENT.SALE.REVERSED')
							   THEN r ->> 'sale_id' ELSE r ->> 'id' END;
		c.creates := etype NOT IN ('PAYMENT.SALE.REFUNDED', 'PAYMENT.SALE.REVERSED');
		c.status := CASE etype
			WHEN 'PAYMENT.SALE.COMPLETED' THEN 'paid'
			WHEN 'PAYMENT.SALE.PENDING' THEN 'pending'
			WHEN 'PAYMENT.SALE.DENIED' THEN 'failed'
			WHEN 'PAYMENT.SALE.REFUNDED' THEN 'refunded'
			WHEN 'PAYMENT.SALE.REVERSED' THEN 'refunded' END;
		IF c.creates THEN
			c.amount := (r -> 'amount' ->> 'total')::numeric;
			c.currency := r -> 'amount' ->> 'currency';
			c.fee := (r -> 'transaction_fee' ->> 'value')::numeric;
		ELSE
			c.amount_refunded := coalesce((r -> 'total_refunded_amount' ->> 'value')::numeric,
										  (r -> 'amount' ->> 'total')::numeric);
		END IF;
	ELSIF etype = 'CHECKOUT.ORDER.APPROVED' THEN
		c.provider_ref := r ->> 'id';
		c.creates := true;
		c.status := 'pending';
		c.amount := (r -> 'purchase_units' -> 0 -> 'amount' ->> 'value')::numeric;
		c.currency := r -> 'purchase_units' -> 0 -> 'amount' ->> 'currency_code';
		c.reference := coalesce(r -> 'purchase_units' -> 0 ->> 'invoice_id', r -> 'purchase_units' -> 0 ->> 'custom_id',
								r -> 'purchase_units' -> 0 ->> 'reference_id');
		c.donor_name := concat_ws(' ', r -> 'payer' -> 'name' ->> 'given_name', r -> 'payer' -> 'name' ->> 'surname');
		c.donor_email := r -> 'payer' ->> 'email_address';
		c.country := r -> 'payer' -> 'address' ->> 'country_code';
	END IF;

	RETURN CASE WHEN c.status IS NOT NULL AND c.provider_ref IS NOT NULL THEN c END;
END
$$;
COMMENT ON FUNCTION payments.paypal_change(jsonb, text, timestamptz) IS
	'What a PayPal event says about a payment: PAYMENT.CAPTURE.*, the v1 PAYMENT.SALE.*, CHECKOUT.ORDER.APPROVED; refunds attach to their capture';

--------------------------------------------------------------------------------------------------
-- Applying events
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.event_change(kind text, settings jsonb, ev payments.events)
RETURNS payments.payment_change
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE kind
		WHEN 'stripe' THEN payments.stripe_change(ev.payload)
		WHEN 'paynow' THEN payments.paynow_change(ev.payload, settings, ev.received_at)
		WHEN 'eversend' THEN payments.eversend_change(ev.payload, ev.event_at)
		WHEN 'paypal' THEN payments.paypal_change(ev.payload, ev.provider, ev.event_at)
	END
$$;
COMMENT ON FUNCTION payments.event_change(text, jsonb, payments.events) IS
	'Dispatches a stored event to the normalizer of its provider''s kind; NULL for kinds and events that do not move payments';

CREATE FUNCTION payments.apply_event(id bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ev		payments.events;
	kind	text;
	settings jsonb;
	change	payments.payment_change;
	result	text;
BEGIN
	SELECT e.* INTO ev FROM payments.events e WHERE e.id = apply_event.id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown event %', id USING ERRCODE = 'undefined_object';
	END IF;
	IF ev.state NOT IN ('pending', 'dead') THEN
		RETURN ev.state;		-- applied or ignored already: events apply once
	END IF;
	SELECT p.kind, p.settings INTO kind, settings FROM payments.providers p WHERE p.name = ev.provider;

	change := payments.event_change(kind, settings, ev);
	result := CASE WHEN change IS NULL THEN 'ignored'
				   ELSE payments.apply_change(ev.id, ev.provider, change) END;

	UPDATE payments.events e
	   SET state = CASE result WHEN 'unresolved' THEN 'pending' ELSE result END,
		   attempts = e.attempts + 1,
		   next_attempt_at = CASE WHEN result = 'unresolved' THEN now() + interval '1 minute' END,
		   last_error = CASE WHEN result = 'unresolved'
							 THEN 'payment ' || change.provider_ref || ' is not known yet' END
	 WHERE e.id = ev.id;
	RETURN CASE result WHEN 'unresolved' THEN 'stored' ELSE result END;
END
$$;
COMMENT ON FUNCTION payments.apply_event(bigint) IS
	'Applies a stored event to its payment through the state machine: applied, ignored, or stored (pending: its payment is not known yet, to be retried)';
REVOKE ALL ON FUNCTION payments.apply_event(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.apply_change(bigint, text, payments.payment_change) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.next_receipt_no(text, date) FROM PUBLIC;

CREATE FUNCTION payments.receipt(receipt_no text)
RETURNS SETOF payments.payments
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT p.* FROM payments.payments p WHERE p.receipt_no = receipt.receipt_no
$$;
COMMENT ON FUNCTION payments.receipt(text) IS 'The payment behind a receipt number';

SELECT pg_catalog.pg_extension_config_dump('payments.payments', '');
SELECT pg_catalog.pg_extension_config_dump('payments.payments_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.status_history', '');
SELECT pg_catalog.pg_extension_config_dump('payments.status_history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.refused_transitions', '');
SELECT pg_catalog.pg_extension_config_dump('payments.refused_transitions_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.receipt_counters', '');

--------------------------------------------------------------------------------------------------
-- Kind meta: WhatsApp Cloud API (X-Hub-Signature-256, batches, GET subscription handshake)
--------------------------------------------------------------------------------------------------

INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('meta', '{verify_token}',
	 'Meta / WhatsApp Cloud API: X-Hub-Signature-256 = sha256= + hex HMAC-SHA256 of the body, key = the app secret; one event per message and per status');

CREATE FUNCTION payments.verify_meta(body bytea, signature text, app_secret text)
RETURNS text
AS 'MODULE_PATHNAME', 'verify_meta'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.verify_meta(bytea, text, text) IS
	'Verifies an X-Hub-Signature-256 header value over a raw body; returns valid or the rejection reason';

CREATE FUNCTION payments.meta_subscribe(provider text, mode text, verify_token text, challenge text)
RETURNS TABLE (http_status integer, body text)
AS 'MODULE_PATHNAME', 'meta_subscribe'
LANGUAGE C STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION payments.meta_subscribe(text, text, text, text) IS
	'Answers Meta''s GET subscription handshake: 200 with the challenge when hub.mode is subscribe and hub.verify_token matches, else 403 (404: no such meta provider)';
REVOKE ALL ON FUNCTION payments.meta_subscribe(text, text, text, text) FROM PUBLIC;

--------------------------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC; the DBA grants what each role needs
--------------------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION payments.ingest(text, jsonb, bytea, inet, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.register_provider(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.add_secret(text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.revoke_secret(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.check_settings(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.secret_problem(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.settings_problem(text, jsonb) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('payments.providers', '');
SELECT pg_catalog.pg_extension_config_dump('payments.secrets', '');
SELECT pg_catalog.pg_extension_config_dump('payments.events', '');
SELECT pg_catalog.pg_extension_config_dump('payments.rejections', '');
SELECT pg_catalog.pg_extension_config_dump('payments.secrets_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.rejections_id_seq', '');

--------------------------------------------------------------------------------------------------
-- Kinds paynow, eversend and hmac (generic HMAC configured in SQL)
--------------------------------------------------------------------------------------------------

INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('paynow', '{integration_id,result_url,return_url,api_base,currency}',
	 'Paynow status update (form-urlencoded): SHA-512 of the decoded values in order, hash excluded, + the integration key in lower case; upper-case hex in the hash field');
INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('eversend', '{algorithm}',
	 'Eversend: X-Eversend-Signature = hex HMAC-SHA512 (algorithm setting: sha256) of the body, key = the webhook secret');
INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('hmac', '{header,algorithm,encoding,prefix,timestamp_header,signed,tolerance,event_id_header,event_id_path,event_type_header,event_type_path}',
	 'Generic HMAC (Paystack, GitHub, ...): a header holding prefix + hex or base64 HMAC-SHA256/512/1 of the body or of "timestamp.body", key = the secret');

CREATE FUNCTION payments.verify_paynow(body bytea, integration_key text)
RETURNS text
AS 'MODULE_PATHNAME', 'verify_paynow'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.verify_paynow(bytea, text) IS
	'Verifies the hash field of a Paynow form body (status update or poll reply) with an integration key; returns valid, the rejection reason, or invalid_form';

CREATE FUNCTION payments.verify_eversend(body bytea, signature text, secret text,
										 algorithm text DEFAULT 'sha512')
RETURNS text
AS 'MODULE_PATHNAME', 'verify_eversend'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.verify_eversend(bytea, text, text, text) IS
	'Verifies an X-Eversend-Signature value (hex HMAC, sha512 or sha256) over a raw body; returns valid or the rejection reason';

CREATE FUNCTION payments.verify_hmac(body bytea, headers jsonb, secret text, settings jsonb,
									 at timestamptz DEFAULT now())
RETURNS text
AS 'MODULE_PATHNAME', 'verify_hmac'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.verify_hmac(bytea, jsonb, text, jsonb, timestamptz) IS
	'Verifies a delivery (raw body, lower-case headers) as a provider of kind hmac with these settings would, at a given time; returns valid or the rejection reason';

--------------------------------------------------------------------------------------------------
-- Kind paypal: RSA signatures checked with PayPal's certificates, cached by URL
--------------------------------------------------------------------------------------------------

INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('paypal', '{webhook_id,cert_hosts,verify_cert_chain,ca_file}',
	 'PayPal: RSA PKCS#1 v1.5 SHA-256 (SHA256withRSA) over "transmission_id|transmission_time|webhook_id|crc32(body)", key from the certificate at paypal-cert-url (allowlisted hosts, chain, dates and name checked)');

CREATE TABLE payments.certificates (
	url			text PRIMARY KEY CHECK (url LIKE 'https://%'),
	pem			text NOT NULL,
	not_after	timestamptz,
	source		text NOT NULL CHECK (source IN ('fetched', 'seeded')),
	added_at	timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE payments.certificates IS
	'PayPal signing certificates by the URL deliveries name (paypal-cert-url): fetched once then reused, or seeded by an admin; checked at every use';
COMMENT ON COLUMN payments.certificates.url IS 'The paypal-cert-url value exactly as PayPal sends it';
COMMENT ON COLUMN payments.certificates.pem IS 'The certificate (then any intermediates) in PEM, as served or seeded';
COMMENT ON COLUMN payments.certificates.not_after IS 'End of validity of the first certificate, for admins; verification reads the PEM itself';
COMMENT ON COLUMN payments.certificates.source IS 'fetched: downloaded on first use; seeded: added with payments.add_certificate';

CREATE FUNCTION payments.verify_paypal(body bytea, transmission_id text, transmission_time text,
									   webhook_id text, signature text, pem text)
RETURNS text
AS 'MODULE_PATHNAME', 'verify_paypal'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.verify_paypal(bytea, text, text, text, text, text) IS
	'Verifies a PayPal transmission signature (base64) over a raw body with the key of the first certificate in pem; no network and no chain, date or name checks; returns valid or the rejection reason';

CREATE FUNCTION payments.add_certificate(url text, pem text)
RETURNS void
AS 'MODULE_PATHNAME', 'add_certificate'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION payments.add_certificate(text, text) IS
	'Seeds (or replaces) the PayPal certificate for a cert URL so that it is never fetched; the PEM must parse; chain, dates and name are checked when used unless verify_cert_chain is false';

REVOKE ALL ON FUNCTION payments.add_certificate(text, text) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('payments.certificates', '');
