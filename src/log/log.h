/*
 * log.h — partition logs on object storage, with group commit.
 *
 * Every partition this broker serves has a ks_partition_t: its committed end
 * offset (the high watermark), its segment manifest, an in-memory tail of
 * batches not yet durable, and the waiters of produce and fetch requests.
 *
 * Produce: ks_partition_append() validates nothing (the caller did), assigns
 * offsets by patching each batch's base offset, and copies the batches into
 * the partition's active chunk.  The chunk is flushed — written as one
 * segment object plus its index, then committed in the metadata store — when
 * it reaches the target object size or when its oldest batch has waited the
 * flush interval.  Only then does the high watermark move and are the
 * produce waiters told (acks=1/all are acknowledged after durability).
 * Uploads of different partitions run in parallel on the storage workers;
 * one partition has at most one flush in flight, so its segments commit in
 * offset order.  A failed flush is retried with backoff; its offsets stay
 * assigned to it (never handed out twice, never a gap).
 *
 * Fetch: only data below the high watermark is ever served.  Durable data is
 * read from the segment cache (flushed chunks stay there, and segments read
 * back from the object store are put there), bounded by cache_bytes.
 *
 * Threads: the functions below are called on I/O threads unless marked
 * BLOCKING.  A partition's fields are protected by its own mutex, never held
 * across I/O.  Waiter callbacks are posted to the loop of the request that
 * registered them.
 */
#ifndef KS_LOG_LOG_H
#define KS_LOG_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "log/batch.h"
#include "meta/metadata.h"
#include "net/loop.h"
#include "storage/objstore.h"
#include "util/bytes.h"
#include "util/err.h"

typedef struct ks_log ks_log_t;
typedef struct ks_partition ks_partition_t;

typedef struct ks_log_config {
        const char *ns;              /* object key namespace ("default") */
        int64_t flush_interval_ms;   /* oldest unflushed batch waits at most this long */
        int64_t segment_bytes;       /* target object size: flush when the tail reaches it */
        int64_t cache_bytes;         /* segment cache budget */
        int readahead_segments;      /* segments read ahead for sequential consumers */
        int upload_threads;          /* parallel uploads (and cold reads) */
        int32_t max_batch_bytes;     /* largest accepted record batch */
        int64_t retention_check_ms;  /* how often retention is enforced (0: never) */
        int64_t ranged_read_min_bytes; /* cold reads of larger segments use ranged GETs (0: 8 MiB) */
        int64_t ranged_read_window;    /* bytes per ranged GET (0: 1 MiB) */
        /* Fencing (cluster mode; NULL: none): fills the compare every commit
         * of (topic, partition) must also pass — "this broker still holds
         * the ownership term of leader epoch `epoch`, the epoch the records
         * were written at" — with the key stored in keybuf.  Called on
         * storage threads. */
        void (*fence)(void *opaque, const char *topic, int32_t partition, int32_t epoch, char *keybuf,
                      size_t keylen, ks_kv_cmp_t *cmp);
        void *fence_opaque;
        /* Cluster mode: partitions open not serving; ownership makes them
         * serve (ks_partition_take_ownership).  false: every open
         * partition serves (embedded mode). */
        bool owned_only;
} ks_log_config_t;

/* Creates the log manager.  `store`, `meta` are borrowed and must outlive
 * it.  Starts the flush scheduler and the storage workers. */
ks_err_t ks_log_open(const ks_log_config_t *cfg, ks_objstore_t *store, ks_meta_t *meta, ks_log_t **out);

/* Flushes everything buffered (waiting for in-flight uploads), then stops
 * and frees.  BLOCKING. */
void ks_log_close(ks_log_t *log);

/* Opens every partition of `t` (recovering its end offset and segment
 * manifest from the metadata store), or the partitions it gained.
 * BLOCKING. */
ks_err_t ks_log_topic_open(ks_log_t *log, const ks_topic_t *t);

/* Applies a topic's configs to its open partitions: each flushes once its
 * tail reaches min(segment_bytes of the log config, the topic's
 * segment.bytes) (the interval still applies), and retention.ms /
 * retention.bytes decide which segments the next retention pass deletes.  Partitions opened later take
 * the value from the topic passed to ks_log_topic_open().  Non-blocking. */
void ks_log_topic_configure(ks_log_t *log, const ks_topic_t *t);

/* Enforces retention on every partition now: whole segments whose newest
 * record is older than retention.ms, and the oldest segments while the
 * partition is larger than retention.bytes without them, are removed from
 * the manifest (the log start offset moves to the first remaining segment,
 * or the high watermark) and then from the object store.  The same pass
 * deletes, for the partitions served here, orphan segment objects: below
 * the committed end offset and not in the manifest (uploads whose commit
 * failed, deletions that failed), and forgets idempotent producers idle
 * for KS_PRODUCER_EXPIRATION_MS.  The log also does this every
 * retention_check_ms on its own.  BLOCKING. */
void ks_log_enforce_retention(ks_log_t *log);

/* The incarnation (topic id) and partition count the log has open for
 * `topic`; false if none.  Non-blocking. */
bool ks_log_topic_info(ks_log_t *log, const char *topic, ks_uuid_t *id, int32_t *partitions);

/* Names of every open topic, in a malloc'ed array the caller frees; the
 * count, or -1 if memory ran out.  Non-blocking. */
int ks_log_topic_names(ks_log_t *log, char (**names)[KS_TOPIC_NAME_MAX + 1]);

/* Closes a topic's partitions (only the incarnation `id`, unless NULL):
 * uploads in flight finish, pending produce and fetch waiters are answered
 * with UNKNOWN_TOPIC_OR_PARTITION, buffered records not yet acknowledged are
 * discarded, cached segments are released.  The objects stay.  True if the
 * topic was open.  BLOCKING (waits for uploads in flight). */
bool ks_log_topic_forget(ks_log_t *log, const char *topic, const ks_uuid_t *id);

/* Deletes every object under the topic's prefix.  BLOCKING. */
void ks_log_topic_delete_objects(ks_log_t *log, const char *topic);

/* Forgets a deleted topic and deletes its objects (the two above).
 * BLOCKING. */
void ks_log_topic_drop(ks_log_t *log, const char *topic, const ks_uuid_t *id);

/* The broker's periodic probe of the object and metadata stores: `ok`
 * false makes the log refuse new appends at once (KAFKA_STORAGE_ERROR,
 * retriable) until a probe succeeds; so do STORAGE_DEGRADED_STREAK (3)
 * flushes failing in a row across the log, until a flush or a probe
 * succeeds.  Producers then fail fast and retry instead of waiting out
 * their request timeout.  Thread-safe. */
void ks_log_set_storage_health(ks_log_t *log, bool ok);

/* Bytes of memory held by appended data not yet committed, across every
 * partition (the log's part of the broker's produce-buffer budget; the
 * kafscale_produce_buffer_bytes gauge counts it too).  Thread-safe. */
int64_t ks_log_unflushed_bytes(ks_log_t *log);

/* Looks up a partition and takes a reference (NULL if not served here).
 * Release with ks_partition_release(). */
ks_partition_t *ks_log_partition(ks_log_t *log, ks_str_t topic, int32_t partition);
void ks_partition_release(ks_partition_t *p);

/* Records appended from now on are written at leader epoch `epoch`: their
 * batches carry it (PartitionLeaderEpoch), their segments' objects are
 * keyed by it (storage/segment.h) and the manifest records it.  Set by
 * ownership when it acquires the partition, before it serves.  Epoch 0
 * (the default) keeps the plain keys. */
void ks_partition_set_leader_epoch(ks_partition_t *p, int32_t epoch);

/* --- ownership (cluster mode) ------------------------------------------------ */

/* Does this broker serve the partition (appends, reads)?  *epoch (may be
 * NULL): the leader epoch it writes at.  Non-blocking. */
bool ks_partition_serving(ks_partition_t *p, int32_t *epoch);

/* The partition's leader-epoch history as last loaded from the store (at
 * open, or when ownership was taken), its newest `cap` entries into out;
 * returns the count (>= 1 for cap >= 1).  Non-blocking. */
int ks_partition_epoch_history(ks_partition_t *p, ks_epoch_entry_t *out, int cap);

/* This broker now owns the partition at leader epoch `epoch`: its end
 * offset, segment manifest and epoch history are reloaded from the metadata store (another
 * broker may have written it meanwhile), then it serves.  BLOCKING. */
ks_err_t ks_partition_take_ownership(ks_partition_t *p, int32_t epoch);

/* Why a broker stops serving a partition. */
typedef enum ks_give_up {
        KS_GIVE_UP_HAND_OVER, /* another broker takes it: flush and commit first */
        KS_GIVE_UP_LOST,      /* ownership lost: stop at once */
        KS_GIVE_UP_DELETED,   /* the partition no longer exists: stop at once */
} ks_give_up_t;

/* Stops serving at once (appends and reads answer NOT_LEADER_OR_FOLLOWER;
 * after KS_GIVE_UP_DELETED, UNKNOWN_TOPIC_OR_PARTITION for good).
 * A hand-over flushes and commits what is buffered first, waiting at most
 * flush_timeout_ms; otherwise, or after the timeout, what is still buffered
 * is dropped — it was never acknowledged — and its producers get the error
 * above.  Parked fetches are woken.  BLOCKING. */
void ks_partition_give_up_ownership(ks_partition_t *p, ks_give_up_t why, int64_t flush_timeout_ms);

/* Offsets (snapshot under the partition lock). */
typedef struct ks_partition_offsets {
        int64_t log_start;   /* earliest offset still available */
        int64_t high_watermark;
        int64_t next_offset; /* next offset to assign (>= high watermark) */
} ks_partition_offsets_t;

void ks_partition_offsets(ks_partition_t *p, ks_partition_offsets_t *out);

/* --- produce ------------------------------------------------------------------ */

/* Called on the waiter's loop, exactly once, when its offsets are durable
 * (err 0) or cannot become durable (err != 0). */
typedef void(ks_produce_done_fn)(void *opaque, ks_err_t err);

/* Appends validated batches (`buf` holds `nbatches` whole v2 batches; the
 * buffer is borrowed: it is copied).  On success *base_offset is the offset
 * of the first record.  If `done` is non-NULL, it is called on `loop` once
 * the batches are durable or failed.  Batches of idempotent producers are
 * checked against the partition's producer state first (log/producers.h).
 * KS_ERR__EXISTS: the batches repeat ones already appended (a producer's
 * retry): nothing is appended, *base_offset is where they were, and `done`
 * is called once those are durable, as for an append.  Errors (nothing
 * appended): KS_ERR_KAFKA_STORAGE_ERROR while storage is failing or the
 * buffer is full, KS_ERR_UNKNOWN_TOPIC_OR_PARTITION if the topic is being
 * deleted, KS_ERR_NOT_LEADER_OR_FOLLOWER if not served here,
 * KS_ERR_INVALID_PRODUCER_EPOCH / KS_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER /
 * KS_ERR_DUPLICATE_SEQUENCE_NUMBER from the producer checks. */
ks_err_t ks_partition_append(ks_partition_t *p, uint8_t *buf, size_t len, const ks_batch_info_t *infos, int nbatches,
                             int64_t *base_offset, ks_loop_t *loop, ks_produce_done_fn *done, void *opaque);

/* --- fetch -------------------------------------------------------------------- */

/* A read result: `len` bytes at `data` (whole batches), kept alive by `ref`
 * until ks_segref_release(). */
typedef struct ks_segref ks_segref_t;

typedef struct ks_read {
        const uint8_t *data;
        size_t len;
        int64_t next_offset; /* offset after the last batch returned */
        ks_segref_t *ref;
} ks_read_t;

void ks_segref_release(ks_segref_t *ref);

/* Reads whole batches starting with the one holding `offset`, at most
 * `max_bytes` unless the first batch alone is larger (then exactly that
 * batch).  Returns 0 with len 0 when offset == high watermark,
 * KS_ERR_OFFSET_OUT_OF_RANGE outside [log_start, high watermark], or
 * KS_ERR__NOT_FOUND when the data must first be loaded from the object
 * store (call ks_partition_load_for_read() on a worker, then retry). */
ks_err_t ks_partition_read(ks_partition_t *p, int64_t offset, size_t max_bytes, ks_read_t *out);

/* Loads the segment holding `offset` (and read-ahead) into the cache.
 * *pin (may be NULL) receives a reference to the segment holding `offset`,
 * readable with ks_segref_read() even if the cache evicts it at once.
 * BLOCKING. */
ks_err_t ks_partition_load_for_read(ks_partition_t *p, int64_t offset, ks_segref_t **pin);

/* ks_partition_read() on a pinned segment; KS_ERR__NOT_FOUND if `offset`
 * is not in it. */
ks_err_t ks_segref_read(ks_segref_t *ref, int64_t offset, size_t max_bytes, ks_read_t *out);

/* Fetch long-poll: `wake` is called on `loop` when the partition's high
 * watermark moves (or the partition goes away).  A waiter is one-shot and
 * its wake is delivered exactly once unless ks_partition_unwatch() removes
 * it first: unwatch returns true if it did (no wake will come) and false if
 * the wake is already on its way (the waiter must stay valid until then). */
typedef struct ks_fetch_waiter {
        struct ks_fetch_waiter *next;
        ks_loop_t *loop;
        void (*wake)(ks_loop_t *loop, void *opaque);
        void *opaque;
        bool armed;
} ks_fetch_waiter_t;

void ks_partition_watch(ks_partition_t *p, ks_fetch_waiter_t *w);

/* Fires every registered fetch waiter (shutdown: parked fetches answer). */
void ks_log_wake_all(ks_log_t *log);
bool ks_partition_unwatch(ks_partition_t *p, ks_fetch_waiter_t *w);

/* --- list offsets ---------------------------------------------------------------- */

/* Offset of the first record with timestamp >= ts (-1 if none) and its
 * batch timestamp; for ts == -3 the record with the largest timestamp.
 * May need segment data: KS_ERR__NOT_FOUND as for ks_partition_read().
 * (Resolution is per batch for compressed batches.) */
ks_err_t ks_partition_offset_for_timestamp(ks_partition_t *p, int64_t ts, int64_t *offset, int64_t *timestamp);

/* Loads the segment ks_partition_offset_for_timestamp() needs.  BLOCKING. */
ks_err_t ks_partition_load_for_timestamp(ks_partition_t *p, int64_t ts);

#endif
