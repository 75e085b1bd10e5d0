// The shim through database outages under steady traffic: a primary failover to a promoted
// streaming standby (multi-host DSN with target_session_attrs=read-write), and a restart.
// The shim answers 503 with Retry-After meanwhile, follows the new primary by itself, and
// no delivery it answered 2xx is missing afterwards.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, Shim, freePort, sleep, request, parseMetrics, waitFor, steadyTraffic, assertNoAcknowledgedLoss,
	assertOutageAnswers } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const stripe = new Stripe('sk_test_not_used_offline');
const secret = `whsec_${randomBytes(24).toString('hex')}`;

let primary;
let standby;
let shim;
let seq = 0;

function pgCtl(cluster, ...args) {
	execFileSync(join(PG_BIN, 'pg_ctl'), ['-D', cluster.data, '-l', join(cluster.dir, 'log'), '-w', ...args],
		{ stdio: 'pipe' });
}

// pg_ctl without blocking the event loop, so that traffic goes on while it runs.
function pgCtlAsync(cluster, ...args) {
	return new Promise((resolve, reject) => {
		execFile(join(PG_BIN, 'pg_ctl'), ['-D', cluster.data, '-l', join(cluster.dir, 'log'), '-w', ...args],
			(error) => (error ? reject(error) : resolve()));
	});
}

// A streaming standby of primary, made with pg_basebackup -R, on its own port.
async function makeStandby(source) {
	const replica = new Cluster();
	replica.port = await freePort();
	execFileSync(join(PG_BIN, 'pg_basebackup'), ['-h', '127.0.0.1', '-p', String(source.port), '-U', 'postgres',
		'-D', replica.data, '-R', '-X', 'stream', '-c', 'fast', '--no-sync'], { stdio: 'pipe' });
	// the copied postgresql.auto.conf holds the primary's port and socket directory
	const conf = join(replica.data, 'postgresql.auto.conf');
	writeFileSync(conf, readFileSync(conf, 'utf8')
		.replace(/^port = \d+$/m, `port = ${replica.port}`)
		.replace(/^unix_socket_directories = .*$/m, `unix_socket_directories = '${replica.dir}'`));
	replica.start();
	return replica;
}

// A signed Stripe delivery with a new event id.
function stripeDelivery() {
	seq += 1;
	const id = `evt_failover_${process.pid}_${seq}`;
	const body = JSON.stringify({ id, object: 'event', type: 'charge.succeeded', created: Math.floor(Date.now() / 1000),
		data: { object: { id: `ch_${seq}`, amount: 500 } } });
	return { id, path: '/webhooks/stripe', body, headers: { 'content-type': 'application/json',
		'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload: body, secret }) } };
}

describe('the shim through a failover and a restart', () => {
	before(async () => {
		primary = new Cluster();
		await primary.init();
		primary.psqlVars("SELECT payments.register_provider('stripe', 'stripe'); SELECT payments.add_secret('stripe', :'s');",
			{ s: secret });
		// the extension and provider exist before the standby is made, and reach it with the base backup
		standby = await makeStandby(primary);
		// synchronous replication: a commit is acknowledged only once the standby has it
		primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'", 'postgres');
		primary.psql('SELECT pg_reload_conf()', 'postgres');
		await waitFor(() => primary.psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
			'postgres') === '1', 20000, 'standby streaming synchronously');
		shim = new Shim(`host=127.0.0.1,127.0.0.1 port=${primary.port},${standby.port} dbname=payments user=postgres ` +
			'target_session_attrs=read-write', ['--threads', '2', '--rate', '0']);
		await shim.start();
	});

	after(async () => {
		const exit = shim ? await shim.stop() : { code: 0 };
		primary?.destroy();
		standby?.destroy();
		assert.deepEqual(shim?.sanitizerReports() ?? [], [], 'sanitizer reports in the shim');
		assert.equal(exit.code, 0, `shim exit after SIGTERM: ${JSON.stringify(exit)}`);
	});

	test('the primary dies, the standby is promoted: 503 meanwhile, then the shim follows it by itself', async (t) => {
		const traffic = steadyTraffic(shim.port, stripeDelivery);
		await waitFor(() => traffic.recovered(10), 10000, 'deliveries through the primary');
		pgCtl(primary, '-m', 'immediate', 'stop');
		// an outage the senders see (503s) before the promotion ends it
		const stoppedAt = Date.now();
		await waitFor(() => traffic.results.filter((r) => r.started > stoppedAt && r.status === 503).length >= 3, 30000,
			'503s while no server is primary');
		const promotedAt = Date.now();
		pgCtl(standby, 'promote');
		await waitFor(() => traffic.recovered(10), 30000, 'deliveries through the promoted standby');
		await traffic.stop();

		assertOutageAnswers(t, traffic.results);
		const afterPromotion = traffic.results.filter((r) => r.at > promotedAt && r.status === 200);
		assert.ok(afterPromotion.length >= 10);
		const acknowledged = assertNoAcknowledgedLoss(standby, traffic.results);
		assert.ok(acknowledged >= 20, `${acknowledged} deliveries acknowledged`);

		const metrics = parseMetrics((await request(shim.port, { path: '/metrics' })).text).samples;
		assert.ok(metrics.get('payments_shim_db_reconnects_total') >= 1);
		assert.ok(metrics.get('payments_shim_db_connect_attempts_total{result="failure"}') >= 1);
		assert.ok(metrics.get('payments_shim_rejections_total{reason="database_unavailable"}') >= 1);
		assert.match(shim.stderr, new RegExp(`"msg":"database connected","host":"127\\.0\\.0\\.1","port":"${standby.port}"`));
		assert.equal((await request(shim.port, { path: '/ready' })).status, 200);
	});

	test('the database restarts: 503 meanwhile, recovery after, nothing answered 2xx is lost', async (t) => {
		const traffic = steadyTraffic(shim.port, stripeDelivery);
		await waitFor(() => traffic.recovered(10), 10000, 'deliveries before the restart');
		const before = traffic.results.length;
		// the traffic goes on during the restart (pg_ctl's own process), and meets the database down
		await pgCtlAsync(standby, '-m', 'fast', 'restart');
		await waitFor(() => traffic.results.length > before + 10 && traffic.recovered(10), 30000,
			'deliveries after the restart');
		await traffic.stop();
		assertOutageAnswers(t, traffic.results);
		assertNoAcknowledgedLoss(standby, traffic.results);
	});
});

describe('the first requests after a database restart', () => {
	let db;
	let s;

	before(async () => {
		db = new Cluster();
		await db.init();
		db.psqlVars("SELECT payments.register_provider('stripe', 'stripe'); SELECT payments.add_secret('stripe', :'s');",
			{ s: secret });
		// one batch thread: every call goes through the one connection the restart ends while idle
		s = new Shim(db.dsn, ['--rate', '0', '--batch-concurrency', '1']);
		await s.start();
	});

	after(async () => {
		const exit = s ? await s.stop() : { code: 0 };
		db?.destroy();
		assert.deepEqual(s?.sanitizerReports() ?? [], [], 'sanitizer reports in the shim');
		assert.equal(exit.code, 0, `shim exit after SIGTERM: ${JSON.stringify(exit)}`);
	});

	test('a connection the restart ended while idle is made again before it is used: no 503', async () => {
		const post = async () => {
			const d = stripeDelivery();
			const res = await request(s.port, { method: 'POST', path: d.path, headers: d.headers, body: d.body });
			return { id: d.id, status: res.status };
		};
		assert.equal((await post()).status, 200);
		assert.equal((await request(s.port, { path: '/ready' })).status, 200);
		pgCtl(db, '-m', 'fast', 'restart');
		const after = [await post(), await post(), await post()];
		assert.deepEqual(after.map((r) => r.status), [200, 200, 200]);
		assertNoAcknowledgedLoss(db, after);
		// the readiness check (its answer is kept a second) likewise
		pgCtl(db, '-m', 'fast', 'restart');
		await sleep(1100);
		assert.equal((await request(s.port, { path: '/ready' })).status, 200);
		assert.equal(s.stderr.match(/"msg":"database connection lost while idle, connecting again"/g)?.length, 2);
		const metrics = parseMetrics((await request(s.port, { path: '/metrics' })).text).samples;
		assert.equal(metrics.get('payments_shim_db_reconnects_total'), 2);
		assert.equal(metrics.get('payments_shim_rejections_total{reason="database_unavailable"}') ?? 0, 0);
	});

	test('deliveries to a database without the extension are counted as failed transactions, each once', async () => {
		// (a failed prepare, as during a botched upgrade: the transactions began and did not commit)
		const bare = new Shim(db.dsn.replace('dbname=payments', 'dbname=postgres'), ['--rate', '0', '--batch-concurrency', '1']);
		await bare.start();
		try {
			const statuses = await Promise.all(Array.from({ length: 6 }, async () => {
				const d = stripeDelivery();
				return (await request(bare.port, { method: 'POST', path: d.path, headers: d.headers, body: d.body })).status;
			}));
			assert.deepEqual(statuses, [503, 503, 503, 503, 503, 503]);
			const m = parseMetrics((await request(bare.port, { path: '/metrics' })).text).samples;
			assert.equal(m.get('payments_shim_batch_deliveries_sum'), 6, 'every delivery in one failed transaction');
			assert.ok(m.get('payments_shim_batches_failed_total') >= 1);
			assert.equal(m.get('payments_shim_batches_failed_total'), m.get('payments_shim_batch_deliveries_count'));
		} finally {
			await bare.stop();
		}
	});

	test('a connection broken while the database was down is made again once it is back, with no request', async () => {
		const gauge = async (state) => parseMetrics((await request(s.port, { path: '/metrics' })).text).samples
			.get(`payments_shim_db_connections{state="${state}"}`);
		assert.equal((await request(s.port, { path: '/ready' })).status, 200);
		db.stop();
		await sleep(1100);
		const down = await request(s.port, { path: '/ready' });
		assert.deepEqual([down.status, down.json.reason], [503, 'database unavailable']);
		assert.equal(await gauge('broken'), 1);
		// deliveries that meet the database down (alone or together) are answered 503 and counted as
		// such, not as transactions that failed: none was begun
		const samples = async () => parseMetrics((await request(s.port, { path: '/metrics' })).text).samples;
		const was = await samples();
		const refused = await Promise.all([1, 2, 3].map(async () => {
			const d = stripeDelivery();
			return (await request(s.port, { method: 'POST', path: d.path, headers: d.headers, body: d.body })).status;
		}));
		assert.deepEqual(refused, [503, 503, 503]);
		const seen = await samples();
		const unavailable = 'payments_shim_rejections_total{reason="database_unavailable"}';
		assert.equal((seen.get(unavailable) ?? 0) - (was.get(unavailable) ?? 0), 3);
		assert.equal(seen.get('payments_shim_batches_failed_total') ?? 0, was.get('payments_shim_batches_failed_total') ?? 0);
		assert.equal(seen.get('payments_shim_batch_deliveries_count') ?? 0, was.get('payments_shim_batch_deliveries_count') ?? 0);
		const connected = s.stderr.match(/"msg":"database connected"/g).length;
		db.start();
		// nothing but /metrics, which does not touch the database: the batch thread connects again
		// by itself once its backoff (5 s at most) has passed
		const deadline = Date.now() + 12000;
		while (await gauge('broken') !== 0) {
			assert.ok(Date.now() < deadline, 'still broken 12 s after the database came back');
			await sleep(200);
		}
		assert.equal(await gauge('idle'), 1);
		assert.equal(s.stderr.match(/"msg":"database connected"/g).length, connected + 1);
		await sleep(1100);		// past the 503 /ready keeps for a second
		assert.equal((await request(s.port, { path: '/ready' })).status, 200);
	});
});
