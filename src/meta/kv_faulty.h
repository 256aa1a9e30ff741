/*
 * kv_faulty.h — fault injection around any metadata store (tests).
 *
 * The sibling of storage/objstore_faulty.h.  The plan is borrowed and read
 * with atomics on every call, so a test may change it while the store is in
 * use (set fields with __atomic_store_n, read counters with
 * __atomic_load_n).  The inner store stays the caller's.  Watches pass
 * through untouched: they keep delivering whatever the plan, even `down`.
 *
 * Every other call is counted, waits delay_ms, and then at most one fault
 * is chosen, in this order:
 *  1. down: every call fails with KS_ERR__UNAVAILABLE, nothing applied
 *     (a store that cannot be reached);
 *  2. fail_next[kind]: the call fails likewise, nothing applied;
 *  3. keepalives only, lose_leases: the lease is revoked in the inner store
 *     (its keys go) and the keepalive answers KS_ERR__LEASE_LOST;
 *  4. txns only, conflict_next: the compares are reported as failed
 *     (*succeeded false) without applying the success branch; the failure
 *     branch is applied, as when another writer got there first;
 *  5. unknown_next[kind]: the call is applied to the inner store and then
 *     answers KS_ERR__UNAVAILABLE, as an etcd request that timed out after
 *     etcd took it (the caller cannot tell it applied);
 *  6. at random (one draw in 0..99 from `seed`, xorshift32): below fail_pct
 *     an error as in 2; below fail_pct + unknown_pct an unknown outcome as
 *     in 5; for a txn, below fail_pct + unknown_pct + conflict_pct a
 *     conflict as in 4.  Deterministic for one thread and one seed.
 */
#ifndef KS_META_KV_FAULTY_H
#define KS_META_KV_FAULTY_H

#include <stdbool.h>
#include <stdint.h>

#include "meta/kv.h"

/* The kinds of call a plan can aim at. */
typedef enum ks_kv_fault_kind {
        KS_KV_FAULT_RANGE,
        KS_KV_FAULT_PUT,
        KS_KV_FAULT_DELETE,
        KS_KV_FAULT_TXN,
        KS_KV_FAULT_LEASE_GRANT,
        KS_KV_FAULT_LEASE_KEEPALIVE,
        KS_KV_FAULT_LEASE_REVOKE,
        KS_KV_FAULT_KINDS
} ks_kv_fault_kind_t;

typedef struct ks_kv_faults {
        int down;                           /* non-zero: every call fails (watches excepted) */
        int fail_next[KS_KV_FAULT_KINDS];   /* the next N calls of a kind fail */
        int unknown_next[KS_KV_FAULT_KINDS]; /* the next N calls of a kind apply, then fail */
        int conflict_next;                  /* the next N txns report their compares failed */
        int lose_leases;                    /* the next N keepalives find their lease revoked */
        int fail_pct, unknown_pct, conflict_pct; /* random faults, percent of calls */
        uint32_t seed;                      /* for the random faults (non-zero) */
        int delay_ms;                       /* every call waits this long first */
        /* Counters (read them with atomics). */
        int calls[KS_KV_FAULT_KINDS];
        int failed;    /* calls failed without applying */
        int unknown;   /* calls applied and then failed */
        int conflicts; /* txns reported as not succeeded */
        int leases_lost;
} ks_kv_faults_t;

/* A store over `inner` that injects the faults of `faults` (both borrowed;
 * destroying the wrapper leaves them alone). */
ks_err_t ks_kv_faulty_new(ks_kv_t *inner, ks_kv_faults_t *faults, ks_kv_t **out);

/* The number of injected faults of every sort so far. */
int ks_kv_faults_injected(const ks_kv_faults_t *faults);

#endif
