-- Times each report (5 runs after a warm-up; best and median) against the goals, then shows
-- the plans the report functions run (auto_explain of the nested statements).
\set ON_ERROR_STOP on
\pset footer off
CREATE TEMP TABLE runs (report text, goal_ms numeric, ms numeric);
CREATE FUNCTION pg_temp.time_it(report text, goal_ms numeric, q text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
BEGIN
	EXECUTE q;		-- warm-up
	FOR i IN 1 .. 5 LOOP
		t0 := clock_timestamp();
		EXECUTE q;
		INSERT INTO runs VALUES (report, goal_ms, 1000 * extract(epoch FROM clock_timestamp() - t0));
	END LOOP;
END $$;
SELECT pg_temp.time_it('daily_report(2025-06-15)', 50, $q$SELECT count(*) FROM payments.daily_report('2025-06-15')$q$);
SELECT pg_temp.time_it('top_donors(30 days)', 300, $q$SELECT count(*) FROM payments.top_donors('2025-06-01', '2025-07-01')$q$);
SELECT pg_temp.time_it('top_donors(30 days, USD, 10)', 300, $q$SELECT count(*) FROM payments.top_donors('2025-06-01', '2025-07-01', 'USD')$q$);
SELECT pg_temp.time_it('currency_summary(2025)', 500, $q$SELECT count(*) FROM payments.currency_summary('2025-01-01', '2026-01-01')$q$);
SELECT pg_temp.time_it('method_summary(2025)', NULL, $q$SELECT count(*) FROM payments.method_summary('2025-01-01', '2026-01-01')$q$);
SELECT pg_temp.time_it('earnings(2025)', NULL, $q$SELECT count(*) FROM payments.earnings('2025-01-01', '2026-01-01')$q$);
SELECT pg_temp.time_it('base_totals(2025)', NULL, $q$SELECT count(*) FROM payments.base_totals('2025-01-01', '2026-01-01')$q$);
SELECT pg_temp.time_it('donor_history(one donor)', NULL, $q$SELECT count(*) FROM payments.donor_history('donor4242@example.org')$q$);
SELECT pg_temp.time_it('recent_events(50)', NULL, $q$SELECT count(*) FROM payments.recent_events()$q$);
SELECT pg_temp.time_it('daily_summary, one day', NULL, $q$SELECT count(*) FROM payments.daily_summary WHERE day = '2025-06-15'$q$);
SELECT pg_temp.time_it('donor_summary, all donors', NULL, $q$SELECT count(*) FROM payments.donor_summary$q$);

\echo
\echo Report timings (ms)
SELECT report, goal_ms AS goal, round(min(ms), 1) AS best, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) AS median,
	   CASE WHEN goal_ms IS NULL THEN '' WHEN percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) < goal_ms THEN 'ok' ELSE 'SLOW' END AS "goal met"
  FROM runs GROUP BY report, goal_ms ORDER BY min(ctid);

\echo
\echo Sample output
SELECT * FROM payments.daily_report('2025-06-15');
SELECT * FROM payments.top_donors('2025-06-01', '2025-07-01', 'USD', 3);
SELECT * FROM payments.currency_summary('2025-01-01', '2026-01-01');
SELECT * FROM payments.base_totals('2025-01-01', '2026-01-01');

\echo
\echo Plans
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_timing = on;
SET auto_explain.log_nested_statements = on;
SET client_min_messages = log;
SELECT count(*) FROM payments.daily_report('2025-06-15');
SELECT count(*) FROM payments.top_donors('2025-06-01', '2025-07-01');
SELECT count(*) FROM payments.currency_summary('2025-01-01', '2026-01-01');
