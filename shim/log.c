/*-------------------------------------------------------------------------
 *
 * log.c
 *	  One JSON object per line, on stderr or in --log-file.
 *
 * A line is built in memory and handed to a single write(), so lines from
 * different threads do not interleave.  Nothing here ever logs a request
 * body or a header value.
 *
 * A line below --log-level is started as a failed buffer: building it then
 * costs nothing and log_end() writes nothing.
 *
 * The log file is opened with O_APPEND.  log_reopen() (SIGHUP, after
 * logrotate moved the file) opens the path again and dup2()s the new file
 * onto the same descriptor number, which replaces it atomically for every
 * thread: a line goes wholly to the old file or wholly to the new one.
 *
 * libmicrohttpd's messages come through log_mhd().  Those a hostile client
 * can cause at will are counted rather than logged one by one: refused
 * connections (a connection limit) and connections that broke while a
 * request was read or its answer sent (the client reset or closed it, or
 * --request-timeout shut it down) are summed up once a second by
 * log_mhd_summary(), each message itself logged at debug; error answers
 * MHD sends itself (400, 413, 414, 431: the request never reaches us; 500
 * for a body it cannot read) are logged like requests.
 *
 * shim/log.c
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

/* libmicrohttpd 0.9.75's messages that log_mhd() recognizes */
#define MHD_MSG_CONNECTION_LIMIT	"Server reached connection limit"
#define MHD_MSG_ERROR_RESPONSE		"Error processing request (HTTP response code is "

/* What a message of client_messages tells */
typedef enum ClientBreak
{
	BREAK_READ,					/* a connection broke while its request was read */
	BREAK_SEND,					/* ... while its answer was sent */
	BREAK_TLS,					/* a TLS handshake the client got wrong */
	BREAK_ANSWERED,				/* a refusal MHD then answers (logged as such) */
	BREAK_COUNT
} ClientBreak;

/*
 * libmicrohttpd 0.9.75's messages about one connection that its client can
 * cause at will (resetting or closing it, reading no answer), by their
 * beginnings; a connection --request-timeout shut down gives the third.
 * The BREAK_ANSWERED ones come before an error answer (413, 400, 431),
 * which log_mhd_error_response() counts and logs.  "Socket disconnected
 * while reading request" is the first one in libmicrohttpd's newer code
 * (src/lib).
 */
static const struct
{
	const char *prefix;
	ClientBreak kind;
}			client_messages[] = {
	{"Socket has been disconnected when reading request", BREAK_READ},
	{"Socket disconnected while reading request", BREAK_READ},
	{"Connection socket is closed when reading request", BREAK_READ},
	{"Connection was closed by remote side with incomplete request", BREAK_READ},
	{"Failed to send ", BREAK_SEND},
	{"Error: received handshake message out of context", BREAK_TLS},
	{"Too large value of 'Content-Length' header", BREAK_ANSWERED},
	{"Failed to parse `Content-Length' header", BREAK_ANSWERED},
	{"Not enough memory in pool to ", BREAK_ANSWERED},
};

static const char *const level_names[] = {
	[LOG_ERROR] = "error",
	[LOG_WARNING] = "warning",
	[LOG_INFO] = "info",
	[LOG_DEBUG] = "debug",
};

static int	log_fd = STDERR_FILENO;
static const char *log_path;
static LogLevel log_level = LOG_INFO;
static atomic_uint refused_connections;
static atomic_uint client_breaks[BREAK_COUNT];

/*
 * Set the level, and open the log file if a path is given.  On failure
 * prints a message to stderr and returns false.
 */
bool
log_open(const char *path, LogLevel level)
{
	log_level = level;
	if (path == NULL)
		return true;
	log_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (log_fd < 0)
	{
		fprintf(stderr, "payments-shim: cannot open log file \"%s\": %s\n",
				path, strerror(errno));
		log_fd = STDERR_FILENO;
		return false;
	}
	log_path = path;
	return true;
}

/*
 * Open the log file again under its path (SIGHUP).  On failure keep
 * writing to the old file, and say so there.
 */
bool
log_reopen(void)
{
	int			fd;
	StrBuf		line;

	if (log_path == NULL)
		return true;
	fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0 || dup2(fd, log_fd) < 0)
	{
		log_begin(&line, LOG_ERROR);
		json_append_field(&line, "msg", "cannot reopen the log file");
		json_append_field(&line, "path", log_path);
		json_append_field(&line, "error", strerror(errno));
		log_end(&line);
		if (fd >= 0)
			close(fd);
		return false;
	}
	close(fd);
	log_message(LOG_INFO, "log file reopened");
	return true;
}

/*
 * Close the log file at exit.
 */
void
log_close(void)
{
	if (log_fd != STDERR_FILENO)
		close(log_fd);
	log_fd = STDERR_FILENO;
	log_path = NULL;
}

/*
 * Start a log line: {"time":"<RFC 3339 UTC, ms>","level":"<level>"
 * The caller adds fields (each starting with a comma) and calls log_end().
 */
void
log_begin(StrBuf *line, LogLevel level)
{
	struct timespec now;
	struct tm	tm;
	char		stamp[32];

	buf_init(line);
	if (level > log_level)
	{
		line->failed = true;
		return;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	buf_printf(line, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\"",
			   stamp, now.tv_nsec / 1000000, level_names[level]);
}

/*
 * Finish a log line, write it in one call and free it.
 */
void
log_end(StrBuf *line)
{
	size_t		done = 0;

	buf_append(line, "}\n", 2);
	while (!line->failed && done < line->len)
	{
		ssize_t		n = write(log_fd, line->data + done, line->len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (size_t) n;
	}
	buf_free(line);
}

/*
 * Log a line with just a message.
 */
void
log_message(LogLevel level, const char *msg)
{
	StrBuf		line;

	log_begin(&line, level);
	json_append_field(&line, "msg", msg);
	log_end(&line);
}

/*
 * Count and log an error answer that libmicrohttpd sent by itself.
 */
static void
log_mhd_error_response(const char *msg)
{
	unsigned int status = (unsigned int) strtoul(msg + strlen(MHD_MSG_ERROR_RESPONSE),
												 NULL, 10);
	StrBuf		line;

	if (status == MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE)
		metrics_reject(REJECT_HEADER_TOO_LARGE);
	else if (status == MHD_HTTP_CONTENT_TOO_LARGE)
		metrics_reject(REJECT_BODY_TOO_LARGE);	/* a Content-Length over 2^64 - 1 */
	else if (status == MHD_HTTP_URI_TOO_LONG)
		metrics_reject(REJECT_URI_TOO_LONG);
	else if (status == MHD_HTTP_BAD_REQUEST)
		metrics_reject(REJECT_MALFORMED);
	else if (status == MHD_HTTP_INTERNAL_SERVER_ERROR)
	{
		/*
		 * MHD 0.9.75 answers 500 by itself only when the connection's memory
		 * is full of body bytes it cannot hand to us: we take every byte it
		 * hands (http_handle), so that is a chunk-size line longer than the
		 * memory, a client's doing.  The status cannot be changed (README,
		 * Metrics); the reason says whose doing it is.
		 */
		metrics_reject(REJECT_MALFORMED);
	}
	metrics_request(ROUTE_OTHER, NULL, status, 0.0);

	log_begin(&line, LOG_INFO);
	json_append_field(&line, "msg", "request refused by libmicrohttpd");
	buf_printf(&line, ",\"status\":%u", status);
	log_end(&line);
}

/*
 * Is msg one of client_messages?  Then count it (unless an error answer
 * follows, counted by itself) and log it at debug only.
 */
static bool
log_mhd_client_message(const char *msg)
{
	StrBuf		line;

	for (size_t i = 0; i < sizeof(client_messages) / sizeof(client_messages[0]); i++)
	{
		if (strncmp(msg, client_messages[i].prefix,
					strlen(client_messages[i].prefix)) != 0)
			continue;
		if (client_messages[i].kind != BREAK_ANSWERED)
			atomic_fetch_add(&client_breaks[client_messages[i].kind], 1);
		log_begin(&line, LOG_DEBUG);
		json_append_field(&line, "source", "libmicrohttpd");
		json_append_field(&line, "msg", msg);
		log_end(&line);
		return true;
	}
	return false;
}

/*
 * MHD_OPTION_EXTERNAL_LOGGER callback: libmicrohttpd's own messages, as
 * JSON lines like ours (see the file header for those it counts).
 */
void
log_mhd(void *cls, const char *fmt, va_list ap)
{
	char		msg[512];
	size_t		len;
	StrBuf		line;

	(void) cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	len = strlen(msg);
	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
		msg[--len] = '\0';

	if (strncmp(msg, MHD_MSG_CONNECTION_LIMIT,
				strlen(MHD_MSG_CONNECTION_LIMIT)) == 0)
	{
		log_refused_connection();
		return;
	}
	if (strncmp(msg, MHD_MSG_ERROR_RESPONSE,
				strlen(MHD_MSG_ERROR_RESPONSE)) == 0)
	{
		log_mhd_error_response(msg);
		return;
	}
	if (log_mhd_client_message(msg))
		return;

	log_begin(&line, LOG_WARNING);
	json_append_field(&line, "source", "libmicrohttpd");
	json_append_field(&line, "msg", msg);
	log_end(&line);
}

/*
 * Count a connection refused by a connection limit (libmicrohttpd's, or
 * --max-connections in all, conn_admit): in the metrics, and in the warning
 * log_mhd_summary() writes once a second.
 */
void
log_refused_connection(void)
{
	metrics_reject(REJECT_CONNECTION_LIMIT);
	atomic_fetch_add(&refused_connections, 1);
}

/*
 * Log how many connections the connection limits refused, and how many
 * broke in the middle of a request (client_messages), since the last call
 * (the main thread calls this once a second): a line each at most.
 */
void
log_mhd_summary(void)
{
	unsigned int refused = atomic_exchange(&refused_connections, 0);
	unsigned int breaks[BREAK_COUNT];
	StrBuf		line;

	for (int i = 0; i < BREAK_COUNT; i++)
		breaks[i] = atomic_exchange(&client_breaks[i], 0);
	if (refused != 0)
	{
		log_begin(&line, LOG_WARNING);
		json_append_field(&line, "msg",
						  "connections refused: connection limit reached");
		buf_printf(&line, ",\"refused\":%u,\"max_connections\":%u,"
				   "\"max_connections_per_ip\":%u", refused,
				   shim_config.max_connections,
				   shim_config.max_connections_per_ip);
		log_end(&line);
	}
	if (breaks[BREAK_READ] + breaks[BREAK_SEND] + breaks[BREAK_TLS] != 0)
	{
		log_begin(&line, LOG_WARNING);
		json_append_field(&line, "source", "libmicrohttpd");
		json_append_field(&line, "msg", "connections broken during a request");
		buf_printf(&line, ",\"reading\":%u,\"sending\":%u,\"tls_handshake\":%u",
				   breaks[BREAK_READ], breaks[BREAK_SEND], breaks[BREAK_TLS]);
		log_end(&line);
	}
}
