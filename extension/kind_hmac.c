/*
 * kind_hmac.c
 *		Generic HMAC signatures, configured per provider in SQL, for the many
 *		providers that sign "an HMAC of the body in a header" (Paystack,
 *		GitHub, Flutterwave v4 and so on).
 *
 * Settings (checked by HmacSettingsProblem when the provider is registered):
 *   header             required: the lower-case name of the signature header
 *   algorithm          sha256 (default), sha512 or sha1
 *   encoding           hex (default; either case accepted) or base64 (padded
 *                      standard base64, compared as text like the Standard
 *                      Webhooks libraries do)
 *   prefix             text before the MAC in the header, e.g. "sha256="
 *                      (default none; compared exactly)
 *   timestamp_header   a header with the time of signing in unix seconds;
 *                      needs signed = timestamp.body, since a time nobody
 *                      signed proves nothing
 *   signed             body (default) or timestamp.body: "<timestamp header
 *                      as received>.<raw body>"
 *   tolerance          seconds the signed time may be away from now, either
 *                      way (default 300; only with timestamp_header)
 *   event_id_header    the event id is this header (e.g. x-github-delivery)
 *   event_id_path      or the first string or number that this SQL/JSON path
 *                      finds in the payload (e.g. $.data.id); or an array of
 *                      up to four paths, whose values joined by ':' are the
 *                      id (["$.event", "$.data.id"]: Paystack sends
 *                      transfer.success and transfer.reversed about one
 *                      data.id, two events); a ':' or '\' in a value is
 *                      escaped by a '\', so two lists of values never
 *                      make one id
 *   event_type_header  the event type is this header (e.g. x-github-event)
 *   event_type_path    or the first string or number this path finds
 *
 * The key is the UTF-8 bytes of the secret, as every such provider does; one
 * signature per header.  The body must be a JSON object.  When no id is
 * configured, or the configured header or path (any of the paths) finds
 * nothing, the event id is "sha256:" + the hex SHA-256 of the body, so an
 * exact re-delivery is still a duplicate.  With no type configured, the type is the payload's
 * top-level "type" string, as for the other kinds.
 */
#include "payments.h"

#include <openssl/crypto.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonpath.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(verify_hmac);

/* A provider's settings, read and checked */
typedef struct HmacConfig
{
	char	   *header;
	HmacAlgorithm algorithm;
	bool		base64;
	char	   *prefix;
	char	   *timestamp_header;	/* NULL: no timestamp */
	bool		sign_timestamp;
	int			tolerance;
	char	   *event_id_header;
	char	  **event_id_paths;
	int			event_id_path_count;	/* 0: no event_id_path */
	char	   *event_type_header;
	char	   *event_type_path;
} HmacConfig;

static const char *const hmac_settings[] = {
	"header", "algorithm", "encoding", "prefix", "timestamp_header", "signed", "tolerance",
	"event_id_header", "event_id_path", "event_type_header", "event_type_path",
};

/* The most paths an event id may be made of */
#define HMAC_MAX_ID_PATHS 4

/* True if name is a lower-case HTTP header name (an RFC 9110 token) */
static bool
IsHeaderName(const char *name)
{
	if (name[0] == '\0' || strlen(name) > 100)
		return false;
	for (const char *c = name; *c; c++)
	{
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
			  strchr("!#$%&'*+-.^_`|~", *c) != NULL))
			return false;
	}
	return true;
}

/* Input and output of JsonPathStep */
typedef struct JsonPathRun
{
	const char *path;
	Jsonb	   *payload;
	bool		parsed;			/* the path parsed, evaluation began */
	Jsonb	   *result;
} JsonPathRun;

/* Parses the path and evaluates it on the payload, if any (silent, lax) */
static void
JsonPathStep(void *arg)
{
	JsonPathRun *run = arg;
	Datum		jsonpath = DirectFunctionCall1(jsonpath_in, CStringGetDatum(run->path));

	run->parsed = true;
	if (run->payload != NULL)
	{
		LOCAL_FCINFO(fcinfo, 4);
		Jsonb	   *vars = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
		Datum		first;

		InitFunctionCallInfoData(*fcinfo, NULL, 4, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = JsonbPGetDatum(run->payload);
		fcinfo->args[0].isnull = false;
		fcinfo->args[1].value = jsonpath;
		fcinfo->args[1].isnull = false;
		fcinfo->args[2].value = JsonbPGetDatum(vars);
		fcinfo->args[2].isnull = false;
		fcinfo->args[3].value = BoolGetDatum(true); /* silent */
		fcinfo->args[3].isnull = false;
		first = jsonb_path_query_first(fcinfo);
		if (!fcinfo->isnull)
			run->result = DatumGetJsonbP(first);
	}
}

/*
 * Parses a SQL/JSON path and, when payload is not NULL, evaluates it in lax
 * mode without raising errors for missing members, taking the first item
 * found.  Everything runs in a subtransaction, so a path that fails (a syntax
 * error, an undefined $variable, a bad datetime template) returns false with
 * *error set instead of aborting the caller.  *found is the first item as
 * jsonb, or NULL when there is none.
 *
 * *path_fault says whether a failure is the path's own, whatever the
 * payload: it did not parse (whatever the SQLSTATE: a syntax error, a
 * regular expression flag not implemented, a \u0000 in a key), or its
 * evaluation failed other than by a limit the payload's size met (class 54:
 * a payload nested too deep for it).  In silent mode a member missing or of
 * another type is no error, so what else fails (a $variable never passed, a
 * datetime template) fails every event that reaches it alike.
 */
static bool
RunJsonPath(const char *path, Jsonb *payload, Jsonb **found, char **error, bool *path_fault)
{
	JsonPathRun run = {path, payload, false, NULL};
	int			sqlerrcode;
	bool		ok = RunDataStepCode(JsonPathStep, &run, error, &sqlerrcode);

	*path_fault = !ok && (!run.parsed ||
						  ERRCODE_TO_CATEGORY(sqlerrcode) != ERRCODE_PROGRAM_LIMIT_EXCEEDED);
	if (found != NULL)
		*found = run.result;
	return ok;
}

/*
 * Checks a configured path at registration: it must parse, and evaluate on
 * an empty object, which finds a $variable (none is ever passed: "$id" for
 * "$.id") that would otherwise fail every delivery.
 */
static bool
JsonPathUsable(const char *path, char **error)
{
	Jsonb	   *empty = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	bool		path_fault;

	return RunJsonPath(path, empty, NULL, error, &path_fault);
}

/* True if the settings have the key, whatever its value */
static bool
HasSetting(Jsonb *settings, const char *key)
{
	JsonbValue	value;

	return getKeyJsonValueFromContainer(&settings->root, key, strlen(key), &value) != NULL;
}

/* How much of the settings ReadHmacConfig checks */
typedef enum HmacCheck
{
	HMAC_CHECK_VERIFY,			/* verifying a delivery: registration checked all */
	HMAC_CHECK_REGISTER,		/* also parse the paths (check_settings does the keys) */
	HMAC_CHECK_PRIMITIVE		/* verify_hmac: also refuse unknown keys, paths unused */
} HmacCheck;

/*
 * Reads a provider's settings into cfg; returns why they are unusable, or
 * NULL.  Parsing the SQL/JSON paths takes a subtransaction, which a parallel
 * worker cannot start, so it is done only at registration.
 */
static char *
ReadHmacConfig(Jsonb *settings, HmacConfig *cfg, HmacCheck check)
{
	JsonbIterator *it;
	JsonbValue	value;
	JsonbIteratorToken token;
	char	   *text;
	char	   *error;

	memset(cfg, 0, sizeof(HmacConfig));
	cfg->algorithm = HMAC_SHA256;
	cfg->prefix = "";
	cfg->tolerance = PAYMENTS_DEFAULT_TOLERANCE;

	if (settings == NULL || !JB_ROOT_IS_OBJECT(settings) || JB_ROOT_IS_SCALAR(settings))
		return pstrdup("settings must be a JSON object");

	/* every value of ours a string, except tolerance */
	it = JsonbIteratorInit(&settings->root);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		char	   *key;
		bool		known = false;
		JsonbValue	member;

		if (token != WJB_KEY)
			continue;
		key = pnstrdup(value.val.string.val, value.val.string.len);
		for (int i = 0; i < (int) lengthof(hmac_settings); i++)
			known = known || strcmp(key, hmac_settings[i]) == 0;
		if (!known)
		{
			/* the settings every kind has are check_settings' business */
			if (check == HMAC_CHECK_PRIMITIVE && strcmp(key, "receipt_prefix") != 0)
				return psprintf("unknown setting \"%s\"", key);
			continue;
		}
		getKeyJsonValueFromContainer(&settings->root, key, strlen(key), &member);
		if (strcmp(key, "tolerance") == 0)
		{
			cfg->tolerance = SettingTolerance(settings);
			if (cfg->tolerance < 0)
				return pstrdup("tolerance must be a whole number of seconds from 1 to 604800");
		}
		else if (member.type != jbvString && strcmp(key, "event_id_path") != 0)
			return psprintf("%s must be a string", key);
	}

	cfg->header = SettingText(settings, "header");
	if (cfg->header == NULL)
		return pstrdup("header (the name of the signature header, e.g. \"x-paystack-signature\") is required");
	if (!IsHeaderName(cfg->header))
		return pstrdup("header must be a header name in lower case, e.g. \"x-hub-signature-256\"");

	text = SettingText(settings, "algorithm");
	if (text == NULL || strcmp(text, "sha256") == 0)
		cfg->algorithm = HMAC_SHA256;
	else if (strcmp(text, "sha512") == 0)
		cfg->algorithm = HMAC_SHA512;
	else if (strcmp(text, "sha1") == 0)
		cfg->algorithm = HMAC_SHA1;
	else
		return pstrdup("algorithm must be \"sha256\" (the default), \"sha512\" or \"sha1\"");

	text = SettingText(settings, "encoding");
	if (text != NULL && strcmp(text, "base64") == 0)
		cfg->base64 = true;
	else if (text != NULL && strcmp(text, "hex") != 0)
		return pstrdup("encoding must be \"hex\" (the default) or \"base64\"");

	text = SettingText(settings, "prefix");
	if (text != NULL)
	{
		if (strlen(text) > 64)
			return pstrdup("prefix must be at most 64 characters");
		for (const char *c = text; *c; c++)
		{
			if (*c <= ' ' || *c > '~')
				return pstrdup("prefix must be printable ASCII without spaces");
		}
		cfg->prefix = text;
	}

	cfg->timestamp_header = SettingText(settings, "timestamp_header");
	if (cfg->timestamp_header != NULL &&
		(!IsHeaderName(cfg->timestamp_header) || strcmp(cfg->timestamp_header, cfg->header) == 0))
		return pstrdup("timestamp_header must be a header name in lower case, other than header");

	text = SettingText(settings, "signed");
	if (text != NULL && strcmp(text, "timestamp.body") == 0)
		cfg->sign_timestamp = true;
	else if (text != NULL && strcmp(text, "body") != 0)
		return pstrdup("signed must be \"body\" (the default) or \"timestamp.body\"");
	if (cfg->sign_timestamp && cfg->timestamp_header == NULL)
		return pstrdup("signed = \"timestamp.body\" needs timestamp_header");
	if (!cfg->sign_timestamp && cfg->timestamp_header != NULL)
		return pstrdup("timestamp_header needs signed = \"timestamp.body\": a time that is not signed proves nothing");
	if (!cfg->sign_timestamp && HasSetting(settings, "tolerance"))
		return pstrdup("tolerance applies only with timestamp_header and signed = \"timestamp.body\"");

	cfg->event_id_header = SettingText(settings, "event_id_header");
	text = SettingText(settings, "event_id_path");
	if (text != NULL)
	{
		cfg->event_id_paths = palloc(sizeof(char *));
		cfg->event_id_paths[0] = text;
		cfg->event_id_path_count = 1;
	}
	else if (HasSetting(settings, "event_id_path"))
	{
		cfg->event_id_path_count = SettingTextArray(settings, "event_id_path", &cfg->event_id_paths);
		if (cfg->event_id_path_count < 1 || cfg->event_id_path_count > HMAC_MAX_ID_PATHS)
			return psprintf("event_id_path must be a SQL/JSON path, or an array of 1 to %d of them",
							HMAC_MAX_ID_PATHS);
	}
	cfg->event_type_header = SettingText(settings, "event_type_header");
	cfg->event_type_path = SettingText(settings, "event_type_path");
	if (cfg->event_id_header != NULL && !IsHeaderName(cfg->event_id_header))
		return pstrdup("event_id_header must be a header name in lower case");
	if (cfg->event_type_header != NULL && !IsHeaderName(cfg->event_type_header))
		return pstrdup("event_type_header must be a header name in lower case");
	if (cfg->event_id_header != NULL && cfg->event_id_path_count > 0)
		return pstrdup("set event_id_header or event_id_path, not both");
	if (cfg->event_type_header != NULL && cfg->event_type_path != NULL)
		return pstrdup("set event_type_header or event_type_path, not both");
	for (int i = 0; check == HMAC_CHECK_REGISTER && i < cfg->event_id_path_count; i++)
	{
		if (!JsonPathUsable(cfg->event_id_paths[i], &error))
			return psprintf("event_id_path \"%s\" is not a usable SQL/JSON path: %s", cfg->event_id_paths[i], error);
	}
	if (check == HMAC_CHECK_REGISTER && cfg->event_type_path != NULL &&
		!JsonPathUsable(cfg->event_type_path, &error))
		return psprintf("event_type_path is not a usable SQL/JSON path: %s", error);
	return NULL;
}

/*
 * Verifies the signature headers of a delivery over the raw body against
 * every live secret, then the signed time against the tolerance.
 */
static void
VerifyHmac(const HmacConfig *cfg, const char *body, int bodylen, Jsonb *headers,
		   const SecretList *secrets, TimestampTz now, Verdict *verdict)
{
	int			maclen = HmacLength(cfg->algorithm);
	int			prefixlen = strlen(cfg->prefix);
	int			expectedlen = cfg->base64 ? (maclen + 2) / 3 * 4 : maclen * 2;
	const char *signature;
	int			siglen;
	const char *timestamp = NULL;
	int			tslen = 0;
	int64		signed_at = 0;
	char	   *received;
	MacPart		parts[3];
	int			nparts = 0;
	bool		matched = false;

	signature = HeaderValue(headers, cfg->header, &siglen);
	if (signature == NULL)
	{
		VerdictReject(verdict, "missing_header", "no %s header", cfg->header);
		return;
	}
	if (cfg->timestamp_header != NULL)
	{
		timestamp = HeaderValue(headers, cfg->timestamp_header, &tslen);
		if (timestamp == NULL)
		{
			VerdictReject(verdict, "missing_header", "no %s header", cfg->timestamp_header);
			return;
		}
		if (!ParseUnixSeconds(timestamp, tslen, &signed_at))
		{
			VerdictReject(verdict, "malformed_header", "%s is not unix seconds",
						  cfg->timestamp_header);
			return;
		}
	}
	if (siglen < prefixlen || memcmp(signature, cfg->prefix, prefixlen) != 0)
	{
		VerdictReject(verdict, "malformed_header", "%s does not start with \"%s\"",
					  cfg->header, cfg->prefix);
		return;
	}
	signature += prefixlen;
	siglen -= prefixlen;
	if (siglen != expectedlen)
	{
		VerdictReject(verdict, "malformed_header",
					  "%s holds %d characters after the prefix, not the %d of a %s %s",
					  cfg->header, siglen, expectedlen,
					  cfg->base64 ? "base64" : "hex",
					  cfg->algorithm == HMAC_SHA1 ? "HMAC-SHA1" :
					  cfg->algorithm == HMAC_SHA256 ? "HMAC-SHA256" : "HMAC-SHA512");
		return;
	}
	received = palloc(siglen);
	memcpy(received, signature, siglen);
	if (!cfg->base64)
	{
		for (int i = 0; i < siglen; i++)
		{
			if (received[i] >= 'A' && received[i] <= 'F')
				received[i] += 'a' - 'A';
		}
		if (!IsLowerHex(received, siglen))
		{
			VerdictReject(verdict, "malformed_header", "%s is not hexadecimal", cfg->header);
			return;
		}
	}

	if (cfg->sign_timestamp)
	{
		parts[nparts].data = timestamp;
		parts[nparts++].len = tslen;
		parts[nparts].data = ".";
		parts[nparts++].len = 1;
	}
	parts[nparts].data = body;
	parts[nparts++].len = bodylen;

	for (int i = 0; i < secrets->count && !matched; i++)
	{
		text	   *secret = secrets->secrets[i];
		unsigned char mac[64];
		char	   *expected;

		ComputeHmac(cfg->algorithm, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret),
					parts, nparts, mac);
		expected = cfg->base64 ? EncodeBase64(mac, maclen) : EncodeHex(mac, maclen);
		if (CRYPTO_memcmp(expected, received, expectedlen) == 0)
			matched = true;
		pfree(expected);
	}
	if (!matched)
	{
		VerdictReject(verdict, "signature_mismatch",
					  "%s matches no live secret (%d secret(s))", cfg->header, secrets->count);
		return;
	}

	verdict->valid = true;
	if (cfg->timestamp_header != NULL)
		CheckTolerance(verdict, signed_at, now, cfg->tolerance);
}

/*
 * The provider's settings, checked at registration.  Settings changed behind
 * register_provider's back are the server's problem, not the delivery's: the
 * error is not a data exception, so the shim answers 503 and the sender
 * retries rather than giving up on a 400.
 */
static void
ProviderConfig(const Provider *provider, HmacConfig *cfg)
{
	char	   *problem = ReadHmacConfig(provider->settings, cfg, HMAC_CHECK_VERIFY);

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("provider \"%s\" has unusable settings: %s", provider->name, problem)));
}

/* Checks a delivery's signature as the provider's settings say */
static void
VerifyHmacDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	HmacConfig	cfg;

	ProviderConfig(provider, &cfg);
	VerifyHmac(&cfg, VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
			   delivery->headers, &provider->secrets, GetCurrentTimestamp(), verdict);
}

/*
 * Looks up a value by header or by path.  Returns false after marking the
 * event list invalid if the path fails; *result is NULL when nothing (or an
 * empty string) is found, or neither is configured.
 */
static bool
LookUp(const Delivery *delivery, Jsonb *payload, const char *header, const char *path,
	   const char *what, char **result, EventList *events)
{
	*result = NULL;
	if (header != NULL)
	{
		int			len;
		const char *value = HeaderValue(delivery->headers, header, &len);

		if (value != NULL && len > 0)
			*result = pnstrdup(value, len);
	}
	else if (path != NULL)
	{
		Jsonb	   *found;
		char	   *error;
		bool		path_fault;
		JsonbValue	scalar;

		if (!RunJsonPath(path, payload, &found, &error, &path_fault))
		{
			/*
			 * The path itself, whatever the event (set by a direct UPDATE,
			 * which registration's check never saw, or failing deeper than
			 * that check reached): the settings' fault, answered 503 so that
			 * the sender retries once they are mended, rather than an
			 * authentic event refused as invalid and lost.
			 */
			if (path_fault)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("provider \"%s\" has unusable settings: %s %s failed: %s",
								text_to_cstring(delivery->provider), what, path, error)));
			InvalidEvents(events, "event_path_failed",
						  psprintf("%s %s failed: %s", what, path, error));
			return false;
		}
		if (found != NULL && JsonbExtractScalar(&found->root, &scalar))
		{
			if (scalar.type == jbvString && scalar.val.string.len > 0)
				*result = pnstrdup(scalar.val.string.val, scalar.val.string.len);
			else if (scalar.type == jbvNumeric)
				*result = DatumGetCString(DirectFunctionCall1(numeric_out,
															  NumericGetDatum(scalar.val.numeric)));
		}
	}
	return true;
}

/*
 * Looks up the event id: by its header, or by its paths, the values found
 * joined by ':', each ':' or '\' within them escaped by a '\' (else
 * "a:b" + "c" and "a" + "b:c" would be one event, one of them lost as its
 * duplicate).  *result is NULL when one finds nothing, or none is set.
 */
static bool
LookUpEventId(const Delivery *delivery, Jsonb *payload, const HmacConfig *cfg, char **result,
			  EventList *events)
{
	StringInfoData id;

	if (cfg->event_id_path_count == 0)
		return LookUp(delivery, payload, cfg->event_id_header, NULL, "event_id_header", result, events);
	initStringInfo(&id);
	for (int i = 0; i < cfg->event_id_path_count; i++)
	{
		char	   *part;

		if (!LookUp(delivery, payload, NULL, cfg->event_id_paths[i], "event_id_path", &part, events))
			return false;
		if (part == NULL)
		{
			*result = NULL;
			return true;
		}
		if (i > 0)
			appendStringInfoChar(&id, ':');
		for (const char *c = part; *c != '\0'; c++)
		{
			if (cfg->event_id_path_count > 1 && (*c == ':' || *c == '\\'))
				appendStringInfoChar(&id, '\\');
			appendStringInfoChar(&id, *c);
		}
	}
	*result = id.data;
	return true;
}

/* One event: the id and type where the settings say, else the defaults */
static void
ExtractHmacEvent(const Provider *provider, const Delivery *delivery, EventList *events)
{
	HmacConfig	cfg;
	Jsonb	   *payload;
	char	   *event_id;
	char	   *event_type;

	ProviderConfig(provider, &cfg);
	payload = ParseJsonDelivery(delivery, events);
	if (payload == NULL)
		return;
	if (!LookUpEventId(delivery, payload, &cfg, &event_id, events) ||
		!LookUp(delivery, payload, cfg.event_type_header, cfg.event_type_path, "event_type_path",
				&event_type, events))
		return;
	if (event_id == NULL)
		event_id = BodyDigestId(delivery->body);
	else if (strlen(event_id) > PAYMENTS_MAX_EVENT_ID)
	{
		InvalidEvents(events, "missing_event_id",
					  psprintf("the event id found is longer than %d bytes", PAYMENTS_MAX_EVENT_ID));
		return;
	}
	SingleEvent(events, event_id, payload);
	if (cfg.event_type_header != NULL || cfg.event_type_path != NULL)
		events->events[0].event_type = event_type;
}

/* Why settings cannot serve an hmac provider, or NULL */
static char *
HmacSettingsProblem(Jsonb *settings)
{
	HmacConfig	cfg;

	return ReadHmacConfig(settings, &cfg, HMAC_CHECK_REGISTER);
}

const ProviderKind HmacKind = {
	.name = "hmac",
	.uses_secrets = true,
	.verify = VerifyHmacDelivery,
	.extract = ExtractHmacEvent,
	.secret_problem = NULL,		/* the key is the whole string, whatever it is */
	.settings_problem = HmacSettingsProblem,
};

/*
 * SQL: payments.verify_hmac(body, headers, secret, settings, at) returns
 * 'valid' or the rejection reason, verifying as a provider of kind hmac with
 * these settings would (the event id and type settings play no part).
 */
Datum
verify_hmac(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	Jsonb	   *headers = PG_GETARG_JSONB_P(1);
	text	   *secret = PG_GETARG_TEXT_PP(2);
	Jsonb	   *settings = PG_GETARG_JSONB_P(3);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(4);
	SecretList	secrets = {1, &secret};
	Verdict		verdict = {0};
	HmacConfig	cfg;
	char	   *problem;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object of header names to values")));
	problem = ReadHmacConfig(settings, &cfg, HMAC_CHECK_PRIMITIVE);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unusable settings for provider kind \"hmac\": %s", problem)));

	VerifyHmac(&cfg, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), headers, &secrets, at,
			   &verdict);
	PG_RETURN_TEXT_P(cstring_to_text(verdict.valid ? "valid" : verdict.reason));
}
