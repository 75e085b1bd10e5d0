/*
 * signature_reuse.c
 *		Deliveries that carry one signature wait for each other.
 *
 * Some signatures cover less than the body they come with: PayPal's covers
 * the body's CRC-32, which another body can match; Paynow's hash covers the
 * form's values run together, without their names or where one ends, so
 * that characters can move from one field to the next.  Such a signature,
 * stored once with one body, is refused with another (kind_paypal.c,
 * kind_paynow.c).  So that two transactions racing with one signature and
 * two bodies cannot both pass that check, each first takes a
 * transaction-level advisory lock of the signature: the second waits for the
 * first to commit, then sees what it stored.  The lock's scope is where the
 * signature must be unique: a PayPal transmission id within its provider,
 * a Paynow hash across every Paynow provider (one integration key may
 * serve several).
 */
#include "payments.h"

#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "utils/fmgrprotos.h"

#define SIGNATURE_LOCK_SEED UINT64CONST(0x7061796d)	/* 'paym' */

/*
 * Takes the transaction-level advisory lock of a signature (or PayPal's
 * transmission id) within a scope (a provider's name, or a kind's):
 * pg_advisory_xact_lock(bigint) with a hash of the scope and the signature,
 * a key space apart from the jobs' two-integer keys.  Two signatures of the
 * same hash only wait for each other.
 */
void
LockSignatureUse(const char *scope, const char *signature, int len)
{
	StringInfoData key;
	uint64		hash;

	initStringInfo(&key);
	appendStringInfoString(&key, scope);
	appendStringInfoChar(&key, '|');
	appendBinaryStringInfo(&key, signature, len);
	hash = hash_bytes_extended((const unsigned char *) key.data, key.len, SIGNATURE_LOCK_SEED);
	pfree(key.data);
	DirectFunctionCall1(pg_advisory_xact_lock_int8, Int64GetDatum((int64) hash));
}
