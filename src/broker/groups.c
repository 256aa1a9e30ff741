/*
 * groups.c — FindCoordinator and the group membership APIs.
 *
 * This broker coordinates every group it is asked about (one broker;
 * coordinator placement across brokers comes with cluster mode).  The
 * membership APIs go to the coordinator (group/group.h), which answers or
 * parks them.  Runs on I/O threads; nothing blocks.
 */
#include "broker/broker.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

#define KEY_TYPE_GROUP 0
#define KEY_TYPE_TRANSACTION 1

static void fill_coordinator(ks_broker_t *b, int8_t key_type, ks_str_t key, int16_t *err, ks_str_t *msg,
                             int32_t *node, ks_str_t *host, int32_t *port)
{
        *node = -1;
        *host = KS_STR("");
        *port = -1;
        *msg = KS_STR_NULL;
        if (key_type == KEY_TYPE_TRANSACTION) {
                *err = KS_ERR_INVALID_REQUEST;
                *msg = KS_STR("Transactions are not supported by this broker.");
                return;
        }
        if (key_type != KEY_TYPE_GROUP) {
                *err = KS_ERR_INVALID_REQUEST;
                *msg = KS_STR("Unknown coordinator key type.");
                return;
        }
        if (ks_group_id_check(key)) {
                *err = KS_ERR_INVALID_GROUP_ID;
                return;
        }
        *err = 0;
        *node = b->cfg->broker_id;
        *host = ks_str_c(b->cfg->advertised_host);
        *port = b->cfg->advertised_port;
}

int ks_broker_groups_open(ks_broker_t *b)
{
        const ks_config_t *cfg = b->cfg;
        ks_groups_config_t gcfg = { cfg->group_min_session_timeout_ms, cfg->group_max_session_timeout_ms,
                                    cfg->group_initial_rebalance_delay_ms, NULL, NULL, NULL };
        ks_err_t err = ks_groups_open(&gcfg, b->meta, &b->groups);
        if (err) {
                ks_log_error("groups_open_failed", "err=%s", ks_err_name(err));
                return -1;
        }
        return 0;
}

void ks_broker_group_acquired(void *opaque, const char *group)
{
        (void)opaque;
        (void)group;
}

void ks_broker_group_release(void *opaque, const char *group)
{
        (void)opaque;
        (void)group;
}

void ks_broker_group_lost(void *opaque, const char *group)
{
        (void)opaque;
        (void)group;
}

void ks_handle_find_coordinator(ks_broker_t *b, ks_req_t *req)
{
        const ks_FindCoordinatorRequest *rq = req->request;
        ks_FindCoordinatorResponse *resp = ks_msg_new(&ks_FindCoordinatorResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        int8_t key_type = req->hdr.RequestApiVersion >= 1 ? rq->KeyType : KEY_TYPE_GROUP;
        if (req->hdr.RequestApiVersion < 4) {
                fill_coordinator(b, key_type, rq->Key, &resp->ErrorCode, &resp->ErrorMessage, &resp->NodeId,
                                 &resp->Host, &resp->Port);
                ks_req_respond(req, resp);
                return;
        }
        /* v4+: a batch of keys (KIP-699). */
        int32_t n = rq->CoordinatorKeys.count > 0 ? rq->CoordinatorKeys.count : 0;
        ks_FindCoordinatorResponse_Coordinator *cs =
                ks_msg_new_array(&ks_FindCoordinatorResponse_Coordinator_desc, n, &req->arena);
        if (!cs) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < n; i++) {
                cs[i].Key = rq->CoordinatorKeys.items[i];
                fill_coordinator(b, key_type, cs[i].Key, &cs[i].ErrorCode, &cs[i].ErrorMessage, &cs[i].NodeId,
                                 &cs[i].Host, &cs[i].Port);
        }
        resp->Coordinators.items = cs;
        resp->Coordinators.count = n;
        ks_req_respond(req, resp);
}

void ks_handle_join_group(ks_broker_t *b, ks_req_t *req)
{
        ks_groups_join(b->groups, req);
}

void ks_handle_sync_group(ks_broker_t *b, ks_req_t *req)
{
        ks_groups_sync(b->groups, req);
}

void ks_handle_heartbeat(ks_broker_t *b, ks_req_t *req)
{
        ks_groups_heartbeat(b->groups, req);
}

void ks_handle_leave_group(ks_broker_t *b, ks_req_t *req)
{
        ks_groups_leave(b->groups, req);
}
