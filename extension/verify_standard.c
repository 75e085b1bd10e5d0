/*
 * verify_standard.c
 *		Standard Webhooks (standardwebhooks.com), as sent by Svix and others.
 *
 * Headers webhook-id, webhook-timestamp and webhook-signature (svix-id,
 * svix-timestamp and svix-signature from Svix).  The signed bytes are
 * "<id>.<timestamp>.<raw body>"; the key is the base64-decoded secret after
 * an optional whsec_ prefix; the signature header is a space-separated list
 * of "<version>,<base64>" items, and a v1 item is the padded standard base64
 * of the HMAC-SHA256.  Like the official library we compare base64 strings,
 * so a non-canonical encoding of the right bytes is refused.
 */
#include "payments.h"

#include <openssl/crypto.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define STANDARD_SECRET_PREFIX "whsec_"
#define STANDARD_V1_BASE64 44	/* base64 of 32 bytes, padded */

PG_FUNCTION_INFO_V1(verify_standard);

/*
 * Decodes a Standard Webhooks secret into its key bytes; returns the key
 * length, or -1 if the secret is not (whsec_ followed by) base64.
 */
int
DecodeStandardSecret(const char *secret, int len, unsigned char **key)
{
	int			prefixlen = strlen(STANDARD_SECRET_PREFIX);

	if (len >= prefixlen && memcmp(secret, STANDARD_SECRET_PREFIX, prefixlen) == 0)
	{
		secret += prefixlen;
		len -= prefixlen;
	}
	return DecodeBase64Strict(secret, len, key);
}

/* Why a secret cannot serve as a Standard Webhooks key, or NULL */
const char *
StandardSecretProblem(const char *secret, int len)
{
	unsigned char *key;
	int			keylen = DecodeStandardSecret(secret, len, &key);

	if (keylen < 0)
		return "a Standard Webhooks secret is whsec_ followed by padded base64";
	if (keylen < 16)
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
 * Collects the v1 items of a webhook-signature header.  Items are separated
 * by spaces; each is "<version>,<signature>".  Versions other than v1 are
 * ignored; a malformed item rejects the verdict.
 */
static int
ParseStandardSignatures(const char *header, int len, const char ***v1s, Verdict *verdict)
{
	const char *end = header + len;
	const char *item = header;
	int			count = 0;

	*v1s = palloc(sizeof(char *) * (len / (STANDARD_V1_BASE64 + 4) + 1));
	while (item < end)
	{
		const char *space = memchr(item, ' ', end - item);
		const char *item_end = space ? space : end;

		if (item_end > item)
		{
			const char *comma = memchr(item, ',', item_end - item);
			const char *sig;
			int			siglen;

			if (comma == NULL || comma == item ||
				memchr(comma + 1, ',', item_end - comma - 1) != NULL)
			{
				VerdictReject(verdict, "malformed_header",
							  "webhook-signature item is not <version>,<signature>");
				return -1;
			}
			sig = comma + 1;
			siglen = item_end - sig;
			if (comma - item == 2 && item[0] == 'v' && item[1] == '1')
			{
				if (siglen != STANDARD_V1_BASE64)
				{
					VerdictReject(verdict, "malformed_header",
								  "webhook-signature v1 is not the base64 of 32 bytes");
					return -1;
				}
				(*v1s)[count++] = sig;
			}
		}
		item = item_end + 1;
	}
	return count;
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
	const char **v1s;
	int			nv1;
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
	nv1 = ParseStandardSignatures(signature, siglen, &v1s, verdict);
	if (nv1 < 0)
		return;
	if (nv1 == 0)
	{
		VerdictReject(verdict, "no_signature", "webhook-signature has no v1 signature");
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
		text	   *secret = secrets->secrets[i];
		unsigned char *key;
		int			keylen;
		unsigned char mac[32];
		char	   *expected;

		keylen = DecodeStandardSecret(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret), &key);
		if (keylen < 0)
			continue;			/* add_secret refuses these; skip one put in by hand */
		ComputeHmac(HMAC_SHA256, key, keylen, parts, 3, mac);
		expected = EncodeBase64(mac, sizeof(mac));
		for (int j = 0; j < nv1; j++)
		{
			if (CRYPTO_memcmp(expected, v1s[j], STANDARD_V1_BASE64) == 0)
				matched = true;
		}
		pfree(key);
		pfree(expected);
	}
	if (!matched)
	{
		VerdictReject(verdict, "signature_mismatch",
					  "no v1 signature matches any live secret (%d signature(s), %d secret(s))",
					  nv1, secrets->count);
		return;
	}

	verdict->valid = true;
	CheckTolerance(verdict, timestamp, now, tolerance);
}

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
	Verdict		verdict = {false, NULL, NULL};
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
