/*
 * objstore.c — helpers shared by the object-store backends (objstore.h):
 * freeing results, the one key grammar every backend enforces, get() range
 * clipping, list building, and jittered exponential backoff.
 *
 * Threads: everything here is reentrant; the backoff generator is
 * per-thread.
 */
#include "storage/objstore.h"

#include <stdbool.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/metrics.h"

/* ------------------------------------------------------------ entry points */

static void counted(int op, bool ok, double t0)
{
        ks_metrics_store_request(ks_std_metrics.objstore_requests, ks_std_metrics.objstore_duration, op, ok, t0);
}

ks_err_t ks_objstore_put(ks_objstore_t *s, const char *key, const struct iovec *iov, int iovcnt)
{
        double t0 = ks_metrics_now();
        ks_err_t err = s->ops->put(s, key, iov, iovcnt);
        counted(KS_METRICS_OBJ_PUT, !err, t0);
        return err;
}

ks_err_t ks_objstore_get(ks_objstore_t *s, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out)
{
        double t0 = ks_metrics_now();
        ks_err_t err = s->ops->get(s, key, offset, len, out);
        counted(KS_METRICS_OBJ_GET, !err || err == KS_ERR__NOT_FOUND, t0);
        return err;
}

ks_err_t ks_objstore_list(ks_objstore_t *s, const char *prefix, ks_objlist_t *out)
{
        double t0 = ks_metrics_now();
        ks_err_t err = s->ops->list(s, prefix, out);
        counted(KS_METRICS_OBJ_LIST, !err, t0);
        return err;
}

ks_err_t ks_objstore_del(ks_objstore_t *s, const char *key)
{
        double t0 = ks_metrics_now();
        ks_err_t err = s->ops->del(s, key);
        counted(KS_METRICS_OBJ_DELETE, !err, t0);
        return err;
}

ks_err_t ks_objstore_check(ks_objstore_t *s, char *err_msg, size_t err_len)
{
        double t0 = ks_metrics_now();
        ks_err_t err = s->ops->check(s, err_msg, err_len);
        counted(KS_METRICS_OBJ_CHECK, !err, t0);
        return err;
}

void ks_objbuf_free(ks_objbuf_t *b)
{
        if (!b)
                return;
        free(b->data);
        b->data = NULL;
        b->len = 0;
}

void ks_objlist_free(ks_objlist_t *l)
{
        if (!l)
                return;
        for (size_t i = 0; i < l->count; i++)
                free(l->items[i].key);
        free(l->items);
        l->items = NULL;
        l->count = 0;
}

/* ------------------------------------------------------------ keys */

static int is_dot_segment(const char *seg, size_t n)
{
        return (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.');
}

static int has_tmp_marker(const char *seg, size_t n)
{
        for (size_t i = 0; i + 5 <= n; i++)
                if (!memcmp(seg + i, ".tmp.", 5))
                        return 1;
        return 0;
}

/* Checks the grammar; `prefix` relaxes it as objstore.h describes. */
static ks_err_t check_path(const char *s, int prefix)
{
        if (!s)
                return KS_ERR__INVALID_ARG;
        size_t len = strlen(s);
        if ((!prefix && len == 0) || len > KS_OBJSTORE_KEY_MAX || (len && s[0] == '/'))
                return KS_ERR__INVALID_ARG;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c < 0x20 || c == 0x7f)
                        return KS_ERR__INVALID_ARG;
        }
        size_t start = 0;
        while (start <= len) {
                const char *slash = memchr(s + start, '/', len - start);
                size_t end = slash ? (size_t)(slash - s) : len;
                size_t n = end - start;
                int last = !slash;
                if (!last) {
                        /* A complete segment. */
                        if (n == 0 || is_dot_segment(s + start, n) || n > 255)
                                return KS_ERR__INVALID_ARG;
                } else if (!prefix) {
                        /* The file name of a key. */
                        if (n == 0 || is_dot_segment(s + start, n) || n > KS_OBJSTORE_NAME_MAX ||
                            has_tmp_marker(s + start, n))
                                return KS_ERR__INVALID_ARG;
                }
                if (last)
                        break;
                start = end + 1;
        }
        return KS_ERR_NONE;
}

ks_err_t ks_objstore_key_check(const char *key)
{
        return check_path(key, 0);
}

ks_err_t ks_objstore_prefix_check(const char *prefix)
{
        return check_path(prefix, 1);
}

/* ------------------------------------------------------------ get ranges */

ks_err_t ks_objstore_range_clip(int64_t size, int64_t offset, int64_t len, int64_t *start, int64_t *n)
{
        if (offset < 0 || len < -1 || size < 0)
                return KS_ERR__INVALID_ARG;
        if (offset >= size) {
                *start = size;
                *n = 0;
                return KS_ERR_NONE;
        }
        int64_t avail = size - offset;
        *start = offset;
        *n = (len == -1 || len > avail) ? avail : len;
        return KS_ERR_NONE;
}

/* ------------------------------------------------------------ lists */

ks_err_t ks_objlist_push(ks_objlist_t *l, size_t *cap, const char *key, size_t key_len, int64_t size)
{
        if (l->count == *cap) {
                size_t ncap = *cap ? *cap * 2 : 64;
                ks_objinfo_t *n = realloc(l->items, ncap * sizeof(*n));
                if (!n)
                        return KS_ERR__NOMEM;
                l->items = n;
                *cap = ncap;
        }
        char *k = malloc(key_len + 1);
        if (!k)
                return KS_ERR__NOMEM;
        memcpy(k, key, key_len);
        k[key_len] = '\0';
        l->items[l->count].key = k;
        l->items[l->count].size = size;
        l->count++;
        return KS_ERR_NONE;
}

static int cmp_info(const void *pa, const void *pb)
{
        const ks_objinfo_t *a = pa, *b = pb;
        return strcmp(a->key, b->key);
}

void ks_objlist_sort(ks_objlist_t *l)
{
        if (l->count > 1)
                qsort(l->items, l->count, sizeof(*l->items), cmp_info);
}

/* ------------------------------------------------------------ backoff */

/* xorshift64*: small, fast, good enough to spread retries apart. */
static _Thread_local uint64_t rng_state;

static uint64_t rng_next(void)
{
        if (!rng_state) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)(uintptr_t)&rng_state ^
                                (uint64_t)pthread_self();
                rng_state = seed ? seed : 0x9E3779B97F4A7C15ull;
        }
        uint64_t x = rng_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng_state = x;
        return x * 0x2545F4914F6CDD1Dull;
}

int64_t ks_objstore_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms)
{
        if (attempt < 1)
                attempt = 1;
        if (base_ms < 1)
                base_ms = 1;
        if (cap_ms < base_ms)
                cap_ms = base_ms;
        int64_t d = base_ms;
        for (int i = 1; i < attempt && d < cap_ms; i++)
                d *= 2;
        if (d > cap_ms)
                d = cap_ms;
        int64_t lo = d / 2;
        return lo + (int64_t)(rng_next() % (uint64_t)(d - lo + 1));
}

void ks_objstore_sleep_ms(int64_t ms)
{
        if (ms <= 0)
                return;
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
                ;
}
