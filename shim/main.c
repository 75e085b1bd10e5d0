/*-------------------------------------------------------------------------
 *
 * main.c
 *	  payments-shim: flags, signals, daemon start and graceful stop.
 *
 * Configuration comes from flags or environment variables (a flag wins),
 * described by one table; every value is checked before anything starts,
 * and a bad one exits with status 2.
 *
 * SIGTERM, SIGINT and SIGHUP are blocked before MHD starts its threads, so
 * only the main thread receives them, synchronously, with sigtimedwait();
 * there are no signal handlers.  The main thread wakes once a second to
 * close connections past --request-timeout and to log refused connections.
 * SIGHUP reopens the log file.  On the first SIGTERM or SIGINT we stop
 * accepting, let in-flight requests finish within --shutdown-timeout, then
 * end the batch threads (batch.c; ending closes their database
 * connections) and stop MHD, and exit 0.  A second one exits at once, with status 1.
 *
 * shim/main.c
 *
 *-------------------------------------------------------------------------
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "shim.h"

#define EXIT_USAGE			2
#define MAX_THREADS			256
#define MAX_BATCH			1024
#define MAX_BODY_LIMIT		(1024ULL * 1024 * 1024)
#define MIN_HEADER_LIMIT	1024
#define MAX_HEADER_LIMIT	(1024 * 1024)
#define MAX_CONNECTIONS		65536
#define MAX_TIMEOUT_S		3600
#define MAX_RATE			1000000
#define MAX_PEM_BYTES		(1024 * 1024)
#define MIN_CONNECTION_MEMORY (32 * 1024)
#define TICK_MS				1000
#define DRAIN_POLL_MS		100
#define ANSWER_GRACE_MS		1000

/* TLS 1.2 and 1.3 only, GnuTLS's NORMAL set otherwise */
#define TLS_PRIORITIES		"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

/* One configuration setting: its flag, environment variable and default */
typedef struct ShimOption
{
	const char *flag;
	const char *metavar;
	const char *env;
	const char *default_value;
	const char *help;
	const char *value;			/* chosen value */
	const char *source;			/* flag or variable it came from */
} ShimOption;

enum
{
	OPT_LISTEN,
	OPT_DSN,
	OPT_THREADS,
	OPT_BATCH_MAX,
	OPT_BATCH_CONCURRENCY,
	OPT_MAX_BODY,
	OPT_MAX_HEADER,
	OPT_MAX_CONNECTIONS,
	OPT_MAX_CONNECTIONS_PER_IP,
	OPT_IDLE_TIMEOUT,
	OPT_REQUEST_TIMEOUT,
	OPT_RATE,
	OPT_RATE_BURST,
	OPT_RATE_EXEMPT,
	OPT_RATE_IPV6_PREFIX,
	OPT_TRUSTED_PROXIES,
	OPT_LOG_LEVEL,
	OPT_LOG_FILE,
	OPT_SHUTDOWN_TIMEOUT,
	OPT_TLS_CERT,
	OPT_TLS_KEY,
	NUM_OPTIONS
};

static ShimOption options[NUM_OPTIONS] = {
	[OPT_LISTEN] = {"--listen", "HOST:PORT", "PAYMENTS_SHIM_LISTEN",
		"127.0.0.1:8065", "address to listen on: IPv4:PORT or [IPv6]:PORT"},
	[OPT_DSN] = {"--dsn", "CONNINFO", "PAYMENTS_SHIM_DSN",
		"", "libpq conninfo or URI; empty uses PGHOST etc."},
	[OPT_THREADS] = {"--threads", "N", "PAYMENTS_SHIM_THREADS",
		"4", "HTTP worker threads; none waits for the database (1-256)"},
	[OPT_BATCH_MAX] = {"--batch-max", "N", "PAYMENTS_SHIM_BATCH_MAX",
		"64", "deliveries stored in one transaction at most (group commit; 1-1024)"},
	[OPT_BATCH_CONCURRENCY] = {"--batch-concurrency", "N",
		"PAYMENTS_SHIM_BATCH_CONCURRENCY",
		"2", "batch threads, each with one database connection: transactions at once, and the calls of /ready, Meta's handshake and POST /flows (1-256)"},
	[OPT_MAX_BODY] = {"--max-body", "BYTES", "PAYMENTS_SHIM_MAX_BODY",
		"1048576", "largest request body; more is 413 (1-1073741824)"},
	[OPT_MAX_HEADER] = {"--max-header", "BYTES", "PAYMENTS_SHIM_MAX_HEADER",
		"16384", "largest request line plus headers; more is 431 (1024-1048576)"},
	[OPT_MAX_CONNECTIONS] = {"--max-connections", "N",
		"PAYMENTS_SHIM_MAX_CONNECTIONS",
		"512", "open connections at most; more are refused; half at most may wait for the database, more get 503 (threads-65536)"},
	[OPT_MAX_CONNECTIONS_PER_IP] = {"--max-connections-per-ip", "N",
		"PAYMENTS_SHIM_MAX_CONNECTIONS_PER_IP",
		"64", "open connections from one peer address; 0: no limit"},
	[OPT_IDLE_TIMEOUT] = {"--idle-timeout", "SECONDS",
		"PAYMENTS_SHIM_IDLE_TIMEOUT",
		"10", "close a connection after this long with nothing received (1-3600)"},
	[OPT_REQUEST_TIMEOUT] = {"--request-timeout", "SECONDS",
		"PAYMENTS_SHIM_REQUEST_TIMEOUT",
		"30", "close a connection whose request takes longer in total (1-3600)"},
	[OPT_RATE] = {"--rate", "PER_SECOND", "PAYMENTS_SHIM_RATE",
		"50", "webhook requests per second per client (IPv4 address, IPv6 prefix); more is 429; 0: off"},
	[OPT_RATE_BURST] = {"--rate-burst", "N", "PAYMENTS_SHIM_RATE_BURST",
		"100", "requests a client may send at once above --rate (1-1000000)"},
	[OPT_RATE_EXEMPT] = {"--rate-exempt", "CIDR,...", "PAYMENTS_SHIM_RATE_EXEMPT",
		"127.0.0.0/8,::1", "client addresses the rate limit does not apply to"},
	[OPT_RATE_IPV6_PREFIX] = {"--rate-ipv6-prefix", "BITS",
		"PAYMENTS_SHIM_RATE_IPV6_PREFIX",
		"64", "IPv6 clients share a rate limit per prefix of this length (one site's /64; 32-128)"},
	[OPT_TRUSTED_PROXIES] = {"--trusted-proxies", "CIDR,...",
		"PAYMENTS_SHIM_TRUSTED_PROXIES",
		"", "proxies whose X-Forwarded-For gives the client address"},
	[OPT_LOG_LEVEL] = {"--log-level", "LEVEL", "PAYMENTS_SHIM_LOG_LEVEL",
		"info", "error, warning, info (one line per request) or debug"},
	[OPT_LOG_FILE] = {"--log-file", "PATH", "PAYMENTS_SHIM_LOG_FILE",
		"", "append log lines to this file (SIGHUP reopens it); empty: stderr"},
	[OPT_SHUTDOWN_TIMEOUT] = {"--shutdown-timeout", "SECONDS",
		"PAYMENTS_SHIM_SHUTDOWN_TIMEOUT",
		"30", "on SIGTERM, how long requests in flight may take (0-3600)"},
	[OPT_TLS_CERT] = {"--tls-cert", "FILE", "PAYMENTS_SHIM_TLS_CERT",
		"", "PEM certificate chain: serve HTTPS (with --tls-key)"},
	[OPT_TLS_KEY] = {"--tls-key", "FILE", "PAYMENTS_SHIM_TLS_KEY",
		"", "PEM private key of --tls-cert"},
};

ShimConfig	shim_config;

static void die_usage(const char *fmt,...)
			__attribute__((noreturn, format(printf, 1, 2)));

/*
 * Print the flag table.
 */
static void
usage(FILE *out)
{
	int			i;

	fprintf(out,
			"Usage: payments-shim [OPTION]...\n"
			"HTTP front end that passes webhooks to payments.ingest() in PostgreSQL.\n"
			"Routes: POST and GET /webhooks/{provider}, POST /flows/{provider}, GET /health, /ready, /metrics.\n\n");
	fprintf(out, "%-32s %-37s %-15s %s\n",
			"Option", "Environment", "Default", "Meaning");
	for (i = 0; i < NUM_OPTIONS; i++)
	{
		char		flag[64];

		snprintf(flag, sizeof(flag), "%s %s",
				 options[i].flag, options[i].metavar);
		fprintf(out, "%-32s %-37s %-15s %s\n", flag, options[i].env,
				options[i].default_value[0] ? options[i].default_value : "\"\"",
				options[i].help);
	}
	fprintf(out, "%-32s %-37s %-15s %s\n",
			"--help", "", "", "show this help and exit");
	fprintf(out, "%-32s %-37s %-15s %s\n",
			"--version", "", "", "show the version and exit");
	fprintf(out, "\nA flag wins over its environment variable. "
			"Flags also accept --flag=VALUE.\n"
			"Signals: SIGTERM/SIGINT drain and exit (a second one exits at once); "
			"SIGHUP reopens --log-file.\n");
}

/*
 * Report a bad command line or setting and exit with status 2.
 */
static void
die_usage(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "payments-shim: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry \"payments-shim --help\" for more information.\n");
	exit(EXIT_USAGE);
}

/*
 * Report an unknown argument and exit with status 2.  Only its leading
 * option name ("-" or "--" and letters, digits, "-") is shown, never what
 * follows: a mistyped "--dsn-file=postgresql://user:password@..." or a
 * DSN given without its flag must not reach a terminal or a journal.
 */
static void
die_unknown_argument(const char *arg)
{
	size_t		len = strspn(arg, "-");

	if (len == 0 || len > 2)
		die_usage("unexpected argument (not shown: it may be a value; options start with --)");
	len += strspn(arg + len, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-");
	if (len > 64)
		len = 64;
	if (arg[len] == '\0')
		die_usage("unknown argument \"%s\"", arg);
	die_usage("unknown argument \"%.*s\" (%s is not shown)", (int) len, arg,
			  arg[len] == '=' ? "its value" : "the rest");
}

/*
 * Fill options[].value from argv, then the environment, then defaults.
 */
static void
collect_options(int argc, char **argv)
{
	int			i;
	int			j;

	for (i = 1; i < argc; i++)
	{
		const char *arg = argv[i];
		bool		found = false;

		if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
		{
			usage(stdout);
			exit(EXIT_SUCCESS);
		}
		if (strcmp(arg, "--version") == 0)
		{
			printf("payments-shim %s (libmicrohttpd %s, libpq %d)\n",
				   SHIM_VERSION, MHD_get_version(), PQlibVersion());
			exit(EXIT_SUCCESS);
		}
		for (j = 0; j < NUM_OPTIONS && !found; j++)
		{
			size_t		len = strlen(options[j].flag);

			if (strncmp(arg, options[j].flag, len) != 0)
				continue;
			if (arg[len] == '=')
				options[j].value = arg + len + 1;
			else if (arg[len] == '\0')
			{
				if (i + 1 >= argc)
					die_usage("option %s needs a value", options[j].flag);
				options[j].value = argv[++i];
			}
			else
				continue;
			options[j].source = options[j].flag;
			found = true;
		}
		if (!found)
			die_unknown_argument(arg);
	}

	for (j = 0; j < NUM_OPTIONS; j++)
	{
		if (options[j].value == NULL)
		{
			options[j].value = getenv(options[j].env);
			options[j].source = options[j].env;
		}
	}
}

/*
 * The value of an option as given, or its default.
 */
static const char *
option_value(const ShimOption *opt)
{
	return opt->value ? opt->value : opt->default_value;
}

/*
 * Parse an option as a decimal integer in [min, max].
 */
static unsigned long long
parse_number(const ShimOption *opt, unsigned long long min,
			 unsigned long long max)
{
	const char *s = option_value(opt);
	char	   *end;
	unsigned long long n;

	errno = 0;
	n = strtoull(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno == ERANGE ||
		n < min || n > max)
		die_usage("invalid value \"%s\" for %s: expected an integer from %llu to %llu",
				  s, opt->source, min, max);
	return n;
}

/*
 * Parse IPv4:PORT or [IPv6]:PORT into a socket address.
 */
static void
parse_listen(const ShimOption *opt, ShimConfig *config)
{
	struct sockaddr_storage *addr = &config->addr;
	const char *s = option_value(&options[OPT_LISTEN]);
	const char *host_end;
	const char *port_text;
	char		host[INET6_ADDRSTRLEN];
	size_t		host_len;
	char	   *end;
	unsigned long port;
	bool		ipv6 = (s[0] == '[');

	if (ipv6)
	{
		host_end = strchr(s, ']');
		if (host_end == NULL || host_end[1] != ':')
			goto bad;
		s++;
		port_text = host_end + 2;
	}
	else
	{
		host_end = strrchr(s, ':');
		if (host_end == NULL)
			goto bad;
		port_text = host_end + 1;
	}
	host_len = (size_t) (host_end - s);
	if (host_len == 0 || host_len >= sizeof(host))
		goto bad;
	memcpy(host, s, host_len);
	host[host_len] = '\0';

	errno = 0;
	port = strtoul(port_text, &end, 10);
	if (port_text[0] < '0' || port_text[0] > '9' || *end != '\0' ||
		errno == ERANGE || port < 1 || port > 65535)
		goto bad;
	config->port = (uint16_t) port;

	memset(addr, 0, sizeof(*addr));
	if (ipv6)
	{
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) addr;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(config->port);
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			goto bad;
	}
	else
	{
		struct sockaddr_in *sin = (struct sockaddr_in *) addr;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(config->port);
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			goto bad;
	}
	return;

bad:
	die_usage("invalid value \"%s\" for %s: expected IPv4:PORT or [IPv6]:PORT "
			  "with a numeric address and a port from 1 to 65535",
			  option_value(opt), opt->source);
}

/*
 * Parse a comma-separated list of address ranges (empty: none).
 */
static void
parse_ranges(const ShimOption *opt, Cidr **ranges, size_t *count)
{
	const char *s = option_value(opt);
	size_t		n = 1;

	*ranges = NULL;
	*count = 0;
	if (s[0] == '\0')
		return;
	for (const char *p = s; *p != '\0'; p++)
		n += (*p == ',');
	*ranges = calloc(n, sizeof(Cidr));
	if (*ranges == NULL)
		die_usage("out of memory");

	while (*s != '\0')
	{
		size_t		len = strcspn(s, ",");
		size_t		start = 0;
		size_t		end = len;

		while (start < end && s[start] == ' ')
			start++;
		while (end > start && s[end - 1] == ' ')
			end--;
		if (!cidr_parse(s + start, end - start, &(*ranges)[*count]))
			die_usage("invalid value \"%.*s\" in %s: expected an IP address "
					  "or a range like 10.0.0.0/8 or fd00::/8",
					  (int) len, s, opt->source);
		(*count)++;
		s += len;
		if (*s == ',')
			s++;
	}
}

/*
 * Parse a log level name.
 */
static LogLevel
parse_log_level(const ShimOption *opt)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	const char *s = option_value(opt);

	for (int i = 0; i < 4; i++)
	{
		if (strcmp(s, names[i]) == 0)
			return (LogLevel) i;
	}
	die_usage("invalid value \"%s\" for %s: expected error, warning, info "
			  "or debug", s, opt->source);
}

/*
 * Read a PEM file for TLS into memory (exits with status 2 if it cannot be
 * read or does not look like PEM).
 */
static char *
read_pem(const ShimOption *opt)
{
	const char *path = option_value(opt);
	int			fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char	   *data;
	size_t		got = 0;

	if (fd < 0)
		die_usage("cannot open %s file \"%s\": %s", opt->flag, path,
				  strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
		st.st_size > MAX_PEM_BYTES)
		die_usage("%s file \"%s\" is not a regular file of 1 byte to 1 MiB",
				  opt->flag, path);
	data = malloc((size_t) st.st_size + 1);
	if (data == NULL)
		die_usage("out of memory");
	while (got < (size_t) st.st_size)
	{
		ssize_t		n = read(fd, data + got, (size_t) st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die_usage("cannot read %s file \"%s\"", opt->flag, path);
		got += (size_t) n;
	}
	close(fd);
	data[got] = '\0';
	if (strstr(data, "-----BEGIN ") == NULL)
		die_usage("%s file \"%s\" is not in PEM format", opt->flag, path);
	return data;
}

/*
 * Read the TLS certificate and key, if configured: both or neither, and
 * only if libmicrohttpd was built with TLS.
 */
static void
parse_tls(ShimConfig *config)
{
	bool		cert = option_value(&options[OPT_TLS_CERT])[0] != '\0';
	bool		key = option_value(&options[OPT_TLS_KEY])[0] != '\0';

	config->tls_cert = NULL;
	config->tls_key = NULL;
	if (!cert && !key)
		return;
	if (!cert || !key)
		die_usage("--tls-cert and --tls-key go together: give both or neither");
	if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
		die_usage("this libmicrohttpd (%s) was built without TLS support; "
				  "terminate TLS in a reverse proxy instead", MHD_get_version());
	config->tls_cert = read_pem(&options[OPT_TLS_CERT]);
	config->tls_key = read_pem(&options[OPT_TLS_KEY]);
}

/*
 * Turn the collected option strings into a configuration (exits with
 * status 2 on a bad value).
 */
static void
parse_config(ShimConfig *config)
{
	const char *log_file = option_value(&options[OPT_LOG_FILE]);

	parse_listen(&options[OPT_LISTEN], config);
	config->dsn = option_value(&options[OPT_DSN]);
	config->threads = (unsigned int)
		parse_number(&options[OPT_THREADS], 1, MAX_THREADS);
	config->batch_max = (unsigned int)
		parse_number(&options[OPT_BATCH_MAX], 1, MAX_BATCH);
	config->batch_concurrency = (unsigned int)
		parse_number(&options[OPT_BATCH_CONCURRENCY], 1, MAX_THREADS);
	config->max_body = (size_t)
		parse_number(&options[OPT_MAX_BODY], 1, MAX_BODY_LIMIT);
	config->max_header = (size_t)
		parse_number(&options[OPT_MAX_HEADER], MIN_HEADER_LIMIT,
					 MAX_HEADER_LIMIT);
	/* MHD splits the limit between its threads: each needs one at least */
	config->max_connections = (unsigned int)
		parse_number(&options[OPT_MAX_CONNECTIONS], config->threads,
					 MAX_CONNECTIONS);
	config->max_connections_per_ip = (unsigned int)
		parse_number(&options[OPT_MAX_CONNECTIONS_PER_IP], 0, MAX_CONNECTIONS);
	config->idle_timeout_s = (unsigned int)
		parse_number(&options[OPT_IDLE_TIMEOUT], 1, MAX_TIMEOUT_S);
	config->request_timeout_s = (unsigned int)
		parse_number(&options[OPT_REQUEST_TIMEOUT], 1, MAX_TIMEOUT_S);
	config->rate = (unsigned int) parse_number(&options[OPT_RATE], 0, MAX_RATE);
	config->rate_burst = (unsigned int)
		parse_number(&options[OPT_RATE_BURST], 1, MAX_RATE);
	parse_ranges(&options[OPT_RATE_EXEMPT], &config->rate_exempt,
				 &config->n_rate_exempt);
	config->rate_ipv6_prefix = (unsigned int)
		parse_number(&options[OPT_RATE_IPV6_PREFIX], 32, 128);
	parse_ranges(&options[OPT_TRUSTED_PROXIES], &config->trusted_proxies,
				 &config->n_trusted_proxies);
	config->log_level = parse_log_level(&options[OPT_LOG_LEVEL]);
	config->log_file = log_file[0] != '\0' ? log_file : NULL;
	config->shutdown_timeout_s = (unsigned int)
		parse_number(&options[OPT_SHUTDOWN_TIMEOUT], 0, MAX_TIMEOUT_S);
	parse_tls(config);
}

/*
 * Start libmicrohttpd on the configured address; NULL on failure.
 *
 * The per-connection memory pool holds the request line and headers, so it
 * is made twice --max-header: headers over the cap still fit, and get our
 * 431 with the usual headers and log line; far larger ones overflow the
 * pool, and libmicrohttpd answers 431 (or 414) by itself.
 */
static struct MHD_Daemon *
start_daemon(const ShimConfig *config)
{
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
		MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
	size_t		memory = config->max_header * 2;
	struct MHD_OptionItem tls[] = {
		{MHD_OPTION_HTTPS_MEM_CERT, 0, config->tls_cert},
		{MHD_OPTION_HTTPS_MEM_KEY, 0, config->tls_key},
		{MHD_OPTION_HTTPS_PRIORITIES, 0, (void *) TLS_PRIORITIES},
		{MHD_OPTION_END, 0, NULL},
	};
	struct MHD_OptionItem no_tls[] = {{MHD_OPTION_END, 0, NULL}};

	flags |= (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES)
		? MHD_USE_EPOLL : MHD_USE_POLL;
	/* MHD sizes and creates the socket from this flag, not from the address */
	if (config->addr.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if (config->tls_cert != NULL)
		flags |= MHD_USE_TLS;
	if (memory < MIN_CONNECTION_MEMORY)
		memory = MIN_CONNECTION_MEMORY;

	/* conn_admit: --max-connections in all */
	return MHD_start_daemon(flags, config->port, conn_admit, NULL, http_handle, NULL,
							MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL,
							MHD_OPTION_SOCK_ADDR,
							(const struct sockaddr *) &config->addr,
							MHD_OPTION_THREAD_POOL_SIZE, config->threads,
							MHD_OPTION_CONNECTION_TIMEOUT,
							config->idle_timeout_s,
							/* each thread may hold them all: the limit in
							 * all is conn_admit's (conn.c) */
							MHD_OPTION_CONNECTION_LIMIT,
							config->max_connections * config->threads,
							MHD_OPTION_PER_IP_CONNECTION_LIMIT,
							config->max_connections_per_ip,
							MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory,
							MHD_OPTION_NOTIFY_CONNECTION, conn_notify, NULL,
							MHD_OPTION_NOTIFY_COMPLETED, http_completed, NULL,
							MHD_OPTION_ARRAY,
							config->tls_cert != NULL ? tls : no_tls,
							MHD_OPTION_END);
}

/*
 * Log the startup line.  The DSN is not logged: it may hold a password.
 */
static void
log_startup(const ShimConfig *config)
{
	StrBuf		line;

	log_begin(&line, LOG_INFO);
	json_append_field(&line, "msg", "listening");
	json_append_field(&line, "listen", option_value(&options[OPT_LISTEN]));
	json_append_field(&line, "tls", config->tls_cert != NULL ? "on" : "off");
	json_append_field(&line, "version", SHIM_VERSION);
	json_append_field(&line, "libmicrohttpd", MHD_get_version());
	buf_printf(&line, ",\"libpq\":%d", PQlibVersion());
	buf_printf(&line, ",\"threads\":%u,\"batch_max\":%u,\"batch_concurrency\":%u"
			   ",\"max_body\":%zu,\"max_header\":%zu"
			   ",\"max_connections\":%u,\"max_connections_per_ip\":%u"
			   ",\"idle_timeout_s\":%u,\"request_timeout_s\":%u"
			   ",\"rate\":%u,\"rate_burst\":%u,\"rate_exempt\":%zu"
			   ",\"rate_ipv6_prefix\":%u"
			   ",\"trusted_proxies\":%zu"
			   ",\"shutdown_timeout_s\":%u",
			   config->threads, config->batch_max, config->batch_concurrency,
			   config->max_body, config->max_header,
			   config->max_connections, config->max_connections_per_ip,
			   config->idle_timeout_s, config->request_timeout_s,
			   config->rate, config->rate_burst, config->n_rate_exempt,
			   config->rate_ipv6_prefix,
			   config->n_trusted_proxies,
			   config->shutdown_timeout_s);
	log_end(&line);
}

/*
 * Log a shutdown step with the number of requests still in flight.
 */
static void
log_shutdown(LogLevel level, const char *msg, int signo)
{
	StrBuf		line;

	log_begin(&line, level);
	json_append_field(&line, "msg", msg);
	if (signo != 0)
		json_append_field(&line, "signal",
						  signo == SIGTERM ? "SIGTERM" : "SIGINT");
	buf_printf(&line, ",\"in_flight\":%u", http_in_flight());
	log_end(&line);
}

/*
 * Monotonic clock in milliseconds.
 */
static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Once-a-second housekeeping of the main thread.
 */
static void
tick(void)
{
	conn_expire();
	batch_expire();
	log_mhd_summary();
}

/*
 * Wait up to timeout_ms for a signal and return it (0 if none came).
 * SIGHUP is handled here, and housekeeping runs when it is due.
 */
static int
wait_signal(const sigset_t *signals, int64_t timeout_ms, int64_t *next_tick)
{
	struct timespec wait = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
	int			signo = sigtimedwait(signals, NULL, &wait);

	if (now_ms() >= *next_tick)
	{
		tick();
		*next_tick = now_ms() + TICK_MS;
	}
	if (signo == SIGHUP)
	{
		log_reopen();
		return 0;
	}
	return signo > 0 ? signo : 0;
}

/*
 * Wait until no request is in flight, the shutdown timeout passes (then
 * cancel the database queries still running, so that MHD's threads can be
 * joined), or a second signal arrives (then exit at once, without waiting
 * for anything).
 */
static void
drain(const sigset_t *signals, int64_t *next_tick)
{
	int64_t		deadline = now_ms() + (int64_t) shim_config.shutdown_timeout_s * 1000;
	int			signo;

	while (http_in_flight() > 0)
	{
		if (now_ms() >= deadline)
		{
			sigset_t	stop_signals;

			log_shutdown(LOG_WARNING,
						 "shutdown timeout, cancelling database queries and closing connections",
						 0);
			/*
			 * A cancel request opens a connection of its own, which can block
			 * for the kernel's connect timeout when the database host is
			 * unreachable: from here a further SIGTERM or SIGINT ends the
			 * process at once (default action).
			 */
			sigemptyset(&stop_signals);
			sigaddset(&stop_signals, SIGTERM);
			sigaddset(&stop_signals, SIGINT);
			pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL);
			batch_abandon();
			db_cancel_all();
			return;
		}
		signo = wait_signal(signals, DRAIN_POLL_MS, next_tick);
		if (signo != 0)
		{
			log_shutdown(LOG_WARNING, "second signal, exiting immediately",
						 signo);
			_exit(EXIT_FAILURE);
		}
	}
}

/*
 * After the batches stop: the requests the shutdown deadline abandoned or
 * cancelled have their 503 queued, but stopping the daemon closes every
 * connection without sending what is queued.  Give MHD's threads a moment
 * (ANSWER_GRACE_MS at most) to send those answers.
 */
static void
send_last_answers(void)
{
	int64_t		until = now_ms() + ANSWER_GRACE_MS;
	struct timespec pause = {0, 10 * 1000 * 1000};

	while (http_in_flight() > 0 && now_ms() < until)
		nanosleep(&pause, NULL);
}

/*
 * Entry point.
 */
int
main(int argc, char **argv)
{
	ShimConfig *config = &shim_config;
	sigset_t	signals;
	struct MHD_Daemon *mhd;
	MHD_socket	listen_fd;
	int64_t		next_tick;
	int			signo = 0;

	/* initialize subsystems, order important */
	collect_options(argc, argv);
	parse_config(config);
	if (!log_open(config->log_file, config->log_level))
		return EXIT_USAGE;
	if (!db_init(config->dsn, options[OPT_DSN].source))
		return EXIT_USAGE;
	if (!http_init() || !ratelimit_init())
	{
		fprintf(stderr, "payments-shim: getrandom() failed: %s\n",
				strerror(errno));
		return EXIT_FAILURE;
	}
	metrics_init();

	/* Before any thread exists: they all inherit this mask */
	sigemptyset(&signals);
	sigaddset(&signals, SIGTERM);
	sigaddset(&signals, SIGINT);
	sigaddset(&signals, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &signals, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (!batch_start())
		return EXIT_FAILURE;
	mhd = start_daemon(config);
	if (mhd == NULL)
	{
		StrBuf		line;

		log_begin(&line, LOG_ERROR);
		json_append_field(&line, "msg",
						  "could not start the HTTP server: see libmicrohttpd's message above");
		json_append_field(&line, "listen", option_value(&options[OPT_LISTEN]));
		if (config->tls_cert != NULL)
			json_append_field(&line, "hint",
							  "do the TLS certificate and key match?");
		log_end(&line);
		batch_stop();
		return EXIT_FAILURE;
	}
	log_startup(config);

	next_tick = now_ms() + TICK_MS;
	while (signo == 0)
		signo = wait_signal(&signals, TICK_MS, &next_tick);
	log_shutdown(LOG_INFO, "shutting down", signo);

	http_begin_drain();
	listen_fd = MHD_quiesce_daemon(mhd);
	/* Refuse new connections now instead of leaving them in the backlog */
	if (listen_fd != MHD_INVALID_SOCKET)
		shutdown(listen_fd, SHUT_RDWR);
	drain(&signals, &next_tick);

	/*
	 * Stopping may still wait for a database connection attempt: from here
	 * a further SIGTERM or SIGINT ends the process at once (default action).
	 */
	sigdelset(&signals, SIGHUP);
	pthread_sigmask(SIG_UNBLOCK, &signals, NULL);
	batch_stop();
	send_last_answers();
	MHD_stop_daemon(mhd);
	/* MHD leaves the quiesced socket to us, to close after stopping */
	if (listen_fd != MHD_INVALID_SOCKET)
		close(listen_fd);
	log_shutdown(LOG_INFO, "stopped", 0);

	log_close();
	free(config->rate_exempt);
	free(config->trusted_proxies);
	free(config->tls_cert);
	if (config->tls_key != NULL)
		explicit_bzero(config->tls_key, strlen(config->tls_key));
	free(config->tls_key);
	return EXIT_SUCCESS;
}
