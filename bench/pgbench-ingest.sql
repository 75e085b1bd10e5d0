-- pgbench script of bench/throughput.sh: payments.ingest alone, one call per transaction, on
-- deliveries signed just before the run and loaded into bench_ingest (client c takes rows
-- c+1, c+1+nclients, ...; -D k=0 -D nclients=N).
\set k :k + 1
\set row :client_id + 1 + (:k - 1) * :nclients
SELECT i.http_status, i.outcome
  FROM (SELECT sig, body FROM bench_ingest WHERE n = :row) b
 CROSS JOIN LATERAL payments.ingest('stripe', jsonb_build_object('stripe-signature', b.sig),
									convert_to(b.body, 'UTF8')) i;
