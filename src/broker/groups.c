/*
 * groups.c — FindCoordinator, the group membership APIs (JoinGroup,
 * SyncGroup, Heartbeat, LeaveGroup), where group requests are served
 * (group_route.h) and the cluster module's group hooks.
 *
 * Embedded and memory mode: this broker coordinates every group it is
 * asked about and answers FindCoordinator with itself.  Cluster mode: the
 * coordinator is the group's lease holder, else the broker the placement
 * names (ks_cluster_group_coordinator); FindCoordinator names it, requests
 * reaching another broker get NOT_COORDINATOR.
 *
 * Threads: the handlers run on I/O threads and never block; a request for
 * a group this broker must first acquire moves to a worker
 * (ks_broker_offload), where acquiring and loading block.  The group
 * coordinator's handlers may run on either (group/group.h).  The hooks run
 * on the cluster module's `ks-cluster` thread and may block.
 */
#include <stdlib.h>
#include <string.h>

#include "broker/group_route.h"
#include "meta/offsets.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

#define KEY_TYPE_GROUP 0
#define KEY_TYPE_TRANSACTION 1

/* --- routing (group_route.h) ------------------------------------------------------ */

bool ks_group_cluster_mode(const ks_broker_t *b)
{
        return b->cfg->etcd_endpoints[0] != 0;
}

ks_cluster_t *ks_group_cluster(ks_broker_t *b)
{
        /* Written by broker.c on the main thread after the I/O threads
         * started (ks_cluster_start's *out) and cleared at stop. */
        return __atomic_load_n(&b->cluster, __ATOMIC_ACQUIRE);
}

/* The validated group id as a C string (valid ids hold no NUL). */
static void group_cstr(ks_str_t group, char out[KS_GROUP_ID_MAX + 1])
{
        memcpy(out, group.ptr, (size_t)group.len);
        out[group.len] = '\0';
}

int ks_group_route(ks_broker_t *b, ks_str_t group)
{
        if (!ks_group_cluster_mode(b) || ks_group_id_check(group))
                return 0;
        ks_cluster_t *c = ks_group_cluster(b);
        if (!c || b->stopping || !b->groups)
                return KS_ERR_COORDINATOR_NOT_AVAILABLE;
        char name[KS_GROUP_ID_MAX + 1];
        group_cstr(group, name);
        if (ks_cluster_owns_group(c, name))
                return ks_groups_coordinates(b->groups, group) ? 0 : KS_GROUP_ROUTE_ACQUIRE;
        if (ks_cluster_group_coordinator(c, name) == ks_cluster_broker_id(c))
                return KS_GROUP_ROUTE_ACQUIRE;
        return KS_ERR_NOT_COORDINATOR;
}

int16_t ks_group_route_blocking(ks_broker_t *b, ks_str_t group)
{
        int r = ks_group_route(b, group);
        if (r != KS_GROUP_ROUTE_ACQUIRE)
                return (int16_t)r;
        ks_cluster_t *c = ks_group_cluster(b);
        if (!c)
                return KS_ERR_COORDINATOR_NOT_AVAILABLE;
        char name[KS_GROUP_ID_MAX + 1];
        group_cstr(group, name);
        /* Returns once group_acquired ran (it loads the group), or at once
         * if the group is held here already — its load may still be under
         * way, or may have failed: ks_groups_load then reads it itself
         * (whichever load finishes first is kept). */
        ks_err_t err = ks_cluster_acquire_group(c, name);
        if (!err)
                err = ks_groups_load(b->groups, name);
        switch (err) {
        case 0:
                return 0;
        case KS_ERR_NOT_COORDINATOR:
                return KS_ERR_NOT_COORDINATOR;
        default:
                /* KS_ERR__UNAVAILABLE (no session, store failed),
                 * KS_ERR__TIMEOUT (the cluster thread is busy), a store
                 * error while loading, shutting down: try again. */
                ks_log_debug("group_acquire_failed", "group=\"%s\" err=%s", name, ks_err_name(err));
                return KS_ERR_COORDINATOR_NOT_AVAILABLE;
        }
}

/* Does the store know the group (a group record or a committed offset)?
 * True when it cannot tell: the caller then takes the usual path. */
static bool group_stored(ks_broker_t *b, const char *group)
{
        uint8_t *buf = NULL;
        size_t len = 0;
        ks_err_t err = ks_meta_group_get(b->meta, group, &buf, &len);
        free(buf);
        if (err != KS_ERR__NOT_FOUND)
                return true;
        return ks_offsets_group_has_any(b->kv, group);
}

int16_t ks_group_route_lookup(ks_broker_t *b, ks_str_t group, bool *absent)
{
        *absent = false;
        if (ks_group_route(b, group) == KS_GROUP_ROUTE_ACQUIRE) {
                ks_cluster_t *c = ks_group_cluster(b);
                char name[KS_GROUP_ID_MAX + 1];
                group_cstr(group, name);
                if (c && !ks_cluster_owns_group(c, name) && !group_stored(b, name)) {
                        *absent = true;
                        return 0;
                }
        }
        return ks_group_route_blocking(b, group);
}

int16_t ks_group_fence(ks_broker_t *b, const char *group, ks_group_fence_t *f)
{
        f->use = NULL;
        if (!ks_group_cluster_mode(b))
                return 0;
        ks_cluster_t *c = ks_group_cluster(b);
        if (!c || !ks_cluster_group_fence_cmp(c, group, f->key, sizeof(f->key), &f->cmp))
                return KS_ERR_NOT_COORDINATOR;
        f->use = &f->cmp;
        return 0;
}

bool ks_group_write_fenced(ks_broker_t *b, const char *group, const ks_group_fence_t *f, ks_err_t err)
{
        if (err != KS_ERR__CONFLICT || !f->use)
                return false;
        ks_log_warn("group_write_fenced", "group=\"%s\" action=unload", group);
        if (b->groups)
                ks_groups_fenced(b->groups, group, f->cmp.number);
        return true;
}

/* --- the group coordinator in this broker's mode ------------------------------------ */

/* ks_groups_config_t.owns / .fence over the cluster module (any thread,
 * possibly under the coordinator lock: both only take the cluster module's
 * own short lock). */
static bool coordinator_owns(void *opaque, const char *group)
{
        ks_cluster_t *c = ks_group_cluster(opaque);
        return c && ks_cluster_owns_group(c, group);
}

static bool coordinator_fence(void *opaque, const char *group, char *keybuf, size_t keylen, ks_kv_cmp_t *cmp)
{
        ks_cluster_t *c = ks_group_cluster(opaque);
        if (!c) {
                /* A compare that never holds, as the cluster module builds
                 * for a group it does not hold. */
                *cmp = (ks_kv_cmp_t){ .key = keybuf, .key_len = 0, .target = KS_KV_CMP_CREATE, .op = KS_KV_EQUAL,
                                      .number = -1 };
                return false;
        }
        return ks_cluster_group_fence_cmp(c, group, keybuf, keylen, cmp);
}

int ks_broker_groups_open(ks_broker_t *b)
{
        const ks_config_t *cfg = b->cfg;
        bool cluster = ks_group_cluster_mode(b);
        ks_groups_config_t gcfg = {
                .min_session_timeout_ms = cfg->group_min_session_timeout_ms,
                .max_session_timeout_ms = cfg->group_max_session_timeout_ms,
                .initial_rebalance_delay_ms = cfg->group_initial_rebalance_delay_ms,
                .owns = cluster ? coordinator_owns : NULL,
                .fence = cluster ? coordinator_fence : NULL,
                .opaque = b,
        };
        ks_err_t err = ks_groups_open(&gcfg, b->meta, &b->groups);
        if (err) {
                ks_log_error("groups_open_failed", "err=%s", ks_err_name(err));
                return -1;
        }
        return 0;
}

void ks_broker_group_acquired(void *opaque, const char *group)
{
        ks_broker_t *b = opaque;
        if (!b->groups)
                return;
        /* On failure the group stays unloaded; the next request for it
         * loads it (ks_group_route_blocking). */
        ks_err_t err = ks_groups_load(b->groups, group);
        if (err)
                ks_log_warn("group_acquired_not_loaded", "group=\"%s\" err=%s", group, ks_err_name(err));
}

void ks_broker_group_release(void *opaque, const char *group)
{
        ks_broker_t *b = opaque;
        if (b->groups)
                ks_groups_unload(b->groups, group, true);
}

void ks_broker_group_lost(void *opaque, const char *group)
{
        ks_broker_t *b = opaque;
        if (b->groups)
                ks_groups_unload(b->groups, group, false);
}

/* --- FindCoordinator ----------------------------------------------------------------- */

static void fill_coordinator(ks_broker_t *b, ks_req_t *req, int8_t key_type, ks_str_t key, int16_t *err,
                             ks_str_t *msg, int32_t *node, ks_str_t *host, int32_t *port)
{
        *node = -1;
        *host = KS_STR("");
        *port = -1;
        *msg = KS_STR_NULL;
        if (key_type == KEY_TYPE_TRANSACTION) {
                /* Fatal for the client at once (not retried), with this
                 * message: transactions are out of scope. */
                *err = KS_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
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
        if (!ks_group_cluster_mode(b)) {
                *err = 0;
                *node = b->cfg->broker_id;
                *host = ks_str_c(b->cfg->advertised_host);
                *port = b->cfg->advertised_port;
                return;
        }
        /* Cluster mode: the lease holder, else the placement's choice. */
        ks_cluster_t *c = ks_group_cluster(b);
        char name[KS_GROUP_ID_MAX + 1];
        group_cstr(key, name);
        int32_t id = c ? ks_cluster_group_coordinator(c, name) : -1;
        ks_broker_info_t bi;
        if (id < 0 || !ks_cluster_broker_get(c, id, &bi)) {
                *err = KS_ERR_COORDINATOR_NOT_AVAILABLE;
                return;
        }
        *host = ks_arena_str(&req->arena, "%s", bi.host);
        if (ks_str_is_null(*host)) {
                *host = KS_STR("");
                *err = KS_ERR_COORDINATOR_NOT_AVAILABLE;
                return;
        }
        *err = 0;
        *node = id;
        *port = bi.port;
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
                fill_coordinator(b, req, key_type, rq->Key, &resp->ErrorCode, &resp->ErrorMessage, &resp->NodeId,
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
                fill_coordinator(b, req, key_type, cs[i].Key, &cs[i].ErrorCode, &cs[i].ErrorMessage, &cs[i].NodeId,
                                 &cs[i].Host, &cs[i].Port);
        }
        resp->Coordinators.items = cs;
        resp->Coordinators.count = n;
        ks_req_respond(req, resp);
}

/* --- the membership APIs ------------------------------------------------------------- */

static ks_str_t membership_group(const ks_req_t *req)
{
        switch (req->hdr.RequestApiKey) {
        case KS_API_JOIN_GROUP:
                return ((const ks_JoinGroupRequest *)req->request)->GroupId;
        case KS_API_SYNC_GROUP:
                return ((const ks_SyncGroupRequest *)req->request)->GroupId;
        case KS_API_HEARTBEAT:
                return ((const ks_HeartbeatRequest *)req->request)->GroupId;
        default:
                return ((const ks_LeaveGroupRequest *)req->request)->GroupId;
        }
}

static void membership_serve(ks_broker_t *b, ks_req_t *req)
{
        switch (req->hdr.RequestApiKey) {
        case KS_API_JOIN_GROUP:
                ks_groups_join(b->groups, req);
                return;
        case KS_API_SYNC_GROUP:
                ks_groups_sync(b->groups, req);
                return;
        case KS_API_HEARTBEAT:
                ks_groups_heartbeat(b->groups, req);
                return;
        default:
                ks_groups_leave(b->groups, req);
                return;
        }
}

/* Worker: acquire and load the group, then serve (or refuse). */
static void membership_work(ks_broker_t *b, ks_req_t *req)
{
        int16_t err = ks_group_route_blocking(b, membership_group(req));
        if (err)
                ks_groups_refuse(req, err);
        else
                membership_serve(b, req);
}

/* I/O thread: JoinGroup, SyncGroup, Heartbeat and LeaveGroup answer
 * NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE with their top-level error
 * code, as Kafka does. */
static void membership_route(ks_broker_t *b, ks_req_t *req)
{
        int r = ks_group_route(b, membership_group(req));
        if (r == 0)
                membership_serve(b, req);
        else if (r == KS_GROUP_ROUTE_ACQUIRE)
                ks_broker_offload(b, req, membership_work);
        else
                ks_groups_refuse(req, (int16_t)r);
}

void ks_handle_join_group(ks_broker_t *b, ks_req_t *req)
{
        membership_route(b, req);
}

void ks_handle_sync_group(ks_broker_t *b, ks_req_t *req)
{
        membership_route(b, req);
}

void ks_handle_heartbeat(ks_broker_t *b, ks_req_t *req)
{
        membership_route(b, req);
}

void ks_handle_leave_group(ks_broker_t *b, ks_req_t *req)
{
        membership_route(b, req);
}
