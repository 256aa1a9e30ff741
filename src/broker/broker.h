/*
 * broker.h — the broker: wires configuration, metadata store, worker pool
 * and network server together, and dispatches requests to the API handlers.
 *
 * Request flow: server (net/server.c) frames a request and calls
 * ks_broker_dispatch() on the connection's I/O thread; the dispatcher checks
 * the API key and version against the handler table (dispatch.c, the single
 * source of what ApiVersions advertises), decodes the body into the request
 * arena and calls the handler.  A handler answers at once on the I/O thread,
 * or moves blocking work to the worker pool and answers from there
 * (ks_req_respond() is thread-safe).
 */
#ifndef KS_BROKER_BROKER_H
#define KS_BROKER_BROKER_H

#include <pthread.h>

#include "broker/topic_sync.h"
#include "cluster/cluster.h"
#include "config/config.h"
#include "group/group.h"
#include "log/log.h"
#include "meta/kv.h"
#include "meta/metadata.h"
#include "net/server.h"
#include "net/workq.h"

typedef struct ks_broker {
        const ks_config_t *cfg; /* borrowed; outlives the broker */
        ks_kv_t *kv;            /* owned */
        ks_meta_t *meta;        /* owned */
        ks_workq_t *workq;      /* owned: blocking metadata work */
        ks_server_t *server;    /* owned */
        ks_objstore_t *store;   /* owned: where records are durable */
        ks_log_t *log;          /* owned: partition logs */
        ks_topic_sync_t *topics; /* owned: keeps `log` in step with the topic registry */
        ks_cluster_t *cluster;  /* owned, cluster mode only: membership and ownership of partitions and
                                 * groups (NULL in embedded and memory mode: this broker serves all) */
        ks_log_config_t log_cfg;
        ks_groups_t *groups;    /* owned: group coordinator */
        struct ks_lag *lag;     /* owned: consumer lag metrics (broker/lag.h); NULL when off */
        pthread_mutex_t own_mu; /* serialises changes of partition ownership (ownership.c) */
        bool own_closed;        /* under own_mu: shutting down, the reconcile pass does nothing */
        const char *mode;       /* "embedded", "memory" or "cluster" */
        volatile int stopping;  /* set at shutdown: new requests are refused */
} ks_broker_t;

/* Opens the backends and starts serving.  0, or -1 after logging what is
 * wrong and how to fix it. */
int ks_broker_start(ks_broker_t *b, const ks_config_t *cfg);

/* Stops serving: finishes queued blocking work, closes connections, closes
 * the backends. */
void ks_broker_stop(ks_broker_t *b);

/* The live brokers, sorted by id, in a malloc'ed array (count returned,
 * -1 if memory ran out): those registered in cluster mode — always
 * including this one — else this broker alone.  Non-blocking. */
int ks_broker_live_brokers(ks_broker_t *b, ks_broker_info_t **out);

/* Rewrites the cluster snapshot (meta/metadata.h) after this broker
 * created, deleted or grew topics; a failure is logged, not returned (the
 * snapshot is a derived view).  BLOCKING. */
void ks_broker_write_snapshot(ks_broker_t *b);

/* --- cluster mode: partition ownership (ownership.c) ---------------------------- */

/* ks_cluster_hooks_t partition hooks (`opaque` is the broker), run on the
 * `ks-cluster` thread: the log serves the partition at `epoch` / flushes
 * and stops serving / stops serving at once. */
void ks_broker_partition_acquired(void *opaque, const char *topic, int32_t partition, int32_t epoch);
void ks_broker_partition_release(void *opaque, const char *topic, int32_t partition);
void ks_broker_partition_lost(void *opaque, const char *topic, int32_t partition, bool deleted);

/* The log's fence callback (ks_log_config_t.fence; `opaque` the broker). */
void ks_broker_fence(void *opaque, const char *topic, int32_t partition, int32_t epoch, char *keybuf, size_t keylen,
                     ks_kv_cmp_t *cmp);

/* ks_topic_synced_fn: partitions of `topic` (NULL: of every open topic)
 * that the cluster module says this broker owns but the log does not serve
 * at that epoch are taken now.  BLOCKING. */
void ks_broker_reconcile(void *opaque, const char *topic);

/* From here on the reconcile pass does nothing (shutdown, before the
 * cluster module stops). */
void ks_broker_ownership_close(ks_broker_t *b);

/* Cluster mode: waits until every partition of `topic` has a leader
 * (acquired at least once: leader epoch > 0), at most timeout_ms; returns
 * at once in other modes.  A new topic's partitions are acquired by their
 * brokers within moments of its creation; CreateTopics, CreatePartitions
 * and auto-creation wait for that, as Kafka waits for its leaders, so a
 * client that produces right after sees a leader.  BLOCKING. */
#define KS_AWAIT_LEADERS_MAX_MS 5000
void ks_broker_await_leaders(ks_broker_t *b, const char *topic, int64_t timeout_ms);

/* Does this broker serve partition `p` (named topic/partition) now: its
 * log serves it and, in cluster mode, the cluster module still says this
 * broker owns it at that epoch (false from the moment the session's TTL
 * passed, before any hook ran)?  *epoch (may be NULL): the serving epoch.
 * Non-blocking. */
bool ks_broker_owns(ks_broker_t *b, ks_partition_t *p, ks_str_t topic, int32_t partition, int32_t *epoch);

/* May this broker answer a request for partition `p` that carries
 * `current_leader_epoch` (-1: none)?  0; NOT_LEADER_OR_FOLLOWER if it does
 * not serve it (ks_broker_owns); UNKNOWN_LEADER_EPOCH / FENCED_LEADER_EPOCH
 * if the epoch is newer / older than the one it serves at (Kafka's
 * Partition.checkCurrentLeaderEpoch).  *epoch (may be NULL): the serving
 * epoch.  Non-blocking. */
ks_err_t ks_broker_leader_check(ks_broker_t *b, ks_partition_t *p, ks_str_t topic, int32_t partition,
                                int32_t current_leader_epoch, int32_t *epoch);

/* The leader epoch that wrote `offset` (the epoch history's largest entry
 * starting at or before it); -1 if the history does not reach back that
 * far.  Non-blocking. */
int32_t ks_broker_epoch_at(ks_partition_t *p, int64_t offset);

/* --- cluster mode: group coordination (groups.c) ------------------------------- */

/* Opens the group coordinator (b->groups) for this broker's mode: in
 * cluster mode groups are loaded when this broker acquires them and their
 * writes are fenced; otherwise every stored group is loaded at once.
 * 0, or -1 (logged).  BLOCKING. */
int ks_broker_groups_open(ks_broker_t *b);

/* ks_cluster_hooks_t group hooks (`opaque` is the broker), run on the
 * `ks-cluster` thread: load the group from the store / persist and unload
 * it (members are told NOT_COORDINATOR) / drop it at once. */
void ks_broker_group_acquired(void *opaque, const char *group);
void ks_broker_group_release(void *opaque, const char *group);
void ks_broker_group_lost(void *opaque, const char *group);

/* A request handler: owns `req` until it completes it. */
typedef void(ks_handler_fn)(ks_broker_t *b, ks_req_t *req);

/* One row of the handler table. */
typedef struct ks_handler {
        int16_t api_key;
        int16_t min_version, max_version; /* what we implement and advertise */
        ks_handler_fn *fn;
        /* Versions in [answer_from, min_version) are decoded and answered by
         * the handler with a clear error instead of closing the connection
         * (Produce v0-v2: UNSUPPORTED_VERSION per partition). */
        int16_t answer_from;
} ks_handler_t;

/* The handler table and the APIs advertised as unsupported (-1/-1). */
extern const ks_handler_t ks_handlers[];
extern const int ks_handlers_count;
extern const int16_t ks_unsupported_apis[];
extern const int ks_unsupported_apis_count;

const ks_handler_t *ks_handler_find(int16_t api_key);

/* Server entry point (ks_dispatch_fn). */
void ks_broker_dispatch(void *ctx, ks_req_t *req);

/* The server's completion hook (request metrics: count, errors, latency by
 * API key and version).  Runs on the request's I/O thread. */
void ks_broker_request_done(void *ctx, const ks_req_t *req, int outcome);

/* Runs fn(b, req) on the worker pool; on failure to queue, answers nothing
 * and closes the connection (logged). */
void ks_broker_offload(ks_broker_t *b, ks_req_t *req, ks_handler_fn *fn);

/* Handlers (one file per API family). */
void ks_handle_api_versions(ks_broker_t *b, ks_req_t *req);
void ks_handle_metadata(ks_broker_t *b, ks_req_t *req);
void ks_handle_create_topics(ks_broker_t *b, ks_req_t *req);
void ks_handle_delete_topics(ks_broker_t *b, ks_req_t *req);
void ks_handle_describe_cluster(ks_broker_t *b, ks_req_t *req);
void ks_handle_produce(ks_broker_t *b, ks_req_t *req);
void ks_handle_fetch(ks_broker_t *b, ks_req_t *req);
void ks_handle_list_offsets(ks_broker_t *b, ks_req_t *req);
void ks_handle_find_coordinator(ks_broker_t *b, ks_req_t *req);
void ks_handle_join_group(ks_broker_t *b, ks_req_t *req);
void ks_handle_sync_group(ks_broker_t *b, ks_req_t *req);
void ks_handle_heartbeat(ks_broker_t *b, ks_req_t *req);
void ks_handle_leave_group(ks_broker_t *b, ks_req_t *req);
void ks_handle_offset_commit(ks_broker_t *b, ks_req_t *req);
void ks_handle_offset_fetch(ks_broker_t *b, ks_req_t *req);
void ks_handle_list_groups(ks_broker_t *b, ks_req_t *req);
void ks_handle_offset_for_leader_epoch(ks_broker_t *b, ks_req_t *req);
void ks_handle_describe_configs(ks_broker_t *b, ks_req_t *req);
void ks_handle_alter_configs(ks_broker_t *b, ks_req_t *req);
void ks_handle_incremental_alter_configs(ks_broker_t *b, ks_req_t *req);
void ks_handle_create_partitions(ks_broker_t *b, ks_req_t *req);
void ks_handle_describe_groups(ks_broker_t *b, ks_req_t *req);
void ks_handle_delete_groups(ks_broker_t *b, ks_req_t *req);
void ks_handle_init_producer_id(ks_broker_t *b, ks_req_t *req);

/* Builds the ApiVersions response body into `resp` (arena-allocated arrays). */
void ks_api_versions_fill(ks_req_t *req, void *resp);

#endif
