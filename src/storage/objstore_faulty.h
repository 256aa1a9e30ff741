/*
 * objstore_faulty.h — fault injection around any object store (tests).
 *
 * The plan is borrowed and read with atomics on every call, so it can be
 * changed while the store is in use.  The inner store stays the caller's.
 *
 * Gets that succeed can be spoiled after the fact: a short read returns
 * the first half of the bytes asked for, a corrupt read the bytes with one
 * bit flipped — what a broken proxy or disk could hand back.  Readers must
 * notice (the segment and index readers check lengths, footers and CRCs and
 * answer KS_ERR__CORRUPT).
 *
 * Throttling: the error type has no code of its own for S3's 503 SlowDown
 * (the S3 backend retries it and then reports KS_ERR__UNAVAILABLE), so a
 * throttled call fails with KS_ERR__UNAVAILABLE and is counted apart.
 */
#ifndef KS_STORAGE_OBJSTORE_FAULTY_H
#define KS_STORAGE_OBJSTORE_FAULTY_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/objstore.h"

typedef struct ks_objstore_faults {
        int fail_puts;     /* the next N puts fail with KS_ERR__UNAVAILABLE */
        int fail_gets;     /* the next N gets fail likewise */
        int fail_lists;    /* the next N lists fail likewise */
        int slow_down;     /* the next N calls of any kind fail as throttled */
        int put_fail_pct;  /* and this share of the other puts, at random */
        uint32_t seed;     /* for put_fail_pct (non-zero) */
        int put_delay_ms;  /* every put waits this long first */
        int get_delay_ms;  /* every get waits this long first */
        int short_gets;    /* the next N gets that succeed return half their bytes */
        int corrupt_gets;  /* the next N gets that succeed return one bit flipped */
        /* Counters (read them with atomics). */
        int puts, gets, lists, injected, throttled;
} ks_objstore_faults_t;

ks_err_t ks_objstore_faulty_new(ks_objstore_t *inner, ks_objstore_faults_t *faults, ks_objstore_t **out);

#endif
