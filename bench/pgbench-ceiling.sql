-- pgbench script of bench/throughput.sh: the database alone doing what one webhook costs it, with
-- no HTTP and no signature check: insert the event idempotently, upsert the payment, commit.
-- 10% of the transactions re-deliver an earlier event of the same client (-D k=0 starts its count);
-- -D run=NAME keeps the ids of each run apart.
\set dup random(1, 10)
\set k case when :dup = 1 and :k > 0 then :k else :k + 1 end
\set n case when :dup = 1 then random(1, :k) else :k end
BEGIN;
INSERT INTO payments.events (provider, event_id, event_type, event_at, body, payload, headers)
SELECT 'pgbench', x.e, 'payment_intent.succeeded', now(), convert_to(x.b, 'UTF8'), x.b::jsonb,
	   jsonb_build_object('stripe-signature', 't=1767225600,v1=' || repeat('0', 64))
  FROM (SELECT ids.e, replace(replace(t.body, '@E@', ids.e), '@P@', ids.p) AS b
		  FROM bench_template t,
			   (SELECT 'evt_pgb_' || :run::text || '_' || :client_id::text || '_' || :n::text AS e,
					   'pi_pgb_' || :run::text || '_' || :client_id::text || '_' || :n::text AS p) ids) x
ON CONFLICT (provider, event_id) DO NOTHING;
INSERT INTO payments.payments AS p (provider, provider_ref, reference, status, amount, currency, method,
									donor_name, donor_email, metadata, paid_at, status_at)
VALUES ('pgbench', 'pi_pgb_' || :run::text || '_' || :client_id::text || '_' || :n::text, 'ORD-' || :n::text, 'paid', 20.00, 'USD',
		'card', 'Amina Nakato', 'donor@example.org', '{"campaign": "spring-appeal-2026"}', now(), now())
ON CONFLICT (provider, provider_ref) DO UPDATE
   SET status = excluded.status, amount = excluded.amount, status_at = excluded.status_at, updated_at = now()
 WHERE p.status_at < excluded.status_at;
COMMIT;
