/*
 * headers.c
 *		Reading request headers passed to ingest as a jsonb object.
 */
#include "payments.h"

/*
 * Returns the value of a header (name in lower case, as the shim sends it) and
 * its length, or NULL when the header is absent or not a string.  The value
 * points into the jsonb and is not NUL-terminated.
 */
const char *
HeaderValue(Jsonb *headers, const char *name, int *len)
{
	JsonbValue	value;

	if (headers == NULL || !JB_ROOT_IS_OBJECT(headers))
		return NULL;
	if (getKeyJsonValueFromContainer(&headers->root, name, strlen(name), &value) == NULL ||
		value.type != jbvString)
		return NULL;
	*len = value.val.string.len;
	return value.val.string.val;
}
