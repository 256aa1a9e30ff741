/*
 * offsets.h — committed consumer offsets in the metadata store (meta/kv.h).
 *
 * Key layout (SYSTEM.md §6, the same as KafScale's):
 *
 *     /kafscale/consumers/{group}/offsets/{topic}/{partition}
 *
 * Value: a JSON object, encoded and parsed with json-c:
 *
 *     {"offset":42,"metadata":"","committed_at":"2026-01-02T03:04:05.678Z","leader_epoch":3}
 *
 * "offset", "metadata" and "committed_at" (RFC 3339, UTC) are what the Go
 * implementation writes; "leader_epoch" is ours (-1 when the client did not
 * send one).  Readers ignore keys they do not know and accept a missing
 * "leader_epoch" (-1), "metadata" ("") or "committed_at" (-1).
 *
 * Names are checked before they become keys: the group with
 * ks_offsets_group_invalid(), topics with ks_topic_name_invalid().  Nothing
 * here knows about Kafka's group protocol; the handlers (broker/offsets.c)
 * decide who may commit.
 *
 * Threads: every function that takes a ks_kv_t is BLOCKING (it talks to the
 * store) and must run on a worker thread, never on an I/O loop.  All
 * functions are reentrant; the store serialises concurrent writers.
 *
 * Ownership: inputs are borrowed for the duration of the call.  A
 * ks_offset_list_t filled by ks_offsets_fetch() owns its memory and is
 * released with ks_offset_list_free().
 */
#ifndef KS_META_OFFSETS_H
#define KS_META_OFFSETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meta/kv.h"
#include "util/bytes.h"
#include "util/err.h"

/* Longest group id accepted, in bytes. */
#define KS_GROUP_ID_MAX 249 /* as topic names, and the coordinator's limit */

/* Kafka's offset.metadata.max.bytes default: a commit whose metadata is
 * longer gets OFFSET_METADATA_TOO_LARGE (checked by the handler). */
#define KS_OFFSET_METADATA_MAX 4096

/* etcd's default --max-txn-ops: a commit of more items is split into
 * several transactions of at most this many puts. */
#define KS_OFFSETS_TXN_MAX_OPS 128

/* A transaction is also closed once its keys and values reach this many
 * bytes, so that it stays well under etcd's request size limit (1.5 MiB by
 * default, and values travel base64-encoded through the JSON gateway). */
#define KS_OFFSETS_TXN_MAX_BYTES (512 * 1024)

/* One offset to commit.  Views are borrowed for the call. */
typedef struct ks_offset_commit {
        ks_str_t topic;       /* a valid topic name */
        int32_t partition;    /* >= 0 */
        int64_t offset;
        int32_t leader_epoch; /* -1: unknown */
        ks_str_t metadata;    /* null is stored as "" (as Kafka does) */
} ks_offset_commit_t;

/* One committed offset as read back. */
typedef struct ks_offset_entry {
        char *topic;             /* NUL-terminated */
        int32_t partition;
        int64_t offset;          /* -1 when err != 0 */
        int32_t leader_epoch;    /* -1 when not recorded */
        char *metadata;          /* NUL-terminated; may hold NUL bytes, see metadata_len */
        size_t metadata_len;
        int64_t committed_at_ms; /* Unix ms; -1 when absent or unparseable */
        ks_err_t err;            /* 0, or KS_ERR__CORRUPT: the value is not a
                                  * readable offset record (logged) */
} ks_offset_entry_t;

/* The committed offsets of one group, sorted by topic then partition. */
typedef struct ks_offset_list {
        ks_offset_entry_t *items;
        size_t count;
        int64_t revision; /* store revision of the read */
} ks_offset_list_t;

/* NULL if `group` may be used as a group id in a key, else the reason.
 * Accepted: 1..KS_GROUP_ID_MAX bytes of printable ASCII other than '/', or
 * well-formed UTF-8 sequences beyond ASCII.  Rejected: empty, too long, '/',
 * control characters (C0 including NUL, DEL, C1), malformed UTF-8.  (Apache
 * Kafka accepts any string; here the id must stay one printable path
 * segment of the key.)
 * Non-blocking. */
const char *ks_offsets_group_invalid(ks_str_t group);

/* Writes every item.  Items for the same topic-partition collapse to the
 * last one.  Up to KS_OFFSETS_TXN_MAX_OPS items (and KS_OFFSETS_TXN_MAX_BYTES)
 * go in one transaction, so a commit of at most 128 items is atomic; a
 * larger one is split into several transactions, each atomic on its own,
 * written in order: if one fails, the ones before it stay written and the
 * ones after it are not attempted (committing the same offsets again is
 * harmless, so the caller simply reports the error and the client retries).
 * committed_at is the system clock's wall time.  `fence` (NULL: none) is the
 * group coordinator's compare (cluster mode: ks_cluster_group_fence_cmp),
 * added to every transaction: when it does not hold, that transaction
 * writes nothing and KS_ERR__CONFLICT is returned.
 * Returns 0; KS_ERR__INVALID_ARG (invalid group, topic name, partition or
 * metadata longer than 32767 bytes; nothing is written); KS_ERR__CONFLICT;
 * KS_ERR__NOMEM; or the store's error.  n == 0 writes nothing.  BLOCKING. */
ks_err_t ks_offsets_commit(ks_kv_t *kv, const char *group, const ks_offset_commit_t *items, int n,
                           const ks_kv_cmp_t *fence);

/* Reads the committed offsets of `group` in one range read: every topic
 * when `topic` is NULL, else only that topic.  Fills *out (caller frees it
 * with ks_offset_list_free, also after an error).  A group or topic with no
 * commits gives an empty list.  Keys under the group's prefix that are not
 * offset records are skipped (logged); a record whose value cannot be
 * decoded is returned with err = KS_ERR__CORRUPT rather than dropped, so
 * that a consumer is not silently reset.
 * Returns 0, KS_ERR__INVALID_ARG (invalid group or topic name),
 * KS_ERR__NOMEM or the store's error.  BLOCKING. */
ks_err_t ks_offsets_fetch(ks_kv_t *kv, const char *group, const char *topic, ks_offset_list_t *out);

void ks_offset_list_free(ks_offset_list_t *list);

/* The entry for topic/partition in a fetched list (binary search), or NULL.
 * Non-blocking. */
const ks_offset_entry_t *ks_offset_list_find(const ks_offset_list_t *list, ks_str_t topic, int32_t partition);

/* Deletes every committed offset of the group (the prefix
 * /kafscale/consumers/{group}/offsets/) in one operation, with `fence` (as
 * for ks_offsets_commit: KS_ERR__CONFLICT and nothing deleted when it does
 * not hold).  The group's other records (its metadata key) are not
 * touched.  0 also when there was nothing to delete.  BLOCKING. */
ks_err_t ks_offsets_delete_group(ks_kv_t *kv, const char *group, const ks_kv_cmp_t *fence);

/* Deletes one committed offset (OffsetDelete), with `fence` as above.  0
 * also when there was none.  BLOCKING. */
ks_err_t ks_offsets_delete(ks_kv_t *kv, const char *group, const char *topic, int32_t partition,
                           const ks_kv_cmp_t *fence);

/* Deletes the committed offsets of `topic` in every group (what Kafka does
 * when a topic is deleted): one range read of /kafscale/consumers/, then one
 * range delete per group that has offsets for the topic, in transactions of
 * at most KS_OFFSETS_TXN_MAX_OPS.  Not fenced: it follows the topic's
 * deletion, not a coordinator's decision.  BLOCKING. */
ks_err_t ks_offsets_delete_topic(ks_kv_t *kv, const char *topic);

/* True if the group has at least one committed offset.  A store error
 * counts as true (logged), so that a caller deciding whether an Empty group
 * still exists never drops one because the store was briefly unreachable.
 * An invalid group id gives false.  BLOCKING. */
bool ks_offsets_group_has_any(ks_kv_t *kv, const char *group);

/* The JSON value stored for one offset (exposed for tests and tools):
 * malloc'ed, NUL-terminated, length in *len.  Decode fills the out-params
 * (any may be NULL; *metadata is malloc'ed) and returns 0 or
 * KS_ERR__CORRUPT (not a JSON object, or no integer "offset"). */
ks_err_t ks_offsets_value_encode(int64_t offset, int32_t leader_epoch, ks_str_t metadata, int64_t committed_at_ms,
                                 char **json, size_t *len);
ks_err_t ks_offsets_value_decode(const uint8_t *buf, size_t len, int64_t *offset, int32_t *leader_epoch,
                                 char **metadata, size_t *metadata_len, int64_t *committed_at_ms);

/* Parses an RFC 3339 timestamp ("2026-01-02T03:04:05Z", any number of
 * fractional digits, "Z" or a "+hh:mm"/"-hh:mm" offset) into Unix ms.
 * Returns 0 or -1 if it does not parse.  Non-blocking. */
int ks_offsets_parse_rfc3339(const char *s, size_t len, int64_t *ms);

#endif
