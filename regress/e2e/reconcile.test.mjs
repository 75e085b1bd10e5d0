// Reconciliation end to end: payments stuck in pending are checked against local stand-ins for
// the Paynow poll URL, the Stripe, PayPal (OAuth) and Eversend (token) APIs; answers move them
// through the state machine; hash failures, 4xx/5xx and timeouts are recorded and change nothing;
// API tokens are cached.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, holdLock, sleep, waitFor } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const PAYNOW_KEY = '3E9FED89-60E1-4CE5-AB6E-6B1EB2D4F977';
const STRIPE_SECRET = 'whsec_e2e_reconcile';
const stripeSdk = new Stripe('sk_test_not_used_offline');
// Stripe Connect: the stand-in's intents of a connected account, found only when asked as it
const CONNECTED = { pi_conn1: 'acct_1Conn' };
// a PayPal time some minutes before now, as its API writes it
const minutesAgo = (m) => new Date(Date.now() - m * 60000).toISOString().replace(/\.\d{3}Z$/, 'Z');
let db;
let api;

// Paynow's hash: SHA-512 of the values in order and the lower-cased key, upper-case hex
function paynowReply(fields, key = PAYNOW_KEY) {
	const hash = createHash('sha512').update(Object.values(fields).join('') + key.toLowerCase())
		.digest('hex').toUpperCase();
	return new URLSearchParams({ ...fields, hash }).toString();
}

// The stand-in: one server for every provider, routes by path; counts token requests
async function startApi() {
	const a = { tokens: { paypal: 0, eversend: 0 }, seen: [], sockets: new Set() };
	const json = (res, status, obj) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(obj));
	a.server = createServer((req, res) => {
		let body = '';
		req.on('data', (d) => { body += d; });
		req.on('end', () => {
			const u = req.url;
			a.seen.push(`${req.method} ${u}`);
			if (req.method === 'POST' && u === '/paynow/poll/good') {
				return res.writeHead(200).end(paynowReply({ reference: 'R1', paynowreference: 'PN1', amount: '5.00',
					status: 'Paid', pollurl: `${a.base}/paynow/poll/good` }));
			}
			if (req.method === 'POST' && u === '/paynow/poll/other') {	// a pollurl answering for another transaction
				return res.writeHead(200).end(paynowReply({ reference: 'SOMEONE-ELSE', paynowreference: 'PN3', amount: '999.00',
					status: 'Paid' }));
			}
			if (req.method === 'POST' && u === '/paynow/poll/otherpn') {
				return res.writeHead(200).end(paynowReply({ reference: 'R4', paynowreference: 'PN999', amount: '5.00',
					status: 'Paid' }));
			}
			if (req.method === 'POST' && u === '/paynow/poll/more') {	// paid, for another amount than asked
				return res.writeHead(200).end(paynowReply({ reference: 'R5', paynowreference: 'PN5', amount: '0.01',
					status: 'Paid' }));
			}
			if (req.method === 'POST' && u === '/paynow/poll/bad') {
				return res.writeHead(200).end(paynowReply({ reference: 'R2', paynowreference: 'PN2', amount: '5.00',
					status: 'Paid' }, '00000000-0000-0000-0000-000000000000'));
			}
			if (req.method === 'GET' && u.startsWith('/stripe/v1/payment_intents/')) {
				if (req.headers.authorization !== 'Bearer sk_test_recon') return json(res, 401, { error: { type: 'auth' } });
				const id = u.split('/').pop();
				// as Stripe does: an object of another account than the one asked as is not found
				if (req.headers['stripe-account'] !== CONNECTED[id]) {
					return json(res, 404, { error: { message: `No such payment_intent: '${id}'` } });
				}
				if (id === 'pi_500') return json(res, 500, { error: { message: 'boom' } });
				if (id === 'pi_404') return json(res, 404, { error: { message: 'No such payment_intent' } });
				if (id === 'pi_slow' || id.startsWith('pi_hang')) return;	// never answers: the request times out
				if (id === 'pi_lockc') {	// answers after 3 s: meanwhile its payment is locked
					return setTimeout(() => json(res, 200, { id, object: 'payment_intent', amount: 2500,
						amount_received: 2500, currency: 'usd', status: 'succeeded' }), 3000);
				}
				if (id === 'pi_late') {	// answers after 1.5 s, past a statement_timeout of 1 s
					return setTimeout(() => json(res, 200, { id, object: 'payment_intent', amount: 2500,
						amount_received: 2500, currency: 'usd', status: 'succeeded' }), 1500);
				}
				if (id.startsWith('pi_race')) {	// still being processed: the payment stays pending
					return json(res, 200, { id, object: 'payment_intent', amount: 2500, currency: 'usd', status: 'processing' });
				}
				return json(res, 200, { id, object: 'payment_intent', amount: 2500, amount_received: 2500,
					currency: 'usd', status: id === 'pi_fail' ? 'canceled' : 'succeeded', client_secret: 'pi_secret_x' });
			}
			if (req.method === 'POST' && u === '/paypal/v1/oauth2/token') {
				a.tokens.paypal++;
				const ok = req.headers.authorization === `Basic ${Buffer.from('ppid:ppsecret').toString('base64')}`
					&& body === 'grant_type=client_credentials';
				return ok ? json(res, 200, { access_token: 'PPTOKEN', token_type: 'Bearer', expires_in: 32400 })
					: json(res, 401, { error: 'invalid_client' });
			}
			if (req.method === 'GET' && u.startsWith('/paypal/v2/payments/captures/')) {
				if (req.headers.authorization !== 'Bearer PPTOKEN') return json(res, 401, { error: 'invalid_token' });
				const id = u.split('/').pop();
				return json(res, 200, { id, status: id === 'CAPR' ? 'REFUNDED' : 'COMPLETED', amount: { currency_code: 'USD', value: '30.00' },
					supplementary_data: { related_ids: { order_id: `ORDER-${id}` } } });
			}
			if (req.method === 'GET' && u.startsWith('/paypal/v2/checkout/orders/')) {
				if (req.headers.authorization !== 'Bearer PPTOKEN') return json(res, 401, { error: 'invalid_token' });
				const id = u.split('/').pop();
				const fee = (value) => ({ paypal_fee: { currency_code: 'USD', value } });
				const capture = (cid, st, value, time, f) => ({ id: cid, status: st, amount: { currency_code: 'USD', value },
					update_time: time, ...(f ? { seller_receivable_breakdown: fee(f) } : {}) });
				const captures = {
					'ORDER-PAID': [{ id: 'CAP-LOST', status: 'COMPLETED', amount: { currency_code: 'USD', value: '5.00' },
						seller_receivable_breakdown: fee('0.47') }],
					// a card declined, then another paying in two captures (listed newest first)
					'ORDER-TWO': [capture('CAP-T3', 'COMPLETED', '2.00', minutesAgo(10), '0.30'),
						capture('CAP-T1', 'DECLINED', '5.00', minutesAgo(30)),
						capture('CAP-T2', 'COMPLETED', '3.00', minutesAgo(20), '0.40')],
					// two captures, one of them refunded since
					'ORDER-HALF': [capture('CAP-H1', 'COMPLETED', '3.00', minutesAgo(20)),
						capture('CAP-H2', 'REFUNDED', '2.00', minutesAgo(15))],
					'ORDER-DECLINED': [capture('CAP-D1', 'DECLINED', '5.00', minutesAgo(20))],
					// paid 40 minutes ago, refunded 5 minutes ago (its update_time)
					'ORDER-LATEREF': [{ ...capture('CAP-L1', 'REFUNDED', '5.00', minutesAgo(5)), create_time: minutesAgo(40) }],
				}[id] ?? [];
				// ORDER-PAID was paid by card through PayPal's checkout: its payment_source says so
				return json(res, 200, { id, status: { 'ORDER-PAID': 'COMPLETED', 'ORDER-VOID': 'VOIDED' }[id] ?? 'APPROVED',
					...(id === 'ORDER-PAID' ? { payment_source: { card: { brand: 'VISA', last_digits: '1111' } } } : {}),
					purchase_units: [{ amount: { currency_code: 'USD', value: '5.00' }, payments: { captures } }] });
			}
			if (req.method === 'GET' && u === '/eversend/v1/auth/token') {
				a.tokens.eversend++;
				const ok = req.headers.clientid === 'evid' && req.headers.clientsecret === 'evsecret';
				return ok ? json(res, 200, { status: 200, token: 'EVTOKEN' }) : json(res, 401, { message: 'bad client' });
			}
			if (req.method === 'GET' && u.startsWith('/eversend/v1/transactions/')) {
				if (req.headers.authorization !== 'Bearer EVTOKEN') return json(res, 401, { message: 'bad token' });
				const id = u.split('/').pop();
				return json(res, 200, { code: 200, data: { transactionId: id, type: 'collection', amount: '50000',
					currency: 'UGX', status: id === 'EVS2' ? 'failed' : 'successful' } });
			}
			json(res, 404, { error: 'no route' });
		});
	});
	a.server.on('connection', (s) => { a.sockets.add(s); s.on('close', () => a.sockets.delete(s)); });
	await new Promise((resolve) => a.server.listen(0, '127.0.0.1', resolve));
	a.base = `http://127.0.0.1:${a.server.address().port}`;
	return a;
}


// Runs reconciliation in its own session without blocking this process (the stand-in answers
// meanwhile), with the settings of the test: checked after 1 s, requests time out after 1.5 s
function runReconcile() {
	return new Promise((resolve, reject) => {
		const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir,
			'-p', String(db.port), '-U', 'postgres', '-d', 'payments'], (err, stdout, stderr) =>
			(err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
		child.stdin.end(`SET payments.reconcile_after = '1s';
			SET payments.reconcile_timeout = '1500ms';
			CALL payments.reconcile(50);\n`);
	});
}

function stuck(provider, ref, metadata = {}) {
	db.psqlVars(`INSERT INTO payments.payments (provider, provider_ref, status, amount, currency, status_at, metadata)
		VALUES (:'p', :'r', 'pending', 5, 'USD', now() - interval '1 hour', :'m'::jsonb)`,
	{ p: provider, r: ref, m: JSON.stringify(metadata) });
}

const status = (ref) => db.psqlVars(`SELECT status FROM payments.payments WHERE provider_ref = :'r'`, { r: ref });
const lastCheck = (ref) => db.psqlVars(`SELECT concat_ws('|', c.outcome, c.found_status, c.http_status, c.error)
	FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
	WHERE p.provider_ref = :'r' ORDER BY c.id DESC LIMIT 1`, { r: ref });

before(async () => {
	api = await startApi();
	db = new Cluster();
	await db.init();
	db.psql(`SELECT payments.register_provider('pn', 'paynow', '{"api_base": "${api.base}/paynow"}');
		SELECT payments.add_secret('pn', '${PAYNOW_KEY}');
		SELECT payments.register_provider('st', 'stripe', '{"api_key": "sk_test_recon", "livemode": false, "api_base": "${api.base}/stripe"}');
		SELECT payments.add_secret('st', '${STRIPE_SECRET}');
		SELECT payments.register_provider('pp', 'paypal', '{"webhook_id": "WH1", "client_id": "ppid",
			"client_secret": "ppsecret", "api_base": "${api.base}/paypal"}');
		SELECT payments.register_provider('ev', 'eversend', '{"client_id": "evid", "client_secret": "evsecret",
			"api_base": "${api.base}/eversend"}');`);
});

after(async () => {
	for (const s of api?.sockets ?? []) s.destroy();
	api?.server.close();
	db?.destroy();
});

test('each provider path moves a stuck payment; failures are recorded and change nothing', async () => {
	stuck('pn', 'PN1', { pollurl: `${api.base}/paynow/poll/good` });
	stuck('pn', 'PN2', { pollurl: `${api.base}/paynow/poll/bad` });
	stuck('st', 'pi_ok');
	stuck('st', 'pi_fail');
	stuck('st', 'pi_500');
	stuck('st', 'pi_404');
	stuck('st', 'pi_slow');
	stuck('pp', 'ORDER1', { capture_id: 'CAP1' });
	stuck('ev', 'EVS1');
	stuck('ev', 'EVS2');
	stuck('pn', 'RECENT', { pollurl: `${api.base}/paynow/poll/good` });
	db.psql(`UPDATE payments.payments SET status_at = now() + interval '1 hour' WHERE provider_ref = 'RECENT'`);

	const started = Date.now();
	await runReconcile();
	assert.ok(Date.now() - started < 10000, 'the slow request timed out');

	assert.equal(status('PN1'), 'paid');
	assert.equal(lastCheck('PN1'), 'fixed|Paid|200');
	assert.equal(status('pi_ok'), 'paid');
	assert.equal(lastCheck('pi_ok'), 'fixed|succeeded|200');
	assert.equal(status('pi_fail'), 'cancelled');
	assert.equal(status('ORDER1'), 'paid');
	assert.equal(lastCheck('ORDER1'), 'fixed|COMPLETED|200');
	assert.equal(status('EVS1'), 'paid');
	assert.equal(status('EVS2'), 'failed');
	assert.equal(lastCheck('EVS2'), 'fixed|failed|200');

	for (const ref of ['PN2', 'pi_500', 'pi_404', 'pi_slow']) assert.equal(status(ref), 'pending', ref);
	assert.match(lastCheck('PN2'), /^error\|Paid\|200\|hash check failed: /);
	assert.match(lastCheck('pi_500'), /^error\|500\|HTTP 500: /);
	assert.match(lastCheck('pi_404'), /^error\|404\|HTTP 404: /);
	assert.match(lastCheck('pi_slow'), /^error\|timeout: /);
	// not stuck long enough: not asked
	assert.equal(lastCheck('RECENT'), '');
	assert.ok(!api.seen.some((s) => s.includes('RECENT')));

	// through the state machine: history without an event, a receipt for the paid ones
	assert.equal(db.psql(`SELECT count(*) FROM payments.status_history h JOIN payments.payments p ON p.id = h.payment_id
		WHERE h.event_id IS NULL AND h.from_status = 'pending' AND p.provider_ref IN ('PN1', 'pi_ok', 'ORDER1', 'EVS1')`), '4');
	assert.equal(db.psql(`SELECT count(*) FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id
		WHERE provider_ref IN ('PN1', 'pi_ok', 'ORDER1', 'EVS1')`), '4');
	// no credential is recorded
	assert.equal(db.psql(`SELECT count(*) FROM payments.reconciliation_checks
		WHERE request || coalesce(error, '') ~ '(sk_test|PPTOKEN|EVTOKEN|ppsecret|evsecret|pi_secret)'`), '0');
	assert.deepEqual(api.tokens, { paypal: 1, eversend: 1 });
});

test('tokens are cached until they expire; a checked payment is asked again after reconcile_after', async () => {
	stuck('pp', 'ORDER2', { capture_id: 'CAP2' });
	stuck('ev', 'EVS3');
	await sleep(1100);
	await runReconcile();
	assert.equal(status('ORDER2'), 'paid');
	assert.equal(status('EVS3'), 'paid');
	assert.deepEqual(api.tokens, { paypal: 1, eversend: 1 });
	assert.equal(db.psql(`SELECT count(*) FROM payments.reconciliation_checks c JOIN payments.payments p
		ON p.id = c.payment_id WHERE p.provider_ref = 'pi_500'`), '2');
	// an expired token is fetched again
	db.psql(`UPDATE payments.api_tokens SET expires_at = now() - interval '1 second' WHERE provider = 'pp'`);
	stuck('pp', 'ORDER3', { capture_id: 'CAP3' });
	await runReconcile();
	assert.equal(status('ORDER3'), 'paid');
	assert.equal(api.tokens.paypal, 2);
	// a change of the credentials or of api_base forgets the token; of another setting, not
	const cached = () => db.psql(`SELECT count(*) FROM payments.api_tokens WHERE provider = 'pp'`);
	db.psql(`UPDATE payments.providers SET settings = settings || '{"webhook_id": "WH1-renamed"}' WHERE name = 'pp'`);
	assert.equal(cached(), '1');
	db.psql(`UPDATE payments.providers SET settings = settings || '{"client_secret": "ppsecret-rotated"}' WHERE name = 'pp'`);
	assert.equal(cached(), '0');
	db.psql(`UPDATE payments.providers SET settings = settings || '{"client_secret": "ppsecret", "webhook_id": "WH1"}' WHERE name = 'pp'`);
	stuck('pp', 'ORDER5', { capture_id: 'CAP5' });
	await runReconcile();
	assert.equal(status('ORDER5'), 'paid');
	assert.equal(api.tokens.paypal, 3);
});

test('the summary and the job', async () => {
	const summary = db.psql(`SELECT metric || '|' || provider || '|' || coalesce(detail, '') || '|' || count
		FROM payments.reconciliation_summary(24) WHERE metric IN ('discrepancies_fixed', 'stuck_pending') ORDER BY 1`);
	assert.match(summary, /discrepancies_fixed\|ev\|\|3/);
	assert.match(summary, /discrepancies_fixed\|pp\|\|4/);
	assert.match(summary, /stuck_pending\|st\|\|3/);
	// the pg_cron job runs reconciliation under its advisory lock (key 4)
	const out = await new Promise((resolve, reject) => {
		const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir,
			'-p', String(db.port), '-U', 'postgres', '-d', 'payments'], (err, stdout, stderr) =>
			(err ? reject(new Error(stderr || err.message)) : resolve(stdout + stderr)));
		child.stdin.end(`SET payments.reconcile_after = '1s';
			SET payments.reconcile_timeout = '1500ms';
			CALL payments.run_job('reconcile', 10);\n`);
	});
	assert.equal(out.trim(), '');
	assert.equal(db.psql(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4`), '0');
});

test('a PayPal order without a capture heard of is asked for by order: its capture and payment source, else still pending', async () => {
	stuck('pp', 'ORDER-PAID');
	stuck('pp', 'ORDER-OPEN');
	stuck('pp', 'ORDER-VOID');
	await sleep(1100);
	await runReconcile();
	assert.equal(status('ORDER-PAID'), 'paid');
	assert.equal(lastCheck('ORDER-PAID'), 'fixed|COMPLETED|200');
	// its method is the order's payment_source, as its approval's webhook (lost too) would have said
	assert.equal(db.psql(`SELECT fee || '|' || (metadata ->> 'capture_id') || '|' || method FROM payments.payments
		WHERE provider_ref = 'ORDER-PAID'`), '0.47|CAP-LOST|card');
	assert.equal(status('ORDER-OPEN'), 'pending');
	assert.equal(lastCheck('ORDER-OPEN'), 'unchanged|APPROVED|200');
	// the capture found is kept as its webhook's would be, so that its refunds find the order;
	// an order without a capture names none, and is asked for by order again
	assert.equal(db.psql(`SELECT k.capture_id || '|' || k.status || '|' || k.amount FROM payments.paypal_captures k
		JOIN payments.payments p ON p.id = k.payment_id WHERE p.provider_ref = 'ORDER-PAID'`), 'CAP-LOST|paid|5.00');
	assert.equal(db.psql(`SELECT metadata ? 'capture_id' FROM payments.payments WHERE provider_ref = 'ORDER-OPEN'`), 'f');
	assert.equal(status('ORDER-VOID'), 'cancelled');
	assert.ok(api.seen.some((s) => s.includes('/v2/checkout/orders/ORDER-PAID')));
});

test('a PayPal order with several captures: every one that took money counts, a declined one before them fails nothing', async () => {
	stuck('pp', 'ORDER-TWO');
	stuck('pp', 'ORDER-HALF');
	stuck('pp', 'ORDER-DECLINED');
	stuck('pp', 'ORDER-LATEREF');
	await sleep(1100);
	await runReconcile();
	assert.equal(lastCheck('ORDER-TWO'), 'fixed|COMPLETED|200');
	assert.equal(db.psql(`SELECT p.status || ' ' || p.amount || ' ' || p.fee || ' ' || (p.metadata ->> 'capture_id') || ' '
		|| (SELECT string_agg(k.capture_id || ':' || k.status || ':' || k.amount, ',' ORDER BY k.capture_id)
			FROM payments.paypal_captures k WHERE k.payment_id = p.id) || ' '
		|| (SELECT string_agg(h.to_status, ',' ORDER BY h.id) FROM payments.status_history h WHERE h.payment_id = p.id)
		FROM payments.payments p WHERE p.provider_ref = 'ORDER-TWO'`),
	'paid 5.00 0.70 CAP-T2 CAP-T2:paid:3.00,CAP-T3:paid:2.00 paid',
	'both captures taken (their sums), never failed by the declined one');
	assert.equal(lastCheck('ORDER-HALF'), 'fixed|REFUNDED|200');
	assert.equal(db.psql(`SELECT p.status || ' ' || p.amount || ' ' || p.amount_refunded || ' '
		|| (SELECT count(*) FROM payments.receipts r WHERE r.payment_id = p.id)
		FROM payments.payments p WHERE p.provider_ref = 'ORDER-HALF'`), 'partially_refunded 5.00 2.00 1',
	'one of two captures refunded: part of the money given back');
	assert.equal(status('ORDER-DECLINED'), 'failed');
	assert.equal(lastCheck('ORDER-DECLINED'), 'fixed|DECLINED|200');
	// a capture found refunded: paid when it was made (create_time), given back at its update_time
	assert.equal(db.psql(`SELECT p.status || ' ' || (p.paid_at BETWEEN now() - interval '41 minutes' AND now() - interval '39 minutes')
		|| ' ' || (SELECT bool_and(f.refunded_at BETWEEN now() - interval '6 minutes' AND now() - interval '4 minutes')
			FROM payments.refunds f WHERE f.payment_id = p.id)
		FROM payments.payments p WHERE p.provider_ref = 'ORDER-LATEREF'`), 'refunded true true');
});

test('an answer that cannot be recorded loses only itself: the others of the run are recorded', async () => {
	stuck('st', 'pi_recfail');
	stuck('st', 'pi_recok');
	db.psql(`CREATE FUNCTION record_fails() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN
				IF NEW.payment_id = (SELECT id FROM payments.payments WHERE provider_ref = 'pi_recfail') THEN
					RAISE EXCEPTION 'recording refused for the test';
				END IF;
				RETURN NEW;
			END$$;
		CREATE TRIGGER record_fails BEFORE UPDATE ON payments.reconciliation_checks FOR EACH ROW
			EXECUTE FUNCTION record_fails();`);
	try {
		await sleep(1100);
		await runReconcile();
	} finally {
		db.psql(`DROP TRIGGER record_fails ON payments.reconciliation_checks; DROP FUNCTION record_fails()`);
	}
	assert.equal(status('pi_recok'), 'paid');
	assert.equal(lastCheck('pi_recok'), 'fixed|succeeded|200');
	// asked, its answer not recorded: still pending, its check unfinished, asked again later
	assert.equal(status('pi_recfail'), 'pending');
	assert.equal(db.psql(`SELECT count(*) FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
		WHERE p.provider_ref = 'pi_recfail' AND c.outcome IS NULL`), '1');
});

test('a PayPal capture found REFUNDED was paid, then given back in full: both are recorded', async () => {
	stuck('pp', 'ORDER-REFUNDED', { capture_id: 'CAPR' });
	await sleep(1100);
	await runReconcile();
	assert.equal(lastCheck('ORDER-REFUNDED'), 'fixed|REFUNDED|200');
	assert.equal(db.psql(`SELECT p.status || ' ' || p.amount_refunded || ' ' || (p.paid_at IS NOT NULL) || ' '
		|| (SELECT count(*) FROM payments.receipts r WHERE r.payment_id = p.id) || ' '
		|| (SELECT sum(f.amount) FROM payments.refunds f WHERE f.payment_id = p.id)
		FROM payments.payments p WHERE p.provider_ref = 'ORDER-REFUNDED'`), 'refunded 30.00 true 1 30.00',
		'paid the capture\'s 30.00 (the payment was pending at 5), all of it given back');
});

test('two runs at once ask for each payment once: rows claimed meanwhile by the other run are left to it', async () => {
	// payments that stay pending when asked (a run that moves one leaves it to the other anyway)
	for (let i = 1; i <= 20; i++) stuck('st', `pi_race${i}`);
	// the slow run records its checks a quarter second apart; PL/pgSQL locks its rows ten at a time
	db.psql(`CREATE FUNCTION slow_checks() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN
				IF current_setting('application_name') = 'slow-run' THEN PERFORM pg_sleep(0.25); END IF;
				RETURN NEW;
			END$$;
		CREATE TRIGGER slow_checks BEFORE INSERT ON payments.reconciliation_checks FOR EACH ROW
			EXECUTE FUNCTION slow_checks();`);
	await sleep(1100);
	try {
		const slow = new Promise((resolve, reject) => {
			const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir,
				'-p', String(db.port), '-U', 'postgres', '-d', 'payments'], { env: { ...process.env, PGAPPNAME: 'slow-run' } },
			(err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
			child.stdin.end(`SET payments.reconcile_after = '1s'; CALL payments.reconcile(20);\n`);
		});
		// while the slow run works through its first ten (recording one: in the trigger's pg_sleep),
		// another claims four of the next ten
		await waitFor(() => db.psql(`SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'slow-run' AND wait_event = 'PgSleep'`) !== '0', 20000, 'the slow run recording');
		await new Promise((resolve, reject) => {
			const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir,
				'-p', String(db.port), '-U', 'postgres', '-d', 'payments'],
			(err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
			child.stdin.end(`SET payments.reconcile_after = '1s'; CALL payments.reconcile(4);\n`);
		});
		await slow;
	} finally {
		db.psql(`DROP TRIGGER slow_checks ON payments.reconciliation_checks; DROP FUNCTION slow_checks()`);
	}
	assert.equal(db.psql(`SELECT count(*) || ' ' || count(DISTINCT c.payment_id) FROM payments.reconciliation_checks c
		JOIN payments.payments p ON p.id = c.payment_id WHERE p.provider_ref LIKE 'pi\\_race%'`), '20 20');
	assert.equal(api.seen.filter((s) => s.includes('/pi_race')).length, 20);
});

test('a check left in flight by a run that was stopped is closed by the next run', async () => {
	stuck('st', 'pi_left');
	db.psql(`INSERT INTO payments.reconciliation_checks (payment_id, provider, request, status_before, started_at)
		SELECT p.id, p.provider, 'GET /v1/payment_intents/pi_left', 'pending', now() - interval '1 hour'
		  FROM payments.payments p WHERE p.provider_ref = 'pi_left'`);
	await sleep(1100);
	await runReconcile();
	assert.equal(db.psql(`SELECT concat_ws('|', c.outcome, c.error, c.finished_at IS NOT NULL)
		FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
		WHERE p.provider_ref = 'pi_left' ORDER BY c.id LIMIT 1`), 'error|interrupted: no answer was recorded|t');
	// and the payment was asked again, its last check an hour old
	assert.equal(status('pi_left'), 'paid');
});

test('a run cancelled while it records the answers keeps those recorded before the cancel', async () => {
	stuck('st', 'pi_fastc');
	stuck('st', 'pi_lockc');
	await sleep(1100);
	let stderr = '';
	const run = new Promise((resolve) => {
		const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
			'-d', 'payments'], (err, stdout, errout) => { stderr = errout; resolve(); });
		child.stdin.end(`SET payments.reconcile_after = '1s'; SET payments.reconcile_timeout = '5s';
			SET statement_timeout = 6000; CALL payments.reconcile(50);\n`);
	});
	// once the run's claim is committed and its requests are out, pi_lockc's payment is held (an
	// admin's transaction, say), seconds before its answer: recording that waits until the statement
	// times out
	await waitFor(() => api.seen.some((s) => s.endsWith('/pi_lockc')), 20000, 'the request for pi_lockc');
	const lock = await holdLock(db, `SELECT FROM payments.payments WHERE provider_ref = 'pi_lockc' FOR UPDATE`);
	try {
		await run;
	} finally {
		await lock.release();
	}
	assert.match(stderr, /canceling statement due to statement timeout/);
	// the answer recorded before the cancel is kept; the other is asked again after its wait
	assert.equal(status('pi_fastc'), 'paid');
	assert.equal(lastCheck('pi_fastc'), 'fixed|succeeded|200');
	assert.equal(status('pi_lockc'), 'pending');
	assert.equal(lastCheck('pi_lockc'), '');
});

test('a run cancelled while its requests are out records the answers that came before the cancel', async () => {
	stuck('st', 'pi_sendc');
	stuck('st', 'pi_hangc');
	await sleep(1100);
	let stderr = '';
	const started = Date.now();
	await new Promise((resolve) => {
		const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
			'-d', 'payments'], (err, stdout, errout) => { stderr = errout; resolve(); });
		child.stdin.end(`SET payments.reconcile_after = '1s'; SET payments.reconcile_timeout = '30s';
			SET statement_timeout = 1000; CALL payments.reconcile(50);\n`);
	});
	assert.match(stderr, /canceling statement due to statement timeout/);
	// (not stopped, the requests would wait for the 30 s reconcile_timeout: 10 s is far from it)
	assert.ok(Date.now() - started < 10000, `the cancel stopped the requests (${Date.now() - started} ms)`);
	assert.equal(status('pi_sendc'), 'paid');
	assert.equal(lastCheck('pi_sendc'), 'fixed|succeeded|200');
	// not answered: its check stays in flight until a later run closes it
	assert.equal(status('pi_hangc'), 'pending');
	assert.equal(lastCheck('pi_hangc'), '');
});

test('a statement_timeout below the provider\'s response time cancels no reconcile job: its waits are reconcile_timeout\'s', async () => {
	stuck('st', 'pi_late');
	await sleep(1100);
	let stderr = '';
	// as ALTER DATABASE … SET statement_timeout would give pg_cron's session
	await new Promise((resolve) => {
		const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
			'-d', 'payments'], { env: { ...process.env, PGOPTIONS: '-c statement_timeout=1s' } },
		(err, stdout, errout) => { stderr = errout; resolve(); });
		child.stdin.end(`SET payments.reconcile_after = '1s'; SET payments.reconcile_timeout = '5s';
			CALL payments.run_job('reconcile', 50);\n`);
	});
	assert.doesNotMatch(stderr, /statement timeout/);
	assert.equal(status('pi_late'), 'paid');
	assert.equal(lastCheck('pi_late'), 'fixed|succeeded|200');
	// the check finished, and the payment was found paid, when the answer came (1.5 s after the
	// request), not when the run claimed it: a poll answered after midnight is paid on the new day
	assert.equal(db.psqlVars(`SELECT c.finished_at - c.started_at >= interval '1.4 seconds', p.paid_at >= c.started_at + interval '1.4 seconds'
		FROM payments.reconciliation_checks c JOIN payments.payments p ON p.id = c.payment_id
		WHERE p.provider_ref = :'r' ORDER BY c.id DESC LIMIT 1`, { r: 'pi_late' }), 't|t');
});

test('a Paynow reply about another transaction pays nothing; another amount is kept for review', async () => {
	stuck('pn', 'PN3', { pollurl: `${api.base}/paynow/poll/other` });
	stuck('pn', 'PN4', { pollurl: `${api.base}/paynow/poll/otherpn` });
	stuck('pn', 'PN5', { pollurl: `${api.base}/paynow/poll/more` });
	db.psql(`UPDATE payments.payments SET reference = 'R' || substr(provider_ref, 3) WHERE provider_ref IN ('PN3', 'PN4', 'PN5')`);
	await runReconcile();
	assert.equal(status('PN3'), 'pending');
	assert.equal(lastCheck('PN3'), 'error|Paid|200|the reply is about another transaction (reference SOMEONE-ELSE, not R3)');
	assert.equal(status('PN4'), 'pending');
	assert.equal(lastCheck('PN4'), 'error|Paid|200|the reply is about another Paynow transaction (PN999, not PN4)');
	// what Paynow says was taken, 0.01 of the 5.00 asked, with the mismatch kept
	assert.equal(status('PN5'), 'paid');
	assert.equal(db.psql(`SELECT amount || '|' || (metadata -> 'paynow_amount_mismatch' ->> 'known') || '|' ||
		(metadata -> 'paynow_amount_mismatch' ->> 'reported') FROM payments.payments WHERE provider_ref = 'PN5'`), '0.01|5|0.01');
});

test('Stripe Connect: a connected account\'s payment is asked as that account, named by its events', async () => {
	// a direct charge on a connected account: its events name the account (signed as Stripe does)
	const payload = JSON.stringify({ id: 'evt_conn1', object: 'event', type: 'payment_intent.processing',
		account: 'acct_1Conn', api_version: '2025-03-31.basil', created: Math.floor(Date.now() / 1000) - 3600,
		livemode: false, data: { object: { id: 'pi_conn1', object: 'payment_intent', amount: 2500, currency: 'usd',
			status: 'processing', payment_method_types: ['card', 'us_bank_account'], metadata: { reference: 'CONN-1' } } } });
	const header = stripeSdk.webhooks.generateTestHeaderString({ payload, secret: STRIPE_SECRET });
	assert.equal(db.psqlVars(`SET client_min_messages = error; SELECT http_status || '|' || outcome
		FROM payments.ingest('st', jsonb_build_object('stripe-signature', :'h'), convert_to(:'b', 'UTF8'))`,
	{ h: header, b: payload }), '200|applied');
	assert.equal(db.psql(`SELECT status || '|' || (metadata ->> 'stripe_account') || '|' || coalesce(method, '-')
		FROM payments.payments WHERE provider_ref = 'pi_conn1'`), 'pending|acct_1Conn|-');
	await runReconcile();
	// the stand-in answers 404 to a request without the account's Stripe-Account header
	assert.equal(lastCheck('pi_conn1'), 'fixed|succeeded|200');
	assert.equal(status('pi_conn1'), 'paid');
	// a stripe_account that is no account id is never sent: an error recorded, nothing asked
	stuck('st', 'pi_conn2', { stripe_account: 'acct_1Conn\r\nX-Injected: 1' });
	await runReconcile();
	assert.equal(status('pi_conn2'), 'pending');
	assert.equal(lastCheck('pi_conn2'), 'error|the payment\'s stripe_account is not a Stripe account id (acct_...)');
	assert.ok(!api.seen.some((s) => s.includes('pi_conn2')));
});
