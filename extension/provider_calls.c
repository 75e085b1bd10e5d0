/*
 * provider_calls.c
 *		Requests to providers' APIs decided in SQL: reconciliation (tokens,
 *		checks) and Paynow initiations.
 *
 * SQL decides what to ask and what the answers mean; this file only moves
 * bytes.  One step claims the requests and commits, so that no row lock is
 * held and every request is on record while the providers answer; sends them
 * in parallel (SendOutboundBatch); records each answer and commits.
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/pmsignal.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

/* One request to a provider and who asked it */
typedef struct ProviderCall
{
	char	   *key;			/* the check id, or the provider of a token */
	bool		tagged;			/* the load step returned a sixth column, tag */
	char	   *tag;			/* its value (NULL: SQL NULL): what a token was
								 * asked with, handed back to the recorder */
} ProviderCall;

/*
 * Runs a query returning (key, url, method, headers, body[, tag]) and turns
 * its rows into requests allocated in cxt; headers are "Name: value" lines.
 * Returns how many.
 */
static int
LoadRequests(const char *query, int max_items, int max_response, MemoryContext cxt,
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
		if (desc->natts >= 6)
		{
			char	   *tag = SPI_getvalue(row, desc, 6);

			(*calls)[i].tagged = true;
			(*calls)[i].tag = tag != NULL ? pstrdup(tag) : NULL;
		}
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
		req->max_response = max_response;
		req->response_keep = max_response;
		req->response = palloc0(max_response + 1);
	}
	MemoryContextSwitchTo(old);
	return n;
}

/*
 * Hands one answer to an SQL recorder taking (key, http_status, error,
 * response), and the request's tag as a fifth argument when it has one
 */
static void
RecordAnswer(const char *query, Oid keytype, const ProviderCall *call, const OutboundRequest *req)
{
	Oid			argtypes[5] = {keytype, INT4OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		args[5];
	char		nulls[5] = "     ";
	bool		readable;
	const char *error = req->error;

	args[0] = keytype == INT8OID ? DirectFunctionCall1(int8in, CStringGetDatum(call->key))
		: CStringGetTextDatum(call->key);
	args[1] = Int32GetDatum((int32) req->http_status);
	nulls[1] = req->http_status == 0 ? 'n' : ' ';
	/* no answer at all (no connection, say) is a NULL response, never an empty one */
	readable = req->http_status != 0 &&
		memchr(req->response, '\0', req->response_len) == NULL &&
		pg_verify_mbstr(PG_UTF8, req->response, (int) req->response_len, true);
	if (!readable && req->http_status != 0 && error[0] == '\0')
		error = "the reply is not UTF-8 text";
	args[2] = error[0] ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[2] = error[0] ? ' ' : 'n';
	args[3] = readable ? PointerGetDatum(cstring_to_text_with_len(req->response, (int) req->response_len)) : (Datum) 0;
	nulls[3] = readable ? ' ' : 'n';
	args[4] = call->tag != NULL ? CStringGetTextDatum(call->tag) : (Datum) 0;
	nulls[4] = call->tag != NULL ? ' ' : 'n';
	if (SPI_execute_with_args(query, call->tagged ? 5 : 4, argtypes, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run \"%s\"", query);
}

/* Input of RecordStep */
typedef struct AnswerToRecord
{
	const char *query;
	Oid			keytype;
	const ProviderCall *call;
	const OutboundRequest *req;
} AnswerToRecord;

/* Records one answer (the step run in a subtransaction) */
static void
RecordStep(void *arg)
{
	AnswerToRecord *a = arg;

	RecordAnswer(a->query, a->keytype, a->call, a->req);
}

/* The answers RecordEachAnswer records */
typedef struct AnswersToRecord
{
	const char *query;
	Oid			keytype;
	const ProviderCall *calls;
	const OutboundRequest *reqs;
	int			n;
	bool		done_only;		/* only those of the requests that finished */
} AnswersToRecord;

/*
 * Records every answer, each in a subtransaction of its own: one that fails
 * (a lock timeout, a deadlock) loses that answer only, as if it never came
 * (an initiation is swept as unconfirmed, a stuck payment asked again), not
 * every answer of the run (Paynow's poll URLs and payment instructions with
 * them).
 */
static void
RecordEachAnswer(void *arg)
{
	AnswersToRecord *answers = arg;

	for (int i = 0; i < answers->n; i++)
	{
		AnswerToRecord a = {answers->query, answers->keytype, &answers->calls[i], &answers->reqs[i]};
		char	   *error;
		int			sqlerrcode;

		if (answers->done_only && !answers->reqs[i].done)
			continue;
		if (!RunInSubtransactionCode(RecordStep, &a, &error, &sqlerrcode))
			ereport(WARNING,
					(errcode(sqlerrcode),
					 errmsg("could not record the answer to request %s: %s", answers->calls[i].key, error)));
	}
}

/*
 * Records the answers (of the requests that finished only, when done_only)
 * and commits; a cancel while they are recorded keeps those recorded before
 * it (RunUntilCancel): they are committed, then it is raised.
 */
static void
RecordAnswers(AnswersToRecord *answers, MemoryContext cxt)
{
	ErrorData  *stopped = RunUntilCancel(RecordEachAnswer, answers, cxt);

	SPI_commit_and_chain();
	if (stopped != NULL)
		ReThrowError(stopped);
}

/*
 * One step: load the requests and commit, send, record every answer and
 * commit.  A cancel while the requests are out (a statement timeout) stops
 * them: the answers that came are recorded before it is served
 * (SetCancelAside), the others left to the next run (a check is closed as
 * interrupted, an initiation swept as lost).  load takes max_items as $1 and
 * returns (key, url, method, headers, body), or these and a tag; record
 * takes (key, http_status, error, response), and the tag if there is one.  The caller has connected SPI
 * non-atomically and moved to READ COMMITTED (UseReadCommitted): every
 * commit here chains, keeping it.
 */
void
RunProviderCalls(const char *load, int max_items, const char *record, Oid keytype,
				 int max_response, MemoryContext cxt)
{
	ProviderCall *calls;
	OutboundRequest *reqs;
	AnswersToRecord answers;
	bool		statement_timeout;
	int			n;

	n = LoadRequests(load, max_items, max_response, cxt, &calls, &reqs);
	SPI_commit_and_chain();
	if (n == 0)
		return;
	/*
	 * The claim is durable before anything is sent (an initiation is never
	 * sent twice, a check in flight is on record), and so is everything
	 * committed before it, whatever synchronous_commit the role or database
	 * sets; a cancel of the wait for the synchronous standbys is an error,
	 * nothing sent.
	 */
	(void) FlushWrittenWal();
	answers = (AnswersToRecord) {record, keytype, calls, reqs, n, false};
	if (!SendOutboundBatch(reqs, n))
	{
		if (!PostmasterIsAlive())
			ereport(FATAL,
					(errcode(ERRCODE_ADMIN_SHUTDOWN),
					 errmsg("the postmaster exited during requests to a provider")));
		if (SetCancelAside(&statement_timeout))
		{
			answers.done_only = true;
			(void) RunUntilCancel(RecordEachAnswer, &answers, cxt);
			EndCancelAside();
			SPI_commit_and_chain();
			ServeCancelSetAside(statement_timeout);
		}
		CHECK_FOR_INTERRUPTS();
		/* an interrupt not served here: what did not finish is recorded so */
		EndUnfinishedRequests(reqs, n);
	}
	RecordAnswers(&answers, cxt);
}
