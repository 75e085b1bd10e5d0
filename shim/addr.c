/*-------------------------------------------------------------------------
 *
 * addr.c
 *	  Client addresses: parsing, formatting, trusted proxy ranges, and the
 *	  client's address from X-Forwarded-For.
 *
 * The client address is the TCP peer, unless the peer is a trusted proxy
 * (--trusted-proxies).  Then X-Forwarded-For is read from the right: each
 * proxy appends the address it received the request from, so the rightmost
 * entry that is not itself a trusted proxy is the first address nobody we
 * trust could have forged.  Entries left of it are ignored.  An entry is an
 * IP address, possibly with a port as some proxies write it ("192.0.2.1:
 * 5555", "[2001:db8::1]:5555", "[2001:db8::1]"); anything else stops the
 * walk, and the last trusted hop is used.
 *
 * shim/addr.c
 *
 *-------------------------------------------------------------------------
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "shim.h"

#define FORWARDED_FOR_HEADER	"X-Forwarded-For"
#define FORWARDED_MAX_HEADERS	16
#define FORWARDED_MAX_HOPS		32

/*
 * The last FORWARDED_MAX_HEADERS X-Forwarded-For header lines of a request,
 * line i (from 0, in arrival order) at i % FORWARDED_MAX_HEADERS: the walk
 * starts from the last line, the one the nearest proxy may have appended,
 * so lines a client sent before it are the ones to drop.
 */
typedef struct ForwardedList
{
	const char *values[FORWARDED_MAX_HEADERS];
	size_t		lengths[FORWARDED_MAX_HEADERS];
	size_t		count;			/* lines seen, kept or not */
} ForwardedList;

static const unsigned char v4_mapped_prefix[12] =
{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/*
 * Parse a plain IPv4 or IPv6 address of "len" bytes (no port, no
 * brackets).
 */
static bool
ip_parse(const char *text, size_t len, IpAddr *out)
{
	char		buf[IP_TEXT_BUFSIZE];

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, text, len);
	buf[len] = '\0';

	if (inet_pton(AF_INET, buf, out->b + 12) == 1)
	{
		memcpy(out->b, v4_mapped_prefix, sizeof(v4_mapped_prefix));
		return true;
	}
	return inet_pton(AF_INET6, buf, out->b) == 1;
}

/* True if the len bytes at text are a port: 1 to 5 digits */
static bool
port_text(const char *text, size_t len)
{
	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++)
		if (text[i] < '0' || text[i] > '9')
			return false;
	return true;
}

/*
 * Parse an X-Forwarded-For entry: an IP address, or an IPv4 address with
 * ":port", or an IPv6 address in brackets with or without ":port".
 */
static bool
forwarded_hop_parse(const char *text, size_t len, IpAddr *out)
{
	const char *colon;

	if (len > 0 && text[0] == '[')
	{
		const char *close = memchr(text, ']', len);
		size_t		after;

		if (close == NULL)
			return false;
		after = len - (size_t) (close + 1 - text);
		if (after > 0 && !(close[1] == ':' && port_text(close + 2, after - 1)))
			return false;
		return ip_parse(text + 1, (size_t) (close - text - 1), out);
	}
	colon = memchr(text, ':', len);
	if (colon != NULL && memchr(colon + 1, ':', len - (size_t) (colon + 1 - text)) == NULL)
	{
		/* one colon: IPv4 and a port (an IPv6 address has two or more) */
		size_t		addr_len = (size_t) (colon - text);

		return port_text(colon + 1, len - addr_len - 1) && ip_parse(text, addr_len, out);
	}
	return ip_parse(text, len, out);
}

/*
 * The address of a socket address (IPv4 or IPv6); false for other
 * families.
 */
bool
ip_from_sockaddr(const struct sockaddr *sa, IpAddr *out)
{
	if (sa->sa_family == AF_INET)
	{
		memcpy(out->b, v4_mapped_prefix, sizeof(v4_mapped_prefix));
		memcpy(out->b + 12, &((const struct sockaddr_in *) sa)->sin_addr, 4);
		return true;
	}
	if (sa->sa_family == AF_INET6)
	{
		memcpy(out->b, &((const struct sockaddr_in6 *) sa)->sin6_addr, 16);
		return true;
	}
	return false;
}

/*
 * Format an address as text: IPv4-mapped addresses as plain IPv4.
 */
void
ip_format(const IpAddr *ip, char *out, size_t outsize)
{
	if (memcmp(ip->b, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0)
		inet_ntop(AF_INET, ip->b + 12, out, (socklen_t) outsize);
	else
		inet_ntop(AF_INET6, ip->b, out, (socklen_t) outsize);
}

/*
 * Parse ADDRESS or ADDRESS/BITS (len bytes).  IPv4 prefixes are stored
 * relative to the IPv4-mapped form, so one comparison covers both
 * families.
 */
bool
cidr_parse(const char *text, size_t len, Cidr *out)
{
	const char *slash = memchr(text, '/', len);
	size_t		addr_len = slash ? (size_t) (slash - text) : len;
	bool		v4;
	unsigned int bits;

	if (!ip_parse(text, addr_len, &out->addr))
		return false;
	v4 = (memchr(text, ':', addr_len) == NULL);
	if (slash == NULL)
		bits = v4 ? 32 : 128;
	else
	{
		const char *p = slash + 1;
		size_t		digits = len - addr_len - 1;

		if (digits == 0 || digits > 3)
			return false;
		bits = 0;
		for (size_t i = 0; i < digits; i++)
		{
			if (p[i] < '0' || p[i] > '9')
				return false;
			bits = bits * 10 + (unsigned int) (p[i] - '0');
		}
		if (bits > (v4 ? 32u : 128u))
			return false;
	}
	out->bits = v4 ? bits + 96 : bits;
	return true;
}

/*
 * Is ip inside the range?
 */
static bool
cidr_contains(const Cidr *range, const IpAddr *ip)
{
	unsigned int whole = range->bits / 8;
	unsigned int rest = range->bits % 8;
	unsigned char mask;

	if (memcmp(range->addr.b, ip->b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	mask = (unsigned char) (0xFF << (8 - rest));
	return (range->addr.b[whole] & mask) == (ip->b[whole] & mask);
}

/*
 * The address a client is known by for its rate limit: an IPv4 address
 * itself, an IPv6 address cut to its first ipv6_prefix bits (a site is
 * given a whole /64, and one host may use any address in it).
 */
void
ip_client_key(const IpAddr *ip, unsigned int ipv6_prefix, IpAddr *out)
{
	*out = *ip;
	if (memcmp(ip->b, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0 ||
		ipv6_prefix >= 128)
		return;
	for (unsigned int bit = ipv6_prefix; bit < 128; bit++)
		out->b[bit / 8] &= (unsigned char) ~(0x80 >> (bit % 8));
}

/*
 * Is ip inside any of the n ranges?
 */
bool
ip_in_ranges(const IpAddr *ip, const Cidr *ranges, size_t n)
{
	for (size_t i = 0; i < n; i++)
	{
		if (cidr_contains(&ranges[i], ip))
			return true;
	}
	return false;
}

/*
 * Is ip one of the trusted proxies?
 */
static bool
ip_trusted(const IpAddr *ip)
{
	return ip_in_ranges(ip, shim_config.trusted_proxies,
						shim_config.n_trusted_proxies);
}

/*
 * MHD iterator: remember each X-Forwarded-For header line.
 */
static enum MHD_Result
collect_forwarded(void *cls, enum MHD_ValueKind kind,
				  const char *key, size_t key_size,
				  const char *value, size_t value_size)
{
	ForwardedList *list = cls;

	(void) kind;
	if (value == NULL ||
		key_size != strlen(FORWARDED_FOR_HEADER) ||
		strncasecmp(key, FORWARDED_FOR_HEADER, key_size) != 0)
		return MHD_YES;
	list->values[list->count % FORWARDED_MAX_HEADERS] = value;
	list->lengths[list->count % FORWARDED_MAX_HEADERS] = value_size;
	list->count++;
	return MHD_YES;
}

/*
 * The client's address: the peer, or for a trusted peer the rightmost
 * untrusted X-Forwarded-For entry (see the file header).  Several header
 * lines count as one list joined by commas, in arrival order.
 */
void
client_ip_forwarded(struct MHD_Connection *conn, const IpAddr *peer,
					IpAddr *client)
{
	ForwardedList list = {{NULL}, {0}, 0};
	int			hops = 0;

	*client = *peer;
	if (!ip_trusted(peer))
		return;
	MHD_get_connection_values_n(conn, MHD_HEADER_KIND, collect_forwarded,
								&list);

	for (size_t h = list.count; h > 0 && list.count - h < FORWARDED_MAX_HEADERS; h--)
	{
		const char *value = list.values[(h - 1) % FORWARDED_MAX_HEADERS];
		size_t		end = list.lengths[(h - 1) % FORWARDED_MAX_HEADERS];

		while (end > 0)
		{
			size_t		start = end;
			size_t		first;
			size_t		last;
			IpAddr		hop;

			while (start > 0 && value[start - 1] != ',')
				start--;
			first = start;
			last = end;
			while (first < last && (value[first] == ' ' || value[first] == '\t'))
				first++;
			while (last > first && (value[last - 1] == ' ' || value[last - 1] == '\t'))
				last--;
			end = (start > 0) ? start - 1 : 0;
			if (first == last)
				continue;		/* empty entry, as in "a,,b" */

			if (++hops > FORWARDED_MAX_HOPS ||
				!forwarded_hop_parse(value + first, last - first, &hop))
				return;
			*client = hop;
			if (!ip_trusted(&hop))
				return;
		}
	}
}
