/*
 * fuzz_hmac.c
 *		The generic hmac kind: "<prefix><hex or base64 MAC>" in a configured
 *		header, optionally over "<timestamp header>.<body>".
 *
 * Input: one byte of configuration (bits 0-1: sha256, sha512, sha1, sha256;
 * bit 2: base64 rather than hex; bit 3: a signed timestamp header), then
 * the prefix, the signature header, the timestamp header and the body,
 * separated by newlines.  Every input must give a consistent verdict and
 * must not verify against a secret nothing is signed with (harness.h); the
 * signature we make for the body with that configuration must verify, and not
 * against that other secret.
 *
 * The kind reads headers with HeaderValue from the jsonb the shim builds;
 * here HeaderValue is a stand-in that serves the two headers of the input.
 */
#include "harness.h"

/* VerifyHmac is static to the kind's file */
#include "../extension/kind_hmac.c"

#define SECRET "It's a Secret to Everybody"	/* PROVIDERS.md section 8, GitHub */
#define SIGNED_AT 1718000000

/* The headers of one input, behind the Jsonb pointer the kind passes around */
typedef struct FuzzHeaders
{
	const char *signature;
	int			siglen;
	const char *timestamp;
	int			tslen;
} FuzzHeaders;

/* Stand-in for headers.c: the input's headers by (lower-case) name */
const char *
HeaderValue(Jsonb *headers, const char *name, int *len)
{
	const FuzzHeaders *h = (const FuzzHeaders *) headers;

	if (strcmp(name, "x-signature") == 0)
	{
		*len = h->siglen;
		return h->signature;
	}
	if (strcmp(name, "x-timestamp") == 0)
	{
		*len = h->tslen;
		return h->timestamp;
	}
	return NULL;
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const HmacAlgorithm algorithms[4] = {HMAC_SHA256, HMAC_SHA512, HMAC_SHA1, HMAC_SHA256};
	const char *f[4] = {"", "", "", ""};
	int			l[4] = {0, 0, 0, 0};
	text	   *keys[1] = {fuzz_text(SECRET)};
	SecretList	secrets = {1, keys};
	text	   *foreign_keys[1] = {fuzz_text(FUZZ_FOREIGN_SECRET)};
	SecretList	foreign = {1, foreign_keys};
	Verdict		verdict = {0};
	HmacConfig	cfg = {0};
	FuzzHeaders headers;
	char		ts[32];
	MacPart		parts[3];
	int			nparts = 0;
	unsigned char mac[64];
	char	   *header;

	if (size < 1)
		return 0;
	cfg.header = "x-signature";
	cfg.algorithm = algorithms[data[0] & 3];
	cfg.base64 = (data[0] & 4) != 0;
	cfg.timestamp_header = (data[0] & 8) ? "x-timestamp" : NULL;
	cfg.sign_timestamp = cfg.timestamp_header != NULL;
	cfg.tolerance = PAYMENTS_DEFAULT_TOLERANCE;
	fuzz_split(data + 1, size - 1, 4, f, l);
	cfg.prefix = fuzz_cstring(f[0], l[0]);
	headers = (FuzzHeaders) {f[1], l[1], f[2], l[2]};
	VerifyHmac(&cfg, f[3], l[3], (Jsonb *) &headers, &secrets, fuzz_unix_time(SIGNED_AT), &verdict);
	fuzz_check_verdict(&verdict, "hmac");
	memset(&verdict, 0, sizeof(verdict));
	VerifyHmac(&cfg, f[3], l[3], (Jsonb *) &headers, &foreign, fuzz_unix_time(SIGNED_AT), &verdict);
	fuzz_check_refused(&verdict, "hmac (the input, a foreign secret)");

	snprintf(ts, sizeof(ts), "%d", SIGNED_AT);
	if (cfg.sign_timestamp)
	{
		parts[nparts++] = (MacPart) {ts, strlen(ts)};
		parts[nparts++] = (MacPart) {".", 1};
	}
	parts[nparts++] = (MacPart) {f[3], l[3]};
	ComputeHmac(cfg.algorithm, SECRET, strlen(SECRET), parts, nparts, mac);
	header = psprintf("%s%s", cfg.prefix, cfg.base64 ? EncodeBase64(mac, HmacLength(cfg.algorithm))
					  : EncodeHex(mac, HmacLength(cfg.algorithm)));
	headers = (FuzzHeaders) {header, strlen(header), ts, strlen(ts)};
	memset(&verdict, 0, sizeof(verdict));
	VerifyHmac(&cfg, f[3], l[3], (Jsonb *) &headers, &secrets, fuzz_unix_time(SIGNED_AT), &verdict);
	FUZZ_ASSERT(verdict.valid, "hmac: a signature made for the body is refused: %s", verdict.detail);
	memset(&verdict, 0, sizeof(verdict));
	VerifyHmac(&cfg, f[3], l[3], (Jsonb *) &headers, &foreign, fuzz_unix_time(SIGNED_AT), &verdict);
	fuzz_check_refused(&verdict, "hmac (signed with the live secret, a foreign secret)");

	fuzz_reset();
	return 0;
}
