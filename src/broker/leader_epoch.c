/*
 * leader_epoch.c — OffsetForLeaderEpoch v0-v4.
 *
 * A client (KIP-320: consumers validating their position after a leader
 * change) or a follower asks, per partition, "where did leader epoch E
 * end?".  The answer comes from the partition's epoch history — entries
 * {epoch, start offset}, ascending in both — with Apache Kafka's semantics
 * (LeaderEpochFileCache.endOffsetFor, Partition.lastOffsetForLeaderEpoch,
 * ReplicaManager.lastOffsetForLeaderEpoch):
 *
 *  - E == -1 (UNDEFINED_EPOCH), or an empty history: epoch -1, offset -1;
 *  - E is the latest epoch: (E, log end offset);
 *  - no entry has an epoch > E (E is above the latest): -1, -1;
 *  - no entry has an epoch <= E (E is below the first): (E, start offset of
 *    the first entry) — what Kafka's code returns; the method's doc comment
 *    still says UNDEFINED, which is stale;
 *  - otherwise: (largest epoch <= E, start offset of the next entry).
 *
 * An undefined answer (offset -1) carries error NONE and epoch -1.
 *
 * The log end offset here is the high watermark: only durable offsets
 * exist for clients, and what is above it may still be lost (storage.md).
 *
 * CurrentLeaderEpoch (v2+) fences as Kafka's Partition.checkCurrentLeaderEpoch
 * does: -1 means "no check"; any other value above the partition's current
 * epoch is UNKNOWN_LEADER_EPOCH, below it FENCED_LEADER_EPOCH; a partition
 * this broker does not serve (cluster mode: another broker owns it) is
 * NOT_LEADER_OR_FOLLOWER.  An unknown topic or partition is
 * UNKNOWN_TOPIC_OR_PARTITION.
 *
 * The history is the partition's PartitionState.epoch_history, as the log
 * loaded it when this broker took the partition (cluster/cluster.h extends
 * it with {new epoch, committed end offset} on every change of owner; in
 * embedded mode it is [{0, 0}]).  ReplicaId (v3+) is not
 * checked: -1 (consumer), -2 (debug) and follower ids are all answered
 * alike, as Kafka answers them (it only uses the id for authorisation).
 *
 * Everything is in memory: the handler answers on the I/O thread.
 */
#include <stdint.h>

#include "broker/broker.h"
#include "log/log.h"
#include "protocol/gen/kafka_msgs.h"

#define UNDEFINED_EPOCH (-1)
#define UNDEFINED_EPOCH_OFFSET ((int64_t)-1)

typedef ks_epoch_entry_t epoch_entry_t;

/*
 * Kafka's LeaderEpochFileCache.endOffsetFor over `hist` (n entries, epochs
 * strictly ascending, start offsets non-decreasing): the end offset of
 * `requested` and the epoch that answer belongs to.
 */
static void epoch_end_offset(const epoch_entry_t *hist, int n, int32_t requested, int64_t log_end,
                             int32_t *epoch_out, int64_t *offset_out)
{
        *epoch_out = UNDEFINED_EPOCH;
        *offset_out = UNDEFINED_EPOCH_OFFSET;
        if (requested == UNDEFINED_EPOCH || n <= 0)
                return;
        if (requested == hist[n - 1].epoch) {
                *epoch_out = requested;
                *offset_out = log_end;
                return;
        }
        /* higher: first entry with epoch > requested (binary search). */
        int lo = 0, hi = n;
        while (lo < hi) {
                int mid = lo + (hi - lo) / 2;
                if (hist[mid].epoch <= requested)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        int higher = lo;
        if (higher == n)
                return; /* above every known epoch */
        if (higher == 0) {
                /* Below every known epoch: Kafka answers the requested
                 * epoch with the first known start offset. */
                *epoch_out = requested;
                *offset_out = hist[0].start_offset;
                return;
        }
        *epoch_out = hist[higher - 1].epoch; /* floor: largest epoch <= requested */
        *offset_out = hist[higher].start_offset;
}

static void answer_partition(ks_broker_t *b, int16_t version, ks_str_t topic,
                             const ks_OffsetForLeaderEpochRequest_OffsetForLeaderPartition *q,
                             ks_OffsetForLeaderEpochResponse_EpochEndOffset *r)
{
        /* r holds the schema defaults: LeaderEpoch -1, EndOffset -1. */
        r->Partition = q->Partition;
        r->ErrorCode = 0;
        ks_partition_t *p = ks_log_partition(b->log, topic, q->Partition);
        if (!p) {
                r->ErrorCode = KS_ERR_UNKNOWN_TOPIC_OR_PARTITION;
                return;
        }
        /* Absent before v2: the decoder leaves the default, -1 (no check). */
        ks_err_t err = ks_broker_leader_check(p, version >= 2 ? q->CurrentLeaderEpoch : -1, NULL);
        if (err) {
                r->ErrorCode = (int16_t)err;
                ks_partition_release(p);
                return;
        }
        epoch_entry_t hist[KS_EPOCH_HISTORY_MAX];
        int n = ks_partition_epoch_history(p, hist, KS_EPOCH_HISTORY_MAX);
        ks_partition_offsets_t po;
        ks_partition_offsets(p, &po);
        ks_partition_release(p);
        int32_t epoch;
        int64_t offset;
        epoch_end_offset(hist, n, q->LeaderEpoch, po.high_watermark, &epoch, &offset);
        if (offset == UNDEFINED_EPOCH_OFFSET)
                return; /* NONE, -1, -1 (Kafka's endOffsetForEpoch gives None) */
        r->LeaderEpoch = epoch;
        r->EndOffset = offset;
}

void ks_handle_offset_for_leader_epoch(ks_broker_t *b, ks_req_t *req)
{
        const ks_OffsetForLeaderEpochRequest *rq = req->request;
        int16_t version = req->hdr.RequestApiVersion;
        ks_OffsetForLeaderEpochResponse *resp = ks_msg_new(&ks_OffsetForLeaderEpochResponse_desc, &req->arena);
        int32_t nt = rq->Topics.count > 0 ? rq->Topics.count : 0;
        ks_OffsetForLeaderEpochResponse_OffsetForLeaderTopicResult *trs =
                ks_msg_new_array(&ks_OffsetForLeaderEpochResponse_OffsetForLeaderTopicResult_desc, nt, &req->arena);
        if (!resp || !trs) {
                ks_req_close(req, "out of memory");
                return;
        }
        for (int32_t i = 0; i < nt; i++) {
                const ks_OffsetForLeaderEpochRequest_OffsetForLeaderTopic *t = &rq->Topics.items[i];
                int32_t np = t->Partitions.count > 0 ? t->Partitions.count : 0;
                ks_OffsetForLeaderEpochResponse_EpochEndOffset *prs =
                        ks_msg_new_array(&ks_OffsetForLeaderEpochResponse_EpochEndOffset_desc, np, &req->arena);
                if (!prs) {
                        ks_req_close(req, "out of memory");
                        return;
                }
                trs[i].Topic = t->Topic;
                trs[i].Partitions.items = prs;
                trs[i].Partitions.count = np;
                for (int32_t j = 0; j < np; j++)
                        answer_partition(b, version, t->Topic, &t->Partitions.items[j], &prs[j]);
        }
        resp->ThrottleTimeMs = 0;
        resp->Topics.items = trs;
        resp->Topics.count = nt;
        ks_req_respond(req, resp);
}
