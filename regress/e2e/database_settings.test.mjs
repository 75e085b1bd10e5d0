// The extension under a database's own settings: case mapping of codes, statuses and commands in
// ASCII whatever the database's collation (a Turkish ICU one maps i to İ and I to ı).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Cluster, PG_BIN } from './harness.mjs';

const STRIPE_SECRET = 'whsec_settings';
let db;

// Runs SQL in database dbname with psql variables (:'name'), returning the unaligned output.
function psql(dbname, sql, vars = {}) {
	const args = ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', db.dir, '-p', String(db.port),
		'-U', 'postgres', '-d', dbname];
	for (const [k, v] of Object.entries(vars)) args.push('-v', `${k}=${v}`);
	return execFileSync(join(PG_BIN, 'psql'), args, { input: sql, encoding: 'utf8' }).trim();
}

// Stores a signed Stripe payment_intent.succeeded through payments.ingest in database dbname
function stripePaid(dbname, id, currency, extra = {}) {
	const body = JSON.stringify({ id: `evt_${id}`, object: 'event', type: 'payment_intent.succeeded', created: 1718000000,
		data: { object: { id, object: 'payment_intent', amount: 50000, currency, payment_method_types: ['card'], ...extra } } });
	const t = Math.floor(Date.now() / 1000);
	const v1 = createHmac('sha256', STRIPE_SECRET).update(`${t}.${body}`).digest('hex');
	return psql(dbname, `SET client_min_messages = error; SET default_transaction_isolation = 'read committed';
		SELECT outcome FROM payments.ingest('shop', jsonb_build_object('stripe-signature', :'h'), convert_to(:'b', 'UTF8'));`,
	{ h: `t=${t},v1=${v1}`, b: body });
}

before(async () => {
	db = new Cluster();
	await db.init();
});

after(() => db?.destroy());

test('in a database of a Turkish ICU collation, codes, statuses, types and keywords are mapped in ASCII', () => {
	assert.notEqual(db.psql(`SELECT count(*) FROM pg_collation WHERE collprovider = 'i' AND collname = 'tr-TR-x-icu'`), '0',
		'this PostgreSQL has ICU collations');
	db.psql(`CREATE DATABASE turkish LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR' LOCALE 'C.UTF-8' TEMPLATE template0`, 'postgres');
	psql('turkish', `CREATE EXTENSION payments CASCADE;
		SELECT payments.register_provider('shop', 'stripe'); SELECT payments.add_secret('shop', '${STRIPE_SECRET}');`);
	// the database's own rules: what the fixes below must not follow
	assert.equal(psql('turkish', `SELECT upper('inr') || ' ' || lower('FAILED')`), 'İNR faıled');

	// a signed Stripe event in INR is applied (the currency in upper case is INR, not İNR), and the
	// e-mail address is the donor whatever the case of its letters
	assert.equal(stripePaid('turkish', 'pi_inr', 'inr', { receipt_email: 'ALICE@EXAMPLE.ORG' }), 'applied');
	assert.equal(psql('turkish', `SELECT e.state || '|' || p.status || '|' || p.currency || '|' || p.amount || '|' || p.donor_key
		FROM payments.events e, payments.payments p WHERE e.event_id = 'evt_pi_inr' AND p.provider_ref = 'pi_inr'`),
	'applied|paid|INR|500.00|email:alice@example.org');
	assert.equal(psql('turkish', `SELECT donor || '|' || currency_code || '|' || total
		FROM payments.top_donors('2024-06-01', '2024-07-01', 'inr')`), 'a***@e***.org|INR|500.00');
	assert.equal(psql('turkish', `SELECT payments.donor_key_of('alice@example.org') = payments.donor_key_of('ALICE@EXAMPLE.ORG')`), 't');
	// (its letters other than ASCII by the database's rules)
	assert.equal(psql('turkish', `SELECT payments.donor_key_of('ÉVA@EXAMPLE.ORG')`), 'email:éva@example.org');
	// a name is the donor's own text: lower case by the database's rules
	assert.equal(psql('turkish', `SELECT payments.donor_key_of('IRMAK')`), 'name:ırmak');
	assert.equal(psql('turkish', `SELECT payments.currency_exponent('idr')`), '2');

	// statuses, types and currencies the providers send in upper case
	assert.equal(psql('turkish', `SELECT c.status || '|' || c.kind || '|' || c.currency || '|' || c.amount
		FROM payments.eversend_change('{"transactionId": "t1", "status": "FAILED", "type": "COLLECTION",
			"currency": "idr", "amount": "5000"}', now()) c`), 'failed|collection|IDR|5000.00');
	assert.equal(psql('turkish', `SELECT c.kind FROM payments.eversend_change('{"data": {"transactionId": "t2",
		"status": "SUCCESSFUL", "currency": "USD", "amount": "1"}, "eventType": "COLLECTION.SUCCESS"}', now()) c`), 'collection');
	assert.equal(psql('turkish', `SELECT c.status || '|' || c.method FROM payments.paynow_change('{"paynowreference": "9",
		"status": "FAILED", "amount": "1.00", "paymentchannel": "INNBUCKS"}', '{}', now()) c`), 'failed|innbucks');
	assert.equal(psql('turkish', `SELECT payments.country_code('id')`), 'ID');
	// the chat's keywords (ZiG typed in capitals is the ZWG)
	assert.equal(psql('turkish', `SELECT payments.chat_currency_name('ZIG')`), 'ZWG');
	// Paynow's request hash lower-cases the integration key as its SDKs do (and as kind_paynow.c)
	const key = 'KEY-WITH-I';
	const hash = createHash('sha512').update(`1${'5.00'}${key.toLowerCase()}`).digest('hex').toUpperCase();
	assert.equal(psql('turkish', `SELECT payments.paynow_request('[["id", "1"], ["amount", "5.00"]]', :'k')`, { k: key }),
		`id=1&amount=5.00&hash=${hash}`);
	db.psql(`DROP DATABASE turkish`, 'postgres');
});

