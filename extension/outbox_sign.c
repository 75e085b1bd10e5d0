/*
 * outbox_sign.c
 *		Standard Webhooks signatures for outbound deliveries: "v1," + base64
 *		HMAC-SHA256 over "msg_id.timestamp.body", keyed with the base64-decoded
 *		part of the endpoint's whsec_ secret.
 */
#include "payments.h"

#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(sign_webhook);

#define SIGNING_SECRET_PREFIX "whsec_"

/*
 * Returns the webhook-signature value for one delivery, palloc'd; raises an
 * error for a secret that is not whsec_ followed by base64.
 */
char *
StandardWebhookSignature(const char *msg_id, int64 timestamp, const char *body, size_t bodylen,
						 const char *secret)
{
	size_t		prefixlen = strlen(SIGNING_SECRET_PREFIX);
	unsigned char *key;
	int			keylen;
	char		tsbuf[32];
	unsigned char mac[64];
	MacPart		parts[5];

	if (strncmp(secret, SIGNING_SECRET_PREFIX, prefixlen) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an endpoint secret is whsec_ followed by base64")));
	keylen = DecodeBase64Key(secret + prefixlen, strlen(secret + prefixlen), &key);
	if (keylen <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an endpoint secret is whsec_ followed by base64")));

	snprintf(tsbuf, sizeof(tsbuf), INT64_FORMAT, timestamp);
	parts[0] = (MacPart) {msg_id, strlen(msg_id)};
	parts[1] = (MacPart) {".", 1};
	parts[2] = (MacPart) {tsbuf, strlen(tsbuf)};
	parts[3] = (MacPart) {".", 1};
	parts[4] = (MacPart) {body, bodylen};
	ComputeHmac(HMAC_SHA256, key, keylen, parts, 5, mac);
	pfree(key);
	return psprintf("v1,%s", EncodeBase64(mac, HmacLength(HMAC_SHA256)));
}

/* SQL: payments.sign_webhook(msg_id, msg_timestamp, body, secret) returns text */
Datum
sign_webhook(PG_FUNCTION_ARGS)
{
	char	   *msg_id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int64		timestamp = PG_GETARG_INT64(1);
	text	   *body = PG_GETARG_TEXT_PP(2);
	char	   *secret = text_to_cstring(PG_GETARG_TEXT_PP(3));

	PG_RETURN_TEXT_P(cstring_to_text(StandardWebhookSignature(msg_id, timestamp, VARDATA_ANY(body),
															  VARSIZE_ANY_EXHDR(body), secret)));
}
