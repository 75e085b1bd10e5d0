// Group commit in the shim: deliveries arriving together share one transaction. Concurrent
// requests coalesce (the batch size metric shows it), no more than 64 MB of bodies go in one
// transaction, a delivery that fails inside a batch fails alone, a batch whose transaction fails
// in a way that may be one delivery's (its commit raises, a deadlock, a statement_timeout) is
// stored again one delivery at a time, and a batch whose backend is lost answers every request in
// it 503, so that nothing answered 2xx can be missing.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, Shim, request, sleep, parseMetrics, waitShimQueued, waitFor } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const stripe = new Stripe('sk_test_not_used_offline');
const secret = `whsec_${randomBytes(24).toString('hex')}`;
let cluster;
let shim;
let seq = 0;

function delivery(id) {
	const body = JSON.stringify({ id, object: 'event', type: 'payment_intent.succeeded', created: Math.floor(Date.now() / 1000),
		data: { object: { id: `pi_${id}`, object: 'payment_intent', amount: 1000, currency: 'usd' } } });
	return { body, headers: { 'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload: body, secret }) } };
}

function send(id, tamper = false) {
	const d = delivery(id);
	if (tamper) d.headers['stripe-signature'] = d.headers['stripe-signature'].replace(/v1=(.)/, (_, c) => `v1=${c === '0' ? '1' : '0'}`);
	// a connection each, so that they all reach the shim at once
	return request(shim.port, { method: 'POST', path: '/webhooks/stripe', body: d.body,
		headers: { 'content-type': 'application/json', ...d.headers } });
}

// psql sessions holding locks, killed at the end if a failing test left one open
const heldSessions = new Set();

// Holds SHARE on payments.events in a psql session until release() is called: inserts wait.
async function holdEvents() {
	const proc = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', cluster.dir,
		'-p', String(cluster.port), '-U', 'postgres', '-d', 'payments'], { stdio: ['pipe', 'pipe', 'pipe'] });
	heldSessions.add(proc);
	proc.once('exit', () => heldSessions.delete(proc));
	proc.stdin.write('BEGIN; LOCK TABLE payments.events IN SHARE MODE; SELECT \'locked\';\n');
	await new Promise((resolve) => proc.stdout.on('data', (d) => { if (String(d).includes('locked')) resolve(); }));
	return {
		release: () => new Promise((resolve) => { proc.once('exit', resolve); proc.stdin.end('COMMIT;\n'); }),
	};
}

// Waits until n of the shim's backends (other than those of "not") wait for a lock; returns
// their pids.
async function lockWaiters(n, not = []) {
	for (let i = 0; i < 200; i++) {
		const pids = cluster.psql(`SELECT string_agg(pid::text, ' ') FROM pg_stat_activity
			WHERE application_name = 'payments-shim' AND wait_event_type = 'Lock'`).split(' ')
			.filter((p) => p !== '' && !not.includes(p));
		if (pids.length >= n) return pids;
		await sleep(25);
	}
	throw new Error('the shim never waited for the lock');
}

// A delivery padded with size bytes to a shim of the test's own
function sendPadded(s, id, size) {
	const body = JSON.stringify({ id, object: 'event', type: 'payment_intent.succeeded', created: Math.floor(Date.now() / 1000),
		padding: 'p'.repeat(size), data: { object: { id: `pi_${id}`, object: 'payment_intent', amount: 1000, currency: 'usd' } } });
	return request(s.port, { method: 'POST', path: '/webhooks/stripe', body, timeoutMs: 60000, headers: {
		'content-type': 'application/json', 'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload: body, secret }) } });
}

// Runs fn with a second shim (one batch at a time, a batch of up to 64; on cluster.dsn unless
// another is given), then stops it: a clean exit, no sanitizer report
async function withBatchShim(args, fn, dsn = cluster.dsn) {
	const s = new Shim(dsn, ['--rate', '0', '--batch-max', '64', '--batch-concurrency', '1', '--log-level', 'warning', ...args]);
	await s.start();
	try {
		await fn(s);
	} finally {
		const { code } = await s.stop();
		assert.deepEqual(s.sanitizerReports(), []);
		assert.equal(code, 0);
	}
}

async function metric(name) {
	const { samples } = parseMetrics(await (await fetch(`${shim.base}/metrics`)).text());
	return samples.get(name) ?? 0;
}

function stored(ids) {
	return Number(cluster.psqlVars(`SELECT count(*) FROM payments.events WHERE event_id = ANY(string_to_array(:'ids', ','))`,
		{ ids: ids.join(',') }));
}

// Sends a first request, which leads a batch alone and waits for the lock, then the others,
// which queue behind it and go together as the next batch.
async function batchBehindLock(ids, { tamper = [] } = {}) {
	const lock = await holdEvents();
	const first = send(ids[0]);
	await lockWaiters(1);
	const rest = ids.slice(1).map((id) => send(id, tamper.includes(id)));
	await waitShimQueued(shim.port, ids.length);		// received, their bodies read: queued
	return { lock, answers: () => Promise.all([first, ...rest]) };
}

// To shim s: a lead delivery that goes alone and waits for a lock on the events, then ids queued
// behind it one after the other, so that they go as one batch in this order once the lock is
// released; resolves with the answers, the lead's first.
async function orderedBatchBehindLock(s, ids) {
	const sendTo = (id) => {
		const d = delivery(id);
		return request(s.port, { method: 'POST', path: '/webhooks/stripe', body: d.body, timeoutMs: 60000,
			headers: { 'content-type': 'application/json', ...d.headers } });
	};
	const lock = await holdEvents();
	const lead = sendTo(`evt_lead_${++seq}`);
	await lockWaiters(1);
	const rest = [];
	for (const id of ids) {
		rest.push(sendTo(id));
		await waitShimQueued(s.port, rest.length + 1);		// queued before the next is sent
	}
	await lock.release();
	return Promise.all([lead, ...rest]);
}

// How the deliveries of these event ids were stored, one number per transaction (the events of
// one transaction share its start time, received_at, also when each went in a subtransaction of
// its own), largest first
function transactions(ids) {
	return cluster.psqlVars(`SELECT string_agg(n::text, ' ' ORDER BY n DESC)
		FROM (SELECT count(*) AS n FROM payments.events WHERE event_id = ANY(string_to_array(:'ids', ','))
			   GROUP BY received_at) t`, { ids: ids.join(',') });
}

// The batch histogram's count (transactions) and sum (deliveries)
async function batches() {
	return { count: await metric('payments_shim_batch_deliveries_count'), sum: await metric('payments_shim_batch_deliveries_sum') };
}

// Is the WAL flushed up to an insert position read after a commit? A position just past a page
// header (the commit ended a page) has nothing on that page yet: the flush covers the commit once
// it reaches the start of that page.
function flushedTo(lsn) {
	return cluster.psqlVars(`SELECT pg_current_wal_flush_lsn() >= l - CASE
			WHEN (l - '0/0') % (SELECT setting::numeric FROM pg_settings WHERE name = 'wal_segment_size') = 40 THEN 40
			WHEN (l - '0/0') % current_setting('wal_block_size')::numeric = 24 THEN 24 ELSE 0 END
		FROM (SELECT :'l'::pg_lsn AS l) AS inserted`, { l: lsn }) === 't';
}

describe('group commit', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'s');
			-- faults on demand: an event whose insert raises, and one whose commit fails
			CREATE SEQUENCE public.deadlocks;
			CREATE FUNCTION public.poison() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.event_id LIKE 'evt_raise_%' THEN RAISE EXCEPTION 'poisoned event'; END IF;
				IF NEW.event_id LIKE 'evt_bad_data_%' THEN RAISE EXCEPTION 'bad data' USING ERRCODE = '22023'; END IF;
				-- the first time only (a sequence is not rolled back): as if a concurrent batch held its
				-- row when the batch stored its Stripe events together
				IF NEW.event_id LIKE 'evt_deadlock_%' AND nextval('public.deadlocks') = 1 THEN
					RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01';
				END IF;
				IF NEW.event_id LIKE 'evt_slow_%' THEN PERFORM pg_sleep(5); END IF;
				IF NEW.event_id LIKE 'evt_lag_%' THEN PERFORM pg_sleep(3.5); END IF;
				RETURN NEW;
			END $$;
			CREATE TRIGGER poison BEFORE INSERT ON payments.events FOR EACH ROW EXECUTE FUNCTION public.poison();
			-- the first update of such a payment: as if a concurrent batch held it
			CREATE SEQUENCE public.settle_deadlocks;
			CREATE FUNCTION public.poison_update() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.provider_ref LIKE 'pi_evt_settle_dl_%' AND nextval('public.settle_deadlocks') = 1 THEN
					RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01';
				END IF;
				RETURN NEW;
			END $$;
			CREATE TRIGGER poison_update BEFORE UPDATE ON payments.payments FOR EACH ROW EXECUTE FUNCTION public.poison_update();
			-- an event whose commit is refused, and one whose commit deadlocks the first time only
			CREATE SEQUENCE public.commit_deadlocks;
			CREATE FUNCTION public.fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.event_id LIKE 'evt_commitbad_%' THEN RAISE EXCEPTION 'bad value at commit' USING ERRCODE = '22023'; END IF;
				IF NEW.event_id NOT LIKE 'evt_commitdl_%' THEN RAISE EXCEPTION 'commit refused'; END IF;
				IF nextval('public.commit_deadlocks') = 1 THEN
					RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01';
				END IF;
				RETURN NULL;
			END $$;
			CREATE CONSTRAINT TRIGGER fail_commit AFTER INSERT ON payments.events DEFERRABLE INITIALLY DEFERRED
				FOR EACH ROW WHEN (NEW.event_id LIKE 'evt_commitfail_%' OR NEW.event_id LIKE 'evt_commitdl_%'
					OR NEW.event_id LIKE 'evt_commitbad_%')
				EXECUTE FUNCTION public.fail_commit();`,
		{ s: secret });
		shim = new Shim(cluster.dsn, ['--threads', '24', '--rate', '0', '--batch-max', '64', '--batch-concurrency', '1',
			'--log-level', 'warning']);
		await shim.start();
	});

	after(async () => {
		for (const proc of heldSessions) proc.kill();
		const exit = shim ? await shim.stop() : { code: 0 };
		cluster?.destroy();
		assert.deepEqual(shim?.sanitizerReports() ?? [], []);
		assert.equal(exit.code, 0);
	});

	test('concurrent requests coalesce into one transaction, each answered after its commit', async () => {
		const before = await metric('payments_shim_batch_deliveries_count');
		const ids = Array.from({ length: 20 }, () => `evt_coalesce_${++seq}`);
		const { lock, answers } = await batchBehindLock(ids);
		assert.equal(stored(ids), 0, 'nothing is visible before the commit');
		await lock.release();
		const res = await answers();
		assert.deepEqual(res.map((r) => r.status), ids.map(() => 200));
		assert.deepEqual(res.map((r) => r.json.outcome), ids.map(() => 'applied'));
		// each answer is its own request's, none another's of the batch
		assert.deepEqual(res.map((r) => r.json.event_id), ids);
		assert.equal(stored(ids), 20);
		// the first went alone, the 19 queued behind it went as one batch
		assert.equal(await metric('payments_shim_batch_deliveries_count') - before, 2);
		assert.ok(await metric('payments_shim_batch_deliveries_bucket{le="16"}') < await metric('payments_shim_batch_deliveries_count'),
			'a batch of more than 16');
		// gapless receipts, taken at commit
		assert.equal(cluster.psql(`SELECT count(DISTINCT receipt_no) FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id WHERE provider_ref LIKE 'pi_evt_coalesce_%'`), '20');
	});

	test('a batch carries 64 MB of bodies at most: a longer queue goes in several transactions', async () => {
		// 6 MB deliveries (an 8 MB --max-body): 11 of them fit in 64 MiB, the 12 queued do not
		await withBatchShim(['--threads', '16', '--max-body', String(8 << 20)], async (big) => {
			const ids = Array.from({ length: 13 }, () => `evt_bigbatch_${++seq}`);
			const lock = await holdEvents();
			const first = sendPadded(big, ids[0], 6_000_000);
			await lockWaiters(1);
			const rest = ids.slice(1).map((id) => sendPadded(big, id, 6_000_000));
			await waitShimQueued(big.port, ids.length, 60000);		// all in the queue
			await lock.release();
			const res = await Promise.all([first, ...rest]);
			assert.deepEqual(res.map((r) => r.status), ids.map(() => 200));
			assert.deepEqual(res.map((r) => r.json.outcome), ids.map(() => 'applied'));
			// the events of one transaction share its xmin: the first alone, then 11 and 1
			const batches = cluster.psqlVars(`SELECT string_agg(n::text, ' ' ORDER BY n DESC), max(bytes) <= 64 * 1024 * 1024
				FROM (SELECT count(*) AS n, sum(octet_length(body)) AS bytes FROM payments.events
					   WHERE event_id = ANY(string_to_array(:'ids', ',')) GROUP BY xmin::text) t`, { ids: ids.join(',') });
			assert.equal(batches, '11 1 1|t', 'the queue of 12 went as 11 and 1, each batch within 64 MiB');
		});
	});

	test('a body over 64 MB goes alone (a --max-body above the batch cap)', async () => {
		await withBatchShim(['--threads', '8', '--max-body', String(80 << 20)], async (big) => {
			const ids = Array.from({ length: 5 }, () => `evt_hugebody_${++seq}`);
			const lock = await holdEvents();
			const first = sendPadded(big, ids[0], 10);
			await lockWaiters(1);
			const huge = sendPadded(big, ids[1], 65 << 20);
			await waitShimQueued(big.port, 2, 60000);		// the huge one queued first
			const small = ids.slice(2).map((id) => sendPadded(big, id, 10));
			await waitShimQueued(big.port, ids.length);
			await lock.release();
			const res = await Promise.all([first, huge, ...small]);
			assert.deepEqual(res.map((r) => r.status), ids.map(() => 200));
			const batches = cluster.psqlVars(`SELECT string_agg(n::text, ' ' ORDER BY n DESC, big)
				FROM (SELECT count(*) AS n, bool_or(octet_length(body) > 64 * 1024 * 1024) AS big FROM payments.events
					   WHERE event_id = ANY(string_to_array(:'ids', ',')) GROUP BY xmin::text) t`, { ids: ids.join(',') });
			assert.equal(batches, '3 1 1', 'the first alone, the huge one alone, then the three small ones');
		});
	});

	test('a batch carries each delivery byte for byte, with its headers, address and request id', async () => {
		const ids = Array.from({ length: 8 }, () => `evt_bytes_${++seq}`);
		const bodies = ids.map((id, i) => JSON.stringify({ id, object: 'event', type: 'payment_intent.succeeded',
			created: Math.floor(Date.now() / 1000), note: ['Chipo — Harare ✓', 'tab\there', '"quoted" \\ \'', '', 'ü'.repeat(i * 500)][i % 5],
			data: { object: { id: `pi_${id}`, object: 'payment_intent', amount: 1000 + i, currency: 'usd' } } }, null, i % 2 ? 2 : 0));
		const post = (i) => request(shim.port, { method: 'POST', path: '/webhooks/stripe', body: bodies[i],
			headers: { 'content-type': 'application/json', 'x-request-id': `req-bytes-${i}`, 'x-note': `n${i} é`,
				'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload: bodies[i], secret }) } });
		const before = await batches();
		const lock = await holdEvents();
		const first = post(0);
		await lockWaiters(1);
		const rest = ids.slice(1).map((_, i) => post(i + 1));
		await waitShimQueued(shim.port, ids.length);
		await lock.release();
		const res = await Promise.all([first, ...rest]);
		assert.deepEqual(res.map((r) => r.status), ids.map(() => 200));
		assert.deepEqual(res.map((r) => r.json.event_id), ids);
		// the first alone, the seven queued behind it in one transaction
		const after = await batches();
		assert.deepEqual([after.count - before.count, after.sum - before.sum], [2, 8], 'two transactions of 1 and 7');
		assert.equal(transactions(ids), '7 1');
		const rows = cluster.psqlVars(`SELECT string_agg(concat_ws(' ', event_id, encode(sha256(body), 'hex'), request_id,
				host(source_ip), headers ->> 'x-note'), E'\n' ORDER BY event_id)
			FROM payments.events WHERE event_id = ANY(string_to_array(:'ids', ','))`, { ids: ids.join(',') });
		const want = ids.map((id, i) => `${id} ${createHash('sha256').update(bodies[i]).digest('hex')} req-bytes-${i} 127.0.0.1 n${i} é`)
			.sort().join('\n');
		assert.equal(rows, want);
	});

	test('a delivery that fails inside a batch fails alone', async () => {
		const ids = Array.from({ length: 8 }, () => `evt_mixed_${++seq}`);
		ids.splice(3, 0, `evt_raise_${++seq}`, `evt_bad_data_${++seq}`, `evt_tampered_${++seq}`);
		const before = await batches();
		const { lock, answers } = await batchBehindLock(ids, { tamper: [ids[5]] });
		await lock.release();
		const res = await answers();
		// the first alone, the ten queued behind it in one transaction, failures included
		const after = await batches();
		assert.deepEqual([after.count - before.count, after.sum - before.sum], [2, 11], 'two transactions of 1 and 10');
		const byId = Object.fromEntries(ids.map((id, i) => [id, res[i].status]));
		assert.equal(byId[ids[3]], 503, 'an error inside ingest: 503 for it alone');
		assert.equal(byId[ids[4]], 400, 'a data exception: 400');
		assert.equal(byId[ids[5]], 401, 'a bad signature: 401');
		const good = ids.filter((_, i) => i < 3 || i > 5);
		assert.deepEqual(good.map((id) => byId[id]), good.map(() => 200));
		assert.equal(stored(good), good.length);
		assert.equal(transactions(good), '7 1', 'the seven good deliveries of the second batch committed together');
		assert.equal(stored(ids.slice(3, 6)), 0);
		assert.equal(cluster.psqlVars(`SELECT count(*) FROM payments.rejections WHERE outcome = 'rejected'`, {}), '1');
	});

	test('a delivery that deadlocks with a concurrent batch is stored again, alone, and answered 200', async () => {
		const ids = Array.from({ length: 6 }, () => `evt_dl_${++seq}`);
		ids.splice(2, 0, `evt_deadlock_${++seq}`);
		const { lock, answers } = await batchBehindLock(ids);
		await lock.release();
		const res = await answers();
		assert.deepEqual(res.map((r) => r.status), ids.map(() => 200));
		assert.equal(stored(ids), ids.length);
		assert.equal(cluster.psql("SELECT last_value FROM public.deadlocks"), '2',
			'raised in the batch\'s statement (not tried again in its transaction), then stored by the shim alone');
		assert.match(shim.stderr, /ingest met a concurrent batch, storing it again alone/);
	});

	test('an event applied after the batch\'s statement that deadlocks is stored again alone after the commit', async () => {
		// the refund of a payment the batch creates is applied after the statement that creates it,
		// and its first update of the payment meets a (simulated) deadlock
		const id = `evt_settle_dl_${++seq}`;
		const created = delivery(id);
		const body = JSON.stringify({ id: `${id}_refund`, object: 'event', type: 'charge.refunded',
			created: Math.floor(Date.now() / 1000) + 1,
			data: { object: { id: `ch_${id}`, object: 'charge', payment_intent: `pi_${id}`, amount: 1000,
				amount_refunded: 1000, currency: 'usd' } } });
		const charge = { body, headers: { 'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload: body, secret }) } };
		const post = (d) => request(shim.port, { method: 'POST', path: '/webhooks/stripe', body: d.body,
			headers: { 'content-type': 'application/json', ...d.headers } });
		const lock = await holdEvents();
		const first = send(`evt_settle_lead_${++seq}`);
		await lockWaiters(1);
		const rest = [post(created), post(charge)];
		await waitShimQueued(shim.port, 3);
		await lock.release();
		const res = await Promise.all([first, ...rest]);
		assert.deepEqual(res.map((r) => r.status), [200, 200, 200]);
		assert.deepEqual(res.slice(1).map((r) => r.json.outcome), ['applied', 'applied']);
		assert.ok(Number(cluster.psql("SELECT last_value FROM public.settle_deadlocks")) > 1, 'raised, then passed');
		// the batch took its event out again and answered it with the deadlock; the shim stored it alone
		assert.match(shim.stderr, new RegExp(`ingest met a concurrent batch, storing it again alone`));
		assert.equal(cluster.psqlVars(`SELECT string_agg(state || ' ' || attempts || ' ' || (last_error IS NULL), ',' ORDER BY event_id)
			FROM payments.events WHERE event_id LIKE :'p'`, { p: `${id}%` }), 'applied 1 true,applied 1 true');
		assert.equal(cluster.psqlVars(`SELECT status FROM payments.payments WHERE provider_ref = :'r'`, { r: `pi_${id}` }), 'refunded');
	});

	test('a commit that fails is tried again one delivery at a time: only the delivery it fails for is 503', async () => {
		const failedBefore = await metric('payments_shim_batches_failed_total');
		const ids = Array.from({ length: 10 }, () => `evt_withfail_${++seq}`);
		ids.splice(4, 0, `evt_commitfail_${++seq}`);
		const { lock, answers } = await batchBehindLock(ids);
		await lock.release();
		const res = await answers();
		assert.deepEqual(res.map((r) => r.status), ids.map((id) => (id.startsWith('evt_commitfail_') ? 503 : 200)));
		assert.equal(stored(ids), ids.length - 1, 'all but the one whose commit fails');
		assert.equal(stored(ids.filter((id) => id.startsWith('evt_commitfail_'))), 0);
		assert.equal(await metric('payments_shim_batches_failed_total') - failedBefore, 2,
			'the batch, then the transaction of the delivery whose commit fails, alone');
		// every delivery was tried alone: the batch's failure is a warning, the lone one's an error
		assert.match(shim.stderr, /"level":"warning".*"batch failed".*"sqlstate":"P0001"/);
		assert.doesNotMatch(shim.stderr, /"level":"error".*"batch failed"/);
		assert.match(shim.stderr, /"level":"error".*"query failed".*"sqlstate":"P0001"/);
	});

	test('a batch whose commit deadlocks (a concurrent transaction took its locks the other way) is stored again', async () => {
		// the first goes alone and leads; the five queued behind it go as one batch
		const ids = [`evt_dllead_${++seq}`, ...Array.from({ length: 5 }, () => `evt_commitdl_${++seq}`)];
		const { lock, answers } = await batchBehindLock(ids);
		await lock.release();
		const res = await answers();
		assert.deepEqual(res.map((r) => [r.status, r.json.outcome]), ids.map(() => [200, 'applied']));
		assert.equal(stored(ids), ids.length);
		assert.equal(cluster.psql('SELECT last_value FROM public.commit_deadlocks'), String(1 + 5),
			'the batch\'s commit deadlocked, then each of its five committed alone');
		assert.match(shim.stderr, /"batch failed".*"sqlstate":"40P01"/);
	});

	test('a failed batch past half of --request-timeout is not stored again alone: its requests are 503, never the batch\'s 400', async () => {
		// --request-timeout 6: a batch that took 3 s or more leaves its deliveries to be sent again
		await withBatchShim(['--threads', '16', '--request-timeout', '6'], async (s) => {
			// one batch: a delivery whose commit raises a data exception, a slow one (3.5 s), two more
			const ids = [`evt_commitbad_${++seq}`, `evt_lag_${++seq}`, `evt_quick_${++seq}`, `evt_quick_${++seq}`];
			const res = await orderedBatchBehindLock(s, ids);
			assert.deepEqual(res.map((r) => r.status), [200, 503, 503, 503, 503]);
			assert.equal(stored(ids), 0);
			assert.match(s.stderr, /"batch failed".*"sqlstate":"22023"/);
			assert.match(s.stderr, /"level":"error".*"batch failed".*"4 of its 4 deliveries answered 503, not tried alone: past half of --request-timeout"/);
		});
	});

	test('past statement_timeout, a batch is stored again one delivery at a time, until two of them time out', async () => {
		// a shim whose role has a statement_timeout, as the README advises; an evt_slow_ delivery takes 5 s
		await withBatchShim(['--threads', '16'], async (s) => {
			// one batch, in this order: slow, quick, slow, quick, quick
			const ids = [`evt_slow_${++seq}`, `evt_quick_${++seq}`, `evt_slow_${++seq}`, `evt_quick_${++seq}`, `evt_quick_${++seq}`];
			const res = await orderedBatchBehindLock(s, ids);
			// the batch timed out; alone, the first slow one timed out, the quick one after it was
			// stored, the second slow one timed out: the last two were not tried, 503 like the batch
			assert.deepEqual(res.map((r) => r.status), [200, 503, 200, 503, 503, 503]);
			assert.equal(stored(ids), 1);
			assert.equal(stored([ids[1]]), 1);
			assert.match(s.stderr, /"batch failed".*"sqlstate":"57014"/);
			assert.match(s.stderr, /"level":"error".*"batch failed".*"2 of its 5 deliveries answered 503, not tried alone: two of its deliveries timed out alone"/);
		}, `${cluster.dsn} options='-c statement_timeout=2000'`);
	});

	test('answers that do not match the batch one for one are none of them used: 503, and sent again, duplicates', async () => {
		const ids = Array.from({ length: 6 }, () => `evt_rowcount_${++seq}`);
		const { lock, answers } = await batchBehindLock(ids);
		// payments.ingest_batch as a version that loses its second row
		cluster.psql(`ALTER FUNCTION payments.ingest_batch(text[], jsonb[], bytea[], inet[], text[]) RENAME TO ingest_batch_whole;
			CREATE FUNCTION payments.ingest_batch(p text[], h jsonb[], b bytea[], ip inet[], r text[])
			RETURNS TABLE (http_status integer, outcome text, event_id text, sqlstate text, error text)
			LANGUAGE sql AS $$ SELECT x.http_status, x.outcome, x.event_id, x.sqlstate, x.error
								 FROM payments.ingest_batch_whole(p, h, b, ip, r) WITH ORDINALITY AS x WHERE x.ordinality <> 2 $$`);
		try {
			await lock.release();
			const res = await answers();
			assert.equal(res[0].status, 200, 'the first went alone');
			assert.deepEqual(res.slice(1).map((r) => r.status), ids.slice(1).map(() => 503));
		} finally {
			cluster.psql(`DROP FUNCTION payments.ingest_batch(text[], jsonb[], bytea[], inet[], text[]);
				ALTER FUNCTION payments.ingest_batch_whole(text[], jsonb[], bytea[], inet[], text[]) RENAME TO ingest_batch`);
		}
		assert.equal(stored(ids), ids.length, 'committed all the same');
		assert.match(shim.stderr, /answered a row count other than its deliveries'/);
		const again = await Promise.all(ids.map((id) => send(id)));
		assert.deepEqual(again.map((r) => [r.status, r.json.outcome]), ids.map(() => [200, 'duplicate']));
	});

	test('a batch committed but not known durable is not answered 2xx; sent again, its deliveries are duplicates', async () => {
		const failedBefore = await metric('payments_shim_batches_failed_total');
		const ids = Array.from({ length: 6 }, () => `evt_unflushed_${++seq}`);
		const { lock, answers } = await batchBehindLock(ids);
		// the batch commits (asynchronously), then its call to payments.flush_wal() fails
		cluster.psql('ALTER FUNCTION payments.flush_wal() RENAME TO flush_wal_away');
		try {
			await lock.release();
			const res = await answers();
			// the first went alone: committed synchronously, but its flush, which confirms it on
			// the synchronous standbys, failed too
			assert.deepEqual(res.map((r) => r.status), ids.map(() => 503));
		} finally {
			cluster.psql('ALTER FUNCTION payments.flush_wal_away() RENAME TO flush_wal');
		}
		assert.equal(stored(ids), ids.length, 'committed all the same');
		assert.equal(await metric('payments_shim_batches_failed_total') - failedBefore, 2, 'the lone one and the batch');
		const again = await Promise.all(ids.map((id) => send(id)));
		assert.deepEqual(again.map((r) => [r.status, r.json.outcome]), ids.map(() => [200, 'duplicate']));
		assert.equal(stored(ids), ids.length);
	});

	test('a duplicate is answered only once the event it repeats is durable', async () => {
		// The WAL writer stopped, an event committed asynchronously (as a batch commits) stays
		// unflushed. A lone delivery of it again is a duplicate: its transaction writes nothing, so
		// its commit flushes nothing, and payments.ingest must flush before answering on it.
		const walwriter = Number(cluster.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'"));
		const ingest = "SELECT outcome FROM payments.ingest('stripe', :'h'::jsonb, convert_to(:'b', 'UTF8'));";
		process.kill(walwriter, 'SIGSTOP');
		try {
			// another backend's synchronous commit flushes everything before it: then once more
			let vars, inserted;
			for (let attempt = 0; attempt < 5 && !inserted; attempt++) {
				const d = delivery(`evt_durable_${++seq}`);
				vars = { h: JSON.stringify(d.headers), b: d.body };
				// committed asynchronously, as the shim's batches are
				const out = cluster.psqlVars(`SET synchronous_commit = off;
					SELECT outcome FROM payments.ingest_batch(ARRAY['stripe'], ARRAY[:'h'::jsonb], ARRAY[convert_to(:'b', 'UTF8')],
															  ARRAY[NULL]::inet[], ARRAY[NULL]::text[]);
					SELECT pg_current_wal_insert_lsn();`, vars).split('\n');
				assert.equal(out[0], 'applied');
				if (!flushedTo(out[1])) inserted = out[1];
			}
			assert.ok(inserted, 'an event committed, not yet flushed');
			assert.equal(cluster.psqlVars(ingest, vars), 'duplicate');
			assert.ok(flushedTo(inserted), 'the event the duplicate repeats is flushed');
		} finally {
			process.kill(walwriter, 'SIGCONT');
		}
	});

	test('with synchronous_commit off for its database a lone delivery is still durable when answered', async () => {
		// payments.ingest commits with synchronous_commit on for its own transaction. Read before each
		// delivery, the WAL insert position lies before its commit record: the flush must pass it by
		// the time the answer comes (the WAL writer stopped, an asynchronous commit would not).
		cluster.psql('ALTER DATABASE payments SET synchronous_commit = off');
		const s = new Shim(cluster.dsn, ['--threads', '1', '--rate', '0', '--log-level', 'warning']);
		const walwriter = Number(cluster.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'"));
		let stopped = false;
		try {
			await s.start();
			process.kill(walwriter, 'SIGSTOP');
			stopped = true;
			const flushed = [];
			for (let i = 0; i < 3; i++) {
				const before = cluster.psql('SELECT pg_current_wal_insert_lsn()');
				const d = delivery(`evt_syncoff_${++seq}`);
				const res = await request(s.port, { method: 'POST', path: '/webhooks/stripe', body: d.body,
					headers: { 'content-type': 'application/json', ...d.headers } });
				assert.equal(res.status, 200, res.text);
				flushed.push(cluster.psqlVars("SELECT pg_current_wal_flush_lsn() > :'l'::pg_lsn", { l: before }) === 't');
			}
			assert.deepEqual(flushed, [true, true, true], 'each delivery durable once answered');
		} finally {
			if (stopped) process.kill(walwriter, 'SIGCONT');
			cluster.psql('ALTER DATABASE payments RESET synchronous_commit');
			assert.equal((await s.stop()).code, 0);
		}
		assert.deepEqual(s.sanitizerReports(), []);
	});

	test('payments.flush_wal() waits for a synchronous standby as a commit does, and fails when the wait is cancelled', async () => {
		// psql with a statement timeout; returns whether the flush succeeded, its error and how long it took
		const flushWithin = (ms, synchronousCommit = 'on') => {
			const started = Date.now();
			const r = spawnSync(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', cluster.dir,
				'-p', String(cluster.port), '-U', 'postgres', '-d', 'payments',
				'-c', `SET statement_timeout = '${ms}ms'; SET synchronous_commit = ${synchronousCommit};
					SELECT payments.flush_wal() IS NOT NULL`], { encoding: 'utf8' });
			if (r.status === 0) assert.equal(r.stdout.trim(), 't');
			return { ok: r.status === 0, stderr: r.stderr, ms: Date.now() - started };
		};
		const cancelled = (w) => !w.ok && /the wait for the synchronous standbys was cancelled/.test(w.stderr);
		assert.ok(flushWithin(2000).ok, 'no standby named: no wait');
		cluster.psql("ALTER SYSTEM SET synchronous_standby_names = 'absent_standby'");
		try {
			cluster.psql('SELECT pg_reload_conf()');
			let w;
			for (let i = 0; i < 50 && !cancelled(w = flushWithin(300)); i++) await sleep(100);
			assert.ok(cancelled(w), `waited for the named standby until the statement timeout, then failed: ${w.stderr}`);
			assert.ok(w.ms >= 250, `waited ${w.ms} ms`);
			// also where the session (or the shim's role or database) sets synchronous_commit off: the
			// shim answers a batch after this flush; local leaves the standbys out by choice
			assert.ok(cancelled(flushWithin(300, 'off')), 'waited with synchronous_commit off');
			assert.ok(flushWithin(1000, 'local').ok, 'no wait with synchronous_commit local');

			// through the shim, with a statement timeout on its connections. A delivery stored alone
			// waits at its commit for the standby (the statement timeout ends before the commit);
			// a cancel ends that wait with only a warning, the call answered as if the standby had
			// it: the shim's flush after it confirms, and fails on the timeout. Then a duplicate of
			// it waits in payments.ingest's own flush, until the timeout. Each is answered 503.
			const timed = new Shim(`${cluster.dsn} options='-c statement_timeout=700'`,
				['--threads', '8', '--rate', '0', '--batch-concurrency', '1', '--log-level', 'warning']);
			await timed.start();
			try {
				const post1 = (d) => request(timed.port, { method: 'POST', path: '/webhooks/stripe', body: d.body,
					headers: { 'content-type': 'application/json', ...d.headers } });
				const lone = `evt_standby_${++seq}`;
				const answer = post1(delivery(lone));
				let pid = '';
				for (let i = 0; i < 100 && !pid; i++, await sleep(50)) {
					pid = cluster.psql(`SELECT pid FROM pg_stat_activity
						WHERE application_name = 'payments-shim' AND wait_event = 'SyncRep'`);
				}
				assert.ok(pid, 'the commit waits for the standby');
				cluster.psqlVars("SELECT pg_cancel_backend(:'p')", { p: pid });
				const first = await answer;
				assert.equal(first.status, 503, first.text);
				assert.equal(stored([lone]), 1, 'committed on this server');
				const again = await post1(delivery(lone));
				assert.equal(again.status, 503, again.text);
				cluster.psql('ALTER SYSTEM RESET synchronous_standby_names');
				cluster.psql('SELECT pg_reload_conf()');
				for (let i = 0; i < 50 && !flushWithin(300).ok; i++) await sleep(100);
				const retried = await post1(delivery(lone));
				assert.deepEqual([retried.status, JSON.parse(retried.text).outcome], [200, 'duplicate']);
				assert.equal(stored([lone]), 1);
			} finally {
				await timed.stop();
			}
			assert.deepEqual(timed.sanitizerReports(), []);
		} finally {
			cluster.psql('ALTER SYSTEM RESET synchronous_standby_names');
			cluster.psql('SELECT pg_reload_conf()');
			for (let i = 0; i < 50 && !flushWithin(300).ok; i++) await sleep(100);
		}
		assert.ok(flushWithin(2000).ok, 'no wait once the standby is no longer named');
	});

	test('the shim ingests at READ COMMITTED where its role or database asks for another level', async () => {
		const strict = new Shim(`${cluster.dsn} options='-c default_transaction_isolation=serializable'`,
			['--threads', '2', '--rate', '0', '--log-level', 'warning']);
		await strict.start();
		try {
			const ids = [1, 2, 3].map(() => `evt_isolation_${++seq}`);
			const answers = await Promise.all(ids.map((id) => {
				const d = delivery(id);
				return request(strict.port, { method: 'POST', path: '/webhooks/stripe', body: d.body,
					headers: { 'content-type': 'application/json', ...d.headers } });
			}));
			assert.deepEqual(answers.map((a) => a.status), [200, 200, 200], answers.map((a) => a.text).join(' '));
			assert.equal(stored(ids), 3);
		} finally {
			await strict.stop();
		}
		assert.deepEqual(strict.sanitizerReports(), []);
	});

	test("a provider's unusable settings (55000) are answered 503 without dropping the connection", async () => {
		cluster.psqlVars(`SELECT payments.register_provider('stripe-misset', 'stripe'); SELECT payments.add_secret('stripe-misset', :'s');
			UPDATE payments.providers SET settings = '{"tolerance": 1.5}' WHERE name = 'stripe-misset'`, { s: secret });
		const pids = () => cluster.psql(`SELECT string_agg(pid::text, ' ' ORDER BY pid) FROM pg_stat_activity
			WHERE application_name = 'payments-shim'`);
		const before = { pids: pids(), unavailable: await metric('payments_shim_rejections_total{reason="database_unavailable"}'),
			error: await metric('payments_shim_rejections_total{reason="database_error"}') };
		for (const id of [`evt_misset_${++seq}`, `evt_misset_${++seq}`]) {
			const d = delivery(id);
			const res = await request(shim.port, { method: 'POST', path: '/webhooks/stripe-misset', body: d.body,
				headers: { 'content-type': 'application/json', ...d.headers } });
			assert.equal(res.status, 503, res.text);
			assert.equal(JSON.parse(res.text).error, 'database error');
			assert.equal(stored([id]), 0);
		}
		assert.equal(pids(), before.pids, 'the same connections');
		assert.equal(await metric('payments_shim_rejections_total{reason="database_unavailable"}'), before.unavailable);
		assert.equal(await metric('payments_shim_rejections_total{reason="database_error"}') - before.error, 2);
		assert.equal(await metric('payments_shim_db_connections{state="broken"}'), 0);
	});

	test('a batch on a read-only server is answered 503 and its connection made again', async () => {
		const s = new Shim(cluster.dsn, ['--threads', '8', '--rate', '0', '--batch-concurrency', '1', '--log-level', 'warning']);
		await s.start();
		const post1 = (provider, d) => request(s.port, { method: 'POST', path: `/webhooks/${provider}`, body: d.body,
			headers: { 'content-type': 'application/json', ...d.headers } });
		// the batch thread waits behind a lock (a delivery for a provider nobody registered reads
		// payments.providers), while the server turns read-only and three deliveries queue
		const proc = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', cluster.dir,
			'-p', String(cluster.port), '-U', 'postgres', '-d', 'payments'], { stdio: ['pipe', 'pipe', 'pipe'] });
		proc.stdin.write("BEGIN; LOCK TABLE payments.providers IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n");
		await new Promise((resolve) => proc.stdout.on('data', (d) => { if (String(d).includes('locked')) resolve(); }));
		const lone = post1('nobody-registered', delivery(`evt_ro_${++seq}`));
		const [pid] = await lockWaiters(1);
		try {
			cluster.psql('ALTER SYSTEM SET default_transaction_read_only = on');
			await cluster.reload();
			const ids = [1, 2, 3].map(() => `evt_ro_${++seq}`);
			const three = ids.map((id) => post1('stripe', delivery(id)));
			await waitShimQueued(s.port, 4);		// queued behind the lone one: one batch
			await new Promise((resolve) => { proc.once('exit', resolve); proc.stdin.end('COMMIT;\n'); });
			assert.equal((await lone).status, 404);
			const answers = await Promise.all(three);
			assert.deepEqual(answers.map((a) => a.status), [503, 503, 503], answers.map((a) => a.text).join(' '));
			assert.ok(answers.every((a) => Number(a.headers['retry-after']) > 0), 'Retry-After');
			const { samples } = parseMetrics(await (await fetch(`${s.base}/metrics`)).text());
			assert.ok(samples.get('payments_shim_batch_deliveries_bucket{le="1"}') < samples.get('payments_shim_batch_deliveries_count'),
				'the three went as one batch');
			// the batch's connection was dropped: the next one is made to a writable server (its
			// backend ends once it reads the shim's goodbye, maybe a moment after the answers)
			await waitFor(() => cluster.psqlVars("SELECT count(*) FROM pg_stat_activity WHERE pid = :'p'", { p: pid }) === '0',
				5000, 'the read-only batch connection closed');
			cluster.psql('ALTER SYSTEM RESET default_transaction_read_only');
			await cluster.reload();
			const after = await post1('stripe', delivery(`evt_ro_${++seq}`));
			assert.equal(after.status, 200, after.text);
		} finally {
			proc.kill();
			cluster.psql('ALTER SYSTEM RESET default_transaction_read_only');
			cluster.psql('SELECT pg_reload_conf()');
			await s.stop();
		}
		assert.deepEqual(s.sanitizerReports(), []);
	});

	test('at the shutdown deadline the running batch is cancelled and the queued deliveries answered 503', async () => {
		const s = new Shim(cluster.dsn, ['--threads', '8', '--rate', '0', '--batch-concurrency', '1',
			'--shutdown-timeout', '1', '--log-level', 'warning']);
		await s.start();
		const ids = Array.from({ length: 6 }, () => `evt_shutdown_${++seq}`);
		const lock = await holdEvents();
		const post1 = (id) => {
			const d = delivery(id);
			return request(s.port, { method: 'POST', path: '/webhooks/stripe', body: d.body,
				headers: { 'content-type': 'application/json', ...d.headers } }).catch(() => ({ status: 'closed' }));
		};
		try {
			const first = post1(ids[0]);
			await lockWaiters(1);
			const rest = ids.slice(1).map(post1);
			await waitShimQueued(s.port, ids.length);
			const sent = Date.now();
			const exit = await s.stop();	// the lock is still held: only the deadline ends the wait
			assert.equal(exit.code, 0);
			// --shutdown-timeout 1: without the deadline it would wait for the lock (until stop() gives
			// up at 30 s); 10 s leaves a loaded machine room (the sanitizer's exit checks) far from that
			assert.ok(Date.now() - sent < 10000, `stopped after ${Date.now() - sent} ms`);
			const res = await Promise.all([first, ...rest]);
			assert.deepEqual(res.map((r) => r.status === 200), ids.map(() => false), 'never 2xx');
			assert.deepEqual(res.slice(1).map((r) => r.status), ids.slice(1).map(() => 503), 'the queued ones answered 503');
			assert.deepEqual(s.sanitizerReports(), []);
		} finally {
			s.kill();	// stopped above unless a check failed first
			await lock.release();
		}
		assert.equal(stored(ids), 0);
	});

	test('a batch whose backend is terminated answers 503 for all, and the shim goes on', async () => {
		const ids = Array.from({ length: 12 }, () => `evt_killed_${++seq}`);
		const { lock, answers } = await batchBehindLock(ids);
		const [lonePid] = await lockWaiters(1);
		cluster.psql(`SELECT pg_terminate_backend(${lonePid})`);
		// the queued eleven now go as one batch, on a new connection, and wait in turn
		const [batchPid] = await lockWaiters(1, [lonePid]);
		cluster.psql(`SELECT pg_terminate_backend(${batchPid})`);
		await lock.release();
		const res = await answers();
		assert.deepEqual(res.map((r) => r.status), ids.map(() => 503));
		assert.equal(stored(ids), 0);
		// afterwards the same deliveries go through
		const again = await Promise.all(ids.map((id) => send(id)));
		assert.deepEqual(again.map((r) => r.status), ids.map(() => 200));
		assert.equal(stored(ids), ids.length);
	});
});
