/*
 * group_admin.c — the group ops APIs of the seed: ListGroups v0-v5,
 * DescribeGroups v0-v5, DeleteGroups v0-v2.
 *
 * ListGroups and DescribeGroups answer from the coordinator's memory on the
 * I/O thread.  DeleteGroups removes a group's records (its metadata and
 * committed offsets, never topic data) from the metadata store on a worker.
 */
#include <strings.h>

#include "broker/broker.h"
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

void ks_handle_list_groups(ks_broker_t *b, ks_req_t *req)
{
        const ks_ListGroupsRequest *rq = req->request;
        int16_t v = req->hdr.RequestApiVersion;
        ks_ListGroupsResponse *resp = ks_msg_new(&ks_ListGroupsResponse_desc, &req->arena);
        ks_group_summary_t *all = NULL;
        int n = resp ? ks_groups_list(b->groups, &all) : -1;
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
        resp->Groups.items = out;
        resp->Groups.count = k;
        ks_req_respond(req, resp);
}

void ks_handle_describe_groups(ks_broker_t *b, ks_req_t *req)
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
        for (int32_t i = 0; i < n; i++)
                ks_groups_describe(b->groups, rq->Groups.items[i], ops, &req->arena, &ds[i]);
        resp->Groups.items = ds;
        resp->Groups.count = n;
        ks_req_respond(req, resp);
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
                ks_str_t id = rq->GroupsNames.items[i];
                rs[i].GroupId = id;
                bool known;
                ks_err_t err = ks_groups_delete_begin(b->groups, id, &known);
                char name[256];
                snprintf(name, sizeof(name), "%.*s", id.len > 0 ? (int)id.len : 0, id.ptr ? id.ptr : "");
                if (!err && !known) {
                        /* Not in the coordinator; offsets alone still make
                         * it a group that can be deleted. */
                        err = ks_offsets_group_has_any(b->kv, name) ? 0 : KS_ERR_GROUP_ID_NOT_FOUND;
                }
                if (!err) {
                        /* Its committed offsets, then its record (the
                         * coordinator deletes it in order with its other
                         * record writes); topic data stays untouched. */
                        ks_err_t e = ks_offsets_delete_group(b->kv, name, NULL);
                        if (e) {
                                ks_log_warn("group_delete_failed", "group=\"%s\" err=%s", name, ks_err_name(e));
                                ks_groups_delete_abort(b->groups, id);
                        } else {
                                e = ks_groups_delete_finish(b->groups, id);
                        }
                        if (e)
                                err = e == KS_ERR__UNAVAILABLE || e == KS_ERR__TIMEOUT
                                              ? KS_ERR_COORDINATOR_NOT_AVAILABLE
                                              : ks_err_to_wire(e);
                }
                rs[i].ErrorCode = (int16_t)err;
        }
        resp->Results.items = rs;
        resp->Results.count = n;
        ks_req_respond(req, resp);
}

void ks_handle_delete_groups(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, delete_groups_work);
}
