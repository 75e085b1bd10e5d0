/*
 * subtransaction.c
 *		Running a step that may raise an error without aborting the caller.
 *
 * Parsing a body, evaluating a configured JSON path and applying an event
 * can each fail on data we cannot trust; the delivery must still be answered
 * (400, or 200 "stored") and recorded.  The step runs in an internal
 * subtransaction, as PL/pgSQL's EXCEPTION blocks do.
 */
#include "payments.h"

#include "access/xact.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

/*
 * Runs step(arg) in a subtransaction.  Returns true when it completed, or
 * false with *error set to the error's message after rolling the step back.
 * The step allocates in the caller's memory context, so what it returns
 * survives.  Query cancels and shutdowns are raised again: they say nothing
 * about the data.
 */
bool
RunInSubtransaction(void (*step) (void *arg), void *arg, char **error)
{
	int			sqlerrcode;

	return RunInSubtransactionCode(step, arg, error, &sqlerrcode);
}

/*
 * RunInSubtransaction that also gives the error's SQLSTATE (as packed by
 * MAKE_SQLSTATE) in *sqlerrcode when the step failed.
 */
bool
RunInSubtransactionCode(void (*step) (void *arg), void *arg, char **error,
						int *sqlerrcode)
{
	MemoryContext callercxt = CurrentMemoryContext;
	ResourceOwner callerowner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(callercxt);
	PG_TRY();
	{
		step(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callercxt);
		CurrentResourceOwner = callerowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(callercxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callercxt);
		CurrentResourceOwner = callerowner;

		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		*error = pstrdup(edata->message);
		*sqlerrcode = edata->sqlerrcode;
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}
