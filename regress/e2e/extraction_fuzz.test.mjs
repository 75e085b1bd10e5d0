// Fuzzing of what the extension reads from signed JSON bodies, inside a real server.  libFuzzer
// cannot reach that code: it reads jsonb, which only the server builds (fuzz/README.md).  So here
// events shaped like each JSON kind's (Stripe, PayPal, Standard Webhooks, Meta's WhatsApp messages
// and statuses to a chat, Eversend, a generic hmac sender with JSON paths), and Paynow's status
// update forms, each correctly signed (or hashed),
// have values at random places replaced by hostile ones: wrong types, numbers beyond every range,
// odd strings, dates and phone numbers, deep nesting, keys removed.  Each goes through
// payments.ingest in a transaction of its own.  The generator is seeded (the seed is printed;
// PAYMENTS_FUZZ_SEED replays a run, PAYMENTS_FUZZ_EVENTS sets how many).
//
// Every delivery must be answered 200 (stored, applied, ignored or a duplicate) or 400 (invalid,
// recorded in payments.rejections), never an error, a 5xx or a crash of the backend; every 200
// names an event that is stored; the seeds sent as they are (one in twenty) are taken, never
// refused; and what the payments became holds together (finite amounts, receipts without gaps).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from './harness.mjs';
import { random } from './stripe_lives.mjs';
import { signPaypal } from './paypal_sign.mjs';

const secrets = {
	stripe: `whsec_${randomBytes(16).toString('hex')}`,
	standard: `whsec_${randomBytes(32).toString('base64')}`,
	meta: 'meta_app_secret_fuzz',
	eversend: 'eversend_secret_fuzz',
	paynow: '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977',
	hmac: 'hmac_secret_fuzz',
};
const count = Number(process.env.PAYMENTS_FUZZ_EVENTS ?? 1500);
const seed = Number(process.env.PAYMENTS_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const now = () => Math.floor(Date.now() / 1000);
const hmacHex = (alg, key, body) => createHmac(alg, key).update(body).digest('hex');
// PayPal's: a key of our own, its certificate (self-signed, for PayPal's name) seeded at a URL of
// PayPal's host, the provider checking no chain (made in before())
const paypal = { webhookId: 'WH-FUZZ', certUrl: 'https://api.paypal.com/v1/notifications/certs/CERT-fuzz', key: null };

// Signature headers (lower case, as the shim passes them) of a body for each provider
const sign = {
	stripe: (body) => {
		const t = now();
		return { 'stripe-signature': `t=${t},v1=${createHmac('sha256', secrets.stripe).update(`${t}.`).update(body).digest('hex')}` };
	},
	standard: (body, n) => {
		const ts = now();
		const key = Buffer.from(secrets.standard.slice('whsec_'.length), 'base64');
		const id = `msg_fz_${n}`;
		return { 'webhook-id': id, 'webhook-timestamp': String(ts),
			'webhook-signature': `v1,${createHmac('sha256', key).update(`${id}.${ts}.`).update(body).digest('base64')}` };
	},
	clinic: (body) => ({ 'x-hub-signature-256': `sha256=${hmacHex('sha256', secrets.meta, body)}` }),
	eversend: (body) => ({ 'x-eversend-signature': hmacHex('sha512', secrets.eversend, body) }),
	ledger: (body) => ({ 'x-signature': `sha256=${hmacHex('sha256', secrets.hmac, body)}` }),
	paypal: (body) => signPaypal(body, paypal.key, paypal.certUrl, { webhookId: paypal.webhookId }),
};

// Seeds: one event of each shape a kind reads, about a payment seen before or a new one (so that
// first states and transitions between them are both tried)
function seeds(rnd, n) {
	const p = Math.floor(rnd() * (4 + n / 4));	// a payment seen before, or a new one
	const pi = `pi_fz_${p}`;
	const t = now() - 60 + n;
	const stripe = (type, object) => ({ id: `evt_fz_${n}`, object: 'event', api_version: '2024-06-20', created: t, livemode: true,
		type, data: { object } });
	const intent = { id: pi, object: 'payment_intent', amount: 2500, amount_received: 2500, currency: 'usd',
		payment_method_types: ['card'], metadata: { reference: `ORD-${p}`, donor_name: 'Amina Nakato', phone: '256772123456' },
		receipt_email: 'donor@example.org', latest_charge: `ch_fz_${p}`, created: t - 100, status: 'succeeded' };
	const charge = { id: `ch_fz_${p}`, object: 'charge', payment_intent: pi, amount: 2500, amount_captured: 2500,
		amount_refunded: 500, captured: true, currency: 'usd', refunded: false, paid: true, status: 'succeeded',
		billing_details: { email: 'donor@example.org', name: 'Amina', phone: '+256772123456' },
		payment_method_details: { type: 'card', card: { brand: 'visa' } }, balance_transaction: { fee: 103, currency: 'usd' } };
	const message = { from: '263771234567', id: `wamid.FZ${n}`, timestamp: String(t), type: 'text', text: { body: 'donate 10' } };
	const pp = (type, resource, resourceType = 'capture') => ({ id: `WH-FZ${n}`, event_version: '1.0',
		create_time: new Date().toISOString(), resource_type: resourceType, event_type: type, resource });
	const dispute = { dispute_id: `PP-D-FZ${n}`, disputed_transactions: [{ seller_transaction_id: `CAP${p}`,
		seller: { merchant_id: 'RD465XN5VS364' }, items: [], seller_protection_eligible: true }],
		reason: 'MERCHANDISE_OR_SERVICE_NOT_RECEIVED', dispute_amount: { currency_code: 'USD', value: '30.00' },
		dispute_life_cycle_stage: 'INQUIRY', status: 'OPEN' };
	const whatsapp = (value) => ({ object: 'whatsapp_business_account', entry: [{ id: '102290129340398', changes: [{ field: 'messages',
		value: { messaging_product: 'whatsapp', metadata: { display_phone_number: '15550783881', phone_number_id: '106540352242922' },
			...value } }] }] });
	return [
		['stripe', stripe('payment_intent.succeeded', intent)],
		['stripe', stripe('payment_intent.processing', { ...intent, status: 'processing' })],
		['stripe', stripe('charge.refunded', charge)],
		['stripe', stripe('charge.succeeded', { ...charge, amount_refunded: 0 })],
		// a partial capture before API version 2025-03-31: what was released counts as refunded
		['stripe', stripe('charge.captured', { ...charge, amount: 1000, amount_captured: 300, amount_refunded: 700 })],
		['stripe', stripe('charge.dispute.closed', { id: `dp_fz_${p}`, object: 'dispute', payment_intent: pi, charge: `ch_fz_${p}`,
			amount: 2500, currency: 'usd', status: 'won', created: t })],
		['stripe', stripe('checkout.session.completed', { id: `cs_fz_${n}`, object: 'checkout.session', mode: 'payment',
			payment_intent: pi, amount_total: 2500, currency: 'usd', payment_status: 'paid',
			customer_details: { email: 'donor@example.org', name: 'Amina', phone: '+256772123456' }, metadata: { purpose: 'Medicines' } })],
		['paypal', pp('PAYMENT.CAPTURE.COMPLETED', { id: `CAP${p}`, amount: { currency_code: 'USD', value: '30.00' },
			seller_receivable_breakdown: { gross_amount: { currency_code: 'USD', value: '30.00' }, paypal_fee: { currency_code: 'USD', value: '1.54' } },
			custom_id: `DON-${p}`, status: 'COMPLETED', update_time: new Date().toISOString(),
			supplementary_data: { related_ids: { order_id: `ORDER${p}` } } })],
		['paypal', pp('PAYMENT.CAPTURE.REFUNDED', { id: `REF${n}`, amount: { currency_code: 'USD', value: '10.00' },
			seller_payable_breakdown: { total_refunded_amount: { currency_code: 'USD', value: '10.00' } }, status: 'COMPLETED',
			links: [{ href: `https://api.paypal.com/v2/payments/captures/CAP${p}`, rel: 'up' }] })],
		['paypal', pp('CHECKOUT.ORDER.APPROVED', { id: `ORDER${p}`, status: 'APPROVED', payer: { name: { given_name: 'Chipo', surname: 'Dube' },
			email_address: 'chipo@example.org', address: { country_code: 'ZW' } },
			purchase_units: [{ reference_id: 'default', custom_id: `DON-${p}`, amount: { currency_code: 'USD', value: '30.00' } }] })],
		['paypal', pp('PAYMENT.SALE.COMPLETED', { id: `SALE${p}`, amount: { total: '45.00', currency: 'USD' },
			transaction_fee: { value: '1.61', currency: 'USD' }, state: 'completed' })],
		// v1 refunds and reversals as PayPal's simulator sends them: negative totals, a reversal naming no sale
		['paypal', pp('PAYMENT.SALE.REFUNDED', { id: `SREF${n}`, sale_id: `SALE${p}`, amount: { total: '-0.01', currency: 'USD' },
			state: 'completed' })],
		['paypal', pp('PAYMENT.SALE.REVERSED', { id: `SREV${n}`, amount: { total: '-0.49', currency: 'USD' }, state: 'completed' })],
		['paypal', pp('PAYMENT.CAPTURE.REVERSED', { id: `REF${n}`, amount: { currency_code: 'USD', value: '30.00' }, status: 'COMPLETED',
			links: [{ href: `https://api.paypal.com/v2/payments/captures/CAP${p}`, rel: 'up' }] })],
		// a refund that failed gives nothing back
		['paypal', pp('PAYMENT.CAPTURE.REFUNDED', { id: `REF${n}`, amount: { currency_code: 'USD', value: '30.00' }, status: 'FAILED',
			links: [{ href: `https://api.paypal.com/v2/payments/captures/CAP${p}`, rel: 'up' }] }, 'refund')],
		// disputes of a capture: opened, under review, resolved for the seller or the buyer
		['paypal', pp('CUSTOMER.DISPUTE.CREATED', dispute, 'dispute')],
		['paypal', pp('CUSTOMER.DISPUTE.UPDATED', { ...dispute, dispute_life_cycle_stage: 'CHARGEBACK', status: 'UNDER_REVIEW' }, 'dispute')],
		['paypal', pp('CUSTOMER.DISPUTE.RESOLVED', { ...dispute, status: 'RESOLVED',
			dispute_outcome: { outcome_code: 'RESOLVED_SELLER_FAVOUR' } }, 'dispute')],
		['paypal', pp('CUSTOMER.DISPUTE.RESOLVED', { ...dispute, status: 'RESOLVED',
			dispute_outcome: { outcome_code: 'RESOLVED_BUYER_FAVOUR', amount_refunded: { currency_code: 'USD', value: '30.00' } } }, 'dispute')],
		['standard', { type: 'invoice.paid', timestamp: new Date().toISOString(), data: { id: `inv_fz_${n}`, amount: 2500, currency: 'USD' } }],
		['clinic', whatsapp({ contacts: [{ profile: { name: 'Tendai' }, wa_id: '263771234567' }], messages: [message] })],
		['clinic', whatsapp({ contacts: [{ profile: { name: 'Tendai' }, wa_id: '263771234567' }], messages: [{ ...message, type: 'interactive',
			interactive: { type: 'button_reply', button_reply: { id: 'USD', title: 'USD' } } }] })],
		['clinic', whatsapp({ statuses: [{ id: `wamid.OUT${p}`, status: 'failed', timestamp: String(t), recipient_id: '263771234567',
			errors: [{ code: 131026, title: 'Message undeliverable' }] }] })],
		// Paynow's status updates are forms (fields in order; the hash is added when signed)
		['pn_usd', { reference: `ORD-${p}`, paynowreference: String(900000 + p), amount: '25.00', status: 'Paid',
			pollurl: `https://www.paynow.co.zw/Interface/CheckPayment/?guid=fz${p}` }],
		['pn_usd', { reference: `ORD-${p}`, paynowreference: String(900000 + p), amount: '25.00', status: 'Refunded',
			pollurl: `https://www.paynow.co.zw/Interface/CheckPayment/?guid=fz${p}` }],
		['eversend', { eventType: 'transaction.success', transactionId: `EVS${n}`, transactionRef: `ORD-${p}`, type: 'collection',
			status: 'successful', amount: '50000', currency: 'UGX', fees: '1500', createdAt: new Date().toISOString(),
			customer: { phone: '+256772123456', name: 'Amina' } }],
		['eversend', { type: 'transaction.pending', data: { transactionId: `EVN${n}`, status: 'pending', amount: 1000, currency: 'KES' } }],
		['ledger', { event: 'charge.success', data: { id: n, reference: `ref_${p}`, amount: 250000, currency: 'NGN',
			paid_at: new Date().toISOString(), customer: { email: 'donor@example.org' } } }],
	];
}

// Hostile JSON values, as text (so that numbers beyond a double can be written)
const deep = (d) => `${'['.repeat(d)}1${']'.repeat(d)}`;
const HOSTILE = [
	'null', 'true', 'false', '0', '-0', '1', '-1', '0.5', '2147483648', '-2147483649', '9223372036854775808',
	'-9223372036854775809', '1e308', '1e309', '-1e309', '1e-400', '123456789012345678901234567890.123456789',
	'1e131071', '1e-16383', '""', '" "', '"0"', '"-1"', '"1e3"', '"12.345"', '"NaN"', '"Infinity"', '"null"', '"usd"',
	'"USD"', '"XYZ"', '"u\\u0073d"', '"\\uff35\\uff33\\uff24"', '"\\ud83d\\udcb8"', '"a\\nb\\tc"', '"\\\\"',
	`"${'x'.repeat(5000)}"`, '"2024-02-30T25:61:61Z"', '"1970-01-01T00:00:00Z"', '"9999-12-31T23:59:59Z"',
	'"294277-01-01T00:00:00Z"', '"-infinity"', '"infinity"', '"epoch"', '"now"', '"1718000000"', '"17180000000000000000"',
	'"+263771234567"', '"0771234567"', '"+"', '"abc@"', '"pi_fz_1"', '"paid"', '"succeeded"', '"payment"', '"refunded"',
	'[]', '[1,2]', '[[]]', '{}', '{"a":1}', '[null]', '{"":""}', deep(60), `{"a":${deep(30)}}`,
];

// Every place in a JSON value: [parent, key] pairs, the root's members included
function places(value, out = []) {
	if (value !== null && typeof value === 'object') {
		for (const key of Object.keys(value)) {
			out.push([value, key]);
			places(value[key], out);
		}
	}
	return out;
}

// A Paynow form of fields (values as text), with its hash: the values in order, then the key in
// lower case, SHA-512, upper-case hex
function paynowForm(fields) {
	const hash = createHash('sha512').update(Object.values(fields).join('') + secrets.paynow.toLowerCase())
		.digest('hex').toUpperCase();
	return new URLSearchParams({ ...fields, hash }).toString();
}

// A form's fields with 1 to 3 values replaced by hostile ones (as text), removed, or one added
function mutateForm(rnd, fields) {
	const out = { ...fields };
	const edits = 1 + Math.floor(rnd() * 3);
	for (let e = 0; e < edits; e++) {
		const keys = Object.keys(out);
		const key = keys[Math.floor(rnd() * keys.length)];
		const fragment = HOSTILE[Math.floor(rnd() * HOSTILE.length)];
		const r = rnd();
		if (r < 0.1 && keys.length > 1) delete out[key];
		else if (r < 0.15) out[`extra${e}`] = fragment;
		else out[key] = fragment.startsWith('"') ? JSON.parse(fragment) : fragment;
	}
	return out;
}

// A seed with 1 to 3 of its values replaced (or removed), as the text to sign
function mutate(rnd, seedValue) {
	const value = structuredClone(seedValue);
	const fragments = [];
	const edits = 1 + Math.floor(rnd() * 3);
	for (let e = 0; e < edits; e++) {
		const all = places(value);
		if (all.length === 0) break;
		const [parent, key] = all[Math.floor(rnd() * all.length)];
		const r = rnd();
		if (r < 0.1 && !Array.isArray(parent)) delete parent[key];
		else if (r < 0.15) parent[key] = [parent[key]];
		else {
			fragments.push(HOSTILE[Math.floor(rnd() * HOSTILE.length)]);
			parent[key] = `@@fz${fragments.length - 1}@@`;
		}
	}
	return JSON.stringify(value).replace(/"@@fz(\d+)@@"/g, (_, i) => fragments[Number(i)]);
}

describe('extraction fuzz', () => {
	let cluster;

	before(async () => {
		cluster = new Cluster();
		await cluster.init();
		execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'paypal.key', '-out', 'paypal.pem',
			'-days', '30', '-subj', '/CN=messageverificationcerts.paypal.com',
			'-addext', 'subjectAltName=DNS:messageverificationcerts.paypal.com'], { cwd: cluster.dir, stdio: 'pipe' });
		paypal.key = readFileSync(join(cluster.dir, 'paypal.key'), 'utf8');
		cluster.psqlVars(`
			SELECT payments.register_provider('paypal', 'paypal', jsonb_build_object('webhook_id', :'wid', 'verify_cert_chain', false));
			SELECT payments.add_certificate(:'url', :'pem');`,
		{ wid: paypal.webhookId, url: paypal.certUrl, pem: readFileSync(join(cluster.dir, 'paypal.pem'), 'utf8') });
		cluster.psqlVars(`
			SELECT payments.register_provider('stripe', 'stripe');
			SELECT payments.add_secret('stripe', :'stripe');
			SELECT payments.register_provider('standard', 'standard');
			SELECT payments.add_secret('standard', :'standard');
			SELECT payments.register_provider('pn_usd', 'paynow', '{"integration_id": "1201", "result_url": "https://clinic.example/webhooks/pn_usd",
				"return_url": "https://clinic.example/thanks", "auth_email": "donations@clinic.example", "currency": "USD"}');
			SELECT payments.add_secret('pn_usd', '3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977');
			SELECT payments.register_provider('clinic', 'meta', '{"verify_token": "fz", "access_token": "EAAfz",
				"phone_number_id": "106540352242922", "admin_numbers": ["+263779999999"], "paynow_providers": {"USD": "pn_usd"},
				"methods": ["ecocash", "onemoney", "card"], "purposes": ["Medicines"]}');
			SELECT payments.add_secret('clinic', :'meta');
			SELECT payments.register_provider('eversend', 'eversend');
			SELECT payments.add_secret('eversend', :'eversend');
			SELECT payments.register_provider('ledger', 'hmac', '{"header": "x-signature", "prefix": "sha256=",
				"event_id_path": "$.data.id", "event_type_path": "$.event"}');
			SELECT payments.add_secret('ledger', :'hmac');
			CREATE TABLE public.fz_in (n integer PRIMARY KEY, provider text, headers jsonb, body text, pristine boolean);
			CREATE TABLE public.fz_out (n integer PRIMARY KEY, http_status integer, outcome text, event_id text);
			-- each delivery in a transaction of its own, as the shim sends a lone one
			CREATE PROCEDURE public.fz_run() LANGUAGE plpgsql AS $$
			DECLARE
				d record;
			BEGIN
				-- the warnings of events stored but not applied (an unknown currency, say) are many
				PERFORM set_config('client_min_messages', 'error', false);
				FOR d IN SELECT * FROM public.fz_in ORDER BY n LOOP
					INSERT INTO public.fz_out
					SELECT d.n, r.http_status, r.outcome, r.event_id
					  FROM payments.ingest(d.provider, d.headers, decode(d.body, 'base64'), '127.0.0.1', 'fz-' || d.n) r;
					COMMIT;
				END LOOP;
			END $$;`, secrets);
	});

	after(() => cluster?.destroy());

	test(`${count} signed events with hostile values: 200 or 400 each, never an error or a crash`, (t) => {
		t.diagnostic(`seed ${seed} (PAYMENTS_FUZZ_SEED replays it), ${count} events`);
		const rnd = random(seed);
		const lines = [];
		for (let n = 1; n <= count; n++) {
			const all = seeds(rnd, n);
			const [provider, seedValue] = all[Math.floor(rnd() * all.length)];
			const pristine = rnd() < 0.05;
			let body;
			let headers;
			if (provider === 'pn_usd') {
				body = Buffer.from(paynowForm(pristine ? seedValue : mutateForm(rnd, seedValue)));
				headers = { 'content-type': 'application/x-www-form-urlencoded' };
			} else {
				body = Buffer.from(pristine ? JSON.stringify(seedValue) : mutate(rnd, seedValue));
				headers = { 'content-type': 'application/json', ...sign[provider](body, n) };
			}
			lines.push([n, provider, JSON.stringify(headers), body.toString('base64'), pristine].join('\t'));
		}
		const file = join(cluster.dir, 'fz_in.tsv');
		writeFileSync(file, `${lines.join('\n')}\n`);
		cluster.psql(`\\copy public.fz_in FROM '${file}'`);
		cluster.psql('CALL public.fz_run()');

		// every delivery answered, 200 or 400
		assert.equal(cluster.psql('SELECT count(*) FROM public.fz_out'), String(count));
		const odd = cluster.psql(`SELECT string_agg(o.n || ' ' || o.http_status || ' ' || o.outcome || ' ' || i.provider || ' '
				|| left(convert_from(decode(i.body, 'base64'), 'UTF8'), 400), E'\\n')
			FROM public.fz_out o JOIN public.fz_in i USING (n) WHERE o.http_status NOT IN (200, 400)`);
		assert.equal(odd, '', `answers other than 200 and 400 (seed ${seed}):\n${odd}`);
		// a 200 names a stored event; a 400 is recorded as invalid
		assert.equal(cluster.psql(`SELECT count(*) FROM public.fz_out o JOIN public.fz_in i USING (n)
			WHERE o.http_status = 200 AND NOT EXISTS (SELECT FROM payments.events e WHERE e.provider = i.provider AND e.event_id = o.event_id)`), '0',
		'every 200 names a stored event');
		assert.equal(cluster.psql(`SELECT count(*) FROM public.fz_out o WHERE o.http_status = 400 AND NOT EXISTS
			(SELECT FROM payments.rejections r WHERE r.request_id = 'fz-' || o.n AND r.outcome = 'invalid')`), '0',
		'every 400 is recorded as invalid');
		// the unmutated events (the seeds as providers send them) were taken: answered 200 ...
		const turnedAway = cluster.psql(`SELECT string_agg(i.n || ' ' || i.provider || ' ' || o.http_status || ' ' || o.outcome || ' '
				|| left(convert_from(decode(i.body, 'base64'), 'UTF8'), 400), E'\\n')
			FROM public.fz_in i JOIN public.fz_out o USING (n) WHERE i.pristine AND o.http_status <> 200`);
		assert.equal(turnedAway, '', `events as providers send them, answered other than 200 (seed ${seed}):\n${turnedAway}`);
		// ... and applied, ignored, or waiting only for news of their payment, never refused by a
		// rule meant for hostile values
		const refused = cluster.psql(`SELECT string_agg(i.n || ' ' || i.provider || ' ' || e.event_type || ': ' || e.last_error, E'\n')
			FROM public.fz_in i JOIN public.fz_out o USING (n) JOIN payments.events e ON e.provider = i.provider AND e.event_id = o.event_id
			WHERE i.pristine AND o.outcome <> 'duplicate' AND e.last_error IS NOT NULL AND e.last_error NOT LIKE 'payment % is not known yet'`);
		assert.equal(refused, '', `events as providers send them, refused (seed ${seed}):\n${refused}`);
		// what the payments became holds together: amounts finite and not negative (numeric takes
		// "NaN" and "Infinity"), a receipt for every collection paid, receipt numbers gapless per
		// prefix and day
		const broken = cluster.psql(`SELECT string_agg(p.provider || ' ' || p.provider_ref || ' ' || p.status || ' ' || coalesce(p.amount::text, 'null')
				|| ' refunded ' || coalesce(p.amount_refunded::text, 'null'), E'\n')
			FROM payments.payments p WHERE NOT (p.amount BETWEEN 0 AND 1e15) OR NOT (p.amount_refunded BETWEEN 0 AND 1e15)
			   OR NOT (p.fee BETWEEN 0 AND 1e15)
			   OR (p.kind = 'collection' AND p.paid_at IS NOT NULL AND NOT EXISTS (SELECT FROM payments.receipts r WHERE r.payment_id = p.id))`);
		assert.equal(broken, '', `payments that do not hold together (seed ${seed}):\n${broken}`);
		const gaps = cluster.psql(`SELECT string_agg(c.prefix || ' ' || c.day || ' ' || c.last_no || ': ' || coalesce((SELECT string_agg(r.receipt_no, ' ')
				FROM payments.receipts r WHERE r.receipt_no LIKE c.prefix || '-' || to_char(c.day, 'YYYYMMDD') || '-%'), 'none'), E'\n')
			FROM payments.receipt_counters c
			WHERE c.last_no <> (SELECT count(*) FROM payments.receipts r WHERE r.receipt_no LIKE c.prefix || '-' || to_char(c.day, 'YYYYMMDD') || '-%')`);
		assert.equal(gaps, '', `receipt numbers with gaps (seed ${seed}):\n${gaps}`);
		// the backends never crashed (a crash would also have ended the CALL)
		assert.doesNotMatch(readFileSync(join(cluster.dir, 'log'), 'utf8'), /terminated by signal|PANIC/);
		const summary = cluster.psql(`SELECT string_agg(x, ', ' ORDER BY x) FROM (SELECT i.provider || ' ' || o.http_status || ' ' || o.outcome
				|| ' ×' || count(*) AS x FROM public.fz_out o JOIN public.fz_in i USING (n) GROUP BY i.provider, o.http_status, o.outcome) s`);
		t.diagnostic(summary);
	});
});
