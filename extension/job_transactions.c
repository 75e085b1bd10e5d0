/*
 * job_transactions.c
 *		The transactions of the procedures that commit as they go
 *		(deliver_outbox, reconcile, initiate_payments): READ COMMITTED,
 *		whatever the caller's default.
 *
 * Receipt numbers are taken at commit by an UPDATE of the day's counter row
 * (receipts.c), which every paying transaction writes.  Under REPEATABLE READ
 * or SERIALIZABLE -- a database's or role's default_transaction_isolation,
 * which pg_cron's jobs inherit -- that UPDATE fails with 40001 whenever
 * another transaction paid on the same day since the snapshot was taken, and
 * the run's work rolls back with it, its records of failed attempts too.  So
 * a procedure first moves to READ COMMITTED (UseReadCommitted), and every
 * later commit of the run keeps it (SPI_commit_and_chain, COMMIT AND CHAIN in
 * payments.run_job).  Functions that cannot commit refuse the other levels
 * (RequireReadCommitted in ingest.c, and the SQL functions that apply events).
 */
#include "payments.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/guc.h"

/*
 * Runs the rest of a procedure at READ COMMITTED: when its transaction uses
 * another level, commits it (it is the one the CALL began, which has done
 * nothing yet) and sets the next one, as SET TRANSACTION ISOLATION LEVEL
 * READ COMMITTED would.  The caller has connected SPI non-atomically, and
 * then commits with SPI_commit_and_chain, which keeps the level.
 */
void
UseReadCommitted(void)
{
	if (!IsolationUsesXactSnapshot())
		return;
	SPI_commit();
	(void) set_config_option("transaction_isolation", "read committed", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SET, true, 0, false);
}
