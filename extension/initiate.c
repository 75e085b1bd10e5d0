/*
 * initiate.c
 *		payments.initiate_payments: starts queued Paynow transactions (the
 *		mobile checkout of WhatsApp donations, PROVIDERS.md section 3.5).
 *
 * The payment exists (pending, with our merchant reference) before anything
 * is sent.  One run claims queued initiations and marks them sending
 * (payments.claim_initiations, which builds the hashed requests) and
 * commits; sends them in parallel; records each reply
 * (payments.record_initiation: hash verified, pollurl kept, instructions
 * queued for the donor) and commits.  An initiation is never sent twice.
 * It must be CALLed outside a transaction block.
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "nodes/parsenodes.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(initiate_payments);

/* Most initiations one run may send: every request is sent at once */
#define MAX_INITIATIONS 200

/* The largest Paynow reply read: a status, instructions, URLs and a hash */
#define INITIATE_MAX_RESPONSE (16 * 1024)

/* SQL: CALL payments.initiate_payments(max_items integer DEFAULT 20) */
Datum
initiate_payments(PG_FUNCTION_ARGS)
{
	int			max_items = PG_ARGISNULL(0) ? 20 : PG_GETARG_INT32(0);
	MemoryContext cxt;

	if (fcinfo->context == NULL || !IsA(fcinfo->context, CallContext) ||
		((CallContext *) fcinfo->context)->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("payments.initiate_payments must be called with CALL outside a transaction block"),
				 errdetail("It commits the claim before asking Paynow, so that no request is ever sent twice.")));
	if (max_items < 1 || max_items > MAX_INITIATIONS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_items must be between 1 and %d", MAX_INITIATIONS)));

	/* outlives the commits of the run */
	cxt = AllocSetContextCreate(TopMemoryContext, "payments initiate_payments", ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		UseReadCommitted();
		RunProviderCalls("SELECT initiation_id, url, method, headers, body FROM payments.claim_initiations($1)",
						 max_items, "SELECT payments.record_initiation($1, $2, $3, $4)", INT8OID,
						 INITIATE_MAX_RESPONSE, cxt);
		SPI_finish();
	}
	PG_FINALLY();
	{
		MemoryContextDelete(cxt);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}
