/*
 * ed25519.c
 *		Ed25519 signature verification with OpenSSL (Standard Webhooks v1a).
 */
#include "payments.h"

#include <openssl/evp.h>

/*
 * True if sig (64 bytes) is a valid Ed25519 signature of msg under the raw
 * 32-byte public key.  OpenSSL objects are freed before returning, and
 * nothing here raises an error in between.
 */
bool
VerifyEd25519(const unsigned char *public_key, const unsigned char *sig,
			  const unsigned char *msg, size_t msglen)
{
	EVP_PKEY   *pkey;
	EVP_MD_CTX *ctx;
	bool		ok = false;

	pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, public_key,
									   ED25519_PUBLIC_KEY_LEN);
	ctx = EVP_MD_CTX_new();
	if (pkey != NULL && ctx != NULL &&
		EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) == 1)
		ok = EVP_DigestVerify(ctx, sig, ED25519_SIGNATURE_LEN, msg, msglen) == 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pkey);
	return ok;
}
