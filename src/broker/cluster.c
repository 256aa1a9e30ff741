/*
 * cluster.c — Metadata and DescribeCluster: what the cluster looks like.
 *
 * Metadata answers from the in-memory topic registry on the I/O thread,
 * unless it must auto-create topics first; then the whole request moves to
 * the worker pool.
 *
 * Replicas: durability comes from object storage, not from copies on other
 * brokers, so every partition reports exactly one replica — its leader — in
 * ReplicaNodes and IsrNodes, whatever replication factor the topic was
 * created with (that value is kept in the topic's config).
 */
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

/* Kafka AclOperation codes allowed on a topic and on the cluster (there is
 * no authorizer: everything is allowed). */
#define TOPIC_OPS ((1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11))
#define CLUSTER_OPS ((1 << 4) | (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12))

/* Should this requested topic be auto-created? */
static bool wants_auto_create(const ks_broker_t *b, const ks_MetadataRequest *rq, int16_t version,
                              const ks_MetadataRequest_MetadataRequestTopic *t)
{
        bool allow = version < 4 || rq->AllowAutoTopicCreation;
        if (!allow || !b->cfg->auto_create_topics || ks_str_is_null(t->Name))
                return false;
        if (ks_topic_name_invalid(t->Name))
                return false;
        ks_topic_t tmp;
        return !ks_meta_topic_get(b->meta, t->Name, &tmp);
}

static bool all_topics_requested(const ks_MetadataRequest *rq, int16_t version)
{
        return rq->Topics.count < 0 || (version == 0 && rq->Topics.count == 0);
}

/* A partition's leader and leader epoch: in cluster mode the cluster
 * module's view (-1 while it has no leader: no live broker, or never
 * acquired yet); otherwise this broker, at the epoch its log serves. */
static int32_t partition_leader(ks_broker_t *b, const ks_topic_t *t, int32_t partition, int32_t *epoch)
{
        *epoch = 0;
        if (b->cluster) {
                int32_t leader = ks_cluster_partition_leader(b->cluster, t->name, partition, epoch);
                return *epoch > 0 ? leader : -1;
        }
        ks_partition_t *p = ks_log_partition(b->log, ks_str_c(t->name), partition);
        if (p) {
                ks_partition_serving(p, epoch);
                ks_partition_release(p);
        }
        return b->cfg->broker_id;
}

static void fill_topic(ks_broker_t *b, ks_req_t *req, ks_MetadataResponse_MetadataResponseTopic *mt,
                       const ks_topic_t *t, bool include_ops)
{
        mt->ErrorCode = 0;
        mt->Name = ks_arena_str(&req->arena, "%s", t->name);
        mt->TopicId = t->id;
        mt->IsInternal = false;
        if (include_ops)
                mt->TopicAuthorizedOperations = TOPIC_OPS;
        ks_MetadataResponse_MetadataResponsePartition *ps =
                ks_msg_new_array(&ks_MetadataResponse_MetadataResponsePartition_desc, t->partitions, &req->arena);
        int32_t *leaders = ks_array_new(sizeof(int32_t), t->partitions, &req->arena);
        if (!ps || (!leaders && t->partitions > 0)) {
                mt->ErrorCode = KS_ERR_UNKNOWN_SERVER_ERROR;
                return;
        }
        for (int32_t p = 0; p < t->partitions; p++) {
                int32_t epoch = 0;
                int32_t leader = partition_leader(b, t, p, &epoch);
                /* The only replica is the leader (object storage keeps the
                 * copies); a partition without a leader lists none. */
                leaders[p] = leader;
                int32_t nrep = leader >= 0 ? 1 : 0;
                ps[p].ErrorCode = leader >= 0 ? 0 : KS_ERR_LEADER_NOT_AVAILABLE;
                ps[p].PartitionIndex = p;
                ps[p].LeaderId = leader;
                ps[p].LeaderEpoch = leader >= 0 ? epoch : -1;
                ps[p].ReplicaNodes.items = &leaders[p];
                ps[p].ReplicaNodes.count = nrep;
                ps[p].IsrNodes.items = &leaders[p];
                ps[p].IsrNodes.count = nrep;
                ps[p].OfflineReplicas.count = 0;
        }
        mt->Partitions.items = ps;
        mt->Partitions.count = t->partitions;
}

/* Builds and sends the response (any thread). */
static void metadata_respond(ks_broker_t *b, ks_req_t *req)
{
        const ks_MetadataRequest *rq = req->request;
        int16_t version = req->hdr.RequestApiVersion;
        const ks_config_t *cfg = b->cfg;
        ks_MetadataResponse *resp = ks_msg_new(&ks_MetadataResponse_desc, &req->arena);
        ks_broker_info_t *live = NULL;
        int nlive = ks_broker_live_brokers(b, &live);
        ks_MetadataResponse_MetadataResponseBroker *brokers =
                nlive > 0 ? ks_msg_new_array(&ks_MetadataResponse_MetadataResponseBroker_desc, nlive, &req->arena)
                          : NULL;
        if (!resp || !brokers) {
                free(live);
                ks_req_close(req, "out of memory");
                return;
        }
        for (int i = 0; i < nlive; i++) {
                brokers[i].NodeId = live[i].id;
                brokers[i].Host = ks_arena_str(&req->arena, "%s", live[i].host);
                brokers[i].Port = live[i].port;
                brokers[i].Rack = live[i].rack[0] ? ks_arena_str(&req->arena, "%s", live[i].rack) : KS_STR_NULL;
        }
        /* Any broker executes admin requests; every broker names the same
         * one (the lowest live id) so clients agree on a "controller". */
        resp->ControllerId = nlive > 0 ? live[0].id : cfg->broker_id;
        free(live);
        resp->Brokers.items = brokers;
        resp->Brokers.count = nlive;
        resp->ClusterId = ks_str_c(ks_meta_cluster_id(b->meta));
        if (rq->IncludeClusterAuthorizedOperations)
                resp->ClusterAuthorizedOperations = CLUSTER_OPS;
        bool ops = rq->IncludeTopicAuthorizedOperations;

        if (all_topics_requested(rq, version)) {
                ks_topic_t *all = NULL;
                int n = ks_meta_topics_snapshot(b->meta, &all);
                ks_MetadataResponse_MetadataResponseTopic *mts =
                        n >= 0 ? ks_msg_new_array(&ks_MetadataResponse_MetadataResponseTopic_desc, n, &req->arena)
                               : NULL;
                if (!mts) {
                        free(all);
                        ks_req_close(req, "out of memory");
                        return;
                }
                for (int i = 0; i < n; i++)
                        fill_topic(b, req, &mts[i], &all[i], ops);
                free(all);
                resp->Topics.items = mts;
                resp->Topics.count = n;
                ks_req_respond(req, resp);
                return;
        }

        int32_t n = rq->Topics.count;
        ks_MetadataResponse_MetadataResponseTopic *mts =
                ks_msg_new_array(&ks_MetadataResponse_MetadataResponseTopic_desc, n, &req->arena);
        if (!mts) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < n; i++) {
                const ks_MetadataRequest_MetadataRequestTopic *q = &rq->Topics.items[i];
                ks_MetadataResponse_MetadataResponseTopic *mt = &mts[i];
                ks_topic_t t;
                mt->Name = q->Name;
                mt->TopicId = q->TopicId;
                mt->Partitions.count = 0;
                if (ks_str_is_null(q->Name)) {
                        if (version >= 10 && !ks_uuid_is_zero(&q->TopicId) &&
                            ks_meta_topic_get_by_id(b->meta, q->TopicId, &t))
                                fill_topic(b, req, mt, &t, ops);
                        else
                                mt->ErrorCode = KS_ERR_UNKNOWN_TOPIC_ID;
                } else if (ks_topic_name_invalid(q->Name)) {
                        mt->ErrorCode = KS_ERR_INVALID_TOPIC_EXCEPTION;
                } else if (ks_meta_topic_get(b->meta, q->Name, &t)) {
                        fill_topic(b, req, mt, &t, ops);
                } else {
                        mt->ErrorCode = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                }
        }
        resp->Topics.items = mts;
        resp->Topics.count = n;
        ks_req_respond(req, resp);
}

/* Worker: auto-create the missing topics, then answer. */
static void metadata_auto_create_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_MetadataRequest *rq = req->request;
        bool created = false;
        for (int32_t i = 0; i < rq->Topics.count; i++) {
                const ks_MetadataRequest_MetadataRequestTopic *q = &rq->Topics.items[i];
                if (!wants_auto_create(b, rq, req->hdr.RequestApiVersion, q))
                        continue;
                ks_topic_t t;
                memset(&t, 0, sizeof(t));
                memcpy(t.name, q->Name.ptr, (size_t)q->Name.len);
                t.partitions = b->cfg->default_partitions;
                t.replication_factor = 1;
                t.retention_ms = KS_DEFAULT_RETENTION_MS;
                t.retention_bytes = KS_DEFAULT_RETENTION_BYTES;
                t.segment_bytes = KS_DEFAULT_SEGMENT_BYTES;
                ks_err_t err = ks_meta_topic_create(b->meta, &t);
                if (!err)
                        err = ks_topic_sync_one(b->topics, t.name);
                if (err && err != KS_ERR__EXISTS)
                        ks_log_warn("topic_auto_create_failed", "topic=%s err=%s", t.name, ks_err_name(err));
                if (!err)
                        ks_broker_await_leaders(b, t.name, KS_AWAIT_LEADERS_MAX_MS);
                created |= err == 0;
        }
        if (created)
                ks_broker_write_snapshot(b);
        metadata_respond(b, req);
}

void ks_handle_metadata(ks_broker_t *b, ks_req_t *req)
{
        const ks_MetadataRequest *rq = req->request;
        int16_t version = req->hdr.RequestApiVersion;
        if (!all_topics_requested(rq, version)) {
                for (int32_t i = 0; i < rq->Topics.count; i++) {
                        if (wants_auto_create(b, rq, version, &rq->Topics.items[i])) {
                                ks_broker_offload(b, req, metadata_auto_create_work);
                                return;
                        }
                }
        }
        metadata_respond(b, req);
}

/* --- DescribeCluster ------------------------------------------------------- */

void ks_handle_describe_cluster(ks_broker_t *b, ks_req_t *req)
{
        const ks_DescribeClusterRequest *rq = req->request;
        const ks_config_t *cfg = b->cfg;
        ks_DescribeClusterResponse *resp = ks_msg_new(&ks_DescribeClusterResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        resp->EndpointType = rq->EndpointType;
        if (req->hdr.RequestApiVersion >= 1 && rq->EndpointType != 1) {
                /* Only broker endpoints exist: there are no controllers. */
                resp->ErrorCode = KS_ERR_UNSUPPORTED_ENDPOINT_TYPE;
                resp->ErrorMessage = KS_STR("Only broker endpoints (EndpointType 1) are available.");
                ks_req_respond(req, resp);
                return;
        }
        ks_broker_info_t *live = NULL;
        int nlive = ks_broker_live_brokers(b, &live);
        ks_DescribeClusterResponse_DescribeClusterBroker *br =
                nlive > 0 ? ks_msg_new_array(&ks_DescribeClusterResponse_DescribeClusterBroker_desc, nlive,
                                             &req->arena)
                          : NULL;
        if (!br) {
                free(live);
                ks_req_close(req, "out of memory");
                return;
        }
        for (int i = 0; i < nlive; i++) {
                br[i].BrokerId = live[i].id;
                br[i].Host = ks_arena_str(&req->arena, "%s", live[i].host);
                br[i].Port = live[i].port;
                br[i].Rack = live[i].rack[0] ? ks_arena_str(&req->arena, "%s", live[i].rack) : KS_STR_NULL;
        }
        resp->ControllerId = nlive > 0 ? live[0].id : cfg->broker_id; /* as Metadata */
        free(live);
        resp->Brokers.items = br;
        resp->Brokers.count = nlive;
        resp->ClusterId = ks_str_c(ks_meta_cluster_id(b->meta));
        if (rq->IncludeClusterAuthorizedOperations)
                resp->ClusterAuthorizedOperations = CLUSTER_OPS;
        ks_req_respond(req, resp);
}
