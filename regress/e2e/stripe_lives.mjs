// Stripe event streams for the concurrency tests (payments, reliability): the lives a payment
// can have and the events that make them, with a seeded generator so a failure can be replayed.
// (Not a test file: node --test runs only *.test.mjs.)

// A deterministic pseudo-random generator (mulberry32), so a failure can be replayed.
export function random(seed) {
	let a = seed >>> 0;
	return () => {
		a = (a + 0x6D2B79F5) >>> 0;
		let t = a;
		t = Math.imul(t ^ (t >>> 15), t | 1);
		t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
		return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
	};
}

// The lives a payment can have, as Stripe event types with their objects.
export const lives = [
	['payment_intent.processing', 'payment_intent.succeeded'],
	['payment_intent.processing', 'payment_intent.payment_failed', 'payment_intent.succeeded'],
	['payment_intent.succeeded', 'charge.refunded:partial', 'charge.refunded:full'],
	['payment_intent.succeeded', 'charge.dispute.created', 'charge.dispute.closed:won'],
	['payment_intent.succeeded', 'charge.dispute.created', 'charge.dispute.closed:lost'],
	['payment_intent.processing', 'payment_intent.canceled'],
	['payment_intent.succeeded', 'charge.refunded:partial'],
	['payment_intent.payment_failed', 'payment_intent.canceled', 'payment_intent.succeeded'],
];

// The Stripe event body for step `kind` of payment `pi`, created at `created`.
export function stripeEvent(id, kind, pi, created) {
	const [type, variant] = kind.split(':');
	let object;
	if (type.startsWith('payment_intent.')) {
		object = { id: pi, object: 'payment_intent', amount: 2000, currency: 'usd', payment_method_types: ['card'] };
	} else if (type === 'charge.refunded') {
		object = { id: `ch_${pi}`, object: 'charge', payment_intent: pi, amount: 2000, currency: 'usd',
			amount_refunded: variant === 'full' ? 2000 : 500 };
	} else {
		object = { id: `dp_${pi}`, object: 'dispute', payment_intent: pi, status: variant ?? 'needs_response' };
	}
	return JSON.stringify({ id, object: 'event', type, created, data: { object } });
}
