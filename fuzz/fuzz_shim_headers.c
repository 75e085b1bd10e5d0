/*
 * fuzz_shim_headers.c
 *		The shim's JSON building (shim/json.c): the object of request headers
 *		it passes to payments.ingest, and escaped strings.
 *
 * Input: header lines "name: value".  Whatever the bytes, the header object
 * must be one JSON object of strings in valid UTF-8 without \u0000 (what
 * jsonb accepts), with keys that differ (jsonb would keep only the last of
 * equal ones), one per header name at most (ASCII case aside: repeated names
 * are joined, and so are names that escape alike); and the whole input as a
 * string must be one JSON string.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim_support.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	StrBuf		out;
	StrBuf		str;
	size_t		members;

	buf_init(&out);
	if (!json_build_headers(fuzz_connection(data, size), &out))
		abort();
	if (!fuzz_json_is_object_of_strings(out.data, out.len, &members))
	{
		fprintf(stderr, "shim headers: not a JSON object of strings: %.*s\n", (int) out.len, out.data);
		abort();
	}
	if (!fuzz_json_keys_unique(out.data, out.len) || members > fuzz_distinct_header_names() ||
		(members == 0) != (fuzz_distinct_header_names() == 0))
	{
		fprintf(stderr, "shim headers: %zu members (keys %s) for %zu distinct names: %.*s\n",
				members, fuzz_json_keys_unique(out.data, out.len) ? "unique" : "repeated",
				fuzz_distinct_header_names(), (int) out.len, out.data);
		abort();
	}
	buf_free(&out);

	buf_init(&str);
	json_append_string(&str, (const char *) data, size);
	if (str.failed || !fuzz_json_is_string(str.data, str.len))
	{
		fprintf(stderr, "shim headers: not a JSON string: %.*s\n", (int) str.len, str.data);
		abort();
	}
	buf_free(&str);
	return 0;
}
