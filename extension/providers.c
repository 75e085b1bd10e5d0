/*
 * providers.c
 *		Reading a provider and its live secrets, once per transaction.
 *
 * The shim stores a batch of deliveries, most of them to one provider, in one
 * transaction; reading the provider row and its secrets again for every
 * delivery was 3.5% of a delivery's work.  The first read of a provider in a transaction is kept, in a memory
 * context under TopTransactionContext, for the rest of the transaction.
 *
 * The kept copies are dropped when this backend changes payments.providers
 * or payments.secrets, or a subtransaction aborts (kept.c).
 */
#include "payments.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

/* A provider read in the current transaction */
typedef struct KeptProvider
{
	struct KeptProvider *next;
	Provider	provider;
} KeptProvider;

static KeptProvider *kept = NULL;
static KeptStamp kept_stamp;
static MemoryContext kept_context = NULL;	/* under TopTransactionContext */
static SPIPlanPtr provider_plan = NULL;

/*
 * Reads a provider with its live secrets into *provider, allocated in
 * context into; false if there is no such provider.  Runs inside an SPI
 * connection (which leaves its own context current after a statement).  A
 * tolerance changed behind register_provider's back into one it refuses is
 * an error outside class 22 data exceptions, so the shim answers 503 and the
 * sender retries.
 */
static bool
ReadProvider(text *name, Provider *provider, MemoryContext into)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {PointerGetDatum(name)};
	SPIPlanPtr	plan;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	char	   *kind;
	Datum		secrets;
	Datum	   *elems;
	int			nelems;
	MemoryContext spi_context;

	plan = KeptPlan(&provider_plan,
					"SELECT p.kind, p.settings,"
					"       ARRAY(SELECT s.secret FROM payments.secrets s"
					"             WHERE s.provider = p.name AND s.revoked_at IS NULL"
					"               AND (s.expires_at IS NULL OR s.expires_at > pg_catalog.now())"
					"             ORDER BY s.id DESC)"
					"  FROM payments.providers p WHERE p.name = $1",
					1, argtypes);
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read provider");
	if (SPI_processed == 0)
		return false;

	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	spi_context = MemoryContextSwitchTo(into);
	provider->name = text_to_cstring(name);
	kind = SPI_getvalue(row, desc, 1);
	provider->kind = FindProviderKind(kind);
	if (provider->kind == NULL)
		elog(ERROR, "provider \"%s\" has kind \"%s\", which this version cannot verify",
			 provider->name, kind);
	provider->settings = DatumGetJsonbPCopy(SPI_getbinval(row, desc, 2, &isnull));
	provider->tolerance = SettingTolerance(provider->settings);
	if (provider->tolerance < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("provider \"%s\" has unusable settings: tolerance must be a whole number of seconds from 1 to 604800",
						provider->name)));

	secrets = SPI_getbinval(row, desc, 3, &isnull);
	deconstruct_array(DatumGetArrayTypeP(secrets), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, NULL, &nelems);
	provider->secrets.count = nelems;
	provider->secrets.secrets = palloc(sizeof(text *) * (nelems + 1));
	for (int i = 0; i < nelems; i++)
		provider->secrets.secrets[i] = DatumGetTextPCopy(elems[i]);
	MemoryContextSwitchTo(spi_context);
	return true;
}

/*
 * Finds a provider with its live secrets, as first read in this transaction;
 * false if there is no such provider (not kept: a provider registered later
 * in the transaction is found then).  *provider points into memory that lasts
 * until the end of the transaction or the next change to providers or
 * secrets, whichever comes first: use it within one call.  Runs inside an SPI
 * connection.
 */
bool
LookupProvider(text *name, Provider *provider)
{
	char	   *wanted = text_to_cstring(name);
	KeptProvider *entry;

	if (!KeptIsCurrent(&kept_stamp))
	{
		/*
		 * A new transaction: the old context went with the old one.  The same
		 * transaction after a change: the memory stays until it ends, as a
		 * caller may still be using the copy it was given (an aborted
		 * subtransaction inside payments.ingest, between the events of one
		 * delivery).
		 */
		if (!KeptInThisTransaction(&kept_stamp))
			kept_context = NULL;
		kept = NULL;
		KeptStampNow(&kept_stamp);
	}
	for (entry = kept; entry != NULL; entry = entry->next)
	{
		if (strcmp(entry->provider.name, wanted) == 0)
		{
			*provider = entry->provider;
			return true;
		}
	}

	if (kept_context == NULL)
		kept_context = AllocSetContextCreate(TopTransactionContext, "payments kept providers",
											 ALLOCSET_SMALL_SIZES);
	entry = MemoryContextAllocZero(kept_context, sizeof(KeptProvider));
	if (!ReadProvider(name, &entry->provider, kept_context))
	{
		pfree(entry);
		return false;
	}
	entry->next = kept;
	kept = entry;
	*provider = entry->provider;
	return true;
}
