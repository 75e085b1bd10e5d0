/*
 * payments.c
 *		Module entry of the payments extension.
 */
#include "payments.h"

#include "fmgr.h"

PG_MODULE_MAGIC;
