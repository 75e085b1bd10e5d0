/*
 * event_body.c
 *		Turning a verified body into a jsonb event and reading its fields.
 *
 * Runs only after the signature is verified.  The body must be valid UTF-8
 * JSON; jsonb's own parser decides, inside a subtransaction so that whatever
 * it refuses (bad syntax, \u0000, numbers out of range, nesting deeper than
 * the stack allows) becomes an "invalid" outcome rather than an error that
 * would abort the caller's transaction.
 */
#include "payments.h"

#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(provider_time);

/* Input and output of ParseJsonStep */
typedef struct JsonParse
{
	const char *text;
	Jsonb	   *result;
} JsonParse;

/* Parses NUL-terminated UTF-8 text with jsonb_in (the database is UTF8) */
static void
ParseJsonStep(void *arg)
{
	JsonParse  *parse = arg;

	parse->result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(parse->text)));
}

/*
 * Parses a body as a JSON object.  Returns the jsonb, or NULL with *error set
 * to a short explanation for the sender.
 */
Jsonb *
ParseEventBody(const char *body, int len, char **error)
{
	JsonParse	parse = {NULL, NULL};
	char	   *message;

	if (!pg_verify_mbstr(PG_UTF8, body, len, true))
	{
		*error = pstrdup("body is not valid UTF-8");
		return NULL;
	}
	parse.text = pnstrdup(body, len);
	if (!RunInSubtransaction(ParseJsonStep, &parse, &message))
	{
		*error = psprintf("body is not valid JSON: %s", message);
		return NULL;
	}
	if (!JB_ROOT_IS_OBJECT(parse.result))
	{
		*error = pstrdup("body is not a JSON object");
		return NULL;
	}
	return parse.result;
}

/* Looks up a key of the top-level object */
static bool
TopValue(Jsonb *jb, const char *key, JsonbValue *value)
{
	return getKeyJsonValueFromContainer(&jb->root, key, strlen(key), value) != NULL;
}

/* Returns a top-level string member as a palloc'd C string, or NULL */
char *
JsonbTopString(Jsonb *jb, const char *key)
{
	JsonbValue	value;

	if (!TopValue(jb, key, &value) || value.type != jbvString)
		return NULL;
	return pnstrdup(value.val.string.val, value.val.string.len);
}

/*
 * Reads a top-level member holding unix seconds (a JSON number such as
 * Stripe's "created"); false if absent or not a plausible time.
 */
bool
JsonbTopUnixTime(Jsonb *jb, const char *key, TimestampTz *result)
{
	JsonbValue	value;
	char	   *digits;
	int64		seconds;

	if (!TopValue(jb, key, &value) || value.type != jbvNumeric)
		return false;
	digits = DatumGetCString(DirectFunctionCall1(numeric_out,
												 NumericGetDatum(value.val.numeric)));
	if (!ParseUnixSeconds(digits, strlen(digits), &seconds) ||
		seconds > (int64) 253402300799) /* 9999-12-31 23:59:59 */
		return false;
	*result = time_t_to_timestamptz((pg_time_t) seconds);
	return true;
}

/* The times a provider's ISO 8601 time may be: 0001-01-01 to 9999-12-31 UTC */
#define EARLIEST_PROVIDER_TIME \
	((TimestampTz) (INT64CONST(-62135596800) - SECS_PER_DAY * (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE)) * USECS_PER_SEC)
#define LATEST_PROVIDER_TIME \
	((TimestampTz) (INT64CONST(253402300799) - SECS_PER_DAY * (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE)) * USECS_PER_SEC + 999999)

/* Input and output of DecodeTimeStep */
typedef struct TimeDecoding
{
	char	  **field;
	int		   *ftype;
	int			nf;
	int			dterr;
	int			dtype;
	struct pg_tm tm;
	fsec_t		fsec;
	int			tz;
} TimeDecoding;

/*
 * Decodes the fields of a time string (run in a subtransaction).  A time
 * without a zone is UTC: DecodeDateTime would read it in the session's
 * TimeZone, and a payment's time and receipt day would depend on the
 * settings of the role or database the shim connects as.
 */
static void
DecodeTimeStep(void *arg)
{
	TimeDecoding *d = arg;
	pg_tz	   *session_zone = session_timezone;

	session_timezone = pg_tzset_offset(0);	/* needs no zone file */
	PG_TRY();
	{
		d->dterr = DecodeDateTime(d->field, d->ftype, d->nf, &d->dtype, &d->tm, &d->fsec, &d->tz);
	}
	PG_FINALLY();
	{
		session_timezone = session_zone;
	}
	PG_END_TRY();
}

/*
 * Reads a provider's ISO 8601 time string with PostgreSQL's own date/time
 * parser, without raising errors; false if unparsable or outside the years
 * 1 to 9999 (as a Stripe time: a receipt number has four digits of year, and
 * a payment whose status is of the year 99999 takes no later news).  A time
 * without a zone is UTC.  The fields are decoded in a subtransaction:
 * PostgreSQL 15's DecodeDateTime raises an error itself for a zone name it
 * does not know ("2024-05-01T10:00 Mars/X"), where a signed event must still
 * be stored.
 */
static bool
ParseProviderTime(const char *str, TimestampTz *result)
{
	char		workbuf[MAXDATELEN + MAXDATEFIELDS];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	TimeDecoding d = {.field = field, .ftype = ftype};
	char	   *error;

	if (strlen(str) > MAXDATELEN)
		return false;
	if (ParseDateTime(str, workbuf, sizeof(workbuf), field, ftype, MAXDATEFIELDS, &d.nf) != 0 ||
		!RunInSubtransaction(DecodeTimeStep, &d, &error) ||
		d.dterr != 0 || d.dtype != DTK_DATE ||
		tm2timestamp(&d.tm, d.fsec, &d.tz, result) != 0)
		return false;
	return *result >= EARLIEST_PROVIDER_TIME && *result <= LATEST_PROVIDER_TIME;
}

/*
 * Reads a top-level member holding an ISO 8601 time string (such as the
 * "timestamp" of a Standard Webhooks payload) as ParseProviderTime does;
 * false if absent or not a time it takes.
 */
bool
JsonbTopIsoTime(Jsonb *jb, const char *key, TimestampTz *result)
{
	char	   *str = JsonbTopString(jb, key);

	return str != NULL && ParseProviderTime(str, result);
}

/*
 * SQL: payments.provider_time(text) -> timestamptz: a provider's time as
 * events read it (reconciliation reads the providers' answers with it), or
 * NULL when it is none.
 */
Datum
provider_time(PG_FUNCTION_ARGS)
{
	TimestampTz result;

	if (!ParseProviderTime(text_to_cstring(PG_GETARG_TEXT_PP(0)), &result))
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(result);
}

/*
 * Parses a delivery's body as a JSON object; on failure marks the event list
 * invalid and returns NULL.
 */
Jsonb *
ParseJsonDelivery(const Delivery *delivery, EventList *events)
{
	char	   *error;
	Jsonb	   *payload = ParseEventBody(VARDATA_ANY(delivery->body),
										 VARSIZE_ANY_EXHDR(delivery->body), &error);

	if (payload == NULL)
		InvalidEvents(events, "invalid_json", error);
	return payload;
}

/*
 * Makes the list hold one event with the given id and payload, its type taken
 * from the payload's top-level "type" when that is a string.
 */
void
SingleEvent(EventList *events, char *event_id, Jsonb *payload)
{
	EventRecord *event = palloc0(sizeof(EventRecord));

	event->event_id = event_id;
	event->event_type = JsonbTopString(payload, "type");
	event->payload = payload;
	events->count = 1;
	events->events = event;
}

/* Marks the list as an unusable body, with a reason code and a detail */
void
InvalidEvents(EventList *events, const char *reason, char *detail)
{
	events->count = -1;
	events->events = NULL;
	events->invalid_reason = reason;
	events->invalid_detail = detail;
}

/*
 * An event id for deliveries that carry none: "sha256:" and the hex SHA-256
 * of the body, so that an exact re-delivery is a duplicate.
 */
char *
BodyDigestId(bytea *body)
{
	Datum		digest = DirectFunctionCall1(sha256_bytea, PointerGetDatum(body));
	bytea	   *bytes = DatumGetByteaPP(digest);

	return psprintf("sha256:%s", EncodeHex((unsigned char *) VARDATA_ANY(bytes),
										   VARSIZE_ANY_EXHDR(bytes)));
}

/*
 * The event id a provider puts in a top-level string member: returns it, or
 * NULL after marking the list invalid (missing_event_id) when it is absent,
 * not a string, empty, or longer than we store.
 */
char *
RequiredEventId(Jsonb *payload, const char *key, const char *provider_label, EventList *events)
{
	char	   *event_id = JsonbTopString(payload, key);

	if (event_id == NULL || event_id[0] == '\0' || strlen(event_id) > PAYMENTS_MAX_EVENT_ID)
	{
		InvalidEvents(events, "missing_event_id",
					  psprintf("a %s event needs a string \"%s\" of 1 to %d characters",
							   provider_label, key, PAYMENTS_MAX_EVENT_ID));
		return NULL;
	}
	return event_id;
}
