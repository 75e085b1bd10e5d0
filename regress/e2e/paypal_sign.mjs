// PayPal's webhook signature, made as PayPal makes it, for the e2e tests: RSA-SHA256 over
// "transmission_id|transmission_time|webhook_id|crc32(body)" (PROVIDERS.md section 2).
import { createSign, randomUUID } from 'node:crypto';

// IEEE CRC-32 (reflected 0xEDB88320, init and xorout 0xFFFFFFFF), as an unsigned number.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
	let c = n;
	for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
	return c >>> 0;
});
export function crc32(buf) {
	let c = 0xffffffff;
	for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
	return (c ^ 0xffffffff) >>> 0;
}

// PayPal's headers for a body (lower case, as the shim passes them), signed with key (PEM) for
// the webhook id, naming certUrl; a new transmission id and the time now unless given.
export function signPaypal(body, key, certUrl, { webhookId, requestId, tid = randomUUID(),
	time = new Date().toISOString().replace(/\.\d+Z$/, 'Z') }) {
	const signer = createSign('RSA-SHA256');
	signer.update(`${tid}|${time}|${webhookId}|${crc32(Buffer.from(body))}`);
	const headers = {
		'paypal-transmission-id': tid,
		'paypal-transmission-time': time,
		'paypal-transmission-sig': signer.sign(key, 'base64'),
		'paypal-cert-url': certUrl,
		'paypal-auth-algo': 'SHA256withRSA',
		'paypal-auth-version': 'v2',
	};
	if (requestId) headers['x-request-id'] = requestId;
	return headers;
}
