// Conformance over real HTTP: many generated payloads signed by the providers' official SDKs
// (stripe, standardwebhooks, svix) or by the published scheme with Node's crypto where no SDK
// signs (Meta, Standard Webhooks v1a), so that a mismatch in byte handling cannot hide.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import Stripe from 'stripe';
import { Webhook as StandardWebhook } from 'standardwebhooks';
import { Webhook as SvixWebhook } from 'svix';
import { Cluster, Shim, post } from './harness.mjs';

const stripe = new Stripe('sk_test_not_used_offline');
const sha256 = (s) => createHash('sha256').update(s).digest('hex');

// Payload bodies that stress byte handling: unicode, emoji, escapes, sizes, whitespace.
function* payloads(idPrefix) {
	const texts = ['', 'plain ascii', 'Tatenda Moyo — ZiG 50', 'Zoë Ŋgũgĩ', '🙏🏾💚🇿🇼', '中文 العربية עברית',
		'quote " backslash \\ slash /', 'tab\t nl\n cr\r', '\u0001\u001f control', '\u2028\u2029 separators',
		'x'.repeat(300 * 1024)];
	let n = 0;
	for (const text of texts) {
		n += 1;
		yield JSON.stringify({ id: `${idPrefix}_${n}`, type: 'test.event', data: { text } });
	}
	// hand-written JSON with escaped unicode, odd spacing and number forms, as senders may emit
	yield `{"id":"${idPrefix}_esc","type":"test.event","data":{"s":"\\u00e9\\ud83d\\ude00\\/","n":1.50,"e":1E3}}`;
	yield `  {\n\t"id" : "${idPrefix}_ws" , "type":"test.event" }\n`;
	yield `{"id":"${idPrefix}_empty","data":{}}`;
}

let cluster;
let shim;

function storedHash(provider, eventId) {
	return cluster.psqlVars("SELECT encode(sha256(body), 'hex') FROM payments.events WHERE provider = :'p' AND event_id = :'e'",
		{ p: provider, e: eventId });
}

describe('conformance with the official SDKs', () => {
	const stripeSecret = `whsec_${randomBytes(24).toString('hex')}`;
	// the standard secret without its base64 padding, as the SDKs take it too; svix's with it
	const standardSecret = `whsec_${randomBytes(32).toString('base64').replace(/=+$/, '')}`;
	const svixSecret = `whsec_${randomBytes(32).toString('base64')}`;
	const appSecret = randomBytes(16).toString('hex');
	const ed = generateKeyPairSync('ed25519');
	const edPublic = `whpk_${ed.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32).toString('base64')}`;

	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`
			SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'s1');
			SELECT payments.register_provider('std', 'standard');
			SELECT payments.add_secret('std', :'s2');
			SELECT payments.add_secret('std', :'pk');
			SELECT payments.register_provider('svix', 'standard');
			SELECT payments.add_secret('svix', :'s3');
			SELECT payments.register_provider('wa', 'meta', '{"verify_token": "e2e-verify-token"}');
			SELECT payments.add_secret('wa', :'s4');`,
		{ s1: stripeSecret, s2: standardSecret, pk: edPublic, s3: svixSecret, s4: appSecret });
		shim = new Shim(cluster.dsn);
		await shim.start();
	});

	after(async () => {
		const exit = shim ? await shim.stop() : { code: 0 };
		cluster?.destroy();
		assert.deepEqual(shim?.sanitizerReports() ?? [], [], 'sanitizer reports in the shim');
		assert.equal(exit.code, 0);
	});

	test('stripe: generateTestHeaderString', async () => {
		for (const payload of payloads('evt_conf')) {
			const header = stripe.webhooks.generateTestHeaderString({ payload, secret: stripeSecret });
			const res = await post(shim.base, 'stripe', payload, { 'stripe-signature': header });
			assert.equal(res.status, 200, `${res.text} for ${payload.slice(0, 60)}`);
			assert.equal(storedHash('stripe', JSON.parse(payload).id), sha256(payload));
			const tampered = await post(shim.base, 'stripe', `${payload} `, { 'stripe-signature': header });
			assert.equal(tampered.status, 401);
		}
	});

	test('stripe: thin events (v2.core.event, created an ISO 8601 string) of the provider\'s mode are ignored', async () => {
		// an event destination's thin events (stripe-node's V2 Core Event: created is a string)
		for (const type of ['v2.core.event_destination.ping', 'v1.billing.meter.error_report_triggered']) {
			const id = `evt_thin_${type.replaceAll('.', '_')}`;
			const payload = JSON.stringify({
				id, object: 'v2.core.event', type, livemode: true, created: '2025-10-30T06:20:52.246Z',
				related_object: { id: 'ed_61RM8ltWcTW4mbsxf16RJyfa2xSQLHJJh1sxm7H0KVT6', type: 'v2.core.event_destination',
					url: '/v2/core/event_destinations/ed_61RM8ltWcTW4mbsxf16RJyfa2xSQLHJJh1sxm7H0KVT6' },
				reason: null,
			});
			const header = stripe.webhooks.generateTestHeaderString({ payload, secret: stripeSecret });
			const res = await post(shim.base, 'stripe', payload, { 'stripe-signature': header });
			assert.deepEqual([res.status, res.json.outcome], [200, 'ignored'], res.text);
			assert.equal(cluster.psqlVars("SELECT state || '/' || coalesce(last_error, '') FROM payments.events WHERE provider = 'stripe' AND event_id = :'e'",
				{ e: id }), 'ignored/');
		}
	});

	test('standardwebhooks: sign, and v1a signatures with an Ed25519 public key', async () => {
		let n = 0;
		for (const payload of payloads('std')) {
			n += 1;
			const id = `msg_std_${n}`;
			const now = new Date();
			const ts = String(Math.floor(now.getTime() / 1000));
			const v1 = new StandardWebhook(standardSecret).sign(id, now, payload);
			const res = await post(shim.base, 'std', payload,
				{ 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': v1 });
			assert.equal(res.status, 200, res.text);
			assert.equal(storedHash('std', id), sha256(payload));
			// the same message signed with Ed25519 only (v1a)
			const v1a = `v1a,${sign(null, Buffer.from(`${id}_a.${ts}.${payload}`), ed.privateKey).toString('base64')}`;
			const resA = await post(shim.base, 'std', payload,
				{ 'webhook-id': `${id}_a`, 'webhook-timestamp': ts, 'webhook-signature': v1a });
			assert.equal(resA.status, 200, resA.text);
			const tampered = await post(shim.base, 'std', `${payload} `,
				{ 'webhook-id': `${id}_t`, 'webhook-timestamp': ts, 'webhook-signature': v1a });
			assert.equal(tampered.status, 401);
		}
	});

	test('svix: sign, with svix-* headers', async () => {
		let n = 0;
		for (const payload of payloads('svix')) {
			n += 1;
			const id = `msg_svix_${n}`;
			const now = new Date();
			const signature = new SvixWebhook(svixSecret).sign(id, now, payload);
			const res = await post(shim.base, 'svix', payload, {
				'svix-id': id, 'svix-timestamp': String(Math.floor(now.getTime() / 1000)), 'svix-signature': signature,
			});
			assert.equal(res.status, 200, res.text);
			assert.equal(storedHash('svix', id), sha256(payload));
		}
	});

	test('meta: X-Hub-Signature-256 over batches; each message and status stored once', async () => {
		let n = 0;
		for (const text of ['Hi', 'Ndinoda kupa 🙏🏾', 'é'.repeat(5000), '\u00e4 escaped']) {
			n += 1;
			const body = JSON.stringify({
				object: 'whatsapp_business_account',
				entry: [{ id: '1', changes: [{ field: 'messages', value: {
					metadata: { phone_number_id: '106' },
					messages: [{ from: '263771234567', id: `wamid.IN${n}`, timestamp: '1718000000', type: 'text', text: { body: text } }],
					statuses: [{ id: `wamid.OUT${n}`, status: 'delivered', timestamp: '1718000001', recipient_id: '263771234567' }],
				} }] }],
			});
			const signature = `sha256=${createHmac('sha256', appSecret).update(body).digest('hex')}`;
			const res = await post(shim.base, 'wa', body, { 'x-hub-signature-256': signature });
			assert.deepEqual([res.status, res.json.outcome], [200, 'ignored'], res.text);
			const again = await post(shim.base, 'wa', body, { 'x-hub-signature-256': signature });
			assert.deepEqual([again.status, again.json.outcome], [200, 'duplicate']);
			assert.equal(cluster.psqlVars(
				"SELECT string_agg(event_id, ',' ORDER BY event_id) FROM payments.events WHERE provider = 'wa' AND event_id LIKE :'p'",
				{ p: `wamid.%${n}%` }), `wamid.IN${n},wamid.OUT${n}:delivered`);
			const wrong = await post(shim.base, 'wa', body, { 'x-hub-signature-256': signature.replace(/.$/, (c) => (c === '0' ? '1' : '0')) });
			assert.equal(wrong.status, 401);
		}
	});

	test('meta: the GET subscription handshake through the shim', async () => {
		const get = (provider, query) => fetch(`${shim.base}/webhooks/${provider}?${query}`);
		const ok = await get('wa', 'hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=e2e-verify-token');
		assert.equal(ok.status, 200);
		assert.equal(await ok.text(), '1158201444');
		assert.match(ok.headers.get('content-type'), /^text\/plain/);
		const wrong = await get('wa', 'hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=nope');
		assert.equal(wrong.status, 403);
		const missing = await get('wa', 'hub.challenge=1');
		assert.equal(missing.status, 403);
		const encoded = await get('wa', 'hub.mode=subscribe&hub.challenge=12%33&hub.verify_token=e2e%2Dverify%2Dtoken');
		assert.deepEqual([encoded.status, await encoded.text()], [200, '123']);
		const notMeta = await get('stripe', 'hub.mode=subscribe&hub.challenge=1&hub.verify_token=e2e-verify-token');
		assert.equal(notMeta.status, 404);
		const unknown = await get('nobody', 'hub.mode=subscribe&hub.challenge=1&hub.verify_token=x');
		assert.equal(unknown.status, 404);
		const put = await fetch(`${shim.base}/webhooks/wa`, { method: 'PUT', body: 'x' });
		assert.equal(put.status, 405);
	});
});
