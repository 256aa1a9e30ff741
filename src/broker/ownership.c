/*
 * ownership.c — the broker's side of partition ownership (cluster mode):
 * the cluster module (cluster/cluster.h) decides which partitions this
 * broker owns and at which leader epoch; this file makes the partition log
 * follow it.
 *
 *  - partition_acquired → the partition's log reloads its committed state
 *    and serves at the new epoch (ks_partition_take_ownership); its topic
 *    is opened first if this broker has not seen it yet;
 *  - partition_release (hand-over) → flush and commit what is buffered,
 *    then stop serving; partition_lost → stop serving at once, drop what is
 *    buffered (it was never acknowledged); a deleted partition answers
 *    UNKNOWN_TOPIC_OR_PARTITION from then on, parked fetches included;
 *  - every commit carries the fence compare of the epoch its records were
 *    written at (ks_broker_fence, the log's fence callback);
 *  - a reconcile pass after topic syncs (broker/topic_sync.h) retries what
 *    a hook could not do: a partition the cluster module says is ours that
 *    the log does not serve (its topic was not open yet, or the store
 *    failed while reloading it).
 *
 * Locking: own_mu (in ks_broker_t) serialises every change of a partition's
 * serving state made here — the hooks (the `ks-cluster` thread) and the
 * reconcile pass (the `ks-topics` thread) — so two takes of one partition
 * never interleave.  It is taken before the topic-sync lock (a hook may
 * sync a topic), never after it: the reconcile hook is called with no
 * topic-sync lock held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/broker.h"
#include "util/log.h"

/* A hand-over waits this long for its flush before dropping the rest
 * (which then was never acknowledged: producers retry on the new owner). */
#define RELEASE_FLUSH_TIMEOUT_MS 10000
/* Attempts to reload a partition in the acquired hook before leaving it to
 * the reconcile pass, and the pause between them. */
#define TAKE_ATTEMPTS 3
#define TAKE_RETRY_MS 200
/* ks_broker_await_leaders polls the cluster module's view this often. */
#define AWAIT_POLL_MS 20

static ks_cluster_t *cluster_of(ks_broker_t *b)
{
        return __atomic_load_n(&b->cluster, __ATOMIC_ACQUIRE);
}

void ks_broker_fence(void *opaque, const char *topic, int32_t partition, int32_t epoch, char *keybuf, size_t keylen,
                     ks_kv_cmp_t *cmp)
{
        ks_broker_t *b = opaque;
        ks_cluster_t *c = cluster_of(b);
        if (c && ks_cluster_fence_cmp(c, topic, partition, epoch, keybuf, keylen, cmp))
                return;
        if (!c) {
                /* No cluster module (stopped): a compare that never holds. */
                int n = snprintf(keybuf, keylen, KS_CLUSTER_PARTITION_LEASES_PREFIX "%s/%d", topic, partition);
                *cmp = (ks_kv_cmp_t){ .key = keybuf,
                                      .key_len = n > 0 && (size_t)n < keylen ? (size_t)n : 0,
                                      .target = KS_KV_CMP_CREATE,
                                      .op = KS_KV_EQUAL,
                                      .number = -1 };
        }
        ks_log_warn("partition_commit_fenced", "topic=%s partition=%d leader_epoch=%d reason=\"this broker does "
                    "not hold that term\"",
                    topic, partition, epoch);
}

static void sleep_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

/* The log's partition of the registry's incarnation of `topic`, syncing
 * the topic first if the log lags (not open, fewer partitions, or an
 * earlier incarnation of a re-created topic); NULL if the registry does not
 * have it (yet).  own_mu held. */
static ks_partition_t *open_partition(ks_broker_t *b, const char *topic, int32_t partition)
{
        ks_str_t t = { topic, (int32_t)strlen(topic) };
        ks_topic_t want;
        ks_uuid_t have_id;
        int32_t have_parts = 0;
        if (!ks_meta_topic_get(b->meta, t, &want) || partition >= want.partitions)
                return NULL;
        if (!ks_log_topic_info(b->log, topic, &have_id, &have_parts) || !ks_uuid_eq(&have_id, &want.id) ||
            partition >= have_parts)
                ks_topic_sync_one(b->topics, topic);
        return ks_log_partition(b->log, t, partition);
}

/* Makes the log serve (topic, partition) at `epoch`, unless it already
 * does; `attempts` reloads while the cluster module still says it is ours
 * at that epoch.  own_mu held. */
static void take(ks_broker_t *b, const char *topic, int32_t partition, int32_t epoch, int attempts)
{
        ks_partition_t *p = open_partition(b, topic, partition);
        if (!p) {
                ks_log_info("partition_take_deferred", "topic=%s partition=%d leader_epoch=%d reason=\"topic not "
                            "open here yet\"",
                            topic, partition, epoch);
                return;
        }
        int32_t serving_epoch;
        if (ks_partition_serving(p, &serving_epoch)) {
                if (serving_epoch == epoch) {
                        ks_partition_release(p);
                        return;
                }
                /* Still serving an earlier term: nothing of it can commit
                 * any more (fenced); drop it before the new one. */
                ks_partition_give_up_ownership(p, KS_GIVE_UP_LOST, 0);
        }
        ks_err_t err = 0;
        for (int i = 0; i < attempts; i++) {
                int32_t e = -1;
                if (!ks_cluster_owns_partition(cluster_of(b), topic, partition, &e) || e != epoch) {
                        err = 0; /* not ours at this epoch any more: nothing to do */
                        break;
                }
                err = ks_partition_take_ownership(p, epoch);
                if (!err)
                        break;
                if (i + 1 < attempts)
                        sleep_ms(TAKE_RETRY_MS);
        }
        if (err)
                ks_log_warn("partition_take_failed", "topic=%s partition=%d leader_epoch=%d err=%s "
                            "action=retry_in_%dms",
                            topic, partition, epoch, ks_err_name(err), KS_TOPIC_SYNC_PERIOD_MS);
        ks_partition_release(p);
}

void ks_broker_partition_acquired(void *opaque, const char *topic, int32_t partition, int32_t epoch)
{
        ks_broker_t *b = opaque;
        pthread_mutex_lock(&b->own_mu);
        take(b, topic, partition, epoch, TAKE_ATTEMPTS);
        pthread_mutex_unlock(&b->own_mu);
}

static void give_up(ks_broker_t *b, const char *topic, int32_t partition, ks_give_up_t why)
{
        pthread_mutex_lock(&b->own_mu);
        ks_partition_t *p = ks_log_partition(b->log, (ks_str_t){ topic, (int32_t)strlen(topic) }, partition);
        if (p) {
                ks_partition_give_up_ownership(p, why, why == KS_GIVE_UP_HAND_OVER ? RELEASE_FLUSH_TIMEOUT_MS : 0);
                ks_partition_release(p);
        }
        pthread_mutex_unlock(&b->own_mu);
}

void ks_broker_partition_release(void *opaque, const char *topic, int32_t partition)
{
        give_up(opaque, topic, partition, KS_GIVE_UP_HAND_OVER);
}

void ks_broker_partition_lost(void *opaque, const char *topic, int32_t partition, bool deleted)
{
        give_up(opaque, topic, partition, deleted ? KS_GIVE_UP_DELETED : KS_GIVE_UP_LOST);
}

/* Reconcile one open topic; own_mu held. */
static void reconcile_topic(ks_broker_t *b, ks_cluster_t *c, const char *topic)
{
        ks_uuid_t id;
        int32_t n = 0;
        if (!ks_log_topic_info(b->log, topic, &id, &n))
                return;
        for (int32_t i = 0; i < n; i++) {
                int32_t epoch;
                if (!ks_cluster_owns_partition(c, topic, i, &epoch))
                        continue;
                ks_partition_t *p = ks_log_partition(b->log, (ks_str_t){ topic, (int32_t)strlen(topic) }, i);
                if (!p)
                        continue;
                int32_t serving_epoch;
                bool ok = ks_partition_serving(p, &serving_epoch) && serving_epoch == epoch;
                ks_partition_release(p);
                if (!ok)
                        take(b, topic, i, epoch, 1);
        }
}

void ks_broker_reconcile(void *opaque, const char *topic)
{
        ks_broker_t *b = opaque;
        pthread_mutex_lock(&b->own_mu);
        ks_cluster_t *c = b->own_closed ? NULL : cluster_of(b);
        if (c && topic) {
                reconcile_topic(b, c, topic);
        } else if (c) {
                char(*names)[KS_TOPIC_NAME_MAX + 1] = NULL;
                int m = ks_log_topic_names(b->log, &names);
                for (int i = 0; i < m; i++)
                        reconcile_topic(b, c, names[i]);
                free(names);
        }
        pthread_mutex_unlock(&b->own_mu);
}

void ks_broker_ownership_close(ks_broker_t *b)
{
        pthread_mutex_lock(&b->own_mu);
        b->own_closed = true;
        pthread_mutex_unlock(&b->own_mu);
}

bool ks_broker_owns(ks_broker_t *b, ks_partition_t *p, ks_str_t topic, int32_t partition, int32_t *epoch)
{
        int32_t e = -1;
        bool serving = ks_partition_serving(p, &e);
        if (epoch)
                *epoch = e;
        ks_cluster_t *c = cluster_of(b);
        if (!serving || !c)
                return serving;
        /* The log may not have heard yet that ownership ended (a process
         * that was paused past its lease runs its queued requests before
         * the cluster thread runs the lost hook): the cluster module's
         * clock-based view decides. */
        char name[KS_TOPIC_NAME_MAX + 1];
        if (topic.len <= 0 || topic.len > KS_TOPIC_NAME_MAX)
                return false;
        memcpy(name, topic.ptr, (size_t)topic.len);
        name[topic.len] = '\0';
        int32_t owned_epoch = -1;
        return ks_cluster_owns_partition(c, name, partition, &owned_epoch) && owned_epoch == e;
}

ks_err_t ks_broker_leader_check(ks_broker_t *b, ks_partition_t *p, ks_str_t topic, int32_t partition,
                                int32_t current_leader_epoch, int32_t *epoch)
{
        int32_t e = -1;
        bool serving = ks_broker_owns(b, p, topic, partition, &e);
        if (epoch)
                *epoch = e;
        if (!serving)
                return KS_ERR_NOT_LEADER_OR_FOLLOWER;
        if (current_leader_epoch == -1 || current_leader_epoch == e)
                return 0;
        return current_leader_epoch > e ? KS_ERR_UNKNOWN_LEADER_EPOCH : KS_ERR_FENCED_LEADER_EPOCH;
}

int32_t ks_broker_epoch_at(ks_partition_t *p, int64_t offset)
{
        ks_epoch_entry_t hist[KS_EPOCH_HISTORY_MAX];
        int n = ks_partition_epoch_history(p, hist, KS_EPOCH_HISTORY_MAX);
        int32_t e = -1;
        for (int i = 0; i < n && hist[i].start_offset <= offset; i++)
                e = hist[i].epoch;
        return e;
}

void ks_broker_await_leaders(ks_broker_t *b, const char *topic, int64_t timeout_ms)
{
        ks_cluster_t *c = cluster_of(b);
        if (!c || timeout_ms <= 0)
                return;
        int64_t deadline = ks_clock_mono_ms(ks_clock_system()) + timeout_ms;
        for (;;) {
                ks_topic_t t;
                if (!ks_meta_topic_get(b->meta, (ks_str_t){ topic, (int32_t)strlen(topic) }, &t))
                        return; /* deleted meanwhile */
                int32_t missing = 0;
                for (int32_t i = 0; i < t.partitions; i++) {
                        int32_t epoch = -1;
                        if (ks_cluster_partition_leader(c, topic, i, &epoch) < 0 || epoch <= 0)
                                missing++;
                }
                if (missing == 0)
                        return;
                if (ks_clock_mono_ms(ks_clock_system()) >= deadline) {
                        ks_log_info("topic_leaders_pending", "topic=%s partitions_without_leader=%d waited_ms=%lld",
                                    topic, missing, (long long)timeout_ms);
                        return;
                }
                sleep_ms(AWAIT_POLL_MS);
        }
}
