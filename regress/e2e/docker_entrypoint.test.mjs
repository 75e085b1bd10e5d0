// The database image's entrypoint (docker/postgres-entrypoint.sh), run as the image runs it, with
// `postgres` as its command, on a scratch data directory and socket: Docker itself is not
// available to the tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { freePort, sleep } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const ENTRYPOINT = fileURLToPath(new URL('../postgres-entrypoint.sh', import.meta.url));

// Runs the entrypoint; resolves once the server it ends in (exec'd: the entrypoint's own pid)
// answers, which the server of its set-up, started and stopped before, is not.
async function start(dir, port, password) {
	const env = { ...process.env, PATH: `${PG_BIN}:${process.env.PATH}`, PGDATA: join(dir, 'data'),
		PGHOST: dir, PGPORT: String(port), PAYMENTS_SHIM_PASSWORD: password };
	const proc = spawn('sh', [ENTRYPOINT, 'postgres', '-c', 'listen_addresses=', '-c', `unix_socket_directories=${dir}`],
		{ env, stdio: ['ignore', 'pipe', 'pipe'] });
	let out = '';
	proc.stdout.on('data', (d) => { out += d; });
	proc.stderr.on('data', (d) => { out += d; });
	const exited = new Promise((resolve) => proc.once('exit', resolve));
	for (let i = 0; ; i++) {
		if (proc.exitCode !== null) throw new Error(`the entrypoint exited: ${out}`);
		if (i > 600) throw new Error(`no server after 60 s: ${out}`);
		let pid = '';
		try { pid = readFileSync(join(dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]; } catch { /* not yet */ }
		if (pid === String(proc.pid)) {
			try {
				execFileSync(join(PG_BIN, 'pg_isready'), ['-q', '-h', dir, '-p', String(port), '-d', 'payments']);
				break;
			} catch { /* starting */ }
		}
		await sleep(100);
	}
	return { stop: async () => { proc.kill('SIGINT'); await exited; }, out: () => out };
}

test('the database image sets up what is missing at every start: a stopped first start is finished, a new password reaches the role', async () => {
	const dir = mkdtempSync(join(tmpdir(), 'payments-entrypoint-'));
	const port = await freePort();
	const psql = (sql, db = 'payments') => execFileSync(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
		'-h', dir, '-p', String(port), '-U', 'postgres', '-d', db, '-c', sql], { encoding: 'utf8' }).trim();
	const state = () => psql(`SELECT (SELECT count(*) FROM cron.job WHERE jobname LIKE 'payments-%') || '|' ||
		(SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension WHERE extname IN ('payments', 'pg_cron')) || '|' ||
		pg_has_role('payments_shim', 'payments_ingest', 'MEMBER') || '|' || current_setting('cron.use_background_workers')`);
	const passwordHash = () => psql(`SELECT rolpassword FROM pg_authid WHERE rolname = 'payments_shim'`);
	let server;
	try {
		server = await start(dir, port, 'first-password');
		assert.match(server.out(), /payments: cluster created/);
		// the jobs are scheduled: without them nothing is retried, delivered or reconciled
		assert.equal(state(), '6|payments,pg_cron|true|on');
		const first = passwordHash();
		assert.match(first, /^SCRAM-SHA-256\$/);
		// a first start stopped before its set-up was done: the database is not there yet
		psql('DROP DATABASE payments WITH (FORCE)', 'postgres');
		await server.stop();
		server = await start(dir, port, 'second-password');
		assert.doesNotMatch(server.out(), /cluster created/);
		assert.equal(state(), '6|payments,pg_cron|true|on');
		assert.notEqual(passwordHash(), first, 'the password given at this start is the role\'s');
		// and a start with nothing missing changes nothing: the jobs as the operator left them
		// (rejections and finished outbox items kept for ever: the prune job must not come back)
		psql(`SELECT count(*) FROM payments.schedule_jobs(keep_rejections => NULL, keep_outbox => NULL, reconcile_schedule => '*/10 * * * *')`);
		await server.stop();
		server = await start(dir, port, 'second-password');
		assert.equal(state(), '5|payments,pg_cron|true|on');
		assert.equal(psql(`SELECT schedule FROM cron.job WHERE jobname LIKE 'payments-reconcile@%'`), '*/10 * * * *');
	} finally {
		if (server) await server.stop();
		rmSync(dir, { recursive: true, force: true });
	}
});
