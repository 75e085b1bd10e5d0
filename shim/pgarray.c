/*-------------------------------------------------------------------------
 *
 * pgarray.c
 *	  One-dimensional arrays in PostgreSQL's binary format, for the batch
 *	  call's parameters (one array per column of the deliveries).
 *
 * The format is the one array_recv() reads: the number of dimensions, a
 * has-nulls flag, the element type's OID, then per dimension its length and
 * lower bound, then each element as a 32-bit length (-1 for NULL) and its
 * bytes in the element type's binary format -- for text and bytea the bytes
 * themselves, for jsonb a version byte (1) and the JSON text.  Integers are
 * in network byte order.  Binary elements reach the server unchanged: no
 * quoting, no hex.
 *
 * shim/pgarray.c
 *
 *-------------------------------------------------------------------------
 */
#include <arpa/inet.h>
#include <string.h>

#include "shim.h"

/* Offset of the has-nulls flag from the start of the array */
#define HASNULL_OFFSET	4

/* jsonb's binary format version */
#define JSONB_VERSION	1

/* Append a 32-bit integer in network byte order */
static void
append_int32(StrBuf *buf, uint32_t value)
{
	uint32_t	net = htonl(value);

	buf_append(buf, (const char *) &net, sizeof(net));
}

/*
 * Start an array of n elements of type elemtype (an OID) in buf, which
 * must hold nothing else.
 */
void
pgarray_start(StrBuf *buf, uint32_t elemtype, unsigned int n)
{
	append_int32(buf, 1);		/* dimensions */
	append_int32(buf, 0);		/* has nulls: set by the first NULL */
	append_int32(buf, elemtype);
	append_int32(buf, n);		/* length */
	append_int32(buf, 1);		/* lower bound */
}

/* Append an element of len bytes, or SQL NULL when data is NULL */
void
pgarray_add(StrBuf *buf, const char *data, size_t len)
{
	if (data == NULL)
	{
		append_int32(buf, UINT32_MAX);	/* -1 */
		if (!buf->failed)
			buf->data[HASNULL_OFFSET + 3] = 1;
		return;
	}
	append_int32(buf, (uint32_t) len);
	buf_append(buf, data, len);
}

/* Append a jsonb element from JSON text */
void
pgarray_add_jsonb(StrBuf *buf, const char *json)
{
	size_t		len = strlen(json);
	char		version = JSONB_VERSION;

	append_int32(buf, (uint32_t) (len + 1));
	buf_append(buf, &version, 1);
	buf_append(buf, json, len);
}
