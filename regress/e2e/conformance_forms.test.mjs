// Conformance over real HTTP for the kinds paynow, eversend and hmac (Paystack, GitHub):
// Paynow status updates hashed by the official `paynow` npm package, the others signed with
// Node's crypto by the published schemes, over many generated payloads, so that a mismatch in
// byte handling (form decoding, UTF-8, escapes, sizes) cannot hide.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import { Cluster, Shim, post } from './harness.mjs';

const require = createRequire(import.meta.url);
const { Paynow } = require('paynow');

const sha256 = (data) => createHash('sha256').update(data).digest('hex');
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

// Texts that stress byte handling: form syntax characters, unicode, emoji, escapes, sizes.
const TEXTS = ['', 'plain ascii', 'Tatenda Moyo', 'Zoë Ŋgũgĩ', '🙏🏾💚🇿🇼 thank you', '中文 العربية עברית',
	'a&b=c', '100% sure', '%41 is not A', '1+1=2', '  spaces  around  ', 'tab\t nl\n cr\r',
	'quote " backslash \\ slash /', '\u00e9\u0301 combining', '\u2028\u2029 separators', '~!*()\'', '?#[]@$,;:',
	'x'.repeat(200 * 1024), '🙏'.repeat(20000)];

// Three urlencoders, as different senders write forms.
const unreservedNet = /[A-Za-z0-9\-_.!*()]/;
const encoders = {
	// .NET HttpUtility.UrlEncode, as Paynow's servers: "+" for space, lower-case %xx
	paynow: (s) => Array.from(Buffer.from(s, 'utf8')).map((b) => {
		const c = String.fromCharCode(b);
		if (b < 0x80 && unreservedNet.test(c)) return c;
		if (c === ' ') return '+';
		return `%${b.toString(16).padStart(2, '0')}`;
	}).join(''),
	// encodeURIComponent: "%20" for space, upper-case %XX
	uri: (s) => encodeURIComponent(s),
	// the WHATWG form serializer
	whatwg: (s) => new URLSearchParams([['', s]]).toString().slice(1),
};

// A urlencoded form of the fields (an array of [key, value]) with the SDK's hash appended.
function paynowForm(paynow, key, fields, encode) {
	const values = Object.fromEntries(fields);
	const hash = paynow.generateHash(values, key);
	return `${fields.map(([k, v]) => `${encode(k)}=${encode(v)}`).join('&')}&hash=${hash}`;
}

let cluster;
let shim;

function stored(provider, eventId, extra = 'true') {
	return cluster.psqlVars(`SELECT encode(sha256(body), 'hex'), event_type, ${extra} FROM payments.events
		WHERE provider = :'p' AND event_id = :'e'`, { p: provider, e: eventId });
}

function lastRejection(provider) {
	return cluster.psqlVars(`SELECT outcome || '|' || reason FROM payments.rejections WHERE provider = :'p'
		ORDER BY id DESC LIMIT 1`, { p: provider });
}

describe('conformance: paynow, eversend, hmac (Paystack, GitHub)', () => {
	const paynowKey = randomUUID();
	const paynow = new Paynow('1201', paynowKey);
	const eversendSecret = randomBytes(24).toString('base64');
	const paystackSecret = `sk_test_${randomBytes(20).toString('hex')}`;
	const githubSecret = `gh ${randomBytes(12).toString('hex')} ünïcode`;

	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`
			SELECT payments.register_provider('paynow', 'paynow', '{"integration_id": "1201"}');
			SELECT payments.add_secret('paynow', upper(:'pk'));
			SELECT payments.register_provider('eversend', 'eversend');
			SELECT payments.add_secret('eversend', :'es');
			SELECT payments.register_provider('eversend256', 'eversend', '{"algorithm": "sha256"}');
			SELECT payments.add_secret('eversend256', :'es');
			SELECT payments.register_provider('paystack', 'hmac', '{"header": "x-paystack-signature",
				"algorithm": "sha512", "event_id_path": ["$.event", "$.data.id"], "event_type_path": "$.event"}');
			SELECT payments.add_secret('paystack', :'ps');
			SELECT payments.register_provider('github', 'hmac', '{"header": "x-hub-signature-256",
				"prefix": "sha256=", "event_id_header": "x-github-delivery", "event_type_header": "x-github-event"}');
			SELECT payments.add_secret('github', :'gs');`,
		{ pk: paynowKey, es: eversendSecret, ps: paystackSecret, gs: githubSecret });
		shim = new Shim(cluster.dsn);
		await shim.start();
	});

	after(async () => {
		const exit = shim ? await shim.stop() : { code: 0 };
		cluster?.destroy();
		assert.deepEqual(shim?.sanitizerReports() ?? [], [], 'sanitizer reports in the shim');
		assert.equal(exit.code, 0);
	});

	test('paynow: status updates hashed by the paynow SDK, in three urlencodings', async () => {
		const statuses = ['Paid', 'Awaiting Delivery', 'Delivered', 'Created', 'Sent', 'Cancelled', 'Failed'];
		let n = 0;
		for (const [encoderName, encode] of Object.entries(encoders)) {
			for (const note of TEXTS) {
				n += 1;
				const ref = `${process.pid}${String(n).padStart(4, '0')}`;
				const status = statuses[n % statuses.length];
				const fields = [['reference', `INV-${n} ${Array.from(note).slice(0, 20).join('')}`], ['paynowreference', ref],
					['amount', `${n}.50`], ['status', status],
					['pollurl', `https://www.paynow.co.zw/Interface/CheckPayment/?guid=${randomUUID()}`],
					['note', note], ['token', '']];
				const body = paynowForm(paynow, paynowKey, fields, encode);
				const what = `${encoderName} ${JSON.stringify(note.slice(0, 30))}`;
				// the SDK's own parser accepts what we send
				assert.equal(paynow.parseStatusUpdate(body).paynowReference, ref, what);

				const res = await post(shim.base, 'paynow', body, FORM);
				assert.equal(res.status, 200, `${res.text} for ${what}`);
				assert.equal(res.json.event_id, `${ref}:${status}`);
				assert.equal(stored('paynow', `${ref}:${status}`, "encode(sha256(convert_to(payload ->> 'note', 'UTF8')), 'hex')"),
					`${sha256(body)}|${status}|${sha256(note)}`, what);
				const again = await post(shim.base, 'paynow', body, FORM);
				assert.equal(again.json.outcome, 'duplicate', what);

				// tampering with any decoded value breaks the hash
				const tampered = body.replace(`amount=${n}.50`, `amount=${n}.51`);
				assert.equal((await post(shim.base, 'paynow', tampered, FORM)).status, 401, what);
			}
		}
	});

	test('paynow: a stray % is kept, as the SDK keeps it; malformed forms are invalid (400)', async () => {
		const ref = `${process.pid}9999`;
		// a stray "%": the SDK keeps it literal and verifies, and so do we (PROVIDERS.md 3.2)
		const strayRef = `${process.pid}9998`;
		const stray = `paynowreference=${strayRef}&status=Paid&note=100%&hash=${paynow.generateHash({ a: strayRef, b: 'Paid', c: '100%' }, paynowKey)}`;
		assert.equal(paynow.parseStatusUpdate(stray).paynowReference, strayRef);
		const strayRes = await post(shim.base, 'paynow', stray, FORM);
		assert.deepEqual([strayRes.status, strayRes.json.outcome], [200, 'applied'], strayRes.text);
		assert.equal(stored('paynow', `${strayRef}:Paid`, "payload ->> 'note'"), `${sha256(stray)}|Paid|100%`);
		const cases = [
			// a duplicate key: the SDK keeps the last one
			['duplicate key', `paynowreference=${ref}&status=Paid&status=Paid&hash=${paynow.generateHash({ a: ref, b: 'Paid', c: 'Paid' }, paynowKey)}`],
			// invalid UTF-8 once decoded: the SDK's decodeURIComponent throws
			['invalid UTF-8', `paynowreference=${ref}&status=%ff&hash=${'0'.repeat(128)}`],
			['empty field', `paynowreference=${ref}&&status=Paid&hash=${paynow.generateHash({ a: ref, b: 'Paid' }, paynowKey)}`],
			['no =', `paynowreference=${ref}&status&hash=${'0'.repeat(128)}`],
			['empty body', ''],
		];
		for (const [what, body] of cases) {
			const res = await post(shim.base, 'paynow', body, FORM);
			assert.deepEqual([res.status, res.json.outcome], [400, 'invalid'], what);
			assert.equal(lastRejection('paynow'), 'invalid|invalid_form', what);
		}
		// a well-formed form without a hash, or with a wrong one, is rejected (401)
		const noHash = await post(shim.base, 'paynow', `paynowreference=${ref}&status=Paid`, FORM);
		assert.deepEqual([noHash.status, lastRejection('paynow')], [401, 'rejected|missing_hash']);
		const wrong = paynowForm(new Paynow('1201', randomUUID()), randomUUID(),
			[['paynowreference', ref], ['status', 'Paid']], encoders.paynow);
		const wrongRes = await post(shim.base, 'paynow', wrong, FORM);
		assert.deepEqual([wrongRes.status, lastRejection('paynow')], [401, 'rejected|signature_mismatch']);
		assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.events WHERE provider = 'paynow' AND event_id LIKE :'r'",
			{ r: `${ref}:%` }), '0');
	});

	// JSON payloads for the JSON kinds: generated texts, hand-written escapes, spacing, empty data.
	function* jsonPayloads(make) {
		let n = 0;
		for (const text of TEXTS) {
			n += 1;
			yield JSON.stringify(make(n, text));
		}
		const raw = make(n + 1, 'RAW');
		yield JSON.stringify(raw).replace('"RAW"', '"\\u00e9\\ud83d\\ude00\\/ \\"q\\""');
		yield `  ${JSON.stringify(make(n + 2, 'spaced'), null, '\t')}\n`;
	}

	test('eversend: HMAC-SHA512 (default) and HMAC-SHA256 (setting) over generated payloads', async () => {
		const flat = (n, text) => ({ eventType: 'transaction.success', transactionId: `EVS${process.pid}${n}`,
			transactionRef: `ORD-${n}`, type: 'collection', status: 'successful', amount: '50000', currency: 'UGX', reason: text });
		const nested = (n, text) => ({ type: 'transaction.pending', data: { transactionId: `EVN${process.pid}${n}`,
			status: 'pending', reason: text, meta: {} } });
		for (const [provider, algorithm] of [['eversend', 'sha512'], ['eversend256', 'sha256']]) {
			for (const make of [flat, nested]) {
				for (const payload of jsonPayloads(make)) {
					const parsed = JSON.parse(payload);
					const txn = parsed.data ?? parsed;
					const id = `${txn.transactionId}:${txn.status}`;
					const signature = createHmac(algorithm, eversendSecret).update(payload).digest('hex');
					const res = await post(shim.base, provider, payload, { 'x-eversend-signature': signature });
					assert.equal(res.status, 200, `${res.text} for ${payload.slice(0, 60)}`);
					assert.equal(res.json.event_id, id);
					assert.equal(stored(provider, id), `${sha256(payload)}|${parsed.eventType ?? parsed.type}|t`);
					const tampered = await post(shim.base, provider, `${payload} `, { 'x-eversend-signature': signature });
					assert.equal(tampered.status, 401);
				}
			}
		}
		// the vendor sample's unkeyed SHA-512 is refused; a correctly signed non-JSON body is invalid
		const payload = JSON.stringify(flat(0, 'unkeyed'));
		const unkeyed = createHash('sha512').update(payload).digest('hex');
		assert.equal((await post(shim.base, 'eversend', payload, { 'x-eversend-signature': unkeyed })).status, 401);
		const broken = '{"transactionId":"EVS0",';
		const res = await post(shim.base, 'eversend', broken,
			{ 'x-eversend-signature': createHmac('sha512', eversendSecret).update(broken).digest('hex') });
		assert.deepEqual([res.status, lastRejection('eversend')], [400, 'invalid|invalid_json']);
	});

	test('hmac as Paystack: x-paystack-signature, HMAC-SHA512, id $.event:$.data.id, type $.event', async () => {
		const make = (n, text) => ({ event: 'charge.success', data: { id: Number(`${process.pid}${n}`), reference: `ref ${text.slice(0, 20)}`,
			amount: 10000, currency: 'NGN', customer: { email: 'donor@example.org', metadata: { note: text } } } });
		for (const payload of jsonPayloads(make)) {
			const id = `charge.success:${JSON.parse(payload).data.id}`;
			const signature = createHmac('sha512', paystackSecret).update(payload).digest('hex');
			const res = await post(shim.base, 'paystack', payload, { 'x-paystack-signature': signature });
			assert.equal(res.status, 200, `${res.text} for ${payload.slice(0, 60)}`);
			assert.equal(res.json.event_id, id);
			assert.equal(stored('paystack', id), `${sha256(payload)}|charge.success|t`);
			const tampered = await post(shim.base, 'paystack', payload.replace('10000', '10001'), { 'x-paystack-signature': signature });
			assert.equal(tampered.status, 401);
		}
		// no data.id (an empty object): the event is named by the SHA-256 of its body
		for (const payload of ['{}', '{"event":"subscription.create","data":{}}']) {
			const signature = createHmac('sha512', paystackSecret).update(payload).digest('hex');
			const res = await post(shim.base, 'paystack', payload, { 'x-paystack-signature': signature });
			assert.deepEqual([res.status, res.json.event_id], [200, `sha256:${sha256(payload)}`]);
			const again = await post(shim.base, 'paystack', payload, { 'x-paystack-signature': signature });
			assert.equal(again.json.outcome, 'duplicate');
		}
		const broken = '{"event":"charge.success","data":{"id":1}';
		const res = await post(shim.base, 'paystack', broken,
			{ 'x-paystack-signature': createHmac('sha512', paystackSecret).update(broken).digest('hex') });
		assert.deepEqual([res.status, res.json.outcome], [400, 'invalid']);
	});

	test('hmac as GitHub: X-Hub-Signature-256 sha256=, id X-GitHub-Delivery, type X-GitHub-Event', async () => {
		const make = (n, text) => ({ action: 'created', zen: text, hook_id: n, repository: { full_name: 'clinic/donations' } });
		for (const payload of jsonPayloads(make)) {
			const delivery = randomUUID();
			const headers = {
				'x-hub-signature-256': `sha256=${createHmac('sha256', githubSecret).update(payload).digest('hex')}`,
				'x-github-event': 'sponsorship',
				'x-github-delivery': delivery,
			};
			const res = await post(shim.base, 'github', payload, headers);
			assert.equal(res.status, 200, `${res.text} for ${payload.slice(0, 60)}`);
			assert.equal(res.json.event_id, delivery);
			assert.equal(stored('github', delivery), `${sha256(payload)}|sponsorship|t`);
			// GitHub redelivers with the same delivery id
			assert.equal((await post(shim.base, 'github', payload, headers)).json.outcome, 'duplicate');
			const tampered = await post(shim.base, 'github', `${payload}\n`, headers);
			assert.equal(tampered.status, 401);
		}
		// the published vector verifies over HTTP too; its body is not JSON, so it is invalid, not rejected
		cluster.psql(`SELECT payments.add_secret('github', 'It''s a Secret to Everybody')`);
		const vector = await post(shim.base, 'github', 'Hello, World!', {
			'x-hub-signature-256': 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17',
			'x-github-delivery': randomUUID(), 'content-type': 'text/plain',
		});
		assert.deepEqual([vector.status, lastRejection('github')], [400, 'invalid|invalid_json']);
		const wrongPrefix = await post(shim.base, 'github', '{}', {
			'x-hub-signature-256': `sha1=${createHmac('sha1', githubSecret).update('{}').digest('hex')}`,
		});
		assert.deepEqual([wrongPrefix.status, lastRejection('github')], [401, 'rejected|malformed_header']);
	});
});
