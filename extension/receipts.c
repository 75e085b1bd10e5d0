/*
 * receipts.c
 *		Receipt numbers issued once per transaction for all its paid payments.
 *
 * A payment that becomes paid gets its receipt number at the commit of the
 * transaction (payments.transition_committed).  Taken one by one, each
 * number was statements of its own (the receipt's insert with its foreign
 * key check, the counter's update, the prefix's lookup): 17% of a delivery's
 * work in the shim's batches.  Now a row trigger on status_history
 * (payments.note_paid) notes every transition to paid the transaction
 * records, and the first of them fired at commit issues the numbers of all
 * noted ones in one statement (payments.issue_noted_receipts), with one
 * counter update per prefix and day; the others find theirs issued.
 *
 * The notes follow the subtransactions: a transition recorded by a
 * subtransaction that aborts is gone, and so is its note; receipts issued by
 * a subtransaction that aborts (SET CONSTRAINTS ... IMMEDIATE inside a
 * savepoint) are gone too, and their notes wait to be issued again.
 */
#include "payments.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(note_paid);
PG_FUNCTION_INFO_V1(issue_noted_receipts);

/* A transition to paid recorded by the current transaction */
typedef struct PaidNote
{
	int64		payment_id;
	TimestampTz status_at;		/* the receipt's day is this time's */
	SubTransactionId noted_by;	/* the subtransaction that recorded it */
	SubTransactionId issued_by; /* the one that issued its receipt, or invalid */
} PaidNote;

static PaidNote *notes = NULL;	/* in TopTransactionContext */
static int	n_notes = 0;
static int	notes_size = 0;
static LocalTransactionId notes_lxid = InvalidLocalTransactionId;
static bool callback_registered = false;
static SPIPlanPtr issue_plan = NULL;

/* Follows a subtransaction's end: aborted, its notes and issues go; committed, they pass up */
static void
FollowSubtransaction(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	int			kept = 0;

	if (notes_lxid != MyProc->lxid)
		return;
	for (int i = 0; i < n_notes; i++)
	{
		PaidNote	note = notes[i];

		if (event == SUBXACT_EVENT_ABORT_SUB)
		{
			if (note.noted_by == mySubid)
				continue;
			if (note.issued_by == mySubid)
				note.issued_by = InvalidSubTransactionId;
		}
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			if (note.noted_by == mySubid)
				note.noted_by = parentSubid;
			if (note.issued_by == mySubid)
				note.issued_by = parentSubid;
		}
		notes[kept++] = note;
	}
	n_notes = kept;
}

/* Adds a note for the current subtransaction, starting the list in a new transaction */
static PaidNote *
AddNote(int64 payment_id, TimestampTz status_at)
{
	if (notes_lxid != MyProc->lxid)
	{
		/* a new transaction: the old list went with the old one's memory */
		notes = NULL;
		n_notes = notes_size = 0;
		notes_lxid = MyProc->lxid;
	}
	if (!callback_registered)
	{
		RegisterSubXactCallback(FollowSubtransaction, NULL);
		callback_registered = true;
	}
	if (n_notes == notes_size)
	{
		notes_size = notes_size == 0 ? 64 : notes_size * 2;
		notes = notes == NULL ?
			MemoryContextAlloc(TopTransactionContext, sizeof(PaidNote) * notes_size) :
			repalloc(notes, sizeof(PaidNote) * notes_size);
	}
	notes[n_notes].payment_id = payment_id;
	notes[n_notes].status_at = status_at;
	notes[n_notes].noted_by = GetCurrentSubTransactionId();
	notes[n_notes].issued_by = InvalidSubTransactionId;
	return &notes[n_notes++];
}

/* The note of a payment in this transaction, or NULL */
static PaidNote *
FindNote(int64 payment_id)
{
	if (notes_lxid != MyProc->lxid)
		return NULL;
	for (int i = 0; i < n_notes; i++)
		if (notes[i].payment_id == payment_id)
			return &notes[i];
	return NULL;
}

/* A column of the trigger's row, by name */
static Datum
RowValue(TriggerData *trigdata, const char *column, bool *isnull)
{
	TupleDesc	desc = RelationGetDescr(trigdata->tg_relation);
	int			attnum = SPI_fnumber(desc, column);

	if (attnum <= 0)
		elog(ERROR, "status_history has no column \"%s\"", column);
	return heap_getattr(trigdata->tg_trigtuple, attnum, desc, isnull);
}

/*
 * SQL: payments.note_paid(), the AFTER INSERT row trigger on
 * payments.status_history: notes a transition to paid recorded by this
 * transaction (not the rows a restore copies back, which keep the time they
 * were first recorded).
 */
Datum
note_paid(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	bool		isnull;
	Datum		value;
	text	   *to_status;
	Datum		payment_id;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("payments.note_paid() must be called as an AFTER INSERT row trigger")));

	value = RowValue(trigdata, "to_status", &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	to_status = DatumGetTextPP(value);
	if (VARSIZE_ANY_EXHDR(to_status) != 4 || memcmp(VARDATA_ANY(to_status), "paid", 4) != 0)
		return PointerGetDatum(NULL);
	value = RowValue(trigdata, "recorded_at", &isnull);
	if (isnull || DatumGetTimestampTz(value) != GetCurrentTransactionStartTimestamp())
		return PointerGetDatum(NULL);
	payment_id = RowValue(trigdata, "payment_id", &isnull);
	value = RowValue(trigdata, "status_at", &isnull);
	if (FindNote(DatumGetInt64(payment_id)) == NULL)
		AddNote(DatumGetInt64(payment_id), DatumGetTimestampTz(value));
	return PointerGetDatum(NULL);
}

/*
 * SQL: payments.issue_noted_receipts(payment_id, status_at), called by
 * payments.transition_committed for a transition to paid: issues the receipt
 * numbers of every payment noted paid by the transaction and not issued yet,
 * this one included, in one statement; nothing when this one's is issued.
 * Payments that have a receipt already (paid before, or numbered at once by
 * WhatsApp's /approve) keep theirs.
 */
Datum
issue_noted_receipts(PG_FUNCTION_ARGS)
{
	int64		payment_id = PG_GETARG_INT64(0);
	TimestampTz status_at = PG_GETARG_TIMESTAMPTZ(1);
	PaidNote   *own = FindNote(payment_id);
	Datum	   *ids;
	Datum	   *times;
	int			n = 0;
	Oid			argtypes[2] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		args[2];
	SubTransactionId issuer = GetCurrentSubTransactionId();

	if (own != NULL && own->issued_by != InvalidSubTransactionId)
		PG_RETURN_VOID();
	if (own == NULL)
		AddNote(payment_id, status_at);	/* fired before its note (SET CONSTRAINTS) */

	ids = palloc(sizeof(Datum) * n_notes);
	times = palloc(sizeof(Datum) * n_notes);
	for (int i = 0; i < n_notes; i++)
	{
		if (notes[i].issued_by != InvalidSubTransactionId)
			continue;
		ids[n] = Int64GetDatum(notes[i].payment_id);
		times[n] = TimestampTzGetDatum(notes[i].status_at);
		n++;
	}
	args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(times, n, TIMESTAMPTZOID, sizeof(TimestampTz), true,
											  TYPALIGN_DOUBLE));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(KeptPlan(&issue_plan,
								  "SELECT payments.issue_receipts($1, $2)", 2, argtypes),
						 args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not issue receipts");
	SPI_finish();

	for (int i = 0; i < n_notes; i++)
		if (notes[i].issued_by == InvalidSubTransactionId)
			notes[i].issued_by = issuer;
	PG_RETURN_VOID();
}
