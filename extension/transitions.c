/*
 * transitions.c
 *		What a payment transition does at the commit that recorded it
 *		(payments.transition_committed), and receipt numbers
 *		(payments.issue_receipt).
 *
 * In this order: the payment's receipt number when it became paid; the
 * outbox, when an enabled endpoint takes the transition
 * (payments.enqueue_transition); the donor's WhatsApp message, for a chat
 * donation (payments.chat_payment_notice).  So the outbox and the thank-you
 * carry the number.
 *
 * Receipt numbers are taken at commit, not when the payment becomes paid:
 * the counter row of a prefix and day is the one row every paying
 * transaction writes, and its lock is held until the transaction ends.
 * Taken in a deferred trigger, it is held from just before the commit to the
 * end of its WAL flush, so that transactions that pay (the shim's batches
 * above all) run side by side and queue only for that last step.  One
 * counter update per number, in the paying transaction: gapless and unique,
 * and a rollback (of the transaction, or of the subtransaction that recorded
 * the transition) gives the number back.
 */
#include "payments.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"

PG_FUNCTION_INFO_V1(transition_committed);
PG_FUNCTION_INFO_V1(issue_receipt);

static SPIPlanPtr unnumbered_plan = NULL;
static SPIPlanPtr next_number_plan = NULL;
static SPIPlanPtr first_number_plan = NULL;
static SPIPlanPtr receipt_plan = NULL;
static SPIPlanPtr enqueue_plan = NULL;
static SPIPlanPtr chat_notice_plan = NULL;

/*
 * The receipt prefix of a provider: its receipt_prefix setting, else the
 * payments.receipt_prefix setting (LP by default).
 */
static const char *
ReceiptPrefix(text *provider_name)
{
	Provider	provider;
	char	   *prefix = NULL;

	if (LookupProvider(provider_name, &provider))
		prefix = SettingText(provider.settings, "receipt_prefix");
	return prefix != NULL ? prefix : payments_receipt_prefix;
}

/*
 * Takes the next number of a prefix on the day of paid_at in the receipt
 * time zone (payments.receipt_day); fills in the day.  The day's first
 * number inserts its counter (another transaction may be taking it too: then
 * ours is the next).
 */
static int32
NextReceiptNumber(const char *prefix, TimestampTz paid_at, DateADT *day)
{
	Oid			argtypes[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2] = {CStringGetTextDatum(prefix), TimestampTzGetDatum(paid_at)};
	bool		isnull;

	if (SPI_execute_plan(KeptPlan(&next_number_plan,
								  "UPDATE payments.receipt_counters rc SET last_no = rc.last_no + 1"
								  " WHERE rc.prefix = $1 AND rc.day = payments.receipt_day($2)"
								  " RETURNING rc.day, rc.last_no",
								  2, argtypes),
						 args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not take a receipt number");
	if (SPI_processed == 0 &&
		SPI_execute_plan(KeptPlan(&first_number_plan,
								  "INSERT INTO payments.receipt_counters AS rc (prefix, day, last_no)"
								  " VALUES ($1, payments.receipt_day($2), 1)"
								  " ON CONFLICT ON CONSTRAINT receipt_counters_pkey"
								  " DO UPDATE SET last_no = rc.last_no + 1"
								  " RETURNING rc.day, rc.last_no",
								  2, argtypes),
						 args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not take a receipt number");
	*day = DatumGetDateADT(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
}

/*
 * Gives a payment that became paid its receipt number, PREFIX-YYYYMMDD-NNNNNN,
 * unless it has one; the day is that of paid_at.  Inside an SPI connection.
 */
static void
IssueReceipt(int64 payment_id, TimestampTz paid_at)
{
	Oid			payment_types[1] = {INT8OID};
	Oid			receipt_types[2] = {TEXTOID, INT8OID};
	Datum		args[2];
	bool		isnull;
	text	   *provider_name;
	const char *prefix;
	DateADT		day;
	int32		number;
	int			year,
				month,
				mday;

	args[0] = Int64GetDatum(payment_id);
	if (SPI_execute_plan(KeptPlan(&unnumbered_plan,
								  "SELECT p.provider FROM payments.payments p"
								  " WHERE p.id = $1"
								  "   AND NOT EXISTS (SELECT FROM payments.receipts r WHERE r.payment_id = p.id)",
								  1, payment_types),
						 args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read a payment");
	if (SPI_processed == 0)
		return;					/* numbered already (or gone) */
	provider_name = DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												 &isnull));

	prefix = ReceiptPrefix(provider_name);
	number = NextReceiptNumber(prefix, paid_at, &day);
	j2date(day + POSTGRES_EPOCH_JDATE, &year, &month, &mday);

	args[0] = CStringGetTextDatum(psprintf("%s-%04d%02d%02d-%06d", prefix, year, month, mday, number));
	args[1] = Int64GetDatum(payment_id);
	if (SPI_execute_plan(KeptPlan(&receipt_plan,
								  "INSERT INTO payments.receipts (receipt_no, payment_id) VALUES ($1, $2)",
								  2, receipt_types),
						 args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert a receipt");
}

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

	CheckRowTrigger(fcinfo, "payments.transition_committed()");
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
		IssueReceipt(DatumGetInt64(heap_getattr(row, SPI_fnumber(desc, "payment_id"), desc, &isnull)),
					 DatumGetTimestampTz(heap_getattr(row, SPI_fnumber(desc, "status_at"), desc, &isnull)));
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
 * SQL: payments.issue_receipt(payment_id, paid_at): gives a paid payment its
 * receipt number now, unless it has one (WhatsApp's /approve, whose answer
 * names it; the commit then finds it numbered).
 */
Datum
issue_receipt(PG_FUNCTION_ARGS)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	IssueReceipt(PG_GETARG_INT64(0), PG_GETARG_TIMESTAMPTZ(1));
	SPI_finish();
	PG_RETURN_VOID();
}
