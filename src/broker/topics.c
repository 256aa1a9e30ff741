/*
 * topics.c — CreateTopics and DeleteTopics.
 *
 * Both talk to the metadata store, so the dispatcher's I/O thread hands them
 * to the worker pool at once; everything below runs on a worker thread.
 */
#include <stdio.h>
#include <string.h>

#include "broker/broker.h"
#include "broker/topic_config.h"
#include "meta/offsets.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

/* Live brokers (embedded mode: this one). */
static int live_broker_count(const ks_broker_t *b)
{
        (void)b;
        return 1;
}

static ks_str_t arena_msg(ks_req_t *req, const char *msg)
{
        return ks_arena_str(&req->arena, "%s", msg);
}

/* True if names[i] occurs elsewhere in the request. */
static bool duplicate_name(const ks_str_t *names, int32_t n, int32_t i)
{
        for (int32_t j = 0; j < n; j++)
                if (j != i && ks_str_eq(names[i], names[j]))
                        return true;
        return false;
}

/* Validates a manual replica assignment; fills partitions and RF. */
static ks_err_t check_assignments(const ks_broker_t *b, const ks_CreateTopicsRequest_CreatableTopic *ct,
                                  ks_topic_t *t, char *msg, size_t msglen)
{
        int32_t n = ct->Assignments.count;
        if (ct->NumPartitions != -1 || ct->ReplicationFactor != -1) {
                snprintf(msg, msglen, "Both numPartitions or replicationFactor and replicasAssignments were set. "
                                      "Both cannot be used at the same time.");
                return KS_ERR_INVALID_REQUEST;
        }
        int32_t rf = -1;
        for (int32_t i = 0; i < n; i++) {
                const ks_CreateTopicsRequest_CreatableReplicaAssignment *a = &ct->Assignments.items[i];
                bool seen = false;
                for (int32_t j = 0; j < n; j++)
                        if (ct->Assignments.items[j].PartitionIndex == i)
                                seen = true;
                if (!seen) {
                        snprintf(msg, msglen, "Partitions should be consecutive from 0 to %d", n - 1);
                        return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
                }
                if (a->BrokerIds.count <= 0 || (rf != -1 && a->BrokerIds.count != rf)) {
                        snprintf(msg, msglen, "All partitions should have the same number of replicas (at least 1)");
                        return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
                }
                rf = a->BrokerIds.count;
                for (int32_t r = 0; r < a->BrokerIds.count; r++) {
                        if (a->BrokerIds.items[r] != b->cfg->broker_id) {
                                snprintf(msg, msglen, "Unknown broker %d in replica assignment (live brokers: %d)",
                                         a->BrokerIds.items[r], b->cfg->broker_id);
                                return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
                        }
                        for (int32_t s = 0; s < r; s++)
                                if (a->BrokerIds.items[s] == a->BrokerIds.items[r]) {
                                        snprintf(msg, msglen, "Duplicate broker %d in replica assignment",
                                                 a->BrokerIds.items[r]);
                                        return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
                                }
                }
        }
        t->partitions = n;
        t->replication_factor = (int16_t)rf;
        return 0;
}

/* Validates one CreatableTopic into *t.  0 or a Kafka error with msg. */
static ks_err_t check_topic(const ks_broker_t *b, const ks_CreateTopicsRequest_CreatableTopic *ct, ks_topic_t *t,
                            char *msg, size_t msglen)
{
        const char *why = ks_topic_name_invalid(ct->Name);
        if (why) {
                snprintf(msg, msglen, "%s", why);
                return KS_ERR_INVALID_TOPIC_EXCEPTION;
        }
        memset(t, 0, sizeof(*t));
        memcpy(t->name, ct->Name.ptr, (size_t)ct->Name.len);
        ks_topic_config_defaults(t);
        ks_err_t err;
        if (ct->Assignments.count > 0) {
                if ((err = check_assignments(b, ct, t, msg, msglen)))
                        return err;
        } else {
                int32_t np = ct->NumPartitions == -1 ? b->cfg->default_partitions : ct->NumPartitions;
                if (np < 1) {
                        snprintf(msg, msglen, "Number of partitions must be larger than 0.");
                        return KS_ERR_INVALID_PARTITIONS;
                }
                if (np > KS_MAX_PARTITIONS) {
                        snprintf(msg, msglen, "Number of partitions %d is larger than the maximum of %d.", np,
                                 KS_MAX_PARTITIONS);
                        return KS_ERR_INVALID_PARTITIONS;
                }
                int32_t rf = ct->ReplicationFactor == -1 ? 1 : ct->ReplicationFactor;
                if (rf < 1) {
                        snprintf(msg, msglen, "Replication factor must be larger than 0, or -1 to use the default "
                                              "value.");
                        return KS_ERR_INVALID_REPLICATION_FACTOR;
                }
                if (rf > live_broker_count(b)) {
                        snprintf(msg, msglen, "Replication factor: %d larger than available brokers: %d.", rf,
                                 live_broker_count(b));
                        return KS_ERR_INVALID_REPLICATION_FACTOR;
                }
                t->partitions = np;
                t->replication_factor = rf;
        }
        for (int32_t i = 0; i < ct->Configs.count; i++) {
                const ks_CreateTopicsRequest_CreatableTopicConfig *c = &ct->Configs.items[i];
                if ((err = ks_topic_config_set(t, c->Name, c->Value, msg, msglen)))
                        return err;
        }
        return 0;
}

/* Fills the v5+ description of a created (or validated) topic. */
static void describe_result(ks_req_t *req, ks_CreateTopicsResponse_CreatableTopicResult *r, const ks_topic_t *t)
{
        r->TopicId = t->id;
        r->NumPartitions = t->partitions;
        r->ReplicationFactor = (int16_t)t->replication_factor;
        ks_CreateTopicsResponse_CreatableTopicConfigs *cfgs =
                ks_msg_new_array(&ks_CreateTopicsResponse_CreatableTopicConfigs_desc, KS_TOPIC_CONFIG_COUNT,
                                 &req->arena);
        if (!cfgs)
                return;
        for (int i = 0; i < KS_TOPIC_CONFIG_COUNT; i++) {
                const ks_topic_config_key_t *k = &ks_topic_config_keys[i];
                cfgs[i].Name = ks_str_c(k->name);
                cfgs[i].Value = ks_arena_str(&req->arena, "%lld", (long long)ks_topic_config_value(t, i));
                cfgs[i].ReadOnly = false;
                cfgs[i].ConfigSource = (t->explicit_configs & k->bit) ? KS_CONFIG_SOURCE_DYNAMIC_TOPIC
                                                                      : KS_CONFIG_SOURCE_DEFAULT;
                cfgs[i].IsSensitive = false;
        }
        r->Configs.items = cfgs;
        r->Configs.count = KS_TOPIC_CONFIG_COUNT;
}

static void create_topics_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_CreateTopicsRequest *rq = req->request;
        ks_CreateTopicsResponse *resp = ks_msg_new(&ks_CreateTopicsResponse_desc, &req->arena);
        int32_t n = rq->Topics.count > 0 ? rq->Topics.count : 0;
        ks_CreateTopicsResponse_CreatableTopicResult *res =
                ks_msg_new_array(&ks_CreateTopicsResponse_CreatableTopicResult_desc, n, &req->arena);
        ks_str_t *names = ks_array_new(sizeof(ks_str_t), n, &req->arena);
        if (!resp || !res || !names) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < n; i++)
                names[i] = rq->Topics.items[i].Name;

        int32_t out = 0;
        bool changed = false;
        for (int32_t i = 0; i < n; i++) {
                const ks_CreateTopicsRequest_CreatableTopic *ct = &rq->Topics.items[i];
                ks_CreateTopicsResponse_CreatableTopicResult *r = &res[out];
                char msg[512] = "";
                ks_err_t err = 0;
                ks_topic_t t;
                if (duplicate_name(names, n, i)) {
                        /* One result per distinct name, as Kafka answers. */
                        bool first = true;
                        for (int32_t j = 0; j < i; j++)
                                if (ks_str_eq(names[i], names[j]))
                                        first = false;
                        if (!first)
                                continue;
                        err = KS_ERR_INVALID_REQUEST;
                        snprintf(msg, sizeof(msg), "Duplicate topic name.");
                } else {
                        err = check_topic(b, ct, &t, msg, sizeof(msg));
                }
                if (!err) {
                        ks_topic_t existing;
                        if (ks_meta_topic_get(b->meta, ct->Name, &existing)) {
                                err = KS_ERR_TOPIC_ALREADY_EXISTS;
                                snprintf(msg, sizeof(msg), "Topic '%s' already exists.", t.name);
                        }
                }
                if (!err && !rq->validateOnly) {
                        ks_err_t e = ks_meta_topic_create(b->meta, &t);
                        changed |= e == 0;
                        if (!e)
                                e = ks_topic_sync_one(b->topics, t.name);
                        if (e == KS_ERR__EXISTS) {
                                err = KS_ERR_TOPIC_ALREADY_EXISTS;
                                snprintf(msg, sizeof(msg), "Topic '%s' already exists.", t.name);
                        } else if (e) {
                                err = ks_err_to_wire(e);
                                snprintf(msg, sizeof(msg), "Metadata store error: %s", ks_err_str(e));
                                ks_log_warn("topic_create_failed", "topic=%s err=%s", t.name, ks_err_name(e));
                        }
                }
                r->Name = ct->Name;
                r->ErrorCode = (int16_t)err;
                if (err) {
                        r->ErrorMessage = arena_msg(req, msg);
                } else {
                        r->ErrorMessage = KS_STR_NULL;
                        describe_result(req, r, &t);
                }
                out++;
        }
        if (changed) {
                int64_t wait = rq->timeoutMs < KS_AWAIT_LEADERS_MAX_MS ? rq->timeoutMs : KS_AWAIT_LEADERS_MAX_MS;
                for (int32_t i = 0; i < out; i++)
                        if (res[i].ErrorCode == 0 && res[i].Name.len <= KS_TOPIC_NAME_MAX) {
                                char name[KS_TOPIC_NAME_MAX + 1];
                                memcpy(name, res[i].Name.ptr, (size_t)res[i].Name.len);
                                name[res[i].Name.len] = '\0';
                                ks_broker_await_leaders(b, name, wait);
                        }
                ks_broker_write_snapshot(b);
        }
        resp->Topics.items = res;
        resp->Topics.count = out;
        ks_req_respond(req, resp);
}

void ks_handle_create_topics(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, create_topics_work);
}

/* --- DeleteTopics ---------------------------------------------------------- */

static void delete_topics_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_DeleteTopicsRequest *rq = req->request;
        bool v6 = req->hdr.RequestApiVersion >= 6;
        int32_t n = v6 ? rq->Topics.count : rq->TopicNames.count;
        if (n < 0)
                n = 0;
        ks_DeleteTopicsResponse *resp = ks_msg_new(&ks_DeleteTopicsResponse_desc, &req->arena);
        ks_DeleteTopicsResponse_DeletableTopicResult *res =
                ks_msg_new_array(&ks_DeleteTopicsResponse_DeletableTopicResult_desc, n, &req->arena);
        ks_str_t *names = ks_array_new(sizeof(ks_str_t), n, &req->arena);
        if (!resp || !res || !names) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < n; i++)
                names[i] = v6 ? rq->Topics.items[i].Name : rq->TopicNames.items[i];

        bool changed = false;
        for (int32_t i = 0; i < n; i++) {
                ks_DeleteTopicsResponse_DeletableTopicResult *r = &res[i];
                ks_uuid_t id = v6 ? rq->Topics.items[i].TopicId : (ks_uuid_t){ { 0 } };
                bool by_id = !ks_uuid_is_zero(&id);
                ks_str_t name = names[i];
                r->Name = name;
                r->TopicId = id;
                ks_topic_t t;
                ks_err_t err = 0;
                const char *msg = NULL;
                if (by_id && !ks_str_is_null(name) && name.len > 0) {
                        err = KS_ERR_INVALID_REQUEST;
                        msg = "Specify either a topic name or a topic id, not both.";
                } else if (by_id) {
                        if (!ks_meta_topic_get_by_id(b->meta, id, &t))
                                err = KS_ERR_UNKNOWN_TOPIC_ID;
                        else
                                r->Name = ks_arena_str(&req->arena, "%s", t.name);
                } else if (!ks_str_is_null(name) && duplicate_name(names, n, i)) {
                        err = KS_ERR_INVALID_REQUEST;
                        msg = "Duplicate topic name.";
                } else if (ks_str_is_null(name) || !ks_meta_topic_get(b->meta, name, &t)) {
                        err = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                } else {
                        r->TopicId = t.id;
                }
                if (!err) {
                        ks_err_t e = ks_meta_topic_delete(b->meta, t.name, by_id ? &id : NULL);
                        if (!e) {
                                changed = true;
                                ks_topic_sync_one(b->topics, t.name);
                                ks_log_topic_delete_objects(b->log, t.name);
                                /* Kafka drops the topic's committed offsets
                                 * with it: a re-created topic starts clean. */
                                ks_err_t oe = ks_offsets_delete_topic(b->kv, t.name);
                                if (oe)
                                        ks_log_warn("topic_offsets_not_deleted", "topic=%s err=%s", t.name,
                                                    ks_err_name(oe));
                        }
                        if (e == KS_ERR__NOT_FOUND) {
                                err = by_id ? KS_ERR_UNKNOWN_TOPIC_ID : KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                        } else if (e) {
                                err = ks_err_to_wire(e);
                                msg = ks_err_str(e);
                                ks_log_warn("topic_delete_failed", "topic=%s err=%s", t.name, ks_err_name(e));
                        }
                }
                r->ErrorCode = (int16_t)err;
                r->ErrorMessage = msg ? ks_str_c(msg) : KS_STR_NULL;
        }
        if (changed)
                ks_broker_write_snapshot(b);
        resp->Responses.items = res;
        resp->Responses.count = n;
        ks_req_respond(req, resp);
}

void ks_handle_delete_topics(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, delete_topics_work);
}
