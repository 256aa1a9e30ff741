/*
 * lag.c — consumer lag per group and partition (lag.h).
 *
 * Ownership: the snapshot (series[]) belongs to the ks_lag_t; the `ks-lag`
 * thread builds a new one without the lock and swaps it in under `mu`; the
 * scrape callback reads it under `mu`.
 */
#include "broker/lag.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/broker.h"
#include "broker/group_route.h"
#include "meta/offsets.h"
#include "metrics/metrics.h"
#include "util/log.h"

typedef struct lag_series {
        char *labels; /* group="...",topic="...",partition="N" (escaped) */
        double lag;
} lag_series_t;

typedef struct lag_set {
        lag_series_t *v;
        size_t n, cap;
} lag_set_t;

struct ks_lag {
        ks_broker_t *b;
        int64_t interval_ms;
        ks_metric_t *family;
        pthread_t thread;
        pthread_mutex_t mu;
        pthread_cond_t cond;
        bool stopping; /* mu */
        lag_set_t snap; /* mu */
        bool truncated_logged;
};

/* High watermarks read from the metadata store during one pass (cluster
 * mode, partitions served elsewhere), so that a partition several groups
 * consume is read once. */
typedef struct hwm_cache {
        struct {
                char *topic;
                int32_t partition;
                int64_t hwm; /* -1: unknown */
        } *v;
        size_t n, cap;
} hwm_cache_t;

static void set_free(lag_set_t *s)
{
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i].labels);
        free(s->v);
        *s = (lag_set_t){ 0 };
}

static void cache_free(hwm_cache_t *c)
{
        for (size_t i = 0; i < c->n; i++)
                free(c->v[i].topic);
        free(c->v);
}

/* The partition's high watermark, -1 if unknown.  BLOCKING (cluster mode). */
static int64_t high_watermark(ks_broker_t *b, hwm_cache_t *cache, const char *topic, int32_t partition)
{
        ks_partition_t *p = ks_log_partition(b->log, ks_str_c(topic), partition);
        if (p) {
                bool local = ks_partition_serving(p, NULL);
                ks_partition_offsets_t po;
                if (local)
                        ks_partition_offsets(p, &po);
                ks_partition_release(p);
                if (local)
                        return po.high_watermark;
        }
        if (!ks_group_cluster_mode(b))
                return -1; /* embedded: every existing partition is served here */
        for (size_t i = 0; i < cache->n; i++)
                if (cache->v[i].partition == partition && strcmp(cache->v[i].topic, topic) == 0)
                        return cache->v[i].hwm;
        ks_partition_meta_t pm;
        int64_t hwm = -1;
        if (ks_meta_partition_load(b->meta, topic, partition, &pm) == 0) {
                hwm = pm.next_offset;
                ks_partition_meta_free(&pm);
        }
        if (cache->n == cache->cap) {
                size_t cap = cache->cap ? cache->cap * 2 : 64;
                void *nv = realloc(cache->v, cap * sizeof(*cache->v));
                if (!nv)
                        return hwm;
                cache->v = nv;
                cache->cap = cap;
        }
        char *t = strdup(topic);
        if (t) {
                cache->v[cache->n].topic = t;
                cache->v[cache->n].partition = partition;
                cache->v[cache->n].hwm = hwm;
                cache->n++;
        }
        return hwm;
}

static bool set_add(lag_set_t *s, const char *group, const char *topic, int32_t partition, int64_t lag)
{
        if (s->n == s->cap) {
                size_t cap = s->cap ? s->cap * 2 : 64;
                lag_series_t *nv = realloc(s->v, cap * sizeof(*nv));
                if (!nv)
                        return false;
                s->v = nv;
                s->cap = cap;
        }
        char g[512], t[512];
        ks_metrics_escape_label(group, g, sizeof(g));
        ks_metrics_escape_label(topic, t, sizeof(t));
        size_t len = strlen(g) + strlen(t) + 48;
        char *labels = malloc(len);
        if (!labels)
                return false;
        snprintf(labels, len, "group=\"%s\",topic=\"%s\",partition=\"%d\"", g, t, partition);
        s->v[s->n++] = (lag_series_t){ labels, (double)lag };
        return true;
}

/* One pass: the lag of every committed offset of every group listed here. */
static void compute(ks_lag_t *l, lag_set_t *out)
{
        ks_broker_t *b = l->b;
        ks_group_summary_t *groups = NULL;
        int16_t err = 0;
        int n = ks_broker_list_groups(b, &groups, &err);
        if (n < 0)
                return;
        hwm_cache_t cache = { 0 };
        bool truncated = false;
        for (int i = 0; i < n && !truncated; i++) {
                ks_offset_list_t offs;
                ks_err_t e = ks_offsets_fetch(b->kv, groups[i].id, NULL, &offs);
                if (e) {
                        ks_log_debug("consumer_lag_skipped", "group=\"%s\" err=%s", groups[i].id, ks_err_name(e));
                        ks_offset_list_free(&offs);
                        continue;
                }
                for (size_t j = 0; j < offs.count; j++) {
                        const ks_offset_entry_t *o = &offs.items[j];
                        if (o->err || o->offset < 0)
                                continue;
                        int64_t hwm = high_watermark(b, &cache, o->topic, o->partition);
                        if (hwm < 0)
                                continue; /* deleted topic, or unknown */
                        if (out->n >= KS_LAG_MAX_SERIES) {
                                truncated = true;
                                break;
                        }
                        if (!set_add(out, groups[i].id, o->topic, o->partition,
                                     hwm > o->offset ? hwm - o->offset : 0))
                                break;
                }
                ks_offset_list_free(&offs);
        }
        if (truncated && !l->truncated_logged) {
                l->truncated_logged = true;
                ks_log_warn("consumer_lag_truncated", "series=%d hint=\"only the first %d group partitions get "
                                                      "a kafscale_consumer_group_lag series\"",
                            KS_LAG_MAX_SERIES, KS_LAG_MAX_SERIES);
        }
        cache_free(&cache);
        ks_group_summaries_free(groups, n);
}

static void emit(void *ctx, ks_metric_emitter_t *e)
{
        ks_lag_t *l = ctx;
        pthread_mutex_lock(&l->mu);
        for (size_t i = 0; i < l->snap.n; i++)
                ks_metric_emit(e, l->snap.v[i].labels, l->snap.v[i].lag);
        pthread_mutex_unlock(&l->mu);
}

static void *lag_main(void *arg)
{
        ks_lag_t *l = arg;
        pthread_mutex_lock(&l->mu);
        while (!l->stopping) {
                pthread_mutex_unlock(&l->mu);
                lag_set_t next = { 0 };
                compute(l, &next);
                pthread_mutex_lock(&l->mu);
                lag_set_t old = l->snap;
                l->snap = next;
                pthread_mutex_unlock(&l->mu);
                set_free(&old);

                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_sec += (time_t)(l->interval_ms / 1000);
                ts.tv_nsec += (long)(l->interval_ms % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_mutex_lock(&l->mu);
                while (!l->stopping && pthread_cond_timedwait(&l->cond, &l->mu, &ts) != ETIMEDOUT) {
                }
        }
        pthread_mutex_unlock(&l->mu);
        return NULL;
}

ks_lag_t *ks_lag_start(ks_broker_t *b, int64_t interval_ms)
{
        if (interval_ms <= 0)
                return NULL;
        ks_lag_t *l = calloc(1, sizeof(*l));
        if (!l) {
                ks_log_error("consumer_lag_start_failed", "reason=oom");
                return NULL;
        }
        l->b = b;
        l->interval_ms = interval_ms;
        pthread_mutex_init(&l->mu, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&l->cond, &ca);
        pthread_condattr_destroy(&ca);
        l->family = ks_metrics_gauge_series(ks_metrics_default(), "kafscale_consumer_group_lag",
                                            "Committed offset's distance from the high watermark, in records, per "
                                            "consumer group and partition, for the groups this broker coordinates "
                                            "(recomputed every KAFSCALE_LAG_INTERVAL_MS).",
                                            emit, l);
        if (pthread_create(&l->thread, NULL, lag_main, l) != 0) {
                ks_log_error("consumer_lag_start_failed", "reason=thread");
                ks_metric_detach_ctx(ks_metrics_default(), l->family, l);
                pthread_cond_destroy(&l->cond);
                pthread_mutex_destroy(&l->mu);
                free(l);
                return NULL;
        }
        pthread_setname_np(l->thread, "ks-lag");
        return l;
}

void ks_lag_stop(ks_lag_t *l)
{
        if (!l)
                return;
        ks_metric_detach_ctx(ks_metrics_default(), l->family, l);
        pthread_mutex_lock(&l->mu);
        l->stopping = true;
        pthread_cond_signal(&l->cond);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        set_free(&l->snap);
        pthread_cond_destroy(&l->cond);
        pthread_mutex_destroy(&l->mu);
        free(l);
}
