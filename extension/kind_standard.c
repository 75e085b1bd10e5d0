/*
 * kind_standard.c
 *		Standard Webhooks (standardwebhooks.com), as sent by Svix and others.
 *
 * Headers webhook-id, webhook-timestamp and webhook-signature (svix-id,
 * svix-timestamp and svix-signature from Svix).  The signed bytes are
 * "<id>.<timestamp>.<raw body>"; the key is the base64-decoded secret after
 * an optional whsec_ prefix; the signature header is a space-separated list
 * of "<version>,<base64>" items, and a v1 item is the padded standard base64
 * of the HMAC-SHA256.  Like the official library we compare base64 strings,
 * so a non-canonical encoding of the right bytes is refused.  A v1a item is
 * an Ed25519 signature of the same bytes, checked with the public keys
 * (whpk_ followed by base64 of 32 bytes, not a point of small order) among
 * the provider's secrets; only the first STANDARD_MAX_V1A_CHECKED v1a items.
 */
#include "payments.h"

#include <openssl/crypto.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/* the shortest key accepted: the spec asks for 24 to 64 bytes */
#define STANDARD_MIN_KEY_BYTES 16

#define STANDARD_SECRET_PREFIX "whsec_"
#define STANDARD_PUBLIC_KEY_PREFIX "whpk_"
#define STANDARD_PRIVATE_KEY_PREFIX "whsk_"
#define STANDARD_V1_BASE64 44	/* base64 of 32 bytes, padded */
#define STANDARD_V1A_BASE64 88	/* base64 of 64 bytes, padded */

/*
 * The most v1a items checked, each with every public key: a sender sends one
 * per signing key (two or three while it rotates), and a 16 KB header holds
 * 170, an Ed25519 verification each: over 100 times the CPU of one, for an
 * unsigned request.  Later v1a items are not checked.  v1 items are not
 * capped: one HMAC per secret is compared with each, a memcmp.
 */
#define STANDARD_MAX_V1A_CHECKED 8

/*
 * The encodings of the Ed25519 points of small order (libsodium's
 * has_small_order list), less the sign bit (the top bit of the last byte),
 * which is ignored: y = 0 (order 4), 1 (the identity), the two y of the
 * points of order 8, p - 1 (order 2), and p and p + 1 (0 and 1 unreduced).
 * With such a public key, R = the identity and S = 0 verify any message.
 */
static const unsigned char small_order_keys[][ED25519_PUBLIC_KEY_LEN] = {
	{0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},
	{0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},
	{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
	 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
	{0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
	 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	{0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	{0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
};

/* The signatures of a webhook-signature header, by version */
typedef struct StandardSignatures
{
	int			nv1;
	const char **v1;			/* STANDARD_V1_BASE64 characters each */
	int			nv1a;
	unsigned char (*v1a)[ED25519_SIGNATURE_LEN];
} StandardSignatures;

PG_FUNCTION_INFO_V1(verify_standard);

/*
 * Decodes a Standard Webhooks secret into its key bytes; returns the key
 * length, or -1 if the secret is not (whsec_ followed by) base64, padded or
 * not.
 */
static int
DecodeStandardSecret(const char *secret, int len, unsigned char **key)
{
	int			prefixlen = strlen(STANDARD_SECRET_PREFIX);

	if (len >= prefixlen && memcmp(secret, STANDARD_SECRET_PREFIX, prefixlen) == 0)
	{
		secret += prefixlen;
		len -= prefixlen;
	}
	return DecodeBase64Key(secret, len, key);
}

/* True if the secret is an Ed25519 public key (whpk_) */
static bool
IsStandardPublicKey(const char *secret, int len)
{
	int			prefixlen = strlen(STANDARD_PUBLIC_KEY_PREFIX);

	return len >= prefixlen && memcmp(secret, STANDARD_PUBLIC_KEY_PREFIX, prefixlen) == 0;
}

/* Decodes a whpk_ public key; returns false if it is not base64 of 32 bytes */
static bool
DecodeStandardPublicKey(const char *secret, int len, unsigned char **key)
{
	int			prefixlen = strlen(STANDARD_PUBLIC_KEY_PREFIX);

	return DecodeBase64Key(secret + prefixlen, len - prefixlen, key) == ED25519_PUBLIC_KEY_LEN;
}

/* True if a public key is one of small_order_keys, whatever its sign bit */
static bool
IsSmallOrderKey(const unsigned char *key)
{
	const int	last = ED25519_PUBLIC_KEY_LEN - 1;

	for (size_t i = 0; i < lengthof(small_order_keys); i++)
	{
		if (memcmp(key, small_order_keys[i], last) == 0 &&
			(key[last] & 0x7f) == small_order_keys[i][last])
			return true;
	}
	return false;
}

/* Why a secret cannot serve as a Standard Webhooks key, or NULL */
static const char *
StandardSecretProblem(const char *secret, int len)
{
	unsigned char *key;
	int			keylen;
	int			skprefix = strlen(STANDARD_PRIVATE_KEY_PREFIX);

	if (IsStandardPublicKey(secret, len))
	{
		if (!DecodeStandardPublicKey(secret, len, &key))
			return "a Standard Webhooks public key is whpk_ followed by base64 of 32 bytes";
		if (IsSmallOrderKey(key))
			return "that public key is an Ed25519 point of small order, which verifies signatures anyone can make";
		return NULL;
	}
	if (len >= skprefix && memcmp(secret, STANDARD_PRIVATE_KEY_PREFIX, skprefix) == 0)
		return "that is a signing key (whsk_): give the sender's public key (whpk_) instead";
	keylen = DecodeStandardSecret(secret, len, &key);
	if (keylen < 0)
		return "a Standard Webhooks secret is whsec_ followed by base64";
	if (keylen < STANDARD_MIN_KEY_BYTES)
		return "a Standard Webhooks key must be at least 16 bytes (the spec asks for 24 to 64)";
	return NULL;
}

/* True if the id may stand in the signed content: printable ASCII without '.' */
static bool
IsUsableMessageId(const char *id, int len)
{
	if (len < 1 || len > PAYMENTS_MAX_EVENT_ID)
		return false;
	for (int i = 0; i < len; i++)
	{
		if (id[i] <= ' ' || id[i] > '~' || id[i] == '.')
			return false;
	}
	return true;
}

/*
 * Collects the v1 and v1a items of a webhook-signature header.  Items are
 * separated by spaces; each is "<version>,<signature>".  Other versions are
 * ignored; a malformed item rejects the verdict.
 */
static bool
ParseStandardSignatures(const char *header, int len, StandardSignatures *sigs, Verdict *verdict)
{
	const char *end = header + len;
	const char *item = header;
	int			maxitems = len / (STANDARD_V1_BASE64 + 4) + 1;

	sigs->nv1 = sigs->nv1a = 0;
	sigs->v1 = palloc(sizeof(char *) * maxitems);
	sigs->v1a = palloc(ED25519_SIGNATURE_LEN * maxitems);
	while (item < end)
	{
		const char *space = memchr(item, ' ', end - item);
		const char *item_end = space ? space : end;

		/*
		 * Two header lines, joined by ", " as HTTP combines them (the shim,
		 * node), leave a comma after the first line's last signature
		 */
		if (space != NULL && item_end - item > 1 && item_end[-1] == ',')
			item_end--;
		if (item_end > item)
		{
			const char *comma = memchr(item, ',', item_end - item);
			const char *sig;
			int			siglen;
			int			verlen;

			if (comma == NULL || comma == item ||
				memchr(comma + 1, ',', item_end - comma - 1) != NULL)
			{
				VerdictReject(verdict, "malformed_header",
							  "webhook-signature item is not <version>,<signature>");
				return false;
			}
			sig = comma + 1;
			siglen = item_end - sig;
			verlen = comma - item;
			if (verlen == 2 && memcmp(item, "v1", 2) == 0)
			{
				if (siglen != STANDARD_V1_BASE64)
				{
					VerdictReject(verdict, "malformed_header",
								  "webhook-signature v1 is not the base64 of 32 bytes");
					return false;
				}
				sigs->v1[sigs->nv1++] = sig;
			}
			else if (verlen == 3 && memcmp(item, "v1a", 3) == 0)
			{
				unsigned char *raw;

				if (siglen != STANDARD_V1A_BASE64 ||
					DecodeBase64Strict(sig, siglen, &raw) != ED25519_SIGNATURE_LEN)
				{
					VerdictReject(verdict, "malformed_header",
								  "webhook-signature v1a is not the base64 of 64 bytes");
					return false;
				}
				memcpy(sigs->v1a[sigs->nv1a++], raw, ED25519_SIGNATURE_LEN);
				pfree(raw);
			}
		}
		item = item_end + 1;
	}
	return true;
}

/* True if an HMAC secret signed the content as one of the v1 signatures */
static bool
MatchesV1(const char *secret, int len, const MacPart *parts, const StandardSignatures *sigs)
{
	unsigned char *key;
	int			keylen = DecodeStandardSecret(secret, len, &key);
	unsigned char mac[32];
	char	   *expected;
	bool		matched = false;

	/*
	 * payments.secrets refuses these (payments.check_secret); skip one kept
	 * from before: an empty key would let anyone sign
	 */
	if (keylen < STANDARD_MIN_KEY_BYTES)
	{
		if (keylen >= 0)
			pfree(key);
		return false;
	}
	ComputeHmac(HMAC_SHA256, key, keylen, parts, 3, mac);
	expected = EncodeBase64(mac, sizeof(mac));
	for (int j = 0; j < sigs->nv1; j++)
	{
		if (CRYPTO_memcmp(expected, sigs->v1[j], STANDARD_V1_BASE64) == 0)
			matched = true;
	}
	pfree(key);
	pfree(expected);
	return matched;
}

/* True if a public key verifies one of the v1a signatures of the content */
static bool
MatchesV1a(const char *secret, int len, const MacPart *parts, const StandardSignatures *sigs)
{
	unsigned char *key;
	StringInfoData content;
	bool		matched = false;

	if (!DecodeStandardPublicKey(secret, len, &key))
		return false;

	/*
	 * payments.secrets refuses these (payments.check_secret); skip one kept
	 * from before: anyone could sign for it
	 */
	if (IsSmallOrderKey(key))
	{
		pfree(key);
		return false;
	}
	initStringInfo(&content);
	for (int i = 0; i < 3; i++)
		appendBinaryStringInfo(&content, parts[i].data, parts[i].len);
	for (int j = 0; j < Min(sigs->nv1a, STANDARD_MAX_V1A_CHECKED) && !matched; j++)
		matched = VerifyEd25519(key, sigs->v1a[j], (unsigned char *) content.data, content.len);
	pfree(content.data);
	pfree(key);
	return matched;
}

/*
 * Verifies Standard Webhooks headers over the raw body against every live
 * secret, then checks the signed timestamp against the tolerance.
 */
void
VerifyStandard(const char *body, int bodylen,
			   const char *msg_id, int idlen,
			   const char *msg_ts, int tslen,
			   const char *signature, int siglen,
			   const SecretList *secrets, int tolerance, TimestampTz now,
			   Verdict *verdict)
{
	int64		timestamp;
	StandardSignatures sigs;
	char		tsbuf[32];
	MacPart		parts[3];
	bool		matched = false;

	if (!IsUsableMessageId(msg_id, idlen))
	{
		VerdictReject(verdict, "malformed_header",
					  "webhook-id must be 1 to %d printable ASCII characters without '.'",
					  PAYMENTS_MAX_EVENT_ID);
		return;
	}
	if (!ParseUnixSeconds(msg_ts, tslen, &timestamp))
	{
		VerdictReject(verdict, "malformed_header", "webhook-timestamp is not unix seconds");
		return;
	}
	if (!ParseStandardSignatures(signature, siglen, &sigs, verdict))
		return;
	if (sigs.nv1 + sigs.nv1a == 0)
	{
		VerdictReject(verdict, "no_signature", "webhook-signature has no v1 or v1a signature");
		return;
	}

	/* sign the canonical decimal form of the timestamp, as the libraries do */
	parts[0].data = msg_id;
	parts[0].len = idlen;
	parts[1].data = tsbuf;
	parts[1].len = snprintf(tsbuf, sizeof(tsbuf), ".%lld.", (long long) timestamp);
	parts[2].data = body;
	parts[2].len = bodylen;

	for (int i = 0; i < secrets->count && !matched; i++)
	{
		const char *secret = VARDATA_ANY(secrets->secrets[i]);
		int			len = VARSIZE_ANY_EXHDR(secrets->secrets[i]);

		matched = IsStandardPublicKey(secret, len) ?
			MatchesV1a(secret, len, parts, &sigs) :
			MatchesV1(secret, len, parts, &sigs);
	}
	if (!matched)
	{
		VerdictReject(verdict, "signature_mismatch",
					  "no signature matches any live secret (%d v1, %d v1a signature(s), %d secret(s))",
					  sigs.nv1, sigs.nv1a, secrets->count);
		return;
	}

	verdict->valid = true;
	CheckTolerance(verdict, timestamp, now, tolerance);
}

/*
 * The svix-* headers Svix sends, or the Standard Webhooks ones: each read as
 * the official svix library reads it, svix-* first
 */
static const char *const standard_headers[3][2] = {
	{"svix-id", "webhook-id"},
	{"svix-timestamp", "webhook-timestamp"},
	{"svix-signature", "webhook-signature"},
};

/* Reads Standard Webhooks header i (0 id, 1 timestamp, 2 signature); NULL if absent */
static const char *
StandardHeader(const Delivery *delivery, int i, int *len)
{
	const char *value = HeaderValue(delivery->headers, standard_headers[i][0], len);

	if (value == NULL)
		value = HeaderValue(delivery->headers, standard_headers[i][1], len);
	return value;
}

/* Checks a delivery's Standard Webhooks headers */
static void
VerifyStandardDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	const char *values[3];
	int			lens[3];

	for (int i = 0; i < 3; i++)
	{
		values[i] = StandardHeader(delivery, i, &lens[i]);
		if (values[i] == NULL)
		{
			VerdictReject(verdict, "missing_header", "no %s header", standard_headers[i][0]);
			return;
		}
	}
	VerifyStandard(VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
				   values[0], lens[0], values[1], lens[1], values[2], lens[2],
				   &provider->secrets, provider->tolerance, GetCurrentTimestamp(), verdict);
}

/*
 * A Standard Webhooks delivery is one event: the id is the webhook-id header
 * (stable across retries), the time the payload's "timestamp".
 */
static void
ExtractStandardEvent(const Provider *provider, const Delivery *delivery, EventList *events)
{
	Jsonb	   *payload = ParseJsonDelivery(delivery, events);
	const char *id;
	int			len;

	if (payload == NULL)
		return;
	id = StandardHeader(delivery, 0, &len);
	SingleEvent(events, pnstrdup(id, len), payload);
	events->events[0].have_event_at = JsonbTopIsoTime(payload, "timestamp",
													  &events->events[0].event_at);
}

const ProviderKind StandardKind = {
	.name = "standard",
	.uses_secrets = true,
	.verify = VerifyStandardDelivery,
	.extract = ExtractStandardEvent,
	.secret_problem = StandardSecretProblem,
};

/*
 * SQL: payments.verify_standard(body, msg_id, msg_timestamp, signature,
 * secret, tolerance, at) returns 'valid' or the rejection reason.
 */
Datum
verify_standard(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	text	   *msg_id = PG_GETARG_TEXT_PP(1);
	text	   *msg_ts = PG_GETARG_TEXT_PP(2);
	text	   *signature = PG_GETARG_TEXT_PP(3);
	text	   *secret = PG_GETARG_TEXT_PP(4);
	int32		tolerance = PG_GETARG_INT32(5);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(6);
	SecretList	secrets = {1, &secret};
	Verdict		verdict = {0};
	const char *problem;

	if (tolerance < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tolerance must not be negative")));
	problem = StandardSecretProblem(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret));
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unusable secret: %s", problem)));

	VerifyStandard(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body),
				   VARDATA_ANY(msg_id), VARSIZE_ANY_EXHDR(msg_id),
				   VARDATA_ANY(msg_ts), VARSIZE_ANY_EXHDR(msg_ts),
				   VARDATA_ANY(signature), VARSIZE_ANY_EXHDR(signature),
				   &secrets, tolerance, at, &verdict);
	PG_RETURN_TEXT_P(cstring_to_text(verdict.valid ? "valid" : verdict.reason));
}
