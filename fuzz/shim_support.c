/*
 * shim_support.c
 *		Stand-ins for the libmicrohttpd calls the shim's parsing code makes,
 *		and a strict checker for the JSON the shim builds.
 *
 * The shim reads request headers only through MHD_get_connection_values_n,
 * which calls an iterator once per header with name, value and lengths (not
 * NUL-terminated by contract: here they are terminated by the next byte of
 * the input, never by NUL, to catch code that relies on it).
 */
#include <stdlib.h>
#include <string.h>

#include "shim_support.h"

/* The headers of the current input */
typedef struct FuzzHeader
{
	const char *name;
	size_t		name_len;
	const char *value;
	size_t		value_len;
} FuzzHeader;

static char *copy = NULL;
static FuzzHeader *headers = NULL;
static size_t nheaders = 0;
static size_t size_of_copy = 0;

/* Takes the headers of an input (shim_support.h) */
struct MHD_Connection *
fuzz_connection(const uint8_t *data, size_t size)
{
	size_t		start = 0;

	free(copy);
	free(headers);
	copy = malloc(size + 1);
	headers = malloc(sizeof(FuzzHeader) * (size + 1));
	if (copy == NULL || headers == NULL)
		abort();
	memcpy(copy, data, size);
	copy[size] = '\n';
	size_of_copy = size;
	nheaders = 0;
	for (size_t i = 0; i <= size; i++)
	{
		char	   *colon;
		size_t		len;

		if (copy[i] != '\n')
			continue;
		len = i - start;
		colon = memchr(copy + start, ':', len);
		headers[nheaders].name = copy + start;
		headers[nheaders].name_len = colon ? (size_t) (colon - (copy + start)) : len;
		headers[nheaders].value = colon ? colon + 1 : copy + i;
		headers[nheaders].value_len = colon ? (size_t) (copy + i - colon - 1) : 0;
		nheaders++;
		start = i + 1;
	}
	return (struct MHD_Connection *) headers;
}

/* Orders two byte strings: bytewise, the shorter first when one begins the other */
static int
CompareBytes(const char *a, size_t alen, const char *b, size_t blen)
{
	int			cmp = memcmp(a, b, alen < blen ? alen : blen);

	if (cmp == 0 && alen != blen)
		cmp = alen < blen ? -1 : 1;
	return cmp;
}

/* qsort comparator of header names already lower-cased */
static int
CompareLoweredNames(const void *a, const void *b)
{
	const FuzzHeader *x = a;
	const FuzzHeader *y = b;

	return CompareBytes(x->name, x->name_len, y->name, y->name_len);
}

/* How many names the current input's headers have, ASCII case aside */
size_t
fuzz_distinct_header_names(void)
{
	FuzzHeader *lowered = malloc(sizeof(FuzzHeader) * (nheaders + 1));
	char	   *names = malloc(size_of_copy + 1);
	size_t		distinct = 0;
	size_t		used = 0;

	if (lowered == NULL || names == NULL)
		abort();
	for (size_t i = 0; i < nheaders; i++)
	{
		for (size_t k = 0; k < headers[i].name_len; k++)
		{
			char		c = headers[i].name[k];

			names[used + k] = (c >= 'A' && c <= 'Z') ? (char) (c - 'A' + 'a') : c;
		}
		lowered[i].name = names + used;
		lowered[i].name_len = headers[i].name_len;
		used += headers[i].name_len;
	}
	qsort(lowered, nheaders, sizeof(FuzzHeader), CompareLoweredNames);
	for (size_t i = 0; i < nheaders; i++)
		if (i == 0 || CompareLoweredNames(&lowered[i - 1], &lowered[i]) != 0)
			distinct++;
	free(lowered);
	free(names);
	return distinct;
}

/* Stand-in: calls the iterator once per header of the current input, in order */
int
MHD_get_connection_values_n(struct MHD_Connection *connection, enum MHD_ValueKind kind,
							MHD_KeyValueIteratorN iterator, void *iterator_cls)
{
	size_t		i;

	(void) connection;			/* one connection at a time: the current input's */
	(void) kind;				/* the shim asks for request headers only */
	for (i = 0; i < nheaders; i++)
	{
		if (iterator != NULL &&
			iterator(iterator_cls, MHD_HEADER_KIND, headers[i].name, headers[i].name_len,
					 headers[i].value, headers[i].value_len) != MHD_YES)
			return (int) i + 1;
	}
	return (int) i;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629), or 0 */
static size_t
Utf8Length(const unsigned char *s, size_t n)
{
	size_t		len;
	unsigned int cp;

	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xE0) == 0xC0)
		len = 2, cp = s[0] & 0x1F;
	else if ((s[0] & 0xF0) == 0xE0)
		len = 3, cp = s[0] & 0x0F;
	else if ((s[0] & 0xF8) == 0xF0)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
		cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

/* Reads one JSON string at text[*pos]; false if it is not one */
static bool
ReadString(const char *text, size_t len, size_t *pos)
{
	const unsigned char *s = (const unsigned char *) text;
	size_t		i = *pos;

	if (i >= len || s[i] != '"')
		return false;
	i++;
	while (i < len && s[i] != '"')
	{
		if (s[i] < 0x20)
			return false;
		if (s[i] == '\\')
		{
			if (i + 1 >= len)
				return false;
			if (s[i + 1] == 'u')
			{
				if (i + 5 >= len || strspn(text + i + 2, "0123456789abcdefABCDEF") < 4 ||
					strncmp(text + i + 2, "0000", 4) == 0)	/* jsonb refuses \u0000 */
					return false;
				i += 6;
			}
			else if (strchr("\"\\/bfnrt", s[i + 1]) != NULL && s[i + 1] != '\0')
				i += 2;
			else
				return false;
		}
		else
		{
			size_t		n = Utf8Length(s + i, len - i);

			if (n == 0)
				return false;
			i += n;
		}
	}
	if (i >= len)
		return false;
	*pos = i + 1;
	return true;
}

/* True if the text is exactly one JSON string */
bool
fuzz_json_is_string(const char *text, size_t len)
{
	size_t		pos = 0;

	return ReadString(text, len, &pos) && pos == len;
}

/*
 * True if the text is exactly one JSON object whose values are strings;
 * sets *members to how many members it has.
 */
bool
fuzz_json_is_object_of_strings(const char *text, size_t len, size_t *members)
{
	size_t		pos = 1;

	*members = 0;
	if (len < 2 || text[0] != '{')
		return false;
	if (text[1] == '}')
		return len == 2;
	for (;;)
	{
		if (!ReadString(text, len, &pos) || pos >= len || text[pos++] != ':' ||
			!ReadString(text, len, &pos) || pos >= len)
			return false;
		++*members;
		if (text[pos] == '}')
			return pos + 1 == len;
		if (text[pos++] != ',')
			return false;
	}
}

/* A key of an object: where its JSON string starts in the text, and its length */
typedef struct KeySpan
{
	const char *at;
	size_t		len;
} KeySpan;

/* qsort comparator of key spans */
static int
CompareKeySpans(const void *a, const void *b)
{
	const KeySpan *x = a;
	const KeySpan *y = b;

	return CompareBytes(x->at, x->len, y->at, y->len);
}

/*
 * True if no two members of an object of strings (already checked with
 * fuzz_json_is_object_of_strings) have the same key as written; the shim
 * escapes one way only, so equal keys are written alike.
 */
bool
fuzz_json_keys_unique(const char *text, size_t len)
{
	KeySpan    *keys = malloc(sizeof(KeySpan) * (len / 2 + 1));
	size_t		n = 0;
	size_t		pos = 1;
	bool		unique = true;

	if (keys == NULL)
		abort();
	while (len > 2 && pos < len)
	{
		size_t		start = pos;

		if (!ReadString(text, len, &pos))
			abort();
		keys[n].at = text + start;
		keys[n++].len = pos - start;
		pos++;					/* the colon */
		if (!ReadString(text, len, &pos))
			abort();
		pos++;					/* the comma or the closing brace */
	}
	qsort(keys, n, sizeof(KeySpan), CompareKeySpans);
	for (size_t i = 1; i < n && unique; i++)
		unique = CompareKeySpans(&keys[i - 1], &keys[i]) != 0;
	free(keys);
	return unique;
}
