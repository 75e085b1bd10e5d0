// Test harness for the end-to-end tests: a real PostgreSQL 15 cluster with pg_cron and
// the payments extension, and the real shim over real HTTP on loopback.
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const SHIM = process.env.PAYMENTS_SHIM;

// Returns a TCP port that is free on 127.0.0.1 right now.  It is drawn from below the
// kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default), so that
// no outgoing connection (a client's, libpq's) can take it between this check and the
// moment the cluster or shim binds it, as a port the kernel handed out could be.
export async function freePort() {
	for (let attempt = 0; attempt < 100; attempt++) {
		const port = 20000 + Math.floor(Math.random() * 12000);
		const free = await new Promise((resolve) => {
			const server = createServer();
			server.once('error', () => resolve(false));
			server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
		});
		if (free) return port;
	}
	throw new Error('no free port found in 20000-31999 on 127.0.0.1');
}

// A throwaway cluster with database "payments" and the extension created.
export class Cluster {
	constructor() {
		this.dir = mkdtempSync(join(process.env.TMPDIR || '/tmp', 'payments-e2e-pg.'));
		this.data = join(this.dir, 'data');
	}

	async init() {
		execFileSync(join(PG_BIN, 'initdb'), ['-D', this.data, '-A', 'trust', '-U', 'postgres',
			'-E', 'UTF8', '--locale=C', '--no-sync'], { stdio: 'pipe' });
		// a port another test file took between freePort() and the postmaster's bind (files may
		// run at once) fails the start: it is tried again on another port
		for (let attempt = 1; ; attempt++) {
			this.port = await freePort();
			writeFileSync(join(this.data, 'postgresql.auto.conf'), [
				`port = ${this.port}`,
				`listen_addresses = '127.0.0.1'`,
				`unix_socket_directories = '${this.dir}'`,
				`shared_preload_libraries = 'pg_cron'`,
				`cron.database_name = 'payments'`,
				`fsync = off`,
				`max_connections = 100`,
				`max_prepared_transactions = 2`,	// background: a job lock kept by a prepared transaction
				'',
			].join('\n'));
			try {
				this.start();
				break;
			} catch (e) {
				let log = '';
				try { log = readFileSync(join(this.dir, 'log'), 'utf8'); } catch { /* none */ }
				if (attempt >= 5 || !/could not bind IPv4 address "127\.0\.0\.1": Address already in use/.test(log)) throw e;
			}
		}
		this.psql('CREATE DATABASE payments', 'postgres');
		this.psql('CREATE EXTENSION payments; CREATE EXTENSION pg_cron;');
	}

	get dsn() {
		return `host=127.0.0.1 port=${this.port} dbname=payments user=postgres`;
	}

	start() {
		execFileSync(join(PG_BIN, 'pg_ctl'), ['-D', this.data, '-l', join(this.dir, 'log'), '-w', 'start'],
			{ stdio: 'pipe' });
	}

	stop() {
		execFileSync(join(PG_BIN, 'pg_ctl'), ['-D', this.data, '-m', 'fast', '-w', 'stop'], { stdio: 'pipe' });
	}

	// Runs SQL with psql and returns the unaligned output, rows on lines, fields split by |.
	psql(sql, db = 'payments') {
		return execFileSync(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
			'-h', this.dir, '-p', String(this.port), '-U', 'postgres', '-d', db, '-c', sql],
			{ encoding: 'utf8' }).trim();
	}

	// Rereads the configuration files and waits until it took: pg_reload_conf() only signals the
	// postmaster, which rereads them (pg_hba.conf too) and signals every backend a moment later;
	// once a new session's pg_conf_load_time() has moved, that is done (an idle backend applies the
	// settings as it reads its next statement).
	async reload() {
		const before = this.psql('SELECT pg_conf_load_time()', 'postgres');
		this.psql('SELECT pg_reload_conf()', 'postgres');
		await waitFor(() => this.psql('SELECT pg_conf_load_time()', 'postgres') !== before, 10000,
			'the configuration reloaded');
	}

	// Runs SQL with psql variables (-v name=value), referenced as :'name' in the SQL.  A value
	// longer than an argument may be (Linux: 128 KiB) is read from a file instead (\\set `cat`).
	psqlVars(sql, vars) {
		const args = ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', this.dir, '-p', String(this.port),
			'-U', 'postgres', '-d', 'payments'];
		let input = sql;
		const files = [];
		try {
			for (const [k, v] of Object.entries(vars)) {
				if (Buffer.byteLength(String(v)) < 65536) {
					args.push('-v', `${k}=${v}`);
					continue;
				}
				const file = join(this.dir, `var-${process.pid}-${files.length}`);
				writeFileSync(file, String(v));
				files.push(file);
				input = `\\set ${k} \`cat ${file}\`\n${input}`;
			}
			return execFileSync(join(PG_BIN, 'psql'), args, { input, encoding: 'utf8' }).trim();
		} finally {
			for (const file of files) rmSync(file, { force: true });
		}
	}

	destroy() {
		try { this.stop(); } catch { /* already stopped */ }
		rmSync(this.dir, { recursive: true, force: true });
	}
}

// The shim as a child process; its stderr is kept to check logs and sanitizer reports.
export class Shim {
	constructor(dsn, extraArgs = []) {
		this.dsn = dsn;
		this.extraArgs = extraArgs;
		this.stderr = '';
	}

	// Test files may run at once (node --test runs several files in parallel on a machine with more
	// than two cores): a port found free can be taken by another file's shim or cluster before this
	// one binds it.  The shim then exits (it cannot listen), and /health on that port may even be
	// answered by the other file's shim: healthy counts only once this process holds the listening
	// socket; one that could not bind is started again on another port.
	async start() {
		for (let attempt = 1; ; attempt++) {
			this.port = await freePort();
			this.base = `http://127.0.0.1:${this.port}`;
			this.stderr = '';
			this.proc = spawn(SHIM, ['--listen', `127.0.0.1:${this.port}`, '--dsn', this.dsn, ...this.extraArgs], {
				stdio: ['ignore', 'ignore', 'pipe'],
				env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:exitcode=66', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' },
			});
			this.exited = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })));
			this.proc.stderr.setEncoding('utf8');
			this.proc.stderr.on('data', (chunk) => { this.stderr += chunk; });
			for (let i = 0; i < 200 && this.proc.exitCode === null && this.proc.signalCode === null; i++) {
				// (on a connection of its own, closed after it: none is left open to count against
				// --max-connections)
				try {
					const res = await request(this.port, { path: '/health', timeoutMs: 2000 });
					if (res.status === 200 && listensOn(this.proc.pid, this.port)) return;
				} catch { /* not listening yet */ }
				await sleep(50);
			}
			if (this.proc.exitCode === null && this.proc.signalCode === null) break;
			await this.exited;
			if (attempt >= 5 || !/could not start the HTTP server/.test(this.stderr)) break;
		}
		throw new Error(`shim did not become healthy:\n${this.stderr}`);
	}

	// Kills the shim at once if it still runs: a test whose check failed before it stopped its
	// shim must not leave it running (the test file would never end).
	kill() {
		if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
	}

	// Stops with SIGTERM and returns the exit status; a shim still running after
	// timeoutMs is killed and the test fails, rather than the run hanging.
	async stop(timeoutMs = 30000) {
		this.proc.kill('SIGTERM');
		let timer;
		const late = new Promise((resolve) => { timer = setTimeout(() => resolve(null), timeoutMs); });
		const exit = await Promise.race([this.exited, late]);
		clearTimeout(timer);
		if (exit) return exit;
		this.proc.kill('SIGKILL');
		await this.exited;
		throw new Error(`the shim did not exit within ${timeoutMs} ms of SIGTERM:\n${this.stderr.slice(-2000)}`);
	}

	// Sanitizer reports found in the shim's stderr.
	sanitizerReports() {
		return this.stderr.split('\n').filter((l) => /AddressSanitizer|LeakSanitizer|runtime error:/.test(l));
	}
}

// Whether process pid holds the socket listening on 127.0.0.1:port (its inode in /proc/net/tcp
// is one of the process's descriptors).
export function listensOn(pid, port) {
	const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
	const inodes = readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/))
		.filter((f) => f[1] === local && f[3] === '0A').map((f) => f[9]);
	if (inodes.length === 0) return false;
	let fds;
	try { fds = readdirSync(`/proc/${pid}/fd`); } catch { return false; }
	return fds.some((fd) => {
		try { return inodes.includes(/^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1]); } catch { return false; }
	});
}

// The end of a test file's shim and cluster: stops the shim with SIGTERM, removes the cluster,
// then asserts a clean exit and no sanitizer report.
export async function stopShimAndCluster(shim, cluster) {
	const exit = shim ? await shim.stop() : { code: 0 };
	cluster?.destroy();
	assert.deepEqual(shim?.sanitizerReports() ?? [], [], 'sanitizer reports in the shim');
	assert.equal(exit.code, 0, `shim exit after SIGTERM: ${JSON.stringify(exit)}`);
}

// Posts a webhook and returns { status, headers, json }.
export async function post(base, provider, body, headers = {}) {
	const res = await fetch(`${base}/webhooks/${provider}`, {
		method: 'POST',
		headers: { 'content-type': 'application/json', ...headers },
		body,
	});
	const text = await res.text();
	let json = null;
	try { json = JSON.parse(text); } catch { /* not JSON */ }
	return { status: res.status, headers: res.headers, json, text };
}

// Sends raw bytes over one TCP connection and returns whatever the server answers before it
// closes (or the timeout passes); write errors are expected when the server stops reading.
export function rawRequest(port, chunks, timeoutMs = 5000) {
	return new Promise((resolve) => {
		const socket = connect(port, '127.0.0.1');
		let data = '';
		const done = () => { clearTimeout(timer); socket.destroy(); resolve(data); };
		const timer = setTimeout(done, timeoutMs);
		socket.setEncoding('latin1');
		socket.on('data', (d) => { data += d; });
		socket.on('error', () => { /* reset after an early answer */ });
		socket.on('close', done);
		socket.on('connect', () => { for (const c of chunks) socket.write(c); });
	});
}

export { sleep, readFileSync };

// --- Helpers for the shim's own tests (shim_*.test.mjs) ---
// (imports are hoisted: these are in effect at the top of the module)
import { spawnSync } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';

// One HTTP request on its own connection (no keep-alive), optionally from another loopback
// address (127.0.0.0/8 all reaches the shim on Linux), so that tests can act as distinct
// clients.  Resolves with { status, headers, text, json }; rejects on a connection error.
export function request(port, { method = 'GET', path = '/', headers = {}, body, localAddress = '127.0.0.1',
	timeoutMs = 10000, tls } = {}) {
	return new Promise((resolve, reject) => {
		const options = { host: '127.0.0.1', port, method, path, headers, localAddress, agent: false,
			timeout: timeoutMs };
		const req = (tls ? httpsRequest({ ...options, ...tls }) : httpRequest(options)).on('response', (res) => {
			let text = '';
			res.setEncoding('utf8');
			res.on('data', (d) => { text += d; });
			res.on('end', () => {
				let json = null;
				try { json = JSON.parse(text); } catch { /* not JSON */ }
				resolve({ status: res.statusCode, headers: res.headers, text, json });
			});
			res.on('error', reject);
		});
		req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
		req.on('error', reject);
		req.end(body);
	});
}

// Opens a raw TCP connection from localAddress and writes chunks, intervalMs apart, until they
// are all sent or the server closes.  Resolves with { data, closed, ms }: what the server sent,
// whether it closed the connection before timeoutMs, and when (ms after connecting).
export function rawSession(port, { chunks = [], intervalMs = 0, localAddress = '127.0.0.1', timeoutMs = 5000 } = {}) {
	return new Promise((resolve) => {
		const socket = connect({ port, host: '127.0.0.1', localAddress });
		const started = Date.now();
		let data = '';
		let closed = false;
		let timer;
		const finish = () => {
			clearTimeout(timer);
			socket.destroy();
			resolve({ data, closed, ms: Date.now() - started });
		};
		timer = setTimeout(finish, timeoutMs);
		socket.setEncoding('latin1');
		socket.on('data', (d) => { data += d; });
		socket.on('error', () => { closed = true; });
		socket.on('close', () => { closed = true; finish(); });
		socket.on('connect', async () => {
			for (const chunk of chunks) {
				if (closed || socket.destroyed) break;
				socket.write(chunk);
				if (intervalMs > 0) await sleep(intervalMs);
			}
		});
	});
}

// Parses Prometheus text exposition into a Map from 'name{labels}' (labels as written) to a
// number, and checks the format on the way: HELP and TYPE before a family's samples, names
// and label syntax, numeric values.
export function parseMetrics(text) {
	const samples = new Map();
	const types = new Map();
	for (const line of text.split('\n')) {
		if (line === '') continue;
		let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
		if (m) {
			if (m[1] === 'TYPE') types.set(m[2], m[3]);
			continue;
		}
		m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$/.exec(line);
		if (!m) throw new Error(`not a valid exposition line: ${line}`);
		const family = m[1].replace(/_(bucket|sum|count)$/, '');
		if (!types.has(m[1]) && !(types.get(family) === 'histogram'))
			throw new Error(`sample before its # TYPE: ${line}`);
		const value = Number(m[3].replace('+Inf', 'Infinity'));
		if (Number.isNaN(value)) throw new Error(`not a number: ${line}`);
		samples.set(`${m[1]}${m[2] ?? ''}`, value);
	}
	return { samples, types };
}

// The lines of a log read while it is being written: a line is complete once its newline is in
// (the shim writes each line with one write(), but a reader can still see a part of it).
function completeLines(text) {
	const end = text.lastIndexOf('\n');
	return end < 0 ? [] : text.slice(0, end).split('\n');
}

// Parses JSON log lines; throws on a line that is not a JSON object.
export function parseLogLines(text) {
	return completeLines(text).filter((l) => l !== '').map((l) => {
		const v = JSON.parse(l);
		if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`not an object: ${l}`);
		return v;
	});
}

// Runs the shim to completion (for bad settings and --help): { status, stdout, stderr }.
export function runShim(args, env = {}) {
	const r = spawnSync(SHIM, args, { encoding: 'utf8', timeout: 10000, env: { ...process.env, ...env } });
	return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// --- Traffic under faults (shim_failover, reliability) ---

// Waits until fn() is true, polling every 100 ms; throws after timeoutMs.
export async function waitFor(fn, timeoutMs, what) {
	const deadline = Date.now() + timeoutMs;
	while (!fn()) {
		if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
		await sleep(100);
	}
}

// Sends deliveries from `senders` concurrent clients, each one after the other, until stopped,
// or for at most limitMs, so that a test failing before it stops the traffic ends rather than
// hangs.  makeDelivery() returns { id, path, headers, body }.  Each answer is remembered with its
// id, status (or 'error: ...' when the connection failed, or no answer came within timeoutMs),
// Retry-After, and start and end times.
export function steadyTraffic(port, makeDelivery, { senders = 1, limitMs = 120000, timeoutMs = 10000 } = {}) {
	const results = [];
	let running = true;
	const until = Date.now() + limitMs;
	const sender = async () => {
		while (running && Date.now() < until) {
			const { id, path, headers, body } = makeDelivery();
			const started = Date.now();
			let status;
			let retryAfter = null;
			try {
				const res = await request(port, { method: 'POST', path, headers, body, timeoutMs });
				status = res.status;
				retryAfter = res.headers['retry-after'] ?? null;
			} catch (e) {
				status = `error: ${e.message}`;
			}
			results.push({ id, status, retryAfter, started, at: Date.now() });
			if (status !== 200) await sleep(50);
		}
	};
	const done = Promise.all(Array.from({ length: senders }, sender));
	return {
		results,
		// true once the last n answers are all 200
		recovered: (n) => results.length >= n && results.slice(-n).every((r) => r.status === 200),
		stop: async () => { running = false; await done; },
	};
}

// Checks that every delivery answered 200 is stored in cluster (event ids of one provider);
// returns how many there were.
export function assertNoAcknowledgedLoss(cluster, results, provider = 'stripe') {
	const acknowledged = results.filter((r) => r.status === 200).map((r) => r.id);
	const stored = Number(cluster.psqlVars(
		"SELECT count(*) FROM payments.events WHERE provider = :'p' AND event_id = ANY (string_to_array(:'ids', ','))",
		{ p: provider, ids: acknowledged.join(',') }));
	if (stored !== acknowledged.length) {
		throw new Error(`${acknowledged.length - stored} of ${acknowledged.length} deliveries answered 200 are not stored`);
	}
	return acknowledged.length;
}

// Checks the answers during an outage: only 200 or 503 with Retry-After, and some 503.
export function assertOutageAnswers(t, results) {
	const others = results.filter((r) => r.status !== 200 && r.status !== 503);
	if (others.length > 0) throw new Error(`answers other than 200 or 503: ${JSON.stringify(others.slice(0, 5))}`);
	const unavailable = results.filter((r) => r.status === 503);
	if (unavailable.length === 0) throw new Error('no 503 during the outage');
	if (!unavailable.every((r) => Number(r.retryAfter) > 0)) throw new Error('a 503 without Retry-After');
	t.diagnostic(`${results.length} deliveries: ${results.length - unavailable.length} answered 200, ` +
		`${unavailable.length} answered 503`);
}

// --- Locks held on purpose, and the shim's own view (reliability, webhooks, shim_*) ---

// Holds a lock in a psql session of its own: runs BEGIN and `lockSql`, resolves once the lock is
// granted, and keeps the transaction open until release() (COMMIT) is called.  kill() ends the
// session, for a test's cleanup after a failure.  The session is user's (postgres by default).
export async function holdLock(cluster, lockSql, user = 'postgres', database = 'payments') {
	const proc = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', cluster.dir,
		'-p', String(cluster.port), '-U', user, '-d', database], { stdio: ['pipe', 'pipe', 'pipe'] });
	const exited = new Promise((resolve) => proc.once('exit', resolve));
	let out = '';
	let err = '';
	proc.stderr.on('data', (d) => { err += d; });
	proc.stdin.write(`BEGIN; ${lockSql}; SELECT 'locked';\n`);
	await new Promise((resolve, reject) => {
		proc.stdout.on('data', (d) => { out += d; if (out.includes('locked')) resolve(); });
		exited.then(() => reject(new Error(`the lock was not taken: ${err}`)));
	});
	return {
		release: async () => { proc.stdin.end('COMMIT;\n'); return exited; },
		kill: () => { if (proc.exitCode === null) proc.kill(); },
	};
}

// Waits until at least n backends of a shim (application_name payments-shim) wait for a lock,
// polling pg_stat_activity; returns their pids.  Throws after timeoutMs.
export async function shimLockWaiters(cluster, n = 1, timeoutMs = 20000) {
	const deadline = Date.now() + timeoutMs;
	for (;;) {
		const pids = cluster.psql(`SELECT string_agg(pid::text, ' ') FROM pg_stat_activity
			WHERE application_name = 'payments-shim' AND wait_event_type = 'Lock'`).split(' ').filter((p) => p !== '');
		if (pids.length >= n) return pids;
		if (Date.now() > deadline) throw new Error(`${n} backends of the shim waiting for a lock: not within ${timeoutMs} ms`);
		await sleep(25);
	}
}

// The shim's JSON log lines on its stderr (other lines, such as sanitizer reports, are skipped).
export function shimLogLines(shim) {
	return completeLines(shim.stderr).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
}

// The shim's gauge of requests received and not yet answered, not counting the /metrics
// request that reads it.
export async function shimRequestsInFlight(port) {
	const res = await request(port, { path: '/metrics' });
	const { samples } = parseMetrics(res.text);
	return samples.get('payments_shim_requests_in_flight') - 1;
}

// Waits until the shim has at least n requests in flight; throws after timeoutMs.
export async function waitShimInFlight(port, n, timeoutMs = 20000) {
	const deadline = Date.now() + timeoutMs;
	for (;;) {
		const inFlight = await shimRequestsInFlight(port);
		if (inFlight >= n) return inFlight;
		if (Date.now() > deadline) throw new Error(`${n} requests in flight in the shim: ${inFlight} after ${timeoutMs} ms`);
		await sleep(25);
	}
}

// Bytes on the way to or from 127.0.0.1:port not yet read: the receive queues of the server's
// sockets and the send queues of its clients' (/proc/net/tcp, loopback).
function unreadBytes(port) {
	const hex = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
	let total = 0;
	for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
		const f = line.trim().split(/\s+/);
		if (f.length < 5 || f[3] === '0A') continue;
		const [tx, rx] = f[4].split(':').map((v) => parseInt(v, 16));
		if (f[1] === hex) total += rx;
		if (f[2] === hex) total += tx;
	}
	return total;
}

// Waits until the shim has at least n requests in flight and has read every byte sent to it (twice
// in a row, with the event loop let run between, so that a client still writing a large body from
// its own buffer is seen): each of those requests is then in the shim's hands, queued for a batch
// thread if it is one that waits for the database.  Throws after timeoutMs.
export async function waitShimQueued(port, n, timeoutMs = 20000) {
	const deadline = Date.now() + timeoutMs;
	await waitShimInFlight(port, n, timeoutMs);
	for (let quiet = 0; quiet < 2;) {
		quiet = unreadBytes(port) === 0 ? quiet + 1 : 0;
		if (Date.now() > deadline) throw new Error(`the shim has not read what was sent to it within ${timeoutMs} ms`);
		await sleep(50);
	}
}
