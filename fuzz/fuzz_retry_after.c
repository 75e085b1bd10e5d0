/*
 * fuzz_retry_after.c
 *		ParseRetryAfter (extension/outbox_send.c): the Retry-After header of an
 *		endpoint's or a provider's answer, delta seconds or an HTTP date, which
 *		decides when an outbox item is tried again.
 *
 * Input: the header's value as libcurl hands it over (after "Retry-After:",
 * CR LF included).  The result is -1 or a number of seconds from 0 to
 * INT_MAX.  Trimmed as the function trims it (CR, LF and spaces at the end,
 * then spaces and tabs at the start), an empty value or one of 64 bytes or
 * more is -1; digits alone are their value as strtol reads them, except that
 * a value of a year or more may be cut short, to a year or more and never
 * more than was sent; anything else is -1 when libcurl reads no date in it,
 * else the seconds from now until that date (0 for a date past).
 */
#include "harness.h"

#include <errno.h>
#include <limits.h>

/* ParseRetryAfter is static to the file; libcurl's multi interface is linked but never called */
#include "../extension/outbox_send.c"

#define A_YEAR (86400L * 365)

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Seconds from now until at, as ParseRetryAfter clamps them */
static long
clamped(time_t at, time_t now)
{
	long		seconds = (long) (at - now);

	return seconds < 0 ? 0 : seconds > INT_MAX ? INT_MAX : seconds;
}

/* One input: see the header comment for what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *value = (const char *) data;
	size_t		start = 0;
	size_t		end = size;
	size_t		len;
	bool		digits = true;
	char		buf[64];
	time_t		before;
	time_t		after;
	int			result;

	before = time(NULL);
	result = ParseRetryAfter(value, size);
	after = time(NULL);
	FUZZ_ASSERT(result >= -1, "retry-after: %d is neither -1 nor a number of seconds", result);

	while (end > start && (value[end - 1] == '\r' || value[end - 1] == '\n' || value[end - 1] == ' '))
		end--;
	while (start < end && (value[start] == ' ' || value[start] == '\t'))
		start++;
	len = end - start;
	if (len == 0 || len >= sizeof(buf))
	{
		FUZZ_ASSERT(result == -1, "retry-after: %zu bytes once trimmed, but %d rather than -1",
					len, result);
		return 0;
	}
	memcpy(buf, value + start, len);
	buf[len] = '\0';
	for (size_t i = 0; i < len; i++)
		if (buf[i] < '0' || buf[i] > '9')
			digits = false;

	if (digits)
	{
		long		sent;

		errno = 0;
		sent = strtol(buf, NULL, 10);
		if (errno == ERANGE)
			sent = LONG_MAX;
		if (sent < A_YEAR)
			FUZZ_ASSERT(result == sent, "retry-after: \"%s\" is %ld seconds, read as %d",
						buf, sent, result);
		else
			FUZZ_ASSERT(result >= A_YEAR && result <= sent,
						"retry-after: \"%s\" (a year or more) read as %d", buf, result);
	}
	else
	{
		time_t		at = curl_getdate(buf, NULL);

		if (at < 0)
			FUZZ_ASSERT(result == -1, "retry-after: \"%s\" is no date, read as %d", buf, result);
		else
			FUZZ_ASSERT(result >= clamped(at, after) && result <= clamped(at, before),
						"retry-after: \"%s\" is %lld, read as %d seconds from now (%lld)",
						buf, (long long) at, result, (long long) before);
	}
	return 0;
}
