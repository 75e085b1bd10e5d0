/*
 * paypal_certificates.c
 *		The certificate a PayPal delivery names in paypal-cert-url: URL checks,
 *		the cache table payments.certificates, fetching (with the shared outbound
 *		sender of outbox_send.c), and validation of the PEM with OpenSSL.
 *
 * PayPal signs each delivery with the key of a certificate it publishes at a
 * URL it puts in the delivery itself, so the URL is attacker-controlled until
 * proven otherwise.  No official SDK restricts it; we do, in this order:
 *
 *	1. The URL must be https, with no userinfo, query or fragment, a host (and
 *	   port, 443 unless given) on the provider's cert_hosts allowlist (default:
 *	   PayPal's live and sandbox API hosts), and the path
 *	   /v1/notifications/certs/<letters, digits, '-' or '_'>.  Anything else is
 *	   a rejection, before the cache or the network is touched.
 *	2. The cache (payments.certificates, keyed by the URL exactly as sent) is
 *	   read; admins may pre-seed it with payments.add_certificate.
 *	3. Otherwise the certificate is fetched once: https only, no redirects,
 *	   2 s to connect, 5 s in all, at most 64 KiB, TLS peer and host verified
 *	   (against ca_file when set), interruptible by a query cancel.  A failure
 *	   that may pass (no connection, timeout, TLS failure, HTTP 408, 429 or
 *	   5xx) is transient: ingest answers 503 so that PayPal retries.  Any other
 *	   answer (404, a redirect, too large, not a certificate) is a rejection.
 *	4. Cached or fetched, the certificate is checked at every use, unless the
 *	   provider's verify_cert_chain is false: the chain up to a trusted root
 *	   (system store, or ca_file instead when set; certificates after the first
 *	   in the PEM are intermediates), validity dates (so an expired cached
 *	   certificate stops verifying), and the name of the first certificate,
 *	   messageverificationcerts.paypal.com or
 *	   messageverificationcerts.sandbox.paypal.com, without wildcards.
 *	   verify_cert_chain false skips chain, dates and name: for tests and for
 *	   air-gapped installs whose admins seed certificates they checked
 *	   themselves, never for a production endpoint reached from the Internet.
 *	   ca_file, when set, is the only trust for both the TLS connection to the
 *	   certificate host and the certificate's chain.
 *	5. A fetched certificate that passed is cached (ON CONFLICT DO NOTHING), so
 *	   the network is touched once per certificate URL.
 *
 * Resources: no ereport may happen while a curl or OpenSSL object is live, so
 * those parts are written as plain C that reports through static strings and
 * fixed buffers; every object is freed on every path before control returns
 * to code that may raise an error.  The OpenSSL error queue is left empty.
 */
#include "payments.h"

#include <time.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/timestamp.h"

#define CERT_PATH_PREFIX "/v1/notifications/certs/"
#define CERT_URL_MAX 500		/* PayPal's own limit on cert_url */
#define CERT_NAME_MAX 200		/* the CERT-... part of the path */
#define CERT_MAX_BYTES (64 * 1024)
#define CERT_CONNECT_TIMEOUT_MS 2000L
#define CERT_TOTAL_TIMEOUT_MS 5000L
#define CERT_HOST_MAX 253
#define CERT_FETCH_BURST 20		/* fetches of uncached certificates at once, */
#define CERT_FETCH_EVERY_MS 3000	/* then one per this, per sender address */
#define CERT_FETCH_ALL_BURST 60		/* and for all senders together */
#define CERT_FETCH_ALL_EVERY_MS 1000
#define CERT_FETCH_SENDERS 64		/* sender addresses counted at once */

PG_FUNCTION_INFO_V1(add_certificate);

/* Where PayPal publishes its certificates, when cert_hosts is not set */
static const char *const default_cert_hosts[] = {
	"api.paypal.com",
	"api-m.paypal.com",
	"api.sandbox.paypal.com",
	"api-m.sandbox.paypal.com",
};

/* The names PayPal's message-verification certificates carry */
static const char *const paypal_cert_names[] = {
	"messageverificationcerts.paypal.com",
	"messageverificationcerts.sandbox.paypal.com",
};

/* How a step ended; reason is a stable code, detail says more */
typedef enum CertStatus
{
	CERT_OK,
	CERT_REJECTED,
	CERT_TRANSIENT
} CertStatus;

typedef struct CertOutcome
{
	CertStatus	status;
	const char *reason;
	char		detail[256];
} CertOutcome;

/* The parts of a cert URL the allowlist looks at */
typedef struct CertUrl
{
	char		host[CERT_URL_MAX + 1];
	int			port;
} CertUrl;

static SPIPlanPtr lookup_plan = NULL;
static SPIPlanPtr cache_plan = NULL;
static SPIPlanPtr seed_plan = NULL;

/* Sets an outcome with a formatted detail (into its fixed buffer) */
static void
SetOutcome(CertOutcome *outcome, CertStatus status, const char *reason, const char *fmt,...)
			pg_attribute_printf(4, 5);

static void
SetOutcome(CertOutcome *outcome, CertStatus status, const char *reason, const char *fmt,...)
{
	va_list		args;

	outcome->status = status;
	outcome->reason = reason;
	va_start(args, fmt);
	vsnprintf(outcome->detail, sizeof(outcome->detail), fmt, args);
	va_end(args);
}

/* Copies a part of a parsed URL into buf; false if absent or too long */
static bool
GetUrlPart(CURLU *url, CURLUPart what, char *buf, size_t size)
{
	char	   *part = NULL;
	bool		ok;

	if (curl_url_get(url, what, &part, 0) != CURLUE_OK || part == NULL)
		return false;
	ok = strlcpy(buf, part, size) < size;
	curl_free(part);
	return ok;
}

/* True if the URL has the given part */
static bool
HasUrlPart(CURLU *url, CURLUPart what)
{
	char	   *part = NULL;
	bool		has = curl_url_get(url, what, &part, 0) == CURLUE_OK;

	curl_free(part);
	return has;
}

/*
 * Checks the shape of a cert URL (everything but the allowlist) and returns
 * its host and port; NULL if it is fine, else what is wrong.  Only characters
 * that need no escaping are allowed, so the URL libcurl fetches is the one
 * checked here, and only the URL written as libcurl reads it (a lower-case
 * host, no ":443", no "." or ".." segment): one certificate has one URL,
 * the key of its cache entry, so that spellings of it cannot make a fetch
 * each (PayPal sends none).  Runs no code that may raise an error while the
 * parsed URL is live.
 */
static const char *
ParseCertUrl(const char *url, CertUrl *parsed)
{
	size_t		len = strlen(url);
	CURLU	   *h;
	char		scheme[16];
	char		port[16];
	char		path[CERT_URL_MAX + 1];
	char		canonical[2 * CERT_URL_MAX + 32];
	const char *problem = NULL;

	if (len == 0 || len > CERT_URL_MAX)
		return "is empty or longer than " CppAsString2(CERT_URL_MAX) " characters";
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) url[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  (c != '\0' && strchr(":/.-_", c) != NULL)))
			return "has a character other than letters, digits and :/.-_";
	}

	h = curl_url();
	if (h == NULL)
		return "could not be parsed (out of memory)";
	if (curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK)
		problem = "is not a URL";
	else if (!GetUrlPart(h, CURLUPART_SCHEME, scheme, sizeof(scheme)) ||
			 strcmp(scheme, "https") != 0 ||
			 strncmp(url, "https://", 8) != 0)	/* libcurl also reads "https:/host" */
		problem = "is not https";
	else if (HasUrlPart(h, CURLUPART_USER) || HasUrlPart(h, CURLUPART_PASSWORD) ||
			 HasUrlPart(h, CURLUPART_OPTIONS) || HasUrlPart(h, CURLUPART_QUERY) ||
			 HasUrlPart(h, CURLUPART_FRAGMENT))
		problem = "has userinfo, a query or a fragment";
	else if (!GetUrlPart(h, CURLUPART_HOST, parsed->host, sizeof(parsed->host)))
		problem = "has no host";
	else if (!GetUrlPart(h, CURLUPART_PATH, path, sizeof(path)))
		problem = "has no path";
	else if (HasUrlPart(h, CURLUPART_PORT))
	{
		if (!GetUrlPart(h, CURLUPART_PORT, port, sizeof(port)))
			problem = "has an unusable port";
		else
			parsed->port = atoi(port);
	}
	else
		parsed->port = 443;
	curl_url_cleanup(h);
	if (problem != NULL)
		return problem;

	if (strncmp(path, CERT_PATH_PREFIX, strlen(CERT_PATH_PREFIX)) != 0)
		return "is not under " CERT_PATH_PREFIX;
	len = strlen(path + strlen(CERT_PATH_PREFIX));
	if (len == 0 || len > CERT_NAME_MAX ||
		strspn(path + strlen(CERT_PATH_PREFIX),
			   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != len)
		return "does not end in a certificate name (letters, digits, '-' and '_')";
	if (parsed->port < 1 || parsed->port > 65535)
		return "has an unusable port";
	for (char *c = parsed->host; *c != '\0'; c++)
		*c = pg_ascii_tolower((unsigned char) *c);
	if (parsed->port == 443)
		snprintf(canonical, sizeof(canonical), "https://%s%s", parsed->host, path);
	else
		snprintf(canonical, sizeof(canonical), "https://%s:%d%s", parsed->host, parsed->port, path);
	if (strcmp(canonical, url) != 0)
		return "is not written as it is read (a lower-case host, no port 443, no \".\" or \"..\" segment)";
	return NULL;
}

/*
 * Why an entry of cert_hosts is unusable, or NULL: an entry is a host name
 * ("api.paypal.com", port 443) or "host:port" for another port
 * ("localhost:8443").  IP literals in brackets are not supported.
 */
const char *
PayPalCertHostProblem(const char *entry)
{
	const char *colon = strchr(entry, ':');
	size_t		hostlen = colon ? (size_t) (colon - entry) : strlen(entry);

	if (hostlen == 0 || hostlen > CERT_HOST_MAX ||
		strspn(entry, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-") != hostlen ||
		entry[0] == '.' || entry[0] == '-')
		return "a cert_hosts entry is a host name, optionally followed by :port";
	if (colon != NULL)
	{
		const char *digits = colon + 1;
		size_t		ndigits = strlen(digits);
		int			port;

		if (ndigits < 1 || ndigits > 5 || strspn(digits, "0123456789") != ndigits)
			return "a cert_hosts entry is a host name, optionally followed by :port";
		port = atoi(digits);
		if (port < 1 || port > 65535)
			return "a cert_hosts port is 1 to 65535";
	}
	return NULL;
}

/* True if an allowlist entry names the URL's host and port */
static bool
HostEntryMatches(const char *entry, const CertUrl *url)
{
	const char *colon = strchr(entry, ':');
	size_t		hostlen = colon ? (size_t) (colon - entry) : strlen(entry);
	int			port = colon ? atoi(colon + 1) : 443;

	return strlen(url->host) == hostlen &&
		pg_strncasecmp(entry, url->host, hostlen) == 0 &&
		port == url->port;
}

/* True if the provider's cert_hosts (or the default list) allows the URL */
static bool
CertHostAllowed(Jsonb *settings, const CertUrl *url)
{
	char	  **hosts;
	int			nhosts = SettingTextArray(settings, "cert_hosts", &hosts);

	if (nhosts < 0)
	{
		for (int i = 0; i < (int) lengthof(default_cert_hosts); i++)
		{
			if (HostEntryMatches(default_cert_hosts[i], url))
				return true;
		}
		return false;
	}
	for (int i = 0; i < nhosts; i++)
	{
		if (PayPalCertHostProblem(hosts[i]) == NULL && HostEntryMatches(hosts[i], url))
			return true;
	}
	return false;
}

/* Converts an ASN1 time to a timestamptz; false if it cannot be read */
static bool
Asn1ToTimestamp(const ASN1_TIME *t, TimestampTz *result)
{
	struct tm	tm;
	time_t		seconds;

	memset(&tm, 0, sizeof(tm));
	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return false;
	seconds = timegm(&tm);
	if (seconds == (time_t) -1)
		return false;
	*result = time_t_to_timestamptz((pg_time_t) seconds);
	return true;
}

/* The text of the last OpenSSL error (or a fallback) into buf */
static const char *
OpenSslError(char *buf, size_t size, const char *fallback)
{
	unsigned long err = ERR_peek_last_error();

	if (err == 0)
		return fallback;
	ERR_error_string_n(err, buf, size);
	return buf;
}

/*
 * The trusted certificates for a ca_file (NULL: the system's), loaded once
 * per backend and kept: loading the system's bundle takes about 20 ms, far
 * more than the signature check, and every PayPal delivery's certificate is
 * checked against them, forged deliveries' too.  A change to the files
 * applies from the next connection.  Kept in plain malloc'd memory, as
 * OpenSSL's are, since they are made while OpenSSL objects are live.
 */
typedef struct TrustStore
{
	struct TrustStore *next;
	char	   *ca_file;		/* NULL: the system's default paths */
	X509_STORE *store;
} TrustStore;

static TrustStore *trust_stores = NULL;

/*
 * The kept store for ca_file, loaded on first use; NULL with errbuf set when
 * it cannot be loaded (not kept: the file may be fixed meanwhile).
 */
static X509_STORE *
TrustedStore(const char *ca_file, char *errbuf, size_t errlen)
{
	TrustStore *kept;

	for (kept = trust_stores; kept != NULL; kept = kept->next)
	{
		if (ca_file == NULL ? kept->ca_file == NULL
			: kept->ca_file != NULL && strcmp(kept->ca_file, ca_file) == 0)
			return kept->store;
	}
	kept = calloc(1, sizeof(TrustStore));
	if (kept == NULL || (ca_file != NULL && (kept->ca_file = strdup(ca_file)) == NULL) ||
		(kept->store = X509_STORE_new()) == NULL)
	{
		snprintf(errbuf, errlen, "out of memory");
		goto failed;
	}
	if (ca_file != NULL ? X509_STORE_load_file(kept->store, ca_file) != 1
		: X509_STORE_set_default_paths(kept->store) != 1)
	{
		OpenSslError(errbuf, errlen, "unknown error");
		goto failed;
	}
	/* a configured intermediate may serve as the trust anchor */
	X509_STORE_set_flags(kept->store, X509_V_FLAG_PARTIAL_CHAIN);
	kept->next = trust_stores;
	trust_stores = kept;
	return kept->store;

failed:
	if (kept != NULL)
	{
		X509_STORE_free(kept->store);
		free(kept->ca_file);
		free(kept);
	}
	return NULL;
}

/*
 * Checks a PEM holding a certificate (then, optionally, intermediates): it
 * must parse, and unless verify_chain is false chain to a trusted root, be
 * within its validity dates and be named as PayPal's message-verification
 * certificate.  Sets *not_after from the first certificate when it parses.
 * ca_file, when not NULL, replaces the system's trusted roots.  Plain C: no
 * ereport while OpenSSL objects are live.
 */
static void
CheckCertificatePem(const char *pem, size_t len, bool verify_chain, const char *ca_file,
					TimestampTz *not_after, bool *have_not_after, CertOutcome *outcome)
{
	BIO		   *bio = NULL;
	X509	   *leaf = NULL;
	X509	   *extra;
	STACK_OF(X509) *chain = NULL;
	X509_STORE *store = NULL;
	X509_STORE_CTX *ctx = NULL;
	char		errbuf[160];
	int			err;
	bool		named = false;

	*have_not_after = false;
	ERR_clear_error();
	if (len > CERT_MAX_BYTES)
	{
		SetOutcome(outcome, CERT_REJECTED, "cert_invalid",
				   "the certificate is larger than %d bytes", CERT_MAX_BYTES);
		goto done;
	}
	bio = BIO_new_mem_buf(pem, (int) len);
	chain = sk_X509_new_null();
	if (bio == NULL || chain == NULL)
	{
		SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable", "out of memory in OpenSSL");
		goto done;
	}
	leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	if (leaf == NULL)
	{
		SetOutcome(outcome, CERT_REJECTED, "cert_invalid",
				   ERR_GET_REASON(ERR_peek_last_error()) == PEM_R_NO_START_LINE ?
				   "no PEM certificate found" : "the first PEM certificate cannot be decoded");
		goto done;
	}
	while ((extra = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
	{
		if (!sk_X509_push(chain, extra))
		{
			X509_free(extra);
			SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable", "out of memory in OpenSSL");
			goto done;
		}
	}
	/* the reader stops at the end with "no start line"; anything else is damage */
	err = ERR_GET_REASON(ERR_peek_last_error());
	if (err != PEM_R_NO_START_LINE)
	{
		SetOutcome(outcome, CERT_REJECTED, "cert_invalid",
				   "a PEM certificate after the first cannot be decoded");
		goto done;
	}
	ERR_clear_error();
	*have_not_after = Asn1ToTimestamp(X509_get0_notAfter(leaf), not_after);

	if (!verify_chain)
	{
		outcome->status = CERT_OK;
		goto done;
	}

	store = TrustedStore(ca_file, errbuf, sizeof(errbuf));
	if (store == NULL)
	{
		/* our configuration, not the sender's fault: let PayPal retry */
		SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable",
				   "could not load the trusted certificates%s%s: %s",
				   ca_file ? " of ca_file " : "", ca_file ? ca_file : "", errbuf);
		goto done;
	}
	ctx = X509_STORE_CTX_new();
	if (ctx == NULL || X509_STORE_CTX_init(ctx, store, leaf, chain) != 1)
	{
		SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable", "out of memory in OpenSSL");
		goto done;
	}
	if (X509_verify_cert(ctx) != 1)
	{
		err = X509_STORE_CTX_get_error(ctx);
		if (err == X509_V_ERR_CERT_HAS_EXPIRED)
			SetOutcome(outcome, CERT_REJECTED, "cert_expired",
					   "certificate at depth %d has expired", X509_STORE_CTX_get_error_depth(ctx));
		else if (err == X509_V_ERR_CERT_NOT_YET_VALID)
			SetOutcome(outcome, CERT_REJECTED, "cert_not_yet_valid",
					   "certificate at depth %d is not valid yet", X509_STORE_CTX_get_error_depth(ctx));
		else
			SetOutcome(outcome, CERT_REJECTED, "cert_untrusted",
					   "certificate chain not trusted: %s (depth %d)",
					   X509_verify_cert_error_string(err), X509_STORE_CTX_get_error_depth(ctx));
		goto done;
	}
	for (int i = 0; i < (int) lengthof(paypal_cert_names); i++)
	{
		if (X509_check_host(leaf, paypal_cert_names[i], 0, X509_CHECK_FLAG_NO_WILDCARDS, NULL) == 1)
			named = true;
	}
	if (!named)
	{
		SetOutcome(outcome, CERT_REJECTED, "cert_name_mismatch",
				   "the certificate is not for messageverificationcerts.paypal.com or messageverificationcerts.sandbox.paypal.com");
		goto done;
	}
	outcome->status = CERT_OK;

done:
	X509_STORE_CTX_free(ctx);
	sk_X509_pop_free(chain, X509_free);
	X509_free(leaf);
	BIO_free(bio);
	ERR_clear_error();
}

/*
 * Fetches a certificate with the shared outbound sender: a GET (the URL is
 * already known to be https on an allowed host), no redirects, 2 s to
 * connect and 5 s in all, at most CERT_MAX_BYTES.  Returns the body,
 * NUL-terminated, with its length, or NULL with the outcome set: a host that
 * cannot be reached or answers 408, 429 or 5xx is transient (PayPal will
 * retry), any other answer or an oversized body a rejection.  A pending query
 * cancel is raised.
 */
static char *
FetchCertificate(const char *url, const char *ca_file, size_t *len, CertOutcome *outcome)
{
	OutboundRequest req = {0};

	req.url = url;
	req.get = true;
	req.ca_file = ca_file;
	req.connect_timeout_ms = CERT_CONNECT_TIMEOUT_MS;
	req.timeout_ms = CERT_TOTAL_TIMEOUT_MS;
	req.max_response = CERT_MAX_BYTES;
	req.response_keep = CERT_MAX_BYTES;
	req.response = palloc(CERT_MAX_BYTES + 1);

	if (!SendOutboundBatch(&req, 1))
	{
		CHECK_FOR_INTERRUPTS();
		SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable", "certificate fetch interrupted");
		return NULL;
	}
	if (req.too_large)
		SetOutcome(outcome, CERT_REJECTED, "cert_fetch_failed",
				   "the certificate is larger than %d bytes", CERT_MAX_BYTES);
	else if (req.http_status == 0)
		/* no connection, DNS, timeout, TLS: may pass */
		SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable", "certificate fetch failed: %s",
				   req.error[0] ? req.error : "no response");
	else if (req.http_status == 408 || req.http_status == 429 || req.http_status >= 500)
		SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable",
				   "the certificate host answered HTTP %ld", req.http_status);
	else if (req.http_status != 200)
		SetOutcome(outcome, CERT_REJECTED, "cert_fetch_failed",
				   "the certificate host answered HTTP %ld", req.http_status);
	else if (req.error[0] != '\0')
		/* a 200 whose body broke off (a reset, the timeout): may pass */
		SetOutcome(outcome, CERT_TRANSIENT, "cert_unavailable",
				   "the certificate's transfer broke off: %s", req.error);
	else
	{
		*len = req.response_len;
		return req.response;
	}
	return NULL;
}

/*
 * Fetches of uncached certificates a sender may cause on this connection: a
 * token bucket per sender address (an IPv6 address by its /64, as the shim's
 * rate limit counts them) and one for all senders.  Anyone can name a new
 * certificate URL on PayPal's host, each a TLS connection and an answer away
 * (inside the ingest's transaction, a shim batch's too), while PayPal's own
 * certificates change about once a year; a bucket per sender keeps one
 * sender from spending PayPal's.
 */
typedef struct FetchBucket
{
	unsigned char sender[1 + 8];	/* family, then the address's first bytes */
	double		tokens;
	TimestampTz counted_at;			/* 0: never used */
} FetchBucket;

static FetchBucket fetch_senders[CERT_FETCH_SENDERS];
static FetchBucket fetch_all;

/* Refills a bucket for the time since it was last counted; true if it holds a token */
static bool
RefillBucket(FetchBucket *bucket, double burst, int every_ms, TimestampTz now)
{
	if (bucket->counted_at == 0)
		bucket->tokens = burst;
	else
		bucket->tokens = Min(burst, bucket->tokens + (double) (now - bucket->counted_at) / (every_ms * 1000.0));
	bucket->counted_at = now;
	return bucket->tokens >= 1;
}

/*
 * Takes one fetch from the budgets of the delivery's sender (NULL source_ip:
 * one unknown sender) and of all senders; false when either is spent.  A new
 * sender takes the slot of the one counted longest ago.
 */
static bool
TakeFetchBudget(Datum source_ip, bool source_ip_null)
{
	unsigned char sender[sizeof(fetch_senders[0].sender)] = {0};
	FetchBucket *bucket = &fetch_senders[0];
	TimestampTz now = GetCurrentTimestamp();

	if (!source_ip_null)
	{
		inet	   *ip = DatumGetInetPP(source_ip);

		sender[0] = ip_family(ip);
		memcpy(sender + 1, ip_addr(ip), ip_family(ip) == PGSQL_AF_INET ? 4 : 8);
	}
	for (int i = 0; i < CERT_FETCH_SENDERS; i++)
	{
		if (fetch_senders[i].counted_at != 0 &&
			memcmp(fetch_senders[i].sender, sender, sizeof(sender)) == 0)
		{
			bucket = &fetch_senders[i];
			break;
		}
		if (fetch_senders[i].counted_at < bucket->counted_at)
			bucket = &fetch_senders[i];
	}
	if (memcmp(bucket->sender, sender, sizeof(sender)) != 0 || bucket->counted_at == 0)
	{
		memcpy(bucket->sender, sender, sizeof(sender));
		bucket->counted_at = 0;
	}
	if (!RefillBucket(bucket, CERT_FETCH_BURST, CERT_FETCH_EVERY_MS, now) ||
		!RefillBucket(&fetch_all, CERT_FETCH_ALL_BURST, CERT_FETCH_ALL_EVERY_MS, now))
		return false;
	bucket->tokens -= 1;
	fetch_all.tokens -= 1;
	return true;
}

/* The cached PEM for a URL, palloc'd in the caller's context, or NULL */
static char *
LookupCertificate(const char *url)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	char	   *pem = NULL;

	args[0] = CStringGetTextDatum(url);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(KeptPlan(&lookup_plan,
										 "SELECT pem FROM payments.certificates WHERE url = $1",
										 1, argtypes),
						 args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read payments.certificates");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			char	   *s = TextDatumGetCString(value);

			pem = SPI_palloc(strlen(s) + 1);
			strcpy(pem, s);
		}
	}
	SPI_finish();
	return pem;
}

/* Stores a certificate for a URL: a fetched one only if absent, a seeded one always */
static void
StoreCertificate(const char *url, const char *pem, bool have_not_after, TimestampTz not_after,
				 bool seeded)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		args[3];
	char		nulls[3] = "   ";
	SPIPlanPtr	plan;

	args[0] = CStringGetTextDatum(url);
	args[1] = CStringGetTextDatum(pem);
	args[2] = TimestampTzGetDatum(not_after);
	nulls[2] = have_not_after ? ' ' : 'n';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (seeded)
		plan = KeptPlan(&seed_plan,
							   "INSERT INTO payments.certificates AS c (url, pem, not_after, source)"
							   " VALUES ($1, $2, $3, 'seeded')"
							   " ON CONFLICT (url) DO UPDATE SET pem = excluded.pem,"
							   "   not_after = excluded.not_after, source = excluded.source,"
							   "   added_at = pg_catalog.now()",
							   3, argtypes);
	else
		plan = KeptPlan(&cache_plan,
							   "INSERT INTO payments.certificates (url, pem, not_after, source)"
							   " VALUES ($1, $2, $3, 'fetched') ON CONFLICT (url) DO NOTHING",
							   3, argtypes);
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write payments.certificates");
	SPI_finish();
}

/* Turns a failed outcome into the verdict */
static void
OutcomeToVerdict(const CertOutcome *outcome, Verdict *verdict)
{
	VerdictReject(verdict, outcome->reason, "%s", outcome->detail);
	verdict->transient = outcome->status == CERT_TRANSIENT;
}

/*
 * Returns the PEM of the certificate named by a delivery's paypal-cert-url,
 * checked as the provider's settings say, or NULL with the verdict rejected
 * (or marked transient when the answer may change on a retry).
 */
char *
PayPalCertificate(Jsonb *settings, const char *url, int urllen, const Delivery *delivery,
				  Verdict *verdict)
{
	char	   *urlz = pnstrdup(url, urllen);
	CertUrl		parsed;
	const char *problem;
	bool		verify_chain = SettingBool(settings, "verify_cert_chain", true);
	char	   *ca_file = SettingText(settings, "ca_file");
	CertOutcome outcome = {CERT_OK};
	char	   *body;
	size_t		bodylen = 0;
	char	   *pem;
	TimestampTz not_after = 0;
	bool		have_not_after;

	if (strlen(urlz) != (size_t) urllen)
		problem = "contains a NUL character";
	else
		problem = ParseCertUrl(urlz, &parsed);
	if (problem != NULL)
	{
		VerdictReject(verdict, "cert_url_not_allowed", "paypal-cert-url %s", problem);
		return NULL;
	}
	if (!CertHostAllowed(settings, &parsed))
	{
		VerdictReject(verdict, "cert_url_not_allowed",
					  "paypal-cert-url host %s port %d is not in cert_hosts",
					  parsed.host, parsed.port);
		return NULL;
	}

	pem = LookupCertificate(urlz);
	if (pem != NULL)
	{
		CheckCertificatePem(pem, strlen(pem), verify_chain, ca_file,
							&not_after, &have_not_after, &outcome);
		if (outcome.status != CERT_OK)
		{
			OutcomeToVerdict(&outcome, verdict);
			return NULL;
		}
		return pem;
	}

	if (!TakeFetchBudget(delivery->source_ip, delivery->source_ip_null))
	{
		VerdictReject(verdict, "cert_unavailable",
					  "too many certificates not yet cached were asked for by this sender, or by all, in a short time; trying later");
		verdict->transient = true;
		return NULL;
	}
	body = FetchCertificate(urlz, ca_file, &bodylen, &outcome);
	if (body == NULL)
	{
		OutcomeToVerdict(&outcome, verdict);
		return NULL;
	}
	/* PEM is ASCII text; anything else could not even be cached */
	for (size_t i = 0; i < bodylen; i++)
	{
		if (body[i] == '\0' || IS_HIGHBIT_SET(body[i]))
		{
			VerdictReject(verdict, "cert_invalid", "the fetched certificate is not ASCII PEM");
			return NULL;
		}
	}
	CheckCertificatePem(body, bodylen, verify_chain, ca_file,
						&not_after, &have_not_after, &outcome);
	if (outcome.status != CERT_OK)
	{
		OutcomeToVerdict(&outcome, verdict);
		return NULL;
	}
	StoreCertificate(urlz, body, have_not_after, not_after, false);
	return body;
}

/*
 * SQL: payments.add_certificate(url, pem) seeds (or replaces) the cached
 * certificate for a cert URL.  The URL must have the shape PayPal uses; the
 * host allowlist is per provider and applies when a delivery names the URL.
 * The PEM must parse; its chain, dates and name are checked at each use
 * unless the provider's verify_cert_chain is false.
 */
Datum
add_certificate(PG_FUNCTION_ARGS)
{
	char	   *url;
	char	   *pem;
	CertUrl		parsed;
	const char *problem;
	CertOutcome outcome = {CERT_OK};
	TimestampTz not_after = 0;
	bool		have_not_after;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("url and pem must not be null")));
	url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	pem = text_to_cstring(PG_GETARG_TEXT_PP(1));

	problem = ParseCertUrl(url, &parsed);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unusable certificate URL: it %s", problem),
				 errhint("PayPal certificate URLs look like https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1a5f47cb.")));
	CheckCertificatePem(pem, strlen(pem), false, NULL, &not_after, &have_not_after, &outcome);
	if (outcome.status != CERT_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unusable certificate: %s", outcome.detail)));

	StoreCertificate(url, pem, have_not_after, not_after, true);
	PG_RETURN_VOID();
}
