/*
 * list_offsets.c — ListOffsets v0+.
 *
 * Earliest (-2) is the log start offset, latest (-1) the high watermark
 * (there are no transactions, so the last stable offset is the same), max
 * timestamp (-3) comes from the segment manifest, and a timestamp >= 0 is
 * resolved by scanning the first segment whose largest timestamp reaches it
 * (to the record for uncompressed batches, to the batch otherwise).  The
 * segment may have to be read from the object store, so the handler runs
 * on a worker.
 */
#include <string.h>

#include "broker/broker.h"
#include "log/log.h"
#include "protocol/gen/kafka_msgs.h"
#include "util/log.h"

#define TS_LATEST (-1)
#define TS_EARLIEST (-2)
#define TS_MAX_TIMESTAMP (-3)

static ks_err_t resolve(ks_partition_t *p, int64_t ts, int64_t *offset, int64_t *timestamp)
{
        ks_partition_offsets_t po;
        ks_partition_offsets(p, &po);
        *timestamp = -1;
        if (ts == TS_LATEST) {
                *offset = po.high_watermark;
                return 0;
        }
        if (ts == TS_EARLIEST) {
                *offset = po.log_start;
                return 0;
        }
        if (ts < TS_MAX_TIMESTAMP)
                return KS_ERR_INVALID_REQUEST;
        ks_err_t err = ks_partition_offset_for_timestamp(p, ts, offset, timestamp);
        if (err == KS_ERR__NOT_FOUND) {
                err = ks_partition_load_for_timestamp(p, ts);
                if (!err)
                        err = ks_partition_offset_for_timestamp(p, ts, offset, timestamp);
                if (err == KS_ERR__NOT_FOUND)
                        err = KS_ERR_KAFKA_STORAGE_ERROR; /* evicted again at once: let the client retry */
        }
        return err;
}

static void list_offsets_work(ks_broker_t *b, ks_req_t *req)
{
        const ks_ListOffsetsRequest *rq = req->request;
        int16_t version = req->hdr.RequestApiVersion;
        ks_ListOffsetsResponse *resp = ks_msg_new(&ks_ListOffsetsResponse_desc, &req->arena);
        int32_t nt = rq->Topics.count > 0 ? rq->Topics.count : 0;
        ks_ListOffsetsResponse_ListOffsetsTopicResponse *trs =
                ks_msg_new_array(&ks_ListOffsetsResponse_ListOffsetsTopicResponse_desc, nt, &req->arena);
        if (!resp || !trs) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < nt; i++) {
                const ks_ListOffsetsRequest_ListOffsetsTopic *t = &rq->Topics.items[i];
                int32_t np = t->Partitions.count > 0 ? t->Partitions.count : 0;
                ks_ListOffsetsResponse_ListOffsetsPartitionResponse *prs =
                        ks_msg_new_array(&ks_ListOffsetsResponse_ListOffsetsPartitionResponse_desc, np, &req->arena);
                if (!prs) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                trs[i].Name = t->Name;
                trs[i].Partitions.items = prs;
                trs[i].Partitions.count = np;
                for (int32_t j = 0; j < np; j++) {
                        const ks_ListOffsetsRequest_ListOffsetsPartition *q = &t->Partitions.items[j];
                        ks_ListOffsetsResponse_ListOffsetsPartitionResponse *r = &prs[j];
                        r->PartitionIndex = q->PartitionIndex;
                        r->Timestamp = -1;
                        r->Offset = -1;
                        r->LeaderEpoch = -1;
                        ks_partition_t *p = ks_log_partition(b->log, t->Name, q->PartitionIndex);
                        if (!p) {
                                r->ErrorCode = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                                continue;
                        }
                        ks_err_t err = ks_broker_leader_check(p, version >= 4 ? q->CurrentLeaderEpoch : -1, NULL);
                        int64_t offset = -1, ts = -1;
                        if (!err)
                                err = resolve(p, q->Timestamp, &offset, &ts);
                        int32_t epoch = !err && offset >= 0 ? ks_broker_epoch_at(p, offset) : -1;
                        ks_partition_release(p);
                        if (err) {
                                r->ErrorCode = ks_err_to_wire(err);
                                continue;
                        }
                        r->Offset = offset;
                        r->Timestamp = ts;
                        r->LeaderEpoch = epoch;
                        if (version == 0) {
                                int64_t *old = ks_array_new(sizeof(int64_t), 1, &req->arena);
                                int32_t max = q->MaxNumOffsets;
                                if (old && offset >= 0 && max > 0) {
                                        old[0] = offset;
                                        r->OldStyleOffsets.items = old;
                                        r->OldStyleOffsets.count = 1;
                                }
                        }
                }
        }
        resp->Topics.items = trs;
        resp->Topics.count = nt;
        ks_req_respond(req, resp);
}

void ks_handle_list_offsets(ks_broker_t *b, ks_req_t *req)
{
        ks_broker_offload(b, req, list_offsets_work);
}
