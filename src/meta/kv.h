/*
 * kv.h — the metadata store boundary: an etcd-shaped key/value interface.
 *
 * Every metadata backend (in-memory, embedded SQLite, etcd) implements this
 * vtable with etcd v3 semantics, so the typed metadata layer above it
 * (meta/metadata.h) is written once and keeps the same key layout on every
 * backend (SYSTEM.md §6).  Tests wrap a backend to inject faults.
 *
 * Semantics (those of etcd v3):
 *  - One global revision counter, incremented once per successful write
 *    (a put, a delete that removed something, or a txn that wrote something).
 *  - Each key has create_rev, mod_rev and version (1 on creation, +1 per put;
 *    a deleted key no longer exists and a re-created one starts again at 1).
 *  - Ranges are [key, range_end) in byte order; ks_kv_prefix_end() builds the
 *    range_end for a prefix.  Results are sorted by key.
 *  - A put may attach the key to a lease; when the lease expires or is revoked
 *    all its keys are deleted (producing DELETE events).
 *  - A watch delivers every change to keys in its range, in revision order,
 *    starting at start_rev (0 = from the next change).  When start_rev is
 *    older than the history the backend still holds, the watch reports
 *    KS_KV_EV_COMPACTED once and the watcher must reload with a range read.
 *
 * Threading: every function may be called from any thread; backends are
 * internally synchronised.  Calls BLOCK (disk or network I/O): never call them
 * from an event-loop thread; use the worker pool (net/workq.h).  Watch
 * callbacks run on a backend-owned thread, one callback at a time per watch;
 * they must not call ks_kv_watch_cancel() on their own watch.
 *
 * Ownership: results (ks_kv_result_t) are owned by the caller and released
 * with ks_kv_result_free().  Keys and values passed in are borrowed for the
 * duration of the call.
 */
#ifndef KS_META_KV_H
#define KS_META_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/clock.h"
#include "util/err.h"

typedef struct ks_kv ks_kv_t;
typedef struct ks_kv_watch ks_kv_watch_t;

/* One key with its value and etcd-style revision bookkeeping. */
typedef struct ks_kv_pair {
        uint8_t *key;
        size_t key_len;
        uint8_t *value;
        size_t value_len;
        int64_t create_rev;
        int64_t mod_rev;
        int64_t version;
        int64_t lease; /* 0: no lease */
} ks_kv_pair_t;

/* Result of a range read: owned by the caller. */
typedef struct ks_kv_result {
        ks_kv_pair_t *kvs;
        size_t count;
        int64_t revision; /* store revision at which the read happened */
} ks_kv_result_t;

/* Each kvs[i].key and kvs[i].value is its own malloc() block, NUL-terminated
 * after its length (so ASCII values can be read as C strings); kvs is one
 * malloc() block.  Every backend builds results this way (ks_kv_result_add). */
void ks_kv_result_free(ks_kv_result_t *res);

/* Compare of a transaction: target <op> operand on one key.  A key that does
 * not exist has version = create_rev = mod_rev = 0, lease 0 and no value. */
typedef enum { KS_KV_CMP_VERSION, KS_KV_CMP_CREATE, KS_KV_CMP_MOD, KS_KV_CMP_VALUE, KS_KV_CMP_LEASE } ks_kv_cmp_target_t;
typedef enum { KS_KV_EQUAL, KS_KV_NOT_EQUAL, KS_KV_LESS, KS_KV_GREATER } ks_kv_cmp_op_t;

typedef struct ks_kv_cmp {
        const void *key;
        size_t key_len;
        ks_kv_cmp_target_t target;
        ks_kv_cmp_op_t op;
        int64_t number;      /* VERSION, CREATE, MOD, LEASE */
        const void *value;   /* VALUE */
        size_t value_len;
} ks_kv_cmp_t;

/* Operation of a transaction branch. */
typedef enum { KS_KV_OP_PUT, KS_KV_OP_DELETE } ks_kv_op_type_t;

typedef struct ks_kv_op {
        ks_kv_op_type_t type;
        const void *key;
        size_t key_len;
        const void *range_end; /* DELETE only: NULL deletes the single key */
        size_t range_end_len;
        const void *value;     /* PUT only */
        size_t value_len;
        int64_t lease;         /* PUT only; 0 = none */
} ks_kv_op_t;

typedef enum { KS_KV_EV_PUT, KS_KV_EV_DELETE, KS_KV_EV_COMPACTED } ks_kv_ev_type_t;

/* One watch event.  Borrowed: valid only during the callback. */
typedef struct ks_kv_event {
        ks_kv_ev_type_t type;
        ks_kv_pair_t kv;      /* for DELETE: key and mod_rev (the deletion revision) only */
        int64_t revision;     /* revision of the change (COMPACTED: compact revision) */
} ks_kv_event_t;

typedef void (ks_kv_watch_cb)(void *opaque, const ks_kv_event_t *events, size_t count);

/* The backend vtable.  See the wrappers below for the contract of each. */
typedef struct ks_kv_ops {
        const char *name; /* "memory", "sqlite", "etcd" */
        ks_err_t (*range)(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                          size_t range_end_len, ks_kv_result_t *out);
        ks_err_t (*put)(ks_kv_t *kv, const void *key, size_t key_len, const void *value, size_t value_len,
                        int64_t lease, int64_t *revision);
        ks_err_t (*delete_range)(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                                 size_t range_end_len, int64_t *deleted, int64_t *revision);
        ks_err_t (*txn)(ks_kv_t *kv, const ks_kv_cmp_t *cmps, size_t ncmps, const ks_kv_op_t *success,
                        size_t nsuccess, const ks_kv_op_t *failure, size_t nfailure, bool *succeeded,
                        int64_t *revision);
        ks_err_t (*lease_grant)(ks_kv_t *kv, int64_t ttl_seconds, int64_t *lease_id);
        ks_err_t (*lease_keepalive)(ks_kv_t *kv, int64_t lease_id, int64_t *ttl_remaining);
        ks_err_t (*lease_revoke)(ks_kv_t *kv, int64_t lease_id);
        ks_err_t (*watch)(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                          size_t range_end_len, int64_t start_rev, ks_kv_watch_cb *cb, void *opaque,
                          ks_kv_watch_t **out);
        void (*watch_cancel)(ks_kv_t *kv, ks_kv_watch_t *w);
        void (*destroy)(ks_kv_t *kv);
} ks_kv_ops_t;

/* Every backend struct begins with this header. */
struct ks_kv {
        const ks_kv_ops_t *ops;
};

/* The entry points below (kv.c) dispatch to the backend and count each call
 * in kafscale_metadata_store_requests_total{op,result} and
 * kafscale_metadata_store_request_duration_seconds{op} (relaxed atomics,
 * nothing else): op is range, put, delete, txn, lease_grant,
 * lease_keepalive, lease_revoke or watch (its start); result="error" for any
 * error returned (a txn whose compare failed is "ok").  A wrapper backend
 * (tests) that calls them on its inner store counts a request twice. */

/* Range read of [key, range_end); range_end NULL reads the single key. */
ks_err_t ks_kv_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                     ks_kv_result_t *out);

/* Unconditional put.  *revision (may be NULL) receives the new store revision. */
ks_err_t ks_kv_put(ks_kv_t *kv, const void *key, size_t key_len, const void *value, size_t value_len,
                   int64_t lease, int64_t *revision);

/* Deletes [key, range_end) (single key when range_end is NULL). */
ks_err_t ks_kv_delete_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                            size_t range_end_len, int64_t *deleted, int64_t *revision);

/* Most compares, and most operations per branch, one transaction may hold
 * (etcd's default --max-txn-ops); more is KS_ERR__TOO_LARGE on every backend,
 * so callers split large changes the same way everywhere. */
#define KS_KV_TXN_MAX_OPS 128

/* Atomic compare-and-apply: if every compare holds, apply `success`, else
 * `failure`; *succeeded tells which.  A failed compare is not an error. */
ks_err_t ks_kv_txn(ks_kv_t *kv, const ks_kv_cmp_t *cmps, size_t ncmps, const ks_kv_op_t *success, size_t nsuccess,
                   const ks_kv_op_t *failure, size_t nfailure, bool *succeeded, int64_t *revision);

/* Leases: grant (TTL in seconds, >= 1), keep alive (KS_ERR__LEASE_LOST if it
 * already expired or was revoked), revoke (deletes its keys). */
ks_err_t ks_kv_lease_grant(ks_kv_t *kv, int64_t ttl_seconds, int64_t *lease_id);
ks_err_t ks_kv_lease_keepalive(ks_kv_t *kv, int64_t lease_id, int64_t *ttl_remaining);
ks_err_t ks_kv_lease_revoke(ks_kv_t *kv, int64_t lease_id);

/* Starts a watch on [key, range_end) from start_rev (0: from now). */
ks_err_t ks_kv_watch(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                     int64_t start_rev, ks_kv_watch_cb *cb, void *opaque, ks_kv_watch_t **out);

/* Stops a watch; when it returns no callback for it is running or will run. */
static inline void ks_kv_watch_cancel(ks_kv_t *kv, ks_kv_watch_t *w)
{
        kv->ops->watch_cancel(kv, w);
}

static inline void ks_kv_destroy(ks_kv_t *kv)
{
        if (kv)
                kv->ops->destroy(kv);
}

/* Fills `end` (capacity >= len) with the range_end covering every key that
 * starts with prefix; returns its length (0 means "to the end of keyspace",
 * pass a single 0 byte as etcd does).  */
size_t ks_kv_prefix_end(const void *prefix, size_t len, uint8_t *end);

/* Backends. */

/* In-process store.  `clock` drives lease expiry (NULL: system clock). */
ks_err_t ks_kv_memory_new(const ks_clock_t *clock, ks_kv_t **out);

/* Embedded store: an SQLite database at `path` (created if missing; WAL mode,
 * synchronous=FULL so a returned write is durable).  The file holds the same
 * keys and values an etcd cluster would.  `clock` as above. */
ks_err_t ks_kv_sqlite_open(const char *path, const ks_clock_t *clock, ks_kv_t **out);

/* Cluster store: an etcd v3 cluster through its JSON gateway (kv_etcd.c).
 * Strings are borrowed for the call (copied). */
typedef struct ks_kv_etcd_config {
        const char *endpoints;      /* comma-separated: "http://10.0.0.1:2379,http://10.0.0.2:2379"; a
                                     * bare host[:port] means http://; the port defaults to 2379 */
        const char *username;       /* NULL or "": no authentication */
        const char *password;
        int64_t request_timeout_ms; /* one HTTP exchange with one endpoint; 0: 5000 */
        int64_t connect_timeout_ms; /* TCP (and TLS) connect to one endpoint; 0: 1000 */
} ks_kv_etcd_config_t;

/* etcd's default request size limit (--max-request-bytes).  The etcd
 * backend refuses, with KS_ERR__TOO_LARGE and without sending anything, a
 * request whose keys and values (plus a small per-operation allowance) add up
 * to more than this, as it refuses a txn over KS_KV_TXN_MAX_OPS like every
 * backend.  Callers that may write more split their writes (offsets.c and
 * metadata.c do); the in-process backends have no byte limit. */
#define KS_KV_ETCD_MAX_REQUEST_BYTES (1536 * 1024)

/* Opens the etcd backend and checks that the cluster answers (one read;
 * with a username, an authentication first).  On failure *out is NULL and
 * errbuf (may be NULL) holds a message for the operator:
 *   KS_ERR__INVALID_ARG  bad configuration: malformed endpoint list, negative
 *                        timeouts, credentials rejected by etcd, or etcd has
 *                        authentication enabled and no username was given;
 *   KS_ERR__UNAVAILABLE  no endpoint answered (KS_ERR__TIMEOUT: the last one
 *                        timed out);
 *   KS_ERR__IO           etcd answered with an unexpected error.
 * Calls fail over between the endpoints (see kv_etcd.c).  Errors specific to
 * this backend, on top of kv.h's: KS_ERR__UNAVAILABLE / KS_ERR__TIMEOUT when
 * no endpoint could answer (for a write: its outcome is unknown — it may have
 * been applied), KS_ERR__TOO_LARGE (above), KS_ERR__PARSE for an answer that
 * cannot be decoded, KS_ERR__IO for other etcd errors (permission denied,
 * database space exceeded...), logged where they happen.  Each watch holds a
 * thread and a connection of its own and survives member failures (it
 * resumes where it stopped); callbacks of one store run one at a time, as
 * with the in-process backends. */
ks_err_t ks_kv_etcd_open(const ks_kv_etcd_config_t *cfg, char *errbuf, size_t errlen, ks_kv_t **out);

/* Checks an endpoint list as ks_kv_etcd_open() parses it, without
 * connecting: KS_ERR__INVALID_ARG with the reason in `why` (may be NULL). */
ks_err_t ks_kv_etcd_endpoints_check(const char *list, char *why, size_t whylen);

/* Compacts the cluster's history up to its current revision R: watches
 * that start below R report KS_KV_EV_COMPACTED (revision R).  For tests and
 * operator tooling.  KS_ERR__INVALID_ARG if kv is not an etcd store. */
ks_err_t ks_kv_etcd_compact(ks_kv_t *kv);

#endif
