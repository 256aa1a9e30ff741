/*
 * kv_memory.c — the in-process metadata store: storage for the kv.c engine.
 *
 * Storage is a sorted dynamic array of pairs (binary search by key); each
 * pair owns its key and value.  A write transaction keeps an undo log so a
 * failure half-way (out of memory) rolls the array back exactly.
 *
 * Threads and locks: none of its own.  Every function here is called by the
 * engine with the engine lock held (see kv.c), so one at a time, on whichever
 * thread runs the engine operation (a caller, or the engine's lease reaper).
 */
#include "meta/kv_engine.h"

#include <stdlib.h>
#include <string.h>

typedef struct mem_undo {
        uint8_t *key; /* owned copy */
        size_t key_len;
        bool had;         /* the key existed before the step */
        ks_kv_pair_t old; /* its previous pair (owned) when `had` */
} mem_undo_t;

typedef struct mem_store {
        ks_kv_pair_t *v; /* sorted by key */
        size_t n, cap;
        mem_undo_t *undo;
        size_t nundo, cap_undo;
} mem_store_t;

static uint8_t *mem_dup(const void *p, size_t n)
{
        uint8_t *d = malloc(n + 1);
        if (!d)
                return NULL;
        if (n)
                memcpy(d, p, n);
        d[n] = 0;
        return d;
}

/* Index of the first pair with key >= (key, len). */
static size_t mem_lower_bound(const mem_store_t *m, const void *key, size_t len)
{
        size_t lo = 0, hi = m->n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (ks_kv_key_cmp(m->v[mid].key, m->v[mid].key_len, key, len) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static bool mem_found(const mem_store_t *m, size_t i, const void *key, size_t len)
{
        return i < m->n && ks_kv_key_cmp(m->v[i].key, m->v[i].key_len, key, len) == 0;
}

static ks_err_t mem_range(void *st, const uint8_t *key, size_t key_len, const uint8_t *end, size_t end_len, bool values,
                          ks_kv_result_t *out)
{
        mem_store_t *m = st;
        ks_err_t err = KS_ERR_NONE;

        for (size_t i = mem_lower_bound(m, key, key_len); !err && i < m->n; i++) {
                const ks_kv_pair_t *p = &m->v[i];
                if (!end) {
                        if (ks_kv_key_cmp(p->key, p->key_len, key, key_len) != 0)
                                break;
                } else if (end_len && ks_kv_key_cmp(p->key, p->key_len, end, end_len) >= 0) {
                        break;
                }
                err = ks_kv_result_add(out, p, values);
                if (!end)
                        break;
        }
        return err;
}

static ks_err_t mem_lease_keys(void *st, int64_t lease, ks_kv_result_t *out)
{
        mem_store_t *m = st;
        ks_err_t err = KS_ERR_NONE;

        for (size_t i = 0; !err && i < m->n; i++)
                if (m->v[i].lease == lease)
                        err = ks_kv_result_add(out, &m->v[i], false);
        return err;
}

static void mem_undo_clear(mem_store_t *m)
{
        for (size_t i = 0; i < m->nundo; i++) {
                free(m->undo[i].key);
                if (m->undo[i].had) {
                        free(m->undo[i].old.key);
                        free(m->undo[i].old.value);
                }
        }
        m->nundo = 0;
}

static ks_err_t mem_begin(void *st)
{
        mem_undo_clear(st);
        return KS_ERR_NONE;
}

/* Reserves an undo entry for key; filled by the caller. */
static mem_undo_t *mem_undo_push(mem_store_t *m, const void *key, size_t key_len)
{
        if (m->nundo == m->cap_undo) {
                size_t ncap = m->cap_undo ? m->cap_undo * 2 : 16;
                mem_undo_t *n = realloc(m->undo, ncap * sizeof(*n));
                if (!n)
                        return NULL;
                m->undo = n;
                m->cap_undo = ncap;
        }
        mem_undo_t *u = &m->undo[m->nundo];
        memset(u, 0, sizeof(*u));
        if (!(u->key = mem_dup(key, key_len)))
                return NULL;
        u->key_len = key_len;
        m->nundo++;
        return u;
}

static ks_err_t mem_put(void *st, const ks_kv_pair_t *kv)
{
        mem_store_t *m = st;
        size_t i = mem_lower_bound(m, kv->key, kv->key_len);
        bool exists = mem_found(m, i, kv->key, kv->key_len);
        ks_kv_pair_t p = *kv;

        if (!exists && m->n == m->cap) {
                size_t ncap = m->cap ? m->cap * 2 : 64;
                ks_kv_pair_t *nv = realloc(m->v, ncap * sizeof(*nv));
                if (!nv)
                        return KS_ERR__NOMEM;
                m->v = nv;
                m->cap = ncap;
        }
        p.key = mem_dup(kv->key, kv->key_len);
        p.value = mem_dup(kv->value, kv->value_len);
        mem_undo_t *u = p.key && p.value ? mem_undo_push(m, kv->key, kv->key_len) : NULL;
        if (!u) {
                free(p.key);
                free(p.value);
                return KS_ERR__NOMEM;
        }
        if (exists) {
                u->had = true;
                u->old = m->v[i];
                m->v[i] = p;
        } else {
                memmove(&m->v[i + 1], &m->v[i], (m->n - i) * sizeof(*m->v));
                m->v[i] = p;
                m->n++;
        }
        return KS_ERR_NONE;
}

static ks_err_t mem_del(void *st, const uint8_t *key, size_t key_len)
{
        mem_store_t *m = st;
        size_t i = mem_lower_bound(m, key, key_len);

        if (!mem_found(m, i, key, key_len))
                return KS_ERR_NONE;
        mem_undo_t *u = mem_undo_push(m, key, key_len);
        if (!u)
                return KS_ERR__NOMEM;
        u->had = true;
        u->old = m->v[i];
        memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof(*m->v));
        m->n--;
        return KS_ERR_NONE;
}

static ks_err_t mem_commit(void *st, int64_t revision)
{
        mem_undo_clear(st);
        return KS_ERR_NONE;
}

/* Undoes the steps newest first.  Never allocates: each step returns the
 * array to a size it already had. */
static void mem_rollback(void *st)
{
        mem_store_t *m = st;

        while (m->nundo > 0) {
                mem_undo_t *u = &m->undo[--m->nundo];
                size_t i = mem_lower_bound(m, u->key, u->key_len);
                bool exists = mem_found(m, i, u->key, u->key_len);
                if (exists) {
                        free(m->v[i].key);
                        free(m->v[i].value);
                        if (u->had) {
                                m->v[i] = u->old;
                        } else {
                                memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof(*m->v));
                                m->n--;
                        }
                } else if (u->had) {
                        memmove(&m->v[i + 1], &m->v[i], (m->n - i) * sizeof(*m->v));
                        m->v[i] = u->old;
                        m->n++;
                }
                free(u->key);
        }
}

static void mem_destroy(void *st)
{
        mem_store_t *m = st;

        mem_undo_clear(m);
        free(m->undo);
        for (size_t i = 0; i < m->n; i++) {
                free(m->v[i].key);
                free(m->v[i].value);
        }
        free(m->v);
        free(m);
}

static const ks_kv_store_ops_t mem_ops = {
    .name = "memory",
    .range = mem_range,
    .lease_keys = mem_lease_keys,
    .begin = mem_begin,
    .put = mem_put,
    .del = mem_del,
    .lease_save = NULL,
    .lease_drop = NULL,
    .commit = mem_commit,
    .rollback = mem_rollback,
    .destroy = mem_destroy,
};

ks_err_t ks_kv_memory_new(const ks_clock_t *clock, ks_kv_t **out)
{
        mem_store_t *m;

        if (!out)
                return KS_ERR__INVALID_ARG;
        if (!(m = calloc(1, sizeof(*m))))
                return KS_ERR__NOMEM;
        return ks_kv_engine_new(&mem_ops, m, 0, 0, clock, out);
}
