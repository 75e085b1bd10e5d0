/*-------------------------------------------------------------------------
 *
 * db.c
 *	  One libpq connection per MHD worker thread, and the ingest call.
 *
 * Each worker thread lazily opens its own connection and keeps it in
 * thread-specific data; the key's destructor closes it when MHD joins the
 * thread at shutdown.  While the database is down a thread retries with
 * exponential backoff, so requests get a quick 503 instead of each waiting
 * for a connect timeout.
 *
 * shim/db.c
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "shim.h"

#define INGEST_STMT		"payments_ingest"
#define INGEST_SQL \
	"SELECT http_status, outcome, event_id FROM payments.ingest(" \
	"$1::text, $2::jsonb, $3::bytea, $4::inet, $5::text)"
#define INGEST_NPARAMS	5

#define BACKOFF_MIN_MS	250
#define BACKOFF_MAX_MS	5000
#define DEFAULT_CONNECT_TIMEOUT "2"

/* Per-thread connection state */
typedef struct DbThread
{
	PGconn	   *conn;
	bool		prepared;		/* INGEST_STMT exists on conn */
	int64_t		retry_at_ms;	/* no connection attempt before this */
	int			backoff_ms;		/* current delay; 0 after a success */
} DbThread;

static const char *db_dsn;
static bool db_set_connect_timeout;
static pthread_key_t db_key;

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
 * Thread-specific data destructor: close the thread's connection.
 */
static void
db_thread_free(void *arg)
{
	DbThread   *thread = arg;

	PQfinish(thread->conn);
	free(thread);
}

/*
 * Remember the DSN and decide whether to add connect_timeout.  Checks that
 * the DSN parses; on error prints a message to stderr and returns false.
 */
bool
db_init(const char *dsn)
{
	PQconninfoOption *options;
	PQconninfoOption *opt;
	char	   *err = NULL;

	options = PQconninfoParse(dsn, &err);
	if (options == NULL)
	{
		fprintf(stderr, "payments-shim: invalid --dsn: %s",
				err ? err : "out of memory\n");
		PQfreemem(err);
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
log_db_error(const char *level, const char *request_id, const char *what,
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
 * This thread's state, created on first use; NULL if out of memory.
 */
static DbThread *
db_thread_get(void)
{
	DbThread   *thread = pthread_getspecific(db_key);

	if (thread != NULL)
		return thread;
	thread = calloc(1, sizeof(DbThread));
	if (thread != NULL && pthread_setspecific(db_key, thread) != 0)
	{
		free(thread);
		thread = NULL;
	}
	return thread;
}

/*
 * Make sure the thread has a connection.  Returns false at once while the
 * backoff delay after a failed attempt has not yet passed.
 */
static bool
db_connect(DbThread *thread, const char *request_id)
{
	const char *keywords[5];
	const char *values[5];
	int			n = 0;
	PGconn	   *conn;

	if (thread->conn != NULL)
		return true;
	if (now_ms() < thread->retry_at_ms)
		return false;

	/* Keywords after "dbname" override the DSN, those before it do not */
	if (db_set_connect_timeout)
	{
		keywords[n] = "connect_timeout";
		values[n++] = DEFAULT_CONNECT_TIMEOUT;
	}
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
		log_db_error("error", request_id, "database connection failed", NULL,
					 conn ? PQerrorMessage(conn) : "out of memory");
		PQfinish(conn);
		if (thread->backoff_ms == 0)
			thread->backoff_ms = BACKOFF_MIN_MS;
		else if (thread->backoff_ms < BACKOFF_MAX_MS / 2)
			thread->backoff_ms *= 2;
		else
			thread->backoff_ms = BACKOFF_MAX_MS;
		thread->retry_at_ms = now_ms() + thread->backoff_ms;
		return false;
	}

	thread->conn = conn;
	thread->prepared = false;
	thread->backoff_ms = 0;
	log_message("info", "database connected");
	return true;
}

/*
 * Close the thread's connection after it broke; the next request tries to
 * connect again straight away (backoff applies only to failed attempts).
 */
static void
db_drop(DbThread *thread)
{
	PQfinish(thread->conn);
	thread->conn = NULL;
	thread->prepared = false;
	thread->retry_at_ms = 0;
}

/*
 * Classify a failed prepare/execute (res may be NULL) and log it.  A lost
 * connection, SQLSTATE class 08 or an administrator shutdown (57P01-57P03)
 * drops the connection.
 */
static DbStatus
db_failure(DbThread *thread, PGresult *res, const char *what,
		   const char *request_id)
{
	const char *sqlstate = NULL;
	const char *message = NULL;
	bool		data_error;
	bool		lost;

	if (res != NULL)
	{
		sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		if (message == NULL)
			message = PQresultErrorMessage(res);
	}
	if (message == NULL || message[0] == '\0')
		message = PQerrorMessage(thread->conn);

	/* Data exception messages often quote the input, i.e. request data */
	data_error = (sqlstate != NULL && strncmp(sqlstate, "22", 2) == 0);
	if (data_error)
		message = "data exception (message withheld: may quote request data)";
	log_db_error("error", request_id, what, sqlstate, message);

	lost = (res == NULL || PQstatus(thread->conn) != CONNECTION_OK);
	if (sqlstate != NULL &&
		(strncmp(sqlstate, "08", 2) == 0 ||
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
 * Prepare the ingest statement on the thread's connection.
 */
static DbStatus
db_prepare(DbThread *thread, const char *request_id)
{
	PGresult   *res;
	DbStatus	status = DB_OK;

	res = PQprepare(thread->conn, INGEST_STMT, INGEST_SQL, INGEST_NPARAMS,
					NULL);
	if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK)
		thread->prepared = true;
	else
		status = db_failure(thread, res, "prepare failed", request_id);
	PQclear(res);
	return status;
}

/*
 * Check the row returned by payments.ingest() and point "out" into it.
 * Anything but one row with a 2xx-5xx status and an outcome is unusable.
 */
static bool
db_parse_row(PGresult *res, IngestResult *out)
{
	const char *status_text;
	char	   *end;
	long		status;

	if (PQntuples(res) != 1 || PQnfields(res) != 3 ||
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

/*
 * Call payments.ingest() once for a request.  out->status says what
 * happened; on DB_OK the caller must db_result_free(out).  The body is sent
 * as a binary parameter, so its bytes reach the server unchanged.
 */
void
db_ingest(const IngestRequest *req, IngestResult *out)
{
	DbThread   *thread;
	const char *values[INGEST_NPARAMS];
	int			lengths[INGEST_NPARAMS] = {0, 0, 0, 0, 0};
	const int	formats[INGEST_NPARAMS] = {0, 0, 1, 0, 0};
	PGresult   *res;
	int			attempt;

	memset(out, 0, sizeof(*out));
	out->status = DB_FAILED;

	thread = db_thread_get();
	if (thread == NULL)
	{
		log_db_error("error", req->request_id, "ingest failed", NULL,
					 "out of memory");
		return;
	}
	if (!db_connect(thread, req->request_id))
	{
		out->status = DB_UNAVAILABLE;
		return;
	}

	values[0] = req->provider;
	values[1] = req->headers_json;
	/* A NULL pointer would mean SQL NULL, not an empty body */
	values[2] = (req->body != NULL) ? req->body : "";
	lengths[2] = (int) req->body_len;
	values[3] = req->client_ip;
	values[4] = req->request_id;

	for (attempt = 0;; attempt++)
	{
		const char *sqlstate;

		if (!thread->prepared)
		{
			out->status = db_prepare(thread, req->request_id);
			if (out->status != DB_OK)
				return;
		}

		res = PQexecPrepared(thread->conn, INGEST_STMT, INGEST_NPARAMS,
							 values, lengths, formats, 0);
		if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK)
			break;

		/* Statement gone (e.g. DISCARD ALL by a pooler): prepare again once */
		sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
		if (attempt == 0 && sqlstate != NULL &&
			strcmp(sqlstate, "26000") == 0 &&
			PQstatus(thread->conn) == CONNECTION_OK)
		{
			log_db_error("warning", req->request_id,
						 "prepared statement missing, preparing again",
						 sqlstate,
						 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
			thread->prepared = false;
			PQclear(res);
			continue;
		}

		out->status = db_failure(thread, res, "ingest failed",
								 req->request_id);
		PQclear(res);
		return;
	}

	if (!db_parse_row(res, out))
	{
		log_db_error("error", req->request_id,
					 "ingest returned an unusable row", NULL,
					 "want one row: http_status 200-599, outcome not null");
		PQclear(res);
		out->status = DB_FAILED;
		return;
	}
	out->pgresult = res;
	out->status = DB_OK;
}

/*
 * Free the result of a successful db_ingest().
 */
void
db_result_free(IngestResult *res)
{
	PQclear(res->pgresult);
	res->pgresult = NULL;
	res->outcome = NULL;
	res->event_id = NULL;
}
