/*
 * fuzz_encoding.c
 *		The strict text forms inside signature headers (encoding.c): unix
 *		seconds, lower-case hex, padded base64.
 *
 * Input: any bytes, read as each form.  Unix seconds must agree with strtoll
 * on digit strings; base64 that decodes must encode to text that decodes to
 * the same bytes; hex encoding must give 2n lower-case hex digits.
 */
#include "harness.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *) data;
	int			len = size > 4096 ? 4096 : (int) size;
	int64		seconds;
	unsigned char *decoded;
	int			n;

	if (ParseUnixSeconds(s, len, &seconds))
	{
		char	   *copy = fuzz_cstring(s, len);

		FUZZ_ASSERT(strspn(copy, "0123456789") == (size_t) len && len <= 18,
					"encoding: \"%s\" taken as unix seconds", copy);
		FUZZ_ASSERT(seconds == strtoll(copy, NULL, 10), "encoding: \"%s\" read as %lld",
					copy, (long long) seconds);
	}

	n = DecodeBase64Strict(s, len, &decoded);
	if (n >= 0)
	{
		char	   *again = EncodeBase64(decoded, n);
		unsigned char *twice;

		FUZZ_ASSERT(DecodeBase64Strict(again, strlen(again), &twice) == n &&
					memcmp(decoded, twice, n) == 0, "encoding: base64 round trip differs");
	}

	{
		char	   *hex = EncodeHex(data, len);

		FUZZ_ASSERT((int) strlen(hex) == len * 2 && IsLowerHex(hex, len * 2),
					"encoding: hex of %d bytes is not %d lower-case digits", len, len * 2);
	}

	fuzz_reset();
	return 0;
}
