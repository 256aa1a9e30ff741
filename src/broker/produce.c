/*
 * produce.c — Produce v3+.
 *
 * Runs on the request's I/O thread.  Every partition's records are
 * validated (ks_batches_validate) and appended to the partition log, which
 * assigns offsets.  With acks=0 the request completes at once; otherwise it
 * waits until every appended partition is durable (the log calls back on
 * this loop) or the request's timeout passes (REQUEST_TIMED_OUT for the
 * partitions still pending).
 *
 * The wait state (produce_ctx_t) is malloc'ed, not arena-allocated: the log
 * may call back after the request has already been answered on timeout, so
 * the context lives until the last callback has arrived.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "log/batch.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

#define MAX_BATCHES_PER_PARTITION 64

typedef struct produce_ctx produce_ctx_t;

typedef struct produce_slot {
        produce_ctx_t *ctx;
        ks_ProduceResponse_PartitionProduceResponse *pr;
        bool waiting; /* appended, durability not yet reported */
} produce_slot_t;

struct produce_ctx {
        ks_req_t *req; /* NULL once answered */
        ks_ProduceResponse *resp;
        ks_timer_t timer;
        ks_loop_t *loop;
        int pending;   /* log callbacks still to come */
        produce_slot_t *slots;
        int nslots;
};

static void produce_ctx_maybe_free(produce_ctx_t *ctx)
{
        if (!ctx->req && ctx->pending == 0) {
                free(ctx->slots);
                free(ctx);
        }
}

static void produce_answer(produce_ctx_t *ctx)
{
        ks_timer_cancel(ctx->loop, &ctx->timer);
        ks_req_t *req = ctx->req;
        ctx->req = NULL;
        ks_req_respond(req, ctx->resp);
}

static void produce_durable(void *opaque, ks_err_t err)
{
        produce_slot_t *slot = opaque;
        produce_ctx_t *ctx = slot->ctx;
        ctx->pending--;
        slot->waiting = false;
        if (ctx->req) {
                if (err) {
                        slot->pr->ErrorCode = ks_err_to_wire(err);
                        slot->pr->BaseOffset = -1;
                        ks_metric_inc(ks_std_metrics.produce_errors, 0);
                }
                if (ctx->pending == 0)
                        produce_answer(ctx);
        }
        produce_ctx_maybe_free(ctx);
}

static void produce_timeout(ks_loop_t *loop, ks_timer_t *t)
{
        (void)loop;
        produce_ctx_t *ctx = t->opaque;
        if (!ctx->req)
                return;
        /* Partitions still waiting for durability time out; their records
         * may still become durable later, as with Kafka's timeouts. */
        for (int i = 0; i < ctx->nslots; i++) {
                produce_slot_t *slot = &ctx->slots[i];
                if (slot->waiting) {
                        slot->pr->ErrorCode = KS_ERR_REQUEST_TIMED_OUT;
                        slot->pr->BaseOffset = -1;
                        ks_metric_inc(ks_std_metrics.produce_errors, 0);
                }
        }
        produce_answer(ctx);
        produce_ctx_maybe_free(ctx);
}

void ks_handle_produce(ks_broker_t *b, ks_req_t *req)
{
        const ks_ProduceRequest *rq = req->request;
        bool acks0 = rq->Acks == 0;
        ks_ProduceResponse *resp = ks_msg_new(&ks_ProduceResponse_desc, &req->arena);
        int32_t ntopics = rq->TopicData.count > 0 ? rq->TopicData.count : 0;
        ks_ProduceResponse_TopicProduceResponse *trs =
                ks_msg_new_array(&ks_ProduceResponse_TopicProduceResponse_desc, ntopics, &req->arena);
        int total = 0;
        for (int32_t i = 0; i < ntopics; i++)
                total += rq->TopicData.items[i].PartitionData.count > 0 ? rq->TopicData.items[i].PartitionData.count
                                                                         : 0;
        produce_ctx_t *ctx = calloc(1, sizeof(*ctx));
        produce_slot_t *slots = calloc((size_t)(total ? total : 1), sizeof(*slots));
        ks_batch_info_t *infos = ks_arena_alloc(&req->arena, MAX_BATCHES_PER_PARTITION * sizeof(*infos));
        if (!resp || !trs || !ctx || !slots || !infos) {
                free(ctx);
                free(slots);
                ks_req_close(req, "out of memory");
                return;
        }
        ctx->req = req;
        ctx->resp = resp;
        ctx->loop = ks_loop_current();
        ctx->slots = slots;
        ks_timer_init(&ctx->timer, produce_timeout, ctx);
        /* While appending, hold one extra "pending" so that a callback
         * arriving synchronously cannot answer early. */
        ctx->pending = 1;

        bool transactional = !ks_str_is_null(rq->TransactionalId) && rq->TransactionalId.len > 0;
        int s = 0;
        for (int32_t i = 0; i < ntopics; i++) {
                const ks_ProduceRequest_TopicProduceData *td = &rq->TopicData.items[i];
                ks_ProduceResponse_TopicProduceResponse *tr = &trs[i];
                int32_t np = td->PartitionData.count > 0 ? td->PartitionData.count : 0;
                ks_ProduceResponse_PartitionProduceResponse *prs =
                        ks_msg_new_array(&ks_ProduceResponse_PartitionProduceResponse_desc, np, &req->arena);
                if (!prs) {
                        np = 0;
                }
                tr->Name = td->Name;
                tr->PartitionResponses.items = prs;
                tr->PartitionResponses.count = np;
                for (int32_t j = 0; j < np; j++) {
                        const ks_ProduceRequest_PartitionProduceData *pd = &td->PartitionData.items[j];
                        ks_ProduceResponse_PartitionProduceResponse *pr = &prs[j];
                        pr->Index = pd->Index;
                        pr->BaseOffset = -1;
                        pr->LogAppendTimeMs = -1;
                        pr->LogStartOffset = -1;
                        char msg[256] = "";
                        ks_err_t err = 0;
                        ks_partition_t *p = NULL;
                        int nb = 0;
                        if (req->hdr.RequestApiVersion < 3) {
                                err = KS_ERR_UNSUPPORTED_VERSION;
                                snprintf(msg, sizeof(msg), "Produce v0-v2 (message format v0/v1) is not supported: "
                                                           "use a client that sends record batches (Produce v3+).");
                        } else if (transactional) {
                                err = KS_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
                                snprintf(msg, sizeof(msg), "Transactions are not supported by this broker.");
                        } else if (rq->Acks != 0 && rq->Acks != 1 && rq->Acks != -1) {
                                err = KS_ERR_INVALID_REQUIRED_ACKS;
                        } else if (!(p = ks_log_partition(b->log, td->Name, pd->Index))) {
                                err = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                        } else if (pd->Records.len <= 0) {
                                err = KS_ERR_INVALID_RECORD;
                                snprintf(msg, sizeof(msg), "No record batch in the request.");
                        } else {
                                err = ks_batches_validate(pd->Records.ptr, (size_t)pd->Records.len,
                                                          b->log_cfg.max_batch_bytes, infos,
                                                          MAX_BATCHES_PER_PARTITION, &nb, msg, sizeof(msg));
                        }
                        if (!err) {
                                int64_t base = -1;
                                slots[s].ctx = ctx;
                                slots[s].pr = pr;
                                slots[s].waiting = !acks0;
                                err = ks_partition_append(p, (uint8_t *)pd->Records.ptr, (size_t)pd->Records.len,
                                                          infos, nb, &base, ctx->loop,
                                                          acks0 ? NULL : produce_durable, &slots[s]);
                                bool retry = err == KS_ERR__EXISTS; /* an idempotent producer's retry */
                                if (retry)
                                        err = 0;
                                if (!err && !retry) {
                                        int64_t records = 0;
                                        for (int k = 0; k < nb; k++)
                                                records += infos[k].records_count;
                                        ks_metric_add(ks_std_metrics.produce_records, 0, records);
                                        ks_metric_add(ks_std_metrics.produce_bytes, 0, pd->Records.len);
                                }
                                if (!err) {
                                        ks_partition_offsets_t po;
                                        ks_partition_offsets(p, &po);
                                        pr->LogStartOffset = po.log_start;
                                        pr->BaseOffset = base;
                                        if (!acks0) {
                                                ctx->pending++;
                                                s++;
                                        }
                                }
                        }
                        if (err) {
                                pr->ErrorCode = ks_err_to_wire(err);
                                pr->BaseOffset = -1;
                                ks_metric_inc(ks_std_metrics.produce_errors, 0);
                                if (msg[0])
                                        pr->ErrorMessage = ks_arena_str(&req->arena, "%s", msg);
                                ks_log_debug("produce_rejected", "topic=%.*s partition=%d err=%s msg=\"%s\"",
                                             td->Name.len > 0 ? (int)td->Name.len : 0, td->Name.ptr ? td->Name.ptr : "",
                                             pd->Index, ks_err_name(err), msg);
                        }
                        if (p)
                                ks_partition_release(p);
                }
        }
        resp->Responses.items = trs;
        resp->Responses.count = ntopics;

        ctx->nslots = s;
        ctx->pending--; /* drop the guard */
        if (acks0) {
                ctx->req = NULL;
                ks_req_respond_none(req);
                produce_ctx_maybe_free(ctx);
                return;
        }
        if (ctx->pending == 0) {
                produce_answer(ctx);
                produce_ctx_maybe_free(ctx);
                return;
        }
        int64_t timeout = rq->TimeoutMs > 0 ? rq->TimeoutMs : 0;
        ks_timer_arm(ctx->loop, &ctx->timer, ks_loop_now_ms() + timeout);
}
