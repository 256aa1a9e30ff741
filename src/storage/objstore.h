/*
 * objstore.h — the object-store boundary: where records become durable.
 *
 * Three backends implement this vtable: in-memory (tests, demos), a local
 * directory (embedded mode) and S3 over libcurl (cluster mode; any
 * S3-compatible store).  Tests wrap a backend to inject faults.
 *
 * Contract:
 *  - put() returns 0 only once the object is durable: the local directory
 *    backend has written a temporary file, fsync'd it, renamed it into place
 *    and fsync'd the directory; S3 has answered 200 to the PUT.  An object
 *    is replaced atomically: a reader sees the old or the new content, never
 *    a mix.
 *  - get() reads [offset, offset + len) (len -1: to the end), clipped to the
 *    object's size; KS_ERR__NOT_FOUND if the object does not exist.  An
 *    offset at or past the end gives an empty buffer (out->data is then
 *    still non-NULL, so it can be passed to memcmp and friends).
 *  - list() returns every key under a prefix, sorted, with sizes.
 *  - del() of a missing object succeeds (idempotent).
 *  - Transient failures (timeouts, 5xx, 503 SlowDown) are retried inside
 *    the backend with jittered backoff up to its retry budget; what comes
 *    back is final: KS_ERR__UNAVAILABLE / KS_ERR__TIMEOUT (retriable by the
 *    caller later) or another error.
 *
 * Threads: every function may be called from any thread concurrently; calls
 * BLOCK on disk or network I/O — never call them from an event-loop thread.
 * The S3 backend bounds its own concurrency (KAFSCALE_S3_CONCURRENCY) and
 * reuses keep-alive connections.
 *
 * Ownership: buffers and lists returned are owned by the caller and freed
 * with ks_objbuf_free() / ks_objlist_free(); keys and data passed in are
 * borrowed for the call.
 */
#ifndef KS_STORAGE_OBJSTORE_H
#define KS_STORAGE_OBJSTORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util/err.h"

typedef struct ks_objstore ks_objstore_t;

/* Bytes read from an object (malloc'ed, owned by the caller). */
typedef struct ks_objbuf {
        uint8_t *data;
        size_t len;
} ks_objbuf_t;

void ks_objbuf_free(ks_objbuf_t *b);

typedef struct ks_objinfo {
        char *key;
        int64_t size;
} ks_objinfo_t;

/* Result of list(): owned by the caller. */
typedef struct ks_objlist {
        ks_objinfo_t *items;
        size_t count;
} ks_objlist_t;

void ks_objlist_free(ks_objlist_t *l);

typedef struct ks_objstore_ops {
        const char *name; /* "memory", "local", "s3" */
        ks_err_t (*put)(ks_objstore_t *s, const char *key, const struct iovec *iov, int iovcnt);
        ks_err_t (*get)(ks_objstore_t *s, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out);
        ks_err_t (*list)(ks_objstore_t *s, const char *prefix, ks_objlist_t *out);
        ks_err_t (*del)(ks_objstore_t *s, const char *key);
        /* Checks that the store is reachable and usable (bucket exists,
         * credentials accepted, directory writable); err_msg (may be NULL)
         * receives a sentence for the operator. */
        ks_err_t (*check)(ks_objstore_t *s, char *err_msg, size_t err_len);
        void (*destroy)(ks_objstore_t *s);
} ks_objstore_ops_t;

/* Every backend struct begins with this header. */
struct ks_objstore {
        const ks_objstore_ops_t *ops;
};

/* The entry points every caller uses (objstore.c): each dispatches to the
 * backend and counts the request in kafscale_object_store_requests_total
 * {op,result} and kafscale_object_store_request_duration_seconds{op}
 * (relaxed atomics, nothing else).  result="error" is any error except a
 * get() of a missing object (KS_ERR__NOT_FOUND: the store answered).  A
 * wrapper backend calls its inner backend's ops directly, so a request is
 * counted once. */
ks_err_t ks_objstore_put(ks_objstore_t *s, const char *key, const struct iovec *iov, int iovcnt);
ks_err_t ks_objstore_get(ks_objstore_t *s, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out);
ks_err_t ks_objstore_list(ks_objstore_t *s, const char *prefix, ks_objlist_t *out);
ks_err_t ks_objstore_del(ks_objstore_t *s, const char *key);
ks_err_t ks_objstore_check(ks_objstore_t *s, char *err_msg, size_t err_len);
static inline void ks_objstore_destroy(ks_objstore_t *s)
{
        if (s)
                s->ops->destroy(s);
}

/* --- helpers shared by the backends (objstore.c) ----------------------------
 *
 * Keys.  Every backend accepts exactly the same keys, so data moves between
 * them unchanged: 1 to KS_OBJSTORE_KEY_MAX bytes, '/'-separated segments, no
 * leading or trailing '/', no empty segment ("a//b"), no "." or ".."
 * segment, no control character (bytes < 0x20, 0x7f), the last segment at
 * most KS_OBJSTORE_NAME_MAX bytes and without ".tmp." (reserved for the
 * local backend's temporary files; directory segments may contain it, so a
 * topic named "orders.tmp.v2" works).  Anything else is KS_ERR__INVALID_ARG
 * from every operation.  A list() prefix follows the same rules except that
 * it may be empty, end with '/', and end in a partial segment. */
#define KS_OBJSTORE_KEY_MAX  1024
#define KS_OBJSTORE_NAME_MAX 200

ks_err_t ks_objstore_key_check(const char *key);
ks_err_t ks_objstore_prefix_check(const char *prefix);

/* get() argument rules shared by the backends: offset >= 0 and len >= -1,
 * else KS_ERR__INVALID_ARG.  Clips [offset, offset + len) to an object of
 * `size` bytes: *start and *n give the bytes to return (n may be 0). */
ks_err_t ks_objstore_range_clip(int64_t size, int64_t offset, int64_t len, int64_t *start, int64_t *n);

/* Appends a copy of key[0..key_len) with its size to l (capacity in *cap,
 * 0 for a fresh zeroed list).  Sorts l by key (byte order). */
ks_err_t ks_objlist_push(ks_objlist_t *l, size_t *cap, const char *key, size_t key_len, int64_t size);
void ks_objlist_sort(ks_objlist_t *l);

/* Jittered exponential backoff: the delay before retry number `attempt`
 * (1 = first retry) is uniformly random in [d/2, d] where
 * d = min(cap_ms, base_ms * 2^(attempt - 1)).  Thread-safe (per-thread
 * generator). */
int64_t ks_objstore_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms);

/* Sleeps ms milliseconds (restarts after signals). */
void ks_objstore_sleep_ms(int64_t ms);

/* --- backends --------------------------------------------------------------- */

ks_err_t ks_objstore_memory_new(ks_objstore_t **out);

/* Objects are files under `dir` (created if missing); the key's '/' become
 * subdirectories. */
ks_err_t ks_objstore_local_new(const char *dir, ks_objstore_t **out);

typedef struct ks_s3_config {
        const char *bucket;
        const char *region;        /* e.g. "us-east-1" */
        const char *endpoint;      /* NULL/"" = AWS (https://s3.<region>.amazonaws.com) */
        int path_style;            /* 1: <endpoint>/<bucket>/<key>; 0: virtual-hosted */
        const char *access_key;
        const char *secret_key;
        const char *session_token; /* NULL if none */
        int concurrency;           /* max requests in flight */
        int timeout_ms;            /* per request */
        int max_retries;
} ks_s3_config_t;

/* Creates the S3 backend.  cfg's strings are copied; no network I/O happens
 * here (call check() to find out whether the bucket is reachable).
 * KS_ERR__INVALID_ARG (with one log line saying which field) if cfg cannot
 * work: empty bucket/region/credentials, a bad endpoint, concurrency,
 * timeout_ms < 1, max_retries < 0, or virtual-hosted addressing with an IP
 * endpoint.
 *
 * Errors of its operations, beyond the contract above:
 *  - get() of a missing key: KS_ERR__NOT_FOUND; a missing bucket on any
 *    operation: KS_ERR__IO (never NOT_FOUND: "no segment" must not be
 *    confused with "no bucket");
 *  - 403 and other 4xx answers (except 408/429 and throttling codes): not
 *    retried, KS_ERR__IO, logged with HTTP status, S3 error code and message;
 *  - 5xx, 408, 429, SlowDown/throttling codes, connection errors and
 *    timeouts are retried (max_retries times, jittered exponential backoff
 *    from 100 ms, at most 5 s apart); once exhausted: KS_ERR__TIMEOUT when
 *    the last attempt timed out, else KS_ERR__UNAVAILABLE.
 * check(): KS_ERR__NOT_FOUND (bucket missing), KS_ERR__IO (credentials or
 * permissions rejected, wrong region), KS_ERR__UNAVAILABLE/_TIMEOUT
 * (endpoint unreachable), each with a sentence naming the bucket and URL. */
ks_err_t ks_objstore_s3_new(const ks_s3_config_t *cfg, ks_objstore_t **out);

/* An S3 endpoint URL as the backend accepts it: "http://host[:port]" or
 * "https://host[:port]", optionally with a trailing '/'; host is a DNS name,
 * an IPv4 address or a bracketed IPv6 address; no user info, path, query or
 * fragment.  On success fills *out (host lower-cased, port 0 when absent);
 * otherwise KS_ERR__INVALID_ARG with the reason in why (may be NULL). */
typedef struct ks_s3_endpoint {
        int https;
        char host[256]; /* without brackets for IPv6 */
        int is_ip;      /* IPv4 or IPv6 literal (no virtual-hosted addressing) */
        int port;       /* 0 = the scheme's default */
} ks_s3_endpoint_t;

ks_err_t ks_s3_endpoint_parse(const char *url, ks_s3_endpoint_t *out, char *why, size_t whylen);

#endif
