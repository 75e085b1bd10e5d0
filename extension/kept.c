/*
 * kept.c
 *		Rows read once per transaction and kept for the rest of it: when a
 *		kept copy is still good.
 *
 * The shim stores a batch of deliveries in one transaction, and each asks
 * the same questions of a few small tables: its provider and live secrets
 * (providers.c), the currencies of its amounts (currencies.c), whether any
 * outbound endpoint is enabled (endpoints.c).  Each keeps what it read with a
 * stamp, the transaction and the generation it was read in.  A copy is good
 * for the transaction it was read in, until the generation moves on: when
 * this backend changes one of those tables (the statement trigger
 * payments.forget_kept) and when a subtransaction aborts (it may have undone
 * such a change after the copy was read).  Changes are rare, so any of them
 * drops every copy.  A change committed meanwhile by another session is seen
 * from this backend's next transaction, as if this one had read the rows
 * when it first needed them.
 */
#include "payments.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "storage/proc.h"

PG_FUNCTION_INFO_V1(forget_kept);

static uint64 generation = 1;
static bool callback_registered = false;

/* Subtransaction callback: an aborted subtransaction may have undone a change that was read */
static void
ForgetOnSubAbort(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		generation++;
}

/* Whether what was read at stamp may still be used */
bool
KeptIsCurrent(const KeptStamp *stamp)
{
	return stamp->lxid == MyProc->lxid && stamp->generation == generation;
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
	if (!callback_registered)
	{
		RegisterSubXactCallback(ForgetOnSubAbort, NULL);
		callback_registered = true;
	}
	stamp->lxid = MyProc->lxid;
	stamp->generation = generation;
}

/*
 * SQL: payments.forget_kept(), the statement trigger on the tables read once
 * per transaction: drops what this backend's transaction kept of them.
 */
Datum
forget_kept(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("payments.forget_kept() must be called as a trigger")));
	generation++;
	return PointerGetDatum(NULL);
}
