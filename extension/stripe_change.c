/*
 * stripe_change.c
 *		What a Stripe event says about a payment (payments.stripe_change).
 *
 * Every Stripe delivery is normalized by this function, in the batch's set
 * statement and in payments.event_change.  It reads about twenty members of
 * the event; as PL/pgSQL, each was an expression evaluated on its own, and
 * the function cost about as much as parsing the event into jsonb (30 µs a
 * call, a tenth of the database's work per delivery).  It reads them here
 * with the jsonb operators' own semantics -- a member of a non-object is
 * NULL, ->> gives a string unquoted, a number or boolean as its text and a
 * container as JSON text, "->> 0" of a scalar is that scalar -- and converts
 * them with the same functions as the SQL casts (float8in, to_timestamp,
 * numeric_in, ^, /, round), in the same order, so the results and the errors
 * are those of the PL/pgSQL it replaces -- except that the event type's
 * prefixes are matched exactly, where LIKE 'payment_intent.%' also took any
 * character for the underscore, and that amounts are Stripe's: whole numbers
 * of minor units (numeric_in also took "NaN", "Infinity", fractions and
 * exponents, and a NaN refunded amount made every report's sum NaN), and a
 * charge's amount_refunded is not more than its amount.  Since, it also
 * reads which method was used (not the first of several an intent or a
 * session allowed) and keeps a Connect event's account in the metadata.
 * An event that says nothing of a payment's status is NULL before its
 * created or amounts are converted, so that neither can fail it: a type we
 * do not read, and a thin event (object "v2.core.event", Stripe's event
 * destinations), whose created is an ISO 8601 string and which carries no
 * object, only a reference to one.  The events we read still fail on a
 * created or an amount that is no number.
 */
#include "payments.h"

#include "catalog/pg_collation.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(stripe_change);

/* The columns of payments.payment_change */
enum
{
	CHANGE_PROVIDER_REF,
	CHANGE_CREATES,
	CHANGE_STATUS,
	CHANGE_STATUS_AT,
	CHANGE_REFERENCE,
	CHANGE_KIND,
	CHANGE_AMOUNT,
	CHANGE_CURRENCY,
	CHANGE_AMOUNT_REFUNDED,
	CHANGE_FEE,
	CHANGE_METHOD,
	CHANGE_DONOR_NAME,
	CHANGE_DONOR_PHONE,
	CHANGE_DONOR_EMAIL,
	CHANGE_COUNTRY,
	CHANGE_METADATA,
	CHANGE_NATTS
};

/* A member of an object container; false when obj is NULL or lacks it */
static bool
Member(JsonbContainer *obj, const char *key, JsonbValue *value)
{
	return obj != NULL &&
		getKeyJsonValueFromContainer(obj, key, strlen(key), value) != NULL;
}

/*
 * obj -> key when it is an object (what "-> key ->> ..." can read), else
 * NULL; the member itself in *value when value is not NULL
 */
static JsonbContainer *
MemberObject(JsonbContainer *obj, const char *key, JsonbValue *value)
{
	JsonbValue	member;

	if (value == NULL)
		value = &member;
	if (!Member(obj, key, value) || value->type != jbvBinary ||
		!JsonContainerIsObject(value->val.binary.data))
		return NULL;
	return value->val.binary.data;
}

/* A value as jsonb's ->> gives it: NULL for JSON null */
static text *
ValueText(const JsonbValue *value)
{
	switch (value->type)
	{
		case jbvString:
			return cstring_to_text_with_len(value->val.string.val, value->val.string.len);
		case jbvNumeric:
			return cstring_to_text(DatumGetCString(DirectFunctionCall1(numeric_out,
																	   NumericGetDatum(value->val.numeric))));
		case jbvBool:
			return cstring_to_text(value->val.boolean ? "true" : "false");
		case jbvBinary:
			{
				StringInfoData json;

				initStringInfo(&json);
				(void) JsonbToCString(&json, value->val.binary.data, value->val.binary.len);
				return cstring_to_text_with_len(json.data, json.len);
			}
		default:
			return NULL;
	}
}

/* obj ->> key */
static text *
MemberText(JsonbContainer *obj, const char *key)
{
	JsonbValue	value;

	return Member(obj, key, &value) ? ValueText(&value) : NULL;
}

/* coalesce of text values */
static text *
FirstText(text *a, text *b)
{
	return a != NULL ? a : b;
}

/* Digits a Stripe amount may have: its API takes at most 12 */
#define STRIPE_AMOUNT_MAX_DIGITS 15

/*
 * A Stripe amount (minor units) as numeric: 1 to STRIPE_AMOUNT_MAX_DIGITS
 * ASCII digits (a JSON number or a string of them), else an error naming
 * the member; NULL stays NULL.
 */
static Datum
MinorUnitsNumeric(text *value, const char *member, bool *isnull)
{
	const char *digits;
	int			len;
	bool		all_digits = true;

	*isnull = (value == NULL);
	if (value == NULL)
		return (Datum) 0;
	digits = VARDATA_ANY(value);
	len = VARSIZE_ANY_EXHDR(value);
	for (int i = 0; i < len && all_digits; i++)
		all_digits = (digits[i] >= '0' && digits[i] <= '9');
	if (len < 1 || len > STRIPE_AMOUNT_MAX_DIGITS || !all_digits)
	{
		/* quoted up to 40 bytes, never cutting a character in two */
		int			quoted = pg_mbcliplen(digits, len, 40);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("Stripe's %s must be a whole number of minor units of at most %d digits, not \"%.*s\"%s",
						member, STRIPE_AMOUNT_MAX_DIGITS, quoted, digits, quoted < len ? "..." : "")));
	}
	return DirectFunctionCall3(numeric_in, CStringGetDatum(text_to_cstring(value)),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

/*
 * payments.major_units: round(minor / 10::numeric ^ e, e), e the override or
 * the currency's exponent; NULL when either is unknown or minor is NULL
 */
static Datum
MajorUnits(Datum minor, bool minor_null, text *currency, int exponent_override,
		   bool *isnull)
{
	int			exponent = exponent_override;
	Datum		scale;

	*isnull = true;
	if (exponent < 0 && (currency == NULL || !CurrencyExponent(currency, &exponent)))
		return (Datum) 0;
	if (minor_null)
		return (Datum) 0;
	*isnull = false;
	scale = DirectFunctionCall2(numeric_power, NumericGetDatum(int64_to_numeric(10)),
								NumericGetDatum(int64_to_numeric(exponent)));
	return DirectFunctionCall2(numeric_round,
							   DirectFunctionCall2(numeric_div, minor, scale),
							   Int32GetDatum(exponent));
}

/* text equality with a C string */
static bool
TextIs(text *value, const char *what)
{
	size_t		len = strlen(what);

	return value != NULL && VARSIZE_ANY_EXHDR(value) == len &&
		memcmp(VARDATA_ANY(value), what, len) == 0;
}

/* Whether a text starts with a prefix (LIKE 'prefix%') */
static bool
TextStartsWith(text *value, const char *prefix)
{
	size_t		len = strlen(prefix);

	return value != NULL && VARSIZE_ANY_EXHDR(value) >= len &&
		memcmp(VARDATA_ANY(value), prefix, len) == 0;
}

/*
 * obj -> key ->> 0 when the member is an array of exactly one element (or a
 * scalar, which jsonb reads so), else NULL: a list of several says nothing
 * about which one was used
 */
static text *
MemberOnlyElementText(JsonbContainer *obj, const char *key)
{
	JsonbValue	value;
	JsonbValue *element;

	if (!Member(obj, key, &value))
		return NULL;
	if (value.type != jbvBinary)
		return ValueText(&value);
	if (!JsonContainerIsArray(value.val.binary.data) ||
		JsonContainerSize(value.val.binary.data) != 1)
		return NULL;
	element = getIthJsonbValueFromContainer(value.val.binary.data, 0);
	return element != NULL ? ValueText(element) : NULL;
}

/* A charge's payment_method_details.type: the method it was paid (or tried) with */
static text *
ChargeMethod(JsonbContainer *charge)
{
	return MemberText(MemberObject(charge, "payment_method_details", NULL), "type");
}

/*
 * The method a PaymentIntent was paid (or tried) with, where its payload
 * says it: an expanded latest_charge; the charges it embeds (API versions
 * before 2022-11-15: newest first, the one that succeeded or is pending,
 * else the latest attempt); else payment_method_types when it allows only
 * one.  Its payment_method_types of several methods (card, link,
 * us_bank_account, ...) is what the donor could choose from, not what was
 * used: NULL, filled in by the charge's event.
 */
static text *
IntentMethod(JsonbContainer *intent)
{
	text	   *method = ChargeMethod(MemberObject(intent, "latest_charge", NULL));
	JsonbValue	data;

	if (method != NULL)
		return method;
	if (Member(MemberObject(intent, "charges", NULL), "data", &data) &&
		data.type == jbvBinary && JsonContainerIsArray(data.val.binary.data))
	{
		uint32		n = JsonContainerSize(data.val.binary.data);
		text	   *latest = NULL;

		for (uint32 i = 0; i < n; i++)
		{
			JsonbValue *element = getIthJsonbValueFromContainer(data.val.binary.data, i);
			JsonbContainer *charge;
			text	   *status;

			if (element == NULL || element->type != jbvBinary ||
				!JsonContainerIsObject(element->val.binary.data))
				continue;
			charge = element->val.binary.data;
			method = ChargeMethod(charge);
			if (method == NULL)
				continue;
			status = MemberText(charge, "status");
			if (TextIs(status, "succeeded") || TextIs(status, "pending"))
				return method;
			if (latest == NULL)
				latest = method;
		}
		if (latest != NULL)
			return latest;
	}
	return MemberOnlyElementText(intent, "payment_method_types");
}

/*
 * The event's metadata: the object's, with the connected account the event
 * is of (its top-level "account", Stripe Connect) as "stripe_account", and
 * never the object's own "stripe_account" (a platform's note of a connected
 * account would have reconciliation ask Stripe as that account).  NULL when
 * the object has no metadata object and the event no account.
 */
static Jsonb *
EventMetadata(JsonbContainer *root, JsonbValue *metadata_value, JsonbContainer *metadata)
{
	static const char key_name[] = "stripe_account";
	JsonbValue	account;
	JsonbValue	other;
	bool		has_account = Member(root, "account", &account) && account.type != jbvNull;
	JsonbParseState *state = NULL;
	JsonbValue	key;
	JsonbValue *result;

	if (!has_account)
	{
		if (metadata == NULL)
			return NULL;
		if (!Member(metadata, key_name, &other))
			return JsonbValueToJsonb(metadata_value);
	}
	/* rebuilt without the object's stripe_account, the event's account added */
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (metadata != NULL)
	{
		JsonbIterator *it = JsonbIteratorInit(metadata);
		JsonbIteratorToken token;
		JsonbValue	v;
		bool		skip = false;

		while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (token == WJB_KEY)
				skip = v.val.string.len == sizeof(key_name) - 1 &&
					memcmp(v.val.string.val, key_name, sizeof(key_name) - 1) == 0;
			if ((token == WJB_KEY || token == WJB_VALUE) && !skip)
				(void) pushJsonbValue(&state, token, &v);
		}
	}
	if (has_account)
	{
		key.type = jbvString;
		key.val.string.val = (char *) key_name;
		key.val.string.len = sizeof(key_name) - 1;
		(void) pushJsonbValue(&state, WJB_KEY, &key);
		(void) pushJsonbValue(&state, WJB_VALUE, &account);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

/*
 * Whether a Checkout Session takes a payment itself: mode "payment" (or no
 * mode).  A subscription's session is paid by its first invoice, whose
 * payment_intent events record the money; a setup session only saves a card.
 */
static bool
CheckoutTakesPayment(JsonbContainer *session)
{
	text	   *mode = MemberText(session, "mode");

	return mode == NULL || TextIs(mode, "payment");
}

/* Raises the error of a charge's amount_captured or amount_refunded above its amount */
static void
ChargeAmountExceeded(const char *member, Datum value, Datum charged)
{
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("Stripe's %s %s is more than the charge's amount %s", member,
					DatumGetCString(DirectFunctionCall1(numeric_out, value)),
					DatumGetCString(DirectFunctionCall1(numeric_out, charged)))));
}

/*
 * Whether an event of this api_version ("2024-06-20", "2025-03-31.basil")
 * counts the part of a hold a partial capture released in the charge's
 * amount_refunded, as versions before 2025-03-31 do.  An event without one
 * (none before 2014) or with another shape is taken as it says.
 */
static bool
ReleaseCountedAsRefund(text *api_version)
{
	const char *v;

	if (api_version == NULL || VARSIZE_ANY_EXHDR(api_version) < 10)
		return false;
	v = VARDATA_ANY(api_version);
	for (int i = 0; i < 10; i++)
		if (i == 4 || i == 7 ? v[i] != '-' : !isdigit((unsigned char) v[i]))
			return false;
	return memcmp(v, "2025-03-31", 10) < 0;
}

/* The result's tuple descriptor, kept for the calls of one query */
static TupleDesc
ChangeTupleDesc(FunctionCallInfo fcinfo)
{
	TupleDesc	desc;

	if (fcinfo->flinfo->fn_extra == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE ||
			desc->natts != CHANGE_NATTS)
			elog(ERROR, "payments.stripe_change must return payments.payment_change");
		fcinfo->flinfo->fn_extra = BlessTupleDesc(CreateTupleDescCopy(desc));
		MemoryContextSwitchTo(old);
	}
	return (TupleDesc) fcinfo->flinfo->fn_extra;
}

#define SET_TEXT(col, value) \
	do { text *v_ = (value); values[col] = PointerGetDatum(v_); nulls[col] = (v_ == NULL); } while (0)

/*
 * SQL: payments.stripe_change(payload jsonb) returns payments.payment_change:
 * what a Stripe event (payment_intent.*, charge.*, charge.dispute.*,
 * checkout.session.*) says about its payment, or NULL for any other event.
 */
Datum
stripe_change(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload = PG_GETARG_JSONB_P(0);
	TupleDesc	desc = ChangeTupleDesc(fcinfo);
	Datum		values[CHANGE_NATTS];
	bool		nulls[CHANGE_NATTS];
	JsonbContainer *root = JB_ROOT_IS_OBJECT(payload) ? &payload->root : NULL;
	JsonbContainer *obj = MemberObject(MemberObject(root, "data", NULL), "object", NULL);
	JsonbValue	metadata_value;
	JsonbContainer *metadata = MemberObject(obj, "metadata", &metadata_value);
	text	   *etype = MemberText(root, "type");
	text	   *currency = MemberText(obj, "currency");
	text	   *created = MemberText(root, "created");
	int			exponent = -1;	/* none: the currency's */
	Datum		minor = (Datum) 0;
	bool		minor_null = true;
	const char *status = NULL;

	/*
	 * A thin event (object "v2.core.event": an event destination's, API
	 * 2024-09-30.acacia and later) names its object without carrying it, and
	 * its created is an ISO 8601 string: nothing here reads it, whatever its
	 * type.  Snapshot events are object "event" (or, in tests, say none).
	 */
	{
		text	   *object = MemberText(root, "object");

		if (object != NULL && !TextIs(object, "event"))
			PG_RETURN_NULL();
	}

	memset(nulls, true, sizeof(nulls));
	if (currency != NULL)
	{
		currency = DatumGetTextPP(DirectFunctionCall1Coll(upper, C_COLLATION_OID,
														  PointerGetDatum(currency)));
		/*
		 * Where Stripe's minor units differ from ISO 4217's: MGA is
		 * zero-decimal for Stripe; ISK stays two-decimal in its API (100 is
		 * one króna), though whole krónur only since 2023
		 */
		if (TextIs(currency, "MGA"))
			exponent = 0;
		else if (TextIs(currency, "ISK"))
			exponent = 2;
	}

	SET_TEXT(CHANGE_CURRENCY, currency);
	SET_TEXT(CHANGE_REFERENCE, FirstText(MemberText(metadata, "reference"),
										 FirstText(MemberText(metadata, "order_id"),
												   MemberText(obj, "client_reference_id"))));

	if (TextStartsWith(etype, "payment_intent."))
	{
		JsonbContainer *shipping = MemberObject(obj, "shipping", NULL);
		text	   *received = MemberText(obj, "amount_received");

		status = TextIs(etype, "payment_intent.processing") ? "pending" :
			TextIs(etype, "payment_intent.succeeded") ? "paid" :
			TextIs(etype, "payment_intent.payment_failed") ? "failed" :
			TextIs(etype, "payment_intent.canceled") ? "cancelled" : NULL;
		if (status == NULL)
			PG_RETURN_NULL();	/* created, requires_action, ...: no status */
		if (TextIs(received, "0"))
			received = NULL;
		SET_TEXT(CHANGE_PROVIDER_REF, MemberText(obj, "id"));
		values[CHANGE_CREATES] = BoolGetDatum(true);
		minor = MinorUnitsNumeric(FirstText(received, MemberText(obj, "amount")),
								  received != NULL ? "amount_received" : "amount", &minor_null);
		SET_TEXT(CHANGE_METHOD, IntentMethod(obj));
		SET_TEXT(CHANGE_DONOR_EMAIL, MemberText(obj, "receipt_email"));
		SET_TEXT(CHANGE_DONOR_NAME, FirstText(MemberText(shipping, "name"),
											  MemberText(metadata, "donor_name")));
		SET_TEXT(CHANGE_DONOR_PHONE, FirstText(MemberText(shipping, "phone"),
											   MemberText(metadata, "phone")));
	}
	else if (TextIs(etype, "charge.succeeded") || TextIs(etype, "charge.captured") ||
			 TextIs(etype, "charge.failed") || TextIs(etype, "charge.expired") ||
			 TextIs(etype, "charge.refunded"))
	{
		JsonbContainer *billing = MemberObject(obj, "billing_details", NULL);
		bool		refund = TextIs(etype, "charge.refunded");

		/*
		 * A charge of manual capture succeeds when authorized (captured
		 * false): pending, a hold, until charge.captured.  Once captured, a
		 * charge's money is amount_captured, less than its amount when only
		 * part of the hold was taken.  A hold released (its refund) or
		 * expired is cancelled: no money was taken, none given back.
		 */
		bool		uncaptured = TextIs(MemberText(obj, "captured"), "false");
		text	   *captured_text = uncaptured ? NULL : MemberText(obj, "amount_captured");
		bool		refunded_null;
		Datum		refunded;
		bool		isnull;
		Datum		captured = (Datum) 0;
		bool		captured_null = true;
		Datum		charged;
		bool		charged_null;

		SET_TEXT(CHANGE_PROVIDER_REF, FirstText(MemberText(obj, "payment_intent"),
												MemberText(obj, "id")));
		values[CHANGE_CREATES] = BoolGetDatum(!refund);
		charged = MinorUnitsNumeric(MemberText(obj, "amount"), "amount", &charged_null);
		if (captured_text != NULL && !TextIs(captured_text, "0"))
			captured = MinorUnitsNumeric(captured_text, "amount_captured", &captured_null);
		refunded = MinorUnitsNumeric(MemberText(obj, "amount_refunded"), "amount_refunded",
									 &refunded_null);
		/* neither more than the charge's amount, authorized */
		if (!charged_null)
		{
			if (!captured_null && DatumGetBool(DirectFunctionCall2(numeric_gt, captured, charged)))
				ChargeAmountExceeded("amount_captured", captured, charged);
			if (!refunded_null && DatumGetBool(DirectFunctionCall2(numeric_gt, refunded, charged)))
				ChargeAmountExceeded("amount_refunded", refunded, charged);
		}
		/*
		 * Before API version 2025-03-31 a partial capture counted what it
		 * released as refunded (1000 authorized, 300 captured: 700
		 * "refunded" before any refund); only the rest was given back.  An
		 * amount_refunded below the released part proves it is not counted
		 * there (an event of such a version about a charge Stripe reports
		 * the newer way): then it is all given back.
		 */
		if (!captured_null && !charged_null && !refunded_null &&
			ReleaseCountedAsRefund(MemberText(root, "api_version")))
		{
			Datum		released = DirectFunctionCall2(numeric_sub, charged, captured);

			if (DatumGetBool(DirectFunctionCall2(numeric_ge, refunded, released)))
				refunded = DirectFunctionCall2(numeric_sub, refunded, released);
		}
		/* the charge's money: what was captured, else its amount; no more given back */
		minor = captured_null ? charged : captured;
		minor_null = captured_null && charged_null;
		if (!captured_null && !refunded_null &&
			DatumGetBool(DirectFunctionCall2(numeric_gt, refunded, captured)))
			refunded = captured;
		if (refund)
		{
			/* none given back (what a partial capture released, before 2025-03-31): no news */
			if (!uncaptured && !refunded_null &&
				DatumGetBool(DirectFunctionCall2(numeric_le, refunded,
												 DirectFunctionCall1(int4_numeric, Int32GetDatum(0)))))
				status = NULL;
			else
				status = uncaptured ? "cancelled" :
					!refunded_null && !minor_null &&
					DatumGetBool(DirectFunctionCall2(numeric_ge, refunded, minor)) ?
					"refunded" : "partially_refunded";
		}
		else if (TextIs(etype, "charge.failed"))
			status = "failed";
		else if (TextIs(etype, "charge.expired"))
			status = "cancelled";
		else
			status = uncaptured ? "pending" : "paid";
		/* a hold released or expired is marked refunded: nothing taken, nothing given back */
		if (uncaptured)
			refunded_null = true;
		values[CHANGE_AMOUNT_REFUNDED] = MajorUnits(refunded, refunded_null, currency, exponent,
													&isnull);
		nulls[CHANGE_AMOUNT_REFUNDED] = isnull;
		SET_TEXT(CHANGE_METHOD, ChargeMethod(obj));
		SET_TEXT(CHANGE_DONOR_NAME, MemberText(billing, "name"));
		/* its intent's receipt_email first, as the intent's events read it */
		SET_TEXT(CHANGE_DONOR_EMAIL, FirstText(MemberText(obj, "receipt_email"),
											   MemberText(billing, "email")));
		SET_TEXT(CHANGE_DONOR_PHONE, MemberText(billing, "phone"));
		SET_TEXT(CHANGE_COUNTRY, MemberText(MemberObject(billing, "address", NULL), "country"));
	}
	else if (TextIs(etype, "charge.dispute.created") || TextIs(etype, "charge.dispute.closed"))
	{
		SET_TEXT(CHANGE_PROVIDER_REF, FirstText(MemberText(obj, "payment_intent"),
												MemberText(obj, "charge")));
		values[CHANGE_CREATES] = BoolGetDatum(false);
		/*
		 * lost: the money went back (a dispute may be created lost already, as
		 * some bank debits' are, with no closing event after it); else created:
		 * disputed; closed: won, or an inquiry closed with a warning
		 */
		status = TextIs(MemberText(obj, "status"), "lost") ? "refunded" :
			TextIs(etype, "charge.dispute.created") ? "disputed" : "paid";
	}
	else if (TextStartsWith(etype, "checkout.session.") && CheckoutTakesPayment(obj))
	{
		JsonbContainer *customer = MemberObject(obj, "customer_details", NULL);

		SET_TEXT(CHANGE_PROVIDER_REF, FirstText(MemberText(obj, "payment_intent"),
												MemberText(obj, "id")));
		values[CHANGE_CREATES] = BoolGetDatum(true);
		if (TextIs(etype, "checkout.session.completed"))
		{
			text	   *payment_status = MemberText(obj, "payment_status");

			/* no_payment_required: a total of 0 after discounts, nothing to receive */
			status = TextIs(payment_status, "paid") ? "paid" :
				TextIs(payment_status, "no_payment_required") ? NULL : "pending";
		}
		else
			status = TextIs(etype, "checkout.session.async_payment_succeeded") ? "paid" :
				TextIs(etype, "checkout.session.async_payment_failed") ? "failed" :
				TextIs(etype, "checkout.session.expired") ? "cancelled" : NULL;
		if (status == NULL)
			PG_RETURN_NULL();	/* created, no_payment_required, ...: no status */
		minor = MinorUnitsNumeric(MemberText(obj, "amount_total"), "amount_total", &minor_null);
		/* a session's list is what the donor could choose from: only one says what was used */
		SET_TEXT(CHANGE_METHOD, MemberOnlyElementText(obj, "payment_method_types"));
		SET_TEXT(CHANGE_DONOR_NAME, MemberText(customer, "name"));
		SET_TEXT(CHANGE_DONOR_EMAIL, MemberText(customer, "email"));
		SET_TEXT(CHANGE_DONOR_PHONE, MemberText(customer, "phone"));
		SET_TEXT(CHANGE_COUNTRY, MemberText(MemberObject(customer, "address", NULL), "country"));
	}

	if (status == NULL)
		PG_RETURN_NULL();		/* not an event about a payment's status */
	/* only now: an event we do not read is ignored, whatever its created */
	if (created != NULL)
	{
		Datum		seconds = DirectFunctionCall1(float8in, CStringGetDatum(text_to_cstring(created)));

		/* to_timestamp takes "Infinity" too: no day, no receipt number */
		if (isinf(DatumGetFloat8(seconds)) || isnan(DatumGetFloat8(seconds)))
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("Stripe's created must be a time in seconds, not \"%s\"", text_to_cstring(created))));
		values[CHANGE_STATUS_AT] = DirectFunctionCall1(float8_timestamptz, seconds);
		nulls[CHANGE_STATUS_AT] = false;
	}
	nulls[CHANGE_CREATES] = false;
	values[CHANGE_STATUS] = CStringGetTextDatum(status);
	nulls[CHANGE_STATUS] = false;
	{
		Jsonb	   *event_metadata = EventMetadata(root, &metadata_value, metadata);

		if (event_metadata != NULL)
		{
			values[CHANGE_METADATA] = JsonbPGetDatum(event_metadata);
			nulls[CHANGE_METADATA] = false;
		}
	}
	values[CHANGE_AMOUNT] = MajorUnits(minor, minor_null, currency, exponent,
									   &nulls[CHANGE_AMOUNT]);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
