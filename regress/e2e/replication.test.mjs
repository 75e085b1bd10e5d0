// Kept copies on a logical replication subscriber: a secret revoked on the publisher stops
// verifying on the subscriber at once, in the shim's long-lived connections too. PostgreSQL's
// apply worker fires row triggers only, never statement triggers (the initial copy fires both).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import Stripe from 'stripe';
import { Cluster, Shim, sleep, request, waitFor } from './harness.mjs';

const stripe = new Stripe('sk_test_not_used_offline');
const oldSecret = `whsec_${randomBytes(24).toString('hex')}`;
const newSecret = `whsec_${randomBytes(24).toString('hex')}`;
let cluster;
let shim;
let seq = 0;

// psql in the subscriber's database
const sub = (sql) => cluster.psql(sql, 'subscriber');

// A Stripe delivery signed with one secret, posted through the shim; resolves to the status.
async function post(secret) {
	seq += 1;
	const body = JSON.stringify({ id: `evt_repl_${seq}`, object: 'event', type: 'customer.created',
		created: Math.floor(Date.now() / 1000), data: { object: { id: `cus_${seq}` } } });
	const signature = stripe.webhooks.generateTestHeaderString({ payload: body, secret });
	const res = await request(shim.port, { method: 'POST', path: '/webhooks/shop', body,
		headers: { 'content-type': 'application/json', 'stripe-signature': signature } });
	return res.status;
}

before(async () => {
	cluster = new Cluster();
	await cluster.init();
	appendFileSync(join(cluster.data, 'postgresql.auto.conf'), 'wal_level = logical\n');
	cluster.stop();
	cluster.start();
	cluster.psqlVars(`SELECT payments.register_provider('shop', 'stripe');
		SELECT payments.add_secret('shop', :'s');
		CREATE PUBLICATION config FOR TABLE payments.providers, payments.secrets;
		SELECT pg_create_logical_replication_slot('config', 'pgoutput');`, { s: oldSecret });
	cluster.psql('CREATE DATABASE subscriber', 'postgres');
	sub('CREATE EXTENSION payments');
	// in the same cluster the slot is made beforehand (a subscription making its own would wait for itself)
	sub(`CREATE SUBSCRIPTION config CONNECTION 'host=${cluster.dir} port=${cluster.port} dbname=payments user=postgres'
		PUBLICATION config WITH (create_slot = false, slot_name = 'config')`);
	await waitFor(() => sub("SELECT count(*) FROM payments.secrets WHERE provider = 'shop'") === '1', 30000,
		'the initial copy');
	shim = new Shim(cluster.dsn.replace('dbname=payments', 'dbname=subscriber'), ['--threads', '1', '--rate', '0']);
	await shim.start();
});

after(async () => {
	if (shim) {
		assert.equal((await shim.stop()).code, 0);
		assert.deepEqual(shim.sanitizerReports(), []);
	}
	try { sub('DROP SUBSCRIPTION IF EXISTS config'); } catch { /* the cluster may be gone */ }
	cluster?.destroy();
});

test('a secret revoked on the publisher no longer verifies on the subscriber', async () => {
	assert.equal(await post(oldSecret), 200, 'verified, and kept by the shim\'s connection');
	assert.equal(await post(newSecret), 401, 'not a secret yet');
	cluster.psqlVars(`SELECT payments.add_secret('shop', :'s');
		SELECT payments.revoke_secret(id) FROM payments.secrets WHERE provider = 'shop' AND secret = :'old';`,
	{ s: newSecret, old: oldSecret });
	await waitFor(() => sub(`SELECT count(*) FILTER (WHERE revoked_at IS NOT NULL) || '/' || count(*)
		FROM payments.secrets WHERE provider = 'shop'`) === '1/2', 30000, 'the changes applied');
	await sleep(100);
	assert.equal(await post(oldSecret), 401, 'the revoked secret');
	assert.equal(await post(newSecret), 200, 'the new secret');
	// a provider's settings changed on the publisher: the subscriber's copy goes too
	cluster.psql(`SELECT payments.register_provider('shop', 'stripe', '{"tolerance": 1}')`);
	await waitFor(() => sub("SELECT settings ->> 'tolerance' FROM payments.providers WHERE name = 'shop'") === '1', 30000,
		'the settings applied');
	seq += 1;
	const body = JSON.stringify({ id: `evt_repl_${seq}`, object: 'event', type: 'customer.created' });
	const signature = stripe.webhooks.generateTestHeaderString({ payload: body, secret: newSecret,
		timestamp: Math.floor(Date.now() / 1000) - 30 });
	const res = await request(shim.port, { method: 'POST', path: '/webhooks/shop', body,
		headers: { 'content-type': 'application/json', 'stripe-signature': signature } });
	assert.equal(res.status, 401, 'thirty seconds old is outside the new tolerance of one');
});
