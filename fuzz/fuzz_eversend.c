/*
 * fuzz_eversend.c
 *		Eversend's X-Eversend-Signature: hex HMAC-SHA512 (or SHA-256 when so
 *		configured), either case, with an optional "sha512="/"sha256=" prefix.
 *
 * Input: one byte choosing the configured algorithm (odd: sha256), then the
 * header, a newline, the body.  Every input must give a consistent verdict,
 * and must not verify against a secret nothing is signed with (harness.h);
 * the signature we make for the body, upper-case and prefixed, must verify,
 * and not against that other secret.
 */
#include "harness.h"

/* VerifyEversend is static to the kind's file */
#include "../extension/kind_eversend.c"

#define SECRET "eversend_webhook_secret"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *f[2] = {"", ""};
	int			l[2] = {0, 0};
	text	   *keys[1] = {fuzz_text(SECRET)};
	SecretList	secrets = {1, keys};
	text	   *foreign_keys[1] = {fuzz_text(FUZZ_FOREIGN_SECRET)};
	SecretList	foreign = {1, foreign_keys};
	Verdict		verdict = {0};
	HmacAlgorithm algorithm;
	MacPart		part;
	unsigned char mac[64];
	char	   *hex;
	char	   *header;

	if (size < 1)
		return 0;
	algorithm = (data[0] & 1) ? HMAC_SHA256 : HMAC_SHA512;
	fuzz_split(data + 1, size - 1, 2, f, l);
	VerifyEversend(f[1], l[1], f[0], l[0], &secrets, algorithm, &verdict);
	fuzz_check_verdict(&verdict, "eversend");
	memset(&verdict, 0, sizeof(verdict));
	VerifyEversend(f[1], l[1], f[0], l[0], &foreign, algorithm, &verdict);
	fuzz_check_refused(&verdict, "eversend (the input, a foreign secret)");

	part.data = f[1];
	part.len = l[1];
	ComputeHmac(algorithm, SECRET, strlen(SECRET), &part, 1, mac);
	hex = EncodeHex(mac, HmacLength(algorithm));
	for (char *c = hex; *c; c++)
		*c = pg_toupper((unsigned char) *c);
	header = psprintf("%s=%s", AlgorithmName(algorithm), hex);
	memset(&verdict, 0, sizeof(verdict));
	VerifyEversend(f[1], l[1], header, strlen(header), &secrets, algorithm, &verdict);
	FUZZ_ASSERT(verdict.valid, "eversend: a signature made for the body is refused: %s",
				verdict.detail);
	memset(&verdict, 0, sizeof(verdict));
	VerifyEversend(f[1], l[1], header, strlen(header), &foreign, algorithm, &verdict);
	fuzz_check_refused(&verdict, "eversend (signed with the live secret, a foreign secret)");

	fuzz_reset();
	return 0;
}
