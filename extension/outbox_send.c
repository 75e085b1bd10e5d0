/*
 * outbox_send.c
 *		Sends a batch of HTTP requests (JSON POSTs of the outbox and multipart
 *		uploads of WhatsApp documents; the GETs and POSTs of reconciliation) in
 *		parallel with libcurl's multi interface.
 *
 * Every buffer is allocated by the caller before any libcurl handle exists,
 * and nothing here can raise a PostgreSQL error while handles are live: errors
 * are reported in each request's fields, and a pending query cancel or
 * shutdown stops the loop, frees every handle and tells the caller, who then
 * lets CHECK_FOR_INTERRUPTS raise it.  No redirects, http and https only, TLS
 * peer and host verified (the endpoint may name its CA file), connect and
 * total timeouts, a cap on the response size.
 */
#include "payments.h"

#include <curl/curl.h>
#include <time.h>

#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/pmsignal.h"
#include "utils/timeout.h"

/* How long one wait for network activity lasts before interrupts are checked again */
#define POLL_INTERVAL_MS 100

StaticAssertDecl(OUTBOUND_ERROR_SIZE >= CURL_ERROR_SIZE, "libcurl needs a larger error buffer");

static bool curl_initialized = false;

/* Ensures curl_global_init has run in this backend; false if it failed */
static bool
CurlReady(void)
{
	if (!curl_initialized && curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK)
		curl_initialized = true;
	return curl_initialized;
}

/* libcurl write callback: keeps the start of the body, aborts past the cap */
static size_t
KeepResponse(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	OutboundRequest *req = (OutboundRequest *) userdata;
	size_t		n = size * nmemb;
	size_t		keep = req->response_keep > 0 ? req->response_keep : OUTBOUND_RESPONSE_KEPT;

	if (req->response_len < keep)
	{
		size_t		room = keep - req->response_len;
		size_t		take = n < room ? n : room;

		memcpy(req->response + req->response_len, ptr, take);
		req->response_len += take;
		req->response[req->response_len] = '\0';
	}
	req->response_total += n;
	if (req->response_total > (size_t) req->max_response)
	{
		req->too_large = true;
		return 0;				/* CURLE_WRITE_ERROR ends the transfer */
	}
	return n;
}

/* Parses a Retry-After value: delta seconds or an HTTP date; -1 if neither */
static int
ParseRetryAfter(const char *value, size_t len)
{
	char		buf[64];
	long		seconds = 0;
	size_t		i;
	time_t		at;

	while (len > 0 && (value[len - 1] == '\r' || value[len - 1] == '\n' || value[len - 1] == ' '))
		len--;
	while (len > 0 && (*value == ' ' || *value == '\t'))
	{
		value++;
		len--;
	}
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, value, len);
	buf[len] = '\0';
	for (i = 0; i < len && buf[i] >= '0' && buf[i] <= '9'; i++)
		if (seconds < 86400 * 365)
			seconds = seconds * 10 + (buf[i] - '0');
	if (i == len)
		return seconds > INT_MAX ? INT_MAX : (int) seconds;
	at = curl_getdate(buf, NULL);
	if (at < 0)
		return -1;
	seconds = (long) (at - time(NULL));
	return seconds < 0 ? 0 : seconds > INT_MAX ? INT_MAX : (int) seconds;
}

/* libcurl header callback: picks out Retry-After */
static size_t
ReadHeader(char *buffer, size_t size, size_t nitems, void *userdata)
{
	OutboundRequest *req = (OutboundRequest *) userdata;
	size_t		n = size * nitems;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) - 1 && pg_strncasecmp(buffer, name, sizeof(name) - 1) == 0)
		req->retry_after = ParseRetryAfter(buffer + sizeof(name) - 1, n - (sizeof(name) - 1));
	return n;
}

/*
 * Builds a request's multipart/form-data body (its fields, then its body as
 * the file part) on the handle; false (with req->error) on failure.  The mime
 * structure is kept in req->mime and freed after the handle.
 */
static bool
SetUpForm(CURL *curl, OutboundRequest *req)
{
	curl_mimepart *part;

	req->mime = curl_mime_init(curl);
	if (req->mime == NULL)
	{
		strlcpy(req->error, "could not build the multipart body", sizeof(req->error));
		return false;
	}
	for (int i = 0; i + 1 < req->nform_fields; i += 2)
	{
		part = curl_mime_addpart(req->mime);
		if (part == NULL ||
			curl_mime_name(part, req->form_fields[i]) != CURLE_OK ||
			curl_mime_data(part, req->form_fields[i + 1], CURL_ZERO_TERMINATED) != CURLE_OK)
		{
			strlcpy(req->error, "could not build the multipart body", sizeof(req->error));
			return false;
		}
	}
	part = curl_mime_addpart(req->mime);
	if (part == NULL ||
		curl_mime_name(part, "file") != CURLE_OK ||
		curl_mime_data(part, req->body, req->bodylen) != CURLE_OK ||
		curl_mime_filename(part, req->file_name) != CURLE_OK ||
		curl_mime_type(part, req->file_type) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_MIMEPOST, req->mime) != CURLE_OK)
	{
		strlcpy(req->error, "could not build the multipart body", sizeof(req->error));
		return false;
	}
	return true;
}

/* Sets up one easy handle for a request; false (with req->error) on failure */
static bool
SetUpHandle(CURL *curl, OutboundRequest *req)
{
	for (int i = 0; i < req->nheaders; i++)
	{
		struct curl_slist *more = curl_slist_append(req->header_list, req->headers[i]);

		if (more == NULL)
		{
			strlcpy(req->error, "could not build the request headers", sizeof(req->error));
			return false;
		}
		req->header_list = more;
	}
	if (curl_easy_setopt(curl, CURLOPT_URL, req->url) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, req->timeout_ms) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||	/* PostgreSQL owns SIGALRM */
#if LIBCURL_VERSION_NUM >= 0x075700
		/* a name lookup that hangs is left to its thread, not waited for past the timeouts */
		curl_easy_setopt(curl, CURLOPT_QUICK_EXIT, 1L) != CURLE_OK ||
#endif
		curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
		(req->ca_file != NULL && curl_easy_setopt(curl, CURLOPT_CAINFO, req->ca_file) != CURLE_OK) ||
		(req->get ? curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L) != CURLE_OK :
		 req->file_name != NULL ? false :	/* the multipart body is set below */
		 (curl_easy_setopt(curl, CURLOPT_POST, 1L) != CURLE_OK ||
		  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->bodylen) != CURLE_OK ||
		  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req->body) != CURLE_OK)) ||
		curl_easy_setopt(curl, CURLOPT_HTTPHEADER, req->header_list) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, KeepResponse) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_WRITEDATA, req) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, ReadHeader) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_HEADERDATA, req) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, req->error) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_PRIVATE, req) != CURLE_OK ||
		curl_easy_setopt(curl, CURLOPT_USERAGENT, "payments-postgresql/0.1.0") != CURLE_OK)
	{
		strlcpy(req->error, "could not set up libcurl", sizeof(req->error));
		return false;
	}
	return req->get || req->file_name == NULL || SetUpForm(curl, req);
}

/* Fills in a finished request's outcome from its handle */
static void
FinishRequest(CURL *curl, OutboundRequest *req, CURLcode rc)
{
	long		status = 0;
	curl_off_t	micros = 0;

	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(curl, CURLINFO_TOTAL_TIME_T, &micros);
	req->http_status = status;
	req->duration_ms = (int) (micros / 1000);
	req->done = true;
	if (req->too_large)
		snprintf(req->error, sizeof(req->error), "response larger than %d bytes, not read further",
				 req->max_response);
	else if (rc == CURLE_OK)
		req->error[0] = '\0';
	else if (req->error[0] == '\0')
		strlcpy(req->error, curl_easy_strerror(rc), sizeof(req->error));
	if (rc == CURLE_OPERATION_TIMEDOUT && strncmp(req->error, "timeout", 7) != 0)
	{
		char		detail[CURL_ERROR_SIZE];

		strlcpy(detail, req->error, sizeof(detail));
		snprintf(req->error, sizeof(req->error), "timeout: %s", detail);
	}
}

/*
 * Sends every request of the batch in parallel and fills in their outcomes.
 * Returns false if a query cancel or shutdown is pending or the postmaster
 * died: the batch was stopped and every handle freed, the requests that had
 * not finished left not done; the caller raises it.
 */
bool
SendOutboundBatch(OutboundRequest *reqs, int n)
{
	CURLM	   *multi;
	CURL	  **handles;
	bool		interrupted = false;
	bool		untimed;
	int			running = 0;

	for (int i = 0; i < n; i++)
	{
		reqs[i].done = false;
		reqs[i].http_status = 0;
		reqs[i].retry_after = -1;
		reqs[i].response_len = 0;
		reqs[i].response_total = 0;
		reqs[i].too_large = false;
		reqs[i].header_list = NULL;
		reqs[i].mime = NULL;
		reqs[i].error[0] = '\0';
		reqs[i].response[0] = '\0';
	}
	handles = palloc0(sizeof(CURL *) * n);
	/* from here on, no PostgreSQL error may be raised until every handle is freed */

	if (!CurlReady() || (multi = curl_multi_init()) == NULL)
	{
		for (int i = 0; i < n; i++)
			strlcpy(reqs[i].error, "could not initialize libcurl", sizeof(reqs[i].error));
		pfree(handles);
		return true;
	}
	for (int i = 0; i < n; i++)
	{
		handles[i] = curl_easy_init();
		if (handles[i] == NULL)
			strlcpy(reqs[i].error, "could not create a libcurl handle", sizeof(reqs[i].error));
		else if (!SetUpHandle(handles[i], &reqs[i]))
			;					/* error set */
		else if (curl_multi_add_handle(multi, handles[i]) != CURLM_OK)
			strlcpy(reqs[i].error, "could not queue the request", sizeof(reqs[i].error));
		else
			continue;
		reqs[i].done = true;
		if (handles[i] != NULL)
			curl_easy_cleanup(handles[i]);
		handles[i] = NULL;
	}

	/* a job's wait is bounded by the requests' timeouts, not statement_timeout (run_job) */
	untimed = SuspendStatementTimeout();
	for (;;)
	{
		CURLMsg    *msg;
		int			queued;

		if (curl_multi_perform(multi, &running) != CURLM_OK)
			break;
		while ((msg = curl_multi_info_read(multi, &queued)) != NULL)
		{
			OutboundRequest *req = NULL;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
			if (req != NULL)
				FinishRequest(msg->easy_handle, req, msg->data.result);
		}
		if (running == 0)
			break;
		if ((InterruptPending && (QueryCancelPending || ProcDiePending)) || !PostmasterIsAlive())
		{
			interrupted = true;
			break;
		}
		if (curl_multi_poll(multi, NULL, 0, POLL_INTERVAL_MS, NULL) != CURLM_OK)
			break;
	}

	for (int i = 0; i < n; i++)
	{
		if (handles[i] != NULL)
		{
			curl_multi_remove_handle(multi, handles[i]);
			curl_easy_cleanup(handles[i]);
		}
		if (reqs[i].header_list != NULL)
			curl_slist_free_all(reqs[i].header_list);
		reqs[i].header_list = NULL;
		curl_mime_free(reqs[i].mime);	/* after its handle; NULL is a no-op */
		reqs[i].mime = NULL;
	}
	curl_multi_cleanup(multi);
	/* the statements that record the answers are held to the whole timeout again */
	ResumeStatementTimeout(untimed);
	pfree(handles);
	if (!interrupted)
		EndUnfinishedRequests(reqs, n);
	return !interrupted;
}

/*
 * Gives the requests of a batch that did not finish (libcurl failed, or the
 * batch was stopped) the error that says so.
 */
void
EndUnfinishedRequests(OutboundRequest *reqs, int n)
{
	for (int i = 0; i < n; i++)
	{
		if (!reqs[i].done)
		{
			reqs[i].done = true;
			strlcpy(reqs[i].error, "the transfer did not finish", sizeof(reqs[i].error));
		}
	}
}

/*
 * After SendOutboundBatch was stopped: when the reason is a query cancel
 * (not a terminate), sets it aside so that the caller can record the
 * requests that finished before serving it -- a receiver or provider that
 * answered is then not asked again -- and returns true; the caller records
 * them (RunUntilCancel), calls EndCancelAside, commits, and calls
 * ServeCancelSetAside.  Interrupts are still served meanwhile: a terminate
 * ends the backend, and a second cancel the recording, which also waits on
 * no lock for more than a second and lasts CANCEL_ASIDE_MS in all (the
 * statement timeout is armed again for it: a batch whose endpoints' rows
 * another transaction holds would otherwise wait a second per result).
 * statement_timeout: whether the cancel is a statement timeout's.
 */
bool
SetCancelAside(bool *statement_timeout)
{
	if (!QueryCancelPending || ProcDiePending)
		return false;
	/* a lock timeout while recording must not be told as this */
	*statement_timeout = get_timeout_indicator(STATEMENT_TIMEOUT, true);
	QueryCancelPending = false;
	if (SPI_execute("SET LOCAL lock_timeout = '1s'", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set lock_timeout");
	enable_timeout_after(STATEMENT_TIMEOUT, CANCEL_ASIDE_MS);
	return true;
}

/*
 * Ends the recording SetCancelAside allowed: a cancel that stopped it (its
 * time up, or a second one) is the one set aside, served after the commit.
 */
void
EndCancelAside(void)
{
	disable_timeout(STATEMENT_TIMEOUT, false);
	QueryCancelPending = false;
}

/* Raises the cancel SetCancelAside set aside */
void
ServeCancelSetAside(bool statement_timeout)
{
	if (statement_timeout)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("canceling statement due to statement timeout")));
	QueryCancelPending = true;
	InterruptPending = true;
	CHECK_FOR_INTERRUPTS();
}
