/*
 * kind_meta.c
 *		Meta's WhatsApp Cloud API webhooks.
 *
 * POST deliveries carry X-Hub-Signature-256: "sha256=" followed by the
 * lowercase hex HMAC-SHA256 of the raw body, keyed with the app secret.
 * There is no timestamp.  One delivery may batch many entries, changes,
 * messages and statuses: each message (by wamid) and each status (by wamid
 * and status) is its own idempotent event.  The GET subscription handshake
 * is answered by payments.meta_subscribe.
 */
#include "payments.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define META_SIGNATURE_PREFIX "sha256="
#define META_SIGNATURE_HEX 64
#define META_MAX_CHALLENGE 256

PG_FUNCTION_INFO_V1(verify_meta);
PG_FUNCTION_INFO_V1(meta_subscribe);

/*
 * Splits a batch into events: one row per message and per status, with the
 * change's context kept beside it.  Lax JSON paths never raise on an
 * unexpected shape; a message or status without a string id comes out with
 * a NULL id and makes the delivery invalid.
 */
#define META_EVENTS_SQL \
	"SELECT CASE WHEN pg_catalog.jsonb_typeof(m -> 'id') = 'string' THEN m ->> 'id' END," \
	"       'message.' || coalesce(m ->> 'type', 'unknown'), m ->> 'timestamp'," \
	"       pg_catalog.jsonb_build_object('object', $1 -> 'object', 'entry_id', e -> 'id'," \
	"           'field', c -> 'field', 'metadata', c -> 'value' -> 'metadata'," \
	"           'contacts', c -> 'value' -> 'contacts', 'message', m)" \
	"  FROM pg_catalog.jsonb_path_query($1, 'lax $.entry[*]') e," \
	"       pg_catalog.jsonb_path_query(e, 'lax $.changes[*]') c," \
	"       pg_catalog.jsonb_path_query(c, 'lax $.value.messages[*]') m " \
	"UNION ALL " \
	"SELECT CASE WHEN pg_catalog.jsonb_typeof(s -> 'id') = 'string'" \
	"             AND pg_catalog.jsonb_typeof(s -> 'status') = 'string'" \
	"            THEN (s ->> 'id') || ':' || (s ->> 'status') END," \
	"       'status.' || (s ->> 'status'), s ->> 'timestamp'," \
	"       pg_catalog.jsonb_build_object('object', $1 -> 'object', 'entry_id', e -> 'id'," \
	"           'field', c -> 'field', 'metadata', c -> 'value' -> 'metadata', 'status', s)" \
	"  FROM pg_catalog.jsonb_path_query($1, 'lax $.entry[*]') e," \
	"       pg_catalog.jsonb_path_query(e, 'lax $.changes[*]') c," \
	"       pg_catalog.jsonb_path_query(c, 'lax $.value.statuses[*]') s"

static SPIPlanPtr meta_events_plan = NULL;

/* Verifies an X-Hub-Signature-256 value over a body against every secret */
static void
VerifyMeta(const char *body, int bodylen, const char *header, int headerlen,
		   const SecretList *secrets, Verdict *verdict)
{
	int			prefixlen = strlen(META_SIGNATURE_PREFIX);
	const char *hex;
	MacPart		part = {body, bodylen};
	bool		matched = false;

	if (headerlen != prefixlen + META_SIGNATURE_HEX ||
		memcmp(header, META_SIGNATURE_PREFIX, prefixlen) != 0 ||
		!IsLowerHex(header + prefixlen, META_SIGNATURE_HEX))
	{
		VerdictReject(verdict, "malformed_header",
					  "x-hub-signature-256 is not sha256= and 64 lowercase hex digits");
		return;
	}
	hex = header + prefixlen;

	for (int i = 0; i < secrets->count && !matched; i++)
	{
		text	   *secret = secrets->secrets[i];
		unsigned char mac[32];
		char		expected[META_SIGNATURE_HEX + 1];

		ComputeHmac(HMAC_SHA256, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret), &part, 1, mac);
		hex_encode((const char *) mac, sizeof(mac), expected);
		if (CRYPTO_memcmp(expected, hex, META_SIGNATURE_HEX) == 0)
			matched = true;
	}
	if (!matched)
		VerdictReject(verdict, "signature_mismatch",
					  "x-hub-signature-256 matches no live secret (%d secret(s))", secrets->count);
	else
		verdict->valid = true;
}

/* Checks a delivery's X-Hub-Signature-256 header */
static void
VerifyMetaDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	const char *header;
	int			len;

	header = HeaderValue(delivery->headers, "x-hub-signature-256", &len);
	if (header == NULL)
	{
		VerdictReject(verdict, "missing_header", "no x-hub-signature-256 header");
		return;
	}
	VerifyMeta(VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
			   header, len, &provider->secrets, verdict);
}

/* Reads Meta's unix-seconds timestamp strings */
static bool
MetaTime(const char *seconds, TimestampTz *result)
{
	int64		value;

	if (seconds == NULL || !ParseUnixSeconds(seconds, strlen(seconds), &value) ||
		value > (int64) 253402300799)	/* 9999-12-31 */
		return false;
	*result = time_t_to_timestamptz((pg_time_t) value);
	return true;
}

/*
 * Puts a delivery's events in the order of Meta's times, those without one
 * last, keeping the delivery's order among equal times (an insertion sort:
 * stable, and a delivery holds a few events).  Meta may batch a donor's
 * messages out of order, and the chat answers each in turn and leaves one
 * older than the last answered unanswered.
 */
static void
SortEventsByTime(EventList *events)
{
	for (int i = 1; i < events->count; i++)
	{
		EventRecord moving = events->events[i];
		int			j = i;

		while (j > 0 && moving.have_event_at &&
			   (!events->events[j - 1].have_event_at ||
				events->events[j - 1].event_at > moving.event_at))
		{
			events->events[j] = events->events[j - 1];
			j--;
		}
		events->events[j] = moving;
	}
}

/*
 * One event per message and per status, in the order of their times.  A
 * delivery with neither (another kind of change) is kept whole, identified
 * by the SHA-256 of its body.
 */
static void
ExtractMetaEvents(const Provider *provider, const Delivery *delivery, EventList *events)
{
	Jsonb	   *payload = ParseJsonDelivery(delivery, events);
	Oid			argtypes[1] = {JSONBOID};
	Datum		args[1];

	if (payload == NULL)
		return;
	args[0] = JsonbPGetDatum(payload);
	if (SPI_execute_plan(KeptPlan(&meta_events_plan, META_EVENTS_SQL, 1, argtypes),
						 args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not split a Meta delivery");

	if (SPI_processed == 0)
	{
		char	   *object = JsonbTopString(payload, "object");

		SingleEvent(events, BodyDigestId(delivery->body), payload);
		events->events[0].event_type = psprintf("change.%s", object ? object : "unknown");
		return;
	}

	events->count = SPI_processed;
	events->events = palloc0(sizeof(EventRecord) * SPI_processed);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		EventRecord *event = &events->events[i];
		bool		isnull;

		event->event_id = SPI_getvalue(row, desc, 1);
		if (event->event_id == NULL || event->event_id[0] == '\0' ||
			strlen(event->event_id) > PAYMENTS_MAX_EVENT_ID)
		{
			InvalidEvents(events, "missing_event_id",
						  pstrdup("every message and status needs a string \"id\" (and a status a \"status\")"));
			return;
		}
		event->event_type = SPI_getvalue(row, desc, 2);
		event->have_event_at = MetaTime(SPI_getvalue(row, desc, 3), &event->event_at);
		event->payload = DatumGetJsonbPCopy(SPI_getbinval(row, desc, 4, &isnull));
	}
	SortEventsByTime(events);
}

/*
 * A Meta provider needs the verify_token of the subscription handshake; it and
 * the chat's access_token must not be the placeholders of the documentation
 * (the README's examples hold them), which would register and then fail
 * Meta's handshake or every message sent.
 */
static char *
MetaSettingsProblem(Jsonb *settings)
{
	char	   *token = SettingText(settings, "verify_token");
	char	   *access_token = SettingText(settings, "access_token");

	if (token == NULL || token[0] == '\0')
		return pstrdup("setting \"verify_token\" (a non-empty string) is required for Meta's subscription handshake");
	if (IsDocumentationPlaceholder(token, strlen(token)))
		return pstrdup("setting \"verify_token\" is a placeholder from the documentation: choose a long random string, and give Meta the same");
	if (access_token != NULL && IsDocumentationPlaceholder(access_token, strlen(access_token)))
		return pstrdup("setting \"access_token\" is a placeholder from the documentation: paste the access token Meta shows");
	return NULL;
}

const ProviderKind MetaKind = {
	.name = "meta",
	.uses_secrets = true,
	.verify = VerifyMetaDelivery,
	.extract = ExtractMetaEvents,
	.secret_problem = NULL,		/* an app secret is any string */
	.settings_problem = MetaSettingsProblem,
};

/*
 * SQL: payments.verify_meta(body, signature, app_secret) returns 'valid' or
 * the rejection reason.
 */
Datum
verify_meta(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	text	   *signature = PG_GETARG_TEXT_PP(1);
	text	   *secret = PG_GETARG_TEXT_PP(2);
	SecretList	secrets = {1, &secret};
	Verdict		verdict = {0};

	VerifyMeta(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
			   VARDATA_ANY(signature), VARSIZE_ANY_EXHDR(signature), &secrets, &verdict);
	PG_RETURN_TEXT_P(cstring_to_text(verdict.valid ? "valid" : verdict.reason));
}

/*
 * True if the challenge can be echoed: 1 to 256 letters, digits, '-' or '_'
 * (Meta sends digits), so the answer can never carry markup or control bytes.
 */
static bool
IsEchoableChallenge(const char *challenge)
{
	size_t		len = strspn(challenge, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");

	return len >= 1 && len <= META_MAX_CHALLENGE && challenge[len] == '\0';
}

/*
 * Whether the verify token sent equals the one configured, in time that
 * depends on neither where they differ nor their lengths: their SHA-256
 * digests are compared.
 */
static bool
VerifyTokenMatches(const char *expected, const char *token)
{
	unsigned char expected_digest[EVP_MAX_MD_SIZE];
	unsigned char token_digest[EVP_MAX_MD_SIZE];
	unsigned int expected_len;
	unsigned int token_len;

	if (EVP_Digest(expected, strlen(expected), expected_digest, &expected_len, EVP_sha256(), NULL) != 1 ||
		EVP_Digest(token, strlen(token), token_digest, &token_len, EVP_sha256(), NULL) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute a SHA-256 digest")));
	return CRYPTO_memcmp(expected_digest, token_digest, expected_len) == 0;
}

/*
 * SQL: payments.meta_subscribe(provider, mode, verify_token, challenge)
 * answers Meta's GET handshake: (200, challenge) when mode is "subscribe" and
 * the token matches the provider's verify_token (compared in constant time,
 * length included),
 * 403 when not, 404 for no such Meta provider, 400 for a challenge we will
 * not echo.
 */
Datum
meta_subscribe(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const char *mode = PG_ARGISNULL(1) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	const char *token = PG_ARGISNULL(2) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(2));
	const char *challenge = PG_ARGISNULL(3) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(3));
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	Datum		values[2];
	bool		nulls[2] = {false, true};
	int			status;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("provider must not be null")));
	InitMaterializedSRF(fcinfo, 0);
	args[0] = PointerGetDatum(PG_GETARG_TEXT_PP(0));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT p.settings ->> 'verify_token' FROM payments.providers p"
							  " WHERE p.name = $1 AND p.kind = 'meta'",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read provider");

	if (SPI_processed == 0)
		status = 404;
	else
	{
		char	   *expected = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (strcmp(mode, "subscribe") != 0 || expected == NULL ||
			!VerifyTokenMatches(expected, token))
			status = 403;
		else if (!IsEchoableChallenge(challenge))
			status = 400;
		else
		{
			status = 200;
			values[1] = CStringGetTextDatum(challenge);
			nulls[1] = false;
		}
	}
	values[0] = Int32GetDatum(status);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	SPI_finish();
	return (Datum) 0;
}
