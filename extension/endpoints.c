/*
 * endpoints.c
 *		What the enabled outbound endpoints take, kept in backend memory,
 *		and the queueing of stored events for them (payments.enqueue_event).
 *
 * Every stored event and every payment transition asks at commit whether an
 * enabled endpoint takes it; most installations have none, and asking each
 * time with a query was 4% of a delivery's work.  The answer is read once and
 * kept in backend memory until a change to payments.endpoints (kept.c): which
 * endpoint takes what exactly is still decided by the queueing functions,
 * only the "none at all" case is answered here.
 */
#include "payments.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"

PG_FUNCTION_INFO_V1(enqueue_event);

/* The answer, as read at generation read_at (0: not yet) */
static uint64 read_at = 0;
static bool any_enabled;		/* some enabled endpoint (it may take transitions) */
static bool any_naming_types;	/* some enabled endpoint naming its types (it may take events) */
static SPIPlanPtr endpoints_plan = NULL;
static SPIPlanPtr enqueue_event_plan = NULL;

/* Reads whether any endpoint is enabled, unless kept (inside an SPI connection) */
static void
ReadEndpoints(void)
{
	uint64		now = KeptGeneration();
	bool		isnull;
	Datum		value;

	if (read_at == now)
		return;
	if (KeptRead(KeptPlan(&endpoints_plan,
						  "SELECT pg_catalog.count(*) > 0,"
						  "       pg_catalog.count(e.event_types) > 0"
						  "  FROM payments.endpoints e WHERE e.enabled",
						  0, NULL),
				 NULL, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read endpoints");
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	any_enabled = DatumGetBool(value);
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	any_naming_types = DatumGetBool(value);
	read_at = now;				/* stamped as of before the read: a change meanwhile moved it on */
}

/*
 * Whether some enabled endpoint may take payment transitions (any enabled
 * one: an endpoint without event types takes them all).  Inside an SPI
 * connection.
 */
bool
EndpointsMayTakeTransitions(void)
{
	ReadEndpoints();
	return any_enabled;
}

/*
 * SQL: payments.enqueue_event(), the deferred row trigger on payments.events:
 * at commit, an event received by this transaction is queued for the enabled
 * endpoints that name such types (payments.enqueue_raw_event), when there
 * are any.
 */
Datum
enqueue_event(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	TupleDesc	desc;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1];
	bool		isnull;

	CheckRowTrigger(fcinfo, "payments.enqueue_event()", "events", false);
	trigdata = (TriggerData *) fcinfo->context;
	if (!WrittenByThisTransaction(trigdata, "received_at"))
		return PointerGetDatum(NULL);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ReadEndpoints();
	if (any_naming_types)
	{
		desc = RelationGetDescr(trigdata->tg_relation);
		args[0] = heap_getattr(trigdata->tg_trigtuple, SPI_fnumber(desc, "id"), desc, &isnull);
		if (SPI_execute_plan(KeptPlan(&enqueue_event_plan,
									  "SELECT payments.enqueue_raw_event(e)"
									  "  FROM payments.events e WHERE e.id = $1",
									  1, argtypes),
							 args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not queue an event");
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
