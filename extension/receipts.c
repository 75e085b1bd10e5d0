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
 * A payment is numbered alone (three statements), except those a batch's
 * set statement created paid (payments.ingest_batch): the batch notes them
 * (ReceiptAtCommit), and at the commit the first transition to paid numbers
 * all of them with two statements -- every counter they need taken at once,
 * in (prefix, day) order, then their receipts inserted together -- in the
 * order they were noted; their own commit steps then find them numbered.
 * In a batch of 16, numbering alone was a sixth of the database's work per
 * delivery; together it is about a tenth.
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(issue_receipt);

static SPIPlanPtr unnumbered_plan = NULL;
static SPIPlanPtr next_number_plan = NULL;
static SPIPlanPtr first_number_plan = NULL;
static SPIPlanPtr receipt_plan = NULL;
static SPIPlanPtr batch_numbers_plan = NULL;
static SPIPlanPtr batch_receipts_plan = NULL;

/* A payment a batch created paid, to be numbered at the commit */
typedef struct NotedPayment
{
	int64		payment_id;
	text	   *provider;
	TimestampTz paid_at;
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
 * Fewer payments than this are numbered alone: for two, the two statements
 * cost more than three each (measured)
 */
#define RECEIPTS_TOGETHER_MIN 3

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
 * Notes a payment that a batch's set statement created paid (its status
 * time paid_at), for the commit to number it with the others.  The
 * numbering checks again that the payment exists and has no number, so a
 * note that a rollback made moot is harmless.
 */
void
ReceiptAtCommit(int64 payment_id, text *provider, TimestampTz paid_at)
{
	MemoryContext old;

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
	noted[noted_count].provider = DatumGetTextPCopy(PointerGetDatum(provider));
	noted[noted_count].paid_at = paid_at;
	noted_count++;
	MemoryContextSwitchTo(old);
}

/*
 * Numbers the noted payments not numbered yet, with two statements: the
 * numbers of every (prefix, day) they need, taken from the counters at once,
 * then their receipts.  Inside an SPI connection.
 */
static void
NumberNotedPayments(void)
{
	Oid			number_types[3] = {INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID};
	Oid			receipt_types[2] = {TEXTARRAYOID, INT8ARRAYOID};
	int			n = noted_count - settled_count;
	NotedPayment *unsettled = noted + settled_count;
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *prefixes = palloc(sizeof(Datum) * n);
	Datum	   *paid_ats = palloc(sizeof(Datum) * n);
	Datum		args[3];
	Datum	   *receipt_nos;
	Datum	   *receipt_ids;
	uint64		taken;
	MemoryContext old;

	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(unsettled[i].payment_id);
		prefixes[i] = CStringGetTextDatum(ReceiptPrefix(unsettled[i].provider));
		paid_ats[i] = TimestampTzGetDatum(unsettled[i].paid_at);
	}
	args[0] = ArrayParam(ids, NULL, n, INT8OID);
	args[1] = ArrayParam(prefixes, NULL, n, TEXTOID);
	args[2] = ArrayParam(paid_ats, NULL, n, TIMESTAMPTZOID);
	if (SPI_execute_plan(KeptGenericPlan(&batch_numbers_plan,
										 "WITH unnumbered AS MATERIALIZED ("
										 "  SELECT t.ord, t.payment_id, t.prefix, payments.receipt_day(t.paid_at) AS day"
										 "    FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
										 "         WITH ORDINALITY AS t (payment_id, prefix, paid_at, ord)"
										 "   WHERE EXISTS (SELECT FROM payments.payments p WHERE p.id = t.payment_id AND p.kind = 'collection')"
										 "     AND NOT EXISTS (SELECT FROM payments.receipts r WHERE r.payment_id = t.payment_id)"
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
 * Whether the payment was numbered with the payments batches noted: at the
 * first call after a note, all of them are numbered together (unless they
 * are too few: then each is numbered alone).  False for a payment to number
 * alone.  Inside an SPI connection, at the commit.
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
