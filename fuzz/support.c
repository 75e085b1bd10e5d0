/*
 * support.c
 *		The few server facilities the extension's parsers use, for running
 *		them outside PostgreSQL under libFuzzer.
 *
 * The parsers are compiled unchanged against the server's headers.  What
 * they call from the server is provided here, honestly and small:
 *
 *  - palloc and friends allocate with malloc and remember each chunk, and
 *    fuzz_reset frees them all after an input, like the reset of the memory
 *    context a backend runs a call in; pfree frees at once, as in a backend.
 *  - ereport(ERROR) prints its message and aborts, where the server would
 *    longjmp to the caller's error handler: a parser of untrusted input must
 *    answer with a verdict, never raise, so an ERROR is a finding.  Messages
 *    below ERROR are dropped.
 *  - pg_verify_mbstr and hex_encode behave as the backend's do, built on
 *    pg_encoding_verifymbstr from libpgcommon.
 *
 * Everything else (stringinfo, psprintf, base64, UTF-8 tables, snprintf)
 * comes from PostgreSQL's own libpgcommon and libpgport.
 */
#include "postgres.h"

#include <stdio.h>
#include <stdlib.h>

#include "mb/pg_wchar.h"
#include "utils/memutils.h"
#include "utils/builtins.h"

#include "support.h"

/* One palloc'd chunk; the header keeps the payload MAXALIGN'ed */
typedef struct Chunk
{
	struct Chunk *prev;
	struct Chunk *next;
	Size		size;
	Size		pad;
} Chunk;

static Chunk *chunks = NULL;

/* The ereport in progress */
static int	error_level;
static char error_message[1024];

/* Links a new chunk in and returns its payload */
static void *
ChunkAlloc(Size size, bool zero)
{
	Chunk	   *c = zero ? calloc(1, sizeof(Chunk) + size) : malloc(sizeof(Chunk) + size);

	if (c == NULL)
	{
		fprintf(stderr, "fuzz support: out of memory allocating %zu bytes\n", (size_t) size);
		abort();
	}
	c->size = size;
	c->prev = NULL;
	c->next = chunks;
	if (chunks != NULL)
		chunks->prev = c;
	chunks = c;
	return c + 1;
}

/* Unlinks a chunk from the list */
static void
ChunkUnlink(Chunk *c)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		chunks = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
}

/* Refuses a request the server would refuse (MaxAllocSize) */
static void
CheckAllocSize(Size size)
{
	if (!AllocSizeIsValid(size))
		elog(ERROR, "invalid memory alloc request size %zu", (size_t) size);
}

/* palloc: an allocation freed by pfree or at the end of the input */
void *
palloc(Size size)
{
	CheckAllocSize(size);
	return ChunkAlloc(size, false);
}

/* palloc0: the same, zeroed */
void *
palloc0(Size size)
{
	CheckAllocSize(size);
	return ChunkAlloc(size, true);
}

/* palloc_extended: MCXT_ALLOC_ZERO is the only flag the code here uses */
void *
palloc_extended(Size size, int flags)
{
	return (flags & MCXT_ALLOC_ZERO) ? palloc0(size) : palloc(size);
}

/* pfree: frees a chunk at once, as in a backend */
void
pfree(void *pointer)
{
	Chunk	   *c = (Chunk *) pointer - 1;

	ChunkUnlink(c);
	free(c);
}

/* repalloc: resizes a chunk, which may move */
void *
repalloc(void *pointer, Size size)
{
	Chunk	   *c = (Chunk *) pointer - 1;
	Chunk	   *moved;

	CheckAllocSize(size);
	ChunkUnlink(c);
	moved = realloc(c, sizeof(Chunk) + size);
	if (moved == NULL)
	{
		fprintf(stderr, "fuzz support: out of memory reallocating %zu bytes\n", (size_t) size);
		abort();
	}
	moved->size = size;
	moved->prev = NULL;
	moved->next = chunks;
	if (chunks != NULL)
		chunks->prev = moved;
	chunks = moved;
	return moved + 1;
}

/* pstrdup: a palloc'd copy of a C string */
char *
pstrdup(const char *in)
{
	return pnstrdup(in, strlen(in));
}

/* pnstrdup: a palloc'd copy of at most len bytes, NUL-terminated */
char *
pnstrdup(const char *in, Size len)
{
	char	   *out;

	len = strnlen(in, len);
	out = palloc(len + 1);
	memcpy(out, in, len);
	out[len] = '\0';
	return out;
}

/* Frees every chunk still allocated: the end of one input */
void
fuzz_reset(void)
{
	while (chunks != NULL)
	{
		Chunk	   *next = chunks->next;

		free(chunks);
		chunks = next;
	}
}

/* errstart: begins an ereport; only ERROR and above go on to errfinish */
bool
errstart(int elevel, const char *domain)
{
	error_level = elevel;
	error_message[0] = '\0';
	return elevel >= ERROR;
}

/* errstart_cold: errstart for levels known at compile time to be ERROR or above */
bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

/* errcode: the SQLSTATE is not needed here */
int
errcode(int sqlerrcode)
{
	return 0;
}

/* Keeps the primary message of the ereport in progress */
static void
KeepMessage(const char *fmt, va_list args)
{
	vsnprintf(error_message, sizeof(error_message), fmt, args);
}

/* errmsg: keeps the message for errfinish */
int
errmsg(const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	KeepMessage(fmt, args);
	va_end(args);
	return 0;
}

/* errmsg_internal (elog): keeps the message for errfinish */
int
errmsg_internal(const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	KeepMessage(fmt, args);
	va_end(args);
	return 0;
}

/* errdetail: dropped, the message says enough for a finding */
int
errdetail(const char *fmt,...)
{
	return 0;
}

/* errhint: dropped likewise */
int
errhint(const char *fmt,...)
{
	return 0;
}

/* errfinish: an ERROR is a finding: print it and abort */
void
errfinish(const char *filename, int lineno, const char *funcname)
{
	if (error_level < ERROR)
		return;
	fprintf(stderr, "fuzz support: ereport(ERROR) at %s:%d (%s): %s\n",
			filename, lineno, funcname, error_message);
	abort();
}

/* pg_verify_mbstr: true if the whole string is valid in the encoding (no NUL), as the backend's */
bool
pg_verify_mbstr(int encoding, const char *mbstr, int len, bool noError)
{
	if (pg_encoding_verifymbstr(encoding, mbstr, len) == len)
		return true;
	if (!noError)
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("invalid byte sequence for encoding \"%s\"",
						pg_enc2name_tbl[encoding].name)));
	return false;
}

/* hex_encode: lower-case hex of the bytes, as the backend's (no terminator) */
uint64
hex_encode(const char *src, size_t len, char *dst)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++)
	{
		*dst++ = digits[(src[i] >> 4) & 0xF];
		*dst++ = digits[src[i] & 0xF];
	}
	return (uint64) len * 2;
}

/* Splits an input into newline-separated fields (support.h) */
int
fuzz_split(const uint8_t *data, size_t size, int max, const char **fields, int *lens)
{
	const char *p = (const char *) data;
	const char *end = p + size;
	int			n = 0;

	while (n < max)
	{
		const char *nl = (n < max - 1) ? memchr(p, '\n', end - p) : NULL;
		const char *field_end = nl ? nl : end;

		fields[n] = p;
		lens[n] = field_end - p;
		n++;
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	return n;
}

/* A NUL-terminated palloc'd copy of a field */
char *
fuzz_cstring(const char *s, int len)
{
	char	   *out = palloc(len + 1);

	memcpy(out, s, len);
	out[len] = '\0';
	return out;
}
