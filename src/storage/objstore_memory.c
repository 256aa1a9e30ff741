/*
 * objstore_memory.c — the in-process object store (tests, demos,
 * KAFSCALE_USE_MEMORY_S3=1).  Nothing survives the process.
 *
 * Storage: a sorted array of (key, blob), binary-searched.  A blob is
 * immutable and reference-counted: put() builds the new blob before taking
 * the lock and swaps the pointer under it (so a reader sees the old or the
 * new content, never a mix); get() takes a reference under the lock and
 * copies the bytes after releasing it, so large copies never block other
 * callers.
 *
 * Threads and locks: `mu` protects the array (keys, blob pointers); blobs
 * are read without the lock while a reference is held.
 */
#include "storage/objstore.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct mem_blob {
        int refs; /* atomic */
        size_t len;
        uint8_t data[];
} mem_blob_t;

typedef struct mem_obj {
        char *key;
        mem_blob_t *blob;
} mem_obj_t;

typedef struct mem_store {
        ks_objstore_t base;
        pthread_mutex_t mu;
        mem_obj_t *v; /* sorted by key; under mu */
        size_t n, cap;
} mem_store_t;

static void blob_unref(mem_blob_t *b)
{
        if (b && __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0)
                free(b);
}

/* Index of the first object with key >= `key`; mu held. */
static size_t lower_bound(const mem_store_t *m, const char *key)
{
        size_t lo = 0, hi = m->n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (strcmp(m->v[mid].key, key) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static int found(const mem_store_t *m, size_t i, const char *key)
{
        return i < m->n && !strcmp(m->v[i].key, key);
}

static ks_err_t mem_put(ks_objstore_t *s, const char *key, const struct iovec *iov, int iovcnt)
{
        mem_store_t *m = (mem_store_t *)s;
        ks_err_t err = ks_objstore_key_check(key);
        size_t total = 0;

        if (err)
                return err;
        if (iovcnt < 0 || (iovcnt > 0 && !iov))
                return KS_ERR__INVALID_ARG;
        for (int i = 0; i < iovcnt; i++) {
                if (iov[i].iov_len > SIZE_MAX - sizeof(mem_blob_t) - total)
                        return KS_ERR__TOO_LARGE;
                total += iov[i].iov_len;
        }
        mem_blob_t *b = malloc(sizeof(*b) + total);
        char *kcopy = strdup(key);
        if (!b || !kcopy) {
                free(b);
                free(kcopy);
                return KS_ERR__NOMEM;
        }
        b->refs = 1;
        b->len = total;
        size_t o = 0;
        for (int i = 0; i < iovcnt; i++) {
                if (iov[i].iov_len)
                        memcpy(b->data + o, iov[i].iov_base, iov[i].iov_len);
                o += iov[i].iov_len;
        }

        mem_blob_t *old = NULL;
        pthread_mutex_lock(&m->mu);
        size_t i = lower_bound(m, key);
        if (found(m, i, key)) {
                old = m->v[i].blob;
                m->v[i].blob = b;
        } else {
                if (m->n == m->cap) {
                        size_t ncap = m->cap ? m->cap * 2 : 64;
                        mem_obj_t *nv = realloc(m->v, ncap * sizeof(*nv));
                        if (!nv) {
                                pthread_mutex_unlock(&m->mu);
                                free(b);
                                free(kcopy);
                                return KS_ERR__NOMEM;
                        }
                        m->v = nv;
                        m->cap = ncap;
                }
                memmove(&m->v[i + 1], &m->v[i], (m->n - i) * sizeof(*m->v));
                m->v[i].key = kcopy;
                m->v[i].blob = b;
                kcopy = NULL;
                m->n++;
        }
        pthread_mutex_unlock(&m->mu);
        free(kcopy);
        blob_unref(old);
        return KS_ERR_NONE;
}

static ks_err_t mem_get(ks_objstore_t *s, const char *key, int64_t offset, int64_t len, ks_objbuf_t *out)
{
        mem_store_t *m = (mem_store_t *)s;
        ks_err_t err = ks_objstore_key_check(key);
        mem_blob_t *b = NULL;
        int64_t start, n;

        out->data = NULL;
        out->len = 0;
        if (err)
                return err;
        if (offset < 0 || len < -1)
                return KS_ERR__INVALID_ARG;
        pthread_mutex_lock(&m->mu);
        size_t i = lower_bound(m, key);
        if (found(m, i, key)) {
                b = m->v[i].blob;
                __atomic_add_fetch(&b->refs, 1, __ATOMIC_RELAXED);
        }
        pthread_mutex_unlock(&m->mu);
        if (!b)
                return KS_ERR__NOT_FOUND;

        err = ks_objstore_range_clip((int64_t)b->len, offset, len, &start, &n);
        if (!err) {
                out->data = malloc(n ? (size_t)n : 1);
                if (!out->data) {
                        err = KS_ERR__NOMEM;
                } else {
                        if (n)
                                memcpy(out->data, b->data + start, (size_t)n);
                        out->len = (size_t)n;
                }
        }
        blob_unref(b);
        return err;
}

static ks_err_t mem_list(ks_objstore_t *s, const char *prefix, ks_objlist_t *out)
{
        mem_store_t *m = (mem_store_t *)s;
        ks_err_t err = ks_objstore_prefix_check(prefix);
        size_t cap = 0, plen;

        out->items = NULL;
        out->count = 0;
        if (err)
                return err;
        plen = strlen(prefix);
        pthread_mutex_lock(&m->mu);
        for (size_t i = lower_bound(m, prefix); !err && i < m->n; i++) {
                if (strncmp(m->v[i].key, prefix, plen) != 0)
                        break;
                err = ks_objlist_push(out, &cap, m->v[i].key, strlen(m->v[i].key), (int64_t)m->v[i].blob->len);
        }
        pthread_mutex_unlock(&m->mu);
        if (err)
                ks_objlist_free(out);
        return err;
}

static ks_err_t mem_del(ks_objstore_t *s, const char *key)
{
        mem_store_t *m = (mem_store_t *)s;
        ks_err_t err = ks_objstore_key_check(key);
        mem_obj_t gone = {0};

        if (err)
                return err;
        pthread_mutex_lock(&m->mu);
        size_t i = lower_bound(m, key);
        if (found(m, i, key)) {
                gone = m->v[i];
                memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof(*m->v));
                m->n--;
        }
        pthread_mutex_unlock(&m->mu);
        free(gone.key);
        blob_unref(gone.blob);
        return KS_ERR_NONE;
}

static ks_err_t mem_check(ks_objstore_t *s, char *err_msg, size_t err_len)
{
        if (err_msg && err_len)
                err_msg[0] = '\0';
        return KS_ERR_NONE;
}

static void mem_destroy(ks_objstore_t *s)
{
        mem_store_t *m = (mem_store_t *)s;
        for (size_t i = 0; i < m->n; i++) {
                free(m->v[i].key);
                blob_unref(m->v[i].blob);
        }
        free(m->v);
        pthread_mutex_destroy(&m->mu);
        free(m);
}

static const ks_objstore_ops_t mem_ops = {
    .name = "memory",
    .put = mem_put,
    .get = mem_get,
    .list = mem_list,
    .del = mem_del,
    .check = mem_check,
    .destroy = mem_destroy,
};

ks_err_t ks_objstore_memory_new(ks_objstore_t **out)
{
        mem_store_t *m = calloc(1, sizeof(*m));
        *out = NULL;
        if (!m)
                return KS_ERR__NOMEM;
        if (pthread_mutex_init(&m->mu, NULL) != 0) {
                free(m);
                return KS_ERR__NOMEM;
        }
        m->base.ops = &mem_ops;
        *out = &m->base;
        return KS_ERR_NONE;
}
