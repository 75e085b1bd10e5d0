/*
 * settings.c
 *		Reading a provider's settings, a jsonb object checked by
 *		register_provider, so readers can trust its types.
 */
#include "payments.h"

/* Looks up a top-level key of the settings */
static bool
SettingValue(Jsonb *settings, const char *key, JsonbValue *value)
{
	return settings != NULL &&
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
