/*
 * dispatch.c — the handler table, request dispatch and ApiVersions.
 *
 * The table below is the single statement of what this broker implements:
 * ApiVersions advertises exactly its rows, and the dispatcher refuses every
 * other API key and version.  Runs on I/O threads.
 *
 * Request metrics: every request is counted in flight when dispatched; the
 * server's completion hook (ks_broker_request_done) counts it by API key
 * and version, as an error if it was answered by closing the connection,
 * and observes its latency from arrival to completion.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/broker.h"
#include "metrics/metrics.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

const ks_handler_t ks_handlers[] = {
        /* Produce v0-v2 are advertised but answered UNSUPPORTED_VERSION per
         * partition: librdkafka only compresses with gzip/snappy/lz4 when
         * the advertised range starts at v0 (as Apache Kafka 4 does). */
        { KS_API_PRODUCE, 0, 11, ks_handle_produce, 0 },
        { KS_API_FETCH, 4, 17, ks_handle_fetch, 4 },
        { KS_API_LIST_OFFSETS, 0, 10, ks_handle_list_offsets, 0 },
        { KS_API_METADATA, 0, 12, ks_handle_metadata, 0 },
        { KS_API_OFFSET_COMMIT, 0, 9, ks_handle_offset_commit, 0 },
        { KS_API_OFFSET_FETCH, 0, 9, ks_handle_offset_fetch, 0 },
        { KS_API_FIND_COORDINATOR, 0, 6, ks_handle_find_coordinator, 0 },
        { KS_API_JOIN_GROUP, 0, 9, ks_handle_join_group, 0 },
        { KS_API_HEARTBEAT, 0, 4, ks_handle_heartbeat, 0 },
        { KS_API_LEAVE_GROUP, 0, 5, ks_handle_leave_group, 0 },
        { KS_API_SYNC_GROUP, 0, 5, ks_handle_sync_group, 0 },
        { KS_API_OFFSET_FOR_LEADER_EPOCH, 0, 4, ks_handle_offset_for_leader_epoch, 0 },
        { KS_API_DESCRIBE_GROUPS, 0, 5, ks_handle_describe_groups, 0 },
        { KS_API_LIST_GROUPS, 0, 5, ks_handle_list_groups, 0 },
        { KS_API_DELETE_GROUPS, 0, 2, ks_handle_delete_groups, 0 },
        { KS_API_DESCRIBE_CONFIGS, 0, 4, ks_handle_describe_configs, 0 },
        { KS_API_ALTER_CONFIGS, 0, 2, ks_handle_alter_configs, 0 },
        { KS_API_CREATE_PARTITIONS, 0, 3, ks_handle_create_partitions, 0 },
        { KS_API_INCREMENTAL_ALTER_CONFIGS, 0, 1, ks_handle_incremental_alter_configs, 0 },
        { KS_API_API_VERSIONS, 0, 4, ks_handle_api_versions, 0 },
        { KS_API_CREATE_TOPICS, 0, 7, ks_handle_create_topics, 0 },
        { KS_API_DELETE_TOPICS, 0, 6, ks_handle_delete_topics, 0 },
        { KS_API_DESCRIBE_CLUSTER, 0, 1, ks_handle_describe_cluster, 0 },
        { KS_API_INIT_PRODUCER_ID, 0, 5, ks_handle_init_producer_id, 0 },
};
const int ks_handlers_count = (int)(sizeof(ks_handlers) / sizeof(ks_handlers[0]));

/* APIs deferred (DeleteRecords, OffsetDelete) or out of scope
 * (transactions): advertised with MinVersion = MaxVersion = -1 so tools can
 * tell. */
const int16_t ks_unsupported_apis[] = {
        KS_API_DELETE_RECORDS,
        24, /* AddPartitionsToTxn */
        25, /* AddOffsetsToTxn */
        26, /* EndTxn */
        27, /* WriteTxnMarkers */
        28, /* TxnOffsetCommit */
        KS_API_OFFSET_DELETE,
};
const int ks_unsupported_apis_count = (int)(sizeof(ks_unsupported_apis) / sizeof(ks_unsupported_apis[0]));

const ks_handler_t *ks_handler_find(int16_t api_key)
{
        for (int i = 0; i < ks_handlers_count; i++)
                if (ks_handlers[i].api_key == api_key)
                        return &ks_handlers[i];
        return NULL;
}

void ks_broker_request_done(void *ctx, const ks_req_t *req, int outcome)
{
        (void)ctx;
        const ks_std_metrics_t *m = &ks_std_metrics;
        int16_t key = req->hdr.RequestApiKey;
        int kv = ks_metrics_api_version_series(key, req->hdr.RequestApiVersion);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - req->received_ns;
        ks_metric_add(m->requests_inflight, 0, -1);
        ks_metric_inc(m->requests, kv);
        if (outcome == KS_REQ_OUTCOME_CLOSED)
                ks_metric_inc(m->request_errors, kv);
        ks_metric_observe(m->request_duration, ks_metrics_api_series(key), (double)(ns > 0 ? ns : 0) / 1e9);
}

void ks_broker_dispatch(void *ctx, ks_req_t *req)
{
        ks_broker_t *b = ctx;
        ks_metric_inc(ks_std_metrics.requests_inflight, 0);
        const ks_handler_t *h = ks_handler_find(req->hdr.RequestApiKey);
        int16_t v = req->hdr.RequestApiVersion;
        if (!h || !req->api) {
                /* Kafka closes the connection on an API key it does not know. */
                ks_req_close(req, "unsupported API key");
                return;
        }
        if (b->stopping) {
                ks_req_close(req, "broker shutting down");
                return;
        }
        if (v < h->answer_from || v > h->max_version) {
                if (h->api_key == KS_API_API_VERSIONS) {
                        /* KIP-511: answer a too-new ApiVersions with v0 and
                         * UNSUPPORTED_VERSION, listing what we support. */
                        ks_ApiVersionsResponse *resp = ks_msg_new(&ks_ApiVersionsResponse_desc, &req->arena);
                        if (!resp) {
                                ks_req_close(req, "out of memory");
                                return;
                        }
                        ks_api_versions_fill(req, resp);
                        resp->ErrorCode = KS_ERR_UNSUPPORTED_VERSION;
                        ks_req_respond_version(req, 0, resp);
                        return;
                }
                /* Kafka closes the connection on an API version it does not
                 * serve (the client negotiated versions with ApiVersions). */
                ks_req_close(req, "unsupported API version");
                return;
        }
        ks_err_t err = ks_request_decode(req->api, v, req->body, req->body_len, &req->arena, &req->request);
        if (err) {
                ks_req_close(req, err == KS_ERR__NOMEM ? "out of memory" : "malformed request body");
                return;
        }
        h->fn(b, req);
}

/* --- worker offload ------------------------------------------------------- */

typedef struct offload {
        ks_broker_t *b;
        ks_req_t *req;
        ks_handler_fn *fn;
} offload_t;

static void offload_run(void *arg)
{
        offload_t *o = arg;
        o->fn(o->b, o->req);
        free(o);
}

void ks_broker_offload(ks_broker_t *b, ks_req_t *req, ks_handler_fn *fn)
{
        offload_t *o = malloc(sizeof(*o));
        if (o) {
                o->b = b;
                o->req = req;
                o->fn = fn;
                if (ks_workq_submit(b->workq, offload_run, o) == 0)
                        return;
                free(o);
        }
        ks_req_close(req, "cannot queue work (shutting down or out of memory)");
}

/* --- ApiVersions ---------------------------------------------------------- */

void ks_api_versions_fill(ks_req_t *req, void *respv)
{
        ks_ApiVersionsResponse *resp = respv;
        int n = ks_handlers_count + ks_unsupported_apis_count;
        ks_ApiVersionsResponse_ApiVersion *keys =
                ks_msg_new_array(&ks_ApiVersionsResponse_ApiVersion_desc, n, &req->arena);
        if (!keys) {
                resp->ApiKeys.count = 0;
                return;
        }
        /* Sorted by api key, as Kafka lists them. */
        int k = 0;
        for (int16_t key = 0; key < 1000 && k < n; key++) {
                const ks_handler_t *h = ks_handler_find(key);
                if (h) {
                        keys[k].ApiKey = key;
                        keys[k].MinVersion = h->min_version;
                        keys[k].MaxVersion = h->max_version;
                        k++;
                        continue;
                }
                for (int i = 0; i < ks_unsupported_apis_count; i++) {
                        if (ks_unsupported_apis[i] == key) {
                                keys[k].ApiKey = key;
                                keys[k].MinVersion = -1;
                                keys[k].MaxVersion = -1;
                                k++;
                        }
                }
        }
        resp->ApiKeys.items = keys;
        resp->ApiKeys.count = k;
}

/* KIP-511: client software name and version must match
 * [a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])? */
static bool software_field_valid(ks_str_t s)
{
        if (s.len <= 0)
                return false;
        for (int32_t i = 0; i < s.len; i++) {
                char c = s.ptr[i];
                bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
                bool inner = c == '-' || c == '.';
                if (!alnum && (!inner || i == 0 || i == s.len - 1))
                        return false;
        }
        return true;
}

void ks_handle_api_versions(ks_broker_t *b, ks_req_t *req)
{
        (void)b;
        const ks_ApiVersionsRequest *rq = req->request;
        ks_ApiVersionsResponse *resp = ks_msg_new(&ks_ApiVersionsResponse_desc, &req->arena);
        if (!resp) {
                ks_req_close(req, "out of memory");
                return;
        }
        if (req->hdr.RequestApiVersion >= 3 &&
            (!software_field_valid(rq->ClientSoftwareName) || !software_field_valid(rq->ClientSoftwareVersion))) {
                resp->ErrorCode = KS_ERR_INVALID_REQUEST;
                ks_req_respond(req, resp);
                return;
        }
        ks_api_versions_fill(req, resp);
        ks_req_respond(req, resp);
}
