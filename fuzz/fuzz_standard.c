/*
 * fuzz_standard.c
 *		Standard Webhooks: webhook-id, webhook-timestamp and a
 *		webhook-signature list of "v1,<base64>" and "v1a,<base64>" items.
 *
 * Input: id, timestamp, signature header and body, separated by newlines.
 * Every input must give a consistent verdict, and must not verify against
 * secrets nothing is signed with (harness.h: a whsec_ key and an Ed25519
 * public key); and for every body, a v1 signature we make for it with the
 * live secret (beside items of other versions) must verify, and not against
 * those other secrets.
 */
#include "harness.h"

/* The published vector of PROVIDERS.md section 7 */
#define VECTOR_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define VECTOR_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define VECTOR_TIME 1614265330

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *f[4] = {"", "", "", ""};
	int			l[4] = {0, 0, 0, 0};
	text	   *keys[2] = {
		fuzz_text(VECTOR_SECRET),
		/* an Ed25519 public key (RFC 8032 test 1), for the v1a path */
		fuzz_text("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
	};
	SecretList	secrets = {2, keys};
	text	   *foreign_keys[2] = {fuzz_text(FUZZ_FOREIGN_WHSEC), fuzz_text(FUZZ_FOREIGN_PUBLIC_KEY)};
	SecretList	foreign = {2, foreign_keys};
	Verdict		verdict = {0};
	unsigned char *key;
	int			keylen;
	char		ts[32];
	MacPart		parts[3];
	unsigned char mac[32];
	char	   *header;

	fuzz_split(data, size, 4, f, l);
	VerifyStandard(f[3], l[3], f[0], l[0], f[1], l[1], f[2], l[2], &secrets,
				   PAYMENTS_DEFAULT_TOLERANCE, fuzz_unix_time(VECTOR_TIME), &verdict);
	fuzz_check_verdict(&verdict, "standard");
	memset(&verdict, 0, sizeof(verdict));
	VerifyStandard(f[3], l[3], f[0], l[0], f[1], l[1], f[2], l[2], &foreign,
				   PAYMENTS_DEFAULT_TOLERANCE, fuzz_unix_time(VECTOR_TIME), &verdict);
	fuzz_check_refused(&verdict, "standard (the input, foreign secrets)");

	keylen = DecodeBase64Strict(&VECTOR_SECRET[6], strlen(VECTOR_SECRET) - 6, &key);
	parts[0].data = VECTOR_ID;
	parts[0].len = strlen(VECTOR_ID);
	parts[1].data = ts;
	parts[1].len = snprintf(ts, sizeof(ts), ".%d.", VECTOR_TIME);
	parts[2].data = f[3];
	parts[2].len = l[3];
	ComputeHmac(HMAC_SHA256, key, keylen, parts, 3, mac);
	header = psprintf("v2,future v1,%s", EncodeBase64(mac, sizeof(mac)));
	snprintf(ts, sizeof(ts), "%d", VECTOR_TIME);
	memset(&verdict, 0, sizeof(verdict));
	VerifyStandard(f[3], l[3], VECTOR_ID, strlen(VECTOR_ID), ts, strlen(ts),
				   header, strlen(header), &secrets, PAYMENTS_DEFAULT_TOLERANCE,
				   fuzz_unix_time(VECTOR_TIME), &verdict);
	FUZZ_ASSERT(verdict.valid, "standard: a signature made for the body is refused: %s",
				verdict.detail);
	memset(&verdict, 0, sizeof(verdict));
	VerifyStandard(f[3], l[3], VECTOR_ID, strlen(VECTOR_ID), ts, strlen(ts),
				   header, strlen(header), &foreign, PAYMENTS_DEFAULT_TOLERANCE,
				   fuzz_unix_time(VECTOR_TIME), &verdict);
	fuzz_check_refused(&verdict, "standard (signed with the live secret, foreign secrets)");

	fuzz_reset();
	return 0;
}
