/*
 * fuzz_shim_addr.c
 *		The shim's client addresses (shim/addr.c): CIDR ranges as given to
 *		--trusted-proxies, and the client address taken from X-Forwarded-For
 *		when the peer is a trusted proxy.
 *
 * Input: a CIDR range on the first line, then header lines as in
 * fuzz_shim_headers; the peer is a trusted proxy.  A range that parses must
 * contain its own address, and the client address formatted as text must
 * parse back to the same address.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim_support.h"

ShimConfig	shim_config;

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The trusted proxies of the harness: loopback, 10.0.0.0/8 and fd00::/8 */
static Cidr trusted[3];

/* One input: see the header comment for its layout and what is checked */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t		first = nl ? (size_t) (nl - data) : size;
	Cidr		range;
	IpAddr		peer;
	IpAddr		client;
	char		text[IP_TEXT_BUFSIZE];
	Cidr		again;

	if (shim_config.n_trusted_proxies == 0)
	{
		if (!cidr_parse("127.0.0.0/8", 11, &trusted[0]) || !cidr_parse("10.0.0.0/8", 10, &trusted[1]) ||
			!cidr_parse("fd00::/8", 8, &trusted[2]))
			abort();
		shim_config.trusted_proxies = trusted;
		shim_config.n_trusted_proxies = 3;
	}

	if (cidr_parse((const char *) data, first, &range) &&
		!ip_in_ranges(&range.addr, &range, 1))
	{
		fprintf(stderr, "shim addr: %.*s does not contain its own address\n", (int) first, data);
		abort();
	}

	peer = trusted[1].addr;
	peer.b[15] = 1;				/* 10.0.0.1, a trusted proxy */
	client_ip_forwarded(nl ? fuzz_connection(nl + 1, size - first - 1) : fuzz_connection(data, 0),
						&peer, &client);
	ip_format(&client, text, sizeof(text));
	if (memchr(text, '\0', sizeof(text)) == NULL || !cidr_parse(text, strlen(text), &again) ||
		memcmp(&again.addr, &client, sizeof(client)) != 0)
	{
		fprintf(stderr, "shim addr: client formatted as \"%.*s\" does not parse back\n",
				(int) sizeof(text), text);
		abort();
	}
	return 0;
}
