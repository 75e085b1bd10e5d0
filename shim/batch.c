/*-------------------------------------------------------------------------
 *
 * batch.c
 *	  Group commit: webhook deliveries that arrive together are stored in
 *	  one database transaction, so that they share its commit and WAL flush.
 *
 * The request handler (http.c) suspends its connection and puts the
 * delivery on a queue.  --batch-concurrency batch threads, each with its
 * own database connection, take up to --batch-max deliveries off the queue
 * at a time, store them in one transaction with one call
 * (db_ingest_batch), set each delivery's result and resume its connection;
 * libmicrohttpd then calls the handler again, which answers.  So no MHD thread ever waits for the
 * database with a webhook, every request is answered only after the commit
 * that holds its delivery (or after the failure that leaves it out), and no
 * timer holds a delivery back: a lone delivery goes at once, in a batch of
 * one, and batches grow only while the database is busy with the previous
 * ones.  The other requests that need the database (Meta's handshake, a
 * Flows exchange, the readiness check) are queued here too, each a call
 * made alone by a batch thread (batch_call); calls and batches take turns.
 *
 * A request a batch thread is storing cannot be answered before the
 * database does, even once its client is gone, and its connection counts
 * against --max-connections until then.  So the requests that wait for the
 * database (the deliveries, and the calls of the provider routes; not the
 * readiness checks, of which one at a time is queued: db_ready_begin) are
 * bounded: over the bound a request is answered 503
 * at once, and a delivery whose request timed out while it was queued is
 * not sent at all; its connection is resumed, to be closed.
 *
 * A batch thread whose database connection broke, with nothing to do, makes
 * it again by itself once its backoff has passed (db_reconnect), so that
 * the connection is not reported broken long after the database is back
 * when no request comes.
 *
 * shim/batch.c
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shim.h"

/* The queue, guarded by batch_lock */
static pthread_mutex_t batch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t batch_cond = PTHREAD_COND_INITIALIZER;
static PendingIngest *queue_head;
static PendingIngest *queue_tail;
static PendingCall *calls_head;
static PendingCall *calls_tail;
static bool stopping;			/* batch_stop(): end once the queue is empty */
static bool abandoning;			/* batch_abandon(): answer the rest 503 */
static unsigned int running;	/* batch threads not ended yet */
static unsigned int waiting;	/* bounded requests queued, or being stored or made */
static unsigned int waiting_max;	/* see batch_start() */
static pthread_cond_t ended_cond = PTHREAD_COND_INITIALIZER;	/* one ended */

/* How often batch_stop() cancels again, past the shutdown deadline */
#define CANCEL_AGAIN_MS 100

static pthread_t *workers;
static unsigned int n_workers;

/*
 * Bodies a batch carries at most, in bytes: its call's parameters stay far
 * below PostgreSQL's 1 GB limit on a value whatever --max-body says (a
 * larger body goes alone).
 */
#define BATCH_MAX_BODY_BYTES	(64 * 1024 * 1024)

/*
 * Take up to --batch-max deliveries off the queue (under batch_lock), fewer
 * when their bodies would pass BATCH_MAX_BODY_BYTES together.  Those whose
 * request has timed out on the way are not taken but put on *expired, to
 * be resumed unsent (resume_unsent).
 */
static unsigned int
batch_take(PendingIngest **items, PendingIngest **expired)
{
	unsigned int n = 0;
	size_t		bytes = 0;
	int64_t		now = conn_now_ms();

	*expired = NULL;
	while (queue_head != NULL && n < shim_config.batch_max &&
		   (n == 0 ||
			(bytes <= BATCH_MAX_BODY_BYTES &&
			 queue_head->req.body_len <= BATCH_MAX_BODY_BYTES - bytes)))
	{
		PendingIngest *item = queue_head;

		queue_head = item->next;
		if (now >= item->deadline_ms)
		{
			item->unsent = UNSENT_TIMEOUT;
			item->next = *expired;
			*expired = item;
			continue;
		}
		bytes += item->req.body_len;
		items[n++] = item;
	}
	if (queue_head == NULL)
		queue_tail = NULL;
	return n;
}

/*
 * Resume the connections of deliveries taken off the queue unsent (a list
 * linked by next), and count them no longer waiting.
 */
static void
resume_unsent(PendingIngest *list)
{
	unsigned int n = 0;

	while (list != NULL)
	{
		PendingIngest *item = list;

		/* once resumed, the request may be answered and freed at any time */
		list = item->next;
		MHD_resume_connection(item->conn);
		n++;
	}
	if (n == 0)
		return;
	pthread_mutex_lock(&batch_lock);
	waiting -= n;
	pthread_mutex_unlock(&batch_lock);
}

/*
 * Wait on batch_cond (batch_lock held) until signalled or until the time
 * at_ms of the monotonic clock of conn_now_ms (batch_cond's is the real
 * time clock).
 */
static void
wait_until_ms(int64_t at_ms)
{
	int64_t		delay_ms = at_ms - conn_now_ms();
	struct timespec until;

	if (delay_ms <= 0)
		return;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += delay_ms / 1000;
	until.tv_nsec += (delay_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L)
	{
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&batch_cond, &batch_lock, &until);
}

/*
 * A batch thread: store what is queued, batch after batch, until
 * batch_stop() is called and the queue is empty.
 */
static void *
batch_worker(void *arg)
{
	PendingIngest **items = arg;
	const IngestRequest **reqs = (const IngestRequest **) (items + shim_config.batch_max);
	IngestResult **results = (IngestResult **) (reqs + shim_config.batch_max);
	bool		batch_next = false;	/* a call was just made: a batch waiting goes first */

	pthread_mutex_lock(&batch_lock);
	for (;;)
	{
		unsigned int n;
		bool		abandon;
		PendingIngest *expired;

		while (queue_head == NULL && calls_head == NULL && !stopping)
		{
			int64_t		reconnect_at;

			if (!db_reconnect_due(&reconnect_at))
				pthread_cond_wait(&batch_cond, &batch_lock);
			else if (conn_now_ms() < reconnect_at)
				wait_until_ms(reconnect_at);
			else
			{
				/* a broken connection, idle: made again without a request */
				pthread_mutex_unlock(&batch_lock);
				db_reconnect();
				pthread_mutex_lock(&batch_lock);
			}
		}
		/*
		 * Calls and batches take turns: a flood of handshakes (which anyone
		 * may send) delays a webhook by one call per thread at most.
		 */
		if (calls_head != NULL && !(batch_next && queue_head != NULL))
		{
			PendingCall *call = calls_head;
			bool		call_bounded = call->bounded;	/* call may be freed once resumed */

			calls_head = call->next;
			if (calls_head == NULL)
				calls_tail = NULL;
			abandon = abandoning;
			pthread_mutex_unlock(&batch_lock);
			if (!abandon)
			{
				call->run(call);
				call->done = true;
			}
			MHD_resume_connection(call->conn);
			pthread_mutex_lock(&batch_lock);
			if (call_bounded)
				waiting--;
			batch_next = true;
			continue;
		}
		if (queue_head == NULL)
			break;
		batch_next = false;
		n = batch_take(items, &expired);
		abandon = abandoning;
		pthread_mutex_unlock(&batch_lock);

		resume_unsent(expired);
		for (unsigned int i = 0; i < n; i++)
		{
			reqs[i] = &items[i]->req;
			results[i] = &items[i]->res;
			if (abandon)
				items[i]->res.status = DB_UNAVAILABLE;
		}
		if (!abandon && n > 0)
			db_ingest_batch(reqs, results, n);
		/* once resumed, the request may be answered and freed at any time */
		for (unsigned int i = 0; i < n; i++)
			MHD_resume_connection(items[i]->conn);

		pthread_mutex_lock(&batch_lock);
		waiting -= n;
	}
	running--;
	pthread_cond_broadcast(&ended_cond);
	pthread_mutex_unlock(&batch_lock);
	free(items);
	return NULL;
}

/*
 * Start the batch threads; false (with a message on stderr) if one could
 * not be started.
 */
bool
batch_start(void)
{
	/*
	 * Requests waiting for the database: half of --max-connections at most,
	 * so that the other half stays free for the requests that do not wait
	 * (/health, /metrics, the answers of 503)
	 */
	waiting_max = shim_config.max_connections / 2;
	if (waiting_max == 0)
		waiting_max = 1;
	workers = calloc(shim_config.batch_concurrency, sizeof(pthread_t));
	if (workers == NULL)
		return false;
	for (n_workers = 0; n_workers < shim_config.batch_concurrency; n_workers++)
	{
		/* one allocation for the three arrays a batch needs */
		void	   *arrays = malloc(shim_config.batch_max *
									(sizeof(PendingIngest *) + sizeof(IngestRequest *) +
									 sizeof(IngestResult *)));

		pthread_mutex_lock(&batch_lock);
		running++;
		pthread_mutex_unlock(&batch_lock);
		if (arrays == NULL || pthread_create(&workers[n_workers], NULL,
											 batch_worker, arrays) != 0)
		{
			pthread_mutex_lock(&batch_lock);
			running--;
			pthread_mutex_unlock(&batch_lock);
			free(arrays);
			log_message(LOG_ERROR, "could not start the batch threads");
			batch_stop();
			return false;
		}
	}
	return true;
}

/*
 * Queue a delivery whose connection the caller has suspended; a batch
 * thread sets item->res and resumes item->conn.  Once the batch threads are
 * ending, or while as many requests wait as may (item->unsent is then
 * UNSENT_BUSY), it is resumed at once instead, to be answered 503.
 */
void
batch_submit(PendingIngest *item)
{
	item->next = NULL;
	item->unsent = UNSENT_NO;
	pthread_mutex_lock(&batch_lock);
	if (stopping || waiting >= waiting_max)
	{
		if (!stopping)
			item->unsent = UNSENT_BUSY;
		pthread_mutex_unlock(&batch_lock);
		memset(&item->res, 0, sizeof(item->res));
		item->res.status = DB_UNAVAILABLE;
		MHD_resume_connection(item->conn);
		return;
	}
	waiting++;
	if (queue_tail != NULL)
		queue_tail->next = item;
	else
		queue_head = item;
	queue_tail = item;
	pthread_cond_signal(&batch_cond);
	pthread_mutex_unlock(&batch_lock);
}

/*
 * Queue a call whose connection the caller has suspended: a batch thread
 * makes it (call->run), sets call->done and resumes call->conn.  Once the
 * batch threads are ending, or while as many requests wait as may for a
 * bounded call (call->busy is then set), it is resumed at once, not made.
 */
void
batch_call(PendingCall *call)
{
	call->next = NULL;
	call->done = false;
	call->busy = false;
	pthread_mutex_lock(&batch_lock);
	if (stopping || (call->bounded && waiting >= waiting_max))
	{
		call->busy = !stopping;
		pthread_mutex_unlock(&batch_lock);
		MHD_resume_connection(call->conn);
		return;
	}
	if (call->bounded)
		waiting++;
	if (calls_tail != NULL)
		calls_tail->next = call;
	else
		calls_head = call;
	calls_tail = call;
	pthread_cond_signal(&batch_cond);
	pthread_mutex_unlock(&batch_lock);
}

/*
 * Resume, unsent, the queued deliveries whose request has passed
 * --request-timeout (the main thread, once a second): their connections,
 * shut down by conn_expire(), are freed without waiting for a batch thread.
 */
void
batch_expire(void)
{
	PendingIngest *expired = NULL;
	PendingIngest **link = &queue_head;
	int64_t		now = conn_now_ms();

	pthread_mutex_lock(&batch_lock);
	queue_tail = NULL;
	while (*link != NULL)
	{
		PendingIngest *item = *link;

		if (now >= item->deadline_ms)
		{
			*link = item->next;
			item->unsent = UNSENT_TIMEOUT;
			item->next = expired;
			expired = item;
		}
		else
		{
			queue_tail = item;
			link = &item->next;
		}
	}
	pthread_mutex_unlock(&batch_lock);
	resume_unsent(expired);
}

/*
 * At the shutdown deadline: deliveries not yet in a transaction are
 * answered 503 without one, and calls not yet made are not made (the
 * running transactions are cancelled by db_cancel_all()).
 */
void
batch_abandon(void)
{
	pthread_mutex_lock(&batch_lock);
	abandoning = true;
	pthread_mutex_unlock(&batch_lock);
}

/*
 * Let the batch threads store what is still queued, then end them (before
 * MHD is stopped: they resume its connections).  Past the shutdown deadline
 * (batch_abandon) the queries are cancelled again every CANCEL_AGAIN_MS
 * until the threads have ended: one cancel misses a batch whose pipeline
 * reached the server just after it.
 */
void
batch_stop(void)
{
	pthread_mutex_lock(&batch_lock);
	stopping = true;
	pthread_cond_broadcast(&batch_cond);
	while (abandoning && running > 0)
	{
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += CANCEL_AGAIN_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L)
		{
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		if (pthread_cond_timedwait(&ended_cond, &batch_lock, &until) == ETIMEDOUT && running > 0)
		{
			pthread_mutex_unlock(&batch_lock);
			db_cancel_all();
			pthread_mutex_lock(&batch_lock);
		}
	}
	pthread_mutex_unlock(&batch_lock);
	for (unsigned int i = 0; i < n_workers; i++)
		pthread_join(workers[i], NULL);
	free(workers);
	workers = NULL;
	n_workers = 0;
}
