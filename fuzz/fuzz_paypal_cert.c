/*
 * fuzz_paypal_cert.c
 *		The checks on paypal-cert-url (attacker-controlled until proven
 *		otherwise) and on cert_hosts allowlist entries.
 *
 * Input: the URL, a newline, an allowlist entry.  A URL that passes must be
 * https on a port from 1 to 65535 with a host, written as it is read (the
 * lower-case host right after "https://"), and an entry that passes must
 * match the URL only when host and port are equal.  (Regression: libcurl
 * reads "https:/host/..." as "https://host/...", which passed unchecked.)
 */
#include "harness.h"

/* ParseCertUrl and HostEntryMatches are static to this file */
#include "../extension/paypal_certificates.c"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *f[2] = {"", ""};
	int			l[2] = {0, 0};
	char	   *url;
	char	   *entry;
	CertUrl    *parsed = palloc0(sizeof(CertUrl));

	fuzz_split(data, size, 2, f, l);
	url = fuzz_cstring(f[0], l[0]);
	entry = fuzz_cstring(f[1], l[1]);

	if (ParseCertUrl(url, parsed) == NULL)
	{
		FUZZ_ASSERT(strncmp(url, "https://", 8) == 0,
					"paypal cert url: \"%s\" passed without https", url);
		FUZZ_ASSERT(parsed->host[0] != '\0', "paypal cert url: \"%s\" passed without a host", url);
		FUZZ_ASSERT(parsed->port >= 1 && parsed->port <= 65535,
					"paypal cert url: \"%s\" passed with port %d", url, parsed->port);
		FUZZ_ASSERT(strncmp(url + 8, parsed->host, strlen(parsed->host)) == 0,
					"paypal cert url: \"%s\" passed, read as host \"%s\"", url, parsed->host);
		if (PayPalCertHostProblem(entry) == NULL && HostEntryMatches(entry, parsed))
		{
			const char *colon = strchr(entry, ':');
			size_t		hostlen = colon ? (size_t) (colon - entry) : strlen(entry);

			FUZZ_ASSERT(hostlen == strlen(parsed->host) &&
						pg_strncasecmp(entry, parsed->host, hostlen) == 0 &&
						(colon ? atoi(colon + 1) : 443) == parsed->port,
						"paypal cert url: \"%s\" allowed by \"%s\"", url, entry);
		}
	}
	else
		(void) PayPalCertHostProblem(entry);

	fuzz_reset();
	return 0;
}
