// PayPal end to end: deliveries signed here with a key whose certificate a local HTTPS
// stand-in for PayPal's API serves at /v1/notifications/certs/…, through the real shim into a
// real PostgreSQL 15 cluster.  PayPal publishes no signer, so the test makes its own PKI with
// the openssl CLI: a CA (given to the provider as ca_file), a leaf for
// messageverificationcerts.paypal.com, an expired one, one for another name, one from a CA
// nobody trusts, and the stand-in's TLS certificate for localhost.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { Cluster, Shim, post, freePort, PG_BIN, sleep, holdLock, shimLockWaiters } from './harness.mjs';
import { crc32, signPaypal } from './paypal_sign.mjs';

const WEBHOOK_ID = '8PT597110X687430LKGECATA';

// ---- a small PKI made with the openssl CLI ----------------------------------------------------

const OPENSSL_CONFIG = `
[ ca ]
default_ca = test_ca
[ test_ca ]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[ any ]
commonName = supplied
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ paypal_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
subjectAltName = DNS:messageverificationcerts.paypal.com
[ other_name_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
subjectAltName = DNS:messageverificationcerts.paypal.com.evil.example
[ tls_ext ]
basicConstraints = CA:FALSE
subjectAltName = DNS:localhost, IP:127.0.0.1
extendedKeyUsage = serverAuth
`;

class Pki {
	constructor() {
		this.dir = mkdtempSync(join(process.env.TMPDIR || '/tmp', 'payments-e2e-pki.'));
		writeFileSync(join(this.dir, 'openssl.cnf'), OPENSSL_CONFIG);
		writeFileSync(join(this.dir, 'index.txt'), '');
		writeFileSync(join(this.dir, 'serial'), '1000\n');
	}

	path(name) { return join(this.dir, name); }

	openssl(...args) {
		execFileSync('openssl', args, { cwd: this.dir, stdio: 'pipe' });
	}

	key(name) {
		this.openssl('genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', `${name}.key`);
		return readFileSync(this.path(`${name}.key`), 'utf8');
	}

	ca(name, cn) {
		this.key(name);
		this.openssl('req', '-config', 'openssl.cnf', '-x509', '-key', `${name}.key`, '-subj', `/CN=${cn}`,
			'-days', '30', '-extensions', 'ca_ext', '-out', `${name}.pem`);
		return readFileSync(this.path(`${name}.pem`), 'utf8');
	}

	// A certificate for keyName's key, signed by ca; valid for 30 days from now, or over the
	// given dates (YYYYMMDDHHMMSSZ) through `openssl ca`, as OpenSSL 3.0's x509 has no -not_after.
	cert(name, keyName, ca, cn, ext, dates = null) {
		this.openssl('req', '-config', 'openssl.cnf', '-new', '-key', `${keyName}.key`, '-subj', `/CN=${cn}`,
			'-out', `${name}.csr`);
		if (dates) {
			this.openssl('ca', '-config', 'openssl.cnf', '-batch', '-notext', '-cert', `${ca}.pem`,
				'-keyfile', `${ca}.key`, '-in', `${name}.csr`, '-out', `${name}.pem`, '-extfile', 'openssl.cnf',
				'-extensions', ext, '-startdate', dates[0], '-enddate', dates[1]);
		} else {
			this.openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`,
				'-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '30', '-sha256',
				'-extfile', 'openssl.cnf', '-extensions', ext, '-out', `${name}.pem`);
		}
		return readFileSync(this.path(`${name}.pem`), 'utf8');
	}

	destroy() { rmSync(this.dir, { recursive: true, force: true }); }
}

// ---- the stand-in for PayPal's certificate endpoint ------------------------------------------

class CertServer {
	constructor(key, cert) {
		this.certs = new Map();		// path name -> { status, body }; a null body is never sent
		this.hits = new Map();
		this.server = createServer({ key, cert }, (req, res) => {
			const name = req.url.startsWith('/v1/notifications/certs/') ? req.url.slice(24) : null;
			this.hits.set(name, (this.hits.get(name) || 0) + 1);
			const entry = name && this.certs.get(name);
			if (!entry) { res.writeHead(404).end('not found'); return; }
			if (entry.body === null) return;	// never answers
			if (entry.cut) {
				// a 200 whose body breaks off halfway, the connection reset
				res.writeHead(200, { 'content-type': 'application/x-pem-file', 'content-length': entry.body.length });
				res.write(entry.body.slice(0, entry.body.length >> 1));
				setTimeout(() => res.socket.destroy(), 50);
				return;
			}
			res.writeHead(entry.status, { 'content-type': 'application/x-pem-file' }).end(entry.body);
		});
	}

	async start(port) {
		this.port = port ?? await freePort();
		await new Promise((resolve, reject) => {
			this.server.once('error', reject);
			this.server.listen(this.port, '127.0.0.1', resolve);
		});
	}

	async stop() {
		this.server.closeAllConnections();
		await new Promise((resolve) => this.server.close(resolve));
	}

	// Serves a body under a fresh certificate name and returns the URL PayPal would send.
	serve(label, body, status = 200, { cut = false } = {}) {
		const name = `CERT-${label}-${randomBytes(4).toString('hex')}`;
		this.certs.set(name, { status, body, cut });
		return { name, url: `https://localhost:${this.port}/v1/notifications/certs/${name}` };
	}

	hitsOf(name) { return this.hits.get(name) || 0; }

	totalHits() { return [...this.hits.values()].reduce((a, b) => a + b, 0); }
}

// ---- deliveries -------------------------------------------------------------------------------

let seq = 0;

// A PAYMENT.CAPTURE.COMPLETED event body with a fresh WH- id (shape of PROVIDERS.md §2.5).
function paypalEvent(extra = {}) {
	seq += 1;
	return JSON.stringify({
		id: `WH-E2E${process.pid}X${seq}-${randomBytes(6).toString('hex').toUpperCase()}`,
		event_version: '1.0',
		create_time: new Date().toISOString(),
		resource_type: 'capture',
		resource_version: '2.0',
		event_type: 'PAYMENT.CAPTURE.COMPLETED',
		summary: 'Payment completed for $ 30.0 USD',
		resource: {
			id: `CAP${seq}${randomBytes(4).toString('hex').toUpperCase()}`,
			amount: { currency_code: 'USD', value: '30.00' },
			invoice_id: `INV-${seq}`,
			status: 'COMPLETED',
		},
		...extra,
	});
}

// PayPal's headers for a body, signed with key for this test's webhook id unless given
function paypalHeaders(body, key, certUrl, opts = {}) {
	return signPaypal(body, key, certUrl, { webhookId: WEBHOOK_ID, ...opts });
}

describe('PayPal deliveries through the shim, certificates from a local HTTPS stand-in', () => {
	let pki;
	let cluster;
	let shim;
	let stand;
	let leafKey;
	let good;			// the served certificate of leafKey, named and chained correctly

	const eventCount = (provider, id) => Number(cluster.psqlVars(
		"SELECT count(*) FROM payments.events WHERE provider = :'p' AND event_id = :'e'", { p: provider, e: id }));
	const rejection = (requestId) => cluster.psqlVars(
		"SELECT reason FROM payments.rejections WHERE request_id = :'r'", { r: requestId });

	before(async () => {
		pki = new Pki();
		const caPem = pki.ca('ca', 'payments e2e test CA');
		pki.ca('rogue', 'payments e2e rogue CA');
		leafKey = pki.key('leaf');
		pki.cert('good', 'leaf', 'ca', 'messageverificationcerts.paypal.com', 'paypal_ext');
		pki.cert('expired', 'leaf', 'ca', 'messageverificationcerts.paypal.com', 'paypal_ext',
			['20200101000000Z', '20210101000000Z']);
		pki.cert('untrusted', 'leaf', 'rogue', 'messageverificationcerts.paypal.com', 'paypal_ext');
		pki.cert('other-name', 'leaf', 'ca', 'messageverificationcerts.paypal.com.evil.example', 'other_name_ext');
		const tlsKey = pki.key('tls');
		const tlsCert = pki.cert('tls', 'tls', 'ca', 'localhost', 'tls_ext');
		assert.match(caPem, /BEGIN CERTIFICATE/);

		stand = new CertServer(tlsKey, tlsCert);
		await stand.start();
		good = stand.serve('good', readFileSync(pki.path('good.pem'), 'utf8'));

		cluster = new Cluster();
		await cluster.init();
		const settings = JSON.stringify({
			webhook_id: WEBHOOK_ID, cert_hosts: [`localhost:${stand.port}`], ca_file: pki.path('ca.pem'),
		});
		const unchained = JSON.stringify({
			webhook_id: WEBHOOK_ID, cert_hosts: [`localhost:${stand.port}`], ca_file: pki.path('ca.pem'),
			verify_cert_chain: false,
		});
		cluster.psqlVars(`
			SELECT payments.register_provider('paypal', 'paypal', :'s');
			SELECT payments.register_provider('paypal-unchained', 'paypal', :'u');`, { s: settings, u: unchained });
		shim = new Shim(cluster.dsn);
		await shim.start();
	});

	after(async () => {
		const exit = shim ? await shim.stop() : { code: 0 };
		await stand?.stop().catch(() => {});
		cluster?.destroy();
		pki?.destroy();
		assert.deepEqual(shim?.sanitizerReports() ?? [], [], 'sanitizer reports in the shim');
		assert.equal(exit.code, 0, `shim exit after SIGTERM: ${JSON.stringify(exit)}`);
	});

	// PayPal's own sandbox delivery of 2015 (PROVIDERS.md §2.2, Vector A),
	// taken from PayPal's Node SDK (vectors/paypal-vector-a.json names where):
	// its certificate expired in 2017, so it is seeded and checked without
	// chain and dates, as verify_cert_chain allows.
	test("PayPal's published Vector A verifies through the shim", async () => {
		const vectorFile = new URL('../vectors/paypal-vector-a.json', import.meta.url);
		const v = JSON.parse(readFileSync(vectorFile, 'utf8'));
		cluster.psqlVars(`
			SELECT payments.register_provider('paypal-vector-a', 'paypal', :'s');
			SELECT payments.add_certificate(:'u', :'c');`, {
			s: JSON.stringify({ webhook_id: v.webhook_id, verify_cert_chain: false }),
			u: v.cert_url, c: v.cert_pem,
		});
		const headers = {
			'paypal-transmission-id': v.transmission_id,
			'paypal-transmission-time': v.transmission_time,
			'paypal-transmission-sig': v.transmission_sig,
			'paypal-cert-url': v.cert_url,
			'paypal-auth-algo': 'SHA256withRSA',
		};
		assert.equal(crc32(Buffer.from(v.body)), 2771810304);
		const tampered = await post(shim.base, 'paypal-vector-a', v.body.replace('20.00', '21.00'), headers);
		assert.equal(tampered.status, 401, tampered.text);
		const res = await post(shim.base, 'paypal-vector-a', v.body, headers);
		assert.equal(res.status, 200, res.text);
		assert.equal(eventCount('paypal-vector-a', JSON.parse(v.body).id), 1);
		assert.equal(cluster.psqlVars(`SELECT concat_ws(' ', status, amount, currency, fee)
			FROM payments.payments WHERE provider = 'paypal-vector-a' AND provider_ref = '4EU7004268015634R'`, {}),
			'paid 20.00 USD 0.88');
	});

	test('our CRC-32 agrees with zlib where node has it', () => {
		const samples = ['', 'hello', paypalEvent(), '🙏'.repeat(100)];
		for (const s of samples) {
			if (zlib.crc32) assert.equal(crc32(Buffer.from(s)), zlib.crc32(Buffer.from(s)));
		}
		assert.equal(crc32(Buffer.from('hello')), 907060870);
		assert.equal(crc32(Buffer.from('123456789')), 0xCBF43926, 'the CRC-32 check value');
	});

	test('a valid delivery is stored; the certificate is fetched once and cached for the next event', async () => {
		const body = paypalEvent();
		const id = JSON.parse(body).id;
		const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, good.url));
		assert.equal(res.status, 200, res.text);
		assert.notEqual(res.json.outcome, 'duplicate');
		assert.equal(res.json.event_id, id);
		assert.equal(eventCount('paypal', id), 1);
		assert.equal(stand.hitsOf(good.name), 1);
		assert.equal(cluster.psqlVars(
			"SELECT source || '|' || (not_after > now()) FROM payments.certificates WHERE url = :'u'", { u: good.url }),
			'fetched|true');

		// the same event again, then another event under the same certificate: no new fetch
		const again = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, good.url));
		assert.deepEqual([again.status, again.json.outcome], [200, 'duplicate']);
		const next = paypalEvent({ event_type: 'PAYMENT.CAPTURE.PENDING' });
		const second = await post(shim.base, 'paypal', next, paypalHeaders(next, leafKey, good.url));
		assert.equal(second.status, 200, second.text);
		assert.equal(eventCount('paypal', JSON.parse(next).id), 1);
		assert.equal(stand.hitsOf(good.name), 1, 'the certificate was fetched again');
		assert.equal(cluster.psqlVars("SELECT event_type FROM payments.events WHERE event_id = :'e'",
			{ e: JSON.parse(next).id }), 'PAYMENT.CAPTURE.PENDING');
	});

	test("without create_time an event counts from its resource's update_time, or from its arrival when that is no time", async () => {
		const outcomes = [];
		for (const updateTime of ['2024-08-02T19:33:35Z', 'soon']) {
			const event = JSON.parse(paypalEvent());
			delete event.create_time;
			event.resource.update_time = updateTime;
			const body = JSON.stringify(event);
			const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, good.url));
			assert.equal(res.status, 200, res.text);
			outcomes.push(res.json.outcome);
			assert.equal(cluster.psqlVars(`SELECT status || ' ' || CASE WHEN status_at > now() - interval '1 minute'
												   THEN 'on arrival' ELSE status_at::text END
											 FROM payments.payments WHERE provider = 'paypal' AND provider_ref = :'r'`,
			{ r: event.resource.id }), updateTime === 'soon' ? 'paid on arrival' : 'paid 2024-08-02 19:33:35+00');
		}
		assert.deepEqual(outcomes, ['applied', 'applied']);
	});

	test('CRC-32 values above and below 2^31 both verify (the CRC is signed as unsigned decimal)', async () => {
		const found = { high: null, low: null };
		while (!found.high || !found.low) {
			const body = paypalEvent({ summary: `nonce ${randomBytes(4).toString('hex')} Zoë 🙏` });
			found[crc32(Buffer.from(body)) > 2 ** 31 ? 'high' : 'low'] ??= body;
		}
		for (const body of [found.high, found.low]) {
			const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, good.url));
			assert.equal(res.status, 200, res.text);
			assert.equal(eventCount('paypal', JSON.parse(body).id), 1);
		}
	});

	test('a tampered body and a wrong webhook id are refused with 401', async () => {
		const body = paypalEvent();
		const tampered = await post(shim.base, 'paypal', body.replace('30.00', '3000.00'),
			paypalHeaders(body, leafKey, good.url, { requestId: 'pp-tampered' }));
		assert.deepEqual([tampered.status, tampered.json.outcome], [401, 'rejected']);
		assert.equal(rejection('pp-tampered'), 'signature_mismatch');
		const wrongId = await post(shim.base, 'paypal', body,
			paypalHeaders(body, leafKey, good.url, { webhookId: 'WEBHOOK_ID', requestId: 'pp-wrong-id' }));
		assert.equal(wrongId.status, 401);
		assert.equal(rejection('pp-wrong-id'), 'signature_mismatch');
		assert.equal(eventCount('paypal', JSON.parse(body).id), 0);
	});

	test('a certificate URL off the allowlist is refused with 401 and never fetched', async () => {
		const before = stand.totalHits();
		const body = paypalEvent();
		const offList = [
			good.url.replace('https://localhost:', 'https://127.0.0.1:'),
			good.url.replace(`:${stand.port}/`, `:${stand.port + 1}/`),
			good.url.replace('https://', 'http://'),
			good.url.replace('/v1/notifications/certs/', '/v1/notifications/other/'),
			`${good.url}?x=1`,
		];
		for (const [i, url] of offList.entries()) {
			const res = await post(shim.base, 'paypal', body,
				paypalHeaders(body, leafKey, url, { requestId: `pp-off-list-${i}` }));
			assert.equal(res.status, 401, url);
			assert.equal(rejection(`pp-off-list-${i}`), 'cert_url_not_allowed', url);
		}
		assert.equal(stand.totalHits(), before, 'a URL off the allowlist was fetched');
		assert.equal(eventCount('paypal', JSON.parse(body).id), 0);
	});

	test('expired, untrusted and misnamed certificates are refused with 401, whatever the key', async () => {
		const cases = [
			['expired', 'cert_expired'],
			['untrusted', 'cert_untrusted'],
			['other-name', 'cert_name_mismatch'],
		];
		for (const [name, reason] of cases) {
			const served = stand.serve(name, readFileSync(pki.path(`${name}.pem`), 'utf8'));
			const body = paypalEvent();
			const res = await post(shim.base, 'paypal', body,
				paypalHeaders(body, leafKey, served.url, { requestId: `pp-${name}` }));
			assert.deepEqual([res.status, res.json?.outcome], [401, 'rejected'], name);
			assert.equal(rejection(`pp-${name}`), reason);
			assert.equal(eventCount('paypal', JSON.parse(body).id), 0);
			assert.equal(stand.hitsOf(served.name), 1);
			assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.certificates WHERE url = :'u'",
				{ u: served.url }), '0', 'a refused certificate was cached');
		}
		// verify_cert_chain false (tests and air-gapped installs only) skips chain, dates and name
		const served = stand.serve('expired-unchained', readFileSync(pki.path('expired.pem'), 'utf8'));
		const body = paypalEvent();
		const res = await post(shim.base, 'paypal-unchained', body, paypalHeaders(body, leafKey, served.url));
		assert.equal(res.status, 200, res.text);
	});

	test('what the certificate host answers: 5xx is 503 with Retry-After, 404 and oversized are 401', async () => {
		const body = paypalEvent();
		const failing = stand.serve('failing', 'try later', 502);
		const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, failing.url));
		assert.equal(res.status, 503, res.text);
		assert.ok(Number(res.headers.get('retry-after')) > 0, 'Retry-After header');
		const missing = `https://localhost:${stand.port}/v1/notifications/certs/CERT-nowhere`;
		const notFound = await post(shim.base, 'paypal', body,
			paypalHeaders(body, leafKey, missing, { requestId: 'pp-404' }));
		assert.equal(notFound.status, 401);
		assert.equal(rejection('pp-404'), 'cert_fetch_failed');
		const huge = stand.serve('huge', 'x'.repeat(100 * 1024));
		const tooBig = await post(shim.base, 'paypal', body,
			paypalHeaders(body, leafKey, huge.url, { requestId: 'pp-huge' }));
		assert.equal(tooBig.status, 401);
		assert.equal(rejection('pp-huge'), 'cert_fetch_failed');
		assert.equal(eventCount('paypal', JSON.parse(body).id), 0);
	});

	test('a certificate host that never answers: a query cancel stops the fetch at once, else 503 after the timeouts', async () => {
		const sockets = [];
		const hang = createNetServer((socket) => { sockets.push(socket); });
		const port = await freePort();
		await new Promise((resolve) => hang.listen(port, '127.0.0.1', resolve));
		try {
			cluster.psqlVars(`SELECT payments.register_provider('paypal-hang', 'paypal', :'s')`, {
				s: JSON.stringify({ webhook_id: WEBHOOK_ID, cert_hosts: [`localhost:${port}`], ca_file: pki.path('ca.pem') }),
			});
			const body = paypalEvent();
			const url = `https://localhost:${port}/v1/notifications/certs/CERT-hang`;
			const vars = { h: JSON.stringify(paypalHeaders(body, leafKey, url)), b: body };
			const sql = "SELECT http_status FROM payments.ingest('paypal-hang', :'h'::jsonb, convert_to(:'b', 'UTF8'))";
			let started = Date.now();
			assert.throws(() => cluster.psqlVars(`SET statement_timeout = '300ms'; ${sql}`, vars),
				/canceling statement due to statement timeout/);
			assert.ok(Date.now() - started < 2500, `cancel took ${Date.now() - started} ms`);
			// no TLS handshake: the 2 s connect timeout (the handshake is part of connecting)
			started = Date.now();
			assert.equal(cluster.psqlVars(`SET client_min_messages = error; ${sql}`, vars), '503');
			let elapsed = Date.now() - started;
			assert.ok(elapsed >= 1800 && elapsed < 4500, `the fetch gave up after ${elapsed} ms`);
			// connected, but no answer: the 5 s total timeout (through the shim, as psql would block
			// this process and with it the stand-in)
			const silent = stand.serve('silent', null);
			started = Date.now();
			const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, silent.url));
			assert.equal(res.status, 503, res.text);
			elapsed = Date.now() - started;
			assert.ok(elapsed >= 4800 && elapsed < 8000, `the fetch gave up after ${elapsed} ms`);
		} finally {
			for (const socket of sockets) socket.destroy();
			await new Promise((resolve) => hang.close(resolve));
		}
	});

	test('two bodies racing under one transmission id: the second waits for the first to commit and is refused', async () => {
		// body x and body y, each validly signed under the same transmission id and time (as a
		// CRC forgery of x would be); x is ingested in a transaction held open by psql
		const tid = randomUUID();
		const time = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
		const x = paypalEvent();
		const y = paypalEvent({ summary: 'Payment completed for $ 3000.0 USD' });
		const session = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', cluster.dir,
			'-p', String(cluster.port), '-U', 'postgres', '-d', 'payments',
			'-v', `h=${JSON.stringify(paypalHeaders(x, leafKey, good.url, { tid, time }))}`, '-v', `b=${x}`],
		{ stdio: ['pipe', 'pipe', 'pipe'] });
		try {
			let out = '';
			session.stdout.on('data', (d) => { out += d; });
			session.stdin.write("BEGIN; SELECT 'ingested ' || outcome FROM payments.ingest('paypal', :'h', convert_to(:'b', 'UTF8'));\n");
			for (let i = 0; !out.includes('ingested') && i < 400; i++) await sleep(25);
			assert.match(out, /ingested applied/);

			const waiting = async () => {
				for (let i = 0; i < 400; i++) {
					if (cluster.psql(`SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
						WHERE a.application_name = 'payments-shim' AND l.locktype = 'advisory' AND NOT l.granted`) !== '0') return 'waiting';
					await sleep(25);
				}
				return 'never waited';
			};
			const forged = post(shim.base, 'paypal', y, paypalHeaders(y, leafKey, good.url, { tid, time, requestId: `race-${tid}` }));
			const retry = post(shim.base, 'paypal', x, paypalHeaders(x, leafKey, good.url, { tid, time }));
			assert.equal(await Promise.race([forged.then((r) => `answered ${r.status}`), waiting()]), 'waiting');
			await new Promise((resolve) => { session.once('exit', resolve); session.stdin.end('COMMIT;\n'); });

			const [refused, again] = await Promise.all([forged, retry]);
			assert.equal(refused.status, 401, refused.text);
			assert.equal(rejection(`race-${tid}`), 'transmission_reused');
			assert.equal(eventCount('paypal', JSON.parse(y).id), 0);
			assert.deepEqual([again.status, again.json.outcome], [200, 'duplicate']);
		} finally {
			session.kill();
		}
		assert.equal(eventCount('paypal', JSON.parse(x).id), 1);
	});

	// One PayPal capture, reported by two deliveries at once (one naming its order, one naming
	// none), or by its webhook while reconciliation records the order's answer: which payment holds
	// it is decided under the capture's lock, so that the money pays one payment, with one receipt
	const race = () => {
		const tag = randomBytes(4).toString('hex').toUpperCase();
		const order = `ORDER-RACE${tag}`;
		const capture = `CAP-RACE${tag}`;
		const captured = { id: capture, status: 'COMPLETED', amount: { currency_code: 'USD', value: '30.00' } };
		const deliver = async (event) => {
			const body = paypalEvent(event);
			const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, good.url));
			assert.equal(res.status, 200, res.text);
			return res.json.outcome;
		};
		const approve = () => deliver({ event_type: 'CHECKOUT.ORDER.APPROVED', resource_type: 'checkout-order',
			resource: { id: order, status: 'APPROVED', purchase_units: [{ amount: { currency_code: 'USD', value: '30.00' } }] } });
		// each payment of the two refs: status, receipts, and the capture it holds
		const payments = () => cluster.psqlVars(`SELECT string_agg(concat_ws(' ', p.provider_ref, p.status,
				(SELECT count(*) FROM payments.receipts r WHERE r.payment_id = p.id),
				(SELECT string_agg(k.capture_id, ',') FROM payments.paypal_captures k WHERE k.payment_id = p.id)), '; '
				ORDER BY p.provider_ref)
			FROM payments.payments p WHERE p.provider = 'paypal' AND p.provider_ref IN (:'o', :'c')`, { o: order, c: capture });
		return { order, capture, captured, deliver, approve, payments };
	};

	test('two deliveries of one capture at once, one naming its order and one none, pay one payment', async () => {
		const r = race();
		assert.equal(await r.approve(), 'applied');
		// the order's payment held (an admin's transaction, say): the delivery naming the order waits
		// for it, while the same capture delivered without its order is applied
		const lock = await holdLock(cluster, `SELECT FROM payments.payments WHERE provider = 'paypal'
			AND provider_ref = '${r.order}' FOR UPDATE`);
		let named;
		try {
			named = r.deliver({ resource: { ...r.captured, supplementary_data: { related_ids: { order_id: r.order } } } });
			await shimLockWaiters(cluster, 1);
			assert.equal(await r.deliver({ resource: r.captured }), 'applied');
		} finally {
			await lock.release();
		}
		await named;
		// the capture's own payment holds it: the news naming the order is its news, not a second payment
		assert.equal(r.payments(), `${r.capture} paid 1 ${r.capture}; ${r.order} pending 0`);
	});

	test("a capture's webhook naming no order while reconciliation records its order's answer pays one payment", async () => {
		const r = race();
		assert.equal(await r.approve(), 'applied');
		// reconciliation finds the order paid by the capture, in a transaction held open
		const answer = JSON.stringify({ id: r.order, status: 'COMPLETED', purchase_units: [{
			amount: { currency_code: 'USD', value: '30.00' }, payments: { captures: [r.captured] } }] });
		const check = await holdLock(cluster, `INSERT INTO payments.reconciliation_checks (payment_id, provider, request, status_before)
			SELECT id, provider, 'GET http://127.0.0.1:9/v2/checkout/orders/${r.order}', status FROM payments.payments
			 WHERE provider = 'paypal' AND provider_ref = '${r.order}';
			SELECT payments.record_reconciliation(c.id, 200, NULL, '${answer}') FROM payments.reconciliation_checks c
			 WHERE c.request LIKE '%/orders/${r.order}'`);
		let bare;
		try {
			bare = r.deliver({ resource: r.captured });
			await shimLockWaiters(cluster, 1);
		} finally {
			await check.release();
		}
		await bare;
		assert.equal(r.payments(), `${r.order} paid 1 ${r.capture}`);
	});

	test('fetches of uncached certificates are bounded per sender: past a burst of 20, 503 without fetching; other senders still fetch', async () => {
		const body = paypalEvent();
		const before = stand.totalHits();
		const names = `https://localhost:${stand.port}/v1/notifications/certs/CERT-budget-${randomBytes(4).toString('hex')}-`;
		// one connection (psql, not blocking this process, which serves the stand-in): 24 deliveries from
		// one sender naming certificates the stand-in does not have (404), then one from another sender
		const psql = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
			'-h', cluster.dir, '-p', String(cluster.port), '-U', 'postgres', '-d', 'payments',
			'-v', `h=${JSON.stringify(paypalHeaders(body, leafKey, good.url))}`, '-v', `b=${body}`, '-v', `u=${names}`],
		{ stdio: ['pipe', 'pipe', 'inherit'] });
		let stdout = '';
		psql.stdout.on('data', (d) => { stdout += d; });
		const exited = new Promise((resolve) => psql.once('exit', resolve));
		const started = Date.now();
		psql.stdin.end(`SET client_min_messages = error;
			SELECT string_agg(d.http_status::text, ' ' ORDER BY i) FROM generate_series(1, 24) AS i,
				LATERAL payments.ingest('paypal', jsonb_set(:'h'::jsonb, '{paypal-cert-url}', to_jsonb(:'u' || i)),
										convert_to(:'b', 'UTF8'), '198.51.100.7') AS d;
			SELECT http_status FROM payments.ingest('paypal', jsonb_set(:'h'::jsonb, '{paypal-cert-url}', to_jsonb(:'u' || 'other')),
													 convert_to(:'b', 'UTF8'), '203.0.113.9');\n`);
		assert.equal(await exited, 0);
		const elapsed = Date.now() - started;
		const [first, other] = stdout.trim().split('\n');
		const statuses = first.split(' ');
		const fetched = statuses.filter((x) => x === '401').length;
		// 401s (fetched, not found), then 503s; a token comes back every 3 s
		assert.match(first, /^(401 )+(503 ?)+$/, first);
		assert.ok(fetched >= 20 && fetched <= 20 + Math.ceil(elapsed / 3000), `${fetched} fetched in ${elapsed} ms`);
		assert.equal(other, '401', 'another sender still fetches');
		assert.equal(stand.totalHits() - before, fetched + 1, 'the 503s fetched nothing');
	});

	test('a certificate whose 200 breaks off halfway is 503 (PayPal retries), not a rejection', async () => {
		const cut = stand.serve('cut', readFileSync(pki.path('good.pem'), 'utf8'), 200, { cut: true });
		const body = paypalEvent();
		const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, cut.url));
		assert.equal(res.status, 503, res.text);
		assert.equal(stand.hitsOf(cut.name), 1);
		assert.equal(eventCount('paypal', JSON.parse(body).id), 0);
		assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.rejections WHERE headers ->> 'paypal-cert-url' = :'u'",
			{ u: cut.url }), '0', 'a transient failure was recorded as a rejection');
		assert.equal(cluster.psqlVars('SELECT count(*) FROM payments.certificates WHERE url = :\'u\'', { u: cut.url }), '0');
	});

	test('with the stand-in down, an uncached certificate is 503 with Retry-After; a cached one still verifies', async () => {
		const fresh = stand.serve('fresh', readFileSync(pki.path('good.pem'), 'utf8'));
		await stand.stop();
		const body = paypalEvent();
		const res = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, fresh.url));
		assert.equal(res.status, 503, res.text);
		assert.ok(Number(res.headers.get('retry-after')) > 0, 'Retry-After header');
		assert.equal(eventCount('paypal', JSON.parse(body).id), 0);
		assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.rejections WHERE headers ->> 'paypal-cert-url' = :'u'",
			{ u: fresh.url }), '0', 'a transient failure was recorded as a rejection');
		const cached = await post(shim.base, 'paypal', body, paypalHeaders(body, leafKey, good.url));
		assert.equal(cached.status, 200, cached.text);
		assert.equal(stand.hitsOf(good.name), 1);
	});
});
