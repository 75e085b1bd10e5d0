/*
 * fuzz_form.c
 *		The strict application/x-www-form-urlencoded decoder (form.c), used on
 *		Paynow's unauthenticated bodies.
 *
 * Input: a body.  A body that decodes must give at least one field, keys not
 * empty, keys and values UTF-8 without NUL, no two keys equal ignoring case,
 * each key found by FormFieldIndex; and the fields percent-encoded again
 * must decode to the same fields.
 */
#include "harness.h"

#include "mb/pg_wchar.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Appends s percent-encoded (every byte but letters and digits) */
static void
AppendEncoded(StringInfo buf, const char *s, int len)
{
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
			appendStringInfoChar(buf, c);
		else
			appendStringInfo(buf, "%%%02X", c);
	}
}

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Form		form;
	Form		again;
	char	   *error = NULL;
	StringInfoData encoded;

	if (!ParseUrlEncodedForm((const char *) data, size, &form, &error))
	{
		FUZZ_ASSERT(error != NULL && error[0] != '\0', "form: refused without an error");
		fuzz_reset();
		return 0;
	}
	FUZZ_ASSERT(form.count >= 1, "form: no fields");
	initStringInfo(&encoded);
	for (int i = 0; i < form.count; i++)
	{
		const FormField *field = &form.fields[i];

		FUZZ_ASSERT(field->keylen > 0, "form: empty key");
		FUZZ_ASSERT(pg_verify_mbstr(PG_UTF8, field->key, field->keylen, true) &&
					pg_verify_mbstr(PG_UTF8, field->value, field->valuelen, true),
					"form: field %d is not UTF-8 without NUL", i + 1);
		FUZZ_ASSERT(FormFieldIndex(&form, field->key) == i, "form: key %d not found by name", i + 1);
		if (i > 0)
			appendStringInfoChar(&encoded, '&');
		AppendEncoded(&encoded, field->key, field->keylen);
		appendStringInfoChar(&encoded, '=');
		AppendEncoded(&encoded, field->value, field->valuelen);
	}

	FUZZ_ASSERT(ParseUrlEncodedForm(encoded.data, encoded.len, &again, &error),
				"form: re-encoded form refused: %s", error);
	FUZZ_ASSERT(again.count == form.count, "form: re-encoded form has another field count");
	for (int i = 0; i < form.count; i++)
	{
		FUZZ_ASSERT(again.fields[i].keylen == form.fields[i].keylen &&
					memcmp(again.fields[i].key, form.fields[i].key, form.fields[i].keylen) == 0 &&
					again.fields[i].valuelen == form.fields[i].valuelen &&
					memcmp(again.fields[i].value, form.fields[i].value, form.fields[i].valuelen) == 0,
					"form: field %d differs once re-encoded", i + 1);
	}

	fuzz_reset();
	return 0;
}
