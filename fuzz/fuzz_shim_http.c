/*
 * fuzz_shim_http.c
 *		The shim's checks on what a client sends before anything reaches the
 *		database (shim/http.c): control characters in headers, header names,
 *		the Host headers, the X-Request-ID and traceparent it echoes and logs,
 *		the provider name in the path, the route, and Content-Length against
 *		--max-body.
 *
 * Input: header lines as in fuzz_shim_headers; each line's value is also
 * tried as a request id, a traceparent, a path and a Content-Length.  What
 * passes must be what the shim can safely echo in a header and a log line:
 * a request id of 1 to 128 characters of [A-Za-z0-9._:-], a provider name
 * of ^[a-z0-9][a-z0-9_-]{0,62}$, a traceparent whose first 55 characters
 * are lower-case hex fields (the shim keeps only those);
 * requests with a control character in a header are refused, and only
 * those; requests with a header name that is not an RFC 9110 token (empty,
 * or a byte other than ALPHA, DIGIT and !#$%&'*+-.^_`|~) are refused, and
 * only those; and so are HTTP/1.1 requests without exactly one Host header
 * and HTTP/1.0 requests with more than one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim_support.h"

/* the static checks are what is fuzzed */
#include "../shim/http.c"

ShimConfig	shim_config = {.max_body = 1048576};

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* True if s holds only bytes of the set */
static bool
OnlyOf(const char *s, const char *set)
{
	return strspn(s, set) == strlen(s);
}

/* Is the name of len bytes an RFC 9110 token, spelled out from its grammar? */
static bool
IsToken(const char *name, size_t len)
{
	static const char tchar[] = "!#$%&'*+-.^_`|~0123456789"
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

	for (size_t i = 0; i < len; i++)
	{
		if (memchr(tchar, name[i], sizeof(tchar) - 1) == NULL)
			return false;
	}
	return len > 0;
}

/* One value tried as each kind of client-supplied text */
static void
CheckValue(const char *value)
{
	unsigned long long length;
	bool		too_large = content_length_too_large(value, &length);
	char		path[256];

	if (valid_request_id(value) &&
		!(strlen(value) >= 1 && strlen(value) <= REQUEST_ID_MAX_LEN &&
		  OnlyOf(value, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")))
	{
		fprintf(stderr, "shim http: request id \"%s\" accepted\n", value);
		abort();
	}
	if (valid_provider(value) &&
		!(strlen(value) <= PROVIDER_MAX_LEN && strchr("_-", value[0]) == NULL &&
		  OnlyOf(value, "abcdefghijklmnopqrstuvwxyz0123456789_-")))
	{
		fprintf(stderr, "shim http: provider \"%s\" accepted\n", value);
		abort();
	}
	/* the shim keeps the first 55 characters; a later version may append "-..." fields */
	if (valid_traceparent(value) &&
		!(strlen(value) >= TRACEPARENT_LEN &&
		  strspn(value, "0123456789abcdef-") >= TRACEPARENT_LEN &&
		  (strlen(value) == TRACEPARENT_LEN ||
		   (strncmp(value, "00", 2) != 0 && value[TRACEPARENT_LEN] == '-'))))
	{
		fprintf(stderr, "shim http: traceparent \"%s\" accepted\n", value);
		abort();
	}
	if (!too_large && length > shim_config.max_body)
	{
		fprintf(stderr, "shim http: Content-Length \"%s\" (%llu) passed\n", value, length);
		abort();
	}
	snprintf(path, sizeof(path), "/webhooks/%s", value);
	(void) route_of(path, "POST");
	(void) route_of(value, "GET");
}

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct MHD_Connection *conn = fuzz_connection(data, size);
	bool		control = false;
	const uint8_t *line = data;
	const uint8_t *end = data + size;
	unsigned int hosts = 0;
	bool		names_valid = true;

	for (size_t i = 0; i < size; i++)
	{
		if (data[i] != '\n' && ((data[i] < 0x20 && data[i] != '\t') || data[i] == 0x7F))
			control = true;
	}
	if (headers_clean(conn) == control)
	{
		fprintf(stderr, "shim http: headers with%s a control character %s\n",
				control ? "" : "out", control ? "passed" : "refused");
		abort();
	}

	while (line <= end)
	{
		const uint8_t *nl = memchr(line, '\n', end - line);
		size_t		len = (nl ? nl : end) - line;
		const uint8_t *colon = memchr(line, ':', len);
		size_t		name_len = colon ? (size_t) (colon - line) : len;
		char	   *value = malloc(len + 1);

		if (value == NULL)
			abort();
		memcpy(value, line, len);
		value[len] = '\0';
		CheckValue(value);
		if (name_len == 4 && strncasecmp(value, "host", 4) == 0)
			hosts++;
		if (!IsToken(value, name_len))
			names_valid = false;
		free(value);
		if (nl == NULL)
			break;
		line = nl + 1;
	}
	if (header_names_valid(conn) != names_valid)
	{
		fprintf(stderr, "shim http: header names %s wrongly\n",
				names_valid ? "refused" : "passed");
		abort();
	}
	if ((host_error(conn, MHD_HTTP_VERSION_1_1) == NULL) != (hosts == 1) ||
		(host_error(conn, MHD_HTTP_VERSION_1_0) == NULL) != (hosts <= 1))
	{
		fprintf(stderr, "shim http: %u Host headers judged wrongly\n", hosts);
		abort();
	}
	return 0;
}
