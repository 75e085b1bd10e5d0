// Generates Stripe webhook deliveries for bench/throughput.sh, signed just now with the official
// SDK (stripe.webhooks.generateTestHeaderString), one per line: "<Stripe-Signature>\t<body>\n".
//
//   node bench/gen-events.mjs OUT COUNT PREFIX SECRET [REDELIVERY_FRACTION]
//
// Each new event is a ~1.5 KB payment_intent.succeeded with its own event id (evt_PREFIX_N) and
// payment intent (pi_PREFIX_N). A fraction of the lines (default 0.10) re-deliver an event that
// appeared earlier in the file: the same body, signed again. Bodies hold no tab, newline or
// backslash, so the file also loads with COPY ... (FORMAT text).
import { createRequire } from 'node:module';
import { openSync, writeSync, closeSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', 'regress', 'package.json'));
const Stripe = require('stripe');
const stripe = new Stripe('sk_test_not_used_offline');

const [out, countArg, prefix, secret, fractionArg] = process.argv.slice(2);
const count = Number(countArg);
const fraction = fractionArg === undefined ? 0.10 : Number(fractionArg);
if (!out || !Number.isInteger(count) || count < 1 || !/^[A-Za-z0-9]+$/.test(prefix || '') || !secret) {
	console.error('usage: gen-events.mjs OUT COUNT PREFIX SECRET [REDELIVERY_FRACTION]');
	process.exit(2);
}

const now = Math.floor(Date.now() / 1000);
const currencies = ['usd', 'eur', 'gbp', 'ugx', 'kes'];
const methods = ['card', 'mobile_money', 'sepa_debit'];

function event(n) {
	const pi = `pi_${prefix}_${n}`;
	const amount = 500 + (n * 7919) % 200000;
	return JSON.stringify({
		id: `evt_${prefix}_${n}`,
		object: 'event',
		api_version: '2024-06-20',
		created: now - 60 + (n % 60),
		livemode: true,
		pending_webhooks: 1,
		request: { id: `req_${prefix}_${n}`, idempotency_key: `ik-${prefix}-${n}-7b1c4e2a-93f0-4d55-b1e0-5c0d2a7f9e31` },
		type: 'payment_intent.succeeded',
		data: {
			object: {
				id: pi,
				object: 'payment_intent',
				amount,
				amount_capturable: 0,
				amount_received: amount,
				application: null,
				application_fee_amount: null,
				automatic_payment_methods: { allow_redirects: 'always', enabled: true },
				canceled_at: null,
				cancellation_reason: null,
				capture_method: 'automatic',
				client_secret: `${pi}_secret_Zx9Kq2LmNp4RsTu6VwXy8Ab1Cd3Ef5Gh`,
				confirmation_method: 'automatic',
				created: now - 120,
				currency: currencies[n % currencies.length],
				customer: `cus_${prefix}${n % 100000}`,
				description: `Donation ${n} to the spring appeal`,
				invoice: null,
				last_payment_error: null,
				latest_charge: `ch_${prefix}_${n}`,
				livemode: true,
				metadata: { reference: `ORD-${prefix}-${n}`, donor_name: 'Amina Nakato', campaign: 'spring-appeal-2026', phone: '256772123456' },
				next_action: null,
				on_behalf_of: null,
				payment_method: `pm_${prefix}_${n}`,
				payment_method_configuration_details: { id: 'pmc_1PgT2bHq3KkR5sLm7NnOoPpQ', parent: null },
				payment_method_options: { card: { installments: null, mandate_options: null, network: null, request_three_d_secure: 'automatic' } },
				payment_method_types: [methods[n % methods.length]],
				processing: null,
				receipt_email: `donor${n % 50000}@example.org`,
				review: null,
				setup_future_usage: null,
				shipping: null,
				source: null,
				statement_descriptor: 'SPRING APPEAL',
				statement_descriptor_suffix: null,
				status: 'succeeded',
				transfer_data: null,
				transfer_group: null,
			},
		},
	});
}

const fd = openSync(out, 'w');
const bodies = [];
let chunk = [];
for (let i = 0; i < count; i++) {
	let body;
	if (bodies.length > 0 && Math.random() < fraction) {
		body = bodies[Math.floor(Math.random() * bodies.length)];
	} else {
		body = event(bodies.length + 1);
		bodies.push(body);
	}
	const header = stripe.webhooks.generateTestHeaderString({ payload: body, secret, timestamp: now });
	chunk.push(`${header}\t${body}\n`);
	if (chunk.length === 2000) { writeSync(fd, chunk.join('')); chunk = []; }
}
writeSync(fd, chunk.join(''));
closeSync(fd);
