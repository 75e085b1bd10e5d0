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

/*
 * Secrets that nothing is signed with: no seed of the corpus, and no signature
 * a harness makes.  Every fuzzed input is verified again against one of them
 * alone, and so is the signature the harness makes with its live secret: a
 * verdict of valid would be a signature check that passes without the key (a
 * bypass).  FUZZ_FOREIGN_SECRET serves the HMAC kinds (whsec_ and a Paynow
 * integration key are spelled out in their harnesses); FUZZ_FOREIGN_PUBLIC_KEY
 * is an Ed25519 public key (Standard Webhooks' v1a) whose private key was
 * thrown away when it was made.
 */
#define FUZZ_FOREIGN_SECRET "fuzz-foreign-secret-3hQ2mt3MO6b5u1svPnFgQGs3U8Jh4"
#define FUZZ_FOREIGN_WHSEC "whsec_3hQ2mt3MO6b/5u+1svPnFgQGs3U8Jh/4"
#define FUZZ_FOREIGN_PUBLIC_KEY "whpk_2fmWREVgj5xK+I8C9bViiZnpBK1bw0H3jrOvtY18++Y="

/* Aborts unless the verdict is consistent and not valid: see FUZZ_FOREIGN_SECRET */
static inline void
fuzz_check_refused(const Verdict *verdict, const char *what)
{
	fuzz_check_verdict(verdict, what);
	FUZZ_ASSERT(!verdict->valid, "%s: valid under a secret nothing is signed with (a signature bypass)",
				what);
}

#endif							/* FUZZ_HARNESS_H */
