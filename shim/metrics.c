/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  Counters and gauges, rendered for GET /metrics in the Prometheus text
 *	  exposition format (version 0.0.4).
 *
 * Label values come from short fixed lists, except provider and outcome
 * names, which are bounded: a provider gets its own label value only once
 * the database has answered something other than 404 for it (so it is
 * registered), for at most MAX_PROVIDERS names; every other provider name
 * is counted as "_other" (not a valid provider name, so it cannot clash).
 * Outcomes are the words payments.ingest() returns, at most MAX_OUTCOMES
 * of them.  Request series are kept in a fixed table; should it ever fill,
 * further series are counted in payments_shim_metrics_overflow_total.
 *
 * Everything is updated under one mutex: a webhook costs a database round
 * trip, next to which the lock is free.
 *
 * shim/metrics.c
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "shim.h"

#define MAX_PROVIDERS		32
#define MAX_OUTCOMES		16
#define OUTCOME_MAX_LEN		32
#define MAX_SERIES			2048

/* Provider label slots before the learned names */
#define PROVIDER_NONE		0	/* not a webhook route: provider="" */
#define PROVIDER_OTHER		1	/* provider="_other" */
#define PROVIDER_FIRST		2
#define PROVIDER_SLOTS		(PROVIDER_FIRST + MAX_PROVIDERS)
#define OUTCOME_SLOTS		(MAX_OUTCOMES + 1)	/* the last is "_other" */

/* Upper bounds of the latency histogram buckets, in seconds */
static const double duration_buckets[] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30
};

#define N_BUCKETS	(sizeof(duration_buckets) / sizeof(duration_buckets[0]))

/* Upper bounds of the batch size buckets (deliveries per transaction) */
static const double batch_size_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024};

#define N_SIZE_BUCKETS	(sizeof(batch_size_buckets) / sizeof(batch_size_buckets[0]))

/* Upper bounds of the batch transaction time buckets, in seconds */
static const double batch_time_buckets[] = {
	0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5
};

#define N_TIME_BUCKETS	(sizeof(batch_time_buckets) / sizeof(batch_time_buckets[0]))

static const char *const route_names[ROUTE_COUNT] = {
	[ROUTE_OTHER] = "other",
	[ROUTE_WEBHOOK] = "webhook",
	[ROUTE_SUBSCRIBE] = "subscribe",
	[ROUTE_HEALTH] = "health",
	[ROUTE_READY] = "ready",
	[ROUTE_METRICS] = "metrics",
	[ROUTE_FLOWS] = "flows",
};

static const char *const rejection_names[REJECT_COUNT] = {
	[REJECT_BODY_TOO_LARGE] = "body_too_large",
	[REJECT_HEADER_TOO_LARGE] = "header_too_large",
	[REJECT_URI_TOO_LONG] = "uri_too_long",
	[REJECT_MALFORMED] = "malformed_request",
	[REJECT_NOT_FOUND] = "not_found",
	[REJECT_METHOD_NOT_ALLOWED] = "method_not_allowed",
	[REJECT_RATE_LIMITED] = "rate_limited",
	[REJECT_DATABASE_UNAVAILABLE] = "database_unavailable",
	[REJECT_DATABASE_ERROR] = "database_error",
	[REJECT_REQUEST_TIMEOUT] = "request_timeout",
	[REJECT_CONNECTION_LIMIT] = "connection_limit",
	[REJECT_OVERLOADED] = "overloaded",
};

static const char *const db_state_names[DBCONN_COUNT] = {
	[DBCONN_NONE] = NULL,		/* not exposed */
	[DBCONN_IDLE] = "idle",
	[DBCONN_BUSY] = "busy",
	[DBCONN_BROKEN] = "broken",
};

/* One series of payments_shim_requests_total */
typedef struct RequestSeries
{
	uint8_t		route;
	uint8_t		provider;
	uint16_t	status;
	uint64_t	count;
} RequestSeries;

/* All metrics; guarded by lock */
typedef struct Metrics
{
	pthread_mutex_t lock;
	time_t		start_time;
	char		providers[PROVIDER_SLOTS][PROVIDER_MAX_LEN + 1];
	int			n_providers;
	char		outcomes[MAX_OUTCOMES][OUTCOME_MAX_LEN + 1];
	int			n_outcomes;
	RequestSeries series[MAX_SERIES];
	int			n_series;
	uint64_t	series_overflow;
	uint64_t	duration_counts[ROUTE_COUNT][N_BUCKETS + 1];	/* +Inf last */
	double		duration_sums[ROUTE_COUNT];
	uint64_t	outcome_counts[PROVIDER_SLOTS][OUTCOME_SLOTS];
	uint64_t	rejections[REJECT_COUNT];
	long		db_states[DBCONN_COUNT];
	uint64_t	db_connects_ok;
	uint64_t	db_connects_failed;
	uint64_t	db_reconnects;
	uint64_t	batch_sizes[N_SIZE_BUCKETS + 1];	/* +Inf last */
	uint64_t	batch_deliveries;
	uint64_t	batch_times[N_TIME_BUCKETS + 1];
	double		batch_time_sum;
	uint64_t	batches_failed;
} Metrics;

static Metrics metrics = {.lock = PTHREAD_MUTEX_INITIALIZER};

/*
 * Remember the start time (payments_shim_start_time_seconds).
 */
void
metrics_init(void)
{
	metrics.start_time = time(NULL);
}

/*
 * Label slot of a provider name; called with the lock held.
 */
static int
provider_slot(const char *provider)
{
	if (provider == NULL || provider[0] == '\0')
		return PROVIDER_NONE;
	for (int i = PROVIDER_FIRST; i < PROVIDER_FIRST + metrics.n_providers; i++)
	{
		if (strcmp(metrics.providers[i], provider) == 0)
			return i;
	}
	return PROVIDER_OTHER;
}

/*
 * The database answered for this provider (not 404): give it its own label
 * value, while there is room.
 */
void
metrics_learn_provider(const char *provider)
{
	pthread_mutex_lock(&metrics.lock);
	if (provider_slot(provider) == PROVIDER_OTHER &&
		metrics.n_providers < MAX_PROVIDERS)
	{
		snprintf(metrics.providers[PROVIDER_FIRST + metrics.n_providers],
				 PROVIDER_MAX_LEN + 1, "%s", provider);
		metrics.n_providers++;
	}
	pthread_mutex_unlock(&metrics.lock);
}

/*
 * Count one answered request and its duration.  For webhook and Flows routes
 * "provider" is the name in the path (validated or not), else NULL.
 */
void
metrics_request(Route route, const char *provider, unsigned int status,
				double seconds)
{
	uint8_t		slot;
	RequestSeries *series = NULL;
	size_t		b;

	pthread_mutex_lock(&metrics.lock);
	slot = PROVIDER_NONE;
	if (route == ROUTE_WEBHOOK || route == ROUTE_SUBSCRIBE || route == ROUTE_FLOWS)
	{
		slot = (uint8_t) provider_slot(provider);
		if (slot == PROVIDER_NONE)
			slot = PROVIDER_OTHER;
	}

	for (int i = 0; i < metrics.n_series && series == NULL; i++)
	{
		RequestSeries *s = &metrics.series[i];

		if (s->route == route && s->provider == slot && s->status == status)
			series = s;
	}
	if (series == NULL && metrics.n_series < MAX_SERIES)
	{
		series = &metrics.series[metrics.n_series++];
		series->route = (uint8_t) route;
		series->provider = slot;
		series->status = (uint16_t) status;
	}
	if (series != NULL)
		series->count++;
	else
		metrics.series_overflow++;

	for (b = 0; b < N_BUCKETS && seconds > duration_buckets[b]; b++)
		;
	metrics.duration_counts[route][b]++;
	metrics.duration_sums[route] += seconds;
	pthread_mutex_unlock(&metrics.lock);
}

/*
 * Count an outcome returned by payments.ingest().
 */
void
metrics_outcome(const char *provider, const char *outcome)
{
	int			slot;
	int			o;
	size_t		len = strspn(outcome, "abcdefghijklmnopqrstuvwxyz_");

	pthread_mutex_lock(&metrics.lock);
	slot = provider_slot(provider);
	for (o = 0; o < metrics.n_outcomes; o++)
	{
		if (strcmp(metrics.outcomes[o], outcome) == 0)
			break;
	}
	if (o == metrics.n_outcomes)
	{
		if (metrics.n_outcomes < MAX_OUTCOMES && len > 0 &&
			len <= OUTCOME_MAX_LEN && outcome[len] == '\0')
			snprintf(metrics.outcomes[metrics.n_outcomes++],
					 OUTCOME_MAX_LEN + 1, "%s", outcome);
		else
			o = MAX_OUTCOMES;
	}
	metrics.outcome_counts[slot][o]++;
	pthread_mutex_unlock(&metrics.lock);
}

/*
 * Count a request refused or dropped by the shim itself.
 */
void
metrics_reject(Rejection reason)
{
	pthread_mutex_lock(&metrics.lock);
	metrics.rejections[reason]++;
	pthread_mutex_unlock(&metrics.lock);
}

/*
 * A batch thread's database connection changed state.
 */
void
metrics_db_state(DbConnState from, DbConnState to)
{
	pthread_mutex_lock(&metrics.lock);
	metrics.db_states[from]--;
	metrics.db_states[to]++;
	pthread_mutex_unlock(&metrics.lock);
}

/*
 * Count a connection attempt; "reconnect" when it replaces a connection
 * that was lost or could not be made.
 */
void
metrics_db_connect(bool ok, bool reconnect)
{
	pthread_mutex_lock(&metrics.lock);
	if (!ok)
		metrics.db_connects_failed++;
	else
	{
		metrics.db_connects_ok++;
		if (reconnect)
			metrics.db_reconnects++;
	}
	pthread_mutex_unlock(&metrics.lock);
}

/*
 * Count one transaction of deliveries (batch.c): its size, whether it
 * committed, and how long it took from the first statement sent to the
 * commit's answer.
 */
void
metrics_batch(unsigned int size, bool committed, double seconds)
{
	size_t		b;
	size_t		t;

	for (b = 0; b < N_SIZE_BUCKETS && size > batch_size_buckets[b]; b++)
		;
	for (t = 0; t < N_TIME_BUCKETS && seconds > batch_time_buckets[t]; t++)
		;
	pthread_mutex_lock(&metrics.lock);
	metrics.batch_sizes[b]++;
	metrics.batch_deliveries += size;
	metrics.batch_times[t]++;
	metrics.batch_time_sum += seconds;
	if (!committed)
		metrics.batches_failed++;
	pthread_mutex_unlock(&metrics.lock);
}

/*
 * Append a label value, escaped as the exposition format wants.
 */
static void
append_label_value(StrBuf *out, const char *value)
{
	for (const char *p = value; *p != '\0'; p++)
	{
		if (*p == '\\' || *p == '"')
			buf_printf(out, "\\%c", *p);
		else if (*p == '\n')
			buf_append_str(out, "\\n");
		else
			buf_append(out, p, 1);
	}
}

/*
 * Append the # HELP and # TYPE lines of a metric.
 */
static void
append_header(StrBuf *out, const char *name, const char *type,
			  const char *help)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/*
 * Label value of a provider slot.
 */
static const char *
provider_label(int slot)
{
	if (slot == PROVIDER_NONE)
		return "";
	if (slot == PROVIDER_OTHER)
		return "_other";
	return metrics.providers[slot];
}

/*
 * Render the request counters and the latency histogram.
 */
static void
render_requests(StrBuf *out)
{
	append_header(out, "payments_shim_requests_total", "counter",
				  "HTTP requests answered, by route, provider and status.");
	for (int i = 0; i < metrics.n_series; i++)
	{
		const RequestSeries *s = &metrics.series[i];

		buf_printf(out, "payments_shim_requests_total{route=\"%s\",provider=\"",
				   route_names[s->route]);
		append_label_value(out, provider_label(s->provider));
		buf_printf(out, "\",status=\"%u\"} %llu\n", (unsigned int) s->status,
				   (unsigned long long) s->count);
	}
	append_header(out, "payments_shim_metrics_overflow_total", "counter",
				  "Requests not counted by route, provider and status because the series table was full.");
	buf_printf(out, "payments_shim_metrics_overflow_total %llu\n",
			   (unsigned long long) metrics.series_overflow);

	append_header(out, "payments_shim_request_duration_seconds", "histogram",
				  "Time from the end of the request headers to the end of the answer, by route.");
	for (int r = 0; r < ROUTE_COUNT; r++)
	{
		uint64_t	cumulative = 0;

		for (size_t b = 0; b <= N_BUCKETS; b++)
		{
			cumulative += metrics.duration_counts[r][b];
			if (b < N_BUCKETS)
				buf_printf(out, "payments_shim_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
						   route_names[r], duration_buckets[b],
						   (unsigned long long) cumulative);
			else
				buf_printf(out, "payments_shim_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
						   route_names[r], (unsigned long long) cumulative);
		}
		buf_printf(out, "payments_shim_request_duration_seconds_sum{route=\"%s\"} %.6f\n",
				   route_names[r], metrics.duration_sums[r]);
		buf_printf(out, "payments_shim_request_duration_seconds_count{route=\"%s\"} %llu\n",
				   route_names[r], (unsigned long long) cumulative);
	}
}

/*
 * Render outcomes and rejections.
 */
static void
render_outcomes(StrBuf *out)
{
	append_header(out, "payments_shim_ingest_outcomes_total", "counter",
				  "Outcomes returned by payments.ingest(), by provider.");
	for (int p = PROVIDER_OTHER; p < PROVIDER_FIRST + metrics.n_providers; p++)
	{
		for (int o = 0; o < OUTCOME_SLOTS; o++)
		{
			if (metrics.outcome_counts[p][o] == 0)
				continue;
			buf_append_str(out, "payments_shim_ingest_outcomes_total{provider=\"");
			append_label_value(out, provider_label(p));
			buf_printf(out, "\",outcome=\"%s\"} %llu\n",
					   o < metrics.n_outcomes ? metrics.outcomes[o] : "_other",
					   (unsigned long long) metrics.outcome_counts[p][o]);
		}
	}

	append_header(out, "payments_shim_rejections_total", "counter",
				  "Requests and connections refused or dropped by the shim itself, by reason.");
	for (int r = 0; r < REJECT_COUNT; r++)
		buf_printf(out, "payments_shim_rejections_total{reason=\"%s\"} %llu\n",
				   rejection_names[r], (unsigned long long) metrics.rejections[r]);
}

/*
 * Render the database connection metrics.
 */
static void
render_db(StrBuf *out)
{
	append_header(out, "payments_shim_db_connections", "gauge",
				  "Batch threads' database connections by state (threads that never needed one are not counted).");
	for (int s = 0; s < DBCONN_COUNT; s++)
	{
		if (db_state_names[s] != NULL)
			buf_printf(out, "payments_shim_db_connections{state=\"%s\"} %ld\n",
					   db_state_names[s], metrics.db_states[s]);
	}
	append_header(out, "payments_shim_db_connect_attempts_total", "counter",
				  "Database connection attempts, by result.");
	buf_printf(out, "payments_shim_db_connect_attempts_total{result=\"success\"} %llu\n",
			   (unsigned long long) metrics.db_connects_ok);
	buf_printf(out, "payments_shim_db_connect_attempts_total{result=\"failure\"} %llu\n",
			   (unsigned long long) metrics.db_connects_failed);
	append_header(out, "payments_shim_db_reconnects_total", "counter",
				  "Database connections made to replace one that was lost or could not be made.");
	buf_printf(out, "payments_shim_db_reconnects_total %llu\n",
			   (unsigned long long) metrics.db_reconnects);
}

/*
 * Render a histogram without labels from its per-bucket counts (+Inf last).
 */
static void
render_histogram(StrBuf *out, const char *name, const double *bounds,
				 size_t n_bounds, const uint64_t *counts, double sum)
{
	uint64_t	cumulative = 0;

	for (size_t b = 0; b < n_bounds; b++)
	{
		cumulative += counts[b];
		buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[b],
				   (unsigned long long) cumulative);
	}
	cumulative += counts[n_bounds];
	buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name,
			   (unsigned long long) cumulative);
	buf_printf(out, "%s_sum %.6f\n%s_count %llu\n", name, sum, name,
			   (unsigned long long) cumulative);
}

/*
 * Render the group commit metrics.
 */
static void
render_batches(StrBuf *out)
{
	append_header(out, "payments_shim_batch_deliveries", "histogram",
				  "Deliveries stored per database transaction (group commit).");
	render_histogram(out, "payments_shim_batch_deliveries", batch_size_buckets,
					 N_SIZE_BUCKETS, metrics.batch_sizes,
					 (double) metrics.batch_deliveries);
	append_header(out, "payments_shim_batch_seconds", "histogram",
				  "Time of a transaction of deliveries, from its first statement to the commit's answer.");
	render_histogram(out, "payments_shim_batch_seconds", batch_time_buckets,
					 N_TIME_BUCKETS, metrics.batch_times, metrics.batch_time_sum);
	append_header(out, "payments_shim_batches_failed_total", "counter",
				  "Transactions of deliveries that did not commit (none of their requests is answered 2xx from them).");
	buf_printf(out, "payments_shim_batches_failed_total %llu\n",
			   (unsigned long long) metrics.batches_failed);
}

/*
 * Render every metric into "out".
 */
void
metrics_render(StrBuf *out)
{
	int			libpq = PQlibVersion();
	unsigned int in_flight = http_in_flight();
	unsigned int connections = conn_open_count();

	/* conn.c counts rejections under its own lock: never take it under ours */
	pthread_mutex_lock(&metrics.lock);
	append_header(out, "payments_shim_build_info", "gauge",
				  "Versions of the shim and its libraries; always 1.");
	buf_append_str(out, "payments_shim_build_info{version=\"");
	append_label_value(out, SHIM_VERSION);
	buf_append_str(out, "\",libmicrohttpd=\"");
	append_label_value(out, MHD_get_version());
	buf_printf(out, "\",libpq=\"%d.%d\"} 1\n", libpq / 10000, libpq % 10000);
	append_header(out, "payments_shim_start_time_seconds", "gauge",
				  "Start time of the process since the Unix epoch.");
	buf_printf(out, "payments_shim_start_time_seconds %lld\n",
			   (long long) metrics.start_time);

	render_requests(out);
	append_header(out, "payments_shim_requests_in_flight", "gauge",
				  "Requests received and not yet answered.");
	buf_printf(out, "payments_shim_requests_in_flight %u\n", in_flight);
	append_header(out, "payments_shim_connections", "gauge",
				  "Open HTTP connections.");
	buf_printf(out, "payments_shim_connections %u\n", connections);
	render_outcomes(out);
	render_db(out);
	render_batches(out);
	pthread_mutex_unlock(&metrics.lock);
}
