/*
 * row_triggers.c
 *		Checks shared by the extension's C row triggers.
 */
#include "payments.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

/*
 * Checks that a trigger function was called as the row trigger it is meant
 * to be (AFTER INSERT, or AFTER UPDATE when on_update), on the table it
 * belongs to: the commit steps are SECURITY DEFINER, and on a table of the
 * caller's own they would act on rows made up there.
 */
void
CheckRowTrigger(FunctionCallInfo fcinfo, const char *name, const char *table, bool on_update)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!(on_update ? TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) : TRIGGER_FIRED_BY_INSERT(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s must be called as an AFTER %s row trigger", name, on_update ? "UPDATE" : "INSERT")));
	if (strcmp(RelationGetRelationName(trigdata->tg_relation), table) != 0 ||
		RelationGetNamespace(trigdata->tg_relation) != get_namespace_oid("payments", false))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s is a trigger of payments.%s only", name, table)));
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
