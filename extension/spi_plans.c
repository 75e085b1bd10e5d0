/*
 * spi_plans.c
 *		Statements prepared once per backend and kept for its life, and the
 *		array parameters of those that take a batch's rows at once.
 */
#include "payments.h"

#include "executor/spi.h"
#include "utils/array.h"
#include "utils/lsyscache.h"

/* Prepares sql with cursor options into *plan and keeps it, unless it is there already */
static SPIPlanPtr
KeepPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes, int options)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare_cursor(sql, nargs, argtypes, options);

		if (prepared == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(prepared);
		*plan = prepared;
	}
	return *plan;
}

/*
 * Returns the kept plan in *plan, preparing it on first use (inside an SPI
 * connection).  The hot paths (ingest, Meta batches, certificates) run the
 * same few statements over and over.
 */
SPIPlanPtr
KeptPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	return KeepPlan(plan, sql, nargs, argtypes, 0);
}

/*
 * KeptPlan, always run with its generic plan.  For statements over arrays
 * of a batch: the plan cache would otherwise plan them again at every call
 * for the arrays' values, for nothing.
 */
SPIPlanPtr
KeptGenericPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	return KeepPlan(plan, sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

/*
 * Runs a kept statement answering one boolean (SELECT EXISTS ...) in an SPI
 * connection of its own and returns it.  Not read-only: the statement reads
 * with a snapshot of its own, taken after any lock the caller holds (in
 * READ COMMITTED), and sees what the calling statement stored so far (a
 * batch).
 */
bool
KeptPlanFinds(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes, Datum *args)
{
	bool		found;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(KeptPlan(plan, sql, nargs, argtypes), args, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not run \"%s\"", sql);
	found = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) && !isnull;
	SPI_finish();
	return found;
}

/*
 * A one-dimensional array of n elements of type elemtype, as a statement's
 * parameter; nulls (NULL: none) marks the SQL NULLs.
 */
Datum
ArrayParam(Datum *elems, bool *nulls, int n, Oid elemtype)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, elemtype,
											  typlen, typbyval, typalign));
}
