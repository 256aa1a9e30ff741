/*
 * partitions.c — CreatePartitions (v0-v3): growing a topic.
 *
 * Additive only.  Per topic, in Apache Kafka's order and with its messages
 * (ZkAdminManager.createPartitions, AdminClientIntegrationTest):
 *   - a name given twice: one INVALID_REQUEST result "Duplicate topic name.";
 *   - unknown topic: UNKNOWN_TOPIC_OR_PARTITION "The topic 'x' does not
 *     exist.";
 *   - fewer partitions than now: INVALID_PARTITIONS "Topic currently has N
 *     partitions, which is higher than the requested M."; as many as now:
 *     INVALID_PARTITIONS "Topic already has N partitions.";
 *   - beyond KS_MAX_PARTITIONS: INVALID_PARTITIONS;
 *   - manual assignments (Assignments not null): every broker named must be
 *     this broker ("Unknown broker(s) in replica assignment: 7."), one
 *     assignment per new partition ("Increasing the number of partitions by
 *     N but M assignments provided."), no broker twice, as many replicas as
 *     the topic's replication factor — then they are accepted: this broker
 *     leads every partition anyway.  Anything else is
 *     INVALID_REPLICA_ASSIGNMENT.
 * ValidateOnly runs every check and changes nothing.  TimeoutMs is not
 * needed: the new partitions exist when the answer is sent.
 *
 * Growing is one metadata transaction (the config record with the new
 * count plus each new partition's PartitionState and next offset, guarded
 * by the config's mod_rev, redone from a fresh read on a conflict); then the
 * log opens the new partitions so they serve at once.  Runs on a worker.
 */
#include <stdio.h>
#include <string.h>

#include "broker/broker.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

#define GROW_ATTEMPTS 5


typedef ks_CreatePartitionsRequest_CreatePartitionsTopic cp_topic_t;

/* Checks manual assignments for `added` new partitions after `have`.
 * 0, or INVALID_REPLICA_ASSIGNMENT with msg. */
static ks_err_t check_assignments(const ks_broker_t *b, const cp_topic_t *ct, const ks_topic_t *t, int32_t added,
                                  char *msg, size_t msglen)
{
        const int32_t self = b->cfg->broker_id;
        /* Unknown brokers first, listed once each. */
        size_t used = 0;
        for (int32_t a = 0; a < ct->Assignments.count; a++) {
                const ks_CreatePartitionsRequest_CreatePartitionsAssignment *as = &ct->Assignments.items[a];
                for (int32_t r = 0; r < as->BrokerIds.count; r++) {
                        int32_t id = as->BrokerIds.items[r];
                        bool listed = id == self;
                        for (int32_t a2 = 0; a2 <= a && !listed; a2++) {
                                const ks_CreatePartitionsRequest_CreatePartitionsAssignment *p =
                                        &ct->Assignments.items[a2];
                                int32_t upto = a2 == a ? r : p->BrokerIds.count;
                                for (int32_t r2 = 0; r2 < upto && !listed; r2++)
                                        listed = p->BrokerIds.items[r2] == id;
                        }
                        if (listed)
                                continue;
                        int w = snprintf(msg + used, msglen - used, "%s%d",
                                         used ? ", " : "Unknown broker(s) in replica assignment: ", id);
                        used = w < 0 || used + (size_t)w >= msglen ? msglen - 1 : used + (size_t)w;
                }
        }
        if (used) {
                if (used + 2 <= msglen)
                        snprintf(msg + used, msglen - used, ".");
                return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
        }
        if (ct->Assignments.count != added) {
                snprintf(msg, msglen, "Increasing the number of partitions by %d but %d assignments provided.", added,
                         ct->Assignments.count);
                return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
        }
        const int32_t rf = t->replication_factor > 0 ? t->replication_factor : 1;
        for (int32_t a = 0; a < ct->Assignments.count; a++) {
                const ks_CreatePartitionsRequest_CreatePartitionsAssignment *as = &ct->Assignments.items[a];
                int32_t pid = t->partitions + a;
                for (int32_t r = 1; r < as->BrokerIds.count; r++)
                        for (int32_t s = 0; s < r; s++)
                                if (as->BrokerIds.items[r] == as->BrokerIds.items[s]) {
                                        size_t u = 0;
                                        for (int32_t k = 0; k < as->BrokerIds.count && u + 1 < msglen; k++) {
                                                int w = snprintf(msg + u, msglen - u, "%s%d",
                                                                 k ? ", " : "Duplicate brokers not allowed in replica "
                                                                            "assignment: ",
                                                                 as->BrokerIds.items[k]);
                                                u = w < 0 || u + (size_t)w >= msglen ? msglen - 1 : u + (size_t)w;
                                        }
                                        if (u + 1 < msglen)
                                                snprintf(msg + u, msglen - u, " for partition id %d.", pid);
                                        return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
                                }
                if (as->BrokerIds.count != rf) {
                        snprintf(msg, msglen,
                                 "Inconsistent replication factor between partitions, partition 0 has %d while "
                                 "partitions [%d] have replication factors [%d], respectively.",
                                 rf, pid, as->BrokerIds.count);
                        return KS_ERR_INVALID_REPLICA_ASSIGNMENT;
                }
        }
        return 0;
}

/* Validates and (unless validate_only) grows one topic.  0, or a Kafka
 * error with msg. */
static ks_err_t grow_topic(ks_broker_t *b, const cp_topic_t *ct, bool validate_only, char *msg, size_t msglen)
{
        char name[KS_TOPIC_NAME_MAX + 1];
        if (ks_topic_name_invalid(ct->Name)) {
                snprintf(msg, msglen, "The topic '%.*s' does not exist.", ct->Name.len > 0 ? (int)ct->Name.len : 0,
                         ct->Name.ptr ? ct->Name.ptr : "");
                return KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
        }
        memcpy(name, ct->Name.ptr, (size_t)ct->Name.len);
        name[ct->Name.len] = '\0';
        ks_err_t e = KS_ERR__CONFLICT;
        ks_topic_t t;
        for (int attempt = 0; attempt < GROW_ATTEMPTS && e == KS_ERR__CONFLICT; attempt++) {
                e = ks_meta_topic_load(b->meta, name, &t);
                if (e == KS_ERR__NOT_FOUND) {
                        snprintf(msg, msglen, "The topic '%s' does not exist.", name);
                        return KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                }
                if (e)
                        break;
                if (ct->Count < t.partitions) {
                        snprintf(msg, msglen, "Topic currently has %d partitions, which is higher than the requested %d.",
                                 t.partitions, ct->Count);
                        return KS_ERR_INVALID_PARTITIONS;
                }
                if (ct->Count == t.partitions) {
                        snprintf(msg, msglen, "Topic already has %d partitions.", t.partitions);
                        return KS_ERR_INVALID_PARTITIONS;
                }
                if (ct->Count > KS_MAX_PARTITIONS) {
                        snprintf(msg, msglen, "Number of partitions %d is larger than the maximum of %d.", ct->Count,
                                 KS_MAX_PARTITIONS);
                        return KS_ERR_INVALID_PARTITIONS;
                }
                if (ct->Assignments.count >= 0) {
                        ks_err_t err = check_assignments(b, ct, &t, ct->Count - t.partitions, msg, msglen);
                        if (err)
                                return err;
                }
                if (validate_only)
                        return 0;
                e = ks_meta_topic_add_partitions(b->meta, &t, ct->Count);
        }
        if (!e)
                e = ks_topic_sync_one(b->topics, t.name);
        if (e) {
                ks_log_warn("create_partitions_failed", "topic=%s count=%d err=%s", name, ct->Count, ks_err_name(e));
                snprintf(msg, msglen, "Metadata store error: %s", ks_err_str(e));
                return ks_err_to_wire(e);
        }
        return 0;
}

static void create_partitions_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_CreatePartitionsRequest *rq = req->request;
        int32_t n = rq->Topics.count > 0 ? rq->Topics.count : 0;
        ks_CreatePartitionsResponse *resp = ks_msg_new(&ks_CreatePartitionsResponse_desc, &req->arena);
        ks_CreatePartitionsResponse_CreatePartitionsTopicResult *res =
                ks_msg_new_array(&ks_CreatePartitionsResponse_CreatePartitionsTopicResult_desc, n, &req->arena);
        if (!resp || !res) {
                ks_req_close(req, "out of memory");
                return;
        }
        int32_t out = 0;
        bool changed = false;
        for (int32_t i = 0; i < n; i++) {
                const cp_topic_t *ct = &rq->Topics.items[i];
                char msg[512] = "";
                ks_err_t err = 0;
                bool dup = false, first = true;
                for (int32_t j = 0; j < n; j++)
                        if (j != i && ks_str_eq(ct->Name, rq->Topics.items[j].Name)) {
                                dup = true;
                                if (j < i)
                                        first = false;
                        }
                if (dup) {
                        /* One result per distinct name, as Kafka answers. */
                        if (!first)
                                continue;
                        err = KS_ERR_INVALID_REQUEST;
                        snprintf(msg, sizeof(msg), "Duplicate topic name.");
                } else {
                        err = grow_topic(b, ct, rq->ValidateOnly, msg, sizeof(msg));
                        changed |= !err && !rq->ValidateOnly;
                        if (!err && !rq->ValidateOnly && ct->Name.len <= KS_TOPIC_NAME_MAX) {
                                char name[KS_TOPIC_NAME_MAX + 1];
                                memcpy(name, ct->Name.ptr, (size_t)ct->Name.len);
                                name[ct->Name.len] = '\0';
                                ks_broker_await_leaders(b, name,
                                                        rq->TimeoutMs < KS_AWAIT_LEADERS_MAX_MS ? rq->TimeoutMs
                                                                                                 : KS_AWAIT_LEADERS_MAX_MS);
                        }
                }
                res[out].Name = ct->Name;
                res[out].ErrorCode = (int16_t)err;
                res[out].ErrorMessage = err ? ks_arena_str(&req->arena, "%s", msg) : KS_STR_NULL;
                out++;
        }
        if (changed)
                ks_broker_write_snapshot(b);
        resp->Results.items = res;
        resp->Results.count = out;
        ks_req_respond(req, resp);
}

void ks_handle_create_partitions(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, create_partitions_work);
}
