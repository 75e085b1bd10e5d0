// The reliability suite, through the real shim and a real cluster: the database killed with
// kill -9 under load (the postmaster alone, then every process of the cluster at once), the shim
// stopped with SIGTERM under load, and storms (one event delivered by hundreds of clients at
// once; thousands of events delivered shuffled, ending where their payments' lives say).
// Nothing answered 2xx may be lost, and the shim recovers by itself.
//
// `make test` runs it scaled down; `make reliability` (PAYMENTS_RELIABILITY=full) with the
// numbers of issue 8: 500 concurrent deliveries of one event, 10,000 events for 100 payments.
// The cluster runs with fsync off (harness.mjs): kill -9 loses no committed data to a process
// crash, which is what is tested here, but a power loss is out of scope.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, Shim, request, sleep, waitFor, steadyTraffic, assertNoAcknowledgedLoss, assertOutageAnswers, stopShimAndCluster,
	holdLock, shimLockWaiters, shimLogLines, waitShimInFlight, shimRequestsInFlight, parseMetrics } from './harness.mjs';
import { random, lives, stripeEvent } from './stripe_lives.mjs';

const full = process.env.PAYMENTS_RELIABILITY === 'full';
const size = full
	? { senders: 16, loadMs: 3000, storm: 500, payments: 100, eventsPerPayment: 100 }
	: { senders: 8, loadMs: 1000, storm: 500, payments: 20, eventsPerPayment: 25 };

const stripe = new Stripe('sk_test_not_used_offline');
const secret = 'whsec_e2e_reliability';
let cluster;
let shim;
let seq = 0;

// A signed Stripe delivery of a new event (for provider `provider`), sent with an X-Request-ID
// derived from its event id (requestId), so that the shim's log lines can be matched to it.
function delivery(provider = 'stripe') {
	seq += 1;
	const id = `evt_rel_${process.pid}_${seq}`;
	const body = JSON.stringify({ id, object: 'event', type: 'payment_intent.succeeded', created: Math.floor(Date.now() / 1000),
		data: { object: { id: `pi_rel_${seq}`, object: 'payment_intent', amount: 1500, currency: 'usd' } } });
	return { id, path: `/webhooks/${provider}`, body, headers: { ...signed(body), 'x-request-id': requestId(id) } };
}

// X-Request-ID allows A-Za-z0-9._:- only
const requestId = (eventId) => eventId.replaceAll('_', '-');

function signed(body) {
	return { 'content-type': 'application/json',
		'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload: body, secret }) };
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

// Where a payment's life (stripe_lives.mjs), applied in order, leaves it by the rules of README's
// "Statuses and transitions": "status/amount/refunded total/receipt" (amounts of 2000 cents USD,
// a partial refund of 500).  A receipt is issued when a payment first becomes paid.
const moves = {
	pending: ['paid', 'failed', 'cancelled', 'partially_refunded', 'refunded', 'disputed'],
	failed: ['paid', 'cancelled', 'partially_refunded', 'refunded', 'disputed'],
	cancelled: ['paid', 'partially_refunded', 'refunded', 'disputed'],
	paid: ['partially_refunded', 'refunded', 'disputed'],
	partially_refunded: ['refunded', 'disputed'],
	disputed: ['paid', 'partially_refunded', 'refunded'],
	refunded: [],
};
const meaning = {
	'payment_intent.processing': ['pending'], 'payment_intent.succeeded': ['paid'],
	'payment_intent.payment_failed': ['failed'], 'payment_intent.canceled': ['cancelled'],
	'charge.refunded:partial': ['partially_refunded', 5], 'charge.refunded:full': ['refunded', 20],
	'charge.dispute.created': ['disputed'], 'charge.dispute.closed:won': ['paid'], 'charge.dispute.closed:lost': ['refunded'],
};
function endOf(life) {
	let status = null;
	let refunded = 0;
	let receipt = false;
	for (const kind of life) {
		const [to, total] = meaning[kind];
		if (status === null || moves[status].includes(to)) status = to;
		if (total !== undefined) refunded = Math.max(refunded, total);
		if (status === 'paid') receipt = true;
	}
	if (status === 'refunded') refunded = 20;
	return `${status}/20.00/${refunded.toFixed(2)}/${receipt}`;
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

	// The shim's counter of connections made to replace lost ones
	async function reconnects(port) {
		return parseMetrics((await request(port, { path: '/metrics' })).text).samples.get('payments_shim_db_reconnects_total');
	}

	// Steady traffic to the shim until every sender has had a 200: the load a crash test kills under
	async function loadBeforeCrash() {
		const reconnectsBefore = await reconnects(shim.port);
		const traffic = steadyTraffic(shim.port, () => delivery(), { senders: size.senders });
		await sleep(size.loadMs);
		await waitFor(() => traffic.recovered(size.senders), 10000, 'deliveries before the crash');
		return { reconnectsBefore, traffic };
	}

	// The cluster started again after a crash, the traffic stopped once 200s are back
	async function recoverAndStop(traffic) {
		await restartAfterCrash();
		const restartedAt = Date.now();
		await waitFor(() => traffic.results.filter((r) => r.started > restartedAt && r.status === 200).length >= 20 &&
			traffic.recovered(size.senders), 30000, 'deliveries after the restart');
		await traffic.stop();
	}

	// What a crash test asserts at the end: the outage's answers, every delivery answered 200 before
	// the kill (ids in before) and at all stored, and the same shim reconnected by itself; returns
	// how many were answered 200 in all
	async function assertCrashSurvived(t, traffic, before, reconnectsBefore) {
		assertOutageAnswers(t, traffic.results);
		assert.ok(before.length > 0, 'deliveries answered 200 before the kill');
		const stored = Number(cluster.psqlVars(
			"SELECT count(*) FROM payments.events WHERE provider = 'stripe' AND event_id = ANY (string_to_array(:'ids', ','))",
			{ ids: before.join(',') }));
		assert.equal(stored, before.length, 'every delivery answered 200 before the kill is stored after the restart');
		const acknowledged = assertNoAcknowledgedLoss(cluster, traffic.results);
		assert.equal(shim.proc.exitCode, null, 'the same shim, never restarted');
		assert.ok(await reconnects(shim.port) > reconnectsBefore, 'the shim reconnected by itself');
		return acknowledged;
	}

	test('kill -9 of the postmaster under load: 503 while down, recovery by itself, nothing answered 2xx lost', async (t) => {
		const { reconnectsBefore, traffic } = await loadBeforeCrash();
		const postmaster = Number(readFileSync(join(cluster.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
		const killedAt = Date.now();
		process.kill(postmaster, 'SIGKILL');
		const before = traffic.results.filter((r) => r.at < killedAt && r.status === 200).map((r) => r.id);

		await waitFor(() => traffic.results.some((r) => r.started > killedAt && r.status === 503), 30000,
			'503 while the database is down');
		await sleep(500);
		await recoverAndStop(traffic);

		const acknowledged = await assertCrashSurvived(t, traffic, before, reconnectsBefore);
		t.diagnostic(`${before.length} answered 200 before the kill, ${acknowledged} in all`);
	});

	test('kill -9 of the postmaster and every process of the cluster at once under load: what was answered 2xx survives', async (t) => {
		// Killing the postmaster alone leaves its backends running: batches already in them may
		// still commit.  Here every process of the cluster dies at the same moment, so batches in
		// flight die with their backends, and only what had committed can be there after the restart.
		const { reconnectsBefore, traffic } = await loadBeforeCrash();
		const postmaster = Number(readFileSync(join(cluster.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
		const children = execFileSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' }).trim().split('\n').map(Number);
		assert.ok(children.length >= 5, `the cluster's processes: ${children.join(' ')}`);
		const killStart = Date.now();
		process.kill(postmaster, 'SIGKILL');
		for (const pid of children) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
		const killedAt = Date.now();	// no request of this test started before here can reach a live backend after it
		const before = traffic.results.filter((r) => r.at < killStart && r.status === 200).map((r) => r.id);
		const alive = () => children.concat(postmaster).filter((pid) => { try { process.kill(pid, 0); return true; } catch { return false; } });
		await waitFor(() => alive().length === 0, 10000, 'every process of the cluster gone');

		await waitFor(() => traffic.results.filter((r) => r.started > killedAt && r.status === 503).length >= size.senders, 30000,
			'503 while the database is down');
		const downUntil = Date.now();
		await recoverAndStop(traffic);

		// while nothing of the database ran: only 503 with Retry-After, at once
		const down = traffic.results.filter((r) => r.started > killedAt && r.at < downUntil);
		assert.ok(down.length >= size.senders, `answers while down: ${down.length}`);
		assert.deepEqual(down.filter((r) => r.status !== 503 || !(Number(r.retryAfter) > 0)), [],
			'every answer while the database is down is 503 with Retry-After');
		const acknowledged = await assertCrashSurvived(t, traffic, before, reconnectsBefore);
		t.diagnostic(`${children.length + 1} processes killed; ${before.length} answered 200 before the kill, ` +
			`${down.length} answered 503 while down, ${acknowledged} answered 200 in all`);
	});

	test('SIGTERM of the shim under load: requests in flight are answered and stored, nothing answered 2xx lost', async (t) => {
		const draining = new Shim(cluster.dsn, ['--threads', '4', '--rate', '0', '--shutdown-timeout', '20']);
		await draining.start();
		const traffic = steadyTraffic(draining.port, () => delivery(), { senders: size.senders });
		let lock;
		let signalledAt;
		let exit;
		try {
			await waitFor(() => traffic.recovered(size.senders), 10000, 'deliveries before the signal');
			// a lock that makes every ingest wait, so that requests are surely in flight at SIGTERM: one
			// of the shim's backends waits for it, and every sender waits for an answer
			lock = await holdLock(cluster, 'LOCK TABLE payments.events IN SHARE ROW EXCLUSIVE MODE');
			await shimLockWaiters(cluster, 1);
			await waitShimInFlight(draining.port, size.senders);
			await sleep(200);
			assert.equal(await shimRequestsInFlight(draining.port), size.senders, 'every sender waits for an answer');
			signalledAt = Date.now();
			draining.proc.kill('SIGTERM');
			await waitFor(() => /"msg":"shutting down"/.test(draining.stderr), 10000, 'the shim draining');
			await lock.release();
			exit = await draining.exited;
			// the last log lines may still be in the pipe when the process has exited
			if (!draining.proc.stderr.readableEnded) await new Promise((resolve) => draining.proc.stderr.once('end', resolve));
		} finally {
			lock?.kill();
			if (draining.proc.exitCode === null && draining.proc.signalCode === null) draining.proc.kill('SIGKILL');
			await traffic.stop();
		}

		assert.equal(exit.code, 0, `shim exit: ${JSON.stringify(exit)}`);
		assert.deepEqual(draining.sanitizerReports(), []);
		const logs = shimLogLines(draining);
		const stopping = logs.find((l) => l.msg === 'shutting down');
		assert.ok(stopping.in_flight >= size.senders, `every sender had a request in flight at the signal: ${stopping.in_flight}`);
		// each request in flight at the signal is answered 200
		const inFlight = traffic.results.filter((r) => r.started < signalledAt && r.at > signalledAt);
		assert.equal(inFlight.length, size.senders, `requests in flight at SIGTERM: ${JSON.stringify(inFlight)}`);
		assert.deepEqual(inFlight.map((r) => r.status), inFlight.map(() => 200), 'requests in flight at SIGTERM answered 200');
		// every request that got an answer got 200; the others were never taken by the shim (the
		// listening socket closed): refused connections, all sent after the signal, none in its log
		const answered = traffic.results.filter((r) => typeof r.status === 'number');
		assert.deepEqual(answered.filter((r) => r.status !== 200), [], 'every answer is 200');
		const failed = traffic.results.filter((r) => typeof r.status !== 'number');
		assert.deepEqual(failed.filter((r) => r.started < signalledAt), [], 'no request sent before the signal failed');
		const logged = new Map(logs.filter((l) => l.msg === 'request' && l.path === '/webhooks/stripe').map((l) => [l.request_id, l]));
		assert.deepEqual(failed.filter((r) => logged.has(requestId(r.id))), [], 'a request the shim took got an answer');
		// the shim's account and the senders' agree: what it logged is what was answered, all 200
		assert.deepEqual([...logged.keys()].sort(), answered.map((r) => requestId(r.id)).sort());
		assert.deepEqual([...logged.values()].filter((l) => l.status !== 200), []);
		const acknowledged = assertNoAcknowledgedLoss(cluster, traffic.results);
		assert.equal(acknowledged, answered.length);
		t.diagnostic(`${inFlight.length} in flight at SIGTERM, all answered 200 and stored; ` +
			`${acknowledged} answered 200 in all, ${failed.length} refused connections to retry`);
	});

	test(`${size.storm} concurrent deliveries of one event: every answer 200, one applied and the others duplicates, one row`, async () => {
		const body = JSON.stringify({ id: 'evt_storm', object: 'event', type: 'payment_intent.succeeded',
			created: Math.floor(Date.now() / 1000),
			data: { object: { id: 'pi_storm', object: 'payment_intent', amount: 4200, currency: 'usd' } } });
		const headers = signed(body);
		const answers = await Promise.all(Array.from({ length: size.storm }, () =>
			request(shim.port, { method: 'POST', path: '/webhooks/storm', headers, body, timeoutMs: 60000 })));
		const statuses = answers.map((a) => a.status);
		assert.deepEqual([...new Set(statuses)], [200]);
		const outcomes = answers.map((a) => a.json.outcome);
		assert.equal(outcomes.filter((o) => o === 'applied').length, 1, 'one delivery applied');
		assert.equal(outcomes.filter((o) => o === 'duplicate').length, size.storm - 1, 'the others duplicates');
		assert.deepEqual(answers.map((a) => a.json.event_id), answers.map(() => 'evt_storm'));
		assert.equal(cluster.psql("SELECT count(*) || '/' || min(event_id) || '/' || min(state::text) FROM payments.events WHERE provider = 'storm'"),
			'1/evt_storm/applied');
		assert.equal(cluster.psql("SELECT count(*) || '/' || min(status) || '/' || min(amount) FROM payments.payments WHERE provider = 'storm'"),
			'1/paid/42.00');
	});

	test(`${size.payments * size.eventsPerPayment} events for ${size.payments} payments shuffled end in the states in-order delivery gives`, async (t) => {
		const rnd = random(8_2026_1122);
		const events = [];
		const expected = [];
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
			expected.push(`${pi}=${endOf(life)}`);
		}
		expected.sort();
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

		// events that came before their payment were stored, pending: the retry job applies them once
		// they are due (here at once, rather than on their schedule)
		const pending = () => Number(cluster.psql("SELECT count(*) FROM payments.events WHERE provider = 'shuffled' AND state = 'pending'"));
		const waiting = pending();
		let retried = 0;
		for (let round = 0; round < 5 && pending() > 0; round++) {
			retried += Number(cluster.psql(`UPDATE payments.events SET next_attempt_at = now()
				WHERE provider = 'shuffled' AND state = 'pending';
				SELECT count(*) FROM payments.retry_events(100000)`));
		}
		const states = (provider) => cluster.psqlVars(`SELECT string_agg(provider_ref || '=' || status || '/' || round(amount, 2) || '/' ||
				round(payments.refunded_total(status, amount, amount_refunded), 2) || '/' || (receipt_no IS NOT NULL), ' ' ORDER BY provider_ref)
			FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE provider = :'p'`, { p: provider })
			.split(' ').sort();
		for (const provider of ['inorder', 'shuffled']) {
			assert.equal(cluster.psqlVars("SELECT count(*) || '/' || count(DISTINCT event_id) FROM payments.events WHERE provider = :'p'",
				{ p: provider }), `${events.length}/${events.length}`, `${provider}: every event stored once`);
		}
		assert.equal(cluster.psql("SELECT count(*) FROM payments.events WHERE provider IN ('inorder', 'shuffled') AND state IN ('pending', 'dead')"), '0');
		assert.equal(cluster.psql("SELECT count(*) FROM payments.payments WHERE provider = 'shuffled'"), String(size.payments));
		// each payment ends where its life says, delivered in order or shuffled
		assert.deepEqual(states('inorder'), expected, 'in order');
		assert.deepEqual(states('shuffled'), expected, 'shuffled');
		t.diagnostic(`${events.length} events: in order by one client in ${inOrderMs} ms, shuffled by 16 clients in ${shuffledMs} ms ` +
			`(${waiting} stored before their payment, applied by ${retried} retries)`);
	});
});
