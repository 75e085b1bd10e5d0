/*
 * outbox.c
 *		payments.deliver_outbox: the outbound delivery run.
 *
 * A crash must mean a retry, never a loss, so one run is three steps:
 * claim due items and record an attempt for each (payments.claim_outbox,
 * which also leases them: if no result is ever recorded they fall due again
 * when the lease ends) and COMMIT, then flush the WAL (nothing sent may
 * tell of a commit a crash could lose, whatever synchronous_commit says);
 * send the batch in parallel with no transaction work in between; record
 * every result (payments.record_delivery, each in a subtransaction) and
 * commit.  The procedure must therefore be CALLed in a non-atomic context
 * (not inside BEGIN ... COMMIT): it commits itself.
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/pmsignal.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(deliver_outbox);

/* Most items one run may claim: every one of them is sent at once */
#define MAX_BATCH 200

/* One claimed item */
typedef struct ClaimedItem
{
	int64		outbox_id;
	int64		attempt_id;
	char	   *msg_id;
	char	   *secret;			/* an endpoint's: the item is signed; NULL: a WhatsApp message */
	char	   *headers;		/* more "Name: value" lines (a WhatsApp message's bearer token) */
	char	   *upload_type;	/* non-NULL: a WhatsApp document's file, uploaded as media */
} ClaimedItem;

/* The fields of a WhatsApp media upload before the file (the type is set per item) */
#define UPLOAD_FIELDS 4

/* Text of a column of the current SPI row, copied into cxt; NULL if null */
static char *
ColumnText(MemoryContext cxt, HeapTuple row, TupleDesc desc, int col)
{
	char	   *value = SPI_getvalue(row, desc, col);

	return value == NULL ? NULL : MemoryContextStrdup(cxt, value);
}

/*
 * A body's text, copied into cxt; empty if null.  It is UTF-8, the database
 * being UTF8, as JSON must go out (RFC 8259), and the signature is over these
 * bytes.
 */
static char *
BodyText(MemoryContext cxt, HeapTuple row, TupleDesc desc, int col)
{
	char	   *value = SPI_getvalue(row, desc, col);

	return MemoryContextStrdup(cxt, value == NULL ? "" : value);
}

/*
 * Claims up to max_items due items (sends: "all", "webhooks" or "chats") into
 * items/reqs (allocated in cxt); returns how many
 */
static int
ClaimItems(int max_items, const char *sends, MemoryContext cxt, ClaimedItem **items,
		   OutboundRequest **reqs)
{
	Oid			argtypes[2] = {INT4OID, TEXTOID};
	Datum		args[2] = {Int32GetDatum(max_items), CStringGetTextDatum(sends)};
	int			n;

	if (SPI_execute_with_args("SELECT outbox_id, attempt_id, msg_id, url, secret, body, headers,"
							  "       ca_file, connect_timeout_ms, timeout_ms, max_response_bytes,"
							  "       upload_filename, upload_type"
							  "  FROM payments.claim_outbox($1, $2)",
							  2, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not claim outbox items");
	n = (int) SPI_processed;
	*items = MemoryContextAllocZero(cxt, sizeof(ClaimedItem) * (n + 1));
	*reqs = MemoryContextAllocZero(cxt, sizeof(OutboundRequest) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		OutboundRequest *req = &(*reqs)[i];
		bool		isnull;

		(*items)[i].outbox_id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		(*items)[i].attempt_id = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
		(*items)[i].msg_id = ColumnText(cxt, row, desc, 3);
		req->url = ColumnText(cxt, row, desc, 4);
		(*items)[i].secret = ColumnText(cxt, row, desc, 5);
		req->body = BodyText(cxt, row, desc, 6);
		req->bodylen = strlen(req->body);
		(*items)[i].headers = ColumnText(cxt, row, desc, 7);
		req->ca_file = ColumnText(cxt, row, desc, 8);
		req->connect_timeout_ms = DatumGetInt32(SPI_getbinval(row, desc, 9, &isnull));
		req->timeout_ms = DatumGetInt32(SPI_getbinval(row, desc, 10, &isnull));
		req->max_response = DatumGetInt32(SPI_getbinval(row, desc, 11, &isnull));
		req->file_name = ColumnText(cxt, row, desc, 12);
		(*items)[i].upload_type = ColumnText(cxt, row, desc, 13);
	}
	return n;
}

/*
 * Signs each webhook (webhook-id, webhook-timestamp, webhook-signature), adds
 * a WhatsApp message's headers, sets up a WhatsApp document's upload (a
 * multipart form: messaging_product, type, then the file), and allocates the
 * buffers, all before any libcurl handle exists.
 */
static void
PrepareRequests(ClaimedItem *items, OutboundRequest *reqs, int n, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	int64		now = (int64) time(NULL);

	for (int i = 0; i < n; i++)
	{
		OutboundRequest *req = &reqs[i];

		req->headers = palloc(sizeof(char *) * 6);
		if (req->file_name != NULL)
		{
			const char **fields = palloc(sizeof(char *) * UPLOAD_FIELDS);

			fields[0] = "messaging_product";
			fields[1] = "whatsapp";
			fields[2] = "type";
			fields[3] = req->file_type = items[i].upload_type;
			req->form_fields = fields;
			req->nform_fields = UPLOAD_FIELDS;
		}
		else
			req->headers[req->nheaders++] = pstrdup("Content-Type: application/json");
		if (items[i].secret != NULL)
		{
			req->headers[req->nheaders++] = psprintf("webhook-id: %s", items[i].msg_id);
			req->headers[req->nheaders++] = psprintf("webhook-timestamp: " INT64_FORMAT, now);
			req->headers[req->nheaders++] =
				psprintf("webhook-signature: %s",
						 StandardWebhookSignature(items[i].msg_id, now, req->body,
												  req->bodylen, items[i].secret));
		}
		else if (items[i].headers != NULL)
			req->headers[req->nheaders++] = items[i].headers;	/* one line: Authorization */
		req->headers[req->nheaders++] = pstrdup("Expect:");	/* no 100-continue round trip */
		req->response = palloc0(OUTBOUND_RESPONSE_KEPT + 1);
	}
	MemoryContextSwitchTo(old);
}

/*
 * Bytes of a response's kept start to record, or -1 when they are not UTF-8
 * text. A start cut at the bytes kept may end in the first bytes of a
 * character: those are left out, the rest is still text.
 */
static int
RecordableResponseLength(const OutboundRequest *req)
{
	int			len = (int) req->response_len;
	int			valid;

	if (len == 0 || memchr(req->response, '\0', len) != NULL)
		return -1;
	valid = pg_encoding_verifymbstr(PG_UTF8, req->response, len);
	if (valid < len && req->response_total > req->response_len &&
		pg_encoding_mblen(PG_UTF8, req->response + valid) > len - valid)
		return valid;
	return valid == len ? len : -1;
}

/* Records the outcome of one attempt with payments.record_delivery */
static void
RecordResult(const ClaimedItem *item, const OutboundRequest *req)
{
	Oid			argtypes[7] = {INT8OID, INT4OID, INT4OID, TEXTOID, INT4OID, INT8OID, TEXTOID};
	Datum		args[7];
	char		nulls[7] = "       ";
	int			recordable = RecordableResponseLength(req);

	args[0] = Int64GetDatum(item->attempt_id);
	args[1] = Int32GetDatum((int32) req->http_status);
	nulls[1] = req->http_status == 0 ? 'n' : ' ';
	args[2] = Int32GetDatum(req->retry_after);
	nulls[2] = req->retry_after < 0 ? 'n' : ' ';
	args[3] = req->error[0] ? CStringGetTextDatum(req->error) : (Datum) 0;
	nulls[3] = req->error[0] ? ' ' : 'n';
	args[4] = Int32GetDatum(req->duration_ms);
	args[5] = Int64GetDatum((int64) req->response_total);
	/* the start of the response is kept when it is UTF-8 text */
	args[6] = recordable > 0 ? PointerGetDatum(cstring_to_text_with_len(req->response, recordable)) : (Datum) 0;
	nulls[6] = recordable > 0 ? ' ' : 'n';

	if (SPI_execute_with_args("SELECT payments.record_delivery($1, $2, $3, $4, $5, $6, $7)",
							  7, argtypes, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record a delivery attempt");
}

/* Input of RecordStep */
typedef struct ResultToRecord
{
	const ClaimedItem *item;
	const OutboundRequest *req;
} ResultToRecord;

/* Records one result (the step run in a subtransaction) */
static void
RecordStep(void *arg)
{
	ResultToRecord *r = arg;

	RecordResult(r->item, r->req);
}

/* The results RecordEachResult records */
typedef struct ResultsToRecord
{
	const ClaimedItem *items;
	const OutboundRequest *reqs;
	int			n;
	bool		done_only;
} ResultsToRecord;

/*
 * Records the results of the batch (of the finished requests only, when
 * done_only), each in a subtransaction of its own: one that fails (a
 * deadlock with a concurrent run's claim, say) loses that result only, its
 * item sent again when its lease ends, not every result of the batch.
 */
static void
RecordEachResult(void *arg)
{
	ResultsToRecord *batch = arg;

	for (int i = 0; i < batch->n; i++)
	{
		ResultToRecord r = {&batch->items[i], &batch->reqs[i]};
		char	   *error;
		int			sqlerrcode;

		if (batch->done_only && !batch->reqs[i].done)
			continue;
		if (!RunInSubtransactionCode(RecordStep, &r, &error, &sqlerrcode))
			ereport(WARNING,
					(errcode(sqlerrcode),
					 errmsg("could not record the result of outbox item %lld: %s",
							(long long) batch->items[i].outbox_id, error),
					 errdetail("The item is sent again when its lease ends.")));
	}
}

/*
 * Records the results of the batch (RecordEachResult).  A cancel stops the
 * recording: it is returned (RunUntilCancel) for the caller to commit the
 * results recorded before it and then raise it; the others are left to
 * their leases.
 */
static ErrorData *
RecordResults(const ClaimedItem *items, const OutboundRequest *reqs, int n, bool done_only,
			  MemoryContext cxt)
{
	ResultsToRecord batch = {items, reqs, n, done_only};

	return RunUntilCancel(RecordEachResult, &batch, cxt);
}

/* One run: claim and commit, send, record and commit */
static void
DeliverBatch(int max_items, const char *sends, MemoryContext cxt)
{
	ClaimedItem *items;
	OutboundRequest *reqs;
	int			n;
	ErrorData  *stopped;
	bool		statement_timeout;

	if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* each commit below chains, keeping READ COMMITTED (job_transactions.c) */
	UseReadCommitted();
	n = ClaimItems(max_items, sends, cxt, &items, &reqs);
	SPI_commit_and_chain();
	if (n > 0)
	{
		/*
		 * The attempts and leases are durable before anything is sent, and
		 * so is what the items tell of: a payment.paid webhook carries a
		 * receipt number, which a commit lost after it was sent (one made
		 * with synchronous_commit off, as the claim's own would be where
		 * the role or database sets it) would issue again to another
		 * donor.  Everything committed before the claim is flushed, and on
		 * the synchronous standbys (an error, nothing sent, if that wait is
		 * cancelled: the leases bring the items back).
		 */
		(void) FlushWrittenWal();
		PrepareRequests(items, reqs, n, cxt);
		if (SendOutboundBatch(reqs, n))
		{
			stopped = RecordResults(items, reqs, n, false, cxt);
			SPI_commit_and_chain();
			if (stopped != NULL)
				ReThrowError(stopped);
		}
		else
		{
			if (!PostmasterIsAlive())
				ereport(FATAL,
						(errcode(ERRCODE_ADMIN_SHUTDOWN),
						 errmsg("the postmaster exited during outbound deliveries")));
			/*
			 * Cancelled: the results of the requests that finished are
			 * recorded before the cancel is served (SetCancelAside); the
			 * leases bring the others back (and all of them on a
			 * shutdown).  Nothing is lost either way.
			 */
			if (SetCancelAside(&statement_timeout))
			{
				(void) RecordResults(items, reqs, n, true, cxt);
				EndCancelAside();
				SPI_commit_and_chain();
				ServeCancelSetAside(statement_timeout);
			}
			CHECK_FOR_INTERRUPTS();
		}
	}
	SPI_finish();
}

/*
 * SQL: CALL payments.deliver_outbox(max_items integer DEFAULT 100,
 *									  sends text DEFAULT 'all')
 */
Datum
deliver_outbox(PG_FUNCTION_ARGS)
{
	int			max_items = PG_ARGISNULL(0) ? 100 : PG_GETARG_INT32(0);
	char	   *sends = PG_ARGISNULL(1) ? "all" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	MemoryContext cxt;

	if (fcinfo->context == NULL || !IsA(fcinfo->context, CallContext) ||
		((CallContext *) fcinfo->context)->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("payments.deliver_outbox must be called with CALL outside a transaction block"),
				 errdetail("It commits the attempts before sending, so that a crash means a retry.")));
	if (max_items < 1 || max_items > MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_items must be between 1 and %d", MAX_BATCH)));
	if (strcmp(sends, "all") != 0 && strcmp(sends, "webhooks") != 0 && strcmp(sends, "chats") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sends must be all, webhooks or chats")));

	/* outlives the commits of the run */
	cxt = AllocSetContextCreate(TopMemoryContext, "payments deliver_outbox", ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		/* read after the run's first commit (UseReadCommitted) */
		DeliverBatch(max_items, MemoryContextStrdup(cxt, sends), cxt);
	}
	PG_FINALLY();
	{
		MemoryContextDelete(cxt);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}
