/*
 * ingest.c
 *		payments.ingest: the one call the shim makes per webhook delivery.
 *
 * Order of work: find the provider and its live secrets, verify the signature
 * over the raw body (before any parsing), parse the body, then insert the
 * event idempotently.  Rejections and invalid bodies are recorded, without
 * secrets, in the same transaction.  The caller maps the returned status to
 * HTTP as is.
 */
#include "payments.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(ingest);

static SPIPlanPtr event_plan = NULL;
static SPIPlanPtr rejection_plan = NULL;
static SPIPlanPtr store_plan = NULL;
static SPIPlanPtr apply_failed_plan = NULL;

/* Checks the delivery's signature by the provider's scheme, with every live secret */
static void
VerifyDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	if (provider->kind->uses_secrets && provider->secrets.count == 0)
	{
		VerdictReject(verdict, "no_live_secret",
					  "provider \"%s\" has no live secret", provider->name);
		return;
	}
	provider->kind->verify(provider, delivery, verdict);
}

/* Records a refused delivery: reason, sender, hash and size of the body, headers bounded */
static void
RecordRejection(const Delivery *delivery, const char *outcome, const char *reason,
				const char *detail)
{
	Oid			argtypes[8] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INETOID, TEXTOID,
	BYTEAOID, JSONBOID};
	Datum		args[8];
	char		nulls[8] = "        ";
	SPIPlanPtr	plan;

	plan = KeptPlan(&rejection_plan,
					   "INSERT INTO payments.rejections"
					   " (provider, outcome, reason, detail, source_ip, request_id,"
					   "  body_sha256, body_size, headers)"
					   " VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.sha256($7),"
					   "         pg_catalog.length($7), payments.rejected_headers($8))",
					   8, argtypes);
	args[0] = PointerGetDatum(delivery->provider);
	args[1] = CStringGetTextDatum(outcome);
	args[2] = CStringGetTextDatum(reason);
	args[3] = detail ? CStringGetTextDatum(detail) : (Datum) 0;
	nulls[3] = detail ? ' ' : 'n';
	args[4] = delivery->source_ip;
	nulls[4] = delivery->source_ip_null ? 'n' : ' ';
	args[5] = delivery->request_id ? PointerGetDatum(delivery->request_id) : (Datum) 0;
	nulls[5] = delivery->request_id ? ' ' : 'n';
	args[6] = PointerGetDatum(delivery->body);
	args[7] = JsonbPGetDatum(delivery->headers);

	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record rejection");
}

/* The columns of an event's row, in payments.events order from event_id to request_id */
#define EVENT_ARGS 8

/*
 * Fills args and nulls, from position 0, with an event's columns: event_id,
 * event_type, event_at, body, payload, headers (credentials still in: the
 * statements take them out), source_ip, request_id.
 */
static void
EventArgs(const Delivery *delivery, const EventRecord *event, Datum *args, char *nulls)
{
	args[0] = CStringGetTextDatum(event->event_id);
	nulls[0] = ' ';
	args[1] = event->event_type ? CStringGetTextDatum(event->event_type) : (Datum) 0;
	nulls[1] = event->event_type ? ' ' : 'n';
	args[2] = TimestampTzGetDatum(event->event_at);
	nulls[2] = event->have_event_at ? ' ' : 'n';
	args[3] = PointerGetDatum(delivery->body);
	nulls[3] = ' ';
	args[4] = JsonbPGetDatum(event->payload);
	nulls[4] = ' ';
	args[5] = JsonbPGetDatum(delivery->headers);
	nulls[5] = ' ';
	args[6] = delivery->source_ip;
	nulls[6] = delivery->source_ip_null ? 'n' : ' ';
	args[7] = delivery->request_id ? PointerGetDatum(delivery->request_id) : (Datum) 0;
	nulls[7] = delivery->request_id ? ' ' : 'n';
}

/*
 * Inserts an event, pending, unless (provider, event_id) is already stored;
 * returns the new row's id, or 0 for a duplicate.  The path of an event whose
 * application failed (StoreEvent).
 */
static int64
InsertEvent(const Delivery *delivery, const EventRecord *event)
{
	Oid			argtypes[9] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, BYTEAOID,
	JSONBOID, JSONBOID, INETOID, TEXTOID};
	Datum		args[1 + EVENT_ARGS];
	char		nulls[1 + EVENT_ARGS] = " ";
	SPIPlanPtr	plan;
	bool		isnull;

	plan = KeptPlan(&event_plan,
					   "INSERT INTO payments.events"
					   " (provider, event_id, event_type, event_at, body, payload, headers,"
					   "  source_ip, request_id, state)"
					   " VALUES ($1, $2, $3, $4, $5, $6, payments.stored_headers($7), $8, $9,"
					   "         'pending')"
					   " ON CONFLICT (provider, event_id) DO NOTHING RETURNING id",
					   9, argtypes);
	args[0] = PointerGetDatum(delivery->provider);
	EventArgs(delivery, event, args + 1, nulls + 1);

	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert event");
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Records that the first attempt to apply a stored event failed with error:
 * the event stays pending, the error kept and its retry scheduled
 * (payments.event_failed).
 */
void
RecordFailedAttempt(int64 event_row, const char *error)
{
	Oid			argtypes[2] = {INT8OID, TEXTOID};
	Datum		args[2];

	args[0] = Int64GetDatum(event_row);
	args[1] = CStringGetTextDatum(error);
	if (SPI_execute_plan(KeptPlan(&apply_failed_plan, "SELECT payments.event_failed($1, $2, 1)",
								  2, argtypes),
						 args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record a failed event");
	/* the error may quote the body: it goes in the detail, which the shim does not log */
	ereport(WARNING,
			(errmsg("event %lld is stored but could not be applied", (long long) event_row),
			 errdetail("%s", error),
			 errhint("It is retried (payments.event_attempts keeps every error).")));
}

/* Input and output of StoreEventStep */
typedef struct EventStorage
{
	const Provider *provider;
	const Delivery *delivery;
	const EventRecord *event;
	const char *outcome;
} EventStorage;

/* Stores and applies one event with payments.store_event (the step run in a subtransaction) */
static void
StoreEventStep(void *arg)
{
	EventStorage *storage = arg;
	const Delivery *delivery = storage->delivery;
	Oid			argtypes[11] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	BYTEAOID, JSONBOID, JSONBOID, INETOID, TEXTOID};
	Datum		args[3 + EVENT_ARGS];
	char		nulls[3 + EVENT_ARGS] = "   ";
	SPIPlanPtr	plan;

	plan = KeptPlan(&store_plan,
					"SELECT payments.store_event($1, $2, $3, $4, $5, $6, $7, $8,"
					"                            payments.stored_headers($9), $10, $11)",
					11, argtypes);
	args[0] = PointerGetDatum(delivery->provider);
	args[1] = CStringGetTextDatum(storage->provider->kind->name);
	args[2] = JsonbPGetDatum(storage->provider->settings);
	EventArgs(delivery, storage->event, args + 3, nulls + 3);

	if (SPI_execute_plan(plan, args, nulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not store event");
	storage->outcome = pstrdup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
}

/*
 * Stores one event and applies it to its payment, inside a subtransaction:
 * whatever goes wrong there (the application above all) is rolled back, and
 * the event is then stored alone, pending, with the error kept and its retry
 * scheduled (payments.event_failed), instead of failing the delivery.  A
 * deadlock or serialization failure is no fault of the event but a conflict
 * with a concurrent transaction: it is raised again, for the caller to retry
 * the delivery (the shim stores it again, alone).  Returns applied, ignored,
 * stored or duplicate.
 */
static const char *
StoreEvent(const Provider *provider, const Delivery *delivery, const EventRecord *event)
{
	EventStorage storage = {provider, delivery, event, NULL};
	char	   *error;
	int			sqlerrcode;
	int64		event_row;

	if (RunInSubtransactionCode(StoreEventStep, &storage, &error, &sqlerrcode))
		return storage.outcome;
	if (ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK)
		ereport(ERROR, (errcode(sqlerrcode), errmsg("%s", error)));

	event_row = InsertEvent(delivery, event);
	if (event_row == 0)
		return "duplicate";		/* stored meanwhile by another delivery */
	RecordFailedAttempt(event_row, error);
	return "stored";
}

/* Refuses a delivery with 401 and records why */
static void
Reject(const Delivery *delivery, const Verdict *verdict, IngestResult *result)
{
	RecordRejection(delivery, "rejected", verdict->reason, verdict->detail);
	result->http_status = 401;
	result->outcome = "rejected";
}

/* Refuses a verified but unusable body with 400 and records why */
static void
Invalid(const Delivery *delivery, const char *reason, const char *detail,
		IngestResult *result)
{
	RecordRejection(delivery, "invalid", reason, detail);
	result->http_status = 400;
	result->outcome = "invalid";
}

/*
 * Finds the delivery's provider, verifies the signature and extracts the
 * events.  Returns true with the provider and events when there are events
 * to store; false with the result filled in when the delivery is answered
 * without them (unknown provider, unverifiable for now, rejected, invalid).
 */
bool
PrepareDelivery(const Delivery *delivery, Provider *provider, EventList *events,
				IngestResult *result)
{
	Verdict		verdict = {0};

	if (!LookupProvider(delivery->provider, provider))
	{
		result->http_status = 404;
		result->outcome = "unknown_provider";
		return false;
	}

	VerifyDelivery(provider, delivery, &verdict);
	if (verdict.transient)
	{
		ereport(WARNING,
				(errmsg("could not verify a delivery to provider \"%s\" for now: %s",
						provider->name, verdict.detail)));
		result->http_status = 503;
		result->outcome = "unavailable";
		return false;
	}
	if (verdict.invalid_body)
	{
		Invalid(delivery, verdict.reason, verdict.detail, result);
		return false;
	}
	if (!verdict.valid)
	{
		Reject(delivery, &verdict, result);
		return false;
	}

	provider->kind->extract(provider, delivery, events);
	if (events->count < 0)
	{
		Invalid(delivery, events->invalid_reason, events->invalid_detail, result);
		return false;
	}
	Assert(events->count > 0);	/* every kind stores at least one event */
	return true;
}

/*
 * Stores the events of a verified delivery, filling in the result.  A
 * delivery holding several events (a Meta batch) is stored whole in this
 * transaction; it is a duplicate only if every event in it is.
 */
void
StoreDeliveryEvents(const Provider *provider, const Delivery *delivery,
					const EventList *events, IngestResult *result)
{
	int			inserted = 0;
	int			applied = 0;
	int			stored = 0;

	for (int i = 0; i < events->count; i++)
	{
		const char *outcome = StoreEvent(provider, delivery, &events->events[i]);

		if (strcmp(outcome, "duplicate") == 0)
			continue;
		inserted++;
		if (strcmp(outcome, "applied") == 0)
			applied++;
		else if (strcmp(outcome, "stored") == 0)
			stored++;
	}
	result->http_status = 200;
	result->outcome = applied > 0 ? "applied" : stored > 0 ? "stored" :
		inserted > 0 ? "ignored" : "duplicate";
	if (events->count == 1)
		result->event_id = events->events[0].event_id;
}

/* Verifies, parses and stores one delivery, filling in the result */
static void
IngestDelivery(const Delivery *delivery, IngestResult *result)
{
	Provider	provider;
	EventList	events = {0};

	if (PrepareDelivery(delivery, &provider, &events, result))
		StoreDeliveryEvents(&provider, delivery, &events, result);
}

/*
 * Fills in a delivery from the shim's arguments (each NULL when SQL NULL),
 * raising an error when they cannot make one.
 */
void
MakeDelivery(Delivery *delivery, text *provider, Jsonb *headers, bytea *body,
			 Datum source_ip, bool source_ip_null, text *request_id)
{
	if (provider == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("provider must not be null")));
	if (body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("body must not be null"),
				 errhint("Pass an empty bytea for an empty body.")));

	delivery->provider = provider;
	delivery->headers = headers != NULL ? headers :
		DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	if (!JB_ROOT_IS_OBJECT(delivery->headers) || JB_ROOT_IS_SCALAR(delivery->headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object of header names to values")));
	delivery->body = body;
	delivery->source_ip_null = source_ip_null;
	delivery->source_ip = source_ip_null ? (Datum) 0 : source_ip;
	delivery->request_id = request_id;
}

/* Reads payments.ingest's arguments into a delivery */
static void
ReadDelivery(FunctionCallInfo fcinfo, Delivery *delivery)
{
	MakeDelivery(delivery,
				 PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0),
				 PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1),
				 PG_ARGISNULL(2) ? NULL : PG_GETARG_BYTEA_PP(2),
				 PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3), PG_ARGISNULL(3),
				 PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4));
}

/*
 * Refuses to ingest under REPEATABLE READ or SERIALIZABLE: deliveries of one
 * PayPal transmission or Paynow hash wait for each other (signature_reuse.c)
 * and must then see what the other committed, which a snapshot taken before
 * the wait does not; two bodies under one signature would both be stored.
 * The shim sets READ COMMITTED on its connections; this is for other callers,
 * or a role whose default_transaction_isolation the shim's SET did not reach.
 */
void
RequireReadCommitted(const char *function)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("%s must run at the READ COMMITTED isolation level", function),
				 errhint("SET default_transaction_isolation TO 'read committed' for the caller.")));
}

/*
 * SQL: payments.ingest(provider, headers, body, source_ip, request_id)
 * returns one row (http_status, outcome, event_id).
 */
Datum
ingest(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Delivery	delivery;
	IngestResult result = {0};
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	RequireReadCommitted("payments.ingest");
	ReadDelivery(fcinfo, &delivery);
	InitMaterializedSRF(fcinfo, 0);

	/*
	 * An answer is the sender's receipt: this transaction commits durably
	 * even where its role or database sets synchronous_commit off (as SET
	 * LOCAL would: the setting comes back at its end).  The other levels,
	 * local and the standbys', are kept.
	 */
	if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		(void) set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	IngestDelivery(&delivery, &result);

	/*
	 * A duplicate writes nothing, so this transaction's commit would flush
	 * nothing; but the event it repeats may have been committed
	 * asynchronously (by a batch of the shim) and not be on disk yet, and a
	 * 200 stops the sender's retries.  So flush first, as a commit would.
	 */
	if (strcmp(result.outcome, "duplicate") == 0)
		FlushWrittenWal();

	values[0] = Int32GetDatum(result.http_status);
	values[1] = CStringGetTextDatum(result.outcome);
	values[2] = result.event_id ? CStringGetTextDatum(result.event_id) : (Datum) 0;
	nulls[2] = result.event_id == NULL;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	SPI_finish();

	return (Datum) 0;
}
