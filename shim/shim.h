/*-------------------------------------------------------------------------
 *
 * shim.h
 *	  Shared declarations of payments-shim, the HTTP front end that hands
 *	  webhook requests to payments.ingest() in PostgreSQL.
 *
 * shim/shim.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_SHIM_H
#define PAYMENTS_SHIM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

/* Largest accepted X-Request-ID, and room for it plus the terminator */
#define REQUEST_ID_MAX_LEN	128
#define REQUEST_ID_BUFSIZE	(REQUEST_ID_MAX_LEN + 1)

/* Longest provider name allowed by ^[a-z0-9][a-z0-9_-]{0,62}$ */
#define PROVIDER_MAX_LEN	63

/*
 * Growable byte buffer.  When an allocation fails the buffer is marked
 * failed, later appends do nothing, and the caller checks "failed" once at
 * the end (the same idea as libpq's PQExpBuffer "broken" state).
 */
typedef struct StrBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		failed;
} StrBuf;

/* Outcome class of one call to payments.ingest() */
typedef enum DbStatus
{
	DB_OK,						/* function returned a usable row */
	DB_UNAVAILABLE,				/* no connection, or it was lost */
	DB_INVALID,					/* data exception (SQLSTATE class 22) */
	DB_FAILED					/* any other error or an unusable row */
} DbStatus;

/* Input of one call to payments.ingest() */
typedef struct IngestRequest
{
	const char *provider;
	const char *headers_json;
	const char *body;
	size_t		body_len;
	const char *client_ip;		/* NULL when unknown */
	const char *request_id;
} IngestRequest;

/* Output of one call; outcome and event_id point into an owned PGresult */
typedef struct IngestResult
{
	DbStatus	status;
	unsigned int http_status;
	const char *outcome;
	const char *event_id;		/* NULL when the function returned NULL */
	void	   *pgresult;
} IngestResult;

/* Input of one call to payments.meta_subscribe() (Meta's GET handshake) */
typedef struct SubscribeRequest
{
	const char *provider;
	const char *mode;			/* hub.mode, NULL when absent */
	const char *verify_token;	/* hub.verify_token */
	const char *challenge;		/* hub.challenge */
	const char *request_id;
} SubscribeRequest;

/* Output of that call; body points into an owned PGresult */
typedef struct SubscribeResult
{
	DbStatus	status;
	unsigned int http_status;
	const char *body;			/* the challenge to echo, NULL unless 200 */
	void	   *pgresult;
} SubscribeResult;

/* json.c */
extern void buf_init(StrBuf *buf);
extern void buf_free(StrBuf *buf);
extern bool buf_reserve(StrBuf *buf, size_t extra);
extern void buf_append(StrBuf *buf, const char *data, size_t len);
extern void buf_append_str(StrBuf *buf, const char *str);
extern void buf_printf(StrBuf *buf, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));
extern void json_append_string(StrBuf *buf, const char *str, size_t len);
extern void json_append_field(StrBuf *buf, const char *key, const char *value);
extern bool json_build_headers(struct MHD_Connection *conn, StrBuf *out);

/* log.c */
extern void log_begin(StrBuf *line, const char *level);
extern void log_end(StrBuf *line);
extern void log_message(const char *level, const char *msg);
extern void log_mhd(void *cls, const char *fmt, va_list ap);

/* db.c */
extern bool db_init(const char *dsn);
extern void db_ingest(const IngestRequest *req, IngestResult *res);
extern void db_subscribe(const SubscribeRequest *req, SubscribeResult *res);
extern void db_free_result(void *pgresult);

/* http.c */
extern bool http_init(size_t max_body);
extern enum MHD_Result http_handle(void *cls, struct MHD_Connection *conn,
								   const char *url, const char *method,
								   const char *version,
								   const char *upload_data,
								   size_t *upload_data_size,
								   void **req_cls);
extern void http_completed(void *cls, struct MHD_Connection *conn,
						   void **req_cls,
						   enum MHD_RequestTerminationCode toe);
extern void http_begin_drain(void);
extern unsigned int http_in_flight(void);

#endif							/* PAYMENTS_SHIM_H */
