// Payments under concurrency, through the real shim: out-of-order deliveries by 16 clients end in
// the states in-order delivery gives, and 1,000 payments paid at once get gapless receipts.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Stripe from 'stripe';
import { Cluster, Shim, post } from './harness.mjs';
import { random, lives, stripeEvent } from './stripe_lives.mjs';

const stripe = new Stripe('sk_test_not_used_offline');
const secret = 'whsec_e2e_payments';

let cluster;
let shim;

async function deliver(provider, payload) {
	const header = stripe.webhooks.generateTestHeaderString({ payload, secret });
	const res = await post(shim.base, provider, payload, { 'stripe-signature': header });
	assert.equal(res.status, 200, res.text);
	return res.json.outcome;
}

// Runs the deliveries with `clients` concurrent senders.
async function deliverConcurrently(provider, payloads, clients) {
	let next = 0;
	const outcomes = [];
	await Promise.all(Array.from({ length: clients }, async () => {
		while (next < payloads.length) {
			const payload = payloads[next++];
			outcomes.push(await deliver(provider, payload));
		}
	}));
	return outcomes;
}

function finalStates(provider) {
	return cluster.psqlVars(`SELECT string_agg(provider_ref || '=' || status || '/' || amount_refunded || '/' ||
		(receipt_no IS NOT NULL), ' ' ORDER BY provider_ref) FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE provider = :'p'`, { p: provider });
}

describe('payments under concurrency', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`
			SELECT payments.register_provider('inorder', 'stripe', '{"receipt_prefix": "IO"}');
			SELECT payments.add_secret('inorder', :'s');
			SELECT payments.register_provider('shuffled', 'stripe', '{"receipt_prefix": "SH"}');
			SELECT payments.add_secret('shuffled', :'s');
			SELECT payments.register_provider('receipts', 'stripe', '{"receipt_prefix": "RC"}');
			SELECT payments.add_secret('receipts', :'s');`, { s: secret });
		shim = new Shim(cluster.dsn, ['--threads', '8']);
		await shim.start();
	});

	after(async () => {
		const exit = shim ? await shim.stop() : { code: 0 };
		cluster?.destroy();
		assert.deepEqual(shim?.sanitizerReports() ?? [], []);
		assert.equal(exit.code, 0);
	});

	test('out-of-order deliveries by 16 clients end in the states in-order delivery gives', async () => {
		const rnd = random(20261122);
		const events = [];
		for (let p = 0; p < 80; p++) {
			const life = lives[Math.floor(rnd() * lives.length)];
			life.forEach((kind, step) => {
				const created = 1718000000 + p * 100 + step * 10;
				events.push({ kind, pi: `pi_ooo_${p}`, created, id: `evt_ooo_${p}_${step}` });
			});
		}
		const payloads = events.map((e) => stripeEvent(e.id, e.kind, e.pi, e.created));
		for (const payload of payloads) await deliver('inorder', payload);

		// the same events shuffled, with a fifth delivered twice, by 16 concurrent clients
		const shuffled = [...payloads, ...payloads.filter(() => rnd() < 0.2)];
		for (let i = shuffled.length - 1; i > 0; i--) {
			const j = Math.floor(rnd() * (i + 1));
			[shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
		}
		const outcomes = await deliverConcurrently('shuffled', shuffled, 16);
		assert.ok(shuffled.length >= 200, `${shuffled.length} deliveries`);
		assert.ok(outcomes.includes('duplicate'));

		// events that came before their payment were stored; retrying them applies them
		for (let round = 0; round < 5; round++) {
			cluster.psql("SELECT payments.apply_event(id) FROM payments.events WHERE provider = 'shuffled' AND state = 'pending' ORDER BY id");
		}
		assert.equal(cluster.psql("SELECT count(*) FROM payments.events WHERE state = 'pending'"), '0');
		assert.equal(cluster.psql("SELECT count(*) FROM payments.events WHERE provider = 'shuffled'"), String(payloads.length));
		assert.equal(finalStates('shuffled'), finalStates('inorder'));
		// both sides issued receipts to the same payments, gapless per prefix
		for (const prefix of ['IO', 'SH']) {
			const numbers = cluster.psqlVars(`SELECT string_agg(right(receipt_no, 6), ',' ORDER BY receipt_no)
				FROM payments.receipts WHERE receipt_no LIKE :'p'`, { p: `${prefix}-%` }).split(',');
			assert.deepEqual(numbers, numbers.map((_, i) => String(i + 1).padStart(6, '0')));
		}
	});

	test('1,000 payments paid by 16 concurrent clients get receipts 000001 to 001000, no gaps, no repeats', async () => {
		const created = 1718100000;	// one day in UTC
		const payloads = Array.from({ length: 1000 }, (_, i) => stripeEvent(`evt_rc_${i}`, 'payment_intent.succeeded', `pi_rc_${i}`, created));
		const outcomes = await deliverConcurrently('receipts', payloads, 16);
		assert.equal(outcomes.filter((o) => o === 'applied').length, 1000);
		// late and duplicate events for paid payments keep their first number
		await deliverConcurrently('receipts', payloads.slice(0, 50), 16);
		await deliverConcurrently('receipts', payloads.slice(0, 50).map((p, i) =>
			stripeEvent(`evt_rc_late_${i}`, 'payment_intent.succeeded', `pi_rc_${i}`, created + 5)), 16);
		const summary = cluster.psql(`SELECT count(*), count(DISTINCT receipt_no), min(receipt_no), max(receipt_no)
			FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE provider = 'receipts'`);
		assert.equal(summary, '1000|1000|RC-20240611-000001|RC-20240611-001000');
		assert.equal(cluster.psql("SELECT last_no FROM payments.receipt_counters WHERE prefix = 'RC'"), '1000');
	});
});
