/*
 * fuzz_meta.c
 *		Meta's X-Hub-Signature-256: "sha256=" and 64 lowercase hex digits.
 *
 * Input: the header, a newline, the body.  Every input must give a
 * consistent verdict and must not verify against a secret nothing is signed
 * with (harness.h); the signature we make for the body must verify, and not
 * against that other secret.
 */
#include "harness.h"

/* VerifyMeta is static to the kind's file */
#include "../extension/kind_meta.c"

#define VECTOR_SECRET "test_app_secret"	/* PROVIDERS.md section 4.2 */

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *f[2] = {"", ""};
	int			l[2] = {0, 0};
	text	   *keys[2] = {fuzz_text("an_older_secret"), fuzz_text(VECTOR_SECRET)};
	SecretList	secrets = {2, keys};
	text	   *foreign_keys[1] = {fuzz_text(FUZZ_FOREIGN_SECRET)};
	SecretList	foreign = {1, foreign_keys};
	Verdict		verdict = {0};
	MacPart		part;
	unsigned char mac[32];
	char	   *header;

	fuzz_split(data, size, 2, f, l);
	VerifyMeta(f[1], l[1], f[0], l[0], &secrets, &verdict);
	fuzz_check_verdict(&verdict, "meta");
	memset(&verdict, 0, sizeof(verdict));
	VerifyMeta(f[1], l[1], f[0], l[0], &foreign, &verdict);
	fuzz_check_refused(&verdict, "meta (the input, a foreign secret)");

	part.data = f[1];
	part.len = l[1];
	ComputeHmac(HMAC_SHA256, VECTOR_SECRET, strlen(VECTOR_SECRET), &part, 1, mac);
	header = psprintf("sha256=%s", EncodeHex(mac, sizeof(mac)));
	memset(&verdict, 0, sizeof(verdict));
	VerifyMeta(f[1], l[1], header, strlen(header), &secrets, &verdict);
	FUZZ_ASSERT(verdict.valid, "meta: a signature made for the body is refused: %s", verdict.detail);
	memset(&verdict, 0, sizeof(verdict));
	VerifyMeta(f[1], l[1], header, strlen(header), &foreign, &verdict);
	fuzz_check_refused(&verdict, "meta (signed with the live secret, a foreign secret)");

	fuzz_reset();
	return 0;
}
