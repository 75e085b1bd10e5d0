/*
 * fuzz_encoding.c
 *		The strict text forms inside signature headers (encoding.c): unix
 *		seconds, lower-case hex, padded base64, and keys in base64 padded or
 *		not.
 *
 * Input: any bytes, read as each form.  Unix seconds must agree with strtoll
 * on digit strings; base64 that decodes must encode to text that decodes to
 * the same bytes; a key decodes as the strict decoder does where the input
 * is padded, and otherwise to the bytes whose encoding is the input with its
 * padding; hex encoding must give 2n lower-case hex digits.
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
		unsigned char *key;
		int			keylen = DecodeBase64Key(s, len, &key);

		if (len % 4 == 0)
			FUZZ_ASSERT(keylen == n && (n < 0 || memcmp(key, decoded, n) == 0),
						"encoding: a padded key decodes unlike strict base64");
		else if (keylen >= 0)
		{
			char	   *again = EncodeBase64(key, keylen);

			FUZZ_ASSERT(strlen(again) == (size_t) (len + 4 - len % 4) && memcmp(again, s, len) == 0 &&
						strspn(again + len, "=") == strlen(again + len),
						"encoding: an unpadded key decodes to bytes encoded otherwise");
		}
	}

	{
		char	   *hex = EncodeHex(data, len);

		FUZZ_ASSERT((int) strlen(hex) == len * 2 && IsLowerHex(hex, len * 2),
					"encoding: hex of %d bytes is not %d lower-case digits", len, len * 2);
	}

	fuzz_reset();
	return 0;
}
