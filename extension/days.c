/*
 * days.c
 *		Days in the receipt time zone: the day of a time (receipt numbers,
 *		reports) and the moment a day starts.
 *
 * They are computed with the zone itself, as PostgreSQL's TimeZone setting
 * uses it (currency_summary sets it), summer time included.  AT TIME ZONE
 * would first read a name that is also an abbreviation (CET, EET, EST) as
 * that abbreviation's fixed offset, from the table the session's
 * timezone_abbreviations chooses: one payment's day would then differ
 * between reports, and between sessions.
 */
#include "payments.h"

#include "pgtime.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(receipt_day);
PG_FUNCTION_INFO_V1(day_start);

/*
 * SQL: payments.receipt_day(at timestamptz) returns date: the day of a time
 * in the receipt time zone.
 */
Datum
receipt_day(PG_FUNCTION_ARGS)
{
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(0);
	struct pg_tm tm;
	fsec_t		fsec;
	int			offset;
	DateADT		day;

	if (TIMESTAMP_IS_NOBEGIN(at))
		DATE_NOBEGIN(day);
	else if (TIMESTAMP_IS_NOEND(at))
		DATE_NOEND(day);
	else if (timestamp2tm(at, &offset, &tm, &fsec, NULL, ReceiptTimeZone()) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	else
		day = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday) - POSTGRES_EPOCH_JDATE;
	PG_RETURN_DATEADT(day);
}

/*
 * SQL: payments.day_start(day date) returns timestamptz: the midnight that
 * starts a day in the receipt time zone (a midnight that summer time skips
 * is read as PostgreSQL reads a local time in a gap).
 */
Datum
day_start(PG_FUNCTION_ARGS)
{
	DateADT		day = PG_GETARG_DATEADT(0);
	struct pg_tm tm = {0};
	int			offset;
	TimestampTz start;

	if (DATE_IS_NOBEGIN(day))
		TIMESTAMP_NOBEGIN(start);
	else if (DATE_IS_NOEND(day))
		TIMESTAMP_NOEND(start);
	else
	{
		j2date(day + POSTGRES_EPOCH_JDATE, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
		offset = DetermineTimeZoneOffset(&tm, ReceiptTimeZone());
		if (tm2timestamp(&tm, 0, &offset, &start) != 0 || !IS_VALID_TIMESTAMP(start))
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("date out of range for timestamp")));
	}
	PG_RETURN_TIMESTAMPTZ(start);
}
