/*
 * kind_stripe.c
 *		Stripe: the Stripe-Signature scheme and Stripe's event envelope.
 *
 * The header is "t=<unix seconds>,v1=<hex>[,v1=<hex>...]": comma-separated
 * key=value items.  The signed bytes are "<t>.<raw body>", the MAC is
 * HMAC-SHA256 keyed with the UTF-8 bytes of the whole secret (whsec_ prefix
 * included), written as 64 lowercase hex digits.  We parse more strictly than
 * Stripe's SDKs: exactly one t of digits, every v1 well formed; other schemes
 * (v0 test signatures, future ones) are ignored as the SDKs do.
 */
#include "payments.h"

#include <openssl/crypto.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define STRIPE_SIGNATURE_HEX 64

PG_FUNCTION_INFO_V1(verify_stripe);
PG_FUNCTION_INFO_V1(stripe_of_other_mode);

/* The parts of a Stripe-Signature header that matter */
typedef struct StripeHeader
{
	int64		timestamp;
	int			nsignatures;
	const char **signatures;	/* each STRIPE_SIGNATURE_HEX characters */
} StripeHeader;

/* Parses a Stripe-Signature header; on failure rejects the verdict */
static bool
ParseStripeHeader(const char *header, int len, StripeHeader *parsed, Verdict *verdict)
{
	const char *end = header + len;
	const char *item = header;
	int			itemno = 0;
	bool		have_timestamp = false;

	parsed->nsignatures = 0;
	parsed->signatures = palloc(sizeof(char *) * (len / (STRIPE_SIGNATURE_HEX + 3) + 1));

	while (item <= end)
	{
		const char *comma = memchr(item, ',', end - item);
		const char *item_end = comma ? comma : end;
		const char *eq = memchr(item, '=', item_end - item);
		int			keylen;
		const char *value;
		int			valuelen;

		itemno++;
		if (eq == NULL)
		{
			VerdictReject(verdict, "malformed_header",
						  "stripe-signature item %d is not key=value", itemno);
			return false;
		}
		keylen = eq - item;
		value = eq + 1;
		valuelen = item_end - value;

		if (keylen == 1 && item[0] == 't')
		{
			if (have_timestamp)
			{
				VerdictReject(verdict, "malformed_header",
							  "stripe-signature has more than one t");
				return false;
			}
			if (!ParseUnixSeconds(value, valuelen, &parsed->timestamp))
			{
				VerdictReject(verdict, "malformed_header",
							  "stripe-signature t is not unix seconds");
				return false;
			}
			have_timestamp = true;
		}
		else if (keylen == 2 && item[0] == 'v' && item[1] == '1')
		{
			if (valuelen != STRIPE_SIGNATURE_HEX || !IsLowerHex(value, valuelen))
			{
				VerdictReject(verdict, "malformed_header",
							  "stripe-signature v1 is not 64 lowercase hex digits");
				return false;
			}
			parsed->signatures[parsed->nsignatures++] = value;
		}
		/* other schemes (v0, future ones) are ignored */

		if (comma == NULL)
			break;
		item = comma + 1;
	}

	if (!have_timestamp)
	{
		VerdictReject(verdict, "malformed_header", "stripe-signature has no t");
		return false;
	}
	if (parsed->nsignatures == 0)
	{
		VerdictReject(verdict, "no_signature", "stripe-signature has no v1 signature");
		return false;
	}
	return true;
}

/*
 * Verifies a Stripe-Signature header over the raw body against every live
 * secret, then checks the signed timestamp against the tolerance.
 */
void
VerifyStripe(const char *body, int bodylen, const char *header, int headerlen,
			 const SecretList *secrets, int tolerance, TimestampTz now, Verdict *verdict)
{
	StripeHeader parsed;
	char		prefix[32];
	MacPart		parts[2];
	unsigned char mac[32];
	bool		matched = false;

	if (!ParseStripeHeader(header, headerlen, &parsed, verdict))
		return;

	/* sign the canonical decimal form of t, as the SDKs do */
	parts[0].data = prefix;
	parts[0].len = snprintf(prefix, sizeof(prefix), "%lld.", (long long) parsed.timestamp);
	parts[1].data = body;
	parts[1].len = bodylen;

	for (int i = 0; i < secrets->count && !matched; i++)
	{
		text	   *secret = secrets->secrets[i];
		char		expected[STRIPE_SIGNATURE_HEX + 1];

		ComputeHmac(HMAC_SHA256, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret),
					parts, 2, mac);
		hex_encode((const char *) mac, sizeof(mac), expected);
		for (int j = 0; j < parsed.nsignatures; j++)
		{
			if (CRYPTO_memcmp(expected, parsed.signatures[j], STRIPE_SIGNATURE_HEX) == 0)
				matched = true;
		}
	}
	if (!matched)
	{
		VerdictReject(verdict, "signature_mismatch",
					  "no v1 signature matches any live secret (%d signature(s), %d secret(s))",
					  parsed.nsignatures, secrets->count);
		return;
	}

	verdict->valid = true;
	CheckTolerance(verdict, parsed.timestamp, now, tolerance);
}

/* Checks a delivery's Stripe-Signature header */
static void
VerifyStripeDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	const char *header;
	int			len;

	header = HeaderValue(delivery->headers, "stripe-signature", &len);
	if (header == NULL)
	{
		VerdictReject(verdict, "missing_header", "no stripe-signature header");
		return;
	}
	VerifyStripe(VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
				 header, len, &provider->secrets, provider->tolerance,
				 GetCurrentTimestamp(), verdict);
}

/*
 * True when a Stripe event is of the other mode than its provider's (the
 * livemode setting, true unless set): the secrets of a live and a test
 * endpoint may sit on one provider, and a test-mode payment, which anyone
 * with test access makes with card 4242, must not pay a live donation.  Such
 * an event is stored and ignored, not refused: Stripe sends the test-mode
 * events of connected accounts to a platform's live Connect endpoint, signed
 * with its live secret, and retries any answer but a 2xx for days.  An event
 * without livemode is of the provider's mode.
 */
bool
StripeEventOfOtherMode(Jsonb *settings, Jsonb *payload)
{
	JsonbValue	livemode;

	return getKeyJsonValueFromContainer(&payload->root, "livemode", strlen("livemode"), &livemode) != NULL &&
		livemode.type == jbvBool &&
		livemode.val.boolean != SettingBool(settings, "livemode", true);
}

/*
 * SQL: payments.stripe_of_other_mode(payload, settings): StripeEventOfOtherMode,
 * for payments.event_change
 */
Datum
stripe_of_other_mode(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(StripeEventOfOtherMode(PG_GETARG_JSONB_P(1), PG_GETARG_JSONB_P(0)));
}

/*
 * A Stripe event is one event: id "evt_...", type, created (unix seconds; an
 * ISO 8601 string in a thin event, object v2.core.event)
 */
static void
ExtractStripeEvent(const Provider *provider, const Delivery *delivery, EventList *events)
{
	Jsonb	   *payload = ParseJsonDelivery(delivery, events);
	char	   *event_id;

	if (payload == NULL)
		return;
	event_id = RequiredEventId(payload, "id", "Stripe", events);
	if (event_id == NULL)
		return;
	SingleEvent(events, event_id, payload);
	events->events[0].have_event_at =
		JsonbTopUnixTime(payload, "created", &events->events[0].event_at) ||
		JsonbTopIsoTime(payload, "created", &events->events[0].event_at);
}

const ProviderKind StripeKind = {
	.name = "stripe",
	.uses_secrets = true,
	.verify = VerifyStripeDelivery,
	.extract = ExtractStripeEvent,
	.secret_problem = NULL,		/* the key is the whole string, whatever it is */
};

/*
 * SQL: payments.verify_stripe(body, header, secret, tolerance, at) returns
 * 'valid' or the rejection reason.
 */
Datum
verify_stripe(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	text	   *header = PG_GETARG_TEXT_PP(1);
	text	   *secret = PG_GETARG_TEXT_PP(2);
	int32		tolerance = PG_GETARG_INT32(3);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(4);
	SecretList	secrets = {1, &secret};
	Verdict		verdict = {0};

	if (tolerance < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tolerance must not be negative")));

	VerifyStripe(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
				 VARDATA_ANY(header), VARSIZE_ANY_EXHDR(header),
				 &secrets, tolerance, at, &verdict);
	PG_RETURN_TEXT_P(cstring_to_text(verdict.valid ? "valid" : verdict.reason));
}
