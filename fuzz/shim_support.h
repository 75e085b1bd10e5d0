/*
 * shim_support.h
 *		For the shim's harnesses: request headers served the way
 *		libmicrohttpd serves them, and a check that text is one JSON value.
 */
#ifndef FUZZ_SHIM_SUPPORT_H
#define FUZZ_SHIM_SUPPORT_H

#include "shim.h"

/*
 * Takes the request headers from data: lines "name: value" (a line without
 * ':' is a name with an empty value), as MHD hands them after parsing.
 * Returns a connection handle for MHD_get_connection_values_n; the headers
 * point into a copy freed by the next call.
 */
extern struct MHD_Connection *fuzz_connection(const uint8_t *data, size_t size);

/* How many names the current input's headers have, ASCII case aside */
extern size_t fuzz_distinct_header_names(void);

/*
 * True if text[0..len) is exactly one JSON string or object of strings, in
 * UTF-8; the object's number of members is set in *members.
 */
extern bool fuzz_json_is_string(const char *text, size_t len);
extern bool fuzz_json_is_object_of_strings(const char *text, size_t len, size_t *members);

/* True if no two members of such an object have the same key */
extern bool fuzz_json_keys_unique(const char *text, size_t len);

#endif							/* FUZZ_SHIM_SUPPORT_H */
