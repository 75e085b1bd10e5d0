/*
 * verdict.c
 *		Building the verdict of a signature check, shared by every scheme.
 */
#include "payments.h"

/* Marks a verdict as a rejection with a stable reason code and a detail */
void
VerdictReject(Verdict *verdict, const char *reason, const char *fmt,...)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	verdict->valid = false;
	verdict->reason = reason;
	verdict->detail = buf.data;
}

/*
 * Rejects a verdict whose signed timestamp is more than tolerance seconds away
 * from now, in either direction: a replayed old delivery and a timestamp from
 * the future are both refused.
 */
void
CheckTolerance(Verdict *verdict, int64 signed_at, TimestampTz now, int tolerance)
{
	int64		now_seconds = (int64) (now / USECS_PER_SEC) +
		(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;

	if (now_seconds - signed_at > tolerance)
		VerdictReject(verdict, "timestamp_too_old",
					  "signed timestamp is %lld s old, tolerance is %d s",
					  (long long) (now_seconds - signed_at), tolerance);
	else if (signed_at - now_seconds > tolerance)
		VerdictReject(verdict, "timestamp_too_new",
					  "signed timestamp is %lld s in the future, tolerance is %d s",
					  (long long) (signed_at - now_seconds), tolerance);
}
