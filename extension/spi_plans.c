/*
 * spi_plans.c
 *		Statements prepared once per backend and kept for its life.
 */
#include "payments.h"

#include "executor/spi.h"

/*
 * Returns the kept plan in *plan, preparing it on first use (inside an SPI
 * connection).  The hot paths (ingest, Meta batches, certificates) run the
 * same few statements over and over.
 */
SPIPlanPtr
KeptPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare(sql, nargs, argtypes);

		if (prepared == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(prepared);
		*plan = prepared;
	}
	return *plan;
}
