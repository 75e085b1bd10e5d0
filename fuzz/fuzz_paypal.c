/*
 * fuzz_paypal.c
 *		PayPal's transmission headers: paypal-transmission-id and -time (the
 *		fields of the signed string) and paypal-transmission-sig (base64).
 *
 * Input: id, time and signature, separated by newlines.  Every input must be
 * accepted with fields that cannot shift into one another ('|'-free
 * printable ASCII) and a decoded signature of 1 to 1024 bytes, or rejected
 * with a reason.
 */
#include "harness.h"

/* ParseTransmission is static to the kind's file */
#include "../extension/kind_paypal.c"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *f[3] = {"", "", ""};
	int			l[3] = {0, 0, 0};
	PayPalTransmission t;
	Verdict		verdict = {0};

	fuzz_split(data, size, 3, f, l);
	if (ParseTransmission(f[0], l[0], f[1], l[1], f[2], l[2], &t, &verdict))
	{
		FUZZ_ASSERT(verdict.reason == NULL, "paypal: accepted with a reason");
		FUZZ_ASSERT(memchr(t.id, '|', t.idlen) == NULL && memchr(t.time, '|', t.timelen) == NULL,
					"paypal: a field holds '|'");
		for (int i = 0; i < t.idlen; i++)
			FUZZ_ASSERT(t.id[i] >= ' ' && t.id[i] <= '~', "paypal: the id holds byte %d", (unsigned char) t.id[i]);
		for (int i = 0; i < t.timelen; i++)
			FUZZ_ASSERT(t.time[i] >= ' ' && t.time[i] <= '~', "paypal: the time holds byte %d", (unsigned char) t.time[i]);
		FUZZ_ASSERT(t.idlen >= 1 && t.timelen >= 1, "paypal: an empty field accepted");
		FUZZ_ASSERT(t.siglen >= 1 && t.siglen <= PAYPAL_MAX_SIGNATURE,
					"paypal: signature of %d bytes accepted", t.siglen);
	}
	else
		fuzz_check_verdict(&verdict, "paypal");

	fuzz_reset();
	return 0;
}
