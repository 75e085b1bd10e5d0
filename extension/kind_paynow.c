/*
 * kind_paynow.c
 *		Paynow (paynow.co.zw): status updates posted to the merchant's result
 *		URL as application/x-www-form-urlencoded, with the hash inside the form.
 *
 * The hash (PROVIDERS.md section 3.2) is SHA-512 over the URL-decoded values
 * of every field except "hash", in the order received, with no separator,
 * followed by the integration key in lower case (all three SDKs lower-case
 * it), written as 128 upper-case hex digits.  We find the hash field ignoring
 * case (as the PHP SDK does; the Node SDK would hash a "Hash" field as data)
 * and compare ignoring case and in constant time (the SDKs use ===).
 *
 * Because the hash is inside the body, the body is decoded before it is
 * verified, by the strict decoder of form.c: a body it refuses is "invalid"
 * (400) without any hash being computed; a well-formed form without a hash
 * field is a rejection (401).  Paynow sends no event id: an update is
 * identified by "<paynowreference>:<status>", so a resent update is a
 * duplicate and each new status of a payment is a new event.
 *
 * The hash covers the values run together, not their names nor where one
 * ends: with one genuine update's hash anyone can move characters from one
 * field to the next ("paynowreference=1234567&amount=825.00" from
 * "...=12345678&amount=25.00"), rename a field or add an empty one, and the
 * result verifies, as a new event.  So a hash already stored with another
 * form (its decoded fields, compared as jsonb) is refused (hash_reused), and
 * so is one stored by another Paynow provider, whatever its form: one
 * integration key may serve several providers (a web shop and a chat), and
 * an update of one, sent to another, would verify there as a new payment.
 */
#include "payments.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "fmgr.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#define PAYNOW_HASH_HEX 128		/* SHA-512 as hex */

PG_FUNCTION_INFO_V1(verify_paynow);

/* The backend's SHA-512 context, kept for reuse so a failure leaks nothing */
static EVP_MD_CTX *sha512_context = NULL;

/* SHA-512 of the concatenated parts into out (64 bytes) */
static void
Sha512Parts(const MacPart *parts, int nparts, unsigned char *out)
{
	unsigned int outlen = 0;
	bool		ok;

	if (sha512_context == NULL)
	{
		sha512_context = EVP_MD_CTX_new();
		if (sha512_context == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("OpenSSL failed to create a digest context")));
	}
	ok = EVP_DigestInit_ex(sha512_context, EVP_sha512(), NULL) == 1;
	for (int i = 0; ok && i < nparts; i++)
		ok = EVP_DigestUpdate(sha512_context, parts[i].data, parts[i].len) == 1;
	ok = ok && EVP_DigestFinal_ex(sha512_context, out, &outlen) == 1;
	if (!ok || outlen != 64)
	{
		ERR_clear_error();
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("OpenSSL failed to compute a SHA-512 digest")));
	}
}

/*
 * Computes the Paynow hash of a decoded form (skipping the field at
 * hash_index) with an integration key, as PAYNOW_HASH_HEX upper-case hex
 * digits and a NUL into out.
 */
static void
PaynowHash(const Form *form, int hash_index, const char *key, int keylen, char *out)
{
	MacPart    *parts = palloc(sizeof(MacPart) * (form->count + 1));
	char	   *lower_key = palloc(keylen + 1);
	unsigned char digest[64];
	int			n = 0;

	for (int i = 0; i < form->count; i++)
	{
		if (i == hash_index)
			continue;
		parts[n].data = form->fields[i].value;
		parts[n].len = form->fields[i].valuelen;
		n++;
	}
	for (int i = 0; i < keylen; i++)
		lower_key[i] = pg_ascii_tolower((unsigned char) key[i]);
	parts[n].data = lower_key;
	parts[n].len = keylen;
	n++;

	Sha512Parts(parts, n, digest);
	hex_encode((const char *) digest, sizeof(digest), out);
	for (int i = 0; i < PAYNOW_HASH_HEX; i++)
		out[i] = pg_toupper((unsigned char) out[i]);
	out[PAYNOW_HASH_HEX] = '\0';

	explicit_bzero(lower_key, keylen);
	pfree(lower_key);
	pfree(parts);
}

/*
 * Verifies a Paynow form body against every live integration key, decoding
 * it into *form (for the caller's further checks).  A body that is not a
 * well-formed form makes an invalid_body verdict.
 */
static void
VerifyPaynow(const char *body, int bodylen, const SecretList *secrets, Verdict *verdict, Form *form)
{
	char	   *error;
	int			hash_index;
	const FormField *hash;
	char		received[PAYNOW_HASH_HEX];
	bool		matched = false;

	if (!ParseUrlEncodedForm(body, bodylen, form, &error))
	{
		VerdictReject(verdict, "invalid_form", "%s", error);
		verdict->invalid_body = true;
		return;
	}
	hash_index = FormFieldIndex(form, "hash");
	if (hash_index < 0)
	{
		VerdictReject(verdict, "missing_hash", "the form has no hash field");
		return;
	}
	hash = &form->fields[hash_index];
	if (hash->valuelen != PAYNOW_HASH_HEX)
	{
		VerdictReject(verdict, "malformed_hash",
					  "the hash field is %d characters long, not %d hexadecimal digits",
					  hash->valuelen, PAYNOW_HASH_HEX);
		return;
	}
	for (int i = 0; i < PAYNOW_HASH_HEX; i++)
	{
		char		c = hash->value[i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
		{
			VerdictReject(verdict, "malformed_hash",
						  "the hash field is not %d hexadecimal digits", PAYNOW_HASH_HEX);
			return;
		}
		received[i] = pg_toupper((unsigned char) c);
	}

	for (int i = 0; i < secrets->count && !matched; i++)
	{
		text	   *secret = secrets->secrets[i];
		char		expected[PAYNOW_HASH_HEX + 1];

		PaynowHash(form, hash_index, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret), expected);
		if (CRYPTO_memcmp(expected, received, PAYNOW_HASH_HEX) == 0)
			matched = true;
	}
	if (!matched)
	{
		VerdictReject(verdict, "signature_mismatch",
					  "the hash matches no live integration key (%d key(s))", secrets->count);
		return;
	}
	verdict->valid = true;
}

/*
 * Has a Paynow provider stored the hash before, this one with another form
 * or another one at all (see the file header)?  Deliveries of one hash wait
 * for each other first, whatever their provider (signature_reuse.c); the
 * lookup then sees what the transaction that held the lock stored
 * (KeptPlanFinds).  The length condition is the index's (which takes only
 * hashes of Paynow's length), and so is upper() in the C collation (ASCII
 * letters only, whatever the database's collation), for it to be used.
 */
static bool
HashSeenWithOtherForm(const Provider *provider, const char *hash, int hashlen, Jsonb *payload)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, JSONBOID};
	Datum		args[3];
	char	   *upper_hash = pnstrdup(hash, hashlen);

	for (int i = 0; i < hashlen; i++)
		upper_hash[i] = pg_toupper((unsigned char) upper_hash[i]);
	LockSignatureUse("paynow", upper_hash, hashlen);
	args[0] = CStringGetTextDatum(provider->name);
	args[1] = CStringGetTextDatum(upper_hash);
	args[2] = JsonbPGetDatum(payload);
	return KeptPlanFinds(&plan,
						 "SELECT EXISTS (SELECT FROM payments.events e"
						 "  JOIN payments.providers p ON p.name = e.provider"
						 "  WHERE upper((e.payload ->> 'hash') COLLATE pg_catalog.\"C\") = $2 AND e.payload ? 'hash'"
						 "    AND octet_length(e.payload ->> 'hash') = 128"
						 "    AND p.kind = 'paynow' AND (e.provider <> $1 OR e.payload <> $3))",
						 3, argtypes, args);
}

/* Checks a delivery's form hash, and that the hash was not stored with another form */
static void
VerifyPaynowDelivery(const Provider *provider, const Delivery *delivery, Verdict *verdict)
{
	Form		form;
	char	   *error;
	Jsonb	   *payload;
	const FormField *hash;

	VerifyPaynow(VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
				 &provider->secrets, verdict, &form);
	if (!verdict->valid)
		return;
	/* a form jsonb cannot hold is refused when its event is read */
	payload = FormToJsonb(&form, &error);
	if (payload == NULL)
		return;
	hash = &form.fields[FormFieldIndex(&form, "hash")];
	if (HashSeenWithOtherForm(provider, hash->value, hash->valuelen, payload))
		VerdictReject(verdict, "hash_reused",
					  "the hash was stored before with another form (its values split or named otherwise)");
}

/*
 * A status update is one event: the payload is the decoded form as a jsonb
 * object, the id "<paynowreference>:<status>", the type the status.
 */
static void
ExtractPaynowEvent(const Provider *provider, const Delivery *delivery, EventList *events)
{
	Form		form;
	char	   *error;
	Jsonb	   *payload;
	int			ref;
	int			status;
	char	   *event_id;

	if (!ParseUrlEncodedForm(VARDATA_ANY(delivery->body), VARSIZE_ANY_EXHDR(delivery->body),
							 &form, &error))
	{
		InvalidEvents(events, "invalid_form", error);	/* verify refused it already */
		return;
	}
	payload = FormToJsonb(&form, &error);
	if (payload == NULL)
	{
		InvalidEvents(events, "invalid_form", error);
		return;
	}
	ref = FormFieldIndex(&form, "paynowreference");
	status = FormFieldIndex(&form, "status");
	if (ref < 0 || status < 0 ||
		form.fields[ref].valuelen == 0 || form.fields[status].valuelen == 0)
	{
		InvalidEvents(events, "missing_event_id",
					  pstrdup("a Paynow status update needs a paynowreference and a status"));
		return;
	}
	event_id = psprintf("%s:%s", form.fields[ref].value, form.fields[status].value);
	if (strlen(event_id) > PAYMENTS_MAX_EVENT_ID)
	{
		InvalidEvents(events, "missing_event_id",
					  psprintf("paynowreference:status is longer than %d bytes",
							   PAYMENTS_MAX_EVENT_ID));
		return;
	}
	SingleEvent(events, event_id, payload);
	events->events[0].event_type = pstrdup(form.fields[status].value);
}

/*
 * Why a string cannot serve as an integration key.  Keys are GUIDs, but we do
 * not insist on that form; we refuse only what cannot be a key copied right:
 * anything but printable ASCII (which also keeps lower-casing unambiguous).
 */
static const char *
PaynowSecretProblem(const char *secret, int len)
{
	for (int i = 0; i < len; i++)
	{
		if (secret[i] <= ' ' || secret[i] > '~')
			return "a Paynow integration key is printable ASCII without spaces (a GUID such as 3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977)";
	}
	return NULL;
}

/* True if the settings have the key, whatever its value */
static bool
HasSetting(Jsonb *settings, const char *key)
{
	JsonbValue	value;

	return getKeyJsonValueFromContainer(&settings->root, key, strlen(key), &value) != NULL;
}

/* True if s starts with http:// or https:// and has something after it */
static bool
IsHttpUrl(const char *s)
{
	return (strncmp(s, "https://", 8) == 0 && s[8] != '\0') ||
		(strncmp(s, "http://", 7) == 0 && s[7] != '\0');
}

/*
 * True if a URL names a user or password (an @ before its path, query or
 * fragment).  Refused in api_base: the URLs asked with it are kept in
 * reconciliation_checks.request, which holds no credential.
 */
static bool
HasUserinfo(const char *url)
{
	const char *authority = strstr(url, "://");

	if (authority == NULL)
		return false;
	authority += 3;
	return memchr(authority, '@', strcspn(authority, "/?#")) != NULL;
}

/*
 * Why settings cannot serve a Paynow provider, or NULL.  None is needed to
 * verify status updates; these are for initiating payments.
 */
static char *
PaynowSettingsProblem(Jsonb *settings)
{
	static const char *const urls[] = {"result_url", "return_url", "api_base"};

	if (HasSetting(settings, "integration_id"))
	{
		char	   *id = SettingText(settings, "integration_id");
		bool		digits = id != NULL && id[0] != '\0' && strlen(id) <= 20;

		for (char *c = id; digits && *c; c++)
			digits = *c >= '0' && *c <= '9';
		if (!digits)
			return pstrdup("integration_id must be a string of 1 to 20 digits, the id Paynow shows for the integration (e.g. \"1201\")");
	}
	for (int i = 0; i < (int) lengthof(urls); i++)
	{
		char	   *url;

		if (!HasSetting(settings, urls[i]))
			continue;
		url = SettingText(settings, urls[i]);
		if (url == NULL || !IsHttpUrl(url))
			return psprintf("%s must be an http:// or https:// URL", urls[i]);
		if (strcmp(urls[i], "api_base") == 0 && HasUserinfo(url))
			return pstrdup("api_base must be a URL without credentials");
	}
	return NULL;
}

const ProviderKind PaynowKind = {
	.name = "paynow",
	.uses_secrets = true,
	.verify = VerifyPaynowDelivery,
	.extract = ExtractPaynowEvent,
	.secret_problem = PaynowSecretProblem,
	.settings_problem = PaynowSettingsProblem,
};

/*
 * SQL: payments.verify_paynow(body, integration_key) returns 'valid' or the
 * reason the body is refused (invalid_form for a body that is not a
 * well-formed form).
 */
Datum
verify_paynow(PG_FUNCTION_ARGS)
{
	bytea	   *body = PG_GETARG_BYTEA_PP(0);
	text	   *key = PG_GETARG_TEXT_PP(1);
	SecretList	secrets = {1, &key};
	Verdict		verdict = {0};
	Form		form;

	VerifyPaynow(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &secrets, &verdict, &form);
	PG_RETURN_TEXT_P(cstring_to_text(verdict.valid ? "valid" : verdict.reason));
}
