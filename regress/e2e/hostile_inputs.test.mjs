// Hostile inputs, one table row each, sent as raw bytes to the real shim in front of a real
// cluster: invalid UTF-8, NUL bytes, huge bodies, deep nesting, header floods, header
// injection, numbers out of range, unknown currencies, wrong content types, truncated and
// oversized signature headers, for every kind.  Each row has its expected 4xx, and no answer
// is ever a 5xx; afterwards the shim is still up and valid deliveries of every kind work.
//
// The content type is not a row of its own: the shim and the kinds read the bytes, never the
// Content-Type header, so a body is judged by what it is (a form sent to a JSON kind, JSON sent
// to Paynow), whatever it claims to be.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { connect } from 'node:net';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { Cluster, Shim, request, sleep, freePort, PG_BIN } from './harness.mjs';

const secrets = {
	stripe: `whsec_${randomBytes(16).toString('hex')}`,
	standard: `whsec_${randomBytes(32).toString('base64')}`,
	meta: 'meta_app_secret_hostile',
	paynow: '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977',
	eversend: 'eversend_secret_hostile',
	hmac: 'hmac_secret_hostile',
};

let cluster;
let shim;
let seq = 0;
let refusedByDatabase = 0;	// answers of payments.ingest that refused the delivery
// PayPal's allowed certificate host: a local port nothing listens on, so that a certificate
// fetched where none may be would show (as 503: the host cannot be reached)
let certHost;

const now = () => Math.floor(Date.now() / 1000);
const hmacHex = (alg, key, ...parts) => parts.reduce((h, p) => h.update(p), createHmac(alg, key)).digest('hex');
const uniqueId = (prefix) => `${prefix}_${process.pid}_${++seq}`;

// Signature headers for a body (a Buffer) of each kind, made as the providers make them.
const sign = {
	stripe: (body) => {
		const t = now();
		return { 'Stripe-Signature': `t=${t},v1=${hmacHex('sha256', secrets.stripe, `${t}.`, body)}` };
	},
	standard: (body) => {
		const id = uniqueId('msg');
		const at = new Date();
		// the SDK signs strings; these bodies may not be UTF-8, so sign the bytes the same way
		const key = Buffer.from(secrets.standard.slice('whsec_'.length), 'base64');
		const ts = Math.floor(at.getTime() / 1000);
		const sig = createHmac('sha256', key).update(`${id}.${ts}.`).update(body).digest('base64');
		return { 'webhook-id': id, 'webhook-timestamp': String(ts), 'webhook-signature': `v1,${sig}` };
	},
	meta: (body) => ({ 'X-Hub-Signature-256': `sha256=${hmacHex('sha256', secrets.meta, body)}` }),
	eversend: (body) => ({ 'X-Eversend-Signature': hmacHex('sha512', secrets.eversend, body) }),
	hmac: (body) => ({ 'X-Signature': `sha256=${hmacHex('sha256', secrets.hmac, body)}` }),
};

// A Paynow status update: the values in order, then the upper-case SHA-512 hash with the key.
function paynowForm(fields) {
	const hash = createHash('sha512').update(Object.values(fields).join('') + secrets.paynow.toLowerCase())
		.digest('hex').toUpperCase();
	return Buffer.from(new URLSearchParams({ ...fields, hash }).toString());
}

const stripeEvent = (extra = {}) => Buffer.from(JSON.stringify({ id: uniqueId('evt'), object: 'event',
	type: 'charge.succeeded', created: now(), data: { object: { id: uniqueId('ch'), amount: 500, currency: 'usd' } },
	...extra }));
const paymentIntent = (amount, currency) => Buffer.from(JSON.stringify({ id: uniqueId('evt'), object: 'event',
	type: 'payment_intent.succeeded', created: now(),
	data: { object: { id: uniqueId('pi'), object: 'payment_intent', amount, currency } } }));
const paypalHeaders = (over = {}) => ({
	'paypal-transmission-id': 'dfb3be50-fd74-11e4-8bf3-77339302725b',
	'paypal-transmission-time': '2015-05-18T15:45:13Z',
	'paypal-transmission-sig': randomBytes(256).toString('base64'),
	'paypal-cert-url': `https://${certHost}/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77`,
	'paypal-auth-algo': 'SHA256withRSA',
	...over,
});

// Bytes of an HTTP/1.1 POST: headers as [name, value] pairs (values may be Buffers, so that
// any byte can be sent), Content-Length unless given.
function httpPost(provider, headers, body, { contentLength = body.length } = {}) {
	const lines = [Buffer.from(`POST /webhooks/${provider} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n`)];
	if (contentLength !== null) lines.push(Buffer.from(`Content-Length: ${contentLength}\r\n`));
	for (const [name, value] of Object.entries(headers)) {
		lines.push(Buffer.from(`${name}: `), Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1'), Buffer.from('\r\n'));
	}
	lines.push(Buffer.from('\r\n'));
	return [Buffer.concat(lines), body];
}

const json = { 'Content-Type': 'application/json' };
const form = { 'Content-Type': 'application/x-www-form-urlencoded' };
const invalidUtf8 = Buffer.from([0x7b, 0x22, 0x69, 0x64, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0xff, 0xfe, 0x22, 0x7d]); // {"id":"\xc3(\xff\xfe"}
const deepJson = (depth) => Buffer.from(`{"id":"evt_deep","a":${'['.repeat(depth)}${']'.repeat(depth)}}`);

// The table: kind (provider name), what is sent, the expected status, and the reason
// payments.rejections records (keyed by the X-Request-ID each row is sent with) when
// payments.ingest refuses it; rows refused by the shim itself, and those stored, leave none.
// check(body), where given, checks what was stored.
const rows = [
	// bodies that are not text or not JSON, correctly signed: 400
	{ name: 'stripe: invalid UTF-8 body, signed', provider: 'stripe', status: 400, reason: 'invalid_json',
		make: () => ({ body: invalidUtf8, headers: { ...json, ...sign.stripe(invalidUtf8) } }) },
	{ name: 'stripe: raw NUL byte in the body, signed', provider: 'stripe', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from('{"id":"evt_nul\u0000x","type":"t"}'); return { body: b, headers: { ...json, ...sign.stripe(b) } }; } },
	{ name: 'stripe: \\u0000 escape in the body, signed', provider: 'stripe', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from('{"id":"evt_nul\\u0000","type":"t"}'); return { body: b, headers: { ...json, ...sign.stripe(b) } }; } },
	{ name: 'stripe: JSON nested 100,000 deep, signed', provider: 'stripe', status: 400, reason: 'invalid_json',
		make: () => { const b = deepJson(100000); return { body: b, headers: { ...json, ...sign.stripe(b) } }; } },
	{ name: 'stripe: number beyond numeric (1e1000000), signed', provider: 'stripe', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from(`{"id":"${uniqueId('evt')}","type":"t","amount":1e1000000}`); return { body: b, headers: { ...json, ...sign.stripe(b) } }; } },
	{ name: 'stripe: a form body (wrong content), signed', provider: 'stripe', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from('id=evt_1&type=charge.succeeded'); return { body: b, headers: { ...form, ...sign.stripe(b) } }; } },
	{ name: 'stripe: a JSON array, signed', provider: 'stripe', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from('[{"id":"evt_1"}]'); return { body: b, headers: { ...json, ...sign.stripe(b) } }; } },
	{ name: 'stripe: event id of 10,000 characters, signed', provider: 'stripe', status: 400, reason: 'missing_event_id',
		make: () => { const b = Buffer.from(JSON.stringify({ id: 'e'.repeat(10000), type: 't' })); return { body: b, headers: { ...json, ...sign.stripe(b) } }; } },
	// authentic (correctly signed) events with values the state machine cannot take are stored,
	// never refused: the provider would retry a 4xx for days, and the event would be lost
	{ name: 'stripe: unknown currency, signed', provider: 'stripe', status: 200, outcome: 'stored',
		make: () => { const b = paymentIntent(500, 'xyz'); return { body: b, headers: { ...json, ...sign.stripe(b) } }; } },
	{ name: 'stripe: amount beyond bigint, signed (no Stripe amount has 31 digits)', provider: 'stripe', status: 200, outcome: 'stored',
		make: () => { const b = paymentIntent(1e30, 'usd'); return { body: b, headers: { ...json, ...sign.stripe(b) } }; },
		// stored byte for byte, pending with the reason; no payment is made of it
		check: (body) => {
			const event = JSON.parse(body);
			assert.equal(cluster.psqlVars(`SELECT concat_ws('|', e.state, encode(sha256(e.body), 'hex'), e.last_error,
					(SELECT count(*) FROM payments.payments p WHERE p.provider = 'stripe' AND p.provider_ref = :'pi'))
				FROM payments.events e WHERE e.provider = 'stripe' AND e.event_id = :'e'`,
			{ e: event.id, pi: event.data.object.id }), `pending|${createHash('sha256').update(body).digest('hex')}|` +
				"Stripe's amount must be a whole number of minor units of at most 15 digits, not \"1000000000000000000000000000000\"|0");
		} },
	// the same hostile numbers, unsigned: refused at the signature, 401
	{ name: 'stripe: amount beyond bigint, unsigned', provider: 'stripe', status: 401, reason: 'missing_header',
		make: () => ({ body: paymentIntent(1e30, 'usd'), headers: json }) },
	{ name: 'stripe: unknown currency, bad signature', provider: 'stripe', status: 401, reason: 'signature_mismatch',
		make: () => ({ body: paymentIntent(500, 'xyz'), headers: { ...json, 'Stripe-Signature': `t=${now()},v1=${'0'.repeat(64)}` } }) },
	// signature headers: truncated, oversized, malformed
	{ name: 'stripe: truncated signature header', provider: 'stripe', status: 401, reason: 'malformed_header',
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'Stripe-Signature': sign.stripe(b)['Stripe-Signature'].slice(0, 40) } }; } },
	{ name: 'stripe: signature header of 12 KB (under the header cap)', provider: 'stripe', status: 401, reason: 'signature_mismatch',
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'Stripe-Signature': `t=${now()}${`,v1=${'a'.repeat(64)}`.repeat(180)}` } }; } },
	{ name: 'stripe: signature header of 20 KB (over the header cap)', provider: 'stripe', status: 431,
		make: () => ({ body: Buffer.alloc(0), headers: { ...json, 'Stripe-Signature': `t=${now()},v1=${'a'.repeat(20000)}` } }) },
	{ name: 'stripe: signature header of 40 KB (over the memory of a connection)', provider: 'stripe', status: 431, overflow: true,
		make: () => ({ body: Buffer.alloc(0), headers: { ...json, 'Stripe-Signature': `t=${now()},v1=${'a'.repeat(40000)}` } }) },
	{ name: 'stripe: timestamp of 40 digits', provider: 'stripe', status: 401, reason: 'malformed_header',
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'Stripe-Signature': `t=${'9'.repeat(40)},v1=${'a'.repeat(64)}` } }; } },
	{ name: 'stripe: no signature header', provider: 'stripe', status: 401, reason: 'missing_header',
		make: () => ({ body: stripeEvent(), headers: json }) },
	// the HTTP layer: sizes, header floods, bytes that do not belong in headers
	{ name: 'stripe: 10 MB body (over the 1 MB cap)', provider: 'stripe', status: 413,
		make: () => { const b = Buffer.alloc(10 * 1024 * 1024, 0x20); return { body: b, headers: json }; } },
	{ name: 'stripe: 10,000 headers', provider: 'stripe', status: 431, overflow: true,
		make: () => ({ body: stripeEvent(), headers: Object.fromEntries(Array.from({ length: 10000 }, (_, i) => [`X-H${i}`, 'v'])) }) },
	// many headers within a connection's memory (libmicrohttpd keeps about 56 bytes for each, in
	// the 32 KB it has) are each read, passed on and stored with the event
	{ name: 'stripe: 250 headers, signed', provider: 'stripe', status: 200,
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, ...sign.stripe(b),
			...Object.fromEntries(Array.from({ length: 250 }, (_, i) => [`X-H${i}`, 'v'])) } }; },
		check: (b) => assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.events e, jsonb_object_keys(e.headers) k WHERE e.body = convert_to(:'b', 'UTF8') AND k LIKE 'x-h%'",
			{ b: b.toString() }), '250') },
	// libmicrohttpd ends a header value at a NUL byte: what follows is never seen, so a NUL
	// inside the signature leaves a truncated signature
	{ name: 'stripe: NUL byte inside the signature header', provider: 'stripe', status: 401, reason: 'malformed_header',
		make: () => { const b = stripeEvent(); const sig = sign.stripe(b)['Stripe-Signature']; return { body: b, headers: { ...json,
			'Stripe-Signature': Buffer.concat([Buffer.from(sig.slice(0, 30)), Buffer.from([0]), Buffer.from(sig.slice(30))]) } }; } },
	// control characters in headers are refused by the shim (RFC 9110 section 5.5), even when
	// the delivery is otherwise correctly signed
	{ name: 'stripe: CR header injection in another header, signed', provider: 'stripe', status: 400,
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'X-Note': 'a\rX-Injected: 1', ...sign.stripe(b) } }; } },
	{ name: 'stripe: CR injection in the signature header, signed', provider: 'stripe', status: 400,
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'Stripe-Signature': `${sign.stripe(b)['Stripe-Signature']}\rX-Injected: 1` } }; } },
	{ name: 'stripe: control character (0x01) in a header, signed', provider: 'stripe', status: 400,
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'X-Note': 'a\u0001b', ...sign.stripe(b) } }; } },
	{ name: 'stripe: bare LF in a header (a line without a colon)', provider: 'stripe', status: 400,
		make: () => ({ body: stripeEvent(), headers: { ...json, 'Stripe-Signature': `t=${now()}\nv1=${'a'.repeat(64)}` } }) },
	// so are header names that are not tokens (RFC 9110 section 5.1; whitespace before the colon is
	// kept in the name by libmicrohttpd, where it would escape every check by name)
	{ name: 'stripe: header name with a space (not the signature header)', provider: 'stripe', status: 400,
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'Stripe Signature': sign.stripe(b)['Stripe-Signature'] } }; } },
	{ name: 'stripe: a space before the colon (Authorization :), signed', provider: 'stripe', status: 400,
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, 'Authorization ': 'Bearer hostile', ...sign.stripe(b) } }; } },

	// Standard Webhooks
	{ name: 'standard: invalid UTF-8 body, signed', provider: 'standard', status: 400, reason: 'invalid_json',
		make: () => ({ body: invalidUtf8, headers: { ...json, ...sign.standard(invalidUtf8) } }) },
	{ name: 'standard: truncated v1 signature', provider: 'standard', status: 401, reason: 'malformed_header',
		make: () => { const b = stripeEvent(); const h = sign.standard(b); return { body: b, headers: { ...json, ...h, 'webhook-signature': h['webhook-signature'].slice(0, 20) } }; } },
	{ name: 'standard: v1a of garbage', provider: 'standard', status: 401, reason: 'malformed_header',
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, ...sign.standard(b), 'webhook-signature': `v1a,${'!'.repeat(88)}` } }; } },
	{ name: 'standard: 5,000 signature items', provider: 'standard', status: 401, reason: 'no_signature',
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, ...sign.standard(b), 'webhook-signature': `v2,x `.repeat(2000) } }; } },
	{ name: 'standard: webhook-id with a dot', provider: 'standard', status: 401, reason: 'malformed_header',
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, ...sign.standard(b), 'webhook-id': 'msg.1' } }; } },
	{ name: 'standard: timestamp out of range', provider: 'standard', status: 401, reason: 'malformed_header',
		make: () => { const b = stripeEvent(); return { body: b, headers: { ...json, ...sign.standard(b), 'webhook-timestamp': '-1' } }; } },

	// Meta
	{ name: 'meta: invalid UTF-8 body, signed', provider: 'meta', status: 400, reason: 'invalid_json',
		make: () => ({ body: invalidUtf8, headers: { ...json, ...sign.meta(invalidUtf8) } }) },
	{ name: 'meta: upper-case hex', provider: 'meta', status: 401, reason: 'malformed_header',
		make: () => { const b = Buffer.from('{"object":"whatsapp_business_account","entry":[]}'); return { body: b, headers: { ...json, 'X-Hub-Signature-256': sign.meta(b)['X-Hub-Signature-256'].toUpperCase() } }; } },
	{ name: 'meta: sha1= signature', provider: 'meta', status: 401, reason: 'malformed_header',
		make: () => { const b = Buffer.from('{}'); return { body: b, headers: { ...json, 'X-Hub-Signature-256': `sha1=${hmacHex('sha1', secrets.meta, b)}` } }; } },
	{ name: 'meta: a message whose id is not a string, signed', provider: 'meta', status: 400, reason: 'missing_event_id',
		make: () => { const b = Buffer.from(JSON.stringify({ object: 'whatsapp_business_account', entry: [{ id: '1', changes: [{ field: 'messages', value: { messages: [{ id: 12345678901234567890, type: 'text' }] } }] }] })); return { body: b, headers: { ...json, ...sign.meta(b) } }; } },
	{ name: 'meta: deeply nested entry, signed', provider: 'meta', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from(`{"object":"x","entry":${'['.repeat(50000)}${']'.repeat(50000)}}`); return { body: b, headers: { ...json, ...sign.meta(b) } }; } },

	// Paynow (form bodies)
	{ name: 'paynow: a JSON body (wrong content)', provider: 'paynow', status: 400, reason: 'invalid_form',
		make: () => ({ body: Buffer.from('{"reference":"INV-1","status":"Paid"}'), headers: json }) },
	{ name: 'paynow: %-escape without two hex digits (kept as it is), a hash of two digits', provider: 'paynow', status: 401,
		reason: 'malformed_hash', make: () => ({ body: Buffer.from('reference=INV%2&status=Paid&hash=AB'), headers: form }) },
	{ name: 'paynow: %00 (a NUL) in a value', provider: 'paynow', status: 400, reason: 'invalid_form',
		make: () => ({ body: Buffer.from('reference=INV%00&status=Paid&hash=AB'), headers: form }) },
	{ name: 'paynow: invalid UTF-8 once decoded', provider: 'paynow', status: 400, reason: 'invalid_form',
		make: () => ({ body: Buffer.from('reference=%C3%28&status=Paid&hash=AB'), headers: form }) },
	{ name: 'paynow: hash and Hash both present', provider: 'paynow', status: 400, reason: 'invalid_form',
		make: () => ({ body: Buffer.from('reference=INV-1&hash=AB&Hash=CD'), headers: form }) },
	{ name: 'paynow: 1,001 fields', provider: 'paynow', status: 400, reason: 'invalid_form',
		make: () => ({ body: Buffer.from(Array.from({ length: 1001 }, (_, i) => `f${i}=v`).join('&')), headers: form }) },
	{ name: 'paynow: no hash field', provider: 'paynow', status: 401, reason: 'missing_hash',
		make: () => ({ body: Buffer.from('reference=INV-1&status=Paid'), headers: form }) },
	{ name: 'paynow: truncated hash', provider: 'paynow', status: 401, reason: 'malformed_hash',
		make: () => { const b = paynowForm({ reference: 'INV-T', amount: '1.00', status: 'Paid' }).toString(); return { body: Buffer.from(b.slice(0, -10)), headers: form }; } },
	{ name: 'paynow: amount beyond numeric, unknown status, signed', provider: 'paynow', status: 200, outcome: 'ignored',
		make: () => ({ body: paynowForm({ reference: uniqueId('INV'), paynowreference: '1', amount: `9e${'9'.repeat(20)}`, status: 'Exploded',
			pollurl: 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=x' }), headers: form }),
		// stored byte for byte with its amount as sent, as an event that changes nothing: no payment
		check: (body) => {
			const fields = new URLSearchParams(body.toString());
			assert.equal(cluster.psqlVars(`SELECT concat_ws('|', state, event_type, encode(sha256(body), 'hex'), payload ->> 'amount')
				FROM payments.events WHERE provider = 'paynow' AND event_id = :'e'`, { e: `${fields.get('paynowreference')}:Exploded` }),
			`ignored|Exploded|${createHash('sha256').update(body).digest('hex')}|${fields.get('amount')}`);
			assert.equal(cluster.psql("SELECT count(*) FROM payments.payments WHERE provider = 'paynow'"), '0');
		} },

	// Eversend
	{ name: 'eversend: sha256= prefix on a sha512 provider', provider: 'eversend', status: 401, reason: 'malformed_header',
		make: () => { const b = Buffer.from('{"transactionId":"T1","status":"SUCCESSFUL"}'); return { body: b, headers: { ...json, 'X-Eversend-Signature': `sha256=${hmacHex('sha256', secrets.eversend, b)}` } }; } },
	{ name: 'eversend: hex with a non-hex character', provider: 'eversend', status: 401, reason: 'malformed_header',
		make: () => { const b = Buffer.from('{}'); return { body: b, headers: { ...json, 'X-Eversend-Signature': `${'a'.repeat(127)}g` } }; } },
	{ name: 'eversend: invalid JSON, signed', provider: 'eversend', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from('{"transactionId":'); return { body: b, headers: { ...json, ...sign.eversend(b) } }; } },

	// generic hmac
	{ name: 'hmac: wrong prefix', provider: 'hmac', status: 401, reason: 'malformed_header',
		make: () => { const b = Buffer.from('{"event":"x"}'); return { body: b, headers: { ...json, 'X-Signature': `sha512=${hmacHex('sha256', secrets.hmac, b)}` } }; } },
	{ name: 'hmac: base64 where hex is configured', provider: 'hmac', status: 401, reason: 'malformed_header',
		make: () => { const b = Buffer.from('{"event":"x"}'); return { body: b, headers: { ...json, 'X-Signature': `sha256=${createHmac('sha256', secrets.hmac).update(b).digest('base64')}` } }; } },
	{ name: 'hmac: a JSON string, signed', provider: 'hmac', status: 400, reason: 'invalid_json',
		make: () => { const b = Buffer.from('"just a string"'); return { body: b, headers: { ...json, ...sign.hmac(b) } }; } },

	// PayPal's header set: everything here is refused before any certificate is fetched
	{ name: 'paypal: no headers', provider: 'paypal', status: 401, reason: 'missing_header',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: json }) },
	{ name: 'paypal: SHA1withRSA', provider: 'paypal', status: 401, reason: 'unsupported_algorithm',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: { ...json, ...paypalHeaders({ 'paypal-auth-algo': 'SHA1withRSA' }) } }) },
	{ name: 'paypal: transmission id with "|"', provider: 'paypal', status: 401, reason: 'malformed_header',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: { ...json, ...paypalHeaders({ 'paypal-transmission-id': 'a|b' }) } }) },
	{ name: 'paypal: signature not base64', provider: 'paypal', status: 401, reason: 'malformed_header',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: { ...json, ...paypalHeaders({ 'paypal-transmission-sig': '***' }) } }) },
	{ name: 'paypal: signature of 4 KB', provider: 'paypal', status: 401, reason: 'malformed_header',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: { ...json, ...paypalHeaders({ 'paypal-transmission-sig': randomBytes(3000).toString('base64') }) } }) },
	{ name: 'paypal: cert URL over http', provider: 'paypal', status: 401, reason: 'cert_url_not_allowed',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: { ...json, ...paypalHeaders({ 'paypal-cert-url': `http://${certHost}/v1/notifications/certs/CERT-1` }) } }) },
	// found by fuzz/fuzz_paypal_cert: libcurl reads https:/host as https://host
	{ name: 'paypal: cert URL "https:/" with one slash', provider: 'paypal', status: 401, reason: 'cert_url_not_allowed',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: { ...json, ...paypalHeaders({ 'paypal-cert-url': `https:/${certHost}/v1/notifications/certs/CERT-1` }) } }) },
	{ name: 'paypal: cert URL on another host', provider: 'paypal', status: 401, reason: 'cert_url_not_allowed',
		make: () => ({ body: Buffer.from('{"id":"WH-1"}'), headers: { ...json, ...paypalHeaders({ 'paypal-cert-url': 'https://api.paypal.com.evil.example/v1/notifications/certs/CERT-1' }) } }) },
];

// Sends the request head, gives the shim a moment to answer early (413 on Content-Length, 431),
// and only then the body, in 16 KB pieces, stopping once an answer has come.  A client that kept
// writing after the shim answered and closed could lose the answer to the connection reset.
// Resolves with what the shim sent.
function sendUntilAnswered(port, [head, body], timeoutMs = 20000) {
	return new Promise((resolve) => {
		const socket = connect(port, '127.0.0.1');
		let data = '';
		const done = () => { clearTimeout(timer); socket.destroy(); resolve(data); };
		const timer = setTimeout(done, timeoutMs);
		socket.setEncoding('latin1');
		socket.on('data', (d) => { data += d; });
		socket.on('error', () => { /* reset after an early answer */ });
		socket.on('close', done);
		socket.on('connect', async () => {
			socket.write(head);
			for (let waited = 0; waited < 300 && data === '' && !socket.destroyed; waited += 10) await sleep(10);
			for (let at = 0; at < body.length && data === '' && !socket.destroyed; at += 16384) {
				if (!socket.write(body.subarray(at, at + 16384))) await new Promise((r) => socket.once('drain', r));
			}
		});
	});
}

function statusOf(answer) {
	const m = /^HTTP\/1\.[01] (\d{3}) /.exec(answer);
	return m ? Number(m[1]) : null;
}

describe('hostile inputs', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		certHost = `127.0.0.1:${await freePort()}`;
		cluster.psqlVars(`
			SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'stripe');
			SELECT payments.register_provider('standard', 'standard');
			SELECT payments.add_secret('standard', :'standard');
			SELECT payments.register_provider('meta', 'meta', '{"verify_token": "hostile-verify-token"}');
			SELECT payments.add_secret('meta', :'meta');
			SELECT payments.register_provider('paynow', 'paynow');
			SELECT payments.add_secret('paynow', :'paynow');
			SELECT payments.register_provider('eversend', 'eversend');
			SELECT payments.add_secret('eversend', :'eversend');
			SELECT payments.register_provider('hmac', 'hmac', '{"header": "x-signature", "prefix": "sha256="}');
			SELECT payments.add_secret('hmac', :'hmac');
			SELECT payments.register_provider('paypal', 'paypal', jsonb_build_object('webhook_id', 'WH-HOSTILE',
				'cert_hosts', jsonb_build_array(:'certHost')));`, { ...secrets, certHost });
		shim = new Shim(cluster.dsn, ['--threads', '2', '--rate', '0']);
		await shim.start();
	});

	after(async () => {
		const exit = shim ? await shim.stop() : { code: 0 };
		cluster?.destroy();
		assert.deepEqual(shim?.sanitizerReports() ?? [], [], 'sanitizer reports in the shim');
		assert.equal(exit.code, 0);
	});

	rows.forEach((row, index) => {
		test(`${row.name}: ${row.status}`, async () => {
			const requestId = `hostile-${index}`;
			// A head larger than a connection's memory is refused by libmicrohttpd, which closes
			// at once with the rest of the head unread; under load the reset that causes can
			// overtake its 431.  Such rows are sent up to three times: no answer may be anything
			// but the expected status, and one must come.
			const answers = [];
			let sent;
			for (let attempt = 0; attempt < (row.overflow ? 3 : 1); attempt++) {
				const { body, headers } = row.make();
				sent = body;
				answers.push(await sendUntilAnswered(shim.port, httpPost(row.provider, { 'X-Request-ID': requestId, ...headers }, body)));
				if (answers.at(-1) !== '') break;
			}
			const answer = answers.at(-1);
			const status = statusOf(answer);
			assert.ok(status === null || status < 500, `a 5xx: ${answer.slice(0, 300)}`);
			assert.equal(status, row.status, `answer: ${answer.slice(0, 300)}`);
			if (/"outcome":"(rejected|invalid)"/.test(answer)) refusedByDatabase += 1;
			if (row.outcome) assert.match(answer, new RegExp(`"outcome":"${row.outcome}"`));
			// a refusal by payments.ingest is recorded with its reason; nothing else is
			assert.equal(cluster.psqlVars("SELECT coalesce(string_agg(outcome || ' ' || reason, ','), 'none') FROM payments.rejections WHERE request_id = :'r'",
				{ r: requestId }), row.reason ? `${row.status === 400 ? 'invalid' : 'rejected'} ${row.reason}` : 'none');
			row.check?.(sent);
		});
	});

	test('control: a PayPal delivery that passes every check before the certificate gets 503, the allowed host being closed', async () => {
		// what each PayPal row would get if its certificate were fetched before it is refused
		const answer = await sendUntilAnswered(shim.port, httpPost('paypal',
			{ 'X-Request-ID': 'hostile-paypal-control', ...json, ...paypalHeaders() }, Buffer.from('{"id":"WH-CONTROL"}')));
		assert.equal(statusOf(answer), 503, answer.slice(0, 300));
		assert.match(answer, /"outcome":"unavailable"/);
		assert.equal(cluster.psql("SELECT count(*) FROM payments.rejections WHERE request_id = 'hostile-paypal-control'"), '0');
	});

	test('only the rows answered 200 were stored; every refusal by the database is recorded', () => {
		assert.equal(cluster.psql('SELECT count(*) FROM payments.events'), String(rows.filter((r) => r.status === 200).length));
		// the unknown currency and the 31-digit amount wait, with their reasons, for an operator (nothing is lost)
		assert.equal(cluster.psql("SELECT state || ': ' || last_error FROM payments.events WHERE provider = 'stripe'" +
			" AND state <> 'applied' ORDER BY last_error"), 'pending: Stripe\'s amount must be a whole number of minor units of at most 15 digits, ' +
			'not "1000000000000000000000000000000"\npending: unknown currency "XYZ"');
		// the server's warning about it reaches the shim's log as a JSON line, not libpq's raw stderr
		// text, without its reason: that quotes the body (the server's log has it, and the event)
		assert.match(shim.stderr, /"level":"warning"[^\n]*"msg":"database warning","sqlstate":"01000","error":"event \d+ is stored but could not be applied"/);
		assert.doesNotMatch(shim.stderr, /XYZ|1000000000000000000000000000000/);
		assert.doesNotMatch(shim.stderr, /^WARNING:/m);
		assert.equal(Number(cluster.psql("SELECT count(*) FROM payments.rejections")), refusedByDatabase);
	});

	test('afterwards the shim is up and valid deliveries of every kind are stored', async () => {
		const deliveries = {
			stripe: stripeEvent(),
			standard: Buffer.from(JSON.stringify({ type: 'invoice.paid', timestamp: new Date().toISOString(), data: { id: uniqueId('inv') } })),
			meta: Buffer.from(JSON.stringify({ object: 'whatsapp_business_account', entry: [{ id: '1', changes: [{ field: 'messages',
				value: { messages: [{ id: uniqueId('wamid'), type: 'text', timestamp: String(now()) }] } }] }] })),
			eversend: Buffer.from(JSON.stringify({ transactionId: uniqueId('T'), status: 'SUCCESSFUL', eventType: 'collection.updated' })),
			hmac: Buffer.from(JSON.stringify({ event: 'charge.success', data: { id: uniqueId('h') } })),
		};
		for (const [provider, body] of Object.entries(deliveries)) {
			const signed = provider === 'standard' ? standardHeaders(body) : sign[provider](body);
			const res = await request(shim.port, { method: 'POST', path: `/webhooks/${provider}`,
				headers: { 'content-type': 'application/json', ...signed }, body });
			assert.equal(res.status, 200, `${provider}: ${res.text}`);
		}
		const paynow = paynowForm({ reference: uniqueId('INV'), paynowreference: '77', amount: '5.00', status: 'Paid',
			pollurl: 'https://www.paynow.co.zw/Interface/CheckPayment/?guid=y' });
		const res = await request(shim.port, { method: 'POST', path: '/webhooks/paynow',
			headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: paynow });
		assert.equal(res.status, 200, res.text);
		assert.equal((await request(shim.port, { path: '/health' })).status, 200);
	});

	test('a body whose parsing runs the server out of memory is an error (53200), not an invalid body', () => {
		// The backend's address space is capped 96 MB above what it uses, after the
		// 8 MB body is made and signed: enough to record the body as refused, far from what
		// jsonb needs for its 4 million numbers (about 100 bytes each).
		const run = spawnSync(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-h', cluster.dir, '-p', String(cluster.port),
			'-U', 'postgres', '-d', 'payments', '-v', `secret=${secrets.standard}`], { encoding: 'utf8', input: `
\\set ON_ERROR_STOP 1
\\set VERBOSITY sqlstate
SELECT pg_backend_pid() AS pid \\gset
CREATE TEMP TABLE big AS
	SELECT convert_to(b, 'UTF8') AS body, ts, payments.sign_webhook('msg_oom', ts, b, :'secret') AS sig
	  FROM (SELECT '{"type":"x","data":[' || repeat('1,', 4000000) || '1]}' AS b,
				   extract(epoch FROM now())::bigint AS ts) s;
\\setenv BACKEND_PID :pid
\\! prlimit --pid "$BACKEND_PID" --as=$(( $(awk '/^VmSize/ {print $2}' /proc/$BACKEND_PID/status) * 1024 + 100663296 ))
\\set ON_ERROR_STOP 0
SELECT 'answered', http_status, outcome FROM big, payments.ingest('standard',
	jsonb_build_object('webhook-id', 'msg_oom', 'webhook-timestamp', ts::text, 'webhook-signature', sig),
	body, NULL, 'hostile-oom');
\\set ON_ERROR_STOP 1
SELECT 'stored', count(*) FROM payments.events WHERE event_id = 'msg_oom';
SELECT 'refused', count(*) FROM payments.rejections WHERE request_id = 'hostile-oom';
` });
		assert.equal(run.status, 0, run.stderr);
		assert.match(run.stderr, /^ERROR:\s+53200$/m);
		assert.equal(run.stdout.trim(), 'stored|0\nrefused|0');
	});
});

// Standard Webhooks headers for a body, made by the official SDK.
function standardHeaders(body) {
	const id = uniqueId('msg');
	const at = new Date();
	const signature = new Webhook(secrets.standard).sign(id, at, body.toString());
	return { 'webhook-id': id, 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)), 'webhook-signature': signature };
}
