/*
 * objstore_faulty.h — fault injection around any object store (tests).
 *
 * The plan is borrowed and read with atomics on every call, so it can be
 * changed while the store is in use.  The inner store stays the caller's.
 */
#ifndef KS_STORAGE_OBJSTORE_FAULTY_H
#define KS_STORAGE_OBJSTORE_FAULTY_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/objstore.h"

typedef struct ks_objstore_faults {
        int fail_puts;     /* the next N puts fail with KS_ERR__UNAVAILABLE */
        int fail_gets;     /* the next N gets fail likewise */
        int put_fail_pct;  /* and this share of the others, at random */
        uint32_t seed;     /* for put_fail_pct (non-zero) */
        int put_delay_ms;  /* every put waits this long first */
        /* Counters (read them with atomics). */
        int puts, gets, injected;
} ks_objstore_faults_t;

ks_err_t ks_objstore_faulty_new(ks_objstore_t *inner, ks_objstore_faults_t *faults, ks_objstore_t **out);

#endif
