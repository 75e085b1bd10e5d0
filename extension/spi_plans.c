/*
 * spi_plans.c
 *		Statements prepared once per backend and kept for its life.
 */
#include "payments.h"

#include "executor/spi.h"

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
