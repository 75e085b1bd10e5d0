/*
 * form.c
 *		Strict decoding of application/x-www-form-urlencoded bodies (Paynow
 *		status updates and poll replies).
 *
 * The grammar accepted is: form = field *("&" field); field = key "=" value,
 * where the key is not empty and the value runs to the next "&" (so an
 * unencoded "=" belongs to the value).  In keys and values "+" stands for a
 * space and "%" followed by two hexadecimal digits (either case) for one
 * byte; a "%" not followed by two is itself, as the Node SDK reads it
 * (PROVIDERS.md 3.2: refusing it would answer 400 to every resend of a
 * genuine update).  The rest is refused rather than guessed:
 * an empty body, an empty field ("a=1&&b=2", a trailing "&"), a field
 * without "=", decoded text that is not UTF-8 or
 * holds a NUL byte, and two keys that differ at most in ASCII case (Paynow's
 * keys are lower case, and its hash field is found case-insensitively, so
 * "hash" and "Hash" would be ambiguous).  The body is unauthenticated when
 * this runs, so the work is bounded: at most FORM_MAX_FIELDS fields, and
 * duplicates are found by sorting.
 */
#include "payments.h"

#include "mb/pg_wchar.h"
#include "utils/json.h"

/* Far more than any Paynow message has (about twenty) */
#define FORM_MAX_FIELDS 1000

/* Value of a hexadecimal digit, or -1 */
static int
HexDigitValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decodes one key or value into a palloc'd NUL-terminated string; returns
 * NULL and sets *error if it is not well formed.
 */
static char *
DecodeFormComponent(const char *s, int len, int *outlen, const char *what, int fieldno,
					char **error)
{
	char	   *out = palloc(len + 1);
	int			n = 0;

	for (int i = 0; i < len; i++)
	{
		if (s[i] == '+')
			out[n++] = ' ';
		else if (s[i] == '%' && i + 2 < len &&
				 HexDigitValue(s[i + 1]) >= 0 && HexDigitValue(s[i + 2]) >= 0)
		{
			out[n++] = (char) (HexDigitValue(s[i + 1]) * 16 + HexDigitValue(s[i + 2]));
			i += 2;
		}
		else
			out[n++] = s[i];
	}
	out[n] = '\0';

	/* pg_verify_mbstr refuses NUL bytes too */
	if (!pg_verify_mbstr(PG_UTF8, out, n, true))
	{
		*error = psprintf("the %s of field %d is not UTF-8 text once decoded", what, fieldno);
		pfree(out);
		return NULL;
	}
	*outlen = n;
	return out;
}

/* Compares two keys ignoring ASCII case, for sorting */
static int
CompareKeysCaseless(const void *a, const void *b)
{
	const FormField *fa = *(const FormField *const *) a;
	const FormField *fb = *(const FormField *const *) b;
	int			n = Min(fa->keylen, fb->keylen);
	int			c = pg_strncasecmp(fa->key, fb->key, n);

	if (c != 0)
		return c;
	return (fa->keylen > fb->keylen) - (fa->keylen < fb->keylen);
}

/*
 * Decodes a urlencoded body into its fields, in the order received.  Returns
 * false with *error set (a sentence for the sender's operator) if the body is
 * not a well-formed form by the rules above.
 */
bool
ParseUrlEncodedForm(const char *body, int len, Form *form, char **error)
{
	const char *end = body + len;
	const char *field = body;
	int			nfields = 1;
	FormField **sorted;

	form->count = 0;
	form->fields = NULL;
	if (len == 0)
	{
		*error = pstrdup("the body is empty");
		return false;
	}
	for (int i = 0; i < len; i++)
	{
		if (body[i] == '&' && ++nfields > FORM_MAX_FIELDS)
		{
			*error = psprintf("the form has more than %d fields", FORM_MAX_FIELDS);
			return false;
		}
	}

	form->fields = palloc(sizeof(FormField) * nfields);
	for (;;)
	{
		const char *amp = memchr(field, '&', end - field);
		const char *field_end = amp ? amp : end;
		const char *eq = memchr(field, '=', field_end - field);
		FormField  *f = &form->fields[form->count];
		int			fieldno = form->count + 1;

		if (field_end == field)
		{
			*error = psprintf("field %d is empty", fieldno);
			return false;
		}
		if (eq == NULL)
		{
			*error = psprintf("field %d has no \"=\"", fieldno);
			return false;
		}
		if (eq == field)
		{
			*error = psprintf("field %d has an empty key", fieldno);
			return false;
		}
		f->key = DecodeFormComponent(field, eq - field, &f->keylen, "key", fieldno, error);
		if (f->key == NULL)
			return false;
		f->value = DecodeFormComponent(eq + 1, field_end - eq - 1, &f->valuelen, "value",
									   fieldno, error);
		if (f->value == NULL)
			return false;
		form->count++;

		if (amp == NULL)
			break;
		field = amp + 1;
	}

	sorted = palloc(sizeof(FormField *) * form->count);
	for (int i = 0; i < form->count; i++)
		sorted[i] = &form->fields[i];
	qsort(sorted, form->count, sizeof(FormField *), CompareKeysCaseless);
	for (int i = 1; i < form->count; i++)
	{
		if (CompareKeysCaseless(&sorted[i - 1], &sorted[i]) == 0)
		{
			*error = psprintf("the key \"%s\" appears more than once (keys are compared ignoring case)",
							  sorted[i]->key);
			pfree(sorted);
			return false;
		}
	}
	pfree(sorted);
	return true;
}

/* Index of the field whose key equals name ignoring ASCII case, or -1 */
int
FormFieldIndex(const Form *form, const char *name)
{
	int			len = strlen(name);

	for (int i = 0; i < form->count; i++)
	{
		if (form->fields[i].keylen == len && pg_strncasecmp(form->fields[i].key, name, len) == 0)
			return i;
	}
	return -1;
}

/*
 * The form as a jsonb object of its decoded keys, in lower case (ASCII), and
 * values (all strings), or NULL with *error set if jsonb cannot hold it (a
 * value of more than jsonb's 256 MB).  Fields are found ignoring case (Paynow's
 * documents write "Hash" and "hash" alike), so the SQL reading the payload
 * finds them under lower-case keys; the keys are distinct ignoring case.
 * jsonb orders keys its own way; the raw body keeps the order received.
 */
Jsonb *
FormToJsonb(const Form *form, char **error)
{
	StringInfoData json;
	Jsonb	   *result;

	initStringInfo(&json);
	appendStringInfoChar(&json, '{');
	for (int i = 0; i < form->count; i++)
	{
		char	   *key = pstrdup(form->fields[i].key);

		for (char *c = key; *c != '\0'; c++)
			*c = pg_ascii_tolower((unsigned char) *c);
		if (i > 0)
			appendStringInfoChar(&json, ',');
		escape_json(&json, key);
		pfree(key);
		appendStringInfoChar(&json, ':');
		escape_json(&json, form->fields[i].value);
	}
	appendStringInfoChar(&json, '}');

	/* the keys are distinct */
	result = ParseEventBody(json.data, json.len, error);
	pfree(json.data);
	return result;
}
