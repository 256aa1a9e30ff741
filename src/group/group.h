/*
 * group.h — the consumer group coordinator (Kafka's classic protocol).
 *
 * Groups live in memory, guarded by one coordinator lock; their state
 * machine is Kafka's (Empty, PreparingRebalance, CompletingRebalance,
 * Stable, Dead; see docs/groups.md).  JoinGroup and SyncGroup requests that
 * must wait are parked in the group and answered later from whichever thread
 * completes the phase (ks_req_respond() is thread-safe).  A coordinator
 * thread ("ks-groups") expires sessions, ends join phases at their
 * rebalance timeout, and writes changed group metadata to the metadata
 * store (coalesced: never one write per heartbeat).
 *
 * Two modes, chosen by ks_groups_config_t.owns:
 *  - owns == NULL (embedded and memory mode): this broker coordinates every
 *    group; ks_groups_open loads every stored group.
 *  - owns != NULL (cluster mode): this broker coordinates a group only
 *    between ks_groups_load (called when it acquires the group) and
 *    ks_groups_unload (hand-over or loss) or a fenced write; requests for
 *    any other group are answered NOT_COORDINATOR.  Every write of group
 *    state carries the compare ks_groups_config_t.fence gives.
 *
 * Threads: the request handlers may be called from any thread (I/O loops
 * or workers: nothing here uses a loop's timers or ks_loop_current());
 * nothing blocks on I/O while holding the lock.  Functions marked BLOCKING
 * talk to the store.  All record writes of one coordinator (coalesced
 * persistence, unload, delete) are serialised in the order their snapshots
 * were taken, so an older snapshot never overwrites a newer one.
 */
#ifndef KS_GROUP_GROUP_H
#define KS_GROUP_GROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meta/kv.h"
#include "meta/metadata.h"
#include "net/server.h"
#include "util/bytes.h"
#include "util/err.h"

typedef struct ks_groups ks_groups_t;

/* Room the fence callback gets for its compare's key. */
#define KS_GROUPS_FENCE_KEY_MAX 320

typedef struct ks_groups_config {
        int32_t min_session_timeout_ms;     /* Kafka: group.min.session.timeout.ms = 6000 */
        int32_t max_session_timeout_ms;     /* Kafka: group.max.session.timeout.ms = 1800000 */
        int32_t initial_rebalance_delay_ms; /* Kafka: group.initial.rebalance.delay.ms = 3000 */

        /* Cluster mode (all NULL otherwise).  owns: does this broker hold
         * the group now (ks_cluster_owns_group)?  Decides the mode (above)
         * and whether ks_groups_load may install what it read.  fence: the
         * compare that fences a write of the group's state, true while this
         * broker holds the group (ks_cluster_group_fence_cmp); its number
         * names the ownership term; NULL: writes are not fenced.  Both are
         * called from any thread, possibly with the coordinator lock held:
         * they must not block nor call into this module.  `opaque` is
         * passed to both. */
        bool (*owns)(void *opaque, const char *group);
        bool (*fence)(void *opaque, const char *group, char *keybuf, size_t keylen, ks_kv_cmp_t *cmp);
        void *opaque;
} ks_groups_config_t;

/* Starts the coordinator thread; in embedded mode (cfg->owns == NULL) first
 * loads every persisted group (as an Empty group with its generation).
 * `meta` is borrowed.  BLOCKING. */
ks_err_t ks_groups_open(const ks_groups_config_t *cfg, ks_meta_t *meta, ks_groups_t **out);

/* Writes what changed (fenced) and frees; parked requests are answered
 * COORDINATOR_NOT_AVAILABLE.  BLOCKING. */
void ks_groups_close(ks_groups_t *g);

/* Request handlers (any thread; may park the request). */
void ks_groups_join(ks_groups_t *g, ks_req_t *req);
void ks_groups_sync(ks_groups_t *g, ks_req_t *req);
void ks_groups_heartbeat(ks_groups_t *g, ks_req_t *req);
void ks_groups_leave(ks_groups_t *g, ks_req_t *req);

/* Answers a decoded JoinGroup, SyncGroup, Heartbeat or LeaveGroup request
 * with `err` and nothing else, as Apache Kafka answers when it does not
 * serve the group (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE): the
 * top-level error code, JoinGroup with generation -1 and the request's
 * member id, LeaveGroup v3+ with no member results.  Any thread. */
void ks_groups_refuse(ks_req_t *req, int16_t err);

/* --- cluster mode: which groups this broker coordinates ----------------------- */

/* True if requests for `group` are served here now: always in embedded
 * mode; in cluster mode between ks_groups_load and the group's unload.
 * Non-blocking. */
bool ks_groups_coordinates(ks_groups_t *g, ks_str_t group);

/* Starts coordinating `group`: reads its record (one key read) and installs
 * it as an Empty group with the stored generation (its members rejoin), or
 * as a group not known yet when it has no record (its first join or
 * standalone commit creates it).  Installed only if cfg->owns still says
 * so once the read returns, with the term cfg->fence names then.  0 if it
 * is coordinated now (also when it already was: nothing is read; embedded
 * mode: always 0); KS_ERR_NOT_COORDINATOR if this broker does not hold it;
 * KS_ERR__INVALID_ARG for an invalid group id; or the store's error
 * (nothing installed: a later call tries again).  A corrupt record is
 * logged and the group starts unknown.  BLOCKING; any thread (the cluster
 * module's group_acquired hook, or a request that finds the group held but
 * not loaded). */
ks_err_t ks_groups_load(ks_groups_t *g, const char *group);

/* Stops coordinating `group` (cluster mode): its parked JoinGroup and
 * SyncGroup requests, and every later request, are answered
 * NOT_COORDINATOR.  With `persist` (hand-over: the lease still holds) the
 * group record is written first if it changed since its last write, fenced,
 * then the group is dropped; without (the lease is gone) nothing is
 * written.  No-op for a group not coordinated here.  BLOCKING with persist
 * (one store write). */
void ks_groups_unload(ks_groups_t *g, const char *group, bool persist);

/* A write of `group`'s state under the fence whose compare number is `term`
 * was refused by the store (the compare failed): this broker no longer
 * coordinates the group.  Drops it as ks_groups_unload(..., false) does,
 * but only while it is still coordinated in that same term (a later
 * acquisition is left alone).  Non-blocking. */
void ks_groups_fenced(ks_groups_t *g, const char *group, int64_t term);

/* Checks an OffsetCommit against the group, Kafka's rules: generation -1
 * with an empty member id is an admin/standalone commit (allowed unless
 * the group has live members... see group.c); otherwise the member must
 * exist and the generation match.  Creates the group (Empty) if it does not
 * exist and the commit is standalone.  Returns 0 or the Kafka error
 * (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS,
 * FENCED_INSTANCE_ID, COORDINATOR_NOT_AVAILABLE). */
ks_err_t ks_groups_check_commit(ks_groups_t *g, ks_str_t group, ks_str_t member_id, ks_str_t instance_id,
                                int32_t generation);

/* --- ops APIs ----------------------------------------------------------------- */

/* One listed group (ListGroups). Strings are malloc'ed with the array. */
typedef struct ks_group_summary {
        char *id;
        char *protocol_type;
        const char *state; /* Kafka's name: "Empty", "Stable", ... (static) */
} ks_group_summary_t;

/* Snapshot of every group in memory (cluster mode: those coordinated
 * here), sorted by id; free with ks_group_summaries_free.  Returns the
 * count, or -1 if memory ran out. */
int ks_groups_list(ks_groups_t *g, ks_group_summary_t **out);
void ks_group_summaries_free(ks_group_summary_t *s, int n);

/* Kafka's AclOperation bits allowed on a group (no authorizer): READ,
 * DESCRIBE, DELETE. */
#define KS_GROUP_AUTHORIZED_OPS ((1 << 3) | (1 << 6) | (1 << 8))

/* Fills a DescribeGroups entry (ks_DescribeGroupsResponse_DescribedGroup)
 * for `group`, copying what it needs into `arena`.  An unknown group is
 * described as Kafka does: state "Dead", no members, error 0; a group not
 * coordinated here (cluster mode) has error NOT_COORDINATOR and state "". */
void ks_groups_describe(ks_groups_t *g, ks_str_t group, bool include_ops, ks_arena_t *arena, void *described);

/* DeleteGroups, step 1 (non-blocking): a group with members gets
 * NON_EMPTY_GROUP, an unknown one GROUP_ID_NOT_FOUND, one this broker does
 * not coordinate (cluster mode) NOT_COORDINATOR; otherwise it is marked
 * Dead (joins get COORDINATOR_NOT_AVAILABLE) and 0 is returned.  `known`
 * tells whether the coordinator had it in memory. */
ks_err_t ks_groups_delete_begin(ks_groups_t *g, ks_str_t group, bool *known);
/* Step 2, after its committed offsets are gone from the store: deletes the
 * group's record (fenced, in order with the coordinator's other record
 * writes) and forgets the group.  0; KS_ERR_NOT_COORDINATOR when this
 * broker no longer holds the group or the store refused the fence (the
 * group is dropped as by ks_groups_fenced); or the store's error (the group
 * is Empty again, as after ks_groups_delete_abort).  BLOCKING. */
ks_err_t ks_groups_delete_finish(ks_groups_t *g, ks_str_t group);
/* Step 2 not reached (deleting the offsets failed): a group marked Dead in
 * step 1 is Empty again.  Non-blocking. */
void ks_groups_delete_abort(ks_groups_t *g, ks_str_t group);

/* Group names are Kafka-legal and non-empty; INVALID_GROUP_ID otherwise. */
ks_err_t ks_group_id_check(ks_str_t group);

#endif
