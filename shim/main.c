/*-------------------------------------------------------------------------
 *
 * main.c
 *	  payments-shim: flags, signals, daemon start and graceful stop.
 *
 * Configuration comes from flags or environment variables (a flag wins),
 * described by one table.  SIGTERM and SIGINT are blocked before MHD starts
 * its threads, so only the main thread receives them, synchronously, with
 * sigwait(); there are no signal handlers.  On the first signal we stop
 * accepting, let in-flight requests finish, then stop MHD (joining its
 * threads closes their database connections).  A second signal exits at
 * once.
 *
 * shim/main.c
 *
 *-------------------------------------------------------------------------
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "shim.h"

#define EXIT_USAGE			2
#define MAX_THREADS			256
#define MAX_BODY_LIMIT		(1024ULL * 1024 * 1024)
#define CONNECTION_TIMEOUT_S 30
#define CONNECTION_LIMIT	512
#define DRAIN_TIMEOUT_S		30
#define DRAIN_POLL_MS		100

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
	OPT_MAX_BODY,
	NUM_OPTIONS
};

static ShimOption options[NUM_OPTIONS] = {
	[OPT_LISTEN] = {"--listen", "HOST:PORT", "PAYMENTS_SHIM_LISTEN",
		"127.0.0.1:8065", "address to listen on: IPv4:PORT or [IPv6]:PORT"},
	[OPT_DSN] = {"--dsn", "CONNINFO", "PAYMENTS_SHIM_DSN",
		"", "libpq conninfo or URI; empty uses PGHOST etc."},
	[OPT_THREADS] = {"--threads", "N", "PAYMENTS_SHIM_THREADS",
		"4", "worker threads, each with one database connection (1-256)"},
	[OPT_MAX_BODY] = {"--max-body", "BYTES", "PAYMENTS_SHIM_MAX_BODY",
		"1048576", "largest accepted request body (1 to 1073741824)"},
};

/* Parsed settings */
typedef struct ShimConfig
{
	struct sockaddr_storage addr;
	uint16_t	port;			/* also in addr; MHD's messages show this */
	unsigned int threads;
	size_t		max_body;
	const char *dsn;
} ShimConfig;

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
			"Routes: POST /webhooks/{provider}, GET /health.\n\n");
	fprintf(out, "%-22s %-24s %-16s %s\n",
			"Option", "Environment", "Default", "Meaning");
	for (i = 0; i < NUM_OPTIONS; i++)
	{
		char		flag[64];

		snprintf(flag, sizeof(flag), "%s %s",
				 options[i].flag, options[i].metavar);
		fprintf(out, "%-22s %-24s %-16s %s\n", flag, options[i].env,
				options[i].default_value[0] ? options[i].default_value : "\"\"",
				options[i].help);
	}
	fprintf(out, "%-22s %-24s %-16s %s\n",
			"--help", "", "", "show this help and exit");
	fprintf(out, "\nA flag wins over its environment variable. "
			"Flags also accept --flag=VALUE.\n");
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
			die_usage("unknown argument \"%s\"", arg);
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
 * Turn the collected option strings into a configuration (exits with
 * status 2 on a bad value).
 */
static void
parse_config(ShimConfig *config)
{
	parse_listen(&options[OPT_LISTEN], config);
	config->dsn = option_value(&options[OPT_DSN]);
	config->threads = (unsigned int)
		parse_number(&options[OPT_THREADS], 1, MAX_THREADS);
	config->max_body = (size_t)
		parse_number(&options[OPT_MAX_BODY], 1, MAX_BODY_LIMIT);
}

/*
 * Start libmicrohttpd on the configured address; NULL on failure.
 */
static struct MHD_Daemon *
start_daemon(const ShimConfig *config)
{
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
		MHD_USE_ERROR_LOG;

	flags |= (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES)
		? MHD_USE_EPOLL : MHD_USE_POLL;
	/* MHD sizes and creates the socket from this flag, not from the address */
	if (config->addr.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;

	return MHD_start_daemon(flags, config->port, NULL, NULL, http_handle, NULL,
							MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL,
							MHD_OPTION_SOCK_ADDR,
							(const struct sockaddr *) &config->addr,
							MHD_OPTION_THREAD_POOL_SIZE, config->threads,
							MHD_OPTION_CONNECTION_TIMEOUT,
							(unsigned int) CONNECTION_TIMEOUT_S,
							MHD_OPTION_CONNECTION_LIMIT,
							(unsigned int) CONNECTION_LIMIT,
							MHD_OPTION_NOTIFY_COMPLETED, http_completed, NULL,
							MHD_OPTION_END);
}

/*
 * Log the startup line.  The DSN is not logged: it may hold a password.
 */
static void
log_startup(const ShimConfig *config)
{
	StrBuf		line;

	log_begin(&line, "info");
	json_append_field(&line, "msg", "listening");
	json_append_field(&line, "listen", option_value(&options[OPT_LISTEN]));
	buf_printf(&line, ",\"threads\":%u,\"max_body\":%zu",
			   config->threads, config->max_body);
	json_append_field(&line, "libmicrohttpd", MHD_get_version());
	buf_printf(&line, ",\"libpq\":%d", PQlibVersion());
	log_end(&line);
}

/*
 * Log a shutdown step with the number of requests still in flight.
 */
static void
log_shutdown(const char *level, const char *msg, int signo)
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
 * Wait until no request is in flight, the drain timeout passes, or a
 * second signal arrives (then exit at once, without waiting for anything).
 */
static void
drain(const sigset_t *signals)
{
	struct timespec poll = {0, DRAIN_POLL_MS * 1000000L};
	struct timespec now;
	time_t		deadline;
	int			signo;

	clock_gettime(CLOCK_MONOTONIC, &now);
	deadline = now.tv_sec + DRAIN_TIMEOUT_S;

	while (http_in_flight() > 0)
	{
		signo = sigtimedwait(signals, NULL, &poll);
		if (signo > 0)
		{
			log_shutdown("warning", "second signal, exiting immediately",
						 signo);
			_exit(EXIT_FAILURE);
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec >= deadline)
		{
			log_shutdown("warning", "drain timeout, aborting requests", 0);
			return;
		}
	}
}

/*
 * Entry point.
 */
int
main(int argc, char **argv)
{
	ShimConfig	config;
	sigset_t	signals;
	struct MHD_Daemon *mhd;
	MHD_socket	listen_fd;
	int			signo;

	collect_options(argc, argv);
	parse_config(&config);
	if (!db_init(config.dsn))
		return EXIT_USAGE;
	if (!http_init(config.max_body))
	{
		fprintf(stderr, "payments-shim: getrandom() failed: %s\n",
				strerror(errno));
		return EXIT_FAILURE;
	}

	/* Before any thread exists: they all inherit this mask */
	sigemptyset(&signals);
	sigaddset(&signals, SIGTERM);
	sigaddset(&signals, SIGINT);
	pthread_sigmask(SIG_BLOCK, &signals, NULL);
	signal(SIGPIPE, SIG_IGN);

	mhd = start_daemon(&config);
	if (mhd == NULL)
	{
		StrBuf		line;

		log_begin(&line, "error");
		json_append_field(&line, "msg", "could not start the HTTP server");
		json_append_field(&line, "listen", option_value(&options[OPT_LISTEN]));
		log_end(&line);
		return EXIT_FAILURE;
	}
	log_startup(&config);

	while (sigwait(&signals, &signo) != 0)
		;
	log_shutdown("info", "shutting down", signo);

	http_begin_drain();
	listen_fd = MHD_quiesce_daemon(mhd);
	/* Refuse new connections now instead of leaving them in the backlog */
	if (listen_fd != MHD_INVALID_SOCKET)
		shutdown(listen_fd, SHUT_RDWR);
	drain(&signals);

	MHD_stop_daemon(mhd);
	/* MHD leaves the quiesced socket to us, to close after stopping */
	if (listen_fd != MHD_INVALID_SOCKET)
		close(listen_fd);
	log_shutdown("info", "stopped", 0);
	return EXIT_SUCCESS;
}
