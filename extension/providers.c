/*
 * providers.c
 *		Reading a provider and its live secrets, kept in backend memory.
 *
 * The shim stores a batch of deliveries, most of them to one provider, in one
 * transaction; reading the provider row and its secrets again for every
 * delivery was 3.5% of a delivery's work, and once per transaction 1.3% of
 * PostgreSQL's.  A provider is kept once read, with the secrets not revoked
 * and their expiry times, until a change to payments.providers or
 * payments.secrets (kept.c).  Which of them are live is decided at the
 * transaction's time, as now() would, once per transaction.
 */
#include "payments.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/* A provider as read, and its live secrets as of the transaction live_for */
typedef struct KeptProvider
{
	struct KeptProvider *next;
	Provider	provider;		/* its secrets: the live ones, for live_for */
	SecretList	unrevoked;		/* newest first */
	TimestampTz *expires_at;	/* of each of them; DT_NOEND: never */
	bool		any_expiry;
	LocalTransactionId live_for;
} KeptProvider;

static KeptProvider *kept = NULL;	/* in copies' memory */
static KeptCopies copies;
static SPIPlanPtr provider_plan = NULL;

/*
 * Reads a provider with its secrets not revoked nor expired yet into *entry,
 * allocated in context into; false if there is no such provider.  Runs
 * inside an SPI connection (which leaves its own context current after a
 * statement).  A tolerance changed behind register_provider's back into one
 * it refuses is an error outside class 22 data exceptions, so the shim
 * answers 503 and the sender retries.
 */
static bool
ReadProvider(text *name, KeptProvider *entry, MemoryContext into)
{
	Provider   *provider = &entry->provider;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {PointerGetDatum(name)};
	SPIPlanPtr	plan;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	char	   *kind;
	Datum	   *elems;
	Datum	   *expiries;
	int			nelems;
	int			nexpiries;
	MemoryContext spi_context;

	plan = KeptPlan(&provider_plan,
					"SELECT p.kind, p.settings, s.secrets, s.expiries"
					"  FROM payments.providers p,"
					"       LATERAL (SELECT coalesce(pg_catalog.array_agg(s.secret ORDER BY s.id DESC),"
					"                                '{}') AS secrets,"
					"                       coalesce(pg_catalog.array_agg(coalesce(s.expires_at, 'infinity')"
					"                                                     ORDER BY s.id DESC),"
					"                                '{}') AS expiries"
					"                  FROM payments.secrets s"
					"                 WHERE s.provider = p.name AND s.revoked_at IS NULL"
					"                   AND (s.expires_at IS NULL OR s.expires_at > pg_catalog.now())) s"
					" WHERE p.name = $1",
					1, argtypes);
	if (KeptRead(plan, args, 1) != SPI_OK_SELECT)
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

	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(row, desc, 3, &isnull)), TEXTOID, -1, false,
					  TYPALIGN_INT, &elems, NULL, &nelems);
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(row, desc, 4, &isnull)), TIMESTAMPTZOID,
					  sizeof(TimestampTz), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &expiries, NULL, &nexpiries);
	Assert(nexpiries == nelems);
	entry->unrevoked.count = nelems;
	entry->unrevoked.secrets = palloc(sizeof(text *) * (nelems + 1));
	entry->expires_at = palloc(sizeof(TimestampTz) * (nelems + 1));
	for (int i = 0; i < nelems; i++)
	{
		entry->unrevoked.secrets[i] = DatumGetTextPCopy(elems[i]);
		entry->expires_at[i] = DatumGetTimestampTz(expiries[i]);
		if (entry->expires_at[i] != DT_NOEND)
			entry->any_expiry = true;
	}
	provider->secrets = entry->unrevoked;
	MemoryContextSwitchTo(spi_context);
	return true;
}

/*
 * Sets the provider's secrets to those live at the current transaction's
 * time (its start, as now()): all of them unless one has an expiry, else a
 * list made for this transaction.
 */
static void
SetLiveSecrets(KeptProvider *entry)
{
	TimestampTz now;
	SecretList *live = &entry->provider.secrets;

	if (!entry->any_expiry || entry->live_for == MyProc->lxid)
		return;
	now = GetCurrentTransactionStartTimestamp();
	live->secrets = MemoryContextAlloc(TopTransactionContext,
									   sizeof(text *) * (entry->unrevoked.count + 1));
	live->count = 0;
	for (int i = 0; i < entry->unrevoked.count; i++)
	{
		if (entry->expires_at[i] > now)
			live->secrets[live->count++] = entry->unrevoked.secrets[i];
	}
	entry->live_for = MyProc->lxid;
}

/*
 * Finds a provider with its live secrets, as kept or read now; false if
 * there is no such provider (not kept: a provider registered later is found
 * then).  *provider points into memory that lasts until the end of the
 * transaction at least: use it within one call.  Runs inside an SPI
 * connection.
 */
bool
LookupProvider(text *name, Provider *provider)
{
	char	   *wanted = text_to_cstring(name);
	KeptProvider *entry;
	MemoryContext read_context;

	if (!KeptCopiesCurrent(&copies))
		kept = NULL;
	for (entry = kept; entry != NULL; entry = entry->next)
	{
		if (strcmp(entry->provider.name, wanted) == 0)
			break;
	}

	if (entry == NULL)
	{
		/*
		 * Read into memory of the transaction, kept only once the read
		 * succeeded (an unusable provider raises an error halfway).
		 */
		read_context = AllocSetContextCreate(TopTransactionContext, "payments kept provider",
											 ALLOCSET_SMALL_SIZES);
		entry = MemoryContextAllocZero(read_context, sizeof(KeptProvider));
		if (!ReadProvider(name, entry, read_context))
		{
			MemoryContextDelete(read_context);
			return false;
		}
		MemoryContextSetParent(read_context, KeptCopiesContext(&copies, "payments kept providers"));
		entry->next = kept;
		kept = entry;
	}
	SetLiveSecrets(entry);
	*provider = entry->provider;
	return true;
}
