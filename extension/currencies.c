/*
 * currencies.c
 *		The ISO 4217 exponent of a currency, kept in backend memory
 *		(payments.currency_exponent).
 *
 * A delivery looks its currency up two or three times (the exponent of each
 * amount, the check that gives an unknown currency a clear error), a query
 * each: 4% of its work; then once per transaction and currency, 1.4%.  What a
 * backend has read of payments.currencies is kept, the unknown codes too,
 * until a change to the table (kept.c).
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

/*
 * Codes kept at most, known (ISO 4217 has fewer than 200) and unknown (odd
 * codes in signed events must not crowd out the real ones); longer codes than
 * this are never kept
 */
#define KEPT_KNOWN_MAX			512
#define KEPT_UNKNOWN_MAX		64
#define KEPT_CODE_MAX_LEN		16

static KeptCurrency *kept = NULL;	/* in copies' memory */
static int	kept_known = 0;
static int	kept_unknown = 0;
static KeptCopies copies;
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
	bool		keep;
	MemoryContext into;
	MemoryContext caller_context = CurrentMemoryContext;

	if (!KeptCopiesCurrent(&copies))
	{
		kept = NULL;
		kept_known = kept_unknown = 0;
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
	if (KeptRead(KeptPlan(&exponent_plan,
						  "SELECT c.exponent FROM payments.currencies c"
						  " WHERE c.code = pg_catalog.upper($1 COLLATE pg_catalog.\"C\")::pg_catalog.bpchar",
						  1, argtypes),
				 args, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read currencies");
	/* an event's odd codes are answered (in the caller's memory), not kept without bound */
	keep = strlen(wanted) <= KEPT_CODE_MAX_LEN &&
		(SPI_processed > 0 ? kept_known < KEPT_KNOWN_MAX : kept_unknown < KEPT_UNKNOWN_MAX);
	into = keep ? KeptCopiesContext(&copies, "payments kept currencies") : caller_context;
	entry = MemoryContextAllocZero(into, sizeof(KeptCurrency));
	entry->code = MemoryContextStrdup(into, wanted);
	entry->known = SPI_processed > 0;
	if (entry->known)
		entry->exponent = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
													  &isnull));
	SPI_finish();

	if (keep)
	{
		entry->next = kept;
		kept = entry;
		if (entry->known)
			kept_known++;
		else
			kept_unknown++;
	}
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
