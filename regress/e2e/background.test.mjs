// Background work end to end: outbound deliveries signed with Standard Webhooks and checked by
// the official library, their failures, circuit breaker, cancel and crash safety; the pg_cron
// jobs really running (one wait, in a second cluster, while the other tests run).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { spawn, spawnSync, execFileSync, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Webhook } from 'standardwebhooks';
import { Cluster, sleep, holdLock, waitFor } from './harness.mjs';

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const STRIPE_SECRET = 'whsec_shop';
let db;
let cron;
let cronScheduledAt;
let receiver;
let seq = 0;

// A local receiver: verifies every request with the standardwebhooks library and keeps the
// verified deliveries by webhook-id; behaviour(req, body) answers (default 200).
async function startReceiver() {
	const r = { deliveries: [], invalid: 0, behaviour: null, sockets: new Set() };
	r.server = createServer((req, res) => {
		let body = '';
		req.setEncoding('utf8');
		req.on('data', (d) => { body += d; });
		req.on('end', async () => {
			const path = req.url;
			try {
				const payload = new Webhook(SECRET).verify(body, req.headers);
				r.deliveries.push({ path, id: req.headers['webhook-id'], payload, at: Date.now() });
			} catch {
				r.invalid++;
			}
			const behave = r.behaviour?.[path];
			if (behave) return behave(req, res);
			res.writeHead(200).end('ok');
		});
	});
	r.server.on('connection', (s) => { r.sockets.add(s); s.on('close', () => r.sockets.delete(s)); });
	await new Promise((resolve) => r.server.listen(0, '127.0.0.1', resolve));
	r.base = `http://127.0.0.1:${r.server.address().port}`;
	r.behaviour = {};
	r.to = (path) => r.deliveries.filter((d) => d.path === path);
	return r;
}

// Stores a signed Stripe event through payments.ingest; returns the outcome.  At READ COMMITTED,
// as the shim's connections set it (ingest refuses other levels), whatever the database's default.
function stripe(cluster, type, obj) {
	const body = JSON.stringify({ id: `evt_bg${++seq}`, object: 'event', type, created: 1718000000 + seq,
		data: { object: obj } });
	const t = Math.floor(Date.now() / 1000);
	const v1 = createHmac('sha256', STRIPE_SECRET).update(`${t}.${body}`).digest('hex');
	return cluster.psqlVars(`SET client_min_messages = error; SET default_transaction_isolation = 'read committed';
		SELECT outcome FROM payments.ingest('shop', jsonb_build_object('stripe-signature', :'h'), convert_to(:'b', 'UTF8'));`,
	{ h: `t=${t},v1=${v1}`, b: body });
}

const pi = (id, amount = 1000) => ({ id, object: 'payment_intent', amount, currency: 'usd',
	payment_method_types: ['card'] });

// A payment becomes paid: one payment.paid transition (plus its creation)
const paid = (id) => stripe(db, 'payment_intent.succeeded', pi(id));

// Runs a delivery without blocking this process, whose receiver must answer meanwhile.
async function deliver(max = 100) {
	await promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir,
		'-p', String(db.port), '-U', 'postgres', '-d', 'payments', '-c', `CALL payments.deliver_outbox(${max})`]);
}

function endpoint(name, path, extra = '') {
	db.psql(`SELECT payments.add_endpoint('${name}', '${receiver.base}${path}', '${SECRET}',
		'{payment.paid}'${extra})`);
}

// Makes recording the result of one outbox item fail (as a deadlock with a concurrent claim would);
// returns the function that puts things back.
function failRecording(outboxId) {
	db.psql(`CREATE FUNCTION record_fails() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN RAISE EXCEPTION 'recording refused for the test'; END$$;
		CREATE TRIGGER record_fails BEFORE UPDATE ON payments.outbox_attempts
			FOR EACH ROW WHEN (NEW.outbox_id = ${outboxId}) EXECUTE FUNCTION record_fails();`);
	return () => db.psql(`DROP TRIGGER record_fails ON payments.outbox_attempts; DROP FUNCTION record_fails()`);
}

// Items of an endpoint: state|attempts|last_status
function items(name) {
	return db.psql(`SELECT o.state, o.attempts, coalesce(o.last_status::text, '-') FROM payments.outbox o
		JOIN payments.endpoints e ON e.id = o.endpoint_id WHERE e.name = '${name}' ORDER BY o.id`)
		.split('\n').filter((l) => l !== '');
}

// Whether a session of cluster c in database dbname sleeps in pg_sleep (a transaction holding what
// it did before, on purpose).
function inPgSleep(c, dbname) {
	return c.psqlVars(`SELECT count(*) FROM pg_stat_activity WHERE datname = :'d' AND wait_event = 'PgSleep'`,
		{ d: dbname }) !== '0';
}

// Makes the pending items of an endpoint due now, as if their time had come.
function timePasses(name) {
	db.psql(`UPDATE payments.outbox o SET next_attempt_at = now() FROM payments.endpoints e
		WHERE e.id = o.endpoint_id AND e.name = '${name}' AND o.state = 'pending'`);
}

before(async () => {
	cron = new Cluster();
	await cron.init();
	// the jobs run under pg_cron in this cluster while the other tests run; checked at the end
	cron.psql(`SELECT count(*) FROM payments.schedule_jobs()`);
	cronScheduledAt = Date.now();
	db = new Cluster();
	await db.init();
	db.psql(`SELECT payments.register_provider('shop', 'stripe');
		SELECT payments.add_secret('shop', '${STRIPE_SECRET}');`);
	receiver = await startReceiver();
});

after(async () => {
	for (const s of receiver?.sockets ?? []) s.destroy();
	receiver?.server.close();
	db?.destroy();
	cron?.destroy();
});

test('a paid payment is delivered once, signed, with a stable webhook-id; other types are not queued', async () => {
	endpoint('ok', '/ok');
	assert.equal(paid('pi_ok1'), 'applied');
	assert.deepEqual(items('ok'), ['pending|0|-']);
	await deliver();
	assert.deepEqual(items('ok'), ['delivered|1|200']);
	const [d] = receiver.to('/ok');
	assert.equal(receiver.invalid, 0);
	// random, so that another database's (or this one made again) never repeats it
	const msgId = db.psql(`SELECT msg_id FROM payments.outbox ORDER BY id LIMIT 1`);
	assert.match(msgId, /^msg_[0-9a-f]{32}$/);
	assert.equal(d.id, msgId);
	assert.equal(d.payload.type, 'payment.paid');
	assert.equal(d.payload.data.provider_ref, 'pi_ok1');
	assert.equal(d.payload.data.status, 'paid');
	assert.equal(d.payload.data.to_status, 'paid');
	assert.equal(d.payload.data.amount, 10);
	assert.equal(d.payload.data.currency, 'USD');
	assert.match(d.payload.data.receipt_no, /^LP-\d{8}-\d{6}$/);
	await deliver();
	assert.equal(receiver.to('/ok').length, 1, 'a delivered item is not sent again');
	assert.equal(db.psql(`SELECT http_status || '|' || (finished_at IS NOT NULL) FROM payments.outbox_attempts`), '200|true');
	// the signature function gives what the receiver checked
	assert.equal(db.psql(`SELECT payments.sign_webhook('msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330,
		'{"test": 2432232314}', '${SECRET}')`), 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=');
	db.psql(`SELECT payments.enable_endpoint('ok', false)`);
});

test('410 Gone disables the endpoint; its items wait until it is enabled again, and replay_outbox sends what it missed', async () => {
	receiver.behaviour['/gone'] = (req, res) => res.writeHead(410).end();
	const since = db.psql(`SELECT clock_timestamp()`);
	endpoint('gone', '/gone');
	paid('pi_gone1');
	await deliver();
	assert.equal(db.psql(`SELECT enabled || '|' || (disabled_reason LIKE '410 Gone%') FROM payments.endpoints WHERE name = 'gone'`), 'false|true');
	assert.deepEqual(items('gone'), ['pending|1|410']);
	paid('pi_gone2');
	assert.equal(items('gone').length, 1, 'nothing new is queued for a disabled endpoint');
	await deliver();
	assert.equal(receiver.to('/gone').length, 1);
	delete receiver.behaviour['/gone'];
	db.psql(`SELECT payments.enable_endpoint('gone')`);
	await deliver();
	assert.deepEqual(items('gone'), ['delivered|2|200']);
	// the payment paid while the endpoint was disabled was never queued: the operator sends it
	assert.equal(db.psql(`SELECT payments.replay_outbox('gone', '${since}')`), '1');
	await deliver();
	assert.deepEqual(receiver.to('/gone').map((d) => d.payload.data.provider_ref), ['pi_gone1', 'pi_gone1', 'pi_gone2']);
	assert.equal(db.psql(`SELECT payments.replay_outbox('gone', '${since}')`), '0');
	db.psql(`SELECT payments.enable_endpoint('gone', false)`);
});

test('429 with Retry-After waits at least that long; 5xx retries on the schedule', async () => {
	receiver.behaviour['/busy'] = (req, res) => res.writeHead(429, { 'retry-after': '600' }).end('slow down');
	receiver.behaviour['/err'] = (req, res) => res.writeHead(503).end('down');
	endpoint('busy', '/busy');
	endpoint('err', '/err');
	paid('pi_busy1');
	await deliver();
	assert.deepEqual(items('busy'), ['pending|1|429']);
	assert.deepEqual(items('err'), ['pending|1|503']);
	assert.equal(db.psql(`SELECT o.next_attempt_at >= now() + interval '599 seconds' FROM payments.outbox o
		JOIN payments.endpoints e ON e.id = o.endpoint_id WHERE e.name = 'busy'`), 't');
	assert.equal(db.psql(`SELECT a.retry_after || '|' || a.response FROM payments.outbox_attempts a
		JOIN payments.endpoints e ON e.id = a.endpoint_id WHERE e.name = 'busy'`), '600|slow down');
	// a minute with +-10% jitter, counted from when the attempt was recorded: this check comes a
	// moment later, so the lower bound leaves room for that moment (at 54 s, a jitter drawn close
	// to -10% failed it now and then)
	assert.equal(db.psql(`SELECT o.next_attempt_at - now() BETWEEN interval '48 seconds' AND interval '66 seconds'
		FROM payments.outbox o JOIN payments.endpoints e ON e.id = o.endpoint_id WHERE e.name = 'err'`), 't');
	await deliver();
	assert.equal(receiver.to('/err').length, 1, 'not due yet: not sent again');
	timePasses('err');
	await deliver();
	assert.deepEqual(items('err'), ['pending|2|503']);
	assert.equal(db.psql(`SELECT o.next_attempt_at - now() BETWEEN interval '4 minutes' AND interval '6 minutes'
		FROM payments.outbox o JOIN payments.endpoints e ON e.id = o.endpoint_id WHERE e.name = 'err'`), 't');
	// the last attempt makes it dead
	db.psql(`UPDATE payments.outbox o SET attempts = 7 FROM payments.endpoints e
		WHERE e.id = o.endpoint_id AND e.name = 'err'`);
	timePasses('err');
	await deliver();
	assert.deepEqual(items('err'), ['dead|8|503']);
	// the Retry-After holds the endpoint, not only its item: its breaker is open until then, so a
	// later item waits too (one 503 without it opens nothing: the threshold is 5)
	assert.equal(db.psql(`SELECT e.breaker_state || '|' || (e.breaker_until - e.last_failure_at BETWEEN interval '599 seconds' AND interval '601 seconds')
		FROM payments.endpoints e WHERE e.name = 'busy'`), 'open|true');
	assert.equal(db.psql(`SELECT e.breaker_state FROM payments.endpoints e WHERE e.name = 'err'`), 'closed');
	db.psql(`SELECT payments.enable_endpoint('err', false)`);
	paid('pi_busy2');
	await deliver();
	assert.equal(receiver.to('/busy').length, 1, 'the later item waits for the Retry-After too');
	assert.deepEqual(items('busy'), ['pending|1|429', 'pending|0|-']);
	db.psql(`SELECT payments.enable_endpoint('busy', false)`);
});

test('two replay_outbox calls at once queue each change once', async () => {
	const since = db.psql(`SELECT clock_timestamp()`);
	endpoint('twice', '/twice');
	db.psql(`SELECT payments.enable_endpoint('twice', false)`);
	for (let i = 1; i <= 3; i++) paid(`pi_twice${i}`);
	const psql = (sql) => promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
		'-h', db.dir, '-p', String(db.port), '-U', 'postgres', '-d', 'payments', '-c', sql]).then((r) => r.stdout.trim());
	const first = psql(`BEGIN; SELECT payments.replay_outbox('twice', '${since}'); SELECT pg_sleep(3); COMMIT;`);
	// the first has queued the changes and holds its transaction open (in its pg_sleep)
	await waitFor(() => inPgSleep(db, 'payments'), 20000, 'the first replay_outbox in its transaction');
	const second = psql(`SELECT payments.replay_outbox('twice', '${since}')`);
	assert.deepEqual([(await first).split('\n')[0], await second], ['3', '0']);
	assert.equal(db.psql(`SELECT count(*) || '|' || count(DISTINCT o.status_history_id) FROM payments.outbox o
		JOIN payments.endpoints e ON e.id = o.endpoint_id WHERE e.name = 'twice'`), '3|3');
	// an endpoint with items is deleted with them
	db.psql(`DELETE FROM payments.endpoints WHERE name = 'twice'`);
});

// The extension needs a UTF8 database: in any other, jsonb cannot hold a character such as the
// U+2019 of "O\u2019Brien" or a CJK letter, and an authentic event holding one would be refused.
// CREATE EXTENSION says so at once, naming the encoding, and makes nothing.  The install script
// is ASCII, read as the database's encoding: its check is reached in a multibyte one too (a
// non-ASCII byte anywhere in it would fail CREATE EXTENSION in EUC_JP with a conversion error
// instead of this message).
test('CREATE EXTENSION is refused, saying why, in a database that is not UTF8: LATIN1, EUC_JP, SQL_ASCII', () => {
	for (const encoding of ['LATIN1', 'EUC_JP', 'SQL_ASCII']) {
		const name = `enc_${encoding.toLowerCase()}`;
		db.psql(`CREATE DATABASE ${name} ENCODING '${encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`, 'postgres');
		try {
			const r = spawnSync(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-v', 'VERBOSITY=verbose',
				'-h', db.dir, '-p', String(db.port), '-U', 'postgres', '-d', name, '-c', 'CREATE EXTENSION payments'],
			{ encoding: 'utf8' });
			assert.notEqual(r.status, 0, encoding);
			assert.match(r.stderr, new RegExp(`^ERROR:  0A000: payments needs a UTF8 database: database "${name}" has encoding ${encoding}\n`), encoding);
			assert.match(r.stderr, /\nHINT:  Create the database with ENCODING 'UTF8' \(TEMPLATE template0\), then CREATE EXTENSION payments in it\.\n/, encoding);
			assert.equal(db.psql(`SELECT count(*) FROM pg_extension WHERE extname = 'payments'`, name), '0');
			assert.equal(db.psql(`SELECT count(*) FROM pg_namespace WHERE nspname = 'payments'`, name), '0');
		} finally {
			db.psql(`DROP DATABASE ${name}`, 'postgres');
		}
	}
});

test('timeouts, slow and oversized responses', async () => {
	receiver.behaviour['/hang'] = () => { /* never answers */ };
	receiver.behaviour['/slow'] = (req, res) => setTimeout(() => res.writeHead(204).end(), 700);
	receiver.behaviour['/big'] = (req, res) => res.writeHead(200).end('x'.repeat(1 << 20));
	receiver.behaviour['/bigerr'] = (req, res) => res.writeHead(500).end('y'.repeat(1 << 20));
	// the first 1,024 bytes kept end in the first byte of a two-byte character
	receiver.behaviour['/cut'] = (req, res) => res.writeHead(502).end('a'.repeat(1023) + 'é'.repeat(10));
	endpoint('hang', '/hang', `, timeout_ms => 1000`);
	endpoint('slow', '/slow', `, timeout_ms => 3000`);
	endpoint('big', '/big', `, max_response_bytes => 1024`);
	endpoint('bigerr', '/bigerr', `, max_response_bytes => 1024`);
	endpoint('cut', '/cut');
	paid('pi_t1');
	await deliver();
	// sent in parallel: each of hang and slow arrived while the other was out (one after the other,
	// slow would come 1 s after hang, when it timed out, or hang 0.7 s after slow, once answered).
	// Read from the arrivals rather than the run's time, which a loaded machine stretches
	const [hang, slow] = ['/hang', '/slow'].map((path) => receiver.to(path)[0].at);
	assert.ok(hang < slow + 700 && slow < hang + 1000, `hang arrived at ${hang - slow} ms from slow`);
	assert.deepEqual(items('hang'), ['pending|1|-']);
	assert.match(db.psql(`SELECT a.error FROM payments.outbox_attempts a JOIN payments.endpoints e
		ON e.id = a.endpoint_id WHERE e.name = 'hang'`), /^timeout/);
	assert.deepEqual(items('slow'), ['delivered|1|204']);
	assert.deepEqual(items('big'), ['delivered|1|200']);
	assert.match(db.psql(`SELECT a.error || '|' || a.response_bytes FROM payments.outbox_attempts a
		JOIN payments.endpoints e ON e.id = a.endpoint_id WHERE e.name = 'big'`), /^response larger than 1024 bytes.*\|\d+$/);
	assert.deepEqual(items('bigerr'), ['pending|1|500']);
	// the kept start of a response is recorded up to its last whole character
	assert.deepEqual(items('cut'), ['pending|1|502']);
	assert.equal(db.psql(`SELECT length(a.response) || '|' || (a.response = repeat('a', 1023)) || '|' || a.response_bytes
		FROM payments.outbox_attempts a JOIN payments.endpoints e ON e.id = a.endpoint_id WHERE e.name = 'cut'`), '1023|true|1043');
	db.psql(`SELECT payments.enable_endpoint(n, false) FROM unnest('{hang,slow,big,bigerr,cut}'::text[]) n`);
});

test('the circuit breaker opens after repeated failures, probes after the cool-down, closes on success', async () => {
	let failing = true;
	receiver.behaviour['/flaky'] = (req, res) => res.writeHead(failing ? 502 : 200).end();
	// (a cool-down of a minute, that a loaded machine's runs never reach, ended by coolDown(): with
	// one of 2 s, the run that must send nothing met the probe's time when it came late)
	endpoint('flaky', '/flaky', `, breaker_threshold => 3, breaker_cooldown => '1 minute'`);
	const coolDown = () => db.psql(`UPDATE payments.endpoints SET breaker_until = now() WHERE name = 'flaky'`);
	const coolingFor = () => Number(db.psql(`SELECT extract(epoch FROM breaker_until - now()) FROM payments.endpoints
		WHERE name = 'flaky'`));
	for (let i = 1; i <= 5; i++) paid(`pi_fl${i}`);
	await deliver(3);
	assert.equal(receiver.to('/flaky').length, 3);
	assert.equal(db.psql(`SELECT breaker_state || '|' || consecutive_failures FROM payments.endpoints WHERE name = 'flaky'`), 'open|3');
	assert.ok(coolingFor() > 30, `open for the cool-down: ${coolingFor()} s left`);
	timePasses('flaky');
	await deliver();
	assert.equal(receiver.to('/flaky').length, 3, 'open: nothing is sent');
	coolDown();
	await deliver();
	assert.equal(receiver.to('/flaky').length, 4, 'after the cool-down: one probe only');
	assert.equal(db.psql(`SELECT breaker_state FROM payments.endpoints WHERE name = 'flaky'`), 'open');
	assert.ok(coolingFor() > 30, `the failed probe opens it for another cool-down: ${coolingFor()} s left`);
	coolDown();
	failing = false;
	timePasses('flaky');
	await deliver();
	assert.equal(receiver.to('/flaky').length, 5, 'one probe');
	assert.equal(db.psql(`SELECT breaker_state || '|' || consecutive_failures FROM payments.endpoints WHERE name = 'flaky'`), 'closed|0');
	timePasses('flaky');
	await deliver();
	assert.equal(items('flaky').filter((s) => s.startsWith('delivered')).length, 5);
	assert.match(db.psql(`SELECT name || '|' || breaker_state || '|' || delivered_1h FROM payments.endpoint_health WHERE name = 'flaky'`), /^flaky\|closed\|5$/);
	db.psql(`SELECT payments.enable_endpoint('flaky', false)`);
});

test('Retry-After and the breaker count from the answer, not from before the request; one probe at a time', async () => {
	// the first attempt answered after 3 s, the probe once the test lets it (so that a run comes past
	// the cool-down while it is out, however long that run takes on a loaded machine)
	let seen = 0;
	let answered = 0;
	let answerProbe;
	const probeAnswered = new Promise((resolve) => { answerProbe = resolve; });
	receiver.behaviour['/slow429'] = (req, res) => {
		const answer = () => {
			res.writeHead(429, { 'retry-after': '1' }).end();
			answered += 1;
		};
		if (++seen === 1) setTimeout(answer, 3000);
		else probeAnswered.then(answer);
	};
	endpoint('slow429', '/slow429', `, breaker_threshold => 1, breaker_cooldown => '2 seconds'`);
	paid('pi_slow429a');
	await deliver();
	const [took, retryAfter, breakerLeft] = db.psql(`SELECT extract(epoch FROM a.finished_at - a.started_at),
			extract(epoch FROM o.next_attempt_at - a.finished_at), extract(epoch FROM e.breaker_until - a.finished_at)
		  FROM payments.outbox_attempts a JOIN payments.outbox o ON o.id = a.outbox_id
		  JOIN payments.endpoints e ON e.id = o.endpoint_id WHERE e.name = 'slow429'`).split('|').map(Number);
	assert.ok(took >= 2.5, `the attempt finished ${took} s after it started: when it was answered`);
	assert.ok(retryAfter >= 0.9, `next attempt ${retryAfter} s after the answer: never before its Retry-After`);
	// (counted from the answer: 2 s after it, the cool-down being longer than the Retry-After, which
	// holds the endpoint too; counted from before the request, it would end a second before the answer.  Read against the answer's time, not the clock now, which a slow machine
	// moves on between the run and this query)
	assert.ok(breakerLeft > 1, `the breaker's 2 s cool-down ends ${breakerLeft} s after the answer`);
	// cooled down: one probe; a run past the cool-down while it is out sends no second one
	await sleep(2200);
	paid('pi_slow429b');
	timePasses('slow429');
	const first = deliver();
	// the probe is out (answered once that run ends): a run past the 2 s cool-down from then
	await waitFor(() => receiver.to('/slow429').length === 2, 20000, 'the probe');
	await sleep(2200);
	await deliver();
	assert.equal(answered, 1, 'the probe was still out during that run');
	answerProbe();
	await first;
	assert.equal(receiver.to('/slow429').length, 2, 'the first attempt and one probe');
	// (the probe was answered, not given up by its 15 s timeout before that run ended)
	assert.equal(db.psql(`SELECT string_agg(coalesce(a.http_status::text, a.error), ',' ORDER BY a.id)
		FROM payments.outbox_attempts a JOIN payments.endpoints e ON e.id = a.endpoint_id WHERE e.name = 'slow429'`), '429,429');
	db.psql(`SELECT payments.enable_endpoint('slow429', false)`);
});

test('a cancelled run (statement_timeout) stops at once and loses nothing; what was answered is recorded', async () => {
	receiver.behaviour['/hang2'] = () => { /* never answers */ };
	endpoint('hang2', '/hang2', `, timeout_ms => 30000`);
	endpoint('quick2', '/quick2');
	paid('pi_cancel');
	const started = Date.now();
	// not blocking this process, whose receiver must answer quick2 meanwhile
	await assert.rejects(promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir,
		'-p', String(db.port), '-U', 'postgres', '-d', 'payments', '-c', 'SET statement_timeout = 500',
		'-c', 'CALL payments.deliver_outbox()']), /canceling statement due to statement timeout/);
	// not cancelled, the run would wait for hang2's 30 s timeout: 10 s is far from it on a loaded machine
	assert.ok(Date.now() - started < 10000, `took ${Date.now() - started} ms`);
	assert.deepEqual(items('hang2'), ['pending|1|-']);
	// the receiver that answered before the cancel is not sent the item again
	assert.deepEqual(items('quick2'), ['delivered|1|200']);
	assert.equal(receiver.to('/quick2').length, 1);
	db.psql(`SELECT payments.enable_endpoint('quick2', false)`);
	assert.equal(db.psql(`SELECT count(*) FROM payments.outbox_attempts a JOIN payments.endpoints e
		ON e.id = a.endpoint_id WHERE e.name = 'hang2' AND a.finished_at IS NULL`), '1', 'the attempt was recorded before the call');
	db.psql(`SELECT payments.enable_endpoint('hang2', false)`);
	assert.throws(() => db.psql(`BEGIN; CALL payments.deliver_outbox(); COMMIT;`), /outside a transaction block/);
});

test('a statement_timeout below a receiver\'s response time cancels no deliver job: its waits are the endpoint\'s', async () => {
	// the receiver answers in 1.5 s, the database's statement_timeout (pg_cron's sessions take it) is 1 s:
	// each run was cancelled before the answer, the item sent again every minute, then dead
	receiver.behaviour['/slowjob'] = (req, res) => setTimeout(() => res.writeHead(200).end('ok'), 1500);
	endpoint('slowjob', '/slowjob');
	paid('pi_slowjob');
	const env = { ...process.env, PGOPTIONS: '-c statement_timeout=1s' };
	const psql = (...commands) => promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1',
		'-h', db.dir, '-p', String(db.port), '-U', 'postgres', '-d', 'payments', ...commands.flatMap((c) => ['-c', c])],
	{ env });
	await psql(`CALL payments.run_job('deliver')`);
	assert.deepEqual(items('slowjob'), ['delivered|1|200']);
	assert.equal(receiver.to('/slowjob').length, 1);
	// the job's statements stay under the timeout: recording the answer is held to it, from the answer
	db.psql(`CREATE FUNCTION slow_record() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN IF current_setting('application_name') = 'slow-record' THEN PERFORM pg_sleep(1.5); END IF;
			RETURN NEW; END$$;
		CREATE TRIGGER slow_record BEFORE UPDATE ON payments.outbox_attempts FOR EACH ROW EXECUTE FUNCTION slow_record();`);
	paid('pi_slowjob2');
	try {
		await assert.rejects(psql(`SET application_name = 'slow-record'`, `CALL payments.run_job('deliver')`),
			/canceling statement due to statement timeout/);
	} finally {
		db.psql(`DROP TRIGGER slow_record ON payments.outbox_attempts; DROP FUNCTION slow_record()`);
	}
	assert.deepEqual(items('slowjob'), ['delivered|1|200', 'pending|1|-']);
	db.psql(`SELECT payments.enable_endpoint('slowjob', false)`);
	// a run ends the exemption: a CALL by hand after it, in the same session, is held to the timeout
	receiver.behaviour['/slowhand'] = receiver.behaviour['/slowjob'];
	endpoint('slowhand', '/slowhand');
	paid('pi_slowjob3');
	await assert.rejects(psql(`CALL payments.run_job('retry')`, `CALL payments.deliver_outbox()`),
		/canceling statement due to statement timeout/);
	assert.deepEqual(items('slowhand'), ['pending|1|-']);
	db.psql(`SELECT payments.enable_endpoint('slowhand', false)`);
	// so does a run that failed in a subtransaction, its error caught: a CALL after it is held to the timeout
	receiver.behaviour['/slowcaught'] = receiver.behaviour['/slowjob'];
	endpoint('slowcaught', '/slowcaught');
	paid('pi_slowjob4');
	await assert.rejects(psql(`DO $$ BEGIN CALL payments.run_job('deliver', 1);
		EXCEPTION WHEN invalid_transaction_termination THEN RAISE NOTICE 'caught: %', SQLERRM; END $$`,
	`CALL payments.deliver_outbox()`), /canceling statement due to statement timeout/);
	assert.deepEqual(items('slowcaught'), ['pending|1|-']);
	db.psql(`SELECT payments.enable_endpoint('slowcaught', false)`);
});

test('a result that cannot be recorded in a cancelled run: the cancel is still honoured, and the next ones too', async () => {
	receiver.behaviour['/hang3'] = () => { /* never answers */ };
	endpoint('hang3', '/hang3', `, timeout_ms => 30000`);
	endpoint('quick3', '/quick3');
	paid('pi_cancel3');
	const failing = db.psql(`SELECT o.id FROM payments.outbox o JOIN payments.endpoints e ON e.id = o.endpoint_id
		WHERE e.name = 'quick3'`);
	const recordingWorks = failRecording(failing);
	let stderr = '';
	const started = Date.now();
	try {
		// one session: the cancelled run, then a sleep that the same statement_timeout must cancel
		await promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
			'-d', 'payments', '-c', 'SET statement_timeout = 500', '-c', 'CALL payments.deliver_outbox()',
			'-c', 'SELECT pg_sleep(30)']).then((r) => { stderr = r.stderr; }, (e) => { stderr = e.stderr; });
	} finally {
		recordingWorks();
	}
	assert.match(stderr, new RegExp(`could not record the result of outbox item ${failing}`));
	assert.equal(stderr.match(/canceling statement due to statement timeout/g)?.length, 2, stderr);
	// (a cancel not honoured would take the 30 s of the sleep or of hang3's timeout: 10 s is far from it)
	assert.ok(Date.now() - started < 10000, `took ${Date.now() - started} ms`);
	db.psql(`SELECT payments.enable_endpoint('hang3', false); SELECT payments.enable_endpoint('quick3', false)`);
});

test('a cancelled run records what was answered for 1.5 s at most, a second per lock: the rest is left to its leases', async () => {
	receiver.behaviour['/hang4'] = () => { /* never answers */ };
	endpoint('hang4', '/hang4', `, timeout_ms => 30000`);
	endpoint('quick4', '/quick4');
	for (let i = 1; i <= 5; i++) paid(`pi_cancel4_${i}`);
	// a transaction holding the row that recording quick4's answer updates (an admin's, say), for 25 s
	const lock = await holdLock(db, `SELECT FROM payments.endpoints WHERE name = 'quick4' FOR NO KEY UPDATE`);
	const releaseLater = setTimeout(() => lock.release(), 25000);
	let stderr = '';
	const started = Date.now();
	try {
		await promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
			'-d', 'payments', '-c', 'SET statement_timeout = 500', '-c', 'CALL payments.deliver_outbox()'])
			.then((r) => { stderr = r.stderr; }, (e) => { stderr = e.stderr; });
	} finally {
		clearTimeout(releaseLater);
		await lock.release();
	}
	const took = Date.now() - started;
	// the first result waits a second for the lock; the second is stopped by the time up, which
	// ends the recording (five results waited a second each before): the statement timeout's error
	assert.equal(stderr.match(/could not record the result of outbox item \d+: canceling statement due to lock timeout/g)?.length, 1, stderr);
	assert.match(stderr, /ERROR:  canceling statement due to statement timeout/);
	// (about 1.5 s; waiting for the lock would take its 25 s: 10 s is far from both)
	assert.ok(took < 10000, `took ${took} ms: it waited for the lock`);
	assert.equal(receiver.to('/quick4').length, 5);
	assert.deepEqual(items('quick4'), Array(5).fill('pending|1|-'), 'sent again when their leases end');
	db.psql(`SELECT payments.enable_endpoint('hang4', false); SELECT payments.enable_endpoint('quick4', false)`);
});

test('a run cancelled while it records its results keeps those recorded before the cancel', async () => {
	endpoint('quick5a', '/quick5a');
	endpoint('quick5b', '/quick5b');
	paid('pi_cancel5');
	// both answer at once; recording quick5b's answer waits for a lock until the statement times out
	const lock = await holdLock(db, `SELECT FROM payments.endpoints WHERE name = 'quick5b' FOR NO KEY UPDATE`);
	const releaseLater = setTimeout(() => lock.release(), 8000);
	let stderr = '';
	try {
		await promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
			'-d', 'payments', '-c', 'SET statement_timeout = 2000', '-c', 'CALL payments.deliver_outbox()'])
			.then((r) => { stderr = r.stderr; }, (e) => { stderr = e.stderr; });
	} finally {
		clearTimeout(releaseLater);
		await lock.release();
	}
	assert.match(stderr, /canceling statement due to statement timeout/);
	assert.equal(receiver.to('/quick5a').length, 1);
	assert.equal(receiver.to('/quick5b').length, 1);
	// the answer recorded before the cancel is kept: that receiver is not sent the item again
	assert.deepEqual(items('quick5a'), ['delivered|1|200']);
	assert.deepEqual(items('quick5b'), ['pending|1|-'], 'sent again when its lease ends');
	db.psql(`SELECT payments.enable_endpoint('quick5a', false); SELECT payments.enable_endpoint('quick5b', false)`);
});

test('kill -9 while deliveries are in flight: after restart every item is delivered, none lost', async () => {
	receiver.behaviour['/crash'] = (req, res) => setTimeout(() => res.writeHead(200).end(), 1500);
	endpoint('crash', '/crash', `, connect_timeout_ms => 500, timeout_ms => 2500`);
	for (let i = 1; i <= 8; i++) paid(`pi_crash${i}`);
	const queued = db.psql(`SELECT o.msg_id FROM payments.outbox o JOIN payments.endpoints e ON e.id = o.endpoint_id
		WHERE e.name = 'crash' ORDER BY o.id`).split('\n');
	assert.equal(queued.length, 8);
	const call = spawn(join(PG_BIN, 'psql'), ['-X', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
		'-d', 'payments', '-c', 'CALL payments.deliver_outbox(5)'], { stdio: 'ignore' });
	const exited = new Promise((resolve) => call.once('exit', resolve));
	for (let i = 0; i < 100 && receiver.to('/crash').length === 0; i++) await sleep(50);
	assert.ok(receiver.to('/crash').length > 0, 'deliveries are in flight');
	const postmaster = Number(readFileSync(join(db.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
	const children = execFileSync('pgrep', ['-P', String(postmaster)], { encoding: 'utf8' }).trim().split('\n').map(Number);
	process.kill(postmaster, 'SIGKILL');
	for (const pid of children) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
	await exited;
	for (let i = 0; i < 100; i++) {
		const alive = children.concat(postmaster).filter((pid) => { try { process.kill(pid, 0); return true; } catch { return false; } });
		if (alive.length === 0) break;
		await sleep(100);
	}
	db.start();
	// nothing recorded as delivered; the claimed items are leased, then due again
	assert.equal(items('crash').filter((s) => s.startsWith('delivered')).length, 0);
	const leaseEnds = Number(db.psql(`SELECT ceil(extract(epoch FROM max(o.next_attempt_at) - now())) FROM payments.outbox o
		JOIN payments.endpoints e ON e.id = o.endpoint_id WHERE e.name = 'crash'`));
	assert.ok(leaseEnds > 0 && leaseEnds <= 14, `lease ends in ${leaseEnds} s`);
	await sleep(leaseEnds * 1000 + 500);
	await deliver();
	await deliver();
	assert.equal(items('crash').filter((s) => s.startsWith('delivered')).length, 8);
	const received = new Set(receiver.to('/crash').map((d) => d.id));
	for (const id of queued) assert.ok(received.has(id), `${id} delivered`);
	assert.equal(db.psql(`SELECT count(*) FROM payments.outbox_attempts a JOIN payments.endpoints e ON e.id = a.endpoint_id
		WHERE e.name = 'crash' AND a.error LIKE 'interrupted%'`), '5');
	assert.equal(receiver.invalid, 0);
});

test('a result that cannot be recorded loses only itself: the others of the batch are recorded', async () => {
	endpoint('rec-a', '/rec-a');
	endpoint('rec-b', '/rec-b');
	assert.equal(paid('pi_rec1'), 'applied');
	const failing = db.psql(`SELECT o.id FROM payments.outbox o JOIN payments.endpoints e ON e.id = o.endpoint_id
		WHERE e.name = 'rec-a'`);
	// recording the rec-a item's result fails (as a deadlock with a concurrent claim would)
	const recordingWorks = failRecording(failing);
	try {
		const { stderr } = await promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-h', db.dir, '-p', String(db.port), '-U', 'postgres', '-d', 'payments', '-c', 'CALL payments.deliver_outbox(100)']);
		assert.match(stderr, new RegExp(`WARNING:  could not record the result of outbox item ${failing}: recording refused for the test`));
	} finally {
		recordingWorks();
	}
	assert.equal(receiver.to('/rec-a').length, 1);
	assert.equal(receiver.to('/rec-b').length, 1);
	assert.deepEqual(items('rec-b'), ['delivered|1|200']);
	// sent, its result unknown to the database: leased, it is sent again when the lease ends
	assert.deepEqual(items('rec-a'), ['pending|1|-']);
	assert.equal(db.psql(`SELECT count(*) FROM payments.outbox_attempts WHERE outbox_id = ${failing} AND finished_at IS NULL`), '1');
	db.psql(`SELECT payments.enable_endpoint('rec-a', false); SELECT payments.enable_endpoint('rec-b', false)`);
});

test('views: backlog, oldest due item, endpoint health', async () => {
	const backlog = db.psql(`SELECT endpoint || '|' || pending || '|' || dead FROM payments.outbox_backlog WHERE endpoint IN ('err', 'gone') ORDER BY 1`);
	assert.equal(backlog, 'err|0|1\ngone|0|0');
	// the oldest due item: four items of one endpoint, two of them due long ago, one due even
	// earlier but delivered, one dead
	endpoint('oldest', '/oldest');
	for (let i = 1; i <= 4; i++) paid(`pi_oldest${i}`);
	const ids = db.psql(`SELECT o.id FROM payments.outbox o JOIN payments.endpoints e ON e.id = o.endpoint_id
		WHERE e.name = 'oldest' ORDER BY o.id`).split('\n');
	assert.equal(ids.length, 4);
	db.psqlVars(`UPDATE payments.outbox SET state = 'delivered', next_attempt_at = '1999-01-01 00:00+00' WHERE id = :'a';
		UPDATE payments.outbox SET next_attempt_at = '2000-01-02 00:00+00', attempts = 2, last_status = 503,
			last_error = 'HTTP 503' WHERE id = :'b';
		UPDATE payments.outbox SET next_attempt_at = '2000-01-01 00:00+00', attempts = 1, last_status = 429,
			last_error = 'HTTP 429' WHERE id = :'c';
		UPDATE payments.outbox SET state = 'dead', next_attempt_at = '1998-01-01 00:00+00' WHERE id = :'d';`,
	{ a: ids[0], b: ids[1], c: ids[2], d: ids[3] });
	const oldestDue = () => db.psql(`SET TIME ZONE 'UTC'; SELECT id || '|' || endpoint || '|' || event_type || '|' || attempts || '|' ||
		next_attempt_at || '|' || last_status || '|' || last_error || '|' || (age = now() - created_at AND age < interval '1 hour')
		FROM payments.outbox_oldest_due`);
	assert.equal(oldestDue(), `${ids[2]}|oldest|payment.paid|1|2000-01-01 00:00:00+00|429|HTTP 429|true`);
	// once that one is no longer due, the next; between two due at the same time, the first queued
	db.psqlVars(`UPDATE payments.outbox SET next_attempt_at = now() + interval '1 hour' WHERE id = :'c'`, { c: ids[2] });
	assert.equal(oldestDue(), `${ids[1]}|oldest|payment.paid|2|2000-01-02 00:00:00+00|503|HTTP 503|true`);
	db.psqlVars(`UPDATE payments.outbox SET next_attempt_at = '2000-01-02 00:00+00' WHERE id = :'c'`, { c: ids[2] });
	assert.equal(oldestDue(), `${ids[1]}|oldest|payment.paid|2|2000-01-02 00:00:00+00|503|HTTP 503|true`);
	db.psql(`SELECT payments.enable_endpoint('oldest', false)`);
	assert.equal(db.psql(`SELECT enabled || '|' || delivered_1h FROM payments.endpoint_health WHERE name = 'ok'`), 'false|1');
});

test('the jobs call payments only while the extension is there; its schema is one it made', async () => {
	// A superuser runs the jobs, which outlive DROP EXTENSION.  Whoever may create a schema
	// called payments afterwards must not have its procedures run by them.
	db.psql(`CREATE DATABASE guard`, 'postgres');
	db.psql(`CREATE EXTENSION payments`, 'guard');
	const retry = db.psql(`SELECT command FROM payments.cron_jobs() WHERE jobname LIKE 'payments-retry@%'`, 'guard');
	db.psql(`CREATE ROLE mallory LOGIN; GRANT CREATE ON DATABASE guard TO mallory`, 'postgres');
	const plant = `SET ROLE mallory; CREATE SCHEMA payments;
		CREATE PROCEDURE payments.run_job(job text, max_items integer DEFAULT 100) LANGUAGE plpgsql
		AS $$BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; END$$;`;
	const superuser = () => db.psql(`SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'`, 'postgres');
	assert.equal(db.psql(retry, 'guard'), '');	// the job with the extension there: runs retry_events
	db.psql(`DROP EXTENSION payments; DROP SCHEMA payments`, 'guard');
	db.psql(plant, 'guard');
	assert.equal(db.psql(retry, 'guard'), '');
	assert.equal(superuser(), 'f', 'the job called a procedure of a schema made after DROP EXTENSION');
	// (the command as it was, unguarded, would have)
	db.psql(`CALL payments.run_job('retry')`, 'guard');
	assert.equal(superuser(), 't');
	db.psql(`ALTER ROLE mallory NOSUPERUSER`, 'postgres');

	// CREATE EXTENSION refuses a schema payments it did not make: of another role, with objects, with grants
	assert.throws(() => db.psql(`CREATE EXTENSION payments`, 'guard'),
		/schema "payments" exists already, of an owner who is not a superuser/);
	db.psql(`DROP SCHEMA payments CASCADE`, 'guard');
	db.psql(`SET ROLE mallory; CREATE SCHEMA payments`, 'guard');
	assert.throws(() => db.psql(`CREATE EXTENSION payments`, 'guard'), /exists already, of an owner who is not a superuser/);
	db.psql(`DROP SCHEMA payments; CREATE SCHEMA payments; CREATE TABLE payments.mine (x int)`, 'guard');
	assert.throws(() => db.psql(`CREATE EXTENSION payments`, 'guard'), /exists already, with objects/);
	db.psql(`DROP SCHEMA payments CASCADE; CREATE SCHEMA payments; GRANT CREATE ON SCHEMA payments TO mallory`, 'guard');
	assert.throws(() => db.psql(`CREATE EXTENSION payments`, 'guard'), /schema "payments" grants CREATE to mallory/);
	db.psql(`REVOKE CREATE ON SCHEMA payments FROM mallory; GRANT CREATE ON SCHEMA payments TO PUBLIC`, 'guard');
	assert.throws(() => db.psql(`CREATE EXTENSION payments`, 'guard'), /schema "payments" grants CREATE to PUBLIC/);
	db.psql(`REVOKE CREATE ON SCHEMA payments FROM PUBLIC`, 'guard');
	// default privileges that grant CREATE on new schemas: the same, and the hint says where it came from
	db.psql(`DROP SCHEMA payments; ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT CREATE ON SCHEMAS TO mallory`, 'guard');
	assert.throws(() => db.psql(`CREATE EXTENSION payments`, 'guard'),
		/schema "payments" grants CREATE to mallory[^]*HINT:  Default privileges on schemas give it to new ones/);
	db.psql(`ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE CREATE ON SCHEMAS FROM mallory`, 'guard');
	// an empty schema of a superuser (as pg_restore makes it), USAGE granted at most, is taken: so is
	// the one CREATE EXTENSION makes where default privileges grant USAGE on new schemas
	db.psql(`CREATE SCHEMA payments; GRANT USAGE ON SCHEMA payments TO mallory`, 'guard');
	db.psql(`CREATE EXTENSION payments`, 'guard');
	assert.equal(db.psql(`SELECT payments.receipt_day('2024-06-10 12:00+00') IS NOT NULL`, 'guard'), 't');
	db.psql(`DROP EXTENSION payments; DROP SCHEMA payments;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON SCHEMAS TO mallory`, 'guard');
	db.psql(`CREATE EXTENSION payments`, 'guard');
	db.psql(`ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE USAGE ON SCHEMAS FROM mallory`, 'guard');
});

test('default privileges of the role creating the extension: no other role reads its tables, analysts keep their reports', async () => {
	// a common set-up: a read-only role given every new table, and EXECUTE taken from PUBLIC
	db.psql(`CREATE DATABASE hardened`, 'postgres');
	db.psql(`CREATE ROLE reader LOGIN; CREATE ROLE analyst_one LOGIN IN ROLE payments_analyst;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON SCHEMAS TO reader;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO reader;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT, USAGE ON SEQUENCES TO reader;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT EXECUTE ON FUNCTIONS TO reader;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO PUBLIC;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
		CREATE EXTENSION payments;
		SELECT payments.register_provider('shop', 'stripe');
		SELECT payments.add_secret('shop', 'whsec_hardened');`, 'hardened');
	const as = (role, sql) => db.psql(`SET ROLE ${role}; ${sql}`, 'hardened');
	for (const sql of ['SELECT * FROM payments.secrets', 'SELECT * FROM payments.providers',
		"SELECT payments.receipt_day('2024-06-10 12:00+00')"]) {
		assert.throws(() => as('reader', sql), /permission denied for schema payments/);
	}
	assert.equal(db.psql(`SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
		WHERE c.relnamespace = 'payments'::regnamespace AND a.grantee IN (0, 'reader'::regrole)`, 'hardened'), '0');
	// the analysts' views and functions, whose helpers PUBLIC no longer executes
	for (const sql of ['SELECT count(*) FROM payments.donor_summary', 'SELECT count(*) FROM payments.daily_summary',
		// its columns read (count(*) alone reads none): the masked number calls its helpers
		"SELECT count(phone) FROM payments.volunteer_list", 'SELECT count(*) FROM payments.base_totals(now() - interval \'1 day\', now())',
		'SELECT count(*) FROM payments.daily_report_csv(current_date)',
		"SELECT count(*) FROM payments.top_donors(now() - interval '1 day', now(), 'USD', 10)",
		// the day edges README tells analysts to pass, as daily_report and receipt numbers count days
		"SELECT count(*) FROM payments.currency_summary(payments.day_start('2024-06-01'), payments.day_start('2024-07-01'))",
		"SELECT count(payments.receipt_local_time(now()))"]) {
		assert.match(as('analyst_one', sql), /^\d+$/, sql);
	}
	assert.throws(() => as('analyst_one', 'SELECT * FROM payments.secrets'), /permission denied for table secrets/);
	// default privileges that name a payments role would give it every table: refused
	db.psql(`DROP EXTENSION payments; DROP SCHEMA payments;
		ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO payments_analyst`, 'hardened');
	assert.throws(() => db.psql(`CREATE EXTENSION payments`, 'hardened'),
		/default privileges of role postgres grant to payments_analyst/);
	db.psql(`ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE SELECT ON TABLES FROM payments_analyst`, 'hardened');
	db.psql(`DROP DATABASE hardened`, 'postgres');
	db.psql(`DROP ROLE reader; DROP ROLE analyst_one`, 'postgres');
});

test('a job lock held by a role that cannot run the jobs stops none; one held by a run skips the job', async () => {
	// anyone may take an advisory lock: lockhog, who may do nothing else here
	const key = db.psql(`SELECT payments.job_lock_key('deliver')`);
	db.psql(`CREATE ROLE lockhog LOGIN`, 'postgres');
	endpoint('hog', '/hog');
	const job = async () => (await promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir,
		'-p', String(db.port), '-U', 'postgres', '-d', 'payments', '-c', "CALL payments.run_job('deliver')"])).stderr;
	paid('pi_hog1');
	const hog = await holdLock(db, `SELECT pg_advisory_lock(1885436269, ${key})`, 'lockhog');
	try {
		assert.match(await job(),
			/WARNING:  payments job deliver: its lock is held by backend \d+, which cannot run it: running all the same/);
		assert.equal(receiver.to('/hog').length, 1);
	} finally {
		await hog.release();
	}
	// a lock kept by a prepared transaction has no backend: no run holds it.  Advisory locks are
	// per database: a session of another database holding the same key (a run of its own job) is
	// no holder here, and hides nothing (it was named as the run still going, the job skipped)
	paid('pi_hog_prepared');
	const elsewhere = await holdLock(db, `SELECT pg_advisory_lock(1885436269, ${key})`, 'postgres', 'postgres');
	db.psql(`BEGIN; SELECT pg_advisory_xact_lock(1885436269, ${key}); PREPARE TRANSACTION 'hog'`);
	try {
		assert.equal(db.psql(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid IS NULL
			AND classid = 1885436269 AND objid = ${key} AND objsubid = 2`), '1');
		assert.match(await job(),
			/WARNING:  payments job deliver: its lock is held by a prepared transaction, which cannot run it: running all the same/);
		assert.equal(receiver.to('/hog').length, 2);
	} finally {
		db.psql(`ROLLBACK PREPARED 'hog'`);
		await elsewhere.release();
	}
	paid('pi_hog2');
	const run = await holdLock(db, `SELECT pg_advisory_lock(1885436269, ${key})`);
	try {
		assert.match(await job(), /NOTICE:  payments job deliver skipped: the previous run is still going \(backend \d+\)/);
		assert.equal(receiver.to('/hog').length, 2);
		// skipped inside a transaction block: the caller's search_path is as it was
		assert.equal(db.psql(`BEGIN; SET LOCAL search_path = public, pg_temp; SET LOCAL client_min_messages = warning;
			CALL payments.run_job('deliver'); SHOW search_path; COMMIT;`), 'public, pg_temp');
	} finally {
		await run.release();
	}
	assert.equal(await job(), '');
	assert.equal(receiver.to('/hog').length, 3);
	db.psql(`SELECT payments.enable_endpoint('hog', false)`);
	db.psql(`DROP ROLE lockhog`, 'postgres');
});

test('run_job keeps its path pinned after the procedures it calls commit', async () => {
	// an operator first on the path (placed before pg_catalog) would be chosen by the chat loop's
	// own test of the WhatsApp settings, which runs after initiate_payments and deliver_outbox
	// have committed; a meta provider without an access token ends the loop at once
	db.psql(`CREATE SCHEMA hijack;
		CREATE FUNCTION hijack.has(jsonb, text) RETURNS boolean LANGUAGE plpgsql AS
			$$ BEGIN RAISE EXCEPTION 'hijacked by % ?', current_user; END $$;
		CREATE OPERATOR hijack.? (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = hijack.has);
		SELECT payments.register_provider('hijack_meta', 'meta', '{"verify_token": "a-long-random-string"}');`);
	assert.throws(() => db.psql(`SET search_path = hijack, pg_catalog, public; SELECT '{}'::jsonb ? 'x'`),
		/hijacked by postgres/, 'the trap is set');
	try {
		// separate statements: a CALL that commits may not share a transaction with the SET
		execFileSync(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir, '-p', String(db.port),
			'-U', 'postgres', '-d', 'payments', '-c', 'SET search_path = hijack, pg_catalog, public',
			'-c', "CALL payments.run_job('chat')"], { stdio: 'pipe' });
	} finally {
		db.psql(`DELETE FROM payments.providers WHERE name = 'hijack_meta'; DROP SCHEMA hijack CASCADE`);
	}
});

// A payment (pending) whose paying event could not be applied: the event waits, pending, due now.
function pendingPaidEvent(ref) {
	assert.equal(stripe(db, 'payment_intent.processing', pi(ref)), 'applied');
	db.psql(`CREATE FUNCTION not_now() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN RAISE EXCEPTION 'not now, for the test'; END$$;
		CREATE TRIGGER not_now BEFORE UPDATE ON payments.payments
			FOR EACH ROW WHEN (NEW.provider_ref = '${ref}') EXECUTE FUNCTION not_now();`);
	try {
		stripe(db, 'payment_intent.succeeded', pi(ref));
	} finally {
		db.psql(`DROP TRIGGER not_now ON payments.payments; DROP FUNCTION not_now()`);
	}
	db.psql(`UPDATE payments.events SET next_attempt_at = now() - interval '1 second'
		WHERE state = 'pending' AND payload -> 'data' -> 'object' ->> 'id' = '${ref}'`);
	assert.equal(paidEventState(ref), 'pending|1');
}

// state|attempts of the event that pays ref
function paidEventState(ref) {
	return db.psql(`SELECT state || '|' || attempts FROM payments.events
		WHERE event_type = 'payment_intent.succeeded' AND payload -> 'data' -> 'object' ->> 'id' = '${ref}'`);
}

test('the jobs run at READ COMMITTED whatever the database default: a retry numbers its receipt after a concurrent payment', async () => {
	// receipt numbers are taken at commit by an UPDATE of the day's counter row; under repeatable
	// read (a database default, which pg_cron's jobs inherit) it failed with 40001 whenever another
	// transaction paid that day since the run's snapshot: the run rolled back, its records of
	// failed attempts too, and the event stayed pending for ever
	pendingPaidEvent('pi_iso1');
	assert.equal(paid('pi_iso0'), 'applied');	// the day's counter row exists
	db.psql(`ALTER DATABASE payments SET default_transaction_isolation = 'repeatable read'`, 'postgres');
	try {
		assert.equal(db.psql(`SHOW default_transaction_isolation`), 'repeatable read');
		const lock = await holdLock(db, `SELECT FROM payments.payments WHERE provider_ref = 'pi_iso1' FOR UPDATE`);
		let job;
		try {
			job = promisify(execFile)(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir,
				'-p', String(db.port), '-U', 'postgres', '-d', 'payments', '-c', "CALL payments.run_job('retry')"]);
			job.catch(() => {});	// awaited below
			// the run has its snapshot and waits for the payment's row ...
			await waitFor(() => db.psql(`SELECT count(*) FROM pg_stat_activity WHERE datname = 'payments'
				AND wait_event_type = 'Lock' AND query LIKE 'CALL payments.run_job%'`) === '1', 20000,
			'the retry run waiting for the payment');
			// ... while another payment of the same day is paid and takes the next number
			assert.equal(paid('pi_iso2'), 'applied');
		} finally {
			await lock.release();
		}
		const { stderr } = await job;
		assert.equal(stderr, '');
		assert.equal(paidEventState('pi_iso1'), 'applied|2');
		assert.equal(db.psql(`SELECT count(DISTINCT r.receipt_no) FROM payments.receipts r
			JOIN payments.payments p ON p.id = r.payment_id WHERE p.provider_ref IN ('pi_iso0', 'pi_iso1', 'pi_iso2')`), '3');
		// the functions that cannot commit refuse the level, rather than fail at their commit
		assert.throws(() => db.psql(`SELECT count(*) FROM payments.retry_events()`),
			/payments.retry_events must run at the READ COMMITTED isolation level/);
		// the procedures called by hand move to READ COMMITTED themselves
		db.psql(`CALL payments.deliver_outbox()`);
		db.psql(`CALL payments.reconcile()`);
		db.psql(`CALL payments.initiate_payments()`);
	} finally {
		db.psql(`ALTER DATABASE payments RESET default_transaction_isolation`, 'postgres');
	}
});

test('a webhook leaves only once the commit it tells of is durable, whatever synchronous_commit the database sets', async (t) => {
	// a payment.paid webhook carries a receipt number: sent before the commit that issued it was
	// flushed, a power loss would issue the number again to another donor
	endpoint('durable', '/durable');
	let flushedAtSend = null;
	receiver.behaviour['/durable'] = (req, res) => {
		flushedAtSend = db.psql(`SELECT pg_current_wal_flush_lsn()`);
		res.writeHead(200).end('ok');
	};
	pendingPaidEvent('pi_dur1');
	db.psql(`ALTER DATABASE payments SET synchronous_commit = off`, 'postgres');
	// the WAL writer flushes asynchronous commits every 10 s, and the background writer writes no
	// page (which would flush the WAL up to it first)
	db.psql(`ALTER SYSTEM SET wal_writer_delay = '10s'`, 'postgres');
	db.psql(`ALTER SYSTEM SET bgwriter_lru_maxpages = 0`, 'postgres');
	db.psql(`SELECT pg_reload_conf()`, 'postgres');
	try {
		// the retry pays it, committed asynchronously; then, in the same session, where the WAL ends
		const paidAt = db.psqlVars(`SELECT count(*) FROM payments.retry_events();
			SELECT pg_current_wal_insert_lsn();`, {}).split('\n').pop();
		assert.equal(paidEventState('pi_dur1'), 'applied|2');
		// (usually not on disk yet; but the WAL writer's round may come now, or other writes,
		// autovacuum's say, flush the WAL meanwhile)
		if (db.psqlVars(`SELECT pg_current_wal_flush_lsn() >= :'paid'::pg_lsn`, { paid: paidAt }) === 't') {
			t.diagnostic('the paying commit was flushed before the delivery run: this run proves little');
		}
		await deliver();
		assert.equal(receiver.to('/durable').length, 1);
		assert.notEqual(flushedAtSend, null);
		assert.equal(db.psqlVars(`SELECT :'flushed'::pg_lsn >= :'paid'::pg_lsn`, { flushed: flushedAtSend, paid: paidAt }),
			't', `flushed up to ${flushedAtSend} when sent, paid at ${paidAt}`);
	} finally {
		db.psql(`ALTER SYSTEM RESET wal_writer_delay`, 'postgres');
		db.psql(`ALTER SYSTEM RESET bgwriter_lru_maxpages`, 'postgres');
		db.psql(`SELECT pg_reload_conf()`, 'postgres');
		db.psql(`ALTER DATABASE payments RESET synchronous_commit`, 'postgres');
		db.psql(`SELECT payments.enable_endpoint('durable', false)`);
	}
});

test('CREATE EXTENSION in two databases at once: the second takes the group roles the first made', async () => {
	const fresh = new Cluster();
	await fresh.init();
	try {
		// a cluster without the roles yet
		fresh.psql(`DROP EXTENSION payments; DROP SCHEMA payments;
			DROP ROLE payments_admin; DROP ROLE payments_ingest; DROP ROLE payments_analyst;`);
		fresh.psql(`CREATE DATABASE one`, 'postgres');
		fresh.psql(`CREATE DATABASE two`, 'postgres');
		const psqlArgs = (dbname, sql) => ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', fresh.dir,
			'-p', String(fresh.port), '-U', 'postgres', '-d', dbname, '-c', sql];
		const run = promisify(execFile);
		// the first creates the roles and holds its transaction open; the second waits on them
		const first = run(join(PG_BIN, 'psql'),
			psqlArgs('one', 'BEGIN; CREATE EXTENSION payments; SELECT pg_sleep(3); COMMIT;'));
		await waitFor(() => inPgSleep(fresh, 'one'), 20000, 'the first CREATE EXTENSION in its transaction');
		const second = run(join(PG_BIN, 'psql'),
			psqlArgs('two', 'CREATE EXTENSION payments'));
		await Promise.all([first, second]);
		assert.equal(fresh.psql(`SELECT count(*) FROM pg_roles WHERE rolname LIKE 'payments\\_%'`), '3');
		assert.equal(fresh.psql(`SELECT extversion FROM pg_extension WHERE extname = 'payments'`, 'two'), '0.1.0');
	} finally {
		fresh.destroy();
	}
});

test('scheduling: clear errors without pg_cron or in another database; jobs run under pg_cron', async () => {
	db.psql(`CREATE DATABASE other`, 'postgres');
	db.psql(`CREATE EXTENSION payments`, 'other');
	assert.throws(() => db.psql(`SELECT payments.schedule_jobs()`, 'other'), /pg_cron runs in database "payments", not in "other"/);
	// what to run there removes, too, the jobs this call has none of (a NULL schedule; run details kept for ever)
	assert.throws(() => db.psql(`SELECT payments.schedule_jobs(retry_schedule => NULL, keep_run_details => NULL)`, 'other'),
		/SELECT cron\.unschedule\(j\.jobid\) FROM cron\.job j WHERE j\.jobname IN \('payments-housekeeping@other', 'payments-retry@other'\);/);
	const jobs = db.psql(`SELECT jobname || '|' || database FROM payments.cron_jobs() ORDER BY 1`, 'other');
	assert.equal(jobs, 'payments-chat@other|other\npayments-deliver@other|other\npayments-housekeeping@other|payments\n' +
		'payments-prune@other|other\npayments-reconcile@other|other\npayments-retry@other|other');
	db.psql(`DROP EXTENSION pg_cron`);
	assert.throws(() => db.psql(`SELECT payments.schedule_jobs()`), /pg_cron is not installed/);
	// a server that no longer loads pg_cron, its cron.database_name left in the configuration
	db.psql(`ALTER SYSTEM RESET shared_preload_libraries`, 'postgres');
	db.stop();
	db.start();
	assert.equal(db.psql(`SELECT current_setting('cron.database_name', true)`), 'payments');
	assert.throws(() => db.psql(`SELECT payments.schedule_jobs()`), /pg_cron is not loaded/);
	assert.throws(() => db.psql(`SELECT payments.schedule_jobs()`, 'other'), /pg_cron is not loaded/);
	db.psql(`ALTER SYSTEM RESET cron.database_name`, 'postgres');
	db.stop();
	db.start();
	assert.throws(() => db.psql(`SELECT payments.schedule_jobs()`), /pg_cron is not loaded/);

	// the jobs scheduled at the start in the second cluster: wait (once) for pg_cron to run them
	assert.equal(cron.psql(`SELECT string_agg(jobname, ',' ORDER BY jobname) FROM cron.job`),
		'payments-chat@payments,payments-deliver@payments,payments-housekeeping@payments,payments-prune@payments,' +
		'payments-reconcile@payments,payments-retry@payments');
	let runs = '';
	// (the first run comes at the next minute; a second minute is a loaded machine's margin, and
	// costs nothing when the runs are in)
	const deadline = cronScheduledAt + 135000;
	while (Date.now() < deadline) {
		runs = cron.psql(`SELECT string_agg(DISTINCT j.jobname || ':' || d.status, ',') FROM cron.job_run_details d
			JOIN cron.job j USING (jobid) WHERE d.status IN ('succeeded', 'failed')`);
		if (runs.includes('retry') && runs.includes('deliver') && runs.includes('reconcile') && runs.includes('chat')) break;
		await sleep(1000);
	}
	assert.equal(runs, 'payments-chat@payments:succeeded,payments-deliver@payments:succeeded,' +
		'payments-reconcile@payments:succeeded,' +
		'payments-retry@payments:succeeded');
	// the prune job's command (it runs daily), run here as pg_cron would run it
	const prune = cron.psql(`SELECT command FROM cron.job WHERE jobname = 'payments-prune@payments'`);
	assert.match(prune,
		/PERFORM payments\.prune_rejections\('[^']*90 days'\), payments\.prune_outbox\('[^']*90 days'\); END IF/);
	cron.psql(`SELECT payments.register_provider('pruned', 'stripe');
		INSERT INTO payments.rejections (provider, received_at, outcome, reason, headers, body_sha256, body_size)
		VALUES ('pruned', now() - interval '100 days', 'rejected', 'old', '{}', '\\x00', 0),
			   ('pruned', now() - interval '1 day', 'rejected', 'recent', '{}', '\\x00', 0);
		SELECT payments.add_endpoint('pruned', 'https://pruned.example/hooks', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
		SELECT payments.enable_endpoint('pruned', false);
		INSERT INTO payments.outbox (endpoint_id, event_type, payload, state, created_at, delivered_at)
		SELECT e.id, 'payment.paid', jsonb_build_object('age', a), 'delivered', now() - a * interval '1 day', now() - a * interval '1 day'
		  FROM payments.endpoints e, (VALUES (100), (1)) AS x (a) WHERE e.name = 'pruned';`);
	// the prune takes no lock a role with no right on payments could hold (the advisory lock it took
	// once, a constant, made it do nothing while anyone held it)
	cron.psql(`CREATE ROLE zz_squatter LOGIN`);
	const squatter = await holdLock(cron, `SELECT pg_advisory_xact_lock(1885436269, 6), pg_advisory_xact_lock(1885436269, 3)`,
		'zz_squatter');
	try {
		assert.equal(cron.psql(prune), '');
	} finally {
		await squatter.release();
	}
	assert.equal(cron.psql(`SELECT string_agg(reason, ',') FROM payments.rejections WHERE provider = 'pruned'`), 'recent');
	// and the outbox's finished items, the endpoint's watermark set
	assert.equal(cron.psql(`SELECT string_agg(o.payload ->> 'age', ',') || '|' || (e.pruned_before < now() - interval '89 days')
		FROM payments.endpoints e JOIN payments.outbox o ON o.endpoint_id = e.id WHERE e.name = 'pruned' GROUP BY e.id`), '1|true');
	cron.psql(`DELETE FROM payments.endpoints WHERE name = 'pruned'`);
	// rejections kept for ever from now on: the prune job stays for the outbox; with the outbox
	// kept for ever too, it goes
	assert.equal(cron.psql(`SELECT count(*) FROM payments.schedule_jobs(keep_rejections => NULL)`), '6');
	assert.match(cron.psql(`SELECT command FROM cron.job WHERE jobname = 'payments-prune@payments'`),
		/THEN PERFORM payments\.prune_outbox\('[^']*90 days'\); END IF/);
	assert.equal(cron.psql(`SELECT count(*) FROM payments.schedule_jobs(keep_rejections => NULL, keep_outbox => NULL)`), '5');
	assert.equal(cron.psql(`SELECT count(*) FROM cron.job WHERE jobname LIKE 'payments-prune@%'`), '0');
	// the jobs of a database dropped (or renamed) since fail every minute: they go too
	cron.psql(`CREATE DATABASE gone`, 'postgres');
	cron.psql(`SELECT cron.schedule_in_database('payments-retry@gone', '* * * * *', 'SELECT 1', 'gone')`);
	cron.psql(`DROP DATABASE gone`, 'postgres');
	assert.equal(cron.psql(`SELECT payments.unschedule_jobs()`), '6');
	assert.equal(cron.psql(`SELECT count(*) FROM cron.job`), '0');
});
