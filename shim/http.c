/*-------------------------------------------------------------------------
 *
 * http.c
 *	  Request handling: routing, limits, body accumulation, responses, the
 *	  request log line and request metrics.
 *
 * MHD calls http_handle() first with *req_cls == NULL (headers only), then
 * once per body chunk, then a final time with *upload_data_size == 0.  We
 * answer errors on the first call (so no body is read and no "100 Continue"
 * is sent; libmicrohttpd 0.9.75 then closes the connection), and good
 * requests on the final call, which keeps keep-alive working.  A webhook's
 * connection is suspended while its delivery waits for its batch (batch.c);
 * resumed, MHD makes the final call again, which answers.  So is that of
 * every other request that needs the database (Meta's handshake, a Flows
 * exchange, /ready), whose call a batch thread makes: an MHD thread never
 * waits for the database, and /health and /metrics answer whatever it
 * does (the requests that wait for it are bounded, batch.c, so that they
 * leave connections free; over the bound they get 503 at once; /ready
 * probes wait one at a time, finish_ready).  Per-request
 * state is freed in http_completed(), which MHD runs on every path; it also
 * writes the log line and counts the request.
 *
 * Checks on the first call, in order: header size (431), control
 * characters, header names and framing (400, 501), Host (400), then per
 * route:
 * method (405), provider name (404), the client's token bucket (429), and
 * Content-Length (413).
 *
 * shim/http.c
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "shim.h"

#define WEBHOOK_PREFIX		"/webhooks/"
#define WEBHOOK_PREFIX_LEN	(sizeof(WEBHOOK_PREFIX) - 1)
#define FLOWS_PREFIX		"/flows/"
#define FLOWS_PREFIX_LEN	(sizeof(FLOWS_PREFIX) - 1)
#define REQUEST_ID_HEADER	"X-Request-ID"
#define TRACEPARENT_HEADER	"traceparent"
#define RETRY_AFTER_UNAVAILABLE_S 5
#define JSON_TYPE			"application/json"
#define TEXT_TYPE			"text/plain"
#define METRICS_TYPE		"text/plain; version=0.0.4; charset=utf-8"

/* Per-request state, hung on MHD's *req_cls */
typedef struct Request
{
	struct timespec start;
	Route		route;
	char		request_id[REQUEST_ID_BUFSIZE];
	char		traceparent[TRACEPARENT_LEN + 1];	/* "" unless valid */
	bool		has_ip;
	IpAddr		client;			/* peer, or from X-Forwarded-For */
	char		client_ip[IP_TEXT_BUFSIZE];
	char		peer_ip[IP_TEXT_BUFSIZE];	/* "" unless not the client */
	char		method[16];		/* truncated copies, for the log */
	char		path[256];
	char		provider[PROVIDER_MAX_LEN + 1];	/* "" unless a valid name */
	StrBuf		body;
	bool		too_large;		/* body passed max_body while streaming */
	size_t		discarded;		/* bytes received beyond max_body */
	unsigned int retry_after_s; /* Retry-After to send, 0 for none */
	unsigned int status;		/* 0 until a response is queued */
	bool		close;			/* answer with Connection: close */
	char		outcome[64];	/* "" unless the database answered */
	bool		pending;		/* handed to batch.c, suspended */
	StrBuf		headers;		/* a webhook's or Flows exchange's headers as JSON, until answered */
	PendingIngest ingest;		/* a webhook's delivery */
	PendingCall call;			/* another route's database call */
	SubscribeRequest subscribe_in;
	SubscribeResult subscribe_out;
	FlowsResult flows_out;		/* (its input: ingest.req) */
	ReadyResult ready;
	bool		ready_check;	/* this /ready probe's call makes the check */
} Request;

static atomic_uint in_flight;
static atomic_bool draining;

/*
 * Fill "out" with a random UUIDv4 (RFC 9562) in canonical text form.
 */
static bool
new_request_id(char *out)
{
	unsigned char b[16];
	size_t		got = 0;

	while (got < sizeof(b))
	{
		ssize_t		n = getrandom(b + got, sizeof(b) - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		got += (size_t) n;
	}
	b[6] = (unsigned char) ((b[6] & 0x0F) | 0x40);
	b[8] = (unsigned char) ((b[8] & 0x3F) | 0x80);
	snprintf(out, REQUEST_ID_BUFSIZE,
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
			 "%02x%02x%02x%02x%02x%02x",
			 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
			 b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	return true;
}

/*
 * Check that request ids can be generated.
 */
bool
http_init(void)
{
	char		probe[REQUEST_ID_BUFSIZE];

	return new_request_id(probe);
}

/*
 * Stop keep-alive from here on: every later response closes its connection.
 */
void
http_begin_drain(void)
{
	atomic_store(&draining, true);
}

/*
 * Number of requests started and not yet completed.
 */
unsigned int
http_in_flight(void)
{
	return atomic_load(&in_flight);
}

/*
 * Is s an acceptable client-supplied request id: 1-128 of [A-Za-z0-9._:-]?
 */
static bool
valid_request_id(const char *s)
{
	size_t		len = strspn(s,
							 "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
							 "abcdefghijklmnopqrstuvwxyz"
							 "0123456789._:-");

	return len >= 1 && len <= REQUEST_ID_MAX_LEN && s[len] == '\0';
}

/*
 * Does s match ^[a-z0-9][a-z0-9_-]{0,62}$ ?
 */
static bool
valid_provider(const char *s)
{
	size_t		first = strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789");
	size_t		len;

	if (first == 0)
		return false;
	len = strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_-");
	return len <= PROVIDER_MAX_LEN && s[len] == '\0';
}

/*
 * Is s all lower-case hex digits, and not all zeros (when nonzero is set)?
 */
static bool
lower_hex(const char *s, size_t len, bool nonzero)
{
	bool		zero = true;

	for (size_t i = 0; i < len; i++)
	{
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
		if (s[i] != '0')
			zero = false;
	}
	return !(nonzero && zero);
}

/*
 * Is s a W3C Trace Context traceparent: version-traceid-parentid-flags,
 * lower-case hex, ids not all zero, version not ff, and nothing after the
 * flags for version 00 (later versions may append "-..." fields)?
 */
static bool
valid_traceparent(const char *s)
{
	size_t		len = strlen(s);

	if (len < TRACEPARENT_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-')
		return false;
	if (!lower_hex(s, 2, false) || strncmp(s, "ff", 2) == 0 ||
		!lower_hex(s + 3, 32, true) || !lower_hex(s + 36, 16, true) ||
		!lower_hex(s + 53, 2, false))
		return false;
	if (strncmp(s, "00", 2) == 0)
		return len == TRACEPARENT_LEN;
	return len == TRACEPARENT_LEN || s[TRACEPARENT_LEN] == '-';
}

/*
 * Work out the client's address: the peer, or from X-Forwarded-For when
 * the peer is a trusted proxy.
 */
static void
client_address(struct MHD_Connection *conn, Request *req)
{
	const union MHD_ConnectionInfo *info;
	IpAddr		peer;

	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (info == NULL || info->client_addr == NULL ||
		!ip_from_sockaddr(info->client_addr, &peer))
		return;
	req->has_ip = true;
	client_ip_forwarded(conn, &peer, &req->client);
	ip_format(&req->client, req->client_ip, sizeof(req->client_ip));
	if (memcmp(&peer, &req->client, sizeof(peer)) != 0)
		ip_format(&peer, req->peer_ip, sizeof(req->peer_ip));
}

/*
 * Does a Content-Length header announce more than max_body bytes?
 * (MHD has already rejected malformed values.)
 */
static bool
content_length_too_large(const char *value, unsigned long long *length)
{
	char	   *end;

	errno = 0;
	*length = strtoull(value, &end, 10);
	if (end == value || errno == ERANGE)
		return true;
	return *length > shim_config.max_body;
}

/*
 * Queue a response with our standard headers (Content-Type, X-Request-ID,
 * Retry-After on 429 and 503, Allow when given, Connection: close while
 * draining or when req->close is set).
 */
static enum MHD_Result
reply(struct MHD_Connection *conn, Request *req, unsigned int status,
	  const char *content_type, const char *data, size_t len,
	  const char *allow)
{
	struct MHD_Response *resp;
	bool		ok;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(len, (void *) data,
										   MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;

	if (status == MHD_HTTP_SERVICE_UNAVAILABLE && req->retry_after_s == 0)
		req->retry_after_s = RETRY_AFTER_UNAVAILABLE_S;
	ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
								 content_type) == MHD_YES &&
		MHD_add_response_header(resp, REQUEST_ID_HEADER,
								req->request_id) == MHD_YES;
	if (ok && req->retry_after_s > 0)
	{
		char		seconds[16];

		snprintf(seconds, sizeof(seconds), "%u", req->retry_after_s);
		ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER,
									 seconds) == MHD_YES;
	}
	if (ok && allow != NULL)
		ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
									 allow) == MHD_YES;
	if (ok && (req->close || atomic_load(&draining)))
		ok = MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION,
									 "close") == MHD_YES;

	ret = ok ? MHD_queue_response(conn, status, resp) : MHD_NO;
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
		req->status = status;
	return ret;
}

/*
 * Queue a JSON body built in a buffer.
 */
static enum MHD_Result
reply_json(struct MHD_Connection *conn, Request *req, unsigned int status,
		   const StrBuf *body)
{
	if (body->failed)
		return MHD_NO;
	return reply(conn, req, status, JSON_TYPE, body->data, body->len, NULL);
}

/*
 * Queue {"error":"<message>"} with the given status.
 */
static enum MHD_Result
reply_message(struct MHD_Connection *conn, Request *req, unsigned int status,
			  const char *message, const char *allow)
{
	StrBuf		body;
	enum MHD_Result ret;

	buf_init(&body);
	buf_append_str(&body, "{\"error\":");
	json_append_string(&body, message, strlen(message));
	buf_append_str(&body, "}");
	ret = body.failed ? MHD_NO :
		reply(conn, req, status, JSON_TYPE, body.data, body.len, allow);
	buf_free(&body);
	return ret;
}

/*
 * Refuse a request with {"error":"<message>"}, and count why.
 */
static enum MHD_Result
reply_error(struct MHD_Connection *conn, Request *req, unsigned int status,
			Rejection reason, const char *message, const char *allow)
{
	metrics_reject(reason);
	return reply_message(conn, req, status, message, allow);
}

/*
 * 503 at once, with Connection: close (the connection is freed), while as
 * many requests wait for the database as may (batch.c).
 */
static enum MHD_Result
reply_busy(struct MHD_Connection *conn, Request *req)
{
	req->close = true;
	return reply_error(conn, req, MHD_HTTP_SERVICE_UNAVAILABLE, REJECT_OVERLOADED,
					   "too many requests waiting for the database", NULL);
}

/*
 * Allocate the state of a new request; NULL if out of memory or no request
 * id could be made.
 */
static Request *
request_new(struct MHD_Connection *conn, const char *url, const char *method)
{
	Request    *req = calloc(1, sizeof(Request));
	const char *given;

	if (req == NULL)
		return NULL;
	clock_gettime(CLOCK_MONOTONIC, &req->start);
	buf_init(&req->body);
	buf_init(&req->headers);
	snprintf(req->method, sizeof(req->method), "%s", method);
	snprintf(req->path, sizeof(req->path), "%s", url);
	client_address(conn, req);

	given = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
										TRACEPARENT_HEADER);
	if (given != NULL && valid_traceparent(given))
		snprintf(req->traceparent, sizeof(req->traceparent), "%s", given);

	given = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
										REQUEST_ID_HEADER);
	if (given != NULL && valid_request_id(given))
		snprintf(req->request_id, sizeof(req->request_id), "%s", given);
	else if (!new_request_id(req->request_id))
	{
		log_message(LOG_ERROR, "getrandom failed, cannot make a request id");
		free(req);
		return NULL;
	}
	return req;
}

/*
 * The route of a path (the metrics label, and what the final call does).
 */
static Route
route_of(const char *url, const char *method)
{
	if (strncmp(url, WEBHOOK_PREFIX, WEBHOOK_PREFIX_LEN) == 0)
		return strcmp(method, MHD_HTTP_METHOD_GET) == 0
			? ROUTE_SUBSCRIBE : ROUTE_WEBHOOK;
	if (strncmp(url, FLOWS_PREFIX, FLOWS_PREFIX_LEN) == 0)
		return ROUTE_FLOWS;
	if (strcmp(url, "/health") == 0)
		return ROUTE_HEALTH;
	if (strcmp(url, "/ready") == 0)
		return ROUTE_READY;
	if (strcmp(url, "/metrics") == 0)
		return ROUTE_METRICS;
	return ROUTE_OTHER;
}

/*
 * Are the request line and headers over --max-header bytes?
 */
static bool
headers_too_large(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info;

	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
	return info != NULL && info->header_size > shim_config.max_header;
}

/*
 * Does s hold a control character other than tab (NUL, a bare CR or LF)?
 */
static bool
has_control(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if ((c < 0x20 && c != '\t') || c == 0x7F)
			return true;
	}
	return false;
}

/*
 * MHD iterator: clear the flag passed as cls at a header whose name or
 * value holds a control character.
 */
static enum MHD_Result
check_header_bytes(void *cls, enum MHD_ValueKind kind,
				   const char *key, size_t key_size,
				   const char *value, size_t value_size)
{
	bool	   *clean = cls;

	(void) kind;
	if (has_control(key, key_size) || (value != NULL && has_control(value, value_size)))
	{
		*clean = false;
		return MHD_NO;
	}
	return MHD_YES;
}

/*
 * Are the request headers free of control characters?  RFC 9110 section
 * 5.5 lets a recipient refuse CR, LF and NUL in a field; passed on, a value
 * could differ from what a proxy in front of us saw (one that ends at a NUL
 * for one reader and not for another).
 */
static bool
headers_clean(struct MHD_Connection *conn)
{
	bool		clean = true;

	MHD_get_connection_values_n(conn, MHD_HEADER_KIND, check_header_bytes, &clean);
	return clean;
}

/*
 * Is c a tchar, a byte a header name may hold (RFC 9110 section 5.6.2)?
 */
static bool
is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') ||
		(c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * MHD iterator: clear the flag passed as cls at a header whose name is not
 * a token (RFC 9110 section 5.1): empty, or holding a space, a tab, a
 * separator or a byte outside ASCII.
 */
static enum MHD_Result
check_header_name(void *cls, enum MHD_ValueKind kind,
				  const char *key, size_t key_size,
				  const char *value, size_t value_size)
{
	bool	   *valid = cls;
	bool		token = key_size > 0;

	(void) kind;
	(void) value;
	(void) value_size;
	for (size_t i = 0; i < key_size && token; i++)
		token = is_tchar((unsigned char) key[i]);
	if (!token)
		*valid = false;
	return token ? MHD_YES : MHD_NO;
}

/*
 * Are all request header names tokens?  libmicrohttpd 0.9.75 keeps the
 * whitespace before the colon in the name ("Authorization : x" is a header
 * "Authorization "), which then escapes every check by name: the framing
 * below ("Content-Length : 2" would be no length at all, its body read as
 * the next request), the extension's removal of the Authorization header
 * before it stores the headers.  RFC 9112 section 5.1 makes such a request
 * a 400.  (libmicrohttpd appends a folded line to the previous name, and
 * ends the headers at a line with an empty name: only the first is caught
 * here, when the folded text is not all token characters; README, Limits.)
 */
static bool
header_names_valid(struct MHD_Connection *conn)
{
	bool		valid = true;

	MHD_get_connection_values_n(conn, MHD_HEADER_KIND, check_header_name, &valid);
	return valid;
}

/* The framing headers of a request, as count_framing_headers found them */
typedef struct Framing
{
	unsigned int content_lengths;	/* Content-Length headers */
	unsigned int encodings;		/* Transfer-Encoding headers */
	bool		plain_chunked;	/* the first of them is "chunked" alone */
	unsigned int chunked;		/* "chunked" codings in all of them */
	unsigned int others;		/* other codings */
	bool		last_chunked;	/* the last coding is "chunked" */
} Framing;

/*
 * Note the codings of one Transfer-Encoding value (a comma-separated list;
 * empty elements are skipped, as RFC 9110 section 5.6.1 allows).
 */
static void
note_codings(Framing *framing, const char *value, size_t len)
{
	size_t		i = 0;

	while (i < len)
	{
		size_t		start;
		size_t		end;

		while (i < len && (value[i] == ' ' || value[i] == '\t'))
			i++;
		start = i;
		while (i < len && value[i] != ',')
			i++;
		end = i;
		while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
			end--;
		if (i < len)
			i++;				/* the comma */
		if (end == start)
			continue;
		framing->last_chunked = (end - start == 7 &&
								 strncasecmp(value + start, "chunked", 7) == 0);
		if (framing->last_chunked)
			framing->chunked++;
		else
			framing->others++;
	}
}

/* MHD iterator: count the Content-Length headers and note Transfer-Encoding */
static enum MHD_Result
count_framing_headers(void *cls, enum MHD_ValueKind kind,
					  const char *key, size_t key_size,
					  const char *value, size_t value_size)
{
	Framing    *framing = cls;

	(void) kind;
	(void) key_size;
	if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
		framing->content_lengths++;
	else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
	{
		if (framing->encodings++ == 0)
			framing->plain_chunked = value != NULL &&
				strcasecmp(value, "chunked") == 0;
		if (value != NULL)
			note_codings(framing, value, value_size);
	}
	return MHD_YES;
}

/*
 * Is the body's framing unambiguous, and one we can read?  Returns 0 if so;
 * else the status to answer (400 or 501), with *message set.
 *
 * Two Content-Length headers, or one beside Transfer-Encoding, are read
 * differently by different servers (libmicrohttpd takes the first length, or
 * the chunked encoding): a proxy in front of us that read them otherwise
 * would see other requests than we do.  RFC 9112 section 6.3 makes them an
 * error.  libmicrohttpd reads a chunked body only when the one
 * Transfer-Encoding header is exactly "chunked"; with any other value it
 * would wait for the end of the stream.  So any other is refused at once:
 * 501 for a coding we do not implement before a final chunked (RFC 9112
 * section 6.1), 400 when chunked is not the last coding or comes twice (two
 * "Transfer-Encoding: chunked" lines too; section 6.3), or the value is
 * spelled otherwise (a list with an empty element, spaces after the word).
 */
static unsigned int
framing_error(struct MHD_Connection *conn, const char **message)
{
	Framing		framing = {0};

	MHD_get_connection_values_n(conn, MHD_HEADER_KIND, count_framing_headers, &framing);
	if (framing.content_lengths > 1 ||
		(framing.content_lengths == 1 && framing.encodings > 0))
	{
		*message = "conflicting Content-Length or Transfer-Encoding headers";
		return MHD_HTTP_BAD_REQUEST;
	}
	if (framing.encodings == 0 ||
		(framing.encodings == 1 && framing.plain_chunked))
		return 0;
	*message = "unsupported Transfer-Encoding: only chunked, alone, is accepted";
	if (framing.last_chunked && framing.chunked == 1 && framing.others > 0)
		return MHD_HTTP_NOT_IMPLEMENTED;
	return MHD_HTTP_BAD_REQUEST;
}

/* MHD iterator: count the Host headers into the unsigned int passed as cls */
static enum MHD_Result
count_host_headers(void *cls, enum MHD_ValueKind kind,
				   const char *key, size_t key_size,
				   const char *value, size_t value_size)
{
	unsigned int *hosts = cls;

	(void) kind;
	(void) value;
	(void) value_size;
	if (key_size == strlen(MHD_HTTP_HEADER_HOST) &&
		strncasecmp(key, MHD_HTTP_HEADER_HOST, key_size) == 0)
		(*hosts)++;
	return MHD_YES;
}

/*
 * Does the request break RFC 9112 section 3.2 on Host?  Returns NULL if not;
 * else the message to answer 400 with.  An HTTP/1.1 request (or a later 1.x,
 * which libmicrohttpd reads as 1.1) must carry a Host header; one of any
 * version may not carry two, which a proxy in front of us could read
 * otherwise than we do.  HTTP/1.0 needs none.  libmicrohttpd 0.9.75 checks
 * only for a missing Host, and only with MHD_OPTION_STRICT_FOR_CLIENT, which
 * answers an HTML page (its status line and headers sent twice) and also
 * drops, unanswered, any request line with a space in its path.
 */
static const char *
host_error(struct MHD_Connection *conn, const char *version)
{
	unsigned int hosts = 0;

	MHD_get_connection_values_n(conn, MHD_HEADER_KIND, count_host_headers, &hosts);
	if (hosts > 1)
		return "more than one Host header";
	if (hosts == 0 && strcmp(version, MHD_HTTP_VERSION_1_0) != 0)
		return "missing Host header (required in HTTP/1.1)";
	return NULL;
}

/*
 * First call for a provider's route (/webhooks/{provider}: POST, and GET for
 * Meta's handshake; /flows/{provider}: POST): check method, provider name,
 * rate and, for a POST, the declared length.
 */
static enum MHD_Result
start_provider_route(struct MHD_Connection *conn, Request *req,
					 const char *provider, const char *method)
{
	bool		get_allowed = req->route != ROUTE_FLOWS;
	const char *length_header;
	unsigned long long length;

	/* named first, so that a 405 counts under a known provider's name */
	if (valid_provider(provider))
		snprintf(req->provider, sizeof(req->provider), "%s", provider);
	if (strcmp(method, MHD_HTTP_METHOD_POST) != 0 &&
		!(get_allowed && strcmp(method, MHD_HTTP_METHOD_GET) == 0))
		return reply_error(conn, req, MHD_HTTP_METHOD_NOT_ALLOWED,
						   REJECT_METHOD_NOT_ALLOWED, "method not allowed",
						   get_allowed ? "GET, POST" : "POST");
	if (!valid_provider(provider))
		return reply_error(conn, req, MHD_HTTP_NOT_FOUND, REJECT_NOT_FOUND,
						   "not found", NULL);

	if (req->has_ip && !ratelimit_take(&req->client, &req->retry_after_s))
		return reply_error(conn, req, MHD_HTTP_TOO_MANY_REQUESTS,
						   REJECT_RATE_LIMITED, "too many requests", NULL);
	if (req->route == ROUTE_SUBSCRIBE)
		return MHD_YES;

	length_header = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
												MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (length_header != NULL)
	{
		if (content_length_too_large(length_header, &length))
			return reply_error(conn, req, MHD_HTTP_CONTENT_TOO_LARGE,
							   REJECT_BODY_TOO_LARGE, "request body too large",
							   NULL);
		buf_reserve(&req->body, (size_t) length);
	}
	return MHD_YES;
}

/*
 * First call for a request: route it.  Errors are answered at once; for a
 * valid request return MHD_YES and wait for the body and the final call.
 */
static enum MHD_Result
start_request(struct MHD_Connection *conn, Request *req,
			  const char *url, const char *method, const char *version)
{
	unsigned int status;
	const char *message;

	req->route = route_of(url, method);
	if (headers_too_large(conn))
		return reply_error(conn, req, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE,
						   REJECT_HEADER_TOO_LARGE,
						   "request header fields too large", NULL);
	if (!headers_clean(conn))
		return reply_error(conn, req, MHD_HTTP_BAD_REQUEST, REJECT_MALFORMED,
						   "control character in a request header", NULL);
	if (!header_names_valid(conn))
	{
		/* the body's length may be in the header refused */
		req->close = true;
		return reply_error(conn, req, MHD_HTTP_BAD_REQUEST, REJECT_MALFORMED,
						   "invalid request header name", NULL);
	}
	if ((status = framing_error(conn, &message)) != 0)
	{
		/* what follows the headers cannot be told from a next request */
		req->close = true;
		return reply_error(conn, req, status, REJECT_MALFORMED, message, NULL);
	}
	if ((message = host_error(conn, version)) != NULL)
		return reply_error(conn, req, MHD_HTTP_BAD_REQUEST, REJECT_MALFORMED,
						   message, NULL);

	switch (req->route)
	{
		case ROUTE_WEBHOOK:
		case ROUTE_SUBSCRIBE:
			return start_provider_route(conn, req, url + WEBHOOK_PREFIX_LEN,
										method);
		case ROUTE_FLOWS:
			return start_provider_route(conn, req, url + FLOWS_PREFIX_LEN,
										method);
		case ROUTE_HEALTH:
		case ROUTE_READY:
		case ROUTE_METRICS:
			if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
				strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
				return reply_error(conn, req, MHD_HTTP_METHOD_NOT_ALLOWED,
								   REJECT_METHOD_NOT_ALLOWED,
								   "method not allowed", "GET, HEAD");
			return MHD_YES;
		case ROUTE_OTHER:
		case ROUTE_COUNT:
			break;
	}
	return reply_error(conn, req, MHD_HTTP_NOT_FOUND, REJECT_NOT_FOUND,
					   "not found", NULL);
}

/*
 * Final call for GET /health: the process is alive (no database check).
 */
static enum MHD_Result
finish_health(struct MHD_Connection *conn, Request *req)
{
	static const char body[] = "{\"status\":\"ok\"}";

	return reply(conn, req, MHD_HTTP_OK, JSON_TYPE, body, strlen(body), NULL);
}

/* The request a call belongs to */
static Request *
request_of_call(PendingCall *call)
{
	return (Request *) ((char *) call - offsetof(Request, call));
}

/*
 * Hand a request's database call (run) to a batch thread, its connection
 * suspended until it is made; MHD then makes the final call again.  A
 * bounded call counts against the bound on requests waiting for the
 * database (batch.c).
 */
static enum MHD_Result
call_off_thread(struct MHD_Connection *conn, Request *req,
				void (*run) (PendingCall *call), bool bounded)
{
	req->pending = true;
	req->call.run = run;
	req->call.bounded = bounded;
	req->call.conn = conn;
	/* suspended first: the batch thread may resume it at once */
	MHD_suspend_connection(conn);
	batch_call(&req->call);
	return MHD_YES;
}

/* The readiness check (on a batch thread) */
static void
run_ready(PendingCall *call)
{
	Request    *req = request_of_call(call);

	db_ready(req->request_id, &req->ready);
}

/*
 * Final call for GET /ready: 200 when the database answers, is writable
 * and has a supported version of the extension; else 503 with the reason.
 * While draining, 503 so that load balancers move away first.  A check
 * made less than a second ago answers at once; else it is made on a batch
 * thread, and the answer after it.  One check at a time is queued or made
 * (db_ready_begin): meanwhile other probes are answered at once, from the
 * last result for a second, then 503 "database not answering" (with
 * Retry-After, as every 503), so that probes never hold more than one
 * connection waiting for the database.
 */
static enum MHD_Result
finish_ready(struct MHD_Connection *conn, Request *req)
{
	ReadyResult *ready = &req->ready;
	StrBuf		body;
	enum MHD_Result ret;

	if (atomic_load(&draining) || (req->pending && !req->call.done))
	{
		ready->ready = false;
		ready->reason = "shutting down";
		ready->version[0] = '\0';
	}
	else if (!req->pending && !db_ready_begin(ready))
	{
		req->ready_check = true;
		return call_off_thread(conn, req, run_ready, false);
	}

	buf_init(&body);
	buf_append_str(&body, ready->ready ? "{\"status\":\"ready\""
				   : "{\"status\":\"not ready\"");
	json_append_field(&body, "reason", ready->reason);
	json_append_field(&body, "extension_version",
					  ready->version[0] != '\0' ? ready->version : NULL);
	buf_append_str(&body, "}");
	ret = reply_json(conn, req,
					 ready->ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
					 &body);
	buf_free(&body);
	return ret;
}

/*
 * Final call for GET /metrics.
 */
static enum MHD_Result
finish_metrics(struct MHD_Connection *conn, Request *req)
{
	StrBuf		body;
	enum MHD_Result ret = MHD_NO;

	buf_init(&body);
	metrics_render(&body);
	if (!body.failed)
		ret = reply(conn, req, MHD_HTTP_OK, METRICS_TYPE, body.data, body.len,
					NULL);
	buf_free(&body);
	return ret;
}

/*
 * The answer to a database call that gave no result: 400 when the server
 * refused the request's data, else 503 so that the sender retries.
 */
static enum MHD_Result
reply_db_failure(struct MHD_Connection *conn, Request *req, DbStatus status)
{
	if (status == DB_INVALID)
		return reply_error(conn, req, MHD_HTTP_BAD_REQUEST,
						   REJECT_DATABASE_ERROR, "invalid request", NULL);
	if (status == DB_UNAVAILABLE)
		return reply_error(conn, req, MHD_HTTP_SERVICE_UNAVAILABLE,
						   REJECT_DATABASE_UNAVAILABLE, "database unavailable",
						   NULL);
	return reply_error(conn, req, MHD_HTTP_SERVICE_UNAVAILABLE,
					   REJECT_DATABASE_ERROR, "database error", NULL);
}

/* Meta's handshake (on a batch thread) */
static void
run_subscribe(PendingCall *call)
{
	Request    *req = request_of_call(call);

	db_subscribe(&req->subscribe_in, &req->subscribe_out);
}

/*
 * Final call for GET /webhooks/{provider}: Meta's subscription handshake,
 * answered by payments.meta_subscribe() from the hub.* query arguments on
 * a batch thread, then here.  The challenge goes back as the plain-text
 * body, as Meta expects.
 */
static enum MHD_Result
finish_subscribe(struct MHD_Connection *conn, Request *req)
{
	SubscribeRequest *in = &req->subscribe_in;
	SubscribeResult *out = &req->subscribe_out;
	enum MHD_Result ret;

	if (!req->pending)
	{
		in->provider = req->provider;
		in->mode = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "hub.mode");
		in->verify_token = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
													   "hub.verify_token");
		in->challenge = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
													"hub.challenge");
		in->request_id = req->request_id;
		return call_off_thread(conn, req, run_subscribe, true);
	}

	if (req->call.busy)
		return reply_busy(conn, req);
	if (!req->call.done)
		return reply_db_failure(conn, req, DB_UNAVAILABLE);
	if (out->status != DB_OK)
		return reply_db_failure(conn, req, out->status);
	if (out->http_status != MHD_HTTP_NOT_FOUND)
		metrics_learn_provider(req->provider);
	if (out->http_status != MHD_HTTP_OK || out->body == NULL)
	{
		unsigned int status = out->http_status;
		const char *message = status == MHD_HTTP_FORBIDDEN ? "verification failed" :
			status == MHD_HTTP_NOT_FOUND ? "not found" : "invalid challenge";

		db_free_result(out->pgresult);
		out->pgresult = NULL;
		return reply_message(conn, req, status, message, NULL);
	}

	snprintf(req->outcome, sizeof(req->outcome), "subscribed");
	ret = reply(conn, req, MHD_HTTP_OK, "text/plain", out->body,
				strlen(out->body), NULL);
	db_free_result(out->pgresult);
	out->pgresult = NULL;
	return ret;
}

/*
 * Take one body chunk.  Past max_body the body is dropped and the rest of
 * the upload only counted: libmicrohttpd 0.9.75 cannot queue a response
 * before the upload ends, so we answer 413 at the end, or close the
 * connection if the client sends more than max_body bytes beyond the limit
 * (of the chunk that crosses it, only the bytes past the limit count).
 */
static enum MHD_Result
take_body_chunk(Request *req, const char *data, size_t size)
{
	if (!req->too_large && size > shim_config.max_body - req->body.len)
	{
		req->too_large = true;
		req->discarded = req->body.len + size - shim_config.max_body;
		buf_free(&req->body);
	}
	else if (req->too_large)
		req->discarded += size;
	if (req->too_large)
	{
		if (req->discarded > shim_config.max_body)
		{
			StrBuf		line;

			metrics_reject(REJECT_BODY_TOO_LARGE);
			log_begin(&line, LOG_WARNING);
			json_append_field(&line, "request_id", req->request_id);
			json_append_field(&line, "msg",
							  "request body far over the limit, closing connection");
			log_end(&line);
			return MHD_NO;
		}
		return MHD_YES;
	}
	buf_append(&req->body, data, size);
	return MHD_YES;
}

/*
 * Fill req->ingest.req from the request's body, headers and client, for a
 * webhook or a Flows exchange.  False, with the answer queued in *ret, when
 * the body was too large or memory ran out.
 */
static bool
prepare_ingest(struct MHD_Connection *conn, Request *req, enum MHD_Result *ret)
{
	IngestRequest *in = &req->ingest.req;

	if (req->too_large)
	{
		*ret = reply_error(conn, req, MHD_HTTP_CONTENT_TOO_LARGE,
						   REJECT_BODY_TOO_LARGE, "request body too large",
						   NULL);
		return false;
	}
	if (req->body.failed || !json_build_headers(conn, &req->headers))
	{
		log_message(LOG_ERROR, "out of memory");
		*ret = reply_message(conn, req, MHD_HTTP_INTERNAL_SERVER_ERROR,
							 "internal error", NULL);
		return false;
	}
	in->provider = req->provider;
	in->headers_json = req->headers.data;
	in->body = req->body.data;
	in->body_len = req->body.len;
	in->client_ip = req->has_ip ? req->client_ip : NULL;
	in->request_id = req->request_id;
	return true;
}

/*
 * Final call for a webhook: hand it to payments.ingest() in a transaction
 * shared with the deliveries arriving with it (batch.c), with the
 * connection suspended meanwhile.
 */
static enum MHD_Result
finish_webhook(struct MHD_Connection *conn, Request *req)
{
	enum MHD_Result ret;

	if (!prepare_ingest(conn, req, &ret))
		return ret;
	req->ingest.conn = conn;
	req->ingest.deadline_ms = conn_deadline_ms(conn);
	req->pending = true;
	/* suspended first: the batch thread may resume it at once */
	MHD_suspend_connection(conn);
	batch_submit(&req->ingest);
	return MHD_YES;
}

/*
 * Call after the batch thread resumed the connection: answer with what the
 * database said, now that the transaction holding the delivery committed.
 * Only a row from the function in a committed transaction yields a 2xx.  A
 * delivery resumed unsent gets 503: too many waited, or its request timed
 * out in the queue (its connection is shut down: this is seldom sent).
 */
static enum MHD_Result
answer_webhook(struct MHD_Connection *conn, Request *req)
{
	IngestResult *out = &req->ingest.res;
	StrBuf		body;
	enum MHD_Result ret;

	buf_free(&req->headers);
	buf_free(&req->body);
	if (req->ingest.unsent == UNSENT_BUSY)
		return reply_busy(conn, req);
	if (req->ingest.unsent == UNSENT_TIMEOUT)
		return reply_message(conn, req, MHD_HTTP_SERVICE_UNAVAILABLE,
							 "request timeout", NULL);
	if (out->status != DB_OK)
		return reply_db_failure(conn, req, out->status);

	snprintf(req->outcome, sizeof(req->outcome), "%s", out->outcome);
	if (out->http_status != MHD_HTTP_NOT_FOUND)
		metrics_learn_provider(req->provider);
	metrics_outcome(req->provider, out->outcome);
	buf_init(&body);
	buf_append_str(&body, "{\"outcome\":");
	json_append_string(&body, out->outcome, strlen(out->outcome));
	json_append_field(&body, "event_id", out->event_id);
	json_append_field(&body, "request_id", req->request_id);
	buf_append_str(&body, "}");
	db_free_result(out->pgresult);
	out->pgresult = NULL;
	ret = reply_json(conn, req, out->http_status, &body);
	buf_free(&body);
	return ret;
}

/* A Flows exchange (on a batch thread) */
static void
run_flows(PendingCall *call)
{
	Request    *req = request_of_call(call);

	db_flows(&req->ingest.req, &req->flows_out);
}

/*
 * Final call for POST /flows/{provider}: hand the request to
 * payments.flows_exchange(), which verifies, decrypts and answers it on a
 * batch thread, then send its status and plain-text body (the encrypted
 * response, or a short message) as they are.
 */
static enum MHD_Result
finish_flows(struct MHD_Connection *conn, Request *req)
{
	FlowsResult *out = &req->flows_out;
	enum MHD_Result ret;

	if (!req->pending)
	{
		if (!prepare_ingest(conn, req, &ret))
			return ret;
		return call_off_thread(conn, req, run_flows, true);
	}

	buf_free(&req->headers);
	buf_free(&req->body);
	if (req->call.busy)
		return reply_busy(conn, req);
	if (!req->call.done)
		return reply_db_failure(conn, req, DB_UNAVAILABLE);
	if (out->status != DB_OK)
		return reply_db_failure(conn, req, out->status);
	snprintf(req->outcome, sizeof(req->outcome), "%s", out->outcome);
	if (out->http_status != MHD_HTTP_NOT_FOUND)
		metrics_learn_provider(req->provider);
	ret = reply(conn, req, out->http_status, TEXT_TYPE, out->body,
				strlen(out->body), NULL);
	db_free_result(out->pgresult);
	out->pgresult = NULL;
	return ret;
}

/*
 * MHD access handler (see the file header for the calling protocol).
 */
enum MHD_Result
http_handle(void *cls, struct MHD_Connection *conn, const char *url,
			const char *method, const char *version, const char *upload_data,
			size_t *upload_data_size, void **req_cls)
{
	Request    *req = *req_cls;
	size_t		size;

	(void) cls;

	if (req == NULL)
	{
		conn_request_begin(conn);
		req = request_new(conn, url, method);
		if (req == NULL)
			return MHD_NO;
		*req_cls = req;
		atomic_fetch_add(&in_flight, 1);
		return start_request(conn, req, url, method, version);
	}

	size = *upload_data_size;
	if (size > 0)
	{
		*upload_data_size = 0;
		return take_body_chunk(req, upload_data, size);
	}
	if (req->status != 0)
		return MHD_YES;			/* answered on the first call */
	switch (req->route)
	{
		case ROUTE_WEBHOOK:
			return req->pending ? answer_webhook(conn, req)
				: finish_webhook(conn, req);
		case ROUTE_SUBSCRIBE:
			return finish_subscribe(conn, req);
		case ROUTE_FLOWS:
			return finish_flows(conn, req);
		case ROUTE_HEALTH:
			return finish_health(conn, req);
		case ROUTE_READY:
			return finish_ready(conn, req);
		case ROUTE_METRICS:
			return finish_metrics(conn, req);
		case ROUTE_OTHER:
		case ROUTE_COUNT:
			break;
	}
	return MHD_NO;
}

/*
 * Name of an MHD termination code, for the request log.
 */
static const char *
termination_name(enum MHD_RequestTerminationCode toe)
{
	switch (toe)
	{
		case MHD_REQUEST_TERMINATED_COMPLETED_OK:
			return "completed";
		case MHD_REQUEST_TERMINATED_WITH_ERROR:
			return "error";
		case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED:
			return "timeout";
		case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN:
			return "shutdown";
		case MHD_REQUEST_TERMINATED_READ_ERROR:
			return "read_error";
		case MHD_REQUEST_TERMINATED_CLIENT_ABORT:
			return "client_abort";
	}
	return "unknown";
}

/*
 * A webhook or Flows exchange whose connection broke while it waited for
 * the database may end without the call that answers it (MHD notices the
 * broken connection first once resumed): take what it would have been
 * answered, and the database's outcome, for its log line and metrics, as
 * for one answered.  Only a result still held (its answer not attempted)
 * is read.
 */
static void
note_unanswered(Request *req)
{
	bool		unsent;
	DbStatus	status;
	unsigned int http_status;
	const char *outcome;
	bool		held;

	if (!req->pending || req->status != 0)
		return;
	if (req->route == ROUTE_WEBHOOK)
	{
		unsent = req->ingest.unsent != UNSENT_NO;
		status = req->ingest.res.status;
		http_status = req->ingest.res.http_status;
		outcome = req->ingest.res.outcome;
		held = req->ingest.res.pgresult != NULL;
	}
	else if (req->route == ROUTE_FLOWS)
	{
		unsent = req->call.busy || !req->call.done;
		status = req->flows_out.status;
		http_status = req->flows_out.http_status;
		outcome = req->flows_out.outcome;
		held = req->flows_out.pgresult != NULL;
	}
	else
		return;

	if (unsent || status == DB_UNAVAILABLE || status == DB_FAILED)
		req->status = MHD_HTTP_SERVICE_UNAVAILABLE;
	else if (status == DB_INVALID)
		req->status = MHD_HTTP_BAD_REQUEST;
	else if (held)
	{
		req->status = http_status;
		snprintf(req->outcome, sizeof(req->outcome), "%s", outcome);
		if (http_status != MHD_HTTP_NOT_FOUND)
			metrics_learn_provider(req->provider);
		if (req->route == ROUTE_WEBHOOK)
			metrics_outcome(req->provider, outcome);
	}
}

/*
 * MHD_OPTION_NOTIFY_COMPLETED callback: write the request log line and
 * free the request state, whatever way the request ended.
 */
void
http_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
			   enum MHD_RequestTerminationCode toe)
{
	Request    *req = *req_cls;
	struct timespec now;
	double		duration_ms;
	bool		sent;
	StrBuf		line;

	(void) cls;
	if (req == NULL)
		return;
	*req_cls = NULL;

	clock_gettime(CLOCK_MONOTONIC, &now);
	duration_ms = (double) (now.tv_sec - req->start.tv_sec) * 1000.0 +
		(double) (now.tv_nsec - req->start.tv_nsec) / 1e6;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
		note_unanswered(req);
	/* an answer queued but not sent (the connection broke) was not given */
	sent = req->status != 0 && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
	if (sent)
		metrics_request(req->route, req->provider, req->status,
						duration_ms / 1000.0);
	conn_request_done(conn);

	log_begin(&line, LOG_INFO);
	json_append_field(&line, "msg", "request");
	json_append_field(&line, "request_id", req->request_id);
	json_append_field(&line, "traceparent",
					  req->traceparent[0] != '\0' ? req->traceparent : NULL);
	json_append_field(&line, "method", req->method);
	json_append_field(&line, "path", req->path);
	json_append_field(&line, "provider",
					  req->provider[0] != '\0' ? req->provider : NULL);
	if (sent)
		buf_printf(&line, ",\"status\":%u", req->status);
	else
		buf_append_str(&line, ",\"status\":null");
	if (!sent && req->status != 0)
		buf_printf(&line, ",\"status_unsent\":%u", req->status);
	json_append_field(&line, "outcome",
					  req->outcome[0] != '\0' ? req->outcome : NULL);
	buf_printf(&line, ",\"duration_ms\":%.3f", duration_ms);
	json_append_field(&line, "client_ip", req->has_ip ? req->client_ip : NULL);
	if (req->peer_ip[0] != '\0')
		json_append_field(&line, "peer_ip", req->peer_ip);
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
		json_append_field(&line, "termination", termination_name(toe));
	log_end(&line);

	/*
	 * A request whose connection broke while it was suspended (the client
	 * closed or half-closed it) ends here without the final call that
	 * answers it: its result is freed here instead.
	 */
	/* a check this probe queued and the batch threads did not make */
	if (req->ready_check && !req->call.done)
		db_ready_cancel();
	db_free_result(req->ingest.res.pgresult);
	db_free_result(req->subscribe_out.pgresult);
	db_free_result(req->flows_out.pgresult);
	buf_free(&req->body);
	buf_free(&req->headers);
	free(req);
	atomic_fetch_sub(&in_flight, 1);
}
