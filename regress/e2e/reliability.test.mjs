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
import { readFileSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { connect } from 'node:net';
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

	// Sends a delivery's headers and half its body on a connection of its own; finish() sends the
	// rest, answer() is what came back so far
	async function halfSent(port, { id, path, headers, body }) {
		const socket = connect(port, '127.0.0.1');
		let answer = '';
		socket.setEncoding('latin1');
		socket.on('data', (d) => { answer += d; });
		socket.on('error', () => { /* the answer, if any, is checked */ });
		await new Promise((resolve) => socket.once('connect', resolve));
		const half = Math.floor(body.length / 2);
		socket.write(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
			Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') + `\r\n${body.slice(0, half)}`);
		return { id, socket, finish: () => socket.write(body.slice(half)), answer: () => answer };
	}

	// The shim's counter of connections made to replace lost ones
	async function reconnects(port) {
		return parseMetrics((await request(port, { path: '/metrics' })).text).samples.get('payments_shim_db_reconnects_total');
	}

	// Steady traffic to the shim until every sender has had a 200: the load a crash test kills under
	// (an answer may take long while the cluster recovers: up to a minute)
	async function loadBeforeCrash() {
		const reconnectsBefore = await reconnects(shim.port);
		const traffic = steadyTraffic(shim.port, () => delivery(), { senders: size.senders, timeoutMs: 60000 });
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

	// Stops (SIGSTOP) the cluster's WAL writer for half a second before a kill, and returns its pid.
	// Commits made asynchronously (a batch's) then wait in shared memory, which kill -9 loses, instead
	// of reaching the kernel within milliseconds: an answer given before its delivery's WAL was flushed
	// (payments.flush_wal) shows as a loss.  With the WAL writer running, a shim that skipped the flush
	// passed these tests three times in four.
	async function stopWalWriter(postmaster) {
		const walwriter = execFileSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' }).trim().split('\n').map(Number)
			.find((pid) => { try { return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('walwriter'); } catch { return false; } });
		assert.ok(walwriter, 'the cluster has a WAL writer');
		process.kill(walwriter, 'SIGSTOP');
		await sleep(500);
		return walwriter;
	}

	// Requests in flight at a moment: sent before it, answered (or failed) after it
	const inFlightAt = (traffic, at) => traffic.results.filter((r) => r.started < at && r.at > at).length;

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
		const walwriter = await stopWalWriter(postmaster);
		const killedAt = Date.now();
		process.kill(postmaster, 'SIGKILL');
		process.kill(walwriter, 'SIGKILL');
		const before = traffic.results.filter((r) => r.at < killedAt && r.status === 200).map((r) => r.id);

		await waitFor(() => traffic.results.some((r) => r.started > killedAt && r.status === 503), 30000,
			'503 while the database is down');
		await sleep(500);
		await recoverAndStop(traffic);

		const acknowledged = await assertCrashSurvived(t, traffic, before, reconnectsBefore);
		const inFlight = inFlightAt(traffic, killedAt);
		assert.ok(inFlight > 0, 'requests in flight at the kill');
		t.diagnostic(`${before.length} answered 200 before the kill, ${inFlight} in flight at it, ${acknowledged} answered 200 in all`);
	});

	test('kill -9 of the postmaster and every process of the cluster at once under load: what was answered 2xx survives', async (t) => {
		// Killing the postmaster alone leaves its backends running: batches already in them may
		// still commit.  Here every process of the cluster dies at the same moment, so batches in
		// flight die with their backends, and only what had committed can be there after the restart.
		const { reconnectsBefore, traffic } = await loadBeforeCrash();
		const postmaster = Number(readFileSync(join(cluster.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
		await stopWalWriter(postmaster);
		const children = execFileSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' }).trim().split('\n').map(Number);
		assert.ok(children.length >= 5, `the cluster's processes: ${children.join(' ')}`);
		const killStart = Date.now();
		process.kill(postmaster, 'SIGKILL');
		for (const pid of children) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
		const killedAt = Date.now();	// no request of this test started before here can reach a live backend after it
		const before = traffic.results.filter((r) => r.at < killStart && r.status === 200).map((r) => r.id);
		// a process the postmaster forked after the list was taken (a backend, a worker) is killed
		// too: any process whose working directory is the cluster's data directory
		const dataDir = realpathSync(cluster.data);
		const stragglers = () => readdirSync('/proc').filter((d) => /^[0-9]+$/.test(d)).map(Number).filter((pid) => {
			try { return readlinkSync(`/proc/${pid}/cwd`) === dataDir; } catch { return false; }
		});
		const alive = () => children.concat(postmaster).filter((pid) => { try { process.kill(pid, 0); return true; } catch { return false; } });
		await waitFor(() => {
			for (const pid of stragglers()) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
			return alive().length === 0 && stragglers().length === 0;
		}, 10000, 'every process of the cluster gone');

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
		const inFlight = inFlightAt(traffic, killStart);
		assert.ok(inFlight > 0, 'requests in flight at the kill');
		t.diagnostic(`${children.length + 1} processes killed; ${before.length} answered 200 before the kill, ${inFlight} in flight at it, ` +
			`${down.length} answered 503 while down, ${acknowledged} answered 200 in all`);
	});

	test('SIGTERM of the shim under load: requests in flight are answered and stored, nothing answered 2xx lost', async (t) => {
		const draining = new Shim(cluster.dsn, ['--threads', '4', '--rate', '0', '--shutdown-timeout', '20']);
		await draining.start();
		const traffic = steadyTraffic(draining.port, () => delivery(), { senders: size.senders, timeoutMs: 60000 });
		let lock;
		let signalledAt;
		let exit;
		let slow;
		try {
			await waitFor(() => traffic.recovered(size.senders), 10000, 'deliveries before the signal');
			// a lock that makes every ingest wait, so that requests are surely in flight at SIGTERM: one
			// of the shim's backends waits for it, and every sender waits for an answer
			lock = await holdLock(cluster, 'LOCK TABLE payments.events IN SHARE ROW EXCLUSIVE MODE');
			await shimLockWaiters(cluster, 1);
			await waitShimInFlight(draining.port, size.senders);
			await sleep(200);
			assert.equal(await shimRequestsInFlight(draining.port), size.senders, 'every sender waits for an answer');
			// and one more, whose body is half sent before the signal and the rest after it
			slow = await halfSent(draining.port, delivery());
			await waitShimInFlight(draining.port, size.senders + 1);
			signalledAt = Date.now();
			draining.proc.kill('SIGTERM');
			await waitFor(() => /"msg":"shutting down"/.test(draining.stderr), 10000, 'the shim draining');
			slow.finish();
			await lock.release();
			exit = await draining.exited;
			await waitFor(() => /^HTTP\/1\.1 \d{3} /.test(slow.answer()), 10000, 'the half-sent request answered');
			// the last log lines may still be in the pipe when the process has exited
			if (!draining.proc.stderr.readableEnded) await new Promise((resolve) => draining.proc.stderr.once('end', resolve));
		} finally {
			lock?.kill();
			draining.kill();
			await traffic.stop();
			slow?.socket.destroy();
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
		assert.deepEqual(failed.filter((r) => !/ECONNREFUSED/.test(r.status)), [], 'every failure is a connection refused');
		// the request read in part at the signal was read to its end, answered 200 and stored
		assert.match(slow.answer(), /^HTTP\/1\.1 200 /, `the half-sent request's answer: ${slow.answer()}`);
		const logged = new Map(logs.filter((l) => l.msg === 'request' && l.path === '/webhooks/stripe').map((l) => [l.request_id, l]));
		assert.deepEqual(failed.filter((r) => logged.has(requestId(r.id))), [], 'a request the shim took got an answer');
		// the shim's account and the senders' agree: what it logged is what was answered, all 200
		assert.deepEqual([...logged.keys()].sort(), answered.map((r) => requestId(r.id)).concat(requestId(slow.id)).sort());
		assert.deepEqual([...logged.values()].filter((l) => l.status !== 200), []);
		const acknowledged = assertNoAcknowledgedLoss(cluster, traffic.results.concat({ id: slow.id, status: 200 }));
		assert.equal(acknowledged, answered.length + 1);
		t.diagnostic(`${inFlight.length} in flight at SIGTERM and one half sent, all answered 200 and stored; ` +
			`${acknowledged} answered 200 in all, ${failed.length} refused connections to retry`);
	});

	// The storm through shim s: every answer 200, one applied, the others duplicates, one event row
	// and one payment.  A request without an answer fails the test with what the shim logged other
	// than its request lines (a storm once failed with "socket hang up", cause unknown)
	async function storm(s, eventId) {
		const body = JSON.stringify({ id: eventId, object: 'event', type: 'payment_intent.succeeded',
			created: Math.floor(Date.now() / 1000),
			data: { object: { id: `pi_${eventId}`, object: 'payment_intent', amount: 4200, currency: 'usd' } } });
		const headers = signed(body);
		const settled = await Promise.allSettled(Array.from({ length: size.storm }, () =>
			request(s.port, { method: 'POST', path: '/webhooks/storm', headers, body, timeoutMs: 60000 })));
		const failures = settled.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
		if (failures.length > 0) {
			const counts = {};
			for (const f of failures) counts[f] = (counts[f] ?? 0) + 1;
			const notes = s.stderr.split('\n').filter((l) => l !== '' && !l.includes('"msg":"request"')).slice(-30);
			assert.fail(`${failures.length} of ${size.storm} deliveries got no answer: ${JSON.stringify(counts)}; ` +
				`the shim's log besides its request lines:\n${notes.join('\n')}`);
		}
		const answers = settled.map((r) => r.value);
		const statuses = answers.map((a) => a.status);
		assert.deepEqual([...new Set(statuses)], [200]);
		const outcomes = answers.map((a) => a.json.outcome);
		assert.equal(outcomes.filter((o) => o === 'applied').length, 1, 'one delivery applied');
		assert.equal(outcomes.filter((o) => o === 'duplicate').length, size.storm - 1, 'the others duplicates');
		assert.deepEqual(answers.map((a) => a.json.event_id), answers.map(() => eventId));
		assert.equal(cluster.psqlVars("SELECT count(*) || '/' || min(state::text) FROM payments.events WHERE provider = 'storm' AND event_id = :'e'",
			{ e: eventId }), '1/applied');
		assert.equal(cluster.psqlVars("SELECT count(*) || '/' || min(status) || '/' || min(amount) FROM payments.payments WHERE provider = 'storm' AND provider_ref = :'p'",
			{ p: `pi_${eventId}` }), '1/paid/42.00');
	}

	test(`${size.storm} concurrent deliveries of one event: every answer 200, one applied and the others duplicates, one row`, async () => {
		// through the shim as it runs (a batch keeps one of a delivery's repeats in it), then through
		// one that stores each delivery in a transaction of its own, 32 at once: they race in the database
		await storm(shim, 'evt_storm');
		const alone = new Shim(cluster.dsn, ['--threads', '8', '--rate', '0', '--max-connections', '1024',
			'--max-connections-per-ip', '0', '--batch-max', '1', '--batch-concurrency', '32']);
		await alone.start();
		try {
			await storm(alone, 'evt_storm_alone');
		} finally {
			const { code } = await alone.stop();
			assert.deepEqual(alone.sanitizerReports(), []);
			assert.equal(code, 0);
		}
	});

	test(`${size.payments * size.eventsPerPayment} events for ${size.payments} payments shuffled end in the states in-order delivery gives`, async (t) => {
		// a new permutation each run, its seed printed so that a failure can be replayed
		const seed = Number(process.env.PAYMENTS_SHUFFLE_SEED ?? Math.floor(Math.random() * 2 ** 31));
		t.diagnostic(`shuffle seed ${seed} (PAYMENTS_SHUFFLE_SEED replays it)`);
		const rnd = random(seed);
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
