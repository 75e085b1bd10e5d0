/*
 * row_triggers.c
 *		Checks shared by the extension's C row triggers.
 */
#include "payments.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/timestamp.h"

/* Checks that a trigger function was called as the row trigger it is meant to be */
void
CheckRowTrigger(FunctionCallInfo fcinfo, const char *name)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s must be called as an AFTER INSERT row trigger", name)));
}

/*
 * Reads a timestamptz column of a trigger's new row and tells whether it is
 * the transaction's start time (now()): the row was written by this
 * transaction, not copied back by a restore.
 */
bool
WrittenByThisTransaction(TriggerData *trigdata, const char *column)
{
	TupleDesc	desc = RelationGetDescr(trigdata->tg_relation);
	bool		isnull;
	Datum		at = heap_getattr(trigdata->tg_trigtuple, SPI_fnumber(desc, column), desc, &isnull);

	return !isnull && DatumGetTimestampTz(at) == GetCurrentTransactionStartTimestamp();
}
