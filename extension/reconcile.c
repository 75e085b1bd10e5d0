/*
 * reconcile.c
 *		payments.reconcile: asks the providers about payments stuck in pending.
 *
 * SQL decides what to ask and what the answers mean; this file only moves
 * bytes.  One run is: fetch the API tokens that are missing or expired
 * (payments.api_token_requests), commit, send, store them
 * (payments.store_api_token), commit; claim the stuck payments and record a
 * check for each (payments.claim_reconciliation), commit, so that no row
 * lock is held while the providers answer; send the batch in parallel;
 * record each answer (payments.record_reconciliation, which applies it
 * through the state machine) and commit.  Like deliver_outbox it must be
 * CALLed outside a transaction block.
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

PG_FUNCTION_INFO_V1(reconcile);
PG_FUNCTION_INFO_V1(paynow_form);

/* Most payments one run may check: every request is sent at once */
#define MAX_CHECKS 200

/* One request to a provider and who asked it */
typedef struct ProviderCall
{
	char	   *key;			/* the check id, or the provider of a token */
} ProviderCall;

/*
 * Runs a query returning (key, url, method, headers, body) and turns its rows
 * into requests allocated in cxt; headers are "Name: value" lines.  Returns
 * how many.
 */
static int
LoadRequests(const char *query, int max_items, MemoryContext cxt,
			 ProviderCall **calls, OutboundRequest **reqs)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(max_items)};
	int			n;
	MemoryContext old;

	if (SPI_execute_with_args(query, strchr(query, '$') ? 1 : 0, argtypes, args, NULL, false, 0)
		!= SPI_OK_SELECT)
		elog(ERROR, "could not run \"%s\"", query);
	n = (int) SPI_processed;
	old = MemoryContextSwitchTo(cxt);
	*calls = palloc0(sizeof(ProviderCall) * (n + 1));
	*reqs = palloc0(sizeof(OutboundRequest) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		OutboundRequest *req = &(*reqs)[i];
		char	   *method = SPI_getvalue(row, desc, 3);
		char	   *headers = SPI_getvalue(row, desc, 4);
		char	   *body = SPI_getvalue(row, desc, 5);

		(*calls)[i].key = pstrdup(SPI_getvalue(row, desc, 1));
		req->url = pstrdup(SPI_getvalue(row, desc, 2));
		req->get = method != NULL && strcmp(method, "GET") == 0;
		req->body = pstrdup(body != NULL ? body : "");
		req->bodylen = strlen(req->body);
		/* one more slot for the header that turns off 100-continue */
		req->headers = palloc0(sizeof(char *) * (headers != NULL ? strlen(headers) / 2 + 3 : 2));
		if (headers != NULL)
		{
			char	   *copy = pstrdup(headers);
			char	   *save = NULL;

			for (char *line = strtok_r(copy, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save))
				req->headers[req->nheaders++] = line;
		}
		req->headers[req->nheaders++] = pstrdup("Expect:");
		req->connect_timeout_ms = Max(reconcile_timeout_ms / 3, 1);
		req->timeout_ms = reconcile_timeout_ms;
		req->max_response = RECONCILE_MAX_RESPONSE;
		req->response_keep = RECONCILE_MAX_RESPONSE;
		req->response = palloc0(RECONCILE_MAX_RESPONSE + 1);
	}
	MemoryContextSwitchTo(old);
	return n;
}

/* Sends a batch; raises a pending cancel, and ends the backend if the postmaster died */
static void
SendOrStop(OutboundRequest *reqs, int n)
{
	if (n == 0 || SendOutboundBatch(reqs, n))
		return;
	/* what was claimed stays recorded as started; the next run asks again */
	CHECK_FOR_INTERRUPTS();
	if (!PostmasterIsAlive())
		ereport(FATAL,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("the postmaster exited during reconciliation")));
}

/* Hands one answer to an SQL recorder taking (key, http_status, error, response) */
static void
RecordAnswer(const char *query, Oid keytype, const ProviderCall *call, const OutboundRequest *req)
{
	Oid			argtypes[4] = {keytype, INT4OID, TEXTOID, TEXTOID};
	Datum		args[4];
	char		nulls[4] = "    ";
	bool		readable;
	const char *error = req->error;

	args[0] = keytype == INT8OID ? DirectFunctionCall1(int8in, CStringGetDatum(call->key))
		: CStringGetTextDatum(call->key);
	args[1] = Int32GetDatum((int32) req->http_status);
	nulls[1] = req->http_status == 0 ? 'n' : ' ';
	readable = memchr(req->response, '\0', req->response_len) == NULL &&
		pg_verifymbstr(req->response, (int) req->response_len, true);
	if (!readable && error[0] == '\0')
		error = "the reply is not text in the database encoding";
	args[2] = error[0] ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[2] = error[0] ? ' ' : 'n';
	args[3] = readable ? PointerGetDatum(cstring_to_text_with_len(req->response, (int) req->response_len)) : (Datum) 0;
	nulls[3] = readable ? ' ' : 'n';
	if (SPI_execute_with_args(query, 4, argtypes, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run \"%s\"", query);
}

/* One step: load the requests and commit, send, record every answer and commit */
static void
RunStep(const char *load, int max_items, const char *record, Oid keytype, MemoryContext cxt)
{
	ProviderCall *calls;
	OutboundRequest *reqs;
	int			n;

	n = LoadRequests(load, max_items, cxt, &calls, &reqs);
	SPI_commit();
	if (n == 0)
		return;
	SendOrStop(reqs, n);
	for (int i = 0; i < n; i++)
		RecordAnswer(record, keytype, &calls[i], &reqs[i]);
	SPI_commit();
}

/* SQL: CALL payments.reconcile(max_items integer DEFAULT 50) */
Datum
reconcile(PG_FUNCTION_ARGS)
{
	int			max_items = PG_ARGISNULL(0) ? 50 : PG_GETARG_INT32(0);
	MemoryContext cxt;

	if (fcinfo->context == NULL || !IsA(fcinfo->context, CallContext) ||
		((CallContext *) fcinfo->context)->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("payments.reconcile must be called with CALL outside a transaction block"),
				 errdetail("It commits the checks before asking the providers, so that no lock is held meanwhile.")));
	if (max_items < 1 || max_items > MAX_CHECKS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_items must be between 1 and %d", MAX_CHECKS)));

	/* outlives the commits of the run */
	cxt = AllocSetContextCreate(TopMemoryContext, "payments reconcile", ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		RunStep("SELECT provider, url, method, headers, body FROM payments.api_token_requests($1)",
				max_items, "SELECT payments.store_api_token($1, $2, $3, $4)", TEXTOID, cxt);
		MemoryContextReset(cxt);
		RunStep("SELECT check_id, url, method, headers, body FROM payments.claim_reconciliation($1)",
				max_items, "SELECT payments.record_reconciliation($1, $2, $3, $4)", INT8OID, cxt);
		SPI_finish();
	}
	PG_FINALLY();
	{
		MemoryContextDelete(cxt);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}

/*
 * SQL: payments.paynow_form(body bytea) returns the fields of a Paynow
 * urlencoded message (a poll reply) as a jsonb object, decoded strictly;
 * NULL if it is not a well-formed form.  The hash is not checked here
 * (payments.verify_paynow does that).
 */
Datum
paynow_form(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	Form		form;
	char	   *error = NULL;
	Jsonb	   *result;

	if (!ParseUrlEncodedForm(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &form, &error))
		PG_RETURN_NULL();
	result = FormToJsonb(&form, &error);
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(result);
}
