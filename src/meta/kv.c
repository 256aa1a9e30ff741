/*
 * kv.c — shared parts of the metadata KV backends, and the engine behind the
 * in-process backends (kv_memory.c, kv_sqlite.c).
 *
 * The engine implements every etcd v3 semantic of kv.h once — the revision
 * counter, create_rev/mod_rev/version bookkeeping, txn validation and compare
 * evaluation, leases and their expiry, watch history and delivery — on top of
 * a small storage vtable (ks_kv_store_ops_t) that the backends supply.
 *
 * Locks (lock order: engine.mu before hub.mu; never the reverse):
 *  - engine.mu protects the store (every store call), rev, lease_seq, the
 *    lease table and next_expiry.  It is held for a whole operation, including
 *    the store's disk I/O (the SQLite store is one connection), and while the
 *    events of a write are published to the hub, so revisions enter the
 *    history in order.
 *  - hub.mu protects the history ring, last_rev, compact_rev, the watch list,
 *    each watch's cursor (next_rev, pass) and `running`.  It is never held
 *    while a watch callback runs.
 *
 * Threads (two per engine, both started by ks_kv_engine_new, joined by
 * destroy):
 *  - the reaper wakes every KV_REAPER_PERIOD_MS (real time) and expires leases
 *    whose deadline passed on the engine's clock; every API call also expires
 *    due leases first, so a fake clock takes effect on the next call.
 *  - the dispatcher runs every watch callback, one at a time, round-robin
 *    over the watches with pending events, one revision per callback call.
 * API functions run on the caller's thread.
 */
#include "meta/kv_engine.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/metrics.h"
#include "util/log.h"

#define KV_REAPER_PERIOD_MS 100
#define KV_NOMEM_RETRY_MS 10

/* ---------------------------------------------------------- entry points */

/* Every ks_kv_* call passes here: dispatch, then two relaxed atomic adds. */
static ks_err_t counted(int op, ks_err_t err, double t0)
{
        ks_metrics_store_request(ks_std_metrics.metastore_requests, ks_std_metrics.metastore_duration, op, !err, t0);
        return err;
}

ks_err_t ks_kv_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                     ks_kv_result_t *out)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_RANGE, kv->ops->range(kv, key, key_len, range_end, range_end_len, out), t0);
}

ks_err_t ks_kv_put(ks_kv_t *kv, const void *key, size_t key_len, const void *value, size_t value_len,
                   int64_t lease, int64_t *revision)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_PUT, kv->ops->put(kv, key, key_len, value, value_len, lease, revision), t0);
}

ks_err_t ks_kv_delete_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                            size_t range_end_len, int64_t *deleted, int64_t *revision)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_DELETE,
                       kv->ops->delete_range(kv, key, key_len, range_end, range_end_len, deleted, revision), t0);
}

ks_err_t ks_kv_txn(ks_kv_t *kv, const ks_kv_cmp_t *cmps, size_t ncmps, const ks_kv_op_t *success, size_t nsuccess,
                   const ks_kv_op_t *failure, size_t nfailure, bool *succeeded, int64_t *revision)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_TXN,
                       kv->ops->txn(kv, cmps, ncmps, success, nsuccess, failure, nfailure, succeeded, revision), t0);
}

ks_err_t ks_kv_lease_grant(ks_kv_t *kv, int64_t ttl_seconds, int64_t *lease_id)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_LEASE_GRANT, kv->ops->lease_grant(kv, ttl_seconds, lease_id), t0);
}

ks_err_t ks_kv_lease_keepalive(ks_kv_t *kv, int64_t lease_id, int64_t *ttl_remaining)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_LEASE_KEEPALIVE, kv->ops->lease_keepalive(kv, lease_id, ttl_remaining), t0);
}

ks_err_t ks_kv_lease_revoke(ks_kv_t *kv, int64_t lease_id)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_LEASE_REVOKE, kv->ops->lease_revoke(kv, lease_id), t0);
}

ks_err_t ks_kv_watch(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                     int64_t start_rev, ks_kv_watch_cb *cb, void *opaque, ks_kv_watch_t **out)
{
        double t0 = ks_metrics_now();
        return counted(KS_METRICS_KV_WATCH,
                       kv->ops->watch(kv, key, key_len, range_end, range_end_len, start_rev, cb, opaque, out), t0);
}

/* ---------------------------------------------------------------- helpers */

size_t ks_kv_prefix_end(const void *prefix, size_t len, uint8_t *end)
{
        const uint8_t *p = prefix;
        size_t n = len;

        /* Drop trailing 0xff bytes, then increment the last remaining one. */
        while (n > 0 && p[n - 1] == 0xff)
                n--;
        if (n == 0) {
                if (len > 0)
                        end[0] = 0; /* callers may pass (end, 1) = "\0" */
                return 0;
        }
        memcpy(end, p, n);
        end[n - 1]++;
        return n;
}

int ks_kv_key_cmp(const void *a, size_t alen, const void *b, size_t blen)
{
        size_t n = alen < blen ? alen : blen;
        int r = n ? memcmp(a, b, n) : 0;

        if (r)
                return r;
        return alen < blen ? -1 : alen > blen;
}

/* malloc'd copy of n bytes plus a NUL terminator; p may be NULL when n == 0. */
static uint8_t *dup_bytes(const void *p, size_t n)
{
        uint8_t *d = malloc(n + 1);

        if (!d)
                return NULL;
        if (n)
                memcpy(d, p, n);
        d[n] = 0;
        return d;
}

static void pair_free(ks_kv_pair_t *p)
{
        free(p->key);
        free(p->value);
        p->key = p->value = NULL;
}

void ks_kv_result_free(ks_kv_result_t *res)
{
        if (!res)
                return;
        for (size_t i = 0; i < res->count; i++)
                pair_free(&res->kvs[i]);
        free(res->kvs);
        res->kvs = NULL;
        res->count = 0;
}

ks_err_t ks_kv_result_add(ks_kv_result_t *res, const ks_kv_pair_t *kv, bool values)
{
        /* Capacity is implied by count: 8, then doubled at each power of two. */
        size_t c = res->count;
        if (c == 0 || (c >= 8 && (c & (c - 1)) == 0)) {
                size_t ncap = c == 0 ? 8 : c * 2;
                ks_kv_pair_t *n = realloc(res->kvs, ncap * sizeof(*n));
                if (!n)
                        return KS_ERR__NOMEM;
                res->kvs = n;
        }
        ks_kv_pair_t *d = &res->kvs[c];
        *d = *kv;
        d->key = dup_bytes(kv->key, kv->key_len);
        d->value = values ? dup_bytes(kv->value, kv->value_len) : dup_bytes(NULL, 0);
        if (!values)
                d->value_len = 0;
        if (!d->key || !d->value) {
                pair_free(d);
                return KS_ERR__NOMEM;
        }
        res->count = c + 1;
        return KS_ERR_NONE;
}

ks_err_t ks_kv_span_make(ks_kv_span_t *s, const void *key, size_t key_len, const void *end, size_t end_len)
{
        if (!key || key_len == 0)
                return KS_ERR__INVALID_ARG;
        s->key = key;
        s->key_len = key_len;
        if (!end) {
                s->end = NULL;
                s->end_len = 0;
        } else if (end_len == 0 || (end_len == 1 && ((const uint8_t *)end)[0] == 0)) {
                s->end = (const uint8_t *)"";
                s->end_len = 0;
        } else {
                s->end = end;
                s->end_len = end_len;
        }
        return KS_ERR_NONE;
}

static bool span_has(const uint8_t *key, size_t key_len, const uint8_t *end, size_t end_len, const uint8_t *k,
                     size_t klen)
{
        if (!end)
                return ks_kv_key_cmp(k, klen, key, key_len) == 0;
        if (ks_kv_key_cmp(k, klen, key, key_len) < 0)
                return false;
        return end_len == 0 || ks_kv_key_cmp(k, klen, end, end_len) < 0;
}

/* Does compare `c` hold on `kv` (NULL: the key does not exist)?  As etcd: an
 * absent key has version/create/mod/lease 0, and a VALUE compare on it fails
 * whatever the operator. */
static bool cmp_holds(const ks_kv_cmp_t *c, const ks_kv_pair_t *kv)
{
        int r;

        if (c->target == KS_KV_CMP_VALUE) {
                if (!kv)
                        return false;
                r = ks_kv_key_cmp(kv->value, kv->value_len, c->value, c->value_len);
        } else {
                int64_t v = 0;
                if (kv) {
                        switch (c->target) {
                        case KS_KV_CMP_VERSION:
                                v = kv->version;
                                break;
                        case KS_KV_CMP_CREATE:
                                v = kv->create_rev;
                                break;
                        case KS_KV_CMP_MOD:
                                v = kv->mod_rev;
                                break;
                        case KS_KV_CMP_LEASE:
                                v = kv->lease;
                                break;
                        default:
                                break;
                        }
                }
                r = v < c->number ? -1 : v > c->number;
        }
        switch (c->op) {
        case KS_KV_EQUAL:
                return r == 0;
        case KS_KV_NOT_EQUAL:
                return r != 0;
        case KS_KV_LESS:
                return r < 0;
        case KS_KV_GREATER:
                return r > 0;
        }
        return false;
}

ks_err_t ks_kv_check_cmps(const ks_kv_cmp_t *cmps, size_t n)
{
        if (n && !cmps)
                return KS_ERR__INVALID_ARG;
        if (n > KS_KV_TXN_MAX_OPS)
                return KS_ERR__TOO_LARGE;
        for (size_t i = 0; i < n; i++) {
                const ks_kv_cmp_t *c = &cmps[i];
                if (!c->key || c->key_len == 0)
                        return KS_ERR__INVALID_ARG;
                if ((unsigned)c->target > KS_KV_CMP_LEASE || (unsigned)c->op > KS_KV_GREATER)
                        return KS_ERR__INVALID_ARG;
                if (c->target == KS_KV_CMP_VALUE && !c->value && c->value_len)
                        return KS_ERR__INVALID_ARG;
        }
        return KS_ERR_NONE;
}

/* One branch of a txn, as etcd checks it: keys present, and no key put twice
 * or both put and deleted (etcd: "duplicate key given in txn request"). */
ks_err_t ks_kv_check_ops(const ks_kv_op_t *ops, size_t n)
{
        if (n && !ops)
                return KS_ERR__INVALID_ARG;
        if (n > KS_KV_TXN_MAX_OPS)
                return KS_ERR__TOO_LARGE;
        for (size_t i = 0; i < n; i++) {
                const ks_kv_op_t *o = &ops[i];
                ks_kv_span_t s = {0};
                if (o->type != KS_KV_OP_PUT && o->type != KS_KV_OP_DELETE)
                        return KS_ERR__INVALID_ARG;
                if (ks_kv_span_make(&s, o->key, o->key_len, o->type == KS_KV_OP_DELETE ? o->range_end : NULL,
                              o->range_end_len))
                        return KS_ERR__INVALID_ARG;
                if (o->type == KS_KV_OP_PUT && ((!o->value && o->value_len) || o->lease < 0))
                        return KS_ERR__INVALID_ARG;
        }
        for (size_t i = 0; i < n; i++) {
                if (ops[i].type != KS_KV_OP_PUT)
                        continue;
                for (size_t j = 0; j < n; j++) {
                        if (j == i)
                                continue;
                        const ks_kv_op_t *o = &ops[j];
                        if (o->type == KS_KV_OP_PUT) {
                                if (j > i && ks_kv_key_cmp(o->key, o->key_len, ops[i].key, ops[i].key_len) == 0)
                                        return KS_ERR__INVALID_ARG;
                        } else {
                                ks_kv_span_t s = {0};
                                ks_kv_span_make(&s, o->key, o->key_len, o->range_end, o->range_end_len);
                                if (span_has(s.key, s.key_len, s.end, s.end_len, ops[i].key, ops[i].key_len))
                                        return KS_ERR__INVALID_ARG;
                        }
                }
        }
        return KS_ERR_NONE;
}

/* Owned events of one write, built before it commits so that publishing
 * cannot fail afterwards. */
typedef struct kv_evbuf {
        ks_kv_event_t *ev;
        size_t n, cap;
} kv_evbuf_t;

static ks_err_t evbuf_add(kv_evbuf_t *b, ks_kv_ev_type_t type, const ks_kv_pair_t *kv, int64_t rev)
{
        if (b->n == b->cap) {
                size_t ncap = b->cap ? b->cap * 2 : 8;
                ks_kv_event_t *n = realloc(b->ev, ncap * sizeof(*n));
                if (!n)
                        return KS_ERR__NOMEM;
                b->ev = n;
                b->cap = ncap;
        }
        ks_kv_event_t *e = &b->ev[b->n];
        memset(e, 0, sizeof(*e));
        e->type = type;
        e->revision = rev;
        if (type == KS_KV_EV_PUT) {
                e->kv = *kv;
                e->kv.value = dup_bytes(kv->value, kv->value_len);
        } else {
                e->kv.key_len = kv->key_len;
                e->kv.mod_rev = rev;
                e->kv.value = dup_bytes(NULL, 0);
        }
        e->kv.key = dup_bytes(kv->key, kv->key_len);
        if (!e->kv.key || !e->kv.value) {
                pair_free(&e->kv);
                return KS_ERR__NOMEM;
        }
        b->n++;
        return KS_ERR_NONE;
}

static void evbuf_free(kv_evbuf_t *b)
{
        for (size_t i = 0; i < b->n; i++)
                pair_free(&b->ev[i].kv);
        free(b->ev);
        memset(b, 0, sizeof(*b));
}


/* ---------------------------------------------------- watch hub (history) */

struct ks_kv_watch {
        ks_kv_watch_t *next;
        uint8_t *key; /* owned, normalised range (see ks_kv_span_t) */
        size_t key_len;
        uint8_t *end;
        size_t end_len;
        int64_t next_rev; /* first revision not yet delivered */
        uint64_t pass;    /* dispatcher round in which it was last served */
        ks_kv_watch_cb *cb;
        void *opaque;
        bool self_cancelled; /* cancelled from its own callback: dispatcher frees */
};

typedef struct kv_hub {
        pthread_mutex_t mu;
        pthread_cond_t work; /* dispatcher: new events, new watch, stop */
        pthread_cond_t idle; /* cancel: the running callback returned */
        ks_kv_event_t *ring; /* owned events, revision order */
        size_t cap, head, count;
        int64_t last_rev;    /* newest revision published */
        int64_t compact_rev; /* every revision > compact_rev is fully in the ring */
        ks_kv_watch_t *watches;
        ks_kv_watch_t *running; /* watch whose callback runs now */
        uint64_t pass;
        bool stop;
        pthread_t thread;
} kv_hub_t;

static ks_kv_event_t *ring_at(kv_hub_t *h, size_t i)
{
        return &h->ring[(h->head + i) % h->cap];
}

/* Index of the first retained event with revision >= rev. */
static size_t ring_lower_bound(kv_hub_t *h, int64_t rev)
{
        size_t lo = 0, hi = h->count;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (ring_at(h, mid)->revision < rev)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static void watch_free(ks_kv_watch_t *w)
{
        free(w->key);
        free(w->end);
        free(w);
}

/* The next callback batch for w, as one malloc block (events, then their keys
 * and values).  hub.mu held.  Returns 1 with *out and *n set, 0 when w is caught
 * up, -1 when out of memory (cursor unchanged). */
static int hub_next_batch(kv_hub_t *h, ks_kv_watch_t *w, ks_kv_event_t **out, size_t *n)
{
        if (w->next_rev <= h->compact_rev) {
                ks_kv_event_t *ev = calloc(1, sizeof(*ev));
                if (!ev)
                        return -1;
                ev->type = KS_KV_EV_COMPACTED;
                ev->revision = h->compact_rev;
                /* The watcher reloads with a range read at a revision >=
                 * last_rev; it continues with what comes after that. */
                w->next_rev = h->last_rev + 1;
                *out = ev;
                *n = 1;
                return 1;
        }
        size_t i = ring_lower_bound(h, w->next_rev);
        while (i < h->count) {
                int64_t rev = ring_at(h, i)->revision;
                size_t j, nmatch = 0, bytes = 0;
                for (j = i; j < h->count && ring_at(h, j)->revision == rev; j++) {
                        const ks_kv_event_t *e = ring_at(h, j);
                        if (span_has(w->key, w->key_len, w->end, w->end_len, e->kv.key, e->kv.key_len)) {
                                nmatch++;
                                bytes += e->kv.key_len + 1 + e->kv.value_len + 1;
                        }
                }
                if (nmatch) {
                        ks_kv_event_t *evs = malloc(nmatch * sizeof(*evs) + bytes);
                        if (!evs)
                                return -1;
                        uint8_t *p = (uint8_t *)(evs + nmatch);
                        size_t k = 0;
                        for (size_t x = i; x < j; x++) {
                                const ks_kv_event_t *e = ring_at(h, x);
                                if (!span_has(w->key, w->key_len, w->end, w->end_len, e->kv.key, e->kv.key_len))
                                        continue;
                                evs[k] = *e;
                                evs[k].kv.key = p;
                                memcpy(p, e->kv.key, e->kv.key_len + 1);
                                p += e->kv.key_len + 1;
                                evs[k].kv.value = p;
                                memcpy(p, e->kv.value, e->kv.value_len + 1);
                                p += e->kv.value_len + 1;
                                k++;
                        }
                        w->next_rev = rev + 1;
                        *out = evs;
                        *n = nmatch;
                        return 1;
                }
                i = j;
        }
        w->next_rev = h->last_rev + 1;
        return 0;
}

/* Dispatcher thread. */
static void *hub_main(void *arg)
{
        kv_hub_t *h = arg;

        pthread_mutex_lock(&h->mu);
        while (!h->stop) {
                ks_kv_watch_t *w = NULL;
                bool pending = false;
                for (ks_kv_watch_t *x = h->watches; x; x = x->next) {
                        if (x->next_rev > h->last_rev)
                                continue; /* caught up */
                        pending = true;
                        if (x->pass != h->pass) {
                                w = x;
                                break;
                        }
                }
                if (!w) {
                        if (pending)
                                h->pass++; /* next round */
                        else
                                pthread_cond_wait(&h->work, &h->mu);
                        continue;
                }
                w->pass = h->pass;

                ks_kv_event_t *evs = NULL;
                size_t n = 0;
                int r = hub_next_batch(h, w, &evs, &n);
                if (r < 0) {
                        struct timespec ts;
                        ks_deadline_after_ms(&ts, KV_NOMEM_RETRY_MS);
                        pthread_cond_timedwait(&h->work, &h->mu, &ts);
                        continue;
                }
                if (r == 0)
                        continue;

                h->running = w;
                pthread_mutex_unlock(&h->mu);
                w->cb(w->opaque, evs, n);
                free(evs);
                pthread_mutex_lock(&h->mu);
                h->running = NULL;
                if (w->self_cancelled)
                        watch_free(w);
                pthread_cond_broadcast(&h->idle);
        }
        pthread_mutex_unlock(&h->mu);
        return NULL;
}

static ks_err_t hub_init(kv_hub_t *h, int64_t rev)
{
        memset(h, 0, sizeof(*h));
        h->cap = KS_KV_HISTORY_EVENTS;
        h->ring = calloc(h->cap, sizeof(*h->ring));
        if (!h->ring)
                return KS_ERR__NOMEM;
        h->last_rev = h->compact_rev = rev; /* nothing before `rev` is retained */
        h->pass = 1;
        pthread_mutex_init(&h->mu, NULL);
        pthread_cond_init(&h->idle, NULL);
        /* `work` is also waited on with a monotonic deadline (NOMEM retry). */
        if (ks_cond_init_monotonic(&h->work) != 0) {
                pthread_cond_destroy(&h->idle);
                pthread_mutex_destroy(&h->mu);
                free(h->ring);
                return KS_ERR__NOMEM;
        }
        int rc = pthread_create(&h->thread, NULL, hub_main, h);
        if (rc != 0) {
                ks_log_error("kv_thread_failed", "thread=watch_dispatcher err=\"%s\"", strerror(rc));
                pthread_cond_destroy(&h->work);
                pthread_cond_destroy(&h->idle);
                pthread_mutex_destroy(&h->mu);
                free(h->ring);
                return KS_ERR__NOMEM;
        }
        return KS_ERR_NONE;
}

static void ring_clear(kv_hub_t *h)
{
        for (size_t i = 0; i < h->count; i++)
                pair_free(&ring_at(h, i)->kv);
        h->head = h->count = 0;
}

static void hub_destroy(kv_hub_t *h)
{
        pthread_mutex_lock(&h->mu);
        h->stop = true;
        pthread_cond_signal(&h->work);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL);

        while (h->watches) {
                ks_kv_watch_t *w = h->watches;
                h->watches = w->next;
                watch_free(w);
        }
        ring_clear(h);
        free(h->ring);
        pthread_cond_destroy(&h->work);
        pthread_cond_destroy(&h->idle);
        pthread_mutex_destroy(&h->mu);
}

/* Appends the events of revision `rev` to the history (taking ownership of
 * their keys and values; b is emptied) and wakes the dispatcher.  Cannot fail.
 * Called with engine.mu held, so revisions arrive in order. */
static void hub_publish(kv_hub_t *h, kv_evbuf_t *b, int64_t rev)
{
        pthread_mutex_lock(&h->mu);
        for (size_t i = 0; i < b->n; i++) {
                if (h->count == h->cap) {
                        ks_kv_event_t *old = &h->ring[h->head];
                        if (old->revision > h->compact_rev)
                                h->compact_rev = old->revision;
                        pair_free(&old->kv);
                        h->head = (h->head + 1) % h->cap;
                        h->count--;
                }
                *ring_at(h, h->count) = b->ev[i];
                h->count++;
        }
        h->last_rev = rev;
        pthread_cond_signal(&h->work);
        pthread_mutex_unlock(&h->mu);
        b->n = 0; /* ownership moved to the ring */
}

static ks_err_t hub_watch(kv_hub_t *h, const ks_kv_span_t *s, int64_t start_rev, ks_kv_watch_cb *cb, void *opaque,
                          ks_kv_watch_t **out)
{
        ks_kv_watch_t *w = calloc(1, sizeof(*w));
        if (!w)
                return KS_ERR__NOMEM;
        w->key = dup_bytes(s->key, s->key_len);
        w->key_len = s->key_len;
        if (s->end) {
                w->end = dup_bytes(s->end, s->end_len);
                w->end_len = s->end_len;
        }
        if (!w->key || (s->end && !w->end)) {
                watch_free(w);
                return KS_ERR__NOMEM;
        }
        w->cb = cb;
        w->opaque = opaque;

        pthread_mutex_lock(&h->mu);
        w->next_rev = start_rev > 0 ? start_rev : h->last_rev + 1;
        ks_kv_watch_t **pp = &h->watches;
        while (*pp)
                pp = &(*pp)->next;
        *pp = w;
        pthread_cond_signal(&h->work);
        pthread_mutex_unlock(&h->mu);
        *out = w;
        return KS_ERR_NONE;
}

static void hub_cancel(kv_hub_t *h, ks_kv_watch_t *w)
{
        pthread_mutex_lock(&h->mu);
        for (ks_kv_watch_t **pp = &h->watches; *pp; pp = &(*pp)->next) {
                if (*pp == w) {
                        *pp = w->next;
                        break;
                }
        }
        if (h->running == w) {
                if (pthread_equal(pthread_self(), h->thread)) {
                        /* From its own callback (the contract forbids it;
                         * waiting would deadlock): the dispatcher frees it. */
                        w->self_cancelled = true;
                        pthread_mutex_unlock(&h->mu);
                        return;
                }
                while (h->running == w)
                        pthread_cond_wait(&h->idle, &h->mu);
        }
        pthread_mutex_unlock(&h->mu);
        watch_free(w);
}

/* ----------------------------------------------------------------- engine */

typedef struct kv_lease {
        int64_t id;
        int64_t ttl_s;
        int64_t expires_ms; /* engine clock (mono); alive while now < expires_ms */
} kv_lease_t;

typedef struct kv_engine {
        ks_kv_t base;
        ks_kv_ops_t ops; /* the engine vtable with the store's name */
        const ks_kv_store_ops_t *sops;
        void *st;
        const ks_clock_t *clock;

        pthread_mutex_t mu; /* see the top of the file */
        int64_t rev;
        int64_t lease_seq;
        kv_lease_t *leases; /* sorted by id (ids only grow) */
        size_t nleases, cap_leases;
        int64_t next_expiry; /* min expires_ms over leases; INT64_MAX if none */

        pthread_cond_t reaper_cv;
        bool reaper_stop;
        pthread_t reaper;

        kv_hub_t hub;
} kv_engine_t;

static int64_t now_ms(kv_engine_t *e)
{
        return ks_clock_mono_ms(e->clock);
}

static void leases_recompute_expiry(kv_engine_t *e)
{
        e->next_expiry = INT64_MAX;
        for (size_t i = 0; i < e->nleases; i++)
                if (e->leases[i].expires_ms < e->next_expiry)
                        e->next_expiry = e->leases[i].expires_ms;
}

static kv_lease_t *lease_find(kv_engine_t *e, int64_t id, size_t *idx)
{
        size_t lo = 0, hi = e->nleases;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (e->leases[mid].id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo < e->nleases && e->leases[lo].id == id) {
                if (idx)
                        *idx = lo;
                return &e->leases[lo];
        }
        return NULL;
}

/* Commits the store transaction at `rev`, or rolls it back on failure. */
static ks_err_t store_commit(kv_engine_t *e, int64_t rev)
{
        ks_err_t err = e->sops->commit(e->st, rev);
        if (err)
                e->sops->rollback(e->st);
        return err;
}

/* Revokes lease leases[idx]: deletes its keys in one revision (none if it
 * has no keys), forgets it.  engine.mu held. */
static ks_err_t revoke_locked(kv_engine_t *e, size_t idx)
{
        int64_t id = e->leases[idx].id;
        int64_t nrev = e->rev + 1;
        ks_kv_result_t keys = {0};
        kv_evbuf_t eb = {0};
        ks_err_t err = e->sops->lease_keys(e->st, id, &keys);

        for (size_t i = 0; !err && i < keys.count; i++)
                err = evbuf_add(&eb, KS_KV_EV_DELETE, &keys.kvs[i], nrev);
        if (err)
                goto out;
        if ((err = e->sops->begin(e->st)))
                goto out;
        for (size_t i = 0; !err && i < keys.count; i++)
                err = e->sops->del(e->st, keys.kvs[i].key, keys.kvs[i].key_len);
        if (!err && e->sops->lease_drop)
                err = e->sops->lease_drop(e->st, id);
        if (err) {
                e->sops->rollback(e->st);
                goto out;
        }
        if ((err = store_commit(e, keys.count ? nrev : e->rev)))
                goto out;

        memmove(&e->leases[idx], &e->leases[idx + 1], (e->nleases - idx - 1) * sizeof(*e->leases));
        e->nleases--;
        leases_recompute_expiry(e);
        if (keys.count) {
                e->rev = nrev;
                hub_publish(&e->hub, &eb, nrev);
        }
out:
        evbuf_free(&eb);
        ks_kv_result_free(&keys);
        return err;
}

/* Revokes every lease whose deadline passed.  engine.mu held. */
static void expire_locked(kv_engine_t *e)
{
        if (e->nleases == 0)
                return;
        int64_t now = now_ms(e);
        if (now < e->next_expiry)
                return;
        size_t i = 0;
        while (i < e->nleases) {
                if (e->leases[i].expires_ms <= now) {
                        int64_t id = e->leases[i].id;
                        ks_err_t err = revoke_locked(e, i);
                        if (!err) {
                                ks_log_debug("kv_lease_expired", "backend=%s lease=%lld", e->sops->name, (long long)id);
                                continue; /* leases[i] is now the next one */
                        }
                        /* Keeps it; retried on the next call or wake-up.  It
                         * is already dead: keepalive/put refuse it. */
                        ks_log_warn("kv_lease_expiry_failed", "backend=%s lease=%lld err=%s", e->sops->name,
                                    (long long)id, ks_err_name(err));
                }
                i++;
        }
}

/* A lease usable by a put: known and not past its deadline. */
static bool lease_alive(kv_engine_t *e, int64_t id)
{
        kv_lease_t *l = lease_find(e, id, NULL);
        return l && now_ms(e) < l->expires_ms;
}

static void *reaper_main(void *arg)
{
        kv_engine_t *e = arg;

        pthread_mutex_lock(&e->mu);
        while (!e->reaper_stop) {
                expire_locked(e);
                struct timespec ts;
                ks_deadline_after_ms(&ts, KV_REAPER_PERIOD_MS);
                pthread_cond_timedwait(&e->reaper_cv, &e->mu, &ts);
        }
        pthread_mutex_unlock(&e->mu);
        return NULL;
}

/* Applies one validated branch as one write at revision rev + 1.  *ndeleted
 * (may be NULL) receives the number of keys deleted.  engine.mu held. */
static ks_err_t write_locked(kv_engine_t *e, const ks_kv_op_t *ops, size_t n, int64_t *ndeleted)
{
        const ks_kv_store_ops_t *so = e->sops;
        int64_t nrev = e->rev + 1, deleted = 0;
        kv_evbuf_t eb = {0};
        ks_err_t err;

        for (size_t i = 0; i < n; i++)
                if (ops[i].type == KS_KV_OP_PUT && ops[i].lease && !lease_alive(e, ops[i].lease))
                        return KS_ERR__LEASE_LOST;
        if (n == 0)
                goto done;
        if ((err = so->begin(e->st)))
                return err;
        for (size_t i = 0; !err && i < n; i++) {
                const ks_kv_op_t *o = &ops[i];
                ks_kv_result_t cur = {0};
                if (o->type == KS_KV_OP_PUT) {
                        err = so->range(e->st, o->key, o->key_len, NULL, 0, false, &cur);
                        if (err)
                                break;
                        ks_kv_pair_t p = {
                            .key = (uint8_t *)o->key,
                            .key_len = o->key_len,
                            .value = (uint8_t *)o->value,
                            .value_len = o->value_len,
                            .create_rev = cur.count ? cur.kvs[0].create_rev : nrev,
                            .mod_rev = nrev,
                            .version = cur.count ? cur.kvs[0].version + 1 : 1,
                            .lease = o->lease,
                        };
                        ks_kv_result_free(&cur);
                        err = evbuf_add(&eb, KS_KV_EV_PUT, &p, nrev);
                        if (!err)
                                err = so->put(e->st, &p);
                } else {
                        ks_kv_span_t s = {0};
                        ks_kv_span_make(&s, o->key, o->key_len, o->range_end, o->range_end_len);
                        err = so->range(e->st, s.key, s.key_len, s.end, s.end_len, false, &cur);
                        for (size_t k = 0; !err && k < cur.count; k++) {
                                err = evbuf_add(&eb, KS_KV_EV_DELETE, &cur.kvs[k], nrev);
                                if (!err)
                                        err = so->del(e->st, cur.kvs[k].key, cur.kvs[k].key_len);
                                if (!err)
                                        deleted++;
                        }
                        ks_kv_result_free(&cur);
                }
        }
        if (err) {
                so->rollback(e->st);
                evbuf_free(&eb);
                return err;
        }
        if (eb.n == 0) {
                so->rollback(e->st); /* nothing written: no new revision */
        } else {
                if ((err = store_commit(e, nrev))) {
                        evbuf_free(&eb);
                        return err;
                }
                e->rev = nrev;
                hub_publish(&e->hub, &eb, nrev);
        }
        evbuf_free(&eb);
done:
        if (ndeleted)
                *ndeleted = deleted;
        return KS_ERR_NONE;
}

static ks_err_t eng_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                          ks_kv_result_t *out)
{
        kv_engine_t *e = (kv_engine_t *)kv;
        ks_kv_span_t s = {0};
        ks_err_t err;

        if (!out)
                return KS_ERR__INVALID_ARG;
        memset(out, 0, sizeof(*out));
        if ((err = ks_kv_span_make(&s, key, key_len, range_end, range_end_len)))
                return err;
        pthread_mutex_lock(&e->mu);
        expire_locked(e);
        err = e->sops->range(e->st, s.key, s.key_len, s.end, s.end_len, true, out);
        out->revision = e->rev;
        pthread_mutex_unlock(&e->mu);
        if (err)
                ks_kv_result_free(out);
        return err;
}

static ks_err_t eng_txn(ks_kv_t *kv, const ks_kv_cmp_t *cmps, size_t ncmps, const ks_kv_op_t *success, size_t nsuccess,
                        const ks_kv_op_t *failure, size_t nfailure, bool *succeeded, int64_t *revision)
{
        kv_engine_t *e = (kv_engine_t *)kv;
        ks_err_t err;
        bool ok = true;

        if ((err = ks_kv_check_cmps(cmps, ncmps)) || (err = ks_kv_check_ops(success, nsuccess)) ||
            (err = ks_kv_check_ops(failure, nfailure)))
                return err;

        pthread_mutex_lock(&e->mu);
        expire_locked(e);
        for (size_t i = 0; ok && i < ncmps; i++) {
                const ks_kv_cmp_t *c = &cmps[i];
                ks_kv_result_t cur = {0};
                err = e->sops->range(e->st, c->key, c->key_len, NULL, 0, c->target == KS_KV_CMP_VALUE, &cur);
                if (err)
                        break;
                ok = cmp_holds(c, cur.count ? &cur.kvs[0] : NULL);
                ks_kv_result_free(&cur);
        }
        if (!err)
                err = ok ? write_locked(e, success, nsuccess, NULL) : write_locked(e, failure, nfailure, NULL);
        if (!err) {
                if (succeeded)
                        *succeeded = ok;
                if (revision)
                        *revision = e->rev;
        }
        pthread_mutex_unlock(&e->mu);
        return err;
}

static ks_err_t eng_put(ks_kv_t *kv, const void *key, size_t key_len, const void *value, size_t value_len,
                        int64_t lease, int64_t *revision)
{
        ks_kv_op_t op = {.type = KS_KV_OP_PUT,
                         .key = key,
                         .key_len = key_len,
                         .value = value,
                         .value_len = value_len,
                         .lease = lease};
        return eng_txn(kv, NULL, 0, &op, 1, NULL, 0, NULL, revision);
}

static ks_err_t eng_delete_range(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end,
                                 size_t range_end_len, int64_t *deleted, int64_t *revision)
{
        kv_engine_t *e = (kv_engine_t *)kv;
        ks_kv_op_t op = {.type = KS_KV_OP_DELETE,
                         .key = key,
                         .key_len = key_len,
                         .range_end = range_end,
                         .range_end_len = range_end_len};
        ks_err_t err;
        int64_t n = 0;

        if ((err = ks_kv_check_ops(&op, 1)))
                return err;
        pthread_mutex_lock(&e->mu);
        expire_locked(e);
        err = write_locked(e, &op, 1, &n);
        if (!err) {
                if (deleted)
                        *deleted = n;
                if (revision)
                        *revision = e->rev;
        }
        pthread_mutex_unlock(&e->mu);
        return err;
}

static ks_err_t eng_lease_grant(ks_kv_t *kv, int64_t ttl_seconds, int64_t *lease_id)
{
        kv_engine_t *e = (kv_engine_t *)kv;
        ks_err_t err = KS_ERR_NONE;

        if (ttl_seconds < 1 || ttl_seconds > INT64_MAX / 4000 || !lease_id)
                return KS_ERR__INVALID_ARG;
        pthread_mutex_lock(&e->mu);
        expire_locked(e);
        if (e->nleases == e->cap_leases) {
                size_t ncap = e->cap_leases ? e->cap_leases * 2 : 8;
                kv_lease_t *n = realloc(e->leases, ncap * sizeof(*n));
                if (!n) {
                        err = KS_ERR__NOMEM;
                        goto out;
                }
                e->leases = n;
                e->cap_leases = ncap;
        }
        int64_t id = e->lease_seq + 1;
        int64_t ttl_ms = ttl_seconds * 1000;
        if (e->sops->lease_save) {
                if ((err = e->sops->begin(e->st)))
                        goto out;
                err = e->sops->lease_save(e->st, id, ttl_seconds, ks_clock_wall_ms(e->clock) + ttl_ms);
                if (err) {
                        e->sops->rollback(e->st);
                        goto out;
                }
                if ((err = store_commit(e, e->rev)))
                        goto out;
        }
        e->lease_seq = id;
        e->leases[e->nleases++] = (kv_lease_t){.id = id, .ttl_s = ttl_seconds, .expires_ms = now_ms(e) + ttl_ms};
        leases_recompute_expiry(e);
        pthread_cond_signal(&e->reaper_cv);
        *lease_id = id;
out:
        pthread_mutex_unlock(&e->mu);
        return err;
}

static ks_err_t eng_lease_keepalive(ks_kv_t *kv, int64_t lease_id, int64_t *ttl_remaining)
{
        kv_engine_t *e = (kv_engine_t *)kv;
        ks_err_t err = KS_ERR_NONE;

        pthread_mutex_lock(&e->mu);
        expire_locked(e);
        kv_lease_t *l = lease_find(e, lease_id, NULL);
        if (!l || now_ms(e) >= l->expires_ms) {
                err = KS_ERR__LEASE_LOST;
                goto out;
        }
        int64_t ttl_ms = l->ttl_s * 1000;
        if (e->sops->lease_save) {
                if ((err = e->sops->begin(e->st)))
                        goto out;
                err = e->sops->lease_save(e->st, l->id, l->ttl_s, ks_clock_wall_ms(e->clock) + ttl_ms);
                if (err) {
                        e->sops->rollback(e->st);
                        goto out;
                }
                if ((err = store_commit(e, e->rev)))
                        goto out;
        }
        l->expires_ms = now_ms(e) + ttl_ms;
        leases_recompute_expiry(e);
        if (ttl_remaining)
                *ttl_remaining = l->ttl_s;
out:
        pthread_mutex_unlock(&e->mu);
        return err;
}

static ks_err_t eng_lease_revoke(ks_kv_t *kv, int64_t lease_id)
{
        kv_engine_t *e = (kv_engine_t *)kv;
        ks_err_t err;
        size_t idx;

        pthread_mutex_lock(&e->mu);
        expire_locked(e);
        if (!lease_find(e, lease_id, &idx))
                err = KS_ERR__LEASE_LOST;
        else
                err = revoke_locked(e, idx);
        pthread_mutex_unlock(&e->mu);
        return err;
}

static ks_err_t eng_watch(ks_kv_t *kv, const void *key, size_t key_len, const void *range_end, size_t range_end_len,
                          int64_t start_rev, ks_kv_watch_cb *cb, void *opaque, ks_kv_watch_t **out)
{
        kv_engine_t *e = (kv_engine_t *)kv;
        ks_kv_span_t s = {0};
        ks_err_t err;

        if (!cb || !out || start_rev < 0)
                return KS_ERR__INVALID_ARG;
        if ((err = ks_kv_span_make(&s, key, key_len, range_end, range_end_len)))
                return err;
        return hub_watch(&e->hub, &s, start_rev, cb, opaque, out);
}

static void eng_watch_cancel(ks_kv_t *kv, ks_kv_watch_t *w)
{
        kv_engine_t *e = (kv_engine_t *)kv;

        if (w)
                hub_cancel(&e->hub, w);
}

static void eng_destroy(ks_kv_t *kv)
{
        kv_engine_t *e = (kv_engine_t *)kv;

        pthread_mutex_lock(&e->mu);
        e->reaper_stop = true;
        pthread_cond_signal(&e->reaper_cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->reaper, NULL);

        hub_destroy(&e->hub);
        e->sops->destroy(e->st);
        free(e->leases);
        pthread_cond_destroy(&e->reaper_cv);
        pthread_mutex_destroy(&e->mu);
        free(e);
}

static const ks_kv_ops_t engine_ops = {
    .name = "engine",
    .range = eng_range,
    .put = eng_put,
    .delete_range = eng_delete_range,
    .txn = eng_txn,
    .lease_grant = eng_lease_grant,
    .lease_keepalive = eng_lease_keepalive,
    .lease_revoke = eng_lease_revoke,
    .watch = eng_watch,
    .watch_cancel = eng_watch_cancel,
    .destroy = eng_destroy,
};

ks_err_t ks_kv_engine_new(const ks_kv_store_ops_t *sops, void *st, int64_t revision, int64_t lease_seq,
                          const ks_clock_t *clock, ks_kv_t **out)
{
        kv_engine_t *e = calloc(1, sizeof(*e));
        ks_err_t err;

        if (!e) {
                sops->destroy(st);
                return KS_ERR__NOMEM;
        }
        e->ops = engine_ops;
        e->ops.name = sops->name;
        e->base.ops = &e->ops;
        e->sops = sops;
        e->st = st;
        e->clock = clock ? clock : ks_clock_system();
        e->rev = revision;
        e->lease_seq = lease_seq;
        e->next_expiry = INT64_MAX;
        pthread_mutex_init(&e->mu, NULL);
        if (ks_cond_init_monotonic(&e->reaper_cv) != 0) {
                err = KS_ERR__NOMEM;
                goto fail_mu;
        }
        if ((err = hub_init(&e->hub, revision)))
                goto fail_cv;
        int rc = pthread_create(&e->reaper, NULL, reaper_main, e);
        if (rc != 0) {
                ks_log_error("kv_thread_failed", "thread=lease_reaper err=\"%s\"", strerror(rc));
                hub_destroy(&e->hub);
                err = KS_ERR__NOMEM;
                goto fail_cv;
        }
        *out = &e->base;
        return KS_ERR_NONE;

fail_cv:
        pthread_cond_destroy(&e->reaper_cv);
fail_mu:
        pthread_mutex_destroy(&e->mu);
        sops->destroy(st);
        free(e);
        return err;
}

void ks_kv_engine_compact(ks_kv_t *kv)
{
        if (!kv || kv->ops->range != eng_range)
                return;
        kv_engine_t *e = (kv_engine_t *)kv;
        pthread_mutex_lock(&e->hub.mu);
        ring_clear(&e->hub);
        e->hub.compact_rev = e->hub.last_rev;
        pthread_mutex_unlock(&e->hub.mu);
}
