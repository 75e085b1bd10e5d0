/*
 * flows.c
 *		The cryptography of a WhatsApp Flows data endpoint.
 *
 * Meta encrypts every request to a Flows endpoint with a fresh AES-128 key,
 * which it wraps with the endpoint's RSA public key: RSA-OAEP with SHA-256
 * as both the OAEP hash and the MGF1 hash, empty label.  The request data is
 * AES-128-GCM under the request's 16-byte IV, no AAD, sent as
 * base64(ciphertext || 16-byte tag).  The response is encrypted the same way
 * with the same key and the request IV with every bit flipped.  The private
 * key is PEM (PKCS#1 or PKCS#8), optionally encrypted with a passphrase, as
 * Meta's key generator writes it (PKCS#1 under des-ede3-cbc).
 *
 * The SQL function payments.flows_exchange (in the install script) verifies,
 * decrypts, answers and encrypts with these primitives.  Buffers are
 * allocated before OpenSSL objects are made, and every OpenSSL object is
 * freed before an error is raised, so no error path leaks one.
 */
#include "payments.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#define FLOWS_AES_KEY_LEN 16
#define FLOWS_IV_LEN 16
#define FLOWS_TAG_LEN 16
#define FLOWS_MIN_RSA_BITS 2048
#define FLOWS_MAX_PASSPHRASE 1023

PG_FUNCTION_INFO_V1(flows_public_key);
PG_FUNCTION_INFO_V1(flows_unwrap_key);
PG_FUNCTION_INFO_V1(flows_decrypt_request);
PG_FUNCTION_INFO_V1(flows_encrypt_response);

/* Why a private key cannot be used */
typedef enum FlowsKeyProblem
{
	FLOWS_KEY_OK,
	FLOWS_KEY_UNREADABLE,
	FLOWS_KEY_NOT_RSA,
	FLOWS_KEY_TOO_SHORT
} FlowsKeyProblem;

/*
 * OpenSSL's passphrase callback: hands over the passphrase given as u, or
 * fails when there is none, so that OpenSSL never prompts on a terminal.
 */
static int
PassphraseCallback(char *buf, int size, int rwflag, void *u)
{
	const char *passphrase = u;
	int			len;

	if (passphrase == NULL)
		return -1;
	len = strlen(passphrase);
	if (len > size)
		return -1;
	memcpy(buf, passphrase, len);
	return len;
}

/*
 * Reads a PEM private key (NUL-terminated) with an optional passphrase and
 * checks that it is RSA of FLOWS_MIN_RSA_BITS or more; *pkey is set only
 * when the key is usable.  Allocates nothing in PostgreSQL.
 */
static FlowsKeyProblem
LoadFlowsKey(const char *pem, const char *passphrase, EVP_PKEY **pkey)
{
	BIO		   *bio = BIO_new_mem_buf(pem, -1);
	EVP_PKEY   *key = NULL;
	FlowsKeyProblem problem = FLOWS_KEY_OK;

	if (bio != NULL)
	{
		key = PEM_read_bio_PrivateKey(bio, NULL, PassphraseCallback, (void *) passphrase);
		BIO_free(bio);
	}
	ERR_clear_error();
	if (key == NULL)
		return FLOWS_KEY_UNREADABLE;
	if (!EVP_PKEY_is_a(key, "RSA"))
		problem = FLOWS_KEY_NOT_RSA;
	else if (EVP_PKEY_get_bits(key) < FLOWS_MIN_RSA_BITS)
		problem = FLOWS_KEY_TOO_SHORT;
	if (problem != FLOWS_KEY_OK)
		EVP_PKEY_free(key);
	else
		*pkey = key;
	return problem;
}

/*
 * Loads the private key given to a SQL function, or raises a clear error.
 * A NULL passphrase means none.
 */
static EVP_PKEY *
ReadFlowsKey(text *private_key, text *passphrase)
{
	char	   *pem = text_to_cstring(private_key);
	char	   *pass = passphrase ? text_to_cstring(passphrase) : NULL;
	EVP_PKEY   *pkey = NULL;

	if (pass != NULL && strlen(pass) > FLOWS_MAX_PASSPHRASE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the passphrase is longer than %d bytes", FLOWS_MAX_PASSPHRASE)));
	switch (LoadFlowsKey(pem, pass, &pkey))
	{
		case FLOWS_KEY_OK:
			break;
		case FLOWS_KEY_UNREADABLE:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the private key cannot be read"),
					 errdetail("It must be a PEM private key (PKCS#1 or PKCS#8); an encrypted one needs its passphrase.")));
			break;
		case FLOWS_KEY_NOT_RSA:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the private key is not an RSA key"),
					 errdetail("WhatsApp Flows wrap their AES keys with RSA-OAEP.")));
			break;
		case FLOWS_KEY_TOO_SHORT:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the RSA key has fewer than %d bits", FLOWS_MIN_RSA_BITS),
					 errdetail("Meta accepts RSA keys of 2048 bits.")));
			break;
	}
	return pkey;
}

/* Decodes base64 text into a palloc'd buffer; -1 if it is not valid base64 */
static int
DecodeBase64Text(text *t, unsigned char **out)
{
	return DecodeBase64Strict(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), out);
}

/* Checks the AES key passed to a SQL function */
static const unsigned char *
AesKeyArgument(bytea *key)
{
	if (VARSIZE_ANY_EXHDR(key) != FLOWS_AES_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the AES key must be %d bytes, not %d",
						FLOWS_AES_KEY_LEN, (int) VARSIZE_ANY_EXHDR(key))));
	return (const unsigned char *) VARDATA_ANY(key);
}

/*
 * SQL: payments.flows_public_key(private_key, passphrase) returns the public
 * key (SubjectPublicKeyInfo PEM) to upload to Meta, and raises a clear error
 * for a key that Flows cannot use.
 */
Datum
flows_public_key(PG_FUNCTION_ARGS)
{
	EVP_PKEY   *pkey;
	BIO		   *bio;
	char	   *data;
	long		len;
	text	   *volatile result = NULL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("private_key must not be null")));
	pkey = ReadFlowsKey(PG_GETARG_TEXT_PP(0), PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1));
	bio = BIO_new(BIO_s_mem());
	PG_TRY();
	{
		if (bio == NULL || PEM_write_bio_PUBKEY(bio, pkey) != 1)
			ReportOpenSSLFailure("write a public key");
		len = BIO_get_mem_data(bio, &data);
		result = cstring_to_text_with_len(data, (int) len);
	}
	PG_FINALLY();
	{
		BIO_free(bio);
		EVP_PKEY_free(pkey);
	}
	PG_END_TRY();
	PG_RETURN_TEXT_P(result);
}

/*
 * RSA-OAEP (SHA-256, MGF1 SHA-256, empty label) decryption of in into out,
 * which has room for inlen bytes.  Returns the decrypted length, -1 when the
 * data does not decrypt with this key, or -2 when OpenSSL could not be set
 * up (the OpenSSL error stays queued).  Frees nothing it did not make.
 */
static int
OaepDecrypt(EVP_PKEY *pkey, const unsigned char *in, size_t inlen, unsigned char *out)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
	size_t		outlen = inlen;
	int			result;

	if (ctx == NULL ||
		EVP_PKEY_decrypt_init(ctx) <= 0 ||
		EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
		EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) <= 0 ||
		EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) <= 0)
		result = -2;
	else if (EVP_PKEY_decrypt(ctx, out, &outlen, in, inlen) <= 0)
	{
		result = -1;
		ERR_clear_error();
	}
	else
		result = (int) outlen;
	EVP_PKEY_CTX_free(ctx);
	return result;
}

/*
 * SQL: payments.flows_unwrap_key(encrypted_aes_key, private_key, passphrase)
 * returns the 16-byte AES key of a request, or NULL when it cannot be had
 * with this private key (not base64, not the key's size, wrapped for another
 * key, or not 16 bytes): Meta's 421 case.  An unusable private key raises.
 */
Datum
flows_unwrap_key(PG_FUNCTION_ARGS)
{
	unsigned char *wrapped;
	int			wrappedlen;
	unsigned char *key;
	EVP_PKEY   *pkey;
	int			keylen;
	bytea	   *result;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	wrappedlen = DecodeBase64Text(PG_GETARG_TEXT_PP(0), &wrapped);
	if (wrappedlen <= 0)
		PG_RETURN_NULL();
	key = palloc(wrappedlen);
	pkey = ReadFlowsKey(PG_GETARG_TEXT_PP(1), PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2));
	keylen = wrappedlen == EVP_PKEY_get_size(pkey) ? OaepDecrypt(pkey, wrapped, wrappedlen, key) : -1;
	EVP_PKEY_free(pkey);
	if (keylen == -2)
		ReportOpenSSLFailure("set up RSA-OAEP decryption");
	if (keylen != FLOWS_AES_KEY_LEN)
	{
		explicit_bzero(key, wrappedlen);
		PG_RETURN_NULL();
	}
	result = palloc(VARHDRSZ + FLOWS_AES_KEY_LEN);
	SET_VARSIZE(result, VARHDRSZ + FLOWS_AES_KEY_LEN);
	memcpy(VARDATA(result), key, FLOWS_AES_KEY_LEN);
	explicit_bzero(key, wrappedlen);
	PG_RETURN_BYTEA_P(result);
}

/*
 * AES-128-GCM with a 16-byte IV and no AAD.  Encrypting, writes the
 * ciphertext to out and the tag to tag; decrypting, checks tag.  Returns 1
 * on success, 0 when decryption fails the tag check, -1 when OpenSSL could
 * not be set up (the OpenSSL error stays queued).
 */
static int
AesGcm(bool encrypt, const unsigned char *key, const unsigned char *iv,
	   const unsigned char *in, int inlen, unsigned char *out, unsigned char *tag)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int			n;
	int			result = -1;

	if (ctx != NULL &&
		EVP_CipherInit_ex(ctx, EVP_aes_128_gcm(), NULL, NULL, NULL, encrypt) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, FLOWS_IV_LEN, NULL) == 1 &&
		EVP_CipherInit_ex(ctx, NULL, NULL, key, iv, encrypt) == 1 &&
		EVP_CipherUpdate(ctx, out, &n, in, inlen) == 1 && n == inlen)
	{
		if (encrypt)
		{
			if (EVP_CipherFinal_ex(ctx, out + n, &n) == 1 && n == 0 &&
				EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, FLOWS_TAG_LEN, tag) == 1)
				result = 1;
		}
		else if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, FLOWS_TAG_LEN, tag) == 1)
		{
			result = EVP_CipherFinal_ex(ctx, out + n, &n) == 1 && n == 0 ? 1 : 0;
			if (result == 0)
				ERR_clear_error();
		}
	}
	EVP_CIPHER_CTX_free(ctx);
	return result;
}

/*
 * SQL: payments.flows_decrypt_request(aes_key, initial_vector,
 * encrypted_flow_data) returns the request's JSON text, or NULL when it
 * cannot be decrypted: the IV is not the base64 of 16 bytes, the data is
 * not base64 of at least a tag, the tag does not match, or the plaintext is
 * not valid UTF-8 (a NUL byte included): the text as Meta sent it, the
 * database being UTF8.
 */
Datum
flows_decrypt_request(PG_FUNCTION_ARGS)
{
	const unsigned char *key = AesKeyArgument(PG_GETARG_BYTEA_PP(0));
	unsigned char *iv;
	unsigned char *data;
	int			ivlen = DecodeBase64Text(PG_GETARG_TEXT_PP(1), &iv);
	int			datalen = DecodeBase64Text(PG_GETARG_TEXT_PP(2), &data);
	int			ctlen = datalen - FLOWS_TAG_LEN;
	unsigned char *plain;
	int			ok;

	if (ivlen != FLOWS_IV_LEN || ctlen < 0)
		PG_RETURN_NULL();
	plain = palloc(ctlen);
	ok = AesGcm(false, key, iv, data, ctlen, plain, data + ctlen);
	if (ok < 0)
		ReportOpenSSLFailure("set up AES-128-GCM decryption");
	if (ok == 0 || !pg_verify_mbstr(PG_UTF8, (const char *) plain, ctlen, true))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text_with_len((const char *) plain, ctlen));
}

/*
 * SQL: payments.flows_encrypt_response(aes_key, initial_vector, response)
 * returns base64(ciphertext || tag) of the response (UTF-8, the database
 * being UTF8) under the request's key and the request's IV (base64, as
 * received) with every bit flipped: the body of the endpoint's answer.
 */
Datum
flows_encrypt_response(PG_FUNCTION_ARGS)
{
	const unsigned char *key = AesKeyArgument(PG_GETARG_BYTEA_PP(0));
	text	   *response = PG_GETARG_TEXT_PP(2);
	const unsigned char *utf8 = (const unsigned char *) VARDATA_ANY(response);
	int			len = VARSIZE_ANY_EXHDR(response);
	unsigned char *iv;
	unsigned char *out;

	if (DecodeBase64Text(PG_GETARG_TEXT_PP(1), &iv) != FLOWS_IV_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("initial_vector must be the base64 of %d bytes", FLOWS_IV_LEN)));
	for (int i = 0; i < FLOWS_IV_LEN; i++)
		iv[i] = (unsigned char) ~iv[i];
	out = palloc(len + FLOWS_TAG_LEN);
	if (AesGcm(true, key, iv, utf8, len, out, out + len) != 1)
		ReportOpenSSLFailure("encrypt with AES-128-GCM");
	PG_RETURN_TEXT_P(cstring_to_text(EncodeBase64(out, len + FLOWS_TAG_LEN)));
}
