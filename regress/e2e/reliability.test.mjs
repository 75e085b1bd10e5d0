// The reliability suite, through the real shim and a real cluster: the database killed with
// kill -9 under load, the shim stopped with SIGTERM under load, and storms (one event delivered
// by hundreds of clients at once; thousands of events delivered shuffled).  Nothing answered
// 2xx may be lost, and the shim recovers by itself.
//
// `make test` runs it scaled down; `make reliability` (PAYMENTS_RELIABILITY=full) with the
// numbers of issue 8: 500 concurrent deliveries of one event, 10,000 events for 100 payments.
// The cluster runs with fsync off (harness.mjs): kill -9 loses no committed data to a process
// crash, which is what is tested here, but a power loss is out of scope.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, Shim, request, sleep, waitFor, steadyTraffic, assertNoAcknowledgedLoss, assertOutageAnswers, stopShimAndCluster }
	from './harness.mjs';
import { random, lives, stripeEvent } from './stripe_lives.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const full = process.env.PAYMENTS_RELIABILITY === 'full';
const size = full
	? { senders: 16, loadMs: 3000, storm: 500, payments: 100, eventsPerPayment: 100 }
	: { senders: 8, loadMs: 1000, storm: 500, payments: 20, eventsPerPayment: 25 };

const stripe = new Stripe('sk_test_not_used_offline');
const secret = 'whsec_e2e_reliability';
let cluster;
let shim;
let seq = 0;

// A signed Stripe delivery of a new event (for provider `provider`).
function delivery(provider = 'stripe') {
	seq += 1;
	const id = `evt_rel_${process.pid}_${seq}`;
	const body = JSON.stringify({ id, object: 'event', type: 'payment_intent.succeeded', created: Math.floor(Date.now() / 1000),
		data: { object: { id: `pi_rel_${seq}`, object: 'payment_intent', amount: 1500, currency: 'usd' } } });
	return { id, path: `/webhooks/${provider}`, body, headers: signed(body) };
}

function signed(body) {
	return { 'content-type': 'application/json',
		'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload: body, secret }) };
}

// Starts psql in the background on the cluster; resolves when it exits.
function psqlInBackground(sql) {
	return new Promise((resolve, reject) => {
		const p = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', cluster.dir,
			'-p', String(cluster.port), '-U', 'postgres', '-d', 'payments', '-c', sql], { stdio: 'ignore' });
		p.once('error', reject);
		p.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`psql exited ${code}`))));
	});
}

// Starts the cluster again after a crash: the postmaster refuses while backends of the killed
// one still hold its shared memory, so this retries until they have noticed and exited.
async function restartAfterCrash() {
	const deadline = Date.now() + 60000;
	for (;;) {
		try {
			cluster.start();
			return;
		} catch (e) {
			if (Date.now() > deadline) throw e;
			await sleep(250);
		}
	}
}

describe(`reliability (${full ? 'full' : 'short'} version)`, () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`
			SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'s');
			SELECT payments.register_provider('storm', 'stripe');
			SELECT payments.add_secret('storm', :'s');
			SELECT payments.register_provider('inorder', 'stripe', '{"receipt_prefix": "IN"}');
			SELECT payments.add_secret('inorder', :'s');
			SELECT payments.register_provider('shuffled', 'stripe', '{"receipt_prefix": "SH"}');
			SELECT payments.add_secret('shuffled', :'s');`, { s: secret });
		shim = new Shim(cluster.dsn, ['--threads', '8', '--rate', '0', '--max-connections', '1024',
			'--max-connections-per-ip', '0']);
		await shim.start();
	});

	after(() => stopShimAndCluster(shim, cluster));

	test('kill -9 of the postmaster under load: 503 while down, recovery by itself, nothing answered 2xx lost', async (t) => {
		const traffic = steadyTraffic(shim.port, () => delivery(), { senders: size.senders });
		await sleep(size.loadMs);
		await waitFor(() => traffic.recovered(size.senders), 10000, 'deliveries before the crash');
		const postmaster = Number(readFileSync(join(cluster.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
		const killedAt = Date.now();
		process.kill(postmaster, 'SIGKILL');
		const before = traffic.results.filter((r) => r.at < killedAt && r.status === 200).map((r) => r.id);

		await waitFor(() => traffic.results.some((r) => r.started > killedAt && r.status === 503), 30000,
			'503 while the database is down');
		await sleep(500);
		await restartAfterCrash();
		const restartedAt = Date.now();
		await waitFor(() => traffic.results.filter((r) => r.started > restartedAt && r.status === 200).length >= 20 &&
			traffic.recovered(size.senders), 30000, 'deliveries after the restart');
		await traffic.stop();

		assertOutageAnswers(t, traffic.results);
		assert.ok(before.length > 0, 'deliveries answered 200 before the kill');
		const stored = Number(cluster.psqlVars(
			"SELECT count(*) FROM payments.events WHERE provider = 'stripe' AND event_id = ANY (string_to_array(:'ids', ','))",
			{ ids: before.join(',') }));
		assert.equal(stored, before.length, 'every delivery answered 200 before the kill is stored after the restart');
		const acknowledged = assertNoAcknowledgedLoss(cluster, traffic.results);
		t.diagnostic(`${before.length} answered 200 before the kill, ${acknowledged} in all`);
		const metrics = (await request(shim.port, { path: '/metrics' })).text;
		assert.match(metrics, /^payments_shim_db_reconnects_total [1-9]/m);
	});

	test('SIGTERM of the shim under load: requests in flight are answered and stored, nothing answered 2xx lost', async (t) => {
		const draining = new Shim(cluster.dsn, ['--threads', '4', '--rate', '0', '--shutdown-timeout', '20']);
		await draining.start();
		const traffic = steadyTraffic(draining.port, () => delivery(), { senders: size.senders });
		await waitFor(() => traffic.recovered(size.senders), 10000, 'deliveries before the signal');
		// a lock that makes every ingest wait, so that requests are surely in flight at SIGTERM
		const lockHeld = psqlInBackground('BEGIN; LOCK TABLE payments.events IN SHARE ROW EXCLUSIVE MODE; ' +
			'SELECT pg_sleep(2); COMMIT;');
		await sleep(700);
		const signalledAt = Date.now();
		draining.proc.kill('SIGTERM');
		await lockHeld;
		const exit = await draining.exited;
		await traffic.stop();

		assert.equal(exit.code, 0, `shim exit: ${JSON.stringify(exit)}`);
		assert.deepEqual(draining.sanitizerReports(), []);
		const inFlight = traffic.results.filter((r) => r.started < signalledAt && r.at > signalledAt);
		assert.ok(inFlight.filter((r) => r.status === 200).length >= 4,
			`requests in flight at SIGTERM answered 200: ${JSON.stringify(inFlight.map((r) => r.status))}`);
		// every answer is a 200 (stored) or a failure the sender retries: a 503 or a refused connection
		const others = traffic.results.filter((r) => r.status !== 200 && r.status !== 503 && !String(r.status).startsWith('error'));
		assert.deepEqual(others, []);
		const acknowledged = assertNoAcknowledgedLoss(cluster, traffic.results);
		t.diagnostic(`${inFlight.length} in flight at SIGTERM (${inFlight.filter((r) => r.status === 200).length} answered 200); ` +
			`${acknowledged} answered 200 in all, ${traffic.results.length - acknowledged} failures to retry`);
	});

	test(`${size.storm} concurrent deliveries of one event: one row, every answer 200`, async () => {
		const body = JSON.stringify({ id: 'evt_storm', object: 'event', type: 'payment_intent.succeeded',
			created: Math.floor(Date.now() / 1000),
			data: { object: { id: 'pi_storm', object: 'payment_intent', amount: 4200, currency: 'usd' } } });
		const headers = signed(body);
		const answers = await Promise.all(Array.from({ length: size.storm }, () =>
			request(shim.port, { method: 'POST', path: '/webhooks/storm', headers, body, timeoutMs: 60000 })));
		const statuses = answers.map((a) => a.status);
		assert.deepEqual([...new Set(statuses)], [200]);
		const outcomes = answers.map((a) => a.json.outcome);
		assert.equal(outcomes.filter((o) => o !== 'duplicate').length, 1, 'one delivery applied, the others duplicates');
		assert.equal(cluster.psql("SELECT count(*) FROM payments.events WHERE provider = 'storm'"), '1');
		assert.equal(cluster.psql("SELECT count(*) || '/' || min(status) FROM payments.payments WHERE provider = 'storm'"), '1/paid');
	});

	test(`${size.payments * size.eventsPerPayment} events for ${size.payments} payments shuffled end in the states in-order delivery gives`, async (t) => {
		const rnd = random(8_2026_1122);
		const events = [];
		for (let p = 0; p < size.payments; p++) {
			const life = lives[Math.floor(rnd() * lives.length)];
			const pi = `pi_shuffle_${p}`;
			const base = 1718200000 + p * 1000;
			life.forEach((kind, step) => events.push(stripeEvent(`evt_sh_${p}_${step}`, kind, pi, base + step * 10)));
			// the rest are events about the payment that do not move it (Stripe sends many)
			for (let n = life.length; n < size.eventsPerPayment; n++) {
				events.push(JSON.stringify({ id: `evt_sh_${p}_${n}`, object: 'event', type: 'charge.updated',
					created: base + n, data: { object: { id: pi, object: 'charge', payment_intent: pi, description: `note ${n}` } } }));
			}
		}
		const started = Date.now();
		for (const body of events) {
			const res = await request(shim.port, { method: 'POST', path: '/webhooks/inorder', headers: signed(body), body });
			assert.equal(res.status, 200, res.text);
		}
		const inOrderMs = Date.now() - started;

		const shuffled = [...events];
		for (let i = shuffled.length - 1; i > 0; i--) {
			const j = Math.floor(rnd() * (i + 1));
			[shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
		}
		let next = 0;
		const shuffledStart = Date.now();
		await Promise.all(Array.from({ length: 16 }, async () => {
			while (next < shuffled.length) {
				const body = shuffled[next++];
				const res = await request(shim.port, { method: 'POST', path: '/webhooks/shuffled', headers: signed(body), body });
				assert.equal(res.status, 200, res.text);
			}
		}));
		const shuffledMs = Date.now() - shuffledStart;

		// events that came before their payment were stored; retrying them applies them
		for (let round = 0; round < 5; round++) {
			cluster.psql("SELECT payments.apply_event(id) FROM payments.events WHERE provider = 'shuffled' AND state = 'pending' ORDER BY id");
		}
		const states = (provider) => cluster.psqlVars(`SELECT string_agg(provider_ref || '=' || status || '/' ||
			amount_refunded || '/' || (receipt_no IS NOT NULL), ' ' ORDER BY provider_ref)
			FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE provider = :'p'`, { p: provider });
		assert.equal(cluster.psql("SELECT count(*) FROM payments.events WHERE provider = 'shuffled'"), String(events.length));
		assert.equal(cluster.psql("SELECT count(*) FROM payments.events WHERE provider IN ('inorder', 'shuffled') AND state = 'pending'"), '0');
		assert.equal(cluster.psql("SELECT count(*) FROM payments.payments WHERE provider = 'shuffled'"), String(size.payments));
		assert.equal(states('shuffled'), states('inorder'));
		t.diagnostic(`${events.length} events: in order by one client in ${inOrderMs} ms, shuffled by 16 clients in ${shuffledMs} ms`);
	});
});
