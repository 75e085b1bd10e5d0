/*
 * support.h
 *		What the fuzz harnesses share: running the extension's C code outside
 *		the server (see support.c), and splitting one fuzz input into fields.
 */
#ifndef FUZZ_SUPPORT_H
#define FUZZ_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Frees everything palloc'd since the last call (the end of one input) */
extern void fuzz_reset(void);

/*
 * Splits data into at most max fields at each '\n' (the last field takes the
 * rest, newlines included); returns how many fields there are.  The fields
 * point into data and are not NUL-terminated.
 */
extern int	fuzz_split(const uint8_t *data, size_t size, int max,
					   const char **fields, int *lens);

/* A NUL-terminated palloc'd copy of a field */
extern char *fuzz_cstring(const char *s, int len);

#endif							/* FUZZ_SUPPORT_H */
