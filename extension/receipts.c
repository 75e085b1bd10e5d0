/*
 * receipts.c
 *		Receipt numbers: PREFIX-YYYYMMDD-NNNNNN, gapless per prefix and day
 *		(payments.issue_receipt, and the commit step of a transition to paid).
 *
 * Receipt numbers are taken at commit, not when the payment becomes paid:
 * the counter row of a prefix and day is the one row every paying
 * transaction writes, and its lock is held until the transaction ends.
 * Taken in a deferred trigger (payments.transition_committed), it is held
 * from just before the commit to the end of its WAL flush, so that
 * transactions that pay (the shim's batches above all) run side by side and
 * queue only for that last step.  Counters are updated in the paying
 * transaction: gapless and unique, and a rollback (of the transaction, or of
 * the subtransaction that recorded the transition) gives the numbers back.
 *
 * Every payment made paid is noted when its transition is recorded (the
 * BEFORE row trigger payments.receipt_noted, no statement), and its note
 * goes if the subtransaction that recorded it is rolled back.  A transaction
 * that paid one payment numbers it alone (three statements).  One that paid
 * several numbers them all at the first commit step of a transition to paid,
 * with two statements -- every counter they need taken at once, in (prefix,
 * day) order, then their receipts inserted together -- in the order they
 * were noted; their own commit steps then find them numbered.  So a
 * transaction takes its counters in (prefix, day) order: two transactions
 * that need the same two counters (two prefixes, or two days at midnight)
 * wait for each other at the commit instead of deadlocking, as they did
 * when each payment took its counter in the order of its transition.  In a
 * batch of 16, numbering alone was a sixth of the database's work per
 * delivery; together it is about a tenth.
 */
#include "payments.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(issue_receipt);
PG_FUNCTION_INFO_V1(receipt_noted);

static SPIPlanPtr unnumbered_plan = NULL;
static SPIPlanPtr next_number_plan = NULL;
static SPIPlanPtr first_number_plan = NULL;
static SPIPlanPtr receipt_plan = NULL;
static SPIPlanPtr batch_numbers_plan = NULL;
static SPIPlanPtr batch_receipts_plan = NULL;

/* A payment the transaction made paid, to be numbered at the commit */
typedef struct NotedPayment
{
	int64		payment_id;
	TimestampTz paid_at;		/* of its transition to paid (or its paid_at) */
	SubTransactionId subid;		/* the subtransaction that recorded it */
} NotedPayment;

/* The payments noted in this transaction (under TopTransactionContext) */
static KeptStamp noted_stamp;
static NotedPayment *noted = NULL;
static int	noted_count = 0;
static int	noted_space = 0;
static int	settled_count = 0;	/* noted[0 .. settled_count - 1] are settled */
static int64 *taken_ids = NULL; /* of those, the ones numbered together, sorted */
static int	taken_count = 0;
static KeptStamp settled_stamp;	/* when they were settled: a subtransaction
								 * aborted since may have undone it */

/*
 * Fewer payments than this are numbered alone: one needs a single counter.
 * Two are numbered together too, though for two the two statements cost a
 * little more than three each (measured): alone, they would take their
 * counters in the order of their transitions.
 */
#define RECEIPTS_TOGETHER_MIN 2

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

/* A receipt number: PREFIX-YYYYMMDD-NNNNNN */
static char *
ReceiptNumber(const char *prefix, DateADT day, int32 number)
{
	int			year,
				month,
				mday;

	j2date(day + POSTGRES_EPOCH_JDATE, &year, &month, &mday);
	return psprintf("%s-%04d%02d%02d-%06d", prefix, year, month, mday, number);
}

/*
 * Gives a collection that became paid its receipt number,
 * PREFIX-YYYYMMDD-NNNNNN, unless it has one; the day is that of the
 * payment's paid_at, else of paid_at (the time of the transition to paid:
 * they differ when reconciliation found it paid, the time of the poll).
 * Payouts and refunds get none: receipt numbers count donations, and
 * daily_report shows them per day without gaps.  The lookup is not
 * read-only, so that it sees a receipt this commit step gave the payment
 * already (a transaction that made it paid twice, a dispute won between).
 * Inside an SPI connection.
 */
void
IssueReceipt(int64 payment_id, TimestampTz paid_at)
{
	Oid			payment_types[1] = {INT8OID};
	Oid			receipt_types[2] = {TEXTOID, INT8OID};
	Datum		args[2];
	bool		isnull;
	text	   *provider_name;
	Datum		payment_paid_at;
	const char *prefix;
	DateADT		day;
	int32		number;

	args[0] = Int64GetDatum(payment_id);
	if (SPI_execute_plan(KeptPlan(&unnumbered_plan,
								  "SELECT p.provider, p.paid_at FROM payments.payments p"
								  " WHERE p.id = $1 AND p.kind = 'collection'"
								  "   AND NOT EXISTS (SELECT FROM payments.receipts r WHERE r.payment_id = p.id)",
								  1, payment_types),
						 args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read a payment");
	if (SPI_processed == 0)
		return;					/* numbered already (or gone) */
	provider_name = DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												 &isnull));
	payment_paid_at = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull)
		paid_at = DatumGetTimestampTz(payment_paid_at);

	prefix = ReceiptPrefix(provider_name);
	number = NextReceiptNumber(prefix, paid_at, &day);
	args[0] = CStringGetTextDatum(ReceiptNumber(prefix, day, number));
	args[1] = Int64GetDatum(payment_id);
	if (SPI_execute_plan(KeptPlan(&receipt_plan,
								  "INSERT INTO payments.receipts (receipt_no, payment_id) VALUES ($1, $2)",
								  2, receipt_types),
						 args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert a receipt");
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

/* qsort and bsearch comparator of int64 */
static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Drops the notes of a subtransaction rolled back (and of those it held):
 * its transitions are gone.  Subtransaction ids grow, and one rolled back is
 * the innermost still open: the notes from its start on are its own.
 */
static void
ForgetRolledBackNotes(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB || !KeptInThisTransaction(&noted_stamp))
		return;
	while (noted_count > 0 && noted[noted_count - 1].subid >= mySubid)
		noted_count--;
	if (settled_count > noted_count)
		settled_count = taken_count = 0;	/* settle what is left again */
}

/* Notes that a payment became paid (at paid_at) in this transaction */
static void
NotePaidPayment(int64 payment_id, TimestampTz paid_at)
{
	static bool registered = false;
	MemoryContext old;

	if (!registered)
	{
		RegisterSubXactCallback(ForgetRolledBackNotes, NULL);
		registered = true;
	}
	if (!KeptInThisTransaction(&noted_stamp))
	{
		/* the old transaction's memory went with it */
		noted = NULL;
		noted_count = noted_space = settled_count = taken_count = 0;
		taken_ids = NULL;
		KeptStampNow(&noted_stamp);
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	if (noted_count == noted_space)
	{
		noted_space = Max(noted_space * 2, 64);
		noted = noted == NULL ? palloc(sizeof(NotedPayment) * noted_space) :
			repalloc(noted, sizeof(NotedPayment) * noted_space);
	}
	noted[noted_count].payment_id = payment_id;
	noted[noted_count].paid_at = paid_at;
	noted[noted_count].subid = GetCurrentSubTransactionId();
	noted_count++;
	MemoryContextSwitchTo(old);
}

/*
 * SQL: payments.receipt_noted(), the BEFORE row trigger that notes a payment
 * made paid, for its receipt at the commit: on payments.status_history, a
 * transition to paid recorded by this transaction (its status time); on
 * payments.payments, the late news that a payment refunded or disputed was
 * paid (its paid_at).  The triggers' WHEN clauses pick those rows; this
 * function runs no statement.
 */
Datum
receipt_noted(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	row;
	TupleDesc	desc;
	const char *table;
	bool		isnull;
	Datum		payment_id;
	Datum		paid_at;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		RelationGetNamespace(trigdata->tg_relation) != get_namespace_oid("payments", false))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("payments.receipt_noted() must be called as a BEFORE row trigger of payments.status_history or payments.payments")));
	table = RelationGetRelationName(trigdata->tg_relation);
	desc = RelationGetDescr(trigdata->tg_relation);
	if (strcmp(table, "status_history") == 0 && TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		row = trigdata->tg_trigtuple;
		/* the rows a restore copies back were numbered when first recorded */
		if (!WrittenByThisTransaction(trigdata, "recorded_at"))
			return PointerGetDatum(row);
		payment_id = heap_getattr(row, SPI_fnumber(desc, "payment_id"), desc, &isnull);
		paid_at = heap_getattr(row, SPI_fnumber(desc, "status_at"), desc, &isnull);
	}
	else if (strcmp(table, "payments") == 0 && TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		row = trigdata->tg_newtuple;
		payment_id = heap_getattr(row, SPI_fnumber(desc, "id"), desc, &isnull);
		paid_at = heap_getattr(row, SPI_fnumber(desc, "paid_at"), desc, &isnull);
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("payments.receipt_noted() must be called as a BEFORE row trigger of payments.status_history or payments.payments")));
	if (!isnull)
		NotePaidPayment(DatumGetInt64(payment_id), DatumGetTimestampTz(paid_at));
	return PointerGetDatum(row);
}

/*
 * Numbers the noted payments not numbered yet, with two statements: the
 * numbers of every (prefix, day) they need, taken from the counters at once
 * in (prefix, day) order, then their receipts.  A payment noted twice (paid
 * again in the same transaction) is numbered once.  Inside an SPI
 * connection.
 */
static void
NumberNotedPayments(void)
{
	Oid			number_types[3] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID, TEXTOID};
	Oid			receipt_types[2] = {TEXTARRAYOID, INT8ARRAYOID};
	int			n = noted_count - settled_count;
	NotedPayment *unsettled = noted + settled_count;
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *paid_ats = palloc(sizeof(Datum) * n);
	Datum		args[3];
	Datum	   *receipt_nos;
	Datum	   *receipt_ids;
	uint64		taken;
	MemoryContext old;

	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(unsettled[i].payment_id);
		paid_ats[i] = TimestampTzGetDatum(unsettled[i].paid_at);
	}
	args[0] = ArrayParam(ids, NULL, n, INT8OID);
	args[1] = ArrayParam(paid_ats, NULL, n, TIMESTAMPTZOID);
	args[2] = CStringGetTextDatum(payments_receipt_prefix);
	if (SPI_execute_plan(KeptGenericPlan(&batch_numbers_plan,
										 "WITH noted AS MATERIALIZED ("
										 "  SELECT DISTINCT ON (t.payment_id) t.ord, t.payment_id, t.paid_at"
										 "    FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2))"
										 "         WITH ORDINALITY AS t (payment_id, paid_at, ord)"
										 "   ORDER BY t.payment_id, t.ord"
										 "), unnumbered AS MATERIALIZED ("
										 /* the prefix and day IssueReceipt gives it */
										 "  SELECT n.ord, n.payment_id,"
										 "         coalesce(CASE WHEN pg_catalog.jsonb_typeof(pr.settings -> 'receipt_prefix') = 'string'"
										 "                       THEN pr.settings ->> 'receipt_prefix' END, $3) AS prefix,"
										 "         payments.receipt_day(coalesce(p.paid_at, n.paid_at)) AS day"
										 "    FROM noted n"
										 "    JOIN payments.payments p ON p.id = n.payment_id AND p.kind = 'collection'"
										 "    LEFT JOIN payments.providers pr ON pr.name = p.provider"
										 "   WHERE NOT EXISTS (SELECT FROM payments.receipts r WHERE r.payment_id = n.payment_id)"
										 "), taken AS ("
										 "  INSERT INTO payments.receipt_counters AS rc (prefix, day, last_no)"
										 "  SELECT t.prefix, t.day, pg_catalog.count(*) FROM unnumbered t"
										 "   GROUP BY t.prefix, t.day ORDER BY t.prefix, t.day"
										 "  ON CONFLICT ON CONSTRAINT receipt_counters_pkey"
										 "  DO UPDATE SET last_no = rc.last_no + excluded.last_no"
										 "  RETURNING rc.prefix, rc.day, rc.last_no"
										 ")"
										 "SELECT t.prefix, t.day, (k.last_no - pg_catalog.count(*) OVER w"
										 "       + pg_catalog.row_number() OVER (w ORDER BY t.ord))::pg_catalog.int4,"
										 "       t.payment_id"
										 "  FROM unnumbered t JOIN taken k ON k.prefix = t.prefix AND k.day = t.day"
										 " WINDOW w AS (PARTITION BY t.prefix, t.day)",
										 3, number_types),
						 args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not take receipt numbers");

	taken = SPI_processed;
	if (taken > 0)
	{
		receipt_nos = palloc(sizeof(Datum) * taken);
		receipt_ids = palloc(sizeof(Datum) * taken);
		for (uint64 r = 0; r < taken; r++)
		{
			HeapTuple	row = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;

			receipt_nos[r] = CStringGetTextDatum(
				ReceiptNumber(TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull)),
							  DatumGetDateADT(SPI_getbinval(row, desc, 2, &isnull)),
							  DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull))));
			receipt_ids[r] = SPI_getbinval(row, desc, 4, &isnull);
		}
		args[0] = ArrayParam(receipt_nos, NULL, (int) taken, TEXTOID);
		args[1] = ArrayParam(receipt_ids, NULL, (int) taken, INT8OID);
		if (SPI_execute_plan(KeptGenericPlan(&batch_receipts_plan,
											 "INSERT INTO payments.receipts (receipt_no, payment_id)"
											 " SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2))",
											 2, receipt_types),
							 args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert receipts");
	}

	/* every noted payment is numbered now, or was already, or is gone */
	old = MemoryContextSwitchTo(TopTransactionContext);
	taken_ids = taken_ids == NULL ? palloc(sizeof(int64) * noted_count) :
		repalloc(taken_ids, sizeof(int64) * noted_count);
	MemoryContextSwitchTo(old);
	for (int i = settled_count; i < noted_count; i++)
		taken_ids[taken_count++] = noted[i].payment_id;
	qsort(taken_ids, taken_count, sizeof(int64), CompareInt64);
}

/*
 * Whether the payment was numbered with the other payments the transaction
 * made paid: at the first call after a note, all of them are numbered
 * together (unless there is one: then it is numbered alone).  False for a
 * payment to number alone.  Inside an SPI connection, at the commit.
 */
bool
ReceiptTakenWithBatch(int64 payment_id)
{
	if (!KeptInThisTransaction(&noted_stamp) || noted_count == 0)
		return false;
	/*
	 * Numbered early (SET CONSTRAINTS ... IMMEDIATE) in a subtransaction
	 * rolled back since: the receipts went with it, and the triggers fire
	 * again at the commit.  Settle every note again.
	 */
	if (settled_count > 0 && !KeptIsCurrent(&settled_stamp))
		settled_count = taken_count = 0;
	if (noted_count - settled_count >= RECEIPTS_TOGETHER_MIN)
		NumberNotedPayments();
	settled_count = noted_count;
	KeptStampNow(&settled_stamp);
	return taken_count > 0 &&
		bsearch(&payment_id, taken_ids, taken_count, sizeof(int64), CompareInt64) != NULL;
}
