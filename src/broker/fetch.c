/*
 * fetch.c — Fetch v4+ with long polling.
 *
 * A fetch gathers, for each requested partition, whole batches from the
 * offset asked for, within the partition's and the request's MaxBytes (the
 * first batch found is returned even if it alone is larger: Kafka's rule).
 * If fewer than MinBytes are available it waits: every partition gets a
 * waiter that the log fires when the partition's high watermark moves, and
 * a timer fires at MaxWaitMs.  Data that is not in the cache is loaded from
 * the object store on a worker, after which the fetch is tried again.
 *
 * Records are not copied: the response references cached segment data,
 * which the request keeps referenced until its response has been written.
 *
 * Fetch sessions (KIP-227) are not kept: every response carries session id
 * 0, so clients send full fetch requests; a request naming a session id
 * gets FETCH_SESSION_ID_NOT_FOUND.
 *
 * Thread: the I/O thread of the request, except load_job (worker; one job
 * per partition to load, so a cold fetch's partitions load in parallel).  The
 * context is malloc'ed because waiter wakes may still arrive after the
 * answer; it is freed when answered and no wake is outstanding.
 */
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "log/batch.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

typedef struct fetch_ctx fetch_ctx_t;

typedef struct fetch_part {
        fetch_ctx_t *ctx;
        ks_partition_t *p; /* NULL: answered with an error */
        ks_FetchResponse_PartitionData *pd;
        int64_t offset;
        int32_t max_bytes;
        ks_fetch_waiter_t w;
        bool watching; /* registered, or its wake is in flight */
        ks_segref_t *ref;
        ks_segref_t *pin; /* segment loaded for this fetch (survives eviction) */
        bool need_load;
} fetch_part_t;

struct fetch_ctx {
        ks_broker_t *b;
        ks_req_t *req; /* NULL once answered */
        ks_FetchResponse *resp;
        ks_loop_t *loop;
        ks_timer_t timer;
        int64_t deadline;
        int32_t min_bytes, max_bytes;
        fetch_part_t *parts;
        int nparts;
        int outstanding; /* wakes in flight + one for the loads in flight */
        bool loading;
        int loads_left;  /* atomic: partition loads not finished yet */
};

static void fetch_try(fetch_ctx_t *ctx, bool final);

static void fetch_ctx_maybe_free(fetch_ctx_t *ctx)
{
        if (ctx->req || ctx->outstanding > 0)
                return;
        for (int i = 0; i < ctx->nparts; i++) {
                if (ctx->parts[i].ref)
                        ks_segref_release(ctx->parts[i].ref);
                if (ctx->parts[i].pin)
                        ks_segref_release(ctx->parts[i].pin);
                if (ctx->parts[i].p)
                        ks_partition_release(ctx->parts[i].p);
        }
        free(ctx->parts);
        free(ctx);
}

static void release_segref(void *arg)
{
        ks_segref_release(arg);
}

/* Stops watching every partition (wakes already in flight stay counted). */
static void unwatch_all(fetch_ctx_t *ctx)
{
        for (int i = 0; i < ctx->nparts; i++) {
                fetch_part_t *fp = &ctx->parts[i];
                if (fp->watching && ks_partition_unwatch(fp->p, &fp->w)) {
                        fp->watching = false;
                        ctx->outstanding--;
                }
        }
}

/* Counts the records and bytes a fetch returns (batch headers only). */
static void fetch_count(const fetch_ctx_t *ctx)
{
        int64_t records = 0, bytes = 0;
        for (int i = 0; i < ctx->nparts; i++) {
                const ks_bytes_t *r = &ctx->parts[i].pd->Records;
                size_t len = r->len > 0 ? (size_t)r->len : 0;
                ks_batch_info_t bi;
                for (size_t pos = 0; pos < len && ks_batch_header_parse(r->ptr + pos, len - pos, &bi) == 0;
                     pos += bi.size)
                        records += bi.records_count;
                bytes += (int64_t)len;
        }
        ks_metric_add(ks_std_metrics.fetch_records, 0, records);
        ks_metric_add(ks_std_metrics.fetch_bytes, 0, bytes);
}

static void fetch_answer(fetch_ctx_t *ctx)
{
        ks_timer_cancel(ctx->loop, &ctx->timer);
        fetch_count(ctx);
        unwatch_all(ctx);
        ks_req_t *req = ctx->req;
        ctx->req = NULL;
        /* Hand the data references to the request: released after the
         * response has been written. */
        for (int i = 0; i < ctx->nparts; i++) {
                fetch_part_t *fp = &ctx->parts[i];
                if (fp->ref) {
                        ks_req_add_cleanup(req, release_segref, fp->ref);
                        fp->ref = NULL;
                }
        }
        ks_req_respond(req, ctx->resp);
        fetch_ctx_maybe_free(ctx);
}

static void fetch_wake(ks_loop_t *loop, void *opaque)
{
        (void)loop;
        fetch_part_t *fp = opaque;
        fetch_ctx_t *ctx = fp->ctx;
        fp->watching = false;
        ctx->outstanding--;
        if (!ctx->req || ctx->loading) {
                fetch_ctx_maybe_free(ctx);
                return;
        }
        unwatch_all(ctx);
        fetch_try(ctx, ctx->b->stopping != 0);
}

static void fetch_timeout(ks_loop_t *loop, ks_timer_t *t)
{
        (void)loop;
        fetch_ctx_t *ctx = t->opaque;
        if (ctx->req && !ctx->loading) {
                unwatch_all(ctx);
                fetch_try(ctx, true);
        }
}

/* --- cold reads --------------------------------------------------------- */

static void load_done_on_loop(ks_loop_t *loop, void *arg)
{
        (void)loop;
        fetch_ctx_t *ctx = arg;
        ctx->outstanding--;
        ctx->loading = false;
        if (!ctx->req) {
                fetch_ctx_maybe_free(ctx);
                return;
        }
        fetch_try(ctx, ks_loop_now_ms() >= ctx->deadline || ctx->b->stopping);
}

/* One partition load finished (any thread): the last one hands the fetch
 * back to its loop. */
static void load_finished(fetch_ctx_t *ctx)
{
        if (__atomic_sub_fetch(&ctx->loads_left, 1, __ATOMIC_ACQ_REL) > 0)
                return;
        if (ks_loop_post(ctx->loop, load_done_on_loop, ctx) != 0) {
                ks_log_error("fetch_completion_lost", "reason=oom");
                abort();
        }
}

static void load_job(void *arg)
{
        fetch_part_t *fp = arg;
        if (fp->pin) {
                ks_segref_release(fp->pin);
                fp->pin = NULL;
        }
        ks_err_t err = ks_partition_load_for_read(fp->p, fp->offset, &fp->pin);
        if (err && err != KS_ERR_OFFSET_OUT_OF_RANGE) {
                /* Leave it to fetch_try: it answers the partition with a
                 * storage error rather than looping. */
                fp->pd->ErrorCode = err == KS_ERR__CORRUPT ? KS_ERR_CORRUPT_MESSAGE : KS_ERR_KAFKA_STORAGE_ERROR;
        }
        load_finished(fp->ctx);
}

/* --- the fetch itself ---------------------------------------------------- */

static void fetch_try(fetch_ctx_t *ctx, bool final)
{
        ks_broker_t *b = ctx->b;
        int64_t total = 0;
        bool any_error = false, any_load = false;
        bool more = false; /* some partition has data beyond what is returned */
        for (int i = 0; i < ctx->nparts; i++) {
                fetch_part_t *fp = &ctx->parts[i];
                fp->need_load = false;
                if (!fp->p) {
                        any_error = true;
                        continue;
                }
                if (fp->ref) {
                        ks_segref_release(fp->ref);
                        fp->ref = NULL;
                }
                ks_FetchResponse_PartitionData *pd = fp->pd;
                if (pd->ErrorCode != KS_ERR_NONE) {
                        any_error = true;
                        continue;
                }
                ks_partition_offsets_t po;
                ks_partition_offsets(fp->p, &po);
                pd->HighWatermark = po.high_watermark;
                pd->LastStableOffset = po.high_watermark;
                pd->LogStartOffset = po.log_start;
                pd->Records = (ks_bytes_t){ NULL, 0 };
                int64_t room = (int64_t)ctx->max_bytes - total;
                size_t max = (size_t)(room < fp->max_bytes ? room : fp->max_bytes);
                if (room <= 0)
                        max = 0;
                if (max == 0 && total > 0)
                        continue; /* the request is full */
                ks_read_t rd;
                ks_err_t err = ks_partition_read(fp->p, fp->offset, max, &rd);
                if (err == KS_ERR__NOT_FOUND && fp->pin)
                        err = ks_segref_read(fp->pin, fp->offset, max, &rd);
                if (err == KS_ERR__NOT_FOUND && !ctx->loading && fp->pin) {
                        /* Loaded for us and still not readable: give up on
                         * this partition for this request rather than loop. */
                        err = KS_ERR_KAFKA_STORAGE_ERROR;
                }
                if (err == KS_ERR__NOT_FOUND) {
                        fp->need_load = true;
                        any_load = true;
                        continue;
                }
                if (err) {
                        pd->ErrorCode = ks_err_to_wire(err);
                        any_error = true;
                        continue;
                }
                if (rd.len > 0 && total > 0 && (int64_t)rd.len > room) {
                        /* Only the first partition with data may exceed the
                         * request's MaxBytes. */
                        ks_segref_release(rd.ref);
                        continue;
                }
                pd->Records = (ks_bytes_t){ rd.data, (int32_t)rd.len };
                fp->ref = rd.ref;
                total += (int64_t)rd.len;
                if (rd.len > 0 && rd.next_offset < po.high_watermark)
                        more = true;
        }
        if (any_load) {
                ctx->loading = true;
                ctx->outstanding++;
                /* One job per partition; the extra count keeps the last
                 * job from finishing the fetch before every job is queued. */
                ctx->loads_left = 1;
                for (int i = 0; i < ctx->nparts; i++) {
                        fetch_part_t *fp = &ctx->parts[i];
                        if (!fp->need_load)
                                continue;
                        __atomic_add_fetch(&ctx->loads_left, 1, __ATOMIC_ACQ_REL);
                        if (ks_workq_submit(b->workq, load_job, fp) != 0) {
                                fp->pd->ErrorCode = KS_ERR_KAFKA_STORAGE_ERROR;
                                __atomic_sub_fetch(&ctx->loads_left, 1, __ATOMIC_ACQ_REL);
                        }
                }
                load_finished(ctx);
                return;
        }
        /* Kafka answers as soon as MinBytes are available up to the high
         * watermark; one read returns batches of one segment, so data left
         * beyond it counts as available too. */
        if (final || any_error || more || total >= ctx->min_bytes || total >= ctx->max_bytes) {
                fetch_answer(ctx);
                return;
        }
        /* Not enough yet: wait for any partition to grow, or the timer. */
        for (int i = 0; i < ctx->nparts; i++) {
                fetch_part_t *fp = &ctx->parts[i];
                if (!fp->watching) {
                        fp->watching = true;
                        ctx->outstanding++;
                        ks_partition_watch(fp->p, &fp->w);
                }
        }
        /* A commit may have landed between the read above and the watch:
         * re-check once so it is not missed until the timeout. */
        bool grown = false;
        for (int i = 0; i < ctx->nparts && !grown; i++) {
                ks_partition_offsets_t po;
                ks_partition_offsets(ctx->parts[i].p, &po);
                grown = po.high_watermark > ctx->parts[i].pd->HighWatermark;
        }
        if (grown) {
                unwatch_all(ctx);
                if (ctx->outstanding == 0) {
                        fetch_try(ctx, false);
                        return;
                }
        }
        if (!ks_timer_armed(&ctx->timer))
                ks_timer_arm(ctx->loop, &ctx->timer, ctx->deadline);
}

void ks_handle_fetch(ks_broker_t *b, ks_req_t *req)
{
        const ks_FetchRequest *rq = req->request;
        int16_t version = req->hdr.RequestApiVersion;
        bool by_id = version >= 13;
        ks_FetchResponse *resp = ks_msg_new(&ks_FetchResponse_desc, &req->arena);
        fetch_ctx_t *ctx = calloc(1, sizeof(*ctx));
        int32_t ntopics = rq->Topics.count > 0 ? rq->Topics.count : 0;
        int total = 0;
        for (int32_t i = 0; i < ntopics; i++)
                total += rq->Topics.items[i].Partitions.count > 0 ? rq->Topics.items[i].Partitions.count : 0;
        fetch_part_t *parts = calloc((size_t)(total ? total : 1), sizeof(*parts));
        ks_FetchResponse_FetchableTopicResponse *trs =
                ks_msg_new_array(&ks_FetchResponse_FetchableTopicResponse_desc, ntopics, &req->arena);
        if (!resp || !ctx || !parts || !trs) {
                free(ctx);
                free(parts);
                ks_req_close(req, "out of memory");
                return;
        }
        ctx->b = b;
        ctx->req = req;
        ctx->resp = resp;
        ctx->loop = ks_loop_current();
        ctx->parts = parts;
        ks_timer_init(&ctx->timer, fetch_timeout, ctx);
        ctx->deadline = req->received_ms + (rq->MaxWaitMs > 0 ? rq->MaxWaitMs : 0);
        ctx->min_bytes = rq->MinBytes;
        ctx->max_bytes = version >= 3 && rq->MaxBytes > 0 ? rq->MaxBytes : INT32_MAX;
        resp->SessionId = 0;
        resp->Responses.items = trs;
        resp->Responses.count = ntopics;

        if (rq->SessionId != 0) {
                resp->ErrorCode = KS_ERR_FETCH_SESSION_ID_NOT_FOUND;
                resp->Responses.count = 0;
                ctx->req = NULL;
                free(parts);
                free(ctx);
                ks_req_respond(req, resp);
                return;
        }
        if (rq->SessionEpoch > 0) {
                resp->ErrorCode = KS_ERR_INVALID_FETCH_SESSION_EPOCH;
                resp->Responses.count = 0;
                ctx->req = NULL;
                free(parts);
                free(ctx);
                ks_req_respond(req, resp);
                return;
        }

        int n = 0;
        for (int32_t i = 0; i < ntopics; i++) {
                const ks_FetchRequest_FetchTopic *ft = &rq->Topics.items[i];
                ks_FetchResponse_FetchableTopicResponse *tr = &trs[i];
                int32_t np = ft->Partitions.count > 0 ? ft->Partitions.count : 0;
                ks_FetchResponse_PartitionData *pds =
                        ks_msg_new_array(&ks_FetchResponse_PartitionData_desc, np, &req->arena);
                if (!pds)
                        np = 0;
                tr->Topic = ft->Topic;
                tr->TopicId = ft->TopicId;
                tr->Partitions.items = pds;
                tr->Partitions.count = np;
                ks_str_t name = ft->Topic;
                ks_err_t topic_err = 0;
                if (by_id) {
                        ks_topic_t t;
                        if (ks_meta_topic_get_by_id(b->meta, ft->TopicId, &t))
                                name = ks_arena_str(&req->arena, "%s", t.name);
                        else
                                topic_err = KS_ERR_UNKNOWN_TOPIC_ID;
                }
                for (int32_t j = 0; j < np; j++) {
                        const ks_FetchRequest_FetchPartition *fq = &ft->Partitions.items[j];
                        fetch_part_t *fp = &parts[n++];
                        ks_FetchResponse_PartitionData *pd = &pds[j];
                        pd->PartitionIndex = fq->Partition;
                        pd->HighWatermark = -1;
                        pd->LastStableOffset = -1;
                        pd->LogStartOffset = -1;
                        pd->Records = (ks_bytes_t){ NULL, 0 };
                        fp->ctx = ctx;
                        fp->pd = pd;
                        fp->offset = fq->FetchOffset;
                        fp->max_bytes = fq->PartitionMaxBytes > 0 ? fq->PartitionMaxBytes : 0;
                        fp->w.loop = ctx->loop;
                        fp->w.wake = fetch_wake;
                        fp->w.opaque = fp;
                        if (topic_err) {
                                pd->ErrorCode = (int16_t)topic_err;
                                continue;
                        }
                        fp->p = ks_log_partition(b->log, name, fq->Partition);
                        if (!fp->p) {
                                pd->ErrorCode = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                        } else {
                                /* Served here, at the epoch the client
                                 * expects (v9+; -1: no check)? */
                                ks_err_t err = ks_broker_leader_check(b, fp->p, name, fq->Partition,
                                                                      version >= 9 ? fq->CurrentLeaderEpoch : -1, NULL);
                                if (err)
                                        pd->ErrorCode = (int16_t)err;
                        }
                }
        }
        ctx->nparts = n;
        /* Nothing to wait on (no partitions) means nothing can wake it. */
        fetch_try(ctx, n == 0 || ctx->deadline <= ks_loop_now_ms());
}
