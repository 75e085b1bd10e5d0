/*
 * kinds.c
 *		The kinds of provider this version verifies, and the secret check
 *		add_secret uses so that a secret that could never verify is refused.
 */
#include "payments.h"

#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(secret_problem);
PG_FUNCTION_INFO_V1(settings_problem);

static const ProviderKind *const provider_kinds[] = {
	&StripeKind,
	&StandardKind,
	&MetaKind,
	&PaynowKind,
	&EversendKind,
	&HmacKind,
	&PayPalKind,
};

/* The kind of the given name, or NULL */
const ProviderKind *
FindProviderKind(const char *name)
{
	for (int i = 0; i < (int) lengthof(provider_kinds); i++)
	{
		if (strcmp(provider_kinds[i]->name, name) == 0)
			return provider_kinds[i];
	}
	return NULL;
}

/*
 * Whether a value is a placeholder copied from documentation: it holds an
 * ellipsis (whsec_…, EAA…) or is <words in angle brackets>.
 */
bool
IsDocumentationPlaceholder(const char *value, int len)
{
	return len > 0 && (memmem(value, len, "\xe2\x80\xa6", 3) != NULL || (value[0] == '<' && value[len - 1] == '>'));
}

/*
 * Why a secret looks mis-pasted, or NULL: no kind's secret begins or ends
 * with a space or holds a control character (a line end copied with it),
 * nor is one a placeholder copied from documentation, and such a secret
 * verifies nothing the sender signs.
 */
static const char *
PastedSecretProblem(const char *secret, int len)
{
	if (secret[0] == ' ' || secret[len - 1] == ' ')
		return "a secret must not begin or end with a space";
	if (IsDocumentationPlaceholder(secret, len))
		return "this is a placeholder from the documentation: paste the secret the provider shows";
	for (int i = 0; i < len; i++)
	{
		if ((unsigned char) secret[i] < 0x20 || secret[i] == 0x7f)
			return "a secret must not hold control characters such as a line end";
	}
	return NULL;
}

/* SQL: payments.secret_problem(kind, secret) returns why it is unusable, or NULL */
Datum
secret_problem(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	text	   *secret = PG_GETARG_TEXT_PP(1);
	const ProviderKind *kind = FindProviderKind(name);
	const char *problem = NULL;

	if (kind == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown provider kind \"%s\"", name)));
	if (VARSIZE_ANY_EXHDR(secret) == 0)
		problem = "a secret must not be empty";
	else
		problem = PastedSecretProblem(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret));
	if (problem == NULL && kind->secret_problem != NULL)
		problem = kind->secret_problem(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret));

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}

/*
 * SQL: payments.settings_problem(kind, settings) returns why the settings do
 * not suit the kind beyond the generic checks of check_settings, or NULL.  It
 * is callable directly, so it checks for an object itself.
 */
Datum
settings_problem(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *settings = PG_GETARG_JSONB_P(1);
	const ProviderKind *kind = FindProviderKind(name);
	char	   *problem = NULL;

	if (kind == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown provider kind \"%s\"", name)));
	/* the kinds' checks read the settings as an object */
	if (!JB_ROOT_IS_OBJECT(settings) || JB_ROOT_IS_SCALAR(settings))
		problem = "settings must be a JSON object";
	else if (kind->settings_problem != NULL)
		problem = kind->settings_problem(settings);

	if (problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}
