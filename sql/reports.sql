-- Reports on known data: days in the receipt time zone, amounts per currency, donors, masking,
-- exchange rates (see also roles.sql for who may read what).
\set SHOW_CONTEXT never
\set ON_ERROR_ROLLBACK on
-- in one transaction, on a clean slate: the ROLLBACK at the end puts back what other tests left
BEGIN;
SET LOCAL client_min_messages = warning;
TRUNCATE payments.payments, payments.events, payments.rejections, payments.fx_rates CASCADE;
RESET client_min_messages;
SET payments.receipt_timezone = 'Africa/Harare';	-- UTC+2, no summer time
-- the base currency is USD (payments.base_currency())

SELECT payments.register_provider('rp-stripe', 'stripe');
SELECT payments.register_provider('rp-paynow', 'paynow');

-- payments inserted directly: (ref, provider, status, amount, currency, refunded, fee, method,
-- name, phone, email, created, paid, receipt, kind)
CREATE TEMP TABLE known_payments AS SELECT * FROM (VALUES
	('pi_1', 'rp-stripe', 'paid', 50.00, 'USD', 0, 1.75, 'card', 'Jane Doe', NULL, 'jane.doe@example.org',
	 '2024-06-10 07:59+02', '2024-06-10 08:00+02', 'LP-20240610-000001', 'collection'),
	('pi_2', 'rp-stripe', 'paid', 25.00, 'USD', 0, 1.03, 'card', 'Jane D.', NULL, ' JANE.DOE@Example.org',
	 '2024-06-11 08:59+02', '2024-06-11 09:00+02', 'LP-20240611-000002', 'collection'),
	('p_1', 'rp-paynow', 'paid', 10.00, 'USD', 0, 0.30, 'ecocash', 'Tendai M', '263771234567', NULL,
	 '2024-06-10 23:29+02', '2024-06-10 23:30+02', 'LP-20240610-000002', 'collection'),
	('p_2', 'rp-paynow', 'paid', 500.00, 'ZWG', 0, 15.00, 'ecocash', 'Tendai M', '263771234567', NULL,
	 '2024-06-11 00:29+02', '2024-06-11 00:30+02', 'LP-20240611-000001', 'collection'),
	('pi_3', 'rp-stripe', 'paid', 5.00, 'USD', 0, 0.45, 'card', NULL, NULL, NULL,
	 '2024-06-10 10:00+02', '2024-06-10 10:00+02', 'LP-20240610-000003', 'collection'),
	('pi_4', 'rp-stripe', 'refunded', 100.00, 'USD', 100.00, 3.20, 'card', 'Bob Smith', NULL, NULL,
	 '2024-06-10 12:00+02', '2024-06-10 12:00+02', 'LP-20240610-000004', 'collection'),
	('pi_5', 'rp-stripe', 'failed', 20.00, 'USD', 0, NULL, 'card', 'Mary K', NULL, 'mary@example.com',
	 '2024-06-10 14:00+02', NULL, NULL, 'collection'),
	('pi_6', 'rp-stripe', 'pending', 30.00, 'USD', 0, NULL, NULL, 'Mary K', NULL, 'mary@example.com',
	 '2024-06-10 15:00+02', NULL, NULL, 'collection'),
	('pi_7', 'rp-stripe', 'partially_refunded', 40.00, 'EUR', 10.00, 1.40, 'card', 'Jane Doe', NULL, 'jane.doe@example.org',
	 '2024-06-10 16:00+02', '2024-06-10 16:00+02', 'LP-20240610-000005', 'collection'),
	('po_1', 'rp-stripe', 'paid', 1000.00, 'USD', 0, 5.00, 'card', 'Jane Doe', NULL, 'jane.doe@example.org',
	 '2024-06-10 17:00+02', '2024-06-10 17:00+02', NULL, 'payout')
  ) AS v(ref, provider, status, amount, currency, refunded, fee, method, name, phone, email, created, paid, receipt, kind);
INSERT INTO payments.payments (provider_ref, provider, status, amount, currency, amount_refunded, fee, method,
							   donor_name, donor_phone, donor_email, created_at, paid_at, status_at, kind)
SELECT v.ref, v.provider, v.status, v.amount, v.currency, v.refunded, v.fee, v.method,
	   v.name, v.phone, v.email, v.created::timestamptz, v.paid::timestamptz,
	   coalesce(v.paid::timestamptz, v.created::timestamptz), v.kind
  FROM known_payments v;
INSERT INTO payments.receipts (receipt_no, payment_id)
SELECT v.receipt, p.id FROM known_payments v JOIN payments.payments p ON p.provider_ref = v.ref WHERE v.receipt IS NOT NULL;

-- the refunds, as the state machine records them
INSERT INTO payments.status_history (payment_id, from_status, to_status, status_at)
SELECT p.id, 'paid', h.to_status, h.at::timestamptz
  FROM (VALUES ('pi_4', 'refunded', '2024-06-11 13:00+02'), ('pi_7', 'partially_refunded', '2024-06-10 18:00+02'))
	   AS h(ref, to_status, at)
  JOIN payments.payments p ON p.provider_ref = h.ref;
INSERT INTO payments.refunds (payment_id, amount, refunded_at)
SELECT p.id, r.amount, r.at::timestamptz
  FROM (VALUES ('pi_4', 100.00, '2024-06-11 13:00+02'), ('pi_7', 10.00, '2024-06-10 18:00+02'))
	   AS r(ref, amount, at)
  JOIN payments.payments p ON p.provider_ref = r.ref;

-- who is a donor: e-mail (any case), else phone, else name
SELECT provider_ref, donor_key FROM payments.payments ORDER BY provider_ref;
SELECT payments.donor_key_of(' Jane.Doe@EXAMPLE.org') AS by_email, payments.donor_key_of('+263 77 123 4567') AS by_phone,
	   payments.donor_key_of('Bob SMITH') AS by_name, payments.donor_key_of('') AS nobody;
-- a phone number as people write it: the trunk zero in parentheses after the country code is not
-- dialled from abroad; at the clinic a Zimbabwean mobile number is said without the country code,
-- or with 00 for +
SELECT w AS written, payments.e164_digits(w) AS e164, payments.donor_key_of(w) AS key_of
  FROM unnest(ARRAY['+263 (0)77 123 4567', '+263(0)771234567', '+44 (0)20 7946 0000', '+1 (555) 010-0000',
					'0771234567', '077 123 4567', '771234567', '00263 77 123 4567', '2630771234567',
					'0044 20 7946 0000', '00 44 20 7946 0000', '(0044) 20 7946 0000', '+2630771234567',
					'(0)77 123 4567', '0 20 7946 0000']) AS w;
-- copied from a contact or a page: a no-break space, U+202F (French numbers), a non-breaking
-- hyphen, a minus sign, a figure dash, an ideographic space, a soft and a fullwidth hyphen
SELECT n, payments.e164_digits(w) AS e164, payments.donor_key_of(w) AS key_of
  FROM unnest(ARRAY['+263' || chr(160) || '77' || chr(160) || '123' || chr(160) || '4567',
					'+33' || chr(8239) || '6' || chr(8239) || '12' || chr(8239) || '34' || chr(8239) || '56' || chr(8239) || '78',
					'077' || chr(8209) || '123' || chr(8209) || '4567', '+1' || chr(8722) || '555' || chr(8722) || '010' || chr(8722) || '0000',
					'+263' || chr(160) || '(0)77' || chr(8199) || '123' || chr(8210) || '4567', '+263' || chr(12288) || '771234567',
					'+263' || chr(173) || '77' || chr(65293) || '1234567'])
		WITH ORDINALITY AS u (w, n);
-- kept as the donor's details change: an e-mail of spaces is none, a key cannot be set by hand
SAVEPOINT donor_keys;
UPDATE payments.payments SET donor_email = '  ', donor_phone = NULL, donor_name = ' Ann  LEE ' WHERE provider_ref = 'pi_1'
RETURNING donor_key;
UPDATE payments.payments SET donor_phone = '263771234567' WHERE provider_ref = 'pi_1' RETURNING donor_key;
UPDATE payments.payments SET donor_email = ' ÉVA@Example.ORG' WHERE provider_ref = 'pi_1' RETURNING donor_key;
UPDATE payments.payments SET donor_email = NULL, donor_phone = NULL, donor_name = NULL WHERE provider_ref = 'pi_1'
RETURNING donor_key IS NULL AS anonymous;
UPDATE payments.payments SET donor_key = 'email:someone@else.example' WHERE provider_ref = 'pi_4' RETURNING donor_key;
ROLLBACK TO donor_keys;

-- masking
SELECT e AS email, payments.mask_email(e) AS masked
  FROM unnest(ARRAY['jane.doe@example.org', 'x@mail.example.co.uk', 'a@localhost', '@example.org', 'no-at-sign', NULL]) AS e;
SELECT p AS phone, payments.mask_phone(p) AS masked FROM unnest(ARRAY['263771234567', '1234', NULL]) AS p;

-- daily_summary: day in Harare time; p_2 (22:30 UTC on the 10th) is on the 11th
SELECT * FROM payments.daily_summary WHERE day BETWEEN '2024-06-10' AND '2024-06-11'
 ORDER BY day, provider, currency, method, status;
-- money never received is in none of its sums, given back or not (a hold released, a dispute lost
-- before the news of payment)
SAVEPOINT never_paid;
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, method, status_at, created_at)
VALUES ('rp-stripe', 'pi_never_paid', 'refunded', 50, 'USD', 'sepa', '2024-06-12 10:00Z', '2024-06-12 10:00Z');
INSERT INTO payments.refunds (payment_id, amount, refunded_at)
SELECT id, 50, '2024-06-12 10:00Z' FROM payments.payments WHERE provider_ref = 'pi_never_paid';
SELECT status, count, amount, gross, refunded, net FROM payments.daily_summary WHERE method = 'sepa';
SELECT currency, method, paid, refunds, refunded FROM payments.daily_report('2024-06-12');
ROLLBACK TO SAVEPOINT never_paid;

-- the daily report
SELECT * FROM payments.daily_report('2024-06-10');
SELECT * FROM payments.daily_report('2024-06-11');
SELECT * FROM payments.daily_report('2024-06-12');
-- receipts of two prefixes (a provider with its own): a first and a last receipt per prefix
SAVEPOINT two_prefixes;
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, method, status_at, created_at, paid_at)
VALUES ('rp-stripe', 'pi_ab', 'paid', 7, 'USD', 'card', '2024-06-10 09:00Z', '2024-06-10 09:00Z', '2024-06-10 09:00Z');
INSERT INTO payments.receipts (receipt_no, payment_id)
SELECT 'AB-20240610-000001', p.id FROM payments.payments p WHERE p.provider_ref = 'pi_ab';
SELECT currency, method, receipts, first_receipt, last_receipt FROM payments.daily_report('2024-06-10') WHERE currency = 'USD';
ROLLBACK TO SAVEPOINT two_prefixes;
-- a failed or cancelled payment counts on the provider's day of that status (status_at), not on
-- the day its news arrived (created_at: now): one that failed on the 10th, one cancelled on the
-- 11th, both stored today; a pending one counts on the day it was first seen
SAVEPOINT failed_late;
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, method, status_at)
VALUES ('rp-stripe', 'pi_failed_late', 'failed', 15, 'USD', 'card', '2024-06-10 11:00+02'),
	   ('rp-stripe', 'pi_cancelled_late', 'cancelled', 9, 'USD', 'card', '2024-06-11 11:00+02');
SELECT currency, method, paid, failed FROM payments.daily_report('2024-06-10') WHERE currency = 'USD';
SELECT currency, method, paid, failed FROM payments.daily_report('2024-06-11') WHERE currency = 'USD';
SELECT count(*) AS rows_today FROM payments.daily_report(payments.receipt_day(now()));
SELECT day, status, count, amount FROM payments.daily_summary WHERE status IN ('failed', 'cancelled') ORDER BY day, status;
SELECT currency, paid, failed, pending FROM payments.currency_summary(payments.day_start('2024-06-10'), payments.day_start('2024-06-12'))
 WHERE currency = 'USD';
SELECT currency, method, failed FROM payments.method_summary(payments.day_start('2024-06-11'), payments.day_start('2024-06-12'))
 WHERE currency = 'USD';
ROLLBACK TO SAVEPOINT failed_late;
-- a paid payment whose amount is not known (stored NULL: an amount finer than its currency's minor
-- unit, as Eversend's KWD 1.2345) is counted apart, amount_unknown: its fee is not taken from a
-- gross that does not hold its amount (gross 5.125, fees 0.100, net 5.025; fee rate 1.95%)
SAVEPOINT amount_unknown;
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, fee, method, status_at, created_at, paid_at)
VALUES ('rp-paynow', 'ev_kwd_1', 'paid', NULL, 'KWD', 0.010, 'momo', '2024-06-10 09:00+02', '2024-06-10 09:00+02', '2024-06-10 09:00+02'),
	   ('rp-paynow', 'ev_kwd_2', 'paid', 5.125, 'KWD', 0.100, 'momo', '2024-06-10 10:00+02', '2024-06-10 10:00+02', '2024-06-10 10:00+02');
SELECT * FROM payments.daily_report('2024-06-10') WHERE currency = 'KWD';
SELECT line FROM string_to_table(payments.daily_report_csv('2024-06-10'), E'\r\n') AS line
 WHERE line LIKE 'day,%' OR line LIKE '%KWD%';
SELECT * FROM payments.earnings(payments.day_start('2024-06-10'), payments.day_start('2024-06-11')) WHERE currency = 'KWD';
SELECT currency, paid, gross, fees, net, base_net, amount_unknown
  FROM payments.currency_summary(payments.day_start('2024-06-10'), payments.day_start('2024-06-11')) WHERE currency = 'KWD';
SELECT currency, method, paid, gross, fees, net, share, amount_unknown
  FROM payments.method_summary(payments.day_start('2024-06-10'), payments.day_start('2024-06-11')) WHERE currency = 'KWD';
SELECT day, status, count, amount, gross, fees, net, amount_unknown FROM payments.daily_summary WHERE currency = 'KWD';
-- one donor's: the gift whose amount is not known is counted apart, not in the total
UPDATE payments.payments SET donor_email = 'kuda@example.org' WHERE provider = 'rp-paynow' AND provider_ref LIKE 'ev_kwd_%';
SELECT donor, currency, gifts, total, amount_unknown FROM payments.donor_summary WHERE currency = 'KWD';
SELECT rank, donor, currency_code, gifts, total, amount_unknown
  FROM payments.top_donors(payments.day_start('2024-06-10'), payments.day_start('2024-06-11'), 'KWD');
-- none of them known: gross and net are 0, as in the other reports
DELETE FROM payments.payments WHERE provider = 'rp-paynow' AND provider_ref = 'ev_kwd_2';
SELECT * FROM payments.earnings(payments.day_start('2024-06-10'), payments.day_start('2024-06-11')) WHERE currency = 'KWD';
-- and a day whose only payments have no amount known needs no rate: base_net is complete
SELECT currency, paid, base_net, days_without_rate, amount_unknown
  FROM payments.currency_summary(payments.day_start('2024-06-10'), payments.day_start('2024-06-11')) WHERE currency = 'KWD';
SELECT complete, missing FROM payments.base_totals(payments.day_start('2024-06-10'), payments.day_start('2024-06-11'));
ROLLBACK TO SAVEPOINT amount_unknown;
-- in UTC, p_2 belongs to the 10th
SET payments.receipt_timezone = 'UTC';
SELECT currency, method, paid, gross, receipts FROM payments.daily_report('2024-06-10') WHERE method = '(all)';
-- a zone named like an abbreviation is the zone, summer time included, whatever the session's
-- abbreviations: 22:30 UTC on 10 June is 00:30 on the 11th in CET (CEST then), not 23:30 on the
-- 10th (the abbreviation CET, +01); EST is the zone EST (-05), not Australia's EST (+10)
SET payments.receipt_timezone = 'CET';
SELECT payments.receipt_day('2024-06-10 22:30Z') AS cet_summer, payments.receipt_day('2024-01-10 23:30Z') AS cet_winter,
	   payments.day_start('2024-06-11') = '2024-06-10 22:00Z' AS starts_at_cest_midnight;
SELECT payments.receipt_local_time('2024-06-10 22:30:15.5Z') AS cet_summer_clock,
	   payments.receipt_local_time('2024-01-10 23:30Z') AS cet_winter_clock,
	   payments.receipt_local_time('infinity') AS never;
SELECT day, currency, gross FROM payments.daily_summary WHERE provider = 'rp-paynow' AND currency = 'ZWG';
SET timezone_abbreviations = 'Australia';
SET payments.receipt_timezone = 'EST';
SELECT payments.receipt_day('2024-06-10 15:00Z') AS est, payments.day_start('2024-06-11') = '2024-06-11 05:00Z' AS starts_at_est_midnight,
	   payments.receipt_local_time('2024-06-10 15:00Z') AS est_clock;
RESET timezone_abbreviations;
-- Havana's summer time ends at 01:00, back to 00:00: 3 November 2024 starts at its first midnight
-- (04:00 UTC), and the hour before the second is the 3rd's, as its receipts say; on 10 March
-- midnight is skipped, and the day starts at 01:00 (05:00 UTC)
SET payments.receipt_timezone = 'America/Havana';
SELECT payments.day_start('2024-11-03') AT TIME ZONE 'UTC' AS havana_nov_3,
	   payments.receipt_day(payments.day_start('2024-11-03') - interval '1 microsecond') AS just_before,
	   payments.receipt_day('2024-11-03 04:30Z') AS first_hour,
	   payments.day_start('2024-11-04') AT TIME ZONE 'UTC' AS havana_nov_4,
	   payments.day_start('2024-03-10') AT TIME ZONE 'UTC' AS havana_mar_10,
	   payments.receipt_day(payments.day_start('2024-03-10') - interval '1 microsecond') AS before_the_gap;
-- its clock across the hour summer time repeats (04:30 and 05:30 UTC both show 00:30)
SELECT payments.receipt_local_time('2024-11-03 04:30Z') AS first_half_past, payments.receipt_local_time('2024-11-03 05:30Z') AS second_half_past;
-- a number is hours east of UTC, as TimeZone (which currency_summary sets to it) reads it
SET payments.receipt_timezone = '+03';
SELECT payments.receipt_day('2024-06-10 22:30Z') AS plus_3, payments.day_start('2024-06-11') AT TIME ZONE 'UTC' AS starts;
SET payments.receipt_timezone = '-5.5';
SELECT payments.receipt_day('2024-06-11 04:00Z') AS minus_5_5;
SET payments.receipt_timezone = '15';
SET payments.receipt_timezone = 'Africa/Harare';

-- donors
SELECT donor, name, email, phone, currency, gifts, total, first_gift, last_gift, donor_id IS NOT NULL AS has_id FROM payments.donor_summary ORDER BY donor, currency;
SELECT "rank", donor, name, currency_code, gifts, total, first_gift, last_gift, donor_id IS NOT NULL AS has_id FROM payments.top_donors('2024-06-01', '2024-07-01');
SELECT "rank", donor, name, currency_code, gifts, total, first_gift, last_gift FROM payments.top_donors('2024-06-01', '2024-07-01', 'usd', 1);
SELECT "rank", donor, name, currency_code, gifts, total, first_gift, last_gift FROM payments.top_donors('2024-06-11', '2024-06-12', n => 5);
-- equal totals share a rank; a total unknown (an amount missing) comes last
SAVEPOINT ties;
INSERT INTO payments.payments (provider_ref, provider, status, amount, currency, fee, method, donor_name, created_at, paid_at, status_at)
SELECT r, 'rp-stripe', 'paid', a, 'USD', f, 'card', nm, '2024-08-05 10:00+02', '2024-08-05 10:00+02', '2024-08-05 10:00+02'
  FROM (VALUES ('tie_1', 30.00, NULL, 'Farai'), ('tie_2', 30.00, NULL, 'Chenai'), ('tie_3', NULL, NULL, 'Nobody Known'),
			   ('tie_4', 20.00, 0.60, 'Rufaro'))
	   AS v(r, a, f, nm);
SELECT "rank", name, total FROM payments.top_donors('2024-08-01', '2024-09-01');
-- the fee rate is over the payments whose fee is known (20.00 with 0.60: 3%), not 0.60 of 80.00
SELECT * FROM payments.earnings('2024-08-01', '2024-09-01');
ROLLBACK TO SAVEPOINT ties;
-- no donors asked for, no rows
SELECT count(*) FROM payments.top_donors('2024-06-01', '2024-07-01', n => 0);
SELECT count(*) FROM payments.top_donors('2024-06-01', '2024-07-01', n => NULL);
SELECT * FROM payments.donor_history('Jane.Doe@example.org');
SELECT * FROM payments.donor_history('+263 77 123 4567');
SELECT * FROM payments.donor_history('bob smith');
SELECT count(*) FROM payments.donor_history('nobody@example.org');
-- by the donor_id the reports show: the same history as by e-mail
SELECT (SELECT array_agg(h) FROM payments.donor_history_by_id(s.donor_id) h)
	   = (SELECT array_agg(h) FROM payments.donor_history('jane.doe@example.org') h) AS same_history
  FROM payments.donor_summary s WHERE s.donor = 'j***@e***.org' AND s.currency = 'USD';
SELECT count(*) FROM payments.donor_history_by_id(-1);
-- a donor is its key: a gift with an e-mail address is the e-mail's, not the phone's
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, donor_email, donor_phone, status_at, paid_at)
VALUES ('rp-stripe', 'pi_both', 'paid', 30, 'USD', 'kuda@example.org', '263779998888', '2024-06-12 10:00Z', '2024-06-12 10:00Z'),
	   ('rp-stripe', 'pi_phone', 'paid', 15, 'USD', NULL, '263779998888', '2024-06-12 11:00Z', '2024-06-12 11:00Z');
SELECT amount FROM payments.donor_history('+263 77 999 8888');
SELECT amount FROM payments.donor_history('Kuda@Example.org');
DELETE FROM payments.payments WHERE provider_ref IN ('pi_both', 'pi_phone');

-- currencies, methods, earnings
SELECT * FROM payments.currency_summary('2024-06-01', '2024-07-01');
SELECT * FROM payments.base_totals('2024-06-01', '2024-07-01');
INSERT INTO payments.fx_rates (day, currency, rate) VALUES ('2024-06-10', 'EUR', 1.08), ('2024-06-11', 'ZWG', 0.0375);
SELECT currency, net, base_currency, base_net, days_without_rate FROM payments.currency_summary('2024-06-01', '2024-07-01');
-- it counts days in the report time zone by setting TimeZone for itself only: the caller's stays,
-- within this file's transaction too
SELECT count(*) FROM payments.currency_summary('2024-06-01', '2024-07-01');
SELECT current_setting('TimeZone') AS caller_time_zone;
SELECT * FROM payments.base_totals('2024-06-01', '2024-07-01');
INSERT INTO payments.fx_rates (day, currency, rate) VALUES ('2024-06-10', 'XYZ', 1);
INSERT INTO payments.fx_rates (day, currency, rate) VALUES ('2024-06-10', 'GBP', 0);
-- a payment whose currency is not known (a provider that sends none) is not left out: no rate,
-- so the base total is not complete; its donor is among the top donors
SAVEPOINT no_currency;
INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, method, donor_name, status_at, created_at, paid_at)
VALUES ('rp-paynow', 'p_nocur', 'paid', 49, NULL, 'ecocash', 'Farai N', '2024-06-12 10:00Z', '2024-06-12 10:00Z', '2024-06-12 10:00Z');
SELECT currency, paid, net, base_net, days_without_rate FROM payments.currency_summary('2024-06-12', '2024-06-13');
SELECT * FROM payments.base_totals('2024-06-12', '2024-06-13');
SELECT rank, donor, currency_code, total FROM payments.top_donors('2024-06-12', '2024-06-13');
ROLLBACK TO SAVEPOINT no_currency;
SELECT * FROM payments.method_summary('2024-06-01', '2024-07-01');
SELECT * FROM payments.earnings('2024-06-01', '2024-07-01');
SELECT * FROM payments.earnings('2024-06-11', '2024-06-12');

-- the admin's event listing: no bodies, no headers
INSERT INTO payments.events (provider, event_id, event_type, received_at, body, payload, headers, state)
SELECT 'rp-stripe', 'evt_' || i, 'payment_intent.succeeded', '2024-06-10 08:00+02'::timestamptz + i * interval '1 minute',
	   '{}'::bytea, '{}', '{}', 'applied'
  FROM generate_series(1, 3) AS i;
INSERT INTO payments.events (provider, event_id, event_type, received_at, body, payload, headers, state, attempts, last_error)
VALUES ('rp-paynow', 'pn-1', NULL, '2024-06-10 09:00+02', '{}'::bytea, '{}', '{}', 'pending', 1, 'payment x is not known yet');
SELECT provider_name, event_id, event_type, received_at, state, attempts, last_error FROM payments.recent_events();
SELECT provider_name, event_id FROM payments.recent_events('rp-stripe', 2);
-- none asked for, none given (a negative count is no error)
SELECT count(*) FROM payments.recent_events(n => 0);
SELECT count(*) FROM payments.recent_events(n => -1);
SELECT count(*) FROM payments.recent_events('rp-stripe', -5);

-- indexes the reports use
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM payments.payments p
 WHERE coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) >= '2024-06-10'
   AND coalesce(p.paid_at, CASE WHEN p.status IN ('failed', 'cancelled') THEN p.status_at ELSE p.created_at END) < '2024-06-11';
EXPLAIN (COSTS OFF) SELECT 1 FROM payments.payments q
 WHERE q.donor_key = 'email:jane.doe@example.org' AND q.kind = 'collection' AND q.paid_at < now();
RESET enable_seqscan;

ROLLBACK;

-- receipt ranges per counter (prefix and day): a day's receipts numbered on two days (the receipt
-- time zone changed at an hour the two zones' dates differed) make two ranges, not one across them
SELECT payments.receipt_bounds(r, false) AS first_receipt, payments.receipt_bounds(r, true) AS last_receipt
  FROM (VALUES (ARRAY['LP-20261124-000002', 'LP-20261123-000001', 'DON-20261124-000001', 'LP-20261124-000001',
					  'LP-20261123-000002', NULL])) AS t (r);
