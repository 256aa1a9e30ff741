/*
 * group_admin.c — the group ops APIs of the seed: ListGroups v0-v5,
 * DescribeGroups v0-v5, DeleteGroups v0-v2.
 *
 * Embedded and memory mode: ListGroups and DescribeGroups answer from the
 * coordinator's memory on the I/O thread.  DeleteGroups removes a group's
 * records (its metadata and committed offsets, never topic data) from the
 * metadata store on a worker.
 *
 * Cluster mode (group_route.h), everything on a worker:
 *  - ListGroups lists the groups this broker coordinates, as a Kafka broker
 *    lists those of its __consumer_offsets partitions (admin clients ask
 *    every broker and merge): the groups loaded here, and the stored groups
 *    whose coordinator (ks_cluster_group_coordinator) is this broker but
 *    which nobody holds yet — each would be loaded Empty here by its next
 *    request.  If the store cannot be read, the groups in memory are listed
 *    with COORDINATOR_NOT_AVAILABLE.
 *  - DescribeGroups and DeleteGroups route each group: one coordinated
 *    elsewhere gets NOT_COORDINATOR in its own entry (as Kafka answers);
 *    deletes are fenced.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "broker/broker.h"
#include "broker/group_route.h"
#include "kafscale_metadata.pb-c.h"
#include "meta/offsets.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

/* Case-insensitive membership of s in a filter list (empty list: all). */
static bool filter_has(const ks_str_t *items, int32_t count, const char *s)
{
        if (count <= 0)
                return true;
        size_t n = strlen(s);
        for (int32_t i = 0; i < count; i++)
                if (items[i].len == (int32_t)n && !strncasecmp(items[i].ptr, s, n))
                        return true;
        return false;
}

/* Cluster mode: the stored groups this broker would coordinate but has not
 * loaded, appended to a summary list. */
typedef struct stored_groups {
        ks_cluster_t *cluster;
        int32_t self;
        const ks_group_summary_t *loaded; /* sorted by id */
        int nloaded;
        ks_group_summary_t *out;
        int n, cap;
        bool nomem;
} stored_groups_t;

static int summary_id_cmp(const void *key, const void *elem)
{
        return strcmp(key, ((const ks_group_summary_t *)elem)->id);
}

static int summary_sort_cmp(const void *a, const void *b)
{
        return strcmp(((const ks_group_summary_t *)a)->id, ((const ks_group_summary_t *)b)->id);
}

static int stored_group(void *opaque, const char *group, const uint8_t *buf, size_t len)
{
        stored_groups_t *st = opaque;
        if (ks_group_id_check(ks_str_c(group)) ||
            bsearch(group, st->loaded, (size_t)st->nloaded, sizeof(*st->loaded), summary_id_cmp) ||
            ks_cluster_group_coordinator(st->cluster, group) != st->self)
                return 0;
        if (st->n == st->cap) {
                int cap = st->cap ? st->cap * 2 : 16;
                ks_group_summary_t *ns = realloc(st->out, (size_t)cap * sizeof(*ns));
                if (!ns) {
                        st->nomem = true;
                        return 1;
                }
                st->out = ns;
                st->cap = cap;
        }
        Kafscale__Metadata__ConsumerGroup *cg = kafscale__metadata__consumer_group__unpack(NULL, len, buf);
        ks_group_summary_t *s = &st->out[st->n];
        s->id = strdup(group);
        s->protocol_type = strdup(cg && cg->protocol_type ? cg->protocol_type : "");
        s->state = "Empty"; /* as it would be loaded */
        if (cg)
                kafscale__metadata__consumer_group__free_unpacked(cg, NULL);
        if (!s->id || !s->protocol_type) {
                free(s->id);
                free(s->protocol_type);
                st->nomem = true;
                return 1;
        }
        st->n++;
        return 0;
}

/* The groups this broker coordinates (cluster mode), sorted by id: count,
 * or -1 if memory ran out; *err the listing's error code.  BLOCKING. */
static int list_coordinated(ks_broker_t *b, ks_group_summary_t **out, int16_t *err)
{
        *err = 0;
        ks_group_summary_t *loaded = NULL;
        int n = ks_groups_list(b->groups, &loaded);
        if (n < 0)
                return -1;
        ks_cluster_t *c = ks_group_cluster(b);
        if (!c) {
                *err = KS_ERR_COORDINATOR_NOT_AVAILABLE;
                *out = loaded;
                return n;
        }
        stored_groups_t st = { .cluster = c, .self = ks_cluster_broker_id(c), .loaded = loaded, .nloaded = n };
        ks_err_t e = ks_meta_groups_load(b->meta, stored_group, &st);
        if (st.nomem) {
                ks_group_summaries_free(st.out, st.n);
                ks_group_summaries_free(loaded, n);
                return -1;
        }
        if (e) {
                ks_log_warn("list_groups_store_read_failed", "err=%s", ks_err_name(e));
                *err = KS_ERR_COORDINATOR_NOT_AVAILABLE;
        }
        if (st.n == 0) {
                free(st.out);
                *out = loaded;
                return n;
        }
        ks_group_summary_t *all = realloc(loaded, (size_t)(n + st.n) * sizeof(*all));
        if (!all) {
                ks_group_summaries_free(st.out, st.n);
                ks_group_summaries_free(loaded, n);
                return -1;
        }
        memcpy(all + n, st.out, (size_t)st.n * sizeof(*all));
        free(st.out);
        n += st.n;
        qsort(all, (size_t)n, sizeof(*all), summary_sort_cmp);
        *out = all;
        return n;
}

int ks_broker_list_groups(ks_broker_t *b, ks_group_summary_t **out, int16_t *err)
{
        *err = 0;
        return ks_group_cluster_mode(b) ? list_coordinated(b, out, err) : ks_groups_list(b->groups, out);
}

static void list_groups_answer(ks_broker_t *b, ks_req_t *req, bool cluster)
{
        const ks_ListGroupsRequest *rq = req->request;
        int16_t v = req->hdr.RequestApiVersion;
        ks_ListGroupsResponse *resp = ks_msg_new(&ks_ListGroupsResponse_desc, &req->arena);
        ks_group_summary_t *all = NULL;
        int16_t err = 0;
        int n = !resp ? -1 : cluster ? list_coordinated(b, &all, &err) : ks_groups_list(b->groups, &all);
        ks_ListGroupsResponse_ListedGroup *out =
                n >= 0 ? ks_msg_new_array(&ks_ListGroupsResponse_ListedGroup_desc, n, &req->arena) : NULL;
        if (!out) {
                ks_group_summaries_free(all, n);
                ks_req_close(req, "out of memory");
                return;
        }
        int k = 0;
        for (int i = 0; i < n; i++) {
                if (v >= 4 && !filter_has(rq->StatesFilter.items, rq->StatesFilter.count, all[i].state))
                        continue;
                /* Every group here is a classic group. */
                if (v >= 5 && !filter_has(rq->TypesFilter.items, rq->TypesFilter.count, "classic"))
                        continue;
                out[k].GroupId = ks_arena_str(&req->arena, "%s", all[i].id);
                out[k].ProtocolType = ks_arena_str(&req->arena, "%s", all[i].protocol_type);
                out[k].GroupState = ks_str_c(all[i].state);
                out[k].GroupType = KS_STR("classic");
                k++;
        }
        ks_group_summaries_free(all, n);
        resp->ErrorCode = err;
        resp->Groups.items = out;
        resp->Groups.count = k;
        ks_req_respond(req, resp);
}

static void list_groups_work(ks_broker_t *b, ks_req_t *req)
{
        list_groups_answer(b, req, true);
}

void ks_handle_list_groups(ks_broker_t *b, ks_req_t *req)
{
        if (ks_group_cluster_mode(b))
                ks_broker_offload(b, req, list_groups_work);
        else
                list_groups_answer(b, req, false);
}

/* A group described with an error only, as Kafka's
 * DescribeGroupsResponse.groupError: empty state, protocol and members,
 * no authorized operations. */
static void describe_error(ks_DescribeGroupsResponse_DescribedGroup *d, ks_str_t group, int16_t err)
{
        d->GroupId = group;
        d->ErrorCode = err;
        d->GroupState = KS_STR("");
        d->ProtocolType = KS_STR("");
        d->ProtocolData = KS_STR("");
        d->Members.count = 0;
}

/* Routes each group when `route` (cluster mode, on a worker). */
static void describe_groups_answer(ks_broker_t *b, ks_req_t *req, bool route)
{
        const ks_DescribeGroupsRequest *rq = req->request;
        ks_DescribeGroupsResponse *resp = ks_msg_new(&ks_DescribeGroupsResponse_desc, &req->arena);
        int32_t n = rq->Groups.count > 0 ? rq->Groups.count : 0;
        ks_DescribeGroupsResponse_DescribedGroup *ds =
                ks_msg_new_array(&ks_DescribeGroupsResponse_DescribedGroup_desc, n, &req->arena);
        if (!resp || !ds) {
                ks_req_close(req, "out of memory");
                return;
        }
        bool ops = req->hdr.RequestApiVersion >= 3 && rq->IncludeAuthorizedOperations;
        for (int32_t i = 0; i < n; i++) {
                bool absent = false;
                int16_t err = route ? ks_group_route_lookup(b, rq->Groups.items[i], &absent) : 0;
                if (err) {
                        describe_error(&ds[i], rq->Groups.items[i], err);
                } else if (absent) {
                        describe_error(&ds[i], rq->Groups.items[i], 0); /* unknown: Dead, as Kafka answers */
                        ds[i].GroupState = KS_STR("Dead");
                        if (ops)
                                ds[i].AuthorizedOperations = KS_GROUP_AUTHORIZED_OPS;
                } else {
                        ks_groups_describe(b->groups, rq->Groups.items[i], ops, &req->arena, &ds[i]);
                }
        }
        resp->Groups.items = ds;
        resp->Groups.count = n;
        ks_req_respond(req, resp);
}

static void describe_groups_work(ks_broker_t *b, ks_req_t *req)
{
        describe_groups_answer(b, req, true);
}

void ks_handle_describe_groups(ks_broker_t *b, ks_req_t *req)
{
        if (ks_group_cluster_mode(b))
                ks_broker_offload(b, req, describe_groups_work);
        else
                describe_groups_answer(b, req, false);
}

/* A store error of a delete as a DeleteGroups error code. */
static int16_t delete_store_error(ks_err_t e)
{
        return e == KS_ERR__UNAVAILABLE || e == KS_ERR__TIMEOUT ? KS_ERR_COORDINATOR_NOT_AVAILABLE
                                                                 : ks_err_to_wire(e);
}

/* Deletes one group: its committed offsets, then its record (both fenced
 * in cluster mode); topic data stays untouched.  Returns the error code. */
static int16_t delete_group(ks_broker_t *b, ks_str_t id)
{
        bool absent = false;
        int16_t err = ks_group_route_lookup(b, id, &absent);
        if (err)
                return err;
        if (absent)
                return KS_ERR_GROUP_ID_NOT_FOUND;
        bool known;
        err = ks_err_to_wire(ks_groups_delete_begin(b->groups, id, &known));
        if (err)
                return err;
        char name[KS_GROUP_ID_MAX + 1];
        memcpy(name, id.ptr, (size_t)id.len); /* valid: delete_begin checked it */
        name[id.len] = '\0';
        /* Not in the coordinator; offsets alone still make it a group that
         * can be deleted. */
        if (!known && !ks_offsets_group_has_any(b->kv, name))
                return KS_ERR_GROUP_ID_NOT_FOUND;
        ks_group_fence_t fence;
        err = ks_group_fence(b, name, &fence);
        if (err) {
                ks_groups_delete_abort(b->groups, id);
                return err;
        }
        ks_err_t e = ks_offsets_delete_group(b->kv, name, fence.use);
        if (e) {
                ks_log_warn("group_delete_failed", "group=\"%s\" err=%s", name, ks_err_name(e));
                ks_groups_delete_abort(b->groups, id);
                return ks_group_write_fenced(b, name, &fence, e) ? KS_ERR_NOT_COORDINATOR : delete_store_error(e);
        }
        e = ks_groups_delete_finish(b->groups, id);
        return e == KS_ERR_NOT_COORDINATOR ? KS_ERR_NOT_COORDINATOR : delete_store_error(e);
}

static void delete_groups_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_DeleteGroupsRequest *rq = req->request;
        ks_DeleteGroupsResponse *resp = ks_msg_new(&ks_DeleteGroupsResponse_desc, &req->arena);
        int32_t n = rq->GroupsNames.count > 0 ? rq->GroupsNames.count : 0;
        ks_DeleteGroupsResponse_DeletableGroupResult *rs =
                ks_msg_new_array(&ks_DeleteGroupsResponse_DeletableGroupResult_desc, n, &req->arena);
        if (!resp || !rs) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < n; i++) {
                rs[i].GroupId = rq->GroupsNames.items[i];
                rs[i].ErrorCode = delete_group(b, rq->GroupsNames.items[i]);
        }
        resp->Results.items = rs;
        resp->Results.count = n;
        ks_req_respond(req, resp);
}

void ks_handle_delete_groups(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, delete_groups_work);
}
