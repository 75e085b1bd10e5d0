// The extension under a database's own settings: case mapping of codes, statuses and commands in
// ASCII whatever the database's collation (a Turkish ICU one maps i to İ and I to ı); the same
// definitions and answers with standard_conforming_strings off (where '\s' is read as 's').
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

// Every definition of the extension's objects, by object: functions (pg_get_functiondef: the
// bodies written with RETURN are parsed at CREATE EXTENSION), constraints, domains, views,
// defaults, indexes, triggers and policies
function definitions(dbname) {
	return JSON.parse(psql(dbname, `SELECT json_object_agg(kind || ' ' || name, def) FROM (
		SELECT 'function' AS kind, p.oid::regprocedure::text AS name, pg_get_functiondef(p.oid) AS def
		  FROM pg_proc p WHERE p.pronamespace = 'payments'::regnamespace AND p.prokind IN ('f', 'p')
		UNION ALL
		SELECT 'constraint', coalesce(c.conrelid::regclass::text, c.contypid::regtype::text) || '.' || c.conname,
			   pg_get_constraintdef(c.oid)
		  FROM pg_constraint c WHERE c.connamespace = 'payments'::regnamespace
		UNION ALL
		SELECT 'domain', t.oid::regtype::text, coalesce(pg_get_expr(t.typdefaultbin, 0), '')
		  FROM pg_type t WHERE t.typnamespace = 'payments'::regnamespace AND t.typtype = 'd'
		UNION ALL
		SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid)
		  FROM pg_class c WHERE c.relnamespace = 'payments'::regnamespace AND c.relkind IN ('v', 'm')
		UNION ALL
		SELECT 'default', a.adrelid::regclass || '.' || a.adnum, pg_get_expr(a.adbin, a.adrelid)
		  FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid WHERE c.relnamespace = 'payments'::regnamespace
		UNION ALL
		SELECT 'index', i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
		  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'payments'::regnamespace
		UNION ALL
		SELECT 'trigger', t.tgrelid::regclass || '.' || t.tgname, pg_get_triggerdef(t.oid)
		  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		 WHERE c.relnamespace = 'payments'::regnamespace AND NOT t.tgisinternal
		UNION ALL
		SELECT 'policy', p.polrelid::regclass || '.' || p.polname,
			   coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' / ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
		  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = 'payments'::regnamespace) d`));
}

test('with standard_conforming_strings off, the extension installs the same definitions and answers the same', () => {
	// installed with the setting off: every definition is the one of a database with it on
	db.psql(`CREATE DATABASE scs_off TEMPLATE template0`, 'postgres');
	db.psql(`ALTER DATABASE scs_off SET standard_conforming_strings = off`, 'postgres');
	assert.equal(psql('scs_off', `SHOW standard_conforming_strings`), 'off');
	// the install script's own checks name psql's \ddp in their hints
	psql('scs_off', `CREATE SCHEMA payments; GRANT CREATE ON SCHEMA payments TO PUBLIC`);
	assert.throws(() => psql('scs_off', `CREATE EXTENSION payments CASCADE`),
		(e) => e.stderr.includes('HINT:  Default privileges on schemas give it to new ones (see \\ddp;'));
	psql('scs_off', `DROP SCHEMA payments; CREATE EXTENSION payments CASCADE`);
	const normal = definitions('payments');
	const off = definitions('scs_off');
	assert.ok(Object.keys(normal).filter((k) => k.startsWith('function ')).length > 100);
	assert.deepEqual(Object.keys(off).sort(), Object.keys(normal).sort());
	assert.deepEqual(Object.keys(off).filter((k) => off[k] !== normal[k]), []);
	// a donor's phone written with spaces, in that database whatever the session's setting
	for (const setting of ['off', 'on']) {
		assert.equal(psql('scs_off', `SET standard_conforming_strings = ${setting};
			SELECT payments.e164_digits('+263 77 123 4567') || '|' || payments.decimal_amount('12.50')`), '263771234567|12.50');
	}
	db.psql(`DROP DATABASE scs_off`, 'postgres');

	// the bodies read when called, in a session with the setting off (an analyst's, a DBA's)
	db.psql(`SELECT payments.register_provider('shop', 'stripe'); SELECT payments.add_secret('shop', '${STRIPE_SECRET}')`);
	assert.equal(stripePaid('payments', 'pi_formula', 'usd', { payment_method_types: [' =1+1'] }), 'applied');
	const off_ = (sql) => psql('payments', `SET standard_conforming_strings = off; ${sql}`);
	assert.equal(off_(`SELECT payments.e164_digits('+263 77 123 4567')`), '263771234567');
	// an amount of another shape is unknown, not a failed cast
	assert.equal(off_(`SELECT coalesce(c.amount::text, 'unknown') FROM payments.eversend_change('{"transactionId": "t3",
		"status": "successful", "type": "collection", "currency": "USD", "amount": "50x5"}', now()) c`), 'unknown');
	assert.equal(off_(`SELECT coalesce(c.amount::text, 'unknown') FROM payments.paynow_change('{"paynowreference": "10",
		"status": "Paid", "amount": "50x5"}', '{}', now()) c`), 'unknown');
	assert.equal(off_(`SELECT coalesce(c.amount::text, 'unknown') FROM payments.paynow_change('{"paynowreference": "11",
		"status": "Paid", "amount": "1,000.50"}', '{}', now()) c`), '1000.50');
	// the spreadsheet-formula guard of the daily report's CSV, the e-mail mask, the chat's trim
	const csv = off_(`SELECT payments.daily_report_csv('2024-06-10')`).split('\n');
	assert.ok(csv.includes(`2024-06-10,USD,' =1+1,1,500.00,0,500.00,1,0,0,0,0,0,1,LP-20240610-000001,LP-20240610-000001\r`),
		csv.join('\n'));
	assert.equal(off_(`SELECT payments.mask_email('jane@localhost') || ' ' || payments.mask_email('jane@example.org')`),
		'j***@l*** j***@e***.org');
	assert.equal(off_(`SELECT payments.chat_trim(' 50 ') || '|' || payments.chat_local_phone('+263 77 123 4567')`), '50|0771234567');
});
