// WhatsApp donations end to end (issue 9): donors chat through the real shim, signed like Meta;
// replies leave through the outbox to a stand-in for the WhatsApp Cloud API, which checks the
// bearer token and the JSON of every message, and the multipart media upload of a document (its
// fields, file name and type; the CSV parsed with csv-parse); payments are initiated from the database with a
// stand-in for Paynow, which checks the request hash (official paynow package) and answers like
// Paynow, hashed with the integration key, then posts its status update to the shim.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { Cluster, Shim, post, sleep, freePort, holdLock, shimLockWaiters, waitFor } from './harness.mjs';

const { Paynow } = createRequire(import.meta.url)('paynow');
const { parse: parseCsv } = createRequire(import.meta.url)('csv-parse/sync');

const PG_BIN = process.env.PG_BIN || '/usr/lib/postgresql/15/bin';
const APP_SECRET = 'clinic_app_secret';
const TOKEN = 'EAAclinicToken123';
const NUMBER_ID = '106540352242922';
const KEYS = { pn_usd: '3E9FED89-60E1-4CE5-AB6E-6B1EB2D4F977', pn_zwg: 'b1a2c3d4-0000-4000-8000-000000000001' };
const IDS = { pn_usd: '1201', pn_zwg: '1202' };
const ADMIN = '263770000001';
let db;
let shim;
let graph;
let paynow;

// The SDK's own hash: values in order, integration key lower-cased, SHA-512, upper-case hex
const sdk = (provider) => new Paynow(IDS[provider], KEYS[provider]);
function paynowForm(provider, fields) {
	return new URLSearchParams({ ...fields, hash: sdk(provider).generateHash(fields, KEYS[provider]) }).toString();
}

// A body as Meta sends it, and its X-Hub-Signature-256; messages are timed from an hour ago (Meta
// delivers free text only within 24 hours of the donor's last message: the notices of older ones'
// donations would not be sent as text)
let seq = 0;
const T0 = Math.floor(Date.now() / 1000) - 3600;
function metaMessage(from, said, { button = false, at } = {}) {
	seq += 1;
	const m = { from, id: `wamid.IN${seq}`, timestamp: String(at ?? T0 + seq) };
	if (button) Object.assign(m, { type: 'interactive', interactive: { type: 'button_reply', button_reply: { id: said, title: said } } });
	else Object.assign(m, { type: 'text', text: { body: said } });
	return m;
}
function metaBody(value) {
	return JSON.stringify({ object: 'whatsapp_business_account', entry: [{ id: '102290129340398', changes: [{ field: 'messages',
		value: { messaging_product: 'whatsapp', metadata: { display_phone_number: '15550783881', phone_number_id: NUMBER_ID }, ...value } }] }] });
}
const sign = (body) => `sha256=${createHmac('sha256', APP_SECRET).update(body).digest('hex')}`;
async function deliverToShim(body) {
	const r = await post(shim.base, 'clinic', body, { 'x-hub-signature-256': sign(body) });
	assert.equal(r.status, 200, r.text);
	return r.json.outcome;
}
// One donor message through the shim
async function say(from, said, opts = {}) {
	const m = metaMessage(from, said, opts);
	return deliverToShim(metaBody({ contacts: [{ profile: { name: 'Tendai' }, wa_id: from }], messages: [m] }));
}

// A media upload as the Cloud API takes it (multipart/form-data: messaging_product, type, file):
// the CSV is parsed; its media id is answered, unless uploadFault says 'refuse' (400) or 'noid'
async function upload(g, req, raw, res, refuse) {
	let form;
	try {
		form = await new Response(raw, { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
	} catch { return refuse(res, 'not multipart'); }
	const file = form.get('file');
	// the document types the Cloud API takes: text/plain, PDF, the Office formats (text/csv is refused, error 100)
	const documentTypes = ['text/plain', 'application/pdf', 'application/msword', 'application/vnd.ms-excel',
		'application/vnd.ms-powerpoint', 'application/vnd.openxmlformats-officedocument.wordprocessingml.document',
		'application/vnd.openxmlformats-officedocument.presentationml.presentation',
		'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet'];
	if (form.get('messaging_product') !== 'whatsapp' || !documentTypes.includes(form.get('type'))) return refuse(res, 'upload fields');
	if (typeof file?.text !== 'function' || file.type !== form.get('type') || !/^report-\d{4}-\d{2}-\d{2}\.csv$/.test(file.name))
		return refuse(res, 'upload file');
	const text = await file.text();
	let rows;
	try { rows = parseCsv(text, { record_delimiter: '\r\n' }); } catch { return refuse(res, 'not CSV'); }
	if (g.uploadFault === 'refuse') {
		g.uploads.push('refused');
		return res.writeHead(400, { 'content-type': 'application/json' })
			.end('{"error":{"message":"(#100) Param file must be a file with one of the following types","code":100}}');
	}
	if (g.uploadFault === 'noid') {
		g.uploads.push('no id');
		return res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
	}
	const id = String(4490709327384033 + g.media.size);
	g.media.set(id, { name: file.name, rows });
	g.uploads.push(id);
	return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id }));
}

// The Cloud API stand-in: checks token, path and JSON; answers with a wamid like Meta
async function startGraph() {
	const g = { sent: [], refused: [], n: 0, statusFirst: new Set(), media: new Map(), uploads: [], uploadFault: null,
		documentFault: false };
	const refuse = (res, why) => { g.refused.push(why); res.writeHead(400, { 'content-type': 'application/json' })
		.end(JSON.stringify({ error: { message: why, type: 'OAuthException', code: 100 } })); };
	g.server = createServer((req, res) => {
		const chunks = [];
		req.on('data', (d) => { chunks.push(d); });
		req.on('end', async () => {
			const raw = Buffer.concat(chunks);
			const media = req.url === `/v21.0/${NUMBER_ID}/media`;
			if (req.method !== 'POST' || (req.url !== `/v21.0/${NUMBER_ID}/messages` && !media)) return refuse(res, `no route ${req.url}`);
			if (req.headers.authorization !== `Bearer ${TOKEN}`) {
				g.refused.push('token');
				return res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{"code":190}}');
			}
			if (media) return upload(g, req, raw, res, refuse);
			if (!/^application\/json/.test(req.headers['content-type'] ?? '')) return refuse(res, 'content-type');
			let m;
			try { m = JSON.parse(raw); } catch { return refuse(res, 'not JSON'); }
			// like Meta for a number that cannot receive (error 131026): the message itself is refused
			if (m.to === '263772000070') return refuse(res, 'undeliverable');
			// like Meta's pair rate limit (error 131056, HTTP 400 as well): the first message to this number
			if (m.to === '263772000080' && !g.throttled) {
				g.throttled = true;
				g.refused.push('throttled');
				return res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: {
					message: '(#131056) (Business Account, Consumer Account) pair rate limit hit', type: 'OAuthException',
					code: 131056, error_data: { messaging_product: 'whatsapp', details: 'Message failed to send because there '
						+ 'were too many messages sent from this phone number to the same phone number in a short period of time.' },
					fbtrace_id: 'AZ3xgN7dYc1vVbEnWzWq0pL' } }));
			}
			// a phone number is "to"; a user known by business-scoped user id alone (WhatsApp usernames:
			// the number withheld) is "recipient" (with both, Meta takes "to": never both here)
			const field = m.to !== undefined ? 'to' : 'recipient';
			const who = m.to ?? m.recipient;
			if (m.messaging_product !== 'whatsapp' || m.recipient_type !== 'individual'
				|| !(field === 'to' ? /^[1-9][0-9]{5,14}$/.test(m.to) && m.recipient === undefined
					: /^[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}$/.test(m.recipient)))
				return refuse(res, 'envelope');
			let said;
			let doc;
			if (m.type === 'text') {
				if (typeof m.text?.body !== 'string' || m.text.body.length === 0 || m.text.body.length > 4096) return refuse(res, 'text');
				said = m.text.body;
			} else if (m.type === 'interactive' && m.interactive.type === 'button') {
				const b = m.interactive.action?.buttons ?? [];
				if (b.length < 1 || b.length > 3 || b.some((x) => x.type !== 'reply' || !x.reply.id || x.reply.title.length > 20))
					return refuse(res, 'buttons');
				said = `${m.interactive.body.text} [${b.map((x) => x.reply.id).join(' ')}]`;
			} else if (m.type === 'interactive' && m.interactive.type === 'list') {
				const rows = m.interactive.action?.sections?.[0]?.rows ?? [];
				if (!m.interactive.action.button || rows.length < 1 || rows.length > 10 || rows.some((x) => !x.id || x.title.length > 24))
					return refuse(res, 'list');
				said = `${m.interactive.body.text} [${rows.map((x) => x.id).join(' ')}]`;
			} else if (m.type === 'document') {
				// a document names a media id uploaded before, with its file name
				const file = g.media.get(m.document?.id);
				if (!file || m.document.filename !== file.name || typeof m.document.caption !== 'string') return refuse(res, 'document');
				if (g.documentFault) return refuse(res, 'document refused');
				said = `[document ${m.document.filename}] ${m.document.caption}`;
				doc = file;
			} else return refuse(res, `type ${m.type}`);
			g.n += 1;
			const wamid = `wamid.OUT${g.n}`;
			g.sent.push({ to: who, field, said, wamid, doc });
			// Meta may report a status before the send call has answered
			if (g.statusFirst.has(who)) {
				await deliverToShim(metaBody({ statuses: [{ id: wamid, status: 'sent', timestamp: '1718001000',
					...(field === 'to' ? { recipient_id: who } : { recipient_user_id: who }) }] }));
			}
			res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ messaging_product: 'whatsapp',
				contacts: [{ input: who, ...(field === 'to' ? { wa_id: who } : { user_id: who }) }], messages: [{ id: wamid }] }));
		});
	});
	await new Promise((resolve) => g.server.listen(0, '127.0.0.1', resolve));
	g.base = `http://127.0.0.1:${g.server.address().port}`;
	g.to = (who) => g.sent.filter((s) => s.to === who).map((s) => s.said);
	return g;
}

// The Paynow stand-in: test-mode numbers as Paynow documents them (0771111111 pays, 0774444444 has
// no balance); 0772222222 is paid so fast that the status update arrives before the initiate reply;
// for 0775555555 the transaction is made and paid but the reply is lost (HTTP 502), and for
// 0776666666 the request never reaches it (HTTP 502 from a proxy); a web checkout of 13.13 is made
// but its reply, with the only link to pay it, is lost (HTTP 502); /interface/trace finds the
// transactions by merchant trace
async function startPaynow() {
	const p = { requests: [], refused: [], updates: [], traces: [], made: new Map(), n: 9000 };
	const statusUpdate = async (f, ref, status) => {
		const provider = f.id === IDS.pn_usd ? 'pn_usd' : 'pn_zwg';
		const body = paynowForm(provider, { reference: f.reference, paynowreference: ref, amount: f.amount, status,
			pollurl: `${p.base}/poll/${f.reference}` });
		const r = await fetch(f.resulturl, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body });
		p.updates.push(`${f.reference} ${status} ${r.status}`);
	};
	p.server = createServer((req, res) => {
		let raw = '';
		req.on('data', (d) => { raw += d; });
		req.on('end', async () => {
			const mobile = req.url === '/interface/remotetransaction';
			const provider = /(^|&)id=1201(&|$)/.test(raw) ? 'pn_usd' : 'pn_zwg';
			if (req.method === 'POST' && req.url === '/interface/trace') {
				const t = sdk(provider).parseQuery(raw);
				p.traces.push(t.merchanttrace);
				if (!sdk(provider).verifyHash(t) || Object.keys(t).join(',') !== 'id,merchanttrace,status,hash' || t.status !== 'Message') {
					p.refused.push('trace');
					return res.writeHead(200).end('status=Error&error=Invalid+request');
				}
				const made = p.made.get(t.merchanttrace);
				return res.writeHead(200).end(made ? paynowForm(provider, { reference: made.reference, paynowreference: made.ref,
					amount: made.amount, status: 'Paid', pollurl: `${p.base}/poll/${made.reference}` })
					: paynowForm(provider, { status: 'NotFound' }));
			}
			if (req.method !== 'POST' || !(mobile || req.url === '/interface/initiatetransaction')) return res.writeHead(404).end();
			const f = sdk(provider).parseQuery(raw);
			p.requests.push({ url: req.url, ...f });
			const problem = !sdk(provider).verifyHash(f) ? 'Invalid hash'
				: Object.keys(f).join(',') !== (mobile
					? 'id,reference,amount,additionalinfo,returnurl,resulturl,authemail,phone,method,merchanttrace,status,hash'
					// no authemail on the web page's request: an account's e-mail there prompts the payer
					// to log in to it (Paynow's initiate_transaction docs)
					: 'id,reference,amount,additionalinfo,returnurl,resulturl,merchanttrace,status,hash') ? `fields ${Object.keys(f)}`
				: f.status !== 'Message' || !/^\d+\.\d\d$/.test(f.amount) || !f.resulturl.startsWith(shim.base)
					|| f.merchanttrace !== f.reference ? 'values'
				// the methods Paynow's mobile checkout documents (no telecash)
				: mobile && (!/^07\d{8}$/.test(f.phone) || !['ecocash', 'onemoney', 'innbucks', 'paygo', 'vmc', 'zimswitch'].includes(f.method)) ? 'phone or method'
				: null;
			if (problem) {
				p.refused.push(problem);
				return res.writeHead(200).end(`status=Error&error=${encodeURIComponent(problem)}`);
			}
			if (mobile && f.phone === '0774444444') return res.writeHead(200).end('status=Error&error=Insufficient+balance');
			if (mobile && f.phone === '0776666666') return res.writeHead(502).end('Bad Gateway');
			p.n += 1;
			const ref = String(p.n);
			p.made.set(f.merchanttrace, { reference: f.reference, ref, amount: f.amount });
			if (mobile && f.phone === '0775555555') return res.writeHead(502).end('Bad Gateway');
			if (!mobile && f.amount === '13.13') return res.writeHead(502).end('Bad Gateway');
			if (mobile && f.phone === '0772222222') await statusUpdate(f, ref, 'Paid');
			if (mobile && f.phone === '0779191919') await sleep(1200);	// a slow Paynow: answered 1.2 s later
			const reply = mobile
				? { status: 'Ok', instructions: `Dial *151*2*4# and approve ${f.amount} for ${f.reference}`,
					paynowreference: ref, pollurl: `${p.base}/poll/${f.reference}` }
				: { status: 'Ok', browserurl: `${p.base}/pay/${ref}`, pollurl: `${p.base}/poll/${f.reference}` };
			res.writeHead(200, { 'content-type': 'text/html' }).end(paynowForm(provider, reply));
			if (!(mobile && f.phone === '0772222222')) setTimeout(() => statusUpdate(f, ref, 'Paid'), 50);
		});
	});
	await new Promise((resolve) => p.server.listen(0, '127.0.0.1', resolve));
	p.base = `http://127.0.0.1:${p.server.address().port}`;
	return p;
}

// Runs SQL in a psql session of its own, in the background (psql variables as name=value)
function session(sql, vars = {}) {
	return new Promise((resolve, reject) => {
		const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', db.dir, '-p', String(db.port),
			'-U', 'postgres', '-d', 'payments', ...Object.entries(vars).flatMap(([k, v]) => ['-v', `${k}=${v}`])],
		(err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve()));
		child.stdin.end(sql);
	});
}

// The background work of the chat job: initiations, then deliveries until a run sends nothing
// (a chat gets one message per run, in order)
function work() {
	return session(`CALL payments.initiate_payments(20);
			DO $$
			DECLARE
				last bigint;
			BEGIN
				LOOP
					last := (SELECT max(id) FROM payments.outbox_attempts);
					CALL payments.deliver_outbox(100);
					EXIT WHEN (SELECT max(id) FROM payments.outbox_attempts) IS NOT DISTINCT FROM last;
				END LOOP;
			END
			$$;\n`);
}
const q = (sql, vars = {}) => db.psqlVars(sql, vars);
async function until(what, check, ms = 5000) {
	const end = Date.now() + ms;
	for (;;) {
		const v = check();
		if (v) return v;
		if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
		await sleep(50);
	}
}
const lastRef = (who) => q(`SELECT p.reference FROM payments.chat_donations d JOIN payments.payments p ON p.id = d.payment_id
	WHERE d.wa_id = :'w' ORDER BY p.id DESC LIMIT 1`, { w: who });
const statusOf = (ref) => q(`SELECT status FROM payments.payments WHERE reference = :'r'`, { r: ref });
// the id of the Confirm button of the last summary queued for a donor, as the donor's tap sends it back
const confirmButton = (who) => q(`SELECT b ->> 'id' FROM payments.outbox o,
	jsonb_path_query(o.payload, '$.interactive.action.buttons[*].reply') AS b
	WHERE o.recipient = :'w' AND b ->> 'title' = 'Confirm' ORDER BY o.id DESC LIMIT 1`, { w: who });

before(async () => {
	graph = await startGraph();
	paynow = await startPaynow();
	db = new Cluster();
	await db.init();
	shim = new Shim(db.dsn);
	await shim.start();
	for (const [name, cur] of [['pn_usd', 'USD'], ['pn_zwg', 'ZWG']]) {
		db.psql(`SELECT payments.register_provider('${name}', 'paynow', '${JSON.stringify({ integration_id: IDS[name],
			result_url: `${shim.base}/webhooks/${name}`, return_url: 'https://clinic.example/thanks', auth_email: 'donations@clinic.example',
			api_base: paynow.base, currency: cur })}');
			SELECT payments.add_secret('${name}', '${KEYS[name]}');`);
	}
	db.psql(`SELECT payments.register_provider('clinic', 'meta', '${JSON.stringify({ verify_token: 'hook-7f3a', access_token: TOKEN,
		phone_number_id: NUMBER_ID, api_base: `${graph.base}/v21.0`, admin_numbers: [`+${ADMIN}`],
		paynow_providers: { USD: 'pn_usd', ZWG: 'pn_zwg' }, methods: ['ecocash', 'onemoney', 'telecash', 'card'],
		purposes: ['Maternity ward', 'Medicines'] })}');
		SELECT payments.add_secret('clinic', '${APP_SECRET}');`);
});

after(async () => {
	const exit = shim ? await shim.stop() : null;
	db?.destroy();
	graph?.server.close();
	paynow?.server.close();
	if (shim) assert.deepEqual(shim.sanitizerReports(), []);
	if (exit) assert.equal(exit.code, 0);
});

// A whole donation from the greeting to the confirmation
async function donate(who, { amount = '10', currency = 'USD', method, phone = 'phone_same' }) {
	assert.equal(await say(who, 'Hi'), 'applied');
	await say(who, 'donate', { button: true });
	await say(who, amount);
	await say(who, `cur_${currency}`, { button: true });
	await say(who, `pay_${method}`, { button: true });
	// card and TeleCash are paid on Paynow's web checkout: no number is asked for
	if (method !== 'card' && method !== 'telecash') await say(who, phone, { button: phone === 'phone_same' });
	await say(who, 'purpose_1', { button: true });
	return say(who, confirmButton(who), { button: true });
}

test('a donation in each method is initiated from the database and ends paid, with a receipt in the chat', async () => {
	const donors = { 263771111111: ['ecocash', 'USD'], 263711111111: ['onemoney', 'ZWG'], 263731111111: ['telecash', 'ZWG'],
		263781111111: ['card', 'USD'] };
	for (const [who, [method, currency]] of Object.entries(donors)) {
		// NetOne and Telecel numbers are not Paynow's test numbers: the donors type 0771111111
		await donate(who, { method, currency, amount: '12.50', phone: method === 'ecocash' || method === 'card' ? 'phone_same' : '0771111111' });
		assert.equal(statusOf(lastRef(who)), 'pending');
	}
	await work();
	for (const who of Object.keys(donors)) await until(`${who} paid`, () => statusOf(lastRef(who)) === 'paid');
	await work();
	assert.deepEqual(graph.refused, []);
	assert.deepEqual(paynow.refused, []);
	for (const [who, [method, currency]] of Object.entries(donors)) {
		const ref = lastRef(who);
		const receipt = q(`SELECT receipt_no FROM payments.payments p LEFT JOIN payments.receipts r ON r.payment_id = p.id WHERE reference = :'r'`, { r: ref });
		assert.match(receipt, /^LP-\d{8}-\d{6}$/);
		const chat = graph.to(who);
		assert.match(chat[0], /^Hello Tendai! .* \[donate check volunteer help\]$/s);
		assert.ok(chat.includes(`Thank you, Tendai! We received your donation of 12.50 ${currency} (reference ${ref}) for Maternity ward.\n` +
			`Your receipt number is ${receipt}.`), chat.join('\n'));
		assert.ok(chat.some((s) => (method === 'card' ? s.startsWith(`Please pay securely with your card here: ${paynow.base}/pay/`)
			: method === 'telecash' ? s.startsWith(`Please pay with TeleCash on Paynow's page here: ${paynow.base}/pay/`)
			: s.startsWith(`Dial *151*2*4# and approve 12.50 for ${ref}`))), chat.join('\n'));
		assert.equal(q(`SELECT method || ' ' || currency || ' ' || (metadata ->> 'pollurl') FROM payments.payments WHERE reference = :'r'`,
			{ r: ref }), `${method} ${currency} ${paynow.base}/poll/${ref}`);
	}
	// the TeleCash donor was not asked for a number, which the web checkout does not take
	assert.ok(!graph.to('263731111111').some((m) => m.startsWith('Which ')), graph.to('263731111111').join('\n'));
	assert.ok(graph.to('263731111111').includes('Thank you! We are preparing a Paynow payment link to pay 12.50 ZWG with TeleCash. '
		+ `Reference: ${lastRef('263731111111')}.`), graph.to('263731111111').join('\n'));
	assert.equal(q(`SELECT method || ' ' || coalesce(phone, '-') FROM payments.paynow_initiations WHERE method = 'telecash'`),
		'telecash -');
	// the requests Paynow received: mobile checkout with the method, card and TeleCash on the web checkout
	assert.deepEqual(paynow.requests.map((r) => `${r.url} ${r.method ?? '-'} ${r.phone ?? '-'} ${r.amount}`).sort(), [
		'/interface/initiatetransaction - - 12.50', '/interface/initiatetransaction - - 12.50',
		'/interface/remotetransaction ecocash 0771111111 12.50', '/interface/remotetransaction onemoney 0771111111 12.50']);
	assert.equal(q(`SELECT count(*) FROM payments.outbox WHERE provider = 'clinic' AND (state <> 'delivered' OR wamid IS NULL)`), '0');
	// each chat got its messages in the order they were queued
	for (const who of Object.keys(donors)) {
		assert.deepEqual(graph.sent.filter((x) => x.to === who).map((x) => x.wamid),
			q(`SELECT wamid FROM payments.outbox WHERE recipient = :'w' ORDER BY id`, { w: who }).split('\n'));
	}
});

test('a donor who changes number between a confirmed donation and its paid notice is thanked at the new number', async () => {
	const [old, now] = ['263772345601', '263772345611'];
	await donate(old, { method: 'ecocash', currency: 'USD', amount: '7.00' });
	const ref = lastRef(old);
	// the replies so far reach the old number; the Paynow request is not sent yet
	await session(`DO $$ DECLARE last bigint; BEGIN LOOP last := (SELECT max(id) FROM payments.outbox_attempts);
		CALL payments.deliver_outbox(100); EXIT WHEN (SELECT max(id) FROM payments.outbox_attempts) IS NOT DISTINCT FROM last;
		END LOOP; END $$;\n`);
	assert.ok(graph.to(old).some((m) => m.includes(ref)), graph.to(old).join('\n'));
	// Meta's notice, as it sends it: from the old number, no contacts array
	assert.equal(await deliverToShim(numberChange(old, now)), 'applied');
	await work();
	await until(`${ref} paid`, () => statusOf(ref) === 'paid');
	await work();
	const receipt = q(`SELECT receipt_no FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id WHERE reference = :'r'`, { r: ref });
	assert.ok(graph.to(now).includes(`Thank you, Tendai! We received your donation of 7.00 USD (reference ${ref}) for Maternity ward.\n`
		+ `Your receipt number is ${receipt}.`), graph.to(now).join('\n'));
	assert.ok(graph.to(now).some((m) => m.startsWith(`Dial *151*2*4# and approve 7.00 for ${ref}`)), graph.to(now).join('\n'));
	assert.ok(!graph.to(old).some((m) => m.includes('receipt number') || m.startsWith('Dial ')), graph.to(old).join('\n'));
	// *check* from the new number finds it
	assert.equal(await say(now, 'check'), 'applied');
	await work();
	assert.ok(graph.to(now).at(-1).includes(receipt), graph.to(now).join('\n'));
	assert.deepEqual(graph.refused, []);
});

// Meta's notice that `old` changed number to `now`, as it sends it
function numberChange(old, now) {
	seq += 1;
	return metaBody({ messages: [{ from: old, id: `wamid.IN${seq}`, timestamp: String(T0 + seq),
		type: 'system', system: { body: `User Tendai changed from ${old} to ${now}`, wa_id: now, type: 'user_changed_number' } }] });
}

test('edit and cancel paths, invalid amounts', async () => {
	const who = '263772000010';
	await say(who, 'donate', { button: true });
	await say(who, '0');
	await say(who, '480.01');
	await say(who, 'twenty');
	await say(who, '20');
	await say(who, 'cur_ZWG', { button: true });
	await say(who, 'pay_ecocash', { button: true });
	await say(who, 'phone_same', { button: true });
	await say(who, 'Solar panels');
	await say(who, 'edit', { button: true });
	await say(who, 'edit_amount', { button: true });
	await say(who, '25');
	await say(who, 'cancel', { button: true });
	await work();
	const chat = graph.to(who);
	assert.equal(chat.filter((s) => s.startsWith('Sorry, ') && s.includes('between 1.00 and 480.00')).length, 3);
	const summary = (amount) => new RegExp(`^Please check your donation:\nAmount: ${amount} ZWG\nMethod: EcoCash\n`
		+ 'Number: 0772000010\nFor: Solar panels \\[confirm_[0-9a-f]{16} edit cancel\\]$');
	assert.ok(chat.some((m) => summary('20.00').test(m)), chat.join('\n'));
	assert.ok(chat.some((m) => summary('25.00').test(m)), chat.join('\n'));
	assert.equal(chat.at(-1), 'Cancelled: the donation you were making was not requested, so nothing was charged for it. '
		+ 'Send *donate* whenever you would like to give.');
	assert.equal(lastRef(who), '');
	assert.equal(q(`SELECT state || ' ' || draft FROM payments.chat_sessions WHERE wa_id = :'w'`, { w: who }), 'menu {}');
});

test('the Confirm button of a summary sent before an edit does not confirm the edited donation', async () => {
	const who = '263772000011';
	await say(who, 'donate', { button: true });
	await say(who, '20');
	await say(who, 'cur_USD', { button: true });
	await say(who, 'pay_ecocash', { button: true });
	await say(who, 'phone_same', { button: true });
	await say(who, 'purpose_1', { button: true });
	const first = confirmButton(who);
	await say(who, 'edit', { button: true });
	await say(who, 'edit_amount', { button: true });
	await say(who, '200');
	const second = confirmButton(who);
	assert.match(first, /^confirm_[0-9a-f]{16}$/);
	assert.notEqual(first, second);
	// the donor scrolls up and taps the summary of 20: nothing starts, the summary of 200 is shown again
	assert.equal(await say(who, first, { button: true }), 'applied');
	assert.equal(lastRef(who), '');
	assert.equal(confirmButton(who), second);
	assert.equal(await say(who, second, { button: true }), 'applied');
	await work();
	const chat = graph.to(who);
	assert.ok(chat.includes('That summary is not the donation you are making now, so nothing was started from it. Here it is as it stands:'),
		chat.join('\n'));
	assert.equal(chat.filter((m) => m.startsWith('Please check your donation:\nAmount: 200.00 USD')).length, 2);
	assert.equal(q(`SELECT amount || ' ' || currency FROM payments.payments WHERE reference = :'r'`, { r: lastRef(who) }),
		'200.00 USD');
	assert.equal(q(`SELECT count(*) FROM payments.chat_donations WHERE wa_id = :'w'`, { w: who }), '1');
});

test('a Paynow status update arriving before the initiate reply is stored still finishes the payment', async () => {
	const who = '263772222222';
	await donate(who, { method: 'ecocash', amount: '7' });
	await work();
	const ref = lastRef(who);
	assert.deepEqual(paynow.updates.filter((u) => u.startsWith(ref)), [`${ref} Paid 200`]);
	assert.equal(statusOf(ref), 'paid');
	assert.equal(q(`SELECT count(*) FROM payments.payments WHERE provider = 'pn_usd' AND reference = :'r'`, { r: ref }), '1');
	assert.equal(q(`SELECT state || ' ' || (p.metadata ->> 'paynowreference') || ' ' || (p.metadata ->> 'pollurl')
		FROM payments.paynow_initiations i JOIN payments.payments p ON p.id = i.payment_id WHERE i.reference = :'r'`, { r: ref }),
	`done ${q(`SELECT metadata ->> 'paynowreference' FROM payments.payments WHERE reference = :'r'`, { r: ref })} ${paynow.base}/poll/${ref}`);
	await work();
	const chat = graph.to(who);
	assert.equal(chat.filter((s) => s.startsWith('Thank you, Tendai! We received')).length, 1);
	assert.equal(chat.filter((s) => s.startsWith('Dial ')).length, 0, 'no instructions once paid');
	// check: the status of the last payment
	await say(who, 'check');
	await work();
	assert.match(graph.to(who).at(-1), new RegExp(`^Your last donation, 7.00 USD by EcoCash \\(reference ${ref}\\), is paid. Receipt number: LP-`));
});

test('an initiation answered slowly is recorded finished when the answer came, not when it was claimed', async () => {
	const who = '263771230009';
	await donate(who, { method: 'ecocash', amount: '9', phone: '0779191919' });
	await work();
	assert.equal(q(`SELECT i.state || ' ' || (i.finished_at - i.started_at >= interval '1.1 seconds')
		FROM payments.paynow_initiations i WHERE i.reference = :'r'`, { r: lastRef(who) }), 'done true');
});

test('reconciliation traces an initiation whose reply was lost: paid if Paynow made it, failed if it never reached Paynow', async () => {
	const lost = '263771230001';
	const never = '263771230002';
	await donate(lost, { method: 'ecocash', amount: '6', phone: '0775555555' });
	await donate(never, { method: 'ecocash', amount: '7', phone: '0776666666' });
	await work();
	const refs = { a: lastRef(lost), b: lastRef(never) };
	const state = (r) => q(`SELECT i.state || ' ' || p.status || ' ' || coalesce(p.metadata ->> 'pollurl', '-')
		FROM payments.paynow_initiations i JOIN payments.payments p ON p.id = i.payment_id WHERE p.reference = :'r'`, { r });
	assert.equal(state(refs.a), 'unconfirmed pending -');
	assert.equal(state(refs.b), 'unconfirmed pending -');
	// stuck for longer than reconcile_after: reconciliation asks Paynow's trace, by our reference
	q(`UPDATE payments.payments SET status_at = now() - interval '1 hour' WHERE reference IN (:'a', :'b');
		UPDATE payments.paynow_initiations SET started_at = now() - interval '1 hour' WHERE reference IN (:'a', :'b')`, refs);
	await session(`SET payments.reconcile_after = '1min';\nCALL payments.reconcile(50);\n`);
	assert.deepEqual(paynow.traces.filter((t) => t === refs.a || t === refs.b).sort(), [refs.a, refs.b].sort());
	assert.equal(state(refs.a), `unconfirmed paid ${paynow.base}/poll/${refs.a}`);
	assert.equal(state(refs.b), 'unconfirmed failed -');
	assert.equal(q(`SELECT string_agg(found_status || ' ' || outcome, ', ' ORDER BY found_status) FROM payments.reconciliation_checks
		WHERE request LIKE '%/interface/trace'`), 'NotFound fixed, Paid fixed');
	await work();
	assert.ok(graph.to(lost).some((m) => m.startsWith(`Thank you, Tendai! We received your donation of 6.00 USD (reference ${refs.a})`)),
		graph.to(lost).join('\n'));
	assert.ok(graph.to(never).some((m) => m.startsWith(`Your donation of 7.00 USD (reference ${refs.b}) did not go through.`)),
		graph.to(never).join('\n'));
	assert.deepEqual(paynow.refused, []);
});

test('Paynow refuses the payment: the donor gets a helpful message', async () => {
	const who = '263774444444';
	await donate(who, { method: 'ecocash', amount: '9' });
	await work();
	const ref = lastRef(who);
	assert.equal(statusOf(ref), 'failed');
	await work();
	assert.equal(graph.to(who).at(-1), `Your donation of 9.00 USD (reference ${ref}) did not go through: Insufficient balance. ` +
		'No money was taken.\nSend *donate* to try again, or *help* if you need assistance.');
});

test('Paynow cannot be reached at all (connection refused): the payment failed, nothing was taken', async () => {
	const who = '263774444445';
	const closed = await freePort();
	q(`UPDATE payments.providers SET settings = settings || jsonb_build_object('api_base', :'b') WHERE name = 'pn_usd'`,
		{ b: `http://127.0.0.1:${closed}` });
	try {
		await donate(who, { method: 'ecocash', amount: '8' });
		await work();
	} finally {
		q(`UPDATE payments.providers SET settings = settings || jsonb_build_object('api_base', :'b') WHERE name = 'pn_usd'`,
			{ b: paynow.base });
	}
	const ref = lastRef(who);
	assert.equal(q(`SELECT i.state || ' ' || p.status || ' ' || (i.http_status IS NULL) FROM payments.paynow_initiations i
		JOIN payments.payments p ON p.id = i.payment_id WHERE p.reference = :'r'`, { r: ref }), 'error failed true');
	await work();
	assert.ok(graph.to(who).at(-1).startsWith(`Your donation of 8.00 USD (reference ${ref}) did not go through.`),
		graph.to(who).at(-1));
});

test('confirmations to one number from two chats are counted one after the other', async () => {
	// the prompt limits count a number's requests: two chats confirming at once must not both count
	// before the other's request.  A transaction holding the number's lock makes a confirmation wait.
	const who = '263774444446';
	const victim = '0772000077';
	// a role with no right on payments holds the advisory locks the chat once took, computed from
	// the provider's name (public in the webhook's URL) and the numbers: nothing waits for them
	db.psql(`CREATE ROLE zz_nobody LOGIN`);
	const squatter = await holdLock(db, `SELECT pg_advisory_xact_lock(hashtextextended('payments chat clinic ${who}', 0)),
		pg_advisory_xact_lock(hashtextextended('payments prompts ${victim}', 0))`, 'zz_nobody');
	try {
		await say(who, 'Hi');
		await say(who, 'donate', { button: true });
		await say(who, '7');
		await say(who, 'cur_USD', { button: true });
		await say(who, 'pay_ecocash', { button: true });
		await say(who, victim);
		await say(who, 'purpose_1', { button: true });
	} finally {
		await squatter.release();
	}
	const lock = await holdLock(db, `SELECT payments.chat_lock('prompts ${victim}')`);
	let confirmed;
	try {
		confirmed = say(who, confirmButton(who), { button: true });
		for (let waited = 0; ; waited += 50) {
			if (q(`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'`) === '1') break;
			assert.ok(waited < 10000, 'the confirmation did not wait for the number\'s lock');
			await sleep(50);
		}
		assert.equal(lastRef(who), '', 'nothing started while the lock is held');
	} finally {
		await lock.release();
	}
	assert.equal(await confirmed, 'applied');
	assert.equal(statusOf(lastRef(who)), 'pending');
});

test('a number change waits for the old number without holding the new one: no deadlock with a batch taking both', async () => {
	// a transaction that answered the old number's message (a batch of Meta events) then takes the
	// new number's, while the number change, started between, waits for the old one
	const from = '263771000001';
	const to = '263771000002';
	db.psql(`SELECT payments.chat_lock_user('clinic', '${from}')`);
	const batch = holdLock(db, `SELECT payments.chat_lock_user('clinic', '${from}'); SELECT pg_sleep(1.5);
		SELECT payments.chat_lock_user('clinic', '${to}')`);
	batch.catch(() => {});
	let move;
	try {
		await waitFor(() => q(`SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'`) === '1', 10000, 'the batch sleeping');
		move = holdLock(db, `SELECT payments.chat_move_user('clinic', '${from}', '${to}', NULL)`);
		move.catch(() => {});
		await waitFor(() => q(`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'`) === '1', 10000,
			'the move waiting');
		const held = await batch;
		await held.release();
		await (await move).release();
	} finally {
		// a deadlock ends one of them with an error, and leaves the other's transaction open
		db.psql(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE pid <> pg_backend_pid() AND query LIKE '%${to}%'`);
	}
});

test('sessions expire after the idle time; help and menu at any point', async () => {
	const who = '263772000020';
	await say(who, 'donate', { button: true });
	await say(who, '15');
	q(`UPDATE payments.chat_sessions SET last_activity_at = now() - interval '31 minutes' WHERE wa_id = :'w'`, { w: who });
	await say(who, 'cur_USD', { button: true });
	await say(who, 'help');
	await work();
	const chat = graph.to(who);
	assert.equal(chat.at(-3), 'Your previous conversation expired after a while without messages, so we are starting again. '
		+ 'The donation you had not confirmed was not requested.');
	assert.match(chat.at(-2), /^Hello Tendai!/);
	assert.match(chat.at(-1), /^Send \*donate\* to give/);
});

test('rate limit: one number cannot flood the service (a batch of 35 messages)', async (t) => {
	const who = '263772000030';
	const messages = Array.from({ length: 35 }, () => metaMessage(who, 'help'));
	const started = process.hrtime.bigint();
	assert.equal(await deliverToShim(metaBody({ contacts: [{ profile: { name: 'Flood' }, wa_id: who }], messages })), 'applied');
	t.diagnostic(`35 messages in one delivery stored and answered in ${Number(process.hrtime.bigint() - started) / 1e6} ms`);
	assert.equal(q(`SELECT count(*) FILTER (WHERE state = 'applied') || ' ' || count(*) FILTER (WHERE state = 'ignored')
		FROM payments.events WHERE provider = 'clinic' AND payload -> 'message' ->> 'from' = :'w'`, { w: who }), '30 5');
	await work();
	const chat = graph.to(who);
	assert.equal(chat.length, 31);
	assert.equal(chat.at(-1), 'You are sending messages faster than we can answer them. Please wait a few minutes, then try again.');
	// another number is not limited
	assert.equal(await say('263772000031', 'help'), 'applied');
});

test('admin commands from admin numbers only', async () => {
	await say('263772000040', '/stats');
	await say('263772000040', '/approve WA-1');
	// a pending payment an admin approves by hand: receipt issued, the donor thanked
	const who = '263775555555';
	await donate(who, { method: 'ecocash', amount: '11' });
	const ref = lastRef(who);
	await say(ADMIN, '/admin');
	await say(ADMIN, '/stats');
	await say(ADMIN, '/report');
	// the report as it stood when asked for (the approval below changes it)
	const reported = JSON.parse(q(`SELECT json_agg(ARRAY[to_char(d, 'YYYY-MM-DD'), currency, method, paid::text, gross::text,
		fees::text, net::text, fee_unknown::text, amount_unknown::text, failed::text, refunds::text, refunded::text, new_donors::text, receipts::text,
		coalesce(first_receipt, ''), coalesce(last_receipt, '')])
		FROM (SELECT payments.receipt_day(now())) AS t (d), payments.daily_report(d)`));
	await say(ADMIN, `/approve ${ref}`);
	await work();
	for (const s of graph.to('263772000040')) assert.match(s, /^Hello Tendai! .*\[donate check volunteer help\]$/s);
	assert.equal(graph.to('263772000040').length, 2);
	assert.deepEqual(graph.refused, []);
	assert.deepEqual(q(`SELECT string_agg(event_type || ' ' || state || ' ' || coalesce(last_error, '-'), ', ' ORDER BY id)
		FROM payments.outbox WHERE recipient = :'w'`, { w: ADMIN }), 'whatsapp.text delivered -, whatsapp.text delivered -, ' +
		'whatsapp.text delivered -, whatsapp.document delivered -, whatsapp.text delivered -');
	const [help, stats, report, document, approved] = graph.to(ADMIN);
	assert.match(help, /^Admin commands:\n\/stats/);
	assert.match(stats, /^Today \(\d{4}-\d{2}-\d{2}\):\nUSD: \d+ paid, gross [0-9.]+, net of fees and refunds [0-9.]+; 3 failed or cancelled, 1 pending\nZWG: /);
	assert.match(report, /^Daily report \d{4}-\d{2}-\d{2}:\n.*USD \(all\): \d+ paid/s);
	// the report again as a CSV document, after the text: the rows of payments.daily_report
	const day = report.slice(13, 23);
	assert.equal(document, `[document report-${day}.csv] Daily report ${day} (CSV)`);
	const sent = graph.sent.find((s) => s.to === ADMIN && s.doc);
	assert.deepEqual(sent.doc.rows, [['day', 'currency', 'method', 'paid', 'gross', 'fees', 'net', 'fee_unknown', 'amount_unknown', 'failed',
		'refunds', 'refunded', 'new_donors', 'receipts', 'first_receipt', 'last_receipt'], ...reported]);
	assert.ok(reported.every((r) => r[0] === day));
	assert.ok(sent.doc.rows.some((r) => r[1] === 'USD' && r[2] === '(all)' && Number(r[3]) > 0));
	assert.equal(q(`SELECT state || ' ' || attempts || ' ' || (payload -> 'message' -> 'document' ->> 'id') FROM payments.outbox WHERE wamid = :'m'`,
		{ m: sent.wamid }), `delivered 2 ${graph.uploads.at(-1)}`);
	assert.match(approved, new RegExp(`^Approved ${ref}: 11.00 USD marked paid, receipt LP-\\d{8}-\\d{6}\\.$`));
	assert.equal(statusOf(ref), 'paid');
	// approved before Paynow was asked: it is not asked any more (the donor would pay twice)
	assert.equal(paynow.requests.filter((r) => r.reference === ref).length, 0);
	assert.equal(q(`SELECT state FROM payments.paynow_initiations WHERE reference = :'r'`, { r: ref }), 'skipped');
	assert.equal(graph.to(who).filter((s) => s.startsWith('Thank you, Tendai! We received')).length, 1);
});

test('a payment marked paid while the initiations are claimed is not initiated', async () => {
	const who = '263775555556';
	await donate(who, { method: 'ecocash', amount: '9' });
	const ref = lastRef(who);
	// another session marks it paid and keeps its transaction open, the payment locked, while
	// initiate_payments runs: the change is not visible to it yet, the lock is.  Committed once that
	// run ends (a run that waited for the lock would see the payment paid 30 s later, and fail)
	const holder = await holdLock(db, `UPDATE payments.payments SET status = 'paid', status_at = now(), paid_at = now()
		WHERE reference = '${ref}'`);
	const commitLater = setTimeout(() => holder.release(), 30000);
	try {
		await work();
	} finally {
		clearTimeout(commitLater);
		await holder.release();
	}
	assert.equal(q(`SELECT state FROM payments.paynow_initiations WHERE reference = :'r'`, { r: ref }), 'queued');
	await work();
	assert.equal(q(`SELECT state FROM payments.paynow_initiations WHERE reference = :'r'`, { r: ref }), 'skipped');
	assert.equal(paynow.requests.filter((r) => r.reference === ref).length, 0);
});

test('the report document: an upload or a document message the Cloud API refuses is final, an upload answered without a media id is retried', async () => {
	const docRow = () => q(`SELECT state || ' ' || last_status || ' ' || attempts FROM payments.outbox
		WHERE recipient = :'w' AND event_type = 'whatsapp.document' ORDER BY id DESC LIMIT 1`, { w: ADMIN });
	const lastAttempt = () => q(`SELECT a.http_status || ' ' || a.error FROM payments.outbox_attempts a
		JOIN payments.outbox o ON o.id = a.outbox_id WHERE o.recipient = :'w' ORDER BY a.id DESC LIMIT 1`, { w: ADMIN });
	const before = graph.to(ADMIN).length;
	graph.uploadFault = 'refuse';
	await say(ADMIN, '/report yesterday');
	await work();
	assert.equal(graph.uploads.at(-1), 'refused');
	assert.equal(docRow(), 'dead 400 1');
	assert.equal(lastAttempt(), '400 HTTP 400');
	// the text report went out; the document did not
	assert.deepEqual(graph.to(ADMIN).slice(before).map((s) => s.slice(0, 13)), ['Daily report ']);

	graph.uploadFault = 'noid';
	await say(ADMIN, '/report yesterday');
	await work();
	assert.equal(graph.uploads.at(-1), 'no id');
	assert.equal(docRow(), 'pending 200 1');
	assert.equal(lastAttempt(), '200 HTTP 200: no media id in the answer to the upload');
	// the retry uploads again and sends the document
	graph.uploadFault = null;
	db.psql(`UPDATE payments.outbox SET next_attempt_at = now() WHERE recipient = '${ADMIN}' AND state = 'pending'`);
	await work();
	assert.equal(docRow(), 'delivered 200 3');
	assert.match(graph.to(ADMIN).at(-1), /^\[document report-\d{4}-\d{2}-\d{2}\.csv\] Daily report /);
	assert.equal(graph.sent.at(-1).doc.name, `report-${graph.to(ADMIN).at(-2).slice(13, 23)}.csv`);

	// the upload succeeds, the document message naming it is refused: final, both attempts recorded
	graph.documentFault = true;
	const uploads = graph.uploads.length;
	await say(ADMIN, '/report yesterday');
	await work();
	graph.documentFault = false;
	assert.equal(graph.uploads.length, uploads + 1);
	assert.equal(docRow(), 'dead 400 2');
	assert.equal(q(`SELECT string_agg(a.http_status || ' ' || coalesce(a.error, '-') || ' ' || (a.response::jsonb ? 'id'), ', ' ORDER BY a.id)
		FROM payments.outbox_attempts a WHERE a.outbox_id = (SELECT max(id) FROM payments.outbox WHERE recipient = :'w')`, { w: ADMIN }),
		'200 - true, 400 HTTP 400 false');
	assert.ok(graph.refused.includes('document refused'));
});

test('duplicate and out-of-order Meta deliveries; message statuses update the outbox rows', async () => {
	const who = '263772000050';
	const body = metaBody({ contacts: [{ profile: { name: 'Dup' }, wa_id: who }], messages: [metaMessage(who, 'help')] });
	assert.equal(await deliverToShim(body), 'applied');
	assert.equal(await deliverToShim(body), 'duplicate');
	// an older message delivered late is stored, not answered
	assert.equal(await say(who, 'donate', { at: 1718000000 }), 'ignored');
	graph.statusFirst.add(who);
	await work();
	assert.equal(graph.to(who).length, 1);
	// the status Meta sent before the send call answered reached the row once its wamid was stored
	const wamid = graph.sent.find((s) => s.to === who).wamid;
	const row = () => q(`SELECT message_status FROM payments.outbox WHERE wamid = :'m'`, { m: wamid });
	assert.equal(row(), 'sent');
	const status = (s, ts) => metaBody({ statuses: [{ id: wamid, status: s, timestamp: String(ts), recipient_id: who }] });
	assert.equal(await deliverToShim(status('read', 1718001030)), 'applied');
	assert.equal(await deliverToShim(status('delivered', 1718001020)), 'ignored');
	assert.equal(await deliverToShim(status('read', 1718001030)), 'duplicate');
	assert.equal(row(), 'read');
	// one delivery batching several statuses
	const batch = metaBody({ statuses: [{ id: 'wamid.unknown', status: 'sent', timestamp: '1718001040', recipient_id: who },
		{ id: wamid, status: 'failed', timestamp: '1718001050', recipient_id: who, errors: [{ code: 131047, title: 'Re-engagement message' }] }] });
	assert.equal(await deliverToShim(batch), 'applied');
	assert.equal(q(`SELECT message_status || ' ' || (message_errors -> 0 ->> 'code') FROM payments.outbox WHERE wamid = :'m'`, { m: wamid }),
		'failed 131047');
});

test('volunteers register in the chat; a message the Cloud API refuses is dead, one it throttles is sent again; a wrong access token is retried', async () => {
	const who = '263772000060';
	await say(who, 'volunteer', { button: true });
	await say(who, 'Rudo Chikore');
	await say(who, 'Driving');
	await say(who, 'Saturdays');
	await work();
	assert.match(graph.to(who).at(-1), /^Thank you, Rudo Chikore! You are registered as a volunteer/);
	assert.equal(q(`SELECT name || '|' || phone || '|' || skills || '|' || availability FROM payments.volunteer_list`),
		'Rudo Chikore|********0060|Driving|Saturdays');

	await say('263772000070', 'help');
	await work();
	assert.equal(q(`SELECT state || ' ' || last_status || ' ' || attempts FROM payments.outbox WHERE recipient = '263772000070'`),
		'dead 400 1');

	// a rate limit is answered 400 too, but the message is not refused: it waits its turn
	await say('263772000080', 'help');
	await work();
	const throttledRow = () => q(`SELECT state || ' ' || last_status || ' ' || attempts || ' ' || coalesce(last_error, '')
		FROM payments.outbox WHERE recipient = '263772000080'`);
	assert.equal(throttledRow(), 'pending 400 1 HTTP 400: rate limit of the Cloud API (error 131056)');
	assert.equal(q(`SELECT next_attempt_at > now() + interval '50 seconds' FROM payments.outbox WHERE recipient = '263772000080'`), 't');
	db.psql(`UPDATE payments.outbox SET next_attempt_at = now() WHERE recipient = '263772000080'`);
	await work();
	assert.equal(throttledRow(), 'delivered 200 2');
	assert.match(graph.to('263772000080').at(-1), /^Send \*donate\* to give/);

	db.psql(`UPDATE payments.providers SET settings = settings || '{"access_token": "EAAwrong"}' WHERE name = 'clinic'`);
	await say(who, 'help');
	await work();
	assert.ok(graph.refused.includes('token'));
	assert.equal(q(`SELECT state || ' ' || last_status || ' ' || attempts FROM payments.outbox WHERE recipient = :'w' ORDER BY id DESC LIMIT 1`,
		{ w: who }), 'pending 401 1');
});

test('the pg_cron chat job answers within about a second while it runs, past a statement_timeout shorter than its run', async (t) => {
	db.psql(`UPDATE payments.providers SET settings = settings || '{"access_token": "${TOKEN}"}' WHERE name = 'clinic'`);
	// statement_timeout 2 s, as ALTER DATABASE … SET would give the job's session: each pass restarts it
	const job = new Promise((resolve) => {
		const child = execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-h', db.dir, '-p', String(db.port), '-U', 'postgres',
			'-d', 'payments', '-c', "CALL payments.run_job('chat')"],
		{ env: { ...process.env, PGAPPNAME: 'chat-job', PGOPTIONS: '-c statement_timeout=2s' } },
		(err, stdout, stderr) => resolve(stderr));
		child.stdin.end();
	});
	await until('the job', () => q(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chat-job' AND state = 'active'`) === '1');
	await sleep(2500);
	assert.equal(q(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chat-job' AND state = 'active'`), '1',
		'the job still runs past its statement_timeout');
	const who = '263772000080';
	const started = Date.now();
	await donate(who, { method: 'ecocash', amount: '3' });
	const ref = lastRef(who);
	await until('the receipt', () => graph.to(who).some((s) => s.includes('Your receipt number is')), 10000);
	t.diagnostic(`from the greeting to the receipt in the chat, pg_cron job only: ${Date.now() - started} ms`);
	assert.equal(statusOf(ref), 'paid');
	assert.ok(graph.to(who).some((s) => s.startsWith(`Dial *151*2*4# and approve 3.00 for ${ref}`)));
	q(`SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'chat-job'`);
	assert.match(await job, /canceling statement due to user request/);
});

test('a card payment whose Paynow reply was lost cannot be paid: it fails, the donor is told and may give again', async () => {
	// the link to Paynow's page was in the reply: nobody can pay it, unlike a mobile request,
	// which the donor's phone may still prompt for (that one stays pending, unconfirmed)
	const who = '263781313131';
	await donate(who, { method: 'card', currency: 'ZWG', amount: '13.13' });
	const ref = lastRef(who);
	await work();
	assert.ok(paynow.made.has(ref), 'Paynow made the transaction');
	assert.equal(q(`SELECT i.state || ' ' || p.status || ' ' || i.http_status || ' ' || i.error FROM payments.paynow_initiations i
		JOIN payments.payments p ON p.id = i.payment_id WHERE p.reference = :'r'`, { r: ref }), 'error failed 502 HTTP 502: Bad Gateway');
	await work();
	const chat = graph.to(who);
	assert.equal(chat.at(-1), `Your donation of 13.13 ZWG (reference ${ref}) did not go through. No money was taken.\n`
		+ 'Send *donate* to try again, or *help* if you need assistance.', chat.join('\n'));
	assert.ok(!chat.some((m) => m.startsWith('We could not confirm')), chat.join('\n'));
	// given again: a new link, paid
	await donate(who, { method: 'card', currency: 'ZWG', amount: '13' });
	const again = lastRef(who);
	assert.notEqual(again, ref);
	await work();
	await until('paid', () => statusOf(again) === 'paid');
	await work();
	assert.ok(graph.to(who).some((m) => m.startsWith(`Please pay securely with your card here: ${paynow.base}/pay/`)));
	assert.ok(graph.to(who).some((m) => m.startsWith(`Thank you, Tendai! We received your donation of 13.00 ZWG (reference ${again})`)));
});

test('donations switched off while a donor is at the currency question: the donor is told, not sent a list the Cloud API refuses', async () => {
	const who = '263772000111';
	const refused = graph.refused.length;
	await say(who, 'donate', { button: true });
	await say(who, '10');
	q(`UPDATE payments.providers SET settings = settings || '{"paynow_providers": {}}' WHERE name = 'clinic'`);
	try {
		await say(who, 'cur_USD', { button: true });
		await work();
	} finally {
		q(`UPDATE payments.providers SET settings = settings || '{"paynow_providers": {"USD": "pn_usd", "ZWG": "pn_zwg"}}' WHERE name = 'clinic'`);
	}
	assert.deepEqual(graph.refused.slice(refused), []);
	assert.equal(graph.to(who).at(-1), 'Sorry, donations cannot be made here yet. Please try again later.');
	assert.equal(q(`SELECT state || ' ' || draft FROM payments.chat_sessions WHERE wa_id = :'w'`, { w: who }), 'menu {}');
	assert.equal(q(`SELECT string_agg(DISTINCT state, ',') FROM payments.outbox WHERE recipient = :'w'`, { w: who }), 'delivered');
});

test('cancel right after Confirm: the queued request is never sent, the payment is cancelled, the donor told nothing was charged', async () => {
	const who = '263771000031';
	await donate(who, { method: 'ecocash', amount: '10' });
	const ref = lastRef(who);
	assert.equal(await say(who, 'cancel'), 'applied');
	await work();
	assert.deepEqual(paynow.requests.filter((r) => r.reference === ref).map((r) => `${r.reference} ${r.phone} ${r.amount}`), []);
	assert.equal(q(`SELECT i.state || ' ' || p.status FROM payments.paynow_initiations i JOIN payments.payments p ON p.id = i.payment_id
		WHERE p.reference = :'r'`, { r: ref }), 'skipped cancelled');
	const chat = graph.to(who);
	assert.equal(chat.at(-1), `Your donation of 10.00 USD (reference ${ref}) was cancelled, so nothing was charged. `
		+ 'Send *donate* to try again whenever you like.');
	assert.ok(!chat.some((m) => m.startsWith('Dial ') || m.includes('decline the request')), chat.join('\n'));
	await say(who, 'check');
	await work();
	assert.equal(graph.to(who).at(-1), `Your last donation, 10.00 USD by EcoCash (reference ${ref}), was cancelled; nothing was charged.`);
});

test('cancel while initiate_payments claims the request waits for the claim: the request may reach the phone, so it is not cancelled, and the donor is told so', async () => {
	await work();	// requests queued before go first: the claim below takes only this donor's
	const who = '263771000032';
	await donate(who, { method: 'ecocash', amount: '10' });
	const ref = lastRef(who);
	// the claim's transaction holds the initiation (marked sending, not committed yet)
	const claim = await holdLock(db, 'SELECT count(*) FROM payments.claim_initiations(20)');
	let cancelled;
	try {
		cancelled = say(who, 'cancel');
		await shimLockWaiters(db, 1);
	} finally {
		await claim.release();
	}
	assert.equal(await cancelled, 'applied');
	assert.equal(q(`SELECT i.state || ' ' || p.status FROM payments.paynow_initiations i JOIN payments.payments p ON p.id = i.payment_id
		WHERE p.reference = :'r'`, { r: ref }), 'sending pending');
	await work();
	assert.equal(graph.to(who).at(-1), 'A payment already requested cannot be cancelled here: if you do not want to pay it, '
		+ 'decline the request on your phone (or leave Paynow\'s page). Send *donate* whenever you would like to give.');
	assert.ok(!graph.to(who).some((m) => m.includes('nothing was charged')), graph.to(who).join('\n'));
	// (the request claimed here was never sent: recorded as never having reached Paynow)
	assert.equal(q(`SELECT payments.record_initiation(id, NULL, 'Connection refused', NULL) FROM payments.paynow_initiations
		WHERE reference = :'r'`, { r: ref }), 'error');
});

test('a donor whose phone number WhatsApp withholds (a username: business-scoped user id only) is answered by "recipient", types the number to pay from and gets the receipt', async () => {
	const bsuid = 'ZW.1502576394655843';
	// as Meta sends it: messages[].from_user_id and contacts[].user_id, no from and no wa_id
	const sayAsBsuid = (said, opts = {}) => {
		const m = metaMessage(undefined, said, opts);
		delete m.from;
		return deliverToShim(metaBody({ contacts: [{ profile: { name: 'Rudo', username: 'rudo.m' }, user_id: bsuid }],
			messages: [{ from_user_id: bsuid, ...m }] }));
	};
	const refusedBefore = graph.refused.length;
	graph.statusFirst.add(bsuid);
	assert.equal(await sayAsBsuid('Hi'), 'applied');
	await sayAsBsuid('donate', { button: true });
	await sayAsBsuid('10');
	await sayAsBsuid('cur_USD', { button: true });
	await sayAsBsuid('pay_ecocash', { button: true });
	await sayAsBsuid('0779 000 123');
	await sayAsBsuid('purpose_1', { button: true });
	await sayAsBsuid(confirmButton(bsuid), { button: true });
	const ref = lastRef(bsuid);
	assert.match(ref, /^WA-\d{8}-\d+$/);
	await work();
	await until('the donor by BSUID paid', () => statusOf(ref) === 'paid');
	await work();
	graph.statusFirst.delete(bsuid);
	assert.deepEqual(graph.refused.slice(refusedBefore), []);
	const chat = graph.to(bsuid);
	assert.match(chat[0], /^Hello Rudo! .* \[donate check volunteer help\]$/s);
	assert.ok(chat.includes('Which EcoCash number should we send the payment request to? Type it like 0771234567.'), chat.join('\n'));
	assert.ok(chat.some((s) => s.startsWith(`Dial *151*2*4# and approve 10.00 for ${ref}`)), chat.join('\n'));
	const receipt = q(`SELECT receipt_no FROM payments.payments p JOIN payments.receipts r ON r.payment_id = p.id WHERE reference = :'r'`, { r: ref });
	assert.ok(chat.includes(`Thank you, Rudo! We received your donation of 10.00 USD (reference ${ref}) for Maternity ward.\n`
		+ `Your receipt number is ${receipt}.`), chat.join('\n'));
	// every message named the donor by "recipient", none by "to"; each was delivered, its wamid kept,
	// and Meta's status for it (recipient_user_id, no recipient_id) applied
	const sent = graph.sent.filter((x) => x.to === bsuid);
	assert.ok(sent.length >= 8 && sent.every((x) => x.field === 'recipient'), JSON.stringify(sent));
	assert.equal(q(`SELECT string_agg(DISTINCT state || ' ' || coalesce(message_status, '-'), ',') FROM payments.outbox WHERE recipient = :'w'`,
		{ w: bsuid }), 'delivered sent');
	assert.deepEqual(sent.map((x) => x.wamid), q(`SELECT wamid FROM payments.outbox WHERE recipient = :'w' ORDER BY id`, { w: bsuid }).split('\n'));
	// Paynow was asked to prompt the number typed; the payment has no donor phone, the BSUID in its metadata
	assert.ok(paynow.requests.some((r) => r.reference === ref && r.phone === '0779000123' && r.method === 'ecocash'));
	assert.equal(q(`SELECT coalesce(donor_phone, '-') || ' ' || donor_name || ' ' || (metadata ->> 'whatsapp_user_id') FROM payments.payments
		WHERE reference = :'r'`, { r: ref }), `- Rudo ${bsuid}`);
});

// (last: the admin's approval below adds to the admin number's messages, which a test above counts)
test('a number change applied while the new number writes its first message waits for it and merges', async () => {
	const [old, now] = ['263772345701', '263772345711'];
	assert.equal(await say(old, 'Hi'), 'applied');
	// the new number's first message, its transaction held open before commit
	const first = metaBody({ contacts: [{ profile: { name: 'Tendai' }, wa_id: now }], messages: [metaMessage(now, 'Hi')] });
	const held = await holdLock(db, `SELECT outcome FROM payments.ingest('clinic', jsonb_build_object('x-hub-signature-256',
		'${sign(first)}'), convert_to($body$${first}$body$, 'UTF8'))`);
	try {
		const change = deliverToShim(numberChange(old, now));
		await shimLockWaiters(db, 1);
		await held.release();
		assert.equal(await change, 'applied');
	} finally {
		held.kill();	// (a check that failed before the release must not leave the transaction open)
	}
	assert.equal(q(`SELECT string_agg(wa_id, ' ' ORDER BY wa_id) FROM payments.chat_sessions WHERE wa_id IN (:'o', :'n')`,
		{ o: old, n: now }), now);
	assert.equal(q(`SELECT count(*) FROM payments.events WHERE provider = 'clinic' AND state <> 'applied' AND state <> 'ignored'`), '0');
});

test('a Flow\'s final submit while a number change is applied waits for it: the donation and its donor follow to the new number', async () => {
	const [old, now] = ['263772345901', '263772345911'];
	assert.equal(await say(old, 'Hi'), 'applied');
	const token = q(`SELECT payments.issue_flow_token('clinic', :'o')`, { o: old });
	const form = JSON.stringify({ version: '3.0', action: 'data_exchange', screen: 'CONFIRM', flow_token: token,
		data: { amount: '5', currency: 'USD', method: 'ecocash', phone: '263772345901' } });
	// the move, its transaction held open before commit; the form is submitted meanwhile (the
	// decrypted request, as payments.flows_exchange passes it on)
	const held = await holdLock(db, `SELECT payments.chat_move_user('clinic', '${old}', '${now}', NULL, now())`);
	let submit;
	try {
		submit = new Promise((resolve, reject) => execFile(join(PG_BIN, 'psql'), ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1',
			'-h', db.dir, '-p', String(db.port), '-U', 'postgres', '-d', 'payments',
			'-c', `SELECT a.http_status || ' ' || (a.answer ->> 'screen') FROM payments.flows_answer('clinic', $f$${form}$f$) AS a (http_status, answer)`],
		(err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout.trim()))));
		await waitFor(() => q(`SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%flows_answer(%' AND pid <> pg_backend_pid()`) === '1',
			10000, 'the submit waits for the number change');
		await held.release();
		assert.equal(await submit, '200 SUCCESS');
	} finally {
		held.kill();
	}
	assert.equal(q(`SELECT d.wa_id || ' ' || p.donor_key FROM payments.flow_submissions s
		JOIN payments.chat_donations d ON d.payment_id = s.payment_id JOIN payments.payments p ON p.id = s.payment_id
		WHERE s.flow_token = :'t'`, { t: token }), `${now} phone:${now}`);
});

test('a donation\'s paid notice queued while a number change moves the donation goes to the new number', async () => {
	const [old, now] = ['263772345801', '263772345811'];
	await donate(old, { method: 'ecocash', currency: 'USD', amount: '6.00' });
	const ref = lastRef(old);
	// the move, its transaction held open before commit; the admin approves the donation meanwhile
	const held = await holdLock(db, `SELECT payments.chat_move_user('clinic', '${old}', '${now}', NULL, now())`);
	try {
		const approve = say(ADMIN, `/approve ${ref}`);
		await shimLockWaiters(db, 1);
		await held.release();
		assert.equal(await approve, 'applied');
	} finally {
		held.kill();
	}
	assert.equal(statusOf(ref), 'paid');
	assert.equal(q(`SELECT string_agg(recipient, ' ') FROM payments.outbox
		WHERE payload -> 'text' ->> 'body' LIKE 'Thank you, Tendai! We received your donation of 6.00 USD (reference ' || :'r' || ')%'`,
	{ r: ref }), now);
});
