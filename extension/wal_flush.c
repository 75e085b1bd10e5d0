/*
 * wal_flush.c
 *		payments.flush_wal: makes everything committed so far durable, for
 *		the shim's group commit.
 *
 * The shim commits a batch with synchronous_commit off and then, in the
 * same round trip, calls this function, and answers the batch's requests
 * only after it returns: each request is still answered only once the
 * commit that holds it is on disk (and on the synchronous standbys, where
 * synchronous_commit asks for them), the guarantee a synchronous commit
 * gives.  What changes is that the batch's locks -- above all the receipt
 * counter's, which every paying transaction takes -- are released as soon
 * as its commit record is written rather than after its flush, so that a
 * concurrent batch does not wait for that flush before it can number its
 * own receipts.  The flush covers everything written before it, not only
 * the caller's commit: a batch may have answered on what another batch
 * committed (an event already stored, a duplicate), and that answer must
 * not be given before that commit is durable too.  payments.ingest flushes
 * the same way before answering a duplicate (ingest.c), and the shim calls
 * it after each delivery stored alone: that commit's own wait for the
 * standbys may have been cancelled with only a warning.
 */
#include "payments.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "miscadmin.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/lwlock.h"
#include "utils/guc.h"
#include "utils/pg_lsn.h"

PG_FUNCTION_INFO_V1(flush_wal);

/*
 * Whether the synchronous standbys that synchronous_commit asks for have
 * confirmed WAL up to upto (or none is asked for), as SyncRepWaitForLSN
 * decides.  That wait ends on a cancel (a statement_timeout, say) with only
 * a warning, the transaction committed but perhaps not on the standbys, so
 * its caller looks again.
 */
static bool
StandbysConfirmed(XLogRecPtr upto)
{
	int			mode;
	bool		defined;
	bool		confirmed;

	if (!SyncRepRequested())
		return true;
	if (synchronous_commit == SYNCHRONOUS_COMMIT_REMOTE_WRITE)
		mode = SYNC_REP_WAIT_WRITE;
	else if (synchronous_commit == SYNCHRONOUS_COMMIT_REMOTE_APPLY)
		mode = SYNC_REP_WAIT_APPLY;
	else
		mode = SYNC_REP_WAIT_FLUSH;
	LWLockAcquire(SyncRepLock, LW_SHARED);
	/* until the checkpointer has read synchronous_standby_names, the GUC says */
	if (WalSndCtl->sync_standbys_status & SYNC_STANDBY_INIT)
		defined = (WalSndCtl->sync_standbys_status & SYNC_STANDBY_DEFINED) != 0;
	else
		defined = SyncRepStandbyNames != NULL && SyncRepStandbyNames[0] != '\0';
	confirmed = !defined || WalSndCtl->lsn[mode] >= upto;
	LWLockRelease(SyncRepLock);
	return confirmed;
}

/*
 * Flushes the WAL up to where it has been written when called, waits for
 * synchronous standbys as a commit would (under the caller's
 * synchronous_commit, raised from off to on for the transaction, as ingest
 * does: the shim's session, or its role or database, may set it off, and an
 * answer must not come before the standbys have what it answers for; local
 * is a choice to leave the standbys out, and is kept), and returns that
 * position.
 */
XLogRecPtr
FlushWrittenWal(void)
{
	XLogRecPtr	upto;

	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("recovery is in progress"),
				 errhint("payments.flush_wal() runs on the primary, where deliveries are stored.")));
	upto = GetXLogInsertRecPtr();
	/* just past a page header: no record has been written in that page yet */
	if (XLogSegmentOffset(upto, wal_segment_size) == SizeOfXLogLongPHD)
		upto -= SizeOfXLogLongPHD;
	else if (upto % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		upto -= SizeOfXLogShortPHD;
	XLogFlush(upto);
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		(void) set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	/* as at commit: the wait ends on a cancel with a warning, its queue left clean */
	HOLD_INTERRUPTS();
	SyncRepWaitForLSN(upto, true);
	RESUME_INTERRUPTS();
	/* ... and the caller's answer, unlike a commit's, can still be withheld */
	if (!StandbysConfirmed(upto))
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("the wait for the synchronous standbys was cancelled"),
				 errdetail("What was committed is on this server's disk but may not be on the standbys, so it is not acknowledged."),
				 errhint("Raise statement_timeout for the shim's role, or bring the standbys back.")));
	return upto;
}

/* SQL: payments.flush_wal() returns pg_lsn: FlushWrittenWal */
Datum
flush_wal(PG_FUNCTION_ARGS)
{
	PG_RETURN_LSN(FlushWrittenWal());
}
