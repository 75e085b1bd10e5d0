/*-------------------------------------------------------------------------
 *
 * conn.c
 *	  Open connections and the total request timeout.
 *
 * libmicrohttpd's own timeout (--idle-timeout) only closes connections on
 * which nothing arrives; a client sending one byte at a time would keep a
 * connection forever.  So every connection is kept in a list, with the time
 * its current request began: when the connection opened, then whenever an
 * answer completes.  The main thread calls conn_expire() every second and
 * shuts down the socket of any connection whose request has lasted longer
 * than --request-timeout; libmicrohttpd then sees the end of the stream and
 * closes the connection itself.
 *
 * libmicrohttpd calls conn_notify(CLOSED) before it closes the socket, and
 * the list is changed and walked under one mutex, so a socket is never shut
 * down after its descriptor could have been reused.
 *
 * shim/conn.c
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "shim.h"

/* One open connection */
typedef struct ShimConn
{
	struct ShimConn *prev;
	struct ShimConn *next;
	MHD_socket	fd;
	int64_t		request_start_ms;
	bool		expired;		/* already shut down by conn_expire() */
	char		peer_ip[IP_TEXT_BUFSIZE];
} ShimConn;

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static ShimConn *conn_head;
static unsigned int conn_count;

/*
 * Monotonic clock in milliseconds, that of the request deadlines.
 */
int64_t
conn_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Add a new connection to the list.
 */
static ShimConn *
conn_add(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *fd_info;
	const union MHD_ConnectionInfo *addr_info;
	ShimConn   *c;
	IpAddr		peer;

	fd_info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	c = calloc(1, sizeof(ShimConn));
	if (fd_info == NULL || c == NULL)
	{
		log_message(LOG_ERROR,
					"cannot track a connection: its request timeout is off");
		free(c);
		return NULL;
	}
	c->fd = fd_info->connect_fd;
	c->request_start_ms = conn_now_ms();
	addr_info = MHD_get_connection_info(conn,
										MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (addr_info != NULL && addr_info->client_addr != NULL &&
		ip_from_sockaddr(addr_info->client_addr, &peer))
		ip_format(&peer, c->peer_ip, sizeof(c->peer_ip));

	pthread_mutex_lock(&conn_lock);
	c->next = conn_head;
	if (conn_head != NULL)
		conn_head->prev = c;
	conn_head = c;
	conn_count++;
	pthread_mutex_unlock(&conn_lock);
	return c;
}

/*
 * Remove a connection from the list and free it.
 */
static void
conn_remove(ShimConn *c)
{
	pthread_mutex_lock(&conn_lock);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		conn_head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	conn_count--;
	pthread_mutex_unlock(&conn_lock);
	free(c);
}

/*
 * MHD_OPTION_NOTIFY_CONNECTION callback: track connections as they open
 * and close.
 */
void
conn_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
			enum MHD_ConnectionNotificationCode code)
{
	(void) cls;
	if (code == MHD_CONNECTION_NOTIFY_STARTED)
		*socket_context = conn_add(conn);
	else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context != NULL)
	{
		conn_remove(*socket_context);
		*socket_context = NULL;
	}
}

/*
 * An answer on this connection completed: the next request's time starts.
 */
void
conn_request_done(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info;
	ShimConn   *c;

	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	if (info == NULL || info->socket_context == NULL)
		return;
	c = info->socket_context;
	pthread_mutex_lock(&conn_lock);
	c->request_start_ms = conn_now_ms();
	pthread_mutex_unlock(&conn_lock);
}

/*
 * When the current request on this connection passes --request-timeout
 * (conn_now_ms clock); INT64_MAX for a connection not tracked.
 */
int64_t
conn_deadline_ms(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info;
	ShimConn   *c;
	int64_t		deadline;

	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	if (info == NULL || info->socket_context == NULL)
		return INT64_MAX;
	c = info->socket_context;
	pthread_mutex_lock(&conn_lock);
	deadline = c->request_start_ms + (int64_t) shim_config.request_timeout_s * 1000;
	pthread_mutex_unlock(&conn_lock);
	return deadline;
}

/*
 * Shut down every connection whose request has passed --request-timeout.
 */
void
conn_expire(void)
{
	int64_t		now = conn_now_ms();
	int64_t		limit = (int64_t) shim_config.request_timeout_s * 1000;

	pthread_mutex_lock(&conn_lock);
	for (ShimConn *c = conn_head; c != NULL; c = c->next)
	{
		StrBuf		line;

		if (c->expired || now - c->request_start_ms < limit)
			continue;
		c->expired = true;
		shutdown(c->fd, SHUT_RDWR);
		metrics_reject(REJECT_REQUEST_TIMEOUT);

		log_begin(&line, LOG_WARNING);
		json_append_field(&line, "msg",
						  "request timeout, closing the connection");
		json_append_field(&line, "peer_ip",
						  c->peer_ip[0] != '\0' ? c->peer_ip : NULL);
		buf_printf(&line, ",\"timeout_s\":%u", shim_config.request_timeout_s);
		log_end(&line);
	}
	pthread_mutex_unlock(&conn_lock);
}

/*
 * Number of open connections.
 */
unsigned int
conn_open_count(void)
{
	unsigned int n;

	pthread_mutex_lock(&conn_lock);
	n = conn_count;
	pthread_mutex_unlock(&conn_lock);
	return n;
}
