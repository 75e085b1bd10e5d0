/*
 * kind_eversend.c
 *		Eversend (eversend.co): X-Eversend-Signature over the raw body.
 *
 * Eversend's docs call the signature "a HMAC SHA512 hash of the payload"
 * made with the webhook secret; their sample code computes an unkeyed SHA-512
 * instead (createHash ignores its second argument), and integrations in the
 * wild use HMAC-SHA512 or HMAC-SHA256 (PROVIDERS.md section 5).  We follow the
 * documented wording: hex HMAC of the raw body keyed with the UTF-8 bytes of
 * the secret, SHA-512 unless the provider's "algorithm" setting says
 * "sha256".  An unkeyed hash is never accepted: anyone could compute it.
 * The hex may be in either case, and may carry a "sha512=" or "sha256="
 * prefix as long as it names the configured algorithm (the prefix never
 * chooses the algorithm, so it cannot be used to downgrade).
 *
 * The payload shape is not pinned down either: the transaction fields are
 * read at the top level, or under "data" when the top level has no
 * transactionId.  The event id is "<transactionId>:<status>"; the type is
 * the top-level "eventType", else the top-level "type" when the transaction
 * is under "data" (at the top level "type" is the transaction's own type,
 * collection or payout).  The time is updatedAt, else createdAt for a
 * pending status (the one a transaction is created with), else none: the
 * status counts as of its arrival.
 */
#include "payments.h"

#include <openssl/crypto.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"

#define EVERSEND_HEADER "x-eversend-signature"

PG_FUNCTION_INFO_V1(verify_eversend);

/* Reads an algorithm name; false if it is not one Eversend may use */
static bool
EversendAlgorithm(const char *name, HmacAlgorithm *algorithm)
{
	if (strcmp(name, "sha512") == 0)
		*algorithm = HMAC_SHA512;
	else if (strcmp(name, "sha256") == 0)
		*algorithm = HMAC_SHA256;
	else
		return false;
	return true;
}

/* The name of an algorithm as written in settings and prefixes */
static const char *
AlgorithmName(HmacAlgorithm algorithm)
{
	return algorithm == HMAC_SHA512 ? "sha512" : "sha256";
}

/*
 * Verifies an X-Eversend-Signature value over the raw body against every
 * live secret.
 */
static void
VerifyEversend(const char *body, int bodylen, const char *signature, int siglen,
			   const SecretList *secrets, HmacAlgorithm algorithm, Verdict *verdict)
{
	int			maclen = HmacLength(algorithm);
	char	   *received;
	MacPart		part = {body, bodylen};
	bool		matched = false;

	if (siglen >= 7 && (strncmp(signature, "sha512=", 7) == 0 ||
						strncmp(signature, "sha256=", 7) == 0))
	{
		if (strncmp(signature, AlgorithmName(algorithm), 6) != 0)
		{
			VerdictReject(verdict, "malformed_header",
						  EVERSEND_HEADER " is marked %.6s but the provider's algorithm is %s",
						  signature, AlgorithmName(algorithm));
			return;
		}
		signature += 7;
		siglen -= 7;
	}
	if (siglen != maclen * 2)
	{
		VerdictReject(verdict, "malformed_header",
					  EVERSEND_HEADER " has %d characters, not the %d hex digits of %s%s",
					  siglen, maclen * 2, AlgorithmName(algorithm),
					  siglen == HmacLength(algorithm == HMAC_SHA512 ? HMAC_SHA256 : HMAC_SHA512) * 2 ?
					  " (its length is that of the other algorithm: check the algorithm setting)" : "");
		return;
	}
	received = palloc(siglen);
	for (int i = 0; i < siglen; i++)
	{
		char		c = signature[i];

		if (c >= 'A' && c <= 'F')
			c += 'a' - 'A';
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
		{
			VerdictReject(verdict, "malformed_header", EVERSEND_HEADER " is not hexadecimal");
			return;
		}
		received[i] = c;
	}

	for (int i = 0; i < secrets->count && !matched; i++)
	{
		text	   *secret = secrets->secrets[i];
		unsigned char mac[64];
		char		expected[129];

		ComputeHmac(algorithm, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret), &part, 1, mac);
		hex_encode((const char *) mac, maclen, expected);
		if (CRYPTO_memcmp(expected, received, siglen) == 0)
			matched = true;
	}
	if (!matched)
	{
		VerdictReject(verdict, "signature_mismatch",
					  "the %s signature matches no live secret (%d secret(s))",
					  AlgorithmName(algorithm), secrets->count);
		return;
	}
	verdict->valid = true;
}

/*
 * The provider's algorithm (settings are checked at registration; one changed
 * behind register_provider's back is answered 503, as in kind_hmac.c)
 */
static HmacAlgorithm
ProviderAlgorithm(const Provider *provider)
{
	char	   *name = SettingText(provider->settings, "algorithm");
	HmacAlgorithm algorithm = HMAC_SHA512;

	if (name != NULL && !EversendAlgorithm(name, &algorithm))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("provider \"%s\" has unusable settings: unknown algorithm \"%s\"",
						provider->name, name)));
	return algorithm;
}

/* Checks a delivery's X-Eversend-Signature header */
static void
VerifyEversendDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	const char *signature;
	int			len;

	signature = HeaderValue(delivery->headers, EVERSEND_HEADER, &len);
	if (signature == NULL)
	{
		VerdictReject(verdict, "missing_header", "no " EVERSEND_HEADER " header");
		return;
	}
	VerifyEversend(VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
				   signature, len, &provider->secrets, ProviderAlgorithm(provider),
				   verdict);
}

/* A top-level string, or a number written in decimal, as a C string; else NULL */
static char *
TopScalarText(Jsonb *jb, const char *key)
{
	JsonbValue	value;

	if (getKeyJsonValueFromContainer(&jb->root, key, strlen(key), &value) == NULL)
		return NULL;
	if (value.type == jbvString)
		return pnstrdup(value.val.string.val, value.val.string.len);
	if (value.type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(value.val.numeric)));
	return NULL;
}

/*
 * The object holding the transaction fields: the payload itself when it has
 * a transactionId, else its "data" object if there is one, else the payload.
 */
static Jsonb *
TransactionObject(Jsonb *payload, bool *nested)
{
	JsonbValue	data;

	*nested = false;
	if (getKeyJsonValueFromContainer(&payload->root, "transactionId", 13, &data) != NULL)
		return payload;
	if (getKeyJsonValueFromContainer(&payload->root, "data", 4, &data) == NULL ||
		data.type != jbvBinary || !JsonContainerIsObject(data.val.binary.data))
		return payload;
	*nested = true;
	return JsonbValueToJsonb(&data);
}

/* An Eversend delivery is one event: "<transactionId>:<status>" */
static void
ExtractEversendEvent(const Provider *provider, const Delivery *delivery, EventList *events)
{
	Jsonb	   *payload = ParseJsonDelivery(delivery, events);
	Jsonb	   *transaction;
	bool		nested;
	char	   *transaction_id;
	char	   *status;
	char	   *event_id;
	EventRecord *event;

	if (payload == NULL)
		return;
	transaction = TransactionObject(payload, &nested);
	transaction_id = TopScalarText(transaction, "transactionId");
	status = JsonbTopString(transaction, "status");
	if (transaction_id == NULL || transaction_id[0] == '\0' || status == NULL || status[0] == '\0')
	{
		InvalidEvents(events, "missing_event_id",
					  pstrdup("an Eversend event needs a transactionId and a string status, at the top level or under \"data\""));
		return;
	}
	event_id = psprintf("%s:%s", transaction_id, status);
	if (strlen(event_id) > PAYMENTS_MAX_EVENT_ID)
	{
		InvalidEvents(events, "missing_event_id",
					  psprintf("transactionId:status is longer than %d bytes", PAYMENTS_MAX_EVENT_ID));
		return;
	}
	SingleEvent(events, event_id, payload);
	event = &events->events[0];
	event->event_type = JsonbTopString(payload, "eventType");
	if (event->event_type == NULL && nested)
		event->event_type = JsonbTopString(payload, "type");
	/*
	 * createdAt is the time of the creation status only: a reversal months
	 * later without updatedAt is as of its arrival (event_at NULL), as a
	 * Paynow status is, not of the day the transaction was made.
	 */
	event->have_event_at = JsonbTopIsoTime(transaction, "updatedAt", &event->event_at) ||
		(pg_strcasecmp(status, "pending") == 0 &&
		 JsonbTopIsoTime(transaction, "createdAt", &event->event_at));
}

/* Why settings cannot serve an Eversend provider, or NULL */
static char *
EversendSettingsProblem(Jsonb *settings)
{
	JsonbValue	value;
	HmacAlgorithm algorithm;
	char	   *name;

	if (getKeyJsonValueFromContainer(&settings->root, "algorithm", 9, &value) == NULL)
		return NULL;
	name = SettingText(settings, "algorithm");
	if (name == NULL || !EversendAlgorithm(name, &algorithm))
		return pstrdup("algorithm must be \"sha512\" (the default, as Eversend documents) or \"sha256\"");
	return NULL;
}

const ProviderKind EversendKind = {
	.name = "eversend",
	.uses_secrets = true,
	.verify = VerifyEversendDelivery,
	.extract = ExtractEversendEvent,
	.secret_problem = NULL,		/* the key is the whole string, whatever it is */
	.settings_problem = EversendSettingsProblem,
};

/*
 * SQL: payments.verify_eversend(body, signature, secret, algorithm) returns
 * 'valid' or the rejection reason.
 */
Datum
verify_eversend(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	text	   *signature = PG_GETARG_TEXT_PP(1);
	text	   *secret = PG_GETARG_TEXT_PP(2);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(3));
	SecretList	secrets = {1, &secret};
	Verdict		verdict = {0};
	HmacAlgorithm algorithm;

	if (!EversendAlgorithm(name, &algorithm))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("algorithm must be \"sha512\" or \"sha256\", not \"%s\"", name)));
	VerifyEversend(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
				   VARDATA_ANY(signature), VARSIZE_ANY_EXHDR(signature),
				   &secrets, algorithm, &verdict);
	PG_RETURN_TEXT_P(cstring_to_text(verdict.valid ? "valid" : verdict.reason));
}
