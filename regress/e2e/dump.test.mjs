// pg_dump / pg_restore round trip: configuration (providers, secrets, certificates, admin-added
// currencies, exchange rates, endpoints) and data (events, rejections, payments, history, receipts, receipt counters,
// the outbox, sequences) survive a dump of one database restored into a new one on a new server (pg_cron,
// which the database also has, allows only one database per server), the rows CREATE EXTENSION
// inserts (provider kinds, currencies, statuses) are not duplicated, and ingest (and adding an endpoint)
// still works after.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import { Cluster } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const secret = 'whsec_dump_round_trip';
let cluster;
let target;

const q = (s) => `'${s.replaceAll("'", "''")}'`;

// SQL that ingests one Stripe payment_intent event signed with the secret; returns "status|outcome".
function ingestSql(n, type = 'payment_intent.succeeded', created = 1718000000 + n) {
	const body = JSON.stringify({ id: `evt_dump_${n}_${type}`, object: 'event', type, created,
		data: { object: { id: `pi_dump_${n}`, object: 'payment_intent', amount: 1000 * n, currency: 'usd',
			receipt_email: `donor${n}@example.org`, payment_method_types: ['card'] } } });
	const t = Math.floor(Date.now() / 1000);
	const sig = createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
	return `SELECT http_status || '|' || outcome FROM payments.ingest('dump-stripe',
		jsonb_build_object('stripe-signature', ${q(`t=${t},v1=${sig}`)}), convert_to(${q(body)}, 'UTF8'))`;
}

// What must be equal before and after: one line per table, rows as text in a stable order.
const snapshot = (c, db = 'payments') => c.psql(`
	SELECT 'providers', string_agg(format('%s %s %s', name, kind, settings), '; ' ORDER BY name) FROM payments.providers
	UNION ALL SELECT 'secrets', string_agg(format('%s %s %s %s', id, provider, secret, revoked_at IS NOT NULL), '; ' ORDER BY id) FROM payments.secrets
	UNION ALL SELECT 'certificates', string_agg(format('%s %s', url, source), '; ' ORDER BY url) FROM payments.certificates
	UNION ALL SELECT 'events', string_agg(format('%s %s %s %s %s', id, provider, event_id, md5(body), state), '; ' ORDER BY id) FROM payments.events
	UNION ALL SELECT 'rejections', string_agg(format('%s %s %s', id, provider, reason), '; ' ORDER BY id) FROM payments.rejections
	UNION ALL SELECT 'payments', string_agg(format('%s %s %s %s %s %s %s %s', id, provider_ref, status, amount, currency,
		receipt_no, donor_key, paid_at), '; ' ORDER BY id) FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
	UNION ALL SELECT 'status_history', string_agg(format('%s %s %s %s', id, payment_id, to_status, event_id), '; ' ORDER BY id) FROM payments.status_history
	UNION ALL SELECT 'refused_transitions', count(*)::text FROM payments.refused_transitions
	UNION ALL SELECT 'receipts', string_agg(format('%s %s', receipt_no, payment_id), '; ' ORDER BY receipt_no) FROM payments.receipts
	UNION ALL SELECT 'outbox', string_agg(format('%s %s', endpoint_id, event_type), '; ' ORDER BY id) FROM payments.outbox
	UNION ALL SELECT 'receipt_counters', string_agg(format('%s %s %s', prefix, day, last_no), '; ' ORDER BY prefix, day) FROM payments.receipt_counters
	UNION ALL SELECT 'fx_rates', string_agg(format('%s %s %s', day, currency, rate), '; ' ORDER BY currency, day) FROM payments.fx_rates
	UNION ALL SELECT 'currencies', format('%s rows, added: %s', count(*), string_agg(code || '/' || exponent, ',') FILTER (WHERE NOT seeded)) FROM payments.currencies
	UNION ALL SELECT 'provider_kinds', string_agg(kind, ',' ORDER BY kind) FROM payments.provider_kinds
	UNION ALL SELECT 'statuses', count(*)::text FROM payments.statuses
	UNION ALL SELECT 'transitions', count(*)::text FROM payments.transitions
	UNION ALL SELECT 'daily_report', string_agg(format('%s %s %s %s', currency, method, paid, last_receipt), '; ') FROM payments.daily_report('2024-06-10')
	UNION ALL SELECT 'grants', string_agg(format('%s %s', r, has_function_privilege(r, 'payments.ingest(text,jsonb,bytea,inet,text)', 'EXECUTE')), ',' ORDER BY r)
		FROM unnest(ARRAY['payments_ingest', 'payments_analyst']) AS r
	-- and every table of the extension, whole (its rows and a hash of them), and where every
	-- sequence stands: none left out, whether or not a line above looks at it
	UNION ALL (SELECT 'table ' || c.relname, (xpath('/row/h/text()', query_to_xml(format(
			'SELECT count(*) || '' '' || md5(coalesce(string_agg(t::text, '','' ORDER BY t::text), '''')) AS h FROM payments.%I t',
			c.relname), false, true, '')))[1]::text
		FROM pg_class c WHERE c.relnamespace = 'payments'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY c.relname)
	UNION ALL (SELECT 'sequence ' || s.sequencename, coalesce(s.last_value::text, 'unused')
		FROM pg_sequences s WHERE s.schemaname = 'payments' ORDER BY s.sequencename)`, db).split('\n');

let file;

describe('pg_dump and pg_restore', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psql(`
			SELECT payments.register_provider('dump-stripe', 'stripe', '{"tolerance": 600}');
			SELECT payments.register_provider('dump-paynow', 'paynow', '{"integration_id": "1234"}');
			SELECT payments.add_secret('dump-stripe', 'whsec_old');
			SELECT payments.revoke_secret(id) FROM payments.secrets WHERE secret = 'whsec_old';
			SELECT payments.add_secret('dump-stripe', ${q(secret)});
			SELECT payments.add_secret('dump-paynow', 'integration-key', '2999-01-01');
			INSERT INTO payments.certificates (url, pem, source) VALUES ('https://api.paypal.com/cert', 'PEM', 'seeded');
			INSERT INTO payments.currencies (code, exponent) VALUES ('XTS', 3);
			INSERT INTO payments.fx_rates (day, currency, rate) VALUES ('2024-06-10', 'EUR', 1.08), ('2024-06-10', 'XTS', 2);
			SELECT payments.add_endpoint('dump-hook', 'http://127.0.0.1:9/hook', 'whsec_ZHVtcC1ob29rLXNlY3JldC1rZXk=',
										 ARRAY['payment.*', 'event.*']);
			SET payments.receipt_timezone = 'UTC';`);
		for (let n = 1; n <= 3; n++) assert.equal(cluster.psql(ingestSql(n)), '200|applied');
		assert.equal(cluster.psql(ingestSql(1, 'payment_intent.succeeded')), '200|duplicate');
		assert.equal(cluster.psql(`SELECT http_status FROM payments.ingest('dump-stripe', '{"stripe-signature": "t=1,v1=00"}', '{}')`), '401');
	});

	after(() => { cluster?.destroy(); target?.destroy(); });

	test('a custom-format dump restores into a new database with the same configuration and data', async () => {
		const before = snapshot(cluster);
		assert.match(before.find((l) => l.startsWith('payments|')), /LP-20240610-000003/);
		assert.match(before.find((l) => l.startsWith('currencies|')), /added: XTS\/3$/);
		// the outbox holds each event and each transition once; the restore must not queue them again
		assert.equal(before.find((l) => l.startsWith('outbox|')).split('; ').length, 6);

		file = join(cluster.dir, 'payments.dump');
				execFileSync(join(PG_BIN, 'pg_dump'), ['-h', cluster.dir, '-p', String(cluster.port), '-U', 'postgres', '-Fc', '-d', 'payments', '-f', file], { stdio: 'pipe' });
		// a new server, its database "payments" empty again
		target = new Cluster();
		await target.init();
		target.psql('DROP DATABASE payments', 'postgres');
		target.psql('CREATE DATABASE payments', 'postgres');
		// pg_restore exits non-zero on any error (a duplicate key from a seeded row, a missing object)
		execFileSync(join(PG_BIN, 'pg_restore'), ['-h', target.dir, '-p', String(target.port), '-U', 'postgres',
			'--exit-on-error', '-d', 'payments', file], { stdio: 'pipe' });

		assert.deepEqual(snapshot(target), before);
	});

	test('into a database other than pg_cron\'s, README\'s list restores in one transaction', () => {
		const before = snapshot(cluster);
		target.psql('CREATE DATABASE elsewhere', 'postgres');
		const list = join(target.dir, 'restore.list');
		const args = `-h '${target.dir}' -p ${target.port} -U postgres`;
		// as README says, word for word but for the connection
		execFileSync('sh', ['-c', `'${join(PG_BIN, 'pg_restore')}' -l '${file}' | grep -v -e pg_cron -e ' cron ' > '${list}'`]);
		execFileSync('sh', ['-c', `'${join(PG_BIN, 'pg_restore')}' ${args} --single-transaction --exit-on-error -L '${list}' -d elsewhere '${file}'`],
			{ stdio: 'pipe' });
		assert.deepEqual(snapshot(target, 'elsewhere'), before);
		target.psql('DROP DATABASE elsewhere', 'postgres');
	});

	test('after the restore, ingest works and sequences and receipt counters continue', () => {
		const [maxEvent, maxPayment] = target.psql(
			'SELECT max(e.id), (SELECT max(id) FROM payments.payments) FROM payments.events e').split('|').map(Number);
		assert.equal(target.psql(ingestSql(1)), '200|duplicate');
		assert.equal(target.psql(`SET payments.receipt_timezone = 'UTC'; ${ingestSql(4)}`), '200|applied');
		const [event, payment, receipt] = target.psql(`SELECT e.id, p.id, r.receipt_no FROM payments.events e
			JOIN payments.payments p ON p.provider_ref = 'pi_dump_4' JOIN payments.receipts r ON r.payment_id = p.id WHERE e.event_id LIKE 'evt_dump_4_%'`).split('|');
		assert.ok(Number(event) > maxEvent, `event id ${event} after ${maxEvent}`);
		assert.ok(Number(payment) > maxPayment, `payment id ${payment} after ${maxPayment}`);
		assert.equal(receipt, 'LP-20240610-000004');
		assert.equal(target.psql(`SELECT http_status FROM payments.ingest('dump-stripe', '{"stripe-signature": "t=1,v1=00"}', '{}')`), '401');
		assert.equal(target.psql('SELECT count(*) FROM payments.rejections'), '2');
		// an endpoint added after the restore takes the next id
		assert.equal(target.psql(`SELECT payments.add_endpoint('dump-hook-2', 'http://127.0.0.1:9/hook2',
			'whsec_ZHVtcC1ob29rLXNlY3JldC1rZXk=', ARRAY['payment.*']) IS NOT NULL;
			SELECT count(*) FROM payments.endpoints`), 't\n2');
	});
});
