/*
 * group_route.h — which broker serves a group-keyed request, and the fence
 * of the writes it makes (private to the group handlers: groups.c, which
 * implements it, offsets.c, group_admin.c and lag.c).
 *
 * Embedded and memory mode: this broker coordinates every group; requests
 * are served here and writes are not fenced.
 *
 * Cluster mode (KAFSCALE_ETCD_ENDPOINTS set; docs/cluster.md, "Consumer
 * groups"): each group has one coordinator.  The broker holding the group's
 * lease serves it; the broker the placement names acquires the lease first
 * (ks_cluster_acquire_group, which waits for the cluster module's thread,
 * so only on a worker) and loads the group; every other broker answers
 * NOT_COORDINATOR.  Writes of group state carry the compare
 * ks_cluster_group_fence_cmp gives; a refused compare means this broker no
 * longer coordinates the group (NOT_COORDINATOR; the group is dropped from
 * memory).  The cluster module (b->cluster) starts after the group
 * coordinator and stops before it: until it runs, and once it stopped,
 * group requests get COORDINATOR_NOT_AVAILABLE (retriable).
 */
#ifndef KS_BROKER_GROUP_ROUTE_H
#define KS_BROKER_GROUP_ROUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "broker/broker.h"

/* ks_group_route(): serve after ks_group_route_blocking() on a worker. */
#define KS_GROUP_ROUTE_ACQUIRE (-1)

/* True in cluster mode (decided by the configuration, so known before the
 * cluster module starts).  Any thread. */
bool ks_group_cluster_mode(const ks_broker_t *b);

/* The running cluster module, NULL outside cluster mode and while it is not
 * running.  Any thread. */
ks_cluster_t *ks_group_cluster(ks_broker_t *b);

/* The groups ListGroups lists here, sorted by id: every group in memory in
 * embedded mode; in cluster mode those loaded here plus the stored groups
 * placed here.  Count (free with ks_group_summaries_free), or -1 if memory
 * ran out; *err a listing error code (the list may then be partial).
 * BLOCKING in cluster mode. */
int ks_broker_list_groups(ks_broker_t *b, ks_group_summary_t **out, int16_t *err);

/* Where to serve a request for `group`, decided without blocking (any
 * thread): 0 = here, now; KS_GROUP_ROUTE_ACQUIRE = this broker should
 * coordinate the group but has not taken or loaded it yet (call
 * ks_group_route_blocking() on a worker); otherwise the Kafka error to
 * answer (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE).  An invalid group id
 * is served here: the handler answers INVALID_GROUP_ID, which Kafka checks
 * before the coordinator. */
int ks_group_route(ks_broker_t *b, ks_str_t group);

/* As ks_group_route(), and when this broker should coordinate the group,
 * acquires its lease and loads it: 0 = serve here, or the Kafka error
 * (NOT_COORDINATOR: another broker holds or is placed for it;
 * COORDINATOR_NOT_AVAILABLE: the store or the cluster module did not answer
 * in time — the client retries).  BLOCKING: workers only. */
int16_t ks_group_route_blocking(ks_broker_t *b, ks_str_t group);

/* For requests that only look a group up (DescribeGroups, OffsetFetch,
 * DeleteGroups): as ks_group_route_blocking(), except that a group placed
 * here that this broker does not hold and that does not exist in the store
 * (no group record, no committed offset) is not acquired: 0 with *absent
 * set, and the handler answers as for an unknown group — so looking up
 * groups that do not exist leaves no lease keys behind.  BLOCKING: workers
 * only. */
int16_t ks_group_route_lookup(ks_broker_t *b, ks_str_t group, bool *absent);

/* The fence of one write of group state.  Filled by ks_group_fence(). */
typedef struct ks_group_fence {
        char key[KS_GROUPS_FENCE_KEY_MAX];
        ks_kv_cmp_t cmp;
        const ks_kv_cmp_t *use; /* what to pass to the meta function: NULL (embedded mode) or &cmp */
} ks_group_fence_t;

/* Fills *f for a write of `group`'s state: 0, or NOT_COORDINATOR when this
 * broker no longer holds the group (write nothing).  Non-blocking. */
int16_t ks_group_fence(ks_broker_t *b, const char *group, ks_group_fence_t *f);

/* After a write made with *f failed with `err`: true if the store refused
 * the fence (KS_ERR__CONFLICT) — the caller answers NOT_COORDINATOR, and
 * the group is dropped from this broker's memory (ks_groups_fenced).
 * Non-blocking. */
bool ks_group_write_fenced(ks_broker_t *b, const char *group, const ks_group_fence_t *f, ks_err_t err);

#endif
