/*
 * offsets.c — OffsetCommit v0-v9 and OffsetFetch v0-v9 (multi-group from v8).
 *
 * Both read or write the metadata store (meta/offsets.h), so the I/O thread
 * hands them to the worker pool at once; everything below runs on a worker.
 * The group coordinator (group/group.h) decides whether a member may
 * commit; committed offsets themselves live only in the store.
 *
 * Cluster mode (group_route.h): only the group's coordinator answers —
 * any other broker gives NOT_COORDINATOR, for every partition left after
 * step 1 of OffsetCommit, and like INVALID_GROUP_ID below for OffsetFetch
 * (per partition before v2, top-level in v2-v7, per group in v8+) — and
 * every commit is fenced with the group's lease: a refused fence is
 * NOT_COORDINATOR too.
 *
 * Kafka's rules, in the order Kafka applies them (KafkaApis.scala
 * handleOffsetCommitRequest, then the group coordinator):
 *   OffsetCommit
 *     1. a partition of an unknown topic, or an index the topic does not
 *        have: UNKNOWN_TOPIC_OR_PARTITION (that partition only);
 *     2. if any partition is left: an invalid group id gives INVALID_GROUP_ID,
 *        else ks_groups_check_commit() decides (UNKNOWN_MEMBER_ID,
 *        ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID, ...)
 *        for all of them;
 *     3. metadata longer than 4096 bytes: OFFSET_METADATA_TOO_LARGE;
 *     4. the rest is written in one call; a store error is mapped with
 *        ks_err_to_wire() onto those partitions (retriable: REQUEST_TIMED_OUT).
 *   OffsetFetch
 *     - invalid group id: INVALID_GROUP_ID, per partition (offset -1) in v0-v1,
 *       top-level in v2-v7, per group in v8+;
 *     - no commit for a requested partition: offset -1, leader epoch -1,
 *       metadata "", error 0 — also when the topic does not exist (v1+; v0
 *       answers UNKNOWN_TOPIC_OR_PARTITION for an unknown topic/partition, as
 *       Kafka's v0 path did);
 *     - Topics null (v2+): every committed partition of the group, except
 *       those of topics that no longer exist (Kafka deletes them with the
 *       topic);
 *     - a store read that fails: COORDINATOR_LOAD_IN_PROGRESS when a retry
 *       can succeed (the code every client retries on an OffsetFetch);
 *     - RequireStable (v7+) is ignored: there are no transactions;
 *     - MemberId/MemberEpoch (v9) belong to KIP-848 groups and are ignored.
 */
#include <string.h>

#include "broker/broker.h"
#include "broker/group_route.h"
#include "group/group.h"
#include "meta/offsets.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

/* Longest string the protocol can carry (int16 length). */
#define WIRE_STRING_MAX 32767

static bool group_id_invalid(ks_str_t group)
{
        return ks_group_id_check(group) != 0 || ks_offsets_group_invalid(group) != NULL;
}

/* The validated group id as a C string (valid ids hold no NUL). */
static void group_cstr(ks_str_t group, char out[KS_GROUP_ID_MAX + 1])
{
        memcpy(out, group.ptr, (size_t)group.len);
        out[group.len] = '\0';
}

/* --- OffsetCommit -------------------------------------------------------- */

typedef struct pending {
        ks_str_t topic;
        const ks_OffsetCommitRequest_OffsetCommitRequestPartition *rq;
        ks_OffsetCommitResponse_OffsetCommitResponsePartition *rs;
} pending_t;

static void offset_commit_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_OffsetCommitRequest *rq = req->request;
        ks_OffsetCommitResponse *resp = ks_msg_new(&ks_OffsetCommitResponse_desc, &req->arena);
        int32_t nt = rq->Topics.count > 0 ? rq->Topics.count : 0;
        ks_OffsetCommitResponse_OffsetCommitResponseTopic *trs =
                ks_msg_new_array(&ks_OffsetCommitResponse_OffsetCommitResponseTopic_desc, nt, &req->arena);
        int32_t total = 0;
        for (int32_t i = 0; i < nt; i++)
                total += rq->Topics.items[i].Partitions.count > 0 ? rq->Topics.items[i].Partitions.count : 0;
        pending_t *pend = ks_arena_alloc(&req->arena, (size_t)total * sizeof(*pend));
        if (!resp || !trs || !pend) {
                ks_req_close(req, "out of memory");
                return;
        }

        /* 1. Unknown topics and partitions. */
        int32_t npend = 0;
        for (int32_t i = 0; i < nt; i++) {
                const ks_OffsetCommitRequest_OffsetCommitRequestTopic *t = &rq->Topics.items[i];
                int32_t np = t->Partitions.count > 0 ? t->Partitions.count : 0;
                ks_OffsetCommitResponse_OffsetCommitResponsePartition *prs =
                        ks_msg_new_array(&ks_OffsetCommitResponse_OffsetCommitResponsePartition_desc, np, &req->arena);
                if (!prs) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                trs[i].Name = t->Name;
                trs[i].Partitions.items = prs;
                trs[i].Partitions.count = np;
                ks_topic_t topic;
                bool known = !ks_str_is_null(t->Name) && ks_meta_topic_get(b->meta, t->Name, &topic);
                for (int32_t j = 0; j < np; j++) {
                        const ks_OffsetCommitRequest_OffsetCommitRequestPartition *p = &t->Partitions.items[j];
                        prs[j].PartitionIndex = p->PartitionIndex;
                        if (!known || p->PartitionIndex < 0 || p->PartitionIndex >= topic.partitions) {
                                prs[j].ErrorCode = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                                continue;
                        }
                        pend[npend++] = (pending_t){ t->Name, p, &prs[j] };
                }
        }

        /* 2. The group: may this member commit? */
        int16_t group_err = 0;
        char group[KS_GROUP_ID_MAX + 1] = "";
        if (npend > 0) {
                if (group_id_invalid(rq->GroupId)) {
                        group_err = KS_ERR_INVALID_GROUP_ID;
                } else if (!b->groups) {
                        group_err = KS_ERR_COORDINATOR_NOT_AVAILABLE;
                } else if ((group_err = ks_group_route_blocking(b, rq->GroupId)) == 0) {
                        group_cstr(rq->GroupId, group);
                        group_err = ks_err_to_wire(ks_groups_check_commit(b->groups, rq->GroupId, rq->MemberId,
                                                                          rq->GroupInstanceId,
                                                                          rq->GenerationIdOrMemberEpoch));
                }
        }

        /* 3. Per-partition checks, then one store call for the rest. */
        ks_offset_commit_t *items = ks_arena_alloc(&req->arena, (size_t)npend * sizeof(*items));
        pending_t **written = ks_arena_alloc(&req->arena, (size_t)npend * sizeof(*written));
        if (!items || !written) {
                ks_req_close(req, "out of memory");
                return;
        }
        int nitems = 0;
        for (int32_t k = 0; k < npend; k++) {
                pending_t *pd = &pend[k];
                if (group_err) {
                        pd->rs->ErrorCode = group_err;
                        continue;
                }
                if (pd->rq->CommittedMetadata.len > KS_OFFSET_METADATA_MAX) {
                        pd->rs->ErrorCode = KS_ERR_OFFSET_METADATA_TOO_LARGE;
                        continue;
                }
                items[nitems] = (ks_offset_commit_t){
                        .topic = pd->topic,
                        .partition = pd->rq->PartitionIndex,
                        .offset = pd->rq->CommittedOffset,
                        .leader_epoch = pd->rq->CommittedLeaderEpoch >= 0 ? pd->rq->CommittedLeaderEpoch : -1,
                        .metadata = pd->rq->CommittedMetadata,
                };
                written[nitems++] = pd;
        }
        if (nitems > 0) {
                ks_group_fence_t fence;
                int16_t w = ks_group_fence(b, group, &fence);
                if (!w) {
                        ks_err_t err = ks_offsets_commit(b->kv, group, items, nitems, fence.use);
                        w = ks_group_write_fenced(b, group, &fence, err) ? KS_ERR_NOT_COORDINATOR
                                                                          : ks_err_to_wire(err);
                }
                for (int k = 0; w && k < nitems; k++)
                        written[k]->rs->ErrorCode = w;
        }
        resp->Topics.items = trs;
        resp->Topics.count = nt;
        ks_req_respond(req, resp);
}

void ks_handle_offset_commit(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, offset_commit_work);
}

/* --- OffsetFetch --------------------------------------------------------- */

/* Version-neutral forms of the request and answer (v0-v7 and v8+ use
 * distinct generated types of the same shape). */
typedef struct fetch_topic {
        ks_str_t name;
        const int32_t *parts;
        int32_t nparts;
} fetch_topic_t;

typedef struct part_answer {
        int32_t partition;
        int64_t offset;
        int32_t epoch;
        ks_str_t metadata;
        int16_t err;
} part_answer_t;

typedef struct topic_answer {
        ks_str_t name;
        part_answer_t *parts;
        int32_t nparts;
} topic_answer_t;

typedef struct group_answer {
        int16_t err;
        topic_answer_t *topics;
        int32_t ntopics;
} group_answer_t;

static part_answer_t no_offset(int32_t partition, int16_t err)
{
        return (part_answer_t){ partition, -1, -1, KS_STR(""), err };
}

/* A group-level error: per partition before v2, else for the group. */
static bool group_error(ks_req_t *req, int16_t v, const fetch_topic_t *topics, int32_t ntopics, int16_t err,
                        group_answer_t *out)
{
        out->err = err;
        out->ntopics = 0;
        if (v >= 2 || ntopics <= 0)
                return true;
        out->topics = ks_arena_alloc(&req->arena, (size_t)ntopics * sizeof(*out->topics));
        if (!out->topics)
                return false;
        for (int32_t i = 0; i < ntopics; i++) {
                topic_answer_t *ta = &out->topics[i];
                ta->name = topics[i].name;
                ta->nparts = topics[i].nparts;
                ta->parts = ks_arena_alloc(&req->arena, (size_t)ta->nparts * sizeof(*ta->parts));
                if (!ta->parts)
                        return false;
                for (int32_t j = 0; j < ta->nparts; j++)
                        ta->parts[j] = no_offset(topics[i].parts[j], err);
        }
        out->ntopics = ntopics;
        return true;
}

/* The answer for one stored entry.  False if memory ran out. */
static bool entry_answer(ks_req_t *req, const char *group, const ks_offset_entry_t *e, part_answer_t *pa)
{
        if (e->err) {
                *pa = no_offset(e->partition, KS_ERR_UNKNOWN_SERVER_ERROR);
                return true;
        }
        *pa = (part_answer_t){ e->partition, e->offset, e->leader_epoch, KS_STR(""), 0 };
        if (e->metadata_len > WIRE_STRING_MAX) {
                ks_log_warn("offset_metadata_unsendable", "group=\"%s\" topic=%s partition=%d metadata_bytes=%zu",
                            group, e->topic, e->partition, e->metadata_len);
                return true;
        }
        if (e->metadata_len > 0) {
                pa->metadata = ks_arena_str_dup(&req->arena, (ks_str_t){ e->metadata, (int32_t)e->metadata_len });
                if (ks_str_is_null(pa->metadata))
                        return false;
        }
        return true;
}

/* Every committed partition of topics that still exist. */
static bool answer_all(ks_broker_t *b, ks_req_t *req, const char *group, const ks_offset_list_t *list,
                       group_answer_t *out)
{
        out->topics = ks_arena_alloc(&req->arena, (list->count ? list->count : 1) * sizeof(*out->topics));
        if (!out->topics)
                return false;
        for (size_t i = 0; i < list->count;) {
                size_t j = i;
                while (j < list->count && !strcmp(list->items[j].topic, list->items[i].topic))
                        j++;
                ks_topic_t t;
                if (!ks_meta_topic_get(b->meta, ks_str_c(list->items[i].topic), &t)) {
                        ks_log_debug("offsets_of_missing_topic", "group=\"%s\" topic=%s", group, list->items[i].topic);
                        i = j;
                        continue;
                }
                topic_answer_t *ta = &out->topics[out->ntopics];
                ta->name = ks_arena_str_dup(&req->arena, ks_str_c(list->items[i].topic));
                ta->parts = ks_arena_alloc(&req->arena, (j - i) * sizeof(*ta->parts));
                ta->nparts = 0;
                if (ks_str_is_null(ta->name) || !ta->parts)
                        return false;
                for (size_t k = i; k < j; k++) {
                        const ks_offset_entry_t *e = &list->items[k];
                        if (e->partition >= t.partitions)
                                continue;
                        if (!entry_answer(req, group, e, &ta->parts[ta->nparts++]))
                                return false;
                }
                if (ta->nparts > 0)
                        out->ntopics++;
                i = j;
        }
        return true;
}

/* The requested partitions, in request order. */
static bool answer_requested(ks_broker_t *b, ks_req_t *req, int16_t v, const char *group,
                             const ks_offset_list_t *list, const fetch_topic_t *topics, int32_t ntopics,
                             group_answer_t *out)
{
        out->topics = ks_arena_alloc(&req->arena, (size_t)ntopics * sizeof(*out->topics));
        if (!out->topics)
                return false;
        for (int32_t i = 0; i < ntopics; i++) {
                const fetch_topic_t *ft = &topics[i];
                topic_answer_t *ta = &out->topics[i];
                ta->name = ft->name;
                ta->nparts = ft->nparts;
                ta->parts = ks_arena_alloc(&req->arena, (size_t)ft->nparts * sizeof(*ta->parts));
                if (!ta->parts)
                        return false;
                ks_topic_t t = { .partitions = 0 };
                bool known = v > 0 || (!ks_str_is_null(ft->name) && ks_meta_topic_get(b->meta, ft->name, &t));
                for (int32_t j = 0; j < ft->nparts; j++) {
                        int32_t p = ft->parts[j];
                        const ks_offset_entry_t *e = ks_offset_list_find(list, ft->name, p);
                        if (v == 0 && (!known || p < 0 || p >= t.partitions))
                                ta->parts[j] = no_offset(p, KS_ERR_UNKNOWN_TOPIC_OR_PARTITION);
                        else if (!e)
                                ta->parts[j] = no_offset(p, 0);
                        else if (!entry_answer(req, group, e, &ta->parts[j]))
                                return false;
                }
        }
        out->ntopics = ntopics;
        return true;
}

/* A store error as an OffsetFetch error: the retriable ones become
 * COORDINATOR_LOAD_IN_PROGRESS, which clients retry (the Java consumer
 * fails the fetch on any other group-level code but NOT_COORDINATOR). */
static int16_t fetch_store_error(ks_err_t err)
{
        switch (err) {
        case KS_ERR__TIMEOUT:
        case KS_ERR__UNAVAILABLE:
        case KS_ERR__IO:
        case KS_ERR__CONFLICT:
                return KS_ERR_COORDINATOR_LOAD_IN_PROGRESS;
        default:
                return ks_err_to_wire(err);
        }
}

/* Answers one group; ntopics < 0 means every committed partition.  False
 * if memory ran out. */
static bool fetch_group(ks_broker_t *b, ks_req_t *req, int16_t v, ks_str_t group_id, const fetch_topic_t *topics,
                        int32_t ntopics, group_answer_t *out)
{
        memset(out, 0, sizeof(*out));
        if (group_id_invalid(group_id))
                return group_error(req, v, topics, ntopics, KS_ERR_INVALID_GROUP_ID, out);
        bool absent = false; /* then nothing is committed: the read finds nothing */
        int16_t route = ks_group_route_lookup(b, group_id, &absent);
        if (route)
                return group_error(req, v, topics, ntopics, route, out);
        char group[KS_GROUP_ID_MAX + 1];
        group_cstr(group_id, group);

        /* One range read: the one topic asked for, else the whole group. */
        const char *only = NULL;
        char tname[KS_TOPIC_NAME_MAX + 1];
        bool read = ntopics != 0;
        if (ntopics == 1) {
                ks_str_t n = topics[0].name;
                read = !ks_str_is_null(n) && !ks_topic_name_invalid(n);
                if (read) {
                        memcpy(tname, n.ptr, (size_t)n.len);
                        tname[n.len] = '\0';
                        only = tname;
                }
        }
        ks_offset_list_t list = { 0 };
        if (read) {
                ks_err_t err = ks_offsets_fetch(b->kv, group, only, &list);
                if (err) {
                        ks_offset_list_free(&list);
                        ks_log_warn("offset_fetch_failed", "group=\"%s\" err=%s", group, ks_err_name(err));
                        return group_error(req, v, topics, ntopics, fetch_store_error(err), out);
                }
        }
        bool ok = ntopics < 0 ? answer_all(b, req, group, &list, out)
                              : answer_requested(b, req, v, group, &list, topics, ntopics, out);
        ks_offset_list_free(&list);
        return ok;
}

/* Request topics in neutral form: *out (NULL when there are none) and the
 * count, -1 for a null array.  False if memory ran out. */
static bool topics_v0(ks_req_t *req, const ks_OffsetFetchRequest *rq, fetch_topic_t **out, int32_t *n)
{
        *n = rq->Topics.count < 0 ? -1 : rq->Topics.count;
        *out = NULL;
        if (*n <= 0)
                return true;
        *out = ks_arena_alloc(&req->arena, (size_t)*n * sizeof(**out));
        if (!*out)
                return false;
        for (int32_t i = 0; i < *n; i++) {
                const ks_OffsetFetchRequest_OffsetFetchRequestTopic *t = &rq->Topics.items[i];
                (*out)[i] = (fetch_topic_t){ t->Name, t->PartitionIndexes.items,
                                             t->PartitionIndexes.count > 0 ? t->PartitionIndexes.count : 0 };
        }
        return true;
}

static bool topics_v8(ks_req_t *req, const ks_OffsetFetchRequest_OffsetFetchRequestGroup *rg, fetch_topic_t **out,
                      int32_t *n)
{
        *n = rg->Topics.count < 0 ? -1 : rg->Topics.count;
        *out = NULL;
        if (*n <= 0)
                return true;
        *out = ks_arena_alloc(&req->arena, (size_t)*n * sizeof(**out));
        if (!*out)
                return false;
        for (int32_t i = 0; i < *n; i++) {
                const ks_OffsetFetchRequest_OffsetFetchRequestTopics *t = &rg->Topics.items[i];
                (*out)[i] = (fetch_topic_t){ t->Name, t->PartitionIndexes.items,
                                             t->PartitionIndexes.count > 0 ? t->PartitionIndexes.count : 0 };
        }
        return true;
}

static void offset_fetch_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_OffsetFetchRequest *rq = req->request;
        int16_t v = req->hdr.RequestApiVersion;
        ks_OffsetFetchResponse *resp = ks_msg_new(&ks_OffsetFetchResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }

        if (v < 8) {
                fetch_topic_t *topics;
                int32_t nt;
                group_answer_t g;
                if (!topics_v0(req, rq, &topics, &nt) || !fetch_group(b, req, v, rq->GroupId, topics, nt, &g)) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                ks_OffsetFetchResponse_OffsetFetchResponseTopic *trs =
                        ks_msg_new_array(&ks_OffsetFetchResponse_OffsetFetchResponseTopic_desc, g.ntopics, &req->arena);
                if (!trs) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                for (int32_t i = 0; i < g.ntopics; i++) {
                        const topic_answer_t *ta = &g.topics[i];
                        ks_OffsetFetchResponse_OffsetFetchResponsePartition *prs = ks_msg_new_array(
                                &ks_OffsetFetchResponse_OffsetFetchResponsePartition_desc, ta->nparts, &req->arena);
                        if (!prs) {
                                ks_req_close(req, "out of memory");
                                return;
                        }
                        for (int32_t j = 0; j < ta->nparts; j++) {
                                const part_answer_t *pa = &ta->parts[j];
                                prs[j].PartitionIndex = pa->partition;
                                prs[j].CommittedOffset = pa->offset;
                                prs[j].CommittedLeaderEpoch = pa->epoch;
                                prs[j].Metadata = pa->metadata;
                                prs[j].ErrorCode = pa->err;
                        }
                        trs[i].Name = ta->name;
                        trs[i].Partitions.items = prs;
                        trs[i].Partitions.count = ta->nparts;
                }
                resp->Topics.items = trs;
                resp->Topics.count = g.ntopics;
                resp->ErrorCode = v >= 2 ? g.err : 0;
                ks_req_respond(req, resp);
                return;
        }

        int32_t ng = rq->Groups.count > 0 ? rq->Groups.count : 0;
        ks_OffsetFetchResponse_OffsetFetchResponseGroup *grs =
                ks_msg_new_array(&ks_OffsetFetchResponse_OffsetFetchResponseGroup_desc, ng, &req->arena);
        if (!grs) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t gi = 0; gi < ng; gi++) {
                const ks_OffsetFetchRequest_OffsetFetchRequestGroup *rg = &rq->Groups.items[gi];
                fetch_topic_t *topics;
                int32_t nt;
                group_answer_t g;
                if (!topics_v8(req, rg, &topics, &nt) || !fetch_group(b, req, v, rg->GroupId, topics, nt, &g)) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                ks_OffsetFetchResponse_OffsetFetchResponseTopics *trs = ks_msg_new_array(
                        &ks_OffsetFetchResponse_OffsetFetchResponseTopics_desc, g.ntopics, &req->arena);
                if (!trs) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                for (int32_t i = 0; i < g.ntopics; i++) {
                        const topic_answer_t *ta = &g.topics[i];
                        ks_OffsetFetchResponse_OffsetFetchResponsePartitions *prs = ks_msg_new_array(
                                &ks_OffsetFetchResponse_OffsetFetchResponsePartitions_desc, ta->nparts, &req->arena);
                        if (!prs) {
                                ks_req_close(req, "out of memory");
                                return;
                        }
                        for (int32_t j = 0; j < ta->nparts; j++) {
                                const part_answer_t *pa = &ta->parts[j];
                                prs[j].PartitionIndex = pa->partition;
                                prs[j].CommittedOffset = pa->offset;
                                prs[j].CommittedLeaderEpoch = pa->epoch;
                                prs[j].Metadata = pa->metadata;
                                prs[j].ErrorCode = pa->err;
                        }
                        trs[i].Name = ta->name;
                        trs[i].Partitions.items = prs;
                        trs[i].Partitions.count = ta->nparts;
                }
                grs[gi].GroupId = rg->GroupId;
                grs[gi].ErrorCode = g.err;
                grs[gi].Topics.items = trs;
                grs[gi].Topics.count = g.ntopics;
        }
        resp->Groups.items = grs;
        resp->Groups.count = ng;
        ks_req_respond(req, resp);
}

void ks_handle_offset_fetch(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, offset_fetch_work);
}
