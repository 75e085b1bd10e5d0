// End to end over real HTTP: deliveries signed by the providers' official SDKs go through
// the real shim into a real PostgreSQL 15 cluster, and come back with the right status.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import Stripe from 'stripe';
import { Webhook } from 'standardwebhooks';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { Cluster, PG_BIN, Shim, post, rawRequest, sleep, stopShimAndCluster, holdLock, shimLockWaiters, waitFor }
	from './harness.mjs';

const stripe = new Stripe('sk_test_not_used_offline');
const stripeSecret = `whsec_${randomBytes(24).toString('hex')}`;
const standardSecret = `whsec_${randomBytes(32).toString('base64')}`;
const sha256 = (s) => createHash('sha256').update(s).digest('hex');

let cluster;
let shim;
let seq = 0;

// A Stripe event body with a fresh id, shaped like PROVIDERS.md's sample.
function stripeEvent(extra = {}) {
	seq += 1;
	return JSON.stringify({
		id: `evt_e2e_${process.pid}_${seq}`,
		object: 'event',
		api_version: '2024-06-20',
		created: Math.floor(Date.now() / 1000),
		type: 'payment_intent.succeeded',
		data: { object: { id: `pi_e2e_${seq}`, object: 'payment_intent', amount: 2500, currency: 'usd' } },
		livemode: true,
		...extra,
	});
}

function stripeHeaders(payload, secret = stripeSecret) {
	return { 'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload, secret }) };
}

function standardHeaders(id, payload, secret = standardSecret) {
	const now = new Date();
	return {
		'webhook-id': id,
		'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
		'webhook-signature': new Webhook(secret).sign(id, now, payload),
	};
}

function eventCount(provider, eventId) {
	return Number(cluster.psqlVars(
		"SELECT count(*) FROM payments.events WHERE provider = :'p' AND event_id = :'e'",
		{ p: provider, e: eventId }));
}

describe('webhooks through the shim', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`
			SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'s1');
			SELECT payments.register_provider('hooks', 'standard');
			SELECT payments.add_secret('hooks', :'s2');`, { s1: stripeSecret, s2: standardSecret });
		shim = new Shim(cluster.dsn);
		await shim.start();
	});

	after(() => stopShimAndCluster(shim, cluster));

	test('a Stripe delivery signed by the stripe SDK is stored once; a redelivery is a duplicate', async () => {
		const payload = stripeEvent();
		const id = JSON.parse(payload).id;
		const first = await post(shim.base, 'stripe', payload, stripeHeaders(payload));
		assert.equal(first.status, 200, first.text);
		assert.equal(first.json.outcome, 'applied');
		assert.equal(first.json.event_id, id);
		const again = await post(shim.base, 'stripe', payload, stripeHeaders(payload));
		assert.equal(again.status, 200);
		assert.equal(again.json.outcome, 'duplicate');
		assert.equal(eventCount('stripe', id), 1);
		const row = cluster.psqlVars(
			"SELECT encode(sha256(body), 'hex'), event_type, source_ip, headers ? 'stripe-signature' FROM payments.events WHERE event_id = :'e'",
			{ e: id });
		assert.equal(row, `${sha256(payload)}|payment_intent.succeeded|127.0.0.1|t`);
	});

	test('a Standard Webhooks delivery signed by the standardwebhooks SDK is stored once', async () => {
		const payload = JSON.stringify({ type: 'contact.created', timestamp: new Date().toISOString(), data: { id: 'c_1' } });
		const id = `msg_${randomBytes(8).toString('hex')}`;
		const first = await post(shim.base, 'hooks', payload, standardHeaders(id, payload));
		assert.equal(first.status, 200, first.text);
		assert.deepEqual([first.json.outcome, first.json.event_id], ['ignored', id]);
		const retry = await post(shim.base, 'hooks', payload, standardHeaders(id, payload));
		assert.deepEqual([retry.status, retry.json.outcome], [200, 'duplicate']);
		assert.equal(eventCount('hooks', id), 1);
	});

	test('a tampered body or a wrong secret is refused with 401, stored nowhere but in rejections', async () => {
		const payload = stripeEvent();
		const id = JSON.parse(payload).id;
		const tampered = await post(shim.base, 'stripe', payload.replace('2500', '1'), stripeHeaders(payload),);
		assert.deepEqual([tampered.status, tampered.json.outcome], [401, 'rejected']);
		const wrong = await post(shim.base, 'stripe', payload, {
			...stripeHeaders(payload, 'whsec_wrong'), 'x-request-id': 'wrong-secret-1',
		});
		assert.deepEqual([wrong.status, wrong.json.outcome], [401, 'rejected']);
		const sid = `msg_${randomBytes(8).toString('hex')}`;
		const wrongStd = await post(shim.base, 'hooks', payload,
			standardHeaders(sid, payload, `whsec_${randomBytes(24).toString('base64')}`));
		assert.equal(wrongStd.status, 401);
		const missing = await post(shim.base, 'stripe', payload);
		assert.equal(missing.status, 401);
		assert.equal(eventCount('stripe', id), 0);
		assert.equal(eventCount('hooks', sid), 0);
		const recorded = cluster.psql(
			"SELECT reason, host(source_ip) FROM payments.rejections WHERE request_id = 'wrong-secret-1'");
		assert.equal(recorded, 'signature_mismatch|127.0.0.1');
	});

	test('generated payloads verify byte for byte: unicode, emoji, escapes, empty object, large bodies', async () => {
		const notes = ['Tatenda Moyo', 'Zoë Ŋgũgĩ', '🙏🏾 thank you 💚', '\u00e9\u0301 combining', 'tab\tnew\nline',
			'quote " backslash \\', 'ascii escapes in JSON: \\u00e9 \\ud83d\\ude00', '中文 العربية עברית', ''];
		const bodies = notes.map((note) => stripeEvent({ data: { object: { note } } }));
		bodies.push(stripeEvent({ data: { object: { note: 'x'.repeat(600 * 1024) } } }));
		bodies.push(`{"id":"evt_raw_escapes_${process.pid}","s":"\\u00e9\\ud83d\\ude00\\n","n":1.50,"e":1e3}`);
		bodies.push(`{  "id" : "evt_spaced_${process.pid}" ,\n  "object":"event"\n}\n`);
		for (const payload of bodies) {
			const res = await post(shim.base, 'stripe', payload, stripeHeaders(payload));
			assert.equal(res.status, 200, res.text);
			const stored = cluster.psqlVars("SELECT encode(sha256(body), 'hex') FROM payments.events WHERE event_id = :'e'",
				{ e: JSON.parse(payload).id });
			assert.equal(stored, sha256(payload));
		}
		for (const payload of ['{}', JSON.stringify({ type: 'x', data: { s: '🙏'.repeat(1000) } })]) {
			const id = `msg_${randomBytes(8).toString('hex')}`;
			const res = await post(shim.base, 'hooks', payload, standardHeaders(id, payload));
			assert.equal(res.status, 200, res.text);
			assert.equal(eventCount('hooks', id), 1);
		}
	});

	test('fifty concurrent deliveries of one event give one row and fifty 2xx answers', async () => {
		const payload = stripeEvent();
		const id = JSON.parse(payload).id;
		const results = await Promise.all(Array.from({ length: 50 },
			() => post(shim.base, 'stripe', payload, stripeHeaders(payload))));
		assert.deepEqual(results.map((r) => r.status), Array(50).fill(200));
		const outcomes = results.map((r) => r.json.outcome).sort();
		assert.equal(outcomes.filter((o) => o === 'applied').length, 1);
		assert.equal(outcomes.filter((o) => o === 'duplicate').length, 49);
		assert.equal(eventCount('stripe', id), 1);
	});

	test('a body over the cap gets 413 without being read, and nothing is stored', async () => {
		const payload = stripeEvent({ data: { object: { note: 'x'.repeat(1024 * 1024) } } });
		const head = (length, extra = '') => `POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
			`Content-Type: application/json\r\nStripe-Signature: ${stripeHeaders(payload)['stripe-signature']}\r\n` +
			`${extra}Content-Length: ${length}\r\n\r\n`;
		// the length alone decides: the answer comes before any body byte is sent
		const declared = await rawRequest(shim.port, [head(Buffer.byteLength(payload))]);
		assert.match(declared, /^HTTP\/1\.1 413 /);
		// Expect: 100-continue is answered with 413 instead of 100
		const expect = await rawRequest(shim.port, [head(Buffer.byteLength(payload), 'Expect: 100-continue\r\n')]);
		assert.match(expect, /^HTTP\/1\.1 413 /);
		// a chunked body is refused once it passes the cap (libmicrohttpd 0.9.75 answers when the
		// upload ends): the signed event itself, whole, in 64 KB chunks
		const signature = stripeHeaders(payload)['stripe-signature'];
		const chunks = [`POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
			`Stripe-Signature: ${signature}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`];
		for (let at = 0; at < payload.length; at += 64 * 1024) {
			const chunk = payload.slice(at, at + 64 * 1024);	// ASCII: one byte a character
			chunks.push(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
		}
		chunks.push('0\r\n\r\n');
		const chunked = await rawRequest(shim.port, chunks);
		assert.match(chunked, /^HTTP\/1\.1 413 /);
		assert.equal(eventCount('stripe', JSON.parse(payload).id), 0);
		// which the database would have stored: only the shim's cap kept it out
		const file = join(cluster.dir, 'over-cap.json');
		writeFileSync(file, payload);
		assert.equal(cluster.psqlVars(`BEGIN; SELECT http_status || ' ' || outcome FROM payments.ingest('stripe',
			jsonb_build_object('stripe-signature', :'s'), pg_read_binary_file(:'f')); ROLLBACK;`,
		{ s: signature, f: file }), '200 ignored');	// stored, of no payment
		// the service goes on serving others
		const small = stripeEvent();
		assert.equal((await post(shim.base, 'stripe', small, stripeHeaders(small))).status, 200);
	});

	test('unknown providers get 404; malformed JSON that is correctly signed gets 400', async () => {
		const payload = stripeEvent();
		const unknown = await post(shim.base, 'nobody', payload, stripeHeaders(payload));
		assert.equal(unknown.status, 404);
		const badName = await post(shim.base, 'Not%20A%20Name', payload, stripeHeaders(payload));
		assert.equal(badName.status, 404);
		const broken = '{"id":"evt_broken",';
		const invalid = await post(shim.base, 'stripe', broken, stripeHeaders(broken));
		assert.deepEqual([invalid.status, invalid.json.outcome], [400, 'invalid']);
	});

	test('X-Request-ID is passed to SQL and echoed, or generated when absent', async () => {
		const payload = stripeEvent();
		const given = await post(shim.base, 'stripe', payload, { ...stripeHeaders(payload), 'x-request-id': 'req-e2e-42' });
		assert.equal(given.headers.get('x-request-id'), 'req-e2e-42');
		assert.equal(cluster.psqlVars("SELECT request_id FROM payments.events WHERE event_id = :'e'",
			{ e: JSON.parse(payload).id }), 'req-e2e-42');
		const other = stripeEvent();
		const generated = await post(shim.base, 'stripe', other, stripeHeaders(other));
		assert.match(generated.headers.get('x-request-id'), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
		assert.equal(generated.json.request_id, generated.headers.get('x-request-id'));
	});

	test('header values that are not UTF-8 or hold JSON syntax reach SQL safely', async () => {
		const payload = stripeEvent();
		const sig = stripeHeaders(payload)['stripe-signature'];
		const raw = `POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: ${sig}\r\n` +
			'X-Junk: \xff\xfe caf\xe9\r\nX-Quote: "},{"stripe-signature":"t=1\\\r\n' +
			`Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\nConnection: close\r\n\r\n`;
		const answer = await rawRequest(shim.port, [Buffer.from(raw, 'latin1'), payload]);
		assert.match(answer, /^HTTP\/1\.1 200 /);
		const stored = cluster.psqlVars(
			"SELECT headers ->> 'x-junk', headers ->> 'x-quote' FROM payments.events WHERE event_id = :'e'",
			{ e: JSON.parse(payload).id });
		assert.equal(stored, '\ufffd\ufffd caf\ufffd|"},{"stripe-signature":"t=1\\');
	});

	test('spaces and tabs after a header value are not part of it; two signature lines are read as one list', async () => {
		const payload = stripeEvent();
		const sig = stripeHeaders(payload)['stripe-signature'];
		const raw = `POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: ${sig} \t \r\n` +
			`Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\nConnection: close\r\n\r\n`;
		assert.match(await rawRequest(shim.port, [raw, payload]), /^HTTP\/1\.1 200 /);
		assert.equal(eventCount('stripe', JSON.parse(payload).id), 1);
		// Standard Webhooks: an old secret's signature on one line, the live one on a second (joined "a, b")
		const id = `msg_lines_${process.pid}`;
		const body = JSON.stringify({ type: 'lines.two', n: 1 });
		const h = standardHeaders(id, body);
		const old = new Webhook(`whsec_${randomBytes(32).toString('base64')}`).sign(id, new Date(Number(h['webhook-timestamp']) * 1000), body);
		const lines = `POST /webhooks/hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nwebhook-id: ${id}\r\n` +
			`webhook-timestamp: ${h['webhook-timestamp']}\r\nwebhook-signature: ${old}\r\n` +
			`webhook-signature: ${h['webhook-signature']}\t\r\nContent-Type: application/json\r\n` +
			`Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`;
		assert.match(await rawRequest(shim.port, [lines, body]), /^HTTP\/1\.1 200 /);
		assert.equal(eventCount('hooks', id), 1);
	});

	test('secrets and currencies changed by another session count from the next delivery, on every connection of the shim', async () => {
		const first = `whsec_${randomBytes(24).toString('hex')}`;
		const second = `whsec_${randomBytes(24).toString('hex')}`;
		const brief = `whsec_${randomBytes(24).toString('hex')}`;
		cluster.psqlVars(`SELECT payments.register_provider('rotating', 'stripe');
			SELECT payments.add_secret('rotating', :'s')`, { s: first });
		// eight at once, so that each of the shim's database connections reads (and keeps) the provider
		const send = (secret, currency = 'usd') => Promise.all(Array.from({ length: 8 }, () => {
			const payload = stripeEvent();
			const body = JSON.parse(payload);
			body.data.object.currency = currency;
			const text = JSON.stringify(body);
			return post(shim.base, 'rotating', text, stripeHeaders(text, secret));
		}));
		const statuses = (answers) => answers.map((a) => a.status);
		assert.deepEqual(statuses(await send(first)), Array(8).fill(200));
		// the shim's connections that store webhooks: one per batch thread (--batch-concurrency, 2 by
		// default), each of which has now read the provider
		assert.equal(cluster.psql(`SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
			AND application_name = 'payments-shim'`), '2');
		// rotated: the old secret is refused and the new one taken at once
		cluster.psqlVars(`SELECT payments.add_secret('rotating', :'n');
			SELECT payments.revoke_secret(id) FROM payments.secrets WHERE secret = :'o'`, { n: second, o: first });
		assert.deepEqual(statuses(await send(first)), Array(8).fill(401));
		assert.deepEqual(statuses(await send(second)), Array(8).fill(200));
		// a secret with an expiry: taken until then, refused after, with no change to the table between
		// (5 s: the eight sent before it ends on a loaded machine too)
		cluster.psqlVars(`SELECT payments.add_secret('rotating', :'b', now() + interval '5 seconds')`, { b: brief });
		assert.deepEqual(statuses(await send(brief)), Array(8).fill(200));
		await sleep(5500);
		assert.deepEqual(statuses(await send(brief)), Array(8).fill(401));
		assert.deepEqual(statuses(await send(second)), Array(8).fill(200));
		// a currency the table does not have keeps its events pending, until another session adds it
		const unknown = await send(second, 'zzy');
		assert.deepEqual(unknown.map((a) => a.json.outcome), Array(8).fill('stored'));
		cluster.psql(`INSERT INTO payments.currencies (code, exponent) VALUES ('ZZY', 2)`);
		const known = await send(second, 'zzy');
		assert.deepEqual(known.map((a) => a.json.outcome), Array(8).fill('applied'));
		assert.equal(cluster.psql(`SELECT count(*) FROM payments.payments WHERE provider = 'rotating' AND currency = 'ZZY'
			AND amount = 25.00`), '8');
	});

	test('a secret revoked while a statement runs is read as revoked by that statement, and not kept as live', async () => {
		const old = `whsec_${randomBytes(24).toString('hex')}`;
		cluster.psqlVars(`SELECT payments.register_provider('snapshot', 'stripe');
			SELECT payments.add_secret('snapshot', :'s')`, { s: old });
		const vars = {};
		for (const n of [1, 2, 3]) {
			vars[`p${n}`] = stripeEvent();
			vars[`h${n}`] = JSON.stringify(stripeHeaders(vars[`p${n}`], old));
		}
		// one session: reads (and keeps) the provider; then a statement whose snapshot is taken before
		// the revocation and whose lookup runs after it; then the next statement
		const args = ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', cluster.dir, '-p', String(cluster.port),
			'-U', 'postgres', '-d', 'payments', ...Object.entries(vars).flatMap(([k, v]) => ['-v', `${k}=${v}`])];
		const session = spawn(join(PG_BIN, 'psql'), args);
		let out = '';
		session.stdout.on('data', (d) => { out += d; });
		const done = new Promise((resolve) => session.on('close', resolve));
		session.stdin.end(`SELECT http_status FROM payments.ingest('snapshot', :'h1'::jsonb, convert_to(:'p1', 'UTF8'));
			SELECT (payments.ingest('snapshot', :'h2'::jsonb, convert_to(:'p2', 'UTF8'))).http_status
			  FROM (SELECT pg_sleep(3) OFFSET 0) s;
			SELECT http_status FROM payments.ingest('snapshot', :'h3'::jsonb, convert_to(:'p3', 'UTF8'));`);
		// revoked once the first statement is done and the second has its snapshot (in its pg_sleep)
		await waitFor(() => cluster.psql(`SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'
			AND query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()`) !== '0', 20000, 'the second statement');
		cluster.psqlVars(`SELECT payments.revoke_secret(id) FROM payments.secrets WHERE secret = :'s'`, { s: old });
		assert.equal(await done, 0);
		assert.deepEqual(out.trim().split('\n'), ['200', '401', '401']);
	});

	test('SIGTERM lets a request in flight finish, then the shim exits 0', async () => {
		const second = new Shim(cluster.dsn);
		await second.start();
		// hold a lock that makes the insert wait, so the request is in flight when SIGTERM comes
		const lock = await holdLock(cluster, 'LOCK TABLE payments.events IN SHARE MODE');
		let exit;
		let res;
		const payload = stripeEvent();
		try {
			const inFlight = post(second.base, 'stripe', payload, stripeHeaders(payload));
			await shimLockWaiters(cluster, 1);
			exit = second.stop();
			await waitFor(() => /"msg":"shutting down"[^\n]*"in_flight":1\b/.test(second.stderr), 10000, 'the shim draining');
			assert.equal(eventCount('stripe', JSON.parse(payload).id), 0, 'not stored before the lock is released');
			await lock.release();
			res = await inFlight;
		} finally {
			lock.kill();
		}
		assert.equal(res.status, 200, res.text);
		assert.equal((await exit).code, 0);
		assert.deepEqual(second.sanitizerReports(), []);
		assert.equal(eventCount('stripe', JSON.parse(payload).id), 1);
	});

	test('with the database stopped the shim answers 503 with Retry-After, then recovers by itself', async () => {
		cluster.stop();
		try {
			for (let i = 0; i < 3; i++) {
				const payload = stripeEvent();
				const res = await post(shim.base, 'stripe', payload, stripeHeaders(payload));
				assert.equal(res.status, 503, res.text);
				assert.ok(Number(res.headers.get('retry-after')) > 0, 'Retry-After header');
			}
		} finally {
			cluster.start();
		}
		const payload = stripeEvent();
		let res;
		for (let i = 0; i < 120; i++) {
			res = await post(shim.base, 'stripe', payload, stripeHeaders(payload));
			if (res.status !== 503) break;
			await sleep(250);
		}
		assert.equal(res.status, 200, res.text);
		assert.equal(eventCount('stripe', JSON.parse(payload).id), 1);
	});
});
