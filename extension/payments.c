/*
 * payments.c
 *		Module entry of the payments extension: its settings (GUCs).
 */
#include "payments.h"

#include <math.h>

#include "fmgr.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(effective_setting);

void		_PG_init(void);

/* The payments.receipt_prefix setting (transitions.c) */
char	   *payments_receipt_prefix = NULL;
static char *receipt_timezone = NULL;
static pg_tz *receipt_tz = NULL;	/* the zone of receipt_timezone */
static char *base_currency = NULL;
static int	reconcile_after = 900;

/* Total time one reconciliation request may take, in milliseconds (reconcile.c) */
int			reconcile_timeout_ms = 10000;

/* A receipt prefix is 1 to 10 characters of A-Z and 0-9 */
static bool
CheckReceiptPrefix(char **newval, void **extra, GucSource source)
{
	size_t		len = strspn(*newval, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");

	if (len < 1 || len > 10 || (*newval)[len] != '\0')
	{
		GUC_check_errdetail("A receipt prefix is 1 to 10 characters of A-Z and 0-9.");
		return false;
	}
	return true;
}

/*
 * The receipt time zone must be one PostgreSQL knows and would take as its
 * own TimeZone (no leap seconds: PostgreSQL's times count none, so a "right/"
 * zone would put a receipt's day boundary seconds off); its zone is handed to
 * the assign hook
 */
static bool
CheckReceiptTimezone(char **newval, void **extra, GucSource source)
{
	char	   *end;
	double		hours = strtod(*newval, &end);
	pg_tz	   *tz;

	/*
	 * A number is hours east of UTC, as TimeZone reads it (currency_summary
	 * sets TimeZone to this value); pg_tzset would read it as a POSIX offset,
	 * hours west.
	 */
	if (end != *newval && *end == '\0')
		tz = isfinite(hours) && fabs(hours) <= 14 ? pg_tzset_offset((long) rint(-hours * SECS_PER_HOUR)) : NULL;
	else
		tz = pg_tzset(*newval);

	if (tz == NULL)
	{
		GUC_check_errdetail("\"%s\" is not a time zone PostgreSQL knows.", *newval);
		return false;
	}
	if (!pg_tz_acceptable(tz))
	{
		GUC_check_errmsg("time zone \"%s\" appears to use leap seconds", *newval);
		GUC_check_errdetail("PostgreSQL does not support leap seconds.");
		return false;
	}
	*extra = malloc(sizeof(pg_tz *));	/* freed by the GUC machinery */
	if (*extra == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	*(pg_tz **) *extra = tz;
	return true;
}

/* Keeps the zone of the receipt time zone set (pg_tzset's zones are never freed) */
static void
AssignReceiptTimezone(const char *newval, void *extra)
{
	receipt_tz = *(pg_tz **) extra;
}

/* The zone of the receipt time zone (days.c) */
pg_tz *
ReceiptTimeZone(void)
{
	return receipt_tz;
}

/* A base currency is three upper-case letters (ISO 4217) */
static bool
CheckBaseCurrency(char **newval, void **extra, GucSource source)
{
	size_t		len = strspn(*newval, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");

	if (len != 3 || (*newval)[len] != '\0')
	{
		GUC_check_errdetail("A base currency is an ISO 4217 code such as USD.");
		return false;
	}
	return true;
}

/*
 * SQL: payments.effective_setting(name): the value of a payments.* setting,
 * read here so that the library (and with it the settings' definitions and
 * checks) is loaded first.
 */
Datum
effective_setting(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (strncmp(name, "payments.", 9) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not one of the extension's settings", name),
				 errhint("The extension's settings are named payments.*.")));
	PG_RETURN_TEXT_P(cstring_to_text(GetConfigOptionByName(name, NULL, false)));
}

/* Defines the extension's settings */
void
_PG_init(void)
{
	DefineCustomStringVariable("payments.receipt_prefix",
							   gettext_noop("Prefix of receipt numbers, for providers without their own receipt_prefix."),
							   NULL,
							   &payments_receipt_prefix,
							   "LP",
							   PGC_SUSET, 0,
							   CheckReceiptPrefix, NULL, NULL);
	DefineCustomStringVariable("payments.receipt_timezone",
							   gettext_noop("Time zone of the day in receipt numbers and daily reports."),
							   NULL,
							   &receipt_timezone,
							   "UTC",
							   PGC_SUSET, 0,
							   CheckReceiptTimezone, AssignReceiptTimezone, NULL);
	DefineCustomStringVariable("payments.base_currency",
							   gettext_noop("Currency that reports convert to with payments.fx_rates."),
							   NULL,
							   &base_currency,
							   "USD",
							   PGC_SUSET, 0,
							   CheckBaseCurrency, NULL, NULL);
	DefineCustomIntVariable("payments.reconcile_after",
							gettext_noop("How long a payment stays pending before payments.reconcile asks its provider, and how often it asks again."),
							NULL,
							&reconcile_after,
							900, 1, 30 * 86400,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("payments.reconcile_timeout",
							gettext_noop("Total time one reconciliation request to a provider may take."),
							gettext_noop("The connection itself may take at most a third of it."),
							&reconcile_timeout_ms,
							10000, 100, 300000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("payments");
}
