/*
 * payments.h
 *		Declarations shared by the C files of the payments extension.
 */
#ifndef PAYMENTS_H
#define PAYMENTS_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/jsonb.h"

/* The zone of the payments.receipt_timezone setting (payments.c) */
struct pg_tz;
extern struct pg_tz *ReceiptTimeZone(void);

/* Default replay window, in seconds, for schemes that sign a timestamp */
#define PAYMENTS_DEFAULT_TOLERANCE 300

/* Longest event id we store; providers' ids are far shorter */
#define PAYMENTS_MAX_EVENT_ID 255

/* Digest algorithms for HMAC */
typedef enum HmacAlgorithm
{
	HMAC_SHA1,
	HMAC_SHA256,
	HMAC_SHA512
} HmacAlgorithm;

/* One piece of the message to MAC; the pieces are concatenated */
typedef struct MacPart
{
	const void *data;
	size_t		len;
} MacPart;

/*
 * The outcome of a signature check.  reason is a short stable code recorded
 * in payments.rejections (NULL when valid); detail says more for a person and
 * never contains secret material.  transient marks a check that could not be
 * made for a passing reason (a certificate that could not be fetched): the
 * sender should retry, nothing is recorded against it.  invalid_body marks a
 * body that cannot even be read for its signature (a malformed Paynow form):
 * answered 400 "invalid" like any unusable body.
 */
typedef struct Verdict
{
	bool		valid;
	bool		transient;
	bool		invalid_body;
	const char *reason;
	char	   *detail;
} Verdict;

/* Live secrets of a provider, newest first */
typedef struct SecretList
{
	int			count;
	text	  **secrets;
} SecretList;

struct ProviderKind;

/* What ingest knows of a provider */
typedef struct Provider
{
	const char *name;
	const struct ProviderKind *kind;
	Jsonb	   *settings;
	int			tolerance;
	SecretList	secrets;
} Provider;

/* One delivery as the shim passes it */
typedef struct Delivery
{
	text	   *provider;
	Jsonb	   *headers;
	bytea	   *body;
	Datum		source_ip;
	bool		source_ip_null;
	text	   *request_id;
} Delivery;

/* One event to store from a delivery */
typedef struct EventRecord
{
	char	   *event_id;
	char	   *event_type;
	bool		have_event_at;
	TimestampTz event_at;
	Jsonb	   *payload;
} EventRecord;

/*
 * The events of a verified delivery (most carry one, a Meta batch several),
 * or why the body is not usable (count < 0).
 */
typedef struct EventList
{
	int			count;
	EventRecord *events;
	const char *invalid_reason;
	char	   *invalid_detail;
} EventList;

/*
 * A signature scheme and payload shape.  verify checks the signature over
 * the raw body before anything parses it; extract turns a verified body into
 * events; secret_problem says why a secret cannot serve, settings_problem why
 * settings cannot (NULL: usable; either hook may be absent).  The settings
 * keys a kind accepts are listed in payments.provider_kinds.
 */
typedef struct ProviderKind
{
	const char *name;
	bool		uses_secrets;	/* false: verified otherwise (PayPal: certificates) */
	void		(*verify) (const Provider *provider, const Delivery *delivery, Verdict *verdict);
	void		(*extract) (const Provider *provider, const Delivery *delivery, EventList *events);
	const char *(*secret_problem) (const char *secret, int len);
	char	   *(*settings_problem) (Jsonb *settings);
} ProviderKind;

extern const ProviderKind StripeKind;
extern const ProviderKind StandardKind;
extern const ProviderKind MetaKind;
extern const ProviderKind PaynowKind;
extern const ProviderKind EversendKind;
extern const ProviderKind HmacKind;
extern const ProviderKind PayPalKind;

/* What a delivery is answered (payments.ingest's row) */
typedef struct IngestResult
{
	int			http_status;
	const char *outcome;
	char	   *event_id;
} IngestResult;

/* ingest.c */
extern void MakeDelivery(Delivery *delivery, text *provider, Jsonb *headers, bytea *body,
						 Datum source_ip, bool source_ip_null, text *request_id);
extern void RequireReadCommitted(const char *function);
extern bool StripeEventOfOtherMode(Jsonb *settings, Jsonb *payload);
extern bool PrepareDelivery(const Delivery *delivery, Provider *provider, EventList *events,
							IngestResult *result);
extern void StoreDeliveryEvents(const Provider *provider, const Delivery *delivery,
								const EventList *events, IngestResult *result);
extern void RecordFailedAttempt(int64 event_row, const char *error);

/* receipts.c (inside an SPI connection) */
extern void IssueReceipt(int64 payment_id, TimestampTz paid_at);
extern bool ReceiptTakenWithBatch(int64 payment_id);

/* kinds.c */
extern const ProviderKind *FindProviderKind(const char *name);
extern bool IsDocumentationPlaceholder(const char *value, int len);

/* kept.c: rows of small tables kept in backend memory */
struct _SPI_plan;

typedef struct KeptCopies
{
	uint64		generation;		/* read at; 0: never */
	MemoryContext context;		/* their memory, under TopMemoryContext; NULL: none yet */
} KeptCopies;

extern uint64 KeptGeneration(void);
extern int	KeptRead(struct _SPI_plan *plan, Datum *args, long count);
extern bool KeptCopiesCurrent(KeptCopies *copies);
extern MemoryContext KeptCopiesContext(KeptCopies *copies, const char *what);

typedef struct KeptStamp
{
	LocalTransactionId lxid;	/* the transaction it was read in */
	uint64		generation;		/* moved on by changes and subtransaction aborts */
} KeptStamp;

extern bool KeptIsCurrent(const KeptStamp *stamp);
extern bool KeptInThisTransaction(const KeptStamp *stamp);
extern void KeptStampNow(KeptStamp *stamp);

/* providers.c */
extern bool LookupProvider(text *name, Provider *provider);

/* currencies.c */
extern bool CurrencyExponent(text *code, int *exponent);

/* payments.c: the payments.receipt_prefix setting */
extern char *payments_receipt_prefix;

/* endpoints.c */
extern bool EndpointsMayTakeTransitions(void);

/* signature_reuse.c */
extern void LockSignatureUse(const char *scope, const char *signature, int len);

/* row_triggers.c */
struct TriggerData;
extern void CheckRowTrigger(FunctionCallInfo fcinfo, const char *name, const char *table,
							bool on_update);
extern bool WrittenByThisTransaction(struct TriggerData *trigdata, const char *column);

/* settings.c: reading a provider's settings (a jsonb object) */
extern char *SettingText(Jsonb *settings, const char *key);
extern bool SettingBool(Jsonb *settings, const char *key, bool default_value);
extern int	SettingTextArray(Jsonb *settings, const char *key, char ***values);
extern bool SettingIsText(Jsonb *settings, const char *key);
extern bool SettingIsTextArray(Jsonb *settings, const char *key);
extern int	SettingTolerance(Jsonb *settings);

/* Request headers (a jsonb object with lower-cased names) */
extern const char *HeaderValue(Jsonb *headers, const char *name, int *len);

/* hmac.c */
extern int	HmacLength(HmacAlgorithm algorithm);
extern void ComputeHmac(HmacAlgorithm algorithm, const void *key, size_t keylen,
						const MacPart *parts, int nparts, unsigned char *out);
extern void ReportOpenSSLFailure(const char *what) pg_attribute_noreturn();

/* ed25519.c */
#define ED25519_PUBLIC_KEY_LEN 32
#define ED25519_SIGNATURE_LEN 64
extern bool VerifyEd25519(const unsigned char *public_key, const unsigned char *sig,
						  const unsigned char *msg, size_t msglen);

/* form.c: application/x-www-form-urlencoded bodies, decoded strictly */
typedef struct FormField
{
	char	   *key;			/* decoded, NUL-terminated UTF-8 */
	char	   *value;
	int			keylen;
	int			valuelen;
} FormField;

typedef struct Form
{
	int			count;
	FormField  *fields;			/* in the order received */
} Form;

extern bool ParseUrlEncodedForm(const char *body, int len, Form *form, char **error);
extern int	FormFieldIndex(const Form *form, const char *name);
extern Jsonb *FormToJsonb(const Form *form, char **error);

/* encoding.c */
extern bool ParseUnixSeconds(const char *s, int len, int64 *seconds);
extern bool IsLowerHex(const char *s, int len);
extern int	DecodeBase64Strict(const char *s, int len, unsigned char **out);
extern int	DecodeBase64Key(const char *s, int len, unsigned char **out);
extern char *EncodeBase64(const unsigned char *data, int len);
extern char *EncodeHex(const unsigned char *data, int len);

/* verdicts */
extern void VerdictReject(Verdict *verdict, const char *reason, const char *fmt,...)
			pg_attribute_printf(3, 4);
extern void CheckTolerance(Verdict *verdict, int64 signed_at, TimestampTz now, int tolerance);

/* kind_stripe.c */
extern void VerifyStripe(const char *body, int bodylen, const char *header, int headerlen,
						 const SecretList *secrets, int tolerance, TimestampTz now,
						 Verdict *verdict);

/* kind_standard.c */
extern void VerifyStandard(const char *body, int bodylen,
						   const char *msg_id, int idlen,
						   const char *msg_ts, int tslen,
						   const char *signature, int siglen,
						   const SecretList *secrets, int tolerance, TimestampTz now,
						   Verdict *verdict);

/* paypal_certificates.c */
extern char *PayPalCertificate(Jsonb *settings, const char *url, int urllen, const Delivery *delivery,
							   Verdict *verdict);
extern const char *PayPalCertHostProblem(const char *entry);

/* spi_plans.c (needs executor/spi.h) */
struct _SPI_plan;
extern struct _SPI_plan *KeptPlan(struct _SPI_plan **plan, const char *sql, int nargs, Oid *argtypes);
extern struct _SPI_plan *KeptGenericPlan(struct _SPI_plan **plan, const char *sql, int nargs,
										 Oid *argtypes);
extern bool KeptPlanFinds(struct _SPI_plan **plan, const char *sql, int nargs, Oid *argtypes,
						  Datum *args);
extern Datum ArrayParam(Datum *elems, bool *nulls, int n, Oid elemtype);

/* wal_flush.c */
extern XLogRecPtr FlushWrittenWal(void);

/* job_transactions.c (inside a non-atomic SPI connection) */
extern void UseReadCommitted(void);

/* subtransaction.c */
extern bool RunInSubtransaction(void (*step) (void *arg), void *arg, char **error);
extern bool RunDataStepCode(void (*step) (void *arg), void *arg, char **error,
							int *sqlerrcode);
extern bool RunInSubtransactionCode(void (*step) (void *arg), void *arg, char **error,
									int *sqlerrcode);
extern ErrorData *RunUntilCancel(void (*steps) (void *arg), void *arg, MemoryContext cxt);

/* event_body.c */
extern Jsonb *ParseEventBody(const char *body, int len, char **error);
extern Jsonb *ParseJsonDelivery(const Delivery *delivery, EventList *events);
extern void SingleEvent(EventList *events, char *event_id, Jsonb *payload);
extern void InvalidEvents(EventList *events, const char *reason, char *detail);
extern char *RequiredEventId(Jsonb *payload, const char *key, const char *provider_label,
							 EventList *events);
extern char *BodyDigestId(bytea *body);
extern char *JsonbTopString(Jsonb *jb, const char *key);
extern bool JsonbTopUnixTime(Jsonb *jb, const char *key, TimestampTz *result);
extern bool JsonbTopIsoTime(Jsonb *jb, const char *key, TimestampTz *result);

/* outbox_sign.c */
extern char *StandardWebhookSignature(const char *msg_id, int64 timestamp, const char *body,
									  size_t bodylen, const char *secret);

/* outbox_send.c: one outbound JSON POST of a batch */
#define OUTBOUND_ERROR_SIZE 256		/* at least CURL_ERROR_SIZE */
#define OUTBOUND_RESPONSE_KEPT 1024	/* bytes of a response body kept for the record */

typedef struct OutboundRequest
{
	/* set by the caller, allocated before sending */
	const char *url;
	const char *body;
	size_t		bodylen;
	char	  **headers;		/* "name: value" */
	int			nheaders;
	const char *ca_file;		/* NULL: the system's CA bundle */
	long		connect_timeout_ms;
	long		timeout_ms;
	int			max_response;
	bool		get;			/* GET instead of POST (body unused) */
	/* non-NULL: a multipart/form-data POST of form_fields, then the body as a file part */
	const char *file_name;
	const char *file_type;
	const char *const *form_fields;	/* name, value, name, value, ... */
	int			nform_fields;	/* names and values: twice the number of fields */
	size_t		response_keep;	/* bytes of the response kept; 0: OUTBOUND_RESPONSE_KEPT */
	char	   *response;		/* response_keep (or OUTBOUND_RESPONSE_KEPT) + 1 bytes */
	/* outcome */
	bool		done;
	long		http_status;	/* 0: no response */
	int			retry_after;	/* seconds, -1: none */
	int			duration_ms;
	size_t		response_len;	/* bytes kept in response */
	size_t		response_total; /* bytes received */
	bool		too_large;
	char		error[OUTBOUND_ERROR_SIZE]; /* empty: none */
	struct curl_slist *header_list; /* internal */
	struct curl_mime *mime;		/* internal */
} OutboundRequest;

extern bool SendOutboundBatch(OutboundRequest *reqs, int n);
extern void EndUnfinishedRequests(OutboundRequest *reqs, int n);

/* statement_timeout.c */
extern bool SuspendStatementTimeout(void);
extern void ResumeStatementTimeout(bool suspended);
/* How long the results of a cancelled batch may take to record, in all */
#define CANCEL_ASIDE_MS 1500
extern bool SetCancelAside(bool *statement_timeout);
extern void EndCancelAside(void);
extern void ServeCancelSetAside(bool statement_timeout);

/* reconcile.c: the largest provider reply read when reconciling */
#define RECONCILE_MAX_RESPONSE (64 * 1024)

/* provider_calls.c: requests to providers decided in SQL, sent in parallel */
extern void RunProviderCalls(const char *load, int max_items, const char *record, Oid keytype,
							 int max_response, MemoryContext cxt);

/* payments.c: the setting payments.reconcile_timeout */
extern int	reconcile_timeout_ms;

#endif							/* PAYMENTS_H */
