/*-------------------------------------------------------------------------
 *
 * json.c
 *	  Growable buffers, JSON string escaping and the request header object.
 *
 * Every string written here comes out as valid UTF-8 JSON, whatever bytes
 * the client sent: invalid UTF-8 becomes U+FFFD.
 *
 * shim/json.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

/* U+FFFD REPLACEMENT CHARACTER in UTF-8 */
#define UTF8_REPLACEMENT	"\xEF\xBF\xBD"

/* One request header as MHD delivers it (not NUL-terminated by contract) */
typedef struct HeaderField
{
	const char *name;
	size_t		name_len;
	const char *value;
	size_t		value_len;
	size_t		arrival;		/* position among the request's headers */
	const char *key;			/* the name as its JSON key: escaped, lower case */
	size_t		key_len;
} HeaderField;

/* All request headers in arrival order */
typedef struct HeaderList
{
	HeaderField *items;
	size_t		count;
	size_t		cap;
	bool		failed;
} HeaderList;

/*
 * Set up an empty buffer.
 */
void
buf_init(StrBuf *buf)
{
	buf->data = NULL;
	buf->len = 0;
	buf->cap = 0;
	buf->failed = false;
}

/*
 * Release a buffer's memory and leave it empty.
 */
void
buf_free(StrBuf *buf)
{
	free(buf->data);
	buf_init(buf);
}

/*
 * Make room for "extra" more bytes plus a terminating NUL.  Returns false,
 * and marks the buffer failed, if that is impossible.
 */
bool
buf_reserve(StrBuf *buf, size_t extra)
{
	size_t		need;
	size_t		newcap;
	char	   *newdata;

	if (buf->failed)
		return false;
	if (extra >= SIZE_MAX / 2 - buf->len)
	{
		buf->failed = true;
		return false;
	}
	need = buf->len + extra + 1;
	if (need <= buf->cap)
		return true;

	newcap = (buf->cap == 0) ? 256 : buf->cap;
	while (newcap < need)
		newcap *= 2;
	newdata = realloc(buf->data, newcap);
	if (newdata == NULL)
	{
		buf->failed = true;
		return false;
	}
	buf->data = newdata;
	buf->cap = newcap;
	return true;
}

/*
 * Append raw bytes; the buffer stays NUL-terminated.
 */
void
buf_append(StrBuf *buf, const char *data, size_t len)
{
	if (!buf_reserve(buf, len))
		return;
	if (len > 0)
		memcpy(buf->data + buf->len, data, len);
	buf->len += len;
	buf->data[buf->len] = '\0';
}

/*
 * Append a NUL-terminated string.
 */
void
buf_append_str(StrBuf *buf, const char *str)
{
	buf_append(buf, str, strlen(str));
}

/*
 * Append printf-formatted text.  Nothing is formatted into a failed buffer
 * (a log line below the log level is one).
 */
void
buf_printf(StrBuf *buf, const char *fmt,...)
{
	va_list		ap;
	int			needed;

	if (buf->failed)
		return;
	va_start(ap, fmt);
	needed = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (needed < 0)
	{
		buf->failed = true;
		return;
	}
	if (!buf_reserve(buf, (size_t) needed))
		return;

	va_start(ap, fmt);
	vsnprintf(buf->data + buf->len, (size_t) needed + 1, fmt, ap);
	va_end(ap);
	buf->len += (size_t) needed;
}

/*
 * Length of the well-formed UTF-8 sequence starting at s (at most n bytes
 * available), or 0 if the bytes there are not well-formed (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF).
 */
static size_t
utf8_sequence_length(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80;
	unsigned char hi = 0xBF;
	size_t		len;
	size_t		i;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF)
	{
		len = 3;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	}
	else if (c >= 0xF0 && c <= 0xF4)
	{
		len = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	}
	else
		return 0;

	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
	{
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	}
	return len;
}

/*
 * Append the contents of a JSON string (without quotes).  Escapes '"', '\'
 * and control characters as \u00XX, replaces malformed UTF-8 bytes with
 * U+FFFD, and optionally lower-cases ASCII letters (header names).
 *
 * NUL also becomes U+FFFD: PostgreSQL's jsonb rejects \u0000.
 */
static void
json_append_escaped(StrBuf *buf, const char *str, size_t len, bool lower)
{
	const unsigned char *s = (const unsigned char *) str;
	size_t		i = 0;

	while (i < len && !buf->failed)
	{
		unsigned char c = s[i];
		size_t		seqlen;

		if (c == '"' || c == '\\')
		{
			buf_append(buf, "\\", 1);
			buf_append(buf, (const char *) &s[i], 1);
			i++;
		}
		else if (c == 0)
		{
			buf_append_str(buf, UTF8_REPLACEMENT);
			i++;
		}
		else if (c < 0x20)
		{
			buf_printf(buf, "\\u%04x", c);
			i++;
		}
		else if (c < 0x80)
		{
			char		ch = (char) c;

			if (lower && c >= 'A' && c <= 'Z')
				ch = (char) (c - 'A' + 'a');
			buf_append(buf, &ch, 1);
			i++;
		}
		else if ((seqlen = utf8_sequence_length(&s[i], len - i)) > 0)
		{
			buf_append(buf, (const char *) &s[i], seqlen);
			i += seqlen;
		}
		else
		{
			buf_append_str(buf, UTF8_REPLACEMENT);
			i++;
		}
	}
}

/*
 * Append a quoted JSON string.
 */
void
json_append_string(StrBuf *buf, const char *str, size_t len)
{
	buf_append(buf, "\"", 1);
	json_append_escaped(buf, str, len, false);
	buf_append(buf, "\"", 1);
}

/*
 * Append ,"key":"value" (or ,"key":null for a NULL value).  Keys are
 * literals from our own code and are not escaped.
 */
void
json_append_field(StrBuf *buf, const char *key, const char *value)
{
	buf_printf(buf, ",\"%s\":", key);
	if (value == NULL)
		buf_append_str(buf, "null");
	else
		json_append_string(buf, value, strlen(value));
}

/*
 * MHD iterator: remember one header in the HeaderList passed as cls.  The
 * value loses the spaces and tabs after it, which libmicrohttpd 0.9.75 keeps
 * (it drops those before): they are no part of it (RFC 9110, 5.5), and a
 * signature followed by one would not verify.
 */
static enum MHD_Result
collect_header(void *cls, enum MHD_ValueKind kind,
			   const char *key, size_t key_size,
			   const char *value, size_t value_size)
{
	HeaderList *list = cls;
	HeaderField *field;

	(void) kind;
	if (list->count == list->cap)
	{
		size_t		newcap = (list->cap == 0) ? 32 : list->cap * 2;
		HeaderField *items;

		items = realloc(list->items, newcap * sizeof(HeaderField));
		if (items == NULL)
		{
			list->failed = true;
			return MHD_NO;
		}
		list->items = items;
		list->cap = newcap;
	}
	field = &list->items[list->count++];
	field->name = key;
	field->name_len = key_size;
	if (value == NULL)
	{
		value = "";
		value_size = 0;
	}
	while (value_size > 0 && (value[value_size - 1] == ' ' || value[value_size - 1] == '\t'))
		value_size--;
	field->value = value;
	field->value_len = value_size;
	field->arrival = list->count - 1;
	return MHD_YES;
}

/*
 * qsort comparator of headers: by JSON key (bytewise; a key before the
 * longer keys it begins), then in arrival order.
 */
static int
compare_headers(const void *a, const void *b)
{
	const HeaderField *x = a;
	const HeaderField *y = b;
	int			cmp = memcmp(x->key, y->key, x->key_len < y->key_len ? x->key_len : y->key_len);

	if (cmp == 0 && x->key_len != y->key_len)
		cmp = x->key_len < y->key_len ? -1 : 1;
	if (cmp == 0 && x->arrival != y->arrival)
		cmp = x->arrival < y->arrival ? -1 : 1;
	return cmp;
}

/*
 * Do two headers have the same JSON key?
 */
static bool
same_header_key(const HeaderField *a, const HeaderField *b)
{
	return a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
}

/*
 * Build the JSON object of all request headers into "out": names
 * lower-cased, repeated names joined with ", " in arrival order (RFC 9110
 * section 5.3).  Headers are grouped by their escaped key, not their bytes:
 * names that escape alike (malformed UTF-8 becomes U+FFFD) would otherwise
 * be two equal keys, and jsonb keeps only the last.  They are sorted by key
 * first, so that the work grows as n log n with their number (jsonb keeps
 * no key order anyway).  Returns false on allocation failure.
 */
bool
json_build_headers(struct MHD_Connection *conn, StrBuf *out)
{
	HeaderList	list = {NULL, 0, 0, false};
	StrBuf		keys;
	size_t		i = 0;

	MHD_get_connection_values_n(conn, MHD_HEADER_KIND, collect_header, &list);

	/* every key escaped into one buffer, then pointed at once it no longer moves */
	buf_init(&keys);
	for (size_t k = 0; k < list.count; k++)
	{
		size_t		start = keys.len;

		json_append_escaped(&keys, list.items[k].name, list.items[k].name_len, true);
		list.items[k].key_len = keys.len - start;
	}
	list.failed = list.failed || keys.failed;
	for (size_t k = 0, at = 0; k < list.count && !list.failed; k++)
	{
		list.items[k].key = (keys.data != NULL) ? keys.data + at : "";
		at += list.items[k].key_len;
	}
	if (list.count > 1 && !list.failed)
		qsort(list.items, list.count, sizeof(HeaderField), compare_headers);

	buf_append(out, "{", 1);
	while (i < list.count && !list.failed)
	{
		size_t		first = i;

		if (first > 0)
			buf_append(out, ",", 1);
		buf_append(out, "\"", 1);
		buf_append(out, list.items[first].key, list.items[first].key_len);
		buf_append(out, "\":\"", 3);
		for (; i < list.count && same_header_key(&list.items[first], &list.items[i]); i++)
		{
			if (i > first)
				buf_append(out, ", ", 2);
			json_append_escaped(out, list.items[i].value,
								list.items[i].value_len, false);
		}
		buf_append(out, "\"", 1);
	}
	buf_append(out, "}", 1);

	buf_free(&keys);
	free(list.items);
	return !list.failed && !out->failed;
}
