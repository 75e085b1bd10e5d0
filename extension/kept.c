/*
 * kept.c
 *		Rows of a few small tables kept in backend memory: when a kept copy is
 *		still good.
 *
 * The shim stores a batch of deliveries in one transaction, and each asks
 * the same questions of a few small tables: its provider and live secrets
 * (providers.c), the currencies of its amounts (currencies.c), whether any
 * outbound endpoint is enabled (endpoints.c).  Asked with a query per
 * transaction, they were 3.7% of PostgreSQL's work at 32 connections; they
 * change rarely, so what a backend read is kept across its transactions,
 * until a change to one of those tables may have made it stale.
 *
 * A generation counts those changes.  The triggers on the tables
 * (payments.forget_kept, for each row changed and for TRUNCATE) move it on in
 * the changing backend and register a relcache invalidation of the table
 * (once per transaction), which PostgreSQL sends to every backend of the
 * database at commit; every relcache invalidation moves it on (others
 * are rare: DDL, VACUUM and ANALYZE updating pg_class), as does the abort of a
 * subtransaction or of a transaction that changed a table (a copy may have
 * been read after the change it undid).  Before a copy is used, the
 * invalidations committed so far are taken in, and a copy is read with a
 * snapshot taken after that (KeptRead), not the statement's: so a lookup sees
 * every change committed before it.  The triggers fire always, also where
 * session_replication_role is replica: a logical replication subscriber's
 * apply worker, which fires row triggers only.
 *
 * KeptStamp serves what is kept for one transaction only (receipts.c); its
 * own count of changes ignores other relcache invalidations.
 */
#include "payments.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(forget_kept);

static uint64 generation = 1;	/* of copies kept across transactions */
static uint64 changes = 1;		/* of KeptStamp: changes and subtransaction aborts only */
static bool callbacks_registered = false;
static bool changed_in_transaction = false;	/* forget_kept fired in the current one */

/* Subtransaction callback: an aborted subtransaction may have undone a change that was read */
static void
ForgetOnSubAbort(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		generation++;
		changes++;
	}
}

/*
 * Transaction callback: a transaction that changed a kept table and does not
 * commit here (aborted, or prepared for a later decision) may leave copies of
 * what it changed.
 */
static void
ForgetOnAbort(XactEvent event, void *arg)
{
	if (!changed_in_transaction)
		return;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		generation++;
		changes++;
	}
	if (event != XACT_EVENT_PRE_COMMIT && event != XACT_EVENT_PARALLEL_PRE_COMMIT &&
		event != XACT_EVENT_PRE_PREPARE)
		changed_in_transaction = false;
}

/*
 * Relcache callback: some table changed (our triggers send one for each kept
 * table changed; the others are rare enough to be taken for one of them)
 */
static void
ForgetOnRelcacheInvalidation(Datum arg, Oid relid)
{
	generation++;
}

/* Registers the callbacks once per backend */
static void
RegisterCallbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterSubXactCallback(ForgetOnSubAbort, NULL);
	RegisterXactCallback(ForgetOnAbort, NULL);
	CacheRegisterRelcacheCallback(ForgetOnRelcacheInvalidation, (Datum) 0);
	callbacks_registered = true;
}

/*
 * The generation copies are read in now, after taking in the invalidations
 * committed so far.  A copy read at an earlier generation is stale.
 */
uint64
KeptGeneration(void)
{
	RegisterCallbacks();
	AcceptInvalidationMessages();
	return generation;
}

/*
 * Runs a kept plan read-only with a snapshot taken now, after the
 * invalidations were taken in, rather than the statement's (a change
 * committed since the statement began would be read as it was before, and
 * kept as current).  Returns SPI_execute_snapshot's result.
 */
int
KeptRead(SPIPlanPtr plan, Datum *args, long count)
{
	return SPI_execute_snapshot(plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot,
								true, false, count);
}

/*
 * Whether the copies read at *copies are still good.  If not, *copies is
 * stamped now, before the caller reads again (a change during the read makes
 * the new copies stale in turn), and the stale copies' memory is handed to
 * the current transaction, which frees it at its end: a caller may still use
 * what it was given.
 */
bool
KeptCopiesCurrent(KeptCopies *copies)
{
	uint64		now = KeptGeneration();

	if (copies->generation == now)
		return true;
	if (copies->context != NULL)
	{
		MemoryContextSetParent(copies->context, TopTransactionContext);
		copies->context = NULL;
	}
	copies->generation = now;
	return false;
}

/*
 * The memory of the current copies, made under TopMemoryContext when first
 * needed; what (a string constant) names them in memory context dumps.
 */
MemoryContext
KeptCopiesContext(KeptCopies *copies, const char *what)
{
	if (copies->context == NULL)
	{
		copies->context = AllocSetContextCreate(TopMemoryContext, "payments kept copies",
												ALLOCSET_SMALL_SIZES);
		MemoryContextSetIdentifier(copies->context, what);
	}
	return copies->context;
}

/* Whether what was read at stamp may still be used */
bool
KeptIsCurrent(const KeptStamp *stamp)
{
	return stamp->lxid == MyProc->lxid && stamp->generation == changes;
}

/* Whether stamp was taken in the current transaction (whose memory it may still use) */
bool
KeptInThisTransaction(const KeptStamp *stamp)
{
	return stamp->lxid == MyProc->lxid;
}

/* Stamps what is about to be read as read now */
void
KeptStampNow(KeptStamp *stamp)
{
	RegisterCallbacks();
	stamp->lxid = MyProc->lxid;
	stamp->generation = changes;
}

/*
 * SQL: payments.forget_kept(), the row (and TRUNCATE) trigger on the kept
 * tables: drops what this backend kept of them at once, and registers a
 * relcache invalidation of the table, sent to every backend if the change
 * commits.
 */
Datum
forget_kept(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("payments.forget_kept() must be called as a trigger")));
	RegisterCallbacks();
	CacheInvalidateRelcache(((TriggerData *) fcinfo->context)->tg_relation);
	changed_in_transaction = true;
	generation++;
	changes++;
	return PointerGetDatum(NULL);
}
