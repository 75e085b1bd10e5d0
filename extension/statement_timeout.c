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
 *
 *		payments.untimed_network_waits: the jobs' network waits outside it.
 *
 * The deliver and reconcile jobs are one CALL each, and their requests wait
 * for receivers and providers (up to an endpoint's timeout_ms, 15 s by
 * default, or payments.reconcile_timeout).  A database-wide statement_timeout
 * below a receiver's response time cancelled every run before the answer:
 * the attempt was left to its lease, and after eight runs the item was dead,
 * sent eight times, with no failure recorded and the breaker never counting.
 * run_job turns this on: SendOutboundBatch then stops statement_timeout while
 * it waits on the network (those waits are bounded by the requests' own
 * timeouts and the leases) and starts it again, whole, when the answers are
 * in, for the statements that record them.
 */
#include "payments.h"

#include "access/xact.h"
#include "storage/proc.h"
#include "utils/timeout.h"

PG_FUNCTION_INFO_V1(restart_statement_timeout);
PG_FUNCTION_INFO_V1(untimed_network_waits);

/* Whether statement_timeout leaves out the network waits of SendOutboundBatch */
static bool network_waits_untimed = false;
static SubTransactionId untimed_since;	/* the subtransaction that turned it on */
static bool abort_callback_registered = false;

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

/* A transaction that aborts turns the waits' exemption off: a failed run leaves it to no other call */
static void
EndUntimedNetworkWaits(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		network_waits_untimed = false;
}

/*
 * So does a subtransaction rolled back that turned it on or held the one that
 * did: a run_job whose error a caller's EXCEPTION block caught
 */
static void
EndUntimedNetworkWaitsSub(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && mySubid <= untimed_since)
		network_waits_untimed = false;
}

/*
 * SQL: payments.untimed_network_waits(on boolean) -> void.  While on (until
 * turned off, or the transaction or subtransaction that turned it on aborts), statement_timeout does
 * not count the network waits of deliver_outbox, reconcile and
 * initiate_payments in this session.
 */
Datum
untimed_network_waits(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("on must be true or false")));
	if (!abort_callback_registered)
	{
		RegisterXactCallback(EndUntimedNetworkWaits, NULL);
		RegisterSubXactCallback(EndUntimedNetworkWaitsSub, NULL);
		abort_callback_registered = true;
	}
	network_waits_untimed = PG_GETARG_BOOL(0);
	untimed_since = GetCurrentSubTransactionId();
	PG_RETURN_VOID();
}

/*
 * Before a network wait: stops statement_timeout when the session's waits are
 * untimed and a timeout is running; returns whether it did (then
 * ResumeStatementTimeout must follow the wait).  Raises no error.
 */
bool
SuspendStatementTimeout(void)
{
	if (!network_waits_untimed || !get_timeout_active(STATEMENT_TIMEOUT))
		return false;
	disable_timeout(STATEMENT_TIMEOUT, false);
	return true;
}

/*
 * After the wait: statement_timeout counts again from now, whole, for the
 * statements that follow (as payments.restart_statement_timeout would).
 */
void
ResumeStatementTimeout(bool suspended)
{
	if (suspended && StatementTimeout > 0)
		enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);
}
