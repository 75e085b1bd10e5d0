/*
 * transitions.c
 *		What a payment transition does at the commit that recorded it
 *		(payments.transition_committed).
 *
 * In this order: the payment's receipt number when it became paid
 * (receipts.c: taken at commit, so that the counter's lock is held only from
 * just before the commit to the end of its WAL flush; the first such step of
 * a transaction that paid several numbers them all, taking the counters in
 * (prefix, day) order); the outbox, when an
 * enabled endpoint takes the transition (payments.enqueue_transition); the
 * donor's WhatsApp message, for a chat donation
 * (payments.chat_payment_notice).  So the outbox and the thank-you carry the
 * number.
 */
#include "payments.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(transition_committed);
PG_FUNCTION_INFO_V1(paid_late_committed);

static SPIPlanPtr enqueue_plan = NULL;
static SPIPlanPtr chat_notice_plan = NULL;

/*
 * Runs a kept statement that takes the transition's id and calls a step with
 * the transition's row when its condition holds.
 */
static void
RunTransitionStep(SPIPlanPtr *plan, const char *sql, Datum transition_id)
{
	Oid			argtypes[1] = {INT8OID};

	if (SPI_execute_plan(KeptPlan(plan, sql, 1, argtypes), &transition_id, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run a step of a committed transition");
}

/*
 * SQL: payments.transition_committed(), the deferred row trigger on
 * payments.status_history.  Only a transition recorded by this transaction:
 * the rows a restore copies back were numbered, queued and told when first
 * recorded, and their receipts and outbox rows are restored with them.
 */
Datum
transition_committed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	char	   *to_status;
	bool		first_status;
	Datum		transition_id;

	CheckRowTrigger(fcinfo, "payments.transition_committed()", "status_history", false);
	trigdata = (TriggerData *) fcinfo->context;
	if (!WrittenByThisTransaction(trigdata, "recorded_at"))
		return PointerGetDatum(NULL);
	row = trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	transition_id = heap_getattr(row, SPI_fnumber(desc, "id"), desc, &isnull);
	to_status = SPI_getvalue(row, desc, SPI_fnumber(desc, "to_status"));
	(void) heap_getattr(row, SPI_fnumber(desc, "from_status"), desc, &first_status);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (strcmp(to_status, "paid") == 0)
	{
		int64		payment_id = DatumGetInt64(heap_getattr(row, SPI_fnumber(desc, "payment_id"),
														desc, &isnull));

		if (!ReceiptTakenWithBatch(payment_id))
			IssueReceipt(payment_id,
						 DatumGetTimestampTz(heap_getattr(row, SPI_fnumber(desc, "status_at"),
														  desc, &isnull)));
	}
	if (EndpointsMayTakeTransitions())
		RunTransitionStep(&enqueue_plan,
						  "SELECT payments.enqueue_transition(h) FROM payments.status_history h"
						  " WHERE h.id = $1"
						  "   AND EXISTS (SELECT FROM payments.endpoints e WHERE e.enabled"
						  "               AND payments.event_type_matches(e.event_types, 'payment.' || h.to_status))",
						  transition_id);
	/*
	 * a payment's first status tells the donor nothing: a chat donation starts
	 * pending, and a payment created by its provider's event is no chat
	 * donation
	 */
	if (!first_status)
		RunTransitionStep(&chat_notice_plan,
						  "SELECT payments.chat_payment_notice(h) FROM payments.status_history h"
						  " WHERE h.id = $1"
						  "   AND EXISTS (SELECT FROM payments.chat_donations d WHERE d.payment_id = h.payment_id)",
						  transition_id);
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * SQL: payments.paid_late_committed(), the deferred row trigger on
 * payments.payments for the late news that a payment already refunded or
 * disputed was paid (apply_change gives it its paid time, no transition):
 * its receipt is numbered at the commit, as a transition's is, not when the
 * news is applied, which held the counter's lock for the rest of the
 * transaction (a retry run of a hundred events, a batch) and deadlocked
 * with the paying transactions that came to commit meanwhile.
 */
Datum
paid_late_committed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	TupleDesc	desc;
	bool		isnull;
	Datum		payment_id;
	Datum		paid_at;

	CheckRowTrigger(fcinfo, "payments.paid_late_committed()", "payments", true);
	trigdata = (TriggerData *) fcinfo->context;
	desc = RelationGetDescr(trigdata->tg_relation);
	payment_id = heap_getattr(trigdata->tg_newtuple, SPI_fnumber(desc, "id"), desc, &isnull);
	paid_at = heap_getattr(trigdata->tg_newtuple, SPI_fnumber(desc, "paid_at"), desc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* numbered with the transaction's others, in (prefix, day) order, unless alone */
	if (!ReceiptTakenWithBatch(DatumGetInt64(payment_id)))
		IssueReceipt(DatumGetInt64(payment_id), DatumGetTimestampTz(paid_at));
	SPI_finish();
	return PointerGetDatum(NULL);
}
