/*
 * topic_sync.c — see topic_sync.h.
 *
 * Threads and locks:
 *  - qmu protects the queue of topic names the watch reported (`pending`,
 *    deduplicated), `all` (a full pass is due) and `stop`; the watch thread
 *    only appends under it and signals `cv`, so it never waits for log I/O.
 *  - sync_mu serialises syncs (the `ks-topics` thread and callers of
 *    ks_topic_sync_one on worker threads).  It is held across the log's
 *    blocking calls; qmu is never taken while holding it for long.
 */
#include "broker/topic_sync.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "util/log.h"

typedef char topic_name_t[KS_TOPIC_NAME_MAX + 1];

struct ks_topic_sync {
        ks_log_t *log;
        ks_meta_t *meta;

        pthread_mutex_t sync_mu;

        pthread_mutex_t qmu;
        pthread_cond_t cv;
        topic_name_t *pending;
        int npending, cap;
        bool all;
        bool stop;

        pthread_t thread;
        bool started;

        ks_topic_synced_fn *synced; /* set before the thread syncs anything */
        void *synced_opaque;
};

void ks_topic_sync_set_hook(ks_topic_sync_t *s, ks_topic_synced_fn *fn, void *opaque)
{
        pthread_mutex_lock(&s->qmu);
        s->synced = fn;
        s->synced_opaque = opaque;
        pthread_mutex_unlock(&s->qmu);
}

/* The hook, read under qmu (it is set once, early). */
static void call_synced(ks_topic_sync_t *s, const char *topic)
{
        pthread_mutex_lock(&s->qmu);
        ks_topic_synced_fn *fn = s->synced;
        void *opaque = s->synced_opaque;
        pthread_mutex_unlock(&s->qmu);
        if (fn)
                fn(opaque, topic);
}

static ks_err_t sync_locked(ks_topic_sync_t *s, const char *name)
{
        ks_topic_t want;
        bool wanted = ks_meta_topic_get(s->meta, (ks_str_t){ name, (int32_t)strlen(name) }, &want);
        ks_uuid_t have_id;
        int32_t have_parts = 0;
        bool have = ks_log_topic_info(s->log, name, &have_id, &have_parts);
        if (have && (!wanted || !ks_uuid_eq(&have_id, &want.id))) {
                if (ks_log_topic_forget(s->log, name, &have_id))
                        ks_log_info("topic_closed", "topic=%s partitions=%d reason=%s", name, have_parts,
                                    wanted ? "recreated" : "deleted");
                have = false;
        }
        if (!wanted)
                return 0;
        ks_err_t err = ks_log_topic_open(s->log, &want);
        if (err) {
                ks_log_warn("topic_sync_failed", "topic=%s partitions=%d err=%s action=retry_in_%dms", name,
                            want.partitions, ks_err_name(err), KS_TOPIC_SYNC_PERIOD_MS);
                return err;
        }
        if (!have || have_parts != want.partitions)
                ks_log_debug("topic_opened", "topic=%s partitions=%d previous=%d", name, want.partitions,
                             have ? have_parts : 0);
        ks_log_topic_configure(s->log, &want);
        return 0;
}

ks_err_t ks_topic_sync_one(ks_topic_sync_t *s, const char *topic)
{
        pthread_mutex_lock(&s->sync_mu);
        ks_err_t err = sync_locked(s, topic);
        pthread_mutex_unlock(&s->sync_mu);
        return err;
}

ks_err_t ks_topic_sync_all(ks_topic_sync_t *s)
{
        ks_err_t first = 0;
        pthread_mutex_lock(&s->sync_mu);
        ks_topic_t *topics = NULL;
        int n = ks_meta_topics_snapshot(s->meta, &topics);
        for (int i = 0; i < n; i++) {
                ks_err_t err = sync_locked(s, topics[i].name);
                if (err && !first)
                        first = err;
        }
        free(topics);
        /* Topics the log has and the registry does not. */
        topic_name_t *names = NULL;
        int m = ks_log_topic_names(s->log, &names);
        for (int i = 0; i < m; i++) {
                ks_topic_t t;
                if (!ks_meta_topic_get(s->meta, (ks_str_t){ names[i], (int32_t)strlen(names[i]) }, &t))
                        sync_locked(s, names[i]);
        }
        free(names);
        pthread_mutex_unlock(&s->sync_mu);
        if (n < 0 || m < 0)
                return KS_ERR__NOMEM;
        return first;
}

/* Watch thread: queue the name and return. */
static void on_topic_change(void *opaque, const char *topic)
{
        ks_topic_sync_t *s = opaque;
        pthread_mutex_lock(&s->qmu);
        if (!topic) {
                s->all = true;
        } else {
                bool queued = false;
                for (int i = 0; i < s->npending && !queued; i++)
                        queued = !strcmp(s->pending[i], topic);
                if (!queued) {
                        if (s->npending == s->cap) {
                                int cap = s->cap ? s->cap * 2 : 16;
                                topic_name_t *np = realloc(s->pending, (size_t)cap * sizeof(*np));
                                if (np) {
                                        s->pending = np;
                                        s->cap = cap;
                                }
                        }
                        if (s->npending < s->cap)
                                snprintf(s->pending[s->npending++], sizeof(topic_name_t), "%s", topic);
                        else
                                s->all = true; /* out of memory: the full pass covers it */
                }
        }
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->qmu);
}

static void *sync_thread(void *arg)
{
        ks_topic_sync_t *s = arg;
        struct timespec next_full;
        ks_deadline_after_ms(&next_full, KS_TOPIC_SYNC_PERIOD_MS);
        pthread_mutex_lock(&s->qmu);
        while (!s->stop) {
                if (s->npending == 0 && !s->all) {
                        if (pthread_cond_timedwait(&s->cv, &s->qmu, &next_full) != 0)
                                s->all = true; /* the period elapsed */
                        continue;
                }
                bool all = s->all;
                topic_name_t *batch = s->pending;
                int n = s->npending;
                s->pending = NULL;
                s->npending = s->cap = 0;
                s->all = false;
                pthread_mutex_unlock(&s->qmu);
                if (all) {
                        ks_topic_sync_all(s);
                        call_synced(s, NULL);
                        ks_deadline_after_ms(&next_full, KS_TOPIC_SYNC_PERIOD_MS);
                } else {
                        for (int i = 0; i < n; i++) {
                                ks_topic_sync_one(s, batch[i]);
                                call_synced(s, batch[i]);
                        }
                }
                free(batch);
                pthread_mutex_lock(&s->qmu);
        }
        pthread_mutex_unlock(&s->qmu);
        return NULL;
}

ks_err_t ks_topic_sync_start(ks_log_t *log, ks_meta_t *meta, ks_topic_sync_t **out)
{
        ks_topic_sync_t *s = calloc(1, sizeof(*s));
        if (!s)
                return KS_ERR__NOMEM;
        s->log = log;
        s->meta = meta;
        pthread_mutex_init(&s->sync_mu, NULL);
        pthread_mutex_init(&s->qmu, NULL);
        if (ks_cond_init_monotonic(&s->cv) != 0) {
                pthread_mutex_destroy(&s->qmu);
                pthread_mutex_destroy(&s->sync_mu);
                free(s);
                return KS_ERR__NOMEM;
        }
        if (pthread_create(&s->thread, NULL, sync_thread, s) != 0) {
                ks_topic_sync_stop(s);
                return KS_ERR__NOMEM;
        }
        s->started = true;
        pthread_setname_np(s->thread, "ks-topics");
        ks_meta_set_topic_listener(meta, on_topic_change, s);
        *out = s;
        return 0;
}

void ks_topic_sync_stop(ks_topic_sync_t *s)
{
        if (!s)
                return;
        ks_meta_set_topic_listener(s->meta, NULL, NULL);
        if (s->started) {
                pthread_mutex_lock(&s->qmu);
                s->stop = true;
                pthread_cond_signal(&s->cv);
                pthread_mutex_unlock(&s->qmu);
                pthread_join(s->thread, NULL);
        }
        free(s->pending);
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->qmu);
        pthread_mutex_destroy(&s->sync_mu);
        free(s);
}
