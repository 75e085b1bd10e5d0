// make run's script (scripts/run.sh), used as the README says: the first start creates the
// cluster and prints a banner whose pasted commands store a paid payment and show it; Ctrl-C
// (SIGINT to the script's whole process group, as a terminal sends it) answers the request in
// flight, then stops the shim and the database; a second start reuses the cluster and the demo
// secret; a shim that cannot listen ends the run with its message and leaves no database
// running.  run-e2e puts the script in a checkout of its own (PAYMENTS_CHECKOUT) with the
// AddressSanitizer/UBSan shim as shim/payments-shim; make run's install and build steps are
// those make test itself runs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { PG_BIN, freePort, request, sleep, waitFor } from './harness.mjs';

const checkout = process.env.PAYMENTS_CHECKOUT;
const state = join(checkout, '.run');
const asanDir = mkdtempSync(join(process.env.TMPDIR || '/tmp', 'payments-e2e-run-asan.'));
const banner = 'Ctrl-C stops the shim and the database.';
const running = [];

// A failed check leaves the script, its shim (in a session of its own) or its cluster running:
// they are stopped, or the test file would never end (and the next test would find them).
function stopLeftovers() {
	for (const run of running) {
		if (run.proc.exitCode === null && run.proc.signalCode === null) process.kill(-run.proc.pid, 'SIGKILL');
	}
	for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
		let cmdline = '';
		try { cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { continue; }
		if (cmdline.startsWith(`${join(state, 'payments-shim')}\0`)) process.kill(Number(pid), 'SIGKILL');
	}
	if (existsSync(join(state, 'pgdata', 'postmaster.pid'))) {
		execFileSync(join(PG_BIN, 'pg_ctl'), ['-D', join(state, 'pgdata'), '-m', 'immediate', '-w', 'stop'], { stdio: 'ignore' });
	}
}

after(() => {
	stopLeftovers();
	rmSync(asanDir, { recursive: true, force: true });
});

// Starts scripts/run.sh in a process group of its own, the shim to listen on port; returns
// { proc, out (stdout and stderr so far, as a getter), exited (resolves to the exit code) }.
function startRun(port) {
	const proc = spawn('bash', [join(checkout, 'scripts', 'run.sh')], {
		detached: true,
		stdio: ['ignore', 'pipe', 'pipe'],
		env: { ...process.env, PAYMENTS_LISTEN: `127.0.0.1:${port}`,
			ASAN_OPTIONS: `detect_leaks=1:log_path=${join(asanDir, 'report')}`,
			UBSAN_OPTIONS: `print_stacktrace=1:halt_on_error=1:log_path=${join(asanDir, 'report')}` },
	});
	let out = '';
	proc.stdout.setEncoding('utf8');
	proc.stderr.setEncoding('utf8');
	proc.stdout.on('data', (d) => { out += d; });
	proc.stderr.on('data', (d) => { out += d; });
	const run = { proc, get out() { return out; },
		exited: new Promise((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal))) };
	running.push(run);
	return run;
}

// What the terminal does on Ctrl-C: SIGINT to the foreground process group.
function ctrlC(run) {
	process.kill(-run.proc.pid, 'SIGINT');
}

function psql(sql) {
	return execFileSync(join(PG_BIN, 'psql'), ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', state, '-d', 'payments', '-c', sql],
		{ encoding: 'utf8' }).trim();
}

// A command line of the banner (indented by two spaces, starting with start), run by bash as
// pasted into a terminal.
function pasteBannerLine(run, start) {
	const line = run.out.split('\n').find((l) => l.startsWith(`  ${start}`));
	assert.ok(line, `the banner has a line starting with ${start}:\n${run.out}`);
	return execFileSync('bash', ['-c', line], { encoding: 'utf8', timeout: 20000 });
}

function listening(port) {
	return new Promise((resolve) => {
		const socket = connect({ port, host: '127.0.0.1' });
		socket.once('connect', () => { socket.destroy(); resolve(true); });
		socket.once('error', () => resolve(false));
	});
}

function stripeDelivery(secret, n) {
	const now = Math.floor(Date.now() / 1000);
	const body = JSON.stringify({ id: `evt_run_${process.pid}_${n}`, object: 'event', type: 'payment_intent.succeeded',
		created: now, data: { object: { id: `pi_run_${process.pid}_${n}`, amount: 700, currency: 'usd' } } });
	const v1 = createHmac('sha256', secret).update(`${now}.${body}`).digest('hex');
	return { body, headers: { 'content-type': 'application/json', 'stripe-signature': `t=${now},v1=${v1}` } };
}

function secretOf(run) {
	return /provider {2}demo \(kind stripe\), secret (whsec_[0-9a-f]+)/.exec(run.out)?.[1];
}

let secret;

test('first start: a new cluster, the banner\'s commands work, Ctrl-C answers the request in flight, then stops everything', async () => {
	assert.ok(!existsSync(state), 'no .run folder before the first start');
	const port = await freePort();
	const run = startRun(port);
	await waitFor(() => run.out.includes(banner) || run.proc.exitCode !== null, 180000, 'the banner');
	assert.match(run.out, /payments: creating a PostgreSQL 15 cluster in /);
	assert.match(run.out, new RegExp(`shim {6}http://127\\.0\\.0\\.1:${port} `));
	secret = secretOf(run);
	assert.ok(secret, `the banner names the demo secret:\n${run.out}`);
	assert.equal((await request(port, { path: '/ready' })).status, 200);

	// the pasted test event is stored and applied, and the pasted queries show it paid with a receipt
	const answer = pasteBannerLine(run, 'body=');
	assert.match(answer, /^HTTP\/1\.1 200 /, answer);
	assert.match(answer, /"outcome":"applied"/, answer);
	const events = pasteBannerLine(run, `psql -h ${state} -d payments -c "SELECT id, provider, event_id`);
	assert.match(events, /evt_demo_\d+ \| payment_intent\.succeeded .*\| applied/, events);
	const payments = pasteBannerLine(run, `psql -h ${state} -d payments -c "SELECT p.provider_ref`);
	assert.match(payments, /pi_demo_\d+ +\| paid +\| +25\.00 \| USD +\| LP-\d{8}-\d{6}/, payments);
	// the background jobs are scheduled in pg_cron
	assert.ok(Number(psql("SELECT count(*) FROM cron.job WHERE jobname LIKE 'payments-%'")) >= 4,
		psql('SELECT string_agg(jobname, \', \') FROM cron.job'));

	// a delivery held in flight (its event insert waits on a lock) when Ctrl-C comes
	const lock = spawn(join(PG_BIN, 'psql'), ['-X', '-q', '-h', state, '-d', 'payments'], { stdio: ['pipe', 'pipe', 'pipe'] });
	const lockDone = new Promise((resolve) => lock.once('exit', resolve));
	let lockOut = '';
	lock.stdout.on('data', (d) => { lockOut += d; });
	lock.stdin.write("BEGIN; LOCK TABLE payments.events IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n");
	await waitFor(() => lockOut.includes('locked'), 20000, 'the lock on payments.events');
	const delivery = stripeDelivery(secret, 1);
	const inFlight = request(port, { method: 'POST', path: '/webhooks/demo', headers: delivery.headers, body: delivery.body,
		timeoutMs: 30000 });
	await waitFor(() => psql(`SELECT count(*) FROM pg_stat_activity
		WHERE application_name = 'payments-shim' AND wait_event_type = 'Lock'`) === '1', 20000, 'the shim waiting on the lock');
	ctrlC(run);
	await sleep(1000);
	assert.equal(run.proc.exitCode, null, 'make run waits for the request in flight');
	assert.ok(existsSync(join(state, 'pgdata', 'postmaster.pid')), 'the database runs until the shim has stopped');
	lock.stdin.end('COMMIT;\n');
	await lockDone;
	const res = await inFlight;
	assert.equal(res.status, 200, res.text);
	assert.equal(res.json.outcome, 'applied');
	assert.equal(await run.exited, 0, run.out);
	assert.match(run.out, /payments: stopped\n$/);
	assert.ok(!existsSync(join(state, 'pgdata', 'postmaster.pid')), 'the database is stopped');
	assert.equal(await listening(port), false, 'the shim no longer listens');
	assert.deepEqual(readdirSync(asanDir), [], 'no sanitizer report from the shim');
});

test('second start: the same cluster and demo secret, the acknowledged delivery kept', async () => {
	assert.ok(secret, 'the first start ran');
	stopLeftovers();
	const port = await freePort();
	const run = startRun(port);
	await waitFor(() => run.out.includes(banner) || run.proc.exitCode !== null, 120000, 'the banner');
	assert.doesNotMatch(run.out, /creating a PostgreSQL 15 cluster/);
	assert.equal(secretOf(run), secret);
	assert.equal(psql(`SELECT state FROM payments.events WHERE event_id = 'evt_run_${process.pid}_1'`), 'applied');
	assert.equal(psql("SELECT count(*) FROM cron.job WHERE jobname LIKE 'payments-%'"),
		psql("SELECT count(DISTINCT jobname) FROM cron.job WHERE jobname LIKE 'payments-%'"), 'no job scheduled twice');
	const delivery = stripeDelivery(secret, 2);
	const res = await request(port, { method: 'POST', path: '/webhooks/demo', headers: delivery.headers, body: delivery.body });
	assert.equal(res.status, 200, res.text);
	ctrlC(run);
	assert.equal(await run.exited, 0, run.out);
	assert.ok(!existsSync(join(state, 'pgdata', 'postmaster.pid')), 'the database is stopped');
	assert.deepEqual(readdirSync(asanDir), [], 'no sanitizer report from the shim');
});

test('an address already taken ends the run with the shim\'s message, and stops the database', async () => {
	stopLeftovers();
	const taken = createServer();
	const port = await freePort();
	await new Promise((resolve) => taken.listen(port, '127.0.0.1', resolve));
	try {
		const run = startRun(port);
		// (a timer that does not hold the test file open once the script has ended)
		const code = await Promise.race([run.exited,
			new Promise((resolve) => { setTimeout(resolve, 120000, 'still running').unref(); })]);
		assert.equal(code, 1, run.out);
		assert.match(run.out, new RegExp(`payments: the shim did not start on 127\\.0\\.0\\.1:${port} \\(its message is above\\)`));
		assert.match(run.out, /could not start the HTTP server/);
		assert.doesNotMatch(run.out, /payments is running/);
		assert.ok(!existsSync(join(state, 'pgdata', 'postmaster.pid')), 'the database is stopped');
	} finally {
		taken.close();
	}
	assert.deepEqual(readdirSync(asanDir), [], 'no sanitizer report from the shim');
});
