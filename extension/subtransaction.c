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
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

/*
 * Whether an error caught from a step is raised again rather than returned:
 * one that says nothing about the step's input.  Query cancels and
 * shutdowns (class 57) always are; when the step only reads data
 * (data_step), so are a lack of resources (class 53: out of memory, disk
 * full) and system errors (class 58: I/O), which must not make a good body
 * look malformed.  Program limits (class 54: nesting deeper than the stack)
 * are the input's doing and are returned.
 */
static bool
RaisedAgain(int sqlerrcode, bool data_step)
{
	int			category = ERRCODE_TO_CATEGORY(sqlerrcode);

	if (category == ERRCODE_OPERATOR_INTERVENTION)
		return true;
	return data_step &&
		(category == ERRCODE_INSUFFICIENT_RESOURCES || category == ERRCODE_SYSTEM_ERROR);
}

/*
 * Runs step(arg) in a subtransaction for the two functions below.  The
 * error is copied while the failed step's memory is still held, which may
 * be all there is (out of memory): the copy goes to a block kept for it, as
 * an error raised while copying would leave the subtransaction open and the
 * session refusing everything (25P02) until a ROLLBACK.
 */
static bool
RunStep(void (*step) (void *arg), void *arg, bool data_step, char **error,
		int *sqlerrcode)
{
	static MemoryContext error_copy_context = NULL;
	MemoryContext callercxt = CurrentMemoryContext;
	ResourceOwner callerowner = CurrentResourceOwner;
	/* an error zeroes these: a caller holding interrupts must find them held still */
	uint32		interrupt_holdoff = InterruptHoldoffCount;
	uint32		cancel_holdoff = QueryCancelHoldoffCount;
	volatile bool ok = true;

	if (error_copy_context == NULL)
		error_copy_context = AllocSetContextCreate(TopMemoryContext, "payments step error",
												   8192, 8192, 8192);
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

		InterruptHoldoffCount = interrupt_holdoff;
		QueryCancelHoldoffCount = cancel_holdoff;
		MemoryContextReset(error_copy_context);
		MemoryContextSwitchTo(error_copy_context);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callercxt);
		CurrentResourceOwner = callerowner;

		if (RaisedAgain(edata->sqlerrcode, data_step))
			ReThrowError(edata);
		*error = pstrdup(edata->message);
		*sqlerrcode = edata->sqlerrcode;
		MemoryContextReset(error_copy_context);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * Runs step(arg), which decodes untrusted data, in a subtransaction.  Returns
 * true when it completed, or false with *error set to the error's message
 * after rolling the step back.  The step allocates in the caller's memory
 * context, so what it returns survives.  Errors that say nothing about the
 * data are raised again (RaisedAgain).
 */
bool
RunInSubtransaction(void (*step) (void *arg), void *arg, char **error)
{
	int			sqlerrcode;

	return RunStep(step, arg, true, error, &sqlerrcode);
}

/*
 * RunInSubtransaction that also gives the error's SQLSTATE in *sqlerrcode
 * when the step failed, for a caller that tells the data's faults from its
 * own (a configured JSON path naming a variable that is never passed).
 */
bool
RunDataStepCode(void (*step) (void *arg), void *arg, char **error, int *sqlerrcode)
{
	return RunStep(step, arg, true, error, sqlerrcode);
}

/*
 * Runs step(arg), which may fail for any reason, in a subtransaction, as
 * RunInSubtransaction does, and also gives the error's SQLSTATE (as packed
 * by MAKE_SQLSTATE) in *sqlerrcode when it failed.  Only query cancels and
 * shutdowns are raised again: a caller keeping one delivery's failure from
 * the others' wants every other error returned.
 */
bool
RunInSubtransactionCode(void (*step) (void *arg), void *arg, char **error,
						int *sqlerrcode)
{
	return RunStep(step, arg, false, error, sqlerrcode);
}

/*
 * Runs steps(arg), a loop whose every step runs in a subtransaction of its
 * own (RunInSubtransactionCode), until it ends or a query cancel (a
 * statement timeout, while waiting for a lock above all) stops it.  The
 * cancel, raised again by a step whose subtransaction is already rolled
 * back, is returned, copied into cxt, so that the caller can commit what
 * the steps before it did and then raise it; NULL when the loop ended.  Any
 * other error is raised.
 */
ErrorData *
RunUntilCancel(void (*steps) (void *arg), void *arg, MemoryContext cxt)
{
	MemoryContext callercxt = CurrentMemoryContext;
	int			nest_level = GetCurrentTransactionNestLevel();
	ErrorData  *volatile cancel = NULL;

	PG_TRY();
	{
		steps(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		MemoryContextSwitchTo(callercxt);
		if (edata->sqlerrcode != ERRCODE_QUERY_CANCELED ||
			GetCurrentTransactionNestLevel() != nest_level)
			PG_RE_THROW();
		FlushErrorState();
		cancel = edata;
	}
	PG_END_TRY();
	return cancel;
}
