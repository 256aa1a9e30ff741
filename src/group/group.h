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
 * Threads: handlers call in from I/O threads; nothing here blocks on I/O
 * while holding the lock.
 */
#ifndef KS_GROUP_GROUP_H
#define KS_GROUP_GROUP_H

#include <stdbool.h>
#include <stdint.h>

#include "meta/metadata.h"
#include "net/server.h"
#include "util/bytes.h"
#include "util/err.h"

typedef struct ks_groups ks_groups_t;

typedef struct ks_groups_config {
        int32_t min_session_timeout_ms;     /* Kafka: group.min.session.timeout.ms = 6000 */
        int32_t max_session_timeout_ms;     /* Kafka: group.max.session.timeout.ms = 1800000 */
        int32_t initial_rebalance_delay_ms; /* Kafka: group.initial.rebalance.delay.ms = 3000 */
} ks_groups_config_t;

/* Loads the persisted groups (as Empty groups with their generation) and
 * starts the coordinator thread.  `meta` is borrowed.  BLOCKING. */
ks_err_t ks_groups_open(const ks_groups_config_t *cfg, ks_meta_t *meta, ks_groups_t **out);
void ks_groups_close(ks_groups_t *g);

/* Request handlers (I/O thread; may park the request). */
void ks_groups_join(ks_groups_t *g, ks_req_t *req);
void ks_groups_sync(ks_groups_t *g, ks_req_t *req);
void ks_groups_heartbeat(ks_groups_t *g, ks_req_t *req);
void ks_groups_leave(ks_groups_t *g, ks_req_t *req);

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

/* Snapshot of every group, sorted by id; free with ks_group_summaries_free.
 * Returns the count, or -1 if memory ran out. */
int ks_groups_list(ks_groups_t *g, ks_group_summary_t **out);
void ks_group_summaries_free(ks_group_summary_t *s, int n);

/* Fills a DescribeGroups entry (ks_DescribeGroupsResponse_DescribedGroup)
 * for `group`, copying what it needs into `arena`.  An unknown group is
 * described as Kafka does: state "Dead", no members, error 0. */
void ks_groups_describe(ks_groups_t *g, ks_str_t group, bool include_ops, ks_arena_t *arena, void *described);

/* DeleteGroups, step 1 (non-blocking): a group with members gets
 * NON_EMPTY_GROUP, an unknown one GROUP_ID_NOT_FOUND; otherwise it is
 * marked Dead (joins get COORDINATOR_NOT_AVAILABLE) and 0 is returned.
 * `known` tells whether the coordinator had it in memory. */
ks_err_t ks_groups_delete_begin(ks_groups_t *g, ks_str_t group, bool *known);
/* Step 2, after its records are gone from the store: forget it. */
void ks_groups_delete_finish(ks_groups_t *g, ks_str_t group);

/* Group names are Kafka-legal and non-empty; INVALID_GROUP_ID otherwise. */
ks_err_t ks_group_id_check(ks_str_t group);

#endif
