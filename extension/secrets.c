/*
 * secrets.c
 *		Checks that a secret suits the scheme of a kind of provider, so that
 *		add_secret refuses a secret that could never verify anything.
 */
#include "payments.h"

#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(secret_problem);

/* SQL: payments.secret_problem(kind, secret) returns why it is unusable, or NULL */
Datum
secret_problem(PG_FUNCTION_ARGS)
{
	char	   *kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	text	   *secret = PG_GETARG_TEXT_PP(1);
	const char *data = VARDATA_ANY(secret);
	int			len = VARSIZE_ANY_EXHDR(secret);
	const char *problem = NULL;

	if (len == 0)
		problem = "a secret must not be empty";
	else if (strcmp(kind, "standard") == 0)
		problem = StandardSecretProblem(data, len);

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}
