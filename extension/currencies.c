/*
 * currencies.c
 *		The ISO 4217 exponent of a currency, read once per transaction
 *		(payments.currency_exponent).
 *
 * A delivery looks its currency up two or three times (the exponent of each
 * amount, the check that gives an unknown currency a clear error), a query
 * each: 4% of its work.  What a transaction has read of payments.currencies
 * is kept for the rest of it, the unknown codes too; a change to the table
 * by this backend, or the abort of a subtransaction, drops it (kept.c).
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(currency_exponent);

/* A code as asked for, and what payments.currencies says of it */
typedef struct KeptCurrency
{
	struct KeptCurrency *next;
	char	   *code;
	bool		known;
	int			exponent;
} KeptCurrency;

static KeptCurrency *kept = NULL;	/* in TopTransactionContext */
static KeptStamp kept_stamp;
static SPIPlanPtr exponent_plan = NULL;

/*
 * Finds the exponent of a currency code, in any case; false when
 * payments.currencies does not have it.
 */
bool
CurrencyExponent(text *code, int *exponent)
{
	char	   *wanted = text_to_cstring(code);
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {PointerGetDatum(code)};
	KeptCurrency *entry;
	bool		isnull;

	if (!KeptIsCurrent(&kept_stamp))
	{
		kept = NULL;			/* a change in this transaction: its memory stays until the end */
		KeptStampNow(&kept_stamp);
	}
	for (entry = kept; entry != NULL; entry = entry->next)
	{
		if (strcmp(entry->code, wanted) == 0)
		{
			*exponent = entry->exponent;
			return entry->known;
		}
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(KeptPlan(&exponent_plan,
								  "SELECT c.exponent FROM payments.currencies c"
								  " WHERE c.code = pg_catalog.upper($1)::pg_catalog.bpchar",
								  1, argtypes),
						 args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read currencies");
	entry = MemoryContextAllocZero(TopTransactionContext, sizeof(KeptCurrency));
	entry->code = MemoryContextStrdup(TopTransactionContext, wanted);
	entry->known = SPI_processed > 0;
	if (entry->known)
		entry->exponent = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
													  &isnull));
	SPI_finish();

	entry->next = kept;
	kept = entry;
	*exponent = entry->exponent;
	return entry->known;
}

/*
 * SQL: payments.currency_exponent(code) returns the ISO 4217 exponent of a
 * currency in payments.currencies (code in any case), or NULL.
 */
Datum
currency_exponent(PG_FUNCTION_ARGS)
{
	int			exponent;

	if (!CurrencyExponent(PG_GETARG_TEXT_PP(0), &exponent))
		PG_RETURN_NULL();
	PG_RETURN_INT32(exponent);
}
