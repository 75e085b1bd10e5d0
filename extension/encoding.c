/*
 * encoding.c
 *		Strict parsers and encoders for the text forms inside signature headers.
 */
#include "payments.h"

#include "common/base64.h"
#include "utils/builtins.h"

/*
 * Parses unix seconds written as 1 to 18 ASCII digits (no sign, no spaces):
 * the only form providers send, and small enough never to overflow.
 */
bool
ParseUnixSeconds(const char *s, int len, int64 *seconds)
{
	int64		value = 0;

	if (len < 1 || len > 18)
		return false;
	for (int i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		value = value * 10 + (s[i] - '0');
	}
	*seconds = value;
	return true;
}

/* True if s is made of lowercase hexadecimal digits only */
bool
IsLowerHex(const char *s, int len)
{
	for (int i = 0; i < len; i++)
	{
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	}
	return true;
}

/*
 * Decodes padded standard base64 (RFC 4648 section 4, no whitespace) into a
 * palloc'd buffer; returns the decoded length, or -1 if s is not valid.
 * Only the canonical encoding is valid: PostgreSQL's decoder reads on past
 * '=' padding ("QQ==QUJD" gives "AA") and ignores the padding bits, where
 * the senders' libraries stop or refuse, so what it decoded must encode back
 * to s exactly.
 */
int
DecodeBase64Strict(const char *s, int len, unsigned char **out)
{
	int			maxlen = pg_b64_dec_len(len);
	unsigned char *buf = palloc(maxlen + 1);
	char	   *again = NULL;
	int			n = -1;

	if (len % 4 == 0)
		n = pg_b64_decode(s, len, (char *) buf, maxlen);
	/* the exact padded length (pg_b64_enc_len is a bound) */
	if (n >= 0 && (n + 2) / 3 * 4 == len)
	{
		again = palloc(pg_b64_enc_len(n) + 1);
		if (pg_b64_encode((const char *) buf, n, again, pg_b64_enc_len(n)) != len ||
			memcmp(again, s, len) != 0)
			n = -1;
		pfree(again);
	}
	else
		n = -1;
	if (n < 0)
	{
		pfree(buf);
		return -1;
	}
	*out = buf;
	return n;
}

/*
 * Decodes a key written as standard base64 with or without its '=' padding:
 * the Standard Webhooks libraries (npm standardwebhooks, svix) accept
 * "whsec_" secrets either way, and some senders show them unpadded.  The
 * padding is restored and the result decoded strictly; returns the decoded
 * length, or -1 if s is not valid.
 */
int
DecodeBase64Key(const char *s, int len, unsigned char **out)
{
	char	   *whole;
	int			n;

	if (len % 4 == 0)
		return DecodeBase64Strict(s, len, out);
	if (len % 4 == 1 || memchr(s, '=', len) != NULL)
		return -1;
	whole = palloc(len + 4);
	memcpy(whole, s, len);
	memset(whole + len, '=', 4 - len % 4);
	n = DecodeBase64Strict(whole, len + 4 - len % 4, out);
	pfree(whole);
	return n;
}

/* Encodes bytes as padded standard base64, NUL-terminated, palloc'd */
char *
EncodeBase64(const unsigned char *data, int len)
{
	int			maxlen = pg_b64_enc_len(len);
	char	   *buf = palloc(maxlen + 1);
	int			n;

	n = pg_b64_encode((const char *) data, len, buf, maxlen);
	if (n < 0)
		elog(ERROR, "base64 encoding failed");
	buf[n] = '\0';
	return buf;
}

/* Encodes bytes as lowercase hexadecimal, NUL-terminated, palloc'd */
char *
EncodeHex(const unsigned char *data, int len)
{
	char	   *buf = palloc(len * 2 + 1);

	hex_encode((const char *) data, len, buf);
	buf[len * 2] = '\0';
	return buf;
}
