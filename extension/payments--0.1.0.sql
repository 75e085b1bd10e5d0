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
