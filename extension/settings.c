/*
 * settings.c
 *		Reading a provider's settings, a jsonb object checked by
 *		register_provider, so readers can trust its types.
 */
#include "payments.h"

#include "utils/builtins.h"

/* Looks up a top-level key of the settings (false for settings not an object) */
static bool
SettingValue(Jsonb *settings, const char *key, JsonbValue *value)
{
	return settings != NULL && JB_ROOT_IS_OBJECT(settings) && !JB_ROOT_IS_SCALAR(settings) &&
		getKeyJsonValueFromContainer(&settings->root, key, strlen(key), value) != NULL;
}

/* True if the setting is present and a JSON string */
bool
SettingIsText(Jsonb *settings, const char *key)
{
	JsonbValue	value;

	return SettingValue(settings, key, &value) && value.type == jbvString;
}

/* A string setting as a palloc'd C string, or NULL when absent or not a string */
char *
SettingText(Jsonb *settings, const char *key)
{
	JsonbValue	value;

	if (!SettingValue(settings, key, &value) || value.type != jbvString)
		return NULL;
	return pnstrdup(value.val.string.val, value.val.string.len);
}

/*
 * The tolerance setting: a whole number of seconds from 1 to 604800 (as
 * check_settings allows; 300.0 is 300), PAYMENTS_DEFAULT_TOLERANCE when
 * absent, or -1 when it is something else.
 */
int
SettingTolerance(Jsonb *settings)
{
	JsonbValue	value;
	char	   *text;
	int			len;
	int64		seconds;

	if (!SettingValue(settings, "tolerance", &value))
		return PAYMENTS_DEFAULT_TOLERANCE;
	if (value.type != jbvNumeric)
		return -1;
	text = DatumGetCString(DirectFunctionCall1(numeric_out,
											   NumericGetDatum(value.val.numeric)));
	len = strlen(text);
	if (strchr(text, '.') != NULL)
	{
		while (len > 0 && text[len - 1] == '0')
			len--;
		if (len == 0 || text[len - 1] != '.')
			return -1;
		len--;
	}
	if (!ParseUnixSeconds(text, len, &seconds) || seconds < 1 || seconds > 604800)
		return -1;
	return (int) seconds;
}

/* A boolean setting, or the default when absent or not a boolean */
bool
SettingBool(Jsonb *settings, const char *key, bool default_value)
{
	JsonbValue	value;

	if (!SettingValue(settings, key, &value) || value.type != jbvBool)
		return default_value;
	return value.val.boolean;
}

/* True if the setting is present and an array of strings */
bool
SettingIsTextArray(Jsonb *settings, const char *key)
{
	char	  **values;

	return SettingTextArray(settings, key, &values) >= 0;
}

/*
 * An array-of-strings setting as palloc'd C strings; returns the count, or -1
 * when absent or not an array of strings.
 */
int
SettingTextArray(Jsonb *settings, const char *key, char ***values)
{
	JsonbValue	value;
	JsonbIterator *it;
	JsonbValue	elem;
	JsonbIteratorToken token;
	int			count = 0;
	int			size;

	if (!SettingValue(settings, key, &value) || value.type != jbvBinary ||
		!JsonContainerIsArray(value.val.binary.data))
		return -1;
	size = JsonContainerSize(value.val.binary.data);
	*values = palloc(sizeof(char *) * (size + 1));
	it = JsonbIteratorInit(value.val.binary.data);
	while ((token = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
	{
		if (token != WJB_ELEM)
			continue;
		if (elem.type != jbvString)
			return -1;
		(*values)[count++] = pnstrdup(elem.val.string.val, elem.val.string.len);
	}
	return count;
}
