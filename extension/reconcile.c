/*
 * reconcile.c
 *		payments.reconcile: asks the providers about payments stuck in pending.
 *
 * SQL decides what to ask and what the answers mean; provider_calls.c moves
 * the bytes.  One run is: fetch the API tokens that are missing or expired
 * (payments.api_token_requests), commit, send, store them
 * (payments.store_api_token, which discards those asked with credentials
 * changed since), commit; claim the stuck payments and record a
 * check for each (payments.claim_reconciliation), commit, so that no row
 * lock is held while the providers answer; send the batch in parallel;
 * record each answer (payments.record_reconciliation, which applies it
 * through the state machine) and commit.  Like deliver_outbox it must be
 * CALLed outside a transaction block.
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(reconcile);
PG_FUNCTION_INFO_V1(paynow_form);

/* Most payments one run may check: every request is sent at once */
#define MAX_CHECKS 200

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
		UseReadCommitted();
		/* each token answer with the digest of the credentials it was asked with */
		RunProviderCalls("SELECT provider, url, method, headers, body, credentials FROM payments.api_token_requests($1)",
				max_items, "SELECT payments.store_api_token($1, $2, $3, $4, $5)", TEXTOID,
				RECONCILE_MAX_RESPONSE, cxt);
		MemoryContextReset(cxt);
		RunProviderCalls("SELECT check_id, url, method, headers, body FROM payments.claim_reconciliation($1)",
				max_items, "SELECT payments.record_reconciliation($1, $2, $3, $4)", INT8OID,
				RECONCILE_MAX_RESPONSE, cxt);
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
