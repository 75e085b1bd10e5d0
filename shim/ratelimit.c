/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  A token bucket per client address, for webhook requests.
 *
 * Each client has a bucket of --rate-burst tokens, refilled at --rate
 * tokens per second; a request takes one token or is refused with 429 and
 * the seconds until a token is back (Retry-After).  A client is an IPv4
 * address, or an IPv6 prefix of --rate-ipv6-prefix bits (a /64: one host
 * may change its address within it at will).  Addresses in
 * --rate-exempt (by default loopback: a local proxy not declared in
 * --trusted-proxies would otherwise throttle all its clients as one) are
 * not limited.
 *
 * Memory is fixed: buckets live in a hash table of BUCKET_SLOTS slots,
 * split into stripes with a mutex each.  An address probes a few slots; if
 * none is its own or free, it takes over a slot whose bucket has refilled
 * completely (forgetting such a bucket changes nothing), or else the least
 * recently used one.  The hash is keyed with a random seed, so clients
 * cannot aim their addresses at one stripe.
 *
 * shim/ratelimit.c
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "shim.h"

#define BUCKET_STRIPES		16
#define BUCKETS_PER_STRIPE	512
#define BUCKET_PROBES		8

/* One client's bucket */
typedef struct Bucket
{
	IpAddr		ip;
	bool		used;
	double		tokens;
	int64_t		updated_us;		/* when tokens was last brought up to date */
} Bucket;

/* A share of the table with its own lock */
typedef struct BucketStripe
{
	pthread_mutex_t lock;
	Bucket		buckets[BUCKETS_PER_STRIPE];
} BucketStripe;

static BucketStripe stripes[BUCKET_STRIPES];
static uint64_t hash_seed;

/*
 * Monotonic clock in microseconds.
 */
static int64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * Seed the hash and set up the locks.
 */
bool
ratelimit_init(void)
{
	size_t		got = 0;

	while (got < sizeof(hash_seed))
	{
		ssize_t		n = getrandom((char *) &hash_seed + got,
								  sizeof(hash_seed) - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		got += (size_t) n;
	}
	for (int i = 0; i < BUCKET_STRIPES; i++)
		pthread_mutex_init(&stripes[i].lock, NULL);
	return true;
}

/*
 * Seeded FNV-1a over the address bytes.
 */
static uint64_t
ip_hash(const IpAddr *ip)
{
	uint64_t	h = 14695981039346656037ULL ^ hash_seed;

	for (size_t i = 0; i < sizeof(ip->b); i++)
	{
		h ^= ip->b[i];
		h *= 1099511628211ULL;
	}
	return h ^ (h >> 29);
}

/*
 * Bring a bucket's tokens up to date.
 */
static void
refill(Bucket *bucket, int64_t now)
{
	double		elapsed = (double) (now - bucket->updated_us) / 1e6;

	bucket->tokens += elapsed * (double) shim_config.rate;
	if (bucket->tokens > (double) shim_config.rate_burst)
		bucket->tokens = (double) shim_config.rate_burst;
	bucket->updated_us = now;
}

/*
 * Would a bucket be full by now?  (Does not change it.)
 */
static bool
refilled(const Bucket *bucket, int64_t now)
{
	double		elapsed = (double) (now - bucket->updated_us) / 1e6;

	return bucket->tokens + elapsed * (double) shim_config.rate >=
		(double) shim_config.rate_burst;
}

/*
 * Find the bucket of ip in a stripe, or the slot to give it (see the file
 * header).  Called with the stripe locked.
 */
static Bucket *
find_bucket(BucketStripe *stripe, size_t start, const IpAddr *ip, int64_t now)
{
	Bucket	   *victim = NULL;
	bool		victim_free = false;

	for (size_t i = 0; i < BUCKET_PROBES; i++)
	{
		Bucket	   *bucket = &stripe->buckets[(start + i) % BUCKETS_PER_STRIPE];

		if (bucket->used && memcmp(&bucket->ip, ip, sizeof(*ip)) == 0)
			return bucket;
		if (victim_free)
			continue;
		if (!bucket->used || refilled(bucket, now))
		{
			victim = bucket;
			victim_free = true;
		}
		else if (victim == NULL || bucket->updated_us < victim->updated_us)
			victim = bucket;
	}

	victim->ip = *ip;
	victim->used = true;
	victim->tokens = (double) shim_config.rate_burst;
	victim->updated_us = now;
	return victim;
}

/*
 * Take a token for the client at ip.  Returns false when the bucket is empty, with the
 * whole seconds until the next token in *retry_after_s (at least 1).
 * Always true when rate limiting is off (--rate 0) or ip is exempt.
 */
bool
ratelimit_take(const IpAddr *ip, unsigned int *retry_after_s)
{
	IpAddr		client;
	uint64_t	h;
	BucketStripe *stripe;
	Bucket	   *bucket;
	int64_t		now;
	bool		allowed;

	*retry_after_s = 0;
	if (shim_config.rate == 0 ||
		ip_in_ranges(ip, shim_config.rate_exempt, shim_config.n_rate_exempt))
		return true;

	ip_client_key(ip, shim_config.rate_ipv6_prefix, &client);
	h = ip_hash(&client);
	stripe = &stripes[h % BUCKET_STRIPES];
	now = now_us();

	pthread_mutex_lock(&stripe->lock);
	bucket = find_bucket(stripe, (size_t) (h / BUCKET_STRIPES), &client, now);
	refill(bucket, now);
	allowed = (bucket->tokens >= 1.0);
	if (allowed)
		bucket->tokens -= 1.0;
	else
	{
		double		wait = (1.0 - bucket->tokens) / (double) shim_config.rate;
		unsigned int whole = (unsigned int) wait;

		*retry_after_s = ((double) whole < wait) ? whole + 1 : whole;
		if (*retry_after_s == 0)
			*retry_after_s = 1;
	}
	pthread_mutex_unlock(&stripe->lock);
	return allowed;
}
