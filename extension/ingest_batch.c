/*
 * ingest_batch.c
 *		payments.ingest_batch: the deliveries the shim stores in one
 *		transaction (group commit), in one call.
 *
 * Each delivery is read, verified and parsed in a subtransaction of its own,
 * so that one bad delivery fails none of the others, and answered as
 * payments.ingest would answer it.  Its events are then stored:
 *
 *	- a new Stripe event (the kind of most webhooks) waits for the others of
 *	  the batch, and all of them are stored by one statement
 *	  (payments.store_stripe_events), which also creates the payments they
 *	  are the first news of; an event the set cannot decide (its payment
 *	  exists already, say) is then settled alone.  If the statement fails,
 *	  its work is rolled back and those deliveries are stored one by one
 *	  (on a deadlock, answered with the error: Lock order, below);
 *	- any other delivery is stored one event at a time, as by ingest.
 *
 * One statement for the batch's Stripe events instead of a few per event is
 * about a fifth of the database's work per delivery; the payments the batch
 * made paid are numbered together at the commit (receipts.c).
 *
 * Lock order.  Two batches over the same events or payments take their locks
 * in one order, so that one waits for the other rather than deadlocking: the
 * set statement stores its events in (provider, event_id) order and creates
 * the payments in (provider, provider_ref) order, and the events it leaves
 * to settle alone are settled in (provider, provider_ref, position) order.
 * A deadlock or serialization failure (class 40) that still happens (with a
 * lock taken by an earlier call in the caller's transaction, say) is not
 * tried again in this transaction: the lock the other transaction waits for
 * may be held by an earlier, released subtransaction of ours, so the same
 * work would deadlock again, after another deadlock_timeout.  The deliveries
 * it failed are answered with its error, their work rolled back (the event a
 * set statement stored for them taken out again), for the caller to store
 * them again after this transaction ends (the shim does, each alone).
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(ingest_batch);

/* The arguments' columns, in payments.ingest_batch order */
enum
{
	ARG_PROVIDER,
	ARG_HEADERS,
	ARG_BODY,
	ARG_SOURCE_IP,
	ARG_REQUEST_ID,
	BATCH_ARGS
};

/* One argument array, deconstructed */
typedef struct BatchColumn
{
	Datum	   *values;
	bool	   *nulls;
	int			count;
} BatchColumn;

/* One delivery of the batch and what became of it */
typedef struct BatchDelivery
{
	int			index;			/* in the arguments, from 0 */
	const BatchColumn *columns;
	Delivery	delivery;
	Provider	provider;
	EventList	events;
	IngestResult result;
	bool		in_set;			/* verified, its event for the set statement */
	bool		repeated;		/* in_set, its event that of an earlier delivery */
	int			first;			/* repeated: the index of that earlier delivery */
	char	   *payment_ref;	/* in_set: its event's provider_ref, or NULL */
	char	   *error;			/* handling it raised this error (with sqlerrcode) */
	int			sqlerrcode;
	int64		event_row;		/* stored by the set, to settle alone (in_set) */
	char	   *set_outcome;	/* what the set statement decided, NULL: settle alone */
} BatchDelivery;

static SPIPlanPtr store_set_plan = NULL;
static SPIPlanPtr settle_plan = NULL;
static SPIPlanPtr unstore_plan = NULL;

/* Element i of a varlena column, detoasted (packed), or NULL for SQL NULL */
static struct varlena *
ColumnValue(const BatchColumn *column, int i)
{
	return column->nulls[i] ? NULL : PG_DETOAST_DATUM_PACKED(column->values[i]);
}

/*
 * Reads, verifies and parses one delivery (the first step, run in a
 * subtransaction).  A new Stripe event waits for the set statement; any
 * other delivery is stored now, as by ingest.
 */
static void
PrepareStep(void *arg)
{
	BatchDelivery *d = arg;
	const BatchColumn *c = d->columns;
	int			i = d->index;

	MakeDelivery(&d->delivery,
				 (text *) ColumnValue(&c[ARG_PROVIDER], i),
				 c[ARG_HEADERS].nulls[i] ? NULL : DatumGetJsonbP(c[ARG_HEADERS].values[i]),
				 (bytea *) ColumnValue(&c[ARG_BODY], i),
				 c[ARG_SOURCE_IP].values[i], c[ARG_SOURCE_IP].nulls[i],
				 (text *) ColumnValue(&c[ARG_REQUEST_ID], i));
	if (!PrepareDelivery(&d->delivery, &d->provider, &d->events, &d->result))
		return;
	/*
	 * the set statement knows Stripe's events (payments.stripe_change); one
	 * of the other mode is stored and ignored, as payments.event_change says
	 */
	if (d->provider.kind == &StripeKind && d->events.count == 1 &&
		!StripeEventOfOtherMode(d->provider.settings, d->events.events[0].payload))
	{
		d->in_set = true;
		return;
	}
	StoreDeliveryEvents(&d->provider, &d->delivery, &d->events, &d->result);
}

/* Stores a verified delivery's events one at a time (run in a subtransaction) */
static void
StoreAloneStep(void *arg)
{
	BatchDelivery *d = arg;

	StoreDeliveryEvents(&d->provider, &d->delivery, &d->events, &d->result);
}

/* Input of StoreSetStep */
typedef struct SetBatch
{
	BatchDelivery *deliveries;
	int			count;			/* of deliveries */
	int			in_set;			/* how many of them are in_set and not repeated */
	int		   *order;			/* the in_set ones by (provider, event_id, index) */
	int			ordered;		/* how many in order */
} SetBatch;

/* Orders deliveries by their provider's name, bytewise (as COLLATE "C") */
static int
CompareProviders(const BatchDelivery *x, const BatchDelivery *y)
{
	int			xlen = VARSIZE_ANY_EXHDR(x->delivery.provider);
	int			ylen = VARSIZE_ANY_EXHDR(y->delivery.provider);
	int			cmp = memcmp(VARDATA_ANY(x->delivery.provider),
							 VARDATA_ANY(y->delivery.provider), Min(xlen, ylen));

	return cmp != 0 ? cmp : xlen - ylen;
}

/* Orders deliveries by their event: provider, then event id */
static int
CompareEventKeys(const BatchDelivery *x, const BatchDelivery *y)
{
	int			cmp = CompareProviders(x, y);

	return cmp != 0 ? cmp : strcmp(x->events.events[0].event_id, y->events.events[0].event_id);
}

/*
 * The positions of the batch's deliveries that keep selects, sorted by
 * compare (a qsort_arg comparator of positions); their number in *n
 */
static int *
SortedPositions(const SetBatch *batch, bool (*keep) (const BatchDelivery *),
				qsort_arg_comparator compare, int *n)
{
	int		   *order = palloc(sizeof(int) * Max(batch->count, 1));

	*n = 0;
	for (int i = 0; i < batch->count; i++)
		if (keep(&batch->deliveries[i]))
			order[(*n)++] = i;
	qsort_arg(order, *n, sizeof(int), compare, batch->deliveries);
	return order;
}

/* qsort_arg comparator of positions in a batch: by event, then position */
static int
CompareEvents(const void *a, const void *b, void *arg)
{
	const BatchDelivery *deliveries = arg;
	const BatchDelivery *x = &deliveries[*(const int *) a];
	const BatchDelivery *y = &deliveries[*(const int *) b];
	int			cmp = CompareEventKeys(x, y);

	return cmp != 0 ? cmp : x->index - y->index;
}

/* Whether a delivery's event is for the set statement */
static bool
InSet(const BatchDelivery *d)
{
	return d->in_set;
}

/*
 * Marks as repeated each in_set delivery whose event an earlier delivery of
 * the batch carries: the set statement stores each event once, and a later
 * delivery of it is a duplicate, as it would be one by one.  Counts the
 * others in batch->in_set, and keeps the in_set deliveries in their events'
 * order in batch->order (the order the set statement takes its locks in).
 */
static void
MarkRepeatedEvents(SetBatch *batch)
{
	int			n;
	int		   *order = SortedPositions(batch, InSet, CompareEvents, &n);

	batch->in_set = n;
	for (int k = 1; k < n; k++)
	{
		BatchDelivery *prev = &batch->deliveries[order[k - 1]];
		BatchDelivery *d = &batch->deliveries[order[k]];

		if (CompareEventKeys(prev, d) == 0)
		{
			d->repeated = true;
			d->first = prev->repeated ? prev->first : prev->index;
			batch->in_set--;
		}
	}
	batch->order = order;
	batch->ordered = n;
}

/*
 * Stores the batch's in_set events with payments.store_stripe_events (the
 * step run in a subtransaction), setting event_row and set_outcome of each.
 */
static void
StoreSetStep(void *arg)
{
	SetBatch   *batch = arg;
	enum
	{
		SET_POS, SET_PROVIDER, SET_EVENT_ID, SET_EVENT_TYPE, SET_EVENT_AT, SET_BODY,
		SET_PAYLOAD, SET_HEADERS, SET_SOURCE_IP, SET_REQUEST_ID, SET_ARGS
	};
	static const Oid elemtypes[SET_ARGS] = {INT4OID, TEXTOID, TEXTOID, TEXTOID,
		TIMESTAMPTZOID, BYTEAOID, JSONBOID, JSONBOID, INETOID, TEXTOID};
	Oid			argtypes[SET_ARGS] = {INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TIMESTAMPTZARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, JSONBARRAYOID, INETARRAYOID,
	TEXTARRAYOID};
	Datum	   *elems[SET_ARGS];
	bool	   *nulls[SET_ARGS];
	Datum		args[SET_ARGS];
	SPIPlanPtr	plan;
	int			k = 0;

	for (int a = 0; a < SET_ARGS; a++)
	{
		elems[a] = palloc(sizeof(Datum) * batch->in_set);
		nulls[a] = palloc0(sizeof(bool) * batch->in_set);
	}
	/* in (provider, event_id) order: the order of their locks */
	for (int o = 0; o < batch->ordered; o++)
	{
		const BatchDelivery *d = &batch->deliveries[batch->order[o]];
		const EventRecord *event;

		if (!d->in_set || d->repeated)
			continue;
		event = &d->events.events[0];
		elems[SET_POS][k] = Int32GetDatum(d->index);
		elems[SET_PROVIDER][k] = PointerGetDatum(d->delivery.provider);
		elems[SET_EVENT_ID][k] = CStringGetTextDatum(event->event_id);
		if (event->event_type)
			elems[SET_EVENT_TYPE][k] = CStringGetTextDatum(event->event_type);
		nulls[SET_EVENT_TYPE][k] = event->event_type == NULL;
		elems[SET_EVENT_AT][k] = TimestampTzGetDatum(event->event_at);
		nulls[SET_EVENT_AT][k] = !event->have_event_at;
		elems[SET_BODY][k] = PointerGetDatum(d->delivery.body);
		elems[SET_PAYLOAD][k] = JsonbPGetDatum(event->payload);
		elems[SET_HEADERS][k] = JsonbPGetDatum(d->delivery.headers);
		elems[SET_SOURCE_IP][k] = d->delivery.source_ip;
		nulls[SET_SOURCE_IP][k] = d->delivery.source_ip_null;
		elems[SET_REQUEST_ID][k] = PointerGetDatum(d->delivery.request_id);
		nulls[SET_REQUEST_ID][k] = d->delivery.request_id == NULL;
		k++;
	}
	for (int a = 0; a < SET_ARGS; a++)
		args[a] = ArrayParam(elems[a], nulls[a], batch->in_set, elemtypes[a]);

	plan = KeptGenericPlan(&store_set_plan,
						   "SELECT s.pos, s.event_row, s.outcome, s.payment_ref"
						   "  FROM payments.store_stripe_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) s",
						   SET_ARGS, argtypes);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != (uint64) batch->in_set)
		elog(ERROR, "could not store a batch's events");

	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int			pos = DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull));
		Datum		event_row = SPI_getbinval(row, desc, 2, &isnull);
		BatchDelivery *d;

		if (pos < 0 || pos >= batch->count || !batch->deliveries[pos].in_set ||
			batch->deliveries[pos].repeated)
			elog(ERROR, "payments.store_stripe_events returned an unknown position %d", pos);
		d = &batch->deliveries[pos];
		d->event_row = isnull ? 0 : DatumGetInt64(event_row);
		d->set_outcome = SPI_getvalue(row, desc, 3);
		d->payment_ref = SPI_getvalue(row, desc, 4);
	}
}

/* Settles an event the set statement stored but could not decide (run in a subtransaction) */
static void
SettleStep(void *arg)
{
	BatchDelivery *d = arg;
	Oid			argtypes[3] = {INT8OID, TEXTOID, JSONBOID};
	Datum		args[3];
	SPIPlanPtr	plan;

	plan = KeptPlan(&settle_plan,
					"SELECT payments.settle_event(e, $2, $3, 1)"
					"  FROM payments.events e WHERE e.id = $1",
					3, argtypes);
	args[0] = Int64GetDatum(d->event_row);
	args[1] = CStringGetTextDatum(d->provider.kind->name);
	args[2] = JsonbPGetDatum(d->provider.settings);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not settle event %lld", (long long) d->event_row);
	d->set_outcome = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* Takes an event the set statement stored out again (run in a subtransaction) */
static void
UnstoreStep(void *arg)
{
	BatchDelivery *d = arg;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(d->event_row)};

	if (SPI_execute_plan(KeptPlan(&unstore_plan,
								  "DELETE FROM payments.events e WHERE e.id = $1",
								  1, argtypes),
						 args, NULL, false, 0) != SPI_OK_DELETE || SPI_processed != 1)
		elog(ERROR, "could not take event %lld out again", (long long) d->event_row);
}

/*
 * Settles an event stored by the set statement alone.  When its application
 * fails, the event stays stored, pending, its failed first attempt recorded,
 * as a delivery stored alone would be.  A deadlock or serialization failure
 * (with a concurrent batch over the same payment) is no fault of the event,
 * and would only meet the same lock again in this transaction: the event is
 * taken out again and the delivery answered with the error, to be stored
 * again after the commit (as ingest raises it for a delivery alone).
 */
static void
SettleAlone(BatchDelivery *d)
{
	char	   *error;
	int			sqlerrcode;
	char	   *unstore_error;
	int			unstore_code;

	if (RunInSubtransactionCode(SettleStep, d, &error, &sqlerrcode))
		return;
	if (ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK &&
		RunInSubtransactionCode(UnstoreStep, d, &unstore_error, &unstore_code))
	{
		d->error = error;
		d->sqlerrcode = sqlerrcode;
		return;
	}
	RecordFailedAttempt(d->event_row, error);
	d->set_outcome = "stored";
}

/* Orders two strings, NULL first, bytewise */
static int
CompareNullable(const char *x, const char *y)
{
	if (x == NULL || y == NULL)
		return (x != NULL) - (y != NULL);
	return strcmp(x, y);
}

/*
 * qsort_arg comparator of positions of events to settle alone: by payment
 * (provider, provider_ref), then position
 */
static int
CompareSettleOrder(const void *a, const void *b, void *arg)
{
	const BatchDelivery *deliveries = arg;
	const BatchDelivery *x = &deliveries[*(const int *) a];
	const BatchDelivery *y = &deliveries[*(const int *) b];
	int			cmp = CompareProviders(x, y);

	if (cmp == 0)
		cmp = CompareNullable(x->payment_ref, y->payment_ref);
	return cmp != 0 ? cmp : x->index - y->index;
}

/* Whether the set statement stored a delivery's event but could not decide it */
static bool
Undecided(const BatchDelivery *d)
{
	return d->in_set && !d->repeated && d->set_outcome == NULL;
}

/*
 * Settles alone, in (provider, provider_ref, position) order, the events the
 * set statement stored but could not decide.
 */
static void
SettleUndecided(SetBatch *batch)
{
	int			n;
	int		   *order = SortedPositions(batch, Undecided, CompareSettleOrder, &n);

	for (int k = 0; k < n; k++)
		SettleAlone(&batch->deliveries[order[k]]);
	pfree(order);
}

/* Deconstructs argument arg, a one-dimensional array (or empty) of elemtype */
static void
ReadColumn(FunctionCallInfo fcinfo, int arg, Oid elemtype, BatchColumn *column)
{
	ArrayType  *array;
	int16		typlen;
	bool		typbyval;
	char		typalign;

	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the arrays of payments.ingest_batch must not be null")));
	array = PG_GETARG_ARRAYTYPE_P(arg);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("the arrays of payments.ingest_batch must be one-dimensional")));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(array, elemtype, typlen, typbyval, typalign,
					  &column->values, &column->nulls, &column->count);
}

/* Adds a delivery's row to the result: its answer, or the error it raised */
static void
PutResult(ReturnSetInfo *rsinfo, const BatchDelivery *d)
{
	Datum		values[5] = {0};
	bool		nulls[5] = {true, true, true, true, true};

	if (d->error != NULL)
	{
		values[3] = CStringGetTextDatum(unpack_sql_state(d->sqlerrcode));
		values[4] = CStringGetTextDatum(d->error);
		nulls[3] = nulls[4] = false;
	}
	else
	{
		values[0] = Int32GetDatum(d->result.http_status);
		values[1] = CStringGetTextDatum(d->result.outcome);
		nulls[0] = nulls[1] = false;
		if (d->result.event_id != NULL)
		{
			values[2] = CStringGetTextDatum(d->result.event_id);
			nulls[2] = false;
		}
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/* Runs step for a delivery in a subtransaction, keeping the error it raised */
static void
RunForDelivery(void (*step) (void *arg), BatchDelivery *d)
{
	if (!RunInSubtransactionCode(step, d, &d->error, &d->sqlerrcode))
		d->in_set = false;
}

/*
 * SQL: payments.ingest_batch(providers, headers, bodies, source_ips,
 * request_ids), five arrays of the same length, returns one row per delivery
 * in their order: (http_status, outcome, event_id) as payments.ingest
 * returns, or, when handling the delivery raised an error, NULLs with the
 * error's SQLSTATE and message, its work rolled back.  The caller's
 * transaction goes on.  Query cancels and shutdowns are raised.
 */
Datum
ingest_batch(PG_FUNCTION_ARGS)
{
	static const Oid elemtypes[BATCH_ARGS] = {TEXTOID, JSONBOID, BYTEAOID, INETOID, TEXTOID};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BatchColumn columns[BATCH_ARGS];
	SetBatch	batch = {0};

	RequireReadCommitted("payments.ingest_batch");
	for (int a = 0; a < BATCH_ARGS; a++)
	{
		ReadColumn(fcinfo, a, elemtypes[a], &columns[a]);
		if (columns[a].count != columns[0].count)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("the arrays of payments.ingest_batch must have the same length")));
	}
	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	batch.count = columns[0].count;
	batch.deliveries = palloc0(sizeof(BatchDelivery) * Max(batch.count, 1));
	for (int i = 0; i < batch.count; i++)
	{
		BatchDelivery *d = &batch.deliveries[i];

		d->index = i;
		d->columns = columns;
		RunForDelivery(PrepareStep, d);
	}
	MarkRepeatedEvents(&batch);

	if (batch.in_set > 0)
	{
		char	   *error;
		int			sqlerrcode;
		bool		stored = RunInSubtransactionCode(StoreSetStep, &batch, &error, &sqlerrcode);
		bool		conflict = !stored &&
			ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK;

		if (conflict)
			ereport(LOG,
					(errmsg("could not store a batch's Stripe events together, answering them with the error"),
					 errdetail("%s", error)));
		else if (!stored)
			ereport(LOG,
					(errmsg("could not store a batch's Stripe events together, storing them one by one"),
					 errdetail("%s", error)));
		else
			SettleUndecided(&batch);

		/* in the events' order, as the set statement would have stored them */
		for (int o = 0; o < batch.ordered; o++)
		{
			BatchDelivery *d = &batch.deliveries[batch.order[o]];

			if (!d->in_set)
				continue;
			if (conflict)
			{
				/* rolled back, and would meet the same lock again: for the caller to retry */
				d->error = error;
				d->sqlerrcode = sqlerrcode;
				continue;
			}
			if (!stored)
			{
				/* rolled back: each is stored alone, as if there were no set */
				RunForDelivery(StoreAloneStep, d);
				continue;
			}
			if (d->repeated && batch.deliveries[d->first].error != NULL)
			{
				/* its event was taken out again: this delivery is retried too */
				d->error = batch.deliveries[d->first].error;
				d->sqlerrcode = batch.deliveries[d->first].sqlerrcode;
				continue;
			}
			if (d->error != NULL)
				continue;		/* settling alone met a concurrent transaction */
			if (d->repeated)
				d->set_outcome = "duplicate";
			d->result.http_status = 200;
			d->result.outcome = d->set_outcome;
			d->result.event_id = d->events.events[0].event_id;
		}
	}

	for (int i = 0; i < batch.count; i++)
		PutResult(rsinfo, &batch.deliveries[i]);
	SPI_finish();
	return (Datum) 0;
}
