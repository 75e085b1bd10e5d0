/*
 * hmac.c
 *		HMAC with OpenSSL's EVP_MAC interface.
 *
 * One MAC context per digest is kept for the life of the backend and re-keyed
 * for every call, so a failure between init and final leaks nothing.
 */
#include "payments.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>

static EVP_MAC *hmac_mac = NULL;
static EVP_MAC_CTX *hmac_contexts[3] = {NULL, NULL, NULL};

static const char *const hmac_digest_names[] = {"SHA1", "SHA256", "SHA512"};
static const int hmac_lengths[] = {20, 32, 64};

/* Length in bytes of the MAC of an algorithm */
int
HmacLength(HmacAlgorithm algorithm)
{
	return hmac_lengths[algorithm];
}

/* Raises the pending OpenSSL error, if any, as a PostgreSQL error */
void
ReportOpenSSLFailure(const char *what)
{
	unsigned long code = ERR_get_error();

	ERR_clear_error();
	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("OpenSSL failed to %s", what),
			 code ? errdetail("%s", ERR_reason_error_string(code)) : 0));
}

/* Returns the backend's MAC context for a digest, creating it on first use */
static EVP_MAC_CTX *
HmacContext(HmacAlgorithm algorithm)
{
	if (hmac_contexts[algorithm] == NULL)
	{
		if (hmac_mac == NULL)
		{
			hmac_mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
			if (hmac_mac == NULL)
				ReportOpenSSLFailure("load HMAC");
		}
		hmac_contexts[algorithm] = EVP_MAC_CTX_new(hmac_mac);
		if (hmac_contexts[algorithm] == NULL)
			ReportOpenSSLFailure("create an HMAC context");
	}
	return hmac_contexts[algorithm];
}

/*
 * Computes the HMAC of the concatenated parts with the given key into out,
 * which must hold HmacLength(algorithm) bytes.
 */
void
ComputeHmac(HmacAlgorithm algorithm, const void *key, size_t keylen,
			const MacPart *parts, int nparts, unsigned char *out)
{
	EVP_MAC_CTX *ctx = HmacContext(algorithm);
	OSSL_PARAM	params[2];
	size_t		outlen = 0;
	bool		ok;

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
												 (char *) hmac_digest_names[algorithm], 0);
	params[1] = OSSL_PARAM_construct_end();

	ok = EVP_MAC_init(ctx, key, keylen, params) == 1;
	for (int i = 0; ok && i < nparts; i++)
		ok = EVP_MAC_update(ctx, parts[i].data, parts[i].len) == 1;
	ok = ok && EVP_MAC_final(ctx, out, &outlen, hmac_lengths[algorithm]) == 1;
	if (!ok || outlen != (size_t) hmac_lengths[algorithm])
		ReportOpenSSLFailure("compute an HMAC");
}
