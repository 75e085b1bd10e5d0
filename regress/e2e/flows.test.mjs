// WhatsApp Flows data endpoint end to end: POST /flows/{provider} through the real shim (logged in
// as a member of payments_ingest only) into a real cluster.  Requests are encrypted with Node's
// crypto module exactly as Meta does (RSA-OAEP SHA-256 wraps a fresh AES-128 key; AES-128-GCM with a
// 16-byte IV, ciphertext || tag in base64) and signed with X-Hub-Signature-256; the replies are
// decrypted with the flipped IV.  Keys are made as Meta's keyGenerator.js makes them: RSA 2048,
// PKCS#1 private key under des-ede3-cbc with a passphrase, SPKI public key.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
	constants, createCipheriv, createDecipheriv, createHmac, generateKeyPairSync, publicEncrypt, randomBytes,
} from 'node:crypto';
import { Cluster, Shim, request, rawSession, stopShimAndCluster } from './harness.mjs';

const appSecret = `app_${randomBytes(16).toString('hex')}`;
const passphrase = `pass-${randomBytes(8).toString('hex')}`;

// As keyGenerator.js: RSA 2048, PKCS#1 PEM encrypted with des-ede3-cbc, SPKI public key.
const metaKeys = generateKeyPairSync('rsa', {
	modulusLength: 2048,
	publicKeyEncoding: { type: 'spki', format: 'pem' },
	privateKeyEncoding: { type: 'pkcs1', format: 'pem', cipher: 'des-ede3-cbc', passphrase },
});
// A second endpoint's key, PKCS#8 without a passphrase; and a key the endpoint does not have.
const plainKeys = generateKeyPairSync('rsa', {
	modulusLength: 2048,
	publicKeyEncoding: { type: 'spki', format: 'pem' },
	privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});
const strangerKeys = generateKeyPairSync('rsa', {
	modulusLength: 2048,
	publicKeyEncoding: { type: 'spki', format: 'pem' },
	privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});

let cluster;
let shim;

// Encrypts a request payload as Meta does; returns the body and what decrypts the reply.
function encryptRequest(payload, publicKey = metaKeys.publicKey) {
	const aesKey = randomBytes(16);
	const iv = randomBytes(16);
	const cipher = createCipheriv('aes-128-gcm', aesKey, iv);
	const data = Buffer.concat([cipher.update(JSON.stringify(payload), 'utf8'), cipher.final(), cipher.getAuthTag()]);
	const wrapped = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, aesKey);
	const envelope = {
		encrypted_flow_data: data.toString('base64'),
		encrypted_aes_key: wrapped.toString('base64'),
		initial_vector: iv.toString('base64'),
	};
	return { envelope, body: JSON.stringify(envelope), aesKey, iv };
}

// Decrypts a reply body: base64(ciphertext || tag) under the request's key and flipped IV.
function decryptResponse(text, aesKey, iv) {
	const raw = Buffer.from(text, 'base64');
	const flipped = Buffer.from(iv.map((b) => ~b & 0xff));
	const decipher = createDecipheriv('aes-128-gcm', aesKey, flipped);
	decipher.setAuthTag(raw.subarray(raw.length - 16));
	return JSON.parse(Buffer.concat([decipher.update(raw.subarray(0, raw.length - 16)), decipher.final()]).toString('utf8'));
}

const sign = (body, secret = appSecret) => `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;

// POSTs raw bytes to /flows/{provider} with node:http, which never resends a request (fetch
// resends on 421, as RFC 9110 allows; so does Meta's client); returns { status, text, headers }.
function postFlows(provider, body, headers = {}) {
	return request(shim.port, {
		method: 'POST',
		path: `/flows/${provider}`,
		headers: { 'content-type': 'application/json', 'x-hub-signature-256': sign(body), ...headers },
		body,
	});
}

// Sends an encrypted, signed request and decrypts the reply of a 200 or 427.
async function exchange(payload, provider = 'wa', publicKey = metaKeys.publicKey) {
	const req = encryptRequest(payload, publicKey);
	const res = await postFlows(provider, req.body);
	const answer = [200, 427].includes(res.status) ? decryptResponse(res.text, req.aesKey, req.iv) : null;
	return { ...res, answer };
}

const issueToken = (waId, provider = 'wa') =>
	cluster.psqlVars("SELECT payments.issue_flow_token(:'p', :'w')", { p: provider, w: waId });

const donate = (token, screen, data) => exchange({ version: '3.0', action: 'data_exchange', screen, flow_token: token, data });

describe('WhatsApp Flows data endpoint through the shim', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`
			SELECT payments.register_provider('wa', 'meta', '{"verify_token": "vt"}');
			SELECT payments.add_secret('wa', :'secret');
			SELECT payments.add_flow_key('wa', :'key', :'pass');
			SELECT payments.register_provider('wa-plain', 'meta', '{"verify_token": "vt", "max_amount": 50}');
			SELECT payments.add_secret('wa-plain', :'secret');
			SELECT payments.add_flow_key('wa-plain', :'plain');
			SELECT payments.register_provider('stripe', 'stripe');
			CREATE ROLE flows_shim LOGIN IN ROLE payments_ingest;`,
		{ secret: appSecret, key: metaKeys.privateKey, pass: passphrase, plain: plainKeys.privateKey });
		shim = new Shim(cluster.dsn.replace('user=postgres', 'user=flows_shim'));
		await shim.start();
	});

	after(() => stopShimAndCluster(shim, cluster));

	test('the public key kept for upload is the key pair\'s own', () => {
		assert.equal(cluster.psql("SELECT public_key FROM payments.flow_keys WHERE provider = 'wa'") + '\n', metaKeys.publicKey);
		assert.equal(cluster.psql("SELECT public_key FROM payments.flow_keys WHERE provider = 'wa-plain'") + '\n', plainKeys.publicKey);
	});

	test('ping round trip with the passphrase-protected PKCS#1 key, and with a plain PKCS#8 key', async () => {
		const res = await exchange({ version: '3.0', action: 'ping' });
		assert.equal(res.status, 200, res.text);
		assert.match(res.headers['content-type'], /^text\/plain/);
		assert.ok(res.headers['x-request-id']);
		assert.deepEqual(res.answer, { data: { status: 'active' } });
		const plain = await exchange({ version: '3.0', action: 'ping' }, 'wa-plain', plainKeys.publicKey);
		assert.deepEqual([plain.status, plain.answer], [200, { data: { status: 'active' } }]);
	});

	test('INIT, an invalid amount, a valid form, BACK, then CONFIRM stores the donation request once', async () => {
		const token = issueToken('263771234567');
		const init = await exchange({ version: '3.0', action: 'INIT', flow_token: token });
		assert.equal(init.status, 200, init.text);
		assert.equal(init.answer.screen, 'DONATE');
		assert.deepEqual([init.answer.data.min_amount, init.answer.data.max_amount, init.answer.data.phone, init.answer.data.error_message],
			['1', '480', '263771234567', '']);
		assert.deepEqual(init.answer.data.currencies.map((c) => c.id), ['USD', 'ZWG']);

		const form = { amount: '500', currency: 'USD', method: 'ecocash', phone: '0771234567' };
		const tooMuch = await donate(token, 'DONATE', form);
		assert.deepEqual([tooMuch.status, tooMuch.answer.screen, tooMuch.answer.data.error_message],
			[200, 'DONATE', 'The amount must be between 1 and 480 USD.']);
		const notANumber = await donate(token, 'DONATE', { ...form, amount: '1e3' });
		assert.match(notANumber.answer.data.error_message, /^Enter the amount as a number/);

		const ok = await donate(token, 'DONATE', { ...form, amount: '25' });
		assert.equal(ok.status, 200, ok.text);
		assert.deepEqual(ok.answer, { screen: 'CONFIRM', data: {
			amount: '25.00', currency: 'USD', method: 'ecocash', phone: '263771234567',
			summary: 'USD 25.00 by EcoCash from 263771234567' } });
		const back = await exchange({ version: '3.0', action: 'BACK', screen: 'CONFIRM', flow_token: token });
		assert.deepEqual([back.status, back.answer.screen], [200, 'DONATE']);
		assert.equal(cluster.psql('SELECT count(*) FROM payments.flow_submissions'), '0');

		const done = await donate(token, 'CONFIRM', ok.answer.data);
		assert.equal(done.status, 200, done.text);
		assert.equal(done.answer.screen, 'SUCCESS');
		const params = done.answer.data.extension_message_response.params;
		assert.equal(params.flow_token, token);
		assert.equal(cluster.psqlVars(
			"SELECT format('%s %s %s %s %s %s', id, wa_id, amount, currency, method, phone) FROM payments.flow_submissions WHERE flow_token = :'t'",
			{ t: token }), `${params.submission_id} 263771234567 25.00 USD ecocash 263771234567`);
		// Meta retrying the final submit gets the same answer; the request is stored once
		const retry = await donate(token, 'CONFIRM', ok.answer.data);
		assert.deepEqual(retry.answer, done.answer);
		assert.equal(cluster.psql('SELECT count(*) FROM payments.flow_submissions'), '1');
	});

	test('the final submit is answered only once its submission is durable: a failed flush is 503, the retry 200', async () => {
		const token = issueToken('263771234568');
		assert.equal((await exchange({ version: '3.0', action: 'INIT', flow_token: token })).status, 200);
		const ok = await donate(token, 'DONATE', { amount: '12', currency: 'USD', method: 'ecocash', phone: '0771234568' });
		assert.equal(ok.status, 200, ok.text);
		const stored = () => cluster.psqlVars('SELECT count(*) FROM payments.flow_submissions WHERE flow_token = :\'t\'', { t: token });
		cluster.psql('ALTER FUNCTION payments.flush_wal() RENAME TO flush_wal_away');
		let refused;
		try {
			refused = await donate(token, 'CONFIRM', ok.answer.data);
		} finally {
			cluster.psql('ALTER FUNCTION payments.flush_wal_away() RENAME TO flush_wal');
		}
		assert.equal(refused.status, 503, refused.text);
		assert.equal(stored(), '1', 'committed all the same');
		const done = await donate(token, 'CONFIRM', ok.answer.data);
		assert.deepEqual([done.status, done.answer.screen], [200, 'SUCCESS']);
		assert.equal(stored(), '1');
	});

	test('the amount limits are the provider\'s settings', async () => {
		const token = issueToken('263711234567', 'wa-plain');
		const res = await exchange({ version: '3.0', action: 'data_exchange', screen: 'DONATE', flow_token: token,
			data: { amount: 60, currency: 'ZWG', method: 'onemoney', phone: '0711234567' } }, 'wa-plain', plainKeys.publicKey);
		assert.deepEqual([res.status, res.answer.data.error_message], [200, 'The amount must be between 1 and 50 ZWG.']);
	});

	test('a client error notification is acknowledged', async () => {
		const res = await exchange({ version: '3.0', action: 'data_exchange', screen: 'DONATE', flow_token: 'whatever',
			data: { error: 'invalid-screen-transition', error_message: 'no such screen' } });
		assert.deepEqual([res.status, res.answer], [200, { data: { acknowledged: true } }]);
	});

	test('an unknown or expired flow token is 427 with an encrypted error_msg', async () => {
		const unknown = await exchange({ version: '3.0', action: 'INIT', flow_token: 'ft_not_issued_by_us_0000' });
		assert.equal(unknown.status, 427, unknown.text);
		assert.match(unknown.answer.error_msg, /expired/);
		const token = issueToken('263731234567');
		cluster.psqlVars("UPDATE payments.flow_tokens SET created_at = now() - interval '2 days', expires_at = now() - interval '1 day' WHERE token = :'t'",
			{ t: token });
		const expired = await exchange({ version: '3.0', action: 'INIT', flow_token: token });
		assert.deepEqual([expired.status, Object.keys(expired.answer)], [427, ['error_msg']]);
		// another provider's token is unknown here
		const other = issueToken('263731234567', 'wa-plain');
		assert.equal((await exchange({ version: '3.0', action: 'INIT', flow_token: other })).status, 427);
	});

	test('a request for another RSA key is 421, and recorded as a rejection', async () => {
		const req = encryptRequest({ version: '3.0', action: 'ping' }, strangerKeys.publicKey);
		const res = await postFlows('wa', req.body, { 'x-request-id': 'flows-wrong-key' });
		assert.deepEqual([res.status, res.text], [421, 'cannot decrypt the request']);
		assert.equal(cluster.psql("SELECT outcome || ' ' || reason FROM payments.rejections WHERE request_id = 'flows-wrong-key'"),
			'rejected flows_key_mismatch');
		// the AES key wrapped with OAEP's default SHA-1 instead of SHA-256
		const sha1 = encryptRequest({ version: '3.0', action: 'ping' });
		sha1.envelope.encrypted_aes_key = publicEncrypt({ key: metaKeys.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING },
			sha1.aesKey).toString('base64');
		assert.equal((await postFlows('wa', JSON.stringify(sha1.envelope))).status, 421);
		// base64 that is not, and a truncated key
		for (const bad of ['%%%', sha1.envelope.encrypted_aes_key.slice(0, 40)]) {
			const r = encryptRequest({ version: '3.0', action: 'ping' });
			r.envelope.encrypted_aes_key = bad;
			assert.equal((await postFlows('wa', JSON.stringify(r.envelope))).status, 421);
		}
	});

	test('tampered ciphertext, tag or IV is 421 (the request cannot be decrypted)', async () => {
		const flip = (b64, at) => {
			const raw = Buffer.from(b64, 'base64');
			raw[at < 0 ? raw.length + at : at] ^= 1;
			return raw.toString('base64');
		};
		for (const [field, at] of [['encrypted_flow_data', 0], ['encrypted_flow_data', -1], ['initial_vector', 3]]) {
			const req = encryptRequest({ version: '3.0', action: 'ping' });
			req.envelope[field] = flip(req.envelope[field], at);
			const res = await postFlows('wa', JSON.stringify(req.envelope), { 'x-request-id': `flows-tampered-${field}-${at}` });
			assert.equal(res.status, 421, `${field} ${at}: ${res.text}`);
		}
		const req = encryptRequest({ version: '3.0', action: 'ping' });
		req.envelope.initial_vector = randomBytes(12).toString('base64');
		assert.equal((await postFlows('wa', JSON.stringify(req.envelope))).status, 421);
		assert.equal(cluster.psql("SELECT count(*) FROM payments.rejections WHERE request_id LIKE 'flows-tampered-%' AND reason = 'flows_decrypt_failed'"), '3');
	});

	test('a bad or missing signature is 432, checked before decryption', async () => {
		const req = encryptRequest({ version: '3.0', action: 'ping' });
		const wrong = await postFlows('wa', req.body, { 'x-hub-signature-256': sign(req.body, 'not the app secret') });
		assert.equal(wrong.status, 432);
		const tampered = await postFlows('wa', req.body.replace('"initial_vector"', '"initial_vector" '),
			{ 'x-hub-signature-256': sign(req.body) });
		assert.equal(tampered.status, 432);
		const missing = await request(shim.port, { method: 'POST', path: '/flows/wa', body: req.body });
		assert.equal(missing.status, 432);
		const malformed = await postFlows('wa', req.body, { 'x-hub-signature-256': sign(req.body).toUpperCase() });
		assert.equal(malformed.status, 432);
		// a request that would not even decrypt still gets 432 when unsigned
		const stranger = encryptRequest({ version: '3.0', action: 'ping' }, strangerKeys.publicKey);
		assert.equal((await postFlows('wa', stranger.body, { 'x-hub-signature-256': sign(stranger.body, 'x') })).status, 432);
	});

	test('a malformed envelope or decrypted payload is 400', async () => {
		for (const body of ['', 'not json', '[]', '{"encrypted_flow_data": "AAAA"}',
			'{"encrypted_flow_data": 1, "encrypted_aes_key": "AAAA", "initial_vector": "AAAA"}']) {
			const res = await postFlows('wa', body);
			assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`);
		}
		const notUtf8 = Buffer.from([0x7b, 0xff, 0x7d]);
		const res = await request(shim.port, { method: 'POST', path: '/flows/wa', body: notUtf8,
			headers: { 'x-hub-signature-256': `sha256=${createHmac('sha256', appSecret).update(notUtf8).digest('hex')}` } });
		assert.equal(res.status, 400);
		const unknownAction = await exchange({ version: '3.0', action: 'navigate' });
		assert.deepEqual([unknownAction.status, unknownAction.text], [400, 'unsupported action']);
	});

	test('unknown provider, a provider of another kind, a bad name are 404; other methods 405; too large 413', async () => {
		const req = encryptRequest({ version: '3.0', action: 'ping' });
		assert.equal((await postFlows('nobody', req.body)).status, 404);
		assert.equal((await postFlows('stripe', req.body)).status, 404);
		assert.equal((await postFlows('Bad.Name', req.body)).status, 404);
		const get = await request(shim.port, { path: '/flows/wa' });
		assert.deepEqual([get.status, get.headers.allow], [405, 'POST']);
		// the shim's body cap (1 MiB by default) holds here too, answered on the declared length
		// (the head alone is sent: the shim closes without reading a body over the cap)
		const big = await rawSession(shim.port, { chunks: [
			`POST /flows/wa HTTP/1.1\r\nHost: x\r\nContent-Length: ${1100 * 1024}\r\n\r\n`] });
		assert.match(big.data, /^HTTP\/1\.1 413 /);
	});

	test('the request log and the metrics count the flows route', async () => {
		await exchange({ version: '3.0', action: 'ping' }, 'wa');
		const metrics = (await request(shim.port, { path: '/metrics' })).text;
		assert.match(metrics, /route="flows",provider="wa",status="200"/);
		assert.match(metrics, /route="flows",provider="wa",status="421"/);
		assert.match(shim.stderr, /"path":"\/flows\/wa"[^\n]*"status":200,"outcome":"answered"/);
	});

	test('the rate limit applies to /flows: 429 with Retry-After', async () => {
		const limited = new Shim(cluster.dsn.replace('user=postgres', 'user=flows_shim'),
			['--rate', '1', '--rate-burst', '1', '--rate-exempt=']);
		await limited.start();
		try {
			const req = encryptRequest({ version: '3.0', action: 'ping' });
			const send = () => request(limited.port, { method: 'POST', path: '/flows/wa', body: req.body,
				headers: { 'x-hub-signature-256': sign(req.body) } });
			const first = await send();
			assert.deepEqual([first.status, decryptResponse(first.text, req.aesKey, req.iv)], [200, { data: { status: 'active' } }]);
			const second = await send();
			assert.equal(second.status, 429);
			assert.ok(Number(second.headers['retry-after']) >= 1);
		} finally {
			assert.equal((await limited.stop()).code, 0);
			assert.deepEqual(limited.sanitizerReports(), []);
		}
	});

	test('requests with characters LATIN1 lacks (U+2009, CJK, emoji) are read and answered; a LATIN1 database cannot have the extension', async () => {
		// the primitives take and give UTF-8 as it is
		const named = encryptRequest({ name: '山田 花子 \u{1F381}', phone: '077\u2009200\u20090009' });
		const key = named.aesKey.toString('hex');
		assert.deepEqual(JSON.parse(cluster.psql(`SELECT payments.flows_decrypt_request(decode('${key}', 'hex'),
			'${named.envelope.initial_vector}', '${named.envelope.encrypted_flow_data}')`)),
		{ name: '山田 花子 \u{1F381}', phone: '077\u2009200\u20090009' });
		const encrypted = cluster.psql(`SELECT payments.flows_encrypt_response(decode('${key}', 'hex'),
			'${named.envelope.initial_vector}', '{"name": "O\u2019Brien 寄付 \u{1F381}"}')`);
		assert.deepEqual(decryptResponse(encrypted, named.aesKey, named.iv), { name: 'O\u2019Brien 寄付 \u{1F381}' });

		// through the shim: a form holding them is read (no 400), and a number typed with
		// non-breaking or thin spaces is read as the digits
		const token = issueToken('263772000009');
		const form = { amount: '10', currency: 'USD', method: 'ecocash', phone: '077\u00a0200\u00a00009', name: '山田 花子 \u{1F381}' };
		const ok = await donate(token, 'DONATE', form);
		assert.equal(ok.status, 200, ok.text);
		assert.deepEqual(ok.answer, { screen: 'CONFIRM', data: {
			amount: '10.00', currency: 'USD', method: 'ecocash', phone: '263772000009',
			summary: 'USD 10.00 by EcoCash from 263772000009' } });
		const thin = await donate(token, 'DONATE', { ...form, phone: '077\u2009200\u20090009', name: '寄付' });
		assert.equal(thin.status, 200, thin.text);
		assert.deepEqual(thin.answer, ok.answer);

		// a database in LATIN1 cannot hold such characters at all: CREATE EXTENSION is refused there
		cluster.psql(`CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`, 'postgres');
		try {
			assert.throws(() => cluster.psql('CREATE EXTENSION payments', 'latin'),
				(e) => /ERROR: {2}payments needs a UTF8 database: database "latin" has encoding LATIN1\n/.test(e.stderr)
					&& /HINT: {2}Create the database with ENCODING 'UTF8' \(TEMPLATE template0\)/.test(e.stderr));
		} finally {
			cluster.psql('DROP DATABASE latin', 'postgres');
		}
	});

	test('with the database down the answer is 503 with Retry-After, and it recovers', async () => {
		cluster.stop();
		try {
			const req = encryptRequest({ version: '3.0', action: 'ping' });
			const down = await postFlows('wa', req.body);
			assert.equal(down.status, 503);
			assert.equal(down.headers['retry-after'], '5');
		} finally {
			cluster.start();
		}
		// (the shim connects again after its backoff, 5 s at most: 30 s leaves a loaded machine room)
		let res;
		for (let i = 0; i < 300; i++) {
			res = await exchange({ version: '3.0', action: 'ping' });
			if (res.status === 200) break;
			await new Promise((r) => setTimeout(r, 100));
		}
		assert.deepEqual([res.status, res.answer], [200, { data: { status: 'active' } }]);
	});
});
