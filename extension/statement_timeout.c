/*
 * statement_timeout.c
 *		payments.restart_statement_timeout: statement_timeout's clock started
 *		again, for the passes of a long-running job.
 *
 * pg_cron runs a job's command as one statement, and statement_timeout
 * (often set for a whole database, as hardening against runaway queries)
 * is counted from its start.  The chat job is meant to run for most of a
 * minute, one short pass a second, so a timeout of a few seconds cancelled
 * it part-way through every minute, and donors then waited for the next
 * minute's run.  Each pass calls this function instead, and so gets the
 * whole timeout to itself, as a statement of its own would.
 */
#include "payments.h"

#include "storage/proc.h"
#include "utils/timeout.h"

PG_FUNCTION_INFO_V1(restart_statement_timeout);

/*
 * Count statement_timeout again from now, with its current value (or stop
 * counting when it is now 0), as at the start of a statement.  Only a
 * timeout running now is restarted: arming one the statement did not arm
 * would outlive the statement, whose end disarms only what it armed.
 */
Datum
restart_statement_timeout(PG_FUNCTION_ARGS)
{
	if (get_timeout_active(STATEMENT_TIMEOUT))
	{
		if (StatementTimeout > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);
		else
			disable_timeout(STATEMENT_TIMEOUT, false);
	}
	PG_RETURN_VOID();
}
