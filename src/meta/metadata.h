/*
 * metadata.h — typed metadata records over the key/value store (meta/kv.h).
 *
 * This module owns the key layout and the encodings of SYSTEM.md §6
 * (protobuf records from proto/kafscale_metadata.proto, ASCII next offsets)
 * and keeps an in-memory registry of topics that is current with the store:
 * it is loaded at open, updated by a watch on /kafscale/topics/, and
 * updated directly by this broker's own writes so that a client that created
 * a topic sees it in its very next Metadata request.
 *
 * Threads: lookups (ks_meta_topic_get*, ks_meta_topics_snapshot) never block
 * on I/O and may run on event-loop threads; they take a read lock.  Functions
 * marked BLOCKING talk to the store and must run on a worker thread.
 */
#ifndef KS_META_METADATA_H
#define KS_META_METADATA_H

#include <stdbool.h>
#include <stdint.h>

#include "meta/kv.h"
#include "util/bytes.h"
#include "util/err.h"

#define KS_TOPIC_NAME_MAX 249
#define KS_CLUSTER_ID_LEN 22
#define KS_MAX_PARTITIONS 10000 /* per topic */

/* Topic-level defaults (Apache Kafka's). */
#define KS_DEFAULT_RETENTION_MS  604800000LL /* 7 days */
#define KS_DEFAULT_RETENTION_BYTES (-1LL)
#define KS_DEFAULT_SEGMENT_BYTES (1LL << 30)

/* Which whitelisted configs a topic sets explicitly (others are defaults). */
enum {
        KS_TOPIC_CFG_RETENTION_MS = 1 << 0,
        KS_TOPIC_CFG_RETENTION_BYTES = 1 << 1,
        KS_TOPIC_CFG_SEGMENT_BYTES = 1 << 2,
};

/* A topic as the broker sees it (a plain value: copy freely). */
typedef struct ks_topic {
        char name[KS_TOPIC_NAME_MAX + 1];
        ks_uuid_t id;
        int32_t partitions;
        int32_t replication_factor; /* as requested; durability comes from object storage */
        int64_t retention_ms;       /* effective values */
        int64_t retention_bytes;
        int64_t segment_bytes;
        uint32_t explicit_configs;  /* KS_TOPIC_CFG_* set by the operator */
        int64_t created_at_ms;
        int64_t mod_rev;            /* store revision of the config record */
} ks_topic_t;

typedef struct ks_meta ks_meta_t;

/* Opens the typed layer over `kv` (borrowed; must outlive it): ensures the
 * cluster id exists, loads every topic and starts the topic watch.
 * BLOCKING. */
ks_err_t ks_meta_open(ks_kv_t *kv, ks_meta_t **out);
void ks_meta_close(ks_meta_t *meta);

/* The cluster id (22 characters, base64url of a UUID, like Kafka's). */
const char *ks_meta_cluster_id(const ks_meta_t *meta);

/* --- topics ----------------------------------------------------------------- */

/* Validates a topic name by Kafka's rules: 1..249 characters of
 * [a-zA-Z0-9._-], not "." or "..".  Returns NULL if valid, else the reason. */
const char *ks_topic_name_invalid(ks_str_t name);

/* Creates a topic: one PartitionState and next offset per partition, then
 * the config record, in transactions that each apply only if the topic does
 * not exist (the config record comes last: the topic appears complete).
 * `t` holds name, partitions, replication factor, configs; its id and
 * created_at are assigned here and written back.  KS_ERR__EXISTS if the
 * topic exists.  BLOCKING. */
ks_err_t ks_meta_topic_create(ks_meta_t *meta, ks_topic_t *t);

/* Deletes a topic and every key under it in one transaction.  When `id` is
 * non-NULL the topic is deleted only if it still has that id.
 * KS_ERR__NOT_FOUND if there is no such topic.  BLOCKING. */
ks_err_t ks_meta_topic_delete(ks_meta_t *meta, const char *name, const ks_uuid_t *id);

/* Reads a topic's config record from the store itself (not the registry):
 * *out receives the topic with the record's mod_rev, and the registry is
 * brought up to that revision.  KS_ERR__NOT_FOUND if there is no such
 * topic.  Read-modify-write (config and partition changes) starts here.
 * BLOCKING. */
ks_err_t ks_meta_topic_load(ks_meta_t *meta, const char *name, ks_topic_t *out);

/* Rewrites a topic's config record from *t — the whitelisted configs and
 * their explicit bits; name, id, partitions, replication factor and
 * created_at must be as read — in one transaction that applies only if the
 * record's mod_rev still equals t->mod_rev.  On success t->mod_rev is the
 * new revision and the registry shows *t at once (read-your-writes).
 * KS_ERR__CONFLICT if the record changed or was deleted since it was read:
 * re-read with ks_meta_topic_load() and apply the change again.
 * BLOCKING. */
ks_err_t ks_meta_topic_update(ks_meta_t *meta, ks_topic_t *t);

/* Grows a topic from t->partitions (as read, at t->mod_rev) to `count`
 * partitions: the config record with the new count and, for every new
 * partition, its PartitionState and a next offset of 0, all in one
 * transaction that applies only if the config's mod_rev still equals
 * t->mod_rev.  On success t->partitions = count, t->mod_rev is the new
 * revision and the registry shows it at once; open the new partitions with
 * ks_log_topic_open().  KS_ERR__CONFLICT as for ks_meta_topic_update(),
 * KS_ERR__INVALID_ARG unless t->partitions < count <= KS_MAX_PARTITIONS.
 * BLOCKING. */
ks_err_t ks_meta_topic_add_partitions(ks_meta_t *meta, ks_topic_t *t, int32_t count);

/* Called on the watch thread after the registry took in a change to
 * `topic` made by anyone (this broker's own writes come back through the
 * watch too), or with NULL after a full reload (every topic may have
 * changed).  The registry already shows the change.  It runs with the
 * registry read-locked: it must not call into this module, and must not
 * block long (it delays every later change) — queue the work. */
typedef void(ks_meta_topic_listener_fn)(void *opaque, const char *topic);

/* Sets (fn NULL: clears) the listener; when it returns, the previous one is
 * not running and will not run again.  Clear it before `opaque` dies. */
void ks_meta_set_topic_listener(ks_meta_t *meta, ks_meta_topic_listener_fn *fn, void *opaque);

/* Looks a topic up by name / id.  Non-blocking; true if found. */
bool ks_meta_topic_get(ks_meta_t *meta, ks_str_t name, ks_topic_t *out);
bool ks_meta_topic_get_by_id(ks_meta_t *meta, ks_uuid_t id, ks_topic_t *out);

/* Copies every topic, sorted by name, into a malloc'ed array the caller
 * frees.  Non-blocking.  Returns the count, or -1 if memory ran out. */
int ks_meta_topics_snapshot(ks_meta_t *meta, ks_topic_t **out);

/* --- the cluster snapshot ------------------------------------------------------- */

/* One broker of the snapshot (borrowed strings; rack may be NULL). */
typedef struct ks_snapshot_broker {
        int32_t id;
        const char *host;
        int32_t port;
        const char *rack;
} ks_snapshot_broker_t;

/* The leader (broker id) and leader epoch of a partition, for the snapshot. */
typedef int32_t(ks_snapshot_leader_fn)(void *opaque, const char *topic, int32_t partition, int32_t *epoch);

#define KS_SNAPSHOT_KEY "/kafscale/metadata/snapshot"

/* Rewrites the JSON cluster snapshot at KS_SNAPSHOT_KEY from the topic
 * registry, `brokers` and `leader` (metadata-schema.md: KafScale's field
 * names — Brokers, ControllerID, Topics with Partitions, ClusterName,
 * ClusterID).  It is a derived view for KafScale tooling: brokers write it
 * when topics are created, deleted or grown and never read it back (the
 * topic records are the source of truth).  Read-modify-write on the key's
 * revision, so two writers never interleave.  BLOCKING. */
ks_err_t ks_meta_snapshot_write(ks_meta_t *meta, const ks_snapshot_broker_t *brokers, int nbrokers,
                                int32_t controller_id, ks_snapshot_leader_fn *leader, void *opaque);

/* --- partitions: committed end offset and segment manifest ------------------ */

/* An idempotent producer's last batches within one segment
 * (SegmentInfo.producers): what rebuilds the partition's producer state. */
#define KS_SEG_PRODUCER_BATCHES 5
typedef struct ks_seg_producer {
        int64_t id;
        int16_t epoch;
        int nbatches;
        struct {
                int32_t first_seq, last_seq;
                int64_t first_offset, last_offset;
        } batches[KS_SEG_PRODUCER_BATCHES]; /* oldest first */
        int64_t seg_base;    /* loaded: the segment it came from */
        int64_t seg_created_ms;
} ks_seg_producer_t;

/* One durable segment of a partition (its .kfs and .index objects). */
typedef struct ks_seg_meta {
        int64_t base_offset;
        int64_t last_offset;          /* absolute offset of the last record */
        int64_t size_bytes;           /* size of the .kfs object */
        int64_t index_size_bytes;
        int64_t max_timestamp;
        int64_t max_timestamp_offset;
        int64_t created_at_ms;
        int32_t record_count;
        int32_t leader_epoch;         /* the epoch it was written at: part of its object keys */
        /* Commit only (NULL in a loaded manifest): the producers that wrote
         * in it, stored with its record. */
        const ks_seg_producer_t *producers;
        int nproducers;
} ks_seg_meta_t;

/* One entry of a partition's leader-epoch history: leader epoch `epoch`
 * began at offset `start_offset` (PartitionState.epoch_history). */
typedef struct ks_epoch_entry {
        int32_t epoch;
        int64_t start_offset;
} ks_epoch_entry_t;

#define KS_EPOCH_HISTORY_MAX 64 /* entries kept (the newest); the cluster module keeps no more */

/* What a partition's owner recovers from the store. */
typedef struct ks_partition_meta {
        int64_t next_offset;   /* committed end offset (high watermark) */
        ks_seg_meta_t *segs;   /* sorted by base offset; malloc'ed, caller frees */
        int nsegs;
        /* From the PartitionState: the current leader epoch and the epoch
         * history (epochs and start offsets ascending; the newest
         * KS_EPOCH_HISTORY_MAX).  A partition without a PartitionState (its
         * topic written by a tool that only knows the config record) was
         * never owned: epoch 0 from offset 0. */
        int32_t leader_epoch;
        ks_epoch_entry_t history[KS_EPOCH_HISTORY_MAX];
        int nhistory;
        /* The producers recorded with the segments, in segment order
         * (oldest first; malloc'ed, caller frees). */
        ks_seg_producer_t *producers;
        int nproducers;
} ks_partition_meta_t;

/* Reads the committed end offset, the segment manifest and the leader-epoch
 * history of one partition in one range read.  KS_ERR__NOT_FOUND if the
 * partition has no next-offset record.  BLOCKING. */
ks_err_t ks_meta_partition_load(ks_meta_t *meta, const char *topic, int32_t partition, ks_partition_meta_t *out);

/* Frees what ks_meta_partition_load allocated (segs, producers). */
void ks_partition_meta_free(ks_partition_meta_t *pm);

/* Gives a partition of an existing topic that has no next-offset record
 * (its topic was written by a tool that only knows the config record) an
 * empty one: "0", created only if absent.  Only for partitions the topic's
 * config counts.  BLOCKING. */
ks_err_t ks_meta_partition_init(ks_meta_t *meta, const char *topic, int32_t partition);

/* Commits a flushed segment: in one transaction, if the committed end
 * offset still equals `expect_next`, sets it to seg->last_offset + 1 and
 * records the segment in the manifest.  KS_ERR__CONFLICT if someone else
 * moved the end offset (this broker must stop writing the partition).  A
 * retry of a commit that already applied (its earlier attempt's outcome was
 * unknown) succeeds: the end offset and the segment record are this
 * segment's; if the store cannot be read to tell, its error is returned
 * (retriable), never KS_ERR__CONFLICT.  `fence` (may be NULL): one more compare the transaction must
 * pass (cluster mode: this broker still holds the partition's ownership
 * lease); when it fails the commit is KS_ERR__CONFLICT too.  BLOCKING. */
ks_err_t ks_meta_partition_commit(ks_meta_t *meta, const char *topic, int32_t partition, int64_t expect_next,
                                  const ks_seg_meta_t *seg, const ks_kv_cmp_t *fence);

/* Removes segments from a partition's manifest (retention), in
 * transactions of at most KS_KV_TXN_MAX_OPS.  BLOCKING. */
ks_err_t ks_meta_partition_trim(ks_meta_t *meta, const char *topic, int32_t partition, const int64_t *bases, int n);

/* --- producer ids ------------------------------------------------------------------- */

#define KS_PRODUCER_IDS_KEY "/kafscale/producer-ids/next" /* decimal: the next id never handed out */

/* Reserves `count` producer ids for this broker, unique across every broker
 * sharing the store: [*first, *first + count).  Compare-and-swap on
 * KS_PRODUCER_IDS_KEY (absent: ids start at 0).  KS_ERR__CONFLICT if the
 * key kept changing under contention; KS_ERR__CORRUPT if it does not hold a
 * number.  BLOCKING. */
ks_err_t ks_meta_producer_ids_reserve(ks_meta_t *meta, int64_t count, int64_t *first);

/* --- consumer groups ------------------------------------------------------------ */

/* Writes a group's metadata record (protobuf ConsumerGroup, encoded by the
 * coordinator) at /kafscale/consumers/{group}/metadata.  `fence` (NULL:
 * none) is the coordinator's compare (cluster mode: its group lease, see
 * ks_cluster_group_fence_cmp), evaluated in the write's own transaction:
 * if it does not hold nothing is written and KS_ERR__CONFLICT is returned.
 * KS_ERR__INVALID_ARG for a group id that cannot be a key segment (empty,
 * '/', too long).  BLOCKING. */
ks_err_t ks_meta_group_put(ks_meta_t *meta, const char *group, const uint8_t *buf, size_t len,
                           const ks_kv_cmp_t *fence);

/* Deletes a group's metadata record (0 also when there was none); `fence`
 * as for ks_meta_group_put.  BLOCKING. */
ks_err_t ks_meta_group_delete(ks_meta_t *meta, const char *group, const ks_kv_cmp_t *fence);

/* Reads one group's metadata record (one key read): *buf is malloc'ed (the
 * caller frees it), *len its length.  KS_ERR__NOT_FOUND if the group has no
 * record, KS_ERR__INVALID_ARG as above, or the store's error (*buf NULL).
 * BLOCKING. */
ks_err_t ks_meta_group_get(ks_meta_t *meta, const char *group, uint8_t **buf, size_t *len);

/* Calls cb for every stored group record (stops early on non-zero).
 * BLOCKING. */
ks_err_t ks_meta_groups_load(ks_meta_t *meta, int (*cb)(void *opaque, const char *group, const uint8_t *buf, size_t len),
                             void *opaque);

/* Encoding of the records, exposed for tests and tools.  Encode returns a
 * malloc'ed buffer; decode fills *t and returns 0 or KS_ERR__CORRUPT. */
ks_err_t ks_meta_topic_encode(const ks_topic_t *t, uint8_t **buf, size_t *len);
ks_err_t ks_meta_topic_decode(const uint8_t *buf, size_t len, ks_topic_t *t);

#endif
