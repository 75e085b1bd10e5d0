/*
 * harness.h
 *		Helpers for the harnesses of the extension's parsers.
 */
#ifndef FUZZ_HARNESS_H
#define FUZZ_HARNESS_H

#include "payments.h"

#include <stdio.h>
#include <stdlib.h>

#include "support.h"

/* A palloc'd text datum holding a C string */
static inline text *
fuzz_text(const char *s)
{
	size_t		len = strlen(s);
	text	   *t = palloc(VARHDRSZ + len);

	SET_VARSIZE(t, VARHDRSZ + len);
	memcpy(VARDATA(t), s, len);
	return t;
}

/* A timestamptz from unix seconds */
static inline TimestampTz
fuzz_unix_time(int64 seconds)
{
	return (seconds - (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY) * USECS_PER_SEC;
}

/* Aborts (a finding) unless the verdict is valid or a rejection with a reason and detail */
static inline void
fuzz_check_verdict(const Verdict *verdict, const char *what)
{
	if (verdict->valid ? verdict->reason != NULL
		: (verdict->reason == NULL || verdict->detail == NULL))
	{
		fprintf(stderr, "%s: inconsistent verdict (valid %d, reason %s)\n", what,
				verdict->valid, verdict->reason ? verdict->reason : "NULL");
		abort();
	}
}

/* Aborts with a message: a property the harness checks does not hold */
#define FUZZ_ASSERT(cond, ...) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, __VA_ARGS__); \
			fputc('\n', stderr); \
			abort(); \
		} \
	} while (0)

#endif							/* FUZZ_HARNESS_H */
