-- payments 0.1.0: verified, durable webhook events inside PostgreSQL.
\echo Use "CREATE EXTENSION payments" to load this file. \quit

-- The database must be UTF8: providers send UTF-8 (donors' names with U+2019 or CJK letters,
-- WhatsApp messages with emoji), and a database in another encoding (LATIN1, EUC_JP, SQL_ASCII)
-- cannot store such a character in jsonb at all, not even as a \u escape, so an authentic event
-- would be refused and retried by its provider for days.  Checked first, before anything is made
-- (this script is ASCII, so it reaches this check in any encoding).
DO $$
BEGIN
	IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
		RAISE EXCEPTION 'payments needs a UTF8 database: database "%" has encoding %',
			pg_catalog.current_database(), pg_catalog.getdatabaseencoding()
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Create the database with ENCODING ''UTF8'' (TEMPLATE template0), then CREATE EXTENSION payments in it.';
	END IF;
END
$$;

-- The schema must be one this CREATE EXTENSION made, or an empty one of a superuser (pg_restore
-- makes it first), where no other role may create: PostgreSQL installs into a schema of that name
-- that exists already, and its owner, or a role with CREATE on it, could then put functions of
-- its own under the names the pg_cron jobs call as a superuser (the owner could also rename it,
-- or drop it with every payment).  Objects already in it would also be granted to payments_admin
-- below.  Grants of USAGE (default privileges on schemas give them to new ones) are no danger,
-- and taken back at the end with every privilege default privileges gave.
DO $$
DECLARE
	schema_oid oid := 'payments'::pg_catalog.regnamespace;
	creators text;
	named	text;
BEGIN
	-- default privileges of this role that name the payments roles would give them every object
	-- (the analysts the secrets), and cannot be told from the grants below: refused
	SELECT pg_catalog.string_agg(DISTINCT a.grantee::pg_catalog.regrole::text, ', ') INTO named
	  FROM pg_catalog.pg_default_acl d, pg_catalog.aclexplode(d.defaclacl) a
	 WHERE d.defaclrole = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER)
	   AND d.defaclnamespace IN (0::oid, schema_oid)
	   AND a.grantee IN (SELECT r.oid FROM pg_catalog.pg_roles r
						  WHERE r.rolname IN ('payments_admin', 'payments_analyst', 'payments_ingest'));
	IF named IS NOT NULL THEN
		RAISE EXCEPTION 'default privileges of role % grant to %', CURRENT_USER, named
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = E'The extension grants its roles what each may use: take those default privileges back (see \\ddp; ALTER DEFAULT PRIVILEGES ... REVOKE ... FROM ...), or create it as another role.';
	END IF;
	SELECT pg_catalog.string_agg(CASE WHEN a.grantee = 0::oid THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END, ', ')
	  INTO creators
	  FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
	 WHERE n.oid = schema_oid AND a.privilege_type = 'CREATE'
	   AND NOT coalesce((SELECT g.rolsuper FROM pg_catalog.pg_roles g WHERE g.oid = a.grantee), false);
	IF (SELECT NOT r.rolsuper FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
		 WHERE n.oid = schema_oid) THEN
		RAISE EXCEPTION 'schema "payments" exists already, of an owner who is not a superuser'
			USING ERRCODE = 'duplicate_schema',
				  HINT = 'The extension makes the schema itself: drop or rename the one there is.';
	END IF;
	IF creators IS NOT NULL THEN
		RAISE EXCEPTION 'schema "payments" grants CREATE to %', creators
			USING ERRCODE = 'duplicate_schema',
				  HINT = E'Default privileges on schemas give it to new ones (see \\ddp; ALTER DEFAULT PRIVILEGES ... REVOKE CREATE ON SCHEMAS FROM ...), or the schema was there before: drop or rename it.';
	END IF;
	IF EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace = schema_oid)
	   OR EXISTS (SELECT FROM pg_catalog.pg_proc f WHERE f.pronamespace = schema_oid)
	   OR EXISTS (SELECT FROM pg_catalog.pg_type t WHERE t.typnamespace = schema_oid)
	   OR EXISTS (SELECT FROM pg_catalog.pg_operator o WHERE o.oprnamespace = schema_oid)
	   OR EXISTS (SELECT FROM pg_catalog.pg_collation o WHERE o.collnamespace = schema_oid)
	   OR EXISTS (SELECT FROM pg_catalog.pg_conversion o WHERE o.connamespace = schema_oid)
	   OR EXISTS (SELECT FROM pg_catalog.pg_ts_config o WHERE o.cfgnamespace = schema_oid)
	   OR EXISTS (SELECT FROM pg_catalog.pg_ts_dict o WHERE o.dictnamespace = schema_oid) THEN
		RAISE EXCEPTION 'schema "payments" exists already, with objects'
			USING ERRCODE = 'duplicate_schema',
				  HINT = 'The extension makes the schema itself: drop or rename the one there is.';
	END IF;
END
$$;

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
	('stripe', '{tolerance,livemode,api_base,api_key}',
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

-- A failed constraint would show the whole row in its message and in the server's log, settings
-- with API keys included: what the constraints refuse is refused first, naming only the problem
CREATE FUNCTION payments.check_provider()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.name IS NULL OR NEW.name !~ '^[a-z0-9][a-z0-9_-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid provider name "%"', NEW.name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A provider name is 1 to 63 characters of a-z, 0-9, "_" and "-", starting with a letter or digit; it appears in the URL /webhooks/{name}.';
	END IF;
	IF NEW.kind IS NULL OR NEW.created_at IS NULL OR NEW.updated_at IS NULL THEN
		RAISE EXCEPTION 'provider "%" needs a kind, created_at and updated_at', NEW.name
			USING ERRCODE = 'not_null_violation';
	END IF;
	IF NEW.settings IS NULL OR jsonb_typeof(NEW.settings) <> 'object' THEN
		RAISE EXCEPTION 'the settings of provider "%" must be a JSON object', NEW.name
			USING ERRCODE = 'check_violation';
	END IF;
	-- its events were verified and read as its kind's, and the checks of signatures used before
	-- (Paynow's hashes, PayPal's transmission ids) find them by the provider's kind
	IF TG_OP = 'UPDATE' AND NEW.kind <> OLD.kind THEN
		RAISE EXCEPTION 'provider "%" keeps its kind "%"', OLD.name, OLD.kind
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Register the new one under another name.';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments.check_provider() IS
	'Trigger: refuses what the constraints of payments.providers would, with errors that never show the row, whose settings may hold API keys, and a change of a provider''s kind';
CREATE TRIGGER providers_check BEFORE INSERT OR UPDATE ON payments.providers
	FOR EACH ROW EXECUTE FUNCTION payments.check_provider();
REVOKE ALL ON FUNCTION payments.check_provider() FROM PUBLIC;

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

-- A few small tables are kept in each backend's memory once read (extension/kept.c): a provider
-- and its secrets, the currencies, whether any endpoint is enabled.  A change to any of them drops
-- what this backend kept at once, and what every other backend kept once it commits (a relcache
-- invalidation of the table, which PostgreSQL sends to them all).
CREATE FUNCTION payments.forget_kept()
RETURNS trigger
AS 'MODULE_PATHNAME', 'forget_kept'
LANGUAGE C;
COMMENT ON FUNCTION payments.forget_kept() IS
	'Trigger: after a change to a table kept in backend memory (providers, secrets, currencies, endpoints), drops this backend''s copies and registers a relcache invalidation of the table, which drops every backend''s at commit';
REVOKE ALL ON FUNCTION payments.forget_kept() FROM PUBLIC;

-- ALWAYS: also where session_replication_role is replica (a logical replication subscriber
-- applying a change made on its publisher).  Row triggers for rows, since the subscriber's apply
-- worker fires no statement trigger; one statement trigger for TRUNCATE, which has no rows.
CREATE TRIGGER providers_forget AFTER INSERT OR UPDATE OR DELETE ON payments.providers
	FOR EACH ROW EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.providers ENABLE ALWAYS TRIGGER providers_forget;
CREATE TRIGGER providers_truncate_forget AFTER TRUNCATE ON payments.providers
	FOR EACH STATEMENT EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.providers ENABLE ALWAYS TRIGGER providers_truncate_forget;
CREATE TRIGGER secrets_forget AFTER INSERT OR UPDATE OR DELETE ON payments.secrets
	FOR EACH ROW EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.secrets ENABLE ALWAYS TRIGGER secrets_forget;
CREATE TRIGGER secrets_truncate_forget AFTER TRUNCATE ON payments.secrets
	FOR EACH STATEMENT EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.secrets ENABLE ALWAYS TRIGGER secrets_truncate_forget;

--------------------------------------------------------------------------------------------------
-- Events and rejections
--------------------------------------------------------------------------------------------------

-- The checked values written by every delivery are domains, not table CHECK constraints: a
-- domain's check is prepared once per session (in the type cache), while a table's checks are
-- read back from the catalog and prepared again by every statement that writes the table, and
-- the ingest path writes each event and each payment more than once.
CREATE DOMAIN payments.event_state AS text
	CHECK (VALUE IN ('pending', 'applied', 'ignored', 'dead'));
COMMENT ON DOMAIN payments.event_state IS 'Where a stored event stands: pending (to be applied or retried), applied, ignored, dead';

CREATE TABLE payments.events (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider		text NOT NULL REFERENCES payments.providers (name),
	event_id		text NOT NULL,
	event_type		text,
	event_at		timestamptz,
	received_at		timestamptz NOT NULL DEFAULT now(),
	-- lz4 for the rows that are still compressed (over toast_tuple_target, below): pglz (the
	-- default) costs several times more CPU both ways
	body			bytea COMPRESSION lz4 NOT NULL,
	payload			jsonb COMPRESSION lz4 NOT NULL,
	headers			jsonb COMPRESSION lz4 NOT NULL,
	source_ip		inet,
	request_id		text,
	state			payments.event_state NOT NULL DEFAULT 'pending',
	attempts		integer NOT NULL DEFAULT 0,
	next_attempt_at	timestamptz,
	last_error		text,
	UNIQUE (provider, event_id)
)
-- A 1.5 KB event makes a ~3.5 KB row (the body, its jsonb, the headers).  With the default target
-- (2 KB) every insert compressed the body and the payload (by a quarter only: signed JSON
-- compresses poorly) and then still moved one of them to the TOAST table: 7% of the work of a
-- delivery.  Rows up to a page are now kept whole and uncompressed, for about 25% more disk.
WITH (toast_tuple_target = 8160);
CREATE INDEX events_received_at_idx ON payments.events USING brin (received_at);
-- PayPal's transmission ids, looked up before a delivery is accepted (kind_paypal.c).  Only those
-- of up to 255 bytes, as PayPal's must be (kind_paypal.c refuses others): the header is the
-- sender's, stored with a delivery of any kind, and one over 2,704 bytes would fail the insert
CREATE INDEX events_paypal_transmission_idx ON payments.events (provider, (headers ->> 'paypal-transmission-id'))
	WHERE headers ? 'paypal-transmission-id' AND octet_length(headers ->> 'paypal-transmission-id') <= 255;
-- Paynow's form hashes, likewise, across providers (kind_paynow.c); only the 128 hex digits a
-- Paynow hash is, for a verified sender of another kind may send any "hash"
CREATE INDEX events_paynow_hash_idx ON payments.events ((upper((payload ->> 'hash') COLLATE pg_catalog."C")))
	WHERE payload ? 'hash' AND octet_length(payload ->> 'hash') = 128;
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
-- as events_paypal_transmission_idx: a rejection of any kind keeps the sender's headers
CREATE INDEX rejections_paypal_transmission_idx ON payments.rejections (provider, (headers ->> 'paypal-transmission-id'))
	WHERE headers ? 'paypal-transmission-id' AND octet_length(headers ->> 'paypal-transmission-id') <= 255
		  AND outcome = 'invalid';
COMMENT ON TABLE payments.rejections IS
	'Deliveries refused: bad or missing signature, timestamp outside tolerance, no live secret (rejected, 401), a verified body that is not a usable event (invalid, 400), or a WhatsApp Flows request refused (432, 421, 400); with their headers, less authorization, cookie and proxy-authorization';

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
LANGUAGE C IMMUTABLE STRICT PARALLEL UNSAFE;	-- checks an hmac kind's JSON paths in a subtransaction
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
	-- a string: a number (2024) would pass as text here and be ignored when receipts are numbered
	IF settings ? 'receipt_prefix' AND (jsonb_typeof(settings -> 'receipt_prefix') <> 'string'
										OR settings ->> 'receipt_prefix' !~ '^[A-Z0-9]{1,10}$') THEN
		RAISE EXCEPTION 'setting "receipt_prefix" must be a string of 1 to 10 characters of A-Z and 0-9'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF settings ? 'currency' AND NOT EXISTS (SELECT FROM payments.currencies c
											 WHERE c.code = (settings ->> 'currency')::bpchar) THEN
		RAISE EXCEPTION 'setting "currency" must be an ISO 4217 code in upper case from payments.currencies, not %',
			settings -> 'currency'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the provider's API, for reconciliation (paynow checks its own api_base, in C)
	-- (no user or password: the URLs asked are kept in reconciliation_checks.request, and the
	-- message does not repeat the value, which may hold one)
	IF kind <> 'paynow' AND settings ? 'api_base' AND coalesce(settings ->> 'api_base', '') !~ '^https?://[^/?#@[:space:]]+(/[^?#[:space:]]*)?$' THEN
		RAISE EXCEPTION 'setting "api_base" must be an http:// or https:// URL without credentials, query or fragment'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT k INTO unknown FROM unnest('{api_key,client_id,client_secret}'::text[]) AS k
	 WHERE settings ? k AND (coalesce(settings ->> k, '') !~ '^[!-~]+$' OR length(settings ->> k) > 500) LIMIT 1;
	IF unknown IS NOT NULL THEN
		RAISE EXCEPTION 'setting "%" must be a string of 1 to 500 printable ASCII characters without spaces', unknown
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF settings ? 'api_key' AND settings ->> 'api_key' !~ '^(sk|rk)_' THEN
		RAISE EXCEPTION 'setting "api_key" must be a Stripe secret or restricted key (sk_... or rk_...)'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The webhook signing secret (whsec_...) is added with payments.add_secret.';
	END IF;
	IF settings ? 'livemode' AND jsonb_typeof(settings -> 'livemode') <> 'boolean' THEN
		RAISE EXCEPTION 'setting "livemode" must be true or false, not %', settings -> 'livemode'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF settings ->> 'api_key' ~ '^(sk|rk)_(test|live)_'
	   AND (settings ->> 'api_key' ~ '^(sk|rk)_live_') <> coalesce((settings ->> 'livemode')::boolean, true) THEN
		RAISE EXCEPTION 'setting "api_key" is a %-mode key, but "livemode" is %',
			CASE WHEN settings ->> 'api_key' ~ '^(sk|rk)_live_' THEN 'live' ELSE 'test' END,
			coalesce(settings ->> 'livemode', 'true (by default)')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A test-mode provider takes "livemode": false; its events of the other mode are stored and ignored.';
	END IF;
	IF (settings ? 'client_id') <> (settings ? 'client_secret') THEN
		RAISE EXCEPTION 'settings "client_id" and "client_secret" go together'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	problem := coalesce(payments.settings_problem(kind, settings),
						CASE WHEN kind = 'meta' THEN payments.chat_settings_problem(settings) END,
						CASE WHEN kind = 'paynow' AND settings ? 'auth_email'
								  AND coalesce(settings ->> 'auth_email', '') !~ '^[^@[:space:]]+@[^@[:space:]]+$'
							 THEN 'auth_email must be an e-mail address' END);
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
DECLARE
	chat	text;
	problem	text;
BEGIN
	PERFORM payments.check_settings(kind, settings);
	-- (the name is checked by payments.check_provider)
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
	-- a WhatsApp chat's settings name Paynow providers (their currency, their return_url): a new
	-- setting of one must leave every chat that maps it usable
	IF kind = 'paynow' THEN
		SELECT m.name, payments.chat_settings_problem(m.settings) INTO chat, problem
		  FROM payments.providers m
		 WHERE m.kind = 'meta'
		   AND EXISTS (SELECT FROM jsonb_each_text(m.settings -> 'paynow_providers') AS e (k, v)
					   WHERE e.v = register_provider.name)
		   AND payments.chat_settings_problem(m.settings) IS NOT NULL
		 LIMIT 1;
		IF FOUND THEN
			RAISE EXCEPTION 'these settings of provider "%" would break the WhatsApp chat of provider "%": %',
				name, chat, problem
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
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
	-- the secret itself is checked by payments.check_secret
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

-- Every secret, from add_secret or written by hand (payments_admin may write payments.secrets), is
-- checked for its provider's kind: an unusable one would verify nothing, and a Standard Webhooks
-- "whsec_" with an empty key would let anyone sign.  The message names the problem, never the
-- secret.
CREATE FUNCTION payments.check_secret()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	provider_kind	text;
	problem			text;
BEGIN
	-- a NOT NULL violation would show the row, secret included
	IF NEW.provider IS NULL OR NEW.secret IS NULL OR NEW.created_at IS NULL THEN
		RAISE EXCEPTION 'a secret needs a provider, a secret and created_at'
			USING ERRCODE = 'not_null_violation';
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.secret IS NOT DISTINCT FROM OLD.secret
	   AND NEW.provider IS NOT DISTINCT FROM OLD.provider
	   AND (OLD.revoked_at IS NULL OR NEW.revoked_at IS NOT NULL) THEN
		RETURN NEW;
	END IF;
	SELECT p.kind INTO provider_kind FROM payments.providers p WHERE p.name = NEW.provider;
	-- an unknown provider: the foreign key says so; a revoked secret is never used (and a restore
	-- keeps one from before these checks)
	IF FOUND AND NEW.revoked_at IS NULL THEN
		problem := payments.secret_problem(provider_kind, NEW.secret);
		IF problem IS NOT NULL THEN
			RAISE EXCEPTION 'unusable secret for provider "%": %', NEW.provider, problem
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments.check_secret() IS
	'Trigger: refuses a secret its provider''s kind cannot use, naming the problem, never the secret';
CREATE TRIGGER secrets_check BEFORE INSERT OR UPDATE ON payments.secrets
	FOR EACH ROW EXECUTE FUNCTION payments.check_secret();
REVOKE ALL ON FUNCTION payments.check_secret() FROM PUBLIC;

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
SET search_path = pg_catalog, pg_temp
SET jit = off;	-- its queries are small: compiling them would cost more than running them
COMMENT ON FUNCTION payments.ingest(text, jsonb, bytea, inet, text) IS
	'Verifies one webhook delivery and stores it once; returns the HTTP status and outcome for the sender';

-- The shim stores the deliveries that arrive together in one transaction (group commit), with one
-- call: each delivery in a subtransaction of its own, so that one bad delivery fails none of the
-- others, and the new Stripe events of the batch in one statement (payments.store_stripe_events;
-- extension/ingest_batch.c).
CREATE FUNCTION payments.ingest_batch(provider text[], headers jsonb[], body bytea[],
									  source_ip inet[], request_id text[])
RETURNS TABLE (http_status integer, outcome text, event_id text, sqlstate text, error text)
AS 'MODULE_PATHNAME', 'ingest_batch'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off;
COMMENT ON FUNCTION payments.ingest_batch(text[], jsonb[], bytea[], inet[], text[]) IS
	'payments.ingest for several deliveries (the elements of five arrays of one length) in one call: a row per delivery, in order, its answer, or on an error NULLs with the SQLSTATE and message, that delivery''s work rolled back and the others'' and the caller''s transaction going on (for the shim''s group commit)';

-- The shim commits a batch with synchronous_commit off and calls this right after, in the same
-- round trip, answering the batch only once it returns: the batch's locks (a receipt counter's
-- above all) are released without waiting for its WAL flush (extension/wal_flush.c).
CREATE FUNCTION payments.flush_wal()
RETURNS pg_lsn
AS 'MODULE_PATHNAME', 'flush_wal'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION payments.flush_wal() IS
	'Flushes the WAL up to where it has been written (and waits for synchronous standbys as a commit would under the caller''s synchronous_commit) and returns that position: every transaction committed before the call, asynchronous commits included, is then durable';

--------------------------------------------------------------------------------------------------
-- Payments: currencies, the state machine, receipts
--------------------------------------------------------------------------------------------------

-- Spread thin over its pages (fillfactor 10): a currency is looked up by code about three times
-- per delivery (its exponent, the check for a clear error, the foreign key of payments), and on
-- its two full pages the planner would scan all 180 rows rather than use the primary key.
CREATE TABLE payments.currencies (
	code		char(3) PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
	exponent	smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4)
) WITH (fillfactor = 10);
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
	('failed', false, 'the attempt failed; a late capture may still pay it, and a refund or dispute shows one did'),
	('cancelled', false, 'cancelled or expired before payment; a late capture may still pay it, and a refund or dispute shows one did'),
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
	('failed', 'partially_refunded'), ('failed', 'refunded'), ('failed', 'disputed'),
	('cancelled', 'paid'),
	('cancelled', 'partially_refunded'), ('cancelled', 'refunded'), ('cancelled', 'disputed'),
	('paid', 'partially_refunded'), ('paid', 'refunded'), ('paid', 'disputed'),
	('partially_refunded', 'refunded'), ('partially_refunded', 'disputed'),
	('disputed', 'paid'), ('disputed', 'partially_refunded'), ('disputed', 'refunded');

-- The status of a payment and of its transitions: a domain rather than a foreign key to
-- payments.statuses.  A foreign key is checked by a query per written row that also locks the
-- referenced row (FOR KEY SHARE), and the ingest path writes three status columns per event;
-- the statuses are those of the state machine's code, so the list does not change without it.
-- payments.statuses describes them and payments.transitions (keyed to it) orders them.
CREATE DOMAIN payments.payment_status AS text
	CHECK (VALUE IN ('pending', 'paid', 'failed', 'cancelled', 'partially_refunded', 'disputed', 'refunded'));
COMMENT ON DOMAIN payments.payment_status IS 'A normalized payment status: one of payments.statuses';

-- domains rather than table checks, like payments.event_state
CREATE DOMAIN payments.payment_kind AS text CHECK (VALUE IN ('collection', 'payout', 'refund', 'exchange'));
COMMENT ON DOMAIN payments.payment_kind IS 'What a payment is: money collected, paid out, a refund, or an exchange between currencies (the merchant''s own money: an Eversend payment created by news that stated no kind, which later news said was one)';
CREATE DOMAIN payments.nonnegative_amount AS numeric CHECK (VALUE >= 0);
COMMENT ON DOMAIN payments.nonnegative_amount IS 'An amount of money in major units, never negative';
-- 6 to 15 digits, the first not 0, written without a bounded repeat ({5,14}): PostgreSQL's regex
-- engine builds its automaton at every match, and the repeat doubled the cost of the check (with
-- payments.e164_digits, 1% of a delivery's work)
CREATE DOMAIN payments.e164_phone AS text
	CHECK (VALUE ~ '^[1-9][0-9]*$' AND pg_catalog.length(VALUE) BETWEEN 6 AND 15);
COMMENT ON DOMAIN payments.e164_phone IS 'A phone number as E.164 digits: country code first, no plus sign';
CREATE DOMAIN payments.alpha2_country AS char(2) CHECK (VALUE ~ '^[A-Z]{2}$');
COMMENT ON DOMAIN payments.alpha2_country IS 'An ISO 3166 alpha-2 country code in upper case';

CREATE TABLE payments.payments (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider		text NOT NULL REFERENCES payments.providers (name),
	provider_ref	text NOT NULL,
	reference		text,
	kind			payments.payment_kind NOT NULL DEFAULT 'collection',
	status			payments.payment_status NOT NULL,
	amount			payments.nonnegative_amount,
	currency		char(3) REFERENCES payments.currencies (code),
	amount_refunded	payments.nonnegative_amount NOT NULL DEFAULT 0,
	fee				numeric,
	method			text,
	donor_name		text,
	donor_phone		payments.e164_phone,
	donor_email		text,
	country			payments.alpha2_country,
	metadata		jsonb NOT NULL DEFAULT '{}',
	paid_at			timestamptz,
	status_at		timestamptz NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (provider, provider_ref)
);
CREATE INDEX payments_reference_idx ON payments.payments (reference);
CREATE INDEX payments_created_at_idx ON payments.payments USING brin (created_at);
COMMENT ON TABLE payments.payments IS
	'One row per provider payment object; amount in major units of currency; moved only forward, by payments.apply_change (for stored events, batches and reconciliation)';
COMMENT ON COLUMN payments.payments.status_at IS 'The provider''s time of the current status; older events never move the payment';
COMMENT ON COLUMN payments.payments.donor_phone IS 'E.164 digits, no plus sign';
COMMENT ON COLUMN payments.payments.paid_at IS 'The time of the first news that it was paid, never later than when that news arrived (its event''s received_at); its day is the receipt''s (payments.receipt_day)';

CREATE TABLE payments.status_history (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id		bigint NOT NULL REFERENCES payments.payments (id) ON DELETE CASCADE,
	from_status		payments.payment_status,
	to_status		payments.payment_status NOT NULL,
	event_id		bigint REFERENCES payments.events (id),
	status_at		timestamptz NOT NULL,
	recorded_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX status_history_payment_idx ON payments.status_history (payment_id);
COMMENT ON TABLE payments.status_history IS 'Every applied transition (from_status NULL: the payment was created)';

CREATE TABLE payments.refused_transitions (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id		bigint NOT NULL REFERENCES payments.payments (id) ON DELETE CASCADE,
	from_status		payments.payment_status NOT NULL,
	to_status		payments.payment_status NOT NULL,
	event_id		bigint REFERENCES payments.events (id),
	reason			text NOT NULL,
	recorded_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refused_transitions_payment_idx ON payments.refused_transitions (payment_id);
COMMENT ON TABLE payments.refused_transitions IS
	'Transitions an event asked for and the state machine refused (not allowed, or older than the current status)';

-- A payment's refunded total is a running total (refund events report it so far, a refunded
-- status means all of it): a day's refunds are the increases of those totals made that day, kept
-- here when apply_change makes them, since a second partial refund changes no status.  Each report
-- counts at its own time, whatever the order of delivery: the rows are the increases of the
-- running maximum of the reports in time order.
CREATE TABLE payments.refunds (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id		bigint NOT NULL REFERENCES payments.payments (id) ON DELETE CASCADE,
	amount			numeric NOT NULL CHECK (amount > 0),
	refunded_at		timestamptz NOT NULL,
	event_id		bigint REFERENCES payments.events (id),
	recorded_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment_idx ON payments.refunds (payment_id);
CREATE INDEX refunds_at_idx ON payments.refunds (refunded_at);
COMMENT ON TABLE payments.refunds IS
	'Money given back: each increase of a payment''s refunded total (a refund, a dispute lost), in its currency''s major units, at the provider''s time of the event that reported it (reports delivered out of order count at their own times)';

-- a domain rather than a table check, like payments.event_state: the counter is written by every
-- paying transaction
CREATE DOMAIN payments.receipt_serial AS integer CHECK (VALUE BETWEEN 1 AND 999999);
COMMENT ON DOMAIN payments.receipt_serial IS 'The number of a receipt within its prefix and day: six digits at most';

CREATE TABLE payments.receipt_counters (
	prefix		text NOT NULL,
	day			date NOT NULL,
	last_no		payments.receipt_serial NOT NULL,
	PRIMARY KEY (prefix, day)
);
COMMENT ON TABLE payments.receipt_counters IS
	'Last receipt number per prefix and day, updated in the paying transaction: gapless, never a sequence';

-- A table of its own rather than a column of payments: the number is taken at commit, and
-- setting a column would write the payment a second time in its transaction (every index of
-- payments again, its foreign keys checked again); a receipt is one narrow insert.
CREATE TABLE payments.receipts (
	receipt_no	text PRIMARY KEY,
	payment_id	bigint NOT NULL UNIQUE REFERENCES payments.payments (id) ON DELETE CASCADE,
	issued_at	timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE payments.receipts IS
	'Receipt numbers, LP-YYYYMMDD-NNNNNN: one per payment, issued at the commit that first made it paid; the day is that of its paid status time, issued_at the commit''s';

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

-- The small functions called for every event are PL/pgSQL, whose plans are kept for the session,
-- or SQL-standard bodies (bound to their objects when created, so no search_path is needed) that
-- the planner inlines; a LANGUAGE sql function with a SET clause is planned again at every call
-- in a new (sub)transaction, which the shim's group commit makes of every delivery.
--
-- The steps of the ingest path (payments.store_event, settle_event, apply_change, the kinds'
-- *_change, major_units, keep_donor_key, and at commit enqueue_transition, chat_payment_notice,
-- enqueue_raw_event) have no SET clause: they run under the search_path pinned by the SECURITY
-- DEFINER function or entry point that calls them (payments.ingest, apply_event,
-- transition_committed, ...), name every object with its schema, and are not granted to the
-- ingest or analyst roles (sql/roles.sql checks both).  A SET clause saves and restores the
-- setting at every call: 6% of the work of a delivery.

-- A currency is looked up two or three times per delivery: kept in backend memory once read
-- (extension/currencies.c), like the providers.
CREATE FUNCTION payments.currency_exponent(code text)
RETURNS integer
AS 'MODULE_PATHNAME', 'currency_exponent'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION payments.currency_exponent(text) IS
	'The ISO 4217 exponent of a currency in payments.currencies (its code in any case), or NULL when it is not there';
REVOKE ALL ON FUNCTION payments.currency_exponent(text) FROM PUBLIC;

CREATE FUNCTION payments.amount_in_currency(amount numeric, currency text)
RETURNS numeric
LANGUAGE sql STABLE
RETURN CASE WHEN amount = round(amount, payments.currency_exponent(currency))
			THEN round(amount, payments.currency_exponent(currency)) END;
COMMENT ON FUNCTION payments.amount_in_currency(numeric, text) IS
	'A decimal amount as sent (Paynow, Eversend, PayPal) at its currency''s scale, as Stripe''s are (20.5 KES is 20.50); NULL, an amount not known, when it is finer than the currency''s minor unit (100.5 UGX, 10.005 USD) or the currency is missing or unknown';
REVOKE ALL ON FUNCTION payments.amount_in_currency(numeric, text) FROM PUBLIC;

CREATE FUNCTION payments.provider_time(value text)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'provider_time'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION payments.provider_time(text) IS
	'A provider''s ISO 8601 time as events read it: UTC when it has no zone, NULL when it does not parse or is outside the years 1 to 9999 (a receipt number has four digits of year)';
REVOKE ALL ON FUNCTION payments.provider_time(text) FROM PUBLIC;

CREATE TRIGGER currencies_forget AFTER INSERT OR UPDATE OR DELETE ON payments.currencies
	FOR EACH ROW EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.currencies ENABLE ALWAYS TRIGGER currencies_forget;
CREATE TRIGGER currencies_truncate_forget AFTER TRUNCATE ON payments.currencies
	FOR EACH STATEMENT EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.currencies ENABLE ALWAYS TRIGGER currencies_truncate_forget;

CREATE FUNCTION payments.major_units(minor numeric, currency text, exponent_override integer DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	e		integer := coalesce(exponent_override, payments.currency_exponent(currency));
BEGIN
	RETURN round(minor / 10::numeric ^ e, e);
END
$$;
COMMENT ON FUNCTION payments.major_units(numeric, text, integer) IS
	'Converts an amount in minor units (cents) to major units with the currency''s ISO 4217 exponent; NULL for an unknown currency';

CREATE FUNCTION payments.stored_headers(headers jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN headers - '{authorization,cookie,proxy-authorization}'::pg_catalog.text[];
COMMENT ON FUNCTION payments.stored_headers(jsonb) IS
	'A delivery''s headers as stored: without those that carry credentials rather than webhook data';

-- A refused delivery's headers as kept: anyone may send one, so they are bounded.  Up to 4 KB they
-- are kept as stored; beyond, each value is cut to 256 characters and headers are kept, in name
-- order, while they add up to 4 KB, with a "(cut)" entry saying how many were kept (no header may
-- be named so: parentheses are not in HTTP's token).  PayPal's transmission id comes first, kept
-- whatever else was sent: a verified delivery refused keeps it spent (kind_paypal.c).  16 KB of headers a refusal made the table
-- grow by 17 KB a row, 70 GB a day from one address at the shim's default rate limit
CREATE FUNCTION payments.rejected_headers(headers jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN pg_catalog.octet_length(payments.stored_headers(headers)::text) <= 4096
			THEN payments.stored_headers(headers)
			ELSE (WITH h AS (
					SELECT e.key, pg_catalog.left(e.value, 256) AS value,
						   pg_catalog.sum(pg_catalog.octet_length(e.key) + pg_catalog.octet_length(pg_catalog.left(e.value, 256)) + 6)
							   OVER (ORDER BY e.key = 'paypal-transmission-id' DESC, e.key COLLATE pg_catalog."C") AS upto
					  FROM pg_catalog.jsonb_each_text(payments.stored_headers(headers)) e)
				  SELECT coalesce(pg_catalog.jsonb_object_agg(h.key, h.value) FILTER (WHERE h.upto <= 4096), '{}')
						 || pg_catalog.jsonb_build_object('(cut)', pg_catalog.format('%s of %s headers kept, their values cut to 256 characters',
																		pg_catalog.count(*) FILTER (WHERE h.upto <= 4096), pg_catalog.count(*)))
					FROM h) END;
COMMENT ON FUNCTION payments.rejected_headers(jsonb) IS
	'A refused delivery''s headers as kept in payments.rejections: as stored (payments.stored_headers) up to 4 KB; beyond, values cut to 256 characters and headers kept in name order up to 4 KB (paypal-transmission-id first), with a "(cut)" entry saying how many were kept';

-- A phone number with its Unicode spaces and dashes as plain spaces (copied from a contact or a
-- page: a no-break space, U+202F as French numbers are set, a non-breaking hyphen, a minus sign),
-- for phone_digits.  A number in ASCII, nearly every one, is returned as it is, with no regular
-- expression; no backslash, as for phone_digits below
CREATE FUNCTION payments.phone_plain(phone text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN pg_catalog.octet_length(phone) = pg_catalog.length(phone) THEN phone
			ELSE pg_catalog.regexp_replace(phone,
				'[' || pg_catalog.chr(133) || pg_catalog.chr(160) || pg_catalog.chr(173) || pg_catalog.chr(5760) || pg_catalog.chr(8192) || '-'
				|| pg_catalog.chr(8213) || pg_catalog.chr(8232) || '-' || pg_catalog.chr(8239) || pg_catalog.chr(8287) || '-'
				|| pg_catalog.chr(8303) || pg_catalog.chr(8722) || pg_catalog.chr(12288) || pg_catalog.chr(65279) || pg_catalog.chr(65293)
				|| ']', ' ', 'g') END;
COMMENT ON FUNCTION payments.phone_plain(text) IS
	'A phone number as written with its Unicode spaces and dashes (U+0085, U+00A0, U+00AD, U+1680, U+2000 to U+2015, U+2028 to U+202F, U+205F to U+206F, U+2212, U+3000, U+FEFF, U+FF0D) made plain spaces, for payments.phone_digits';

-- A phone number's digits: spaces, dots, dashes, parentheses and + dropped, and the trunk zero
-- written in parentheses after the country code ("+263 (0)77 123 4567", "+44 (0)20 7946 0000"),
-- which is not dialled from abroad (kept, it made another number: 2630771234567).  Written so that
-- it is inlined in the statements that call it (no SET clause), cheap for the numbers without a
-- parenthesis (most: the second regular expression is skipped), and without a backslash (its
-- definition would read another way where standard_conforming_strings is off)
CREATE FUNCTION payments.phone_digits(phone text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN pg_catalog.regexp_replace(
		CASE WHEN pg_catalog.strpos(phone, '(') > 0
			 THEN pg_catalog.regexp_replace(payments.phone_plain(phone), '(?<=^[[:space:]]*[+]?[[:space:]]*[1-9][0-9]?[0-9]?[[:space:]]*)[(][[:space:]]*0[[:space:]]*[)]', '')
			 ELSE payments.phone_plain(phone) END,
		'[[:space:]().+-]', '', 'g');
COMMENT ON FUNCTION payments.phone_digits(text) IS
	'The digits of a phone number as written: spaces (Unicode ones too: payments.phone_plain), dots, dashes, parentheses and + dropped, and a trunk zero in parentheses after the country code ("+263 (0)77 123 4567" gives 263771234567)';

CREATE FUNCTION payments.e164_digits(phone text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN payments.phone_digits(phone) ~ '^[1-9][0-9]*$' AND pg_catalog.length(payments.phone_digits(phone)) BETWEEN 6 AND 15
			THEN payments.phone_digits(phone) END;
COMMENT ON FUNCTION payments.e164_digits(text) IS
	'A phone number as E.164 digits (country code first, no plus sign; spaces (a no-break space too), dots, dashes, parentheses and + ignored, and a trunk zero in parentheses after the country code: "+263 (0)77 123 4567" is 263771234567), or NULL when it is not one';

-- WhatsApp usernames (2026): a user who adopts one may have their phone number withheld from
-- webhooks, and is then known by a business-scoped user id (BSUID) alone: a two-letter ISO country
-- code in upper case, a period, and up to 128 letters and digits (US.13491208655302741918); a
-- parent BSUID, shared by linked business portfolios, has ENT after the country
-- (US.ENT.11815799212886844830).  Meta's webhooks carry it as messages[].from_user_id and
-- contacts[].user_id; the Graph API takes it as "recipient" where a phone number is "to".  Kept
-- exactly as Meta wrote it (case and all): anything else is not one.
CREATE FUNCTION payments.whatsapp_bsuid(id text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN id ~ '^[A-Z]{2}[.](ENT[.])?[A-Za-z0-9]{1,128}$' THEN id END;
COMMENT ON FUNCTION payments.whatsapp_bsuid(text) IS
	'A WhatsApp business-scoped user id (BSUID: country code, period, up to 128 letters and digits, e.g. US.13491208655302741918; a parent BSUID with ENT., e.g. US.ENT.11815799212886844830) as it is, or NULL when the text is not one';

-- Who a WhatsApp user is to the chat (chat_sessions.wa_id, volunteers, flow tokens, admin_numbers,
-- outbox recipients): the phone number as E.164 digits when Meta gives it, else the BSUID
CREATE FUNCTION payments.whatsapp_user_id(id text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(payments.e164_digits(id), payments.whatsapp_bsuid(id));
COMMENT ON FUNCTION payments.whatsapp_user_id(text) IS
	'A WhatsApp user id normalized: a phone number as E.164 digits (payments.e164_digits), else a business-scoped user id as it is (payments.whatsapp_bsuid); NULL when it is neither';

-- The Graph API's send-message body names a phone number "to", a BSUID "recipient" (with both, "to"
-- wins; Meta recommends the phone number whenever it is known, which the chat keeps as the wa_id)
CREATE FUNCTION payments.whatsapp_recipient_field(id text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN payments.whatsapp_bsuid(id) IS NOT NULL THEN 'recipient' ELSE 'to' END;
COMMENT ON FUNCTION payments.whatsapp_recipient_field(text) IS
	'The field of a Graph API send-message body that names a WhatsApp user: recipient for a business-scoped user id (BSUID), to for anything else (a phone number)';

CREATE FUNCTION payments.country_code(country text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN pg_catalog.upper(country COLLATE pg_catalog."C") ~ '^[A-Z]{2}$' THEN pg_catalog.upper(country COLLATE pg_catalog."C") END;
COMMENT ON FUNCTION payments.country_code(text) IS 'An ISO 3166 alpha-2 country code in upper case, or NULL';

--------------------------------------------------------------------------------------------------
-- Applying changes: the one place where payments move
--------------------------------------------------------------------------------------------------

-- The payments.* settings are read through the extension's library, never with current_setting
-- alone: a value set while the library was not loaded (ALTER DATABASE in another session, say)
-- is checked only when it loads, and refused for the default; read without it, a report would
-- use a value that ingest refused.
CREATE FUNCTION payments.effective_setting(name text)
RETURNS text
AS 'MODULE_PATHNAME', 'effective_setting'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.effective_setting(text) IS
	'The value of one of the payments.* settings as the extension uses it: read with its library loaded, so that a value not checked yet is checked (and, if refused, the default used) as in ingest';

CREATE FUNCTION payments.receipt_day(paid_at timestamptz)
RETURNS date
AS 'MODULE_PATHNAME', 'receipt_day'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.receipt_day(timestamptz) IS
	'The day of a time in the receipt time zone (the payments.receipt_timezone setting, default UTC), summer time included; a zone name that is also an abbreviation (CET) is the zone, never the abbreviation';

CREATE FUNCTION payments.receipt_local_time(at timestamptz)
RETURNS timestamp
AS 'MODULE_PATHNAME', 'receipt_local_time'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.receipt_local_time(timestamptz) IS
	'The date and time a clock in the receipt time zone shows at a time (summer time included; a zone name that is also an abbreviation is the zone, as for receipt_day)';

-- What a transition recorded by the transaction does at its commit (extension/transitions.c), in
-- this order: the payment's receipt number when it became paid, taken then so that the counter's
-- lock is held only from just before the commit to the end of its WAL flush; the outbox, when an
-- enabled endpoint takes its type (payments.enqueue_transition); the donor's WhatsApp message,
-- for a chat donation (payments.chat_payment_notice).  So the outbox and the thank-you carry the
-- number.  One deferred trigger in C rather than a trigger each with WHEN clauses (each WHEN
-- clause is read back from the catalog and prepared again by every insert into status_history)
-- or PL/pgSQL steps: the receipt is three kept statements, and whether any endpoint is enabled is
-- kept in backend memory.
CREATE FUNCTION payments.transition_committed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'transition_committed'
LANGUAGE C
-- deferred to commit, it runs after ingest's SECURITY DEFINER context has ended, as the login
-- role (a member of payments_ingest, which may not write the counters, read the endpoints or
-- write the outbox)
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION payments.transition_committed() IS
	'Trigger: at commit, for a transition recorded by the transaction, issues the receipt of a payment that became paid, queues the transition for the endpoints that take it and tells a WhatsApp donor';

CREATE FUNCTION payments.issue_receipt(payment_id bigint, paid_at timestamptz)
RETURNS void
AS 'MODULE_PATHNAME', 'issue_receipt'
LANGUAGE C STRICT;
COMMENT ON FUNCTION payments.issue_receipt(bigint, timestamptz) IS
	'Gives a paid collection its receipt number, PREFIX-YYYYMMDD-NNNNNN, unless it has one (payouts and refunds get none): the prefix is its provider''s receipt_prefix setting, else payments.receipt_prefix; the day is that of paid_at (payments.receipt_day); the next number of the counter, whose row stays locked until the transaction ends, so numbers are gapless and unique and a rollback gives its number back';

CREATE CONSTRAINT TRIGGER status_history_at_commit
	AFTER INSERT ON payments.status_history
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION payments.transition_committed();

-- The late news that a payment already refunded or disputed was paid (apply_change) is no
-- transition: its receipt is numbered at the commit by a trigger of its own, for the same reason
CREATE FUNCTION payments.paid_late_committed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'paid_late_committed'
LANGUAGE C
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION payments.paid_late_committed() IS
	'Trigger: at commit, issues the receipt of a payment that the transaction found paid after it was refunded or disputed';

CREATE CONSTRAINT TRIGGER payments_paid_late_at_commit
	AFTER UPDATE OF paid_at ON payments.payments
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW WHEN (OLD.paid_at IS NULL AND NEW.paid_at IS NOT NULL AND NEW.status <> 'paid')
	EXECUTE FUNCTION payments.paid_late_committed();

-- A transaction that pays several payments numbers them together at its commit, taking the
-- counters it needs in (prefix, day) order (extension/receipts.c): two transactions that need the
-- same two counters (two prefixes, or two days at midnight) then wait for each other instead of
-- deadlocking.  Each payment made paid is noted, in backend memory, as its row is written; a
-- rolled-back subtransaction's notes go with it.  BEFORE row triggers: no statement, no queued
-- event; named to fire after the other BEFORE triggers of payments.payments.
CREATE FUNCTION payments.receipt_noted()
RETURNS trigger
AS 'MODULE_PATHNAME', 'receipt_noted'
LANGUAGE C;
COMMENT ON FUNCTION payments.receipt_noted() IS
	'Trigger: notes a payment the transaction made paid (a transition to paid, or the late news of its payment), for its receipt to be numbered at the commit with the transaction''s others, their counters taken in (prefix, day) order';

CREATE TRIGGER status_history_receipt_noted
	BEFORE INSERT ON payments.status_history
	FOR EACH ROW WHEN (NEW.to_status = 'paid')
	EXECUTE FUNCTION payments.receipt_noted();

CREATE TRIGGER payments_receipt_noted
	BEFORE UPDATE OF paid_at ON payments.payments
	FOR EACH ROW WHEN (OLD.paid_at IS NULL AND NEW.paid_at IS NOT NULL AND NEW.status <> 'paid')
	EXECUTE FUNCTION payments.receipt_noted();

CREATE FUNCTION payments.refunded_total(status payments.payment_status, amount numeric, amount_refunded numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN status = 'refunded' THEN coalesce(amount, amount_refunded) ELSE amount_refunded END;
COMMENT ON FUNCTION payments.refunded_total(payments.payment_status, numeric, numeric) IS
	'What a payment has given back so far: all of it once refunded, else its amount_refunded';

CREATE FUNCTION payments.take_from_refunds(taken numeric, refund_ids bigint[])
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	r		record;
BEGIN
	FOR r IN SELECT f.id, f.amount FROM pg_catalog.unnest(refund_ids) WITH ORDINALITY AS i (id, n)
			   JOIN payments.refunds f ON f.id = i.id
			  ORDER BY i.n LOOP
		EXIT WHEN taken <= 0;
		IF r.amount <= taken THEN
			DELETE FROM payments.refunds f WHERE f.id = r.id;
		ELSE
			UPDATE payments.refunds f SET amount = f.amount - taken WHERE f.id = r.id;
		END IF;
		taken := taken - r.amount;
	END LOOP;
END
$$;
COMMENT ON FUNCTION payments.take_from_refunds(numeric, bigint[]) IS
	'Takes an amount off refund rows, in the order given: each row taken whole goes, the last one is reduced (payments.apply_change, when a total moves between times or shrinks)';

-- An Eversend payment's kind: the first news may state none (PROVIDERS.md section 5 leaves the
-- payload's shape open, and a pending event may carry no type), and a payment it creates is then
-- a collection by assumption (metadata.kind_assumed).  The first news that states a kind sets it
-- while the payment has no receipt; one that contradicts a kind stated before, or comes after the
-- assumed collection's receipt was issued (receipts are gapless: none is taken back), is refused
CREATE FUNCTION payments.kind_refused(pay payments.payments, kind text)
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	receipt	text;
BEGIN
	IF kind IS NULL OR kind = pay.kind THEN
		RETURN NULL;
	END IF;
	IF NOT pay.metadata ? 'kind_assumed' THEN
		RETURN pg_catalog.format('the news says kind %s; the payment''s kind is %s, as earlier news said', kind, pay.kind);
	END IF;
	SELECT r.receipt_no INTO receipt FROM payments.receipts r WHERE r.payment_id = pay.id;
	IF FOUND THEN
		RETURN pg_catalog.format('the news says kind %s; the payment, kind %s assumed (its first news stated none), has receipt %s already',
								 kind, pay.kind, receipt);
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION payments.kind_refused(payments.payments, text) IS
	'Why news stating a kind may not set the payment''s kind, or NULL: it contradicts the kind stated before (the payment has no metadata.kind_assumed), or the payment, a collection assumed, has a receipt already';
REVOKE ALL ON FUNCTION payments.kind_refused(payments.payments, text) FROM PUBLIC;

-- Whether a provider's statuses are dated by their arrival (Paynow's status updates and poll
-- replies carry no time): news that it was paid, arriving after a dispute, is then no later than
-- the dispute, only later delivered, and never the dispute won (Paynow's Paid again after a
-- dispute has its first Paid's event id, a duplicate)
CREATE FUNCTION payments.dated_by_arrival(provider_name text)
RETURNS boolean
LANGUAGE sql STABLE
RETURN EXISTS (SELECT FROM payments.providers v WHERE v.name = provider_name AND v.kind = 'paynow');
COMMENT ON FUNCTION payments.dated_by_arrival(text) IS
	'Whether a provider''s statuses carry no time of their own and are dated by their arrival (paynow): used by apply_change, where such news of payment after a dispute is the late news of the payment, not the dispute won';
REVOKE ALL ON FUNCTION payments.dated_by_arrival(text) FROM PUBLIC;

CREATE FUNCTION payments.apply_change(event_row bigint, provider_name text, change payments.payment_change)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
	pay		payments.payments;
	at		timestamptz := coalesce(change.status_at, now());
	refunded_before numeric;
	refunded_after numeric;
	says_all boolean;
	says_paid boolean;	-- news that it was paid (before a dispute won is read as a refund's status)
	reported numeric;
	recorded numeric;
	recorded_by numeric;
	moved	numeric;
	outcome	text;
	flagged	boolean := false;
	refusal	text;
	paid_time timestamptz;	-- news of payment: its time, never later than the news arrived
BEGIN
	IF change.provider_ref IS NULL OR change.status IS NULL THEN
		RETURN 'ignored';
	END IF;
	change.currency := nullif(change.currency, '');
	-- 'infinity' casts to timestamptz: a payment paid then has no day, and no receipt number
	IF NOT pg_catalog.isfinite(at) THEN
		RAISE EXCEPTION 'the event''s time is %, not a moment', at USING ERRCODE = 'datetime_field_overflow';
	END IF;
	-- a payment is paid as of its news' time, but never later than that news was recorded (its
	-- event's arrival; now, for news of no event: an approval, a poll): news dated ahead, by a
	-- provider's clock or a sender's, would number its receipt into a day still to come
	IF change.status = 'paid' THEN
		paid_time := least(at, coalesce((SELECT e.received_at FROM payments.events e WHERE e.id = event_row), now()));
	END IF;
	IF change.currency IS NOT NULL AND payments.currency_exponent(change.currency) IS NULL THEN
		RAISE EXCEPTION 'unknown currency "%"', change.currency
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Add it to payments.currencies with its ISO 4217 exponent, then replay the event.';
	END IF;

	-- a new payment: created with its first status, in this transaction (an exchange too, the
	-- merchant's own money, kind exchange, in no report and given no receipt: later news of the
	-- transaction that states no kind finds it, instead of creating a collection)
	IF change.creates THEN
		INSERT INTO payments.payments AS p
			(provider, provider_ref, reference, kind, status, amount, currency, amount_refunded, fee,
			 method, donor_name, donor_phone, donor_email, country, metadata, status_at, paid_at)
		VALUES (provider_name, change.provider_ref, change.reference,
				coalesce(change.kind, 'collection'), change.status, change.amount, upper(change.currency COLLATE pg_catalog."C"),
				coalesce(change.amount_refunded, 0), change.fee, change.method, change.donor_name,
				payments.e164_digits(change.donor_phone), change.donor_email, payments.country_code(change.country),
				coalesce(change.metadata, '{}'), at, paid_time)
		ON CONFLICT (provider, provider_ref) DO NOTHING
		RETURNING p.id, p.status, payments.refunded_total(p.status, p.amount, p.amount_refunded)
		INTO pay.id, pay.status, refunded_after;
		IF FOUND THEN
			-- a paid one gets its receipt number at commit (payments.transition_committed)
			INSERT INTO payments.status_history (payment_id, from_status, to_status, event_id, status_at)
			VALUES (pay.id, NULL, pay.status, event_row, at);
			IF refunded_after > 0 THEN
				INSERT INTO payments.refunds (payment_id, amount, refunded_at, event_id)
				VALUES (pay.id, refunded_after, at, event_row);
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

	-- the kind: news that states one sets a kind assumed (a collection, created by news that
	-- stated none) while the payment has no receipt; news stating another kind than one stated
	-- before, or after the assumed collection's receipt, is refused whole (payments.kind_refused)
	IF change.kind IS NOT NULL AND (pay.metadata ? 'kind_assumed' OR change.kind <> pay.kind) THEN
		refusal := payments.kind_refused(pay, change.kind);
		IF refusal IS NOT NULL THEN
			INSERT INTO payments.refused_transitions (payment_id, from_status, to_status, event_id, reason)
			VALUES (pay.id, pay.status, change.status, event_row, refusal);
			RETURN 'ignored';
		END IF;
		UPDATE payments.payments p SET kind = change.kind, metadata = p.metadata - 'kind_assumed'
		 WHERE p.id = pay.id;
		pay.kind := change.kind;
		pay.metadata := pay.metadata - 'kind_assumed';
	END IF;
	-- (only news that creates a payment marks its kind assumed; a copy of the metadata is made
	-- only when there is the mark to take out)
	IF change.metadata ? 'kind_assumed' THEN
		change.metadata := change.metadata - 'kind_assumed';
	END IF;
	refunded_before := payments.refunded_total(pay.status, pay.amount, pay.amount_refunded);

	-- a Stripe refund says what its charge has taken so far (amount_captured, the change's
	-- amount): more than a paid payment knows, in its currency, is news of more taken, as news of
	-- payment would be (below), before the refund is measured against it (a hold captured in
	-- parts, 300 then 800 of 1000, whose refund of all 800 arrives before the second capture's
	-- news: refunded, 8.00 taken and given back, as in order; the late capture raises nothing)
	IF change.status IN ('refunded', 'partially_refunded') AND change.amount_refunded IS NOT NULL
	   AND pay.paid_at IS NOT NULL AND pay.status IN ('paid', 'partially_refunded', 'disputed')
	   AND change.amount > pay.amount AND upper(change.currency COLLATE pg_catalog."C") = pay.currency
	   AND EXISTS (SELECT FROM payments.providers v WHERE v.name = provider_name AND v.kind = 'stripe') THEN
		UPDATE payments.payments p SET amount = change.amount WHERE p.id = pay.id;
		pay.amount := change.amount;
	END IF;

	-- refund events report the total refunded so far: less than the amount is a partial refund
	IF change.status = 'refunded' AND change.amount_refunded < coalesce(pay.amount, change.amount) THEN
		change.status := 'partially_refunded';
	END IF;
	-- what the event says was given back by its time: all of it, or its total so far
	says_all := change.status = 'refunded';
	says_paid := change.status = 'paid';
	-- paid again (a dispute won) after money was given back: partially refunded, or refunded when
	-- all of it was, so that a dispute won before its opening arrives ends where it would in
	-- order.  A disputed payment not yet known as paid is won by news not older than the dispute;
	-- older news that it was paid is the late news of its payment (below), as is any from a
	-- provider whose news is dated by its arrival (payments.dated_by_arrival)
	IF change.status = 'paid' AND pay.status IN ('disputed', 'partially_refunded')
	   AND (pay.paid_at IS NOT NULL OR (pay.status = 'disputed' AND at >= pay.status_at
										  AND NOT (payments.dated_by_arrival(provider_name)
												   AND NOT coalesce(change.metadata ? 'approved_by', false))))
	   AND greatest(pay.amount_refunded, coalesce(change.amount_refunded, 0)) > 0 THEN
		change.status := CASE WHEN greatest(pay.amount_refunded, coalesce(change.amount_refunded, 0)) >= pay.amount
							  THEN 'refunded' ELSE 'partially_refunded' END;
	END IF;

	-- details the payment does not know yet are filled in; what it knows is kept, and the fee is
	-- taken only from news not older than its status (or when it has none), and in the payment's
	-- currency (a fee of news in another currency is no amount of this one).  The method is the
	-- first news of payment's, when it names one: an attempt that failed before (a card declined,
	-- then paid with PayPal) named the method tried, not the one used
	UPDATE payments.payments p
	   SET reference = coalesce(p.reference, change.reference),
		   amount = coalesce(p.amount, change.amount),
		   currency = coalesce(p.currency, upper(change.currency COLLATE pg_catalog."C")),
		   amount_refunded = greatest(p.amount_refunded, coalesce(change.amount_refunded, 0)),
		   fee = CASE WHEN (p.fee IS NULL OR at >= p.status_at)
						   AND (change.currency IS NULL OR p.currency IS NULL
								OR upper(change.currency COLLATE pg_catalog."C") = p.currency)
					  THEN coalesce(change.fee, p.fee) ELSE p.fee END,
		   method = CASE WHEN change.status = 'paid' AND p.paid_at IS NULL THEN coalesce(change.method, p.method)
						 ELSE coalesce(p.method, change.method) END,
		   donor_name = coalesce(p.donor_name, change.donor_name),
		   donor_phone = coalesce(p.donor_phone, payments.e164_digits(change.donor_phone)),
		   donor_email = coalesce(p.donor_email, change.donor_email),
		   country = coalesce(p.country, payments.country_code(change.country)),
		   metadata = coalesce(change.metadata, '{}') || p.metadata,
		   status_at = CASE WHEN change.status = p.status THEN greatest(p.status_at, at) ELSE p.status_at END,
		   updated_at = now()
	 WHERE p.id = pay.id;

	-- a WhatsApp donation Paynow first reports at another amount: the admins are told
	IF change.metadata ? 'paynow_amount_mismatch' AND NOT pay.metadata ? 'paynow_amount_mismatch' THEN
		PERFORM payments.chat_amount_mismatch(pay.id, change.metadata -> 'paynow_amount_mismatch');
	END IF;

	-- a payment an admin marked paid by hand (WhatsApp /approve) that the provider now reports paid:
	-- it may have been collected twice.  Flagged on the payment, the admins told, once
	IF change.status = 'paid' AND pay.status = 'paid' AND pay.metadata ? 'approved_by'
	   AND NOT pay.metadata ? 'paynow_paid_after_approval' THEN
		PERFORM payments.chat_paid_after_approval(pay.id, change);
		flagged := true;
	END IF;

	IF change.status = 'paid' AND pay.paid_at IS NULL
	   AND (pay.status IN ('partially_refunded', 'refunded')
			-- (an admin's approval, /approve, is no provider's news: it is dated when made)
			OR (pay.status = 'disputed' AND (at < pay.status_at
											 OR (payments.dated_by_arrival(provider_name)
												 AND NOT coalesce(change.metadata ? 'approved_by', false))))) THEN
		-- news that it was paid, after a refund or dispute already moved it past paid (out of
		-- order): no move back, but a fact, which its paid time, amount and receipt show as in
		-- order (a hold captured in part, 300 of 1000, whose refund of the 300 came first: all of
		-- what was taken is given back)
		UPDATE payments.payments p
		   SET paid_at = paid_time,
			   amount = CASE WHEN change.amount IS NOT NULL AND upper(change.currency COLLATE pg_catalog."C") IS NOT DISTINCT FROM p.currency
							 THEN change.amount ELSE p.amount END
		 WHERE p.id = pay.id;
		-- its receipt is numbered at the commit (payments.paid_late_committed)
		UPDATE payments.payments p SET status = 'refunded'
		 WHERE p.id = pay.id AND p.status = 'partially_refunded' AND p.amount_refunded >= p.amount;
		IF FOUND THEN
			INSERT INTO payments.status_history (payment_id, from_status, to_status, event_id, status_at)
			VALUES (pay.id, 'partially_refunded', 'refunded', event_row, pay.status_at);
		END IF;
		-- no more was given back than was taken: refunds recorded at what a refund reported before
		-- the amount taken was known (Eversend reversed 30.00, then paid 20.00) are cut to the
		-- payment's refunded total, the latest first
		SELECT payments.refunded_total(p.status, p.amount, p.amount_refunded) INTO refunded_after
		  FROM payments.payments p WHERE p.id = pay.id;
		SELECT coalesce(sum(f.amount), 0) - refunded_after INTO moved
		  FROM payments.refunds f WHERE f.payment_id = pay.id;
		IF moved > 0 THEN
			PERFORM payments.take_from_refunds(moved, ARRAY(SELECT f.id FROM payments.refunds f WHERE f.payment_id = pay.id
															  ORDER BY f.refunded_at DESC, f.id DESC));
		END IF;
		outcome := 'applied';
	ELSIF says_paid AND pay.paid_at IS NOT NULL AND pay.status IN ('paid', 'partially_refunded', 'disputed')
		  AND change.amount > pay.amount AND upper(change.currency COLLATE pg_catalog."C") = pay.currency
		  -- a Paynow transaction's amount never changes (payments.paynow_amount_checked): decided
		  -- here too, under the payment's lock, for news that was checked before another's payment
		  -- committed
		  AND NOT EXISTS (SELECT FROM payments.providers v WHERE v.name = provider_name AND v.kind = 'paynow') THEN
		-- more taken than it knew: a hold captured in several parts (Stripe's amounts captured
		-- and received are totals so far), or a second capture (PayPal's are summed after), also
		-- after a part was given back or while disputed (its status stays; a refunded payment
		-- gave back all it had taken when it was refunded)
		UPDATE payments.payments p SET amount = change.amount WHERE p.id = pay.id;
		outcome := 'applied';
	ELSIF change.status = pay.status THEN
		outcome := 'ignored';
	-- a refund is money given back, whatever happened since: one made before a dispute that was
	-- won since, delivered late, still moves the paid payment on (its status time stays)
	ELSIF at < pay.status_at
		  AND NOT (change.status IN ('partially_refunded', 'refunded') AND pay.status IN ('paid', 'partially_refunded')) THEN
		INSERT INTO payments.refused_transitions (payment_id, from_status, to_status, event_id, reason)
		VALUES (pay.id, pay.status, change.status, event_row, 'older than the current status');
		outcome := 'ignored';
	ELSIF NOT EXISTS (SELECT FROM payments.transitions t
					  WHERE t.from_status = pay.status AND t.to_status = change.status) THEN
		INSERT INTO payments.refused_transitions (payment_id, from_status, to_status, event_id, reason)
		VALUES (pay.id, pay.status, change.status, event_row, 'transition not allowed');
		outcome := 'ignored';
	ELSE
		-- paid now: the amount is what the news of payment says was taken (a hold captured in
		-- part, a capture above the order), in the payment's currency
		UPDATE payments.payments p
		   SET status = change.status,
			   status_at = greatest(p.status_at, at),
			   paid_at = CASE WHEN change.status = 'paid' THEN coalesce(p.paid_at, paid_time) ELSE p.paid_at END,
			   amount = CASE WHEN change.status = 'paid' AND p.paid_at IS NULL AND change.amount IS NOT NULL
								  AND upper(change.currency COLLATE pg_catalog."C") IS NOT DISTINCT FROM p.currency
							 THEN change.amount ELSE p.amount END
		 WHERE p.id = pay.id;
		INSERT INTO payments.status_history (payment_id, from_status, to_status, event_id, status_at)
		VALUES (pay.id, pay.status, change.status, event_row, at);
		outcome := 'applied';
	END IF;

	-- money given back, whether or not the status moved (a second partial refund does not)
	SELECT payments.refunded_total(p.status, p.amount, p.amount_refunded) INTO refunded_after
	  FROM payments.payments p WHERE p.id = pay.id;
	IF refunded_after > coalesce(refunded_before, 0) THEN
		-- the total raised: the increase is given back at the event's time (an older event raises
		-- it only when it is another part's: a second PayPal capture's refund); but a payment
		-- refunded in full already raises it only by news of its amount, known only now (Eversend
		-- reversed with no amount, then news that it was paid, or an older pending or failed news
		-- with the amount): that money was given back when it was refunded, its status's time
		INSERT INTO payments.refunds (payment_id, amount, refunded_at, event_id)
		VALUES (pay.id, refunded_after - coalesce(refunded_before, 0),
				CASE WHEN pay.status = 'refunded' THEN pay.status_at ELSE at END, event_row);
		outcome := 'applied';
	ELSE
		-- an older report of the running total, delivered after a newer one: what it says was
		-- given back by its time and is recorded only later (40.00 by the 11th, reported after
		-- 100.00 by the 12th) was given back at its time, and that much less later.  The rows
		-- stay the increases of the running maximum of the reports in time order; their sum,
		-- the payment's total, is unchanged
		-- (least() would skip a NULL: an event that reports no total reports nothing)
		-- A PayPal order refunded on several captures is told the other captures' totals known
		-- now, which may hold refunds made after this report's time: nothing is moved there
		reported := CASE WHEN says_all THEN refunded_after
						 WHEN change.amount_refunded IS NOT NULL THEN least(refunded_after, change.amount_refunded) END;
		IF reported > 0 AND (SELECT count(*) FROM payments.paypal_captures k
							  WHERE k.payment_id = pay.id AND k.refunded > 0) < 2 THEN
			SELECT coalesce(sum(f.amount), 0), coalesce(sum(f.amount) FILTER (WHERE f.refunded_at <= at), 0)
			  INTO recorded, recorded_by
			  FROM payments.refunds f WHERE f.payment_id = pay.id;
			moved := least(reported, recorded) - recorded_by;
			IF moved > 0 THEN
				INSERT INTO payments.refunds (payment_id, amount, refunded_at, event_id)
				VALUES (pay.id, moved, at, event_row);
				-- taken from the next later rows, in time order; a row left with nothing goes
				PERFORM payments.take_from_refunds(moved, ARRAY(SELECT f.id FROM payments.refunds f
																  WHERE f.payment_id = pay.id AND f.refunded_at > at
																  ORDER BY f.refunded_at, f.id));
				outcome := 'applied';
			END IF;
		END IF;
	END IF;
	RETURN CASE WHEN flagged THEN 'applied' ELSE outcome END;
END
$$;
COMMENT ON FUNCTION payments.apply_change(bigint, text, payments.payment_change) IS
	'Moves a payment by one normalized change: creates it (not for an exchange), sets a kind assumed to the one the change states (payments.kind_refused: a contradiction, or a kind after the assumed collection''s receipt, refuses the whole change), fills in details, or applies an allowed, not older transition (news that it was paid, after a refund or dispute, gives it its paid time and receipt; a Stripe refund reporting more captured than a paid payment knows raises its amount first, as news of more taken); the first news of payment sets the method it names; records any increase of its refunded total in payments.refunds at the event''s time (one a refund said before the amount was known, at that refund''s), and an older report of the total, delivered late, at its own time (taken from the later rows); news that a payment an admin approved by hand was paid is flagged (payments.chat_paid_after_approval); returns applied, ignored, or unresolved (the payment it refers to is not known yet)';

--------------------------------------------------------------------------------------------------
-- Normalization: Stripe
--------------------------------------------------------------------------------------------------

-- In C (extension/stripe_change.c): every Stripe delivery is normalized here, and as PL/pgSQL
-- its twenty-odd member reads cost as much as parsing the event into jsonb.
CREATE FUNCTION payments.stripe_change(payload jsonb)
RETURNS payments.payment_change
AS 'MODULE_PATHNAME', 'stripe_change'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION payments.stripe_change(jsonb) IS
	'What a Stripe snapshot event says about a payment (payment_intent.*, charge.*, charge.dispute.*, checkout.session.*), or NULL: any other event, a thin one (object v2.core.event) among them, whatever its created';

--------------------------------------------------------------------------------------------------
-- Normalization: Paynow and Eversend
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.paynow_change(payload jsonb, settings jsonb, received_at timestamptz)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	c		payments.payment_change;
	channel	text := lower(coalesce(payload ->> 'paymentchannel', payload ->> 'paymentinstrument', '') COLLATE pg_catalog."C");
BEGIN
	c.provider_ref := payload ->> 'paynowreference';
	c.creates := true;
	c.status := CASE lower((payload ->> 'status') COLLATE pg_catalog."C")
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
	-- an integration takes one currency; Paynow's messages do not say which
	c.currency := coalesce(settings ->> 'currency', 'USD');
	-- Paynow writes amounts with a dot, and may group thousands with commas (its own examples
	-- format numbers so): 1,000.00 is 1000.00
	c.amount := payments.amount_in_currency(
		CASE WHEN payload ->> 'amount' ~ '^([0-9]{1,12}|[0-9]{1,3}(,[0-9]{3}){1,3})([.][0-9]{1,2})?$'
			 THEN replace(payload ->> 'amount', ',', '')::numeric END, c.currency);
	c.method := CASE
		WHEN channel LIKE '%ecocash%' THEN 'ecocash'
		WHEN channel LIKE '%onemoney%' THEN 'onemoney'
		WHEN channel LIKE '%telecash%' THEN 'telecash'
		WHEN channel LIKE '%innbucks%' THEN 'innbucks'
		WHEN channel IN ('vmc', 'visa', 'mastercard') OR channel LIKE '%card%' THEN 'card'
		WHEN channel LIKE '%zimswitch%' THEN 'zimswitch'
		WHEN channel <> '' THEN channel END;
	-- an amount said but not read (another format, finer than the minor unit) is kept as said:
	-- payments.paynow_amount_checked flags it as another amount than the payment's
	c.metadata := jsonb_strip_nulls(jsonb_build_object('pollurl', payload ->> 'pollurl',
		'paynow_amount_unread', CASE WHEN c.amount IS NULL THEN nullif(payload ->> 'amount', '') END));
	RETURN CASE WHEN c.status IS NOT NULL AND c.provider_ref IS NOT NULL THEN c END;
END
$$;
COMMENT ON FUNCTION payments.paynow_change(jsonb, jsonb, timestamptz) IS
	'What a Paynow status update says about a payment: Paid, Awaiting Delivery, Delivered are paid; Created, Sent, Awaiting Redirect, Created but not paid pending; Cancelled; Failed; Disputed; Refunded';

CREATE FUNCTION payments.paynow_initiated(change payments.payment_change, provider_name text)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ours	text;
	named	text;	-- the Paynow transaction our payment is known to be
BEGIN
	IF change IS NULL OR change.reference IS NULL THEN
		RETURN change;
	END IF;
	-- a payment we initiated (WhatsApp donations) exists before Paynow names it: it is known by
	-- our merchant reference, whether or not the initiate reply has been stored yet
	SELECT i.reference, p.metadata ->> 'paynowreference' INTO ours, named
	  FROM payments.paynow_initiations i
	  LEFT JOIN payments.payments p ON p.id = i.payment_id
	 WHERE i.provider = provider_name AND i.reference = change.reference;
	IF FOUND AND named IS DISTINCT FROM change.provider_ref AND named IS NOT NULL THEN
		-- another Paynow transaction made with our reference (the reference reused, a second
		-- payment made for it): it moves not our payment, whose transaction Paynow named; it is
		-- a payment of its own, by its paynowreference, so that money it took is not lost, marked
		-- with the reference it reused
		change.metadata := change.metadata || jsonb_build_object('paynow_reference_reused', ours);
	ELSIF FOUND THEN
		change.metadata := change.metadata || jsonb_build_object('paynowreference', change.provider_ref);
		change.provider_ref := ours;
		change.creates := false;
	ELSIF EXISTS (SELECT FROM payments.paynow_initiations i
				   WHERE i.reference = change.reference AND i.provider <> provider_name) THEN
		-- another provider's donation, sent here (one integration key serving two providers): not
		-- a payment of this one, which it would make and count twice.  Ignored
		RETURN NULL;
	END IF;
	RETURN change;
END
$$;
COMMENT ON FUNCTION payments.paynow_initiated(payments.payment_change, text) IS
	'A Paynow change about a payment this database initiated is applied to it (known by the merchant reference), not to a new payment named by paynowreference; one about another Paynow transaction than the one the payment is known to be (its metadata.paynowreference) is a payment of its own, by its paynowreference, marked metadata.paynow_reference_reused; one about another provider''s initiation is no change (ignored)';

-- A Paynow transaction's amount is the one it was made for and never changes, unlike a Stripe
-- intent's captured total or a PayPal order's captures: news of another amount is not the
-- rules the state machine applies to those
CREATE FUNCTION payments.paynow_amount_checked(change payments.payment_change, provider_name text)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	known	numeric;
	paid	timestamptz;
BEGIN
	IF change IS NULL OR (change.amount IS NULL AND NOT coalesce(change.metadata ? 'paynow_amount_unread', false)) THEN
		RETURN change;
	END IF;
	SELECT p.amount, p.paid_at INTO known, paid FROM payments.payments p
	 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref;
	IF known IS NULL OR known = change.amount THEN
		RETURN change;
	END IF;
	-- kept for review (the first one: the payment's metadata wins), and once paid the amount stays:
	-- a donation asked for 10.00 and reported paid 0.01 is 0.01 received, and a later Delivered
	-- of 500.00 raises nothing.  An amount not read is another amount too, kept as said
	change.metadata := coalesce(change.metadata, '{}') || jsonb_build_object('paynow_amount_mismatch',
		jsonb_strip_nulls(jsonb_build_object('known', known, 'reported', change.amount,
			'reported_as', CASE WHEN change.amount IS NULL THEN change.metadata ->> 'paynow_amount_unread' END,
			'status', change.status, 'at', change.status_at)));
	IF paid IS NOT NULL THEN
		change.amount := NULL;
	END IF;
	RETURN change;
END
$$;
COMMENT ON FUNCTION payments.paynow_amount_checked(payments.payment_change, text) IS
	'A Paynow change whose amount differs from the payment''s, or could not be read: keeps metadata.paynow_amount_mismatch (known, reported, or reported_as as said, status, at) and, once the payment is paid, leaves its amount as it is (a Paynow transaction''s amount never changes); the first news of payment still sets what was taken';

CREATE FUNCTION payments.eversend_change(payload jsonb, event_at timestamptz)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	t		jsonb := CASE WHEN payload ? 'transactionId' THEN payload ELSE payload -> 'data' END;
	c		payments.payment_change;
	-- the kind the event states: the transaction's own type, else the top level's eventType (or
	-- type, when the transaction is under data) when it names one: payout.success, collection.
	-- A type with a dot is an event's name, in the flat shape too (transaction.success names no
	-- kind: not "another type", whose news is ignored)
	stated	text := CASE WHEN strpos(t ->> 'type', '.') > 0
						 THEN substring(lower((t ->> 'type') COLLATE pg_catalog."C") FROM '^(collection|payout|exchange)[.]')
						 ELSE lower((t ->> 'type') COLLATE pg_catalog."C") END;
BEGIN
	c.provider_ref := t ->> 'transactionId';
	c.creates := true;
	c.status := CASE lower((t ->> 'status') COLLATE pg_catalog."C")
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
	IF stated IS NULL THEN
		stated := coalesce(substring(lower((payload ->> 'eventType') COLLATE pg_catalog."C") FROM '^(collection|payout|exchange)([.]|$)'),
						   CASE WHEN NOT payload ? 'transactionId'
								THEN substring(lower((payload ->> 'type') COLLATE pg_catalog."C") FROM '^(collection|payout|exchange)([.]|$)') END);
	END IF;
	-- a collection or a payout; an exchange between currencies moves the merchant's own money
	-- (a payment of kind exchange, in no report), and any other type is no payment: ignored.  An
	-- event that states no kind leaves it NULL: a payment it creates is a collection, assumed
	-- (metadata.kind_assumed), until news that states one (payments.kind_refused)
	c.kind := CASE stated WHEN 'payout' THEN 'payout' WHEN 'collection' THEN 'collection'
						  WHEN 'exchange' THEN 'exchange' END;
	IF stated IS NOT NULL AND c.kind IS NULL THEN
		RETURN NULL;
	END IF;
	c.metadata := CASE WHEN stated IS NULL THEN '{"kind_assumed": true}'::jsonb END;
	-- no currency (or "") says nothing of the money
	c.currency := upper(nullif(t ->> 'currency', '') COLLATE pg_catalog."C");
	c.amount := payments.amount_in_currency(
		CASE WHEN t ->> 'amount' ~ '^[0-9]{1,15}([.][0-9]{1,4})?$' THEN (t ->> 'amount')::numeric END, c.currency);
	c.fee := payments.amount_in_currency(
		CASE WHEN t ->> 'fees' ~ '^[0-9]{1,15}([.][0-9]{1,4})?$' THEN (t ->> 'fees')::numeric END, c.currency);
	c.method := 'mobile_money';
	c.country := t ->> 'country';
	c.donor_phone := coalesce(t ->> 'phoneNumber', t -> 'customer' ->> 'phone');
	c.donor_name := t -> 'customer' ->> 'name';
	c.donor_email := t -> 'customer' ->> 'email';
	RETURN CASE WHEN c.status IS NOT NULL AND c.provider_ref IS NOT NULL THEN c END;
END
$$;
COMMENT ON FUNCTION payments.eversend_change(jsonb, timestamptz) IS
	'What an Eversend transaction event says about a payment: successful (success, completed) is paid, pending (processing), failed, cancelled, reversed is refunded; kind from the transaction''s type, else from a top-level eventType/type naming one (payout.success): collection, payout or exchange (another type is ignored), none stated: NULL with metadata.kind_assumed; fees';

--------------------------------------------------------------------------------------------------
-- Normalization: PayPal
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.decimal_amount(value text, refund boolean DEFAULT false)
RETURNS numeric
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN value ~ '^-?([0-9]{1,15}([.][0-9]{1,4})?|[.][0-9]{1,4})$' AND (refund OR value !~ '^-')
			THEN abs(value::numeric) END;
COMMENT ON FUNCTION payments.decimal_amount(text, boolean) IS
	'A PayPal amount ("10.99", ".5"; PayPal''s Money pattern, at most 15 digits and 4 decimals) as numeric; a refund''s may be negative, as PayPal''s v1 API sends them, and counts by its size; anything else (NaN, Infinity, an exponent, which ::numeric takes) is NULL: an amount not known';

-- PayPal: an order may be paid by more than one capture (one declined, then another completed;
-- an authorization captured in parts), and a refund names its capture, with that capture's total
-- refunded: a payment's amount is what its completed captures took, its refunded total the sum of
-- theirs.  A v1 sale is a capture of its own payment.
CREATE TABLE payments.paypal_captures (
	provider	text NOT NULL REFERENCES payments.providers (name),
	capture_id	text NOT NULL,
	payment_id	bigint NOT NULL REFERENCES payments.payments (id) ON DELETE CASCADE,
	status		payments.payment_status NOT NULL,
	amount		numeric,
	currency	char(3),
	fee			numeric,
	refunded	numeric NOT NULL DEFAULT 0,
	refund_amounts jsonb NOT NULL DEFAULT '{}',
	status_at	timestamptz NOT NULL,
	PRIMARY KEY (provider, capture_id)
);
CREATE INDEX paypal_captures_payment_idx ON payments.paypal_captures (payment_id);
COMMENT ON TABLE payments.paypal_captures IS
	'PayPal captures (and v1 sales) of each payment, with their own status, amount, PayPal''s fee and refunded total: a payment''s amount, fee and refunded total are their sums';
COMMENT ON COLUMN payments.paypal_captures.refunded IS
	'What the capture has given back: the largest of the totals its refunds reported (total_refunded_amount), the sum of its refunds'' own amounts, once per refund id, and what reconciliation found';
COMMENT ON COLUMN payments.paypal_captures.refund_amounts IS
	'Each refund of the capture, by refund id: its amount and time (its resource''s create_time, sure, else its first report''s), and the last total_refunded_amount reported with it and that report''s time; a refund reported twice (PENDING, then COMPLETED) counts once';
SELECT pg_catalog.pg_extension_config_dump('payments.paypal_captures', '');

-- A refund's PayPal Money object ({currency_code or currency, value or total}) as an amount of a
-- capture's currency: a refund states its own currency, and one in another currency than its
-- capture's (or finer than its minor unit) is not an amount of the capture that can be counted
CREATE FUNCTION payments.paypal_money(money jsonb, value_key text, currency text)
RETURNS numeric
LANGUAGE sql STABLE
RETURN CASE WHEN coalesce(upper(coalesce(money ->> 'currency_code', money ->> 'currency') COLLATE pg_catalog."C"), currency) = currency
			THEN payments.amount_in_currency(payments.decimal_amount(money ->> value_key, true), currency) END;
COMMENT ON FUNCTION payments.paypal_money(jsonb, text, text) IS
	'A PayPal refund''s Money object (its value_key, value or total, in currency_code or currency) as an amount of its capture''s currency, by its size; NULL, not known, when it states another currency, is finer than the minor unit or is not a PayPal amount';
REVOKE ALL ON FUNCTION payments.paypal_money(jsonb, text, text) FROM PUBLIC;

-- What a PayPal capture had given back by a time, as its refunds known tell ({refund id: {amount,
-- at, sure, total, total_at}}): no more than it did, in any order of delivery.  The amounts of the
-- refunds made by then add up (S); a total reported at total_at holds every refund made by then,
-- and the refunds made after it add their amounts: total + S - S(total_at).  A refund dated by its
-- resource's create_time (sure) is dated right, and such a total plus the sure refunds after it
-- is given back for certain.  A refund dated by its first report (no create_time) may be dated
-- after a total that holds it, and counted twice by that total; or it may be one made after a
-- total, and a refund never reported lie between two totals: so of what the totals with every
-- refund after them known say, the least counts (else the most any says), never less than S, a
-- total reported, or what is certain.  One pass in time order
CREATE FUNCTION payments.paypal_refunded_by(refunds jsonb, by_time timestamptz)
RETURNS numeric
LANGUAGE sql STABLE
AS $$
	WITH f AS (
		SELECT (a.value ->> 'amount')::numeric AS amount, (a.value ->> 'at')::timestamptz AS at,
			   coalesce((a.value ->> 'sure')::boolean, false) AS sure,
			   (a.value ->> 'total')::numeric AS total, (a.value ->> 'total_at')::timestamptz AS total_at
		  FROM jsonb_each(refunds) a),
	points AS (
		SELECT f.at AS t, f.amount, f.sure, NULL::numeric AS total, f.amount IS NULL AS unknown FROM f WHERE f.at <= by_time
		UNION ALL
		SELECT f.total_at, NULL, false, f.total, false FROM f WHERE f.total IS NOT NULL AND f.total_at <= by_time),
	running AS (
		-- made, made_sure and unknown_by: the refunds dated by a point, those of its time held by
		-- its total (a refund dated by its own report is held by the total it reports)
		SELECT p.total, sum(coalesce(p.amount, 0)) OVER upto AS made,
			   sum(coalesce(p.amount, 0)) FILTER (WHERE p.sure) OVER upto AS made_sure,
			   count(*) FILTER (WHERE p.unknown) OVER upto AS unknown_by
		  FROM points p
		WINDOW upto AS (ORDER BY p.t RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)),
	sums AS (
		SELECT coalesce(sum(p.amount), 0) AS made, coalesce(sum(p.amount) FILTER (WHERE p.sure), 0) AS made_sure,
			   count(*) FILTER (WHERE p.unknown) AS unknown
		  FROM points p),
	bounds AS (
		SELECT min(r.total + s.made - r.made) FILTER (WHERE r.unknown_by = s.unknown) AS least_said,
			   max(r.total + s.made - r.made) AS most_said,
			   greatest(s.made, max(r.total), max(r.total + s.made_sure - coalesce(r.made_sure, 0))) AS least_known
		  FROM sums s LEFT JOIN running r ON r.total IS NOT NULL
		 GROUP BY s.made, s.made_sure)
	SELECT CASE WHEN EXISTS (SELECT FROM points)
				THEN greatest(b.least_known, coalesce(b.least_said, b.most_said)) END
	  FROM bounds b
$$;
COMMENT ON FUNCTION payments.paypal_refunded_by(jsonb, timestamptz) IS
	'What a PayPal capture had given back by a time, from its refunds known (paypal_captures.refund_amounts): the sum of the amounts of the refunds made by then, or more when a total reported (at its report''s time) and the amounts of the refunds dated after it say so, the least any such total says (a refund dated by its first report may be held by an earlier total), never less than a total and the refunds after it dated by their create_time (sure); NULL when none is known; used by apply_paypal_change';
REVOKE ALL ON FUNCTION payments.paypal_refunded_by(jsonb, timestamptz) FROM PUBLIC;

CREATE FUNCTION payments.paypal_refunded_capture(refund jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
	SELECT substring(l ->> 'href' FROM '/captures/([^/?#]+)')
	  FROM jsonb_array_elements(CASE WHEN jsonb_typeof(refund -> 'links') = 'array' THEN refund -> 'links' ELSE '[]' END) l
	 WHERE l ->> 'rel' = 'up' LIMIT 1
$$;
COMMENT ON FUNCTION payments.paypal_refunded_capture(jsonb) IS
	'The capture a PayPal v2 refund belongs to: named only by its "up" link';

-- An order (Orders v2) names the one source it is paid from by the key of its payment_source:
-- paypal, card, venmo, apple_pay, google_pay, or an alternative method (bancontact, blik, eps,
-- giropay, ideal, mybank, p24, sofort, trustly).  The key is the payment's method, named as
-- Stripe's are (card, paypal, ideal, ...).  None, several, or a key of another shape: NULL
CREATE FUNCTION payments.paypal_payment_source(order_resource jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
	SELECT pg_catalog.min(s.key)
	  FROM pg_catalog.jsonb_each(CASE WHEN pg_catalog.jsonb_typeof(order_resource OPERATOR(pg_catalog.->) 'payment_source') = 'object'
									  THEN order_resource OPERATOR(pg_catalog.->) 'payment_source' ELSE '{}'::jsonb END) s
	 WHERE pg_catalog.jsonb_typeof(s.value) = 'object'
	HAVING pg_catalog.count(*) = 1 AND pg_catalog.min(s.key) OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,62}$'
$$;
COMMENT ON FUNCTION payments.paypal_payment_source(jsonb) IS
	'The source a PayPal order is paid from: the key of its payment_source (paypal, card, venmo, apple_pay, google_pay, ideal, ...), the payment''s method; NULL when it names none or more than one';

CREATE FUNCTION payments.paypal_change(payload jsonb, provider_name text, event_at timestamptz)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	etype	text := payload ->> 'event_type';
	r		jsonb := payload -> 'resource';
	c		payments.payment_change;
	up		text;
	disputed text;
	source	text;
	paid_by	jsonb;
BEGIN
	-- the event's create_time, else its resource's update_time (read when it was stored)
	c.status_at := event_at;
	c.reference := coalesce(r ->> 'invoice_id', r ->> 'custom_id');
	c.method := 'paypal';

	IF etype IN ('PAYMENT.CAPTURE.COMPLETED', 'PAYMENT.CAPTURE.PENDING', 'PAYMENT.CAPTURE.DENIED',
				 'PAYMENT.CAPTURE.DECLINED') THEN
		-- a capture of an order is the order's payment; the capture id is kept for its refunds
		c.provider_ref := coalesce(r -> 'supplementary_data' -> 'related_ids' ->> 'order_id', r ->> 'id');
		c.creates := true;
		c.status := CASE etype WHEN 'PAYMENT.CAPTURE.COMPLETED' THEN 'paid'
							   WHEN 'PAYMENT.CAPTURE.PENDING' THEN 'pending' ELSE 'failed' END;
		c.currency := nullif(r -> 'amount' ->> 'currency_code', '');
		c.amount := payments.amount_in_currency(payments.decimal_amount(r -> 'amount' ->> 'value'), c.currency);
		-- the fee only in the capture's currency (one in another is no amount of the payment's)
		c.fee := CASE WHEN upper(coalesce(r -> 'seller_receivable_breakdown' -> 'paypal_fee' ->> 'currency_code', c.currency) COLLATE pg_catalog."C")
							   = upper(c.currency COLLATE pg_catalog."C")
					  THEN payments.amount_in_currency(payments.decimal_amount(r -> 'seller_receivable_breakdown' -> 'paypal_fee' ->> 'value'), c.currency) END;
		c.metadata := jsonb_build_object('capture_id', r ->> 'id');
		-- a capture names no source: its order's payment_source says the method (a payment known
		-- only from its captures is paid by paypal: payments.apply_paypal_change)
		c.method := NULL;
	ELSIF etype IN ('PAYMENT.CAPTURE.REFUNDED', 'PAYMENT.CAPTURE.REVERSED') THEN
		-- the resource is the refund: the payment is its capture's (the capture's own while the
		-- capture is not known).  A refund that FAILED or was CANCELLED gave nothing back; a
		-- PENDING one counts as given back (PayPal may send no later event when it completes)
		IF r ->> 'status' IN ('FAILED', 'CANCELLED') THEN
			RETURN NULL;
		END IF;
		up := payments.paypal_refunded_capture(r);
		c.provider_ref := coalesce((SELECT p.provider_ref FROM payments.paypal_captures k
									  JOIN payments.payments p ON p.id = k.payment_id
									 WHERE k.provider = provider_name AND k.capture_id = up), up);
		c.creates := false;
		c.status := 'refunded';
		c.amount_refunded := coalesce(payments.decimal_amount(r -> 'seller_payable_breakdown' -> 'total_refunded_amount' ->> 'value', true),
									  payments.decimal_amount(r -> 'amount' ->> 'value', true));
		c.reference := NULL;
	ELSIF etype LIKE 'PAYMENT.SALE.%' THEN
		-- the v1 Payments API: amounts in resource.amount.total; a refund's state, as v2's status
		IF etype IN ('PAYMENT.SALE.REFUNDED', 'PAYMENT.SALE.REVERSED') AND r ->> 'state' IN ('failed', 'cancelled') THEN
			RETURN NULL;
		END IF;
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
			c.currency := nullif(r -> 'amount' ->> 'currency', '');
			c.amount := payments.amount_in_currency(payments.decimal_amount(r -> 'amount' ->> 'total'), c.currency);
			c.fee := CASE WHEN upper(coalesce(r -> 'transaction_fee' ->> 'currency', c.currency) COLLATE pg_catalog."C")
								   = upper(c.currency COLLATE pg_catalog."C")
						  THEN payments.amount_in_currency(payments.decimal_amount(r -> 'transaction_fee' ->> 'value'), c.currency) END;
		ELSE
			c.amount_refunded := coalesce(payments.decimal_amount(r -> 'total_refunded_amount' ->> 'value', true),
										  payments.decimal_amount(r -> 'amount' ->> 'total', true));
		END IF;
	ELSIF etype IN ('CHECKOUT.ORDER.APPROVED', 'CHECKOUT.PAYMENT-APPROVAL.REVERSED') THEN
		-- an order approved by its payer, or its approval reversed before any capture (the
		-- payment failed; PayPal sends it for alternative payment methods)
		c.provider_ref := r ->> 'id';
		c.creates := true;
		c.status := CASE etype WHEN 'CHECKOUT.ORDER.APPROVED' THEN 'pending' ELSE 'failed' END;
		c.currency := nullif(r -> 'purchase_units' -> 0 -> 'amount' ->> 'currency_code', '');
		c.amount := payments.amount_in_currency(payments.decimal_amount(r -> 'purchase_units' -> 0 -> 'amount' ->> 'value'), c.currency);
		-- reference_id "default" is PayPal's placeholder for an order of one purchase unit, no
		-- reference (which the capture's invoice_id or custom_id could not replace)
		c.reference := coalesce(r -> 'purchase_units' -> 0 ->> 'invoice_id', r -> 'purchase_units' -> 0 ->> 'custom_id',
								nullif(r -> 'purchase_units' -> 0 ->> 'reference_id', 'default'));
		-- the method: the source it is paid from (payment_source's key: card, venmo, apple_pay,
		-- ...); an order naming none is paid from a PayPal account, as before payment_source
		source := payments.paypal_payment_source(r);
		c.method := coalesce(source, 'paypal');
		paid_by := r -> 'payment_source' -> source;
		-- the payer: the deprecated payer object, else the source's holder, as the Orders v2
		-- payment_source response has them: a name of given_name and surname (paypal, venmo) or
		-- whole (apple_pay, google_pay, the alternative methods), else the wallet's card holder's
		-- (a card: its own name); email_address (blik, p24, trustly: email); the country of the
		-- address (paypal, venmo), a card's billing address (card; apple_pay's and google_pay's
		-- card), else country_code (the alternative methods).  A phone only where its calling
		-- code is given (google_pay); the others' national_number alone is no E.164 number
		c.donor_name := coalesce(nullif(concat_ws(' ', r -> 'payer' -> 'name' ->> 'given_name', r -> 'payer' -> 'name' ->> 'surname'), ''),
								 CASE jsonb_typeof(paid_by -> 'name')
									  WHEN 'object' THEN nullif(concat_ws(' ', paid_by -> 'name' ->> 'given_name', paid_by -> 'name' ->> 'surname'), '')
									  WHEN 'string' THEN nullif(paid_by ->> 'name', '') END,
								 CASE WHEN jsonb_typeof(paid_by -> 'card' -> 'name') = 'string' THEN nullif(paid_by -> 'card' ->> 'name', '') END);
		c.donor_email := coalesce(r -> 'payer' ->> 'email_address', paid_by ->> 'email_address', paid_by ->> 'email');
		c.donor_phone := CASE WHEN jsonb_typeof(paid_by -> 'phone_number' -> 'country_code') = 'string'
							  THEN (paid_by -> 'phone_number' ->> 'country_code') || (paid_by -> 'phone_number' ->> 'national_number') END;
		c.country := coalesce(r -> 'payer' -> 'address' ->> 'country_code',
							  paid_by -> 'address' ->> 'country_code',
							  paid_by -> 'billing_address' ->> 'country_code',
							  paid_by -> 'card' -> 'billing_address' ->> 'country_code',
							  paid_by ->> 'country_code');
	ELSIF etype IN ('CUSTOMER.DISPUTE.CREATED', 'CUSTOMER.DISPUTE.UPDATED', 'CUSTOMER.DISPUTE.RESOLVED') THEN
		-- a dispute names its captures in disputed_transactions[].seller_transaction_id: the
		-- payment is the first known one's (the first one's own while none is known: the event
		-- waits for it, as a refund does).  Open (created, or updated and not resolved): disputed.
		-- Resolved with the money kept (the seller's favour, cancelled by the buyer, denied, or
		-- PayPal paying the buyer itself): paid again, as a Stripe dispute won.  Resolved for the
		-- buyer (or accepted by the seller): nothing here, the PAYMENT.CAPTURE.REVERSED or
		-- REFUNDED that takes the money back moves it; no outcome (NONE): still disputed
		SELECT t ->> 'seller_transaction_id' INTO disputed
		  FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r -> 'disputed_transactions') = 'array'
										 THEN r -> 'disputed_transactions' ELSE '[]' END) WITH ORDINALITY AS d (t, n)
		 WHERE t ->> 'seller_transaction_id' <> ''
		 ORDER BY EXISTS (SELECT FROM payments.paypal_captures k
						   WHERE k.provider = provider_name AND k.capture_id = t ->> 'seller_transaction_id') DESC, n
		 LIMIT 1;
		c.provider_ref := coalesce((SELECT p.provider_ref FROM payments.paypal_captures k
									  JOIN payments.payments p ON p.id = k.payment_id
									 WHERE k.provider = provider_name AND k.capture_id = disputed), disputed);
		c.creates := false;
		c.status := CASE WHEN etype = 'CUSTOMER.DISPUTE.RESOLVED'
						 THEN CASE WHEN r -> 'dispute_outcome' ->> 'outcome_code' IN ('RESOLVED_SELLER_FAVOUR', 'CANCELED_BY_BUYER',
																						  'DENIED', 'RESOLVED_WITH_PAYOUT')
								   THEN 'paid' END
						 WHEN r ->> 'status' IS DISTINCT FROM 'RESOLVED' THEN 'disputed' END;
		c.reference := NULL;
	END IF;

	RETURN CASE WHEN c.status IS NOT NULL AND c.provider_ref IS NOT NULL THEN c END;
END
$$;
COMMENT ON FUNCTION payments.paypal_change(jsonb, text, timestamptz) IS
	'What a PayPal event says about a payment: PAYMENT.CAPTURE.*, the v1 PAYMENT.SALE.*, CHECKOUT.ORDER.APPROVED, CHECKOUT.PAYMENT-APPROVAL.REVERSED (the method the key of the order''s payment_source, else paypal; the payer from payer, else from that source), CUSTOMER.DISPUTE.*; a capture names no method; a fee (paypal_fee, v1 transaction_fee) in another currency than the capture''s is not taken; refunds and disputes attach to their capture (a refund that failed or was cancelled is ignored; a dispute resolved for the buyer is left to the reversal or refund that moves the money)';

--------------------------------------------------------------------------------------------------
-- Applying events
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.stripe_of_other_mode(payload jsonb, settings jsonb)
RETURNS boolean
LANGUAGE C STRICT STABLE
AS 'MODULE_PATHNAME', 'stripe_of_other_mode';
COMMENT ON FUNCTION payments.stripe_of_other_mode(jsonb, jsonb) IS
	'Whether a Stripe event''s livemode is the other one than its provider''s livemode setting (true unless set): such an event is stored and ignored';
REVOKE ALL ON FUNCTION payments.stripe_of_other_mode(jsonb, jsonb) FROM PUBLIC;

CREATE FUNCTION payments.event_change(kind text, settings jsonb, ev payments.events)
RETURNS payments.payment_change
LANGUAGE plpgsql STABLE
AS $$
BEGIN
	RETURN CASE kind
		WHEN 'stripe' THEN CASE WHEN NOT payments.stripe_of_other_mode(ev.payload, settings)
								THEN payments.stripe_change(ev.payload) END
		WHEN 'paynow' THEN payments.paynow_amount_checked(
								payments.paynow_initiated(payments.paynow_change(ev.payload, settings, ev.received_at),
														  ev.provider), ev.provider)
		-- an Eversend status without its time (updatedAt, or createdAt for pending) is as of its
		-- arrival, as Paynow's are: not of the replay's
		WHEN 'eversend' THEN payments.eversend_change(ev.payload, coalesce(ev.event_at, ev.received_at))
		WHEN 'paypal' THEN payments.paypal_change(ev.payload, ev.provider, ev.event_at)
	END;
END
$$;
COMMENT ON FUNCTION payments.event_change(text, jsonb, payments.events) IS
	'Dispatches a stored event to the normalizer of its provider''s kind; NULL for kinds and events that do not move payments';

-- A PayPal capture's lock, held until the transaction ends: which payment holds a capture
-- (payments.paypal_captures) is decided under it.  Two deliveries of one capture at once (one
-- naming its order, one none), or its webhook beside a reconciliation of its order, each found it
-- held by no payment, and paid two payments with it (two receipts, the money counted twice).  A
-- transaction-level advisory lock keyed as signature_reuse.c keys PayPal's transmission ids (a
-- 64-bit hash of a scope, here none a provider's name can be, and the id, with its seed): a row per
-- capture would be written for ever; unlike the chat's keys (a provider, public in the webhook's
-- URL, and a donor's number), a capture id is known only to those who see the payment
CREATE FUNCTION payments.paypal_capture_lock(provider text, capture_id text)
RETURNS void
LANGUAGE sql
RETURN pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('paypal capture ' || provider || '|' || capture_id,
																	 1885436269));
COMMENT ON FUNCTION payments.paypal_capture_lock(text, text) IS
	'Takes a PayPal capture''s lock until the transaction ends (a transaction-level advisory lock on a hash of the provider and capture id): which payment holds the capture is decided under it (apply_paypal_change, record_reconciliation)';

-- PayPal's changes go through here, to keep each capture (payments.paypal_captures): the payment
-- takes the sum of its completed captures' amounts, and a refund the sum of their refunded totals
CREATE FUNCTION payments.apply_paypal_change(event_row bigint, provider_name text, change payments.payment_change,
											 payload jsonb)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
	etype	text := payload ->> 'event_type';
	r		jsonb := payload -> 'resource';
	capture	text;
	pay		payments.payments;
	cap		payments.paypal_captures;
	result	text;
	taken	numeric;
	fees	numeric;
	reported numeric;
	refund_key text;
	refund_at timestamptz;
	refund_currency text;
	refund_amount numeric;
	known	jsonb;		-- what was known of this refund before
	capture_amount numeric;	-- a capture's own amount, where the change says the order's total
	capture_status text;	-- a capture's own status, where the change says the payment's
	refunds_known jsonb;	-- {refund id: {amount, total, at}}
	refunded_before numeric;
	refunded_now numeric;
	refunded_then numeric;
	paid_captures bigint;
	held_by	text;		-- the payment that holds a capture already kept
	capture_fee numeric;	-- a capture's own fee, where the change takes none for the payment
BEGIN
	IF etype IN ('PAYMENT.CAPTURE.REFUNDED', 'PAYMENT.CAPTURE.REVERSED', 'PAYMENT.SALE.REFUNDED', 'PAYMENT.SALE.REVERSED') THEN
		capture := CASE WHEN etype LIKE 'PAYMENT.SALE.%' THEN r ->> 'sale_id' ELSE payments.paypal_refunded_capture(r) END;
		SELECT k.* INTO cap FROM payments.paypal_captures k
		 WHERE k.provider = provider_name AND k.capture_id = capture;
		IF FOUND THEN
			-- the payment's lock first, as for its capture's news: one order of locks
			PERFORM FROM payments.payments p WHERE p.id = cap.payment_id FOR UPDATE;
			-- each refund of the capture is kept by its id with its amount and time, and the last
			-- total reported with it and that report's time: one reported twice (PENDING, then
			-- COMPLETED) counts once, made when its resource says it was created (else at its
			-- first report), and the COMPLETED report's total (PayPal's running total then)
			-- counts as of that report.  An amount in another currency than the capture's, or
			-- finer than its minor unit, is not known; a refund that says neither an amount nor a
			-- total known, or that it gave back nothing, is ignored
			refund_key := coalesce(r ->> 'id', 'event ' || event_row, 'unnamed ' || gen_random_uuid());
			refund_at := coalesce(change.status_at, now());
			refund_currency := coalesce(cap.currency, upper(coalesce(r -> 'amount' ->> 'currency_code', r -> 'amount' ->> 'currency') COLLATE pg_catalog."C"));
			reported := CASE WHEN etype LIKE 'PAYMENT.SALE.%'
							 THEN payments.paypal_money(r -> 'total_refunded_amount', 'value', refund_currency)
							 ELSE payments.paypal_money(r -> 'seller_payable_breakdown' -> 'total_refunded_amount', 'value', refund_currency) END;
			refund_amount := payments.paypal_money(r -> 'amount', CASE WHEN etype LIKE 'PAYMENT.SALE.%' THEN 'total' ELSE 'value' END,
												   refund_currency);
			IF coalesce(refund_amount, 0) = 0 AND coalesce(reported, 0) = 0 THEN
				RETURN 'ignored';
			END IF;
			SELECT k.refunded, k.refund_amounts -> refund_key INTO refunded_before, known
			  FROM payments.paypal_captures k WHERE k.provider = provider_name AND k.capture_id = capture;
			-- (sure: its time is its resource's create_time, when it was made, not a report's, which
			-- may come after a total that holds it)
			refunds_known := jsonb_build_object(refund_key, jsonb_build_object(
				'amount', coalesce(refund_amount, (known ->> 'amount')::numeric),
				'at', least(refund_at, payments.provider_time(r ->> 'create_time'), (known ->> 'at')::timestamptz),
				'sure', coalesce((known ->> 'sure')::boolean, false) OR coalesce(payments.provider_time(r ->> 'create_time') <= refund_at, false))
				|| CASE WHEN reported IS NOT NULL AND (known ->> 'total_at' IS NULL OR refund_at >= (known ->> 'total_at')::timestamptz)
						THEN jsonb_build_object('total', reported, 'total_at', refund_at)
						ELSE jsonb_build_object('total', known -> 'total', 'total_at', known -> 'total_at') END);
			-- the capture's refunded total: what its refunds known say it gave back by now
			-- (payments.paypal_refunded_by: no more than it gave back, in any order of delivery),
			-- or more when reconciliation found it refunded in full
			UPDATE payments.paypal_captures k
			   SET refund_amounts = k.refund_amounts || refunds_known,
				   refunded = greatest(k.refunded, payments.paypal_refunded_by(k.refund_amounts || refunds_known, 'infinity'))
			 WHERE k.provider = provider_name AND k.capture_id = capture
			RETURNING k.refunded, k.refund_amounts INTO refunded_now, refunds_known;
			-- what the capture had given back by this event's time, as far as its refunds known tell
			refunded_then := payments.paypal_refunded_by(refunds_known, refund_at);
			-- the payment's total as of this event: its capture's new total when the event raised
			-- it (the rise is this refund's, or one an earlier refund made without saying its
			-- total: given back at this event's time at the latest), else what the capture had
			-- given back by the event's time (an older refund delivered late is a lower total:
			-- payments.apply_change counts it at its time), the other captures' as known.  When
			-- other captures have refunds too, their totals now may hold refunds made after this
			-- event, which would move those to its time: the totals now are passed instead, and
			-- apply_change moves nothing for such an order (a late report raises nothing)
			SELECT CASE WHEN bool_or(k.capture_id <> capture AND k.refunded > 0) THEN sum(k.refunded)
						ELSE sum(CASE WHEN k.capture_id = capture AND refunded_now <= refunded_before
									  THEN coalesce(refunded_then, 0) ELSE k.refunded END) END
			  INTO change.amount_refunded FROM payments.paypal_captures k
			 WHERE k.payment_id = cap.payment_id;
		END IF;
		RETURN payments.apply_change(event_row, provider_name, change);
	END IF;

	-- news of a capture already kept is news of the payment that holds it, as its refunds and
	-- disputes are, whatever order it names now (one delivered first without its order_id made a
	-- payment of its own): the same money never pays a second payment.  The payment named is locked
	-- first (as apply_change, batches and reconciliation lock it), then, while no payment is seen
	-- to hold the capture, the capture (payments.paypal_capture_lock): two deliveries of it at once,
	-- or its order's reconciliation, decide its holder one after the other, the second seeing the
	-- first's (a holder once kept never changes: one seen needs no lock).  Under the holder's lock
	-- (taken before apply_change's): while it has another capture paid, this capture's fee is no
	-- fee of the whole payment, whose fee is its captures' sum (below; a payment refunded in full
	-- takes no more captures, and keeps its fee)
	IF r ->> 'id' IS NOT NULL
	   AND etype IN ('PAYMENT.CAPTURE.COMPLETED', 'PAYMENT.CAPTURE.PENDING', 'PAYMENT.CAPTURE.DENIED',
					 'PAYMENT.CAPTURE.DECLINED', 'PAYMENT.SALE.COMPLETED', 'PAYMENT.SALE.PENDING',
					 'PAYMENT.SALE.DENIED') THEN
		PERFORM FROM payments.payments p
		 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref FOR UPDATE;
		SELECT p.provider_ref INTO held_by FROM payments.paypal_captures k
		  JOIN payments.payments p ON p.id = k.payment_id
		 WHERE k.provider = provider_name AND k.capture_id = r ->> 'id';
		IF held_by IS NULL THEN
			PERFORM payments.paypal_capture_lock(provider_name, r ->> 'id');
			SELECT p.provider_ref INTO held_by FROM payments.paypal_captures k
			  JOIN payments.payments p ON p.id = k.payment_id
			 WHERE k.provider = provider_name AND k.capture_id = r ->> 'id';
		END IF;
		IF held_by IS NOT NULL AND held_by <> change.provider_ref THEN
			change.provider_ref := held_by;
			change.creates := false;
			PERFORM FROM payments.payments p
			 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref FOR UPDATE;
		END IF;
		capture_fee := change.fee;
		IF EXISTS (SELECT FROM payments.paypal_captures k JOIN payments.payments p ON p.id = k.payment_id
				    WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref
					  AND k.capture_id <> r ->> 'id' AND k.status = 'paid') THEN
			change.fee := NULL;
		END IF;
	END IF;

	-- another capture of an order already paid: news of more taken, the order's total so far (its
	-- other paid captures' and this one's), not news that it was paid again, which would end a
	-- dispute open on it (a smaller second capture read as a dispute won)
	-- (read under the payment's lock, taken first as apply_change takes it: a capture applied at the
	-- same time is counted).  With a paid capture of an amount not known, or in another currency,
	-- the total is not known: the capture is kept (below) and the payment's status not moved
	IF change.status = 'paid' AND r ->> 'id' IS NOT NULL
	   AND etype IN ('PAYMENT.CAPTURE.COMPLETED', 'PAYMENT.SALE.COMPLETED') THEN
		SELECT p.* INTO pay FROM payments.payments p
		 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref FOR UPDATE;
		SELECT count(*), CASE WHEN bool_and(k.amount IS NOT NULL AND k.currency = pay.currency)
								   AND upper(change.currency COLLATE pg_catalog."C") = pay.currency
							  THEN change.amount + sum(k.amount) END
		  INTO paid_captures, taken
		  FROM payments.paypal_captures k
		 WHERE k.payment_id = pay.id AND pay.paid_at IS NOT NULL AND k.capture_id <> r ->> 'id' AND k.status = 'paid';
		capture_amount := change.amount;
		capture_status := change.status;
		-- a capture kept as paid, reported again (redelivered, or naming its order later): no news
		-- of payment, nor of a dispute won (PayPal ends a dispute with CUSTOMER.DISPUTE.RESOLVED)
		IF EXISTS (SELECT FROM payments.paypal_captures k
				    WHERE k.payment_id = pay.id AND k.capture_id = r ->> 'id' AND k.status = 'paid') THEN
			change.status := pay.status;
		END IF;
		IF paid_captures > 0 THEN
			change.amount := taken;
			IF taken IS NULL THEN
				change.status := pay.status;
			END IF;
		END IF;
		taken := NULL;
	END IF;
	result := payments.apply_change(event_row, provider_name, change);
	-- the method, under the payment's lock (apply_change's): the order names the source it is paid
	-- from, which wins over the paypal assumed for a capture delivered before it; a capture names
	-- none, and leaves the order's (delivered before it), or makes a payment known from captures
	-- alone paid by paypal.  An approval older than the payment's status changes a method already
	-- named by another approval no more than it moves the status (a stale approval of an earlier
	-- attempt), and a reversed approval (an attempt that failed) never names the method of a
	-- payment that was paid.  A method changed is a payment changed: applied (an order delivered
	-- after its capture moves no status)
	IF result <> 'unresolved' THEN
		IF etype IN ('CHECKOUT.ORDER.APPROVED', 'CHECKOUT.PAYMENT-APPROVAL.REVERSED')
		   AND payments.paypal_payment_source(r) IS NOT NULL THEN
			UPDATE payments.payments p SET method = change.method, updated_at = now()
			 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref
			   AND p.method IS DISTINCT FROM change.method
			   AND CASE WHEN etype = 'CHECKOUT.ORDER.APPROVED'
						THEN p.method IS NULL OR p.method = 'paypal' OR change.status_at >= p.status_at
						ELSE p.paid_at IS NULL AND (p.method IS NULL OR change.status_at >= p.status_at) END;
			IF FOUND THEN
				result := 'applied';
			END IF;
		ELSIF etype IN ('PAYMENT.CAPTURE.COMPLETED', 'PAYMENT.CAPTURE.PENDING', 'PAYMENT.CAPTURE.DENIED',
						'PAYMENT.CAPTURE.DECLINED') THEN
			UPDATE payments.payments p SET method = 'paypal', updated_at = now()
			 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref AND p.method IS NULL;
			IF FOUND THEN
				result := 'applied';
			END IF;
		END IF;
	END IF;
	capture := r ->> 'id';
	IF result = 'unresolved' OR capture IS NULL
	   OR etype NOT IN ('PAYMENT.CAPTURE.COMPLETED', 'PAYMENT.CAPTURE.PENDING', 'PAYMENT.CAPTURE.DENIED',
						'PAYMENT.CAPTURE.DECLINED', 'PAYMENT.SALE.COMPLETED', 'PAYMENT.SALE.PENDING',
						'PAYMENT.SALE.DENIED') THEN
		RETURN result;
	END IF;
	SELECT p.* INTO pay FROM payments.payments p
	 WHERE p.provider = provider_name AND p.provider_ref = change.provider_ref;
	-- news of a capture older than what is known of it changes it not
	INSERT INTO payments.paypal_captures AS k (provider, capture_id, payment_id, status, amount, currency, fee, status_at)
	VALUES (provider_name, capture, pay.id, coalesce(capture_status, change.status), coalesce(capture_amount, change.amount), upper(change.currency COLLATE pg_catalog."C"), capture_fee,
			coalesce(change.status_at, now()))
	ON CONFLICT (provider, capture_id) DO UPDATE
	   SET status = excluded.status, amount = coalesce(excluded.amount, k.amount),
		   currency = coalesce(excluded.currency, k.currency), fee = coalesce(excluded.fee, k.fee),
		   status_at = excluded.status_at
	 WHERE k.status_at <= excluded.status_at;
	-- more than one capture taken: the payment's amount and PayPal's fee are their sums, in its
	-- currency (not once refunded in full: a forward-only refunded payment cannot take more money;
	-- not while a capture's amount is not known: the amount known stays)
	SELECT CASE WHEN bool_and(k.amount IS NOT NULL) THEN sum(k.amount) END,
		   CASE WHEN bool_and(k.fee IS NOT NULL) THEN sum(k.fee) END, count(*)
	  INTO taken, fees, paid_captures FROM payments.paypal_captures k
	 WHERE k.payment_id = pay.id AND k.status = 'paid' AND k.currency = pay.currency;
	IF paid_captures > 1 AND taken IS NOT NULL AND (taken IS DISTINCT FROM pay.amount OR fees IS DISTINCT FROM pay.fee)
	   AND pay.paid_at IS NOT NULL AND pay.status IN ('paid', 'partially_refunded', 'disputed') THEN
		-- (a fee not known for one capture, one in another currency: the sum is not known either)
		UPDATE payments.payments p SET amount = taken, fee = fees, updated_at = now()
		 WHERE p.id = pay.id;
		result := 'applied';
	END IF;
	RETURN result;
END
$$;
COMMENT ON FUNCTION payments.apply_paypal_change(bigint, text, payments.payment_change, jsonb) IS
	'Applies a PayPal event''s change (apply_change) keeping its capture in payments.paypal_captures, and its method: an order''s source wins over the paypal a capture delivered before it assumed, and a payment known only from captures is paypal; news of a capture already kept moves the payment that holds it, whatever order it names (the same money never pays two payments; its holder decided under the capture''s lock, paypal_capture_lock, after the lock of the payment named); a payment paid by several captures takes the sum of their amounts and of their fees (a capture after the first is news of more taken, which leaves a dispute open, and its fee counts only in the sum: a payment refunded in full keeps its fee), and a refund the sum of their refunded totals, each capture''s from its refunds known by id (payments.paypal_refunded_by)';

-- An event's one attempt to move its payment, shared by a fresh delivery (payments.store_event)
-- and a retry or replay (payments.apply_event): the outcome, and the event row brought in line
-- with it, written only where the row does not already say so.
CREATE FUNCTION payments.settle_event(ev payments.events, kind text, settings jsonb, attempt integer)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
	change	payments.payment_change;
	result	text;
BEGIN
	IF kind = 'meta' THEN
		-- WhatsApp: messages drive the donors' conversations, statuses the messages we sent
		result := payments.chat_event(ev, settings);
	ELSE
		change := payments.event_change(kind, settings, ev);
		result := CASE WHEN change IS NULL THEN 'ignored'
					   WHEN kind = 'paypal' THEN payments.apply_paypal_change(ev.id, ev.provider, change, ev.payload)
					   ELSE payments.apply_change(ev.id, ev.provider, change) END;
	END IF;

	IF result = 'unresolved' THEN
		-- a failed attempt like any other: kept, retried on the schedule, dead after the last
		PERFORM payments.event_failed(ev.id, 'payment ' || change.provider_ref || ' is not known yet', attempt,
									  waiting => true);
		RETURN 'stored';
	END IF;
	IF ev.state IS DISTINCT FROM result OR ev.attempts IS DISTINCT FROM attempt
	   OR ev.next_attempt_at IS NOT NULL OR ev.last_error IS NOT NULL THEN
		UPDATE payments.events e
		   SET state = result, attempts = attempt, next_attempt_at = NULL, last_error = NULL
		 WHERE e.id = ev.id;
	END IF;
	RETURN result;
END
$$;
COMMENT ON FUNCTION payments.settle_event(payments.events, text, jsonb, integer) IS
	'Applies a stored event (the row as read) as attempt number attempt and records the outcome on it: applied, ignored, or stored (its payment is not known yet: pending, to be retried)';

CREATE FUNCTION payments.apply_event(id bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
	ev		payments.events;
	kind	text;
	settings jsonb;
BEGIN
	-- a receipt is numbered at commit from the day's counter row: under snapshot isolation that
	-- fails whenever another transaction paid that day since the snapshot
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'payments.apply_event must run at the READ COMMITTED isolation level'
			USING ERRCODE = 'invalid_transaction_state',
				  HINT = 'SET default_transaction_isolation TO ''read committed'' for the caller.';
	END IF;
	SELECT e.* INTO ev FROM payments.events e WHERE e.id = apply_event.id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown event %', id USING ERRCODE = 'undefined_object';
	END IF;
	IF ev.state NOT IN ('pending', 'dead') THEN
		RETURN ev.state;		-- applied or ignored already: events apply once
	END IF;
	SELECT p.kind, p.settings INTO kind, settings FROM payments.providers p WHERE p.name = ev.provider;
	RETURN payments.settle_event(ev, kind, settings, ev.attempts + 1);
END
$$;
COMMENT ON FUNCTION payments.apply_event(bigint) IS
	'Applies a stored event to its payment through the state machine: applied, ignored, or stored (pending: its payment is not known yet, to be retried)';

-- The fresh delivery's path: the event is inserted as already applied at its first attempt, the
-- usual outcome, so that the row is written once; settle_event corrects it when the outcome is
-- another.  An error anywhere rolls the insert back with the rest: the caller (payments.ingest)
-- then stores the event as pending and records the failed attempt.
CREATE FUNCTION payments.store_event(provider text, kind text, settings jsonb, event_id text, event_type text,
									 event_at timestamptz, body bytea, payload jsonb, headers jsonb,
									 source_ip inet, request_id text)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
	ev		payments.events;
BEGIN
	INSERT INTO payments.events AS e
		(provider, event_id, event_type, event_at, body, payload, headers, source_ip, request_id, state, attempts)
	VALUES (store_event.provider, store_event.event_id, store_event.event_type, store_event.event_at,
			store_event.body, store_event.payload, store_event.headers, store_event.source_ip,
			store_event.request_id, 'applied', 1)
	ON CONFLICT ON CONSTRAINT events_provider_event_id_key DO NOTHING
	RETURNING e.* INTO ev;
	IF NOT FOUND THEN
		RETURN 'duplicate';
	END IF;
	RETURN payments.settle_event(ev, kind, settings, 1);
END
$$;
COMMENT ON FUNCTION payments.store_event(text, text, jsonb, text, text, timestamptz, bytea, jsonb, jsonb, inet, text) IS
	'Stores a verified event once per (provider, event_id) and applies it in one step: applied, ignored, stored, or duplicate';
-- The shim's batches (payments.ingest_batch) store their new Stripe deliveries together: one
-- statement inserts the events and creates the payments they are the first news of, with their
-- first status, as apply_change would one by one (whose INSERT this mirrors).  What a set cannot
-- decide -- an event for a payment that already exists or that an earlier event of the batch
-- creates, an unknown currency, a change without a payment or a status -- is left with a NULL
-- outcome, its event stored as applied at its first attempt, for the caller to settle it alone
-- (payments.settle_event), as store_event would.  The caller passes each event once (a later
-- delivery of it in the batch is a duplicate).  One statement instead of a few per delivery is
-- about a fifth of the work of a batch.  The plan is generic: a custom plan for each batch's
-- arrays would be planned again at every call, for nothing.  Locks are taken in one order, so that
-- two batches over the same events or payments wait for each other instead of deadlocking: events
-- are inserted in (provider, event_id) order, payments created in (provider, provider_ref) order
-- (bytewise, as the caller sorts), and each row's provider_ref is returned for the caller to settle
-- the undecided ones in (provider, provider_ref) order.
CREATE FUNCTION payments.store_stripe_events(positions integer[], providers text[], event_ids text[],
											 event_types text[], event_ats timestamptz[], bodies bytea[],
											 payloads jsonb[], headers jsonb[], source_ips inet[],
											 request_ids text[])
RETURNS TABLE (pos integer, event_row bigint, outcome text, payment_ref text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
	RETURN QUERY
	WITH input AS MATERIALIZED (
		SELECT i.pos, i.provider, i.event_id, i.event_type, i.event_at, i.body, i.payload, i.headers,
			   i.source_ip, i.request_id, payments.stripe_change(i.payload) AS change
		  FROM ROWS FROM (pg_catalog.unnest(store_stripe_events.positions),
						  pg_catalog.unnest(store_stripe_events.providers),
						  pg_catalog.unnest(store_stripe_events.event_ids),
						  pg_catalog.unnest(store_stripe_events.event_types),
						  pg_catalog.unnest(store_stripe_events.event_ats),
						  pg_catalog.unnest(store_stripe_events.bodies),
						  pg_catalog.unnest(store_stripe_events.payloads),
						  pg_catalog.unnest(store_stripe_events.headers),
						  pg_catalog.unnest(store_stripe_events.source_ips),
						  pg_catalog.unnest(store_stripe_events.request_ids))
			   AS i (pos, provider, event_id, event_type, event_at, body, payload, headers,
					 source_ip, request_id)
	), stored AS (
		INSERT INTO payments.events AS e
			(provider, event_id, event_type, event_at, body, payload, headers, source_ip, request_id,
			 state, attempts)
		SELECT i.provider, i.event_id, i.event_type, i.event_at, i.body, i.payload,
			   payments.stored_headers(i.headers), i.source_ip, i.request_id,
			   CASE WHEN i.change IS NULL THEN 'ignored' ELSE 'applied' END::payments.event_state, 1
		  FROM input i
		 ORDER BY i.provider COLLATE "C", i.event_id COLLATE "C"
		ON CONFLICT ON CONSTRAINT events_provider_event_id_key DO NOTHING
		RETURNING e.id, e.provider, e.event_id
	), creators AS (
		-- the first news of each payment; one with money given back already is created alone
		-- (apply_change records that refund), as are the payment's other events after it
		SELECT first.* FROM (
			SELECT DISTINCT ON (f.provider, (f.change).provider_ref)
				   s.id AS event_row, f.provider, f.change,
				   coalesce((f.change).status_at, pg_catalog.now()) AS at
			  FROM stored s
			  JOIN input f ON f.provider = s.provider AND f.event_id = s.event_id
			 WHERE (f.change).creates AND (f.change).provider_ref IS NOT NULL AND (f.change).status IS NOT NULL
			   AND ((f.change).currency IS NULL OR payments.currency_exponent((f.change).currency) IS NOT NULL)
			 ORDER BY f.provider, (f.change).provider_ref, f.pos) first
		 WHERE coalesce(payments.refunded_total((first.change).status, (first.change).amount,
												coalesce((first.change).amount_refunded, 0)), 0) = 0
	), created AS (
		INSERT INTO payments.payments AS p
			(provider, provider_ref, reference, kind, status, amount, currency, amount_refunded, fee,
			 method, donor_name, donor_phone, donor_email, country, metadata, status_at, paid_at)
		SELECT c.provider, (c.change).provider_ref, (c.change).reference,
			   coalesce((c.change).kind, 'collection'), (c.change).status, (c.change).amount,
			   pg_catalog.upper((c.change).currency COLLATE pg_catalog."C"), coalesce((c.change).amount_refunded, 0),
			   (c.change).fee, (c.change).method, (c.change).donor_name,
			   payments.e164_digits((c.change).donor_phone), (c.change).donor_email,
			   payments.country_code((c.change).country), coalesce((c.change).metadata, '{}'),
			   c.at, CASE WHEN (c.change).status = 'paid' THEN least(c.at, now()) END	-- (its events arrive now)
		  FROM creators c
		 ORDER BY c.provider COLLATE "C", (c.change).provider_ref COLLATE "C"
		ON CONFLICT (provider, provider_ref) DO NOTHING
		RETURNING p.id, p.provider, p.provider_ref, p.status, p.status_at
	), history AS (
		-- a paid one gets its receipt number at commit (payments.transition_committed)
		INSERT INTO payments.status_history AS h (payment_id, from_status, to_status, event_id, status_at)
		SELECT p.id, NULL, p.status, c.event_row, p.status_at
		  FROM created p
		  JOIN creators c ON c.provider = p.provider AND (c.change).provider_ref = p.provider_ref
		RETURNING h.event_id
	)
	SELECT i.pos, s.id,
		   CASE WHEN s.id IS NULL THEN 'duplicate'
				WHEN i.change IS NULL THEN 'ignored'
				WHEN h.event_id IS NOT NULL THEN 'applied' END,
		   (i.change).provider_ref
	  FROM input i
	  LEFT JOIN stored s ON s.provider = i.provider AND s.event_id = i.event_id
	  LEFT JOIN history h ON h.event_id = s.id;
END
$$;
COMMENT ON FUNCTION payments.store_stripe_events(integer[], text[], text[], text[], timestamptz[], bytea[], jsonb[], jsonb[], inet[], text[]) IS
	'Stores verified Stripe events of a batch (each once) in one statement and creates the payments they are the first news of; per position: the event''s row and applied, ignored, duplicate (stored before), or NULL for the caller to settle the stored event alone; and the event''s provider_ref (the caller settles in that order). Events are inserted in (provider, event_id) order and payments created in (provider, provider_ref) order, so that concurrent batches take their locks in one order';

REVOKE ALL ON FUNCTION payments.apply_event(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.settle_event(payments.events, text, jsonb, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.store_stripe_events(integer[], text[], text[], text[], timestamptz[], bytea[], jsonb[], jsonb[], inet[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.store_event(text, text, jsonb, text, text, timestamptz, bytea, jsonb, jsonb, inet, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.apply_change(bigint, text, payments.payment_change) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.take_from_refunds(numeric, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.issue_receipt(bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.transition_committed() FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paid_late_committed() FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.receipt_noted() FROM PUBLIC;

CREATE FUNCTION payments.receipt(receipt_no text)
RETURNS SETOF payments.payments
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT p.* FROM payments.receipts r JOIN payments.payments p ON p.id = r.payment_id
	 WHERE r.receipt_no = receipt.receipt_no
$$;
COMMENT ON FUNCTION payments.receipt(text) IS 'The payment behind a receipt number';

SELECT pg_catalog.pg_extension_config_dump('payments.payments', '');
SELECT pg_catalog.pg_extension_config_dump('payments.payments_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.status_history', '');
SELECT pg_catalog.pg_extension_config_dump('payments.status_history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.refused_transitions', '');
SELECT pg_catalog.pg_extension_config_dump('payments.refused_transitions_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.receipt_counters', '');
SELECT pg_catalog.pg_extension_config_dump('payments.receipts', '');
SELECT pg_catalog.pg_extension_config_dump('payments.refunds', '');
SELECT pg_catalog.pg_extension_config_dump('payments.refunds_id_seq', '');

--------------------------------------------------------------------------------------------------
-- Kind meta: WhatsApp Cloud API (X-Hub-Signature-256, batches, GET subscription handshake)
--------------------------------------------------------------------------------------------------

INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('meta', '{verify_token,access_token,phone_number_id,api_base,admin_numbers,paynow_providers,methods,purposes,min_amount,max_amount,session_timeout,rate_limit,rate_window,receipt_template,notice_template}',
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
	'Answers Meta''s GET subscription handshake: 200 with the challenge when hub.mode is subscribe and hub.verify_token matches, else 403 (400: no usable hub.challenge; 404: no such meta provider)';
REVOKE ALL ON FUNCTION payments.meta_subscribe(text, text, text, text) FROM PUBLIC;

--------------------------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC; the DBA grants what each role needs
--------------------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION payments.ingest(text, jsonb, bytea, inet, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.ingest_batch(text[], jsonb[], bytea[], inet[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.flush_wal() FROM PUBLIC;
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
	('paynow', '{integration_id,result_url,return_url,api_base,currency,auth_email}',
	 'Paynow status update (form-urlencoded): SHA-512 of the decoded values in order, hash excluded, + the integration key in lower case; upper-case hex in the hash field');
INSERT INTO payments.provider_kinds (kind, settings, description) VALUES
	('eversend', '{algorithm,api_base,client_id,client_secret}',
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
	('paypal', '{webhook_id,allow_simulator,cert_hosts,verify_cert_chain,ca_file,api_base,client_id,client_secret}',
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

--------------------------------------------------------------------------------------------------
-- Reports and roles
--------------------------------------------------------------------------------------------------
-- Reports count collections (kind = 'collection').  A payment's time is when it was paid, else,
-- failed or cancelled, the provider's time of that status (one that failed on the 10th, its news
-- arriving on the 12th, failed on the 10th), else when it was first seen:
-- coalesce(paid_at, CASE WHEN status IN ('failed', 'cancelled') THEN status_at ELSE created_at END),
-- the expression of the BRIN index and the statistics below, written out the same in every
-- report so that the planner matches them to its range; its day is that time's date in the
-- receipt time zone (payments.receipt_timezone, default UTC).  Amounts are summed per currency
-- only; payments.fx_rates converts to one base currency where rates are filled.
--
-- A donor is identified by e-mail (case-insensitive), else phone (E.164 digits), else WhatsApp
-- business-scoped user id (a chat donor whose number is withheld), else name (case-insensitive): the column payments.payments.donor_key, kept from those three by a trigger.
-- Anonymous payments (none of the three) belong to no donor.  Not a generated column: PostgreSQL
-- 15 prepares a table's generation expressions again in every statement that writes the table,
-- UPDATEs that leave the donor alone too, and each paid payment is written twice (its receipt
-- number is set at commit); the trigger runs only when the donor is written.

ALTER TABLE payments.payments ADD COLUMN donor_key text;
COMMENT ON COLUMN payments.payments.donor_key IS
	'Who gave: email:<lower-case e-mail>, else phone:<E.164 digits>, else whatsapp:<business-scoped user id> (metadata.whatsapp_user_id: a WhatsApp donor whose number is withheld), else name:<lower-case name>; NULL when anonymous; the second key of donor_moved when the details give its first';
-- A WhatsApp donor who changes number, or whose number shows after they were known by their
-- business-scoped user id, is the same donor (payments.chat_move_user): their gifts before the
-- change keep the details they were made with (history) and say here under which key the donor
-- is known now, so that the reports count one donor, not one per number; the old number, given to
-- someone else later, is another donor
ALTER TABLE payments.payments ADD COLUMN donor_moved text[]
	CHECK (donor_moved IS NULL OR (pg_catalog.array_length(donor_moved, 1) = 2 AND pg_catalog.array_ndims(donor_moved) = 1));
COMMENT ON COLUMN payments.payments.donor_moved IS
	'{key the donor details give, key the donor is known by since}: set when a WhatsApp donor changed number or id (payments.chat_move_user); donor_key is the second while the details give the first';

CREATE FUNCTION payments.keep_donor_key()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	-- an e-mail address's ASCII letters are lower-cased by ASCII rules (ALICE@ is alice@ whatever
	-- the collation: a Turkish one would make I a dotless i), its other letters by the database's
	NEW.donor_key := CASE WHEN nullif(btrim(NEW.donor_email), '') IS NOT NULL THEN 'email:' || lower(lower(btrim(NEW.donor_email) COLLATE pg_catalog."C") COLLATE pg_catalog."default")
						  WHEN NEW.donor_phone IS NOT NULL THEN 'phone:' || NEW.donor_phone
						  -- a WhatsApp donor whose number is withheld: their business-scoped user id
						  WHEN payments.whatsapp_bsuid(NEW.metadata ->> 'whatsapp_user_id') IS NOT NULL
							   THEN 'whatsapp:' || (NEW.metadata ->> 'whatsapp_user_id')
						  WHEN nullif(btrim(NEW.donor_name), '') IS NOT NULL THEN 'name:' || lower(btrim(NEW.donor_name))
					 END;
	-- the donor moved on since (a number change): known by their key of now
	IF NEW.donor_key = NEW.donor_moved[1] THEN
		NEW.donor_key := NEW.donor_moved[2];
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments.keep_donor_key() IS
	'Trigger: derives donor_key from the donor''s e-mail, phone, WhatsApp business-scoped user id (metadata.whatsapp_user_id) and name, or the key the donor moved to (donor_moved), whenever a payment is inserted or the e-mail, phone, name, donor_moved (or donor_key itself) is written';

CREATE TRIGGER payments_donor_key
	BEFORE INSERT OR UPDATE OF donor_email, donor_phone, donor_name, donor_key, donor_moved ON payments.payments
	FOR EACH ROW EXECUTE FUNCTION payments.keep_donor_key();
REVOKE ALL ON FUNCTION payments.keep_donor_key() FROM PUBLIC;

CREATE INDEX payments_at_brin ON payments.payments
	USING brin ((coalesce(paid_at, CASE WHEN status IN ('failed', 'cancelled') THEN status_at ELSE created_at END)))
	WITH (pages_per_range = 32);
-- Statistics on a payment's time, so that the planner sees how many rows a report's range holds
-- (without them it guesses a fixed fraction, a hundred times too few for a year).
CREATE STATISTICS payments.payments_at_stats
	ON (coalesce(paid_at, CASE WHEN status IN ('failed', 'cancelled') THEN status_at ELSE created_at END))
	FROM payments.payments;
-- ... and on its day (in the time zone of whoever analyzes: the count of days is what matters),
-- so that the planner knows a year holds a few hundred (currency, day) groups, not one per row,
-- and aggregates them in the parallel workers (payments.currency_summary)
CREATE STATISTICS payments.payments_day_stats
	ON ((coalesce(paid_at, CASE WHEN status IN ('failed', 'cancelled') THEN status_at ELSE created_at END))::date)
	FROM payments.payments;
CREATE INDEX payments_donor_idx ON payments.payments (donor_key, paid_at) WHERE kind = 'collection';
CREATE INDEX status_history_status_at_brin ON payments.status_history USING brin (status_at);

-- Currencies added by an admin (not those this script inserts) are dumped by pg_dump.
ALTER TABLE payments.currencies ADD COLUMN seeded boolean NOT NULL DEFAULT false;
UPDATE payments.currencies SET seeded = true;
ALTER TABLE payments.currencies ALTER COLUMN seeded SET DEFAULT false;
COMMENT ON COLUMN payments.currencies.seeded IS
	'Inserted by CREATE EXTENSION (not dumped); false: added by an admin (dumped with the data)';

-- The installed rows are what a restore's CREATE EXTENSION brings back, so they cannot be changed:
-- a changed one would be restored as installed, and one deleted and added again would be dumped
-- and collide with it, failing the restore of the currencies and every table that refers to them.
-- (A later version's script that changes them disables this trigger meanwhile.)
CREATE FUNCTION payments.keep_installed_currencies()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'INSERT' THEN
		NEW.seeded := false;
		RETURN NEW;
	END IF;
	IF OLD.seeded THEN
		RAISE EXCEPTION 'currency % is one of those the extension installs: it cannot be changed or deleted', OLD.code
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'pg_dump leaves the installed currencies out, and a restore installs them as they were.';
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	NEW.seeded := false;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments.keep_installed_currencies() IS
	'Trigger: the currencies CREATE EXTENSION installed (seeded) cannot be changed or deleted, and no other row can become one, so that a dump and restore gives back the same currencies';
REVOKE ALL ON FUNCTION payments.keep_installed_currencies() FROM PUBLIC;
CREATE TRIGGER currencies_keep_installed BEFORE INSERT OR UPDATE OR DELETE ON payments.currencies
	FOR EACH ROW EXECUTE FUNCTION payments.keep_installed_currencies();

CREATE TABLE payments.fx_rates (
	day			date NOT NULL,
	currency	char(3) NOT NULL REFERENCES payments.currencies (code),
	rate		numeric NOT NULL CHECK (rate > 0),
	PRIMARY KEY (currency, day)
);
COMMENT ON TABLE payments.fx_rates IS
	'Optional exchange rates: one unit of currency is worth rate units of the base currency (payments.base_currency(): USD unless a payments.base_currency setting exists) on that day (receipt time zone); the base currency itself needs no row';

-- Helpers (pure; search_path pinned, so never inlined with a caller's path)

CREATE FUNCTION payments.report_timezone()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.effective_setting('payments.receipt_timezone')
$$;
COMMENT ON FUNCTION payments.report_timezone() IS 'The time zone of report days: the receipt time zone, default UTC';

CREATE FUNCTION payments.base_currency()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.effective_setting('payments.base_currency')
$$;
COMMENT ON FUNCTION payments.base_currency() IS 'The currency of fx_rates totals: the payments.base_currency setting, default USD';

CREATE FUNCTION payments.mask_email(email text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN email IS NULL THEN NULL
		WHEN strpos(email, '@') < 2 THEN '***'
		ELSE left(email, 1) || '***@' || left(split_part(email, '@', 2), 1) || '***'
			 || coalesce('.' || nullif(substring(split_part(email, '@', 2) from '[.]([^.]+)$'), ''), '')
	END
$$;
COMMENT ON FUNCTION payments.mask_email(text) IS
	'An e-mail address masked for analysts: first letter, first letter of the domain and its last label (jane@example.org: j***@e***.org)';

CREATE FUNCTION payments.mask_phone(phone text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN length(phone) > 4 THEN repeat('*', length(phone) - 4) || right(phone, 4)
				WHEN phone IS NOT NULL THEN '****' END
$$;
COMMENT ON FUNCTION payments.mask_phone(text) IS
	'A phone number masked for analysts: the last four digits kept (263771234567: ********4567)';

CREATE FUNCTION payments.mask_whatsapp_user_id(id text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN id IS NOT NULL THEN 'WhatsApp ' || split_part(id, '.', 1) || '.****' || right(id, 4) END
$$;
COMMENT ON FUNCTION payments.mask_whatsapp_user_id(text) IS
	'A WhatsApp business-scoped user id masked for analysts: its country code and last four characters (ZW.1502576394655843: WhatsApp ZW.****5843)';

CREATE FUNCTION payments.mask_donor(donor_key text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE split_part(donor_key, ':', 1)
		WHEN 'email' THEN payments.mask_email(substr(donor_key, 7))
		WHEN 'phone' THEN payments.mask_phone(substr(donor_key, 7))
		WHEN 'whatsapp' THEN payments.mask_whatsapp_user_id(substr(donor_key, 10))
		WHEN 'name' THEN substr(donor_key, 6)
	END
$$;
COMMENT ON FUNCTION payments.mask_donor(text) IS
	'A donor key as analysts see it: the masked e-mail, else the masked phone, else the masked WhatsApp business-scoped user id, else the name';

CREATE FUNCTION payments.donor_key_of(donor text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	-- (an e-mail address in lower case as payments.keep_donor_key makes it).  A phone number as
	-- the clinic's staff hear it: a Zimbabwean mobile number said without the country code
	-- (0771234567, 771234567), else with the international prefix 00, else as payments.e164_digits
	-- stored it (with the country code, a trunk zero not in parentheses kept: 2630771234567)
	SELECT CASE WHEN strpos(donor, '@') > 0 THEN 'email:' || lower(lower(btrim(donor) COLLATE pg_catalog."C") COLLATE pg_catalog."default")
				WHEN payments.phone_digits(donor) ~ '^0?7[0-9]{8}$' THEN 'phone:263' || right(payments.phone_digits(donor), 9)
				WHEN payments.phone_digits(donor) ~ '^00[1-9]' AND payments.e164_digits(substr(payments.phone_digits(donor), 3)) IS NOT NULL
				THEN 'phone:' || payments.e164_digits(substr(payments.phone_digits(donor), 3))
				WHEN payments.e164_digits(donor) IS NOT NULL THEN 'phone:' || payments.e164_digits(donor)
				WHEN payments.whatsapp_bsuid(btrim(donor)) IS NOT NULL THEN 'whatsapp:' || btrim(donor)
				WHEN nullif(btrim(donor), '') IS NOT NULL THEN 'name:' || lower(btrim(donor))
	END
$$;
COMMENT ON FUNCTION payments.donor_key_of(text) IS
	'The donor key of what identifies a donor: an e-mail address, a phone number (as payments.e164_digits reads it; a Zimbabwean mobile number without the country code, 0771234567, too; 00 as the international prefix), a WhatsApp business-scoped user id, or a name';

CREATE FUNCTION payments.day_start(day date)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'day_start'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.day_start(date) IS 'Midnight starting a day in the report (receipt) time zone, as payments.receipt_day reads the zone';

-- Views (read as their owner: the analyst needs no right on the tables)

CREATE VIEW payments.daily_summary AS
SELECT payments.receipt_day(coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END)) AS day,
	   p.provider, p.currency::text AS currency, coalesce(p.method, 'unknown') AS method, p.status,
	   count(*) AS count,
	   sum(p.amount) AS amount,
	   coalesce(sum(p.amount) FILTER (WHERE p.paid_at IS NOT NULL), 0) AS gross,
	   coalesce(sum(p.fee) FILTER (WHERE p.paid_at IS NOT NULL AND p.amount IS NOT NULL), 0) AS fees,
	   coalesce(sum(CASE p.status WHEN 'refunded' THEN p.amount ELSE p.amount_refunded END)
				FILTER (WHERE p.paid_at IS NOT NULL), 0) AS refunded,
	   coalesce(sum(p.amount) FILTER (WHERE p.paid_at IS NOT NULL), 0)
		   - coalesce(sum(p.fee) FILTER (WHERE p.paid_at IS NOT NULL AND p.amount IS NOT NULL), 0)
		   - coalesce(sum(CASE p.status WHEN 'refunded' THEN p.amount ELSE p.amount_refunded END)
						  FILTER (WHERE p.paid_at IS NOT NULL), 0) AS net,
	   count(*) FILTER (WHERE p.paid_at IS NOT NULL AND p.amount IS NULL) AS amount_unknown
  FROM payments.payments p
 WHERE p.kind = 'collection'
 GROUP BY 1, 2, 3, 4, 5;
COMMENT ON VIEW payments.daily_summary IS
	'Collections per day (paid day, else for failed or cancelled ones the day of that status, else day first seen; receipt time zone), provider, currency, method and current status: count, amount (what they are for, received or not), and the money: gross (received: paid at some time), fees (of those whose amount is known), refunded, net = gross - fees - refunded, and amount_unknown (received, amount not known: not in gross nor fees)';

CREATE VIEW payments.donor_summary AS
SELECT payments.mask_donor(p.donor_key) AS donor,
	   max(p.donor_name) AS name,
	   payments.mask_email(max(p.donor_email)) AS email,
	   -- the number the donor is known by (a WhatsApp donor who changed number: the new one)
	   payments.mask_phone(coalesce(CASE WHEN p.donor_key LIKE 'phone:%' THEN substr(p.donor_key, 7) END,
									max(p.donor_phone))) AS phone,
	   p.currency::text AS currency,
	   count(*) AS gifts,
	   sum(CASE p.status WHEN 'refunded' THEN 0 ELSE p.amount - p.amount_refunded END) AS total,
	   min(p.paid_at) AS first_gift,
	   max(p.paid_at) AS last_gift,
	   min(p.id) AS donor_id,
	   count(*) FILTER (WHERE p.amount IS NULL) AS amount_unknown
  FROM payments.payments p
 WHERE p.kind = 'collection' AND p.paid_at IS NOT NULL AND p.donor_key IS NOT NULL
 GROUP BY p.donor_key, p.currency;
COMMENT ON VIEW payments.donor_summary IS
	'Per donor (e-mail, else phone, else name) and currency: gifts received, total net of refunds, first and last gift; e-mail and phone masked; donor_id (one of the donor''s payments) for payments.donor_history_by_id; amount_unknown: gifts whose amount is not known, left out of total';

-- Report functions: SECURITY DEFINER, so that analysts read the tables through them only

CREATE FUNCTION payments.receipt_bounds(receipts text[], last boolean)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	-- per prefix and receipt day: a day's report holds receipts of two days when
	-- payments.receipt_timezone was changed at an hour the two zones' dates differed
	SELECT string_agg(b.bound, ', ' ORDER BY b.counter)
	  FROM (SELECT regexp_replace(r, '-[^-]*$', '') AS counter, CASE WHEN last THEN max(r) ELSE min(r) END AS bound
			  FROM unnest(receipts) AS r WHERE r IS NOT NULL GROUP BY 1) AS b
$$;
COMMENT ON FUNCTION payments.receipt_bounds(text[], boolean) IS
	'The first (or, with last, the last) receipt number of each counter (prefix and day) among receipt numbers of one day, in the order of the prefixes, joined by ", ": a range per counter, never one that mixes them (a day holds receipts of two when receipt_timezone was changed)';

CREATE FUNCTION payments.daily_report(day date)
RETURNS TABLE (currency text, method text, paid bigint, gross numeric, fees numeric, net numeric,
			   fee_unknown bigint, amount_unknown bigint, failed bigint, refunds bigint, refunded numeric,
			   new_donors bigint, receipts bigint, first_receipt text, last_receipt text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are made for the range asked (see payments_at_stats), without JIT
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	lo timestamptz := payments.day_start(day);
	hi timestamptz := payments.day_start(day + 1);
BEGIN
	RETURN QUERY
	WITH seen AS (
		SELECT p.currency::text AS cur, coalesce(p.method, 'unknown') AS meth, p.amount, p.fee,
			   p.status, p.paid_at, r.receipt_no, p.donor_key,
			   p.donor_key IS NOT NULL AND p.paid_at IS NOT NULL AND NOT EXISTS (
				   SELECT FROM payments.payments q
					WHERE q.donor_key = p.donor_key AND q.kind = 'collection' AND q.paid_at < p.paid_at) AS first_gift
		  FROM payments.payments p
		  LEFT JOIN payments.receipts r ON r.payment_id = p.id
		 WHERE coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) >= lo
		    AND coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) < hi
		   AND p.kind = 'collection' AND (p.paid_at IS NOT NULL OR p.status IN ('failed', 'cancelled'))
	), refunds AS (
		SELECT p.currency::text AS cur, coalesce(p.method, 'unknown') AS meth, f.amount
		  FROM payments.refunds f
		  JOIN payments.payments p ON p.id = f.payment_id
		 WHERE f.refunded_at >= lo AND f.refunded_at < hi AND p.kind = 'collection'
		   AND p.paid_at IS NOT NULL	-- money never received is given back by no one
	), lines AS (
		SELECT s.cur, s.meth, s.amount, s.fee, s.status, s.paid_at, s.receipt_no, s.donor_key, s.first_gift,
			   NULL::numeric AS refund
		  FROM seen s
		UNION ALL
		SELECT r.cur, r.meth, NULL, NULL, NULL, NULL, NULL, NULL, false, r.amount
		  FROM refunds r
	)
	-- gross, fees and net are those of the payments whose amount is known: the fee of one whose
	-- amount is not (an amount finer than its currency's minor unit) would lower the net by money
	-- the gross does not hold; amount_unknown says how many are left out
	SELECT l.cur, CASE WHEN grouping(l.meth) = 1 THEN '(all)' ELSE l.meth END,
		   count(*) FILTER (WHERE l.paid_at IS NOT NULL),
		   coalesce(sum(l.amount) FILTER (WHERE l.paid_at IS NOT NULL), 0),
		   coalesce(sum(l.fee) FILTER (WHERE l.paid_at IS NOT NULL AND l.amount IS NOT NULL), 0),
		   coalesce(sum(l.amount) FILTER (WHERE l.paid_at IS NOT NULL), 0)
			   - coalesce(sum(l.fee) FILTER (WHERE l.paid_at IS NOT NULL AND l.amount IS NOT NULL), 0),
		   count(*) FILTER (WHERE l.paid_at IS NOT NULL AND l.fee IS NULL),
		   count(*) FILTER (WHERE l.paid_at IS NOT NULL AND l.amount IS NULL),
		   count(*) FILTER (WHERE l.paid_at IS NULL AND l.status IN ('failed', 'cancelled')),
		   count(l.refund),
		   coalesce(sum(l.refund), 0),
		   count(DISTINCT l.donor_key) FILTER (WHERE l.first_gift),
		   count(l.receipt_no),
		   payments.receipt_bounds(array_agg(l.receipt_no), false),
		   payments.receipt_bounds(array_agg(l.receipt_no), true)
	  FROM lines l
	 GROUP BY GROUPING SETS ((l.cur, l.meth), (l.cur))
	 ORDER BY l.cur, grouping(l.meth), l.meth;
END
$$;
COMMENT ON FUNCTION payments.daily_report(date) IS
	'The daily report of one day (receipt time zone): per currency and method, then per currency (method "(all)"): paid count, gross, fees, net (paid that day; a fee not known counts as none; gross, fees and net over the payments whose amount is known), how many of them have no fee known (fee_unknown: Stripe''s events carry none), how many have no amount known (amount_unknown: one finer than its currency''s minor unit), failed or cancelled (at the provider''s time of that status), refunds made that day (payments.refunds: count and amount), donors giving for the first time, receipts issued with the first and last number';

CREATE FUNCTION payments.daily_report_csv(day date)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	-- RFC 4180: CRLF line ends; a field holding a comma, a quote or a line break is quoted, its
	-- quotes doubled; NULL is an empty field.  A method (the provider's text) that a spreadsheet
	-- would read as a formula (=, +, -, @, tab, CR first, or =, +, -, @ after white space, which
	-- some spreadsheets skip: Unicode's too, a no-break space among them) is kept as text with a
	-- leading apostrophe
	SELECT string_agg((SELECT string_agg(CASE WHEN v ~ E'[",\r\n]' THEN '"' || replace(v, '"', '""') || '"'
											  ELSE coalesce(v, '') END, ',' ORDER BY k)
						 FROM unnest(l.fields) WITH ORDINALITY AS f (v, k)) || E'\r\n', '' ORDER BY l.n)
	  FROM (SELECT 0::bigint AS n, ARRAY['day', 'currency', 'method', 'paid', 'gross', 'fees', 'net', 'fee_unknown',
										 'amount_unknown', 'failed', 'refunds', 'refunded', 'new_donors', 'receipts', 'first_receipt',
										 'last_receipt'] AS fields
			UNION ALL
			SELECT r.ordinality, ARRAY[to_char(day, 'YYYY-MM-DD'), r.currency,
							  CASE WHEN r.method ~ E'^([-=+@\t\r]|[\\s\\u0085\\u00a0\\u1680\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\ufeff]+[-=+@])'
								   THEN '''' || r.method ELSE r.method END,
							  r.paid::text, r.gross::text,
							  r.fees::text, r.net::text, r.fee_unknown::text, r.amount_unknown::text, r.failed::text, r.refunds::text,
							  r.refunded::text,
							  r.new_donors::text, r.receipts::text, r.first_receipt, r.last_receipt]
			  FROM payments.daily_report(day) WITH ORDINALITY AS r) AS l
$$;
COMMENT ON FUNCTION payments.daily_report_csv(date) IS
	'payments.daily_report of one day as CSV (RFC 4180, a header row, the day in the first column), as the /report admin command sends it';

CREATE FUNCTION payments.top_donors(from_ts timestamptz, to_ts timestamptz, currency text DEFAULT NULL,
									n integer DEFAULT 10)
RETURNS TABLE ("rank" bigint, donor text, name text, currency_code text, gifts bigint, total numeric,
			   first_gift timestamptz, last_gift timestamptz, donor_id bigint, amount_unknown bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are made for the range asked (see payments_at_stats), without JIT
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
#variable_conflict use_variable
BEGIN
	-- the n first of each currency by a bounded sort (LIMIT) per currency: a window over all the
	-- donors would sort every one of them (tens of thousands in a month) to keep ten
	RETURN QUERY
	WITH d AS MATERIALIZED (
		SELECT p.donor_key, max(p.donor_name) AS name, p.currency::text AS cur, count(*) AS gifts,
			   sum(CASE p.status WHEN 'refunded' THEN 0 ELSE p.amount - p.amount_refunded END) AS total,
			   min(p.paid_at) AS first_gift, max(p.paid_at) AS last_gift, min(p.id) AS first_id,
			   count(*) FILTER (WHERE p.amount IS NULL) AS amount_unknown
		  FROM payments.payments p
		 WHERE coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) >= from_ts
		    AND coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) < to_ts
		   AND p.paid_at IS NOT NULL AND p.kind = 'collection' AND p.donor_key IS NOT NULL
		   AND (currency IS NULL OR p.currency = upper(currency COLLATE pg_catalog."C")::bpchar)
		 GROUP BY p.donor_key, p.currency
	)
	SELECT t.rnk, payments.mask_donor(t.donor_key), t.name, t.cur, t.gifts, t.total, t.first_gift, t.last_gift,
		   t.first_id, t.amount_unknown
	  FROM (SELECT DISTINCT d.cur FROM d) AS c
	 CROSS JOIN LATERAL (
		-- equal totals share a rank; a total of no amount known ranks last (one of some gifts
		-- whose amount is not known holds the others: amount_unknown says how many)
		SELECT x.*, rank() OVER (ORDER BY x.total DESC NULLS LAST) AS rnk
		  FROM (SELECT d.* FROM d WHERE d.cur IS NOT DISTINCT FROM c.cur
				 ORDER BY d.total DESC NULLS LAST, d.donor_key LIMIT greatest(n, 0)) AS x) AS t
	 ORDER BY t.cur, t.rnk, t.donor_key;
END
$$;
COMMENT ON FUNCTION payments.top_donors(timestamptz, timestamptz, text, integer) IS
	'The n donors who gave most in [from_ts, to_ts) per currency (or in one currency): gifts, total net of refunds; equal totals share a rank (the n rows cut among them by donor); donor masked; donor_id (one of the donor''s payments) for payments.donor_history_by_id; amount_unknown: gifts whose amount is not known, left out of total';

CREATE FUNCTION payments.currency_summary(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (currency text, paid bigint, gross numeric, fees numeric, refunded numeric, net numeric,
			   failed bigint, pending bigint, base_currency text, base_net numeric, days_without_rate bigint,
			   amount_unknown bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are made for the range asked (see payments_at_stats), without JIT (it costs more than it
-- saves here); the (currency, day) groups are few, which the planner knows from payments_day_stats,
-- but without those statistics (a table not analyzed yet) it would count them as distinct times,
-- sort half a million rows instead of hashing them, and not read them with parallel workers
-- (reading is most of the time: it halves on two cores)
SET plan_cache_mode = force_custom_plan
SET jit = off
SET enable_sort = off
SET parallel_setup_cost = 0
SET parallel_tuple_cost = 0
-- so that the time zone set in the body is the function's own, restored when it returns
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
DECLARE
	base text := payments.base_currency();
	-- the base net is rounded to the base currency's minor unit (read here: a function that is not
	-- parallel safe in the query would keep it from reading in parallel)
	scale integer := coalesce(payments.currency_exponent(base), 2);
BEGIN
	-- each row's day is its time cast to date in the session's time zone, made the report time zone
	-- here: AT TIME ZONE with a zone name would look the zone up again for every row (a quarter of
	-- the time on half a million rows in Africa/Harare)
	PERFORM pg_catalog.set_config('TimeZone', payments.report_timezone(), true);
	RETURN QUERY
	WITH days AS (
		SELECT p.currency::text AS cur,
			   coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END)::date AS d,
			   count(*) FILTER (WHERE p.paid_at IS NOT NULL) AS paid,
			   coalesce(sum(p.amount) FILTER (WHERE p.paid_at IS NOT NULL), 0) AS gross,
			   coalesce(sum(p.fee) FILTER (WHERE p.paid_at IS NOT NULL AND p.amount IS NOT NULL), 0) AS fees,
			   coalesce(sum(CASE p.status WHEN 'refunded' THEN p.amount ELSE p.amount_refunded END)
						FILTER (WHERE p.paid_at IS NOT NULL), 0) AS refunded,
			   count(*) FILTER (WHERE p.paid_at IS NULL AND p.status IN ('failed', 'cancelled')) AS failed,
			   count(*) FILTER (WHERE p.paid_at IS NULL AND p.status = 'pending') AS pending,
			   count(*) FILTER (WHERE p.paid_at IS NOT NULL AND p.amount IS NULL) AS amount_unknown
		  FROM payments.payments p
		 WHERE coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) >= from_ts
		    AND coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) < to_ts
		   AND p.kind = 'collection'
		 GROUP BY 1, 2
	)
	SELECT x.cur, sum(x.paid)::bigint, sum(x.gross), sum(x.fees), sum(x.refunded),
		   sum(x.gross - x.fees - x.refunded),
		   sum(x.failed)::bigint, sum(x.pending)::bigint,
		   base,
		   -- a day whose net is 0 (its paid payments' amounts all unknown, say) needs no rate
		   round(sum((x.gross - x.fees - x.refunded)
					 * CASE WHEN x.cur = base OR x.gross - x.fees - x.refunded = 0 THEN 1 ELSE r.rate END), scale),
		   -- a currency not known (NULL) has no rate either
		   count(*) FILTER (WHERE x.gross - x.fees - x.refunded <> 0 AND x.cur IS DISTINCT FROM base AND r.rate IS NULL),
		   sum(x.amount_unknown)::bigint
	  FROM days x
	  LEFT JOIN payments.fx_rates r ON r.currency = x.cur AND r.day = x.d
	 GROUP BY x.cur
	 ORDER BY x.cur;
END
$$;
COMMENT ON FUNCTION payments.currency_summary(timestamptz, timestamptz) IS
	'Collections in [from_ts, to_ts) per currency: paid count, gross, fees, refunded, net; failed and still pending; net in the base currency over the days with a rate, and the number of days whose net is not 0 but has no rate (0: base_net is complete); amount_unknown: paid ones whose amount is not known, left out of gross and fees';

CREATE FUNCTION payments.base_totals(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (base_currency text, base_net numeric, complete boolean, missing text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.base_currency(), coalesce(sum(s.base_net), 0),
		   coalesce(bool_and(s.days_without_rate = 0), true),
		   string_agg(coalesce(s.currency, 'no currency') || ': ' || s.days_without_rate || ' day(s) without a rate',
					  ', ' ORDER BY s.currency)
			   FILTER (WHERE s.days_without_rate > 0)
	  FROM payments.currency_summary(from_ts, to_ts) s
$$;
COMMENT ON FUNCTION payments.base_totals(timestamptz, timestamptz) IS
	'Net collections in [from_ts, to_ts) in the base currency, all currencies together; complete is false, and missing says where, when a rate is missing';

CREATE FUNCTION payments.method_summary(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (currency text, method text, paid bigint, gross numeric, fees numeric, refunded numeric,
			   net numeric, failed bigint, share numeric, amount_unknown bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are made for the range asked (see payments_at_stats), without JIT
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
	RETURN QUERY
	SELECT m.cur, m.meth, m.paid, m.gross, m.fees, m.refunded, m.gross - m.fees - m.refunded, m.failed,
		   CASE WHEN sum(m.gross) OVER w > 0 THEN round(100 * m.gross / sum(m.gross) OVER w, 1) END,
		   m.amount_unknown
	  FROM (SELECT p.currency::text AS cur, coalesce(p.method, 'unknown') AS meth,
				   count(*) FILTER (WHERE p.paid_at IS NOT NULL) AS paid,
				   coalesce(sum(p.amount) FILTER (WHERE p.paid_at IS NOT NULL), 0) AS gross,
				   coalesce(sum(p.fee) FILTER (WHERE p.paid_at IS NOT NULL AND p.amount IS NOT NULL), 0) AS fees,
				   coalesce(sum(CASE p.status WHEN 'refunded' THEN p.amount ELSE p.amount_refunded END)
							FILTER (WHERE p.paid_at IS NOT NULL), 0) AS refunded,
				   count(*) FILTER (WHERE p.paid_at IS NULL AND p.status IN ('failed', 'cancelled')) AS failed,
				   count(*) FILTER (WHERE p.paid_at IS NOT NULL AND p.amount IS NULL) AS amount_unknown
			  FROM payments.payments p
			 WHERE coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) >= from_ts
			    AND coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) < to_ts
			   AND p.kind = 'collection'
			 GROUP BY 1, 2) AS m
	WINDOW w AS (PARTITION BY m.cur)
	 ORDER BY m.cur, m.gross DESC, m.meth;
END
$$;
COMMENT ON FUNCTION payments.method_summary(timestamptz, timestamptz) IS
	'Collections in [from_ts, to_ts) per currency and method: paid count, gross, fees, refunded, net, failed, the method''s share of the currency''s gross in percent, and amount_unknown: paid ones whose amount is not known, left out of gross and fees';

CREATE FUNCTION payments.earnings(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (provider text, currency text, paid bigint, gross numeric, fees numeric,
			   fee_rate numeric, net numeric, fee_unknown bigint, amount_unknown bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- plans are made for the range asked (see payments_at_stats), without JIT
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
	RETURN QUERY
	-- the fees of the payments whose amount is known (one finer than its currency's minor unit is
	-- not): the gross holds only theirs
	SELECT p.provider, p.currency::text, count(*), coalesce(sum(p.amount), 0),
		   coalesce(sum(p.fee) FILTER (WHERE p.amount IS NOT NULL), 0),
		   -- over the payments whose fee and amount are known (Stripe's events carry no fee)
		   CASE WHEN sum(p.amount) FILTER (WHERE p.fee IS NOT NULL) > 0
				THEN round(100 * sum(p.fee) FILTER (WHERE p.amount IS NOT NULL)
						   / sum(p.amount) FILTER (WHERE p.fee IS NOT NULL), 2) END,
		   coalesce(sum(p.amount), 0) - coalesce(sum(p.fee) FILTER (WHERE p.amount IS NOT NULL), 0),
		   count(*) FILTER (WHERE p.fee IS NULL),
		   count(*) FILTER (WHERE p.amount IS NULL)
	  FROM payments.payments p
	 WHERE coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) >= from_ts
	    AND coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) < to_ts
	   AND p.paid_at IS NOT NULL AND p.kind = 'collection'
	 GROUP BY p.provider, p.currency
	 ORDER BY p.provider, p.currency;
END
$$;
COMMENT ON FUNCTION payments.earnings(timestamptz, timestamptz) IS
	'Fees (the providers'' commissions) on collections paid in [from_ts, to_ts) by provider and currency, with the fee rate in percent of the gross of the payments whose fee is known (NULL when none is), and how many payments have no fee known (fee_unknown) and no amount known (amount_unknown: left out of gross, fees, net and the rate)';

-- One donor's payments, by its key (payments.payments.donor_key), for the two lookups below
CREATE FUNCTION payments.donor_history_of_key(key text)
RETURNS TABLE (at timestamptz, provider text, reference text, status text, amount numeric, currency text,
			   refunded numeric, method text, name text, receipt_no text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END), p.provider, p.reference, p.status::text, p.amount::numeric, p.currency::text,
		   (CASE p.status WHEN 'refunded' THEN p.amount ELSE p.amount_refunded END)::numeric,
		   p.method, p.donor_name, r.receipt_no
	  FROM payments.payments p
	  LEFT JOIN payments.receipts r ON r.payment_id = p.id
	 WHERE p.donor_key = donor_history_of_key.key AND p.kind = 'collection'
	 ORDER BY coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) DESC, p.id DESC
$$;
COMMENT ON FUNCTION payments.donor_history_of_key(text) IS
	'The payments of the donor with a donor_key, newest first, with receipt numbers (for donor_history and donor_history_by_id)';

-- Analysts name a donor by the donor_id the reports show, never by an e-mail address or a phone
-- number: those they see masked, and a lookup by them would unmask a phone number in ten thousand
-- tries (and tell whether anyone is a donor)
CREATE FUNCTION payments.donor_history_by_id(donor_id bigint)
RETURNS TABLE (at timestamptz, provider text, reference text, status text, amount numeric, currency text,
			   refunded numeric, method text, name text, receipt_no text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT h.* FROM payments.donor_history_of_key((SELECT d.donor_key FROM payments.payments d
												   WHERE d.id = donor_history_by_id.donor_id
													 AND d.kind = 'collection')) h
$$;
COMMENT ON FUNCTION payments.donor_history_by_id(bigint) IS
	'One donor''s payments, newest first, with receipt numbers; the donor is given by the donor_id of donor_summary or top_donors (any of the donor''s payments)';

-- The admin's lookup, by what a donor says on the telephone
CREATE FUNCTION payments.donor_history(donor text)
RETURNS TABLE (at timestamptz, provider text, reference text, status text, amount numeric, currency text,
			   refunded numeric, method text, name text, receipt_no text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT h.* FROM payments.donor_history_of_key(payments.donor_key_of(donor_history.donor)) h
$$;
COMMENT ON FUNCTION payments.donor_history(text) IS
	'payments_admin only: one donor''s payments, newest first, with receipt numbers; the donor given as its key is made (payments.donor_key_of): e-mail address, else phone number in any format, else name';

CREATE FUNCTION payments.recent_events(provider text DEFAULT NULL, n integer DEFAULT 50)
RETURNS TABLE (id bigint, provider_name text, event_id text, event_type text, event_at timestamptz,
			   received_at timestamptz, state text, attempts integer, last_error text, request_id text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
	RETURN QUERY
	SELECT e.id, e.provider, e.event_id, e.event_type, e.event_at, e.received_at, e.state::text, e.attempts,
		   e.last_error, e.request_id
	  FROM payments.events e
	 WHERE provider IS NULL OR e.provider = provider
	 ORDER BY e.id DESC
	 LIMIT greatest(n, 0);
END
$$;
COMMENT ON FUNCTION payments.recent_events(text, integer) IS
	'The admin''s event listing: the latest n events (of one provider or all; none when n is not positive), newest first, without bodies or headers';

SELECT pg_catalog.pg_extension_config_dump('payments.fx_rates', '');
SELECT pg_catalog.pg_extension_config_dump('payments.currencies', 'WHERE NOT seeded');

-- Roles: cluster-wide group roles, created once; they outlive DROP EXTENSION
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['payments_admin', 'payments_ingest', 'payments_analyst'] LOOP
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
			BEGIN
				EXECUTE format('CREATE ROLE %I NOLOGIN', r);
			EXCEPTION WHEN duplicate_object OR unique_violation THEN
				NULL;	-- made meanwhile by a CREATE EXTENSION in another database
			END;
		END IF;
	END LOOP;
END
$$;

-- PUBLIC: no USAGE on the schema; EXECUTE kept only on pure functions (verifiers, masks,
-- e164_digits, country_code, receipt_day, ...).  Functions that read tables are revoked.
REVOKE ALL ON SCHEMA payments FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.receipt(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.major_units(numeric, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.decimal_amount(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.event_change(text, jsonb, payments.events) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.stripe_change(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paynow_change(jsonb, jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.eversend_change(jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paypal_change(jsonb, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paypal_refunded_capture(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paypal_payment_source(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.apply_paypal_change(bigint, text, payments.payment_change, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paypal_capture_lock(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.daily_report(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.daily_report_csv(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.top_donors(timestamptz, timestamptz, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.currency_summary(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.base_totals(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.method_summary(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.earnings(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.donor_history(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.donor_history_by_id(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.donor_history_of_key(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.recent_events(text, integer) FROM PUBLIC;

--------------------------------------------------------------------------------------------------
-- Background work: retries and dead letters, outbound deliveries, pg_cron jobs
--------------------------------------------------------------------------------------------------

-- The retry schedule (DESIGN.md section 7), shared by events and outbound deliveries.

CREATE FUNCTION payments.retry_delay(failed_attempts integer)
RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ('{1 minute,5 minutes,30 minutes,2 hours,5 hours,10 hours,10 hours}'::pg_catalog.interval[])[failed_attempts]
$$;
COMMENT ON FUNCTION payments.retry_delay(integer) IS
	'The wait after a number of failed attempts (the first attempt is immediate): 1 min, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; NULL after the 8th: give up';

CREATE FUNCTION payments.next_attempt_at(failed_attempts integer, retry_after interval DEFAULT NULL)
RETURNS timestamptz
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
	-- counted from the failure, not from the start of its transaction: a retry run of many events
	-- (one transaction) would otherwise schedule its last failures too early
	SELECT CASE WHEN d IS NOT NULL THEN
		greatest(clock_timestamp() + d * (0.9 + 0.2 * random()),
				 clock_timestamp() + least(greatest(retry_after, interval '0'), interval '24 hours'))
	END
	FROM payments.retry_delay(failed_attempts) AS d
$$;
COMMENT ON FUNCTION payments.next_attempt_at(integer, interval) IS
	'When to try again after a number of failed attempts, counted from now (the clock, not the transaction''s start): the retry_delay with +-10% jitter, never before a Retry-After (capped at one day); NULL: give up (dead)';

--------------------------------------------------------------------------------------------------
-- Retrying events; dead letters
--------------------------------------------------------------------------------------------------

CREATE TABLE payments.event_attempts (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	event_id	bigint NOT NULL REFERENCES payments.events (id) ON DELETE CASCADE,
	attempt		integer NOT NULL,
	failed_at	timestamptz NOT NULL DEFAULT now(),
	error		text NOT NULL,
	gave_up		boolean NOT NULL
);
CREATE INDEX event_attempts_event_idx ON payments.event_attempts (event_id);
COMMENT ON TABLE payments.event_attempts IS
	'Every failed attempt to apply a stored event, with its error (events.last_error only keeps the last); gave_up: the event became dead';

CREATE INDEX events_due_idx ON payments.events (next_attempt_at) WHERE state = 'pending';

CREATE FUNCTION payments.transient_error(error text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT error LIKE 'deadlock detected%' OR error LIKE 'could not serialize access%'
		OR error LIKE 'canceling statement due to %' OR error LIKE 'could not obtain lock%'
$$;
COMMENT ON FUNCTION payments.transient_error(text) IS
	'Whether an error message of a failed attempt says nothing of the event itself: a deadlock, a serialization failure, a timeout or cancel, a lock not obtained';

CREATE FUNCTION payments.event_failed(id bigint, error text, attempt integer DEFAULT NULL,
									   waiting boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tries	integer;
	next_at	timestamptz;
BEGIN
	-- (an event that was waiting for its payment waits on when this attempt, or several in a row,
	-- failed otherwise: deadlocks or timeouts must not end its four days; an error of another
	-- kind, the payment known by then, ends its waiting)
	SELECT coalesce(attempt, e.attempts + 1),
		   waiting OR (payments.transient_error(error)
			   AND coalesce((SELECT a.error LIKE 'payment % is not known yet' FROM payments.event_attempts a
							  WHERE a.event_id = e.id AND NOT payments.transient_error(a.error)
							  ORDER BY a.id DESC LIMIT 1), false))
	  INTO tries, waiting
	  FROM payments.events e WHERE e.id = event_failed.id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown event %', id USING ERRCODE = 'undefined_object';
	END IF;
	next_at := payments.next_attempt_at(tries);
	-- an event waiting for its payment (a refund delivered before the news of the payment, which
	-- its provider may go on sending for three days) is asked again hourly at least, 96 times
	-- (four days), not for the 27 hours of the schedule
	IF waiting THEN
		next_at := CASE WHEN tries < 96 THEN least(next_at, clock_timestamp() + interval '1 hour') END;
	END IF;
	UPDATE payments.events e
	   SET attempts = tries, next_attempt_at = next_at, last_error = error,
		   state = CASE WHEN next_at IS NULL THEN 'dead' ELSE 'pending' END
	 WHERE e.id = event_failed.id;
	INSERT INTO payments.event_attempts (event_id, attempt, error, gave_up)
	VALUES (event_failed.id, tries, coalesce(error, 'unknown error'), next_at IS NULL);
	RETURN CASE WHEN next_at IS NULL THEN 'dead' ELSE 'pending' END;
END
$$;
COMMENT ON FUNCTION payments.event_failed(bigint, text, integer, boolean) IS
	'Records a failed attempt to apply an event (attempt number attempt, by default the one after the last): keeps the error, schedules the next attempt, or marks the event dead after the last; an event waiting for its payment (waiting) is asked hourly at least and given up after 96 attempts (four days); returns pending or dead';

CREATE FUNCTION payments.retry_events(max_items integer DEFAULT 100)
RETURNS TABLE (event bigint, outcome text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ev_id	bigint;
	result	text;
	msg		text;
BEGIN
	-- a receipt is numbered at commit from the day's counter row: under snapshot isolation that
	-- fails whenever another transaction paid that day since the snapshot, and the whole run, its
	-- failed attempts too, would roll back at its commit
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'payments.retry_events must run at the READ COMMITTED isolation level'
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = 'Receipt numbers are taken at commit from the day''s counter row, which fails under snapshot isolation when another transaction paid that day since the snapshot.',
				  HINT = 'CALL payments.run_job(''retry''), which runs at READ COMMITTED whatever the default, or SET default_transaction_isolation TO ''read committed''.';
	END IF;
	IF max_items IS NULL OR max_items < 1 THEN
		RAISE EXCEPTION 'max_items must be a positive number' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR ev_id IN
		SELECT e.id FROM payments.events e
		 WHERE e.state = 'pending' AND coalesce(e.next_attempt_at, e.received_at) <= now()
		 ORDER BY coalesce(e.next_attempt_at, e.received_at), e.id
		 LIMIT max_items
		   FOR UPDATE SKIP LOCKED
	LOOP
		BEGIN
			result := payments.apply_event(ev_id);
		EXCEPTION
			WHEN query_canceled THEN
				-- a statement_timeout (or a cancel) while this event was applied: its attempt is
				-- recorded as failed and the run ends, keeping what it did, so that the next run
				-- does not meet the same event first and roll back with it again and again
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				event := ev_id;
				outcome := payments.event_failed(ev_id, msg);
				RETURN NEXT;
				RETURN;
			WHEN OTHERS THEN
				GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
				result := payments.event_failed(ev_id, msg);
		END;
		IF result = 'stored' THEN
			SELECT e.state INTO result FROM payments.events e WHERE e.id = ev_id;
		END IF;
		event := ev_id;
		outcome := result;
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION payments.retry_events(integer) IS
	'Applies due pending events again (claimed with SKIP LOCKED, each in its own subtransaction); returns each event and its outcome: applied, ignored, pending (to be retried) or dead; a statement_timeout or cancel while one is applied records its failed attempt and ends the run; only at READ COMMITTED';

CREATE FUNCTION payments.replay_event(id bigint)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st		text;
	result	text;
	msg		text;
BEGIN
	-- as retry_events: a receipt numbered at commit fails under snapshot isolation
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'payments.replay_event must run at the READ COMMITTED isolation level'
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = 'Receipt numbers are taken at commit from the day''s counter row, which fails under snapshot isolation when another transaction paid that day since the snapshot.',
				  HINT = 'SET default_transaction_isolation TO ''read committed'' for the caller.';
	END IF;
	SELECT e.state INTO st FROM payments.events e WHERE e.id = replay_event.id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown event %', id USING ERRCODE = 'undefined_object';
	END IF;
	IF st NOT IN ('pending', 'dead') THEN
		RAISE NOTICE 'event % is already %', id, st;
		RETURN st;
	END IF;
	-- a fresh schedule: the earlier failures stay in payments.event_attempts
	UPDATE payments.events e SET state = 'pending', attempts = 0, next_attempt_at = now()
	 WHERE e.id = replay_event.id;
	BEGIN
		result := payments.apply_event(replay_event.id);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		result := payments.event_failed(replay_event.id, msg);
	END;
	SELECT e.state INTO result FROM payments.events e WHERE e.id = replay_event.id;
	RETURN result;
END
$$;
COMMENT ON FUNCTION payments.replay_event(bigint) IS
	'Applies a pending or dead event now, with a fresh retry schedule; returns its state afterwards (applied, ignored, pending or dead); only at READ COMMITTED';

CREATE FUNCTION payments.replay_dead(provider text DEFAULT NULL, since timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	WITH requeued AS (
		UPDATE payments.events e SET state = 'pending', attempts = 0, next_attempt_at = now()
		 WHERE e.state = 'dead'
		   AND (replay_dead.provider IS NULL OR e.provider = replay_dead.provider)
		   AND (replay_dead.since IS NULL OR e.received_at >= replay_dead.since)
		RETURNING 1)
	SELECT count(*) FROM requeued
$$;
COMMENT ON FUNCTION payments.replay_dead(text, timestamptz) IS
	'Puts the dead events of a provider (NULL: every provider) received since a time (NULL: ever) back in the queue with a fresh schedule; the next retry_events applies them; returns how many';

--------------------------------------------------------------------------------------------------
-- Outbound deliveries: endpoints, the outbox, attempts
--------------------------------------------------------------------------------------------------

-- What its constraints say is checked first by a trigger (payments.check_endpoint), whose errors
-- name the problem only: PostgreSQL reports a row that violates a constraint whole ("Failing row
-- contains ..."), to the client and the server log, and the row holds the endpoint's signing
-- secret.  A secret the signing step cannot use, set by an UPDATE, would fail each delivery run
-- after its claims were committed: it is checked here too, not only by add_endpoint.
CREATE TABLE payments.endpoints (
	id					bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name				text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
	url					text NOT NULL CHECK (url ~ '^https?://'),
	secret				text NOT NULL CHECK (starts_with(secret, 'whsec_')
											 AND payments.secret_problem('standard', secret) IS NULL),
	event_types			text[],
	ca_file				text,
	connect_timeout_ms	integer NOT NULL DEFAULT 5000 CHECK (connect_timeout_ms BETWEEN 100 AND 60000),
	timeout_ms			integer NOT NULL DEFAULT 15000 CHECK (timeout_ms BETWEEN 100 AND 120000),
	max_response_bytes	integer NOT NULL DEFAULT 65536 CHECK (max_response_bytes BETWEEN 0 AND 10485760),
	breaker_threshold	integer NOT NULL DEFAULT 5 CHECK (breaker_threshold >= 1),
	breaker_cooldown	interval NOT NULL DEFAULT '5 minutes'
						CHECK (breaker_cooldown BETWEEN interval '1 second' AND interval '30 days'),
	enabled				boolean NOT NULL DEFAULT true,
	disabled_reason		text,
	breaker_state		text NOT NULL DEFAULT 'closed' CHECK (breaker_state IN ('closed', 'open', 'half_open')),
	breaker_until		timestamptz,
	hold_until			timestamptz,
	consecutive_failures integer NOT NULL DEFAULT 0,
	last_status			integer,
	last_error			text,
	last_success_at		timestamptz,
	last_failure_at		timestamptz,
	created_at			timestamptz NOT NULL DEFAULT now(),
	updated_at			timestamptz NOT NULL DEFAULT now(),
	pruned_before		timestamptz
);
COMMENT ON TABLE payments.endpoints IS
	'Receivers of outbound webhooks (Standard Webhooks signed JSON POSTs), with their circuit breaker state';
COMMENT ON COLUMN payments.endpoints.event_types IS
	'Event types to send (payment.paid, payment.*, event.stripe.* ...); NULL: every payment change (raw events only when named)';
COMMENT ON COLUMN payments.endpoints.ca_file IS 'CA bundle to verify the receiver''s TLS certificate; NULL: the system''s';
COMMENT ON COLUMN payments.endpoints.hold_until IS
	'Until when a receiver''s Retry-After asked for no more requests: the breaker stays open until then, whatever else of the batch was answered (payments.record_delivery)';
COMMENT ON COLUMN payments.endpoints.breaker_state IS
	'closed: deliver; open: paused after breaker_threshold consecutive failures until breaker_until; half_open: one probe in flight';
COMMENT ON COLUMN payments.endpoints.pruned_before IS
	'Just past the latest end (delivery, last attempt) of the items of this endpoint payments.prune_outbox deleted (NULL: it deleted none): what it was queued before then can no longer be told, so payments.replay_outbox looks for changes never queued from this time on only';

CREATE TABLE payments.outbox (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	endpoint_id		bigint REFERENCES payments.endpoints (id) ON DELETE CASCADE,
	provider		text REFERENCES payments.providers (name),
	recipient		text,
	event_type		text NOT NULL,
	payload			jsonb NOT NULL,
	status_history_id bigint REFERENCES payments.status_history (id) ON DELETE SET NULL,
	state			text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
	attempts		integer NOT NULL DEFAULT 0,
	next_attempt_at	timestamptz NOT NULL DEFAULT now(),
	last_status		integer,
	last_error		text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	delivered_at	timestamptz,
	wamid			text,
	message_status	text CHECK (message_status IN ('sent', 'delivered', 'read', 'failed')),
	message_status_at timestamptz,
	message_errors	jsonb,
	-- the webhook-id of every attempt: random, not the row's id, which another database (or this
	-- one made again) also numbers from 1, and receivers deduplicate on it
	msg_id			text NOT NULL DEFAULT 'msg_' || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''),
	CHECK ((endpoint_id IS NULL) <> (provider IS NULL)),
	-- a WhatsApp user: a phone number (E.164 digits) or a business-scoped user id
	CHECK (provider IS NULL OR payments.whatsapp_user_id(recipient) IS NOT DISTINCT FROM recipient)
);
CREATE INDEX outbox_due_idx ON payments.outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_endpoint_idx ON payments.outbox (endpoint_id, state);
CREATE UNIQUE INDEX outbox_wamid_idx ON payments.outbox (provider, wamid) WHERE wamid IS NOT NULL;
CREATE INDEX outbox_recipient_idx ON payments.outbox (provider, recipient, id) WHERE provider IS NOT NULL AND state = 'pending';
COMMENT ON TABLE payments.outbox IS
	'Outbound webhooks (endpoint_id) and WhatsApp messages (provider: the meta provider sending them), queued in the transaction of the change; webhook-id is msg_id (msg_ and 32 random hex digits), the same on every attempt. pending: to send (next_attempt_at is also the lease of an attempt in flight); delivered: a 2xx came back; dead: gave up after the last attempt';
COMMENT ON COLUMN payments.outbox.wamid IS 'A WhatsApp message''s id, from the Graph API''s answer; Meta''s statuses name it';
COMMENT ON COLUMN payments.outbox.message_status IS
	'A WhatsApp message''s last status from Meta, moved forward only (sent, delivered, read; failed); statuses arriving before the wamid was stored are applied when it is';

CREATE TABLE payments.outbox_attempts (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	outbox_id		bigint NOT NULL REFERENCES payments.outbox (id) ON DELETE CASCADE,
	endpoint_id		bigint REFERENCES payments.endpoints (id) ON DELETE CASCADE,
	attempt			integer NOT NULL,
	started_at		timestamptz NOT NULL DEFAULT now(),
	finished_at		timestamptz,
	http_status		integer,
	retry_after		integer,
	duration_ms		integer,
	response_bytes	bigint,
	response		text,
	error			text
);
CREATE INDEX outbox_attempts_outbox_idx ON payments.outbox_attempts (outbox_id);
CREATE INDEX outbox_attempts_endpoint_idx ON payments.outbox_attempts (endpoint_id, started_at);
COMMENT ON TABLE payments.outbox_attempts IS
	'Every delivery attempt, recorded (and committed) before the HTTP call; finished_at NULL after the lease: interrupted (crash, cancel), retried';

CREATE FUNCTION payments.event_type_matches(patterns text[], event_type text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT patterns IS NULL OR EXISTS (
		SELECT FROM unnest(patterns) AS p
		 WHERE p = event_type OR (right(p, 1) = '*' AND starts_with(event_type, left(p, -1))))
$$;
COMMENT ON FUNCTION payments.event_type_matches(text[], text) IS
	'Whether an endpoint''s event_types (NULL: all; a trailing * matches a prefix) take an event type';

CREATE FUNCTION payments.check_endpoint()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	problem	text;
BEGIN
	IF NEW.name IS NULL OR NEW.name !~ '^[a-z0-9][a-z0-9_-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid endpoint name "%"', NEW.name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'An endpoint name is 1 to 63 characters of a-z, 0-9, "_" and "-".';
	END IF;
	IF NEW.url IS NULL OR NEW.url !~ '^https?://[^/?#@[:space:]]+(/[^[:space:]]*)?$' THEN
		-- (the URL is not repeated, to the client nor to the server log: it may hold a password)
		RAISE EXCEPTION 'invalid endpoint URL'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give an absolute http:// or https:// URL without credentials.';
	END IF;
	IF TG_OP = 'INSERT' OR NEW.secret IS DISTINCT FROM OLD.secret THEN
		IF NEW.secret IS NULL OR NOT starts_with(NEW.secret, 'whsec_') THEN
			RAISE EXCEPTION 'an endpoint secret is whsec_ followed by base64'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'For example: SELECT ''whsec_'' || encode(gen_random_bytes(32), ''base64'') (pgcrypto).';
		END IF;
		problem := payments.secret_problem('standard', NEW.secret);
		IF problem IS NOT NULL THEN
			RAISE EXCEPTION 'unusable endpoint secret: %', problem USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END IF;
	IF NEW.event_types IS NOT NULL AND (cardinality(NEW.event_types) = 0 OR array_position(NEW.event_types, NULL) IS NOT NULL) THEN
		RAISE EXCEPTION 'event_types must be NULL (all) or a non-empty list without NULLs'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NEW.connect_timeout_ms IS NULL OR NEW.connect_timeout_ms NOT BETWEEN 100 AND 60000 THEN
		problem := 'connect_timeout_ms must be 100 to 60000';
	ELSIF NEW.timeout_ms IS NULL OR NEW.timeout_ms NOT BETWEEN 100 AND 120000 THEN
		problem := 'timeout_ms must be 100 to 120000';
	ELSIF NEW.max_response_bytes IS NULL OR NEW.max_response_bytes NOT BETWEEN 0 AND 10485760 THEN
		problem := 'max_response_bytes must be 0 to 10485760';
	ELSIF NEW.breaker_threshold IS NULL OR NEW.breaker_threshold < 1 THEN
		problem := 'breaker_threshold must be 1 or more';
	ELSIF NEW.breaker_cooldown IS NULL OR NEW.breaker_cooldown NOT BETWEEN interval '1 second' AND interval '30 days' THEN
		-- bounded above: now() + a cool-down of 300000 years is out of range, and failed every
		-- claim, stopping the deliveries of all endpoints and WhatsApp messages
		problem := 'breaker_cooldown must be 1 second to 30 days';
	ELSIF NEW.breaker_state IS NULL OR NEW.breaker_state NOT IN ('closed', 'open', 'half_open') THEN
		problem := 'breaker_state must be closed, open or half_open';
	ELSIF NEW.enabled IS NULL THEN
		problem := 'enabled must be true or false';
	ELSIF NEW.consecutive_failures IS NULL OR NEW.created_at IS NULL OR NEW.updated_at IS NULL THEN
		problem := 'consecutive_failures, created_at and updated_at must not be null';
	END IF;
	IF problem IS NOT NULL THEN
		RAISE EXCEPTION 'invalid endpoint "%": %', NEW.name, problem USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments.check_endpoint() IS
	'Trigger: checks an endpoint row before its constraints do (name, URL, a secret the signing step can use, event types, timeouts, response cap, breaker settings, the columns that must not be null) with errors that never show the row, whose secret PostgreSQL would report with a failed constraint';
CREATE TRIGGER endpoints_check BEFORE INSERT OR UPDATE ON payments.endpoints
	FOR EACH ROW EXECUTE FUNCTION payments.check_endpoint();
REVOKE ALL ON FUNCTION payments.check_endpoint() FROM PUBLIC;

CREATE FUNCTION payments.add_endpoint(name text, url text, secret text, event_types text[] DEFAULT NULL,
									  ca_file text DEFAULT NULL, timeout_ms integer DEFAULT 15000,
									  connect_timeout_ms integer DEFAULT 5000,
									  max_response_bytes integer DEFAULT 65536,
									  breaker_threshold integer DEFAULT 5,
									  breaker_cooldown interval DEFAULT '5 minutes')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	new_id	bigint;
BEGIN
	-- the row is checked by payments.check_endpoint
	INSERT INTO payments.endpoints AS e (name, url, secret, event_types, ca_file, timeout_ms,
										 connect_timeout_ms, max_response_bytes, breaker_threshold,
										 breaker_cooldown)
	VALUES (add_endpoint.name, add_endpoint.url, add_endpoint.secret, add_endpoint.event_types,
			add_endpoint.ca_file, add_endpoint.timeout_ms, add_endpoint.connect_timeout_ms,
			add_endpoint.max_response_bytes, add_endpoint.breaker_threshold, add_endpoint.breaker_cooldown)
	ON CONFLICT ON CONSTRAINT endpoints_name_key DO UPDATE
		SET url = excluded.url, secret = excluded.secret, event_types = excluded.event_types,
			ca_file = excluded.ca_file, timeout_ms = excluded.timeout_ms,
			connect_timeout_ms = excluded.connect_timeout_ms,
			max_response_bytes = excluded.max_response_bytes,
			breaker_threshold = excluded.breaker_threshold, breaker_cooldown = excluded.breaker_cooldown,
			updated_at = now()
	RETURNING e.id INTO new_id;
	RETURN new_id;
END
$$;
COMMENT ON FUNCTION payments.add_endpoint(text, text, text, text[], text, integer, integer, integer, integer, interval) IS
	'Adds (or updates by name) a receiver of outbound webhooks and returns its id: payment transitions of the chosen types are queued for it from now on';

CREATE FUNCTION payments.enable_endpoint(name text, enabled boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE payments.endpoints e
	   SET enabled = enable_endpoint.enabled,
		   disabled_reason = CASE WHEN enable_endpoint.enabled THEN NULL ELSE 'disabled by ' || session_user END,
		   breaker_state = 'closed', breaker_until = NULL, hold_until = NULL, consecutive_failures = 0, updated_at = now()
	 WHERE e.name = enable_endpoint.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown endpoint "%"', name USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION payments.enable_endpoint(text, boolean) IS
	'Enables (closing its breaker) or disables an endpoint; the items queued for it before it was disabled are sent once enabled (nothing is queued for it while disabled: payments.replay_outbox)';

-- (PL/pgSQL, as the helpers below: called at commit for every transition while an endpoint is
-- enabled, and its plan kept for the session; an SQL function with SET is planned at every call,
-- which cost a delivery 14% more.  TimeZone is UTC so that the times in the body
-- ("2024-06-10T23:30:00+00:00") do not depend on the session that made the change or replays it.)
CREATE FUNCTION payments.transition_payload(transition payments.status_history)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
	RETURN (SELECT jsonb_build_object(
			'type', 'payment.' || transition.to_status,
			'timestamp', to_char(transition.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
			'data', jsonb_build_object(
				'payment_id', p.id, 'provider', p.provider, 'provider_ref', p.provider_ref,
				'reference', p.reference, 'kind', p.kind, 'status', p.status,
				'from_status', transition.from_status, 'to_status', transition.to_status,
				'status_at', transition.status_at, 'amount', p.amount, 'currency', p.currency,
				'amount_refunded', p.amount_refunded, 'fee', p.fee, 'method', p.method,
				'receipt_no', (SELECT r.receipt_no FROM payments.receipts r WHERE r.payment_id = p.id), 'paid_at', p.paid_at, 'donor_name', p.donor_name,
				'donor_email', p.donor_email, 'donor_phone', p.donor_phone, 'country', p.country,
				'event_id', transition.event_id, 'transition_id', transition.id))
	  FROM payments.payments p WHERE p.id = transition.payment_id);
END
$$;
COMMENT ON FUNCTION payments.transition_payload(payments.status_history) IS
	'The body of a payment.<status> webhook: the transition, with the payment as it now is; its times in UTC whatever the session''s TimeZone';

-- (called by payments.transition_committed at commit, when an enabled endpoint takes the type)
CREATE FUNCTION payments.enqueue_transition(transition payments.status_history)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	etype	text := 'payment.' || transition.to_status;
	body	jsonb := payments.transition_payload(transition);
BEGIN
	INSERT INTO payments.outbox (endpoint_id, event_type, payload, status_history_id)
	SELECT e.id, etype, body, transition.id FROM payments.endpoints e
	 WHERE e.enabled AND payments.event_type_matches(e.event_types, etype);
END
$$;
COMMENT ON FUNCTION payments.enqueue_transition(payments.status_history) IS
	'At commit (payments.transition_committed): queues a payment transition, with the payment as it then is, for every enabled endpoint that takes its type';

-- (called at commit by payments.enqueue_event, the events' deferred trigger in C, when an enabled
-- endpoint names its types: raw events only go where they were asked for by name, NULL (all)
-- means payment changes; without such an endpoint, the usual case, nothing is even called)
CREATE FUNCTION payments.raw_event_type(ev payments.events)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN 'event.' || ev.provider || '.' || coalesce(ev.event_type, 'unknown');
END
$$;
COMMENT ON FUNCTION payments.raw_event_type(payments.events) IS
	'The outbound type of a stored event: event.<provider>.<event type> (unknown when it has none)';

-- (TimeZone UTC, as payments.transition_payload)
CREATE FUNCTION payments.raw_event_payload(ev payments.events)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
BEGIN
	RETURN jsonb_build_object(
			'type', payments.raw_event_type(ev),
			'timestamp', to_char(ev.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
			'data', jsonb_build_object(
				'provider', ev.provider, 'event_id', ev.event_id, 'event_type', ev.event_type,
				'event_at', ev.event_at, 'received_at', ev.received_at, 'payload', ev.payload));
END
$$;
COMMENT ON FUNCTION payments.raw_event_payload(payments.events) IS
	'The body of an event.<provider>.<event type> webhook: the stored event with its payload; its times in UTC whatever the session''s TimeZone';

CREATE FUNCTION payments.enqueue_raw_event(ev payments.events)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	etype	text := payments.raw_event_type(ev);
	body	jsonb;
BEGIN
	IF NOT EXISTS (SELECT FROM payments.endpoints e
					WHERE e.enabled AND e.event_types IS NOT NULL AND payments.event_type_matches(e.event_types, etype)) THEN
		RETURN;
	END IF;
	body := payments.raw_event_payload(ev);
	INSERT INTO payments.outbox (endpoint_id, event_type, payload)
	SELECT e.id, etype, body
	  FROM payments.endpoints e
	 WHERE e.enabled AND e.event_types IS NOT NULL AND payments.event_type_matches(e.event_types, etype);
END
$$;
COMMENT ON FUNCTION payments.enqueue_raw_event(payments.events) IS
	'At commit (payments.enqueue_event): queues a stored event, as event.<provider>.<event type>, for every enabled endpoint that names such types (event.* or event.stripe.* ...)';

-- An endpoint disabled (by a 410 or by hand) is queued nothing, and its items that used up their
-- attempts are dead: an operator who has fixed the receiver sends them again with this
CREATE FUNCTION payments.replay_outbox(endpoint text, since timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ep		payments.endpoints;
	requeued bigint;
	transitions bigint;
	events	bigint := 0;
	from_time timestamptz := since;
BEGIN
	IF since IS NULL THEN
		RAISE EXCEPTION 'replay_outbox needs a time to replay from'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'For example: SELECT payments.replay_outbox(''crm'', now() - interval ''2 days'').';
	END IF;
	-- locked, so that two replays at once queue each item once: the second waits, and its
	-- statements then see what the first queued
	SELECT e.* INTO ep FROM payments.endpoints e WHERE e.name = replay_outbox.endpoint FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown endpoint "%"', replay_outbox.endpoint USING ERRCODE = 'undefined_object';
	END IF;
	-- "never queued" is told by the absence of an outbox row, which payments.prune_outbox deletes
	-- too: a change whose item was pruned would be queued again, under a new msg_id (webhook-id)
	-- the receiver cannot know for a repeat.  So changes are looked for from the endpoint's
	-- pruned_before on only: just past the latest end of the items a prune deleted.  It is a
	-- sound bound: an item ends (is delivered, or attempted for the last time) in a transaction
	-- begun after its change committed, so its change's time (status_history.recorded_at,
	-- events.received_at: the now() of the transaction that recorded it) is before the item's
	-- end; every change at or after pruned_before that was ever queued for the endpoint still has
	-- its row.  (Not created_at: a replay begun before the change committed queues it with an
	-- earlier one.)  Changes older than the items pruned that were never queued stay within
	-- reach.  (Dead items still kept are requeued from since: they keep their msg_id.)
	IF ep.pruned_before IS NOT NULL AND since < ep.pruned_before THEN
		from_time := ep.pruned_before;
		RAISE NOTICE 'replay_outbox("%"): changes never queued are looked for from % on, not from %',
			ep.name, ep.pruned_before, since
			USING DETAIL = 'Items of this endpoint finished before ' || ep.pruned_before
						   || ' were pruned (payments.prune_outbox): whether a change made before then was sent can no longer be told, and sending it again would give it a new webhook-id.';
	END IF;
	-- dead items back in the queue with a fresh schedule (their attempts stay in outbox_attempts)
	UPDATE payments.outbox o SET state = 'pending', attempts = 0, next_attempt_at = now()
	 WHERE o.endpoint_id = ep.id AND o.state = 'dead' AND o.created_at >= since;
	GET DIAGNOSTICS requeued = ROW_COUNT;
	-- payment changes since then of the types it takes that it was never queued (made while it was
	-- disabled, or before it was added), in the order they were made
	INSERT INTO payments.outbox (endpoint_id, event_type, payload, status_history_id)
	SELECT ep.id, 'payment.' || h.to_status, payments.transition_payload(h), h.id
	  FROM payments.status_history h
	 WHERE h.recorded_at >= from_time AND payments.event_type_matches(ep.event_types, 'payment.' || h.to_status)
	   AND NOT EXISTS (SELECT FROM payments.outbox o WHERE o.endpoint_id = ep.id AND o.status_history_id = h.id)
	 ORDER BY h.id;
	GET DIAGNOSTICS transitions = ROW_COUNT;
	-- stored events of the types it names, likewise
	IF ep.event_types IS NOT NULL THEN
		INSERT INTO payments.outbox (endpoint_id, event_type, payload)
		SELECT ep.id, payments.raw_event_type(ev), payments.raw_event_payload(ev)
		  FROM payments.events ev
		 WHERE ev.received_at >= from_time AND payments.event_type_matches(ep.event_types, payments.raw_event_type(ev))
		   AND NOT EXISTS (SELECT FROM payments.outbox o
							WHERE o.endpoint_id = ep.id AND o.event_type = payments.raw_event_type(ev)
							  AND o.payload -> 'data' ->> 'event_id' = ev.event_id)
		 ORDER BY ev.id;
		GET DIAGNOSTICS events = ROW_COUNT;
	END IF;
	RETURN requeued + transitions + events;
END
$$;
COMMENT ON FUNCTION payments.replay_outbox(text, timestamptz) IS
	'Sends an endpoint again what it missed since a time: its dead items, back in the queue with a fresh schedule, and the payment changes (and stored events of the types it names) it was never queued, made while it was disabled or before it was added (a payment as it now is), looked for from the endpoint''s pruned_before on only when since is earlier (with a notice: whether a change before the end of the items pruned was sent can no longer be told); sent when the endpoint is enabled; returns how many items';

CREATE FUNCTION payments.enqueue_event()
RETURNS trigger
AS 'MODULE_PATHNAME', 'enqueue_event'
LANGUAGE C
-- deferred to commit like payments.transition_committed, and for the same reason a definer
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION payments.enqueue_event() IS
	'Trigger: at commit, for an event received by the transaction, queues it for the enabled endpoints that name such types (payments.enqueue_raw_event)';

CREATE CONSTRAINT TRIGGER events_outbox
	AFTER INSERT ON payments.events
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION payments.enqueue_event();

-- whether any endpoint is enabled (and names event types) is kept in backend memory once read
-- (extension/endpoints.c); the health and breaker columns every delivery run updates are not,
-- and must not make every backend read its kept copies again
CREATE TRIGGER endpoints_forget AFTER INSERT OR DELETE ON payments.endpoints
	FOR EACH ROW EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.endpoints ENABLE ALWAYS TRIGGER endpoints_forget;
CREATE TRIGGER endpoints_update_forget AFTER UPDATE ON payments.endpoints
	FOR EACH ROW WHEN (OLD.enabled IS DISTINCT FROM NEW.enabled OR OLD.event_types IS DISTINCT FROM NEW.event_types)
	EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.endpoints ENABLE ALWAYS TRIGGER endpoints_update_forget;
CREATE TRIGGER endpoints_truncate_forget AFTER TRUNCATE ON payments.endpoints
	FOR EACH STATEMENT EXECUTE FUNCTION payments.forget_kept();
ALTER TABLE payments.endpoints ENABLE ALWAYS TRIGGER endpoints_truncate_forget;

CREATE FUNCTION payments.outbox_upload_pending(provider text, payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT provider IS NOT NULL AND payload ? 'upload' AND NOT (payload -> 'message' -> 'document' ? 'id')
$$;
COMMENT ON FUNCTION payments.outbox_upload_pending(text, jsonb) IS
	'Whether an outbox item is a WhatsApp document whose file is not uploaded yet (its next attempt is the upload)';

-- Meta answers HTTP 400 for its rate limits too (Cloud API error codes, "Throttling errors"):
-- 4 API Too Many Calls, 80007 (WhatsApp Business Account rate limit), 130429 (throughput of the
-- number), 131048 (spam rate limit), 131056 (pair rate: one business number to one user), 133016
-- (register/deregister rate).  Those are retried; any other 400 refuses the message itself.
CREATE FUNCTION payments.graph_throttled(response text)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	code	integer;
BEGIN
	BEGIN
		code := ((response::jsonb) -> 'error' ->> 'code')::integer;
	EXCEPTION WHEN data_exception THEN
		-- not JSON, or cut at the length kept (1 KB): the error's code, which Meta puts before its
		-- details, if it is there
		code := substring(response FROM '^[{][[:space:]]*"error"[[:space:]]*:[[:space:]]*[{][^{}]*"code"[[:space:]]*:[[:space:]]*([0-9]{1,9})[,}[:space:]]');
	END;
	RETURN CASE WHEN code IN (4, 80007, 130429, 131048, 131056, 133016) THEN code END;
END
$$;
COMMENT ON FUNCTION payments.graph_throttled(text) IS
	'The Graph API''s error code when an error answer is one of Meta''s rate limits (4, 80007, 130429, 131048, 131056, 133016), retried; NULL otherwise';

-- Whether a delivery run would send an outbox item now, in one place: the claim takes its items
-- here (locking them through the view), and the DBA's views count them here, so an alert on "due"
-- means something can be sent and is not.  A webhook goes to an enabled endpoint whose breaker is
-- closed; of an endpoint whose breaker is open or half open and has cooled down, one item only is
-- sent, its probe (the first due), and none while the probe is out (the claim keeps breaker_until
-- at least to the end of the probe's lease).  A WhatsApp message goes when its sender has
-- access_token and phone_number_id, and is the oldest pending message to its chat (messages sent
-- in parallel may reach the chat in any order): one in backoff holds back the later ones.  The
-- endpoint and sender conditions are uncorrelated subqueries, computed once per statement rather
-- than looked up per item (the claim reads every due item of a large backlog); only the chat
-- order is looked up per message, on outbox_recipient_idx
CREATE VIEW payments.outbox_sendable AS
	SELECT s.id, s.endpoint_id, s.provider, s.recipient, s.event_type, s.created_at, s.attempts,
		   s.next_attempt_at, s.last_status, s.last_error, s.probe
	  FROM (SELECT o.*,
				   o.id = ANY (ARRAY(
					   SELECT p.id FROM payments.endpoints c
						CROSS JOIN LATERAL (SELECT f.id FROM payments.outbox f
											 WHERE f.endpoint_id = c.id AND f.state = 'pending'
											   AND f.next_attempt_at <= pg_catalog.now()
											 ORDER BY f.next_attempt_at, f.id LIMIT 1) p
						WHERE c.enabled AND c.breaker_state <> 'closed' AND c.breaker_until <= pg_catalog.now())) AS probe
			  FROM payments.outbox o
			 WHERE o.state = 'pending' AND o.next_attempt_at <= pg_catalog.now()) s
	 WHERE CASE WHEN s.provider IS NULL
				THEN s.probe OR s.endpoint_id IN (SELECT e.id FROM payments.endpoints e
												   WHERE e.enabled AND e.breaker_state = 'closed')
				ELSE s.provider IN (SELECT v.name FROM payments.providers v
									 WHERE v.settings ? 'access_token' AND v.settings ? 'phone_number_id')
					 AND NOT EXISTS (SELECT FROM payments.outbox b
									  WHERE b.provider = s.provider AND b.recipient = s.recipient
										AND b.state = 'pending' AND b.id < s.id) END;
COMMENT ON VIEW payments.outbox_sendable IS
	'The outbox items a delivery run would send now, what payments.claim_outbox claims from (and outbox_backlog''s due and outbox_oldest_due count): due webhooks of enabled endpoints whose breaker is closed, and one probe (probe true: the first due item) of each enabled endpoint whose breaker is open or half open and cooled down; due WhatsApp messages of senders with access_token and phone_number_id that are the oldest pending message to their chat';

CREATE FUNCTION payments.claim_outbox(max_items integer, sends text DEFAULT 'all')
RETURNS TABLE (outbox_id bigint, attempt_id bigint, msg_id text, url text, secret text, body text,
			   headers text, ca_file text, connect_timeout_ms integer, timeout_ms integer,
			   max_response_bytes integer, upload_filename text, upload_type text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	ids		bigint[] := '{}';
	probe	bigint;
	probed	bigint[] := '{}';
	ep		bigint;
	lease	numeric;
	claimed_at timestamptz;
BEGIN
	-- what a run sends is payments.outbox_sendable's (the DBA's views count the same).  Endpoints
	-- whose breaker has cooled down get one probe each, their item there marked probe; they are
	-- locked in id order, the order record_delivery locks them in (a run recording results while
	-- this one claims deadlocked with it, the plan's order being a hash's); one locked by another
	-- transaction (a run recording its result, an admin's change) is probed by a later run, not
	-- waited for.  Only an endpoint given its probe is half open: one past max_items, or whose probe
	-- is locked, stays open and is probed by the next run, not a whole cool-down later
	FOR ep IN
		SELECT c.id FROM payments.endpoints c
		 WHERE sends <> 'chats' AND c.enabled AND c.breaker_state <> 'closed' AND c.breaker_until <= now()
		   AND EXISTS (SELECT FROM payments.outbox o WHERE o.endpoint_id = c.id
						  AND o.state = 'pending' AND o.next_attempt_at <= now())
		 ORDER BY c.id
		   FOR NO KEY UPDATE SKIP LOCKED
	LOOP
		EXIT WHEN cardinality(ids) >= max_items;
		SELECT s.id INTO probe FROM payments.outbox_sendable s
		 WHERE s.endpoint_id = ep AND s.probe FOR UPDATE OF s SKIP LOCKED;
		IF probe IS NOT NULL THEN
			UPDATE payments.endpoints e
			   SET breaker_state = 'half_open', breaker_until = now() + e.breaker_cooldown
			 WHERE e.id = ep;
			ids := ids || probe;
			probed := probed || ep;
		END IF;
	END LOOP;
	-- webhooks to closed endpoints, and WhatsApp messages of providers that can send, one at a
	-- time per recipient and in order (messages sent in parallel may reach the chat in any order);
	-- probes are the loop's only.  sends says which: 'all', 'webhooks' (the deliver job) or 'chats'
	-- (the chat job).  A run records its results when its slowest request is done, so the jobs
	-- keep them apart: a receiver that hung for its timeout held every donor's next message as long
	ids := ids || ARRAY(
		SELECT s.id FROM payments.outbox_sendable s
		 WHERE NOT s.probe AND s.id <> ALL (ids)
		   AND (sends = 'all' OR (sends = 'chats') = (s.provider IS NOT NULL))
		 ORDER BY s.next_attempt_at, s.id
		 LIMIT greatest(max_items - cardinality(ids), 0)
		   FOR UPDATE OF s SKIP LOCKED);

	-- attempts that never finished (crash, cancel) are closed as interrupted; an item that has had
	-- every attempt of the schedule, the last interrupted so (runs that failed or were cancelled
	-- while it was out), is given up as after as many failures: a run that always fails must not
	-- send it for ever
	WITH interrupted AS (
		UPDATE payments.outbox_attempts a SET finished_at = now(), error = 'interrupted: no result was recorded'
		 WHERE a.outbox_id = ANY (ids) AND a.finished_at IS NULL
		RETURNING a.outbox_id),
	given_up AS (
		UPDATE payments.outbox o SET state = 'dead', last_error = 'interrupted: no result was recorded'
		 WHERE o.id IN (SELECT i.outbox_id FROM interrupted i)
		   AND o.attempts > 0 AND payments.retry_delay(o.attempts) IS NULL
		RETURNING o.id)
	SELECT ARRAY(SELECT i FROM unnest(ids) AS i WHERE i NOT IN (SELECT g.id FROM given_up g)) INTO ids;

	-- the lease: if no result is recorded, the item is due again when it ends.  deliver_outbox
	-- records the results once every request of the batch is done, so each item's lease covers
	-- the slowest request claimed with it (a WhatsApp message leased for its own 30 s beside a slow
	-- endpoint fell due again while its result waited, and was sent twice)
	SELECT max(coalesce((e.connect_timeout_ms + e.timeout_ms) / 1000.0, 20)) + 10 INTO lease
	  FROM payments.outbox o LEFT JOIN payments.endpoints e ON e.id = o.endpoint_id
	 WHERE o.id = ANY (ids);
	-- the lease and the attempts start now, with the items locked, not when the transaction
	-- began: a claim that waited on a lock gave a lease shorter than the request, and a later run
	-- sent the item again while it was still out
	claimed_at := clock_timestamp();
	-- no second probe while one is out: half open at least until its lease ends
	UPDATE payments.endpoints e SET breaker_until = greatest(e.breaker_until, claimed_at + make_interval(secs => lease))
	 WHERE e.id = ANY (probed)
	   AND e.id IN (SELECT o.endpoint_id FROM payments.outbox o WHERE o.id = ANY (ids));
	RETURN QUERY
	WITH u AS (
		UPDATE payments.outbox o
		   SET attempts = o.attempts + 1,
			   next_attempt_at = claimed_at + make_interval(secs => lease)
		 WHERE o.id = ANY (ids)
		RETURNING o.id, o.attempts, o.endpoint_id, o.provider, o.payload, o.msg_id),
	a AS (
		INSERT INTO payments.outbox_attempts (outbox_id, endpoint_id, attempt, started_at)
		SELECT u.id, u.endpoint_id, u.attempts, claimed_at FROM u
		RETURNING id, outbox_id)
	-- a WhatsApp message goes to the Graph API of its provider with its access token (DESIGN.md 3);
	-- a document's file is uploaded first (multipart), then its message names the media id
	SELECT u.id, a.id, u.msg_id,
		   coalesce(e.url, payments.api_base('meta', v.settings) || '/' || (v.settings ->> 'phone_number_id')
						   || CASE WHEN d.upload THEN '/media' ELSE '/messages' END),
		   e.secret,
		   CASE WHEN d.upload THEN coalesce(u.payload -> 'upload' ->> 'content', '')
				ELSE coalesce(u.payload -> 'message', u.payload)::text END,
		   CASE WHEN u.provider IS NOT NULL THEN 'Authorization: Bearer ' || (v.settings ->> 'access_token') END,
		   e.ca_file, coalesce(e.connect_timeout_ms, 5000), coalesce(e.timeout_ms, 15000),
		   coalesce(e.max_response_bytes, 65536),
		   CASE WHEN d.upload THEN u.payload -> 'upload' ->> 'filename' END,
		   CASE WHEN d.upload THEN u.payload -> 'upload' ->> 'type' END
	  FROM u JOIN a ON a.outbox_id = u.id
	  CROSS JOIN LATERAL payments.outbox_upload_pending(u.provider, u.payload) AS d (upload)
	  LEFT JOIN payments.endpoints e ON e.id = u.endpoint_id
	  LEFT JOIN payments.providers v ON v.name = u.provider
	 ORDER BY u.endpoint_id NULLS LAST, u.id;
END
$$;
COMMENT ON FUNCTION payments.claim_outbox(integer, text) IS
	'Claims the outbox items a run sends now, those of payments.outbox_sendable (SKIP LOCKED; one probe per endpoint whose breaker cooled down, which is half open only once given it; webhooks and WhatsApp messages, or only those of them that sends names; WhatsApp messages of providers with access_token and phone_number_id, the oldest pending one of each recipient only, so a chat gets its messages in order), records an attempt for each and leases them (an item whose attempts are used up, the last interrupted, is dead instead); returned in endpoint order, the order deliver_outbox records them in, so that two runs lock endpoints in the same order; a WhatsApp document not yet uploaded is claimed as its upload (upload_filename, upload_type: a multipart POST of the body to /media); used by deliver_outbox, which commits before sending';

CREATE FUNCTION payments.record_delivery(attempt_id bigint, http_status integer, retry_after integer,
										 error text, duration_ms integer, response_bytes bigint,
										 response text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	att		payments.outbox_attempts;
	item	payments.outbox;
	ep		payments.endpoints;
	next_at	timestamptz;
	msg		text;
	upload	boolean;
	media	text;
	throttled integer;
	asked_until timestamptz;	-- a Retry-After's end
	-- the moment of the answer (set below): the transaction began before the request was sent,
	-- and the results of a batch are recorded once its slowest request is done (a slow
	-- receiver's Retry-After and the breaker's cooldown count from when it answered; what is
	-- due at once is due from now())
	answered timestamptz;
BEGIN
	SELECT a.* INTO att FROM payments.outbox_attempts a WHERE a.id = record_delivery.attempt_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown delivery attempt %', attempt_id USING ERRCODE = 'undefined_object';
	END IF;
	answered := least(att.started_at + make_interval(secs => greatest(coalesce(duration_ms, 0), 0) / 1000.0),
					  clock_timestamp());
	SELECT o.* INTO item FROM payments.outbox o WHERE o.id = att.outbox_id FOR UPDATE;
	-- FOR NO KEY UPDATE, as the updates below: the foreign key checks of new outbox rows (FOR KEY
	-- SHARE) need not wait for it
	SELECT e.* INTO ep FROM payments.endpoints e WHERE e.id = att.endpoint_id FOR NO KEY UPDATE;
	-- the attempt was a document's upload if the item still waits for its media id (only the
	-- result of the attempt holding the lease changes that)
	upload := payments.outbox_upload_pending(item.provider, item.payload);
	IF upload AND http_status BETWEEN 200 AND 299 THEN
		BEGIN
			media := (response::jsonb) ->> 'id';
		EXCEPTION WHEN data_exception THEN
			-- not JSON, or JSON that jsonb cannot hold (\u0000)
			media := NULL;
		END;
		IF length(media) NOT BETWEEN 1 AND 255 THEN
			media := NULL;
		END IF;
	END IF;
	IF item.provider IS NOT NULL AND http_status = 400 THEN
		throttled := payments.graph_throttled(response);
	END IF;
	msg := coalesce(error, CASE WHEN throttled IS NOT NULL
								THEN 'HTTP 400: rate limit of the Cloud API (error ' || throttled || ')'
								WHEN http_status IS NOT NULL AND http_status NOT BETWEEN 200 AND 299
								THEN 'HTTP ' || http_status
								WHEN upload AND http_status IS NOT NULL AND media IS NULL
								THEN 'HTTP ' || http_status || ': no media id in the answer to the upload' END);
	UPDATE payments.outbox_attempts a
	   SET finished_at = answered, http_status = record_delivery.http_status,
		   retry_after = record_delivery.retry_after, duration_ms = record_delivery.duration_ms,
		   response_bytes = record_delivery.response_bytes, response = record_delivery.response,
		   error = msg
	 WHERE a.id = att.id;
	IF att.finished_at IS NOT NULL OR item.state <> 'pending' THEN
		RETURN 'stale';				-- closed as interrupted meanwhile, or delivered by another attempt
	END IF;

	IF upload AND media IS NOT NULL THEN
		-- uploaded: the document message naming the media id is sent next, at once
		UPDATE payments.outbox o SET payload = jsonb_set(o.payload, '{message,document,id}', to_jsonb(media)),
			   next_attempt_at = now(), last_status = http_status, last_error = NULL
		 WHERE o.id = item.id;
		RETURN 'uploaded';
	END IF;

	IF http_status BETWEEN 200 AND 299 AND NOT upload THEN
		UPDATE payments.outbox o SET state = 'delivered', delivered_at = answered, next_attempt_at = now(),
			   last_status = http_status, last_error = NULL
		 WHERE o.id = item.id;
		IF item.provider IS NOT NULL THEN
			PERFORM payments.chat_message_sent(item.id, response);
		END IF;
		-- (an item of the batch answered after another item's Retry-After does not end the hold the
		-- receiver asked for: the breaker stays open until then, and a probe after it closes it; one
		-- the failures alone opened closes, the receiver answering again)
		UPDATE payments.endpoints e
		   SET breaker_state = CASE WHEN e.hold_until > answered THEN 'open' ELSE 'closed' END,
			   -- (until the hold only: the cool-down of failures before is over, the receiver answering;
			   -- a probe out keeps its lease, so that no second one goes meanwhile)
			   breaker_until = CASE WHEN e.hold_until > answered
									THEN CASE WHEN e.breaker_state = 'half_open' THEN greatest(e.breaker_until, e.hold_until)
											  ELSE e.hold_until END END,
			   hold_until = CASE WHEN e.hold_until > answered THEN e.hold_until END,
			   consecutive_failures = 0, last_status = http_status, last_error = NULL, last_success_at = answered
		 WHERE e.id = ep.id;
		RETURN 'delivered';
	END IF;

	IF item.provider IS NOT NULL AND http_status = 400 AND throttled IS NULL THEN
		-- the Graph API refuses the message (or the document's file) itself (recipient, content):
		-- sending it again cannot help
		UPDATE payments.outbox o SET state = 'dead', last_status = http_status, last_error = msg
		 WHERE o.id = item.id;
		RETURN 'dead';
	END IF;

	IF http_status = 410 AND item.endpoint_id IS NOT NULL THEN
		-- the receiver is gone: stop sending there; its items wait (pending) until it is enabled again
		UPDATE payments.outbox o SET next_attempt_at = now(), last_status = 410,
			   last_error = 'endpoint disabled: 410 Gone'
		 WHERE o.id = item.id;
		UPDATE payments.endpoints e SET enabled = false, disabled_reason = '410 Gone at ' || answered,
			   last_status = 410, last_error = msg, last_failure_at = answered, updated_at = answered
		 WHERE e.id = ep.id;
		RETURN 'disabled';
	END IF;

	-- counted from the answer: next_attempt_at counts from the clock, which is later by the time
	-- the batch's other requests took and the recording since
	next_at := payments.next_attempt_at(item.attempts, make_interval(secs => retry_after)) + (answered - clock_timestamp());
	UPDATE payments.outbox o
	   SET state = CASE WHEN next_at IS NULL THEN 'dead' ELSE 'pending' END,
		   next_attempt_at = coalesce(next_at, now()), last_status = http_status, last_error = msg
	 WHERE o.id = item.id;
	-- a receiver's Retry-After holds the endpoint, not only this item: its breaker opens until
	-- then (the cool-down's probe at the latest of the two), so its other items wait too, as the
	-- receiver asked (Standard Webhooks: throttle on 429), rather than each being refused in turn
	asked_until := CASE WHEN retry_after > 0
					   THEN answered + least(make_interval(secs => retry_after), interval '24 hours') END;
	UPDATE payments.endpoints e
	   SET consecutive_failures = e.consecutive_failures + 1,
		   breaker_state = CASE WHEN e.breaker_state = 'half_open'
									 OR e.consecutive_failures + 1 >= e.breaker_threshold
									 OR asked_until IS NOT NULL
								THEN 'open' ELSE e.breaker_state END,
		   breaker_until = CASE WHEN e.breaker_state = 'half_open'
									 OR e.consecutive_failures + 1 >= e.breaker_threshold
								THEN greatest(answered + e.breaker_cooldown, asked_until,
											  CASE WHEN e.breaker_state = 'open' THEN e.breaker_until END)
								WHEN asked_until IS NOT NULL
								THEN greatest(asked_until, CASE WHEN e.breaker_state = 'open' THEN e.breaker_until END)
								ELSE e.breaker_until END,
		   hold_until = greatest(e.hold_until, asked_until),
		   last_status = http_status, last_error = msg, last_failure_at = answered
	 WHERE e.id = ep.id;
	RETURN CASE WHEN next_at IS NULL THEN 'dead' ELSE 'retry' END;
END
$$;
COMMENT ON FUNCTION payments.record_delivery(bigint, integer, integer, text, integer, bigint, text) IS
	'Records the result of a delivery attempt: 2xx delivered (breaker closes; a WhatsApp message keeps its wamid); a WhatsApp document''s upload answered 2xx with a media id keeps it and the message is due at once (2xx without one is retried); 410 disables the endpoint; 400 for a WhatsApp message or upload is final unless it is one of Meta''s rate limits (payments.graph_throttled); anything else is retried on the schedule, honouring Retry-After, and counts towards the endpoint''s breaker (a Retry-After opens it until then: the endpoint''s other items wait too); used by deliver_outbox';

CREATE PROCEDURE payments.deliver_outbox(max_items integer DEFAULT 100, sends text DEFAULT 'all')
AS 'MODULE_PATHNAME', 'deliver_outbox'
LANGUAGE C;
COMMENT ON PROCEDURE payments.deliver_outbox(integer, text) IS
	'Sends due outbox items (sends: all, webhooks as the deliver job does, or chats, WhatsApp messages, as the chat job does) as signed JSON POSTs, a batch in parallel, in UTF-8: claims and records the attempts, commits, sends (libcurl), records the results and commits; CALL it outside a transaction block';

CREATE FUNCTION payments.sign_webhook(msg_id text, msg_timestamp bigint, body text, secret text)
RETURNS text
AS 'MODULE_PATHNAME', 'sign_webhook'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.sign_webhook(text, bigint, text, text) IS
	'The webhook-signature value (v1,base64 HMAC-SHA256 over "id.timestamp.body") that deliveries carry, for checking a receiver';

--------------------------------------------------------------------------------------------------
-- What a DBA watches
--------------------------------------------------------------------------------------------------

-- "due" counts what a delivery run would send now (payments.outbox_sendable, what the claim takes):
-- nothing of a disabled endpoint, or of one whose breaker is open and not yet cooled down or whose
-- probe is out, one probe of one cooled down, nor a WhatsApp message whose sender lacks its
-- settings or that waits for an earlier one to its chat (an alert on them must mean something can
-- be sent and is not)
CREATE VIEW payments.outbox_backlog AS
	SELECT e.name AS endpoint, e.enabled, e.breaker_state,
		   count(*) FILTER (WHERE o.state = 'pending') AS pending,
		   count(s.id) AS due,
		   count(*) FILTER (WHERE o.state = 'dead') AS dead,
		   count(*) FILTER (WHERE o.state = 'delivered') AS delivered,
		   min(o.created_at) FILTER (WHERE o.state = 'pending') AS oldest_pending_at,
		   now() - min(o.created_at) FILTER (WHERE o.state = 'pending') AS oldest_pending_age
	  FROM payments.endpoints e LEFT JOIN payments.outbox o ON o.endpoint_id = e.id
	  LEFT JOIN payments.outbox_sendable s ON s.id = o.id
	 GROUP BY e.id, e.name, e.enabled, e.breaker_state
	UNION ALL
	SELECT 'whatsapp:' || o.provider, true, 'closed',
		   count(*) FILTER (WHERE o.state = 'pending'),
		   count(s.id),
		   count(*) FILTER (WHERE o.state = 'dead'),
		   count(*) FILTER (WHERE o.state = 'delivered'),
		   min(o.created_at) FILTER (WHERE o.state = 'pending'),
		   now() - min(o.created_at) FILTER (WHERE o.state = 'pending')
	  FROM payments.outbox o LEFT JOIN payments.outbox_sendable s ON s.id = o.id
	 WHERE o.provider IS NOT NULL
	 GROUP BY o.provider;
COMMENT ON VIEW payments.outbox_backlog IS
	'Per endpoint (and per WhatsApp sender, as whatsapp:<provider>): items pending, due (what a delivery run would send now: payments.outbox_sendable; one probe of an endpoint whose breaker cooled down, none while it is out; a chat''s oldest pending message only), dead and delivered, and the age of the oldest pending one';

CREATE VIEW payments.outbox_oldest_due AS
	SELECT s.id, coalesce(e.name, 'whatsapp:' || s.provider) AS endpoint, s.event_type, s.created_at,
		   now() - s.created_at AS age, s.attempts, s.next_attempt_at, s.last_status, s.last_error
	  FROM payments.outbox_sendable s LEFT JOIN payments.endpoints e ON e.id = s.endpoint_id
	 ORDER BY s.next_attempt_at, s.id
	 LIMIT 1;
COMMENT ON VIEW payments.outbox_oldest_due IS
	'The outbox item a delivery run would send now (payments.outbox_sendable) that has waited longest past its due time (none of a disabled endpoint, of one whose breaker has not cooled down or whose probe is out, of a WhatsApp sender without its settings, nor a message waiting for an earlier one to its chat)';

CREATE VIEW payments.endpoint_health AS
	SELECT e.name, e.url, e.enabled, e.disabled_reason, e.breaker_state, e.breaker_until, e.hold_until,
		   e.consecutive_failures, e.last_status, e.last_error, e.last_success_at, e.last_failure_at,
		   (SELECT count(*) FROM payments.outbox_attempts a
			 WHERE a.endpoint_id = e.id AND a.started_at > now() - interval '1 hour') AS attempts_1h,
		   (SELECT count(*) FROM payments.outbox_attempts a
			 WHERE a.endpoint_id = e.id AND a.started_at > now() - interval '1 hour'
			   AND a.http_status BETWEEN 200 AND 299) AS delivered_1h
	  FROM payments.endpoints e;
COMMENT ON VIEW payments.endpoint_health IS
	'Each endpoint: enabled or why not, circuit breaker (hold_until: a receiver''s Retry-After), consecutive failures, last result, attempts and successes in the last hour';

CREATE VIEW payments.event_backlog AS
	SELECT e.provider,
		   count(*) FILTER (WHERE e.state = 'pending') AS pending,
		   count(*) FILTER (WHERE e.state = 'pending' AND e.next_attempt_at <= now()) AS due,
		   count(*) FILTER (WHERE e.state = 'dead') AS dead,
		   min(e.received_at) FILTER (WHERE e.state = 'pending') AS oldest_pending_at
	  FROM payments.events e
	 WHERE e.state IN ('pending', 'dead')
	 GROUP BY e.provider;
COMMENT ON VIEW payments.event_backlog IS 'Per provider: stored events still pending, due for a retry, and dead';

--------------------------------------------------------------------------------------------------
-- pg_cron jobs, run_job's guarded by an advisory lock
--------------------------------------------------------------------------------------------------

CREATE FUNCTION payments.job_lock_key(job text)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE job WHEN 'retry' THEN 1 WHEN 'deliver' THEN 2 WHEN 'reconcile' THEN 4 WHEN 'chat' THEN 5 END
$$;
COMMENT ON FUNCTION payments.job_lock_key(text) IS
	'The second key of a run_job job''s advisory lock; the first is 1885436269 (''paym''); the housekeeping and prune jobs take none (their deletes may overlap, and a lock anyone may take would stop them)';

-- statement_timeout counts from the start of a pg_cron job's command: the chat job's passes restart
-- it, so that a database-wide timeout of a few seconds applies to each pass rather than cancelling
-- the job part-way through its minute (extension/statement_timeout.c)
CREATE FUNCTION payments.restart_statement_timeout()
RETURNS void
AS 'MODULE_PATHNAME', 'restart_statement_timeout'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION payments.restart_statement_timeout() IS
	'Counts statement_timeout again from now (with its current value), as at the start of a statement, when a timeout is running: each pass of the chat job gets the whole timeout';
REVOKE ALL ON FUNCTION payments.restart_statement_timeout() FROM PUBLIC;

-- the deliver and reconcile jobs are one statement each, whose requests wait for receivers and
-- providers: a database-wide statement_timeout below a receiver's response time cancelled every
-- run before the answer (the item sent again each minute, then dead, no failure recorded).  run_job
-- turns this on: the waits are bounded by the requests' own timeouts and the leases
-- (extension/statement_timeout.c)
CREATE FUNCTION payments.untimed_network_waits("on" boolean)
RETURNS void
AS 'MODULE_PATHNAME', 'untimed_network_waits'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION payments.untimed_network_waits(boolean) IS
	'While on (until turned off, or the transaction or subtransaction that turned it on aborts), statement_timeout does not count the network waits of deliver_outbox, reconcile and initiate_payments in this session, and counts again, whole, from the end of each wait; run_job turns it on for its run';
REVOKE ALL ON FUNCTION payments.untimed_network_waits(boolean) FROM PUBLIC;

-- No SET clause: a procedure that commits cannot have one.  Every function and relation name is
-- qualified; operators and types are found in pg_catalog, searched first unless the job owner's
-- search_path names it later.
CREATE PROCEDURE payments.run_job(job text, max_items integer DEFAULT 100)
LANGUAGE plpgsql
AS $$
DECLARE
	lock_key integer := payments.job_lock_key(job);
	started	timestamptz := pg_catalog.clock_timestamp();
	last_attempt bigint;
	caller_path text := pg_catalog.current_setting('search_path');
	holder	integer;
	holder_role oid;
	locked	boolean;
BEGIN
	-- a procedure that commits can have no SET clause: the path is pinned here, for this
	-- transaction, and again after each COMMIT below and each CALL (the procedures commit).  A job runs as a superuser, and under the
	-- caller's path an operator of another schema could be chosen over pg_catalog's (oid =
	-- integer has no exact one there): whoever may create in public would run code as the job
	PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	-- READ COMMITTED, whatever the database's or role's default_transaction_isolation (pg_cron's
	-- jobs inherit it): receipt numbers are taken at commit by an UPDATE of the day's counter row,
	-- which under snapshot isolation fails whenever another transaction paid that day since the
	-- snapshot, rolling the run back, its records of failed attempts too.  The transaction the CALL
	-- began has done nothing yet; every later COMMIT chains, as the procedures' own commits do
	-- (SPI_commit_and_chain), keeping the level.  (Inside a transaction block this COMMIT fails.)
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		COMMIT;
		SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	END IF;
	IF lock_key IS NULL THEN
		RAISE EXCEPTION 'unknown job "%"', job
			USING ERRCODE = 'invalid_parameter_value', HINT = 'Jobs: retry, deliver, reconcile, chat.';
	END IF;
	-- runs in one session follow one another: a lock this session holds was left by one of its runs
	-- that failed (a CALL by hand stopped by statement_timeout), and is let go
	WHILE EXISTS (SELECT FROM pg_catalog.pg_locks l
				   WHERE l.locktype = 'advisory' AND l.pid = pg_catalog.pg_backend_pid() AND l.granted
					 AND l.classid = 1885436269::oid AND l.objid = lock_key::oid AND l.objsubid = 2::int2) LOOP
		PERFORM pg_catalog.pg_advisory_unlock(1885436269, lock_key);
	END LOOP;
	-- a session lock, released below; if the run fails, when the job's session ends or the session
	-- runs the job again
	locked := pg_catalog.pg_try_advisory_lock(1885436269, lock_key);
	IF NOT locked THEN
		SELECT l.pid, a.usesysid INTO holder, holder_role
		  FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		 WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 1885436269::oid
		   AND l.objid = lock_key::oid AND l.objsubid = 2::int2
		   -- advisory locks are per database: the same key held in another one is not this job's
		   AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
		 ORDER BY l.pid LIMIT 1;
		-- anyone may take an advisory lock: one held by a role that cannot run the jobs, or by a
		-- prepared transaction (no backend: a run's lock is its session's), is no run, and would
		-- stop them all.  Runs may overlap (each claims its own work: SKIP LOCKED, leases); the
		-- lock only spares a second run the wait
		IF holder_role IS NULL
		   OR NOT pg_catalog.has_function_privilege(holder_role, 'payments.run_job(text, integer)', 'EXECUTE') THEN
			RAISE WARNING 'payments job %: its lock is held by %, which cannot run it: running all the same', job,
				coalesce('backend ' || holder, 'a prepared transaction');
		ELSE
			RAISE NOTICE 'payments job % skipped: the previous run is still going (backend %)', job, holder;
			PERFORM pg_catalog.set_config('search_path', caller_path, true);
			RETURN;
		END IF;
	END IF;
	-- a database's statement_timeout (pg_cron's sessions take it) holds the jobs' statements, not
	-- their waits for receivers and providers, which their own timeouts bound
	PERFORM payments.untimed_network_waits(true);
	-- pg_cron starts a job once a minute: one batch a run fell behind for good past max_items a
	-- minute (100: 1.7 webhooks a second), and took a minute per batch to catch up after an outage.
	-- The retry and deliver jobs go on, committing between batches (chained: the transaction
	-- characteristics the run set are kept), while a batch came back full, for up to about 50 s;
	-- each batch is held to statement_timeout as a statement of its own
	IF job = 'retry' THEN
		LOOP
			PERFORM payments.restart_statement_timeout();
			EXIT WHEN (SELECT pg_catalog.count(*) FROM payments.retry_events(max_items)) < max_items
				OR pg_catalog.clock_timestamp() > started + interval '50 seconds';
			COMMIT AND CHAIN;
			PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		END LOOP;
	ELSIF job = 'deliver' THEN
		LOOP
			PERFORM payments.restart_statement_timeout();
			last_attempt := (SELECT pg_catalog.max(a.id) FROM payments.outbox_attempts a);
			-- at most deliver_outbox's own limit (200) a batch, as reconcile and chat are held to theirs
			CALL payments.deliver_outbox(least(max_items, 200), 'webhooks');
			PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
			-- full: as many webhooks tried as the batch may claim (a run by hand at the same time
			-- adds its own, and costs one more batch, which finds what is left)
			EXIT WHEN (SELECT pg_catalog.count(*) FROM payments.outbox_attempts a
						WHERE a.id > coalesce(last_attempt, 0) AND a.endpoint_id IS NOT NULL) < least(max_items, 200)
				OR pg_catalog.clock_timestamp() > started + interval '50 seconds';
			COMMIT AND CHAIN;
			PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		END LOOP;
	ELSIF job = 'reconcile' THEN
		CALL payments.reconcile(least(max_items, 200));
		PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
	ELSIF job = 'chat' THEN
		-- pg_cron starts jobs once a minute; a donor waits for answers and payment prompts in
		-- seconds, so while a WhatsApp number is set up the job keeps going for 55 s, once a second
		-- (a chat's messages go one per run, in order: a run that sent something is followed at once)
		LOOP
			-- each pass is held to statement_timeout as a statement of its own would be
			PERFORM payments.restart_statement_timeout();
			last_attempt := (SELECT pg_catalog.max(a.id) FROM payments.outbox_attempts a);
			CALL payments.initiate_payments(least(max_items, 50));
			PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
			CALL payments.deliver_outbox(least(max_items, 200), 'chats');
			PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
			EXIT WHEN pg_catalog.clock_timestamp() > started + interval '54 seconds'
				OR NOT EXISTS (SELECT FROM payments.providers v
								WHERE v.kind = 'meta' AND v.settings ? 'access_token');
			IF (SELECT pg_catalog.max(a.id) FROM payments.outbox_attempts a) IS NOT DISTINCT FROM last_attempt THEN
				PERFORM pg_catalog.pg_sleep(1);
			END IF;
			COMMIT AND CHAIN;
			PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
		END LOOP;
	END IF;
	PERFORM payments.untimed_network_waits(false);
	IF locked THEN
		PERFORM pg_catalog.pg_advisory_unlock(1885436269, lock_key);
	END IF;
	-- a CALL inside the caller's transaction block leaves its path as it was
	PERFORM pg_catalog.set_config('search_path', caller_path, true);
END
$$;
COMMENT ON PROCEDURE payments.run_job(text, integer) IS
	'Runs one background job (retry, deliver, reconcile, chat: Paynow initiations and outbox deliveries once a second for 55 s while a WhatsApp number is set up) unless a previous run of it still holds its advisory lock (one held by a role that cannot run it is ignored, with a warning); at READ COMMITTED whatever the default isolation level (outside a transaction block); what pg_cron calls';

-- The time before which a prune deletes: now() - older_than, for an interval of zero or more
CREATE FUNCTION payments.retention_cutoff(older_than interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF older_than IS NULL OR pg_catalog.now() - older_than > pg_catalog.now() THEN
		RAISE EXCEPTION 'older_than must be an interval of zero or more, not %', coalesce(older_than::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN pg_catalog.now() - older_than;
END
$$;
COMMENT ON FUNCTION payments.retention_cutoff(interval) IS
	'The time before which payments.prune_rejections and payments.prune_outbox delete: now() - older_than; an error for NULL or a negative interval';
REVOKE ALL ON FUNCTION payments.retention_cutoff(interval) FROM PUBLIC;

CREATE FUNCTION payments.prune_rejections(older_than interval DEFAULT '90 days')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff	timestamptz := payments.retention_cutoff(older_than);
	pruned	bigint;
BEGIN
	-- a PayPal delivery whose signature verified but whose body is no usable event is kept: its
	-- transmission id must never verify another body of the same CRC-32 (kind_paypal.c), and
	-- PayPal's signature has no time limit
	DELETE FROM payments.rejections r
	 WHERE r.received_at < cutoff
	   AND NOT (r.outcome = 'invalid' AND r.headers ? 'paypal-transmission-id'
				AND EXISTS (SELECT FROM payments.providers p WHERE p.name = r.provider AND p.kind = 'paypal'));
	GET DIAGNOSTICS pruned = ROW_COUNT;
	RETURN pruned;
END
$$;
COMMENT ON FUNCTION payments.prune_rejections(interval) IS
	'Deletes the refused deliveries received longer ago than older_than (anyone may send them: kept for investigation, not for ever), except PayPal deliveries whose signature verified (their transmission ids stay spent); returns how many; the pg_cron job payments-prune runs it daily';

-- Delivered and dead outbox items are kept after they finish, with their attempts, to show what
-- was sent (and for replay_outbox), but not for ever.  An item is finished when it was delivered
-- (delivered_at) or given up (dead: its last attempt); it is pruned once everything it has, its
-- creation, delivery and every attempt's start and end, is older than the cutoff: a pending item
-- is in flight however old it is, and a dead one requeued by replay_outbox and dead again counts
-- from its new attempts.  Nothing else needs the rows: the backlog views, the on-call summary and
-- the breaker count pending and dead items or the last hour's attempts; Meta's statuses of a
-- pruned message are still kept in payments.whatsapp_statuses; what analysts query (events,
-- status_history, receipts) is not touched.  Only replay_outbox read an item's absence as "never
-- queued": each endpoint that loses items gets, as its pruned_before, a moment just past the
-- latest end of those items (see there)
CREATE FUNCTION payments.prune_outbox(older_than interval DEFAULT '90 days')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff	timestamptz := payments.retention_cutoff(older_than);
	locked	bigint[];
	pruned	bigint;
BEGIN
	-- the endpoints first, in id order, as replay_outbox locks its endpoint before its items: an
	-- item locked here before its endpoint could deadlock with a replay requeuing it
	SELECT pg_catalog.array_agg(e.id ORDER BY e.id) INTO locked
	  FROM (SELECT e.id FROM payments.endpoints e
			 WHERE EXISTS (SELECT FROM payments.outbox o
							WHERE o.endpoint_id = e.id AND o.state IN ('delivered', 'dead')
							  AND greatest(o.created_at, o.delivered_at) < cutoff)
			 ORDER BY e.id FOR NO KEY UPDATE) AS e;
	WITH gone AS (
		DELETE FROM payments.outbox o
		 WHERE o.state IN ('delivered', 'dead')
		   AND (o.endpoint_id IS NULL OR o.endpoint_id = ANY (locked))
		   AND greatest(o.created_at, o.delivered_at) < cutoff
		   AND NOT EXISTS (SELECT FROM payments.outbox_attempts a
							WHERE a.outbox_id = o.id
							  AND greatest(a.started_at, a.finished_at) >= cutoff)
		RETURNING o.endpoint_id,
				  greatest(o.created_at, o.delivered_at,
						   (SELECT pg_catalog.max(greatest(a.started_at, a.finished_at))
							  FROM payments.outbox_attempts a WHERE a.outbox_id = o.id)) AS ended),
	marked AS (
		UPDATE payments.endpoints e SET pruned_before = greatest(e.pruned_before, g.ended + interval '1 microsecond')
		  FROM (SELECT g.endpoint_id, pg_catalog.max(g.ended) AS ended FROM gone g
				 WHERE g.endpoint_id IS NOT NULL GROUP BY g.endpoint_id) g
		 WHERE e.id = g.endpoint_id
		RETURNING e.id)
	SELECT pg_catalog.count(*) INTO pruned FROM gone;
	RETURN pruned;
END
$$;
COMMENT ON FUNCTION payments.prune_outbox(interval) IS
	'Deletes the outbox items (webhooks and WhatsApp messages) that finished, delivered or dead, longer ago than older_than (every attempt older too; pending items never), with their attempts; each endpoint that lost items gets as its pruned_before a moment just past the latest end (delivery, last attempt) of those items, before which replay_outbox no longer looks for changes never queued; returns how many; the pg_cron job payments-prune runs it daily';

CREATE FUNCTION payments.cron_jobs(retry_schedule text DEFAULT '* * * * *',
								   deliver_schedule text DEFAULT '* * * * *',
								   housekeeping_schedule text DEFAULT '17 3 * * *',
								   keep_run_details interval DEFAULT '7 days',
								   reconcile_schedule text DEFAULT '* * * * *',
								   keep_rejections interval DEFAULT '90 days',
								   keep_outbox interval DEFAULT '90 days')
RETURNS TABLE (jobname text, schedule text, command text, database text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT j.name || '@' || current_database(), j.schedule,
		   -- run as a superuser, a job calls payments only while the extension is there: a schema
		   -- of that name made after DROP EXTENSION (or in a new database of the same name) is
		   -- anyone's, and the jobs outlive both
		   CASE WHEN j.name <> 'payments-housekeeping' THEN
				'DO $job$ BEGIN IF EXISTS (SELECT FROM pg_catalog.pg_extension e'
				' JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace'
				' WHERE e.extname = ''payments'' AND n.nspname = ''payments'') THEN '
				|| j.command || '; END IF; END $job$'
				ELSE j.command END,
		   j.database
	  FROM (VALUES
		('payments-retry', retry_schedule, 'CALL payments.run_job(''retry'')', current_database()),
		('payments-deliver', deliver_schedule, 'CALL payments.run_job(''deliver'')', current_database()),
		('payments-reconcile', reconcile_schedule, 'CALL payments.run_job(''reconcile'', 50)', current_database()),
		('payments-chat', deliver_schedule, 'CALL payments.run_job(''chat'')', current_database()),
		-- the run details of this database's jobs only (and of this housekeeping job, which runs
		-- in pg_cron's): another database's keep_run_details is its own
		('payments-housekeeping', CASE WHEN keep_run_details IS NOT NULL THEN housekeeping_schedule END,
		 format('DELETE FROM cron.job_run_details d WHERE d.end_time < now() - %L::interval'
				' AND (d.database = %L OR d.jobid IN (SELECT j.jobid FROM cron.job j WHERE j.jobname = %L))',
				keep_run_details, current_database(), 'payments-housekeeping@' || current_database()),
		 coalesce(current_setting('cron.database_name', true), 'postgres')),
		('payments-prune', CASE WHEN keep_rejections IS NOT NULL OR keep_outbox IS NOT NULL THEN housekeeping_schedule END,
		 format('PERFORM %s',
				concat_ws(', ', CASE WHEN keep_rejections IS NOT NULL
									 THEN format('payments.prune_rejections(%L)', keep_rejections) END,
						  CASE WHEN keep_outbox IS NOT NULL THEN format('payments.prune_outbox(%L)', keep_outbox) END)),
		 current_database())
	  ) AS j (name, schedule, command, database)
	 WHERE j.schedule IS NOT NULL
$$;
COMMENT ON FUNCTION payments.cron_jobs(text, text, text, interval, text, interval, interval) IS
	'The pg_cron jobs of this database: name, schedule, command and the database it runs in (housekeeping of the cron.job_run_details of the jobs that run in this database runs in pg_cron''s own; rejections older than keep_rejections and outbox items finished longer ago than keep_outbox are pruned on the housekeeping schedule, each never when it is NULL: no prune job when both are)';

-- The jobs name their database (payments-retry@shop) and connect to it by name: those of a
-- database renamed or dropped since fail every minute, and the renamed one's tools look for jobs
-- of its new name.  Removed by schedule_jobs and unschedule_jobs, in pg_cron's database.  Only
-- the names cron_jobs gives, before the @: a DBA's own job named payments-export@nightly is theirs
CREATE FUNCTION payments.unschedule_orphan_jobs()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n	bigint;
BEGIN
	EXECUTE 'SELECT count(cron.unschedule(j.jobid)) FROM cron.job j'
			' WHERE substring(j.jobname FROM ''^([^@]*)@'')'
			'		IN (SELECT substring(c.jobname FROM ''^([^@]*)@'') FROM payments.cron_jobs() c)'
			'   AND substring(j.jobname FROM ''@(.*)$'') NOT IN (SELECT d.datname FROM pg_catalog.pg_database d)'
	   INTO n;
	IF n > 0 THEN
		RAISE NOTICE 'removed % pg_cron jobs of databases that no longer exist (renamed or dropped)', n;
	END IF;
	RETURN n;
END
$$;
COMMENT ON FUNCTION payments.unschedule_orphan_jobs() IS
	'Removes the payments pg_cron jobs (payments-retry, -deliver, -reconcile, -chat, -housekeeping and -prune, each followed by @ and a database name: no other job) named after a database that no longer exists (renamed or dropped: they fail every minute); returns how many; called by schedule_jobs and unschedule_jobs';

CREATE FUNCTION payments.schedule_jobs(retry_schedule text DEFAULT '* * * * *',
									   deliver_schedule text DEFAULT '* * * * *',
									   housekeeping_schedule text DEFAULT '17 3 * * *',
									   keep_run_details interval DEFAULT '7 days',
									   reconcile_schedule text DEFAULT '* * * * *',
									   keep_rejections interval DEFAULT '90 days',
									   keep_outbox interval DEFAULT '90 days')
RETURNS TABLE (jobid bigint, jobname text, schedule text, database text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cron_db	text := current_setting('cron.database_name', true);
	j		record;
	stmts	text;
BEGIN
	IF now() - keep_rejections > now() THEN
		RAISE EXCEPTION 'keep_rejections must be an interval of zero or more, or NULL to keep them for ever'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF now() - keep_outbox > now() THEN
		RAISE EXCEPTION 'keep_outbox must be an interval of zero or more, or NULL to keep finished outbox items for ever'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- (a negative one deleted every run detail, the last minute's too)
	IF now() - keep_run_details > now() THEN
		RAISE EXCEPTION 'keep_run_details must be an interval of zero or more, or NULL to keep them for ever'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- a cron.database_name left in the configuration of a server that no longer loads pg_cron is
	-- a placeholder, a user setting (pg_cron's own is set at server start): pg_cron runs nowhere
	IF cron_db IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_settings s
									   WHERE s.name = 'cron.database_name' AND s.context = 'postmaster') THEN
		RAISE EXCEPTION 'pg_cron is not loaded'
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name, restart, and CREATE EXTENSION pg_cron in that database.';
	END IF;
	IF cron_db <> current_database() THEN
		-- and the removal of the jobs this call has none of, as below
		SELECT concat_ws(E'\n', string_agg(format('SELECT cron.schedule_in_database(%L, %L, %L, %L);',
												   c.jobname, c.schedule, c.command, c.database), E'\n'),
						 (SELECT format('SELECT cron.unschedule(j.jobid) FROM cron.job j WHERE j.jobname IN (%s);',
										string_agg(quote_literal(a.jobname), ', ' ORDER BY a.jobname))
							FROM payments.cron_jobs() a
						   WHERE a.jobname NOT IN (SELECT c.jobname FROM payments.cron_jobs(retry_schedule, deliver_schedule,
									housekeeping_schedule, keep_run_details, reconcile_schedule, keep_rejections, keep_outbox) c)
						  HAVING count(*) > 0))
		  INTO stmts
		  FROM payments.cron_jobs(retry_schedule, deliver_schedule, housekeeping_schedule, keep_run_details,
								 reconcile_schedule, keep_rejections, keep_outbox) c;
		RAISE EXCEPTION 'pg_cron runs in database "%", not in "%"', cron_db, current_database()
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'Run these in database ' || quote_ident(cron_db) || E':\n' || stmts,
				  HINT = 'payments.cron_jobs() lists the jobs.';
	END IF;
	IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
		RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
			USING ERRCODE = 'undefined_object', HINT = 'CREATE EXTENSION pg_cron;';
	END IF;
	PERFORM payments.unschedule_orphan_jobs();
	FOR j IN SELECT * FROM payments.cron_jobs(retry_schedule, deliver_schedule, housekeeping_schedule, keep_run_details,
								 reconcile_schedule, keep_rejections, keep_outbox) LOOP
		EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4)'
		   INTO jobid USING j.jobname, j.schedule, j.command, j.database;
		jobname := j.jobname;
		schedule := j.schedule;
		database := j.database;
		RETURN NEXT;
	END LOOP;
	-- a job this call has none of (a NULL schedule; rejections and finished outbox items kept for
	-- ever: no prune job; run details kept for ever: no housekeeping job): one scheduled before goes
	EXECUTE 'SELECT count(cron.unschedule(x.jobid)) FROM cron.job x'
			' WHERE x.jobname IN (SELECT c.jobname FROM payments.cron_jobs() c)'
			'   AND x.jobname NOT IN (SELECT c.jobname FROM payments.cron_jobs($1, $2, $3, $4, $5, $6, $7) c)'
	   USING retry_schedule, deliver_schedule, housekeeping_schedule, keep_run_details, reconcile_schedule,
			 keep_rejections, keep_outbox;
END
$$;
COMMENT ON FUNCTION payments.schedule_jobs(text, text, text, interval, text, interval, interval) IS
	'Registers (or updates) the pg_cron jobs retry, deliver, reconcile, chat (on the deliver schedule), housekeeping (none when keep_run_details is NULL) and prune (of rejections older than keep_rejections and of outbox items finished longer ago than keep_outbox, each not when NULL; none when both are) for this database, and removes those it has none of (a NULL schedule); in another database than pg_cron''s, says what to run there';

CREATE FUNCTION payments.unschedule_jobs()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n	bigint;
BEGIN
	IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
		RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
			USING ERRCODE = 'undefined_object',
				  HINT = 'In another database than pg_cron''s, run cron.unschedule(jobname) there for the jobs of payments.cron_jobs().';
	END IF;
	EXECUTE 'SELECT count(cron.unschedule(j.jobid)) FROM cron.job j'
			' WHERE j.jobname IN (SELECT c.jobname FROM payments.cron_jobs() c)'
	   INTO n;
	RETURN n + payments.unschedule_orphan_jobs();
END
$$;
COMMENT ON FUNCTION payments.unschedule_jobs() IS 'Removes the pg_cron jobs of this database, and those of databases renamed or dropped since (payments.unschedule_orphan_jobs); returns how many';

REVOKE ALL ON FUNCTION payments.event_failed(bigint, text, integer, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.retry_events(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.replay_event(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.replay_dead(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.replay_outbox(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.add_endpoint(text, text, text, text[], text, integer, integer, integer, integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.enable_endpoint(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.enqueue_transition(payments.status_history) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.transition_payload(payments.status_history) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.raw_event_payload(payments.events) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.enqueue_event() FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.enqueue_raw_event(payments.events) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.claim_outbox(integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.record_delivery(bigint, integer, integer, text, integer, bigint, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE payments.deliver_outbox(integer, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE payments.run_job(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.schedule_jobs(text, text, text, interval, text, interval, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.prune_rejections(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.prune_outbox(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.unschedule_jobs() FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.unschedule_orphan_jobs() FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('payments.event_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('payments.event_attempts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('payments.endpoints_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('payments.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.outbox_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('payments.outbox_attempts_id_seq', '');

--------------------------------------------------------------------------------------------------
-- Reconciliation: payments stuck in pending are checked with their provider's API
--------------------------------------------------------------------------------------------------

-- How long a payment stays pending before it is checked, and how often it is checked again:
-- the setting payments.reconcile_after (seconds; 15 minutes unless set).
CREATE FUNCTION payments.reconcile_after()
RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.effective_setting('payments.reconcile_after')::interval
$$;
COMMENT ON FUNCTION payments.reconcile_after() IS
	'The setting payments.reconcile_after as an interval: how long a payment stays pending before reconciliation asks its provider, and how often it asks again';

-- Whether a stuck payment is due for a check, given its last check and how many it had: never
-- checked, or after n checks reconcile_after * 2^(n-1) ago, at most 24 hours, so that an abandoned
-- payment (a Paynow transaction never paid) is asked daily, not every few minutes.  The claim of
-- the checks and the token requests ask the same question: a token is fetched only for a check due
CREATE FUNCTION payments.reconciliation_due(last_checked_at timestamptz, checks bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT last_checked_at IS NULL
		OR last_checked_at < now() - least(payments.reconcile_after() * power(2, least(checks - 1, 16)),
										   interval '24 hours')
$$;
COMMENT ON FUNCTION payments.reconciliation_due(timestamptz, bigint) IS
	'Whether a stuck payment whose last check started at last_checked_at, after checks checks, is due for another: never checked, or after reconcile_after * 2^(checks-1), at most 24 hours; used by claim_reconciliation and api_token_requests';
REVOKE ALL ON FUNCTION payments.reconciliation_due(timestamptz, bigint) FROM PUBLIC;

-- The base URL of a provider's API: its api_base setting, else the real host
CREATE FUNCTION payments.api_base(kind text, settings jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT rtrim(coalesce(settings ->> 'api_base',
						  CASE kind WHEN 'stripe' THEN 'https://api.stripe.com'
									WHEN 'paypal' THEN 'https://api-m.paypal.com'
									WHEN 'eversend' THEN 'https://api.eversend.co'
									WHEN 'paynow' THEN 'https://www.paynow.co.zw'
									WHEN 'meta' THEN 'https://graph.facebook.com/v21.0' END), '/')
$$;
COMMENT ON FUNCTION payments.api_base(text, jsonb) IS
	'The base URL of a provider''s API: the api_base setting, else the provider''s real host';

-- What an API token is fetched with: a SHA-256 of the API's base URL, client_id and client_secret.
-- A token request carries it and store_api_token compares it with the provider's credentials then:
-- a token fetched with credentials changed while the request was out is not kept (the forget
-- trigger had nothing to forget yet).  A digest, so that no secret is read from the request but in
-- its headers
CREATE FUNCTION payments.api_credentials_digest(kind text, settings jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT encode(sha256(convert_to(jsonb_build_array(payments.api_base(kind, settings), settings -> 'client_id',
													   settings -> 'client_secret')::text, 'UTF8')), 'hex')
$$;
COMMENT ON FUNCTION payments.api_credentials_digest(text, jsonb) IS
	'The SHA-256 (hex) of a provider''s API base URL, client_id and client_secret: what a token request (api_token_requests) was made with, checked by store_api_token';
REVOKE ALL ON FUNCTION payments.api_credentials_digest(text, jsonb) FROM PUBLIC;

CREATE TABLE payments.api_tokens (
	provider	text PRIMARY KEY REFERENCES payments.providers (name) ON DELETE CASCADE,
	token		text,
	expires_at	timestamptz NOT NULL,
	fetched_at	timestamptz NOT NULL DEFAULT now(),
	fetches		bigint NOT NULL DEFAULT 1,
	last_error	text,
	failures	integer NOT NULL DEFAULT 0,
	next_fetch_at timestamptz
);
COMMENT ON TABLE payments.api_tokens IS
	'API access tokens (PayPal OAuth client credentials, Eversend auth token) cached until shortly before they expire; token NULL: the last fetch failed (last_error), and none is asked for before next_fetch_at. Read by the reconciliation run only';
COMMENT ON COLUMN payments.api_tokens.failures IS
	'Failed fetches since the last that succeeded (or since the credentials or api_base changed)';
COMMENT ON COLUMN payments.api_tokens.next_fetch_at IS
	'After a failed fetch, no token is asked for before this: reconcile_after after the first failure, doubling with each one after it, at most 24 hours (the client secret is not sent every minute to an endpoint that refuses it); NULL: no wait';

-- A token was fetched with the provider's credentials from its api_base: when either changes, it
-- is forgotten, so that it is never sent to another server, nor kept after the credentials were
-- revoked (nor a failed fetch's error after they were corrected).  Definer's rights: payments_admin
-- changes providers but may not read the tokens.
CREATE FUNCTION payments.forget_api_token()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM payments.api_tokens t WHERE t.provider = OLD.name;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION payments.forget_api_token() IS
	'Trigger: forgets a provider''s cached API token when its api_base, client_id or client_secret changes';
CREATE TRIGGER providers_forget_api_token AFTER UPDATE OF settings ON payments.providers
	FOR EACH ROW
	WHEN (OLD.settings -> 'api_base' IS DISTINCT FROM NEW.settings -> 'api_base'
		  OR OLD.settings -> 'client_id' IS DISTINCT FROM NEW.settings -> 'client_id'
		  OR OLD.settings -> 'client_secret' IS DISTINCT FROM NEW.settings -> 'client_secret')
	EXECUTE FUNCTION payments.forget_api_token();
REVOKE ALL ON FUNCTION payments.forget_api_token() FROM PUBLIC;

CREATE TABLE payments.reconciliation_checks (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id		bigint NOT NULL REFERENCES payments.payments (id) ON DELETE CASCADE,
	provider		text NOT NULL,
	request			text NOT NULL,
	status_before	text NOT NULL,
	started_at		timestamptz NOT NULL DEFAULT now(),
	finished_at		timestamptz,
	http_status		integer,
	found_status	text,
	found			jsonb,
	status_after	text,
	outcome			text CHECK (outcome IN ('fixed', 'unchanged', 'refused', 'error')),
	error			text
);
CREATE INDEX reconciliation_checks_payment_idx ON payments.reconciliation_checks (payment_id, started_at);
CREATE INDEX reconciliation_checks_started_at_idx ON payments.reconciliation_checks (started_at);
CREATE INDEX payments_pending_idx ON payments.payments (status_at) WHERE status = 'pending';
COMMENT ON TABLE payments.reconciliation_checks IS
	'Every check of a stuck payment with its provider: what was asked (method and URL, never a credential), the provider''s own status (found_status) and what it means (found), the outcome (fixed: the payment moved; unchanged; refused: the state machine refused the move; error: nothing changed), and the error; outcome NULL: in flight';
COMMENT ON COLUMN payments.reconciliation_checks.found IS
	'What the provider''s answer says in normalized terms: status, amount, currency';

CREATE VIEW payments.stuck_payments AS
	SELECT p.id AS payment_id, p.provider, v.kind AS provider_kind, p.provider_ref, p.reference, p.amount, p.currency,
		   p.status_at, now() - p.status_at AS pending_for,
		   (SELECT max(c.started_at) FROM payments.reconciliation_checks c WHERE c.payment_id = p.id) AS last_checked_at,
		   (SELECT c.outcome FROM payments.reconciliation_checks c WHERE c.payment_id = p.id
			 ORDER BY c.started_at DESC, c.id DESC LIMIT 1) AS last_outcome
	  FROM payments.payments p JOIN payments.providers v ON v.name = p.provider
	 WHERE p.status = 'pending' AND p.status_at < now() - payments.reconcile_after();
COMMENT ON VIEW payments.stuck_payments IS
	'Payments pending for longer than payments.reconcile_after (provider_kind: their provider''s kind, stripe, paynow, ...), with their last reconciliation check';

CREATE FUNCTION payments.api_token_requests(max_items integer DEFAULT 50)
RETURNS TABLE (provider text, url text, method text, headers text, body text, credentials text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT v.name, payments.api_base(v.kind, v.settings) || CASE v.kind WHEN 'paypal' THEN '/v1/oauth2/token'
																		 ELSE '/v1/auth/token' END,
		   CASE v.kind WHEN 'paypal' THEN 'POST' ELSE 'GET' END,
		   CASE v.kind
			WHEN 'paypal' THEN
				'Authorization: Basic ' ||
				translate(encode(convert_to((v.settings ->> 'client_id') || ':' || (v.settings ->> 'client_secret'), 'UTF8'),
								 'base64'), E'\n', '') ||
				E'\nContent-Type: application/x-www-form-urlencoded\nAccept: application/json'
			ELSE 'clientId: ' || (v.settings ->> 'client_id') || E'\nclientSecret: ' || (v.settings ->> 'client_secret') ||
				 E'\nAccept: application/json' END,
		   CASE v.kind WHEN 'paypal' THEN 'grant_type=client_credentials' END,
		   payments.api_credentials_digest(v.kind, v.settings)
	  FROM payments.providers v
	 WHERE v.kind IN ('paypal', 'eversend') AND v.settings ? 'client_id' AND v.settings ? 'client_secret'
	   AND NOT EXISTS (SELECT FROM payments.api_tokens t
						WHERE t.provider = v.name
						  AND ((t.token IS NOT NULL AND t.expires_at > now()) OR t.next_fetch_at > now()))
	   -- only for a check that is due (claim_reconciliation's own question): a payment asked
	   -- every few hours must not send the client secret every minute
	   AND EXISTS (SELECT FROM payments.payments p
					 LEFT JOIN LATERAL (SELECT max(c.started_at) AS last_at, count(*) AS checks
										  FROM payments.reconciliation_checks c WHERE c.payment_id = p.id) ck ON true
					WHERE p.provider = v.name AND p.status = 'pending' AND p.status_at < now() - payments.reconcile_after()
					  AND NOT (v.kind = 'paypal' AND p.metadata ? 'paypal_capture_held')
					  AND payments.reconciliation_due(ck.last_at, ck.checks))
	 ORDER BY v.name
	 LIMIT max_items
$$;
COMMENT ON FUNCTION payments.api_token_requests(integer) IS
	'The token requests a reconciliation run needs first: providers (paypal, eversend) with a payment due for a check (payments.reconciliation_due; none flagged paypal_capture_held), no live cached token and no wait after failed fetches (api_tokens.next_fetch_at), each with the digest of the credentials it is made with (api_credentials_digest), handed back to store_api_token; used by reconcile';

-- credentials: api_token_requests' digest of what the request was made with.  An answer to
-- credentials or an api_base changed (or a provider removed) since is discarded, token or failure:
-- the forget trigger could not delete a token not stored yet.  The provider's row is locked (FOR
-- SHARE) until this commits, so that a change made meanwhile waits, then forgets what is stored
CREATE FUNCTION payments.store_api_token(provider text, http_status integer, error text, response text,
										 credentials text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r		jsonb;
	tok		text;
	ttl		numeric;
	problem	text := error;
	now_credentials text;
BEGIN
	SELECT payments.api_credentials_digest(v.kind, v.settings) INTO now_credentials
	  FROM payments.providers v WHERE v.name = store_api_token.provider FOR SHARE;
	IF now_credentials IS NULL OR credentials IS NULL OR now_credentials <> credentials THEN
		RETURN 'discarded: the provider''s api_base, client_id or client_secret changed while the token was fetched';
	END IF;
	IF problem IS NULL AND http_status NOT BETWEEN 200 AND 299 THEN
		problem := 'HTTP ' || http_status || ': ' || left(coalesce(response, ''), 200);
	END IF;
	IF problem IS NULL THEN
		BEGIN
			r := response::jsonb;
			tok := coalesce(r ->> 'access_token', r ->> 'token', r -> 'data' ->> 'token');
			ttl := CASE WHEN jsonb_typeof(r -> 'expires_in') = 'number' THEN (r ->> 'expires_in')::numeric END;
		EXCEPTION WHEN others THEN
			problem := 'the token reply is not JSON';
		END;
		IF problem IS NULL AND (tok IS NULL OR tok !~ '^[!-~]+$' OR length(tok) > 4000) THEN
			problem := 'the token reply has no usable token';
		END IF;
	END IF;
	-- a token is used until a minute before it expires; Eversend does not say (its SDKs keep it 1600 s or more)
	ttl := greatest(coalesce(ttl, 1600) - 60, 30);
	-- a failed fetch is not asked again for reconcile_after, doubling with each failure after it up
	-- to a day: with revoked credentials the client secret went out every minute
	INSERT INTO payments.api_tokens AS t (provider, token, expires_at, last_error, failures, next_fetch_at)
	VALUES (store_api_token.provider, CASE WHEN problem IS NULL THEN tok END,
			CASE WHEN problem IS NULL THEN now() + make_interval(secs => ttl::double precision) ELSE now() END, problem,
			CASE WHEN problem IS NULL THEN 0 ELSE 1 END,
			CASE WHEN problem IS NOT NULL THEN now() + least(payments.reconcile_after(), interval '24 hours') END)
	ON CONFLICT ON CONSTRAINT api_tokens_pkey DO UPDATE
		SET token = excluded.token, expires_at = excluded.expires_at, fetched_at = now(),
			fetches = t.fetches + 1, last_error = excluded.last_error,
			failures = CASE WHEN excluded.failures = 0 THEN 0 ELSE t.failures + 1 END,
			next_fetch_at = CASE WHEN excluded.failures <> 0 THEN
								 now() + least(payments.reconcile_after() * power(2, least(t.failures, 16)), interval '24 hours') END;
	RETURN coalesce(problem, 'cached');
END
$$;
COMMENT ON FUNCTION payments.store_api_token(text, integer, text, text, text) IS
	'Caches the token a provider''s auth endpoint answered, until a minute before it expires, or records why there is none and when to ask again (reconcile_after, doubling with each failure after it, at most 24 hours); discards the answer (saying so) when the provider''s api_base, client_id or client_secret are no longer those of the request (credentials: api_token_requests'' digest); used by reconcile';

CREATE FUNCTION payments.claim_reconciliation(max_items integer)
RETURNS TABLE (check_id bigint, url text, method text, headers text, body text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	pay		record;
	base	text;
	tok		payments.api_tokens;
	req_url	text;
	req_method text;
	req_headers text;
	req_body text;
	ini		payments.paynow_initiations;
	key		text;
	problem	text;
	new_id	bigint;
BEGIN
	-- never checked first, then the longest unchecked: new stuck payments are not starved by old
	-- ones; after n checks the next waits reconcile_after * 2^(n-1), at most 24 hours, so that an
	-- abandoned payment (a Paynow transaction never paid) is asked daily, not every few minutes
	-- checks a run left in flight (cancelled, or its backend gone, while it asked) are closed: the
	-- payment is asked again after its wait, as after any error
	UPDATE payments.reconciliation_checks c
	   SET finished_at = now(), outcome = 'error', error = 'interrupted: no answer was recorded'
	 WHERE c.outcome IS NULL
	   AND c.started_at < now() - greatest(interval '1 minute',
										   3 * payments.effective_setting('payments.reconcile_timeout')::interval);
	FOR pay IN
		SELECT p.id, p.provider, p.provider_ref, p.status, p.metadata, v.kind, v.settings, ck.last_at
		  FROM payments.payments p JOIN payments.providers v ON v.name = p.provider
		  LEFT JOIN LATERAL (SELECT max(c.started_at) AS last_at, count(*) AS checks
							   FROM payments.reconciliation_checks c WHERE c.payment_id = p.id) ck ON true
		 WHERE p.status = 'pending' AND p.status_at < now() - payments.reconcile_after()
		   -- its captures other payments' (record_reconciliation; a PayPal payment's own flag: another
		   -- provider's payment may carry any key in the metadata its events give)
		   AND NOT (v.kind = 'paypal' AND p.metadata ? 'paypal_capture_held')
		   AND payments.reconciliation_due(ck.last_at, ck.checks)
		 ORDER BY ck.last_at NULLS FIRST, p.status_at, p.id
		 LIMIT max_items
		   FOR UPDATE OF p SKIP LOCKED		-- held until the claim commits, before any request
	LOOP
		-- a row is locked as the loop reaches it: another run may have claimed it and committed
		-- since this query's snapshot, which does not show that run's check (then it was asked twice)
		CONTINUE WHEN (SELECT max(c.started_at) FROM payments.reconciliation_checks c WHERE c.payment_id = pay.id)
					  IS DISTINCT FROM pay.last_at;
		base := payments.api_base(pay.kind, pay.settings);
		req_url := NULL;
		req_method := 'GET';
		req_headers := 'Accept: application/json';
		req_body := NULL;
		problem := NULL;
		IF pay.kind IN ('paypal', 'eversend') THEN
			SELECT t.* INTO tok FROM payments.api_tokens t WHERE t.provider = pay.provider;
		END IF;
		CASE pay.kind
		WHEN 'paynow' THEN
			req_url := pay.metadata ->> 'pollurl';
			req_method := 'POST';
			req_headers := 'Content-Type: application/x-www-form-urlencoded';
			req_body := '';
			IF req_url IS NULL OR req_url !~ '^https?://[^[:space:]]+$' THEN
				-- no pollurl (the initiate reply never came): Paynow's trace finds the transaction
				-- by the merchant trace we sent with it, our reference
				-- (an initiation unconfirmed for reconcile_after since it was sent, not one in flight)
				ini := NULL;
				SELECT pi.* INTO ini FROM payments.paynow_initiations pi
				 WHERE pi.payment_id = pay.id AND pi.state = 'unconfirmed' AND pi.merchanttrace IS NOT NULL
				   AND pi.started_at < now() - payments.reconcile_after();
				key := NULL;
				IF ini.id IS NOT NULL THEN
					SELECT s.secret INTO key FROM payments.secrets s
					 WHERE s.provider = pay.provider AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())
					 ORDER BY s.id DESC LIMIT 1;
				END IF;
				IF ini.id IS NULL THEN
					problem := 'the payment has no pollurl';
				ELSIF ini.integration_id IS DISTINCT FROM pay.settings ->> 'integration_id' THEN
					-- a NotFound from another integration would say nothing about this payment
					problem := 'the payment has no pollurl, and the provider''s integration_id changed since it was sent';
				ELSIF key IS NULL THEN
					problem := 'the payment has no pollurl, and the provider no live integration key to trace it';
				ELSE
					req_url := base || '/interface/trace';
					req_body := payments.paynow_request(jsonb_build_array(
						jsonb_build_array('id', ini.integration_id),
						jsonb_build_array('merchanttrace', ini.merchanttrace), jsonb_build_array('status', 'Message')), key);
				END IF;
			ELSIF lower(substring(req_url FROM '^https?://[^/?#]+') COLLATE pg_catalog."C") IS DISTINCT FROM lower(substring(base FROM '^https?://[^/?#]+') COLLATE pg_catalog."C") THEN
				-- the pollurl comes in a message (signed, but by whoever holds the integration key):
				-- only Paynow's own host is asked, never any address a message names
				problem := 'the payment''s pollurl is not on the provider''s API host ' || substring(base FROM '^https?://[^/?#]+');
			END IF;
		WHEN 'stripe' THEN
			req_url := base || '/v1/payment_intents/' || pay.provider_ref;
			IF pay.provider_ref !~ '^pi_[A-Za-z0-9_]+$' THEN
				problem := 'only payment intents (pi_...) can be checked';
			ELSIF NOT pay.settings ? 'api_key' THEN
				problem := 'the provider has no api_key setting';
			ELSIF pay.metadata ? 'stripe_account'
				  AND coalesce(pay.metadata ->> 'stripe_account', '') !~ '^acct_[A-Za-z0-9]+$' THEN
				problem := 'the payment''s stripe_account is not a Stripe account id (acct_...)';
			ELSE
				req_headers := req_headers || E'\nAuthorization: Bearer ' || (pay.settings ->> 'api_key');
				-- a connected account's payment (Stripe Connect, the account its events named) is
				-- found only when asked as that account
				IF pay.metadata ? 'stripe_account' THEN
					req_headers := req_headers || E'\nStripe-Account: ' || (pay.metadata ->> 'stripe_account');
				END IF;
			END IF;
		WHEN 'paypal' THEN
			-- its capture; an order whose capture was never heard of (the webhook lost: what
			-- reconciliation is for), the order, whose captures say whether it was paid
			IF pay.metadata ? 'capture_id' THEN
				req_url := base || '/v2/payments/captures/' || (pay.metadata ->> 'capture_id');
				IF (pay.metadata ->> 'capture_id') !~ '^[A-Za-z0-9_-]+$' THEN
					problem := 'the capture_id cannot be put in a URL';
				END IF;
			ELSE
				req_url := base || '/v2/checkout/orders/' || pay.provider_ref;
				IF pay.provider_ref !~ '^[A-Za-z0-9_-]+$' THEN
					problem := 'the order id cannot be put in a URL';
				ELSIF EXISTS (SELECT FROM payments.status_history h JOIN payments.events e ON e.id = h.event_id
							   WHERE h.payment_id = pay.id AND e.event_type LIKE 'PAYMENT.SALE.%') THEN
					problem := 'a sale of PayPal''s v1 API cannot be checked';
				END IF;
			END IF;
		WHEN 'eversend' THEN
			req_url := base || '/v1/transactions/' || pay.provider_ref;
			IF pay.provider_ref !~ '^[A-Za-z0-9_-]+$' THEN
				problem := 'the transaction id cannot be put in a URL';
			END IF;
		ELSE
			req_url := '-';
			problem := 'providers of kind ' || pay.kind || ' have no API to ask';
		END CASE;
		IF problem IS NULL AND pay.kind IN ('paypal', 'eversend') THEN
			IF NOT pay.settings ? 'client_id' THEN
				problem := 'the provider has no client_id and client_secret settings';
			ELSIF tok.token IS NULL OR tok.expires_at <= now() THEN
				problem := 'no API token: ' || coalesce(tok.last_error, 'not fetched');
			ELSE
				req_headers := req_headers || E'\nAuthorization: Bearer ' || tok.token;
			END IF;
		END IF;

		INSERT INTO payments.reconciliation_checks AS c (payment_id, provider, request, status_before,
														 finished_at, outcome, error)
		VALUES (pay.id, pay.provider, req_method || ' ' || coalesce(req_url, '-'), pay.status,
				CASE WHEN problem IS NOT NULL THEN now() END, CASE WHEN problem IS NOT NULL THEN 'error' END, problem)
		RETURNING c.id INTO new_id;
		IF problem IS NULL THEN
			check_id := new_id;
			url := req_url;
			method := req_method;
			headers := req_headers;
			body := req_body;
			RETURN NEXT;
		END IF;
	END LOOP;
END
$$;
COMMENT ON FUNCTION payments.claim_reconciliation(integer) IS
	'Claims stuck payments (SKIP LOCKED), never checked first, then the longest unchecked, each once its wait since the last check is over (reconcile_after, doubling with each check, at most 24 hours), but none flagged paypal_capture_held (its captures held by other payments: record_reconciliation), records a check for each and returns the request to send (a Stripe Connect payment''s with Stripe-Account, the account its events named; a Paynow payment''s pollurl, on the provider''s API host only; without one, if its initiation may have reached Paynow, its trace, by merchant trace); checks that cannot be made are recorded as errors at once; used by reconcile, which commits before sending';

-- A PayPal order may hold several captures (one declined, then another completed; an
-- authorization captured in parts): reconciliation applies every one that took money, oldest
-- first, or else only the latest, so that a declined attempt never fails a paid order
CREATE FUNCTION payments.paypal_order_captures(paypal_order jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
	WITH found AS (
		SELECT c.capture, c.capture ->> 'status' IN ('COMPLETED', 'PARTIALLY_REFUNDED', 'REFUNDED') AS took_money,
			   payments.provider_time(c.capture ->> 'update_time') AS said_at, u.n AS unit_no, c.n AS capture_no
		  FROM jsonb_array_elements(CASE jsonb_typeof(paypal_order -> 'purchase_units')
									WHEN 'array' THEN paypal_order -> 'purchase_units' ELSE '[]' END)
			   WITH ORDINALITY u(unit, n),
			   jsonb_array_elements(CASE jsonb_typeof(u.unit #> '{payments,captures}')
									WHEN 'array' THEN u.unit #> '{payments,captures}' ELSE '[]' END)
			   WITH ORDINALITY c(capture, n)
		 WHERE jsonb_typeof(c.capture) = 'object'),
	chosen AS (
		SELECT f.* FROM found f WHERE f.took_money
		UNION ALL
		(SELECT f.* FROM found f WHERE NOT EXISTS (SELECT FROM found t WHERE t.took_money)
		  ORDER BY f.said_at DESC NULLS LAST, f.unit_no DESC, f.capture_no DESC LIMIT 1))
	SELECT coalesce(jsonb_agg(c.capture ORDER BY c.said_at NULLS FIRST, c.unit_no, c.capture_no), '[]')
	  FROM chosen c
$$;
COMMENT ON FUNCTION payments.paypal_order_captures(jsonb) IS
	'The captures of a PayPal order (GET /v2/checkout/orders/{id}) that reconciliation applies: every one that took money (COMPLETED, PARTIALLY_REFUNDED, REFUNDED), oldest first, else only the latest; used by record_reconciliation';
REVOKE ALL ON FUNCTION payments.paypal_order_captures(jsonb) FROM PUBLIC;

CREATE FUNCTION payments.record_reconciliation(check_id bigint, http_status integer, error text, response text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	chk		payments.reconciliation_checks;
	pay		payments.payments;
	kind	text;
	settings jsonb;
	r		jsonb;
	raw		text;
	etype	text;
	change	payments.payment_change;
	verdict	text;
	after	text;
	said_at	timestamptz;	-- the provider's time of the status, where the reply gives one
	result	text;
	problem	text := error;
	no_capture boolean := false;	-- a PayPal order without a capture yet
	captures jsonb;		-- a PayPal order's captures to apply, in order
	refunded_capture boolean := false;	-- a PayPal capture found REFUNDED
	order_source text;	-- the source a PayPal order found is paid from (its payment_source)
	held_by	text;		-- another payment holding a PayPal capture found
	held_elsewhere jsonb;	-- every capture found held by other payments: {capture id: holder's provider_ref}
BEGIN
	SELECT c.* INTO chk FROM payments.reconciliation_checks c WHERE c.id = record_reconciliation.check_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown reconciliation check %', check_id USING ERRCODE = 'undefined_object';
	END IF;
	IF chk.outcome IS NOT NULL THEN
		RETURN chk.outcome;
	END IF;
	-- the payment as it is now, locked as apply_change locks it: news applied since the claim (a
	-- webhook, an admin's approval) is what the answer is compared with, and none comes between
	SELECT p.* INTO pay FROM payments.payments p WHERE p.id = chk.payment_id FOR UPDATE;
	SELECT v.kind, v.settings INTO kind, settings FROM payments.providers v WHERE v.name = chk.provider;

	IF problem IS NULL AND http_status NOT BETWEEN 200 AND 299 THEN
		problem := 'HTTP ' || http_status || ': ' || left(coalesce(response, ''), 300);
		IF http_status = 401 THEN
			-- the token was refused: the next run fetches a new one
			DELETE FROM payments.api_tokens t WHERE t.provider = chk.provider;
		END IF;
	END IF;

	IF problem IS NULL THEN
		BEGIN
			IF kind = 'paynow' THEN
				r := payments.paynow_form(convert_to(response, 'UTF8'));
				IF r IS NULL THEN
					RAISE EXCEPTION 'the poll reply is not a well-formed form';
				END IF;
				raw := r ->> 'status';
				IF lower(raw COLLATE pg_catalog."C") = 'error' THEN
					RAISE EXCEPTION 'Paynow: %', coalesce(r ->> 'error', 'Error');
				END IF;
				SELECT payments.verify_paynow(convert_to(response, 'UTF8'), s.secret) INTO verdict
				  FROM payments.secrets s
				 WHERE s.provider = chk.provider AND s.revoked_at IS NULL
				   AND (s.expires_at IS NULL OR s.expires_at > now())
				 ORDER BY payments.verify_paynow(convert_to(response, 'UTF8'), s.secret) <> 'valid', s.id DESC
				 LIMIT 1;
				IF verdict IS DISTINCT FROM 'valid' THEN
					RAISE EXCEPTION 'hash check failed: %', coalesce(verdict, 'no live integration key');
				END IF;
				IF lower(raw COLLATE pg_catalog."C") = 'notfound' AND chk.request LIKE 'POST %/interface/trace' THEN
					-- the trace: Paynow has no transaction with our merchant trace, reconcile_after
					-- since the initiation was sent: it never reached Paynow, nothing can be taken.
					-- Unless Paynow has spoken of it since the trace was sent (a status update
					-- naming its transaction and pollurl): then the trace crossed it, and says
					-- nothing.  (One that moved on since, cancelled or paid, refuses the failure.)
					IF pay.status = 'pending' AND (pay.metadata ? 'paynowreference' OR pay.metadata ? 'pollurl') THEN
						RAISE EXCEPTION 'the trace found nothing, but Paynow has reported on the payment since';
					END IF;
					change.status := 'failed';
					change.status_at := now();
				ELSE
					-- a reply about another transaction (a pollurl kept wrong, Paynow's mistake)
					-- must not pay this one
					IF pay.reference IS NOT NULL AND (r ->> 'reference') IS DISTINCT FROM pay.reference THEN
						RAISE EXCEPTION 'the reply is about another transaction (reference %, not %)',
							coalesce(r ->> 'reference', 'none'), pay.reference;
					END IF;
					IF (r ->> 'paynowreference') IS DISTINCT FROM coalesce(pay.metadata ->> 'paynowreference',
							CASE WHEN pay.provider_ref IS DISTINCT FROM pay.reference THEN pay.provider_ref END,
							r ->> 'paynowreference') THEN
						RAISE EXCEPTION 'the reply is about another Paynow transaction (%, not %)',
							coalesce(r ->> 'paynowreference', 'none'),
							coalesce(pay.metadata ->> 'paynowreference', pay.provider_ref);
					END IF;
					change := payments.paynow_change(r, settings, pay.status_at);
				END IF;
			ELSIF kind = 'stripe' THEN
				r := response::jsonb;
				raw := r ->> 'status';
				etype := CASE
					WHEN raw = 'succeeded' THEN 'payment_intent.succeeded'
					WHEN raw = 'canceled' THEN 'payment_intent.canceled'
					WHEN raw = 'requires_payment_method' AND jsonb_typeof(r -> 'last_payment_error') = 'object'
						THEN 'payment_intent.payment_failed'
					WHEN raw IN ('processing', 'requires_payment_method', 'requires_confirmation',
								 'requires_action', 'requires_capture') THEN 'payment_intent.processing' END;
				change := payments.stripe_change(jsonb_build_object('type', etype,
								'created', extract(epoch FROM pay.status_at), 'data', jsonb_build_object('object', r)));
			ELSIF kind = 'paypal' THEN
				r := response::jsonb;
				raw := r ->> 'status';
				captures := jsonb_build_array(r);
				-- an order: its captures; none yet, still pending (VOIDED: never paid)
				IF jsonb_typeof(r -> 'purchase_units') = 'array' THEN
					order_source := payments.paypal_payment_source(r);
					captures := payments.paypal_order_captures(r);
					IF jsonb_array_length(captures) = 0 THEN
						captures := jsonb_build_array(jsonb_build_object('id', pay.provider_ref, 'status', 'PENDING',
																		 'update_time', r ->> 'update_time'));
						no_capture := true;
					END IF;
				END IF;
				-- all but the last capture applied here, each kept with the payment's (their sums
				-- are its amount and fee); the last one below, as a single capture is
				FOR i IN 0 .. jsonb_array_length(captures) - 1 LOOP
					r := captures -> i;
					-- a capture already kept for another payment (its webhook named no order, and
					-- made a payment of its own) is that payment's money: counted for this one too,
					-- one donation would be paid twice, with two receipts.  An error, nothing applied.
					-- Decided under the capture's lock (after the payment's, as a webhook takes them):
					-- its webhook applied meanwhile is seen, or waits for this one and sees it.  When
					-- other payments hold every capture of the answer, asking again can only find the
					-- same: the payment is flagged (below) and not asked again
					IF NOT no_capture THEN
						PERFORM payments.paypal_capture_lock(chk.provider, r ->> 'id');
						SELECT pg_catalog.format('%s (%s)', p.provider_ref, p.status) INTO held_by
						  FROM payments.paypal_captures k JOIN payments.payments p ON p.id = k.payment_id
						 WHERE k.provider = chk.provider AND k.capture_id = r ->> 'id' AND k.payment_id <> pay.id;
						IF held_by IS NOT NULL THEN
							SELECT CASE WHEN count(k.capture_id) = count(*)
										THEN jsonb_object_agg(k.capture_id, p.provider_ref) FILTER (WHERE k.capture_id IS NOT NULL) END
							  INTO held_elsewhere
							  FROM jsonb_array_elements(captures) c
							  LEFT JOIN payments.paypal_captures k
								ON k.provider = chk.provider AND k.capture_id = c ->> 'id' AND k.payment_id <> pay.id
							  LEFT JOIN payments.payments p ON p.id = k.payment_id;
							RAISE EXCEPTION 'capture % is held by payment %: not counted again for this one',
								r ->> 'id', held_by;
						END IF;
					END IF;
					-- found: the capture's status (an order without one, the order's)
					raw := CASE WHEN no_capture THEN raw ELSE r ->> 'status' END;
					refunded_capture := refunded_capture OR raw = 'REFUNDED';
					-- captured money, refunded since or not: paid (refunded in full, below)
					etype := CASE r ->> 'status'
						WHEN 'COMPLETED' THEN 'PAYMENT.CAPTURE.COMPLETED'
						WHEN 'PARTIALLY_REFUNDED' THEN 'PAYMENT.CAPTURE.COMPLETED'
						WHEN 'REFUNDED' THEN 'PAYMENT.CAPTURE.COMPLETED'
						WHEN 'PENDING' THEN 'PAYMENT.CAPTURE.PENDING'
						WHEN 'DECLINED' THEN 'PAYMENT.CAPTURE.DECLINED'
						WHEN 'FAILED' THEN 'PAYMENT.CAPTURE.DENIED' END;
					-- paid when it was made: a capture refunded since was last updated by its refund
					said_at := CASE WHEN r ->> 'status' IN ('REFUNDED', 'PARTIALLY_REFUNDED')
									THEN coalesce(payments.provider_time(r ->> 'create_time'),
												  payments.provider_time(r ->> 'update_time'))
									ELSE payments.provider_time(r ->> 'update_time') END;
					change := payments.paypal_change(jsonb_build_object('event_type', etype, 'resource', r),
													 chk.provider, said_at);
					EXIT WHEN i = jsonb_array_length(captures) - 1;
					IF change IS NULL OR change.status IS NULL THEN
						RAISE EXCEPTION 'the reply says no status this version understands (%)', coalesce(raw, 'none');
					END IF;
					change.provider_ref := pay.provider_ref;
					change.creates := false;
					change.status_at := greatest(pay.status_at, change.status_at);
					PERFORM payments.apply_paypal_change(NULL, chk.provider, change,
														 jsonb_build_object('event_type', etype, 'resource', r));
				END LOOP;
				IF raw = 'VOIDED' THEN
					change.status := 'cancelled';
				END IF;
				-- an order with no capture yet names none: asked by order again next time
				IF no_capture THEN
					change.metadata := NULL;
				END IF;
			ELSIF kind = 'eversend' THEN
				r := response::jsonb;
				r := CASE WHEN r ? 'transactionId' THEN r
						  WHEN jsonb_typeof(r -> 'data') = 'object' AND r -> 'data' ? 'transactionId' THEN r -> 'data'
						  ELSE r -> 'data' -> 'transaction' END;
				raw := r ->> 'status';
				-- a reply about another transaction must not move this one (nor rename it)
				IF jsonb_typeof(r) = 'object' AND (r ->> 'transactionId') IS DISTINCT FROM pay.provider_ref THEN
					RAISE EXCEPTION 'the reply is about another transaction (%, not %)',
						coalesce(r ->> 'transactionId', 'none'), pay.provider_ref;
				END IF;
				said_at := payments.provider_time(r ->> 'updatedAt');
				change := payments.eversend_change(r, said_at);
				-- the kind it states sets one assumed, as news would; a contradiction is an error
				IF payments.kind_refused(pay, change.kind) IS NOT NULL THEN
					RAISE EXCEPTION '%', payments.kind_refused(pay, change.kind);
				END IF;
			END IF;
			IF change IS NULL OR change.status IS NULL THEN
				RAISE EXCEPTION 'the reply says no status this version understands (%)', coalesce(raw, 'none');
			END IF;

			-- the answer is about this payment, which it neither creates nor renames
			change.provider_ref := pay.provider_ref;
			change.creates := false;
			IF kind = 'paynow' THEN
				change := payments.paynow_amount_checked(change, chk.provider);
			END IF;
			-- dated by the provider's time where the reply has one (PayPal's update_time,
			-- Eversend's updatedAt), else by the status the payment had, never by the poll's:
			-- an event about something that happened before the poll, delivered after it, must
			-- not be refused as older (its paid time is another matter, below)
			change.status_at := greatest(pay.status_at, change.status_at);
			-- a PayPal capture found is kept with the payment's, as its webhook would have been
			result := CASE WHEN kind = 'paypal' AND NOT no_capture
						   THEN payments.apply_paypal_change(NULL, chk.provider, change,
															 jsonb_build_object('event_type', etype, 'resource', r))
						   ELSE payments.apply_change(NULL, chk.provider, change) END;
			-- a PayPal capture found REFUNDED was paid, then given back in full: both are applied,
			-- as its refund's webhook may be lost too (PARTIALLY_REFUNDED says not how much); the
			-- payment's refunded total is its captures' (all of them: refunded)
			IF kind = 'paypal' AND refunded_capture THEN
				UPDATE payments.paypal_captures k SET refunded = greatest(k.refunded, k.amount)
				 WHERE k.provider = chk.provider AND k.payment_id = pay.id
				   AND k.capture_id IN (SELECT c ->> 'id' FROM jsonb_array_elements(captures) c
										 WHERE c ->> 'status' = 'REFUNDED');
				SELECT sum(k.refunded) INTO change.amount_refunded FROM payments.paypal_captures k
				 WHERE k.payment_id = pay.id AND k.status = 'paid';
				-- no capture kept (a payment in another currency than its capture's): all it took
				change.amount_refunded := coalesce(change.amount_refunded,
					(SELECT p.amount FROM payments.payments p WHERE p.id = pay.id), change.amount);
				change.status := CASE WHEN change.amount_refunded >= (SELECT p.amount FROM payments.payments p WHERE p.id = pay.id)
									  THEN 'refunded' ELSE 'partially_refunded' END;
				-- given back when its capture was last updated
				change.status_at := greatest(change.status_at,
					(SELECT max(payments.provider_time(c ->> 'update_time')) FROM jsonb_array_elements(captures) c
					  WHERE c ->> 'status' = 'REFUNDED'));
				result := payments.apply_change(NULL, chk.provider, change);
			END IF;
			-- the source a PayPal order is paid from names its method, as its approval's webhook
			-- (perhaps lost) would have: over none, or the paypal a capture alone assumed
			IF order_source IS NOT NULL THEN
				UPDATE payments.payments p SET method = order_source, updated_at = now()
				 WHERE p.id = pay.id AND (p.method IS NULL OR p.method = 'paypal') AND p.method IS DISTINCT FROM order_source;
			END IF;
			SELECT p.status INTO after FROM payments.payments p WHERE p.id = pay.id;
			-- found paid where the reply has no time (Stripe, Paynow): paid by the time of the
			-- poll, not at the status it had (days before, perhaps, in a day already reported);
			-- its receipt, numbered at the commit, takes the day of paid_at
			IF said_at IS NULL AND after = 'paid' AND pay.paid_at IS NULL THEN
				UPDATE payments.payments p SET paid_at = clock_timestamp() WHERE p.id = pay.id;
			END IF;
			UPDATE payments.reconciliation_checks c
			   SET finished_at = clock_timestamp(), http_status = record_reconciliation.http_status, found_status = raw,
				   found = jsonb_strip_nulls(jsonb_build_object('status', change.status, 'amount', change.amount,
																'currency', change.currency)),
				   status_after = after,
				   outcome = CASE WHEN after <> pay.status THEN 'fixed'
								  WHEN change.status = pay.status THEN 'unchanged'
								  ELSE 'refused' END
			 WHERE c.id = chk.id
			RETURNING c.outcome INTO result;
			RETURN result;
		EXCEPTION WHEN others THEN
			-- nothing the answer did is kept
			GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
		END;
	END IF;

	UPDATE payments.reconciliation_checks c
	   SET finished_at = clock_timestamp(), http_status = record_reconciliation.http_status, found_status = raw,
		   status_after = pay.status, outcome = 'error', error = problem
	 WHERE c.id = chk.id;
	-- a PayPal payment whose every capture other payments hold (its order, whose capture's webhook
	-- named none and made a payment of its own): its money is theirs, counted there, and each check
	-- would find the same again, for ever.  Flagged for someone to look at, with the holders
	-- (metadata.paypal_capture_held), and not asked again (claim_reconciliation); its status stays
	-- (cancelled it would tell the endpoints the donation was, which it was not)
	IF held_elsewhere IS NOT NULL THEN
		UPDATE payments.payments p
		   SET metadata = p.metadata || jsonb_build_object('paypal_capture_held', held_elsewhere), updated_at = now()
		 WHERE p.id = pay.id;
	END IF;
	RETURN 'error';
END
$$;
COMMENT ON FUNCTION payments.record_reconciliation(bigint, integer, text, text) IS
	'Records a provider''s answer about a stuck payment and applies it through the state machine (apply_change); Paynow''s trace answering NotFound (hash verified) fails the payment; a PayPal capture found that another payment holds (its webhook named no order) is an error, nothing applied, decided under the capture''s lock (paypal_capture_lock), and a payment whose every capture found other payments hold is flagged (metadata.paypal_capture_held: capture id to holder) and not asked again; a provider error, a failed hash check or an answer not understood is recorded and changes nothing; used by reconcile';

CREATE FUNCTION payments.paynow_form(body bytea)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'paynow_form'
LANGUAGE C IMMUTABLE STRICT PARALLEL UNSAFE;	-- parses in a subtransaction, which parallel mode forbids
COMMENT ON FUNCTION payments.paynow_form(bytea) IS
	'The fields of a Paynow urlencoded message (a poll reply) as a JSON object, decoded strictly; NULL if it is not a well-formed form; the hash is checked by verify_paynow';

CREATE PROCEDURE payments.reconcile(max_items integer DEFAULT 50)
AS 'MODULE_PATHNAME', 'reconcile'
LANGUAGE C;
COMMENT ON PROCEDURE payments.reconcile(integer) IS
	'Checks payments pending longer than payments.reconcile_after with their provider (Paynow poll URL or trace, Stripe payment intent, PayPal capture, Eversend transaction) and applies the answers through the state machine: fetches API tokens, claims and records the checks, commits, asks (libcurl, in parallel), records and commits; CALL it outside a transaction block';

CREATE FUNCTION payments.reconciliation_summary(hours_back integer DEFAULT 24)
RETURNS TABLE (metric text, provider text, detail text, count bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH w AS (SELECT now() - make_interval(hours => hours_back) AS since)
	SELECT * FROM (
		SELECT 'payments'::text, p.provider, p.status, count(*)
		  FROM payments.payments p, w WHERE p.created_at >= w.since GROUP BY p.provider, p.status
		UNION ALL
		SELECT 'stuck_pending', s.provider, NULL, count(*) FROM payments.stuck_payments s GROUP BY s.provider
		UNION ALL
		SELECT 'events_' || e.state, e.provider, NULL, count(*)
		  FROM payments.events e WHERE e.state IN ('pending', 'dead') GROUP BY e.state, e.provider
		UNION ALL
		SELECT 'rejections', r.provider, r.reason, count(*)
		  FROM payments.rejections r, w WHERE r.received_at >= w.since GROUP BY r.provider, r.reason
		UNION ALL
		SELECT 'checks', c.provider, coalesce(c.outcome, 'in_flight'), count(*)
		  FROM payments.reconciliation_checks c, w WHERE c.started_at >= w.since GROUP BY c.provider, c.outcome
		UNION ALL
		SELECT 'discrepancies_found', c.provider, NULL, count(*)
		  FROM payments.reconciliation_checks c, w
		 WHERE c.started_at >= w.since AND c.found ->> 'status' IS DISTINCT FROM c.status_before
		   AND c.outcome IN ('fixed', 'refused')
		 GROUP BY c.provider
		UNION ALL
		SELECT 'discrepancies_fixed', c.provider, NULL, count(*)
		  FROM payments.reconciliation_checks c, w WHERE c.started_at >= w.since AND c.outcome = 'fixed'
		 GROUP BY c.provider
		UNION ALL
		SELECT 'outbox_' || o.state, coalesce(e.name, 'whatsapp:' || o.provider), NULL, count(*)
		  FROM payments.outbox o LEFT JOIN payments.endpoints e ON e.id = o.endpoint_id
		 WHERE o.state IN ('pending', 'dead') GROUP BY o.state, coalesce(e.name, 'whatsapp:' || o.provider)
		UNION ALL
		-- payments flagged for someone to look at, changed in the window: Paynow reported another
		-- amount than the payment's, or paid one an admin had approved by hand; a PayPal order
		-- whose captures other payments hold, no longer asked
		-- (each flag of its own kind's payments: another's metadata may carry any key its events give)
		SELECT 'flagged', p.provider, f.flag, count(*)
		  FROM payments.payments p JOIN payments.providers v ON v.name = p.provider
		  JOIN (VALUES ('paynow_amount_mismatch', 'paynow'), ('paynow_paid_after_approval', 'paynow'),
					   ('paypal_capture_held', 'paypal')) AS f (flag, kind) ON f.kind = v.kind
		 CROSS JOIN w
		 WHERE p.updated_at >= w.since AND p.metadata ? f.flag GROUP BY p.provider, f.flag
	) AS t (metric, provider, detail, count)
	ORDER BY 1, 2, 3
$$;
COMMENT ON FUNCTION payments.reconciliation_summary(integer) IS
	'What on-call reads first: payments created in the last hours_back by provider and status, payments stuck pending, events pending and dead, rejections by reason, reconciliation checks by outcome, discrepancies found and fixed, outbox items pending and dead, payments flagged for review (Paynow amount mismatch, paid after a manual approval, a PayPal payment whose captures other payments hold)';

REVOKE ALL ON FUNCTION payments.reconcile_after() FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.api_token_requests(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.store_api_token(text, integer, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.claim_reconciliation(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.record_reconciliation(bigint, integer, text, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE payments.reconcile(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.reconciliation_summary(integer) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_checks', '');
SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_checks_id_seq', '');

--------------------------------------------------------------------------------------------------
-- WhatsApp Flows data endpoint: POST /flows/{provider}, the donation form (encrypted exchanges)
--------------------------------------------------------------------------------------------------

CREATE TABLE payments.flow_keys (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider	text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	private_key	text NOT NULL,
	passphrase	text,
	public_key	text NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT now(),
	revoked_at	timestamptz
);
CREATE INDEX flow_keys_provider_idx ON payments.flow_keys (provider);
COMMENT ON TABLE payments.flow_keys IS
	'RSA private keys of Flows endpoints (PEM, with the passphrase of an encrypted one); every live key is tried, so keys can be rotated';
COMMENT ON COLUMN payments.flow_keys.public_key IS 'The public key (PEM) to upload to Meta for the phone number';

CREATE TABLE payments.flow_tokens (
	token		text PRIMARY KEY CHECK (token ~ '^[A-Za-z0-9_-]{16,128}$'),
	provider	text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	wa_id		text NOT NULL CHECK (payments.whatsapp_user_id(wa_id) IS NOT DISTINCT FROM wa_id),
	created_at	timestamptz NOT NULL DEFAULT now(),
	expires_at	timestamptz NOT NULL,
	CHECK (expires_at > created_at)
);
CREATE INDEX flow_tokens_expires_at_idx ON payments.flow_tokens (expires_at);
COMMENT ON TABLE payments.flow_tokens IS
	'Flow tokens issued to WhatsApp users (the flow_token of a Flow message); the endpoint answers 427 for any other, or an expired one';

-- A failed constraint would show the row, and with it a key's passphrase or a token, in the
-- error and the server's log: these triggers refuse such rows first, naming neither.
CREATE FUNCTION payments.check_flow_key()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.provider IS NULL OR NEW.private_key IS NULL OR NEW.public_key IS NULL OR NEW.created_at IS NULL THEN
		RAISE EXCEPTION 'a Flows key needs a provider, a private key, a public key and created_at'
			USING ERRCODE = 'not_null_violation',
				  HINT = 'Add keys with payments.add_flow_key.';
	END IF;
	-- a key edited by hand (its passphrase changed, say) must still open and give its public key:
	-- one that could not be read failed every Flows request of its provider (an error, not the
	-- other keys tried, nor 421)
	IF TG_OP = 'INSERT' OR ROW(NEW.private_key, NEW.passphrase, NEW.public_key)
						   IS DISTINCT FROM ROW(OLD.private_key, OLD.passphrase, OLD.public_key) THEN
		IF payments.flows_public_key(NEW.private_key, NEW.passphrase) IS DISTINCT FROM NEW.public_key THEN
			RAISE EXCEPTION 'a Flows key''s public_key must be the public key of its private key'
				USING ERRCODE = 'check_violation',
					  HINT = 'Add keys with payments.add_flow_key; for another passphrase, add the key again and revoke the old one.';
		END IF;
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments.check_flow_key() IS
	'Trigger: refuses a flow_keys row its NOT NULL constraints would, or whose private key does not open with its passphrase or give its public_key, with an error that never shows the row (its private key and passphrase)';
CREATE TRIGGER flow_keys_check BEFORE INSERT OR UPDATE ON payments.flow_keys
	FOR EACH ROW EXECUTE FUNCTION payments.check_flow_key();
REVOKE ALL ON FUNCTION payments.check_flow_key() FROM PUBLIC;

CREATE FUNCTION payments.check_flow_token()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.token IS NULL OR NEW.provider IS NULL OR NEW.wa_id IS NULL OR NEW.created_at IS NULL
	   OR NEW.expires_at IS NULL THEN
		RAISE EXCEPTION 'a flow token needs a token, a provider, a wa_id, created_at and expires_at'
			USING ERRCODE = 'not_null_violation';
	END IF;
	IF NEW.token !~ '^[A-Za-z0-9_-]{16,128}$' THEN
		RAISE EXCEPTION 'a flow token is 16 to 128 characters of A-Z, a-z, 0-9, "_" and "-"'
			USING ERRCODE = 'check_violation',
				  HINT = 'Issue tokens with payments.issue_flow_token.';
	END IF;
	-- a phone number as E.164 digits, or a business-scoped user id (the message predates those and
	-- is kept as it was)
	IF payments.whatsapp_user_id(NEW.wa_id) IS DISTINCT FROM NEW.wa_id THEN
		RAISE EXCEPTION 'a flow token''s wa_id is a phone number in international form, digits only, or a business-scoped user id'
			USING ERRCODE = 'check_violation';
	END IF;
	IF NEW.expires_at <= NEW.created_at THEN
		RAISE EXCEPTION 'a flow token expires after it is created'
			USING ERRCODE = 'check_violation';
	END IF;
	IF (TG_OP = 'INSERT' OR NEW.token <> OLD.token)
	   AND EXISTS (SELECT FROM payments.flow_tokens t WHERE t.token = NEW.token) THEN
		RAISE EXCEPTION 'that flow token exists already'
			USING ERRCODE = 'unique_violation';
	END IF;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments.check_flow_token() IS
	'Trigger: refuses a flow_tokens row its constraints would (its key included, as far as rows committed or of this transaction show), with errors that never show the token';
CREATE TRIGGER flow_tokens_check BEFORE INSERT OR UPDATE ON payments.flow_tokens
	FOR EACH ROW EXECUTE FUNCTION payments.check_flow_token();
REVOKE ALL ON FUNCTION payments.check_flow_token() FROM PUBLIC;

CREATE TABLE payments.flow_submissions (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider	text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	flow_token	text NOT NULL UNIQUE,
	wa_id		text NOT NULL,
	amount		numeric NOT NULL CHECK (amount > 0),
	currency	text NOT NULL REFERENCES payments.currencies (code),
	method		text NOT NULL CHECK (method IN ('ecocash', 'onemoney', 'telecash')),
	phone		text CHECK (phone ~ '^[1-9][0-9]{5,14}$'),
	submitted_at timestamptz NOT NULL DEFAULT now(),
	payment_id	bigint REFERENCES payments.payments (id),
	CHECK (phone IS NOT NULL OR method = 'telecash')
);
COMMENT ON TABLE payments.flow_submissions IS
	'Donation requests completed in the WhatsApp Flow, one per flow token; started as Paynow payments at once when the meta provider maps their currency (paynow_providers), else left, in id order, for whatever starts the payment';
COMMENT ON COLUMN payments.flow_submissions.payment_id IS
	'The pending payment started for it (Paynow mobile checkout, as from the chat), or NULL when no Paynow provider is mapped to its currency';
COMMENT ON COLUMN payments.flow_submissions.phone IS
	'The mobile money number, E.164 digits; none for TeleCash, paid on Paynow''s web checkout from a link';

CREATE FUNCTION payments.flows_public_key(private_key text, passphrase text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'flows_public_key'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION payments.flows_public_key(text, text) IS
	'The public key (PEM) of an RSA private key (PEM, optionally encrypted with the passphrase); raises for a key Flows cannot use';

CREATE FUNCTION payments.flows_unwrap_key(encrypted_aes_key text, private_key text, passphrase text DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'flows_unwrap_key'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION payments.flows_unwrap_key(text, text, text) IS
	'The AES-128 key of a Flows request (encrypted_aes_key, base64, RSA-OAEP SHA-256), or NULL when this private key cannot decrypt it';

CREATE FUNCTION payments.flows_decrypt_request(aes_key bytea, initial_vector text, encrypted_flow_data text)
RETURNS text
AS 'MODULE_PATHNAME', 'flows_decrypt_request'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.flows_decrypt_request(bytea, text, text) IS
	'The JSON text of a Flows request (AES-128-GCM, 16-byte IV, base64 of ciphertext and tag; UTF-8), or NULL when it does not decrypt or is not UTF-8';

CREATE FUNCTION payments.flows_encrypt_response(aes_key bytea, initial_vector text, response text)
RETURNS text
AS 'MODULE_PATHNAME', 'flows_encrypt_response'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION payments.flows_encrypt_response(bytea, text, text) IS
	'A Flows response body: base64 of AES-128-GCM ciphertext and tag of the response in UTF-8 under the request''s key and its IV (base64) with every bit flipped';

CREATE FUNCTION payments.add_flow_key(provider text, private_key text, passphrase text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	public_pem	text;
	new_id		bigint;
BEGIN
	IF NOT EXISTS (SELECT FROM payments.providers p WHERE p.name = add_flow_key.provider AND p.kind = 'meta') THEN
		RAISE EXCEPTION 'unknown meta provider "%"', provider
			USING ERRCODE = 'undefined_object',
				  HINT = 'Flows keys belong to a provider of kind meta.';
	END IF;
	public_pem := payments.flows_public_key(private_key, passphrase);
	INSERT INTO payments.flow_keys (provider, private_key, passphrase, public_key)
	VALUES (add_flow_key.provider, add_flow_key.private_key, add_flow_key.passphrase, public_pem)
	RETURNING id INTO new_id;
	RETURN new_id;
END
$$;
COMMENT ON FUNCTION payments.add_flow_key(text, text, text) IS
	'Adds a live RSA private key (PEM, with its passphrase if encrypted) for a meta provider''s Flows endpoint and returns its id; payments.flow_keys.public_key is what to upload to Meta';

CREATE FUNCTION payments.revoke_flow_key(id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE payments.flow_keys k SET revoked_at = now()
	 WHERE k.id = revoke_flow_key.id AND k.revoked_at IS NULL;
	IF NOT FOUND THEN
		IF EXISTS (SELECT FROM payments.flow_keys k WHERE k.id = revoke_flow_key.id) THEN
			RAISE NOTICE 'Flows key % was already revoked', id;
		ELSE
			RAISE EXCEPTION 'unknown Flows key %', id USING ERRCODE = 'undefined_object';
		END IF;
	END IF;
END
$$;
COMMENT ON FUNCTION payments.revoke_flow_key(bigint) IS
	'Revokes a Flows private key at once: requests encrypted for it are answered 421 from now on';

CREATE FUNCTION payments.issue_flow_token(provider text, wa_id text, valid_for interval DEFAULT interval '24 hours')
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- a phone number as E.164 digits, or a business-scoped user id (a user whose number is withheld)
	digits	text := payments.whatsapp_user_id(wa_id);
	token	text := 'ft_' || replace(gen_random_uuid()::text, '-', '');
BEGIN
	IF NOT EXISTS (SELECT FROM payments.providers p WHERE p.name = issue_flow_token.provider AND p.kind = 'meta') THEN
		RAISE EXCEPTION 'unknown meta provider "%"', provider USING ERRCODE = 'undefined_object';
	END IF;
	IF digits IS NULL THEN
		RAISE EXCEPTION 'wa_id must be a WhatsApp id (E.164 digits, or a business-scoped user id such as US.13491208655302741918), not %', coalesce(quote_literal(wa_id), 'NULL')
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF valid_for IS NULL OR valid_for < interval '1 minute' OR valid_for > interval '30 days' THEN
		RAISE EXCEPTION 'valid_for must be between 1 minute and 30 days'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- a BSUID whose user chatted with their number is that conversation's (its donations, *check*)
	IF payments.whatsapp_bsuid(digits) IS NOT NULL THEN
		digits := payments.chat_wa_id_of(provider, digits);
	END IF;
	INSERT INTO payments.flow_tokens (token, provider, wa_id, expires_at)
	VALUES (token, issue_flow_token.provider, digits, now() + valid_for);
	RETURN token;
END
$$;
COMMENT ON FUNCTION payments.issue_flow_token(text, text, interval) IS
	'Issues a random flow token for a WhatsApp user (the flow_token of the Flow message sent to them; wa_id: the phone number, or the business-scoped user id of a user whose number is withheld, which stands for the conversation that carries it: payments.chat_wa_id_of), valid for the given time';

-- The donation form: screen DONATE (amount, currency, method, phone), then CONFIRM, then the
-- Flow closes with SUCCESS.  Every submitted screen is validated again.
CREATE FUNCTION payments.flows_answer(provider text, request jsonb)
RETURNS TABLE (http_status integer, response jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	action		text := request ->> 'action';
	screen		text := request ->> 'screen';
	form		jsonb := request -> 'data';
	tok			payments.flow_tokens;
	settings	jsonb;
	min_amount	numeric;
	max_amount	numeric;
	cfg			jsonb;
	currencies	text[];
	methods		text[];
	choices		jsonb;
	amount		numeric;
	currency	text;
	method		text;
	method_title text;
	web_checkout boolean;			-- paid from a link: no number asked
	phone		text;
	problem		text;
	unavailable	text;					-- why the form can take no donation here
	submission	bigint;
	started		bigint;
	holder		text;					-- whom the token is for, read under its user's lock
BEGIN
	IF action = 'ping' THEN
		RETURN QUERY SELECT 200, '{"data": {"status": "active"}}'::jsonb;
		RETURN;
	END IF;
	IF jsonb_typeof(form) = 'object' AND form ? 'error' THEN		-- the client reports an error
		RETURN QUERY SELECT 200, '{"data": {"acknowledged": true}}'::jsonb;
		RETURN;
	END IF;
	IF action IS NULL OR action NOT IN ('INIT', 'data_exchange', 'BACK') THEN
		RETURN QUERY SELECT 400, jsonb_build_object('error', 'unsupported action');
		RETURN;
	END IF;

	-- (a final submit retried after the token expired answers as the first did)
	SELECT t.* INTO tok FROM payments.flow_tokens t
	 WHERE t.token = request ->> 'flow_token' AND t.provider = flows_answer.provider
	   AND (t.expires_at > now()
			OR (action = 'data_exchange' AND screen = 'CONFIRM'
				AND EXISTS (SELECT FROM payments.flow_submissions s WHERE s.flow_token = t.token)));
	IF NOT FOUND THEN
		RETURN QUERY SELECT 427, jsonb_build_object('error_msg',
			'This donation form has expired. Please ask for a new one.');
		RETURN;
	END IF;
	SELECT s.id INTO submission FROM payments.flow_submissions s WHERE s.flow_token = tok.token;
	IF submission IS NOT NULL AND NOT (action = 'data_exchange' AND screen = 'CONFIRM') THEN
		RETURN QUERY SELECT 427, jsonb_build_object('error_msg',
			'This donation was already submitted. Please ask for a new form to give again.');
		RETURN;
	END IF;
	-- a final submit repeated (Meta retries; the donor taps again) answers as the first did, the
	-- form not checked again against settings changed since, nor its data read at all
	IF submission IS NOT NULL THEN
		RETURN QUERY SELECT 200, jsonb_build_object('screen', 'SUCCESS', 'data', jsonb_build_object(
			'extension_message_response', jsonb_build_object('params', jsonb_build_object(
				'flow_token', tok.token, 'submission_id', submission))));
		RETURN;
	END IF;

	SELECT p.settings INTO settings FROM payments.providers p WHERE p.name = flows_answer.provider;
	cfg := payments.chat_settings(settings);
	-- a chat that starts the payments offers what it takes: the currencies it maps to Paynow
	-- providers and its methods; else the form's own, left for whatever starts the payment
	IF coalesce(cfg -> 'paynow_providers', '{}') <> '{}' THEN
		currencies := ARRAY(SELECT k FROM jsonb_object_keys(cfg -> 'paynow_providers') k
							 WHERE k IN ('USD', 'ZWG') ORDER BY k);
		methods := ARRAY(SELECT m FROM jsonb_array_elements_text(cfg -> 'methods') WITH ORDINALITY AS x (m, n)
						  WHERE m IN ('ecocash', 'onemoney', 'telecash') ORDER BY n);
	ELSE
		currencies := '{USD,ZWG}';
		methods := '{ecocash,onemoney,telecash}';
	END IF;
	-- the form shows the widest range over its currencies; the chosen currency's is checked below
	SELECT min(r.low), max(r.high) INTO min_amount, max_amount
	  FROM unnest(currencies) AS c, payments.chat_amount_range(cfg, c) r;
	choices := jsonb_build_object(
		'currencies', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', c, 'title', c) ORDER BY n), '[]')
						 FROM unnest(currencies) WITH ORDINALITY AS x (c, n)),
		'methods', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', m, 'title', payments.chat_method_label(m)) ORDER BY n), '[]')
					  FROM unnest(methods) WITH ORDINALITY AS x (m, n)),
		'min_amount', coalesce(min_amount::text, ''), 'max_amount', coalesce(max_amount::text, ''),
		-- the token's user as the number's default: a phone number only (not a business-scoped user id)
		'phone', coalesce(payments.e164_digits(tok.wa_id), ''));

	-- a chat whose currencies or methods the form cannot offer (only card, say): nothing to choose
	IF cardinality(currencies) = 0 OR cardinality(methods) = 0 THEN
		unavailable := 'Donations cannot be made with this form. Please donate in the chat instead.';
	END IF;
	IF action IN ('INIT', 'BACK') THEN
		RETURN QUERY SELECT 200, jsonb_build_object('screen', 'DONATE',
			'data', choices || jsonb_build_object('error_message', coalesce(unavailable, '')));
		RETURN;
	END IF;
	IF screen IS NULL OR screen NOT IN ('DONATE', 'CONFIRM') OR jsonb_typeof(form) IS DISTINCT FROM 'object' THEN
		RETURN QUERY SELECT 400, jsonb_build_object('error', 'unknown screen or no form data');
		RETURN;
	END IF;

	-- the form: amount as a number or decimal text, a currency, a method, the method's number (none
	-- for a method paid from a link, TeleCash: what is sent is ignored)
	IF jsonb_typeof(form -> 'amount') IN ('number', 'string')
	   AND payments.chat_trim(form ->> 'amount') ~ '^[0-9]{1,9}([.][0-9]{1,2})?$' THEN
		amount := round(payments.chat_trim(form ->> 'amount')::numeric, 2);
	END IF;
	currency := form ->> 'currency';
	method := form ->> 'method';
	method_title := CASE WHEN method = ANY (methods) THEN payments.chat_method_label(method) END;
	web_checkout := payments.paynow_web_checkout(method);
	-- read as the chat reads a number typed (payments.chat_local_phone), kept as E.164 digits
	phone := CASE WHEN web_checkout THEN NULL ELSE '263' || substr(payments.chat_local_phone(form ->> 'phone'), 2) END;
	IF currency = ANY (currencies) THEN
		SELECT r.low, r.high INTO min_amount, max_amount FROM payments.chat_amount_range(cfg, currency) r;
	END IF;
	problem := CASE
		WHEN unavailable IS NOT NULL THEN unavailable
		WHEN amount IS NULL THEN 'Enter the amount as a number, for example 10 or 10.50.'
		WHEN currency IS NULL OR NOT currency = ANY (currencies) THEN
			'Choose ' || payments.chat_or_list(currencies) || '.'
		WHEN amount < min_amount OR amount > max_amount THEN
			format('The amount must be between %s and %s%s.', min_amount, max_amount,
				   ' ' || currency)
		WHEN method_title IS NULL THEN
			'Choose ' || payments.chat_or_list(ARRAY(SELECT payments.chat_method_label(m)
														FROM unnest(methods) WITH ORDINALITY AS x (m, n) ORDER BY n)) || '.'
		WHEN web_checkout THEN NULL
		WHEN phone IS NULL THEN 'Enter a Zimbabwean mobile number, for example 0771234567.'
		WHEN NOT payments.paynow_phone_fits(method, '0' || substr(phone, 4)) THEN
			format('That is not a %s number.', method_title)
	END;
	IF problem IS NOT NULL THEN
		RETURN QUERY SELECT 200, jsonb_build_object('screen', 'DONATE',
			'data', choices || jsonb_build_object('error_message', problem));
		RETURN;
	END IF;

	IF screen = 'DONATE' THEN
		RETURN QUERY SELECT 200, jsonb_build_object('screen', 'CONFIRM', 'data', jsonb_build_object(
			'amount', amount::text, 'currency', currency, 'method', method, 'phone', coalesce(phone, ''),
			'summary', format('%s %s by %s%s', currency, amount, method_title,
							  coalesce(' from ' || phone, ' (on Paynow''s page, from a link sent in the chat)'))));
		RETURN;
	END IF;

	-- CONFIRM: the final submit, stored once per token (a retry answers the same); when the chat
	-- maps the currency to a Paynow provider, the payment starts as a confirmed chat donation does
	-- (Paynow takes the mobile number in local form, 07...).  Under the lock of the token's user,
	-- as the chat's own donations are (payments.chat_lock_user): a number change being applied
	-- (payments.chat_move_user) is waited for, and the token read again, for it may have moved the
	-- token, whose donation then belongs to the new number (its notices, *check*, the donor's key)
	LOOP
		PERFORM payments.chat_lock_user(flows_answer.provider, tok.wa_id);
		SELECT t.wa_id INTO holder FROM payments.flow_tokens t WHERE t.token = tok.token;
		EXIT WHEN holder IS NULL OR holder = tok.wa_id;
		tok.wa_id := holder;
	END LOOP;
	INSERT INTO payments.flow_submissions (provider, flow_token, wa_id, amount, currency, method, phone)
	VALUES (flows_answer.provider, tok.token, tok.wa_id, amount, currency, method, phone)
	ON CONFLICT (flow_token) DO NOTHING
	RETURNING id INTO submission;
	IF submission IS NOT NULL AND cfg -> 'paynow_providers' ? currency THEN
		-- the donor's name as the chat knows it (their WhatsApp profile), and the chat's first
		-- purpose: the form asks for none
		started := payments.chat_start_payment(NULL, flows_answer.provider, tok.wa_id,
			(SELECT cs.name FROM payments.chat_sessions cs
			  WHERE cs.provider = flows_answer.provider AND cs.wa_id = tok.wa_id),
			cfg, jsonb_strip_nulls(jsonb_build_object('amount', to_char(amount, 'FM999999990.00'),
			'currency', currency, 'method', method, 'phone', '0' || substr(phone, 4),
			'purpose', cfg -> 'purposes' ->> 0)));
		IF started IS NULL THEN
			-- refused (too many requests to the number, a currency no longer taken), the donor told
			-- why in the chat: not kept as a submission waiting to start, and the form says so
			DELETE FROM payments.flow_submissions s WHERE s.id = submission;
			RETURN QUERY SELECT 200, jsonb_build_object('screen', 'DONATE', 'data', choices || jsonb_build_object(
				'error_message', 'This donation could not be started: see our message in the chat. Nothing was charged.'));
			RETURN;
		END IF;
		UPDATE payments.flow_submissions s SET payment_id = started WHERE s.id = submission;
	END IF;
	SELECT s.id INTO submission FROM payments.flow_submissions s WHERE s.flow_token = tok.token;
	RETURN QUERY SELECT 200, jsonb_build_object('screen', 'SUCCESS', 'data', jsonb_build_object(
		'extension_message_response', jsonb_build_object('params', jsonb_build_object(
			'flow_token', tok.token, 'submission_id', submission))));
END
$$;
COMMENT ON FUNCTION payments.flows_answer(text, jsonb) IS
	'Answers a decrypted Flows request of the donation form: ping, error notifications, INIT/BACK, data_exchange of DONATE and CONFIRM (status 200 or 427, the response JSON; other statuses carry {"error": ...})';

CREATE FUNCTION payments.record_flows_rejection(provider text, outcome text, reason text, detail text,
												body bytea, headers jsonb, source_ip inet, request_id text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO payments.rejections (provider, outcome, reason, detail, source_ip, request_id,
									 body_sha256, body_size, headers)
	VALUES (provider, outcome, reason, detail, source_ip, request_id, sha256(body), length(body),
			payments.rejected_headers(coalesce(headers, '{}')))
$$;
COMMENT ON FUNCTION payments.record_flows_rejection(text, text, text, text, bytea, jsonb, inet, text) IS
	'Records a refused Flows request like a refused webhook: reason, sender, hash and size of the body, headers without credentials';

-- The AES keys of the Flows requests answered, by the SHA-256 of their encrypted_aes_key: an answer
-- is encrypted with the request's key and its IV flipped, so a request replayed (its signature has
-- no time) and answered again with another text (427 once its token is spent) would give two
-- plaintexts under one key and nonce, and with them the first answer (a donor's phone and amount)
-- and GCM's authentication key.  A key seen before is answered 421: Meta encrypts again with a new
-- one.  Kept for ever (a replay may come at any time): 32 bytes and a time for each request
CREATE TABLE payments.flow_request_keys (
	key_digest	bytea PRIMARY KEY,
	provider	text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	seen_at		timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE payments.flow_request_keys IS
	'The AES keys of the WhatsApp Flows requests answered (SHA-256 of encrypted_aes_key as sent): one seen again is a replay, answered 421 (payments.flows_exchange)';

CREATE FUNCTION payments.flows_exchange(provider text, headers jsonb, body bytea,
										source_ip inet DEFAULT NULL, request_id text DEFAULT NULL)
RETURNS TABLE (http_status integer, outcome text, response text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	signature	text := headers ->> 'x-hub-signature-256';
	verdict		text := 'no_live_secret';
	s			record;
	envelope	jsonb;
	aes_key		bytea;
	plain		text;
	request		jsonb;
	answer		record;
BEGIN
	IF body IS NULL THEN
		RAISE EXCEPTION 'body must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT EXISTS (SELECT FROM payments.providers p WHERE p.name = flows_exchange.provider AND p.kind = 'meta') THEN
		RETURN QUERY SELECT 404, 'unknown_provider', 'not found';
		RETURN;
	END IF;

	-- 432: X-Hub-Signature-256 with the app secret, over the raw body, before anything else
	IF signature IS NULL THEN
		verdict := 'missing_header';
	ELSE
		FOR s IN SELECT x.secret FROM payments.secrets x
				  WHERE x.provider = flows_exchange.provider AND x.revoked_at IS NULL
					AND (x.expires_at IS NULL OR x.expires_at > now())
				  ORDER BY x.id DESC LOOP
			verdict := payments.verify_meta(body, signature, s.secret);
			EXIT WHEN verdict IS DISTINCT FROM 'signature_mismatch';
		END LOOP;
	END IF;
	IF verdict IS DISTINCT FROM 'valid' THEN	-- fails closed, a NULL verdict included
		PERFORM payments.record_flows_rejection(provider, 'rejected', verdict,
			'Flows request: ' || CASE verdict
				WHEN 'missing_header' THEN 'no x-hub-signature-256 header'
				WHEN 'malformed_header' THEN 'x-hub-signature-256 is not sha256= and 64 lowercase hex digits'
				WHEN 'no_live_secret' THEN 'the provider has no live app secret'
				ELSE 'x-hub-signature-256 matches no live app secret' END,
			body, headers, source_ip, request_id);
		RETURN QUERY SELECT 432, 'rejected', 'signature verification failed';
		RETURN;
	END IF;

	-- 400: not the JSON envelope of three strings
	-- (nesting deeper than the stack allows is a program limit, the body's doing: 400 as well)
	BEGIN
		envelope := convert_from(body, 'UTF8')::jsonb;
	EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
		envelope := NULL;
	END;
	IF jsonb_typeof(envelope) IS DISTINCT FROM 'object'
	   OR jsonb_typeof(envelope -> 'encrypted_flow_data') IS DISTINCT FROM 'string'
	   OR jsonb_typeof(envelope -> 'encrypted_aes_key') IS DISTINCT FROM 'string'
	   OR jsonb_typeof(envelope -> 'initial_vector') IS DISTINCT FROM 'string' THEN
		PERFORM payments.record_flows_rejection(provider, 'invalid', 'invalid_envelope',
			'Flows request: not a JSON object with string encrypted_flow_data, encrypted_aes_key and initial_vector',
			body, headers, source_ip, request_id);
		RETURN QUERY SELECT 400, 'invalid', 'malformed request';
		RETURN;
	END IF;

	-- 421: no live key opens the AES key, or the data does not decrypt (Meta re-fetches the public key)
	FOR s IN SELECT k.private_key, k.passphrase FROM payments.flow_keys k
			  WHERE k.provider = flows_exchange.provider AND k.revoked_at IS NULL
			  ORDER BY k.id DESC LOOP
		aes_key := payments.flows_unwrap_key(envelope ->> 'encrypted_aes_key', s.private_key, s.passphrase);
		EXIT WHEN aes_key IS NOT NULL;
	END LOOP;
	IF aes_key IS NOT NULL THEN
		plain := payments.flows_decrypt_request(aes_key, envelope ->> 'initial_vector',
												envelope ->> 'encrypted_flow_data');
	END IF;
	IF plain IS NULL THEN
		PERFORM payments.record_flows_rejection(provider, 'rejected',
			CASE WHEN aes_key IS NULL THEN 'flows_key_mismatch' ELSE 'flows_decrypt_failed' END,
			CASE WHEN aes_key IS NULL THEN 'Flows request: no live Flows key decrypts encrypted_aes_key'
				 ELSE 'Flows request: encrypted_flow_data does not decrypt with the AES key and initial_vector' END,
			body, headers, source_ip, request_id);
		RETURN QUERY SELECT 421, 'undecryptable', 'cannot decrypt the request';
		RETURN;
	END IF;

	-- 421: a request replayed (its AES key answered before; in this transaction, so that one not
	-- answered, rolled back, may come again)
	INSERT INTO payments.flow_request_keys (key_digest, provider)
	VALUES (pg_catalog.sha256(pg_catalog.convert_to(envelope ->> 'encrypted_aes_key', 'UTF8')), flows_exchange.provider)
	ON CONFLICT (key_digest) DO NOTHING;
	IF NOT FOUND THEN
		PERFORM payments.record_flows_rejection(provider, 'rejected', 'flows_key_replayed',
			'Flows request: its encrypted_aes_key was answered before (a replay: answered 421, Meta encrypts again with a new key)',
			body, headers, source_ip, request_id);
		RETURN QUERY SELECT 421, 'undecryptable', 'cannot decrypt the request';
		RETURN;
	END IF;

	BEGIN
		request := plain::jsonb;
	EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
		request := NULL;
	END;
	IF jsonb_typeof(request) IS DISTINCT FROM 'object' THEN
		PERFORM payments.record_flows_rejection(provider, 'invalid', 'invalid_json',
			'Flows request: the decrypted request is not a JSON object', body, headers, source_ip, request_id);
		RETURN QUERY SELECT 400, 'invalid', 'malformed request';
		RETURN;
	END IF;

	SELECT a.http_status, a.response INTO answer FROM payments.flows_answer(provider, request) a;
	IF answer.http_status NOT IN (200, 427) THEN
		RETURN QUERY SELECT answer.http_status::integer, 'invalid', answer.response ->> 'error';
		RETURN;
	END IF;
	RETURN QUERY SELECT answer.http_status::integer,
		CASE answer.http_status WHEN 200 THEN 'answered' ELSE 'invalid_flow_token' END,
		payments.flows_encrypt_response(aes_key, envelope ->> 'initial_vector', answer.response::text);
END
$$;
COMMENT ON FUNCTION payments.flows_exchange(text, jsonb, bytea, inet, text) IS
	'The shim''s call for POST /flows/{provider}: verifies, decrypts and answers a WhatsApp Flows request; returns the HTTP status, the outcome (answered, invalid_flow_token, rejected, undecryptable, invalid, unknown_provider) and the plain-text body (the encrypted response for 200 and 427)';

REVOKE ALL ON FUNCTION payments.flows_exchange(text, jsonb, bytea, inet, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.flows_answer(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.record_flows_rejection(text, text, text, text, bytea, jsonb, inet, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.add_flow_key(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.revoke_flow_key(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.issue_flow_token(text, text, interval) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('payments.flow_keys', '');
SELECT pg_catalog.pg_extension_config_dump('payments.flow_keys_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.flow_tokens', '');
SELECT pg_catalog.pg_extension_config_dump('payments.flow_submissions', '');
SELECT pg_catalog.pg_extension_config_dump('payments.flow_request_keys', '');
SELECT pg_catalog.pg_extension_config_dump('payments.flow_submissions_id_seq', '');

--------------------------------------------------------------------------------------------------
-- WhatsApp donations: the donors' conversation, Paynow mobile checkout, receipts in the chat,
-- admin commands, volunteers
--------------------------------------------------------------------------------------------------

-- Settings of the conversation live with the meta provider (DESIGN.md section 3); these are
-- the defaults of the keys not given.
CREATE FUNCTION payments.chat_settings(settings jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object(
		'min_amount', 1, 'max_amount', 480, 'session_timeout', 1800, 'rate_limit', 30, 'rate_window', 600,
		'methods', '["ecocash", "onemoney", "telecash"]'::jsonb, 'purposes', '["General fund"]'::jsonb,
		'admin_numbers', '[]'::jsonb, 'paynow_providers', '{}'::jsonb) || settings
$$;
COMMENT ON FUNCTION payments.chat_settings(jsonb) IS
	'A meta provider''s settings with the conversation''s defaults filled in: amounts 1 to 480, sessions idle 1800 s, 30 messages per 600 s, methods EcoCash, OneMoney, TeleCash, purpose "General fund"';

-- min_amount and max_amount are each a number for every currency, or an object from currency to
-- number, since one range does not fit USD and ZWG alike (ZWG 480 is about USD 18); a currency
-- the object does not name has the default
CREATE FUNCTION payments.chat_amount_limit(cfg jsonb, setting text, currency text)
RETURNS numeric
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN jsonb_typeof(cfg -> setting) = 'object'
				THEN coalesce((cfg -> setting ->> currency)::numeric,
							  (payments.chat_settings('{}') ->> setting)::numeric)
				ELSE (cfg ->> setting)::numeric END
$$;
COMMENT ON FUNCTION payments.chat_amount_limit(jsonb, text, text) IS
	'The min_amount or max_amount of conversation settings (payments.chat_settings) for a currency: the number, or the currency''s in an object (else the default)';

CREATE FUNCTION payments.chat_amount_range(cfg jsonb, currency text, OUT low numeric, OUT high numeric)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT min(payments.chat_amount_limit(cfg, 'min_amount', c)), max(payments.chat_amount_limit(cfg, 'max_amount', c))
	  FROM (SELECT currency WHERE currency IS NOT NULL
			UNION ALL
			SELECT k FROM jsonb_object_keys(coalesce(cfg -> 'paynow_providers', '{}')) k WHERE currency IS NULL
			UNION ALL
			SELECT NULL WHERE currency IS NULL AND coalesce(cfg -> 'paynow_providers', '{}') = '{}') AS x (c)
$$;
COMMENT ON FUNCTION payments.chat_amount_range(jsonb, text) IS
	'The amounts a donation may have in a currency, from conversation settings (payments.chat_settings); for a NULL currency (not chosen yet) the widest over the currencies of paynow_providers';

CREATE FUNCTION payments.chat_settings_problem(settings jsonb)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	bad		text;
	cfg		jsonb;
BEGIN
	IF settings ? 'access_token' AND (coalesce(settings ->> 'access_token', '') !~ '^[!-~]+$'
									 OR length(settings ->> 'access_token') > 1000) THEN
		RETURN 'access_token must be 1 to 1000 printable ASCII characters without spaces';
	END IF;
	IF settings ? 'phone_number_id' AND coalesce(settings ->> 'phone_number_id', '') !~ '^[0-9]{1,30}$' THEN
		RETURN 'phone_number_id must be a string of digits: the id of the number in Meta''s app dashboard, not the phone number';
	END IF;
	IF settings ? 'admin_numbers' AND (jsonb_typeof(settings -> 'admin_numbers') <> 'array'
		OR EXISTS (SELECT FROM jsonb_array_elements(settings -> 'admin_numbers') a
					WHERE jsonb_typeof(a) <> 'string' OR payments.chat_admin_id(a #>> '{}') IS NULL)) THEN
		RETURN 'admin_numbers must be an array of phone numbers in international form or business-scoped user ids, e.g. ["263771234567"]';
	END IF;
	IF settings ? 'paynow_providers' THEN
		IF jsonb_typeof(settings -> 'paynow_providers') <> 'object' THEN
			RETURN 'paynow_providers must be an object from currency to paynow provider, e.g. {"USD": "paynow-usd"}';
		END IF;
		SELECT e.k INTO bad FROM jsonb_each(settings -> 'paynow_providers') AS e (k, v)
		 WHERE NOT EXISTS (SELECT FROM payments.currencies c WHERE c.code = e.k::bpchar)
			OR jsonb_typeof(e.v) <> 'string'
			OR NOT EXISTS (SELECT FROM payments.providers p WHERE p.name = e.v #>> '{}' AND p.kind = 'paynow'
							  AND coalesce(p.settings ->> 'currency', 'USD') = e.k)
		 LIMIT 1;
		IF bad IS NOT NULL THEN
			RETURN format('paynow_providers: "%s" must be an ISO 4217 code mapped to a registered provider of kind paynow whose currency setting is that currency', bad);
		END IF;
		IF (SELECT count(*) FROM jsonb_object_keys(settings -> 'paynow_providers')) > 3 THEN
			RETURN 'paynow_providers takes at most 3 currencies (one reply button each)';
		END IF;
		-- card and TeleCash donors pay on Paynow's page, which then sends their browser to return_url
		SELECT p.name INTO bad FROM jsonb_each(chat_settings_problem.settings -> 'paynow_providers') AS e (k, v)
		  JOIN payments.providers p ON p.name = e.v #>> '{}'
		 WHERE NOT p.settings ? 'return_url'
		   AND payments.chat_settings(chat_settings_problem.settings) -> 'methods' ?| '{card,telecash}'::text[]
		 LIMIT 1;
		IF bad IS NOT NULL THEN
			RETURN format('paynow provider "%s" needs a return_url setting: card and TeleCash donors are sent back there from Paynow''s page (its result_url takes Paynow''s POSTs only)', bad);
		END IF;
	END IF;
	IF settings ? 'methods' AND (jsonb_typeof(settings -> 'methods') <> 'array'
		OR jsonb_array_length(settings -> 'methods') = 0
		OR EXISTS (SELECT FROM jsonb_array_elements(settings -> 'methods') m
					WHERE jsonb_typeof(m) <> 'string'
					   OR NOT (m #>> '{}' = ANY ('{ecocash,onemoney,telecash,card}'::text[])))
		OR (SELECT count(DISTINCT m) <> count(*) FROM jsonb_array_elements(settings -> 'methods') m)) THEN
		RETURN 'methods must be a non-empty array of distinct methods among ecocash, onemoney, telecash, card';
	END IF;
	IF settings ? 'purposes' AND (jsonb_typeof(settings -> 'purposes') <> 'array'
		OR jsonb_array_length(settings -> 'purposes') NOT BETWEEN 1 AND 3
		OR EXISTS (SELECT FROM jsonb_array_elements(settings -> 'purposes') u
					WHERE jsonb_typeof(u) <> 'string' OR length(u #>> '{}') NOT BETWEEN 1 AND 20
					   OR btrim(u #>> '{}') = '')
		OR (SELECT count(DISTINCT lower(btrim(u #>> '{}'))) <> count(*) FROM jsonb_array_elements(settings -> 'purposes') u)) THEN
		RETURN 'purposes must be an array of 1 to 3 distinct names of 1 to 20 characters, not blank (reply buttons, whose titles Meta wants unique)';
	END IF;
	SELECT k INTO bad FROM unnest('{min_amount,max_amount}'::text[]) AS k
	 WHERE settings ? k
	   AND NOT (jsonb_typeof(settings -> k) = 'number' AND (settings ->> k)::numeric > 0)
	   AND NOT (jsonb_typeof(settings -> k) = 'object'
				AND NOT EXISTS (SELECT FROM jsonb_each(settings -> k) AS e (c, v)
								 WHERE jsonb_typeof(e.v) <> 'number' OR (e.v #>> '{}')::numeric <= 0
									OR NOT EXISTS (SELECT FROM payments.currencies x WHERE x.code = e.c::bpchar)))
	 LIMIT 1;
	IF bad IS NOT NULL THEN
		RETURN format('%s must be a positive number, or an object from ISO 4217 code to positive number, e.g. {"USD": 480, "ZWG": 13000}', bad);
	END IF;
	SELECT k INTO bad FROM (VALUES ('session_timeout', 10, 604800), ('rate_limit', 1, 10000), ('rate_window', 1, 86400))
		AS t (k, lo, hi)
	 WHERE settings ? k AND (jsonb_typeof(settings -> k) <> 'number' OR (settings ->> k)::numeric <> trunc((settings ->> k)::numeric)
							 OR (settings ->> k)::numeric NOT BETWEEN lo AND hi) LIMIT 1;
	IF bad IS NOT NULL THEN
		RETURN format('%s must be a whole number (%s)', bad,
					  CASE bad WHEN 'session_timeout' THEN 'seconds, 10 to 604800' WHEN 'rate_limit' THEN 'messages, 1 to 10000'
							   ELSE 'seconds, 1 to 86400' END);
	END IF;
	SELECT k INTO bad FROM unnest('{receipt_template,notice_template}'::text[]) AS k
	 WHERE settings ? k AND NOT (jsonb_typeof(settings -> k) = 'object'
		AND coalesce(settings -> k ->> 'name', '') ~ '^[a-z0-9_]+$'
		AND length(settings -> k ->> 'name') <= 512
		AND coalesce(settings -> k ->> 'language', '') ~ '^[a-z]{2,3}(_[A-Z]{2})?$'
		AND (SELECT count(*) FROM jsonb_object_keys(settings -> k)) = 2) LIMIT 1;
	IF bad IS NOT NULL THEN
		RETURN bad || ' must be {"name": "...", "language": "..."}: an approved WhatsApp template''s name (lower case, digits, _) and language code (e.g. en or en_US)';
	END IF;
	cfg := payments.chat_settings(settings);
	SELECT coalesce(' for ' || c, '') INTO bad
	  FROM (SELECT NULL::text
			UNION SELECT jsonb_object_keys(CASE jsonb_typeof(cfg -> 'min_amount') WHEN 'object' THEN cfg -> 'min_amount' ELSE '{}' END)
			UNION SELECT jsonb_object_keys(CASE jsonb_typeof(cfg -> 'max_amount') WHEN 'object' THEN cfg -> 'max_amount' ELSE '{}' END)
			UNION SELECT jsonb_object_keys(CASE jsonb_typeof(cfg -> 'paynow_providers') WHEN 'object' THEN cfg -> 'paynow_providers' ELSE '{}' END)
		   ) AS x (c)
	 WHERE payments.chat_amount_limit(cfg, 'min_amount', c) > payments.chat_amount_limit(cfg, 'max_amount', c)
	 ORDER BY c NULLS FIRST LIMIT 1;
	IF bad IS NOT NULL THEN
		RETURN 'min_amount must not be more than max_amount' || bad;
	END IF;
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION payments.chat_settings_problem(jsonb) IS
	'Why a meta provider''s WhatsApp settings cannot serve (access_token, phone_number_id, admin_numbers, paynow_providers, methods, purposes, amounts, timeouts, rate limit, receipt_template, notice_template), or NULL';

-- What the chat serializes, a row each, locked FOR UPDATE until the transaction ends: a WhatsApp
-- id of a provider ("chat <provider> <id>"), whose conversations are created and moved one at a
-- time, and a phone ("prompts <phone>"), whose prompts are counted one after the other.  Rows, not
-- advisory locks: anyone may take an advisory lock, and its key (a hash of the provider, public in
-- the webhook's URL, and a donor's number) made a donor's webhooks wait, and the deliveries
-- batched with them, on a session of a role with no right on payments at all
CREATE TABLE payments.chat_locks (
	name	text COLLATE "C" PRIMARY KEY
);
COMMENT ON TABLE payments.chat_locks IS
	'A row per WhatsApp id of a provider (chat <provider> <id>) and per prompted phone (prompts <phone>), locked by payments.chat_lock to serialize their conversations and prompt counts (rows: only the extension''s functions may lock them, unlike advisory locks)';

CREATE TABLE payments.chat_sessions (
	provider		text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	wa_id			text NOT NULL CHECK (payments.whatsapp_user_id(wa_id) IS NOT DISTINCT FROM wa_id),
	name			text,
	state			text NOT NULL DEFAULT 'menu'
					CHECK (state IN ('menu', 'amount', 'currency', 'method', 'phone', 'purpose', 'confirm', 'edit',
									 'volunteer_name', 'volunteer_skills', 'volunteer_availability')),
	draft			jsonb NOT NULL DEFAULT '{}',
	last_message_at	timestamptz,
	last_activity_at timestamptz NOT NULL DEFAULT now(),
	tokens			double precision NOT NULL,
	tokens_at		timestamptz NOT NULL DEFAULT now(),
	limited_at		timestamptz,
	media_notice_at	timestamptz,
	messages		bigint NOT NULL DEFAULT 0,
	user_id			text CHECK (payments.whatsapp_bsuid(user_id) IS NOT DISTINCT FROM user_id),
	last_seen_at	timestamptz,
	PRIMARY KEY (provider, wa_id)
);
-- a message without the phone number finds the conversation its BSUID was last seen in
CREATE INDEX chat_sessions_user_idx ON payments.chat_sessions (provider, user_id) WHERE user_id IS NOT NULL;
COMMENT ON TABLE payments.chat_sessions IS
	'One WhatsApp conversation per user (wa_id: the phone number, else the business-scoped user id of a user whose number Meta withholds) and meta provider: where it is (state), the donation or registration being drafted (at the menu after a notice of a donation still waiting, that donation: warned, which a typed donate anyway goes past), Meta''s time of the last message answered, the last activity (sessions expire after session_timeout), and the token bucket of the rate limit';
COMMENT ON COLUMN payments.chat_sessions.last_seen_at IS
	'Meta''s time of the latest message from this id, answered or not (a reaction, a Flow''s completion, one over the rate limit): a notice that the user changed number, older than it, moves nothing (payments.chat_move_user)';
COMMENT ON COLUMN payments.chat_sessions.limited_at IS 'When the number ran out of tokens and was told so once; NULL: not limited';
COMMENT ON COLUMN payments.chat_sessions.user_id IS
	'The user''s business-scoped user id (BSUID, Meta''s messages[].from_user_id), from the last message that carried one: a message whose phone number Meta withholds continues the conversation that has it (its wa_id, the phone number, is still what messages are sent to)';
-- The conversation of a business-scoped user id: one that carries it (a phone number's first: the
-- user chatted with their number, then hid it), else the id itself
CREATE FUNCTION payments.chat_wa_id_of(provider text, user_id text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce((SELECT cs.wa_id FROM payments.chat_sessions cs
					  WHERE cs.provider = chat_wa_id_of.provider AND cs.user_id = chat_wa_id_of.user_id
					  ORDER BY cs.wa_id = chat_wa_id_of.user_id, cs.last_activity_at DESC LIMIT 1), user_id)
$$;
COMMENT ON FUNCTION payments.chat_wa_id_of(text, text) IS
	'The wa_id of the conversation a WhatsApp business-scoped user id belongs to: the conversation whose user_id it is (a phone number''s before the id''s own, then the latest), else the id itself';

COMMENT ON COLUMN payments.chat_sessions.media_notice_at IS 'When the number was last told that only text and buttons are read (once a minute at most: an album is several messages)';

CREATE TABLE payments.chat_donations (
	payment_id		bigint PRIMARY KEY REFERENCES payments.payments (id) ON DELETE CASCADE,
	provider		text NOT NULL REFERENCES payments.providers (name),
	wa_id			text NOT NULL,
	purpose			text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	unsent_notice	text CHECK (unsent_notice IN ('paid', 'failed', 'cancelled', 'refunded')),
	thanked_at		timestamptz
);
CREATE INDEX chat_donations_wa_idx ON payments.chat_donations (provider, wa_id, payment_id);
COMMENT ON TABLE payments.chat_donations IS
	'Payments started in a WhatsApp conversation: who gets the receipt or the failure message, and what the gift is for';
COMMENT ON COLUMN payments.chat_donations.thanked_at IS
	'When the donor''s thank-you with the receipt was queued (payments.chat_payment_notice): a donation paid again, its dispute won or settled by /approve, is not thanked twice';
COMMENT ON COLUMN payments.chat_donations.unsent_notice IS
	'The last notice the donor was not sent: failed, cancelled or refunded, due more than 23 hours after their last message (Meta delivers free text only within 24 hours of it) while the provider had no notice_template (payments.chat_payment_notice); paid, the thank-you with the receipt sent as text and failed by Meta with 131047 while the provider had no receipt_template (payments.chat_resend_notice); the clinic tells them another way (the admin command /unsent lists them)';

CREATE SEQUENCE payments.chat_reference_seq;
COMMENT ON SEQUENCE payments.chat_reference_seq IS 'The last part of WhatsApp donations'' merchant references, WA-YYYYMMDD-N';

CREATE TABLE payments.paynow_initiations (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	payment_id		bigint NOT NULL UNIQUE REFERENCES payments.payments (id) ON DELETE CASCADE,
	provider		text NOT NULL REFERENCES payments.providers (name),
	reference		text NOT NULL,
	method			text NOT NULL CHECK (method IN ('ecocash', 'onemoney', 'telecash', 'card')),
	phone			text CHECK (phone ~ '^0[0-9]{9}$'),
	state			text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sending', 'done', 'error', 'unconfirmed', 'skipped')),
	created_at		timestamptz NOT NULL DEFAULT now(),
	started_at		timestamptz,
	finished_at		timestamptz,
	http_status		integer,
	paynow_status	text,
	instructions	text,
	error			text,
	merchanttrace	text,			-- as sent, with the integration it was sent to: what a trace asks
	integration_id	text,
	UNIQUE (provider, reference),
	CHECK (method IN ('card', 'telecash') OR phone IS NOT NULL)
);
CREATE INDEX paynow_initiations_queued_idx ON payments.paynow_initiations (id) WHERE state IN ('queued', 'sending');
-- the requests a number had in the last 24 hours (payments.chat_start_payment's limits)
CREATE INDEX paynow_initiations_phone_idx ON payments.paynow_initiations (phone, created_at) WHERE phone IS NOT NULL;
COMMENT ON TABLE payments.paynow_initiations IS
	'Paynow transactions to initiate (mobile: remotetransaction; card: initiatetransaction), queued with their pending payment and sent by payments.initiate_payments. queued; sending (committed before the request; never sent twice); done (reply hash verified, pollurl kept); error (Paynow refused it, it was never sent, or, for a web checkout, card or telecash, its reply with the only link to pay it was lost: the payment failed); unconfirmed (a mobile one that may have reached Paynow, which did not answer usably: the payment stays pending, for Paynow''s status update or reconciliation''s trace by merchant trace to settle); skipped (the payment was no longer pending when its turn came, e.g. approved by hand; or the donor sent cancel while it was queued, which cancels the payment)';

CREATE TABLE payments.whatsapp_statuses (
	provider		text NOT NULL REFERENCES payments.providers (name) ON DELETE CASCADE,
	wamid			text NOT NULL,
	status			text NOT NULL,
	status_at		timestamptz,
	errors			jsonb,
	PRIMARY KEY (provider, wamid, status)
);
COMMENT ON TABLE payments.whatsapp_statuses IS
	'Meta''s statuses of the messages sent, once per (wamid, status), kept so that a status arriving before the Graph API''s answer was recorded still reaches its outbox row';

CREATE TABLE payments.volunteers (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider		text NOT NULL REFERENCES payments.providers (name),
	wa_id			text NOT NULL CHECK (payments.whatsapp_user_id(wa_id) IS NOT DISTINCT FROM wa_id),
	name			text NOT NULL,
	skills			text NOT NULL,
	availability	text NOT NULL,
	registered_at	timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (provider, wa_id)
);
COMMENT ON TABLE payments.volunteers IS
	'People who registered as volunteers over WhatsApp (registering again updates the entry); analysts read payments.volunteer_list';

CREATE VIEW payments.volunteer_list AS
	SELECT v.id, v.name, payments.mask_phone(payments.e164_digits(v.wa_id)) AS phone, v.skills, v.availability, v.registered_at, v.updated_at
	  FROM payments.volunteers v;
COMMENT ON VIEW payments.volunteer_list IS 'Volunteers as analysts see them: the phone number masked like donors'' (none for a volunteer known by business-scoped user id alone)';

-- Messages (PROVIDERS.md 4.4)

-- The Graph API refuses a message without a body (400, final: the outbox row goes dead and the
-- chat waits for nothing); a text built from a NULL by mistake is sent as this instead
CREATE FUNCTION payments.chat_no_text()
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT 'Sorry, we could not put this answer together. Please send *help*, or try again in a moment.'
$$;
COMMENT ON FUNCTION payments.chat_no_text() IS
	'What a WhatsApp text or the body of choices says when it was built from a NULL (never meant to: the Graph API refuses a message without a body)';

CREATE FUNCTION payments.chat_text(recipient text, body text)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual',
							  payments.whatsapp_recipient_field(recipient), recipient,
							  'type', 'text', 'text', jsonb_build_object('preview_url', false,
								  'body', left(coalesce(body, payments.chat_no_text()), 4096)))
$$;
COMMENT ON FUNCTION payments.chat_text(text, text) IS
	'A WhatsApp text message (Graph API send-message body: to a phone number, or recipient a business-scoped user id), the text cut at 4096 characters; a NULL text (a bug: the Graph API refuses a message without one) is sent as payments.chat_no_text()';

-- A text longer than WhatsApp's 4096 characters (an admin's /report: a line per currency and
-- method) as several, split at line breaks, so that chat_text cuts none of them: the parts in
-- order, each after the first starting with continued (a line too long for one message alone is
-- split where the limit falls)
CREATE FUNCTION payments.chat_text_parts(body text, continued text DEFAULT '')
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	head	text := left(coalesce(continued, ''), 1000);
	parts	text[] := '{}';
	cur		text;
	line	text;
	room	integer;
BEGIN
	IF coalesce(body, '') = '' THEN
		RETURN ARRAY[body];
	END IF;
	FOR line IN SELECT t.l FROM string_to_table(body, E'\n') WITH ORDINALITY AS t (l, n) ORDER BY t.n LOOP
		IF cur IS NOT NULL AND length(cur) + 1 + length(line) <= 4096 THEN
			cur := cur || E'\n' || line;
			CONTINUE;
		END IF;
		IF cur IS NOT NULL THEN
			parts := parts || cur;
		END IF;
		cur := CASE WHEN cardinality(parts) = 0 THEN '' ELSE head END;
		room := 4096 - length(cur);
		WHILE length(line) > room LOOP
			parts := parts || (cur || left(line, room));
			line := substr(line, room + 1);
			cur := head;
			room := 4096 - length(cur);
		END LOOP;
		cur := cur || line;
	END LOOP;
	RETURN parts || cur;
END
$$;
COMMENT ON FUNCTION payments.chat_text_parts(text, text) IS
	'A text as WhatsApp messages of at most 4096 characters each, split at line breaks (a longer line where the limit falls), in order, each after the first starting with continued; a NULL or empty text is one part as it is';

CREATE FUNCTION payments.chat_choices(recipient text, body text, choices jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual',
		payments.whatsapp_recipient_field(recipient), recipient,
		'type', 'interactive', 'interactive',
		CASE WHEN jsonb_array_length(choices) <= 3 THEN
			jsonb_build_object('type', 'button', 'body', jsonb_build_object('text', left(coalesce(body, payments.chat_no_text()), 1024)),
				'action', jsonb_build_object('buttons',
					(SELECT jsonb_agg(jsonb_build_object('type', 'reply', 'reply',
										jsonb_build_object('id', c ->> 0, 'title', left(c ->> 1, 20))) ORDER BY n)
					   FROM jsonb_array_elements(choices) WITH ORDINALITY AS x (c, n))))
		ELSE
			jsonb_build_object('type', 'list', 'body', jsonb_build_object('text', left(coalesce(body, payments.chat_no_text()), 1024)),
				'action', jsonb_build_object('button', 'Choose', 'sections', jsonb_build_array(
					jsonb_build_object('title', 'Options', 'rows',
						(SELECT jsonb_agg(jsonb_build_object('id', c ->> 0, 'title', left(c ->> 1, 24)) ORDER BY n)
						   FROM jsonb_array_elements(choices) WITH ORDINALITY AS x (c, n) WHERE n <= 10)))))
		END)
$$;
COMMENT ON FUNCTION payments.chat_choices(text, text, jsonb) IS
	'A WhatsApp interactive message (to a phone number, or recipient a business-scoped user id) offering choices ([[id, title], ...]): reply buttons for up to 3 (titles cut at 20 characters), else a list of up to 10; a NULL body is sent as payments.chat_no_text()';

-- A document is a file uploaded to the Graph API (POST /{phone_number_id}/media), then a message
-- naming the media id the upload answered: the payload keeps the file under "upload" and the
-- message under "message"; record_delivery adds the media id to the message after the upload.
CREATE FUNCTION payments.chat_document(recipient text, filename text, caption text, content text,
									   content_type text)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object(
		'message', jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual',
									  payments.whatsapp_recipient_field(recipient), recipient,
									  'type', 'document',
									  'document', jsonb_build_object('filename', filename, 'caption', left(caption, 1024))),
		'upload', jsonb_build_object('filename', filename, 'type', content_type, 'content', content))
$$;
COMMENT ON FUNCTION payments.chat_document(text, text, text, text, text) IS
	'A WhatsApp document to send: the file to upload as media ("upload": filename, type, content) and the document message that will name its media id ("message": to a phone number, or recipient a business-scoped user id; the caption cut at 1024 characters)';

CREATE FUNCTION payments.chat_send(provider text, recipient text, message jsonb, transition_id bigint DEFAULT NULL)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO payments.outbox (provider, recipient, event_type, payload, status_history_id)
	VALUES (chat_send.provider, chat_send.recipient,
			'whatsapp.' || (coalesce(message -> 'message', message) ->> 'type'), message, chat_send.transition_id)
$$;
COMMENT ON FUNCTION payments.chat_send(text, text, jsonb, bigint) IS
	'Queues a WhatsApp message (or a document: payments.chat_document) in the outbox, sent by deliver_outbox through the provider''s Graph API; a donation''s notice names the payment transition it tells of (status_history_id)';

-- Paynow's mobile checkout (remotetransaction) takes ecocash and onemoney, among others, but not
-- telecash: a TeleCash donor pays on Paynow's web checkout (initiatetransaction), from a link, as a
-- card donor does, and no number is asked for
CREATE FUNCTION payments.paynow_web_checkout(method text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT method IN ('card', 'telecash')
$$;
COMMENT ON FUNCTION payments.paynow_web_checkout(text) IS
	'Whether a donation method is paid on Paynow''s web checkout from a link (card, telecash) rather than by a request to the donor''s phone';

CREATE FUNCTION payments.chat_method_label(method text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE method WHEN 'ecocash' THEN 'EcoCash' WHEN 'onemoney' THEN 'OneMoney' WHEN 'telecash' THEN 'TeleCash'
					   WHEN 'card' THEN 'Visa/Mastercard' ELSE method END
$$;
COMMENT ON FUNCTION payments.chat_method_label(text) IS 'How a payment method is named to donors';

CREATE FUNCTION payments.chat_or_list(items text[])
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN cardinality(items) > 1
				THEN array_to_string(items[1:cardinality(items) - 1], ', ') || ' or ' || items[cardinality(items)]
				ELSE items[1] END
$$;
COMMENT ON FUNCTION payments.chat_or_list(text[]) IS 'Choices as donors read them: "EcoCash, OneMoney or TeleCash"';

-- What donors type may come with a line break (the Enter key), a tab, or a non-breaking or other
-- Unicode space (copied from another app); btrim takes plain spaces only, and \s in a regular
-- expression no Unicode space in the C locale.  The class is the same in chat_local_phone.
CREATE FUNCTION payments.chat_trim(value text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT regexp_replace(value,
						  E'^[\\s\\u0085\\u00a0\\u1680\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\ufeff]+|[\\s\\u0085\\u00a0\\u1680\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\ufeff]+$', '', 'g')
$$;
COMMENT ON FUNCTION payments.chat_trim(text) IS
	'Text a donor typed without the white space around it: spaces, tabs, line breaks, and Unicode spaces and invisible marks (U+00A0, U+2000 to U+200F, U+202F, U+FEFF...)';

-- A command, an amount or a number as donors type it, ended with a full stop, an exclamation or
-- question mark, or an emoji: "Yes!", "Cancel.", "5.", "$5!", "0771234567" and a thumbs-up.
-- Only what follows the last letter or digit goes: symbols and pictographs (U+2600 to U+27BF but
-- the dingbat digits U+2776 to U+2793, U+2B00 to U+2BFF, U+1F000 to U+1FAFF), the emoji variation
-- selector, the keycap mark, tags, and the white space of chat_trim; nothing before or between
-- (so "5.5" stays 5.5, and nothing typed is read as another amount or number)
CREATE FUNCTION payments.chat_word(typed text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT regexp_replace(payments.chat_trim(typed),
		E'[.!?\\s\\u0085\\u00a0\\u1680\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\ufeff\\ufe0f\\u20e3\\u2600-\\u2775\\u2794-\\u27bf\\u2b00-\\u2bff\\U0001f000-\\U0001faff\\U000e0020-\\U000e007f]+$',
		'')
$$;
COMMENT ON FUNCTION payments.chat_word(text) IS
	'What a donor typed as a command, amount or number: trimmed (payments.chat_trim), then without the full stops, exclamation and question marks, emoji and white space at its end ("Yes!", "5.", "0771234567" and a thumbs-up); the characters before them are kept as typed';

-- The names of currencies donors type, at the amount ("$10", "ZiG 100") and at the currency question
CREATE FUNCTION payments.chat_currency_name(word text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE lower(replace(word, ' ', '') COLLATE pg_catalog."C") WHEN '$' THEN 'USD' WHEN 'usd' THEN 'USD' WHEN 'us$' THEN 'USD' WHEN 'dollar' THEN 'USD'
							WHEN 'dollars' THEN 'USD' WHEN 'zwg' THEN 'ZWG' WHEN 'zig' THEN 'ZWG' END
$$;
COMMENT ON FUNCTION payments.chat_currency_name(text) IS
	'The currency a donor names: $, US$, USD, dollar and dollars are USD, ZWG and ZiG are ZWG (any case, spaces ignored: US $); NULL otherwise';

-- An amount as donors type it: 10, 25.50, a currency before it ($10, USD 10, ZiG 100) or after it
-- (10 USD, 10.50usd, 10 dollars, 10$), thousands in groups of three digits after a comma or a space
-- (1,000 and 1 000 are 1000, 1,000.50 too).  A decimal comma (10,5 or 10,50) is not taken: the
-- donor is asked to use a dot (comma_cents is the amount as it would be with one)
CREATE FUNCTION payments.chat_typed_amount(typed text, OUT named text, OUT amount numeric, OUT comma_cents text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- non-breaking and thin spaces (a phone's keyboard, a copied number) are spaces here
	rest	text := regexp_replace(payments.chat_trim(typed), E'[\\u00a0\\u2007\\u2009\\u202f]', ' ', 'g');
	word	text;
BEGIN
	word := (regexp_match(rest, '^(us ?[$]|[$]|[[:alpha:]]+)', 'i'))[1];
	named := payments.chat_currency_name(word);
	IF named IS NOT NULL THEN
		rest := substr(rest, length(word) + 1);
	ELSE
		word := (regexp_match(rest, '(us ?[$]|[$]|[[:alpha:]]+)$', 'i'))[1];
		named := payments.chat_currency_name(word);
		IF named IS NOT NULL THEN
			rest := left(rest, length(rest) - length(word));
		END IF;
	END IF;
	rest := payments.chat_trim(rest);
	IF rest ~ '^[0-9]{1,9},[0-9]{1,2}$' THEN
		comma_cents := to_char(replace(rest, ',', '.')::numeric, 'FM999999990.00');
		RETURN;
	END IF;
	-- the same separator between every group of three digits
	IF rest ~ '^[0-9]{1,3}(,[0-9]{3})+([.][0-9]{1,2})?$' OR rest ~ '^[0-9]{1,3}( [0-9]{3})+([.][0-9]{1,2})?$' THEN
		rest := translate(rest, ', ', '');
	END IF;
	amount := CASE WHEN rest ~ '^[0-9]{1,9}([.][0-9]{1,2})?$' THEN rest::numeric END;
END
$$;
COMMENT ON FUNCTION payments.chat_typed_amount(text) IS
	'What a donor typed as an amount: the currency named before or after it (payments.chat_currency_name), the amount (thousands separated by commas or spaces in groups of three digits taken: 1,000 and 1 000 are 1000), or, for a decimal comma (10,5), the amount written with a dot in comma_cents; NULLs otherwise';

-- As people write Zimbabwean mobile numbers: 0771234567, 771234567, 263771234567, 2630771234567,
-- 00263771234567, 002630771234567, with spaces (non-breaking ones too), dots, dashes, parentheses
-- and + anywhere: "+263 (0)77 123 4567", "077-123-4567"
CREATE FUNCTION payments.chat_local_phone(phone text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT '0' || (regexp_match(regexp_replace(phone,
		E'[\\s\\u0085\\u00a0\\u1680\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\ufeff().+\\u2010-\\u2015\\u2212-]', '', 'g'),
		'^(?:(?:00)?263)?0?(7[0-9]{8})$'))[1]
$$;
COMMENT ON FUNCTION payments.chat_local_phone(text) IS
	'A Zimbabwean mobile number in the local form Paynow takes (0771234567), from 0771234567, 771234567, 263771234567, 2630771234567, 00263771234567 or 002630771234567, spaces (any Unicode space), dots, dashes, parentheses and + ignored ("+263 (0)77 123 4567"); NULL otherwise';

-- An admin_numbers entry as the chat matches it against senders.  Staff write their numbers as
-- they would on a letterhead: "+263 (0)77 000 0001" or "2630770000001" hold the trunk zero, which
-- WhatsApp never sends (263770000001); read as e164_digits alone they were accepted and never
-- matched, the admin getting the donor menu.  A Zimbabwean mobile number is read as donors' typed
-- numbers are (chat_local_phone), when written with the country code; any other number has a
-- "(0)" right after its country code dropped ("+44 (0)20 7946 0000"); then as any WhatsApp id
CREATE FUNCTION payments.chat_admin_id(entry text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.whatsapp_user_id(CASE
		WHEN payments.chat_local_phone(entry) IS NOT NULL AND regexp_replace(entry, '[^0-9]', '', 'g') ~ '^(00)?263'
		THEN '263' || substr(payments.chat_local_phone(entry), 2)
		ELSE regexp_replace(entry, E'^([[:space:]]*[+]?[[:space:]]*[1-9][0-9]{0,2}[[:space:]]*)[(][[:space:]]*0[[:space:]]*[)]', E'\\1')
		END)
$$;
COMMENT ON FUNCTION payments.chat_admin_id(text) IS
	'An admin_numbers entry as the chat matches senders against it: a phone number as E.164 digits without the trunk zero written after the country code (a Zimbabwean mobile number read as payments.chat_local_phone reads it: "+263 (0)77 000 0001" and "2630770000001" are 263770000001; another country''s "+44 (0)20 7946 0000" is 442079460000), else a business-scoped user id (payments.whatsapp_user_id); NULL when it is neither';

CREATE FUNCTION payments.mobile_network(local_phone text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN local_phone ~ '^07[78][0-9]{7}$' THEN 'ecocash'
				WHEN local_phone ~ '^071[0-9]{7}$' THEN 'onemoney'
				WHEN local_phone ~ '^073[0-9]{7}$' THEN 'telecash' END
$$;
COMMENT ON FUNCTION payments.mobile_network(text) IS
	'The mobile money of a Zimbabwean mobile number in local form (chat_local_phone): ecocash (Econet, 077 and 078), onemoney (NetOne, 071), telecash (Telecel, 073), else NULL';

-- Paynow's test numbers (PROVIDERS.md 3.5), which an integration in test mode takes and no other,
-- fit every method: the clinic tries OneMoney with them before going live
CREATE FUNCTION payments.paynow_phone_fits(method text, local_phone text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.mobile_network(local_phone) = method
		   OR local_phone IN ('0771111111', '0772222222', '0773333333', '0774444444')
$$;
COMMENT ON FUNCTION payments.paynow_phone_fits(text, text) IS
	'Whether a mobile number in local form can pay by a mobile money method: it is on that network, or one of Paynow''s test numbers';

CREATE FUNCTION payments.chat_amount(amount numeric, currency text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT round(amount, coalesce(payments.currency_exponent(currency), 2))::text
$$;
COMMENT ON FUNCTION payments.chat_amount(numeric, text) IS
	'An amount as donors, admins and Paynow read it: with its currency''s decimals (three for BHD, none for UGX), two when no currency is known';

CREATE FUNCTION payments.chat_amount_examples(low numeric, high numeric, currency text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	-- a whole amount (10, or the least whole one allowed) and one with cents, when allowed
	SELECT CASE WHEN b <= high THEN a::text || ' or ' || payments.chat_amount(b, currency) ELSE a::text END
	  FROM (SELECT a, round(2 * a + 5.5, least(coalesce(payments.currency_exponent(currency), 2), 2)) AS b
			  FROM (SELECT CASE WHEN low <= 10 AND high >= 10 THEN 10
								WHEN ceil(low) <= high THEN ceil(low) ELSE low END AS a) x) y
$$;
COMMENT ON FUNCTION payments.chat_amount_examples(numeric, numeric, text) IS
	'Example amounts for a donor between low and high: "10 or 25.50" when both are allowed, else amounts from the least one allowed';

-- The amounts a donor may send, as the amount question and its refusals say them: with the
-- currency known (chosen, named, or the chat's only one) "between 1.00 and 480.00 USD"; before it
-- is chosen, each currency's range ("in USD (1.00 to 480.00) or ZWG (20.00 to 13000.00)"), one range
-- when they are all the same ("between 1.00 and 480.00 (USD or ZWG)"): the widest range alone
-- reads as one currency's
CREATE FUNCTION payments.chat_amount_ranges(cfg jsonb, currency text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH c AS (
		SELECT k, r.low, r.high
		  FROM (SELECT currency AS k WHERE currency IS NOT NULL
				UNION ALL
				SELECT k FROM jsonb_object_keys(coalesce(cfg -> 'paynow_providers', '{}')) k WHERE currency IS NULL) x,
			   payments.chat_amount_range(cfg, x.k) r)
	SELECT CASE
		WHEN (SELECT count(*) FROM c) = 0
		THEN (SELECT format('between %s and %s', payments.chat_amount(r.low, NULL), payments.chat_amount(r.high, NULL))
				FROM payments.chat_amount_range(cfg, NULL) r)
		WHEN (SELECT count(*) FROM c) = 1
		THEN (SELECT format('between %s and %s %s', payments.chat_amount(low, k), payments.chat_amount(high, k), k) FROM c)
		WHEN (SELECT count(DISTINCT (low, high)) FROM c) = 1
		THEN (SELECT format('between %s and %s (%s)', payments.chat_amount(min(low), NULL), payments.chat_amount(min(high), NULL),
							payments.chat_or_list(array_agg(k ORDER BY k))) FROM c)
		ELSE 'in ' || payments.chat_or_list(ARRAY(SELECT format('%s (%s to %s)', k, payments.chat_amount(low, k), payments.chat_amount(high, k))
												  FROM c ORDER BY k)) END
$$;
COMMENT ON FUNCTION payments.chat_amount_ranges(jsonb, text) IS
	'The amounts a donation may have, as donors read them: "between 1.00 and 480.00 USD" for a currency (or the only one offered); before the currency is chosen, "in USD (1.00 to 480.00) or ZWG (20.00 to 13000.00)", or one range with the currencies when they all have the same';

-- The conversation

-- The summary's Confirm button names the draft it shows, so that a tap on an earlier summary, sent
-- before an edit, does not confirm what the donor has not seen
CREATE FUNCTION payments.chat_confirm_id(draft jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT 'confirm_' || left(encode(sha256(convert_to(draft::text, 'UTF8')), 'hex'), 16)
$$;
COMMENT ON FUNCTION payments.chat_confirm_id(jsonb) IS
	'The id of the Confirm button of a donation summary: confirm_ and the first 16 hex digits of the SHA-256 of the draft it shows';

CREATE FUNCTION payments.chat_prompt(provider text, wa_id text, state text, cfg jsonb, draft jsonb,
									 name text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	msg		jsonb;
	local	text := payments.chat_local_phone(wa_id);
BEGIN
	msg := CASE state
		WHEN 'menu' THEN payments.chat_choices(wa_id,
			'Hello' || coalesce(' ' || name, '') || E'! Thank you for contacting us. What would you like to do?\n' ||
			'(You can send *help* at any time.)',
			'[["donate", "Donate"], ["check", "Check a payment"], ["volunteer", "Volunteer"], ["help", "Help"]]')
		WHEN 'amount' THEN (SELECT payments.chat_text(wa_id, format(
			'How much would you like to give? Send an amount %s, for example %s.',
			payments.chat_amount_ranges(cfg, draft ->> 'currency'),
			payments.chat_amount_examples(r.low, r.high, draft ->> 'currency')))
			FROM payments.chat_amount_range(cfg, draft ->> 'currency') r)
		WHEN 'currency' THEN payments.chat_choices(wa_id, 'In which currency?',
			(SELECT jsonb_agg(jsonb_build_array('cur_' || k, k) ORDER BY k) FROM jsonb_object_keys(cfg -> 'paynow_providers') k))
		WHEN 'method' THEN payments.chat_choices(wa_id, 'How would you like to pay?',
			(SELECT jsonb_agg(jsonb_build_array('pay_' || m, payments.chat_method_label(m)) ORDER BY n)
			   FROM jsonb_array_elements_text(cfg -> 'methods') WITH ORDINALITY AS x (m, n)))
		-- the donor's own number is offered only when it is on the method's network (a donor known by
		-- business-scoped user id alone has none: local is NULL, and the number is to be typed)
		WHEN 'phone' THEN CASE WHEN payments.paynow_phone_fits(draft ->> 'method', local)
			THEN payments.chat_choices(wa_id, format(
				'Which %s number should we send the payment request to? Tap *Use %s* or type another number.',
				payments.chat_method_label(draft ->> 'method'), local),
				jsonb_build_array(jsonb_build_array('phone_same', 'Use ' || local)))
			ELSE payments.chat_text(wa_id, format(
				'Which %s number should we send the payment request to? Type it like %s.',
				payments.chat_method_label(draft ->> 'method'),
				CASE draft ->> 'method' WHEN 'onemoney' THEN '0711234567' ELSE '0771234567' END)) END
		WHEN 'purpose' THEN payments.chat_choices(wa_id, 'What is your gift for? Tap one, or type your own purpose.',
			(SELECT jsonb_agg(jsonb_build_array('purpose_' || n, u) ORDER BY n)
			   FROM jsonb_array_elements_text(cfg -> 'purposes') WITH ORDINALITY AS x (u, n)))
		WHEN 'confirm' THEN payments.chat_choices(wa_id,
			E'Please check your donation:\n' ||
			format(E'Amount: %s %s\nMethod: %s\n', draft ->> 'amount', draft ->> 'currency',
				   payments.chat_method_label(draft ->> 'method')) ||
			CASE WHEN draft ? 'phone' THEN format(E'Number: %s\n', draft ->> 'phone') ELSE '' END ||
			format('For: %s', draft ->> 'purpose'),
			jsonb_build_array(jsonb_build_array(payments.chat_confirm_id(draft), 'Confirm'),
							  '["edit", "Edit"]'::jsonb, '["cancel", "Cancel"]'::jsonb))
		WHEN 'edit' THEN payments.chat_choices(wa_id, 'What would you like to change?',
			(SELECT jsonb_agg(jsonb_build_array('edit_' || f, t) ORDER BY n)
			   FROM (VALUES (1, 'amount', 'Amount'), (2, 'currency', 'Currency'), (3, 'method', 'Payment method'),
							(4, 'phone', 'Number'), (5, 'purpose', 'Purpose'), (6, 'back', 'Back to the summary')) AS x (n, f, t)
			  WHERE (f <> 'currency' OR (SELECT count(*) FROM jsonb_object_keys(cfg -> 'paynow_providers')) > 1)
				AND (f <> 'phone' OR NOT payments.paynow_web_checkout(draft ->> 'method'))))
		WHEN 'volunteer_name' THEN payments.chat_text(wa_id,
			'Thank you for offering to help! What is your full name?')
		WHEN 'volunteer_skills' THEN payments.chat_text(wa_id,
			'What skills would you like to offer (for example nursing, driving, cooking, building)?')
		WHEN 'volunteer_availability' THEN payments.chat_text(wa_id,
			'When are you available (for example weekends, or Monday mornings)?')
	END;
	PERFORM payments.chat_send(provider, wa_id, msg);
END
$$;
COMMENT ON FUNCTION payments.chat_prompt(text, text, text, jsonb, jsonb, text) IS
	'Queues the question of a conversation state: the menu, each step of a donation, the summary, the fields to edit, the volunteer questions';

-- The settings may change while a donor drafts (a currency or a method switched off, a lower
-- max_amount): what of a draft they no longer take is dropped, to be asked again.  A currency no
-- longer offered takes its amount along (given in that currency, it says nothing in another); with
-- one currency left, it is the draft's, as when a donation starts.  Then an amount outside the
-- range of the draft's currency; a method no longer offered, with its number (each network has its
-- own, as when the method is edited); a number not on the method's network.  An amount given in
-- another currency than the one chosen since (Edit, Currency keeps it as amount_currency) is dropped.
CREATE FUNCTION payments.chat_fit_draft(cfg jsonb, draft jsonb, OUT fitted jsonb, OUT notes text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	currencies text[] := ARRAY(SELECT jsonb_object_keys(coalesce(cfg -> 'paynow_providers', '{}')));
	low		numeric;
	high	numeric;
BEGIN
	fitted := draft;
	notes := '{}';
	IF fitted ? 'currency' AND NOT (fitted ->> 'currency') = ANY (currencies) THEN
		notes := notes || format('Donations in %s cannot be made here any more.', fitted ->> 'currency');
		fitted := fitted - 'currency' - 'amount';
	END IF;
	IF NOT fitted ? 'currency' AND cardinality(currencies) = 1 THEN
		fitted := fitted || jsonb_build_object('currency', currencies[1]);
	END IF;
	-- Edit, Currency: the amount was given in amount_currency; in another currency it says
	-- nothing (100 ZWG is not 100 USD), so it is asked again
	IF fitted ? 'amount_currency' AND fitted ? 'currency' THEN
		IF fitted ? 'amount' AND fitted ->> 'amount_currency' <> fitted ->> 'currency' THEN
			notes := notes || format('Your amount was in %s: please send it again in %s.', fitted ->> 'amount_currency',
									 fitted ->> 'currency');
			fitted := fitted - 'amount';
		END IF;
		fitted := fitted - 'amount_currency';
	END IF;
	-- the amount came before the currency: it is asked again if outside that currency's range
	IF fitted ? 'currency' AND fitted ? 'amount' THEN
		SELECT r.low, r.high INTO low, high FROM payments.chat_amount_range(cfg, fitted ->> 'currency') r;
		IF (fitted ->> 'amount')::numeric NOT BETWEEN low AND high THEN
			notes := notes || format('Donations in %s must be between %s and %s.', fitted ->> 'currency',
									 payments.chat_amount(low, fitted ->> 'currency'), payments.chat_amount(high, fitted ->> 'currency'));
			fitted := fitted - 'amount';
		END IF;
	END IF;
	IF fitted ? 'method' AND NOT (jsonb_typeof(cfg -> 'methods') = 'array' AND cfg -> 'methods' ? (fitted ->> 'method')) THEN
		notes := notes || format('%s is not offered here any more.', payments.chat_method_label(fitted ->> 'method'));
		fitted := fitted - 'method' - 'phone';
	END IF;
	-- the number came before the method (an edit): it is asked again if on another network
	IF fitted ? 'phone' AND fitted ? 'method'
	   AND NOT payments.paynow_phone_fits(fitted ->> 'method', fitted ->> 'phone') THEN
		fitted := fitted - 'phone';
	END IF;
END
$$;
COMMENT ON FUNCTION payments.chat_fit_draft(jsonb, jsonb) IS
	'A donation draft as the conversation settings of now (payments.chat_settings) take it: without a currency no longer offered (nor its amount), the only currency filled in, without an amount given in another currency than the one chosen since (amount_currency, kept by Edit, Currency), without an amount outside the currency''s range, a method no longer offered (nor its number), a number not on the method''s network; and what to tell the donor about them';

CREATE FUNCTION payments.chat_advance(provider text, wa_id text, cfg jsonb, draft jsonb,
									  OUT next_state text, OUT next_draft jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	notes	text[];
BEGIN
	-- donations switched off (no currency, no method) while a donor was at it: said so, not a
	-- question without choices, which the Graph API would refuse
	IF NOT EXISTS (SELECT FROM jsonb_object_keys(coalesce(cfg -> 'paynow_providers', '{}')))
	   OR (CASE jsonb_typeof(cfg -> 'methods') WHEN 'array' THEN jsonb_array_length(cfg -> 'methods') ELSE 0 END) = 0 THEN
		PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id,
			'Sorry, donations cannot be made here yet. Please try again later.'));
		next_state := 'menu';
		next_draft := '{}';
		RETURN;
	END IF;
	-- what the settings of now no longer take is asked again
	SELECT f.fitted, f.notes INTO next_draft, notes FROM payments.chat_fit_draft(cfg, draft) f;
	IF cardinality(notes) > 0 THEN
		PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id, array_to_string(notes, ' ')));
	END IF;
	next_state := CASE
		WHEN NOT next_draft ? 'amount' THEN 'amount'
		WHEN NOT next_draft ? 'currency' THEN 'currency'
		WHEN NOT next_draft ? 'method' THEN 'method'
		WHEN NOT payments.paynow_web_checkout(next_draft ->> 'method') AND NOT next_draft ? 'phone' THEN 'phone'
		WHEN NOT next_draft ? 'purpose' THEN 'purpose'
		ELSE 'confirm' END;
	PERFORM payments.chat_prompt(provider, wa_id, next_state, cfg, next_draft);
END
$$;
COMMENT ON FUNCTION payments.chat_advance(text, text, jsonb, jsonb) IS
	'The next step of a donation draft and queues its question: the draft as the settings of now take it (payments.chat_fit_draft, the donor told what was dropped), then the first detail missing (amount, currency unless only one, method, number unless paid from a link, purpose; then the summary); with no currency or no method offered, says donations cannot be made and goes back to the menu';

CREATE FUNCTION payments.chat_check(provider text, wa_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p		payments.payments;
	w		record;
	body	text;
BEGIN
	SELECT q.* INTO p FROM payments.chat_donations d JOIN payments.payments q ON q.id = d.payment_id
	 WHERE d.provider = chat_check.provider AND d.wa_id = chat_check.wa_id
	 ORDER BY d.payment_id DESC LIMIT 1;
	SELECT x.* INTO w FROM payments.chat_pending_donation(chat_check.provider, chat_check.wa_id) x;
	-- (chat_pending_donation always gives a row, of NULLs when there is none: FOUND says nothing)
	IF p.id IS NULL THEN
		body := 'You have not made a donation from this number yet. Send *donate* to give.';
	ELSE
		IF p.status = 'paid' THEN
			-- receipts are taken at commit (payments.transition_committed): paid in this
			-- transaction (Paynow's update in the same batch as this message), it has none yet.
			-- Take it now, as /approve does (the commit then finds it taken)
			PERFORM payments.issue_receipt(p.id, coalesce(p.paid_at, p.status_at));
		END IF;
		body := format('Your last donation, %s %s by %s (reference %s), ', payments.chat_amount(p.amount, p.currency), p.currency,
					   payments.chat_method_label(p.method), p.reference) ||
			CASE p.status
				WHEN 'paid' THEN 'is paid' || coalesce('. Receipt number: ' ||
					(SELECT r.receipt_no FROM payments.receipts r WHERE r.payment_id = p.id), '') || '. Thank you!'
				-- never "start again" while a request may still be approved (it would be paid twice):
				-- as long as *donate* is held back by it (payments.chat_pending_donation).  Past that
				-- (a prompt or link over an hour old, which Paynow may leave at Sent or Created for
				-- ever) it has expired, and *donate* is not held back
				WHEN 'pending' THEN
					CASE WHEN p.id IS NOT DISTINCT FROM w.payment_id
						 -- confirmed, its request still queued for initiate_payments (or on its way):
						 -- nothing has reached the phone or given a link yet
						 THEN CASE WHEN w.initiation IN ('queued', 'sending')
								   THEN 'is confirmed, and we are still sending its payment request to Paynow. '
								   WHEN payments.paynow_web_checkout(p.method)
								   THEN 'is waiting for payment on Paynow''s page (from the link we sent). '
								   ELSE 'is waiting for you to approve the request on your phone. ' END ||
							  'Please do not start a new donation for it, or you may pay twice: we will tell you here when it is paid.'
						 ELSE 'is not paid yet, and its payment ' ||
							  CASE WHEN payments.paynow_web_checkout(p.method) THEN 'link' ELSE 'request' END ||
							  ' has expired. If you did not pay, you may send *donate* to try again.' END
				WHEN 'failed' THEN 'did not go through; no money was taken. Send *donate* to try again.'
				WHEN 'cancelled' THEN 'was cancelled; nothing was charged.'
				ELSE 'is ' || replace(p.status, '_', ' ') || '.' END;
	END IF;
	PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id, body));
END
$$;
COMMENT ON FUNCTION payments.chat_check(text, text) IS
	'Queues the status of the last donation made from a WhatsApp number: a pending one that may still be paid (payments.chat_pending_donation, which holds back *donate*) is to be waited for, not given again (its request still being sent to Paynow while queued or sending); one past that has expired, and may be given again if it was not paid';

-- A donation from this number still waiting to be paid whose request may still reach the donor's
-- phone (initiation queued, sending or unconfirmed: Paynow may have it), or whose prompt or link
-- may still be live (pending, started within the hour): a new one now could be paid as well, so
-- the donor is told about it first (payments.chat_pending_notice)
CREATE FUNCTION payments.chat_pending_donation(provider text, wa_id text,
											   OUT payment_id bigint, OUT reference text, OUT amount numeric,
											   OUT currency text, OUT method text, OUT initiation text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT p.id, p.reference, p.amount, p.currency, p.method, i.state
	  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
	  LEFT JOIN payments.paynow_initiations i ON i.payment_id = p.id
	 WHERE d.provider = chat_pending_donation.provider AND d.wa_id = chat_pending_donation.wa_id
	   AND p.status = 'pending'
	   -- (a request sent, confirmed or not, for an hour after it was sent: a PIN prompt lasts
	   -- minutes, a link not much longer, and Paynow may leave the transaction at Sent for ever; one
	   -- that waited in the queue is live from when it left, not from the donation's start)
	   AND (i.state IN ('queued', 'sending')
			OR coalesce(i.started_at, d.created_at) > now() - interval '1 hour')
	 ORDER BY d.payment_id DESC LIMIT 1
$$;
COMMENT ON FUNCTION payments.chat_pending_donation(text, text) IS
	'The latest donation from a WhatsApp number that is pending and may still be paid: its Paynow initiation queued or sending, or sent (confirmed or not) less than an hour ago, or without one started less than an hour ago (a prompt or link still live); NULLs when none';

CREATE FUNCTION payments.chat_pending_notice(provider text, wa_id text, confirming boolean, seen bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	w		record;
BEGIN
	SELECT * INTO w FROM payments.chat_pending_donation(provider, wa_id);
	IF w.payment_id IS NULL OR w.payment_id <= coalesce(seen, 0) THEN
		RETURN NULL;
	END IF;
	PERFORM payments.chat_send(provider, wa_id, payments.chat_choices(wa_id,
		format('You already have a donation waiting: %s %s by %s, reference %s. ', payments.chat_amount(w.amount, w.currency),
			   w.currency, payments.chat_method_label(w.method), w.reference) ||
		CASE WHEN w.initiation IN ('queued', 'sending') THEN 'We are still sending its payment request to Paynow.'
			 WHEN w.initiation = 'unconfirmed' THEN 'We could not confirm its payment request, so your phone may still ask for your PIN.'
			 WHEN payments.paynow_web_checkout(w.method) THEN 'It is waiting for payment on Paynow''s page (the link we sent).'
			 ELSE 'It is waiting for you to approve the request on your phone.' END ||
		E'\nSo that you do not pay twice, tap *Check it* to see whether it went through. ' ||
		CASE WHEN confirming THEN 'To give again all the same, tap *Confirm* on the summary below.'
			 ELSE 'Tap *Donate anyway* only if you want to give again.' END,
		CASE WHEN confirming THEN '[["check", "Check it"]]'::jsonb
			 -- (Donate anyway names the donation it goes past: tapped later, with another one waiting
			 -- by then, it is *donate*, and warns of that one)
			 ELSE jsonb_build_array('["check", "Check it"]'::jsonb, jsonb_build_array('donate_anyway_' || w.payment_id, 'Donate anyway'),
									'["menu", "Menu"]'::jsonb) END));
	RETURN w.payment_id;
END
$$;
COMMENT ON FUNCTION payments.chat_pending_notice(text, text, boolean, bigint) IS
	'When a WhatsApp number has a donation that may still be paid (payments.chat_pending_donation) newer than the one it chose to go past (seen), queues a word about it (amount, method, reference, where it stands) with a Check it button, and Donate anyway (id donate_anyway_<payment id>) unless confirming (then the summary is sent again); returns its payment id, or NULL when there is none';

-- When a donor refused by a limit of 24 hours may try again, as a clock at the clinic (the
-- receipt time zone) shows it: the next whole minute after the time, today or tomorrow there (the
-- day after tomorrow when the minute of a time just before midnight tomorrow rounds up to it)
CREATE FUNCTION payments.chat_try_again(free_at timestamptz)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT 'after ' || pg_catalog.to_char(clock, 'HH24:MI')
		   || CASE clock::date - payments.receipt_day(pg_catalog.now()) WHEN 0 THEN ' today' WHEN 1 THEN ' tomorrow'
				   ELSE ' the day after tomorrow' END
	  FROM (SELECT pg_catalog.date_trunc('minute', payments.receipt_local_time(free_at)) + interval '1 minute' AS clock) t
$$;
COMMENT ON FUNCTION payments.chat_try_again(timestamptz) IS
	'When a donor refused by one of the chat''s limits of 24 hours may try again, as the chat says it: "after HH:MM today" or "tomorrow", the next whole minute after the time, in the receipt time zone';

CREATE FUNCTION payments.chat_start_payment(event_row bigint, provider text, wa_id text, name text, cfg jsonb,
											draft jsonb)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the Paynow provider of the currency, unless its own currency changed since (Paynow charges
	-- the integration's currency, whatever the chat says)
	paynow	text := (SELECT p.name FROM payments.providers p
					  WHERE p.name = cfg -> 'paynow_providers' ->> (draft ->> 'currency') AND p.kind = 'paynow'
						AND coalesce(p.settings ->> 'currency', 'USD') = draft ->> 'currency');
	ref		text;
	c		payments.payment_change;
	pay_id	bigint;
	free_at	timestamptz;
BEGIN
	IF paynow IS NULL THEN
		PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id,
			'Sorry, donations in ' || (draft ->> 'currency') || ' cannot be made here any more. Send *donate* to start again.'));
		RETURN NULL;
	END IF;
	-- a mobile-money request makes the number's phone prompt for a PIN: so that nobody can flood a
	-- stranger's phone with prompts, a chat asks numbers other than its own at most 5 times, and a
	-- number is asked by chats other than its own at most 3 times, in any 24 hours,
	-- not since midnight (which would allow twice as many in the minutes around it).  The donor
	-- is told when the oldest request counted leaves the 24 hours.  Counted: the
	-- requests that may have prompted a phone (queued, sending, done, unconfirmed), not those that
	-- prompted nobody (error: Paynow refused it or was never reached; skipped)
	IF NOT payments.paynow_web_checkout(draft ->> 'method')
	   AND draft ->> 'phone' IS DISTINCT FROM payments.chat_local_phone(wa_id) THEN
		-- confirmations to one number are counted one after the other: two chats confirming at
		-- once would each count the requests before the other's and both go past the limit
		PERFORM payments.chat_lock('prompts ' || (draft ->> 'phone'));
		-- the fifth latest request counted in the last 24 hours: at the limit until it leaves them
		free_at := (SELECT d.created_at FROM payments.chat_donations d JOIN payments.paynow_initiations i ON i.payment_id = d.payment_id
					 WHERE d.provider = chat_start_payment.provider AND d.wa_id = chat_start_payment.wa_id
					   AND d.created_at > now() - interval '24 hours'
					   AND i.state IN ('queued', 'sending', 'done', 'unconfirmed')
					   AND i.phone IS NOT NULL AND i.phone IS DISTINCT FROM payments.chat_local_phone(d.wa_id)
					 ORDER BY d.created_at DESC OFFSET 4 LIMIT 1) + interval '24 hours';
		IF free_at IS NOT NULL THEN
			PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id, format(
				'Sorry, this chat has asked other people''s numbers for payments 5 times in the last 24 hours. Please pay from your own number, or try again %s. Nothing was charged.',
				payments.chat_try_again(free_at))));
			RETURN NULL;
		END IF;
		-- (a chat known by business-scoped user id alone has no number of its own: its requests to the
		-- number, perhaps its user's own, are not another chat's, and the limit above bounds them)
		free_at := (SELECT i.created_at FROM payments.paynow_initiations i JOIN payments.chat_donations d ON d.payment_id = i.payment_id
					 WHERE i.phone = draft ->> 'phone' AND i.created_at > now() - interval '24 hours'
					   AND i.state IN ('queued', 'sending', 'done', 'unconfirmed')
					   AND payments.chat_local_phone(d.wa_id) IS DISTINCT FROM i.phone
					   AND NOT (payments.whatsapp_bsuid(chat_start_payment.wa_id) IS NOT NULL
								AND d.provider = chat_start_payment.provider AND d.wa_id = chat_start_payment.wa_id)
					 ORDER BY i.created_at DESC OFFSET 2 LIMIT 1) + interval '24 hours';
		IF free_at IS NOT NULL THEN
			PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id, format(
				'Sorry, %s has had 3 payment requests from other chats in the last 24 hours. Its owner can donate from their own WhatsApp, or you can try again %s. Nothing was charged.',
				draft ->> 'phone', payments.chat_try_again(free_at))));
			RETURN NULL;
		END IF;
	END IF;
	-- dated like receipts, /stats and /report: the day in the receipt time zone
	ref := 'WA-' || to_char(payments.receipt_day(now()), 'YYYYMMDD') || '-' || nextval('payments.chat_reference_seq');
	-- the payment exists, pending, with our merchant reference before Paynow is asked
	c.provider_ref := ref;
	c.creates := true;
	c.status := 'pending';
	c.status_at := now();
	c.reference := ref;
	c.kind := 'collection';
	c.amount := (draft ->> 'amount')::numeric;
	c.currency := draft ->> 'currency';
	c.method := draft ->> 'method';
	c.donor_name := name;
	-- the donor's phone number; a donor known by business-scoped user id alone (number withheld)
	-- has none (the number typed for mobile money may be anyone's): the BSUID is kept in the metadata
	c.donor_phone := payments.e164_digits(wa_id);
	c.metadata := jsonb_build_object('channel', 'whatsapp', 'purpose', draft ->> 'purpose')
				  || CASE WHEN payments.whatsapp_bsuid(wa_id) IS NOT NULL
						  THEN jsonb_build_object('whatsapp_user_id', wa_id) ELSE '{}' END;
	PERFORM payments.apply_change(event_row, paynow, c);
	SELECT p.id INTO pay_id FROM payments.payments p WHERE p.provider = paynow AND p.provider_ref = ref;
	INSERT INTO payments.chat_donations (payment_id, provider, wa_id, purpose)
	VALUES (pay_id, chat_start_payment.provider, chat_start_payment.wa_id, draft ->> 'purpose');
	INSERT INTO payments.paynow_initiations (payment_id, provider, reference, method, phone)
	VALUES (pay_id, paynow, ref, draft ->> 'method', draft ->> 'phone');
	PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id, CASE
		WHEN draft ->> 'method' = 'card'
		THEN format('Thank you! We are preparing a secure card payment link for %s %s. Reference: %s.',
					draft ->> 'amount', draft ->> 'currency', ref)
		WHEN payments.paynow_web_checkout(draft ->> 'method')
		THEN format('Thank you! We are preparing a Paynow payment link to pay %s %s with %s. Reference: %s.',
					draft ->> 'amount', draft ->> 'currency', payments.chat_method_label(draft ->> 'method'), ref)
		ELSE format('Thank you! We are asking %s to send a payment request for %s %s to %s. Reference: %s.',
					payments.chat_method_label(draft ->> 'method'), draft ->> 'amount', draft ->> 'currency',
					draft ->> 'phone', ref) END));
	RETURN pay_id;
END
$$;
COMMENT ON FUNCTION payments.chat_start_payment(bigint, text, text, text, jsonb, jsonb) IS
	'A confirmed donation (chat or Flow): creates the payment (pending, merchant reference WA-YYYYMMDD-N, the day in the receipt time zone: payments.receipt_day; donor_phone the WhatsApp number, none for a donor known by business-scoped user id alone, whose BSUID is metadata.whatsapp_user_id) with the Paynow provider of its currency, queues its Paynow initiation and tells the donor, all in the transaction of the message; returns the payment id; NULL, the donor told why, when the currency has no Paynow provider of that currency, or a mobile-money request would pass a limit (a chat asks numbers other than its own at most 5 times in 24 hours; a number is asked by other chats at most 3 times in 24 hours, the donor told after what time of the receipt time zone to try again; a chat known by business-scoped user id alone not counting as another chat; requests that prompted nobody, in state error or skipped, are not counted)';

CREATE FUNCTION payments.chat_admin(provider text, wa_id text, command text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- the command and its argument apart at any white space the chat trims (payments.chat_trim): a
	-- tab, a line break or a non-breaking space (a phone's keyboard, a copied reference) too
	words	text[] := regexp_match(payments.chat_trim(command),
								   E'^(.*?)[\\s\\u0085\\u00a0\\u1680\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\ufeff]+(.*)$');
	cmd		text := lower(coalesce(words[1], payments.chat_trim(command)) COLLATE pg_catalog."C");
	arg		text := coalesce(payments.chat_trim(words[2]), '');
	continued	text := '';
	part	text;
	today	date := payments.receipt_day(now());
	day		date;
	body	text;
	csv		text;
	pay		payments.payments;
	c		payments.payment_change;
	unsent	bigint;
BEGIN
	IF cmd = '/stats' THEN
		SELECT string_agg(format('%s: %s paid, gross %s, net of fees and refunds %s; %s failed or cancelled, %s pending', s.currency, s.paid,
								 payments.chat_amount(s.gross, s.currency), payments.chat_amount(s.net, s.currency), s.failed, s.pending),
						  E'\n' ORDER BY s.currency)
		  INTO body FROM payments.currency_summary(payments.day_start(today), payments.day_start(today + 1)) s;
		body := format(E'Today (%s):\n', to_char(today, 'YYYY-MM-DD')) || coalesce(body, 'no payments yet.')
			|| coalesce((SELECT format(E'\nNotices not sent to donors of this chat in the last 30 days: %s (/unsent lists them).',
									   count(*))
						   FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
						  WHERE d.provider = chat_admin.provider AND d.unsent_notice IS NOT NULL
							AND p.status_at >= now() - interval '30 days'
						 HAVING count(*) > 0), '');
	ELSIF cmd = '/unsent' THEN
		-- the donors Meta would not (or did not) deliver a notice to: outside the 24 hours after
		-- their last message, the provider having no template for it; the clinic tells them by phone
		SELECT string_agg(format('%s %s %s %s: %s not sent to %s%s', u.reference, payments.chat_amount(u.amount, u.currency),
								 u.currency, u.status, CASE u.unsent_notice WHEN 'paid' THEN 'thank-you' ELSE 'notice' END,
								 CASE WHEN payments.whatsapp_bsuid(u.wa_id) IS NULL THEN '+' || u.wa_id ELSE u.wa_id END,
								 coalesce(' (' || nullif(btrim(regexp_replace(u.donor_name, '[[:space:]]+', ' ', 'g')), '') || ')', '')),
						  E'\n' ORDER BY u.status_at DESC, u.id DESC),
			   max(u.total)
		  INTO body, unsent
		  FROM (SELECT p.id, p.reference, p.amount, p.currency, p.status, p.status_at, p.donor_name, d.wa_id, d.unsent_notice,
					   count(*) OVER () AS total
				  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
				 WHERE d.provider = chat_admin.provider AND d.unsent_notice IS NOT NULL
				   AND p.status_at >= now() - interval '30 days'
				 ORDER BY p.status_at DESC, p.id DESC LIMIT 20) u;
		body := CASE WHEN body IS NULL THEN 'No unsent notices in the last 30 days.'
					 ELSE E'Donors not sent their donation''s news (last 30 days, newest first; outside WhatsApp''s 24 hours, no template set):\n'
						  || body || CASE WHEN unsent > 20 THEN format(E'\n(the 20 newest of %s)', unsent) ELSE '' END END;
	ELSIF cmd = '/report' THEN
		IF arg = '' THEN
			day := today;
		ELSIF lower(arg COLLATE pg_catalog."C") = 'yesterday' THEN
			day := today - 1;
		ELSIF arg ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN
			BEGIN
				day := arg::date;
			EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
				day := NULL;
			END;
		END IF;
		IF day IS NULL THEN
			body := 'Usage: /report [YYYY-MM-DD | yesterday] (default: today)';
		ELSE
			SELECT string_agg(format('%s %s: %s paid, gross %s%s, fees %s%s, net of fees %s; %s failed or cancelled; %s refunds (%s); %s new donors%s',
									 r.currency, r.method, r.paid, payments.chat_amount(r.gross, r.currency),
									 CASE WHEN r.amount_unknown > 0 THEN format(' (amount not known for %s)', r.amount_unknown)
										  ELSE '' END,
									 payments.chat_amount(r.fees, r.currency),
									 CASE WHEN r.fee_unknown > 0 THEN format(' (not known for %s)', r.fee_unknown) ELSE '' END,
									 payments.chat_amount(r.net, r.currency), r.failed, r.refunds,
									 payments.chat_amount(r.refunded, r.currency), r.new_donors,
									 CASE WHEN r.receipts > 0 THEN format('; receipts %s to %s', r.first_receipt, r.last_receipt)
										  ELSE '' END), E'\n')
			  INTO body FROM payments.daily_report(day) r;
			body := format(E'Daily report %s:\n', to_char(day, 'YYYY-MM-DD')) || coalesce(body, 'no payments.');
			-- (sent as several messages when longer than WhatsApp's 4096 characters, below)
			continued := format(E'Daily report %s (continued):\n', to_char(day, 'YYYY-MM-DD'));
			csv := payments.daily_report_csv(day);
		END IF;
	ELSIF cmd = '/approve' THEN
		IF arg = '' THEN
			body := 'Usage: /approve <reference>';
		ELSE
			-- as typed, else in upper case (our references are; an admin types wa-20261122-7);
			-- only a donation made in this chat (not another provider's payment, not a payout)
			SELECT p.* INTO pay FROM payments.payments p JOIN payments.chat_donations d ON d.payment_id = p.id
			 WHERE p.reference IN (arg, upper(arg COLLATE pg_catalog."C")) AND d.provider = chat_admin.provider
			 ORDER BY p.reference = arg DESC, p.id DESC LIMIT 1;
			IF NOT FOUND THEN
				body := format('No donation made in this chat has the reference %s.', arg);
			ELSIF pay.status = 'paid' THEN
				-- paid in this transaction (Paynow's update in the same batch), it has no receipt
				-- yet: take it now, as below
				PERFORM payments.issue_receipt(pay.id, coalesce(pay.paid_at, pay.status_at));
				body := pay.reference || ' is already paid' ||
					coalesce(format(' (receipt %s)', (SELECT r.receipt_no FROM payments.receipts r WHERE r.payment_id = pay.id)), '')
					|| '.';
			ELSIF NOT EXISTS (SELECT FROM payments.transitions t WHERE t.from_status = pay.status AND t.to_status = 'paid') THEN
				body := format('%s is %s: it cannot be marked paid.', pay.reference, pay.status);
			ELSE
				c.provider_ref := pay.provider_ref;
				c.creates := false;
				c.status := 'paid';
				c.status_at := greatest(now(), pay.status_at);
				c.metadata := jsonb_build_object('approved_by', wa_id, 'approved_at', now());
				PERFORM payments.apply_change(NULL, pay.provider, c);
				-- receipts are taken at commit; the admin's answer names it, so take it now (the
				-- commit then finds it taken)
				PERFORM payments.issue_receipt(pay.id, c.status_at);
				body := format('Approved %s: %s %s marked paid, receipt %s.', pay.reference, payments.chat_amount(pay.amount, pay.currency),
							   pay.currency, (SELECT r.receipt_no FROM payments.receipts r WHERE r.payment_id = pay.id)) ||
					-- a request that left cannot be called back: the donor may still be prompted, while the
					-- payment is pending; one Paynow reported failed or cancelled prompts no one any more
					coalesce((SELECT CASE WHEN pay.status = 'pending'
										  THEN E'\nPaynow was already asked for it (' || i.state || '): the donor may still be prompted to pay; '
											   || 'tell them not to approve it.'
										  WHEN pay.status IN ('failed', 'cancelled')
										  THEN E'\nPaynow had reported it ' || pay.status || ': no payment prompt is pending.' END
								FROM payments.paynow_initiations i
							   WHERE i.payment_id = pay.id AND i.state IN ('sending', 'done', 'unconfirmed')), '');
			END IF;
		END IF;
	ELSE
		body := E'Admin commands:\n/stats: today''s totals per currency (all payments in the database)\n' ||
				E'/report [YYYY-MM-DD | yesterday]: the daily report of all payments (default today)\n' ||
				E'/approve <reference>: mark a payment paid by hand (issues its receipt)\n' ||
				E'/unsent: donors not sent their donation''s news (tell them by phone)\n/admin: this help';
	END IF;
	-- in as many messages as it takes (WhatsApp's limit is 4096 characters), queued in order: a
	-- chat gets its messages one at a time, oldest first
	FOREACH part IN ARRAY payments.chat_text_parts(body, continued) LOOP
		PERFORM payments.chat_send(provider, wa_id, payments.chat_text(wa_id, part));
	END LOOP;
	-- the report as a CSV document too, queued after the text (a chat gets its messages in order).
	-- Uploaded as text/plain: the Cloud API takes no text/csv (its document types are text/plain,
	-- PDF and the Office formats); the file's .csv name is what the donor's phone goes by
	IF csv IS NOT NULL THEN
		PERFORM payments.chat_send(provider, wa_id,
			payments.chat_document(wa_id, format('report-%s.csv', to_char(day, 'YYYY-MM-DD')),
								   format('Daily report %s (CSV)', to_char(day, 'YYYY-MM-DD')), csv, 'text/plain'));
	END IF;
END
$$;
COMMENT ON FUNCTION payments.chat_admin(text, text, text) IS
	'Answers an admin number''s command (the command and its argument apart at any white space, payments.chat_trim''s): /stats (today''s totals per currency: net of fees and refunds), /report [day] (payments.daily_report, net of fees, as messages of at most 4096 characters split at line breaks, payments.chat_text_parts, and as a CSV document), /approve <reference> (marks a payment paid through the state machine; warns that the donor may still be prompted only when the payment was pending), /unsent (the donations of this chat whose donor was not sent a notice, chat_donations.unsent_notice, of the last 30 days), /admin (help)';

-- Locks rows of payments.chat_locks by name until the transaction ends, made when missing, one
-- after the other in one order (C collation), so that two transactions taking several never wait
-- for each other
CREATE FUNCTION payments.chat_lock(VARIADIC names text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	one		text;
BEGIN
	-- one name after the other, made and locked before the next: a name made is held until the
	-- end, so making them all first would hold a later one while waiting for an earlier
	FOR one IN SELECT DISTINCT u.n COLLATE pg_catalog."C" FROM pg_catalog.unnest(names) AS u (n)
				WHERE u.n IS NOT NULL ORDER BY 1 LOOP
		INSERT INTO payments.chat_locks AS l (name) VALUES (one) ON CONFLICT (name) DO NOTHING;
		PERFORM FROM payments.chat_locks l WHERE l.name = one FOR UPDATE;
	END LOOP;
END
$$;
COMMENT ON FUNCTION payments.chat_lock(text[]) IS
	'Locks the rows of payments.chat_locks of these names until the transaction ends (made when missing; in C-collation order): what the chat serializes on';

-- The conversations of one WhatsApp id are created (a first message) and moved (chat_move_user)
-- one at a time: a lock per (provider, id), taken in one order when a move takes two.  Without it
-- a first message from a new number, committing while a number change renames the old
-- conversation to it, made the rename fail on the primary key (the change then applied only at
-- its retry, the donor's notices going to the old number meanwhile).
CREATE FUNCTION payments.chat_lock_user(provider text, VARIADIC ids text[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.chat_lock(VARIADIC ARRAY(SELECT 'chat ' || provider || ' ' || u.i FROM pg_catalog.unnest(ids) AS u (i)))
$$;
COMMENT ON FUNCTION payments.chat_lock_user(text, text[]) IS
	'Locks WhatsApp ids of a meta provider until the transaction ends (payments.chat_lock), so that their conversations are created and moved one at a time';

-- The donor_key of a WhatsApp id's gifts (payments.keep_donor_key): a phone number's, else a
-- business-scoped user id's (a donor whose number is withheld)
CREATE FUNCTION payments.whatsapp_donor_key(wa_id text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN payments.whatsapp_bsuid(wa_id) IS NOT NULL THEN 'whatsapp:' || wa_id
				WHEN payments.e164_digits(wa_id) IS NOT NULL THEN 'phone:' || payments.e164_digits(wa_id) END
$$;
COMMENT ON FUNCTION payments.whatsapp_donor_key(text) IS
	'The donor key (payments.payments.donor_key) of the gifts of a WhatsApp id: phone:<E.164 digits> for a phone number, whatsapp:<id> for a business-scoped user id';

-- A WhatsApp user who changes phone number (Meta's system message user_changed_number), or whose
-- business-scoped user id changes (user_changed_user_id) is the same person: what the chat keeps
-- for them under the old id follows them to the new one, so that the notice of a donation still
-- pending (its thank-you with the receipt, its failure) goes to the number they have now, and
-- *check* from it finds the donation.  The old number no longer reaches them: the phone company
-- may give it to someone else, who must not get the donor's receipts.
--   What moves: the conversation (chat_sessions; when the new id has one already, say a message
-- from the new number came first, the one with the later activity is kept whole, with the later
-- of the two times of the last message answered, so that a late message to either is still not
-- answered, and the other is dropped: a conversation is one draft at a time), the donations
-- (chat_donations.wa_id: whom their notices go to, what check lists), the volunteer entry (the
-- one updated last, when both ids have one), the flow tokens still valid (a Flow opened before the
-- change submits under the new id), and the messages queued to the old id and not yet out
-- (outbox rows pending, no attempt in flight: a message being sent when the change is applied
-- keeps its recipient, and its retries go there; the rows are locked first, so that no claim of
-- deliver_outbox starts while they are re-addressed).
--   The payments' donor: the donor_key of the payments made under the old id is the new id's
-- (payments.payments.donor_moved), so that the reports count one donor.
--   What stays: the history.  A payment's donor_phone, a Paynow initiation's phone (the number
-- the mobile money was asked from, which Paynow and the reconciliation match), the Flow
-- submissions, and the messages sent, dead or in flight tell what happened, at the number it
-- happened to; expired flow tokens are dead already.
--   changed_at: the time of the change (the system message's).  A conversation at the old id
-- that answered a message after it is not the user's any more (a number given to someone else,
-- who wrote from it): nothing moves, and false is returned, as when there is nothing to move.
CREATE FUNCTION payments.chat_move_user(provider text, from_wa_id text, to_wa_id text, new_user_id text,
										changed_at timestamptz DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	src		payments.chat_sessions;
	dst		payments.chat_sessions;
	gone	payments.volunteers;
	kept	payments.volunteers;
	n		bigint;
	moved	boolean := false;
BEGIN
	IF from_wa_id IS NULL OR to_wa_id IS NULL OR from_wa_id = to_wa_id
	   OR payments.whatsapp_user_id(from_wa_id) IS DISTINCT FROM from_wa_id
	   OR payments.whatsapp_user_id(to_wa_id) IS DISTINCT FROM to_wa_id
	   OR payments.whatsapp_bsuid(new_user_id) IS DISTINCT FROM new_user_id THEN
		RETURN false;
	END IF;
	PERFORM payments.chat_lock_user(chat_move_user.provider, from_wa_id, to_wa_id);
	-- both conversations locked, in wa_id order (as any other move touching the two locks them)
	PERFORM FROM payments.chat_sessions cs
	  WHERE cs.provider = chat_move_user.provider AND cs.wa_id IN (from_wa_id, to_wa_id)
	  ORDER BY cs.wa_id FOR UPDATE;
	SELECT cs.* INTO src FROM payments.chat_sessions cs WHERE cs.provider = chat_move_user.provider AND cs.wa_id = from_wa_id;
	SELECT cs.* INTO dst FROM payments.chat_sessions cs WHERE cs.provider = chat_move_user.provider AND cs.wa_id = to_wa_id;
	-- the old id used since the change is someone else's now (a number given to another user): its
	-- conversation saw a message after it (in Meta's time); without one that says when, what was
	-- made for the old id after the change (a Flow's donation and token need no conversation)
	IF src.wa_id IS NOT NULL AND greatest(src.last_message_at, src.last_seen_at) IS NOT NULL THEN
		IF greatest(src.last_message_at, src.last_seen_at) > changed_at THEN
			RETURN false;
		END IF;
	ELSIF EXISTS (SELECT FROM payments.chat_donations d
				   WHERE d.provider = chat_move_user.provider AND d.wa_id = from_wa_id AND d.created_at > changed_at)
		  OR EXISTS (SELECT FROM payments.flow_tokens t
					  WHERE t.provider = chat_move_user.provider AND t.wa_id = from_wa_id AND t.created_at > changed_at)
		  OR EXISTS (SELECT FROM payments.volunteers v
					  WHERE v.provider = chat_move_user.provider AND v.wa_id = from_wa_id AND v.updated_at > changed_at) THEN
		RETURN false;
	END IF;

	-- the conversation; its BSUID is the new one when given, else the one the new id's own
	-- conversation saw (a message from the new number carries the new BSUID), else none: a phone
	-- number change regenerates the BSUID, and the old one reaches nobody
	IF src.wa_id IS NOT NULL THEN
		IF dst.wa_id IS NOT NULL AND dst.last_activity_at >= src.last_activity_at THEN
			DELETE FROM payments.chat_sessions cs WHERE cs.provider = chat_move_user.provider AND cs.wa_id = from_wa_id;
			UPDATE payments.chat_sessions cs
			   SET user_id = coalesce(new_user_id, dst.user_id),
				   last_message_at = greatest(dst.last_message_at, src.last_message_at),
				   last_seen_at = greatest(dst.last_seen_at, src.last_seen_at),
				   messages = dst.messages + src.messages
			 WHERE cs.provider = chat_move_user.provider AND cs.wa_id = to_wa_id;
		ELSE
			DELETE FROM payments.chat_sessions cs WHERE cs.provider = chat_move_user.provider AND cs.wa_id = to_wa_id;
			UPDATE payments.chat_sessions cs
			   SET wa_id = to_wa_id, user_id = coalesce(new_user_id, dst.user_id),
				   last_message_at = greatest(dst.last_message_at, src.last_message_at),
				   last_seen_at = greatest(dst.last_seen_at, src.last_seen_at),
				   messages = src.messages + coalesce(dst.messages, 0)
			 WHERE cs.provider = chat_move_user.provider AND cs.wa_id = from_wa_id;
		END IF;
		moved := true;
	ELSIF dst.wa_id IS NOT NULL AND new_user_id IS DISTINCT FROM dst.user_id AND new_user_id IS NOT NULL THEN
		UPDATE payments.chat_sessions cs SET user_id = new_user_id
		 WHERE cs.provider = chat_move_user.provider AND cs.wa_id = to_wa_id;
	END IF;

	-- who gave: the payments of the donor under the old id are of the donor known by the new one
	-- (the reports count one donor), their details kept; a payment moved before keeps the key its
	-- details give.  Before the donations: a payment's news locks its payment, then its donation
	UPDATE payments.payments p
	   SET donor_moved = ARRAY[coalesce(p.donor_moved[1], p.donor_key), payments.whatsapp_donor_key(to_wa_id)]
	 WHERE p.donor_key = payments.whatsapp_donor_key(from_wa_id) AND p.kind = 'collection';
	GET DIAGNOSTICS n = ROW_COUNT;
	moved := moved OR n > 0;

	-- the donations: whom their notices go to, what *check* and the pending-donation guard find
	UPDATE payments.chat_donations d SET wa_id = to_wa_id
	 WHERE d.provider = chat_move_user.provider AND d.wa_id = from_wa_id;
	GET DIAGNOSTICS n = ROW_COUNT;
	moved := moved OR n > 0;

	-- the volunteer entry: the one updated last, when both ids have one
	SELECT v.* INTO gone FROM payments.volunteers v
	 WHERE v.provider = chat_move_user.provider AND v.wa_id = from_wa_id FOR UPDATE;
	IF gone.id IS NOT NULL THEN
		SELECT v.* INTO kept FROM payments.volunteers v
		 WHERE v.provider = chat_move_user.provider AND v.wa_id = to_wa_id FOR UPDATE;
		IF kept.id IS NOT NULL AND kept.updated_at >= gone.updated_at THEN
			DELETE FROM payments.volunteers v WHERE v.id = gone.id;
		ELSE
			DELETE FROM payments.volunteers v WHERE v.id = kept.id;
			UPDATE payments.volunteers v SET wa_id = to_wa_id WHERE v.id = gone.id;
		END IF;
		moved := true;
	END IF;

	-- the flow tokens still valid
	UPDATE payments.flow_tokens t SET wa_id = to_wa_id
	 WHERE t.provider = chat_move_user.provider AND t.wa_id = from_wa_id AND t.expires_at > now();
	GET DIAGNOSTICS n = ROW_COUNT;
	moved := moved OR n > 0;

	-- the messages queued and not out: locked first (a claim skips locked rows, and one that
	-- committed before the lock shows its attempt to the next statement), then re-addressed,
	-- "to" a phone number, "recipient" a BSUID (a document's in its message); an attempt in
	-- flight is one unfinished within its lease (past it, the next claim closes it as interrupted)
	PERFORM FROM payments.outbox o
	  WHERE o.provider = chat_move_user.provider AND o.recipient = from_wa_id AND o.state = 'pending'
	  ORDER BY o.id FOR UPDATE;
	UPDATE payments.outbox o
	   SET recipient = to_wa_id,
		   payload = CASE WHEN o.payload ? 'message'
						  THEN jsonb_set(o.payload, '{message}', (o.payload -> 'message') - 'to' - 'recipient'
										 || jsonb_build_object(payments.whatsapp_recipient_field(to_wa_id), to_wa_id))
						  ELSE o.payload - 'to' - 'recipient'
							   || jsonb_build_object(payments.whatsapp_recipient_field(to_wa_id), to_wa_id) END
	 WHERE o.provider = chat_move_user.provider AND o.recipient = from_wa_id AND o.state = 'pending'
	   AND NOT (o.next_attempt_at > now()
				AND EXISTS (SELECT FROM payments.outbox_attempts a WHERE a.outbox_id = o.id AND a.finished_at IS NULL));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN moved OR n > 0;
END
$$;
COMMENT ON FUNCTION payments.chat_move_user(text, text, text, text, timestamptz) IS
	'Follows a WhatsApp user from one id to another (a new phone number, or a new business-scoped user id): moves the conversation (merged with one the new id has: the later active kept), its BSUID set to new_user_id (else the new id''s conversation''s, else none), the donations, the volunteer entry (the later updated kept), the flow tokens still valid, the messages queued and not in flight (re-addressed), and the donor of the old id''s payments (donor_moved: one donor in the reports); history (payments, Paynow initiations, Flow submissions, messages sent) stays. Nothing moves when the old id''s conversation answered a message after changed_at. Returns whether anything moved';

CREATE FUNCTION payments.chat_message(ev payments.events, settings jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cfg		jsonb := payments.chat_settings(settings);
	msg		jsonb := ev.payload -> 'message';
	-- the sender: their phone number when Meta gives it (messages[].from).  A user with a WhatsApp
	-- username may have it withheld; every message carries their business-scoped user id
	-- (messages[].from_user_id, a BSUID), and then the sender is the conversation that last saw
	-- that BSUID (a phone number's, kept so that replies still go to the number, as Meta
	-- recommends, and the donations there are still theirs), else the BSUID itself
	phone	text := payments.e164_digits(ev.payload -> 'message' ->> 'from');
	-- (or, in a delivery of one sender, their contact's user_id: Meta documents it on both)
	uid		text := payments.whatsapp_bsuid(coalesce(ev.payload -> 'message' ->> 'from_user_id',
							CASE WHEN jsonb_typeof(ev.payload -> 'contacts') = 'array'
									  AND jsonb_array_length(ev.payload -> 'contacts') = 1
								 THEN ev.payload -> 'contacts' -> 0 ->> 'user_id' END));
	wa		text := coalesce(phone, payments.chat_wa_id_of(ev.provider, uid));
	-- the profile of the sender: a delivery of several messages lists every sender's contact (by
	-- phone number, contacts[].wa_id; without one, by BSUID, contacts[].user_id)
	profile	text := left((SELECT c -> 'profile' ->> 'name'
							FROM jsonb_array_elements(CASE jsonb_typeof(ev.payload -> 'contacts')
														  WHEN 'array' THEN ev.payload -> 'contacts' ELSE '[]' END) c
						   WHERE CASE WHEN phone IS NOT NULL THEN payments.e164_digits(c ->> 'wa_id') = phone
									  ELSE c ->> 'user_id' = uid END LIMIT 1), 100);
	cap		double precision := (cfg ->> 'rate_limit')::double precision;
	s		payments.chat_sessions;
	bucket	double precision;
	st		text;
	drafted	jsonb;
	btn		text;
	txt		text;
	typed	text;
	word	text;
	drafting boolean;
	late	boolean := false;
	amount	numeric;
	low		numeric;
	high	numeric;
	choice	text;
	named	text;
	labels	text[];
	pending	bigint;
	anyway	text;
	queued	record;
	pay		payments.payments;
	change	payments.payment_change;
	cancelled integer;
	waiting	record;
	notice	jsonb := ev.payload -> 'message' -> 'system';
	old_uid	text;
	new_uid	text;
	new_wa	text;
	moved	boolean;
BEGIN
	IF ev.payload ->> 'field' IS DISTINCT FROM 'messages'
	   OR NOT (cfg ? 'access_token' AND cfg ? 'phone_number_id')
	   OR ev.payload -> 'metadata' ->> 'phone_number_id' IS DISTINCT FROM cfg ->> 'phone_number_id' THEN
		RETURN 'ignored';		-- no conversation on this provider, or another number of the same app
	END IF;

	-- WhatsApp's own notice (a system message: no contacts, never answered) that the user changed
	-- phone number (user_changed_number; customer_changed_number before Graph API v12) or that
	-- their business-scoped user id changed (user_changed_user_id, since August 2026): what the
	-- chat keeps for them follows them (payments.chat_move_user); applied when something moved.
	-- messages[].from is the OLD number; system.wa_id the new one (new_wa_id before v12, and
	-- system.customer the old one); system.previous_user_id the old BSUID (a number change
	-- regenerates it too) and system.user_id the new one (as pywa reads it; Meta's reference
	-- names the previous fields only), else the message's from_user_id when it is not the previous
	IF msg ->> 'type' = 'system' THEN
		old_uid := payments.whatsapp_bsuid(notice ->> 'previous_user_id');
		new_uid := coalesce(payments.whatsapp_bsuid(notice ->> 'user_id'),
							CASE WHEN old_uid IS NOT NULL
								 THEN nullif(payments.whatsapp_bsuid(msg ->> 'from_user_id'), old_uid) END);
		IF notice ->> 'type' IN ('user_changed_number', 'customer_changed_number') THEN
			new_wa := payments.e164_digits(coalesce(notice ->> 'wa_id', notice ->> 'new_wa_id'));
			IF new_wa IS NULL THEN
				RETURN 'ignored';
			END IF;
			-- a conversation at the old number that carries another BSUID than the previous one is
			-- someone else's (the number given to another user since)
			IF old_uid IS NOT NULL AND EXISTS (SELECT FROM payments.chat_sessions cs
												WHERE cs.provider = ev.provider AND cs.wa_id = phone
												  AND cs.user_id IS DISTINCT FROM old_uid AND cs.user_id IS NOT NULL) THEN
				RETURN 'ignored';
			END IF;
			-- the old number; without it (withheld), the conversation that saw the old BSUID, else
			-- the one keyed by it; then a conversation of the old BSUID's own too (one written
			-- before the number was shown), which the new number now is
			moved := payments.chat_move_user(ev.provider,
						coalesce(phone, payments.e164_digits(notice ->> 'customer'),
								 payments.chat_wa_id_of(ev.provider, old_uid)),
						new_wa, new_uid, ev.event_at);
			moved := payments.chat_move_user(ev.provider, old_uid, new_wa, new_uid, ev.event_at) OR moved;
		ELSIF notice ->> 'type' = 'user_changed_user_id' AND old_uid IS NOT NULL AND new_uid IS NOT NULL
			  AND old_uid <> new_uid THEN
			-- a conversation at a phone number keeps its key and learns the new BSUID; one keyed by
			-- the old BSUID (a user whose number is withheld) moves to the new one
			UPDATE payments.chat_sessions cs SET user_id = new_uid
			 WHERE cs.provider = ev.provider AND cs.user_id = old_uid AND cs.wa_id <> old_uid;
			moved := FOUND;
			moved := payments.chat_move_user(ev.provider, old_uid, new_uid, new_uid, ev.event_at) OR moved;
		END IF;
		RETURN CASE WHEN moved THEN 'applied' ELSE 'ignored' END;
	END IF;
	IF wa IS NULL THEN
		RETURN 'ignored';		-- no valid sender
	END IF;
	-- the conversations of one id are created and moved one at a time (payments.chat_lock_user)
	PERFORM payments.chat_lock_user(ev.provider, wa);
	-- a user known by BSUID alone (a conversation, a Flow's donations, a volunteer entry keyed by
	-- it) whose number now shows (Meta's contact book, a message within 30 days): what the chat
	-- keeps for them moves to the number, as it would had they changed number, so that their draft,
	-- donations and *check* go on there
	IF phone IS NOT NULL AND uid IS NOT NULL
	   AND (EXISTS (SELECT FROM payments.chat_sessions cs WHERE cs.provider = ev.provider AND cs.wa_id = uid)
			OR EXISTS (SELECT FROM payments.chat_donations d WHERE d.provider = ev.provider AND d.wa_id = uid)
			OR EXISTS (SELECT FROM payments.volunteers v WHERE v.provider = ev.provider AND v.wa_id = uid)) THEN
		PERFORM payments.chat_move_user(ev.provider, uid, phone, uid, ev.event_at);
	END IF;
	INSERT INTO payments.chat_sessions AS cs (provider, wa_id, tokens, user_id) VALUES (ev.provider, wa, cap, uid)
	ON CONFLICT (provider, wa_id) DO NOTHING;
	SELECT cs.* INTO s FROM payments.chat_sessions cs WHERE cs.provider = ev.provider AND cs.wa_id = wa FOR UPDATE;
	-- the BSUID the message carries, kept for the messages that will come without the phone number,
	-- and Meta's time of the latest message seen, whether answered or not
	UPDATE payments.chat_sessions cs SET user_id = coalesce(uid, cs.user_id),
										 last_seen_at = greatest(cs.last_seen_at, ev.event_at)
	 WHERE cs.provider = s.provider AND cs.wa_id = s.wa_id;

	-- Meta delivers late and out of order: a message older than the last one answered is not
	-- answered.  But for a cancel (or stop) sent after the message that confirmed a donation whose
	-- Paynow request is still queued (cancel, Confirm, then hi, the hi delivered first): that
	-- donation is cancelled as a timely cancel would have cancelled it (below, late), the donor
	-- told by its notice; the conversation, gone on since, is left where it is
	IF ev.event_at < s.last_message_at THEN
		IF lower(coalesce(msg -> 'interactive' -> 'button_reply' ->> 'id', msg -> 'interactive' -> 'list_reply' ->> 'id',
						  msg -> 'button' ->> 'payload', payments.chat_word(msg -> 'text' ->> 'body')) COLLATE pg_catalog."C")
				IN ('cancel', 'stop')
		   AND EXISTS (SELECT FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
						 JOIN payments.paynow_initiations i ON i.payment_id = p.id
						WHERE d.provider = ev.provider AND d.wa_id = wa AND p.status = 'pending' AND i.state = 'queued'
						  -- confirmed by a message sent before this one (the event creating its payment)
						  AND EXISTS (SELECT FROM payments.status_history h JOIN payments.events e ON e.id = h.event_id
									   WHERE h.payment_id = p.id AND h.from_status IS NULL AND e.provider = ev.provider
										 AND e.event_at < ev.event_at)) THEN
			late := true;
		ELSE
			RETURN 'ignored';
		END IF;
	END IF;
	-- a reaction (an emoji put on one of our messages) asks nothing, nor does a message deleted
	-- (revoke: a number also used in the WhatsApp Business app, Meta's "coexistence"), nor a Flow's
	-- completion (nfm_reply: the Flow's data exchange started the payment and said so), nor the
	-- answer to a request for permission to call (call_permission_reply: the clinic's staff asked
	-- it, from the Business app or the Calling API), nor a message in a group (group_id: a reply
	-- would go to the sender alone)
	IF msg ->> 'type' IN ('reaction', 'revoke')
	   OR msg -> 'interactive' ->> 'type' IN ('nfm_reply', 'call_permission_reply')
	   OR msg ? 'group_id' THEN
		RETURN 'ignored';
	END IF;

	-- the token bucket: rate_limit messages, refilled in rate_window seconds
	bucket := least(cap, s.tokens + greatest(extract(epoch FROM now() - s.tokens_at)::double precision, 0)
							   * cap / (cfg ->> 'rate_window')::double precision);
	IF bucket < 1 THEN
		UPDATE payments.chat_sessions cs SET tokens = bucket, tokens_at = now(), limited_at = coalesce(cs.limited_at, now())
		 WHERE cs.provider = s.provider AND cs.wa_id = s.wa_id;
		IF s.limited_at IS NULL THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				'You are sending messages faster than we can answer them. Please wait a few minutes, then try again.'));
		END IF;
		RETURN 'ignored';
	END IF;

	st := s.state;
	drafted := s.draft;
	IF st <> 'menu' AND NOT late
	   AND s.last_activity_at < now() - make_interval(secs => (cfg ->> 'session_timeout')::double precision) THEN
		drafted := '{}';
		-- (of the draft only: another donation of theirs may be paid, or its request live)
		PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
			'Your previous conversation expired after a while without messages, so we are starting again.' ||
			CASE WHEN st IN ('amount', 'currency', 'method', 'phone', 'purpose', 'confirm', 'edit')
				 THEN ' The donation you had not confirmed was not requested.' ELSE '' END));
		st := 'menu';
	END IF;

	btn := coalesce(msg -> 'interactive' -> 'button_reply' ->> 'id', msg -> 'interactive' -> 'list_reply' ->> 'id',
					msg -> 'button' ->> 'payload');
	-- (the Enter key's line break, a tab or a non-breaking space around it too)
	txt := payments.chat_trim(coalesce(msg -> 'text' ->> 'body', msg -> 'button' ->> 'text', ''));
	-- a command, an amount or a number typed with a full stop, ! or ? or an emoji after it ("Yes!",
	-- "Cancel.", "5.", "0771234567" and a thumbs-up): read without them (payments.chat_word); a
	-- purpose or a volunteer's answer is kept as typed (txt)
	typed := payments.chat_word(txt);
	-- request_welcome: the donor opened the chat for the first time (welcome messages enabled)
	word := CASE WHEN msg ->> 'type' = 'request_welcome' THEN 'hi' ELSE lower(coalesce(btn, typed) COLLATE pg_catalog."C") END;
	-- a donation being drafted (or volunteer details), which cancel drops
	drafting := st <> 'menu';
	-- the Confirm button of a summary tapped at the Edit list: that summary's Confirm (the draft
	-- it shows confirmed, as on the summary; an earlier summary's is refused there as it is)
	IF st = 'edit' AND starts_with(btn, 'confirm_') THEN
		st := 'confirm';
	END IF;
	-- Donate anyway: the button names the donation it goes past (donate_anyway_<payment id>); the
	-- words typed name none, so they stand for the button of the notice they answer: the one they
	-- quote (context.id, the wamid of our message), else the last the conversation gave (kept in
	-- the draft: warned, at the menu after *donate*; pending_ok, while drafting past it).  Of none
	-- (or another donation than the one waiting now) they are *donate*, which warns again
	IF starts_with(btn, 'donate_anyway') THEN
		anyway := btn;
	ELSIF btn IS NULL AND word IN ('donate anyway', 'give anyway') THEN
		anyway := 'donate_anyway_' || coalesce(
			CASE WHEN msg -> 'context' ->> 'id' IS NOT NULL
				 THEN (SELECT substr(b -> 'reply' ->> 'id', 15)
						 FROM payments.outbox o, jsonb_array_elements(o.payload -> 'interactive' -> 'action' -> 'buttons') b
						WHERE o.provider = ev.provider AND o.wamid = msg -> 'context' ->> 'id' AND o.recipient = wa
						  AND starts_with(b -> 'reply' ->> 'id', 'donate_anyway_') LIMIT 1)
				 ELSE coalesce(drafted ->> 'warned', drafted ->> 'pending_ok') END, '');
	END IF;

	IF msg ->> 'type' NOT IN ('text', 'interactive', 'button', 'request_welcome')
	   OR (msg ->> 'type' = 'interactive' AND btn IS NULL) THEN
		-- a picture, sticker, voice note, location, contact, an interactive reply that is not a
		-- button's or a list's...: the conversation stays where it was; told once a minute at most
		-- (an album of pictures is a message each).  A message edited
		-- (edit: coexistence, as revoke) is not read either: its first version was answered, and an
		-- amount changed after it would not change the donation the donor may confirm
		IF s.media_notice_at IS NULL OR s.media_notice_at < now() - interval '1 minute' THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				CASE WHEN msg ->> 'type' = 'edit'
					 THEN 'Sorry, we cannot read edited messages here. ' ||
						  CASE WHEN st = 'menu' THEN 'Please send it again as a new message, or send *help*.'
							   ELSE 'Please send your answer to the last question again as a new message, or send *help*.' END
					 ELSE 'Sorry, we can only read text and buttons here. ' ||
						  CASE WHEN st = 'menu' THEN 'Send *help* to see what you can do.'
							   ELSE 'Please answer the last question with a message or a button, or send *help*.' END END));
			UPDATE payments.chat_sessions cs SET media_notice_at = now()
			 WHERE cs.provider = s.provider AND cs.wa_id = s.wa_id;
		END IF;
	ELSIF btn IS NULL AND left(txt, 1) = '/'
	   AND (wa IN (SELECT payments.chat_admin_id(a) FROM jsonb_array_elements_text(cfg -> 'admin_numbers') a)
			OR uid IN (SELECT payments.chat_admin_id(a) FROM jsonb_array_elements_text(cfg -> 'admin_numbers') a)) THEN
		-- an admin listed by phone number, or by BSUID
		PERFORM payments.chat_admin(ev.provider, wa, txt);
	ELSIF word IN ('cancel', 'stop')
		  -- at the summary, a typed no is not to send it: the draft is cancelled
		  OR (st = 'confirm' AND btn IS NULL AND word IN ('no', 'kwete', 'hayi')) THEN
		-- (a late cancel cancels a queued donation confirmed before it, and nothing else)
		IF NOT late THEN
			st := 'menu';
			drafted := '{}';
		END IF;
		-- what is cancelled is what the donor was doing here: the draft, and a donation confirmed
		-- whose Paynow request is still queued (initiate_payments sends it on its next pass): it has
		-- prompted nobody, so its payment is cancelled through the state machine (status history;
		-- the donor told at commit, payments.chat_payment_notice) and its initiation skipped.  The
		-- initiation is locked as claim_initiations locks it: one being claimed at this instant is
		-- waited for, and is then sending, no longer queued (this statement's check of its state
		-- is made again on the row locked): it may reach the phone, and is not cancelled
		cancelled := 0;
		FOR queued IN
			SELECT i.id, p.id AS payment_id, p.provider, p.provider_ref
			  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
			  JOIN payments.paynow_initiations i ON i.payment_id = p.id
			 WHERE d.provider = ev.provider AND d.wa_id = wa AND p.status = 'pending' AND i.state = 'queued'
			   AND (NOT late OR EXISTS (SELECT FROM payments.status_history h JOIN payments.events e ON e.id = h.event_id
										 WHERE h.payment_id = p.id AND h.from_status IS NULL AND e.provider = ev.provider
										   AND e.event_at < ev.event_at))
			 ORDER BY i.id
			   FOR UPDATE OF i
		LOOP
			-- the payment read again under its lock: one approved by hand meanwhile is left as it is
			-- (claim_initiations skips it)
			SELECT p.* INTO pay FROM payments.payments p WHERE p.id = queued.payment_id FOR UPDATE;
			CONTINUE WHEN pay.status <> 'pending';
			change := NULL;
			change.provider_ref := queued.provider_ref;
			change.creates := false;
			change.status := 'cancelled';
			change.status_at := greatest(now(), pay.status_at);
			change.metadata := jsonb_build_object('cancelled_by', 'donor');
			PERFORM payments.apply_change(ev.id, queued.provider, change);
			UPDATE payments.paynow_initiations i
			   SET state = 'skipped', finished_at = now(), error = 'the payment was cancelled by the donor before it was initiated'
			 WHERE i.id = queued.id;
			cancelled := cancelled + 1;
		END LOOP;
		-- a payment already asked for whose request may still be live (sending, unconfirmed, or
		-- sent within the hour: payments.chat_pending_donation, as *check* and *donate* read it) is
		-- not cancelled by it: the donor is told so.  One cancelled here is told of by its notice
		-- alone.  Otherwise what is said is of the draft only: a donation of theirs may have been
		-- paid (then said so, with its receipt, and that the clinic refunds), and a message with
		-- no draft cancels nothing
		SELECT x.* INTO waiting FROM payments.chat_pending_donation(ev.provider, wa) x;
		IF late AND cancelled > 0 THEN
			NULL;		-- told by the notice of the donation cancelled
		ELSIF waiting.payment_id IS NOT NULL THEN
			-- (a late cancel finding the request claimed meanwhile: it dropped no draft)
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				CASE WHEN drafting AND NOT late THEN 'Cancelled. A payment already requested is not cancelled by this: '
					 ELSE 'A payment already requested cannot be cancelled here: ' END
				|| 'if you do not want to pay it, decline the request on your phone (or leave Paynow''s page). '
				|| 'Send *donate* whenever you would like to give.'));
		ELSIF late THEN
			NULL;
		ELSIF cancelled = 0 AND drafting THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				-- (drafting: the session did not expire, so s.state is where the donor was)
				CASE WHEN s.state LIKE 'volunteer%' THEN 'Cancelled. '
					 ELSE 'Cancelled: the donation you were making was not requested, so nothing was charged for it. ' END
				|| 'Send *donate* whenever you would like to give.'));
		ELSIF cancelled = 0 THEN
			SELECT q.* INTO pay FROM payments.chat_donations d JOIN payments.payments q ON q.id = d.payment_id
			 WHERE d.provider = ev.provider AND d.wa_id = wa ORDER BY d.payment_id DESC LIMIT 1;
			IF pay.status = 'paid' THEN
				-- (paid in this transaction, its receipt is taken now, as *check* takes it)
				PERFORM payments.issue_receipt(pay.id, coalesce(pay.paid_at, pay.status_at));
			END IF;
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				'There is nothing to cancel: you are not making a donation now. ' ||
				CASE WHEN pay.status = 'paid'
					 THEN format('Your last donation, %s %s (reference %s), is paid', payments.chat_amount(pay.amount, pay.currency),
								 pay.currency, pay.reference)
						  || coalesce(', receipt number ' || (SELECT r.receipt_no FROM payments.receipts r WHERE r.payment_id = pay.id), '')
						  || '. If you did not mean to give it, please ask the clinic for a refund.'
					 ELSE 'Send *donate* whenever you would like to give.' END));
		END IF;
	ELSIF word = 'help' THEN
		labels := ARRAY(SELECT payments.chat_method_label(m)
						  FROM jsonb_array_elements_text(cfg -> 'methods') WITH ORDINALITY AS x (m, n) ORDER BY n);
		PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
			'Send *donate* to give with ' || payments.chat_or_list(labels) ||
			E', *check* for the status of your last donation, ' ||
			E'*volunteer* to offer your time, *cancel* to stop what you are doing, or *menu* for the menu.\n' ||
			'You get a receipt number here as soon as your payment is confirmed.'));
	ELSIF word = 'check' THEN
		PERFORM payments.chat_check(ev.provider, wa);
	ELSIF word IN ('donate', 'give')
		  -- a Donate anyway offered for another donation than the one waiting now (or none named: a
		  -- button sent before the buttons named it, words typed with no notice to answer) is
		  -- *donate*, which warns of this one
		  OR (anyway IS NOT NULL AND (SELECT w.payment_id FROM payments.chat_pending_donation(ev.provider, wa) w)::text
									 IS DISTINCT FROM substr(anyway, 15)) THEN
		-- a donation that may still be paid (a request Paynow may have, a prompt still live): the
		-- donor is told about it first, and gives again only by choosing to (Donate anyway); the
		-- conversation keeps which one it warned of, for a typed donate anyway
		pending := payments.chat_pending_notice(ev.provider, wa, false, NULL);
		IF pending IS NOT NULL THEN
			st := 'menu';
			drafted := jsonb_build_object('warned', pending);
		ELSE
			SELECT a.next_state, a.next_draft INTO st, drafted FROM payments.chat_advance(ev.provider, wa, cfg, '{}') a;
		END IF;
	ELSIF anyway IS NOT NULL THEN
		-- the draft keeps the donation the donor chose to go past: the confirmation warns only of a
		-- newer one
		pending := (SELECT w.payment_id FROM payments.chat_pending_donation(ev.provider, wa) w);
		SELECT a.next_state, a.next_draft INTO st, drafted
		  FROM payments.chat_advance(ev.provider, wa, cfg,
									 CASE WHEN pending IS NULL THEN '{}' ELSE jsonb_build_object('pending_ok', pending) END) a;
	ELSIF word = 'volunteer' THEN
		st := 'volunteer_name';
		drafted := '{}';
		PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
	ELSIF st = 'menu' OR word IN ('menu', 'hi', 'hello', 'start') OR left(txt, 1) = '/' THEN
		-- a greeting, anything unknown, and commands from numbers that are not admins: the menu
		st := 'menu';
		drafted := '{}';
		PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted, coalesce(profile, s.name));
	ELSIF st = 'amount' THEN
		-- a currency typed before or after the amount says which: $ and USD are USD, ZWG and ZiG
		-- are ZWG (payments.chat_currency_name, as at the currency question); 1,000 and 1 000 are
		-- 1000 (payments.chat_typed_amount)
		-- ("5." and "$5!" are 5: typed, without what ends it)
		SELECT t.named, t.amount, t.comma_cents INTO named, amount, choice FROM payments.chat_typed_amount(typed) t;
		SELECT r.low, r.high INTO low, high
		  FROM payments.chat_amount_range(cfg, coalesce(drafted ->> 'currency', named)) r;
		IF btn IS NOT NULL THEN
			-- a button of an earlier message where an amount is to be typed
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Please type the amount you would like to give, %s, like %s.',
				payments.chat_amount_ranges(cfg, drafted ->> 'currency'),
				payments.chat_amount_examples(low, high, drafted ->> 'currency'))));
		ELSIF choice IS NOT NULL AND (named IS NULL OR named = coalesce(drafted ->> 'currency', named))
			  AND choice::numeric BETWEEN low AND high THEN
			-- 10,5: cents after a comma (thousands are 1,000, three digits after it); an amount
			-- that would be refused with a dot (0,50) gets the range below, not a dot to use
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Please use a dot for cents, like %s (not "%s").', choice, left(txt, 40))));
		ELSIF named IS NOT NULL AND NOT cfg -> 'paynow_providers' ? named THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Sorry, we cannot take donations in %s here, only in %s. Please send the amount in %s, like %s.',
				named, payments.chat_or_list(ARRAY(SELECT k FROM jsonb_object_keys(cfg -> 'paynow_providers') k ORDER BY k)),
				coalesce(drafted ->> 'currency', payments.chat_or_list(
					ARRAY(SELECT k FROM jsonb_object_keys(cfg -> 'paynow_providers') k ORDER BY k))),
				(SELECT payments.chat_amount_examples(r.low, r.high, drafted ->> 'currency')
				   FROM payments.chat_amount_range(cfg, drafted ->> 'currency') r))));
		ELSIF named <> drafted ->> 'currency' THEN
			-- the draft's currency is changed with Edit, not by an amount in another
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'This donation is in %s, not %s. Please send the amount in %s, like %s (to give in %s, choose *Edit* on the summary, then Currency).',
				drafted ->> 'currency', named, drafted ->> 'currency',
				payments.chat_amount_examples(low, high, drafted ->> 'currency'), named)));
		ELSIF amount IS NULL OR amount < low OR amount > high THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Sorry, "%s" is not an amount we can take. Please send an amount %s, like %s, or send *cancel* to stop.',
				left(txt, 40), payments.chat_amount_ranges(cfg, coalesce(drafted ->> 'currency', named)),
				payments.chat_amount_examples(low, high, coalesce(drafted ->> 'currency', named)))));
		ELSE
			-- a currency named with the amount goes into the draft: its question is not asked
			SELECT a.next_state, a.next_draft INTO st, drafted
			  FROM payments.chat_advance(ev.provider, wa, cfg, drafted
					|| jsonb_build_object('amount', payments.chat_amount(amount, coalesce(drafted ->> 'currency', named)))
					|| CASE WHEN named IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('currency', named) END) a;
		END IF;
	ELSIF st = 'currency' THEN
		-- a button, or typed: the names the amount takes ($, USD, ZWG, ZiG), or a code
		choice := CASE WHEN starts_with(btn, 'cur_') THEN substr(btn, 5)
					   ELSE coalesce(payments.chat_currency_name(typed), upper(typed COLLATE pg_catalog."C")) END;
		IF cfg -> 'paynow_providers' ? choice THEN
			SELECT a.next_state, a.next_draft INTO st, drafted
			  FROM payments.chat_advance(ev.provider, wa, cfg, drafted || jsonb_build_object('currency', choice)) a;
		ELSE
			-- asked again with the currencies of now: none any more (donations switched off since
			-- the question), the donor is told so, not sent a list without choices
			SELECT a.next_state, a.next_draft INTO st, drafted FROM payments.chat_advance(ev.provider, wa, cfg, drafted) a;
		END IF;
	ELSIF st = 'method' THEN
		choice := CASE WHEN starts_with(btn, 'pay_') THEN substr(btn, 5)
					   ELSE (SELECT m FROM jsonb_array_elements_text(cfg -> 'methods') m
							  WHERE word IN (m, lower(payments.chat_method_label(m) COLLATE pg_catalog."C")) LIMIT 1) END;
		IF choice IS NOT NULL AND cfg -> 'methods' ? choice THEN
			SELECT a.next_state, a.next_draft INTO st, drafted
			  FROM payments.chat_advance(ev.provider, wa, cfg, drafted || jsonb_build_object('method', choice)) a;
		ELSE
			-- asked again with the methods of now (none: the donor is told donations cannot be made)
			SELECT a.next_state, a.next_draft INTO st, drafted FROM payments.chat_advance(ev.provider, wa, cfg, drafted) a;
		END IF;
	ELSIF st = 'phone' THEN
		choice := payments.chat_local_phone(CASE WHEN btn = 'phone_same' THEN wa ELSE typed END);
		IF btn IS NOT NULL AND btn <> 'phone_same' THEN
			-- a button of an earlier message where a number is to be typed
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Please type the %s number to pay from, like %s.', payments.chat_method_label(drafted ->> 'method'),
				CASE drafted ->> 'method' WHEN 'onemoney' THEN '0711234567' ELSE '0771234567' END)));
		ELSIF choice IS NULL THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				'Please send a Zimbabwean mobile number, like 0771234567.'));
		ELSIF NOT payments.paynow_phone_fits(drafted ->> 'method', choice) THEN
			-- Paynow would refuse it, and the request would count against the number's limits
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'%s is not a %s number. Please send the %s number to pay from, or send *cancel* to start again.',
				choice, payments.chat_method_label(drafted ->> 'method'), payments.chat_method_label(drafted ->> 'method'))));
		ELSE
			SELECT a.next_state, a.next_draft INTO st, drafted
			  FROM payments.chat_advance(ev.provider, wa, cfg, drafted || jsonb_build_object('phone', choice)) a;
		END IF;
	ELSIF st = 'purpose' THEN
		-- a button; typed, the number of a purpose in the list (1, 2., 3)), else the donor's own
		-- words: not a number (a phone number, an amount), at most 100 characters
		choice := CASE WHEN btn ~ '^purpose_[1-3]$' THEN cfg -> 'purposes' ->> (substr(btn, 9)::integer - 1)
					   WHEN btn IS NULL AND typed ~ '^[1-9][.)]?$' THEN cfg -> 'purposes' ->> (left(typed, 1)::integer - 1)
					   WHEN btn IS NULL AND length(txt) BETWEEN 1 AND 100 AND txt !~ '^[0-9[:space:]+().,/#*-]+$' THEN txt END;
		IF choice IS NULL AND btn IS NULL AND length(txt) > 100 THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Please keep the purpose to 100 characters or fewer (yours has %s), or tap one of the purposes.', length(txt))));
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		ELSIF choice IS NULL AND btn IS NULL AND txt <> '' THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Please tap one of the purposes, send its number (%s), or write what your gift is for in words.',
				CASE WHEN jsonb_array_length(cfg -> 'purposes') = 1 THEN '1'
					 ELSE '1 to ' || jsonb_array_length(cfg -> 'purposes') END)));
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		ELSIF choice IS NULL THEN
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		ELSE
			SELECT a.next_state, a.next_draft INTO st, drafted
			  FROM payments.chat_advance(ev.provider, wa, cfg, drafted || jsonb_build_object('purpose', choice)) a;
		END IF;
	ELSIF st = 'confirm' THEN
		-- typed (yes and the words for it, in English, Shona and Ndebele), or the button of the
		-- summary of this draft (a bare "confirm" id: one sent before the buttons named their draft)
		-- A thumbs-up alone (any skin tone, the emoji variation selector) is yes here only: chat_word
		-- reads it as nothing, and at any other step it is no answer
		choice := CASE WHEN word IN ('confirm', 'yes', 'y', 'ok', 'okay', 'yes please', 'hongu', 'ehe', 'yebo')
							OR (btn IS NULL AND txt ~ E'^\\U0001F44D[\\U0001F3FB-\\U0001F3FF]?\\uFE0F?$')
							OR btn = payments.chat_confirm_id(drafted) THEN 'yes' END;
		-- a typed yes replying to (quoting: context.id, the wamid of our message) another message
		-- than the latest summary sent to the donor, an earlier summary say, sent before an edit:
		-- refused as that summary's Confirm button would be
		IF choice = 'yes' AND btn IS NULL AND msg -> 'context' ->> 'id' IS NOT NULL
		   AND EXISTS (SELECT FROM payments.outbox o
						WHERE o.provider = ev.provider AND o.wamid = msg -> 'context' ->> 'id' AND o.recipient = wa
						  AND (NOT coalesce(starts_with(o.payload -> 'interactive' -> 'action' -> 'buttons' -> 0 -> 'reply' ->> 'id',
														'confirm_'), false)
							   OR EXISTS (SELECT FROM payments.outbox l
										   WHERE l.provider = ev.provider AND l.recipient = wa AND l.id > o.id
											 AND starts_with(l.payload -> 'interactive' -> 'action' -> 'buttons' -> 0 -> 'reply' ->> 'id',
															 'confirm_')))) THEN
			choice := 'stale';
		END IF;
		IF choice = 'yes' AND (SELECT f.fitted FROM payments.chat_fit_draft(cfg, drafted) f) = drafted THEN
			-- a donation that may still be paid, other than the one the donor chose to go past
			-- (Donate anyway), started since the draft was (a Flow, another device): nothing starts;
			-- the summary is sent again, its Confirm the donor's choice to give again
			pending := payments.chat_pending_notice(ev.provider, wa, true, (drafted ->> 'pending_ok')::bigint);
			IF pending IS NOT NULL THEN
				drafted := drafted || jsonb_build_object('pending_ok', pending);
				PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
			ELSE
				PERFORM payments.chat_start_payment(ev.id, ev.provider, wa, coalesce(profile, s.name), cfg, drafted);
				st := 'menu';
				drafted := '{}';
			END IF;
		ELSIF choice = 'yes' THEN
			-- the settings changed since the summary (a currency or a method no longer offered,
			-- another range of amounts): nothing starts, and the donation goes on from what no
			-- longer fits, the donor told what (payments.chat_advance)
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				'Sorry, what we can take has changed since this summary, so nothing was started.'));
			SELECT a.next_state, a.next_draft INTO st, drafted FROM payments.chat_advance(ev.provider, wa, cfg, drafted) a;
		ELSIF starts_with(btn, 'confirm_') OR choice = 'stale' THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				CASE WHEN btn IS NULL THEN 'The message you replied to is not the summary of the donation you are making now, '
					 ELSE 'That summary is not the donation you are making now, ' END
				|| 'so nothing was started from it. Here it is as it stands:'));
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		ELSIF word = 'edit' THEN
			st := 'edit';
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		ELSE
			-- anything else typed is said not to be understood, with the summary again
			IF btn IS NULL AND txt <> '' THEN
				PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
					'Sorry, we did not understand "%s". Tap *Confirm* (or type *yes*) to send the request, '
					|| '*Edit* to change it, or *Cancel* to stop.', left(txt, 40))));
			END IF;
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		END IF;
	ELSIF st = 'edit' THEN
		choice := CASE WHEN starts_with(btn, 'edit_') THEN substr(btn, 6) ELSE word END;
		IF choice IN ('amount', 'currency', 'method', 'phone', 'purpose') THEN
			-- another method usually means another number (each network has its own); another
			-- currency, another amount: the draft keeps the currency the amount was given in, and
			-- payments.chat_fit_draft drops the amount if another is chosen
			SELECT a.next_state, a.next_draft INTO st, drafted
			  FROM payments.chat_advance(ev.provider, wa, cfg,
										 drafted - choice - CASE WHEN choice = 'method' THEN 'phone' ELSE '' END
										 || CASE WHEN choice = 'currency' AND drafted ? 'amount'
												 THEN jsonb_build_object('amount_currency', drafted ->> 'currency')
												 ELSE '{}' END) a;
		ELSIF choice IN ('back', 'summary', 'yes', 'confirm', 'no', 'nothing') THEN
			-- nothing to change after all: the summary again (checked against the settings of now)
			SELECT a.next_state, a.next_draft INTO st, drafted
			  FROM payments.chat_advance(ev.provider, wa, cfg, drafted) a;
		ELSE
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		END IF;
	ELSIF st IN ('volunteer_name', 'volunteer_skills', 'volunteer_availability') THEN
		IF btn IS NOT NULL OR length(txt) NOT BETWEEN 1 AND 200 THEN
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa,
				'Please answer in words (up to 200 characters), or send *cancel* to stop.'));
		ELSIF st = 'volunteer_name' THEN
			st := 'volunteer_skills';
			drafted := drafted || jsonb_build_object('name', txt);
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		ELSIF st = 'volunteer_skills' THEN
			st := 'volunteer_availability';
			drafted := drafted || jsonb_build_object('skills', txt);
			PERFORM payments.chat_prompt(ev.provider, wa, st, cfg, drafted);
		ELSE
			INSERT INTO payments.volunteers AS v (provider, wa_id, name, skills, availability)
			VALUES (ev.provider, wa, drafted ->> 'name', drafted ->> 'skills', txt)
			ON CONFLICT (provider, wa_id) DO UPDATE
				SET name = excluded.name, skills = excluded.skills, availability = excluded.availability,
					updated_at = now();
			PERFORM payments.chat_send(ev.provider, wa, payments.chat_text(wa, format(
				'Thank you, %s! You are registered as a volunteer; the clinic will contact you %s.',
				drafted ->> 'name', CASE WHEN phone IS NULL AND payments.whatsapp_bsuid(wa) IS NOT NULL
										 THEN 'here on WhatsApp' ELSE 'on this number' END)));
			st := 'menu';
			drafted := '{}';
		END IF;
	END IF;

	UPDATE payments.chat_sessions cs
	   SET state = st, draft = drafted, name = coalesce(profile, cs.name),
		   last_message_at = greatest(cs.last_message_at, ev.event_at), last_activity_at = now(),
		   tokens = bucket - 1, tokens_at = now(), limited_at = NULL, messages = cs.messages + 1
	 WHERE cs.provider = s.provider AND cs.wa_id = s.wa_id;
	RETURN 'applied';
END
$$;
COMMENT ON FUNCTION payments.chat_message(payments.events, jsonb) IS
	'Answers one WhatsApp message (a stored meta event) through the donor''s conversation (the sender''s phone number; without one, the conversation that last saw their business-scoped user id, from_user_id, else that id): rate limit, expiry (the draft said not requested), commands read without the punctuation and emoji after them (payments.chat_word; cancel or stop: the draft, and a donation whose Paynow request is still queued, its payment cancelled and initiation skipped; with no draft, nothing to cancel, a paid last donation named with its receipt and the refund left to the clinic; check, help, menu, donate, held back by a donation that may still be paid: payments.chat_pending_notice; donate anyway, volunteer), admin commands from admin_numbers, then the step the conversation is at (a confirmed draft checked again against the settings of now: payments.chat_fit_draft; at the summary yes, ok, hongu, yebo, a thumbs-up alone... confirm and no, kwete, hayi cancel, a typed yes quoting another message than the latest summary refused as a stale Confirm; a Donate anyway button of another donation than the one waiting is donate, and so is a typed donate anyway but for the donation of the notice it quotes, else of the last notice the conversation gave (its draft: warned, pending_ok)); replies are queued in the outbox (that only text and buttons are read: once a minute at most; request_welcome: the menu); returns applied, or ignored (not for this number, no valid sender, older than the last message answered, over the rate limit, a reaction, a Flow''s completion or a group message); a system notice that the user changed phone number or business-scoped user id is not answered: what the chat keeps for them follows them (payments.chat_move_user), applied when something moved, else ignored';

CREATE FUNCTION payments.message_status_rank(status text)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 WHEN 'failed' THEN 4 ELSE 0 END
$$;
COMMENT ON FUNCTION payments.message_status_rank(text) IS
	'The order of WhatsApp message statuses (sent, delivered, read; failed last): a status only replaces a lower one';

CREATE FUNCTION payments.chat_status(ev payments.events)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s		jsonb := ev.payload -> 'status';
	item	payments.outbox;
BEGIN
	INSERT INTO payments.whatsapp_statuses (provider, wamid, status, status_at, errors)
	VALUES (ev.provider, s ->> 'id', s ->> 'status', ev.event_at, s -> 'errors')
	ON CONFLICT DO NOTHING;
	IF payments.message_status_rank(s ->> 'status') = 0 THEN
		RETURN 'ignored';
	END IF;
	UPDATE payments.outbox o
	   SET message_status = s ->> 'status', message_status_at = ev.event_at,
		   message_errors = coalesce(s -> 'errors', o.message_errors)
	 WHERE o.provider = ev.provider AND o.wamid = s ->> 'id'
	   AND payments.message_status_rank(s ->> 'status') > payments.message_status_rank(o.message_status)
	RETURNING o.* INTO item;
	IF NOT FOUND THEN
		RETURN 'ignored';
	END IF;
	PERFORM payments.chat_resend_notice(item);
	RETURN 'applied';
END
$$;
COMMENT ON FUNCTION payments.chat_status(payments.events) IS
	'Applies a Meta message status to the outbox row of the message (by wamid), forward only (a donation''s notice as text failed with 131047 is sent again as a template: payments.chat_resend_notice); kept in whatsapp_statuses for a message whose wamid is not stored yet; applied or ignored';

CREATE FUNCTION payments.chat_event(ev payments.events, settings jsonb)
RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN ev.payload ? 'message' THEN payments.chat_message(ev, settings)
				WHEN ev.payload ? 'status' THEN payments.chat_status(ev)
				ELSE 'ignored' END
$$;
COMMENT ON FUNCTION payments.chat_event(payments.events, jsonb) IS
	'Applies a stored meta event: a message to its conversation, a status to the message it is about; other changes are ignored';

CREATE FUNCTION payments.chat_message_sent(outbox_id bigint, response text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	item	payments.outbox;
	sent_id	text;
BEGIN
	BEGIN
		sent_id := (response::jsonb) -> 'messages' -> 0 ->> 'id';
	EXCEPTION WHEN data_exception THEN
		sent_id := NULL;
	END;
	IF sent_id IS NULL OR length(sent_id) > 255 THEN
		RETURN;
	END IF;
	UPDATE payments.outbox o SET wamid = sent_id WHERE o.id = chat_message_sent.outbox_id RETURNING o.* INTO item;
	-- statuses that came before the answer was recorded
	UPDATE payments.outbox o
	   SET message_status = w.status, message_status_at = w.status_at, message_errors = w.errors
	  FROM (SELECT w.* FROM payments.whatsapp_statuses w
			 WHERE w.provider = item.provider AND w.wamid = sent_id AND payments.message_status_rank(w.status) > 0
			 ORDER BY payments.message_status_rank(w.status) DESC LIMIT 1) AS w
	 WHERE o.id = item.id
	RETURNING o.* INTO item;
	IF FOUND THEN
		PERFORM payments.chat_resend_notice(item);
	END IF;
END
$$;
COMMENT ON FUNCTION payments.chat_message_sent(bigint, text) IS
	'Keeps the wamid the Graph API answered for a sent WhatsApp message, and applies the statuses Meta reported before (as payments.chat_status does); used by record_delivery';

-- A WhatsApp template message: an approved template's name and language (receipt_template,
-- notice_template) and its body's parameters, each on one line (Meta refuses a parameter with a
-- line break, a tab or a run of spaces: each such run is one space)
CREATE FUNCTION payments.chat_template(recipient text, template jsonb, parameters text[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object('messaging_product', 'whatsapp', 'recipient_type', 'individual',
							  payments.whatsapp_recipient_field(recipient), recipient, 'type', 'template',
							  'template', jsonb_build_object('name', template ->> 'name',
								  'language', jsonb_build_object('code', template ->> 'language'),
								  'components', jsonb_build_array(jsonb_build_object('type', 'body', 'parameters',
									  (SELECT jsonb_agg(jsonb_build_object('type', 'text', 'text',
														regexp_replace(t.parameter, '[[:space:]]+', ' ', 'g')) ORDER BY t.n)
										 FROM unnest(parameters) WITH ORDINALITY AS t (parameter, n))))))
$$;
COMMENT ON FUNCTION payments.chat_template(text, jsonb, text[]) IS
	'A WhatsApp template message (Graph API send-message body: to a phone number, or recipient a business-scoped user id) of a template setting ({"name", "language"}) with its body parameters in order, each on one line (line breaks, tabs and runs of spaces made one space)';

CREATE FUNCTION payments.chat_receipt_template(payment_id bigint, template jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT payments.chat_template(d.wa_id, template, ARRAY[
			coalesce(nullif(btrim(regexp_replace(p.donor_name, '[[:space:]]+', ' ', 'g')), ''), 'friend'),
			format('%s %s (reference %s)', payments.chat_amount(p.amount, p.currency), p.currency, p.reference)
				|| coalesce(' for ' || d.purpose, ''),
			r.receipt_no])
	  FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
	  LEFT JOIN payments.receipts r ON r.payment_id = p.id
	 WHERE d.payment_id = chat_receipt_template.payment_id
$$;
COMMENT ON FUNCTION payments.chat_receipt_template(bigint, jsonb) IS
	'The thank-you of a WhatsApp donation as its provider''s receipt_template: the donor''s name (friend when unknown), the gift (amount, currency, reference, purpose) and the receipt number';

-- (called by payments.transition_committed at commit, after the receipt is issued, so that the
-- thank-you carries its number)
CREATE FUNCTION payments.chat_payment_notice(transition payments.status_history)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	d		payments.chat_donations;
	p		payments.payments;
	gift	text;
	body	text;
	template jsonb;
	recent	boolean;
BEGIN
	-- (FOR SHARE: a number change moving it, still uncommitted, is waited for, and its wa_id read)
	SELECT x.* INTO d FROM payments.chat_donations x WHERE x.payment_id = transition.payment_id FOR SHARE;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT x.* INTO p FROM payments.payments x WHERE x.id = transition.payment_id;
	-- moved on again in the same transaction: that move tells the donor; but a failed one cancelled
	-- since (Paynow's Failed and Cancelled in one batch) is told it did not go through, the
	-- cancelled notice following no failed one
	IF p.status <> transition.to_status AND NOT (transition.to_status = 'failed' AND p.status = 'cancelled') THEN
		RETURN;
	END IF;
	-- paid again (a dispute won, or settled by an admin's /approve): the donor was thanked, with
	-- the receipt, when it was first paid, unless that thank-you was never queued (paid and
	-- disputed in one transaction: the payment had moved on at the commit)
	IF transition.to_status = 'paid' THEN
		IF d.thanked_at IS NOT NULL THEN
			RETURN;
		END IF;
		UPDATE payments.chat_donations x SET thanked_at = now() WHERE x.payment_id = d.payment_id;
	END IF;
	gift := format('%s %s (reference %s)', payments.chat_amount(p.amount, p.currency), p.currency, p.reference);
	-- Meta delivers free text only within 24 hours of the donor's last message (its customer
	-- service window); a message due later (a payment confirmed late, a refund), or to a donor
	-- with no message known (a Flow's), goes as the approved template the provider names. An
	-- hour is kept for the outbox to send it.
	-- (any message of the donor's opens it: a Flow's completion, one rate-limited, counted in
	-- last_seen_at only)
	recent := EXISTS (SELECT FROM payments.chat_sessions s
					   WHERE s.provider = d.provider AND s.wa_id = d.wa_id
						 AND greatest(s.last_message_at, s.last_seen_at) >= now() - interval '23 hours');
	IF transition.to_status = 'paid' THEN
		SELECT v.settings -> 'receipt_template' INTO template FROM payments.providers v WHERE v.name = d.provider;
		IF template IS NOT NULL AND NOT recent THEN
			PERFORM payments.chat_send(d.provider, d.wa_id, payments.chat_receipt_template(p.id, template), transition.id);
			UPDATE payments.chat_donations x SET unsent_notice = NULL WHERE x.payment_id = d.payment_id AND x.unsent_notice IS NOT NULL;
			RETURN;
		END IF;
	END IF;
	body := CASE transition.to_status
		WHEN 'paid' THEN format(E'Thank you%s! We received your donation of %s%s.\nYour receipt number is %s.',
								', ' || p.donor_name, gift, ' for ' || d.purpose,
								(SELECT r.receipt_no FROM payments.receipts r WHERE r.payment_id = p.id))
		WHEN 'failed' THEN format(E'Your donation of %s did not go through%s. No money was taken.\n' ||
								  'Send *donate* to try again, or *help* if you need assistance.',
								  gift, ': ' || (p.metadata ->> 'initiate_error'))
		-- (after failed: the donor was told it did not go through, and that no money was taken)
		WHEN 'cancelled' THEN CASE WHEN transition.from_status IS DISTINCT FROM 'failed' THEN
								format('Your donation of %s was cancelled, so nothing was charged. ' ||
									   'Send *donate* to try again whenever you like.', gift) END
		WHEN 'refunded' THEN format('Your donation of %s has been refunded.', gift) END;
	IF body IS NULL THEN
		RETURN;
	END IF;
	-- a receipt without receipt_template goes as text (Meta refuses it outside the window); a
	-- notice that Meta would refuse is not queued: the donation keeps that it was not sent
	IF transition.to_status <> 'paid' AND NOT recent THEN
		SELECT v.settings -> 'notice_template' INTO template FROM payments.providers v WHERE v.name = d.provider;
		IF template IS NULL THEN
			UPDATE payments.chat_donations x SET unsent_notice = transition.to_status WHERE x.payment_id = d.payment_id;
		ELSE
			PERFORM payments.chat_send(d.provider, d.wa_id, payments.chat_template(d.wa_id, template, ARRAY[body]), transition.id);
			UPDATE payments.chat_donations x SET unsent_notice = NULL WHERE x.payment_id = d.payment_id AND x.unsent_notice IS NOT NULL;
		END IF;
		RETURN;
	END IF;
	PERFORM payments.chat_send(d.provider, d.wa_id, payments.chat_text(d.wa_id, body), transition.id);
	-- (a notice not sent before is superseded by the one queued: also above)
	UPDATE payments.chat_donations x SET unsent_notice = NULL WHERE x.payment_id = d.payment_id AND x.unsent_notice IS NOT NULL;
END
$$;
COMMENT ON FUNCTION payments.chat_payment_notice(payments.status_history) IS
	'At commit (payments.transition_committed): when a WhatsApp donation became paid (thank-you with the receipt number; the receipt_template unless the donor''s last message is known and less than 23 hours old; none when it is paid again, a dispute won or settled by /approve), failed (also when cancelled in the same transaction), cancelled (not after failed: the donor was told) or refunded (past those 23 hours as the notice_template, its text the one parameter; without it not sent, and kept in chat_donations.unsent_notice), queues the message to the donor (to their phone number, or recipient their business-scoped user id), naming the transition (status_history_id)';

-- A donation's notice sent as text that Meta reports failed with error 131047 (Re-engagement
-- message: it went out more than 24 hours after the donor's last message, retried after a rate
-- limit or queued behind other messages) is sent again, once, as the template its provider names:
-- the thank-you as the receipt_template while the payment is still paid (not after a refund), a
-- failed, cancelled or refunded notice as the notice_template; without one the notice is recorded
-- unsent (chat_donations.unsent_notice: the admins' /unsent lists it).  To the donor's number as the donation knows it now (a number change since moves it)
CREATE FUNCTION payments.chat_resend_notice(item payments.outbox)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	template jsonb;
	h		payments.status_history;
	d		payments.chat_donations;
BEGIN
	IF item.message_status IS DISTINCT FROM 'failed' OR item.event_type <> 'whatsapp.text' OR item.status_history_id IS NULL
	   OR jsonb_typeof(item.message_errors) IS DISTINCT FROM 'array'
	   OR NOT EXISTS (SELECT FROM jsonb_array_elements(item.message_errors) e WHERE e ->> 'code' = '131047') THEN
		RETURN;
	END IF;
	SELECT x.* INTO h FROM payments.status_history x WHERE x.id = item.status_history_id;
	SELECT x.* INTO d FROM payments.chat_donations x WHERE x.payment_id = h.payment_id FOR UPDATE;
	IF NOT FOUND OR EXISTS (SELECT FROM payments.outbox o WHERE o.status_history_id = item.status_history_id
							 AND o.provider = item.provider AND o.event_type = 'whatsapp.template') THEN
		RETURN;
	END IF;
	IF h.to_status = 'paid' THEN
		IF NOT EXISTS (SELECT FROM payments.payments p WHERE p.id = h.payment_id AND p.status = 'paid') THEN
			RETURN;		-- refunded since, say: that notice tells the donor
		END IF;
		SELECT v.settings -> 'receipt_template' INTO template FROM payments.providers v WHERE v.name = d.provider;
		IF template IS NULL THEN
			UPDATE payments.chat_donations x SET unsent_notice = 'paid' WHERE x.payment_id = d.payment_id;
		ELSE
			PERFORM payments.chat_send(d.provider, d.wa_id, payments.chat_receipt_template(h.payment_id, template), h.id);
		END IF;
		RETURN;
	END IF;
	-- a failed, cancelled or refunded notice only while the payment still is (paid since by an
	-- admin's /approve, say: the donor was thanked, and told nothing stale); a failed one also once
	-- cancelled (no cancelled notice follows a failed one: the donor was told it did not go through)
	IF NOT EXISTS (SELECT FROM payments.payments p WHERE p.id = h.payment_id
					AND (p.status = h.to_status OR (h.to_status = 'failed' AND p.status = 'cancelled'))) THEN
		RETURN;
	END IF;
	SELECT v.settings -> 'notice_template' INTO template FROM payments.providers v WHERE v.name = d.provider;
	IF template IS NULL THEN
		UPDATE payments.chat_donations x SET unsent_notice = h.to_status WHERE x.payment_id = d.payment_id;
	ELSE
		PERFORM payments.chat_send(d.provider, d.wa_id,
			payments.chat_template(d.wa_id, template, ARRAY[item.payload -> 'text' ->> 'body']), h.id);
	END IF;
END
$$;
COMMENT ON FUNCTION payments.chat_resend_notice(payments.outbox) IS
	'When a WhatsApp donation''s notice sent as text failed with Meta''s error 131047 (outside the 24-hour window), queues it again, once, to the donor''s number as the donation knows it now: the thank-you as the provider''s receipt_template while the payment is paid, a failed, cancelled or refunded notice as its notice_template (without the template recorded in chat_donations.unsent_notice); by payments.chat_status and payments.chat_message_sent';

-- Paynow's news that a donation an admin approved by hand (/approve) was paid: the donor may have
-- paid twice (the request Paynow had, and the way the admin saw), or the admin approved a payment
-- whose update was late.  Either way the admin decides: the payment keeps what Paynow said, and the
-- admin who approved it is told (every admin number of the chat when that one is no longer one)
CREATE FUNCTION payments.chat_admin_numbers(provider text)
RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ARRAY(SELECT DISTINCT payments.chat_admin_id(a)
				   FROM payments.providers v, jsonb_array_elements_text(payments.chat_settings(v.settings) -> 'admin_numbers') a
				  WHERE v.name = chat_admin_numbers.provider AND payments.chat_admin_id(a) IS NOT NULL)
$$;
COMMENT ON FUNCTION payments.chat_admin_numbers(text) IS
	'The admin numbers of a meta provider''s chat, as E.164 digits (or business-scoped user ids, for admins listed by one): who is told of a donation to check';

CREATE FUNCTION payments.chat_paid_after_approval(payment_id bigint, change payments.payment_change)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p		payments.payments;
	d		payments.chat_donations;
	flag	jsonb;
	admins	text[];
	approver text;
	who		text;
BEGIN
	SELECT x.* INTO p FROM payments.payments x WHERE x.id = chat_paid_after_approval.payment_id;
	flag := jsonb_strip_nulls(jsonb_build_object(
		'paynowreference', coalesce(change.metadata ->> 'paynowreference', p.metadata ->> 'paynowreference'),
		-- the amount Paynow reported, also when it is not the payment's (payments.paynow_amount_checked
		-- then leaves the change without one, and keeps it in the mismatch)
		'amount', coalesce(change.amount, (change.metadata -> 'paynow_amount_mismatch' ->> 'reported')::numeric),
		'currency', coalesce(upper(change.currency COLLATE pg_catalog."C"), p.currency),
		'reported_at', coalesce(change.status_at, now()), 'approved_by', p.metadata ->> 'approved_by'));
	UPDATE payments.payments x SET metadata = x.metadata || jsonb_build_object('paynow_paid_after_approval', flag)
	 WHERE x.id = p.id;
	-- (FOR SHARE: a number change moving it, still uncommitted, is waited for, and its wa_id read)
	SELECT x.* INTO d FROM payments.chat_donations x WHERE x.payment_id = p.id FOR SHARE;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	admins := payments.chat_admin_numbers(d.provider);
	approver := payments.whatsapp_user_id(p.metadata ->> 'approved_by');
	-- the approver is still an admin: listed by their number, or by the business-scoped user id
	-- their conversation carries (approved_by is the conversation's wa_id, their number when known)
	IF approver = ANY (admins)
	   OR (SELECT s.user_id FROM payments.chat_sessions s WHERE s.provider = d.provider AND s.wa_id = approver) = ANY (admins) THEN
		admins := ARRAY[approver];
	END IF;
	FOREACH who IN ARRAY admins LOOP
		PERFORM payments.chat_send(d.provider, who, payments.chat_text(who, format(
			E'Paynow reports %s paid%s after it was approved by hand (/approve). If the donor also paid it another way, '
			'the gift was collected twice: please refund one of the payments.',
			p.reference,
			coalesce(format(' (%s)', nullif(concat_ws(', ', 'Paynow reference ' || (flag ->> 'paynowreference'),
								payments.chat_amount((flag ->> 'amount')::numeric, flag ->> 'currency') || ' ' || (flag ->> 'currency')), '')), ''))));
	END LOOP;
END
$$;
COMMENT ON FUNCTION payments.chat_paid_after_approval(bigint, payments.payment_change) IS
	'When Paynow reports paid a donation an admin approved by hand (/approve), which may have been collected twice: keeps metadata.paynow_paid_after_approval (Paynow reference, amount, currency, time, approver) and queues a word to the approving admin (to every admin number of the chat when that one is no longer one); called by apply_change, once per payment';

-- (called by payments.apply_change when a change first keeps a Paynow amount mismatch)
CREATE FUNCTION payments.chat_amount_mismatch(payment_id bigint, mismatch jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p		payments.payments;
	d		payments.chat_donations;
	who		text;
BEGIN
	-- (FOR SHARE: a number change moving it, still uncommitted, is waited for, and its wa_id read)
	SELECT x.* INTO d FROM payments.chat_donations x WHERE x.payment_id = chat_amount_mismatch.payment_id FOR SHARE;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT x.* INTO p FROM payments.payments x WHERE x.id = chat_amount_mismatch.payment_id;
	FOREACH who IN ARRAY payments.chat_admin_numbers(d.provider) LOOP
		PERFORM payments.chat_send(d.provider, who, payments.chat_text(who, format(
			'Paynow reports %s %s at %s, but the donation was for %s %s: please check it with Paynow.',
			p.reference, coalesce(mismatch ->> 'status', 'an update'),
			coalesce(payments.chat_amount((mismatch ->> 'reported')::numeric, p.currency) || ' ' || p.currency,
					 format('"%s" (an amount not read)', mismatch ->> 'reported_as')),
			payments.chat_amount((mismatch ->> 'known')::numeric, p.currency), p.currency)));
	END LOOP;
END
$$;
COMMENT ON FUNCTION payments.chat_amount_mismatch(bigint, jsonb) IS
	'When Paynow first reports another amount for a WhatsApp donation than it was made for (payments.paynow_amount_checked): tells the chat''s admin numbers, who check it with Paynow; called by apply_change';

-- Paynow mobile checkout (PROVIDERS.md 3.5), initiated from the database

CREATE FUNCTION payments.url_encode(value text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(string_agg(CASE WHEN c ~ '^[A-Za-z0-9_.~-]$' THEN c
									ELSE regexp_replace(upper(encode(convert_to(c, 'UTF8'), 'hex') COLLATE pg_catalog."C"), '(..)', E'%\\1', 'g') END,
							   '' ORDER BY n), '')
	  FROM regexp_split_to_table(value, '') WITH ORDINALITY AS t (c, n)
$$;
COMMENT ON FUNCTION payments.url_encode(text) IS 'Percent-encodes a value for application/x-www-form-urlencoded (UTF-8; unreserved characters kept)';

CREATE FUNCTION payments.paynow_request(fields jsonb, integration_key text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	-- the hash: SHA-512 of the raw values in order and the lower-cased key, upper-case hex (PROVIDERS.md 3.2)
	SELECT string_agg(f ->> 0 || '=' || payments.url_encode(f ->> 1), '&' ORDER BY n) || '&hash=' ||
		   upper(encode(sha512(convert_to(string_agg(f ->> 1, '' ORDER BY n) || lower(integration_key COLLATE pg_catalog."C"), 'UTF8')), 'hex') COLLATE pg_catalog."C")
	  FROM jsonb_array_elements(fields) WITH ORDINALITY AS t (f, n)
$$;
COMMENT ON FUNCTION payments.paynow_request(jsonb, text) IS
	'A Paynow request body from ordered fields ([[name, value], ...]): urlencoded, with the hash of the raw values and the integration key last';

CREATE FUNCTION payments.initiation_failed(initiation_id bigint, paynow_error text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ini		payments.paynow_initiations;
	c		payments.payment_change;
BEGIN
	SELECT i.* INTO ini FROM payments.paynow_initiations i WHERE i.id = initiation_failed.initiation_id;
	c.provider_ref := ini.reference;
	c.creates := false;
	c.status := 'failed';
	c.status_at := clock_timestamp();
	c.metadata := jsonb_strip_nulls(jsonb_build_object('initiate_error', left(paynow_error, 200)));
	PERFORM payments.apply_change(NULL, ini.provider, c);
END
$$;
COMMENT ON FUNCTION payments.initiation_failed(bigint, text) IS
	'Fails the payment of an initiation that could not be made (the donor is told, with Paynow''s own error when it gave one); used by claim_initiations and record_initiation';

CREATE FUNCTION payments.initiation_unconfirmed(initiation_id bigint, problem text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ini		payments.paynow_initiations;
	d		payments.chat_donations;
	p		payments.payments;
BEGIN
	UPDATE payments.paynow_initiations i
	   SET state = 'unconfirmed', finished_at = clock_timestamp(), error = problem
	 WHERE i.id = initiation_unconfirmed.initiation_id
	RETURNING i.* INTO ini;
	SELECT x.* INTO p FROM payments.payments x WHERE x.id = ini.payment_id;
	-- (FOR SHARE: a number change moving it, still uncommitted, is waited for, and its wa_id read)
	SELECT x.* INTO d FROM payments.chat_donations x WHERE x.payment_id = ini.payment_id FOR SHARE;
	IF FOUND AND p.status = 'pending' THEN
		PERFORM payments.chat_send(d.provider, d.wa_id, payments.chat_text(d.wa_id, format(
			E'We could not confirm your donation of %s %s (reference %s) with Paynow.\n' ||
			'If your phone asks you to approve it with your PIN, you may: your receipt will come here. ' ||
			'So that you are not charged twice, please send *check* before donating again.',
			payments.chat_amount(p.amount, p.currency), p.currency, p.reference)));
	END IF;
END
$$;
COMMENT ON FUNCTION payments.initiation_unconfirmed(bigint, text) IS
	'Records that a mobile initiation (ecocash, onemoney) may have reached Paynow without a usable answer (a timeout, an interrupted request, a reply not understood or not verified): the payment stays pending for Paynow''s status update, and a WhatsApp donor is told not to pay twice; used by payments.initiation_lost';

-- An initiation that may have reached Paynow without a usable answer (a timeout, an HTTP error, a
-- reply not understood or not verified, a request interrupted mid-way).  A mobile request
-- (ecocash, onemoney) may still make the donor's phone prompt for a PIN: its payment stays pending,
-- unconfirmed.  A web checkout (card, TeleCash) is paid only on Paynow's page, from the browser
-- link of the reply that was lost: nobody can pay it, so it ends as an error and its payment
-- fails, the donor told as for any failure (and free to donate again).
CREATE FUNCTION payments.initiation_lost(initiation_id bigint, problem text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ini		payments.paynow_initiations;
BEGIN
	SELECT i.* INTO ini FROM payments.paynow_initiations i WHERE i.id = initiation_lost.initiation_id;
	IF NOT payments.paynow_web_checkout(ini.method) THEN
		PERFORM payments.initiation_unconfirmed(ini.id, problem);
		RETURN 'unconfirmed';
	END IF;
	UPDATE payments.paynow_initiations i
	   SET state = 'error', finished_at = clock_timestamp(), error = problem
	 WHERE i.id = ini.id;
	-- (one whose payment moved on meanwhile, approved by hand, is left as it is)
	IF EXISTS (SELECT FROM payments.payments p WHERE p.id = ini.payment_id AND p.status = 'pending') THEN
		PERFORM payments.initiation_failed(ini.id, NULL);
	END IF;
	RETURN 'error';
END
$$;
COMMENT ON FUNCTION payments.initiation_lost(bigint, text) IS
	'Records an initiation that may have reached Paynow without a usable answer: a mobile one (ecocash, onemoney) stays pending, unconfirmed (payments.initiation_unconfirmed); a web checkout (card, telecash), payable only from the link of the lost reply, ends as error and its payment fails (payments.initiation_failed); returns the state recorded; used by claim_initiations and record_initiation';

CREATE FUNCTION payments.claim_initiations(max_items integer)
RETURNS TABLE (initiation_id bigint, url text, method text, headers text, body text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	i		record;
	key		text;
	fields	jsonb;
	problem	text;
	gone	bigint;
BEGIN
	-- an initiation whose reply was never recorded (crash, cancel) is not sent again: a second
	-- request could prompt the donor twice; Paynow's status update still pays it if it went through
	-- (a web checkout, whose link was in that reply, fails: payments.initiation_lost)
	FOR gone IN
		SELECT pi.id FROM payments.paynow_initiations pi
		 WHERE pi.state = 'sending'
		   AND pi.started_at < now() - greatest(interval '1 minute',
												 3 * payments.effective_setting('payments.reconcile_timeout')::interval)
		   FOR UPDATE
	LOOP
		PERFORM payments.initiation_lost(gone, 'interrupted: no reply was recorded; not sent again');
	END LOOP;

	-- a payment that moved on while queued (approved by hand, paid, cancelled) is not initiated:
	-- the donor would be asked to pay again
	UPDATE payments.paynow_initiations pi
	   SET state = 'skipped', finished_at = now(), error = 'the payment was ' || p.status || ' before it was initiated'
	  FROM payments.payments p
	 WHERE pi.state = 'queued' AND p.id = pi.payment_id AND p.status <> 'pending';

	FOR i IN
		SELECT pi.id, pi.provider, pi.reference, pi.method, pi.phone, p.amount, p.currency, d.purpose, v.settings
		  FROM payments.paynow_initiations pi
		  JOIN payments.payments p ON p.id = pi.payment_id
		  JOIN payments.providers v ON v.name = pi.provider
		  LEFT JOIN payments.chat_donations d ON d.payment_id = pi.payment_id
		 WHERE pi.state = 'queued' AND p.status = 'pending'
		 ORDER BY pi.id
		 LIMIT max_items
		   -- the payment locked too, and its status checked again on the row locked: one approved
		   -- by hand (or paid) since the skip above is not initiated; it is skipped next time
		   FOR UPDATE OF pi SKIP LOCKED FOR SHARE OF p SKIP LOCKED
	LOOP
		key := NULL;
		SELECT s.secret INTO key FROM payments.secrets s
		 WHERE s.provider = i.provider AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())
		 ORDER BY s.id DESC LIMIT 1;
		problem := CASE
			WHEN key IS NULL THEN 'the provider has no live integration key'
			WHEN NOT i.settings ? 'integration_id' THEN 'the provider has no integration_id setting'
			WHEN NOT i.settings ? 'result_url' THEN 'the provider has no result_url setting'
			WHEN NOT payments.paynow_web_checkout(i.method) AND NOT i.settings ? 'auth_email' THEN
				'the provider has no auth_email setting, which Paynow requires for mobile payments' END;
		IF problem IS NOT NULL THEN
			UPDATE payments.paynow_initiations pi SET state = 'error', finished_at = now(), error = problem
			 WHERE pi.id = i.id;
			PERFORM payments.initiation_failed(i.id, NULL);
			CONTINUE;
		END IF;
		fields := jsonb_build_array(
			jsonb_build_array('id', i.settings ->> 'integration_id'),
			jsonb_build_array('reference', i.reference),
			jsonb_build_array('amount', payments.chat_amount(i.amount, i.currency)),
			jsonb_build_array('additionalinfo', coalesce(i.purpose, 'Donation')),
			jsonb_build_array('returnurl', coalesce(i.settings ->> 'return_url', i.settings ->> 'result_url')),
			jsonb_build_array('resulturl', i.settings ->> 'result_url'));
		-- authemail on the mobile request only, where Paynow requires it: on its web page (card,
		-- TeleCash) an e-mail of a registered account prompts the payer to log in to that account,
		-- and the merchant's own would stop every donor
		IF NOT payments.paynow_web_checkout(i.method) THEN
			fields := fields || jsonb_build_array(jsonb_build_array('authemail', i.settings ->> 'auth_email'),
												  jsonb_build_array('phone', i.phone), jsonb_build_array('method', i.method));
		END IF;
		-- our reference as the merchant trace: reconciliation asks Paynow's trace for a payment
		-- whose initiate reply (and pollurl) never came
		fields := fields || jsonb_build_array(jsonb_build_array('merchanttrace', i.reference),
											  jsonb_build_array('status', 'Message'));
		UPDATE payments.paynow_initiations pi
		   SET state = 'sending', started_at = now(), merchanttrace = i.reference,
			   integration_id = i.settings ->> 'integration_id'
		 WHERE pi.id = i.id;
		initiation_id := i.id;
		url := payments.api_base('paynow', i.settings) ||
			   CASE WHEN payments.paynow_web_checkout(i.method) THEN '/interface/initiatetransaction'
					ELSE '/interface/remotetransaction' END;
		method := 'POST';
		headers := 'Content-Type: application/x-www-form-urlencoded';
		body := payments.paynow_request(fields, key);
		RETURN NEXT;
	END LOOP;
END
$$;
COMMENT ON FUNCTION payments.claim_initiations(integer) IS
	'Claims queued Paynow initiations (SKIP LOCKED), marks them sending and returns the hashed requests; fails those that cannot be made; those interrupted earlier are never sent twice (payments.initiation_lost: mobile ones unconfirmed, web checkouts failed); skips those whose payment is no longer pending; used by initiate_payments, which commits before sending';

CREATE FUNCTION payments.record_initiation(initiation_id bigint, http_status integer, error text, response text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	ini		payments.paynow_initiations;
	r		jsonb;
	verdict	text;
	problem	text := error;
	told	text;
	pay_status text;
	recorded text;
	d		payments.chat_donations;
BEGIN
	SELECT i.* INTO ini FROM payments.paynow_initiations i WHERE i.id = record_initiation.initiation_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown Paynow initiation %', initiation_id USING ERRCODE = 'undefined_object';
	END IF;
	IF ini.state <> 'sending' THEN
		RETURN ini.state;
	END IF;
	IF problem IS NULL AND http_status NOT BETWEEN 200 AND 299 THEN
		problem := 'HTTP ' || http_status || ': ' || left(coalesce(response, ''), 300);
	END IF;
	IF problem IS NULL THEN
		r := payments.paynow_form(convert_to(response, 'UTF8'));
		IF r IS NULL THEN
			problem := 'the reply is not a well-formed form';
		ELSIF lower((r ->> 'status') COLLATE pg_catalog."C") = 'error' THEN
			told := coalesce(r ->> 'error', 'Error');
			problem := 'Paynow: ' || told;
		ELSIF lower((r ->> 'status') COLLATE pg_catalog."C") IS DISTINCT FROM 'ok' THEN
			problem := 'unexpected status ' || coalesce(r ->> 'status', 'none');
		ELSE
			SELECT payments.verify_paynow(convert_to(response, 'UTF8'), s.secret) INTO verdict
			  FROM payments.secrets s
			 WHERE s.provider = ini.provider AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > now())
			 ORDER BY payments.verify_paynow(convert_to(response, 'UTF8'), s.secret) <> 'valid', s.id DESC
			 LIMIT 1;
			IF verdict IS DISTINCT FROM 'valid' THEN
				problem := 'hash check failed: ' || coalesce(verdict, 'no live integration key');
			ELSIF r ->> 'pollurl' IS NULL OR r ->> 'pollurl' !~ '^https?://[^[:space:]]+$' THEN
				problem := 'the reply has no pollurl';
			END IF;
		END IF;
	END IF;

	-- Paynow refused it, or it never left (no connection): the payment failed, nothing was taken.
	-- Anything else (a timeout, an HTTP error, a reply not understood or not verified) may have
	-- reached Paynow, which may still prompt the donor: a mobile payment stays pending; a web
	-- checkout, payable only from the link in the lost reply, fails (payments.initiation_lost)
	IF problem IS NOT NULL AND told IS NULL AND (response IS NOT NULL OR problem !~
		'^(could not (build|set up|initialize|create)|Could not resolve|Couldn''t (resolve|connect)|Failed to connect|Connection refused)') THEN
		recorded := payments.initiation_lost(ini.id, problem);
		UPDATE payments.paynow_initiations i
		   SET http_status = record_initiation.http_status, paynow_status = r ->> 'status'
		 WHERE i.id = ini.id;
		RETURN recorded;
	END IF;
	IF problem IS NOT NULL THEN
		UPDATE payments.paynow_initiations i
		   SET state = 'error', finished_at = clock_timestamp(), http_status = record_initiation.http_status,
			   paynow_status = r ->> 'status', error = problem
		 WHERE i.id = ini.id;
		PERFORM payments.initiation_failed(ini.id, told);
		RETURN 'error';
	END IF;

	-- the poll URL is kept for reconciliation; a status update may have paid the payment already
	UPDATE payments.payments p
	   SET metadata = p.metadata || jsonb_strip_nulls(jsonb_build_object('pollurl', r ->> 'pollurl',
					  'paynowreference', r ->> 'paynowreference', 'browserurl', r ->> 'browserurl')),
		   updated_at = now()
	 WHERE p.id = ini.payment_id
	RETURNING p.status INTO pay_status;
	UPDATE payments.paynow_initiations i
	   SET state = 'done', finished_at = clock_timestamp(), http_status = record_initiation.http_status,
		   paynow_status = r ->> 'status', instructions = r ->> 'instructions'
	 WHERE i.id = ini.id;
	-- (FOR SHARE: a number change moving it, still uncommitted, is waited for, and its wa_id read)
	SELECT x.* INTO d FROM payments.chat_donations x WHERE x.payment_id = ini.payment_id FOR SHARE;
	IF FOUND AND pay_status = 'pending' THEN
		PERFORM payments.chat_send(d.provider, d.wa_id, payments.chat_text(d.wa_id, CASE
			WHEN ini.method = 'card' AND r ->> 'browserurl' IS NOT NULL THEN
				'Please pay securely with your card here: ' || (r ->> 'browserurl')
			WHEN ini.method = 'telecash' AND r ->> 'browserurl' IS NOT NULL THEN
				'Please pay with TeleCash on Paynow''s page here: ' || (r ->> 'browserurl')
			ELSE coalesce(nullif(btrim(r ->> 'instructions'), ''),
						  format('Check your phone: %s will ask you to approve the payment with your PIN.',
								 payments.chat_method_label(ini.method))) END ||
			E'\nYou will get your receipt here as soon as the payment is confirmed.'));
	END IF;
	RETURN 'done';
END
$$;
COMMENT ON FUNCTION payments.record_initiation(bigint, integer, text, text) IS
	'Records Paynow''s answer to an initiation: Ok with a valid hash keeps pollurl and paynowreference and sends the instructions to the donor (unless the payment moved on already); Paynow''s Error, or a request that never left (no connection), fails the payment; anything else (a timeout, an HTTP error, a reply not understood or with a bad hash) leaves a mobile payment pending, unconfirmed, and fails a web checkout (card, telecash), whose link was in the lost reply (payments.initiation_lost); returns the state recorded (done, error, unconfirmed; or the state it had, when it was not sending); used by initiate_payments';

CREATE PROCEDURE payments.initiate_payments(max_items integer DEFAULT 20)
AS 'MODULE_PATHNAME', 'initiate_payments'
LANGUAGE C;
COMMENT ON PROCEDURE payments.initiate_payments(integer) IS
	'Initiates queued Paynow transactions: claims them and commits, sends the hashed requests (libcurl, in parallel, payments.reconcile_timeout), records the answers and commits; CALL it outside a transaction block';

REVOKE ALL ON FUNCTION payments.chat_settings_problem(jsonb) FROM PUBLIC;
-- they read the currencies' exponents, which only the extension's own functions may
REVOKE ALL ON FUNCTION payments.chat_amount(numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_amount_examples(numeric, numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_send(text, text, jsonb, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_prompt(text, text, text, jsonb, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_fit_draft(jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_advance(text, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_check(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_start_payment(bigint, text, text, text, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_try_again(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_admin(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_message(payments.events, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_move_user(text, text, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_wa_id_of(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_lock_user(text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_lock(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_status(payments.events) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_event(payments.events, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_message_sent(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_payment_notice(payments.status_history) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_template(text, jsonb, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_receipt_template(bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_resend_notice(payments.outbox) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paynow_initiated(payments.payment_change, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.paynow_amount_checked(payments.payment_change, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_paid_after_approval(bigint, payments.payment_change) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_amount_mismatch(bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_admin_numbers(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_pending_donation(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_pending_notice(text, text, boolean, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.chat_amount_ranges(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.initiation_failed(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.initiation_unconfirmed(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.initiation_lost(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.claim_initiations(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.record_initiation(bigint, integer, text, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE payments.initiate_payments(integer) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('payments.chat_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('payments.chat_locks', '');
SELECT pg_catalog.pg_extension_config_dump('payments.chat_donations', '');
SELECT pg_catalog.pg_extension_config_dump('payments.chat_reference_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.paynow_initiations', '');
SELECT pg_catalog.pg_extension_config_dump('payments.paynow_initiations_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('payments.whatsapp_statuses', '');
SELECT pg_catalog.pg_extension_config_dump('payments.volunteers', '');
SELECT pg_catalog.pg_extension_config_dump('payments.volunteers_id_seq', '');

--------------------------------------------------------------------------------------------------
-- Privileges of the roles: last, so that they cover every object above
--------------------------------------------------------------------------------------------------

-- payments_ingest: the shim's login role is a member; ingest, the Meta handshake, the Flows endpoint
GRANT USAGE ON SCHEMA payments TO payments_ingest;
GRANT EXECUTE ON FUNCTION payments.ingest(text, jsonb, bytea, inet, text) TO payments_ingest;
GRANT EXECUTE ON FUNCTION payments.ingest_batch(text[], jsonb[], bytea[], inet[], text[]) TO payments_ingest;
GRANT EXECUTE ON FUNCTION payments.flush_wal() TO payments_ingest;
GRANT EXECUTE ON FUNCTION payments.meta_subscribe(text, text, text, text) TO payments_ingest;
GRANT EXECUTE ON FUNCTION payments.flows_exchange(text, jsonb, bytea, inet, text) TO payments_ingest;

-- payments_analyst: the report views and functions; donors' e-mail and phone masked there
GRANT USAGE ON SCHEMA payments TO payments_analyst;
GRANT SELECT ON payments.daily_summary, payments.donor_summary TO payments_analyst;
GRANT EXECUTE ON FUNCTION payments.daily_report(date), payments.daily_report_csv(date), payments.top_donors(timestamptz, timestamptz, text, integer),
	payments.currency_summary(timestamptz, timestamptz), payments.base_totals(timestamptz, timestamptz),
	payments.method_summary(timestamptz, timestamptz), payments.earnings(timestamptz, timestamptz),
	payments.donor_history_by_id(bigint) TO payments_analyst;
GRANT SELECT ON payments.volunteer_list TO payments_analyst;

-- payments_admin: configures providers, secrets, certificates, currencies, rates; reads everything
GRANT USAGE ON SCHEMA payments TO payments_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA payments TO payments_admin;
GRANT INSERT, UPDATE, DELETE ON payments.providers, payments.secrets, payments.certificates,
	payments.currencies, payments.fx_rates TO payments_admin;
GRANT INSERT, UPDATE, DELETE ON payments.endpoints TO payments_admin;
GRANT INSERT, UPDATE, DELETE ON payments.flow_keys, payments.flow_tokens TO payments_admin;
GRANT DELETE ON payments.flow_submissions TO payments_admin;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA payments TO payments_admin;
-- the machinery behind ingest, retries and deliveries is not called by hand
REVOKE EXECUTE ON FUNCTION payments.apply_change(bigint, text, payments.payment_change),
	payments.issue_receipt(bigint, timestamptz), payments.apply_event(bigint),
	payments.settle_event(payments.events, text, jsonb, integer),
	payments.store_event(text, text, jsonb, text, text, timestamptz, bytea, jsonb, jsonb, inet, text),
	payments.store_stripe_events(integer[], text[], text[], text[], timestamptz[], bytea[], jsonb[], jsonb[], inet[], text[]),
	payments.event_failed(bigint, text, integer, boolean), payments.claim_outbox(integer, text),
	payments.record_delivery(bigint, integer, integer, text, integer, bigint, text),
	payments.enqueue_transition(payments.status_history), payments.enqueue_raw_event(payments.events),
	payments.api_token_requests(integer), payments.api_credentials_digest(text, jsonb),
	payments.store_api_token(text, integer, text, text, text), payments.claim_reconciliation(integer),
	payments.record_reconciliation(bigint, integer, text, text),
	payments.record_flows_rejection(text, text, text, text, bytea, jsonb, inet, text),
	payments.flows_answer(text, jsonb),
	payments.chat_message(payments.events, jsonb), payments.chat_move_user(text, text, text, text, timestamptz), payments.chat_lock_user(text, text[]),
	payments.chat_lock(text[]),
	payments.chat_status(payments.events),
	payments.chat_event(payments.events, jsonb), payments.chat_message_sent(bigint, text),
	payments.chat_payment_notice(payments.status_history), payments.chat_resend_notice(payments.outbox),
	payments.chat_start_payment(bigint, text, text, text, jsonb, jsonb),
	payments.chat_advance(text, text, jsonb, jsonb), payments.chat_prompt(text, text, text, jsonb, jsonb, text),
	payments.chat_check(text, text), payments.chat_admin(text, text, text), payments.initiation_failed(bigint, text),
	payments.chat_pending_notice(text, text, boolean, bigint), payments.chat_paid_after_approval(bigint, payments.payment_change),
	payments.initiation_unconfirmed(bigint, text), payments.initiation_lost(bigint, text),
	payments.claim_initiations(integer), payments.record_initiation(bigint, integer, text, text) FROM payments_admin;
-- nor are the triggers' functions: creating a trigger takes EXECUTE, and the commit steps are
-- SECURITY DEFINER (they also refuse any table but their own)
REVOKE EXECUTE ON FUNCTION payments.transition_committed(), payments.enqueue_event(), payments.forget_kept(),
	payments.check_endpoint(), payments.check_secret(), payments.keep_donor_key(),
	payments.keep_installed_currencies(), payments.check_provider(), payments.check_flow_key(),
	payments.check_flow_token(), payments.forget_api_token(), payments.paid_late_committed() FROM payments_admin;
-- cached API tokens are bearer credentials: read by the reconciliation run only
REVOKE SELECT ON payments.api_tokens FROM payments_admin;
-- the shim's entry points belong to payments_ingest
REVOKE EXECUTE ON FUNCTION payments.ingest(text, jsonb, bytea, inet, text),
	payments.ingest_batch(text[], jsonb[], bytea[], inet[], text[]), payments.flush_wal(),
	payments.meta_subscribe(text, text, text, text), payments.flows_exchange(text, jsonb, bytea, inet, text)
	FROM payments_admin;
-- the jobs that call providers and endpoints with their secrets run as pg_cron's job owner; an
-- admin replays events (retry_events, replay_event, replay_dead: SECURITY DEFINER, through the
-- state machine only) and deliveries (replay_outbox)
REVOKE EXECUTE ON PROCEDURE payments.deliver_outbox(integer, text), payments.reconcile(integer),
	payments.initiate_payments(integer), payments.run_job(text, integer) FROM payments_admin;

-- The helpers the analysts' views and SQL functions call as the analyst, and those README tells
-- analysts to call (day_start, receipt_local_time), granted by name: under default privileges
-- that take EXECUTE on new functions from PUBLIC, the reports would fail
GRANT EXECUTE ON FUNCTION payments.receipt_day(timestamptz), payments.mask_email(text), payments.mask_phone(text),
	payments.mask_whatsapp_user_id(text), payments.mask_donor(text), payments.base_currency(),
	payments.effective_setting(text), payments.e164_digits(text), payments.phone_digits(text), payments.phone_plain(text), payments.day_start(date),
	payments.receipt_local_time(timestamptz) TO payments_analyst;

-- Default privileges of the role creating the extension (ALTER DEFAULT PRIVILEGES) were given to
-- every object above: to a read-only role, SELECT on the secrets.  Who may use the objects is what
-- this script grants, so any privilege of a role but the owner and the payments roles is taken
-- back (PUBLIC keeps EXECUTE on functions and USAGE on types, as PostgreSQL gives them)
DO $$
DECLARE
	ours oid[] := ARRAY['payments_admin'::pg_catalog.regrole, 'payments_analyst'::pg_catalog.regrole,
						'payments_ingest'::pg_catalog.regrole]::oid[];
	granted record;
BEGIN
	FOR granted IN
		SELECT pg_catalog.format('%s %s', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::pg_catalog.regclass) AS object,
			   a.grantee
		  FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
		 WHERE c.relnamespace = 'payments'::pg_catalog.regnamespace AND a.grantee <> c.relowner
		   AND a.grantee OPERATOR(pg_catalog.<>) ALL (ours)
		UNION
		SELECT pg_catalog.format('ROUTINE %s', p.oid::pg_catalog.regprocedure), a.grantee
		  FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
		 WHERE p.pronamespace = 'payments'::pg_catalog.regnamespace AND a.grantee <> p.proowner
		   AND a.grantee <> 0::oid AND a.grantee OPERATOR(pg_catalog.<>) ALL (ours)
		UNION
		SELECT pg_catalog.format('TYPE %s', t.oid::pg_catalog.regtype), a.grantee
		  FROM pg_catalog.pg_type t, pg_catalog.aclexplode(t.typacl) a
		 WHERE t.typnamespace = 'payments'::pg_catalog.regnamespace AND a.grantee <> t.typowner
		   AND a.grantee <> 0::oid AND a.grantee OPERATOR(pg_catalog.<>) ALL (ours)
		UNION
		SELECT 'SCHEMA payments', a.grantee
		  FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
		 WHERE n.oid = 'payments'::pg_catalog.regnamespace AND a.grantee <> n.nspowner
		   AND a.grantee OPERATOR(pg_catalog.<>) ALL (ours)
	LOOP
		EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM %s CASCADE', granted.object,
								  CASE WHEN granted.grantee = 0::oid THEN 'PUBLIC'
									   ELSE granted.grantee::pg_catalog.regrole::text END);
	END LOOP;
END
$$;
