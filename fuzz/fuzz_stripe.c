/*
 * fuzz_stripe.c
 *		Stripe-Signature: "t=<seconds>,v1=<hex>..." over a body.
 *
 * Input: the header, a newline, the body.  Every input must give a
 * consistent verdict, and must not verify against a secret nothing is signed
 * with (harness.h); and for every body, a header we sign for it with the live
 * secret must verify (the parser accepts what Stripe sends), and not against
 * that other secret.
 */
#include "harness.h"

#define VECTOR_TIME 1718000000	/* PROVIDERS.md 1.x vector */

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *f[2];
	int			l[2];
	int			n = fuzz_split(data, size, 2, f, l);
	const char *body = n > 1 ? f[1] : "";
	int			bodylen = n > 1 ? l[1] : 0;
	text	   *keys[2] = {fuzz_text("whsec_test_secret"), fuzz_text("whsec_rotated_out")};
	SecretList	secrets = {2, keys};
	text	   *foreign_keys[1] = {fuzz_text(FUZZ_FOREIGN_WHSEC)};
	SecretList	foreign = {1, foreign_keys};
	Verdict		verdict = {0};
	char		prefix[32];
	MacPart		parts[2];
	unsigned char mac[32];
	char	   *header;

	VerifyStripe(body, bodylen, f[0], l[0], &secrets, PAYMENTS_DEFAULT_TOLERANCE,
				 fuzz_unix_time(VECTOR_TIME), &verdict);
	fuzz_check_verdict(&verdict, "stripe");
	memset(&verdict, 0, sizeof(verdict));
	VerifyStripe(body, bodylen, f[0], l[0], &foreign, PAYMENTS_DEFAULT_TOLERANCE,
				 fuzz_unix_time(VECTOR_TIME), &verdict);
	fuzz_check_refused(&verdict, "stripe (the input, a foreign secret)");

	/* a v0 item and a stale v1 beside the right one, as Stripe may send */
	parts[0].data = prefix;
	parts[0].len = snprintf(prefix, sizeof(prefix), "%d.", VECTOR_TIME);
	parts[1].data = body;
	parts[1].len = bodylen;
	ComputeHmac(HMAC_SHA256, VARDATA(keys[0]), VARSIZE(keys[0]) - VARHDRSZ, parts, 2, mac);
	header = psprintf("t=%d,v1=%064d,v1=%s,v0=abc", VECTOR_TIME, 0, EncodeHex(mac, sizeof(mac)));
	memset(&verdict, 0, sizeof(verdict));
	VerifyStripe(body, bodylen, header, strlen(header), &secrets, PAYMENTS_DEFAULT_TOLERANCE,
				 fuzz_unix_time(VECTOR_TIME), &verdict);
	FUZZ_ASSERT(verdict.valid, "stripe: a header signed for the body is refused: %s",
				verdict.detail);
	memset(&verdict, 0, sizeof(verdict));
	VerifyStripe(body, bodylen, header, strlen(header), &foreign, PAYMENTS_DEFAULT_TOLERANCE,
				 fuzz_unix_time(VECTOR_TIME), &verdict);
	fuzz_check_refused(&verdict, "stripe (signed with the live secret, a foreign secret)");

	fuzz_reset();
	return 0;
}
