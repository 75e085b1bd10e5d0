/*-------------------------------------------------------------------------
 *
 * conn.c
 *	  Open connections and the total request timeout.
 *
 * libmicrohttpd's own timeout (--idle-timeout) only closes connections on
 * which nothing arrives; a client sending one byte at a time would keep a
 * connection forever.  So every connection is kept in a list, with the time
 * its current request began.  The main thread calls conn_expire() every
 * second and shuts down the socket of any connection whose request has
 * lasted longer than --request-timeout; libmicrohttpd then sees the end of
 * the stream and closes the connection itself.
 *
 * A connection between requests (just opened, or its last answer sent) is
 * idle, and left to --idle-timeout, however long that is: its request
 * begins with its first byte (for a new connection, bytes that came before
 * libmicrohttpd accepted it count too: a client that sent part of its
 * headers into the listen queue and nothing more is cut all the same).  libmicrohttpd tells us of a request only once
 * its headers are in (conn_request_begin), so conn_expire() also reads from
 * the kernel (TCP_INFO) how many bytes an idle connection has received: when
 * that has grown since it became idle, a request is arriving, and its time
 * runs from then (so a slow-loris is cut a second late at most).  Where the
 * count cannot be read, a connection's request runs from when it became
 * idle, as if it had begun then.
 *
 * --max-connections is counted here, over all HTTP threads (conn_admit):
 * libmicrohttpd (0.9.75, epoll) splits its own connection limit evenly
 * between its threads, and a thread that has its share stops accepting:
 * once every thread had, a further connection waited unaccepted instead of
 * being refused, and under a burst that the kernel handed to one thread
 * more than the others (500 deliveries at once, 128 of 1024 a thread) that
 * thread's 128 clients got no answer until --idle-timeout closed their
 * connections.  libmicrohttpd's own limit is now --max-connections for each
 * thread, which no thread reaches before the shim's limit in all.
 *
 * libmicrohttpd calls conn_notify(CLOSED) before it closes the socket, and
 * the list is changed and walked under one mutex, so a socket is never shut
 * down, nor read, after its descriptor could have been reused.
 *
 * shim/conn.c
 *
 *-------------------------------------------------------------------------
 */
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <linux/tcp.h>

#include "shim.h"

/* One open connection */
typedef struct ShimConn
{
	struct ShimConn *prev;
	struct ShimConn *next;
	MHD_socket	fd;
	int64_t		request_start_ms;	/* when its current request began */
	bool		idle;			/* between requests: no request timeout */
	uint64_t	received_mark;	/* bytes received when it became idle */
	int64_t		handshake_until_ms; /* under TLS, bytes before it are its handshake */
	bool		expired;		/* already shut down by conn_expire() */
	char		peer_ip[IP_TEXT_BUFSIZE];
} ShimConn;

/*
 * Under TLS, what a new connection receives in its first seconds, until a
 * request begins, is taken for its handshake (the client's hello and
 * finished messages), not for a request: a connection opened ahead of use
 * is left to --idle-timeout, as over plain HTTP.
 */
#define TLS_HANDSHAKE_MS	5000

/* Peer addresses named in conn_expire()'s line (its count covers all) */
#define EXPIRED_PEERS_LOGGED	16

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static ShimConn *conn_head;
static unsigned int conn_count;

/* connections admitted by conn_admit() and not yet closed */
static atomic_uint admitted;

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
 * Bytes received so far on a TCP socket, from the kernel; false if they
 * cannot be read (not TCP, or a kernel older than Linux 4.1).
 */
static bool
conn_bytes_received(MHD_socket fd, uint64_t *bytes)
{
	struct tcp_info info;
	socklen_t	len = sizeof(info);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 ||
		len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received))
		return false;
	*bytes = info.tcpi_bytes_received;
	return true;
}

/*
 * The connection is between requests from now on (conn_lock held): idle,
 * unless what it has received cannot be counted.
 */
static void
conn_set_idle(ShimConn *c)
{
	c->request_start_ms = conn_now_ms();
	c->idle = conn_bytes_received(c->fd, &c->received_mark);
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
	/* what arrived before the accept is a request under way, seen next tick */
	c->request_start_ms = conn_now_ms();
	c->idle = conn_bytes_received(c->fd, &c->received_mark);
	c->received_mark = 0;
	if (shim_config.tls_cert != NULL)
		c->handshake_until_ms = c->request_start_ms + TLS_HANDSHAKE_MS;
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
 * libmicrohttpd's accept policy callback (MHD_start_daemon's apc): a new
 * connection is taken while fewer than --max-connections are open in all,
 * and closed at once (counted as connection_limit) otherwise.  libmicrohttpd calls this only for a
 * connection within its own limits (per address, per thread), and tells
 * conn_notify() of every connection it then keeps, which gives its place
 * back when it closes.  (Should libmicrohttpd fail to set up a connection
 * it took, for want of memory, its place would stay taken.)
 */
enum MHD_Result
conn_admit(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
	unsigned int n = atomic_load(&admitted);

	(void) cls;
	(void) addr;
	(void) addrlen;
	do
	{
		if (n >= shim_config.max_connections)
		{
			log_refused_connection();
			return MHD_NO;
		}
	} while (!atomic_compare_exchange_weak(&admitted, &n, n + 1));
	return MHD_YES;
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
	else if (code == MHD_CONNECTION_NOTIFY_CLOSED)
	{
		atomic_fetch_sub(&admitted, 1);
		if (*socket_context != NULL)
		{
			conn_remove(*socket_context);
			*socket_context = NULL;
		}
	}
}

/*
 * The connection of a request, NULL when it is not tracked.
 */
static ShimConn *
conn_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info;

	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	if (info == NULL || info->socket_context == NULL)
		return NULL;
	return info->socket_context;
}

/*
 * A request's headers are in (the first call of the access handler): its
 * time runs, from now unless conn_expire() saw it arriving earlier.
 */
void
conn_request_begin(struct MHD_Connection *conn)
{
	ShimConn   *c = conn_of(conn);

	if (c == NULL)
		return;
	pthread_mutex_lock(&conn_lock);
	if (c->idle)
	{
		c->idle = false;
		c->request_start_ms = conn_now_ms();
	}
	c->handshake_until_ms = 0;
	pthread_mutex_unlock(&conn_lock);
}

/*
 * An answer on this connection completed: it is idle until the next
 * request begins.
 */
void
conn_request_done(struct MHD_Connection *conn)
{
	ShimConn   *c = conn_of(conn);

	if (c == NULL)
		return;
	pthread_mutex_lock(&conn_lock);
	conn_set_idle(c);
	pthread_mutex_unlock(&conn_lock);
}

/*
 * When the current request on this connection passes --request-timeout
 * (conn_now_ms clock); INT64_MAX for a connection not tracked.
 */
int64_t
conn_deadline_ms(struct MHD_Connection *conn)
{
	ShimConn   *c = conn_of(conn);
	int64_t		deadline;

	if (c == NULL)
		return INT64_MAX;
	pthread_mutex_lock(&conn_lock);
	deadline = c->request_start_ms + (int64_t) shim_config.request_timeout_s * 1000;
	pthread_mutex_unlock(&conn_lock);
	return deadline;
}

/*
 * Shut down every connection whose request has passed --request-timeout;
 * an idle connection that has received something since it became idle has
 * a request under way, whose time runs from now.  Each is logged at debug,
 * and one warning line says how many (clients can be slow at will: one
 * line a second at most), naming their first EXPIRED_PEERS_LOGGED distinct
 * peer addresses.
 */
void
conn_expire(void)
{
	int64_t		now = conn_now_ms();
	int64_t		limit = (int64_t) shim_config.request_timeout_s * 1000;
	unsigned int closed = 0;
	unsigned int npeers = 0;
	StrBuf		peers;			/* their distinct peers, quoted, comma-separated */
	StrBuf		line;

	buf_init(&peers);
	pthread_mutex_lock(&conn_lock);
	for (ShimConn *c = conn_head; c != NULL; c = c->next)
	{
		uint64_t	received;

		if (c->expired)
			continue;
		if (c->idle)
		{
			if (conn_bytes_received(c->fd, &received))
			{
				if (received == c->received_mark)
					continue;	/* still idle: --idle-timeout's to close */
				if (now < c->handshake_until_ms)
				{
					c->received_mark = received;	/* its TLS handshake */
					continue;
				}
			}
			c->idle = false;
			c->request_start_ms = now;
		}
		if (now - c->request_start_ms < limit)
			continue;
		c->expired = true;
		shutdown(c->fd, SHUT_RDWR);
		metrics_reject(REJECT_REQUEST_TIMEOUT);

		closed++;
		if (npeers < EXPIRED_PEERS_LOGGED && c->peer_ip[0] != '\0')
		{
			char		quoted[IP_TEXT_BUFSIZE + 2];

			snprintf(quoted, sizeof(quoted), "\"%s\"", c->peer_ip);
			if (peers.data == NULL || strstr(peers.data, quoted) == NULL)
			{
				buf_append_str(&peers, npeers++ > 0 ? "," : "");
				buf_append_str(&peers, quoted);
			}
		}

		log_begin(&line, LOG_DEBUG);
		json_append_field(&line, "msg",
						  "request timeout, closing the connection");
		json_append_field(&line, "peer_ip",
						  c->peer_ip[0] != '\0' ? c->peer_ip : NULL);
		buf_printf(&line, ",\"timeout_s\":%u", shim_config.request_timeout_s);
		log_end(&line);
	}
	pthread_mutex_unlock(&conn_lock);

	if (closed > 0)
	{
		log_begin(&line, LOG_WARNING);
		json_append_field(&line, "msg",
						  "request timeout, connections closed");
		buf_printf(&line, ",\"closed\":%u,\"peer_ips\":[", closed);
		if (!peers.failed && peers.len > 0)
			buf_append(&line, peers.data, peers.len);
		buf_printf(&line, "],\"timeout_s\":%u", shim_config.request_timeout_s);
		log_end(&line);
	}
	buf_free(&peers);
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
