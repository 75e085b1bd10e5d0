-- Providers and secrets: registration, validation errors, rotation bookkeeping.
\set SHOW_CONTEXT never

SELECT kind, settings FROM payments.provider_kinds ORDER BY kind;

-- registration and re-registration (settings replaced, kind kept)
SELECT payments.register_provider('acme-stripe', 'stripe');
SELECT payments.register_provider('acme-stripe', 'stripe', '{"tolerance": 600}');
SELECT name, kind, settings FROM payments.providers ORDER BY name;
SELECT payments.register_provider('acme-stripe', 'standard');

-- bad names, kinds and settings
SELECT payments.register_provider('Acme', 'stripe');
SELECT payments.register_provider('a/b', 'stripe');
SELECT payments.register_provider('', 'stripe');
SELECT payments.register_provider(repeat('a', 64), 'stripe');
SELECT payments.register_provider(NULL, 'stripe');
SELECT payments.register_provider('acme', 'no-such-kind');
SELECT payments.register_provider('acme', 'stripe', '[]');
SELECT payments.register_provider('acme', 'stripe', NULL);
SELECT payments.register_provider('acme', 'stripe', '{"tolerence": 60}');
SELECT payments.register_provider('acme', 'stripe', '{"tolerance": "60"}');
SELECT payments.register_provider('acme', 'stripe', '{"tolerance": 0}');
SELECT payments.register_provider('acme', 'stripe', '{"tolerance": 1.5}');
SELECT payments.register_provider('acme', 'stripe', '{"tolerance": 604801}');
SELECT count(*) AS providers FROM payments.providers;

-- secrets
SELECT payments.register_provider('acme-std', 'standard');
SELECT payments.add_secret('acme-stripe', 'whsec_first') AS first_id \gset
SELECT payments.add_secret('acme-stripe', 'whsec_second', now() + interval '1 day') > :first_id AS later_id;
SELECT payments.add_secret('nobody', 'whsec_x');
SELECT payments.add_secret('acme-stripe', '');
SELECT payments.add_secret('acme-stripe', NULL);
SELECT payments.add_secret('acme-stripe', 'whsec_x', now() - interval '1 second');
SELECT payments.add_secret('acme-std', 'whsec_not base64');
SELECT payments.add_secret('acme-std', 'whsec_c2hvcnQ=');
SELECT payments.add_secret('acme-std', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') IS NOT NULL AS added;
SELECT payments.add_secret('acme-std', 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') IS NOT NULL AS added_without_prefix;
SELECT payments.secret_problem('standard', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') IS NULL AS usable;

-- written directly (payments_admin may): refused before a constraint would show the row, whose
-- settings may hold API keys and secrets their secret
SELECT payments.register_provider('keyed', 'stripe', '{"api_key": "sk_live_notshown"}');
UPDATE payments.providers SET name = upper(name) WHERE name = 'keyed';
UPDATE payments.providers SET settings = '["sk_live_notshown"]' WHERE name = 'keyed';
UPDATE payments.providers SET kind = NULL WHERE name = 'keyed';
UPDATE payments.providers SET kind = 'standard' WHERE name = 'keyed';
INSERT INTO payments.secrets (provider, secret) VALUES (NULL, 'whsec_bm90c2hvd25ub3RzaG93bg==');
INSERT INTO payments.secrets (provider, secret, created_at) VALUES ('acme-std', 'whsec_bm90c2hvd25ub3RzaG93bg==', NULL);
DELETE FROM payments.providers WHERE name = 'keyed';

-- revoking
SELECT payments.revoke_secret(:first_id);
SELECT payments.revoke_secret(:first_id);
SELECT payments.revoke_secret(-1);
SELECT provider, secret, revoked_at IS NOT NULL AS revoked, expires_at IS NOT NULL AS expires
  FROM payments.secrets ORDER BY id;

-- configuration and ingest are not open to PUBLIC; the pure verifiers are
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_can_execute
  FROM pg_proc p WHERE p.pronamespace = 'payments'::regnamespace ORDER BY p.proname;

-- deleting a provider takes its secrets along
DELETE FROM payments.providers WHERE name = 'acme-std';
SELECT count(*) AS secrets_left FROM payments.secrets WHERE provider = 'acme-std';
DELETE FROM payments.secrets;
DELETE FROM payments.providers;

-- a setting made where the extension's library was not loaded is checked only when it loads:
-- reports read it through the library, as ingest does (refused: the default, with a warning),
-- not the raw value, which broke them while ingest numbered receipts by the default
\c
ALTER DATABASE :"DBNAME" SET payments.receipt_timezone = 'Africa/Harrare';
\c
SELECT payments.report_timezone();
SELECT payments.receipt_day('2024-06-10 23:30+00');
SELECT payments.effective_setting('work_mem');
\c
ALTER DATABASE :"DBNAME" RESET payments.receipt_timezone;
\c
