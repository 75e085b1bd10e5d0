/*
 * days.c
 *		Days in the receipt time zone: the day of a time (receipt numbers,
 *		reports), the moment a day starts, and the clock there at a time.
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
PG_FUNCTION_INFO_V1(receipt_local_time);

/* The date and time a clock in the receipt time zone shows at a finite time */
static void
ReceiptClock(TimestampTz at, struct pg_tm *tm, fsec_t *fsec)
{
	int			offset;

	if (timestamp2tm(at, &offset, tm, fsec, NULL, ReceiptTimeZone()) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
}

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
	DateADT		day;

	if (TIMESTAMP_IS_NOBEGIN(at))
		DATE_NOBEGIN(day);
	else if (TIMESTAMP_IS_NOEND(at))
		DATE_NOEND(day);
	else
	{
		ReceiptClock(at, &tm, &fsec);
		day = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday) - POSTGRES_EPOCH_JDATE;
	}
	PG_RETURN_DATEADT(day);
}

/* The UTC offset (seconds west, as PostgreSQL counts) of the receipt time zone at a time; false if out of range */
static bool
OffsetAt(TimestampTz at, int *offset)
{
	struct pg_tm tm;
	fsec_t		fsec;

	return IS_VALID_TIMESTAMP(at) &&
		timestamp2tm(at, offset, &tm, &fsec, NULL, ReceiptTimeZone()) == 0;
}

/*
 * The first time a local midnight (tm) occurs, given the one PostgreSQL chose
 * (start, at offset): when the offset of a day before was another, and the
 * midnight read with that offset is earlier and the zone's offset then, the
 * midnight occurred then too.
 */
static TimestampTz
EarlierSameMidnight(struct pg_tm *tm, int offset, TimestampTz start)
{
	int			before;
	int			then;
	TimestampTz earlier;

	if (!OffsetAt(start - USECS_PER_DAY, &before) || before == offset ||
		tm2timestamp(tm, 0, &before, &earlier) != 0 || earlier >= start ||
		!OffsetAt(earlier, &then) || then != before)
		return start;
	return earlier;
}

/*
 * SQL: payments.day_start(day date) returns timestamptz: the midnight that
 * starts a day in the receipt time zone.  A midnight that summer time skips
 * is read as PostgreSQL reads a local time in a gap; one that occurs twice
 * (summer time ending at 01:00, as in Havana) is the first, which PostgreSQL
 * reads as the second: the hour between belongs to the day, as receipt_day
 * says.
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
		start = EarlierSameMidnight(&tm, offset, start);
	}
	PG_RETURN_TIMESTAMPTZ(start);
}

/*
 * SQL: payments.receipt_local_time(at timestamptz) returns timestamp: the
 * date and time a clock in the receipt time zone shows at a time (what the
 * chat tells a donor, the clinic's time).
 */
Datum
receipt_local_time(PG_FUNCTION_ARGS)
{
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(0);
	struct pg_tm tm;
	fsec_t		fsec;
	Timestamp	local;

	if (TIMESTAMP_NOT_FINITE(at))
		PG_RETURN_TIMESTAMP(at);
	ReceiptClock(at, &tm, &fsec);
	if (tm2timestamp(&tm, fsec, NULL, &local) != 0 || !IS_VALID_TIMESTAMP(local))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	PG_RETURN_TIMESTAMP(local);
}
