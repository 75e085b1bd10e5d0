/*
 * payments.h
 *		Declarations shared by the C files of the payments extension.
 */
#ifndef PAYMENTS_H
#define PAYMENTS_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* Default replay window, in seconds, for schemes that sign a timestamp */
#define PAYMENTS_DEFAULT_TOLERANCE 300

/* Longest event id we store; providers' ids are far shorter */
#define PAYMENTS_MAX_EVENT_ID 255

/* Digest algorithms for HMAC */
typedef enum HmacAlgorithm
{
	HMAC_SHA1,
	HMAC_SHA256,
	HMAC_SHA512
} HmacAlgorithm;

/* One piece of the message to MAC; the pieces are concatenated */
typedef struct MacPart
{
	const void *data;
	size_t		len;
} MacPart;

/*
 * The outcome of a signature check.  reason is a short stable code recorded
 * in payments.rejections (NULL when valid); detail says more for a person and
 * never contains secret material.
 */
typedef struct Verdict
{
	bool		valid;
	const char *reason;
	char	   *detail;
} Verdict;

/* Live secrets of a provider, newest first */
typedef struct SecretList
{
	int			count;
	text	  **secrets;
} SecretList;

/* Request headers (a jsonb object with lower-cased names) */
extern const char *HeaderValue(Jsonb *headers, const char *name, int *len);

/* hmac.c */
extern int	HmacLength(HmacAlgorithm algorithm);
extern void ComputeHmac(HmacAlgorithm algorithm, const void *key, size_t keylen,
						const MacPart *parts, int nparts, unsigned char *out);

/* encoding.c */
extern bool ParseUnixSeconds(const char *s, int len, int64 *seconds);
extern bool IsLowerHex(const char *s, int len);
extern int	DecodeBase64Strict(const char *s, int len, unsigned char **out);
extern char *EncodeBase64(const unsigned char *data, int len);
extern char *EncodeHex(const unsigned char *data, int len);

/* verdicts */
extern void VerdictReject(Verdict *verdict, const char *reason, const char *fmt,...)
			pg_attribute_printf(3, 4);
extern void CheckTolerance(Verdict *verdict, int64 signed_at, TimestampTz now, int tolerance);

/* verify_stripe.c */
extern void VerifyStripe(const char *body, int bodylen, const char *header, int headerlen,
						 const SecretList *secrets, int tolerance, TimestampTz now,
						 Verdict *verdict);

/* verify_standard.c */
extern void VerifyStandard(const char *body, int bodylen,
						   const char *msg_id, int idlen,
						   const char *msg_ts, int tslen,
						   const char *signature, int siglen,
						   const SecretList *secrets, int tolerance, TimestampTz now,
						   Verdict *verdict);
extern const char *StandardSecretProblem(const char *secret, int len);
extern int	DecodeStandardSecret(const char *secret, int len, unsigned char **key);

/* event_body.c */
extern Jsonb *ParseEventBody(const char *body, int len, char **error);
extern char *JsonbTopString(Jsonb *jb, const char *key);
extern bool JsonbTopUnixTime(Jsonb *jb, const char *key, TimestampTz *result);
extern bool JsonbTopIsoTime(Jsonb *jb, const char *key, TimestampTz *result);

#endif							/* PAYMENTS_H */
