// Lock order of group commit (payments.ingest_batch), with several sessions at once: two batches
// over the same events or payments take their locks in one order, so that one waits for the other
// instead of deadlocking; a deadlock that still happens (with a lock its transaction took in an
// earlier call) is not tried again in the same transaction, where it would deadlock again, but
// answered with its error for the caller to store the delivery again after the commit.  And a
// transaction that pays payments of two receipt prefixes takes their counters in (prefix, day)
// order at its commit, whatever the order of its transitions.  Each
// session is a psql process; deadlock_timeout is 200 ms for the database, and log_lock_waits logs
// every deadlock detected, so that the test counts them.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, sleep, readFileSync } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const stripe = new Stripe('sk_test_not_used_offline');
const secret = `whsec_${randomBytes(24).toString('hex')}`;
let cluster;
let seq = 0;
const sessions = new Set();

// A psql session of its own (application_name name): run(sql) resolves with its output lines
// once the statements have run; an error does not end the session.
class Session {
	constructor(name) {
		this.name = name;
		this.out = '';
		this.marks = 0;
		this.proc = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-h', cluster.dir, '-p', String(cluster.port),
			'-U', 'postgres', '-d', 'payments'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PGAPPNAME: name } });
		this.proc.stdout.on('data', (d) => { this.out += d; });
		this.proc.stderr.on('data', () => {});
		sessions.add(this);
	}

	run(sql) {
		const mark = `@@${this.name}-${++this.marks}@@`;
		const start = this.out.length;
		this.proc.stdin.write(`${sql};\n\\echo ${mark}\n`);
		return new Promise((resolve) => {
			const poll = () => {
				const at = this.out.indexOf(mark, start);
				if (at < 0 && this.proc.exitCode === null && this.proc.signalCode === null) return void setTimeout(poll, 10);
				if (at < 0) return void resolve([]);	// the session ended (killed after a failure)
				resolve(this.out.slice(start, at).split('\n').filter((l) => l !== ''));
			};
			poll();
		});
	}

	close() {
		sessions.delete(this);
		return new Promise((resolve) => { this.proc.once('exit', resolve); this.proc.stdin.end('\\q\n'); });
	}
}

// A signed Stripe delivery of event id, of type, about payment intent pi (to provider)
function delivery(id, type, pi, provider = 'stripe') {
	const body = JSON.stringify({ id, object: 'event', type, created: Math.floor(Date.now() / 1000),
		data: { object: { id: pi, object: 'payment_intent', amount: 1000, currency: 'usd' } } });
	return { provider, body, signature: stripe.webhooks.generateTestHeaderString({ payload: body, secret }) };
}

// A signed charge.refunded delivery: refunded (of 1000) given back so far of payment intent pi.
// A refund creates no payment: it is settled alone, after the batch's statement, when its payment
// exists, locking the payment's row.
function refund(id, pi, refunded) {
	const body = JSON.stringify({ id, object: 'event', type: 'charge.refunded', created: Math.floor(Date.now() / 1000),
		data: { object: { id: `ch_${pi}`, object: 'charge', payment_intent: pi, amount: 1000, amount_refunded: refunded,
			currency: 'usd' } } });
	return { provider: 'stripe', body, signature: stripe.webhooks.generateTestHeaderString({ payload: body, secret }) };
}

// SQL calling payments.ingest_batch with deliveries; a row per delivery: status|outcome, or the sqlstate
function batchSql(deliveries) {
	const q = (s) => `$q$${s}$q$`;
	return `SELECT concat_ws('|', http_status, outcome, sqlstate) FROM payments.ingest_batch(
		ARRAY[${deliveries.map((d) => q(d.provider)).join(',')}]::text[],
		ARRAY[${deliveries.map((d) => `jsonb_build_object('stripe-signature', ${q(d.signature)})`).join(',')}]::jsonb[],
		ARRAY[${deliveries.map((d) => `convert_to(${q(d.body)}, 'UTF8')`).join(',')}]::bytea[],
		ARRAY[${deliveries.map(() => 'NULL').join(',')}]::inet[],
		ARRAY[${deliveries.map((d) => q(`req-${JSON.parse(d.body).id}`)).join(',')}]::text[])`;
}

// Paid payments, committed, one for each ref
async function paidPayments(refs) {
	const s = new Session('setup');
	const rows = await s.run(batchSql(refs.map((r) => delivery(`evt_new_${r}`, 'payment_intent.succeeded', r))));
	await s.close();
	assert.deepEqual(rows, refs.map(() => '200|applied'));
}

// Waits until session name waits for a lock, then for longer than deadline_timeout, so that its
// deadlock check has run (and found none) before the other session closes the cycle
async function waitsForLock(name) {
	for (let i = 0; i < 400; i++) {
		if (cluster.psqlVars(`SELECT count(*) FROM pg_stat_activity WHERE application_name = :'n' AND wait_event_type = 'Lock'`,
			{ n: name }) === '1') {
			await sleep(500);
			return;
		}
		await sleep(25);
	}
	throw new Error(`${name} never waited for a lock`);
}

// The server log from offset on, and the deadlocks it reports detected (log_lock_waits)
const serverLog = () => readFileSync(join(cluster.dir, 'log'), 'utf8');
const deadlocksSince = (offset) => (serverLog().slice(offset).match(/detected deadlock while waiting/g) ?? []).length;

function eventStates(ids) {
	return cluster.psqlVars(`SELECT coalesce(string_agg(event_id || ' ' || state, ',' ORDER BY event_id), '')
		FROM payments.events WHERE event_id = ANY(string_to_array(:'ids', ','))`, { ids: ids.join(',') });
}

describe('lock order of group commit', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'s');
			-- receipts LP-… (the default prefix) and DON-…
			SELECT payments.register_provider('s1', 'stripe');
			SELECT payments.add_secret('s1', :'s');
			SELECT payments.register_provider('s2', 'stripe', '{"receipt_prefix": "DON"}');
			SELECT payments.add_secret('s2', :'s');
			ALTER DATABASE payments SET deadlock_timeout = '200ms';
			ALTER DATABASE payments SET log_lock_waits = on;`, { s: secret });
	});

	after(async () => {
		for (const s of sessions) s.proc.kill();
		cluster?.destroy();
	});

	test('events settled alone lock their payments in one order: no deadlock', async () => {
		// the reviewer's case: A holds pi_3, B is given [pi_4, pi_3], then A touches pi_4
		const n = ++seq;
		const [p3, p4] = [`pi_order3_${n}`, `pi_order4_${n}`];
		await paidPayments([p3, p4]);
		const offset = serverLog().length;
		const a = new Session(`a${n}`);
		const b = new Session(`b${n}`);
		assert.deepEqual(await a.run(`BEGIN; ${batchSql([refund(`evt_a3_${n}`, p3, 100)])}`),
			['200|applied']);
		const bAnswers = b.run(batchSql([refund(`evt_b4_${n}`, p4, 200),
			refund(`evt_b3_${n}`, p3, 200)]));
		await waitsForLock(`b${n}`);
		// B waits for pi_3 without holding pi_4: A takes it at once
		assert.deepEqual(await a.run(batchSql([refund(`evt_a4_${n}`, p4, 100)])), ['200|applied']);
		await a.run('COMMIT');
		const bRows = await bAnswers;
		assert.equal(bRows.length, 2);
		for (const row of bRows) assert.match(row, /^200\|(applied|ignored)$/);
		await Promise.all([a.close(), b.close()]);
		assert.equal(deadlocksSince(offset), 0);
		assert.doesNotMatch(eventStates([`evt_a3_${n}`, `evt_a4_${n}`, `evt_b3_${n}`, `evt_b4_${n}`]), /pending/);
	});

	test('a batch\'s new events are stored in one order: no deadlock', async () => {
		// B is given [y, x] while A holds x, then A stores y
		const n = ++seq;
		const [x, y] = [`evt_x_${n}`, `evt_y_${n}`];
		const offset = serverLog().length;
		const a = new Session(`a${n}`);
		const b = new Session(`b${n}`);
		assert.deepEqual(await a.run(`BEGIN; ${batchSql([delivery(x, 'payment_intent.succeeded', `pi_${x}`)])}`),
			['200|applied']);
		const bAnswers = b.run(batchSql([delivery(y, 'payment_intent.succeeded', `pi_${y}`),
			delivery(x, 'payment_intent.succeeded', `pi_${x}`)]));
		await waitsForLock(`b${n}`);
		// B waits for x without holding y: A stores it at once
		assert.deepEqual(await a.run(batchSql([delivery(y, 'payment_intent.succeeded', `pi_${y}`)])), ['200|applied']);
		await a.run('COMMIT');
		assert.deepEqual(await bAnswers, ['200|duplicate', '200|duplicate']);
		await Promise.all([a.close(), b.close()]);
		assert.equal(deadlocksSince(offset), 0);
		assert.equal(eventStates([x, y]), `${x} applied,${y} applied`);
	});

	test('a deadlock settling an event alone is not tried again in the transaction: answered with its error', async () => {
		// A holds pi_6; B is given [pi_5, pi_6] (takes pi_5, waits for pi_6); A then touches pi_5
		const n = ++seq;
		const [p5, p6] = [`pi_dl5_${n}`, `pi_dl6_${n}`];
		await paidPayments([p5, p6]);
		const offset = serverLog().length;
		const a = new Session(`a${n}`);
		const b = new Session(`b${n}`);
		assert.deepEqual(await a.run(`BEGIN; ${batchSql([refund(`evt_a6_${n}`, p6, 100)])}`),
			['200|applied']);
		const bAnswers = b.run(batchSql([refund(`evt_b5_${n}`, p5, 200),
			refund(`evt_b6_${n}`, p6, 200)]));
		await waitsForLock(`b${n}`);
		const retried = refund(`evt_a5_${n}`, p5, 300);
		const started = Date.now();
		// detected once (200 ms), not met again by a second try in the same transaction; a second
		// delivery of the same event in the batch is answered with the error too (not a duplicate)
		assert.deepEqual(await a.run(batchSql([retried, retried])), ['40P01', '40P01']);
		assert.ok(Date.now() - started < 2000);
		await a.run('COMMIT');
		const bRows = await bAnswers;
		for (const row of bRows) assert.match(row, /^200\|(applied|ignored)$/);
		assert.equal(deadlocksSince(offset), 1);
		// its event was taken out again: stored after the commit (as the shim does, alone), it is applied
		assert.equal(eventStates([`evt_a5_${n}`]), '');
		assert.match((await a.run(batchSql([retried])))[0], /^200\|(applied|ignored)$/);
		await Promise.all([a.close(), b.close()]);
		assert.doesNotMatch(eventStates([`evt_a5_${n}`, `evt_a6_${n}`, `evt_b5_${n}`, `evt_b6_${n}`]), /pending/);
	});

	test('a deadlock of the batch\'s statement is not tried again one by one: its deliveries get the error', async () => {
		// A holds y; B is given [x, y] (stores x, waits for y); A then stores [z, x]
		const n = ++seq;
		const [x, y, z] = [`evt_sx_${n}`, `evt_sy_${n}`, `evt_sz_${n}`];
		const offset = serverLog().length;
		const a = new Session(`a${n}`);
		const b = new Session(`b${n}`);
		assert.deepEqual(await a.run(`BEGIN; ${batchSql([delivery(y, 'payment_intent.succeeded', `pi_${y}`)])}`),
			['200|applied']);
		const bAnswers = b.run(batchSql([delivery(x, 'payment_intent.succeeded', `pi_${x}`),
			delivery(y, 'payment_intent.succeeded', `pi_${y}`)]));
		await waitsForLock(`b${n}`);
		const started = Date.now();
		assert.deepEqual(await a.run(batchSql([delivery(z, 'payment_intent.succeeded', `pi_${z}`),
			delivery(x, 'payment_intent.succeeded', `pi_${x}`)])), ['40P01', '40P01']);
		assert.ok(Date.now() - started < 2000);
		await a.run('COMMIT');
		assert.deepEqual(await bAnswers, ['200|applied', '200|duplicate']);
		await Promise.all([a.close(), b.close()]);
		assert.equal(deadlocksSince(offset), 1);
		assert.equal(eventStates([x, y, z]), `${x} applied,${y} applied`);
	});

	test('a transaction takes its receipt counters in (prefix, day) order at the commit: no deadlock', async () => {
		// A pays DON (a new payment, by the batch's statement) then LP (an existing one, settled
		// alone); B pays LP then DON.  A third session holds the DON counter, so that both come to
		// the counters at once.
		const n = ++seq;
		const succeeded = (provider, pi) => delivery(`evt_${pi}`, 'payment_intent.succeeded', pi, provider);
		const setup = new Session(`setup${n}`);
		assert.deepEqual(await setup.run(batchSql([succeeded('s2', `pi_don0_${n}`),
			delivery(`evt_pl1_new_${n}`, 'payment_intent.processing', `pi_pl1_${n}`, 's1'),
			delivery(`evt_pd2_new_${n}`, 'payment_intent.processing', `pi_pd2_${n}`, 's2')])),
		['200|applied', '200|applied', '200|applied']);
		await setup.close();
		const offset = serverLog().length;
		const holder = new Session(`holder${n}`);
		const a = new Session(`a${n}`);
		const b = new Session(`b${n}`);
		await holder.run(`BEGIN; SELECT FROM payments.receipt_counters WHERE prefix = 'DON' AND day = payments.receipt_day(now()) FOR UPDATE`);
		const aAnswers = a.run(batchSql([succeeded('s2', `pi_pd1_${n}`), succeeded('s1', `pi_pl1_${n}`)]));
		await waitsForLock(`a${n}`);
		const bAnswers = b.run(batchSql([succeeded('s1', `pi_pl2_${n}`), succeeded('s2', `pi_pd2_${n}`)]));
		await waitsForLock(`b${n}`);
		await holder.run('COMMIT');
		assert.deepEqual(await aAnswers, ['200|applied', '200|applied']);
		assert.deepEqual(await bAnswers, ['200|applied', '200|applied']);
		await Promise.all([holder.close(), a.close(), b.close()]);
		assert.equal(deadlocksSince(offset), 0);
		// both committed: every payment numbered, gapless per prefix
		assert.equal(cluster.psqlVars(`SELECT string_agg(p.provider_ref || ' ' || split_part(r.receipt_no, '-', 1), ',' ORDER BY p.provider_ref)
			FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id
			WHERE p.provider_ref = ANY(string_to_array(:'refs', ','))`,
		{ refs: [`pi_pd1_${n}`, `pi_pd2_${n}`, `pi_pl1_${n}`, `pi_pl2_${n}`].join(',') }),
		`pi_pd1_${n} DON,pi_pd2_${n} DON,pi_pl1_${n} LP,pi_pl2_${n} LP`);
		assert.equal(cluster.psql(`SELECT string_agg(c.prefix || ' ' || c.last_no || ' ' || (SELECT count(*) FROM payments.receipts r
				WHERE split_part(r.receipt_no, '-', 1) = c.prefix), ',' ORDER BY c.prefix)
			FROM payments.receipt_counters c WHERE c.prefix = 'DON'`), 'DON 3 3');
		assert.equal(cluster.psql(`SELECT count(*) FROM payments.receipt_counters c
			WHERE c.last_no <> (SELECT count(*) FROM payments.receipts r WHERE r.receipt_no LIKE c.prefix || '-%')`), '0');
	});
});
