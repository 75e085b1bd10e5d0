/*
 * fuzz_paynow.c
 *		Paynow's status updates: a urlencoded form whose "hash" field is the
 *		upper-case hex SHA-512 of the other values and the integration key.
 *
 * Input: a body.  Every input must give a consistent verdict and must not
 * verify against an integration key nothing is signed with (harness.h), a
 * body that is not a form must be marked invalid_body, and the same form with
 * a hash we compute over its values must verify, and not against that other
 * key.
 */
#include "harness.h"

/* VerifyPaynow and PaynowHash are static to the kind's file */
#include "../extension/kind_paynow.c"

#define VECTOR_KEY "3e9fed89-60e1-4ce5-ab6e-6b1eb2d4f977"	/* PROVIDERS.md section 3 */
#define FOREIGN_KEY "9b1f0d6e-2c4a-4e8b-a7d3-5f6c1e2b8a90"	/* nothing is hashed with it */

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	text	   *keys[1] = {fuzz_text(VECTOR_KEY)};
	SecretList	secrets = {1, keys};
	text	   *foreign_keys[1] = {fuzz_text(FOREIGN_KEY)};
	SecretList	foreign = {1, foreign_keys};
	Verdict		verdict = {0};
	Form		form;
	char	   *error;
	int			hash_index;
	char		hash[PAYNOW_HASH_HEX + 1];
	StringInfoData body;

	VerifyPaynow((const char *) data, size, &secrets, &verdict, &form);
	fuzz_check_verdict(&verdict, "paynow");
	memset(&verdict, 0, sizeof(verdict));
	VerifyPaynow((const char *) data, size, &foreign, &verdict, &form);
	fuzz_check_refused(&verdict, "paynow (the input, a foreign key)");
	if (!ParseUrlEncodedForm((const char *) data, size, &form, &error))
	{
		FUZZ_ASSERT(verdict.invalid_body, "paynow: a body that is no form is not invalid_body");
		fuzz_reset();
		return 0;
	}

	/* the raw fields but the hash, then the hash Paynow would send */
	hash_index = FormFieldIndex(&form, "hash");
	if (form.count >= 1000)		/* no room for a hash field: form.c takes 1,000 */
	{
		fuzz_reset();
		return 0;
	}
	PaynowHash(&form, hash_index, VECTOR_KEY, strlen(VECTOR_KEY), hash);
	initStringInfo(&body);
	{
		const char *p = (const char *) data;
		const char *end = p + size;
		int			i = 0;

		while (p <= end)
		{
			const char *amp = memchr(p, '&', end - p);
			const char *field_end = amp ? amp : end;

			if (i != hash_index)
			{
				appendBinaryStringInfo(&body, p, field_end - p);
				appendStringInfoChar(&body, '&');
			}
			i++;
			if (amp == NULL)
				break;
			p = amp + 1;
		}
	}
	appendStringInfo(&body, "hash=%s", hash);
	memset(&verdict, 0, sizeof(verdict));
	VerifyPaynow(body.data, body.len, &secrets, &verdict, &form);
	FUZZ_ASSERT(verdict.valid, "paynow: a form with its own hash is refused: %s", verdict.detail);
	memset(&verdict, 0, sizeof(verdict));
	VerifyPaynow(body.data, body.len, &foreign, &verdict, &form);
	fuzz_check_refused(&verdict, "paynow (hashed with the live key, a foreign key)");

	fuzz_reset();
	return 0;
}
