/*-------------------------------------------------------------------------
 *
 * log.c
 *	  One JSON object per line on stderr.
 *
 * A line is built in memory and handed to a single write(), so lines from
 * different threads do not interleave.  Nothing here ever logs a request
 * body or a header value.
 *
 * shim/log.c
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

/*
 * Start a log line: {"time":"<RFC 3339 UTC, ms>","level":"<level>"
 * The caller adds fields (each starting with a comma) and calls log_end().
 */
void
log_begin(StrBuf *line, const char *level)
{
	struct timespec now;
	struct tm	tm;
	char		stamp[32];

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);

	buf_init(line);
	buf_printf(line, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\"",
			   stamp, now.tv_nsec / 1000000, level);
}

/*
 * Finish a log line, write it to stderr in one call and free it.
 */
void
log_end(StrBuf *line)
{
	size_t		done = 0;

	buf_append(line, "}\n", 2);
	while (!line->failed && done < line->len)
	{
		ssize_t		n = write(STDERR_FILENO, line->data + done,
							  line->len - done);

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
log_message(const char *level, const char *msg)
{
	StrBuf		line;

	log_begin(&line, level);
	json_append_field(&line, "msg", msg);
	log_end(&line);
}

/*
 * MHD_OPTION_EXTERNAL_LOGGER callback: libmicrohttpd's own messages, as
 * JSON lines like ours.
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

	log_begin(&line, "warning");
	json_append_field(&line, "source", "libmicrohttpd");
	json_append_field(&line, "msg", msg);
	log_end(&line);
}
