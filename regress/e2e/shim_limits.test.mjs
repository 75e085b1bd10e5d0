// The shim facing hostile or careless clients, and operated: settings, limits and their
// documented answers (while other clients are still served), metrics, JSON logs without
// secrets, /ready, SIGHUP, SIGTERM twice, the shutdown deadline and TLS.  Every shim here is
// the AddressSanitizer/UBSan build and must exit without a sanitizer report.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, Shim, freePort, sleep, request, rawSession, parseMetrics, parseLogLines, runShim, stopShimAndCluster, waitFor,
	holdLock, shimLockWaiters, shimLogLines, waitShimInFlight, waitShimQueued } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const stripe = new Stripe('sk_test_not_used_offline');
const stripeSecret = `whsec_${randomBytes(24).toString('hex')}`;
const verifyToken = `verify-${randomBytes(12).toString('hex')}`;
const metaAppSecret = randomBytes(16).toString('hex');
const bodyMarker = `body-marker-${randomBytes(8).toString('hex')}`;
const authSecret = `Bearer secret-${randomBytes(8).toString('hex')}`;

let cluster;
let shim;
let logFile;
const signaturesSent = [];
let seq = 0;

// A signed Stripe delivery: { body, headers, id }.
function stripeDelivery(extraHeaders = {}) {
	seq += 1;
	const id = `evt_limits_${process.pid}_${seq}`;
	const body = JSON.stringify({ id, object: 'event', type: 'payment_intent.succeeded', created: Math.floor(Date.now() / 1000),
		data: { object: { id: `pi_${seq}`, amount: 100, currency: 'usd', note: bodyMarker } } });
	const signature = stripe.webhooks.generateTestHeaderString({ payload: body, secret: stripeSecret });
	signaturesSent.push(signature);
	return { id, body, headers: { 'content-type': 'application/json', 'stripe-signature': signature, ...extraHeaders } };
}

function postStripe(port, delivery, options = {}) {
	return request(port, { method: 'POST', path: '/webhooks/stripe', headers: delivery.headers, body: delivery.body,
		...options });
}

async function metrics(port) {
	const res = await request(port, { path: '/metrics' });
	assert.equal(res.status, 200);
	assert.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/);
	return parseMetrics(res.text).samples;
}

function delta(beforeSamples, afterSamples, key) {
	return (afterSamples.get(key) ?? 0) - (beforeSamples.get(key) ?? 0);
}

function logLines() {
	return parseLogLines(readFileSync(logFile, 'utf8'));
}

// Waits until fn() returns a truthy value, polling every intervalMs.
async function eventually(fn, timeoutMs = 15000, intervalMs = 100) {
	const deadline = Date.now() + timeoutMs;
	for (;;) {
		const v = await fn();
		if (v) return v;
		if (Date.now() > deadline) throw new Error('condition not reached in time');
		await sleep(intervalMs);
	}
}

// The TLS version a client with these options negotiates with 127.0.0.1:port (rejects if none).
function tlsProtocol(port, options) {
	return new Promise((resolve, reject) => {
		const socket = tlsConnect({ host: '127.0.0.1', port, ...options }, () => {
			resolve(socket.getProtocol());
			socket.destroy();
		});
		socket.setTimeout(5000, () => socket.destroy(new Error('no handshake within 5 s')));
		socket.on('error', reject);
	});
}

describe('shim settings', () => {
	test('--help lists every setting with its environment variable and default', () => {
		const { status, stdout } = runShim(['--help']);
		assert.equal(status, 0);
		for (const [flag, env] of [['--listen', 'LISTEN'], ['--dsn', 'DSN'], ['--threads', 'THREADS'],
			['--max-body', 'MAX_BODY'], ['--max-header', 'MAX_HEADER'], ['--max-connections', 'MAX_CONNECTIONS'],
			['--max-connections-per-ip', 'MAX_CONNECTIONS_PER_IP'], ['--idle-timeout', 'IDLE_TIMEOUT'],
			['--request-timeout', 'REQUEST_TIMEOUT'], ['--rate', 'RATE'], ['--rate-burst', 'RATE_BURST'],
			['--rate-exempt', 'RATE_EXEMPT'], ['--rate-ipv6-prefix', 'RATE_IPV6_PREFIX'],
			['--trusted-proxies', 'TRUSTED_PROXIES'], ['--log-level', 'LOG_LEVEL'], ['--log-file', 'LOG_FILE'],
			['--shutdown-timeout', 'SHUTDOWN_TIMEOUT'], ['--tls-cert', 'TLS_CERT'], ['--tls-key', 'TLS_KEY']]) {
			assert.match(stdout, new RegExp(`^${flag} .*PAYMENTS_SHIM_${env} `, 'm'), flag);
		}
	});

	test('a bad value is a clear error at start, with exit status 2', () => {
		const cases = [
			[['--threads', '0'], {}, /--threads/],
			[['--rate', 'fast'], {}, /--rate/],
			[['--rate-ipv6-prefix', '16'], {}, /--rate-ipv6-prefix/],
			[[], { PAYMENTS_SHIM_RATE_IPV6_PREFIX: '129' }, /PAYMENTS_SHIM_RATE_IPV6_PREFIX/],
			[[], { PAYMENTS_SHIM_MAX_HEADER: '10' }, /PAYMENTS_SHIM_MAX_HEADER/],
			[['--trusted-proxies', '10.0.0.0/33'], {}, /--trusted-proxies/],
			[['--trusted-proxies', '10.0.0.1,not-an-ip'], {}, /not-an-ip/],
			[['--log-level', 'loud'], {}, /--log-level/],
			[['--max-connections', '2', '--threads', '4'], {}, /--max-connections/],
			[['--idle-timeout', '0'], {}, /--idle-timeout/],
			[['--listen', 'localhost:80'], {}, /--listen/],
			[['--tls-cert', '/etc/hostname'], {}, /--tls-key/],
			[['--tls-cert', '/etc/hostname', '--tls-key', '/etc/hostname'], {}, /PEM/],
			[['--tls-cert', '/nonexistent.pem', '--tls-key', '/nonexistent.pem'], {}, /cannot open/],
			[['--log-file', '/nonexistent/dir/shim.log'], {}, /log file/],
			[['--dsn', 'host=x bogus_keyword=1'], {}, /dsn/],
			// libpq's message would quote the password; it is left out
			[['--dsn', 'postgresql://shim:Secr3t%zzPW@db/payments'], {}, /^payments-shim: invalid --dsn: (?!.*Secr3t)/s],
			[['--dsn', 'host=db password=Secr3t PW'], {}, /^payments-shim: invalid --dsn: (?!.*Secr3t)(?!.*PW)/s],
			[['--no-such-flag'], {}, /unknown argument/],
		];
		for (const [args, env, message] of cases) {
			const r = runShim(args, env);
			assert.equal(r.status, 2, `${args.join(' ')} ${JSON.stringify(env)}: ${r.stderr}`);
			assert.match(r.stderr, message);
		}
	});
	test('an unknown argument is named without its value: a mistyped flag never prints a password', () => {
		const password = 'DSNPASSWORD9x';
		for (const [arg, message] of [
			[`--dsn-file=postgresql://shim:${password}@127.0.0.1/payments`, /^payments-shim: unknown argument "--dsn-file" \(its value is not shown\)$/m],
			[`--dsnpostgresql://shim:${password}@127.0.0.1/payments`, /^payments-shim: unknown argument "--dsnpostgresql" \(the rest is not shown\)$/m],
			[`postgresql://shim:${password}@127.0.0.1/payments`, /^payments-shim: unexpected argument \(not shown/m],
			[`host=127.0.0.1 password=${password}`, /^payments-shim: unexpected argument \(not shown/m],
		]) {
			const r = runShim([arg]);
			assert.equal(r.status, 2, r.stderr);
			assert.match(r.stderr, message);
			assert.ok(!r.stderr.includes(password) && !r.stdout.includes(password), `the password is printed: ${r.stderr}`);
		}
	});
});

// Starts the shim with these arguments and environment and waits up to 10 s for it to exit (it
// refuses these settings before it does anything: a few milliseconds; the margin is for a loaded
// machine, and costs nothing when the shim does exit).  One
// still running is asked for /ready, which makes a batch thread connect to the database (and log
// a failure), then stopped.  Resolves with { code, stderr, exited } (exited: it ended by itself).
async function shimUntilExit(args, env) {
	const port = await freePort();
	const proc = spawn(process.env.PAYMENTS_SHIM, ['--listen', `127.0.0.1:${port}`, ...args], {
		stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
	let stderr = '';
	proc.stderr.setEncoding('utf8');
	proc.stderr.on('data', (chunk) => { stderr += chunk; });
	const exitedAt = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
	let code = await Promise.race([exitedAt, sleep(10000).then(() => undefined)]);
	const exited = code !== undefined;
	if (!exited) {
		await request(port, { path: '/ready', timeoutMs: 10000 }).catch(() => null);
		await sleep(1000);
		proc.kill('SIGKILL');
		code = await exitedAt;
	}
	return { code, stderr, exited };
}

describe('shim limits, metrics and logs', () => {
	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		cluster.psqlVars(`
			SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'s1');
			SELECT payments.register_provider('wa', 'meta', json_build_object('verify_token', :'vt')::jsonb);
			SELECT payments.add_secret('wa', :'s2');`, { s1: stripeSecret, vt: verifyToken, s2: metaAppSecret });
		logFile = join(cluster.dir, 'shim.log');
		shim = new Shim(cluster.dsn, ['--threads', '2', '--max-body', '65536', '--max-header', '8192',
			'--max-connections-per-ip', '4', '--idle-timeout', '1', '--request-timeout', '3',
			'--rate', '5', '--rate-burst', '10', '--rate-exempt', '127.0.0.30',
			'--trusted-proxies', '127.0.0.3, 10.0.0.0/8',
			'--log-file', logFile]);
		await shim.start();
	});

	after(() => stopShimAndCluster(shim, cluster));

	test('a body over --max-body gets 413 before it is read; others are served meanwhile', async () => {
		const big = stripeDelivery();
		big.body += ' '.repeat(70000);
		const declared = await rawSession(shim.port, { chunks: [
			`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
			`Content-Length: ${Buffer.byteLength(big.body)}\r\n\r\n`] });
		assert.match(declared.data, /^HTTP\/1\.1 413 /);
		// chunked, over the cap by less than the cap again: dropped, and answered 413 when it ends
		const streamed = await postStripe(shim.port, big, { headers: { ...big.headers, 'transfer-encoding': 'chunked' } });
		assert.equal(streamed.status, 413, streamed.text);
		assert.equal(streamed.json.error, 'request body too large');
		// chunked, more than --max-body beyond the cap: the connection is closed without an answer
		const piece = ' '.repeat(16384);
		const flood = await rawSession(shim.port, { timeoutMs: 5000, chunks: [
			`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
			`Stripe-Signature: ${big.headers['stripe-signature']}\r\nTransfer-Encoding: chunked\r\n\r\n`,
			...Array.from({ length: 16 }, () => `${piece.length.toString(16)}\r\n${piece}\r\n`), '0\r\n\r\n'] });
		assert.ok(flood.closed, 'closed by the shim');
		assert.equal(flood.data, '', 'no answer');
		assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.events WHERE event_id = :'e'", { e: big.id }), '0',
			'nothing stored');
		const small = stripeDelivery();
		assert.equal((await postStripe(shim.port, small)).status, 200);
	});

	test('a chunked body over --max-body by up to --max-body bytes gets 413; only beyond that is it cut', async () => {
		// --max-body 1000: a chunk that crosses the limit counts only its bytes past it
		const s = new Shim(cluster.dsn, ['--max-body', '1000', '--rate', '0']);
		await s.start();
		try {
			const chunked = (sizes) => rawSession(s.port, { timeoutMs: 5000, chunks: [
				'POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n',
				...sizes.map((n) => `${n.toString(16)}\r\n${'x'.repeat(n)}\r\n`), '0\r\n\r\n'] });
			assert.match((await chunked([1000])).data, /^HTTP\/1\.1 401 /, 'at the limit: read (and refused unsigned)');
			for (const sizes of [[1001], [1100], [1999], [2000], [600, 600, 800], [999, 1, 1000]]) {
				const r = await chunked(sizes);
				assert.match(r.data, /^HTTP\/1\.1 413 /, `${sizes.join('+')} bytes: ${r.data.slice(0, 40) || 'no answer'}`);
				assert.match(r.data, /request body too large/);
			}
			for (const sizes of [[2001], [600, 600, 801], [1000, 1001]]) {
				const r = await chunked(sizes);
				assert.ok(r.closed && r.data === '', `${sizes.join('+')} bytes: closed without an answer`);
			}
			assert.equal((await request(s.port, { path: '/health' })).status, 200);
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('request headers over --max-header get 431, ours or libmicrohttpd\'s', async () => {
		const over = await rawSession(shim.port, { chunks: [
			`GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: ${'a'.repeat(10000)}\r\n\r\n`] });
		assert.match(over.data, /^HTTP\/1\.1 431 /);
		assert.match(over.data, /X-Request-ID: /i);
		const huge = await rawSession(shim.port, { chunks: [
			`GET /health HTTP/1.1\r\nHost: x\r\n${'X-Many: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n'.repeat(1500)}\r\n`] });
		assert.match(huge.data, /^HTTP\/1\.1 431 /);
		assert.equal((await request(shim.port, { path: '/health' })).status, 200);
	});

	test('a Content-Length libmicrohttpd cannot read is refused by it: 400, or 413 counted as body_too_large', async () => {
		const before = await metrics(shim.port);
		const sent = async (value) => (await rawSession(shim.port, { localAddress: '127.0.0.43', chunks: [
			`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${value}\r\n\r\n{}`] })).data;
		for (const value of ['abc', '-1']) assert.match(await sent(value), /^HTTP\/1\.1 400 /, value);
		assert.match(await sent('99999999999999999999999'), /^HTTP\/1\.1 413 /);
		const after = await metrics(shim.port);
		assert.equal(delta(before, after, 'payments_shim_rejections_total{reason="malformed_request"}'), 2);
		assert.equal(delta(before, after, 'payments_shim_rejections_total{reason="body_too_large"}'), 1);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="other",provider="",status="413"}'), 1);
		const refused = logLines().filter((l) => l.msg === 'request refused by libmicrohttpd').map((l) => l.status);
		assert.ok(refused.includes(413), JSON.stringify(refused));
		assert.equal((await request(shim.port, { path: '/health' })).status, 200);
	});

	test('repeated header names are joined in arrival order, whatever their case, across 15,000 headers', async () => {
		// 5,000 names sent three times each, round after round, in three spellings
		const s = new Shim(cluster.dsn, ['--max-header', '1048576', '--rate', '0']);
		await s.start();
		try {
			const delivery = stripeDelivery();
			const names = Array.from({ length: 5000 }, (_, i) => `x-n${i}`);
			const spell = [(n) => n, (n) => n.toUpperCase(), (n) => `X${n.slice(1)}`];
			const lines = [0, 1, 2].flatMap((round) => names.map((n) => `${spell[round](n)}: r${round}\r\n`));
			const res = await rawSession(s.port, { timeoutMs: 30000, chunks: [
				`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n` +
				`Stripe-Signature: ${delivery.headers['stripe-signature']}\r\nX-Once: a, b\r\n${lines.join('')}` +
				`Content-Length: ${Buffer.byteLength(delivery.body)}\r\n\r\n${delivery.body}`] });
			assert.match(res.data, /^HTTP\/1\.1 200 /, res.data.slice(0, 300));
			assert.equal(cluster.psqlVars(`SELECT concat_ws(' | ', (SELECT count(*) FROM jsonb_object_keys(headers) k WHERE k LIKE 'x-n%'),
					headers->>'x-n0', headers->>'x-n4999', headers->>'x-once', headers->>'stripe-signature' = :'sig')
				FROM payments.events WHERE event_id = :'e'`, { e: delivery.id, sig: delivery.headers['stripe-signature'] }),
			'5000 | r0, r1, r2 | r0, r1, r2 | a, b | t');
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('a webhook or Flows exchange whose client closed its side while it waited for the database leaks nothing and logs its outcome', async () => {
		// one thread, an older idle connection on it: libmicrohttpd then ends the resumed connection
		// on the closed socket without the final call that answers it
		const s = new Shim(cluster.dsn, ['--threads', '1', '--rate', '0']);
		await s.start();
		const idle = connect({ port: s.port, host: '127.0.0.1' });
		try {
			await new Promise((resolve) => idle.on('connect', resolve));
			const ended = [];
			for (let i = 0; i < 7; i++) {
				const sock = connect({ port: s.port, host: '127.0.0.1' });
				ended.push(new Promise((resolve) => { sock.on('close', resolve); sock.on('error', resolve); }));
				sock.on('connect', () => {
					sock.resume();
					sock.end(`POST /${i < 5 ? 'webhooks' : 'flows'}/nosuchprovider HTTP/1.1\r\nHost: x\r\n` +
						'Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}');
				});
			}
			await Promise.all(ended);
			// the shim has closed the five too (its open connections: the idle one and the /metrics request)
			await eventually(async () => parseMetrics((await request(s.port, { path: '/metrics' })).text).samples
				.get('payments_shim_connections') === 2, 10000, 25);
			assert.equal((await request(s.port, { path: '/health' })).status, 200);
			// each logs what the database said, not sent
			const lines = (path) => shimLogLines(s).filter((l) => l.msg === 'request' && l.path === path)
				.map((l) => [l.status, l.status_unsent, l.outcome]);
			assert.deepEqual(lines('/webhooks/nosuchprovider'), Array.from({ length: 5 }, () => [null, 404, 'unknown_provider']));
			assert.deepEqual(lines('/flows/nosuchprovider'), Array.from({ length: 2 }, () => [null, 404, 'unknown_provider']));
		} finally {
			idle.destroy();
			assert.equal((await s.stop()).code, 0);
		}
		assert.deepEqual(s.sanitizerReports(), [], 'no leak reported at exit');
	});

	test('webhooks stuck behind a slow database never fill --max-connections: /health answers, the rest get 503 at once', async () => {
		// 8 connections: at most 4 requests wait for the database, the others are answered 503 at once
		// (eight sent: a ninth would be over --max-connections, closed at once, while it is full).
		// --request-timeout 6: what is checked while the four wait is done long before it cuts them,
		// on a loaded machine too
		const s = new Shim(cluster.dsn, ['--max-connections', '8', '--threads', '2', '--request-timeout', '6', '--rate', '0']);
		await s.start();
		const lock = await holdLock(cluster, 'LOCK TABLE payments.events IN ACCESS EXCLUSIVE MODE');
		let results;
		try {
			const refused = [];
			const sent = Array.from({ length: 8 }, (_, i) => {
				const delivery = stripeDelivery({ 'x-request-id': `stuck-${i}` });
				const started = Date.now();
				return postStripe(s.port, delivery, { timeoutMs: 12000 }).then(
					(r) => ({ id: delivery.id, status: r.status, retryAfter: r.headers['retry-after'], ms: Date.now() - started,
						error: r.json?.error }),
					(e) => ({ id: delivery.id, status: `error: ${e.message}` })).then((r) => { if (r.status === 503) refused.push(r); return r; });
			});
			await shimLockWaiters(cluster, 1);
			// all eight in: four waiting for the database, four answered 503 (a 503 comes only while four
			// wait, so the fourth means that every request has arrived)
			await waitFor(() => refused.length >= 4, 5000, `four answered 503 (${refused.length} so far)`);
			// and their connections closed (the shim closes each once its answer is sent): the four
			// waiting hold four of the eight places
			await eventually(async () => (await request(s.port, { path: '/metrics', timeoutMs: 1500 })
				.then((r) => parseMetrics(r.text).samples.get('payments_shim_connections') - 1, () => -1)) === 4, 3000, 25);
			// (answered once the four are cut, they would take 6 s)
			for (const path of ['/health', '/metrics']) {
				const started = Date.now();
				assert.equal((await request(s.port, { path, timeoutMs: 3000 })).status, 200, path);
				assert.ok(Date.now() - started < 2000, `${path} took ${Date.now() - started} ms`);
			}
			results = await Promise.all(sent);
			// past --request-timeout, the stuck ones cut: still answered
			assert.equal((await request(s.port, { path: '/health', timeoutMs: 3000 })).status, 200);
		} catch (e) {
			s.kill();
			throw e;
		} finally {
			await lock.release();
		}
		try {
			const busy = results.filter((r) => r.status === 503);
			assert.equal(busy.length, 4, JSON.stringify(results));
			for (const r of busy) {
				assert.equal(r.error, 'too many requests waiting for the database');
				assert.ok(Number(r.retryAfter) > 0, 'Retry-After');
				assert.ok(r.ms < 2000, `answered 503 after ${r.ms} ms`);
			}
			// the four that waited were cut by --request-timeout, unanswered (those in a batch when the
			// lock ended are stored, their outcome made but not sent; those still queued never sent)
			assert.ok(results.every((r) => r.status === 503 || String(r.status).startsWith('error: ')), JSON.stringify(results));
			await waitFor(() => shimLogLines(s).filter((l) => l.msg === 'request' && /^stuck-/.test(l.request_id)).length === 8,
				10000, 'the request lines');
			const waited = shimLogLines(s).filter((l) => l.msg === 'request' && /^stuck-/.test(l.request_id) && l.status !== 503);
			assert.equal(waited.length, 4);
			for (const l of waited) assert.equal(l.status, null, JSON.stringify(l));
			const stored = Number(cluster.psqlVars(
				"SELECT count(*) FROM payments.events WHERE event_id = ANY (string_to_array(:'ids', ','))",
				{ ids: results.filter((r) => r.status !== 503).map((r) => r.id).join(',') }));
			assert.ok(stored >= 1 && stored <= 4, `${stored} of the four stored`);
			const metrics = parseMetrics((await request(s.port, { path: '/metrics' })).text).samples;
			assert.equal(metrics.get('payments_shim_rejections_total{reason="overloaded"}'), 4);
			assert.equal((await postStripe(s.port, stripeDelivery())).status, 200, 'served again');
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('/ready probes while the database does not answer hold one connection at most: /health and /metrics answer', async () => {
		// 8 connections; both batch threads held by webhooks waiting for a lock: one probe's check
		// waits behind them, the other probes are answered at once (before: each waited, holding a
		// connection, until the connections were full and /health hung)
		const s = new Shim(cluster.dsn, ['--max-connections', '8', '--threads', '2', '--batch-concurrency', '2',
			'--rate', '0']);
		await s.start();
		const probe = (timeoutMs = 1000) => {
			const started = Date.now();
			return request(s.port, { path: '/ready', timeoutMs }).then(
				(r) => ({ status: r.status, reason: r.json?.reason, retryAfter: r.headers['retry-after'], ms: Date.now() - started }),
				(e) => ({ status: `error: ${e.message}` }));
		};
		assert.equal((await request(s.port, { path: '/ready' })).status, 200, 'a last result');
		const lock = await holdLock(cluster, 'LOCK TABLE payments.events IN ACCESS EXCLUSIVE MODE');
		let stuck;
		try {
			// one after the other, so that they go in two batches, one on each thread
			stuck = [];
			for (const n of [1, 2]) {
				stuck.push(postStripe(s.port, stripeDelivery(), { timeoutMs: 30000 }).then((r) => r.status, (e) => e.message));
				await shimLockWaiters(cluster, n);
			}
			await sleep(1100);		// the last result is over a second old: the next probe checks again
			const checking = probe();
			// its check begun (the probe is in the shim: the two webhooks and it), the next probe within
			// the second after gets the last result
			await waitShimInFlight(s.port, 3);
			const meanwhile = await probe();
			const meanwhileAt = Date.now();
			assert.deepEqual([meanwhile.status, meanwhile.reason], [200, 'ready'], 'the last result, the check just begun');
			assert.match((await checking).status, /^error: /, 'the probe that checks waits for the database');
			// more than a second after the check began (it began before meanwhile was answered), the
			// others learn that the database does not answer.  Each is answered at once: a probe that
			// waited for the database would wait until the lock ends, after this test's 5 s timeout;
			// 2.5 s leaves a loaded machine room while far from that
			await sleep(Math.max(0, meanwhileAt + 1100 - Date.now()));
			const later = [];
			for (let i = 0; i < 6; i++) later.push(await probe(5000));
			for (const r of later) {
				assert.deepEqual([r.status, r.reason], [503, 'database not answering'], JSON.stringify(later));
				assert.ok(Number(r.retryAfter) > 0, 'Retry-After');
				assert.ok(r.ms < 2500, `answered after ${r.ms} ms`);
			}
			// (hung behind the full connections they would never answer: 2.5 s is far from that)
			for (const path of ['/health', '/metrics']) {
				const started = Date.now();
				assert.equal((await request(s.port, { path, timeoutMs: 5000 })).status, 200, path);
				assert.ok(Date.now() - started < 2500, `${path} took ${Date.now() - started} ms`);
			}
		} catch (e) {
			s.kill();
			throw e;
		} finally {
			await lock.release();
		}
		try {
			assert.deepEqual(await Promise.all(stuck), [200, 200]);
			// the waiting check is made once the batch threads are free: ready again
			await eventually(async () => (await request(s.port, { path: '/ready' })).status === 200, 10000, 200);
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('a webhook whose request timed out while queued is not sent to the database, and its connection is freed', async () => {
		// one batch thread, held by the first delivery; the second waits in the queue past --request-timeout
		const s = new Shim(cluster.dsn, ['--batch-concurrency', '1', '--request-timeout', '2', '--rate', '0']);
		await s.start();
		const lock = await holdLock(cluster, 'LOCK TABLE payments.events IN ACCESS EXCLUSIVE MODE');
		const first = stripeDelivery({ 'x-request-id': 'sent-first' });
		const queued = stripeDelivery({ 'x-request-id': 'queued-second' });
		const line = (id) => shimLogLines(s).find((l) => l.msg === 'request' && l.request_id === id);
		try {
			const a = postStripe(s.port, first).catch((e) => e.message);
			await shimLockWaiters(cluster, 1);
			const b = postStripe(s.port, queued).catch((e) => e.message);
			// its request ends (timed out) while the first still waits for the lock
			await waitFor(() => line('queued-second'), 6000, 'the queued request ended');
			assert.equal(line('sent-first'), undefined, 'the first still waits');
			assert.notEqual(line('queued-second').status_unsent ?? line('queued-second').status, 200);
			await Promise.all([a, b]);
		} catch (e) {
			s.kill();
			throw e;
		} finally {
			await lock.release();
		}
		try {
			await waitFor(() => line('sent-first'), 10000, 'the first request ended');
			// the first was sent before its request timed out: its real outcome, unsent (the connection is gone)
			// (whether MHD noticed the broken connection before or after the call that answers it)
			assert.deepEqual([line('sent-first').status, line('sent-first').status_unsent, line('sent-first').outcome],
				[null, 200, 'applied']);
			assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.events WHERE event_id = :'e'", { e: first.id }), '1');
			assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.events WHERE event_id = :'e'", { e: queued.id }), '0',
				'the timed-out delivery never reached the database');
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('a handshake or a Flows exchange waiting for the database holds no MHD thread: /health answers', async () => {
		// one MHD thread; a session holds the providers table, so each call waits for it
		const s = new Shim(cluster.dsn, ['--threads', '1', '--rate', '0']);
		await s.start();
		const lock = await holdLock(cluster, 'LOCK TABLE payments.providers IN ACCESS EXCLUSIVE MODE');
		try {
			const handshake = request(s.port, { path: `/webhooks/wa?hub.mode=subscribe&hub.challenge=77&hub.verify_token=${verifyToken}` });
			const flows = request(s.port, { method: 'POST', path: '/flows/wa', headers: { 'content-type': 'application/json' },
				body: '{}' });
			await shimLockWaiters(cluster, 2);
			// with the one MHD thread held they would wait until the lock ends (never, before they
			// answer): 5 s leaves a loaded machine room while far from that
			const started = Date.now();
			assert.equal((await request(s.port, { path: '/health', timeoutMs: 5000 })).status, 200);
			assert.equal((await request(s.port, { path: '/metrics', timeoutMs: 5000 })).status, 200);
			assert.ok(Date.now() - started < 5000, `/health and /metrics took ${Date.now() - started} ms`);
			await lock.release();
			const answered = await handshake;
			assert.equal(answered.status, 200);
			assert.equal(answered.text, '77');
			assert.equal((await flows).status, 432);	// unsigned: refused, after the wait
			assert.equal((await request(s.port, { path: '/ready' })).status, 200);
		} finally {
			lock.kill();
			assert.equal((await s.stop()).code, 0);
		}
		assert.deepEqual(s.sanitizerReports(), []);
	});

	test('handshakes and webhooks take turns on the batch threads: a flood of handshakes does not hold a webhook back', async () => {
		// one batch thread, waiting in a handshake for a lock; a webhook, then 40 handshakes, queue behind it.
		// The order the thread makes them in is read from the server's log of this shim's statements (the
		// order their answers reach the client is not it: a handshake takes a few microseconds, and
		// the MHD threads race to send the answers).
		const s = new Shim(`${cluster.dsn} options='-c log_statement=all'`, ['--rate', '0', '--batch-concurrency', '1']);
		await s.start();
		const serverLog = join(cluster.dir, 'log');
		const logStart = readFileSync(serverLog).length;
		const lock = await holdLock(cluster, 'LOCK TABLE payments.providers IN ACCESS EXCLUSIVE MODE');
		const answers = [];
		const handshake = (i) => request(s.port, { path: `/webhooks/wa?hub.mode=subscribe&hub.challenge=${i}&hub.verify_token=${verifyToken}` })
			.then((r) => { answers.push(`handshake ${i} ${r.status}`); });
		try {
			const first = handshake(0);
			await shimLockWaiters(cluster, 1);
			const webhook = postStripe(s.port, stripeDelivery()).then((r) => { answers.push(`webhook ${r.status}`); });
			await waitShimQueued(s.port, 2);		// the webhook queued before the flood
			const flood = Array.from({ length: 40 }, (_, i) => handshake(i + 1));
			await waitShimQueued(s.port, 42);		// and the flood behind it
			await lock.release();
			await Promise.all([first, webhook, ...flood]);
		} finally {
			lock.kill();
			assert.equal((await s.stop()).code, 0);
		}
		assert.equal(answers.filter((a) => / 200$/.test(a)).length, 42, answers.join(', '));
		// the handshake held when the lock ended, then the webhook, then the handshakes that came after
		// it (without turns it would be made last)
		const made = readFileSync(serverLog).subarray(logStart).toString().split('\n')
			.map((l) => /execute payments_(meta_subscribe|ingest|ingest_batch)\b/.exec(l)?.[1]).filter(Boolean)
			.map((name) => (name === 'meta_subscribe' ? 'handshake' : 'webhook'));
		assert.deepEqual([made.length, made.indexOf('webhook')], [42, 1], made.join(', '));
		assert.deepEqual(s.sanitizerReports(), []);
	});

	test('two Content-Length headers, or one beside Transfer-Encoding, get 400: no request is smuggled after them', async () => {
		for (const framing of ['Content-Length: 2\r\nContent-Length: 5', 'Content-Length: 2\r\nTransfer-Encoding: chunked']) {
			const r = await rawSession(shim.port, { localAddress: '127.0.0.14', timeoutMs: 3000, chunks: [
				`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${framing}\r\n\r\n` +
				'{}GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'] });
			assert.match(r.data, /^HTTP\/1\.1 400 /, framing);
			assert.match(r.data, /conflicting Content-Length or Transfer-Encoding headers/);
			assert.doesNotMatch(r.data, /payments_shim_/, 'the request after it is not served');
		}
	});

	test('a Transfer-Encoding other than chunked alone is answered at once (501 or 400) and the connection closed', async () => {
		const body = '3\r\nabc\r\n0\r\n\r\n';
		for (const [framing, rest, status] of [
			['Transfer-Encoding: gzip', 'abc', 400],			// chunked not last: no length to read by
			['Transfer-Encoding: identity', 'abc', 400],
			['Transfer-Encoding: gzip, chunked', body, 501],	// a coding the shim does not decode: 501
			['Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked', body, 501],
			['Transfer-Encoding: chunked, chunked', body, 400],	// chunked twice
			['Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked', body, 400],
			['Transfer-Encoding: chunked, gzip', 'abc', 400],
			['Transfer-Encoding: chunked;q=1', body, 400],
		]) {
			const started = Date.now();
			const r = await rawSession(shim.port, { localAddress: '127.0.0.16', timeoutMs: 3000, chunks: [
				`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${framing}\r\n\r\n${rest}` +
				'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'] });
			assert.match(r.data, new RegExp(`^HTTP/1\\.1 ${status} `), `${framing}: ${r.data.slice(0, 40) || 'no answer'}`);
			assert.match(r.data, /\r\nConnection: close\r\n/i, framing);
			assert.match(r.data, /unsupported Transfer-Encoding/, framing);
			assert.doesNotMatch(r.data, /payments_shim_/, `${framing}: the request after it is not served`);
			assert.ok(r.closed && Date.now() - started < 2000, `${framing}: closed at once`);
		}
		// on any route; and a plain chunked body, in any case, is read as ever
		const health = await rawSession(shim.port, { localAddress: '127.0.0.16', timeoutMs: 3000, chunks: [
			'GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n'] });
		assert.match(health.data, /^HTTP\/1\.1 400 /);
		const delivery = stripeDelivery();
		const chunked = await rawSession(shim.port, { localAddress: '127.0.0.16', timeoutMs: 3000, chunks: [
			'POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n' +
			`Stripe-Signature: ${delivery.headers['stripe-signature']}\r\nTransfer-Encoding: Chunked\r\n\r\n` +
			`${Buffer.byteLength(delivery.body).toString(16)}\r\n${delivery.body}\r\n0\r\n\r\n`] });
		assert.match(chunked.data, /^HTTP\/1\.1 200 /, chunked.data.slice(0, 200));
	});

	// RFC 9112 section 3.2: an HTTP/1.1 request must carry one Host header, a request of any version
	// no more than one.  A signed Stripe delivery as raw bytes, with the given request line version
	// and Host lines, sent from its own address (its own rate); resolves with { delivery, r, body }.
	async function hostDelivery(version, hostLines, requestId) {
		const delivery = stripeDelivery({ 'x-request-id': requestId });
		const headers = Object.entries(delivery.headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
		const r = await rawSession(shim.port, { localAddress: '127.0.0.17', timeoutMs: 3000, chunks: [
			`POST /webhooks/stripe ${version}\r\n${hostLines}Connection: close\r\n${headers}` +
			`Content-Length: ${Buffer.byteLength(delivery.body)}\r\n\r\n${delivery.body}`] });
		return { delivery, r, body: r.data.slice(r.data.indexOf('\r\n\r\n') + 4) };
	}

	// GET /health as raw bytes, with the given request line version and Host lines
	function hostHealth(version, hostLines) {
		return rawSession(shim.port, { localAddress: '127.0.0.17', timeoutMs: 3000, chunks: [
			`GET /health ${version}\r\n${hostLines}Connection: close\r\n\r\n`] });
	}

	// Stored events and recorded rejections of a delivery
	function traces(delivery, requestId) {
		return cluster.psqlVars(`SELECT (SELECT count(*) FROM payments.events WHERE event_id = :'e') || ' ' ||
			(SELECT count(*) FROM payments.rejections WHERE request_id = :'r')`, { e: delivery.id, r: requestId });
	}

	test('an HTTP/1.1 request without Host gets 400 and never reaches the database; HTTP/1.0 needs none', async () => {
		const before = await metrics(shim.port);
		const health = await hostHealth('HTTP/1.1', '');
		assert.match(health.data, /^HTTP\/1\.1 400 /, health.data.slice(0, 200));
		assert.match(health.data, /\r\nContent-Type: application\/json\r\n/i);
		assert.match(health.data, /\r\nX-Request-ID: [0-9a-f-]{36}\r\n/i);
		assert.deepEqual(JSON.parse(health.data.slice(health.data.indexOf('\r\n\r\n') + 4)),
			{ error: 'missing Host header (required in HTTP/1.1)' });
		// a correctly signed delivery: refused before anything is sent to the database
		const refused = await hostDelivery('HTTP/1.1', '', 'no-host-1');
		assert.match(refused.r.data, /^HTTP\/1\.1 400 /, refused.r.data.slice(0, 200));
		assert.match(refused.r.data, /\r\nX-Request-ID: no-host-1\r\n/i);
		assert.deepEqual(JSON.parse(refused.body), { error: 'missing Host header (required in HTTP/1.1)' });
		assert.equal(traces(refused.delivery, 'no-host-1'), '0 0', 'nothing stored, nothing recorded');
		// HTTP/1.0 without Host is served as ever, through the database too
		const old = await hostHealth('HTTP/1.0', '');
		assert.match(old.data, /^HTTP\/1\.1 200 /, old.data.slice(0, 200));
		const stored = await hostDelivery('HTTP/1.0', '', 'no-host-1.0');
		assert.match(stored.r.data, /^HTTP\/1\.1 200 /, stored.r.data.slice(0, 300));
		assert.equal(JSON.parse(stored.body).outcome, 'applied');
		assert.equal(traces(stored.delivery, 'no-host-1.0'), '1 0');
		// counted as the shim's other early refusals are
		const after = await metrics(shim.port);
		assert.equal(delta(before, after, 'payments_shim_rejections_total{reason="malformed_request"}'), 2);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="health",provider="",status="400"}'), 1);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="webhook",provider="_other",status="400"}'), 1);
	});

	test('a request with more than one Host header gets 400, whatever its version, and never reaches the database', async () => {
		const before = await metrics(shim.port);
		for (const [version, hostLines] of [['HTTP/1.1', 'Host: a\r\nHost: b\r\n'], ['HTTP/1.1', 'Host: x\r\nhost: x\r\n'],
			['HTTP/1.0', 'Host: a\r\nHOST: b\r\n']]) {
			const health = await hostHealth(version, hostLines);
			assert.match(health.data, /^HTTP\/1\.1 400 /, `${version} ${JSON.stringify(hostLines)}: ${health.data.slice(0, 200)}`);
			assert.deepEqual(JSON.parse(health.data.slice(health.data.indexOf('\r\n\r\n') + 4)), { error: 'more than one Host header' });
		}
		const refused = await hostDelivery('HTTP/1.1', 'Host: 127.0.0.1\r\nHost: evil.example\r\n', 'two-hosts-1');
		assert.match(refused.r.data, /^HTTP\/1\.1 400 /, refused.r.data.slice(0, 200));
		assert.match(refused.r.data, /\r\nX-Request-ID: two-hosts-1\r\n/i);
		assert.deepEqual(JSON.parse(refused.body), { error: 'more than one Host header' });
		assert.equal(traces(refused.delivery, 'two-hosts-1'), '0 0', 'nothing stored, nothing recorded');
		// one Host header, as ever
		assert.match((await hostHealth('HTTP/1.1', 'Host: x\r\n')).data, /^HTTP\/1\.1 200 /);
		const after = await metrics(shim.port);
		assert.equal(delta(before, after, 'payments_shim_rejections_total{reason="malformed_request"}'), 4);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="health",provider="",status="400"}'), 3);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="webhook",provider="_other",status="400"}'), 1);
	});

	// RFC 9112 section 5.1: no whitespace between a header name and its colon.  libmicrohttpd
	// 0.9.75 keeps it in the name ("Authorization " for "Authorization : ..."), which then escapes
	// every check by name: the extension's removal of Authorization before it stores the headers,
	// the shim's framing checks, the body's length itself.  Any name that is not a token is 400.
	test('a header name with whitespace before the colon, or another character a token may not hold, gets 400: nothing reaches the database', async () => {
		const credential = `Bearer name-ws-${randomBytes(8).toString('hex')}`;
		// a request that would be served after the delivery if its framing were misread
		const smuggled = 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n';
		// [what, signed, header lines ending in the body's framing; LENGTH: the body's length]
		const cases = [
			['a space before the colon', true, `Authorization : ${credential}\r\nContent-Length: LENGTH\r\n`],
			['a tab before the colon', true, `Authorization\t: ${credential}\r\nContent-Length: LENGTH\r\n`],
			['unsigned, a space before the colon', false, `Authorization : ${credential}\r\nContent-Length: LENGTH\r\n`],
			['Transfer-Encoding<tab>: chunked beside a Content-Length', true, 'Transfer-Encoding\t: chunked\r\nContent-Length: LENGTH\r\n'],
			['Content-Length<space>:', true, 'Content-Length : LENGTH\r\n'],
			['a separator in the name', true, 'X-Note(1): yes\r\nContent-Length: LENGTH\r\n'],
			['a byte outside ASCII in the name', true, 'X-Not\u00e9: yes\r\nContent-Length: LENGTH\r\n'],
		];
		const before = await metrics(shim.port);
		for (const [i, [what, signed, lines]] of cases.entries()) {
			const requestId = `bad-name-${i}`;
			const delivery = stripeDelivery({ 'x-request-id': requestId });
			if (!signed) delete delivery.headers['stripe-signature'];
			const head = Object.entries(delivery.headers).map(([name, value]) => `${name}: ${value}\r\n`).join('') +
				lines.replace('LENGTH', String(Buffer.byteLength(delivery.body)));
			const r = await rawSession(shim.port, { localAddress: '127.0.0.18', timeoutMs: 3000, chunks: [
				`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n${head}\r\n${delivery.body}${smuggled}`] });
			assert.match(r.data, /^HTTP\/1\.1 400 /, `${what}: ${r.data.slice(0, 300)}`);
			assert.match(r.data, /\r\nConnection: close\r\n/i, what);
			assert.match(r.data, new RegExp(`\\r\\nX-Request-ID: ${requestId}\\r\\n`, 'i'), what);
			assert.deepEqual(JSON.parse(r.data.slice(r.data.indexOf('\r\n\r\n') + 4)), { error: 'invalid request header name' }, what);
			assert.doesNotMatch(r.data, /payments_shim_/, `${what}: the request after it is not served`);
			assert.equal(traces(delivery, requestId), '0 0', `${what}: nothing stored, nothing recorded`);
		}
		assert.equal(cluster.psqlVars(`SELECT (SELECT count(*) FROM payments.events WHERE headers::text LIKE '%' || :'c' || '%') +
			(SELECT count(*) FROM payments.rejections WHERE headers::text LIKE '%' || :'c' || '%')`, { c: credential }), '0',
		'the credential is stored nowhere');
		// on every route
		const health = await rawSession(shim.port, { localAddress: '127.0.0.18', timeoutMs: 3000, chunks: [
			`GET /health HTTP/1.1\r\nHost: x\r\nAuthorization : ${credential}\r\n\r\n`] });
		assert.match(health.data, /^HTTP\/1\.1 400 /, health.data.slice(0, 200));
		// counted as the shim's other early refusals are
		const after = await metrics(shim.port);
		assert.equal(delta(before, after, 'payments_shim_rejections_total{reason="malformed_request"}'), cases.length + 1);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="webhook",provider="_other",status="400"}'), cases.length);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="health",provider="",status="400"}'), 1);
		// names of every token character are served as ever
		const delivery = stripeDelivery({ "x-ok_name.1!#$%&'*+^`|~": 'yes' });
		assert.equal((await postStripe(shim.port, delivery, { localAddress: '127.0.0.18' })).status, 200);
	});

	test('unknown routes, wrong methods and bad provider names get 404/405 without the database', async () => {
		const cases = [
			['GET', '/nope', 404], ['GET', '/', 404], ['POST', '/webhooks/', 404],
			['POST', '/webhooks/Bad%20Name', 404], ['POST', `/webhooks/${'a'.repeat(64)}`, 404],
			['POST', '/webhooks/..%2Fhealth', 404], ['POST', '/webhooks/stripe/extra', 404],
			['DELETE', '/webhooks/stripe', 405, 'GET, POST'], ['PUT', '/webhooks/stripe', 405, 'GET, POST'],
			['POST', '/health', 405, 'GET, HEAD'], ['POST', '/ready', 405, 'GET, HEAD'],
			['DELETE', '/metrics', 405, 'GET, HEAD'],
		];
		for (const [method, path, status, allow] of cases) {
			const res = await request(shim.port, { method, path, localAddress: '127.0.0.20' });
			assert.equal(res.status, status, `${method} ${path}`);
			assert.equal(typeof res.json.error, 'string');
			if (allow) assert.equal(res.headers.allow, allow);
		}
	});

	test('a flood from one address gets 429 with Retry-After while other clients are served', async () => {
		const flooder = '127.0.0.5';
		const statuses = [];
		let retryAfter = null;
		const started = Date.now();
		// until the first 429 (or 30 requests past the burst): however long each takes on this
		// machine, the bucket the rate refills empties at last
		while (retryAfter === null && statuses.length < 40) {
			const res = await postStripe(shim.port, stripeDelivery(), { localAddress: flooder });
			statuses.push(res.status);
			if (res.status === 429) {
				retryAfter = Number(res.headers['retry-after']);
				assert.equal(res.json.error, 'too many requests');
			}
		}
		const elapsed = (Date.now() - started) / 1000;
		const served = statuses.filter((s) => s === 200).length;
		assert.ok(statuses.every((s) => s === 200 || s === 429), statuses.join(','));
		assert.ok(served >= 10, `the burst is served: ${statuses.join(',')}`);
		assert.ok(served <= 10 + Math.ceil(5 * elapsed) + 1, `at most burst + rate: ${statuses.join(',')}`);
		assert.ok(statuses.includes(429), `limited: ${statuses.join(',')}`);
		assert.ok(retryAfter >= 1, 'Retry-After in whole seconds');
		// another client, meanwhile
		assert.equal((await postStripe(shim.port, stripeDelivery(), { localAddress: '127.0.0.6' })).status, 200);
		// the flooder, after waiting as told
		await sleep(retryAfter * 1000);
		assert.equal((await postStripe(shim.port, stripeDelivery(), { localAddress: flooder })).status, 200);
		// an address in --rate-exempt is never limited
		for (let i = 0; i < 15; i++) {
			const res = await request(shim.port, { method: 'POST', path: '/webhooks/stripe', body: '{}',
				localAddress: '127.0.0.30' });
			assert.equal(res.status, 401);
		}
	});

	test('behind a trusted proxy the client is the rightmost untrusted X-Forwarded-For entry', async () => {
		const viaProxy = stripeDelivery({ 'x-forwarded-for': '203.0.113.50, 198.51.100.7, 10.1.2.3' });
		assert.equal((await postStripe(shim.port, viaProxy, { localAddress: '127.0.0.3' })).status, 200);
		assert.equal(cluster.psqlVars("SELECT host(source_ip) FROM payments.events WHERE event_id = :'e'",
			{ e: viaProxy.id }), '198.51.100.7');
		const spoofed = stripeDelivery({ 'x-forwarded-for': '198.51.100.99' });
		assert.equal((await postStripe(shim.port, spoofed, { localAddress: '127.0.0.4' })).status, 200);
		assert.equal(cluster.psqlVars("SELECT host(source_ip) FROM payments.events WHERE event_id = :'e'",
			{ e: spoofed.id }), '127.0.0.4');
		// with a port, as some proxies write it: the address
		for (const [entry, ip] of [['198.51.100.21:5555', '198.51.100.21'], ['[2001:db8::21]', '2001:db8::21'],
			['[2001:db8::22]:443', '2001:db8::22']]) {
			const withPort = stripeDelivery({ 'x-forwarded-for': entry });
			assert.equal((await postStripe(shim.port, withPort, { localAddress: '127.0.0.3' })).status, 200);
			assert.equal(cluster.psqlVars("SELECT host(source_ip) FROM payments.events WHERE event_id = :'e'",
				{ e: withPort.id }), ip, entry);
		}
		const garbage = stripeDelivery({ 'x-forwarded-for': 'unknown, 198.51.100.8' });
		assert.equal((await postStripe(shim.port, garbage, { localAddress: '127.0.0.3' })).status, 200);
		assert.equal(cluster.psqlVars("SELECT host(source_ip) FROM payments.events WHERE event_id = :'e'",
			{ e: garbage.id }), '198.51.100.8');
		// a proxy that appends a line of its own (HAProxy's option forwardfor) after many a client sent:
		// the last lines are the ones read
		const appended = stripeDelivery({ 'x-forwarded-for': [...Array(20).fill('198.51.100.66'), '203.0.113.77'] });
		assert.equal((await postStripe(shim.port, appended, { localAddress: '127.0.0.3' })).status, 200);
		assert.equal(cluster.psqlVars("SELECT host(source_ip) FROM payments.events WHERE event_id = :'e'",
			{ e: appended.id }), '203.0.113.77');
		// rate limits apply per forwarded client: one client behind the proxy is limited alone
		// (sent until the first 429, or 40: the bucket of --rate-burst 10, refilled at --rate 5 a second,
		// empties after 10 + 5 a second of sending, however long each request takes here)
		const untilLimited = async (forwardedFor) => {
			const statuses = [];
			const started = Date.now();
			while (!statuses.includes(429) && statuses.length < 40) {
				statuses.push((await postStripe(shim.port, stripeDelivery({ 'x-forwarded-for': forwardedFor() }),
					{ localAddress: '127.0.0.3' })).status);
			}
			const served = statuses.filter((s) => s === 200).length;
			assert.ok(statuses.includes(429), statuses.join(','));
			assert.ok(served >= 10 && served <= 10 + Math.ceil(5 * (Date.now() - started) / 1000) + 1,
				`the burst, and no more than the rate: ${statuses.join(',')}`);
		};
		await untilLimited(() => '192.0.2.1');
		assert.equal((await postStripe(shim.port, stripeDelivery({ 'x-forwarded-for': '192.0.2.2' }),
			{ localAddress: '127.0.0.3' })).status, 200);
		// an IPv6 client is its /64: a host that changes its address within it is the same client
		let host = 0;
		await untilLimited(() => `2001:db8:0:7::${(++host).toString(16)}`);
		assert.equal((await postStripe(shim.port, stripeDelivery({ 'x-forwarded-for': '2001:db8:0:8::1' }),
			{ localAddress: '127.0.0.3' })).status, 200, 'the next /64 is another client');
		const line = logLines().find((l) => l.msg === 'request' && l.client_ip === '198.51.100.7');
		assert.equal(line.peer_ip, '127.0.0.3');
	});

	test('connections over --max-connections-per-ip are refused while other addresses are served', async () => {
		// a shim of its own, whose --idle-timeout keeps the four open until the test closes them (the
		// shared shim's 1 s could close one while a loaded machine still brought in the fifth)
		const s = new Shim(cluster.dsn, ['--max-connections-per-ip', '4', '--idle-timeout', '30', '--rate', '0']);
		await s.start();
		// the shim's open connections (less the /metrics request that reads them)
		const open = async () => (await metrics(s.port)).get('payments_shim_connections') - 1;
		const held = [];
		try {
			await eventually(async () => await open() === 0, 10000, 25);		// the start's probe closed
			const before = await metrics(s.port);
			for (let i = 0; i < 4; i++) {
				const socket = connect({ port: s.port, host: '127.0.0.1', localAddress: '127.0.0.7' });
				socket.on('error', () => { /* reset by the shim */ });
				held.push(socket);
			}
			// the four taken by the shim: the fifth comes while they are open
			await eventually(async () => await open() === 4, 10000, 10);
			const fifth = await rawSession(s.port, { localAddress: '127.0.0.7',
				chunks: ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], timeoutMs: 10000 });
			assert.equal(fifth.data, '', 'no answer for the connection over the limit');
			assert.ok(fifth.closed && fifth.ms < 5000, `closed at once (after ${fifth.ms} ms)`);
			assert.equal((await request(s.port, { path: '/health', localAddress: '127.0.0.8' })).status, 200);
			// (as their client sees them: the shim's gauge, read at once, may still count a connection
			// that just ended)
			assert.ok(held.every((socket) => socket.readyState === 'open'), 'the four still open');
			for (const socket of held) socket.destroy();
			await eventually(async () => (await request(s.port, { path: '/health', localAddress: '127.0.0.7' })
				.catch(() => ({ status: 0 }))).status === 200, 10000);
			const after = await metrics(s.port);
			assert.ok(delta(before, after, 'payments_shim_rejections_total{reason="connection_limit"}') >= 1);
		} finally {
			for (const socket of held) socket.destroy();
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('--max-connections counts over all HTTP threads: with every place taken each connection is served, one more is refused', async () => {
		// libmicrohttpd splits its own connection limit between its threads, and a thread that has
		// its share stops accepting: with both threads' 2 of 4 taken the fifth waited unaccepted,
		// never refused (and a storm of 500 that the kernel handed to one thread more than the
		// others, 128 of 1024 on each of 8 threads, lost a thread's 128 to --idle-timeout)
		const s = new Shim(cluster.dsn, ['--threads', '2', '--max-connections', '4', '--max-connections-per-ip', '0',
			'--idle-timeout', '30', '--rate', '0']);
		await s.start();
		const open = async () => parseMetrics((await request(s.port, { path: '/metrics' })).text).samples
			.get('payments_shim_connections') - 1;
		// one connection kept alive, on which each /health waits for its answer (5 s at most)
		const kept = () => {
			const socket = connect({ port: s.port, host: '127.0.0.1' });
			const state = { data: '', closed: false };
			socket.setEncoding('latin1');
			socket.on('data', (d) => { state.data += d; });
			socket.on('error', () => { /* reset by the shim */ });
			socket.on('close', () => { state.closed = true; });
			return {
				socket,
				state,
				health: async () => {
					const answers = (state.data.match(/\{"status":"ok"\}/g) ?? []).length;
					socket.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
					const until = Date.now() + 5000;
					while ((state.data.match(/\{"status":"ok"\}/g) ?? []).length === answers && !state.closed && Date.now() < until) {
						await sleep(20);
					}
					return (state.data.match(/\{"status":"ok"\}/g) ?? []).length > answers;
				},
			};
		};
		const held = [];
		try {
			await eventually(async () => await open() === 0, 10000, 50);		// the start's probe closed
			for (let i = 0; i < 4; i++) {
				held.push(kept());
				assert.ok(await held[i].health(), `connection ${i + 1} of 4 answered`);
			}
			assert.deepEqual(await Promise.all(held.map((c) => c.health())), [true, true, true, true],
				'each of the four answered again, every place taken');
			// a fifth is over the limit in all: closed at once, unanswered
			const fifth = await rawSession(s.port, { chunks: ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], timeoutMs: 5000 });
			assert.ok(fifth.closed && fifth.data === '', `the fifth: ${fifth.data.slice(0, 40) || 'no answer'}`);
			assert.deepEqual(await Promise.all(held.map((c) => c.health())), [true, true, true, true], 'the four still served');
			for (const c of held) c.socket.destroy();
			// until the shim has seen them close, their places are taken: a probe is refused meanwhile
			await eventually(async () => await open().catch(() => -1) === 0, 10000, 50);
			const metrics = parseMetrics((await request(s.port, { path: '/metrics' })).text).samples;
			assert.ok(metrics.get('payments_shim_rejections_total{reason="connection_limit"}') >= 1);
		} finally {
			for (const c of held) c.socket.destroy();
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('slow and idle clients are cut off by the timeouts while others are served', async () => {
		const before = await metrics(shim.port);
		const headerBytes = [...'GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789012345678901234567890123456789\r\n\r\n'];
		const slowHeaders = rawSession(shim.port, { localAddress: '127.0.0.9', chunks: headerBytes, intervalMs: 200,
			timeoutMs: 10000 });
		const delivery = stripeDelivery();
		const bodyBytes = [`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
			`Stripe-Signature: ${delivery.headers['stripe-signature']}\r\n` +
			`Content-Length: ${Buffer.byteLength(delivery.body)}\r\n\r\n`, ...delivery.body];
		const slowBody = rawSession(shim.port, { localAddress: '127.0.0.10', chunks: bodyBytes, intervalMs: 200,
			timeoutMs: 10000 });
		const idle = rawSession(shim.port, { localAddress: '127.0.0.11', timeoutMs: 10000 });
		await sleep(500);
		assert.equal((await postStripe(shim.port, stripeDelivery(), { localAddress: '127.0.0.12' })).status, 200);
		const [h, b, i] = await Promise.all([slowHeaders, slowBody, idle]);
		// (sent in full, the slow requests would take 17 and 50 s: closing before 10 s is a timeout's doing)
		const timedOutPeers = () => logLines().filter((l) => l.msg === 'request timeout, connections closed').flatMap((l) => l.peer_ips);
		// the shim logs a timeout as it lets the connection go: the client may see the close first
		await eventually(() => ['127.0.0.9', '127.0.0.10'].every((p) => timedOutPeers().includes(p)), 3000, 50).catch(() => {});
		const timedOut = timedOutPeers();
		for (const [name, r, peer] of [['slow headers', h, '127.0.0.9'], ['slow body', b, '127.0.0.10']]) {
			assert.ok(r.closed, `${name}: closed by the shim`);
			assert.ok(r.ms >= 2500, `${name}: closed after ${r.ms} ms (--request-timeout 3)`);
			assert.ok(timedOut.includes(peer), `${name}: closed by the request timeout`);
			assert.doesNotMatch(r.data, /^HTTP\/1\.1 2/);
		}
		assert.ok(i.closed, `idle: closed by the shim (after ${i.ms} ms)`);
		assert.ok(!timedOut.includes('127.0.0.11'), 'idle: closed by the idle timeout, before the request timeout');
		assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.events WHERE event_id = :'e'", { e: delivery.id }), '0');
		const after = await metrics(shim.port);
		assert.ok(delta(before, after, 'payments_shim_rejections_total{reason="request_timeout"}') >= 2);
	});

	test('a kept-alive connection between requests is left to --idle-timeout, even one above --request-timeout', async () => {
		const s = new Shim(cluster.dsn, ['--idle-timeout', '60', '--request-timeout', '3', '--rate', '0']);
		await s.start();
		// one connection: a request, its answer, then silence; then (still open) a request sent a
		// byte at a time
		const session = (peer) => {
			const socket = connect({ port: s.port, host: '127.0.0.1', localAddress: peer });
			const state = { data: '', closedAt: null, opened: Date.now(), socket };
			socket.setEncoding('latin1');
			socket.on('data', (d) => { state.data += d; });
			socket.on('error', () => { /* reset by the shim */ });
			socket.on('close', () => { state.closedAt = Date.now(); });
			return state;
		};
		const rejections = async () => parseMetrics((await request(s.port, { path: '/metrics' })).text).samples
			.get('payments_shim_rejections_total{reason="request_timeout"}') ?? 0;
		const timedOut = () => shimLogLines(s).filter((l) => l.msg === 'request timeout, connections closed');
		try {
			const kept = session('127.0.0.41');
			kept.socket.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
			await waitFor(() => /\r\n\r\n\{"status":"ok"\}$/.test(kept.data), 5000, 'the answer');
			await sleep(5000);
			assert.equal(kept.closedAt, null, `closed ${kept.closedAt - kept.opened} ms after it opened`);
			assert.equal(await rejections(), 0);
			assert.deepEqual(timedOut(), []);
			// the next request on it, trickled: cut by --request-timeout from its first byte
			const started = Date.now();
			for (const ch of 'GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789012345678901234567890123456789\r\n\r\n') {
				if (kept.closedAt !== null) break;
				kept.socket.write(ch);
				await sleep(200);
			}
			assert.ok(kept.closedAt !== null, 'the trickled request is cut');
			assert.ok(kept.closedAt - started >= 2500 && kept.closedAt - started < 10000,
				`cut ${kept.closedAt - started} ms after its first byte (--request-timeout 3)`);
			assert.equal((kept.data.match(/HTTP\/1\.1 200 /g) ?? []).length, 1, 'only the first request answered');
			assert.deepEqual(timedOut().map((l) => [l.closed, l.peer_ips]), [[1, ['127.0.0.41']]]);
			assert.equal(await rejections(), 1);
			// a new connection with nothing sent is idle too
			const fresh = session('127.0.0.42');
			await sleep(4500);
			assert.equal(fresh.closedAt, null, 'a new connection with nothing sent is left open');
			fresh.socket.destroy();
			assert.equal(await rejections(), 1);
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('an answer made after the request timeout cut its connection is logged unsent, not as given', async () => {
		const lock = await holdLock(cluster, 'LOCK TABLE payments.events IN SHARE MODE');
		const delivery = stripeDelivery();
		let cut;
		try {
			cut = postStripe(shim.port, delivery, { localAddress: '127.0.0.13',
				headers: { ...delivery.headers, 'X-Request-ID': 'cut-by-timeout' } })
				.then((r) => r.status, (e) => e.message);
			// --request-timeout 3 cuts the connection while the batch waits for the lock
			await eventually(() => logLines().some((l) => l.msg === 'request timeout, connections closed'
				&& l.peer_ips.includes('127.0.0.13')));
		} finally {
			await lock.release();
		}
		assert.doesNotMatch(String(await cut), /^2/);
		const line = await eventually(() => logLines().find((l) => l.msg === 'request' && l.request_id === 'cut-by-timeout'));
		assert.equal(line.status, null);
		assert.equal(line.status_unsent, 200);
		assert.equal(line.outcome, 'applied');
	});

	test('headers begun before the shim accepted the connection, and never ended, are cut by --request-timeout', async () => {
		// the bytes counted when a connection opened were taken as its idle mark: a client whose
		// partial headers reached the listen queue before the accept was left to --idle-timeout
		const s = new Shim(cluster.dsn, ['--request-timeout', '2', '--idle-timeout', '30']);
		await s.start();
		try {
			process.kill(s.proc.pid, 'SIGSTOP');
			let pending;
			try {
				pending = rawSession(s.port, { localAddress: '127.0.0.46', timeoutMs: 10000,
					chunks: ['GET /health HTTP/1.1\r\nHost: x\r\n'] });
				await sleep(300);	// connected and sent: in the listen queue, not yet accepted
			} finally {
				process.kill(s.proc.pid, 'SIGCONT');
			}
			const r = await pending;
			assert.ok(r.closed && r.data === '', `closed ${r.closed}, answered ${JSON.stringify(r.data)}`);
			assert.ok(r.ms >= 1900 && r.ms < 6000, `cut after ${r.ms} ms (--request-timeout 2)`);
			const samples = parseMetrics((await request(s.port, { path: '/metrics' })).text).samples;
			assert.equal(samples.get('payments_shim_rejections_total{reason="request_timeout"}'), 1);
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('connections reset mid-request, or cut by the request timeout, are summed up once a second, not logged one by one', async () => {
		// each was a warning line of its own (libmicrohttpd's, or the shim's timeout line): any
		// client could fill the log at will, even at --log-level warning
		const s = new Shim(cluster.dsn, ['--log-level', 'warning', '--rate', '0', '--request-timeout', '2',
			'--idle-timeout', '30', '--max-connections-per-ip', '0']);
		await s.start();
		const sum = (lines, field) => lines.reduce((n, l) => n + l[field], 0);
		try {
			const started = Date.now();
			const resets = 200;
			const sockets = [];
			const closed = Promise.all(Array.from({ length: resets }, () => new Promise((resolve) => {
				const socket = connect({ port: s.port, host: '127.0.0.1' });
				sockets.push(socket);
				socket.on('error', () => { /* reset */ });
				socket.on('close', resolve);
				socket.on('connect', () => socket.write('POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab'));
			})));
			// reset only once the shim has read every request's headers (in flight, with /metrics' own):
			// a connection reset before that, still in the listen queue on a loaded machine, is one
			// libmicrohttpd never saw a request on, and rightly not counted
			const deadline = Date.now() + 10000;
			let inFlight = 0;
			while ((inFlight = parseMetrics((await request(s.port, { path: '/metrics' })).text).samples
				.get('payments_shim_requests_in_flight')) < resets + 1) {
				assert.ok(Date.now() < deadline, `${inFlight - 1} of ${resets} requests begun within 10 s`);
				await sleep(50);
			}
			for (const socket of sockets) socket.resetAndDestroy();
			await closed;
			// slow clients: headers begun and never ended, cut by --request-timeout (2 s)
			const slow = 20;
			const cut = await Promise.all(Array.from({ length: slow }, () => rawSession(s.port, { timeoutMs: 8000,
				chunks: ['GET /health HTTP/1.1\r\nHost: x\r\n'] })));
			assert.ok(cut.every((r) => r.closed && r.data === '' && r.ms >= 1500), 'each slow client is cut, unanswered');
			const samples = parseMetrics((await request(s.port, { path: '/metrics' })).text).samples;
			assert.equal(samples.get('payments_shim_rejections_total{reason="request_timeout"}'), slow);
			// the last second's summaries: until every connection is counted (at most a line of each
			// kind a second, however long a loaded machine took over them), and a second more for
			// anything else
			const summaries = () => {
				const all = shimLogLines(s);
				return { lines: all, broken: all.filter((l) => l.msg === 'connections broken during a request'),
					timeouts: all.filter((l) => l.msg === 'request timeout, connections closed') };
			};
			await eventually(() => {
				const seen = summaries();
				return sum(seen.broken, 'reading') >= resets + slow && sum(seen.timeouts, 'closed') >= slow;
			}, 10000).catch(() => { /* what is missing is told below */ });
			await sleep(1100);
			const { lines, broken, timeouts } = summaries();
			const seconds = Math.ceil((Date.now() - started) / 1000) + 1;
			assert.ok(lines.length <= 2 * seconds, `${lines.length} lines for ${resets + slow} connections in ${seconds} s`);
			assert.deepEqual(lines.filter((l) => !broken.includes(l) && !timeouts.includes(l)), [], 'nothing else logged');
			// a reset counts in "reading"; so does a connection the timeout shut down (libmicrohttpd sees it end)
			assert.equal(sum(broken, 'reading'), resets + slow, `counted: ${JSON.stringify(broken)}`);
			assert.ok(broken.every((l) => l.level === 'warning' && l.source === 'libmicrohttpd'));
			assert.equal(sum(timeouts, 'closed'), slow);
			assert.ok(timeouts.every((l) => l.level === 'warning' && l.timeout_s === 2 && l.peer_ips.length <= 16
				&& l.peer_ips.every((p) => p === '127.0.0.1')));
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('a chunk-size line longer than the connection memory gets libmicrohttpd\'s 500, counted as malformed_request', async () => {
		// libmicrohttpd 0.9.75 answers this itself, while the body is read: the shim cannot change
		// the status, but counts it as the client's doing
		const before = await metrics(shim.port);
		const r = await rawSession(shim.port, { localAddress: '127.0.0.44', timeoutMs: 5000, chunks: [
			'POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n',
			`5;${'a'.repeat(40000)}`] });
		assert.match(r.data, /^HTTP\/1\.1 500 /, r.data.slice(0, 100));
		const after = await metrics(shim.port);
		assert.equal(delta(before, after, 'payments_shim_rejections_total{reason="malformed_request"}'), 1);
		assert.equal(delta(before, after, 'payments_shim_requests_total{route="other",provider="",status="500"}'), 1);
		assert.equal((await request(shim.port, { path: '/health', localAddress: '127.0.0.44' })).status, 200);
	});

	test('a NUL inside a header value ends the value (libmicrohttpd 0.9.75): the rest is never seen, the delivery is handled', async () => {
		// the shim's control-character check never sees the NUL; README (Limits) says so
		const delivery = stripeDelivery({ 'x-request-id': 'nul-in-value' });
		const head = Object.entries(delivery.headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
		const r = await rawSession(shim.port, { localAddress: '127.0.0.45', timeoutMs: 5000, chunks: [
			`POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n${head}X-Nul: a\u0000b\r\n` +
			`Content-Length: ${Buffer.byteLength(delivery.body)}\r\n\r\n${delivery.body}`] });
		assert.match(r.data, /^HTTP\/1\.1 200 /, r.data.slice(0, 300));
		assert.equal(cluster.psqlVars("SELECT headers ->> 'x-nul' FROM payments.events WHERE event_id = :'e'", { e: delivery.id }), 'a');
	});

	test('metrics move as expected after a known sequence of requests', async () => {
		const from = '127.0.0.13';
		const before = await metrics(shim.port);
		const first = stripeDelivery();
		const r1 = await postStripe(shim.port, first, { localAddress: from });
		const r2 = await postStripe(shim.port, stripeDelivery(), { localAddress: from });
		const dup = await postStripe(shim.port, first, { localAddress: from });
		assert.deepEqual([r1.status, r2.status, dup.status, dup.json.outcome], [200, 200, 200, 'duplicate']);
		const stored = r1.json.outcome;
		const unsigned = await request(shim.port, { method: 'POST', path: '/webhooks/stripe', body: '{"id":"evt_x"}',
			headers: { 'content-type': 'application/json' }, localAddress: from });
		assert.deepEqual([unsigned.status, unsigned.json.outcome], [401, 'rejected']);
		const unknown = await request(shim.port, { method: 'POST', path: '/webhooks/nobody', body: '{}', localAddress: from });
		assert.deepEqual([unknown.status, unknown.json.outcome], [404, 'unknown_provider']);
		assert.equal((await request(shim.port, { method: 'POST', path: '/webhooks/Bad!', localAddress: from })).status, 404);
		assert.equal((await request(shim.port, { method: 'DELETE', path: '/webhooks/stripe', localAddress: from })).status, 405);
		const tooBig = await rawSession(shim.port, { localAddress: from, chunks: [
			'POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n'] });
		assert.match(tooBig.data, /^HTTP\/1\.1 413 /);
		assert.equal((await request(shim.port, { path: '/nope', localAddress: from })).status, 404);
		assert.equal((await request(shim.port, { path: '/health', localAddress: from })).status, 200);
		// a request is counted when libmicrohttpd reports it complete, which can come just after
		// its client has the answer: read the metrics until all nine are in (or 10 s have passed)
		let after;
		for (let i = 0; i < 100; i++) {
			after = await metrics(shim.port);
			if (delta(before, after, 'payments_shim_request_duration_seconds_count{route="webhook"}') === 8
				&& after.get('payments_shim_requests_in_flight') === 1) break;
			await sleep(100);
		}

		const req = (route, provider, status) =>
			delta(before, after, `payments_shim_requests_total{route="${route}",provider="${provider}",status="${status}"}`);
		assert.equal(req('webhook', 'stripe', 200), 3);
		assert.equal(req('webhook', 'stripe', 401), 1);
		assert.equal(req('webhook', 'stripe', 413), 1);
		assert.equal(req('webhook', '_other', 404), 2);
		// a known provider's name, even on a 405 the database never saw
		assert.equal(req('webhook', 'stripe', 405), 1);
		assert.equal(req('webhook', '_other', 405), 0);
		assert.equal(req('other', '', 404), 1);
		assert.equal(req('health', '', 200), 1);
		const outcome = (provider, o) =>
			delta(before, after, `payments_shim_ingest_outcomes_total{provider="${provider}",outcome="${o}"}`);
		assert.equal(outcome('stripe', stored), 2);
		assert.equal(outcome('stripe', 'duplicate'), 1);
		assert.equal(outcome('stripe', 'rejected'), 1);
		assert.equal(outcome('_other', 'unknown_provider'), 1);
		const rejected = (reason) => delta(before, after, `payments_shim_rejections_total{reason="${reason}"}`);
		assert.equal(rejected('not_found'), 2);
		assert.equal(rejected('method_not_allowed'), 1);
		assert.equal(rejected('body_too_large'), 1);
		assert.equal(rejected('rate_limited'), 0);
		assert.equal(delta(before, after, 'payments_shim_request_duration_seconds_count{route="webhook"}'), 8);
		assert.equal(delta(before, after, 'payments_shim_request_duration_seconds_bucket{route="webhook",le="+Inf"}'), 8);
		assert.ok(delta(before, after, 'payments_shim_request_duration_seconds_sum{route="webhook"}') > 0);
		assert.equal(after.get('payments_shim_requests_in_flight'), 1, 'the /metrics request itself');
		assert.ok(after.get('payments_shim_connections') >= 1);
		assert.ok(after.get('payments_shim_db_connections{state="idle"}') + after.get('payments_shim_db_connections{state="busy"}') >= 1);
		assert.equal(after.get('payments_shim_db_connections{state="broken"}'), 0);
		assert.ok(after.get('payments_shim_db_connect_attempts_total{result="success"}') >= 1);
		const build = [...after.keys()].find((k) => k.startsWith('payments_shim_build_info{'));
		assert.match(build, /version="0\.1\.0",libmicrohttpd="0\.9\.\d+",libpq="\d+\.\d+"/);
		// naming conventions: prefix, counters end in _total, histograms name their unit
		const { types } = parseMetrics((await request(shim.port, { path: '/metrics' })).text);
		for (const [name, type] of types) {
			assert.match(name, /^payments_shim_/);
			if (type === 'counter') assert.match(name, /_total$/);
			if (type === 'histogram') assert.match(name, /_(seconds|deliveries)$/);
		}
	});

	test('one JSON log line per request, with trace context, and no secret, signature or body', async () => {
		const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
		const traced = stripeDelivery({ traceparent, 'x-request-id': 'log-test-1', authorization: authSecret });
		assert.equal((await postStripe(shim.port, traced, { localAddress: '127.0.0.14' })).status, 200);
		const badTrace = stripeDelivery({ traceparent: '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
			'x-request-id': 'log-test-2' });
		assert.equal((await postStripe(shim.port, badTrace, { localAddress: '127.0.0.14' })).status, 200);
		const challenge = `challenge-${randomBytes(4).toString('hex')}`;
		const hub = await request(shim.port, { localAddress: '127.0.0.14', headers: { 'x-request-id': 'log-test-3' },
			path: `/webhooks/wa?hub.mode=subscribe&hub.verify_token=${verifyToken}&hub.challenge=${challenge}` });
		assert.deepEqual([hub.status, hub.text], [200, challenge]);
		// a request's line is written once libmicrohttpd reports it complete, which can be just after
		// its client has the answer
		await eventually(() => ['log-test-1', 'log-test-2', 'log-test-3'].every((id) =>
			logLines().some((l) => l.msg === 'request' && l.request_id === id)));

		const text = readFileSync(logFile, 'utf8');
		const lines = parseLogLines(text);
		for (const l of lines) {
			assert.match(l.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
			assert.ok(['error', 'warning', 'info', 'debug'].includes(l.level));
			assert.equal(typeof l.msg, 'string');
		}
		const byId = (id) => lines.find((l) => l.msg === 'request' && l.request_id === id);
		const one = byId('log-test-1');
		assert.equal(one.traceparent, traceparent);
		assert.deepEqual([one.provider, one.status, one.client_ip, one.method, one.path],
			['stripe', 200, '127.0.0.14', 'POST', '/webhooks/stripe']);
		assert.equal(typeof one.outcome, 'string');
		assert.ok(one.duration_ms > 0);
		assert.equal(byId('log-test-2').traceparent, null, 'an invalid traceparent is not logged');
		assert.equal(byId('log-test-3').outcome, 'subscribed');
		for (const secret of [stripeSecret, verifyToken, metaAppSecret, bodyMarker, authSecret, challenge,
			...signaturesSent]) {
			assert.ok(!text.includes(secret), `log contains a secret, signature or body: ${secret.slice(0, 12)}…`);
		}
		assert.ok(!/v1=[0-9a-f]{64}/.test(text), 'no signature in the log');
	});

	test('SIGHUP reopens the log file', async () => {
		const rotated = `${logFile}.1`;
		renameSync(logFile, rotated);
		await request(shim.port, { path: '/health', headers: { 'x-request-id': 'before-hup' } });
		// the request's log line is written once the request completes, which may be just after the
		// client has its answer: wait for it before the signal
		await eventually(() => readFileSync(rotated, 'utf8').includes('"before-hup"'));
		shim.proc.kill('SIGHUP');
		await eventually(() => existsSync(logFile) && readFileSync(logFile, 'utf8').includes('log file reopened'));
		await request(shim.port, { path: '/health', headers: { 'x-request-id': 'after-hup' } });
		await eventually(() => readFileSync(logFile, 'utf8').includes('"after-hup"'));
		const old = readFileSync(rotated, 'utf8');
		const fresh = readFileSync(logFile, 'utf8');
		assert.ok(old.includes('"before-hup"') && !old.includes('"after-hup"'));
		assert.ok(fresh.includes('"after-hup"') && !fresh.includes('"before-hup"'));
		parseLogLines(fresh);
	});

	test('the shim works logged in as a role that is only a member of payments_ingest', async () => {
		// the extension creates payments_ingest; should it not (yet), the grants the README documents
		cluster.psql(`DO $$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'payments_ingest') THEN
				CREATE ROLE payments_ingest NOLOGIN;
				GRANT USAGE ON SCHEMA payments TO payments_ingest;
				GRANT EXECUTE ON FUNCTION payments.ingest(text, jsonb, bytea, inet, text),
					payments.meta_subscribe(text, text, text, text) TO payments_ingest;
			END IF;
		END $$;
		CREATE ROLE payments_shim LOGIN IN ROLE payments_ingest;`);
		const s = new Shim(cluster.dsn.replace('user=postgres', 'user=payments_shim'));
		await s.start();
		try {
			assert.equal((await request(s.port, { path: '/ready' })).status, 200);
			const delivery = stripeDelivery();
			const res = await postStripe(s.port, delivery);
			assert.equal(res.status, 200, `${res.text}\n${s.stderr}`);
			assert.equal(cluster.psqlVars("SELECT count(*) FROM payments.events WHERE event_id = :'e'", { e: delivery.id }), '1');
			const unsigned = await request(s.port, { method: 'POST', path: '/webhooks/stripe', body: '{}' });
			assert.equal(unsigned.status, 401);
			const hub = await request(s.port, { path: `/webhooks/wa?hub.mode=subscribe&hub.verify_token=${verifyToken}&hub.challenge=42` });
			assert.deepEqual([hub.status, hub.text], [200, '42']);
			// and nothing else: the role cannot read the tables
			assert.throws(() => execFileSync(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-h', cluster.dir, '-p', String(cluster.port),
				'-U', 'payments_shim', '-d', 'payments', '-c', 'SELECT count(*) FROM payments.events'], { stdio: 'pipe' }),
			/permission denied/);
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	// libpq splits a URI's password at a '/' or '@' not percent-encoded and reads a part as a host,
	// port or database name, which its connection errors then quote in the log
	test('a DSN whose password holds a / or @ not percent-encoded is refused at start, quoting none of it; encoded, it works', async () => {
		const [left, right] = ['Kx7qJ', 'ss9wordX'];
		const fragments = new Set(['9wordX']);
		for (const part of [left, right]) {
			for (let i = 0; i + 5 <= part.length; i++) fragments.add(part.slice(i, i + 5));
		}
		const at = `127.0.0.1:${cluster.port}/payments`;
		for (const [args, env, source] of [
			[['--dsn', `postgresql://pwshim:${left}/${right}@${at}`], {}, '--dsn'],
			[[`--dsn=postgresql://pwshim:${left}@${right}@${at}`], {}, '--dsn'],
			[[], { PAYMENTS_SHIM_DSN: `postgres://pwshim:${left}/${right}@${at}` }, 'PAYMENTS_SHIM_DSN'],
			[[], { PAYMENTS_SHIM_DSN: `postgresql://pwshim:${left}@${right}@${at}` }, 'PAYMENTS_SHIM_DSN'],
			[['--dsn', `host=127.0.0.1 port=${left} dbname=payments`], {}, '--dsn'],
		]) {
			const what = JSON.stringify([args, env]);
			const r = await shimUntilExit(args, env);
			for (const fragment of fragments) assert.ok(!r.stderr.includes(fragment), `${what}: "${fragment}" in\n${r.stderr}`);
			assert.ok(r.exited, `${what}: still running after 10 s`);
			assert.equal(r.code, 2, what);
			assert.match(r.stderr, new RegExp(`^payments-shim: invalid ${source}: .*percent-encoded \\(/ as %2F, @ as %40\\)`), what);
		}
		// the password percent-encoded, with password authentication for that role
		cluster.psqlVars("CREATE ROLE pwshim LOGIN PASSWORD :'p' IN ROLE payments_ingest", { p: `${left}/@${right}` });
		const hba = join(cluster.data, 'pg_hba.conf');
		writeFileSync(hba, `host payments pwshim 127.0.0.1/32 scram-sha-256\n${readFileSync(hba, 'utf8')}`);
		await cluster.reload();
		assert.throws(() => execFileSync(join(PG_BIN, 'psql'), ['-X', '-w', '-h', '127.0.0.1', '-p', String(cluster.port),
			'-U', 'pwshim', '-d', 'payments', '-c', 'SELECT 1'], { stdio: 'pipe' }), /password/, 'no login without the password');
		const s = new Shim(`postgresql://pwshim:${left}%2F%40${right}@${at}`);
		await s.start();
		try {
			const ready = await request(s.port, { path: '/ready' });
			assert.equal(ready.status, 200, `${ready.text}\n${s.stderr}`);
			assert.equal((await postStripe(s.port, stripeDelivery())).status, 200);
		} finally {
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		}
	});

	test('/ready is 200 with the extension at a supported version, 503 with the reason otherwise', async () => {
		const ok = await request(shim.port, { path: '/ready' });
		assert.equal(ok.status, 200, ok.text);
		assert.deepEqual(ok.json, { status: 'ready', reason: 'ready', extension_version: '0.1.0' });
		// a shim of its own on dsn answers /ready 503 with this reason
		const notReady = async (dsn, reason) => {
			const s = new Shim(dsn);
			await s.start();
			const res = await request(s.port, { path: '/ready' });
			assert.equal(res.status, 503);
			assert.equal(res.json.reason, reason);
			assert.equal((await s.stop()).code, 0);
			assert.deepEqual(s.sanitizerReports(), []);
		};
		// a database without the extension
		await notReady(cluster.dsn.replace('dbname=payments', 'dbname=postgres'), 'extension payments is not installed');
		// a login that may not call the ingest functions (no payments_ingest): every webhook would be 503
		cluster.psql('CREATE ROLE payments_nobody LOGIN');
		await notReady(cluster.dsn.replace('user=postgres', 'user=payments_nobody'),
			"the shim's role may not call payments.ingest_batch (grant it payments_ingest)");
		// the database stopped, then back
		cluster.stop();
		try {
			const down = await eventually(async () => {
				const r = await request(shim.port, { path: '/ready' });
				return r.status === 503 ? r : null;
			}, 5000);
			assert.equal(down.json.reason, 'database unavailable');
			assert.ok(Number(down.headers['retry-after']) > 0);
			const started = Date.now();
			await request(shim.port, { path: '/ready' });
			assert.ok(Date.now() - started < 2500, 'answers quickly with the database down');
			assert.equal((await request(shim.port, { path: '/health' })).status, 200, '/health does not depend on it');
		} finally {
			cluster.start();
		}
		await eventually(async () => (await request(shim.port, { path: '/ready' })).status === 200, 20000, 250);
	});
});

describe('shim signals and TLS', () => {
	let db;

	before(async () => {
		db = new Cluster();
		await db.init();
		db.psqlVars("SELECT payments.register_provider('stripe', 'stripe'); SELECT payments.add_secret('stripe', :'s');",
			{ s: stripeSecret });
	});

	after(() => db?.destroy());

	test('a second SIGTERM exits at once, without waiting for requests in flight', async () => {
		const s = new Shim(db.dsn);
		await s.start();
		// a lock that makes the insert wait until released, so the request stays in flight
		const lock = await holdLock(db, 'LOCK TABLE payments.events IN SHARE MODE');
		try {
			const delivery = stripeDelivery();
			const inFlight = postStripe(s.port, delivery).catch(() => 'connection closed');
			await shimLockWaiters(db, 1);
			s.proc.kill('SIGTERM');
			await eventually(() => /"msg":"shutting down"/.test(s.stderr), 10000, 25);
			await sleep(200);
			assert.equal(s.proc.exitCode, null, 'still draining after the first SIGTERM');
			const sent = Date.now();
			s.proc.kill('SIGTERM');
			// draining, the shim would wait for the lock, which is held until after this
			const exit = await Promise.race([s.exited, sleep(5000).then(() => null)]);
			assert.ok(exit, `exited at once (still running ${Date.now() - sent} ms after the second SIGTERM)`);
			assert.equal(exit.code, 1);
			assert.equal(await inFlight, 'connection closed');
			assert.match(s.stderr, /second signal, exiting immediately/);
			assert.deepEqual(s.sanitizerReports(), []);
		} finally {
			s.kill();
			await lock.release();
		}
	});

	test('at --shutdown-timeout, queries still running are cancelled and the shim exits 0', async () => {
		const s = new Shim(db.dsn, ['--shutdown-timeout', '1']);
		await s.start();
		const lock = await holdLock(db, 'LOCK TABLE payments.events IN SHARE MODE');
		const delivery = stripeDelivery();
		try {
			const inFlight = postStripe(s.port, delivery).catch(() => ({ status: 'connection closed' }));
			await shimLockWaiters(db, 1);
			const sent = Date.now();
			// the lock is held until the shim has exited: only the deadline can end its drain
			const exit = await s.stop(15000);
			assert.equal(exit.code, 0);
			assert.ok(Date.now() - sent >= 900, `stopped after ${Date.now() - sent} ms, not before the deadline`);
			const res = await inFlight;
			assert.notEqual(res.status, 200, 'never 2xx for a cancelled request');
			assert.match(s.stderr, /shutdown timeout, cancelling database queries/);
			assert.deepEqual(s.sanitizerReports(), []);
		} finally {
			s.kill();
			await lock.release();
		}
		assert.equal(db.psqlVars("SELECT count(*) FROM payments.events WHERE event_id = :'e'", { e: delivery.id }), '0');
	});

	test('with --tls-cert and --tls-key the shim serves HTTPS (TLS 1.2 or later) only', async () => {
		const cert = join(db.dir, 'cert.pem');
		const key = join(db.dir, 'key.pem');
		execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
			'-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
		{ stdio: 'pipe' });
		const ca = readFileSync(cert);
		const port = await freePort();
		const s = new Shim(db.dsn, ['--listen', `127.0.0.1:${port}`, '--tls-cert', cert, '--tls-key', key,
			'--idle-timeout', '60', '--request-timeout', '3']);
		// Shim.start() probes over plain HTTP, so start by hand and probe over HTTPS
		s.start = async function start() {
			this.port = port;
			this.proc = spawn(process.env.PAYMENTS_SHIM, ['--dsn', this.dsn, ...this.extraArgs], {
				stdio: ['ignore', 'ignore', 'pipe'],
				env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:exitcode=66',
					UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' },
			});
			this.exited = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })));
			this.proc.stderr.setEncoding('utf8');
			this.proc.stderr.on('data', (chunk) => { this.stderr += chunk; });
			await eventually(async () => (await request(port, { path: '/health', tls: { ca } })
				.catch(() => ({ status: 0 }))).status === 200, 10000, 50);
		};
		await s.start();
		try {
			const delivery = stripeDelivery();
			const res = await postStripe(port, delivery, { tls: { ca } });
			assert.equal(res.status, 200, res.text);
			const plain = await rawSession(port, { chunks: ['GET /health HTTP/1.1\r\nHost: x\r\n\r\n'], timeoutMs: 3000 });
			assert.doesNotMatch(plain.data, /^HTTP\/1\.1 200/);
			// the protocol each client gets: TLS 1.2 and 1.3 are served
			assert.equal(await tlsProtocol(port, { ca, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }), 'TLSv1.2');
			assert.equal(await tlsProtocol(port, { ca, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' }), 'TLSv1.3');
			// a client that offers TLS 1.0 and 1.1 only, with its security level lowered so that OpenSSL
			// lets it (at the default level Node refuses them itself, whatever the server)...
			const legacy = { ca, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' };
			// ...does get TLS 1.1 from a server that allows it (the control: this client can fail only
			// because of the server)...
			const control = createTlsServer({ cert: ca, key: readFileSync(key), minVersion: 'TLSv1', ciphers: 'DEFAULT:@SECLEVEL=0' },
				(socket) => socket.end());
			await new Promise((resolve) => control.listen(0, '127.0.0.1', resolve));
			try {
				assert.equal(await tlsProtocol(control.address().port, legacy), 'TLSv1.1');
			} finally {
				control.close();
			}
			// ...and is refused by the shim
			const old = await tlsProtocol(port, legacy).catch((e) => `refused: ${e.message}`);
			assert.match(old, /^refused: /);
			assert.match(s.stderr, /"tls":"on"/);
			// a connection opened ahead of use, its handshake done and nothing sent, is left to
			// --idle-timeout: its handshake is no request (--request-timeout 3)
			const ahead = tlsConnect({ port, host: '127.0.0.1', ca });
			let aheadClosed = false;
			ahead.on('error', () => { /* reset by the shim */ });
			ahead.on('close', () => { aheadClosed = true; });
			await new Promise((resolve, reject) => { ahead.once('secureConnect', resolve); ahead.once('error', reject); });
			await sleep(4500);
			assert.equal(aheadClosed, false, 'a TLS connection with nothing sent after its handshake is left open');
			ahead.destroy();
			const timeouts = parseMetrics((await request(port, { path: '/metrics', tls: { ca } })).text).samples
				.get('payments_shim_rejections_total{reason="request_timeout"}') ?? 0;
			assert.equal(timeouts, 0);
		} catch (e) {
			s.kill();
			throw e;
		}
		assert.equal((await s.stop()).code, 0);
		assert.deepEqual(s.sanitizerReports(), []);
	});
});
