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
#include <sys/socket.h>

#include <microhttpd.h>

#define SHIM_VERSION		"0.1.0"

/* Largest accepted X-Request-ID, and room for it plus the terminator */
#define REQUEST_ID_MAX_LEN	128
#define REQUEST_ID_BUFSIZE	(REQUEST_ID_MAX_LEN + 1)

/* Longest provider name allowed by ^[a-z0-9][a-z0-9_-]{0,62}$ */
#define PROVIDER_MAX_LEN	63

/* Room for an IPv6 address in text form (INET6_ADDRSTRLEN) */
#define IP_TEXT_BUFSIZE		46

/* A W3C traceparent of version 00 is exactly this long */
#define TRACEPARENT_LEN		55

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

/* Log levels, most severe first */
typedef enum LogLevel
{
	LOG_ERROR,
	LOG_WARNING,
	LOG_INFO,
	LOG_DEBUG
} LogLevel;

/* An IP address; IPv4 is kept IPv4-mapped (::ffff:a.b.c.d) */
typedef struct IpAddr
{
	unsigned char b[16];
} IpAddr;

/* An address range: the first "bits" bits of addr */
typedef struct Cidr
{
	IpAddr		addr;
	unsigned int bits;
} Cidr;

/* Settings, parsed once at start and read-only afterwards */
typedef struct ShimConfig
{
	struct sockaddr_storage addr;
	uint16_t	port;			/* also in addr; MHD's messages show this */
	const char *dsn;
	unsigned int threads;
	unsigned int batch_max;		/* deliveries per transaction at most */
	unsigned int batch_concurrency;	/* transactions of deliveries at once */
	size_t		max_body;
	size_t		max_header;
	unsigned int max_connections;
	unsigned int max_connections_per_ip;	/* 0: no limit */
	unsigned int idle_timeout_s;
	unsigned int request_timeout_s;
	unsigned int rate;			/* requests per second per client; 0: off */
	unsigned int rate_burst;
	Cidr	   *rate_exempt;		/* clients the rate limit does not apply to */
	size_t		n_rate_exempt;
	unsigned int rate_ipv6_prefix;	/* IPv6 clients share a bucket per prefix */
	Cidr	   *trusted_proxies;
	size_t		n_trusted_proxies;
	LogLevel	log_level;
	const char *log_file;		/* NULL: stderr */
	unsigned int shutdown_timeout_s;
	char	   *tls_cert;		/* PEM contents, NULL without TLS */
	char	   *tls_key;
} ShimConfig;

extern ShimConfig shim_config;

/*
 * What a request is, by its path: the "route" label of the metrics and the
 * work done on the final call.
 */
typedef enum Route
{
	ROUTE_OTHER,				/* no such route (404), or refused by MHD */
	ROUTE_WEBHOOK,				/* POST /webhooks/{provider} */
	ROUTE_SUBSCRIBE,			/* GET /webhooks/{provider}: Meta's handshake */
	ROUTE_HEALTH,
	ROUTE_READY,
	ROUTE_METRICS,
	ROUTE_FLOWS,				/* POST /flows/{provider}: WhatsApp Flows data */
	ROUTE_COUNT
} Route;

/* Why the shim itself refused or dropped a request (a metrics label) */
typedef enum Rejection
{
	REJECT_BODY_TOO_LARGE,		/* 413, ours or libmicrohttpd's */
	REJECT_HEADER_TOO_LARGE,	/* 431 */
	REJECT_URI_TOO_LONG,		/* 414, from libmicrohttpd */
	REJECT_MALFORMED,			/* 400, from libmicrohttpd */
	REJECT_NOT_FOUND,			/* 404: no such route or bad provider name */
	REJECT_METHOD_NOT_ALLOWED,	/* 405 */
	REJECT_RATE_LIMITED,		/* 429 */
	REJECT_DATABASE_UNAVAILABLE,	/* 503: no database connection */
	REJECT_DATABASE_ERROR,		/* 503/400: the call failed */
	REJECT_REQUEST_TIMEOUT,		/* connection closed by --request-timeout */
	REJECT_CONNECTION_LIMIT,	/* connection refused by a connection limit */
	REJECT_OVERLOADED,			/* 503: as many requests wait for the database as may */
	REJECT_COUNT
} Rejection;

/* State of one worker thread's database connection (a metrics gauge) */
typedef enum DbConnState
{
	DBCONN_NONE,				/* never needed yet */
	DBCONN_IDLE,
	DBCONN_BUSY,
	DBCONN_BROKEN,				/* lost or failed, not made again yet (batch.c
								 * retries it in the background) */
	DBCONN_COUNT
} DbConnState;

/* Outcome class of one call to the database */
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

/* Why batch.c resumed a delivery without sending it to the database */
typedef enum Unsent
{
	UNSENT_NO,					/* it was sent (res holds the outcome), or is to be */
	UNSENT_BUSY,				/* too many requests waited for the database */
	UNSENT_TIMEOUT				/* its request timed out while it was queued */
} Unsent;

/* A delivery waiting for its batch (batch.c); its connection is suspended */
typedef struct PendingIngest
{
	struct PendingIngest *next;	/* in the queue */
	IngestRequest req;
	IngestResult res;			/* set by the batch thread */
	int64_t		deadline_ms;	/* its request's timeout (conn_deadline_ms) */
	Unsent		unsent;			/* set by batch.c */
	struct MHD_Connection *conn;	/* resumed once res is set */
} PendingIngest;

/*
 * A database call made for one request (Meta's handshake, a Flows exchange,
 * the readiness check) on a batch thread, so that no MHD thread waits for
 * the database, with the request's connection suspended meanwhile.
 */
typedef struct PendingCall
{
	struct PendingCall *next;	/* in the queue */
	void		(*run) (struct PendingCall *call);	/* makes the call, sets its result */
	bool		bounded;		/* counts against the bound on waiting requests */
	bool		busy;			/* not run: too many requests waited (bounded only) */
	bool		done;			/* run returned (false: not run, busy or at shutdown) */
	struct MHD_Connection *conn;	/* resumed once done is set */
} PendingCall;

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

/*
 * Output of one call to payments.flows_exchange() (input: an IngestRequest);
 * outcome and body point into an owned PGresult.
 */
typedef struct FlowsResult
{
	DbStatus	status;
	unsigned int http_status;
	const char *outcome;
	const char *body;			/* plain text: encrypted for 200 and 427 */
	void	   *pgresult;
} FlowsResult;

/* The reason of a /ready probe answered while another's check waits */
#define READY_NOT_ANSWERING "database not answering"

/* Result of the readiness check; reason is a static string */
typedef struct ReadyResult
{
	bool		ready;
	const char *reason;
	char		version[32];	/* extension version, "" when unknown */
} ReadyResult;

/* addr.c */
extern bool ip_from_sockaddr(const struct sockaddr *sa, IpAddr *out);
extern void ip_format(const IpAddr *ip, char *out, size_t outsize);
extern bool cidr_parse(const char *text, size_t len, Cidr *out);
extern bool ip_in_ranges(const IpAddr *ip, const Cidr *ranges, size_t n);
extern void ip_client_key(const IpAddr *ip, unsigned int ipv6_prefix, IpAddr *out);
extern void client_ip_forwarded(struct MHD_Connection *conn,
								const IpAddr *peer, IpAddr *client);

/* conn.c */
extern void conn_notify(void *cls, struct MHD_Connection *conn,
						void **socket_context,
						enum MHD_ConnectionNotificationCode code);
extern void conn_request_begin(struct MHD_Connection *conn);
extern void conn_request_done(struct MHD_Connection *conn);
extern void conn_expire(void);
extern int64_t conn_deadline_ms(struct MHD_Connection *conn);
extern int64_t conn_now_ms(void);
extern unsigned int conn_open_count(void);
extern enum MHD_Result conn_admit(void *cls, const struct sockaddr *addr,
								  socklen_t addrlen);

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
extern bool log_open(const char *path, LogLevel level);
extern bool log_reopen(void);
extern void log_close(void);
extern void log_begin(StrBuf *line, LogLevel level);
extern void log_end(StrBuf *line);
extern void log_message(LogLevel level, const char *msg);
extern void log_mhd(void *cls, const char *fmt, va_list ap);
extern void log_refused_connection(void);
extern void log_mhd_summary(void);

/* metrics.c */
extern void metrics_init(void);
extern void metrics_request(Route route, const char *provider,
							unsigned int status, double seconds);
extern void metrics_learn_provider(const char *provider);
extern void metrics_outcome(const char *provider, const char *outcome);
extern void metrics_reject(Rejection reason);
extern void metrics_db_state(DbConnState from, DbConnState to);
extern void metrics_db_connect(bool ok, bool reconnect);
extern void metrics_batch(unsigned int size, bool committed, double seconds);
extern void metrics_render(StrBuf *out);

/* ratelimit.c */
extern bool ratelimit_init(void);
extern bool ratelimit_take(const IpAddr *ip, unsigned int *retry_after_s);

/* db.c */
extern bool db_init(const char *dsn, const char *source);
extern void db_ingest_batch(const IngestRequest *const *reqs,
							IngestResult *const *results, unsigned int n);
extern void db_subscribe(const SubscribeRequest *req, SubscribeResult *res);
extern void db_flows(const IngestRequest *req, FlowsResult *res);
extern bool db_ready_begin(ReadyResult *res);
extern void db_ready(const char *request_id, ReadyResult *res);
extern void db_ready_cancel(void);
extern bool db_reconnect_due(int64_t *at_ms);
extern void db_reconnect(void);
extern void db_cancel_all(void);
extern void db_free_result(void *pgresult);

/* pgarray.c */
extern void pgarray_start(StrBuf *buf, uint32_t elemtype, unsigned int n);
extern void pgarray_add(StrBuf *buf, const char *data, size_t len);
extern void pgarray_add_jsonb(StrBuf *buf, const char *json);

/* batch.c */
extern bool batch_start(void);
extern void batch_submit(PendingIngest *item);
extern void batch_call(PendingCall *call);
extern void batch_expire(void);
extern void batch_abandon(void);
extern void batch_stop(void);

/* http.c */
extern bool http_init(void);
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
