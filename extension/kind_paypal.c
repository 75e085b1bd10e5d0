/*
 * kind_paypal.c
 *		PayPal REST webhooks: offline verification with PayPal's certificate,
 *		and PayPal's event envelope.
 *
 * PayPal sends paypal-transmission-id, paypal-transmission-time,
 * paypal-transmission-sig (padded standard base64), paypal-cert-url and
 * paypal-auth-algo.  The signed string is
 *
 *		<transmission id>|<transmission time>|<webhook id>|<crc32>
 *
 * with the header values verbatim, the webhook id of the provider's settings
 * (the id of the webhook subscription; "WEBHOOK_ID" for the simulator), and
 * the IEEE CRC-32 (zlib) of the raw body as an unsigned decimal.  The
 * signature is RSASSA-PKCS1-v1_5 with SHA-256, checked with the public key of
 * the certificate at paypal-cert-url, which paypal_certificates.c obtains and
 * checks (allowlisted hosts only, chain, dates, name).
 *
 * Choices where the SDKs are silent or lax:
 *  - paypal-auth-algo must be SHA256withRSA exactly.  The Python SDK also
 *    maps SHA1withRSA; PayPal has signed with SHA-256 since 2015, and taking
 *    the algorithm from the request would let a forger pick the weakest, so
 *    anything else is refused (unsupported_algorithm).  The key must be RSA
 *    (an EC key would otherwise verify an ECDSA signature) of 2048 bits or
 *    more.
 *  - No replay window on paypal-transmission-time: PayPal defines none, and
 *    it retries for up to three days without saying whether a retry gets a
 *    new time, so a window could refuse genuine retries.  A replayed delivery
 *    carries the same event id and is a harmless duplicate.
 *  - But the signature covers only the CRC-32 of the body, which is linear:
 *    from the headers of one delivery anyone can make another body with the
 *    same CRC (a new event id and a padding field).  So a transmission id
 *    already stored with another body (as an event, or as a rejection of a
 *    verified body) is refused (transmission_reused).
 *    Deliveries of one transmission id wait for each other
 *    (signature_reuse.c), so that of two transactions racing with one id
 *    and two bodies, the second sees the first's event.
 *  - The transmission id and time must be 1 to 255 printable ASCII
 *    characters without '|', so that no field can shift into another.
 *
 * The delivery is verified before the body is parsed; the certificate is
 * looked at only once the headers are well formed.
 */
#include "payments.h"

#include <zlib.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "common/base64.h"
#include "fmgr.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#define PAYPAL_AUTH_ALGO "SHA256withRSA"
#define PAYPAL_MAX_FIELD 255
#define PAYPAL_MAX_SIGNATURE 1024	/* bytes: RSA up to 8192 bits */
#define PAYPAL_MIN_KEY_BITS 2048

PG_FUNCTION_INFO_V1(verify_paypal);

/* The headers of a delivery, in the order they are checked */
enum
{
	PP_TRANSMISSION_ID,
	PP_TRANSMISSION_TIME,
	PP_TRANSMISSION_SIG,
	PP_CERT_URL,
	PP_AUTH_ALGO,
	PP_NHEADERS
};

static const char *const paypal_headers[PP_NHEADERS] = {
	"paypal-transmission-id",
	"paypal-transmission-time",
	"paypal-transmission-sig",
	"paypal-cert-url",
	"paypal-auth-algo",
};

/* The signed parts of a transmission, checked, with the signature decoded */
typedef struct PayPalTransmission
{
	const char *id;
	int			idlen;
	const char *time;
	int			timelen;
	unsigned char *signature;
	int			siglen;
} PayPalTransmission;

/* True if s may stand in the signed string: 1 to 255 printable ASCII, no '|' */
static bool
IsSignedField(const char *s, int len)
{
	if (len < 1 || len > PAYPAL_MAX_FIELD)
		return false;
	for (int i = 0; i < len; i++)
	{
		if (s[i] < ' ' || s[i] > '~' || s[i] == '|')
			return false;
	}
	return true;
}

/*
 * Checks the transmission id and time and decodes the signature; on failure
 * rejects the verdict.
 */
static bool
ParseTransmission(const char *id, int idlen, const char *time, int timelen,
				  const char *sig, int siglen, PayPalTransmission *t, Verdict *verdict)
{
	if (!IsSignedField(id, idlen))
	{
		VerdictReject(verdict, "malformed_header",
					  "paypal-transmission-id must be 1 to %d printable ASCII characters without '|'",
					  PAYPAL_MAX_FIELD);
		return false;
	}
	if (!IsSignedField(time, timelen))
	{
		VerdictReject(verdict, "malformed_header",
					  "paypal-transmission-time must be 1 to %d printable ASCII characters without '|'",
					  PAYPAL_MAX_FIELD);
		return false;
	}
	t->id = id;
	t->idlen = idlen;
	t->time = time;
	t->timelen = timelen;
	t->siglen = siglen > 0 && siglen <= pg_b64_enc_len(PAYPAL_MAX_SIGNATURE) ?
		DecodeBase64Strict(sig, siglen, &t->signature) : -1;
	if (t->siglen <= 0)
	{
		VerdictReject(verdict, "malformed_header",
					  "paypal-transmission-sig is not padded base64 of 1 to %d bytes",
					  PAYPAL_MAX_SIGNATURE);
		return false;
	}
	return true;
}

/*
 * Verifies a transmission's signature over the raw body with the key of the
 * first certificate of a PEM.  No certificate checks here: those belong to
 * whoever obtained the PEM.
 */
static void
VerifyPayPalSignature(const char *body, int bodylen, const PayPalTransmission *t,
					  const char *webhook_id, const char *pem, int pemlen, Verdict *verdict)
{
	uLong		crc = crc32(0L, Z_NULL, 0);
	char	   *message;
	BIO		   *bio = NULL;
	X509	   *cert = NULL;
	EVP_PKEY   *key;
	EVP_MD_CTX *mdctx = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	const char *reason = NULL;
	const char *problem = NULL;
	int			bits = 0;
	bool		failed = false;

	crc = crc32(crc, (const Bytef *) body, (uInt) bodylen);
	message = psprintf("%.*s|%.*s|%s|%lu", t->idlen, t->id, t->timelen, t->time,
					   webhook_id, (unsigned long) crc);

	/* plain C from here to the frees: nothing may raise an error */
	ERR_clear_error();
	bio = BIO_new_mem_buf(pem, pemlen);
	if (bio != NULL)
		cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	key = cert != NULL ? X509_get0_pubkey(cert) : NULL;
	if (bio == NULL)
		failed = true;
	else if (cert == NULL)
	{
		reason = "cert_invalid";
		problem = "the certificate is not PEM";
	}
	else if (key == NULL || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA)
	{
		reason = "cert_invalid";
		problem = "the certificate's key is not RSA";
	}
	else if ((bits = EVP_PKEY_get_bits(key)) < PAYPAL_MIN_KEY_BITS)
	{
		reason = "cert_invalid";
		problem = "the certificate's RSA key is shorter than 2048 bits";
	}
	else if ((mdctx = EVP_MD_CTX_new()) == NULL ||
			 EVP_DigestVerifyInit(mdctx, &pctx, EVP_sha256(), NULL, key) != 1 ||
			 EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
		failed = true;
	else if (EVP_DigestVerify(mdctx, t->signature, t->siglen,
							  (const unsigned char *) message, strlen(message)) != 1)
	{
		reason = "signature_mismatch";
		problem = "the signature does not match the certificate's key";
	}
	EVP_MD_CTX_free(mdctx);
	X509_free(cert);
	BIO_free(bio);
	ERR_clear_error();

	pfree(message);
	if (failed)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION),
				 errmsg("could not set up RSA signature verification in OpenSSL")));
	if (reason != NULL)
	{
		VerdictReject(verdict, reason, "%s", problem);
		return;
	}
	verdict->valid = true;
}

/*
 * Has this provider stored the transmission id before with a body other
 * than this one (see the file header)?  As an event, or as a rejection whose
 * signature verified (invalid: a body that is no usable event); other
 * rejections prove nothing, since anyone can send a transmission id with a
 * body of their own.  Deliveries of one id wait for each other first
 * (signature_reuse.c); the lookup then sees what the transaction that held
 * the lock stored, and deliveries stored earlier in the same statement (a
 * batch: KeptPlanFinds).  The length condition is the indexes' (any sender's
 * header is stored, so they take only what PayPal's can be), for them to be
 * used; the id here passed IsSignedField.
 */
static bool
TransmissionSeenWithOtherBody(const Provider *provider, const char *id, int idlen, bytea *body)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, BYTEAOID};
	Datum		args[3];

	LockSignatureUse(provider->name, id, idlen);
	args[0] = CStringGetTextDatum(provider->name);
	args[1] = PointerGetDatum(cstring_to_text_with_len(id, idlen));
	args[2] = PointerGetDatum(body);
	return KeptPlanFinds(&plan,
						 "SELECT EXISTS (SELECT FROM payments.events e"
						 "  WHERE e.provider = $1 AND e.headers ->> 'paypal-transmission-id' = $2"
						 "    AND e.headers ? 'paypal-transmission-id'"
						 "    AND octet_length(e.headers ->> 'paypal-transmission-id') <= 255 AND e.body <> $3)"
						 "    OR EXISTS (SELECT FROM payments.rejections r"
						 "  WHERE r.provider = $1 AND r.headers ->> 'paypal-transmission-id' = $2"
						 "    AND r.headers ? 'paypal-transmission-id'"
						 "    AND octet_length(r.headers ->> 'paypal-transmission-id') <= 255 AND r.outcome = 'invalid'"
						 "    AND r.body_sha256 <> pg_catalog.sha256($3))",
						 3, argtypes, args);
}

/* Checks a delivery's PayPal headers and signature, fetching the certificate if need be */
static void
VerifyPayPalDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	const char *values[PP_NHEADERS];
	int			lens[PP_NHEADERS];
	PayPalTransmission t;
	char	   *webhook_id;
	char	   *pem;

	for (int i = 0; i < PP_NHEADERS; i++)
	{
		values[i] = HeaderValue(delivery->headers, paypal_headers[i], &lens[i]);
		if (values[i] == NULL)
		{
			VerdictReject(verdict, "missing_header", "no %s header", paypal_headers[i]);
			return;
		}
	}
	if ((size_t) lens[PP_AUTH_ALGO] != strlen(PAYPAL_AUTH_ALGO) ||
		memcmp(values[PP_AUTH_ALGO], PAYPAL_AUTH_ALGO, lens[PP_AUTH_ALGO]) != 0)
	{
		VerdictReject(verdict, "unsupported_algorithm",
					  "paypal-auth-algo is not " PAYPAL_AUTH_ALGO);
		return;
	}
	if (!ParseTransmission(values[PP_TRANSMISSION_ID], lens[PP_TRANSMISSION_ID],
						   values[PP_TRANSMISSION_TIME], lens[PP_TRANSMISSION_TIME],
						   values[PP_TRANSMISSION_SIG], lens[PP_TRANSMISSION_SIG],
						   &t, verdict))
		return;
	webhook_id = SettingText(provider->settings, "webhook_id");
	if (webhook_id == NULL)
	{
		VerdictReject(verdict, "no_webhook_id",
					  "provider \"%s\" has no webhook_id setting", provider->name);
		return;
	}

	pem = PayPalCertificate(provider->settings, values[PP_CERT_URL], lens[PP_CERT_URL], delivery, verdict);
	if (pem == NULL)
		return;
	VerifyPayPalSignature(VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
						  &t, webhook_id, pem, strlen(pem), verdict);
	if (verdict->valid &&
		TransmissionSeenWithOtherBody(provider, values[PP_TRANSMISSION_ID],
									  lens[PP_TRANSMISSION_ID], delivery->body))
		VerdictReject(verdict, "transmission_reused",
					  "paypal-transmission-id was stored before with another body");
}

/* The event's "resource" object, or NULL */
static Jsonb *
ResourceObject(Jsonb *payload)
{
	JsonbValue	resource;

	if (getKeyJsonValueFromContainer(&payload->root, "resource", 8, &resource) == NULL ||
		resource.type != jbvBinary || !JsonContainerIsObject(resource.val.binary.data))
		return NULL;
	return JsonbValueToJsonb(&resource);
}

/*
 * A PayPal event is one event: id "WH-...", event_type, and its time: the
 * create_time (ISO 8601), else its resource's update_time.  A time that does
 * not parse is none: the event counts as of its arrival.
 */
static void
ExtractPayPalEvent(const Provider *provider, const Delivery *delivery, EventList *events)
{
	Jsonb	   *payload = ParseJsonDelivery(delivery, events);
	Jsonb	   *resource;
	EventRecord *event;
	char	   *event_id;

	if (payload == NULL)
		return;
	event_id = RequiredEventId(payload, "id", "PayPal", events);
	if (event_id == NULL)
		return;
	SingleEvent(events, event_id, payload);
	event = &events->events[0];
	event->event_type = JsonbTopString(payload, "event_type");
	event->have_event_at = JsonbTopIsoTime(payload, "create_time", &event->event_at);
	if (!event->have_event_at && (resource = ResourceObject(payload)) != NULL)
		event->have_event_at = JsonbTopIsoTime(resource, "update_time", &event->event_at);
}

/* The type of a top-level setting, or jbvNull when absent */
static enum jbvType
SettingType(Jsonb *settings, const char *key)
{
	JsonbValue	value;

	if (getKeyJsonValueFromContainer(&settings->root, key, strlen(key), &value) == NULL)
		return jbvNull;
	return value.type;
}

/* Why settings cannot serve a PayPal provider, or NULL */
static char *
PayPalSettingsProblem(Jsonb *settings)
{
	char	   *webhook_id = SettingText(settings, "webhook_id");
	char	   *ca_file;

	if (webhook_id == NULL)
		return pstrdup("\"webhook_id\" (a string) is required: the id of the webhook in PayPal's dashboard, WEBHOOK_ID for simulator events");
	if (!IsSignedField(webhook_id, strlen(webhook_id)))
		return psprintf("\"webhook_id\" must be 1 to %d printable ASCII characters without '|'",
						PAYPAL_MAX_FIELD);
	if (SettingType(settings, "allow_simulator") != jbvNull &&
		SettingType(settings, "allow_simulator") != jbvBool)
		return pstrdup("\"allow_simulator\" must be true or false");

	/*
	 * The simulator signs with PayPal's live certificate for any URL, and
	 * CRC-32 lets a captured delivery be turned into any body under the same
	 * transmission id: whoever has a developer account could pay a donation
	 */
	if (strcmp(webhook_id, "WEBHOOK_ID") == 0 && !SettingBool(settings, "allow_simulator", false))
		return pstrdup("\"webhook_id\" WEBHOOK_ID is the simulator's, whose deliveries anyone with a PayPal developer account can have signed: "
					   "give the webhook's own id, or set \"allow_simulator\": true on a provider for tests");
	if (SettingType(settings, "cert_hosts") != jbvNull)
	{
		char	  **hosts;
		int			nhosts = SettingTextArray(settings, "cert_hosts", &hosts);

		if (nhosts < 0)
			return pstrdup("\"cert_hosts\" must be an array of strings");
		if (nhosts == 0)
			return pstrdup("\"cert_hosts\" must not be empty: no certificate could ever be used");
		for (int i = 0; i < nhosts; i++)
		{
			const char *problem = PayPalCertHostProblem(hosts[i]);

			if (problem != NULL)
				return psprintf("%s, not \"%s\"", problem, hosts[i]);
		}
	}
	if (SettingType(settings, "verify_cert_chain") != jbvNull &&
		SettingType(settings, "verify_cert_chain") != jbvBool)
		return pstrdup("\"verify_cert_chain\" must be true or false");
	if (SettingType(settings, "ca_file") != jbvNull)
	{
		ca_file = SettingText(settings, "ca_file");
		if (ca_file == NULL || ca_file[0] != '/' || strlen(ca_file) > MAXPGPATH)
			return pstrdup("\"ca_file\" must be the absolute path of a PEM file on the database server");
	}
	return NULL;
}

const ProviderKind PayPalKind = {
	.name = "paypal",
	.uses_secrets = false,		/* verified with PayPal's certificate */
	.verify = VerifyPayPalDelivery,
	.extract = ExtractPayPalEvent,
	.secret_problem = NULL,
	.settings_problem = PayPalSettingsProblem,
};

/*
 * SQL: payments.verify_paypal(body, transmission_id, transmission_time,
 * webhook_id, signature, pem) returns 'valid' or the rejection reason.  The
 * key is the first certificate's in pem; no network, and no chain, date or
 * name checks on the certificate.
 */
Datum
verify_paypal(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	text	   *id = PG_GETARG_TEXT_PP(1);
	text	   *time = PG_GETARG_TEXT_PP(2);
	char	   *webhook_id = text_to_cstring(PG_GETARG_TEXT_PP(3));
	text	   *sig = PG_GETARG_TEXT_PP(4);
	char	   *pem = text_to_cstring(PG_GETARG_TEXT_PP(5));
	PayPalTransmission t;
	Verdict		verdict = {0};

	if (ParseTransmission(VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id),
						  VARDATA_ANY(time), VARSIZE_ANY_EXHDR(time),
						  VARDATA_ANY(sig), VARSIZE_ANY_EXHDR(sig), &t, &verdict))
		VerifyPayPalSignature(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &t,
							  webhook_id, pem, strlen(pem), &verdict);
	PG_RETURN_TEXT_P(cstring_to_text(verdict.valid ? "valid" : verdict.reason));
}
