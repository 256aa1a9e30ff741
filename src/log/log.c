/*
 * log.c — partitions, group commit to object storage, segment cache.
 *
 * Locks (take them in this order, never the other way round):
 *   topics_lock (rwlock)  the topic map
 *   p->lock               everything in a partition
 *   sched_lock            the flush heap
 *   cache_lock            the LRU list and its byte count
 * None is held across object-store or metadata-store I/O.
 *
 * Threads:
 *   I/O threads      append, read, watch (short critical sections)
 *   "ks-flush"       the scheduler: pops partitions whose flush is due and
 *                    hands their sealed chunk to a storage worker
 *   "ks-store-N"     storage workers: build and upload segments, commit them
 *                    in the metadata store, load segments for cold reads
 *
 * Memory: a segdata_t holds a run of batches (the active chunk, the chunk
 * being flushed, or a durable segment in the cache).  It is reference
 * counted: the partition's manifest slot holds one reference while cached,
 * every read handed to a fetch response holds one until the response is
 * written.
 */
#include "log/log.h"
#include "log/producers.h"
#include "metrics/metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net/workq.h"
#include "storage/segment.h"
#include "util/clock.h"
#include "util/log.h"

#define INDEX_INTERVAL_RECORDS 4096
#define MAX_RETRY_BACKOFF_MS 5000

/* One batch inside a segdata. */
typedef struct batchent {
        int64_t base, last;
        int64_t max_ts;
        size_t pos;
        uint32_t size;
        int16_t attributes;
} batchent_t;

typedef struct segdata {
        int refs; /* atomic */
        int64_t base, next; /* [base, next) */
        int32_t epoch;      /* leader epoch it is written at (object key, batches) */
        uint8_t *buf;       /* the batches: malloc'ed, or inside `alloc` */
        uint8_t *alloc;     /* loaded segments: the object as read (NULL: buf is the allocation) */
        size_t len, cap;
        batchent_t *b;
        int nb, bcap;
        int32_t records;
        int64_t max_ts, max_ts_offset;
        int64_t first_append_ms; /* monotonic */

        struct segdata *next_sealed; /* queue of sealed chunks (partition lock) */

        /* Not yet committed: the memory it holds counts in *unflushed (the
         * log's produce-buffer total) until it commits or goes away. */
        int64_t *unflushed;
        int64_t accounted;

        /* Cache linkage (cache_lock). */
        struct segdata *lru_prev, *lru_next;
        bool in_lru;
        ks_partition_t *owner;
} segdata_t;

struct ks_segref {
        segdata_t d;
};

typedef struct seg {
        ks_seg_meta_t m;
        segdata_t *data; /* cached body, or NULL */
} seg_t;

typedef struct produce_waiter {
        struct produce_waiter *next;
        int64_t threshold; /* durable once high watermark >= threshold */
        ks_loop_t *loop;
        ks_produce_done_fn *done;
        void *opaque;
        ks_err_t err;
} produce_waiter_t;

struct ks_partition {
        ks_log_t *log;
        int refs; /* atomic */
        char topic[KS_TOPIC_NAME_MAX + 1];
        ks_uuid_t topic_id;
        int32_t index;

        pthread_mutex_t lock;
        pthread_cond_t idle_cond; /* signalled when an upload finishes */
        int64_t hwm;
        int64_t next;
        int64_t flush_bytes; /* flush target: min(segment_bytes, the topic's segment.bytes) */
        int32_t leader_epoch; /* epoch new records are written at (0 until ownership says otherwise) */
        ks_epoch_entry_t *history; /* leader-epoch history as last loaded (malloc'ed; nhistory >= 1) */
        int nhistory;
        ks_producers_t producers; /* idempotent producers: checked and updated at append */
        int64_t retention_ms;    /* -1: unlimited */
        int64_t retention_bytes; /* -1: unlimited */
        seg_t *segs;
        int nsegs, segcap;
        segdata_t *active;   /* accepting appends */
        segdata_t *flushing; /* sealed, being uploaded (one at a time) */
        segdata_t *sealed_head, *sealed_tail; /* full chunks waiting for their upload, in offset order */
        size_t sealed_bytes;
        bool uploading;
        bool reading_ahead; /* a readahead_job runs for it */
        int failures;
        bool storage_failing;
        bool dropped;
        bool serving; /* this broker owns it: appends and reads allowed */
        produce_waiter_t *pwait_head, *pwait_tail;
        ks_fetch_waiter_t *fwait;

        /* Scheduler (sched_lock). */
        int heap_index;
        int64_t flush_at;
};

typedef struct topic_entry {
        char name[KS_TOPIC_NAME_MAX + 1];
        ks_uuid_t id;
        ks_partition_t **parts;
        int nparts;
} topic_entry_t;

struct ks_log {
        ks_log_config_t cfg;
        char ns[128];
        ks_objstore_t *store;
        ks_meta_t *meta;
        ks_workq_t *workers;

        pthread_rwlock_t topics_lock;
        topic_entry_t **topics;
        int ntopics, tcap;

        pthread_mutex_t sched_lock;
        pthread_cond_t sched_cond;
        ks_partition_t **heap;
        int heap_len, heap_cap;
        bool stopping;
        pthread_t sched_thread;
        int64_t next_retention_ms;  /* sched_lock */
        bool retention_running;     /* sched_lock */

        pthread_mutex_t cache_lock;
        segdata_t *lru_head, *lru_tail; /* head = most recently used */
        size_t cache_used;

        /* Storage health (atomics): flushes that failed in a row, across
         * every partition, and the broker's last probe of the stores.
         * Degraded (STORAGE_DEGRADED_STREAK failures in a row, or the probe
         * failing): new appends are refused at once with a retriable error
         * instead of waiting out their timeout. */
        int fail_streak;
        bool probe_down;
        bool degraded_logged;

        /* Bytes held by chunks not yet committed (atomic; segdata_account). */
        int64_t unflushed;
};

#define STORAGE_DEGRADED_STREAK 3

static void partition_ref(ks_partition_t *p);

static bool storage_degraded(ks_log_t *log)
{
        return __atomic_load_n(&log->probe_down, __ATOMIC_RELAXED) ||
               __atomic_load_n(&log->fail_streak, __ATOMIC_RELAXED) >= STORAGE_DEGRADED_STREAK;
}

/* Logs a change of the storage verdict (once per change). */
static void storage_health_log(ks_log_t *log)
{
        bool degraded = storage_degraded(log);
        bool was = __atomic_exchange_n(&log->degraded_logged, degraded, __ATOMIC_RELAXED);
        if (degraded && !was)
                ks_log_warn("storage_degraded", "failed_flushes_in_a_row=%d probe_down=%d action=refusing_produce",
                            __atomic_load_n(&log->fail_streak, __ATOMIC_RELAXED),
                            (int)__atomic_load_n(&log->probe_down, __ATOMIC_RELAXED));
        else if (!degraded && was)
                ks_log_info("storage_recovered", "action=accepting_produce");
}

void ks_log_set_storage_health(ks_log_t *log, bool ok)
{
        __atomic_store_n(&log->probe_down, !ok, __ATOMIC_RELAXED);
        if (ok)
                __atomic_store_n(&log->fail_streak, 0, __ATOMIC_RELAXED);
        storage_health_log(log);
}

int64_t ks_log_unflushed_bytes(ks_log_t *log)
{
        return __atomic_load_n(&log->unflushed, __ATOMIC_RELAXED);
}

static int64_t now_ms(void)
{
        return ks_clock_mono_ms(ks_clock_system());
}

/* ------------------------------------------------------------------------ */
/* segdata                                                                   */

/* Adds `delta` bytes to the produce-buffer total d counts in, if any. */
static void segdata_account(segdata_t *d, int64_t delta)
{
        if (!d->unflushed || delta == 0)
                return;
        __atomic_add_fetch(d->unflushed, delta, __ATOMIC_RELAXED);
        ks_metric_add(ks_std_metrics.produce_buffer_bytes, 0, delta);
        d->accounted += delta;
}

/* d committed (or dropped): its memory leaves the produce-buffer total. */
static void segdata_unaccount(segdata_t *d)
{
        segdata_account(d, -d->accounted);
        d->unflushed = NULL;
}

static segdata_t *segdata_new(int64_t base)
{
        segdata_t *d = calloc(1, sizeof(*d));
        if (!d)
                return NULL;
        d->refs = 1;
        d->base = base;
        d->next = base;
        d->max_ts = -1;
        d->max_ts_offset = -1;
        return d;
}

/* A chunk for appends: counted in the log's produce-buffer total. */
static segdata_t *chunk_new(ks_log_t *log, int64_t base)
{
        segdata_t *d = segdata_new(base);
        if (d)
                d->unflushed = &log->unflushed;
        return d;
}

static void segdata_ref(segdata_t *d)
{
        __atomic_add_fetch(&d->refs, 1, __ATOMIC_RELAXED);
}

static void segdata_unref(segdata_t *d)
{
        if (d && __atomic_sub_fetch(&d->refs, 1, __ATOMIC_ACQ_REL) == 0) {
                segdata_unaccount(d);
                free(d->alloc ? d->alloc : d->buf);
                free(d->b);
                free(d);
        }
}

void ks_segref_release(ks_segref_t *ref)
{
        segdata_unref((segdata_t *)ref);
}

static int segdata_reserve(segdata_t *d, size_t more)
{
        if (d->len + more > d->cap) {
                size_t cap = d->cap ? d->cap : 64 * 1024;
                while (cap < d->len + more)
                        cap *= 2;
                uint8_t *nb = realloc(d->buf, cap);
                if (!nb)
                        return -1;
                segdata_account(d, (int64_t)(cap - d->cap));
                d->buf = nb;
                d->cap = cap;
        }
        if (d->nb == d->bcap) {
                int cap = d->bcap ? d->bcap * 2 : 64;
                batchent_t *nb = realloc(d->b, (size_t)cap * sizeof(*nb));
                if (!nb)
                        return -1;
                segdata_account(d, (int64_t)(cap - d->bcap) * (int64_t)sizeof(*nb));
                d->b = nb;
                d->bcap = cap;
        }
        return 0;
}

/* Records a batch that is already at d->buf + pos (base offset patched). */
static void segdata_note_batch(segdata_t *d, const ks_batch_info_t *bi, int64_t base, size_t pos)
{
        batchent_t *e = &d->b[d->nb++];
        e->base = base;
        e->last = base + bi->last_offset_delta;
        e->max_ts = bi->max_timestamp;
        e->pos = pos;
        e->size = (uint32_t)bi->size;
        e->attributes = bi->attributes;
        d->records += bi->records_count;
        if (bi->max_timestamp > d->max_ts) {
                d->max_ts = bi->max_timestamp;
                d->max_ts_offset = e->last;
        }
        d->next = e->last + 1;
}

/* Index of the batch holding `offset` (or the first after it). */
static int segdata_find(const segdata_t *d, int64_t offset)
{
        int lo = 0, hi = d->nb;
        while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (d->b[mid].last < offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

/* Builds a segdata over a verified segment body (cold read): the batches
 * stay where they were read, inside ob's buffer, which the segdata takes
 * over (ob is emptied, also on failure). */
static ks_err_t segdata_from_body(ks_objbuf_t *ob, uint8_t *body, size_t len, int64_t base, segdata_t **out)
{
        uint8_t *alloc = ob->data;
        *ob = (ks_objbuf_t){ 0 };
        segdata_t *d = segdata_new(base);
        if (!d)
                return KS_ERR__NOMEM;
        size_t pos = 0;
        while (pos < len) {
                ks_batch_info_t bi;
                if (ks_batch_header_parse(body + pos, len - pos, &bi) != 0 || bi.size > len - pos) {
                        segdata_unref(d);
                        free(alloc);
                        return KS_ERR__CORRUPT;
                }
                if (segdata_reserve(d, 0) != 0) {
                        segdata_unref(d);
                        free(alloc);
                        return KS_ERR__NOMEM;
                }
                segdata_note_batch(d, &bi, bi.base_offset, pos);
                pos += bi.size;
        }
        d->alloc = alloc;
        d->buf = body;
        d->len = d->cap = len;
        *out = d;
        return 0;
}

/* ------------------------------------------------------------------------ */
/* Cache                                                                     */

static size_t segdata_cost(const segdata_t *d)
{
        return d->cap + (size_t)d->bcap * sizeof(batchent_t) + sizeof(*d);
}

static void lru_unlink_locked(ks_log_t *log, segdata_t *d)
{
        if (d->lru_prev)
                d->lru_prev->lru_next = d->lru_next;
        else
                log->lru_head = d->lru_next;
        if (d->lru_next)
                d->lru_next->lru_prev = d->lru_prev;
        else
                log->lru_tail = d->lru_prev;
        d->lru_prev = d->lru_next = NULL;
        d->in_lru = false;
        log->cache_used -= segdata_cost(d);
        ks_metric_set(ks_std_metrics.cache_bytes, 0, (int64_t)log->cache_used);
}

static void lru_push_locked(ks_log_t *log, segdata_t *d)
{
        d->lru_prev = NULL;
        d->lru_next = log->lru_head;
        if (log->lru_head)
                log->lru_head->lru_prev = d;
        log->lru_head = d;
        if (!log->lru_tail)
                log->lru_tail = d;
        d->in_lru = true;
        log->cache_used += segdata_cost(d);
        ks_metric_set(ks_std_metrics.cache_bytes, 0, (int64_t)log->cache_used);
}

/* Marks d recently used (caller holds d's partition lock). */
static void cache_touch(ks_log_t *log, segdata_t *d)
{
        pthread_mutex_lock(&log->cache_lock);
        if (d->in_lru && log->lru_head != d) {
                lru_unlink_locked(log, d);
                lru_push_locked(log, d);
        }
        pthread_mutex_unlock(&log->cache_lock);
}

/* Evicts least recently used segments until the cache fits its budget.
 * Call with no partition lock held. */
static void cache_evict(ks_log_t *log)
{
        for (;;) {
                pthread_mutex_lock(&log->cache_lock);
                segdata_t *victim = NULL;
                ks_partition_t *p = NULL;
                /* The most recently used segment always stays, so that a
                 * tiny budget still lets a reader use what it just loaded. */
                if (log->cache_used > (size_t)log->cfg.cache_bytes && log->lru_tail &&
                    log->lru_tail != log->lru_head) {
                        victim = log->lru_tail;
                        lru_unlink_locked(log, victim);
                        p = victim->owner;
                        partition_ref(p); /* keeps p alive once the cache lock is released */
                }
                pthread_mutex_unlock(&log->cache_lock);
                if (!victim)
                        return;
                pthread_mutex_lock(&p->lock);
                for (int i = 0; i < p->nsegs; i++) {
                        if (p->segs[i].data == victim) {
                                p->segs[i].data = NULL;
                                segdata_unref(victim); /* the slot's reference */
                                break;
                        }
                }
                pthread_mutex_unlock(&p->lock);
                ks_partition_release(p);
        }
}

/* Puts d, just stored in a manifest slot of its owner, in the LRU.  The
 * caller holds the owner's lock; it calls cache_evict() after releasing it. */
static void cache_insert_locked(ks_log_t *log, segdata_t *d)
{
        pthread_mutex_lock(&log->cache_lock);
        if (!d->in_lru)
                lru_push_locked(log, d);
        pthread_mutex_unlock(&log->cache_lock);
}

static void cache_forget_locked_partition(ks_log_t *log, ks_partition_t *p)
{
        /* Caller holds p->lock. */
        for (int i = 0; i < p->nsegs; i++) {
                segdata_t *d = p->segs[i].data;
                if (!d)
                        continue;
                pthread_mutex_lock(&log->cache_lock);
                if (d->in_lru)
                        lru_unlink_locked(log, d);
                pthread_mutex_unlock(&log->cache_lock);
                p->segs[i].data = NULL;
                segdata_unref(d);
        }
}

/* ------------------------------------------------------------------------ */
/* Partitions                                                                */

static void partition_ref(ks_partition_t *p)
{
        __atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
}

/* Moves the active chunk to the end of the sealed queue (p->lock held). */
static void seal_active_locked(ks_partition_t *p)
{
        segdata_t *d = p->active;
        p->active = NULL;
        if (p->sealed_tail)
                p->sealed_tail->next_sealed = d;
        else
                p->sealed_head = d;
        p->sealed_tail = d;
        p->sealed_bytes += d->len;
}

/* Releases every sealed chunk (their offsets were never acknowledged). */
static void drop_sealed(ks_partition_t *p)
{
        while (p->sealed_head) {
                segdata_t *d = p->sealed_head;
                p->sealed_head = d->next_sealed;
                segdata_unref(d);
        }
        p->sealed_tail = NULL;
        p->sealed_bytes = 0;
}

static void partition_free(ks_partition_t *p)
{
        for (int i = 0; i < p->nsegs; i++)
                segdata_unref(p->segs[i].data);
        free(p->segs);
        free(p->history);
        ks_producers_clear(&p->producers);
        segdata_unref(p->active);
        segdata_unref(p->flushing);
        drop_sealed(p);
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->idle_cond);
        free(p);
}

void ks_partition_release(ks_partition_t *p)
{
        if (p && __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0)
                partition_free(p);
}

static int64_t log_start_locked(const ks_partition_t *p)
{
        return p->nsegs > 0 ? p->segs[0].m.base_offset : p->hwm;
}

void ks_partition_offsets(ks_partition_t *p, ks_partition_offsets_t *out)
{
        pthread_mutex_lock(&p->lock);
        out->log_start = log_start_locked(p);
        out->high_watermark = p->hwm;
        out->next_offset = p->next;
        pthread_mutex_unlock(&p->lock);
}

/* A partition's flush target: the log's object size, capped by the topic's
 * segment.bytes. */
static int64_t flush_target(const ks_log_t *log, const ks_topic_t *t)
{
        return t->segment_bytes > 0 && t->segment_bytes < log->cfg.segment_bytes ? t->segment_bytes
                                                                                 : log->cfg.segment_bytes;
}

static void producers_rebuild(ks_partition_t *p, const ks_partition_meta_t *pm);

/* Replaces p's epoch history with the loaded one; p->lock held or p not
 * yet shared.  0, or -1 if memory ran out (p unchanged). */
static int history_set(ks_partition_t *p, const ks_partition_meta_t *pm)
{
        ks_epoch_entry_t *h = malloc((size_t)pm->nhistory * sizeof(*h));
        if (!h)
                return -1;
        memcpy(h, pm->history, (size_t)pm->nhistory * sizeof(*h));
        free(p->history);
        p->history = h;
        p->nhistory = pm->nhistory;
        return 0;
}

static ks_err_t partition_load(ks_log_t *log, const ks_topic_t *t, int32_t index, ks_partition_t **out)
{
        ks_partition_meta_t pm;
        ks_err_t err = ks_meta_partition_load(log->meta, t->name, index, &pm);
        if (err == KS_ERR__NOT_FOUND) {
                /* Counted by the topic's config, never written to: starts empty. */
                err = ks_meta_partition_init(log->meta, t->name, index);
                if (!err)
                        err = ks_meta_partition_load(log->meta, t->name, index, &pm);
        }
        if (err)
                return err;
        ks_partition_t *p = calloc(1, sizeof(*p));
        if (!p) {
                ks_partition_meta_free(&pm);
                return KS_ERR__NOMEM;
        }
        p->log = log;
        p->refs = 1;
        snprintf(p->topic, sizeof(p->topic), "%s", t->name);
        p->topic_id = t->id;
        p->index = index;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->idle_cond, NULL);
        p->hwm = p->next = pm.next_offset;
        p->serving = !log->cfg.owned_only;
        p->leader_epoch = pm.leader_epoch;
        producers_rebuild(p, &pm);
        if (history_set(p, &pm) != 0) {
                ks_partition_meta_free(&pm);
                partition_free(p);
                return KS_ERR__NOMEM;
        }
        p->flush_bytes = flush_target(log, t);
        p->retention_ms = t->retention_ms;
        p->retention_bytes = t->retention_bytes;
        p->heap_index = -1;
        p->segcap = pm.nsegs > 8 ? pm.nsegs : 8;
        p->segs = calloc((size_t)p->segcap, sizeof(*p->segs));
        if (!p->segs) {
                ks_partition_meta_free(&pm);
                partition_free(p);
                return KS_ERR__NOMEM;
        }
        for (int i = 0; i < pm.nsegs; i++)
                p->segs[i].m = pm.segs[i];
        p->nsegs = pm.nsegs;
        ks_partition_meta_free(&pm);
        *out = p;
        return 0;
}

/* ------------------------------------------------------------------------ */
/* Flush scheduler                                                           */

static void heap_swap(ks_log_t *log, int a, int b)
{
        ks_partition_t *t = log->heap[a];
        log->heap[a] = log->heap[b];
        log->heap[b] = t;
        log->heap[a]->heap_index = a;
        log->heap[b]->heap_index = b;
}

static void heap_fix(ks_log_t *log, int i)
{
        while (i > 0 && log->heap[(i - 1) / 2]->flush_at > log->heap[i]->flush_at) {
                heap_swap(log, i, (i - 1) / 2);
                i = (i - 1) / 2;
        }
        for (;;) {
                int l = 2 * i + 1, r = l + 1, m = i;
                if (l < log->heap_len && log->heap[l]->flush_at < log->heap[m]->flush_at)
                        m = l;
                if (r < log->heap_len && log->heap[r]->flush_at < log->heap[m]->flush_at)
                        m = r;
                if (m == i)
                        return;
                heap_swap(log, i, m);
                i = m;
        }
}

static void heap_remove(ks_log_t *log, ks_partition_t *p)
{
        int i = p->heap_index;
        if (i < 0)
                return;
        int last = log->heap_len - 1;
        if (i != last)
                heap_swap(log, i, last);
        log->heap_len--;
        p->heap_index = -1;
        if (i != last)
                heap_fix(log, i);
}

/* Asks for a flush of p no later than `at` (monotonic ms).  The heap holds
 * a partition reference while p is queued. */
static void schedule_flush(ks_log_t *log, ks_partition_t *p, int64_t at)
{
        pthread_mutex_lock(&log->sched_lock);
        if (p->heap_index >= 0) {
                if (at < p->flush_at) {
                        p->flush_at = at;
                        heap_fix(log, p->heap_index);
                        pthread_cond_signal(&log->sched_cond);
                }
        } else {
                if (log->heap_len == log->heap_cap) {
                        int cap = log->heap_cap ? log->heap_cap * 2 : 64;
                        ks_partition_t **h = realloc(log->heap, (size_t)cap * sizeof(*h));
                        if (!h) {
                                pthread_mutex_unlock(&log->sched_lock);
                                ks_log_error("flush_schedule_oom", "topic=%s partition=%d", p->topic, p->index);
                                return;
                        }
                        log->heap = h;
                        log->heap_cap = cap;
                }
                partition_ref(p);
                p->flush_at = at;
                p->heap_index = log->heap_len;
                log->heap[log->heap_len++] = p;
                heap_fix(log, p->heap_index);
                pthread_cond_signal(&log->sched_cond);
        }
        pthread_mutex_unlock(&log->sched_lock);
}

static void upload_job(void *arg);

/* p->uploading, counted in kafscale_flushes_in_flight (p->lock held). */
static void set_uploading_locked(ks_partition_t *p, bool on)
{
        if (p->uploading == on)
                return;
        p->uploading = on;
        ks_metric_add(ks_std_metrics.flushes_in_flight, 0, on ? 1 : -1);
}

/* Scheduler: the flush of p is due. */
static void flush_due(ks_log_t *log, ks_partition_t *p)
{
        pthread_mutex_lock(&p->lock);
        bool go = false;
        if (p->dropped) {
                /* nothing */
        } else if (p->uploading) {
                /* The completion reschedules. */
        } else if (p->flushing) {
                go = true; /* a retry */
        } else if (p->sealed_head) {
                p->flushing = p->sealed_head;
                p->sealed_head = p->flushing->next_sealed;
                if (!p->sealed_head)
                        p->sealed_tail = NULL;
                p->flushing->next_sealed = NULL;
                p->sealed_bytes -= p->flushing->len;
                go = true;
        } else if (p->active && p->active->nb > 0) {
                p->flushing = p->active;
                p->active = NULL;
                go = true;
        }
        if (go)
                set_uploading_locked(p, true);
        pthread_mutex_unlock(&p->lock);
        if (!go)
                return;
        partition_ref(p);
        if (ks_workq_submit(log->workers, upload_job, p) != 0) {
                pthread_mutex_lock(&p->lock);
                set_uploading_locked(p, false);
                pthread_mutex_unlock(&p->lock);
                ks_partition_release(p);
                ks_log_error("flush_submit_failed", "topic=%s partition=%d", p->topic, p->index);
        }
}

static void retention_job(void *arg)
{
        ks_log_t *log = arg;
        ks_log_enforce_retention(log);
        pthread_mutex_lock(&log->sched_lock);
        log->retention_running = false;
        pthread_mutex_unlock(&log->sched_lock);
}

/* Starts a retention pass on a storage worker when one is due (sched_lock
 * held).  Returns the time of the next pass, or INT64_MAX. */
static int64_t retention_tick_locked(ks_log_t *log, int64_t now)
{
        if (log->cfg.retention_check_ms <= 0 || log->stopping)
                return INT64_MAX;
        if (now >= log->next_retention_ms) {
                log->next_retention_ms = now + log->cfg.retention_check_ms;
                if (!log->retention_running && ks_workq_submit(log->workers, retention_job, log) == 0)
                        log->retention_running = true;
        }
        return log->next_retention_ms;
}

static void *sched_main(void *arg)
{
        ks_log_t *log = arg;
        pthread_mutex_lock(&log->sched_lock);
        log->next_retention_ms = now_ms() + log->cfg.retention_check_ms;
        for (;;) {
                int64_t now = now_ms();
                int64_t next_retention = retention_tick_locked(log, now);
                if (log->heap_len == 0 || log->heap[0]->flush_at > now) {
                        if (log->stopping && log->heap_len == 0)
                                break;
                }
                if (log->heap_len == 0 && next_retention == INT64_MAX) {
                        pthread_cond_wait(&log->sched_cond, &log->sched_lock);
                        continue;
                }
                ks_partition_t *p = log->heap_len > 0 ? log->heap[0] : NULL;
                int64_t due = p ? p->flush_at : INT64_MAX;
                if (next_retention < due)
                        due = next_retention;
                if (due > now && !(log->stopping && p)) {
                        struct timespec ts;
                        clock_gettime(CLOCK_MONOTONIC, &ts);
                        int64_t wait = due - now;
                        ts.tv_sec += wait / 1000;
                        ts.tv_nsec += (wait % 1000) * 1000000;
                        if (ts.tv_nsec >= 1000000000) {
                                ts.tv_sec++;
                                ts.tv_nsec -= 1000000000;
                        }
                        pthread_cond_timedwait(&log->sched_cond, &log->sched_lock, &ts);
                        continue;
                }
                if (!p || (p->flush_at > now_ms() && !log->stopping))
                        continue; /* the retention pass was due */
                heap_remove(log, p);
                pthread_mutex_unlock(&log->sched_lock);
                flush_due(log, p);
                ks_partition_release(p); /* the heap's reference */
                pthread_mutex_lock(&log->sched_lock);
        }
        pthread_mutex_unlock(&log->sched_lock);
        return NULL;
}

/* ------------------------------------------------------------------------ */
/* Upload                                                                    */

typedef struct post_done {
        ks_produce_done_fn *done;
        void *opaque;
        ks_err_t err;
} post_done_t;

static void produce_done_on_loop(ks_loop_t *loop, void *arg)
{
        (void)loop;
        produce_waiter_t *w = arg;
        w->done(w->opaque, w->err);
        free(w);
}

static void fetch_wake_on_loop(ks_loop_t *loop, void *arg)
{
        ks_fetch_waiter_t *w = arg;
        w->wake(loop, w->opaque);
}

/* Delivers detached waiter lists (no lock held). */
static void deliver(produce_waiter_t *pw, ks_err_t err, ks_fetch_waiter_t *fw)
{
        while (pw) {
                produce_waiter_t *next = pw->next;
                pw->err = err;
                if (ks_loop_post(pw->loop, produce_done_on_loop, pw) != 0) {
                        ks_log_error("produce_ack_lost", "reason=oom");
                        abort();
                }
                pw = next;
        }
        while (fw) {
                ks_fetch_waiter_t *next = fw->next;
                fw->next = NULL;
                if (ks_loop_post(fw->loop, fetch_wake_on_loop, fw) != 0) {
                        ks_log_error("fetch_wake_lost", "reason=oom");
                        abort();
                }
                fw = next;
        }
}

/* Detaches the produce waiters that are now durable (p->lock held). */
static produce_waiter_t *take_durable_waiters(ks_partition_t *p)
{
        produce_waiter_t *head = NULL, **tailp = &head;
        while (p->pwait_head && p->pwait_head->threshold <= p->hwm) {
                produce_waiter_t *w = p->pwait_head;
                p->pwait_head = w->next;
                w->next = NULL;
                *tailp = w;
                tailp = &w->next;
        }
        if (!p->pwait_head)
                p->pwait_tail = NULL;
        return head;
}

static ks_fetch_waiter_t *take_fetch_waiters(ks_partition_t *p)
{
        ks_fetch_waiter_t *w = p->fwait;
        p->fwait = NULL;
        for (ks_fetch_waiter_t *it = w; it; it = it->next)
                it->armed = false;
        return w;
}

/* Fails what is still buffered (never acknowledged) and the waiters of a
 * partition that stopped serving; p->lock held, no upload in progress. */
static void give_up_buffered_locked(ks_partition_t *p, produce_waiter_t **pw, ks_fetch_waiter_t **fw)
{
        segdata_unref(p->flushing);
        p->flushing = NULL;
        drop_sealed(p);
        segdata_unref(p->active);
        p->active = NULL;
        p->next = p->hwm;
        /* It may name offsets just dropped: rebuilt when ownership is
         * taken again. */
        ks_producers_clear(&p->producers);
        *pw = p->pwait_head;
        p->pwait_head = p->pwait_tail = NULL;
        *fw = take_fetch_waiters(p);
}

static ks_err_t put_segment(ks_log_t *log, ks_partition_t *p, segdata_t *d, ks_seg_meta_t *m)
{
        ks_segment_builder_t b;
        int64_t created = ks_clock_wall_ms(ks_clock_system());
        ks_segment_builder_init(&b, INDEX_INTERVAL_RECORDS, created);
        ks_err_t err = 0;
        for (int i = 0; i < d->nb && !err; i++)
                err = ks_segment_builder_add(&b, d->buf + d->b[i].pos, d->b[i].size);
        const struct iovec *biov;
        int biovcnt;
        const uint8_t *index;
        size_t index_len;
        if (!err)
                err = ks_segment_builder_finish(&b, &biov, &biovcnt, &index, &index_len);
        if (!err) {
                /* Header, the body in one piece, footer. */
                struct iovec iov[3] = {
                        biov[0],
                        { d->buf, d->len },
                        biov[biovcnt - 1],
                };
                char key[512];
                ks_segment_key_epoch(key, sizeof(key), log->ns, p->topic, p->index, d->base, d->epoch,
                                     KS_SEGMENT_EXT_KFS);
                err = ks_objstore_put(log->store, key, iov, 3);
                if (!err) {
                        struct iovec iiov = { (void *)index, index_len };
                        ks_segment_key_epoch(key, sizeof(key), log->ns, p->topic, p->index, d->base, d->epoch,
                                             KS_SEGMENT_EXT_INDEX);
                        err = ks_objstore_put(log->store, key, &iiov, 1);
                }
                if (!err) {
                        m->base_offset = d->base;
                        m->last_offset = d->next - 1;
                        m->size_bytes = (int64_t)b.segment_len;
                        m->index_size_bytes = (int64_t)index_len;
                        m->max_timestamp = d->max_ts;
                        m->max_timestamp_offset = d->max_ts_offset;
                        m->created_at_ms = created;
                        m->record_count = d->records;
                        m->leader_epoch = d->epoch;
                }
        }
        ks_segment_builder_destroy(&b);
        return err;
}

/* The SegmentInfo.producers of a chunk: per idempotent producer, its epoch
 * and last (at most five) batches in it.  malloc'ed into *out (NULL when
 * there are none); the count, or -1 if memory ran out. */
static int chunk_producers(const segdata_t *d, ks_seg_producer_t **out)
{
        *out = NULL;
        ks_seg_producer_t *v = NULL;
        int n = 0, cap = 0;
        for (int i = 0; i < d->nb; i++) {
                ks_batch_info_t bi;
                if (ks_batch_header_parse(d->buf + d->b[i].pos, d->b[i].size, &bi) != 0 || bi.producer_id < 0)
                        continue;
                ks_seg_producer_t *e = NULL;
                for (int j = n - 1; j >= 0 && !e; j--)
                        if (v[j].id == bi.producer_id)
                                e = &v[j];
                if (!e) {
                        if (n == cap) {
                                int nc = cap ? cap * 2 : 4;
                                ks_seg_producer_t *nv = realloc(v, (size_t)nc * sizeof(*nv));
                                if (!nv) {
                                        free(v);
                                        return -1;
                                }
                                v = nv;
                                cap = nc;
                        }
                        e = &v[n++];
                        memset(e, 0, sizeof(*e));
                        e->id = bi.producer_id;
                        e->epoch = bi.producer_epoch;
                }
                if (bi.producer_epoch != e->epoch) {
                        e->epoch = bi.producer_epoch; /* a newer epoch: its batches only */
                        e->nbatches = 0;
                }
                if (e->nbatches == KS_SEG_PRODUCER_BATCHES) {
                        memmove(&e->batches[0], &e->batches[1], (KS_SEG_PRODUCER_BATCHES - 1) * sizeof(e->batches[0]));
                        e->nbatches--;
                }
                e->batches[e->nbatches].first_seq = bi.base_sequence;
                e->batches[e->nbatches].last_seq = ks_pseq_last(bi.base_sequence, bi.records_count);
                e->batches[e->nbatches].first_offset = d->b[i].base;
                e->batches[e->nbatches].last_offset = d->b[i].last;
                e->nbatches++;
        }
        *out = v;
        return n;
}

/* Rebuilds p's producer state from the producers recorded with its
 * segments (oldest first); those of segments older than the producer
 * expiration are skipped.  p->lock held or p not shared. */
static void producers_rebuild(ks_partition_t *p, const ks_partition_meta_t *pm)
{
        ks_producers_clear(&p->producers);
        int64_t horizon = ks_clock_wall_ms(ks_clock_system()) - KS_PRODUCER_EXPIRATION_MS;
        for (int i = 0; i < pm->nproducers; i++) {
                const ks_seg_producer_t *e = &pm->producers[i];
                if (e->seg_created_ms < horizon)
                        continue;
                ks_producer_t *st = ks_producers_upsert(&p->producers, e->id);
                if (!st)
                        break; /* out of memory: duplicates of these producers go undetected */
                for (int j = 0; j < e->nbatches; j++) {
                        ks_pbatch_t b = { e->batches[j].first_seq, e->batches[j].last_seq, e->batches[j].first_offset,
                                          e->batches[j].last_offset };
                        ks_producer_apply(st, e->epoch, &b, e->seg_created_ms);
                }
        }
}

static void upload_job(void *arg)
{
        ks_partition_t *p = arg;
        ks_log_t *log = p->log;
        segdata_t *d = p->flushing; /* stable while uploading */
        int64_t t0 = now_ms();
        ks_seg_meta_t m;
        memset(&m, 0, sizeof(m));
        ks_err_t err = put_segment(log, p, d, &m);
        ks_seg_producer_t *prods = NULL;
        if (!err) {
                int n = chunk_producers(d, &prods);
                if (n < 0)
                        err = KS_ERR__NOMEM;
                m.producers = prods;
                m.nproducers = n > 0 ? n : 0;
        }
        if (!err)
        {
                ks_kv_cmp_t fence;
                char fence_key[400];
                bool fenced = log->cfg.fence != NULL;
                if (fenced)
                        log->cfg.fence(log->cfg.fence_opaque, p->topic, p->index, d->epoch, fence_key,
                                       sizeof(fence_key), &fence);
                err = ks_meta_partition_commit(log->meta, p->topic, p->index, d->base, &m,
                                               fenced ? &fence : NULL);
        }
        free(prods);
        m.producers = NULL; /* not kept in the manifest */
        m.nproducers = 0;

        pthread_mutex_lock(&p->lock);
        produce_waiter_t *pw = NULL;
        ks_fetch_waiter_t *fw = NULL;
        ks_err_t pw_err = 0;
        int64_t next_flush = -1;
        if (!err) {
                if (p->nsegs == p->segcap) {
                        int cap = p->segcap * 2;
                        seg_t *ns = realloc(p->segs, (size_t)cap * sizeof(*ns));
                        if (!ns) {
                                ks_log_error("segment_manifest_oom", "topic=%s partition=%d", p->topic, p->index);
                                abort(); /* committed but cannot be tracked: restart recovers it */
                        }
                        p->segs = ns;
                        p->segcap = cap;
                }
                /* Invariant: segments are committed in offset order. */
                if (d->base != p->hwm) {
                        ks_log_error("invariant_broken", "what=segment_not_at_high_watermark topic=%s partition=%d "
                                                         "base=%lld hwm=%lld",
                                     p->topic, p->index, (long long)d->base, (long long)p->hwm);
                        abort();
                }
                p->segs[p->nsegs].m = m;
                p->segs[p->nsegs].data = d; /* the flushing reference moves here */
                p->nsegs++;
                d->owner = p;
                segdata_unaccount(d); /* from here on the cache's */
                cache_insert_locked(log, d);
                p->hwm = d->next;
                p->flushing = NULL;
                p->failures = 0;
                __atomic_store_n(&log->fail_streak, 0, __ATOMIC_RELAXED);
                if (p->storage_failing)
                        ks_log_info("storage_recovered", "topic=%s partition=%d", p->topic, p->index);
                p->storage_failing = false;
                pw = take_durable_waiters(p);
                fw = take_fetch_waiters(p);
                if (p->sealed_head) {
                        next_flush = 0; /* full chunks are waiting */
                } else if (p->active && p->active->nb > 0) {
                        next_flush = p->active->first_append_ms + log->cfg.flush_interval_ms;
                        if ((int64_t)p->active->len >= p->flush_bytes)
                                next_flush = 0;
                }
        } else if (err == KS_ERR__CONFLICT) {
                /* Someone else moved the committed end offset: this broker
                 * no longer owns the partition.  Nothing in flight was
                 * acknowledged; fail it and forget it. */
                ks_log_error("partition_fenced", "topic=%s partition=%d expected_end=%lld", p->topic, p->index,
                             (long long)d->base);
                give_up_buffered_locked(p, &pw, &fw);
                pw_err = KS_ERR_NOT_LEADER_OR_FOLLOWER;
                p->serving = false; /* until ownership is taken again (state reloaded) */
        } else {
                p->failures++;
                p->storage_failing = true;
                __atomic_add_fetch(&log->fail_streak, 1, __ATOMIC_RELAXED);
                int64_t backoff = 50LL << (p->failures < 7 ? p->failures : 7);
                if (backoff > MAX_RETRY_BACKOFF_MS)
                        backoff = MAX_RETRY_BACKOFF_MS;
                backoff = backoff / 2 + rand() % (backoff / 2 + 1);
                next_flush = now_ms() + backoff;
                ks_log_warn("flush_failed", "topic=%s partition=%d base_offset=%lld attempt=%d err=%s retry_in_ms=%lld",
                            p->topic, p->index, (long long)d->base, p->failures, ks_err_name(err),
                            (long long)backoff);
        }
        set_uploading_locked(p, false);
        pthread_cond_broadcast(&p->idle_cond);
        pthread_mutex_unlock(&p->lock);

        if (!err) {
                ks_log_debug("segment_committed", "topic=%s partition=%d base=%lld next=%lld bytes=%lld ms=%lld",
                             p->topic, p->index, (long long)m.base_offset, (long long)(m.last_offset + 1),
                             (long long)m.size_bytes, (long long)(now_ms() - t0));
                cache_evict(log);
        }
        storage_health_log(log);
        int result = !err ? KS_METRICS_FLUSH_OK : err == KS_ERR__CONFLICT ? KS_METRICS_FLUSH_FENCED
                                                                         : KS_METRICS_FLUSH_ERROR;
        ks_metric_inc(ks_std_metrics.flushes, result);
        if (!err) {
                ks_metric_add(ks_std_metrics.flush_bytes, 0, (int64_t)m.size_bytes);
                ks_metric_observe(ks_std_metrics.flush_duration, 0, (double)(now_ms() - t0) / 1000.0);
        }
        deliver(pw, pw_err, fw);
        if (next_flush >= 0)
                schedule_flush(log, p, next_flush);
        ks_partition_release(p); /* the job's reference */
}

/* ------------------------------------------------------------------------ */
/* Produce                                                                   */

/* Checks the idempotent batches of one append (those with a producer id)
 * against p's producer state, as if appended at offsets from p->next on,
 * and records them if all pass.  0: append them; KS_ERR__EXISTS: the first
 * batch repeats one already appended (*dup), append nothing; otherwise the
 * Kafka error (INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER,
 * DUPLICATE_SEQUENCE_NUMBER for a repeat after other batches), nothing
 * appended and the state unchanged.  p->lock held. */
static ks_err_t producers_admit(ks_partition_t *p, const ks_batch_info_t *infos, int n, ks_pbatch_t *dup)
{
        int idem = 0;
        for (int i = 0; i < n; i++)
                idem += infos[i].producer_id >= 0;
        if (idem == 0)
                return 0;
        int64_t now = ks_clock_wall_ms(ks_clock_system());
        /* Entries for every producer first (creating one never moves an
         * entry created just before it out: it is the most recent), then
         * working copies, so a rejected append changes nothing. */
        for (int i = 0; i < n; i++) {
                if (infos[i].producer_id < 0)
                        continue;
                ks_producer_t *e = ks_producers_upsert(&p->producers, infos[i].producer_id);
                if (!e)
                        return KS_ERR__NOMEM;
                if (e->last_ms < now && e->epoch < 0)
                        e->last_ms = now;
        }
        ks_producer_t stackw[4];
        ks_producer_t *work = idem <= 4 ? stackw : malloc((size_t)idem * sizeof(*work));
        if (!work)
                return KS_ERR__NOMEM;
        int nwork = 0;
        ks_err_t err = 0;
        char msg[256];
        int64_t off = p->next;
        for (int i = 0; i < n && !err; i++) {
                const ks_batch_info_t *bi = &infos[i];
                int64_t first = off, last = off + bi->last_offset_delta;
                off = last + 1;
                if (bi->producer_id < 0)
                        continue;
                ks_producer_t *w = NULL;
                for (int j = 0; j < nwork && !w; j++)
                        if (work[j].id == bi->producer_id)
                                w = &work[j];
                if (!w) {
                        const ks_producer_t *cur = ks_producers_get(&p->producers, bi->producer_id);
                        if (!cur) {
                                /* Evicted by another producer of this very
                                 * append (the table was full of producers
                                 * active this millisecond): retriable. */
                                err = KS_ERR__NOMEM;
                                break;
                        }
                        w = &work[nwork++];
                        *w = *cur;
                }
                int32_t last_seq = ks_pseq_last(bi->base_sequence, bi->records_count);
                ks_pbatch_t d;
                err = ks_producer_check(w, bi->producer_epoch, bi->base_sequence, last_seq, &d, msg, sizeof(msg));
                if (err == KS_ERR__EXISTS) {
                        if (i == 0)
                                *dup = d;
                        else
                                err = KS_ERR_DUPLICATE_SEQUENCE_NUMBER;
                        ks_log_debug("produce_retry_recognised", "topic=%s partition=%d producer_id=%lld epoch=%d "
                                     "first_sequence=%d offset=%lld",
                                     p->topic, p->index, (long long)bi->producer_id, bi->producer_epoch,
                                     bi->base_sequence, (long long)d.first_offset);
                } else if (err) {
                        ks_log_debug("produce_sequence_rejected", "topic=%s partition=%d producer_id=%lld err=%s "
                                     "msg=\"%s\"",
                                     p->topic, p->index, (long long)bi->producer_id, ks_err_name(err), msg);
                } else {
                        ks_pbatch_t b = { bi->base_sequence, last_seq, first, last };
                        ks_producer_apply(w, bi->producer_epoch, &b, now);
                }
        }
        if (!err)
                for (int j = 0; j < nwork; j++)
                        *ks_producers_get(&p->producers, work[j].id) = work[j];
        if (work != stackw)
                free(work);
        return err;
}

/* Adds a produce waiter in threshold order (the list is ascending);
 * p->lock held. */
static void pwait_insert_locked(ks_partition_t *p, produce_waiter_t *w)
{
        produce_waiter_t **at = &p->pwait_head;
        while (*at && (*at)->threshold <= w->threshold)
                at = &(*at)->next;
        w->next = *at;
        *at = w;
        if (!w->next)
                p->pwait_tail = w;
}

ks_err_t ks_partition_append(ks_partition_t *p, uint8_t *buf, size_t len, const ks_batch_info_t *infos, int nbatches,
                             int64_t *base_offset, ks_loop_t *loop, ks_produce_done_fn *done, void *opaque)
{
        ks_log_t *log = p->log;
        produce_waiter_t *w = NULL;
        if (done) {
                w = calloc(1, sizeof(*w));
                if (!w)
                        return KS_ERR__NOMEM;
                w->loop = loop;
                w->done = done;
                w->opaque = opaque;
        }
        pthread_mutex_lock(&p->lock);
        ks_err_t err = 0;
        size_t buffered = (p->active ? p->active->len : 0) + (p->flushing ? p->flushing->len : 0) + p->sealed_bytes;
        if (p->dropped) {
                err = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
        } else if (!p->serving) {
                err = KS_ERR_NOT_LEADER_OR_FOLLOWER;
        } else if (p->storage_failing || storage_degraded(log)) {
                err = KS_ERR_KAFKA_STORAGE_ERROR;
        } else if ((int64_t)(buffered + len) > 4 * log->cfg.segment_bytes + (64 << 20)) {
                err = KS_ERR_KAFKA_STORAGE_ERROR;
        } else if (!p->active && !(p->active = chunk_new(log, p->next))) {
                err = KS_ERR__NOMEM;
        } else if (p->active->nb == 0) {
                p->active->epoch = p->leader_epoch;
        }
        ks_pbatch_t dup;
        if (!err)
                err = producers_admit(p, infos, nbatches, &dup);
        if (err == KS_ERR__EXISTS) {
                /* A retry of batches already appended: answered with their
                 * offsets once those are durable. */
                *base_offset = dup.first_offset;
                produce_waiter_t *now = NULL;
                if (w) {
                        w->threshold = dup.last_offset + 1;
                        if (w->threshold <= p->hwm)
                                now = w;
                        else
                                pwait_insert_locked(p, w);
                        w = NULL;
                }
                pthread_mutex_unlock(&p->lock);
                deliver(now, 0, NULL);
                return KS_ERR__EXISTS;
        }
        bool first = false;
        if (!err) {
                segdata_t *d = p->active;
                first = d->nb == 0;
                if (first)
                        d->first_append_ms = now_ms();
                *base_offset = p->next;
                for (int i = 0; i < nbatches && !err; i++) {
                        const ks_batch_info_t *bi = &infos[i];
                        if (segdata_reserve(d, bi->size) != 0) {
                                err = KS_ERR__NOMEM; /* batches before i stay: their offsets are taken */
                                break;
                        }
                        size_t pos = d->len;
                        memcpy(d->buf + pos, buf + bi->pos, bi->size);
                        ks_batch_set_base_offset(d->buf + pos, p->next);
                        ks_batch_set_leader_epoch(d->buf + pos, d->epoch); /* outside the CRC */
                        segdata_note_batch(d, bi, p->next, pos);
                        d->len += bi->size;
                        p->next += (int64_t)bi->last_offset_delta + 1;
                }
                if (!err && w) {
                        w->threshold = p->next;
                        if (p->pwait_tail)
                                p->pwait_tail->next = w;
                        else
                                p->pwait_head = w;
                        p->pwait_tail = w;
                        w = NULL;
                }
        }
        int64_t at = -1;
        if (!err && p->active) {
                if ((int64_t)p->active->len >= p->flush_bytes) {
                        /* Full: seal it now, so a segment never grows past
                         * the target while it waits for the scheduler or
                         * for an earlier upload. */
                        seal_active_locked(p);
                        at = 0;
                } else if (first) {
                        at = p->active->first_append_ms + log->cfg.flush_interval_ms;
                }
        }
        pthread_mutex_unlock(&p->lock);
        free(w);
        if (at >= 0)
                schedule_flush(log, p, at);
        return err;
}

/* ------------------------------------------------------------------------ */
/* Fetch                                                                     */

static int seg_find_locked(const ks_partition_t *p, int64_t offset)
{
        int lo = 0, hi = p->nsegs;
        while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (p->segs[mid].m.last_offset < offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo < p->nsegs ? lo : -1;
}

/* Whole batches of d from the one holding `offset`, within max_bytes but at
 * least one; out->ref is a new reference. */
static ks_err_t segdata_read(segdata_t *d, int64_t offset, size_t max_bytes, ks_read_t *out)
{
        if (offset < d->base || offset >= d->next)
                return KS_ERR__NOT_FOUND;
        int b = segdata_find(d, offset);
        if (b >= d->nb)
                return KS_ERR__NOT_FOUND;
        size_t start = d->b[b].pos;
        size_t total = d->b[b].size;
        int last = b;
        for (int j = b + 1; j < d->nb && total + d->b[j].size <= max_bytes; j++) {
                total += d->b[j].size;
                last = j;
        }
        out->next_offset = d->b[last].last + 1;
        segdata_ref(d);
        out->data = d->buf + start;
        out->len = total;
        out->ref = (ks_segref_t *)d;
        return 0;
}

ks_err_t ks_partition_read(ks_partition_t *p, int64_t offset, size_t max_bytes, ks_read_t *out)
{
        memset(out, 0, sizeof(*out));
        pthread_mutex_lock(&p->lock);
        if (p->dropped || !p->serving) {
                pthread_mutex_unlock(&p->lock);
                return p->dropped ? KS_ERR_UNKNOWN_TOPIC_OR_PARTITION : KS_ERR_NOT_LEADER_OR_FOLLOWER;
        }
        if (offset < log_start_locked(p) || offset > p->hwm) {
                pthread_mutex_unlock(&p->lock);
                return KS_ERR_OFFSET_OUT_OF_RANGE;
        }
        if (offset == p->hwm) {
                pthread_mutex_unlock(&p->lock);
                return 0;
        }
        int i = seg_find_locked(p, offset);
        segdata_t *d = i >= 0 ? p->segs[i].data : NULL;
        if (!d) {
                pthread_mutex_unlock(&p->lock);
                ks_metric_inc(ks_std_metrics.cache_misses, 0);
                return KS_ERR__NOT_FOUND;
        }
        segdata_ref(d);
        cache_touch(p->log, d);
        pthread_mutex_unlock(&p->lock);
        ks_metric_inc(ks_std_metrics.cache_hits, 0);

        ks_err_t err = segdata_read(d, offset, max_bytes, out);
        segdata_unref(d);
        return err;
}

ks_err_t ks_segref_read(ks_segref_t *ref, int64_t offset, size_t max_bytes, ks_read_t *out)
{
        memset(out, 0, sizeof(*out));
        return segdata_read((segdata_t *)ref, offset, max_bytes, out);
}

/* Reads segment `base` from the object store into the cache; *pin (may be
 * NULL) receives a reference to it that survives eviction.  BLOCKING. */
static ks_err_t load_segment(ks_partition_t *p, int64_t base, int32_t epoch, segdata_t **pin)
{
        ks_log_t *log = p->log;
        char key[512];
        ks_segment_key_epoch(key, sizeof(key), log->ns, p->topic, p->index, base, epoch, KS_SEGMENT_EXT_KFS);
        ks_objbuf_t ob = { 0 };
        ks_err_t err = ks_objstore_get(log->store, key, 0, -1, &ob);
        if (err) {
                ks_log_warn("segment_read_failed", "key=%s err=%s", key, ks_err_name(err));
                return err;
        }
        ks_segment_view_t v;
        err = ks_segment_parse(ob.data, ob.len, &v);
        if (err || v.header.base_offset != base) {
                ks_log_error("segment_corrupt", "key=%s reason=\"%s\" action=not_served", key,
                             err ? v.reason : "base offset does not match its key");
                ks_objbuf_free(&ob);
                return KS_ERR__CORRUPT;
        }
        segdata_t *d = NULL;
        err = segdata_from_body(&ob, (uint8_t *)v.body, v.body_len, base, &d);
        if (err)
                return err;
        if (pin) {
                segdata_ref(d);
                *pin = d;
        }
        pthread_mutex_lock(&p->lock);
        bool stored = false;
        for (int i = 0; i < p->nsegs; i++) {
                if (p->segs[i].m.base_offset == base) {
                        if (!p->segs[i].data && d->next == p->segs[i].m.last_offset + 1) {
                                p->segs[i].data = d;
                                d->owner = p;
                                cache_insert_locked(log, d);
                                stored = true;
                        }
                        break;
                }
        }
        pthread_mutex_unlock(&p->lock);
        if (stored)
                cache_evict(log);
        else
                segdata_unref(d);
        return 0;
}

/* Reads, through its index, a window of a large segment: whole batches
 * from the one holding `offset`, each CRC-verified.  The window is pinned
 * for the caller only; the cache keeps whole segments.  BLOCKING. */
static ks_err_t load_range(ks_partition_t *p, const ks_seg_meta_t *m, int64_t offset, segdata_t **pin)
{
        ks_log_t *log = p->log;
        int64_t window = log->cfg.ranged_read_window > 0 ? log->cfg.ranged_read_window : (1 << 20);
        char key[512];
        ks_segment_key_epoch(key, sizeof(key), log->ns, p->topic, p->index, m->base_offset, m->leader_epoch,
                             KS_SEGMENT_EXT_INDEX);
        ks_objbuf_t ib = { 0 };
        ks_err_t err = ks_objstore_get(log->store, key, 0, -1, &ib);
        if (err)
                return err;
        ks_index_view_t iv;
        int64_t at_offset;
        int32_t pos32;
        if (ks_index_parse(ib.data, ib.len, &iv) != 0 || ks_index_lookup(&iv, offset, &at_offset, &pos32) != 0) {
                ks_log_error("segment_corrupt", "key=%s reason=\"index unusable\" action=not_served", key);
                ks_objbuf_free(&ib);
                return KS_ERR__CORRUPT;
        }
        ks_objbuf_free(&ib);
        ks_segment_key_epoch(key, sizeof(key), log->ns, p->topic, p->index, m->base_offset, m->leader_epoch,
                             KS_SEGMENT_EXT_KFS);
        int64_t pos = pos32, body_end = m->size_bytes - KS_SEGMENT_FOOTER_SIZE;
        for (;;) {
                int64_t want = body_end - pos < window ? body_end - pos : window;
                if (want < KS_BATCH_HEADER_SIZE)
                        break;
                ks_objbuf_t ob = { 0 };
                err = ks_objstore_get(log->store, key, pos, want, &ob);
                if (err)
                        return err;
                size_t used = 0;
                int64_t first = -1, next = -1;
                bool holds = false;
                while (used < ob.len) {
                        ks_batch_info_t bi;
                        if (ks_batch_header_parse(ob.data + used, ob.len - used, &bi) != 0)
                                break; /* a batch cut by the window end */
                        if (bi.size > ob.len - used) {
                                if (used == 0 && (int64_t)bi.size > want) {
                                        window = (int64_t)bi.size; /* one batch larger than the window */
                                }
                                break;
                        }
                        if (ks_batch_crc_compute(ob.data + used, bi.size) != bi.crc) {
                                ks_log_error("segment_corrupt", "key=%s reason=\"batch CRC mismatch at offset %lld\" "
                                                                "action=not_served",
                                             key, (long long)bi.base_offset);
                                ks_objbuf_free(&ob);
                                return KS_ERR__CORRUPT;
                        }
                        if (first < 0)
                                first = bi.base_offset;
                        next = bi.base_offset + bi.last_offset_delta + 1;
                        if (bi.base_offset <= offset && offset < next)
                                holds = true;
                        used += bi.size;
                }
                if (used == 0) {
                        ks_objbuf_free(&ob);
                        if ((int64_t)window > want && want < body_end - pos)
                                continue; /* retry with the larger window */
                        return KS_ERR__CORRUPT;
                }
                if (holds || next > offset) {
                        segdata_t *d = NULL;
                        err = segdata_from_body(&ob, ob.data, used, first, &d);
                        if (err)
                                return err;
                        *pin = d;
                        return 0;
                }
                ks_objbuf_free(&ob);
                pos += (int64_t)used; /* the index entry was further back: read on */
        }
        return KS_ERR__NOT_FOUND;
}

/* Segments read ahead of a cold reader, on the storage threads, so that
 * the read that asked for them does not wait. */
typedef struct readahead {
        ks_partition_t *p; /* referenced */
        int n;
        int64_t bases[16];
        int32_t epochs[16];
} readahead_t;

static void readahead_job(void *arg)
{
        readahead_t *ra = arg;
        for (int k = 0; k < ra->n; k++)
                if (load_segment(ra->p, ra->bases[k], ra->epochs[k], NULL) != 0)
                        break;
        pthread_mutex_lock(&ra->p->lock);
        ra->p->reading_ahead = false;
        pthread_mutex_unlock(&ra->p->lock);
        ks_partition_release(ra->p);
        free(ra);
}

/* Queues the read-ahead of segments bases[0..n) (one job per partition at
 * a time; more is skipped: the next read asks again). */
static void readahead_start(ks_partition_t *p, const int64_t *bases, const int32_t *epochs, int n)
{
        if (n <= 0)
                return;
        readahead_t *ra = malloc(sizeof(*ra));
        if (!ra)
                return;
        pthread_mutex_lock(&p->lock);
        bool busy = p->reading_ahead || p->dropped;
        if (!busy)
                p->reading_ahead = true;
        pthread_mutex_unlock(&p->lock);
        if (busy) {
                free(ra);
                return;
        }
        ra->p = p;
        ra->n = n < 16 ? n : 16;
        memcpy(ra->bases, bases, (size_t)ra->n * sizeof(*bases));
        memcpy(ra->epochs, epochs, (size_t)ra->n * sizeof(*epochs));
        partition_ref(p);
        if (ks_workq_submit(p->log->workers, readahead_job, ra) != 0) {
                pthread_mutex_lock(&p->lock);
                p->reading_ahead = false;
                pthread_mutex_unlock(&p->lock);
                ks_partition_release(p);
                free(ra);
        }
}

ks_err_t ks_partition_load_for_read(ks_partition_t *p, int64_t offset, ks_segref_t **pin)
{
        /* Large segments are read in windows through their index. */
        int64_t ranged_min = p->log->cfg.ranged_read_min_bytes > 0 ? p->log->cfg.ranged_read_min_bytes : (8 << 20);
        ks_seg_meta_t m;
        bool ranged = false;
        pthread_mutex_lock(&p->lock);
        int si = seg_find_locked(p, offset);
        if (si >= 0 && !p->segs[si].data && pin && p->segs[si].m.size_bytes > ranged_min &&
            p->segs[si].m.index_size_bytes > 0) {
                m = p->segs[si].m;
                ranged = true;
        }
        pthread_mutex_unlock(&p->lock);
        if (ranged) {
                segdata_t *d = NULL;
                ks_err_t err = load_range(p, &m, offset, &d);
                *pin = (ks_segref_t *)d;
                return err ? err : (d ? 0 : KS_ERR__NOT_FOUND);
        }

        int64_t bases[17];
        int32_t epochs[17];
        int n = 0;
        segdata_t *cached = NULL;
        pthread_mutex_lock(&p->lock);
        int i = seg_find_locked(p, offset);
        int ahead = p->log->cfg.readahead_segments;
        if (i >= 0 && p->segs[i].data) {
                cached = p->segs[i].data; /* loaded meanwhile */
                segdata_ref(cached);
        }
        for (int j = i; i >= 0 && j < p->nsegs && n < 17 && j <= i + ahead; j++)
                if (!p->segs[j].data) {
                        bases[n] = p->segs[j].m.base_offset;
                        epochs[n++] = p->segs[j].m.leader_epoch;
                }
        pthread_mutex_unlock(&p->lock);
        if (i < 0)
                return KS_ERR_OFFSET_OUT_OF_RANGE;
        /* The segment holding `offset` (pinned) unless it was cached
         * already; the read-ahead goes on without us. */
        ks_err_t err = 0;
        int k = 0;
        if (!cached && n > 0) {
                err = load_segment(p, bases[0], epochs[0], &cached);
                k = 1;
        }
        if (!err)
                readahead_start(p, bases + k, epochs + k, n - k);
        if (pin)
                *pin = (ks_segref_t *)cached;
        else
                segdata_unref(cached);
        return cached ? 0 : (err ? err : KS_ERR__NOT_FOUND);
}

void ks_partition_watch(ks_partition_t *p, ks_fetch_waiter_t *w)
{
        pthread_mutex_lock(&p->lock);
        w->armed = true;
        w->next = p->fwait;
        p->fwait = w;
        pthread_mutex_unlock(&p->lock);
}

void ks_log_wake_all(ks_log_t *log)
{
        pthread_rwlock_rdlock(&log->topics_lock);
        for (int i = 0; i < log->ntopics; i++) {
                topic_entry_t *te = log->topics[i];
                for (int32_t j = 0; j < te->nparts; j++) {
                        ks_partition_t *p = te->parts[j];
                        pthread_mutex_lock(&p->lock);
                        ks_fetch_waiter_t *fw = take_fetch_waiters(p);
                        pthread_mutex_unlock(&p->lock);
                        deliver(NULL, 0, fw);
                }
        }
        pthread_rwlock_unlock(&log->topics_lock);
}

bool ks_partition_unwatch(ks_partition_t *p, ks_fetch_waiter_t *w)
{
        pthread_mutex_lock(&p->lock);
        bool removed = w->armed;
        if (w->armed) {
                for (ks_fetch_waiter_t **pp = &p->fwait; *pp; pp = &(*pp)->next) {
                        if (*pp == w) {
                                *pp = w->next;
                                break;
                        }
                }
                w->armed = false;
        }
        pthread_mutex_unlock(&p->lock);
        return removed;
}

/* ------------------------------------------------------------------------ */
/* Timestamps                                                                */

typedef struct ts_search {
        int64_t target;
        int64_t offset, ts;
} ts_search_t;

static int ts_search_cb(void *opaque, const ks_record_view_t *r)
{
        ts_search_t *s = opaque;
        if (r->timestamp >= s->target) {
                s->offset = r->offset;
                s->ts = r->timestamp;
                return 1;
        }
        return 0;
}

/* First record of d with timestamp >= ts: exact in uncompressed batches,
 * the batch (base offset, max timestamp) in compressed ones. */
static ks_err_t first_record_at_or_after(const segdata_t *d, int64_t ts, int64_t *offset, int64_t *timestamp)
{
        for (int b = 0; b < d->nb; b++) {
                const batchent_t *e = &d->b[b];
                if (e->max_ts < ts)
                        continue;
                if ((e->attributes & KS_BATCH_ATTR_COMPRESSION_MASK) != KS_BATCH_COMPRESSION_NONE) {
                        *offset = e->base;
                        *timestamp = e->max_ts;
                        return 0;
                }
                ts_search_t s = { ts, -1, -1 };
                ks_err_t err = ks_batch_records_foreach(d->buf + e->pos, e->size, ts_search_cb, &s);
                if (err)
                        return KS_ERR__CORRUPT;
                if (s.offset >= 0) {
                        *offset = s.offset;
                        *timestamp = s.ts;
                        return 0;
                }
        }
        return 0;
}

ks_err_t ks_partition_offset_for_timestamp(ks_partition_t *p, int64_t ts, int64_t *offset, int64_t *timestamp)
{
        *offset = -1;
        *timestamp = -1;
        pthread_mutex_lock(&p->lock);
        if (ts == -3) {
                /* The segment with the largest timestamp (the first on ties),
                 * then the first record holding it. */
                int best = -1;
                for (int i = 0; i < p->nsegs; i++)
                        if (best < 0 || p->segs[i].m.max_timestamp > p->segs[best].m.max_timestamp)
                                best = i;
                if (best < 0) {
                        pthread_mutex_unlock(&p->lock);
                        return 0;
                }
                ts = p->segs[best].m.max_timestamp;
                segdata_t *d = p->segs[best].data;
                if (!d) {
                        pthread_mutex_unlock(&p->lock);
                        return KS_ERR__NOT_FOUND;
                }
                segdata_ref(d);
                pthread_mutex_unlock(&p->lock);
                ks_err_t err = first_record_at_or_after(d, ts, offset, timestamp);
                segdata_unref(d);
                return err;
        }
        int i;
        for (i = 0; i < p->nsegs; i++)
                if (p->segs[i].m.max_timestamp >= ts)
                        break;
        if (i == p->nsegs) {
                pthread_mutex_unlock(&p->lock);
                return 0;
        }
        segdata_t *d = p->segs[i].data;
        if (!d) {
                pthread_mutex_unlock(&p->lock);
                return KS_ERR__NOT_FOUND; /* load segment at p->segs[i].base then retry */
        }
        segdata_ref(d);
        pthread_mutex_unlock(&p->lock);
        ks_err_t err = first_record_at_or_after(d, ts, offset, timestamp);
        segdata_unref(d);
        return err;
}

ks_err_t ks_partition_load_for_timestamp(ks_partition_t *p, int64_t ts)
{
        int64_t base = -1;
        pthread_mutex_lock(&p->lock);
        int pick = -1;
        for (int i = 0; i < p->nsegs; i++) {
                if (ts == -3) {
                        if (pick < 0 || p->segs[i].m.max_timestamp > p->segs[pick].m.max_timestamp)
                                pick = i;
                } else if (p->segs[i].m.max_timestamp >= ts) {
                        pick = i;
                        break;
                }
        }
        int32_t epoch = 0;
        if (pick >= 0 && !p->segs[pick].data) {
                base = p->segs[pick].m.base_offset;
                epoch = p->segs[pick].m.leader_epoch;
        }
        pthread_mutex_unlock(&p->lock);
        return base >= 0 ? load_segment(p, base, epoch, NULL) : 0;
}

/* ------------------------------------------------------------------------ */
/* Topics                                                                    */

static int topic_find_locked(ks_log_t *log, const char *name, size_t len)
{
        for (int i = 0; i < log->ntopics; i++)
                if (strlen(log->topics[i]->name) == len && !memcmp(log->topics[i]->name, name, len))
                        return i;
        return -1;
}

ks_err_t ks_log_topic_open(ks_log_t *log, const ks_topic_t *t)
{
        pthread_rwlock_rdlock(&log->topics_lock);
        int i = topic_find_locked(log, t->name, strlen(t->name));
        int have = 0;
        if (i >= 0) {
                if (!ks_uuid_eq(&log->topics[i]->id, &t->id)) {
                        pthread_rwlock_unlock(&log->topics_lock);
                        return KS_ERR__EXISTS; /* an older incarnation is still being dropped */
                }
                have = log->topics[i]->nparts;
        }
        pthread_rwlock_unlock(&log->topics_lock);
        if (have >= t->partitions)
                return 0;

        ks_partition_t **parts = calloc((size_t)t->partitions, sizeof(*parts));
        if (!parts)
                return KS_ERR__NOMEM;
        ks_err_t err = 0;
        for (int32_t p = have; p < t->partitions && !err; p++)
                err = partition_load(log, t, p, &parts[p]);
        if (err) {
                for (int32_t p = 0; p < t->partitions; p++)
                        if (parts[p])
                                ks_partition_release(parts[p]);
                free(parts);
                ks_log_error("topic_open_failed", "topic=%s err=%s", t->name, ks_err_name(err));
                return err;
        }
        pthread_rwlock_wrlock(&log->topics_lock);
        i = topic_find_locked(log, t->name, strlen(t->name));
        topic_entry_t *te = i >= 0 ? log->topics[i] : NULL;
        if (!te) {
                te = calloc(1, sizeof(*te));
                if (te && log->ntopics == log->tcap) {
                        int cap = log->tcap ? log->tcap * 2 : 16;
                        topic_entry_t **nt = realloc(log->topics, (size_t)cap * sizeof(*nt));
                        if (nt) {
                                log->topics = nt;
                                log->tcap = cap;
                        } else {
                                free(te);
                                te = NULL;
                        }
                }
                if (te) {
                        snprintf(te->name, sizeof(te->name), "%s", t->name);
                        te->id = t->id;
                        log->topics[log->ntopics++] = te;
                }
        }
        if (!te) {
                err = KS_ERR__NOMEM;
        } else {
                for (int32_t p = 0; p < te->nparts && p < t->partitions; p++) {
                        if (parts[p])
                                ks_partition_release(parts[p]); /* raced: keep the existing one */
                        parts[p] = te->parts[p];
                }
                for (int32_t p = te->nparts; p < t->partitions; p++)
                        if (!parts[p])
                                err = KS_ERR__NOMEM;
                /* A concurrent open may already have opened more (a later
                 * growth): never shrink; `parts` then only borrows. */
                if (!err && t->partitions > te->nparts) {
                        free(te->parts);
                        te->parts = parts;
                        te->nparts = t->partitions;
                        parts = NULL;
                }
        }
        pthread_rwlock_unlock(&log->topics_lock);
        if (parts) {
                free(parts);
        }
        return err;
}

void ks_log_topic_configure(ks_log_t *log, const ks_topic_t *t)
{
        int64_t target = flush_target(log, t);
        pthread_rwlock_rdlock(&log->topics_lock);
        int i = topic_find_locked(log, t->name, strlen(t->name));
        if (i >= 0 && ks_uuid_eq(&log->topics[i]->id, &t->id)) {
                topic_entry_t *te = log->topics[i];
                for (int32_t k = 0; k < te->nparts; k++) {
                        ks_partition_t *p = te->parts[k];
                        pthread_mutex_lock(&p->lock);
                        p->flush_bytes = target;
                        p->retention_ms = t->retention_ms;
                        p->retention_bytes = t->retention_bytes;
                        bool due = p->active && p->active->nb > 0 && (int64_t)p->active->len >= target;
                        pthread_mutex_unlock(&p->lock);
                        if (due)
                                schedule_flush(log, p, 0);
                }
        }
        pthread_rwlock_unlock(&log->topics_lock);
}

void ks_partition_set_leader_epoch(ks_partition_t *p, int32_t epoch)
{
        pthread_mutex_lock(&p->lock);
        p->leader_epoch = epoch;
        /* A chunk that already holds records keeps the epoch it began at;
         * the next one takes the new epoch. */
        if (p->active && p->active->nb > 0 && p->active->epoch != epoch)
                seal_active_locked(p);
        pthread_mutex_unlock(&p->lock);
}

bool ks_partition_serving(ks_partition_t *p, int32_t *epoch)
{
        pthread_mutex_lock(&p->lock);
        bool serving = p->serving && !p->dropped;
        if (epoch)
                *epoch = p->leader_epoch;
        pthread_mutex_unlock(&p->lock);
        return serving;
}

int ks_partition_epoch_history(ks_partition_t *p, ks_epoch_entry_t *out, int cap)
{
        pthread_mutex_lock(&p->lock);
        int n = p->nhistory < cap ? p->nhistory : cap;
        if (n > 0)
                memcpy(out, p->history + (p->nhistory - n), (size_t)n * sizeof(*out));
        pthread_mutex_unlock(&p->lock);
        return n;
}

ks_err_t ks_partition_take_ownership(ks_partition_t *p, int32_t epoch)
{
        ks_log_t *log = p->log;
        pthread_mutex_lock(&p->lock);
        while (p->uploading) /* a late upload of the previous ownership finishes first */
                pthread_cond_wait(&p->idle_cond, &p->lock);
        bool dropped = p->dropped;
        pthread_mutex_unlock(&p->lock);
        if (dropped)
                return KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
        /* Another broker may have written it since we last did: the store
         * is the truth. */
        ks_partition_meta_t pm;
        ks_err_t err = ks_meta_partition_load(log->meta, p->topic, p->index, &pm);
        if (err)
                return err;
        if (pm.leader_epoch != epoch)
                /* The acquiring transaction wrote `epoch`; a read after it
                 * sees it.  Serve anyway (the fence decides), but say so. */
                ks_log_warn("partition_epoch_mismatch", "topic=%s partition=%d owned_epoch=%d stored_epoch=%d",
                            p->topic, p->index, epoch, pm.leader_epoch);
        seg_t *segs = calloc((size_t)(pm.nsegs > 8 ? pm.nsegs : 8), sizeof(*segs));
        ks_epoch_entry_t *hist = malloc((size_t)pm.nhistory * sizeof(*hist));
        if (!segs || !hist) {
                free(segs);
                free(hist);
                ks_partition_meta_free(&pm);
                return KS_ERR__NOMEM;
        }
        for (int i = 0; i < pm.nsegs; i++)
                segs[i].m = pm.segs[i];
        memcpy(hist, pm.history, (size_t)pm.nhistory * sizeof(*hist));
        pthread_mutex_lock(&p->lock);
        /* Invariant: nothing of an earlier ownership is still buffered. */
        if (p->active || p->flushing || p->sealed_head || p->uploading || p->pwait_head) {
                ks_log_error("invariant_broken", "what=ownership_taken_with_buffered_data topic=%s partition=%d",
                             p->topic, p->index);
                abort();
        }
        cache_forget_locked_partition(log, p);
        free(p->segs);
        p->segs = segs;
        p->segcap = pm.nsegs > 8 ? pm.nsegs : 8;
        p->nsegs = pm.nsegs;
        p->hwm = p->next = pm.next_offset;
        p->leader_epoch = epoch;
        free(p->history);
        p->history = hist;
        p->nhistory = pm.nhistory;
        producers_rebuild(p, &pm);
        p->failures = 0;
        p->storage_failing = false;
        p->serving = true;
        pthread_mutex_unlock(&p->lock);
        ks_partition_meta_free(&pm);
        ks_log_info("partition_serving", "topic=%s partition=%d leader_epoch=%d next_offset=%lld", p->topic,
                    p->index, epoch, (long long)pm.next_offset);
        return 0;
}

void ks_partition_give_up_ownership(ks_partition_t *p, ks_give_up_t why, int64_t flush_timeout_ms)
{
        ks_log_t *log = p->log;
        bool flush = why == KS_GIVE_UP_HAND_OVER;
        pthread_mutex_lock(&p->lock);
        if (why == KS_GIVE_UP_DELETED)
                p->dropped = true; /* the topic close that follows finds it so */
        if (!p->serving) {
                ks_fetch_waiter_t *fw = why == KS_GIVE_UP_DELETED ? take_fetch_waiters(p) : NULL;
                pthread_mutex_unlock(&p->lock);
                deliver(NULL, KS_ERR_UNKNOWN_TOPIC_OR_PARTITION, fw);
                return;
        }
        p->serving = false; /* new appends and reads are refused from here on */
        if (flush && p->active && p->active->nb > 0)
                seal_active_locked(p);
        int64_t deadline = now_ms() + flush_timeout_ms;
        while (flush && (p->sealed_head || p->flushing || p->uploading) && !p->dropped && now_ms() < deadline) {
                pthread_mutex_unlock(&p->lock);
                schedule_flush(log, p, 0);
                pthread_mutex_lock(&p->lock);
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 20 * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&p->idle_cond, &p->lock, &ts);
        }
        while (p->uploading)
                pthread_cond_wait(&p->idle_cond, &p->lock);
        bool left = p->active || p->flushing || p->sealed_head;
        produce_waiter_t *pw = NULL;
        ks_fetch_waiter_t *fw = NULL;
        give_up_buffered_locked(p, &pw, &fw);
        int64_t hwm = p->hwm;
        pthread_mutex_unlock(&p->lock);
        if (left)
                ks_log_warn("partition_given_up_with_unflushed_data", "topic=%s partition=%d committed_end=%lld "
                            "flush=%s",
                            p->topic, p->index, (long long)hwm, flush ? "timed_out" : "no");
        else
                ks_log_info("partition_not_serving", "topic=%s partition=%d committed_end=%lld", p->topic, p->index,
                            (long long)hwm);
        deliver(pw, p->dropped ? KS_ERR_UNKNOWN_TOPIC_OR_PARTITION : KS_ERR_NOT_LEADER_OR_FOLLOWER, fw);
}

ks_partition_t *ks_log_partition(ks_log_t *log, ks_str_t topic, int32_t partition)
{
        if (topic.len <= 0)
                return NULL;
        ks_partition_t *p = NULL;
        pthread_rwlock_rdlock(&log->topics_lock);
        int i = topic_find_locked(log, topic.ptr, (size_t)topic.len);
        if (i >= 0 && partition >= 0 && partition < log->topics[i]->nparts) {
                p = log->topics[i]->parts[partition];
                partition_ref(p);
        }
        pthread_rwlock_unlock(&log->topics_lock);
        return p;
}

bool ks_log_topic_info(ks_log_t *log, const char *topic, ks_uuid_t *id, int32_t *partitions)
{
        pthread_rwlock_rdlock(&log->topics_lock);
        int i = topic_find_locked(log, topic, strlen(topic));
        if (i >= 0) {
                *id = log->topics[i]->id;
                *partitions = log->topics[i]->nparts;
        }
        pthread_rwlock_unlock(&log->topics_lock);
        return i >= 0;
}

int ks_log_topic_names(ks_log_t *log, char (**out)[KS_TOPIC_NAME_MAX + 1])
{
        pthread_rwlock_rdlock(&log->topics_lock);
        int n = log->ntopics;
        char(*names)[KS_TOPIC_NAME_MAX + 1] = malloc((size_t)(n ? n : 1) * sizeof(*names));
        if (names)
                for (int i = 0; i < n; i++)
                        memcpy(names[i], log->topics[i]->name, sizeof(names[i]));
        pthread_rwlock_unlock(&log->topics_lock);
        *out = names;
        return names ? n : -1;
}

bool ks_log_topic_forget(ks_log_t *log, const char *topic, const ks_uuid_t *id)
{
        pthread_rwlock_wrlock(&log->topics_lock);
        int i = topic_find_locked(log, topic, strlen(topic));
        topic_entry_t *te = NULL;
        if (i >= 0 && (!id || ks_uuid_eq(&log->topics[i]->id, id))) {
                te = log->topics[i];
                log->topics[i] = log->topics[--log->ntopics];
        }
        pthread_rwlock_unlock(&log->topics_lock);
        if (!te)
                return false;
        for (int32_t p = 0; p < te->nparts; p++) {
                ks_partition_t *part = te->parts[p];
                pthread_mutex_lock(&part->lock);
                part->dropped = true;
                produce_waiter_t *pw = part->pwait_head;
                part->pwait_head = part->pwait_tail = NULL;
                ks_fetch_waiter_t *fw = take_fetch_waiters(part);
                while (part->uploading)
                        pthread_cond_wait(&part->idle_cond, &part->lock);
                cache_forget_locked_partition(log, part);
                pthread_mutex_unlock(&part->lock);
                pthread_mutex_lock(&log->sched_lock);
                if (part->heap_index >= 0) {
                        heap_remove(log, part);
                        pthread_mutex_unlock(&log->sched_lock);
                        ks_partition_release(part);
                } else {
                        pthread_mutex_unlock(&log->sched_lock);
                }
                deliver(pw, KS_ERR_UNKNOWN_TOPIC_OR_PARTITION, fw);
                ks_partition_release(part);
        }
        free(te->parts);
        free(te);
        return true;
}

void ks_log_topic_delete_objects(ks_log_t *log, const char *topic)
{
        char prefix[400];
        snprintf(prefix, sizeof(prefix), "%s/%s/", log->ns, topic);
        ks_objlist_t l = { 0 };
        ks_err_t err = ks_objstore_list(log->store, prefix, &l);
        size_t deleted = 0;
        for (size_t k = 0; !err && k < l.count; k++)
                if (ks_objstore_del(log->store, l.items[k].key) == 0)
                        deleted++;
        if (err)
                ks_log_warn("topic_objects_not_deleted", "topic=%s err=%s", topic, ks_err_name(err));
        else
                ks_log_info("topic_objects_deleted", "topic=%s objects=%zu of=%zu", topic, deleted, l.count);
        ks_objlist_free(&l);
}

void ks_log_topic_drop(ks_log_t *log, const char *topic, const ks_uuid_t *id)
{
        ks_log_topic_forget(log, topic, id);
        /* Delete the topic's objects (whatever incarnation left them). */
        ks_log_topic_delete_objects(log, topic);
}

/* ------------------------------------------------------------------------ */
/* Retention                                                                 */

/* Deletes the leading segments of p that retention no longer keeps. */
static void enforce_partition(ks_log_t *log, ks_partition_t *p)
{
        int64_t wall = ks_clock_wall_ms(ks_clock_system());
        int64_t bases[64];
        int32_t epochs[64];
        int n = 0;
        pthread_mutex_lock(&p->lock);
        /* Idempotent producers inactive for producer.id.expiration.ms are
         * forgotten, as Kafka does (a restart would not rebuild them). */
        if (p->serving)
                ks_producers_expire(&p->producers, wall - KS_PRODUCER_EXPIRATION_MS);
        int64_t total = 0;
        for (int i = 0; i < p->nsegs; i++)
                total += p->segs[i].m.size_bytes;
        /* Only the owner: another broker's view of the manifest may be old. */
        for (int i = 0; i < p->nsegs && n < 64 && !p->dropped && p->serving; i++) {
                const ks_seg_meta_t *m = &p->segs[i].m;
                int64_t newest = m->max_timestamp >= 0 ? m->max_timestamp : m->created_at_ms;
                bool by_time = p->retention_ms >= 0 && wall - newest > p->retention_ms;
                bool by_size = p->retention_bytes >= 0 && total - m->size_bytes >= p->retention_bytes;
                if (!by_time && !by_size)
                        break;
                bases[n] = m->base_offset;
                epochs[n++] = m->leader_epoch;
                total -= m->size_bytes;
        }
        pthread_mutex_unlock(&p->lock);
        if (n == 0)
                return;
        ks_err_t err = ks_meta_partition_trim(log->meta, p->topic, p->index, bases, n);
        if (err) {
                ks_log_warn("retention_failed", "topic=%s partition=%d err=%s action=retry_next_pass", p->topic,
                            p->index, ks_err_name(err));
                return;
        }
        /* The manifest no longer has them: forget them here (readers that
         * hold a segment keep it alive), then delete the objects. */
        pthread_mutex_lock(&p->lock);
        int drop = 0;
        while (drop < n && drop < p->nsegs && p->segs[drop].m.base_offset == bases[drop])
                drop++;
        segdata_t *gone[64];
        for (int i = 0; i < drop; i++)
                gone[i] = p->segs[i].data;
        memmove(p->segs, p->segs + drop, (size_t)(p->nsegs - drop) * sizeof(*p->segs));
        p->nsegs -= drop;
        int64_t start = log_start_locked(p);
        pthread_mutex_unlock(&p->lock);
        for (int i = 0; i < drop; i++) {
                if (!gone[i])
                        continue;
                pthread_mutex_lock(&log->cache_lock);
                if (gone[i]->in_lru)
                        lru_unlink_locked(log, gone[i]);
                pthread_mutex_unlock(&log->cache_lock);
                segdata_unref(gone[i]);
        }
        for (int i = 0; i < n; i++) {
                char key[512];
                ks_segment_key_epoch(key, sizeof(key), log->ns, p->topic, p->index, bases[i], epochs[i],
                                     KS_SEGMENT_EXT_KFS);
                ks_err_t e1 = ks_objstore_del(log->store, key);
                ks_segment_key_epoch(key, sizeof(key), log->ns, p->topic, p->index, bases[i], epochs[i],
                                     KS_SEGMENT_EXT_INDEX);
                ks_err_t e2 = ks_objstore_del(log->store, key);
                if (e1 || e2)
                        ks_log_warn("retention_object_not_deleted", "topic=%s partition=%d base=%lld err=%s",
                                    p->topic, p->index, (long long)bases[i], ks_err_name(e1 ? e1 : e2));
        }
        ks_log_info("retention_applied", "topic=%s partition=%d segments_deleted=%d log_start_offset=%lld", p->topic,
                    p->index, n, (long long)start);
}

/* Deletes the partition's orphan objects: segment objects (.kfs, .index)
 * below the committed end offset that the manifest does not name — the
 * upload of a flush whose commit then failed (fenced, or the broker died
 * between the two), or an object whose deletion by retention failed.  Such
 * a key can never be committed any more: commits are in offset order and
 * the end offset only grows; objects at or above it (uploads in progress)
 * are left alone.  Only the partition's owner sweeps; keys that are not
 * segment keys are never touched.  BLOCKING. */
static void sweep_orphans(ks_log_t *log, ks_partition_t *p)
{
        pthread_mutex_lock(&p->lock);
        bool mine = p->serving && !p->dropped;
        pthread_mutex_unlock(&p->lock);
        char prefix[512];
        int pl = snprintf(prefix, sizeof(prefix), "%s/%s/%d/", log->ns, p->topic, p->index);
        ks_objlist_t l = { 0 };
        if (!mine || pl < 0 || (size_t)pl >= sizeof(prefix) || ks_objstore_list(log->store, prefix, &l) != 0)
                return;
        int deleted = 0, failed = 0;
        int64_t hwm = 0;
        for (size_t k = 0; k < l.count; k++) {
                int64_t base;
                int32_t epoch;
                const char *key = l.items[k].key;
                if (strchr(key + pl, '/') || ks_segment_key_parse(key, &base, &epoch, NULL) != 0)
                        continue; /* not a segment of this partition */
                /* The end offset and the manifest change together under
                 * the lock: a key below the one and not in the other is
                 * an orphan. */
                pthread_mutex_lock(&p->lock);
                int i = seg_find_locked(p, base);
                hwm = p->hwm;
                bool keep = base >= hwm || (i >= 0 && p->segs[i].m.base_offset == base &&
                                               p->segs[i].m.leader_epoch == epoch);
                pthread_mutex_unlock(&p->lock);
                if (keep)
                        continue; /* committed, or maybe an upload in flight */
                if (ks_objstore_del(log->store, key) == 0)
                        deleted++;
                else
                        failed++;
        }
        if (deleted || failed)
                ks_log_info("orphan_objects_deleted", "topic=%s partition=%d objects=%d failed=%d committed_end=%lld",
                            p->topic, p->index, deleted, failed, (long long)hwm);
        ks_objlist_free(&l);
}

void ks_log_enforce_retention(ks_log_t *log)
{
        /* Take references under the topics lock, work without it. */
        pthread_rwlock_rdlock(&log->topics_lock);
        int total = 0;
        for (int i = 0; i < log->ntopics; i++)
                total += log->topics[i]->nparts;
        ks_partition_t **ps = calloc((size_t)(total ? total : 1), sizeof(*ps));
        int n = 0;
        for (int i = 0; ps && i < log->ntopics; i++)
                for (int32_t j = 0; j < log->topics[i]->nparts; j++) {
                        ps[n] = log->topics[i]->parts[j];
                        partition_ref(ps[n++]);
                }
        pthread_rwlock_unlock(&log->topics_lock);
        for (int i = 0; i < n; i++) {
                enforce_partition(log, ps[i]);
                sweep_orphans(log, ps[i]);
                ks_partition_release(ps[i]);
        }
        free(ps);
}

/* ------------------------------------------------------------------------ */
/* Open / close                                                              */

ks_err_t ks_log_open(const ks_log_config_t *cfg, ks_objstore_t *store, ks_meta_t *meta, ks_log_t **out)
{
        ks_log_t *log = calloc(1, sizeof(*log));
        if (!log)
                return KS_ERR__NOMEM;
        log->cfg = *cfg;
        snprintf(log->ns, sizeof(log->ns), "%s", cfg->ns);
        log->cfg.ns = log->ns;
        log->store = store;
        log->meta = meta;
        pthread_rwlock_init(&log->topics_lock, NULL);
        pthread_mutex_init(&log->sched_lock, NULL);
        pthread_mutex_init(&log->cache_lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&log->sched_cond, &ca);
        pthread_condattr_destroy(&ca);
        log->workers = ks_workq_new("ks-store", cfg->upload_threads > 0 ? cfg->upload_threads : 4);
        if (!log->workers) {
                free(log);
                return KS_ERR__NOMEM;
        }
        if (pthread_create(&log->sched_thread, NULL, sched_main, log) != 0) {
                ks_workq_destroy(log->workers);
                free(log);
                return KS_ERR__NOMEM;
        }
        pthread_setname_np(log->sched_thread, "ks-flush");
        *out = log;
        return 0;
}

void ks_log_close(ks_log_t *log)
{
        if (!log)
                return;
        /* Flush what is buffered: make every pending flush due now, and
         * wait (bounded) until no partition holds unflushed data. */
        int64_t deadline = now_ms() + 15000;
        for (;;) {
                bool busy = false;
                pthread_rwlock_rdlock(&log->topics_lock);
                for (int i = 0; i < log->ntopics; i++) {
                        topic_entry_t *te = log->topics[i];
                        for (int32_t j = 0; j < te->nparts; j++) {
                                ks_partition_t *p = te->parts[j];
                                pthread_mutex_lock(&p->lock);
                                bool pending = !p->dropped &&
                                               ((p->active && p->active->nb > 0) || p->flushing || p->sealed_head);
                                pthread_mutex_unlock(&p->lock);
                                if (pending) {
                                        busy = true;
                                        schedule_flush(log, p, 0);
                                }
                        }
                }
                pthread_rwlock_unlock(&log->topics_lock);
                if (!busy)
                        break;
                if (now_ms() > deadline) {
                        ks_log_error("shutdown_flush_incomplete", "reason=\"object store did not accept the "
                                                                  "remaining data in time\"");
                        break;
                }
                struct timespec ts = { 0, 10 * 1000000 };
                nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&log->sched_lock);
        log->stopping = true;
        while (log->heap_len > 0) {
                ks_partition_t *p = log->heap[0];
                heap_remove(log, p);
                ks_partition_release(p);
        }
        pthread_cond_broadcast(&log->sched_cond);
        pthread_mutex_unlock(&log->sched_lock);
        pthread_join(log->sched_thread, NULL);
        ks_workq_destroy(log->workers);
        for (int i = 0; i < log->ntopics; i++) {
                topic_entry_t *te = log->topics[i];
                for (int32_t j = 0; j < te->nparts; j++) {
                        ks_partition_t *p = te->parts[j];
                        pthread_mutex_lock(&p->lock);
                        produce_waiter_t *pw = p->pwait_head;
                        p->pwait_head = p->pwait_tail = NULL;
                        ks_fetch_waiter_t *fw = take_fetch_waiters(p);
                        cache_forget_locked_partition(log, p);
                        pthread_mutex_unlock(&p->lock);
                        deliver(pw, KS_ERR_REQUEST_TIMED_OUT, fw);
                        ks_partition_release(p);
                }
                free(te->parts);
                free(te);
        }
        free(log->topics);
        free(log->heap);
        pthread_rwlock_destroy(&log->topics_lock);
        pthread_mutex_destroy(&log->sched_lock);
        pthread_mutex_destroy(&log->cache_lock);
        pthread_cond_destroy(&log->sched_cond);
        free(log);
}
