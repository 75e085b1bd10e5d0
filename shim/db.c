/*-------------------------------------------------------------------------
 *
 * db.c
 *	  One libpq connection per batch thread, and the calls made on it.
 *
 * Each batch thread (batch.c; the MHD threads never call the database)
 * lazily opens its own connection and keeps it in thread-specific data;
 * the key's destructor closes it when the thread ends at shutdown.  While the database is down a thread retries with
 * exponential backoff, so requests get a quick 503 instead of each waiting
 * for a connect timeout.
 *
 * A connection that breaks, or turns out to be read-only (a standby, or a
 * primary that was demoted: SQLSTATE 25006), is dropped and made again, so
 * with a multi-host DSN and target_session_attrs=read-write the shim finds
 * the new primary after a failover by itself.  One the server ended while
 * it was idle (a restart) is found before the next call is sent on it, and
 * made again first.
 *
 * db_ingest_batch() stores the requests of a batch (batch.c) in one
 * transaction: BEGIN, one payments.ingest_batch() call with the requests'
 * columns as arrays, and COMMIT, sent as one libpq pipeline, so the batch
 * costs one round trip, one statement and one commit.  The commit is
 * asynchronous and followed, in the same pipeline, by payments.flush_wal(),
 * which makes it durable: the batch is answered only after the flush, as
 * with a synchronous commit, but its locks (a receipt counter's, which every
 * paying batch takes) are released before it, so that concurrent batches do
 * not queue behind each other's WAL flushes.
 *
 * Threads are also kept in a list with a cancel handle for their
 * connection, so that at the shutdown deadline the main thread can cancel
 * the queries still running (db_cancel_all()): their transactions roll
 * back, nothing is answered 2xx, and the batch threads can be joined.
 *
 * shim/db.c
 *
 *-------------------------------------------------------------------------
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "shim.h"

#define INGEST_NPARAMS	5
#define SUBSCRIBE_NPARAMS 4

/* The statements prepared on every connection */
typedef enum DbStatementId
{
	STMT_INGEST,
	STMT_INGEST_BATCH,
	STMT_SUBSCRIBE,
	STMT_READY,
	STMT_FLOWS,
	STMT_FLUSH,
	STMT_COUNT
} DbStatementId;

typedef struct DbStatement
{
	const char *name;
	const char *sql;
	int			nparams;
} DbStatement;

static const DbStatement db_statements[STMT_COUNT] = {
	{"payments_ingest",
		"SELECT http_status, outcome, event_id FROM payments.ingest("
		"$1::text, $2::jsonb, $3::bytea, $4::inet, $5::text)", INGEST_NPARAMS},
	{"payments_ingest_batch",
		"SELECT http_status, outcome, event_id, sqlstate, error "
		"FROM payments.ingest_batch("
		"$1::text[], $2::jsonb[], $3::bytea[], $4::text[]::inet[], $5::text[])",
	INGEST_NPARAMS},
	{"payments_meta_subscribe",
		"SELECT http_status, body FROM payments.meta_subscribe("
		"$1::text, $2::text, $3::text, $4::text)", SUBSCRIBE_NPARAMS},
	{"payments_ready",
		"SELECT (SELECT extversion FROM pg_catalog.pg_extension "
		"WHERE extname = 'payments'), "
		"pg_catalog.current_setting('transaction_read_only'), "
		"CASE WHEN (SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE') "
		"FROM pg_catalog.pg_namespace n WHERE n.nspname = 'payments') "
		"THEN pg_catalog.has_function_privilege(pg_catalog.to_regprocedure("
		"'payments.ingest_batch(text[], jsonb[], bytea[], inet[], text[])'), 'EXECUTE') "
		"ELSE false END", 0},
	{"payments_flows_exchange",
		"SELECT http_status, outcome, response FROM payments.flows_exchange("
		"$1::text, $2::jsonb, $3::bytea, $4::inet, $5::text)", INGEST_NPARAMS},
	{"payments_flush_wal", "SELECT payments.flush_wal()", 0},
};

/* Versions of the payments extension this shim can call */
static const char *const supported_versions[] = {"0.1.0"};

#define BACKOFF_MIN_MS	250
#define BACKOFF_MAX_MS	5000
#define DEFAULT_CONNECT_TIMEOUT "2"
#define READY_CACHE_MS	1000

/* Per-thread connection state */
typedef struct DbThread
{
	struct DbThread *next;		/* in db_threads, under db_threads_lock */
	struct DbThread *prev;
	PGcancel   *cancel;			/* for conn; under db_threads_lock */
	PGconn	   *conn;
	unsigned int prepared;		/* bit i set: db_statements[i] exists on conn */
	DbConnState state;
	int64_t		retry_at_ms;	/* no connection attempt before this */
	int			backoff_ms;		/* current delay; 0 after a success */
} DbThread;

static const char *db_dsn;
static bool db_set_connect_timeout;
static pthread_key_t db_key;
static pthread_mutex_t db_threads_lock = PTHREAD_MUTEX_INITIALIZER;
static DbThread *db_threads;
static bool db_cancelling;		/* db_cancel_all() was called; under db_threads_lock */

/* The last readiness result, shared by all threads; guarded by ready_lock */
static pthread_mutex_t ready_lock = PTHREAD_MUTEX_INITIALIZER;
static ReadyResult ready_cached;
static int64_t ready_checked_ms;
static bool ready_valid;
static bool ready_running;		/* a probe's check is queued or being made */
static int64_t ready_started_ms;	/* when that probe began it */

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
 * Move a thread's connection to a new state, for the metrics.
 */
static void
db_set_state(DbThread *thread, DbConnState state)
{
	if (thread->state == state)
		return;
	metrics_db_state(thread->state, state);
	thread->state = state;
}

/*
 * Set or clear (conn NULL) the cancel handle of a thread's connection.
 */
static void
db_set_cancel(DbThread *thread, PGconn *conn)
{
	pthread_mutex_lock(&db_threads_lock);
	PQfreeCancel(thread->cancel);
	thread->cancel = conn ? PQgetCancel(conn) : NULL;
	pthread_mutex_unlock(&db_threads_lock);
}

/*
 * Thread-specific data destructor: close the thread's connection.
 */
static void
db_thread_free(void *arg)
{
	DbThread   *thread = arg;

	pthread_mutex_lock(&db_threads_lock);
	if (thread->prev != NULL)
		thread->prev->next = thread->next;
	else
		db_threads = thread->next;
	if (thread->next != NULL)
		thread->next->prev = thread->prev;
	PQfreeCancel(thread->cancel);
	pthread_mutex_unlock(&db_threads_lock);

	PQfinish(thread->conn);
	db_set_state(thread, DBCONN_NONE);
	free(thread);
}

/*
 * Is s a comma-separated list of ports, each a decimal number from 1 to
 * 65535 or empty (the default port: libpq writes one for a host given
 * without a port in a URI of several hosts)?
 */
static bool
valid_port_list(const char *s)
{
	for (;;)
	{
		size_t		len = strcspn(s, ",");
		unsigned long port = 0;

		if (len > 0)
		{
			if (len > 5 || strspn(s, "0123456789") != len)
				return false;
			for (size_t i = 0; i < len; i++)
				port = port * 10 + (unsigned long) (s[i] - '0');
			if (port < 1 || port > 65535)
				return false;
		}
		if (s[len] == '\0')
			return true;
		s += len + 1;
	}
}

/*
 * Why libpq would read a DSN otherwise than meant, NULL if it would not.
 * A password with a '/' or '@' not percent-encoded in a URI is split there,
 * a part of it read as a host, port or database name, which libpq's
 * connection errors quote in the log: in a URI, an '@' may only end the
 * user name and password, which may not hold a '/'; and every port is a
 * number, and no host holds an '@', whatever form the DSN has.  The reasons
 * quote nothing of the DSN.
 */
static const char *
dsn_problem(const char *dsn, const PQconninfoOption *options)
{
	const char *rest = NULL;

	if (strncmp(dsn, "postgresql://", strlen("postgresql://")) == 0)
		rest = dsn + strlen("postgresql://");
	else if (strncmp(dsn, "postgres://", strlen("postgres://")) == 0)
		rest = dsn + strlen("postgres://");
	if (rest != NULL)
	{
		const char *at = strchr(rest, '@');

		if (at != NULL && strchr(at + 1, '@') != NULL)
			return "more than one '@' in the URI";
		if (at != NULL && memchr(rest, '/', (size_t) (at - rest)) != NULL)
			return "a '/' before the URI's '@'";
	}
	for (const PQconninfoOption *opt = options; opt->keyword != NULL; opt++)
	{
		if (opt->val == NULL)
			continue;
		if (strcmp(opt->keyword, "port") == 0 && !valid_port_list(opt->val))
			return "a port that is not a number from 1 to 65535";
		if (strcmp(opt->keyword, "host") == 0 && strchr(opt->val, '@') != NULL)
			return "a host with an '@'";
	}
	return NULL;
}

/*
 * Remember the DSN and decide whether to add connect_timeout.  Checks that
 * the DSN parses, and as it was meant (dsn_problem); on error prints a
 * message naming where the DSN came from (source: its flag or environment
 * variable), never the DSN, to stderr and returns false.
 */
bool
db_init(const char *dsn, const char *source)
{
	PQconninfoOption *options;
	PQconninfoOption *opt;
	char	   *err = NULL;
	const char *problem;

	options = PQconninfoParse(dsn, &err);
	if (options == NULL)
	{
		/* libpq's message may quote the token it stopped at: a password */
		fprintf(stderr, "payments-shim: invalid %s: %s\n", source,
				err ? "libpq cannot parse it (its message is left out, as it may quote a password)"
				: "out of memory");
		PQfreemem(err);
		return false;
	}
	if ((problem = dsn_problem(dsn, options)) != NULL)
	{
		fprintf(stderr, "payments-shim: invalid %s: %s (the DSN is not shown: it may hold a password). "
				"In a URI, a password (or any value) holding '/' or '@' must be percent-encoded "
				"(/ as %%2F, @ as %%40): libpq would read a part of it as a host, port or database name\n",
				source, problem);
		PQconninfoFree(options);
		return false;
	}
	db_set_connect_timeout = (getenv("PGCONNECT_TIMEOUT") == NULL);
	for (opt = options; opt->keyword != NULL; opt++)
	{
		if (strcmp(opt->keyword, "connect_timeout") == 0 && opt->val != NULL)
			db_set_connect_timeout = false;
	}
	PQconninfoFree(options);

	db_dsn = dsn;
	if (pthread_key_create(&db_key, db_thread_free) != 0)
	{
		fprintf(stderr, "payments-shim: pthread_key_create failed\n");
		return false;
	}
	return true;
}

/*
 * Log a database problem: what failed, SQLSTATE (if any) and the primary
 * message with trailing newlines removed.
 */
static void
log_db_error(LogLevel level, const char *request_id, const char *what,
			 const char *sqlstate, const char *message)
{
	char		msg[512];
	size_t		len;
	StrBuf		line;

	snprintf(msg, sizeof(msg), "%s", message ? message : "unknown error");
	len = strlen(msg);
	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
		msg[--len] = '\0';

	log_begin(&line, level);
	json_append_field(&line, "request_id", request_id);
	json_append_field(&line, "msg", what);
	json_append_field(&line, "sqlstate", sqlstate);
	json_append_field(&line, "error", msg);
	log_end(&line);
}

/*
 * Log a notice or warning the server sends on a connection (the extension
 * warns when an event is stored but could not be applied, its reason in the
 * detail, which is not logged: it may quote the body) as a JSON line of
 * the shim's log, at warning for a WARNING and debug for anything less,
 * instead of libpq's default: the raw text on stderr, whatever the log level
 * and file.  As with errors, a data exception's message is withheld.
 */
static void
db_notice(void *arg, const PGresult *res)
{
	const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	bool		warning = severity != NULL && strcmp(severity, "WARNING") == 0;

	(void) arg;
	if (sqlstate != NULL && strncmp(sqlstate, "22", 2) == 0)
		message = "data exception (message withheld: may quote request data)";
	log_db_error(warning ? LOG_WARNING : LOG_DEBUG, NULL,
				 warning ? "database warning" : "database notice", sqlstate, message);
}

/*
 * Ask the server to cancel whatever each thread's connection is running
 * (an idle connection ignores it).
 */
void
db_cancel_all(void)
{
	char		errbuf[256];

	pthread_mutex_lock(&db_threads_lock);
	db_cancelling = true;
	for (DbThread *thread = db_threads; thread != NULL; thread = thread->next)
	{
		if (thread->cancel != NULL &&
			!PQcancel(thread->cancel, errbuf, sizeof(errbuf)))
			log_db_error(LOG_WARNING, NULL, "could not cancel a query", NULL,
						 errbuf);
	}
	pthread_mutex_unlock(&db_threads_lock);
}

/* Has the shutdown deadline cancelled the queries (db_cancel_all)? */
static bool
db_is_cancelling(void)
{
	bool		cancelling;

	pthread_mutex_lock(&db_threads_lock);
	cancelling = db_cancelling;
	pthread_mutex_unlock(&db_threads_lock);
	return cancelling;
}

/*
 * This thread's state, created on first use; NULL if out of memory.
 */
static DbThread *
db_thread_get(void)
{
	DbThread   *thread = pthread_getspecific(db_key);

	if (thread != NULL)
		return thread;
	thread = calloc(1, sizeof(DbThread));
	if (thread == NULL)
		return NULL;
	if (pthread_setspecific(db_key, thread) != 0)
	{
		free(thread);
		return NULL;
	}
	pthread_mutex_lock(&db_threads_lock);
	thread->next = db_threads;
	if (db_threads != NULL)
		db_threads->prev = thread;
	db_threads = thread;
	pthread_mutex_unlock(&db_threads_lock);
	return thread;
}

/* After a failed connection attempt: the next one waits 250 ms, doubling up to 5 s */
static void
db_backoff(DbThread *thread)
{
	if (thread->backoff_ms == 0)
		thread->backoff_ms = BACKOFF_MIN_MS;
	else if (thread->backoff_ms < BACKOFF_MAX_MS / 2)
		thread->backoff_ms *= 2;
	else
		thread->backoff_ms = BACKOFF_MAX_MS;
	thread->retry_at_ms = now_ms() + thread->backoff_ms;
}

/*
 * Close the thread's connection after it broke; the thread connects again
 * straight away (db_reconnect, or its next call; backoff applies only to
 * failed attempts).
 */
static void
db_drop(DbThread *thread)
{
	db_set_cancel(thread, NULL);
	PQfinish(thread->conn);
	thread->conn = NULL;
	thread->prepared = 0;
	thread->retry_at_ms = 0;
	db_set_state(thread, DBCONN_BROKEN);
}

/*
 * Has the server ended this connection while it was idle?  A backend
 * terminated meanwhile (a restart, pg_terminate_backend) sent its FATAL
 * message and closed the socket, which libpq notices only when it next
 * reads: the call sent on it would fail, and its requests get 503.  So
 * what arrived meanwhile is read first; at the end of the stream libpq
 * marks the connection bad.  When nothing came, as nearly always, this
 * costs one poll().
 */
static bool
db_idle_conn_lost(PGconn *conn)
{
	struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};

	/* the message, then the end of the stream: a few reads at most */
	for (int i = 0; i < 4 && poll(&pfd, 1, 0) > 0; i++)
	{
		if (!PQconsumeInput(conn))
			break;
	}
	return PQstatus(conn) != CONNECTION_OK;
}

/*
 * Make sure the thread has a connection, made again when the server ended
 * it while idle.  Returns false at once while the backoff delay after a
 * failed attempt has not yet passed.
 */
static bool
db_connect(DbThread *thread, const char *request_id)
{
	const char *keywords[9];
	const char *values[9];
	int			n = 0;
	PGconn	   *conn;
	PGresult   *res;
	StrBuf		line;

	if (thread->conn != NULL)
	{
		if (!db_idle_conn_lost(thread->conn))
			return true;
		log_db_error(LOG_WARNING, request_id,
					 "database connection lost while idle, connecting again",
					 NULL, PQerrorMessage(thread->conn));
		db_drop(thread);
	}
	if (now_ms() < thread->retry_at_ms)
		return false;

	/* Keywords after "dbname" override the DSN, those before it do not */
	if (db_set_connect_timeout)
	{
		keywords[n] = "connect_timeout";
		values[n++] = DEFAULT_CONNECT_TIMEOUT;
	}
	/*
	 * A server that vanishes while a batch waits for its answer (nothing left
	 * unacknowledged, so TCP retransmits nothing) is noticed in about a
	 * minute, not the system's two hours; ignored on Unix-domain sockets
	 */
	keywords[n] = "keepalives_idle";
	values[n++] = "30";
	keywords[n] = "keepalives_interval";
	values[n++] = "10";
	keywords[n] = "keepalives_count";
	values[n++] = "3";
	keywords[n] = "tcp_user_timeout";
	values[n++] = "30000";
	keywords[n] = "fallback_application_name";
	values[n++] = "payments-shim";
	keywords[n] = "dbname";
	values[n++] = db_dsn;
	keywords[n] = "client_encoding";
	values[n++] = "UTF8";
	keywords[n] = NULL;
	values[n] = NULL;

	conn = PQconnectdbParams(keywords, values, 1);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		log_db_error(LOG_ERROR, request_id, "database connection failed", NULL,
					 conn ? PQerrorMessage(conn) : "out of memory");
		PQfinish(conn);
		metrics_db_connect(false, false);
		db_set_state(thread, DBCONN_BROKEN);
		db_backoff(thread);
		return false;
	}

	/*
	 * Deliveries of one signature wait for each other and must then see what
	 * the other committed: READ COMMITTED, whatever the role or database sets
	 * (payments.ingest refuses the others)
	 */
	res = PQexec(conn, "SET default_transaction_isolation TO 'read committed'");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		log_db_error(LOG_ERROR, request_id, "database connection failed", NULL, PQerrorMessage(conn));
		PQclear(res);
		PQfinish(conn);
		metrics_db_connect(false, false);
		db_set_state(thread, DBCONN_BROKEN);
		db_backoff(thread);
		return false;
	}
	PQclear(res);

	PQsetNoticeReceiver(conn, db_notice, NULL);
	thread->conn = conn;
	db_set_cancel(thread, conn);
	thread->prepared = 0;
	thread->backoff_ms = 0;
	metrics_db_connect(true, thread->state == DBCONN_BROKEN);
	db_set_state(thread, DBCONN_IDLE);

	log_begin(&line, LOG_INFO);
	json_append_field(&line, "msg", "database connected");
	json_append_field(&line, "host", PQhost(conn));
	json_append_field(&line, "port", PQport(conn));
	log_end(&line);
	return true;
}

/*
 * When this thread's connection, broken, may be made again (the monotonic
 * clock of now_ms and conn_now_ms): true with *at_ms set; false if it is
 * not broken.
 */
bool
db_reconnect_due(int64_t *at_ms)
{
	DbThread   *thread = pthread_getspecific(db_key);

	if (thread == NULL || thread->state != DBCONN_BROKEN)
		return false;
	*at_ms = thread->retry_at_ms;
	return true;
}

/*
 * Make this thread's broken connection again, between calls (a batch thread
 * with nothing to do, once db_reconnect_due's time has come): so a
 * connection is broken only while it cannot be made, not until the next
 * request after the database is back.  A failure backs off as for a call.
 */
void
db_reconnect(void)
{
	DbThread   *thread = pthread_getspecific(db_key);

	if (thread != NULL && thread->state == DBCONN_BROKEN)
		(void) db_connect(thread, NULL);
}

/*
 * Log a failed statement (res may be NULL: the connection's message then)
 * at level, with its SQLSTATE, set in *sqlstate (NULL when none).  A data
 * exception's message is withheld: it often quotes the input, i.e. request
 * data.
 */
static void
log_db_failure(LogLevel level, PGconn *conn, PGresult *res, const char *what,
			   const char *request_id, const char **sqlstate)
{
	const char *message = NULL;

	*sqlstate = NULL;
	if (res != NULL)
	{
		*sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		if (message == NULL)
			message = PQresultErrorMessage(res);
	}
	if (message == NULL || message[0] == '\0')
		message = PQerrorMessage(conn);
	if (*sqlstate != NULL && strncmp(*sqlstate, "22", 2) == 0)
		message = "data exception (message withheld: may quote request data)";
	log_db_error(level, request_id, what, *sqlstate, message);
}

/*
 * Classify a failed prepare/execute (res may be NULL) and log it at level.  A lost
 * connection, SQLSTATE class 08, an administrator shutdown (57P01-57P03)
 * or a read-only server (25006: a standby, or a demoted primary) drops the
 * connection.
 */
static DbStatus
db_failure(LogLevel level, DbThread *thread, PGresult *res, const char *what,
		   const char *request_id)
{
	const char *sqlstate;
	bool		data_error;
	bool		lost;

	log_db_failure(level, thread->conn, res, what, request_id, &sqlstate);
	data_error = (sqlstate != NULL && strncmp(sqlstate, "22", 2) == 0);

	lost = (res == NULL || PQstatus(thread->conn) != CONNECTION_OK);
	/*
	 * 25006: a read-only server, or payments.flush_wal() on a standby; the
	 * next connection may find the primary.  (55000, a provider's unusable
	 * settings, is not the connection's fault.)
	 */
	if (sqlstate != NULL &&
		(strncmp(sqlstate, "08", 2) == 0 ||
		 strcmp(sqlstate, "25006") == 0 ||
		 strcmp(sqlstate, "57P01") == 0 ||
		 strcmp(sqlstate, "57P02") == 0 ||
		 strcmp(sqlstate, "57P03") == 0))
		lost = true;

	if (lost)
	{
		db_drop(thread);
		return DB_UNAVAILABLE;
	}
	return data_error ? DB_INVALID : DB_FAILED;
}

/*
 * Prepare one statement on the thread's connection.  Statements are
 * prepared when first used, so that the readiness check works even when
 * the extension's functions are missing.
 */
static DbStatus
db_prepare(DbThread *thread, DbStatementId id, const char *request_id)
{
	PGresult   *res = PQprepare(thread->conn, db_statements[id].name,
								db_statements[id].sql,
								db_statements[id].nparams, NULL);

	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		DbStatus	status = db_failure(LOG_ERROR, thread, res, "prepare failed",
										request_id);

		PQclear(res);
		return status;
	}
	PQclear(res);
	thread->prepared |= 1u << id;
	return DB_OK;
}

/*
 * Run a prepared statement on this thread's connection, connecting and
 * preparing as needed.  On DB_OK *result holds the tuples; otherwise the
 * failure is logged and classified.
 */
static DbStatus
db_exec(DbStatementId id, const char *const *values, const int *lengths,
		const int *formats, const char *request_id, PGresult **result)
{
	DbThread   *thread = db_thread_get();
	PGresult   *res;

	*result = NULL;
	if (thread == NULL)
	{
		log_db_error(LOG_ERROR, request_id, "query failed", NULL,
					 "out of memory");
		return DB_FAILED;
	}
	if (!db_connect(thread, request_id))
		return DB_UNAVAILABLE;

	for (int attempt = 0;; attempt++)
	{
		const char *sqlstate;
		DbStatus	status;

		db_set_state(thread, DBCONN_BUSY);
		if ((thread->prepared & (1u << id)) == 0)
		{
			status = db_prepare(thread, id, request_id);
			if (status != DB_OK)
			{
				if (thread->conn != NULL)
					db_set_state(thread, DBCONN_IDLE);
				return status;
			}
		}

		res = PQexecPrepared(thread->conn, db_statements[id].name,
							 db_statements[id].nparams, values, lengths,
							 formats, 0);
		if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK)
		{
			db_set_state(thread, DBCONN_IDLE);
			*result = res;
			return DB_OK;
		}

		/* Statement gone (e.g. DISCARD ALL by a pooler): prepare again once */
		sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
		if (attempt == 0 && sqlstate != NULL &&
			strcmp(sqlstate, "26000") == 0 &&
			PQstatus(thread->conn) == CONNECTION_OK)
		{
			log_db_error(LOG_WARNING, request_id,
						 "prepared statement missing, preparing again",
						 sqlstate,
						 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
			thread->prepared = 0;
			PQclear(res);
			continue;
		}

		status = db_failure(LOG_ERROR, thread, res, "query failed", request_id);
		PQclear(res);
		if (thread->conn != NULL)
			db_set_state(thread, DBCONN_IDLE);
		return status;
	}
}

/*
 * Check the row returned by payments.ingest() (or ingest_batch(), with
 * its nfields columns) and point "out" into it.  Anything but one row with
 * a 2xx-5xx status and an outcome is unusable.
 */
static bool
db_parse_row(PGresult *res, int nfields, IngestResult *out)
{
	const char *status_text;
	char	   *end;
	long		status;

	if (PQntuples(res) != 1 || PQnfields(res) != nfields ||
		PQgetisnull(res, 0, 0) || PQgetisnull(res, 0, 1))
		return false;
	status_text = PQgetvalue(res, 0, 0);
	status = strtol(status_text, &end, 10);
	if (end == status_text || *end != '\0' || status < 200 || status > 599)
		return false;

	out->http_status = (unsigned int) status;
	out->outcome = PQgetvalue(res, 0, 1);
	out->event_id = PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2);
	return true;
}

/* Parameter formats of the ingest statements: the body is binary */
static const int ingest_formats[INGEST_NPARAMS] = {0, 0, 1, 0, 0};

/*
 * The parameters of the ingest statements for a request.  The body is sent
 * as a binary parameter, so its bytes reach the server unchanged.
 */
static void
ingest_params(const IngestRequest *req, const char **values, int *lengths)
{
	memset(lengths, 0, INGEST_NPARAMS * sizeof(int));
	values[0] = req->provider;
	values[1] = req->headers_json;
	/* A NULL pointer would mean SQL NULL, not an empty body */
	values[2] = (req->body != NULL) ? req->body : "";
	lengths[2] = (int) req->body_len;
	values[3] = req->client_ip;
	values[4] = req->request_id;
}

/*
 * Call payments.flush_wal() before a 2xx answer to a call committed on its
 * own: the commit's wait for the synchronous standbys ends on a
 * statement_timeout or a cancel with only a warning, the call answered as if
 * they had it, and the flush confirms it (or fails).
 */
static DbStatus
db_flush(const char *request_id)
{
	PGresult   *flushed;
	DbStatus	status = db_exec(STMT_FLUSH, NULL, NULL, NULL, request_id, &flushed);

	PQclear(flushed);
	return status;
}

/*
 * Call payments.ingest() once for a request, in a transaction of its own.
 * out->status says what happened; on DB_OK the caller must
 * db_free_result(out->pgresult).  A 2xx answer is kept only once
 * db_flush has confirmed it.
 */
static void
db_ingest(const IngestRequest *req, IngestResult *out)
{
	const char *values[INGEST_NPARAMS];
	int			lengths[INGEST_NPARAMS];
	PGresult   *res;

	memset(out, 0, sizeof(*out));
	ingest_params(req, values, lengths);

	out->status = db_exec(STMT_INGEST, values, lengths, ingest_formats,
						  req->request_id, &res);
	if (out->status != DB_OK)
		return;
	if (!db_parse_row(res, 3, out))
	{
		log_db_error(LOG_ERROR, req->request_id,
					 "ingest returned an unusable row", NULL,
					 "want one row: http_status 200-599, outcome not null");
		PQclear(res);
		out->status = DB_FAILED;
		return;
	}
	if (out->http_status >= 200 && out->http_status < 300 &&
		(out->status = db_flush(req->request_id)) != DB_OK)
	{
		PQclear(res);
		return;
	}
	out->pgresult = res;
}

/*
 * The next result of a pipeline: one query's last result (so that an error
 * after rows wins), or PGRES_PIPELINE_SYNC; NULL when the connection broke.
 */
static PGresult *
pipeline_next(PGconn *conn)
{
	PGresult   *res = PQgetResult(conn);
	PGresult   *more;

	if (res == NULL || PQresultStatus(res) == PGRES_PIPELINE_SYNC)
		return res;
	while (PQstatus(conn) == CONNECTION_OK && (more = PQgetResult(conn)) != NULL)
	{
		PQclear(res);
		res = more;
	}
	return res;
}

/* Element type OIDs of the batch call's arrays (pg_type.dat) */
#define TEXTOID		25
#define BYTEAOID	17
#define JSONBOID	3802

/*
 * The batch call's five parameters, the requests' columns as binary arrays
 * (the client address as text, cast to inet by the statement); false when
 * out of memory.  The caller frees the buffers.
 */
static bool
batch_params(const IngestRequest *const *reqs, unsigned int n,
			 StrBuf *columns)
{
	bool		failed = false;

	pgarray_start(&columns[0], TEXTOID, n);
	pgarray_start(&columns[1], JSONBOID, n);
	pgarray_start(&columns[2], BYTEAOID, n);
	pgarray_start(&columns[3], TEXTOID, n);
	pgarray_start(&columns[4], TEXTOID, n);
	for (unsigned int i = 0; i < n; i++)
	{
		const IngestRequest *req = reqs[i];

		pgarray_add(&columns[0], req->provider, strlen(req->provider));
		pgarray_add_jsonb(&columns[1], req->headers_json);
		/* a NULL pointer would mean SQL NULL, not an empty body */
		pgarray_add(&columns[2], req->body != NULL ? req->body : "", req->body_len);
		pgarray_add(&columns[3], req->client_ip,
					req->client_ip != NULL ? strlen(req->client_ip) : 0);
		pgarray_add(&columns[4], req->request_id,
					req->request_id != NULL ? strlen(req->request_id) : 0);
	}
	for (int c = 0; c < INGEST_NPARAMS; c++)
		failed = failed || columns[c].failed || columns[c].len > INT32_MAX;
	return !failed;
}

/*
 * Request i's row of the batch call's result, as a result of its own (so
 * that each request can be answered and freed on its own); NULL when out
 * of memory.
 */
static PGresult *
batch_row(const PGresult *res, int i)
{
	PGresult   *row = PQcopyResult(res, PG_COPYRES_ATTRS);
	int			nfields = PQnfields(res);

	for (int f = 0; row != NULL && f < nfields; f++)
	{
		bool		isnull = PQgetisnull(res, i, f);

		/* a NULL value pointer makes a NULL field */
		if (!PQsetvalue(row, 0, f, isnull ? NULL : PQgetvalue(res, i, f),
						isnull ? -1 : PQgetlength(res, i, f)))
		{
			PQclear(row);
			row = NULL;
		}
	}
	return row;
}

/*
 * Might a batch that failed with this SQLSTATE have failed for one of its
 * deliveries, so that stored one at a time only that one would fail?  A
 * data exception (class 22: a parameter the server refused, a value a step
 * at the commit could not take), an integrity violation or a raise of a
 * step at the commit for one payment (23, P0), a deadlock or serialization
 * failure (class 40: at the commit, with a concurrent transaction's trigger
 * or a receipt counter taken early, in another order), one slow delivery past
 * statement_timeout or lock_timeout (57014, 55P03).  Any other failure (a
 * missing object, the server short of resources or failing) is the
 * database's: one at a time would fail as many times, and add to its load.
 */
static bool
failure_may_be_one_deliverys(const char *sqlstate)
{
	return sqlstate != NULL &&
		(strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0 ||
		 strncmp(sqlstate, "40", 2) == 0 || strncmp(sqlstate, "P0", 2) == 0 ||
		 strcmp(sqlstate, "57014") == 0 || strcmp(sqlstate, "55P03") == 0);
}

/*
 * Send BEGIN, synchronous_commit off, one payments.ingest_batch() call,
 * COMMIT and payments.flush_wal() as one pipeline, and read the answers.
 * DB_OK means COMMIT succeeded and is durable, and rows[i] holds
 * request i's row; otherwise nothing was committed and no row is kept.
 * When the failure may be one delivery's, *retry_alone is set (and
 * *timed_out for a statement_timeout or cancel); on a missing prepared
 * statement, *reprepare.
 */
static DbStatus
db_batch_run(DbThread *thread, const IngestRequest *const *reqs,
			 unsigned int n, PGresult **rows, bool *retry_alone,
			 bool *timed_out, bool *reprepare)
{
	static const int formats[INGEST_NPARAMS] = {1, 1, 1, 1, 1};
	PGconn	   *conn = thread->conn;
	const char *request_id = reqs[0]->request_id;
	StrBuf		columns[INGEST_NPARAMS];
	const char *values[INGEST_NPARAMS];
	int			lengths[INGEST_NPARAMS];
	PGresult   *error = NULL;	/* the first query that failed */
	PGresult   *answers = NULL; /* the call's rows */
	const char *sqlstate;
	bool		sent;
	bool		committed = false;
	bool		flushed = false;
	bool		lost = false;
	DbStatus	status;

	*retry_alone = false;
	*timed_out = false;
	*reprepare = false;
	for (int c = 0; c < INGEST_NPARAMS; c++)
		buf_init(&columns[c]);
	if (!batch_params(reqs, n, columns))
	{
		for (int c = 0; c < INGEST_NPARAMS; c++)
			buf_free(&columns[c]);
		log_db_error(LOG_ERROR, request_id, "batch failed", NULL, "out of memory");
		return DB_FAILED;
	}
	for (int c = 0; c < INGEST_NPARAMS; c++)
	{
		values[c] = columns[c].data;
		lengths[c] = (int) columns[c].len;
	}
	sent = PQenterPipelineMode(conn) &&
		PQsendQueryParams(conn, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL, 0) &&
		PQsendQueryParams(conn, "SET LOCAL synchronous_commit TO off", 0, NULL, NULL, NULL, NULL, 0) &&
		PQsendQueryPrepared(conn, db_statements[STMT_INGEST_BATCH].name,
							INGEST_NPARAMS, values, lengths, formats, 0) &&
		PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) &&
		PQsendQueryParams(conn, "SELECT payments.flush_wal()", 0, NULL, NULL, NULL, NULL, 0) &&
		PQpipelineSync(conn);
	for (int c = 0; c < INGEST_NPARAMS; c++)
		buf_free(&columns[c]);
	if (!sent)
		return db_failure(LOG_ERROR, thread, NULL, "batch failed", request_id);

	/*
	 * BEGIN, SET, the call, COMMIT, the flush; after a failure the rest come
	 * back aborted
	 */
	for (int q = 0; q < 5; q++)
	{
		PGresult   *res = pipeline_next(conn);
		ExecStatusType rs;
		bool		good;

		if (res == NULL)
		{
			lost = true;
			break;
		}
		rs = PQresultStatus(res);
		if (q < 2)
			good = (rs == PGRES_COMMAND_OK);
		else if (q == 3)
			committed = good = (rs == PGRES_COMMAND_OK &&
								strcmp(PQcmdStatus(res), "COMMIT") == 0);
		else if (q == 4)
			flushed = good = (rs == PGRES_TUPLES_OK);
		else if ((good = (rs == PGRES_TUPLES_OK)))
		{
			answers = res;
			res = NULL;
		}
		if (!good && error == NULL && rs != PGRES_PIPELINE_ABORTED)
		{
			error = res;
			res = NULL;
		}
		PQclear(res);
	}
	if (!lost)
	{
		PGresult   *res = pipeline_next(conn);

		lost = (res == NULL || PQresultStatus(res) != PGRES_PIPELINE_SYNC);
		PQclear(res);
	}
	lost = lost || !PQexitPipelineMode(conn);
	if (!lost && PQtransactionStatus(conn) != PQTRANS_IDLE)
	{
		PGresult   *res = PQexec(conn, "ROLLBACK");

		lost = (PQresultStatus(res) != PGRES_COMMAND_OK);
		PQclear(res);
	}

	/* committed but not known durable: not answered 2xx (the sender retries) */
	if (committed && flushed && !lost)
	{
		/*
		 * A row per request, each of its own, in order.  Rows that do not
		 * match the requests one for one cannot be told apart: none is used
		 * (each request is answered 503 and sent again, a duplicate).
		 */
		bool		matched = (answers != NULL && PQntuples(answers) == (int) n);

		if (!matched)
			log_db_error(LOG_ERROR, NULL, "payments.ingest_batch answered a row count other than its deliveries'",
						 NULL, "every request of the batch is answered 503");
		for (unsigned int i = 0; i < n; i++)
			rows[i] = matched ? batch_row(answers, (int) i) : NULL;
		PQclear(answers);
		return DB_OK;
	}

	PQclear(answers);
	if (lost)
	{
		log_db_failure(LOG_ERROR, conn, error, "batch failed", request_id, &sqlstate);
		PQclear(error);
		db_drop(thread);
		return DB_UNAVAILABLE;
	}
	sqlstate = error != NULL ? PQresultErrorField(error, PG_DIAG_SQLSTATE) : NULL;
	*reprepare = (sqlstate != NULL && strcmp(sqlstate, "26000") == 0);
	*retry_alone = failure_may_be_one_deliverys(sqlstate);
	*timed_out = (sqlstate != NULL &&
				  (strcmp(sqlstate, "57014") == 0 || strcmp(sqlstate, "55P03") == 0));
	/* a warning when its deliveries are to be stored alone: they may all be */
	status = db_failure(*retry_alone ? LOG_WARNING : LOG_ERROR, thread, error,
						"batch failed", request_id);
	PQclear(error);
	return status;
}

/*
 * Take request i's row of a committed batch: its result, or the error its
 * delivery raised (logged; a data exception is the request's fault).  A
 * deadlock or serialization failure (with a delivery of a concurrent batch:
 * the same event or payment) is not final: it returns false, and the
 * caller stores the delivery again, alone.  A read-only server (a standby,
 * or a primary demoted) answers 503 and sets *read_only: the caller drops
 * the connection, so that the next one finds the primary.
 */
static bool
db_batch_result(PGresult *res, const IngestRequest *req, IngestResult *out,
				bool *read_only)
{
	if (res == NULL)
	{
		log_db_error(LOG_ERROR, req->request_id,
					 "ingest returned an unusable row", NULL,
					 "want one row per delivery of the batch");
		out->status = DB_FAILED;
		return true;
	}
	if (PQnfields(res) == 5 && PQntuples(res) == 1 && !PQgetisnull(res, 0, 3))
	{
		const char *sqlstate = PQgetvalue(res, 0, 3);
		bool		data_error = strncmp(sqlstate, "22", 2) == 0;

		if (strcmp(sqlstate, "40P01") == 0 || strcmp(sqlstate, "40001") == 0)
		{
			log_db_error(LOG_WARNING, req->request_id,
						 "ingest met a concurrent batch, storing it again alone",
						 sqlstate, PQgetvalue(res, 0, 4));
			PQclear(res);
			return false;
		}

		log_db_error(LOG_ERROR, req->request_id, "ingest failed", sqlstate,
					 data_error ? "data exception (message withheld: may quote request data)"
					 : PQgetvalue(res, 0, 4));
		out->status = data_error ? DB_INVALID : DB_FAILED;
		if (strcmp(sqlstate, "25006") == 0)
		{
			*read_only = true;
			out->status = DB_UNAVAILABLE;
		}
		PQclear(res);
		return true;
	}
	if (!db_parse_row(res, 5, out))
	{
		log_db_error(LOG_ERROR, req->request_id,
					 "ingest returned an unusable row", NULL,
					 "want one row: http_status 200-599, outcome not null");
		PQclear(res);
		out->status = DB_FAILED;
		return true;
	}
	out->status = DB_OK;
	out->pgresult = res;
	return true;
}

/* Seconds from start to now (CLOCK_MONOTONIC) */
static double
seconds_since(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double) (now.tv_sec - start->tv_sec) +
		(double) (now.tv_nsec - start->tv_nsec) / 1e9;
}

/*
 * Store one delivery in a transaction of its own (db_ingest), counted in the
 * batch metrics as a transaction of one delivery, as it is.  A delivery that
 * found no database (answered 503, counted by the rejections' metric) began
 * no transaction, and is not counted as one that failed.
 */
static void
db_ingest_alone(const IngestRequest *req, IngestResult *out)
{
	struct timespec start;
	DbThread   *thread = db_thread_get();

	clock_gettime(CLOCK_MONOTONIC, &start);
	if (thread != NULL && !db_connect(thread, req->request_id))
	{
		memset(out, 0, sizeof(*out));
		out->status = DB_UNAVAILABLE;
		return;
	}
	db_ingest(req, out);
	metrics_batch(1, out->status == DB_OK, seconds_since(&start));
}

/*
 * Lone deliveries of a timed-out batch that may fail before the rest of it
 * is answered 503: one slow delivery fails alone, a database too slow for
 * every delivery (a lock held by a migration) is not waited on a
 * statement_timeout per delivery.  Nor are lone deliveries tried once the
 * batch has taken half of --request-timeout, after which their clients'
 * connections may be closed before an answer.
 */
#define ALONE_TIMEOUTS_MAX 2

/*
 * Store several requests in one transaction (group commit) on this
 * thread's connection: results[i] is set for reqs[i] as by db_ingest().
 * Each delivery runs in its own subtransaction, so a delivery that fails
 * fails alone (one that deadlocked with a concurrent batch is stored again,
 * alone, after the commit).  A result is DB_OK only when the COMMIT
 * succeeded.  If the transaction fails in a way that may be one delivery's
 * (failure_may_be_one_deliverys), each is stored again alone, unless the
 * shutdown deadline has cancelled the queries; otherwise every request gets
 * the failure, and once the lone ones stop (ALONE_TIMEOUTS_MAX, the
 * database unavailable) the rest are answered 503.
 */
void
db_ingest_batch(const IngestRequest *const *reqs, IngestResult *const *results,
				unsigned int n)
{
	DbThread   *thread;
	PGresult  **rows;
	DbStatus	status = DB_FAILED;
	bool		retry_alone = false;
	bool		timed_out = false;
	unsigned int alone_failures = 0;
	unsigned int untried = 0;
	const char *stopped = NULL;
	bool		read_only = false;
	bool		no_database = false;	/* no transaction: not counted in the metrics */
	struct timespec start;

	if (n == 1)
	{
		db_ingest_alone(reqs[0], results[0]);
		return;
	}

	clock_gettime(CLOCK_MONOTONIC, &start);

	for (unsigned int i = 0; i < n; i++)
		memset(results[i], 0, sizeof(IngestResult));
	thread = db_thread_get();
	rows = calloc(n, sizeof(PGresult *));
	if (thread == NULL || rows == NULL)
		log_db_error(LOG_ERROR, reqs[0]->request_id, "batch failed", NULL,
					 "out of memory");
	else if (!db_connect(thread, reqs[0]->request_id))
	{
		status = DB_UNAVAILABLE;
		no_database = true;
	}
	else
	{
		for (int attempt = 0;; attempt++)
		{
			bool		reprepare = false;

			db_set_state(thread, DBCONN_BUSY);
			if ((thread->prepared & (1u << STMT_INGEST_BATCH)) == 0)
				status = db_prepare(thread, STMT_INGEST_BATCH,
									reqs[0]->request_id);
			else
				status = DB_OK;
			if (status == DB_OK)
				status = db_batch_run(thread, reqs, n, rows, &retry_alone,
									  &timed_out, &reprepare);
			/* statement gone (e.g. DISCARD ALL by a pooler): prepare again once */
			if (status != DB_OK && reprepare && attempt == 0 &&
				thread->conn != NULL)
			{
				thread->prepared = 0;
				continue;
			}
			break;
		}
		if (thread->conn != NULL)
			db_set_state(thread, DBCONN_IDLE);
	}
	if (!no_database)
		metrics_batch(n, status == DB_OK, seconds_since(&start));

	if (retry_alone && status == DB_UNAVAILABLE)
		stopped = "the database is unavailable";
	for (unsigned int i = 0; i < n; i++)
	{
		if (status == DB_OK)
		{
			if (!db_batch_result(rows[i], reqs[i], results[i], &read_only))
				db_ingest_alone(reqs[i], results[i]);
			if (read_only && thread->conn != NULL)
				db_drop(thread);
			continue;
		}
		if (retry_alone && stopped == NULL)
		{
			if (db_is_cancelling())
				stopped = "the shim is shutting down";
			else if (seconds_since(&start) * 2 >= (double) shim_config.request_timeout_s)
				stopped = "past half of --request-timeout";
		}
		if (retry_alone && stopped == NULL)
		{
			db_ingest_alone(reqs[i], results[i]);
			if (results[i]->status == DB_UNAVAILABLE)
				stopped = "the database is unavailable";
			else if (timed_out && results[i]->status != DB_OK &&
					 ++alone_failures == ALONE_TIMEOUTS_MAX)
				stopped = "two of its deliveries timed out alone";
		}
		else
		{
			/* not tried alone: the batch's failure is no verdict on this request */
			results[i]->status = status == DB_INVALID ? DB_FAILED : status;
			untried++;
		}
	}
	/* the batch's failure was logged as a warning, expecting lone retries */
	if (retry_alone && untried > 0)
	{
		char		message[160];

		snprintf(message, sizeof(message),
				 "%u of its %u deliveries answered 503, not tried alone: %s",
				 untried, n, stopped);
		log_db_error(LOG_ERROR, reqs[0]->request_id, "batch failed", NULL, message);
	}
	free(rows);
}

/*
 * The HTTP status in the first column of a one-row answer of nfields columns
 * whose first not_null columns are not NULL; false, logged, when the row is
 * not such an answer.
 */
static bool
answer_status(PGresult *res, int nfields, int not_null, const char *request_id,
			  const char *what, unsigned int *status)
{
	const char *text = "";
	char	   *end;
	long		value;
	bool		usable = PQntuples(res) == 1 && PQnfields(res) == nfields;

	for (int i = 0; usable && i < not_null; i++)
		usable = !PQgetisnull(res, 0, i);
	if (usable)
		text = PQgetvalue(res, 0, 0);
	value = strtol(text, &end, 10);
	if (end == text || *end != '\0' || value < 200 || value > 599)
	{
		log_db_error(LOG_ERROR, request_id, what, NULL,
					 "want one row: http_status 200-599, then the other columns");
		return false;
	}
	*status = (unsigned int) value;
	return true;
}

/*
 * Call payments.meta_subscribe() for Meta's GET handshake.  On DB_OK the
 * caller must db_free_result(out->pgresult).
 */
void
db_subscribe(const SubscribeRequest *req, SubscribeResult *out)
{
	const char *values[SUBSCRIBE_NPARAMS] = {req->provider, req->mode,
	req->verify_token, req->challenge};
	PGresult   *res;

	memset(out, 0, sizeof(*out));
	out->status = db_exec(STMT_SUBSCRIBE, values, NULL, NULL,
						  req->request_id, &res);
	if (out->status != DB_OK)
		return;
	if (!answer_status(res, 2, 1, req->request_id,
					   "meta_subscribe returned an unusable row",
					   &out->http_status))
	{
		PQclear(res);
		out->status = DB_FAILED;
		return;
	}
	out->body = PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1);
	out->pgresult = res;
}

/*
 * Call payments.flows_exchange() for a WhatsApp Flows request, with the
 * parameters of an ingest call (the body as a binary parameter).  On DB_OK
 * the caller must db_free_result(out->pgresult).
 */
void
db_flows(const IngestRequest *req, FlowsResult *out)
{
	const char *values[INGEST_NPARAMS];
	int			lengths[INGEST_NPARAMS];
	PGresult   *res;

	memset(out, 0, sizeof(*out));
	ingest_params(req, values, lengths);
	out->status = db_exec(STMT_FLOWS, values, lengths, ingest_formats,
						  req->request_id, &res);
	if (out->status != DB_OK)
		return;
	if (!answer_status(res, 3, 2, req->request_id,
					   "flows_exchange returned an unusable row",
					   &out->http_status))
	{
		PQclear(res);
		out->status = DB_FAILED;
		return;
	}
	/* a 200 closes the donor's Flow: its submission must be durable */
	if (out->http_status >= 200 && out->http_status < 300 &&
		(out->status = db_flush(req->request_id)) != DB_OK)
	{
		PQclear(res);
		return;
	}
	out->outcome = PQgetvalue(res, 0, 1);
	out->body = PQgetisnull(res, 0, 2) ? "" : PQgetvalue(res, 0, 2);
	out->pgresult = res;
}

/*
 * Free the result of a successful db_ingest(), db_subscribe() or db_flows().
 */
void
db_free_result(void *pgresult)
{
	PQclear(pgresult);
}

/*
 * Is this version of the extension one the shim can call?
 */
static bool
db_version_supported(const char *version)
{
	for (size_t i = 0; i < sizeof(supported_versions) / sizeof(supported_versions[0]); i++)
	{
		if (strcmp(version, supported_versions[i]) == 0)
			return true;
	}
	return false;
}

/*
 * Check readiness on this thread's connection: the database answers, is
 * writable, has the extension at a supported version, and lets the shim's
 * role call payments.ingest_batch (else every webhook would get 503).  A
 * read-only server also drops the connection, as for 25006.
 */
static void
db_check_ready(const char *request_id, ReadyResult *out)
{
	PGresult   *res;
	const char *version;
	DbStatus	status;

	memset(out, 0, sizeof(*out));
	status = db_exec(STMT_READY, NULL, NULL, NULL, request_id, &res);
	if (status == DB_UNAVAILABLE)
	{
		out->reason = "database unavailable";
		return;
	}
	if (status != DB_OK)
	{
		out->reason = "database error";
		return;
	}
	if (PQntuples(res) != 1 || PQnfields(res) != 3)
		out->reason = "database error";
	else if (strcmp(PQgetvalue(res, 0, 1), "on") == 0)
	{
		DbThread   *thread = db_thread_get();

		log_db_error(LOG_WARNING, request_id,
					 "database is read-only, dropping the connection", NULL,
					 "transaction_read_only is on");
		db_drop(thread);
		out->reason = "database is read-only";
	}
	else if (PQgetisnull(res, 0, 0))
		out->reason = "extension payments is not installed";
	else
	{
		version = PQgetvalue(res, 0, 0);
		snprintf(out->version, sizeof(out->version), "%s", version);
		if (!db_version_supported(version))
			out->reason = "extension payments is at a version this shim does not support";
		else if (strcmp(PQgetvalue(res, 0, 2), "t") != 0)
			out->reason = "the shim's role may not call payments.ingest_batch (grant it payments_ingest)";
		else
		{
			out->ready = true;
			out->reason = "ready";
		}
	}
	PQclear(res);
}

/*
 * Answer a /ready probe without the database if possible (no database
 * call; for an MHD thread).  Returns true with *out set: the result checked
 * less than READY_CACHE_MS ago; or, while another probe's check is under
 * way, the last result if that check began less than READY_CACHE_MS ago,
 * else "database not answering" (so probes do not pile up, each holding a
 * connection, behind a database that does not answer: one check at a time
 * waits for it).  Returns false when the caller is to make the check
 * (db_ready), or give it up (db_ready_cancel), which it alone may now do.
 */
bool
db_ready_begin(ReadyResult *out)
{
	int64_t		now = now_ms();
	bool		answered = true;

	pthread_mutex_lock(&ready_lock);
	if (ready_valid && now - ready_checked_ms < READY_CACHE_MS)
		*out = ready_cached;
	else if (!ready_running)
	{
		ready_running = true;
		ready_started_ms = now;
		answered = false;
	}
	else if (ready_valid && now - ready_started_ms < READY_CACHE_MS)
		*out = ready_cached;
	else
	{
		memset(out, 0, sizeof(*out));
		out->reason = READY_NOT_ANSWERING;
	}
	pthread_mutex_unlock(&ready_lock);
	return answered;
}

/*
 * The check db_ready_begin() handed to its caller will not be made (the
 * batch threads are ending): let the next probe make one.
 */
void
db_ready_cancel(void)
{
	pthread_mutex_lock(&ready_lock);
	ready_running = false;
	pthread_mutex_unlock(&ready_lock);
}

/*
 * Readiness for GET /ready, checked for the caller of db_ready_begin()
 * that got false.  The result is shared by all threads for READY_CACHE_MS,
 * so frequent probes cost the database at most one query a second; while
 * the database is down the check returns at once (the connection backoff),
 * or after at most the connect timeout.
 */
void
db_ready(const char *request_id, ReadyResult *out)
{
	db_check_ready(request_id, out);

	pthread_mutex_lock(&ready_lock);
	ready_cached = *out;
	ready_checked_ms = now_ms();
	ready_valid = true;
	ready_running = false;
	pthread_mutex_unlock(&ready_lock);
}
